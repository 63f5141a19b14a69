"""Sparse storage formats.

Oracles: hand-computed bit counts and field contents of small matrices (worked out in the
comments); bit-for-bit round trips on hypothesis-drawn matrices (dtype bits compared, NaN
payloads included); itertools' enumeration of combinations for the combinatorial index;
real encodings of random matrices for the analytic sizes; closed-form per-element sizes
worked out by hand for best_format, and a brute-force minimum over real encodings.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmx.errors import FormatError, InputError
from nmx.sparsity.storage import (
    DEFAULT_CANDIDATES,
    UNSTRUCTURED_CANDIDATES,
    best_format,
    combination_rank,
    combination_unrank,
    get_storage,
    storage_table,
)

UNSTRUCTURED = ["dense", "bitmap", "csr", "csc", "coo", "rle", "rle1", "rle2", "rle3", "rle4", "rle8", "rle16"]
NM = ["nm1:1", "nm1:2", "nm2:4", "nm2:4_comb", "nm1:4", "nm1:4_comb", "nm2:8", "nm2:8_comb", "nm4:8", "nm4:8_comb",
      "nm3:5_comb", "nm8:8_comb"]  # fmt: skip
FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
_INT_OF = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}


def raw_bits(t: torch.Tensor) -> torch.Tensor:
    """The stored bit patterns (NaN payloads and the sign of zero included)."""
    return t.view(_INT_OF[t.element_size()]) if t.is_floating_point() else t


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    assert torch.equal(raw_bits(a), raw_bits(b))


def canonical(x: torch.Tensor, name: str) -> torch.Tensor:
    """What decode must return: x itself for dense, otherwise x with -0.0 written as +0.0."""
    return x if name == "dense" else torch.where(x == 0, torch.zeros((), dtype=x.dtype), x)


def specials(dtype: torch.dtype) -> list[torch.Tensor]:
    """Values a format must carry bit for bit: a NaN with a payload, ±Inf, the smallest subnormal, -0."""
    if not dtype.is_floating_point:
        return [torch.tensor(-(2**31), dtype=dtype), torch.tensor(7, dtype=dtype)]
    nan_bits = {torch.float32: 0x7FC00123, torch.float64: 0x7FF8000000000123, torch.float16: 0x7E23,
                torch.bfloat16: 0x7FC3}[dtype]  # fmt: skip
    nan = torch.tensor(nan_bits, dtype=_INT_OF[torch.empty(0, dtype=dtype).element_size()]).view(dtype)
    return [
        nan,
        torch.tensor(float("inf"), dtype=dtype),
        torch.tensor(-float("inf"), dtype=dtype),
        torch.tensor(torch.finfo(dtype).smallest_normal, dtype=dtype) / 4,
        torch.tensor(-0.0, dtype=dtype),
    ]


@st.composite
def sparse_matrices(draw, col_multiple: int = 1):
    rows = draw(st.integers(0, 9))
    cols = col_multiple * draw(st.integers(0, 12 // col_multiple + 1))
    kind = draw(st.sampled_from(["random", "zeros", "full", "single_row", "single_col", "long_runs", "specials"]))
    if kind == "single_row":
        rows = 1
    if kind == "single_col":
        cols = col_multiple
    if kind == "long_runs":  # gaps far longer than 2^r - 1 for small r
        rows, cols = draw(st.integers(1, 6)), col_multiple * draw(st.integers(20, 60))
    dtype = draw(st.sampled_from(FLOATS + [torch.int32]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    if dtype.is_floating_point:
        x = torch.randn(rows, cols, generator=g).to(dtype)
    else:
        x = torch.randint(-1000, 1000, (rows, cols), generator=g, dtype=dtype)
    density = {"zeros": 0.0, "full": 1.0, "long_runs": 0.02}.get(kind) or draw(st.sampled_from([0.1, 0.3, 0.6, 0.9]))
    x = torch.where(torch.rand(rows, cols, generator=g) < density, x, torch.zeros((), dtype=dtype))
    if kind == "full":
        x = torch.where(x == 0, torch.ones((), dtype=dtype), x)
    if kind == "specials" and x.numel():
        for v in specials(dtype):
            x.view(-1)[int(torch.randint(0, x.numel(), (1,), generator=g))] = v
    return x


def prune_to(x: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep at most the first n nonzeros of every group of m columns (a plain loop)."""
    x = x.clone()
    for r in range(x.shape[0]):
        for k in range(0, x.shape[1], m):
            nz = [c for c in range(k, k + m) if x[r, c] != 0]
            for c in nz[n:]:
                x[r, c] = 0
    return x


def random_nm_matrix(rows: int, cols: int, n: int, m: int, seed: int = 0) -> torch.Tensor:
    """Exactly n nonzeros at random positions in every group of m columns."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(rows, cols // m, m, generator=g).argsort(dim=-1).argsort(dim=-1) < n
    return (keep * (torch.rand(keep.shape, generator=g) + 0.5)).reshape(rows, cols)


def exact_nnz_matrix(rows: int, cols: int, density: float, seed: int = 0) -> torch.Tensor:
    """round(density·R·C) nonzeros at uniformly random positions (the analytic model's matrix)."""
    g = torch.Generator().manual_seed(seed)
    nnz = round(density * rows * cols)
    flat = torch.zeros(rows * cols)
    flat[torch.randperm(rows * cols, generator=g)[:nnz]] = torch.rand(nnz, generator=g) + 0.5
    return flat.reshape(rows, cols)


# ---- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", UNSTRUCTURED)
@settings(max_examples=50, deadline=None)
@given(x=sparse_matrices())
def test_unstructured_round_trip_bit_for_bit(name, x):
    s = get_storage(name)
    enc = s.encode(x)
    assert_same_bits(s.decode(enc), canonical(x, name))
    for f in enc.fields:  # metadata is real packed bytes
        assert f.data.dtype == torch.uint8 and f.data.numel() == math.ceil(f.bits / 8)
    assert enc.values.dtype == x.dtype


@pytest.mark.parametrize("name", NM)
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_nm_round_trip_bit_for_bit(name, data):
    s = get_storage(name)
    x = prune_to(data.draw(sparse_matrices(col_multiple=s.m)), s.n, s.m)
    enc = s.encode(x)
    assert_same_bits(s.decode(enc), canonical(x, name))
    assert enc.values.numel() == x.numel() * s.n // s.m  # exactly N values per group


def test_negative_zero_is_a_pruned_zero():
    """w * mask leaves -0.0 where w < 0; those are zeros (not stored, decoded as +0.0), so a
    2:4-masked weight is 2:4."""
    w = torch.tensor([[-1.0, -2.0, 3.0, -4.0]])
    x = w * torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    assert torch.signbit(x[0, 0])
    for name in ["bitmap", "csr", "coo", "rle2", "nm2:4", "nm2:4_comb"]:
        s = get_storage(name)
        out = s.decode(s.encode(x))
        assert out.tolist() == [[0.0, -2.0, 3.0, 0.0]] and not torch.signbit(out[0, 0])
    assert get_storage("bitmap").encode(x).values.numel() == 2
    assert torch.signbit(get_storage("dense").decode(get_storage("dense").encode(x))[0, 0])  # dense keeps it


@pytest.mark.parametrize("r", [1, 2, 3, 5, 8, 13])
def test_rle_long_zero_runs(r):
    """Gaps of 0, 2^r - 1, 2^r, 2^r + 1 and ~5000: each breaks into ⌊gap / 2^r⌋ explicit zeros."""
    n = 5000 + 3 * (1 << r) + 10
    x = torch.zeros(1, n)
    period = 1 << r
    pos = [0, 1, 1 + period, 2 + 2 * period, 4 + 3 * period, n - 1]  # gaps 0, 0, 2^r - 1, 2^r, 2^r + 1, rest
    x[0, pos] = torch.arange(1.0, 7.0)
    gaps = [pos[0]] + [b - a - 1 for a, b in zip(pos, pos[1:], strict=False)]
    s = get_storage(f"rle{r}")
    enc = s.encode(x)
    assert enc.values.numel() == 6 + sum(g // period for g in gaps)
    assert s.bits(enc, 8) == enc.values.numel() * (8 + r)
    assert torch.equal(s.decode(enc), x)
    assert int(enc.field("runs").codes().max()) <= period - 1


# ---- exact sizes, by hand ---------------------------------------------------------------------------

# X (3x4), 3 nonzeros, row-major positions 1, 8, 11:
#   [[0, 1.5, 0,  0],
#    [0, 0,   0,  0],
#    [2, 0,   0, -3]]
X = torch.tensor([[0, 1.5, 0, 0], [0, 0, 0, 0], [2, 0, 0, -3]])

# value_bits = 8. ⌈log2 4⌉ = 2 (col index), ⌈log2 3⌉ = 2 (row index), ⌈log2(3+1)⌉ = 2 (pointer)
HAND = {
    "dense": (96, 12, {}),                                            # 12 · 8
    "bitmap": (36, 3, {"mask": [0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1]}),  # 12 + 3 · 8
    "csr": (38, 3, {"row_ptr": [0, 1, 1, 3], "col_idx": [1, 0, 3]}),  # 4 · 2 + 3 · 2 + 24
    "csc": (40, 3, {"col_ptr": [0, 1, 2, 2, 3], "row_idx": [2, 0, 2]}),  # 5 · 2 + 3 · 2 + 24
    "coo": (36, 3, {"row_idx": [0, 2, 2], "col_idx": [1, 0, 3]}),      # 3 · (2 + 2) + 24
    # gaps 1, 6, 2. r=1 (runs up to 1, period 2): fillers 0, 3, 1 -> 7 entries · (1 + 8)
    "rle1": (63, 7, {"runs": [1, 1, 1, 1, 0, 1, 0]}),
    # r=2 (period 4): gap 6 = one filler (run 3) + run 2 -> 4 entries · (2 + 8)
    "rle2": (40, 4, {"runs": [1, 3, 2, 2]}),
    "rle3": (33, 3, {"runs": [1, 6, 2]}),                             # 3 · (3 + 8)
    "rle": (33, 3, {"runs": [1, 6, 2]}),                              # r=1: 63, r=2: 40, r=3: 33 -> 3
    # 3 groups of 4, 2 values each: 6 · 8 = 48 values; slots = nonzeros, then the lowest zeros
    "nm2:4": (48 + 3 * 4, 6, {"positions": [0, 1, 0, 1, 0, 3]}),
    # colex ranks: {0,1} -> C(0,1) + C(1,2) = 0; {0,3} -> C(0,1) + C(3,2) = 3
    "nm2:4_comb": (48 + 3 * 3, 6, {"combination": [0, 0, 3]}),
    "nm4:4_comb": (96, 12, {"combination": [0, 0, 0]}),               # C(4,4) = 1: a 0-bit index
}  # fmt: skip


@pytest.mark.parametrize("name", list(HAND))
def test_exact_bits_of_a_hand_worked_matrix(name):
    bits, nvalues, fields = HAND[name]
    s = get_storage(name)
    enc = s.encode(X)
    assert s.bits(enc, 8) == bits
    assert enc.values.numel() == nvalues
    assert {f.name: f.codes().tolist() for f in enc.fields} == fields
    assert torch.equal(s.decode(enc), X)


def test_packed_bytes_of_the_hand_worked_matrix():
    enc = get_storage("csr").encode(X)
    assert enc.field("row_ptr").data.tolist() == [0b11_01_01_00]  # 0, 1, 1, 3 at 2 bits, first code lowest
    assert enc.field("col_idx").data.tolist() == [0b11_00_01]
    assert get_storage("nm2:4_comb").encode(X).field("combination").data.tolist() == [0b011_000_000 & 0xFF, 0b0]
    assert get_storage("csc").encode(X).values.tolist() == [2.0, 1.5, -3.0]  # column-major


@pytest.mark.parametrize("name,bits", [
    # 1x1 [[5]] at value_bits 8: a coordinate in 0..0 takes 0 bits, a pointer in 0..1 takes 1
    ("dense", 8), ("bitmap", 9), ("csr", 2 + 8), ("csc", 2 + 8), ("coo", 8), ("rle1", 9), ("rle4", 12),
    ("nm1:1", 8), ("nm1:1_comb", 8),
])  # fmt: skip
def test_exact_bits_of_one_element(name, bits):
    s = get_storage(name)
    assert s.bits(s.encode(torch.tensor([[5.0]])), 8) == bits


def test_exact_bits_follow_the_documented_widths():
    """A 5x37 matrix with 11 nonzeros: ⌈log2 37⌉ = 6, ⌈log2 5⌉ = 3, ⌈log2 12⌉ = 4."""
    x = torch.zeros(5, 37)
    x.view(-1)[torch.randperm(185)[:11]] = torch.rand(11) + 1
    b = lambda name: get_storage(name).bits(get_storage(name).encode(x), 16)  # noqa: E731
    assert b("dense") == 185 * 16
    assert b("bitmap") == 185 + 11 * 16
    assert b("csr") == 6 * 4 + 11 * (6 + 16)
    assert b("csc") == 38 * 4 + 11 * (3 + 16)
    assert b("coo") == 11 * (3 + 6 + 16)


# ---- the combinatorial index ------------------------------------------------------------------------


@pytest.mark.parametrize("m", range(1, 9))
def test_combination_rank_is_the_colex_position(m):
    for n in range(1, m + 1):
        combos = sorted(itertools.combinations(range(m), n), key=lambda c: c[::-1])  # colex order
        pos = torch.tensor(combos)
        assert combination_rank(pos, m).tolist() == list(range(math.comb(m, n)))
        assert combination_unrank(torch.arange(math.comb(m, n)), m, n).tolist() == [list(c) for c in combos]


def test_combinatorial_index_is_smaller_and_round_trips():
    for n, m, comb_bits, pos_bits in [(2, 4, 3, 4), (4, 8, 7, 12), (2, 8, 5, 6), (1, 4, 2, 2), (8, 16, 14, 32)]:
        assert get_storage(f"nm{n}:{m}_comb").group_index_bits == comb_bits == math.ceil(math.log2(math.comb(m, n)))
        assert get_storage(f"nm{n}:{m}").group_index_bits == pos_bits == n * math.ceil(math.log2(m))
    x = prune_to(torch.randn(16, 64), 2, 4)
    pos, comb = get_storage("nm2:4"), get_storage("nm2:4_comb")
    ep, ec = pos.encode(x), comb.encode(x)
    assert pos.bits(ep, 16) - comb.bits(ec, 16) == 16 * 16  # one bit saved per group
    assert torch.equal(comb.decode(ec), x) and torch.equal(pos.decode(ep), x)
    assert comb.expected_bits((4096, 4096), 0.5, 4) < pos.expected_bits((4096, 4096), 0.5, 4)


def test_wide_combinatorial_groups():
    s = get_storage("nm3:1000_comb")  # C(1000, 3) = 166,167,000 -> 28 bits (positions: 30)
    assert s.group_index_bits == 28
    x = prune_to(torch.randn(3, 2000), 3, 1000)
    assert torch.equal(s.decode(s.encode(x)), x)
    ranks = torch.tensor([0, math.comb(64, 5) - 1, 123456])
    assert torch.equal(combination_rank(combination_unrank(ranks, 64, 5), 64), ranks)
    with pytest.raises(FormatError, match="per-position index"):
        get_storage("nm32:64_comb")  # C(64, 32) needs 61 bits


# ---- analytic sizes against real matrices -------------------------------------------------------------


@pytest.mark.parametrize("density", [0.5, 0.1, 0.01])
@pytest.mark.parametrize("name", ["dense", "bitmap", "csr", "csc", "coo", "rle", "rle2", "rle4", "rle8"])
def test_expected_bits_match_real_random_matrices(name, density):
    x = exact_nnz_matrix(512, 512, density, seed=1)
    for vb in (16, 4):
        s = get_storage(name)
        if name == "rle":  # choose r at encode time for the value width compared
            s = dataclasses.replace(s, value_bits_hint=vb)
        exact, expected = s.bits(s.encode(x), vb), s.expected_bits(x.shape, density, vb)
        assert abs(expected - exact) <= 0.02 * exact, (vb, exact, expected)


@pytest.mark.parametrize("name,density", [("nm2:4", 0.5), ("nm2:4_comb", 0.3), ("nm4:8_comb", 0.5),
                                          ("nm2:8", 0.1), ("nm1:4", 0.25)])  # fmt: skip
def test_expected_bits_of_nm_equal_real_pattern_matrices(name, density):
    s = get_storage(name)
    x = random_nm_matrix(64, 128, s.n, s.m)
    if density < s.n / s.m:  # sparser than the pattern: some groups are padded
        x = prune_to(x * (torch.rand(x.shape) < density * s.m / s.n), s.n, s.m)
    for vb in (16, 4):
        assert s.bits(s.encode(x), vb) == s.expected_bits(x.shape, density, vb)


def test_expected_bits_by_hand():
    shape = (4096, 4096)
    n = 4096 * 4096
    assert get_storage("bitmap").expected_bits(shape, 0.5, 16) == n + n / 2 * 16
    # nnz = 2^23: pointers need ⌈log2(2^23 + 1)⌉ = 24 bits
    assert get_storage("csr").expected_bits(shape, 0.5, 16) == 4097 * 24 + n / 2 * (12 + 16)
    assert get_storage("coo").expected_bits(shape, 0.1, 4) == pytest.approx(0.1 * n * 28)
    # rle2 at density 0.5: E = nnz / (1 - 0.5^4)
    assert get_storage("rle2").expected_bits(shape, 0.5, 4) == pytest.approx(n / 2 / (1 - 0.5**4) * 6)
    assert get_storage("nm2:4_comb").expected_bits(shape, 0.5, 4) == n / 4 * (2 * 4 + 3)
    for name in DEFAULT_CANDIDATES:
        assert get_storage(name).expected_bits((0, 4096), 0.5 if "nm" not in name else 0.1, 4) == 0


# ---- best_format ----------------------------------------------------------------------------------------

SHAPE = (4096, 4096)


@pytest.mark.parametrize("density,vb,winner,bits_per_element", [
    # dense 16 vs bitmap 1 + 0.99·16 = 16.84, rle1 0.99/(1 - 0.01^2)·17 = 16.83
    (0.99, 16, "dense", 16.0),
    # bitmap 1 + 0.9·16 = 15.4 beats rle1 0.9/(1 - 0.1^2)·17 = 15.45 and dense 16
    (0.9, 16, "bitmap", 15.4),
    (0.9, 4, "dense", 4.0),  # bitmap 1 + 3.6 = 4.6
    (0.99, 4, "dense", 4.0),
    # 2:4 with a 3-bit combination index: 0.5·16 + 3/4 (bitmap 9, 4:8 comb 8 + 7/8)
    (0.5, 16, "nm2:4_comb", 8.75),
    (0.5, 4, "nm2:4_comb", 2.75),
])  # fmt: skip
def test_best_format_by_hand(density, vb, winner, bits_per_element):
    name, bits = best_format(SHAPE, density, vb)
    assert name == winner
    assert bits / (4096 * 4096) == pytest.approx(bits_per_element)


@pytest.mark.parametrize("density", [0.5, 0.9, 0.99, 0.1, 0.01])
@pytest.mark.parametrize("vb", [16, 4])
def test_best_format_is_the_brute_force_minimum(density, vb):
    """Over every name the registry parses in a wide set, skipping N:M with N/M below the density."""
    names = UNSTRUCTURED + [f"nm{n}:{m}{c}" for m in (2, 4, 8, 16) for n in range(1, m + 1) for c in ("", "_comb")]
    sizes = {nm: get_storage(nm).expected_bits(SHAPE, density, vb) for nm in names
             if not nm.startswith("nm") or density <= get_storage(nm).n / get_storage(nm).m}  # fmt: skip
    name, bits = best_format(SHAPE, density, vb, candidates=names)
    assert bits == min(sizes.values()) and sizes[name] == bits


@pytest.mark.parametrize("density", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("vb", [16, 4])
def test_best_format_wins_on_real_matrices(density, vb):
    """The predicted winner's real encoding is within 1% of the smallest real encoding of any candidate
    (unstructured formats on a uniformly random matrix, N:M on one pruned to the pattern)."""
    shape = (256, 256)
    x = exact_nnz_matrix(*shape, density, seed=2)
    real = {}
    for name in DEFAULT_CANDIDATES:
        s = get_storage(name)
        if not s.can_hold(shape, density):
            continue
        m = random_nm_matrix(*shape, s.n, s.m, seed=3) if name.startswith("nm") else x
        real[name] = s.bits(s.encode(m), vb)
    name, _ = best_format(shape, density, vb)
    assert real[name] <= 1.01 * min(real.values()), (name, sorted(real.items(), key=lambda kv: kv[1])[:3])


def test_best_format_candidates_and_the_nm_rule():
    assert best_format(SHAPE, 0.5, 4, candidates=["csr", "csc"])[0] == "csr"  # a tie goes to the first
    assert best_format(SHAPE, 0.3, 4, candidates=["nm1:4", "bitmap"])[0] == "bitmap"  # 1:4 cannot hold 0.3
    assert best_format(SHAPE, 0.25, 4, candidates=["nm1:4", "bitmap"])[0] == "nm1:4"
    assert best_format((4096, 4098), 0.5, 4, candidates=["nm2:4", "bitmap"])[0] == "bitmap"  # 4 ∤ 4098
    assert best_format(SHAPE, 0.5, 4, candidates=UNSTRUCTURED_CANDIDATES)[0] == "bitmap"  # 1 + 0.5 · 4 = 3
    with pytest.raises(InputError, match="none of the candidates"):
        best_format(SHAPE, 0.9, 4, candidates=["nm2:4"])
    with pytest.raises(InputError, match="no candidate"):
        best_format(SHAPE, 0.9, 4, candidates=[])


# ---- the table ---------------------------------------------------------------------------------------------


def test_storage_table_rows():
    rows = storage_table([0.5, 0.9, 0.99], [16, 4])
    keys = {"density", "value_bits", "format", "bits", "bits_per_nonzero", "bits_per_element", "relative_to_dense",
            "best", "winner", "metadata", "assumes", "metadata_bits", "value_bits_total"}  # fmt: skip
    assert all(keys <= r.keys() for r in rows)
    n = 4096 * 4096
    for d in (0.5, 0.9, 0.99):
        for vb in (16, 4):
            group = [r for r in rows if r["density"] == d and r["value_bits"] == vb]
            assert sum(r["best"] for r in group) == 1
            assert group[0]["winner"] == best_format(SHAPE, d, vb)[0] == next(r["format"] for r in group if r["best"])
            for r in group:
                assert r["bits"] == pytest.approx(r["value_bits_total"] + r["metadata_bits"])
                assert r["bits_per_element"] == pytest.approx(r["bits"] / n)
                assert r["bits_per_nonzero"] == pytest.approx(r["bits"] / (d * n))
                assert r["relative_to_dense"] == pytest.approx(r["bits"] / (n * vb))
            assert next(r for r in group if r["format"] == "dense")["relative_to_dense"] == 1.0
            # N:M rows appear only where density <= N/M
            assert {r["format"] for r in group if r["format"].startswith("nm")} == (
                {"nm2:4", "nm2:4_comb", "nm4:8", "nm4:8_comb"} if d == 0.5 else set()
            )


def test_storage_table_at_density_zero_and_empty_shapes():
    rows = storage_table([0.0], [8], shape=(64, 64))
    assert all(r["bits_per_nonzero"] is None for r in rows)
    assert next(r for r in rows if r["format"] == "bitmap")["bits"] == 64 * 64
    empty = storage_table([0.5], [8], shape=(0, 64))
    assert all(r["bits"] == 0 and r["relative_to_dense"] is None for r in empty)


# ---- rle with a chosen r -------------------------------------------------------------------------------------


def test_rle_picks_the_smallest_run_width():
    x = exact_nnz_matrix(64, 64, 0.05, seed=4)
    auto = get_storage("rle")
    enc = auto.encode(x)
    r = int(enc.format[3:])
    sizes = {k: get_storage(f"rle{k}").bits(get_storage(f"rle{k}").encode(x), 16) for k in range(1, 17)}
    assert auto.bits(enc, 16) == sizes[r] == min(sizes.values())
    assert torch.equal(auto.decode(enc), x) and torch.equal(get_storage(enc.format).decode(enc), x)
    with pytest.raises(FormatError, match="encoded as"):
        get_storage(f"rle{r + 1}").decode(enc)


# ---- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DEFAULT_CANDIDATES)
@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(4),
        torch.zeros(2, 4, 4),
        torch.tensor(1.0),
        [[1.0, 0.0]],
        torch.zeros(2, 4, dtype=torch.bool),
        torch.zeros(2, 4, dtype=torch.complex64),
    ],
)
def test_encode_refuses_what_is_not_a_real_matrix(name, bad):
    with pytest.raises(InputError):
        get_storage(name).encode(bad)


def test_nm_violation_names_the_broken_groups():
    x = torch.ones(3, 8)
    x[0, :4] = torch.tensor([1.0, 0, 0, 1])  # the only group that holds 2:4
    with pytest.raises(InputError, match=r"breaks 2:4 in 5 of 6 groups \(first: row 0, columns 4..7 hold 4"):
        get_storage("nm2:4_comb").encode(x)


@pytest.mark.parametrize("name", ["nm2:4", "nm2:4_comb", "nm4:8"])
def test_nm_refuses_columns_not_divisible_by_m(name):
    with pytest.raises(InputError, match="pad it to"):
        get_storage(name).encode(torch.zeros(2, 10))
    with pytest.raises(InputError, match="pad it to"):
        get_storage(name).expected_bits((4, 4098), 0.1, 4)


def test_nm_expected_bits_refuses_a_density_it_cannot_hold():
    with pytest.raises(InputError, match="holds at most"):
        get_storage("nm2:4").expected_bits(SHAPE, 0.6, 4)


@pytest.mark.parametrize("density", [-0.1, 1.1, float("nan"), True, "0.5", None])
def test_bad_densities(density):
    with pytest.raises(InputError, match="density"):
        get_storage("csr").expected_bits(SHAPE, density, 4)
    with pytest.raises(InputError, match="density"):
        best_format(SHAPE, density, 4)


@pytest.mark.parametrize("vb", [0, -4, 2.5, True, "4", None])
def test_bad_value_bits(vb):
    s = get_storage("bitmap")
    with pytest.raises(InputError, match="value_bits"):
        s.bits(s.encode(X), vb)
    with pytest.raises(InputError, match="value_bits"):
        s.expected_bits(SHAPE, 0.5, vb)
    with pytest.raises(InputError, match="value_bits"):
        storage_table([0.5], [vb])


@pytest.mark.parametrize("shape", [(4, 4, 4), (4,), (-1, 4), (4.5, 4), "4x4", None])
def test_bad_shapes(shape):
    with pytest.raises(InputError, match="2-D shape"):
        get_storage("csr").expected_bits(shape, 0.5, 4)


@pytest.mark.parametrize("name,hint", [("csrr", "'csr'"), ("bitmp", "'bitmap'"), ("nm2:4_combo", "'nm2:4_comb'"),
                                       ("rel4", "'rle4'"), ("banana", "choose dense")])  # fmt: skip
def test_unknown_names_suggest_the_closest(name, hint):
    with pytest.raises(FormatError, match=hint):
        get_storage(name)


@pytest.mark.parametrize("name", ["rle0", "rle33", "nm0:4", "nm5:4", "nm2:0", "", "  ", None, 3])
def test_malformed_names(name):
    with pytest.raises(FormatError):
        get_storage(name)


def test_names_are_case_and_space_insensitive():
    assert get_storage(" NM2:4_Comb ").name == "nm2:4_comb"
    for name in DEFAULT_CANDIDATES:
        assert get_storage(name).name == name


def test_decode_refuses_another_formats_encoding():
    enc = get_storage("csr").encode(X)
    with pytest.raises(FormatError, match="encoded as 'csr'"):
        get_storage("csc").decode(enc)
    with pytest.raises(InputError, match="EncodedSparse"):
        get_storage("csr").decode(X)
    with pytest.raises(InputError, match="EncodedSparse"):
        get_storage("csr").bits(X, 8)


@pytest.mark.parametrize("name", list(DEFAULT_CANDIDATES) + ["rle3", "nm1:1"])
@pytest.mark.parametrize("shape", [(0, 8), (5, 0), (0, 0)])
def test_empty_matrices_encode_to_nothing(name, shape):
    s = get_storage(name)
    x = torch.zeros(shape, dtype=torch.float16)
    enc = s.encode(x)
    assert enc.values.numel() == 0 and s.bits(enc, 16) == 0
    out = s.decode(enc)
    assert out.shape == shape and out.dtype == torch.float16
