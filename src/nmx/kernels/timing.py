"""Timing on a CUDA GPU: by CUDA events, and from CUDA-graph replays (no launch or host cost).

Used by the dispatchers that decide by measurement (sparse_gemm.py) and by the benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def event_time(fn: Callable[[], object], reps: int = 10) -> float:
    """Median seconds of fn() over reps, by CUDA events around each call (after one warm-up call)."""
    fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e-3)
    return sorted(times)[len(times) // 2]


def graph_time(fn: Callable[[], object], reps: int = 20, calls: int = 1) -> float:
    """Seconds per call of fn() captured once in a CUDA graph and replayed (median of reps replays,
    divided by `calls`, the number of calls fn makes). Warmed up twice on a side stream first, as
    capture requires (compilation, autotuning and allocations happen there)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    t = event_time(g.replay, reps) / calls
    del g
    return t


def graph_time_over(fn: Callable[[object], object], items: Sequence[object], calls: int | None = None,
                    reps: int = 20) -> float:
    """Seconds per call of fn(item), one graph calling it `calls` times (default: once per item) cycling
    over the items: distinct weight copies larger than the L2 make every call read memory."""
    n = calls or len(items)
    return graph_time(lambda: [fn(items[i % len(items)]) for i in range(n)], reps, n)
