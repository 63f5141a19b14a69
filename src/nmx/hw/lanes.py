"""Load imbalance of bit-serial lanes when each group has its own mantissa width (finer than Anda's
one width per tensor type).

`lanes` bit-serial lanes take groups in dispatch order, `lanes` at a time (a wave); a lane holding a
group of width w is busy w + overhead cycles, and the wave ends when its widest group does (the lanes
share the activation broadcast and the accumulation step). So

    cycles      = sum over waves of (max width in the wave + overhead)
    utilization = sum of (w + overhead) over groups / (lanes x cycles)

Reordering sorts the groups by width before dispatch (a counting sort over the 1..16 possible widths:
one counter increment and one index write per group, `reorder_ops`), so each wave holds similar widths.
`variable_width_gain` compares per-group widths (with and without reordering) against one width for
all groups -- their maximum (what a per-tensor setting must use to keep every group's error bound), or
`uniform_width` (e.g. the per-tensor-type length a precision search chose): the ratio of cycles. Where
the gain is below 1 + reorder overhead, variable widths stop paying.

Reordering is only possible where the hardware accumulates partial sums by address (an output-stationary
accumulator indexed by token and output), not where a systolic column must see a token's groups in K
order; `reorder_ops` counts the sort, not that accumulator.
"""

from __future__ import annotations

import math
from typing import Sequence

from nmx.errors import InputError


def _check(widths: Sequence[int], lanes: int, overhead: int) -> list[int]:
    w = [int(x) for x in widths]
    if not w or any(x < 0 for x in w):
        raise InputError("widths: give at least one group width, each >= 0")
    if lanes < 1 or overhead < 0:
        raise InputError(f"lanes must be >= 1 and overhead >= 0, got {lanes} and {overhead}")
    return w


def lane_cycles(widths: Sequence[int], lanes: int, overhead: int = 0, reorder: bool = False) -> dict[str, float]:
    """Cycles, busy lane-cycles and utilization of the groups of `widths` on `lanes` lanes."""
    w = _check(widths, lanes, overhead)
    order = sorted(w, reverse=True) if reorder else w
    cycles = sum(max(order[i:i + lanes]) + overhead for i in range(0, len(order), lanes))
    busy = sum(x + overhead for x in w)
    return {"cycles": float(cycles), "busy": float(busy), "utilization": busy / (lanes * cycles) if cycles else 1.0,
            "reorder_ops": float(reorder_ops(len(w))) if reorder else 0.0}


def reorder_ops(groups: int) -> int:
    """Operations of a counting sort of `groups` widths: one increment and one write per group (plus a
    prefix sum over 16 buckets)."""
    return 2 * groups + 16


def variable_width_gain(widths: Sequence[int], lanes: int, overhead: int = 0,
                        uniform_width: int | None = None) -> dict[str, float]:
    """Speedup of per-group widths over one width for all groups (`uniform_width`, default the maximum),
    in dispatch order and reordered; and the utilizations."""
    w = _check(widths, lanes, overhead)
    if uniform_width is not None and (isinstance(uniform_width, bool) or int(uniform_width) != uniform_width
                                      or uniform_width < 0):
        raise InputError(f"uniform_width must be a whole number >= 0, got {uniform_width!r}")
    ref = max(w) if uniform_width is None else int(uniform_width)
    uniform = (ref + overhead) * math.ceil(len(w) / lanes)
    plain, sorted_ = lane_cycles(w, lanes, overhead), lane_cycles(w, lanes, overhead, reorder=True)
    return {"uniform_width": float(ref), "uniform_cycles": float(uniform), "speedup": uniform / plain["cycles"],
            "speedup_reordered": uniform / sorted_["cycles"], "utilization": plain["utilization"],
            "utilization_reordered": sorted_["utilization"], "reorder_ops": sorted_["reorder_ops"]}
