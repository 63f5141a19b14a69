"""Rounding of real values onto the integers: the one step every format shares.

Every format reduces "round x onto my grid" to "scale x so the grid spacing is 1,
round to an integer, scale back", so the rounding mode lives here only.
"""

from __future__ import annotations

from enum import Enum

import torch

from nmx.errors import FormatError


class Rounding(str, Enum):
    NEAREST = "nearest"  # round half to even (IEEE 754 default)
    STOCHASTIC = "stochastic"  # floor(v + u), u ~ U[0, 1): unbiased in expectation
    ZERO = "zero"  # truncate toward zero

    @classmethod
    def parse(cls, value: "str | Rounding") -> "Rounding":
        if isinstance(value, Rounding):
            return value
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(r.value for r in cls)
            raise FormatError(f"unknown rounding {value!r}; choose one of: {choices}") from None


def round_int(v: torch.Tensor, mode: Rounding, generator: torch.Generator | None) -> torch.Tensor:
    """Round `v` to integers with `mode` (works for any sign).

    Symmetric formats pass magnitudes and apply the sign afterwards, which keeps
    every mode sign-symmetric: stochastic rounding of -x uses the same draw as x.
    """
    if mode is Rounding.NEAREST:
        return torch.round(v)
    if mode is Rounding.ZERO:
        return torch.trunc(v)
    if generator is None:
        raise FormatError("stochastic rounding needs a seed")
    u = torch.rand(v.shape, generator=generator, dtype=v.dtype).to(v.device)  # CPU draw: same on any device
    return torch.floor(v + u)


def make_generator(mode: Rounding, seed: int) -> torch.Generator | None:
    """A seeded CPU generator when the mode draws random numbers, else None."""
    if mode is not Rounding.STOCHASTIC:
        return None
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def near_boundary(scaled: torch.Tensor, mode: Rounding, tol: float) -> torch.Tensor:
    """Non-negative values in grid-spacing units within `tol` of where `mode` switches
    (a half for nearest, an integer for toward-zero)."""
    f = torch.frac(scaled)
    if mode is Rounding.NEAREST:
        return (f - 0.5).abs_() <= tol
    return ((f <= tol) | (f >= 1.0 - tol)) & (scaled > 0)
