"""The `nmx sweep` command; `register` adds it to the top-level app (nmx.cli).

    nmx sweep examples/sweeps/nm_formats.yaml --out runs/nm_formats
    nmx sweep SWEEP.yaml --address 10.0.0.5:6379 --gpus-per-point 1
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress_line(state: Any) -> str:
    cached = f" ({state.cached} cached)" if state.cached else ""
    eta = f", about {_clock(state.eta_s)} left" if state.eta_s is not None and state.running else ""
    return (f"sweep: {state.done + state.cached}/{state.total} done{cached}, {state.running} running, "
            f"{state.failed} failed; {_clock(state.elapsed_s)} elapsed{eta}")


class SweepProgress:
    """Progress on stderr: a live line on a terminal, else a line whenever a point starts or ends."""

    def __init__(self) -> None:
        self._live = None
        self._last = None
        self._tty = sys.stderr.isatty()

    def __enter__(self) -> "SweepProgress":
        return self

    def __exit__(self, *exc: Any) -> bool:
        if self._live is not None:
            self._live.__exit__(*exc)
        return False

    def __call__(self, state: Any) -> None:
        line = progress_line(state)
        if self._tty:
            if self._live is None:
                from rich.console import Console
                from rich.live import Live

                self._live = Live(line, console=Console(stderr=True), refresh_per_second=4, transient=False)
                self._live.__enter__()
            self._live.update(line)
            return
        counts = (state.done, state.cached, state.failed, state.running)
        if counts != self._last:
            self._last = counts
            sys.stderr.write(line + "\n")
            sys.stderr.flush()


def register(app: typer.Typer) -> None:
    """Add `nmx sweep`."""

    @app.command("sweep")
    def sweep_cmd(
        sweep_path: Path = typer.Argument(..., metavar="SWEEP", help="Sweep YAML file: base recipe, grid and/or "
                                          "points, hardware (see examples/sweeps/)."),
        out: Optional[Path] = typer.Option(None, "--out", metavar="DIR",
                                           help="Sweep folder: points/ (the cache, kept between runs) and report/ "
                                                "(replaced whole at the end). Default: sweep-NAME, NAME being the "
                                                "sweep file's name. Give an earlier sweep's folder to resume it."),
        address: Optional[str] = typer.Option(None, "--address", metavar="ADDR",
                                              help="Join a running Ray cluster: HOST:PORT of its head (6379 by "
                                                   "default), ray://HOST:10001 or auto. Default: a local Ray "
                                                   "(or the cluster in RAY_ADDRESS)."),
        cpus_per_point: int = typer.Option(1, "--cpus-per-point", metavar="N", min=1,
                                           help="CPUs Ray reserves for each point (and its torch threads)."),
        gpus_per_point: float = typer.Option(0.0, "--gpus-per-point", metavar="N", min=0.0,
                                             help="GPUs Ray reserves for each point (0.5: two points share one)."),
        overwrite: bool = typer.Option(False, "--overwrite",
                                       help="Recompute every point, replacing the cached ones (default: reuse "
                                            "them and run only the missing points)."),
        as_json: bool = typer.Option(False, "--json", help="Print the table as JSON instead of a summary."),
    ) -> None:
        """Run many recipes on Ray (cached per point, resumable): one table, Pareto plots, one HTML report."""
        from nmx.io import Interrupted
        from nmx.sweep.driver import run_sweep
        from nmx.sweep.spec import load_sweep

        sweep = load_sweep(sweep_path)
        folder = out if out is not None else Path(f"sweep-{sweep_path.stem}")
        t0 = time.perf_counter()
        try:
            with SweepProgress() as progress:
                result = run_sweep(sweep, folder, address=address, cpus_per_point=cpus_per_point,
                                   gpus_per_point=gpus_per_point, overwrite=overwrite, progress=progress)
        except (KeyboardInterrupt, Interrupted) as sig:  # said here: main()'s "nothing was written" is not so
            what = "SIGINT" if isinstance(sig, KeyboardInterrupt) else (str(sig) or "SIGTERM")
            typer.echo(f"interrupted ({what}): the report was not written; {_kept(folder)}", err=True)
            raise typer.Exit(130 if isinstance(sig, KeyboardInterrupt) else 143) from None
        _print(result, as_json, time.perf_counter() - t0)
        if result.failed:
            raise typer.Exit(1)


def _kept(folder: Path) -> str:
    points = folder / "points"
    n = len([p for p in points.glob("*.json") if not p.name.startswith(".")]) if points.is_dir() else 0
    if not n:
        return "no point had finished"
    return f"{n} finished point{'s' * (n != 1)} kept in {points}: run the same command to resume"


def _print(result: Any, as_json: bool, wall_s: float) -> None:
    from nmx.cli import _print_json, console
    from nmx.sweep.report import rows

    table, paths, _ = rows(result.outcomes)
    if as_json:
        _print_json(table)
        return
    from rich.table import Table

    from nmx.sweep.report import _fmt

    t = Table(title=f"nmx sweep: {len(table)} points")
    cols = ["#", "point", "status", "perplexity", "bits_per_weight", "kv_bytes_per_token", "wall_s"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("point", "status") else "right")
    for r in table:
        t.add_row(*[_fmt(r.get(c), c) for c in cols])
    console.print(t)
    report = result.out / "report"
    typer.echo(f"wrote {report}/report.html, table.csv, table.md and {sum('plots/' in str(f) for f in result.files)} "
               f"plots in {wall_s:.0f} s")
    if result.failed:
        typer.echo(f"{len(result.failed)} of {len(table)} points failed (see the table); run the same command to "
                   "retry them", err=True)
