"""The operations of one LLM forward step, with the bytes and FLOPs a recipe leaves them.

    from nmx.hw.workload import Compression, llm_workload
    w = llm_workload("llama-2-7b", "decode", batch=1, context=4096,
                     compression=Compression(weights="mxfp4", pattern="2:4", kv_format="int4_g32"))
    for op in w.ops: op.name, op.kind, op.count, op.flops, op.bytes_read, ...

A model is a `ModelShape` (shapes only, no weights): a built-in preset, a Hugging Face config
(dict, `config.json` or its folder), or the folder of an `nmx run` result (its recipe and the
per-layer storage of its real masks). Ops follow the Llama block: RMSNorm, q/k/v/o projections,
attention (QK^T, softmax, PV; GQA when heads_kv < heads_q), RMSNorm, gate/up/down projections with
SiLU(gate)*up; then the final norm and the LM head. Every op carries `count`, how many identical
instances run in the step (the number of decoder layers for the per-layer ops).

Byte counts are the minimum an implementation must move through device memory: each input read
once, each output written once. Weight bytes come from `nmx.sparsity.storage.weight_storage`
(values at the format's element bits in the smallest storage for the pattern's density, plus
index metadata and scales) and KV bytes from `nmx.formats` storage sizes -- never re-derived here.
With a KV policy (`Compression(kv_policy=nmx.kv.KVPolicy(...))`, what a result folder's recipe
gives) the cache is the one `nmx.kv.KVCache` keeps: `nmx.hw.kvcache` counts its bytes (quantized
pages, residual window and sinks in full precision, eviction to a budget, metadata), a decode step
attends only to the kept tokens, and `Workload.kv_cache_bytes` equals `KVCache.nbytes()`.

Conventions: GEMM (m, n, k) = (tokens, out features, in features); prefill processes `tokens`
tokens per sequence (M = batch * tokens) with a causal mask; one decode step adds one token per
sequence to a cache of `context` tokens (M = batch, kv_len = context + 1). Unquantized tensors
(activations, weights without a format, KV without a format) are bf16.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

from nmx.errors import InputError, NmxError
from nmx.io import expand_user, read_json
from nmx.model.layers import DEFAULT_TARGETS

BF16_BYTES = 2
Phase = Literal["prefill", "decode"]
PHASES = ("prefill", "decode")
#: the largest size (tokens, batch, a GEMM dimension) nmx models: beyond it the numbers are no
#: longer a machine anyone runs, and numpy's int64 products would overflow
MAX_SIZE = 2**31 - 1


def check_size(label: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int in [minimum, MAX_SIZE]; else an InputError naming `label` (e.g. "--batch")."""
    import numbers

    kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{label} must be {kind}, got {value!r}")
    if value > MAX_SIZE:
        raise InputError(f"{label} = {value} is beyond what nmx models (at most {MAX_SIZE:,}); give a real size")
    return int(value)


@dataclass(frozen=True)
class ModelShape:
    """The shapes of a Llama-style decoder (gated SiLU MLP, RMSNorm, RoPE, GQA)."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads_q: int
    heads_kv: int
    head_dim: int
    vocab: int
    tied_embeddings: bool = False

    def __post_init__(self) -> None:
        for f in ("hidden", "intermediate", "layers", "heads_q", "heads_kv", "head_dim", "vocab"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"model shape {self.name!r}: {f} must be a positive integer, got {v!r}")
        if self.heads_q % self.heads_kv:
            raise InputError(f"model shape {self.name!r}: heads_q={self.heads_q} is not a multiple of "
                             f"heads_kv={self.heads_kv} (GQA groups must be whole)")

    def linears(self) -> dict[str, tuple[int, int]]:
        """The per-layer linear layers as HF names them: name -> (out_features, in_features)."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads_q * self.head_dim, self.heads_kv * self.head_dim
        return {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
                "self_attn.o_proj": (h, q), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h),
                "mlp.down_proj": (h, i)}

    @property
    def parameters(self) -> int:
        per_layer = sum(o * i for o, i in self.linears().values()) + 2 * self.hidden
        embed = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * per_layer + embed + self.hidden


# Shapes from each model's published config.json on the Hugging Face Hub.
PRESETS: dict[str, ModelShape] = {s.name: s for s in (
    ModelShape("llama-2-7b", 4096, 11008, 32, 32, 32, 128, 32000),        # meta-llama/Llama-2-7b-hf
    ModelShape("llama-3-8b", 4096, 14336, 32, 32, 8, 128, 128256),        # meta-llama/Meta-Llama-3-8B
    ModelShape("llama-3-70b", 8192, 28672, 80, 64, 8, 128, 128256),       # meta-llama/Meta-Llama-3-70B
    ModelShape("mistral-7b", 4096, 14336, 32, 32, 8, 128, 32000),         # mistralai/Mistral-7B-v0.1
    ModelShape("qwen2.5-7b", 3584, 18944, 28, 28, 4, 128, 152064),        # Qwen/Qwen2.5-7B (qkv biases ignored)
    ModelShape("smollm2-135m", 576, 1536, 30, 9, 3, 64, 49152, True),     # HuggingFaceTB/SmolLM2-135M-Instruct
)}


def shape_from_config(config: Any, name: str | None = None) -> ModelShape:
    """A ModelShape from a HF config: a `PretrainedConfig`, a dict, a config.json path or its folder."""
    where = "the model config"
    if isinstance(config, (str, Path)):
        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        config = read_json(path, "model config")
        where = str(path)
    cfg = config if isinstance(config, dict) else config.to_dict()

    def integer(key: str, default: Any = None) -> int:
        v = cfg[key] if default is None else (cfg.get(key) or default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v):
            raise InputError(f"{where}: {key} must be a whole number, got {v!r}")
        return int(v)

    try:
        heads = integer("num_attention_heads")
        hidden = integer("hidden_size")
        if heads < 1:
            raise InputError(f"{where}: num_attention_heads must be at least 1, got {heads}")
        return ModelShape(
            name=str(name or cfg.get("_name_or_path") or cfg.get("model_type") or "model"),
            hidden=hidden, intermediate=integer("intermediate_size"), layers=integer("num_hidden_layers"),
            heads_q=heads, heads_kv=integer("num_key_value_heads", heads),
            head_dim=integer("head_dim", hidden // heads), vocab=integer("vocab_size"),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)))
    except KeyError as err:
        raise InputError(f"{where} has no {err.args[0]!r}: nmx models Llama-style decoders "
                         "(hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, "
                         "vocab_size)") from None


#: the workload's Llama-block linears (ModelShape.linears) by activation tensor type (nmx.quant.tensor_types
#: resolves a real model's from its structure; the workload's block is always this one)
LLAMA_TENSOR_TYPES = {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                      "o": ("self_attn.o_proj",), "up": ("mlp.gate_proj", "mlp.up_proj"), "down": ("mlp.down_proj",)}


@dataclass(frozen=True)
class Compression:
    """What a recipe does to the step: weight / activation formats on the targeted linears, a
    sparsity pattern on them, and the KV cache: either the whole `nmx.kv.KVPolicy` (`kv_policy`:
    quantization with its axes, groups, residual window and sinks, eviction to a budget, merging;
    priced at the bytes that cache keeps, `nmx.hw.kvcache`) or, without a policy, one format for
    every cached token (`kv_format`, blocks along head_dim). `layer_bits` (from a result folder)
    gives the real storage of each linear, name -> bits per instance, overriding the estimate.
    `activations` is one format, or per tensor type / layer glob ({qkv: ..., o: ..., up: ..., down: ...},
    as recipes write it; kept as a tuple of pairs): `act_format(name)` gives a linear's."""

    weights: str | None = None
    activations: Any = None  # str | None | mapping {tensor type or glob: format}
    pattern: str | None = None
    targets: tuple[str, ...] = DEFAULT_TARGETS
    kv_format: str | None = None
    layer_bits: tuple[tuple[str, float], ...] = ()
    kv_policy: Any = None  # an nmx.kv.KVPolicy
    #: measured activation sparsity (nmx.sparsity.activation, a result's `activation_sparsity` block): linear
    #: name -> ((B, fraction of its input channels nonzero in at least one of B tokens), ...), B = 1 the
    #: single-token density; mean over the decoder layers. `act_densities(name, m)` reads it.
    act_sparsity: tuple[tuple[str, tuple[tuple[int, float], ...]], ...] = ()

    def __post_init__(self) -> None:
        from nmx import formats
        from nmx.sparsity.patterns import parse_pattern

        if isinstance(self.activations, (dict, tuple)):
            from nmx.quant.tensor_types import check_activation_spec

            spec = dict(self.activations)
            check_activation_spec(spec)
            object.__setattr__(self, "activations", tuple(spec.items()))
        for f in ("weights", "kv_format") + (("activations",) if isinstance(self.activations, str) else ()):
            if getattr(self, f):
                formats.get(getattr(self, f))  # raises a FormatError naming the bad name
        if self.pattern is not None:
            parse_pattern(self.pattern)
        for name, points in self.act_sparsity:
            if not points or any(not (isinstance(b, int) and b >= 1 and 0 < d <= 1) for b, d in points):
                raise InputError(f"act_sparsity[{name!r}]: give (batch >= 1, density in (0, 1]) pairs, got {points!r}")
        if self.kv_policy is not None:
            from nmx.kv.policy import KVPolicy

            if not isinstance(self.kv_policy, KVPolicy):
                raise InputError(f"kv_policy must be an nmx.kv.KVPolicy, got {type(self.kv_policy).__name__}")
            if self.kv_format is not None:
                raise InputError("give the KV cache as kv_policy (the whole nmx.kv policy) or as kv_format (one "
                                 "format for every token), not both")

    @property
    def kv_element_format(self) -> str | None:
        """The format most cached keys are stored in (None: full precision), for compute models."""
        q = self.kv_policy.quant if self.kv_policy is not None else None
        return (q.key_format or q.format) if q is not None else self.kv_format

    def describe_kv(self) -> str:
        p = self.kv_policy
        if p is None:
            return f"KV {self.kv_format or 'bf16'}"
        parts = []
        if p.quant is not None:
            q = p.quant
            fmt = q.format if not (q.key_format or q.value_format) else \
                f"K {q.key_format or q.format} / V {q.value_format or q.format}"
            parts.append(f"KV {fmt} (keys per {q.key_axis}, values per {q.value_axis}, group {q.chunk}, "
                         f"residual {q.residual}, sinks {q.sinks})")
        else:
            parts.append(f"KV {p.full_precision if p.full_precision != 'model' else 'bf16'}")
        if p.evict is not None:
            e = p.evict
            budget = f"{e.budget} tokens" if e.budget is not None else f"{e.budget_bytes} bytes"
            parts.append(f"{e.method} eviction to {budget}" + (" with merging" if p.merge is not None else ""))
        return ", ".join(parts)

    def targets_layer(self, name: str) -> bool:
        full = f"model.layers.0.{name}"
        return any(fnmatchcase(full, t) for t in self.targets)

    def act_format(self, name: str) -> str | None:
        """The activation format of the workload's linear `name` (a Llama-block name, see
        ModelShape.linears): tensor types first, then globs on `model.layers.0.<name>`."""
        if not isinstance(self.activations, tuple):
            return self.activations
        fmt = None
        spec = dict(self.activations)
        for ttype, names in LLAMA_TENSOR_TYPES.items():
            if name in names and ttype in spec:
                fmt = spec[ttype]
        for key, f in spec.items():
            if key not in LLAMA_TENSOR_TYPES and fnmatchcase(f"model.layers.0.{name}", key):
                fmt = f
        return fmt

    def act_densities(self, name: str, m: int) -> tuple[float, float]:
        """(element density, column density) of linear `name`'s input over a GEMM of m rows: the fraction
        of nonzero entries, and of input channels nonzero in at least one row (the weight columns a
        zero-skipping GEMV reads). Between measured batches: linear in log2 B; beyond the largest measured
        B_max: 1 - (1 - d(B_max))^(m / B_max) (groups of B_max taken as independent). (1, 1) unmeasured."""
        points = dict(self.act_sparsity).get(name)
        if not points:
            return 1.0, 1.0
        pts = sorted(points)
        element = pts[0][1] if pts[0][0] == 1 else 1.0
        if m <= pts[0][0]:
            return element, pts[0][1]
        for (b0, d0), (b1, d1) in zip(pts, pts[1:], strict=False):
            if b0 <= m <= b1:
                f = (math.log2(m) - math.log2(b0)) / (math.log2(b1) - math.log2(b0))
                return element, d0 + f * (d1 - d0)
        b_max, d_max = pts[-1]
        return element, 1.0 - (1.0 - d_max) ** (m / b_max)

    def _describe_activations(self) -> str:
        if isinstance(self.activations, tuple):
            return "{" + ", ".join(f"{k}: {v}" for k, v in self.activations) + "}"
        return self.activations or "bf16"

    def describe(self) -> str:
        parts = [f"weights {self.weights or 'bf16'}", f"sparsity {self.pattern or 'none'}",
                 f"activations {self._describe_activations()}", self.describe_kv()]
        if self.act_sparsity:
            d = [dict(p).get(1) for _, p in self.act_sparsity]
            d = [x for x in d if x is not None]
            if d:
                parts.append(f"activation density {sum(d) / len(d):.3f} at batch 1 (measured, mean over linears)")
        return ", ".join(parts)


@dataclass(frozen=True)
class Op:
    """One operation of a step (per instance; `count` instances run). Fields that do not apply
    to an op's kind stay at their defaults."""

    name: str
    kind: Literal["gemm", "attention", "norm", "activation", "embedding"]
    count: int
    flops: float
    bytes_read: float
    bytes_written: float
    # gemm: [m, k] x [k, n]
    m: int = 0
    n: int = 0
    k: int = 0
    weight_format: str | None = None
    act_format: str | None = None
    pattern: str | None = None
    weight_density: float = 1.0
    weight_bytes: float = 0.0
    #: activation sparsity (measured, nmx.sparsity.activation): the fraction of nonzero input entries, and
    #: of input channels nonzero in at least one of the m rows (the weight columns a zero-skipping kernel
    #: reads). `bytes_read` and `weight_bytes` stay those of a dense kernel: each target decides whether it skips.
    act_density: float = 1.0
    act_col_density: float = 1.0
    # attention
    batch: int = 0
    q_len: int = 0
    kv_len: int = 0
    heads_q: int = 0
    heads_kv: int = 0
    head_dim: int = 0
    causal: bool = False
    kv_format: str | None = None
    kv_bytes_read: float = 0.0
    kv_bytes_written: float = 0.0
    # elementwise and nonlinear work (exp of softmax, sigmoid of SiLU, rsqrt of RMSNorm)
    elements: int = 0
    nonlinear: str | None = None

    @property
    def macs(self) -> float:
        return self.flops / 2

    @property
    def bytes(self) -> float:
        return self.bytes_read + self.bytes_written

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if (v not in (0, 0.0, None, False) or k in ("name", "kind"))
                and not (k in ("act_density", "act_col_density") and v == 1.0)}  # dense activations: as before


@dataclass(frozen=True)
class Workload:
    model: ModelShape
    phase: str
    batch: int
    tokens: int  # new tokens per sequence in this step (prefill length, or 1)
    context: int  # tokens already in the cache before the step
    compression: Compression
    ops: tuple[Op, ...] = field(default=())
    #: the cache of all layers and sequences: what a decode step reads (after `context` tokens) or
    #: a prefill leaves (after `tokens`); with a KV policy, `KVCache.nbytes()` at that point
    kv_cache_bytes: float = 0.0
    kv_kept_tokens: int = 0  # tokens per sequence that cache holds (the eviction budget caps it)
    kv_exact: bool = True  # False: an eviction method that scores tokens, estimated (nmx.hw.kvcache)
    #: decode with n candidates per prompt (reasoning, best-of-n): `batch` counts sequences (prompts x n);
    #: the first `shared_prefix` cached tokens of each prompt are stored and read once for its n candidates
    parallel_samples: int = 1
    shared_prefix: int = 0

    def total(self, attr: str) -> float:
        return sum(getattr(op, attr) * op.count for op in self.ops)

    @property
    def kv_tokens_seen(self) -> int:
        """Tokens per sequence that went into the cache at the point `kv_cache_bytes` counts."""
        return self.tokens if self.phase == "prefill" else self.context

    @property
    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes per token seen, summed over layers (as `KVCache.bytes_per_token()`): the
        format's bytes per token without a policy; with one, the cache's bytes over the tokens seen
        (less with eviction; for an empty cache, the bytes of its first token)."""
        policy = self.compression.kv_policy
        if policy is None:
            return kv_bytes(self.model, 1, self.compression.kv_format) * self.model.layers
        seen = self.kv_tokens_seen
        if seen == 0:
            from nmx.hw.kvcache import kv_cache_bytes

            return float(kv_cache_bytes(policy, self.model, 1))
        return self.kv_cache_bytes / (self.batch * seen)

    def summary(self) -> dict[str, Any]:
        return {"model": self.model.name, "phase": self.phase, "batch": self.batch, "tokens": self.tokens,
                "context": self.context, "compression": self.compression.describe(),
                "flops": self.total("flops"), "bytes_read": self.total("bytes_read"),
                "bytes_written": self.total("bytes_written"), "weight_bytes": self.total("weight_bytes"),
                "kv_bytes_read": self.total("kv_bytes_read"), "kv_bytes_written": self.total("kv_bytes_written"),
                "kv_bytes_per_token": self.kv_bytes_per_token, "kv_cache_bytes": self.kv_cache_bytes,
                "kv_kept_tokens": self.kv_kept_tokens, "kv_exact": self.kv_exact}


def kv_bytes(model: ModelShape, tokens: int, kv_format: str | None) -> float:
    """Bytes of K and V for `tokens` tokens of one layer (blocks of a format run along head_dim)."""
    rows = tokens * model.heads_kv
    if kv_format is None:
        return 2.0 * rows * model.head_dim * BF16_BYTES
    from nmx import formats

    return 2.0 * formats.get(kv_format).storage_bytes((rows, model.head_dim))


def _act_bytes(elements: int, fmt: str | None) -> float:
    if fmt is None:
        return float(elements * BF16_BYTES)
    from nmx import formats

    return formats.get(fmt).storage_bytes((1, elements)) if elements else 0.0


def gemm_op(name: str, m: int, n: int, k: int, count: int = 1, weights: str | None = None,
            activations: str | None = None, pattern: str | None = None, weight_bits: float | None = None,
            act_density: float = 1.0, act_col_density: float = 1.0) -> Op:
    """A linear layer y[m, n] = x[m, k] W[n, k]^T with W stored per `weights`/`pattern`; `act_density` /
    `act_col_density`: measured activation sparsity (see Op)."""
    from nmx.sparsity.patterns import parse_pattern
    from nmx.sparsity.storage import weight_storage

    density = parse_pattern(pattern).density if pattern is not None else 1.0
    if weight_bits is None:
        weight_bits = weight_storage((n, k), density, weights, pattern)["bits"]
    wb = weight_bits / 8
    return Op(name, "gemm", count, flops=2.0 * m * n * k, bytes_read=wb + _act_bytes(m * k, activations),
              bytes_written=float(m * n * BF16_BYTES), m=m, n=n, k=k, weight_format=weights, act_format=activations,
              pattern=pattern, weight_density=density, weight_bytes=wb, act_density=act_density,
              act_col_density=act_col_density)


def attention_op(name: str, batch: int, q_len: int, kv_len: int, heads_q: int, heads_kv: int, head_dim: int,
                 count: int = 1, kv_format: str | None = None, causal: bool = False, new_kv: int | None = None,
                 model: ModelShape | None = None, kv_read_bytes: float | None = None,
                 kv_written_bytes: float | None = None) -> Op:
    """softmax(Q K^T / sqrt(d)) V over a cache of kv_len tokens; `new_kv` tokens (default q_len)
    are appended to the cache. With `causal`, query i sees kv_len - q_len + i + 1 keys.
    `kv_read_bytes` / `kv_written_bytes` (all `batch` sequences) replace the bytes of `kv_format`
    where a KV policy's real layout is known (`nmx.hw.kvcache`)."""
    for label, v in (("batch", batch), ("q_len", q_len), ("kv_len", kv_len), ("heads_q", heads_q),
                     ("heads_kv", heads_kv), ("head_dim", head_dim)):
        check_size(f"attention: {label}", v)
    if heads_q % heads_kv:
        raise InputError(f"attention: heads_q={heads_q} is not a multiple of heads_kv={heads_kv}")
    if q_len > kv_len:
        raise InputError(f"attention: q_len={q_len} is longer than kv_len={kv_len} (the cache includes the queries)")
    new_kv = q_len if new_kv is None else new_kv
    # score pairs per head: all q_len x kv_len, or the causal triangle's part
    pairs = q_len * kv_len - (q_len * (q_len - 1) // 2 if causal else 0)
    flops = 4.0 * batch * heads_q * pairs * head_dim  # QK^T and PV, 2 flops per MAC
    shape = model or ModelShape("attention", heads_q * head_dim, 1, 1, heads_q, heads_kv, head_dim, 1)
    kv_read = batch * kv_bytes(shape, kv_len - new_kv, kv_format) if kv_read_bytes is None \
        else float(kv_read_bytes)  # the cache before this step
    kv_written = batch * kv_bytes(shape, new_kv, kv_format) if kv_written_bytes is None \
        else float(kv_written_bytes)
    qo = 2.0 * batch * q_len * heads_q * head_dim * BF16_BYTES  # Q read, O written
    new_kv_in = 2.0 * batch * new_kv * heads_kv * head_dim * BF16_BYTES  # fresh K, V from the projections
    return Op(name, "attention", count, flops=flops, bytes_read=qo / 2 + new_kv_in + kv_read,
              bytes_written=qo / 2 + kv_written, batch=batch, q_len=q_len, kv_len=kv_len, heads_q=heads_q,
              heads_kv=heads_kv, head_dim=head_dim, causal=causal, kv_format=kv_format, kv_bytes_read=kv_read,
              kv_bytes_written=kv_written, elements=batch * heads_q * pairs, nonlinear="exp")


def _elementwise(name: str, kind: str, count: int, rows: int, width: int, inputs: int, weights: int,
                 flops_per: float, nonlinear: str) -> Op:
    n = rows * width
    return Op(name, kind, count, flops=flops_per * n, bytes_read=float((inputs * n + weights) * BF16_BYTES),
              bytes_written=float(n * BF16_BYTES), elements=n if kind == "activation" else rows, nonlinear=nonlinear)


def llm_workload(model: str | ModelShape | Path | dict, phase: Phase = "decode", *, batch: int = 1,
                 tokens: int = 2048, context: int = 2048, compression: Compression | None = None,
                 parallel_samples: int = 1, shared_prefix: int | None = None) -> Workload:
    """The ops of one prefill of `tokens` tokens per sequence, or of one decode step with
    `context` tokens already cached, for `batch` sequences.

    `parallel_samples` n > 1 (decode only): each of the `batch` prompts has n candidates decoding
    together (reasoning, best-of-n). The step runs batch * n sequences (the GEMMs see M = batch * n
    rows, so the weights are read once for all of them); of the `context` cached tokens of each
    candidate, the first `shared_prefix` (default: all of them, the candidates just forked) are the
    prompt's, stored and read once per prompt, the rest are each candidate's own. Every candidate
    attends to all `context` + 1 tokens (the FLOPs do not shrink). The workload's `batch` is then
    batch * n. A prefill is the prompt's, once: n changes nothing there. With n = 1 nothing changes."""
    shape, from_result = resolve_model(model)
    comp = compression if compression is not None else (from_result or Compression())
    if phase not in PHASES:
        raise InputError(f"phase (--phase) must be 'prefill' or 'decode', got {phase!r}")
    check_size("batch (--batch)", batch)
    check_size("tokens (--tokens)", tokens)
    check_size("context (--context)", context, minimum=0)
    n_par = check_size("parallel_samples (--parallel-samples)", parallel_samples)
    prefix = context if shared_prefix is None else check_size("shared_prefix (--shared-prefix)", shared_prefix, 0)
    if prefix > context:
        raise InputError(f"shared_prefix {prefix} is longer than the context {context} it is part of")
    if phase == "prefill" or n_par == 1:
        n_par, prefix = 1, 0
    batch = batch * n_par  # sequences in the step
    q = tokens if phase == "prefill" else 1
    ctx = 0 if phase == "prefill" else context
    if batch * q > MAX_SIZE or ctx + q > MAX_SIZE:
        raise InputError(f"batch {batch} x {q} new tokens with a context of {ctx} is beyond what nmx models "
                         f"(at most {MAX_SIZE:,} tokens in one step or in the cache)")
    m, L, s = batch * q, shape.layers, shape
    real_bits = dict(comp.layer_bits)
    attention = _attention_with_cache(s, comp, phase, batch, q, ctx) if n_par == 1 else \
        _shared_prefix_attention(s, comp, batch // n_par, n_par, ctx, prefix)
    ops: list[Op] = [Op("embed_tokens", "embedding", 1, flops=0.0, bytes_read=float(m * s.hidden * BF16_BYTES),
                        bytes_written=float(m * s.hidden * BF16_BYTES))]
    norm = _elementwise("input_layernorm", "norm", L, m, s.hidden, 1, s.hidden, 4.0, "rsqrt")
    ops.append(norm)
    for name, (n, k) in s.linears().items():
        on = comp.targets_layer(name)
        act_d, col_d = comp.act_densities(name, m)
        ops.append(gemm_op(name, m, n, k, L, weights=comp.weights if on else None,
                           activations=comp.act_format(name) if on else None, pattern=comp.pattern if on else None,
                           weight_bits=real_bits.get(name), act_density=act_d, act_col_density=col_d))
        if name == "self_attn.v_proj":
            ops.append(attention["op"])
        if name == "self_attn.o_proj":
            ops.append(replace(norm, name="post_attention_layernorm"))
        if name == "mlp.up_proj":
            ops.append(_elementwise("mlp.act_fn", "activation", L, m, s.intermediate, 2, 0, 5.0, "sigmoid"))
    ops.append(replace(norm, name="norm", count=1))
    # the LM head scores every position in prefill only where logits are needed; we count the last one
    lm_m = batch
    ops.append(gemm_op("lm_head", lm_m, s.vocab, s.hidden, 1))
    return Workload(s, phase, batch, q, ctx, comp, tuple(ops), kv_cache_bytes=attention["cache_bytes"],
                    kv_kept_tokens=attention["kept"], kv_exact=attention["exact"], parallel_samples=n_par,
                    shared_prefix=prefix)


def _shared_prefix_attention(s: ModelShape, comp: Compression, prompts: int, n: int, ctx: int, prefix: int
                             ) -> dict[str, Any]:
    """The decode attention of `prompts` x `n` candidates whose first `prefix` cached tokens are the
    prompt's (stored once per prompt) and the other ctx - prefix each candidate's own. Every
    candidate attends to ctx + 1 tokens. With a KV policy the prompt's part is the cache of `prefix`
    tokens and each candidate's own part the difference between the caches of ctx and prefix tokens
    (exact for quantization without eviction; eviction of a shared prefix is an estimate)."""
    L = s.layers
    if comp.kv_policy is None:
        cache_layer = prompts * (kv_bytes(s, prefix, comp.kv_format) + n * kv_bytes(s, ctx - prefix, comp.kv_format))
        op = attention_op("self_attn.attention", prompts * n, 1, ctx + 1, s.heads_q, s.heads_kv, s.head_dim, L,
                          comp.kv_format, model=s, kv_read_bytes=cache_layer)
        return {"op": op, "cache_bytes": L * cache_layer, "kept": ctx, "exact": True}
    import torch

    from nmx.hw.kvcache import kv_cache_bytes, kv_cache_layout

    policy = comp.kv_policy
    shared = kv_cache_bytes(policy, s, prefix, prompts)
    cache = shared + n * (kv_cache_bytes(policy, s, ctx, prompts) - shared)
    layout = kv_cache_layout(policy, s, ctx)
    fp = torch.empty(0, dtype=policy.fp_dtype(torch.bfloat16)).element_size()
    new = prompts * n * 2 * s.heads_kv * s.head_dim * fp
    op = attention_op("self_attn.attention", prompts * n, 1, layout.kept + 1, s.heads_q, s.heads_kv, s.head_dim, L,
                      comp.kv_element_format, model=s, kv_read_bytes=cache / L, kv_written_bytes=float(new))
    return {"op": op, "cache_bytes": float(cache), "kept": layout.kept,
            "exact": layout.exact and layout.kept == ctx}


def _attention_with_cache(s: ModelShape, comp: Compression, phase: str, batch: int, q: int, ctx: int
                          ) -> dict[str, Any]:
    """The attention op of a step and the cache it reads or leaves. With a KV policy: a decode step
    attends to the tokens the cache kept (the eviction budget caps them) plus the new one and reads
    the cache's real bytes; the new token enters the cache in full precision (the residual window,
    or the tail a later flush quantizes). A prefill attends causally to its fresh tokens and writes
    the cache they leave. Without a policy every cached token is in `kv_format`."""
    L, prefill = s.layers, phase == "prefill"
    policy = comp.kv_policy
    if policy is None:
        seen = q if prefill else ctx
        op = attention_op("self_attn.attention", batch, q, ctx + q, s.heads_q, s.heads_kv, s.head_dim, L,
                          comp.kv_format, causal=prefill, model=s)
        return {"op": op, "cache_bytes": L * batch * kv_bytes(s, seen, comp.kv_format), "kept": seen, "exact": True}
    import torch

    from nmx.hw.kvcache import kv_cache_bytes, kv_cache_layout

    seen = q if prefill else ctx
    layout = kv_cache_layout(policy, s, seen)
    cache = kv_cache_bytes(policy, s, seen, batch)
    fmt = comp.kv_element_format
    if prefill:
        op = attention_op("self_attn.attention", batch, q, q, s.heads_q, s.heads_kv, s.head_dim, L, fmt, causal=True,
                          model=s, kv_read_bytes=0.0, kv_written_bytes=cache / L)
    else:
        fp = torch.empty(0, dtype=policy.fp_dtype(torch.bfloat16)).element_size()
        new = batch * 2 * s.heads_kv * s.head_dim * fp  # one token's K and V, full precision
        op = attention_op("self_attn.attention", batch, 1, layout.kept + 1, s.heads_q, s.heads_kv, s.head_dim, L,
                          fmt, model=s, kv_read_bytes=cache / L, kv_written_bytes=float(new))
    return {"op": op, "cache_bytes": float(cache), "kept": layout.kept, "exact": layout.exact}


def resolve_model(model: str | ModelShape | Path | dict) -> tuple[ModelShape, Compression | None]:
    """A preset name, a ModelShape, a HF config (dict / file / folder) or an `nmx run` result
    folder (which also gives the recipe's compression and the real per-layer storage)."""
    if isinstance(model, ModelShape):
        return model, None
    if isinstance(model, dict):
        return shape_from_config(model), None
    key = str(model)
    if key in PRESETS:
        return PRESETS[key], None
    path = expand_user(key)
    if (path / "result.json").exists():
        return _from_result(path)
    if path.is_file() or (path / "config.json").exists():
        return shape_from_config(path), None
    raise InputError(f"unknown model {key!r}: give a preset ({', '.join(PRESETS)}), a HF config.json or its "
                     "folder, or the output folder of `nmx run` (with result.json)")


def _field(obj: Any, key: str, kind: type | tuple[type, ...], where: str, required: bool = True) -> Any:
    """obj[key] of the given type (None when absent and not required); else one line naming the key."""
    if not isinstance(obj, dict):
        raise InputError(f"{where} is not a mapping; is this a folder written by `nmx run`?")
    if key not in obj or obj[key] is None:
        if required:
            raise InputError(f"{where} has no {key!r}; give a folder written by `nmx run`")
        return None
    v = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
        names = " or ".join(dict.fromkeys({"dict": "mapping", "str": "string", "int": "number", "float": "number"}
                                          .get(t.__name__, t.__name__) for t in kinds))
        raise InputError(f"{where}: {key!r} must be a {names}, got {type(v).__name__}; "
                         "give a folder written by `nmx run`")
    return v


def read_result(folder: Path | str) -> dict[str, Any]:
    """The result.json of an `nmx run` folder (a mapping), or one InputError line naming the file."""
    f = Path(folder) / "result.json"
    return read_json(f, "result file of `nmx run`")


def _from_result(folder: Path) -> tuple[ModelShape, Compression]:
    return from_result(read_result(folder), str(folder / "result.json"), folder.name)


def from_result(result: Any, where: str = "result", name: str = "model") -> tuple[ModelShape, Compression]:
    """The model shape and the compression of an `nmx run` result record (the dict result.json
    holds): the recipe's formats, pattern and whole KV policy, and each linear's real storage.
    `where` names the record in errors; `name` is the model's name where the record has none."""
    recipe = _field(result, "recipe", dict, where)
    rwhere = f"{where}: recipe"
    model_rec = _field(result, "model", dict, where, required=False) or {}
    shape_rec = _field(model_rec, "shape", dict, f"{where}: model", required=False)
    if shape_rec:
        fields = {k: shape_rec.get(k) for k in ("name", "hidden", "intermediate", "layers", "heads_q", "heads_kv",
                                                "head_dim", "vocab") if k in shape_rec}
        missing = [k for k in ("hidden", "intermediate", "layers", "heads_q", "heads_kv", "head_dim", "vocab")
                   if k not in fields]
        if missing:
            raise InputError(f"{where}: model.shape has no {', '.join(repr(k) for k in missing)}; "
                             "give a folder written by `nmx run`")
        try:
            shape = ModelShape(name=str(fields.pop("name", None) or recipe.get("model") or name), **fields,
                               tied_embeddings=bool(shape_rec.get("tied_embeddings", False)))
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
    elif _field(recipe, "model", str, rwhere, required=False) in PRESETS:
        shape = PRESETS[recipe["model"]]
    else:
        raise InputError(f"{where}: the result names model {recipe.get('model')!r}, which is no preset, and holds "
                         "no model shape; re-run it with this nmx version")
    sp = _field(recipe, "sparsity", dict, rwhere, required=False) or {}
    qz = _field(recipe, "quantization", dict, rwhere, required=False) or {}
    kv_policy = _kv_policy(_field(recipe, "kv_cache", dict, rwhere, required=False), f"{rwhere}.kv_cache")
    targets_raw = _field(sp, "targets", list, f"{rwhere}.sparsity", required=False) or \
        _field(qz, "targets", list, f"{rwhere}.quantization", required=False) or DEFAULT_TARGETS
    if not all(isinstance(t, str) for t in targets_raw):
        raise InputError(f"{rwhere}: targets must be a list of layer-name patterns (strings)")
    targets = tuple(targets_raw)
    # real storage of the masks that were applied, averaged over the decoder layers
    sums: dict[str, list[float]] = {}
    layers = _field(result, "layers", dict, where, required=False) or {}
    for full, rec in layers.items():
        bits = _field(rec, "bits", (int, float), f"{where}: layers.{full}")
        if not math.isfinite(bits) or bits < 0:
            raise InputError(f"{where}: layers.{full}.bits must be a number >= 0, got {bits!r}")
        short = full.split(".", 3)[-1] if full.startswith("model.layers.") else full
        sums.setdefault(short, []).append(float(bits))
    bits = tuple((k, sum(v) / len(v)) for k, v in sorted(sums.items()))
    weights = _field(qz, "weights", str, f"{rwhere}.quantization", required=False)
    activations = _field(qz, "activations", (str, dict), f"{rwhere}.quantization", required=False)
    pattern = _field(sp, "pattern", str, f"{rwhere}.sparsity", required=False)
    act_sparsity = _act_sparsity(_field(result, "activation_sparsity", dict, where, required=False),
                                 f"{where}: activation_sparsity", shape.layers)
    try:
        comp = Compression(weights=weights, activations=activations, pattern=pattern, targets=targets,
                           layer_bits=bits, kv_policy=kv_policy, act_sparsity=act_sparsity)
    except NmxError as err:  # a format or pattern name this nmx does not know
        raise InputError(f"{where}: {err}") from None
    return shape, comp


def _act_sparsity(block: dict | None, where: str, layers: int) -> tuple:
    """A result's measured activation sparsity as Compression.act_sparsity: each linear's union density by
    batch, averaged over the `layers` decoder layers (the workload's one op per linear stands for all of
    them; a layer whose linear was not thresholded counts as density 1)."""
    if not block:
        return ()
    sums: dict[str, dict[int, list[float]]] = {}
    for full, rec in (_field(block, "layers", dict, where, required=False) or {}).items():
        union = _field(rec, "union_density", dict, f"{where}.layers.{full}", required=False)
        if not union:
            continue
        short = full.split(".", 3)[-1] if full.startswith("model.layers.") else full
        for b, d in union.items():
            if not (str(b).isdigit() and int(b) >= 1) or isinstance(d, bool) or not isinstance(d, (int, float)) \
                    or not 0 <= d <= 1:
                raise InputError(f"{where}.layers.{full}.union_density: expected batch -> density in [0, 1], "
                                 f"got {b!r}: {d!r}; give a folder written by `nmx run`")
            sums.setdefault(short, {}).setdefault(int(b), []).append(float(d))
    # a density of exactly 0 (a channel-free input) would zero the GEMM: keep it a tiny positive fraction
    return tuple((name, tuple((b, max((sum(v) + max(layers - len(v), 0)) / max(layers, len(v)), 1e-9))
                              for b, v in sorted(by_b.items())))
                 for name, by_b in sums.items())


def _kv_policy(kv: dict | None, where: str) -> Any:
    """The recipe's kv_cache section (as result.json holds it) as an nmx.kv.KVPolicy, or None."""
    if not kv:
        return None
    from nmx.kv.policy import KVPolicy

    quant = _field(kv, "quant", dict, where, required=False) or {}
    _field(kv, "evict", dict, where, required=False)
    _field(quant, "format", str, f"{where}.quant", required=False)
    try:
        return KVPolicy.from_dict({k: v for k, v in kv.items() if k != "chunk"})
    except NmxError as err:
        raise InputError(f"{where}: {err}") from None
