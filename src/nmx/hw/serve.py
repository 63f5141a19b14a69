"""Serving an LLM on a pool of GPUs: colocated vs prefill/decode disaggregated, goodput under SLOs.

    from nmx.hw.serve import LengthDist, Traffic, Deployment, CostSteps, simulate, max_goodput, best_split
    steps = CostSteps("h200", "llama-2-7b")                     # step times from the cost protocol
    traffic = Traffic(rate_rps=8, prompt=LengthDist.parse("lognormal:512:0.5"),
                      output=LengthDist.parse("128"), ttft_slo_s=0.4, tpot_slo_s=0.04, seed=0)
    r = simulate(traffic, Deployment("disaggregated", prefill_gpus=1, decode_gpus=1), steps)
    r.attainment, r.goodput_per_gpu_rps, r.kv_transfer_bytes, r.ttft_s (per request) ...
    max_goodput(traffic, deployment, steps)                     # DistServe's goodput: the highest rate
    best_split(traffic, gpus=4, steps=steps)                    # every P prefill + D decode split

The model is a **discrete-event simulation**, seeded and deterministic (same inputs and seed, same
numbers): requests arrive (Poisson at `rate_rps`: exponential gaps E_i / rate from one seeded stream,
so a higher rate compresses the same arrival pattern; or evenly spaced with `arrival="uniform"`),
with prompt and output lengths drawn from their own seeded streams (fixed, uniform or lognormal).
Each instance is one GPU (or `tp` GPUs with ideal tensor parallelism: step time / tp, no all-reduce
-- optimistic) running one step at a time:

- **colocated** (vLLM-style continuous batching, no chunked prefill): at every step boundary an
  instance runs a prefill of the waiting prompts (first come first served, up to
  `max_prefill_tokens` tokens and the KV memory left) if there are any, else one decode step of all
  its running requests. A prefill stalls every running decode: the prefill-decode interference that
  DistServe (Zhong et al., OSDI 2024) removes.
- **disaggregated** (DistServe): `prefill_gpus` instances only prefill; each sends a finished
  prompt's KV cache over its own link (`link_gb_s`, transfers one after another, overlapping the
  next prefill) to the decode instance with the fewest outstanding requests, which admits it at its
  next step boundary.

Times of one step come from any target of the cost protocol (`CostSteps`: `llm_workload` priced by
`target.cost`), so a recipe's compression (weights, KV format or policy, a result folder) changes
them through its real bytes. A decode step of B requests is priced at their mean context (attention
bytes and FLOPs are linear in the context, so the mean is exact for them); a prefill batch at its
mean prompt length (exact for equal lengths; it underestimates the attention of mixed lengths).
Step times are tabulated on a grid (every integer up to 8, then four points per octave) of batch
and length and interpolated linearly in between.

TTFT is the time from arrival to the end of the prefill (which emits the first token); TPOT is
(finish - first token) / (output tokens - 1), so it includes the KV transfer, the wait for a decode
slot and every prefill that stalled the request. A request meets the SLOs when TTFT <= ttft_slo_s
and TPOT <= tpot_slo_s; `attainment` is the fraction that does; `goodput_rps` = rate x attainment
(the requests per second that meet both) and `goodput_per_gpu_rps` that over the GPUs used.
`max_goodput` gives DistServe's definition instead: the highest rate whose attainment is at least
`target_attainment` (0.9), per GPU.

KV memory: an instance admits a request only if its whole KV (prompt + parallel_samples x output
tokens, reserved at admission) fits in `memory_utilization` x memory - weights (vLLM's 0.9
default); a prefill instance is assumed to free a prompt's KV as soon as it is sent. GPU memory comes
from `MEMORY_GB` (datasheets) or `memory_gb`; a target without one has no KV limit (said in notes).

`parallel_samples` n: each request decodes n candidates that share the prompt's KV (stored, moved and
read once); the request finishes when its candidates have produced `output` tokens each.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Literal, Protocol

import numpy as np

from nmx.errors import InputError

MODES = ("colocated", "disaggregated")
LENGTH_KINDS = ("fixed", "uniform", "lognormal")
MAX_TOKENS = 1 << 20  # lognormal draws are clipped here

#: device memory per GPU in GB (decimal), from the datasheets the GPU presets cite (nmx.hw.gpu)
MEMORY_GB = {
    "h200": 141.0,  # NVIDIA H200 datasheet: 141 GB HBM3e
    "h100-sxm": 80.0,  # NVIDIA H100 Tensor Core GPU datasheet (SXM5): 80 GB HBM3
    "a100-80gb": 80.0,  # NVIDIA A100 datasheet: 80 GB HBM2e
    "b200": 180.0,  # NVIDIA HGX B200 datasheet: 1,440 GB for 8 GPUs
    "l40s": 48.0,  # NVIDIA L40S datasheet: 48 GB GDDR6
}


def _positive(label: str, value: Any, integer: bool = False) -> Any:
    import numbers

    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if ok and integer and value != int(value):
        ok = False
    if not ok:
        raise InputError(f"{label} must be {'a positive integer' if integer else 'a number > 0'}, got {value!r}")
    return int(value) if integer else float(value)


# ---------------------------------------------------------------------------------------------
# traffic


@dataclass(frozen=True)
class LengthDist:
    """Token lengths: `fixed` (a), `uniform` integers in [a, b], or `lognormal` with median a and
    sigma b (of the log), rounded, clipped to [1, MAX_TOKENS]."""

    kind: Literal["fixed", "uniform", "lognormal"]
    a: float
    b: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in LENGTH_KINDS:
            raise InputError(f"a length distribution is one of {', '.join(LENGTH_KINDS)}, got {self.kind!r}")
        _positive(f"{self.kind} length", self.a, integer=self.kind != "lognormal")
        if self.kind == "uniform":
            _positive("uniform length (high end)", self.b, integer=True)
            if self.b < self.a:
                raise InputError(f"uniform lengths: the high end {self.b:g} is below the low end {self.a:g}")
        if self.kind == "lognormal":
            _positive("lognormal sigma", self.b)

    @classmethod
    def parse(cls, text: str | int, label: str = "length") -> "LengthDist":
        """`512`, `fixed:512`, `uniform:128:1024` or `lognormal:MEDIAN:SIGMA`."""
        s = str(text).strip().lower()
        parts = s.split(":")
        try:
            if len(parts) == 1 or (parts[0] == "fixed" and len(parts) == 2):
                return cls("fixed", _num(parts[-1]))
            if parts[0] in ("uniform", "lognormal") and len(parts) == 3:
                return cls(parts[0], _num(parts[1]), _num(parts[2]))  # type: ignore[arg-type]
        except InputError as err:
            raise InputError(f"{label} {text!r}: {err}") from None
        raise InputError(f"{label} {text!r}: give N, fixed:N, uniform:LOW:HIGH or lognormal:MEDIAN:SIGMA")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            return np.full(n, int(self.a), dtype=np.int64)
        if self.kind == "uniform":
            return rng.integers(int(self.a), int(self.b) + 1, size=n, dtype=np.int64)
        x = np.rint(self.a * np.exp(self.b * rng.standard_normal(n)))
        return np.clip(x, 1, MAX_TOKENS).astype(np.int64)

    def describe(self) -> str:
        return {"fixed": f"{self.a:g}", "uniform": f"uniform {self.a:g}..{self.b:g}",
                "lognormal": f"lognormal median {self.a:g} sigma {self.b:g}"}[self.kind]


def _num(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise InputError(f"{s!r} is not a number") from None
    return int(v) if v.is_integer() else v


@dataclass(frozen=True)
class Traffic:
    """The requests: arrival rate, length distributions, SLOs, how many, the seed."""

    rate_rps: float
    prompt: LengthDist
    output: LengthDist
    ttft_slo_s: float
    tpot_slo_s: float
    requests: int = 400
    seed: int = 0
    arrival: Literal["poisson", "uniform"] = "poisson"
    parallel_samples: int = 1
    #: at least this many seconds of arrivals (more requests at higher rates), so that a rate the
    #: deployment cannot sustain shows as a growing queue rather than a short burst it drains
    min_duration_s: float = 0.0

    @property
    def count(self) -> int:
        """Requests simulated: `requests`, or more to cover `min_duration_s` at `rate_rps`."""
        return max(self.requests, math.ceil(self.rate_rps * self.min_duration_s))

    def __post_init__(self) -> None:
        _positive("the arrival rate (--rate)", self.rate_rps)
        _positive("the TTFT SLO (--ttft-slo)", self.ttft_slo_s)
        _positive("the TPOT SLO (--tpot-slo)", self.tpot_slo_s)
        _positive("the number of requests (--requests)", self.requests, integer=True)
        _positive("parallel samples (--parallel-samples)", self.parallel_samples, integer=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"the seed (--seed) must be an integer >= 0, got {self.seed!r}")
        if isinstance(self.min_duration_s, bool) or not isinstance(self.min_duration_s, (int, float)) \
                or not 0 <= self.min_duration_s < math.inf:
            raise InputError(f"min_duration_s (--duration) must be a number >= 0, got {self.min_duration_s!r}")
        if self.arrival not in ("poisson", "uniform"):
            raise InputError(f"arrival must be poisson or uniform, got {self.arrival!r}")

    def draw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(arrival times, prompt lengths, output lengths), each from its own seeded stream."""
        streams = np.random.SeedSequence(self.seed).spawn(3)
        rng_a, rng_p, rng_o = (np.random.default_rng(s) for s in streams)
        n = self.count
        if self.arrival == "poisson":
            gaps = rng_a.exponential(1.0, n) / self.rate_rps
            t = np.cumsum(gaps) - gaps[0]  # the first request at t = 0
        else:
            t = np.arange(n, dtype=float) / self.rate_rps
        return t, self.prompt.sample(rng_p, n), self.output.sample(rng_o, n)


@dataclass(frozen=True)
class Deployment:
    """How the GPUs serve: `colocated` on `gpus` GPUs, or `disaggregated` on `prefill_gpus` +
    `decode_gpus`; `tp` GPUs per instance; the KV link of each prefill instance in GB/s."""

    mode: Literal["colocated", "disaggregated"] = "colocated"
    gpus: int = 1
    prefill_gpus: int = 0
    decode_gpus: int = 0
    tp: int = 1
    link_gb_s: float = 50.0  # one 400 Gb/s InfiniBand NDR port
    max_batch: int = 256  # sequences in one decode step
    max_prefill_tokens: int = 8192
    memory_gb: float | None = None  # per GPU; default MEMORY_GB[target]
    memory_utilization: float = 0.9

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"the serving mode (--mode) is colocated or disaggregated, got {self.mode!r}")
        _positive("GPUs per instance (--tp)", self.tp, integer=True)
        _positive("the KV link bandwidth (--link-gb-s)", self.link_gb_s)
        _positive("the decode batch limit (--max-batch)", self.max_batch, integer=True)
        _positive("the prefill token budget (--max-prefill-tokens)", self.max_prefill_tokens, integer=True)
        if self.memory_gb is not None:
            _positive("GPU memory (--memory-gb)", self.memory_gb)
        if not 0 < self.memory_utilization <= 1:
            raise InputError(f"memory_utilization must be in (0, 1], got {self.memory_utilization!r}")
        if self.mode == "colocated":
            _positive("the GPU budget (--gpus)", self.gpus, integer=True)
            if self.gpus % self.tp:
                raise InputError(f"--gpus {self.gpus} is not a multiple of --tp {self.tp}")
        else:
            _positive("prefill GPUs (--prefill-gpus)", self.prefill_gpus, integer=True)
            _positive("decode GPUs (--decode-gpus)", self.decode_gpus, integer=True)
            if self.prefill_gpus % self.tp or self.decode_gpus % self.tp:
                raise InputError(f"prefill and decode GPUs ({self.prefill_gpus}, {self.decode_gpus}) must be "
                                 f"multiples of --tp {self.tp}")

    @property
    def total_gpus(self) -> int:
        return self.gpus if self.mode == "colocated" else self.prefill_gpus + self.decode_gpus

    @property
    def label(self) -> str:
        """Short: `colocated x4`, `1P+3D` (with `tp2` where tp > 1)."""
        tp = f" tp{self.tp}" if self.tp > 1 else ""
        if self.mode == "colocated":
            return f"colocated x{self.gpus}{tp}"
        return f"{self.prefill_gpus}P+{self.decode_gpus}D{tp}"

    def describe(self) -> str:
        tp = f", tp {self.tp}" if self.tp > 1 else ""
        if self.mode == "colocated":
            return f"colocated on {self.gpus} GPU(s){tp}"
        return f"disaggregated {self.prefill_gpus} prefill + {self.decode_gpus} decode GPU(s){tp}"


# ---------------------------------------------------------------------------------------------
# step times


class Steps(Protocol):
    """Step times of one GPU and the bytes they keep: what the simulation asks a hardware model."""

    def prefill_s(self, batch: int, tokens: float) -> float: ...

    def decode_s(self, requests: int, context: float, prefix: float, samples: int) -> float: ...

    def kv_bytes(self, tokens: float) -> float: ...  # one sequence's cache after `tokens` tokens

    @property
    def weight_bytes(self) -> float: ...

    @property
    def memory_bytes(self) -> float | None: ...  # device memory per GPU; None: no limit


def grid_points(x: float) -> tuple[int, int]:
    """The grid neighbours lo <= x <= hi: every integer up to 8, then four points per octave."""
    if x <= 8:
        lo = max(1, math.floor(x))
        return lo, lo if lo == x else lo + 1
    step = 2 ** (math.floor(math.log2(x)) - 2)
    lo = int(math.floor(x / step) * step)
    return lo, lo if lo == x else lo + step


def interpolate(f: Callable[..., float], *xs: float) -> float:
    """Multilinear interpolation of f (called only at grid points) at xs."""
    if not xs:
        return f()
    lo, hi = grid_points(xs[0])
    f_lo = interpolate(lambda *r: f(lo, *r), *xs[1:])
    if hi == lo:
        return f_lo
    f_hi = interpolate(lambda *r: f(hi, *r), *xs[1:])
    w = (xs[0] - lo) / (hi - lo)
    return f_lo + w * (f_hi - f_lo)


class CostSteps:
    """Step times from a target of the cost protocol: `target.cost(llm_workload(...)).latency_s`,
    tabulated on `grid_points` and interpolated; with `tp` GPUs per instance, / tp (ideal)."""

    def __init__(self, target: Any, model: Any, compression: Any = None, tp: int = 1, gpu_impl: str = "pytorch",
                 memory_gb: float | None = None) -> None:
        from nmx.hw.targets import get_target
        from nmx.hw.workload import Compression, resolve_model

        self.target = get_target(target, gpu_impl)
        self.shape, from_result = resolve_model(model)
        self.model = model
        self.compression = compression if compression is not None else (from_result or Compression())
        self.tp = _positive("--tp", tp, integer=True)
        self._cache: dict[tuple, float] = {}
        w = self._workload("decode", 1, 1, 0, 1, 0)
        embed = 0.0 if self.shape.tied_embeddings else self.shape.vocab * self.shape.hidden * 2.0
        self._weights = w.total("weight_bytes") + embed
        mem = memory_gb if memory_gb is not None else MEMORY_GB.get(self.target.name)
        self._memory = None if mem is None else float(mem) * 1e9
        self.calls = 0

    def _workload(self, phase: str, batch: int, tokens: int, context: int, samples: int, prefix: int) -> Any:
        from nmx.hw.workload import llm_workload

        return llm_workload(self.shape, phase, batch=batch, tokens=tokens, context=context,
                            compression=self.compression, parallel_samples=samples,
                            shared_prefix=prefix if samples > 1 else None)

    def _latency(self, *key: Any) -> float:
        if key not in self._cache:
            self.calls += 1
            self._cache[key] = float(self.target.cost(self._workload(*key)).latency_s) / self.tp
        return self._cache[key]

    def prefill_s(self, batch: int, tokens: float) -> float:
        return interpolate(lambda t: self._latency("prefill", batch, t, 0, 1, 0), tokens)

    def decode_s(self, requests: int, context: float, prefix: float = 0.0, samples: int = 1) -> float:
        if samples == 1:
            return interpolate(lambda b, c: self._latency("decode", b, 1, c, 1, 0), requests, max(context, 1.0))
        # prefix <= context at every grid corner: interpolate the prompt's share of the context
        share = min(1.0, prefix / max(context, 1.0))
        return interpolate(lambda b, c: self._latency("decode", b, 1, c, samples, int(share * c)),
                           requests, max(context, 1.0))

    def kv_bytes(self, tokens: float) -> float:
        key = ("kv", tokens)
        if key not in self._cache:
            self._cache[key] = self._workload("prefill", 1, max(1, int(round(tokens))), 0, 1, 0).kv_cache_bytes
        return self._cache[key] / self.tp

    @property
    def weight_bytes(self) -> float:
        return self._weights / self.tp

    @property
    def memory_bytes(self) -> float | None:
        return self._memory

    def describe(self) -> dict[str, Any]:
        return {"target": self.target.name, "model": self.shape.name, "compression": self.compression.describe(),
                "tp": self.tp, "weight_bytes_per_gpu": self.weight_bytes, "memory_bytes_per_gpu": self._memory}


@dataclass
class FixedSteps:
    """Constant step times (for hand-computable cases): prefill `prefill_s_per_token` x tokens x batch
    + `prefill_s_fixed`, decode `decode_s_fixed` + `decode_s_per_request` x requests."""

    prefill_s_fixed: float = 0.0
    prefill_s_per_token: float = 0.0
    decode_s_fixed: float = 0.0
    decode_s_per_request: float = 0.0
    kv_bytes_per_token: float = 0.0
    weight_bytes: float = 0.0
    memory_bytes: float | None = None

    def prefill_s(self, batch: int, tokens: float) -> float:
        return self.prefill_s_fixed + self.prefill_s_per_token * batch * tokens

    def decode_s(self, requests: int, context: float, prefix: float = 0.0, samples: int = 1) -> float:
        return self.decode_s_fixed + self.decode_s_per_request * requests

    def kv_bytes(self, tokens: float) -> float:
        return self.kv_bytes_per_token * tokens


# ---------------------------------------------------------------------------------------------
# the simulation


@dataclass
class _Req:
    i: int
    arrival: float
    prompt: int
    output: int
    kv_reserved: float = 0.0
    first_token: float = math.nan
    finish: float = math.nan
    transfer_s: float = 0.0
    end_step: int = 0
    ctx0: int = 0
    join_step: int = 0


@dataclass
class _Inst:
    idx: int
    role: str  # colocated | prefill | decode
    capacity: float  # KV bytes it may hold
    waiting: deque = field(default_factory=deque)
    running: list = field(default_factory=list)  # heap of (end_step, i, req)
    busy: bool = False
    kv_used: float = 0.0
    steps: int = 0
    sum_ctx: float = 0.0
    sum_prefix: float = 0.0
    link_free: float = 0.0
    busy_s: float = 0.0

    @property
    def outstanding(self) -> int:
        return len(self.waiting) + len(self.running)


@dataclass(frozen=True)
class ServeResult:
    mode: str
    deployment: str
    gpus: int
    rate_rps: float
    requests: int
    attainment: float
    ttft_attainment: float
    tpot_attainment: float
    goodput_rps: float
    goodput_per_gpu_rps: float
    throughput_rps: float  # completed requests / (last finish - first arrival)
    ttft_p50_s: float
    ttft_p90_s: float
    tpot_p50_s: float
    tpot_p90_s: float
    kv_transfer_bytes: float  # all requests
    kv_transfer_bytes_per_request: float
    kv_transfer_s_mean: float  # per request: on the link, after waiting for it
    link_utilization: float
    utilization: dict[str, float]
    notes: tuple[str, ...] = ()
    ttft_s: tuple[float, ...] = field(default=(), repr=False)
    tpot_s: tuple[float, ...] = field(default=(), repr=False)

    def as_dict(self, per_request: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not per_request:
            d.pop("ttft_s"), d.pop("tpot_s")
        d["notes"] = list(self.notes)
        return d


def simulate(traffic: Traffic, deployment: Deployment, steps: Steps) -> ServeResult:
    """Run the discrete-event simulation (see the module doc) and measure TTFT, TPOT, goodput."""
    d, n = deployment, traffic.parallel_samples
    arrivals, prompts, outputs = traffic.draw()
    reqs = [_Req(i, float(arrivals[i]), int(prompts[i]), int(outputs[i])) for i in range(len(arrivals))]
    notes: list[str] = []
    mem = steps.memory_bytes
    if mem is None:
        capacity = math.inf
        notes.append("no device memory known for this target: the KV cache is unlimited (give --memory-gb)")
    else:
        capacity = d.memory_utilization * mem - steps.weight_bytes  # per GPU (weights and KV split over tp)
        if capacity <= 0:
            raise InputError(f"the weights ({steps.weight_bytes / 1e9:.1f} GB per GPU) do not fit in "
                             f"{d.memory_utilization:g} x {mem / 1e9:.0f} GB; raise --tp or --memory-gb")
    for r in reqs:
        r.kv_reserved = steps.kv_bytes(r.prompt + n * r.output) if n == 1 else \
            steps.kv_bytes(r.prompt) + n * (steps.kv_bytes(r.prompt + r.output) - steps.kv_bytes(r.prompt))
    worst = max(reqs, key=lambda r: r.kv_reserved)
    if worst.kv_reserved > capacity:
        raise InputError(f"a request of {worst.prompt} prompt + {n} x {worst.output} output tokens needs "
                         f"{worst.kv_reserved / 1e9:.2f} GB of KV cache per GPU, more than the "
                         f"{capacity / 1e9:.2f} GB left after the weights; raise --tp or --memory-gb, or shorten it")
    if d.mode == "colocated":
        insts = [_Inst(i, "colocated", capacity) for i in range(d.gpus // d.tp)]
        entry, decoders = insts, insts
    else:
        entry = [_Inst(i, "prefill", math.inf) for i in range(d.prefill_gpus // d.tp)]
        decoders = [_Inst(len(entry) + i, "decode", capacity) for i in range(d.decode_gpus // d.tp)]
        insts = entry + decoders
    link_bps = d.link_gb_s * 1e9
    events: list[tuple[float, int, int, str, Any]] = []
    seq = 0

    def push(t: float, kind: str, inst: int, payload: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, inst, kind, payload))

    def join_decode(inst: _Inst, r: _Req) -> None:
        r.ctx0, r.join_step, r.end_step = r.prompt, inst.steps, inst.steps + r.output - 1
        heapq.heappush(inst.running, (r.end_step, r.i, r))
        inst.sum_ctx += r.prompt
        inst.sum_prefix += r.prompt

    def start(inst: _Inst, now: float) -> None:
        if inst.busy:
            return
        if inst.role in ("colocated", "prefill") and inst.waiting:
            batch, tokens = [], 0
            while inst.waiting:
                r = inst.waiting[0]
                if batch and (tokens + r.prompt > d.max_prefill_tokens):
                    break
                if inst.role == "colocated" and (inst.kv_used + r.kv_reserved > inst.capacity
                                                 or len(inst.running) + len(batch) + 1 > max(1, d.max_batch // n)):
                    break
                batch.append(inst.waiting.popleft())
                tokens += r.prompt
                if inst.role == "colocated":
                    inst.kv_used += r.kv_reserved
            if batch:
                dur = steps.prefill_s(len(batch), tokens / len(batch))
                inst.busy, inst.busy_s = True, inst.busy_s + dur
                push(now + dur, "prefill_done", inst.idx, batch)
                return
        if inst.role == "decode":  # admit arrived KV caches at the step boundary
            while inst.waiting and len(inst.running) < max(1, d.max_batch // n) and \
                    inst.kv_used + inst.waiting[0].kv_reserved <= inst.capacity:
                r = inst.waiting.popleft()
                inst.kv_used += r.kv_reserved
                join_decode(inst, r)
        if inst.running:
            b = len(inst.running)
            dur = steps.decode_s(b, inst.sum_ctx / b, inst.sum_prefix / b, n)
            inst.busy, inst.busy_s = True, inst.busy_s + dur
            push(now + dur, "decode_done", inst.idx, None)

    def finish(inst: _Inst, r: _Req, t: float) -> None:
        r.finish = t
        inst.kv_used -= r.kv_reserved

    for r in reqs:
        push(r.arrival, "arrive", -1, r)
    transfer_bytes, link_busy = 0.0, 0.0
    while events:
        now, _, idx, kind, payload = heapq.heappop(events)
        if kind == "arrive":
            inst = min(entry, key=lambda x: (x.outstanding + x.busy, x.idx))
            inst.waiting.append(payload)
            start(inst, now)
            continue
        inst = insts[idx]
        if kind == "prefill_done":
            inst.busy = False
            for r in payload:
                r.first_token = now
                if r.output == 1:
                    if inst.role == "colocated":
                        finish(inst, r, now)
                    else:
                        r.finish = now
                elif inst.role == "colocated":
                    join_decode(inst, r)
                else:
                    nbytes = steps.kv_bytes(r.prompt) * d.tp  # the whole instance's cache moves
                    begin = max(now, inst.link_free)
                    inst.link_free = begin + nbytes / link_bps
                    link_busy += nbytes / link_bps
                    transfer_bytes += nbytes
                    r.transfer_s = inst.link_free - now
                    push(inst.link_free, "kv_arrive", inst.idx, r)
            start(inst, now)
        elif kind == "kv_arrive":
            dec = min(decoders, key=lambda x: (x.outstanding + x.busy, x.idx))
            dec.waiting.append(payload)
            start(dec, now)
        elif kind == "decode_done":
            inst.busy = False
            inst.steps += 1
            inst.sum_ctx += len(inst.running)
            while inst.running and inst.running[0][0] <= inst.steps:
                _, _, r = heapq.heappop(inst.running)
                inst.sum_ctx -= r.ctx0 + (inst.steps - r.join_step)
                inst.sum_prefix -= r.prompt
                finish(inst, r, now)
            start(inst, now)
    return _measure(traffic, d, reqs, insts, transfer_bytes, link_busy, notes)


def _measure(traffic: Traffic, d: Deployment, reqs: list[_Req], insts: list[_Inst], transfer_bytes: float,
             link_busy: float, notes: list[str]) -> ServeResult:
    ttft = np.array([r.first_token - r.arrival for r in reqs])
    tpot = np.array([(r.finish - r.first_token) / (r.output - 1) if r.output > 1 else 0.0 for r in reqs])
    ok_t = ttft <= traffic.ttft_slo_s * (1 + 1e-12)
    ok_p = tpot <= traffic.tpot_slo_s * (1 + 1e-12)
    att = float(np.mean(ok_t & ok_p))
    span = max(r.finish for r in reqs) - min(r.arrival for r in reqs)
    gpus = d.total_gpus
    util = {}
    for role in ("colocated", "prefill", "decode"):
        group = [i for i in insts if i.role == role]
        if group:
            util[role] = float(sum(i.busy_s for i in group) / (len(group) * span)) if span > 0 else 0.0
    n_pref = len([i for i in insts if i.role == "prefill"])
    return ServeResult(
        mode=d.mode, deployment=d.label, gpus=gpus, rate_rps=traffic.rate_rps, requests=len(reqs),
        attainment=att, ttft_attainment=float(np.mean(ok_t)), tpot_attainment=float(np.mean(ok_p)),
        goodput_rps=traffic.rate_rps * att, goodput_per_gpu_rps=traffic.rate_rps * att / gpus,
        throughput_rps=len(reqs) / span if span > 0 else math.inf,
        ttft_p50_s=float(np.percentile(ttft, 50)), ttft_p90_s=float(np.percentile(ttft, 90)),
        tpot_p50_s=float(np.percentile(tpot, 50)), tpot_p90_s=float(np.percentile(tpot, 90)),
        kv_transfer_bytes=transfer_bytes, kv_transfer_bytes_per_request=transfer_bytes / len(reqs),
        kv_transfer_s_mean=float(np.mean([r.transfer_s for r in reqs])),
        link_utilization=link_busy / (n_pref * span) if n_pref and span > 0 else 0.0,
        utilization=util, notes=tuple(notes), ttft_s=tuple(ttft.tolist()), tpot_s=tuple(tpot.tolist()))


# ---------------------------------------------------------------------------------------------
# goodput and the best split


def capacity_rps(traffic: Traffic, deployment: Deployment, steps: Steps) -> float:
    """An upper bound on the request rate a deployment sustains: the prefill instances prefilling
    full token budgets back to back, or the decode instances stepping `max_batch` sequences of the
    mean context back to back, whichever is lower (colocated: both on the same GPUs)."""
    d, n = deployment, traffic.parallel_samples
    p_mean = max(1.0, _mean(traffic.prompt))
    o_mean = max(1.0, _mean(traffic.output))
    per_batch = max(1, int(d.max_prefill_tokens // p_mean))
    prefill_per_req = steps.prefill_s(per_batch, p_mean) / per_batch
    b = max(1, d.max_batch // n)
    decode_per_req = (o_mean - 1) * steps.decode_s(b, p_mean + o_mean / 2, p_mean, n) / b
    if d.mode == "colocated":
        return (d.gpus // d.tp) / (prefill_per_req + decode_per_req)
    return min((d.prefill_gpus // d.tp) / prefill_per_req,
               (d.decode_gpus // d.tp) / decode_per_req if decode_per_req > 0 else math.inf)


def _mean(dist: LengthDist) -> float:
    if dist.kind == "fixed":
        return dist.a
    if dist.kind == "uniform":
        return (dist.a + dist.b) / 2
    return dist.a * math.exp(dist.b ** 2 / 2)


def max_goodput(traffic: Traffic, deployment: Deployment, steps: Steps, target_attainment: float = 0.9,
                rel_tol: float = 0.02) -> dict[str, Any]:
    """DistServe's goodput: the highest arrival rate whose SLO attainment is >= target_attainment,
    per GPU; found by bisection below `capacity_rps` to rel_tol (attainment is assumed to fall with
    the rate). The rate of `traffic` is not used; give it a `min_duration_s` so that rates beyond
    what the deployment sustains build a queue."""
    if not 0 < target_attainment <= 1:
        raise InputError(f"the target attainment must be in (0, 1], got {target_attainment!r}")

    def attain(rate: float) -> float:
        return simulate(replace(traffic, rate_rps=rate), deployment, steps).attainment

    hi = capacity_rps(traffic, deployment, steps) * 1.05
    lo = 0.0
    if attain(hi) >= target_attainment:
        lo = hi
    else:
        while hi - lo > rel_tol * max(lo, hi / 64):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if attain(mid) >= target_attainment else (lo, mid)
    return {"rate_rps": lo, "per_gpu_rps": lo / deployment.total_gpus, "gpus": deployment.total_gpus,
            "deployment": deployment.describe()}


def best_split(traffic: Traffic, gpus: int, steps: Steps, base: Deployment | None = None,
               target_attainment: float = 0.9) -> dict[str, Any]:
    """Every disaggregated split of `gpus` (P prefill + D decode, multiples of tp) and colocated on
    all of them, each at its max goodput (`max_goodput`); the best split and the best mode."""
    base = base or Deployment()
    gpus = _positive("the GPU budget (--gpus)", gpus, integer=True)
    if gpus < 2 * base.tp:
        raise InputError(f"a disaggregated split needs at least 2 instances: --gpus {gpus} with --tp {base.tp}; "
                         f"give --gpus >= {2 * base.tp}")
    splits = []
    for p in range(base.tp, gpus, base.tp):
        dep = replace(base, mode="disaggregated", prefill_gpus=p, decode_gpus=gpus - p, gpus=gpus)
        splits.append({"prefill_gpus": p, "decode_gpus": gpus - p,
                       **max_goodput(traffic, dep, steps, target_attainment)})
    colo = max_goodput(traffic, replace(base, mode="colocated", gpus=gpus), steps, target_attainment)
    best = max(splits, key=lambda s: (s["per_gpu_rps"], -s["prefill_gpus"]))
    return {"gpus": gpus, "target_attainment": target_attainment, "splits": splits, "best": best,
            "colocated": colo, "winner": "disaggregated" if best["per_gpu_rps"] > colo["per_gpu_rps"]
            else "colocated"}
