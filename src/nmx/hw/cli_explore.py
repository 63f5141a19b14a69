"""CLI commands of nmx.hw (explore); `register` adds them to the top-level `nmx` app.

    nmx explore --accel examples/hw/uspe_16x16_ws.yaml --sweep pe_rows=8,16,32 --sweep nm=none,2:4 \\
        --model llama-2-7b --phase decode --plot front.png --json
    nmx explore --results runs/dense runs/2of4 --accel examples/hw/nm24_16x16_ws.yaml --plot ppl.png
    nmx explore --results runs/dense runs/2of4 --target h200 --batch 16      # any target: a GPU too
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from nmx.errors import InputError


def register(app: typer.Typer) -> None:
    """Add `nmx explore`."""

    @app.command("explore")
    def explore_cmd(
        accel: Optional[Path] = typer.Option(None, "--accel", metavar="FILE.yaml",
                                             help="The base accelerator YAML (see examples/hw/)."),
        target: Optional[str] = typer.Option(None, "--target", metavar="NAME_OR_YAML",
                                             help="With --results: any hardware target instead of --accel: a "
                                                  "preset (nmx hw targets, e.g. h200) or a YAML file of kind gpu, "
                                                  "accelerator or timeloop."),
        impl: str = typer.Option("pytorch", "--impl", metavar="IMPL",
                                 help="Kernels a GPU --target is priced with: pytorch, ideal or nmx."),
        sweep: List[str] = typer.Option([], "--sweep", metavar="KEY=V1,V2,...",
                                        help="Values of one design parameter (repeat for more); e.g. pe_rows=8,16,32, "
                                        "glb_kb=64,256, dram_gb_s=50,100, nm=none,2:4,1:4|2:4|3:4, dataflow=ws,os,is, "
                                        "weights_format=dense,bitmap,nm, tech_nm=28,7."),
        results: List[Path] = typer.Option([], "--results", metavar="RESULT_DIR",
                                           help="Result folders of `nmx run` (perplexity vs cost); one after "
                                                "--results, more as arguments."),
        more_results: Optional[List[Path]] = typer.Argument(None, metavar="RESULT_DIR", show_default=False,
                                                            help="More result folders after --results."),
        workload: Optional[Path] = typer.Option(None, "--workload", metavar="FILE.yaml",
                                                help="Workload YAML (gemm: or model:); or give --model or --gemm."),
        model: Optional[str] = typer.Option(None, "--model", metavar="NAME_OR_DIR",
                                            help="Model preset (e.g. llama-2-7b), HF config.json or its folder, "
                                                 "or an `nmx run` result folder."),
        gemm: Optional[str] = typer.Option(None, "--gemm", metavar="M,N,K",
                                           help="One GEMM: M tokens, N output and K input features."),
        phase: str = typer.Option("decode", "--phase", metavar="PHASE",
                                  help="prefill or decode (one step with --context tokens cached)."),
        batch: int = typer.Option(1, "--batch", metavar="N", help="Sequences per step."),
        context: int = typer.Option(2048, "--context", metavar="TOKENS", help="Tokens already cached (decode)."),
        tokens: int = typer.Option(2048, "--tokens", metavar="TOKENS", help="Prefill length per sequence."),
        weights: Optional[str] = typer.Option(None, "--weights", metavar="FORMAT",
                                              help="Weight format of the linears (default bf16; see `nmx formats`)."),
        activations: Optional[str] = typer.Option(None, "--activations", metavar="FORMAT",
                                                  help="Activation format of the linears (default bf16)."),
        pattern: Optional[str] = typer.Option(None, "--pattern", metavar="PATTERN",
                                              help="Weight sparsity of the linears, e.g. 2:4 or 50%."),
        kv_format: Optional[str] = typer.Option(None, "--kv-format", metavar="FORMAT",
                                                help="KV-cache format (default bf16)."),
        top: int = typer.Option(20, "--top", metavar="N", help="Pareto points to print / put in the JSON."),
        plot: Optional[Path] = typer.Option(None, "--plot", metavar="FILE",
                                            help="Write the figure (.png, .svg, .pdf, .jpg, .eps or .ps)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Sweep accelerator design points (Pareto front of latency, energy, area), or join the
        perplexity of `nmx run` results with their cost on one accelerator."""
        if isinstance(top, bool) or top < 1:
            raise InputError(f"--top must be at least 1, got {top}")
        out = _plot_output(plot)  # decided now: a bad --plot fails before any work
        try:
            _explore(accel, sweep, list(results) + list(more_results or []), workload, model, gemm, phase, batch,
                     context, tokens, weights, activations, pattern, kv_format, top, plot, out, as_json, target, impl)
        finally:
            if out is not None:
                out.abort()  # removes the temporary file unless the figure was written


def _plot_output(plot: Optional[Path]) -> Any:
    """The --plot file decided before any work (suffix, writable place, not a folder), or None."""
    if plot is None:
        return None
    from nmx.hw.explore import plot_output

    return plot_output(plot, "--plot")


def _explore(accel: Path, sweep: list[str], dirs: list[Path], workload: Optional[Path], model: Optional[str],
             gemm: Optional[str], phase: str, batch: int, context: int, tokens: int, weights: Optional[str],
             activations: Optional[str], pattern: Optional[str], kv_format: Optional[str], top: int,
             plot: Optional[Path], out: Any, as_json: bool, target: Optional[str] = None,
             impl: str = "pytorch") -> None:
    from nmx.hw import explore as ex
    from nmx.hw.accel_spec import load_accel

    if (accel is None) == (target is None):
        raise InputError("give --accel FILE.yaml (a design to sweep or price) or --target NAME_OR_YAML (with "
                         "--results), one of them" if accel is None else "give --accel or --target, not both")
    if target is not None and not dirs:
        raise InputError("--target prices `nmx run` result folders: give --results RESULT_DIR...; design sweeps "
                         "take --accel")
    if dirs:
        if sweep:
            raise InputError("--results joins accuracy with one design: drop --sweep (or explore separately)")
        if any(x is not None for x in (workload, model, gemm)):
            raise InputError("--results takes the workload from each result folder: drop --workload/--model/--gemm")
        from nmx.hw.targets import get_target

        tgt = get_target(load_accel(accel) if accel is not None else target, impl)
        rows = ex.accuracy_vs_cost(dirs, tgt, phase=phase, batch=batch, context=context, tokens=tokens)
        if out is not None:
            ex.plot_accuracy(rows, out)
        if as_json:
            typer.echo(json.dumps({"target": tgt.name, "kind": tgt.kind, **({"accel": tgt.name} if accel else {}),
                                   "rows": rows, "plot": str(plot) if plot else None}, indent=2))
            return
        typer.echo(f"perplexity vs cost on {tgt.name} ({phase}, batch {batch}, context {context})")
        typer.echo(f"{'result':<28} {'perplexity':>11} {'latency ms':>11} {'energy mJ':>10}  recipe")
        for r in rows:
            energy = "-" if r["energy_pj"] is None else f"{r['energy_pj'] * 1e-9:.4g}"
            typer.echo(f"{r['label']:<28} {r['perplexity']:>11.4f} {r['latency_s'] * 1e3:>11.4g} "
                       f"{energy:>10}  {r['recipe']}")
        if plot is not None:
            typer.echo(f"wrote {plot}")
        return
    spec = load_accel(accel)
    from nmx.hw.cli_accel import build_work

    work, what = build_work(workload, model, gemm, phase, batch, context, tokens, weights, activations,
                            pattern, kv_format, 1.0)
    result = ex.sweep(spec, ex.parse_sweeps(sweep), work)
    front = result.rows(result.pareto[:top])
    if out is not None:
        ex.plot_pareto(result, out, title=f"{spec.name} on {what}")
    summary = {"accel": spec.name, "workload": what, "points": result.n_points,
               "feasible": int(result.result.feasible.sum()) if result.result.feasible.ndim else result.n_points,
               "pareto_points": int(result.pareto.size), "eval_s": result.eval_s,
               "sweep": {k: v for k, v in result.axes}, "pareto": front,
               "plot": str(plot) if plot else None}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"{spec.name} on {what}: {result.n_points} design points in {result.eval_s * 1e3:.1f} ms, "
               f"{result.pareto.size} Pareto-optimal (latency, energy, area)")
    keys = [k for k, _ in result.axes]
    typer.echo("  ".join(f"{k:>12}" for k in keys) + f"{'latency ms':>12}{'energy mJ':>12}{'area mm2':>10}"
               f"{'util':>7}")
    for r in front:
        typer.echo("  ".join(f"{r[k]:>12}" for k in keys) + f"{r['latency_s'] * 1e3:>12.4g}"
                   f"{r['energy_pj'] * 1e-9:>12.4g}{r['area_mm2']:>10.3g}{r['utilization']:>7.3f}")
    if plot is not None:
        typer.echo(f"wrote {plot}")
