"""`nmx train RECIPE`: parses, calls `nmx.train.train`, prints (registered by nmx.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer


def _describe(info: dict[str, Any]) -> str:
    """The training bar's text: loss, perplexity (at evaluation steps), tokens/s and mask flip rate."""
    ppl = info.get("perplexity")
    return (f"loss {info['loss']:.4f}" + (f"  ppl {ppl:.2f}" if ppl is not None else "")
            + f"  {info['tokens_per_s']:.0f} tok/s  flips {info['flip_rate']:.2e}")


def register(app: typer.Typer) -> None:
    from nmx.cli import JSON_HELP, OVERWRITE_HELP

    @app.command("train")
    def train_cmd(
        recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="Recipe YAML file with a training: section."),
        out: Optional[Path] = typer.Option(None, "--out", metavar="DIR",
                                           help="Run folder: checkpoints, train_log.jsonl, the curve plot, the "
                                                "trained model and result.json (new, empty, or --overwrite)."),
        resume: Optional[Path] = typer.Option(None, "--resume", metavar="DIR",
                                              help="Continue the unfinished run in DIR from its newest checkpoint "
                                                   "(same recipe and --set; ends bit-identical to an unbroken run)."),
        overrides: List[str] = typer.Option([], "--set", metavar="KEY.PATH=VALUE",
                                            help="Override a recipe field, e.g. training.steps=200 (repeatable)."),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
        as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    ) -> None:
        """Sparse training: masked fine-tuning, SR-STE, N:M schedules, KD, QAT with nmx formats."""
        from nmx.cli import _print_json, _Progress
        from nmx.recipe import load_recipe
        from nmx.train.loop import train

        recipe = load_recipe(recipe_path, overrides)
        with _Progress(_describe) as progress:
            result = train(recipe, out, resume=resume, overwrite=overwrite, progress=progress)
        if as_json:
            _print_json({k: v for k, v in result.items() if k != "layers"})
            return
        t = result["training"]
        where = resume or out
        typer.echo(f"perplexity {result['perplexity']:.4f} after {t['steps']} steps ({t['tokens']} tokens, "
                   f"{t['method']}, {t['objective']}), weight sparsity {result['weight_sparsity']:.4f}, "
                   f"{result['bits_per_weight']:.4f} bits/weight, {result['wall_s']:.0f} s"
                   + (f"; wrote {where}/result.json, model.safetensors, train_log.jsonl" if where else ""))
