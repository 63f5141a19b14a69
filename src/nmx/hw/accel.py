"""A parametric, analytical sparse accelerator, vectorized over design points.

    from nmx.hw.accel import evaluate, gemm_problem
    from nmx.hw.accel_spec import load_accel
    spec = load_accel("examples/hw/nm24_16x16_ws.yaml")
    r = evaluate(spec, gemm_problem(1, 4096, 4096, weights="int8", activations="int8", pattern="2:4"))
    r.latency_s, r.energy_pj, r.area_um2, r.utilization, r.energy_breakdown
    p = spec.params(); p["rows"] = np.array([8, 16, 32]); evaluate(p, llm_workload("llama-2-7b"))

Every parameter of `params` may be a numpy array; all broadcast against each other (the
design-point axes) and every output has the broadcast shape. Closed form, no search, no loops
over design points. Energies in pJ, areas in um^2, from nmx.hw.tech. Leakage is not modelled.

The machine
-----------
A rows x cols array of PEs; each PE has `lanes` MAC lanes, per-PE registers, one on-chip SRAM
global buffer (glb) and off-chip DRAM. A GEMM is Y[m, n] = sum_k X[m, k] W[n, k] (X activations,
W weights; attention runs as the two GEMMs QK^T and PV with K / V as the "weights").

PE kinds (all from the same parameters):
  dense       `lanes` MACs per cycle, each consuming one K position.
  N:M         nm_group = M (the mux fan-in) and nm_mask = the set of N it runs natively. A weight
              pattern n:m with m == M runs natively at the smallest supported N' >= n ("nearest
              supported density": 1:4 on a 2:4-only PE runs as 2:4 with the spare slot holding a
              zero); each lane then covers M/N' K positions per cycle (the index selects the
              activation through an M:1 mux; with several supported N the lanes are assumed to
              pack groups perfectly -- the reconfigurable USPE-style PE). Any other pattern
              (other M, unstructured, dense) runs dense: one K position per lane per cycle.
  bit-serial  the lane consumes bits_per_cycle activation bits per cycle (Stripes-style):
              passes = ceil(act_bits / bits_per_cycle) cycles per MAC, on a
              bits_per_cycle x weight_bits multiplier + shift-add. BFP activations (bfp_mM_gG,
              Anda-style) stream only their M mantissa bit-planes (the sign plane selects add or
              subtract): passes = ceil(M / bits_per_cycle) + serial_overhead (fixed cycles per MAC
              sequence: the shared-exponent add and the FP32 accumulation across groups).
              The PE is a bit-serial dot-product unit: `lanes` bits_per_cycle x weight_bits partial
              products (AND gates for 1 bit), an adder tree (lanes - 1 integer adders, one bit wider per
              level) and ONE shift-accumulator per PE -- not an accumulator per lane as a dense PE has
              (its area and per-pass energy are shared by the lanes). With serial_overhead > 0 the
              overhead cycle is the PE's flush of its integer sum into an FP32 accumulator (an 8-bit
              exponent add + an FP32 add + a 32-bit register, in area; per MAC sequence, in energy),
              and the shift-accumulator spans one sequence: act_bits + weight_bits + ceil(log2 lanes)
              bits (else act_bits + weight_bits + 16 as a dense integer MAC's). Lane energy is charged
              per data pass (the overhead cycles move no operand bits; the flush is charged instead).
              `bitplane` (an on-the-fly compressor turning BFP activations into bit-planes) costs
              (act_bits + 8) adder bit-slices per activation element (mantissa alignment, the
              group's max-exponent compare) in the `decode` energy, and one 16-bit adder per array
              column of area; it is pipelined, so it adds no cycles.
  Operands wider than the datapath take ceil(op_bits / datapath_bits) passes per operand.
  Energy per pass is evaluated at the operand width capped by the datapath (upper zero bits of a
  narrower operand do not switch -- an approximation).

Sparsity beyond what the PE runs natively (unstructured weights, the residual zeros of 1:4 on a
2:4 PE, sparse activations):
  none   every issued MAC costs full energy;
  gate   ineffectual MACs (a zero operand) are gated: no datapath energy, same cycles;
  skip   ineffectual MACs of an operand held in a compressed format (not `dense`) are skipped:
         no energy and no cycles -- assuming ideal load balance (an upper bound on the gain).

Compute cycles (spatial mapping by dataflow; K' = ceil(K / K positions per PE-cycle)):
  weight stationary  rows <- K', cols <- N, streams M    (TPU-like)
  output stationary  rows <- M,  cols <- N, streams K'
  input stationary   rows <- K', cols <- M, streams N
  tiles = ceil(rows_dim / R) * ceil(cols_dim / C); per tile max(stream * passes * skip, R) cycles
  (the stationary operand of a tile takes R cycles to load, double-buffered behind the previous
  tile); + R + C pipeline fill/drain once. Utilization = busy PE-cycles / (R * C * cycles): it
  includes tile quantization of M, N, K onto the array and the load-bound tiles of small M.

Buffer tiling and DRAM traffic: a buffer tile (Tm, Tn, Tk) and a loop order over the tiles (outer
-> inner; default per dataflow WS n,k,m / OS m,n,k / IS m,k,n). An operand is re-fetched once per
iteration of every loop it does not depend on that sits outside a loop (with > 1 iteration) it
does depend on; Y re-fetched that way spills partial sums (written and read back at accumulator
width). Default tiles: the stationary operand takes half the buffer as a near-square tile (WS:
W[Tn, Tk]; OS: Y[Tm, Tn]; IS: X[Tm, Tk]), the third dim gets the largest tile whose X/W/Y slices
fit a quarter. `mapping.tile` / `mapping.loops` override them; a tile set that does not fit the
buffer or loops that do not cover the problem make the design point infeasible (inf latency).
Operand bytes are the storage sizes of nmx.sparsity.storage for the operand's format (values +
metadata) plus the number format's scales: metadata traffic is counted wherever the operand moves.

Buffer (glb) traffic: fills from and write-backs to DRAM, plus the array side -- WS: W once per
m-tile, X once per column tile of the array (ceil(N / C)), partial sums 2 ceil(K'/R) - 1 times;
OS: W once per ceil(M / R), X once per ceil(N / C), Y once; IS: X once per n-tile, W once per
ceil(M / C), partial sums as WS.

cycles = max(compute, glb bytes / glb bandwidth, DRAM bytes / DRAM bandwidth) with overlap, their
sum without. Energy: MAC passes x (multiplier + accumulator add) + register bits (operands read,
accumulator read and written per MAC) + N:M index muxes (a 2:1 mux bit ~ one adder bit-slice,
log2(fan-in) levels per activation bit) + glb bits x SRAM energy(capacity) + DRAM bits x pJ/bit +
format decode (one adder bit-slice per metadata bit delivered to the array) + vector-unit work.
Area: PEs (lanes x MAC -- bit-serial: lanes x partial product + adder tree + one accumulator (+ the
FP32 flush) -- + muxes + registers) + glb SRAM + one index decoder (16-bit adder) per array column.
Norms, activations, softmax and the embedding run on a vector unit of `cols` lanes:
cycles = max(flops / cols, DRAM bytes / bandwidth); energy = flops x fp16 add + DRAM bytes.
"""

from __future__ import annotations

import math

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Union

import numpy as np

from nmx.errors import InputError
from nmx.hw.accel_spec import DATAFLOWS, OPERAND_FORMATS, SPARSITY_MODES, AccelSpec
from nmx.hw.tech import NODES_NM, get_tech

log = logging.getLogger(__name__)

LOOP_ORDERS = tuple("".join(p) for p in itertools.permutations("mnk"))  # outer -> inner
DEFAULT_ORDER = {"weight": "nkm", "output": "mnk", "input": "mkn"}
_POS = np.array([[o.index(d) for d in "mnk"] for o in LOOP_ORDERS])  # [order, dim] -> position
_DEFAULT_ORDER_IDX = np.array([LOOP_ORDERS.index(DEFAULT_ORDER[d]) for d in DATAFLOWS])
_DENSE = OPERAND_FORMATS.index("dense")

#: parameter names of the model (each a scalar or a numpy array), with what they mean
PARAMS = {
    "rows": "PE array rows", "cols": "PE array columns", "lanes": "MAC lanes per PE",
    "nm_group": "M of the N:M hardware (0 = none)", "nm_mask": "bit n-1 set: N = n runs natively",
    "bit_serial": "1 = bit-serial PE", "bits_per_cycle": "bit-serial activation bits per cycle",
    "arith_fp": "1 = floating-point MAC, 0 = integer", "act_bits": "activation datapath bits",
    "weight_bits": "weight datapath bits", "reg_bytes": "register bytes per PE",
    "glb_kb": "global buffer KiB", "glb_bw": "global buffer bytes per cycle",
    "dram_gb_s": "DRAM bandwidth GB/s", "dram_pj_per_bit": "DRAM energy pJ/bit",
    "clock_ghz": "clock GHz", "tech_nm": "technology node nm",
    "dataflow": "0 weight / 1 output / 2 input stationary", "loop_order": "-1 default, else index of LOOP_ORDERS",
    "weights_format": "index of OPERAND_FORMATS", "activations_format": "index of OPERAND_FORMATS",
    "sparsity_mode": "0 none / 1 gate / 2 skip", "overlap": "1 = overlap compute and memory",
    "tile_m": "buffer tile m (0 auto)", "tile_n": "buffer tile n (0 auto)", "tile_k": "buffer tile k (0 auto)",
    "loops_m": "DRAM-level loops over m (0 auto)", "loops_n": "(n)", "loops_k": "(k)",
    "serial_overhead": "bit-serial: fixed cycles per MAC sequence (exponent add, FP32 accumulate)",
    "bitplane": "1 = on-the-fly bit-plane compressor for BFP activations",
}
#: parameters a parameter dict may leave out (their default keeps the model as it was without them)
OPTIONAL_PARAMS = {"serial_overhead": 0, "bitplane": 0}


# ---- problems -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gemm:
    """One GEMM Y[m, n] = X[m, k] W[n, k]^T, `count` instances, with the operand storage sizes
    (bits, metadata bits) of every operand format precomputed (OPERAND_FORMATS order)."""

    name: str
    m: int
    n: int
    k: int
    count: float
    act_bits: int
    weight_bits: int
    out_bits: int
    weight_kind: str
    pattern_n: int  # N:M pattern of W (0: none)
    pattern_m: int
    weight_density: float
    act_density: float
    w_bits: tuple[float, ...]  # total storage bits of W per operand format
    w_meta_bits: tuple[float, ...]
    x_bits: tuple[float, ...]
    x_meta_bits: tuple[float, ...]
    #: BFP activations: the mantissa bits a bit-serial PE streams (the sign selects add / subtract);
    #: 0 for any other format (a bit-serial PE streams all act_bits)
    act_serial_bits: int = 0
    #: the fraction of W's columns whose activation is nonzero in at least one of the m rows (measured
    #: activation sparsity, nmx.sparsity.activation): with `skip` and compressed activations, only these
    #: columns of W (values and metadata) move from DRAM and to the array
    weight_col_density: float = 1.0

    @property
    def macs(self) -> float:
        return float(self.m) * self.n * self.k


@dataclass(frozen=True)
class VectorOp:
    """Elementwise / reduction work on the vector unit (norms, activations, softmax, embedding)."""

    name: str
    count: float
    flops: float
    dram_bytes: float


Problem = Union[Gemm, VectorOp]


def _fmt_info(name: str | None) -> tuple[int, str, Any]:
    if name is None:
        return 16, "fp", None
    from nmx import formats
    from nmx.formats.elements import IntElement

    f = formats.get(name)
    return int(f.code_bits), ("int" if isinstance(f.element, IntElement) else "fp"), f


def _operand_sizes(shape: tuple[int, int], density: float, value_bits: int, scale_bits: float,
                   pattern: Any, auto_bits: float | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(bits, metadata bits) of an operand [rows, cols] in each OPERAND_FORMATS entry."""
    from nmx.sparsity.patterns import NMPattern
    from nmx.sparsity.storage import UNSTRUCTURED_CANDIDATES, best_format, get_storage

    sizes: dict[str, tuple[float, float]] = {}
    for fmt in OPERAND_FORMATS:
        if fmt in ("auto", "nm"):
            continue
        bd = get_storage(fmt).expected_breakdown(shape, density, value_bits)
        sizes[fmt] = (bd.bits + scale_bits, bd.metadata_bits)
    if isinstance(pattern, NMPattern) and shape[1] % pattern.m == 0:
        cands = [get_storage(f"nm{pattern.n}:{pattern.m}{s}").expected_breakdown(shape, pattern.density, value_bits)
                 for s in ("", "_comb")]
        bd = min(cands, key=lambda b: b.bits)
        sizes["nm"] = (bd.bits + scale_bits, bd.metadata_bits)
    if density >= 1.0:
        best = "dense"
    elif "nm" in sizes:
        best = "nm"
    else:
        best, _ = best_format(shape, density, value_bits, candidates=UNSTRUCTURED_CANDIDATES)
        best = "rle" if best.startswith("rle") else best
    sizes["auto"] = (auto_bits if auto_bits is not None else sizes[best][0], sizes[best][1])
    sizes.setdefault("nm", sizes["auto"])  # no N:M pattern: the `nm` format falls back to auto
    return (tuple(sizes[f][0] for f in OPERAND_FORMATS), tuple(sizes[f][1] for f in OPERAND_FORMATS))


def gemm_problem(m: int, n: int, k: int, *, weights: str | None = None, activations: str | None = None,
                 pattern: Any = None, act_density: float = 1.0, count: float = 1, name: str = "gemm",
                 weight_bytes: float | None = None, out_bits: int = 16, weight_col_density: float = 1.0) -> Gemm:
    """A GEMM with weights in number format `weights` pruned to `pattern` (N:M or unstructured),
    activations in `activations` with a fraction `act_density` of nonzeros. None = bf16.
    `weight_bytes` overrides the automatic (smallest) weight storage (e.g. a real mask's size).
    `weight_col_density`: the fraction of W's columns some row's activation needs (see Gemm)."""
    from nmx.sparsity.patterns import NMPattern, parse_pattern

    from nmx.hw.workload import MAX_SIZE

    for label, v in (("m", m), ("n", n), ("k", k)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise InputError(f"gemm {name}: {label} must be a positive integer, got {v!r}")
        if v > MAX_SIZE:
            raise InputError(f"gemm {name}: {label} = {v} is beyond what nmx models (at most {MAX_SIZE:,})")
    if not 0 < act_density <= 1:
        raise InputError(f"gemm {name}: act_density must be in (0, 1], got {act_density}")
    if not act_density - 1e-9 <= weight_col_density <= 1:
        raise InputError(f"gemm {name}: weight_col_density must be in [act_density, 1], got {weight_col_density}")
    pat = parse_pattern(pattern) if pattern is not None else None
    if isinstance(pat, NMPattern):
        pat.check_dim(k)
    density = pat.density if pat is not None else 1.0
    wb, wkind, wf = _fmt_info(weights)
    ab, _, af = _fmt_info(activations)
    w_scale = (8 * wf.storage_bytes((n, k)) - n * k * wf.code_bits) if wf is not None else 0.0
    x_scale = (8 * af.storage_bytes((m, k)) - m * k * af.code_bits) if af is not None else 0.0
    w_bits, w_meta = _operand_sizes((n, k), density, wb, w_scale, pat,
                                    None if weight_bytes is None else 8.0 * weight_bytes)
    x_bits, x_meta = _operand_sizes((m, k), act_density, ab, x_scale, None, None)
    return Gemm(name, int(m), int(n), int(k), float(count), ab, wb, int(out_bits), wkind,
                pat.n if isinstance(pat, NMPattern) else 0, pat.m if isinstance(pat, NMPattern) else 0,
                density, float(act_density), w_bits, w_meta, x_bits, x_meta,
                act_serial_bits=int(getattr(af, "mantissa_bits", 0) or 0) if getattr(af, "family", "") == "bfp" else 0,
                weight_col_density=float(weight_col_density))


def problems_from_workload(workload: Any) -> list[Problem]:
    """The GEMMs and vector ops of an nmx.hw.workload.Workload (attention as two GEMMs per KV head,
    the query heads of a GQA group stacked along m)."""
    from nmx import formats

    out: list[Problem] = []
    for op in workload.ops:
        if op.kind == "gemm":
            out.append(gemm_problem(op.m, op.n, op.k, weights=op.weight_format, activations=op.act_format,
                                    pattern=op.pattern, count=op.count, name=op.name,
                                    weight_bytes=op.weight_bytes, act_density=op.act_density,
                                    weight_col_density=max(op.act_col_density, op.act_density)))
        elif op.kind == "attention":
            g = op.heads_q // op.heads_kv
            kv = op.kv_len - (op.q_len - 1) / 2 if op.causal else op.kv_len  # mean visible keys (causal)
            kv = max(1, int(round(kv)))
            cnt = op.count * op.batch * op.heads_kv
            # an attention op with r x the forward's FLOPs (a backward pass, nmx.hw.training) runs its
            # two GEMMs r times; r is exactly 1 for a forward pass (the same expression as attention_op)
            pairs = op.q_len * op.kv_len - (op.q_len * (op.q_len - 1) // 2 if op.causal else 0)
            forward = 4.0 * op.batch * op.heads_q * pairs * op.head_dim
            if forward > 0 and op.flops > 0 and abs(op.flops / forward - 1.0) > 1e-9:
                cnt *= op.flops / forward
            if op.kv_bytes_read:  # a decode step: the cache's bytes as the workload counts them (its KV
                # policy's real layout) plus the new token, per sequence, KV head and tensor (K or V)
                kvb = (op.kv_bytes_read + op.kv_bytes_written) / (2 * op.batch * op.heads_kv)
            else:
                kvb = (formats.get(op.kv_format).storage_bytes((kv, op.head_dim)) if op.kv_format
                       else kv * op.head_dim * 2.0)
            out.append(gemm_problem(op.q_len * g, kv, op.head_dim, weights=op.kv_format, count=cnt,
                                    name=f"{op.name}.qk", weight_bytes=kvb))
            out.append(gemm_problem(op.q_len * g, op.head_dim, kv, weights=op.kv_format, count=cnt,
                                    name=f"{op.name}.pv", weight_bytes=kvb))
            out.append(VectorOp(f"{op.name}.softmax", op.count, 5.0 * op.elements, op.kv_bytes_written))
        else:
            out.append(VectorOp(op.name, op.count, op.flops, op.bytes_read + op.bytes_written))
    return out


# ---- parameters ---------------------------------------------------------------------------------


def nm_mask(supported: Iterable[int]) -> int:
    return int(sum(1 << (n - 1) for n in set(supported)))


def params_from_spec(spec: AccelSpec) -> dict[str, Any]:
    """The model's scalar parameters for one AccelSpec."""
    return {
        "rows": spec.rows, "cols": spec.cols, "lanes": spec.lanes, "nm_group": spec.nm_group,
        "nm_mask": nm_mask(spec.nm_supported), "bit_serial": int(spec.pe_kind == "bit_serial"),
        "bits_per_cycle": spec.bits_per_cycle, "arith_fp": int(spec.arith == "fp"), "act_bits": spec.act_bits,
        "weight_bits": spec.weight_bits, "reg_bytes": spec.reg_bytes_per_pe, "glb_kb": spec.glb_kb,
        "glb_bw": spec.glb_bw_bytes_per_cycle, "dram_gb_s": spec.dram_gb_s, "dram_pj_per_bit": spec.dram_pj_per_bit,
        "clock_ghz": spec.clock_ghz, "tech_nm": spec.tech_nm, "dataflow": DATAFLOWS.index(spec.dataflow),
        "loop_order": LOOP_ORDERS.index(spec.loop_order) if spec.loop_order else -1,
        "weights_format": OPERAND_FORMATS.index(spec.weights_format),
        "activations_format": OPERAND_FORMATS.index(spec.activations_format),
        "sparsity_mode": SPARSITY_MODES.index(spec.sparsity_mode), "overlap": int(spec.overlap),
        "tile_m": spec.tile[0], "tile_n": spec.tile[1], "tile_k": spec.tile[2],
        "loops_m": spec.loops[0], "loops_n": spec.loops[1], "loops_k": spec.loops[2],
        "serial_overhead": spec.serial_overhead, "bitplane": int(spec.bitplane),
    }


def _tech_arrays(node: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    techs = [get_tech(n) for n in NODES_NM]
    bad = ~np.isin(node, NODES_NM)
    if np.any(bad):
        raise InputError(f"tech_nm {np.unique(node[bad]).tolist()} is not tabulated; use one of "
                         f"{', '.join(map(str, NODES_NM))}")
    conds = [node == n for n in NODES_NM]
    es = np.select(conds, [t.energy_scale for t in techs])
    as_ = np.select(conds, [t.area_scale for t in techs])
    cell = np.select(conds, [t.sram_area_um2_per_bit() for t in techs])
    return es, as_, cell


def check_mapping(params: dict[str, Any], problems: Iterable[Problem], where: str = "mapping") -> None:
    """Refuse explicit DRAM-level loops that do not cover a GEMM (one line naming the field)."""
    for g in problems:
        if not isinstance(g, Gemm):
            continue
        for d in "mnk":
            loops = int(np.max(params.get(f"loops_{d}", 0)))
            tile = int(np.max(params.get(f"tile_{d}", 0)))
            if loops > 0:
                if tile <= 0:
                    raise InputError(f"{where}.loops.{d}: loop counts need an explicit mapping.tile.{d}")
                if tile * loops < getattr(g, d):
                    raise InputError(f"{where}.loops.{d}: {loops} x tile {tile} = {tile * loops} does not cover "
                                     f"{d} = {getattr(g, d)} of {g.name}; raise the loops or the tile")


# ---- results ------------------------------------------------------------------------------------

ENERGY_PARTS = ("mac", "reg", "mux", "glb", "dram", "decode", "vector")
AREA_PARTS = ("mac", "mux", "reg", "glb", "decode")


@dataclass(frozen=True)
class AccelResult:
    """Per design point (arrays of the broadcast shape): latency, energy, area, utilization."""

    cycles: np.ndarray
    latency_s: np.ndarray
    energy_pj: np.ndarray
    area_um2: np.ndarray
    utilization: np.ndarray
    energy_breakdown: dict[str, np.ndarray]
    area_breakdown: dict[str, np.ndarray]
    compute_cycles: np.ndarray
    glb_cycles: np.ndarray
    dram_cycles: np.ndarray
    dram_bytes: np.ndarray
    glb_bytes: np.ndarray
    metadata_bytes: np.ndarray
    macs_issued: np.ndarray
    macs_executed: np.ndarray
    macs_effectual: np.ndarray
    feasible: np.ndarray
    per_op: list[dict[str, Any]] = field(default_factory=list)

    @property
    def area_mm2(self) -> np.ndarray:
        return self.area_um2 * 1e-6

    def point(self, i: int | tuple = ()) -> dict[str, Any]:
        """One design point as plain floats (for JSON)."""
        def at(a: np.ndarray) -> float:
            a = np.asarray(a)
            return float(a[i]) if a.ndim else float(a)

        out = {k: at(getattr(self, k)) for k in ("latency_s", "cycles", "energy_pj", "area_um2", "utilization",
                                                  "compute_cycles", "glb_cycles", "dram_cycles", "dram_bytes",
                                                  "glb_bytes", "metadata_bytes", "macs_issued", "macs_executed",
                                                  "macs_effectual")}
        out["feasible"] = bool(np.asarray(self.feasible)[i] if np.ndim(self.feasible) else self.feasible)
        out["energy_breakdown_pj"] = {k: at(v) for k, v in self.energy_breakdown.items()}
        out["area_breakdown_um2"] = {k: at(v) for k, v in self.area_breakdown.items()}
        return out


# ---- the model ----------------------------------------------------------------------------------


class _Design:
    """Parameters as arrays plus the design-only quantities (tech scales, areas, SRAM energy)."""

    def __init__(self, params: dict[str, Any]):
        params = {**OPTIONAL_PARAMS, **params}
        missing = [k for k in PARAMS if k not in params]
        if missing:
            raise InputError(f"accelerator parameters missing: {', '.join(missing)}")
        unknown = [k for k in params if k not in PARAMS]
        if unknown:
            raise InputError(f"unknown accelerator parameter(s) {', '.join(unknown)}; known: {', '.join(PARAMS)}")
        p = {k: np.asarray(v) for k, v in params.items()}
        for k in ("rows", "cols", "lanes", "bits_per_cycle", "act_bits", "weight_bits", "glb_kb", "glb_bw",
                  "dram_gb_s", "clock_ghz", "reg_bytes"):
            if np.any(p[k] <= 0):
                raise InputError(f"accelerator parameter {k} must be > 0, got {np.min(p[k])}")
        self.shape = np.broadcast_shapes(*(a.shape for a in p.values()))
        self.p = p
        t45 = get_tech(45)
        self.es, self.as_, cell = _tech_arrays(p["tech_nm"])
        fp = p["arith_fp"].astype(bool)
        bs = p["bit_serial"].astype(bool)
        self.fp, self.bs = fp, bs
        # datapath: multiplier a_dp x w_dp, accumulator acc_dp
        a_dp = np.where(bs, p["bits_per_cycle"], p["act_bits"])
        w_dp = p["weight_bits"]
        acc_dp = np.where(fp, 32, p["act_bits"] + w_dp + 16)
        mul_a = _by_kind(fp, lambda k: t45.mul_area_um2(k, np.asarray(a_dp, float), np.asarray(w_dp, float)))
        add_a = _by_kind(fp, lambda k: t45.add_area_um2(k, np.asarray(acc_dp, float)))
        reg_um2 = t45.reg_area_um2_per_bit()
        mac_a = mul_a + add_a + acc_dp * reg_um2
        # bit-serial PE (Stripes / Anda style): the lanes' partial products are reduced by an adder tree into
        # one shift-accumulator per PE (a dense PE keeps one accumulator per lane); with serial_overhead > 0
        # the PE flushes that integer sum once per MAC sequence into an FP32 accumulator (exponent add +
        # FP32 add + FP32 register), so the shift-accumulator only spans one sequence
        self.flush = bs & (p["serial_overhead"] > 0)
        self.bs_acc = np.where(self.flush, p["act_bits"] + w_dp + np.ceil(np.log2(p["lanes"])), acc_dp)
        bs_pe_a = (p["lanes"] * mul_a + _adder_tree(lambda b: t45.add_area_um2("int", b), p["lanes"], a_dp + w_dp)
                   + _by_kind(fp, lambda k: t45.add_area_um2(k, np.asarray(self.bs_acc, float)))
                   + self.bs_acc * reg_um2
                   + np.where(self.flush, t45.add_area_um2("int", 8) + t45.add_area_um2("fp", 32) + 32 * reg_um2,
                              0.0))
        grp = p["nm_group"]
        nsup = _popcount(p["nm_mask"])
        self.fan_in = np.where(grp > 0, grp * np.maximum(nsup, 1), 1)
        self.mux_bit_um2 = t45.add_area_um2("int", 8) / 8  # a 2:1 mux bit ~ one adder bit-slice
        mux_a = np.where(grp > 0, p["act_bits"] * (self.fan_in - 1) * self.mux_bit_um2, 0.0)
        npe = p["rows"] * p["cols"]
        self.area = {
            "mac": npe * np.where(bs, bs_pe_a, p["lanes"] * mac_a) * self.as_,
            "mux": npe * p["lanes"] * mux_a * self.as_,
            "reg": npe * p["reg_bytes"] * 8 * reg_um2 * self.as_,
            "glb": p["glb_kb"] * 1024 * 8 * cell,
            "decode": p["cols"] * t45.add_area_um2("int", 16) * self.as_ * (1 + (p["bitplane"] > 0)),
        }
        self.area_total = sum(self.area.values())
        self.sram_pj_bit = t45.sram_read_energy_pj_per_bit(p["glb_kb"] * 1024.0) * self.es
        self.reg_pj_bit = t45.reg_energy_pj_per_bit() * self.es
        self.bit_pj = t45.add_energy_pj("int", 8) / 8 * self.es  # one adder bit-slice (decode, mux level)
        self.dram_bpc = p["dram_gb_s"] / p["clock_ghz"]  # bytes per cycle
        self.glb_bytes_cap = p["glb_kb"] * 1024.0
        self.fp16_add_pj = t45.add_energy_pj("fp", 16) * self.es
        self.t45 = t45


def _adder_tree(law: Any, lanes: Any, width: Any) -> np.ndarray:
    """Sum of law(bits) over the adders of a binary tree reducing `lanes` inputs of `width` bits (level l
    adds floor(n/2) adders of width + l bits; n -> ceil(n/2)): lanes - 1 adders in all, none for one lane."""
    n = np.asarray(lanes, dtype=np.float64)
    width = np.asarray(width, dtype=np.float64)
    total = np.zeros(np.broadcast_shapes(n.shape, width.shape))
    level = 1
    while np.any(n > 1):
        total = total + np.floor(n / 2) * law(width + level)
        n = np.ceil(n / 2)
        level += 1
    return total


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.asarray(x, dtype=np.int64)).astype(np.int64)


def _by_kind(fp: np.ndarray, f: Any) -> np.ndarray:
    """f("fp") where fp else f("int"), computing only the branches some design point needs."""
    if not np.any(fp):
        return f("int")
    if np.all(fp):
        return f("fp")
    return np.where(fp, f("fp"), f("int"))


def _energy_law(t45: Any, op: str, fp: np.ndarray, a: Any, b: Any | None = None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if op == "mul":
        b = np.asarray(b, dtype=np.float64)
        return _by_kind(fp, lambda kind: t45.mul_energy_pj(kind, a, b))
    return _by_kind(fp, lambda kind: t45.add_energy_pj(kind, a))


def _eval_gemm(d: _Design, g: Gemm) -> dict[str, np.ndarray]:
    p = d.p
    R, C, lanes = p["rows"], p["cols"], p["lanes"]
    # -- operand widths and passes
    a_dp = np.where(d.bs, p["bits_per_cycle"], p["act_bits"])
    serial = d.bs & (g.act_serial_bits > 0)  # BFP on a bit-serial PE: mantissa bits only (+ fixed overhead)
    a_stream = np.where(serial, g.act_serial_bits, g.act_bits)
    w_passes = np.ceil(g.weight_bits / p["weight_bits"])
    data_passes = np.ceil(a_stream / a_dp) * w_passes  # cycles that move operand bits (no fixed overhead)
    passes = (np.ceil(a_stream / a_dp) + np.where(d.bs, p["serial_overhead"], 0)) * w_passes
    a_e = np.minimum(g.act_bits, a_dp)
    w_e = np.minimum(g.weight_bits, p["weight_bits"])
    acc = np.where(d.fp, 32, np.minimum(g.act_bits, p["act_bits"]) + w_e + 16)
    # -- N:M: natively run at the smallest supported N' >= n, else dense
    if g.pattern_m:
        n_eff = np.zeros(np.shape(p["nm_mask"]), dtype=np.float64)
        for n in range(g.pattern_m - 1, g.pattern_n - 1, -1):
            n_eff = np.where((p["nm_mask"] >> (n - 1)) & 1, n, n_eff)
        native = (p["nm_group"] == g.pattern_m) & (n_eff > 0)
        kept = np.where(native, n_eff / g.pattern_m, 1.0)
    else:
        native, kept = np.zeros((), bool), np.ones(())
    r_w = g.weight_density / kept  # nonzero fraction of the issued weight slots
    # -- sparsity handling
    mode = p["sparsity_mode"]
    skip = mode == 2
    f_cyc = np.where(skip & (p["weights_format"] != _DENSE), r_w, 1.0) \
        * np.where(skip & (p["activations_format"] != _DENSE), g.act_density, 1.0)
    # W columns of activations zero in every row are not fetched (skip with compressed activations)
    w_col = np.where(skip & (p["activations_format"] != _DENSE), g.weight_col_density, 1.0)
    # -- compute cycles
    kp = np.ceil(g.k * kept / lanes)  # K' : PE steps along k
    df = p["dataflow"]
    sr = np.where(df == 1, g.m, kp)
    sc = np.where(df == 2, g.m, g.n)
    st = np.where(df == 0, g.m, np.where(df == 1, kp, g.n))
    tiles = np.ceil(sr / R) * np.ceil(sc / C)
    per_tile = np.maximum(np.ceil(st * passes * f_cyc), R)
    compute = tiles * per_tile + R + C
    busy = g.m * g.n * kp * passes * f_cyc
    # -- operand bytes (format chosen per design point)
    wfmt, afmt = p["weights_format"], p["activations_format"]
    Wb = np.take(np.asarray(g.w_bits), wfmt) / 8
    Wm = np.take(np.asarray(g.w_meta_bits), wfmt) / 8
    Xb = np.take(np.asarray(g.x_bits), afmt) / 8
    Xm = np.take(np.asarray(g.x_meta_bits), afmt) / 8
    pb = acc / 8.0
    Yb = g.m * g.n * g.out_bits / 8.0
    wbe, abe = Wb / (g.n * g.k), Xb / (g.m * g.k)
    B = d.glb_bytes_cap
    # -- buffer tiles: stationary operand near-square in B/2, the third dim in B/4
    def fl(x: Any, hi: int) -> np.ndarray:
        return np.clip(np.floor(x), 1, hi)

    tk_w = fl(np.sqrt(B / 2 / wbe), g.k)
    tn_w = fl(B / 2 / (wbe * tk_w), g.n)
    tm_w = fl(B / 4 / np.maximum(tk_w * abe, tn_w * pb), g.m)
    tm_o = fl(np.sqrt(B / 2 / pb), g.m)
    tn_o = fl(B / 2 / (pb * tm_o), g.n)
    tk_o = fl(B / 4 / np.maximum(tm_o * abe, tn_o * wbe), g.k)
    tk_i = fl(np.sqrt(B / 2 / abe), g.k)
    tm_i = fl(B / 2 / (abe * tk_i), g.m)
    tn_i = fl(B / 4 / np.maximum(tk_i * wbe, tm_i * pb), g.n)
    sel = [df == 0, df == 1]
    Tm = np.select(sel, [tm_w, tm_o], tm_i)
    Tn = np.select(sel, [tn_w, tn_o], tn_i)
    Tk = np.select(sel, [tk_w, tk_o], tk_i)
    Tm = np.where(p["tile_m"] > 0, np.minimum(p["tile_m"], g.m), Tm)
    Tn = np.where(p["tile_n"] > 0, np.minimum(p["tile_n"], g.n), Tn)
    Tk = np.where(p["tile_k"] > 0, np.minimum(p["tile_k"], g.k), Tk)
    cm = np.where(p["loops_m"] > 0, p["loops_m"], np.ceil(g.m / Tm))
    cn = np.where(p["loops_n"] > 0, p["loops_n"], np.ceil(g.n / Tn))
    ck = np.where(p["loops_k"] > 0, p["loops_k"], np.ceil(g.k / Tk))
    fits = Tm * Tk * abe + Tn * Tk * wbe + Tm * Tn * pb <= B * (1 + 1e-9)
    covers = (cm * Tm >= g.m) & (cn * Tn >= g.n) & (ck * Tk >= g.k)
    feasible = fits & covers
    # -- re-fetch factors from the loop order
    lo = np.where(p["loop_order"] < 0, _DEFAULT_ORDER_IDX[df], p["loop_order"])
    pm, pn, pk = _POS[lo, 0], _POS[lo, 1], _POS[lo, 2]
    rW = np.where((cm > 1) & (((pm < pn) & (cn > 1)) | ((pm < pk) & (ck > 1))), cm, 1.0)
    rX = np.where((cn > 1) & (((pn < pm) & (cm > 1)) | ((pn < pk) & (ck > 1))), cn, 1.0)
    sY = np.where((ck > 1) & (((pk < pm) & (cm > 1)) | ((pk < pn) & (cn > 1))), ck, 1.0)
    dram_W, dram_X = Wb * w_col * rW, Xb * rX
    dram_Y = Yb + 2.0 * (sY - 1) * g.m * g.n * pb
    dram = dram_W + dram_X + dram_Y
    # -- buffer <-> array traffic
    kR = np.ceil(kp / R)
    psum = g.m * g.n * pb * (2 * kR - 1)
    arr_W = np.select(sel, [Wb * cm, Wb * np.ceil(g.m / R)], Wb * np.ceil(g.m / C)) * w_col
    arr_X = np.select(sel, [Xb * np.ceil(g.n / C), Xb * np.ceil(g.n / C)], Xb * cn)
    arr_Y = np.select(sel, [psum, Yb], psum)
    glb = dram + arr_W + arr_X + arr_Y
    glb_cyc = glb / p["glb_bw"]
    dram_cyc = dram / d.dram_bpc
    cycles = np.where(p["overlap"] > 0, np.maximum(np.maximum(compute, glb_cyc), dram_cyc),
                      compute + glb_cyc + dram_cyc)
    cycles = np.where(feasible, cycles, np.inf)
    # -- energy
    issued = g.macs * kept
    executed = issued * f_cyc
    effectual = issued * r_w * g.act_density
    gated = np.where(mode == 1, executed - effectual, 0.0)
    e_pass = (_energy_law(d.t45, "mul", d.fp, a_e, w_e) + _energy_law(d.t45, "add", d.fp, acc)) * d.es
    # bit-serial PE: per lane and data pass one partial product plus its share of the adder tree and of the
    # PE's one shift-accumulate; per MAC sequence (a PE's lanes x passes) the flush into FP32 (see _Design)
    bs_acc = np.where(d.flush, np.minimum(g.act_bits, p["act_bits"]) + w_e + np.ceil(np.log2(lanes)), acc)
    e_lane = (_energy_law(d.t45, "mul", d.fp, a_e, w_e)
              + (_adder_tree(lambda b: d.t45.add_energy_pj("int", b), lanes, a_e + w_e)
                 + _energy_law(d.t45, "add", d.fp, bs_acc)) / lanes) * d.es
    sequences = g.m * g.n * kp * f_cyc * w_passes
    e_flush = np.where(d.flush, (d.t45.add_energy_pj("int", 8) + d.t45.add_energy_pj("fp", 32)) * d.es, 0.0)
    meta_to_array = Wm * np.where(Wb > 0, arr_W / np.maximum(Wb, 1e-30), 0) \
        + Xm * np.where(Xb > 0, arr_X / np.maximum(Xb, 1e-30), 0)
    energy = {
        "mac": np.where(d.bs, (executed - gated) * data_passes * e_lane + sequences * e_flush,
                        (executed - gated) * passes * e_pass),
        "reg": np.where(d.bs, executed * data_passes * (a_e + w_e + 2 * bs_acc / lanes)
                        + np.where(d.flush, sequences * (bs_acc + 2 * 32), 0.0),
                        executed * passes * (a_e + w_e + 2 * acc)) * d.reg_pj_bit,
        "mux": np.where(p["nm_group"] > 0, executed * passes * a_e * np.log2(d.fan_in) * d.bit_pj, 0.0),
        "glb": glb * 8 * d.sram_pj_bit,
        "dram": dram * 8 * p["dram_pj_per_bit"],
        "decode": meta_to_array * 8 * d.bit_pj
        + np.where((p["bitplane"] > 0) & (g.act_serial_bits > 0), g.m * g.k * (g.act_bits + 8) * d.bit_pj, 0.0),
        "vector": np.zeros(()),
    }
    return {"cycles": cycles, "compute": compute, "glb_cyc": glb_cyc, "dram_cyc": dram_cyc, "busy": busy,
            "dram": dram, "glb": glb, "meta": Wm * w_col * rW + Xm * rX, "issued": issued, "executed": executed,
            "effectual": effectual, "feasible": feasible, **{f"e_{k}": v for k, v in energy.items()}}


def _eval_vector(d: _Design, v: VectorOp) -> dict[str, np.ndarray]:
    p = d.p
    compute = np.ceil(v.flops / (p["cols"] * p["lanes"]))
    dram_cyc = v.dram_bytes / d.dram_bpc
    cycles = np.where(p["overlap"] > 0, np.maximum(compute, dram_cyc), compute + dram_cyc)
    z = np.zeros(())
    return {"cycles": cycles, "compute": compute, "glb_cyc": z, "dram_cyc": dram_cyc, "busy": z,
            "dram": np.asarray(v.dram_bytes, float), "glb": z, "meta": z, "issued": z, "executed": z,
            "effectual": z, "feasible": np.ones((), bool), "e_mac": z, "e_reg": z, "e_mux": z, "e_glb": z,
            "e_dram": v.dram_bytes * 8 * p["dram_pj_per_bit"], "e_decode": z, "e_vector": v.flops * d.fp16_add_pj}


def _as_params(design: Any) -> dict[str, Any]:
    if isinstance(design, AccelSpec):
        return params_from_spec(design)
    if isinstance(design, dict):
        return design
    raise InputError(f"expected an AccelSpec or a parameter dict, got {type(design).__name__}")


def _as_problems(work: Any) -> list[Problem]:
    if isinstance(work, (Gemm, VectorOp)):
        return [work]
    if hasattr(work, "ops"):
        return problems_from_workload(work)
    if isinstance(work, (list, tuple)) and all(isinstance(w, (Gemm, VectorOp)) for w in work):
        return list(work)
    raise InputError(f"expected a Gemm, a Workload or a list of Gemm/VectorOp, got {type(work).__name__}")


def evaluate(design: Any, work: Any, per_op: bool = False) -> AccelResult:
    """Latency, energy, area and utilization of `work` (a Gemm, a list of problems, or an
    nmx.hw.workload.Workload) on every design point of `design` (an AccelSpec or a dict of
    parameters, scalars or broadcastable arrays). Counts multiply; ops run one after another."""
    params = _as_params(design)
    problems = _as_problems(work)
    spec = design if isinstance(design, AccelSpec) else None
    where = f"{spec.source}: mapping" if spec is not None and spec.source else "mapping"
    check_mapping(params, problems, where)
    d = _Design(params)
    acc: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for prob in problems:
        r = _eval_gemm(d, prob) if isinstance(prob, Gemm) else _eval_vector(d, prob)
        if spec is not None and any(spec.tile) and not np.all(r["feasible"]):
            raise InputError(f"{where}.tile: (m, n, k) = {spec.tile} does not fit the {spec.glb_kb:g} KiB buffer "
                             f"{spec.glb_name!r} for {prob.name} (m={prob.m}, n={prob.n}, k={prob.k}); shrink the tile")
        c = prob.count
        for k, v in r.items():
            if k == "feasible":
                acc[k] = acc.get(k, True) & v
            else:
                acc[k] = acc.get(k, 0.0) + c * v
        if per_op:
            rows.append({"name": prob.name, "count": c, "kind": "gemm" if isinstance(prob, Gemm) else "vector",
                         "cycles": c * r["cycles"], "energy_pj": c * sum(r[f"e_{k}"] for k in ENERGY_PARTS),
                         "dram_bytes": c * r["dram"], "compute_cycles": c * r["compute"],
                         "glb_cycles": c * r["glb_cyc"], "dram_cycles": c * r["dram_cyc"]})
    shape = d.shape

    def b(x: Any) -> np.ndarray:
        return np.broadcast_to(np.asarray(x, dtype=float), shape)

    p = d.p
    energy = {k: b(acc[f"e_{k}"]) for k in ENERGY_PARTS}
    cycles = b(acc["cycles"])
    with np.errstate(invalid="ignore", divide="ignore"):
        util = b(acc["busy"] / (p["rows"] * p["cols"] * acc["cycles"]))
    return AccelResult(
        cycles=cycles, latency_s=b(cycles / (p["clock_ghz"] * 1e9)), energy_pj=b(sum(energy.values())),
        area_um2=b(d.area_total), utilization=np.where(np.isfinite(cycles), util, 0.0), energy_breakdown=energy,
        area_breakdown={k: b(v) for k, v in d.area.items()}, compute_cycles=b(acc["compute"]),
        glb_cycles=b(acc["glb_cyc"]), dram_cycles=b(acc["dram_cyc"]), dram_bytes=b(acc["dram"]),
        glb_bytes=b(acc["glb"]), metadata_bytes=b(acc["meta"]), macs_issued=b(acc["issued"]),
        macs_executed=b(acc["executed"]), macs_effectual=b(acc["effectual"]),
        feasible=np.broadcast_to(np.asarray(acc["feasible"]), shape), per_op=rows)


# ---- sweep values -------------------------------------------------------------------------------

#: sweep keys a person writes (nmx explore --sweep KEY=v1,v2) -> parameter names
SWEEP_ALIASES = {"pe_rows": "rows", "pe_cols": "cols", "glb_bw_bytes_per_cycle": "glb_bw",
                 "dram_bandwidth_gb_s": "dram_gb_s", "stationary": "dataflow", "mode": "sparsity_mode"}


#: parameters that take any positive number; the others are whole numbers up to MAX_PARAM
REAL_PARAMS = ("reg_bytes", "glb_kb", "glb_bw", "dram_gb_s", "dram_pj_per_bit", "clock_ghz")
MAX_PARAM = 2**31 - 1


def encode_value(key: str, value: str) -> dict[str, Any]:
    """One sweep value written by a person -> parameter assignments (`nm` sets two parameters)."""
    written, key = key, SWEEP_ALIASES.get(key, key)
    v = value.strip()
    try:
        if key == "nm":
            if v in ("none", "dense", "0"):
                return {"nm_group": 0, "nm_mask": 0}
            pats = [s.split(":") for s in v.split("|")]
            ms = {int(m) for _, m in pats}
            ns = [int(n) for n, _ in pats]
            if len(ms) != 1 or not all(1 <= n < next(iter(ms)) for n in ns):
                raise ValueError
            return {"nm_group": ms.pop(), "nm_mask": nm_mask(ns)}
        if key == "dataflow":
            alias = {"ws": "weight", "os": "output", "is": "input"}
            return {key: DATAFLOWS.index(alias.get(v, v))}
        if key in ("weights_format", "activations_format"):
            return {key: OPERAND_FORMATS.index(v)}
        if key == "sparsity_mode":
            return {key: SPARSITY_MODES.index(v)}
        if key == "loop_order":
            return {key: -1 if v in ("default", "auto") else LOOP_ORDERS.index(v)}
        if key in ("overlap", "bit_serial", "arith_fp"):
            return {key: int(v.lower() in ("1", "true", "yes", "fp"))}
        if key not in PARAMS:
            raise KeyError
        num = float(v)
        if not math.isfinite(num):
            raise InputError(f"--sweep {written}={v}: must be a finite number")
        if num <= 0 and key not in ("tile_m", "tile_n", "tile_k", "loops_m", "loops_n", "loops_k", "nm_group",
                                     "nm_mask"):
            raise InputError(f"--sweep {written}={v}: must be > 0")
        if num < 0:
            raise InputError(f"--sweep {written}={v}: must be >= 0 (0 = automatic)")
        if key in REAL_PARAMS:
            return {key: int(num) if num.is_integer() else num}
        if not num.is_integer():
            raise InputError(f"--sweep {written}={v}: must be a whole number")
        if num > MAX_PARAM:
            raise InputError(f"--sweep {written}={v}: is beyond what the model takes (at most {MAX_PARAM:,})")
        return {key: int(num)}
    except KeyError:
        known = sorted(set(PARAMS) | set(SWEEP_ALIASES) | {"nm"})
        raise InputError(f"--sweep {written}: unknown parameter; use one of {', '.join(known)}") from None
    except ValueError:
        hints = {"nm": "none, 2:4 or 1:4|2:4|3:4", "dataflow": "ws, os, is",
                 "weights_format": ", ".join(OPERAND_FORMATS),
                 "activations_format": ", ".join(OPERAND_FORMATS), "sparsity_mode": ", ".join(SPARSITY_MODES),
                 "loop_order": ", ".join(LOOP_ORDERS)}
        raise InputError(f"--sweep {written}={v}: not a valid value (use {hints.get(key, 'a number')})") from None


def grid(base: dict[str, Any], sweeps: dict[str, list[str]]) -> tuple[dict[str, Any], list[tuple[str, list[str]]]]:
    """The full factorial of `sweeps` around `base` as an open mesh: sweep number a becomes an array
    along axis a (shape 1 elsewhere), so the model broadcasts and computes each intermediate only
    over the axes it depends on. Returns (params, axes); results have shape [len(v) for _, v in axes]."""
    params = dict(base)
    axes = [(k, list(vals)) for k, vals in sweeps.items()]
    nd = len(axes)
    for a, (key, vals) in enumerate(axes):
        if not vals:
            raise InputError(f"--sweep {key}: give at least one value")
        encoded = [encode_value(key, v) for v in vals]
        shape = [1] * nd
        shape[a] = len(vals)
        for pname in encoded[0]:
            params[pname] = np.array([e[pname] for e in encoded]).reshape(shape)
    return params, axes


def point_labels(axes: list[tuple[str, list[str]]], flat_index: int) -> dict[str, str]:
    """The sweep values of one flattened design point of a `grid`."""
    if not axes:
        return {}
    idx = np.unravel_index(int(flat_index), [len(v) for _, v in axes])
    return {key: vals[i] for (key, vals), i in zip(axes, idx, strict=True)}
