"""Nonlinear units: accuracy against float64 with derived error bounds, monotonicity in table
size / iterations, hand-computed values and costs, the CLI.

Oracles: float64 torch references; error bounds derived from max|f'| and max|f''| (computed here
by finite differences on the float64 reference, never typed in) and the fixed-point rounding of
each datapath; a scalar plain-loop CORDIC; a cost computed by hand with a stub technology.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache

import pytest
import torch

from nmx.errors import InputError
from nmx.hw import nonlinear as nl
from nmx.hw.nonlinear_methods import CORDIC, LUT, PWL
from nmx.hw.nonlinear_units import (
    GELU_A,
    GELU_C,
    KERNELS,
    _grid,
    cordic_hyperbolic_exp,
    cordic_linear_divide,
    hyperbolic_shifts,
    pwl_table,
    round_to,
)
from nmx.hw.tech import get_tech
from tests.cli import run_cli as run

F64 = torch.float64
FUNCS = ("exp", "reciprocal", "sigmoid", "tanh", "silu", "gelu", "gelu_tanh")


# ----------------------------------------------------------------------------------------------
# derivatives of the references (finite differences on float64) and the derived bounds


@lru_cache(maxsize=None)
def max_d1(name: str, lo: float, hi: float) -> float:
    f = KERNELS[name].ref if name in KERNELS else nl.FUNCTIONS[name].ref
    u = torch.linspace(lo, hi, 20_001, dtype=F64)
    h = 1e-5
    return float(((f(u + h) - f(u - h)) / (2 * h)).abs().max())


@lru_cache(maxsize=None)
def max_d2(name: str, lo: float, hi: float) -> float:
    f = KERNELS[name].ref
    u = torch.linspace(lo, hi, 1001, dtype=F64)
    h = 1e-4
    return float(((f(u + h) - 2 * f(u) + f(u - h)) / h**2).abs().max())


def kernel_bound(m, k) -> float:
    """Max error of the method's kernel over its interval, from the method's construction."""
    D = m.out_frac
    if isinstance(m, LUT) and not m.interp:
        # each word is the cell's minimax constant: within h/2 max|g'| of every input of the cell
        return k.width / m.entries / 2 * max_d1(k.name, k.lo, k.hi) + 2.0 ** -(D + 1)
    if isinstance(m, LUT):
        # chord between rounded knots: h^2/8 max|g''| + LSB/2 (knots) + LSB/2 (product rounding)
        return (k.width / m.entries) ** 2 / 8 * max_d2(k.name, k.lo, k.hi) + 2.0**-D
    # PWL: per segment chord error h^2/8 max|g''| (the minimax offset halves the chord's spread), the
    # slope rounded to D + 1 bits widens the spread by <= 2^-(D+2) h; intercept and product rounding
    t, _, _ = pwl_table(k.name, m.segments, m.in_frac, m.out_frac)
    ends = torch.cat([t[1:], torch.tensor([k.hi], dtype=F64)]).tolist()
    return max((b - a) ** 2 / 8 * max_d2(k.name, a, b) + 2.0 ** -(D + 2) * (b - a)
               for a, b in zip(t.tolist(), ends, strict=True)) + 2.0**-D


def cordic_exp_bound(n: int, w: int) -> float:
    """|x + y - e^r| for r in [0, ln2]: the residual angle after the sequence is at most the last
    angle a = atanh(2^-s_N), so the result is e^(r - z_N) = e^r (1 +- (e^a - 1)) with e^r <= 2;
    each step truncates x and y (2 * 2^-W), grown by at most prod(1 + 2^-i) < 2.4 (5 N 2^-W); the
    gain constant is rounded (2^-W)."""
    a = math.atanh(2.0 ** -hyperbolic_shifts(n)[-1])
    return 2.01 * (math.exp(a) - 1) + 5 * n * 2.0**-w + 2.0**-w


def cordic_recip_bound(n: int, w: int) -> float:
    """|z - 1/m|: the last step has size 2^-(N-1); each step's truncated shift of m moves y by
    < 2^-W (N 2^-W over the run, divided by m >= 1); m itself truncated to W bits (2^-W)."""
    return 2.0 ** -(n - 1) + n * 2.0**-w + 2.0**-w


def tail(fn: str, x_max: float) -> float:
    """Error of a kernel's limit value beyond its interval, up to |x| = x_max."""
    spec = nl.FUNCTIONS[fn]
    k = KERNELS[spec.kernel]
    if x_max <= k.hi:
        return 0.0
    a = torch.linspace(k.hi, x_max, 10_001, dtype=F64)
    return float((k.ref(a) - k.beyond).abs().max())


def gelu_dv(a: torch.Tensor, w: int) -> torch.Tensor:
    """Bound on the error of v = 2c(a + 0.044715 a^3) as the CORDIC GELU datapath computes it:
    a^2 and a^3 rounded, both constants rounded, each product rounded (2^-(W+1) each)."""
    k1, k2 = GELU_A, 2 * GELU_C
    t = a + k1 * a**3
    return 2.0 ** -(w + 1) * (k2 * (k1 * (a + 1) + a**3 + 1) + t + 1)


def function_bound(m, fn: str, x_lo: float, x_hi: float) -> float:
    """Derived max error of unit(m, fn) against float64 for unquantized inputs in [x_lo, x_hi]."""
    F, D = m.in_frac, m.out_frac
    q_in, lsb = 2.0 ** -(F + 1), 2.0 ** -(D + 1)
    x_max = max(abs(x_lo), abs(x_hi))
    d1 = max_d1(fn, x_lo, x_hi) if fn != "reciprocal" else 1.0 / x_lo**2
    if isinstance(m, CORDIC):
        w = m.frac_bits
        rho = cordic_exp_bound(m.iterations, w) + 12 * 2.0**-w  # + ln2 rounded, times |q| <= 24
        er = cordic_recip_bound(m.iterations, w)
        es = er + 2 * rho + 3 * 2.0**-w  # e s against e / (1 + e), e <= 1 (see the module notes)
        if fn == "exp":  # 2^q rho + e^x |q| 2^-(W+1) (e^x |q| <= 1.6) + input + output + flush
            return rho + 1.6 * 2.0 ** -(w + 1) + q_in + lsb + math.exp(-16)
        if fn == "reciprocal":
            return er + d1 * q_in
        if fn == "sigmoid":
            return es + d1 * q_in + lsb
        if fn == "tanh":  # 1 - 2 e s
            return 2 * es + d1 * q_in + lsb
        if fn == "silu":  # |x| e s: a e^-a <= 1/e multiplies the relative errors of e and s
            return (0.37 * (2 * rho + er + 2.0**-w) + 2 * 2.0**-w + d1 * q_in + lsb
                    + 16 * math.exp(-16))
        a = torch.linspace(0, 8, 8001, dtype=F64)
        ae = a * torch.exp(-2 * GELU_C * (a + GELU_A * a**3))
        b = (float(ae.max()) * (2 * rho + er + 2.0**-w) + float((ae * gelu_dv(a, w)).max()) * 1.01
             + 2 * 2.0**-w + d1 * q_in + lsb)
        if fn == "gelu":  # the CORDIC unit computes the tanh form: add the formula's own error
            xs = torch.linspace(x_lo, x_hi, 200_001, dtype=F64)
            b += float((torch.nn.functional.gelu(xs) - torch.nn.functional.gelu(xs, approximate="tanh")).abs().max())
        return b
    spec = nl.FUNCTIONS[fn]
    kb = kernel_bound(m, KERNELS[spec.kernel])
    if fn == "exp":  # 2^q kb + |2^t - 2^(x log2 e)| with t rounded, log2(e) rounded, x rounded
        dt = 2.0 ** -(F + 1) + 16 * 2.0 ** -(F + 9) + q_in / math.log(2)
        return kb + math.log(2) * dt * 1.01 + lsb + math.exp(-16)
    if fn == "reciprocal":  # 2^-e (kb + mantissa truncation 2^-F) + input rounding, x >= 1
        return kb + 2.0**-F + d1 * q_in
    return kb + d1 * q_in + tail(fn, x_max)  # outputs are exact D-bit sums


METHODS = ("lut16", "lut8_interp", "lut64_interp", "pwl4", "pwl32", "cordic6", "cordic12", "cordic20",
           "lut64_in10_out12", "cordic10_in10_out14")


@pytest.mark.parametrize("method", METHODS)
def test_every_function_within_its_derived_bound(method):
    m = nl.get(method)
    for fn in FUNCS:
        x = nl.standard_inputs(fn, n_random=1024, n_grid=1025)
        spec = nl.FUNCTIONS[fn]
        err = nl.error_report(m, fn, x)["max_abs_error"]
        bound = function_bound(m, fn, spec.std_lo, spec.std_hi)
        assert err <= bound, f"{method} {fn}: error {err:.3e} above the derived bound {bound:.3e}"


@pytest.mark.parametrize("method", ["lut16", "lut256", "lut16_interp", "lut128_interp", "pwl8", "pwl64"])
def test_table_kernels_within_bound_and_the_bound_is_tight(method):
    """On every input the kernel can see; plain and interpolated LUTs reach at least half their bound
    (the worst cell sits where |g'| or |g''| peaks), so the bound is not vacuous."""
    m = nl.get(method)
    for k in KERNELS.values():
        u = _grid(k, m.in_frac)
        err = float((m.kernel(k, u) - k.ref(u)).abs().max())
        bound = kernel_bound(m, k)
        assert err <= bound, (method, k.name, err, bound)
        if isinstance(m, LUT) and k.name in ("exp2", "recip", "sigmoid", "tanh"):
            assert err >= 0.5 * bound, (method, k.name, err, bound)


@pytest.mark.parametrize("n", [4, 6, 8, 12, 16, 20])
def test_cordic_cores_within_bound_and_near_two_to_minus_n(n):
    w = nl.get(f"cordic{n}").frac_bits
    r = round_to(torch.linspace(0, math.log(2), 20_001, dtype=F64), w)
    e_exp = float((cordic_hyperbolic_exp(r, n, w) - torch.exp(r)).abs().max())
    m = torch.floor(torch.linspace(1, 2, 20_001, dtype=F64)[:-1] * 2**w) / 2**w
    e_rec = float((cordic_linear_divide(1.0, m, n, w) - 1 / m).abs().max())
    assert e_exp <= cordic_exp_bound(n, w) and e_rec <= cordic_recip_bound(n, w)
    # and the error really is ~2^-(last shift): not more than 3x better than the bound's main term
    assert e_exp >= 2.0 ** -hyperbolic_shifts(n)[-1] / 1.5 and e_rec >= 2.0 ** -(n - 1) / 1.5


def test_hyperbolic_shift_sequence_repeats_4_13_40():
    s = hyperbolic_shifts(45)
    repeats = [i for i in set(s) if s.count(i) == 2]
    assert sorted(repeats) == [4, 13, 40] and s[:6] == [1, 2, 3, 4, 4, 5] and len(s) == 45
    # the repeats make the angles cover the range: sum atanh(2^-i) > 1.118 > ln 2
    assert sum(math.atanh(2.0**-i) for i in s) > 1.118


def _scalar_cordic_exp(r: float, n: int, w: int) -> float:
    """Plain-loop twin of the hyperbolic datapath (Python floats, one value)."""
    def fl(v):
        return math.floor(v * 2**w) / 2**w

    def c(v):
        return math.floor(v * 2**w + 0.5) / 2**w

    k = math.prod(math.sqrt(1 - 4.0**-i) for i in hyperbolic_shifts(n))
    x, y, z = c(1 / k), 0.0, r
    for i in hyperbolic_shifts(n):
        d = 1.0 if z >= 0 else -1.0
        x, y = x + d * fl(y * 2.0**-i), y + d * fl(x * 2.0**-i)
        z -= d * c(math.atanh(2.0**-i))
    return x + y


def test_cordic_matches_a_plain_loop_bit_for_bit():
    n, w = 9, 18
    rs = [0.0, 0.1, 0.25, 0.5, 0.693, -0.01]
    got = cordic_hyperbolic_exp(round_to(torch.tensor(rs, dtype=F64), w), n, w).tolist()
    assert got == [_scalar_cordic_exp(math.floor(r * 2**w + 0.5) / 2**w, n, w) for r in rs]
    # linear vectoring of 1/1.5 with 6 steps: y = 1 -> -0.5 -> +0.25 -> -0.125 ... z = 1 - 1/2 + 1/4 - ...
    z = cordic_linear_divide(1.0, torch.tensor([1.5], dtype=F64), 6, 18).item()
    assert z == 1 - 0.5 + 0.25 - 0.125 + 0.0625 - 0.03125


def test_lut16_sigmoid_by_hand():
    """lut16 on sigmoid: a = |x| in [0, 16), 16 cells of width 1 indexed by the integer bits; the cell
    [1, 2) holds (sigmoid(1) + sigmoid(2 - 2^-12)) / 2 rounded half up to 2^-16 (sigmoid rises)."""
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    word = math.floor((s(1) + s(2 - 2**-12)) / 2 * 2**16 + 0.5) / 2**16
    y = nl.unit("lut16", "sigmoid").apply(torch.tensor([1.0, -1.0, 1.99, 20.0], dtype=F64)).tolist()
    assert y == [word, 1 - word, word, 1.0]


def test_more_entries_or_iterations_never_worse():
    """Sweeps on inputs already on the unit's input grid (so input rounding is not in the error):
    doubling a table / adding an iteration never raises the max error by more than one output LSB."""
    lsb = 2.0**-16
    for fn in ("exp", "reciprocal", "silu"):
        x = round_to(nl.standard_inputs(fn, n_random=1024, n_grid=1025), 12)
        for family, ns in (("lut{}", [4, 16, 64, 256, 1024]), ("lut{}_interp", [4, 16, 64, 256]),
                           ("pwl{}", [2, 4, 8, 16, 32, 64])):
            errs = [nl.error_report(family.format(n), fn, x)["max_abs_error"] for n in ns]
            assert all(b <= a + lsb for a, b in zip(errs, errs[1:], strict=False)), (fn, family, errs)
            assert errs[-1] < errs[0] / 8, (fn, family, errs)
    for fn in ("exp", "reciprocal", "sigmoid"):
        x = round_to(nl.standard_inputs(fn, n_random=512, n_grid=513), 12)
        errs = [nl.error_report(f"cordic{n}", fn, x)["max_abs_error"] for n in range(4, 21)]
        assert all(b <= a + lsb for a, b in zip(errs, errs[1:], strict=False)), (fn, errs)


def test_order_of_convergence():
    """4x the entries: plain LUT error (first order, h max|g'|) falls >= 3x; interpolated LUT and PWL
    (second order, h^2 max|g''|) fall >= 8x, where the error is not yet at the rounding floor."""
    for k in ("sigmoid", "gelu_res", "recip"):
        kern = KERNELS[k]
        u = _grid(kern, 12)
        e = {m: float((nl.get(m).kernel(kern, u) - kern.ref(u)).abs().max())
             for m in ("lut64", "lut256", "lut16_interp", "lut64_interp", "pwl8", "pwl32")}
        assert e["lut64"] / e["lut256"] >= 3, (k, e)
        assert e["lut16_interp"] / e["lut64_interp"] >= 8 and e["pwl8"] / e["pwl32"] >= 8, (k, e)


def test_apply_keeps_shape_dtype_and_saturates_as_stated():
    u = nl.unit("pwl16", "silu")
    x = torch.randn(3, 5, 7)
    y = u.apply(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    big = torch.tensor([100.0, 1000.0, -1000.0], dtype=F64)
    assert u.apply(big).tolist() == [100.0, 256 - 2**-12, 0.0]  # Q8.12 input saturates at 256
    e = nl.unit("cordic12", "exp").apply(torch.tensor([3.0, 0.0, -17.0, -100.0], dtype=F64))
    assert e[2:].tolist() == [0.0, 0.0] and e[0] == e[1]  # x > 0 clamps to 0; x < -16 flushes
    with pytest.raises(InputError):
        u.apply(torch.arange(4))


# ----------------------------------------------------------------------------------------------
# softmax


@pytest.mark.parametrize("method", ["lut256", "lut64_interp", "pwl16", "cordic12", "cordic16"])
def test_softmax_within_derived_bound(method):
    """e_i' = e_i (1 + d_i) + rounding, r' = (1 / sum e')(1 + eps): |y - p| <= 2 rho_e + rho_r
    + n LSB/2 + 2 (input rounding moves logits by q_in, p by <= 2 p q_in) + 2 LSB/2."""
    m = nl.get(method)
    g = torch.Generator().manual_seed(1)
    n = 32
    x = torch.randn(200, n, generator=g, dtype=F64) * torch.linspace(0.5, 12, 200, dtype=F64)[:, None]
    y = nl.softmax(m, x)
    err = float((y - torch.softmax(x, -1)).abs().max())
    F, D = m.in_frac, m.out_frac
    if isinstance(m, CORDIC):
        rho_e = cordic_exp_bound(m.iterations, m.frac_bits) + 12 * 2.0**-m.frac_bits
        rho_r = 2 * cordic_recip_bound(m.iterations, m.frac_bits)  # 1/m >= 1/2: relative <= 2x absolute
    else:
        rho_e = kernel_bound(m, KERNELS["exp2"]) + math.log(2) * (2.0 ** -(F + 1) + 16 * 2.0 ** -(F + 9)) * 1.01
        rho_r = 2 * (kernel_bound(m, KERNELS["recip"]) + 2.0**-F)
    bound = (2 * rho_e + rho_r + n * 2.0 ** -(D + 1) + 2 * 2.0 ** -(F + 1)) * 1.05 + 2 * 2.0 ** -(D + 1)
    assert err <= bound, (method, err, bound)
    assert torch.allclose(y.sum(-1), torch.ones(200, dtype=F64), atol=bound * n)


def test_softmax_cost_per_row_adds_up():
    t = get_tech(16)
    c1 = nl.softmax_cost("lut256", t, row_len=128, rows=1)
    c4 = nl.softmax_cost("lut256", t, row_len=128, rows=4)
    assert c4["cycles"] == 4 * c1["cycles"] and math.isclose(c4["energy_pj"], 4 * c1["energy_pj"])
    exp_unit = nl.unit("lut256", "exp").cost(t, 1)
    recip_unit = nl.unit("lut256", "reciprocal").cost(t, 1)
    # per row: 128 exp units + one reciprocal + the rest (max, subtract, sum, buffer, multiply) > 0
    assert c1["energy_pj_per_row"] > 128 * exp_unit["energy_pj_per_element"] + recip_unit["energy_pj_per_element"]
    # three passes of 128 elements plus the latencies
    assert 3 * 128 < c1["cycles_per_row"] < 3 * 128 + exp_unit["latency_cycles"] + recip_unit["latency_cycles"] + 10
    lanes = nl.softmax_cost("lut256", t, row_len=128, lanes=4)
    assert lanes["cycles_per_row"] < c1["cycles_per_row"] / 3


# ----------------------------------------------------------------------------------------------
# cost


class StubTech:
    """Linear, round-number technology so a unit's cost can be added up by hand."""

    clock_ghz = 1.0

    def add_energy_pj(self, kind, bits):
        return 0.01 * bits

    def mul_energy_pj(self, kind, bits):
        return 0.001 * bits * bits

    def sram_read_energy_pj_per_bit(self, capacity_bytes):
        return 0.001

    def reg_energy_pj_per_bit(self):
        return 0.002

    def add_area_um2(self, kind, bits):
        return 10.0 * bits

    def mul_area_um2(self, kind, bits):
        return 1.0 * bits * bits

    def sram_area_um2_per_bit(self, capacity_bytes):
        return 0.5

    def reg_area_um2_per_bit(self):
        return 5.0


def test_lut16_sigmoid_cost_by_hand():
    """lut16 on sigmoid, input Q8.12 signed (21 b), words of 16 + 1 bits:
      |x|: 21 b adder + 21 b register; range compare: 21 b; table 16 x 17 b: one 17 b read +
      17 b register; sign fix: 18 b adder + 18 b register.
      energy = 0.01*21 + 0.002*21 + 0.01*21 + 0.001*17 + 0.002*17 + 0.01*18 + 0.002*18 = 0.729 pJ
      area   = 210 + 105 + 210 + 0.5*16*17 + 85 + 180 + 90 = 1016 um^2
      latency 3 stages; 100 elements on one lane: 3 + 99 = 102 cycles; on 4 lanes: 3 + 24 = 27."""
    c = nl.unit("lut16", "sigmoid").cost(StubTech(), elements=100)
    assert math.isclose(c["energy_pj_per_element"], 0.729) and math.isclose(c["energy_pj"], 72.9)
    assert math.isclose(c["area_um2"], 1016.0)
    assert c["latency_cycles"] == 3 and c["cycles"] == 102 and c["table_bits"] == 16 * 17
    c4 = nl.unit("lut16", "sigmoid").cost(StubTech(), elements=100, lanes=4)
    assert c4["cycles"] == 27 and math.isclose(c4["area_um2"], 4 * 1016.0) and math.isclose(c4["energy_pj"], 72.9)
    assert math.isclose(c["time_s"], 102e-9)


def test_table_bits_by_hand():
    assert nl.unit("lut256", "silu").cost(StubTech())["table_bits"] == 256 * 17
    assert nl.unit("lut64_interp", "silu").cost(StubTech())["table_bits"] == 64 * 2 * 17
    # pwl16 on silu: rows of breakpoint (4 integer + 12 fraction bits), slope (18 b), intercept (17 b)
    assert nl.unit("pwl16", "silu").cost(StubTech())["table_bits"] == 16 * (16 + 18 + 17)
    assert nl.unit("cordic12", "silu").cost(StubTech())["table_bits"] == 0  # unrolled: constants are wires


@pytest.mark.parametrize("node", [45, 7])
def test_cost_monotone_in_table_size_and_iterations(node):
    """Bigger tables and more iterations never cost less area or energy per element. (Interpolated
    LUTs from 16 entries up: below that each doubling narrows the interpolation multiplier by a bit
    more than it grows a table of a few dozen bits -- a real effect, not a model defect.)"""
    t = get_tech(node)
    sweeps = (("lut{}", [2, 8, 32, 128, 512, 1024]), ("lut{}_interp", [16, 64, 256, 1024]),
              ("pwl{}", [1, 2, 4, 16, 64, 256]), ("cordic{}", range(2, 21)), ("cordic{}_iter", range(2, 21)))
    for fn in FUNCS:
        for family, ns in sweeps:
            costs = [nl.unit(family.format(n), fn).cost(t, 1000) for n in ns]
            for key in ("area_um2", "energy_pj", "latency_cycles"):
                vals = [c[key] for c in costs]
                assert all(b >= a for a, b in zip(vals, vals[1:], strict=False)), (fn, family, key, vals)
    unrolled, iterative = nl.unit("cordic12", "silu").cost(t, 1000), nl.unit("cordic12_iter", "silu").cost(t, 1000)
    assert iterative["area_um2"] < unrolled["area_um2"]
    assert unrolled["cycles_per_element"] == 1 and iterative["cycles_per_element"] == 12
    assert iterative["cycles"] > 11 * unrolled["cycles"]


# ----------------------------------------------------------------------------------------------
# registry and CLI


def test_registry_parses_families_and_rejects_bad_names():
    assert nl.get("lut64_interp") == LUT("lut64_interp", 64, True, 12, 16)
    assert nl.get("PWL16") == PWL("pwl16", 16, 12, 16)
    assert nl.get("cordic12_iter_in10_out14") == CORDIC("cordic12_iter_in10_out14", 12, True, 10, 14)
    assert all(nl.get(n) for n in nl.names())
    for bad, message in [("lut100", "power-of-two"), ("lutt256", "did you mean 'lut256'"),
                         ("pwl16_interp", "only lut tables interpolate"), ("cordic40", "2 .. 20 iterations"),
                         ("lut256_iter", "only cordic"), ("lut64_in20", "input fraction bits"), ("", "non-empty")]:
        with pytest.raises(InputError, match=message):
            nl.get(bad)
    with pytest.raises(InputError, match="unknown function 'relu'"):
        nl.unit("lut256", "relu")
    assert nl.unit("lut256", "GELU_ERF").function == "gelu"




def test_cli_json_and_table(capsys, monkeypatch):
    code, out, _ = run(["hw", "nonlinear", "--function", "gelu", "--methods", "lut256", "pwl16", "cordic8",
                        "--tech", "7", "--json"], capsys, monkeypatch)
    rows = json.loads(out)
    assert code == 0 and [r["method"] for r in rows] == ["lut256", "pwl16", "cordic8"]
    x = nl.standard_inputs("gelu")
    assert rows[1]["max_abs_error"] == nl.error_report("pwl16", "gelu", x)["max_abs_error"]
    assert rows[2]["energy_pj_per_element"] == nl.unit("cordic8", "gelu").cost(get_tech(7))["energy_pj_per_element"]
    code, out, _ = run(["hw", "nonlinear", "-f", "softmax", "-m", "lut64_interp,cordic12"], capsys, monkeypatch)
    assert code == 0 and "lut64_interp" in out and "cordic12" in out and "softmax at 45 nm" in out


@pytest.mark.parametrize("args,message", [
    (["--methods", "lut100"], "power-of-two"),
    (["--methods", "lut256", "foo9"], "unknown nonlinear method 'foo9'"),
    (["--function", "relu"], "unknown function 'relu'"),
    (["--tech", "22"], "technology node 22 nm is not tabulated"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message, capsys, monkeypatch):
    code, out, err = run(["hw", "nonlinear", *args], capsys, monkeypatch)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
