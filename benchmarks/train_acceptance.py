"""Issue 12, acceptance runs 1-5: N:M sparse training of smollm2-135m, evaluated on WikiText-2 (test) at context
2048 on --eval-windows windows (default 16), every training run with the same token budget.

    python benchmarks/train_acceptance.py --out train_acceptance.json            # an H100: ~8 minutes
    python benchmarks/train_acceptance.py --out /tmp/tiny.json --tiny            # CPU smoke run: tiny random Llama
    python benchmarks/train_acceptance.py --out train_acceptance.json --plot curves.png   # summary + plot, no training

Runs (names as in the JSON):
  baselines (no training):  dense; one-shot wanda 2:4; one-shot sparsegpt 2:4; one-shot wanda 1:4;
                            wanda 2:4 then mxfp4 (prune-then-quantize)
  1  wanda24_kd, sparsegpt24_kd   one-shot 2:4, then masked fine-tuning (fixed masks) with KD from the dense model;
                                  summary: the fraction of the one-shot gap to dense recovered in log perplexity
  2  srste24_kd                   SR-STE from the dense weights to 2:4, KD
  3  direct14_kd, stepping24to14_kd   1:4 by SR-STE from dense directly, and 2:4 for the first half then 1:4;
                                  beside the one-shot wanda 1:4 baseline (claim to test: stepping beats direct)
  4  srste24_transposable_kd,     run 2 with transposable masks (Wᵀ N:M too: a sparse input-gradient GEMM), beside
     srste24_plain_kd             run 2's plain masks trained in the same call at the same step count
  5  wanda24_mxfp4_qat_kd         one-shot wanda 2:4, then KD fine-tuning through MXFP4 fake quant (STE);
     wanda24_kd_then_mxfp4        the same fine-tuning without the format, quantized once at the end;
                                  beside the no-training prune-then-quantize baseline

The token budget. A step is batch 8 x 512 tokens = 4096 tokens. On one H100 (bf16 autocast, fp32 master weights,
KD teacher forward), smollm2-135m's step is ~6·135e6·4096 ≈ 3.3 TFLOP for the student plus ~1.1 TFLOP for the
teacher; the 576-wide GEMMs run far below peak and 210 masked linears add launches, so we budget ~0.1 s per step
(an estimate, to be replaced by the measured `train_s` in the JSON). 300 steps (1.2M tokens per run) x 8 training
runs ≈ 240 s, plus ~5 evaluations of 16 x 2048 tokens per run, 5 baselines, model loads and Wanda/SparseGPT
calibration (64 windows of 2048) ≈ 200 s: about 7-8 minutes in all. The issue asks for >= 1000 steps for run 1:
`--steps 1000 --runs 1` does that alone in ~2-3 minutes. The JSON records the machine, the commands, the
measured wall time of every run and the per-step curves; "dense" is the dequantized Q4_1 checkpoint.

Across calls (a GPU call has a 10-minute limit): `--budget-s S` skips a baseline or run whose estimated time (the
measured seconds per training step of the runs before it, plus the measured overhead of a run) would pass S seconds
from the start, and records it under "skipped"; a later call with the same --out continues the same JSON: what is
already in it is kept and not run again (a different model, batch, sequence length or evaluation is refused).
Runs may have different step counts (`--steps` per call): each run records its own steps and tokens.
"""

from __future__ import annotations

import argparse
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


def _fail(message: str) -> None:
    """A user mistake: one line on stderr, exit code 2."""
    print(message, file=sys.stderr)
    sys.exit(2)


def _tiny_model(folder: Path) -> str:
    """nmx's tiny random Llama with a character tokenizer (the test suite's model), saved in `folder`."""
    from nmx.model.tiny import save_tiny_llama

    return save_tiny_llama(folder)


def _default_train_text() -> str:
    """Held out from the test split: WikiText-2 validation (tokenized release) where NMX_DATA_DIR has it, else the
    embedded tinyshakespeare."""
    data = os.environ.get("NMX_DATA_DIR")
    if data and (Path(data) / "text/wikitext-2/wiki.valid.tokens").is_file():
        return str(Path(data) / "text/wikitext-2/wiki.valid.tokens")
    return "tinyshakespeare"


def plan(a: argparse.Namespace, model: str) -> tuple[dict, dict]:
    """(baselines, training runs): name -> recipe dict."""
    ev = {"text": "wikitext-2", "seq_len": a.eval_seq_len, "max_windows": a.eval_windows}
    cal = {"text": "tinyshakespeare", "samples": a.calib_samples, "seq_len": a.calib_seq_len, "seed": 0}
    base = {"model": model, "device": a.device, "calibration": cal, "evaluation": ev}
    sp = lambda method, pattern: {"method": method, "pattern": pattern}  # noqa: E731
    mx = {"weights": "mxfp4"}
    baselines = {
        "dense": {**base},
        "oneshot_wanda24": {**base, "sparsity": sp("wanda", "2:4")},
        "oneshot_sparsegpt24": {**base, "sparsity": sp("sparsegpt", "2:4")},
        "oneshot_wanda14": {**base, "sparsity": sp("wanda", "1:4")},
        "oneshot_wanda24_mxfp4": {**base, "sparsity": sp("wanda", "2:4"), "quantization": mx},
    }
    tr = {"steps": a.steps, "batch_size": a.batch, "seq_len": a.seq_len, "text": a.train_text, "objective": "kd",
          "lr": a.lr, "lr_schedule": "cosine", "warmup_steps": max(1, a.steps // 20), "min_lr_ratio": 0.1,
          "weight_decay": 0.0, "beta2": 0.95, "grad_clip": 1.0, "seed": 0, "eval_every": max(1, a.steps // 4),
          "eval_windows": a.eval_windows, "measure_memory": a.device != "cpu", "bf16": True}
    half = a.steps // 2
    t = lambda **mask: {**tr, "mask": mask}  # noqa: E731
    runs = {
        "wanda24_kd": ("1", {**base, "sparsity": sp("wanda", "2:4"), "training": t(method="fixed")}),
        "sparsegpt24_kd": ("1", {**base, "sparsity": sp("sparsegpt", "2:4"), "training": t(method="fixed")}),
        "srste24_kd": ("2", {**base, "training": t(method="sr_ste", pattern="2:4")}),
        "direct14_kd": ("3", {**base, "training": t(method="sr_ste", pattern="1:4")}),
        "stepping24to14_kd": ("3", {**base, "training": t(method="sr_ste", schedule=[
            {"step": 0, "pattern": "2:4"}, {"step": half, "pattern": "1:4"}])}),
        # group 4 trains its own plain twin, so the two masks see the same steps whatever run 2's step count was
        "srste24_plain_kd": ("4", {**base, "training": t(method="sr_ste", pattern="2:4")}),
        "srste24_transposable_kd": ("4", {**base, "training": t(method="sr_ste", pattern="2:4", transposable=True)}),
        "wanda24_mxfp4_qat_kd": ("5", {**base, "sparsity": sp("wanda", "2:4"), "quantization": mx,
                                       "training": t(method="fixed")}),
        "wanda24_kd_then_mxfp4": ("5", {**base, "sparsity": sp("wanda", "2:4"), "quantization": mx,
                                        "training": {**t(method="fixed"), "quant_aware": False}}),
    }
    wanted = set(a.runs.split(","))
    runs = {k: v for k, (group, v) in runs.items() if group in wanted}
    need = {"dense"} | ({"oneshot_wanda24", "oneshot_sparsegpt24"} if "1" in wanted else set()) \
        | ({"oneshot_wanda14"} if "3" in wanted else set()) | ({"oneshot_wanda24_mxfp4"} if "5" in wanted else set())
    return {k: v for k, v in baselines.items() if k in need}, runs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file for the per-run curves and final perplexities")
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: a tiny random Llama, a few steps")
    p.add_argument("--model", default="smollm2-135m", help="model (default smollm2-135m)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (default: auto; cpu with --tiny)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 300; 6 with --tiny)")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default 8; 2 with --tiny)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 512; 32 with --tiny)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (AdamW, cosine to 10%%)")
    p.add_argument("--eval-windows", type=int, default=None, help="WikiText-2 windows (default 16; 2 with --tiny)")
    p.add_argument("--eval-seq-len", type=int, default=None, help="evaluation context (default 2048; 64 with --tiny)")
    p.add_argument("--calib-samples", type=int, default=None, help="Wanda/SparseGPT windows (default 64)")
    p.add_argument("--calib-seq-len", type=int, default=None, help="calibration window (default 2048)")
    p.add_argument("--train-text", default=None, help="training text (default: WikiText-2 valid if in NMX_DATA_DIR)")
    p.add_argument("--runs", default="1,2,3,4,5", help="acceptance groups to run, e.g. 1 or 3,4")
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip what would not finish within this many seconds (estimated from the runs before it)")
    p.add_argument("--plot", default=None,
                   help="no training: recompute --out's summary, print it and plot its perplexity-vs-tokens curves")
    a = p.parse_args(argv)
    if a.plot:
        try:
            record = json.loads(Path(a.out).read_text())
            record["summary"] = summarize(record)  # derived: recomputed by this version's rules
            plot(record, Path(a.plot))
        except (OSError, ValueError, KeyError) as err:
            _fail(f"{a.out}: cannot plot it ({err})")
        _write(a.out, record)
        print(json.dumps(record["summary"], indent=1))
        print(f"wrote {a.plot}; summary recomputed in {a.out}")
        return
    tiny = a.tiny
    defaults = dict(device="cpu" if tiny else "auto", steps=6 if tiny else 300, batch=2 if tiny else 8,
                    seq_len=32 if tiny else 512, eval_windows=2 if tiny else 16, eval_seq_len=64 if tiny else 2048,
                    calib_samples=4 if tiny else 64, calib_seq_len=64 if tiny else 2048,
                    train_text="tinyshakespeare" if tiny else _default_train_text())
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")

    import torch

    from nmx.recipe import load_recipe
    from nmx.runner import run
    from nmx.train import train

    work = Path(tempfile.mkdtemp(prefix="nmx-train-acceptance-"))
    t_all = time.perf_counter()
    try:
        model = _tiny_model(work / "tiny-llama") if tiny else a.model
        baselines, runs = plan(a, model)
        record: dict = {
            "command": " ".join([sys.executable, sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": {"python": platform.python_version(), "torch": torch.__version__, "host": platform.node(),
                        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
            "config": {k: getattr(a, k) for k in ("model", "device", "steps", "batch", "seq_len", "lr", "eval_windows",
                                                   "eval_seq_len", "calib_samples", "calib_seq_len", "train_text")},
            "tokens_per_run": a.steps * a.batch * a.seq_len,
            "note": ("tiny random Llama" if tiny else
                     "dense = the dequantized Q4_1 checkpoint of SmolLM2-135M-Instruct"),
            "baselines": {}, "runs": {},
        }
        record["config"]["model"] = "tiny random Llama" if tiny else a.model
        record = _continue(a.out, record)
        budget = Budget(a.budget_s, t_all)
        for done in record["runs"].values():  # estimates from an earlier call's runs, on the same kind of machine
            if done.get("gpu") == record["machine"]["gpu"] and done.get("steps"):
                budget.learn(done["steps"], done["train_s"], done["wall_s"])
        for name, rd in baselines.items():
            if name in record["baselines"]:
                continue
            if not budget.allows(name, budget.baseline_s, record):
                continue
            t0 = time.perf_counter()
            r = run(load_recipe(base=rd))
            record["baselines"][name] = {"perplexity": r["perplexity"], "weight_sparsity": r["weight_sparsity"],
                                         "bits_per_weight": r["bits_per_weight"], "wall_s": time.perf_counter() - t0,
                                         "windows": r["protocol"]["windows"]}
            budget.baseline_s = max(budget.baseline_s or 0.0, time.perf_counter() - t0)
            print(f"{name:28s} perplexity {r['perplexity']:10.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
            _write(a.out, record)  # after every baseline and run: a cut-off run keeps what it measured
        for name, rd in runs.items():
            if name in record["runs"]:
                continue
            if not budget.allows(name, budget.run_estimate(a.steps), record):
                continue
            t0 = time.perf_counter()
            out = work / name
            r = train(load_recipe(base=rd), out)
            log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
            tr = r["training"]
            record["runs"][name] = {
                "final_perplexity": r["perplexity"], "weight_sparsity": r["weight_sparsity"],
                "bits_per_weight": r["bits_per_weight"], "eval_curve": tr["curve"],
                "loss": [[x["step"], x["loss"]] for x in log], "flip_rate": [[x["step"], x["flip_rate"]] for x in log],
                "pattern": [[x["step"], x["pattern"]] for x in log], "tokens": tr["tokens"], "train_s": tr["train_s"],
                "tokens_per_s": tr["tokens_per_s"], "peak_memory": tr["peak_memory"], "one_shot": tr["one_shot"],
                "wall_s": time.perf_counter() - t0, "recipe": r["recipe"], "steps": a.steps,
                "gpu": record["machine"]["gpu"],
            }
            budget.learn(a.steps, tr["train_s"], time.perf_counter() - t0)
            print(f"{name:28s} perplexity {r['perplexity']:10.3f}  ({tr['train_s']:.0f} s training, "
                  f"{time.perf_counter() - t0:.0f} s in all)", flush=True)
            _write(a.out, record)
        record["summary"] = summarize(record)
        record["wall_s"] = time.perf_counter() - t_all
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _write(a.out, record)
    print(json.dumps(record["summary"], indent=1))
    print(f"wrote {a.out} ({record['wall_s']:.0f} s)")


class Budget:
    """Skips what would not finish within `limit_s` of `start`, from measured times (nothing is skipped before
    there is a measurement to go by, except when the limit is already passed)."""

    def __init__(self, limit_s: float | None, start: float):
        self.limit_s, self.start = limit_s, start
        self.baseline_s: float | None = None
        self.step_s: float | None = None  # training seconds per step, the largest seen
        self.overhead_s: float | None = None  # a run's time outside its training steps, the largest seen

    def learn(self, steps: int, train_s: float, wall_s: float) -> None:
        self.step_s = max(self.step_s or 0.0, train_s / max(1, steps))
        self.overhead_s = max(self.overhead_s or 0.0, wall_s - train_s)

    def run_estimate(self, steps: int) -> float | None:
        if self.step_s is None:
            return None
        return self.step_s * steps + (self.overhead_s or 0.0)

    def allows(self, name: str, estimate_s: float | None, record: dict) -> bool:
        if self.limit_s is None:
            return True
        left = self.limit_s - (time.perf_counter() - self.start)
        if left > (estimate_s or 0.0) and left > 0:
            return True
        record.setdefault("skipped", {})[name] = (f"estimated {estimate_s:.0f} s, {max(left, 0):.0f} s left of "
                                                  f"--budget-s {self.limit_s:.0f}" if estimate_s is not None
                                                  else f"--budget-s {self.limit_s:.0f} already spent")
        print(f"{name:28s} skipped: {record['skipped'][name]}", flush=True)
        return False


#: the settings a continued JSON must share with this call (steps may differ: each run records its own)
SAME = ("model", "batch", "seq_len", "eval_windows", "eval_seq_len", "calib_samples", "calib_seq_len", "train_text")


def _continue(path: str, record: dict) -> dict:
    """The record to write: this call's, carrying over the baselines and runs of an earlier call's JSON at `path`."""
    out = Path(path)
    if not out.is_file():
        return record
    try:
        old = json.loads(out.read_text())
    except (OSError, ValueError) as err:
        _fail(f"{out}: cannot continue it ({err}); remove it or choose another --out")
    differ = [k for k in SAME if old.get("config", {}).get(k) != record["config"].get(k)]
    if differ:
        _fail(f"{out} was written with other settings ({', '.join(differ)}); remove it or choose another --out")
    record["baselines"], record["runs"] = old.get("baselines", {}), old.get("runs", {})
    record["earlier_calls"] = old.get("earlier_calls", []) + [
        {k: old.get(k) for k in ("command", "date", "machine", "wall_s", "skipped")}]
    return record


def _write(path: str, record: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out)


def summarize(r: dict) -> dict:
    b, runs = r["baselines"], r["runs"]
    ppl = lambda name: (runs.get(name) or {}).get("final_perplexity")  # noqa: E731
    out: dict = {}
    dense = b.get("dense", {}).get("perplexity")

    def recovered(trained, oneshot):
        if None in (dense, trained, oneshot) or oneshot <= dense:
            return None
        return (math.log(oneshot) - math.log(trained)) / (math.log(oneshot) - math.log(dense))

    for run_name, base in (("wanda24_kd", "oneshot_wanda24"), ("sparsegpt24_kd", "oneshot_sparsegpt24")):
        if run_name in runs:
            g = recovered(ppl(run_name), b[base]["perplexity"])
            out[f"1_{run_name}_gap_recovered"] = g
            out[f"1_{run_name}_meets_70pct"] = None if g is None else g >= 0.7
    if "srste24_kd" in runs:
        out["2_srste24_vs_wanda24_kd"] = [ppl("srste24_kd"), ppl("wanda24_kd")]
    if "direct14_kd" in runs and "stepping24to14_kd" in runs:
        out["3_oneshot14_direct14_stepping"] = [b.get("oneshot_wanda14", {}).get("perplexity"), ppl("direct14_kd"),
                                                ppl("stepping24to14_kd")]
        out["3_stepping_beats_direct"] = ppl("stepping24to14_kd") < ppl("direct14_kd")
    if "srste24_transposable_kd" in runs:
        # only against a plain SR-STE run of the same step count (the same tokens and learning-rate schedule)
        steps = runs["srste24_transposable_kd"].get("steps")
        plain = next((n for n in ("srste24_plain_kd", "srste24_kd") if n in runs and runs[n].get("steps") == steps),
                     None)
        out["4_transposable_over_plain_ppl_ratio"] = (None if plain is None else
                                                      ppl("srste24_transposable_kd") / ppl(plain))
    if "wanda24_mxfp4_qat_kd" in runs:
        out["5_qat_vs_train_then_quantize_vs_prune_then_quantize"] = [
            ppl("wanda24_mxfp4_qat_kd"), ppl("wanda24_kd_then_mxfp4"),
            b.get("oneshot_wanda24_mxfp4", {}).get("perplexity")]
    out["dense"] = dense
    return out


def plot(record: dict, path: Path) -> None:
    """Evaluation perplexity against training tokens, one panel per acceptance group (a star: the final model), the
    one-shot baselines and dense as horizontal lines (log scale: the 1:4 runs start in the thousands)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b, runs = record["baselines"], record["runs"]
    tokens_per_step = record["config"]["batch"] * record["config"]["seq_len"]
    panels = {"1-2: 2:4": ["wanda24_kd", "sparsegpt24_kd", "srste24_kd"],
              "3: 1:4": ["direct14_kd", "stepping24to14_kd"],
              "4: transposable": ["srste24_plain_kd", "srste24_transposable_kd"],
              "5: 2:4 + MXFP4": ["wanda24_mxfp4_qat_kd", "wanda24_kd_then_mxfp4"]}
    lines = {"1-2: 2:4": ["oneshot_wanda24", "oneshot_sparsegpt24"], "3: 1:4": ["oneshot_wanda14"],
             "5: 2:4 + MXFP4": ["oneshot_wanda24_mxfp4"]}
    shown = [k for k, names in panels.items() if any(n in runs for n in names)]
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(4.2 * max(1, len(shown)), 3.6), squeeze=False)
    for ax, key in zip(axes[0], shown, strict=True):
        for name in panels[key]:
            if name in runs:
                r = runs[name]
                pts = [(c["step"] * tokens_per_step / 1e6, c["eval_perplexity"]) for c in r["eval_curve"]]
                line, = ax.plot(*zip(*pts, strict=True), marker="o", label=name)
                # the final model (for train-then-quantize: after the quantization the curve does not include)
                ax.plot(r["tokens"] / 1e6, r["final_perplexity"], marker="*", ms=12, color=line.get_color())
        for i, name in enumerate(["dense", *lines.get(key, [])]):
            if name in b:
                ax.axhline(b[name]["perplexity"], color=f"C{7 + i % 3}", ls="--", lw=1,
                           label=f"{name} {b[name]['perplexity']:.4g}")
        ax.set_yscale("log")
        ax.set_xlabel("training tokens (M)")
        ax.set_title(key)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("WikiText-2 perplexity")
    fig.suptitle(f"{record['config']['model']}: N:M training ({(record.get('machine') or {}).get('gpu') or 'CPU'})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
