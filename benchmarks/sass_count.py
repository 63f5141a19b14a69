"""Count the machine instructions per weight of nmx's one-token kernel, offline (no GPU).

    python benchmarks/sass_count.py nvfp4 [2:4] [--block-n 8] [--w 256] [--warps 4] [--stages 2] [--prefetch]
    python benchmarks/sass_count.py int4_g128 --tc --block-n 64 --w 128 [--block-m 16]   (triton_tc.py)

Compiles `triton_gemv._gemv1_kernel` for sm_90 with the ptxas and nvdisasm that ship inside the triton
wheel (so it runs on a CPU-only machine), finds the main loop (the longest backward branch) and prints
its instructions per dense weight and the most frequent opcodes. Shared-memory traffic (STS, LDS,
BAR) in the loop means a layout conversion; LDL/STL means spills. This is how the decode in
triton_gemv.py was tuned between the few GPU runs a session gets.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nmx.kernels import triton_gemv as tg  # noqa: E402
from nmx.kernels.layout import kernel_format  # noqa: E402

DIVISIBLE = ("x32_ptr", "vals_ptr", "meta_ptr", "scales_ptr", "y_ptr", "N", "KW", "stride_w", "stride_meta", "stride_s")


def compile_gemv(fmt: str | None, sparse: bool, block_n: int, w: int, warps: int, stages: int,
                 prefetch: bool = False, fold_sign: bool = True, x_bcast: bool = False,
                 prmt_gather: bool = False, int4_fma: bool = False):
    element, scale = kernel_format(fmt)
    bits = tg.ELEMENT_BITS[element]
    block = {"mxfp4": 32, "mxfp8_e4m3": 32, "nvfp4": 16}.get(fmt or "", 0)
    if fmt and fmt.startswith("int4_g"):
        block = int(fmt[6:])
    sig = {"x32_ptr": "*i32", "vals_ptr": "*i32", "meta_ptr": "*i16" if sparse and bits == 4 else "*u8",
           "scales_ptr": "*fp16" if scale == "fp16" else "*u8", "y_ptr": "*bf16", "tensor_scale": "fp32",
           "N": "i32", "KW": "i32", "stride_w": "i32", "stride_meta": "i32", "stride_s": "i32", "zero": "i32"}
    const = dict(ELEMENT=tg.ELEMENT_IDS[element], SCALE=tg.SCALE_IDS[scale], BLOCK=block or 1, SPARSE=sparse,
                 BITS=bits, BLOCK_N=block_n, W=w, SPLIT_K=1, TILES_PER_SPLIT=8, EVEN=True, PREFETCH=prefetch,
                 FOLD_SIGN=fold_sign, X_BCAST=x_bcast, PRMT_GATHER=prmt_gather, INTERP=False,
                 INT4_FMA=int4_fma)
    sig.update({k: "constexpr" for k in const})
    names = list(tg._gemv1_kernel.arg_names)
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in DIVISIBLE}
    src = ASTSource(fn=tg._gemv1_kernel, signature=sig, constexprs=const, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})


def compile_tc(fmt: str, block_m: int, block_n: int, block_k: int, warps: int, stages: int, sparse: bool = False):
    """The tensor-core kernel (triton_tc.py) for a 4/8-bit format, dense or 2:4."""
    from nmx.kernels import triton_tc as tc

    element, scale = kernel_format(fmt)
    block = {"mxfp4": 32, "mxfp8_e4m3": 32, "nvfp4": 16}.get(fmt, 1)
    if fmt.startswith("int4_g"):
        block = int(fmt[6:])
    bits = tg.ELEMENT_BITS[element]
    sig = {"x_ptr": "*bf16", "vals_ptr": "*i32", "meta_ptr": "*i16" if bits == 4 else "*u8",
           "scales_ptr": "*fp16" if scale == "fp16" else "*u8", "y_ptr": "*bf16", "ws_ptr": "*fp32",
           "count_ptr": "*i32", "tensor_scale": "fp32", "M": "i32", "N": "i32", "stride_xm": "i32",
           "stride_ym": "i32", "stride_w": "i32", "stride_meta": "i32", "stride_s": "i32", "zero": "i32"}
    const = dict(ELEMENT=tg.ELEMENT_IDS[element], SCALE=tg.SCALE_IDS[scale], BLOCK=block,
                 BITS=bits, SPARSE=sparse, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=1,
                 TILES_PER_SPLIT=8, BF16_DOT=True)
    sig.update({k: "constexpr" for k in const})
    names = list(tc._tc_kernel.arg_names)
    attrs = {(names.index(a),): [["tt.divisibility", 16]]
             for a in ("x_ptr", "vals_ptr", "meta_ptr", "scales_ptr", "y_ptr", "N", "stride_xm", "stride_ym",
                       "stride_w", "stride_meta", "stride_s")}
    src = ASTSource(fn=tc._tc_kernel, signature=sig, constexprs=const, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})


def main_loop(cubin: bytes) -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        Path(path).write_bytes(cubin)
        nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
        text = subprocess.run([nvdisasm, "-c", path], capture_output=True, text=True, check=True).stdout
    ins = []
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"/\*[0-9a-f]+\*/\s+(.*?);", line)
        if m:
            ins.append(m.group(1))
        elif re.match(r"\.L_x_\d+:", line):
            ins.append("LABEL " + line)
    best: list[str] = []
    for i, s in enumerate(ins):
        m = re.search(r"BRA\s+`?\(?\.L_x_(\d+)", s)
        label = f"LABEL .L_x_{m.group(1)}:" if m else None
        if label and label in ins[:i] and i - ins.index(label) > len(best):
            best = ins[ins.index(label) + 1:i + 1]
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("format", help="nmx weight format (bf16 for plain values)")
    ap.add_argument("pattern", nargs="?", default=None, help="2:4 or nothing")
    ap.add_argument("--block-n", type=int, default=8)
    ap.add_argument("--w", type=int, default=256)
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--prefetch", action="store_true", help="the one-token kernel's PREFETCH config")
    ap.add_argument("--no-fold-sign", action="store_true",
                    help="the older e2m1/e4m3 decode (a multiply by +-2^126 / 2^120 per weight)")
    ap.add_argument("--x-bcast", action="store_true",
                    help="x loaded as [BLOCK_N, W], in the weights' layout (the kernel's X_BCAST; off by default)")
    ap.add_argument("--prmt", action="store_true", help="2:4: gather the kept x with one byte permute a group")
    ap.add_argument("--int4-fma", action="store_true", help="int4: one logic op and one FMA a weight")
    ap.add_argument("--dump", default=None, help="write the loop's instructions here")
    ap.add_argument("--tc", action="store_true", help="the tensor-core kernel (triton_tc.py); --w is then BLOCK_K")
    ap.add_argument("--block-m", type=int, default=16, help="--tc only")
    args = ap.parse_args()
    fmt = None if args.format == "bf16" else args.format
    sparse = args.pattern == "2:4"
    if args.tc:
        k = compile_tc(fmt, args.block_m, args.block_n, args.w, args.warps, args.stages, sparse)
    else:
        k = compile_gemv(fmt, sparse, args.block_n, args.w, args.warps, args.stages, args.prefetch,
                         not args.no_fold_sign, args.x_bcast, args.prmt,
                         args.int4_fma)
    body = main_loop(k.asm["cubin"])
    ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", i).split()[0].split(".")[0] for i in body)
    element = kernel_format(fmt)[0]
    if args.tc:
        weights = args.block_n * args.w
    else:
        weights = args.block_n * args.w * (32 // tg.ELEMENT_BITS[element]) * (2 if sparse else 1)
    print(f"{args.format}{' 2:4' if sparse else ''}: {sum(ops.values())} instructions per thread per tile, "
          f"{sum(ops.values()) * 32 * args.warps / weights:.2f} per dense weight; {dict(ops.most_common(12))}")
    if args.dump:
        Path(args.dump).write_text("\n".join(body) + "\n")


if __name__ == "__main__":
    main()
