"""`nmx hw format-search`: weight compression format x dataflow co-search (nmx.hw.format_search).

    nmx hw format-search --design examples/hw/dense_16x16_ws.yaml --gemm 1,4096,4096 --weights int8 \\
        --activations int8 --sparsity 0.5,0.7,0.9
    nmx hw format-search --design D.yaml --model llama-2-7b --phase prefill --tokens 2048 --weights int8 \\
        --activations int8 --sparsity 0.9 --exhaustive --out fs.json
    nmx hw format-search --design D.yaml --workload W.yaml --sparsity 90% --primitives U,B,CP --json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from nmx.errors import InputError


def _split(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise InputError(f"{what} {text!r}: give a comma-separated list")
    return items


def build_space(primitives: str, blocks: str, dataflows: str, levels: str) -> Any:
    from nmx.hw.format_search import Space

    alias = {"ws": "weight", "os": "output", "is": "input"}
    try:
        bl = tuple(int(b) for b in _split(blocks, "--blocks")) if blocks.strip().lower() != "none" else ()
        lv = tuple(int(x) for x in _split(levels, "--ranks"))
    except ValueError:
        raise InputError(f"--blocks {blocks!r} / --ranks {levels!r}: whole numbers, comma-separated") from None
    if not bl and 3 in lv:
        lv = tuple(x for x in lv if x != 3)
        if not lv:
            raise InputError("--ranks 3 needs --blocks (three ranks split the inner dimension in blocks)")
    prims = tuple(p.upper() for p in _split(primitives, "--primitives"))
    dfs = tuple(alias.get(d.lower(), d.lower()) for d in _split(dataflows, "--dataflows"))
    return Space(primitives=prims, blocks=bl, levels=lv, dataflows=dfs)


def register(hw_app: typer.Typer) -> None:
    """Add `nmx hw format-search` to `nmx hw`."""

    @hw_app.command("format-search")
    def format_search_cmd(
        design: Path = typer.Option(..., "--design", "--accel", metavar="FILE.yaml",
                                    help="Accelerator YAML (see examples/hw/): PE array, buffer, DRAM energy."),
        workload: Optional[Path] = typer.Option(None, "--workload", metavar="FILE.yaml",
                                                help="Workload YAML (gemm: or model:); or give --model or --gemm."),
        model: Optional[str] = typer.Option(None, "--model", metavar="NAME_OR_DIR",
                                            help="Preset (e.g. llama-2-7b), HF config, or `nmx run` result folder."),
        gemm: Optional[str] = typer.Option(None, "--gemm", metavar="M,N,K", help="One linear as M,N,K."),
        phase: str = typer.Option("decode", "--phase", metavar="PHASE", help="prefill or decode (--model only)."),
        batch: int = typer.Option(1, "--batch", metavar="N", help="Sequences per step (--model only)."),
        tokens: int = typer.Option(2048, "--tokens", metavar="TOKENS", help="Prefill length (--model only)."),
        weights: Optional[str] = typer.Option(None, "--weights", metavar="FORMAT",
                                              help="Weight number format: its code bits are the stored value bits "
                                                   "(default bf16)."),
        activations: Optional[str] = typer.Option(None, "--activations", metavar="FORMAT",
                                                  help="Activation format (default bf16)."),
        sparsity: Optional[str] = typer.Option(None, "--sparsity", metavar="S,S,...",
                                               help="Unstructured weight sparsities in [0, 1), e.g. 0.5,0.7,0.9 or "
                                                    "90%; default: the workload's own."),
        primitives: str = typer.Option("U,UOP,B,CP,RLE", "--primitives", metavar="P,P,...",
                                       help="Per-rank primitives the formats are built from (U, UOP, B, CP, RLE)."),
        blocks: str = typer.Option("4,8,16,32,64", "--blocks", metavar="B,B,...",
                                   help="Block sizes of three-rank formats (the inner dimension split), or none."),
        ranks: str = typer.Option("1,2,3", "--ranks", metavar="R,R,...", help="Ranks per tile format (1, 2, 3)."),
        dataflows: str = typer.Option("ws,os,is", "--dataflows", metavar="D,D,...",
                                      help="Stationary operands searched: ws, os, is."),
        exhaustive: bool = typer.Option(False, "--exhaustive", help="Also run the exhaustive search: its time, "
                                        "whether it finds the same optimum, the best single format of the space."),
        out: Optional[Path] = typer.Option(None, "--out", metavar="FILE.json", help="Also write the JSON result."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """The weight format (per-rank primitives) and dataflow (stationarity, loop order, tiles) with
        the least memory energy per linear and sparsity, against fixed formats."""
        from nmx.hw.accel_spec import load_accel
        from nmx.hw.cli_accel import build_work
        from nmx.hw.format_search import Machine, check_sparsity, co_search, layer_cases
        from nmx.io import OutputFile

        sp = [check_sparsity(s) for s in _split(sparsity, "--sparsity")] if sparsity is not None else None
        space = build_space(primitives, blocks, dataflows, ranks)
        spec = load_accel(design)
        target = OutputFile(out, "--out", (".json",)) if out is not None else None
        try:
            work, what = build_work(workload, model, gemm, phase, batch, 0, tokens, weights, activations, None, None,
                                    1.0)
            cases = layer_cases(work, sp)
            res = co_search(cases, Machine.from_spec(spec), space, check=exhaustive)
            res["workload"] = what
            text = json.dumps(res, indent=2)
            if target is not None:
                with target as tmp:
                    tmp.write_text(text + "\n")
        finally:
            if target is not None:
                target.abort()
        if as_json:
            typer.echo(text)
            return
        _print(res, exhaustive)
        if out is not None:
            typer.echo(f"wrote {out}")


def _print(res: dict, exhaustive: bool) -> None:
    from nmx.hw.cli_serve import _table

    summ = res["summary"]
    fixed = summ.get("best_fixed_classic", {})
    lab = fixed.get("label")
    rows = []
    for r in res["rows"]:
        b = r["best"]
        row = {"layer (n x k, m)": f"{r['layer']} ({r['n']}x{r['k']}, m={r['m']})",
               "sparsity": f"{r['sparsity']:.2f}",
               "best format": b["format"] + (f" r={b['rle_bits']}" if b["rle_bits"] else ""),
               "dataflow": f"{b['dataflow']} {b['loop_order']}", "tile m,n,k": ",".join(map(str, b["tile"])),
               "W MB": b["weight_bytes"] / 1e6, "mem uJ": b["memory_energy_pj"] * 1e-6,
               f"vs {lab}": f"{r['fixed'][lab]['saving']:.1%}" if lab else "-",
               "vs bitmap": f"{r['fixed']['bitmap']['saving']:.1%}" if "bitmap" in r["fixed"] else "-",
               "vs fmt→df": f"{r['sequential']['saving']:.1%}" if r["sequential"]["saving"] is not None else "-",
               "search ms": r["search_s"] * 1e3}
        if exhaustive:
            row["exhaustive ms"] = r["exhaustive_s"] * 1e3
            row["same opt."] = "yes" if r["same_energy"] else "NO"
        rows.append(row)
    cols = tuple(rows[0]) if rows else ()
    _table(rows, cols, title=f"nmx hw format-search: {res['workload']} on {res['machine']} (memory energy = DRAM + "
                             "buffer, per layer instance)")
    typer.echo("savings: memory energy saved by the co-searched best against a fixed format (its best dataflow) and "
               "against format-then-dataflow (the smallest untiled format, then its best dataflow)")
    if lab:
        typer.echo(f"best single classic format: {lab} ({fixed['format']}); mean saving of the co-search over it "
                   f"{fixed['mean_saving']:.2%}")
    if exhaustive and "best_fixed_any" in summ:
        a = summ["best_fixed_any"]
        typer.echo(f"best single format of the whole space: {a['format']}; mean saving over it {a['mean_saving']:.2%}; "
                   f"search {summ['search_s']:.3g} s vs exhaustive {summ['exhaustive_s']:.3g} s; same optimum "
                   f"everywhere: {'yes' if summ['all_same_energy'] else 'NO'}")
