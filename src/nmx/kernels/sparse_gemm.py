"""Large-M (prefill) products with a 2:4 bf16 weight: cuSPARSELt's sparse tensor cores or dense
cuBLAS, whichever is faster at this shape, decided by measurement and cached.

PyTorch's 2:4 path pays ~0.5-1.5 ms of host-side plan setup on every call (measured on an H200,
BENCHMARKS.md), which makes it lose to dense below ~16K tokens when called eagerly. Inside a CUDA
graph that cost is paid once at capture, and the sparse tensor cores win from ~2-4K tokens on
Llama-2-7B shapes. So there are two decisions per (N, K, M rounded up to a power of two):

    eager   timed on the first eager call of that shape: the sparse call as PyTorch runs it
            (with its plan setup) against F.linear; in practice dense, except at very large M
    graph   used while a CUDA graph is being captured (timing is impossible then): measured
            ahead by `tune_graph(...)` from replays of small graphs of each path; untuned shapes
            use dense, so a capture is never slower than dense by more than the timing noise

Sparse is chosen only if it is faster by more than `MARGIN` (3 %), so the dispatcher follows
dense within noise where the two are close. The algorithm of each shape is cuSPARSELt's own
search (`torch._cslt_sparse_mm_search`), done once per (N, K, M bucket).
"""

from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from nmx.errors import InputError
from nmx.kernels.timing import event_time, graph_time

log = logging.getLogger(__name__)
MARGIN = 0.03
ALIGN_M = 16


def bucket(m: int) -> int:
    """M rounded up to a power of two (decisions are shared within a bucket)."""
    return 1 << max(int(m) - 1, 0).bit_length()


@dataclass
class _Weights:
    dense: torch.Tensor  # bf16 [N, K]
    compressed: torch.Tensor  # torch._cslt_compress(dense)


@dataclass
class Decisions:
    """Per (N, K, M bucket, mode): "sparse" or "dense", the algorithm id and the timings behind it."""

    choice: dict[tuple[int, int, int, str], str] = field(default_factory=dict)
    alg: dict[tuple[int, int, int], int] = field(default_factory=dict)
    timings_s: dict[tuple[int, int, int, str], tuple[float, float]] = field(default_factory=dict)


DECISIONS = Decisions()
_WEIGHTS: "weakref.WeakKeyDictionary[object, _Weights]" = weakref.WeakKeyDictionary()


def available() -> bool:
    """cuSPARSELt reachable from this PyTorch on a GPU with sparse tensor cores (sm_80+)."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        return False
    return hasattr(torch, "_cslt_compress") and torch.backends.cusparselt.is_available()


def weights_for(owner: object, dense: Callable[[], torch.Tensor]) -> _Weights:
    """The dense and compressed forms of a 2:4 weight, made once per owner (a PackedLinear) from
    `dense()` and kept while the owner lives (both forms: 1.56x the bf16 weight's memory)."""
    w = _WEIGHTS.get(owner)
    if w is None:
        d = dense().to(torch.bfloat16).contiguous()
        w = _WEIGHTS[owner] = _Weights(d, torch._cslt_compress(d))
    return w


def _sparse(w: _Weights, x: torch.Tensor, alg: int) -> torch.Tensor:
    """cuSPARSELt wants M a multiple of 16: other M are zero-padded (a copy of x, small next to the product)."""
    m = x.shape[0]
    if m % ALIGN_M:
        x = F.pad(x, (0, 0, 0, ALIGN_M - m % ALIGN_M))
    y = torch._cslt_sparse_mm(w.compressed, x.T, alg_id=alg, transpose_result=True)
    return y[:m] if y.shape[0] != m else y


def _alg(w: _Weights, x: torch.Tensor) -> int:
    key = (*w.dense.shape, bucket(x.shape[0]))
    if key not in DECISIONS.alg:
        if x.shape[0] % ALIGN_M:
            x = F.pad(x, (0, 0, 0, ALIGN_M - x.shape[0] % ALIGN_M))
        try:
            with warnings.catch_warnings():  # "deprecated" (PyTorch 2.11); its successor is private too
                warnings.simplefilter("ignore")
                DECISIONS.alg[key] = int(torch._cslt_sparse_mm_search(w.compressed, x.T))
        except RuntimeError as err:  # some builds cannot search: the default algorithm
            log.warning("nmx.kernels: cuSPARSELt algorithm search failed (%s); using algorithm 0", err)
            DECISIONS.alg[key] = 0
    return DECISIONS.alg[key]


def _decide(key: tuple[int, int, int, str], t_sparse: float, t_dense: float) -> str:
    DECISIONS.timings_s[key] = (t_sparse, t_dense)
    DECISIONS.choice[key] = "sparse" if t_sparse < (1.0 - MARGIN) * t_dense else "dense"
    return DECISIONS.choice[key]


def tune_graph(owner: object, dense: Callable[[], torch.Tensor], ms: list[int]) -> dict[int, str]:
    """Decide, for each M, which path a CUDA-graph capture of this shape should take, from replays
    of one graph per path on random inputs. Returns {M bucket: choice}."""
    w = weights_for(owner, dense)
    n, k = w.dense.shape
    out = {}
    for m in ms:
        b = bucket(m)
        x = torch.randn(b, k, device=w.dense.device, dtype=torch.bfloat16)
        alg = _alg(w, x)
        out[b] = _decide((n, k, b, "graph"), graph_time(lambda x=x, alg=alg: _sparse(w, x, alg)),
                         graph_time(lambda x=x: F.linear(x, w.dense)))
    return out


def sparse24_linear(x: torch.Tensor, owner: object, dense: Callable[[], torch.Tensor]) -> torch.Tensor:
    """y [M, N] = x [M, K] W^T for a 2:4 weight W (`dense()`: bf16 [N, K]), by the faster path (module doc)."""
    if x.dtype != torch.bfloat16 or x.dim() != 2:
        raise InputError("sparse24_linear takes a 2-D bf16 x")
    w = weights_for(owner, dense)
    n, k = w.dense.shape
    m = x.shape[0]
    capturing = torch.cuda.is_current_stream_capturing()
    key = (n, k, bucket(m), "graph" if capturing else "eager")
    choice = DECISIONS.choice.get(key)
    if choice is None:
        if capturing:  # cannot time now; dense is never the slower choice by more than noise
            choice = "dense"
        else:
            alg = _alg(w, x)
            choice = _decide(key, event_time(lambda: _sparse(w, x, alg), reps=3),
                             event_time(lambda: F.linear(x, w.dense), reps=3))
    if choice == "sparse":
        return _sparse(w, x, DECISIONS.alg[(n, k, bucket(m))])
    return F.linear(x, w.dense)
