"""Dense bit packing of integer codes into bytes.

Codes are laid end to end as one little-endian bit stream: code i occupies bits
[i*b, (i+1)*b) of the stream, bit 0 of a byte being its least significant bit. For
b = 4 this puts the first code of each pair in the low nibble (the OCP / ml_dtypes /
PTX convention for FP4x2); four 6-bit codes fill exactly three bytes. The stream is
padded with zero bits to a whole byte.

Widths 1..32 are supported. Codes of up to 16 bits unpack as int32; wider codes (the
index fields of sparse storage: a CSR row pointer into 8M nonzeros needs 24 bits)
unpack as int64, since a 32-bit code does not fit an int32.
"""

from __future__ import annotations

import math

import torch

from nmx.errors import FormatError

MAX_BITS = 32


def packed_nbytes(count: int, bits: int) -> int:
    return math.ceil(count * bits / 8)


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise FormatError(f"bit packing supports 1..{MAX_BITS} bits per code, got {bits}")


def _byte_spans(bits: int):
    """For code j of a run of eight (eight codes of b bits fill exactly b bytes): the bytes it
    touches and how far that byte's bit 0 sits above the code's bit 0 (negative: below)."""
    for j in range(8):
        start = j * bits
        for byte in range(start // 8, (start + bits - 1) // 8 + 1):
            yield j, byte, byte * 8 - start


def _pack_general(c: torch.Tensor, bits: int) -> torch.Tensor:
    # runs of eight codes are b whole bytes; ~5 vectorized ops per code slot, O(count) memory
    # (expanding to one element per bit costs count * bits)
    n = c.numel()
    runs = torch.nn.functional.pad(c, (0, (-n) % 8)).reshape(-1, 8).t().contiguous()
    out: list[torch.Tensor | int] = [0] * bits
    for j, byte, shift in _byte_spans(bits):
        part = runs[j] >> shift if shift >= 0 else runs[j] << -shift
        out[byte] = out[byte] | (part & 0xFF)
    return torch.stack(out, dim=1).reshape(-1)[: packed_nbytes(n, bits)].to(torch.uint8)


def _unpack_general(b: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    nbytes = packed_nbytes(count, bits)
    runs = -(-count // 8)
    b = torch.nn.functional.pad(b[:nbytes].to(torch.int64), (0, runs * bits - nbytes))
    b = b.reshape(runs, bits).t().contiguous()
    codes: list[torch.Tensor | int] = [0] * 8
    for j, byte, shift in _byte_spans(bits):
        codes[j] = codes[j] | (b[byte] << shift if shift >= 0 else b[byte] >> -shift)
    codes = torch.stack(codes, dim=1).reshape(-1)[:count] & ((1 << bits) - 1)
    return codes.to(torch.int32) if bits <= 16 else codes


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack the low `bits` of each integer in `codes` (any shape) into a flat uint8 tensor."""
    _check_bits(bits)
    if bits > 16:
        return _pack_general(codes.reshape(-1).to(torch.int64) & ((1 << bits) - 1), bits)
    c = codes.reshape(-1).to(torch.int32) & ((1 << bits) - 1)
    if bits == 8:
        return c.to(torch.uint8)
    if bits == 16:
        return torch.stack([c & 0xFF, c >> 8], dim=-1).reshape(-1).to(torch.uint8)
    if 8 % bits == 0:  # 1, 2, 4: whole codes per byte
        per = 8 // bits
        pad = (-c.numel()) % per
        c = torch.nn.functional.pad(c, (0, pad)).reshape(-1, per)
        shifts = torch.arange(per, dtype=torch.int32, device=c.device) * bits
        return (c << shifts).sum(dim=1).to(torch.uint8)
    return _pack_general(c.to(torch.int64), bits)


def unpack_bits(buf: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of `pack_bits`: the first `count` codes as int32 (int64 for widths above 16)."""
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
        shifts = torch.arange(per, dtype=torch.int32, device=b.device) * bits
        return ((b.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).reshape(-1)[:count]
    return _unpack_general(b, bits, count)
