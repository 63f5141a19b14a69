"""One answer from every hardware target: `Cost`.

    from nmx.hw.targets import get_target
    cost = get_target("h200").cost(workload)        # or an accelerator design, a Timeloop case
    cost.latency_s, cost.tokens_per_s, cost.energy_pj, cost.bytes, cost.bound, cost.ops

Every target (`nmx.hw.targets`) answers `cost(workload) -> Cost`, so `nmx run`, `nmx sweep` and
`nmx explore` never care which kind of model priced a step. Fields a model does not have are None
(a GPU roofline has no energy), never a made-up number.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class OpCost:
    """One operation of the step (all `count` instances together)."""

    name: str
    kind: str
    count: float
    latency_s: float
    energy_pj: float | None
    bytes: float  # bytes moved through off-chip memory (device memory, DRAM)
    bound: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Cost:
    """What one step costs on one target.

    `bytes`: bytes moved through the target's off-chip memory (a GPU's device memory, an
    accelerator's DRAM, a Timeloop case's outermost level). `bound`: what limits the step
    (GPU: memory / compute / overhead / decode; accelerator: memory / buffer / compute; Timeloop:
    compute or the limiting level). `phase`, `batch`, `tokens` (new tokens per sequence: the
    prefill length, or 1) and `context` (tokens cached before the step) describe an LLM step as
    `nmx.hw.workload.Workload` does; a single layer (a Timeloop case) has none. `extra`:
    target-specific numbers (calibration, area, utilization, energy breakdown), JSON-ready."""

    target: str
    kind: str  # "gpu", "accelerator" or "timeloop"
    latency_s: float
    energy_pj: float | None
    bytes: float
    bound: str
    ops: tuple[OpCost, ...] = ()
    phase: str | None = None
    batch: int = 0
    tokens: int = 0
    context: int = 0
    kv_cache_bytes: float | None = None
    notes: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def tokens_per_s(self) -> float | None:
        """Tokens the step processes (batch x new tokens) per second; None without an LLM step."""
        if not self.tokens or not self.batch or not self.latency_s or not math.isfinite(self.latency_s):
            return None
        return self.batch * self.tokens / self.latency_s

    def as_dict(self, ops: bool = False) -> dict[str, Any]:
        """A JSON-ready record (the op rows only with `ops`)."""
        out = {k: getattr(self, k) for k in ("target", "kind", "phase", "batch", "tokens", "context", "latency_s")}
        out.update(tokens_per_s=self.tokens_per_s, energy_pj=self.energy_pj, bytes=self.bytes, bound=self.bound,
                   kv_cache_bytes=self.kv_cache_bytes)
        if self.notes:
            out["notes"] = list(self.notes)
        if ops:
            out["ops"] = [op.as_dict() for op in self.ops]
        return out
