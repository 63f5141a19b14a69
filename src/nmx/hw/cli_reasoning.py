"""`nmx hw reasoning`: the bound of a decode step against n parallel candidates (nmx.hw.reasoning)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from nmx.hw.cli_serve import MODEL_HELP, _table


def register(hw_app: typer.Typer) -> None:
    """Add `nmx hw reasoning` to `nmx hw`."""

    @hw_app.command("reasoning")
    def reasoning_cmd(
        model: str = typer.Option("llama-2-7b", "--model", metavar="NAME_OR_DIR", help=MODEL_HELP),
        targets: List[str] = typer.Option(["h200", "nm24-16x16-ws"], "--target", metavar="NAME_OR_YAML",
                                          help="Targets (repeat the option): GPU presets, accelerator designs, YAML."),
        context: int = typer.Option(4096, "--context", metavar="TOKENS", help="Prompt tokens the candidates share."),
        generated: int = typer.Option(0, "--generated", metavar="TOKENS",
                                      help="Tokens each candidate has generated so far (its own KV)."),
        n: str = typer.Option("1,2,4,...,256", "--n", metavar="N,N,...",
                              help="Parallel candidates per prompt: a list, '...' continues a doubling run."),
        recipes: str = typer.Option("dense,2:4,4-bit,2:4+4-bit", "--recipes", metavar="R,R,...",
                                    help="Weight recipes: dense, 2:4, 4-bit (nvfp4), a format name, joined by +."),
        impl: str = typer.Option("ideal", "--impl", metavar="IMPL", help="GPU kernels: pytorch, ideal or nmx."),
        plot: Optional[Path] = typer.Option(None, "--plot", metavar="FILE.png",
                                            help="Also draw ms per generated token against n (png, pdf or svg)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    ) -> None:
        """Reasoning decode: n candidates share a prompt; the step's bound (memory -> compute) and time per
        token against n for dense, 2:4, 4-bit and 2:4+4-bit weights, with the crossover n."""
        from nmx.hw.reasoning import bound_curve, parse_ns, plot_curve, recipe_compression
        from nmx.io import OutputFile

        ns = parse_ns(n)
        recs = {r.strip(): recipe_compression(r) for r in recipes.split(",") if r.strip()}
        out = OutputFile(plot, "--plot", (".png", ".pdf", ".svg")) if plot is not None else None
        curves = [bound_curve(model, t, context, ns, recs, generated, impl) for t in targets]
        if out is not None:
            with out as tmp:
                plot_curve(curves, tmp)
        if as_json:
            from nmx.cli import _print_json

            _print_json(curves)
            return
        for cur in curves:
            rows = []
            for label, rec in cur["recipes"].items():
                row = {"recipe": label, "crossover n": rec["crossover_n"] or f"> {ns[-1]}"}
                for p in rec["points"]:
                    row[str(p["n"])] = f"{p['s_per_token'] * 1e3:.3g}{'*' if p['bound'] == 'compute' else ''}"
                rows.append(row)
            _table(rows, ("recipe", "crossover n", *[str(x) for x in ns]),
                   title=f"{cur['model']} on {cur['target']} ({cur['kind']}), prompt {context}, generated "
                         f"{generated}: ms per generated token (* compute-bound)")
        if plot is not None:
            typer.echo(f"wrote {plot}")
