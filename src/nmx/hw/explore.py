"""Design-space exploration: many accelerator design points at once, Pareto fronts, accuracy joined.

    from nmx.hw.explore import sweep, pareto_mask, accuracy_vs_cost
    ex = sweep(load_accel("examples/hw/uspe_16x16_ws.yaml"),
               {"pe_rows": ["8", "16", "32"], "glb_kb": ["64", "256"], "nm": ["none", "2:4"]},
               llm_workload("llama-2-7b", "decode"))
    ex.pareto            # indices of the (latency, energy, area) Pareto-optimal points
    ex.rows(ex.pareto)   # their sweep values and costs, as dicts
    plot_pareto(ex, "front.png")
    rows = accuracy_vs_cost(["runs/dense", "runs/2of4"], spec, phase="decode")   # perplexity vs cost
    rows = accuracy_vs_cost(["runs/dense", "runs/2of4"], "h200")   # on any target (nmx.hw.targets)

The sweep is an open mesh (nmx.hw.accel.grid): every swept parameter varies along its own
axis and the model broadcasts, so intermediates that depend on few parameters stay small.
Pareto: minimize all objectives; a point is dominated when another is <= in every objective and
< in one; ties keep the first; infeasible points (inf latency) never count.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nmx.errors import InputError
from nmx.hw.accel import AccelResult, evaluate, grid, point_labels
from nmx.hw.accel_spec import AccelSpec
from nmx.io import expand_user, PLOT_SUFFIXES, OutputFile

log = logging.getLogger(__name__)

OBJECTIVES = ("latency_s", "energy_pj", "area_um2")
#: the most design points one sweep evaluates (10^7 take about 1.5 GB and minutes of Pareto sorting)
MAX_POINTS = 10_000_000


def pareto_mask(objectives: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Boolean mask of the non-dominated rows of `objectives` [N, k] (all minimized). Rows with a
    non-finite value are never on the front. Sort by the first objective, then compare each chunk
    against the front so far and within itself: O(N * (front + chunk)) comparisons."""
    obj = np.asarray(objectives, dtype=np.float64)
    if obj.ndim != 2:
        raise InputError(f"objectives must be a 2-D array [points, objectives], got shape {obj.shape}")
    n = obj.shape[0]
    mask = np.zeros(n, dtype=bool)
    ok = np.flatnonzero(np.all(np.isfinite(obj), axis=1))
    if ok.size == 0:
        return mask
    order = ok[np.lexsort(obj[ok].T[::-1])]  # by first objective, ties by the next ones
    front = np.empty((0, obj.shape[1]))
    front_idx: list[np.ndarray] = []
    for s in range(0, order.size, chunk):
        idx = order[s:s + chunk]
        c = obj[idx]
        if front.shape[0]:
            # sorted order: an earlier equal point also removes it (ties keep the first)
            alive = ~np.any(np.all(front[None, :, :] <= c[:, None, :], axis=2), axis=1)
            idx, c = idx[alive], c[alive]
        # within the chunk, among survivors only (a point dominated by a removed one is dominated
        # by the front point that removed it): j dominates i if j is earlier and <= everywhere
        le_in = np.all(c[None, :, :] <= c[:, None, :], axis=2)  # [i, j]: c_j <= c_i
        earlier = np.tri(idx.size, idx.size, k=-1, dtype=bool)
        keep = idx[~np.any(le_in & earlier, axis=1)]
        if keep.size:
            front = np.vstack([front, obj[keep]])
            front_idx.append(keep)
    if front_idx:
        mask[np.concatenate(front_idx)] = True
    return mask


@dataclass(frozen=True)
class Exploration:
    """A swept design space: flat cost arrays, the sweep axes, the Pareto-optimal indices."""

    spec: AccelSpec
    axes: list[tuple[str, list[str]]]
    result: AccelResult
    latency_s: np.ndarray
    energy_pj: np.ndarray
    area_um2: np.ndarray
    utilization: np.ndarray
    pareto: np.ndarray  # flat indices, sorted by latency
    eval_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_points(self) -> int:
        return int(self.latency_s.size)

    def rows(self, indices: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        out = []
        for i in np.asarray(indices, dtype=np.int64).tolist():
            out.append({"index": i, **point_labels(self.axes, i), "latency_s": float(self.latency_s[i]),
                        "energy_pj": float(self.energy_pj[i]), "area_mm2": float(self.area_um2[i]) * 1e-6,
                        "utilization": float(self.utilization[i])})
        return out


def sweep(spec: AccelSpec, sweeps: dict[str, list[str]], work: Any) -> Exploration:
    """Evaluate `work` on every combination of `sweeps` (key -> list of values, as written on the
    command line) around the design `spec`; compute the (latency, energy, area) Pareto front."""
    import time

    n = math.prod(len(v) for v in sweeps.values())
    if n > MAX_POINTS:
        raise InputError(f"--sweep gives {n:,} design points; at most {MAX_POINTS:,} at once (each costs memory "
                         "and Pareto time): sweep fewer values, or split the sweep")
    params, axes = grid(spec.params(), sweeps)
    t0 = time.perf_counter()
    r = evaluate(params, work)
    dt = time.perf_counter() - t0
    lat, en, ar = (np.ravel(getattr(r, k)) for k in OBJECTIVES)
    n = max(lat.size, en.size, ar.size)
    lat, en, ar = (np.broadcast_to(a, (n,)) if a.size == 1 else a for a in (lat, en, ar))
    mask = pareto_mask(np.stack([lat, en, ar], axis=1))
    idx = np.flatnonzero(mask)
    idx = idx[np.argsort(lat[idx], kind="stable")]
    util = np.ravel(r.utilization)
    util = np.broadcast_to(util, (n,)) if util.size == 1 else util
    return Exploration(spec, axes, r, lat, en, ar, util, idx, dt)


def parse_sweeps(items: Sequence[str]) -> dict[str, list[str]]:
    """`["pe_rows=8,16,32", "nm=none,2:4"]` -> {"pe_rows": ["8", "16", "32"], "nm": ["none", "2:4"]}."""
    out: dict[str, list[str]] = {}
    for it in items:
        if "=" not in it:
            raise InputError(f"--sweep {it!r}: write KEY=v1,v2,... (e.g. pe_rows=8,16,32)")
        key, vals = it.split("=", 1)
        key = key.strip()
        values = [v.strip() for v in vals.split(",") if v.strip()]
        if not values:
            raise InputError(f"--sweep {key}: give at least one value after '='")
        if key in out:
            raise InputError(f"--sweep {key} is given twice; list all its values once")
        out[key] = values
    return out


def plot_output(path: str | Path | OutputFile, what: str = "--plot") -> OutputFile:
    """The figure file decided now (a known image suffix, a writable place, not a folder): pass
    the result to `plot_pareto` / `plot_accuracy`, which write it all-or-nothing."""
    return path if isinstance(path, OutputFile) else OutputFile(path, what=what, suffixes=PLOT_SUFFIXES)


def _save_fig(fig: Any, out: OutputFile) -> None:
    with out as tmp:
        fig.savefig(tmp, dpi=130, bbox_inches="tight")


def plot_pareto(ex: Exploration, path: str | Path | OutputFile, title: str | None = None) -> None:
    """Latency vs energy of every design point (colour = area), the Pareto-optimal ones circled.
    `path`: a file name (.png, .svg, .pdf, ...) or an OutputFile from `plot_output`."""
    out = plot_output(path)
    try:
        _plot_pareto(ex, out, title)
    finally:
        out.abort()  # nothing left behind if drawing failed (a no-op once written)


def _plot_pareto(ex: Exploration, out: OutputFile, title: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = np.isfinite(ex.latency_s)
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    sc = ax.scatter(ex.latency_s[ok] * 1e3, ex.energy_pj[ok] * 1e-9, c=ex.area_um2[ok] * 1e-6, s=6,
                    cmap="viridis", alpha=0.6, linewidths=0)
    fig.colorbar(sc, ax=ax, label="area (mm²)")
    p = ex.pareto
    ax.scatter(ex.latency_s[p] * 1e3, ex.energy_pj[p] * 1e-9, facecolors="none", edgecolors="red", s=40,
               label=f"Pareto (latency, energy, area): {p.size} of {int(ok.sum())}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("energy (mJ)")
    ax.set_title(title or f"{ex.spec.name}: " + ", ".join(k for k, _ in ex.axes))
    ax.legend(loc="best", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    try:
        _save_fig(fig, out)
    finally:
        plt.close(fig)


# ---- accuracy joined with cost --------------------------------------------------------------------


def accuracy_vs_cost(result_dirs: Sequence[str | Path], spec: Any, phase: str = "decode", batch: int = 1,
                     context: int = 2048, tokens: int = 2048, gpu_impl: str = "pytorch") -> list[dict[str, Any]]:
    """One row per `nmx run` result folder: its perplexity and recipe, and the latency / energy of
    one step of the recipe's workload (the real per-layer storage of its masks, its whole KV policy)
    on `spec`: any target of nmx.hw.targets (an AccelSpec, a preset name, a YAML file, a Target).
    Energy is None on a target without an energy model (a GPU)."""
    from nmx.hw.targets import get_target
    from nmx.hw.workload import llm_workload, read_result

    target = get_target(spec, gpu_impl)
    target.check_phase(phase)
    rows = []
    for d in result_dirs:
        d = expand_user(d)
        f = d / "result.json"
        if not d.is_dir():
            raise InputError(f"{d}: {'no such folder' if not d.exists() else 'not a folder'}; "
                             "give folders written by `nmx run` (with result.json)")
        if not f.exists():
            raise InputError(f"{d}: no result.json; give folders written by `nmx run`")
        res = read_result(d)
        ppl = res.get("perplexity")
        if isinstance(ppl, str) and ppl in ("inf", "-inf"):  # how `nmx run` writes an infinite perplexity
            ppl = float(ppl)
        if isinstance(ppl, bool) or not isinstance(ppl, (int, float)):
            raise InputError(f"{f}: 'perplexity' must be a number, got {ppl!r}; give folders written by `nmx run`"
                             if "perplexity" in res else f"{f} has no 'perplexity'; give folders written by `nmx run`")
        ppl = float(ppl)
        w = llm_workload(d, phase, batch=batch, context=context, tokens=tokens)
        c = target.cost(w)
        row = {"dir": str(d), "label": d.name, "recipe": w.compression.describe(), "perplexity": ppl,
               "bits_per_weight": res.get("bits_per_weight"), "weight_sparsity": res.get("weight_sparsity"),
               "target": target.name, "kind": target.kind, "latency_s": c.latency_s,
               "tokens_per_s": c.tokens_per_s, "energy_pj": c.energy_pj, "bytes": c.bytes, "bound": c.bound,
               "kv_cache_bytes": c.kv_cache_bytes, "phase": phase, "batch": batch, "context": context}
        if target.kind == "accelerator":
            row.update(accel=target.name, area_mm2=c.extra["area_mm2"], utilization=c.extra["utilization"],
                       dram_bytes=c.bytes)
        rows.append(row)
    return rows


def plot_accuracy(rows: list[dict[str, Any]], path: str | Path | OutputFile) -> None:
    """Perplexity against latency and against energy, one labelled point per recipe.
    `path`: a file name (.png, .svg, .pdf, ...) or an OutputFile from `plot_output`."""
    out = plot_output(path)
    try:
        _plot_accuracy(rows, out)
    finally:
        out.abort()


def _plot_accuracy(rows: list[dict[str, Any]], out: OutputFile) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("latency_s", 1e3, "latency (ms)")]
    if rows and all(r["energy_pj"] is not None for r in rows):  # a GPU target has no energy model
        panels.append(("energy_pj", 1e-9, "energy (mJ)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.4), squeeze=False)
    for ax, (key, scale, unit) in zip(axes[0], panels, strict=True):
        xs = [r[key] * scale for r in rows]
        ys = [r["perplexity"] for r in rows]
        ax.scatter(xs, ys, s=30, color="tab:blue")
        for r, x, y in zip(rows, xs, ys, strict=True):
            ax.annotate(r["label"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"{unit} per {rows[0]['phase']} step" if rows else unit)
        ax.set_ylabel("perplexity")
        ax.grid(True, alpha=0.3)
    if rows:
        fig.suptitle(f"accuracy vs cost on {rows[0]['target']}")
    try:
        _save_fig(fig, out)
    finally:
        plt.close(fig)
