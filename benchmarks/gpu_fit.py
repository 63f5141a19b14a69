"""Fit the calibration parameters of a GPU target to measured kernels (numpy only).

    python benchmarks/gpu_fit.py [--measurements src/nmx/hw/data/h200_measured.csv] [--target h200]
    python benchmarks/gpu_fit.py --nmx-kernels benchmarks/results/kernels_h200_run6.json [--write-csv]
    python benchmarks/gpu_fit.py --nmx-kernels benchmarks/results/kernels_peers_h100.json --target h100-sxm --write-csv
    python benchmarks/gpu_fit.py --nmx-kv benchmarks/results/kv_append_h100.json       # KV decode attention, H100
    python benchmarks/gpu_fit.py --cublas benchmarks/results/kernels_peers_h100.json    # cuBLAS GEMV streaming, H100
    python benchmarks/gpu_fit.py --decode-profile benchmarks/results/decode_profile_h100.json  # HF's small kernels

Minimizes the mean over op classes of the mean |log(predicted / measured)| by coordinate descent
in log space (multiplicative steps, shrinking), starting from the target's current parameters,
then prints the fitted parameters (to paste into the preset in src/nmx/hw/gpu.py, with the date)
and the per-class error before and after. The fit is global per target: no per-shape terms.

`--published` fits another GPU's preset on published, measured numbers instead (the A100's by default:
src/nmx/hw/data/a100_published.csv, every row with its source): only the rows marked `fit`, only the
efficiencies the sources can pin (the GEMMs' and fused attention's share of the bf16 peak, the streaming
efficiency of the decode step's weight reads), starting from the uncalibrated preset (the datasheet with the
H200's efficiencies); then prints the median |pred/meas - 1| per op class on the held-out rows, uncalibrated,
fitted and as the preset in gpu.py has it (docs/gpu_validation.md):

    python benchmarks/gpu_fit.py --published [src/nmx/hw/data/a100_published.csv] --target a100-80gb

`--nmx-kernels` fits impl "nmx" instead (nmx's one-token kernel, timed by benchmarks/kernels_bench.py
from CUDA-graph replays): latency = c0 + seconds-per-weight x N x K, the line through the two shapes
4096x4096 and 11008x4096 per format, c0 shared (the median of the formats' intercepts), then each
format's rate re-fitted with that c0; 4096x11008 is held out and its error printed. `--write-csv`
writes the rows to src/nmx/hw/data/h200_nmx_kernels.csv (the tests check the model against them).
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


# fractions of a peak: a step that takes one above 1 is refused (an efficiency above 1 is not physical)
CAPPED = (*DICTS, "sparse_eff", "attention_flops_eff")
# what published numbers of another GPU pin (see --published)
PUBLISHED_FREE = (("flops_eff", "bf16"), ("attention_flops_eff", None), ("bw_eff", "gemm"))


def params_of(t: gpu.GpuTarget) -> dict[tuple[str, str | None], float]:
    p = {(s, None): getattr(t, s) for s in SCALARS}
    p.update({(d, k): getattr(t, d)[k] for d, keys in DICTS.items() for k in keys})
    return p


def param(t: gpu.GpuTarget, key: tuple[str, str | None]) -> float:
    name, sub = key
    if name == "attention_flops_eff" and t.attention_flops_eff is None:
        return t.efficiency("bf16")  # what the model uses for attention without its own efficiency
    return getattr(t, name)[sub] if sub else getattr(t, name)


def build(base: gpu.GpuTarget, p: dict[tuple[str, str | None], float]) -> gpu.GpuTarget:
    kw: dict = {}
    for (name, sub), v in p.items():
        v = min(v, 1.0) if name in CAPPED else v
        if sub is None:
            kw[name] = v
        else:
            kw[name] = {**kw.get(name, getattr(base, name)), sub: v}
    return gpu.with_params(base, **kw)


def loss(t: gpu.GpuTarget, rows: list[dict], power: int = 1) -> float:
    """Mean over op classes of the mean |log(pred / meas)| ** power."""
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(gpu.op_class(r), []).append(abs(math.log(gpu.predict_measured(t, r) / r["latency_s"])) ** power)
    return sum(sum(v) / len(v) for v in by.values()) / len(by)


FIT_SHAPES = ("4096x4096", "11008x4096")
# the H100's end-to-end decode steps (graph mode) the small-op model is checked on
E2E_H100 = ("benchmarks/results/decode_kv_int4_h100.json", "benchmarks/results/decode_24int4_kv_int4_h100.json",
            "benchmarks/results/decode_24nvfp4_kv_int4_h100.json", "benchmarks/results/decode_model_h100_run2.json")
CASE_FORMATS = {"bf16": None, "mxfp4": "mxfp4", "nvfp4": "nvfp4", "int4_g128": "int4_g128", "fp8_e4m3": "fp8_e4m3",
                "mxfp8_e4m3": "mxfp8_e4m3"}


def fit_nmx(path: str, write_csv: bool, target: str = "h200") -> None:
    import json
    import statistics

    res = json.loads(Path(path).read_text())
    rows = []
    if "kernel1" in res:  # benchmarks/kernels_bench.py: one row per shape, a dict per case
        for r in res["kernel1"]:
            if r["m"] != 1:
                continue
            n, k = (int(v) for v in r["shape"].split("x"))
            for case, v in r.items():
                if isinstance(v, dict):
                    pattern, _, fmt = case.rpartition("+")
                    rows.append({"op": "nmx_linear", "m": 1, "n": n, "k": k, "sparsity": pattern or None,
                                 "weights": CASE_FORMATS[fmt], "latency_s": v["s"],
                                 "role": "fit" if r["shape"] in FIT_SHAPES else "held-out"})
    else:  # benchmarks/kernels_peers.py: every config timed; the fastest one-token config per shape and case
        best: dict = {}
        for r in res["nmx"]:
            if r["m"] == 1 and r["backend"] == "gemv":
                key = (r["shape"], r["case"])
                if key not in best or r["time_s"] < best[key]["time_s"]:
                    best[key] = r
        for (shape, case), r in sorted(best.items()):
            n, k = (int(v) for v in shape.split("x"))
            pattern, _, fmt = case.rpartition("+")
            rows.append({"op": "nmx_linear", "m": 1, "n": n, "k": k, "sparsity": pattern or None,
                         "weights": CASE_FORMATS[fmt], "latency_s": r["time_s"],
                         "role": "fit" if shape in FIT_SHAPES else "held-out"})
        res.setdefault("copy_bytes_per_s", res.get("copy_bw_Bps"))
    by_key: dict[str, list[dict]] = {}
    for r in rows:
        by_key.setdefault(gpu.nmx_decode_key(r["weights"], r["sparsity"]), []).append(r)
    intercepts = {}
    for key, rs in by_key.items():
        (a, b) = sorted((r for r in rs if r["role"] == "fit"), key=lambda r: r["n"] * r["k"])
        rate = (b["latency_s"] - a["latency_s"]) / (b["n"] * b["k"] - a["n"] * a["k"])
        intercepts[key] = a["latency_s"] - rate * a["n"] * a["k"]
    c0 = statistics.median(intercepts.values())
    rates = {key: statistics.median((r["latency_s"] - c0) / (r["n"] * r["k"]) for r in rs if r["role"] == "fit")
             for key, rs in by_key.items()}
    print(f"graph_launch_s = {c0:.3g}")
    print("decode_s_per_weight = {")
    for key in sorted(rates):
        print(f'    "{key}": {rates[key]:.3g},')
    print("}")
    t = gpu.with_params(gpu.get_target(target), graph_launch_s=c0, decode_s_per_weight=rates)
    for role in ("fit", "held-out"):
        errs = sorted(abs(gpu.predict_measured(t, r) / r["latency_s"] - 1) for r in rows if r["role"] == role)
        print(f"{role:9s}: median |pred/meas - 1| {statistics.median(errs):.3f}, max {errs[-1]:.3f}, n={len(errs)}")
    if write_csv:
        out = gpu.measurement_file(f"{target.split('-')[0]}_nmx_kernels.csv")
        header = {k: res[k] for k in ("device", "torch", "triton", "date", "copy_bytes_per_s")}
        header["source"] = f"{path} (M = 1, the one-token kernel, CUDA-graph replays over weight copies > L2)"
        cols = ["op", "m", "n", "k", "sparsity", "weights", "latency_s", "role"]
        lines = ["# " + json.dumps(header), ",".join(cols)]
        lines += [",".join("" if r[c] is None else str(r[c]) for c in cols) for r in rows]
        out.write_text("\n".join(lines) + "\n")
        print(f"wrote {out}")


def descend(base: gpu.GpuTarget, rows: list[dict], p: dict[tuple[str, str | None], float], rounds: int,
            verbose: bool = True, power: int = 1) -> dict[tuple[str, str | None], float]:
    """Coordinate descent in log space (multiplicative steps, shrinking) on `loss` over `rows`."""
    best = loss(build(base, p), rows, power)
    if verbose:
        print(f"start loss {best:.4f}")
    step = 1.5
    for rnd in range(rounds):
        for key in list(p):
            for factor in (step, 1 / step):
                while True:
                    trial = dict(p)
                    trial[key] = p[key] * factor
                    if key[0] in CAPPED and trial[key] > 1.0:
                        break
                    val = loss(build(base, trial), rows, power)
                    if val < best - 1e-6:
                        p, best = trial, val
                    else:
                        break
        if verbose:
            print(f"round {rnd}: loss {best:.4f} (step {step:.3f})")
        step = math.sqrt(step)
    return p


def fit_published(path: str | None, target: str, rounds: int, verbose: bool = True) -> dict:
    """Fit PUBLISHED_FREE on the `fit` rows of a published-measurements CSV; report the held-out error per
    class for the uncalibrated preset, the fit, and the preset as gpu.py has it. Returns the fitted values."""
    rows = gpu.load_published(path)
    fit = [r for r in rows if r["role"] == "fit"]
    held = [r for r in rows if r["role"] == "held-out"]
    base = gpu.uncalibrated(target)
    # least squares in log space: a class fitted on one row fits it exactly either way, but on several rows
    # the mean |log| is flat between them (any efficiency between two rows' is optimal); the squares have one
    # optimum, the geometric mean of what the rows imply
    p = descend(base, fit, {key: param(base, key) for key in PUBLISHED_FREE}, rounds, verbose, power=2)
    fitted = build(base, p)
    if not verbose:
        return p
    print("\nfitted on the 'fit' rows (paste into the preset, rounded):")
    for (name, sub), v in p.items():
        print(f"  {name}{'[' + sub + ']' if sub else ''} = {min(v, 1.0):.3g}")
    preset = gpu.get_target(target)
    errs = {name: (gpu.model_error(t, held), gpu.model_error(t, fit))
            for name, t in (("uncalibrated", base), ("fitted", fitted), ("preset", preset))}
    print(f"\n{target}: median |pred/meas - 1| on the held-out rows (fit rows in brackets)")
    print("| op class | fit rows | held-out rows | uncalibrated | fitted | preset (gpu.py) | preset, max |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    classes = sorted({gpu.op_class(r) for r in rows}, key=lambda c: (c.startswith("decode "), c))
    for c in classes:
        cells = []
        for name in ("uncalibrated", "fitted", "preset"):
            h, f = errs[name]
            cell = f"{h[c]['median_abs_err']:.3f}" if c in h else "-"
            cells.append(cell + (f" ({f[c]['median_abs_err']:.3f})" if c in f else ""))
        n_fit = sum(gpu.op_class(r) == c for r in fit)
        h = errs["preset"][0]
        worst = max((abs(gpu.predict_measured(preset, r) / r["latency_s"] - 1) for r in held if gpu.op_class(r) == c),
                    default=float("nan"))
        print(f"| {c} | {n_fit} | {int(h[c]['count']) if c in h else 0} | {' | '.join(cells)} | {worst:.3f} |")
    print("\nper row: pred/meas - 1, uncalibrated -> preset")
    for r in rows:
        e0, e1 = (gpu.predict_measured(t, r) / r["latency_s"] - 1 for t in (base, preset))
        print(f"  {r['role']:8s} {gpu.op_class(r):15s} {r['id']:42s} {e0:+7.3f} -> {e1:+7.3f}")
    return p


def fit_nmx_kv(path: str, target: str = "h100-sxm", e2e: str | None = None) -> dict:
    """impl "nmx"'s KV decode attention and append (`GpuTarget.kv_decode`, `kv_append`) from benchmarks/kv_append.py's
    graph-mode timings of two batches (two rows, two parameters each: solved exactly), then checked where nothing
    was fitted: the end-to-end decode steps of `nmx bench decode ... --kv int4` (e2e JSON), priced by the whole model
    before and after."""
    import json
    from dataclasses import replace

    from nmx.hw.workload import Compression, attention_op, llm_workload

    res = json.loads(Path(path).read_text())
    t = gpu.get_target(target)
    rows = sorted((r for r in res["timing"] if r["formats"] == "int4/int4"), key=lambda r: r["batch"])
    if len(rows) != 2:
        raise SystemExit(f"{path}: need int4/int4 timings at two batch sizes, found {len(rows)}")
    pts = []
    for r in rows:
        op = attention_op("attention", r["batch"], 1, r["context"], r["q_heads"], r["kv_heads"], r["head_dim"],
                          kv_format="int4_g32")
        pts.append((r["batch"], op.bytes, r["attention"]["graph_static_per_layer_s"],
                    r["static_append"]["graph_per_token_per_layer_s"]))
    (b1, y1, a1, p1), (b2, y2, a2, p2) = pts
    per_byte = (a2 - a1) / (y2 - y1)
    share = 1.0 / (per_byte * t.bandwidth_bytes_per_s)
    fixed = a1 - t.graph_launch_s - y1 * per_byte
    per_seq = (p2 - p1) / (b2 - b1)
    a_fixed = p1 - per_seq * b1
    print(f"{res.get('device')}, {res.get('date')}: int4 KV, {rows[0]['kv_heads']} KV heads x {rows[0]['head_dim']}, "
          f"context {rows[0]['context']}, batches {b1} and {b2}")
    print(f'  "kv_decode": {{"int4": ({fixed:.3g}, {share:.3g})}}, '
          f'"kv_append": {{"int4": ({a_fixed:.3g}, {per_seq:.3g})}}')
    fitted = replace(t, kv_decode={"int4": (float(f"{fixed:.3g}"), float(f"{share:.3g}"))},
                     kv_append={"int4": (float(f"{a_fixed:.3g}"), float(f"{per_seq:.3g}"))})
    if e2e:
        d = json.loads(Path(e2e).read_text())
        print(f"\nheld out: {e2e} ({d['device']}, {d['model']}, context {d['context']}, CUDA graphs): pred/meas - 1")
        print("| step | batch | measured ms | model before | model after |\n|---|---:|---:|---:|---:|")
        for r in d["rows"]:
            comp = Compression(weights=d["compressed"]["weights"] if r["weights"] == "compressed" else None,
                               kv_format="int4_g32" if r["kv"]["format"] == "int4" else None)
            work = llm_workload(d["model"].split()[-1], "decode", batch=r["batch"], context=d["context"],
                                compression=comp)
            ms = r["ms_per_step"]
            pred = [gpu.llm_cost(replace(x, launch_s=x.graph_launch_s), work, impl="nmx")["latency_s"] * 1e3
                    for x in (replace(t, kv_decode={}, kv_append={}), fitted)]
            print(f"| {r['variant']} | {r['batch']} | {ms:.3f} | {pred[0]:.3f} ({pred[0] / ms - 1:+.3f}) | "
                  f"{pred[1]:.3f} ({pred[1] / ms - 1:+.3f}) |")
    return {"kv_decode": fitted.kv_decode, "kv_append": fitted.kv_append}


def fit_cublas(path: str, target: str = "h100-sxm") -> float:
    """bw_eff["gemm"] of a preset from the cuBLAS bf16 rows of benchmarks/kernels_peers.py (CUDA-graph replays,
    weights streamed from memory, M = 1..64: memory-bound), fitted on FIT_SHAPES (the median |log(pred/meas)|,
    golden-section search), the other shapes held out."""
    import json
    import statistics
    from dataclasses import replace

    res = json.loads(Path(path).read_text())
    t = gpu.get_target(target)
    rows = []
    for r in res["peers"]:
        if r["impl"] == "cublas_bf16":
            n, k = (int(v) for v in r["shape"].split("x"))
            rows.append((r["shape"], r["m"], n, k, r["time_s"]))
    if not rows:
        raise SystemExit(f"{path}: no cublas_bf16 rows")

    def err(eff: float, fit: bool) -> list[float]:
        x = replace(t, launch_s=t.graph_launch_s, bw_eff={**t.bw_eff, "gemm": eff})
        return [gpu.gemm(x, m, n, k, "bf16")["latency_s"] / meas - 1 for shape, m, n, k, meas in rows
                if (shape in FIT_SHAPES) == fit]

    def cost(eff: float) -> float:
        return statistics.median(abs(math.log1p(e)) for e in err(eff, True))

    lo, hi = 0.3, 1.0
    for _ in range(60):
        a, b = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
        lo, hi = (lo, b) if cost(a) < cost(b) else (a, hi)
    eff = float(f"{(lo + hi) / 2:.3g}")
    print(f"{res.get('device')}, {res.get('date')}: {len(rows)} cuBLAS bf16 rows, M = "
          f"{min(r[1] for r in rows)}..{max(r[1] for r in rows)}; fit on {', '.join(FIT_SHAPES)}")
    print(f'  bw_eff["gemm"]: {t.bw_eff["gemm"]} -> {eff}')
    for label, fit in (("fit", True), ("held out", False)):
        before, after = err(t.bw_eff["gemm"], fit), err(eff, fit)
        print(f"  {label:8s} median |pred/meas - 1| {statistics.median(map(abs, before)):.3f} -> "
              f"{statistics.median(map(abs, after)):.3f} (max {max(map(abs, after)):.3f}, n = {len(after)})")
    return eff


def _reclassed(prof: dict) -> dict[str, dict[str, float]]:
    """A profile's by-class sums under today's `kernel_class` (a class the profiled version got wrong, e.g. cuDNN's
    attention counted as a GEMM before 2026-12-07, is moved for every kernel in its top list)."""
    from nmx.kernels.decode_bench import kernel_class

    by = {c: dict(v) for c, v in prof["by_class"].items()}
    for k in prof["top"]:
        new = kernel_class(k["name"])
        if new != k["class"]:
            for cls, sign in ((k["class"], -1), (new, 1)):
                v = by.setdefault(cls, {"calls_per_step": 0.0, "s_per_step": 0.0})
                v["calls_per_step"] += sign * k["calls_per_step"]
                v["s_per_step"] += sign * k["s_per_step"]
    kept = [(c, v) for c, v in by.items() if v["calls_per_step"] > 0.5]
    return dict(sorted(kept, key=lambda kv: -kv[1]["s_per_step"]))


def decode_profile(path: str, target: str = "h100-sxm", e2e: tuple[str, ...] = ()) -> float:
    """`GpuTarget.graph_kernel_s` from a profiled `nmx bench decode --profile` JSON: checks the kernels transformers'
    eager forward launches per step against `gpu.HF_EAGER_KERNELS`, solves the one parameter on the bf16 batch-1
    row, then prints the model's error (small_ops "fused" and "hf") on every other row there and in `e2e` JSONs
    (held out: nothing was fitted on them)."""
    import json
    from dataclasses import replace

    from nmx.hw.workload import Compression, llm_workload
    t = gpu.get_target(target)
    d = json.loads(Path(path).read_text())

    def work(rec: dict, r: dict):
        if "timing" in rec:  # benchmarks/decode_model.py: the variant names the weight format, e.g. "2:4+nvfp4"
            pattern, _, weights = r["variant"].rpartition("+")
            comp = Compression(weights=None if weights == "bf16" else weights, pattern=pattern or None)
            return llm_workload(rec["args"]["config"], "decode", batch=r["batch"], context=rec["args"]["context"],
                                compression=comp)
        comp = Compression(weights=rec["compressed"]["weights"] if r["weights"] == "compressed" else None,
                           pattern=rec["compressed"].get("pattern") if r["weights"] == "compressed" else None,
                           kv_format="int4_g32" if r["kv"]["format"] == "int4" else None)
        return llm_workload(rec["model"].split()[-1], "decode", batch=r["batch"], context=rec["context"],
                            compression=comp)

    def price(x: gpu.GpuTarget, w, small_ops: str) -> dict:
        return gpu.llm_cost(replace(x, launch_s=x.graph_launch_s), w, impl="nmx", small_ops=small_ops)

    print(f"{d['device']}, {d['model']}, context {d['context']}: kernels per step, from the profile and from "
          "HF_EAGER_KERNELS")
    fit_row = None
    for r in d["rows"]:
        prof = r["profile"]
        w = work(d, r)
        modelled = sum(op.count * gpu.hf_eager_kernels(t, op, "nmx") for op in w.ops if op.kind != "gemm")
        linears = sum(op.count for op in w.ops if op.kind == "gemm")
        # cuBLAS's split-K GEMMs add a reduction kernel each: counted as GEMM work, not as small ops
        splitk = sum(k["calls_per_step"] for k in prof["top"] if "splitkreduce" in k["name"].lower())
        measured = prof["calls_per_step"] - linears - splitk
        print(f"  {r['variant']:20s} batch {r['batch']:3d}: {prof['calls_per_step']:.0f} kernels, {linears} GEMMs "
              f"(+{splitk:.0f} split-K reductions), the rest {measured:.0f} vs {modelled} modelled; idle "
              f"{(r['ms_per_step'] * 1e-3 - prof['busy_s_per_step']) * 1e6:.0f} us of {r['ms_per_step'] * 1e3:.0f} us")
        print("      device time per step: " + ", ".join(
            f"{c} {v['s_per_step'] * 1e3:.3f} ms ({v['calls_per_step']:.0f})" for c, v in _reclassed(prof).items()))
        if r["weights"] == "bf16" and r["kv"]["format"] == "bf16" and r["batch"] == 1:
            fit_row = (r, w)
    if fit_row is None:
        raise SystemExit(f"{path}: no bf16 batch-1 row to fit on")
    r, w = fit_row
    x0 = replace(t, graph_kernel_s=0.0)
    extra = sum(op.count * (gpu.hf_eager_kernels(t, op, "nmx") - 1) for op in w.ops)
    g = (r["ms_per_step"] * 1e-3 - price(x0, w, "hf")["latency_s"]) / extra
    g = float(f"{g:.3g}")
    fitted = replace(t, graph_kernel_s=g)
    print(f"\nfitted on the bf16 batch-1 row ({extra} further kernels per step): graph_kernel_s = {g:.3g}")
    print("\n| JSON | step | batch | measured ms | small ops fused | small ops as HF launches them |\n"
          "|---|---|---:|---:|---:|---:|")
    for name in (path, *e2e):
        rec = json.loads(Path(name).read_text())
        for row in rec.get("rows") or rec["timing"]:
            # graph-mode rows only; a "(tc for 2..64 tokens)" row forced a path the dispatcher did not choose
            if row.get("mode", "graph") != "graph" or row.get("ms_per_step") is None or "(" in row["variant"]:
                continue
            wk = work(rec, row)
            ms = row["ms_per_step"]
            a, b = (price(x, wk, so)["latency_s"] * 1e3 for x, so in ((t, "fused"), (fitted, "hf")))
            tag = " (fit)" if row is r else ""
            print(f"| {Path(name).name} | {row['variant']}{tag} | {row['batch']} | {ms:.3f} | "
                  f"{a:.3f} ({a / ms - 1:+.3f}) | {b:.3f} ({b / ms - 1:+.3f}) |")
    return g


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nmx-kernels", default=None, help="fit impl 'nmx' on a kernels_bench.py JSON instead")
    ap.add_argument("--nmx-kv", default=None, help="fit impl 'nmx''s KV decode attention on a kv_append.py JSON")
    ap.add_argument("--e2e", default="benchmarks/results/decode_kv_int4_h100.json",
                    help="with --nmx-kv: end-to-end decode steps to check the fit on")
    ap.add_argument("--cublas", default=None, help="fit bw_eff['gemm'] on a kernels_peers.py JSON's cuBLAS rows")
    ap.add_argument("--decode-profile", default=None,
                    help="fit graph_kernel_s on an `nmx bench decode --profile` JSON, check on it and on --e2e")
    ap.add_argument("--write-csv", action="store_true")
    ap.add_argument("--measurements", default=None)
    ap.add_argument("--published", nargs="?", const="", default=None,
                    help="fit on published measurements of another GPU (default: src/nmx/hw/data/a100_published.csv)")
    ap.add_argument("--target", default="h200")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    if args.cublas:
        fit_cublas(args.cublas, args.target if args.target != "h200" else "h100-sxm")
        return
    if args.decode_profile:
        e2e = tuple(args.e2e.split(",")) if args.e2e and args.e2e != ap.get_default("e2e") else E2E_H100
        decode_profile(args.decode_profile, args.target if args.target != "h200" else "h100-sxm", e2e)
        return
    if args.nmx_kv:
        fit_nmx_kv(args.nmx_kv, args.target if args.target != "h200" else "h100-sxm", args.e2e or None)
        return
    if args.nmx_kernels:
        fit_nmx(args.nmx_kernels, args.write_csv, args.target)
        return
    if args.published is not None:
        fit_published(args.published or None, args.target, args.rounds)
        return
    _, rows = gpu.load_measurements(args.measurements)
    base = gpu.get_target(args.target)
    p = descend(base, rows, params_of(base), args.rounds)
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
