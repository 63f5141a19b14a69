"""The arithmetic of nonlinear hardware units: fixed point, kernels, LUT / PWL / CORDIC datapaths.

Everything here emulates the hardware bit for bit on float64 tensors that only ever hold dyadic
numbers (integers times 2^-frac): adds and fixed shifts are exact in float64 for the widths used
here (< 53 significant bits), and every multiply goes through `mul_round`, an exact int64 product
followed by a rounding shift. Rounding is "half up" (add half an LSB, then truncate), the usual
hardware rounder; a bare right shift truncates toward -inf (`floor_to`).

A *kernel* is the one-dimensional function a table or a segment list actually stores, on a
power-of-two interval, after the unit's range reduction / symmetry step:

    exp2        2^f, f in [0, 1)          exp(x) = 2^q * 2^f with x*log2(e) = q + f
    recip       1/m, m in [1, 2)          1/x = 2^-e * (1/m) with x = m * 2^e (leading-one detector)
    sigmoid     sigmoid(a), a in [0, 16)   odd symmetry: sigmoid(-a) = 1 - sigmoid(a)
    tanh        tanh(a), a in [0, 8)       odd symmetry
    silu_res    silu(a) - a, a in [0, 16)  silu(x) = relu(x) + silu_res(|x|)  (even residual)
    gelu_res    gelu(a) - a, a in [0, 8)   gelu(x) = relu(x) + gelu_res(|x|)  (erf form)
    gelu_tanh_res                          the same for the tanh form

Beyond its interval each kernel takes its limit (1, 1, 0, 0); the error of that is below the
default output LSB (2^-17) except where a test or a report says so.

The parts of a unit (`Part`) are what `nmx.hw.nonlinear` prices with a `Tech`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch

Tensor = torch.Tensor
F64 = torch.float64

# ----------------------------------------------------------------------------------------------
# fixed point


def round_to(v: Tensor, frac_bits: int) -> Tensor:
    """Round half up to a multiple of 2^-frac_bits (exact in float64 for |v| * 2^frac < 2^52)."""
    s = float(2**frac_bits)
    return torch.floor(v * s + 0.5) / s


def floor_to(v: Tensor, frac_bits: int) -> Tensor:
    """Truncate toward -inf to a multiple of 2^-frac_bits (an arithmetic right shift)."""
    s = float(2**frac_bits)
    return torch.floor(v * s) / s


def mul_round(a: Tensor, a_frac: int, b: Tensor | float, b_frac: int, out_frac: int) -> Tensor:
    """a * b rounded half up to out_frac bits, where a and b are already multiples of 2^-a_frac
    and 2^-b_frac: the exact int64 product, then a rounding shift (what a multiplier followed by a
    rounder does). Operands must fit int64 together (a_bits + b_bits <= 62)."""
    ai = torch.round(a * float(2**a_frac)).to(torch.int64)
    if isinstance(b, Tensor):
        bi = torch.round(b * float(2**b_frac)).to(torch.int64)
    else:
        bi = int(round(b * 2**b_frac))
    p = ai * bi
    shift = a_frac + b_frac - out_frac
    if shift > 0:
        p = (p + (1 << (shift - 1))) >> shift
        return p.to(F64) / float(2**out_frac)
    return p.to(F64) * float(2 ** (-shift)) / float(2**out_frac)


def const(value: float, frac_bits: int) -> float:
    """A constant as the hardware stores it: rounded to frac_bits fraction bits."""
    return math.floor(value * 2**frac_bits + 0.5) / 2**frac_bits


# ----------------------------------------------------------------------------------------------
# kernels

GELU_C = math.sqrt(2.0 / math.pi)  # the tanh form: 0.5x(1 + tanh(c(x + 0.044715 x^3)))
GELU_A = 0.044715  # Hendrycks & Gimpel, "Gaussian Error Linear Units" (2016), eq. for the tanh approximation


def _gelu_tanh_arg2(u: Tensor) -> Tensor:
    """2 * c * (u + 0.044715 u^3): gelu_tanh(u) = u * sigmoid(this)."""
    return 2.0 * GELU_C * (u + GELU_A * u**3)


@dataclass(frozen=True)
class Kernel:
    """g on [lo, lo + width) (width a power of two), with its float64 reference and its limit beyond."""

    name: str
    lo: float
    width: float
    ref: Callable[[Tensor], Tensor]
    beyond: float  # the value the unit outputs for arguments >= lo + width

    @property
    def hi(self) -> float:
        return self.lo + self.width

    def index_bits(self) -> int:
        """Integer bits of the kernel argument that select a table entry (log2 width)."""
        return int(math.log2(self.width))


KERNELS: dict[str, Kernel] = {
    k.name: k
    for k in (
        Kernel("exp2", 0.0, 1.0, lambda u: torch.exp2(u), 2.0),
        Kernel("recip", 1.0, 1.0, lambda u: 1.0 / u, 0.5),
        Kernel("sigmoid", 0.0, 16.0, torch.sigmoid, 1.0),
        Kernel("tanh", 0.0, 8.0, torch.tanh, 1.0),
        Kernel("silu_res", 0.0, 16.0, lambda u: -u * torch.sigmoid(-u), 0.0),
        Kernel("gelu_res", 0.0, 8.0, lambda u: -u * 0.5 * torch.special.erfc(u / math.sqrt(2.0)), 0.0),
        Kernel("gelu_tanh_res", 0.0, 8.0, lambda u: -u * torch.sigmoid(-_gelu_tanh_arg2(u)), 0.0),
    )
}

# ----------------------------------------------------------------------------------------------
# parts


@dataclass(frozen=True)
class Part:
    """One kind of hardware block in a unit.

    kind: "add" (adder / subtractor), "cmp" (comparator, priced as an adder of its width),
    "mul" (an a x b multiplier, `bits` = ceil(sqrt(a*b)): array area grows with a*b),
    "shift" (barrel shifter; a fixed shift is wiring and is not listed), "lod" (leading-one
    detector), "table" (`words` x `bits` ROM, priced as an SRAM of that capacity), "reg"
    (pipeline / state register of `bits`).
    count: instances (area); uses: activations per element (energy); cycles: pipeline stages it adds.
    """

    name: str
    kind: str
    bits: int
    count: int = 1
    uses: float = 1.0
    words: int = 0
    cycles: int = 0


def mul_bits(a_bits: int, b_bits: int) -> int:
    return max(1, math.ceil(math.sqrt(a_bits * b_bits)))


def staged(name: str, kind: str, bits: int, count: int = 1, uses: float = 1.0, words: int = 0,
           reg_bits: int | None = None) -> list[Part]:
    """An operation that takes one pipeline stage, and the register that latches its result."""
    rb = bits if reg_bits is None else reg_bits
    return [Part(name, kind, bits, count, uses, words, cycles=1),
            Part(f"{name} (register)", "reg", rb, count, uses)]


# ----------------------------------------------------------------------------------------------
# table methods: plain LUT, interpolated LUT, piecewise linear with comparators


def _grid(k: Kernel, frac_bits: int) -> Tensor:
    """Every input the kernel can see: lo, lo + 2^-F, ..., hi - 2^-F."""
    n = int(k.width * 2**frac_bits)
    return k.lo + torch.arange(n, dtype=F64) / float(2**frac_bits)


def _segment_minimax(values: Tensor, seg: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Per-segment max and min of `values` (seg[i] = segment of values[i])."""
    mx = torch.full((n,), -math.inf, dtype=F64).scatter_reduce(0, seg, values, "amax")
    mn = torch.full((n,), math.inf, dtype=F64).scatter_reduce(0, seg, values, "amin")
    return mx, mn


@lru_cache(maxsize=256)
def lut_table(kernel: str, entries: int, in_frac: int, out_frac: int) -> Tensor:
    """Plain LUT: entry i holds the minimax constant of g over the inputs of cell i
    ((max + min) / 2 over the reachable grid points), rounded to out_frac bits."""
    k = KERNELS[kernel]
    u = _grid(k, in_frac)
    g = k.ref(u)
    cell = torch.div(torch.arange(u.numel()), u.numel() // entries, rounding_mode="floor")
    mx, mn = _segment_minimax(g, cell, entries)
    return round_to((mx + mn) / 2, out_frac)


@lru_cache(maxsize=256)
def interp_table(kernel: str, entries: int, out_frac: int) -> tuple[Tensor, Tensor]:
    """Interpolated LUT: knot values g(lo + i h), i = 0..entries, rounded; stored per entry as
    (value, delta to the next knot)."""
    k = KERNELS[kernel]
    knots = round_to(k.ref(k.lo + torch.arange(entries + 1, dtype=F64) * (k.width / entries)), out_frac)
    return knots[:-1].clone(), knots[1:] - knots[:-1]


def pwl_breakpoints(kernel: str, segments: int, in_frac: int) -> Tensor:
    """Segment starts t_0 = lo < t_1 < ... < t_{N-1}, on the input grid, placed so every segment
    has about the same chord error h^2/8 * |g''|: the cumulative of sqrt(|g''|) is cut into N
    equal parts (the equidistribution rule; a floor of 1e-3 * its mean keeps flat tails finite)."""
    k = KERNELS[kernel]
    n_fine = 1 << 14
    u = k.lo + (torch.arange(n_fine, dtype=F64) + 0.5) * (k.width / n_fine)
    step = k.width / n_fine
    g2 = (k.ref(u + step) - 2 * k.ref(u) + k.ref(u - step)) / step**2
    rho = g2.abs().sqrt()
    rho = rho + 1e-3 * rho.mean() + 1e-300
    cum = torch.cat([torch.zeros(1, dtype=F64), torch.cumsum(rho, 0)])
    cum = cum / cum[-1]
    edges = k.lo + torch.arange(n_fine + 1, dtype=F64) * step
    targets = torch.arange(segments, dtype=F64) / segments
    idx = torch.searchsorted(cum, targets).clamp(1, n_fine)
    c0, c1 = cum[idx - 1], cum[idx]
    t = edges[idx - 1] + (targets - c0) / (c1 - c0).clamp_min(1e-300) * step
    t = round_to(t, in_frac)
    t[0] = k.lo
    # strictly increasing by at least one LSB, and room for every later segment before hi
    lsb = 2.0**-in_frac
    ramp = torch.arange(segments, dtype=F64) * lsb
    t = torch.cummax(t - ramp, 0).values + ramp
    top = k.hi - (segments - torch.arange(segments, dtype=F64)) * lsb
    t = torch.minimum(t, top)
    return t


@lru_cache(maxsize=256)
def pwl_table(kernel: str, segments: int, in_frac: int, out_frac: int) -> tuple[Tensor, Tensor, Tensor]:
    """(breakpoints t, slopes s, intercepts b): y = b_k + s_k (u - t_k) on [t_k, t_{k+1}).

    s_k is the chord slope rounded to out_frac + 1 bits; b_k is g(t_k) moved by the midpoint of the
    chord's error over the segment's grid inputs (the minimax offset), rounded to out_frac bits."""
    k = KERNELS[kernel]
    t = pwl_breakpoints(kernel, segments, in_frac)
    ends = torch.cat([t[1:], torch.tensor([k.hi], dtype=F64)])
    s = round_to((k.ref(ends) - k.ref(t)) / (ends - t), out_frac + 1)
    u = _grid(k, in_frac)
    seg = torch.searchsorted(t, u, right=True) - 1
    d = k.ref(u) - k.ref(t[seg]) - s[seg] * (u - t[seg])
    mx, mn = _segment_minimax(d, seg, segments)
    b = round_to(k.ref(t) + (mx + mn) / 2, out_frac)
    return t, s, b


# ----------------------------------------------------------------------------------------------
# CORDIC


def hyperbolic_shifts(iterations: int) -> list[int]:
    """Shift amounts of hyperbolic CORDIC: 1, 2, 3, 4, 4, 5, ..., 13, 13, ..., 40, 40, ...

    Indices 4, 13, 40, 121 (k -> 3k + 1) run twice; without the repeats the angles atanh(2^-i)
    shrink too fast for the iteration to converge (Walther, "A unified algorithm for elementary
    functions", AFIPS 1971)."""
    out, i, repeat = [], 1, 4
    while len(out) < iterations:
        out.append(i)
        if i == repeat and len(out) < iterations:
            out.append(i)
            repeat = 3 * repeat + 1
        i += 1
    return out


def hyperbolic_gain(iterations: int) -> float:
    """K_h = prod sqrt(1 - 2^-2i) over the shift sequence (x_n = K_h (x cosh z + y sinh z))."""
    return math.prod(math.sqrt(1.0 - 4.0**-i) for i in hyperbolic_shifts(iterations))


def cordic_hyperbolic_exp(r: Tensor, iterations: int, frac_bits: int) -> Tensor:
    """e^r by hyperbolic CORDIC in rotation mode, |r| <= 1.118 (the sum of the angles).

    x0 = 1/K_h, y0 = 0, z0 = r; each step d = sign(z), x += d y 2^-i, y += d x 2^-i,
    z -= d atanh(2^-i); at the end x = cosh r, y = sinh r and e^r = x + y. Shifts truncate
    (arithmetic right shift) to frac_bits; constants are rounded to frac_bits."""
    w = frac_bits
    x = torch.full_like(r, const(1.0 / hyperbolic_gain(iterations), w))
    y = torch.zeros_like(r)
    z = r
    for i in hyperbolic_shifts(iterations):
        d = torch.where(z >= 0, 1.0, -1.0).to(F64)
        x, y = x + d * floor_to(y * 2.0**-i, w), y + d * floor_to(x * 2.0**-i, w)
        z = z - d * const(math.atanh(2.0**-i), w)
    return x + y


def cordic_linear_divide(num: float, m: Tensor, iterations: int, frac_bits: int) -> Tensor:
    """num / m by linear CORDIC in vectoring mode, m in [1, 2), num / m < 2.

    x = m, y0 = num, z0 = 0; step i = 0..N-1: d = -sign(y), y += d m 2^-i, z -= d 2^-i; y is
    driven to 0 and z to num/m, within 2^-(N-1)."""
    y = torch.full_like(m, num)
    z = torch.zeros_like(m)
    for i in range(iterations):
        d = torch.where(y >= 0, -1.0, 1.0).to(F64)
        y = y + d * floor_to(m * 2.0**-i, frac_bits)
        z = z - d * 2.0**-i
    return z


# ----------------------------------------------------------------------------------------------
# the functions a unit computes, with their input formats


@dataclass(frozen=True)
class FunctionSpec:
    """An elementwise function: float64 reference, input word, standard input range for reports.

    The input word is fixed point with `int_bits` integer bits and the method's fraction bits,
    two's complement when `signed`; inputs saturate to its range (exp also clamps x > 0 to 0 and
    flushes x < -EXP_FLUSH to 0; reciprocal clamps x below one LSB up to one LSB)."""

    name: str
    ref: Callable[[Tensor], Tensor]
    int_bits: int
    signed: bool
    std_lo: float
    std_hi: float
    kernel: str | None  # what a table method stores (exp and reciprocal reduce their range first)
    note: str

    def input_bits(self, frac_bits: int) -> int:
        return int(self.signed) + self.int_bits + frac_bits

    def quantize(self, x: Tensor, frac_bits: int) -> Tensor:
        """x as the unit's input register holds it (float64, a multiple of 2^-frac_bits)."""
        x = x.to(F64)
        lsb = 2.0**-frac_bits
        lo = -(2.0**self.int_bits) if self.signed else lsb
        hi = 2.0**self.int_bits - lsb
        if self.name == "exp":
            hi = 0.0
        return round_to(x.clamp(lo, hi), frac_bits)


EXP_FLUSH = 16.0  # e^-16 = 1.1e-7 < 2^-23: below the output LSB of any default unit


FUNCTIONS: dict[str, FunctionSpec] = {
    f.name: f
    for f in (
        FunctionSpec("exp", torch.exp, 5, True, -16.0, 0.0, "exp2",
                     "e^x for x <= 0 (softmax after max subtraction): 2^q * 2^f"),
        FunctionSpec("reciprocal", lambda x: 1.0 / x, 16, False, 1.0, 1024.0, "recip",
                     "1/x for x > 0: leading-one normalize, 1/m on [1, 2); output = mantissa * 2^-e"),
        FunctionSpec("sigmoid", torch.sigmoid, 8, True, -12.0, 12.0, "sigmoid", "odd symmetry around 1/2"),
        FunctionSpec("tanh", torch.tanh, 8, True, -12.0, 12.0, "tanh", "odd symmetry"),
        FunctionSpec("silu", torch.nn.functional.silu, 8, True, -12.0, 12.0, "silu_res",
                     "x * sigmoid(x) = relu(x) + residual(|x|)"),
        FunctionSpec("gelu", lambda x: torch.nn.functional.gelu(x), 8, True, -12.0, 12.0, "gelu_res",
                     "erf form = relu(x) + residual(|x|); CORDIC computes the tanh form"),
        FunctionSpec("gelu_tanh", lambda x: torch.nn.functional.gelu(x, approximate="tanh"), 8, True,
                     -12.0, 12.0, "gelu_tanh_res", "tanh form = relu(x) + residual(|x|)"),
    )
}
