"""CLI commands of nmx.hw (nonlinear); `register` adds them to the `nmx hw` group."""

from __future__ import annotations

import json
from typing import List, Optional

import typer


def _table(rows: list[dict], title: str):
    from rich.table import Table

    t = Table(title=title)
    cols = [("method", "left"), ("max |err|", "right"), ("mean |err|", "right"), ("rel L2 err", "right"),
            ("cycles/elem", "right"), ("latency cyc", "right"), ("energy pJ/elem", "right"), ("area um2", "right"),
            ("table bits", "right")]
    for c, j in cols:
        t.add_column(c, justify=j, no_wrap=c == "method")
    for r in rows:
        t.add_row(r["method"], f"{r['max_abs_error']:.3e}", f"{r['mean_abs_error']:.3e}", f"{r['rel_l2_error']:.3e}",
                  f"{r['cycles_per_element']:.3g}", str(r["latency_cycles"]), f"{r['energy_pj_per_element']:.3f}",
                  f"{r['area_um2']:.0f}", str(r.get("table_bits", "-")))
    return t


def register(hw_app: typer.Typer) -> None:
    """Add `nmx hw nonlinear` to `nmx hw`."""

    @hw_app.command("nonlinear")
    def nonlinear(
        more_methods: Optional[List[str]] = typer.Argument(None, metavar="METHOD", show_default=False,
                                                           help="More method names (same as --methods)."),
        function: str = typer.Option("silu", "--function", "-f", metavar="NAME",
                                     help="exp, reciprocal, sigmoid, tanh, silu, gelu, gelu_tanh or softmax."),
        methods: List[str] = typer.Option([], "--methods", "-m", metavar="METHOD",
                                          help="Methods: lut<N>, lut<N>_interp, pwl<N>, cordic<N>[_iter] "
                                               "[_in<F>][_out<D>]; `--methods a b c` or a,b,c."),
        tech: int = typer.Option(45, "--tech", metavar="NM", help="Technology node in nm: 45, 28, 16 or 7."),
        row_len: int = typer.Option(256, "--row-len", metavar="N", help="Softmax row length for its per-row cost."),
        seed: int = typer.Option(0, "--seed", metavar="SEED", help="Seed of the random half of the test inputs."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Nonlinear units (LUT, interpolated LUT, PWL, CORDIC): error against float64 and cost per element."""
        from nmx.hw import nonlinear as nl
        from nmx.hw.tech import get_tech

        names = [n for item in [*methods, *(more_methods or [])] for n in item.split(",") if n.strip()]
        fn = nl.function_name(function)
        for n in names:
            nl.get(n)
        t = get_tech(tech)
        rows = nl.compare(fn, names or list(nl.DEFAULT_METHODS), t, seed=seed, row_len=row_len)
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        from nmx.cli import console

        if fn == "softmax":
            inputs = f"64 rows x 256 logits N(0,1) * 0.5..16 + one row over [-20, 0] (seed {seed}); " \
                     f"cost per element of a {row_len}-wide row, one lane; latency = cycles per row"
        else:
            spec = nl.FUNCTIONS[fn]
            inputs = f"grid of 8193 + 8192 seeded random points on [{spec.std_lo:g}, {spec.std_hi:g}] (seed {seed})"
        console.print(_table(rows, f"nmx hw nonlinear: {fn} at {tech} nm, {t.clock_ghz:g} GHz"))
        console.print(f"inputs: {inputs}; error against float64 torch; default input Q.12, output Q.16 "
                      "fixed point; energy is dynamic only; see help(nmx.hw.nonlinear) for the cost model.")
