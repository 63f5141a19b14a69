"""The `nmx` command: parses flags, calls the library, prints. No logic lives here."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console

import nmx
from nmx.errors import NmxError


def _plain_argument_usage() -> None:
    """Typer 0.29 prints arguments as `{RECIPE}`, `{FORMAT...}...` and `RECIPE <path>`; nmx's help
    reads like other Unix tools: `RECIPE`, `FORMAT...`, `[RESULT_DIR]...`."""
    from typer.core import TyperArgument

    def usage(self) -> str:
        name = self.display_name_raw
        if self.nargs != 1 and not name.endswith("..."):
            name += "..."
        return name if self.required else f"[{name}]"

    TyperArgument._usage_display_name = usage
    TyperArgument.display_type_rich = lambda self, ctx: None
    TyperArgument._rich_display_name = lambda self: self.display_name_raw


_plain_argument_usage()

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="nmx: N:M sparsity, number formats and KV-cache compression for LLM inference, "
    "priced in accuracy and on hardware.",
)
console = Console(width=max(120, shutil.get_terminal_size().columns))
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nmx {nmx.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    _state["debug"] = debug


def _json_safe(v):
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


def _print_json(obj) -> None:
    typer.echo(json.dumps(_json_safe(obj), indent=2))


@app.command()
def formats(as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table.")) -> None:
    """List the number formats: bits per element, range, block and scale."""
    from nmx.formats import get, names
    from nmx.report.tables import formats_table

    rows = [get(n).describe() for n in names()]
    if as_json:
        _print_json(rows)
    else:
        console.print(formats_table(rows))
        console.print("Any member of a family works too, e.g. int3_g64, mxfp6_e2m3_g16_rceil, bfp_m5_g32, fp5_e2m2, "
                  "mxfp4_sr (stochastic rounding); see `help(nmx.formats.registry)`.")


def _tensor(tensor: Optional[str]):
    from nmx.eval.tensors import load_tensor, synthetic_activation

    if tensor:
        return load_tensor(tensor), tensor
    return synthetic_activation(), "synthetic heavy-tailed 256x4096 tensor with outlier channels (seed 0)"


@app.command("quant-error")
def quant_error(
    format_names: List[str] = typer.Argument(..., metavar="FORMAT...", help="Format names (see `nmx formats`)."),
    tensor: Optional[str] = typer.Option(None, "--tensor", metavar="FILE.safetensors:NAME",
                                         help="A tensor from a safetensors file (default: synthetic)."),
    dim: int = typer.Option(-1, "--dim", help="Dimension the blocks run along (the reduction dim)."),
    seed: int = typer.Option(0, "--seed", help="Seed for stochastic rounding."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """SQNR (dB), MSE and max error of each format on a tensor."""
    from nmx.eval.metrics import format_errors
    from nmx.formats import get
    from nmx.report.tables import quant_error_table

    for name in format_names:  # fail on a bad name before any work
        get(name)
    x, label = _tensor(tensor)
    rows = format_errors(x, format_names, dim=dim, seed=seed)
    if as_json:
        _print_json(rows)
    else:
        console.print(quant_error_table(rows, f"quantization error on {label}, shape {tuple(x.shape)}"))


OVERWRITE_HELP = "Replace an --out folder that already holds an nmx result (whole; never mixed)."


@app.command()
def demo(
    out: Path = typer.Option(Path("nmx-demo"), "--out", metavar="DIR",
                             help="Folder for the study's table, plot and results (new, empty, or --overwrite)."),
    windows: int = typer.Option(4, "--windows", min=1, help="WikiText-2 windows of 2048 tokens to score per "
                                "configuration."),
    calib_samples: int = typer.Option(32, "--calib-samples", min=1,
                                      help="Calibration windows (of 512 tokens) for Wanda."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """The co-design study on SmolLM2-135M: N:M sparsity and MXFP4 against perplexity, bits and decode cost."""
    from nmx.demo import study

    with _Progress() as progress:
        rows = study(out, windows=windows, calib_samples=calib_samples, progress=progress, overwrite=overwrite)
    from rich.table import Table

    t = Table(title=f"co-design study: smollm2-135m, WikiText-2, {windows} windows of 2048 tokens; "
                    "one decode step (batch 1, 2048 cached) priced per target")
    targets = list(rows[0]["decode"])
    for col in ("configuration", "perplexity", "bits/weight", "weight sparsity",
                *[f"{n} ms" + (" / mJ" if rows[0]["decode"][n]["energy_pj"] is not None else "") for n in targets]):
        t.add_column(col, justify="left" if col == "configuration" else "right")
    for r in rows:
        t.add_row(r["config"], f"{r['perplexity']:.3f}", f"{r['bits_per_weight']:.3f}", f"{r['weight_sparsity']:.3f}",
                  *[f"{c['latency_s'] * 1e3:.3f}" + (f" / {c['energy_pj'] * 1e-9:.3g}" if c["energy_pj"] is not None
                                                     else "") for c in (r["decode"][n] for n in targets)])
    console.print(t)
    typer.echo(f"wrote {out}/study.md, {out}/perplexity_vs_bits.png, {out}/perplexity_vs_latency.png and one result "
               "folder per configuration")
    typer.echo(rows[0]["result"]["model"]["notes"][0] if rows[0]["result"]["model"]["notes"] else "")


class _Progress:
    """A rich progress bar per stage ('calibrating layers', 'evaluating', 'training', ...), on stderr;
    shown from the first update on, so an early error stays one line. `describe(info)` turns the
    optional 4th argument of an update (e.g. the training step's loss) into text beside the bar."""

    def __init__(self, describe: Callable[[dict], str] | None = None) -> None:
        self._bar = None
        self._tasks: dict[str, int] = {}
        self._describe = describe

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False

    def __call__(self, what: str, done: int, total: int, info: dict | None = None) -> None:
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=Console(stderr=True))
            self._bar.__enter__()
        if what not in self._tasks:
            self._tasks[what] = self._bar.add_task(what, total=total, info="")
        text = self._describe(info) if info and self._describe else ""
        self._bar.update(self._tasks[what], completed=done, total=total, info=text)


def _run_and_print(recipe, out, save_model: bool, as_json: bool, overwrite: bool) -> None:
    from nmx.runner import run

    with _Progress() as progress:
        result = run(recipe, out, save_model=save_model, progress=progress, overwrite=overwrite)
    if as_json:
        _print_json({k: v for k, v in result.items() if k != "layers"})
        return
    out_note = f"; wrote {out}/result.json and report.md" if out else ""
    typer.echo(f"perplexity {result['perplexity']:.4f} on {result['protocol']['tokens_scored']} tokens, "
               f"weight sparsity {result['weight_sparsity']:.4f}, {result['bits_per_weight']:.4f} bits/weight, "
               f"{result['wall_s']:.0f} s{out_note}")
    if k := result.get("kernels"):
        ref = (f" (bf16 fake quant {k['reference_perplexity']:.4f}, relative difference "
               f"{k['relative_difference']:.1e}, bound {k['bound']:.1e})") if k.get("reference_perplexity") else ""
        typer.echo(f"through nmx.kernels ({k['backend']}): perplexity {k['perplexity']:.4f}{ref}; "
                   f"{k['converted_layers']} layers packed, {k['left_as_linear']} left as nn.Linear")
    if hw := result.get("hardware"):
        from nmx.hw.pricing import summary_lines

        for line in summary_lines(hw):
            typer.echo(f"  {line}")


OUT_HELP = "Output folder for result.json, report.md and recipe.yaml (new, empty, or --overwrite)."
SAVE_HELP = "Also write the modified weights and masks to model.safetensors in --out."
JSON_HELP = "Print the result as JSON."
MODEL_HELP = "Built-in name (smollm2-135m), a Hugging Face model folder, a .gguf file, or a Hub id."
TEXT_HELP = "Evaluation text: wikitext-2, tinyshakespeare, or a UTF-8 text file."
SEQ_HELP = "Tokens per evaluation window (the model's context for the published protocol)."
WINDOWS_HELP = "Score only the first K windows (default: all)."


@app.command("run")
def run_cmd(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="Recipe YAML file."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help=OUT_HELP),
    overrides: List[str] = typer.Option([], "--set", metavar="KEY.PATH=VALUE",
                                        help="Override a recipe field, e.g. sparsity.pattern=4:8 (repeatable)."),
    save_model: bool = typer.Option(False, "--save-model", help=SAVE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    kernels: bool = typer.Option(False, "--kernels", help="Also score the model through nmx.kernels (packed "
                                 "weights, bf16; the CPU reference twin without a CUDA GPU) beside the bf16 "
                                 "fake-quant model; same as the recipe's `kernels: true`."),
) -> None:
    """Run a recipe: prune / quantize a model and measure its perplexity."""
    from nmx.recipe import load_recipe

    recipe = load_recipe(recipe_path, overrides)
    if kernels and recipe.kernels is None:
        recipe = load_recipe(base={**recipe.as_dict(), "kernels": True})
    _run_and_print(recipe, out, save_model, as_json, overwrite)


@app.command("eval")
def eval_cmd(
    model: str = typer.Option("smollm2-135m", "--model", help=MODEL_HELP),
    text: str = typer.Option("wikitext-2", "--text", help=TEXT_HELP),
    seq_len: int = typer.Option(2048, "--seq-len", min=2, help=SEQ_HELP),
    max_windows: Optional[int] = typer.Option(None, "--max-windows", min=1, metavar="K", help=WINDOWS_HELP),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help=OUT_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Perplexity of a model as it is (the dense baseline)."""
    from nmx.recipe import load_recipe

    base = {"model": model, "evaluation": {"text": text, "seq_len": seq_len, "max_windows": max_windows}}
    _run_and_print(load_recipe(base=base), out, False, as_json, overwrite)


@app.command("prune")
def prune_cmd(
    model: str = typer.Option("smollm2-135m", "--model", help=MODEL_HELP),
    method: str = typer.Option("wanda", "--method", help="Pruning method: magnitude, wanda or sparsegpt."),
    pattern: str = typer.Option("2:4", "--pattern", help="N:M (e.g. 2:4), or unstructured: 50% per row, "
                                "0.5:layer per layer."),
    weights: Optional[str] = typer.Option(None, "--weights", metavar="FORMAT",
                                          help="Weight format after pruning (see `nmx formats`)."),
    activations: Optional[str] = typer.Option(None, "--activations", metavar="FORMAT",
                                              help="Format of the linear layers' inputs (quantized on the fly)."),
    calib_text: str = typer.Option("tinyshakespeare", "--calib-text",
                                   help="Calibration text (Wanda, SparseGPT): a built-in name or a text file."),
    calib_samples: int = typer.Option(128, "--calib-samples", min=1, help="Calibration windows."),
    calib_seq_len: int = typer.Option(2048, "--calib-seq-len", min=2, help="Tokens per calibration window."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration windows' positions."),
    text: str = typer.Option("wikitext-2", "--text", help=TEXT_HELP),
    seq_len: int = typer.Option(2048, "--seq-len", min=2, help=SEQ_HELP),
    max_windows: Optional[int] = typer.Option(None, "--max-windows", min=1, metavar="K", help=WINDOWS_HELP),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help=OUT_HELP),
    save_model: bool = typer.Option(False, "--save-model", help=SAVE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Prune (and optionally quantize) a model, then measure its perplexity."""
    from nmx.recipe import load_recipe

    base = {
        "model": model,
        "calibration": {"text": calib_text, "samples": calib_samples, "seq_len": calib_seq_len, "seed": seed},
        "sparsity": {"method": method, "pattern": pattern},
        "quantization": {"weights": weights, "activations": activations} if (weights or activations) else None,
        "evaluation": {"text": text, "seq_len": seq_len, "max_windows": max_windows},
    }
    _run_and_print(load_recipe(base=base), out, save_model, as_json, overwrite)


sparsity_app = typer.Typer(help="N:M and unstructured sparsity: storage formats; measured activation sparsity.",
                           no_args_is_help=True)
app.add_typer(sparsity_app, name="sparsity")


@sparsity_app.command("formats")
def sparsity_formats(
    density: List[float] = typer.Option([], "--density", metavar="D...",
                                        help="Fractions of NONZEROS, in (0, 1] (0.01 = 99% sparse)."),
    sparsity: List[float] = typer.Option([], "--sparsity", metavar="S...",
                                         help="Fractions of zeros, in [0, 1), instead of --density."),
    value_bits: List[int] = typer.Option([16, 4], "--value-bits", metavar="BITS...", help="Bits per stored value."),
    rows: int = typer.Option(4096, "--rows", min=1, help="Rows of the matrix."),
    cols: int = typer.Option(4096, "--cols", min=1, help="Columns of the matrix."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Size of every compressed storage format at each density: which one wins."""
    from nmx.errors import InputError
    from nmx.report.tables import storage_table_view
    from nmx.sparsity.storage import storage_table

    if density and sparsity:
        raise InputError("give --density (fraction of nonzeros) or --sparsity (fraction of zeros), not both")
    for s in sparsity:
        if not 0 <= s < 1:
            raise InputError(f"--sparsity is the fraction of zeros, in [0, 1); got {s}")
    for d in density:
        if not 0 < d <= 1:
            raise InputError(f"--density is the fraction of nonzeros, in (0, 1]; got {d}")
    for b in value_bits:
        if not 1 <= b <= 64:
            raise InputError(f"--value-bits must be between 1 and 64; got {b}")
    densities = density or ([1.0 - s for s in sparsity] if sparsity else [0.5, 0.1, 0.01])
    rows_ = storage_table(densities, value_bits, shape=(rows, cols))
    if as_json:
        _print_json(rows_)
    else:
        console.print(storage_table_view(rows_, f"compressed storage of a {rows}x{cols} matrix"))


@sparsity_app.command("activations")
def sparsity_activations(
    result_dir: Path = typer.Argument(..., metavar="RESULT_DIR",
                                      help="Folder of an `nmx run` whose recipe has an activation_sparsity section."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Measured activation sparsity of a run: the union of nonzeros over batch B against 1 - s^B."""
    from rich.table import Table

    from nmx.errors import InputError
    from nmx.hw.workload import read_result
    from nmx.sparsity.activation import union_table

    block = read_result(result_dir).get("activation_sparsity")
    if not isinstance(block, dict) or "model_wide" not in block:
        raise InputError(f"{result_dir}/result.json has no activation_sparsity block; run a recipe with an "
                         "activation_sparsity section")
    rows = union_table(block)
    if as_json:
        _print_json(rows)
        return
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    t = Table(title=f"columns a GEMV over B tokens reads (measured union of nonzeros vs independence 1 - s^B), "
                    f"{result_dir}")
    for col in ("scope", "B", "zero fraction (all eval tokens)", "measured union", "1 - s^B",
                "measured / independent"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["scope"], str(r["batch"]), f(r["sparsity"]), f(r["union_density"]), f(r["independent_density"]),
                  f(r["ratio"]))
    console.print(t)


hw_app = typer.Typer(help="Hardware cost: GPU targets, accelerator models, Timeloop cases, nonlinear units.",
                     no_args_is_help=True)
app.add_typer(hw_app, name="hw")


def _register_hw() -> None:
    # each part of nmx.hw keeps its commands next to its code; they import from here lazily
    from nmx.hw import cli_accel, cli_explore, cli_gpu, cli_nonlinear, cli_timeloop, cli_train

    for part in (cli_gpu, cli_accel, cli_timeloop, cli_nonlinear, cli_train):
        part.register(hw_app)
    cli_explore.register(app)  # `nmx explore` is a top-level verb
    from nmx.hw import cli_breakdown, cli_format_search, cli_pim, cli_reasoning, cli_serve  # issue 15

    for part in (cli_serve, cli_pim, cli_reasoning, cli_breakdown, cli_format_search):
        part.register(hw_app)


_register_hw()


def _register_sweep() -> None:
    from nmx.sweep.cli import register  # `nmx sweep`: recipes x hardware on Ray (nmx/sweep/)

    register(app)


_register_sweep()


def _register_train() -> None:
    from nmx.train.cli import register  # `nmx train`: sparse training (nmx/train/)

    register(app)


_register_train()


def _register_precision() -> None:
    from nmx.eval.cli_precision import register  # `nmx search-precision` (nmx/eval/precision_search.py)

    register(app)


_register_precision()

bench_app = typer.Typer(help="Timings of whole models (needs a CUDA GPU).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("decode")
def bench_decode_cmd(
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    config: Optional[str] = typer.Option(None, "--config", metavar="NAME", help="A random-weight model of a named "
                                         "shape instead (no download): llama-2-7b, llama-3-8b, smollm2-135m, tiny."),
    recipe_path: Optional[Path] = typer.Option(None, "--recipe", metavar="RECIPE",
                                               help="Recipe whose compression is timed against bf16."),
    run_dir: Optional[Path] = typer.Option(None, "--run", metavar="RUN_DIR",
                                           help="A `nmx run --save-model` folder to time against bf16."),
    weights: Optional[str] = typer.Option(None, "--weights", metavar="FORMAT",
                                          help="Instead of a recipe: a weight format the kernels read."),
    pattern: Optional[str] = typer.Option(None, "--pattern", help="With --weights: 2:4 (magnitude pruning)."),
    batch: str = typer.Option("1,16", "--batch", metavar="B,B,...", help="Batch sizes (sequences per step)."),
    context: int = typer.Option(2048, "--context", min=1, help="Tokens already in the cache."),
    tokens: int = typer.Option(128, "--tokens", min=1, help="Decode steps timed."),
    mode: str = typer.Option("auto", "--mode", help="graph (one step in a CUDA graph; auto on a GPU), compile "
                             "(torch.compile, then a CUDA graph; minutes per model and batch) or eager."),
    kv: str = typer.Option("bf16", "--kv", metavar="FORMAT",
                           help="KV cache: bf16 (transformers' StaticCache, the default), or int4 / int2 / "
                                "fp8_e4m3 / mxfp4: every model is also timed, as its own row, with nmx's packed KV "
                                "cache in graph mode."),
    kv_group: Optional[int] = typer.Option(None, "--kv-group", metavar="G",
                                           help="With --kv: tokens per key chunk and channels per value scale "
                                                "(default: the format's, 32)."),
    kv_residual: int = typer.Option(128, "--kv-residual", metavar="N",
                                    help="With --kv: the most recent tokens kept in bf16 (the window holds N..N+G-1)."),
    profile: int = typer.Option(0, "--profile", metavar="STEPS",
                                help="Also profile STEPS steps of every row: its kernels by class, calls and "
                                     "device time per step (into the JSON; a table with --out/--json omitted)."),
    small_ops: str = typer.Option("hf", "--small-ops", metavar="HOW",
                                  help="hf (transformers' own norms, activation and rotary embedding), fused "
                                       "(nmx.kernels.fuse_small_ops: one kernel each) or both (every model timed "
                                       "both ways, rows '... fused-ops')."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE.json", help="Also write the record as JSON."),
    allow_cpu: bool = typer.Option(False, "--allow-cpu", help="Without a GPU: a slow eager smoke run on the CPU."),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
) -> None:
    """Decode tokens/s of a model's own forward (static cache, CUDA graph): bf16 vs compressed, one run."""
    from nmx.errors import InputError
    from nmx.io import OutputFile
    from nmx.kernels.decode_bench import bench_decode, kv_spec, quick_recipe
    from nmx.recipe import load_recipe

    try:
        batches = tuple(int(b) for b in batch.split(","))
    except ValueError:
        raise InputError(f"--batch takes comma-separated integers (e.g. 1,16), got {batch!r}") from None
    if weights or pattern:
        if recipe_path or run_dir:
            raise InputError("give --weights/--pattern, --recipe or --run, not several")
        recipe = quick_recipe(weights, pattern)
    else:
        recipe = load_recipe(recipe_path) if recipe_path else None
    kv_spec(kv, kv_group, kv_residual)  # one line for a KV format or option the packed cache does not take
    target = OutputFile(out, "--out", (".json",)) if out else None
    with target if target is not None else _nothing() as tmp:
        record = bench_decode(model, config, recipe, run_dir, batches, context, tokens, mode, allow_cpu,
                              progress=lambda msg: typer.echo(msg, err=True), kv=kv, kv_group=kv_group,
                              kv_residual=kv_residual, profile=profile, small_ops=small_ops)
        if tmp is not None:
            from nmx.io import write_json_atomic

            write_json_atomic(tmp, _json_safe(record))
    if as_json:
        _print_json(record)
        return
    for r in record["rows"]:
        extra = f", {r['speedup_vs_bf16']:.2f}x bf16" if "speedup_vs_bf16" in r else ""
        frac = f", {100 * r['fraction_of_copy_bandwidth']:.0f}% of copy bandwidth" \
            if "fraction_of_copy_bandwidth" in r else ""
        kv_mb = f", KV {r['kv_bytes_per_step'] / 2**20:.1f} MiB/step" if "kv_bytes_per_step" in r else ""
        typer.echo(f"{r['variant']:>10}  batch {r['batch']:>3}  {r['ms_per_step']:8.3f} ms/step  "
                   f"{r['tokens_per_s']:10.1f} tokens/s{extra}{frac}{kv_mb}  ({r['mode']})")
        if "profile" in r:
            p = r["profile"]
            typer.echo(f"            {p['what']}: {p['calls_per_step']:.0f} per step, busy "
                       f"{1e3 * p['busy_s_per_step']:.3f} ms/step; " + ", ".join(
                           f"{c} {1e3 * v['s_per_step']:.3f} ms ({v['calls_per_step']:.0f})"
                           for c, v in p["by_class"].items()))


def _nothing():
    from contextlib import nullcontext

    return nullcontext()

MULTI_VALUE = ("--density", "--sparsity", "--value-bits")


def _expand_multi_value(argv: list[str]) -> list[str]:
    """Let `--density 0.5 0.9 0.99` mean `--density 0.5 --density 0.9 --density 0.99` (click
    options take one value each)."""
    out, current = [], None
    for arg in argv:
        if arg in MULTI_VALUE:
            current = arg
            out.append(arg)
        elif current and not arg.startswith("-") and out[-1] != current:
            out += [current, arg]
        else:
            if arg.startswith("-"):
                current = None
            out.append(arg)
    return out


class _WarningLines(logging.Handler):
    """nmx's log records as one line each on the current stderr ("warning: ...")."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(f"{record.levelname.lower()}: {' '.join(record.getMessage().split())}\n")


def _setup_logging() -> None:
    log = logging.getLogger("nmx")
    if not any(isinstance(h, _WarningLines) for h in log.handlers):
        log.addHandler(_WarningLines())  # propagation stays on: the root logger prints nothing by default
    log.setLevel(logging.INFO if _state["debug"] else logging.WARNING)
    # transformers' per-tensor "Loading weights" bars would sit between nmx's one-line messages;
    # transformers reads this when it is imported (later, by the command that needs it)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF conversion's bar (plain tqdm)
    if "transformers" in sys.modules:  # already imported (nmx used as a library, tests)
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def main() -> None:
    from nmx.io import Interrupted, sigterm_raises

    _setup_logging()
    try:
        with sigterm_raises():
            app(args=_expand_multi_value(sys.argv[1:]), prog_name="nmx")
    except NmxError as err:
        if _state["debug"]:
            raise
        typer.echo(f"error: {' '.join(str(err).split())}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, Interrupted) as sig:
        typer.echo(f"interrupted ({sig or 'SIGINT'}); nothing was written", err=True)
        sys.exit(130 if isinstance(sig, KeyboardInterrupt) else 143)


if __name__ == "__main__":
    main()
