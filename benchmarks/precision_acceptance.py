"""Issue 14, acceptance 1-4: variable-length grouped (BFP) activations on smollm2-135m with int4_g128 weights,
evaluated on WikiText-2 (test) at context 2048 on --eval-windows windows (default 16), in one device-agnostic run.

    python benchmarks/precision_acceptance.py --out precision_acceptance.json --device cuda   # an H100: ~3-5 min
    python benchmarks/precision_acceptance.py --out /tmp/tiny.json --tiny                     # CPU smoke run (~1 min)

Items (keys of the JSON):
  1 `search`     `nmx search-precision`'s greedy search (nmx.eval.precision_run.run_search, the command's own code)
                 at tolerance 0.1 % and 1 % on calibration text held apart from the evaluation text: chosen lengths
                 per tensor type (qkv / o / up / down), BOPs reduction against A16 (the same int4_g128 weights, bf16
                 activations), iterations, calibration perplexity, and the chosen recipe run through `nmx run`
                 (nmx.runner.run) on the evaluation text. Each search's summary.json + recipe.yaml is written under
                 --search-dir, as `nmx search-precision --out` writes them (input of `nmx explore --search`).
  2 `formats`    one table: A16, A8 (`int8`: one fp16 scale per token), MXFP8 (`mxfp8_e4m3`), MXFP4, NVFP4 and uniform
                 BFP `bfp_m4_g64` .. `bfp_m8_g64` activations, each an `nmx run`: perplexity, BOPs per token (the
                 run's result.json `bops` block), bits per activation element (scales included, nmx.quant.bops).
  3 `codesign`   evaluation perplexity against energy and latency of one decode step (batch 1, context 2048) and one
                 prefill (2048 tokens), for the searched points and the fixed formats, each on its own design of
                 examples/hw/anda_*.yaml (BFP on the bit-serial design; A16 on the FP16 x INT4 "GPU-like" baseline;
                 A8 / MXFP8 / MXFP4 / NVFP4 on their datapaths at equal area), priced through nmx.hw.explore
                 (`nmx explore --search`'s join: nmx.hw.workload.llm_workload -> Target.cost); the Pareto fronts, the
                 speedup / energy efficiency over A16 on the FP16 baseline next to Anda's published figures, every
                 point on every design, and a PNG (--plot).
  4 `search_cost` the greedy search against exhaustive search over the grid {5,6,7,8}^4 on a reduced calibration set
                 (--grid-calib-samples x --grid-calib-seq-len tokens): evaluations, wall time, whether they agree.
  `sensitivity`  `nmx search-precision --sensitivity` (one tensor type at a time) on that reduced calibration set.
  `answer`       does the Q/K/V input need the most bits and the down projection's input the fewest? (from the chosen
                 lengths and the sensitivity scan)

Timing. The script measures the A16 evaluation first and estimates every later item from it; an item that would end
past --budget-s (default 330 s after the model load) is skipped and recorded with its estimate, and a search whose
--max-iter would not fit runs with a smaller one (recorded). The JSON is written after every step, so a cut-off run
keeps what it measured. It records the command, machine, date and wall time of every step. On one H100 (an estimate,
not yet measured), smollm2-135m in float32: a 2048-token window with BFP fake-quant hooks on its 210 linears takes
roughly 0.05-0.1 s, so the 12 evaluation runs (16 windows) take ~20-40 s, the two searches (<= 33 calibration
evaluations of 8 x 2048 tokens each) ~1-2 min, the grid (256 + greedy evaluations of 2 x 512 tokens) ~30-60 s, the
pricing ~10 s: about 3-5 minutes with the model load.

Calibration text: WikiText-2 *validation* (`$NMX_DATA_DIR/text/wikitext-2/wiki.valid.tokens`) where present, else the
embedded tinyshakespeare (--calib-text overrides). Only its first windows are used, so the script tokenizes a prefix
of it saved to a file (checked to give the same windows as the whole text): the search evaluates it dozens of times.
"dense" (A16 with bf16 weights) is not run: every number here has int4_g128 weights; the checkpoint itself is the
dequantized Q4_1 GGUF of SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
HW = REPO / "examples" / "hw"
TYPES = ("qkv", "o", "up", "down")
#: the fixed activation formats of item 2, in table order: label -> format (None: A16)
FIXED = {"A16": None, "A8 (int8 per token)": "int8", "MXFP8": "mxfp8_e4m3", "MXFP4": "mxfp4", "NVFP4": "nvfp4"}
#: activation format family -> its design in examples/hw (BFP and the searched points: the bit-serial one)
DESIGNS = {"fp16": "anda_fp16_int4_16x16.yaml", "int8": "anda_int8_int4_16x16.yaml",
           "mxfp8": "anda_mxfp8_int4_16x16.yaml", "mxfp4": "anda_mxfp4_int4_16x16.yaml",
           "nvfp4": "anda_nvfp4_int4_16x16.yaml", "bfp": "anda_16x16_bitserial.yaml"}
#: Anda (HPCA 2025) over its FP-FP (W4A16) baseline: speedup and energy efficiency at 0.1 % / 1 % accuracy loss
PAPER = {"0.001": {"speedup": 2.14, "energy_efficiency": 3.07}, "0.01": {"speedup": 2.49, "energy_efficiency": 3.16}}


def design_of(activations: Any) -> str:
    """The examples/hw design a point's activation format runs on (module doc, item 3)."""
    if activations is None:
        return "fp16"
    if isinstance(activations, dict) or str(activations).startswith("bfp_"):
        return "bfp"
    for key in ("mxfp8", "mxfp4", "nvfp4", "int8"):
        if str(activations).startswith(key):
            return key
    raise ValueError(f"no design for activation format {activations!r}")


def _tiny_model(folder: Path) -> str:
    """nmx's tiny random Llama with a character tokenizer (the test suite's model), saved in `folder`."""
    from nmx.model.tiny import save_tiny_llama

    return save_tiny_llama(folder)


def _default_calib_text() -> str:
    data = os.environ.get("NMX_DATA_DIR")
    if data and (Path(data) / "text/wikitext-2/wiki.valid.tokens").is_file():
        return str(Path(data) / "text/wikitext-2/wiki.valid.tokens")
    return "tinyshakespeare"


def prefix_text(spec: str, tokenizer: Any, tokens: int, path: Path, check: Any = True) -> dict[str, Any]:
    """Write the shortest prefix of text `spec` (doubling from ~6 characters a token) holding >= 1.2 x `tokens`
    tokens + 64 into `path`; with `check`, confirm its first `tokens` tokens are those of the whole text (`check`
    a list of ids: those of a longer prefix already checked). The ids are returned under "_ids"."""
    from nmx.eval.text import load_text

    text = load_text(spec)
    n = max(256, tokens * 6)
    while True:
        part = text.text[:n]
        ids = tokenizer(part).input_ids
        if len(ids) >= 1.2 * tokens + 64 or n >= len(text.text):
            break
        n *= 2
    path.write_text(part, encoding="utf-8")
    info = {"text": text.name, "source": text.source, "prefix_chars": len(part), "prefix_tokens": len(ids),
            "sha256": hashlib.sha256(part.encode("utf-8")).hexdigest()}
    if check is not False and check is not None:
        full = check if isinstance(check, list) and len(check) >= tokens else tokenizer(text.text).input_ids
        info["same_windows_as_whole_text"] = list(full[:tokens]) == list(ids[:tokens])
    info["_ids"] = list(ids)
    return info


class Budget:
    """Seconds left of --budget-s, counted from `start`."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def used(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.used()

    def skip(self, estimate_s: float) -> dict[str, Any] | None:
        """None when `estimate_s` fits, else the record of a skipped item."""
        if estimate_s <= self.left():
            return None
        return {"skipped": f"budget: needs ~{estimate_s:.0f} s, {max(self.left(), 0):.0f} s of --budget-s left",
                "estimate_s": estimate_s}


def _write(path: str | Path, record: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=_json_default) + "\n")
    tmp.replace(out)


def _json_default(o: Any) -> Any:
    if isinstance(o, tuple):
        return list(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(type(o).__name__)


def judge(lengths: dict[str, Any]) -> dict[str, Any]:
    """Does qkv have the most bits (>= every other type; strictly: > each) and down the fewest?"""
    others_q = [lengths[t] for t in TYPES if t != "qkv"]
    others_d = [lengths[t] for t in TYPES if t != "down"]
    return {"lengths": dict(lengths), "qkv_most": lengths["qkv"] >= max(others_q),
            "qkv_most_strict": lengths["qkv"] > max(others_q), "down_fewest": lengths["down"] <= min(others_d),
            "down_fewest_strict": lengths["down"] < min(others_d)}


def answer(record: dict) -> dict[str, Any]:
    """The issue's question, from every source that ran (module doc)."""
    sources: dict[str, Any] = {}
    for tol, s in (record.get("search") or {}).items():
        if isinstance(s, dict) and s.get("chosen_lengths"):
            sources[f"chosen_lengths_tol{tol}"] = judge(s["chosen_lengths"])
    sens = record.get("sensitivity") or {}
    if sens.get("shortest_passing"):
        # the fewest bits each type tolerates alone (None: not even 13 bits: counted as 16); more = needs more bits
        need = {t: (16 if m is None else m) for t, m in sens["shortest_passing"].items()}
        sources["sensitivity_shortest_passing"] = judge(need)

    def verdict(key: str) -> Any:
        v = [s[key] for s in sources.values()]
        return None if not v else (True if all(v) else False if not any(v) else "mixed")

    return {"qkv_needs_most_bits": verdict("qkv_most"), "down_needs_fewest_bits": verdict("down_fewest"),
            "qkv_strictly_most": verdict("qkv_most_strict"), "down_strictly_fewest": verdict("down_fewest_strict"),
            "sources": sources,
            "rule": "most = its length >= every other type's (strict: >); per source; True/False when every source "
                    "agrees, 'mixed' otherwise. Sensitivity: the shortest length each type passes alone."}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file of every item (written after every step)")
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: the tiny random Llama, tiny texts")
    p.add_argument("--model", default="smollm2-135m", help="model (default smollm2-135m)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (default: auto; cpu with --tiny)")
    p.add_argument("--weights", default="int4_g128", help="weight format (default int4_g128)")
    p.add_argument("--group", type=int, default=64, help="BFP group of the activations (default 64)")
    p.add_argument("--eval-windows", type=int, default=None, help="WikiText-2 test windows (default 16; 2 with --tiny)")
    p.add_argument("--eval-seq-len", type=int, default=None, help="evaluation context (default 2048; 64 with --tiny)")
    p.add_argument("--calib-text", default=None, help="search calibration text (default: module doc)")
    p.add_argument("--calib-samples", type=int, default=None, help="search calibration windows (default 8; 1 tiny)")
    p.add_argument("--calib-seq-len", type=int, default=None, help="calibration window (default 2048; 64 with --tiny)")
    p.add_argument("--tolerances", default="0.001,0.01", help="search tolerances (default 0.001,0.01)")
    p.add_argument("--max-iter", type=int, default=32, help="greedy search cap (default 32, Anda's)")
    p.add_argument("--grid", default=None, help="mantissa lengths of the exhaustive grid (default 5,6,7,8; 6,7,8 "
                                                "with --tiny, whose random model accepts 5 bits everywhere)")
    p.add_argument("--grid-tolerance", type=float, default=None, help="tolerance of item 4 and the sensitivity scan "
                                                                        "(default 0.01; 0.0005 with --tiny, whose "
                                                                        "random model barely reacts)")
    p.add_argument("--grid-calib-samples", type=int, default=None, help="reduced calibration windows (default 2)")
    p.add_argument("--grid-calib-seq-len", type=int, default=None, help="reduced calibration window (512; 32 tiny)")
    p.add_argument("--context", type=int, default=None, help="decode context / prefill tokens priced (default 2048)")
    p.add_argument("--items", default="1,2,3,4,sensitivity", help="items to run, e.g. 1,4 (default all)")
    p.add_argument("--budget-s", type=float, default=330.0, help="seconds after the model load (default 330)")
    p.add_argument("--plot", default=None, help="PNG of item 3 (default: --out with .png)")
    p.add_argument("--search-dir", default=None, help="where the searches' summary.json go (default: --out stem + "
                                                      "_searches)")
    a = p.parse_args(argv)
    tiny = a.tiny
    defaults = dict(device="cpu" if tiny else "auto", eval_windows=2 if tiny else 16, eval_seq_len=64 if tiny else 2048,
                    calib_samples=1 if tiny else 8, calib_seq_len=64 if tiny else 2048,
                    grid_calib_samples=1 if tiny else 2, grid_calib_seq_len=32 if tiny else 512,
                    context=64 if tiny else 2048, grid_tolerance=0.0005 if tiny else 0.01,
                    grid="6,7,8" if tiny else "5,6,7,8",
                    calib_text="tinyshakespeare" if tiny else _default_calib_text())
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    out = Path(a.out)
    plot = Path(a.plot) if a.plot else out.with_suffix(".png")
    search_dir = Path(a.search_dir) if a.search_dir else out.with_name(out.stem + "_searches")
    items = set(a.items.split(","))
    tolerances = [float(t) for t in a.tolerances.split(",")]
    grid = sorted({int(m) for m in a.grid.split(",")})
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")

    import torch

    from nmx.model.sources import LoadedModel, load_model

    work = Path(tempfile.mkdtemp(prefix="nmx-precision-acceptance-"))
    t_all = time.perf_counter()
    record: dict[str, Any] = {
        "command": " ".join([sys.executable, *(sys.argv if argv is None else [__file__, *argv])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "host": platform.node(),
                    "cpu_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "config": {k: getattr(a, k) for k in ("model", "device", "weights", "group", "eval_windows", "eval_seq_len",
                                               "calib_text", "calib_samples", "calib_seq_len", "max_iter",
                                               "grid_tolerance", "grid_calib_samples", "grid_calib_seq_len",
                                               "context", "budget_s")},
        "note": ("tiny random Llama (a smoke run: its numbers mean nothing)" if tiny else
                 "every point has int4_g128 weights of the dequantized Q4_1 checkpoint of SmolLM2-135M-Instruct"),
        "skipped": [],
    }
    record["config"].update(tolerances=tolerances, grid=grid, items=sorted(items))
    try:
        model_spec = _tiny_model(work / "tiny-llama") if tiny else a.model
        if tiny:
            record["config"]["model"] = "tiny random Llama"
        t0 = time.perf_counter()
        pristine = load_model(model_spec, a.device)
        record["model_load_s"] = time.perf_counter() - t0
        record["model"] = {"name": pristine.name, "parameters": pristine.n_params, "device": pristine.source["device"],
                           "dtype": str(next(pristine.model.parameters()).dtype)}
        budget = Budget(a.budget_s)

        def working() -> LoadedModel:
            return LoadedModel(copy.deepcopy(pristine.model), pristine.tokenizer, pristine.name, dict(pristine.source),
                               list(pristine.notes))

        tok = pristine.tokenizer
        # texts: the calibration prefix (module doc); with --tiny a short evaluation text too
        cal_file, small_file = work / "calibration.txt", work / "calibration_reduced.txt"
        record["calibration"] = prefix_text(a.calib_text, tok, a.calib_samples * a.calib_seq_len, cal_file)
        ids = record["calibration"].pop("_ids")
        record["calibration"].update(samples=a.calib_samples, seq_len=a.calib_seq_len)
        record["calibration_reduced"] = prefix_text(a.calib_text, tok, a.grid_calib_samples * a.grid_calib_seq_len,
                                                    small_file, check=ids)
        del record["calibration_reduced"]["_ids"]
        record["calibration_reduced"].update(samples=a.grid_calib_samples, seq_len=a.grid_calib_seq_len)
        eval_text = "wikitext-2"
        if tiny:
            eval_text = str(work / "evaluation.txt")
            record["evaluation_text"] = prefix_text("wikitext-2", tok, a.eval_windows * a.eval_seq_len,
                                                    Path(eval_text), check=False)
            del record["evaluation_text"]["_ids"]
        base = {"model": model_spec, "device": a.device,
                "calibration": {"text": str(cal_file), "samples": a.calib_samples, "seq_len": a.calib_seq_len,
                                "seed": 0},
                "evaluation": {"text": eval_text, "seq_len": a.eval_seq_len, "max_windows": a.eval_windows}}
        runs: dict[str, dict] = {}  # label -> the `nmx run` summary of every evaluated point

        def nmx_run(label: str, activations: Any) -> dict:
            from nmx.recipe import load_recipe
            from nmx.runner import run

            qz = {"weights": a.weights, **({"activations": activations} if activations else {})}
            t0 = time.perf_counter()
            r = run(load_recipe(base={**base, "quantization": qz}), loaded=working())
            b = r["bops"]
            row = {"activations": activations, "perplexity": r["perplexity"], "bops_per_token": b["per_token"],
                   "a16_bops_per_token": b["a16_per_token"], "bops_reduction_vs_a16": b["reduction_vs_a16"],
                   "bops_by_tensor_type": b["by_tensor_type"], "windows": r["protocol"]["windows"],
                   "eval_tokens": r["eval_tokens"], "compress_s": r["compress_s"],
                   "wall_s": time.perf_counter() - t0}
            runs[label] = row
            print(f"{label:28s} perplexity {r['perplexity']:10.4f}  {b['per_token'] * 1e-9:8.4g} GBOPs/token  "
                  f"({row['wall_s']:.1f} s)", flush=True)
            return row

        # ---- A16: the reference, and the clock every estimate uses ------------------------------------
        a16 = nmx_run("A16", None)
        t_run = a16["wall_s"]
        t_token = max(a16["wall_s"] - a16["compress_s"], 1e-6) / (a.eval_windows * a.eval_seq_len)
        t_calib = t_token * a.calib_samples * a.calib_seq_len
        record["timing_model"] = {"eval_run_s": t_run, "s_per_eval_token": t_token, "calib_eval_s_estimate": t_calib}
        record["formats"] = {"rows": {"A16": {**a16, "bits_per_activation_element": 16.0}}}
        _write(out, record)

        # ---- 1: the searches --------------------------------------------------------------------------
        if "1" in items:
            record["search"] = {}
            search_dir.mkdir(parents=True, exist_ok=True)
            for tol in sorted(tolerances, reverse=True):  # the looser first: the shorter search
                key = f"{tol:g}"
                record["search"][key] = run_one_search(a, base, tol, budget, t_calib, t_run, working, nmx_run,
                                                       search_dir / f"tol{key}")
                if "skipped" in record["search"][key]:
                    record["skipped"].append(f"1: search at tolerance {key}")
                _write(out, record)

        # ---- 2: fixed formats -------------------------------------------------------------------------
        if "2" in items:
            fixed = {**{k: v for k, v in FIXED.items() if v}, **{f"BFP m{m}": f"bfp_m{m}_g{a.group}"
                                                                   for m in range(4, 9)}}
            from nmx.quant.bops import operand_bits

            for label, fmt in fixed.items():
                skip = budget.skip(t_run)
                if skip:
                    record["formats"]["rows"][label] = {"activations": fmt, **skip}
                    record["skipped"].append(f"2: {label}")
                else:
                    record["formats"]["rows"][label] = {**nmx_run(label, fmt),
                                                        "bits_per_activation_element": operand_bits(fmt)}
                _write(out, record)
            record["formats"]["note"] = (
                "bits per activation element include the scales (nmx.quant.bops.operand_bits); int8 has one fp16 scale "
                "per token, i.e. 16 / K more bits on a K-wide input, which the BOPs do not count")

        # ---- 4 and the sensitivity scan: reduced calibration --------------------------------------------
        if "4" in items or "sensitivity" in items:
            reduced = {**base, "calibration": {"text": str(small_file), "samples": a.grid_calib_samples,
                                               "seq_len": a.grid_calib_seq_len, "seed": 0}}
            if "4" in items:
                record["search_cost"] = grid_vs_greedy(a, reduced, grid, budget, working)
                if "skipped" in record["search_cost"]:
                    record["skipped"].append("4: greedy vs exhaustive")
                _write(out, record)
            if "sensitivity" in items:
                record["sensitivity"] = sensitivity(a, reduced, budget, working, record.get("search_cost"), t_token)
                if "skipped" in record["sensitivity"]:
                    record["skipped"].append("sensitivity scan")
                _write(out, record)

        # ---- 3: the co-design picture -----------------------------------------------------------------
        if "3" in items:
            t0 = time.perf_counter()
            record["codesign"] = codesign(a, record, runs, pristine, plot, search_dir)
            record["codesign"]["wall_s"] = time.perf_counter() - t0
            _write(out, record)
        record["answer"] = answer(record)
        record["wall_s"] = time.perf_counter() - t_all
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _write(out, record)
    print(json.dumps({"answer": {k: v for k, v in record["answer"].items() if k != "sources"},
                      "skipped": record["skipped"]}, indent=1))
    print(f"wrote {out} ({record['wall_s']:.0f} s)")
    return record


def run_one_search(a: argparse.Namespace, base: dict, tol: float, budget: Budget, t_calib: float, t_run: float,
                   working: Callable, nmx_run: Callable, folder: Path) -> dict:
    """Item 1 at one tolerance: `nmx search-precision`'s search, its summary written to `folder`, then the chosen
    recipe through `nmx run` on the evaluation text."""
    import yaml

    from nmx.eval.precision_run import run_search
    from nmx.eval.precision_search import SearchError
    from nmx.io import write_json_atomic, write_text_atomic
    from nmx.recipe import load_recipe

    # fit: 1 reference + max_iter calibration evaluations + the chosen point's evaluation run
    max_iter = min(a.max_iter, int((budget.left() - t_run) / max(t_calib, 1e-9)) - 1)
    if max_iter < 12:  # 10 uniform starts + a couple of steps: less is no search
        return {"skipped": f"budget: {max(budget.left(), 0):.0f} s left, a calibration evaluation ~{t_calib:.2f} s",
                "estimate_s": (min(a.max_iter, 16) + 1) * t_calib + t_run}
    recipe = load_recipe(base={**base, "quantization": {"weights": a.weights, "activations": f"bfp_m8_g{a.group}"}})
    t0 = time.perf_counter()
    try:
        s = run_search(recipe, tol, max_iter=max_iter, loaded=working())
    except SearchError as err:
        return {"tolerance": tol, "error": str(err), "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "summary.json", s)
    write_text_atomic(folder / "recipe.yaml", yaml.safe_dump(s["recipe"], sort_keys=False))
    label = f"search {tol:g}: " + "/".join(str(s["chosen_lengths"][t]) for t in TYPES)
    out = {"tolerance": tol, "chosen_lengths": s["chosen_lengths"], "chosen_bops_per_token": s["chosen_bops_per_token"],
           "a16_bops_per_token": s["a16_bops_per_token"], "bops_reduction_vs_a16": s["bops_reduction_vs_a16"],
           "iterations": s["iterations"], "evaluations": s["evaluations"], "stopped": s["stopped"],
           "max_iter": max_iter, "max_iter_reduced_by_budget": max_iter < a.max_iter,
           "calibration_ppl_a16": s["reference_ppl"], "calibration_ppl_chosen": s["best"]["quality"],
           "calibration_limit": s["limit"], "wall_s": wall, "search_wall_s": s["wall_s"], "summary": str(folder),
           "points": [{"lengths": list(p["lengths"]), "bops": p["bops"], "calibration_ppl": p["quality"],
                       "accepted": p["accepted"]} for p in s["points"]]}
    acts = s["recipe"]["quantization"]["activations"]
    ev = nmx_run(label, acts)
    out["evaluation"] = {"label": label, "perplexity": ev["perplexity"], "bops_per_token": ev["bops_per_token"],
                         "bops_reduction_vs_a16": ev["bops_reduction_vs_a16"], "wall_s": ev["wall_s"]}
    print(f"search {tol:g}: {out['chosen_lengths']} {out['bops_reduction_vs_a16']:.3f}x fewer BOPs, "
          f"{out['iterations']} iterations, {wall:.1f} s", flush=True)
    return out


def _grid_evaluator(a: argparse.Namespace, reduced: dict, working: Callable) -> dict[str, Any]:
    """BOPs and calibration-perplexity functions of mantissa lengths on the reduced calibration set, built as
    nmx.eval.precision_run.run_search builds its own (same linears, same hooks, same BOPs), but with the
    grid's lower bound on the lengths, which `nmx search-precision` does not expose."""
    import torch

    from nmx.eval.perplexity import perplexity
    from nmx.eval.text import load_text
    from nmx.model.compress import compress
    from nmx.model.layers import match_linears
    from nmx.quant import attach_activation_formats
    from nmx.quant.bops import operand_bits
    from nmx.quant.tensor_types import TENSOR_TYPES, activation_formats, resolve_tensor_types
    from nmx.recipe import load_recipe

    assert tuple(TENSOR_TYPES) == TYPES
    loaded = working()
    recipe = load_recipe(base={**reduced, "quantization": {"weights": a.weights}})
    compress(loaded, recipe)
    model = loaded.model
    types = resolve_tensor_types(model)
    g = a.group
    probe = activation_formats(model, {t: f"bfp_m8_g{g}" for t in TYPES}, None)
    modules = dict(model.named_modules())
    w_targets = set(match_linears(model, recipe.quantization.targets))
    mw = {t: 0.0 for t in TYPES}
    for name in probe:
        mod = modules[name]
        mw[types.type_of(name)] += float(mod.in_features) * mod.out_features * operand_bits(
            a.weights if name in w_targets else None)
    cal = load_text(reduced["calibration"]["text"])
    samples, seq_len = reduced["calibration"]["samples"], reduced["calibration"]["seq_len"]

    def bops(lengths) -> float:
        return sum(mw[t] * operand_bits(f"bfp_m{m}_g{g}" if m is not None else None)
                   for t, m in zip(TYPES, lengths, strict=True))

    members = {t: types.linears(t) for t in TYPES}  # what activation_formats resolves on every call, once
    assert {n for t in TYPES for n in members[t]} == set(probe)

    def evaluate(lengths) -> float:
        by_name = {n: f"bfp_m{m}_g{g}" for t, m in zip(TYPES, lengths, strict=True) if m is not None
                   for n in members[t]}
        hooks = attach_activation_formats(model, by_name) if by_name else []
        try:
            with torch.no_grad():
                return perplexity(model, loaded.tokenizer, cal, seq_len, samples)["perplexity"]
        finally:
            for h in hooks:
                h.remove()

    return {"bops": bops, "evaluate": evaluate, "loaded": loaded}


def grid_vs_greedy(a: argparse.Namespace, reduced: dict, grid: list[int], budget: Budget, working: Callable) -> dict:
    """Item 4: the BOPs-greedy search (starts = the grid's uniform points, lengths >= the grid's least) against
    evaluating every point of grid^4, on the reduced calibration set, at --grid-tolerance."""
    from nmx.eval.precision_search import Criterion, SearchError, greedy_search

    t0 = time.perf_counter()
    ev = _grid_evaluator(a, reduced, working)
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    ref = float(ev["evaluate"]((None,) * 4))
    t_eval = time.perf_counter() - t1
    n_grid = len(grid) ** 4
    out: dict[str, Any] = {"grid": grid, "points": n_grid, "tolerance": a.grid_tolerance,
                           "calibration": {"samples": a.grid_calib_samples, "seq_len": a.grid_calib_seq_len},
                           "reference_ppl": ref, "setup_s": setup_s, "evaluation_s_measured": t_eval,
                           "note": "evaluations count the points scored; both share one A16 reference evaluation "
                                   "(not counted); greedy: starts = the grid's uniform points, lengths >= its least",
                           "a16_bops_per_token": ev["bops"]((None,) * 4)}
    skip = budget.skip((n_grid + a.max_iter) * t_eval)
    if skip:
        return {**out, **skip}
    crit = Criterion(ref, a.grid_tolerance)
    t1 = time.perf_counter()
    try:
        g = greedy_search(TYPES, ev["bops"], ev["evaluate"], crit, starts=grid, max_iter=a.max_iter, min_bits=grid[0])
    except SearchError as err:
        g = None
        out["greedy"] = {"error": str(err)}
    greedy_s = time.perf_counter() - t1
    t1 = time.perf_counter()
    table = []
    for cand in itertools.product(grid, repeat=4):
        q = float(ev["evaluate"](cand))
        table.append({"lengths": list(cand), "bops": float(ev["bops"](cand)), "calibration_ppl": q,
                      "accepted": crit.ok(q)})
    exhaustive_s = time.perf_counter() - t1
    ok = [r for r in table if r["accepted"]]
    best = min(ok, key=lambda r: r["bops"]) if ok else None  # ties: the first in product order
    order = sorted(range(n_grid), key=lambda i: table[i]["bops"])
    out["exhaustive"] = {"evaluations": n_grid, "wall_s": exhaustive_s, "best": best,
                         "accepted_points": len(ok),
                         # a BOPs-sorted scan stopping at its first accepted point: the cheapest exhaustive method
                         "sorted_scan_evaluations": (next(k for k, i in enumerate(order) if table[i]["accepted"]) + 1)
                         if ok else n_grid}
    if g is not None:
        by = {tuple(r["lengths"]): r for r in table}
        diffs = [abs(p.quality - by[p.lengths]["calibration_ppl"]) / max(abs(p.quality), 1e-300)
                 for p in g.points if p.lengths in by]
        out["greedy"] = {"evaluations": g.iterations, "wall_s": greedy_s, "stopped": g.stopped,
                         "best": {"lengths": list(g.best.lengths), "bops": g.best.bops,
                                  "calibration_ppl": g.best.quality},
                         "points": [{"lengths": list(p.lengths), "bops": p.bops, "calibration_ppl": p.quality,
                                     "accepted": p.accepted} for p in g.points],
                         "max_rel_diff_vs_exhaustive_same_points": max(diffs) if diffs else None}
        if best is not None:
            out["agree"] = g.best.bops == best["bops"]
            out["same_lengths"] = list(g.best.lengths) == best["lengths"]
            out["greedy_bops_over_exhaustive"] = g.best.bops / best["bops"]
        out["evaluations_ratio"] = n_grid / g.iterations
        out["wall_ratio"] = exhaustive_s / greedy_s if greedy_s > 0 else None
    out["table"] = table
    print(f"grid {grid}^4: greedy {out['greedy'].get('evaluations')} evaluations {greedy_s:.1f} s, exhaustive "
          f"{n_grid} evaluations {exhaustive_s:.1f} s, agree: {out.get('agree')}", flush=True)
    return out


def sensitivity(a: argparse.Namespace, reduced: dict, budget: Budget, working: Callable, grid_rec: dict | None,
                t_token: float) -> dict:
    """`nmx search-precision --sensitivity` (one tensor type at a time, 13 .. 1 bits, the others unquantized) on
    the reduced calibration set at --grid-tolerance."""
    from nmx.eval.precision_run import run_search
    from nmx.recipe import load_recipe

    t_eval = (grid_rec or {}).get("evaluation_s_measured") or t_token * a.grid_calib_samples * a.grid_calib_seq_len
    skip = budget.skip(4 * 13 * t_eval)
    if skip:
        return skip
    recipe = load_recipe(base={**reduced, "quantization": {"weights": a.weights, "activations": f"bfp_m8_g{a.group}"}})
    t0 = time.perf_counter()
    s = run_search(recipe, a.grid_tolerance, sensitivity=True, loaded=working())
    return {"tolerance": a.grid_tolerance, "shortest_passing": s["shortest_passing"], "evaluations": s["evaluations"],
            "reference_ppl": s["reference_ppl"], "wall_s": time.perf_counter() - t0,
            "points": [{"varied": p["varied"], "lengths": list(p["lengths"]), "calibration_ppl": p["quality"],
                        "accepted": p["accepted"]} for p in s["points"]]}


def codesign(a: argparse.Namespace, record: dict, runs: dict[str, dict], pristine: Any, plot: Path,
             search_dir: Path) -> dict:
    """Item 3 (module doc), through nmx.hw.explore's join."""
    from nmx.hw.accel_spec import load_accel
    from nmx.hw.explore import mark_fronts, points_vs_cost, search_vs_cost
    from nmx.hw.targets import get_target
    from nmx.hw.workload import shape_from_config

    shape = shape_from_config(pristine.model.config, name=pristine.name)
    targets = {k: get_target(load_accel(HW / f)) for k, f in DESIGNS.items()}
    recipe = {"quantization": {"weights": a.weights}}
    points = [{"label": label, "activations": r["activations"], "perplexity": r["perplexity"],
               "perplexity_kind": "evaluation", "bops_per_token": r["bops_per_token"],
               "searched": label.startswith("search"), "chosen": label.startswith("search")}
              for label, r in runs.items()]
    phases = {"decode": {"batch": 1, "context": a.context}, "prefill": {"batch": 1, "tokens": a.context}}
    out: dict[str, Any] = {"designs": {k: t.name for k, t in targets.items()}, "shape": shape.name, "phases": {}}
    for phase, kw in phases.items():
        native = []
        for p in points:
            d = design_of(p["activations"])
            native += points_vs_cost([{**p, "design": d}], recipe, shape, [targets[d]], phase, **kw)
        mark_fronts(native)
        base = next(r for r in native if r["label"] == "A16")
        for r in native:
            r["speedup_vs_a16_fp16"] = base["latency_s"] / r["latency_s"]
            r["energy_efficiency_vs_a16_fp16"] = base["energy_pj"] / r["energy_pj"]
            r["linears_speedup_vs_a16_fp16"] = base["linears_latency_s"] / r["linears_latency_s"]
            r["linears_energy_efficiency_vs_a16_fp16"] = base["linears_energy_pj"] / r["linears_energy_pj"]
        matrix = points_vs_cost(points, recipe, shape, list(targets.values()), phase, **kw)
        out["phases"][phase] = {
            "rows": native, "pareto": [r["label"] for r in sorted(native, key=lambda r: r["latency_s"]) if r["pareto"]],
            "every_point_on_every_design": [{k: r[k] for k in ("label", "target", "latency_s", "energy_pj",
                                                               "linears_latency_s", "linears_energy_pj")}
                                            for r in matrix]}
    # the searched points against Anda's published gains (over A16 on the FP-FP baseline)
    vs = {}
    for tol, s in (record.get("search") or {}).items():
        ev = (s or {}).get("evaluation")
        if not ev:
            continue
        entry = {"paper": PAPER.get(tol)}
        for phase in phases:
            r = next(r for r in out["phases"][phase]["rows"] if r["label"] == ev["label"])
            entry[phase] = {k: r[k] for k in ("speedup_vs_a16_fp16", "energy_efficiency_vs_a16_fp16",
                                              "linears_speedup_vs_a16_fp16", "linears_energy_efficiency_vs_a16_fp16")}
        vs[tol] = entry
    out["searched_vs_paper"] = vs
    # `nmx explore --search` on the searches' summaries: their calibration points on the bit-serial and FP designs
    summaries = [search_dir / f"tol{tol}" for tol, s in (record.get("search") or {}).items() if s and "summary" in s]
    if summaries:
        designs = [HW / DESIGNS["bfp"], HW / DESIGNS["fp16"]]
        res = search_vs_cost(summaries, [load_accel(d) for d in designs], model=_config(pristine), phase="decode",
                             context=a.context)
        out["explore_search"] = {
            "command": "nmx explore " + " ".join(f"--search {s}" for s in summaries) + " " +
                       " ".join(f"--accel {d.relative_to(REPO)}" for d in designs) + f" --context {a.context}",
            "rows": len(res["rows"]),
            "pareto": [{k: res["rows"][i][k] for k in ("search", "label", "target", "perplexity", "latency_s",
                                                       "energy_pj")} for i in res["pareto"]]}
    try:
        draw(out, plot)
        out["plot"] = str(plot)
    except Exception as err:  # a figure is never worth the run
        out["plot_error"] = f"{type(err).__name__}: {err}"
    return out


def _config(pristine: Any) -> dict:
    return pristine.model.config.to_dict()


def draw(co: dict, path: Path) -> None:
    """Evaluation perplexity against latency and energy, decode and prefill, one colour per design."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = list(co["phases"])
    fig, axes = plt.subplots(len(phases), 2, figsize=(12, 4.6 * len(phases)), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    designs = list(co["designs"].values())
    for row, phase in zip(axes, phases, strict=True):
        rows = co["phases"][phase]["rows"]
        for ax, (key, scale, unit, front) in zip(row, (("latency_s", 1e3, "latency (ms)", "pareto_latency"),
                                                       ("energy_pj", 1e-9, "energy (mJ)", "pareto_energy")),
                                                 strict=True):
            for i, d in enumerate(designs):
                mine = [r for r in rows if r["target"] == d and math.isfinite(r["perplexity"])]
                if mine:
                    ax.scatter([r[key] * scale for r in mine], [r["perplexity"] for r in mine], s=30,
                               color=colours[i % len(colours)], label=d,
                               marker="*" if any(r.get("searched") for r in mine) else "o")
            on = sorted((r for r in rows if r.get(front)), key=lambda r: r[key])
            ax.step([r[key] * scale for r in on], [r["perplexity"] for r in on], where="post", color="red", lw=1,
                    label="Pareto front")
            for r in rows:
                if math.isfinite(r["perplexity"]):
                    ax.annotate(r["label"], (r[key] * scale, r["perplexity"]), fontsize=6, xytext=(3, 3),
                                textcoords="offset points")
            ax.set_xscale("log")
            ax.set_xlabel(f"{unit} per {phase} step")
            ax.set_ylabel("evaluation perplexity")
            ax.grid(True, which="both", alpha=0.3)
        row[0].legend(fontsize=7, loc="best")
    fig.suptitle("activation formats x their designs: perplexity vs cost (nmx.hw accelerator model)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
