"""Compressed sparse storage formats with exact sizes: encode, decode, and which one is smallest.

    s = get_storage("csr")
    enc = s.encode(w)                  # stored values (w's dtype) + packed uint8 metadata fields
    s.decode(enc)                      # == w bit for bit (-0.0 comes back as +0.0)
    s.bits(enc, value_bits=4)          # exact: values at 4 bits + every field at its width
    s.expected_bits((4096, 4096), 0.1, 4)          # analytic, uniformly random matrix
    best_format((4096, 4096), 0.1, 4)              # ('rle', ...) the smallest candidate
    storage_table([0.5, 0.1, 0.01], [16, 4])       # the rows `nmx sparsity formats` prints

A matrix has R rows, C columns, nnz nonzeros; v = value_bits. Per-rank metadata, in
Sparseloop's primitives (U uncompressed, UOP offset pairs, CP coordinates, B bitmask,
RLE run lengths; CMB is our combination index), outer rank first:

  name         ranks                         metadata bits                                stored values
  dense        rows U, cols U                0                                            R·C
  bitmap       rows U, cols B                R·C  (1 bit per element, row-major)          nnz
  csr          rows UOP, cols CP             (R+1)·⌈log2(nnz+1)⌉ + nnz·⌈log2 C⌉           nnz
  csc          cols UOP, rows CP             (C+1)·⌈log2(nnz+1)⌉ + nnz·⌈log2 R⌉           nnz (column-major)
  coo          rows CP, cols CP              nnz·(⌈log2 R⌉ + ⌈log2 C⌉)                    nnz
  rle<r>       rows·cols fused, RLE          E·r, E = nnz + Σ ⌊gap / 2^r⌋                 E (fillers are stored zeros)
  rle          as rle<r>, r in 1..32 chosen to minimize the size
  nmN:M        rows U, groups U, CP          (R·C/M)·N·⌈log2 M⌉                           R·C·N/M (padding zeros)
  nmN:M_comb   rows U, groups U, CMB         (R·C/M)·⌈log2 C(M,N)⌉                        R·C·N/M

⌈log2 n⌉ is 0 for n = 1 (one choice needs no bits). Pointers hold 0..nnz, hence
⌈log2(nnz+1)⌉. RLE: a run of zeros longer than 2^r − 1 is broken by an explicit stored
zero (Eyeriss / Sparseloop), and the zeros after the last nonzero are implied. N:M groups
run along the columns; every group stores exactly N values. Details and the analytic
models are in `storage_formats` and `storage_nm`; zero handling in `storage_base`.

Shape and format parameters are header, not counted. Empty matrices (0 rows or 0
columns) encode to no values and metadata of 0 bits (csr/csc store R+1 / C+1 pointers
of ⌈log2 1⌉ = 0 bits), and decode to the empty matrix of the same shape and dtype.

`best_format` and `storage_table` compare analytic sizes. Unstructured formats assume
density · R · C nonzeros at uniformly random positions. An N:M format is a candidate
only where it can hold the matrix: C divisible by M and density <= N/M (the matrix was
pruned to that pattern or sparser); its size is then that of a pattern-conforming matrix.
For a matrix with an unstructured mask, compare UNSTRUCTURED_CANDIDATES only.
`density` is the fraction of nonzeros: 90% sparsity is density 0.1.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Iterable, Sequence

from nmx.errors import FormatError, InputError, did_you_mean
from nmx.sparsity.storage_base import (
    EncodedSparse,
    MetaField,
    SizeBreakdown,
    SizeTerm,
    Storage,
    check_density,
    check_shape,
    check_value_bits,
)
from nmx.sparsity.storage_formats import COO, RLE, Bitmap, Compressed, Dense
from nmx.sparsity.storage_nm import NM, combination_rank, combination_unrank

__all__ = [
    "DEFAULT_CANDIDATES", "UNSTRUCTURED_CANDIDATES", "EncodedSparse", "MetaField", "SizeBreakdown", "SizeTerm",
    "Storage", "best_format", "combination_rank", "combination_unrank", "get_storage", "names", "storage_table",
]  # fmt: skip

#: formats that store any matrix: the candidates for an unstructured (non-N:M) mask
UNSTRUCTURED_CANDIDATES = ("dense", "bitmap", "csr", "csc", "coo", "rle")

#: what best_format and storage_table compare by default (nm1:4_comb is left out: C(4,1) = 4
#: makes it the same 2 bits as nm1:4)
DEFAULT_CANDIDATES = UNSTRUCTURED_CANDIDATES + (
    "nm1:4", "nm2:4", "nm2:4_comb", "nm2:8", "nm2:8_comb", "nm4:8", "nm4:8_comb",
)  # fmt: skip

#: names suggested for typos; any parsable name works
LISTED = DEFAULT_CANDIDATES + ("rle2", "rle4", "rle8", "nm1:4_comb")

_SIMPLE = {"dense": Dense(), "bitmap": Bitmap(), "csr": Compressed(), "csc": Compressed(by_columns=True), "coo": COO()}
_RLE = re.compile(r"rle(\d+)?")
_NM = re.compile(r"nm(\d+):(\d+)(_comb)?")


def get_storage(name: str) -> Storage:
    """The storage format called `name`: dense, bitmap, csr, csc, coo, rle, rle<r>, nmN:M, nmN:M_comb."""
    if not isinstance(name, str) or not name.strip():
        raise FormatError(f"a storage format name must be a non-empty string, got {name!r}")
    return _get(name.strip().lower())


@lru_cache(maxsize=None)
def _get(name: str) -> Storage:
    if name in _SIMPLE:
        return _SIMPLE[name]
    if m := _RLE.fullmatch(name):
        return RLE(None if m[1] is None else int(m[1]))
    if m := _NM.fullmatch(name):
        return NM(int(m[1]), int(m[2]), combinatorial=m[3] is not None)
    raise FormatError(
        f"unknown storage format {name!r}{did_you_mean(name, LISTED, 0.5)} "
        "(choose dense, bitmap, csr, csc, coo, rle, rle<r>, nmN:M, nmN:M_comb)"
    )


def names() -> list[str]:
    """The default candidates, in table order."""
    return list(DEFAULT_CANDIDATES)


def _candidates(candidates: Iterable[str] | None) -> list[Storage]:
    if candidates is None:
        candidates = DEFAULT_CANDIDATES
    if isinstance(candidates, str):
        candidates = [candidates]
    out = [get_storage(c) for c in candidates]
    if not out:
        raise InputError("no candidate formats given; pass names such as ['bitmap', 'csr', 'rle']")
    return out


def _ranked(shape, density, value_bits, candidates) -> list[tuple[Storage, SizeBreakdown]]:
    """Candidates that can hold the matrix, with their analytic sizes, in candidate order."""
    shape, density, value_bits = check_shape(shape), check_density(density), check_value_bits(value_bits)
    sized = [(s, s.expected_breakdown(shape, density, value_bits)) for s in _candidates(candidates)
             if s.can_hold(shape, density)]  # fmt: skip
    if not sized:
        raise InputError(
            f"none of the candidates can hold a {shape[0]}x{shape[1]} matrix at density {density:g} "
            "(N:M formats need density <= N/M and columns divisible by M); add an unstructured format such as 'csr'"
        )
    return sized


def best_format(
    shape: tuple[int, int], density: float, value_bits: int, candidates: Sequence[str] | None = None
) -> tuple[str, float]:
    """(name, expected bits) of the smallest candidate that can hold the matrix; ties go to the
    earlier candidate. N:M formats compete only where density <= N/M and M divides the columns,
    which assumes the matrix was pruned to that pattern: for a matrix with an unstructured mask
    pass candidates=UNSTRUCTURED_CANDIDATES (a 50%-unstructured matrix does not fit 2:4)."""
    sized = _ranked(shape, density, value_bits, candidates)
    best, bd = min(sized, key=lambda sb: sb[1].bits)  # min keeps the first of equal sizes
    return best.name, bd.bits


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def storage_table(
    densities: Iterable[float],
    value_bits_list: Iterable[int],
    shape: tuple[int, int] = (4096, 4096),
    candidates: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per (density, value_bits, format) that can hold the matrix, in the order asked.

    Keys: density (fraction nonzero), sparsity, value_bits, rows, cols, nonzeros (expected),
    format, bits, value_bits_total (stored values · value_bits), metadata_bits,
    stored_values, bits_per_nonzero, bits_per_element, relative_to_dense (bits over
    R·C·value_bits), best (this format wins its (density, value_bits)), winner, metadata
    (how the index is sized), assumes (uniform random positions, or an N:M-pruned
    matrix). Ratios are None where their denominator is 0 (density 0, empty shape).
    N:M formats that cannot hold a density are left out of its rows.
    """
    shape = check_shape(shape)
    rows_, cols = shape
    dens = [check_density(d) for d in densities]
    vbs = [check_value_bits(v) for v in value_bits_list]
    table = []
    for d in dens:
        nnz = d * rows_ * cols
        for vb in vbs:
            sized = _ranked(shape, d, vb, candidates)
            winner = min(sized, key=lambda sb: sb[1].bits)[0].name
            dense_bits = rows_ * cols * vb
            for s, bd in sized:
                nm = isinstance(s, NM)
                table.append({
                    "density": d,
                    "sparsity": 1.0 - d,
                    "value_bits": vb,
                    "rows": rows_,
                    "cols": cols,
                    "nonzeros": nnz,
                    "format": s.name,
                    "bits": bd.bits,
                    "value_bits_total": bd.values * vb,
                    "metadata_bits": bd.metadata_bits,
                    "stored_values": bd.values,
                    "bits_per_nonzero": _ratio(bd.bits, nnz),
                    "bits_per_element": _ratio(bd.bits, rows_ * cols),
                    "relative_to_dense": _ratio(bd.bits, dense_bits),
                    "best": s.name == winner,
                    "winner": winner,
                    "metadata": bd.detail,
                    "assumes": f"pruned to {s.n}:{s.m} (<= {s.n} nonzeros per {s.m})" if nm
                    else "uniformly random nonzeros",
                })  # fmt: skip
    return table


#: weights without a number format are counted as bf16, the way they are deployed
UNQUANTIZED_BITS = 16


def weight_storage(
    shape: tuple[int, int], density: float = 1.0, weight_format: str | None = None, pattern: Any = None
) -> dict[str, Any]:
    """What a weight [rows, cols] costs to store: its values at the format's element bits in the
    smallest sparse storage for its density (N:M storage, the smaller index encoding, for an N:M
    pattern; the best unstructured format for an unstructured mask; dense without one), plus the
    format's scales per block of the dense layout (padding included). Returns storage (the
    format's name), bits, value_bits, scale_bits, bits_per_weight.

    The one place weight bytes are sized: `nmx run` accounts its real masks with it and the
    hardware workload (nmx.hw.workload) prices a recipe with it."""
    from nmx import formats
    from nmx.sparsity.patterns import NMPattern, parse_pattern

    rows, cols = check_shape(shape)
    density = check_density(density)
    n = rows * cols
    pattern = parse_pattern(pattern) if pattern is not None and not hasattr(pattern, "density") else pattern
    fmt = formats.get(weight_format) if weight_format else None
    value_bits = fmt.code_bits if fmt else UNQUANTIZED_BITS
    scale_bits = (8 * fmt.storage_bytes((rows, cols)) - n * fmt.code_bits) if fmt else 0
    if isinstance(pattern, NMPattern):
        if density > pattern.density + 1e-9:
            raise InputError(f"a density of {density:.3f} is more than pattern {pattern} keeps")
        names = (f"nm{pattern.n}:{pattern.m}", f"nm{pattern.n}:{pattern.m}_comb")
        storage, bits = min(((s, get_storage(s).expected_bits((rows, cols), pattern.density, value_bits))
                             for s in names), key=lambda sb: sb[1])
    elif pattern is not None:  # an unstructured mask: N:M storage cannot hold it
        storage, bits = best_format((rows, cols), density, value_bits, candidates=UNSTRUCTURED_CANDIDATES)
    else:
        storage, bits = "dense", float(n * value_bits)
    total = bits + scale_bits
    return {"storage": storage, "bits": total, "value_bits": value_bits, "scale_bits": scale_bits,
            "bits_per_weight": total / n if n else 0.0}
