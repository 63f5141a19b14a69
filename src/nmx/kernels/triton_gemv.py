"""Triton kernel for one token: y = x W^T with W packed (layout.py), streamed as 32-bit words.

At batch 1 the product is bound by the bytes of W, and a GPU streaming 4-bit weights at full
bandwidth leaves each SM only ~4 instructions per weight. So this kernel is built around the
instruction count, not the tensor cores:

- W is read as int32 words (16-byte vector loads of consecutive words along K), never as bytes;
- each element is decoded with integer bit moves into float32 bits, no conversion instructions
  (those run at 1/8 rate): e2m1 and e4m3 bits are dropped into a float32's exponent/mantissa, with
  the sign or-ed into bit 31, which is the signed value times 2^-126 (2^-120); float32 subnormals are
  exact, so E2M1 0.5 and E4M3's subnormals come out right. Instead of a multiply per weight to
  restore the scale, x comes in times 2^96 (2^90) and the sums go out times 2^30 (FOLD_SIGN; the
  older decode multiplied each weight by +-2^126); int4 uses the 2^23 magic number (code ^ 8 in a
  float's mantissa, minus 2^23 + 8); bf16 is a shift;
- the products of a word are summed first and the word's block scale multiplies that partial sum
  once (a word never straddles a scale block: blocks are >= 16 columns, words <= 16);
- 2:4: each group's two kept values multiply the x entries their positions select (selects, not
  a dense expansion); the metadata of a word's groups is one load. PRMT_GATHER takes both kept x of a
  group with one byte permute (PTX prmt) instead of compares and selects.

Each program owns BLOCK_N rows and W words per step; SPLIT_K > 1 splits K over programs and adds
float32 partial sums with atomics (for shapes with too few row blocks to fill the GPU).
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from nmx.kernels.layout import PackedLinear

ELEMENT_IDS = {"bf16": 0, "e2m1": 1, "int4": 2, "e4m3": 3}
SCALE_IDS = {None: 0, "e8m0": 1, "ue4m3": 2, "fp16": 3}
# FOLD_SIGN: x is scaled up by these where e2m1 / e4m3 weights decode as value * 2^-126 / 2^-120 (see `_dec_at`)
X_UP_E2M1 = tl.constexpr(2.0**96)
X_UP_E4M3 = tl.constexpr(2.0**90)
ELEMENT_BITS = {"bf16": 16, "e2m1": 4, "int4": 4, "e4m3": 8}


def word_columns(p: PackedLinear) -> int:
    """Dense K columns one 32-bit word of values covers."""
    per_word = 32 // ELEMENT_BITS[p.element]
    return per_word * 2 if p.sparse24 else per_word


@triton.jit
def _dec(c, ELEMENT: tl.constexpr):
    """Element code (uint32, in the low bits) -> float32, no conversion instructions."""
    if ELEMENT == 0:  # bf16
        v = (c << 16).to(tl.float32, bitcast=True)
    elif ELEMENT == 1:  # e2m1: value * 2^-126 from the bits, times +-2^126
        mag = ((c & 7) << 22).to(tl.float32, bitcast=True)
        v = mag * (((c & 8) << 28) | 0x7E800000).to(tl.float32, bitcast=True)
    elif ELEMENT == 2:  # int4, two's complement: (2^23 + (c ^ 8)) - (2^23 + 8)
        v = (((c & 15) ^ 8) | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0
    else:  # e4m3: value * 2^-120 from the bits, times +-2^120 (no NaN codes: pack refuses NaN)
        mag = ((c & 127) << 20).to(tl.float32, bitcast=True)
        v = mag * (((c & 128) << 24) | 0x7B800000).to(tl.float32, bitcast=True)
    return v


@triton.jit
def _dec_at(v, j: tl.constexpr, BITS: tl.constexpr, ELEMENT: tl.constexpr, zero, TINY: tl.constexpr = False):
    """Element j of every word v (uint32) -> float32, reading the code where it lies.

    int4 (one bit operation and one add): the nibble is masked in place and its top bit flipped
    (two's complement -> offset binary) inside a float32 whose exponent makes the nibble's lowest
    bit worth 1: 2^(23 - 4i) + (code ^ 8) for nibble i of a half-word, minus the constant.
    e2m1: magnitude bits moved to the float's exponent/mantissa (value * 2^-126), sign bit to bit 31
    of the constant +-2^126 that restores the scale; masks first, then shifts, so no extraction.
    `zero` is a run-time 0 added to the constants: it keeps them in registers, so that the compiler
    can fold a mask and a constant into one three-input logic instruction (LOP3).
    TINY (e2m1, e4m3): return the signed value times 2^-126 (2^-120) as it lies in the bits, without the
    multiply that restores it; the caller scales x up and the sum down instead (see `_x_up`)."""
    if ELEMENT == 2:
        i: tl.constexpr = j % 4
        src = v if j < 4 else v >> 16
        keep: tl.constexpr = 15 << (4 * i)
        flip: tl.constexpr = (8 << (4 * i)) | ((150 - 4 * i) << 23)
        bits = (src & keep) ^ (zero + flip).to(tl.uint32, bitcast=True)
        out = bits.to(tl.float32, bitcast=True) - (2.0 ** (23 - 4 * i) + 8.0)
    elif ELEMENT == 1 or ELEMENT == 3:  # a small float: e2m1 (mantissa 1 bit) or e4m3 (3 bits)
        lo: tl.constexpr = BITS * j
        MB: tl.constexpr = 1 if ELEMENT == 1 else 3
        MAG: tl.constexpr = ((1 << (BITS - 1)) - 1) << lo
        # +-2^126 (e2m1) or +-2^120 (e4m3): the exponent bias difference, signed by the code
        BIAS: tl.constexpr = 0x7E800000 if ELEMENT == 1 else 0x7B800000
        if lo <= 23 - MB:
            mag = (v & MAG) * (1 << (23 - MB - lo))
        else:
            mag = (v & MAG) >> (lo - 23 + MB)
        if TINY:  # sign bit moved to bit 31 and or-ed in: one shift and one three-input LOP3
            out = (((v << (32 - lo - BITS)) & 0x80000000) | mag).to(tl.float32, bitcast=True)
        else:
            sign = ((v << (32 - lo - BITS)) & 0x80000000) | (zero + BIAS).to(tl.uint32, bitcast=True)
            out = mag.to(tl.float32, bitcast=True) * sign.to(tl.float32, bitcast=True)
    else:  # bf16: the half-word moved to a float32's top
        out = ((v << 16) if j == 0 else (v & 0xFFFF0000)).to(tl.float32, bitcast=True)
    return out


@triton.jit
def _scale_raw(scales_ptr, rows, blk, mask, stride_s, SCALE: tl.constexpr):
    """The scales of blocks `blk` of each row as float32 (e8m0, ue4m3 or fp16 codes decoded)."""
    ptrs = scales_ptr + rows * stride_s + blk
    if SCALE == 3:
        s = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    else:
        c = tl.load(ptrs, mask=mask, other=0).to(tl.uint32)
        if SCALE == 1:  # e8m0: 2^(c - 127); code 0 is 2^-127, a float32 subnormal
            s = tl.where(c == 0, 0x00400000, c << 23).to(tl.float32, bitcast=True)
        else:  # ue4m3
            s = _dec(c, 3)
    return s


@triton.jit
def _scale(scales_ptr, rows, words, mask, stride_s, SCALE: tl.constexpr, BLOCK: tl.constexpr, WC: tl.constexpr):
    """The block scale of every (row, word) as float32 [BLOCK_N, W] (rows [BLOCK_N, 1], words [1, W])."""
    return _scale_raw(scales_ptr, rows, words * WC // BLOCK, mask, stride_s, SCALE)


@triton.jit
def _x_tile(x_ptr, offs_m, m_mask, stride_xm, cols, BF16_DOT: tl.constexpr):
    """x[:, cols] as the [BLOCK_M, W] operand of a dot."""
    x = tl.load(x_ptr + offs_m[:, None] * stride_xm + cols[None, :], mask=m_mask[:, None], other=0.0)
    return x if BF16_DOT else x.to(tl.float32)


@triton.jit
def _dot(acc, x, w, BF16_DOT: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N] += x [BLOCK_M, W] w[BLOCK_N, W]^T (w float32, rounded to bf16 for the
    tensor cores; the interpreter gets bf16 dots wrong, so float32 there)."""
    if BF16_DOT:
        acc = tl.dot(x, tl.trans(w.to(tl.bfloat16)), acc)
    else:
        acc = tl.dot(x, tl.trans(w), acc)
    return acc


@triton.jit
def _meta(meta_ptr, rows, words, mask, stride_meta, BITS: tl.constexpr):
    """The 2:4 metadata of every (row, word) as uint32 [BLOCK_N, W], group g of a word in bits 4g..4g+3
    (rows [BLOCK_N, 1], words [1, W])."""
    if BITS == 16:  # one group per word: its nibble of the byte shared with the next word
        mb = tl.load(meta_ptr + rows * stride_meta + words // 2, mask=mask, other=0)
        meta = mb.to(tl.uint32) >> ((words & 1) * 4)
    elif BITS == 8:  # two groups: one meta byte per word
        meta = tl.load(meta_ptr + rows * stride_meta + words, mask=mask, other=0).to(tl.uint32)
    else:  # four groups: 16 bits per word (meta read as int16)
        mh = tl.load(meta_ptr + rows * stride_meta + words, mask=mask, other=0)
        meta = mh.to(tl.uint16, bitcast=True).to(tl.uint32)
    return meta


@triton.jit
def _x_load(ptrs, words, KW, rows, EVEN: tl.constexpr, BCAST: tl.constexpr):
    """A [1, W] tile of x read as int32 pairs of bf16 (masked past the row's KW words unless EVEN).
    BCAST: the same pairs as [BLOCK_N, W] (one address down each column), which the compiler loads in the
    weights' own register layout: no trip through shared memory, no barrier (sass_count.py: the [1, W]
    tile costs ~18 barriers a tile in a layout conversion)."""
    if BCAST:
        ptrs = ptrs[None, :] + rows * 0
    if EVEN:
        pairs = tl.load(ptrs)
    elif BCAST:
        pairs = tl.load(ptrs, mask=(words < KW)[None, :] & (rows >= 0), other=0)
    else:
        pairs = tl.load(ptrs, mask=words < KW, other=0)
    return pairs.to(tl.uint32, bitcast=True)


@triton.jit
def _x_half(pairs, HIGH: tl.constexpr, BCAST: tl.constexpr = False):
    """One bf16 of each int32 pair (the low half: the even column) as float32, [1, W] or (BCAST) as is."""
    if HIGH:
        out = (pairs & 0xFFFF0000).to(tl.float32, bitcast=True)
    else:
        out = (pairs << 16).to(tl.float32, bitcast=True)
    if not BCAST:
        out = out[None, :]
    return out


@triton.jit
def _x_up(pairs, HIGH: tl.constexpr, TINY: tl.constexpr, ELEMENT: tl.constexpr, BCAST: tl.constexpr = False):
    """`_x_half`, times 2^96 (e2m1) or 2^90 (e4m3) where the weights decode TINY (see `_dec_at`)."""
    out = _x_half(pairs, HIGH, BCAST)
    if TINY:
        out = out * (X_UP_E2M1 if ELEMENT == 1 else X_UP_E4M3)
    return out


@triton.jit
def _prmt(a, b, sel, INTERP: tl.constexpr):
    """PTX prmt.b32: byte i of the result is byte (sel >> 4i) & 7 of the eight bytes {b, a} (a holds 0..3);
    the interpreter gets the same from shifts and masks."""
    if INTERP:
        out = tl.zeros_like(a)
        for i in tl.static_range(4):
            idx = (sel >> (4 * i)) & 7
            byte = (tl.where(idx < 4, a, b) >> ((idx & 3) * 8)) & 0xFF
            out = out | (byte << (8 * i))
    else:
        out = tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, sel], dtype=tl.uint32,
                                        is_pure=True, pack=1)
    return out


@triton.jit
def _bf16x2_up(pair, zero, ELEMENT: tl.constexpr, INTERP: tl.constexpr):
    """Both bf16 of each uint32 times 2^96 (e2m1) or 2^90 (e4m3), exactly (for |x| < 2^32): one packed multiply
    (the constant pair 0x6F80 / 0x6C80 in a register: `zero` is a run-time 0)."""
    if INTERP:
        f: tl.constexpr = X_UP_E2M1 if ELEMENT == 1 else X_UP_E4M3
        lo = ((pair << 16).to(tl.float32, bitcast=True) * f).to(tl.uint32, bitcast=True) >> 16
        hi = ((pair & 0xFFFF0000).to(tl.float32, bitcast=True) * f).to(tl.uint32, bitcast=True) & 0xFFFF0000
        out = hi | lo
    else:
        c = (zero + (0x6F806F80 if ELEMENT == 1 else 0x6C806C80)).to(tl.uint32, bitcast=True)
        out = tl.inline_asm_elementwise("mul.rn.bf16x2 $0, $1, $2;", "=r,r,r", [pair, c], dtype=tl.uint32,
                                        is_pure=True, pack=1)
    return out


@triton.jit
def _int4_fma_part(v, x32_ptr, xcol, words1, KW, rows, EVEN: tl.constexpr, BCAST: tl.constexpr, zero):
    """sum_j x_j (q_j - 8) / 128 over each int4 word's 8 slots, with one logic op and one FMA a weight.

    Each nibble is read where it lies after one of four byte moves of the word (v, v << 8, v >> 8, v rotated
    by 16: 3 shifts for 8 weights) at bits 16-19 (even slots) or 12-15 (odd slots), flipped to offset binary
    and dropped into a float with exponent 0 or 4: 1 + q/128 or 16 + q/128, both exact, and both exact
    times a bf16 x. The constant parts are taken off once a word, by the x sum sum_j x_j (base_j + 1/16),
    which is the same for every row. The products are exact; the word's 8-term sum rounds at ~2^-24 of its
    largest term (16 |x|), ~2^-13 of the result: the price of the subtract per weight it saves."""
    c0 = v
    c1 = v << 8
    c2 = v >> 8
    c3 = (v << 16) | (v >> 16)
    lo: tl.constexpr = 0x00080000 ^ 0x3F800000  # flip + exponent of 1.0 for bits 16-19
    hi: tl.constexpr = 0x00008000 ^ 0x41800000  # flip + exponent of 16.0 for bits 12-15
    flip4 = (zero + lo).to(tl.uint32, bitcast=True)
    flip3 = (zero + hi).to(tl.uint32, bitcast=True)
    part = tl.zeros(v.shape, dtype=tl.float32)
    corr = tl.zeros(v.shape, dtype=tl.float32)
    for q in tl.static_range(4):
        pr = _x_load(x32_ptr + xcol + q, words1, KW, rows, EVEN, BCAST)
        xe = _x_half(pr, False, BCAST)  # column 2q: slot q
        xo = _x_half(pr, True, BCAST)  # column 2q + 1: slot q + 4
        # where slots q and q + 4 lie: (0, 4) in c3 / c0, (1, 5) in c1 / c2, (2, 6) in c1 / c2, (3, 7) in c0 / c3;
        # even slots at bits 16-19, odd slots at bits 12-15
        if q == 0:
            we = ((c3 & 0x000F0000) ^ flip4).to(tl.float32, bitcast=True)
            wo = ((c0 & 0x000F0000) ^ flip4).to(tl.float32, bitcast=True)
        elif q == 1:
            we = ((c1 & 0x0000F000) ^ flip3).to(tl.float32, bitcast=True)
            wo = ((c2 & 0x0000F000) ^ flip3).to(tl.float32, bitcast=True)
        elif q == 2:
            we = ((c1 & 0x000F0000) ^ flip4).to(tl.float32, bitcast=True)
            wo = ((c2 & 0x000F0000) ^ flip4).to(tl.float32, bitcast=True)
        else:
            we = ((c0 & 0x0000F000) ^ flip3).to(tl.float32, bitcast=True)
            wo = ((c3 & 0x0000F000) ^ flip3).to(tl.float32, bitcast=True)
        part += we * xe
        part += wo * xo
        corr += (xe + xo) * (1.0625 if q % 2 == 0 else 16.0625)
    return part - corr


@triton.jit
def _w_tile(vals_ptr, meta_ptr, rows, n_mask, tile, KW, stride_w, stride_meta, valid, BITS: tl.constexpr,
            SPARSE: tl.constexpr, W: tl.constexpr, EVEN: tl.constexpr):
    """The words [BLOCK_N, W] (uint32) of K tile `tile` and, for 2:4, their metadata (else the words
    again); nothing is read where `valid` is false (a prefetch past the last tile)."""
    words1 = tile * W + tl.arange(0, W)
    words1 = tl.max_contiguous(tl.multiple_of(words1, W), W)
    words = words1[None, :]
    wmask = (n_mask[:, None] & valid) if EVEN else n_mask[:, None] & (words < KW) & valid
    v = tl.load(vals_ptr + rows * stride_w + words, mask=wmask, other=0).to(tl.uint32, bitcast=True)
    if SPARSE:
        meta = _meta(meta_ptr, rows, words, wmask, stride_meta, BITS)
    else:
        meta = v
    return v, meta


@triton.jit
def _gemv1_kernel(x32_ptr, vals_ptr, meta_ptr, scales_ptr, y_ptr, tensor_scale, N, KW, stride_w, stride_meta,
                  stride_s, zero,
                  ELEMENT: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr, SPARSE: tl.constexpr,
                  BITS: tl.constexpr, BLOCK_N: tl.constexpr, W: tl.constexpr, SPLIT_K: tl.constexpr,
                  TILES_PER_SPLIT: tl.constexpr, EVEN: tl.constexpr, PREFETCH: tl.constexpr,
                  FOLD_SIGN: tl.constexpr = True, X_BCAST: tl.constexpr = False, PRMT_GATHER: tl.constexpr = False,
                  INTERP: tl.constexpr = False, INT4_FMA: tl.constexpr = False):
    """One token: FMAs into a [BLOCK_N, W] accumulator, the products of a word summed first and its
    block scale applied to that sum. x is read as int32 pairs of bf16 in 1-D (only x, the small
    operand, changes layout through shared memory). EVEN: the split's tiles cover the row exactly
    (else the words past KW are masked). PREFETCH: the next tile's words (and 2:4 metadata) are loaded
    before this tile is decoded, so every warp keeps two tiles of weight bytes in flight."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    rows = offs_n[:, None]
    PER: tl.constexpr = 32 // BITS  # elements per word
    WC: tl.constexpr = 2 * PER if SPARSE else PER  # dense columns per word
    # e2m1 / e4m3 decode to value * 2^-126 / 2^-120 (no restoring multiply): x comes in times 2^96 / 2^90 and
    # the row sums go out times 2^30, powers of two, so every product and sum rounds as it would unscaled
    # (for |x| < 2^32; products below 2^-96 in magnitude would lose bits)
    # (FOLD_SIGN False: the older decode, a multiply by +-2^126 / 2^120 per weight, kept to time against)
    TINY: tl.constexpr = FOLD_SIGN and (ELEMENT == 1 or ELEMENT == 3)
    acc = tl.zeros((BLOCK_N, W), dtype=tl.float32)
    if PREFETCH:
        v_next, meta_next = _w_tile(vals_ptr, meta_ptr, rows, n_mask, pid_k * TILES_PER_SPLIT, KW, stride_w,
                                    stride_meta, True, BITS, SPARSE, W, EVEN)
    for t in range(0, TILES_PER_SPLIT):
        words1 = (pid_k * TILES_PER_SPLIT + t) * W + tl.arange(0, W)
        words1 = tl.max_contiguous(tl.multiple_of(words1, W), W)
        if PREFETCH:
            v = v_next
            meta = meta_next
            v_next, meta_next = _w_tile(vals_ptr, meta_ptr, rows, n_mask, pid_k * TILES_PER_SPLIT + t + 1, KW,
                                        stride_w, stride_meta, t + 1 < TILES_PER_SPLIT, BITS, SPARSE, W, EVEN)
        else:
            v, meta = _w_tile(vals_ptr, meta_ptr, rows, n_mask, pid_k * TILES_PER_SPLIT + t, KW, stride_w,
                              stride_meta, True, BITS, SPARSE, W, EVEN)
        xcol = words1 * (WC // 2)  # first x pair of each word (1-D: x is small, its layout is what moves)
        part = tl.zeros((BLOCK_N, W), dtype=tl.float32)
        if SPARSE:
            if PRMT_GATHER:
                # every group's byte-permute selector at once: the 2-bit positions p0, p1 of the groups spread
                # one to a nibble, then looked up (a byte permute of 0x76543210 is a table of (2p, 2p + 1) pairs)
                sp = meta & 15 if BITS == 16 else meta
                sp = (sp | (sp << 8)) & 0x00FF00FF
                sp = (sp | (sp << 4)) & 0x0F0F0F0F
                sp = (sp | (sp << 2)) & 0x33333333
                table = (zero + 0x76543210).to(tl.uint32, bitcast=True)
                sel_lo = _prmt(table, table, sp, INTERP)  # groups 0 and 1, in the low and high half
                sel_hi = _prmt(table, table, sp >> 16, INTERP) if PER // 2 > 2 else sel_lo  # groups 2 and 3
            for g in tl.static_range(PER // 2):
                pa = _x_load(x32_ptr + xcol + 2 * g, words1, KW, rows, EVEN, X_BCAST)
                pb = _x_load(x32_ptr + xcol + 2 * g + 1, words1, KW, rows, EVEN, X_BCAST)
                if PRMT_GATHER and TINY and not X_BCAST:  # x scaled up once a column, before the broadcast
                    pa = _bf16x2_up(pa, zero, ELEMENT, INTERP)
                    pb = _bf16x2_up(pb, zero, ELEMENT, INTERP)
                if PRMT_GATHER:
                    # one byte permute takes the two kept x (bf16) of the group out of its four: selector
                    # nibbles 2 p0, 2 p0 + 1, 2 p1, 2 p1 + 1
                    sel = sel_lo if g < 2 else sel_hi
                    pair = _prmt(pa, pb, sel >> 16 if g % 2 else sel, INTERP)
                    if TINY and X_BCAST:
                        pair = _bf16x2_up(pair, zero, ELEMENT, INTERP)
                    xa = _x_half(pair, False, True)  # pair is [BLOCK_N, W] already
                    xb = _x_half(pair, True, True)
                else:
                    x0 = _x_up(pa, False, TINY, ELEMENT, X_BCAST)
                    x1 = _x_up(pa, True, TINY, ELEMENT, X_BCAST)
                    x2 = _x_up(pb, False, TINY, ELEMENT, X_BCAST)
                    x3 = _x_up(pb, True, TINY, ELEMENT, X_BCAST)
                    # p0 in {0, 1, 2} and p1 in {1, 2, 3}: select x by testing the nibble's bits in place
                    xa = tl.where((meta & (2 << (4 * g))) != 0, x2, tl.where((meta & (1 << (4 * g))) != 0, x1, x0))
                    xb = tl.where((meta & (8 << (4 * g))) != 0, tl.where((meta & (4 << (4 * g))) != 0, x3, x2),
                                  x1)
                part += _dec_at(v, 2 * g, BITS, ELEMENT, zero, TINY) * xa
                part += _dec_at(v, 2 * g + 1, BITS, ELEMENT, zero, TINY) * xb
        else:
            PAIRS: tl.constexpr = PER // 2
            if INT4_FMA:  # int4 without the subtract per weight (see `_int4_fma_part`)
                part = _int4_fma_part(v, x32_ptr, xcol, words1, KW, rows, EVEN, X_BCAST, zero)
            elif PAIRS == 4 and not X_BCAST:  # x for the whole tile in one vector load, split into 4 pairs
                xp = x32_ptr + xcol[:, None] + tl.arange(0, 4)[None, :]
                xt = tl.load(xp) if EVEN else tl.load(xp, mask=(words1 < KW)[:, None], other=0)
                xt = xt.to(tl.uint32, bitcast=True)
                e, o = tl.split(tl.reshape(xt, (W, 2, 2)))
                x_0, x_2 = tl.split(e)
                x_1, x_3 = tl.split(o)
                # pair-interleaved words (layout.py): x pair q (columns 2q, 2q+1) meets slots q and q + 4
                part += _dec_at(v, 0, BITS, ELEMENT, zero, TINY) * _x_up(x_0, False, TINY, ELEMENT)
                part += _dec_at(v, 4, BITS, ELEMENT, zero, TINY) * _x_up(x_0, True, TINY, ELEMENT)
                part += _dec_at(v, 1, BITS, ELEMENT, zero, TINY) * _x_up(x_1, False, TINY, ELEMENT)
                part += _dec_at(v, 5, BITS, ELEMENT, zero, TINY) * _x_up(x_1, True, TINY, ELEMENT)
                part += _dec_at(v, 2, BITS, ELEMENT, zero, TINY) * _x_up(x_2, False, TINY, ELEMENT)
                part += _dec_at(v, 6, BITS, ELEMENT, zero, TINY) * _x_up(x_2, True, TINY, ELEMENT)
                part += _dec_at(v, 3, BITS, ELEMENT, zero, TINY) * _x_up(x_3, False, TINY, ELEMENT)
                part += _dec_at(v, 7, BITS, ELEMENT, zero, TINY) * _x_up(x_3, True, TINY, ELEMENT)
            else:  # pair q meets slots q and q + PAIRS: 4-bit (X_BCAST), 8-bit (q, q + 2) or bf16 (0, 1)
                for q in tl.static_range(PAIRS):
                    pr = _x_load(x32_ptr + xcol + q, words1, KW, rows, EVEN, X_BCAST)
                    part += _dec_at(v, q, BITS, ELEMENT, zero, TINY) * _x_up(pr, False, TINY, ELEMENT, X_BCAST)
                    part += _dec_at(v, q + PAIRS, BITS, ELEMENT, zero, TINY) * _x_up(pr, True, TINY, ELEMENT,
                                                                                      X_BCAST)
        if SCALE != 0:
            NB: tl.constexpr = max(W * WC // BLOCK, 1)  # scale blocks in the tile (1: the tile is in one)
            blk = (pid_k * TILES_PER_SPLIT + t) * W * WC // BLOCK + tl.arange(0, NB)[None, :]
            smask = n_mask[:, None] if EVEN else n_mask[:, None] & (blk < KW * WC // BLOCK)
            sc = _scale_raw(scales_ptr, rows, blk, smask, stride_s, SCALE)
            sc = tl.reshape(tl.broadcast_to(sc[:, :, None], (BLOCK_N, NB, W // NB)), (BLOCK_N, W))
            acc += part * sc
        else:
            acc += part
    out = tl.sum(acc, axis=1)
    if TINY:
        out = out * 1073741824.0  # 2^30
    if INT4_FMA:
        out = out * 128.0
    if SCALE == 2:
        out = out * tensor_scale
    if SPLIT_K == 1:
        tl.store(y_ptr + offs_n, out.to(y_ptr.dtype.element_ty), mask=n_mask)
    else:
        tl.atomic_add(y_ptr + offs_n, out, mask=n_mask)


@triton.jit
def tile_offsets(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(K split, token offsets, row offsets, their masks) of this program in a (N blocks, SPLIT_K, M blocks) grid."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    return tl.program_id(1), offs_m, offs_n, offs_m < M, offs_n < N


@triton.jit
def store_tile(y_ptr, out, offs_m, offs_n, m_mask, n_mask, stride_ym, SPLIT_K: tl.constexpr):
    """Write an output tile [BLOCK_M, BLOCK_N]: stored, or added (float32 atomics) when K is split."""
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(y_ptrs, out, mask=mask)


@triton.jit
def store_split_tile(y_ptr, ws_ptr, count_ptr, out, offs_m, offs_n, m_mask, n_mask, stride_ym,
                     SPLIT_K: tl.constexpr):
    """Split-K in one launch: every program adds its partial tile [BLOCK_M, BLOCK_N] (float32) into the
    workspace, then counts itself in; the last of the tile's SPLIT_K programs takes the sum out (and
    leaves zeros: the workspace and counter clean themselves for the next call) and stores it as bf16.
    No zero-fill before and no cast after, so a split call is one kernel, also inside a CUDA graph."""
    ws = ws_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]  # laid out as y
    mask = m_mask[:, None] & n_mask[None, :]
    tl.atomic_add(ws, out, mask=mask, sem="relaxed")
    tile = tl.program_id(2) * tl.num_programs(0) + tl.program_id(0)
    # every thread's adds, then one release at GPU scope (the CUDA idiom: barrier, then a fenced atomic):
    # a program that sees the count sees the adds
    tl.debug_barrier()
    arrived = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu")
    if arrived == SPLIT_K - 1:
        # read and zero in one atomic, on the bits (the interpreter exchanges integers only)
        total = tl.atomic_xchg(ws.to(tl.pointer_type(tl.int32)), 0, mask=mask, sem="relaxed").to(tl.float32,
                                                                                                  bitcast=True)
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], total.to(y_ptr.dtype.element_ty), mask=mask)
        tl.atomic_xchg(count_ptr + tile, 0, sem="relaxed")  # the next launch is ordered after this one


_SPLIT_WORKSPACE: dict = {}


def split_workspace(device: torch.device, elements: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed float32 workspace and int32 tile counters for `store_split_tile`, one pair per (device,
    stream), grown when a call needs more; kernels leave them zeroed."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (str(device), stream)
    ws, count = _SPLIT_WORKSPACE.get(key, (None, None))
    if ws is None or ws.numel() < elements or count.numel() < tiles:
        ws = torch.zeros(max(elements, 0 if ws is None else ws.numel()), device=device, dtype=torch.float32)
        count = torch.zeros(max(tiles, 0 if count is None else count.numel()), device=device, dtype=torch.int32)
        _SPLIT_WORKSPACE[key] = (ws, count)
    return ws, count


def new_output(m: int, n: int, device: torch.device, split: int, poison: bool) -> torch.Tensor:
    """The output of a launch: float32 zeros to add split-K partial sums into, else bf16 (NaN-filled
    when `poison`: tests check every element is written)."""
    if split > 1:
        return torch.zeros((m, n), device=device, dtype=torch.float32)
    y = torch.empty((m, n), device=device, dtype=torch.bfloat16)
    return y.fill_(float("nan")) if poison else y


@triton.jit
def _dot_kernel(x_ptr, vals_ptr, meta_ptr, scales_ptr, y_ptr, tensor_scale, M, N, stride_xm, stride_ym, stride_w,
                stride_meta, stride_s, zero,
                ELEMENT: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr, SPARSE: tl.constexpr,
                BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, W: tl.constexpr,
                SPLIT_K: tl.constexpr, TILES_PER_SPLIT: tl.constexpr, BF16_DOT: tl.constexpr):
    """Several tokens: the same decode, element j of every word forming a [BLOCK_N, W] operand of a
    tensor-core dot with x's columns j, j + WC, ... (the dot's K order is a permutation of K, the
    same for both operands); scales multiply the weights before the dot."""
    pid_k, offs_m, offs_n, m_mask, n_mask = tile_offsets(M, N, BLOCK_M, BLOCK_N)
    rows = offs_n[:, None]
    PER: tl.constexpr = 32 // BITS  # elements per word
    WC: tl.constexpr = 2 * PER if SPARSE else PER  # dense columns per word
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(0, TILES_PER_SPLIT):
        words = (pid_k * TILES_PER_SPLIT + t) * W + tl.arange(0, W)
        words = tl.max_contiguous(tl.multiple_of(words, W), W)
        v = tl.load(vals_ptr + rows * stride_w + words[None, :], mask=n_mask[:, None], other=0)
        v = v.to(tl.uint32, bitcast=True)
        col = words * WC  # first dense column of each word
        if SCALE != 0:
            s = _scale(scales_ptr, rows, words[None, :], n_mask[:, None], stride_s, SCALE, BLOCK, WC)
        if SPARSE:
            meta = _meta(meta_ptr, rows, words[None, :], n_mask[:, None], stride_meta, BITS)
            for g in tl.static_range(PER // 2):
                nib = meta >> (4 * g)
                p0 = nib & 3
                p1 = (nib >> 2) & 3
                d0 = _dec_at(v, 2 * g, BITS, ELEMENT, zero)
                d1 = _dec_at(v, 2 * g + 1, BITS, ELEMENT, zero)
                if SCALE != 0:
                    d0 = d0 * s
                    d1 = d1 * s
                for r in tl.static_range(4):  # the group's 4 dense columns, one dot each
                    wr = tl.where(p0 == r, d0, tl.where(p1 == r, d1, 0.0))
                    acc = _dot(acc, _x_tile(x_ptr, offs_m, m_mask, stride_xm, col + 4 * g + r, BF16_DOT), wr,
                               BF16_DOT)
        else:
            for j in tl.static_range(PER):  # slot j holds column 2*(j mod PER/2) + j div PER/2 (layout.py)
                d = _dec_at(v, j, BITS, ELEMENT, zero)
                if SCALE != 0:
                    d = d * s
                xj = _x_tile(x_ptr, offs_m, m_mask, stride_xm, col + (2 * (j % (PER // 2)) + j // (PER // 2)), BF16_DOT)
                acc = _dot(acc, xj, d, BF16_DOT)
    if SCALE == 2:
        acc = acc * tensor_scale
    store_tile(y_ptr, acc, offs_m, offs_n, m_mask, n_mask, stride_ym, SPLIT_K)


def default_config(m: int, n: int, k: int, p: PackedLinear) -> dict[str, int]:
    """Tile sizes by shape (benchmarks/kernels_bench.py --sweep on an H200)."""
    words = k // word_columns(p)
    if m == 1:  # best of the sweep on 4096x4096 (kernels_h200_run5.json); 2:4 bf16 liked narrower programs
        narrow = p.sparse24 and p.element == "bf16"
        return {"BLOCK_M": 1, "BLOCK_N": 4 if narrow else 8, "W": min(256, triton.next_power_of_2(words)), "SPLIT_K": 1,
                "num_warps": 2 if narrow else 4, "num_stages": 2}
    w = 32 if words % 32 == 0 else 16
    return {"BLOCK_M": 16 if m <= 16 else 32 if m <= 32 else 64, "BLOCK_N": 64, "W": w, "SPLIT_K": 1,
            "num_warps": 4, "num_stages": 3}


@dataclass(frozen=True)
class _Launch:
    """What every launch for one packed weight passes, made once (views and dicts cost host time)."""

    vals: torch.Tensor  # values as int32 words
    meta: torch.Tensor  # 2:4 metadata (int16 for 4-bit values), or a placeholder
    scales: torch.Tensor
    tensor_scale: float
    strides: tuple[int, int, int]  # row strides of vals, meta, scales
    consts: dict


_LAUNCH: "weakref.WeakKeyDictionary[PackedLinear, _Launch]" = weakref.WeakKeyDictionary()


def _launch(p: PackedLinear) -> _Launch:
    got = _LAUNCH.get(p)
    if got is None:
        vals = p.values.view(torch.int32)
        meta = p.meta
        if meta is not None and ELEMENT_BITS[p.element] == 4:
            meta = meta.view(torch.int16)
        strides = (vals.stride(0), meta.stride(0) if meta is not None else 0,
                   p.scales.stride(0) if p.scales is not None else 0)
        consts = dict(ELEMENT=ELEMENT_IDS[p.element], SCALE=SCALE_IDS[p.scale_kind], BLOCK=p.block or 1,
                      SPARSE=p.sparse24, BITS=ELEMENT_BITS[p.element])
        got = _LAUNCH[p] = _Launch(vals, meta if meta is not None else vals, p.scales if p.scales is not None else vals,
                                   float(p.tensor_scale), strides, consts)
    return got


def word_linear(x: torch.Tensor, p: PackedLinear, config: dict[str, int] | None = None,
                poison: bool = False) -> torch.Tensor:
    """y [M, N] (bf16) = x [M, K] (bf16, contiguous rows) W^T on the GPU. BLOCK_M = 1 in the config
    (the default for M = 1) runs the one-token kernel (M must be 1); BLOCK_M >= 16 the tensor cores.
    `poison` fills the output with NaN first (tests: every element must be written).
    One-token config switches beside the tiling (benchmarks/gemv_variants.py times them): PREFETCH (next
    tile's words loaded ahead), FOLD_SIGN (default on: e2m1/e4m3 without a multiply per weight), X_BCAST (x
    loaded in the weights' layout, no shared-memory conversion; off until timed), PRMT_GATHER (2:4: kept x
    gathered by byte permutes; off until timed), all computing the same bits, and INT4_FMA (dense int4: one
    logic op and one FMA a weight, outputs within 1 bf16 ulp; off until timed, ignored for other formats)."""
    m, k = x.shape
    cfg = dict(config or default_config(m, p.n, k, p))
    words = k // word_columns(p)
    split, w, block_m = cfg.pop("SPLIT_K"), cfg.pop("W"), cfg.pop("BLOCK_M")
    warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
    prefetch = bool(cfg.pop("PREFETCH", False))
    fold = bool(cfg.pop("FOLD_SIGN", True))
    bcast = bool(cfg.pop("X_BCAST", False))
    gather = bool(cfg.pop("PRMT_GATHER", False))
    int4_fma = bool(cfg.pop("INT4_FMA", False)) and p.element == "int4" and not p.sparse24
    one = block_m == 1
    if one and m != 1:
        raise ValueError(f"config {config}: BLOCK_M = 1 is the one-token kernel, x has {m} rows")
    tiles = triton.cdiv(words, w * split) if one else words // (w * split)
    if not one and (words % (w * split) or block_m < 16 or w < 16):
        raise ValueError(f"config {config}: the tensor-core path needs W x SPLIT_K to divide the {words} words of a "
                         "row, BLOCK_M >= 16 and W >= 16")
    y = new_output(m, p.n, x.device, split, poison)
    a = _launch(p)
    if one:
        grid = (triton.cdiv(p.n, cfg["BLOCK_N"]), split)
        _gemv1_kernel[grid](x.view(torch.int32), a.vals, a.meta, a.scales, y, a.tensor_scale, p.n, words, *a.strides,
                            0, **a.consts, W=w, SPLIT_K=split, TILES_PER_SPLIT=tiles, EVEN=words % (w * split) == 0,
                            PREFETCH=prefetch, FOLD_SIGN=fold, X_BCAST=bcast,
                            PRMT_GATHER=gather, INT4_FMA=int4_fma, INTERP=os.environ.get("TRITON_INTERPRET") == "1",
                            num_warps=warps, num_stages=stages, **cfg)
    else:
        grid = (triton.cdiv(p.n, cfg["BLOCK_N"]), split, triton.cdiv(m, block_m))
        _dot_kernel[grid](x, a.vals, a.meta, a.scales, y, a.tensor_scale, m, p.n, x.stride(0), y.stride(0),
                          *a.strides, 0, **a.consts, BLOCK_M=block_m, W=w, SPLIT_K=split, TILES_PER_SPLIT=tiles,
                          BF16_DOT=os.environ.get("TRITON_INTERPRET") != "1", num_warps=warps, num_stages=stages,
                          **cfg)
    return y if split == 1 else y.to(torch.bfloat16)


def gemv(x: torch.Tensor, p: PackedLinear, config: dict[str, int] | None = None, poison: bool = False) -> torch.Tensor:
    """One token: `word_linear` with BLOCK_M = 1 (a config may leave BLOCK_M out)."""
    if x.shape[0] != 1:
        raise ValueError(f"gemv takes one token, got {x.shape[0]}")
    return word_linear(x, p, None if config is None else {"BLOCK_M": 1, **config}, poison)
