"""Activation sparsity: TEAL-style magnitude thresholds on linear inputs, and ReLU-fication of the FFN.

    activation_sparsity: {method: teal, sparsity: 0.5}                        # every qkv / o / up / down input
    activation_sparsity: {method: teal, sparsity: {qkv: 0.4, o: 0.5, up: 0.5, down: 0.5}}   # per tensor type
    activation_sparsity: {method: teal, sparsity: 0.4, options: {allocation: greedy}}     # one model-wide target
    activation_sparsity: {method: teal, sparsity: 0.4, options: {allocation: block_greedy}}   # TEAL's per-block greedy
    activation_sparsity: {method: teal, sparsity: 0.0, targets: [down], relufication: true}

TEAL (Liu et al., "Training-Free Activation Sparsity in Large Language Models", 2024) zeroes the entries of a
linear layer's input whose magnitude is at most a threshold t, `x * (|x| > t)`, with t calibrated on calibration
text so that a target fraction of the entries are zeroed; a decode GEMV then need not read the weight columns of
the zero entries. Here:

- thresholds: the empirical quantile of |x| over a seeded reservoir sample of `calibration_tokens` token rows
  of each linear input (one forward of the dense model per calibration window, after the recipe's weight
  pruning / quantization; linears that read one tensor -- q/k/v, gate/up -- share the sample). With
  `allocation: uniform` (default) every targeted input gets its target (one model-wide number, or one per
  tensor type / layer glob). With `allocation: greedy` one model-wide target is spread over the inputs
  TEAL-like: in steps of `step`, raise the input whose relative output error grows least per weight it
  frees, until the weight-weighted mean reaches the target. The error is a diagonal proxy,
  sum_zeroed x_i^2 |W[:, i]|^2 / sum_all x_i^2 |W[:, i]|^2 over the calibration sample (TEAL's greedy
  measures whole-block outputs instead). With `allocation: block_greedy` (TEAL's block-wise greedy) every
  decoder block gets the one target as the weight-weighted mean of its inputs' sparsities: starting from 0,
  each step raises the one input group (q/k/v; o; gate/up; down -- the linears reading one tensor) whose
  raise gives the smallest block output error, ||Y - Y_dense|| / ||Y_dense|| with the block run on its dense
  inputs of the first `block_windows` calibration windows and the candidate thresholds on its linears. A
  raise of group g is `step * W_min / W_g` (W: the group's weights, W_min: the block's smallest group), so
  every candidate raises the block's mean by the same `step * W_min / W_block` (TEAL's step sizes scaled by
  1 / weight), and the mean ends within one such increment above the target.
- the thresholding is a forward pre-hook on each targeted linear (registered before any activation
  fake-quant hook, so quantization sees the sparse input). The hook also counts the zeros it passes on
  (thresholded and natural) and keeps a seeded reservoir of `union_tokens` token masks (which input channels
  are nonzero) from the evaluation text: `union_density` turns them into the fraction of weight columns a
  GEMV over B tokens must read (channels nonzero in at least one of B tokens, tokens from different
  positions and windows), measured on the model's real activations, beside the independence guess 1 - s^B.
- `relufication: true` replaces the FFN's activation function (SiLU in Llama) by ReLU before calibration, as
  the first stage of "ReLU Strikes Back" (Mirzadeh et al., 2023). That paper fine-tunes afterwards to recover
  the accuracy; nmx does not, so the perplexity it reports is that of the unrecovered model.

`ActivationSparsifier.report()` is the `activation_sparsity` block of result.json.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Literal, Optional, Union

import torch
from pydantic import Field, field_validator, model_validator

from nmx.errors import InputError, registry_get
from nmx.validation import Strict, as_value_error

log = logging.getLogger(__name__)

TENSOR_TYPES = ("qkv", "o", "up", "down")  # nmx.quant.tensor_types.TENSOR_TYPES (not imported: keep this light)
DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32)
_GLOB_CHARS = set("*?[.")


# ---- the math (pure functions on tensors) ----------------------------------------------------------------


def threshold_input(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """x * (|x| > threshold): the entries of magnitude at most `threshold` become exactly +0."""
    return torch.where(x.abs() > threshold, x, torch.zeros((), dtype=x.dtype, device=x.device))


def magnitude_threshold(abs_values: torch.Tensor, sparsity: float) -> float:
    """The threshold t that zeroes a fraction >= `sparsity` of `abs_values` with |x| <= t: the
    ceil(sparsity * N)-th smallest value (exactly that fraction without ties); 0 for sparsity 0."""
    check_sparsity(sparsity)
    flat = abs_values.reshape(-1)
    if sparsity <= 0 or flat.numel() == 0:
        return 0.0
    k = max(1, math.ceil(sparsity * flat.numel()))
    return float(flat.float().kthvalue(k).values)


def union_density(masks: torch.Tensor, batches: tuple[int, ...] | list[int] = DEFAULT_BATCHES,
                  seed: int = 0) -> dict[int, float]:
    """Fraction of columns (input channels) nonzero in at least one of B tokens, for each B.

    `masks` [T, k] (bool: nonzero) holds T token rows. For each token i, a group starts with i and continues
    with B_max - 1 other tokens in a seeded random order; the group of B is its first B tokens (so B = 1 is
    exactly the mean density of the T tokens, and the value never decreases with B). Mean over the T groups."""
    masks = torch.as_tensor(masks).bool()
    if masks.dim() != 2 or masks.shape[0] == 0:
        raise InputError(f"masks must be [tokens, channels] with at least one token, got {tuple(masks.shape)}")
    bs = sorted(set(int(b) for b in batches))
    if not bs or bs[0] < 1:
        raise InputError(f"batches must be positive integers, got {list(batches)}")
    t = masks.shape[0]
    if bs[-1] > t:
        raise InputError(f"batch {bs[-1]} needs at least that many distinct tokens; only {t} were sampled "
                         "(raise union_tokens)")
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(t, t, generator=g)
    keys.fill_diagonal_(-1.0)  # token i leads its own group
    order = keys.argsort(dim=1)[:, : bs[-1]]
    out: dict[int, float] = {}
    running = torch.zeros_like(masks)
    for b in range(bs[-1]):
        running |= masks[order[:, b]]
        if b + 1 in bs:
            out[b + 1] = float(running.float().mean())
    return out


def independent_density(sparsity: float, batches: tuple[int, ...] | list[int]) -> dict[int, float]:
    """The union density if every entry were zero independently with probability `sparsity`: 1 - s^B."""
    return {int(b): 1.0 - sparsity ** int(b) for b in batches}


def check_sparsity(s: Any, what: str = "sparsity") -> float:
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0 <= s < 1:
        raise InputError(f"{what + ': ' if what else ''}must be in [0, 1) (the fraction of zeroed inputs), got {s!r}")
    return float(s)


# ---- methods (one registry) ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupSample:
    """A calibration sample of one input tensor: token rows [R, k], the linears reading it, the number of
    their weights, and sum over them of each column's squared norm |W[:, i]|^2 (for the greedy proxy)."""

    rows: torch.Tensor
    members: tuple[str, ...]
    weights: int
    col_sq: torch.Tensor
    target: float


@dataclass(frozen=True)
class Teal:
    """Magnitude thresholds (TEAL). `allocation`: uniform (each input its target), greedy (one model-wide
    target spread over the inputs by a per-input proxy) or block_greedy (TEAL's block-wise greedy on the
    block output error), see the module doc; `step`: the greedies' sparsity increment (block_greedy: of the
    block's smallest input group); `block_windows`: calibration windows block_greedy runs each block on."""

    name: ClassVar[str] = "teal"
    allocation: Literal["uniform", "greedy", "block_greedy"] = "uniform"
    step: float = 0.05
    block_windows: int = 1

    def __post_init__(self) -> None:
        if self.allocation not in ("uniform", "greedy", "block_greedy"):
            raise InputError(f"teal: allocation must be uniform, greedy or block_greedy, got {self.allocation!r}")
        if isinstance(self.step, bool) or not isinstance(self.step, (int, float)) or not 0 < self.step <= 0.5:
            raise InputError(f"teal: step must be in (0, 0.5], got {self.step!r}")
        if isinstance(self.block_windows, bool) or not isinstance(self.block_windows, int) or self.block_windows < 1:
            raise InputError(f"teal: block_windows must be a positive integer, got {self.block_windows!r}")

    def model_wide_target(self, groups: dict[str, GroupSample]) -> float:
        targets = {g.target for g in groups.values()}
        if len(targets) != 1:
            raise InputError(f"teal: allocation {self.allocation} spreads one model-wide target; "
                             "give sparsity as one number")
        return targets.pop()

    def allocate(self, groups: dict[str, GroupSample],
                 block_error: Optional[Callable[[str, dict[str, float]], float]] = None,
                 blocks: Optional[dict[str, list[str]]] = None,
                 trace: Optional[list[dict[str, Any]]] = None) -> dict[str, float]:
        """Group -> sparsity to calibrate its threshold to. block_greedy needs `blocks` (block -> its group
        keys) and `block_error(block, {group: sparsity})` (see `block_greedy_allocation`)."""
        if self.allocation == "uniform":
            return {k: g.target for k, g in groups.items()}
        target = self.model_wide_target(groups)
        if self.allocation == "greedy":
            return greedy_allocation(groups, target, self.step)
        if block_error is None or blocks is None:
            raise InputError("teal: allocation block_greedy needs the decoder blocks to run (calibrate provides them)")
        return block_greedy_allocation(groups, blocks, block_error, target, self.step, trace)


METHODS: dict[str, type] = {Teal.name: Teal}


def get_method(name: str, options: dict[str, Any] | None = None) -> Teal:
    """The activation-sparsity method `name` built with its recipe `options`."""
    cls = registry_get(METHODS, name, "activation sparsity method")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options or {}) - known)
    if unknown:
        raise InputError(f"{cls.name}: unknown option(s) {unknown}; it takes {sorted(known)}")
    return cls(**(options or {}))


def _error_curve(g: GroupSample, levels: torch.Tensor) -> torch.Tensor:
    a = g.rows.abs().reshape(-1)
    contrib = (g.rows.double() ** 2 * g.col_sq.double()).reshape(-1)
    cs = contrib[a.argsort()].cumsum(0)
    total = float(cs[-1]) if cs.numel() and float(cs[-1]) > 0 else 1.0
    idx = torch.ceil(levels.double() * a.numel()).long()
    return torch.where(idx > 0, cs[(idx - 1).clamp(min=0)], torch.zeros(())) / total


def greedy_allocation(groups: dict[str, GroupSample], target: float, step: float) -> dict[str, float]:
    """Raise, step by step, the group whose relative-error proxy grows least per weight it frees, until the
    weight-weighted mean sparsity reaches `target` (it may overshoot by less than one step of one group)."""
    n_levels = int(math.floor((1 - 1e-9) / step)) + 1
    levels = torch.arange(n_levels, dtype=torch.float64) * step
    curves = {k: _error_curve(g, levels) for k, g in groups.items()}
    at = dict.fromkeys(groups, 0)
    total_w = sum(g.weights for g in groups.values())
    reached = 0.0
    while reached < target * total_w - 1e-9:
        best, cost = None, math.inf
        for k, g in groups.items():
            if at[k] + 1 < n_levels:
                c = float(curves[k][at[k] + 1] - curves[k][at[k]]) / g.weights
                if c < cost:
                    best, cost = k, c
        if best is None:
            break
        at[best] += 1
        reached += groups[best].weights * step
    return {k: float(levels[i]) for k, i in at.items()}


def block_greedy_allocation(groups: dict[str, GroupSample], blocks: dict[str, list[str]],
                            block_error: Callable[[str, dict[str, float]], float], target: float, step: float,
                            trace: Optional[list[dict[str, Any]]] = None) -> dict[str, float]:
    """TEAL's block-wise greedy. For each block (block -> its group keys), from sparsity 0 everywhere: while
    the weight-weighted mean sparsity of its groups is below `target`, try raising each group g by
    step * W_min / W_g (W: the groups' weights; candidates that would reach 1 are skipped), take the one with
    the smallest `block_error(block, sparsities)` (ties: the first in the block's order). Every raise adds
    step * W_min / W_block to the mean, so it ends in [target, target + that). `trace`, if given, receives
    one record per step: {block, before, candidates: {group: error}, chosen}."""
    out: dict[str, float] = {}
    for block, keys in blocks.items():
        w = {k: groups[k].weights for k in keys}
        total, w_min = sum(w.values()), min(w.values())
        inc = {k: step * w_min / w[k] for k in keys}
        n = dict.fromkeys(keys, 0)  # raises per group: its sparsity is n * inc (no float drift)
        while sum(n.values()) * step * w_min < target * total - 1e-9 * total:
            now = {k: n[k] * inc[k] for k in keys}
            cands: dict[str, float] = {}
            for k in keys:
                if (n[k] + 1) * inc[k] < 1 - 1e-12:
                    cands[k] = float(block_error(block, {**now, k: (n[k] + 1) * inc[k]}))
            if not cands:
                break
            best = min(cands, key=lambda k: cands[k])
            if trace is not None:
                trace.append({"block": block, "before": now, "candidates": cands, "chosen": best})
            n[best] += 1
        out.update({k: n[k] * inc[k] for k in keys})
    return out


# ---- the recipe section ------------------------------------------------------------------------------------------


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not (key in TENSOR_TYPES or _GLOB_CHARS & set(key)):
        raise InputError(f"unknown tensor type {key!r}; use one of {', '.join(TENSOR_TYPES)} "
                         "or a layer-name glob such as '*.mlp.down_proj'")
    return key


class ActivationSparsity(Strict):
    """`activation_sparsity:` -- thresholds on linear inputs (and ReLU-fication), applied during evaluation."""

    method: str = "teal"
    #: fraction of zeroed entries in [0, 1): one number for every target, or {tensor type or glob: fraction}
    sparsity: Union[float, dict[str, float]] = 0.5
    #: tensor types (qkv, o, up, down) or layer-name globs; default all four types (with one number)
    targets: Optional[list[str]] = None
    relufication: bool = False
    options: dict[str, Any] = Field(default_factory=dict)
    #: token rows of each input kept (seeded reservoir) from the calibration windows for its threshold
    calibration_tokens: int = Field(512, ge=1)
    #: batch sizes for the union of nonzeros, and the evaluation tokens sampled (seeded reservoir) for it
    batches: list[int] = Field(default_factory=lambda: list(DEFAULT_BATCHES), min_length=1)
    union_tokens: int = Field(512, ge=1)
    seed: int = 0

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        return as_value_error(lambda n: registry_get(METHODS, n, "activation sparsity method"), v) and v

    @field_validator("sparsity")
    @classmethod
    def _fractions(cls, v: Any) -> Any:
        if isinstance(v, dict):
            if not v:
                raise ValueError("give one fraction or a mapping {qkv: 0.4, o: 0.5, up: 0.5, down: 0.5}")
            for k, s in v.items():
                as_value_error(_check_key, k)
                as_value_error(lambda x, k=k: check_sparsity(x, str(k)), s)
        else:
            as_value_error(lambda x: check_sparsity(x, ""), v)
        return v

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        if v is not None:
            if not v:
                raise ValueError("give at least one tensor type or glob")
            for t in v:
                as_value_error(_check_key, t)
        return v

    @field_validator("batches")
    @classmethod
    def _batches(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError(f"batch sizes must be positive, got {v}")
        return sorted(set(v) | {1})  # B = 1: the single-token density every cost model starts from

    @model_validator(mode="after")
    def _consistent(self) -> "ActivationSparsity":
        if isinstance(self.sparsity, dict) and self.targets is not None:
            raise ValueError("a per-type sparsity mapping names its own targets; drop `targets`")
        as_value_error(lambda o: get_method(self.method, o), self.options)
        if isinstance(self.sparsity, dict) and self.options.get("allocation") in ("greedy", "block_greedy"):
            raise ValueError(f"options.allocation {self.options['allocation']} spreads one model-wide target: "
                             "give sparsity as one number")
        if max(self.batches) > self.union_tokens:
            raise ValueError(f"union_tokens ({self.union_tokens}) must be at least the largest batch "
                             f"({max(self.batches)}): a group of B tokens needs B distinct tokens")
        return self

    def plan(self) -> dict[str, float]:
        """Target key (tensor type or glob) -> sparsity, in the recipe's order."""
        if isinstance(self.sparsity, dict):
            return dict(self.sparsity)
        return dict.fromkeys(self.targets or TENSOR_TYPES, float(self.sparsity))


# ---- model surgery ------------------------------------------------------------------------------------------


def resolve_targets(model: Any, section: ActivationSparsity, types: Any = None) -> dict[str, tuple[str | None, float]]:
    """Full linear name -> (tensor type or None, target sparsity). Tensor types first, then globs, which
    override the types on the linears they match (as `nmx.quant.tensor_types.activation_formats`)."""
    from nmx.model.layers import match_linears
    from nmx.quant.tensor_types import resolve_tensor_types

    plan = section.plan()
    if types is None and any(k in TENSOR_TYPES for k in plan):
        types = resolve_tensor_types(model)
    out: dict[str, tuple[str | None, float]] = {}
    for key, s in plan.items():
        if key in TENSOR_TYPES:
            out.update({n: (key, s) for n in types.linears(key)})
    for key, s in plan.items():
        if key not in TENSOR_TYPES:
            out.update({n: (types.type_of(n) if types is not None else None, s) for n in match_linears(model, [key])})
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return dict(sorted(out.items(), key=lambda kv: order[kv[0]]))


def relufy(model: Any, types: Any = None) -> list[str]:
    """Replace the activation function of every decoder layer's FFN by ReLU (the FFN: the module holding the
    `up` linears; its activation: its `act_fn` attribute, as Llama / Mistral / Qwen name it). Returns the
    modules changed; sets `config.hidden_act = "relu"` so a saved model says what it computes."""
    from nmx.quant.tensor_types import resolve_tensor_types

    types = types or resolve_tensor_types(model)
    parents = sorted({m.rpartition(".")[0] for m in types.members["up"]})
    modules = dict(model.named_modules())
    changed = []
    for i in range(types.layers):
        for rel in parents:
            name = f"{types.prefix}.{i}.{rel}" if rel else f"{types.prefix}.{i}"
            ffn = modules[name]
            if not isinstance(getattr(ffn, "act_fn", None), torch.nn.Module):
                raise InputError(f"relufication: {name} ({type(ffn).__name__}) has no act_fn module to replace; "
                                 "ReLU-fication supports Llama-style gated FFNs")
            ffn.act_fn = torch.nn.ReLU()
            changed.append(f"{name}.act_fn")
    if hasattr(model, "config"):
        model.config.hidden_act = "relu"
    return changed


class _Reservoir:
    """A seeded uniform sample of at most `cap` token rows from every call's [..., k] input."""

    def __init__(self, cap: int, seed: int, dtype: torch.dtype):
        self.cap, self.dtype = cap, dtype
        self.gen = torch.Generator().manual_seed(seed)
        self.keys = torch.empty(0)
        self.rows: torch.Tensor | None = None

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.reshape(-1, rows.shape[-1])
        keys = torch.rand(rows.shape[0], generator=self.gen)
        take = min(self.cap, rows.shape[0])
        keys, idx = keys.topk(take, largest=False)
        new = rows[idx.to(rows.device)].detach().to("cpu", self.dtype)
        if self.rows is None:
            self.keys, self.rows = keys, new
            return
        keys = torch.cat([self.keys, keys])
        rows = torch.cat([self.rows, new])
        if keys.numel() > self.cap:
            keys, idx = keys.topk(self.cap, largest=False)
            rows = rows[idx]
        self.keys, self.rows = keys, rows


def _group_key(name: str, ttype: str | None, target: float, types: Any) -> str:
    """Linears of one decoder layer and tensor type read one tensor: they share a calibration sample."""
    if ttype is None or types is None or not name.startswith(types.prefix + "."):
        return name
    index = name[len(types.prefix) + 1:].split(".", 1)[0]
    return f"{types.prefix}.{index}:{ttype}:{target}"


@torch.no_grad()
def calibrate(model: Any, windows: torch.Tensor, plan: dict[str, tuple[str | None, float]], method: Teal,
              tokens: int = 512, seed: int = 0, types: Any = None,
              progress: Callable[[int, int], None] | None = None,
              trace: Optional[list[dict[str, Any]]] = None) -> dict[str, dict[str, Any]]:
    """Per targeted linear: {type, target (the allocated sparsity), threshold, calibration_sparsity (the
    fraction of its calibration sample the threshold zeroes)}. `windows` [n, seq_len] token ids. `trace`
    (block_greedy only) receives the greedy's steps (see `block_greedy_allocation`)."""
    modules = dict(model.named_modules())
    if method.allocation == "block_greedy" and types is None:
        from nmx.quant.tensor_types import resolve_tensor_types

        types = resolve_tensor_types(model)
    groups_of: dict[str, list[str]] = {}
    for name, (ttype, s) in plan.items():
        groups_of.setdefault(_group_key(name, ttype, s, types), []).append(name)
    samples = {g: _Reservoir(tokens, seed, torch.float32) for g in groups_of}
    hooks = [modules[members[0]].register_forward_pre_hook(lambda _m, args, r=samples[g]: r.add(args[0]))
             for g, members in groups_of.items()]
    blocks: dict[str, list[str]] = {}
    block_inputs: dict[str, list[tuple[tuple, dict]]] = {}
    if method.allocation == "block_greedy":
        blocks = _blocks_of(groups_of, types)
        block_inputs = {b: [] for b in blocks}

        def keep(b: str) -> Callable:
            def hook(_m: Any, args: tuple, kwargs: dict) -> None:
                if len(block_inputs[b]) < method.block_windows:
                    block_inputs[b].append((args, dict(kwargs)))
            return hook
        hooks += [modules[b].register_forward_pre_hook(keep(b), with_kwargs=True) for b in blocks]
    device = next(model.parameters()).device
    try:
        for i, w in enumerate(windows):
            model(w[None].to(device), use_cache=False)
            if progress:
                progress(i + 1, len(windows))
    finally:
        for h in hooks:
            h.remove()
    groups = {}
    for g, members in groups_of.items():
        rows = samples[g].rows
        if rows is None:
            raise InputError(f"activation_sparsity: {members[0]} never ran in a forward pass; target other linears")
        col_sq = sum(modules[m].weight.detach().float().pow(2).sum(0).cpu() for m in members)
        groups[g] = GroupSample(rows, tuple(members), sum(modules[m].weight.numel() for m in members), col_sq,
                                plan[members[0]][1])
    if method.allocation == "block_greedy":
        block_error = _block_error(modules, groups, block_inputs)
        alloc = method.allocate(groups, block_error, blocks, trace)
    else:
        alloc = method.allocate(groups)
    out: dict[str, dict[str, Any]] = {}
    for g, sample in groups.items():
        a = sample.rows.abs()
        t = magnitude_threshold(a, alloc[g])
        cal = float((a <= t).float().mean())  # t = 0 (target 0): the natural zeros
        for m in sample.members:
            out[m] = {"type": plan[m][0], "target": alloc[g], "threshold": t, "calibration_sparsity": cal,
                      "calibration_rows": int(a.shape[0])}
    order = list(plan)
    return dict(sorted(out.items(), key=lambda kv: order.index(kv[0])))


def _blocks_of(groups_of: dict[str, list[str]], types: Any) -> dict[str, list[str]]:
    """Decoder block module name -> the keys of the input groups inside it (block_greedy)."""
    if types is None:
        raise InputError("teal: allocation block_greedy needs the model's decoder blocks (a Llama-style model)")
    head = types.prefix + "."
    blocks: dict[str, list[str]] = {}
    for g, members in groups_of.items():
        if not members[0].startswith(head):
            raise InputError(f"teal: allocation block_greedy allocates within decoder blocks; {members[0]} is "
                             "outside them (target only decoder-layer linears)")
        index = members[0][len(head):].split(".", 1)[0]
        blocks.setdefault(f"{types.prefix}.{index}", []).append(g)
    return blocks


def _block_output(module: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    out = module(*args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def _block_error(modules: dict[str, Any], groups: dict[str, GroupSample],
                 block_inputs: dict[str, list[tuple[tuple, dict]]]) -> Callable[[str, dict[str, float]], float]:
    """block_error(block, {group: sparsity}): ||Y - Y_dense|| / ||Y_dense|| over the block's kept inputs, with
    each group's linears thresholded at the threshold calibrated to its sparsity (as `calibrate` sets it)."""
    dense: dict[str, list[torch.Tensor]] = {}
    abs_rows = {k: g.rows.abs() for k, g in groups.items()}
    thresholds: dict[tuple[str, float], float] = {}

    def threshold(k: str, s: float) -> float:
        if (k, s) not in thresholds:
            thresholds[k, s] = magnitude_threshold(abs_rows[k], s)
        return thresholds[k, s]

    @torch.no_grad()
    def error(block: str, sparsities: dict[str, float]) -> float:
        module = modules[block]
        if block not in dense:
            if not block_inputs.get(block):
                raise InputError(f"teal: block_greedy: decoder block {block} never ran in a forward pass")
            dense[block] = [_block_output(module, a, kw).double() for a, kw in block_inputs[block]]
        handles = []
        try:
            for k, s in sparsities.items():
                t = threshold(k, s)
                if s > 0:
                    for m in groups[k].members:
                        handles.append(modules[m].register_forward_pre_hook(
                            lambda _m, args, t=t: (threshold_input(args[0], t), *args[1:])))
            num = den = 0.0
            for (a, kw), y0 in zip(block_inputs[block], dense[block], strict=True):
                y = _block_output(module, a, kw).double()
                num += float((y - y0).pow(2).sum())
                den += float(y0.pow(2).sum())
        finally:
            for h in handles:
                h.remove()
        return math.sqrt(num / den) if den > 0 else math.sqrt(num)

    return error


class _Tap:
    """The forward pre-hook of one targeted linear: threshold its input, count zeros, sample token masks."""

    def __init__(self, threshold: float, pool: int, seed: int):
        self.threshold = threshold
        self.zeros = 0
        self.total = 0
        self.masks = _Reservoir(pool, seed, torch.bool)  # one seed for every tap: the same tokens everywhere

    def __call__(self, _module: Any, args: tuple) -> tuple:
        x = threshold_input(args[0], self.threshold)
        nz = x != 0
        self.total += nz.numel()
        self.zeros += nz.numel() - int(nz.sum())
        self.masks.add(nz)
        return (x, *args[1:])


@dataclass
class ActivationSparsifier:
    """Thresholds attached to a model (`taps`: linear name -> hook state); `report()` gives result.json's block."""

    section: ActivationSparsity
    layers: dict[str, dict[str, Any]]
    weights: dict[str, int]
    taps: dict[str, _Tap] = field(default_factory=dict)
    handles: list[Any] = field(default_factory=list)
    relufied: list[str] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def report(self) -> dict[str, Any]:
        """Per layer: type, target, threshold, calibration_sparsity, `sparsity` (the fraction of zero inputs
        seen on the evaluation text), union and independence densities by batch; model-wide means
        (weighted by the linear's weights: the fraction of weight bytes; and unweighted)."""
        sec = self.section
        layers: dict[str, Any] = {}
        for name, tap in self.taps.items():
            rec = dict(self.layers[name])
            rec["weights"] = self.weights[name]
            rec["sparsity"] = tap.zeros / tap.total if tap.total else None
            rows = tap.masks.rows
            rec["union_tokens"] = 0 if rows is None else int(rows.shape[0])
            if rows is not None and rows.shape[0] >= max(sec.batches):
                union = union_density(rows, sec.batches, sec.seed)
                rec["union_density"] = {str(b): d for b, d in union.items()}
                rec["independent_density"] = {str(b): d for b, d in
                                              independent_density(1.0 - union[1], sec.batches).items()}
            layers[name] = rec

        def mean(get: Callable[[dict], Any], weighted: bool = True, where: Callable[[dict], bool] = lambda r: True
                 ) -> float | None:
            vals = [(get(r), r["weights"] if weighted else 1) for r in layers.values() if where(r)]
            vals = [(v, w) for v, w in vals if v is not None]
            return sum(v * w for v, w in vals) / sum(w for _, w in vals) if vals else None

        has_union = all("union_density" in r for r in layers.values()) and layers

        def block(where: Callable[[dict], bool] = lambda r: True) -> dict[str, Any]:
            b: dict[str, Any] = {"sparsity": mean(lambda r: r["sparsity"], where=where),
                                 "sparsity_unweighted": mean(lambda r: r["sparsity"], False, where),
                                 "target": mean(lambda r: r["target"], where=where),
                                 "calibration_sparsity": mean(lambda r: r["calibration_sparsity"], where=where)}
            if has_union:
                for key in ("union_density", "independent_density"):
                    b[key] = {str(bs): mean(lambda r, k=str(bs), key=key: r[key][k], where=where) for bs in sec.batches}
            return b

        by_type = {t: block(lambda r, t=t: r["type"] == t) for t in TENSOR_TYPES
                   if any(r["type"] == t for r in layers.values())}
        return {"method": sec.method, "options": dict(sec.options), "relufication": sec.relufication,
                "relufied": len(self.relufied), "calibration": self.calibration, "batches": list(sec.batches),
                "model_wide": block(), "by_type": by_type, "layers": layers,
                "notes": ["sparsity: fraction of zero entries (thresholded or natural) the hooks passed on over the "
                          "whole evaluation; union_density[B]: fraction of input channels nonzero in at least one "
                          "of B evaluation tokens from different positions (the weight columns a GEMV over B "
                          "tokens reads), measured on union_tokens sampled tokens; independent_density[B]: "
                          "1 - s^B with s the same tokens' zero fraction; means weighted by weights"]
                + (["relufication without fine-tuning: the FFN computes ReLU where it was trained with SiLU; "
                    "the perplexity is that of the unrecovered model"] if sec.relufication else [])}


def attach(model: Any, layers: dict[str, dict[str, Any]], section: ActivationSparsity) -> ActivationSparsifier:
    """Register the thresholding hooks (one per linear of `layers`, from `calibrate`)."""
    modules = dict(model.named_modules())
    sp = ActivationSparsifier(section, layers, {n: modules[n].weight.numel() for n in layers})
    for name, rec in layers.items():
        tap = _Tap(rec["threshold"], section.union_tokens, section.seed)
        sp.taps[name] = tap
        sp.handles.append(modules[name].register_forward_pre_hook(tap))
    return sp


def apply_activation_sparsity(loaded: Any, section: ActivationSparsity, calibration: Any,
                              progress: Callable[[str, int, int], None] | None = None) -> ActivationSparsifier:
    """ReLU-fy (if asked), calibrate the thresholds on `calibration` (the recipe's Calibration section) and
    attach them to `loaded.model`. Returns the attached state; its `report()` after the evaluation."""
    from nmx.eval.samples import calibration_windows
    from nmx.eval.text import load_text
    from nmx.quant.tensor_types import resolve_tensor_types

    model = loaded.model
    method = get_method(section.method, section.options)
    needs_types = (section.relufication or any(k in TENSOR_TYPES for k in section.plan())
                   or method.allocation == "block_greedy")
    types = resolve_tensor_types(model) if needs_types else None
    relufied = relufy(model, types) if section.relufication else []
    plan = resolve_targets(model, section, types)
    windows = calibration_windows(loaded.tokenizer, load_text(calibration.text), calibration.samples,
                                  calibration.seq_len, calibration.seed)
    layers = calibrate(model, windows, plan, method, section.calibration_tokens, section.seed, types,
                       (lambda i, n: progress("calibrating thresholds", i, n)) if progress else None)
    sp = attach(model, layers, section)
    sp.relufied = relufied
    sp.calibration = {"text": calibration.text, "windows": int(windows.shape[0]), "seq_len": int(windows.shape[1]),
                      "seed": calibration.seed, "rows_per_input": section.calibration_tokens}
    log.info("activation sparsity: %d linears thresholded%s", len(layers),
             f", {len(relufied)} FFN activations replaced by ReLU" if relufied else "")
    return sp


def union_table(block: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows (scope, batch, measured union density, independence guess, ratio) from a result's block."""
    rows = []
    scopes = {"model": block["model_wide"], **{t: b for t, b in block.get("by_type", {}).items()}}
    for scope, b in scopes.items():
        for bs in block["batches"]:
            u = (b.get("union_density") or {}).get(str(bs))
            ind = (b.get("independent_density") or {}).get(str(bs))
            rows.append({"scope": scope, "batch": bs, "sparsity": b["sparsity"], "union_density": u,
                         "independent_density": ind, "ratio": (u / ind) if u is not None and ind else None})
    return rows
