"""Reading the Timeloop/Sparseloop v0.3 YAML dialect into frozen specs (the subset nmx evaluates).

One evaluation is described by four files, as in Timeloop/Sparseloop:

    architecture    a tree of storage levels (outermost first) ending in one compute unit
    sparse options  per level: representation formats of each data space (ranks of UOP, RLE,
                    CP, B) and action optimizations (skipping / gating conditioned on other
                    data spaces); for the compute unit: skipping or gating of ineffectual MACs
    workload        the problem shape (dimensions, coefficients, data spaces and projections),
                    the instance (dimension sizes) and densities: a uniform density
                    (hypergeometric, uniform, fixed-structured: used through expected values) or
                    `real-data`, a file of 0/1 characters, one per element
    mapping         per level: temporal factors and a permutation (inner to outer), and which
                    data spaces the level keeps or bypasses

plus, optionally, Accelergy's ERT (energy per action) and ART (area) tables.

The subset: one processing element (spatial factors above 1 are refused), a two-operand MAC
(exactly one read-write data space, the outputs), formats only on the operands. Everything else
that the files may say is either read or refused with one line that names the field.

Every user mistake raises `InputError("<file>: <field path>: <problem>; <what to do>")`.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NoReturn, Optional

import numpy as np
import yaml

from nmx.errors import InputError
from nmx.io import expand_user, read_text

log = logging.getLogger(__name__)

FORMATS = ("UOP", "RLE", "CP", "B")  # Sparseloop's per-rank format primitives nmx understands
UNIFORM_DISTRIBUTIONS = ("hypergeometric", "uniform", "fixed-structured", "fixed")
REAL_DISTRIBUTIONS = ("real-data", "actual-data")
_STORAGE_CLASSES = ("storage", "sram", "regfile", "smartbuffer", "buffer", "dram")
_COMPUTE_CLASSES = ("compute", "mac", "intmac", "fpmac", "imac")
MAX_REAL_GRID = 50_000_000  # largest index grid built to count real-data intersections


def _fail(where: str, problem: str, fix: str) -> NoReturn:
    raise InputError(f"{where}: {problem}; {fix}")


def load_yaml(path: Path | str, what: str) -> Any:
    """Parse one YAML file; every way it can be unusable (missing, a folder, not UTF-8 text, a
    syntax error, nested too deeply, empty) is one line naming the file."""
    path = expand_user(path)
    text = read_text(path, f"{what} file")
    try:
        doc = yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506 (the safe loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "syntax error"
        raise InputError(f"{path.name}: not valid YAML{line} ({problem}); fix the YAML syntax") from None
    except RecursionError:  # the wording of nmx.io.parse_yaml (which this reader's syntax message predates)
        raise InputError(f"{path.name}: nested too deeply to be a configuration file") from None
    except (ValueError, TypeError, OverflowError) as err:  # e.g. a timestamp the resolver cannot build
        raise InputError(f"{path.name}: not a usable YAML value ({err})") from None
    if doc is None:
        fix = ("for none, write `sparse_optimizations: {targets: []}`" if what == "sparse options"
               else f"give a Timeloop v0.3 {what} file")
        raise InputError(f"{path.name}: the {what} file is empty; {fix}")
    return doc


#: the top-level key of each kind of file, and how the command line names it
FILE_KINDS = {"architecture": ("architecture", "ARCH"), "sparse_optimizations": ("sparse options", "SPARSE_OPTS"),
              "problem": ("workload", "WORKLOAD"), "mapping": ("mapping", "MAPPING"), "ERT": ("ERT", "--ert"),
              "ART": ("ART", "--art")}
ORDER = "ARCH SPARSE_OPTS WORKLOAD MAPPING"


def file_kind(doc: Any) -> Optional[str]:
    """Which kind of Timeloop file a parsed document is, by its top-level key (a bare list of
    entries with `target:` is a mapping); None when it is none of them."""
    if isinstance(doc, dict):
        hits = [k for k in FILE_KINDS if k in doc]
        return hits[0] if len(hits) == 1 else None
    if isinstance(doc, list) and doc and all(isinstance(e, dict) and "target" in e for e in doc):
        return "mapping"
    return None


def check_order(docs: Mapping[str, Any], files: Mapping[str, Path]) -> None:
    """Refuse a file given in another file's place (e.g. the mapping as ARCH), naming both."""
    slots = list(files)
    for i, key in enumerate(slots):
        doc = docs.get(key)
        kind = file_kind(doc)
        if doc is None or kind is None or kind == key:
            continue
        what, arg = FILE_KINDS[key]
        found = FILE_KINDS[kind][0]
        place = f"argument {i + 1} ({arg})" if not arg.startswith("--") else arg
        fix = f"the order is {ORDER}" + (", then --ert ERT.yaml --art ART.yaml" if kind in ("ERT", "ART")
                                         or arg.startswith("--") else "")
        raise InputError(f"{place} {files[key]} looks like {_a(found)} file (top-level `{kind}:`), not "
                         f"{_a(what)} file; {fix}")


def _a(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def _mapping(node: Any, where: str) -> dict:
    if not isinstance(node, dict):
        _fail(where, f"expected a mapping (key: value), got {type(node).__name__}", "see the Timeloop v0.3 format")
    return node


def _list(node: Any, where: str) -> list:
    if not isinstance(node, list):
        _fail(where, f"expected a list, got {type(node).__name__}", "see the Timeloop v0.3 format")
    return node


def _get(node: dict, key: str, where: str, *aliases: str) -> Any:
    for k in (key, *aliases):
        if k in node:
            return node[k]
    _fail(f"{where}.{key}", "missing", f"add `{key}:`")


def _first(node: dict, *keys: str) -> tuple[Optional[str], Any]:
    for k in keys:
        if k in node and node[k] is not None:
            return k, node[k]
    return None, None


def _positive_int(value: Any, where: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        _fail(where, f"must be an integer, got {value!r}", "give a whole number")
    value = int(value)
    if value < 0 or (value == 0 and not allow_zero):
        _fail(where, f"must be {'>= 0' if allow_zero else 'positive'}, got {value}", "give a size of at least 1")
    return value


def _positive_float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        _fail(where, f"must be a positive number, got {value!r}", "give a positive number")
    return float(value)


# ---------------------------------------------------------------------------------------------
# architecture


@dataclass(frozen=True)
class StorageLevel:
    """One storage level. Sizes in words of `word_bits`; a word holds `block_size` elements."""

    name: str
    path: str  # dotted position in the tree, e.g. "eyeriss_v2_PE.PE.iact_spad" (the ERT/ART key)
    cls: str
    depth_words: Optional[int]  # None: unbounded (DRAM, or no depth given)
    word_bits: int
    datawidth_bits: int
    block_size: int
    metadata_depth_words: Optional[int]
    metadata_word_bits: Optional[int]
    read_bandwidth: Optional[float] = None  # words per cycle; None: not a limit
    write_bandwidth: Optional[float] = None
    shared_bandwidth: Optional[float] = None
    instances: int = 1

    @property
    def capacity_elements(self) -> Optional[int]:
        return None if self.depth_words is None else self.depth_words * self.block_size


@dataclass(frozen=True)
class ComputeUnit:
    name: str
    path: str
    datawidth_bits: int
    instances: int = 1


@dataclass(frozen=True)
class Architecture:
    levels: tuple[StorageLevel, ...]  # outermost first
    compute: ComputeUnit

    def names(self) -> tuple[str, ...]:
        return tuple(lv.name for lv in self.levels)

    def index(self, name: str) -> int:
        return self.names().index(name)


_INSTANCES = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<lo>\d+)\.\.(?P<hi>\d+)\]$")


def _split_instances(name: str, where: str) -> tuple[str, int]:
    m = _INSTANCES.match(name)
    if not m:
        if "[" in name or "]" in name:
            _fail(f"{where}.name", f"cannot read the instance range in {name!r}", "write it as NAME[0..N-1]")
        return name, 1
    lo, hi = int(m["lo"]), int(m["hi"])
    if hi < lo:
        _fail(f"{where}.name", f"empty instance range in {name!r}", "write it as NAME[0..N-1] with N >= 1")
    return m["name"], hi - lo + 1


def parse_architecture(doc: Any, file: str = "arch.yaml") -> Architecture:
    """Walk the v0.3 tree (`subtree` / `local`) depth first: a node's locals sit outside its subtree."""
    root = _mapping(_get(_mapping(doc, file), "architecture", file), f"{file}: architecture")
    version = root.get("version")
    if version is not None and str(version) not in ("0.3", "0.4"):
        _fail(f"{file}: architecture.version", f"version {version!r} is not the v0.3 dialect", "use version: 0.3")
    components: list[tuple[dict, str, str, int, dict]] = []  # (node, where, path, instances, inherited attrs)

    def walk(node: Any, where: str, prefix: str, instances: int, inherited: dict) -> None:
        node = _mapping(node, where)
        name = node.get("name")
        attrs = dict(inherited)
        attrs.update(_mapping(node.get("attributes") or {}, f"{where}.attributes"))
        path = prefix
        if name is not None:
            base, n = _split_instances(str(name), where)
            path = f"{prefix}.{base}" if prefix else base
            instances *= n
        for i, comp in enumerate(_list(node.get("local") or [], f"{where}.local")):
            components.append((_mapping(comp, f"{where}.local[{i}]"), f"{where}.local[{i}]", path, instances, attrs))
        for i, sub in enumerate(_list(node.get("subtree") or [], f"{where}.subtree")):
            walk(sub, f"{where}.subtree[{i}]", path, instances, attrs)

    for i, sub in enumerate(_list(_get(root, "subtree", f"{file}: architecture"), f"{file}: architecture.subtree")):
        walk(sub, f"{file}: architecture.subtree[{i}]", "", 1, {})

    levels: list[StorageLevel] = []
    compute: Optional[ComputeUnit] = None
    for comp, where, prefix, instances, inherited in components:
        raw_name = comp.get("name")
        if not raw_name:
            _fail(f"{where}.name", "missing", "give every component a name")
        name, n = _split_instances(str(raw_name), where)
        where = f"{where} ({name})"
        if compute is not None:
            _fail(where, f"storage level after the compute unit {compute.name!r}",
                  "the compute unit must be the innermost component")
        cls = str(_get(comp, "class", where))
        attrs = dict(inherited)
        attrs.update(_mapping(comp.get("attributes") or {}, f"{where}.attributes"))
        path = f"{prefix}.{name}" if prefix else name
        kind = cls.lower()
        if kind in _COMPUTE_CLASSES:
            dw = attrs.get("datawidth", attrs.get("word-bits", 8))
            compute = ComputeUnit(name, path, _positive_int(dw, f"{where}.attributes.datawidth"), instances * n)
            continue
        if not any(kind.startswith(c) for c in _STORAGE_CLASSES):
            _fail(f"{where}.class", f"unknown class {cls!r}", "use storage, SRAM, regfile, DRAM or compute")
        if any(lv.name == name for lv in levels):
            _fail(f"{where}.name", f"two levels are named {name!r}", "give every level its own name")
        aw = f"{where}.attributes"
        dk, depth = _first(attrs, "data_storage_depth", "depth", "memory_depth")
        wk, width = _first(attrs, "data_storage_width", "width", "memory_width")
        dwk, datawidth = _first(attrs, "datawidth", "word-bits", "word_bits")
        depth_words = None if depth is None or kind == "dram" else _positive_int(depth, f"{aw}.{dk}")
        word_bits = _positive_int(width, f"{aw}.{wk}") if width is not None else None
        datawidth_bits = _positive_int(datawidth, f"{aw}.{dwk}") if datawidth is not None else (word_bits or 8)
        word_bits = word_bits or datawidth_bits
        bk, block = _first(attrs, "block_size", "block-size")
        block_size = _positive_int(block, f"{aw}.{bk}") if block is not None else max(1, word_bits // datawidth_bits)
        mdk, md_depth = _first(attrs, "metadata_storage_depth")
        mwk, md_width = _first(attrs, "metadata_storage_width")
        bw = {}
        for key in ("read_bandwidth", "write_bandwidth", "shared_bandwidth"):
            k, v = _first(attrs, key, key.replace("_", "-"))
            bw[key] = None if v is None else _positive_float(v, f"{aw}.{k}")
        levels.append(StorageLevel(
            name=name, path=path, cls=cls, depth_words=depth_words, word_bits=word_bits,
            datawidth_bits=datawidth_bits, block_size=block_size,
            metadata_depth_words=None if md_depth is None else _positive_int(md_depth, f"{aw}.{mdk}"),
            metadata_word_bits=None if md_width is None else _positive_int(md_width, f"{aw}.{mwk}"),
            instances=instances * n, **bw))
    if not levels:
        _fail(f"{file}: architecture", "no storage level", "add at least one storage level (e.g. a DRAM)")
    if compute is None:
        _fail(f"{file}: architecture", "no compute unit", "add a component of class compute as the innermost one")
    return Architecture(tuple(levels), compute)


# ---------------------------------------------------------------------------------------------
# workload


@dataclass(frozen=True)
class DataSpace:
    """A tensor: each rank is a sum of (dimension, coefficient) terms, e.g. W = R*Wdilation + E*Wstride."""

    name: str
    ranks: tuple[tuple[tuple[str, int], ...], ...]
    read_write: bool = False

    @property
    def dims(self) -> frozenset[str]:
        return frozenset(d for rank in self.ranks for d, _ in rank)

    def rank_extent(self, rank: tuple[tuple[str, int], ...], bounds: Mapping[str, int]) -> int:
        return sum(c * (bounds[d] - 1) for d, c in rank) + 1

    def size(self, bounds: Mapping[str, int]) -> int:
        return math.prod(self.rank_extent(r, bounds) for r in self.ranks)


@dataclass(frozen=True, eq=False)
class Density:
    """`uniform`: only the expected fraction of nonzeros is used. `real`: a flat 0/1 mask with the
    FIRST rank of the data space's projection varying fastest (see `_read_mask`)."""

    kind: str  # "uniform" or "real"
    density: float
    mask: Optional[np.ndarray] = None
    source: str = ""
    note: str = ""


@dataclass(frozen=True)
class Workload:
    name: str
    dims: tuple[str, ...]
    sizes: Mapping[str, int]
    data_spaces: tuple[DataSpace, ...]
    densities: Mapping[str, Density]

    @property
    def outputs(self) -> DataSpace:
        return next(ds for ds in self.data_spaces if ds.read_write)

    @property
    def operands(self) -> tuple[DataSpace, ...]:
        return tuple(ds for ds in self.data_spaces if not ds.read_write)

    @property
    def macs(self) -> int:
        return math.prod(self.sizes.values())

    def data_space(self, name: str) -> DataSpace:
        return next(ds for ds in self.data_spaces if ds.name == name)


def _read_mask(path: Path, size: int, where: str) -> np.ndarray:
    """Sparseloop's real-data file: one '0' or '1' per element (whitespace ignored). nmx reads it with
    the first rank of the projection varying fastest (Inputs [N, C, G, W, H]: channel fastest;
    Weights [C, M, G, R, S]: input channel fastest), as Timeloop writes permutations inner to outer.
    This order is our inference, not read from Sparseloop's source; a check on the Eyeriss v2 case:
    with it, the nonzero (input, weight) pairs equal the measured cycles of the four given layers,
    with the three transposed orders they are 1-7 % off."""
    if not path.is_file():
        _fail(where, f"data file not found: {path}", "give data_file_path relative to the workload YAML")
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    raw = raw[~np.isin(raw, np.frombuffer(b" \t\r\n", dtype=np.uint8))]
    if raw.size and not np.isin(raw, np.frombuffer(b"01", dtype=np.uint8)).all():
        _fail(where, f"{path.name} holds characters other than 0 and 1", "write one 0/1 character per element")
    if raw.size != size:
        _fail(where, f"{path.name} has {raw.size} elements but the data space has {size}",
              "check the file against the problem instance")
    return raw == ord("1")


def _find_data_file(rel: Path, base_dir: Path) -> Path:
    """`data_file_path` is relative to the workload file. If it is not there but exactly one file of
    that name lies under the workload's folder (a case folder whose mask folder was renamed), use
    that one and say so in the log."""
    path = rel if rel.is_absolute() else base_dir / rel
    if path.is_file() or rel.is_absolute() or not base_dir.is_dir():
        return path
    hits = sorted(p for p in base_dir.rglob(rel.name) if p.is_file())
    if len(hits) == 1:
        log.info("data file %s not found; using %s (the only file of that name under %s)", path, hits[0], base_dir)
        return hits[0]
    return path


def parse_workload(doc: Any, file: str = "workload.yaml", base_dir: Optional[Path] = None) -> Workload:
    prob = _mapping(_get(_mapping(doc, file), "problem", file), f"{file}: problem")
    where = f"{file}: problem"
    shape = _get(prob, "shape", where)
    if isinstance(shape, str):
        _fail(f"{where}.shape", f"a named shape ({shape!r}) is not supported", "write the shape inline")
    shape = _mapping(shape, f"{where}.shape")
    dims_raw = _list(_get(shape, "dimensions", f"{where}.shape"), f"{where}.shape.dimensions")
    dims = tuple(str(d) for d in dims_raw)
    if len(set(dims)) != len(dims) or not dims:
        _fail(f"{where}.shape.dimensions", "empty or repeated dimension names", "list each dimension once")
    instance = _mapping(_get(prob, "instance", where), f"{where}.instance")
    coefs: dict[str, int] = {}
    for i, c in enumerate(_list(shape.get("coefficients") or [], f"{where}.shape.coefficients")):
        c = _mapping(c, f"{where}.shape.coefficients[{i}]")
        cname = str(_get(c, "name", f"{where}.shape.coefficients[{i}]"))
        value = instance.get(cname, c.get("default", 1))
        coefs[cname] = _positive_int(value, f"{where}.instance.{cname}")
    sizes: dict[str, int] = {}
    for d in dims:
        if d not in instance:
            _fail(f"{where}.instance.{d}", "missing", f"give the size of dimension {d}")
        sizes[d] = _positive_int(instance[d], f"{where}.instance.{d}")
    spaces: list[DataSpace] = []
    for i, ds in enumerate(_list(_get(shape, "data-spaces", f"{where}.shape", "data_spaces"),
                                 f"{where}.shape.data-spaces")):
        w = f"{where}.shape.data-spaces[{i}]"
        ds = _mapping(ds, w)
        name = str(_get(ds, "name", w))
        ranks = []
        for j, rank in enumerate(_list(_get(ds, "projection", w), f"{w}.projection")):
            terms = []
            for k, term in enumerate(_list(rank, f"{w}.projection[{j}]")):
                term = [term] if isinstance(term, str) else _list(term, f"{w}.projection[{j}][{k}]")
                if not term or term[0] not in dims:
                    _fail(f"{w} ({name}).projection[{j}][{k}]", f"{term!r} does not start with a dimension",
                          f"use one of {', '.join(dims)}")
                coef = 1
                if len(term) > 1:
                    c = term[1]
                    if isinstance(c, str):
                        if c not in coefs:
                            _fail(f"{w} ({name}).projection[{j}][{k}]", f"unknown coefficient {c!r}",
                                  "declare it under shape.coefficients")
                        coef = coefs[c]
                    else:
                        coef = _positive_int(c, f"{w} ({name}).projection[{j}][{k}]")
                terms.append((str(term[0]), coef))
            ranks.append(tuple(terms))
        spaces.append(DataSpace(name, tuple(ranks), bool(ds.get("read-write", ds.get("read_write", False)))))
    names = [s.name for s in spaces]
    if len(set(names)) != len(names):
        _fail(f"{where}.shape.data-spaces", "two data spaces share a name", "name each data space once")
    if sum(s.read_write for s in spaces) != 1 or len(spaces) != 3:
        _fail(f"{where}.shape.data-spaces", "nmx evaluates a two-operand MAC: it needs two operands and one "
              "data space with read-write: true", "describe the problem as two inputs and one output")
    densities: dict[str, Density] = {}
    dens_node = _mapping(instance.get("densities") or {}, f"{where}.instance.densities")
    for ds_name, spec in dens_node.items():
        w = f"{where}.instance.densities.{ds_name}"
        if ds_name not in names:
            _fail(w, f"no data space named {ds_name!r}", f"use one of {', '.join(names)}")
        ds = next(s for s in spaces if s.name == ds_name)
        if ds.read_write:
            _fail(w, "the output data space is computed, its density is not an input", "remove this entry")
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            spec = {"distribution": "uniform", "density": spec}
        spec = _mapping(spec, w)
        dist = str(spec.get("distribution", "uniform"))
        if dist in UNIFORM_DISTRIBUTIONS:
            dv = _get(spec, "density", w)
            if isinstance(dv, bool) or not isinstance(dv, (int, float)) or not 0 <= dv <= 1:
                _fail(f"{w}.density", f"must be a fraction of nonzeros in [0, 1], got {dv!r}", "give e.g. 0.5")
            densities[ds_name] = Density("uniform", float(dv), None, dist)
        elif dist in REAL_DISTRIBUTIONS:
            rel = _get(spec, "data_file_path", w, "data-file-path")
            base = base_dir or Path(".")
            path = _find_data_file(Path(str(rel)), base)
            mask = _read_mask(path, ds.size(sizes), f"{w}.data_file_path")
            note = "" if path == (Path(str(rel)) if Path(str(rel)).is_absolute() else base / str(rel)) else \
                f"{ds_name}: data_file_path {rel} not found beside the workload; used {path}"
            densities[ds_name] = Density("real", float(mask.mean()) if mask.size else 0.0, mask, str(path), note)
        else:
            _fail(f"{w}.distribution", f"unknown distribution {dist!r}",
                  f"use one of {', '.join(UNIFORM_DISTRIBUTIONS + REAL_DISTRIBUTIONS)}")
    for s in spaces:
        if not s.read_write and s.name not in densities:
            densities[s.name] = Density("uniform", 1.0, None, "dense (no density given)")
    return Workload(str(shape.get("name", "problem")), dims, sizes, tuple(spaces), densities)


# ---------------------------------------------------------------------------------------------
# sparse optimizations


@dataclass(frozen=True)
class Rank:
    format: str  # one of FORMATS
    metadata_bits: int
    payload_bits: int
    dims: tuple[str, ...]  # flattened-rankIDs; empty: a rank of one coordinate


@dataclass(frozen=True)
class ActionOpt:
    kind: str  # "skipping" or "gating"
    target: str
    condition_on: tuple[str, ...]


@dataclass(frozen=True)
class LevelSparsity:
    formats: Mapping[str, tuple[Rank, ...]] = field(default_factory=dict)  # outermost rank first
    actions: tuple[ActionOpt, ...] = ()


@dataclass(frozen=True)
class SparseOptions:
    levels: Mapping[str, LevelSparsity] = field(default_factory=dict)
    compute: Optional[str] = None  # "skipping", "gating" or None
    compute_target: Optional[str] = None
    where: Mapping[str, str] = field(default_factory=dict)  # level name -> field path, for later errors

    def at(self, level: str) -> LevelSparsity:
        return self.levels.get(level, LevelSparsity())


def parse_sparse_options(doc: Any, file: str = "sparse_opts.yaml") -> SparseOptions:
    if doc is None:
        return SparseOptions()
    root = _mapping(_get(_mapping(doc, file), "sparse_optimizations", file), f"{file}: sparse_optimizations")
    levels: dict[str, LevelSparsity] = {}
    wheres: dict[str, str] = {}
    compute: Optional[str] = None
    compute_target: Optional[str] = None
    for i, t in enumerate(_list(root.get("targets") or [], f"{file}: sparse_optimizations.targets")):
        w = f"{file}: sparse_optimizations.targets[{i}]"
        t = _mapping(t, w)
        name = str(_get(t, "name", w))
        w = f"{w} ({name})"
        formats: dict[str, tuple[Rank, ...]] = {}
        rf = t.get("representation-format", t.get("representation_format"))
        if rf is not None:
            rf = _mapping(rf, f"{w}.representation-format")
            for j, ds in enumerate(_list(_get(rf, "data-spaces", f"{w}.representation-format", "data_spaces"),
                                         f"{w}.representation-format.data-spaces")):
                dw = f"{w}.representation-format.data-spaces[{j}]"
                ds = _mapping(ds, dw)
                ds_name = str(_get(ds, "name", dw))
                dw = f"{dw} ({ds_name})"
                order = str(ds.get("rank-application-order", "inner-to-outer"))
                if order != "inner-to-outer":
                    _fail(f"{dw}.rank-application-order", f"{order!r} is not supported", "use inner-to-outer")
                ranks = []
                for k, r in enumerate(_list(_get(ds, "ranks", dw), f"{dw}.ranks")):
                    rw = f"{dw}.ranks[{k}]"
                    r = _mapping(r, rw)
                    fmt = str(_get(r, "format", rw))
                    if fmt.upper() not in FORMATS:
                        _fail(f"{rw}.format", f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
                    md = _positive_int(r.get("metadata-word-bits", r.get("metadata_word_bits",
                                                                           1 if fmt.upper() == "B" else 0)),
                                       f"{rw}.metadata-word-bits", allow_zero=True)
                    pl = _positive_int(r.get("payload-word-bits", r.get("payload_word_bits", 0)),
                                       f"{rw}.payload-word-bits", allow_zero=True)
                    ids = r.get("flattened-rankIDs", r.get("flattened_rankIDs"))
                    dims: tuple[str, ...] = ()
                    if ids:
                        ids = _list(ids, f"{rw}.flattened-rankIDs")
                        first = ids[0] if isinstance(ids[0], list) else ids
                        dims = tuple(str(x) for x in first)
                    ranks.append(Rank(fmt.upper(), md, pl, dims))
                formats[ds_name] = tuple(ranks)
        actions = []
        ao = t.get("action-optimization", t.get("action_optimization"))
        for j, a in enumerate(_list(ao or [], f"{w}.action-optimization")):
            aw = f"{w}.action-optimization[{j}]"
            a = _mapping(a, aw)
            kind = str(_get(a, "type", aw))
            if kind not in ("skipping", "gating"):
                _fail(f"{aw}.type", f"unknown optimization {kind!r}", "use skipping or gating")
            for k, opt in enumerate(_list(_get(a, "options", aw), f"{aw}.options")):
                ow = f"{aw}.options[{k}]"
                opt = _mapping(opt, ow)
                cond = opt.get("condition-on", opt.get("condition_on"))
                cond = _list(cond, f"{ow}.condition-on") if cond is not None else []
                actions.append(ActionOpt(kind, str(_get(opt, "target", ow)), tuple(str(c) for c in cond)))
        co = t.get("compute-optimization", t.get("compute_optimization"))
        if co is not None:
            for j, c in enumerate(_list(co, f"{w}.compute-optimization")):
                kind = str(_get(_mapping(c, f"{w}.compute-optimization[{j}]"), "type",
                                f"{w}.compute-optimization[{j}]"))
                if kind not in ("skipping", "gating"):
                    _fail(f"{w}.compute-optimization[{j}].type", f"unknown optimization {kind!r}",
                          "use skipping or gating")
                compute, compute_target = kind, name
        if name in levels:
            _fail(w, f"a second entry for {name!r}", "merge the entries for one level")
        levels[name] = LevelSparsity(formats, tuple(actions))
        wheres[name] = w
    return SparseOptions(levels, compute, compute_target, wheres)


# ---------------------------------------------------------------------------------------------
# mapping


@dataclass(frozen=True)
class LevelMapping:
    """One storage level's part of the mapping, factors resolved (0 → remainder)."""

    target: str
    factors: Mapping[str, int]
    permutation: tuple[str, ...]  # inner to outer, every dimension once
    keep: frozenset[str]


@dataclass(frozen=True)
class RawMapping:
    """The mapping as written (factors may hold 0 = "the remainder of this dimension")."""

    temporal: Mapping[str, tuple[dict[str, int], Optional[str], str]]  # level -> (factors, permutation, where)
    spatial: Mapping[str, tuple[dict[str, int], str]]
    keep: Mapping[str, tuple[frozenset[str], frozenset[str], str]]  # level -> (keep, bypass, where)


def _parse_factors(raw: Any, where: str) -> dict[str, int]:
    out: dict[str, int] = {}
    if isinstance(raw, str):
        for tok in raw.split():
            if "=" not in tok:
                _fail(where, f"cannot read factor {tok!r}", "write factors as DIM=N separated by spaces")
            k, v = tok.split("=", 1)
            try:
                n = int(v)
            except ValueError:
                _fail(f"{where}.{k}", f"factor {v!r} is not an integer", "write DIM=N with N >= 0 (0: remainder)")
            out[k] = n
    elif isinstance(raw, dict):
        out = {str(k): v for k, v in raw.items()}
    else:
        _fail(where, f"expected a string like 'M=8 C=0', got {type(raw).__name__}", "write DIM=N pairs")
    for k, v in out.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            _fail(f"{where}.{k}", f"factor must be an integer >= 0, got {v!r}", "0 means the remainder")
    return out


def parse_mapping(doc: Any, file: str = "mapping.yaml") -> RawMapping:
    node = doc.get("mapping") if isinstance(doc, dict) else doc
    temporal: dict[str, tuple[dict[str, int], Optional[str], str]] = {}
    spatial: dict[str, tuple[dict[str, int], str]] = {}
    keep: dict[str, tuple[frozenset[str], frozenset[str], str]] = {}
    for i, e in enumerate(_list(node, f"{file}: mapping")):
        w = f"{file}: mapping[{i}]"
        e = _mapping(e, w)
        target = str(_get(e, "target", w))
        w = f"{w} ({target})"
        kind = str(_get(e, "type", w))
        if kind in ("temporal", "spatial"):
            factors = _parse_factors(e.get("factors", ""), f"{w}.factors")
            perm = e.get("permutation")
            if kind == "temporal":
                if target in temporal:
                    _fail(w, f"a second temporal entry for {target!r}", "give one temporal entry per level")
                temporal[target] = (factors, None if perm is None else str(perm), w)
            else:
                spatial[target] = (factors, w)
        elif kind in ("bypass", "datatype"):
            k = frozenset(str(x) for x in _list(e.get("keep") or [], f"{w}.keep"))
            b = frozenset(str(x) for x in _list(e.get("bypass") or [], f"{w}.bypass"))
            if k & b:
                _fail(w, f"{sorted(k & b)} both kept and bypassed", "name each data space in one list")
            keep[target] = (k, b, w)
        else:
            _fail(f"{w}.type", f"unknown mapping entry type {kind!r}", "use temporal, spatial or bypass")
    return RawMapping(temporal, spatial, keep)


def _permutation(perm: Optional[str], dims: tuple[str, ...], where: str) -> tuple[str, ...]:
    if perm is None:
        return dims
    tokens = perm.split() if " " in perm.strip() else list(perm.strip())
    for t in tokens:
        if t not in dims:
            _fail(f"{where}.permutation", f"unknown dimension {t!r} in {perm!r}", f"use {''.join(dims)}")
    if len(set(tokens)) != len(tokens):
        _fail(f"{where}.permutation", f"a dimension repeats in {perm!r}", "name each dimension once")
    # dimensions left out of the permutation are placed innermost (their order then does not matter
    # unless their factor is above 1)
    return tuple(d for d in dims if d not in tokens) + tuple(tokens)


def resolve_mapping(raw: RawMapping, arch: Architecture, workload: Workload,
                    file: str = "mapping.yaml") -> tuple[LevelMapping, ...]:
    """Check the mapping against the architecture and the problem; resolve each 0 factor to the
    remainder of its dimension (Timeloop's convention), missing factors to 1."""
    names = arch.names()
    for target, (_, _, w) in raw.temporal.items():
        if target not in names:
            _fail(f"{w}.target", f"no storage level named {target!r} in the architecture",
                  f"use one of {', '.join(names)}")
    for target, (_, w) in raw.spatial.items():
        if target not in names:
            _fail(f"{w}.target", f"no storage level named {target!r} in the architecture",
                  f"use one of {', '.join(names)}")
    for target, (_, _, w) in raw.keep.items():
        if target not in names:
            _fail(f"{w}.target", f"no storage level named {target!r} in the architecture",
                  f"use one of {', '.join(names)}")
    ds_names = {ds.name for ds in workload.data_spaces}
    for k, b, w in raw.keep.values():
        for x in k | b:
            if x not in ds_names:
                _fail(w, f"unknown data space {x!r}", f"use {', '.join(sorted(ds_names))}")
    # factors per level and dimension, 0 resolved
    table: dict[str, dict[str, int]] = {}
    for lv in names:
        factors, _, w = raw.temporal.get(lv, ({}, None, f"{file}: mapping ({lv})"))
        for d in factors:
            if d not in workload.dims:
                _fail(f"{w}.factors.{d}", f"unknown dimension {d!r}", f"use one of {', '.join(workload.dims)}")
        table[lv] = {d: factors.get(d, 1) for d in workload.dims}
    for factors, w in raw.spatial.values():
        for d, f in factors.items():
            if d not in workload.dims:
                _fail(f"{w}.factors.{d}", f"unknown dimension {d!r}", f"use one of {', '.join(workload.dims)}")
            if f > 1:
                _fail(f"{w}.factors.{d}", f"spatial factor {f}: this reader models one processing element",
                      "map spatial loops outside nmx, or give spatial factors of 1")
    for d in workload.dims:
        size = workload.sizes[d]
        zeros = [lv for lv in names if table[lv][d] == 0]
        known = math.prod(table[lv][d] for lv in names if table[lv][d] != 0)
        if len(zeros) > 1:
            w = raw.temporal[zeros[1]][2]
            _fail(f"{w}.factors.{d}", f"factor 0 (remainder) at {len(zeros)} levels",
                  "give the remainder (0) at one level only")
        if zeros:
            if size % known:
                w = raw.temporal[zeros[0]][2]
                _fail(f"{w}.factors.{d}", f"remainder of {d}={size} after the other factors ({known}) is not whole",
                      f"make the other factors of {d} divide {size}")
            table[zeros[0]][d] = size // known
        elif known != size:
            _fail(f"{file}: mapping.factors.{d}",
                  f"factors of {d} multiply to {known} but the problem has {d}={size}",
                  f"make the product over all levels equal {size} (or put {d}=0 at one level for the remainder)")
    out = []
    for i, lv in enumerate(names):
        _, perm, w = raw.temporal.get(lv, ({}, None, f"{file}: mapping ({lv})"))
        k, b, kw = raw.keep.get(lv, (frozenset(), frozenset(), ""))
        kept = frozenset(ds_names - b)  # Timeloop's default is to keep; `keep:` only confirms
        if i == 0 and kept != ds_names:
            _fail(kw or w, f"the outermost level {lv!r} must keep every data space",
                  "remove the bypass from the outermost level")
        out.append(LevelMapping(lv, table[lv], _permutation(perm, workload.dims, w), kept))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# energy and area tables (Accelergy ERT / ART, v0.3)


@dataclass(frozen=True)
class EnergyTable:
    """component path -> action name -> energies (pJ) of its argument variants."""

    actions: Mapping[str, Mapping[str, tuple[float, ...]]]

    def component(self, path: str, name: str) -> Optional[Mapping[str, tuple[float, ...]]]:
        if path in self.actions:
            return self.actions[path]
        hits = [k for k in self.actions if k.split(".")[-1] == name]
        return self.actions[hits[0]] if len(hits) == 1 else None


def parse_ert(doc: Any, file: str = "ERT.yaml") -> EnergyTable:
    root = _mapping(_get(_mapping(doc, file), "ERT", file), f"{file}: ERT")
    out: dict[str, dict[str, tuple[float, ...]]] = {}
    for i, t in enumerate(_list(_get(root, "tables", f"{file}: ERT"), f"{file}: ERT.tables")):
        w = f"{file}: ERT.tables[{i}]"
        t = _mapping(t, w)
        name = re.sub(r"\[\d+\.\.\d+\]", "", str(_get(t, "name", w)))
        acts: dict[str, list[float]] = {}
        for j, a in enumerate(_list(_get(t, "actions", w), f"{w}.actions")):
            a = _mapping(a, f"{w}.actions[{j}]")
            e = _get(a, "energy", f"{w}.actions[{j}]")
            if isinstance(e, bool) or not isinstance(e, (int, float)) or e < 0:
                _fail(f"{w}.actions[{j}].energy", f"must be a number >= 0 (pJ), got {e!r}", "fix the table")
            acts.setdefault(str(_get(a, "name", f"{w}.actions[{j}]")), []).append(float(e))
        out[name] = {k: tuple(v) for k, v in acts.items()}
    return EnergyTable(out)


def parse_art(doc: Any, file: str = "ART.yaml") -> dict[str, float]:
    root = _mapping(_get(_mapping(doc, file), "ART", file), f"{file}: ART")
    out: dict[str, float] = {}
    for i, t in enumerate(_list(_get(root, "tables", f"{file}: ART"), f"{file}: ART.tables")):
        t = _mapping(t, f"{file}: ART.tables[{i}]")
        a = _get(t, "area", f"{file}: ART.tables[{i}]")
        if isinstance(a, bool) or not isinstance(a, (int, float)) or a < 0:
            _fail(f"{file}: ART.tables[{i}].area", f"must be a number >= 0 (um^2), got {a!r}", "fix the table")
        out[re.sub(r"\[\d+\.\.\d+\]", "", str(_get(t, "name", f"{file}: ART.tables[{i}]")))] = float(a)
    return out


# ---------------------------------------------------------------------------------------------
# the whole case


@dataclass(frozen=True)
class Case:
    arch: Architecture
    sparse: SparseOptions
    workload: Workload
    mapping: tuple[LevelMapping, ...]  # one per storage level, outermost first
    ert: Optional[EnergyTable] = None
    art: Optional[Mapping[str, float]] = None
    sources: Mapping[str, str] = field(default_factory=dict)


def _check_sparse(sparse: SparseOptions, arch: Architecture, workload: Workload, file: str) -> None:
    names = arch.names() + (arch.compute.name,)
    ds_names = [ds.name for ds in workload.data_spaces]
    if sparse.compute_target is not None and sparse.compute_target != arch.compute.name:
        w = sparse.where.get(sparse.compute_target, file)
        _fail(f"{w}.compute-optimization", f"{sparse.compute_target!r} is not the compute unit",
              f"put compute-optimization under the target {arch.compute.name!r}")
    for lv, ls in sparse.levels.items():
        w = sparse.where.get(lv, f"{file}: {lv}")
        if lv not in names:
            _fail(f"{w}.name", f"no level named {lv!r} in the architecture", f"use one of {', '.join(names)}")
        for ds_name, ranks in ls.formats.items():
            if ds_name not in ds_names:
                _fail(f"{w}.representation-format", f"unknown data space {ds_name!r}", f"use {', '.join(ds_names)}")
            if workload.data_space(ds_name).read_write:
                _fail(f"{w}.representation-format ({ds_name})", "formats for the output data space are not "
                      "supported by this reader", "keep outputs uncompressed")
            for r in ranks:
                for d in r.dims:
                    if d not in workload.dims:
                        _fail(f"{w}.representation-format ({ds_name}).flattened-rankIDs",
                              f"unknown dimension {d!r}", f"use one of {', '.join(workload.dims)}")
        for a in ls.actions:
            for x in (a.target, *a.condition_on):
                if x not in ds_names:
                    _fail(f"{w}.action-optimization", f"unknown data space {x!r}", f"use {', '.join(ds_names)}")
            for x in a.condition_on:
                if workload.data_space(x).read_write:
                    _fail(f"{w}.action-optimization", f"condition on the output {x!r} is not supported",
                          "condition on the operands")


def build_case(arch_doc: Any, sparse_doc: Any, workload_doc: Any, mapping_doc: Any,
               ert_doc: Any = None, art_doc: Any = None, base_dir: Optional[Path] = None,
               names: Optional[Mapping[str, str]] = None) -> Case:
    """Parse and cross-check already-loaded YAML documents (`names`: file names used in errors)."""
    n = {"arch": "arch.yaml", "sparse": "sparse_opts.yaml", "workload": "workload.yaml",
         "mapping": "mapping.yaml", "ert": "ERT.yaml", "art": "ART.yaml", **(names or {})}
    arch = parse_architecture(arch_doc, n["arch"])
    workload = parse_workload(workload_doc, n["workload"], base_dir)
    sparse = parse_sparse_options(sparse_doc, n["sparse"])
    _check_sparse(sparse, arch, workload, n["sparse"])
    mapping = resolve_mapping(parse_mapping(mapping_doc, n["mapping"]), arch, workload, n["mapping"])
    ert = parse_ert(ert_doc, n["ert"]) if ert_doc is not None else None
    art = parse_art(art_doc, n["art"]) if art_doc is not None else None
    return Case(arch, sparse, workload, mapping, ert, art, dict(n))


def load_case(arch: Path | str, sparse_opts: Path | str, workload: Path | str, mapping: Path | str,
              ert: Optional[Path | str] = None, art: Optional[Path | str] = None,
              find_tables: bool = True) -> Case:
    """Read the four files (and the ERT / ART: given, else ERT.yaml / ART.yaml beside ARCH when
    `find_tables`). Data files named in the workload are found relative to the workload file."""
    arch, sparse_opts, workload, mapping = (expand_user(p) for p in (arch, sparse_opts, workload, mapping))
    if ert is None and find_tables and (arch.parent / "ERT.yaml").is_file():
        ert = arch.parent / "ERT.yaml"
    if art is None and find_tables and (arch.parent / "ART.yaml").is_file():
        art = arch.parent / "ART.yaml"
    files = {"architecture": arch, "sparse_optimizations": sparse_opts, "problem": workload, "mapping": mapping}
    if ert is not None:
        files["ERT"] = expand_user(ert)
    if art is not None:
        files["ART"] = expand_user(art)
    docs = {key: load_yaml(path, FILE_KINDS[key][0]) for key, path in files.items()}
    check_order(docs, files)
    names = {"arch": arch.name, "sparse": sparse_opts.name, "workload": workload.name, "mapping": mapping.name,
             "ert": Path(ert).name if ert else "ERT.yaml", "art": Path(art).name if art else "ART.yaml"}
    return build_case(docs["architecture"], docs["sparse_optimizations"], docs["problem"], docs["mapping"],
                      docs.get("ERT"), docs.get("ART"), base_dir=workload.parent, names=names)
