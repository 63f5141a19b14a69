"""`nmx hw train-step`: what one training step costs, sparse against dense, on one target.

    nmx hw train-step --model smollm2-135m --batch 8 --seq-len 2048 --pattern 2:4 --mask transposable \\
        --target h100-sxm --impl ideal
    nmx hw train-step --model llama-2-7b --batch 1 --seq-len 4096 --pattern 2:8 --mask bidirectional \\
        --target examples/hw/nm28_16x16_ws.yaml --checkpointing --json
"""

from __future__ import annotations

import json
from typing import Any

import typer


def _fmt_s(v: float | None) -> str:
    return "" if v is None else f"{v * 1e3:.4g}"


def _fmt(v: float | None, spec: str = ".3g") -> str:
    return "" if v is None else format(v, spec)


def register(hw_app: typer.Typer) -> None:
    """Add `nmx hw train-step`."""

    @hw_app.command("train-step")
    def train_step_cmd(
        model: str = typer.Option("smollm2-135m", "--model", metavar="NAME_OR_DIR",
                                  help="Preset (nmx hw llm's), HF config.json / folder, or an nmx run folder."),
        batch: int = typer.Option(8, "--batch", metavar="N", help="Sequences per step."),
        seq_len: int = typer.Option(2048, "--seq-len", metavar="TOKENS", help="Tokens per sequence."),
        pattern: str = typer.Option("2:4", "--pattern", metavar="N:M",
                                    help="N:M pattern of the masked linears (attention and MLP projections)."),
        mask: str = typer.Option("plain", "--mask", metavar="KIND",
                                 help="plain (forward GEMM sparse), transposable (forward and input-gradient "
                                      "GEMMs, one mask N:M along both dims) or bidirectional (forward with the "
                                      "row-wise mask, input gradient with a column-wise mask)."),
        target: str = typer.Option("h100-sxm", "--target", metavar="NAME_OR_YAML",
                                   help="GPU preset or accelerator design (nmx hw targets), or a YAML file."),
        checkpointing: bool = typer.Option(False, "--checkpointing",
                                           help="Gradient checkpointing per decoder layer: the layer's forward "
                                                "is recomputed in the backward; only layer inputs are saved."),
        impl: str = typer.Option("pytorch", "--impl", metavar="IMPL",
                                 help="GPU kernels: pytorch (PyTorch's 2:4 path with its per-call plan setup) "
                                      "or ideal (cached plans); ignored by accelerators."),
        master: str = typer.Option("fp32", "--master", metavar="PRECISION",
                                   help="AdamW state: fp32 (fp32 master weights, gradients and moments plus a "
                                        "bf16 copy) or bf16 (all bf16)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Forward / input-gradient / weight-gradient / optimizer cost of one training step with N:M
        masks, against the dense step, on a GPU target or an accelerator design."""
        from nmx.errors import InputError
        from nmx.hw.training import OPTIMIZERS, check_mask, check_pattern, price_train_step
        from nmx.hw.workload import check_size

        check_size("--batch", batch)
        check_size("--seq-len", seq_len)
        check_pattern(pattern)
        if check_mask(mask) == "dense":
            raise InputError("--mask must be plain, transposable or bidirectional (the dense step is always the "
                             "baseline)")
        if master not in OPTIMIZERS:
            raise InputError(f"--master must be one of {', '.join(OPTIMIZERS)}, got {master!r}")
        r = price_train_step(target, model, batch=batch, seq_len=seq_len, pattern=pattern, mask=mask,
                             checkpointing=checkpointing, optimizer=OPTIMIZERS[master], gpu_impl=impl)
        if as_json:
            typer.echo(json.dumps(r, indent=2))
            return
        _print_table(r)


def _print_table(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    energy = r["total"]["dense_energy_pj"] is not None
    cols = ["", "dense ms", "sparse ms", "speedup"] + (["dense mJ", "sparse mJ"] if energy else []) + \
        ["sparse GB moved"]
    table = Table(*cols)
    labels = {"forward": "forward", "recompute": "recompute (checkpointing)", "input_grad": "input-grad",
              "weight_grad": "weight-grad", "optimizer": "optimizer"}
    for g, row in [*r["groups"].items(), ("total", r["total"])]:
        cells = [labels.get(g, g), _fmt_s(row["dense_s"]), _fmt_s(row["sparse_s"]), _fmt(row["speedup"], ".3f")]
        if energy:
            cells += [_fmt(row["dense_energy_pj"] and row["dense_energy_pj"] * 1e-9, ".4g"),
                      _fmt(row["sparse_energy_pj"] and row["sparse_energy_pj"] * 1e-9, ".4g")]
        cells.append(_fmt(row["sparse_bytes"] / 1e9, ".4g"))
        table.add_row(*cells)
    Console(width=160).print(table)
    impl = f", impl {r['impl']}" if "impl" in r else ""
    typer.echo(f"{r['model']} training step on {r['target']} ({r['kind']}{impl}): batch {r['batch']} x "
               f"{r['seq_len']} tokens, {r['pattern']} {r['mask']} mask"
               f"{', gradient checkpointing' if r['checkpointing'] else ''}; "
               f"{r['sparse_mac_fraction']:.3f} of the masked linears' GEMM MACs have an N:M operand; "
               f"total speedup over dense {r['total']['speedup']:.3f}x")
    typer.echo(f"activation memory {r['activation_bytes'] / 1e9:.3f} GB (without checkpointing "
               f"{r['activation_bytes_no_checkpointing'] / 1e9:.3f} GB); optimizer state "
               f"{r['optimizer_state_bytes'] / 1e9:.3f} GB")
    for note in r.get("notes", []):
        typer.echo(f"note: {note}")
