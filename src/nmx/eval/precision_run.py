"""`nmx search-precision`: the greedy mantissa-length search (nmx.eval.precision_search) on a real
model, with calibration perplexity as its quality.

The recipe's model is loaded and compressed once with everything but its activation formats
(sparsity, weight formats); each point then hooks BFP formats `bfp_m{m}_g{G}` onto the linears of
each tensor type (nmx.quant.tensor_types) and scores the perplexity of the *calibration* text
(`calibration.text`, `calibration.samples` windows of `calibration.seq_len`), which must differ from
the evaluation text. The reference is the same model with unquantized activations (A16). BOPs per
token come from nmx.quant.bops (MACs x weight bits x activation bits, scales included).

G (the group) is the recipe's: the BFP group of `quantization.activations` (one format, or all the
per-type formats with one group); without activation formats, `group` (default 64). The group is
padded where it does not divide a linear's input (as every nmx format pads; padding is not stored
beyond the last partial group's bytes).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

from nmx.errors import InputError
from nmx.eval.precision_search import (DEFAULT_STARTS, Criterion, Lengths, Point, check_lengths, check_max_iter,
                                       check_tolerance, greedy_search, sensitivity_scan)

log = logging.getLogger(__name__)

METRICS = ("ppl",)


def bfp_name(m: int, group: int) -> str:
    return f"bfp_m{m}_g{group}"


def search_group(recipe: Any, group: Optional[int]) -> int:
    """The BFP group of the search (module doc); InputError for activation formats that are not BFP."""
    from nmx import formats
    from nmx.formats.bfp import BFPFormat

    qz = recipe.quantization
    spec = qz.activations if qz else None
    names = [spec] if isinstance(spec, str) else list(spec.values()) if spec else []
    groups = set()
    for n in names:
        f = formats.get(n)
        if not isinstance(f, BFPFormat):
            raise InputError(f"quantization.activations: {n} is not a BFP format (bfp_mM_gG); the search varies BFP "
                             "mantissa lengths -- give a BFP format or none")
        groups.add(f.block_size)
    if len(groups) > 1:
        raise InputError(f"quantization.activations: BFP groups {sorted(groups)} differ; the search uses one group")
    g = groups.pop() if groups else (group or 64)
    if group is not None and group != g:
        raise InputError(f"--group {group} differs from the recipe's BFP group {g}")
    if not 1 <= g <= 1 << 16:
        raise InputError(f"--group must be in 1..65536, got {g}")
    return g


def check_search(recipe: Any, tolerance: float, max_iter: int, metric: str, group: Optional[int],
                 starts: tuple[int, ...] = DEFAULT_STARTS) -> dict[str, Any]:
    """Every cheap check, before a model loads: returns the texts and the group."""
    from nmx.eval.text import load_text

    check_tolerance(tolerance)
    check_max_iter(max_iter)
    check_lengths(list(starts), "starting lengths")
    if metric not in METRICS:
        raise InputError(f"--metric {metric!r} is not supported; use one of {', '.join(METRICS)}")
    g = search_group(recipe, group)
    cal, ev = load_text(recipe.calibration.text), load_text(recipe.evaluation.text)
    if cal.source == ev.source or cal.text == ev.text:
        raise InputError(f"calibration.text ({recipe.calibration.text}) is the evaluation text; the search must tune on "
                         "text held apart from evaluation -- give another calibration.text")
    return {"calibration": cal, "group": g}


def run_search(recipe: Any, tolerance: float, *, max_iter: int = 32, metric: str = "ppl", sensitivity: bool = False,
               group: Optional[int] = None, starts: tuple[int, ...] = DEFAULT_STARTS,
               progress: Callable[[str, int, int], None] | None = None, loaded: Any = None) -> dict[str, Any]:
    """Run the search; returns the record (points, chosen lengths, BOPs, the chosen recipe as a dict)."""
    import torch

    from nmx.eval.perplexity import perplexity
    from nmx.model.compress import compress
    from nmx.model.layers import match_linears
    from nmx.model.sources import load_model
    from nmx.quant import attach_activation_formats
    from nmx.quant.bops import operand_bits
    from nmx.quant.tensor_types import TENSOR_TYPES, activation_formats, resolve_tensor_types
    from nmx.recipe import load_recipe

    checked = check_search(recipe, tolerance, max_iter, metric, group, starts)
    cal_text, g = checked["calibration"], checked["group"]
    t0 = time.perf_counter()
    base = recipe.as_dict()
    qz = dict(base.get("quantization") or {})
    weights_only = load_recipe(base={**base, "quantization": ({**qz, "activations": None} if qz else None)})
    loaded = loaded if loaded is not None else load_model(recipe.model, recipe.device)
    compress(loaded, weights_only, progress)
    model = loaded.model
    types = resolve_tensor_types(model)
    explicit_targets = recipe.quantization is not None and "targets" in recipe.quantization.model_fields_set
    targets = list(recipe.quantization.targets) if explicit_targets else None
    probe = activation_formats(model, {t: bfp_name(8, g) for t in TENSOR_TYPES}, targets)
    modules = dict(model.named_modules())
    wfmt = recipe.quantization.weights if recipe.quantization else None
    w_targets = set(match_linears(model, recipe.quantization.targets)) if wfmt else set()
    # per type: sum over its linears of MACs per token x weight bits
    mw = {t: 0.0 for t in TENSOR_TYPES}
    for name in probe:
        mod = modules[name]
        mw[types.type_of(name)] += float(mod.in_features) * mod.out_features * operand_bits(
            wfmt if name in w_targets else None)

    def bops(lengths: Lengths) -> float:
        return sum(mw[t] * operand_bits(bfp_name(m, g) if m is not None else None)
                   for t, m in zip(TENSOR_TYPES, lengths))

    cal = recipe.calibration

    def score() -> float:
        with torch.no_grad():
            return perplexity(model, loaded.tokenizer, cal_text, cal.seq_len, cal.samples)["perplexity"]

    def evaluate(lengths: Lengths) -> float:
        spec = {t: bfp_name(m, g) for t, m in zip(TENSOR_TYPES, lengths) if m is not None}
        hooks = attach_activation_formats(model, activation_formats(model, spec, targets)) if spec else []
        try:
            return score()
        finally:
            for h in hooks:
                h.remove()

    reference = score()
    a16 = bops((None,) * len(TENSOR_TYPES))
    crit = Criterion(reference, tolerance)
    budget = max_iter if not sensitivity else len(TENSOR_TYPES) * 13

    def step(p: Point) -> None:
        log.info("point %d: %s bops %.4g ppl %.4f %s", p.iteration, p.lengths, p.bops, p.quality,
                 "accepted" if p.accepted else "rejected")
        if progress:
            progress("evaluating points", p.iteration, budget)

    record: dict[str, Any] = {"kind": "precision-search", "mode": "sensitivity" if sensitivity else "greedy",
                              "metric": metric, "model": loaded.name, "group": g, "weights": wfmt,
                              "calibration": {"text": cal_text.name, "samples": cal.samples, "seq_len": cal.seq_len},
                              "reference_ppl": reference, "a16_bops_per_token": a16,
                              "tensor_types": types.as_dict()}
    if sensitivity:
        res, shortest = sensitivity_scan(TENSOR_TYPES, bops, evaluate, crit, progress=step)
        record["shortest_passing"] = shortest
        chosen = tuple(shortest[t] for t in TENSOR_TYPES)
    else:
        res = greedy_search(TENSOR_TYPES, bops, evaluate, crit, starts=starts, max_iter=max_iter, progress=step)
        chosen = res.best.lengths
    record.update(res.as_dict())
    record["chosen_lengths"] = dict(zip(TENSOR_TYPES, chosen))
    chosen_bops = bops(chosen)
    record["chosen_bops_per_token"] = chosen_bops
    record["bops_reduction_vs_a16"] = a16 / chosen_bops
    record["evaluations"] = res.iterations + 1  # + the A16 reference
    record["wall_s"] = time.perf_counter() - t0
    acts = {t: bfp_name(m, g) for t, m in zip(TENSOR_TYPES, chosen) if m is not None}
    out_recipe = {**base, "quantization": {**(qz or {}), "activations": acts or None}}
    load_recipe(base=out_recipe)  # what we write must be a valid recipe
    record["recipe"] = out_recipe
    return record
