"""The curve over M = 1 .. 64 tokens: the tensor-core kernel (triton_tc.py) against cuBLAS bf16 and the
one-token word kernel, on Llama-2-7B shapes, for 4/8-bit formats dense and 2:4.

    python benchmarks/tc_curve.py [--out DIR] [--ms 1,2,4,8,16,32,64] [--budget-s 240] [--cpu-dry-run]

First a correctness pass: every config timed is run once on fresh random x with a NaN-poisoned output
and compared with the CPU twin (`linear_reference`); a failing config is reported and not timed.
Timing as kernels_bench.py: one CUDA graph calls the op on distinct weight copies adding up to more
than 4x the L2 (every call streams its weight from memory), median of 20 replays; cuBLAS timed the
same way in the same run. For each (shape, format, M) the default config and a few others are timed;
the table shows the default's and the best one's speedup over cuBLAS. Writes DIR/tc_curve.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nmx.kernels import linear_reference, pack  # noqa: E402
from nmx.kernels.layout import PackedLinear  # noqa: E402

FORMATS = ["int4_g128", "nvfp4", "mxfp4", "fp8_e4m3", "mxfp8_e4m3", "2:4+int4_g128", "2:4+nvfp4", "2:4+fp8_e4m3"]
SHAPES = {"4096x4096": (4096, 4096), "11008x4096": (11008, 4096), "4096x11008": (4096, 11008)}
ROTATE_BYTES = 256 << 20
# (BLOCK_N, BLOCK_K, num_warps, num_stages) tried beside the default; SPLIT_K as the default picks it
VARIANTS = [(32, 128, 4, 4), (128, 128, 8, 3), (64, 256, 4, 3), (64, 64, 4, 6), (128, 256, 8, 3)]


def configs(m: int, p: PackedLinear) -> list[dict]:
    from nmx.kernels.triton_tc import default_config, split_k

    base = default_config(m, p)
    out = [base]
    for bn, bk, warps, stages in VARIANTS:
        if p.element == "int4" and p.block % bk or p.k % bk:
            continue
        split = split_k(math.ceil(p.n / bn) * math.ceil(m / base["BLOCK_M"]), p.k // bk)
        out.append({**base, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split, "num_warps": warps, "num_stages": stages})
    return out


def make(n: int, k: int, name: str, device: str = "cuda", seed: int = 7) -> PackedLinear:
    """A packed random weight: name "[2:4+]FORMAT" (2:4: pruned by magnitude)."""
    from nmx.sparsity.masks import nm_mask

    pattern, _, fmt = name.rpartition("+")
    w = torch.randn(n, k, device=device, generator=torch.Generator(device=device).manual_seed(seed)) / math.sqrt(k)
    return pack(w * nm_mask(w.abs(), 2, 4) if pattern else w, fmt, pattern or None)


def clones(p: PackedLinear) -> list[PackedLinear]:
    r = max(2, math.ceil(ROTATE_BYTES / p.nbytes))
    cl = lambda t: None if t is None else t.clone()  # noqa: E731
    return [p] + [PackedLinear(p.n, p.k, p.format, p.sparse24, cl(p.values), cl(p.meta), cl(p.scales), p.tensor_scale,
                               p.block) for _ in range(r - 1)]


def rel_err(y: torch.Tensor, x: torch.Tensor, p_cpu: PackedLinear) -> float:
    """Relative error of y against the CPU twin; inf if any element is not finite (poison left)."""
    if not bool(torch.isfinite(y).all()):
        return math.inf
    r = linear_reference(x.cpu(), p_cpu).float()
    return float((y.float().cpu() - r).norm() / r.norm())


def dry_run() -> None:
    """The correctness pass on CPU under TRITON_INTERPRET=1 (small shapes): checks this script's logic."""
    from nmx.kernels.triton_tc import tc_linear

    for fmt in FORMATS:
        p = make(96, 256, fmt, "cpu")
        for m in (1, 3, 17):
            x = torch.randn(m, 256).to(torch.bfloat16)
            for cfg in configs(m, p)[:3]:
                err = rel_err(tc_linear(x, p, cfg, poison=True), x, p)
                print(f"dry run {fmt} m={m} {cfg}: rel err {err:.1e}")
                assert err < 1e-2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--ms", default="1,2,4,8,16,32,64")
    ap.add_argument("--budget-s", type=float, default=240.0, help="stop timing new rows after this long")
    ap.add_argument("--cpu-dry-run", action="store_true")
    args = ap.parse_args()
    if args.cpu_dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        dry_run()
        return
    from nmx.kernels.timing import graph_time_over
    from nmx.kernels.triton_gemv import gemv
    from nmx.kernels.triton_tc import tc_linear

    t_start = time.time()
    ms = [int(v) for v in args.ms.split(",")]
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
           "rows": [], "failures": []}
    for sname, (n, k) in SHAPES.items():
        wd = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        dense = [wd] + [wd.clone() for _ in range(max(1, math.ceil(ROTATE_BYTES / (n * k * 2)) - 1))]
        for fmt in FORMATS:
            if time.time() - t_start > args.budget_s:
                break
            p = make(n, k, fmt)
            p_cpu = p.to("cpu")
            copies = clones(p)
            for m in ms:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                t_cublas = graph_time_over(lambda w, x=x: F.linear(x, w), dense)
                row = {"shape": sname, "format": fmt, "m": m, "cublas_s": t_cublas, "configs": []}
                for cfg in configs(m, p):
                    try:
                        err = rel_err(tc_linear(x, p, cfg, poison=True), x, p_cpu)
                    except Exception as e:  # a config the compiler refuses (shared memory, registers)
                        res["failures"].append({"shape": sname, "format": fmt, "m": m, "cfg": cfg,
                                                "error": repr(e)[:300]})
                        continue
                    if not err < 1e-2:
                        res["failures"].append({"shape": sname, "format": fmt, "m": m, "cfg": cfg, "rel_err": err})
                        print(f"FAIL {sname} {fmt} m={m} {cfg}: rel err {err}", flush=True)
                        continue
                    t = graph_time_over(lambda q, cfg=cfg, x=x: tc_linear(x, q, cfg), copies)
                    row["configs"].append({"cfg": cfg, "s": t, "speedup": t_cublas / t, "rel_err": err})
                if m == 1:
                    row["gemv_s"] = graph_time_over(lambda q, x=x: gemv(x, q), copies)
                if row["configs"]:
                    best = min(row["configs"], key=lambda c: c["s"])
                    row["default_speedup"] = row["configs"][0]["speedup"] if row["configs"][0]["cfg"] else None
                    row["best_speedup"], row["best_cfg"] = best["speedup"], best["cfg"]
                    print(f"{sname} {fmt:10s} m={m:2d} cublas {t_cublas * 1e6:6.1f}us | tc default "
                          f"{row['configs'][0]['speedup']:.2f}x best {best['speedup']:.2f}x {best['cfg']}"
                          + (f" | gemv {t_cublas / row['gemv_s']:.2f}x" if m == 1 else ""), flush=True)
                res["rows"].append(row)
            del copies
            torch.cuda.empty_cache()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "tc_curve.json").write_text(json.dumps(res, indent=1))
    print(f"done in {time.time() - t_start:.0f} s; {len(res['failures'])} failures", flush=True)


if __name__ == "__main__":
    main()
