"""Rich tables built from result rows (the CLI prints them; library code never does)."""

from __future__ import annotations

import math
from typing import Any, Iterable

from rich.table import Table


def _num(v: Any, spec: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, spec)


def formats_table(rows: Iterable[dict]) -> Table:
    t = Table(title="nmx number formats")
    for col, justify in [("name", "left"), ("family", "left"), ("bits/elem", "right"), ("block", "right"),
                         ("element", "left"), ("scale", "left"), ("max (elem)", "right"),
                         ("min subnormal (elem)", "right"), ("range dB", "right")]:
        t.add_column(col, justify=justify)
    for r in rows:
        block = "vector" if r["block_size"] is None else str(r["block_size"])
        t.add_row(r["name"], r["family"], _num(r["bits_per_element"], "g"), block, r["element"], r["scale"],
                  _num(r["max"], ".6g"), _num(r["min_subnormal"], ".6g"), _num(r["dynamic_range_db"], ".1f"))
    return t


def quant_error_table(rows: Iterable[dict], title: str) -> Table:
    t = Table(title=title)
    for col, justify in [("format", "left"), ("bits/elem", "right"), ("stored bits/elem", "right"),
                         ("SQNR dB", "right"), ("MSE", "right"), ("max |err|", "right")]:
        t.add_column(col, justify=justify)
    for r in rows:
        t.add_row(r["name"], _num(r["bits_per_element"], "g"), _num(r["storage_bits_per_element"], ".4g"),
                  _num(r["sqnr_db"], ".2f"), _num(r["mse"], ".3e"), _num(r["max_abs_error"], ".3e"))
    return t


def storage_table_view(rows: Iterable[dict], title: str) -> Table:
    """Compressed storage sizes; the winner of each (density, value bits) is starred."""
    t = Table(title=title)
    for col, justify in [("density", "right"), ("sparsity", "right"), ("value bits", "right"),
                         ("format", "left"),
                         ("bits/nonzero", "right"), ("bits/element", "right"), ("vs dense", "right"),
                         ("index metadata", "left")]:
        t.add_column(col, justify=justify)
    previous = None
    for r in rows:
        key = (r["density"], r["value_bits"])
        if previous is not None and key != previous:
            t.add_section()
        previous = key
        name = f"* {r['format']}" if r["best"] else f"  {r['format']}"
        t.add_row(_num(r["density"], "g"), _num(r["sparsity"], ".4g"), str(r["value_bits"]), name,
                  _num(r["bits_per_nonzero"], ".2f"),
                  _num(r["bits_per_element"], ".3f"), _num(r["relative_to_dense"], ".3f"), str(r["metadata"]))
    return t
