"""Bit-plane storage of BFP activations (the Anda layout): per group, a sign plane and the mantissa
magnitude's bit-planes, most significant first, plus the shared exponents in a side buffer.

    planes = encode_bitplanes(x, "bfp_m7_g64")      # BitPlanes: planes (uint8), exponents (uint8)
    decode_bitplanes(planes)                        # == formats.get("bfp_m7_g64").quantize(x), bit for bit
    planes.nbytes == formats.get("bfp_m7_g64").storage_bytes(x.shape)

Layout. The tensor is blocked exactly as `nmx.formats` blocks it (block dim last, zero-padded to
whole groups of G, groups in row-major order). Element j of a group stores sign s_j and magnitude
|q_j| <= 2^m - 1 (the BFP integer of `bfp_mM_gG`; sign-magnitude, so the magnitude has m bits).
Group g contributes m + 1 planes of G bits each, in this order:

    plane 0      sign bits s_0 .. s_{G-1}
    plane 1      bit m-1 (MSB) of |q_0| .. |q_{G-1}|
    ...
    plane m      bit 0 (LSB)

and the planes of all groups are one little-endian bit stream (`nmx.formats.packing`, 1-bit codes):
bit i of the stream = (group i // ((m+1) G), plane (i // G) % (m+1), element i % G). The exponent
side buffer holds one E8M0 byte per group (255 = NaN group). A bit-serial unit reads a group plane by
plane: the first k mantissa planes are the value truncated to k bits (`decode_bitplanes(.., planes=k)`).

Bytes: ceil(ngroups (m+1) G / 8) + ngroups -- the same bits as the element-wise layout, reordered,
so `nbytes` equals `storage_bytes` of the format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nmx.errors import FormatError, InputError
from nmx.formats.base import Encoded
from nmx.formats.bfp import BFPFormat
from nmx.formats.packing import pack_bits, packed_nbytes, unpack_bits


@dataclass(frozen=True, eq=False)
class BitPlanes:
    """A tensor in bit-plane layout (see the module doc)."""

    format: str
    shape: tuple[int, ...]
    dim: int
    mantissa_bits: int
    group: int
    planes: torch.Tensor  # uint8, packed bit stream
    exponents: torch.Tensor  # uint8, one per group

    @property
    def groups(self) -> int:
        return int(self.exponents.numel())

    @property
    def plane_bytes(self) -> int:
        return int(self.planes.numel())

    @property
    def nbytes(self) -> int:
        return int(self.planes.numel() + self.exponents.numel())


def bfp_format(fmt: str | BFPFormat) -> BFPFormat:
    from nmx import formats

    f = formats.get(fmt) if isinstance(fmt, str) else fmt
    if not isinstance(f, BFPFormat):
        raise FormatError(f"bit-plane storage takes a BFP format (bfp_mM_gG), not {getattr(f, 'name', f)!r}")
    return f


def bitplane_nbytes(shape: tuple[int, ...], fmt: str | BFPFormat, dim: int = -1) -> int:
    """Exact bytes of `encode_bitplanes` for a tensor of `shape`."""
    f = bfp_format(fmt)
    shape = tuple(int(s) for s in shape)
    if math.prod(shape) == 0:
        return 0
    d = dim % max(1, len(shape))
    groups = math.prod(s for i, s in enumerate(shape) if i != d) * math.ceil((shape[d] if shape else 1) / f.block_size)
    return packed_nbytes(groups * (f.mantissa_bits + 1) * f.block_size, 1) + groups


def encode_bitplanes(x: torch.Tensor, fmt: str | BFPFormat, dim: int = -1) -> BitPlanes:
    """Quantize `x` with the BFP format `fmt` and store it as bit-planes."""
    f = bfp_format(fmt)
    enc = f.encode(x, dim)
    m, g = f.mantissa_bits, f.block_size
    groups = int(enc.buffers["scales"].numel()) if "scales" in enc.buffers else 0
    if groups == 0:
        empty = torch.zeros(0, dtype=torch.uint8)
        return BitPlanes(f.name, enc.shape, enc.dim, m, g, empty, empty)
    codes = unpack_bits(enc.buffers["codes"], m + 1, groups * g).reshape(groups, g)
    codes = torch.where(codes >= 1 << m, codes - (1 << (m + 1)), codes)  # (m+1)-bit two's complement
    sign = (codes < 0).to(torch.int32)
    mag = codes.abs()
    shifts = torch.arange(m - 1, -1, -1, dtype=torch.int32, device=codes.device)
    bits = (mag[:, None, :] >> shifts[None, :, None]) & 1  # [groups, m, G], MSB first
    stream = torch.cat([sign[:, None, :], bits], dim=1).reshape(-1)
    return BitPlanes(f.name, enc.shape, enc.dim, m, g, pack_bits(stream, 1), enc.buffers["scales"].clone())


def decode_bitplanes(bp: BitPlanes, planes: int | None = None) -> torch.Tensor:
    """The float32 values; `planes` = k < m reads only the k most significant mantissa planes
    (the value truncated toward zero to k bits, as a bit-serial unit stopped after k cycles)."""
    if not isinstance(bp, BitPlanes):
        raise InputError(f"decode_bitplanes() takes BitPlanes, got {type(bp).__name__}")
    f = bfp_format(bp.format)
    m, g = bp.mantissa_bits, bp.group
    k = m if planes is None else planes
    if not isinstance(k, int) or not 0 <= k <= m:
        raise InputError(f"planes must be an integer in 0..{m}, got {planes!r}")
    layout = f._layout(bp.shape, bp.dim)
    if math.prod(bp.shape) == 0:
        return torch.zeros(bp.shape, dtype=torch.float32)
    groups = bp.groups
    stream = unpack_bits(bp.planes, 1, groups * (m + 1) * g).reshape(groups, m + 1, g)
    weights = torch.tensor([1 << (m - 1 - i) if i < k else 0 for i in range(m)], dtype=torch.int32)
    mag = (stream[:, 1:, :] * weights[None, :, None]).sum(dim=1)
    elements = torch.where(stream[:, 0, :] > 0, -mag, mag).to(torch.float32)
    code = bp.exponents.reshape(groups, 1).to(torch.int32)
    # the format's own join: exact power-of-two products, NaN groups decode to NaN
    values = f._join(elements, code)
    return f._unblock(values, layout)


def to_encoded(bp: BitPlanes) -> Encoded:
    """The element-wise `Encoded` of the same tensor (codes re-packed element by element)."""
    m, g = bp.mantissa_bits, bp.group
    stream = unpack_bits(bp.planes, 1, bp.groups * (m + 1) * g).reshape(bp.groups, m + 1, g)
    shifts = torch.arange(m - 1, -1, -1, dtype=torch.int32)
    mag = (stream[:, 1:, :] << shifts[None, :, None]).sum(dim=1)
    q = torch.where(stream[:, 0, :] > 0, -mag, mag)
    codes = torch.where(q < 0, q + (1 << (m + 1)), q).reshape(-1)
    return Encoded(bp.format, bp.shape, bp.dim, {"codes": pack_bits(codes, m + 1), "scales": bp.exponents.clone()})


__all__ = ["BitPlanes", "bitplane_nbytes", "decode_bitplanes", "encode_bitplanes", "to_encoded"]
