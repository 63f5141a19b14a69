"""Triton kernel for one token: y = x W^T with W packed (layout.py), streamed as 32-bit words.

At batch 1 the product is bound by the bytes of W, and a GPU streaming 4-bit weights at full
bandwidth leaves each SM only ~4 instructions per weight. So this kernel is built around the
instruction count, not the tensor cores:

- W is read as int32 words (16-byte vector loads of consecutive words along K), never as bytes;
- each element is decoded with integer bit moves into float32 bits, no conversion instructions
  (those run at 1/8 rate): e2m1 and e4m3 bits are dropped into a float32's exponent/mantissa, which
  is the value times 2^-126 (2^-120), and one multiply by +-2^126 (+-2^120) restores value and sign
  (float32 subnormals are exact, so E2M1 0.5 and E4M3's subnormals come out right); int4 uses the
  2^23 magic number (code ^ 8 in a float's mantissa, minus 2^23 + 8); bf16 is a shift;
- the products of a word are summed first and the word's block scale multiplies that partial sum
  once (a word never straddles a scale block: blocks are >= 16 columns, words <= 16);
- 2:4: each group's two kept values multiply the x entries their positions select (selects, not
  a dense expansion); the metadata of a word's groups is one load.

Each program owns BLOCK_N rows and W words per step; SPLIT_K > 1 splits K over programs and adds
float32 partial sums with atomics (for shapes with too few row blocks to fill the GPU).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from nmx.kernels.layout import PackedLinear

ELEMENT_IDS = {"bf16": 0, "e2m1": 1, "int4": 2, "e4m3": 3}
SCALE_IDS = {None: 0, "e8m0": 1, "ue4m3": 2, "fp16": 3}
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
def _scale(scales_ptr, rows, words, n_mask, K, SCALE: tl.constexpr, BLOCK: tl.constexpr, WC: tl.constexpr):
    """The block scale of every (row, word) as float32 [BLOCK_N, W]."""
    ptrs = scales_ptr + rows * (K // BLOCK) + (words * WC // BLOCK)[None, :]
    if SCALE == 3:
        s = tl.load(ptrs, mask=n_mask[:, None], other=0.0).to(tl.float32)
    else:
        c = tl.load(ptrs, mask=n_mask[:, None], other=0).to(tl.uint32)
        if SCALE == 1:  # e8m0: 2^(c - 127); code 0 is 2^-127, a float32 subnormal
            s = tl.where(c == 0, 0x00400000, c << 23).to(tl.float32, bitcast=True)
        else:  # ue4m3
            s = _dec(c, 3)
    return s


@triton.jit
def _xs(x_ptr, cols):
    return tl.load(x_ptr + cols).to(tl.float32)[None, :]


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
def _gemv_kernel(x_ptr, vals_ptr, meta_ptr, scales_ptr, y_ptr, tensor_scale, M, N, K, stride_xm, stride_ym,
                 ELEMENT: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr, SPARSE: tl.constexpr,
                 BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, W: tl.constexpr,
                 SPLIT_K: tl.constexpr, TILES_PER_SPLIT: tl.constexpr, BF16_DOT: tl.constexpr):
    """BLOCK_M == 1: FMAs into a [BLOCK_N, W] accumulator (one token). BLOCK_M >= 16: the same decode,
    element j of every word forming a [BLOCK_N, W] operand of a tensor-core dot with x's columns
    j, j + WC, ... (the dot's K order is a permutation of K, the same for both operands)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_mask = offs_n < N
    m_mask = offs_m < M
    rows = offs_n[:, None]
    GEMV: tl.constexpr = BLOCK_M == 1
    PER: tl.constexpr = 32 // BITS  # elements per word
    WC: tl.constexpr = 2 * PER if SPARSE else PER  # dense columns per word
    KW = K // WC  # words per row
    CODE: tl.constexpr = (1 << BITS) - 1
    if GEMV:
        acc = tl.zeros((BLOCK_N, W), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(0, TILES_PER_SPLIT):
        words = (pid_k * TILES_PER_SPLIT + t) * W + tl.arange(0, W)
        v = tl.load(vals_ptr + rows * KW + words[None, :], mask=n_mask[:, None], other=0).to(tl.uint32, bitcast=True)
        col = words * WC  # first dense column of each word
        part = tl.zeros((BLOCK_N, W), dtype=tl.float32)
        if SCALE != 0:
            s = _scale(scales_ptr, rows, words, n_mask, K, SCALE, BLOCK, WC)
        if SPARSE:
            if BITS == 16:  # one group per word: its nibble of the byte shared with the next word
                mb = tl.load(meta_ptr + rows * (K // 8) + (words // 2)[None, :], mask=n_mask[:, None], other=0)
                meta = mb.to(tl.uint32) >> ((words & 1) * 4)[None, :]
            elif BITS == 8:  # two groups: one meta byte per word
                meta = tl.load(meta_ptr + rows * (K // 8) + words[None, :], mask=n_mask[:, None], other=0).to(tl.uint32)
            else:  # four groups: 16 bits per word (meta read as int16)
                mh = tl.load(meta_ptr + rows * (K // 16) + words[None, :], mask=n_mask[:, None], other=0)
                meta = mh.to(tl.uint16, bitcast=True).to(tl.uint32)
            for g in tl.static_range(PER // 2):
                nib = meta >> (4 * g)
                p0 = nib & 3
                p1 = (nib >> 2) & 3
                d0 = _dec((v >> (BITS * 2 * g)) & CODE, ELEMENT)
                d1 = _dec((v >> (BITS * (2 * g + 1))) & CODE, ELEMENT)
                if GEMV:
                    x0 = _xs(x_ptr, col + 4 * g)
                    x1 = _xs(x_ptr, col + 4 * g + 1)
                    x2 = _xs(x_ptr, col + 4 * g + 2)
                    x3 = _xs(x_ptr, col + 4 * g + 3)
                    part += d0 * tl.where(p0 == 0, x0, tl.where(p0 == 1, x1, x2))
                    part += d1 * tl.where(p1 == 3, x3, tl.where(p1 == 2, x2, x1))
                else:  # the group's 4 dense columns, each one dot
                    if SCALE != 0:
                        d0 = d0 * s
                        d1 = d1 * s
                    for r in tl.static_range(4):
                        wr = tl.where(p0 == r, d0, tl.where(p1 == r, d1, 0.0))
                        acc = _dot(acc, _x_tile(x_ptr, offs_m, m_mask, stride_xm, col + 4 * g + r, BF16_DOT), wr,
                                   BF16_DOT)
        else:
            for j in tl.static_range(PER):
                d = _dec((v >> (BITS * j)) & CODE, ELEMENT)
                if GEMV:
                    part += d * _xs(x_ptr, col + j)
                else:
                    if SCALE != 0:
                        d = d * s
                    acc = _dot(acc, _x_tile(x_ptr, offs_m, m_mask, stride_xm, col + j, BF16_DOT), d, BF16_DOT)
        if GEMV:
            if SCALE != 0:
                acc += part * s
            else:
                acc += part
    if GEMV:
        out = tl.sum(acc, axis=1)[None, :]
    else:
        out = acc
    if SCALE == 2:
        out = out * tensor_scale
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(y_ptrs, out, mask=mask)


def default_config(m: int, n: int, k: int, p: PackedLinear) -> dict[str, int]:
    """Tile sizes by shape (benchmarks/kernels_bench.py --sweep on an H200)."""
    words = k // word_columns(p)
    w = 64 if words % 64 == 0 else 32 if words % 32 == 0 else 16
    if m == 1:
        return {"BLOCK_M": 1, "BLOCK_N": 16, "W": min(w, words), "SPLIT_K": 1, "num_warps": 4, "num_stages": 3}
    return {"BLOCK_M": 16 if m <= 16 else 32 if m <= 32 else 64, "BLOCK_N": 64, "W": min(32, w, words), "SPLIT_K": 1,
            "num_warps": 4, "num_stages": 3}


def _word_view(p: PackedLinear) -> tuple[torch.Tensor, torch.Tensor]:
    vals = p.values.view(torch.int32)
    meta = p.meta
    if meta is not None and ELEMENT_BITS[p.element] == 4:
        meta = meta.view(torch.int16)
    return vals, meta


def word_linear(x: torch.Tensor, p: PackedLinear, config: dict[str, int] | None = None,
                poison: bool = False) -> torch.Tensor:
    """y [M, N] (bf16) = x [M, K] (bf16, contiguous rows) W^T on the GPU. BLOCK_M = 1 in the config
    (the default for M = 1) streams one token at a time; BLOCK_M >= 16 uses the tensor cores.
    `poison` fills the output with NaN first (tests: every element must be written)."""
    m, k = x.shape
    cfg = dict(config or default_config(m, p.n, k, p))
    words = k // word_columns(p)
    split, w = cfg.pop("SPLIT_K"), cfg.pop("W")
    if words % (w * split):
        raise ValueError(f"config {config}: W x SPLIT_K words must divide the {words} words of a row")
    if cfg["BLOCK_M"] > 1 and (cfg["BLOCK_M"] < 16 or w < 16):
        raise ValueError(f"config {config}: the tensor-core path needs BLOCK_M >= 16 and W >= 16")
    warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
    if split > 1:
        y = torch.zeros((m, p.n), device=x.device, dtype=torch.float32)
    else:
        y = torch.empty((m, p.n), device=x.device, dtype=torch.bfloat16)
        if poison:
            y.fill_(float("nan"))
    vals, meta = _word_view(p)
    grid = (triton.cdiv(p.n, cfg["BLOCK_N"]), split, triton.cdiv(m, cfg["BLOCK_M"]))
    _gemv_kernel[grid](
        x, vals, meta if meta is not None else vals, p.scales if p.scales is not None else vals, y,
        float(p.tensor_scale), m, p.n, k, x.stride(0), y.stride(0),
        ELEMENT=ELEMENT_IDS[p.element], SCALE=SCALE_IDS[p.scale_kind], BLOCK=p.block or 1, SPARSE=p.sparse24,
        BITS=ELEMENT_BITS[p.element], W=w, SPLIT_K=split, TILES_PER_SPLIT=words // (w * split),
        BF16_DOT=os.environ.get("TRITON_INTERPRET") != "1", num_warps=warps, num_stages=stages, **cfg)
    return y if split == 1 else y.to(torch.bfloat16)


def gemv(x: torch.Tensor, p: PackedLinear, config: dict[str, int] | None = None, poison: bool = False) -> torch.Tensor:
    """One token: `word_linear` with BLOCK_M = 1 (a config may leave BLOCK_M out)."""
    if x.shape[0] != 1:
        raise ValueError(f"gemv takes one token, got {x.shape[0]}")
    return word_linear(x, p, None if config is None else {"BLOCK_M": 1, **config}, poison)
