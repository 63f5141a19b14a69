"""Check and time nmx's compressed-weight kernels against cuBLAS and cuSPARSELt on one CUDA GPU.

    python benchmarks/kernels_bench.py [--out DIR] [--sweep] [--quick] [--ms 1,16] [--no-kernel2]

1. Ceiling: device-to-device copy bandwidth (bytes read + written).
2. Correctness, before any timing: every (format, pattern) on fresh random weights (real values,
   2:4 masks by magnitude), M in {1, 7, 16, 64, 300}, through the dispatcher (`nmx.kernels.linear`)
   and each kernel directly: against the reference twin (`linear_reference`) and a float64 product
   with the nmx-quantized weight; outputs poisoned with NaN first. Relative error limit 1e-2.
3. Kernel 1: y = x W^T for Llama-2-7B shapes at M = 1 .. 64: cuBLAS bf16 (F.linear) vs the
   dispatcher's kernel per format; speedup and achieved bandwidth on the packed bytes + x + y.
   Two timings: "graph" replays one CUDA graph that calls the op on R distinct copies of the weight
   (R copies > 4x the L2, so every call streams its weight from memory, as in a decode step, and no
   launch cost is counted: what a decode engine sees), and "eager" (triton do_bench: one launch per
   call, L2 flushed in between). The graph timing is the headline; both are stored.
4. `--sweep`: tile configs of the one-token kernel per case (graph timing); best per case and shape.
5. Kernel 2 (M >= 128, 2:4 bf16): cuBLAS vs cuSPARSELt (searched algorithm) replayed from graphs,
   and the dispatcher (`sparse_gemm`): eager against eager dense, and inside a graph (after
   `tune_graph`) against dense in a graph.
Writes DIR/kernels.json.
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
from nmx.kernels import (  # noqa: E402
    PackedLinear,
    linear,
    linear_reference,
    pack,
    sparse_gemm,  # noqa: E402
)
from nmx.kernels.reference import decode_weight  # noqa: E402
from nmx.kernels.timing import graph_time_over  # noqa: E402
from nmx.kernels.triton_gemv import gemv, word_linear  # noqa: E402
from nmx.kernels.triton_tc import supports as tc_supports  # noqa: E402
from nmx.kernels.triton_tc import tc_linear  # noqa: E402
from nmx.sparsity.masks import nm_mask  # noqa: E402

CASES = [(None, "2:4"), ("mxfp4", None), ("nvfp4", None), ("int4_g128", None), ("fp8_e4m3", None),
         ("mxfp8_e4m3", None), ("mxfp4", "2:4"), ("nvfp4", "2:4"), ("int4_g128", "2:4"), ("fp8_e4m3", "2:4")]
SHAPES = {"4096x4096": (4096, 4096), "11008x4096": (11008, 4096), "4096x11008": (4096, 11008)}
ROTATE_BYTES = 256 << 20  # > 4x the L2 of an H100 / H200


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3


def graph_bench(fn, copies: list) -> float:
    """Seconds per call of fn(copy), replayed from one CUDA graph over all copies (see module doc)."""
    return graph_time_over(fn, copies)


def clones(p, nbytes: int) -> list:
    """Distinct copies of a weight (same values, different memory) adding up to >= ROTATE_BYTES."""
    r = max(2, math.ceil(ROTATE_BYTES / nbytes))
    if isinstance(p, torch.Tensor):
        return [p] + [p.clone() for _ in range(r - 1)]
    cl = lambda t: None if t is None else t.clone()  # noqa: E731
    return [p] + [PackedLinear(p.n, p.k, p.format, p.sparse24, cl(p.values), cl(p.meta), cl(p.scales),
                               p.tensor_scale, p.block) for _ in range(r - 1)]


def name(fmt, pat) -> str:
    return "+".join(x for x in (pat, fmt or "bf16") if x)


def make(n: int, k: int, fmt, pat, seed: int, device: str = "cuda"):
    g = torch.Generator(device=device).manual_seed(seed)
    w = torch.randn(n, k, device=device, generator=g) / math.sqrt(k)
    if pat:
        w = w * nm_mask(w.abs(), 2, 4)
    return w, pack(w, fmt, pat)


def _errors(y: torch.Tensor, x: torch.Tensor, p, w: torch.Tensor, fmt) -> tuple[float, float]:
    ref = linear_reference(x, p).float()
    wq = (formats.get(fmt).quantize(w) if fmt else w.to(torch.bfloat16).float()).double()
    exact = x.double() @ wq.T
    return float((y.float() - ref).norm() / ref.norm()), float((y.double() - exact).norm() / exact.norm())


def check(results: dict, shapes=((4096, 4096),), device: str = "cuda", ms=(1, 16, 300)) -> int:
    bad = 0
    rows = []
    for fmt, pat in CASES:
        for (n, k) in shapes:
            w, p = make(n, k, fmt, pat, seed=1000 + n, device=device)
            for m in ms:
                x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
                paths = {"dispatch": lambda: linear(x, p)}
                if m == 1:
                    paths["gemv"] = lambda: gemv(x, p, poison=True)
                    split4 = {"BLOCK_N": 32, "W": min(16, k // 64), "SPLIT_K": 4, "num_warps": 4, "num_stages": 3}
                    paths["gemv_split4"] = lambda: gemv(x, p, split4, poison=True)
                if m <= 64:
                    paths["word"] = lambda: word_linear(x, p, poison=True)
                    if tc_supports(p):
                        paths["tc"] = lambda: tc_linear(x, p, poison=True)
                if 1 < m <= 64:
                    split2 = {"BLOCK_M": 16, "BLOCK_N": 32, "W": 16, "SPLIT_K": 2, "num_warps": 4, "num_stages": 3}
                    paths["word_split2"] = lambda: word_linear(x, p, split2, poison=True)
                for path, fn in paths.items():
                    y = fn()
                    e_ref, e_exact = _errors(y, x, p, w, fmt)
                    ok = bool(torch.isfinite(y).all()) and e_ref < 1e-2 and e_exact < 1e-2
                    bad += not ok
                    rows.append({"case": name(fmt, pat), "n": n, "k": k, "m": m, "path": path,
                                 "rel_err_vs_twin": e_ref, "rel_err_vs_float64": e_exact, "ok": ok})
                    if not ok:
                        print(f"FAIL {rows[-1]}", flush=True)
    results["correctness"] = rows
    print(f"correctness: {len(rows) - bad}/{len(rows)} passed; worst rel err vs float64 "
          f"{max(r['rel_err_vs_float64'] for r in rows):.2e}", flush=True)
    return bad


def kernel1(results: dict, ms: list[int], copy_bw: float) -> None:
    rows = []
    for sname, (n, k) in SHAPES.items():
        w_dense = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        dense_copies = clones(w_dense, w_dense.numel() * 2)
        packed = {name(f, p): make(n, k, f, p, seed=7)[1] for f, p in CASES}
        copies = {c: clones(p, p.nbytes) for c, p in packed.items()}
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            t_dense = graph_bench(lambda wd: F.linear(x, wd), dense_copies)
            row = {"shape": sname, "m": m, "cublas_bf16_s": t_dense}
            if m == 1:
                row["cublas_bf16_eager_s"] = bench(lambda: F.linear(x, w_dense))
            for case, p in packed.items():
                t = graph_bench(lambda q: linear(x, q), copies[case])
                nbytes = p.nbytes + x.numel() * 2 + m * n * 2
                row[case] = {"s": t, "speedup": t_dense / t, "bw_frac_of_copy": nbytes / t / copy_bw}
                if m == 1:  # one launch per call, L2 flushed (what the first kernel's table used)
                    row[case]["eager_s"] = bench(lambda: linear(x, p))
                    row[case]["speedup_eager"] = row["cublas_bf16_eager_s"] / row[case]["eager_s"]
                if m <= 64 and tc_supports(p):  # the tensor-core kernel (tc_curve.py has its whole curve)
                    row[case]["tc_s"] = graph_bench(lambda q: tc_linear(x, q), copies[case])
                    row[case]["tc_speedup"] = t_dense / row[case]["tc_s"]
            rows.append(row)
            print(f"{sname} m={m:3d} cublas {t_dense * 1e6:6.1f}us ({n * k * 2 / t_dense / copy_bw:.0%}) | "
                  + " ".join(
                f"{c} {row[c]['speedup']:.2f}x/{row[c]['bw_frac_of_copy']:.0%}" for c in packed), flush=True)
    results["kernel1"] = rows


GEMV_CONFIGS = [(8, 512, 1, 4, 1), (16, 512, 1, 4, 1), (4, 512, 1, 4, 1), (8, 256, 1, 4, 2), (16, 256, 1, 4, 2),
                (8, 128, 1, 4, 3), (16, 128, 1, 4, 3), (32, 128, 1, 4, 3), (8, 512, 1, 8, 1), (16, 512, 1, 8, 1),
                (32, 256, 1, 8, 2), (8, 256, 2, 4, 2), (16, 512, 2, 4, 1), (4, 256, 1, 2, 2)]
DOT_CONFIGS = [(64, 32, 1, 4, 3), (32, 32, 1, 4, 3), (64, 16, 1, 4, 3), (128, 32, 1, 8, 3), (32, 16, 1, 4, 4),
               (64, 32, 2, 4, 3), (32, 32, 4, 4, 3), (128, 16, 1, 4, 3), (16, 32, 1, 4, 3), (64, 64, 1, 8, 2)]
SWEEP_CASES = [("int4_g128", None), ("nvfp4", None), ("fp8_e4m3", None), (None, "2:4"), ("nvfp4", "2:4"),
               (None, None)]


def sweep(results: dict, copy_bw: float) -> None:
    rows = []
    for sname, (n, k) in SHAPES.items():
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        for f, pat in SWEEP_CASES:
            p = make(n, k, f, pat, seed=3)[1]
            ref = linear_reference(x, p).float()
            copies = clones(p, p.nbytes)
            timed = []
            for bn, w, sk, nw, ns in GEMV_CONFIGS:
                cfg = dict(BLOCK_N=bn, W=w, SPLIT_K=sk, num_warps=nw, num_stages=ns)
                try:
                    y = gemv(x, p, cfg, poison=True)
                    err = float((y.float() - ref).norm() / ref.norm())
                    if not err < 1e-2:
                        print(f"# {cfg}: wrong result, rel err {err:.2e}", flush=True)
                        continue
                    timed.append((graph_bench(lambda q: gemv(x, q, cfg), copies), cfg))
                except Exception as err:  # noqa: BLE001 -- a config can exceed resources or not divide K
                    print(f"# {name(f, pat)} {cfg}: {type(err).__name__}: {str(err)[:100]}", flush=True)
            timed.sort(key=lambda tc: tc[0])
            nbytes = p.nbytes + k * 2 + n * 2
            rows.append({"shape": sname, "case": name(f, pat), "best_s": timed[0][0], "best": timed[0][1],
                         "ranked": timed, "bw_frac_of_copy": nbytes / timed[0][0] / copy_bw})
            first = [t for t, c in timed if (c["BLOCK_N"], c["W"], c["SPLIT_K"]) == GEMV_CONFIGS[0][:3]]
            print(f"sweep m=1 {sname} {name(f, pat)}: best {timed[0][0] * 1e6:.2f}us "
                  f"({nbytes / timed[0][0] / copy_bw:.0%} of copy) {timed[0][1]}; 2nd {timed[1][0] * 1e6:.2f}us "
                  f"{timed[1][1]}; first config {first[0] * 1e6 if first else float('nan'):.2f}us", flush=True)
    for sname, (n, k) in list(SHAPES.items())[:2]:
        x = torch.randn(16, k, device="cuda", dtype=torch.bfloat16)
        for f, pat in SWEEP_CASES[:4]:
            p = make(n, k, f, pat, seed=3)[1]
            ref = linear_reference(x, p).float()
            copies = clones(p, p.nbytes)
            timed = []
            for bn, w, sk, nw, ns in DOT_CONFIGS:
                cfg = dict(BLOCK_M=16, BLOCK_N=bn, W=w, SPLIT_K=sk, num_warps=nw, num_stages=ns)
                try:
                    y = word_linear(x, p, cfg, poison=True)
                    err = float((y.float() - ref).norm() / ref.norm())
                    if not err < 1e-2:
                        print(f"# {cfg}: wrong result, rel err {err:.2e}", flush=True)
                        continue
                    timed.append((graph_bench(lambda q: word_linear(x, q, cfg), copies), cfg))
                except Exception as err:  # noqa: BLE001
                    print(f"# {name(f, pat)} {cfg}: {type(err).__name__}: {str(err)[:100]}", flush=True)
            timed.sort(key=lambda tc: tc[0])
            rows.append({"shape": sname, "case": name(f, pat), "m": 16, "best_s": timed[0][0], "best": timed[0][1],
                         "ranked": timed})
            print(f"sweep m=16 {sname} {name(f, pat)}: best {timed[0][0] * 1e6:.2f}us {timed[0][1]}; "
                  f"2nd {timed[1][0] * 1e6:.2f}us {timed[1][1]}", flush=True)
    results["sweep"] = rows


def kernel2(results: dict, ms: list[int]) -> None:
    rows = []
    for sname, (n, k) in SHAPES.items():
        w, p = make(n, k, None, "2:4", seed=11)
        dense = decode_weight(p).to(torch.bfloat16)
        sparse_gemm.tune_graph(p, lambda: dense, ms)
        wts = sparse_gemm.weights_for(p, lambda: dense)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = linear_reference(x, p).float()
            y = linear(x, p)
            err = float((y.float() - ref).norm() / ref.norm())
            alg = sparse_gemm._alg(wts, x)
            row = {"shape": sname, "m": m, "rel_err": err, "alg_id": alg}
            row["dense_graph_s"] = graph_bench(lambda wd: F.linear(x, wd), [dense])
            row["cslt_graph_s"] = graph_bench(lambda wd: sparse_gemm._sparse(wd, x, alg), [wts])
            row["dispatch_graph_s"] = graph_bench(lambda q: linear(x, q), [p])
            row["dense_eager_s"] = bench(lambda: F.linear(x, dense))
            row["dispatch_eager_s"] = bench(lambda: linear(x, p))
            b = sparse_gemm.bucket(m)
            row["choice_graph"] = sparse_gemm.DECISIONS.choice.get((n, k, b, "graph"))
            row["choice_eager"] = sparse_gemm.DECISIONS.choice.get((n, k, b, "eager"))
            rows.append(row)
            print(f"k2 {sname} m={m:5d} err {err:.1e} | graph: dense {row['dense_graph_s'] * 1e6:7.1f} cslt "
                  f"{row['cslt_graph_s'] * 1e6:7.1f} dispatch {row['dispatch_graph_s'] * 1e6:7.1f} us "
                  f"({row['dense_graph_s'] / row['dispatch_graph_s']:.2f}x, {row['choice_graph']}) | eager: dense "
                  f"{row['dense_eager_s'] * 1e6:7.1f} dispatch {row['dispatch_eager_s'] * 1e6:7.1f} us "
                  f"({row['dense_eager_s'] / row['dispatch_eager_s']:.2f}x, {row['choice_eager']})", flush=True)
    results["kernel2"] = rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--only-sweep", action="store_true", help="correctness and the tile sweep, no tables")
    ap.add_argument("--ms", default=None, help="comma-separated M values for the kernel-1 table")
    ap.add_argument("--no-kernel1", action="store_true")
    ap.add_argument("--no-kernel2", action="store_true")
    ap.add_argument("--k2-ms", default="128,512,1024,2048,4096,8192", help="M values for the kernel-2 table")
    ap.add_argument("--cpu-dry-run", action="store_true", help="the correctness pass on CPU under TRITON_INTERPRET=1")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.cpu_dry_run:  # checks this script's own logic without a GPU
        raise SystemExit(check({}, shapes=((64, 512),), device="cpu", ms=(1, 7, 16, 64, 300)))
    t0 = time.time()
    src = torch.randn(1 << 30, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_bw = 2 * src.numel() * 2 / bench(lambda: dst.copy_(src))
    del src, dst
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "date": time.strftime("%Y-%m-%d"), "copy_bytes_per_s": copy_bw}
    print(json.dumps(results), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save = lambda: (out / "kernels.json").write_text(json.dumps(results, indent=1, default=str))  # noqa: E731
    bad = check(results)
    save()
    print(f"[{time.time() - t0:.0f} s]", flush=True)
    if bad:
        print(f"{bad} correctness failures: not timing", flush=True)
    else:
        if args.sweep or args.only_sweep:
            sweep(results, copy_bw)
            save()
            print(f"[{time.time() - t0:.0f} s]", flush=True)
        if not args.only_sweep and not args.no_kernel1:
            ms = [int(v) for v in args.ms.split(",")] if args.ms else [1, 2, 4, 8, 16, 32, 64]
            kernel1(results, ms, copy_bw)
            save()
            print(f"[{time.time() - t0:.0f} s]", flush=True)
        if not args.only_sweep and not args.no_kernel2:
            kernel2(results, [int(v) for v in args.k2_ms.split(",")])
    save()
    print(f"done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
