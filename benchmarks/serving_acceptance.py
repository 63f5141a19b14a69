"""Issue 15 acceptance (serving): colocated vs chunked-prefill colocated vs prefill/decode
disaggregated vs attention/FFN disaggregated, goodput per GPU, for Llama-2-7B- and Llama-3-70B-shaped
models under two SLO settings, dense bf16 vs 2:4 + nvfp4 weights + int4 KV, on h100-sxm and h200.

    python benchmarks/serving_acceptance.py --out DIR [--jobs 2] [--quick]

Everything is the seeded discrete-event model of `nmx.hw.serve` (no GPU is used): step times from
the GPU presets through the cost protocol (`--impl ideal` kernels, so 2:4 pays no per-call plan
setup), the recipe's real bytes (weights, N:M metadata, scales, KV). For every cell (model, GPU,
recipe) and deployment, the max goodput per GPU (DistServe's: the highest Poisson rate with >= 90 %
of requests meeting both SLOs, by bisection to 2 %) under each SLO setting; the simulations of one
deployment are shared by the two SLO settings (the SLOs only grade them).

Setup (argued in docs/serving.md):
- traffic: Poisson, >= 30 s of arrivals (>= 120 requests), prompt lognormal median 1024 sigma 0.5,
  output lognormal median 256 sigma 0.5, seed 0;
- SLOs: `tight` TTFT 0.2 s (7B) / 0.4 s (70B), TPOT 50 ms; `relaxed` TTFT 1.5 s, TPOT 150 ms;
- GPU budget: 4 GPUs for 7B, 16 for 70B; tp = the smallest power of two whose dense weights take at
  most half of each GPU's usable memory (0.9 x datasheet), for both recipes (so only the recipe
  changes), plus a compressed row at the smaller tp its weights allow where there is one; every
  instance of a cell has that tp; tensor parallelism pays two ring all-reduces per layer
  (nmx.hw.serve defaults);
- deployments: colocated on all GPUs; colocated with chunked prefill (chunks of 512 tokens);
  prefill/decode splits P:D of 1:3, 1:1, 3:1 of the budget; attention/FFN splits P:A:F of
  1:1:2, 1:2:1, 2:1:1 (P, A multiples of tp; F at least what the FFN weights need), each with 1
  micro-batch (serial) and 3 (Step-3's pipeline), 50 GB/s and 10 us per message between attention
  and FFN GPUs; KV link 50 GB/s per prefill GPU.

Writes DIR/serving_acceptance.json (every deployment's goodput, its label, the cell's setup) and
DIR/serving_acceptance.md (the table), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from nmx.hw.serve import MEMORY_GB, CostSteps, Deployment, LengthDist, Traffic, max_goodput
from nmx.hw.workload import Compression

MODELS = {"llama-2-7b": {"gpus": 4, "tight_ttft_s": 0.2}, "llama-3-70b": {"gpus": 16, "tight_ttft_s": 0.4}}
TARGETS = ("h100-sxm", "h200")
RECIPES = {"dense bf16": None,
           "2:4 + nvfp4 + int4 KV": Compression(weights="nvfp4", pattern="2:4", kv_format="int4_g32")}
TIGHT_TPOT_S = 0.05
RELAXED = {"ttft_slo_s": 1.5, "tpot_slo_s": 0.15}
CHUNK = 512
PD_FRACTIONS = ((1, 3), (1, 1), (3, 1))
AF_FRACTIONS = ((1, 1, 2), (1, 2, 1), (2, 1, 1))
DURATION_S = 30.0  # arrivals; an overload of x shows once x x 30 s exceeds the TTFT SLO
MICROBATCHES = (1, 3)  # serial, and Step-3's 3-stage pipeline


def pick_tp(target: str, model: str, comp: Compression | None, budget: int) -> int:
    """The smallest power of two whose weights per GPU take at most half the usable memory."""
    one = CostSteps(target, model, comp, gpu_impl="ideal")
    usable = 0.9 * MEMORY_GB[target] * 1e9
    for tp in (1, 2, 4, 8, 16):
        if one.weight_bytes / tp <= usable / 2 and budget % tp == 0:
            return tp
    raise SystemExit(f"{model} does not fit on {budget} x {target}")


def _round_to(x: float, tp: int, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, round(x / tp) * tp)))


def deployments(budget: int, tp: int, steps: CostSteps) -> dict[str, Deployment]:
    base = Deployment("colocated", gpus=budget, tp=tp)
    out = {"colocated": base, "chunked": replace(base, chunk_tokens=CHUNK)}
    for p_part, d_part in PD_FRACTIONS:
        p = _round_to(budget * p_part / (p_part + d_part), tp, tp, budget - tp)
        dep = replace(base, mode="disaggregated", prefill_gpus=p, decode_gpus=budget - p)
        out.setdefault(f"pd {dep.label}", dep)
    usable = 0.9 * MEMORY_GB[steps.target.name] * 1e9
    f_min = max(1, math.ceil(steps.ffn_weight_bytes / usable))
    for p_part, a_part, f_part in AF_FRACTIONS:
        total = p_part + a_part + f_part
        p = _round_to(budget * p_part / total, tp, tp, budget)
        a = _round_to(budget * a_part / total, tp, tp, budget)
        f = budget - p - a
        if f >= f_min:
            for m in MICROBATCHES:
                dep = replace(base, mode="attention-ffn", prefill_gpus=p, attention_gpus=a, ffn_gpus=f, microbatches=m)
                out.setdefault(f"af {dep.label} m{m}", dep)
    return out


def run_cell(cell: tuple[str, str, str, int], quick: bool) -> dict:
    model, target, recipe, tp = cell
    comp = RECIPES[recipe]
    budget = MODELS[model]["gpus"]
    t0 = time.time()
    steps = CostSteps(target, model, comp, tp=tp, gpu_impl="ideal")
    slos = {"tight": {"ttft_slo_s": MODELS[model]["tight_ttft_s"], "tpot_slo_s": TIGHT_TPOT_S}, "relaxed": RELAXED}
    base_traffic = Traffic(1.0, LengthDist.parse("lognormal:1024:0.5"), LengthDist.parse("lognormal:256:0.5"),
                           requests=60 if quick else 120, min_duration_s=6 if quick else DURATION_S, seed=0, **RELAXED)
    rows = {}
    for name, dep in deployments(budget, tp, steps).items():
        cache: dict = {}  # rate -> simulation, shared by the SLO settings
        res = {}
        for slo_name, slo in slos.items():
            g = max_goodput(replace(base_traffic, **slo), dep, steps, cache=cache, rel_tol=0.05 if quick else 0.02)
            sim = cache.get(g["rate_rps"])
            res[slo_name] = {"per_gpu_rps": g["per_gpu_rps"], "rate_rps": g["rate_rps"], "capped": g["capped"],
                             "kv_mb_per_request": sim.kv_transfer_bytes_per_request / 1e6 if sim else None,
                             "utilization": sim.utilization if sim else None}
        label = f"{dep.label} m{dep.microbatches}" if dep.mode == "attention-ffn" else dep.label
        rows[name] = {"label": label, "gpus": dep.total_gpus, "simulations": len(cache), **res}
    return {"model": model, "target": target, "recipe": recipe, "tp": tp, "gpus": budget, "slos": slos,
            "weight_gb_per_gpu": steps.weight_bytes / 1e9, "kv_mb_per_1k_tokens": steps.kv_bytes(1000) * tp / 1e6,
            "deployments": rows, "seconds": time.time() - t0}


def _best(rows: dict, prefix: str, slo: str) -> tuple[float, str]:
    cands = [(r[slo]["per_gpu_rps"], r["label"]) for k, r in rows.items() if k.startswith(prefix)]
    return max(cands, key=lambda c: c[0]) if cands else (float("nan"), "-")


def _fmt(rows: dict, key: str, slo: str) -> str:
    r = rows[key][slo]
    return f"{r['per_gpu_rps']:.3g}" + ("*" if r["capped"] else "")


def table(cells: list[dict]) -> str:
    """One row per cell and SLO setting: max goodput per GPU (requests/s) of each option (* capped at
    1.05 x the steady-state throughput bound: the SLOs did not bind first); the winner is every
    option within 3 % of the best (the bisection's resolution is 2 %)."""
    head = ("| model | GPU | recipe | tp | SLO (TTFT / TPOT) | colocated | chunked 512 | best P/D split | "
            "best A/F split | winner |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for c in cells:
        for slo in ("tight", "relaxed"):
            s = c["slos"][slo]
            rows = c["deployments"]
            pd, pd_label = _best(rows, "pd ", slo)
            af, af_label = _best(rows, "af ", slo)
            options = {"colocated": rows["colocated"][slo]["per_gpu_rps"],
                       "chunked": rows["chunked"][slo]["per_gpu_rps"], "P/D": pd, "A/F": af}
            top = max(v for v in options.values() if not math.isnan(v))
            winner = " ≈ ".join(k for k, v in sorted(options.items(), key=lambda kv: -kv[1]) if v >= 0.97 * top)
            pd_key = next(k for k, r in rows.items() if k.startswith("pd ") and r["label"] == pd_label)
            af_cell = "-" if af_label == "-" else \
                _fmt(rows, next(k for k, r in rows.items() if k.startswith("af ") and r["label"] == af_label), slo) + \
                f" ({af_label})"
            lines.append(f"| {c['model']} | {c['target']} | {c['recipe']} | {c['tp']} | {slo} "
                         f"({s['ttft_slo_s']:g} s / {s['tpot_slo_s'] * 1e3:g} ms) | {_fmt(rows, 'colocated', slo)} | "
                         f"{_fmt(rows, 'chunked', slo)} | {_fmt(rows, pd_key, slo)} ({pd_label}) | {af_cell} | "
                         f"{winner} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--jobs", type=int, default=1, help="cells simulated in parallel (processes)")
    ap.add_argument("--quick", action="store_true", help="shorter traffic and a coarser search (a smoke run)")
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = ap.parse_args()
    if args.jobs < 1:
        raise SystemExit("--jobs must be >= 1")
    args.out.mkdir(parents=True, exist_ok=True)
    cells = []
    for m in args.models:
        for t in TARGETS:
            tp = pick_tp(t, m, None, MODELS[m]["gpus"])  # the dense model's tp, for both recipes
            cells += [(m, t, r, tp) for r in RECIPES]
            tp_small = pick_tp(t, m, RECIPES["2:4 + nvfp4 + int4 KV"], MODELS[m]["gpus"])
            if tp_small < tp:  # and the fewer GPUs per instance the compressed weights allow
                cells.append((m, t, "2:4 + nvfp4 + int4 KV", tp_small))
    t0 = time.time()
    if args.jobs == 1:
        results = [run_cell(c, args.quick) for c in cells]
    else:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(run_cell, cells, [args.quick] * len(cells)))
    md = table(results)
    record = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "machine": f"{platform.processor() or platform.machine()}, {platform.system()}, python "
                         f"{platform.python_version()}", "seconds": time.time() - t0, "quick": args.quick,
              "cells": results}
    (args.out / "serving_acceptance.json").write_text(json.dumps(record, indent=1))
    (args.out / "serving_acceptance.md").write_text(md + "\n")
    print(md)
    print(f"\n{len(cells)} cells in {time.time() - t0:.0f} s; wrote {args.out}/serving_acceptance.json and .md")


if __name__ == "__main__":
    main()
