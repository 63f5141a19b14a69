"""Issue 15, acceptance item 1: activation sparsity on smollm2-135m, WikiText-2 test at context 2048.

    NMX_DATA_DIR=../shared/data python3 benchmarks/activation_sparsity_acceptance.py --out DIR [--windows 16]

One `nmx run` per row (a separate process each, so one run's memory and threads never touch the next), in
DIR/<row>/; a row whose folder already holds a result.json is kept, so a stopped run continues where it stopped.
Rows: dense; TEAL thresholds at 25 / 40 / 50 % (uniform allocation); 40 % with the per-input greedy; 40 and 50 % with
the block-wise greedy (TEAL's Algorithm 1, step --block-step); the FFN ReLU-fied without fine-tuning. Hardware for
every row: h200 (`gpu_impl: ideal`, a GEMV that skips the weight columns of zero inputs) and a 16x16 weight-
stationary accelerator with and without zero-skipping of bitmap-compressed activations, decode at context 2048,
batch 1 / 4 / 16. DIR/summary.json and DIR/summary.md hold the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SKIP_ACCELERATOR = """\
# dense-16x16-ws (nmx preset) with zero-skipping of bitmap-compressed activations
name: dense-16x16-ws-skip
tech_nm: 28
pe_array: {rows: 16, cols: 16}
pe: {kind: dense, arith: int, act_bits: 8, weight_bits: 8, lanes: 1}
memory:
  - {name: reg, kind: reg, bytes_per_pe: 16}
  - {name: glb, kind: sram, capacity_kb: 256, bandwidth_bytes_per_cycle: 64}
  - {name: dram, kind: dram, type: lpddr5, bandwidth_gb_s: 51.2}
dataflow: {stationary: weight}
sparsity: {weights_format: auto, activations_format: bitmap, mode: skip}
overlap: true
"""

BATCHES = (1, 4, 16)


def rows(block_step: float) -> dict[str, dict | None]:
    """Row name -> the recipe's activation_sparsity section (None: dense)."""
    teal = lambda s, **options: {"method": "teal", "sparsity": s, "targets": ["qkv", "o", "up", "down"],  # noqa: E731
                                 **({"options": options} if options else {})}
    return {
        "dense": None,
        "teal0.25": teal(0.25),
        "teal0.4": teal(0.4),
        "teal0.5": teal(0.5),
        "greedy0.4": teal(0.4, allocation="greedy"),
        "block_greedy0.4": teal(0.4, allocation="block_greedy", step=block_step),
        "block_greedy0.5": teal(0.5, allocation="block_greedy", step=block_step),
        "relu": {"method": "teal", "sparsity": 0.0, "relufication": True},
    }


def recipe(section: dict | None, a: argparse.Namespace, skip_yaml: Path) -> dict:
    r = {
        "model": a.model,
        "device": a.device,
        "calibration": {"text": "tinyshakespeare", "samples": a.calib_samples, "seq_len": a.calib_seq_len, "seed": 0},
        "evaluation": {"text": "wikitext-2", "seq_len": a.seq_len, "max_windows": a.windows},
        "hardware": {"targets": ["h200", "dense-16x16-ws", str(skip_yaml)], "gpu_impl": "ideal",
                     "phases": [{"phase": "decode", "context": a.seq_len, "batch": b} for b in BATCHES]},
    }
    if section is not None:
        r["activation_sparsity"] = section
    return r


def summarize(name: str, result: dict, wall_s: float | None) -> dict:
    act = result.get("activation_sparsity") or {}
    wide = act.get("model_wide") or {}
    costs = {}
    for c in result["hardware"]["costs"]:
        costs[f"{c['target']}@{c['batch']}"] = {"latency_s": c["latency_s"], "bytes": c.get("bytes"),
                                                "energy_pj": c.get("energy_pj")}
    return {"row": name, "perplexity": result["perplexity"], "sparsity": wide.get("sparsity", 0.0),
            "by_type": {t: v["sparsity"] for t, v in (act.get("by_type") or {}).items()},
            "union_density": wide.get("union_density"), "independent_density": wide.get("independent_density"),
            "costs": costs, "wall_s": wall_s}


def table(summary: list[dict]) -> str:
    dense = next((s for s in summary if s["row"] == "dense"), None)
    head = ("| row | sparsity (qkv / o / up / down) | perplexity | h200 bytes B=1 / 4 / 16 (MB) | "
            "accelerator energy, skip / no skip, B=1 (mJ) | union B=2 / 4 / 16 (1 - s^B) |")
    out = [head, "|" + "---|" * 6]
    for s in summary:
        ppl = f"{s['perplexity']:.3f}"
        if dense and s["row"] != "dense":
            ppl += f" ({100 * (s['perplexity'] / dense['perplexity'] - 1):+.1f} %)"
        bt = " / ".join(f"{s['by_type'][t]:.3f}" for t in ("qkv", "o", "up", "down") if t in s["by_type"])
        sp = f"{s['sparsity']:.3f}" + (f" ({bt})" if bt else "")
        mb = " / ".join(f"{s['costs'][f'h200@{b}']['bytes'] / 1e6:.1f}" for b in BATCHES)
        e = {t: s["costs"][f"{t}@1"]["energy_pj"] / 1e9 for t in ("dense-16x16-ws-skip", "dense-16x16-ws")}
        acc = f"{e['dense-16x16-ws-skip']:.3f} / {e['dense-16x16-ws']:.3f}"
        u = s["union_density"]
        un = ""
        if u and s["row"] != "dense":
            ind = s["independent_density"]
            un = " / ".join(f"{u[str(b)]:.3f}" for b in (2, 4, 16)) + " (" + " / ".join(
                f"{ind[str(b)]:.3f}" for b in (2, 4, 16)) + ")"
        out.append(f"| {s['row']} | {sp} | {ppl} | {mb} | {acc} | {un} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder of the runs and the summary")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="auto")
    p.add_argument("--windows", type=int, default=16, help="WikiText-2 test windows of 2048 (default 16)")
    p.add_argument("--seq-len", type=int, default=2048, help="evaluation window and decode context (default 2048)")
    p.add_argument("--calib-samples", type=int, default=8)
    p.add_argument("--calib-seq-len", type=int, default=512)
    p.add_argument("--block-step", type=float, default=0.05, help="block_greedy's step (default 0.05, TEAL's)")
    p.add_argument("--rows", default=None, help="comma-separated rows to run (default all)")
    a = p.parse_args(argv)
    all_rows = rows(a.block_step)
    wanted = a.rows.split(",") if a.rows else list(all_rows)
    unknown = [r for r in wanted if r not in all_rows]
    if unknown:
        print(f"error: unknown rows {unknown}; known: {', '.join(all_rows)}", file=sys.stderr)
        sys.exit(2)
    a.out.mkdir(parents=True, exist_ok=True)
    skip_yaml = a.out / "dense-16x16-ws-skip.yaml"
    skip_yaml.write_text(SKIP_ACCELERATOR)
    walls = json.loads((a.out / "walls.json").read_text()) if (a.out / "walls.json").is_file() else {}
    import yaml

    for name in wanted:
        run_dir = a.out / name
        if (run_dir / "result.json").is_file():
            print(f"{name}: kept ({run_dir / 'result.json'})", flush=True)
            continue
        rfile = a.out / f"{name}.yaml"
        rfile.write_text(yaml.safe_dump(recipe(all_rows[name], a, skip_yaml.resolve()), sort_keys=False))
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "nmx", "run", str(rfile), "--out", str(run_dir), "--overwrite"]
        print("$ " + " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, env=os.environ)
        if rc != 0:
            print(f"{name}: nmx run exited {rc}; stopping", file=sys.stderr)
            sys.exit(rc)
        walls[name] = time.perf_counter() - t0
        (a.out / "walls.json").write_text(json.dumps(walls, indent=1))
    summary = [summarize(n, json.loads((a.out / n / "result.json").read_text()), walls.get(n))
               for n in all_rows if (a.out / n / "result.json").is_file()]
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1))
    (a.out / "summary.md").write_text(table(summary))
    print(table(summary))


if __name__ == "__main__":
    main()
