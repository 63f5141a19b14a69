"""CLI commands of nmx.hw (accel); `register` adds them to the `nmx hw` group.

    nmx hw accel --accel examples/hw/nm24_16x16_ws.yaml --gemm 1,4096,4096 --weights int8 --pattern 2:4
    nmx hw accel --accel examples/hw/uspe_16x16_ws.yaml --model llama-2-7b --phase decode --per-op --json
    nmx hw accel --accel X.yaml --workload W.yaml
    nmx hw tech --json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from nmx.errors import InputError


def build_work(workload: Optional[Path], model: Optional[str], gemm: Optional[str], phase: str, batch: int,
               context: int, tokens: int, weights: Optional[str], activations: Optional[str],
               pattern: Optional[str], kv_format: Optional[str], act_density: float) -> tuple[Any, str]:
    """The workload from exactly one of --workload, --model, --gemm (and the format flags)."""
    from nmx.hw.accel import gemm_problem
    from nmx.hw.accel_spec import load_workload
    from nmx.hw.workload import Compression, check_size, llm_workload

    given = [x for x in (workload, model, gemm) if x is not None]
    if len(given) != 1:
        raise InputError("give exactly one of --workload W.yaml, --model NAME_OR_RESULT_DIR, --gemm M,N,K")
    if workload is not None:
        return load_workload(workload), str(workload)
    if gemm is not None:
        try:
            m, n, k = (int(x) for x in gemm.split(","))
        except ValueError:
            raise InputError(f"--gemm {gemm!r}: write M,N,K (three integers, e.g. 1,4096,4096)") from None
        for label, v in (("M", m), ("N", n), ("K", k)):
            check_size(f"--gemm {gemm}: {label}", v)
        g = gemm_problem(m, n, k, weights=weights, activations=activations, pattern=pattern,
                         act_density=act_density)
        return g, f"gemm {m}x{n}x{k}"
    comp = None
    if any(x is not None for x in (weights, activations, pattern, kv_format)):
        comp = Compression(weights=weights, activations=activations, pattern=pattern, kv_format=kv_format)
    w = llm_workload(model, phase, batch=batch, tokens=tokens, context=context, compression=comp)
    return w, f"{w.model.name} {phase} (batch {batch}, context {context})"


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def register(hw_app: typer.Typer) -> None:
    """Add `nmx hw accel` and `nmx hw tech`."""

    @hw_app.command("accel")
    def accel_cmd(
        accel: Path = typer.Option(..., "--accel", metavar="FILE.yaml", help="Accelerator YAML (see examples/hw/)."),
        workload: Optional[Path] = typer.Option(None, "--workload", metavar="FILE.yaml",
                                                help="Workload YAML (gemm: or model:)."),
        model: Optional[str] = typer.Option(None, "--model", metavar="NAME_OR_DIR",
                                            help="Preset (e.g. llama-2-7b), HF config, or `nmx run` result folder."),
        gemm: Optional[str] = typer.Option(None, "--gemm", metavar="M,N,K",
                                           help="One GEMM as M,N,K (m tokens, n out, k in)."),
        phase: str = typer.Option("decode", "--phase", metavar="PHASE",
                                  help="prefill or decode (--model only)."),
        batch: int = typer.Option(1, "--batch", metavar="N", help="Sequences per step (--model only)."),
        context: int = typer.Option(2048, "--context", metavar="TOKENS",
                                    help="Tokens already cached in decode (--model only)."),
        tokens: int = typer.Option(2048, "--tokens", metavar="TOKENS", help="Prefill length per sequence."),
        weights: Optional[str] = typer.Option(None, "--weights", metavar="FORMAT",
                                              help="Weight number format (default bf16)."),
        activations: Optional[str] = typer.Option(None, "--activations", metavar="FORMAT",
                                                  help="Activation format (default bf16)."),
        pattern: Optional[str] = typer.Option(None, "--pattern", metavar="PATTERN",
                                              help="Weight sparsity, e.g. 2:4 or 50%."),
        kv_format: Optional[str] = typer.Option(None, "--kv-format", metavar="FORMAT",
                                                help="KV-cache format (default bf16; --model only)."),
        act_density: float = typer.Option(1.0, "--act-density", metavar="FRACTION",
                                          help="Nonzero fraction of activations, in (0, 1] (--gemm only)."),
        per_op: bool = typer.Option(False, "--per-op", help="Also list each op's cycles and energy."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    ) -> None:
        """Cycles, energy by component, area and utilization of one accelerator design."""
        from nmx.hw.accel import evaluate
        from nmx.hw.accel_spec import load_accel

        spec = load_accel(accel)
        work, what = build_work(workload, model, gemm, phase, batch, context, tokens, weights, activations,
                                pattern, kv_format, act_density)
        r = evaluate(spec, work, per_op=per_op)
        out = {"accel": spec.name, "workload": what, **r.point()}
        out["area_mm2"] = out["area_um2"] * 1e-6
        if per_op:
            out["ops"] = [{"name": o["name"], "count": o["count"], "kind": o["kind"],
                           "cycles": float(o["cycles"]), "energy_pj": float(o["energy_pj"]),
                           "dram_bytes": float(o["dram_bytes"])} for o in r.per_op]
        if as_json:
            typer.echo(json.dumps(out, indent=2, default=str))
            return
        typer.echo(f"{spec.name} on {what}")
        if not out["feasible"]:
            typer.echo("  infeasible: the mapping's tiles do not fit the buffer or its loops do not cover the problem")
        typer.echo(f"  latency {out['latency_s'] * 1e3:.4g} ms ({_fmt(out['cycles'])} cycles at {spec.clock_ghz} GHz; "
                   f"compute {_fmt(out['compute_cycles'])}, buffer {_fmt(out['glb_cycles'])}, "
                   f"DRAM {_fmt(out['dram_cycles'])})")
        typer.echo(f"  energy  {out['energy_pj'] * 1e-6:.4g} uJ: " + ", ".join(
            f"{k} {v * 1e-6:.3g}" for k, v in out["energy_breakdown_pj"].items()))
        typer.echo(f"  area    {out['area_mm2']:.4g} mm2: " + ", ".join(
            f"{k} {v * 1e-6:.3g}" for k, v in out["area_breakdown_um2"].items()))
        typer.echo(f"  utilization {out['utilization']:.3f}; MACs issued {_fmt(out['macs_issued'])}, "
                   f"executed {_fmt(out['macs_executed'])}, effectual {_fmt(out['macs_effectual'])}; "
                   f"DRAM {_fmt(out['dram_bytes'])} B (metadata {_fmt(out['metadata_bytes'])} B)")
        for o in out.get("ops", []):
            typer.echo(f"    {o['name']:<32} x{o['count']:<8g} cycles {_fmt(o['cycles']):>10}  "
                       f"energy {o['energy_pj'] * 1e-6:.4g} uJ")

    @hw_app.command("tech")
    def tech_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
        """Technology tables: energy / area of a MAC and of SRAM at 45, 28, 16 and 7 nm (sources in nmx.hw.tech)."""
        from nmx.hw.tech import tech_table

        rows = tech_table()
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        cols = list(rows[0])
        typer.echo("  ".join(f"{c:>20}" for c in cols))
        for r in rows:
            typer.echo("  ".join(f"{r[c]:>20.4g}" for c in cols))
