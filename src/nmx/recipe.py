"""The declarative recipe: what to prune and quantize, on which model, measured how.

    model: smollm2-135m
    calibration: {text: tinyshakespeare, samples: 128, seq_len: 2048, seed: 0}
    sparsity: {method: wanda, pattern: "2:4", targets: ["*.self_attn.*_proj", "*.mlp.*_proj"]}
    quantization: {weights: mxfp4, activations: null}
    evaluation: {text: wikitext-2, seq_len: 2048, max_windows: null}
    kv_cache: {quant: {format: int4, group: 32, residual: 128}, evict: {method: streaming, budget: 512}}

Validated with pydantic at this boundary only; an error names the field and, for a file,
its line. `--set key.path=value` overrides are applied before validation.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from nmx.errors import InputError, NmxError, did_you_mean
from nmx.io import parse_yaml, read_text
from nmx.model.layers import DEFAULT_TARGETS
from nmx.model.sources import DEFAULT_MODEL
from nmx.validation import Strict, as_value_error
from nmx.train.spec import Training  # `training:` (nmx train); light: imports no model code
from nmx.sparsity.activation import ActivationSparsity  # `activation_sparsity:` (TEAL thresholds, ReLU-fication)

log = logging.getLogger(__name__)


class Calibration(Strict):
    text: str = "tinyshakespeare"
    samples: int = Field(128, ge=1)
    seq_len: int = Field(2048, ge=2)
    seed: int = 0


class Sparsity(Strict):
    method: str = "wanda"
    pattern: str = "2:4"
    targets: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS))
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from nmx.sparsity.methods import get_method

        return as_value_error(get_method, v) and v

    @model_validator(mode="after")
    def _method_takes_options(self) -> "Sparsity":
        from nmx.sparsity.methods import get_method

        as_value_error(get_method(self.method).check_options, self.options)
        return self

    @field_validator("pattern", mode="before")
    @classmethod
    def _valid_pattern(cls, v: Any) -> str:
        from nmx.sparsity.patterns import parse_pattern

        return str(as_value_error(parse_pattern, v))


class Quantization(Strict):
    weights: Optional[str] = None
    #: one format for every targeted linear's input, or one per tensor type / layer glob:
    #: {qkv: bfp_m7_g64, o: bfp_m7_g64, up: bfp_m6_g64, down: bfp_m5_g64} (nmx.quant.tensor_types)
    activations: Optional[Union[str, dict[str, str]]] = None
    targets: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS))

    @field_validator("weights")
    @classmethod
    def _known_format(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            from nmx import formats

            as_value_error(formats.get, v)
        return v

    @field_validator("activations")
    @classmethod
    def _known_activations(cls, v: Any) -> Any:
        if v is not None:
            from nmx.quant.tensor_types import check_activation_spec

            as_value_error(check_activation_spec, v)
        return v


class Evaluation(Strict):
    text: str = "wikitext-2"
    seq_len: int = Field(2048, ge=2)
    max_windows: Optional[int] = Field(None, ge=1)


def _kv_section_error(check, value):
    """Like _as_value_error for a whole kv_cache sub-section: the error is located at the section, so a
    bare section prefix ("evict: ...") is dropped and a field prefix ("quant.group: ...") kept."""
    try:
        return check(value)
    except NmxError as err:
        head, sep, rest = str(err).partition(": ")
        raise ValueError(rest if sep and head in ("quant", "evict", "merge") else str(err)) from None


class KVQuant(Strict):
    format: str = "int4"
    key_format: Optional[str] = None
    value_format: Optional[str] = None
    key_axis: Literal["channel", "token"] = "channel"
    value_axis: Literal["channel", "token"] = "token"
    group: Optional[int] = Field(None, ge=1)
    residual: int = Field(128, ge=0)
    sinks: int = Field(0, ge=0)
    key_rope: Literal["pre", "post"] = "post"

    @field_validator("format", "key_format", "value_format")
    @classmethod
    def _packable(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            from nmx.kv.policy import kv_format

            as_value_error(lambda name: kv_format(name, ""), v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "KVQuant":
        from nmx.kv.policy import QuantSpec

        _kv_section_error(lambda d: QuantSpec(**d), self.model_dump())
        return self


class KVEvict(Strict):
    method: str
    sinks: Optional[int] = Field(None, ge=0)
    window: Optional[int] = Field(None, ge=0)
    pool: Optional[int] = Field(None, ge=1)
    seed: int = Field(0, ge=0)
    budget: Optional[int] = Field(None, ge=1)
    budget_bytes: Optional[int] = Field(None, ge=1)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from nmx.kv.evict import get_method

        return as_value_error(get_method, v) and v

    @field_validator("budget")
    @classmethod
    def _fits_protected(cls, v: Optional[int], info: Any) -> Optional[int]:
        if v is not None and "method" in info.data:
            from nmx.kv.policy import EvictSpec

            try:
                spec = EvictSpec(info.data["method"], budget_bytes=1, sinks=info.data.get("sinks"),
                                 window=info.data.get("window"))
            except NmxError:
                return v  # the section check reports it
            as_value_error(lambda b: spec.check_budget(b, ""), v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "KVEvict":
        from nmx.kv.policy import EvictSpec

        _kv_section_error(lambda d: EvictSpec(**d), self.model_dump())
        return self


class KVMerge(Strict):
    similarity: Literal["cosine"] = "cosine"


class KVCacheSection(Strict):
    """`kv_cache:` — quantize / evict / merge the KV cache during evaluation (see nmx.kv)."""

    quant: Optional[KVQuant] = None
    evict: Optional[KVEvict] = None
    merge: Optional[KVMerge] = None  # `merge: true` = the defaults
    full_precision: Literal["bf16", "fp16", "fp32", "model"] = "bf16"
    #: tokens per forward during evaluation; the compressed cache carries the context between chunks
    chunk: int = Field(64, ge=1)

    @field_validator("merge", mode="before")
    @classmethod
    def _merge_flag(cls, v: Any) -> Any:
        return {} if v is True else None if v is False else v

    @model_validator(mode="after")
    def _merge_needs_evict(self) -> "KVCacheSection":
        if self.merge is not None and self.evict is None:
            raise ValueError("merge folds evicted tokens, so it needs an evict section")
        return self

    def to_policy(self):
        from nmx.kv.policy import KVPolicy

        d = self.model_dump(exclude={"chunk"})
        return KVPolicy.from_dict(d)


class Kernels(Strict):
    """`kernels:` (or `nmx run --kernels`) — after the fake-quant evaluation, pack the compressed weights for
    nmx.kernels (`nmx.kernels.convert_recipe`), cast the model to bf16 and score it again through them; with
    `check`, also score the fake-quant model in bf16 (the agreement reference). `kernels: true` = defaults."""

    #: what `nmx.kernels.linear` runs: auto (the dispatcher), gemv, tc, dense or reference
    backend: Literal["auto", "gemv", "tc", "triton", "dense", "reference"] = "auto"
    check: bool = True
    #: tokens per forward in the kernels' evaluation (1 = token by token: the one-token kernel on a GPU);
    #: default: the evaluation protocol's (whole windows, or kv_cache.chunk)
    chunk: Optional[int] = Field(None, ge=1)
    #: refuse a layer the layout cannot take (K not a multiple of 64 or of the block) instead of leaving it
    strict: bool = False


def _default_target() -> str:
    from nmx.hw.targets import DEFAULT_TARGET

    return DEFAULT_TARGET


class HardwarePhase(Strict):
    """One step to price: `{phase: prefill, tokens: L}` (a prompt of L tokens) or
    `{phase: decode, context: C}` (one token with C cached), for `batch` sequences."""

    phase: Literal["prefill", "decode"]
    tokens: Optional[int] = Field(None, ge=1, le=2**31 - 1)
    context: Optional[int] = Field(None, ge=0, le=2**31 - 1)
    batch: int = Field(1, ge=1, le=2**31 - 1)

    @model_validator(mode="after")
    def _one_length(self) -> "HardwarePhase":
        from nmx.hw.pricing import Phase

        as_value_error(lambda p: Phase(p.phase, p.batch, p.tokens, p.context), self)
        return self


class Hardware(Strict):
    """`hardware:` — price the compressed model on these targets (preset names, see `nmx hw targets`, or
    YAML files of kind gpu / accelerator / timeloop, relative to the working folder) at these phases
    (default: a prefill of evaluation.seq_len tokens and decode steps at that context, batch 1 and 16).
    `gpu_impl`: the kernels GPU targets are priced with (pytorch, ideal or nmx; see nmx.hw.gpu)."""

    targets: list[str] = Field(default_factory=lambda: [_default_target()], min_length=1)
    phases: list[HardwarePhase] = Field(default_factory=list)
    gpu_impl: Literal["pytorch", "ideal", "nmx"] = "pytorch"

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, v: list[str]) -> list[str]:
        from nmx.hw.pricing import resolve

        as_value_error(resolve, v)  # names and files checked (and files read) now, not after the model ran
        return v

    @model_validator(mode="after")
    def _targets_take_the_impl(self) -> "Hardware":
        from nmx.hw.pricing import resolve

        as_value_error(lambda t: resolve(t, self.gpu_impl), self.targets)
        return self


class Recipe(Strict):
    model: str = DEFAULT_MODEL
    #: "auto" (a CUDA GPU where there is one, else the CPU), "cpu", "cuda" or "cuda:N"
    device: str = "auto"
    calibration: Calibration = Field(default_factory=Calibration)
    sparsity: Optional[Sparsity] = None
    quantization: Optional[Quantization] = None
    activation_sparsity: Optional[ActivationSparsity] = None
    evaluation: Evaluation = Field(default_factory=Evaluation)
    kv_cache: Optional[KVCacheSection] = None
    kernels: Optional[Kernels] = None
    hardware: Optional[Hardware] = None
    training: Optional[Training] = None

    @field_validator("kernels", mode="before")
    @classmethod
    def _kernels_flag(cls, v: Any) -> Any:
        return {} if v is True else None if v is False else v

    @field_validator("kernels")
    @classmethod
    def _kernels_read_the_format(cls, v: Optional[Kernels], info: Any) -> Optional[Kernels]:
        qz = info.data.get("quantization")
        if v is not None and qz is not None and qz.weights:
            from nmx.kernels.layout import kernel_format

            try:
                kernel_format(qz.weights)
            except NmxError as err:
                raise ValueError(f"{err} (quantization.weights)") from None
        return v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if v != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", v):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads an unquoted 2:4 as the base-60 integer 124; recipes mean the pattern."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:int"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)


def _yaml(text: str, where: str, compose: bool = False, lines: bool = True) -> Any:
    return parse_yaml(text, where, _Loader, compose, lines)


def _line_of(node: Any, loc: tuple) -> int | None:
    """1-based line of the YAML node at `loc` (or of its nearest existing parent)."""
    line = None
    for key in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for k, v in node.value:
            if k.value == key:
                line, node = k.start_mark.line + 1, v
                break
        else:
            break
    return line


def _describe(err: ValidationError, tree: Any, where: str, overrides: dict[tuple, str]) -> str:
    e = err.errors()[0]
    loc = tuple(x for x in e["loc"] if isinstance(x, str))
    field = ".".join(str(x) for x in e["loc"]) or "recipe"
    # blame the --set that wrote this field (or a section above it), else the file's line
    blamed = next((a for keys, a in overrides.items() if loc[: len(keys)] == keys), None)
    if blamed is not None:
        place = f"--set {blamed}"
    else:
        line = _line_of(tree, loc) if tree is not None else None
        place = f"{where} line {line}" if line else where
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        model: Any = Recipe
        for key in loc[:-1]:
            model = model.model_fields[key].annotation
            model = next((a for a in getattr(model, "__args__", (model,)) if isinstance(a, type)), model)
        known = list(getattr(model, "model_fields", {}))
        msg = f"unknown key{did_you_mean(loc[-1], known)} (known: {', '.join(known)})"
    elif e["type"].endswith("_type") and "input" in e:
        msg = f"{msg}, got {e['input']!r}"[:200]
    return f"{place}: {field}: {msg}"


def _apply_override(raw: dict, assignment: str) -> tuple[str, ...]:
    """Apply `key.path=value` to `raw`; returns the key path."""
    key, sep, value = assignment.partition("=")
    parts = tuple(p.strip() for p in key.strip().split("."))
    if not sep or not all(parts):
        raise InputError(f"--set wants key.path=value (e.g. sparsity.pattern=4:8), got {assignment!r}")
    node = raw
    for i, p in enumerate(parts[:-1]):
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise InputError(f"--set {assignment}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = node[p]
    node[parts[-1]] = _yaml(value, f"--set {assignment}", lines=False)
    return parts


def load_recipe(
    path: Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None
) -> Recipe:
    """Parse and validate a recipe file (or `base`, a dict) with `--set` overrides. An error
    names the file and line, or the `--set` argument, it comes from."""
    tree, raw, where = None, copy.deepcopy(base or {}), "recipe"
    if path is not None:
        text = read_text(path, "recipe file")
        where = str(path)
        tree = _yaml(text, where, compose=True)
        raw = _yaml(text, where)
        if raw is None:
            raw = {}
            log.warning("%s is empty: running the defaults (model %s, the whole %s evaluation)", path,
                        DEFAULT_MODEL, Evaluation().text)
        if not isinstance(raw, dict):
            raise InputError(f"{path}: a recipe is a mapping of sections (model, sparsity, ...), "
                             f"not a {type(raw).__name__}")
    blame = {_apply_override(raw, a): a for a in overrides}
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise InputError(_describe(err, tree, where, blame)) from None
    except RecursionError:
        raise InputError(f"{where}: nested too deeply to be a recipe") from None
    _check_kv_context(recipe, tree, where)
    _check_hardware(recipe, tree, where)
    return recipe


def _check_kv_context(recipe: Recipe, tree: Any, where: str) -> None:
    """kv_cache settings that would compress nothing over the evaluation context."""
    if recipe.kv_cache is None:
        return
    try:
        recipe.kv_cache.to_policy().check_context(recipe.evaluation.seq_len, "evaluation.seq_len")
    except NmxError as err:
        line = _line_of(tree, ("kv_cache", "quant", "residual")) if tree is not None else None
        raise InputError(f"{where}{f' line {line}' if line else ''}: kv_cache.{err}") from None


def _check_hardware(recipe: Recipe, tree: Any, where: str) -> None:
    """hardware: targets that cannot price the recipe's phases or formats (nmx.hw.pricing.check_recipe)."""
    from nmx.hw.pricing import check_recipe

    try:
        check_recipe(recipe)
    except NmxError as err:
        line = _line_of(tree, ("hardware", "targets")) if tree is not None else None
        raise InputError(f"{where}{f' line {line}' if line else ''}: hardware.targets: {err}") from None
