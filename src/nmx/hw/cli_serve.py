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
                                 help="colocated, disaggregated, attention-ffn, or compare (colocated vs every P+D "
                                 "split of --gpus; with --chunk also chunked colocated; with --af also every "
                                 "attention/FFN split)."),
        gpus: int = typer.Option(2, "--gpus", metavar="N", help="GPU budget (colocated: all of them; disaggregated "
                                 "or attention-ffn without explicit pools: the best split of them)."),
        prefill_gpus: Optional[int] = typer.Option(None, "--prefill-gpus", metavar="N",
                                                   help="Disaggregated / attention-ffn: GPUs that only prefill."),
        decode_gpus: Optional[int] = typer.Option(None, "--decode-gpus", metavar="N",
                                                  help="Disaggregated: GPUs that only decode."),
        attention_gpus: Optional[int] = typer.Option(None, "--attention-gpus", metavar="N",
                                                     help="Attention-ffn: GPUs holding the KV cache and attention "
                                                     "weights (instances of --tp GPUs)."),
        ffn_gpus: Optional[int] = typer.Option(None, "--ffn-gpus", metavar="N",
                                               help="Attention-ffn: GPUs the FFN weights are split over."),
        af: bool = typer.Option(False, "--af", help="Compare mode: also search every attention/FFN split of --gpus."),
        chunk: Optional[int] = typer.Option(None, "--chunk", metavar="TOKENS",
                                            help="Colocated: chunked prefill (Sarathi), prompt tokens per step "
                                            "riding along the decodes; compare mode adds it as a row."),
        microbatches: int = typer.Option(3, "--microbatches", metavar="N",
                                         help="Attention-ffn: micro-batches in the attention/FFN pipeline "
                                         "(Step-3: 3)."),
        af_link_gb_s: float = typer.Option(50.0, "--af-link-gb-s", metavar="GB/S",
                                           help="Attention-ffn: activation link per GPU and direction (inf: ideal)."),
        af_link_latency_us: float = typer.Option(10.0, "--af-link-latency-us", metavar="US",
                                                 help="Attention-ffn: latency of each activation message."),
        tp_link_gb_s: float = typer.Option(370.0, "--tp-link-gb-s", metavar="GB/S",
                                           help="Tensor parallel: all-reduce bus bandwidth (inf: ideal)."),
        allreduce_latency_us: float = typer.Option(6.0, "--allreduce-latency-us", metavar="US",
                                                   help="Tensor parallel: latency of each all-reduce."),
        tp: int = typer.Option(1, "--tp", metavar="N",
                               help="GPUs per instance (tensor parallel: step / N plus two all-reduces per layer)."),
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
        """Serving simulation (discrete-event, seeded): goodput per GPU under TTFT/TPOT SLOs, colocated (optionally
        with chunked prefill) vs prefill/decode disaggregated vs attention/FFN disaggregated, KV transfer bytes
        and time, and the best split of a GPU budget."""
        from dataclasses import replace

        from nmx.hw.serve import (
            MODES,
            CostSteps,
            Deployment,
            LengthDist,
            Traffic,
            best_af_split,
            best_split,
            max_goodput,
            simulate,
        )

        if mode not in (*MODES, "compare"):
            raise InputError(f"--mode must be one of {', '.join(MODES)} or compare, got {mode!r}")
        if (attention_gpus is None) != (ffn_gpus is None):
            raise InputError("give both --attention-gpus and --ffn-gpus, or neither (then --gpus is split)")
        if decode_gpus is not None and attention_gpus is not None:
            raise InputError("give --decode-gpus (disaggregated) or --attention-gpus/--ffn-gpus (attention-ffn), "
                             "not both")
        if (prefill_gpus is None) != (decode_gpus is None and attention_gpus is None):
            raise InputError("give --prefill-gpus with --decode-gpus (disaggregated) or with --attention-gpus and "
                             "--ffn-gpus (attention-ffn), or none of them (then --gpus is split)")
        if mode == "colocated" and prefill_gpus is not None:
            raise InputError("--mode colocated uses --gpus; --prefill-gpus, --decode-gpus, --attention-gpus and "
                             "--ffn-gpus are for the disaggregated modes")
        if (mode == "disaggregated" and attention_gpus is not None) or \
                (mode == "attention-ffn" and decode_gpus is not None):
            raise InputError(f"--mode {mode} does not take "
                             f"{'--attention-gpus/--ffn-gpus' if mode == 'disaggregated' else '--decode-gpus'}")
        if chunk is not None and mode not in ("colocated", "compare"):
            raise InputError(f"chunked prefill (--chunk) applies to colocated serving, not to --mode {mode}")
        if mode in ("disaggregated", "compare") and prefill_gpus is None and gpus < 2:
            raise InputError(f"--gpus {gpus}: a disaggregated deployment needs a GPU budget of at least 2 "
                             "(one prefill, one decode)")
        traffic = Traffic(rate, LengthDist.parse(prompt, "--prompt"), LengthDist.parse(output, "--output"),
                          ttft_slo, tpot_slo, requests=requests, seed=seed, arrival=arrival,  # type: ignore[arg-type]
                          parallel_samples=parallel_samples, min_duration_s=duration)
        if not 0 < attainment <= 1:
            raise InputError(f"--attainment must be in (0, 1], got {attainment}")
        # with explicit pools (and no colocated row) --gpus is not used
        base_gpus = gpus if mode in ("colocated", "compare") or prefill_gpus is None else tp
        base = Deployment("colocated", gpus=base_gpus, tp=tp, link_gb_s=link_gb_s, max_batch=max_batch,
                          max_prefill_tokens=max_prefill_tokens, memory_gb=memory_gb, microbatches=microbatches,
                          af_link_gb_s=af_link_gb_s, af_link_latency_s=af_link_latency_us * 1e-6)
        # check the attention/FFN options before any simulation runs
        replace(base, mode="attention-ffn", prefill_gpus=tp, attention_gpus=tp, ffn_gpus=1)
        chunked = replace(base, chunk_tokens=chunk) if chunk is not None else None
        comp = compression_for(model, weights, None, sparsity, kv_format)
        steps = CostSteps(target, model, comp, tp=tp, gpu_impl=impl, memory_gb=memory_gb, tp_link_gb_s=tp_link_gb_s,
                          allreduce_latency_s=allreduce_latency_us * 1e-6)
        deployments = []  # (deployment, its max goodput found by a split search, or None)
        if mode == "colocated":
            deployments.append((chunked or base, None))
        elif mode == "compare":
            deployments.append((base, None))
            if chunked is not None:
                deployments.append((chunked, None))
        if decode_gpus is not None:
            deployments.append((replace(base, mode="disaggregated", prefill_gpus=prefill_gpus,
                                        decode_gpus=decode_gpus), None))
        if attention_gpus is not None:
            deployments.append((replace(base, mode="attention-ffn", prefill_gpus=prefill_gpus,
                                        attention_gpus=attention_gpus, ffn_gpus=ffn_gpus), None))
        split = af_split = None
        if mode in ("disaggregated", "compare") and prefill_gpus is None:
            split = best_split(traffic, gpus, steps, base, attainment)
            b = split["best"]
            for i, (dep, _) in enumerate(deployments):
                if dep == base:
                    deployments[i] = (dep, split["colocated"])
            deployments.append((replace(base, mode="disaggregated", prefill_gpus=b["prefill_gpus"],
                                        decode_gpus=b["decode_gpus"]), b))
        if (mode == "attention-ffn" or mode == "compare" and af) and prefill_gpus is None:
            af_split = best_af_split(traffic, gpus, steps, base, attainment)
            b = af_split["best"]
            deployments.append((replace(base, mode="attention-ffn", prefill_gpus=b["prefill_gpus"],
                                        attention_gpus=b["attention_gpus"], ffn_gpus=b["ffn_gpus"]), b))
        searched = split is not None or af_split is not None
        rows = []
        for dep, found in deployments:
            r = simulate(traffic, dep, steps).as_dict()
            if found is None and (goodput or searched):
                found = max_goodput(traffic, dep, steps, attainment)
            if found is not None:
                r["max_goodput_per_gpu_rps"], r["max_goodput_capped"] = found["per_gpu_rps"], found["capped"]
            rows.append(r)
        record = {"setup": {**steps.describe(), "traffic": {
            "rate_rps": rate, "requests": traffic.count, "prompt": traffic.prompt.describe(),
            "output": traffic.output.describe(), "ttft_slo_s": ttft_slo, "tpot_slo_s": tpot_slo, "seed": seed,
            "arrival": arrival, "parallel_samples": parallel_samples}, "link_gb_s": link_gb_s,
            "chunk_tokens": chunk, "microbatches": microbatches, "af_link_gb_s": af_link_gb_s,
            "af_link_latency_s": af_link_latency_us * 1e-6},
            "results": rows, "best_split": split, "best_af_split": af_split}
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
        if split is not None or af_split is not None:
            table = []
            if split is not None:
                table += [{"split": f"{s['prefill_gpus']}P + {s['decode_gpus']}D", "max goodput/GPU": s["per_gpu_rps"]}
                          for s in split["splits"]]
            if af_split is not None:
                table += [{"split": f"{s['prefill_gpus']}P + {s['attention_gpus']}A + {s['ffn_gpus']}F",
                           "max goodput/GPU": s["per_gpu_rps"]} for s in af_split["splits"]]
            if split is not None:
                table.append({"split": f"colocated {gpus}", "max goodput/GPU": split["colocated"]["per_gpu_rps"]})
            _table(table, ("split", "max goodput/GPU"), title=f"max goodput per GPU at >= {attainment:g} attainment")
        if split is not None:
            b = split["best"]
            typer.echo(f"best disaggregated split of {gpus} GPUs: {b['prefill_gpus']} prefill + {b['decode_gpus']} "
                       f"decode, {b['per_gpu_rps']:.3g} requests/s per GPU; colocated: "
                       f"{split['colocated']['per_gpu_rps']:.3g}; {split['winner']} wins")
        if af_split is not None:
            b = af_split["best"]
            typer.echo(f"best attention/FFN split of {gpus} GPUs: {b['prefill_gpus']} prefill + {b['attention_gpus']} "
                       f"attention + {b['ffn_gpus']} FFN, {b['per_gpu_rps']:.3g} requests/s per GPU")
        typer.echo(f"traffic: Poisson {rate:g} rps, {traffic.count} requests, prompt {traffic.prompt.describe()}, "
                   f"output {traffic.output.describe()}, SLO TTFT {ttft_slo:g} s / TPOT {tpot_slo:g} s, seed {seed}"
                   if arrival == "poisson" else f"traffic: uniform {rate:g} rps, {traffic.count} requests")
        for note in rows[0]["notes"]:
            typer.echo(f"note: {note}")
        for r in rows:
            if r.get("max_goodput_capped"):
                typer.echo(f"note: {r['deployment']}: max goodput capped at 1.05 x its steady-state throughput bound "
                           "(the SLOs did not bind first)")
