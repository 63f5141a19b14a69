"""nmx's weight kernels against the open peers, in one run on one GPU, over M = 1 .. 64 tokens.

    python benchmarks/kernels_peers.py --out DIR [--ms 1,2,4,8,16,32,64] [--budget-s 520] [--cpu-dry-run]

Shapes: the linears of Llama-2-7B (4096x4096, 11008x4096, 4096x11008) and Llama-3-8B (1024x4096 k/v,
14336x4096, 4096x14336), N x K. Implementations, each timed the same way in the same process:

- cuBLAS bf16 (`F.linear`), the baseline every speedup is a ratio to;
- PyTorch's int4 weight-only GEMM (tinygemm: `aten._weight_int4pack_mm`, group 128);
- gemlite (if importable): A16W4 int g128, A16W8 fp8 (channel scales), A16W4 NVFP4 and MXFP4;
- nmx: int4_g128, nvfp4, mxfp4, fp8_e4m3, dense and 2:4, through every path the dispatcher can take:
  the one-token word kernel (`gemv`, a sweep of tile configs with and without prefetching the next
  tile), the tensor-core kernel (`tc`, its default and two other tilings) and `dense` (cuBLAS on the
  decoded weight: the cuBLAS time).

Correctness first: every nmx config that is timed was first run on a fresh x with a NaN-poisoned
output and compared with its CPU twin (`linear_reference`); peers are compared with their own
dequantized weight in float64. A failing config is reported and not timed.

Timing (nmx.kernels.timing.graph_time_over): one CUDA graph calls the op on distinct weight copies
adding up to more than 4x the L2, so every call streams its weight from memory; median of 20 replays.
Bandwidth is reported two ways: bytes read (packed weight + scales + metadata + x + y) over the time,
as a fraction of (a) the large-copy bandwidth (1 GiB device-to-device) and (b) a copy of the same
number of bytes timed the same way (what a kernel of that size can reach at all: launch and tail
included).

Output: DIR/kernels_peers.json with every row, and `dispatch`: per (case, shape, M) the fastest
measured path (ties within 0 go to the packed kernels), the table `nmx.kernels.dispatch` reads.
Work is done in priority order and the JSON rewritten after each phase, so a time-out keeps results.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nmx.kernels import linear_reference, pack  # noqa: E402
from nmx.kernels.layout import PackedLinear  # noqa: E402
from nmx.sparsity.masks import nm_mask  # noqa: E402

SHAPES = {"4096x4096": (4096, 4096), "11008x4096": (11008, 4096), "4096x11008": (4096, 11008),
          "1024x4096": (1024, 4096), "14336x4096": (14336, 4096), "4096x14336": (4096, 14336)}
CASES = ["int4_g128", "nvfp4", "mxfp4", "fp8_e4m3", "2:4+int4_g128", "2:4+nvfp4", "2:4+mxfp4"]
ROTATE_BYTES = 256 << 20
# one-token kernel configs swept: (BLOCK_N, W, num_warps, PREFETCH); SPLIT_K 1, num_stages 1
GEMV_CONFIGS = [(8, 256, 4, False), (8, 256, 4, True), (4, 256, 2, True), (8, 128, 4, True), (8, 128, 2, True),
                (16, 128, 4, True), (16, 64, 4, True), (4, 128, 2, True), (16, 256, 8, True), (32, 64, 4, True)]
TC_VARIANTS = [(32, 128, 4, 4)]  # (BLOCK_N, BLOCK_K, warps, stages) beside the default


def now() -> float:
    return time.monotonic()


class Budget:
    def __init__(self, seconds: float):
        self.end = now() + seconds

    def left(self) -> float:
        return self.end - now()


def make_weight(n: int, k: int, sparse: bool, device: str, seed: int) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    w = torch.randn(n, k, device=device, generator=g) / math.sqrt(k)
    return w * nm_mask(w.abs(), 2, 4) if sparse else w


def nmx_pack(case: str, w: torch.Tensor) -> PackedLinear:
    pattern, _, fmt = case.rpartition("+")
    return pack(w, fmt, pattern or None)


def rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def clones(obj, nbytes: int) -> list:
    r = max(2, math.ceil(ROTATE_BYTES / max(nbytes, 1)))
    if isinstance(obj, PackedLinear):
        cl = lambda t: None if t is None else t.clone()  # noqa: E731
        return [obj] + [PackedLinear(obj.n, obj.k, obj.format, obj.sparse24, cl(obj.values), cl(obj.meta),
                                     cl(obj.scales), obj.tensor_scale, obj.block) for _ in range(r - 1)]
    if isinstance(obj, torch.Tensor):
        return [obj] + [obj.clone() for _ in range(r - 1)]
    if isinstance(obj, tuple):  # tensors that travel together
        return [obj] + [tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in obj) for _ in range(r - 1)]
    return [obj] + [copy.deepcopy(obj) for _ in range(r - 1)]


# ---------------------------------------------------------------------------------------------- peers
def tinygemm(w: torch.Tensor, group: int = 128):
    """(packed weight, scales_and_zeros, dequantized weight) for aten._weight_int4pack_mm: symmetric
    int4 codes q in 0..15 with zero 0, w ~ (q - 8) * scale. The nibble order PyTorch expects is found
    by trying both and keeping the one that reproduces the dequantized weight."""
    n, k = w.shape
    wg = w.float().reshape(n, k // group, group)
    scale = (wg.abs().amax(-1, keepdim=True) / 7).clamp_min(1e-8)
    q = (torch.round(wg / scale).clamp(-8, 7) + 8).to(torch.uint8).reshape(n, k)
    deq = ((q.float().reshape(n, k // group, group) - 8) * scale).reshape(n, k).to(torch.bfloat16)
    sz = torch.stack([scale.reshape(n, k // group).t(), torch.zeros(k // group, n, device=w.device)], -1)
    sz = sz.to(torch.bfloat16).contiguous()
    x = torch.randn(3, k, device=w.device, dtype=torch.bfloat16)
    best = None
    for hi_first in (True, False):
        a, b = (q[:, ::2], q[:, 1::2]) if hi_first else (q[:, 1::2], q[:, ::2])
        packed = torch.ops.aten._convert_weight_to_int4pack((a << 4 | b).contiguous(), 8)
        err = rel(torch.ops.aten._weight_int4pack_mm(x, packed, group, sz), x.float() @ deq.float().T)
        if best is None or err < best[0]:
            best = (err, packed)
    return best[1], sz, deq, best[0]


def gemlite_layers(w: torch.Tensor) -> dict:
    """gemlite layers by name -> (layer, dequantized reference weight or None, error string)."""
    out = {}
    try:
        from gemlite.helper import A16W4_MXFP, A16W4_NVFP, A16W8_FP8, A16Wn
    except Exception as err:  # noqa: BLE001
        return {"gemlite": (None, None, f"import: {type(err).__name__}: {err}")}
    n, k = w.shape
    dev = w.device
    try:
        g = 128
        wg = w.float().reshape(n, k // g, g)
        s = (wg.abs().amax(-1, keepdim=True) / 7).clamp_min(1e-8)
        q = (torch.round(wg / s).clamp(-8, 7) + 8).to(torch.uint8).reshape(n, k)
        deq = ((q.float().reshape(n, k // g, g) - 8) * s).reshape(n, k)
        layer = A16Wn(device=dev, dtype=torch.bfloat16).from_weights(
            q, s.reshape(n, k // g).to(torch.bfloat16), torch.full((n, k // g), 8.0, device=dev,
                                                                   dtype=torch.bfloat16), 4, g)
        out["gemlite_int4_g128"] = (layer, deq, None)
    except Exception as err:  # noqa: BLE001
        out["gemlite_int4_g128"] = (None, None, f"{type(err).__name__}: {str(err)[:200]}")
    for name, cls in (("gemlite_fp8", A16W8_FP8), ("gemlite_nvfp4", A16W4_NVFP), ("gemlite_mxfp4", A16W4_MXFP)):
        try:
            lin = torch.nn.Linear(k, n, bias=False, device=dev, dtype=torch.bfloat16)
            lin.weight.data.copy_(w)
            proc = cls(device=dev, dtype=torch.bfloat16)
            layer = proc.from_linear(lin) if name != "gemlite_fp8" else proc.from_weights(w.to(torch.bfloat16))
            out[name] = (layer, None, None)
        except Exception as err:  # noqa: BLE001
            out[name] = (None, None, f"{type(err).__name__}: {str(err)[:200]}")
    return out


# ---------------------------------------------------------------------------------------------- timing
def gtime(fn, items) -> float:
    from nmx.kernels.timing import graph_time_over

    return graph_time_over(fn, items)


def copy_time(nbytes: int) -> float:
    """Seconds to copy nbytes device to device, timed as the kernels are (graph over rotating buffers)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    srcs = clones(src, nbytes)
    return gtime(lambda s: dst.copy_(s), srcs)


def gemv_configs(case: str) -> list[dict]:
    out = []
    for bn, w, warps, pf in GEMV_CONFIGS:
        out.append({"BLOCK_N": bn, "W": w, "SPLIT_K": 1, "num_warps": warps, "num_stages": 1, "PREFETCH": pf})
    return out


def tc_configs(m: int, p: PackedLinear) -> list[dict]:
    from nmx.kernels.triton_tc import default_config, split_k

    base = default_config(m, p)
    out = [base]
    for bn, bk, warps, stages in TC_VARIANTS:
        if (p.element == "int4" and p.block % bk) or p.k % bk:
            continue
        split = split_k(math.ceil(p.n / bn) * math.ceil(m / base["BLOCK_M"]), p.k // bk)
        out.append({**base, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split, "num_warps": warps, "num_stages": stages})
    return out


def packed_bytes(p: PackedLinear) -> int:
    return p.nbytes


# ---------------------------------------------------------------------------------------------- phases
def phase_copy(res: dict) -> None:
    from nmx.kernels.decode_bench import copy_bandwidth

    res["copy_bw_Bps"] = copy_bandwidth()
    print(f"copy bandwidth {res['copy_bw_Bps'] / 1e12:.3f} TB/s", flush=True)


def phase_baselines(res: dict, shapes: dict, ms: list[int], budget: Budget) -> None:
    rows = res.setdefault("peers", [])
    for sname, (n, k) in shapes.items():
        if budget.left() < 60:
            print("budget: peers stopped", flush=True)
            return
        w = make_weight(n, k, False, "cuda", seed=11).to(torch.bfloat16)
        res.setdefault("copy_same_bytes", {})
        for nbytes_name, nbytes in (("bf16", n * k * 2), ("4bit", n * k // 2)):
            res["copy_same_bytes"][f"{sname}:{nbytes_name}"] = copy_time(nbytes)
        try:
            tg, sz, deq, tg_err = tinygemm(w)
        except Exception as e:  # noqa: BLE001
            tg = None
            rows.append({"shape": sname, "impl": "tinygemm_int4_g128", "error": f"pack: {str(e)[:200]}"})
        wc = clones(w, n * k * 2)
        tgc = clones((tg, sz), tg.numel() * tg.element_size()) if tg is not None else None
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            t_cublas = gtime(lambda ww: F.linear(x, ww), wc)
            rows.append({"shape": sname, "m": m, "impl": "cublas_bf16", "time_s": t_cublas})
            try:
                if tg is None:
                    raise RuntimeError('not packed')
                y = torch.ops.aten._weight_int4pack_mm(x, tg, 128, sz)
                err = rel(y, x.float() @ deq.float().T)
                t = gtime(lambda a: torch.ops.aten._weight_int4pack_mm(x, a[0], 128, a[1]), tgc)
                rows.append({"shape": sname, "m": m, "impl": "tinygemm_int4_g128", "time_s": t,
                             "speedup": t_cublas / t, "rel_err": err})
            except Exception as e:  # noqa: BLE001
                rows.append({"shape": sname, "m": m, "impl": "tinygemm_int4_g128", "error": str(e)[:200]})
            line = " ".join(f"{r['impl']}={r.get('speedup', 1.0):.2f}x" if "time_s" in r else f"{r['impl']}=ERR"
                            for r in rows if r.get("shape") == sname and r.get("m") == m)
            print(f"{sname} m={m} cublas {t_cublas * 1e6:.1f}us: {line}", flush=True)
        del wc, tgc
        write(res)
        torch.cuda.empty_cache()


def phase_gemlite(res: dict, shapes: dict, ms: list[int], budget: Budget) -> None:
    """gemlite's layers beside cuBLAS (timed again here: this phase runs in its own process, so that its
    autotuning can be cut off by a time limit without losing the rest)."""
    rows = res.setdefault("gemlite", [])
    for sname, (n, k) in shapes.items():
        w = make_weight(n, k, False, "cuda", seed=11).to(torch.bfloat16)
        gl = gemlite_layers(w)
        wc = clones(w, n * k * 2)
        for name, (layer, ref_w, err) in gl.items():
            if err:
                rows.append({"shape": sname, "impl": name, "error": err})
                print(f"{sname} {name}: {err}", flush=True)
                continue
            copies = clones(layer, n * k // 2)
            for m in ms:
                if budget.left() < 10:
                    print("budget: gemlite stopped", flush=True)
                    return
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                try:
                    t_cublas = gtime(lambda ww: F.linear(x, ww), wc)
                    y = layer(x)
                    ref = x.float() @ (ref_w if ref_w is not None else w).float().T
                    t = gtime(lambda L: L(x), copies)
                    rows.append({"shape": sname, "m": m, "impl": name, "time_s": t, "cublas_s": t_cublas,
                                 "speedup": t_cublas / t, "rel_err": rel(y, ref),
                                 "ref": "own dequantized weight" if ref_w is not None else "unquantized weight"})
                    print(f"{sname} m={m} {name}: {t * 1e6:.2f}us, {t_cublas / t:.2f}x cuBLAS, rel err "
                          f"{rows[-1]['rel_err']:.1e}", flush=True)
                except Exception as e:  # noqa: BLE001
                    rows.append({"shape": sname, "m": m, "impl": name, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                    print(f"{sname} m={m} {name}: {rows[-1]['error']}", flush=True)
                write(res, "kernels_peers_gemlite.json")
            del copies
        del wc
        torch.cuda.empty_cache()


def phase_verify_dispatch(res: dict, shapes: dict, ms: list[int], budget: Budget, cases: list[str]) -> None:
    """`nmx.kernels.linear` (the dispatcher, measured table installed) against cuBLAS bf16 on the same
    weights, in the same process: the speedup at every (shape, case, M), and the worst slowdown."""
    from nmx.kernels import linear
    from nmx.kernels.dispatch import plan

    rows = res.setdefault("verify_dispatch", [])
    for sname, (n, k) in shapes.items():
        w = make_weight(n, k, False, "cuda", seed=11).to(torch.bfloat16)
        wc = clones(w, n * k * 2)
        for case in cases:
            if budget.left() < 15:
                print("budget: verify stopped", flush=True)
                return
            p = nmx_pack(case, make_weight(n, k, case.startswith("2:4"), "cuda", seed=5))
            copies = clones(p, packed_bytes(p))
            line = []
            for m in ms:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                try:
                    backend, _ = plan(x, p)
                    err = rel(linear(x, p).float(), linear_reference(x, p).float())
                    t = gtime(lambda q: linear(x, q), copies)
                    tc = gtime(lambda ww: F.linear(x, ww), wc)
                    rows.append({"shape": sname, "case": case, "m": m, "backend": backend, "time_s": t,
                                 "cublas_s": tc, "speedup": tc / t, "rel_err_vs_twin": err})
                    line.append(f"{m}:{tc / t:.2f}{backend[0]}")
                except Exception as e:  # noqa: BLE001
                    rows.append({"shape": sname, "case": case, "m": m, "error": f"{type(e).__name__}: {str(e)[:160]}"})
                    line.append(f"{m}:ERR")
            print(f"verify {sname} {case}: " + " ".join(line), flush=True)
            del copies
            write(res)
        del wc
        torch.cuda.empty_cache()
    ok = [r for r in rows if "speedup" in r]
    if ok:
        worst = min(ok, key=lambda r: r["speedup"])
        res["verify_worst"] = worst
        print(f"verify: worst {worst['speedup']:.3f}x cuBLAS at {worst['shape']} {worst['case']} m={worst['m']} "
              f"({worst['backend']})", flush=True)


def cublas_time(res: dict, sname: str, m: int) -> float | None:
    for r in res.get("peers", []):
        if r.get("shape") == sname and r.get("m") == m and r["impl"] == "cublas_bf16":
            return r["time_s"]
    return None


def check_config(fn, ref: torch.Tensor) -> tuple[bool, float]:
    """Run once (output NaN-poisoned first) and compare with the twin's result `ref`."""
    y = fn()
    err = rel(y.float(), ref)
    return bool(torch.isfinite(y).all()) and err < 1e-2, err


def phase_nmx(res: dict, shapes: dict, ms: list[int], budget: Budget, cases: list[str]) -> None:
    from nmx.kernels.triton_gemv import gemv
    from nmx.kernels.triton_tc import supports, tc_linear

    rows = res.setdefault("nmx", [])
    bad = res.setdefault("failed", [])
    copy_bw = res["copy_bw_Bps"]
    for sname, (n, k) in shapes.items():
        for case in cases:
            if budget.left() < 25:
                print("budget: nmx stopped", flush=True)
                return
            p = nmx_pack(case, make_weight(n, k, case.startswith("2:4"), "cuda", seed=5))
            copies = clones(p, packed_bytes(p))
            for m in ms:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                nbytes = packed_bytes(p) + m * k * 2 + m * n * 2
                ref = linear_reference(x, p).float()  # the twin (same code on any device)
                paths = []
                if m == 1:
                    paths += [("gemv", c) for c in gemv_configs(case)]
                if supports(p) and m >= 2:
                    paths += [("tc", c) for c in tc_configs(m, p)]
                for backend, cfg in paths:
                    if budget.left() < 20:
                        break
                    if backend == "gemv":
                        fn, once = (lambda q, c=cfg: gemv(x, q, c)), (lambda c=cfg: gemv(x, p, c, poison=True))
                    else:
                        fn, once = (lambda q, c=cfg: tc_linear(x, q, c)), (lambda c=cfg: tc_linear(x, p, c, poison=True))
                    try:
                        ok, err = check_config(once, ref)
                        if not ok:
                            bad.append({"shape": sname, "case": case, "m": m, "backend": backend, "config": cfg,
                                        "rel_err": err})
                            print(f"FAIL {sname} {case} m={m} {backend} {cfg}: rel err {err:.2e}", flush=True)
                            continue
                        t = gtime(fn, copies)
                    except Exception as e:  # noqa: BLE001 -- a config can exceed resources
                        bad.append({"shape": sname, "case": case, "m": m, "backend": backend, "config": cfg,
                                    "error": f"{type(e).__name__}: {str(e)[:160]}"})
                        continue
                    t_cublas = cublas_time(res, sname, m)
                    rows.append({"shape": sname, "case": case, "m": m, "backend": backend, "config": cfg,
                                 "time_s": t, "rel_err_vs_twin": err, "bytes": nbytes,
                                 "bw_frac_of_copy": nbytes / t / copy_bw,
                                 "speedup": (t_cublas / t) if t_cublas else None})
                best = min((r for r in rows if r["shape"] == sname and r["case"] == case and r["m"] == m),
                           key=lambda r: r["time_s"], default=None)
                if best:
                    print(f"{sname} {case} m={m}: best {best['backend']} {best['time_s'] * 1e6:.2f}us "
                          f"{best['speedup'] or 0:.2f}x cuBLAS, {best['bw_frac_of_copy']:.0%} of copy bw "
                          f"{ {kk: vv for kk, vv in best['config'].items() if kk not in ('num_stages',)} }", flush=True)
            del copies
            torch.cuda.empty_cache()
            write(res)


def dispatch_table(res: dict) -> dict:
    """Per (case, shape, M): the fastest measured nmx path, or `dense` (cuBLAS on the decoded weight)
    where every nmx path was slower than cuBLAS in this run."""
    entries = []
    keys = {(r["case"], r["shape"], r["m"]) for r in res.get("nmx", [])}
    for case, sname, m in sorted(keys):
        best = min((r for r in res["nmx"] if (r["case"], r["shape"], r["m"]) == (case, sname, m)),
                   key=lambda r: r["time_s"])
        t_cublas = cublas_time(res, sname, m)
        n, k = SHAPES[sname]
        if t_cublas is not None and best["time_s"] > t_cublas:
            entries.append({"case": case, "n": n, "k": k, "m": m, "backend": "dense", "config": None,
                            "time_s": t_cublas, "cublas_s": t_cublas, "best_packed_s": best["time_s"]})
        else:
            entries.append({"case": case, "n": n, "k": k, "m": m, "backend": best["backend"], "config": best["config"],
                            "time_s": best["time_s"], "cublas_s": t_cublas})
    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": __import__("triton").__version__, "date": time.strftime("%Y-%m-%d"), "entries": entries}


def report(path: Path) -> str:
    """Markdown tables from a kernels_peers.json (and kernels_peers_gemlite.json beside it, if there)."""
    d = json.loads(path.read_text())
    gl_path = path.with_name(path.name.replace("kernels_peers", "kernels_peers_gemlite"))
    gl = json.loads(gl_path.read_text()).get("gemlite", []) if gl_path.is_file() and gl_path != path else []
    peers = {(r["shape"], r["m"], r["impl"]): r["time_s"] for r in d.get("peers", []) if "time_s" in r}
    best: dict = {}
    for r in d.get("nmx", []):
        key = (r["shape"], r["case"], r["m"])
        if key not in best or r["time_s"] < best[key]["time_s"]:
            best[key] = r
    cases = list(dict.fromkeys(r["case"] for r in d.get("nmx", [])))
    shapes = list(dict.fromkeys(r["shape"] for r in d.get("nmx", [])))
    bw = d["copy_bw_Bps"]
    out = [f"{d['device']}, torch {d['torch']}, triton {d['triton']}, {d['date']}; copy bandwidth "
           f"{bw / 1e9:.0f} GB/s. Speedup over cuBLAS bf16 in the same run (g: one-token kernel, t: tensor-core "
           "kernel); in brackets at M = 1: bytes read / time as a share of the copy bandwidth.", ""]
    out.append("| shape | M | cuBLAS bf16 | tinygemm int4 | " + " | ".join(f"nmx {c}" for c in cases) + " |")
    out.append("|---" * (4 + len(cases)) + "|")
    for sname in shapes:
        for m in d["ms"]:
            c = peers.get((sname, m, "cublas_bf16"))
            if c is None:
                continue
            tg = peers.get((sname, m, "tinygemm_int4_g128"))
            cells = []
            for case in cases:
                b = best.get((sname, case, m))
                if b is None:
                    cells.append("-")
                    continue
                cell = f"{c / b['time_s']:.2f}x {b['backend'][0]}"
                if m == 1:
                    cell += f" ({b['bytes'] / b['time_s'] / bw:.0%})"
                cells.append(cell)
            out.append(f"| {sname} | {m} | {c * 1e6:.1f} us | {f'{c / tg:.2f}x' if tg else '-'} | " + " | ".join(cells) + " |")
    if gl:
        out += ["", "gemlite (its own process; cuBLAS timed again beside it):", "",
                "| shape | M | impl | speedup over cuBLAS | rel. error |", "|---|---|---|---|---|"]
        for r in gl:
            if "speedup" in r:
                out.append(f"| {r['shape']} | {r['m']} | {r['impl']} | {r['speedup']:.2f}x | {r['rel_err']:.1e} ({r['ref']}) |")
            else:
                out.append(f"| {r['shape']} | {r.get('m', '-')} | {r['impl']} | error: {r['error'][:60]} | |")
    return "\n".join(out)


OUT: Path | None = None


def write(res: dict, name: str | None = None) -> None:
    name = name or ("verify_dispatch.json" if "verify_dispatch" in res else "kernels_peers.json")
    if OUT is None:
        return
    tmp = OUT / (name + ".tmp")
    tmp.write_text(json.dumps(res, indent=1, default=str))
    tmp.replace(OUT / name)


def dry_run() -> None:
    """CPU: the peers' and nmx's packing and the configs' validity, no timing (TRITON_INTERPRET=1)."""
    w = make_weight(256, 512, False, "cpu", 1)
    p = nmx_pack("int4_g128", w)
    x = torch.randn(1, 512, dtype=torch.bfloat16)
    from nmx.kernels.triton_gemv import gemv

    for cfg in gemv_configs("int4_g128")[:3]:
        cfg = {**cfg, "W": 16}
        ok, err = check_config(lambda: gemv(x, p, cfg, poison=True), linear_reference(x, p).float())
        print("gemv", cfg, ok, f"{err:.2e}")
        assert ok
    print("dry run ok")


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--ms", default="1,2,4,8,16,32,64")
    ap.add_argument("--budget-s", type=float, default=520)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--cpu-dry-run", action="store_true")
    ap.add_argument("--gemlite", action="store_true", help="only the gemlite phase (run it in its own process)")
    ap.add_argument("--verify-dispatch", action="store_true", help="only: the dispatcher against cuBLAS")
    ap.add_argument("--report", type=Path, help="print markdown tables from a kernels_peers.json and exit")
    a = ap.parse_args()
    if a.cpu_dry_run:
        dry_run()
        return
    if a.report:
        print(report(a.report))
        return
    budget = Budget(a.budget_s)
    OUT = a.out
    OUT.mkdir(parents=True, exist_ok=True)
    ms = [int(v) for v in a.ms.split(",")]
    shapes = {s: SHAPES[s] for s in a.shapes.split(",")}
    res: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                 "triton": __import__("triton").__version__, "ms": ms, "date": time.strftime("%Y-%m-%d %H:%M")}
    torch.backends.cuda.matmul.allow_tf32 = False
    if a.gemlite:
        phase_gemlite(res, shapes, ms, budget)
        write(res, "kernels_peers_gemlite.json")
        return
    if a.verify_dispatch:
        phase_verify_dispatch(res, shapes, ms, budget, a.cases.split(","))
        write(res, "verify_dispatch.json")
        return
    for name, fn in (("copy", lambda: phase_copy(res)), ("baselines", lambda: phase_baselines(res, shapes, ms, budget)),
                     ("nmx", lambda: phase_nmx(res, shapes, ms, budget, a.cases.split(",")))):
        t0 = now()
        try:
            fn()
        except Exception:  # noqa: BLE001 -- keep what the other phases measured
            res.setdefault("phase_errors", {})[name] = traceback.format_exc()[-3000:]
            print(f"phase {name} failed:\n{res['phase_errors'][name]}", flush=True)
        res.setdefault("phase_s", {})[name] = now() - t0
        write(res)
    res["dispatch"] = dispatch_table(res)
    write(res)
    print(f"wrote {OUT / 'kernels_peers.json'}; phases {res['phase_s']}", flush=True)


if __name__ == "__main__":
    main()
