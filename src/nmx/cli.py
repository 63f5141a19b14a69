"""The `nmx` command: parses flags, calls the library, prints. No logic lives here."""

from __future__ import annotations

import json
import math
import shutil
import sys
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
out = Console(width=max(120, shutil.get_terminal_size().columns))
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
        out.print(formats_table(rows))
        out.print("Any member of a family works too, e.g. int3_g64, mxfp6_e2m3_g16_rceil, bfp_m5_g32, fp5_e2m2, "
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
        out.print(quant_error_table(rows, f"quantization error on {label}, shape {tuple(x.shape)}"))


@app.command()
def demo() -> None:
    """The formats table and every format's error on a realistic LLM-like tensor."""
    from nmx.eval.metrics import format_errors
    from nmx.eval.tensors import synthetic_activation
    from nmx.formats import get, names
    from nmx.report.tables import formats_table, quant_error_table

    rows = [get(n).describe() for n in names()]
    out.print(formats_table(rows))
    x = synthetic_activation()
    numeric = [r["name"] for r in rows if r["family"] != "scale"]
    errors = sorted(format_errors(x, numeric), key=lambda r: r["bits_per_element"])
    out.print(quant_error_table(errors, "quantization error on a heavy-tailed 256x4096 tensor with outlier "
                                "channels (blocks along the last dim)"))
    out.print("Per-vector and per-block scales beat plain casts at equal bits; the outlier channels are what "
              "separates MX, NVFP4 and INT groups at 4 bits.")


def main() -> None:
    try:
        app()
    except NmxError as err:
        if _state["debug"]:
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
