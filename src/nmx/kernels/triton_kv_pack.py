"""Triton kernel: quantize K and V into the packed KV layout (kv_layout.py) in one launch each, for the
integer formats (int4, int2: symmetric codes, one fp16 scale per group).

`pack_kv`'s torch path runs hundreds of small operations per call; a cache that re-quantizes a group
of G tokens from its bf16 window every G decode steps pays that in every layer. Here one program
takes one chunk of G tokens of one (batch, head) row, [G, D] elements:

- keys: per channel over the chunk's G tokens (the tile transposed, so a group is a row), values: per
  token over groups of G channels (the tile reshaped to [G * D/G, G]);
- scale and codes by nmx.formats' integer arithmetic step for step (`int_sym_codes`, shared with the
  fake-quant kernel: IEEE division, fp16 rounding of the scale, round half to even), so the bytes are
  equal to `pack_kv`'s torch path bit for bit;
- codes to offset binary, shifted into their place in the 32-bit words (token n of a half at bits
  n*bits, channel 2c+1 in the high half) and or-ed together (a sum of disjoint bit fields), stored.

Import this module only where triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nmx.kernels.triton_fakequant import _IEEE, ABS_MASK, INF_BITS, int_sym_codes


@triton.jit
def _pack_words(codes, G: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr):
    """Signed integer codes [G, D] (float32) -> the layout's words [G * BITS / 16, D / 2] (int32)."""
    NPH: tl.constexpr = 16 // BITS
    u = codes.to(tl.int32) + (1 << (BITS - 1))  # offset binary
    u = tl.reshape(u, (G // NPH, NPH, D // 2, 2))
    n = tl.arange(0, NPH)[None, :, None, None]
    h = tl.arange(0, 2)[None, None, None, :]
    return tl.sum(tl.sum(u << (n * BITS + 16 * h), axis=3), axis=1)


@triton.jit
def _kv_int_pack_kernel(x_ptr, codes_ptr, scales_ptr, T, CHUNKS,
                        KEYS: tl.constexpr, BITS: tl.constexpr, QMAX: tl.constexpr, G: tl.constexpr,
                        D: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    t = chunk * G + tl.arange(0, G)
    d = tl.arange(0, D)
    bits16 = tl.load(x_ptr + bh * T * D + t[:, None] * D + d[None, :])  # bf16 read as int16 bits
    x = (bits16.to(tl.int32) << 16).to(tl.float32, bitcast=True)  # exact, subnormals kept
    if KEYS:  # one scale per channel: the transposed tile's rows
        xr = tl.trans(x)  # [D, G]
    else:  # one scale per (token, G channels)
        xr = tl.reshape(x, (G * (D // G), G))
    amax_bits = tl.max(xr.to(tl.int32, bitcast=True) & ABS_MASK, axis=1)
    codes, scale = int_sym_codes(xr, amax_bits, amax_bits >= INF_BITS, QMAX)
    if KEYS:
        codes = tl.trans(codes)
        tl.store(scales_ptr + (bh * CHUNKS + chunk) * D + d, tl.reshape(scale, (D,)).to(tl.float16))
    else:
        codes = tl.reshape(codes, (G, D))
        s_offs = (bh * CHUNKS * G + t[:, None]) * (D // G) + tl.arange(0, D // G)[None, :]
        tl.store(scales_ptr + s_offs, tl.reshape(scale, (G, D // G)).to(tl.float16))
    NPH: tl.constexpr = 16 // BITS
    words = _pack_words(codes, G, D, BITS)
    w_rows = chunk * (G // NPH) + tl.arange(0, G // NPH)
    tl.store(codes_ptr + (bh * CHUNKS * (G // NPH) + w_rows[:, None]) * (D // 2) + tl.arange(0, D // 2)[None, :],
             words)


def pack_int_codes(x16: torch.Tensor, tq: int, group: int, bits: int, keys: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Words [B, H, tq * bits/16, D/2] (int32) and fp16 scales ([B, H, tq/G, D] for keys, [B, H, tq, D/G]
    for values) of the first tq tokens of x16 (bf16 [B, H, T, D], contiguous), as pack_kv lays them out."""
    b, h, t, d = x16.shape
    chunks = tq // group
    codes = torch.empty(b, h, tq * bits // 16, d // 2, dtype=torch.int32, device=x16.device)
    shape = (b, h, chunks, d) if keys else (b, h, tq, d // group)
    scales = torch.empty(shape, dtype=torch.float16, device=x16.device)
    if chunks:
        tile = group * d
        _kv_int_pack_kernel[(b * h, chunks)](x16.view(torch.int16), codes, scales, t, chunks, KEYS=keys, BITS=bits,
                                             QMAX=(1 << (bits - 1)) - 1, G=group, D=d,
                                             num_warps=4 if tile <= 8192 else 8, **_IEEE)
    return codes, scales
