"""KV-cache compression study (issue 5, acceptance items 1-4, plus generation agreement and passkey).

On smollm2-135m (the dequantized Q4_1 GGUF checkpoint, float32 on the CPU) and WikiText-2 test:

  dense     perplexity without a cache (the pinned protocol: one forward per window) and through an
            nmx KVCache that compresses nothing (bf16 slots, fed `--chunk` tokens per forward): the
            reference every compressed row is compared against (same chunking, same storage dtype)
  quant     int8 / int4 / int2 (symmetric, one fp16 scale per group), int4_asym / int2_asym (min-max
            with a zero point, as KIVI), fp8_e4m3 (no scale), mxfp4, nvfp4 KV; axes KIVI (keys per
            channel, values per token) vs naive per-token (keys and values per token); with and
            without the residual window (R = 128 full-precision recent tokens, or R = 0)
  evict     streaming / recent / h2o / snapkv / tova / random at budgets 128, 256, 512 tokens per layer
  merge     merge (fold evicted tokens into their most similar kept neighbour) vs drop, same budgets
  combined  2:4 Wanda + mxfp4 weights, alone and with 4-bit KIVI (int4_asym) + streaming eviction,
            through nmx's recipe path (`nmx.recipe.load_recipe(base=...)` + `nmx.runner.run`)
  agree     greedy-generation agreement with the full cache (nmx.kv.evaluate.generation_agreement)
  passkey   passkey retrieval vs depth, with the full-cache baseline (nmx.kv.evaluate.passkey)

Bounded protocol (2 shared CPU cores, and the CPU path dequantizes every page each forward): the
first `--windows` non-overlapping windows of `--seq-len` tokens, each fed `--chunk` tokens per
forward through a fresh cache (so with a budget b a forward attends to between b and b + chunk
cached tokens). Every table states its bound. Rows go to a JSONL file as they finish; `--resume`
reuses rows already there for the same protocol (only to continue an interrupted run).

    NMX_DATA_DIR=/work/shared/data /work/venv/bin/python benchmarks/kv_study.py \\
        --parts dense evict merge combined quant --windows 2 --chunk 64 \\
        --rows benchmarks/results/kv_study_rows.jsonl --runs-dir benchmarks/results/kv_study_runs \\
        --json-out benchmarks/results/kv_study.json > benchmarks/results/kv_study.md
    NMX_DATA_DIR=/work/shared/data /work/venv/bin/python benchmarks/kv_study.py --parts agree passkey \\
        --rows benchmarks/results/kv_study_tasks_rows.jsonl --json-out benchmarks/results/kv_study_tasks.json \\
        > benchmarks/results/kv_study_tasks.md
    # about 60 and 14 minutes on 2 shared AMD EPYC cores (1 torch thread, load average 2.5-3)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import nmx  # noqa: F401
except ImportError:  # run from a checkout without nmx installed
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

import nmx  # noqa: E402
from nmx.eval.perplexity import perplexity  # noqa: E402
from nmx.eval.text import load_text  # noqa: E402
from nmx.kv import KVCache, KVPolicy, attention_for, dense_bytes_per_token, expected_nbytes  # noqa: E402
from nmx.model import load_model  # noqa: E402

MODEL = "smollm2-135m"
FORMATS = ["int8", "int4", "int2", "int4_asym", "int2_asym", "fp8_e4m3", "mxfp4", "nvfp4"]
UNSCALED = {"fp8_e4m3"}  # no scale: the axis does not matter
AXES = {"KIVI": ("channel", "token"), "per-token": ("token", "token")}
RESIDUALS = (128, 0)
EVICT = ["streaming", "recent", "h2o", "snapkv", "tova", "random"]
MERGE = ["streaming", "h2o"]
BUDGETS = (128, 256, 512)
KIVI4 = {"format": "int4_asym", "key_axis": "channel", "value_axis": "token", "group": 32, "residual": 128}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Study:
    def __init__(self, args):
        self.args = args
        self.protocol = {"model": MODEL, "text": "wikitext-2", "seq_len": args.seq_len, "windows": args.windows,
                         "chunk": args.chunk, "threads": args.threads}
        self.rows: dict[str, dict] = {}
        self.path = Path(args.rows) if args.rows else None
        if self.path and args.resume and self.path.is_file():
            for line in self.path.read_text().splitlines():
                r = json.loads(line)
                if r.get("protocol") == self.protocol:
                    self.rows[r["id"]] = r
            log(f"resume: {len(self.rows)} rows from {self.path}")
        elif self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")
        self._loaded = None
        self.text = load_text("wikitext-2")

    @property
    def loaded(self):
        if self._loaded is None:
            self._loaded = load_model(MODEL, "cpu")
        return self._loaded

    def save(self, row: dict) -> dict:
        row = {**row, "protocol": self.protocol}
        self.rows[row["id"]] = row
        if self.path:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        return row

    def ppl(self, rid: str, policy: dict | None, **extra) -> dict:
        """Perplexity of the bounded protocol through a cache under `policy` (None: no cache)."""
        if rid in self.rows:
            return self.rows[rid]
        m, tok = self.loaded.model, self.loaded.tokenizer
        t0 = time.perf_counter()
        if policy is None:
            r = perplexity(m, tok, self.text, self.args.seq_len, self.args.windows)
            r["kv_bytes_per_token"] = dense_bytes_per_token(m.config)
            marginal = float(dense_bytes_per_token(m.config))
        else:
            pol = KVPolicy.from_dict(policy)
            with attention_for(pol, m, quiet=True):
                r = perplexity(m, tok, self.text, self.args.seq_len, self.args.windows,
                               new_cache=lambda: KVCache(pol, m), chunk=self.args.chunk)
            marginal = None
            if pol.evict is None:  # bytes each further token adds once the residual window is full
                t1, t2 = 8192, 8192 + 64 * (pol.quant.chunk if pol.quant else 1)
                marginal = (expected_nbytes(pol, m.config, t2) - expected_nbytes(pol, m.config, t1)) / (t2 - t1)
        row = self.save({"id": rid, "policy": policy, "perplexity": r["perplexity"], "nll": r["nll"],
                         "eval_tokens": r["eval_tokens"], "kv_bytes_per_token": r["kv_bytes_per_token"],
                         "marginal_bytes_per_token": marginal, "wall_s": time.perf_counter() - t0, **extra})
        log(f"{rid}: ppl {row['perplexity']:.3f}  {row['kv_bytes_per_token']:.0f} B/token  {row['wall_s']:.0f} s")
        return row

    # ---- parts ------------------------------------------------------------------------------

    def dense(self):
        self.ppl("dense/nocache", None)
        self.ppl("dense/cache-bf16", {})

    def quant(self):
        for fmt in FORMATS:
            for axes, (ka, va) in AXES.items():
                if fmt in UNSCALED and axes != "KIVI":
                    continue
                for res in RESIDUALS:
                    q = {"format": fmt, "key_axis": ka, "value_axis": va, "residual": res}
                    self.ppl(f"quant/{fmt}/{axes}/R{res}", {"quant": q}, format=fmt, axes=axes, residual=res)

    def evict(self):
        for b in BUDGETS:
            for meth in EVICT:
                self.ppl(f"evict/{meth}/{b}", {"evict": {"method": meth, "budget": b}}, method=meth, budget=b)

    def merge(self):
        for b in BUDGETS:
            for meth in MERGE:
                self.ppl(f"evict/{meth}/{b}", {"evict": {"method": meth, "budget": b}}, method=meth, budget=b)
                self.ppl(f"merge/{meth}/{b}", {"evict": {"method": meth, "budget": b}, "merge": True},
                         method=meth, budget=b)

    def combined(self):
        from nmx.recipe import load_recipe
        from nmx.runner import run

        a = self.args
        base = {"model": MODEL, "device": "cpu",
                "calibration": {"text": "tinyshakespeare", "samples": a.calib_samples, "seq_len": a.calib_seq_len,
                                "seed": 0},
                "evaluation": {"text": "wikitext-2", "seq_len": a.seq_len, "max_windows": a.windows}}
        weights = {"sparsity": {"method": "wanda", "pattern": "2:4"}, "quantization": {"weights": "mxfp4"}}
        kv = {"kv_cache": {"quant": KIVI4, "evict": {"method": "streaming", "sinks": 4, "budget": 512},
                           "chunk": a.chunk}}
        out_root = Path(a.runs_dir) if a.runs_dir else Path(tempfile.mkdtemp())
        for name, extra in (("weights", weights), ("kv", kv), ("weights+kv", {**weights, **kv})):
            rid = f"combined/{name}"
            if rid in self.rows:
                continue
            recipe = load_recipe(base={**base, **extra})
            t0 = time.perf_counter()
            res = run(recipe, out=out_root / name.replace("+", "_"), loaded=load_model(MODEL, "cpu"))
            row = self.save({"id": rid, "recipe": recipe.as_dict(), "perplexity": res["perplexity"],
                             "eval_tokens": res["eval_tokens"], "kv_bytes_per_token": res["kv_bytes_per_token"],
                             "bits_per_weight": res["bits_per_weight"], "weight_sparsity": res["weight_sparsity"],
                             "wall_s": time.perf_counter() - t0, "run_dir": str(out_root / name.replace("+", "_"))})
            log(f"{rid}: ppl {row['perplexity']:.3f}  {row['kv_bytes_per_token']:.0f} B/token  "
                f"{row['bits_per_weight']:.2f} bits/weight  {row['wall_s']:.0f} s")

    def task_policies(self) -> dict[str, dict]:
        return {
            "int4_asym KIVI R128": {"quant": KIVI4},
            "int2_asym KIVI R128": {"quant": {**KIVI4, "format": "int2_asym"}},
            "streaming 128": {"evict": {"method": "streaming", "budget": 128}},
            "streaming 256": {"evict": {"method": "streaming", "budget": 256}},
            "recent 256": {"evict": {"method": "recent", "budget": 256}},
            "h2o 256": {"evict": {"method": "h2o", "budget": 256}},
            "snapkv 256": {"evict": {"method": "snapkv", "budget": 256}},
            "tova 256": {"evict": {"method": "tova", "budget": 256}},
        }

    def agree(self):
        from nmx.eval.perplexity import tokenize
        from nmx.kv.evaluate import generation_agreement

        a = self.args
        ids = tokenize(self.loaded.tokenizer, self.text)
        # prompts from the text after the windows the perplexity rows score, at fixed strides
        start = a.seq_len * a.windows
        prompts = [ids[start + i * 4096: start + i * 4096 + a.prompt_tokens] for i in range(a.prompts)]
        for name, pol in self.task_policies().items():
            rid = f"agree/{name}"
            if rid in self.rows:
                continue
            t0 = time.perf_counter()
            out = generation_agreement(self.loaded.model, self.loaded.tokenizer, prompts, KVPolicy.from_dict(pol),
                                       max_new_tokens=a.new_tokens, chunk=None)
            row = self.save({"id": rid, "policy": pol, **out["overall"], "prompt_tokens": a.prompt_tokens,
                             "first_divergence": [p["first_divergence"] for p in out["prompts"]],
                             "wall_s": time.perf_counter() - t0})
            log(f"{rid}: match {row['match_rate']:.3f}  first divergence {row['first_divergence']}  "
                f"{row['wall_s']:.0f} s")

    def passkey(self):
        from nmx.kv.evaluate import passkey

        a = self.args
        pols = {"int4_asym KIVI R128": {"quant": KIVI4}, "streaming 256": {"evict": {"method": "streaming",
                                                                                     "budget": 256}},
                "h2o 256": {"evict": {"method": "h2o", "budget": 256}},
                "snapkv 256": {"evict": {"method": "snapkv", "budget": 256}}}
        first = True
        for name, pol in pols.items():
            rid = f"passkey/{name}"
            if rid in self.rows:
                first = False
                continue
            t0 = time.perf_counter()
            out = passkey(self.loaded.model, self.loaded.tokenizer, KVPolicy.from_dict(pol), depths=a.depths,
                          lengths=a.lengths, seed=0, trials=a.trials, chunk=None, baseline=first)
            if first:
                self.save({"id": "passkey/full cache", "policy": None, "accuracy": out["baseline_accuracy"],
                           "rows": [{k: r[k] for k in ("length", "depth", "key", "tokens", "full_answer",
                                                       "full_correct")} for r in out["rows"]],
                           "protocol_passkey": out["protocol"]})
                first = False
            row = self.save({"id": rid, "policy": pol, "accuracy": out["accuracy"],
                             "rows": [{k: r[k] for k in ("length", "depth", "key", "tokens", "answer", "correct")}
                                      for r in out["rows"]],
                             "protocol_passkey": out["protocol"], "wall_s": time.perf_counter() - t0})
            log(f"{rid}: accuracy {row['accuracy']['overall']:.2f}  {row['wall_s']:.0f} s")


# ---- tables ----------------------------------------------------------------------------------


def fmt_ppl(r: dict, ref: dict | None) -> str:
    if ref is None:
        return f"{r['perplexity']:.3f}"
    return f"{r['perplexity']:.3f} ({100 * (r['perplexity'] / ref['perplexity'] - 1):+.1f} %)"


def tables(study: Study) -> str:
    R, a = study.rows, study.args
    bound = (f"smollm2-135m (dequantized Q4_1, float32, CPU), WikiText-2 test, first {a.windows} windows of "
             f"{a.seq_len} tokens ({a.windows * (a.seq_len - 1)} tokens scored), fed {a.chunk} tokens per forward "
             f"through a fresh cache per window")
    dense_b = dense_bytes_per_token(study.loaded.model.config) if R else 0
    ref = R.get("dense/cache-bf16")
    out = []
    if "dense/nocache" in R or ref:
        out += ["### Dense reference", "", f"Bound: {bound}.", "",
                "| cache | perplexity | KV bytes/token |", "| --- | --- | --- |"]
        for rid, label in (("dense/nocache", "none (one forward per window)"),
                           ("dense/cache-bf16", f"nmx KVCache, nothing compressed (bf16 slots, chunk {a.chunk})")):
            if rid in R:
                out.append(f"| {label} | {R[rid]['perplexity']:.3f} | {R[rid]['kv_bytes_per_token']:.0f} |")
        out.append("")
    q = [r for k, r in R.items() if k.startswith("quant/")]
    if q:
        out += ["### 1. Quantized KV", "", f"Bound: {bound}. Relative change against the uncompressed cache "
                f"({ref['perplexity']:.3f} at {dense_b} B/token) in brackets. *B/token*: the cache's bytes "
                f"over the tokens seen at the end of each window (the residual window included), mean over "
                f"windows; *marginal*: bytes each further token adds once the residual window is full (pages "
                f"only), from `expected_nbytes`. Groups: 32 tokens or channels per scale (int*, mxfp4), 16 "
                f"(nvfp4); fp8_e4m3 has no scale, so its axes do not matter.", "",
                "| format | axes (K / V) | residual | perplexity | B/token | marginal B/token | x smaller (marginal) |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in q:
            ka, va = AXES[r["axes"]]
            axes = "n/a (no scale)" if r["format"] in UNSCALED else f"{r['axes']} ({ka} / {va})"
            out.append(f"| {r['format']} | {axes} | {r['residual']} | {fmt_ppl(r, ref)} | "
                       f"{r['kv_bytes_per_token']:.0f} | {r['marginal_bytes_per_token']:.1f} | "
                       f"{dense_b / r['marginal_bytes_per_token']:.2f} |")
        out.append("")
    if any(k.startswith("evict/") for k in R):
        out += ["### 2. Eviction", "", f"Bound: {bound}. Budget in tokens per layer and KV head (bf16 slots); "
                "perplexity (relative to the uncompressed cache); B/token = bytes held at the end of each "
                "window / tokens seen (h2o adds 4 bytes per slot and head for its accumulated attention). "
                "Defaults: streaming 4 sinks; h2o recent window b/2; snapkv observation window min(32, b/2), "
                "pool 7; random seed 0.", ""]
        out += ["| method | " + " | ".join(f"budget {b}" for b in BUDGETS) + " |",
                "| --- |" + " --- |" * len(BUDGETS)]
        for meth in EVICT:
            cells = [R.get(f"evict/{meth}/{b}") for b in BUDGETS]
            if any(cells):
                out.append(f"| {meth} | " + " | ".join(
                    f"{fmt_ppl(c, ref)}, {c['kv_bytes_per_token']:.0f} B" if c else "-" for c in cells) + " |")
        out.append("")
    if any(k.startswith("merge/") for k in R):
        out += ["### 3. Merge vs drop", "", f"Bound: {bound}. Same budgets; merge folds each evicted token into "
                "its most similar kept token (cosine of keys), weights recorded (4 bytes per slot and head).", "",
                "| method | budget | drop | merge | merge - drop |", "| --- | --- | --- | --- | --- |"]
        for meth in MERGE:
            for b in BUDGETS:
                d, m = R.get(f"evict/{meth}/{b}"), R.get(f"merge/{meth}/{b}")
                if d and m:
                    out.append(f"| {meth} | {b} | {d['perplexity']:.3f} ({d['kv_bytes_per_token']:.0f} B) | "
                               f"{m['perplexity']:.3f} ({m['kv_bytes_per_token']:.0f} B) | "
                               f"{m['perplexity'] - d['perplexity']:+.3f} |")
        out.append("")
    c = {k.split("/", 1)[1]: r for k, r in R.items() if k.startswith("combined/")}
    if c:
        nc = R.get("dense/nocache")
        out += ["### 4. Combined (nmx recipe path)", "", f"Bound: {bound} (the KV rows; the weights-only row has "
                f"no cache, one forward per window). Wanda calibrated on {a.calib_samples} x {a.calib_seq_len} "
                "tokens of tinyshakespeare (seed 0). KV: int4_asym KIVI (keys per channel, values per token, "
                "group 32, residual 128) + streaming (4 sinks, budget 512).", "",
                "| row | perplexity | vs dense | bits/weight | weight sparsity | KV B/token |",
                "| --- | --- | --- | --- | --- | --- |"]
        if nc:
            out.append(f"| dense (no cache) | {nc['perplexity']:.3f} | - | (Q4_1 dequantized, float32) | 0 | "
                       f"{nc['kv_bytes_per_token']:.0f} |")
        labels = {"weights": "2:4 Wanda + mxfp4 weights", "kv": "4-bit KIVI + streaming 512 KV",
                  "weights+kv": "2:4 Wanda + mxfp4 weights + 4-bit KIVI + streaming 512"}
        for name in ("weights", "kv", "weights+kv"):
            if name in c:
                r = c[name]
                rel = f"{100 * (r['perplexity'] / nc['perplexity'] - 1):+.1f} %" if nc else "-"
                out.append(f"| {labels[name]} | {r['perplexity']:.3f} | {rel} | {r['bits_per_weight']:.2f} | "
                           f"{r['weight_sparsity']:.3f} | {r['kv_bytes_per_token']:.0f} |")
        out.append("")
    ag = [r for k, r in R.items() if k.startswith("agree/")]
    if ag:
        out += ["### Greedy-generation agreement with the full cache", "",
                f"{a.prompts} prompts of {a.prompt_tokens} WikiText-2 test tokens (from token "
                f"{a.seq_len * a.windows} on, 4096 apart), prefilled in one forward (a method evicts after "
                f"seeing the whole prompt), then {a.new_tokens} greedy tokens one per forward; the full "
                "cache is a transformers DynamicCache under the same attention implementation.", "",
                "| policy | token match rate | first divergence per prompt | identical | KV B/token |",
                "| --- | --- | --- | --- | --- |"]
        for r in ag:
            out.append(f"| {r['id'].split('/', 1)[1]} | {r['match_rate']:.3f} | {r['first_divergence']} | "
                       f"{r['identical']}/{r['prompts']} | {r['kv_bytes_per_token']:.0f} |")
        out.append("")
    pk = [r for k, r in R.items() if k.startswith("passkey/")]
    if pk:
        depths = list(pk[0]["accuracy"]["by_depth"])
        out += ["### Passkey retrieval", "", f"A 5-digit key in filler text at depths {', '.join(depths)} of "
                f"prompts of about {', '.join(str(n) for n in a.lengths)} tokens, {a.trials} trial(s) each "
                "(seed 0); the context goes through the cache in one forward (so eviction happens after it), "
                "then the question, then 8 greedy tokens. Accuracy per depth (all lengths).", "",
                "| cache | overall | " + " | ".join(f"depth {d}" for d in depths) + " | " +
                " | ".join(f"{n} tok" for n in a.lengths) + " |",
                "| --- |" + " --- |" * (1 + len(depths) + len(a.lengths))]
        for r in pk:
            acc = r["accuracy"]
            out.append(f"| {r['id'].split('/', 1)[1]} | {acc['overall']:.2f} | " +
                       " | ".join(f"{acc['by_depth'][d]:.2f}" for d in depths) + " | " +
                       " | ".join(f"{acc['by_length'][str(n)]:.2f}" for n in a.lengths) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", default=["dense", "quant", "evict", "merge", "combined"],
                   choices=["dense", "quant", "evict", "merge", "combined", "agree", "passkey"])
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the cores are shared)")
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-seq-len", type=int, default=512)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--trials", type=int, default=1)
    p.add_argument("--rows", default=None, help="JSONL file the rows are appended to")
    p.add_argument("--resume", action="store_true", help="reuse rows of the same protocol from --rows")
    p.add_argument("--runs-dir", default=None, help="where the combined recipe runs write result.json")
    p.add_argument("--json-out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    study = Study(a)
    parts = list(a.parts)
    if {"quant", "evict", "merge"} & set(parts) and "dense" not in parts:
        parts.insert(0, "dense")  # the reference the tables compare against
    for part in parts:
        getattr(study, part)()
    import platform

    import transformers

    meta = {"versions": {"nmx": nmx.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                         "python": platform.python_version()},
            "machine": platform.machine(), "processor": platform.processor() or None,
            "date": time.strftime("%Y-%m-%d"), "wall_s": time.perf_counter() - t0, "protocol": study.protocol,
            "command": " ".join(sys.argv)}
    print(f"Ran {meta['date']} on {meta['machine']}, torch {torch.__version__} ({a.threads} thread(s)), "
          f"transformers {transformers.__version__}, nmx {nmx.__version__}; {meta['wall_s'] / 60:.1f} min.\n")
    print(tables(study))
    record = {"meta": meta, "rows": list(study.rows.values())}
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(record, indent=1))
    print(json.dumps({"meta": meta, "summary": {k: {f: r.get(f) for f in ("perplexity", "kv_bytes_per_token",
                                                                         "match_rate")}
                                                for k, r in study.rows.items()}}))
    return 0 if all(math.isfinite(r.get("perplexity", 0.0)) for r in study.rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
