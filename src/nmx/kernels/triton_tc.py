"""Triton kernel for 1 .. 64 tokens: y = x W^T with W's 4/8-bit words decoded two weights per
instruction straight into bf16 tensor-core operands (dense int4_gG, mxfp4, nvfp4, fp8_e4m3, mxfp8).

Marlin's idea in Triton. The word kernel (triton_gemv.py) spends ~4-7 scalar instructions per weight
and one more multiply per extra token; here the multiplies go to the tensor cores and the decode
works on bf16 *pairs*. The dense words are pair-interleaved (layout.py): slots j and j + P/2 (P codes
per word), 16 bits apart, hold columns 2j and 2j + 1, so a word shifted right by the slot's bit offset
and masked (0x000F000F for 4-bit) holds two adjacent weights, one per 16-bit half: a bf16x2 operand
register once the exponent bits are or-ed in:

- int4: (code ^ 8) | 0x4300 is the bf16 128 + (code ^ 8); one packed bf16 subtract of 136 gives
  the two's-complement value exactly: shift, LOP3, HADD2 for two weights. The fp16 group scale
  multiplies the dot's float32 result per group (BLOCK_K <= G), so the operands stay exact.
- e2m1 / e4m3: magnitude bits moved into the bf16's exponent/mantissa and the sign to bit 15 give the
  value times 2^-126 (2^-120), bf16 subnormals included; one packed multiply by 2^126 (2^120)
  restores it, another by the block scale (exact in bf16: e2m1 or e4m3 times an e8m0 or e4m3 scale
  has at most 8 significant bits). nvfp4's float32 tensor scale multiplies the result.

The product is computed transposed, y^T tile [BLOCK_N, BLOCK_M] = W tile [BLOCK_N, BLOCK_K] x^T: W is
the tensor cores' A operand (on sm_90 a warpgroup MMA with M = 64 rows of W and N = BLOCK_M >= 16
tokens, so 1 .. 16 tokens cost the same). Float32 accumulation, bf16 output; split-K (needed: 64-row
programs leave a 4096-row weight 64 of them) adds float32 partial sums into a self-cleaning workspace
and the last program of each tile writes it out, all in one launch (`store_split_tile`). Offline sm_90
compiles (benchmarks/sass_count.py --tc) count ~3.3 main-loop instructions per weight for int4, ~7 for
e2m1.

Import this module only where triton is installed (the dispatcher does).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from nmx.errors import InputError
from nmx.kernels.layout import PackedLinear
from nmx.kernels.triton_gemv import (
    ELEMENT_BITS,
    ELEMENT_IDS,
    SCALE_IDS,
    _meta,
    _scale_raw,
    new_output,
    split_workspace,
    store_split_tile,
    store_tile,
    tile_offsets,
)

#: element kinds this kernel decodes, dense or 2:4 (bf16 values go to cuBLAS / cuSPARSELt)
TC_ELEMENTS = ("int4", "e2m1", "e4m3")


def supports(p: PackedLinear) -> bool:
    return p.element in TC_ELEMENTS


@triton.jit
def _pair(v, i: tl.constexpr, BITS: tl.constexpr, ELEMENT: tl.constexpr, zero):
    """Codes i and i + PER/2 of every word v (uint32 [BN, KW]) as a bf16x2 bit pattern (uint32): int4 as
    128 + (code ^ 8), e2m1 / e4m3 as value * 2^-126 / 2^-120. `zero` (a run-time 0) keeps the masks in
    registers so that mask and or fold into one LOP3."""
    lo: tl.constexpr = BITS * i  # bit of code i in the low half; code i + PER/2 sits 16 bits higher
    if ELEMENT == 2:
        s = v >> lo if lo > 0 else v
        low = (zero + 0x000F000F).to(tl.uint32, bitcast=True)
        out = (s & low) ^ (zero + 0x43084308).to(tl.uint32, bitcast=True)
    else:
        MB: tl.constexpr = 1 if ELEMENT == 1 else 3  # mantissa bits: the magnitude's lowest bit goes to 7 - MB
        MAG: tl.constexpr = ((1 << (BITS - 1)) - 1) * 0x10001  # the magnitude bits of both halves
        up: tl.constexpr = 7 - MB - lo
        if up >= 0:
            mag = (v << up) if up > 0 else v
        else:
            mag = v >> (-up)
        sup: tl.constexpr = 16 - BITS - lo  # the code's sign bit (lo + BITS - 1) to bit 15
        sgn = (v << sup) if sup > 0 else v
        mag = mag & (zero + (MAG << (7 - MB))).to(tl.uint32, bitcast=True)
        out = mag | (sgn & (zero - 0x7FFF8000).to(tl.uint32, bitcast=True))  # 0x80008000 as an int32
    return out


@triton.jit
def _halves(p, BF16: tl.constexpr):
    """uint32 bf16x2 patterns [..] -> [.., 2] (low half first): bf16, or (BF16 False: Triton's CPU
    interpreter, which has no bf16 constants and flushes bf16 subnormals) float32 from the same bits."""
    if BF16:
        lo = (p & 0xFFFF).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        hi = (p >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        lo = (p << 16).to(tl.float32, bitcast=True)
        hi = (p & 0xFFFF0000).to(tl.float32, bitcast=True)
    return tl.join(lo, hi)


@triton.jit
def _value(p, s, ELEMENT: tl.constexpr, SCALE: tl.constexpr, BF16_DOT: tl.constexpr):
    """A pair's bit patterns (uint32 [BN, KW]) -> its two weights [BN, KW, 2] (bf16; float32 in the
    interpreter), decoded and scaled (s: the word's block scale [BN, KW, 1], exact in bf16)."""
    w = _halves(p, BF16_DOT)
    if ELEMENT == 2:
        w = w - 136.0
    else:
        BIAS: tl.constexpr = 2.0**126 if ELEMENT == 1 else 2.0**120
        w = w * BIAS
        if SCALE != 0:
            w = w * s
    return w


@triton.jit
def _w_tile(vals_ptr, scales_ptr, rows, n_mask, w0, stride_w, stride_s, zero,
            ELEMENT: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr, BITS: tl.constexpr,
            BLOCK_N: tl.constexpr, KW: tl.constexpr, BF16_DOT: tl.constexpr):
    """The decoded tile [BLOCK_N, KW * PER] (bf16, columns in order) of words w0 .. w0 + KW. The
    arithmetic is packed bf16 on the GPU; float32 in Triton's CPU interpreter (BF16_DOT False): the
    same values, every step being exact."""
    PER: tl.constexpr = 32 // BITS
    words = w0 + tl.arange(0, KW)[None, :]
    v = tl.load(vals_ptr + rows * stride_w + words, mask=n_mask, other=0).to(tl.uint32, bitcast=True)
    # pair i of a word = columns 2i, 2i + 1 (low, high half); joined pairs come out as [.., h, i bits] -> [.., i, h]
    if SCALE != 0 and ELEMENT != 2:  # the block scale of each word, exact in bf16: [BN, KW, 1]
        s = _scale_raw(scales_ptr, rows, words * PER // BLOCK, n_mask, stride_s, SCALE)
        s = s.to(tl.bfloat16)[:, :, None] if BF16_DOT else s[:, :, None]
    else:
        s = 1.0
    if PER == 8:
        w = tl.join(tl.join(_value(_pair(v, 0, BITS, ELEMENT, zero), s, ELEMENT, SCALE, BF16_DOT),
                            _value(_pair(v, 1, BITS, ELEMENT, zero), s, ELEMENT, SCALE, BF16_DOT)),
                    tl.join(_value(_pair(v, 2, BITS, ELEMENT, zero), s, ELEMENT, SCALE, BF16_DOT),
                            _value(_pair(v, 3, BITS, ELEMENT, zero), s, ELEMENT, SCALE, BF16_DOT)))
        w = tl.permute(w, (0, 1, 4, 3, 2))
    else:
        w = tl.join(_value(_pair(v, 0, BITS, ELEMENT, zero), s, ELEMENT, SCALE, BF16_DOT),
                    _value(_pair(v, 1, BITS, ELEMENT, zero), s, ELEMENT, SCALE, BF16_DOT))
        w = tl.permute(w, (0, 1, 3, 2))
    w = tl.reshape(w, (BLOCK_N, KW * PER))
    return w.to(tl.bfloat16) if BF16_DOT else w


@triton.jit
def _group_codes(v, meta, g: tl.constexpr, BITS: tl.constexpr):
    """Group g of every 2:4 word (values v, metadata meta: uint32 [BN, KW]) as its 4 dense codes, pruned
    positions 0 (which decodes to 0 in every format), at bits 0, 8, 16, 24 of a uint32: the two kept
    codes shifted to 8 * p0 and 8 * p1. Integer shifts instead of selects on values."""
    CODE: tl.constexpr = (1 << BITS) - 1
    kept = v >> (2 * BITS * g) if g > 0 else v  # the group's codes: v0 in the low BITS, v1 above
    nib = meta >> (4 * g) if g > 0 else meta  # p0 | p1 << 2 in the low bits
    return ((kept & CODE) << ((nib << 3) & 24)) | (((kept >> BITS) & CODE) << ((nib << 1) & 24))


@triton.jit
def _group_tile(v, meta, s, g: tl.constexpr, BITS: tl.constexpr, ELEMENT: tl.constexpr, SCALE: tl.constexpr,
                BF16_DOT: tl.constexpr, zero):
    """Group g's 4 dense weights [BN, KW, 2 (r), 2 (h)], column 2h + r: the dense codes at bits 0 / 16 are
    columns 0 / 2 and at bits 8 / 24 columns 1 / 3, two bf16x2 pairs decoded as in the dense tile. The
    pairs stay whole (h innermost: no 16-bit shuffles), so the group's K order is columns 0, 2, 1, 3
    and x is read in that order too."""
    dense = _group_codes(v, meta, g, BITS)
    pairs = tl.join(_value(_pair(dense, 0, BITS, ELEMENT, zero), s, ELEMENT, SCALE, BF16_DOT),
                    _value(_pair(dense, 8 // BITS, BITS, ELEMENT, zero), s, ELEMENT, SCALE, BF16_DOT))
    return tl.permute(pairs, (0, 1, 3, 2))


@triton.jit
def _w_tile24(vals_ptr, meta_ptr, scales_ptr, rows, n_mask, w0, stride_w, stride_meta, stride_s, zero,
              ELEMENT: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr, BITS: tl.constexpr,
              BLOCK_N: tl.constexpr, KW: tl.constexpr, BF16_DOT: tl.constexpr):
    """The decoded dense tile [BLOCK_N, KW * WC] (WC = 2 * PER dense columns per word) of 2:4 words
    w0 .. w0 + KW: each group's kept codes moved to their columns by integer shifts (`_group_codes`), then
    decoded in pairs like a dense word; the tensor cores multiply the zeros too, which costs nothing at
    these M."""
    PER: tl.constexpr = 32 // BITS
    WC: tl.constexpr = 2 * PER
    words = w0 + tl.arange(0, KW)[None, :]
    v = tl.load(vals_ptr + rows * stride_w + words, mask=n_mask, other=0).to(tl.uint32, bitcast=True)
    meta = _meta(meta_ptr, rows, words, n_mask, stride_meta, BITS)  # group g of the word: bits 4g .. 4g + 3
    if SCALE != 0 and ELEMENT != 2:
        s = _scale_raw(scales_ptr, rows, words * WC // BLOCK, n_mask, stride_s, SCALE)
        s = s.to(tl.bfloat16)[:, :, None] if BF16_DOT else s[:, :, None]
    else:
        s = 1.0
    if PER == 8:  # 4 groups a word; joined as [.., r, h, g bit 0, g bit 1] -> [.., g, r, h]
        w = tl.join(tl.join(_group_tile(v, meta, s, 0, BITS, ELEMENT, SCALE, BF16_DOT, zero),
                            _group_tile(v, meta, s, 1, BITS, ELEMENT, SCALE, BF16_DOT, zero)),
                    tl.join(_group_tile(v, meta, s, 2, BITS, ELEMENT, SCALE, BF16_DOT, zero),
                            _group_tile(v, meta, s, 3, BITS, ELEMENT, SCALE, BF16_DOT, zero)))
        w = tl.permute(w, (0, 1, 5, 4, 2, 3))
    else:  # 8-bit: 2 groups a word
        w = tl.join(_group_tile(v, meta, s, 0, BITS, ELEMENT, SCALE, BF16_DOT, zero),
                    _group_tile(v, meta, s, 1, BITS, ELEMENT, SCALE, BF16_DOT, zero))
        w = tl.permute(w, (0, 1, 4, 2, 3))
    w = tl.reshape(w, (BLOCK_N, KW * WC))
    return w.to(tl.bfloat16) if BF16_DOT else w


@triton.jit
def _tc_kernel(x_ptr, vals_ptr, meta_ptr, scales_ptr, y_ptr, ws_ptr, count_ptr, tensor_scale, M, N, stride_xm,
               stride_ym, stride_w, stride_meta, stride_s, zero,
               ELEMENT: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr, BITS: tl.constexpr,
               SPARSE: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
               TILES_PER_SPLIT: tl.constexpr, BF16_DOT: tl.constexpr):
    pid_k, offs_m, offs_n, m_mask, n_mask = tile_offsets(M, N, BLOCK_M, BLOCK_N)
    rows = offs_n[:, None]
    WC: tl.constexpr = 64 // BITS if SPARSE else 32 // BITS  # dense columns per word
    KW: tl.constexpr = BLOCK_K // WC  # words per row per tile
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for t in range(0, TILES_PER_SPLIT):
        k0 = (pid_k * TILES_PER_SPLIT + t) * BLOCK_K
        if SPARSE:
            w = _w_tile24(vals_ptr, meta_ptr, scales_ptr, rows, n_mask[:, None], k0 // WC, stride_w, stride_meta,
                          stride_s, zero, ELEMENT, SCALE, BLOCK, BITS, BLOCK_N, KW, BF16_DOT)
        else:
            w = _w_tile(vals_ptr, scales_ptr, rows, n_mask[:, None], k0 // WC, stride_w, stride_s, zero,
                        ELEMENT, SCALE, BLOCK, BITS, BLOCK_N, KW, BF16_DOT)
        kk = tl.arange(0, BLOCK_K)
        if SPARSE:  # a 2:4 tile's K order: columns 0, 2, 1, 3 of every group of 4 (_group_tile)
            kk = (kk & ~3) | ((kk & 1) << 1) | ((kk >> 1) & 1)
        cols = k0 + kk
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + cols[None, :], mask=m_mask[:, None], other=0.0)
        if BF16_DOT:
            part = tl.dot(w, tl.trans(x))
        else:  # Triton's CPU interpreter gets bf16 dots wrong: float32 operands hold the same values
            part = tl.dot(w, tl.trans(x.to(tl.float32)))
        if ELEMENT == 2:  # the group's fp16 scale (BLOCK_K divides the group)
            s = _scale_raw(scales_ptr, offs_n, k0 // BLOCK, n_mask, stride_s, SCALE)
            acc += part * s[:, None]
        else:
            acc += part
    if SCALE == 2:
        acc = acc * tensor_scale
    if SPLIT_K == 1:
        store_tile(y_ptr, tl.trans(acc), offs_m, offs_n, m_mask, n_mask, stride_ym, 1)
    else:
        store_split_tile(y_ptr, ws_ptr, count_ptr, tl.trans(acc), offs_m, offs_n, m_mask, n_mask, stride_ym, SPLIT_K)


def default_config(m: int, p: PackedLinear) -> dict[str, int]:
    """Tile sizes: 64 rows of W per program, K tiles of 128 (int4: at most the group), split-K to give
    the GPU at least ~2 programs per SM."""
    block_k = 128
    if p.element == "int4":
        block_k = min(block_k, p.block)
    while p.k % block_k:
        block_k //= 2
    block_n = 64
    split = split_k(triton.cdiv(p.n, block_n) * triton.cdiv(m, 16), p.k // block_k)
    return {"BLOCK_M": 16 if m <= 16 else 32 if m <= 32 else 64, "BLOCK_N": block_n, "BLOCK_K": block_k,
            "SPLIT_K": split, "num_warps": 4, "num_stages": 4}


def split_k(programs: int, tiles: int) -> int:
    """K splits (a power of two dividing the K tiles, >= 4 tiles each) until ~2 programs per SM (264)."""
    split = 1
    while programs * split < 264 and tiles % (split * 2) == 0 and tiles // (split * 2) >= 4:
        split *= 2
    return split


def tc_linear(x: torch.Tensor, p: PackedLinear, config: dict[str, int] | None = None,
              poison: bool = False) -> torch.Tensor:
    """y [M, N] (bf16) = x [M, K] (bf16, contiguous rows) W^T for a dense 4/8-bit packed W on the GPU."""
    if not supports(p):
        raise InputError(f"the tensor-core kernel reads int4 / e2m1 / e4m3 weights (dense or 2:4), not "
                         f"{p.format or 'bf16 values'}{' 2:4' if p.sparse24 else ''}")
    if x.dim() != 2 or x.dtype != torch.bfloat16 or x.stride(-1) != 1 or x.shape[1] != p.k:
        raise InputError(f"tc_linear takes x [M, {p.k}] bf16 with contiguous rows, got {x.dtype} {tuple(x.shape)}")
    m, k = x.shape
    cfg = dict(config or default_config(m, p))
    block_k, split = cfg.pop("BLOCK_K"), cfg.pop("SPLIT_K")
    wc = (64 if p.sparse24 else 32) // ELEMENT_BITS[p.element]  # dense columns per word
    tiles = k // block_k
    if k % block_k or tiles % split or block_k % (2 * wc) or block_k < 16 or cfg["BLOCK_M"] < 16 or (
            p.element == "int4" and p.block % block_k):
        raise InputError(f"config {config}: BLOCK_K must divide K = {k} (and the int4 group), hold whole "
                         f"words, and split into SPLIT_K equal parts; BLOCK_M >= 16")
    y = new_output(m, p.n, x.device, 1, poison)
    vals = p.values.view(torch.int32)
    meta = vals if p.meta is None else p.meta.view(torch.int16) if ELEMENT_BITS[p.element] == 4 else p.meta
    scales = p.scales if p.scales is not None else vals
    grid = (triton.cdiv(p.n, cfg["BLOCK_N"]), split, triton.cdiv(m, cfg["BLOCK_M"]))
    ws, count = split_workspace(x.device, m * p.n, grid[0] * grid[2]) if split > 1 else (y, vals)
    _tc_kernel[grid](x, vals, meta, scales, y, ws, count, float(p.tensor_scale), m, p.n, x.stride(0), y.stride(0),
                     vals.stride(0), meta.stride(0), scales.stride(0), 0, ELEMENT=ELEMENT_IDS[p.element],
                     SCALE=SCALE_IDS[p.scale_kind], BLOCK=p.block or 1, BITS=ELEMENT_BITS[p.element],
                     SPARSE=p.sparse24, BLOCK_K=block_k, SPLIT_K=split,
                     TILES_PER_SPLIT=tiles // split, BF16_DOT=os.environ.get("TRITON_INTERPRET") != "1", **cfg)
    return y
