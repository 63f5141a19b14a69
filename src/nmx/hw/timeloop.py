"""Evaluating a Timeloop/Sparseloop v0.3 case: access counts, skipped work, cycles and energy.

What the model does (and does not), in the order it works:

1. Dense ("algorithmic") traffic, Timeloop style. The loop nest is the mapping's temporal loops,
   outermost level first, each level's permutation read inner to outer. A level's tile of a data
   space is what the loops at that level and below touch. A tile is fetched again each time a loop
   *outside* the level that indexes the data space advances; outer loops that do not index it and
   sit inside every indexing loop give reuse (the tile stays). A child's fills are its parent's
   reads; the innermost keeper of an operand is read once per MAC. Partial sums: the innermost
   output keeper is updated once per MAC and read for every update but the first of each output;
   a level's partial-sum tiles drain to the parent (its updates) and refill from it (its reads),
   the first residency of each output starting from zero (no read). NOT modelled: halo reuse
   between sliding-window tiles (a refetched Inputs tile is counted whole; exact for 1x1 layers),
   spatial fan-out (refused at parse time), multicast, network energy.

2. Sparsity. An operand stored with a compressing rank (RLE, CP, B) at a level is stored and
   moved there as nonzeros only: fills and reads scale with its density. Skipping (or gating) of a
   data space conditioned on others, at the level that feeds the MAC, removes the accesses whose
   condition operands are zero at that MAC; the MAC itself does only the effectual work (both
   operands nonzero) when compute skipping is on. MACs that are "enumerated" - every operand
   stored compressed next to the MAC is nonzero - but ineffectual are counted as skipped (or gated:
   gating spends the cycle, skipping does not). Counts of positions where a set of operands is
   nonzero come from the real masks (`real-data`: exact, by summing over the shared dimensions)
   or from independent uniform densities (`hypergeometric` etc.: the expected value, the product
   of the densities). Metadata: the tile's format bits (UOP: offsets per fiber; RLE/CP: one entry
   per nonzero coordinate; B: one bit per coordinate) are charged to every moved nonzero in
   proportion, in words of the level's metadata width. Capacity: the largest tile of each kept data
   space (nonzeros only if compressed: the true maximum over the real masks, the expected count for
   uniform densities) must fit the level's depth, or the mapping is refused.

3. Cycles = max(compute cycles, each level's traffic / bandwidth); compute cycles = (performed +
   gated MACs) / MAC instances. A level without a bandwidth attribute is not a limit (Timeloop's
   default). For the Eyeriss v2 PE nothing but the MAC is limited, so cycles = effectual MACs: the
   PE walks compressed (CSC) input activations and, for each nonzero one, the compressed column of
   weights, doing one nonzero-by-nonzero MAC per cycle (Chen et al., "Eyeriss v2", IEEE JETCAS
   2019, sec. IV; Sparseloop, Wu et al., MICRO 2022, sec. VII validates the same PE this way).
   No constant is fitted to any layer.

4. Energy = sum of action counts x the ERT's energy per action: data read/write, metadata
   read/write, and the gated/idle action for skipped accesses; MAC: `mac_random` per performed
   MAC, `mac_skipped` / `mac_gated` per skipped / gated one. Where an action has several argument
   variants (address/data deltas) the most expensive is charged for an access and the cheapest for
   a skipped one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from nmx.errors import InputError
from nmx.hw.timeloop_spec import (
    MAX_REAL_GRID,
    Case,
    DataSpace,
    Rank,
    StorageLevel,
    Workload,
    load_case,
)

COMPRESSING = ("RLE", "CP", "B")


@dataclass(frozen=True)
class Loop:
    dim: str
    bound: int
    level: int  # index into the architecture's storage levels (0 = outermost)


def loop_nest(case: Case) -> tuple[Loop, ...]:
    """The temporal loops, outermost first (loops of bound 1 are left out: they change nothing)."""
    loops = []
    for i, lm in enumerate(case.mapping):
        for d in reversed(lm.permutation):  # permutation is inner to outer
            if lm.factors[d] > 1:
                loops.append(Loop(d, lm.factors[d], i))
    return tuple(loops)


def bounds_from(nest: tuple[Loop, ...], level: int, dims: tuple[str, ...]) -> dict[str, int]:
    """Per dimension, the extent covered by the loops at `level` and inside it."""
    out = {d: 1 for d in dims}
    for lp in nest:
        if lp.level >= level:
            out[lp.dim] *= lp.bound
    return out


def refetches(ds: DataSpace, nest: tuple[Loop, ...], level: int) -> int:
    """How many times the tile at `level` is (re)filled: the product of the outer loops from the
    innermost one that indexes `ds` outward (outer loops inside it that do not index `ds` reuse it)."""
    outer = [lp for lp in nest if lp.level < level]
    k = len(outer)
    while k and outer[k - 1].dim not in ds.dims:
        k -= 1
    return math.prod(lp.bound for lp in outer[:k])


class NonzeroCounter:
    """N(S): the number of MAC iterations at which every operand in S is nonzero."""

    def __init__(self, workload: Workload) -> None:
        self.w = workload
        self._cache: dict[frozenset[str], float] = {}

    def density(self, name: str) -> float:
        return self.w.densities[name].density

    def __call__(self, names) -> float:
        names = frozenset(names)
        if names not in self._cache:
            real = frozenset(n for n in names if self.w.densities[n].kind == "real")
            uniform = math.prod(self.density(n) for n in names - real)  # independent of everything else
            self._cache[names] = self._real(real) * uniform
        return self._cache[names]

    def _on_grid(self, ds: DataSpace, dims: list[str]) -> np.ndarray:
        """The mask of `ds` laid over the grid of its dimensions (in `dims` order)."""
        sizes = self.w.sizes
        shape = tuple(sizes[d] for d in dims)
        if math.prod(shape) > MAX_REAL_GRID:
            raise InputError(f"real-data density of {ds.name}: the problem is too large to count exactly "
                             f"({math.prod(shape)} index points); use a uniform density instead")
        grids = np.ogrid[tuple(slice(0, n) for n in shape)]
        idx: Any = 0
        stride = 1
        for rank in ds.ranks:  # the first rank varies fastest in the data file
            coord: Any = 0
            for d, c in rank:
                coord = coord + c * grids[dims.index(d)]
            idx = idx + coord * stride
            stride *= ds.rank_extent(rank, sizes)
        mask = self.w.densities[ds.name].mask
        assert mask is not None
        return mask[np.broadcast_to(idx, shape)]

    def tile_max(self, ds: DataSpace, tile_bounds: Mapping[str, int]) -> float:
        """Most nonzeros in one tile of `ds` (aligned blocks of the given extents): real masks give the
        true maximum (over problem coordinates: exact without sliding windows, an over-count with
        them); uniform densities give the expected count."""
        d = self.w.densities[ds.name]
        if d.kind != "real":
            return ds.size(tile_bounds) * d.density
        dims = [x for x in self.w.dims if x in ds.dims]
        shape: list[int] = []
        for x in dims:
            shape += [self.w.sizes[x] // tile_bounds[x], tile_bounds[x]]
        per_tile = self._on_grid(ds, dims).reshape(shape).sum(axis=tuple(range(1, len(shape), 2)))
        return float(per_tile.max())

    def _real(self, names: frozenset[str]) -> float:
        sizes = self.w.sizes
        if not names:
            return float(self.w.macs)
        spaces = [self.w.data_space(n) for n in sorted(names)]
        if len(spaces) == 1:
            ds = spaces[0]
            dims = [d for d in self.w.dims if d in ds.dims]
            rest = math.prod(sizes[d] for d in self.w.dims if d not in ds.dims)
            return float(np.count_nonzero(self._on_grid(ds, dims))) * rest
        a, b = spaces
        shared = [d for d in self.w.dims if d in a.dims and d in b.dims]
        a_only = [d for d in self.w.dims if d in a.dims and d not in b.dims]
        b_only = [d for d in self.w.dims if d in b.dims and d not in a.dims]
        neither = math.prod(sizes[d] for d in self.w.dims if d not in a.dims | b.dims)
        shared_shape = tuple(sizes[d] for d in shared)
        ca = self._on_grid(a, shared + a_only).reshape(shared_shape + (-1,)).sum(-1, dtype=np.int64)
        cb = self._on_grid(b, shared + b_only).reshape(shared_shape + (-1,)).sum(-1, dtype=np.int64)
        return float(np.sum(ca * cb, dtype=np.int64)) * neither


def metadata_bits(ranks: tuple[Rank, ...], tile_bounds: Mapping[str, int], density: float) -> float:
    """Expected metadata bits of one tile in the given format (ranks outermost first). A rank covers
    the product of its flattened dimensions' tile extents (1 if it names none); a coordinate's
    subtree is nonempty with probability 1 - (1 - density)^(elements under it)."""
    coords = [math.prod(tile_bounds[d] for d in r.dims) if r.dims else 1 for r in ranks]
    bits = 0.0
    fibers = 1
    for k, (r, n) in enumerate(zip(ranks, coords, strict=True)):
        below = math.prod(coords[k + 1:])
        nonempty = fibers * n * (1.0 - (1.0 - density) ** below)
        if r.format == "UOP":
            bits += fibers * (n + 1) * r.payload_bits
        elif r.format in ("RLE", "CP"):
            bits += nonempty * (r.metadata_bits + r.payload_bits)
        elif r.format == "B":
            bits += fibers * n * r.metadata_bits + nonempty * r.payload_bits
        fibers *= n
    return bits


@dataclass(frozen=True)
class Traffic:
    """One data space at one level. Counts are elements (metadata: metadata words); *_skipped and
    *_gated are accesses avoided by skipping / gating (the dense count minus the nonzero-only
    count of a compressed level is not accessed at all and not listed)."""

    tile: int
    reads_algorithmic: float
    fills_algorithmic: float
    updates_algorithmic: float
    reads: float
    fills: float
    updates: float
    reads_skipped: float = 0.0
    reads_gated: float = 0.0
    updates_skipped: float = 0.0
    updates_gated: float = 0.0
    metadata_reads: float = 0.0
    metadata_fills: float = 0.0
    metadata_idle: float = 0.0
    compressed: bool = False
    occupancy: float = 0.0  # expected elements held (nonzeros if compressed)
    occupancy_max: float = 0.0  # most elements held by any tile (real masks; expected if uniform)
    metadata_occupancy_words: float = 0.0


@dataclass(frozen=True)
class LevelResult:
    name: str
    traffic: Mapping[str, Traffic]
    cycles: float  # bandwidth-limited cycles (0: no bandwidth limit)
    energy_pj: Optional[float]


@dataclass(frozen=True)
class TimeloopResult:
    cycles: float
    energy_pj: Optional[float]
    area_um2: Optional[float]
    bound: str  # "compute" or the name of the bandwidth-limited level
    macs_algorithmic: int
    macs_effectual: float
    macs_enumerated: float
    macs_performed: float
    macs_skipped: float
    macs_gated: float
    compute_cycles: float
    mac_energy_pj: Optional[float]
    levels: tuple[LevelResult, ...]
    densities: Mapping[str, Mapping[str, Any]]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def utilization(self) -> float:
        """Effectual MACs per cycle of the one MAC unit mapped onto."""
        return self.macs_effectual / self.cycles if self.cycles else 0.0

    def to_dict(self) -> dict[str, Any]:
        def r(x: Optional[float], nd: int = 3) -> Optional[float]:
            return None if x is None else round(float(x), nd)

        return {
            "cycles": int(round(self.cycles)),
            "energy_pj": r(self.energy_pj, 1),
            "area_um2": r(self.area_um2, 2),
            "bound": self.bound,
            "utilization": r(self.utilization, 4),
            "macs": {"algorithmic": self.macs_algorithmic, "effectual": r(self.macs_effectual, 1),
                     "enumerated": r(self.macs_enumerated, 1), "performed": r(self.macs_performed, 1),
                     "skipped": r(self.macs_skipped, 1), "gated": r(self.macs_gated, 1),
                     "effectual_fraction": r(self.macs_effectual / self.macs_algorithmic, 5),
                     "energy_pj": r(self.mac_energy_pj, 1)},
            "levels": {lv.name: {"energy_pj": r(lv.energy_pj, 1), "bandwidth_cycles": r(lv.cycles, 1),
                                 "data_spaces": {k: {f: (r(v, 1) if isinstance(v, float) else v)
                                                     for f, v in dataclasses.asdict(t).items()}
                                                 for k, t in lv.traffic.items()}}
                       for lv in self.levels},
            "densities": dict(self.densities),
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------------


def _is_compressed(case: Case, level: str, ds: str) -> bool:
    return any(r.format in COMPRESSING for r in case.sparse.at(level).formats.get(ds, ()))


def _action_opts(case: Case, level: str, ds: str):
    opts = [a for a in case.sparse.at(level).actions if a.target == ds]
    if len(opts) > 1:
        raise InputError(f"{case.sources.get('sparse', 'sparse options')}: {level}.action-optimization: "
                         f"{len(opts)} options target {ds}; give one (list all conditions in its condition-on)")
    return opts[0] if opts else None


def _energy_of(table: Optional[Mapping[str, tuple[float, ...]]], action: str, pick: str = "max",
               fallback: tuple[str, ...] = ()) -> float:
    if table is None:
        return 0.0
    for name in (action, *fallback):
        if name in table:
            return max(table[name]) if pick == "max" else min(table[name])
    return 0.0


def _traffic(case: Case, counter: NonzeroCounter, nest: tuple[Loop, ...]) -> dict[tuple[int, str], Traffic]:
    wl = case.workload
    macs = float(wl.macs)
    out: dict[tuple[int, str], Traffic] = {}
    sparse_file = case.sources.get("sparse", "sparse options")
    for lm in case.mapping:
        for a in case.sparse.at(lm.target).actions:
            if a.target not in lm.keep:
                raise InputError(f"{case.sources.get('sparse', 'sparse options')}: {lm.target}.action-optimization"
                                 f" ({a.target}): {lm.target} does not keep {a.target} (the mapping bypasses it); "
                                 f"put the option at a level that keeps it")
    for ds in wl.data_spaces:
        keepers = [i for i, lm in enumerate(case.mapping) if ds.name in lm.keep]
        size_total = ds.size(wl.sizes)
        tiles = [ds.size(bounds_from(nest, i, wl.dims)) for i in keepers]
        residencies = [0.0] + [float(tiles[j] * refetches(ds, nest, keepers[j])) for j in range(1, len(keepers))]
        rho = 1.0 if ds.read_write else counter.density(ds.name)
        for j, i in enumerate(keepers):
            level = case.arch.levels[i]
            innermost = j == len(keepers) - 1
            opt = _action_opts(case, level.name, ds.name)
            if opt is not None and not innermost:
                raise InputError(f"{sparse_file}: {level.name}.action-optimization ({opt.target}): skipping at a "
                                 f"level that feeds another storage level (tile granularity) is not supported; "
                                 f"put it at the level that feeds the MAC")
            compressed = _is_compressed(case, level.name, ds.name)
            scale = rho if compressed else 1.0
            skipped = gated = up_skipped = up_gated = 0.0
            if ds.read_write:
                fills_alg = residencies[j] - size_total if j else 0.0
                if innermost:
                    updates_alg, reads_alg = macs, macs - size_total
                else:
                    updates_alg, reads_alg = residencies[j + 1], residencies[j + 1] - size_total
                fills, reads, updates = fills_alg, reads_alg, updates_alg
                if opt is not None:  # partial-sum accesses only where every condition operand is nonzero
                    frac = counter(opt.condition_on) / macs
                    reads, updates = reads_alg * frac, updates_alg * frac
                    if opt.kind == "skipping":
                        skipped, up_skipped = reads_alg - reads, updates_alg - updates
                    else:
                        gated, up_gated = reads_alg - reads, updates_alg - updates
            else:
                fills_alg = residencies[j]
                reads_alg = macs if innermost else residencies[j + 1]
                updates_alg = updates = 0.0
                fills = fills_alg * scale
                if innermost:
                    base = {ds.name} if compressed else set()
                    enumerated = counter(base)
                    reads = counter(base | set(opt.condition_on)) if opt is not None else enumerated
                    if opt is not None and opt.kind == "skipping":
                        skipped = enumerated - reads
                    elif opt is not None:
                        gated = enumerated - reads
                else:
                    reads = reads_alg * scale
            # metadata, charged in proportion to the nonzeros moved
            fmt = case.sparse.at(level.name).formats.get(ds.name, ())
            md_words_tile = 0.0
            md_reads = md_fills = md_idle = 0.0
            if fmt:
                tb = bounds_from(nest, i, wl.dims)
                bits = metadata_bits(fmt, tb, rho)
                md_word = level.metadata_word_bits or level.word_bits
                md_words_tile = bits / md_word
                # metadata words travel with the elements moved, in proportion (x / scale: the dense
                # positions moved, scale: the fraction of them stored)
                per_position = md_words_tile / tiles[j]
                md_reads, md_fills, md_idle = (x / scale * per_position if x > 0 and scale > 0 else 0.0
                                               for x in (reads, fills, skipped + gated))
            out[(i, ds.name)] = Traffic(
                tile=tiles[j], reads_algorithmic=reads_alg, fills_algorithmic=fills_alg,
                updates_algorithmic=updates_alg, reads=reads, fills=fills, updates=updates,
                reads_skipped=skipped, reads_gated=gated, updates_skipped=up_skipped, updates_gated=up_gated,
                metadata_reads=md_reads, metadata_fills=md_fills, metadata_idle=md_idle, compressed=compressed,
                occupancy=tiles[j] * scale, metadata_occupancy_words=md_words_tile,
                occupancy_max=counter.tile_max(ds, bounds_from(nest, i, wl.dims)) if compressed else tiles[j])
    return out


def _check_capacity(case: Case, traffic: Mapping[tuple[int, str], Traffic]) -> None:
    mfile = case.sources.get("mapping", "mapping")
    for i, level in enumerate(case.arch.levels):
        held = {ds: t for (j, ds), t in traffic.items() if j == i}
        cap = level.capacity_elements
        need = sum(t.occupancy_max for t in held.values())
        if cap is not None and need > cap + 1e-9:
            parts = ", ".join(f"{ds} {t.occupancy_max:.0f}" for ds, t in held.items())
            raise InputError(f"{mfile}: the tiles kept at {level.name} need {need:.0f} elements ({parts}) but "
                             f"{level.name} holds {cap}; use smaller factors at or below {level.name}")
        md_need = sum(t.metadata_occupancy_words for t in held.values())
        if level.metadata_depth_words is not None and md_need > level.metadata_depth_words + 1e-9:
            raise InputError(f"{mfile}: the metadata of the tiles kept at {level.name} needs {md_need:.1f} words "
                             f"but its metadata_storage_depth is {level.metadata_depth_words}; use smaller "
                             f"factors at or below {level.name}")


def _level_energy(case: Case, level: StorageLevel, traffic: Mapping[str, Traffic]) -> Optional[float]:
    if case.ert is None:
        return None
    table = case.ert.component(level.path, level.name)
    if table is None:
        raise InputError(f"{case.sources.get('ert', 'ERT')}: no energy table for {level.path}; add one "
                         f"(or give --ert with a table for every level)")
    e_read = _energy_of(table, "read")
    e_write = _energy_of(table, "write", fallback=("read",))
    e_gread = _energy_of(table, "gated_read", "min", fallback=("idle", "read"))
    e_gwrite = _energy_of(table, "gated_write", "min", fallback=("idle", "write", "read"))
    e_mread = _energy_of(table, "metadata_read")
    e_mwrite = _energy_of(table, "metadata_write", fallback=("metadata_read",))
    e_mgated = _energy_of(table, "gated_metadata_read", "min")
    per_word = 1.0 / level.block_size  # an action moves one word of block_size elements
    total = 0.0
    for t in traffic.values():
        total += per_word * (t.reads * e_read + (t.fills + t.updates) * e_write
                             + (t.reads_skipped + t.reads_gated) * e_gread
                             + (t.updates_skipped + t.updates_gated) * e_gwrite)
        total += t.metadata_reads * e_mread + t.metadata_fills * e_mwrite + t.metadata_idle * e_mgated
    return total


def evaluate(case: Case) -> TimeloopResult:
    """Cycles, energy and the access breakdown of one case (see the module docstring)."""
    wl, arch = case.workload, case.arch
    nest = loop_nest(case)
    counter = NonzeroCounter(wl)
    traffic = _traffic(case, counter, nest)
    _check_capacity(case, traffic)

    operands = [ds.name for ds in wl.operands]
    innermost = {name: max(i for (i, n) in traffic if n == name) for name in operands}
    leaders = {n for n in operands if _is_compressed(case, arch.levels[innermost[n]].name, n)}
    enumerated = counter(leaders)
    effectual = counter(operands)
    performed, skipped, gated = enumerated, 0.0, 0.0
    if case.sparse.compute == "skipping":
        performed, skipped = effectual, enumerated - effectual
    elif case.sparse.compute == "gating":
        performed, gated = effectual, enumerated - effectual
    # one MAC unit does all the work (spatial mapping is refused at parse time), one MAC per cycle
    compute_cycles = performed + gated

    levels = []
    bound, cycles = "compute", compute_cycles
    for i, level in enumerate(arch.levels):
        held = {ds: t for (j, ds), t in traffic.items() if j == i}
        reads = sum(t.reads + t.reads_gated for t in held.values()) / level.block_size
        writes = sum(t.fills + t.updates + t.updates_gated for t in held.values()) / level.block_size
        lv_cycles = 0.0
        for words, bw in ((reads, level.read_bandwidth), (writes, level.write_bandwidth),
                          (reads + writes, level.shared_bandwidth)):
            if bw:
                lv_cycles = max(lv_cycles, words / bw)
        if lv_cycles > cycles:
            bound, cycles = level.name, lv_cycles
        levels.append(LevelResult(level.name, held, lv_cycles, _level_energy(case, level, held)))

    mac_energy = None
    energy = None
    notes = [wl.densities[n].note for n in operands if wl.densities[n].note]
    if arch.compute.instances > 1:
        notes.append(f"the architecture has {arch.compute.instances} MAC instances; this reader maps the "
                     f"problem onto one (spatial mappings are not supported)")
    if case.ert is not None:
        table = case.ert.component(arch.compute.path, arch.compute.name)
        if table is None:
            raise InputError(f"{case.sources.get('ert', 'ERT')}: no energy table for {arch.compute.path}; add one")
        e_mac = _energy_of(table, "mac_random", fallback=("compute", "mac", "multiply_accumulate"))
        e_skip = _energy_of(table, "mac_skipped", "min", fallback=("mac_gated",))
        e_gate = _energy_of(table, "mac_gated", "min")
        mac_energy = performed * e_mac + skipped * e_skip + gated * e_gate
        energy = mac_energy + sum(lv.energy_pj or 0.0 for lv in levels)
    else:
        notes.append("no ERT given or found beside the architecture: energy not computed")
    area = None
    if case.art is not None:
        area = 0.0
        comps = [(lv.path, lv.name, lv.instances) for lv in arch.levels]
        comps.append((arch.compute.path, arch.compute.name, arch.compute.instances))
        for path, name, n in comps:
            hits = [a for k, a in case.art.items() if k == path] or \
                   [a for k, a in case.art.items() if k.split(".")[-1] == name]
            area += (hits[0] if hits else 0.0) * n
    dens = {n: {"model": wl.densities[n].kind, "density": round(wl.densities[n].density, 6),
                "source": wl.densities[n].source} for n in operands}
    return TimeloopResult(
        cycles=cycles, energy_pj=energy, area_um2=area, bound=bound, macs_algorithmic=wl.macs,
        macs_effectual=effectual, macs_enumerated=enumerated, macs_performed=performed, macs_skipped=skipped,
        macs_gated=gated, compute_cycles=compute_cycles, mac_energy_pj=mac_energy, levels=tuple(levels),
        densities=dens, notes=tuple(notes))


def evaluate_files(arch: Path | str, sparse_opts: Path | str, workload: Path | str, mapping: Path | str,
                   ert: Optional[Path | str] = None, art: Optional[Path | str] = None) -> TimeloopResult:
    """Read the four YAML files (ERT/ART: given, else beside ARCH) and evaluate them."""
    return evaluate(load_case(arch, sparse_opts, workload, mapping, ert, art))
