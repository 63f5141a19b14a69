"""Triton kernel: y = x W^T with W packed (layout.py): 2:4 and/or 4/8-bit, decoded in registers.

For decode and small batches (M = 1 .. 64 tokens) the product is bound by the bytes of W, so the
kernel reads each packed byte once, decodes a [BLOCK_N, BLOCK_K] tile of W to bf16 in registers
(element codes -> values, the 2:4 metadata -> positions, scales per block) and feeds it to the
tensor cores against the [BLOCK_M, BLOCK_K] tile of x (M padded to 16 with masked loads).
Split-K over the reduction adds fp32 partial sums with atomics when there are too few output tiles
to fill the GPU. Decoding is arithmetic on the codes (no tables): e2m1, e4m3 and e8m0 by their bit
fields, int4 by two's complement; it matches `reference.decode_weight` exactly.

Import this module only where triton is installed (the dispatcher does).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from nmx.kernels.layout import PackedLinear
from nmx.kernels.triton_gemv import ELEMENT_IDS, SCALE_IDS, new_output, store_tile


@triton.jit
def _e2m1(c):
    """FP4 E2M1 code -> float32. The code's exponent and mantissa bits dropped into an fp16's low
    exponent / top mantissa bits make that fp16 exactly the value times 2^-14 (E2M1's subnormal
    lands on fp16's subnormal), so: two shifts, an or, a convert and an exact scaling."""
    h = (((c & 7) << 9) | ((c & 8) << 12)).to(tl.int16).to(tl.float16, bitcast=True)
    return h.to(tl.float32) * 16384.0


@triton.jit
def _int4(c):
    return ((c << 28) >> 28).to(tl.float32)  # sign-extend the 4-bit two's complement code


@triton.jit
def _e4m3(c):
    """FP8 E4M3 code -> float32 the same way: the fp16 with these bits is the value times 2^-8
    (E4M3's subnormals land on fp16's). NaN codes are not produced by `pack` (finite weights)."""
    h = (((c & 127) << 7) | ((c & 128) << 8)).to(tl.int16).to(tl.float16, bitcast=True)
    return h.to(tl.float32) * 256.0


@triton.jit
def _e8m0(c):
    bits = tl.where(c == 0, 0x00400000, c << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _decode(c, ELEMENT: tl.constexpr):
    if ELEMENT == 1:
        v = _e2m1(c)
    elif ELEMENT == 2:
        v = _int4(c)
    else:
        v = _e4m3(c)
    return v


@triton.jit
def _scaled(v, s, BLOCK_N: tl.constexpr, C: tl.constexpr, PER: tl.constexpr):
    """v [BLOCK_N, C] times its block scale s [BLOCK_N, C // PER] (PER consecutive columns share one)."""
    return tl.reshape(tl.reshape(v, (BLOCK_N, C // PER, PER)) * s[:, :, None], (BLOCK_N, C))


@triton.jit
def _scales(scales_ptr, rows, n_mask, first, K, SCALE: tl.constexpr, BLOCK: tl.constexpr, S: tl.constexpr):
    """The S block scales of each row starting at block `first`, as float32 [BLOCK_N, S]."""
    cols = first + tl.arange(0, S)[None, :]
    if SCALE == 3:
        s = tl.load(scales_ptr + rows * (K // BLOCK) + cols, mask=n_mask[:, None], other=0.0).to(tl.float32)
    else:
        sc = tl.load(scales_ptr + rows * (K // BLOCK) + cols, mask=n_mask[:, None], other=0).to(tl.int32)
        if SCALE == 1:
            s = _e8m0(sc)
        else:
            s = _e4m3(sc)
    return s


@triton.jit
def _parts(vals_ptr, meta_ptr, scales_ptr, tensor_scale, rows, n_mask, k0, K,
           ELEMENT: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr, SPARSE: tl.constexpr,
           BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The tile of W at columns k0 .. k0 + BLOCK_K, decoded to float32 and split into P parts
    [BLOCK_N, BLOCK_K // P], part j holding columns k0 + j, k0 + j + P, ... (P = 4 for 2:4: one
    part per position in the group; 2 for packed 4-bit: low and high nibbles; 1 otherwise).
    Every tensor stays 2-D: no interleaving in registers."""
    if SPARSE:
        G: tl.constexpr = BLOCK_K // 4
        g = tl.arange(0, G)[None, :]
        if ELEMENT == 0 or ELEMENT == 3:  # one value per byte / bf16: [N, K/2]
            base = vals_ptr + rows * (K // 2) + k0 // 2 + 2 * g
            a = tl.load(base, mask=n_mask[:, None], other=0)
            b = tl.load(base + 1, mask=n_mask[:, None], other=0)
            if ELEMENT == 0:
                v0 = a.to(tl.float32)
                v1 = b.to(tl.float32)
            else:
                v0 = _decode(a.to(tl.int32), ELEMENT)
                v1 = _decode(b.to(tl.int32), ELEMENT)
        else:  # 4-bit: one byte per group [N, K/4]
            byte = tl.load(vals_ptr + rows * (K // 4) + k0 // 4 + g, mask=n_mask[:, None], other=0).to(tl.int32)
            v0 = _decode(byte & 15, ELEMENT)
            v1 = _decode(byte >> 4, ELEMENT)
        if SCALE != 0:
            s = _scales(scales_ptr, rows, n_mask, k0 // BLOCK, K, SCALE, BLOCK, BLOCK_K // BLOCK)
            v0 = _scaled(v0, s, BLOCK_N, G, BLOCK // 4)
            v1 = _scaled(v1, s, BLOCK_N, G, BLOCK // 4)
        mb = tl.load(meta_ptr + rows * (K // 8) + k0 // 8 + g // 2, mask=n_mask[:, None], other=0).to(tl.int32)
        nib = (mb >> ((g & 1) * 4)) & 15
        p0 = nib & 3
        p1 = nib >> 2
        w0 = tl.where(p0 == 0, v0, 0.0)
        w1 = tl.where(p0 == 1, v0, tl.where(p1 == 1, v1, 0.0))
        w2 = tl.where(p0 == 2, v0, tl.where(p1 == 2, v1, 0.0))
        w3 = tl.where(p1 == 3, v1, 0.0)
    else:
        if ELEMENT == 1 or ELEMENT == 2:  # packed 4-bit: [N, K/2], low nibble = even column
            H: tl.constexpr = BLOCK_K // 2
            byte = tl.load(vals_ptr + rows * (K // 2) + k0 // 2 + tl.arange(0, H)[None, :], mask=n_mask[:, None],
                           other=0).to(tl.int32)
            w0 = _decode(byte & 15, ELEMENT)
            w1 = _decode(byte >> 4, ELEMENT)
            if SCALE != 0:
                s = _scales(scales_ptr, rows, n_mask, k0 // BLOCK, K, SCALE, BLOCK, BLOCK_K // BLOCK)
                w0 = _scaled(w0, s, BLOCK_N, H, BLOCK // 2)
                w1 = _scaled(w1, s, BLOCK_N, H, BLOCK // 2)
        else:
            c = tl.load(vals_ptr + rows * K + k0 + tl.arange(0, BLOCK_K)[None, :], mask=n_mask[:, None], other=0)
            if ELEMENT == 0:
                w0 = c.to(tl.float32)
            else:
                w0 = _decode(c.to(tl.int32), ELEMENT)
            if SCALE != 0:
                s = _scales(scales_ptr, rows, n_mask, k0 // BLOCK, K, SCALE, BLOCK, BLOCK_K // BLOCK)
                w0 = _scaled(w0, s, BLOCK_N, BLOCK_K, BLOCK)
            w1 = w0
        w2 = w0
        w3 = w0
    if SCALE == 2:
        w0 = w0 * tensor_scale
        w1 = w1 * tensor_scale
        w2 = w2 * tensor_scale
        w3 = w3 * tensor_scale
    return w0, w1, w2, w3


@triton.jit
def _x_part(x_ptr, offs_m, m_mask, stride_xm, k0, j, P: tl.constexpr, C: tl.constexpr):
    cols = k0 + j + P * tl.arange(0, C)
    return tl.load(x_ptr + offs_m[:, None] * stride_xm + cols[None, :], mask=m_mask[:, None], other=0.0)


@triton.jit
def _acc_part(acc, x, w, GEMV: tl.constexpr, BF16_DOT: tl.constexpr):
    if GEMV:  # one token: elementwise FMAs into a [BLOCK_N, C] accumulator, reduced once at the end
        acc += w * x.to(tl.float32)
    elif BF16_DOT:
        acc = tl.dot(x.to(tl.bfloat16), tl.trans(w.to(tl.bfloat16)), acc)
    else:  # Triton's CPU interpreter gets bf16 dots wrong (3.6): float32 operands there
        acc = tl.dot(x.to(tl.float32), tl.trans(w), acc)
    return acc


@triton.jit
def _w_tile(vals_ptr, meta_ptr, scales_ptr, tensor_scale, rows, n_mask, k0, K,
            ELEMENT: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr, SPARSE: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The [BLOCK_N, BLOCK_K] tile of W at column k0 decoded to float32 in K order (for tl.dot)."""
    if SPARSE:
        G: tl.constexpr = BLOCK_K // 4
        if ELEMENT == 0 or ELEMENT == 3:
            cols = k0 // 2 + tl.arange(0, BLOCK_K // 2)[None, :]
            c = tl.load(vals_ptr + rows * (K // 2) + cols, mask=n_mask[:, None], other=0)
            if ELEMENT == 0:
                v = c.to(tl.float32)
            else:
                v = _decode(c.to(tl.int32), ELEMENT)
            v0, v1 = tl.split(tl.reshape(v, (BLOCK_N, G, 2)))
        else:
            b = tl.load(vals_ptr + rows * (K // 4) + k0 // 4 + tl.arange(0, G)[None, :], mask=n_mask[:, None],
                        other=0).to(tl.int32)
            v0 = _decode(b & 15, ELEMENT)
            v1 = _decode(b >> 4, ELEMENT)
        mb = tl.load(meta_ptr + rows * (K // 8) + k0 // 8 + tl.arange(0, BLOCK_K // 8)[None, :], mask=n_mask[:, None],
                     other=0).to(tl.int32)
        nib = tl.interleave(mb & 15, mb >> 4)
        j = tl.arange(0, 4)[None, None, :]
        w = tl.where(j == (nib & 3)[:, :, None], v0[:, :, None],
                     tl.where(j == (nib >> 2)[:, :, None], v1[:, :, None], 0.0))
        w = tl.reshape(w, (BLOCK_N, BLOCK_K))
    elif ELEMENT == 1 or ELEMENT == 2:
        b = tl.load(vals_ptr + rows * (K // 2) + k0 // 2 + tl.arange(0, BLOCK_K // 2)[None, :], mask=n_mask[:, None],
                    other=0).to(tl.int32)
        w = tl.interleave(_decode(b & 15, ELEMENT), _decode(b >> 4, ELEMENT))
    else:
        c = tl.load(vals_ptr + rows * K + k0 + tl.arange(0, BLOCK_K)[None, :], mask=n_mask[:, None], other=0)
        if ELEMENT == 0:
            w = c.to(tl.float32)
        else:
            w = _decode(c.to(tl.int32), ELEMENT)
    if SCALE != 0:
        s = _scales(scales_ptr, rows, n_mask, k0 // BLOCK, K, SCALE, BLOCK, BLOCK_K // BLOCK)
        w = _scaled(w, s, BLOCK_N, BLOCK_K, BLOCK)
        if SCALE == 2:
            w = w * tensor_scale
    return w


@triton.jit
def _packed_linear_kernel(x_ptr, vals_ptr, meta_ptr, scales_ptr, y_ptr, tensor_scale, M, N, K, stride_xm, stride_ym,
                          ELEMENT: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr, SPARSE: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          SPLIT_K: tl.constexpr, TILES_PER_SPLIT: tl.constexpr, BF16_DOT: tl.constexpr,
                          GEMV: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_mask = offs_n < N
    m_mask = offs_m < M
    rows = offs_n[:, None]
    P: tl.constexpr = 4 if SPARSE else (2 if (ELEMENT == 1 or ELEMENT == 2) else 1)
    C: tl.constexpr = BLOCK_K // P
    if GEMV:
        acc = tl.zeros((BLOCK_N, C), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(0, TILES_PER_SPLIT):  # the launcher makes SPLIT_K divide K's tiles
        k0 = (pid_k * TILES_PER_SPLIT + t) * BLOCK_K
        if GEMV:  # one token: W in parts (no interleaving), FMAs into [BLOCK_N, C]
            w0, w1, w2, w3 = _parts(vals_ptr, meta_ptr, scales_ptr, tensor_scale, rows, n_mask, k0, K,
                                    ELEMENT, SCALE, BLOCK, SPARSE, BLOCK_N, BLOCK_K)
            acc = _acc_part(acc, _x_part(x_ptr, offs_m, m_mask, stride_xm, k0, 0, P, C), w0, GEMV, BF16_DOT)
            if P > 1:
                acc = _acc_part(acc, _x_part(x_ptr, offs_m, m_mask, stride_xm, k0, 1, P, C), w1, GEMV, BF16_DOT)
            if P > 2:
                acc = _acc_part(acc, _x_part(x_ptr, offs_m, m_mask, stride_xm, k0, 2, P, C), w2, GEMV, BF16_DOT)
                acc = _acc_part(acc, _x_part(x_ptr, offs_m, m_mask, stride_xm, k0, 3, P, C), w3, GEMV, BF16_DOT)
        else:  # several tokens: the dense tile in K order on the tensor cores
            w = _w_tile(vals_ptr, meta_ptr, scales_ptr, tensor_scale, rows, n_mask, k0, K,
                        ELEMENT, SCALE, BLOCK, SPARSE, BLOCK_N, BLOCK_K)
            acc = _acc_part(acc, _x_part(x_ptr, offs_m, m_mask, stride_xm, k0, 0, 1, BLOCK_K), w, GEMV, BF16_DOT)
    if GEMV:
        out = tl.sum(acc, axis=1)[None, :]
    else:
        out = acc
    store_tile(y_ptr, out, offs_m, offs_n, m_mask, n_mask, stride_ym, SPLIT_K)


def default_config(m: int, n: int, k: int, p: PackedLinear) -> dict[str, int]:
    """Tile sizes by shape, from the sweeps on an H200 (benchmarks/kernels_bench.py --sweep,
    benchmarks/results/kernels_h200_sweep1.json and _run3.json): one token streams narrow row
    blocks with long K tiles; several tokens use 32-row tiles of 256 columns on the tensor cores."""
    if m == 1:
        block_k = 1024 if k % 1024 == 0 else 512 if k % 512 == 0 else 256 if k % 256 == 0 else 64
        return {"BLOCK_M": 1, "BLOCK_N": 8, "BLOCK_K": max(block_k, p.block or 0), "SPLIT_K": 1, "num_warps": 4,
                "num_stages": 3}
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    block_k = max(256 if k % 256 == 0 else 128 if k % 128 == 0 else 64, p.block or 0)
    return {"BLOCK_M": block_m, "BLOCK_N": 32, "BLOCK_K": block_k, "SPLIT_K": 1, "num_warps": 4, "num_stages": 3}


def packed_linear(x: torch.Tensor, p: PackedLinear, config: dict[str, int] | None = None,
                  poison: bool = False) -> torch.Tensor:
    """y [M, N] (bf16) = x [M, K] (bf16, contiguous rows) W^T on the GPU. `poison` fills the
    output with NaN first (tests: every element must be written)."""
    m, k = x.shape
    cfg = dict(config or default_config(m, p.n, k, p))
    split = cfg.pop("SPLIT_K")
    if (k // cfg["BLOCK_K"]) % split or k % cfg["BLOCK_K"]:
        raise ValueError(f"config {config}: BLOCK_K x SPLIT_K must divide K={k}")
    warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
    y = new_output(m, p.n, x.device, split, poison)
    grid = (triton.cdiv(p.n, cfg["BLOCK_N"]), split, triton.cdiv(m, cfg["BLOCK_M"]))
    dummy = p.values
    _packed_linear_kernel[grid](
        x, p.values, p.meta if p.meta is not None else dummy, p.scales if p.scales is not None else dummy, y,
        float(p.tensor_scale), m, p.n, k, x.stride(0), y.stride(0),
        ELEMENT=ELEMENT_IDS[p.element], SCALE=SCALE_IDS[p.scale_kind], BLOCK=p.block or 1, SPARSE=p.sparse24,
        SPLIT_K=split, BF16_DOT=os.environ.get("TRITON_INTERPRET") != "1", GEMV=cfg["BLOCK_M"] == 1,
        TILES_PER_SPLIT=k // (cfg["BLOCK_K"] * split), num_warps=warps, num_stages=stages, **cfg)
    return y if split == 1 else y.to(torch.bfloat16)
