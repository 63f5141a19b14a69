"""The approximation methods: what each computes (`evaluate`) and what it is built from (`parts`).

    LUT(entries)             plain table, index = the top bits of the kernel argument
    LUT(entries, interp)     table of (value, delta) + one multiply-add: linear interpolation
    PWL(segments)            non-uniform segments chosen by comparators, y = b_k + s_k (u - t_k)
    CORDIC(iterations)       hyperbolic rotation for e^r after range reduction, linear vectoring
                             for 1/m; sigmoid / tanh / SiLU / GELU built from those two

All take the input with `in_frac` fraction bits and give the output with `out_frac` fraction bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nmx.hw.nonlinear_units import (
    EXP_FLUSH,
    F64,
    FUNCTIONS,
    GELU_A,
    GELU_C,
    KERNELS,
    Kernel,
    Part,
    Tensor,
    cordic_hyperbolic_exp,
    cordic_linear_divide,
    floor_to,
    interp_table,
    lut_table,
    mul_bits,
    mul_round,
    pwl_table,
    round_to,
    staged,
)

LOG2E = 1.0 / math.log(2.0)
Q_BITS = 6  # the integer part q of x*log2(e) for x in [-32, 0]: 5 bits + sign


def _split(t: Tensor) -> tuple[Tensor, Tensor]:
    """t = q + f with q integer and f in [0, 1): the integer bits and the fraction bits."""
    q = torch.floor(t)
    return q, t - q


def _normalize(v: Tensor, frac_bits: int) -> tuple[Tensor, Tensor]:
    """v > 0 as m * 2^e with m in [1, 2) truncated to frac_bits (leading-one detector + shift)."""
    mant, ex = torch.frexp(v)
    return floor_to(mant * 2.0, frac_bits), (ex - 1).to(F64)


# ----------------------------------------------------------------------------------------------
# table methods


class _TableMethod:
    """Shared range reduction and symmetry around a table kernel (LUT, interpolated LUT, PWL)."""

    in_frac: int
    out_frac: int

    # subclasses: the kernel itself
    def kernel_core(self, k: Kernel, u: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def kernel_parts(self, k: Kernel) -> list[Part]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def cycles_per_element(self) -> int:
        return 1

    def kernel(self, k: Kernel, u: Tensor) -> Tensor:
        """g(u) on [lo, hi), its limit at and beyond hi (the range comparator's job)."""
        inside = u < k.hi
        uc = u.clamp(k.lo, k.hi - 2.0**-self.in_frac)
        return torch.where(inside, self.kernel_core(k, uc), torch.full_like(u, k.beyond))

    def exp_parts(self, x: Tensor, frac: int) -> tuple[Tensor, Tensor]:
        """e^x for x <= 0 as (mantissa, q): value = mantissa * 2^q, mantissa 0 where flushed."""
        xc = x.clamp(-EXP_FLUSH, 0.0)
        t = mul_round(xc, frac, LOG2E, self.in_frac + 8, self.in_frac)
        q, f = _split(t)
        mant = self.kernel(KERNELS["exp2"], f)
        return torch.where(x < -EXP_FLUSH, 0.0, mant), q

    def reciprocal(self, v: Tensor) -> Tensor:
        m, e = _normalize(v, self.in_frac)
        return self.kernel(KERNELS["recip"], m) * torch.exp2(-e)

    def evaluate(self, fn: str, x: Tensor) -> Tensor:
        """The unit's output for the quantized input x (a multiple of 2^-in_frac)."""
        if fn == "exp":
            mant, q = self.exp_parts(x, self.in_frac)
            return round_to(mant * torch.exp2(q), self.out_frac)
        if fn == "reciprocal":
            return self.reciprocal(x)  # mantissa (out_frac bits) and shift: no rounding of the value
        spec = FUNCTIONS[fn]
        a = x.abs()
        k = self.kernel(KERNELS[spec.kernel], a)
        if fn == "sigmoid":
            y = torch.where(x >= 0, k, 1.0 - k)
        elif fn == "tanh":
            y = torch.where(x >= 0, k, -k)
        else:  # silu, gelu, gelu_tanh: relu + even residual
            y = x.clamp_min(0.0) + k
        return round_to(y, self.out_frac)

    def parts(self, fn: str) -> list[Part]:
        spec = FUNCTIONS[fn]
        F, D = self.in_frac, self.out_frac
        bi = spec.input_bits(F)
        k = KERNELS[spec.kernel]
        core = self.kernel_parts(k)
        if fn == "exp":
            return ([Part("underflow compare", "cmp", bi)]
                    + staged("x * log2(e)", "mul", mul_bits(bi, F + 9), reg_bits=Q_BITS + F)
                    + core + staged("shift by q", "shift", D + 1))
        if fn == "reciprocal":
            return (staged("leading-one detect", "lod", bi, reg_bits=Q_BITS)
                    + staged("normalize shift", "shift", bi, reg_bits=F) + core)
        out = staged("|x|", "add", bi) + [Part("range compare", "cmp", bi)] + core
        if fn in ("sigmoid", "tanh"):
            return out + staged("sign fix (1 - y or -y)", "add", D + 2)
        return out + staged("relu(x) + residual", "add", spec.int_bits + D + 1)


@dataclass(frozen=True)
class LUT(_TableMethod):
    """`entries` words per kernel, indexed by the top log2(entries) bits of the kernel argument.

    Plain: each word is the minimax constant of its cell; error <= h/2 * max|g'| + LSB/2 with
    h = width / entries. Interpolated: words hold g at the cell's left knot and the delta to the
    next knot; y = T_i + round(phi * delta_i) with phi the bits below the index; error <=
    h^2/8 * max|g''| + LSB."""

    name: str
    entries: int
    interp: bool = False
    in_frac: int = 12
    out_frac: int = 16

    def kernel_core(self, k: Kernel, u: Tensor) -> Tensor:
        h = k.width / self.entries
        i = torch.floor((u - k.lo) / h).long()
        if not self.interp:
            return lut_table(k.name, self.entries, self.in_frac, self.out_frac)[i]
        value, delta = interp_table(k.name, self.entries, self.out_frac)
        phi = (u - k.lo) / h - i  # the low bits: an exact fraction with in_frac + log2(h) bits
        phi_bits = self.phi_bits(k)
        return value[i] + mul_round(phi, phi_bits, delta[i], self.out_frac, self.out_frac)

    def phi_bits(self, k: Kernel) -> int:
        return self.in_frac + k.index_bits() - int(math.log2(self.entries))

    def kernel_parts(self, k: Kernel) -> list[Part]:
        word = self.out_frac + 1
        if not self.interp:
            return staged(f"table {self.entries} x {word} b", "table", word, words=self.entries)
        phi = max(1, self.phi_bits(k))
        return (staged(f"table {self.entries} x 2 x {word} b (value, delta)", "table", 2 * word,
                       words=self.entries)
                + staged("phi * delta", "mul", mul_bits(phi, word + 1), reg_bits=word)
                + staged("value + product", "add", word))

    def describe(self) -> dict:
        return {"family": "lut_interp" if self.interp else "lut", "entries": self.entries,
                "in_frac_bits": self.in_frac, "out_frac_bits": self.out_frac}


@dataclass(frozen=True)
class PWL(_TableMethod):
    """`segments` linear pieces with non-uniform breakpoints (equal chord error), picked by
    segments - 1 comparators; y = b_k + s_k (u - t_k). Error <= max_k (h_k^2/8 max|g''| on k
    + 2^-(out+2) h_k) + LSB (intercept and product rounding)."""

    name: str
    segments: int
    in_frac: int = 12
    out_frac: int = 16

    def kernel_core(self, k: Kernel, u: Tensor) -> Tensor:
        t, s, b = pwl_table(k.name, self.segments, self.in_frac, self.out_frac)
        seg = torch.searchsorted(t[1:].contiguous(), u.contiguous(), right=True)  # = #comparators that fire
        return b[seg] + mul_round(u - t[seg], self.in_frac, s[seg], self.out_frac + 1, self.out_frac)

    def kernel_parts(self, k: Kernel) -> list[Part]:
        bk = k.index_bits() + self.in_frac
        word = self.out_frac + 1
        row = bk + (word + 1) + word  # breakpoint, slope, intercept
        sel = max(1, math.ceil(math.log2(self.segments))) if self.segments > 1 else 1
        cmps = self.segments - 1
        # the comparators fire in parallel; the priority encoder after them is folded into their
        # stage (not priced) and latches the segment number
        out = [Part(f"{cmps} breakpoint comparators", "cmp", bk, count=cmps, uses=cmps, cycles=1),
               Part("segment number (register)", "reg", sel)] if cmps else []
        return (out + staged(f"coefficients {self.segments} x {row} b", "table", row, words=self.segments)
                + staged("u - t_k", "add", bk)
                + staged("s_k * (u - t_k)", "mul", mul_bits(bk, word + 1), reg_bits=word)
                + staged("b_k + product", "add", word))

    def describe(self) -> dict:
        return {"family": "pwl", "segments": self.segments, "in_frac_bits": self.in_frac,
                "out_frac_bits": self.out_frac}


# ----------------------------------------------------------------------------------------------
# CORDIC


@dataclass(frozen=True)
class CORDIC:
    """Hyperbolic CORDIC for e^r (r = x - q ln2 in [0, ln2), q = floor(x log2 e)) and linear
    vectoring CORDIC for 1/m; `iterations` steps each (hyperbolic shifts 1, 2, 3, 4, 4, 5, ...,
    13, 13, ...). Unrolled (one stage per iteration, one element per cycle) or `iterative` (one
    stage reused, `iterations` cycles per element). Datapath: `frac_bits` fraction bits =
    max(iterations + ceil(log2 iterations) + 1, out_frac + 2)."""

    name: str
    iterations: int
    iterative: bool = False
    in_frac: int = 12
    out_frac: int = 16

    @property
    def frac_bits(self) -> int:
        n = self.iterations
        return max(n + math.ceil(math.log2(n)) + 1, self.out_frac + 2)

    @property
    def cycles_per_element(self) -> int:
        return self.iterations if self.iterative else 1

    # ---- arithmetic
    def exp_parts(self, x: Tensor, frac: int) -> tuple[Tensor, Tensor]:
        """e^x for x <= 0 as (mantissa, q), mantissa 0 where x < -16."""
        w = self.frac_bits
        xc = x.clamp(-EXP_FLUSH, 0.0)
        q = torch.floor(mul_round(xc, frac, LOG2E, w, w))
        r = xc - mul_round(q, 0, math.log(2.0), w, w)
        mant = cordic_hyperbolic_exp(r, self.iterations, w)
        return torch.where(x < -EXP_FLUSH, 0.0, mant), q

    def reciprocal(self, v: Tensor) -> Tensor:
        m, e = _normalize(v, self.frac_bits)
        return cordic_linear_divide(1.0, m, self.iterations, self.frac_bits) * torch.exp2(-e)

    def _e_and_s(self, arg: Tensor, frac: int) -> tuple[Tensor, Tensor, Tensor]:
        """e = e^-arg (arg >= 0) as (mantissa, q) and s = 1 / (1 + e)."""
        w = self.frac_bits
        mant, q = self.exp_parts(-arg, frac)
        s = self.reciprocal(floor_to(1.0 + mant * torch.exp2(q), w))
        return mant, q, s

    def evaluate(self, fn: str, x: Tensor) -> Tensor:
        F, D, w = self.in_frac, self.out_frac, self.frac_bits
        if fn == "exp":
            mant, q = self.exp_parts(x, F)
            return round_to(mant * torch.exp2(q), D)
        if fn == "reciprocal":
            return self.reciprocal(x)
        a = x.abs()
        if fn == "sigmoid":  # s = sigmoid(|x|); sigmoid(-|x|) = e * s
            mant, q, s = self._e_and_s(a, F)
            es = mul_round(mant, w, s, w, w) * torch.exp2(q)
            return round_to(torch.where(x >= 0, s, es), D)
        if fn == "tanh":  # tanh(|x|) = 1 - 2 e s with e = e^-2|x|
            mant, q, s = self._e_and_s(2.0 * a, F)
            es = mul_round(mant, w, s, w, w) * torch.exp2(q)
            return round_to(torch.where(x >= 0, 1.0, -1.0) * (1.0 - 2.0 * es), D)
        if fn == "silu":  # relu(x) - |x| e s, e = e^-|x|
            mant, q, s = self._e_and_s(a, F)
        elif fn in ("gelu", "gelu_tanh"):  # relu(x) - |x| e s, e = e^-2c(a + 0.044715 a^3): the tanh form
            ac = a.clamp_max(8.0)  # 2c(8 + 0.044715 * 512) = 49 > 16: e flushes to 0 anyway
            a2 = mul_round(ac, F, ac, F, w)
            a3 = mul_round(a2, w, ac, F, w)
            t = ac + mul_round(a3, w, GELU_A, w, w)
            v = mul_round(t, w, 2.0 * GELU_C, w, w)
            mant, q, s = self._e_and_s(v, w)
        else:
            raise KeyError(fn)
        p = mul_round(mant, w, s, w, w)
        residual = mul_round(a, F, p, w, w) * torch.exp2(q)
        return round_to(x.clamp_min(0.0) - residual, D)

    # ---- hardware
    def _width(self) -> int:
        return self.frac_bits + 3  # sign + 2 integer bits (cosh, sinh, e^r < 2; |z| < 1.2)

    def _hyperbolic(self) -> list[Part]:
        n, wc = self.iterations, self._width()
        if not self.iterative:  # one stage per iteration; shifts by a fixed i are wires
            return [Part(f"hyperbolic x, y, z adders ({n} stages)", "add", wc, count=3 * n, uses=3 * n, cycles=n),
                    Part("hyperbolic stage registers", "reg", wc, count=3 * n, uses=3 * n)]
        return [Part("hyperbolic x, y, z adders (iterative)", "add", wc, count=3, uses=3 * n, cycles=n),
                Part("barrel shifters for x, y", "shift", wc, count=2, uses=2 * n),
                Part(f"atanh constants {n} x {self.frac_bits} b", "table", self.frac_bits, words=n, uses=n),
                Part("x, y, z registers", "reg", wc, count=3, uses=3 * n),
                Part("iteration counter", "add", math.ceil(math.log2(n)) + 1, uses=n)]

    def _linear(self) -> list[Part]:
        n, wc = self.iterations, self._width()
        if not self.iterative:
            return [Part(f"linear y, z adders ({n} stages)", "add", wc, count=2 * n, uses=2 * n, cycles=n),
                    Part("linear stage registers (x, y, z)", "reg", wc, count=3 * n, uses=3 * n)]
        return [Part("linear y, z adders (iterative)", "add", wc, count=2, uses=2 * n, cycles=n),
                Part("barrel shifter for x", "shift", wc, uses=n),
                Part("x, y, z registers", "reg", wc, count=3, uses=3 * n),
                Part("iteration counter", "add", math.ceil(math.log2(n)) + 1, uses=n)]

    def _exp_unit(self, in_bits: int) -> list[Part]:
        wc = self._width()
        return ([Part("underflow compare", "cmp", in_bits)]
                + staged("x * log2(e)", "mul", mul_bits(in_bits, self.frac_bits + 1), reg_bits=Q_BITS)
                + staged("q * ln2", "mul", mul_bits(Q_BITS, self.frac_bits + 1), reg_bits=wc)
                + staged("r = x - q ln2", "add", wc)
                + self._hyperbolic() + staged("cosh + sinh", "add", wc))

    def _e_and_s_unit(self, in_bits: int) -> list[Part]:
        wc = self._width()
        # 1 + e lies in (1, 2]: normalizing it is a 1-bit check, folded into the add
        return (self._exp_unit(in_bits) + staged("shift by q", "shift", wc)
                + staged("1 + e", "add", wc) + self._linear())

    def parts(self, fn: str) -> list[Part]:
        spec = FUNCTIONS[fn]
        F, D, wc = self.in_frac, self.out_frac, self._width()
        bi = spec.input_bits(F)
        if fn == "exp":
            return self._exp_unit(bi) + staged("shift by q", "shift", D + 1)
        if fn == "reciprocal":
            return (staged("leading-one detect", "lod", bi, reg_bits=Q_BITS)
                    + staged("normalize shift", "shift", bi, reg_bits=wc) + self._linear())
        out = staged("|x|", "add", bi)
        if fn in ("sigmoid", "tanh"):
            out += self._e_and_s_unit(bi) + staged("e * s", "mul", wc)
            if fn == "tanh":
                out += staged("1 - 2 e s", "add", wc)
            return out
        if fn in ("gelu", "gelu_tanh"):
            a_bits = 3 + F  # |x| clamped to 8
            out += ([Part("clamp compare |x| >= 8", "cmp", bi)]
                    + staged("a^2", "mul", mul_bits(a_bits, a_bits), reg_bits=wc + 3)
                    + staged("a^3", "mul", mul_bits(wc + 3, a_bits), reg_bits=wc + 6)
                    + staged("0.044715 a^3", "mul", mul_bits(wc + 6, wc), reg_bits=wc + 6)
                    + staged("a + 0.044715 a^3", "add", wc + 6)
                    + staged("2c * (...)", "mul", mul_bits(wc + 6, wc), reg_bits=wc + 6))
            out += self._e_and_s_unit(wc + 6)
        else:
            out += self._e_and_s_unit(bi)
        return (out + staged("e * s", "mul", wc) + staged("|x| * e s", "mul", mul_bits(bi, wc), reg_bits=wc)
                + staged("shift by q", "shift", wc) + staged("relu(x) - residual", "add", spec.int_bits + D + 1))

    def describe(self) -> dict:
        return {"family": "cordic", "iterations": self.iterations, "iterative": self.iterative,
                "datapath_frac_bits": self.frac_bits, "in_frac_bits": self.in_frac,
                "out_frac_bits": self.out_frac}
