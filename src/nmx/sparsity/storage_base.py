"""What every compressed storage format shares: the encoded record, its fields, the size accounting.

A format stores a 2-D matrix (rows R, columns C) as its stored values plus metadata
fields. Each field belongs to one rank (rows, columns, the fused rows·columns stream,
or the N:M groups) and is one of Sparseloop's per-rank primitives, or our N:M
extension:

  U     uncompressed: the rank costs nothing; every coordinate is implied by position
  UOP   uncompressed offset pairs: one offset per fiber boundary (CSR row pointers)
  CP    coordinate payload: one coordinate per stored value (CSR column indices)
  B     bitmask: one bit per position of the rank
  RLE   run length: per stored value, the count of zeros skipped before it
  CMB   (nmx) combination index: the rank of a group's N positions among C(M, N)

A field is `count` codes of `width` bits each, packed into real bytes (formats.packing);
its size is exactly count · width bits (the packed buffer rounds up to whole bytes,
which `bits` does not count). The matrix shape and format parameters (r, N, M) are
header, known to the reader, and not counted.

Zeros: an element is implicit when it compares equal to zero (+0.0 and -0.0). Every
compressed format decodes implicit zeros as +0.0, so decode(encode(x)) equals x bit for
bit except that -0.0 comes back as +0.0 (masking a weight, w * mask, makes -0.0; it is
a pruned zero, not a value to store). Stored values, NaN and Inf included, keep their
bits and dtype. "dense" stores every element, -0.0 included.
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from numbers import Real
from typing import Any

import torch

from nmx.errors import FormatError, InputError
from nmx.formats.packing import MAX_BITS, pack_bits, unpack_bits

#: Sparseloop primitives (plus CMB) a field may be
PRIMITIVES = ("U", "UOP", "CP", "B", "RLE", "CMB")


def index_bits(n: int) -> int:
    """⌈log2 n⌉: bits of a coordinate in 0 .. n-1 (0 for n <= 1: one choice needs no bits)."""
    return (n - 1).bit_length() if n > 0 else 0


def count_bits(n: int) -> int:
    """⌈log2(n+1)⌉: bits of a count or offset in 0 .. n."""
    return int(n).bit_length()


@dataclass(frozen=True, eq=False)
class MetaField:
    """One metadata field as stored: `count` codes of `width` bits, packed little-endian into `data`."""

    name: str
    rank: str
    primitive: str
    count: int
    width: int
    data: torch.Tensor

    @property
    def bits(self) -> int:
        return self.count * self.width

    def codes(self) -> torch.Tensor:
        """The codes as int64 (zeros when the width is 0: a single choice is stored in no bits)."""
        if self.width == 0 or self.count == 0:
            return torch.zeros(self.count, dtype=torch.int64)
        return unpack_bits(self.data, self.width, self.count).to(torch.int64)


def make_field(name: str, rank: str, primitive: str, codes: torch.Tensor, width: int) -> MetaField:
    if width > MAX_BITS:
        raise InputError(
            f"field {name} would need {width}-bit codes; storage packs at most {MAX_BITS} bits "
            "per code (split the matrix into smaller tiles)"
        )
    codes = codes.reshape(-1)
    data = pack_bits(codes, width) if width and codes.numel() else torch.zeros(0, dtype=torch.uint8)
    return MetaField(name, rank, primitive, codes.numel(), width, data)


@dataclass(frozen=True, eq=False)
class EncodedSparse:
    """A matrix in one storage format: stored values (1-D, the input's dtype, in storage order)
    and packed metadata fields."""

    format: str
    shape: tuple[int, int]
    values: torch.Tensor
    fields: tuple[MetaField, ...] = ()

    def field(self, name: str) -> MetaField:
        for f in self.fields:
            if f.name == name:
                return f
        raise FormatError(f"{self.format} has no field {name!r}; it has {[f.name for f in self.fields]}")

    @property
    def metadata_bits(self) -> int:
        return sum(f.bits for f in self.fields)

    @property
    def metadata_nbytes(self) -> int:
        """Bytes of the packed metadata buffers (each padded to a whole byte)."""
        return sum(f.data.numel() for f in self.fields)

    def bits(self, value_bits: int) -> int:
        """Exact size in bits: every stored value at `value_bits` plus every field at its width."""
        return self.values.numel() * check_value_bits(value_bits) + self.metadata_bits


@dataclass(frozen=True)
class SizeTerm:
    """One field of the analytic size: `count` (an expectation, may be fractional) codes of `width` bits."""

    name: str
    rank: str
    primitive: str
    count: float
    width: int

    @property
    def bits(self) -> float:
        return self.count * self.width


@dataclass(frozen=True)
class SizeBreakdown:
    """Analytic size of a format for a shape, density and value width, field by field."""

    format: str
    values: float  # expected stored values (padding and explicit zeros included)
    value_bits: int
    terms: tuple[SizeTerm, ...]
    detail: str = ""

    @property
    def metadata_bits(self) -> float:
        return sum(t.bits for t in self.terms)

    @property
    def bits(self) -> float:
        return self.values * self.value_bits + self.metadata_bits


# ---- validation -------------------------------------------------------------------------------


def check_value_bits(value_bits: Any) -> int:
    if isinstance(value_bits, bool):
        raise InputError(f"value_bits must be an integer >= 1, got {value_bits!r}")
    try:
        vb = operator.index(value_bits)
    except TypeError:
        raise InputError(f"value_bits must be an integer >= 1 (bits per stored value), got {value_bits!r}") from None
    if vb < 1:
        raise InputError(f"value_bits must be >= 1 (bits per stored value), got {vb}")
    return vb


def check_density(density: Any) -> float:
    if isinstance(density, bool) or not isinstance(density, Real) or not 0.0 <= float(density) <= 1.0:
        raise InputError(
            f"density is the fraction of nonzero elements and must lie in [0, 1], got {density!r} "
            "(for 90% sparsity pass density 0.1)"
        )
    return float(density)


def check_shape(shape: Any) -> tuple[int, int]:
    try:
        dims = tuple(shape)
        ok = len(dims) == 2 and all(not isinstance(s, bool) and operator.index(s) >= 0 for s in dims)
    except TypeError:
        ok = False
    if not ok:
        raise InputError(f"storage formats take a 2-D shape (rows, cols) of non-negative integers, got {shape!r}")
    return operator.index(dims[0]), operator.index(dims[1])


def as_matrix(dense: Any) -> torch.Tensor:
    """The input as a contiguous CPU 2-D tensor of a real dtype (kept: values are stored as they are)."""
    if not isinstance(dense, torch.Tensor):
        raise InputError(f"encode takes a 2-D torch.Tensor, got {type(dense).__name__}")
    if dense.dim() != 2:
        raise InputError(
            f"storage formats encode 2-D matrices; got a tensor of shape {tuple(dense.shape)} "
            "(reshape it to (rows, cols) first, e.g. w.reshape(w.shape[0], -1))"
        )
    if dense.is_complex() or dense.dtype == torch.bool:
        raise InputError(f"storage formats hold real numbers; got a tensor of {dense.dtype}")
    return dense.detach().to("cpu").contiguous()


# ---- the contract -----------------------------------------------------------------------------


class Storage(ABC):
    """A compressed storage format: `encode`, `decode`, exact `bits`, analytic `expected_bits`."""

    name: str
    #: (rank, primitive, what is stored): the per-rank metadata, outer rank first
    ranks: tuple[tuple[str, str, str], ...] = ()

    @abstractmethod
    def _encode(self, x: torch.Tensor, mask: torch.Tensor) -> EncodedSparse:
        """`x`: the matrix as raw bits (see `bit_view`); `mask`: its stored positions."""

    @abstractmethod
    def _decode(self, enc: EncodedSparse, values: torch.Tensor) -> torch.Tensor:
        """The matrix as raw bits from `enc`'s fields and its `values` as raw bits."""

    @abstractmethod
    def _breakdown(self, rows: int, cols: int, density: float, value_bits: int) -> SizeBreakdown: ...

    def can_hold(self, shape: tuple[int, int], density: float) -> bool:
        """Whether a matrix of this shape and density fits the format (always, except N:M)."""
        return True

    def encode(self, dense: torch.Tensor) -> EncodedSparse:
        x = as_matrix(dense)
        enc = self._encode(bit_view(x), nonzero_mask(x))
        return replace(enc, values=enc.values.view(x.dtype))

    def decode(self, enc: EncodedSparse) -> torch.Tensor:
        """The matrix, bit for bit (implicit zeros as +0.0), in the dtype it was encoded from."""
        if not isinstance(enc, EncodedSparse):
            raise InputError(f"decode() takes an EncodedSparse, got {type(enc).__name__}")
        self._check_mine(enc)
        return self._decode(enc, bit_view(enc.values)).view(enc.values.dtype)

    def bits(self, enc: EncodedSparse, value_bits: int) -> int:
        """Exact bits of `enc`: stored values at `value_bits` each plus every metadata field."""
        if not isinstance(enc, EncodedSparse):
            raise InputError(f"bits() takes an EncodedSparse, got {type(enc).__name__}")
        self._check_mine(enc)
        return enc.bits(value_bits)

    def expected_breakdown(self, shape: tuple[int, int], density: float, value_bits: int) -> SizeBreakdown:
        rows, cols = check_shape(shape)
        return self._breakdown(rows, cols, check_density(density), check_value_bits(value_bits))

    def expected_bits(self, shape: tuple[int, int], density: float, value_bits: int) -> float:
        """Analytic bits for a uniformly random matrix with density · R · C nonzeros (N:M: a
        matrix that satisfies the pattern)."""
        return self.expected_breakdown(shape, density, value_bits).bits

    def _check_mine(self, enc: EncodedSparse) -> None:
        if enc.format != self.name:
            raise FormatError(
                f"this matrix was encoded as {enc.format!r}, not {self.name!r}; "
                f"decode it with get_storage({enc.format!r})"
            )

    def __repr__(self) -> str:
        return f"<Storage {self.name}>"


_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bit_view(x: torch.Tensor) -> torch.Tensor:
    """Floats viewed as integers of their width: values move through gather / scatter / indexing
    as raw bits (torch's bf16 gather rewrites NaN payloads; integers cannot be rewritten), and
    the integer 0 is +0.0."""
    return x.view(_INT_OF_SIZE[x.element_size()]) if x.is_floating_point() else x


def nonzero_mask(x: torch.Tensor) -> torch.Tensor:
    """Stored positions: everything that is not ±0 (NaN is stored)."""
    return x != 0


def expected_nnz(rows: int, cols: int, density: float) -> float:
    return density * rows * cols


def rounded_nnz(rows: int, cols: int, density: float) -> int:
    """The integer nonzero count a width is sized for (the nearest integer to the expectation)."""
    return int(math.floor(density * rows * cols + 0.5))
