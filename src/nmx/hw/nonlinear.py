"""Nonlinear hardware units (softmax, SiLU, GELU, sigmoid, tanh, exp, reciprocal): LUT,
interpolated LUT, piecewise-linear and CORDIC, with their accuracy and their cost.

    unit("lut256", "silu").apply(x)            what the hardware outputs for x (bit-exact emulation)
    unit("cordic12", "exp").cost(tech, n)      cycles, energy_pj, area_um2 for n elements
    error_report("pwl16", "gelu", x)           max / mean / relative error against float64 torch
    softmax("lut256", x), softmax_cost(...)    max-subtract, exp, sum, reciprocal, multiply; per row

Method names parse like the format names (every member of a family works):

    lut{N}[_interp]      N a power of two: plain table of N words, or N (value, delta) pairs
    pwl{N}               N linear segments, non-uniform, selected by N - 1 comparators
    cordic{N}[_iter]     N CORDIC iterations (2..20), unrolled (default) or iterative
    ..._in{F}_out{D}     input / output fraction bits (default 12 and 16)

Cost model (see `price_part`): adders from `Tech.add_*("int", bits)`; a comparator costs an adder
of its width; a barrel shifter and a leading-one detector cost SHIFTER_ADDER_RATIO of an adder of
their width (w log2 w 2:1 muxes against w full adders; a fixed shift is wiring and costs nothing);
an a x b multiplier costs a square multiplier of ceil(sqrt(a b)) bits; tables are ROMs priced as
SRAM of the same capacity (an upper bound for a ROM); every pipeline stage latches its result in
registers. One operation per pipeline stage at `Tech.clock_ghz`. Energy is dynamic only (no
leakage); cycles = latency + (ceil(elements / lanes) - 1) * cycles_per_element.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Union

import torch

from nmx.errors import InputError, did_you_mean
from nmx.hw.nonlinear_methods import CORDIC, LUT, PWL
from nmx.hw.nonlinear_units import F64, FUNCTIONS, KERNELS, Part, mul_bits, round_to, staged

Method = Union[LUT, PWL, CORDIC]

#: the methods `nmx hw nonlinear` shows by default and `names()` lists
LISTED = ("lut64", "lut256", "lut1024", "lut16_interp", "lut64_interp", "lut256_interp",
          "pwl8", "pwl16", "pwl32", "cordic8", "cordic12", "cordic16", "cordic12_iter")
DEFAULT_METHODS = ("lut256", "lut64_interp", "pwl16", "cordic12", "cordic16", "cordic12_iter")
FUNCTION_NAMES = (*FUNCTIONS, "softmax")
ALIASES = {"gelu_erf": "gelu", "recip": "reciprocal"}

LOGITS = FUNCTIONS["silu"]  # softmax logits use the activations' input word (Q8.F, saturating)
SHIFTER_ADDER_RATIO = 0.5  # barrel shifter / leading-one detector vs an adder of the same width (stated, not measured)

_NAME = re.compile(r"(lut|pwl|cordic)(\d+)(_interp)?(_iter)?(?:_in(\d+))?(?:_out(\d+))?")
MAX_IN_FRAC, MAX_OUT_FRAC = 16, 24


# ----------------------------------------------------------------------------------------------
# registry


def get(name: str) -> Method:
    """The method called `name` (see the module doc for the grammar)."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"a nonlinear method name must be a non-empty string, got {name!r}")
    return _get(name.strip().lower())


@lru_cache(maxsize=None)
def _get(name: str) -> Method:
    m = _NAME.fullmatch(name)
    if not m:
        raise InputError(f"unknown nonlinear method {name!r}{did_you_mean(name, LISTED, 0.5)} "
                         "(use lut<N>, lut<N>_interp, pwl<N>, "
                         f"cordic<N>, cordic<N>_iter, e.g. {', '.join(DEFAULT_METHODS)})")
    family, n_text, interp, iterative, in_text, out_text = m.groups()
    n = int(n_text)
    F = int(in_text) if in_text else 12
    D = int(out_text) if out_text else 16
    if not 4 <= F <= MAX_IN_FRAC:
        raise InputError(f"{name}: input fraction bits {F} are out of range; use _in4 .. _in{MAX_IN_FRAC}")
    if not max(F, 8) <= D <= MAX_OUT_FRAC:
        raise InputError(f"{name}: output fraction bits {D} are out of range; use _out{max(F, 8)} .. "
                         f"_out{MAX_OUT_FRAC} (at least the input's)")
    if interp and family != "lut":
        raise InputError(f"{name}: only lut tables interpolate (_interp); drop it or use lut{n}_interp")
    if iterative and family != "cordic":
        raise InputError(f"{name}: only cordic has an iterative form (_iter); drop it or use cordic{n}_iter")
    if family == "lut":
        if n < 2 or n & (n - 1) or n > 2**F:
            raise InputError(f"{name}: a LUT needs a power-of-two number of entries from 2 to 2^{F} "
                             f"(its index is the top bits of the input), got {n}")
        return LUT(name, n, bool(interp), F, D)
    if family == "pwl":
        if not 1 <= n <= 2 ** (F - 2):
            raise InputError(f"{name}: a PWL unit needs 1 .. {2 ** (F - 2)} segments, got {n}")
        return PWL(name, n, F, D)
    if not 2 <= n <= 20:
        raise InputError(f"{name}: CORDIC needs 2 .. 20 iterations (the emulated datapath is at most "
                         f"26 fraction bits), got {n}")
    return CORDIC(name, n, bool(iterative), F, D)


def names() -> list[str]:
    """The listed methods, in table order."""
    return list(LISTED)


def function_name(fn: str) -> str:
    """Canonical function name, or an InputError that lists the choices."""
    key = str(fn).strip().lower()
    key = ALIASES.get(key, key)
    if key not in FUNCTION_NAMES:
        raise InputError(f"unknown function {fn!r}; use one of {', '.join(FUNCTION_NAMES)}")
    return key


# ----------------------------------------------------------------------------------------------
# pricing


def price_part(part: Part, tech: Any) -> tuple[float, float]:
    """(energy_pj per element, area_um2) of one part with a `Tech`."""
    if part.kind in ("add", "cmp"):
        e, a = tech.add_energy_pj("int", part.bits), tech.add_area_um2("int", part.bits)
    elif part.kind in ("shift", "lod"):
        e = SHIFTER_ADDER_RATIO * tech.add_energy_pj("int", part.bits)
        a = SHIFTER_ADDER_RATIO * tech.add_area_um2("int", part.bits)
    elif part.kind == "mul":
        e, a = tech.mul_energy_pj("int", part.bits), tech.mul_area_um2("int", part.bits)
    elif part.kind == "table":
        capacity_bytes = part.words * part.bits / 8
        e = part.bits * tech.sram_read_energy_pj_per_bit(capacity_bytes)
        return part.uses * e, part.count * part.words * part.bits * tech.sram_area_um2_per_bit(capacity_bytes)
    elif part.kind == "reg":
        e, a = part.bits * tech.reg_energy_pj_per_bit(), part.bits * tech.reg_area_um2_per_bit()
    else:
        raise ValueError(f"unknown part kind {part.kind!r}")
    return part.uses * e, part.count * a


def _tech(tech: Any) -> Any:
    if isinstance(tech, int):
        from nmx.hw.tech import get_tech

        return get_tech(tech)
    return tech


def price(parts: list[Part], tech: Any, elements: int, cycles_per_element: int, lanes: int = 1) -> dict:
    """Cycles, energy and area of `lanes` copies of a pipelined unit made of `parts`."""
    if elements < 0 or lanes < 1:
        raise InputError(f"elements must be >= 0 and lanes >= 1, got {elements} and {lanes}")
    tech = _tech(tech)
    priced = [(p, *price_part(p, tech)) for p in parts]
    e_elem = sum(e for _, e, _ in priced)
    area = lanes * sum(a for _, _, a in priced)
    latency = sum(p.cycles for p in parts)
    rounds = math.ceil(elements / lanes)
    cycles = latency + (rounds - 1) * cycles_per_element if elements else 0
    return {
        "elements": elements, "lanes": lanes, "cycles": cycles, "latency_cycles": latency,
        "cycles_per_element": cycles_per_element / lanes, "energy_pj": e_elem * elements,
        "energy_pj_per_element": e_elem, "area_um2": area, "clock_ghz": tech.clock_ghz,
        "time_s": cycles / (tech.clock_ghz * 1e9),
        "table_bits": sum(p.words * p.bits * p.count for p in parts if p.kind == "table"),
        "parts": [{**asdict(p), "energy_pj_per_element": e, "area_um2": a} for p, e, a in priced],
    }


# ----------------------------------------------------------------------------------------------
# units


@dataclass(frozen=True)
class NonlinearUnit:
    """A method wired up for one function: `apply` is the hardware's output, `cost` its price."""

    method: Method
    function: str

    @property
    def name(self) -> str:
        return f"{self.method.name}:{self.function}"

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return FUNCTIONS[self.function].quantize(x, self.method.in_frac)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """What the unit outputs for x (any shape), in x's floating dtype."""
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise InputError("nonlinear units take a floating-point torch tensor")
        y = self.method.evaluate(self.function, self.quantize_input(x.detach().cpu()))
        return y.to(dtype=x.dtype, device=x.device)

    def parts(self) -> list[Part]:
        return self.method.parts(self.function)

    def cost(self, tech: Any, elements: int = 1, lanes: int = 1) -> dict:
        """{cycles, latency_cycles, cycles_per_element, energy_pj, energy_pj_per_element, area_um2,
        time_s, table_bits, parts} for `elements` elements on `lanes` copies of the unit."""
        out = price(self.parts(), tech, elements, self.method.cycles_per_element, lanes)
        return {"method": self.method.name, "function": self.function, **out}

    def describe(self) -> dict:
        spec = FUNCTIONS[self.function]
        F = self.method.in_frac
        return {"method": self.method.name, "function": self.function, **self.method.describe(),
                "input": f"{'signed' if spec.signed else 'unsigned'} {spec.input_bits(F)} b "
                         f"({spec.int_bits} integer, {F} fraction bits), saturating",
                "note": spec.note}


def unit(method: str | Method, function: str) -> NonlinearUnit:
    """The unit computing `function` ("exp", "reciprocal", "sigmoid", "tanh", "silu", "gelu",
    "gelu_tanh") with `method` (a name or a method object); softmax has its own functions."""
    m = get(method) if isinstance(method, str) else method
    fn = function_name(function)
    if fn == "softmax":
        raise InputError("softmax is built from units: use nonlinear.softmax / softmax_cost")
    return NonlinearUnit(m, fn)


# ----------------------------------------------------------------------------------------------
# softmax: max subtraction, exp, sum, one reciprocal per row, multiply


def softmax(method: str | Method, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """softmax along `dim` as the hardware computes it: m = max(x), e_i = exp_unit(x_i - m)
    (out_frac bits), s = sum e_i (exact accumulator), r = reciprocal_unit(s), y_i = round(e_i r)."""
    m = get(method) if isinstance(method, str) else method
    if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() == 0:
        raise InputError("softmax takes a floating-point torch tensor with at least one dimension")
    xq = LOGITS.quantize(x.detach().cpu(), m.in_frac).movedim(dim, -1)
    d = xq - xq.amax(dim=-1, keepdim=True)
    e = m.evaluate("exp", d)
    r = m.evaluate("reciprocal", e.sum(dim=-1, keepdim=True))
    y = round_to(e * r, m.out_frac)
    return y.movedim(-1, dim).to(dtype=x.dtype, device=x.device)


def softmax_parts(method: str | Method, row_len: int, lanes: int = 1) -> tuple[list[Part], list[Part]]:
    """(per-element parts of one lane, per-row parts) of a softmax unit for rows of `row_len`
    (each lane buffers its ceil(row_len / lanes) values of e_i)."""
    m = get(method) if isinstance(method, str) else method
    F, D = m.in_frac, m.out_frac
    bi = LOGITS.input_bits(F)
    acc = D + 1 + max(1, math.ceil(math.log2(max(row_len, 2))))
    word = D + 1
    buf_words = max(math.ceil(row_len / lanes), 1)
    per_elem = ([Part("running max compare", "cmp", bi, cycles=1), Part("max register", "reg", bi)]
                + staged("x - max", "add", bi)
                + m.parts("exp")
                + [Part(f"row buffer {buf_words} x {word} b (write + read e_i)", "table", word, words=buf_words,
                        uses=2)]
                + staged("sum accumulate", "add", acc)
                + staged("e * r", "mul", mul_bits(word, D + 2), reg_bits=word)
                + staged("shift by -e", "shift", word))
    return per_elem, m.parts("reciprocal")


def softmax_cost(method: str | Method, tech: Any, row_len: int, rows: int = 1, lanes: int = 1) -> dict:
    """Cost of softmax over `rows` rows of `row_len` on `lanes` parallel exp / multiply lanes and
    one reciprocal unit. A row takes three passes (max, exp + sum, normalize) of
    ceil(row_len / lanes) rounds each, plus the latencies; rows run back to back (no overlap:
    a pessimistic schedule). Reading the logits twice is the caller's memory traffic, not here;
    the row buffer holding e_i (written once, read once; a write priced as a read) is."""
    m = get(method) if isinstance(method, str) else method
    if row_len < 1 or rows < 1 or lanes < 1:
        raise InputError(f"row_len, rows and lanes must be >= 1, got {row_len}, {rows}, {lanes}")
    tech = _tech(tech)
    per_elem, per_row = softmax_parts(m, row_len, lanes)
    elem = price(per_elem, tech, 1, m.cycles_per_element, lanes)
    recip = price(per_row, tech, 1, m.cycles_per_element, 1)
    rounds = math.ceil(row_len / lanes)
    exp_latency = sum(p.cycles for p in m.parts("exp"))
    ii = m.cycles_per_element
    pass_max = rounds  # one compare stage, one lane-round per cycle
    pass_exp = (1 + exp_latency + 1) + (rounds - 1) * ii  # subtract, exp unit, accumulate
    pass_norm = 2 + (rounds - 1)  # multiply, shift
    row_cycles = pass_max + pass_exp + recip["latency_cycles"] + pass_norm
    e_row = row_len * elem["energy_pj_per_element"] + recip["energy_pj_per_element"]
    cycles = rows * row_cycles
    return {
        "method": m.name, "function": "softmax", "row_len": row_len, "rows": rows, "lanes": lanes,
        "cycles": cycles, "cycles_per_row": row_cycles, "cycles_per_element": row_cycles / row_len,
        "energy_pj": rows * e_row, "energy_pj_per_row": e_row, "energy_pj_per_element": e_row / row_len,
        "area_um2": elem["area_um2"] + recip["area_um2"], "clock_ghz": tech.clock_ghz,
        "time_s": cycles / (tech.clock_ghz * 1e9),
        "parts": elem["parts"] + [{**p, "name": f"reciprocal: {p['name']}"} for p in recip["parts"]],
    }


# ----------------------------------------------------------------------------------------------
# accuracy


def reference(function: str, x: torch.Tensor) -> torch.Tensor:
    """The float64 torch reference of `function` at x."""
    fn = function_name(function)
    x64 = x.detach().cpu().to(F64)
    if fn == "softmax":
        return torch.softmax(x64, dim=-1)
    return FUNCTIONS[fn].ref(x64)


def approximate(method: str | Method, function: str, x: torch.Tensor) -> torch.Tensor:
    fn = function_name(function)
    return softmax(method, x) if fn == "softmax" else unit(method, fn).apply(x)


def error_report(method: str | Method, function: str, x: torch.Tensor, rel_floor: float = 1e-3) -> dict:
    """Error of the unit against float64 torch at x: max and mean absolute error, relative L2
    error ||y - ref|| / ||ref||, and the max relative error over |ref| >= rel_floor (relative error
    is meaningless where the reference is ~0). For softmax, x holds rows along its last dim."""
    fn = function_name(function)
    name = method if isinstance(method, str) else method.name
    x64 = x.detach().cpu().to(F64)
    y = approximate(method, fn, x64)
    ref = reference(fn, x64)
    err = (y - ref).abs()
    big = ref.abs() >= rel_floor
    worst = int(err.reshape(-1).argmax())
    return {
        "method": name, "function": fn, "n": err.numel(),
        "max_abs_error": float(err.max()), "mean_abs_error": float(err.mean()),
        "rel_l2_error": float(err.norm() / ref.norm().clamp_min(1e-300)),
        "max_rel_error": float((err[big] / ref[big].abs()).max()) if bool(big.any()) else float("nan"),
        "worst_x": float(x64.reshape(-1)[worst]) if fn != "softmax" else None,
    }


def standard_inputs(function: str, seed: int = 0, n_random: int = 8192, n_grid: int = 8193) -> torch.Tensor:
    """The report's inputs: an even grid over the function's standard range plus seeded random
    points (uniform; log-uniform for reciprocal). Softmax: 64 rows of 256 logits, N(0, 1) times a
    per-row scale from 0.5 to 16, plus one row spanning [-20, 0]."""
    fn = function_name(function)
    g = torch.Generator().manual_seed(seed)
    if fn == "softmax":
        scale = torch.linspace(0.5, 16.0, 64, dtype=F64)[:, None]
        rows = torch.randn(64, 256, generator=g, dtype=F64) * scale
        return torch.cat([rows, torch.linspace(-20.0, 0.0, 256, dtype=F64)[None]])
    spec = FUNCTIONS[fn]
    lo, hi = spec.std_lo, spec.std_hi
    if fn == "reciprocal":
        grid = torch.logspace(math.log10(lo), math.log10(hi), n_grid, dtype=F64)
        rnd = torch.exp(math.log(lo) + torch.rand(n_random, generator=g, dtype=F64) * math.log(hi / lo))
    else:
        grid = torch.linspace(lo, hi, n_grid, dtype=F64)
        rnd = lo + torch.rand(n_random, generator=g, dtype=F64) * (hi - lo)
    return torch.cat([grid, rnd])


def compare(function: str, methods: list[str] | tuple[str, ...] = DEFAULT_METHODS, tech: Any = 45,
            seed: int = 0, row_len: int = 256) -> list[dict]:
    """One row per method: error on the standard inputs and the cost per element (softmax: per
    row of `row_len`, one lane)."""
    fn = function_name(function)
    ms = [get(m) for m in methods]  # validate every name before any work
    tech_obj = _tech(tech)
    if isinstance(row_len, bool) or not isinstance(row_len, int) or row_len < 1:
        raise InputError(f"row_len (--row-len) must be a whole number of at least 1, got {row_len!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise InputError(f"seed (--seed) must be a whole number from 0 to 2^63 - 1, got {seed!r}")
    x = standard_inputs(fn, seed)
    rows = []
    for m in ms:
        rep = error_report(m, fn, x)
        if fn == "softmax":
            c = softmax_cost(m, tech_obj, row_len)
            cost = {"cycles_per_element": c["cycles_per_element"], "latency_cycles": c["cycles_per_row"],
                    "energy_pj_per_element": c["energy_pj_per_element"], "area_um2": c["area_um2"],
                    "energy_pj_per_row": c["energy_pj_per_row"]}
        else:
            c = unit(m, fn).cost(tech_obj, elements=1)
            cost = {k: c[k] for k in ("cycles_per_element", "latency_cycles", "energy_pj_per_element",
                                      "area_um2", "table_bits")}
        rows.append({**rep, **cost, "tech_nm": getattr(tech_obj, "node_nm", None)})
    return rows


__all__ = ["get", "names", "unit", "NonlinearUnit", "softmax", "softmax_cost", "softmax_parts", "error_report",
           "reference", "standard_inputs", "compare", "price", "price_part", "function_name", "KERNELS",
           "FUNCTIONS", "FUNCTION_NAMES", "LUT", "PWL", "CORDIC", "SHIFTER_ADDER_RATIO"]
