"""The `nmx` command: parses flags, calls the library, prints. No logic lives here."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

import nmx
from nmx.errors import NmxError

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
    tensor: Optional[str] = typer.Option(None, "--tensor", help="FILE.safetensors:NAME (default: synthetic)."),
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


@app.command()
def demo(
    out: Path = typer.Option(Path("nmx-demo"), "--out", help="Folder for the study's table, plot and results."),
    windows: int = typer.Option(4, "--windows", help="WikiText-2 windows of 2048 tokens to score per configuration."),
    calib_samples: int = typer.Option(32, "--calib-samples", help="Calibration windows (of 512 tokens) for Wanda."),
) -> None:
    """The co-design study on SmolLM2-135M: N:M sparsity and MXFP4 against perplexity and bits."""
    from nmx.demo import study

    with _Progress() as progress:
        rows = study(out, windows=windows, calib_samples=calib_samples, progress=progress)
    from rich.table import Table

    t = Table(title=f"co-design study: smollm2-135m, WikiText-2, {windows} windows of 2048 tokens")
    for col in ("configuration", "perplexity", "bits/weight", "weight sparsity"):
        t.add_column(col, justify="left" if col == "configuration" else "right")
    for r in rows:
        t.add_row(r["config"], f"{r['perplexity']:.3f}", f"{r['bits_per_weight']:.3f}", f"{r['weight_sparsity']:.3f}")
    console.print(t)
    typer.echo(f"wrote {out}/study.md, {out}/perplexity_vs_bits.png and one result folder per configuration")
    typer.echo(rows[0]["result"]["model"]["notes"][0] if rows[0]["result"]["model"]["notes"] else "")


class _Progress:
    """A rich progress bar per stage ('calibrating layers', 'evaluating', ...), on stderr; shown
    from the first update on, so an early error stays one line."""

    def __init__(self) -> None:
        self._bar = None
        self._tasks: dict[str, int] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False

    def __call__(self, what: str, done: int, total: int) -> None:
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True))
            self._bar.__enter__()
        if what not in self._tasks:
            self._tasks[what] = self._bar.add_task(what, total=total)
        self._bar.update(self._tasks[what], completed=done, total=total)


def _run_and_print(recipe, out, save_model: bool, as_json: bool) -> None:
    from nmx.runner import run

    with _Progress() as progress:
        result = run(recipe, out, save_model=save_model, progress=progress)
    if as_json:
        _print_json({k: v for k, v in result.items() if k != "layers"})
        return
    out_note = f"; wrote {out}/result.json and report.md" if out else ""
    typer.echo(f"perplexity {result['perplexity']:.4f} on {result['protocol']['tokens_scored']} tokens, "
               f"weight sparsity {result['weight_sparsity']:.4f}, {result['bits_per_weight']:.4f} bits/weight, "
               f"{result['wall_s']:.0f} s{out_note}")


@app.command("run")
def run_cmd(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="Recipe YAML file."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder for result.json, report.md, recipe.yaml."),
    overrides: List[str] = typer.Option([], "--set", help="Override a field: key.path=value (repeatable)."),
    save_model: bool = typer.Option(False, "--save-model", help="Also write the modified weights (safetensors)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run a recipe: prune / quantize a model and measure its perplexity."""
    from nmx.recipe import load_recipe

    _run_and_print(load_recipe(recipe_path, overrides), out, save_model, as_json)


@app.command("eval")
def eval_cmd(
    model: str = typer.Option("smollm2-135m", "--model", help="Built-in name, HF folder, .gguf file or Hub id."),
    text: str = typer.Option("wikitext-2", "--text", help="Text name or file."),
    seq_len: int = typer.Option(2048, "--seq-len"),
    max_windows: Optional[int] = typer.Option(None, "--max-windows", help="Score only the first K windows."),
    out: Optional[Path] = typer.Option(None, "--out"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Perplexity of a model as it is (the dense baseline)."""
    from nmx.recipe import load_recipe

    base = {"model": model, "evaluation": {"text": text, "seq_len": seq_len, "max_windows": max_windows}}
    _run_and_print(load_recipe(base=base), out, False, as_json)


@app.command("prune")
def prune_cmd(
    model: str = typer.Option("smollm2-135m", "--model"),
    method: str = typer.Option("wanda", "--method", help="magnitude, wanda or sparsegpt."),
    pattern: str = typer.Option("2:4", "--pattern", help="N:M (e.g. 2:4) or unstructured (e.g. 50%)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Weight format (see `nmx formats`)."),
    activations: Optional[str] = typer.Option(None, "--activations", help="Activation format."),
    calib_text: str = typer.Option("tinyshakespeare", "--calib-text"),
    calib_samples: int = typer.Option(128, "--calib-samples"),
    calib_seq_len: int = typer.Option(2048, "--calib-seq-len"),
    seed: int = typer.Option(0, "--seed"),
    text: str = typer.Option("wikitext-2", "--text"),
    seq_len: int = typer.Option(2048, "--seq-len"),
    max_windows: Optional[int] = typer.Option(None, "--max-windows"),
    out: Optional[Path] = typer.Option(None, "--out"),
    save_model: bool = typer.Option(False, "--save-model"),
    as_json: bool = typer.Option(False, "--json"),
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
    _run_and_print(load_recipe(base=base), out, save_model, as_json)


sparsity_app = typer.Typer(help="N:M and unstructured sparsity: storage formats.", no_args_is_help=True)
app.add_typer(sparsity_app, name="sparsity")


@sparsity_app.command("formats")
def sparsity_formats(
    density: List[float] = typer.Option([], "--density", help="Fractions of NONZEROS (0.01 = 99% sparse)."),
    sparsity: List[float] = typer.Option([], "--sparsity", help="Fractions of zeros, instead of --density."),
    value_bits: List[int] = typer.Option([16, 4], "--value-bits", help="Bits per stored value."),
    rows: int = typer.Option(4096, "--rows"),
    cols: int = typer.Option(4096, "--cols"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Size of every compressed storage format at each density: which one wins."""
    from nmx.errors import InputError
    from nmx.report.tables import storage_table_view
    from nmx.sparsity.storage import storage_table

    if density and sparsity:
        raise InputError("give --density (fraction of nonzeros) or --sparsity (fraction of zeros), not both")
    densities = density or ([1.0 - s for s in sparsity] if sparsity else [0.5, 0.1, 0.01])
    rows_ = storage_table(densities, value_bits, shape=(rows, cols))
    if as_json:
        _print_json(rows_)
    else:
        console.print(storage_table_view(rows_, f"compressed storage of a {rows}x{cols} matrix"))


hw_app = typer.Typer(help="Hardware cost: GPU targets, accelerator models, Timeloop cases, nonlinear units.",
                     no_args_is_help=True)
app.add_typer(hw_app, name="hw")


def _register_hw() -> None:
    # each part of nmx.hw keeps its commands next to its code; they import from here lazily
    from nmx.hw import cli_accel, cli_explore, cli_gpu, cli_nonlinear, cli_timeloop

    for part in (cli_gpu, cli_accel, cli_timeloop, cli_nonlinear):
        part.register(hw_app)
    cli_explore.register(app)  # `nmx explore` is a top-level verb


_register_hw()

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


def main() -> None:
    try:
        app(args=_expand_multi_value(sys.argv[1:]), prog_name="nmx")
    except NmxError as err:
        if _state["debug"]:
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
