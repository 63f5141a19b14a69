"""CLI commands of nmx.hw (timeloop); `register` adds them to the `nmx hw` group."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x else "0"


def _print_table(result, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in ("level", "data space", "reads", "fills", "updates", "skipped", "metadata words", "energy pJ"):
        t.add_column(col, justify="left" if col in ("level", "data space") else "right")
    for lv in result.levels:
        first = True
        for ds, tr in lv.traffic.items():
            skipped = tr.reads_skipped + tr.updates_skipped + tr.reads_gated + tr.updates_gated
            energy = "" if not first or lv.energy_pj is None else f"{lv.energy_pj:,.0f}"
            t.add_row(lv.name if first else "", ds + (" (compressed)" if tr.compressed else ""),
                      _fmt(tr.reads), _fmt(tr.fills), _fmt(tr.updates), _fmt(skipped),
                      _fmt(tr.metadata_reads + tr.metadata_fills), energy)
            first = False
    mac_e = "" if result.mac_energy_pj is None else f"{result.mac_energy_pj:,.0f}"
    t.add_row("MAC", "", "", "", "", _fmt(result.macs_skipped + result.macs_gated), "", mac_e)
    console = Console(width=140)
    console.print(t)
    energy = "not computed (no ERT)" if result.energy_pj is None else f"{result.energy_pj:,.0f} pJ"
    typer.echo(f"cycles {result.cycles:,.0f} (bound: {result.bound}), energy {energy}, "
               f"utilization {result.utilization:.3f}")
    typer.echo(f"MACs: {result.macs_algorithmic:,} algorithmic, {result.macs_effectual:,.0f} effectual "
               f"({result.macs_effectual / result.macs_algorithmic:.1%}), {result.macs_skipped:,.0f} skipped, "
               f"{result.macs_gated:,.0f} gated")
    for note in result.notes:
        typer.echo(f"note: {note}")


def register(hw_app: typer.Typer) -> None:
    """Add `nmx hw timeloop` to `nmx hw`."""

    @hw_app.command("timeloop")
    def timeloop_cmd(
        arch: Path = typer.Argument(..., metavar="ARCH", help="Architecture YAML (Timeloop v0.3)."),
        sparse_opts: Path = typer.Argument(..., metavar="SPARSE_OPTS", help="Sparse optimizations YAML."),
        workload: Path = typer.Argument(..., metavar="WORKLOAD", help="Problem YAML (data files beside it)."),
        mapping: Path = typer.Argument(..., metavar="MAPPING", help="Mapping YAML."),
        ert: Optional[Path] = typer.Option(None, "--ert", metavar="FILE.yaml",
                                           help="Energy table (default: ERT.yaml beside ARCH)."),
        art: Optional[Path] = typer.Option(None, "--art", metavar="FILE.yaml",
                                           help="Area table (default: ART.yaml beside ARCH)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Cycles, energy and accesses of a Timeloop/Sparseloop v0.3 case (one PE, sparse formats)."""
        from nmx.hw.timeloop import evaluate_files

        result = evaluate_files(arch, sparse_opts, workload, mapping, ert=ert, art=art)
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2))
        else:
            _print_table(result, f"{workload.name} on {arch.name} with {mapping.name}")
