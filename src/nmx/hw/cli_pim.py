"""`nmx hw pim`: decode on a GPU alone vs with bank-level compute in its DRAM (nmx.hw.pim)."""

from __future__ import annotations

import typer

from nmx.hw.cli_serve import MODEL_HELP, _table


def register(hw_app: typer.Typer) -> None:
    """Add `nmx hw pim` to `nmx hw`."""

    @hw_app.command("pim")
    def pim_cmd(
        target: str = typer.Option("h100-hbm-pim", "--target", metavar="NAME_OR_YAML",
                                   help="PIM preset (h100-hbm-pim, a100-hbm-pim, l40s-aim) or a `kind: pim` YAML."),
        model: str = typer.Option("llama-2-7b", "--model", metavar="NAME_OR_DIR", help=MODEL_HELP),
        phase: str = typer.Option("decode", "--phase", metavar="PHASE", help="decode (PIM runs GEMVs and "
                                  "attention) or prefill (stays on the GPU)."),
        batch: int = typer.Option(1, "--batch", metavar="N", help="Sequences per step."),
        context: int = typer.Option(4096, "--context", metavar="TOKENS", help="Tokens already cached."),
        tokens: int = typer.Option(2048, "--tokens", metavar="TOKENS", help="Prefill length."),
        recipes: str = typer.Option("dense,2:4,nvfp4,2:4+nvfp4", "--recipes", metavar="R,R,...",
                                    help="Weight recipes: dense, a pattern (2:4), a format (nvfp4), or both joined "
                                         "by + ; kv:FORMAT adds a KV format."),
        impl: str = typer.Option("ideal", "--impl", metavar="IMPL", help="Host GPU kernels: pytorch, ideal, nmx."),
        sparse_skip: bool = typer.Option(False, "--sparse-skip", help="What-if: the units skip the zeros of N:M "
                                         "(not a published unit)."),
        scales_with_bits: bool = typer.Option(False, "--scales-with-bits", help="What-if: the units' rate scales "
                                              "with 16 / weight bits (not a published unit)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Decode step time and memory-side energy on a GPU alone vs the GPU with PIM memory, per recipe."""
        from dataclasses import replace

        from nmx.hw.pim import PimModel, get_pim, pim_gain
        from nmx.hw.reasoning import recipe_compression
        from nmx.hw.workload import llm_workload

        t = get_pim(target, impl)
        if sparse_skip or scales_with_bits:
            t = PimModel(replace(t.spec, sparse_skip=sparse_skip, scales_with_bits=scales_with_bits), impl, t.source)
        comps = [(r, recipe_compression(r)) for r in recipes.split(",") if r.strip()]
        rows = []
        for label, comp in comps:
            w = llm_workload(model, phase, batch=batch, tokens=tokens, context=context, compression=comp)
            rows.append({"recipe": label, **pim_gain(t, w)})
        if as_json:
            from nmx.cli import _print_json

            _print_json({"target": t.describe(), "rows": rows})
            return
        _table([{**r, "GPU ms": r["gpu_latency_s"] * 1e3, "GPU+PIM ms": r["pim_latency_s"] * 1e3,
                 "GPU mem mJ": r["gpu_memory_energy_pj"] * 1e-9, "PIM mem mJ": r["pim_memory_energy_pj"] * 1e-9,
                 "ops on PIM": len(r["on_pim"])} for r in rows],
               ("recipe", "GPU ms", "GPU+PIM ms", "speedup", "GPU mem mJ", "PIM mem mJ", "energy_ratio", "bound",
                "ops on PIM"),
               title=f"nmx hw pim: {model} {phase}, batch {batch}, on {t.name} (GPU alone vs GPU + PIM)")
        d = t.describe()
        typer.echo(f"{t.name}: host {d['host']} ({d['host_tb_s']:.3g} TB/s), {d['devices']} PIM devices, "
                   f"{d['units']} units, {d['pim_tflops']:.3g} TFLOPS, {d['internal_tb_s']:.3g} TB/s inside the banks "
                   f"({d['internal_bw_multiple']:g}x each device's bus); memory-side energy only (DRAM accesses + "
                   f"PIM arithmetic); estimated figures: {', '.join(d['estimated']) or 'none'}")
