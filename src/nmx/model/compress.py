"""Prune and quantize a loaded model as a recipe says, and account for what it stores.

Pruning that needs calibration (Wanda's input norms, SparseGPT's Hessians) runs the
sequential layer-wise loop of `calibrate`: each decoder layer sees the outputs of the
already-pruned layers before it. Weight quantization follows pruning (SparseGPT can do
both jointly, with error feedback); activation quantization is attached as hooks and
acts at evaluation time.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from typing import Any, Callable, MutableMapping

import torch

from nmx import formats
from nmx.eval.samples import calibration_windows
from nmx.eval.text import load_text
from nmx.model.calibrate import sequential
from nmx.model.layers import DEFAULT_TARGETS, match_linears
from nmx.model.sources import LoadedModel
from nmx.quant import attach_activation_formats, quantize_weights
from nmx.quant.bops import bops_block
from nmx.quant.tensor_types import activation_formats, linear_types
from nmx.recipe import Recipe
from nmx.sparsity.methods import LayerStats, get_method
from nmx.sparsity.patterns import NMPattern, parse_pattern
from nmx.sparsity.storage import weight_storage

log = logging.getLogger(__name__)

#: Set by a caller that runs many recipes on fresh copies of one pristine model (nmx.sweep's workers):
#: a mapping in which `compress` keeps the pruned weights and masks, keyed by everything that decides
#: them, so recipes that differ only after pruning (weight formats, KV cache, evaluation, hardware)
#: calibrate and prune once. Unset (None) everywhere else.
SHARED_PRUNING: ContextVar[MutableMapping[str, Any] | None] = ContextVar("SHARED_PRUNING", default=None)


def _pruning_key(recipe: Recipe) -> str:
    """What decides the pruned weights of a pristine model: the sparsity spec, the calibration when the
    method uses it, and the weight format when SparseGPT quantizes jointly."""
    sp, qz = recipe.sparsity, recipe.quantization
    calibrated = get_method(sp.method).needs != "nothing"
    joint = sp.method == "sparsegpt" and qz is not None and qz.weights is not None
    return json.dumps({"model": recipe.model, "device": recipe.device, "sparsity": sp.model_dump(mode="json"),
                       "calibration": recipe.calibration.model_dump(mode="json") if calibrated else None,
                       "joint": qz.model_dump(mode="json") if joint else None}, sort_keys=True)


def _prune_with_calibration(
    loaded: LoadedModel, recipe: Recipe, targets: dict[str, torch.nn.Linear], method: Any, prune: Callable,
    progress: Callable[[str, int, int], None] | None,
) -> None:
    cal = recipe.calibration
    text = load_text(cal.text)
    samples = calibration_windows(loaded.tokenizer, text, cal.samples, cal.seq_len, cal.seed)
    hessian = method.needs == "hessian"

    def process(_i: int, prefix: str, _layer: torch.nn.Module, feed: Callable[[], None]) -> None:
        mine = {n: m for n, m in targets.items() if n.startswith(prefix + ".")}
        stats = {n: LayerStats(m.in_features, hessian=hessian) for n, m in mine.items()}
        hooks = [m.register_forward_pre_hook(lambda _m, args, s=stats[n]: s.add(args[0])) for n, m in mine.items()]
        try:
            feed()
        finally:
            for h in hooks:
                h.remove()
        for name, module in mine.items():
            prune(name, module, stats[name])

    layer_progress = (lambda i, n: progress("calibrating layers", i, n)) if progress else None
    sequential(loaded.model, samples, process, layer_progress)


def compress(
    loaded: LoadedModel, recipe: Recipe, progress: Callable[[str, int, int], None] | None = None
) -> dict[str, Any]:
    """Apply the recipe's sparsity and quantization to `loaded.model` in place; returns the
    per-layer record (shape, sparsity, N:M validity, bits) and the activation hooks."""
    model = loaded.model
    sp, qz = recipe.sparsity, recipe.quantization
    weight_fmt = qz.weights if qz else None
    masks: dict[str, torch.Tensor] = {}
    pruned_targets: dict[str, torch.nn.Linear] = match_linears(model, sp.targets) if sp else {}

    shared = SHARED_PRUNING.get() if sp else None
    key = _pruning_key(recipe) if shared is not None else None
    if key is not None and key in shared:  # pruned before, from the same pristine weights
        weights, saved = shared[key]
        with torch.no_grad():
            for name, module in pruned_targets.items():
                module.weight.copy_(weights[name])
        masks.update(saved)
    elif sp:
        method, pattern = get_method(sp.method), parse_pattern(sp.pattern)
        joint = weight_fmt is not None and sp.method == "sparsegpt" and sp.options.get("joint_quant", True)

        @torch.no_grad()
        def prune(name: str, module: torch.nn.Linear, stats: LayerStats | None) -> None:
            w = module.weight.detach().float()
            options = dict(sp.options)
            options.pop("joint_quant", None)
            if joint and name in _quant_targets(model, qz):
                fmt = formats.get(weight_fmt)
                options["quantizer"] = lambda group, full=w: fmt.rounder(group, tensor=full)
                options["quant_group"] = fmt.block_size  # None: one scale per row
            new, mask = method.prune(w, pattern, stats, **options)
            module.weight.copy_(new.to(module.weight.dtype))
            masks[name] = mask

        if method.needs == "nothing":
            for i, (name, module) in enumerate(pruned_targets.items()):
                prune(name, module, None)
                if progress:
                    progress("pruning", i + 1, len(pruned_targets))
        else:
            _prune_with_calibration(loaded, recipe, pruned_targets, method, prune, progress)
        if key is not None:
            shared[key] = ({n: m.weight.detach().clone() for n, m in pruned_targets.items()}, dict(masks))

    quant_targets = _quant_targets(model, qz) if qz else {}
    if weight_fmt:
        quantize_weights(quant_targets, weight_fmt)  # idempotent after a joint SparseGPT pass
    act_formats = activation_formats(model, qz.activations, _act_targets(qz)) if qz and qz.activations else {}
    modules = dict(model.named_modules())
    counted = {**pruned_targets, **quant_targets, **{n: modules[n] for n in act_formats}} \
        or match_linears(model, DEFAULT_TARGETS)
    types = linear_types(model, list(counted))  # before the hooks: a short traced forward
    act_sparse = _activation_sparsity(loaded, recipe, progress)  # before the fake-quant hooks: they see sparse inputs
    hooks = attach_activation_formats(model, act_formats)
    record = account(counted, set(pruned_targets), set(quant_targets) if weight_fmt else set(), recipe)
    record["activation_hooks"] = len(hooks)
    record["bops"] = bops_block({n: {"shape": rec["shape"], "nonzero": rec["nonzero"], "act_format": act_formats.get(n),
                                     "weight_format": weight_fmt if n in quant_targets else None,
                                     "tensor_type": types.get(n)} for n, rec in record["layers"].items()})
    record["masks"] = masks  # tensors: the runner saves them with --save-model, never into JSON
    if act_sparse is not None:  # the attached thresholds; the runner puts their report() in result.json
        record["activation_sparsity"] = act_sparse
    return record


def _activation_sparsity(loaded: LoadedModel, recipe: Recipe, progress: Callable[[str, int, int], None] | None):
    """The recipe's activation_sparsity section calibrated and attached (nmx.sparsity.activation), or None."""
    if recipe.activation_sparsity is None:
        return None
    from nmx.sparsity.activation import apply_activation_sparsity

    return apply_activation_sparsity(loaded, recipe.activation_sparsity, recipe.calibration, progress)


def _quant_targets(model: Any, qz: Any) -> dict[str, torch.nn.Linear]:
    """The linears `targets` selects: weights quantized, and activations when one format covers them all
    (a per-tensor-type mapping finds its linears itself, see `_act_targets`)."""
    return match_linears(model, qz.targets) if qz and (qz.weights or isinstance(qz.activations, str)) else {}


def _act_targets(qz: Any) -> list[str] | None:
    """The globs activations are restricted to: always for one format; for a per-tensor-type mapping
    only when the recipe sets `targets` (the tensor types find their linears in any architecture)."""
    return list(qz.targets) if isinstance(qz.activations, str) or "targets" in qz.model_fields_set else None


def layer_bits(weight: torch.Tensor, weight_fmt: str | None, pattern: Any | None) -> dict[str, Any]:
    """Storage of one weight for its real density (see `nmx.sparsity.storage.weight_storage`)."""
    rows, cols = weight.shape
    nonzero = int((weight != 0).sum())
    density = nonzero / (rows * cols)
    if isinstance(pattern, NMPattern) and density > pattern.density + 1e-9:
        raise AssertionError(f"weight holds {density:.3f} of nonzeros, more than {pattern} allows")
    st = weight_storage((rows, cols), density, weight_fmt, pattern)
    return {"shape": [rows, cols], "nonzero": nonzero, "sparsity": 1 - density, "value_bits": st["value_bits"],
            "storage": st["storage"], "bits": st["bits"], "bits_per_weight": st["bits_per_weight"]}


def account(linears: dict[str, torch.nn.Linear], pruned: set[str], quantized: set[str], recipe: Recipe) -> dict:
    """Per-layer and total sparsity and bits over the counted weights (the recipe's targets, or
    the default targets of a dense run)."""
    from nmx.sparsity.masks import check_nm

    pattern = parse_pattern(recipe.sparsity.pattern) if recipe.sparsity else None
    weight_fmt = recipe.quantization.weights if recipe.quantization else None
    layers, total_bits, total_n, total_zero = {}, 0.0, 0, 0
    for name, module in linears.items():
        w = module.weight.detach()
        p = pattern if name in pruned else None
        rec = layer_bits(w, weight_fmt if name in quantized else None, p)
        if isinstance(p, NMPattern):
            rec["nm_violations"] = check_nm(w, p.n, p.m)
        layers[name] = rec
        total_bits += rec["bits"]
        total_n += w.numel()
        total_zero += w.numel() - rec["nonzero"]
    return {
        "layers": layers,
        "weight_sparsity": total_zero / total_n,
        "bits_per_weight": total_bits / total_n,
        "targeted_weights": total_n,
        "masks_valid": all(r.get("nm_violations", 0) == 0 for r in layers.values()),
    }
