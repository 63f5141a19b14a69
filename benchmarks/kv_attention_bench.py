"""Check and time nmx's decode attention over a packed (quantized) KV cache against bf16 SDPA, one CUDA GPU.

    PYTHONPATH=$PWD/src python3 benchmarks/kv_attention_bench.py --out DIR [--no-sweep]

1. Ceiling: device-to-device copy bandwidth (bytes read + written, torch copy_ of 1 GiB).
2. Correctness, before any timing: every format pair on fresh random K, V, q (B=2, Hq/Hkv = 32/8, D=128,
   T = 1000 and 4099, one with a forced split count), the Triton kernel with poisoned outputs against
   the reference twin (float32 math on the dequantized cache, computed on the CPU); limit 1e-2 relative.
3. Decode attention, one query token, GQA 32/8, D=128, B in {1, 16}, T in {4096, 32768}:
   - bf16 SDPA baselines, every backend that runs (flash, efficient, cudnn, math): q [B, Hq, 1, D] with
     k/v [B, Hkv, T, D] and enable_gqa=True ("gqa"), and the flash-decoding fold q -> [B, Hkv, Hq/Hkv, D]
     against the same k/v ("fold": the group's query heads become the query length; no KV repeat).
     The baseline is the fastest of them (named in the table);
   - the Triton kernel on a bf16 cache (its own efficiency), then on int4 / int2 / fp8_e4m3 / mxfp4 caches.
   Each timed as CUDA-graph replays over enough distinct copies of the cache to exceed 3x the L2
   ("graph", no launch overhead, cold cache) and with triton.testing.do_bench (median, L2 flushed,
   includes the host launch). Speedup = baseline time / time; bandwidth = bytes of the cache (codes,
   scales, bf16 window; K and V for SDPA) + q + out, per second, as a fraction of the copy bandwidth.
4. Sweep (unless --no-sweep): kernel configs for int4 at B=16, T=32768 (fp16-subnormal decode, register
   cap, programs per SM, pipeline stages, block size, warps per program), each checked against the twin
   first; the fastest is printed as the config to make the default.
Writes DIR/kv_attention.json; prints a markdown table. About 1-2 minutes on an H200.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nmx.kernels.kv_attention import decode_attention, decode_attention_reference  # noqa: E402
from nmx.kernels.kv_layout import PackedKV, pack_kv  # noqa: E402
from nmx.kernels.timing import graph_time_over  # noqa: E402
from nmx.kernels.triton_kv_attention import DEFAULTS, kv_decode_attention, plan  # noqa: E402

HQ, HKV, D = 32, 8, 128
FORMATS = [("int4", "int4"), ("int2", "int2"), ("fp8_e4m3", "fp8_e4m3"), ("mxfp4", "mxfp4")]
SHAPES = [(1, 4096), (1, 32768), (16, 4096), (16, 32768)]
TARGET = (16, 32768)
SWEEP = [{"SUBNORMAL": True}, {"maxnreg": 168}, {"maxnreg": 200}, {"warps_per_sm": 8}, {"warps_per_sm": 32},
         {"num_stages": 3}, {"num_stages": 1}, {"BT_MAX": 128}, {"num_warps": 2}, {"num_warps": 4}]
BUDGET_S = 150.0


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median") * 1e-3


def graph_bench(fn, copies: list) -> float:
    """Seconds per call of fn(copy), replayed from one CUDA graph cycling over the copies."""
    return graph_time_over(fn, copies, calls=max(len(copies), 8), reps=15)


def n_copies(nbytes: int) -> int:
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 64 << 20) or (64 << 20)
    return max(1, min(16, math.ceil(3 * l2 / nbytes)))


def random_kv(b: int, t: int, seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    k = torch.randn(b, HKV, t, D, device="cuda", generator=g, dtype=torch.float32).to(torch.bfloat16)
    v = torch.randn(b, HKV, t, D, device="cuda", generator=g, dtype=torch.float32).to(torch.bfloat16)
    q = torch.randn(b, HQ, D, device="cuda", generator=g, dtype=torch.float32).to(torch.bfloat16)
    return q, k, v


def clone_packed(p: PackedKV) -> PackedKV:
    cl = lambda t: None if t is None else t.clone()  # noqa: E731
    return PackedKV(p.batch, p.kv_heads, p.tokens, p.head_dim, p.group, p.residual, p.key_format, p.value_format,
                    p.quantized, cl(p.k_codes), cl(p.k_scales), cl(p.v_codes), cl(p.v_scales), cl(p.k_rest),
                    cl(p.v_rest))


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.float().cpu(), ref.float().cpu()
    return float((y - ref).norm() / ref.norm())


# ---- 2. correctness ---------------------------------------------------------------------------------


def check(results: dict) -> int:
    rows, bad = [], 0
    for kf, vf in FORMATS + [("bf16", "bf16")]:
        for t, cfg in ((1000, None), (4099, {"num_splits": 5})):
            q, k, v = random_kv(2, t, seed=t + len(kf))
            entry = {"formats": f"{kf}/{vf}", "T": t, "config": cfg}
            try:
                p = pack_kv(k, v, kf, vf)
                y = kv_decode_attention(q, p, 1 / math.sqrt(D), cfg, poison=True)
                ref = decode_attention_reference(q.cpu(), p.to("cpu"))
                entry.update(rel_err=rel_err(y, ref), finite=bool(torch.isfinite(y).all()))
                entry["ok"] = entry["finite"] and entry["rel_err"] < 1e-2
            except Exception as err:  # noqa: BLE001 -- report and go on: one format must not hide the others
                entry.update(ok=False, error=f"{type(err).__name__}: {err}"[:400], trace=traceback.format_exc()[-1500:])
            bad += not entry["ok"]
            rows.append(entry)
            print(f"check {entry['formats']:18s} T={t:5d} {'ok' if entry['ok'] else 'FAIL'} "
                  f"{entry.get('rel_err', float('nan')):.2e} {entry.get('error', '')}", flush=True)
    results["correctness"] = rows
    return bad


# ---- 3. timing ---------------------------------------------------------------------------------------


def sdpa_variants(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b = q.shape[0]
    q4 = q[:, :, None, :]  # [B, Hq, 1, D]
    qf = q.reshape(b, HKV, HQ // HKV, D)  # the group's heads as the query length
    out = {}
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    if b * k.shape[2] <= 4096:  # the math backend (materialized scores, repeated KV) only where it is cheap to run
        backends.append(SDPBackend.MATH)
    for be in backends:
        for kind, fn in (("gqa", lambda kk, vv: F.scaled_dot_product_attention(q4, kk, vv, enable_gqa=True)),
                         ("fold", lambda kk, vv: F.scaled_dot_product_attention(qf, kk, vv))):
            name = f"sdpa_{be.name.lower()}_{kind}"

            def run(kv_pair, be=be, fn=fn):
                with sdpa_kernel([be]):
                    return fn(*kv_pair)

            try:
                y = run((k, v))
                out[name] = (run, y.reshape(b, HQ, D))
            except Exception as err:  # noqa: BLE001 -- a backend may not support this shape / GQA
                out[name] = (None, f"{type(err).__name__}: {str(err)[:120]}")
    return out


def timing(results: dict, copy_bw: float, t0: float) -> None:
    rows = []
    scale = 1 / math.sqrt(D)
    for b, t in SHAPES:
        q, k, v = random_kv(b, t, seed=7)
        io = 2 * q.numel() * 2  # q in, out
        dense_bytes = 2 * k.numel() * 2 + io
        kv_copies = [(k, v)] + [(k.clone(), v.clone()) for _ in range(n_copies(dense_bytes) - 1)]
        row = {"B": b, "T": t, "dense_bytes": dense_bytes, "sdpa": {}}
        ref = None
        for name, (run, y) in sdpa_variants(q, k, v).items():
            if run is None:
                row["sdpa"][name] = {"error": y}
                continue
            if ref is None and b * t <= 16 * 4096:
                p = pack_kv(k, v, "bf16", "bf16")
                ref = decode_attention_reference(q.cpu(), p.to("cpu"))
            err = rel_err(y, ref) if ref is not None else None
            try:
                tg = graph_bench(run, kv_copies)
                te = bench(lambda run=run, kv_pair=(k, v): run(kv_pair))
            except Exception as e:  # noqa: BLE001 -- e.g. a backend that cannot be captured in a graph
                row["sdpa"][name] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
                continue
            row["sdpa"][name] = {"graph_s": tg, "eager_s": te, "rel_err": err,
                                 "bw_frac_of_copy": dense_bytes / tg / copy_bw}
        timed = {n: r for n, r in row["sdpa"].items() if "graph_s" in r}
        base_name = min(timed, key=lambda n: timed[n]["graph_s"])
        base_eager = min(timed, key=lambda n: timed[n]["eager_s"])
        row.update(baseline=base_name, baseline_s=timed[base_name]["graph_s"], baseline_eager=base_eager,
                   baseline_eager_s=timed[base_eager]["eager_s"])
        del kv_copies
        row["kernel"] = {}
        for kf, vf in [("bf16", "bf16")] + FORMATS:
            name = "bf16" if kf == "bf16" else (kf if kf == vf else f"{kf}/{vf}")
            try:
                p = pack_kv(k, v, kf, vf)
                copies = [p] + [clone_packed(p) for _ in range(n_copies(p.nbytes + io) - 1)]
                tg = graph_bench(lambda pp, q=q: decode_attention(q, pp, scale), copies)
                te = bench(lambda q=q, p=p: decode_attention(q, p, scale))
                nbytes = p.nbytes + io
                pl = plan(tuple(q.shape), p)
                row["kernel"][name] = {
                    "graph_s": tg, "eager_s": te, "bytes": nbytes, "bytes_vs_bf16": nbytes / dense_bytes,
                    "speedup": row["baseline_s"] / tg, "speedup_eager": row["baseline_eager_s"] / te,
                    "bw_frac_of_copy": nbytes / tg / copy_bw, "splits": pl["NS"], "block_tokens": pl["BT"],
                    "warps": pl["num_warps"]}
                del copies
            except Exception as err:  # noqa: BLE001
                row["kernel"][name] = {"error": f"{type(err).__name__}: {str(err)[:300]}",
                                       "trace": traceback.format_exc()[-1500:]}
                print(f"# {name} B={b} T={t}: {row['kernel'][name]['error']}", flush=True)
        rows.append(row)
        print(f"B={b:2d} T={t:5d} baseline {base_name} {row['baseline_s'] * 1e6:7.1f}us "
              f"({timed[base_name]['bw_frac_of_copy']:.0%} of copy) | " + " ".join(
                  f"{n} {r['speedup']:.2f}x/{r['bw_frac_of_copy']:.0%}" for n, r in row["kernel"].items()
                  if "speedup" in r) + f" [{time.time() - t0:.0f} s]", flush=True)
        torch.cuda.empty_cache()
    results["timing"] = rows


def sweep(results: dict, copy_bw: float, t0: float, budget_s: float = BUDGET_S) -> None:
    b, t = TARGET
    q, k, v = random_kv(b, t, seed=11)
    p = pack_kv(k, v, "int4", "int4")
    del k, v
    qs, ks, vs = random_kv(2, 3000, seed=12)
    ps = pack_kv(ks, vs, "int4", "int4")
    ref = decode_attention_reference(qs.cpu(), ps.to("cpu"))
    io = 2 * q.numel() * 2
    rows = []
    for cfg in [{}] + SWEEP:
        if time.time() - t0 > budget_s:
            rows.append({"config": cfg, "skipped": "time budget"})
            continue
        entry = {"config": cfg}
        try:
            err = rel_err(kv_decode_attention(qs, ps, 1 / math.sqrt(D), cfg, poison=True), ref)
            entry["rel_err"] = err
            if err < 1e-2:
                tg = graph_bench(lambda pp, cfg=cfg: kv_decode_attention(q, pp, 1 / math.sqrt(D), cfg), [p])
                pl = plan(tuple(q.shape), p, cfg)
                entry.update(graph_s=tg, bw_frac_of_copy=(p.nbytes + io) / tg / copy_bw, splits=pl["NS"])
        except Exception as err:  # noqa: BLE001 -- a config may exceed registers / shared memory
            entry["error"] = f"{type(err).__name__}: {str(err)[:200]}"
        rows.append(entry)
        print(f"sweep int4 B={b} T={t} {cfg}: " + (f"{entry['graph_s'] * 1e6:.1f}us "
              f"({entry['bw_frac_of_copy']:.0%} of copy, {entry['splits']} splits)" if "graph_s" in entry else
              entry.get("error", f"rel err {entry.get('rel_err')}")), flush=True)
    results["sweep"] = rows
    timed = [r for r in rows if "graph_s" in r]
    if timed:
        best = min(timed, key=lambda r: r["graph_s"])
        base = rows[0].get("graph_s")
        print(f"sweep best: {best['config'] or 'defaults'} {best['graph_s'] * 1e6:.1f}us"
              + (f" ({base / best['graph_s']:.2f}x the defaults)" if base else ""), flush=True)


def table(results: dict) -> str:
    names = ["bf16", "int4", "int2", "fp8_e4m3", "mxfp4"]
    lines = ["| B | T | SDPA baseline (bf16) | SDPA us | SDPA % copy | " + " | ".join(
        f"{n} us / x / % copy" for n in names) + " |", "|" + "---|" * (5 + len(names))]
    for r in results.get("timing", []):
        base = r["sdpa"][r["baseline"]]
        cells = []
        for n in names:
            k = r["kernel"].get(n, {})
            cells.append(f"{k['graph_s'] * 1e6:.1f} / {k['speedup']:.2f}x / {k['bw_frac_of_copy']:.0%}"
                         if "graph_s" in k else "error")
        lines.append(f"| {r['B']} | {r['T']} | {r['baseline'][5:]} | {base['graph_s'] * 1e6:.1f} | "
                     f"{base['bw_frac_of_copy']:.0%} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("eager (do_bench, L2 flushed, host launch included): " + "; ".join(
        f"B={r['B']} T={r['T']} {r['baseline_eager'][5:]} {r['baseline_eager_s'] * 1e6:.1f}us, " + ", ".join(
            f"{n} {k['speedup_eager']:.2f}x" for n, k in r["kernel"].items() if "speedup_eager" in k)
        for r in results.get("timing", [])))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S, help="stop the config sweep after this many seconds")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    t0 = time.time()
    src = torch.empty(1 << 29, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_bw = 2 * src.numel() * 2 / bench(lambda s=src, d=dst: d.copy_(s))
    del src, dst
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "date": time.strftime("%Y-%m-%d"), "copy_bytes_per_s": copy_bw, "defaults": DEFAULTS,
               "shape": {"Hq": HQ, "Hkv": HKV, "D": D}}
    print(json.dumps({k: v for k, v in results.items() if k != "defaults"}), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save = lambda: (out / "kv_attention.json").write_text(json.dumps(results, indent=1, default=str))  # noqa: E731
    bad = check(results)
    save()
    print(f"correctness: {len(results['correctness']) - bad}/{len(results['correctness'])} passed "
          f"[{time.time() - t0:.0f} s]", flush=True)
    timing(results, copy_bw, t0)
    save()
    if not args.no_sweep:
        sweep(results, copy_bw, t0, args.budget_s)
        save()
    md = table(results)
    results["table"] = md
    save()
    print(md)
    print(f"copy bandwidth {copy_bw / 1e12:.2f} TB/s; {bad} correctness failures; {time.time() - t0:.0f} s total",
          flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
