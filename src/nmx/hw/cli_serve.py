"""`nmx hw serve`: colocated vs prefill/decode-disaggregated serving under SLOs (nmx.hw.serve)."""

from __future__ import annotations

from typing import Any, Optional

import typer

from nmx.errors import InputError

MODEL_HELP = "Preset (llama-2-7b, llama-3-70b, ...), HF config.json / folder, or an `nmx run` result folder."


def compression_for(model: str, weights: Optional[str] = None, activations: Optional[str] = None,
                    sparsity: Optional[str] = None, kv_format: Optional[str] = None) -> Any:
    """The compression a model argument carries (a result folder's recipe, else none) with the
    command line's overrides, as `nmx hw llm` applies them."""
    from dataclasses import replace

    from nmx.hw.workload import Compression, resolve_model

    _, from_result = resolve_model(model)
    comp = from_result or Compression()
    overrides = {k: v for k, v in (("weights", weights), ("activations", activations), ("pattern", sparsity),
                                   ("kv_format", kv_format)) if v is not None}
    if overrides:
        if kv_format is not None:
            overrides["kv_policy"] = None
        comp = replace(comp, layer_bits=(), **overrides)
    return comp


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _table(rows: list[dict], cols: tuple[str, ...], title: str | None = None) -> None:
    from rich.table import Table

    from nmx.cli import console

    t = Table(*cols, title=title)
    for r in rows:
        t.add_row(*[_fmt(r.get(c)) for c in cols])
    console.print(t)


def register(hw_app: typer.Typer) -> None:
    """Add `nmx hw serve` to `nmx hw`."""

    @hw_app.command("serve")
    def serve_cmd(
        model: str = typer.Option("llama-2-7b", "--model", metavar="NAME_OR_DIR", help=MODEL_HELP),
        target: str = typer.Option("h100-sxm", "--target", metavar="NAME_OR_YAML",
                                   help="Hardware target of one GPU (nmx hw targets), or a target YAML file."),
        impl: str = typer.Option("pytorch", "--impl", metavar="IMPL", help="GPU kernels: pytorch, ideal or nmx."),
        weights: Optional[str] = typer.Option(None, "--weights", metavar="FORMAT", help="Override: weight format."),
        sparsity: Optional[str] = typer.Option(None, "--sparsity", metavar="PATTERN",
                                               help="Override: weight sparsity pattern (e.g. 2:4)."),
        kv_format: Optional[str] = typer.Option(None, "--kv-format", metavar="FORMAT",
                                                help="Override: KV-cache format (default bf16)."),
        mode: str = typer.Option("compare", "--mode", metavar="MODE",
                                 help="colocated, disaggregated, or compare (colocated vs every P+D split of --gpus)."),
        gpus: int = typer.Option(2, "--gpus", metavar="N", help="GPU budget (colocated: all of them; disaggregated "
                                 "without --prefill-gpus: the best split of them)."),
        prefill_gpus: Optional[int] = typer.Option(None, "--prefill-gpus", metavar="N",
                                                   help="Disaggregated: GPUs that only prefill."),
        decode_gpus: Optional[int] = typer.Option(None, "--decode-gpus", metavar="N",
                                                  help="Disaggregated: GPUs that only decode."),
        tp: int = typer.Option(1, "--tp", metavar="N", help="GPUs per instance (ideal tensor parallelism)."),
        rate: float = typer.Option(4.0, "--rate", metavar="RPS", help="Poisson arrival rate, requests per second."),
        prompt: str = typer.Option("512", "--prompt", metavar="DIST",
                                   help="Prompt tokens: N, uniform:LOW:HIGH or lognormal:MEDIAN:SIGMA."),
        output: str = typer.Option("128", "--output", metavar="DIST",
                                   help="Output tokens per request (same forms as --prompt)."),
        ttft_slo: float = typer.Option(0.5, "--ttft-slo", metavar="S", help="SLO on time to first token, seconds."),
        tpot_slo: float = typer.Option(0.05, "--tpot-slo", metavar="S", help="SLO on time per output token, seconds."),
        requests: int = typer.Option(200, "--requests", metavar="N", help="Requests simulated (at least)."),
        duration: float = typer.Option(30.0, "--duration", metavar="S",
                                       help="At least this many seconds of arrivals (more requests at high rates)."),
        seed: int = typer.Option(0, "--seed", metavar="SEED", help="Seed of arrivals and lengths."),
        arrival: str = typer.Option("poisson", "--arrival", metavar="KIND",
                                    help="poisson, or uniform (evenly spaced)."),
        parallel_samples: int = typer.Option(1, "--parallel-samples", metavar="N",
                                             help="Candidates per request sharing the prompt's KV (reasoning)."),
        link_gb_s: float = typer.Option(50.0, "--link-gb-s", metavar="GB/S",
                                        help="KV link of each prefill instance (50 = one 400 Gb/s NDR port)."),
        max_batch: int = typer.Option(256, "--max-batch", metavar="N", help="Sequences per decode step, at most."),
        max_prefill_tokens: int = typer.Option(8192, "--max-prefill-tokens", metavar="N",
                                               help="Prompt tokens per prefill batch, at most."),
        memory_gb: Optional[float] = typer.Option(None, "--memory-gb", metavar="GB",
                                                  help="Device memory per GPU (default: the preset's datasheet)."),
        goodput: bool = typer.Option(False, "--goodput", help="Also search each deployment's max goodput "
                                     "(the highest rate meeting --attainment), DistServe's definition."),
        attainment: float = typer.Option(0.9, "--attainment", metavar="FRACTION",
                                         help="SLO attainment the max goodput must keep."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    ) -> None:
        """Serving simulation (discrete-event, seeded): goodput per GPU under TTFT/TPOT SLOs, colocated vs
        prefill/decode disaggregated, KV transfer bytes and time, and the best split of a GPU budget."""
        from dataclasses import replace

        from nmx.hw.serve import CostSteps, Deployment, LengthDist, Traffic, best_split, max_goodput, simulate

        if mode not in ("colocated", "disaggregated", "compare"):
            raise InputError(f"--mode must be colocated, disaggregated or compare, got {mode!r}")
        if mode in ("disaggregated", "compare") and prefill_gpus is None and gpus < 2:
            raise InputError(f"--gpus {gpus}: a disaggregated deployment needs a GPU budget of at least 2 "
                             "(one prefill, one decode)")
        if (prefill_gpus is None) != (decode_gpus is None):
            raise InputError("give both --prefill-gpus and --decode-gpus, or neither (then --gpus is split)")
        traffic = Traffic(rate, LengthDist.parse(prompt, "--prompt"), LengthDist.parse(output, "--output"),
                          ttft_slo, tpot_slo, requests=requests, seed=seed, arrival=arrival,  # type: ignore[arg-type]
                          parallel_samples=parallel_samples, min_duration_s=duration)
        if not 0 < attainment <= 1:
            raise InputError(f"--attainment must be in (0, 1], got {attainment}")
        base = Deployment("colocated", gpus=gpus, tp=tp, link_gb_s=link_gb_s, max_batch=max_batch,
                          max_prefill_tokens=max_prefill_tokens, memory_gb=memory_gb)
        comp = compression_for(model, weights, None, sparsity, kv_format)
        steps = CostSteps(target, model, comp, tp=tp, gpu_impl=impl, memory_gb=memory_gb)
        deployments = []
        if mode in ("colocated", "compare"):
            deployments.append(base)
        if prefill_gpus is not None:
            deployments.append(replace(base, mode="disaggregated", prefill_gpus=prefill_gpus,
                                       decode_gpus=decode_gpus))
        split = None
        if mode in ("disaggregated", "compare") and prefill_gpus is None:
            split = best_split(traffic, gpus, steps, base, attainment)
            b = split["best"]
            deployments.append(replace(base, mode="disaggregated", prefill_gpus=b["prefill_gpus"],
                                       decode_gpus=b["decode_gpus"]))
        rows = []
        for dep in deployments:
            r = simulate(traffic, dep, steps).as_dict()
            if goodput and split is None:
                r["max_goodput_per_gpu_rps"] = max_goodput(traffic, dep, steps, attainment)["per_gpu_rps"]
            rows.append(r)
        if split is not None:
            for r, dep in zip(rows, deployments, strict=True):
                r["max_goodput_per_gpu_rps"] = (split["colocated"] if dep.mode == "colocated"
                                                else split["best"])["per_gpu_rps"]
        record = {"setup": {**steps.describe(), "traffic": {
            "rate_rps": rate, "requests": traffic.count, "prompt": traffic.prompt.describe(),
            "output": traffic.output.describe(), "ttft_slo_s": ttft_slo, "tpot_slo_s": tpot_slo, "seed": seed,
            "arrival": arrival, "parallel_samples": parallel_samples}, "link_gb_s": link_gb_s},
            "results": rows, "best_split": split}
        if as_json:
            from nmx.cli import _print_json

            _print_json(record)
            return
        _table([{**r, "ttft p90 ms": r["ttft_p90_s"] * 1e3, "tpot p90 ms": r["tpot_p90_s"] * 1e3,
                 "KV MB/req": r["kv_transfer_bytes_per_request"] / 1e6, "KV xfer ms": r["kv_transfer_s_mean"] * 1e3,
                 "goodput/GPU": r["goodput_per_gpu_rps"], "max goodput/GPU": r.get("max_goodput_per_gpu_rps")}
                for r in rows],
               ("deployment", "attainment", "ttft p90 ms", "tpot p90 ms", "goodput/GPU", "max goodput/GPU",
                "KV MB/req", "KV xfer ms"),
               title=f"nmx hw serve: {steps.shape.name} on {steps.target.name} ({comp.describe()})")
        if split is not None:
            _table([{"split": f"{s['prefill_gpus']}P + {s['decode_gpus']}D", "max goodput/GPU": s["per_gpu_rps"]}
                    for s in split["splits"]] + [{"split": f"colocated {gpus}",
                                                   "max goodput/GPU": split["colocated"]["per_gpu_rps"]}],
                   ("split", "max goodput/GPU"), title=f"max goodput per GPU at >= {attainment:g} attainment")
            b = split["best"]
            typer.echo(f"best disaggregated split of {gpus} GPUs: {b['prefill_gpus']} prefill + {b['decode_gpus']} "
                       f"decode, {b['per_gpu_rps']:.3g} requests/s per GPU; colocated: "
                       f"{split['colocated']['per_gpu_rps']:.3g}; {split['winner']} wins")
        typer.echo(f"traffic: Poisson {rate:g} rps, {traffic.count} requests, prompt {traffic.prompt.describe()}, "
                   f"output {traffic.output.describe()}, SLO TTFT {ttft_slo:g} s / TPOT {tpot_slo:g} s, seed {seed}"
                   if arrival == "poisson" else f"traffic: uniform {rate:g} rps, {traffic.count} requests")
        for note in rows[0]["notes"]:
            typer.echo(f"note: {note}")
