"""Kernels in the model, on one CUDA GPU: correctness of converted models, then decode tokens/s.

    OUT=/tmp/out PYTHONUNBUFFERED=1 python benchmarks/decode_model.py [--quick] [--no-compile] [--tokens 128]

(a) Correctness. For the tiny and SmolLM2-135M-shaped Llamas with random weights (and the real SmolLM2 when
    it loads offline: a cached copy, or NMX_SMOLLM2_DIR=HF folder), for int4_g128, nvfp4, mxfp4, fp8_e4m3,
    2:4+int4_g128 and 2:4+nvfp4: the model is pruned by magnitude and fake-quantized by nmx in float32
    (what `nmx run` leaves), then
      reference = that model cast to bf16 (torch's nn.Linear),
      converted = `nmx.kernels.convert(..., exact=True)` of it, cast to bf16 (Triton / the dispatcher),
    and their logits are compared: a prefill (2 x 64 tokens: the dispatcher's batched path), token-by-token
    decoding with a cache at batch 1 (the one-token Triton kernel, its outputs NaN-poisoned first:
    convert.POISON) and batch 4, and the per-token NLLs of random tokens through both, prefill and one-token
    decode (the perplexity agreement rule of nmx.kernels.convert: |ln ppl_k - ln ppl_ref| <= 4 sigma / sqrt(N)
    and <= 1e-2 relative, sigma measured). On the tiny model the converted model is also run on the CPU
    (the reference twin) against its GPU run.
(b) Speed. A Llama-2-7B-shaped model with random weights, built in bf16 on the GPU: decode tokens/s of its
    own transformers forward with a StaticCache at context 2048, one step captured in a CUDA graph
    (`nmx.kernels.decode_bench.decode_speed`), batch 1 and 16, for bf16 and each recipe (packed from the
    same weights, installed in place of the nn.Linears, then put back). With time left, the same with
    torch.compile before the capture for bf16 and int4_g128 at batch 1, and the tensor-core kernel for
    2..64 tokens (dispatch.SMALL_M = "tc") at batch 16.
Every variant is in its own try/except (an error is recorded, the others go on); the JSON
($OUT/decode_model.json, OUT defaults to ./out) is rewritten after every variant. Progress goes to stdout.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the GPU machine has no network: never wait on the Hub

from nmx.kernels import PackedLinearModule, pack  # noqa: E402
from nmx.kernels.convert import PATHS, PPL_CAP, SIGMAS, convert, install  # noqa: E402
from nmx.kernels.decode_bench import cache_kwarg, config_model, copy_bandwidth, decode_speed, fake_compress  # noqa: E402,E501
from nmx.kernels.evaluate import agreement  # noqa: E402
from nmx.model.layers import match_linears  # noqa: E402
from nmx.sparsity.masks import nm_mask  # noqa: E402

CONVERT = sys.modules["nmx.kernels.convert"]  # the module (the name `convert` is the verb)
TARGETS = ["*.self_attn.*_proj", "*.mlp.*_proj"]
RECIPES = [("int4_g128", None), ("nvfp4", None), ("mxfp4", None), ("fp8_e4m3", None), ("int4_g128", "2:4"),
           ("nvfp4", "2:4")]
T0 = time.perf_counter()
RECORD: dict = {}
DEVICE = "cuda"  # --cpu-smoke: "cpu" (a dry run of the code paths, eager, through the CPU twin)


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)


def save(out: Path) -> None:
    RECORD["wall_s"] = time.perf_counter() - T0
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(RECORD, indent=1, default=str))
    tmp.replace(out)


def label(fmt: str | None, pattern: str | None) -> str:
    return f"{pattern + '+' if pattern else ''}{fmt or 'bf16'}"


def free() -> None:
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


# ---- (a) correctness -----------------------------------------------------------------------------------


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.float(), b.float()
    return {"finite": bool(torch.isfinite(a).all()), "max_abs": float((a - b).abs().max()),
            "max_ref": float(b.abs().max()), "rel_fro": float((a - b).norm() / b.norm().clamp_min(1e-30)),
            "argmax_agree": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-token NLL (float64, CPU) of ids[:, 1:] given logits [B, T, V] of ids."""
    lg = logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1),
                                             reduction="none").double().cpu()


def summary(a: dict) -> dict:
    return {k: a[k] for k in ("perplexity", "reference_perplexity", "relative_difference", "nll_difference_mean",
                              "nll_difference_sigma", "tokens", "bound", "within_bound")}


@torch.no_grad()
def decode_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Token-by-token logits through a DynamicCache (one token per sequence per forward)."""
    from nmx.kernels.evaluate import dynamic_cache

    cache, kw = dynamic_cache(model.config), cache_kwarg(model)
    steps = [model(ids[:, i:i + 1], **{kw: cache}, use_cache=True).logits for i in range(ids.shape[1])]
    return torch.cat(steps, 1)


def check_model(name: str, make, vocab: int, fmt, pattern, out: Path) -> None:
    row = {"model": name, "recipe": label(fmt, pattern)}
    RECORD["correctness"].append(row)
    try:
        torch.manual_seed(0)
        ref = make()
        masks = fake_compress(ref, fmt, pattern)
        conv = copy.deepcopy(ref)
        report = convert(conv, fmt, pattern, masks=masks, exact=True)
        row["conversion"] = report.as_dict()
        ref, conv = ref.to(torch.bfloat16), conv.to(torch.bfloat16)
        g = torch.Generator(device=DEVICE).manual_seed(1)
        ids = torch.randint(0, vocab, (2, 64), device=DEVICE, generator=g)
        CONVERT.POISON = True
        PATHS.clear()
        with torch.no_grad():
            lk, lr = conv(ids).logits, ref(ids).logits
        row["prefill"] = compare(lk, lr)
        row["ppl_prefill"] = summary(agreement(token_nll(lk, ids), token_nll(lr, ids)))
        dk, dr = decode_logits(conv, ids[:1, :48]), decode_logits(ref, ids[:1, :48])
        row["decode_b1"] = compare(dk, dr)
        row["ppl_decode_b1"] = summary(agreement(token_nll(dk, ids[:1, :48]), token_nll(dr, ids[:1, :48])))
        row["decode_b4"] = compare(decode_logits(conv, ids.repeat(2, 1)[:, :8]),
                                   decode_logits(ref, ids.repeat(2, 1)[:, :8]))
        row["paths"] = dict(PATHS)
        if name == "tiny" and DEVICE == "cuda":  # the same converted model on the CPU: the reference twin
            with torch.no_grad():
                gpu = conv(ids).logits.float()
                row["gpu_vs_cpu_twin"] = compare(gpu, conv.to("cpu")(ids.cpu()).logits.float().cuda())
        worst = max(row[k]["rel_fro"] for k in ("prefill", "decode_b1", "decode_b4"))
        row["pass"] = (all(row[k]["finite"] for k in ("prefill", "decode_b1", "decode_b4")) and worst < 2e-2
                       and row["ppl_prefill"]["within_bound"] and row["ppl_decode_b1"]["within_bound"])
        say(f"  {name} {row['recipe']}: {'ok' if row['pass'] else 'FAIL'}  rel_fro prefill "
            f"{row['prefill']['rel_fro']:.1e} decode b1 {row['decode_b1']['rel_fro']:.1e} b4 "
            f"{row['decode_b4']['rel_fro']:.1e}; ppl diff prefill {row['ppl_prefill']['relative_difference']:.1e} "
            f"(bound {row['ppl_prefill']['bound']:.1e}), decode {row['ppl_decode_b1']['relative_difference']:.1e} "
            f"(bound {row['ppl_decode_b1']['bound']:.1e}); paths {row['paths']}, "
            f"{row['conversion']['left_as_linear']} layers left")
    except Exception as err:  # noqa: BLE001 - recorded, the others go on
        row["error"] = f"{type(err).__name__}: {err}"
        row["traceback"] = traceback.format_exc()[-3000:]
        say(f"  {name} {row['recipe']}: ERROR {row['error'][:300]}")
    finally:
        CONVERT.POISON = False
        ref = conv = None
        free()
        save(out)


def real_smollm2():
    """The real SmolLM2-135M when it loads offline (a cached copy or NMX_SMOLLM2_DIR), else None."""
    from nmx.io import cache_dir

    where = os.environ.get("NMX_SMOLLM2_DIR")
    if not where and not (cache_dir() / "smollm2-135m" / "hf" / "config.json").is_file():
        return None
    from nmx.model.sources import load_model

    loaded = load_model(where or "smollm2-135m", "cuda")
    return loaded


# ---- (b) speed -----------------------------------------------------------------------------------------


def pack_model(model, fmt, pattern, backend="auto") -> dict:
    """PackedLinearModules for every targeted linear (pruned by magnitude for 2:4, quantized by packing)."""
    mods = {}
    with torch.no_grad():
        for name, lin in match_linears(model, TARGETS).items():
            w = lin.weight
            if pattern:
                w = w * nm_mask(w.abs(), 2, 4)
            mods[name] = PackedLinearModule(pack(w, fmt, pattern), None, backend, name)
    return mods


def time_variant(model, name: str, batches, args, out: Path, mode: str = "graph", tag: str = "") -> None:
    for b in batches:
        row = {"variant": name + tag, "batch": b, "mode": mode}
        RECORD["timing"].append(row)
        try:
            say(f"  timing {name + tag} batch {b} ({mode})")
            row.update(decode_speed(model, b, args.context, args.tokens, mode if DEVICE == "cuda" else "eager"))
            if RECORD.get("copy_GBps"):
                row["fraction_of_copy_bandwidth"] = row["read_GBps"] / RECORD["copy_GBps"]
            base = next((r for r in RECORD["timing"] if r["variant"] == "bf16" and r["batch"] == b
                         and r.get("mode") == mode and "tokens_per_s" in r), None)
            if base is not None:
                row["speedup_vs_bf16"] = row["tokens_per_s"] / base["tokens_per_s"]
            speedup = f", {row['speedup_vs_bf16']:.2f}x bf16" if "speedup_vs_bf16" in row else ""
            frac = f", {100 * row['fraction_of_copy_bandwidth']:.0f}% of copy bandwidth" if DEVICE == "cuda" else ""
            say(f"    {row['ms_per_step']:.3f} ms/step, {row['tokens_per_s']:.1f} tokens/s{speedup}{frac}")
        except Exception as err:  # noqa: BLE001
            row["error"] = f"{type(err).__name__}: {err}"
            row["traceback"] = traceback.format_exc()[-3000:]
            say(f"    ERROR {row['error'][:300]}")
        finally:
            free()
            save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--config", default="llama-2-7b", help="shape of the timed random model (decode_bench.CONFIGS)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--quick", action="store_true", help="tiny checks only, and the timing on the tiny config")
    ap.add_argument("--budget-s", type=float, default=330, help="no optional row starts after this many seconds")
    ap.add_argument("--cpu-smoke", action="store_true", help="no GPU: dry-run the code paths on the CPU (tiny)")
    args = ap.parse_args()
    global DEVICE
    if args.cpu_smoke:
        DEVICE, args.quick, args.no_compile = "cpu", True, True
    out_dir = Path(os.environ.get("OUT", "out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "decode_model.json"
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("decode_model.py needs a CUDA GPU (--cpu-smoke: a dry run on the CPU)")
    import transformers
    import triton

    RECORD.update({"date": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke)",
                   "versions": {"torch": torch.__version__, "triton": triton.__version__,
                                "transformers": transformers.__version__, "python": platform.python_version()},
                   "args": vars(args), "ppl_bound_rule": {"sigmas": SIGMAS, "cap": PPL_CAP}, "correctness": [],
                   "timing": []})
    RECORD["copy_GBps"] = copy_bandwidth() / 1e9 if DEVICE == "cuda" else None
    say(f"{RECORD['gpu']}, torch {torch.__version__}, triton {triton.__version__}, transformers "
        f"{transformers.__version__}; copy bandwidth {RECORD['copy_GBps'] or 0:.0f} GB/s")
    save(out)

    # (a) correctness
    say("(a) correctness: converted vs fake-quant models, logits on the GPU")
    models = [("tiny", lambda: config_model("tiny", DEVICE, dtype=torch.float32), 256)]
    if not args.quick:
        models.append(("smollm2-135m-shape", lambda: config_model("smollm2-135m", "cuda", dtype=torch.float32), 49152))
        try:
            real = real_smollm2()
            if real is None:
                RECORD["real_smollm2"] = "skipped: no cached copy (and NMX_SMOLLM2_DIR unset); the GPU has no network"
            else:
                state = {k: v.detach().clone() for k, v in real.model.state_dict().items()}

                def make_real(real=real, state=state):
                    real.model.load_state_dict(state)
                    return copy.deepcopy(real.model)

                models.append(("smollm2-135m", make_real, real.model.config.vocab_size))
        except Exception as err:  # noqa: BLE001
            RECORD["real_smollm2"] = f"skipped: {type(err).__name__}: {err}"
        say(f"  real SmolLM2: {RECORD.get('real_smollm2', 'loaded')}")
    for name, make, vocab in models:
        for fmt, pattern in RECIPES:
            check_model(name, make, vocab, fmt, pattern, out)

    # (b) speed
    config = "tiny" if args.quick else args.config
    batches = [int(b) for b in args.batches.split(",")]
    say(f"(b) speed: random {config}, context {args.context}, {args.tokens} tokens, batches {batches}")
    try:
        model = config_model(config, DEVICE)
    except Exception as err:  # noqa: BLE001
        RECORD["timing_error"] = f"{type(err).__name__}: {err}"
        save(out)
        raise
    RECORD["timed_model"] = {"config": config, "parameters": sum(p.numel() for p in model.parameters())}
    time_variant(model, "bf16", batches, args, out)
    for fmt, pattern in RECIPES:
        name = label(fmt, pattern)
        try:
            say(f"  packing {name}")
            mods = pack_model(model, fmt, pattern)
            originals = install(model, mods)
        except Exception as err:  # noqa: BLE001
            RECORD["timing"].append({"variant": name, "error": f"{type(err).__name__}: {err}",
                                     "traceback": traceback.format_exc()[-3000:]})
            say(f"    ERROR {err}")
            save(out)
            continue
        try:
            time_variant(model, name, batches, args, out)
            if name in ("int4_g128", "fp8_e4m3") and 16 in batches and time.perf_counter() - T0 < args.budget_s:
                from nmx.kernels import dispatch

                dispatch.SMALL_M = "tc"
                try:
                    time_variant(model, name, [16], args, out, tag=" (tc for 2..64 tokens)")
                finally:
                    dispatch.SMALL_M = "dense"
        finally:
            install(model, originals)
            mods = originals = None
            free()
    if not args.no_compile:
        for name, recipe in (("bf16", None), ("int4_g128", ("int4_g128", None))):
            if time.perf_counter() - T0 > args.budget_s:
                RECORD["timing"].append({"variant": name, "mode": "compile", "skipped": "time budget"})
                say(f"  skipping compiled {name}: past the {args.budget_s:.0f} s budget")
                continue
            originals = None
            try:
                if recipe:
                    originals = install(model, pack_model(model, *recipe))
                time_variant(model, name, [1], args, out, mode="compile")
            finally:
                if originals:
                    install(model, originals)
                free()
    say(f"done; wrote {out}")
    save(out)


if __name__ == "__main__":
    main()
