"""Acceptance (issue 15, item 7): weight format x dataflow co-search on Llama-2-7B linears.

    python benchmarks/format_search.py [--design examples/hw/dense_16x16_ws.yaml] [--value-bits 8 16]

Cases: the three distinct linear shapes of Llama-2-7B (q/k/v/o 4096x4096, gate/up 11008x4096,
down 4096x11008) x decode (batch 1: m = 1) and prefill (2048 tokens: m = 2048) x 50 / 70 / 90 %
unstructured weight sparsity (expected sizes of a uniformly random mask). Per case: the
co-searched best point (nmx.hw.format_search.search), the exhaustive search over the same space
(time, same optimum), the best point of each fixed format. Printed: the per-case table, the mean
memory-energy saving over the best single fixed format (the one format, used for all 18 cases,
whose mean loss is smallest - chosen from the whole space and from the classic formats), and a
check of expected against exact sizes on a real random 4096x4096 mask.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--design", default=str(ROOT / "examples" / "hw" / "dense_16x16_ws.yaml"))
    ap.add_argument("--value-bits", default=["int8", "bf16"], nargs="+", metavar="FORMAT",
                    help="Weight number formats to run (their code bits are the stored value bits).")
    ap.add_argument("--mask-check", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()

    from nmx.hw.accel_spec import load_accel
    from nmx.hw.format_search import (
        FiberFormat,
        Machine,
        Space,
        co_search,
        describe_space,
        format_size,
        layer_cases,
    )
    from nmx.hw.workload import Compression, llm_workload

    spec = load_accel(args.design)
    mach = Machine.from_spec(spec)
    space = Space()
    print(f"# format x dataflow co-search, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"python {sys.version.split()[0]}")
    print(f"command: python benchmarks/format_search.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"design: {spec.name} ({spec.rows}x{spec.cols} PEs, {spec.glb_kb:g} KiB buffer at "
          f"{mach.sram_pj_per_bit:.3f} pJ/bit, DRAM {spec.dram_type} {mach.dram_pj_per_bit:g} pJ/bit, "
          f"{spec.tech_nm} nm)")
    for wfmt in args.value_bits:
        cases = []
        for phase in ("decode", "prefill"):
            w = llm_workload("llama-2-7b", phase, batch=1, tokens=2048,
                             compression=Compression(weights=wfmt, activations="int8"))
            cases += [(phase, c) for c in layer_cases(w, [0.5, 0.7, 0.9])]
        d = describe_space(cases[-1][1], space)
        print(f"\n## weights {wfmt} ({cases[0][1].value_bits}-bit values), activations int8")
        print(f"space per case: {d['formats']} formats x {d['tiles']} weight tiles x up to "
              f"{d['dataflow_points_per_tile']} (stationarity x loop order x m-tile) points = up to "
              f"{d['joint_points']:,} joint points")
        t0 = time.perf_counter()
        res = co_search([c for _, c in cases], mach, space, check=True)
        wall = time.perf_counter() - t0
        s = res["summary"]
        any_f = s["best_fixed_any"]["format"]
        cls = s["best_fixed_classic"]["label"]
        print(f"\nbest single fixed format of the whole space: {any_f}; of the classic ones: {cls} "
              f"({s['best_fixed_classic']['format']})\n")
        print("| phase | layer (n x k) | sparsity | co-searched best: format | dataflow, loop, tile m,n,k | "
              f"mem. energy uJ | saving vs {any_f} | vs {cls} | vs bitmap | vs csr | vs format-then-dataflow | "
              "search ms | exhaustive ms | same optimum |")
        print("|" + "---|" * 14)
        for (phase, c), r in zip(cases, res["rows"], strict=True):
            b = r["best"]
            fmt = b["format"] + (f" (r={b['rle_bits']})" if b["rle_bits"] else "")
            print(f"| {phase} | {c.name} ({c.n}x{c.k}) | {c.sparsity:.0%} | {fmt} | {b['dataflow']}, "
                  f"{b['loop_order']}, {','.join(map(str, b['tile']))} | {b['memory_energy_pj'] * 1e-6:.4g} | "
                  f"{r['fixed_any']['saving']:.1%} | {r['fixed'][cls]['saving']:.1%} | "
                  f"{r['fixed']['bitmap']['saving']:.1%} | {r['fixed']['csr']['saving']:.1%} | "
                  f"{r['sequential']['saving']:.1%} | {r['search_s'] * 1e3:.0f} | {r['exhaustive_s'] * 1e3:.0f} | "
                  f"{'yes' if r['same_energy'] else 'NO'} |")
        print(f"\nmean saving of the co-searched best over the best single fixed format ({any_f}): "
              f"{s['best_fixed_any']['mean_saving']:.2%}; over {cls}: {s['best_fixed_classic']['mean_saving']:.2%}")
        by_sp = {}
        for (_, c), r in zip(cases, res["rows"], strict=True):
            by_sp.setdefault(round(c.sparsity, 2), []).append(r["fixed_any"]["saving"])
        print("  by sparsity (vs " + any_f + "): " + ", ".join(f"{k:.0%}: {np.mean(v):.2%}" for k, v in by_sp.items()))
        print("mean saving over each classic format: " + ", ".join(
            f"{k} {v:.2%}" for k, v in s["mean_saving_by_fixed"].items()))
        print(f"mean saving over format-then-dataflow (smallest untiled format, then its best dataflow): "
              f"{s['mean_saving_over_sequential']:.2%}")
        print(f"search time, {len(cases)} cases: pruned {s['search_s']:.2f} s vs exhaustive {s['exhaustive_s']:.2f} s "
              f"({s['exhaustive_s'] / s['search_s']:.1f}x)")
        dec = [r for r in res["rows"] if r["m"] == 1]
        pre = [r for r in res["rows"] if r["m"] > 1]
        for label, rows in (("decode", dec), ("prefill", pre)):
            se, ex = sum(r["search_s"] for r in rows), sum(r["exhaustive_s"] for r in rows)
            ev = sum(r["search_energy_evals"] for r in rows), sum(r["exhaustive_energy_evals"] for r in rows)
            print(f"  {label}: {se:.2f} s vs {ex:.2f} s ({ex / se:.1f}x); energy evaluations {ev[0]:,} vs {ev[1]:,}")
        print(f"same optimum in every case: {'yes' if s['all_same_energy'] else 'NO'}; wall time {wall:.1f} s")

        if args.mask_check:
            rng = np.random.default_rng(0)
            print("\nexpected vs exact size of each 4096x4096 best format on a random mask (seed 0):")
            for (phase, c), r in zip(cases, res["rows"], strict=True):
                if c.n != 4096 or c.k != 4096 or phase != "decode":
                    continue
                mask = rng.random((c.n, c.k)) < c.density
                tile = tuple(r["best"]["tile"][1:])
                f = FiberFormat.parse(r["best"]["format"])
                ex = format_size(f, (c.n, c.k), mask=mask, tile=tile, value_bits=c.value_bits).bits
                ev = format_size(f, (c.n, c.k), density=c.density, tile=tile, value_bits=c.value_bits).bits
                print(f"  {c.sparsity:.0%} {f.name} tile {tile}: expected {ev / 8e6:.4f} MB, exact {ex / 8e6:.4f} MB "
                      f"(mask density {mask.mean():.4f}; exact / expected {ex / ev:.4f})")


if __name__ == "__main__":
    main()
