"""How fast the vectorized accelerator model evaluates design points (not a test; not in CI).

    /work/venv/bin/python benchmarks/accel_explore_bench.py [--repeat 3]

Targets (issue 4, section 4): >= 1e6 design points per second for one GEMM, and a whole LLM
decode step across 1e4 designs in under a second. Two kinds of design sets are timed:
  grid    an open-mesh factorial sweep (nmx.hw.accel.grid): each swept parameter on its own axis,
          the way `nmx explore --sweep` evaluates -- intermediates broadcast over few axes;
  random  independent random design points (every parameter a flat array of N values) -- the
          worst case for broadcasting, every intermediate is N long.
Prints one JSON object; the wall times are the best of --repeat runs (single process; numpy may
use its own threads).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from nmx.hw.accel import evaluate, gemm_problem, grid, nm_mask
from nmx.hw.accel_spec import OPERAND_FORMATS, load_accel
from nmx.hw.explore import pareto_mask
from nmx.hw.workload import Compression, llm_workload

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(HERE, "..", "examples", "hw", "uspe_16x16_ws.yaml")


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def random_designs(base: dict, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    p = dict(base)
    p["rows"] = rng.choice([4, 8, 16, 32, 64, 128], n)
    p["cols"] = rng.choice([4, 8, 16, 32, 64, 128], n)
    p["lanes"] = rng.choice([1, 2, 4, 8], n)
    p["glb_kb"] = rng.choice([16, 64, 256, 1024, 4096], n).astype(float)
    p["glb_bw"] = rng.choice([32, 64, 128, 256, 512], n).astype(float)
    p["dram_gb_s"] = rng.uniform(10, 1000, n)
    nm = rng.integers(0, 3, n)
    p["nm_group"] = np.where(nm == 0, 0, 4)
    p["nm_mask"] = np.select([nm == 1, nm == 2], [nm_mask([2]), nm_mask([1, 2, 3])], 0)
    p["dataflow"] = rng.integers(0, 3, n)
    p["weights_format"] = rng.integers(0, len(OPERAND_FORMATS), n)
    p["sparsity_mode"] = rng.integers(0, 3, n)
    p["tech_nm"] = rng.choice([45, 28, 16, 7], n)
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--points", type=int, default=1_000_000, help="random design points for one GEMM")
    args = ap.parse_args()
    spec = load_accel(BASE)
    base = spec.params()
    out: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
                             "processor": platform.processor() or platform.machine()},
                 "date": time.strftime("%Y-%m-%d %H:%M:%S")}

    # --- one GEMM: llama-2-7b q_proj at decode (M=1), int8 weights/activations, 2:4
    g = gemm_problem(1, 4096, 4096, weights="int8", activations="int8", pattern="2:4", name="q_proj")
    sweeps = {"pe_rows": ["4", "8", "16", "32", "64", "128"], "pe_cols": ["4", "8", "16", "32", "64", "128"],
              "lanes": ["1", "2", "4", "8"], "glb_kb": ["16", "64", "256", "1024", "4096"],
              "glb_bw": ["32", "64", "128", "256", "512"], "dram_gb_s": ["25", "51.2", "100", "200", "400", "800"],
              "nm": ["none", "2:4", "1:4|2:4|3:4"], "dataflow": ["ws", "os", "is"],
              "weights_format": ["dense", "bitmap", "csr", "nm"]}
    params, axes = grid(base, sweeps)
    n_grid = int(np.prod([len(v) for _, v in axes]))
    t, r = best_time(lambda: evaluate(params, g), args.repeat)
    t_grid_build, _ = best_time(lambda: grid(base, sweeps), args.repeat)
    t_pareto, front = best_time(lambda: pareto_mask(np.stack([np.ravel(r.latency_s), np.ravel(r.energy_pj),
                                                              np.ravel(r.area_um2)], 1)), 1)
    out["gemm_grid"] = {"points": n_grid, "eval_s": t, "points_per_s": n_grid / t, "grid_build_s": t_grid_build,
                        "pareto_s": t_pareto, "pareto_points": int(front.sum()),
                        "feasible": int(np.isfinite(r.latency_s).sum())}
    rp = random_designs(base, args.points)
    t, r = best_time(lambda: evaluate(rp, g), args.repeat)
    out["gemm_random"] = {"points": args.points, "eval_s": t, "points_per_s": args.points / t}

    # --- an LLM decode step (every op of llama-2-7b, context 2048) over 1e4 designs
    w = llm_workload("llama-2-7b", "decode", context=2048,
                     compression=Compression(weights="int8", activations="int8", pattern="2:4", kv_format="int8"))
    sweeps_llm = {"pe_rows": ["4", "8", "16", "32", "64"], "pe_cols": ["4", "8", "16", "32", "64"],
                  "glb_kb": ["32", "64", "128", "256", "512"], "dram_gb_s": ["25", "50", "100", "200"],
                  "nm": ["none", "2:4", "1:4|2:4|3:4", "4:8"],
                  "lanes": ["1", "2", "4", "8", "16"]}
    p_llm, axes_llm = grid(base, sweeps_llm)
    n_llm = int(np.prod([len(v) for _, v in axes_llm]))
    from nmx.hw.accel import problems_from_workload

    t_prep, probs = best_time(lambda: problems_from_workload(w), 1)
    t, r = best_time(lambda: evaluate(p_llm, probs), args.repeat)
    t_full, _ = best_time(lambda: evaluate(p_llm, w), 1)
    out["llm_decode_grid"] = {"designs": n_llm, "ops": len(probs), "eval_s": t, "eval_incl_workload_s": t_full,
                              "workload_to_problems_s": t_prep,
                              "min_latency_ms": float(np.nanmin(r.latency_s)) * 1e3}
    rp = random_designs(base, 10_000, seed=1)
    t, r = best_time(lambda: evaluate(rp, probs), args.repeat)
    out["llm_decode_random"] = {"designs": 10_000, "eval_s": t}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
