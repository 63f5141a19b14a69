"""`nmx run --kernels`: perplexity through the converted model, beside the fake-quant run.

After `nmx run` has compressed the model (float32, fake-quant weights) and scored it, `evaluate_kernels`

1. packs what the recipe applied (`convert.recipe_layers`, the recorded 2:4 masks), exactly: every packed
   weight equals the fake-quant weight bit for bit, or InputError;
2. casts the model to bf16 (the kernels take bf16 activations: this is how the converted model runs) and,
   with `kernels.check`, scores the fake-quant model in bf16: the *reference*;
3. installs the packed modules and scores the model through them, on the same windows, the same way;
4. puts the model back as it was (modules, dtype and, where the caller keeps the model, every weight).

Both scorings keep every token's NLL, so the record (result.json's "kernels") holds both perplexities and
the statistics of their per-token difference, the agreement bound (nmx.kernels.convert: its derivation)

    |ln ppl_k - ln ppl_ref| <= SIGMAS * sigma / sqrt(N)   and   |ppl_k / ppl_ref - 1| <= PPL_CAP

(sigma: the rms of the per-token NLL differences, N: tokens scored, both measured in the run), whether it
holds, the backend ("triton" on a CUDA GPU, "reference" = the CPU twin, with one warning), how many eager
calls took each dispatcher path, and the conversion report. A difference over the bound is one warning
and `within_bound: false`, never silent. `vs_fp32_fake_quant` compares with the run's headline perplexity
(float32 fake quant); it also holds what bf16 inference costs and is informational.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

import torch

from nmx.errors import InputError

log = logging.getLogger(__name__)


def dynamic_cache(config: Any) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers 4.x
        return DynamicCache()


@torch.inference_mode()
def _window_nlls(model: Any, window: torch.Tensor, cache: Any = None, chunk: int | None = None) -> torch.Tensor:
    """Per-token NLL (float64) of tokens 1.. of one window, as `nmx.eval.perplexity.window_nll` sums them."""
    from nmx.eval.perplexity import window_logits

    logits = window_logits(model, window, cache, chunk)
    return torch.nn.functional.cross_entropy(logits, window[1:].to(logits.device), reduction="none").double().cpu()


def token_nlls(loaded: Any, recipe: Any, windows: torch.Tensor,
               progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """[windows, seq_len - 1] per-token NLLs of `loaded.model` under the recipe's protocol: whole windows, or
    `kernels.chunk` tokens per forward through a cache, or the kv_cache section's compressed cache and chunk."""
    model = loaded.model
    kv, chunk = recipe.kv_cache, recipe.kernels.chunk
    rows = []
    if kv is not None:
        from nmx.kv import KVCache, attention_for

        policy = kv.to_policy()
        with attention_for(policy, loaded.model, quiet=True):
            for i, w in enumerate(windows):
                rows.append(_window_nlls(model, w, KVCache(policy, loaded.model), kv.chunk))
                if progress:
                    progress(i + 1, len(windows))
        return torch.stack(rows)
    for i, w in enumerate(windows):
        cache = dynamic_cache(loaded.model.config) if chunk else None
        rows.append(_window_nlls(model, w, cache, chunk))
        if progress:
            progress(i + 1, len(windows))
    return torch.stack(rows)


def agreement(kernels: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """Per-token NLL differences -> the perplexities, their statistics and the bound (nmx.kernels.convert)."""
    from nmx.kernels.convert import PPL_CAP, SIGMAS

    d = (kernels - reference).reshape(-1)
    n = d.numel()
    mean, sigma = float(d.mean()), float(d.std()) if n > 1 else 0.0
    ppl_k, ppl_r = math.exp(float(kernels.mean())), math.exp(float(reference.mean()))
    rel = abs(ppl_k - ppl_r) / ppl_r
    noise = SIGMAS * sigma / math.sqrt(n)
    bound = min(math.expm1(noise), PPL_CAP)
    return {"perplexity": ppl_k, "reference_perplexity": ppl_r, "relative_difference": rel, "tokens": n,
            "nll_difference_mean": mean, "nll_difference_sigma": sigma,
            "tokens_differing": float((d != 0).double().mean()), "bound": bound,
            "bound_rule": f"min({SIGMAS} sigma / sqrt(N) on ln ppl, {PPL_CAP:g} relative)",
            "within_bound": abs(mean) <= noise and rel <= PPL_CAP}


def evaluate_kernels(loaded: Any, recipe: Any, text: Any, masks: dict[str, torch.Tensor] | None,
                     fake_quant_perplexity: float | None = None,
                     progress: Callable[[str, int, int], None] | None = None, restore: bool = True) -> dict[str, Any]:
    """Score `loaded` (compressed by `recipe`) through nmx.kernels; returns result.json's "kernels" record.
    `restore`: put every weight back bit for bit afterwards (a float32 copy is kept on the CPU meanwhile);
    without it the modules and dtype are put back but the weights keep their bf16 rounding."""
    from nmx.eval.perplexity import tokenize, windows_of
    from nmx.kernels.convert import PATHS, backend_name, install, pack_layers, recipe_layers

    ks, ev = recipe.kernels, recipe.evaluation
    model = loaded.model
    first = next(model.parameters())
    device, dtype = first.device, first.dtype
    backend = backend_name(device)
    if backend == "reference":
        log.warning("--kernels: no CUDA GPU with triton (the model is on %s): the converted layers run the kernels' "
                    "CPU reference twin (the kernels' arithmetic in plain torch, slow), not the Triton code", device)
    t0 = time.perf_counter()
    windows = windows_of(tokenize(loaded.tokenizer, text), ev.seq_len, ev.max_windows, f"evaluation text {text.name!r}")
    modules, report = pack_layers(model, recipe_layers(model, recipe), masks, ks.backend, ks.strict, exact=True)
    if not modules:
        reasons = "; ".join(sorted(set(report.left.values())))
        raise InputError(f"--kernels: no targeted layer can be packed for the kernels ({reasons})")
    saved = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()} if restore else None
    originals: dict[str, torch.nn.Module] = {}
    say = (lambda what: (lambda i, n: progress(what, i, n))) if progress else (lambda what: None)
    try:
        model.to(torch.bfloat16)
        ref = token_nlls(loaded, recipe, windows, say("evaluating (bf16 fake quant)")) if ks.check else None
        originals = install(model, modules)
        PATHS.clear()
        got = token_nlls(loaded, recipe, windows, say("evaluating (kernels)"))
        paths = dict(PATHS)
    finally:
        if originals:
            install(model, originals)
        model.to(dtype)
        if saved is not None:
            model.load_state_dict(saved)
    chunk = recipe.kv_cache.chunk if recipe.kv_cache is not None else ks.chunk
    out: dict[str, Any] = {
        "backend": backend, "device": str(device), "dispatch": ks.backend, "paths": paths, "dtype": "bfloat16",
        "chunk": chunk or ev.seq_len, "eval_tokens": got.numel(),
        "attention": ("transformers' attention over nmx.kv's cache (dequantized pages; the KV decode-attention "
                      "kernel is not wired into models)" if recipe.kv_cache is not None else "transformers'"),
    }
    if ref is not None:
        out.update(agreement(got, ref))
    else:
        out.update({"perplexity": math.exp(float(got.mean())), "reference_perplexity": None, "within_bound": None})
    out["vs_fp32_fake_quant"] = ((out["perplexity"] - fake_quant_perplexity) / fake_quant_perplexity
                                 if fake_quant_perplexity else None)
    out.update({**report.as_dict(), "left_layers": report.left, "wall_s": time.perf_counter() - t0})
    if out["within_bound"] is False:
        log.warning("--kernels: perplexity through the kernels (%.6g) differs from the bf16 fake-quant model's (%.6g) "
                    "by %.2e relative, over the bound %.2e (%s)", out["perplexity"], out["reference_perplexity"],
                    out["relative_difference"], out["bound"], out["bound_rule"])
    return out
