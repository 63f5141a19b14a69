"""`nmx search-precision`: registered on the top-level app by nmx.cli (thin: parse, call, print).

    nmx search-precision recipe.yaml --tolerance 0.01 --max-iter 32 --out runs/search
    nmx run runs/search/recipe.yaml          # the chosen lengths, evaluated on the evaluation text
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def _table(record: dict):
    from rich.table import Table

    sens = record["mode"] == "sensitivity"
    t = Table(title=f"{record['mode']} search on {record['model']}: calibration perplexity ({record['criterion']}, "
                    f"A16 {record['reference_ppl']:.4f}, limit {record['limit']:.4f}); BFP groups of {record['group']}")
    for col in ("#", *(("varied",) if sens else ()), *record["types"], "GBOPs/token", "calib ppl", "accepted"):
        t.add_column(col, justify="right")
    for p in record["points"]:
        t.add_row(str(p["iteration"]), *((p["varied"],) if sens else ()),
                  *[("-" if m is None else str(m)) for m in p["lengths"]], f"{p['bops'] * 1e-9:.4g}",
                  f"{p['quality']:.4f}", "yes" if p["accepted"] else "no")
    return t


def register(app: typer.Typer) -> None:
    """Add `nmx search-precision`."""

    @app.command("search-precision")
    def search_precision_cmd(
        recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="Recipe YAML file (model, weights, "
                                           "calibration text held apart from the evaluation text)."),
        tolerance: float = typer.Option(..., "--tolerance", metavar="DELTA",
                                        help="Allowed loss, in (0, 1): accept a point when its calibration "
                                             "perplexity <= (1 + DELTA) x the A16 perplexity."),
        max_iter: int = typer.Option(32, "--max-iter", metavar="N", help="At most N evaluated points (greedy)."),
        metric: str = typer.Option("ppl", "--metric", help="Quality metric: ppl (calibration perplexity)."),
        sensitivity: bool = typer.Option(False, "--sensitivity", help="Vary one tensor type at a time (13..1 "
                                         "mantissa bits, the others unquantized) instead of the greedy search."),
        group: Optional[int] = typer.Option(None, "--group", metavar="G", help="BFP group when the recipe has "
                                            "no BFP activation format (default 64)."),
        out: Optional[Path] = typer.Option(None, "--out", metavar="DIR",
                                           help="Write summary.json (every point) and recipe.yaml (the chosen "
                                                "lengths, ready for `nmx run`) here (new, empty, or --overwrite)."),
        overrides: List[str] = typer.Option([], "--set", metavar="KEY.PATH=VALUE", help="Override a recipe field."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an --out folder holding an nmx result."),
        as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
    ) -> None:
        """Search BFP mantissa lengths per activation tensor type (qkv, o, up, down) by BOPs (Anda's greedy)."""
        import yaml

        from nmx.cli import _print_json, _Progress, console
        from nmx.eval.precision_run import check_search, run_search
        from nmx.io import OutputDir, write_json_atomic, write_text_atomic
        from nmx.recipe import load_recipe

        recipe = load_recipe(recipe_path, overrides)
        check_search(recipe, tolerance, max_iter, metric, group)  # before the output folder and the model
        output = OutputDir(out, overwrite) if out is not None else None
        try:
            with _Progress() as progress:
                record = run_search(recipe, tolerance, max_iter=max_iter, metric=metric, sensitivity=sensitivity,
                                    group=group, progress=progress)
        except BaseException:
            if output is not None:
                output.abort()
            raise
        text = yaml.safe_dump(record["recipe"], sort_keys=False)
        if output is not None:
            with output as tmp:
                write_text_atomic(tmp / "recipe.yaml", text)
                write_json_atomic(tmp / "summary.json", record)
        if as_json:
            _print_json(record)
            return
        console.print(_table(record))
        lengths = ", ".join(f"{t} {m if m is not None else '-'}" for t, m in record["chosen_lengths"].items())
        typer.echo(f"chosen: {lengths}; {record['chosen_bops_per_token'] * 1e-9:.4g} GBOPs/token, "
                   f"{record['bops_reduction_vs_a16']:.2f}x fewer than A16; {record['iterations']} points "
                   f"({record['stopped']}), {record['wall_s']:.1f} s")
        if out is not None:
            typer.echo(f"wrote {out}/summary.json and {out}/recipe.yaml (nmx run {out}/recipe.yaml)")
        else:
            typer.echo("chosen recipe:\n" + text.rstrip())
