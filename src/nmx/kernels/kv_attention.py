"""Decode attention over a packed KV cache: one new query token per sequence, GQA.

    from nmx.kernels.kv_attention import decode_attention
    from nmx.kernels.kv_layout import pack_kv
    packed = pack_kv(k, v, "int4", "int4")        # K, V [B, Hkv, T, D]: nmx.kv's quantization, kernel layout
    out = decode_attention(q, packed)             # q [B, Hq, D] -> [B, Hq, D] bf16 (Hq a multiple of Hkv)

Query head i attends to KV head i // (Hq / Hkv) (as `scaled_dot_product_attention(enable_gqa=True)`),
over all T cached tokens (quantized ones and the bf16 window), with `scale` (default 1/sqrt(D)).

Backends: "triton" (triton_kv_attention.py: split-K flash-decoding over the packed bytes) for CUDA
tensors when triton is importable and keys and values have the same code width; "reference"
(`decode_attention_reference`: float32 math on the dequantized cache, the twin the kernel is tested
against) otherwise, with a warning logged once. "auto" picks. Bad input (shapes, dtypes, devices,
buffers whose (batch, head) rows are not dense) raises InputError.

The cache may be `pack_kv`'s (tight buffers) or the view of an appendable cache
(`nmx.kernels.kv_cache.PackedKVCache.view()`: token slices of buffers preallocated for a capacity); both
paths read each buffer through its own batch and head strides, so the view needs no copy.

`decode_attention_static(q, cache)` takes a graph-mode `PackedKVCache` (static=True) itself: the same kernel
launched over the cache's capacity with a grid fixed when the cache was built, reading the live token count
from the cache's device counter (no host sync: capturable in a CUDA graph). Its reference twin (backend
"reference", the default where the cache runs its twin, e.g. on the CPU) is `decode_attention_reference` on
`cache.view()` (which syncs).
"""

from __future__ import annotations

import logging
import math
import os
from functools import lru_cache

import torch

from nmx.errors import InputError
from nmx.kernels.kv_layout import PackedKV, dequantize_kv

log = logging.getLogger(__name__)

Q_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@lru_cache(maxsize=1)
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=None)
def _warn_once(reason: str) -> None:
    log.warning("nmx.kernels.decode_attention: %s; using the reference path (slow, same result)", reason)


def _check(q: torch.Tensor, packed: PackedKV, scale: float | None) -> float:
    if not isinstance(packed, PackedKV):
        raise InputError(f"decode_attention takes a PackedKV (nmx.kernels.kv_layout.pack_kv), "
                         f"got {type(packed).__name__}")
    if not isinstance(q, torch.Tensor) or q.dim() != 3:
        shape = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise InputError(f"q must be [batch, query_heads, head_dim] (one token per sequence), got {shape}")
    if q.dtype not in Q_DTYPES:
        raise InputError(f"q must be bfloat16, float16 or float32, got {q.dtype}")
    b, hq, d = q.shape
    if b != packed.batch:
        raise InputError(f"q has batch {b}, the KV cache {packed.batch}")
    if d != packed.head_dim:
        raise InputError(f"q has head_dim {d}, the KV cache {packed.head_dim}")
    if hq % packed.kv_heads or hq == 0:
        raise InputError(f"the query heads ({hq}) must be a multiple of the KV heads ({packed.kv_heads}) for GQA")
    if q.device != packed.device:
        raise InputError(f"q is on {q.device} but the KV cache is on {packed.device}: move one (packed.to(...))")
    if not q.is_contiguous():
        raise InputError("q is not contiguous; call .contiguous() on it")
    packed.check()
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise InputError(f"scale must be a positive finite number, got {scale!r}")
    return float(scale)


def decode_attention_reference(q: torch.Tensor, packed: PackedKV, scale: float | None = None) -> torch.Tensor:
    """The twin: float32 softmax(q K^T * scale) V over the dequantized cache (every token), bf16 output.
    q is rounded to bf16 first (the kernel's operand)."""
    scale = _check(q, packed, scale)
    k, v = dequantize_kv(packed)  # float32 [B, Hkv, T, D]
    b, hq, d = q.shape
    hg = hq // packed.kv_heads
    qf = q.to(torch.bfloat16).to(torch.float32).reshape(b, packed.kv_heads, hg, d)
    s = torch.einsum("bhgd,bhtd->bhgt", qf, k) * scale
    p = torch.softmax(s, dim=-1)
    out = torch.einsum("bhgt,bhtd->bhgd", p, v)
    return out.reshape(b, hq, d).to(torch.bfloat16)


def kernel_reads(packed: PackedKV) -> bool:
    """Whether the Triton kernel reads this cache: keys and values of the same code width (int4 with mxfp4,
    int2 with int2, fp8 with fp8, bf16 with bf16); mixed widths take the reference path."""
    return packed.key_kind[1] == packed.value_kind[1]


def choose(q: torch.Tensor, packed: PackedKV) -> str:
    if q.device.type != "cuda":
        _warn_once(f"the tensors are on {q.device.type}, the Triton kernel needs a CUDA GPU")
        return "reference"
    if not triton_importable():
        _warn_once("triton is not installed")
        return "reference"
    if not kernel_reads(packed):
        _warn_once(f"the Triton kernel does not read {packed.key_format} keys with {packed.value_format} values "
                   "(different code widths)")
        return "reference"
    return "triton"


def decode_attention(q: torch.Tensor, packed: PackedKV, scale: float | None = None, backend: str = "auto",
                     config: dict | None = None) -> torch.Tensor:
    """out [B, Hq, D] bf16 = softmax(q K^T * scale) V per query head over the packed cache.
    `config`: tile / split overrides for the Triton kernel (see triton_kv_attention.DEFAULTS)."""
    scale = _check(q, packed, scale)
    if backend == "auto":
        backend = choose(q, packed)
    if backend == "reference":
        return decode_attention_reference(q, packed, scale)
    if backend != "triton":
        raise InputError(f"unknown backend {backend!r}: use auto, triton or reference")
    if not triton_importable():
        raise InputError("backend 'triton' needs triton installed; use backend='auto' or 'reference'")
    if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise InputError(f"backend 'triton' needs CUDA tensors (these are on {q.device}) or TRITON_INTERPRET=1; "
                         "use backend='auto' or 'reference'")
    from nmx.kernels.triton_kv_attention import kv_decode_attention

    return kv_decode_attention(q.to(torch.bfloat16), packed, scale, config)


def decode_attention_static(q: torch.Tensor, cache, scale: float | None = None, backend: str = "auto",
                            config: dict | None = None) -> torch.Tensor:
    """out [B, Hq, D] bf16 over the tokens of a graph-mode `PackedKVCache` (module docstring). backend "auto":
    the Triton kernel where the cache appends with it (CUDA, or TRITON_INTERPRET=1), else the reference twin.
    Checks only what needs no host sync (shapes, dtypes, devices), so it can run inside a CUDA-graph capture."""
    from nmx.kernels.kv_cache import PackedKVCache

    if not isinstance(cache, PackedKVCache) or not cache.static:
        raise InputError(f"decode_attention_static takes a graph-mode PackedKVCache (static=True), got "
                         f"{type(cache).__name__}{'' if not isinstance(cache, PackedKVCache) else ' (static=False)'}"
                         "; use decode_attention(q, cache.view())")
    layout = cache.capacity_view()
    scale = _check(q, layout, scale)
    if backend == "auto":
        backend = "triton" if cache.backend == "triton" else "reference"
    if backend == "reference":
        return decode_attention_reference(q, cache.view(), scale)
    if backend != "triton":
        raise InputError(f"unknown backend {backend!r}: use auto, triton or reference")
    if not triton_importable() or (q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1"):
        raise InputError(f"backend 'triton' needs triton and CUDA tensors (these are on {q.device}) or "
                         "TRITON_INTERPRET=1; use backend='auto' or 'reference'")
    from nmx.kernels.triton_kv_attention import kv_decode_attention_static

    return kv_decode_attention_static(q.to(torch.bfloat16), cache, scale, config)
