"""Technology tables: energy and area per arithmetic op and per memory access at 45/28/16/7 nm.

    from nmx.hw.tech import get_tech
    t = get_tech(16)
    t.mac_energy_pj("int", 8, 8), t.sram_read_energy_pj_per_bit(64 * 1024), t.dram_energy_pj_per_bit("hbm3")

Where every number comes from
-----------------------------
Base node 45 nm, 0.9 V -- M. Horowitz, "Computing's energy problem (and what we can do about it)",
ISSCC 2014, Fig. 1.1.9 (energy) and the accompanying area table:

    op                 energy (pJ)   area (um^2)
    int add  8b / 32b  0.03 / 0.1    36 / 137
    int mult 8b / 32b  0.2  / 3.1    282 / 3495
    fp add  16b / 32b  0.4  / 0.9    1360 / 4184
    fp mult 16b / 32b  1.1  / 3.7    1640 / 7700
    64-bit cache read: 8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ; DRAM 1.3-2.6 nJ per 64 bits.

Bit-width laws: for each op the two published widths fix a power law E(b) = E0 (b / b0)^p. The
fitted exponents come out as the usual laws say they should -- integer adder p = 0.87 (~ linear in
bits), integer multiplier p = 1.98 (~ quadratic), fp adder p = 1.17, fp multiplier p = 1.75 (the
mantissa multiplier is quadratic, the exponent logic linear). A multiplier with unequal operand
widths a x w is evaluated at the geometric mean sqrt(a w), so a quadratic multiplier costs ~ a*w.
Widths outside the published pair are extrapolations of that law (e.g. 4-bit int, fp8, fp4).

SRAM read energy per bit: log-log interpolation through Horowitz's three cache points
(0.156 / 0.3125 / 1.5625 pJ/bit at 8 KB / 32 KB / 1 MB); below 8 KB the 8-32 KB slope is
extended (energy ~ sqrt(capacity), the bit-line/word-line length law), above 1 MB the 32 KB-1 MB
slope. No per-capacity write figure is in that source: writes are taken equal to reads (stated
assumption; CACTI typically gives writes within +-30% of reads).

Registers (flip-flops): 0.009 pJ per bit per access and 5.98 um^2 per bit -- the 40 nm register
characterisation of Aladdin (Y. S. Shao et al., "Aladdin: a pre-RTL, power-performance accelerator
simulator", ISCA 2014, its published power model), used as the 45 nm figure (40 ~ 45 nm, no scaling).

SRAM area per bit: the published high-density 6T bit cell of each node divided by an array
efficiency of 0.7 (stated assumption: periphery, sense amps and decoders take ~30% of a macro):
45 nm 0.346 um^2 (Intel, Mistry et al., IEDM 2007), 28 nm 0.127 um^2 (TSMC 28HPM HD cell),
16 nm 0.074 um^2 (TSMC 16FF+), 7 nm 0.027 um^2 (TSMC N7 HD; the last three as tabulated by
WikiChip, "TSMC details 5 nm", 2020).

Scaling logic energy and area from 45 nm to 28/16/7 nm: A. Stillmaker and B. Baas, "Scaling
equations for the accurate prediction of CMOS device performance from 180 nm to 7 nm",
Integration, the VLSI Journal 58 (2017) 74-81. Area: their node-to-node area factors
(45 -> 32: 0.46, 20: 0.21, 16: 0.19, 7: 0.059). Energy: their per-node quadratic in VDD,
E(node, V) = a V^2 + b V + c, evaluated at each node's supply (45 nm 0.9 V -- Horowitz's
condition --, 32 nm 0.9 V, 20 nm 0.9 V, 16 nm 0.8 V, 7 nm 0.7 V; stated assumption, nominal
PTM/ITRS-style supplies). The coefficient table is the one transcribed in Accelergy's
`hwcomponents` scaling module. 28 nm is not a node of that paper: its factors are interpolated
log-linearly in node size between 32 and 20 nm. SRAM access energy scales with the same energy
factor as logic (no separate SRAM table there); SRAM area uses the bit-cell table above.

DRAM energy per bit (interface + core, per bit transferred): HBM2/HBM2E 3.9 pJ/bit (M. O'Connor et
al., "Fine-Grained DRAM: energy-efficient DRAM for extreme bandwidth systems", MICRO 2017, HBM2
baseline). HBM3: no peer-reviewed per-bit figure was found; the HBM2 figure is used (stated;
override it in the accelerator YAML when you have a vendor number). LPDDR5: the 13-14 pJ/bit that
DRAM simulation studies give for LPDDR4 (H. Ha, Stanford PhD thesis 2020, DramDSE), 13 pJ/bit,
conservative for LPDDR5. DDR4: 20 pJ/bit, the low end of Horowitz's 1.3-2.6 nJ per 64-bit DRAM
access. DRAM figures do not scale with the logic node.

Clock defaults (override per design): 28 nm 0.70 GHz (TPUv1, Jouppi et al., ISCA 2017), 16 nm
0.94 GHz (TPUv3, Jouppi et al., CACM 2020), 7 nm 1.05 GHz (TPUv4, Jouppi et al., ISCA 2023);
45 nm 0.5 GHz is an assumption (no cited accelerator at that node).

All functions accept numpy arrays for the bit widths and capacities and broadcast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from nmx.errors import InputError

ArrayLike = Any  # int | float | np.ndarray; results are float or ndarray of the broadcast shape

NODES_NM = (45, 28, 16, 7)
DRAM_KINDS = ("hbm2e", "hbm3", "lpddr5", "ddr4")
OP_KINDS = ("int", "fp")

# Horowitz ISSCC 2014, 45 nm 0.9 V: (bits_lo, value_lo, bits_hi, value_hi)
_ENERGY_45_PJ = {
    ("add", "int"): (8, 0.03, 32, 0.1),
    ("mul", "int"): (8, 0.2, 32, 3.1),
    ("add", "fp"): (16, 0.4, 32, 0.9),
    ("mul", "fp"): (16, 1.1, 32, 3.7),
}
_AREA_45_UM2 = {
    ("add", "int"): (8, 36.0, 32, 137.0),
    ("mul", "int"): (8, 282.0, 32, 3495.0),
    ("add", "fp"): (16, 1360.0, 32, 4184.0),
    ("mul", "fp"): (16, 1640.0, 32, 7700.0),
}
# Horowitz ISSCC 2014: 64-bit cache reads, 45 nm -> pJ per bit at (capacity bytes)
_SRAM_POINTS = ((8 * 1024, 10.0 / 64), (32 * 1024, 20.0 / 64), (1024 * 1024, 100.0 / 64))
# Aladdin (Shao et al., ISCA 2014) 40 nm register: energy pJ/bit/access, area um^2/bit
_REG_PJ_PER_BIT_45 = 0.009
_REG_UM2_PER_BIT_45 = 5.98
# SRAM bit cells (um^2) and array efficiency (see docstring)
_BITCELL_UM2 = {45: 0.346, 28: 0.127, 16: 0.074, 7: 0.027}
_ARRAY_EFFICIENCY = 0.7
# Stillmaker & Baas 2017 energy polynomial (a, b, c) and supply used per node
_SB_ENERGY_POLY = {45: (1.103, -0.362, 0.2767), 32: (0.9559, -0.7823, 0.471),
                   20: (0.373, -0.1582, 0.04104), 16: (0.2958, -0.1241, 0.03024),
                   7: (0.1776, -0.09097, 0.02447)}
_SB_VDD = {45: 0.9, 32: 0.9, 20: 0.9, 16: 0.8, 7: 0.7}
# Stillmaker & Baas 2017 area factor from 45 nm to node
_SB_AREA_FROM_45 = {45: 1.0, 32: 0.46, 20: 0.21, 16: 0.19, 7: 0.059}
# DRAM energy per bit (see docstring for sources)
_DRAM_PJ_PER_BIT = {"hbm2e": 3.9, "hbm3": 3.9, "lpddr5": 13.0, "ddr4": 20.0}
_CLOCK_GHZ = {45: 0.5, 28: 0.70, 16: 0.94, 7: 1.05}


def _sb_energy(node: int) -> float:
    a, b, c = _SB_ENERGY_POLY[node]
    v = _SB_VDD[node]
    return a * v * v + b * v + c


def _interp_28(table_at: Any) -> float:
    """Log-linear interpolation in node size between 32 and 20 nm (28 nm is not in the paper)."""
    t = (math.log(32) - math.log(28)) / (math.log(32) - math.log(20))
    return math.exp((1 - t) * math.log(table_at(32)) + t * math.log(table_at(20)))


def _energy_factor(node: int) -> float:
    def rel(n: int) -> float:
        return _sb_energy(n) / _sb_energy(45)

    return _interp_28(rel) if node == 28 else rel(node)


def _area_factor(node: int) -> float:
    return _interp_28(lambda n: _SB_AREA_FROM_45[n]) if node == 28 else _SB_AREA_FROM_45[node]


def _power_law(points: tuple[float, float, float, float], bits: ArrayLike) -> ArrayLike:
    b0, v0, b1, v1 = points
    p = math.log(v1 / v0) / math.log(b1 / b0)
    return v0 * (np.asarray(bits, dtype=np.float64) / b0) ** p if isinstance(bits, np.ndarray) \
        else v0 * (float(bits) / b0) ** p


def _check_kind(kind: str) -> None:
    if kind not in OP_KINDS:
        raise InputError(f"unknown arithmetic kind {kind!r}; use one of {', '.join(OP_KINDS)}")


def _check_bits(bits: ArrayLike, what: str) -> None:
    if np.any(np.asarray(bits) < 1):
        raise InputError(f"{what} must be >= 1 bit, got {bits!r}")


def default_acc_bits(kind: str, a_bits: ArrayLike, w_bits: ArrayLike) -> ArrayLike:
    """Accumulator width of a MAC: int a+w+16 (exact for 2^16 products), fp 32 (fp32 accumulation)."""
    _check_kind(kind)
    if kind == "int":
        return a_bits + w_bits + 16
    return 32 + 0 * (np.asarray(a_bits) + np.asarray(w_bits)) if isinstance(a_bits, np.ndarray) \
        or isinstance(w_bits, np.ndarray) else 32


@dataclass(frozen=True)
class Tech:
    """One technology node: energy (pJ) and area (um^2) of ops and storage, and a default clock."""

    node_nm: int
    clock_ghz: float
    energy_scale: float  # logic/SRAM energy relative to 45 nm 0.9 V (Stillmaker & Baas 2017)
    area_scale: float  # logic area relative to 45 nm (Stillmaker & Baas 2017)
    sram_bitcell_um2: float

    # -- arithmetic ---------------------------------------------------------------------------
    def add_energy_pj(self, kind: str, bits: ArrayLike) -> ArrayLike:
        """Energy of one `bits`-wide addition (int ~ linear in bits, fp p=1.17; Horowitz 2014)."""
        _check_kind(kind)
        _check_bits(bits, "adder width")
        return _power_law(_ENERGY_45_PJ[("add", kind)], bits) * self.energy_scale

    def mul_energy_pj(self, kind: str, bits: ArrayLike, w_bits: ArrayLike | None = None) -> ArrayLike:
        """Energy of one multiplication; `bits` x `w_bits` (default square) at width sqrt(a w)."""
        _check_kind(kind)
        _check_bits(bits, "multiplier width")
        eff = bits if w_bits is None else np.sqrt(np.asarray(bits, dtype=np.float64) * np.asarray(w_bits))
        if not isinstance(bits, np.ndarray) and not isinstance(w_bits, np.ndarray):
            eff = float(eff)
        return _power_law(_ENERGY_45_PJ[("mul", kind)], eff) * self.energy_scale

    def mac_energy_pj(self, kind: str, a_bits: ArrayLike, w_bits: ArrayLike,
                      acc_bits: ArrayLike | None = None) -> ArrayLike:
        """One multiply-accumulate: a_bits x w_bits multiply + an add at the accumulator width."""
        acc = default_acc_bits(kind, a_bits, w_bits) if acc_bits is None else acc_bits
        return self.mul_energy_pj(kind, a_bits, w_bits) + self.add_energy_pj(kind, acc)

    def add_area_um2(self, kind: str, bits: ArrayLike) -> ArrayLike:
        """Area of a `bits`-wide adder (Horowitz 2014 45 nm points, power law, node-scaled)."""
        _check_kind(kind)
        _check_bits(bits, "adder width")
        return _power_law(_AREA_45_UM2[("add", kind)], bits) * self.area_scale

    def mul_area_um2(self, kind: str, bits: ArrayLike, w_bits: ArrayLike | None = None) -> ArrayLike:
        """Area of a multiplier; `bits` x `w_bits` (default square) at width sqrt(a w)."""
        _check_kind(kind)
        _check_bits(bits, "multiplier width")
        eff = bits if w_bits is None else np.sqrt(np.asarray(bits, dtype=np.float64) * np.asarray(w_bits))
        if not isinstance(bits, np.ndarray) and not isinstance(w_bits, np.ndarray):
            eff = float(eff)
        return _power_law(_AREA_45_UM2[("mul", kind)], eff) * self.area_scale

    def mac_area_um2(self, kind: str, a_bits: ArrayLike, w_bits: ArrayLike,
                     acc_bits: ArrayLike | None = None) -> ArrayLike:
        """A MAC unit: multiplier + accumulator adder + accumulator register."""
        acc = default_acc_bits(kind, a_bits, w_bits) if acc_bits is None else acc_bits
        return (self.mul_area_um2(kind, a_bits, w_bits) + self.add_area_um2(kind, acc)
                + acc * self.reg_area_um2_per_bit())

    # -- storage ------------------------------------------------------------------------------
    def sram_read_energy_pj_per_bit(self, capacity_bytes: ArrayLike) -> ArrayLike:
        """Read energy per bit of an SRAM of `capacity_bytes` (Horowitz points, log-log)."""
        cap = np.asarray(capacity_bytes, dtype=np.float64)
        if np.any(cap <= 0):
            raise InputError(f"SRAM capacity must be > 0 bytes, got {capacity_bytes!r}")
        (c0, e0), (c1, e1), (c2, e2) = _SRAM_POINTS
        lc = np.log(cap)
        s01 = math.log(e1 / e0) / math.log(c1 / c0)
        s12 = math.log(e2 / e1) / math.log(c2 / c1)
        le = np.where(lc <= math.log(c1), math.log(e0) + s01 * (lc - math.log(c0)),
                      math.log(e1) + s12 * (lc - math.log(c1)))
        e = np.maximum(np.exp(le), _REG_PJ_PER_BIT_45) * self.energy_scale
        return float(e) if e.ndim == 0 else e

    def sram_write_energy_pj_per_bit(self, capacity_bytes: ArrayLike) -> ArrayLike:
        """Write energy per bit; taken equal to the read energy (no published per-capacity split)."""
        return self.sram_read_energy_pj_per_bit(capacity_bytes)

    def reg_energy_pj_per_bit(self) -> float:
        """Energy per bit per register (flip-flop) access (Aladdin 40 nm figure, node-scaled)."""
        return _REG_PJ_PER_BIT_45 * self.energy_scale

    def sram_area_um2_per_bit(self, capacity_bytes: ArrayLike = 1) -> ArrayLike:
        """Area per bit of SRAM: bit cell / array efficiency 0.7 (independent of capacity here)."""
        cap = np.asarray(capacity_bytes, dtype=np.float64)
        if np.any(cap <= 0):
            raise InputError(f"SRAM capacity must be > 0 bytes, got {capacity_bytes!r}")
        a = self.sram_bitcell_um2 / _ARRAY_EFFICIENCY
        return a if cap.ndim == 0 else np.full(cap.shape, a)

    def reg_area_um2_per_bit(self) -> float:
        """Area per register bit (Aladdin 40 nm flip-flop, node-scaled with logic area)."""
        return _REG_UM2_PER_BIT_45 * self.area_scale

    def dram_energy_pj_per_bit(self, kind: str = "hbm3") -> float:
        """Energy per bit transferred from/to off-chip DRAM of `kind` (not node-scaled)."""
        if kind not in _DRAM_PJ_PER_BIT:
            raise InputError(f"unknown DRAM kind {kind!r}; use one of {', '.join(DRAM_KINDS)}")
        return _DRAM_PJ_PER_BIT[kind]


def get_tech(node_nm: int) -> Tech:
    """The technology tables of `node_nm` (45, 28, 16 or 7)."""
    if isinstance(node_nm, bool) or node_nm not in _CLOCK_GHZ:
        raise InputError(f"technology node {node_nm!r} nm is not tabulated; use one of "
                         f"{', '.join(str(n) for n in NODES_NM)}")
    n = int(node_nm)
    return Tech(node_nm=n, clock_ghz=_CLOCK_GHZ[n], energy_scale=_energy_factor(n),
                area_scale=_area_factor(n), sram_bitcell_um2=_BITCELL_UM2[n])


def tech_table() -> list[dict[str, float]]:
    """A summary row per node (for `nmx hw tech` and documentation)."""
    rows = []
    for n in NODES_NM:
        t = get_tech(n)
        rows.append({"node_nm": n, "clock_ghz": t.clock_ghz, "energy_scale": t.energy_scale,
                     "area_scale": t.area_scale,
                     "int8_mac_pj": t.mac_energy_pj("int", 8, 8),
                     "fp16_mac_pj": t.mac_energy_pj("fp", 16, 16),
                     "sram_64kb_pj_per_bit": t.sram_read_energy_pj_per_bit(64 * 1024),
                     "int8_mac_um2": t.mac_area_um2("int", 8, 8),
                     "sram_um2_per_bit": t.sram_area_um2_per_bit()})
    return rows
