"""12 recipes on SmolLM2-135M: 12 separate `nmx run` processes (a shell loop) against one `nmx sweep`.

    python3 benchmarks/sweep_bench.py --out benchmarks/results/sweep_bench.json
    python3 benchmarks/sweep_bench.py --jobs 2 --threads 1 --out benchmarks/results/sweep_bench_jobs2_threads1.json

The 12 points: {magnitude, wanda} x {2:4, 4:8} x {bf16, mxfp4, nvfp4} weights, with a bounded
evaluation (WikiText-2, 2 windows of 512 tokens) and a small Wanda calibration (8 windows of 128
tokens of Tiny Shakespeare), each priced on the recipe's default hardware. Both sides run the same
recipes; the separate runs one after another (`--jobs` for more at once, `--threads` for their torch
threads), the sweep on a local Ray with one CPU per point (one torch thread each). Measured side by
side in one run: wall time of each side, and the peak of the memory of the whole process tree (the
runs, or the sweep's driver plus Ray's processes and workers), sampled every 0.2 s as the sum of PSS
(proportional set size: shared pages counted once over the processes sharing them) and, for
reference, of RSS. The perplexities of both sides are
compared point by point: with the same number of torch threads they are identical; with a different
number the float sums of the calibration statistics differ in their last bits, which can flip Wanda
mask choices between near-equal scores.

Not a test: never in CI; the numbers go to BENCHMARKS.md with the command, machine and date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

BASE = {
    "model": "smollm2-135m",
    "calibration": {"text": "tinyshakespeare", "samples": 8, "seq_len": 128, "seed": 0},
    "sparsity": {"method": "wanda", "pattern": "2:4"},
    "evaluation": {"text": "wikitext-2", "seq_len": 512, "max_windows": 2},
}
GRID = {
    "sparsity.method": ["magnitude", "wanda"],
    "sparsity.pattern": ["2:4", "4:8"],
    "quantization.weights": [None, "mxfp4", "nvfp4"],
}


class TreeMemory:
    """Peak over time of the summed PSS and RSS of a process and all its descendants."""

    def __init__(self, pid: int, every_s: float = 0.2, include_root: bool = True) -> None:
        self.root = psutil.Process(pid)
        self.include_root = include_root
        self.every_s = every_s
        self.peak_pss = 0
        self.peak_rss = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            procs = [self.root] * self.include_root + self.root.children(recursive=True)
        except psutil.Error:
            return
        pss = rss = 0
        for p in procs:
            try:
                info = p.memory_full_info()
                pss += getattr(info, "pss", info.rss)
                rss += info.rss
            except psutil.Error:
                continue
        self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
        self.peak_processes = max(self.peak_processes, len(procs))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every_s)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _run_measured(cmd: list[str], log: Path, env: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        with TreeMemory(proc.pid) as mem:
            code = proc.wait()
    return {"wall_s": time.perf_counter() - t0, "code": code, "peak_pss_mb": mem.peak_pss / 2**20,
            "peak_rss_mb": mem.peak_rss / 2**20, "processes": mem.peak_processes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep_bench.json"),
                    help="JSON file for the numbers")
    ap.add_argument("--jobs", type=int, default=1, help="separate `nmx run` processes at once (default 1)")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS of each separate `nmx run` (default: torch's own, all cores)")
    ap.add_argument("--cpus-per-point", type=int, default=1, help="the sweep's --cpus-per-point")
    ap.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = ap.parse_args()

    import yaml

    from nmx.sweep import load_sweep
    from nmx.sweep.spec import yaml_value

    work = args.work or Path(tempfile.mkdtemp(prefix="nmx-sweep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "base.yaml").write_text(yaml.safe_dump(BASE, sort_keys=False))
    (work / "sweep.yaml").write_text(yaml.safe_dump({"name": "sweep bench", "base": "base.yaml", "grid": GRID},
                                                    sort_keys=False))
    sweep = load_sweep(work / "sweep.yaml")
    assert len(sweep.points) == 12
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    nmx = [sys.executable, "-m", "nmx"]

    # 1. twelve separate `nmx run` processes
    run_env = {**env, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}

    def one(point) -> dict:
        sets = [a for k, v in point.values.items() for a in ("--set", f"{k}={yaml_value(v)}")]
        cmd = [*nmx, "run", str(work / "base.yaml"), *sets, "--out", str(work / "runs" / point.key), "--overwrite"]
        r = _run_measured(cmd, work / f"run-{point.index}.log", run_env)
        if r["code"] != 0:
            sys.exit(f"nmx run failed for {point.label}; see {work}/run-{point.index}.log")
        r["perplexity"] = json.loads((work / "runs" / point.key / "result.json").read_text())["perplexity"]
        return r

    print(f"12 x nmx run ({args.jobs} at a time) in {work} ...", file=sys.stderr)
    t0 = time.perf_counter()
    with TreeMemory(os.getpid(), include_root=False) as separate_mem, ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(one, sweep.points))
    separate_wall = time.perf_counter() - t0

    # 2. one `nmx sweep`
    print("1 x nmx sweep ...", file=sys.stderr)
    cmd = [*nmx, "sweep", str(work / "sweep.yaml"), "--out", str(work / "sweep"), "--overwrite",
           "--cpus-per-point", str(args.cpus_per_point)]
    swept = _run_measured(cmd, work / "sweep.log", env)
    if swept["code"] != 0:
        sys.exit(f"nmx sweep failed; see {work}/sweep.log")
    summary = json.loads((work / "sweep" / "report" / "summary.json").read_text())
    sweep_ppl = [p["perplexity"] for p in summary["points"]]

    rel = [abs(a - r["perplexity"]) / r["perplexity"] for a, r in zip(sweep_ppl, runs, strict=True)]
    result = {
        "command": " ".join(["python3", "benchmarks/sweep_bench.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_end": os.getloadavg()},
        "points": 12, "base": BASE, "grid": GRID,
        "separate_runs": {"jobs": args.jobs, "omp_num_threads": args.threads, "wall_s": separate_wall,
                          "per_run_wall_s": [r["wall_s"] for r in runs],
                          "peak_pss_mb": separate_mem.peak_pss / 2**20, "peak_rss_mb": separate_mem.peak_rss / 2**20,
                          "largest_single_run_pss_mb": max(r["peak_pss_mb"] for r in runs)},
        "sweep": {"cpus_per_point": args.cpus_per_point, "wall_s": swept["wall_s"], "peak_pss_mb": swept["peak_pss_mb"],
                  "peak_rss_mb": swept["peak_rss_mb"], "processes": swept["processes"],
                  "computed": summary["counts"]},
        "wall_ratio_separate_over_sweep": separate_wall / swept["wall_s"],
        "perplexity_max_relative_difference": max(rel),
        "work": str(work),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    s, w = result["separate_runs"], result["sweep"]
    print(f"12 separate nmx run ({args.jobs} at a time, OMP_NUM_THREADS={args.threads or 'unset'}): "
          f"{s['wall_s']:.1f} s, peak {s['peak_pss_mb']:.0f} MB PSS ({s['peak_rss_mb']:.0f} MB RSS)")
    print(f"one nmx sweep:       {w['wall_s']:.1f} s, peak {w['peak_pss_mb']:.0f} MB PSS "
          f"({w['peak_rss_mb']:.0f} MB RSS, {w['processes']} processes)")
    print(f"wall time ratio (separate / sweep): {result['wall_ratio_separate_over_sweep']:.2f}x; perplexities agree "
          f"to {max(rel):.1e} (relative)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
