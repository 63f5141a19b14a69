"""Pick the implementation of y = x W^T for a packed weight.

    measured   on a GPU with a measured table (data/dispatch_*.json, written by
               benchmarks/kernels_peers.py): per (format and pattern, N x K, M in 1, 2, 4, .. 64) the
               fastest path of that run, with its tile config: `gemv` (one token), `tc` (tensor cores,
               2 .. 64 tokens) or `dense` where every nmx kernel lost to cuBLAS. A shape that was not
               measured takes the entry of the nearest measured shape (by N x K) of the same format, and
               M the next measured M up. H100 table: sm_90 GPUs (an H200 uses it too: same SMs).
    gemv       one token on a CUDA GPU with triton and no table: the word-streaming kernel (triton_gemv.py)
    dense      2 .. 64 tokens without a table, or where the table says so: W decoded once to bf16 (kept
               beside the packed weight: memory of both) and cuBLAS, so `linear` is never slower than
               cuBLAS by more than the noise of the measurement
    sparse24   more than 64 tokens, a 2:4 weight with bf16 values: cuSPARSELt or cuBLAS, whichever
               was measured faster at that shape (sparse_gemm.py)
    reference  CPU tensors or no triton: the reference twin, with a warning once
On request: `gemv`, `tc` (triton_tc.py, 1 .. 64 tokens, 4/8-bit weights), `triton` (the word kernel's
tensor-core path), `dense`, `reference`.

A non-contiguous x is copied to contiguous rows first; x of any leading shape [..., K] is flattened.
"""

from __future__ import annotations

import json
import logging
import math
import weakref
from functools import lru_cache
from importlib import resources

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


MEASURED_M = (1, 2, 4, 8, 16, 32, 64)


@lru_cache(maxsize=None)
def measured_table(device_name: str, capability: tuple[int, int]) -> dict | None:
    """The measured dispatch table for a GPU: {(case, n, k, m): entry}, or None where none was measured
    (only sm_90 so far: the H100 table)."""
    if capability != (9, 0):
        return None
    text = resources.files("nmx.kernels").joinpath("data/dispatch_h100.json").read_text()
    return {(e["case"], e["n"], e["k"], e["m"]): e for e in json.loads(text)["entries"]}


def case_name(p: PackedLinear) -> str:
    """The table's name of a packed weight: "[2:4+]FORMAT" (bf16 values: "bf16")."""
    return ("2:4+" if p.sparse24 else "") + (p.format or "bf16")


def lookup(table: dict, p: PackedLinear, m: int) -> dict | None:
    """The table's entry for this weight and M: its own shape if measured, else the nearest measured
    shape of the same case (by log N x K); M rounded up to a measured M. None past 64 tokens."""
    return lookup_case(table, case_name(p), p.n, p.k, m)


def lookup_case(table: dict, case: str, n: int, k: int, m: int) -> dict | None:
    """`lookup` by name: case "[2:4+]FORMAT", shape N x K, M tokens."""
    mm = next((v for v in MEASURED_M if v >= m), None)
    if mm is None:
        return None
    got = table.get((case, n, k, mm))
    if got is None:
        shapes = {(sn, sk) for (c, sn, sk, v) in table if c == case and v == mm}
        if not shapes:
            return None
        sn, sk = min(shapes, key=lambda s: (abs(math.log(s[0] * s[1] / (n * k))), s))
        got = table[(case, sn, sk, mm)]
    return got


@lru_cache(maxsize=None)
def _device_table(index: int) -> dict | None:
    return measured_table(torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index))


def _table_here(x: torch.Tensor) -> dict | None:
    return _device_table(x.device.index if x.device.index is not None else torch.cuda.current_device())


_PLANS: dict = {}  # (device index, case, N, K, M) -> (backend, config): decided once per shape


def plan(x: torch.Tensor, p: PackedLinear) -> tuple[str, dict | None]:
    """(backend, tile config or None for the kernel's default) for x [M, K] on this device."""
    m = x.numel() // max(x.shape[-1], 1)
    if x.device.type != "cuda":
        return "reference", None
    if not triton_available():
        _warn_once("triton is not installed")
        return "reference", None
    if m <= MAX_KERNEL_M:
        key = (x.device.index, case_name(p), p.n, p.k, m, p.block)
        got = _PLANS.get(key)
        if got is None:
            table = _table_here(x)
            entry = lookup(table, p, m) if table else None
            got = (None, None) if entry is None else (entry["backend"], entry["config"])
            if got[0] == "tc" and (entry["n"], entry["k"], entry["m"]) != (p.n, p.k, m):
                got = ("tc", _fit_tc(got[1], p, m))  # measured on another shape or M: made legal here
            _PLANS[key] = got
        if got[0] is not None:
            return got
    if m == 1:
        return "gemv", None
    if m <= MAX_KERNEL_M:
        if SMALL_M == "tc":
            from nmx.kernels.triton_tc import supports

            return ("tc" if supports(p) else "dense"), None
        return "dense", None
    from nmx.kernels import sparse_gemm

    return ("sparse24" if p.sparse24 and p.format is None and sparse_gemm.available() else "dense"), None


def _fit_tc(cfg: dict, p: PackedLinear, m: int) -> dict | None:
    """A tensor-core config measured on another shape or M, made legal for this one (BLOCK_M and SPLIT_K
    recomputed as triton_tc.default_config does), or None (the kernel's default) where its K tile does
    not fit. The measured shape and M keep the measured config as it is."""
    from nmx.kernels.triton_tc import split_k

    bk = cfg["BLOCK_K"]
    if p.k % bk or (p.element == "int4" and p.block % bk):
        return None
    split = split_k(math.ceil(p.n / cfg["BLOCK_N"]) * math.ceil(m / 16), p.k // bk)
    return {**cfg, "BLOCK_M": 16 if m <= 16 else 32 if m <= 32 else 64, "SPLIT_K": split}


def choose(x: torch.Tensor, p: PackedLinear) -> str:
    return plan(x, p)[0]


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
    cfg = None
    if backend == "auto":
        backend, cfg = plan(x2, p)
    if backend == "gemv":
        from nmx.kernels.triton_gemv import gemv

        y = gemv(x2, p, cfg)
    elif backend == "tc":
        from nmx.kernels.triton_tc import tc_linear

        y = tc_linear(x2, p, cfg)
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
