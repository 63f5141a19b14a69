"""`nmx demo`: the co-design study on the default model.

Dense, 2:4 magnitude, 2:4 Wanda, MXFP4 weights, and 2:4 Wanda + MXFP4 on SmolLM2-135M:
perplexity on WikiText-2 (the real protocol, context 2048, a bounded number of windows so it
ends in minutes on two CPU cores) against bits per weight, and against what one decode step of
each compressed model costs (batch 1, the evaluation's context cached) on a GPU target -- the
H200 preset with nmx's own kernels as measured on it -- and on an accelerator design with 2:4
sparse PEs (nm24-16x16-ws): a table (study.md), perplexity_vs_bits.png and
perplexity_vs_latency.png. Each configuration's result folder holds the full `hardware` block.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

from nmx.io import OutputDir, OutputFile, write_json_atomic, write_text_atomic
from nmx.model.sources import DEFAULT_MODEL, load_model
from nmx.recipe import load_recipe
from nmx.runner import check_texts, run

STUDY = [
    ("dense", {}),
    ("2:4 magnitude", {"sparsity": {"method": "magnitude", "pattern": "2:4"}}),
    ("2:4 wanda", {"sparsity": {"method": "wanda", "pattern": "2:4"}}),
    ("mxfp4 weights", {"quantization": {"weights": "mxfp4"}}),
    ("2:4 wanda + mxfp4", {"sparsity": {"method": "wanda", "pattern": "2:4"}, "quantization": {"weights": "mxfp4"}}),
]
#: where the study prices a decode step: a GPU target (with the kernels it is priced with) and an accelerator
GPU_TARGET, GPU_IMPL, ACCEL_TARGET = "h200", "nmx", "nm24-16x16-ws"


def study(
    out: Path,
    model: str = DEFAULT_MODEL,
    eval_text: str = "wikitext-2",
    seq_len: int = 2048,
    windows: int = 4,
    calib_text: str = "tinyshakespeare",
    calib_samples: int = 32,
    calib_seq_len: int = 512,
    progress: Callable[[str, int, int], None] | None = None,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Run the study; `out` receives study.md, summary.json, the plot and one result folder per
    configuration, all at once when every configuration has run (see nmx.io.OutputDir)."""
    base = {
        "model": model,
        "calibration": {"text": calib_text, "samples": calib_samples, "seq_len": calib_seq_len, "seed": 0},
        "evaluation": {"text": eval_text, "seq_len": seq_len, "max_windows": windows},
        "hardware": {"targets": [GPU_TARGET, ACCEL_TARGET], "gpu_impl": GPU_IMPL,
                     "phases": [{"phase": "decode", "context": seq_len, "batch": 1}]},
    }
    recipes = [(label, load_recipe(base={**base, **extra})) for label, extra in STUDY]  # all valid before work
    with OutputDir(out, overwrite) as tmp:
        for _, recipe in recipes:
            check_texts(recipe)
        loaded = load_model(model, recipes[0][1].device)
        pristine = copy.deepcopy(loaded.model)
        rows = []
        for i, (label, recipe) in enumerate(recipes):
            loaded.model = copy.deepcopy(pristine)
            r = run(recipe, loaded=loaded, progress=progress)
            rows.append({"config": label, "perplexity": r["perplexity"], "bits_per_weight": r["bits_per_weight"],
                         "weight_sparsity": r["weight_sparsity"], "decode": decode_costs(r), "wall_s": r["wall_s"],
                         "result": r})
            if progress:
                progress("configurations", i + 1, len(recipes))
        write_study(tmp, rows)
    return rows


def decode_costs(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """target -> {kind, latency_s, energy_pj, bound} of the priced decode step of a run's result."""
    return {c["target"]: {k: c[k] for k in ("kind", "latency_s", "energy_pj", "bytes", "bound", "context", "batch")}
            for c in result["hardware"]["costs"] if c["phase"] == "decode"}


def write_study(out: Path, rows: list[dict[str, Any]]) -> None:
    from nmx.runner import write_outputs

    out.mkdir(parents=True, exist_ok=True)
    for row in rows:
        write_outputs(out / row["config"].replace(" ", "_").replace(":", "-").replace("+", "plus"), row["result"])
    summary = [{k: v for k, v in r.items() if k != "result"} for r in rows]
    plot(out / "perplexity_vs_bits.png", summary)
    plot_latency(out / "perplexity_vs_latency.png", summary)
    write_text_atomic(out / "study.md", study_markdown(rows))
    write_json_atomic(out / "summary.json", summary)


def study_markdown(rows: list[dict[str, Any]]) -> str:
    first = rows[0]["result"]
    p = first["protocol"]
    targets = {t["name"]: t for t in first["hardware"]["targets"]}
    names = list(rows[0]["decode"])
    step = next(iter(rows[0]["decode"].values()))

    def cell(c: dict[str, Any]) -> str:
        energy = f" / {c['energy_pj'] * 1e-9:.3g}" if c["energy_pj"] is not None else ""
        return f"{c['latency_s'] * 1e3:.4g}{energy}"

    def unit(name: str) -> str:
        return "ms / mJ" if targets[name]["kind"] != "gpu" else "ms"

    lines = [
        f"# Co-design study: {first['model']['name']}",
        "",
        f"Perplexity on {p['text']} ({p['tokens_scored']} tokens: {p['windows']} of {p['windows_available']} "
        f"windows of {p['seq_len']}), against storage bits per targeted weight and against one decode step "
        f"(batch {step['batch']}, {step['context']} tokens cached) of each compressed model, priced by nmx.hw.",
        "",
        "| configuration | perplexity | bits/weight | weight sparsity | "
        + " | ".join(f"{n} decode {unit(n)}" for n in names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
        *[f"| {r['config']} | {r['perplexity']:.3f} | {r['bits_per_weight']:.3f} | {r['weight_sparsity']:.3f} | "
          + " | ".join(cell(r["decode"][n]) for n in names) + " |" for r in rows],
        "",
        *[f"- {n}: " + (f"GPU, kernels {t['impl']} ({t['calibration']})" if t["kind"] == "gpu" else
                        f"{t['kind']}: {t.get('pe_kind')} {'x'.join(map(str, t.get('pe_array', [])))} PE array, "
                        f"{t.get('tech_nm')} nm, {t.get('dram_gb_s')} GB/s DRAM (nmx.hw.accel, analytical)")
          for n, t in targets.items()],
        *[f"- {n}" for n in first["model"]["notes"]],
        "",
    ]
    return "\n".join(lines)


def plot(path: Path, summary: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for r in summary:
        ax.scatter(r["bits_per_weight"], r["perplexity"], s=36)
        ax.annotate(r["config"], (r["bits_per_weight"], r["perplexity"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set_xlabel("bits per weight (values, indices, scales)")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("accuracy vs storage")
    fig.tight_layout()
    with OutputFile(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def plot_latency(path: Path, summary: list[dict[str, Any]]) -> None:
    """Perplexity against the priced decode latency, one panel per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary[0]["decode"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.4 * len(names), 4.2), dpi=120, squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for r in summary:
            x = r["decode"][name]["latency_s"] * 1e3
            ax.scatter(x, r["perplexity"], s=36)
            ax.annotate(r["config"], (x, r["perplexity"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        kind = summary[0]["decode"][name]["kind"]
        ax.set_xlabel(f"decode step latency on {name} ({kind}), ms")
        ax.set_ylabel("perplexity (log scale)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    c = summary[0]["decode"][names[0]]
    fig.suptitle(f"accuracy vs decode latency (batch {c['batch']}, {c['context']} tokens cached)")
    fig.tight_layout()
    with OutputFile(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
