"""Measure the kernels nmx's GPU target model predicts, on the GPU at hand, as data.

Runs on a CUDA machine (the lent H100/H200), needs torch and triton (for do_bench), nothing of nmx:

    python benchmarks/gpu_calibrate.py --out $OUT/gpu_measured.csv [--quick]

Writes one CSV row per measurement (median of many timed calls, L2 flushed between calls by
triton's do_bench, inputs random normal, never zeros) and a JSON header line with the device,
the versions and the two ceilings (device-to-device copy bandwidth, large bf16 GEMM rate):

    dense bf16 and fp8 (torch._scaled_mm, e4m3, per-tensor scales) GEMMs y = x W^T over
        M in 1..8192 on Llama-2-7B and SmolLM2-135M linear shapes;
    2:4 bf16 GEMMs through PyTorch's semi-structured path (cuSPARSELt), the way a user calls it;
    SDPA decode (q_len 1) over batch x context, GQA 32/8 and MHA 32/32, head_dim 128;
    RMSNorm and SiLU(gate)*up over rows x width;
    an empty-ish launch (a 1-element add), the per-kernel overhead.

Each result is checked once against a float32 reference of the same inputs before it is timed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
import triton.testing

FIELDS = ["op", "dtype", "m", "n", "k", "sparsity", "batch", "q_len", "kv_len", "heads_q", "heads_kv",
          "head_dim", "latency_s", "rel_err"]
MS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
SHAPES = {  # (N, K) of y = x W^T
    "llama2-7b.qkvo": (4096, 4096), "llama2-7b.gate_up": (11008, 4096), "llama2-7b.down": (4096, 11008),
    "smollm2.q": (576, 576), "smollm2.kv": (192, 576), "smollm2.gate_up": (1536, 576), "smollm2.down": (576, 1536),
}


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=60, return_mode="median") * 1e-3


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    if not torch.isfinite(out).all():
        return float("nan")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def ceilings() -> dict:
    n = 1 << 30  # 2 GiB of bf16
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src))
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    tg = bench(lambda: a @ b)
    del src, dst
    return {"copy_bytes_per_s": 2 * n * 2 / t, "bf16_gemm_flops_per_s": 2 * 8192**3 / tg}


def gemms(rows: list, ms: list[int]) -> None:
    fp8_ok = hasattr(torch, "_scaled_mm") and hasattr(torch, "float8_e4m3fn")
    try:
        from torch.sparse import to_sparse_semi_structured
        sparse_ok = True
    except ImportError:
        sparse_ok = False
    for shape_name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / math.sqrt(k)
        mask = torch.zeros(n, k // 4, 4, device="cuda", dtype=torch.bool)  # keep the 2 largest of every 4
        idx = w.abs().reshape(n, k // 4, 4).topk(2, dim=-1).indices
        mask.scatter_(-1, idx, True)
        w24 = (w.reshape(n, k // 4, 4) * mask).reshape(n, k)
        ws = None
        if sparse_ok:
            try:
                ws = to_sparse_semi_structured(w24)
            except Exception as err:  # noqa: BLE001 -- record why the path is missing
                print(f"# 2:4 unavailable for {shape_name}: {err}", file=sys.stderr)
        w8 = w.to(torch.float8_e4m3fn) if fp8_ok else None
        scale = torch.ones((), device="cuda")
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.float() @ w.float().T
            base = dict(n=n, k=k, m=m, sparsity="")
            y = F.linear(x, w)
            rows.append(dict(op="gemm", dtype="bf16", latency_s=bench(lambda: F.linear(x, w)),
                             rel_err=rel_err(y, ref), **base))
            if w8 is not None:
                # cuBLASLt's fp8 GEMM wants M a multiple of 16: pad as fp8 inference does
                x8 = F.pad(x, (0, 0, 0, -m % 16)).to(torch.float8_e4m3fn)
                try:
                    y8 = torch._scaled_mm(x8, w8.T, scale_a=scale, scale_b=scale, out_dtype=torch.bfloat16)
                    ref8 = x8.float() @ w8.float().T
                    y8, ref8 = y8[:m], ref8[:m]
                    rows.append(dict(op="gemm", dtype="fp8", latency_s=bench(
                        lambda: torch._scaled_mm(x8, w8.T, scale_a=scale, scale_b=scale, out_dtype=torch.bfloat16)),
                        rel_err=rel_err(y8, ref8), **base))
                except Exception as err:  # noqa: BLE001
                    print(f"# fp8 {shape_name} m={m}: {err}", file=sys.stderr)
            if ws is not None:
                try:
                    ys = F.linear(x, ws)
                    ref_s = x.float() @ w24.float().T
                    rows.append(dict(op="gemm", dtype="bf16", latency_s=bench(lambda: F.linear(x, ws)),
                                     rel_err=rel_err(ys, ref_s), **{**base, "sparsity": "2:4"}))
                except Exception as err:  # noqa: BLE001
                    print(f"# 2:4 {shape_name} m={m}: {err}", file=sys.stderr)
        print(f"# gemm {shape_name} done", file=sys.stderr, flush=True)


def attention(rows: list, quick: bool) -> None:
    d = 128
    for hq, hkv in ((32, 8), (32, 32)):
        for b in (1, 4, 16, 64):
            for ctx in (512, 2048, 8192, 32768):
                if b * ctx * hkv > (16 * 32768 * 8 if quick else 64 * 32768 * 8):
                    continue
                q = torch.randn(b, hq, 1, d, device="cuda", dtype=torch.bfloat16)
                kk = torch.randn(b, hkv, ctx, d, device="cuda", dtype=torch.bfloat16)
                v = torch.randn(b, hkv, ctx, d, device="cuda", dtype=torch.bfloat16)
                gqa = hq != hkv
                out = F.scaled_dot_product_attention(q, kk, v, enable_gqa=gqa)
                kr = kk.float().repeat_interleave(hq // hkv, dim=1)
                vr = v.float().repeat_interleave(hq // hkv, dim=1)
                ref = torch.softmax(q.float() @ kr.transpose(-1, -2) / math.sqrt(d), -1) @ vr
                t = bench(lambda: F.scaled_dot_product_attention(q, kk, v, enable_gqa=gqa))
                rows.append(dict(op="attention", dtype="bf16", batch=b, q_len=1, kv_len=ctx, heads_q=hq,
                                 heads_kv=hkv, head_dim=d, latency_s=t, rel_err=rel_err(out, ref)))
                del q, kk, v, kr, vr, ref
    print("# attention done", file=sys.stderr, flush=True)


def elementwise(rows: list, ms: list[int]) -> None:
    for width in (576, 4096, 11008):
        wgt = torch.randn(width, device="cuda", dtype=torch.bfloat16)
        for m in ms:
            x = torch.randn(m, width, device="cuda", dtype=torch.bfloat16)
            ref = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6) * wgt.float()
            out = F.rms_norm(x, (width,), wgt, 1e-6)
            rows.append(dict(op="norm", dtype="bf16", m=m, n=width, latency_s=bench(
                lambda: F.rms_norm(x, (width,), wgt, 1e-6)), rel_err=rel_err(out, ref)))
            g = torch.randn(m, width, device="cuda", dtype=torch.bfloat16)
            out = F.silu(g) * x
            rows.append(dict(op="activation", dtype="bf16", m=m, n=width, latency_s=bench(
                lambda: F.silu(g) * x), rel_err=rel_err(out, F.silu(g.float()) * x.float())))
    print("# elementwise done", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="fewer M values and attention sizes")
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    ms = MS[::2] + [8192] if args.quick else MS
    head = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d"), **ceilings()}
    tiny = torch.randn(1, device="cuda")
    head["launch_s"] = bench(lambda: tiny.add_(1.0))
    print(json.dumps(head), file=sys.stderr, flush=True)
    rows: list[dict] = []
    gemms(rows, ms)
    attention(rows, args.quick)
    elementwise(rows, ms)
    with open(args.out, "w", newline="") as f:
        f.write("# " + json.dumps(head) + "\n")
        wr = csv.DictWriter(f, FIELDS, restval="")
        wr.writeheader()
        for r in rows:
            wr.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    bad = [r for r in rows if not (r["rel_err"] < 2e-2)]
    print(f"{len(rows)} measurements in {time.time() - t0:.0f} s; {len(bad)} failed the correctness check")
    for r in bad[:10]:
        print("BAD", r)
    # a short table at the end (the tool returns the tail)
    for r in rows:
        if r["op"] == "gemm" and r["n"] == 11008 and r["m"] in (1, 16, 256, 2048, 8192):
            print(f"gemm {r['dtype']:4s} {r['sparsity'] or 'dense':5s} m={r['m']:5d} {r['latency_s'] * 1e6:9.1f} us")


if __name__ == "__main__":
    main()
