"""A real training step of Llama-2-7B-shaped MLP linears: dense bf16 against 2:4 through PyTorch's
semi-structured path, timed side by side in one run.

    python benchmarks/train_step_gpu.py --out benchmarks/results/train_step_h100.json        # on a GPU
    python benchmarks/train_step_gpu.py --dry-run --out /tmp/train_step_dry.json             # on a CPU

The linears: gate_proj and up_proj (4096 -> 11008) and down_proj (11008 -> 4096), W [out, in], over
T tokens (default 4096 and 8192). Each linear's step is its three GEMMs:

    forward       Y  = X · Wᵀ     dense: F.linear(X, W)        2:4: F.linear(X, W_sp)     W_sp  = W (2:4 along in)
    input grad    dX = dY · W     dense: dY @ W                2:4: F.linear(dY, Wt_sp)   Wt_sp = Wᵀ (2:4 along out)
    weight grad   dW = dYᵀ · X    dense in both runs: its operands are activations, and the optimizer
                                  needs the dense gradient -- it cannot be 2:4-sparse in the weight

So two of the three GEMMs are sparse, which needs a *transposable* mask (2:4 along both dims of W,
the `transposable` mask kind of nmx.hw.training): the mask here is a fixed 4x4 tile with two ones
in every row and every column, tiled over W (timing does not depend on which two of four are kept).
The sparse step also pays packing: after each optimizer update the weight is compressed again, once
as W and once as Wᵀ (`pack_ms`, timed separately and added to `step_with_pack_ms`).

Timing: CUDA events around each repeat; in every repeat the dense step and then the sparse step
run back to back (side by side, the same clocks and the same thermal state); the median over
repeats is reported, per GEMM and for the whole step. With --graphs (default on) each step is also
captured into a CUDA graph and replayed, which removes host costs (the semi-structured path's
per-call setup); a capture that fails is recorded, not fatal. Correctness: the sparse forward and
input-gradient results against the dense matmul with the masked weight (max |diff| / max |ref|).

Fails soft: if the semi-structured path is unsupported (no sm80+, no cuSPARSELt and no CUTLASS
kernels, a torch without torch.sparse.to_sparse_semi_structured), the error string is recorded and
the dense step is still timed. --dry-run (CPU): the same shapes and logic with the sparse GEMMs done
as dense matmuls with the masked weight, at a few tokens, no timing -- it checks shapes, the mask
(2:4 along both dims) and the bookkeeping of the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

LINEARS = {"gate_proj": (11008, 4096), "up_proj": (11008, 4096), "down_proj": (4096, 11008)}  # (out, in)
TILE = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]], dtype=torch.bool)


def transposable_mask(out: int, inp: int, device: Any) -> torch.Tensor:
    """A 2:4 mask that is 2:4 along both dims: TILE (two ones per row and per column) tiled."""
    assert out % 4 == 0 and inp % 4 == 0, (out, inp)
    return TILE.to(device).repeat(out // 4, inp // 4)


def check_24(mask: torch.Tensor) -> None:
    rows = mask.reshape(mask.shape[0], -1, 4).sum(-1)
    cols = mask.t().reshape(mask.shape[1], -1, 4).sum(-1)
    assert bool((rows == 2).all()) and bool((cols == 2).all()), "mask is not 2:4 along both dims"


def sparse_backend(name: str) -> str:
    """Pick the semi-structured backend: cusparselt when available (or asked), else CUTLASS."""
    from torch.sparse import SparseSemiStructuredTensor

    has_lt = bool(getattr(torch.backends, "cusparselt", None) and torch.backends.cusparselt.is_available())
    if name == "auto":
        name = "cusparselt" if has_lt else "cutlass"
    if name == "cusparselt" and not has_lt:
        raise RuntimeError("cuSPARSELt is not available in this torch build; use --backend cutlass")
    SparseSemiStructuredTensor._FORCE_CUTLASS = name == "cutlass"
    return name


def make_pack(dry_run: bool) -> Callable[[torch.Tensor], Any]:
    if dry_run:
        return lambda w: w  # the "sparse" GEMMs are dense matmuls with the masked weight
    from torch.sparse import to_sparse_semi_structured

    return to_sparse_semi_structured


class Timer:
    """Milliseconds of fn() by CUDA events (None without CUDA: a dry run is not timed)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def __call__(self, fn: Callable[[], Any]) -> float | None:
        if not self.cuda:
            fn()
            return None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)


def median(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30))


def capture(fn: Callable[[], Any]) -> Callable[[], Any]:
    """fn captured into a CUDA graph; returns the replay."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def bench_linear(name: str, out: int, inp: int, tokens: int, args: argparse.Namespace, device: str,
                 dtype: torch.dtype) -> dict[str, Any]:
    cuda = device == "cuda"
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, inp, device=device, dtype=dtype, generator=gen)
    dy = torch.randn(tokens, out, device=device, dtype=dtype, generator=gen)
    w = torch.randn(out, inp, device=device, dtype=dtype, generator=gen) / inp ** 0.5
    mask = transposable_mask(out, inp, device)
    check_24(mask)
    wm = w * mask  # the masked weight, dense storage
    rec: dict[str, Any] = {"linear": name, "out": out, "in": inp, "tokens": tokens, "dtype": str(dtype),
                           "sparse_gemms": ["forward X·Wᵀ (W 2:4 along in)", "input grad dY·W (Wᵀ 2:4 along out)"],
                           "dense_gemms_in_sparse_step": ["weight grad dYᵀ·X"]}
    # ---- the dense step
    dense = {"fwd": lambda: F.linear(x, w), "dgrad": lambda: dy @ w, "wgrad": lambda: dy.t() @ x}
    y_ref, dx_ref, dw_ref = F.linear(x, wm), dy @ wm, dy.t() @ x
    assert y_ref.shape == (tokens, out) and dx_ref.shape == (tokens, inp) and dw_ref.shape == (out, inp)
    # ---- the sparse step
    sparse: dict[str, Callable[[], Any]] | None = None
    try:
        pack = make_pack(args.dry_run)
        w_sp, wt_sp = pack(wm), pack(wm.t().contiguous())
        sparse = {"fwd": lambda: F.linear(x, w_sp), "dgrad": lambda: F.linear(dy, wt_sp), "wgrad": lambda: dy.t() @ x}
        y, dx, dw = sparse["fwd"](), sparse["dgrad"](), sparse["wgrad"]()
        assert y.shape == y_ref.shape and dx.shape == dx_ref.shape and dw.shape == dw_ref.shape
        rec["correct"] = {"fwd_rel_err": rel_err(y, y_ref), "dgrad_rel_err": rel_err(dx, dx_ref),
                          "wgrad_rel_err": rel_err(dw, dw_ref)}
        rec["correct"]["ok"] = max(rec["correct"][k] for k in ("fwd_rel_err", "dgrad_rel_err")) < 2e-2
        def packer() -> Any:
            return pack(wm), pack(wm.t().contiguous())
    except Exception as err:  # noqa: BLE001 -- fail soft: record and time the dense step alone
        rec["sparse_error"] = f"{type(err).__name__}: {err}"
        sparse, packer = None, None
    timer = Timer(cuda)  # a dry run goes through the loop once, untimed (every time is None)
    runs: dict[str, dict[str, list[float | None]]] = {"dense": {}, "sparse": {}}
    for _ in range(0 if args.dry_run else args.warmup):
        for fn in dense.values():
            fn()
        for fn in (sparse or {}).values():
            fn()
    if cuda:
        torch.cuda.synchronize()
    for _ in range(1 if args.dry_run else args.repeats):  # side by side: dense then sparse in every repeat
        for label, fns in (("dense", dense), ("sparse", sparse)):
            if fns is None:
                continue
            for gemm, fn in fns.items():
                runs[label].setdefault(gemm, []).append(timer(fn))
            runs[label].setdefault("step", []).append(timer(lambda fns=fns: [f() for f in fns.values()]))
        if packer is not None:
            runs["sparse"].setdefault("pack", []).append(timer(packer))
    eager = {label: {f"{k}_ms": median(v) for k, v in r.items()} for label, r in runs.items() if r}
    if args.dry_run:
        rec["timed"] = False
        rec["eager_keys"] = {label: sorted(v) for label, v in eager.items()}  # the bookkeeping, no numbers
        return rec
    if "sparse" in eager:
        s = eager["sparse"]
        s["step_with_pack_ms"] = s["step_ms"] + (s.get("pack_ms") or 0.0)
        eager["speedup"] = {k: eager["dense"][f"{k}_ms"] / s[f"{k}_ms"] for k in ("fwd", "dgrad", "wgrad", "step")}
        eager["speedup"]["step_with_pack"] = eager["dense"]["step_ms"] / s["step_with_pack_ms"]
    rec["eager"] = eager
    if args.graphs:
        rec["graph"] = bench_graphs(dense, sparse, timer, args)
    rec["timed"] = True
    return rec


def bench_graphs(dense: dict, sparse: dict | None, timer: Timer, args: argparse.Namespace) -> dict[str, Any]:
    """Each step (its three GEMMs) captured into one CUDA graph, replays timed side by side."""
    out: dict[str, Any] = {}
    replays: dict[str, Callable[[], Any]] = {}
    for label, fns in (("dense", dense), ("sparse", sparse)):
        if fns is None:
            continue
        try:
            replays[label] = capture(lambda fns=fns: [f() for f in fns.values()])
        except Exception as err:  # noqa: BLE001 -- fail soft
            out[f"{label}_error"] = f"{type(err).__name__}: {err}"
    times: dict[str, list[float | None]] = {k: [] for k in replays}
    for _ in range(args.warmup):
        for r in replays.values():
            r()
    for _ in range(args.repeats):
        for label, r in replays.items():
            times[label].append(timer(r))
    for label, ts in times.items():
        out[f"{label}_step_ms"] = median(ts)
    if "dense_step_ms" in out and "sparse_step_ms" in out:
        out["speedup"] = out["dense_step_ms"] / out["sparse_step_ms"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokens", default="4096,8192", help="comma-separated token counts T (default 4096,8192)")
    p.add_argument("--linears", default=",".join(LINEARS), help=f"which of {', '.join(LINEARS)} (default all)")
    p.add_argument("--repeats", type=int, default=30, help="timed repeats; the median is reported (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed repeats first (default 5)")
    p.add_argument("--backend", default="auto", choices=("auto", "cusparselt", "cutlass"),
                   help="semi-structured backend (auto: cuSPARSELt if available, else CUTLASS)")
    p.add_argument("--no-graphs", dest="graphs", action="store_false", help="skip the CUDA-graph timing")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU: check shapes, masks and the JSON with dense masked matmuls, no timing")
    p.add_argument("--dry-run-tokens", type=int, default=64, help="tokens per step in a dry run (default 64)")
    p.add_argument("--out", type=Path, required=True, help="write the JSON record here")
    args = p.parse_args(argv)
    tokens = [int(t) for t in args.tokens.split(",")]
    names = [n.strip() for n in args.linears.split(",")]
    bad = [n for n in names if n not in LINEARS]
    if bad or any(t <= 0 or t % 8 for t in tokens) or args.repeats < 1 or args.warmup < 0:
        p.error(f"unknown linears {bad}" if bad else "tokens must be positive multiples of 8; repeats >= 1")
    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device: run on a GPU, or use --dry-run on a CPU")
    device = "cpu" if args.dry_run else "cuda"
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    meta: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(), "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "cuda": torch.version.cuda, "repeats": args.repeats, "warmup": args.warmup, "graphs": args.graphs,
        "mask": "fixed transposable 2:4 tile (2 of every 4 along both dims)"}
    errors: list[str] = []
    if not args.dry_run:
        try:
            meta["backend"] = sparse_backend(args.backend)
        except Exception as err:  # noqa: BLE001 -- fail soft: the dense runs still happen
            errors.append(f"backend: {type(err).__name__}: {err}")
    results = []
    for t in tokens:
        tt = min(t, args.dry_run_tokens) if args.dry_run else t
        for name in names:
            out, inp = LINEARS[name]
            try:
                rec = bench_linear(name, out, inp, tt, args, device, dtype)
            except Exception as err:  # noqa: BLE001 -- one shape failing (e.g. out of memory) is recorded
                rec = {"linear": name, "tokens": tt, "error": f"{type(err).__name__}: {err}",
                       "traceback": traceback.format_exc(limit=3)}
            if args.dry_run:
                rec["tokens_requested"] = t
            results.append(rec)
            print(json.dumps({k: rec.get(k) for k in ("linear", "tokens", "eager", "graph", "correct",
                                                       "sparse_error", "error") if k in rec}), flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()
    # the whole MLP (gate + up + down) per token count, from the per-linear medians
    mlp = []
    for t in sorted({r["tokens"] for r in results}):
        rows = [r for r in results if r["tokens"] == t and "eager" in r and "sparse" in r["eager"]]
        if len(rows) == len(names):
            d = sum(r["eager"]["dense"]["step_ms"] for r in rows)
            s = sum(r["eager"]["sparse"]["step_ms"] for r in rows)
            sp = sum(r["eager"]["sparse"]["step_with_pack_ms"] for r in rows)
            mlp.append({"tokens": t, "linears": names, "dense_step_ms": d, "sparse_step_ms": s,
                        "sparse_step_with_pack_ms": sp, "speedup": d / s, "speedup_with_pack": d / sp})
    record = {"meta": meta, "errors": errors, "results": results, "mlp": mlp}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
