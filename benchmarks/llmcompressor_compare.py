"""nmx vs llm-compressor: SparseGPT and Wanda pruning of one model, side by side, in one run.

For each method (sparsegpt, wanda) and pattern (2:4, unstructured 50%):

  (a) a fresh copy of the model is pruned by nmx (`nmx.runner.run` on a recipe), which also
      scores it with nmx's perplexity protocol;
  (b) another fresh copy is pruned by llm-compressor's `oneshot` with its SparseGPTModifier /
      WandaPruningModifier, calibrated on EXACTLY the token windows nmx used (captured from
      nmx's own call to `calibration_windows`, and checked against an independent draw), with the
      same dampening and block size, and its sequential pipeline (one decoder layer at a time,
      pruned outputs propagated, as nmx does); then it is scored with the same
      `nmx.eval.perplexity.perplexity`.

Reported per pair: perplexity of both and their relative difference, the actual weight sparsity
of both over the targeted linears (q,k,v,o,gate,up,down of every decoder layer; never lm_head /
the tied embedding), N:M validity of both (`nmx.sparsity.masks.check_nm`), how many kept/pruned
decisions the two masks share, and the wall time of the pruning step of each (nmx: recipe
compression incl. calibration; llm-compressor: the `oneshot` call). Plus the dense perplexity once.

What "unstructured 50%" means differs between the two libraries for SparseGPT, so it is mapped:
llm-compressor's SparseGPT (like the reference code) picks the mask once per block of columns
with one threshold over the whole [rows x block] slice, which is nmx's "0.5:layer" pattern;
nmx's default "50%" prunes exactly half of every row. Wanda in both libraries compares within each
row ("50%" in nmx). `--sparsegpt-unstructured-scope both` also runs nmx's row-scope variant.

llm-compressor lives in its own venv (never /work/venv); this script imports nmx from the repo's
src/ when nmx is not installed there. llmcompressor 0.14.0.1 (the newest release; its pruning
modifiers are still there) pins transformers<=5.17 (so huggingface-hub<2, httpx<1) and requires
torch<=2.14, auto-round and nvidia-ml-py; torch must stay the local CPU build, so everything goes in
with --no-deps (auto-round and nvidia-ml-py are not needed for pruning and are left out):

    python3.11 -m venv /work/venv-llmc && V=/work/venv-llmc/bin
    $V/pip install torch==2.13.0                      # the local CPU build (pip's find-links)
    $V/pip install --no-deps llmcompressor==0.14.0.1 compressed-tensors==0.19.0 transformers==5.17.0 \
        huggingface-hub==1.33.0 httpx==0.28.1 httpcore==1.0.9 anyio h11 certifi idna hf-xet==1.8.0 \
        tokenizers==0.23.3 safetensors==0.8.0 regex tqdm packaging pyyaml numpy==2.4.6 click typer rich \
        markdown-it-py mdurl pygments shellingham annotated-doc gguf accelerate==1.15.0 psutil \
        pydantic==2.14.4 pydantic_core==2.50.5 annotated-types typing-inspection loguru requests urllib3 \
        charset-normalizer matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing \
        python-dateutil six tzdata datasets==5.2.0 pyarrow "dill<0.4.2" pandas xxhash "multiprocess<0.70.20"

That recipe was rebuilt as written on 2026-11-29 (pip resolved anyio 4.16.0, h11 0.16.0, certifi
2026.10.19.post1, idna 3.20, regex 2026.11.19, tqdm 4.70.1, packaging 26.4, pyyaml 6.0.4, gguf 0.19.0,
psutil 7.2.2, loguru 0.7.3, pandas 3.1.1, pyarrow 26.0.1, matplotlib 3.11.2, dill 0.4.1, multiprocess
0.70.19); `pip check` then names only the two packages left out on purpose.

Run from the repo root (NMX_CACHE_DIR defaults to ~/.cache/nmx, where nmx fetches the model):

    NMX_DATA_DIR=/work/shared/data $V/python benchmarks/llmcompressor_compare.py --threads 1 \
        --llmc-fp64-control --json-out benchmarks/results/llmc_reduced.json
        # reduced defaults: 16 x 512 calibration tokens, 4 x 2048 evaluation tokens; 33 min on a 2-core
        # AMD EPYC shared with other jobs (load average about 2.5), the float64 control included
    NMX_DATA_DIR=/work/shared/data $V/python benchmarks/llmcompressor_compare.py --threads 1 \
        --methods sparsegpt wanda --patterns 2:4 --calib-samples 32 --calib-seq-len 1024 --max-windows 8 \
        --llmc-fp64-control --json-out benchmarks/results/llmc_larger.json
        # a larger protocol for the 2:4 pairs (4x the calibration tokens, 2x the evaluation windows)
    $V/python benchmarks/llmcompressor_compare.py --calib-samples 128 --calib-seq-len 2048 --max-windows 0
        # the full protocol (128 x 2048 calibration, all 148 WikiText-2 test windows): not run here; from
        # the reduced run's timings, several hours on 2 cores

--threads 1 keeps the timing steady on a CPU shared with other jobs. Wall time and CPU seconds
(time.process_time) of the pruning step are both reported; the CPU seconds move far less with the
machine's load. Mind that the thread count also changes the rounding of every matmul, and SparseGPT
2:4 on this 135M model is sensitive to rounding: the float64 control (--llmc-fp64-control) shows how
far llm-compressor's own result moves when only its working precision changes.

Prints a markdown table and one line `LLMC_COMPARE_JSON {...}`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # llm-compressor's per-layer progress bars
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import nmx  # noqa: F401
except ImportError:  # not installed in this venv: use the repo's source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

import nmx
import nmx.model.compress as nmx_compress
import nmx.runner as nmx_runner
from nmx.eval.perplexity import perplexity
from nmx.eval.samples import calibration_windows
from nmx.eval.text import load_text
from nmx.model.layers import DEFAULT_TARGETS, decoder_layers, match_linears
from nmx.model.sources import load_model
from nmx.recipe import load_recipe
from nmx.runner import run as nmx_run
from nmx.sparsity.masks import check_nm
from nmx.sparsity.patterns import NMPattern, parse_pattern

METHODS = ("sparsegpt", "wanda")
PATTERNS = ("2:4", "50%")


# ----------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = next((int(line.split()[1]) // 1024 for line in f if line.startswith("MemTotal")), None)
    except OSError:
        pass
    return {"cpu": cpu, "nproc": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "mem_mib": mem, "platform": platform.platform(), "loadavg_at_start": os.getloadavg()}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"nmx": nmx.__version__, "torch": torch.__version__, "python": platform.python_version()}
    for dist in ("transformers", "llmcompressor", "compressed-tensors", "datasets", "accelerate"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
class WindowCapture:
    """Wrap nmx.model.compress.calibration_windows (the name nmx's compression calls) to keep
    the exact tensor nmx calibrated on."""

    def __init__(self) -> None:
        self.windows: torch.Tensor | None = None
        self._orig = nmx_compress.calibration_windows

    def __enter__(self) -> "WindowCapture":
        def capture(*args: Any, **kwargs: Any) -> torch.Tensor:
            self.windows = self._orig(*args, **kwargs)
            return self.windows

        nmx_compress.calibration_windows = capture
        return self

    def __exit__(self, *exc: Any) -> None:
        nmx_compress.calibration_windows = self._orig


class CompressTimer:
    """Wrap nmx.runner.compress (the recipe's calibration + pruning + accounting) to time it in
    wall seconds and in CPU seconds of this process (time.process_time: every thread's CPU
    time; on a shared machine it moves far less with the other jobs' load than wall time)."""

    def __init__(self) -> None:
        self.wall_s: float | None = None
        self.cpu_s: float | None = None
        self._orig = nmx_runner.compress

    def __enter__(self) -> "CompressTimer":
        def timed(*args: Any, **kwargs: Any) -> Any:
            w0, c0 = time.perf_counter(), time.process_time()
            out = self._orig(*args, **kwargs)
            self.wall_s, self.cpu_s = time.perf_counter() - w0, time.process_time() - c0
            return out

        nmx_runner.compress = timed
        return self

    def __exit__(self, *exc: Any) -> None:
        nmx_runner.compress = self._orig


def target_linears(model: Any) -> dict[str, torch.nn.Linear]:
    return match_linears(model, list(DEFAULT_TARGETS))


def snapshot_untargeted(model: Any) -> dict[str, torch.Tensor]:
    """Every parameter outside the targeted linears (embedding / tied lm_head, norms)."""
    targeted = {f"{n}.weight" for n in target_linears(model)} | {f"{n}.bias" for n in target_linears(model)}
    return {n: p.detach().clone() for n, p in model.named_parameters() if n not in targeted}


def untargeted_changed(model: Any, ref: dict[str, torch.Tensor]) -> list[str]:
    params = dict(model.named_parameters())
    return [n for n, t in ref.items() if n not in params or not torch.equal(params[n].detach(), t)]


def sparsity_record(model: Any, pattern: str) -> dict[str, Any]:
    """Weight sparsity over the targeted linears, N:M violations, and the keep-masks."""
    p = parse_pattern(pattern)
    zeros = total = violations = 0
    masks: dict[str, torch.Tensor] = {}
    per_layer_min = 1.0
    per_layer_max = 0.0
    for name, lin in target_linears(model).items():
        w = lin.weight.detach()
        keep = w != 0
        masks[name] = keep
        z = int((~keep).sum())
        zeros += z
        total += w.numel()
        per_layer_min, per_layer_max = min(per_layer_min, z / w.numel()), max(per_layer_max, z / w.numel())
        if isinstance(p, NMPattern):
            violations += check_nm(w, p.n, p.m)
    return {"weight_sparsity": zeros / total, "targeted_weights": total, "layer_sparsity_min": per_layer_min,
            "layer_sparsity_max": per_layer_max,
            "nm_violations": violations if isinstance(p, NMPattern) else None, "masks": masks}


def compare_masks(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, list[float]]:
    """Fraction of targeted weights both keep or both prune: overall, and per decoder layer (in
    order; names look like 'model.layers.<i>.mlp.up_proj'). With sequential calibration a tiny
    numerical difference in one layer changes the inputs of every later one, so agreement tends
    to fall with depth."""
    same = total = 0
    layers: dict[int, list[int]] = {}
    for name, ma in a.items():
        s, t = int((ma == b[name]).sum()), ma.numel()
        same, total = same + s, total + t
        idx = next((int(p) for p in name.split(".") if p.isdigit()), -1)
        acc = layers.setdefault(idx, [0, 0])
        acc[0], acc[1] = acc[0] + s, acc[1] + t
    return same / total, [round(s / t, 6) for _, (s, t) in sorted(layers.items())]


# ----------------------------------------------------------------------------------------------
def nmx_prune(args: argparse.Namespace, method: str, pattern: str) -> dict[str, Any]:
    loaded = load_model(args.model)
    ref = snapshot_untargeted(loaded.model)
    options = {"blocksize": args.blocksize, "percdamp": args.dampening} if method == "sparsegpt" else {}
    recipe = load_recipe(base={
        "model": args.model,
        "calibration": {"text": args.calib_text, "samples": args.calib_samples, "seq_len": args.calib_seq_len,
                        "seed": args.seed},
        "sparsity": {"method": method, "pattern": pattern, "targets": list(DEFAULT_TARGETS), "options": options},
        "evaluation": {"text": args.text, "seq_len": args.seq_len, "max_windows": args.max_windows},
    })
    with WindowCapture() as cap, CompressTimer() as timer:
        res = nmx_run(recipe, loaded=loaded)
    rec = sparsity_record(loaded.model, pattern)
    weights = {n: lin.weight.detach().clone() for n, lin in target_linears(loaded.model).items()}
    out = {
        "perplexity": res["perplexity"], "eval_tokens": res["eval_tokens"], "protocol": res["protocol"],
        "prune_s": res["compress_s"], "prune_cpu_s": timer.cpu_s,
        "prune_s_wrapped": timer.wall_s, "nmx_weight_sparsity": res["weight_sparsity"],
        "nmx_masks_valid": res["masks_valid"], "untargeted_changed": untargeted_changed(loaded.model, ref),
        "windows": cap.windows, "weights": weights, **rec,
    }
    del loaded, res
    gc.collect()
    return out


def quiet_llmc() -> None:
    """llm-compressor logs every layer at INFO (and METRIC) level to stdout: keep its warnings
    and errors only, on stderr, so stdout holds the table and the JSON line."""
    with contextlib.redirect_stdout(sys.stderr):  # its import already logs (to the stdout it saw)
        import llmcompressor  # noqa: F401 - configures loguru on import
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING", filter=lambda r: r["level"].name != "METRIC",
               format="llmcompressor {level} {function}: {message}")


def llmc_modifier(method: str, pattern: str, args: argparse.Namespace, layer_class: str):
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    p = parse_pattern(pattern)
    if isinstance(p, NMPattern):
        # llm-compressor's "N:M" counts PRUNED weights per group (topk(..., prune_n, largest=False)
        # marks the pruned ones), nmx's counts KEPT ones: nmx n:m == llm-compressor (m-n):m.
        sparsity, mask_structure = p.sparsity, f"{p.m - p.n}:{p.m}"
    else:
        sparsity, mask_structure = p.sparsity, "0:0"
    common = dict(sparsity=sparsity, mask_structure=mask_structure,
                  targets=[layer_class],  # the layers holding the target linears ...
                  ignore=["re:.*lm_head"])  # ... never lm_head (tied to the embedding here)
    if method == "sparsegpt":
        return SparseGPTModifier(block_size=args.blocksize, dampening_frac=args.dampening, **common)
    return WandaPruningModifier(**common)


@contextlib.contextmanager
def llmc_precision(dtype: torch.dtype):
    """Set llm-compressor's working precision (module constants SGPT_PRECISION, WANDA_PRECISION;
    float32 as shipped). float64 makes SparseGPT's Hessian, Cholesky and sweep float64 and Wanda's
    scores float64 (its row scalars stay float32): a control run, same algorithm, other rounding."""
    import llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify as sg
    import llmcompressor.modifiers.pruning.wanda.wanda_sparsify as wd

    old = sg.SGPT_PRECISION, wd.WANDA_PRECISION
    sg.SGPT_PRECISION = wd.WANDA_PRECISION = dtype
    try:
        yield
    finally:
        sg.SGPT_PRECISION, wd.WANDA_PRECISION = old


def llmc_prune(args: argparse.Namespace, method: str, pattern: str, windows: torch.Tensor,
               precision: torch.dtype = torch.float32) -> dict[str, Any]:
    quiet_llmc()
    from datasets import Dataset
    from llmcompressor import oneshot

    loaded = load_model(args.model)
    ref = snapshot_untargeted(loaded.model)
    _, layers = decoder_layers(loaded.model)
    modifier = llmc_modifier(method, pattern, args, type(layers[0]).__name__)
    ds = Dataset.from_dict({"input_ids": windows.tolist()})
    t0, c0 = time.perf_counter(), time.process_time()
    with llmc_precision(precision):
        oneshot(
            model=loaded.model, tokenizer=loaded.tokenizer, dataset=ds, recipe=modifier,
            num_calibration_samples=len(windows), shuffle_calibration_samples=False, batch_size=1,
            max_seq_length=windows.shape[1], pipeline="sequential",
        )
    prune_s, prune_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    loaded.model.eval()
    rec = sparsity_record(loaded.model, pattern)
    changed = untargeted_changed(loaded.model, ref)
    t1 = time.perf_counter()
    ppl = perplexity(loaded.model, loaded.tokenizer, load_text(args.text), args.seq_len, args.max_windows)
    out = {"perplexity": ppl["perplexity"], "eval_tokens": ppl["eval_tokens"], "protocol": ppl["protocol"],
           "prune_s": prune_s, "prune_cpu_s": prune_cpu_s, "eval_s": time.perf_counter() - t1, "untargeted_changed": changed,
           "modifier": repr(modifier), "model": loaded.model, **rec}
    return out


def dense_perplexity(args: argparse.Namespace) -> dict[str, Any]:
    loaded = load_model(args.model)
    t0 = time.perf_counter()
    r = perplexity(loaded.model, loaded.tokenizer, load_text(args.text), args.seq_len, args.max_windows)
    rec = sparsity_record(loaded.model, "50%")
    return {"perplexity": r["perplexity"], "eval_tokens": r["eval_tokens"], "protocol": r["protocol"],
            "eval_s": time.perf_counter() - t0, "weight_sparsity": rec["weight_sparsity"]}


# ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--patterns", nargs="+", default=list(PATTERNS),
                    help="nmx pattern strings: N:M (kept of M) or a fraction like 50%% (default: 2:4 50%%)")
    ap.add_argument("--sparsegpt-unstructured-scope", choices=("layer", "row", "both"), default="both",
                    help="nmx scope for SparseGPT unstructured: 'layer' (= llm-compressor's per-block "
                         "threshold), 'row' (nmx's default '50%%'), or both (default)")
    ap.add_argument("--calib-text", default="tinyshakespeare")
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--calib-seq-len", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text", default="wikitext-2")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--max-windows", type=int, default=4, help="0 = the full split")
    ap.add_argument("--dampening", type=float, default=0.01, help="SparseGPT percdamp / dampening_frac")
    ap.add_argument("--blocksize", type=int, default=128, help="SparseGPT block size")
    ap.add_argument("--goal", type=float, default=0.02, help="relative perplexity difference goal")
    ap.add_argument("--llmc-fp64-control", action="store_true",
                    help="also run llm-compressor with its working precision set to float64 (a control: "
                         "same algorithm, other rounding), to show how far rounding alone moves the result")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's choice); 1 can be faster on a CPU shared with other jobs")
    ap.add_argument("--json-out", type=Path, default=None, help="also write the JSON record here")
    args = ap.parse_args(argv)
    if args.max_windows == 0:
        args.max_windows = None
    return args


def runs_of(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(method, nmx pattern, llm-compressor pattern) triples."""
    out = []
    for method in args.methods:
        for pattern in args.patterns:
            p = parse_pattern(pattern)
            if method == "sparsegpt" and not isinstance(p, NMPattern) and p.scope == "row":
                layer = f"{p.sparsity}:layer"
                scopes = {"layer": [layer], "row": [pattern], "both": [layer, pattern]}
                out += [(method, s, pattern) for s in scopes[args.sparsegpt_unstructured_scope]]
            else:
                out.append((method, pattern, pattern))
    return out


def fmt(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    info = {"command": command, "versions": versions(), "machine": machine_info(),
            "env": {k: os.environ.get(k) for k in ("NMX_CACHE_DIR", "NMX_DATA_DIR")},
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    log(f"versions {info['versions']}")

    # the windows both libraries calibrate on, drawn independently here to check nmx's capture
    probe = load_model(args.model)
    ref_windows = calibration_windows(probe.tokenizer, load_text(args.calib_text), args.calib_samples,
                                      args.calib_seq_len, args.seed)
    del probe

    log("dense perplexity")
    dense = dense_perplexity(args)
    log(f"dense ppl {dense['perplexity']:.4f} ({dense['eval_s']:.0f} s)")

    rows: list[dict[str, Any]] = []
    llmc_cache: dict[tuple[str, str], dict[str, Any]] = {}
    for method, nmx_pattern, llmc_pattern in runs_of(args):
        row: dict[str, Any] = {"method": method, "nmx_pattern": nmx_pattern, "llmc_pattern": llmc_pattern}
        log(f"{method} {nmx_pattern}: nmx")
        try:
            a = nmx_prune(args, method, nmx_pattern)
            same_windows = a["windows"] is not None and torch.equal(a["windows"], ref_windows)
            row["nmx"] = {k: v for k, v in a.items() if k not in ("windows", "weights", "masks")}
            row["same_calibration_windows"] = same_windows
            log(f"  nmx ppl {a['perplexity']:.4f}, prune {a['prune_s']:.1f} s ({a['prune_cpu_s']:.1f} s CPU), windows identical: {same_windows}")
        except Exception as err:  # noqa: BLE001 - report, never fake
            row["nmx_error"] = f"{type(err).__name__}: {err}"
            row["nmx_traceback"] = traceback.format_exc()
            log(f"  nmx FAILED: {row['nmx_error']}")
            rows.append(row)
            continue

        key = (method, llmc_pattern)
        if key not in llmc_cache:
            log(f"{method} {llmc_pattern}: llm-compressor")
            try:
                b = llmc_prune(args, method, llmc_pattern, a["windows"])
                llmc_cache[key] = {"rec": {k: v for k, v in b.items() if k not in ("masks", "model")},
                                   "masks": b["masks"], "weights": {n: lin.weight.detach().clone() for n, lin in
                                                                    target_linears(b["model"]).items()}}
                del b
                gc.collect()
            except Exception as err:  # noqa: BLE001
                llmc_cache[key] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        ckey = (method, llmc_pattern, "fp64")
        if args.llmc_fp64_control and "error" not in llmc_cache[key] and ckey not in llmc_cache:
            log(f"{method} {llmc_pattern}: llm-compressor, float64 control")
            try:
                c = llmc_prune(args, method, llmc_pattern, a["windows"], precision=torch.float64)
                llmc_cache[ckey] = {"rec": {k: v for k, v in c.items() if k not in ("masks", "model")},
                                    "masks": c["masks"]}
                del c
                gc.collect()
            except Exception as err:  # noqa: BLE001
                llmc_cache[ckey] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        if ckey in llmc_cache:
            ctl = llmc_cache[ckey]
            if "error" in ctl:
                row["llmc_fp64_error"] = ctl["error"]
            else:
                row["llmc_fp64"] = ctl["rec"]
                row["llmc_fp64_vs_llmc"] = ctl["rec"]["perplexity"] / llmc_cache[key]["rec"]["perplexity"] - 1
                row["llmc_fp64_vs_nmx"] = ctl["rec"]["perplexity"] / a["perplexity"] - 1
                row["llmc_fp64_mask_agreement_vs_llmc"] = compare_masks(llmc_cache[key]["masks"], ctl["masks"])[0]
                (row["llmc_fp64_mask_agreement_vs_nmx"],
                 row["llmc_fp64_mask_agreement_per_layer_vs_nmx"]) = compare_masks(a["masks"], ctl["masks"])
                log(f"  llmc fp64 ppl {ctl['rec']['perplexity']:.4f}: {row['llmc_fp64_vs_llmc']:+.4%} vs llmc, "
                    f"{row['llmc_fp64_vs_nmx']:+.4%} vs nmx")
        got = llmc_cache[key]
        if "error" in got:
            row["llmc_error"], row["llmc_traceback"] = got["error"], got["traceback"]
            log(f"  llm-compressor FAILED: {got['error']}")
        else:
            b = got["rec"]
            row["llmc"] = b
            row["rel_diff"] = b["perplexity"] / a["perplexity"] - 1
            row["within_goal"] = abs(row["rel_diff"]) <= args.goal
            row["mask_agreement"], row["mask_agreement_per_layer"] = compare_masks(a["masks"], got["masks"])
            num = den = 0.0
            for n, wa in a["weights"].items():
                num += float((wa.double() - got["weights"][n].double()).square().sum())
                den += float(wa.double().square().sum())
            row["weight_rel_l2_diff"] = (num / den) ** 0.5
            log(f"  llmc ppl {b['perplexity']:.4f}, prune {b['prune_s']:.1f} s ({b['prune_cpu_s']:.1f} s CPU); rel diff {row['rel_diff']:+.4%}, "
                f"mask agreement {row['mask_agreement']:.4f}")
        del a
        gc.collect()
        rows.append(row)

        if args.json_out:  # after every pair, so a run cut short keeps what it measured
            args.json_out.write_text(json.dumps({**info, "dense": dense, "rows": rows, "partial": True},
                                                default=str) + "\n")

    total_s = time.perf_counter() - t_start
    record = {**info, "dense": dense, "rows": rows, "total_s": total_s, "loadavg_at_end": os.getloadavg()}
    line = json.dumps(record, default=str)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    try:
        print(markdown(info, dense, rows, args, total_s))
    except Exception:  # noqa: BLE001 - the JSON line below still carries every number
        log("markdown table failed:\n" + traceback.format_exc())
    print("LLMC_COMPARE_JSON " + line)
    return 0 if all("nmx_error" not in r and "llmc_error" not in r for r in rows) else 1


def markdown(info: dict, dense: dict, rows: list[dict], args: argparse.Namespace, total_s: float) -> str:
    v, m, p = info["versions"], info["machine"], dense["protocol"]
    lines = [
        "## nmx vs llm-compressor: SparseGPT and Wanda on " + args.model,
        "",
        f"- command: `{info['command']}`",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- machine: {m['cpu']}, {m['nproc']} cores, {m['torch_threads']} torch threads, {m['mem_mib']} MiB; "
        f"load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}",
        f"- calibration: {args.calib_samples} windows x {args.calib_seq_len} tokens of {args.calib_text} "
        f"(seed {args.seed}), the same token windows for both; SparseGPT dampening {args.dampening}, "
        f"block size {args.blocksize}; both sequential (per decoder layer, pruned outputs propagated)",
        f"- evaluation: {p['text']}, {p['windows']} of {p['windows_available']} windows of {p['seq_len']} "
        f"tokens ({p['tokens_scored']} tokens scored), nmx.eval.perplexity for both",
        f"- dense perplexity: **{dense['perplexity']:.4f}**",
        f"- total wall time: {total_s / 60:.1f} min",
        "",
        "| method | pattern (nmx / llmc) | ppl nmx | ppl llmc | llmc vs nmx | sparsity nmx | sparsity llmc "
        "| N:M violations nmx / llmc | same mask (first / last layer) | prune s nmx | prune s llmc "
        "| llmc / nmx wall | prune CPU s nmx | prune CPU s llmc | llmc / nmx CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r.get("nmx"), r.get("llmc")
        pat = r["nmx_pattern"] if r["nmx_pattern"] == r["llmc_pattern"] else f"{r['nmx_pattern']} / {r['llmc_pattern']}"
        if a is None:
            lines.append(f"| {r['method']} | {pat} | nmx failed: {r['nmx_error']} | | | | | | | | | | | | |")
            continue
        if b is None:
            lines.append(f"| {r['method']} | {pat} | {a['perplexity']:.4f} | llmc failed: {r['llmc_error']} "
                         f"| | {a['weight_sparsity']:.4f} | | | | {a['prune_s']:.1f} | | | {a['prune_cpu_s']:.1f} | | |")
            continue
        nm = ("n/a" if b["nm_violations"] is None else f"{a['nm_violations']} / {b['nm_violations']}")
        ok = "" if r["within_goal"] else " (over goal)"
        lines.append(
            f"| {r['method']} | {pat} | {a['perplexity']:.4f} | {b['perplexity']:.4f} | {r['rel_diff']:+.2%}{ok} "
            f"| {a['weight_sparsity']:.4f} | {b['weight_sparsity']:.4f} | {nm} | {r['mask_agreement']:.4f} "
            f"({r['mask_agreement_per_layer'][0]:.4f} / {r['mask_agreement_per_layer'][-1]:.4f}) "
            f"| {a['prune_s']:.1f} | {b['prune_s']:.1f} | {b['prune_s'] / a['prune_s']:.2f} "
            f"| {a['prune_cpu_s']:.1f} | {b['prune_cpu_s']:.1f} | {b['prune_cpu_s'] / a['prune_cpu_s']:.2f} |")
    ctl = [r for r in rows if "llmc_fp64" in r]
    if ctl:
        lines += ["", "Control: llm-compressor again with its working precision set to float64 (same algorithm, "
                  "other rounding):", "",
                  "| method | pattern (llmc) | ppl llmc fp32 | ppl llmc fp64 | fp64 vs fp32 | fp64 vs nmx "
                  "| same mask fp64 vs fp32 | same mask fp64 vs nmx |", "|---|---|---|---|---|---|---|---|"]
        for r in ctl:
            lines.append(
                f"| {r['method']} | {r['llmc_pattern']} | {r['llmc']['perplexity']:.4f} | "
                f"{r['llmc_fp64']['perplexity']:.4f} | {r['llmc_fp64_vs_llmc']:+.2%} | {r['llmc_fp64_vs_nmx']:+.2%} | "
                f"{r['llmc_fp64_mask_agreement_vs_llmc']:.4f} | {r['llmc_fp64_mask_agreement_vs_nmx']:.4f} |")
    lines += ["",
              "\"same mask\": fraction of targeted weights where both keep or both prune. \"prune s\": wall seconds of "
              "nmx's recipe compression (calibration + pruning + accounting) / llm-compressor's `oneshot` call; "
              "\"prune CPU s\": the same steps in CPU seconds of this process (time.process_time). "
              f"Load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}.",
              ""]
    notes = []
    for r in rows:
        for lib, pat in (("nmx", r["nmx_pattern"]), ("llmc", r["llmc_pattern"])):
            if r.get(lib) and r[lib]["untargeted_changed"]:
                notes.append(f"{r['method']} {pat}: {lib} changed untargeted {r[lib]['untargeted_changed']}")
        if r.get("nmx") and not r.get("same_calibration_windows"):
            notes.append(f"{r['method']} {r['nmx_pattern']}: nmx's captured windows differ from the reference draw")
    lines += [f"- {n}" for n in notes] or ["- every run left the embedding, lm_head and norms untouched; "
                                           "nmx's captured calibration windows equal an independent draw"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
