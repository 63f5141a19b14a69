"""Mantissa lengths per activation tensor type: the BOPs-ordered greedy search of Anda (HPCA 2025)
and a one-type-at-a-time sensitivity scan. Pure: the quality of a point comes from an injected
evaluator, its cost from an injected BOPs function, so a test can run the search on a synthetic
quality function and compare it with brute force.

    crit = Criterion(reference=ppl_a16, tolerance=0.01)             # ppl <= 1.01 x the A16 ppl
    res = greedy_search(("qkv", "o", "up", "down"), bops, evaluate, crit, max_iter=32)
    res.best.lengths, res.iterations, res.points

The greedy search: a priority queue of candidate length vectors ordered by BOPs, seeded with the
uniform vectors [s, s, ..., s] for s in `starts` (default 4..13). Each iteration pops the cheapest
candidate; if it is not cheaper than the best accepted point, nothing left in the queue can improve
and the search stops (converged). Otherwise the candidate is evaluated (one iteration); it is accepted
when its quality meets the criterion (it is cheaper than the best by construction), and then every
neighbour that cuts one tensor type by one bit (down to `min_bits`) is queued, each vector at most
once. At most `max_iter` evaluations. No accepted uniform start -> `SearchError`.

Criterion. For a quality where higher is better (accuracy): q >= (1 - tolerance) x reference. For
perplexity (lower is better), the analogue used here: ppl <= (1 + tolerance) x reference, reference =
the perplexity with the activations unquantized (A16, the same weights).
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

from nmx.errors import InputError

Lengths = tuple[Optional[int], ...]  # None: that tensor type unquantized (sensitivity mode)
#: mantissa lengths the BFP family has (bfp_m1 .. bfp_m15: sign + m bits fit a 16-bit integer code)
MIN_BITS, MAX_BITS = 1, 15
DEFAULT_STARTS = tuple(range(4, 14))


class SearchError(InputError):
    """The search found no point within the tolerance."""


@dataclass(frozen=True)
class Criterion:
    reference: float
    tolerance: float
    higher_is_better: bool = False

    def __post_init__(self) -> None:
        check_tolerance(self.tolerance)

    @property
    def limit(self) -> float:
        return self.reference * (1 - self.tolerance if self.higher_is_better else 1 + self.tolerance)

    def ok(self, quality: float) -> bool:
        if not math.isfinite(quality):
            return False
        return quality >= self.limit if self.higher_is_better else quality <= self.limit

    def describe(self) -> str:
        return (f"quality >= (1 - {self.tolerance:g}) x reference" if self.higher_is_better else
                f"perplexity <= (1 + {self.tolerance:g}) x the A16 reference")


@dataclass(frozen=True)
class Point:
    lengths: Lengths
    bops: float
    quality: float
    accepted: bool
    iteration: int
    varied: Optional[str] = None  # sensitivity mode: the tensor type varied


@dataclass
class SearchResult:
    types: tuple[str, ...]
    criterion: Criterion
    points: list[Point] = field(default_factory=list)
    best: Optional[Point] = None
    stopped: str = ""
    wall_s: float = 0.0

    @property
    def iterations(self) -> int:
        return len(self.points)

    def as_dict(self) -> dict:
        c = self.criterion
        return {"types": list(self.types), "criterion": c.describe(), "reference": c.reference,
                "tolerance": c.tolerance, "limit": c.limit, "iterations": self.iterations, "stopped": self.stopped,
                "wall_s": self.wall_s, "best": asdict(self.best) if self.best else None,
                "points": [asdict(p) for p in self.points]}


def check_tolerance(tolerance: float) -> float:
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not 0 < tolerance < 1:
        raise InputError(f"--tolerance must be in (0, 1) (0.01 = 1 %), got {tolerance!r}")
    return float(tolerance)


def check_lengths(lengths: Sequence[int], what: str = "mantissa lengths") -> tuple[int, ...]:
    bad = [m for m in lengths if not isinstance(m, int) or isinstance(m, bool) or not MIN_BITS <= m <= MAX_BITS]
    if bad:
        raise InputError(f"{what}: {bad} out of range; BFP mantissas take {MIN_BITS}..{MAX_BITS} bits "
                         f"(bfp_m{MAX_BITS}: sign + {MAX_BITS} bits is the widest 16-bit code)")
    return tuple(lengths)


def check_max_iter(max_iter: int) -> int:
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
        raise InputError(f"--max-iter must be at least 1, got {max_iter!r}")
    return max_iter


def greedy_search(
    types: Sequence[str],
    bops: Callable[[Lengths], float],
    evaluate: Callable[[Lengths], float],
    criterion: Criterion,
    *,
    starts: Sequence[int] = DEFAULT_STARTS,
    max_iter: int = 32,
    min_bits: int = MIN_BITS,
    progress: Callable[[Point], None] | None = None,
) -> SearchResult:
    """The BOPs-greedy search (module doc). Raises SearchError when no uniform start is accepted."""
    types = tuple(types)
    check_max_iter(max_iter)
    check_lengths(list(starts), "starting lengths")
    check_lengths([min_bits], "min_bits")
    t0 = time.perf_counter()
    result = SearchResult(types, criterion)
    queue: list[tuple[float, Lengths]] = []
    seen: set[Lengths] = set()
    for s in sorted(set(starts)):
        cand = (s,) * len(types)
        seen.add(cand)
        heapq.heappush(queue, (float(bops(cand)), cand))
    result.stopped = "queue empty"
    while queue:
        if result.iterations >= max_iter:
            result.stopped = f"max_iter ({max_iter}) reached"
            break
        b, cand = heapq.heappop(queue)
        if result.best is not None and b >= result.best.bops:
            result.stopped = "converged: no queued point is cheaper than the best accepted one"
            break
        quality = float(evaluate(cand))
        point = Point(cand, b, quality, criterion.ok(quality), result.iterations + 1)
        result.points.append(point)
        if progress:
            progress(point)
        if not point.accepted:
            continue
        result.best = point
        for i in range(len(types)):
            if cand[i] - 1 < min_bits:
                continue
            nb = cand[:i] + (cand[i] - 1,) + cand[i + 1:]
            if nb not in seen:
                seen.add(nb)
                heapq.heappush(queue, (float(bops(nb)), nb))
    result.wall_s = time.perf_counter() - t0
    if result.best is None:
        tried = ", ".join(f"{p.lengths[0]} bits: {p.quality:.4g}" for p in result.points)
        raise SearchError(f"no uniform starting point meets {criterion.describe()} (limit {criterion.limit:.4g}; "
                          f"tried {tried}); loosen --tolerance or raise --max-iter")
    return result


def sensitivity_scan(
    types: Sequence[str],
    bops: Callable[[Lengths], float],
    evaluate: Callable[[Lengths], float],
    criterion: Criterion,
    *,
    lengths: Sequence[int] = tuple(range(13, 0, -1)),
    progress: Callable[[Point], None] | None = None,
) -> tuple[SearchResult, dict[str, Optional[int]]]:
    """One tensor type quantized at a time (the others unquantized: None), from long to short
    mantissas, stopping a type at its first failure. Returns the points and, per type, the shortest
    length that met the criterion (None: not even the first)."""
    types = tuple(types)
    check_lengths(list(lengths), "sensitivity lengths")
    t0 = time.perf_counter()
    result = SearchResult(types, criterion)
    shortest: dict[str, Optional[int]] = {}
    for i, t in enumerate(types):
        shortest[t] = None
        for m in sorted(set(lengths), reverse=True):
            cand: Lengths = tuple(m if j == i else None for j in range(len(types)))
            quality = float(evaluate(cand))
            point = Point(cand, float(bops(cand)), quality, criterion.ok(quality), result.iterations + 1, varied=t)
            result.points.append(point)
            if progress:
                progress(point)
            if not point.accepted:
                break
            shortest[t] = m
    result.stopped = "every tensor type scanned"
    result.wall_s = time.perf_counter() - t0
    return result, shortest


def brute_force(types: Sequence[str], bops: Callable[[Lengths], float], evaluate: Callable[[Lengths], float],
                criterion: Criterion, grid: Sequence[int]) -> Optional[tuple[Lengths, float]]:
    """The cheapest point of grid^len(types) that meets the criterion (the search's oracle on small grids)."""
    import itertools

    best = None
    for cand in itertools.product(grid, repeat=len(types)):
        b = float(bops(cand))
        if (best is None or b < best[1]) and criterion.ok(float(evaluate(cand))):
            best = (cand, b)
    return best
