"""Fit the calibration parameters of a GPU target to measured kernels (numpy only).

    python benchmarks/gpu_fit.py [--measurements src/nmx/hw/data/h200_measured.csv] [--target h200]

Minimizes the mean over op classes of the mean |log(predicted / measured)| by coordinate descent
in log space (multiplicative steps, shrinking), starting from the target's current parameters,
then prints the fitted parameters (to paste into the preset in src/nmx/hw/gpu.py, with the date)
and the per-class error before and after. The fit is global per target: no per-shape terms.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nmx.hw import gpu  # noqa: E402

SCALARS = ("sparse_eff", "launch_s", "kernel_gap_s", "ramp_s", "ramp_bytes", "row_s_per_element", "sparse_call_s")
DICTS = {"bw_eff": ("gemm", "attention", "elementwise"), "flops_eff": ("bf16", "fp8")}


def params_of(t: gpu.GpuTarget) -> dict[tuple[str, str | None], float]:
    p = {(s, None): getattr(t, s) for s in SCALARS}
    p.update({(d, k): getattr(t, d)[k] for d, keys in DICTS.items() for k in keys})
    return p


def build(base: gpu.GpuTarget, p: dict[tuple[str, str | None], float]) -> gpu.GpuTarget:
    kw: dict = {s: p[(s, None)] for s in SCALARS}
    for d, keys in DICTS.items():
        kw[d] = {k: min(p[(d, k)], 1.0) for k in keys}  # an efficiency above 1 is not physical
    return gpu.with_params(base, **kw)


def loss(t: gpu.GpuTarget, rows: list[dict]) -> float:
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(gpu.op_class(r), []).append(abs(math.log(gpu.predict_measured(t, r) / r["latency_s"])))
    return sum(sum(v) / len(v) for v in by.values()) / len(by)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--measurements", default=None)
    ap.add_argument("--target", default="h200")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    _, rows = gpu.load_measurements(args.measurements)
    base = gpu.get_target(args.target)
    p = params_of(base)
    best = loss(build(base, p), rows)
    print(f"start loss {best:.4f}")
    step = 1.5
    for rnd in range(args.rounds):
        for key in list(p):
            for factor in (step, 1 / step):
                while True:
                    trial = dict(p)
                    trial[key] = p[key] * factor
                    if (key[0] in DICTS or key[0] == "sparse_eff") and trial[key] > 1.0:
                        break
                    val = loss(build(base, trial), rows)
                    if val < best - 1e-6:
                        p, best = trial, val
                    else:
                        break
        print(f"round {rnd}: loss {best:.4f} (step {step:.3f})")
        step = math.sqrt(step)
    fitted = build(base, p)
    print("\nfitted parameters:")
    for (name, key), v in p.items():
        print(f"  {name}{'[' + key + ']' if key else ''} = {v:.3g}")
    print("\nper-class error (median |pred/meas - 1|): before -> after")
    before, after = gpu.model_error(base, rows), gpu.model_error(fitted, rows)
    for c in after:
        print(f"  {c:14s} {before[c]['median_abs_err']:6.3f} -> {after[c]['median_abs_err']:6.3f}"
              f"   p90 {after[c]['p90_abs_err']:6.3f}  n={int(after[c]['count'])}")


if __name__ == "__main__":
    main()
