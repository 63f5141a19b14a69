"""Element codecs: one value, a few bits, exact to the bit.

`FloatElement` covers every small float nmx speaks: the OCP FP8 (E4M3, E5M2), the
OCP MX FP6 (E2M3, E3M2) and FP4 (E2M1), the scale formats E8M0 and UE4M3, and any
other sign/exponent/mantissa split a researcher names. `IntElement` covers
symmetric two's-complement and unsigned integers, optionally with an implicit
fixed-point scale (MXINT8's 2^-6).

Each codec does three things on float32 tensors:
- `round(x)`: the nearest representable value (or the mode's choice), as float32;
- `encode(values)`: representable values -> integer codes (int32 tensor);
- `decode(codes)`: codes -> float32 values, from a table of every code.

Rounding works on the float32 bit pattern: the exponent of |x| fixes the grid
spacing (clamped to the smallest normal exponent, which gives subnormals), the
magnitude is scaled so the spacing is 1, rounded to an integer, and scaled back.
All scalings are by powers of two, so the only rounding is the one we ask for.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from nmx.errors import FormatError
from nmx.formats.rounding import Rounding, near_boundary, round_int

# How a float format spends its top exponent code.
IEEE = "ieee"  # all-ones exponent: infinities (mantissa 0) and NaNs, like IEEE 754 / FP8 E5M2
FN = "fn"  # finite: only the all-ones pattern is NaN, like FP8 E4M3
FINITE = "finite"  # every code is a number, no Inf and no NaN: FP6, FP4
E8M0 = "e8m0"  # exponent only, no sign, no zero, 0xFF is NaN


def _f32_from_exponent(e: torch.Tensor) -> torch.Tensor:
    """2**e as float32 for integer e in [-126, 127], exactly, without pow()."""
    return ((e + 127) << 23).to(torch.int32).view(torch.float32)


def _f32_exponent(a: torch.Tensor) -> torch.Tensor:
    """floor(log2 a) for positive normal float32 a (-127 for zero and subnormals)."""
    return ((a.view(torch.int32) >> 23) & 0xFF) - 127


@dataclass(frozen=True)
class FloatElement:
    """A small binary float: `ebits` exponent bits, `mbits` mantissa bits."""

    name: str
    ebits: int
    mbits: int
    bias: int
    specials: str = FINITE
    signed: bool = True
    #: bits it occupies when stored on its own (UE4M3 lives in a byte whose sign bit is 0)
    container_bits: int | None = None
    #: torch's own dtype for this format, whose cast (round to nearest even) is the fast path
    torch_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if not (1 <= self.ebits <= (8 if self.specials == E8M0 else 7) and 0 <= self.mbits <= 10):
            raise FormatError(
                f"{self.name}: need 1..7 exponent bits and 0..10 mantissa bits, "
                f"got e{self.ebits}m{self.mbits} (8-bit exponents: use bf16)"
            )
        if self.specials != E8M0 and self.emin - self.mbits < -126:
            # the grid spacing must be a normal float32 for rounding to stay exact
            raise FormatError(f"{self.name}: too wide for float32 emulation; use bf16 or fp16")

    @property
    def bits(self) -> int:
        return int(self.signed) + self.ebits + self.mbits

    @cached_property
    def table(self) -> np.ndarray:
        """float64 value of every code 0 .. 2**bits - 1 (NaN where the code is NaN)."""
        codes = np.arange(2**self.bits)
        sign = np.where((codes >> (self.ebits + self.mbits)) & 1, -1.0, 1.0) if self.signed else 1.0
        e = (codes >> self.mbits) & ((1 << self.ebits) - 1)
        m = codes & ((1 << self.mbits) - 1)
        frac = m / float(1 << self.mbits)
        if self.specials == E8M0:
            value = np.ldexp(1.0, e - self.bias)  # no zero, no subnormals
        else:
            normal = np.ldexp(1.0 + frac, e - self.bias)
            subnormal = np.ldexp(frac, 1 - self.bias)
            value = np.where(e == 0, subnormal, normal)
        value = sign * value
        top = e == (1 << self.ebits) - 1
        if self.specials == IEEE:
            value = np.where(top & (m == 0), sign * np.inf, value)
            value = np.where(top & (m != 0), np.nan, value)
        elif self.specials in (FN, E8M0):
            value = np.where(top & (m == (1 << self.mbits) - 1), np.nan, value)
        return value

    @cached_property
    def max(self) -> float:
        """Largest finite value."""
        return float(np.nanmax(np.where(np.isinf(self.table), np.nan, self.table)))

    @cached_property
    def min_subnormal(self) -> float:
        """Smallest positive value (the smallest normal when there are no subnormals)."""
        t = self.table
        return float(t[(t > 0) & np.isfinite(t)].min())

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal; the grid spacing never gets finer than 2**(emin-mbits)."""
        return (-self.bias) if self.specials == E8M0 else 1 - self.bias

    @cached_property
    def emax(self) -> int:
        """Exponent of the largest normal (the OCP MX spec's emax_elem)."""
        return math.floor(math.log2(self.max))

    @property
    def has_inf(self) -> bool:
        return self.specials == IEEE

    @property
    def has_nan(self) -> bool:
        return self.specials != FINITE

    # ---- rounding -------------------------------------------------------------------

    def round(
        self,
        x: torch.Tensor,
        rounding: Rounding = Rounding.NEAREST,
        *,
        saturate: bool = True,
        generator: torch.Generator | None = None,
        exact: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Round float32 `x` to this format; returns float32 values on the grid.

        Overflow: with `saturate`, finite values beyond the largest number and
        infinities without an Inf code become ±max (the OCP MX rule for elements);
        Inf stays Inf where the format has it. Without `saturate`, overflow becomes
        Inf (IEEE-style formats) or NaN (E4M3-style) as ml_dtypes and IEEE do.
        NaN stays NaN (FP6/FP4 have no NaN code: `encode` refuses it).

        `exact`: when `x` only approximates the value to round (a quotient computed in
        float32), a function from flat indices to the true values in float64. The few
        elements of x that lie within a hair of a rounding boundary are rounded again
        from their true value, so an approximation never decides which way they go.
        """
        if self.specials == E8M0:
            return self._round_e8m0(x, rounding, generator)
        if x.dtype == torch.float64:
            return self._round_float64(x, rounding, saturate, generator)
        if self.torch_dtype is not None and saturate and rounding is Rounding.NEAREST and exact is None:
            r = x.clamp(-self.max, self.max).to(self.torch_dtype).float()
            return torch.where(torch.isinf(x), x, r) if self.has_inf else r
        # Clamp first: saturation is then free, and Inf acts as a huge finite value.
        # Non-saturating rounding clamps at 2^(emax+2), past the overflow threshold.
        a = x.abs().clamp_(max=self._limit(saturate))  # NaN passes
        e = (a.view(torch.int32) >> 23).clamp_(min=self.emin + 127)  # biased exponent of |x|
        if rounding is Rounding.NEAREST and exact is None:
            # (a + 1.5·2^(e-m+23)) - 1.5·2^(e-m+23): the float adder rounds a to the grid, ties to even
            magic = (((e + (23 - self.mbits)) << 23) | 0x400000).view(torch.float32)
            return self._finish(a.add_(magic).sub_(magic), x, saturate)
        up = ((254 + self.mbits) - e).clamp_(min=1) << 23  # 2^(m - e): grid spacing -> 1
        scaled = a.mul_(up.view(torch.float32))
        r = round_int(scaled, rounding, generator).mul_(((e - self.mbits) << 23).view(torch.float32))
        r = self._finish(r, x, saturate)
        if exact is not None and rounding is not Rounding.STOCHASTIC:
            idx = near_boundary(scaled, rounding, 2.0**-16).view(-1).nonzero().view(-1)
            if idx.numel():
                r.view(-1)[idx] = self._round_float64(exact(idx), rounding, saturate, None)
        return r

    def _limit(self, saturate: bool) -> float:
        return self.max if saturate else 2.0 ** (self.emax + 2)

    def _round_float64(self, x, rounding, saturate, generator) -> torch.Tensor:
        """The same rounding in float64 arithmetic (exact for any float64 input), as float32."""
        a = x.abs().clamp(max=self._limit(saturate))
        e = (torch.frexp(a).exponent - 1).clamp(min=self.emin).double()  # floor(log2 a)
        n = round_int(torch.ldexp(a, self.mbits - e), rounding, generator)
        return self._finish(torch.ldexp(n, e - self.mbits), x, saturate).float()

    def _finish(self, r: torch.Tensor, x: torch.Tensor, saturate: bool) -> torch.Tensor:
        """Overflow, Inf and sign for rounded magnitudes r of x."""
        if not saturate:
            r = torch.where(r > self.max, torch.inf if self.has_inf else torch.nan, r)
        elif self.has_inf:
            r = torch.where(torch.isinf(x), x.abs().to(r.dtype), r)
        if self.signed:
            return r.copysign_(x)
        return torch.where(x < 0, torch.nan, r)

    def _round_e8m0(self, x: torch.Tensor, rounding: Rounding, generator: torch.Generator | None) -> torch.Tensor:
        """E8M0 holds only 2**-127 .. 2**127; zero, negatives and Inf become NaN (as ml_dtypes)."""
        a = x.clamp(min=0.0)
        e = _f32_exponent(a)  # -127 for float32 subnormals, which sit between 0 and 2^-126
        mant = torch.ldexp(a.double(), -e.double())  # in [1, 2); [0, 2) for subnormals (exact in float64)
        if rounding is Rounding.NEAREST:
            step = mant >= 1.5  # ties go up: there is no mantissa bit to be even
        else:
            step = round_int(mant - 1.0, rounding, generator) >= 1
        e = e + step.to(e.dtype)
        r = torch.ldexp(torch.ones_like(a), e.to(torch.float32))
        bad = (x <= 0) | ~torch.isfinite(x) | (e > 127)
        return torch.where(bad, torch.full_like(r, torch.nan), r)

    # ---- codes ---------------------------------------------------------------------

    @cached_property
    def _sorted_magnitudes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Non-negative finite values in ascending order, and their codes."""
        t = self.table
        half = 2 ** (self.ebits + self.mbits)  # codes with the sign bit clear
        codes = np.arange(half)
        ok = np.isfinite(t[:half])
        vals, codes = t[:half][ok], codes[ok]
        order = np.argsort(vals, kind="stable")
        return (torch.from_numpy(vals[order].astype(np.float32)), torch.from_numpy(codes[order].astype(np.int32)))

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """Codes (int32) of values already on this format's grid (see `round`)."""
        vals, codes = (t.to(values.device) for t in self._sorted_magnitudes)
        a = values.abs()
        idx = torch.searchsorted(vals, a.contiguous()).clamp(max=len(vals) - 1)
        out = codes[idx]
        if not torch.equal(vals[idx][torch.isfinite(a)], a[torch.isfinite(a)]):
            raise FormatError(f"{self.name}: encode() got values that are not on its grid; round() them first")
        if self.signed:
            out = out | (torch.signbit(values).to(torch.int32) << (self.ebits + self.mbits))
        nan = torch.isnan(values)
        if nan.any():
            if not self.has_nan:
                raise FormatError(f"{self.name} has no NaN code: NaN inputs cannot be encoded in this format")
            out = torch.where(nan, torch.full_like(out, self._nan_code), out)
        inf = torch.isinf(values)
        if inf.any():
            if not self.has_inf:
                raise FormatError(f"{self.name} has no Inf code: saturate values before encoding")
            inf_code = ((1 << self.ebits) - 1) << self.mbits
            out = torch.where(inf, out & ~((1 << (self.bits - 1)) - 1) | inf_code, out)
        return out

    @cached_property
    def _nan_code(self) -> int:
        return int(np.flatnonzero(np.isnan(self.table))[-1] & ((1 << (self.ebits + self.mbits)) - 1))

    @cached_property
    def _decode_table(self) -> torch.Tensor:
        return torch.from_numpy(self.table.astype(np.float32))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        table = self._decode_table
        return (table if codes.device == table.device else table.to(codes.device))[codes.long()]


@dataclass(frozen=True)
class IntElement:
    """A `bits`-bit integer; the value of code c is c * 2**-frac_bits.

    Signed integers are two's complement, used symmetrically: the most negative
    code (-2**(bits-1)) is never produced, so rounding is sign-symmetric and the
    largest magnitude is 2**(bits-1) - 1 (the GPTQ/AWQ and MX-emulator convention).
    Unsigned integers (asymmetric quantization) cover 0 .. 2**bits - 1.
    """

    name: str
    bits: int
    signed: bool = True
    frac_bits: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 16:
            raise FormatError(f"{self.name}: integer formats need 2..16 bits, got {self.bits}")

    @property
    def _unit(self) -> float:
        return 2.0**-self.frac_bits

    @property
    def qmin(self) -> int:
        return -self.qmax if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def max(self) -> float:
        return self.qmax * self._unit

    @property
    def min_subnormal(self) -> float:
        return self._unit

    @property
    def emax(self) -> int:
        """Exponent of the largest power of two not above max (MXINT8: 0)."""
        return math.floor(math.log2(self.max))

    @property
    def mbits(self) -> int:
        """Magnitude bits below the leading one, for scale rules that round the block max."""
        return self.bits - 2 if self.signed else self.bits - 1

    def round_codes(
        self, v: torch.Tensor, rounding: Rounding = Rounding.NEAREST, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Integer codes (as float32) nearest to v / unit, clamped to the range."""
        if self.signed:  # round the magnitude: keeps every rounding mode sign-symmetric
            # (+ 0.0 turns -0 into +0: two's complement has no negative zero)
            q = torch.copysign(round_int(v.abs() / self._unit, rounding, generator), v) + 0.0
        else:
            q = round_int(v / self._unit, rounding, generator)
        return q.clamp(self.qmin, self.qmax)

    def round(self, x: torch.Tensor, rounding: Rounding = Rounding.NEAREST, generator=None) -> torch.Tensor:
        return self.round_codes(x, rounding, generator) * self._unit

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """Two's-complement (or unsigned) codes, masked to `bits`, as int32."""
        q = torch.nan_to_num(values / self._unit).to(torch.int32)
        return q & ((1 << self.bits) - 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        c = codes.to(torch.int32)
        if self.signed:
            c = torch.where(c >= 2 ** (self.bits - 1), c - 2**self.bits, c)
        return c.to(torch.float32) * self._unit


# The OCP formats (OFP8 and MX v1.0). ue4m3 is E4M3 with the sign bit dropped: the NVFP4 block scale.
FP8_E4M3 = FloatElement("fp8_e4m3", 4, 3, 7, FN, torch_dtype=torch.float8_e4m3fn)
FP8_E5M2 = FloatElement("fp8_e5m2", 5, 2, 15, IEEE, torch_dtype=torch.float8_e5m2)
FP6_E2M3 = FloatElement("fp6_e2m3", 2, 3, 1)
FP6_E3M2 = FloatElement("fp6_e3m2", 3, 2, 3)
FP4_E2M1 = FloatElement("fp4_e2m1", 2, 1, 1)
E8M0_SCALE = FloatElement("e8m0", 8, 0, 127, E8M0, signed=False)
UE4M3 = FloatElement("ue4m3", 4, 3, 7, FN, signed=False, container_bits=8)
MXINT8 = IntElement("mxint8", 8, frac_bits=6)

NAMED_FLOATS = {e.name: e for e in (FP8_E4M3, FP8_E5M2, FP6_E2M3, FP6_E3M2, FP4_E2M1, E8M0_SCALE, UE4M3)}


def float_element(ebits: int, mbits: int) -> FloatElement:
    """The OCP element of that shape if there is one, else a finite-only (FN-less) float."""
    for e in NAMED_FLOATS.values():
        if e.signed and (e.ebits, e.mbits) == (ebits, mbits):
            return e
    return FloatElement(f"fp{1 + ebits + mbits}_e{ebits}m{mbits}", ebits, mbits, 2 ** (ebits - 1) - 1)
