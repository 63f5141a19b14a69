"""Four changes to the one-token kernel, each against the way before, in one run on one GPU (M = 1).

    python benchmarks/gemv_variants.py --out DIR [--shapes 4096x4096,...] [--cases nvfp4,...] [--budget-s 200]

FOLD_SIGN (e2m1 / e4m3 weights). False is the older decode: each weight is its value times 2^-126
(2^-120 for e4m3) and one multiply by +-2^126 restores value and sign. FOLD_SIGN True (the default now)
or-s the sign bit in and leaves the 2^-126 in place: x comes in times 2^96 (2^90) and the row sums go out
times 2^30, so a multiply per weight is gone (sass_count.py: nvfp4 7.39 -> 6.52 instructions per weight).

X_BCAST (every format; off by default until timed). False is the older x load: a [1, W] tile that the
compiler moves into the weights' register layout through shared memory (~18 barriers a tile); True loads
it as [BLOCK_N, W] (one address down each column) straight into that layout: about the same instruction
count for dense weights, no barrier (for 2:4 with selects it costs instructions).

PRMT_GATHER (2:4). False selects each kept weight's x out of its group's four with compares and selects
(~11 instructions a group); True takes both kept x of a group with one byte permute (PTX prmt), its
selector looked up for all groups of a word at once (sass_count.py: 2:4+int4 4.58 -> 3.80 instructions per
dense weight, below dense int4's 4.36).

INT4_FMA (dense int4). False decodes each weight with a logic op and a subtract; True reads each nibble where
one of four byte moves of the word puts it, as 1 + q/128 or 16 + q/128, and takes the constant parts off once
a word with a row-independent x sum (sass_count.py: 4.34 -> 3.83 instructions per weight; word sums round
within ~2^-13, outputs within 1 bf16 ulp of the default).

Variants per case: "old" (FOLD_SIGN False, e2m1 / e4m3 only), "new" (the defaults), "x_bcast" (the
defaults with X_BCAST), for 2:4 "prmt" and "prmt_bcast" (PRMT_GATHER with x as [1, W] / as
[BLOCK_N, W]), for dense int4 "int4_fma" and "int4_fma_bcast".

Every variant runs the three one-token tilings that won most often in kernels_peers_h100.json, each first
checked on a NaN-poisoned output against the CPU twin, then timed the kernels_peers way (one CUDA graph
over weight copies adding up to more than 4x the L2, median of 20 replays), beside cuBLAS bf16 on the
same shape.
Output: DIR/gemv_variants.json; the summary (best tiling per case and variant) is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import kernels_peers as kp  # noqa: E402

from nmx.kernels import linear_reference  # noqa: E402
from nmx.kernels.triton_gemv import gemv  # noqa: E402

CASES = ["2:4+int4_g128", "int4_g128", "nvfp4", "2:4+nvfp4", "mxfp4", "fp8_e4m3", "2:4+mxfp4"]
SHAPES = ["4096x4096", "11008x4096", "4096x11008", "14336x4096"]
# the tilings that won most often in kernels_peers_h100.json: (BLOCK_N, W, num_warps, PREFETCH)
TILINGS = [(8, 256, 4, True), (4, 256, 2, True), (16, 128, 4, True)]


def run(out: Path, shapes: list[str], cases: list[str], budget_s: float) -> dict:
    from nmx.kernels.decode_bench import copy_bandwidth

    end = time.monotonic() + budget_s
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%F %T"),
           "copy_bw_Bps": copy_bandwidth(), "rows": []}
    path = out / "gemv_variants.json"
    for sname in shapes:
        n, k = kp.SHAPES[sname]
        w = kp.make_weight(n, k, False, "cuda", seed=11).to(torch.bfloat16)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        t_cublas = kp.gtime(lambda ww, x=x: F.linear(x, ww), kp.clones(w, n * k * 2))
        res["rows"].append({"shape": sname, "impl": "cublas_bf16", "time_s": t_cublas})
        for case in cases:
            if time.monotonic() > end:
                print("budget: stopped", flush=True)
                path.write_text(json.dumps(res, indent=1))
                return res
            p = kp.nmx_pack(case, kp.make_weight(n, k, case.startswith("2:4"), "cuda", seed=5))
            copies = kp.clones(p, p.nbytes)
            best = {}
            dense = not case.startswith("2:4")
            tiny = case.rpartition("+")[2] != "int4_g128"
            variants = ({"old": {"FOLD_SIGN": False}} if tiny else {})
            variants.update({"new": {}, "x_bcast": {"X_BCAST": True}})
            if not dense:
                variants.update({"prmt": {"PRMT_GATHER": True}, "prmt_bcast": {"PRMT_GATHER": True, "X_BCAST": True}})
            elif not tiny:
                variants.update({"int4_fma": {"INT4_FMA": True}, "int4_fma_bcast": {"INT4_FMA": True, "X_BCAST": True}})
            for name, extra in variants.items():
                for bn, ww, warps, pf in TILINGS:
                    cfg = {"BLOCK_N": bn, "W": ww, "SPLIT_K": 1, "num_warps": warps, "num_stages": 1,
                           "PREFETCH": pf, **extra}
                    xf = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
                    try:
                        err = kp.rel(gemv(xf, p, cfg, poison=True).float(), linear_reference(xf, p).float())
                        if not err < 1e-2:
                            raise ValueError(f"twin rel err {err:.2e}")
                        t = kp.gtime(lambda q, x=x, cfg=cfg: gemv(x, q, cfg), copies)
                    except Exception as e:  # noqa: BLE001
                        res["rows"].append({"shape": sname, "case": case, "variant": name, "config": cfg,
                                            "error": f"{type(e).__name__}: {str(e)[:160]}"})
                        continue
                    bw = (p.nbytes + 4 * k) / t / res["copy_bw_Bps"]
                    res["rows"].append({"shape": sname, "case": case, "variant": name, "config": cfg, "time_s": t,
                                        "rel_err": err, "speedup": t_cublas / t, "copy_bw_frac": bw})
                    if name not in best or t < best[name][0]:
                        best[name] = (t, bw)
            line = "  ".join(f"{name} {b[0] * 1e6:.2f}us {t_cublas / b[0]:.2f}x ({b[1]:.0%})"
                             for name, b in best.items())
            print(f"{sname} {case}: cublas {t_cublas * 1e6:.1f}us  {line}", flush=True)
            del copies
            path.write_text(json.dumps(res, indent=1))
        torch.cuda.empty_cache()
    path.write_text(json.dumps(res, indent=1))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--budget-s", type=float, default=200)
    a = ap.parse_args(argv)
    shapes = a.shapes.split(",")
    cases = a.cases.split(",")
    bad = [s for s in shapes if s not in kp.SHAPES] + [c for c in cases if c.rpartition("+")[2] not in
                                                         ("int4_g128", "nvfp4", "mxfp4", "fp8_e4m3")]
    if bad:
        print(f"gemv_variants: unknown shape or case {', '.join(bad)}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gemv_variants: needs a CUDA GPU", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    run(a.out, shapes, cases, a.budget_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
