"""N:M storage: every group of M consecutive columns of a row stores exactly N values and an index.

Groups run along the columns (the last dim: the input / reduction dim of a Linear weight
(out, in), as in NVIDIA's 2:4). A group with fewer than N nonzeros is padded with stored
zeros, so every group costs the same; the stored slots are the group's nonzero positions
plus, for padding, its lowest zero positions, in ascending order. Per group:

  nmN:M        positions: N · ⌈log2 M⌉ bits (one coordinate per stored value, CP)
  nmN:M_comb   combination: ⌈log2 C(M, N)⌉ bits, the rank of the sorted position set
               in colexicographic order, rank = Σ_i C(p_i, i+1) (the combinatorial number
               system). 2:4: 3 bits instead of 4; 4:8: 7 instead of 12; 2:8: 5 instead of 6.

Size: R · (C / M) · (N · value_bits + index bits per group), independent of density. A
matrix with a group of more than N nonzeros cannot be stored (prune it first); columns
must be a multiple of M (no implicit padding). `can_hold` is the rule `best_format`
uses: the columns divide by M and density <= N / M.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from nmx.errors import FormatError, InputError
from nmx.formats.packing import MAX_BITS
from nmx.sparsity.storage_base import EncodedSparse, SizeBreakdown, SizeTerm, Storage, index_bits, make_field

MAX_M = 1 << 16


@lru_cache(maxsize=64)
def _binomials(m: int, n: int) -> torch.Tensor:
    """t[c, k] = C(c, k) for c < m, k <= n, capped at C(m, n): a valid rank never needs more, and
    the cap keeps int64 from overflowing for wide groups while the columns stay sorted."""
    cap = math.comb(m, n)
    return torch.tensor([[min(math.comb(c, k), cap) for k in range(n + 1)] for c in range(m)], dtype=torch.int64)


def combination_rank(positions: torch.Tensor, m: int) -> torch.Tensor:
    """Colex rank of each sorted position set (last dim, N strictly increasing positions in 0..M-1)."""
    n = positions.shape[-1]
    table = _binomials(m, n)
    return table[positions.to(torch.int64), torch.arange(1, n + 1)].sum(dim=-1)


def combination_unrank(ranks: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """Inverse of `combination_rank`: sorted positions (…, N) from ranks in 0 .. C(M, N) − 1."""
    if ranks.numel() and (int(ranks.min()) < 0 or int(ranks.max()) >= math.comb(m, n)):
        raise InputError(f"corrupt N:M index: a combination rank lies outside 0 .. C({m},{n})-1")
    table = _binomials(m, n)
    rest = ranks.to(torch.int64).clone()
    out = torch.empty(*ranks.shape, n, dtype=torch.int64)
    for i in reversed(range(n)):  # greedy: the largest position first
        col = table[:, i + 1].contiguous()
        c = torch.searchsorted(col, rest, right=True) - 1
        out[..., i] = c
        rest -= col[c]
    return out


@dataclass(frozen=True, repr=False)
class NM(Storage):
    n: int
    m: int
    combinatorial: bool = False

    def __post_init__(self):
        if not 1 <= self.n <= self.m <= MAX_M:
            raise FormatError(f"N:M needs 1 <= N <= M <= {MAX_M}, got {self.n}:{self.m} (e.g. 'nm2:4')")
        if self.combinatorial and self.group_index_bits > MAX_BITS:
            raise FormatError(
                f"{self.name}: the combination index needs {self.group_index_bits} bits per group, more than the "
                f"{MAX_BITS} storage packs; use the per-position index 'nm{self.n}:{self.m}'"
            )

    @property
    def name(self) -> str:
        return f"nm{self.n}:{self.m}" + ("_comb" if self.combinatorial else "")

    @property
    def group_index_bits(self) -> int:
        """Index bits per group: ⌈log2 C(M,N)⌉ (combination) or N·⌈log2 M⌉ (positions)."""
        if self.combinatorial:
            return index_bits(math.comb(self.m, self.n))
        return self.n * index_bits(self.m)

    @property
    def ranks(self):
        if self.combinatorial:
            within = ("within group", "CMB", f"one ⌈log2 C({self.m},{self.n})⌉ = {self.group_index_bits}-bit rank")
        else:
            within = ("within group", "CP", f"{self.n} positions of ⌈log2 {self.m}⌉ bits")
        return (("rows", "U", "nothing"), (f"groups of {self.m} cols", "U", f"exactly {self.n} values each"), within)

    def can_hold(self, shape, density) -> bool:
        return shape[1] % self.m == 0 and density <= self.n / self.m + 1e-12

    def _check_cols(self, cols: int) -> None:
        if cols % self.m:
            fit = cols + (-cols) % self.m
            raise InputError(
                f"{self.name} groups {self.m} consecutive columns, but the matrix has {cols} columns; "
                f"pad it to {fit} columns or use an unstructured format (bitmap, csr, rle)"
            )

    def _encode(self, x, mask):
        rows, cols = x.shape
        self._check_cols(cols)
        g = x.reshape(rows, cols // self.m, self.m)
        mask = mask.reshape(g.shape)
        count = mask.sum(dim=-1)
        bad = count > self.n
        if bool(bad.any()):
            r, k = (int(i) for i in bad.nonzero()[0])
            raise InputError(
                f"matrix breaks {self.n}:{self.m} in {int(bad.sum())} of {bad.numel()} groups (first: row {r}, "
                f"columns {k * self.m}..{k * self.m + self.m - 1} hold {int(count[r, k])} nonzeros); prune it to "
                f"{self.n}:{self.m} first, or store it in an unstructured format (bitmap, csr, rle)"
            )
        # nonzeros first, then the lowest zero positions as padding; ascending within the group
        key = (~mask).to(torch.int64) * self.m + torch.arange(self.m)
        pos = key.argsort(dim=-1)[..., : self.n].sort(dim=-1).values
        vals = g.gather(-1, pos)
        vals = torch.where(mask.gather(-1, pos), vals, torch.zeros((), dtype=x.dtype))  # padding is +0
        if self.combinatorial:
            ranks = combination_rank(pos, self.m)
            index = make_field("combination", "within group", "CMB", ranks, self.group_index_bits)
        else:
            index = make_field("positions", "within group", "CP", pos, index_bits(self.m))
        return EncodedSparse(self.name, (rows, cols), vals.reshape(-1), (index,))

    def _decode(self, enc, values):
        rows, cols = enc.shape
        groups = cols // self.m
        if self.combinatorial:
            pos = combination_unrank(enc.field("combination").codes().reshape(rows, groups), self.m, self.n)
        else:
            pos = enc.field("positions").codes().reshape(rows, groups, self.n)
        out = torch.zeros(rows, groups, self.m, dtype=values.dtype)
        out.scatter_(-1, pos, values.reshape(rows, groups, self.n))
        return out.reshape(rows, cols)

    def _breakdown(self, rows, cols, density, value_bits):
        self._check_cols(cols)
        if density > self.n / self.m + 1e-12:
            raise InputError(
                f"{self.name} holds at most {self.n}/{self.m} = {self.n / self.m:g} of the elements; "
                f"density {density:g} does not fit (best_format skips it there)"
            )
        groups = rows * (cols // self.m)
        if self.combinatorial:
            term = SizeTerm("combination", "within group", "CMB", float(groups), self.group_index_bits)
            how = f"⌈log2 C({self.m},{self.n})⌉ = {self.group_index_bits} b"
        else:
            term = SizeTerm("positions", "within group", "CP", float(groups * self.n), index_bits(self.m))
            how = f"{self.n}·⌈log2 {self.m}⌉ = {self.group_index_bits} b"
        return SizeBreakdown(self.name, float(groups * self.n), value_bits, (term,), f"{how} index per group")
