"""CLI commands of nmx.hw (explore); `register` adds them to the top-level `nmx` app.

    nmx explore --accel examples/hw/uspe_16x16_ws.yaml --sweep pe_rows=8,16,32 --sweep nm=none,2:4 \\
        --model llama-2-7b --phase decode --plot front.png --json
    nmx explore --results runs/dense runs/2of4 --accel examples/hw/nm24_16x16_ws.yaml --plot ppl.png
    nmx explore --results runs/dense runs/2of4 --target h200 --batch 16      # any target: a GPU too
    nmx explore --search runs/search --accel examples/hw/anda_16x16_bitserial.yaml \
        --accel examples/hw/anda_fp16_int4_16x16.yaml --phase prefill --plot front.png   # a search's points
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
        accel: List[Path] = typer.Option([], "--accel", metavar="FILE.yaml",
                                         help="The base accelerator YAML (see examples/hw/); with --search, "
                                              "repeat it to price the points on several designs."),
        target: List[str] = typer.Option([], "--target", metavar="NAME_OR_YAML",
                                         help="With --results or --search: any hardware target instead of --accel: "
                                              "a preset (nmx hw targets, e.g. h200) or a YAML file of kind gpu, "
                                              "accelerator or timeloop (repeatable with --search)."),
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
        search: List[Path] = typer.Option([], "--search", metavar="SEARCH_DIR",
                                          help="The --out folder (or summary.json) of `nmx search-precision` "
                                               "(repeatable): price each tried point (mantissa lengths, "
                                               "calibration perplexity) on every --accel/--target design, with "
                                               "the Pareto fronts of perplexity vs latency and energy."),
        points: str = typer.Option("all", "--points", metavar="WHICH",
                                   help="With --search: which points to price: all, accepted or chosen."),
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
        """Sweep accelerator design points (Pareto front of latency, energy, area), join the
        perplexity of `nmx run` results with their cost on one accelerator, or price the points of
        `nmx search-precision` (--search) on several designs (Pareto front of perplexity vs cost)."""
        if isinstance(top, bool) or top < 1:
            raise InputError(f"--top must be at least 1, got {top}")
        out = _plot_output(plot)  # decided now: a bad --plot fails before any work
        try:
            if search:
                if any(x is not None for x in (weights, activations, pattern, kv_format)):
                    raise InputError("--search takes the formats from each search's recipe and points: drop "
                                     "--weights/--activations/--pattern/--kv-format")
                _explore_search(search, accel, target, results, more_results, sweep, workload, gemm, model, phase,
                                batch, context, tokens, points, impl, top, plot, out, as_json)
                return
            if len(accel) > 1 or len(target) > 1:
                raise InputError("several --accel/--target designs are for --search; a sweep or --results takes one")
            _explore(accel[0] if accel else None, sweep, list(results) + list(more_results or []), workload, model,
                     gemm, phase, batch, context, tokens, weights, activations, pattern, kv_format, top, plot, out,
                     as_json, target[0] if target else None, impl)
        finally:
            if out is not None:
                out.abort()  # removes the temporary file unless the figure was written


def _explore_search(search: list[Path], accel: list[Path], target: list[str], results: list[Path],
                    more_results: Optional[list[Path]], sweep: list[str], workload: Optional[Path],
                    gemm: Optional[str], model: Optional[str], phase: str, batch: int, context: int, tokens: int,
                    points: str, impl: str, top: int, plot: Optional[Path], out: Any, as_json: bool) -> None:
    """`nmx explore --search`: a precision search's points joined with the designs' cost."""
    from nmx.hw import explore as ex
    from nmx.hw.accel_spec import load_accel

    if results or more_results:
        raise InputError("--search and --results are two joins: give one of them")
    if sweep or workload is not None or gemm is not None:
        raise InputError("--search takes the workload from the search's recipe and model: drop "
                         "--sweep/--workload/--gemm (--model only names the shape where the search's model is no "
                         "preset)")
    if not accel and not target:
        raise InputError("--search needs the designs to price its points on: --accel FILE.yaml or --target "
                         "NAME_OR_YAML (repeatable)")
    specs = [load_accel(a) for a in accel] + list(target)
    res = ex.search_vs_cost(search, specs, model=model, phase=phase, batch=batch, context=context, tokens=tokens,
                            which=points, gpu_impl=impl)
    rows = res["rows"]
    if out is not None:
        ex.plot_search(rows, out)
    if as_json:
        typer.echo(json.dumps({**res, "plot": str(plot) if plot else None}, indent=2))
        return
    step = f"{phase}, batch {batch}" + (f", context {context}" if phase == "decode" else f", {tokens} tokens")
    typer.echo(f"{len(rows)} rows ({len(rows) // max(len(res['targets']), 1)} points x {len(res['targets'])} "
               f"designs; {step}); perplexity = each search's calibration perplexity")
    typer.echo(f"Pareto front of perplexity vs latency and energy ({len(res['pareto'])} rows"
               + (f", first {top}" if len(res["pareto"]) > top else "") + "):")
    shown = [rows[i] for i in res["pareto"][:top]]
    ws = max([len("search")] + [len(r["search"]) for r in shown])
    wt = max([len("design")] + [len(r["target"]) for r in shown])
    typer.echo(f"{'search':<{ws}} {'qkv/o/up/down':<14} {'design':<{wt}} {'perplexity':>11} {'latency ms':>11} "
               f"{'energy mJ':>10}")
    for r in shown:
        energy = "-" if r["energy_pj"] is None else f"{r['energy_pj'] * 1e-9:.4g}"
        typer.echo(f"{r['search']:<{ws}} {r['label'] + ('*' if r['chosen'] else ''):<14} {r['target']:<{wt}} "
                   f"{r['perplexity']:>11.4f} {r['latency_s'] * 1e3:>11.4g} {energy:>10}")
    typer.echo("(* the search's chosen point)")
    if plot is not None:
        typer.echo(f"wrote {plot}")


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
