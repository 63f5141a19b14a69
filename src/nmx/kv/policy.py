"""What a compressed KV cache does, as frozen specs: quantize, evict, merge.

    KVPolicy(quant=QuantSpec("int4", group=32, residual=128),
             evict=EvictSpec("streaming", budget=512, sinks=4),
             merge=None, full_precision="bf16")

Every spec checks itself on construction and raises `InputError` naming the field
(`quant.group`, `evict.budget`, ...). `nmx.recipe` builds one from a recipe's `kv_cache:`
section; `KVPolicy.from_dict` does the same from a plain dict.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from nmx.errors import InputError, NmxError

AXES = ("channel", "token")
#: storage dtype of the slots kept in full precision (sinks, residual window, unquantized caches)
FULL_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "model": None}
#: group when neither the recipe nor a block format sets one (KIVI's group size)
DEFAULT_GROUP = 32


def _nonneg_int(value: Any, name: str, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def kv_format(name: str, field_name: str = "quant.format"):
    """The nmx format `name`, checked to be one the cache can pack for keys and values: known,
    and able to store negative numbers (scale formats such as e8m0 / ue4m3 cannot)."""
    from nmx import formats

    where = f"{field_name}: " if field_name else ""
    try:
        fmt = formats.get(name)
        probe = fmt.quantize(torch.tensor([-1.0, 0.5, -0.25, 1.0]))
    except NmxError as err:
        raise InputError(f"{where}{err}") from None
    if not bool(probe[0] < 0):
        raise InputError(f"{where}{name} cannot store negative numbers, so it cannot hold keys or values; "
                         "use a signed format (int4, fp8_e4m3, mxfp4, nvfp4, ...)")
    return fmt


@dataclass(frozen=True)
class QuantSpec:
    """Quantize keys and values with nmx formats (KIVI / KVQuant style).

    - `format` for both, or `key_format` / `value_format` for one of them;
    - `key_axis` / `value_axis`: "channel" = one scale per channel over `group` tokens
      (KIVI keys), "token" = one scale per `group` channels of one token (KIVI values);
    - `group`: elements sharing a scale for a one-scale-per-vector format (int4, int8, ...);
      a block format (mxfp4, nvfp4, int4_g32, ...) keeps its own block and `group` must be a
      multiple of it. Default: the formats' block (lcm), else 32. Tokens move from the residual
      window into quantized storage `group` at a time (one *chunk*).
    - `residual`: the R most recent tokens stay in full precision (KIVI); the window holds
      between R and R + group - 1 tokens once the context is long enough.
    - `sinks`: the first tokens stay in full precision (KVQuant's attention sinks).
    - `key_rope`: "post" quantizes keys as transformers hands them to the cache (rotated);
      "pre" (KVQuant) rotates each chunk back to its pre-RoPE values before quantizing and
      re-applies RoPE at its positions when reading it (per-channel outliers are sharper
      before RoPE mixes channel pairs). Full-precision slots stay rotated.
    """

    format: str = "int4"
    key_format: str | None = None
    value_format: str | None = None
    key_axis: str = "channel"
    value_axis: str = "token"
    group: int | None = None
    residual: int = 128
    sinks: int = 0
    key_rope: str = "post"

    def __post_init__(self) -> None:
        if self.key_rope not in ("pre", "post"):
            raise InputError(f"quant.key_rope must be 'pre' or 'post', got {self.key_rope!r}")
        for name in ("key_axis", "value_axis"):
            if getattr(self, name) not in AXES:
                raise InputError(f"quant.{name} must be 'channel' or 'token', got {getattr(self, name)!r}")
        if self.group is not None:
            _nonneg_int(self.group, "quant.group", 1)
        _nonneg_int(self.residual, "quant.residual")
        _nonneg_int(self.sinks, "quant.sinks")
        group = self.chunk
        for which, fmt in (("key", self.key_fmt), ("value", self.value_fmt)):
            block = fmt.block_size
            if block not in (None, 1) and group % block:
                where = f"quant.{which}_format" if getattr(self, f"{which}_format") else "quant.group"
                raise InputError(f"{where}: group {group} is not a multiple of {fmt.name}'s block of {block}; "
                                 f"use a group of {block} or a multiple of it")

    @property
    def key_fmt(self):
        return kv_format(self.key_format or self.format, "quant.key_format" if self.key_format else "quant.format")

    @property
    def value_fmt(self):
        return kv_format(self.value_format or self.format,
                         "quant.value_format" if self.value_format else "quant.format")

    @property
    def chunk(self) -> int:
        """The resolved group: tokens per quantized chunk (and elements per scale along channels)."""
        if self.group is not None:
            return self.group
        blocks = [f.block_size for f in (self.key_fmt, self.value_fmt) if f.block_size not in (None, 1)]
        return math.lcm(*blocks) if blocks else DEFAULT_GROUP


@dataclass(frozen=True)
class EvictSpec:
    """Evict to a budget of `budget` tokens per layer (or the most tokens that fit `budget_bytes`,
    summed over layers). Protected: the first `sinks` and the last `window` cached tokens; the rest
    of the budget goes to the tokens the method scores highest. `sinks` / `window` default per
    method (see `nmx.kv.evict`). `pool`: SnapKV's pooling kernel. `seed`: `random`'s draws."""

    method: str
    budget: int | None = None
    budget_bytes: int | None = None
    sinks: int | None = None
    window: int | None = None
    pool: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        from nmx.kv.evict import get_method

        m = get_method(self.method)
        if (self.budget is None) == (self.budget_bytes is None):
            raise InputError("evict: give exactly one of budget (tokens) or budget_bytes")
        if self.budget is not None:
            _nonneg_int(self.budget, "evict.budget", 1)
        if self.budget_bytes is not None:
            _nonneg_int(self.budget_bytes, "evict.budget_bytes", 1)
        for name in ("sinks", "window"):
            if getattr(self, name) is not None:
                _nonneg_int(getattr(self, name), f"evict.{name}")
        if self.pool is not None:
            if self.method != "snapkv":
                raise InputError(f"evict.pool is SnapKV's pooling kernel; method {self.method} has none")
            if _nonneg_int(self.pool, "evict.pool", 1) % 2 == 0:
                raise InputError(f"evict.pool must be odd (a centred kernel), got {self.pool}")
        _nonneg_int(self.seed, "evict.seed")
        if m.fixed_sinks is not None and self.sinks not in (None, m.fixed_sinks):
            raise InputError(f"evict.sinks: {self.method} keeps {m.fixed_sinks} sinks by definition; "
                             "use streaming for sinks + recent")
        if self.budget is not None:
            self.check_budget(self.budget)

    @property
    def method_obj(self):
        from nmx.kv.evict import get_method

        return get_method(self.method)

    def protected(self, budget: int) -> tuple[int, int]:
        """(sinks, window) for a budget of `budget` tokens."""
        m = self.method_obj
        sinks = m.fixed_sinks if m.fixed_sinks is not None else (m.default_sinks if self.sinks is None else self.sinks)
        window = m.default_window(budget) if self.window is None else self.window
        return sinks, window

    def check_budget(self, budget: int, what: str = "evict.budget") -> None:
        sinks, window = self.protected(budget)
        if budget < sinks + window:
            where = f"{what}: " if what else ""
            raise InputError(f"{where}{budget} tokens is smaller than sinks + window ({sinks} + {window}); "
                             "raise the budget or lower evict.sinks / evict.window")


@dataclass(frozen=True)
class MergeSpec:
    """Fold each evicted token into its most similar kept token of the same head (cosine
    similarity of keys), as a weighted average of K and V; each slot's weight (the number of
    tokens folded into it) is recorded, so the weighted sum of K and V is preserved."""

    similarity: str = "cosine"

    def __post_init__(self) -> None:
        if self.similarity != "cosine":
            raise InputError(f"merge.similarity: only 'cosine' is implemented, got {self.similarity!r}")


@dataclass(frozen=True)
class KVPolicy:
    """One KV-cache policy: any of quantize, evict, merge (merge needs evict).
    `full_precision`: how unquantized slots are stored (bf16 by default, the dense figure every
    result is compared against; "model" keeps the model's dtype: then a cache that compresses
    nothing reproduces transformers' DynamicCache bit for bit)."""

    quant: QuantSpec | None = None
    evict: EvictSpec | None = None
    merge: MergeSpec | None = None
    full_precision: str = "bf16"

    def __post_init__(self) -> None:
        if self.full_precision not in FULL_PRECISION:
            raise InputError(f"full_precision must be one of {', '.join(FULL_PRECISION)}, got {self.full_precision!r}")
        if self.merge is not None and self.evict is None:
            raise InputError("merge: merging folds evicted tokens, so it needs an evict section")

    @property
    def needs_attention(self) -> bool:
        """Whether the eviction method reads attention scores (then the model needs eager attention)."""
        return self.evict is not None and self.evict.method_obj.needs_attention

    def fp_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        return FULL_PRECISION[self.full_precision] or model_dtype

    def check_context(self, context: int, what: str = "context") -> None:
        """Refuse settings under which a `context`-token run would compress nothing."""
        if self.quant is not None:
            q = self.quant
            if q.sinks + q.residual + q.chunk > context:
                raise InputError(
                    f"quant.residual: sinks + residual + group = {q.sinks} + {q.residual} + {q.chunk} exceeds the "
                    f"{what} of {context} tokens, so no token would ever be quantized; use a smaller residual")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KVPolicy":
        """From a recipe-style dict: {quant: {...}, evict: {...}, merge: {...} | true, full_precision}."""
        if not isinstance(d, dict):
            raise InputError(f"a KV policy is a mapping (quant, evict, merge), got {type(d).__name__}")
        known = {"quant", "evict", "merge", "full_precision"}
        if unknown := set(d) - known:
            raise InputError(f"unknown KV policy key(s) {sorted(unknown)}; known: {', '.join(sorted(known))}")

        def build(spec_cls, value, name):
            if value is None or value is False:
                return None
            if value is True:
                value = {}
            try:
                return spec_cls(**value)
            except TypeError as err:
                raise InputError(f"{name}: {err}") from None

        return cls(quant=build(QuantSpec, d.get("quant"), "quant"), evict=build(EvictSpec, d.get("evict"), "evict"),
                   merge=build(MergeSpec, d.get("merge"), "merge"), full_precision=d.get("full_precision", "bf16"))
