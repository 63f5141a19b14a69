"""Check and time the fused fake-quant kernel (nmx.kernels.fakequant) on one CUDA GPU.

    PYTHONPATH=$PWD/src python3 benchmarks/fakequant_bench.py --out DIR [--quick] [--sweep] [--formats a,b]

1. Correctness, before any timing, per format: the Triton kernel (output poisoned with NaN first)
   against nmx.formats quantize on the CPU, bit for bit (NaN where and only where the reference has
   NaN): the whole [4096, 4096] weight for every format, and for every other shape the first and last
   rows plus the row holding the tensor's largest |x| (blocks are row-local; NVFP4's tensor scale is
   then the same as the whole tensor's).
2. Time, per shape x format, bf16 input, float32 output (the default): the kernel vs (a) the same
   nmx.formats quantize on the GPU tensor (torch ops) and (b) a device-to-device copy of x
   (`torch.clone`-like copy_, bf16 -> bf16) and a converting copy (bf16 -> float32, the kernel's
   bytes). Bandwidth = (bytes read + bytes written) / time, x read once and the output written
   once; NVFP4 reads x a second time for its tensor amax (reported in `bw_frac_incl_prepass`).
   `bf16 out` is the same call with out_dtype=torch.bfloat16 (bf16 in, bf16 out: a copy's bytes).
   Timings: triton.testing.do_bench, median, L2 flushed between calls; `graph_us` replays 20 calls
   from one CUDA graph (no launch overhead: what the GPU itself takes, per call).
Prints one markdown table; writes DIR/fakequant.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import zlib
from pathlib import Path

import torch
import triton
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nmx import formats  # noqa: E402
from nmx.kernels.fakequant import fake_quant, kernel_spec, supported_formats  # noqa: E402
from nmx.kernels.triton_fakequant import fake_quant_triton  # noqa: E402

SHAPES = {  # weights [out, in] and activations [tokens, hidden] of Llama-2-7B
    "W 4096x4096": (4096, 4096),
    "W 11008x4096": (11008, 4096),
    "W 4096x11008": (4096, 11008),
    "A 16x4096": (16, 4096),
    "A 2048x4096": (2048, 4096),
    "A 16x11008": (16, 11008),
    "A 16384x4096": (16384, 4096),
}
QUICK_SHAPES = ("W 4096x4096", "A 16x4096", "A 16384x4096")
SWEEP = [(1024, 4), (2048, 4), (2048, 8), (4096, 4), (4096, 8), (8192, 8), (8192, 16)]


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3


def graph_time(fn, calls: int = 20) -> float:
    """Seconds per call, replaying `calls` calls of fn from one CUDA graph (median of 10 replays)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e-3 / calls)
    return sorted(times)[len(times) // 2]


def make(shape, seed: int) -> torch.Tensor:
    """Real-looking bf16 values: normal, per-row magnitudes over 4 decades, a few outliers."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape, device="cuda", generator=g) * torch.logspace(-2, 2, shape[0], device="cuda")[:, None]
    x.view(-1)[torch.randint(0, x.numel(), (32,), device="cuda", generator=g)] *= 100.0
    return x.to(torch.bfloat16)


def same_bits(y: torch.Tensor, ref: torch.Tensor) -> tuple[bool, int]:
    y, ref = y.float().cpu().contiguous(), ref.float().contiguous()
    ny, nr = torch.isnan(y), torch.isnan(ref)
    bad = int((ny != nr).sum()) + int((y.view(torch.int32)[~nr & ~ny] != ref.view(torch.int32)[~nr & ~ny]).sum())
    return bad == 0, bad


def check(fmts, shapes) -> tuple[list[dict], int]:
    rows, failed = [], 0
    for fmt in fmts:
        spec, ref_fmt = kernel_spec(fmt), formats.get(fmt)
        for sname, shape in shapes.items():
            x = make(shape, seed=zlib.crc32(f'{fmt} {sname}'.encode()) % 10_000)
            y = fake_quant_triton(x, spec, poison=True)
            if shape == (4096, 4096):
                sel = torch.arange(shape[0])
            else:
                top = int(x.float().abs().argmax()) // shape[1]
                sel = torch.unique(torch.cat([torch.arange(64), torch.tensor([top]), torch.arange(shape[0] - 64,
                                                                                                   shape[0])]))
                sel = sel[(sel >= 0) & (sel < shape[0])]
            ref = ref_fmt.quantize(x[sel.cuda()].cpu())
            ok, bad = same_bits(y[sel.cuda()], ref)
            failed += not ok
            rows.append({"format": fmt, "shape": sname, "rows_checked": int(sel.numel()), "bit_identical": ok,
                         "mismatches": bad})
            if not ok:
                print(f"FAIL {fmt} {sname}: {bad} values differ from nmx.formats on the CPU", flush=True)
    print(f"correctness: {len(rows) - failed}/{len(rows)} (format, shape) cases bit-identical to the CPU reference",
          flush=True)
    return rows, failed


def timing(fmts, shapes) -> list[dict]:
    rows = []
    for sname, shape in shapes.items():
        x = make(shape, seed=1)
        n = x.numel()
        dst16, dst32 = torch.empty_like(x), torch.empty(shape, device="cuda", dtype=torch.float32)
        t_copy = bench(lambda d=dst16, x=x: d.copy_(x))
        t_conv = bench(lambda d=dst32, x=x: d.copy_(x))
        g_copy = graph_time(lambda d=dst16, x=x: d.copy_(x))
        copy_bw = 4 * n / t_copy
        for fmt in fmts:
            ref_fmt = formats.get(fmt)
            t_k = bench(lambda x=x, f=fmt: fake_quant(x, f))
            g_k = graph_time(lambda x=x, f=fmt: fake_quant(x, f))
            t_t = bench(lambda x=x, r=ref_fmt: r.quantize(x))
            t_b = bench(lambda x=x, f=fmt: fake_quant(x, f, out_dtype=torch.bfloat16))
            nbytes = 2 * n + 4 * n
            pre = 2 * n if kernel_spec(fmt).family == "nvfp4" else 0
            row = {"shape": sname, "format": fmt, "elements": n, "triton_us": t_k * 1e6, "triton_graph_us": g_k * 1e6,
                   "torch_us": t_t * 1e6, "copy_us": t_copy * 1e6, "copy_graph_us": g_copy * 1e6,
                   "convert_copy_us": t_conv * 1e6, "bytes": nbytes, "gbps": nbytes / t_k * 1e-9,
                   "copy_gbps": copy_bw * 1e-9, "bw_frac_of_copy": nbytes / t_k / copy_bw,
                   "bw_frac_incl_prepass": (nbytes + pre) / t_k / copy_bw,
                   "bw_frac_graph": nbytes / g_k / (4 * n / g_copy), "speedup_vs_torch": t_t / t_k,
                   "time_vs_convert_copy": t_k / t_conv, "triton_bf16_out_us": t_b * 1e6,
                   "bw_frac_of_copy_bf16_out": 4 * n / t_b / copy_bw}
            rows.append(row)
            print(f"{sname:>13} {fmt:>15} {t_k * 1e6:8.1f}us torch {t_t * 1e6:9.1f}us ({t_t / t_k:6.1f}x) "
                  f"copy {t_copy * 1e6:7.1f}us  {row['bw_frac_of_copy']:5.0%} of copy bw", flush=True)
    return rows


def sweep(fmts) -> list[dict]:
    """Tile size x warps per program for the big weight shape; prints the best per format."""
    out = []
    x = make((11008, 4096), seed=2)
    for fmt in fmts:
        spec = kernel_spec(fmt)
        best = None
        for tile, warps in SWEEP:
            if tile < spec.block:
                continue
            cfg = {"TILE": tile, "num_warps": warps}
            t = bench(lambda s=spec, c=cfg: fake_quant_triton(x, s, config=c))
            out.append({"format": fmt, "TILE": tile, "num_warps": warps, "us": t * 1e6})
            best = min(best or (t, cfg), (t, cfg), key=lambda tc: tc[0])
        print(f"sweep {fmt}: best {best[1]} {best[0] * 1e6:.1f}us; " + " ".join(
            f"{r['TILE']}/{r['num_warps']}:{r['us']:.0f}" for r in out if r["format"] == fmt), flush=True)
    return out


def table(rows: list[dict]) -> str:
    head = ("| shape | format | triton us | graph us | torch us | speedup vs torch | copy us | GB/s | of copy bw "
            "| of copy bw (graphs) | bf16 out: of copy bw |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['format']} | {r['triton_us']:.1f} | {r['triton_graph_us']:.1f} | "
                     f"{r['torch_us']:.1f} | {r['speedup_vs_torch']:.1f}x | {r['copy_us']:.1f} | {r['gbps']:.0f} | "
                     f"{r['bw_frac_of_copy']:.0%} | {r['bw_frac_graph']:.0%} | {r['bw_frac_of_copy_bf16_out']:.0%} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for fakequant.json")
    ap.add_argument("--quick", action="store_true", help="three shapes only")
    ap.add_argument("--sweep", action="store_true", help="also sweep tile sizes on 11008x4096")
    ap.add_argument("--formats", default="", help="comma-separated format names (default: every listed one)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    fmts = [f for f in args.formats.split(",") if f] or supported_formats()
    shapes = {k: v for k, v in SHAPES.items() if not args.quick or k in QUICK_SHAPES}
    t0 = time.time()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "command": " ".join(sys.argv), "input_dtype": "bfloat16", "output_dtype": "float32"}
    results["correctness"], failed = check(fmts, shapes)
    if failed:
        print("not timing: the kernel is not bit-identical to the reference", flush=True)
    else:
        results["timing"] = timing(fmts, shapes)
        if args.sweep:
            results["sweep"] = sweep(fmts)
        print()
        print(table(results["timing"]))
    results["wall_s"] = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fakequant.json").write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out / 'fakequant.json'} ({results['wall_s']:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
