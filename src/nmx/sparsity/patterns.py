"""Sparsity patterns: N:M along the reduction dim, or unstructured at a ratio.

    parse_pattern("2:4")               NMPattern(2, 4)      keep 2 of every 4 consecutive inputs
    parse_pattern("50%")               Unstructured(0.5)    prune half of every output row
    parse_pattern(0.5)                 Unstructured(0.5)
    parse_pattern("unstructured:0.5")  Unstructured(0.5)
    parse_pattern("0.5:layer")         Unstructured(0.5, scope="layer")   half of the whole tensor

N:M: 1 <= N < M <= 32; N counts the weights *kept* in each group of M consecutive entries of
the input (reduction) dim of a weight [out, in] -- the convention of NVIDIA's 2:4 and of the
SparseGPT / Wanda papers. A dim that M does not divide is refused (never padded): padding
would change the layer's shape, and the hardware N:M formats have no partial group.

Unstructured: `sparsity` is the fraction of zeros, 0 <= sparsity < 1. `scope="row"` (the
default, Wanda's per-output comparison) prunes round(sparsity * in) weights of every row;
`scope="layer"` prunes round(sparsity * numel) weights of the whole tensor. Counts round
with Python's `round` (halves go to the even integer: 50% of 5 prunes 2, of 3 prunes 2).

`str(pattern)` is a string `parse_pattern` reads back to an equal pattern.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Literal, Union

from nmx.errors import InputError

#: the largest group size M (every N:M hardware format we know of is far below it)
MAX_M = 32
SCOPES = ("row", "layer")

_EXAMPLES = "write N:M like '2:4' or '4:8', or a fraction of zeros like '50%', '0.5' or 'unstructured:0.5'"
_NM = re.compile(r"(-?\d+)\s*:\s*(-?\d+)")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?|nan|inf"
_UNSTRUCTURED = re.compile(rf"(?:unstructured\s*:\s*)?({_NUMBER})\s*(%?)(?:\s*:\s*(\w+))?")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class NMPattern:
    """Keep `n` of every `m` consecutive weights along the input dim (1 <= n < m <= 32)."""

    n: int
    m: int

    def __post_init__(self) -> None:
        if not (_is_int(self.n) and _is_int(self.m)):
            raise InputError(f"N:M needs two integers, got n={self.n!r}, m={self.m!r}; {_EXAMPLES}")
        n, m = self.n, self.m
        if m > MAX_M:
            raise InputError(f"{n}:{m}: M must be at most {MAX_M}; use a smaller group like '2:4' or '8:16'")
        if n < 1:
            raise InputError(f"{n}:{m}: N (the weights kept per group) must be at least 1; '1:{m}' keeps one")
        if n >= m:
            hint = f"; did you mean '{m}:{n}'?" if 1 <= m < n <= MAX_M else ""
            raise InputError(f"{n}:{m}: N:M keeps N of every M weights, so N must be smaller than M{hint}")

    @property
    def density(self) -> float:
        """Fraction of weights kept."""
        return self.n / self.m

    @property
    def sparsity(self) -> float:
        """Fraction of weights pruned."""
        return 1.0 - self.n / self.m

    def check_dim(self, size: int) -> None:
        """Refuse an input dim that M does not divide (nmx never pads a pattern group)."""
        if size % self.m:
            raise InputError(
                f"pattern {self}: the input dim has {size} entries, which is not a multiple of {self.m}; "
                f"N:M needs whole groups (nmx does not pad): pick an M that divides {size}, "
                "or leave this layer out (or dense)"
            )

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class Unstructured:
    """Prune a fraction `sparsity` (0 <= s < 1) of the weights with the lowest scores,
    compared within each output row (`scope="row"`) or across the whole tensor (`"layer"`)."""

    sparsity: float
    scope: Literal["row", "layer"] = "row"

    def __post_init__(self) -> None:
        s = self.sparsity
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0 <= s < 1:
            raise InputError(
                f"unstructured sparsity must be a fraction of zeros in [0, 1), got {s!r}; "
                "e.g. 0.5 or '50%' prunes half the weights"
            )
        object.__setattr__(self, "sparsity", float(s))
        if self.scope not in SCOPES:
            raise InputError(f"unstructured scope must be 'row' or 'layer', got {self.scope!r}")

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity

    def pruned_count(self, size: int) -> int:
        """Weights pruned out of `size`: round(sparsity * size), halves to even (Python's round)."""
        return round(self.sparsity * size)

    def __str__(self) -> str:
        text = f"unstructured:{self.sparsity!r}"
        return text if self.scope == "row" else f"{text}:{self.scope}"


Pattern = Union[NMPattern, Unstructured]


def parse_pattern(value: str | float | NMPattern | Unstructured) -> Pattern:
    """A pattern from text ("2:4", "50%", "0.5", "unstructured:0.5", "0.5:layer"), a number
    (0.5 = half the weights pruned, per row) or a pattern (returned as is)."""
    if isinstance(value, (NMPattern, Unstructured)):
        return value
    if isinstance(value, bool):
        raise InputError(f"a sparsity pattern cannot be a boolean ({value!r}); {_EXAMPLES}")
    if isinstance(value, numbers.Real):  # int, float, numpy scalars
        return Unstructured(float(value))
    if not isinstance(value, str):
        raise InputError(f"a sparsity pattern is a string or a number, got {type(value).__name__}; {_EXAMPLES}")
    text = value.strip().lower()
    if m := _NM.fullmatch(text):
        return NMPattern(int(m[1]), int(m[2]))
    if m := _UNSTRUCTURED.fullmatch(text):
        number, percent, scope = m.groups()
        s = float(number) / (100.0 if percent else 1.0)
        if not math.isfinite(s) or not 0 <= s < 1:
            extra = f" (for {s:g}% write '{s:g}%')" if not percent and 1 <= s < 100 else ""
            raise InputError(f"sparsity {value!r} is outside [0, 1){extra}; {_EXAMPLES}")
        if scope is not None and scope not in SCOPES:
            raise InputError(f"{value!r}: the scope after the ratio must be 'row' or 'layer', not {scope!r}")
        return Unstructured(s, scope or "row")
    raise InputError(f"cannot read sparsity pattern {value!r}; {_EXAMPLES}")
