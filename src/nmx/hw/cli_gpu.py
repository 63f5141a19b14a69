"""CLI commands of nmx.hw (GPU targets and the LLM workload); `register` adds them to `nmx hw`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from nmx.errors import InputError


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2))


def _read_shapes(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of each shape of a --shapes CSV; any unusable file is one InputError."""
    from nmx.hw.gpu import csv_rows
    from nmx.io import read_text

    rows = csv_rows(read_text(path, "--shapes CSV").splitlines(), path)
    if not rows:
        raise InputError(f"{path} has no rows: write a header line ({','.join(required)}) and one row per shape")
    missing = [c for c in required if c not in rows[0][1]]
    if missing:
        raise InputError(f"{path} lacks the column(s) {', '.join(missing)} (it has {', '.join(rows[0][1])})")
    return rows


def _int(row: dict[str, str], key: str) -> int:
    try:
        return int(row[key])
    except (TypeError, ValueError):
        raise InputError(f"column {key!r} must be an integer, got {row[key]!r}") from None


def _each_row(path: Path, required: tuple[str, ...], call: Callable[[dict[str, str], int], dict]) -> list[dict]:
    out = []
    for line, row in _read_shapes(path, required):
        try:
            out.append(call(row, line))
        except InputError as err:
            raise InputError(f"{path} line {line}: {err}") from None
    return out


def _table(results: list[dict], cols: tuple[str, ...]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*cols)
    for r in results:
        table.add_row(*[_fmt(r.get(c)) for c in cols])
    Console(width=160).print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _gpu(target: str, impl: str) -> Any:
    """The GpuTarget of a preset name or a `kind: gpu` YAML file."""
    from nmx.hw.gpu import PRESETS, get_target as gpu_preset
    from nmx.hw.targets import get_target, preset_names

    if target in PRESETS:
        return PRESETS[target]
    if target not in preset_names() and Path(target).suffix.lower() not in (".yaml", ".yml"):
        return gpu_preset(target)  # one line: unknown GPU target, with the presets
    t = get_target(target, impl)
    if t.kind != "gpu":
        raise InputError(f"--target {target}: {t.name} is {'an' if t.kind[0] in 'aeiou' else 'a'} {t.kind}; "
                         "nmx hw llm prices GPUs (an accelerator design: nmx hw accel; a PIM host: nmx hw pim)")
    return t.gpu


def register(hw_app: typer.Typer) -> None:
    """Add `nmx hw targets | gemm | attention | llm`."""

    @hw_app.command("targets")
    def targets(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
        """The hardware targets a recipe can name: GPU presets (peaks, bandwidth, calibration), the packaged
        accelerator designs and GPU hosts with near-memory (PIM) compute; any other target is a YAML file (see
        examples/hardware/)."""
        from nmx.hw.targets import list_targets

        rows = list_targets()
        if as_json:
            _echo_json(rows)
            return
        gpus = [r for r in rows if r["kind"] == "gpu"]
        _table([{**r, "bandwidth TB/s": r["bandwidth_bytes_per_s"] / 1e12,
                 "bf16 TFLOP/s": r["peak_flops"].get("bf16", 0) / 1e12,
                 "dtypes": " ".join(r["peak_flops"])} for r in gpus],
               ("name", "bandwidth TB/s", "bf16 TFLOP/s", "dtypes", "calibration"))
        _table([{**r, "array": "x".join(map(str, r["pe_array"])), "DRAM GB/s": r["dram_gb_s"]}
                for r in rows if r["kind"] == "accelerator"],
               ("name", "pe_kind", "array", "dataflow", "tech_nm", "clock_ghz", "glb_kb", "DRAM GB/s"))
        _table([{**r, "PIM TFLOP/s": r["pim_tflops"], "internal TB/s": r["internal_tb_s"], "host TB/s": r["host_tb_s"]}
                for r in rows if r["kind"] == "pim"],
               ("name", "host", "devices", "units", "PIM TFLOP/s", "internal TB/s", "host TB/s"))

    @hw_app.command("gemm")
    def gemm_cmd(
        target: str = typer.Option("h100-sxm", "--target", metavar="NAME", help="GPU preset (nmx hw targets)."),
        m: Optional[int] = typer.Option(None, "--m", metavar="M", help="Tokens (rows of x)."),
        n: Optional[int] = typer.Option(None, "--n", metavar="N", help="Output features."),
        k: Optional[int] = typer.Option(None, "--k", metavar="K", help="Input features (the reduction)."),
        dtype: str = typer.Option("bf16", "--dtype", metavar="DTYPE",
                                  help="Tensor-core dtype: bf16 fp16 fp8 int8 fp4 tf32."),
        sparsity: Optional[str] = typer.Option(None, "--sparsity", metavar="PATTERN",
                                               help="Weight sparsity; 2:4 uses sparse tensor cores."),
        weights: Optional[str] = typer.Option(None, "--weights", metavar="FORMAT",
                                              help="nmx weight format (bytes; dequantized in registers unless "
                                                   "native)."),
        impl: str = typer.Option("pytorch", "--impl", metavar="IMPL", help="pytorch (what PyTorch does today), "
                                 "ideal (cached plans, fused dequantization) or nmx (nmx's own kernels as "
                                 "measured)."),
        shapes: Optional[Path] = typer.Option(None, "--shapes", metavar="FILE.csv",
                                              help="CSV with columns m,n,k[,dtype,sparsity,weights]."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Latency of y = x W^T on a GPU target: memory-, compute- or overhead-bound."""
        from nmx.hw.gpu import gemm

        def one(row: dict[str, str], line: int) -> dict:
            return gemm(target, _int(row, "m"), _int(row, "n"), _int(row, "k"),
                        row.get("dtype") or dtype, row.get("sparsity") or sparsity, row.get("weights") or weights, impl)

        if shapes is not None:
            results = _each_row(shapes, ("m", "n", "k"), one)
        else:
            if None in (m, n, k):
                raise InputError("give --m, --n and --k (or --shapes FILE.csv)")
            results = [gemm(target, m, n, k, dtype, sparsity, weights, impl)]
        if as_json:
            _echo_json(results if shapes is not None else results[0])
        else:
            _table([{**r, "latency_us": r["latency_s"] * 1e6} for r in results],
                   ("target", "m", "n", "k", "latency_us", "bound", "dtype", "sparsity", "weights", "bytes"))

    @hw_app.command("attention")
    def attention_cmd(
        target: str = typer.Option("h100-sxm", "--target", metavar="NAME", help="GPU preset (nmx hw targets)."),
        batch: Optional[int] = typer.Option(None, "--batch", metavar="N", help="Sequences."),
        q_len: int = typer.Option(1, "--q-len", metavar="TOKENS", help="Query tokens per sequence (1 = decode)."),
        kv_len: Optional[int] = typer.Option(None, "--kv-len", metavar="TOKENS",
                                             help="Tokens in the KV cache (including the queries)."),
        heads_q: Optional[int] = typer.Option(None, "--heads-q", metavar="N", help="Query heads."),
        heads_kv: Optional[int] = typer.Option(None, "--heads-kv", metavar="N",
                                               help="Key/value heads (GQA: divides --heads-q)."),
        head_dim: int = typer.Option(128, "--head-dim", metavar="N", help="Channels per head."),
        kv_format: Optional[str] = typer.Option(None, "--kv-format", metavar="FORMAT",
                                                help="nmx format of K and V (default bf16)."),
        shapes: Optional[Path] = typer.Option(None, "--shapes", metavar="FILE.csv",
                                              help="CSV with columns batch,q_len,kv_len,heads_q,heads_kv "
                                                   "[,head_dim,kv_format]."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Latency of fused attention over a (possibly quantized) KV cache."""
        from nmx.hw.gpu import attention

        def one(row: dict[str, str], line: int) -> dict:
            g = lambda key: _int(row, key)  # noqa: E731
            return attention(target, g("batch"), g("q_len"), g("kv_len"), g("heads_q"), g("heads_kv"),
                             g("head_dim") if row.get("head_dim") else head_dim, row.get("kv_format") or kv_format)

        if shapes is not None:
            results = _each_row(shapes, ("batch", "q_len", "kv_len", "heads_q", "heads_kv"), one)
        else:
            if None in (batch, kv_len, heads_q, heads_kv):
                raise InputError("give --batch, --kv-len, --heads-q and --heads-kv (or --shapes FILE.csv)")
            results = [attention(target, batch, q_len, kv_len, heads_q, heads_kv, head_dim, kv_format)]
        if as_json:
            _echo_json(results if shapes is not None else results[0])
        else:
            _table([{**r, "latency_us": r["latency_s"] * 1e6} for r in results],
                   ("target", "latency_us", "bound", "kv_format", "kv_bytes", "flops"))

    @hw_app.command("llm")
    def llm_cmd(
        target: str = typer.Option("h100-sxm", "--target", metavar="NAME_OR_YAML",
                                   help="GPU preset (nmx hw targets) or a GPU YAML file (kind: gpu)."),
        model: str = typer.Option("llama-2-7b", "--model", metavar="NAME_OR_DIR",
                                  help="Preset, HF config.json / folder, or an nmx run folder."),
        phase: str = typer.Option("decode", "--phase", metavar="PHASE", help="prefill or decode."),
        batch: int = typer.Option(1, "--batch", metavar="N", help="Sequences per step."),
        tokens: int = typer.Option(2048, "--tokens", metavar="TOKENS", help="Prefill length per sequence."),
        context: int = typer.Option(2048, "--context", metavar="TOKENS", help="Tokens already cached (decode)."),
        weights: Optional[str] = typer.Option(None, "--weights", metavar="FORMAT",
                                              help="Override: weight format of the linears."),
        activations: Optional[str] = typer.Option(None, "--activations", metavar="FORMAT",
                                                  help="Override: activation format of the linears."),
        sparsity: Optional[str] = typer.Option(None, "--sparsity", metavar="PATTERN",
                                               help="Override: pattern of the linears."),
        kv_format: Optional[str] = typer.Option(None, "--kv-format", metavar="FORMAT",
                                                help="Override: KV-cache format (default bf16)."),
        impl: str = typer.Option("pytorch", "--impl", metavar="IMPL",
                                 help="pytorch, ideal or nmx (nmx's own kernels as measured)."),
        small_ops: str = typer.Option("fused", "--small-ops", metavar="HOW",
                                      help="fused (one kernel per norm, activation and attention, as a serving "
                                           "engine runs them), hf (the kernels transformers' eager forward "
                                           "launches, replayed from a CUDA graph: the step `nmx bench decode` "
                                           "times) or hf-fused (the same after nmx.kernels.fuse_small_ops)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Per-op latency table and totals of one prefill or decode step of an LLM."""
        from dataclasses import replace

        from nmx.hw.gpu import llm_cost
        from nmx.hw.workload import Compression, llm_workload, resolve_model

        _, from_result = resolve_model(model)
        comp = from_result or Compression()
        overrides = {k: v for k, v in (("weights", weights), ("activations", activations), ("pattern", sparsity),
                                       ("kv_format", kv_format)) if v is not None}
        if overrides:
            if kv_format is not None:  # one format for every token replaces the run's KV policy
                overrides["kv_policy"] = None
            comp = replace(comp, layer_bits=(), **overrides)  # the real per-layer bits no longer apply
        work = llm_workload(model, phase, batch=batch, tokens=tokens, context=context, compression=comp)
        cost = llm_cost(_gpu(target, impl), work, impl, small_ops)
        if as_json:
            _echo_json(cost)
            return
        _table([{**r, "latency_us": r["latency_s"] * 1e6, "share": r["latency_s"] / cost["latency_s"]}
                for r in cost["ops"]], ("name", "kind", "count", "latency_us", "share", "bound", "bytes", "flops"))
        typer.echo(f"{cost['model']} {phase} on {cost['target']} ({cost['compression']}; batch {batch}"
                   f"{', context ' + str(context) if phase == 'decode' else ', ' + str(tokens) + ' tokens'}): "
                   f"{cost['latency_s'] * 1e3:.3f} ms, {cost['tokens_per_s']:.1f} tokens/s, "
                   f"mostly {cost['bound']}-bound; "
                   f"{cost['bytes_read'] / 1e9:.3f} GB read; calibration: {cost['calibration']}")
