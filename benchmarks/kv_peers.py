"""nmx.kv side by side with kvpress and with transformers' QuantizedCache, on smollm2-135m, in one run.

Why two interpreters. kvpress 0.5.5 (the newest release) requires transformers < 5.3, and its
hooks read the `past_key_values` and `cache_position` keyword arguments of the attention
module, which transformers 5.24 (nmx's venv) no longer passes; nmx's `KVCache` implements the
Cache API of transformers 5.24 and cannot be instantiated under 5.2 (TypeError: abstract method
get_max_cache_shape). So this script runs nmx in /work/venv (transformers 5.24) and starts
itself once more as a worker under /work/venv-kvpress (transformers 5.2.0, kvpress 0.5.5,
optimum-quanto 0.2.7), which runs kvpress and transformers' QuantizedCache as shipped. Both load
the same checkpoint folder (nmx's converted smollm2-135m, float32) and get the same token ids
(written by this process); a full-cache row on each side checks that the two transformers
versions compute the same model.

(a) Eviction, kvpress's protocol: a context of `--context` tokens is prefilled in one forward and
    compressed to `budget` tokens per layer and head after each layer's attention (kvpress:
    `with press(model)`, compression_ratio = 1 - budget / context; nmx: a KVCache whose budget
    is `budget`); then the next `--continuation` tokens are scored in one forward at their true
    positions (kvpress's pipeline passes position_ids; nmx keeps the count of tokens seen).
    Compared: the kept positions of every layer and KV head (kvpress's kept keys are matched
    back to the positions of the uncompressed keys, bit for bit) and the continuation's
    perplexity. Settings are matched to kvpress's defaults: StreamingLLM n_sink 4 (nmx streaming,
    sinks 4); SnapKV window 64, kernel 5 (nmx snapkv window 64, pool 5); TOVA keeps the last
    token (nmx tova window 1); Knorm. Attention-based methods run with eager attention on both
    sides (kvpress then reads the attention weights the layer returns), the others with sdpa.
(b) Quantization, streaming perplexity: each window of `--seq-len` tokens is fed `--chunk` tokens
    per forward through transformers' QuantizedCache (quanto backend, min-max affine, q_group_size
    64, residual_length 128; axis_key 0 = per token (its default) or -1 = per channel) and through
    nmx's KVCache with int{4,2}_asym (min-max with a zero point), group 64, residual 128, on the
    same axes. The two caches do not flush alike (QuantizedCache quantizes the whole prefill at
    once and later re-quantizes everything, the residual holding 0..127 tokens; nmx quantizes
    64-token chunks once the window holds 192, so 128..191 stay in full precision), so this
    compares perplexity, not bits.

    NMX_DATA_DIR=/work/shared/data /work/venv/bin/python benchmarks/kv_peers.py --windows 2 --context 1024 \\
        --continuation 256 --budgets 128 256 512 --quant-windows 1 \\
        --json-out benchmarks/results/kv_peers.json > benchmarks/results/kv_peers.md
        # 25 minutes on 2 shared AMD EPYC cores; the JSON (6.4 MB, the kept positions) is stored gzipped

The kvpress venv (torch first, so pip keeps the local CPU build):

    python3 -m venv /work/venv-kvpress && V=/work/venv-kvpress/bin
    $V/pip install torch==2.13.0 && $V/pip install kvpress==0.5.5 optimum-quanto==0.2.7
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
KVPRESS_PYTHON = "/work/venv-kvpress/bin/python"
METHODS = ["streaming", "knorm", "snapkv", "tova"]
EAGER = {"snapkv", "tova"}
BUDGETS = (128, 256, 512)
QUANT = [(bits, axis) for bits in (4, 2) for axis in ("token", "channel")]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum").double())


# ---- the worker: kvpress and QuantizedCache under transformers 5.2 ----------------------------


def worker(spec_path: str) -> None:
    import kvpress
    import transformers
    from transformers import AutoModelForCausalLM, DynamicCache, QuantizedCache

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    data = torch.load(spec["ids"])
    evict_ids, quant_ids = data["evict"], data["quant"]
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32).eval()
    C = spec["context"]
    out: dict = {"versions": {"transformers": transformers.__version__, "kvpress": kvpress.__version__
                              if hasattr(kvpress, "__version__") else _dist_version("kvpress"),
                              "optimum-quanto": _dist_version("optimum-quanto"), "torch": torch.__version__},
                 "evict": {}, "quant": {}, "errors": {}}

    def set_attn(impl: str) -> None:
        model.set_attn_implementation(impl)

    def prefill_and_score(press, window: torch.Tensor) -> tuple[list | None, float, float]:
        ctx, cont = window[None, :C], window[None, C:]
        cache = DynamicCache()
        with torch.inference_mode():
            if press is None:
                last = model(ctx, past_key_values=cache).logits[0, -1:]
            else:
                with press(model):
                    last = model(ctx, past_key_values=cache).logits[0, -1:]
            kept = [layer.keys[0].clone() for layer in cache.layers] if press is not None else None
            pos = torch.arange(C, window.numel())[None]
            logits = model(cont, past_key_values=cache, position_ids=pos).logits[0]
        t = window[C:]
        return kept, nll(torch.cat([last, logits[:-1]]), t), float(t.numel())

    # full-cache reference and the uncompressed keys (to map kept keys back to positions)
    for impl in ("sdpa", "eager"):
        set_attn(impl)
        for w, window in enumerate(evict_ids):
            cache = DynamicCache()
            with torch.inference_mode():
                model(window[None, :C], past_key_values=cache)
            full_keys = [layer.keys[0] for layer in cache.layers]
            _, s, n = prefill_and_score(None, window)
            out["evict"].setdefault(f"full/{impl}", []).append({"nll": s, "tokens": n})
            for method in METHODS:
                if (method in EAGER) != (impl == "eager"):
                    continue
                for b in spec["budgets"]:
                    ratio = 1 - b / C
                    press = {"streaming": lambda r: kvpress.StreamingLLMPress(compression_ratio=r, n_sink=4),
                             "knorm": lambda r: kvpress.KnormPress(compression_ratio=r),
                             "snapkv": lambda r: kvpress.SnapKVPress(compression_ratio=r, window_size=64,
                                                                      kernel_size=5),
                             "tova": lambda r: kvpress.TOVAPress(compression_ratio=r)}[method](ratio)
                    t0 = time.perf_counter()
                    kept, s, n = prefill_and_score(press, window)
                    positions = [match_positions(k, f) for k, f in zip(kept, full_keys, strict=True)]
                    out["evict"].setdefault(f"{method}/{b}", []).append(
                        {"nll": s, "tokens": n, "positions": positions, "wall_s": time.perf_counter() - t0})
                    log(f"[kvpress] window {w} {method} {b}: nll/token {s / n:.4f}")

    # transformers' QuantizedCache, streaming perplexity (sdpa)
    set_attn("sdpa")
    chunk = spec["chunk"]

    def stream_nll(make_cache) -> tuple[float, float, list[float]]:
        total, count, per_token = 0.0, 0.0, []
        for window in quant_ids:
            cache = make_cache()
            with torch.inference_mode():
                logits = torch.cat([model(window[None, i:i + chunk], past_key_values=cache).logits[0]
                                    for i in range(0, window.numel(), chunk)])
            total += nll(logits[:-1], window[1:])
            count += window.numel() - 1
            per_token.append(cache_bytes(cache) / window.numel())
        return total, count, per_token

    s, n, bpt = stream_nll(lambda: DynamicCache())
    out["quant"]["dense"] = {"nll": s, "tokens": n, "bytes_per_token": bpt}
    for bits, axis in QUANT:
        key = f"int{bits}/{axis}"
        try:
            t0 = time.perf_counter()
            s, n, bpt = stream_nll(lambda bits=bits, axis=axis: QuantizedCache(
                backend="quanto", config=model.config, nbits=bits, axis_key=0 if axis == "token" else -1,
                axis_value=0, q_group_size=64, residual_length=128))
            out["quant"][key] = {"nll": s, "tokens": n, "bytes_per_token": bpt, "wall_s": time.perf_counter() - t0}
            log(f"[QuantizedCache] {key}: ppl {math.exp(s / n):.3f}")
        except Exception as err:  # reported, not hidden
            out["errors"][f"QuantizedCache {key}"] = f"{type(err).__name__}: {err}"
            log(f"[QuantizedCache] {key}: {type(err).__name__}: {err}")
    Path(spec["out"]).write_text(json.dumps(out))


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def match_positions(kept: torch.Tensor, full: torch.Tensor) -> list[list[int]]:
    """kept [h, b, d] rows of full [h, n, d] (bit for bit) -> sorted positions per head."""
    out = []
    for h in range(kept.shape[0]):
        same = (kept[h][:, None, :] == full[h][None, :, :]).all(dim=-1)  # [kept, n]
        if not bool((same.sum(dim=1) == 1).all()):
            raise RuntimeError("a kept key is not bit-identical to exactly one uncompressed key")
        out.append(sorted(same.int().argmax(dim=1).tolist()))
    return out


def cache_bytes(cache) -> int:
    """Bytes of every tensor a transformers cache holds (quanto QTensors through their inner tensors)."""
    seen: set[int] = set()

    def size(t) -> int:
        if not isinstance(t, torch.Tensor) or id(t) in seen:
            return 0
        seen.add(id(t))
        if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor:
            names, _ = t.__tensor_flatten__()
            return sum(size(getattr(t, n)) for n in names)
        return t.numel() * t.element_size()

    total = 0
    for layer in cache.layers:
        for val in vars(layer).values():
            total += size(val)
    return total


# ---- the nmx side ----------------------------------------------------------------------------


def nmx_side(args, loaded, evict_ids, quant_ids) -> dict:
    from nmx.eval.perplexity import window_nll
    from nmx.kv import KVCache, KVPolicy, attention_for

    model = loaded.model
    C = args.context
    res: dict = {"evict": {}, "quant": {}}
    settings = {"streaming": {"sinks": 4}, "knorm": {}, "snapkv": {"window": 64, "pool": 5}, "tova": {"window": 1}}
    for impl in ("sdpa", "eager"):
        model.set_attn_implementation(impl)
        for w, window in enumerate(evict_ids):
            for method in [None, *METHODS]:
                if method is not None and (method in EAGER) != (impl == "eager"):
                    continue
                for b in ([None] if method is None else args.budgets):
                    pol = KVPolicy(full_precision="model") if method is None else KVPolicy.from_dict(
                        {"evict": {"method": method, "budget": b, **settings[method]}, "full_precision": "model"})
                    cache = KVCache(pol, model)
                    with torch.inference_mode():
                        last = model(window[None, :C], cache=cache).logits[0, -1:]
                        positions = None if method is None else [
                            [sorted(h) for h in cache.kept_positions(i)[0].tolist()] for i in range(len(cache.layers))]
                        logits = model(window[None, C:], cache=cache).logits[0]
                    key = f"full/{impl}" if method is None else f"{method}/{b}"
                    s = nll(torch.cat([last, logits[:-1]]), window[C:])
                    res["evict"].setdefault(key, []).append({"nll": s, "tokens": float(window.numel() - C),
                                                             "positions": positions})
                    log(f"[nmx] window {w} {key}: nll/token {s / (window.numel() - C):.4f}")
    model.set_attn_implementation("sdpa")
    quant = {"dense": KVPolicy(full_precision="model")}
    for bits, axis in QUANT:
        quant[f"int{bits}/{axis}"] = KVPolicy.from_dict({"quant": {
            "format": f"int{bits}_asym", "key_axis": axis, "value_axis": "token", "group": 64, "residual": 128},
            "full_precision": "model"})  # float32 residual, as QuantizedCache keeps it
    for key, pol in quant.items():
        total, count, bpt = 0.0, 0.0, []
        for window in quant_ids:
            cache = KVCache(pol, model)
            with attention_for(pol, model, quiet=True):
                total += window_nll(model, window, cache, args.chunk)
            count += window.numel() - 1
            bpt.append(cache.bytes_per_token())
        res["quant"][key] = {"nll": total, "tokens": count, "bytes_per_token": bpt}
        log(f"[nmx] quant {key}: ppl {math.exp(total / count):.3f}")
    return res


def ppl(rows: list[dict]) -> float:
    return math.exp(sum(r["nll"] for r in rows) / sum(r["tokens"] for r in rows))


def overlap(a: list[dict], b: list[dict]) -> tuple[float, float, list[int]]:
    """(mean |A & B| / |A| over windows, layers, heads; fraction of (window, layer, head) sets equal;
    the layers where some set differs)."""
    shares, equal, n, layers = 0.0, 0, 0, set()
    for ra, rb in zip(a, b, strict=True):
        for i, (la, lb) in enumerate(zip(ra["positions"], rb["positions"], strict=True)):
            for ha, hb in zip(la, lb, strict=True):
                shares += len(set(ha) & set(hb)) / len(ha)
                equal += ha == hb
                n += 1
                if ha != hb:
                    layers.add(i)
    return shares / n, equal / n, sorted(layers)


def report(args, nmx_res: dict, peer: dict, meta: dict) -> str:
    out = [f"Ran {meta['date']}: nmx {meta['nmx']} on transformers {meta['transformers']}; kvpress "
           f"{peer['versions']['kvpress']} and optimum-quanto {peer['versions']['optimum-quanto']} on transformers "
           f"{peer['versions']['transformers']}; torch {meta['torch']} CPU, {args.threads} thread(s); "
           f"{meta['wall_s'] / 60:.1f} min.", ""]
    out += ["### nmx vs kvpress: eviction after a one-forward prefill", "",
            f"Bound: smollm2-135m (float32), WikiText-2 test, first {args.windows} windows: a context of "
            f"{args.context} tokens compressed to the budget, then the next {args.continuation} tokens scored "
            "(perplexity of those). *kept positions*: mean share of kvpress's kept positions that nmx keeps too, "
            "over windows x 30 layers x 3 KV heads, the fraction of those sets that are identical, and the "
            "layers where some differ.", "",
            "| method | budget | kept positions shared | identical sets | layers differing | ppl nmx | ppl kvpress | "
            "nmx / kvpress |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for impl in ("sdpa", "eager"):
        a, b = nmx_res["evict"][f"full/{impl}"], peer["evict"][f"full/{impl}"]
        out.append(f"| full cache ({impl}) | - | - | - | - | {ppl(a):.4f} | {ppl(b):.4f} | {ppl(a) / ppl(b):.6f} |")
    for method in METHODS:
        for bgt in args.budgets:
            key = f"{method}/{bgt}"
            a, b = nmx_res["evict"].get(key), peer["evict"].get(key)
            if not a or not b:
                out.append(f"| {method} | {bgt} | not run | | | | | |")
                continue
            share, same, layers = overlap(a, b)
            out.append(f"| {method} | {bgt} | {100 * share:.2f} % | {100 * same:.1f} % | {layers or '-'} | "
                       f"{ppl(a):.4f} | {ppl(b):.4f} | {ppl(a) / ppl(b):.4f} |")
    out += ["", "### nmx int-asym KV vs transformers QuantizedCache (quanto)", "",
            f"Bound: first {args.quant_windows} window(s) of {args.seq_len} tokens, fed {args.chunk} tokens per "
            "forward (streaming perplexity). Both: min-max affine, group 64 (= head_dim, so per token = one "
            "scale per token and head), residual 128 in full precision (float32 on both sides); axis = the "
            "keys' axis, values per token. B/token: bytes held at the end of the window / tokens (nmx: its "
            "accounting; QuantizedCache: the storage of its tensors, quanto's packed data, scales and shifts).",
            "", "| KV | axis (keys) | ppl nmx | ppl QuantizedCache | nmx / QuantizedCache | B/token nmx | "
            "B/token QuantizedCache |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for key in ["dense", *[f"int{b}/{a}" for b, a in QUANT]]:
        a, b = nmx_res["quant"].get(key), peer["quant"].get(key)
        bits, axis = (key.split("/") + ["-"])[:2]
        if a is None or b is None:
            out.append(f"| {bits} | {axis} | {ppl([a]) if a else '-'} | not run: "
                       f"{peer['errors'].get('QuantizedCache ' + key, 'missing')} | | | |")
            continue
        pa, pb = math.exp(a["nll"] / a["tokens"]), math.exp(b["nll"] / b["tokens"])
        out.append(f"| {bits} | {axis} | {pa:.3f} | {pb:.3f} | {pa / pb:.4f} | "
                   f"{sum(a['bytes_per_token']) / len(a['bytes_per_token']):.0f} | "
                   f"{sum(b['bytes_per_token']) / len(b['bytes_per_token']):.0f} |")
    if peer["errors"]:
        out += ["", "Errors on the peer side: " + "; ".join(f"{k}: {v}" for k, v in peer["errors"].items())]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--continuation", type=int, default=256)
    p.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    p.add_argument("--quant-windows", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--python", default=KVPRESS_PYTHON, help="the kvpress venv's interpreter")
    p.add_argument("--json-out", default=None)
    a = p.parse_args(argv)
    if a.worker:
        worker(a.worker)
        return 0
    try:
        import nmx  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT / "src"))
    import platform

    import transformers

    import nmx
    from nmx.eval.perplexity import tokenize, windows_of
    from nmx.eval.text import load_text
    from nmx.model import load_model
    from nmx.model.sources import cache_dir

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    loaded = load_model("smollm2-135m", "cpu")
    ids = tokenize(loaded.tokenizer, load_text("wikitext-2"))
    wins = windows_of(ids, a.seq_len, max(a.windows, a.quant_windows), "wikitext-2")
    evict_ids = [w[: a.context + a.continuation] for w in wins[: a.windows]]
    quant_ids = [w for w in wins[: a.quant_windows]]
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"model_dir": str(cache_dir() / "smollm2-135m" / "hf"), "ids": f"{tmp}/ids.pt", "out": f"{tmp}/out.json",
                "context": a.context, "budgets": a.budgets, "chunk": a.chunk, "threads": a.threads}
        torch.save({"evict": evict_ids, "quant": quant_ids}, spec["ids"])
        Path(f"{tmp}/spec.json").write_text(json.dumps(spec))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        log(f"kvpress worker: {a.python}")
        done = subprocess.run([a.python, __file__, "--worker", f"{tmp}/spec.json"], env=env)
        if done.returncode != 0:
            log(f"the kvpress worker failed (exit {done.returncode})")
            return 1
        peer = json.loads(Path(spec["out"]).read_text())
    nmx_res = nmx_side(a, loaded, evict_ids, quant_ids)
    meta = {"date": time.strftime("%Y-%m-%d"), "nmx": nmx.__version__, "transformers": transformers.__version__,
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "wall_s": time.perf_counter() - t0, "command": " ".join(sys.argv)}
    print(report(a, nmx_res, peer, meta))
    record = {"meta": meta, "args": vars(a), "nmx": nmx_res, "peer": peer}
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(record))
    summary = {"evict": {k: {"ppl_nmx": ppl(v), "ppl_kvpress": ppl(peer["evict"][k]),
                             **({"kept_shared": overlap(v, peer["evict"][k])[0]} if v[0]["positions"] else {})}
                         for k, v in nmx_res["evict"].items() if k in peer["evict"]},
               "quant": {k: {"ppl_nmx": math.exp(v["nll"] / v["tokens"]),
                             "ppl_quantizedcache": math.exp(peer["quant"][k]["nll"] / peer["quant"][k]["tokens"])}
                         for k, v in nmx_res["quant"].items() if k in peer["quant"]},
               "errors": peer["errors"]}
    print(json.dumps({"meta": meta, "summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
