"""Pick the implementation of y = x W^T for a packed weight.

    triton     the compressed-weight kernel (triton_linear.py): CUDA tensors, triton installed, M <= 64
    dense      larger M on a GPU: decode W once to bf16 and call cuBLAS (correct, not faster than dense)
    reference  everything else (CPU tensors, no triton): the reference twin, with a warning once

A non-contiguous x is copied to contiguous rows first; x of any leading shape [..., K] is flattened.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch

from nmx.errors import InputError
from nmx.kernels.layout import PackedLinear
from nmx.kernels.reference import decode_weight, linear_reference

log = logging.getLogger(__name__)
MAX_KERNEL_M = 64


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


def choose(x: torch.Tensor, p: PackedLinear) -> str:
    m = x.numel() // max(x.shape[-1], 1)
    if x.device.type != "cuda":
        return "reference"
    if not triton_available():
        _warn_once("triton is not installed")
        return "reference"
    return "triton" if m <= MAX_KERNEL_M else "dense"


def linear(x: torch.Tensor, p: PackedLinear, backend: str = "auto") -> torch.Tensor:
    """y [..., N] (bf16) = x [..., K] W^T for a packed W."""
    if x.shape[-1] != p.k:
        raise InputError(f"x has {x.shape[-1]} input features, the weight expects {p.k}")
    if p.values.device != x.device:
        raise InputError(f"x is on {x.device} but the packed weight is on {p.values.device}: move one (p.to(...))")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, p.k).to(torch.bfloat16).contiguous()
    backend = choose(x2, p) if backend == "auto" else backend
    if backend == "triton":
        from nmx.kernels.triton_linear import packed_linear

        y = packed_linear(x2, p)
    elif backend == "dense":
        y = torch.nn.functional.linear(x2, decode_weight(p).to(torch.bfloat16))
    elif backend == "reference":
        y = linear_reference(x2, p)
    else:
        raise InputError(f"unknown backend {backend!r}: use auto, triton, dense or reference")
    return y.reshape(*lead, p.n)
