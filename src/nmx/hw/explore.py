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
    res = search_vs_cost(["runs/search"], ["examples/hw/anda_16x16_bitserial.yaml"])  # a precision search's
    res["rows"], res["pareto"]     # points (lengths, calibration perplexity) x designs, Pareto of ppl vs cost

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


# ---- a precision search's points joined with cost ------------------------------------------------

#: which of a search's points `search_vs_cost` prices
POINT_SETS = ("all", "accepted", "chosen")
#: the fronts `mark_fronts` computes: row flag -> objectives (all minimized)
FRONTS = {"pareto_latency": ("perplexity", "latency_s"), "pareto_energy": ("perplexity", "energy_pj"),
          "pareto": ("perplexity", "latency_s", "energy_pj")}


def read_search(path: str | Path) -> tuple[dict[str, Any], str]:
    """The record `nmx search-precision --out DIR` wrote (DIR/summary.json; or that file, or the
    `--json` output saved to a file), checked enough to price its points; returns it and its name."""
    from nmx.io import read_json

    p = expand_user(path)
    f = p / "summary.json" if p.is_dir() else p
    if p.is_dir() and not f.exists():
        raise InputError(f"{p}: no summary.json; give the --out folder of `nmx search-precision` (or its summary.json)")
    rec = read_json(f, "summary of `nmx search-precision`")
    hint = "give the --out folder of `nmx search-precision` or its summary.json"
    if rec.get("kind") != "precision-search":
        raise InputError(f"{f}: not a precision search record (kind {rec.get('kind')!r}); {hint}")
    types, points, group = rec.get("types"), rec.get("points"), rec.get("group")
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        raise InputError(f"{f}: 'types' must be a list of tensor types; {hint}")
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise InputError(f"{f}: 'group' must be a positive whole number, got {group!r}; {hint}")
    if not isinstance(points, list) or not points:
        raise InputError(f"{f}: 'points' must be a non-empty list; {hint}")
    if not isinstance(rec.get("recipe"), dict):
        raise InputError(f"{f}: 'recipe' must be a mapping; {hint}")
    for i, pt in enumerate(points):
        where = f"{f}: points[{i}]"
        if not isinstance(pt, dict):
            raise InputError(f"{where} is not a mapping; {hint}")
        lengths, q = pt.get("lengths"), pt.get("quality")
        if not isinstance(lengths, list) or len(lengths) != len(types) or not all(
                m is None or (isinstance(m, int) and not isinstance(m, bool)) for m in lengths):
            raise InputError(f"{where}: 'lengths' must list {len(types)} mantissa lengths (or null); {hint}")
        if isinstance(q, bool) or not isinstance(q, (int, float)):
            raise InputError(f"{where}: 'quality' must be a number, got {q!r}; {hint}")
    chosen = rec.get("chosen_lengths")
    if chosen is not None and (not isinstance(chosen, dict) or set(chosen) != set(types)):
        raise InputError(f"{f}: 'chosen_lengths' must map each of {types} to a length; {hint}")
    name = p.name if p.is_dir() else (p.parent.name if p.name == "summary.json" else p.stem)
    return rec, name


def lengths_label(lengths: Sequence[Any]) -> str:
    """[7, 7, 6, None] -> '7/7/6/-' (the order of nmx.quant.tensor_types.TENSOR_TYPES)."""
    return "/".join("-" if m is None else str(m) for m in lengths)


def search_points(record: dict[str, Any], search: str = "search", which: str = "all") -> list[dict[str, Any]]:
    """The points of a search record as rows to price: lengths, their BFP activation formats per tensor
    type (None lengths: that type unquantized), the *calibration* perplexity, BOPs, accepted, chosen."""
    if which not in POINT_SETS:
        raise InputError(f"--points must be one of {', '.join(POINT_SETS)}, got {which!r}")
    types, g = record["types"], record["group"]
    chosen = record.get("chosen_lengths")
    chosen_l = [chosen[t] for t in types] if chosen else None
    out = []
    for pt in record["points"]:
        lengths = list(pt["lengths"])
        is_chosen = lengths == chosen_l
        if (which == "accepted" and not pt.get("accepted")) or (which == "chosen" and not is_chosen):
            continue
        acts = {t: f"bfp_m{m}_g{g}" for t, m in zip(types, lengths, strict=True) if m is not None}
        out.append({"search": search, "label": lengths_label(lengths), "lengths": dict(zip(types, lengths,
                                                                                               strict=True)),
                    "activations": acts or None, "perplexity": float(pt["quality"]),
                    "perplexity_kind": "calibration", "bops_per_token": pt.get("bops"),
                    "accepted": bool(pt.get("accepted")), "chosen": is_chosen, "iteration": pt.get("iteration")})
    return out


def points_vs_cost(points: Sequence[dict[str, Any]], recipe: dict[str, Any], shape: Any, targets: Sequence[Any],
                   phase: str = "decode", batch: int = 1, context: int = 2048, tokens: int = 2048
                   ) -> list[dict[str, Any]]:
    """Each point (a dict with `activations`: one format, a {tensor type: format} mapping or None, and
    `perplexity`; other keys are copied) priced on every target: the recipe (its weights, sparsity,
    KV cache) with the point's activation formats, on `shape` (an nmx.hw.workload.ModelShape), one
    `phase` step. One row per point and target, points first. `linears_latency_s` / `linears_energy_pj`:
    the part of the step spent in the decoder's linears (the layers whose activation formats the point
    sets, which its BOPs count; not attention's QK^T / PV, the norms or the LM head)."""
    from dataclasses import asdict

    from nmx.hw.workload import from_result, llm_workload

    for t in targets:
        t.check_phase(phase)
    qz = dict(recipe.get("quantization") or {})
    linears = set(shape.linears())
    rows = []
    for p in points:
        res = {"recipe": {**recipe, "quantization": {**qz, "activations": p.get("activations")}},
               "model": {"shape": asdict(shape)}}
        _, comp = from_result(res, where=f"point {p.get('label', '?')}", name=shape.name)
        w = llm_workload(shape, phase, batch=batch, context=context, tokens=tokens, compression=comp)
        for t in targets:
            c = t.cost(w)
            row = {**p, "target": t.name, "kind": t.kind, "latency_s": c.latency_s, "energy_pj": c.energy_pj,
                   "tokens_per_s": c.tokens_per_s, "bytes": c.bytes, "bound": c.bound, "phase": phase,
                   "batch": batch, "context": context if phase == "decode" else 0,
                   "tokens": tokens if phase == "prefill" else 1,
                   "linears_latency_s": sum(o.latency_s for o in c.ops if o.name in linears),
                   "linears_energy_pj": (None if c.energy_pj is None else
                                         sum(o.energy_pj or 0.0 for o in c.ops if o.name in linears))}
            if t.kind == "accelerator":
                row.update(area_mm2=c.extra["area_mm2"], utilization=c.extra["utilization"])
            rows.append(row)
    return rows


def mark_fronts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flag each row on the Pareto fronts of FRONTS (perplexity and cost, all minimized, over every
    row: points on different designs compete). A front needing energy is None where a row has none."""
    for key, cols in FRONTS.items():
        if any(r.get(c) is None for r in rows for c in cols):
            for r in rows:
                r[key] = None
            continue
        obj = np.array([[float(r[c]) for c in cols] for r in rows], dtype=np.float64).reshape(len(rows), len(cols))
        for r, on in zip(rows, pareto_mask(obj).tolist(), strict=True):
            r[key] = bool(on)
    return rows


def search_vs_cost(searches: Sequence[str | Path], specs: Sequence[Any], model: Any = None, phase: str = "decode",
                   batch: int = 1, context: int = 2048, tokens: int = 2048, which: str = "all",
                   gpu_impl: str = "pytorch") -> dict[str, Any]:
    """`nmx explore --search`: every point of one or more `nmx search-precision` outputs (their lengths and
    calibration perplexity) priced on every design of `specs` (any nmx.hw.targets target), with the
    Pareto fronts of perplexity against latency, energy, and both. `model` (a preset, config.json or
    its folder) gives the shape where the search's own model name is neither."""
    from nmx.hw.targets import get_target
    from nmx.hw.workload import resolve_model

    if not searches:
        raise InputError("give at least one --search folder (or summary.json) of `nmx search-precision`")
    if not specs:
        raise InputError("give the designs to price the points on: --accel FILE.yaml or --target NAME (repeatable)")
    targets = [get_target(s, gpu_impl) for s in specs]
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise InputError(f"designs named twice: {sorted({n for n in names if names.count(n) > 1})}; give each once")
    for t in targets:
        t.check_phase(phase)
    forced = resolve_model(model)[0] if model is not None else None
    rows: list[dict[str, Any]] = []
    meta = []
    for s in searches:
        rec, name = read_search(s)
        shape = forced or _search_shape(rec, str(s))
        pts = search_points(rec, name, which)
        rows.extend(points_vs_cost(pts, rec["recipe"], shape, targets, phase, batch, context, tokens))
        meta.append({"search": name, "path": str(s), "model": rec.get("model"), "shape": shape.name,
                     "mode": rec.get("mode"), "tolerance": rec.get("tolerance"), "group": rec["group"],
                     "weights": rec.get("weights"), "reference_ppl": rec.get("reference_ppl"),
                     "chosen_lengths": rec.get("chosen_lengths"), "points": len(pts)})
    mark_fronts(rows)
    front = sorted((i for i, r in enumerate(rows) if r["pareto"] or (r["pareto"] is None and r["pareto_latency"])),
                   key=lambda i: rows[i]["latency_s"])
    return {"perplexity_kind": "calibration (each search's own calibration text)", "phase": phase, "batch": batch,
            "context": context, "tokens": tokens, "targets": [{"name": t.name, "kind": t.kind} for t in targets],
            "searches": meta, "rows": rows, "pareto": front}


def _search_shape(record: dict[str, Any], where: str) -> Any:
    from nmx.hw.workload import resolve_model

    tried = []
    for cand in (record["recipe"].get("model"), record.get("model")):
        if isinstance(cand, str) and cand not in tried:
            tried.append(cand)
            try:
                return resolve_model(cand)[0]
            except InputError:
                continue
    raise InputError(f"{where}: the search's model {', '.join(map(repr, tried)) or '?'} is no preset and no folder "
                     "with config.json here; give --model (a preset, a HF config.json or its folder)")


def plot_search(rows: list[dict[str, Any]], path: str | Path | OutputFile) -> None:
    """Perplexity against latency and against energy of every (point, design) row, one colour per
    design, the Pareto front of each panel drawn as a line, chosen points labelled."""
    out = plot_output(path)
    try:
        _plot_search(rows, out)
    finally:
        out.abort()


def _plot_search(rows: list[dict[str, Any]], out: OutputFile) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("latency_s", 1e3, "latency (ms)", "pareto_latency")]
    if rows and all(r["energy_pj"] is not None for r in rows):
        panels.append(("energy_pj", 1e-9, "energy (mJ)", "pareto_energy"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.6), squeeze=False)
    targets = list(dict.fromkeys(r["target"] for r in rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ok = [r for r in rows if math.isfinite(r["perplexity"])]
    for ax, (key, scale, unit, front) in zip(axes[0], panels, strict=True):
        for i, t in enumerate(targets):
            mine = [r for r in ok if r["target"] == t]
            acc = [r for r in mine if r.get("accepted", True)]
            rej = [r for r in mine if not r.get("accepted", True)]
            c = colours[i % len(colours)]
            ax.scatter([r[key] * scale for r in acc], [r["perplexity"] for r in acc], s=22, color=c, label=t)
            if rej:
                ax.scatter([r[key] * scale for r in rej], [r["perplexity"] for r in rej], s=22, facecolors="none",
                           edgecolors=c)
        on = sorted((r for r in ok if r.get(front)), key=lambda r: r[key])
        ax.step([r[key] * scale for r in on], [r["perplexity"] for r in on], where="post", color="red", lw=1,
                label="Pareto front")
        for r in ok:
            if r.get("chosen") or r.get(front):
                ax.annotate(r["label"], (r[key] * scale, r["perplexity"]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(f"{unit} per {rows[0]['phase']} step" if rows else unit)
        ax.set_ylabel(f"perplexity ({rows[0].get('perplexity_kind', 'evaluation')})" if rows else "perplexity")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(loc="best", fontsize=7)
    fig.suptitle("perplexity vs cost (hollow: rejected by the search's tolerance)")
    try:
        _save_fig(fig, out)
    finally:
        plt.close(fig)
