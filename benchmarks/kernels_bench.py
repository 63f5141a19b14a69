"""Check and time nmx's compressed-weight kernels against cuBLAS and cuSPARSELt on one CUDA GPU.

    python benchmarks/kernels_bench.py [--out DIR] [--sweep] [--quick]

1. Ceiling: device-to-device copy bandwidth (bytes read + written).
2. Correctness, before any timing: every (format, pattern) on fresh random weights (real values,
   2:4 masks by magnitude), M in {1, 7, 16, 64}: the Triton kernel against the reference twin
   (`nmx.kernels.linear_reference`) and against a float64 product with the nmx-quantized weight;
   outputs poisoned with NaN first. Relative error limit 1e-2 (bf16 operands).
3. Kernel 1: y = x W^T for Llama-2-7B shapes at M = 1 .. 64: cuBLAS bf16 (F.linear) vs the packed
   kernel per format; speedup and achieved bandwidth on the packed bytes + x + y.
4. Kernel 2 (large M, 2:4): cuBLAS bf16 vs PyTorch's semi-structured path (per-call plan setup)
   vs torch._cslt_sparse_mm with its searched algorithm vs the same captured in a CUDA graph
   (which leaves the host-side plan setup out) -- M = 16 .. 8192.
`--sweep` also tries tile configs for M = 1 and 16 and prints the best per case.
Timings: triton.testing.do_bench, median, L2 flushed between calls. Writes DIR/kernels.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nmx import formats  # noqa: E402
from nmx.kernels import linear_reference, pack  # noqa: E402
from nmx.kernels.triton_linear import default_config, packed_linear  # noqa: E402
from nmx.sparsity.masks import nm_mask  # noqa: E402

CASES = [(None, "2:4"), ("mxfp4", None), ("nvfp4", None), ("int4_g128", None), ("fp8_e4m3", None),
         ("mxfp8_e4m3", None), ("mxfp4", "2:4"), ("nvfp4", "2:4"), ("int4_g128", "2:4")]
SHAPES = {"4096x4096": (4096, 4096), "11008x4096": (11008, 4096), "4096x11008": (4096, 11008)}


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3


def name(fmt, pat) -> str:
    return "+".join(x for x in (pat, fmt or "bf16") if x)


def make(n: int, k: int, fmt, pat, seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", generator=g) / math.sqrt(k)
    if pat:
        w = w * nm_mask(w.abs(), 2, 4)
    return w, pack(w, fmt, pat)


def check(results: dict) -> int:
    bad = 0
    rows = []
    for fmt, pat in CASES:
        for (n, k) in ((256, 512), (4096, 4096)):
            for m in (1, 7, 16, 64):
                w, p = make(n, k, fmt, pat, seed=1000 + m + n)
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                cfg = default_config(m, n, k, p)
                y = packed_linear(x, p, cfg, poison=True)
                ref = linear_reference(x, p).float()
                wq = (formats.get(fmt).quantize(w) if fmt else w.to(torch.bfloat16).float()).double()
                exact = x.double() @ wq.T
                e_ref = float((y.float() - ref).norm() / ref.norm())
                e_exact = float((y.double() - exact).norm() / exact.norm())
                ok = bool(torch.isfinite(y).all()) and e_ref < 1e-2 and e_exact < 1e-2
                bad += not ok
                rows.append({"case": name(fmt, pat), "n": n, "k": k, "m": m, "rel_err_vs_twin": e_ref,
                             "rel_err_vs_float64": e_exact, "ok": ok, "config": cfg})
    results["correctness"] = rows
    print(f"correctness: {len(rows) - bad}/{len(rows)} passed; worst rel err vs float64 "
          f"{max(r['rel_err_vs_float64'] for r in rows):.2e}", flush=True)
    return bad


def kernel1(results: dict, ms: list[int], copy_bw: float) -> None:
    rows = []
    for sname, (n, k) in SHAPES.items():
        w_dense = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        packed = {name(f, p): make(n, k, f, p, seed=7)[1] for f, p in CASES}
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            t_dense = bench(lambda: F.linear(x, w_dense))
            row = {"shape": sname, "m": m, "cublas_bf16_s": t_dense}
            for case, p in packed.items():
                t = bench(lambda: packed_linear(x, p))
                nbytes = p.nbytes + x.numel() * 2 + m * n * 2
                row[case] = {"s": t, "speedup": t_dense / t, "bw_frac_of_copy": nbytes / t / copy_bw}
            rows.append(row)
            print(f"{sname} m={m:3d} cublas {t_dense * 1e6:7.1f}us | " + " ".join(
                f"{c} {row[c]['speedup']:.2f}x/{row[c]['bw_frac_of_copy']:.0%}" for c in packed), flush=True)
    results["kernel1"] = rows


GEMV_CONFIGS = [(16, 512, 1, 4, 3), (16, 512, 2, 4, 3), (16, 1024, 1, 4, 3), (32, 512, 1, 4, 3), (32, 256, 1, 4, 3),
                (8, 1024, 1, 4, 3), (64, 256, 1, 8, 3), (16, 256, 4, 4, 3), (32, 1024, 1, 8, 3), (16, 512, 4, 4, 3),
                (8, 512, 2, 2, 3), (64, 512, 1, 8, 2)]
DOT_CONFIGS = [(16, 128, 1, 4, 3), (16, 256, 1, 4, 3), (32, 256, 1, 4, 3), (32, 128, 2, 4, 3), (64, 128, 1, 4, 3),
               (16, 512, 1, 4, 3), (32, 512, 1, 8, 3), (64, 256, 1, 8, 3)]


def sweep(results: dict) -> None:
    rows = []
    n, k = SHAPES["11008x4096"]
    for f, pat in ((None, "2:4"), ("nvfp4", None), ("int4_g128", None), ("nvfp4", "2:4")):
        p = make(n, k, f, pat, seed=3)[1]
        for m in (1, 16):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            timed = []
            for bn, bk, sk, nw, ns in (GEMV_CONFIGS if m == 1 else DOT_CONFIGS):
                cfg = dict(BLOCK_M=1 if m == 1 else 16, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=nw, num_stages=ns)
                try:
                    y = packed_linear(x, p, cfg)
                    ref = linear_reference(x, p).float()
                    err = float((y.float() - ref).norm() / ref.norm())
                    if not err < 1e-2:
                        print(f"# {cfg}: wrong result, rel err {err:.2e}", flush=True)
                        continue
                    timed.append((bench(lambda: packed_linear(x, p, cfg)), cfg))
                except Exception as err:  # noqa: BLE001 -- a config can exceed resources
                    print(f"# {cfg}: {type(err).__name__}: {str(err)[:120]}", flush=True)
            timed.sort(key=lambda tc: tc[0])
            nbytes = p.nbytes + m * k * 2 + m * n * 2
            rows.append({"case": name(f, pat), "m": m, "best_s": timed[0][0], "best": timed[0][1], "ranked": timed})
            print(f"sweep {name(f, pat)} m={m}: best {timed[0][0] * 1e6:.1f}us "
                  f"({nbytes / timed[0][0] / 1e12:.2f} TB/s) {timed[0][1]}; 2nd {timed[1][0] * 1e6:.1f}us {timed[1][1]}",
                  flush=True)
    results["sweep"] = rows


def kernel2(results: dict, ms: list[int]) -> None:
    from torch.sparse import to_sparse_semi_structured

    rows = []
    for sname, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        w = w * nm_mask(w.float().abs(), 2, 4).to(w.dtype)
        ws = to_sparse_semi_structured(w)
        comp = torch._cslt_compress(w)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            row = {"shape": sname, "m": m}
            row["cublas_bf16_s"] = t_dense = bench(lambda: F.linear(x, w))
            row["pytorch_24_s"] = bench(lambda: F.linear(x, ws))
            try:
                alg = torch._cslt_sparse_mm_search(comp, x.T)
            except Exception as err:  # noqa: BLE001
                alg = 0
                print(f"# search failed: {err}", file=sys.stderr)
            row["alg_id"] = alg
            y_ref = (x.float() @ w.float().T)
            y = torch._cslt_sparse_mm(comp, x.T, alg_id=alg, transpose_result=True)
            row["cslt_rel_err"] = float((y.float() - y_ref).norm() / y_ref.norm())
            row["cslt_alg_s"] = bench(lambda: torch._cslt_sparse_mm(comp, x.T, alg_id=alg, transpose_result=True))
            try:
                g = torch.cuda.CUDAGraph()
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(2):
                        torch._cslt_sparse_mm(comp, x.T, alg_id=alg, transpose_result=True)
                torch.cuda.current_stream().wait_stream(s)
                with torch.cuda.graph(g):
                    yg = torch._cslt_sparse_mm(comp, x.T, alg_id=alg, transpose_result=True)
                g.replay()
                torch.cuda.synchronize()
                row["graph_rel_err"] = float((yg.float() - y_ref).norm() / y_ref.norm())
                row["cslt_graph_s"] = bench(g.replay)
                gd = torch.cuda.CUDAGraph()
                with torch.cuda.graph(gd):
                    F.linear(x, w)
                row["cublas_graph_s"] = bench(gd.replay)
            except Exception as err:  # noqa: BLE001
                row["graph_error"] = f"{type(err).__name__}: {err}"[:300]
            rows.append(row)
            print(f"k2 {sname} m={m:5d} dense {t_dense * 1e6:8.1f} | pytorch 2:4 {row['pytorch_24_s'] * 1e6:8.1f} | "
                  f"cslt alg{alg} {row['cslt_alg_s'] * 1e6:8.1f} | graph {row.get('cslt_graph_s', float('nan')) * 1e6:8.1f}"
                  f" (dense graph {row.get('cublas_graph_s', float('nan')) * 1e6:8.1f}) us", flush=True)
    results["kernel2"] = rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only-sweep", action="store_true", help="correctness and the tile sweep, no tables")
    ap.add_argument("--ms", default=None, help="comma-separated M values for the kernel-1 table")
    ap.add_argument("--no-kernel2", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    src = torch.randn(1 << 30, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_bw = 2 * src.numel() * 2 / bench(lambda: dst.copy_(src))
    del src, dst
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "date": time.strftime("%Y-%m-%d"), "copy_bytes_per_s": copy_bw}
    print(json.dumps({k: v for k, v in results.items()}), flush=True)
    bad = check(results)
    if bad:
        print(f"{bad} correctness failures: not timing", flush=True)
    elif args.only_sweep:
        sweep(results)
    else:
        ms = [int(v) for v in args.ms.split(",")] if args.ms else [1, 16, 64] if args.quick else [1, 2, 4, 8, 16, 32, 64]
        kernel1(results, ms, copy_bw)
        if args.sweep:
            sweep(results)
        if not args.no_kernel2:
            kernel2(results, [16, 256, 2048, 8192] if args.quick else [16, 64, 256, 512, 1024, 2048, 4096, 8192])
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "kernels.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
