"""Serving an LLM on a pool of GPUs: colocated, prefill/decode disaggregated, or attention/FFN
disaggregated; goodput under SLOs.

    from nmx.hw.serve import LengthDist, Traffic, Deployment, CostSteps, simulate, max_goodput, best_split
    steps = CostSteps("h200", "llama-2-7b")                     # step times from the cost protocol
    traffic = Traffic(rate_rps=8, prompt=LengthDist.parse("lognormal:512:0.5"),
                      output=LengthDist.parse("128"), ttft_slo_s=0.4, tpot_slo_s=0.04, seed=0)
    r = simulate(traffic, Deployment("disaggregated", prefill_gpus=1, decode_gpus=1), steps)
    r.attainment, r.goodput_per_gpu_rps, r.kv_transfer_bytes, r.ttft_s (per request) ...
    simulate(traffic, Deployment("colocated", gpus=2, chunk_tokens=512), steps)       # Sarathi-style
    simulate(traffic, Deployment("attention-ffn", prefill_gpus=1, attention_gpus=2, ffn_gpus=1), steps)
    max_goodput(traffic, deployment, steps)                     # DistServe's goodput: the highest rate
    best_split(traffic, gpus=4, steps=steps)                    # every P prefill + D decode split
    best_af_split(traffic, gpus=4, steps=steps)                 # every P + A attention + F FFN split

The model is a **discrete-event simulation**, seeded and deterministic (same inputs and seed, same
numbers): requests arrive (Poisson at `rate_rps`: exponential gaps E_i / rate from one seeded stream,
so a higher rate compresses the same arrival pattern; or evenly spaced with `arrival="uniform"`),
with prompt and output lengths drawn from their own seeded streams (fixed, uniform or lognormal).
Each instance is one GPU, or `tp` GPUs in tensor parallel: step time / tp plus two all-reduces per
layer of the step's tokens x hidden x 2 bytes, each `allreduce_latency_s` + 2 (tp-1)/tp x bytes /
`tp_link_gb_s` (ring all-reduce; defaults 6 us and 370 GB/s bus bandwidth, NCCL on 8x H100 SXM:
NVIDIA/nccl issues #1259 and #1455); the weights and the KV cache split evenly over the tp GPUs.

- **colocated** (vLLM-style continuous batching): at every step boundary an instance runs a prefill
  of the waiting prompts (first come first served, up to `max_prefill_tokens` tokens and the KV
  memory left) if there are any, else one decode step of all its running requests. A prefill stalls
  every running decode: the prefill-decode interference that DistServe (Zhong et al., OSDI 2024)
  removes. With `chunk_tokens` C (Sarathi-Serve, Agrawal et al., OSDI 2024) a step is a hybrid
  batch instead: every running request decodes one token and up to C prompt tokens of the waiting
  prompts (FCFS; a prompt longer than C takes several steps, each chunk attending to the chunks
  before it) ride along, so a decode waits at most one chunk's work. The hybrid step is priced as
  one forward pass: the linear layers, norms and activations at M = decodes + chunk tokens rows, the
  decodes' attention over their caches and each chunk's causal attention over its prompt so far.
- **disaggregated** (DistServe): `prefill_gpus` instances only prefill; each sends a finished
  prompt's KV cache over its own link (`link_gb_s`, transfers one after another, overlapping the
  next prefill) to the decode instance with the fewest outstanding requests, which admits it at its
  next step boundary.
- **attention-ffn** (Step-3's attention/FFN disaggregation, StepFun, arXiv:2507.19427): prefill as
  in disaggregated; decoding is split by layer part. `attention_gpus` (instances of `tp` GPUs) hold
  the KV cache and the attention side's weights (norms, q/k/v/o projections, embedding, LM head);
  `ffn_gpus` hold the FFN weights, split evenly over them (tensor parallel, one all-reduce per layer).
  All attention instances decode in lockstep: in every layer each sends its tokens' hidden states to
  the FFN side (`af_link_gb_s` per GPU, over min(attention GPUs, FFN GPUs) links, plus
  `af_link_latency_s` per message), the FFN side runs all of them as one batch (M = every running
  sequence of every attention instance) and sends the results back. The step's tokens are split
  into `microbatches` m (Step-3 runs a 3-stage pipeline) that circulate through the four stages
  (attention, send, FFN, return): one layer takes max(m x slowest stage, sum of the stages) -- the
  busiest resource, or one micro-batch's round trip, whichever is longer -- and a step L such layers
  plus the embedding and LM head. With m = 1, an infinitely fast link without latency, one attention
  and one FFN GPU this is exactly the colocated decode step.

Times of one step come from any target of the cost protocol (`CostSteps`: `llm_workload` priced by
`target.cost`; a part of a step -- the attention side, the FFN, a chunk's attention -- is the
workload of that part's ops, priced the same way), so a recipe's compression (weights, KV format or
policy, a result folder) changes them through its real bytes. A decode step of B requests is priced
at their mean context (attention bytes and FLOPs are linear in the context, so the mean is exact for
them); a prefill batch at its mean prompt length (exact for equal lengths; it underestimates the
attention of mixed lengths). Step times are tabulated on a grid (every integer up to 8, then four
points per octave) of batch and length and interpolated linearly in between.

TTFT is the time from arrival to the end of the prefill (which emits the first token); TPOT is
(finish - first token) / (output tokens - 1), so it includes the KV transfer, the wait for a decode
slot and every prefill that stalled the request. A request meets the SLOs when TTFT <= ttft_slo_s
and TPOT <= tpot_slo_s; `attainment` is the fraction that does; `goodput_rps` = rate x attainment
(the requests per second that meet both) and `goodput_per_gpu_rps` that over the GPUs used.
`max_goodput` gives DistServe's definition instead: the highest rate whose attainment is at least
`target_attainment` (0.9), per GPU.

KV memory: an instance admits a request only if its whole KV (prompt + parallel_samples x output
tokens, reserved at admission) fits in `memory_utilization` x memory - weights (vLLM's 0.9
default; an attention instance holds only the attention side's weights); a prefill instance is
assumed to free a prompt's KV as soon as it is sent. GPU memory comes from `MEMORY_GB` (datasheets)
or `memory_gb`; a target without one has no KV limit (said in notes).

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

MODES = ("colocated", "disaggregated", "attention-ffn")
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


def _bandwidth(label: str, value: Any) -> float:
    """A bandwidth in GB/s: a number > 0; `inf` is allowed (an ideal link: no transfer time)."""
    import numbers

    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0):  # NaN fails too
        raise InputError(f"{label} must be a number > 0 (inf: an ideal link), got {value!r}")
    return float(value)


def _latency(label: str, value: Any) -> float:
    import numbers

    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < math.inf):
        raise InputError(f"{label} must be a number >= 0, got {value!r}")
    return float(value)


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
    """How the GPUs serve: `colocated` on `gpus` GPUs (with `chunk_tokens`: chunked prefill),
    `disaggregated` on `prefill_gpus` + `decode_gpus`, or `attention-ffn` on `prefill_gpus` +
    `attention_gpus` + `ffn_gpus`; `tp` GPUs per instance (prefill, decode, attention); the KV link of
    each prefill instance and the activation link between attention and FFN GPUs in GB/s."""

    mode: Literal["colocated", "disaggregated", "attention-ffn"] = "colocated"
    gpus: int = 1
    prefill_gpus: int = 0
    decode_gpus: int = 0
    tp: int = 1
    link_gb_s: float = 50.0  # one 400 Gb/s InfiniBand NDR port
    max_batch: int = 256  # sequences in one decode step
    max_prefill_tokens: int = 8192
    memory_gb: float | None = None  # per GPU; default MEMORY_GB[target]
    memory_utilization: float = 0.9
    #: colocated: Sarathi-style chunked prefill, at most this many prompt tokens ride along each step
    chunk_tokens: int | None = None
    attention_gpus: int = 0  # attention-ffn: GPUs of the attention instances (tp each)
    ffn_gpus: int = 0  # attention-ffn: GPUs the FFN weights are split over
    microbatches: int = 3  # attention-ffn: Step-3's 3-stage pipeline
    af_link_gb_s: float = 50.0  # attention-ffn: per GPU, each direction (one 400 Gb/s port)
    af_link_latency_s: float = 10e-6  # per message (assumed: a few us of RDMA plus its synchronization)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"the serving mode (--mode) is one of {', '.join(MODES)}, got {self.mode!r}")
        _positive("GPUs per instance (--tp)", self.tp, integer=True)
        _bandwidth("the KV link bandwidth (--link-gb-s)", self.link_gb_s)
        _positive("the decode batch limit (--max-batch)", self.max_batch, integer=True)
        _positive("the prefill token budget (--max-prefill-tokens)", self.max_prefill_tokens, integer=True)
        if self.memory_gb is not None:
            _positive("GPU memory (--memory-gb)", self.memory_gb)
        if not 0 < self.memory_utilization <= 1:
            raise InputError(f"memory_utilization must be in (0, 1], got {self.memory_utilization!r}")
        if self.chunk_tokens is not None:
            _positive("the prefill chunk (--chunk, prompt tokens per step)", self.chunk_tokens, integer=True)
            if self.mode != "colocated":
                raise InputError(f"chunked prefill (--chunk) applies to colocated serving, not to {self.mode}: "
                                 "drop --chunk or use --mode colocated")
        if self.mode == "colocated":
            _positive("the GPU budget (--gpus)", self.gpus, integer=True)
            if self.gpus % self.tp:
                raise InputError(f"--gpus {self.gpus} is not a multiple of --tp {self.tp}")
        elif self.mode == "disaggregated":
            _positive("prefill GPUs (--prefill-gpus)", self.prefill_gpus, integer=True)
            _positive("decode GPUs (--decode-gpus)", self.decode_gpus, integer=True)
            if self.prefill_gpus % self.tp or self.decode_gpus % self.tp:
                raise InputError(f"prefill and decode GPUs ({self.prefill_gpus}, {self.decode_gpus}) must be "
                                 f"multiples of --tp {self.tp}")
        else:
            _positive("prefill GPUs (--prefill-gpus; every pool needs at least one GPU)", self.prefill_gpus,
                      integer=True)
            _positive("attention GPUs (--attention-gpus; every pool needs at least one GPU)", self.attention_gpus,
                      integer=True)
            _positive("FFN GPUs (--ffn-gpus; every pool needs at least one GPU)", self.ffn_gpus, integer=True)
            if self.prefill_gpus % self.tp or self.attention_gpus % self.tp:
                raise InputError(f"prefill and attention GPUs ({self.prefill_gpus}, {self.attention_gpus}) must be "
                                 f"multiples of --tp {self.tp}")
            _positive("micro-batches (--microbatches)", self.microbatches, integer=True)
            _bandwidth("the attention/FFN link bandwidth (--af-link-gb-s)", self.af_link_gb_s)
            _latency("the attention/FFN link latency (--af-link-latency-us)", self.af_link_latency_s)

    @property
    def total_gpus(self) -> int:
        if self.mode == "colocated":
            return self.gpus
        if self.mode == "disaggregated":
            return self.prefill_gpus + self.decode_gpus
        return self.prefill_gpus + self.attention_gpus + self.ffn_gpus

    @property
    def label(self) -> str:
        """Short: `colocated x4`, `colocated x4 chunk512`, `1P+3D`, `1P+2A+1F` (with `tp2` where tp > 1)."""
        tp = f" tp{self.tp}" if self.tp > 1 else ""
        if self.mode == "colocated":
            chunk = f" chunk{self.chunk_tokens}" if self.chunk_tokens else ""
            return f"colocated x{self.gpus}{chunk}{tp}"
        if self.mode == "disaggregated":
            return f"{self.prefill_gpus}P+{self.decode_gpus}D{tp}"
        return f"{self.prefill_gpus}P+{self.attention_gpus}A+{self.ffn_gpus}F{tp}"

    def describe(self) -> str:
        tp = f", tp {self.tp}" if self.tp > 1 else ""
        if self.mode == "colocated":
            chunk = f", chunked prefill of {self.chunk_tokens} tokens" if self.chunk_tokens else ""
            return f"colocated on {self.gpus} GPU(s){chunk}{tp}"
        if self.mode == "disaggregated":
            return f"disaggregated {self.prefill_gpus} prefill + {self.decode_gpus} decode GPU(s){tp}"
        return (f"attention/FFN disaggregated: {self.prefill_gpus} prefill + {self.attention_gpus} attention + "
                f"{self.ffn_gpus} FFN GPU(s){tp}, {self.microbatches} micro-batches")


# ---------------------------------------------------------------------------------------------
# step times


class Steps(Protocol):
    """Step times of one instance and the bytes they keep: what the simulation asks a hardware model."""

    def prefill_s(self, batch: int, tokens: float) -> float: ...

    def decode_s(self, requests: int, context: float, prefix: float, samples: int) -> float: ...

    #: a hybrid step (chunked prefill): `requests` decode one token each while prompt chunks
    #: (tokens, tokens of that prompt already prefilled) ride along; no chunks: decode_s
    def mixed_s(self, requests: int, context: float, prefix: float, samples: int,
                chunks: tuple[tuple[int, int], ...]) -> float: ...

    # attention/FFN disaggregation: one layer of the attention side on one instance, one layer of
    # the FFN over `tokens` rows split over `gpus` GPUs, the once-per-step ops (embedding, final norm,
    # LM head) on an attention instance, the activation bytes per token and layer (to FFN, back)
    def attention_layer_s(self, requests: float, context: float, prefix: float, samples: int) -> float: ...

    def ffn_layer_s(self, tokens: float, gpus: int) -> float: ...

    def head_s(self, requests: float, samples: int) -> float: ...

    def af_bytes_per_token(self) -> tuple[float, float]: ...

    @property
    def layers(self) -> int: ...

    def kv_bytes(self, tokens: float) -> float: ...  # one sequence's cache after `tokens` tokens

    @property
    def weight_bytes(self) -> float: ...  # per GPU of an instance

    @property
    def attention_weight_bytes(self) -> float: ...  # per GPU of an attention instance

    @property
    def ffn_weight_bytes(self) -> float: ...  # the whole FFN, all layers (the FFN GPUs split it)

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


HEAD_OPS = ("embed_tokens", "norm", "lm_head")  # once per step, not per layer


def _part(op: Any) -> str:
    """Which side of the attention/FFN split an op of a step is on: `ffn` (the gated MLP), `head`
    (once per step: embedding, final norm, LM head) or `attention` (the rest of a layer)."""
    if op.name.startswith("mlp."):
        return "ffn"
    return "head" if op.name in HEAD_OPS else "attention"


class CostSteps:
    """Step times from a target of the cost protocol: `target.cost(llm_workload(...)).latency_s`,
    tabulated on `grid_points` and interpolated; with `tp` GPUs per instance, / tp plus two ring
    all-reduces per layer (`allreduce_latency_s` + 2 (tp-1)/tp x tokens x hidden x 2 B / `tp_link_gb_s`).
    A part of a step (`attention_layer_s`, `ffn_layer_s`, `head_s`, the pieces of `mixed_s`) is the
    workload of that part's ops, priced by the same target."""

    def __init__(self, target: Any, model: Any, compression: Any = None, tp: int = 1, gpu_impl: str = "pytorch",
                 memory_gb: float | None = None, tp_link_gb_s: float = 370.0,
                 allreduce_latency_s: float = 6e-6) -> None:
        from nmx.hw.targets import get_target
        from nmx.hw.workload import Compression, resolve_model

        self.target = get_target(target, gpu_impl)
        self.shape, from_result = resolve_model(model)
        self.model = model
        self.compression = compression if compression is not None else (from_result or Compression())
        self.tp = _positive("--tp", tp, integer=True)
        self.tp_link_gb_s = _bandwidth("the tensor-parallel link (--tp-link-gb-s)", tp_link_gb_s)
        self.allreduce_latency_s = _latency("the all-reduce latency (--allreduce-latency-us)", allreduce_latency_s)
        self._cache: dict[tuple, float] = {}
        w = self._workload("decode", 1, 1, 0, 1, 0)
        embed = 0.0 if self.shape.tied_embeddings else self.shape.vocab * self.shape.hidden * 2.0
        self._weights = w.total("weight_bytes") + embed
        self._ffn_weights = sum(op.weight_bytes * op.count for op in w.ops if _part(op) == "ffn")
        mem = memory_gb if memory_gb is not None else MEMORY_GB.get(self.target.name)
        self._memory = None if mem is None else float(mem) * 1e9
        self.calls = 0

    def _workload(self, phase: str, batch: int, tokens: int, context: int, samples: int, prefix: int) -> Any:
        from nmx.hw.workload import llm_workload

        return llm_workload(self.shape, phase, batch=batch, tokens=tokens, context=context,
                            compression=self.compression, parallel_samples=samples,
                            shared_prefix=prefix if samples > 1 else None)

    def _raw(self, part: str, *key: Any) -> float:
        """Latency of one GPU (not divided by tp) of a step or of one part of it."""
        ck = (part, *key)
        if ck not in self._cache:
            self.calls += 1
            from dataclasses import replace as _replace

            if part == "chunk_after":  # c new tokens after p prefilled ones: causal over p + c
                c, p = key
                w = _replace(self._workload("prefill", 1, c, 0, 1, 0), ops=(self._chunk_attention_op(c, p),))
            else:
                w = self._workload(*key)
                if part == "dense":  # every op but the attention itself (the rows of a hybrid step)
                    w = _replace(w, ops=tuple(op for op in w.ops if op.kind != "attention"))
                elif part in ("decode_attention", "chunk_attention"):
                    w = _replace(w, ops=tuple(op for op in w.ops if op.kind == "attention"))
                elif part != "all":  # attention, ffn, head: one side of the attention/FFN split
                    w = _replace(w, ops=tuple(op for op in w.ops if _part(op) == part))
            self._cache[ck] = float(self.target.cost(w).latency_s)
        return self._cache[ck]

    def _chunk_attention_op(self, c: int, p: int) -> Any:
        from nmx.hw.workload import attention_op

        s, comp = self.shape, self.compression
        fmt = comp.kv_format if comp.kv_policy is None else comp.kv_element_format
        return attention_op("self_attn.attention", 1, c, p + c, s.heads_q, s.heads_kv, s.head_dim, s.layers, fmt,
                            causal=True, model=s)

    def allreduce_s(self, tokens: float, gpus: int, per_layer: int = 2) -> float:
        """`per_layer` ring all-reduces in each layer of `tokens` x hidden bf16 values over `gpus` GPUs."""
        if gpus <= 1:
            return 0.0
        nbytes = tokens * self.shape.hidden * 2.0
        one = self.allreduce_latency_s + 2.0 * (gpus - 1) / gpus * nbytes / (self.tp_link_gb_s * 1e9)
        return per_layer * self.shape.layers * one

    def prefill_s(self, batch: int, tokens: float) -> float:
        return interpolate(lambda t: self._raw("all", "prefill", batch, t, 0, 1, 0), tokens) / self.tp + \
            self.allreduce_s(batch * tokens, self.tp)

    def _decode_raw(self, part: str, requests: float, context: float, prefix: float, samples: int) -> float:
        if samples == 1:
            return interpolate(lambda b, c: self._raw(part, "decode", b, 1, c, 1, 0), requests, max(context, 1.0))
        # prefix <= context at every grid corner: interpolate the prompt's share of the context
        share = min(1.0, prefix / max(context, 1.0))
        return interpolate(lambda b, c: self._raw(part, "decode", b, 1, c, samples, int(share * c)),
                           requests, max(context, 1.0))

    def decode_s(self, requests: int, context: float, prefix: float = 0.0, samples: int = 1) -> float:
        return self._decode_raw("all", requests, context, prefix, samples) / self.tp + \
            self.allreduce_s(requests * samples, self.tp)

    def mixed_s(self, requests: int, context: float, prefix: float, samples: int,
                chunks: tuple[tuple[int, int], ...]) -> float:
        """One forward pass of `requests` decodes and the prompt chunks (c tokens after p prefilled):
        every op but attention at M = requests x samples + sum(c) rows, the decodes' attention, and
        each chunk's causal attention over p + c tokens. No decodes and one chunk with p = 0 is
        exactly `prefill_s(1, c)`."""
        if not chunks:
            return self.decode_s(requests, context, prefix, samples)
        rows = requests * samples + sum(c for c, _ in chunks)
        t = interpolate(lambda m: self._raw("dense", "prefill", 1, m, 0, 1, 0), rows)
        if requests:
            t += self._decode_raw("decode_attention", requests, context, prefix, samples)
        for c, p in chunks:
            if p == 0:
                t += interpolate(lambda x: self._raw("chunk_attention", "prefill", 1, x, 0, 1, 0), c)
            else:
                t += interpolate(lambda x, y: self._raw("chunk_after", x, y), c, p)
        return t / self.tp + self.allreduce_s(rows, self.tp)

    @property
    def layers(self) -> int:
        return self.shape.layers

    def attention_layer_s(self, requests: float, context: float, prefix: float = 0.0, samples: int = 1) -> float:
        """One layer of the attention side (norms, q/k/v/o projections, attention) on one instance of
        tp GPUs, with its one all-reduce (after o_proj)."""
        return self._decode_raw("attention", requests, context, prefix, samples) / (self.tp * self.layers) + \
            self.allreduce_s(requests * samples, self.tp, per_layer=1) / self.layers

    def ffn_layer_s(self, tokens: float, gpus: int) -> float:
        """One layer of the FFN (gate, up, SiLU, down) over `tokens` rows split over `gpus` GPUs,
        with its one all-reduce (after down_proj)."""
        raw = interpolate(lambda m: self._raw("ffn", "prefill", 1, m, 0, 1, 0), tokens)
        return raw / (gpus * self.layers) + self.allreduce_s(tokens, gpus, per_layer=1) / self.layers

    def head_s(self, requests: float, samples: int = 1) -> float:
        """The once-per-step ops (embedding, final norm, LM head) of one attention instance."""
        return interpolate(lambda b: self._raw("head", "decode", b, 1, 1, samples, 1 if samples > 1 else 0),
                           requests) / self.tp

    def af_bytes_per_token(self) -> tuple[float, float]:
        """Activation bytes per token and layer: to the FFN (in the format the recipe gives the FFN's
        input, else bf16) and back (bf16)."""
        h = self.shape.hidden
        fmt = self.compression.act_format("mlp.gate_proj") if self.compression.targets_layer("mlp.gate_proj") \
            else None
        if fmt is None:
            return 2.0 * h, 2.0 * h
        from nmx import formats

        return float(formats.get(fmt).storage_bytes((1, h))), 2.0 * h

    def kv_bytes(self, tokens: float) -> float:
        key = ("kv", tokens)
        if key not in self._cache:
            self._cache[key] = self._workload("prefill", 1, max(1, int(round(tokens))), 0, 1, 0).kv_cache_bytes
        return self._cache[key] / self.tp

    @property
    def weight_bytes(self) -> float:
        return self._weights / self.tp

    @property
    def attention_weight_bytes(self) -> float:
        return (self._weights - self._ffn_weights) / self.tp

    @property
    def ffn_weight_bytes(self) -> float:
        return self._ffn_weights

    @property
    def memory_bytes(self) -> float | None:
        return self._memory

    def describe(self) -> dict[str, Any]:
        return {"target": self.target.name, "model": self.shape.name, "compression": self.compression.describe(),
                "tp": self.tp, "weight_bytes_per_gpu": self.weight_bytes, "memory_bytes_per_gpu": self._memory,
                "tp_link_gb_s": self.tp_link_gb_s, "allreduce_latency_s": self.allreduce_latency_s}


@dataclass
class FixedSteps:
    """Constant step times (for hand-computable cases): prefill `prefill_s_fixed` +
    `prefill_s_per_token` x tokens x batch, decode `decode_s_fixed` + `decode_s_per_request` x requests;
    a hybrid step (chunked prefill) `prefill_s_fixed` + `prefill_s_per_token` x chunk tokens +
    `decode_s_per_request` x requests (the decode's fixed part, reading the weights, is shared with
    the chunk); attention/FFN parts: per layer `attention_layer_s_fixed` + `..._per_request` x
    requests, (`ffn_layer_s_fixed` + `ffn_layer_s_per_token` x tokens) / FFN GPUs, `head_s_fixed`
    once per step, `act_bytes_per_token` each way."""

    prefill_s_fixed: float = 0.0
    prefill_s_per_token: float = 0.0
    decode_s_fixed: float = 0.0
    decode_s_per_request: float = 0.0
    kv_bytes_per_token: float = 0.0
    weight_bytes: float = 0.0
    memory_bytes: float | None = None
    layers: int = 1
    attention_layer_s_fixed: float = 0.0
    attention_layer_s_per_request: float = 0.0
    ffn_layer_s_fixed: float = 0.0
    ffn_layer_s_per_token: float = 0.0
    head_s_fixed: float = 0.0
    act_bytes_per_token: float = 0.0
    attention_weight_bytes: float = 0.0
    ffn_weight_bytes: float = 0.0

    def prefill_s(self, batch: int, tokens: float) -> float:
        return self.prefill_s_fixed + self.prefill_s_per_token * batch * tokens

    def decode_s(self, requests: int, context: float, prefix: float = 0.0, samples: int = 1) -> float:
        return self.decode_s_fixed + self.decode_s_per_request * requests

    def mixed_s(self, requests: int, context: float, prefix: float, samples: int,
                chunks: tuple[tuple[int, int], ...]) -> float:
        if not chunks:
            return self.decode_s(requests, context, prefix, samples)
        return self.prefill_s_fixed + self.prefill_s_per_token * sum(c for c, _ in chunks) + \
            self.decode_s_per_request * requests

    def attention_layer_s(self, requests: float, context: float, prefix: float = 0.0, samples: int = 1) -> float:
        return self.attention_layer_s_fixed + self.attention_layer_s_per_request * requests

    def ffn_layer_s(self, tokens: float, gpus: int) -> float:
        return (self.ffn_layer_s_fixed + self.ffn_layer_s_per_token * tokens) / gpus

    def head_s(self, requests: float, samples: int = 1) -> float:
        return self.head_s_fixed

    def af_bytes_per_token(self) -> tuple[float, float]:
        return self.act_bytes_per_token, self.act_bytes_per_token

    def kv_bytes(self, tokens: float) -> float:
        return self.kv_bytes_per_token * tokens


def af_step(steps: Steps, d: Deployment, loads: list[tuple[float, float, float]], samples: int = 1
            ) -> dict[str, float]:
    """One decode step of the attention/FFN engine (see the module doc). `loads`: (requests, mean
    context, mean shared prefix) of each attention instance with running requests. Returns the
    step's `step_s`, the busy time of the slowest attention instance (`attention_s`) and of the FFN
    GPUs (`ffn_s`), and the activation bytes moved both ways (`bytes`)."""
    total = samples * sum(b for b, _, _ in loads)
    m = max(1, min(d.microbatches, int(total)))
    s_att = max(steps.attention_layer_s(max(1.0, b / m), c, p, samples) for b, c, p in loads)
    s_ffn = steps.ffn_layer_s(total / m, d.ffn_gpus)
    up, down = steps.af_bytes_per_token()
    lanes = min(d.attention_gpus, d.ffn_gpus) * d.af_link_gb_s * 1e9

    def send(per_token: float) -> float:
        return (total / m) * per_token / lanes + d.af_link_latency_s

    s_up, s_down = send(up), send(down)
    layer = max(m * max(s_att, s_up, s_ffn, s_down), s_att + s_up + s_ffn + s_down)
    head = max(steps.head_s(b, samples) for b, _, _ in loads)
    L = steps.layers
    return {"step_s": L * layer + head, "attention_s": L * m * s_att + head, "ffn_s": L * m * s_ffn,
            "bytes": L * total * (up + down), "microbatches": m}


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
    prefilled: int = 0  # prompt tokens done (chunked prefill)


@dataclass
class _Inst:
    idx: int
    role: str  # colocated | prefill | decode | attention
    capacity: float  # KV bytes it may hold
    waiting: deque = field(default_factory=deque)
    running: list = field(default_factory=list)  # heap of (end_step, i, req)
    prefilling: list = field(default_factory=list)  # chunked prefill: admitted, prompt not done
    busy: bool = False
    kv_used: float = 0.0
    steps: int = 0
    sum_ctx: float = 0.0
    sum_prefix: float = 0.0
    link_free: float = 0.0
    busy_s: float = 0.0

    @property
    def outstanding(self) -> int:
        return len(self.waiting) + len(self.prefilling) + len(self.running)


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
    af_bytes: float = 0.0  # attention-ffn: activation bytes between the pools, both ways, all steps
    notes: tuple[str, ...] = ()
    ttft_s: tuple[float, ...] = field(default=(), repr=False)
    tpot_s: tuple[float, ...] = field(default=(), repr=False)

    def as_dict(self, per_request: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not per_request:
            d.pop("ttft_s"), d.pop("tpot_s")
        d["notes"] = list(self.notes)
        return d

    def attainment_at(self, ttft_slo_s: float, tpot_slo_s: float, last: float = 1.0) -> float:
        """The fraction of requests meeting other SLOs (the simulation does not depend on them); of
        the last `last` fraction of the requests by arrival (1: all of them)."""
        k = max(1, math.ceil(last * len(self.ttft_s)))
        ttft, tpot = np.asarray(self.ttft_s[-k:]), np.asarray(self.tpot_s[-k:])
        return float(np.mean((ttft <= ttft_slo_s * (1 + 1e-12)) & (tpot <= tpot_slo_s * (1 + 1e-12))))


def _kv_capacity(d: Deployment, steps: Steps, notes: list[str]) -> float:
    """KV bytes one GPU of a decoding instance may hold; checks that every pool's weights fit."""
    mem = steps.memory_bytes
    if mem is None:
        notes.append("no device memory known for this target: the KV cache is unlimited (give --memory-gb)")
        return math.inf
    usable = d.memory_utilization * mem
    if usable - steps.weight_bytes <= 0:  # a colocated, decode or prefill instance holds all weights
        raise InputError(f"the weights ({steps.weight_bytes / 1e9:.1f} GB per GPU) do not fit in "
                         f"{d.memory_utilization:g} x {mem / 1e9:.0f} GB; raise --tp or --memory-gb")
    if d.mode != "attention-ffn":
        return usable - steps.weight_bytes
    per_ffn_gpu = steps.ffn_weight_bytes / d.ffn_gpus
    if per_ffn_gpu > usable:
        need = math.ceil(steps.ffn_weight_bytes / usable)
        raise InputError(f"the FFN weights ({steps.ffn_weight_bytes / 1e9:.1f} GB) do not fit on {d.ffn_gpus} FFN "
                         f"GPU(s) of {usable / 1e9:.0f} GB usable each; give --ffn-gpus >= {need}")
    return usable - steps.attention_weight_bytes


def simulate(traffic: Traffic, deployment: Deployment, steps: Steps) -> ServeResult:
    """Run the discrete-event simulation (see the module doc) and measure TTFT, TPOT, goodput."""
    d, n = deployment, traffic.parallel_samples
    arrivals, prompts, outputs = traffic.draw()
    reqs = [_Req(i, float(arrivals[i]), int(prompts[i]), int(outputs[i])) for i in range(len(arrivals))]
    notes: list[str] = []
    capacity = _kv_capacity(d, steps, notes)
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
        role, count = ("decode", d.decode_gpus) if d.mode == "disaggregated" else ("attention", d.attention_gpus)
        decoders = [_Inst(len(entry) + i, role, capacity) for i in range(count // d.tp)]
        insts = entry + decoders
    link_bps = d.link_gb_s * 1e9
    limit = max(1, d.max_batch // n)  # requests per decode batch
    events: list[tuple[float, int, int, str, Any]] = []
    seq = 0
    engine = {"busy": False, "attention_s": 0.0, "ffn_s": 0.0, "bytes": 0.0}  # attention-ffn decoding

    def push(t: float, kind: str, inst: int, payload: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, inst, kind, payload))

    def join_decode(inst: _Inst, r: _Req) -> None:
        r.ctx0, r.join_step, r.end_step = r.prompt, inst.steps, inst.steps + r.output - 1
        heapq.heappush(inst.running, (r.end_step, r.i, r))
        inst.sum_ctx += r.prompt
        inst.sum_prefix += r.prompt

    def finish(inst: _Inst, r: _Req, t: float) -> None:
        r.finish = t
        inst.kv_used -= r.kv_reserved

    def admit(inst: _Inst) -> None:  # a decoding instance takes arrived KV caches at a step boundary
        while inst.waiting and len(inst.running) < limit and \
                inst.kv_used + inst.waiting[0].kv_reserved <= inst.capacity:
            r = inst.waiting.popleft()
            inst.kv_used += r.kv_reserved
            join_decode(inst, r)

    def advance(inst: _Inst, now: float) -> None:  # every running request decoded one token
        inst.steps += 1
        inst.sum_ctx += len(inst.running)
        while inst.running and inst.running[0][0] <= inst.steps:
            _, _, r = heapq.heappop(inst.running)
            inst.sum_ctx -= r.ctx0 + (inst.steps - r.join_step)
            inst.sum_prefix -= r.prompt
            finish(inst, r, now)

    def decode_args(inst: _Inst) -> tuple[int, float, float, int]:
        b = len(inst.running)
        return b, inst.sum_ctx / b if b else 0.0, inst.sum_prefix / b if b else 0.0, n

    def run(inst: _Inst, now: float, dur: float, kind: str, payload: Any) -> None:
        inst.busy, inst.busy_s = True, inst.busy_s + dur
        push(now + dur, kind, inst.idx, payload)

    def start_chunked(inst: _Inst, now: float) -> None:
        """A hybrid step: every running request decodes, up to chunk_tokens prompt tokens ride along."""
        budget, chunks = d.chunk_tokens, []
        for r in inst.prefilling:
            if budget == 0:
                break
            take = min(budget, r.prompt - r.prefilled)
            chunks.append((r, take, r.prefilled))
            budget -= take
        while budget > 0 and inst.waiting:
            r = inst.waiting[0]
            if inst.kv_used + r.kv_reserved > inst.capacity or \
                    len(inst.running) + len(inst.prefilling) + 1 > limit:
                break
            inst.waiting.popleft()
            inst.kv_used += r.kv_reserved
            inst.prefilling.append(r)
            take = min(budget, r.prompt)
            chunks.append((r, take, 0))
            budget -= take
        if not chunks and not inst.running:
            return
        dur = steps.mixed_s(*decode_args(inst), tuple((take, done) for _, take, done in chunks))
        run(inst, now, dur, "mixed_done", (chunks, bool(inst.running)))

    def start_engine(now: float) -> None:
        """Attention-ffn: all attention instances decode one step in lockstep with the FFN GPUs."""
        if engine["busy"]:
            return
        for inst in decoders:
            admit(inst)
        active = [inst for inst in decoders if inst.running]
        if not active:
            return
        st = af_step(steps, d, [decode_args(inst)[:3] for inst in active], n)
        engine["busy"] = True
        for k in ("attention_s", "ffn_s", "bytes"):
            engine[k] += st[k]
        push(now + st["step_s"], "af_done", -1, active)

    def start(inst: _Inst, now: float) -> None:
        if inst.role == "attention":
            start_engine(now)
            return
        if inst.busy:
            return
        if inst.role == "colocated" and d.chunk_tokens:
            start_chunked(inst, now)
            return
        if inst.role in ("colocated", "prefill") and inst.waiting:
            batch, tokens = [], 0
            while inst.waiting:
                r = inst.waiting[0]
                if batch and (tokens + r.prompt > d.max_prefill_tokens):
                    break
                if inst.role == "colocated" and (inst.kv_used + r.kv_reserved > inst.capacity
                                                 or len(inst.running) + len(batch) + 1 > limit):
                    break
                batch.append(inst.waiting.popleft())
                tokens += r.prompt
                if inst.role == "colocated":
                    inst.kv_used += r.kv_reserved
            if batch:
                run(inst, now, steps.prefill_s(len(batch), tokens / len(batch)), "prefill_done", batch)
                return
        if inst.role == "decode":  # admit arrived KV caches at the step boundary
            admit(inst)
        if inst.running:
            run(inst, now, steps.decode_s(*decode_args(inst)), "decode_done", None)

    def first_token(inst: _Inst, r: _Req, now: float) -> None:
        nonlocal transfer_bytes, link_busy
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
        if kind == "af_done":
            engine["busy"] = False
            for inst in payload:
                advance(inst, now)
            start_engine(now)
            continue
        inst = insts[idx]
        if kind == "prefill_done":
            inst.busy = False
            for r in payload:
                first_token(inst, r, now)
            start(inst, now)
        elif kind == "mixed_done":
            inst.busy = False
            chunks, decoded = payload
            if decoded:  # the requests running when the step began each produced a token
                advance(inst, now)
            for r, take, _ in chunks:
                r.prefilled += take
                if r.prefilled >= r.prompt:
                    inst.prefilling.remove(r)
                    first_token(inst, r, now)
            start(inst, now)
        elif kind == "kv_arrive":
            dec = min(decoders, key=lambda x: (x.outstanding + x.busy, x.idx))
            dec.waiting.append(payload)
            start(dec, now)
        elif kind == "decode_done":
            inst.busy = False
            advance(inst, now)
            start(inst, now)
    busy = {"attention": engine["attention_s"], "ffn": engine["ffn_s"]} if d.mode == "attention-ffn" else {}
    return _measure(traffic, d, reqs, insts, transfer_bytes, link_busy, notes, busy, engine["bytes"])


def _measure(traffic: Traffic, d: Deployment, reqs: list[_Req], insts: list[_Inst], transfer_bytes: float,
             link_busy: float, notes: list[str], pool_busy: dict[str, float], af_bytes: float) -> ServeResult:
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
    for role, busy_s in pool_busy.items():  # attention-ffn: the slowest attention instance, the FFN GPUs
        util[role] = float(busy_s / span) if span > 0 else 0.0
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
        utilization=util, af_bytes=af_bytes, notes=tuple(notes), ttft_s=tuple(ttft.tolist()),
        tpot_s=tuple(tpot.tolist()))


# ---------------------------------------------------------------------------------------------
# goodput and the best split


def capacity_rps(traffic: Traffic, deployment: Deployment, steps: Steps) -> float:
    """An upper bound on the request rate a deployment sustains: the prefill instances prefilling
    full token budgets back to back, or the decode side stepping `max_batch` sequences of the mean
    context back to back, whichever is lower (colocated: both on the same GPUs; with chunked prefill
    the two are assumed to overlap completely, which bounds the hybrid steps from above)."""
    d, n = deployment, traffic.parallel_samples
    p_mean = max(1.0, _mean(traffic.prompt))
    o_mean = max(1.0, _mean(traffic.output))
    per_batch = max(1, int(d.max_prefill_tokens // p_mean))
    prefill_per_req = steps.prefill_s(per_batch, p_mean) / per_batch
    b = max(1, d.max_batch // n)
    ctx = p_mean + o_mean / 2
    if d.mode == "attention-ffn":
        inst = d.attention_gpus // d.tp
        step = af_step(steps, d, [(b, ctx, p_mean)] * inst, n)["step_s"]
        decode_per_req = (o_mean - 1) * step / (b * inst)
        return min((d.prefill_gpus // d.tp) / prefill_per_req, 1 / decode_per_req if decode_per_req > 0 else math.inf)
    decode_per_req = (o_mean - 1) * steps.decode_s(b, ctx, p_mean, n) / b
    if d.mode == "colocated":
        if d.chunk_tokens:
            return (d.gpus // d.tp) / max(prefill_per_req, decode_per_req)
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
                rel_tol: float = 0.02, cache: dict[float, ServeResult] | None = None) -> dict[str, Any]:
    """DistServe's goodput: the highest arrival rate whose SLO attainment is >= target_attainment,
    over all requests and over the last quarter of them by arrival (which rejects a rate whose queue
    still grows when the arrivals end: a finite window otherwise hides a mild overload), per GPU;
    found by bisection below 1.05 x `capacity_rps` to rel_tol (attainment is assumed to fall
    with the rate). Where that rate still meets the target -- the SLOs do not bind before the
    throughput does, or the window is too short for the queue to build -- it is returned with
    `capped`: no rate above a steady-state upper bound on throughput is reported. The rate of
    `traffic` is not used; give it a `min_duration_s` so that rates beyond what the deployment
    sustains build a queue (a TTFT SLO of S seconds hides an overload of x until x times the window
    exceeds S). `cache` (rate -> result, one per deployment and traffic apart from its SLOs) lets
    searches under other SLOs reuse the simulations."""
    if not 0 < target_attainment <= 1:
        raise InputError(f"the target attainment must be in (0, 1], got {target_attainment!r}")
    cache = {} if cache is None else cache

    def attain(rate: float) -> float:
        if rate not in cache:
            cache[rate] = simulate(replace(traffic, rate_rps=rate), deployment, steps)
        r = cache[rate]
        return min(r.attainment_at(traffic.ttft_slo_s, traffic.tpot_slo_s),
                   r.attainment_at(traffic.ttft_slo_s, traffic.tpot_slo_s, last=0.25))

    hi = capacity_rps(traffic, deployment, steps) * 1.05
    lo, capped = 0.0, False
    if attain(hi) >= target_attainment:  # the SLOs do not bind below the throughput bound
        lo, capped = hi, True
    else:
        floor = hi / 64  # below 1/64 of the bound: resolved to rel_tol of that (goodput ~0)
        while hi - lo > rel_tol * max(lo, floor):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if attain(mid) >= target_attainment else (lo, mid)
    return {"rate_rps": lo, "per_gpu_rps": lo / deployment.total_gpus, "gpus": deployment.total_gpus,
            "deployment": deployment.describe(), "label": deployment.label, "capped": capped}


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
        dep = replace(base, mode="disaggregated", prefill_gpus=p, decode_gpus=gpus - p, gpus=gpus, chunk_tokens=None)
        splits.append({"prefill_gpus": p, "decode_gpus": gpus - p,
                       **max_goodput(traffic, dep, steps, target_attainment)})
    colo = max_goodput(traffic, replace(base, mode="colocated", gpus=gpus), steps, target_attainment)
    best = max(splits, key=lambda s: (s["per_gpu_rps"], -s["prefill_gpus"]))
    return {"gpus": gpus, "target_attainment": target_attainment, "splits": splits, "best": best,
            "colocated": colo, "winner": "disaggregated" if best["per_gpu_rps"] > colo["per_gpu_rps"]
            else "colocated"}


def af_splits(gpus: int, steps: Steps, base: Deployment) -> list[tuple[int, int, int]]:
    """The (prefill, attention, FFN) GPU splits of a budget: P and A multiples of tp, F >= the GPUs
    the FFN weights need; an InputError when there is none."""
    gpus = _positive("the GPU budget (--gpus)", gpus, integer=True)
    mem = steps.memory_bytes
    f_min = 1 if mem is None else max(1, math.ceil(steps.ffn_weight_bytes / (base.memory_utilization * mem)))
    out = [(p, a, gpus - p - a) for p in range(base.tp, gpus, base.tp) for a in range(base.tp, gpus - p, base.tp)
           if gpus - p - a >= f_min]
    if not out:
        raise InputError(f"no attention/FFN split of --gpus {gpus}: it needs a prefill and an attention instance "
                         f"(--tp {base.tp} GPUs each) and {f_min} FFN GPU(s) for the FFN weights; give --gpus >= "
                         f"{2 * base.tp + f_min}")
    return out


def best_af_split(traffic: Traffic, gpus: int, steps: Steps, base: Deployment | None = None,
                  target_attainment: float = 0.9) -> dict[str, Any]:
    """Every attention/FFN split of `gpus` (`af_splits`), each at its max goodput; the best."""
    base = base or Deployment()
    splits = []
    for p, a, f in af_splits(gpus, steps, base):
        dep = replace(base, mode="attention-ffn", prefill_gpus=p, attention_gpus=a, ffn_gpus=f, chunk_tokens=None)
        splits.append({"prefill_gpus": p, "attention_gpus": a, "ffn_gpus": f,
                       **max_goodput(traffic, dep, steps, target_attainment)})
    best = max(splits, key=lambda s: (s["per_gpu_rps"], -s["prefill_gpus"], -s["ffn_gpus"]))
    return {"gpus": gpus, "target_attainment": target_attainment, "splits": splits, "best": best}
