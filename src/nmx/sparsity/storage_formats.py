"""Unstructured storage formats: dense, bitmap, CSR, CSC, COO, RLE.

Sizes for a matrix of R rows, C columns and nnz nonzeros (v = value_bits):

  dense   R·C·v                                                        rows U, cols U
  bitmap  R·C (mask) + nnz·v                                           rows U, cols B
  csr     (R+1)·⌈log2(nnz+1)⌉ (row pointers) + nnz·(⌈log2 C⌉ + v)      rows UOP, cols CP
  csc     (C+1)·⌈log2(nnz+1)⌉ (col pointers) + nnz·(⌈log2 R⌉ + v)      cols UOP, rows CP
  coo     nnz·(⌈log2 R⌉ + ⌈log2 C⌉ + v)                                rows CP, cols CP
  rle<r>  E·(r + v), E = nnz + Σ_gaps ⌊gap / 2^r⌋                       rows·cols fused, RLE

Pointers count 0..nnz, so they take ⌈log2(nnz+1)⌉ bits, and there are R+1 of them (the
leading 0 is stored, as Sparseloop's UOP counts it). RLE walks the matrix row-major as
one stream; each stored entry carries the number of zeros skipped before it in r bits.
A gap longer than 2^r − 1 is broken by an explicit stored zero whose run is 2^r − 1
(Eyeriss, Sparseloop), so a gap g costs ⌊g / 2^r⌋ extra entries, each with a value.
Zeros after the last nonzero are implied by the shape. `rle` (no r) picks r in 1..32 to
minimize the size: at encode time for the real matrix at `value_bits_hint` bits per value,
in `expected_bits` for the asked value_bits; the encoding is named `rle<r>` after its r.

Analytic sizes (`expected_bits`) take nnz = density·R·C; the pointer width uses the
nearest integer. For RLE in a uniformly random matrix the gap before each nonzero is
geometric, P(g) = (1−d)^g·d, so E[⌊g / 2^r⌋] = q/(1−q) with q = (1−d)^(2^r), giving
E = nnz / (1 − (1−d)^(2^r)).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from nmx.errors import FormatError, InputError
from nmx.formats.packing import MAX_BITS
from nmx.sparsity.storage_base import (
    EncodedSparse,
    SizeBreakdown,
    SizeTerm,
    Storage,
    count_bits,
    expected_nnz,
    index_bits,
    make_field,
    rounded_nnz,
)


@dataclass(frozen=True, repr=False)
class Dense(Storage):
    name = "dense"
    ranks = (("rows", "U", "nothing"), ("cols", "U", "nothing"))

    def _encode(self, x, mask):
        return EncodedSparse(self.name, tuple(x.shape), x.reshape(-1).clone())

    def _decode(self, enc, values):
        return values.reshape(enc.shape).clone()

    def _breakdown(self, rows, cols, density, value_bits):
        return SizeBreakdown(self.name, float(rows * cols), value_bits, (), "every element stored")


@dataclass(frozen=True, repr=False)
class Bitmap(Storage):
    name = "bitmap"
    ranks = (("rows", "U", "nothing"), ("cols", "B", "one mask bit per element, row-major"))

    def _encode(self, x, mask):
        field = make_field("mask", "cols", "B", mask, 1)
        return EncodedSparse(self.name, tuple(x.shape), x[mask], (field,))

    def _decode(self, enc, values):
        mask = enc.field("mask").codes().bool().reshape(enc.shape)
        out = torch.zeros(enc.shape, dtype=values.dtype)
        out[mask] = values
        return out

    def _breakdown(self, rows, cols, density, value_bits):
        terms = (SizeTerm("mask", "cols", "B", float(rows * cols), 1),)
        return SizeBreakdown(self.name, expected_nnz(rows, cols, density), value_bits, terms, "1-bit mask")


@dataclass(frozen=True, repr=False)
class Compressed(Storage):
    """CSR (outer rank = rows) and CSC (outer rank = columns; values stored column-major)."""

    by_columns: bool = False

    @property
    def name(self) -> str:
        return "csc" if self.by_columns else "csr"

    @property
    def _outer(self) -> tuple[str, str]:
        return ("cols", "rows") if self.by_columns else ("rows", "cols")

    @property
    def ranks(self):
        outer, inner = self._outer
        return ((outer, "UOP", f"{outer}+1 pointers of ⌈log2(nnz+1)⌉ bits"),
                (inner, "CP", f"one ⌈log2 {inner}⌉-bit index per nonzero"))  # fmt: skip

    def _encode(self, x, mask):
        m, mask = (x.t(), mask.t()) if self.by_columns else (x, mask)
        outer, inner = self._outer
        values = m[mask]
        ptr = torch.zeros(m.shape[0] + 1, dtype=torch.int64)
        ptr[1:] = mask.sum(dim=1).cumsum(0)
        fields = (
            make_field(f"{outer[:-1]}_ptr", outer, "UOP", ptr, count_bits(values.numel())),
            make_field(f"{inner[:-1]}_idx", inner, "CP", mask.nonzero()[:, 1], index_bits(m.shape[1])),
        )
        return EncodedSparse(self.name, tuple(x.shape), values, fields)

    def _decode(self, enc, values):
        outer, inner = self._outer
        rows, cols = enc.shape
        m_shape = (cols, rows) if self.by_columns else (rows, cols)
        counts = enc.field(f"{outer[:-1]}_ptr").codes().diff()
        outer_ids = torch.repeat_interleave(torch.arange(m_shape[0]), counts)
        m = torch.zeros(m_shape, dtype=values.dtype)
        m[outer_ids, enc.field(f"{inner[:-1]}_idx").codes()] = values
        return m.t().contiguous() if self.by_columns else m

    def _breakdown(self, rows, cols, density, value_bits):
        n_outer, n_inner = (cols, rows) if self.by_columns else (rows, cols)
        outer, inner = self._outer
        ptr_w, idx_w = count_bits(rounded_nnz(rows, cols, density)), index_bits(n_inner)
        nnz = expected_nnz(rows, cols, density)
        terms = (SizeTerm(f"{outer[:-1]}_ptr", outer, "UOP", float(n_outer + 1), ptr_w),
                 SizeTerm(f"{inner[:-1]}_idx", inner, "CP", nnz, idx_w))  # fmt: skip
        return SizeBreakdown(self.name, nnz, value_bits, terms, f"ptr {ptr_w} b, idx {idx_w} b")


@dataclass(frozen=True, repr=False)
class COO(Storage):
    name = "coo"
    ranks = (("rows", "CP", "one ⌈log2 R⌉-bit row index per nonzero"),
             ("cols", "CP", "one ⌈log2 C⌉-bit column index per nonzero"))  # fmt: skip

    def _encode(self, x, mask):
        where = mask.nonzero()
        fields = (make_field("row_idx", "rows", "CP", where[:, 0], index_bits(x.shape[0])),
                  make_field("col_idx", "cols", "CP", where[:, 1], index_bits(x.shape[1])))  # fmt: skip
        return EncodedSparse(self.name, tuple(x.shape), x[mask], fields)

    def _decode(self, enc, values):
        out = torch.zeros(enc.shape, dtype=values.dtype)
        out[enc.field("row_idx").codes(), enc.field("col_idx").codes()] = values
        return out

    def _breakdown(self, rows, cols, density, value_bits):
        nnz = expected_nnz(rows, cols, density)
        rw, cw = index_bits(rows), index_bits(cols)
        terms = (SizeTerm("row_idx", "rows", "CP", nnz, rw), SizeTerm("col_idx", "cols", "CP", nnz, cw))
        return SizeBreakdown(self.name, nnz, value_bits, terms, f"row {rw} b + col {cw} b")


_RLE_NAME = re.compile(r"rle(\d+)")


def rle_entries(gaps: torch.Tensor, run_bits: int) -> int:
    """Stored entries for nonzeros preceded by `gaps` zeros: one each plus ⌊gap / 2^r⌋ fillers."""
    return gaps.numel() + int((gaps >> run_bits).sum())


def rle_expected_entries(nnz: float, density: float, run_bits: int) -> float:
    if nnz == 0:
        return 0.0
    # 1 - (1-d)^(2^r), computed without cancellation at tiny densities
    return nnz / -math.expm1((1 << run_bits) * math.log1p(-density)) if density < 1 else nnz


@dataclass(frozen=True, repr=False)
class RLE(Storage):
    """Run-length: r-bit zero runs, row-major over the whole matrix. run_bits None: r chosen optimally."""

    run_bits: int | None = None
    #: bits per value the automatic r is chosen for at encode time (expected_bits uses the asked value_bits)
    value_bits_hint: int = 16

    def __post_init__(self):
        if self.run_bits is not None and not 1 <= self.run_bits <= MAX_BITS:
            raise FormatError(f"rle run width must be 1..{MAX_BITS} bits, got {self.run_bits} (e.g. 'rle4', or 'rle')")
        if self.value_bits_hint < 1:
            raise FormatError(f"value_bits_hint must be >= 1, got {self.value_bits_hint}")

    @property
    def name(self) -> str:
        return "rle" if self.run_bits is None else f"rle{self.run_bits}"

    @property
    def ranks(self):
        r = "r" if self.run_bits is None else str(self.run_bits)
        return (("rows·cols", "RLE", f"one {r}-bit zero run per stored entry, row-major"),)

    def _check_mine(self, enc):
        if self.run_bits is None and _RLE_NAME.fullmatch(enc.format):
            return  # automatic r: any rle<r> encoding decodes
        super()._check_mine(enc)

    @staticmethod
    def _gaps(flat_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = flat_mask.nonzero().reshape(-1)
        prev = torch.cat([torch.tensor([-1]), pos[:-1]])
        return pos, pos - prev - 1

    def best_run_bits(self, gaps: torch.Tensor, value_bits: int) -> int:
        """The r in 1..32 that stores nonzeros with these preceding gaps in the fewest bits (smallest r on ties)."""
        top = max(1, min(MAX_BITS, int(gaps.max()).bit_length() if gaps.numel() else 1))
        return min(range(1, top + 1), key=lambda r: (rle_entries(gaps, r) * (value_bits + r), r))

    def _encode(self, x, mask):
        flat = x.reshape(-1)
        pos, gaps = self._gaps(mask.reshape(-1))
        r = self.run_bits or self.best_run_bits(gaps, self.value_bits_hint)
        period = 1 << r
        fillers = gaps // period  # explicit zeros that break a run longer than 2^r - 1
        slot = torch.arange(pos.numel()) + fillers.cumsum(0)  # entry index of each nonzero
        total = pos.numel() + int(fillers.sum())
        runs = torch.full((total,), period - 1, dtype=torch.int64)
        runs[slot] = gaps - fillers * period
        values = torch.zeros(total, dtype=x.dtype)
        values[slot] = flat[pos]
        field = make_field("runs", "rows·cols", "RLE", runs, r)
        return EncodedSparse(f"rle{r}", tuple(x.shape), values, (field,))

    def _decode(self, enc, values):
        runs = enc.field("runs").codes()
        pos = (runs + 1).cumsum(0) - 1
        n = enc.shape[0] * enc.shape[1]
        if pos.numel() and int(pos[-1]) >= n:
            raise InputError(f"corrupt {enc.format} encoding: runs reach position {int(pos[-1])} of {n}")
        flat = torch.zeros(n, dtype=values.dtype)
        flat[pos] = values
        return flat.reshape(enc.shape)

    def _breakdown(self, rows, cols, density, value_bits):
        nnz = expected_nnz(rows, cols, density)
        candidates = [self.run_bits] if self.run_bits else range(1, MAX_BITS + 1)
        r = min(candidates, key=lambda r: (rle_expected_entries(nnz, density, r) * (value_bits + r), r))
        entries = rle_expected_entries(nnz, density, r)
        terms = (SizeTerm("runs", "rows·cols", "RLE", entries, r),)
        fill = f", {entries / nnz - 1:.1%} extra zeros" if nnz else ""
        how = "r chosen optimally: " if self.run_bits is None else ""
        return SizeBreakdown(self.name, entries, value_bits, terms, f"{how}r={r}{fill}")
