"""Reasoning workloads: n parallel candidates per prompt turn decode from memory- to compute-bound.

    from nmx.hw.reasoning import bound_curve, RECIPES
    rows = bound_curve("llama-2-7b", "h200", context=4096, ns=(1, 2, 4, ..., 256))
    rows[recipe]["crossover_n"], rows[recipe]["points"][i]["bound"], ...

A decode step with n candidates sharing a prompt (`llm_workload(..., parallel_samples=n)`): the
weights are read once for all n, the prompt's KV once per step, each candidate's own KV (its
`generated` tokens) separately; the GEMMs see M = n rows. As n grows, the FLOPs grow with n while
the weight bytes stay: the step turns compute-bound. The crossover n is the smallest n of the sweep
from which the target calls the step compute-bound at every larger n too (`Cost.bound`; a GPU: the
bound holding most of the step's time); None when the largest n is not compute-bound. 2:4 is a
compute saving (the sparse tensor cores, or an N:M accelerator), 4-bit
weights a bandwidth saving; which one pays flips at the crossover.
"""

from __future__ import annotations

from typing import Any, Iterable

from nmx.errors import InputError

#: the recipes the curve compares: label -> (pattern, weight format)
RECIPES = {"dense": (None, None), "2:4": ("2:4", None), "4-bit": (None, "nvfp4"), "2:4+4-bit": ("2:4", "nvfp4")}


def recipe_compression(label: str) -> Any:
    """A compression from a short label: dense, a pattern (2:4), a weight format (nvfp4, int4_g128),
    4-bit (nvfp4), kv:FORMAT, joined by + (2:4+nvfp4+kv:int4_g32)."""
    from nmx.hw.workload import Compression
    from nmx.sparsity.patterns import parse_pattern

    parts = [p.strip() for p in str(label).split("+") if p.strip()]
    if not parts:
        raise InputError(f"empty recipe label {label!r}: use dense, 2:4, nvfp4, 2:4+nvfp4, ...")
    pattern = weights = kv = None
    for p in parts:
        if p == "dense":
            continue
        if p == "4-bit":
            weights = "nvfp4"
        elif p.startswith("kv:"):
            kv = p[3:]
        elif ":" in p:
            parse_pattern(p)
            pattern = p
        else:
            weights = p
    return Compression(weights=weights, pattern=pattern, kv_format=kv)


def parse_ns(text: str | Iterable[int]) -> list[int]:
    """`1,2,4,...,256` (a doubling run written with ...), or a list; each n >= 1."""
    from nmx.hw.workload import check_size

    if not isinstance(text, str):
        return [check_size("--n", int(v) if not isinstance(v, bool) else v) for v in text]
    items = [t.strip() for t in text.split(",") if t.strip()]
    out: list[int] = []
    for i, t in enumerate(items):
        if t == "...":
            if len(out) < 2 or i + 1 >= len(items):
                raise InputError("--n: '...' needs two numbers before it and one after (1,2,4,...,256)")
            continue
        try:
            v = int(t)
        except ValueError:
            raise InputError(f"--n takes comma-separated integers (1,2,4,...,256), got {t!r}") from None
        check_size("--n", v)
        if i and items[i - 1] == "...":
            ratio = out[-1] // out[-2] if out[-2] and out[-1] % out[-2] == 0 else 0
            step = out[-1] - out[-2]
            while (out[-1] * ratio if ratio > 1 else out[-1] + step) < v:
                out.append(out[-1] * ratio if ratio > 1 else out[-1] + step)
        out.append(v)
    if not out:
        raise InputError("--n: give at least one number of candidates")
    return sorted(set(out))


def bound_curve(model: Any, target: Any, context: int = 4096, ns: Iterable[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256),
                recipes: dict[str, Any] | None = None, generated: int = 0, gpu_impl: str = "ideal",
                prompts: int = 1) -> dict[str, Any]:
    """Per recipe and n: step latency, time per generated token, bound, and the crossover n."""
    from nmx.hw.targets import get_target
    from nmx.hw.workload import Compression, check_size, llm_workload

    t = get_target(target, gpu_impl)
    ns = parse_ns(ns)
    check_size("--context", context)
    check_size("--generated", generated, minimum=0)
    recs = recipes if recipes is not None else {k: Compression(pattern=p, weights=w) for k, (p, w) in RECIPES.items()}
    out: dict[str, Any] = {}
    for label, comp in recs.items():
        comp = recipe_compression(comp) if isinstance(comp, str) else comp
        points = []
        for n in ns:
            w = llm_workload(model, "decode", batch=prompts, context=context + generated, compression=comp,
                             parallel_samples=n, shared_prefix=context)
            c = t.cost(w)
            by = c.extra.get("latency_by_bound_s") or {}
            points.append({"n": n, "latency_s": c.latency_s, "s_per_token": c.latency_s / (n * prompts),
                           "tokens_per_s": n * prompts / c.latency_s, "bound": c.bound,
                           "compute_share": (by.get("compute", 0.0) / c.latency_s) if by else None,
                           "flops": w.total("flops"), "bytes": w.total("bytes_read") + w.total("bytes_written")})
        cross = None  # the smallest n from which every larger n of the sweep is compute-bound
        for p in reversed(points):
            if p["bound"] != "compute":
                break
            cross = p["n"]
        out[label] = {"compression": comp.describe(), "points": points, "crossover_n": cross}
    return {"model": str(model), "target": t.name, "kind": t.kind, "context": context, "generated": generated,
            "recipes": out}


def plot_curve(curves: list[dict[str, Any]], path: Any) -> None:
    """Time per generated token against n, one panel per target; filled markers where compute-bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4.2), squeeze=False)
    for ax, cur in zip(axes[0], curves, strict=True):
        for label, rec in cur["recipes"].items():
            ns = [p["n"] for p in rec["points"]]
            ys = [p["s_per_token"] * 1e3 for p in rec["points"]]
            line, = ax.plot(ns, ys, marker="o", fillstyle="none", label=f"{label} (crossover n={rec['crossover_n']})")
            comp = [(n, y) for n, y, p in zip(ns, ys, rec["points"], strict=True) if p["bound"] == "compute"]
            if comp:
                ax.plot(*zip(*comp, strict=True), "o", color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("parallel candidates n")
        ax.set_ylabel("ms per generated token")
        ax.set_title(f"{cur['model']} on {cur['target']}, context {cur['context']}\n(filled: compute-bound)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
