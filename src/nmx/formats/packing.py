"""Dense bit packing of integer codes into bytes.

Codes are laid end to end as one little-endian bit stream: code i occupies bits
[i*b, (i+1)*b) of the stream, bit 0 of a byte being its least significant bit. For
b = 4 this puts the first code of each pair in the low nibble (the OCP / ml_dtypes /
PTX convention for FP4x2); four 6-bit codes fill exactly three bytes. The stream is
padded with zero bits to a whole byte.
"""

from __future__ import annotations

import math

import torch

from nmx.errors import FormatError


def packed_nbytes(count: int, bits: int) -> int:
    return math.ceil(count * bits / 8)


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 16:
        raise FormatError(f"bit packing supports 1..16 bits per code, got {bits}")


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack the low `bits` of each integer in `codes` (any shape) into a flat uint8 tensor."""
    _check_bits(bits)
    c = codes.reshape(-1).to(torch.int32) & ((1 << bits) - 1)
    if bits == 8:
        return c.to(torch.uint8)
    if bits == 16:
        return torch.stack([c & 0xFF, c >> 8], dim=-1).reshape(-1).to(torch.uint8)
    if 8 % bits == 0:  # 1, 2, 4: whole codes per byte
        per = 8 // bits
        pad = (-c.numel()) % per
        c = torch.nn.functional.pad(c, (0, pad)).reshape(-1, per)
        shifts = torch.arange(per, dtype=torch.int32) * bits
        return (c << shifts).sum(dim=1).to(torch.uint8)
    # general widths: expand to single bits, regroup by eight
    stream = ((c.unsqueeze(1) >> torch.arange(bits, dtype=torch.int32)) & 1).reshape(-1)
    stream = torch.nn.functional.pad(stream, (0, (-stream.numel()) % 8)).reshape(-1, 8)
    return (stream << torch.arange(8, dtype=torch.int32)).sum(dim=1).to(torch.uint8)


def unpack_bits(buf: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of `pack_bits`: the first `count` codes as int32."""
    _check_bits(bits)
    b = buf.reshape(-1).to(torch.int32)
    if b.numel() < packed_nbytes(count, bits):
        raise FormatError(f"packed buffer too short: {b.numel()} bytes for {count} codes of {bits} bits")
    if bits == 8:
        return b[:count]
    if bits == 16:
        b = b[: 2 * count].reshape(-1, 2)
        return b[:, 0] | (b[:, 1] << 8)
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(per, dtype=torch.int32) * bits
        return ((b.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).reshape(-1)[:count]
    stream = ((b.unsqueeze(1) >> torch.arange(8, dtype=torch.int32)) & 1).reshape(-1)
    stream = stream[: count * bits].reshape(count, bits)
    return (stream << torch.arange(bits, dtype=torch.int32)).sum(dim=1).to(torch.int32)
