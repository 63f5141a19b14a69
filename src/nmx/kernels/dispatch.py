"""Pick the implementation of y = x W^T for a packed weight.

    gemv       one token on a CUDA GPU with triton: the word-streaming kernel (triton_gemv.py),
               1.0-2.1x of cuBLAS bf16 on Llama-2-7B shapes (H200, BENCHMARKS.md)
    dense      2 .. 64 tokens: W decoded once to bf16 (kept beside the packed weight: memory of both)
               and cuBLAS, because nmx's kernels lost to cuBLAS there when measured (H200: the first
               tile kernel 0.4-1.0x, the word kernel's tensor-core path 0.1-0.4x at 16 tokens);
               also more tokens for formats other than 2:4 bf16. `SMALL_M = "tc"` sends 2 .. 64
               tokens to the tensor-core kernel instead, for the weights it reads (not yet measured:
               the default stays dense until tc_curve.py has run on a GPU)
    sparse24   more than 64 tokens, a 2:4 weight with bf16 values: cuSPARSELt or cuBLAS, whichever
               was measured faster at that shape (sparse_gemm.py)
    reference  CPU tensors or no triton: the reference twin, with a warning once
On request only: `tc` (dense 4/8-bit weights decoded two per instruction into tensor-core operands,
triton_tc.py; not yet timed on a GPU) and `triton` (the word kernel's tensor-core path,
triton_gemv.word_linear), both for up to 64 tokens. (The first kernel, W tiles decoded per element,
0.24-1.06x of cuBLAS when measured, was removed when the dense words became pair-interleaved.)

A non-contiguous x is copied to contiguous rows first; x of any leading shape [..., K] is flattened.
"""

from __future__ import annotations

import logging
import weakref
from functools import lru_cache

import torch

from nmx.errors import InputError
from nmx.kernels.layout import PackedLinear
from nmx.kernels.reference import decode_weight, linear_reference

log = logging.getLogger(__name__)
MAX_KERNEL_M = 64
SMALL_M = "dense"  # the 2 .. 64-token path: "dense" (cuBLAS on the decoded weight) or "tc" (triton_tc.py)
BACKENDS = ("auto", "gemv", "tc", "triton", "sparse24", "dense", "reference")
_DENSE: "weakref.WeakKeyDictionary[PackedLinear, torch.Tensor]" = weakref.WeakKeyDictionary()


@lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@lru_cache(maxsize=None)
def _warn_once(reason: str) -> None:
    log.warning("nmx.kernels: %s; using the reference path (slow, same result)", reason)


def dense_weight(p: PackedLinear) -> torch.Tensor:
    """W decoded to bf16 once per packed weight (kept while the packed weight lives)."""
    w = _DENSE.get(p)
    if w is None:
        w = _DENSE[p] = decode_weight(p).to(torch.bfloat16)
    return w


def choose(x: torch.Tensor, p: PackedLinear) -> str:
    m = x.numel() // max(x.shape[-1], 1)
    if x.device.type != "cuda":
        return "reference"
    if not triton_available():
        _warn_once("triton is not installed")
        return "reference"
    if m == 1:
        return "gemv"
    if m <= MAX_KERNEL_M:
        if SMALL_M == "tc":
            from nmx.kernels.triton_tc import supports

            return "tc" if supports(p) else "dense"
        return "dense"
    from nmx.kernels import sparse_gemm

    return "sparse24" if p.sparse24 and p.format is None and sparse_gemm.available() else "dense"


def linear(x: torch.Tensor, p: PackedLinear, backend: str = "auto") -> torch.Tensor:
    """y [..., N] (bf16) = x [..., K] W^T for a packed W."""
    if x.shape[-1] != p.k:
        raise InputError(f"x has {x.shape[-1]} input features, the weight expects {p.k}")
    if p.values.device != x.device:
        raise InputError(f"x is on {x.device} but the packed weight is on {p.values.device}: move one (p.to(...))")
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, p.k).to(torch.bfloat16).contiguous()
    backend = choose(x2, p) if backend == "auto" else backend
    if backend == "gemv":
        from nmx.kernels.triton_gemv import gemv

        y = gemv(x2, p)
    elif backend == "tc":
        from nmx.kernels.triton_tc import tc_linear

        y = tc_linear(x2, p)
    elif backend == "triton":
        from nmx.kernels.triton_gemv import word_linear

        y = word_linear(x2, p)
    elif backend == "sparse24":
        if not p.sparse24:
            raise InputError("backend 'sparse24' needs a 2:4 weight (pack(..., pattern='2:4'))")
        from nmx.kernels.sparse_gemm import sparse24_linear

        y = sparse24_linear(x2, p, lambda: dense_weight(p))
    elif backend == "dense":
        y = torch.nn.functional.linear(x2, dense_weight(p))
    else:
        y = linear_reference(x2, p)
    return y.reshape(*lead, p.n)
