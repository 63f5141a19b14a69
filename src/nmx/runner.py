"""`nmx run`: recipe -> model -> prune / quantize -> perplexity -> result.json + report.md.

(DESIGN.md places `run` in recipe.py; it lives here so that recipe.py stays a validated
description that the model code can import without a cycle.)
"""

from __future__ import annotations

import logging
import platform
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

import nmx
from nmx.eval.perplexity import perplexity
from nmx.eval.text import load_text
from nmx.errors import InputError
from nmx.io import OutputDir, write_json_atomic, write_text_atomic
from nmx.model.compress import compress
from nmx.model.sources import load_model
from nmx.recipe import Recipe
from nmx.sparsity.methods import get_method

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


def versions() -> dict[str, str]:
    import transformers

    return {"nmx": nmx.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def run(
    recipe: Recipe,
    out: Path | None = None,
    save_model: bool = False,
    progress: Progress | None = None,
    loaded: Any | None = None,
    overwrite: bool = False,
) -> dict:
    """Run the recipe; write DIR/result.json, DIR/report.md, DIR/recipe.yaml (and the model).
    `loaded`: an already loaded model to modify (its weights change in place).

    Cheap checks come first (the output folder, the texts), then the model loads. Outputs are
    written into a private folder beside `out` and moved into place only when the run
    succeeded; a folder that already holds a result needs `overwrite` (and is replaced whole)."""
    if save_model and out is None:
        raise InputError("--save-model writes model.safetensors into the output folder: give --out DIR")
    output = OutputDir(out, overwrite) if out is not None else None
    with output if output is not None else nullcontext() as tmp:
        texts = check_texts(recipe)
        record = _run(recipe, texts, progress, loaded, keep_model=save_model)
        if tmp is not None:
            write_outputs(tmp, record["result"], record["loaded"] if save_model else None, record["masks"])
    return record["result"]


def check_texts(recipe: Recipe) -> dict[str, Any]:
    """Load the evaluation text and, when the recipe calibrates, the calibration text: a bad
    text fails here, before a model is loaded."""
    texts = {"evaluation": load_text(recipe.evaluation.text)}
    if (recipe.sparsity is not None and get_method(recipe.sparsity.method).needs != "nothing") \
            or recipe.activation_sparsity is not None:  # thresholds calibrate too
        texts["calibration"] = load_text(recipe.calibration.text)
    return texts


def _run(recipe: Recipe, texts: dict[str, Any], progress: Progress | None, loaded: Any | None,
         keep_model: bool) -> dict:
    t0 = time.perf_counter()
    caller_loaded = loaded is not None
    loaded = loaded if loaded is not None else load_model(recipe.model, recipe.device)
    warn_context(loaded, recipe)
    check_kv_cache(loaded, recipe)
    record = compress(loaded, recipe, progress)
    t1 = time.perf_counter()
    result = evaluate(loaded, recipe, texts["evaluation"],
                      (lambda i, n: progress("evaluating", i, n)) if progress else None)
    layers = record.pop("layers")
    masks = record.pop("masks")
    if "activation_sparsity" in record:  # the thresholds' hooks counted the evaluation's zeros: their report
        record["activation_sparsity"] = record["activation_sparsity"].report()
    kernels = None
    if recipe.kernels is not None:  # perplexity again, through nmx.kernels (nmx/kernels/evaluate.py)
        from nmx.kernels.evaluate import evaluate_kernels

        kernels = evaluate_kernels(loaded, recipe, texts["evaluation"], masks, result["perplexity"], progress,
                                   restore=keep_model or caller_loaded)
    out_record: dict[str, Any] = {
        "perplexity": result["perplexity"],
        "eval_tokens": result["eval_tokens"],
        "weight_sparsity": record["weight_sparsity"],
        "bits_per_weight": record["bits_per_weight"],
        "kv_bytes_per_token": result["kv_bytes_per_token"],
        **{k: v for k, v in record.items() if k not in ("weight_sparsity", "bits_per_weight")},
        "protocol": result["protocol"],
        "recipe": recipe.as_dict(),
        "model": {"name": loaded.name, "parameters": loaded.n_params, "source": loaded.source, "notes": loaded.notes,
                  "shape": model_shape(loaded)},
        "wall_s": time.perf_counter() - t0,
        "compress_s": t1 - t0,
        "versions": versions(),
        "layers": layers,
    }
    if kernels is not None:
        out_record["kernels"] = kernels
    out_record["hardware"] = price_hardware(out_record, recipe)
    return {"result": out_record, "loaded": loaded, "masks": masks}


def price_hardware(record: dict, recipe: Recipe) -> dict:
    """The run's `hardware` block: its workload (from the record: shapes, real storage, the whole KV
    policy) priced on the recipe's targets and phases, or the default (nmx.hw.pricing)."""
    from nmx.hw.pricing import price_result

    return price_result(record, recipe)


def warn_context(loaded: Any, recipe: Recipe) -> None:
    """One warning line for a legal but surely unintended context: windows longer than the
    model was trained for (its position embeddings or RoPE range)."""
    limit = getattr(loaded.model.config, "max_position_embeddings", None)
    for what, seq_len in (("evaluation.seq_len", recipe.evaluation.seq_len),
                          ("calibration.seq_len", recipe.calibration.seq_len if recipe.sparsity else None)):
        if limit and seq_len and seq_len > limit:
            log.warning("%s = %d is longer than the model's context (%d tokens): perplexity past it measures "
                        "extrapolation, not the model", what, seq_len, limit)


def evaluate(loaded: Any, recipe: Recipe, text: Any, progress: Callable[[int, int], None] | None = None) -> dict:
    """Perplexity, through the recipe's compressed KV cache when it has a kv_cache section. Adds
    `kv_bytes_per_token` (summed over layers, mean over windows); without a kv_cache section, the
    dense bf16 figure layers * 2 * kv_heads * head_dim * 2."""
    from nmx.kv import KVCache, attention_for, dense_bytes_per_token

    ev, kv = recipe.evaluation, recipe.kv_cache
    model = loaded.model
    if kv is None:
        result = perplexity(model, loaded.tokenizer, text, ev.seq_len, ev.max_windows, progress)
        try:
            result["kv_bytes_per_token"] = dense_bytes_per_token(model.config)
        except AttributeError:  # not a decoder config with layers / heads / head_dim
            result["kv_bytes_per_token"] = None
        return result
    policy = kv.to_policy()
    with attention_for(policy, model):
        return perplexity(model, loaded.tokenizer, text, ev.seq_len, ev.max_windows, progress,
                          new_cache=lambda: KVCache(policy, model), chunk=kv.chunk)


def check_kv_cache(loaded: Any, recipe: Recipe) -> None:
    """Refuse a kv_cache section the model cannot run (InputError) before any long work."""
    import logging

    from nmx.kv import KVCache, attention_for

    if recipe.kv_cache is None:
        return
    policy = recipe.kv_cache.to_policy()
    policy.check_context(recipe.evaluation.seq_len, "evaluation.seq_len")
    with attention_for(policy, loaded.model, quiet=True):
        cache = KVCache(policy, loaded.model)
    if cache.budget and cache.budget >= recipe.evaluation.seq_len:
        logging.getLogger(__name__).warning("kv_cache.evict: the budget of %d tokens holds the whole %d-token window; "
                                            "nothing will be evicted", cache.budget, recipe.evaluation.seq_len)


def model_shape(loaded: Any) -> dict[str, Any] | None:
    """The model's shapes for the hardware workload (`nmx hw llm --model RESULT_DIR`), or None
    for an architecture that is not a Llama-style decoder."""
    from dataclasses import asdict

    from nmx.errors import InputError
    from nmx.hw.workload import shape_from_config

    try:
        return asdict(shape_from_config(loaded.model.config, name=loaded.name))
    except InputError:
        return None


def write_outputs(out: Path, result: dict, loaded: Any | None = None, masks: dict | None = None) -> None:
    """Write a run's files into `out` (a run's private temporary folder, see `run`)."""
    out.mkdir(parents=True, exist_ok=True)
    if loaded is not None:
        save_weights(out / "model.safetensors", loaded, result, masks or {})
    write_text_atomic(out / "recipe.yaml", yaml.safe_dump(result["recipe"], sort_keys=False))
    write_text_atomic(out / "report.md", report_markdown(result))
    write_json_atomic(out / "result.json", result)  # last: its presence means the run finished


def save_weights(path: Path, loaded: Any, result: dict, masks: dict[str, torch.Tensor]) -> None:
    """The modified weights as safetensors, with the recipe and per-layer formats in the metadata
    and each pruning mask as a bit-packed uint8 tensor `nmx_mask.<layer>` (a kept weight can be 0:
    the weights alone do not tell the mask)."""
    import json

    from safetensors.torch import save_file

    from nmx.formats.packing import pack_bits

    tensors = {k: v.detach().contiguous() for k, v in loaded.model.state_dict().items()}
    if getattr(loaded.model.config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)  # tied to the embedding: stored once
    tensors.update({f"nmx_mask.{name}": pack_bits(m.reshape(-1).to(torch.int32), 1) for name, m in masks.items()})
    meta = {"nmx_recipe": json.dumps(result["recipe"]), "nmx_layers": json.dumps(result["layers"]),
            "nmx_masks": json.dumps({name: list(m.shape) for name, m in masks.items()}),
            "nmx_version": nmx.__version__}
    save_file(tensors, str(path), metadata=meta)  # `path` is inside the run's private folder


def _kv_text(kv: dict | None) -> str:
    if not kv:
        return "dense (counted as bf16)"
    parts = []
    if q := kv.get("quant"):
        parts.append(f"{q['format']} keys per {q['key_axis']} / values per {q['value_axis']}, "
                     f"group {q['group'] or 'auto'}, residual {q['residual']}, sinks {q['sinks']}, "
                     f"keys {q.get('key_rope', 'post')}-RoPE")
    if e := kv.get("evict"):
        budget = f"{e['budget']} tokens" if e.get("budget") else f"{e['budget_bytes']} bytes"
        parts.append(f"{e['method']} eviction to {budget}")
    if kv.get("merge"):
        parts.append("merging evicted tokens")
    return ", ".join(parts or [f"uncompressed ({kv.get('full_precision')})"])


def _kernels_text(k: dict) -> str:
    ref = (f"; bf16 fake quant {k['reference_perplexity']:.4f}, relative difference {k['relative_difference']:.2e} "
           f"(bound {k['bound']:.1e})") if k.get("reference_perplexity") else ""
    return (f"- through nmx.kernels ({k['backend']}, {k['converted_layers']} layers packed, {k['left_as_linear']} left "
            f"as nn.Linear): perplexity **{k['perplexity']:.4f}** in bf16{ref}")


def _hardware_lines(block: dict) -> list[str]:
    from nmx.hw.pricing import markdown

    return markdown(block)


def report_markdown(r: dict) -> str:
    rec, p = r["recipe"], r["protocol"]
    sp, q = rec.get("sparsity"), rec.get("quantization")
    lines = [
        f"# nmx run: {r['model']['name']}",
        "",
        f"- perplexity: **{r['perplexity']:.4f}** on {p['text']} ({p['tokens_scored']} tokens scored, "
        f"{p['windows']} of {p['windows_available']} windows of {p['seq_len']})",
        f"- sparsity: {sp['method'] + ' ' + sp['pattern'] if sp else 'none'}; weight sparsity "
        f"{r['weight_sparsity']:.4f} over {r['targeted_weights']} targeted weights",
        f"- formats: weights {(q or {}).get('weights') or 'unquantized (counted as bf16)'}, "
        f"activations {(q or {}).get('activations') or 'unquantized'}",
        f"- bits per weight (values, indices and scales, best storage): {r['bits_per_weight']:.4f}",
        f"- KV cache: {_kv_text(rec.get('kv_cache'))}; {r.get('kv_bytes_per_token') or 0:.1f} bytes per token "
        "(all layers, K and V)",
        f"- wall time: {r['wall_s']:.1f} s",
        *([_kernels_text(r["kernels"])] if r.get("kernels") else []),
        "",
        "## Protocol",
        "",
        *[f"- {k}: {v}" for k, v in p.items()],
        "",
        "## Notes",
        "",
        *[f"- {n}" for n in r["model"]["notes"] or ["none"]],
        "",
        *(_hardware_lines(r["hardware"]) if r.get("hardware") else []),
        "## Layers",
        "",
        "| layer | shape | sparsity | storage | bits/weight |",
        "|---|---|---|---|---|",
        *[f"| {n} | {'x'.join(map(str, x['shape']))} | {x['sparsity']:.3f} | {x['storage']} "
          f"| {x['bits_per_weight']:.3f} |" for n, x in r["layers"].items()],
        "",
    ]
    return "\n".join(lines)
