"""A sweep's report: one table of every point (CSV and markdown), Pareto plots, one HTML file.

Plots put perplexity (log scale when it spans a wide range) against bits per weight, KV-cache bytes
per token and, where the results carry a `hardware` block (nmx run's pricing), against latency and
energy on each target and phase. The Pareto front (no other point has both a lower cost and a lower
perplexity) is drawn as a step line and its points are circled. report.html holds the tables and
the plots (PNG, base64) and nothing else: it opens anywhere, offline.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from nmx.io import write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from nmx.sweep.driver import Outcome
    from nmx.sweep.spec import Sweep

#: what a hardware block says per target and phase, in the order of the table
HW_METRICS = ("latency_s", "tokens_per_s", "energy_pj", "bytes", "bound")
#: of those, the costs a Pareto plot puts perplexity against
HW_PLOTTED = ("latency_s", "energy_pj")
#: the per-point numbers of nmx run's result, in the order of the table
RESULT_COLUMNS = ("perplexity", "bits_per_weight", "weight_sparsity", "kv_bytes_per_token", "eval_tokens", "wall_s")
AXES = {"bits_per_weight": "bits per weight (values, indices, scales)",
        "kv_bytes_per_token": "KV-cache bytes per token (all layers, K and V)",
        "latency_s": "latency (s)", "energy_pj": "energy (pJ)"}


# ---------------------------------------------------------------- the hardware block


def _name(v: Any) -> str:
    if isinstance(v, dict):
        return " ".join(f"{k}={x}" if k not in ("name", "kind", "phase") else str(x) for k, x in v.items())
    return str(v)


def _phase(row: dict[str, Any]) -> str:
    """`prefill L=2048 B=1`, `decode C=2048 B=16`: a priced phase with its lengths and batch."""
    phase = _name(row["phase"])
    parts = [phase]
    if phase == "prefill" and row.get("tokens") is not None:
        parts.append(f"L={row['tokens']}")
    if phase == "decode" and row.get("context") is not None:
        parts.append(f"C={row['context']}")
    if row.get("batch") is not None:
        parts.append(f"B={row['batch']}")
    return " ".join(parts)


def hardware_metrics(block: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(target, phase) -> {latency_s, tokens_per_s, energy_pj, bytes, bound} from a result's `hardware`
    block, whichever nesting it uses: target -> phase -> numbers, lists of rows naming their
    `target` and `phase`, or a mix. Per-operation rows (lists under an entry that already has numbers)
    are not read."""
    found: dict[tuple[str, str], dict[str, Any]] = {}

    def visit(node: Any, path: list[str]) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("latency_s"), (int, float)):
                target = _name(node["target"]) if "target" in node else (path[0] if path else "hardware")
                phase = _phase(node) if "phase" in node else " ".join(path[1:])
                found[(target, phase)] = {m: node[m] for m in HW_METRICS if m in node}
                return
            for k, v in node.items():
                visit(v, path if k in ("targets", "phases", "results") else path + [str(k)])
        elif isinstance(node, list):
            for item in node:
                tag = []
                if isinstance(item, dict) and not isinstance(item.get("latency_s"), (int, float)):
                    for k in ("target", "name", "phase"):
                        if k in item and not isinstance(item[k], (dict, list)):
                            tag = [str(item[k])]
                            break
                visit(item, path + tag)

    visit(block, [])
    return found


# ---------------------------------------------------------------- rows


def _value(v: Any) -> str:
    from nmx.sweep.spec import display

    return display(v)


def rows(outcomes: list[Outcome]) -> tuple[list[dict[str, Any]], list[str], list[tuple[str, str]]]:
    """One flat row per point, the override paths (columns) and the (target, phase) pairs."""
    paths: list[str] = list(dict.fromkeys(k for o in outcomes for k in o.point.values))
    hw_keys: list[tuple[str, str]] = []
    table = []
    for o in outcomes:
        r = o.result or {}
        row: dict[str, Any] = {"#": o.point.index, "point": o.point.label, "status": o.status, "key": o.point.key}
        for p in paths:
            row[p] = _value(o.point.values[p]) if p in o.point.values else ""
        for c in RESULT_COLUMNS:
            row[c] = r.get(c)
        for tp, metrics in hardware_metrics(r.get("hardware")).items():
            if tp not in hw_keys:
                hw_keys.append(tp)
            for m, v in metrics.items():
                row[_hw_column(tp, m)] = v
        row["error"] = o.error or ""
        table.append(row)
    return table, paths, hw_keys


def _hw_column(tp: tuple[str, str], metric: str) -> str:
    target, phase = tp
    return f"{target} {phase} {metric}".replace("  ", " ") if phase else f"{target} {metric}"


def _columns(paths: list[str], hw_keys: list[tuple[str, str]]) -> list[str]:
    return (["#", "point", "status", *paths, *RESULT_COLUMNS]
            + [_hw_column(tp, m) for tp in hw_keys for m in HW_METRICS] + ["error", "key"])


def _shown(table: list[dict[str, Any]], columns: list[str]) -> list[str]:
    """The columns of the markdown and HTML tables: the CSV's, less the key and the empty ones."""
    core = {"#", "point", "status", "perplexity"}
    return [c for c in columns if c != "key" and (c in core or any(r.get(c) not in (None, "") for r in table))]


def _fmt(v: Any, column: str = "") -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if column == "wall_s":
            return f"{v:.1f}"
        if column.endswith(("latency_s", "energy_pj", "bytes", "tokens_per_s")):
            return f"{v:.4g}"
        return f"{v:.4f}" if abs(v) < 1e5 else f"{v:.4g}"
    return str(v)


def write_csv(path: Path, table: list[dict[str, Any]], columns: list[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in table:
        w.writerow([row.get(c) if isinstance(row.get(c), (int, float)) and not isinstance(row.get(c), bool)
                    else _fmt(row.get(c), c) for c in columns])
    write_text_atomic(path, buf.getvalue())


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(table: list[dict[str, Any]], columns: list[str]) -> str:
    shown = _shown(table, columns)
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in table:
        lines.append("| " + " | ".join(_md_cell(_fmt(row.get(c), c)) for c in shown) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- Pareto plots


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (lower x and lower y), by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def plot_specs(hw_keys: list[tuple[str, str]]) -> list[tuple[str, str, str, str]]:
    """(file name, table column of x, axis label, what x is) of every plot."""
    specs = [(f"ppl_vs_{c}.png", c, AXES[c], AXES[c].split(" (")[0]) for c in ("bits_per_weight", "kv_bytes_per_token")]
    for tp in hw_keys:
        for m in HW_PLOTTED:
            slug = re.sub(r"[^A-Za-z0-9]+", "_", f"{tp[0]}_{tp[1]}").strip("_")
            where = f"{tp[0]}, {tp[1]}" if tp[1] else tp[0]
            specs.append((f"ppl_vs_{slug}_{m}.png", _hw_column(tp, m), f"{AXES[m]} on {where}",
                          f"{AXES[m].split(' (')[0]} on {where}"))
    return specs


def plot(path: Path, table: list[dict[str, Any]], column: str, xlabel: str, title: str) -> list[int] | None:
    """Perplexity against `column` with the Pareto front; None (no file) when no point has both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r[column], r["perplexity"], r["#"]) for r in table
           if r["status"] != "failed" and _finite(r.get(column)) and _finite(r.get("perplexity"))]
    if not pts:
        return None
    front = pareto([(x, y) for x, y, _ in pts])
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=28, color="#4477aa", zorder=3, label="points")
    fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
    ax.step(fx, fy, where="post", color="#cc3311", lw=1.2, zorder=2, label="Pareto front")
    ax.scatter(fx, fy, s=90, facecolors="none", edgecolors="#cc3311", zorder=4)
    for x, y, n in pts:
        ax.annotate(f"#{n}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(xlabel)
    ys = [p[1] for p in pts]
    if min(ys) > 0 and max(ys) > 3 * min(ys):  # a wide range: log scale (a broken point next to good ones)
        ax.set_yscale("log")
    ax.set_ylabel("perplexity" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    if column != "bits_per_weight" and all(p[0] > 0 for p in pts) and max(p[0] for p in pts) > 20 * min(
            p[0] for p in pts):
        ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return [pts[i][2] for i in front]


# ---------------------------------------------------------------- the report


def _notes(outcomes: list[Outcome]) -> list[str]:
    notes = []
    for o in outcomes:
        for n in ((o.result or {}).get("model") or {}).get("notes") or []:
            if n not in notes:
                notes.append(n)
    return notes


def _protocols(outcomes: list[Outcome]) -> list[str]:
    seen = []
    for o in outcomes:
        p = (o.result or {}).get("protocol")
        if p:
            text = (f"{p.get('text')}: {p.get('windows')} of {p.get('windows_available')} windows of "
                    f"{p.get('seq_len')} tokens ({p.get('tokens_scored')} tokens scored)")
            if text not in seen:
                seen.append(text)
    return seen


def write_report(out: Path, sweep: Sweep, outcomes: list[Outcome], wall_s: float) -> list[str]:
    """Write the report files into `out` (the report's private temporary folder); returns their names."""
    out.mkdir(parents=True, exist_ok=True)
    table, paths, hw_keys = rows(outcomes)
    columns = _columns(paths, hw_keys)
    write_csv(out / "table.csv", table, columns)
    plots_dir = out / "plots"
    plots_dir.mkdir(exist_ok=True)
    fronts: dict[str, list[int]] = {}
    drawn: list[tuple[str, str]] = []
    for name, column, xlabel, what in plot_specs(hw_keys):
        title = f"{sweep.name}: perplexity vs {what}"
        front = plot(plots_dir / name, table, column, xlabel, title)
        if front is not None:
            fronts[name] = front
            drawn.append((name, title))
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "cached", "failed")}
    notes, protocols = _notes(outcomes), _protocols(outcomes)
    md = _markdown(sweep, table, columns, counts, wall_s, notes, protocols, drawn, fronts, outcomes)
    write_text_atomic(out / "table.md", md)
    write_text_atomic(out / "sweep.yaml", yaml.safe_dump(_spec_record(sweep), sort_keys=False, allow_unicode=True))
    write_text_atomic(out / "report.html", _html(sweep, table, columns, counts, wall_s, notes, protocols, drawn,
                                                 fronts, outcomes, plots_dir))
    summary = {"name": sweep.name, "counts": counts, "wall_s": wall_s, "columns": columns,
               "pareto": fronts,
               "points": [{**row, "values": o.point.values, "recipe": o.point.recipe.as_dict(),
                           "hardware": (o.result or {}).get("hardware"), "worker": o.worker,
                           "warnings": o.warnings, "traceback": o.traceback}
                          for row, o in zip(table, outcomes, strict=True)]}
    write_json_atomic(out / "summary.json", _json_safe(summary))  # last: its presence marks a report
    return ["table.csv", "table.md", "report.html", "sweep.yaml", "summary.json",
            *[f"plots/{n}" for n, _ in drawn]]


def _spec_record(sweep: Sweep) -> dict[str, Any]:
    return {"name": sweep.name, "file": str(sweep.path) if sweep.path else None, "spec": sweep.spec,
            "points": [{"index": p.index, "label": p.label, "key": p.key, "values": p.values} for p in sweep.points]}


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _markdown(sweep, table, columns, counts, wall_s, notes, protocols, drawn, fronts, outcomes) -> str:
    lines = [f"# nmx sweep: {sweep.name}", "",
             f"{len(outcomes)} points: {counts['done']} computed now, {counts['cached']} from the cache, "
             f"{counts['failed']} failed; {wall_s:.1f} s.", ""]
    lines += [f"- evaluation: {p}" for p in protocols]
    lines += [f"- note: {n}" for n in notes]
    lines += ["", markdown_table(table, columns), ""]
    if drawn:
        lines += ["## Pareto fronts (points with no other point both cheaper and more accurate)", ""]
        lines += [f"- {title}: {', '.join(f'#{n}' for n in fronts[name])} (plots/{name})" for name, title in drawn]
        lines.append("")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        lines += ["## Failed points", ""] + [f"- #{o.point.index} {o.point.label}: {o.error}" for o in failed] + [""]
    return "\n".join(lines)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
padding:0 16px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:12.5px;display:block;overflow-x:auto}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;position:sticky;top:0}td.t,th.t{text-align:left}
tr.failed td{background:#fdecea}tr.front td.n{font-weight:bold;color:#cc3311}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots figure{margin:0;border:1px solid #eee;padding:6px}
.plots img{max-width:560px;width:100%}figcaption{font-size:12px;color:#555}
pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:12px}.muted{color:#666}
"""


def _html(sweep, table, columns, counts, wall_s, notes, protocols, drawn, fronts, outcomes, plots_dir) -> str:
    e = html.escape
    on_front = {n for f in fronts.values() for n in f}
    shown = _shown(table, columns)
    text_cols = {"point", "status", "error", *[c for c in columns if table and isinstance(table[0].get(c), str)]}
    head = "".join(f'<th class="{"t" if c in text_cols else ""}">{e(c)}</th>' for c in shown)
    body = []
    for r in table:
        cls = "failed" if r["status"] == "failed" else ("front" if r["#"] in on_front else "")
        cells = "".join(f'<td class="{"t" if c in text_cols else ""}{" n" if c == "#" else ""}">'
                        f'{e(_fmt(r.get(c), c))}</td>' for c in shown)
        body.append(f'<tr class="{cls}">{cells}</tr>')
    figures = []
    for name, title in drawn:
        data = base64.b64encode((plots_dir / name).read_bytes()).decode("ascii")
        figures.append(f'<figure><img alt="{e(title)}" src="data:image/png;base64,{data}">'
                       f'<figcaption>{e(title)}; front: {e(", ".join(f"#{n}" for n in fronts[name]))}'
                       "</figcaption></figure>")
    failed = [o for o in outcomes if o.status == "failed"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>nmx sweep: {e(sweep.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>nmx sweep: {e(sweep.name)}</h1>",
        f"<p>{len(outcomes)} points: {counts['done']} computed now, {counts['cached']} from the cache, "
        f"{counts['failed']} failed; {wall_s:.1f} s.</p>",
        "<ul>", *[f"<li>evaluation: {e(p)}</li>" for p in protocols], *[f"<li>note: {e(n)}</li>" for n in notes],
        "</ul>",
        "<h2>Points</h2>", f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>",
    ]
    if failed:
        parts += ["<h2>Failed points</h2>", "<ul>",
                  *[f"<li>#{o.point.index} {e(o.point.label)}: <code>{e(o.error or '')}</code></li>" for o in failed],
                  "</ul>"]
    if figures:
        parts += ["<h2>Pareto plots</h2>",
                  '<p class="muted">Perplexity against each cost; the red steps join the points that no other '
                  "point beats on both (circled; bold numbers in the table).</p>",
                  f'<div class="plots">{"".join(figures)}</div>']
    parts += ["<h2>Sweep file</h2>",
              f"<pre>{e(yaml.safe_dump(_json_safe(sweep.spec), sort_keys=False, allow_unicode=True))}</pre>",
              "</body></html>"]
    return "\n".join(p for p in parts if p)


def load_summary(path: Path) -> dict[str, Any]:
    """A written report's summary.json (for tools and tests)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
