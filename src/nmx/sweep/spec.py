"""The sweep file: a base recipe, the points to run, and the hardware to price them on.

    name: nm-and-formats               # optional: the report's title (default: the file's name)
    base: ../recipes/wanda_2of4.yaml   # a recipe file (relative to this file), or a recipe written inline
    set:                               # optional: --set overrides for every point
      evaluation.max_windows: 4
    grid:                              # every combination of these values (--set paths -> lists)
      sparsity.pattern: ["2:4", "4:8"]
      quantization.weights: [null, mxfp4]
    points:                            # and/or single points (--set paths -> one value each)
      - {name: dense, sparsity: null}  # `name` labels the point in the table and the plots
    hardware: [h100]                   # the recipe's `hardware:` section of every point (a list: its targets)

A point's recipe is the base, then `hardware`, then `set`, then the point's own values, applied with
the same code as `nmx run --set` (nmx.recipe) and validated whole before anything runs: an unknown
path, a bad value, an empty grid or two points that resolve to the same recipe are one error line
that names the file, the place and the point.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nmx.errors import InputError, NmxError, did_you_mean
from nmx.io import read_text
from nmx.recipe import Recipe, _line_of, _yaml, load_recipe

#: the keys of a sweep file
KEYS = ("name", "base", "set", "grid", "points", "hardware")
#: changes when the meaning of a cached point changes (part of every point's key)
CACHE_FORMAT = "nmx-sweep-point-1"
#: a point's own label key in `points:` entries (never a recipe path)
NAME_KEY = "name"


@dataclass(frozen=True)
class Point:
    """One point of a sweep: its label, the --set assignments that make it, and its recipe."""

    index: int  # 1-based, in the order of the file (grid first, then points)
    label: str
    values: dict[str, Any]  # dotted path -> value: what sets this point apart
    recipe: Recipe
    key: str  # hash of the resolved recipe (the cache key)


@dataclass(frozen=True)
class Sweep:
    name: str
    path: Path | None
    points: tuple[Point, ...]
    spec: dict[str, Any] = field(default_factory=dict)  # the file as read (for the report)


def recipe_key(recipe: Recipe) -> str:
    """The cache key of a resolved recipe: sha256 of its canonical JSON, 16 hex digits."""
    text = json.dumps({"format": CACHE_FORMAT, "recipe": recipe.as_dict()}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def yaml_value(value: Any) -> str:
    """`value` written so that the recipe's YAML reader gives it back (a --set right-hand side)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True, sort_keys=False)
    text = text.strip()
    return text[:-4].strip() if text.endswith("\n...") else text  # a bare scalar ends its document


def display(value: Any) -> str:
    """How a value reads in a label or a table cell: a string as it is, anything else as YAML."""
    return value if isinstance(value, str) and value.strip() else yaml_value(value)


def _short(value: Any) -> str:
    text = yaml_value(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Where:
    """Places in the sweep file, for error messages: `FILE line N: ...`."""

    def __init__(self, path: Path | None, tree: Any) -> None:
        self.name = str(path) if path is not None else "sweep"
        self.tree = tree

    def __call__(self, *loc: Any) -> str:
        line = _line_of(self.tree, tuple(str(x) for x in loc)) if self.tree is not None and loc else None
        return f"{self.name} line {line}" if line else self.name

    def error(self, loc: tuple, message: str) -> InputError:
        return InputError(f"{self(*loc)}: {message}")


def _paths(mapping: Any, where: _Where, section: str) -> dict[str, Any]:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise where.error((section,), f"{section}: give a mapping of recipe paths to values "
                                      f"(e.g. sparsity.pattern: 2:4), not a {type(mapping).__name__}")
    for key in mapping:
        if not isinstance(key, str) or "=" in key or not all(p.strip() for p in key.split(".")):
            raise where.error((section,), f"{section}: {key!r} is not a recipe path (e.g. sparsity.pattern)")
    return mapping


def _grid(raw: Any, where: _Where) -> list[dict[str, Any]]:
    if raw is None:
        return []
    grid = _paths(raw, where, "grid")
    if not grid:
        raise where.error(("grid",), "grid: the grid is empty; give recipe paths and their values "
                                     "(e.g. sparsity.pattern: [2:4, 4:8]), or remove it")
    for key, values in grid.items():
        if not isinstance(values, list):
            raise where.error(("grid", key), f"grid: {key}: give a list of values (e.g. [2:4, 4:8]), not "
                                             f"{_short(values)}; a value for every point goes under set:")
        if not values:
            raise where.error(("grid", key), f"grid: {key}: the list of values is empty, so the grid has no points")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def _points(raw: Any, where: _Where) -> list[tuple[str | None, dict[str, Any]]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise where.error(("points",), f"points: give a list of points (each a mapping of recipe paths to values), "
                                       f"not a {type(raw).__name__}")
    if not raw:
        raise where.error(("points",), "points: the list is empty; give points or remove it")
    out = []
    for i, item in enumerate(raw, 1):
        if not isinstance(item, dict):
            raise where.error(("points",), f"points: item {i} is {_short(item)}; each point is a mapping of "
                                           "recipe paths to values, e.g. {name: dense, sparsity: null}")
        item = dict(item)
        name = item.pop(NAME_KEY, None)
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise where.error(("points",), f"points: item {i}: name must be a non-empty string, got {_short(name)}")
        out.append((name, _paths(item, where, "points")))
    return out


def _label(values: dict[str, Any], varying: set[str] | None = None) -> str:
    shown = {k: v for k, v in values.items() if varying is None or k in varying} or values
    return ", ".join(f"{k}={display(v) if isinstance(v, str) else _short(v)}" for k, v in shown.items()) or "base"


def _hardware_path(hardware: Any, where: _Where) -> dict[str, Any]:
    """The `hardware:` value as --set assignments of the recipe's hardware section."""
    if hardware is None:
        return {}
    field_ = Recipe.model_fields.get("hardware")
    if field_ is None:
        raise where.error(("hardware",), "hardware: the recipes of this nmx have no hardware section to put "
                                         "targets in; remove the key")
    if isinstance(hardware, list):
        if not hardware:
            raise where.error(("hardware",), "hardware: the list of targets is empty; name targets or remove it")
        return {"hardware.targets": hardware}
    if isinstance(hardware, dict):
        return {"hardware": hardware}
    raise where.error(("hardware",), f"hardware: give a list of targets or a recipe hardware section, "
                                     f"not {_short(hardware)}")


def load_sweep(path: Path | None = None, spec: dict | None = None) -> Sweep:
    """Read and validate a sweep file (or `spec`, the same as a dict): every point's recipe is
    resolved and validated here, before anything runs."""
    tree, base_dir = None, Path.cwd()
    if path is not None:
        path = Path(path)
        text = read_text(path, "sweep file")
        tree = _yaml(text, str(path), compose=True)
        spec = _yaml(text, str(path))
        base_dir = path.parent
    where = _Where(path, tree)
    if spec is None:
        raise where.error((), "the sweep file is empty; it needs a base recipe and a grid or points "
                              "(see `nmx sweep --help`)")
    if not isinstance(spec, dict):
        raise where.error((), f"a sweep file is a mapping (base, grid, points, ...), not a {type(spec).__name__}")
    for key in spec:
        if key not in KEYS:
            raise where.error((key,), f"{key}: unknown key{did_you_mean(key, KEYS)} (known: {', '.join(KEYS)})")

    name = spec.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise where.error(("name",), f"name: give a non-empty string, got {_short(name)}")
    name = name or (path.stem if path is not None else "sweep")

    base = spec.get("base")
    base_path, base_dict = None, None
    if isinstance(base, str) and base.strip():
        base_path = Path(base).expanduser()
        if not base_path.is_absolute():
            base_path = base_dir / base_path
        read_text(base_path, f"base recipe (base: in {where.name})")  # missing / unreadable: one line now
    elif isinstance(base, dict):
        base_dict = base
    elif base is not None:
        raise where.error(("base",), f"base: give a recipe file or a recipe mapping, not {_short(base)}")

    hardware = _hardware_path(spec.get("hardware"), where)
    every = _paths(spec.get("set"), where, "set")
    common = {**hardware, **every}
    sources = {**{k: "hardware" for k in hardware}, **{k: "set" for k in every}}
    combos = _grid(spec.get("grid"), where)
    listed = _points(spec.get("points"), where)
    if not combos and not listed:
        raise where.error((), "nothing to sweep: give a grid (recipe paths -> lists of values) and/or points "
                              "(a list of recipe paths -> values); one recipe runs with `nmx run`")
    varying = {k for k in (spec.get("grid") or {}) if len(spec["grid"][k]) > 1}

    raw_points: list[tuple[str, dict[str, Any], str]] = []
    for i, values in enumerate(combos, 1):
        raw_points.append((_label(values, varying), values, f"grid point {i} of {len(combos)}"))
    for i, (pname, values) in enumerate(listed, 1):
        raw_points.append((pname or _label(values), values, f"points item {i}"))

    points: list[Point] = []
    seen: dict[str, Point] = {}
    labels: dict[str, int] = {}
    for index, (label, values, place) in enumerate(raw_points, 1):
        assignments = {f"{k}={yaml_value(v)}": k for k, v in {**common, **values}.items()}
        try:
            recipe = load_recipe(base_path, list(assignments), base=base_dict)
        except NmxError as err:
            raise InputError(_blame(str(err), assignments, {**sources, **dict.fromkeys(values)}, place, label,
                                    where)) from None
        recipe = _absolute_paths(recipe)
        key = recipe_key(recipe)
        if key in seen:
            other = seen[key]
            raise where.error((), f"{place} ({label}) is the same recipe as point {other.index} ({other.label}); "
                                  "remove one of them (the cache would hold them as one point)")
        if label in labels:  # two different recipes under one name: number them
            label = f"{label} #{index}"
        labels[label] = index
        point = Point(index, label, dict(values), recipe, key)
        seen[key] = point
        points.append(point)
    return Sweep(name=name, path=path, points=tuple(points), spec=spec)


def _absolute(spec: str, what: str) -> str:
    """A relative path that the model loader or text reader would read here, made absolute (a built-in
    name, a Hub id or a missing path stays as it is)."""
    from nmx.model.sources import BUILTIN

    if what == "model" and spec in BUILTIN:
        return spec
    try:
        path = Path(spec).expanduser()
        usable = path.exists() if what == "model" else path.is_file()
        return str(path.resolve()) if usable and not path.is_absolute() else spec
    except (OSError, ValueError, RuntimeError):
        return spec


def _absolute_paths(recipe: Recipe) -> Recipe:
    """The recipe with its relative model and text paths made absolute: the cache key then names the
    files, and a worker whose folder differs (another node) reads the same ones."""
    ev, cal = recipe.evaluation, recipe.calibration
    return recipe.model_copy(update={
        "model": _absolute(recipe.model, "model"),
        "evaluation": ev.model_copy(update={"text": _absolute(ev.text, "text")}),
        "calibration": cal.model_copy(update={"text": _absolute(cal.text, "text")}),
    })


def _blame(message: str, assignments: dict[str, str], sources: dict[str, str | None], place: str, label: str,
           where: _Where) -> str:
    """Say which part of the sweep file an error of `load_recipe` comes from: its `--set A` becomes
    `FILE: grid point 2 of 4 (label): PATH: ...`, or `FILE line N: set: PATH: ...` for a value of
    `set:` or `hardware:`."""
    for assignment, key in assignments.items():
        prefix = f"--set {assignment}"
        if message.startswith(prefix):
            rest = message[len(prefix):].lstrip(": ")
            source = sources.get(key)
            if source is not None:
                return f"{where(source)}: {source}: {rest}"
            return f"{where.name}: {place} ({label}): {rest}"
    return f"{where.name}: {place} ({label}): {message.removeprefix('recipe: ')}"
