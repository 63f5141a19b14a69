"""Compression format x dataflow co-search for the weights of sparse LLM linears.

    from nmx.hw.format_search import FiberFormat, Machine, layer_cases, search, exhaustive
    mach = Machine.from_spec(load_accel("examples/hw/dense_16x16_ws.yaml"))
    case = layer_cases(gemm_problem(1, 4096, 4096, weights="int8", activations="int8"), [0.9])[0]
    best = search(case, mach)               # exact, pruned: DP over ranks + dominance + tile bound
    check = exhaustive(case, mach)          # every format x every dataflow point
    best.point.format, best.point.dataflow, best.point.tile, best.point.energy_pj

The question (SnipSnap, Wu, Fang and Wang 2025): a sparse weight matrix can be stored in many
formats, and which one is cheapest depends on the density *and* on the dataflow that reads it.
Search both together.

Formats: a vocabulary of per-rank primitives (Sparseloop's)
---------------------------------------------------------------
A weight matrix W[n, k] is cut into buffer tiles (Tn, Tk) by the dataflow. Each tile is a fibertree
of 1 to 3 ranks, outer to inner, and a format gives each rank one primitive:

    ORDER[/BLOCK]:P1-P2[-P3]      e.g. nk:UOP-CP (CSR per tile), nk:U-B (bitmap per tile row),
                                       kn:UOP-CP (CSC), nk/16:U-B-CP, nk:RLE (the tile as one stream)

ORDER nk: the tile's ranks are n then k (rows of W outer); kn: k then n. One primitive: the tile
flattened in that order (one rank of Tn*Tk). Three: the inner dimension is split into blocks of
BLOCK (ranks n, k/BLOCK, BLOCK for nk). The primitives, for a rank of fiber length s:

    U    uncompressed: every coordinate stored (zeros included); no metadata
    UOP  uncompressed offset pairs: every coordinate present; s+1 offsets per fiber into the next
         rank's stored entries, each ceil(log2(largest per-tile count + 1)) bits (tile-local offsets)
    B    bitmask: s bits per fiber; only nonempty coordinates have children
    CP   coordinate payload: one ceil(log2 s)-bit coordinate per nonempty coordinate
    RLE  run length: per stored coordinate, the empty coordinates skipped before it in r bits. At
         the innermost rank r is chosen (1..ceil(log2 s)) for the smallest rank cost
         (entries x (r + value bits)); a gap > 2^r - 1 is broken by a stored zero (Eyeriss,
         Sparseloop). At an upper rank r = ceil(log2 s) (no filler entries, which would create
         empty child fibers): there it costs exactly what CP costs.

A fiber of a CP or RLE rank has a variable length: its reader must learn where it ends. Under a
UOP parent the offsets say it; otherwise the fiber carries its length, ceil(log2(s + 1)) bits
(an nmx addition: Sparseloop counts no lengths, which flatters B-over-CP and CP-over-CP formats).
A UOP rank cannot be the innermost one (its offsets would point into nothing). Values: one
value_bits entry per stored innermost coordinate. The formats of nmx.sparsity.storage_formats
are special cases and agree to the bit: one tile, nk:U-U = dense, nk:U-B = bitmap,
nk:UOP-CP = csr, kn:UOP-CP = csc; nk:RLE = rle<r> plus the stream's one length field.

Sizes come exactly from a real mask (`mask=`: counts of nonempty coordinates per rank and tile,
the run lengths of every fiber) or in expectation at a density d for a uniformly random mask
(`density=`): a coordinate of rank i is nonempty with p_i = 1 - (1-d)^(elements below it); the
fillers of a fiber of length s with occupancy p and period P = 2^r are, exactly in expectation,
p * sum_{u=1}^{floor((s-1)/P)} q^(uP) (s - uP), q = 1 - p (the gap before the nonzero at position j
is geometric, truncated at j). Widths that depend on a count use the largest per-tile count of
the mask, or the nearest integer to the per-tile expectation (as storage_formats rounds nnz).
Tiles are stored one after another in the order the loop nest fetches them, so no tile table.

Dataflow and traffic (nmx.hw.accel's model, with the tile and loop order explicit)
-------------------------------------------------------------------------------------
A dataflow point is (stationary operand, loop order over the DRAM-level tile loops, buffer tile
(Tm, Tn, Tk)); Tn and Tk divide n and k (no ragged tiles), Tm need not divide m. Traffic and
feasibility follow nmx.hw.accel exactly (the tests check dram and glb bytes against
`accel.evaluate` with the same explicit tile): an operand is re-fetched from DRAM once per
iteration of an outer loop it does not index; partial sums spill at accumulator width; the
array-side buffer reads per dataflow; the tile must fit the buffer (W at its format's bytes per
element on average, not its densest tile). The weights' bytes are the format's size.

Stream order. The array consumes a weight tile in a fixed order: in weight- and output-stationary
dataflows W enters the array through its columns (one output channel n per column, walked over
k: order nk); in input-stationary it enters through the rows (one k per row, walked over n: kn).
A format whose order is the array's is decoded in stream order by the per-column (row) decoders.
A format of the other order cannot be (a compressed fiber has no random access): its tile is
decoded into a dense copy in the buffer, i.e. the buffer holds the dense tile (footprint), writes
it once per DRAM fetch, and the array reads the dense tile. An all-U format is order-free.

Memory energy = DRAM bytes x 8 x pJ/bit of the DRAM + buffer bytes x 8 x SRAM pJ/bit (the
buffer's read energy at its capacity, nmx.hw.tech, as accel charges it for reads and writes). No
register, MAC or decoder energy: the objective is the memory energy SnipSnap reports.

The searches
------------
`exhaustive`: every format (orders x {1, 2, 3 ranks} x blocks x primitives^ranks) at every tile,
every dataflow point: sizes for each (format, tile), energies vectorized over dataflow points.
`search` gives the same optimum with far less work, exactly, from three facts of this model:
  1. dominance: for a fixed tile and dataflow point, memory energy is non-decreasing in the
     weights' bytes, and the only other thing a format changes is stream order. So per tile only
     three formats can win: the smallest nk format, the smallest kn format, and dense (order-free).
  2. the smallest format of a layout is a dynamic program over ranks, outer to inner: what a rank
     costs depends only on how many fibers it has (fixed by the last compressed rank above it),
     whether its parent is UOP, and - for a UOP parent - its own per-tile stored count.
  3. a bound over tiles: the weights can never cost less than their values alone, so a tile
     whose energy with values-only weights (no metadata, stream order) is no better than the best
     found is skipped; tiles are visited best bound first.
Both return the same optimal energy (checked on random small spaces in the tests and on every
case of benchmarks/format_search.py). Within a layout, ties go to the earlier primitive (PRIMITIVES
order) in both; across tiles and dataflow points of equal energy they may pick different points.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from nmx.errors import InputError

PRIMITIVES = ("U", "UOP", "B", "CP", "RLE")
ORDERS = ("nk", "kn")
DATAFLOWS = ("weight", "output", "input")
LOOP_ORDERS = tuple("".join(p) for p in itertools.permutations("mnk"))  # outer -> inner (as nmx.hw.accel)
#: the order in which the array consumes a weight tile, per stationary operand (see the module doc)
PREFERRED_ORDER = {"weight": "nk", "output": "nk", "input": "kn"}
DEFAULT_BLOCKS = (4, 8, 16, 32, 64)
MIN_TILE = 16
#: classic formats as fixed baselines (per tile, nk unless the name says otherwise)
CLASSIC = {"dense": "nk:U-U", "bitmap": "nk:U-B", "csr": "nk:UOP-CP", "csc": "kn:UOP-CP",
           "dcsr": "nk:CP-CP", "row-rle": "nk:U-RLE", "rle": "nk:RLE"}

_TOL = 1e-12  # relative: costs closer than this are ties
_POS = np.array([[o.index(d) for d in "mnk"] for o in LOOP_ORDERS])


def _lt(a: float, b: float) -> bool:
    """a < b beyond rounding (a tie keeps the earlier candidate)."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return a < b
    return a < b - _TOL * max(abs(a), abs(b), 1e-300)


def index_bits(n: int) -> int:
    """ceil(log2 n): bits of a coordinate in 0..n-1 (0 for n <= 1)."""
    return (int(n) - 1).bit_length() if n > 0 else 0


def count_bits(n: float) -> int:
    """ceil(log2(n + 1)): bits of a count or offset in 0..n."""
    return int(n).bit_length()


# ---- formats -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FiberFormat:
    """A per-rank format of a weight tile: the tile's rank order, an optional block split of the
    inner dimension (three ranks), and one primitive per rank (outer to inner)."""

    order: str
    prims: tuple[str, ...]
    block: int = 0

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise InputError(f"format order {self.order!r}: use nk (rows of W outer) or kn (columns outer)")
        if not 1 <= len(self.prims) <= 3:
            raise InputError(f"a format has 1 to 3 ranks, got {len(self.prims)} ({'-'.join(self.prims)})")
        for p in self.prims:
            if p not in PRIMITIVES:
                raise InputError(f"unknown primitive {p!r}; primitives: {', '.join(PRIMITIVES)}")
        if self.prims[-1] == "UOP":
            raise InputError(f"format {self.name}: UOP cannot be the innermost rank (its offsets would point into "
                             "nothing); use U, B, CP or RLE there")
        if (len(self.prims) == 3) != (self.block > 0):
            raise InputError(f"format {self.name}: three ranks need a block (e.g. nk/16:U-B-CP) and a block needs "
                             "three ranks")
        if self.block == 1 or self.block < 0:
            raise InputError(f"format {self.name}: the block must be >= 2, got {self.block}")

    @property
    def levels(self) -> int:
        return len(self.prims)

    @property
    def layout(self) -> tuple[str, int, int]:
        return (self.order, self.levels, self.block)

    @property
    def order_free(self) -> bool:
        """All ranks uncompressed: any element is found by position, in any order."""
        return all(p == "U" for p in self.prims)

    @property
    def name(self) -> str:
        blk = f"/{self.block}" if self.block else ""
        return f"{self.order}{blk}:{'-'.join(self.prims)}"

    def __str__(self) -> str:
        return self.name

    def shapes(self, tn: int, tk: int) -> tuple[int, ...] | None:
        """Fiber lengths of the ranks for a (Tn, Tk) tile; None where the block does not split it."""
        return layout_shapes(self.layout, tn, tk)

    @classmethod
    def parse(cls, text: str) -> "FiberFormat":
        """'nk:UOP-CP', 'kn/16:U-B-CP', 'nk:RLE', or a classic name (csr, bitmap, ...; see CLASSIC)."""
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"a format is text like nk:UOP-CP or nk/16:U-B-CP, got {text!r}")
        t = text.strip()
        t = CLASSIC.get(t.lower(), t)
        if ":" not in t:
            raise InputError(f"format {text!r}: write ORDER[/BLOCK]:P-P[-P] (e.g. nk:UOP-CP, nk/16:U-B-CP) or one of "
                             f"{', '.join(CLASSIC)}")
        head, body = t.split(":", 1)
        order, _, blk = head.strip().lower().partition("/")
        try:
            block = int(blk) if blk else 0
        except ValueError:
            raise InputError(f"format {text!r}: the block after '/' must be a whole number") from None
        prims = tuple(p.strip().upper() for p in body.split("-"))
        return cls(order, prims, block)


def layout_shapes(layout: tuple[str, int, int], tn: int, tk: int) -> tuple[int, ...] | None:
    order, levels, block = layout
    a, b = (tn, tk) if order == "nk" else (tk, tn)
    if levels == 1:
        return (a * b,)
    if levels == 2:
        return (a, b)
    if block >= b or b % block:
        return None
    return (a, b // block, block)


def enumerate_formats(primitives: Sequence[str] = PRIMITIVES, blocks: Sequence[int] = DEFAULT_BLOCKS,
                      levels: Sequence[int] = (1, 2, 3)) -> list[FiberFormat]:
    """Every format of the space, in the canonical order the searches break ties by."""
    out = []
    for layout in layouts(blocks, levels):
        order, lv, block = layout
        for prims in itertools.product(primitives, repeat=lv):
            if prims[-1] != "UOP":
                out.append(FiberFormat(order, prims, block))
    return out


def layouts(blocks: Sequence[int] = DEFAULT_BLOCKS, levels: Sequence[int] = (1, 2, 3)) -> list[tuple[str, int, int]]:
    out = []
    for order in ORDERS:
        for lv in sorted(set(levels)):
            out.extend([(order, lv, b) for b in sorted(set(blocks))] if lv == 3 else [(order, lv, 0)])
    return out


# ---- occupancy statistics of one layout ------------------------------------------------------------


@dataclass(frozen=True)
class RankStats:
    """What the size of every format of one layout needs, for the whole matrix.

    shapes: fiber length per rank (outer -> inner); tiles: tiles of the matrix; nonempty[i]:
    coordinates of rank i with a nonzero below them; tile_count[i]: the per-tile nonempty count
    widths are sized for (exact: the largest tile's; expected: the per-tile expectation);
    fill[r] = (filler entries of an innermost RLE rank with r-bit runs, the per-tile count of
    innermost entries widths are sized for)."""

    shapes: tuple[int, ...]
    tiles: int
    nonempty: tuple[float, ...]
    tile_count: tuple[float, ...]
    fill: dict[int, tuple[float, float]]
    exact: bool

    def width(self, per_tile: float) -> int:
        """Bits of an offset into a tile's stored entries."""
        return count_bits(per_tile if self.exact else math.floor(per_tile + 0.5))


def _p_nonempty(density: float, below: int) -> float:
    if density <= 0.0:
        return 0.0
    if density >= 1.0:
        return 1.0
    return -math.expm1(below * math.log1p(-density))


@functools.lru_cache(maxsize=65536)
def expected_fill(s: int, p: float, r: int) -> float:
    """Expected filler entries of one fiber of length s, each coordinate nonempty with p, r-bit runs."""
    period = 1 << r
    u_max = (s - 1) // period
    if u_max <= 0 or p <= 0.0 or p >= 1.0:
        return 0.0
    x = math.exp(period * math.log1p(-p))  # q^P
    if u_max <= 4096:
        u = np.arange(1, u_max + 1, dtype=np.float64)
        return float(p * np.sum(x ** u * (s - period * u)))
    # closed form of sum_{u=1}^{U} x^u (s - P u)
    xu = x ** u_max
    g1 = x * (1 - xu) / (1 - x)
    g2 = x * (1 - (u_max + 1) * xu + u_max * xu * x) / (1 - x) ** 2
    return float(p * (s * g1 - period * g2))


def expected_stats(n: int, k: int, tn: int, tk: int, layout: tuple[str, int, int], density: float) -> RankStats | None:
    """Occupancy of a uniformly random n x k matrix of `density` cut into (tn, tk) tiles."""
    shapes = layout_shapes(layout, tn, tk)
    if shapes is None:
        return None
    tiles = (n // tn) * (k // tk)
    L = len(shapes)
    nonempty, tile_count = [], []
    coords = tiles
    for i, s in enumerate(shapes):
        coords *= s
        below = math.prod(shapes[i + 1:])
        ne = coords * _p_nonempty(density, below)
        nonempty.append(ne)
        tile_count.append(ne / tiles)
    s_leaf = shapes[-1]
    fibers = tiles * math.prod(shapes[:-1])
    fill = {}
    for r in range(1, max(1, index_bits(s_leaf)) + 1):
        f = fibers * expected_fill(s_leaf, density, r)
        fill[r] = (f, (nonempty[L - 1] + f) / tiles)
    return RankStats(tuple(shapes), tiles, tuple(nonempty), tuple(tile_count), fill, exact=False)


def _as_mask(mask: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(mask, torch.Tensor):
            mask = mask.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"a weight mask is 2-D [n, k], got shape {m.shape}")
    return m != 0


def exact_stats(mask: Any, tn: int, tk: int, layout: tuple[str, int, int]) -> RankStats | None:
    """Occupancy of a real mask [n, k] (nonzero = kept) cut into (tn, tk) tiles."""
    mask = _as_mask(mask)
    n, k = mask.shape
    if n % tn or k % tk:
        raise InputError(f"tile ({tn}, {tk}) does not divide the {n} x {k} matrix")
    shapes = layout_shapes(layout, tn, tk)
    if shapes is None:
        return None
    tiles = (n // tn) * (k // tk)
    t = mask.reshape(n // tn, tn, k // tk, tk).transpose(0, 2, 1, 3).reshape(tiles, tn, tk)
    if layout[0] == "kn":
        t = t.transpose(0, 2, 1)
    t = np.ascontiguousarray(t).reshape((tiles,) + shapes)
    L = len(shapes)
    nonempty, tile_count = [], []
    per_tile_leaf = None
    for i in range(L):
        occ = t.any(axis=tuple(range(i + 2, L + 1))) if i < L - 1 else t
        per_tile = occ.reshape(tiles, -1).sum(axis=1)
        nonempty.append(float(per_tile.sum()))
        tile_count.append(float(per_tile.max()) if tiles else 0.0)
        if i == L - 1:
            per_tile_leaf = per_tile
    s_leaf = shapes[-1]
    fibers = t.reshape(-1, s_leaf)
    rows, cols = np.nonzero(fibers)
    prev = np.empty_like(cols)
    if cols.size:
        prev[0] = -1
        prev[1:] = np.where(rows[1:] == rows[:-1], cols[:-1], -1)
    gaps = cols - prev - 1
    fib_per_tile = fibers.shape[0] // max(tiles, 1)
    tile_of = rows // max(fib_per_tile, 1)
    fill = {}
    for r in range(1, max(1, index_bits(s_leaf)) + 1):
        extra = gaps >> r
        per_tile = np.bincount(tile_of, weights=extra, minlength=tiles) if tiles else np.zeros(0)
        fill[r] = (float(extra.sum()), float((per_tile_leaf + per_tile).max()) if tiles else 0.0)
    return RankStats(tuple(shapes), tiles, tuple(nonempty), tuple(tile_count), fill, exact=True)


# ---- sizes -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FormatSize:
    """The bits of one format on one layout: metadata per rank, values, the innermost RLE run width."""

    format: str
    bits: float
    value_bits_total: float
    metadata_bits: tuple[float, ...]
    rle_bits: int | None = None

    @property
    def nbytes(self) -> float:
        return self.bits / 8


class _Sizer:
    """Rank costs of one layout's statistics at one value width (shared by the searches)."""

    def __init__(self, st: RankStats, value_bits: int):
        self.st, self.vb = st, value_bits
        self.s = st.shapes
        self.L = len(st.shapes)
        self.ib = [index_bits(s) for s in st.shapes]
        self.cb = [count_bits(s) for s in st.shapes]
        n_leaf = st.nonempty[-1]
        self.r = min(st.fill, key=lambda r: ((n_leaf + st.fill[r][0]) * (r + value_bits), r))
        self.rle_fill, self.rle_tile = st.fill[self.r]

    def rank(self, i: int, p: str, F: float, Ft: float, parent_uop: bool) -> tuple[float, float, float]:
        """(own metadata bits, stored entries, per-tile stored entries) of rank i holding F fibers
        (Ft per tile); UOP's offsets are charged by `offsets` once the child is known."""
        s = self.s[i]
        if p == "U" or p == "UOP":
            return 0.0, F * s, Ft * s
        st = self.st
        ne, nt = st.nonempty[i], st.tile_count[i]
        if p == "B":
            return F * s, ne, nt
        length = 0.0 if parent_uop else F * self.cb[i]
        if p == "CP":
            return ne * self.ib[i] + length, ne, nt
        # RLE
        if i == self.L - 1:
            e = ne + self.rle_fill
            return e * self.r + length, e, self.rle_tile
        return ne * max(1, self.ib[i]) + length, ne, nt

    def size(self, prims: tuple[str, ...]) -> float:
        F, Ft, pend, puop, total = float(self.st.tiles), 1.0, 0.0, False, 0.0
        for i, p in enumerate(prims):
            meta, stored, st = self.rank(i, p, F, Ft, puop)
            if pend:
                total += pend * self.st.width(st)
            total += meta
            pend = F * (self.s[i] + 1) if p == "UOP" else 0.0
            puop = p == "UOP"
            F, Ft = stored, st
        return total + F * self.vb

    def breakdown(self, fmt: FiberFormat) -> FormatSize:
        F, Ft, pend, puop = float(self.st.tiles), 1.0, 0.0, False
        meta_bits = [0.0] * self.L
        for i, p in enumerate(fmt.prims):
            meta, stored, st = self.rank(i, p, F, Ft, puop)
            if pend:
                meta_bits[i - 1] += pend * self.st.width(st)
            meta_bits[i] += meta
            pend = F * (self.s[i] + 1) if p == "UOP" else 0.0
            puop = p == "UOP"
            F, Ft = stored, st
        values = F * self.vb
        r = self.r if fmt.prims[-1] == "RLE" else None
        return FormatSize(fmt.name, values + sum(meta_bits), values, tuple(meta_bits), r)

    def best(self, allowed: Sequence[str]) -> tuple[float, tuple[str, ...], int]:
        """The smallest format of this layout over `allowed` primitives: (bits, primitives, ranks
        evaluated). A dynamic program over ranks; ties keep the earlier primitive (PRIMITIVES order)."""
        memo: dict[tuple[int, int, bool], tuple[float, tuple[str, ...]]] = {}
        count = [0]
        allowed = [p for p in PRIMITIVES if p in allowed]

        def go(i: int, j: int, puop: bool, F: float, Ft: float, pend: float) -> tuple[float, tuple[str, ...]]:
            key = (i, j, puop)
            if key in memo:
                return memo[key]
            leaf = i == self.L - 1
            best_c, best_t = math.inf, ()
            for p in allowed:
                if leaf and p == "UOP":
                    continue
                count[0] += 1
                meta, stored, st = self.rank(i, p, F, Ft, puop)
                c = meta + (pend * self.st.width(st) if pend else 0.0)
                if leaf:
                    c += stored * self.vb
                    tail: tuple[str, ...] = ()
                else:
                    sub, tail = go(i + 1, j if p in ("U", "UOP") else i, p == "UOP", stored, st,
                                   F * (self.s[i] + 1) if p == "UOP" else 0.0)
                    c += sub
                if not best_t or _lt(c, best_c):
                    best_c, best_t = c, (p,) + tail
            memo[key] = (best_c, best_t)
            return memo[key]

        c, t = go(0, -1, False, float(self.st.tiles), 1.0, 0.0)
        return c, t, count[0]


def format_size(fmt: FiberFormat | str, shape: tuple[int, int], *, density: float | None = None, mask: Any = None,
                tile: tuple[int, int] | None = None, value_bits: int = 8) -> FormatSize:
    """The size of `fmt` for a weight matrix of `shape` (n, k), exactly from `mask` or in expectation
    at `density`, cut into `tile` (Tn, Tk) tiles (default: one tile, the whole matrix)."""
    fmt = FiberFormat.parse(fmt) if isinstance(fmt, str) else fmt
    n, k = _check_shape(shape)
    tn, tk = tile if tile is not None else (n, k)
    if tn < 1 or tk < 1 or n % tn or k % tk:
        raise InputError(f"tile ({tn}, {tk}) must divide the {n} x {k} matrix")
    if (density is None) == (mask is None):
        raise InputError("give a density (expected size) or a mask (exact size), one of them")
    if value_bits < 1:
        raise InputError(f"value_bits must be >= 1, got {value_bits}")
    if mask is not None:
        m = _as_mask(mask)
        if m.shape != (n, k):
            raise InputError(f"the mask's shape {m.shape} is not the matrix shape {(n, k)}")
        st = exact_stats(m, tn, tk, fmt.layout)
    else:
        st = expected_stats(n, k, tn, tk, fmt.layout, check_density(density))
    if st is None:
        raise InputError(f"format {fmt.name}: block {fmt.block} does not split a ({tn}, {tk}) tile's inner dimension")
    return _Sizer(st, value_bits).breakdown(fmt)


def _check_shape(shape: Any) -> tuple[int, int]:
    try:
        n, k = (int(x) for x in shape)
    except (TypeError, ValueError):
        raise InputError(f"a weight shape is (n, k), got {shape!r}") from None
    if n < 1 or k < 1:
        raise InputError(f"a weight shape has positive sizes, got {shape!r}")
    return n, k


def check_density(density: Any) -> float:
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 <= float(density) <= 1.0:
        raise InputError(f"density must be in [0, 1] (the fraction of weights kept), got {density!r}")
    return float(density)


def check_sparsity(value: Any, where: str = "--sparsity") -> float:
    """A weight sparsity in [0, 1) (the fraction pruned), from a number or text ('0.9', '90%')."""
    text = str(value).strip()
    try:
        s = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise InputError(f"{where} {value!r}: not a number; give fractions pruned in [0, 1), "
                         "e.g. 0.5,0.7,0.9") from None
    if not math.isfinite(s) or not 0.0 <= s < 1.0:
        raise InputError(f"{where} {value!r}: a sparsity must be in [0, 1) (the fraction of weights pruned; "
                         "0.9 = 90 %)")
    return s


# ---- machine and layer ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """What the traffic model takes from an accelerator design (nmx.hw.accel_spec.AccelSpec)."""

    name: str
    rows: int
    cols: int
    lanes: int
    act_bits: int
    weight_bits: int
    fp: bool
    glb_bytes: float
    dram_pj_per_bit: float
    sram_pj_per_bit: float

    @classmethod
    def from_spec(cls, spec: Any) -> "Machine":
        from nmx.hw.tech import get_tech

        # as nmx.hw.accel charges the buffer: the 45 nm read energy at its capacity, node-scaled
        sram = float(get_tech(45).sram_read_energy_pj_per_bit(spec.glb_kb * 1024.0))
        sram *= get_tech(spec.tech_nm).energy_scale
        return cls(spec.name, spec.rows, spec.cols, spec.lanes, spec.act_bits, spec.weight_bits, spec.arith == "fp",
                   spec.glb_kb * 1024.0, float(spec.dram_pj_per_bit), sram)


@dataclass(frozen=True)
class LayerCase:
    """One linear Y[m, n] = X[m, k] W[n, k]^T whose weights are unstructured-sparse at `density`."""

    name: str
    m: int
    n: int
    k: int
    density: float
    value_bits: int  # bits per stored weight value
    act_bits: int
    x_bytes: float  # the activations' bytes (dense, with their format's scales)
    scale_bytes: float = 0.0  # the weight format's scales (stored beside any layout)
    out_bits: int = 16
    count: float = 1.0
    mask: Any = field(default=None, compare=False, repr=False)  # a real mask: exact sizes

    @property
    def dense_bytes(self) -> float:
        return self.n * self.k * self.value_bits / 8 + self.scale_bytes

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def stats(self, tn: int, tk: int, layout: tuple[str, int, int]) -> RankStats | None:
        if self.mask is not None:
            return exact_stats(self.mask, tn, tk, layout)
        return expected_stats(self.n, self.k, tn, tk, layout, self.density)


def layer_cases(work: Any, sparsities: Iterable[float] | None = None, include_lm_head: bool = False
                ) -> list[LayerCase]:
    """One case per distinct linear of `work` (an nmx.hw.accel Gemm, a list of them, or an
    nmx.hw.workload.Workload) and per sparsity (default: the workload's own unstructured density)."""
    from nmx.hw.accel import Gemm, gemm_problem

    gemms: list[tuple[str, Any, Any]] = []  # (name, Gemm, pattern density or None)
    def own(g: Gemm) -> float | None:  # the GEMM's unstructured density (None: dense or N:M)
        return g.weight_density if not g.pattern_m and g.weight_density < 1 else None

    if isinstance(work, Gemm):
        gemms.append((work.name, work, own(work)))
    elif isinstance(work, (list, tuple)) and all(isinstance(g, Gemm) for g in work):
        gemms.extend((g.name, g, own(g)) for g in work)
    elif hasattr(work, "ops"):
        seen: dict[tuple, int] = {}
        for op in work.ops:
            if op.kind != "gemm" or (op.name == "lm_head" and not include_lm_head):
                continue
            key = (op.m, op.n, op.k, op.weight_format, op.act_format)
            if key in seen:
                i = seen[key]
                name, g, d = gemms[i]
                gemms[i] = (f"{name}+{op.name.split('.')[-1]}", g, d)
                continue
            seen[key] = len(gemms)
            g = gemm_problem(op.m, op.n, op.k, weights=op.weight_format, activations=op.act_format, count=op.count,
                             name=op.name)
            pat = None
            if op.pattern is not None:
                from nmx.sparsity.patterns import NMPattern, parse_pattern

                p = parse_pattern(op.pattern)
                pat = None if isinstance(p, NMPattern) or p.density >= 1 else p.density
            gemms.append((op.name.split(".")[-1], g, pat))
    else:
        raise InputError(f"expected a GEMM or an LLM workload, got {type(work).__name__}")
    if not gemms:
        raise InputError("the workload has no linear layers to search formats for")
    dens: list[float | None]
    if sparsities is None:
        dens = [None]
    else:
        dens = [1.0 - check_sparsity(s, "sparsity") for s in sparsities]
        if not dens:
            raise InputError("give at least one sparsity")
    from nmx.hw.accel_spec import OPERAND_FORMATS

    dense_i = OPERAND_FORMATS.index("dense")
    out = []
    for name, g, own in gemms:
        for d in dens:
            if d is None:
                if own is None:
                    raise InputError(f"{name}: the workload has no unstructured weight sparsity; give --sparsity "
                                     "(e.g. 0.5,0.7,0.9)")
                d = own
            scale = (g.w_bits[dense_i] - g.n * g.k * g.weight_bits) / 8
            out.append(LayerCase(name, g.m, g.n, g.k, d, g.weight_bits, g.act_bits, g.x_bits[dense_i] / 8,
                                 max(0.0, scale), g.out_bits, g.count))
    return out


# ---- the dataflow side -----------------------------------------------------------------------------


def tile_candidates(d: int, min_tile: int = MIN_TILE) -> tuple[int, ...]:
    """Tile sizes that divide d: powers of two and d / powers of two, at least min_tile (or d)."""
    c = {d}
    p = 1
    while p <= d:
        if d % p == 0:
            if p >= min_tile:
                c.add(p)
            if d // p >= min_tile:
                c.add(d // p)
        p *= 2
    return tuple(sorted(c))


def m_tile_candidates(m: int) -> tuple[int, ...]:
    return tuple(sorted({t for t in (16, 64, 256, 1024, 4096, 16384) if t < m} | {m}))


@dataclass(frozen=True)
class Space:
    """The co-search space: format primitives, blocks and rank counts; dataflows, loop orders, tiles
    (None: tile_candidates of each dimension, m_tile_candidates for m)."""

    primitives: tuple[str, ...] = PRIMITIVES
    blocks: tuple[int, ...] = DEFAULT_BLOCKS
    levels: tuple[int, ...] = (1, 2, 3)
    dataflows: tuple[str, ...] = DATAFLOWS
    loop_orders: tuple[str, ...] = LOOP_ORDERS
    tiles_m: tuple[int, ...] | None = None
    tiles_n: tuple[int, ...] | None = None
    tiles_k: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for p in self.primitives:
            if p not in PRIMITIVES:
                raise InputError(f"unknown primitive {p!r}; primitives: {', '.join(PRIMITIVES)}")
        if not [p for p in self.primitives if p != "UOP"]:
            raise InputError("the primitives need at least one of U, B, CP, RLE (the innermost rank cannot be UOP)")
        for d in self.dataflows:
            if d not in DATAFLOWS:
                raise InputError(f"unknown dataflow {d!r}; use {', '.join(DATAFLOWS)} (or ws, os, is)")
        for o in self.loop_orders:
            if o not in LOOP_ORDERS:
                raise InputError(f"unknown loop order {o!r}; use {', '.join(LOOP_ORDERS)}")
        if any(b < 2 for b in self.blocks):
            raise InputError(f"blocks must be >= 2, got {list(self.blocks)}")
        if not self.levels or any(lv not in (1, 2, 3) for lv in self.levels):
            raise InputError(f"rank counts must be among 1, 2, 3, got {list(self.levels)}")
        if not self.dataflows or not self.loop_orders:
            raise InputError("give at least one dataflow and one loop order")

    def formats(self) -> list[FiberFormat]:
        return enumerate_formats(self.primitives, self.blocks if 3 in self.levels else (), self.levels)

    def layouts(self) -> list[tuple[str, int, int]]:
        return layouts(self.blocks, self.levels)

    def tiles(self, case: LayerCase) -> list[tuple[int, int]]:
        tn = self.tiles_n or tile_candidates(case.n)
        tk = self.tiles_k or tile_candidates(case.k)
        for label, ts, d in (("n", tn, case.n), ("k", tk, case.k)):
            bad = [t for t in ts if t < 1 or d % t]
            if bad:
                raise InputError(f"tile {label} {bad} does not divide {label} = {d} of {case.name}")
        return [(a, b) for a in tn for b in tk]

    def points(self, case: LayerCase) -> dict[str, np.ndarray]:
        """The dataflow points of one tile (dataflow x loop order x Tm), flattened."""
        tms = self.tiles_m or m_tile_candidates(case.m)
        grid = list(itertools.product(range(len(self.dataflows)), range(len(self.loop_orders)), tms))
        df = np.array([DATAFLOWS.index(self.dataflows[a]) for a, _, _ in grid])
        lo = np.array([LOOP_ORDERS.index(self.loop_orders[b]) for _, b, _ in grid])
        tm = np.array([min(c, case.m) for _, _, c in grid], dtype=np.float64)
        return {"df": df, "lo": lo, "tm": tm}


def memory_traffic(case: LayerCase, mach: Machine, tm: Any, tn: Any, tk: Any, df: Any, lo: Any, wbytes: Any,
                   concordant: Any) -> dict[str, np.ndarray]:
    """DRAM and buffer bytes, memory energy (pJ) and feasibility of one instance of `case` per
    dataflow point (all arguments broadcast). `df`: index into DATAFLOWS; `lo`: into LOOP_ORDERS;
    `wbytes`: the weights' stored bytes; `concordant`: the format is decoded in the array's order
    (else the buffer holds and the array reads a dense copy of each tile)."""
    m, n, k = case.m, case.n, case.k
    tm, tn, tk = (np.asarray(x, dtype=np.float64) for x in (tm, tn, tk))
    df, lo = np.asarray(df), np.asarray(lo)
    wbytes = np.asarray(wbytes, dtype=np.float64)
    conc = np.asarray(concordant, dtype=bool)
    acc = 32 if mach.fp else min(case.act_bits, mach.act_bits) + min(case.value_bits, mach.weight_bits) + 16
    pb = acc / 8.0
    xb = case.x_bytes
    yb = m * n * case.out_bits / 8.0
    wd = case.dense_bytes
    w_arr = np.where(conc, wbytes, wd)  # what the buffer holds and the array reads
    tm = np.minimum(tm, m)
    fits = tm * tk * (xb / (m * k)) + tn * tk * (w_arr / (n * k)) + tm * tn * pb <= mach.glb_bytes * (1 + 1e-9)
    cm, cn, ck = np.ceil(m / tm), np.ceil(n / tn), np.ceil(k / tk)
    pm, pn, pk = _POS[lo, 0], _POS[lo, 1], _POS[lo, 2]
    r_w = np.where((cm > 1) & (((pm < pn) & (cn > 1)) | ((pm < pk) & (ck > 1))), cm, 1.0)
    r_x = np.where((cn > 1) & (((pn < pm) & (cm > 1)) | ((pn < pk) & (ck > 1))), cn, 1.0)
    s_y = np.where((ck > 1) & (((pk < pm) & (cm > 1)) | ((pk < pn) & (cn > 1))), ck, 1.0)
    dram = wbytes * r_w + xb * r_x + yb + 2.0 * (s_y - 1) * m * n * pb
    kp = math.ceil(k / mach.lanes)
    psum = m * n * pb * (2 * math.ceil(kp / mach.rows) - 1)
    ws, os_ = df == 0, df == 1
    arr_w = w_arr * np.where(ws, cm, np.where(os_, math.ceil(m / mach.rows), math.ceil(m / mach.cols)))
    arr_x = xb * np.where(df == 2, cn, math.ceil(n / mach.cols))
    arr_y = np.where(os_, yb, psum)
    expand = np.where(conc, 0.0, wd * r_w)  # the dense copy written into the buffer per fetch
    glb = dram + arr_w + arr_x + arr_y + expand
    energy = dram * 8 * mach.dram_pj_per_bit + glb * 8 * mach.sram_pj_per_bit
    return {"dram_bytes": dram, "glb_bytes": glb, "energy_pj": np.where(fits, energy, np.inf), "feasible": fits}


# ---- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One co-search point: a format at a tile with a dataflow, and what it costs."""

    format: str
    dataflow: str
    loop_order: str
    tile: tuple[int, int, int]  # (Tm, Tn, Tk)
    weight_bytes: float
    concordant: bool
    energy_pj: float
    dram_bytes: float
    glb_bytes: float
    rle_bits: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"format": self.format, "dataflow": self.dataflow, "loop_order": self.loop_order,
                "tile": list(self.tile), "weight_bytes": self.weight_bytes, "concordant": self.concordant,
                "memory_energy_pj": self.energy_pj, "dram_bytes": self.dram_bytes, "glb_bytes": self.glb_bytes,
                "rle_bits": self.rle_bits}


@dataclass(frozen=True)
class SearchResult:
    case: LayerCase
    point: Point
    seconds: float
    size_evaluations: int  # formats (exhaustive) or ranks (search) whose size was computed
    energy_evaluations: int  # (format, dataflow point) energies computed
    method: str
    per_format: dict[str, Point] = field(default_factory=dict, compare=False, repr=False)  # exhaustive only

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.case.name, "m": self.case.m, "n": self.case.n, "k": self.case.k,
                "sparsity": self.case.sparsity, "method": self.method, "seconds": self.seconds,
                "size_evaluations": self.size_evaluations, "energy_evaluations": self.energy_evaluations,
                "best": self.point.as_dict()}


def _point(case: LayerCase, mach: Machine, fmt: FiberFormat, rle_bits: int | None, tile: tuple[int, int],
           pts: dict[str, np.ndarray], wbytes: float, j: int, space: Space) -> Point:
    conc = fmt.order_free or fmt.order == PREFERRED_ORDER[DATAFLOWS[int(pts["df"][j])]]
    t = memory_traffic(case, mach, pts["tm"][j], tile[0], tile[1], pts["df"][j], pts["lo"][j], wbytes, conc)
    return Point(fmt.name, DATAFLOWS[int(pts["df"][j])], LOOP_ORDERS[int(pts["lo"][j])],
                 (int(pts["tm"][j]), tile[0], tile[1]), float(wbytes), bool(conc), float(t["energy_pj"]),
                 float(t["dram_bytes"]), float(t["glb_bytes"]), rle_bits if fmt.prims[-1] == "RLE" else None)


def _concordance(fmt: FiberFormat, df: np.ndarray) -> np.ndarray:
    pref = np.array([PREFERRED_ORDER[d] == fmt.order for d in DATAFLOWS])
    return np.ones(df.shape, bool) if fmt.order_free else pref[df]


def exhaustive(case: LayerCase, mach: Machine, space: Space | None = None) -> SearchResult:
    """Every format at every tile with every dataflow point; also the best point of every format
    (`per_format`, for fixed-format baselines)."""
    space = space or Space()
    t0 = time.perf_counter()
    tiles = space.tiles(case)
    pts = space.points(case)
    formats = space.formats()
    by_layout: dict[tuple[str, int, int], list[FiberFormat]] = {}
    for f in formats:
        by_layout.setdefault(f.layout, []).append(f)
    sizes = {f: np.full(len(tiles), np.inf) for f in formats}
    rbits = {f: np.zeros(len(tiles), dtype=np.int64) for f in formats}
    n_size = 0
    for ti, (tn, tk) in enumerate(tiles):
        for layout, fs in by_layout.items():
            st = case.stats(tn, tk, layout)
            if st is None:
                continue
            sz = _Sizer(st, case.value_bits)
            for f in fs:
                sizes[f][ti] = sz.size(f.prims) / 8 + case.scale_bytes
                rbits[f][ti] = sz.r
                n_size += 1
    tn_a = np.array([t[0] for t in tiles], dtype=np.float64)[:, None]
    tk_a = np.array([t[1] for t in tiles], dtype=np.float64)[:, None]
    best_e, best_f, best_ij = math.inf, None, (0, 0)
    per_format: dict[str, Point] = {}
    n_energy = 0
    for f in formats:
        w = sizes[f][:, None]
        conc = _concordance(f, pts["df"])[None, :]
        e = memory_traffic(case, mach, pts["tm"][None, :], tn_a, tk_a, pts["df"][None, :], pts["lo"][None, :], w,
                           conc)["energy_pj"]
        e = np.where(np.isfinite(w), e, np.inf)
        n_energy += int(np.isfinite(sizes[f]).sum()) * pts["df"].size
        flat = int(np.argmin(e))
        fe = float(e.flat[flat])
        if not math.isfinite(fe):
            continue
        ti, j = divmod(flat, pts["df"].size)
        per_format[f.name] = _point(case, mach, f, int(rbits[f][ti]), tiles[ti], pts, float(sizes[f][ti]), j, space)
        if best_f is None or _lt(fe, best_e):
            best_e, best_f, best_ij = fe, f, (ti, j)
    if best_f is None:
        raise InputError(f"{case.name}: no tile of the space fits the {mach.glb_bytes / 1024:g} KiB buffer of "
                         f"{mach.name}; allow smaller tiles")
    ti, j = best_ij
    p = _point(case, mach, best_f, int(rbits[best_f][ti]), tiles[ti], pts, float(sizes[best_f][ti]), j, space)
    return SearchResult(case, p, time.perf_counter() - t0, n_size, n_energy, "exhaustive", per_format)


def search(case: LayerCase, mach: Machine, space: Space | None = None) -> SearchResult:
    """The co-search's best point, exactly, without enumerating formats x dataflows (module doc:
    dominance, a DP over ranks, a values-only bound over tiles)."""
    space = space or Space()
    t0 = time.perf_counter()
    tiles = space.tiles(case)
    pts = space.points(case)
    P = pts["df"].size
    lays = space.layouts()
    # bound per tile: weights at their values' bytes alone, in stream order
    lb_w = case.n * case.k * case.density * case.value_bits / 8 + case.scale_bytes
    if case.mask is not None:
        lb_w = float(_as_mask(case.mask).sum()) * case.value_bits / 8 + case.scale_bytes
    tn_a = np.array([t[0] for t in tiles], dtype=np.float64)
    tk_a = np.array([t[1] for t in tiles], dtype=np.float64)
    lb = memory_traffic(case, mach, pts["tm"][None, :], tn_a[:, None], tk_a[:, None], pts["df"][None, :],
                        pts["lo"][None, :], lb_w, True)["energy_pj"].min(axis=1)
    n_energy = len(tiles) * P
    n_size = 0
    best: tuple[float, Any] = (math.inf, None)
    for ti in np.argsort(lb, kind="stable"):
        if not math.isfinite(lb[ti]) or (best[1] is not None and not _lt(lb[ti], best[0])):
            break  # sorted: no later tile can do better
        tn, tk = tiles[ti]
        cands: list[tuple[FiberFormat, float, int | None]] = []
        for order in ORDERS:
            top: tuple[float, Any, Any] = (math.inf, None, None)
            for layout in lays:
                if layout[0] != order:
                    continue
                st = case.stats(tn, tk, layout)
                if st is None:
                    continue
                sz = _Sizer(st, case.value_bits)
                bits, prims, cnt = sz.best(space.primitives)
                n_size += cnt
                if top[1] is None or _lt(bits, top[0]):
                    top = (bits, FiberFormat(order, prims, layout[2]), sz.r)
            if top[1] is not None:
                cands.append((top[1], top[0] / 8 + case.scale_bytes, top[2]))
        if "U" in space.primitives:  # the first order-free (all-U) format of the space valid at this tile
            for layout in lays:
                if layout_shapes(layout, tn, tk) is not None:
                    cands.append((FiberFormat(layout[0], ("U",) * layout[1], layout[2]), case.dense_bytes, None))
                    break
        for f, wb, r in cands:
            conc = _concordance(f, pts["df"])
            e = memory_traffic(case, mach, pts["tm"], tn, tk, pts["df"], pts["lo"], wb, conc)["energy_pj"]
            n_energy += P
            j = int(np.argmin(e))
            if math.isfinite(e[j]) and (best[1] is None or _lt(float(e[j]), best[0])):
                best = (float(e[j]), (f, r, (tn, tk), wb, j))
    if best[1] is None:
        raise InputError(f"{case.name}: no tile of the space fits the {mach.glb_bytes / 1024:g} KiB buffer of "
                         f"{mach.name}; allow smaller tiles")
    f, r, tile, wb, j = best[1]
    p = _point(case, mach, f, r, tile, pts, wb, j, space)
    return SearchResult(case, p, time.perf_counter() - t0, n_size, n_energy, "search")


def fixed_format(case: LayerCase, mach: Machine, fmt: FiberFormat | str, space: Space | None = None) -> Point | None:
    """The best dataflow point for one format held fixed (None: it fits no tile of the space)."""
    fmt = FiberFormat.parse(fmt) if isinstance(fmt, str) else fmt
    space = space or Space()
    tiles = space.tiles(case)
    pts = space.points(case)
    best: tuple[float, Any] = (math.inf, None)
    conc = _concordance(fmt, pts["df"])
    for tn, tk in tiles:
        st = case.stats(tn, tk, fmt.layout)
        if st is None:
            continue
        sz = _Sizer(st, case.value_bits)
        wb = sz.size(fmt.prims) / 8 + case.scale_bytes
        e = memory_traffic(case, mach, pts["tm"], tn, tk, pts["df"], pts["lo"], wb, conc)["energy_pj"]
        j = int(np.argmin(e))
        if math.isfinite(e[j]) and (best[1] is None or _lt(float(e[j]), best[0])):
            best = (float(e[j]), (sz.r, (tn, tk), wb, j))
    if best[1] is None:
        return None
    r, tile, wb, j = best[1]
    return _point(case, mach, fmt, r, tile, pts, wb, j, space)


def sequential(case: LayerCase, mach: Machine, space: Space | None = None) -> tuple[FiberFormat, Point | None]:
    """Format first, then dataflow: the smallest format of the whole (untiled) matrix, then the best
    dataflow point for it held fixed; what a search that does not couple the two finds."""
    space = space or Space()
    best: tuple[float, Any] = (math.inf, None)
    for layout in space.layouts():
        st = case.stats(case.n, case.k, layout)
        if st is None:
            continue
        bits, prims, _ = _Sizer(st, case.value_bits).best(space.primitives)
        if best[1] is None or _lt(bits, best[0]):
            best = (bits, FiberFormat(layout[0], prims, layout[2]))
    f = best[1]
    return f, fixed_format(case, mach, f, space)


def best_single_format(per_case: list[dict[str, Point]], best: list[float]) -> tuple[str, float]:
    """The one format that, used for every case, loses least on average against each case's best:
    (format, mean saving of the co-searched best over it). `per_case[i]`: format -> its best point
    in case i (exhaustive's per_format); `best[i]`: the co-searched best energy of case i."""
    common = set(per_case[0])
    for d in per_case[1:]:
        common &= set(d)
    if not common:
        raise InputError("no format is feasible in every case")
    scored = []
    for f in sorted(common):
        sav = [1.0 - b / d[f].energy_pj for d, b in zip(per_case, best, strict=True)]
        scored.append((float(np.mean(sav)), f))
    s, f = min(scored)
    return f, s


def describe_space(case: LayerCase, space: Space) -> dict[str, int]:
    """Sizes of the joint space for one case."""
    tiles = space.tiles(case)
    pts = space.points(case)
    n_fmt = 0
    for tn, tk in tiles:
        for f in space.formats():
            if f.shapes(tn, tk) is not None:
                n_fmt += 1
    return {"formats": len(space.formats()), "tiles": len(tiles), "dataflow_points_per_tile": int(pts["df"].size),
            "joint_points": n_fmt * int(pts["df"].size)}


# ---- a report over many cases ------------------------------------------------------------------------


def co_search(cases: Sequence[LayerCase], mach: Machine, space: Space | None = None, check: bool = False,
              fixed: dict[str, str] | None = None) -> dict[str, Any]:
    """Per case: the co-searched best point, the best point of each fixed format (`fixed`: label ->
    format; default CLASSIC), the format-then-dataflow point; with `check`, the exhaustive search
    too (its time, whether it finds the same energy) and the best single format of the whole space.
    Summary: the best single fixed format (the one whose mean loss against each case's best is
    smallest) and the mean saving of the co-search over it."""
    space = space or Space()
    fixed = dict(CLASSIC if fixed is None else fixed)
    rows: list[dict[str, Any]] = []
    per_case_fixed: list[dict[str, Point]] = []
    per_case_all: list[dict[str, Point]] = []
    for c in cases:
        s = search(c, mach, space)
        best = s.point.energy_pj
        pts = {}
        for label, f in fixed.items():
            p = fixed_format(c, mach, f, space)
            if p is not None:
                pts[label] = p
        per_case_fixed.append(pts)
        seq_f, seq_p = sequential(c, mach, space)
        row: dict[str, Any] = {
            "layer": c.name, "m": c.m, "n": c.n, "k": c.k, "sparsity": c.sparsity, "value_bits": c.value_bits,
            "best": s.point.as_dict(), "search_s": s.seconds, "search_size_evals": s.size_evaluations,
            "search_energy_evals": s.energy_evaluations,
            "fixed": {label: {"format": p.format, "memory_energy_pj": p.energy_pj,
                              "saving": 1.0 - best / p.energy_pj} for label, p in pts.items()},
            "sequential": {"format": seq_f.name, "memory_energy_pj": seq_p.energy_pj if seq_p else None,
                           "saving": (1.0 - best / seq_p.energy_pj) if seq_p else None},
        }
        if check:
            ex = exhaustive(c, mach, space)
            per_case_all.append(ex.per_format)
            row.update(exhaustive_s=ex.seconds, exhaustive_size_evals=ex.size_evaluations,
                       exhaustive_energy_evals=ex.energy_evaluations, exhaustive_best=ex.point.as_dict(),
                       same_energy=not _lt(best, ex.point.energy_pj) and not _lt(ex.point.energy_pj, best),
                       same_point=ex.point == s.point)
        rows.append(row)
    bests = [r["best"]["memory_energy_pj"] for r in rows]
    summary: dict[str, Any] = {"cases": len(rows), "search_s": sum(r["search_s"] for r in rows)}
    if per_case_fixed and all(per_case_fixed):
        f, sav = best_single_format([{lab: p for lab, p in d.items()} for d in per_case_fixed], bests)
        summary["best_fixed_classic"] = {"label": f, "format": fixed[f], "mean_saving": sav}
        summary["mean_saving_by_fixed"] = {lab: float(np.mean([r["fixed"][lab]["saving"] for r in rows]))
                                          for lab in fixed if all(lab in r["fixed"] for r in rows)}
    seq = [r["sequential"]["saving"] for r in rows if r["sequential"]["saving"] is not None]
    summary["mean_saving_over_sequential"] = float(np.mean(seq)) if seq else None
    if check:
        f, sav = best_single_format(per_case_all, bests)
        summary["best_fixed_any"] = {"format": f, "mean_saving": sav}
        summary["exhaustive_s"] = sum(r["exhaustive_s"] for r in rows)
        summary["all_same_energy"] = all(r["same_energy"] for r in rows)
        for r, d in zip(rows, per_case_all, strict=True):
            r["fixed_any"] = {"format": f, "memory_energy_pj": d[f].energy_pj,
                              "saving": 1.0 - r["best"]["memory_energy_pj"] / d[f].energy_pj}
    return {"machine": mach.name, "rows": rows, "summary": summary}
