"""Triton kernels for the small ops of a Llama-style decoder layer, one launch where transformers' eager forward
launches several (an H100 profile of a Llama-2-7B decode step: RMSNorm 8 kernels, rotary embedding 10 per layer,
SiLU then multiply 2; BENCHMARKS.md, "Where a decode step's time goes"):

- `rms_norm`: weight * (x * rsqrt(mean(x^2) + eps)), one program per row;
- `silu_mul`: silu(gate) * up;
- `rotary`: q * cos + rotate_half(q) * sin and the same for k, both in one launch.

Each rounds where transformers' bf16 ops round (the normalized row to the input dtype before the weight
multiplies it; silu(gate) before the product; each product and the sum of the rotary embedding), so the results
equal the eager ops' up to the float32 reduction order of the norm's mean square and the rsqrt / exp
implementations. bf16 tensors travel as int16 bit patterns (exact under Triton's CPU interpreter too).

Import this module only where triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _to_f32(bits16):
    """bf16 bit patterns (int16) -> float32, exact."""
    return (bits16.to(tl.int32) << 16).to(tl.float32, bitcast=True)


@triton.jit
def _round_bf16(y):
    """float32 -> the nearest bf16 value (ties to even), kept in float32; NaN stays NaN."""
    u = y.to(tl.uint32, bitcast=True)
    r = ((u + (0x7FFF + ((u >> 16) & 1))) & 0xFFFF0000).to(tl.float32, bitcast=True)
    return tl.where(y != y, y, r)


@triton.jit
def _bf16_bits(y):
    """float32 already on the bf16 grid -> its int16 bit pattern."""
    return (y.to(tl.uint32, bitcast=True) >> 16).to(tl.int16)


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, y_ptr, H, x_row_stride, y_row_stride, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    c = tl.arange(0, BLOCK)
    m = c < H
    x = _to_f32(tl.load(x_ptr + row * x_row_stride + c, mask=m, other=0))
    var = tl.sum(x * x, axis=0) / H
    n = _round_bf16(x * tl.math.rsqrt(var + eps))  # transformers: (x * rsqrt(var + eps)).to(bf16)
    w = _to_f32(tl.load(w_ptr + c, mask=m, other=0))
    tl.store(y_ptr + row * y_row_stride + c, _bf16_bits(_round_bf16(w * n)), mask=m)


@triton.jit
def _silu_mul_kernel(g_ptr, u_ptr, y_ptr, N, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < N
    g = _to_f32(tl.load(g_ptr + i, mask=m, other=0))
    u = _to_f32(tl.load(u_ptr + i, mask=m, other=0))
    a = _round_bf16(g / (1.0 + tl.exp(-g)))  # silu(gate) in bf16, as the activation module returns it
    tl.store(y_ptr + i, _bf16_bits(_round_bf16(a * u)), mask=m)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, qo_ptr, ko_ptr, cos_ptr, sin_ptr, S, HQ,
                   qb, qh, qs, kb, kh, ks, qob, qoh, qos, kob, koh, kos, cb, cs,
                   HALF: tl.constexpr):
    """One program per (batch * position, head of q then k): the head's D = 2 * HALF channels."""
    bs = tl.program_id(0)
    h = tl.program_id(1)
    b = bs // S
    s = bs % S
    d = tl.arange(0, HALF)
    if h < HQ:
        src = q_ptr + b * qb + h * qh + s * qs
        dst = qo_ptr + b * qob + h * qoh + s * qos
    else:
        src = k_ptr + b * kb + (h - HQ) * kh + s * ks
        dst = ko_ptr + b * kob + (h - HQ) * koh + s * kos
    x1 = _to_f32(tl.load(src + d))
    x2 = _to_f32(tl.load(src + HALF + d))
    c1 = _to_f32(tl.load(cos_ptr + b * cb + s * cs + d))
    c2 = _to_f32(tl.load(cos_ptr + b * cb + s * cs + HALF + d))
    s1 = _to_f32(tl.load(sin_ptr + b * cb + s * cs + d))
    s2 = _to_f32(tl.load(sin_ptr + b * cb + s * cs + HALF + d))
    # x * cos + cat(-x2, x1) * sin, every product and the sum rounded to bf16 as the eager ops round them
    o1 = _round_bf16(_round_bf16(x1 * c1) + _round_bf16(-x2 * s1))
    o2 = _round_bf16(_round_bf16(x2 * c2) + _round_bf16(x1 * s2))
    tl.store(dst + d, _bf16_bits(o1))
    tl.store(dst + HALF + d, _bf16_bits(o2))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., H] bf16 (rows contiguous), weight [H] bf16 -> bf16 [..., H]."""
    h = x.shape[-1]
    rows = x.reshape(-1, h)
    y = torch.empty_like(rows)
    if rows.shape[0]:
        _rms_norm_kernel[(rows.shape[0],)](_bits(rows), _bits(weight), _bits(y), h, rows.stride(0), y.stride(0),
                                           float(eps), BLOCK=triton.next_power_of_2(h))
    return y.view(x.shape)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, both bf16 of one shape, contiguous."""
    y = torch.empty_like(gate)
    n = gate.numel()
    if n:
        block = 1024
        _silu_mul_kernel[(triton.cdiv(n, block),)](_bits(gate), _bits(up), _bits(y), n, BLOCK=block)
    return y


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, Hq, S, D], k [B, Hk, S, D] (any strides with a unit last stride), cos / sin [B, S, D] -> the rotated
    q and k, laid out as q and k are."""
    b, hq, s, dim = q.shape
    hk = k.shape[1]
    qo, ko = torch.empty_like(q), torch.empty_like(k)
    if b * s:
        _rotary_kernel[(b * s, hq + hk)](
            _bits(q), _bits(k), _bits(qo), _bits(ko), _bits(cos), _bits(sin), s, hq,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            qo.stride(0), qo.stride(1), qo.stride(2), ko.stride(0), ko.stride(1), ko.stride(2),
            cos.stride(0), cos.stride(1), HALF=dim // 2)
    return qo, ko
