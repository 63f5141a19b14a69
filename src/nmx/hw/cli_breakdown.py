"""`nmx hw breakdown`: a step's time and energy by operation class (nmx.hw.breakdown)."""

from __future__ import annotations

from typing import Optional

import typer

from nmx.hw.cli_serve import MODEL_HELP, _table, compression_for


def register(hw_app: typer.Typer) -> None:
    """Add `nmx hw breakdown` to `nmx hw`."""

    @hw_app.command("breakdown")
    def breakdown_cmd(
        model: str = typer.Option("llama-2-7b", "--model", metavar="NAME_OR_DIR", help=MODEL_HELP),
        target: str = typer.Option("h200", "--target", metavar="NAME_OR_YAML",
                                   help="GPU preset or accelerator design (nmx hw targets), or a YAML file."),
        phase: str = typer.Option("decode", "--phase", metavar="PHASE", help="decode or prefill."),
        batch: int = typer.Option(1, "--batch", metavar="N", help="Sequences per step."),
        context: int = typer.Option(4096, "--context", metavar="TOKENS", help="Tokens already cached (decode)."),
        tokens: int = typer.Option(2048, "--tokens", metavar="TOKENS", help="Prefill length."),
        weights: Optional[str] = typer.Option(None, "--weights", metavar="FORMAT", help="Override: weight format."),
        sparsity: Optional[str] = typer.Option(None, "--sparsity", metavar="PATTERN", help="Override: pattern."),
        kv_format: Optional[str] = typer.Option(None, "--kv-format", metavar="FORMAT", help="Override: KV format."),
        nonlinear: Optional[str] = typer.Option(None, "--nonlinear", metavar="METHOD",
                                                help="Accelerators: softmax and SiLU on nonlinear units of this "
                                                     "method (lut256, pwl16, cordic12, ...; nmx hw nonlinear)."),
        nl_lanes: int = typer.Option(16, "--nl-lanes", metavar="N", help="Copies of the nonlinear unit."),
        sweep: Optional[str] = typer.Option(None, "--sweep-array", metavar="S,S,...",
                                            help="Accelerators: also the nonlinear share at these array sizes "
                                                 "(rows = cols; DRAM and buffer bandwidth scale with them)."),
        impl: str = typer.Option("pytorch", "--impl", metavar="IMPL", help="GPU kernels: pytorch, ideal or nmx."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Time and energy of one step by operation class (GEMM, attention, softmax, norm, activation, KV
        movement) and the nonlinear share; optionally that share as the matrix array grows."""
        from nmx.errors import InputError
        from nmx.hw.breakdown import array_sweep, breakdown

        comp = compression_for(model, weights, None, sparsity, kv_format)
        sizes = None
        if sweep is not None:
            try:
                sizes = [int(s) for s in sweep.split(",") if s.strip()]
            except ValueError:
                raise InputError(f"--sweep-array takes comma-separated integers, got {sweep!r}") from None
        b = breakdown(model, target, phase, batch, context, tokens, comp, nonlinear, nl_lanes, impl)
        curve = array_sweep(model, target, sizes, phase, batch, context, tokens, comp, nonlinear, nl_lanes) \
            if sizes else None
        if as_json:
            from nmx.cli import _print_json

            _print_json({"breakdown": b, "array_sweep": curve})
            return
        rows = [{"class": k, "ms": v["latency_s"] * 1e3, "share": v["share"],
                 "energy mJ": None if v["energy_pj"] is None else v["energy_pj"] * 1e-9,
                 "energy share": v["energy_share"]}
                for k, v in b["classes"].items()]
        _table(rows, ("class", "ms", "share", "energy mJ", "energy share"),
               title=f"{b['model']} {phase} on {b['target']} ({b['compression']}; batch {batch})")
        e = "" if b["nonlinear_energy_share"] is None else f", {b['nonlinear_energy_share']:.1%} of the energy"
        typer.echo(f"nonlinear share (softmax + norm + activation): {b['nonlinear_share']:.1%} of the time{e}; "
                   f"step {b['latency_s'] * 1e3:.4g} ms")
        for note in b["notes"]:
            typer.echo(f"note: {note}")
        if curve:
            _table([{**r, "ms": r["latency_s"] * 1e3} for r in curve],
                   ("size", "ms", "nonlinear_share", "softmax_share", "gemm_share", "attention_share"),
                   title="nonlinear share as the array grows (rows = cols = size)")
