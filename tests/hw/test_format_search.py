"""Format x dataflow co-search (nmx.hw.format_search).

Oracles: sizes counted by hand on a 4 x 4 mask; nmx.sparsity.storage_formats' real encoders (dense,
bitmap, CSR, CSC, RLE) on random masks; a brute-force enumeration of every mask of a short fiber
for the expected RLE fillers; nmx.hw.accel.evaluate for the traffic; brute force over all
primitive tuples for the DP; the exhaustive search for the pruned one; properties (hypothesis):
fewer nonzeros never more bits."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmx.errors import InputError
from nmx.hw.accel import evaluate, gemm_problem
from nmx.hw.accel_spec import load_accel
from nmx.hw.format_search import (
    DATAFLOWS,
    PRIMITIVES,
    FiberFormat,
    LayerCase,
    Machine,
    Space,
    _Sizer,
    count_bits,
    enumerate_formats,
    exact_stats,
    exhaustive,
    expected_fill,
    format_size,
    layer_cases,
    memory_traffic,
    search,
)
from nmx.sparsity.storage import get_storage
from tests.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "examples" / "hw" / "dense_16x16_ws.yaml"

MASK = np.array([[1, 0, 0, 1],
                 [0, 0, 0, 0],
                 [0, 1, 0, 0],
                 [1, 1, 1, 1]], dtype=bool)  # nnz 7


# ---- sizes by hand ----------------------------------------------------------------------------------

# one 4 x 4 tile, 8-bit values (56 bits of values for 7 nonzeros)
HAND = {
    "nk:U-U": 128,  # 16 values
    "nk:U-B": 16 + 56,  # a bit per element
    "nk:UOP-CP": 5 * 3 + 7 * 2 + 56,  # 5 row offsets of ceil(log2 8) bits, 2-bit column indices
    "kn:UOP-CP": 5 * 3 + 7 * 2 + 56,  # CSC: same counts on this mask
    # rows 0, 2, 3 nonempty: 3 row coords + the root fiber's length (3 b); 3 column fibers, each with a length
    "nk:CP-CP": 3 * 2 + 3 + 3 * 3 + 7 * 2 + 56,
    "nk:B-B": 4 + 3 * 4 + 56,  # a 4-bit row mask, then a 4-bit mask per nonempty row
    "nk:UOP-B": 5 * 3 + 4 * 4 + 56,
    # gaps per row fiber 0,2 | - | 1 | 0,0,0,0: r = 2 has no fillers (7 x 10 < 8 x 9 at r = 1); 4 lengths of 3 b
    "nk:U-RLE": 7 * 2 + 4 * 3 + 56,
    # one row-major stream: gaps 0,2,5,2,0,0,0: r = 3 (7 x 11 beats 8 x 10 at r = 2); its length is 5 b
    "nk:RLE": 7 * 3 + 5 + 56,
    # ranks (4 rows, 2 halves, 2): row mask of halves (8 b); 5 nonempty halves, each a length (2 b) and 1-b coords
    "nk/2:U-B-CP": 8 + 5 * 2 + 7 * 1 + 56,
}


@pytest.mark.parametrize("fmt, bits", HAND.items())
def test_sizes_on_a_hand_counted_mask(fmt, bits):
    assert format_size(fmt, (4, 4), mask=MASK, value_bits=8).bits == bits


def test_sizes_with_tiles_by_hand():
    # two tiles of two rows: nnz 2 and 5 -> tile-local offsets of ceil(log2 6) = 3 bits, 3 per tile
    assert format_size("nk:UOP-CP", (4, 4), mask=MASK, tile=(2, 4), value_bits=8).bits == 6 * 3 + 7 * 2 + 56
    # two tiles of two columns: nnz 4 and 3 -> 5 offsets each of 3 bits, 1-bit column indices
    assert format_size("nk:UOP-CP", (4, 4), mask=MASK, tile=(4, 2), value_bits=8).bits == 10 * 3 + 7 * 1 + 56
    # the rle run width of the chosen format is reported
    assert format_size("nk:RLE", (4, 4), mask=MASK, value_bits=8).rle_bits == 3


@pytest.mark.parametrize("seed", range(4))
def test_single_tile_formats_equal_the_storage_encoders(seed):
    g = torch.Generator().manual_seed(seed)
    n, k = 24, 40
    d = [0.05, 0.3, 0.6, 0.95][seed]
    x = torch.randn(n, k, generator=g) * (torch.rand(n, k, generator=g) < d)
    mask = (x != 0).numpy()
    for vb in (4, 8, 16):
        for ours, theirs in (("nk:U-U", "dense"), ("nk:U-B", "bitmap"), ("nk:UOP-CP", "csr"), ("kn:UOP-CP", "csc")):
            s = get_storage(theirs)
            assert format_size(ours, (n, k), mask=mask, value_bits=vb).bits == s.bits(s.encode(x), vb), (ours, vb)
        r = format_size("nk:RLE", (n, k), mask=mask, value_bits=vb)
        rle = get_storage(f"rle{r.rle_bits}")
        assert r.bits == rle.bits(rle.encode(x), vb) + count_bits(n * k)  # + the stream's length field
        for ours, theirs in (("nk:U-B", "bitmap"), ("nk:UOP-CP", "csr"), ("kn:UOP-CP", "csc"), ("nk:U-U", "dense")):
            assert format_size(ours, (n, k), density=d, value_bits=vb).bits == pytest.approx(
                get_storage(theirs).expected_bits((n, k), d, vb), rel=1e-12)


@pytest.mark.parametrize("s, p, r", [(7, 0.3, 1), (7, 0.3, 2), (9, 0.1, 1), (9, 0.6, 2), (12, 0.2, 3)])
def test_expected_fillers_by_enumerating_every_fiber(s, p, r):
    want = 0.0
    for bits in itertools.product((0, 1), repeat=s):
        prob = math.prod(p if b else 1 - p for b in bits)
        prev, fill = -1, 0
        for j, b in enumerate(bits):
            if b:
                fill += (j - prev - 1) >> r
                prev = j
        want += prob * fill
    assert expected_fill(s, p, r) == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_expected_fillers_closed_form_matches_the_sum():
    # long fibers use a closed form; check it against the plain sum past the switch point
    s, p, r = 20000, 0.01, 1
    period = 2 ** r
    u = np.arange(1, (s - 1) // period + 1, dtype=np.float64)
    direct = p * np.sum((1 - p) ** (period * u) * (s - period * u))
    assert expected_fill(s, p, r) == pytest.approx(direct, rel=1e-9)


def test_the_dp_finds_the_smallest_format_of_every_layout():
    rng = np.random.default_rng(0)
    for trial in range(6):
        mask = rng.random((16, 32)) < [0.03, 0.2, 0.5, 0.8, 0.1, 0.4][trial]
        for layout in (("nk", 1, 0), ("nk", 2, 0), ("kn", 2, 0), ("nk", 3, 4), ("kn", 3, 2), ("nk", 3, 8)):
            for tile in ((16, 32), (8, 16), (16, 8)):
                stats = exact_stats(mask, *tile, layout)
                if stats is None:
                    continue
                sz = _Sizer(stats, 8)
                brute = min((sz.size(p), p) for p in itertools.product(PRIMITIVES, repeat=layout[1]) if p[-1] != "UOP")
                bits, prims, _ = sz.best(PRIMITIVES)
                assert bits == pytest.approx(brute[0], rel=1e-12)
                assert sz.size(prims) == pytest.approx(brute[0], rel=1e-12)


# ---- traffic: nmx.hw.accel's model with an explicit tile ------------------------------------------------


@pytest.mark.parametrize("df", range(3))
def test_traffic_equals_accel_evaluate(df):
    spec = load_accel(DESIGN)
    mach = Machine.from_spec(spec)
    m, n, k = 96, 256, 512
    case = layer_cases(gemm_problem(m, n, k, weights="int8", activations="int8"), [0.7])[0]
    wb = format_size("nk:U-B", (n, k), density=case.density, value_bits=8).nbytes
    g = gemm_problem(m, n, k, weights="int8", activations="int8", weight_bytes=wb)
    checked = 0
    for lo, (tm, tn, tk) in itertools.product(range(6), ((16, 64, 128), (96, 256, 64), (32, 32, 512), (96, 256, 512))):
        p = spec.params()
        p.update(dataflow=df, loop_order=lo, weights_format=0, tile_m=tm, tile_n=tn, tile_k=tk)  # 0 = auto
        r = evaluate(p, g)
        ours = memory_traffic(case, mach, tm, tn, tk, df, lo, wb, True)
        assert bool(ours["feasible"]) == bool(r.feasible)
        if not r.feasible:
            continue
        checked += 1
        assert float(ours["dram_bytes"]) == pytest.approx(float(r.dram_bytes), rel=1e-12)
        assert float(ours["glb_bytes"]) == pytest.approx(float(r.glb_bytes), rel=1e-12)
        e = float(r.energy_breakdown["dram"] + r.energy_breakdown["glb"])
        assert float(ours["energy_pj"]) == pytest.approx(e, rel=1e-9)
    assert checked >= 6


def test_a_format_read_against_its_order_costs_a_dense_copy():
    mach = Machine.from_spec(load_accel(DESIGN))
    case = layer_cases(gemm_problem(64, 256, 256, weights="int8", activations="int8"), [0.9])[0]
    wb = format_size("nk:UOP-CP", (256, 256), density=0.1, value_bits=8).nbytes
    a = memory_traffic(case, mach, 64, 64, 64, 0, 0, wb, True)
    b = memory_traffic(case, mach, 64, 64, 64, 0, 0, wb, False)
    assert float(b["dram_bytes"]) == float(a["dram_bytes"])  # DRAM still moves the compressed tile
    assert float(b["glb_bytes"]) > float(a["glb_bytes"]) and float(b["energy_pj"]) > float(a["energy_pj"])


# ---- the pruned search finds the exhaustive optimum -----------------------------------------------------


def _random_case(rng: np.random.Generator, exact: bool) -> tuple[LayerCase, Machine, Space]:
    n = int(rng.choice([32, 48, 64, 96]))
    k = int(rng.choice([32, 64, 80, 128]))
    m = int(rng.choice([1, 7, 64, 200]))
    d = float(rng.choice([0.05, 0.2, 0.45, 0.7, 0.95]))
    vb = int(rng.choice([4, 8, 16]))
    mask = rng.random((n, k)) < d if exact else None
    case = LayerCase("rand", m, n, k, float(mask.mean()) if exact else d, vb, 8, m * k * 1.0, 0.0, 16, 1.0, mask)
    spec = load_accel(DESIGN)
    mach = Machine.from_spec(spec)
    glb = float(rng.choice([2048, 8192, 65536]))
    mach = Machine(mach.name, int(rng.choice([4, 16])), int(rng.choice([4, 16])), 1, 8, 8, False, glb,
                   float(rng.choice([4.0, 13.0])), float(rng.choice([0.05, 0.4, 2.0])))
    blocks = tuple(sorted(rng.choice([2, 4, 8, 16], size=2, replace=False).tolist()))
    prims = tuple(p for p in PRIMITIVES if p in ("U", "CP") or rng.random() < 0.7)
    dfs = [DATAFLOWS, ("input",), ("weight", "input"), ("output",)][int(rng.integers(4))]
    space = Space(primitives=prims, blocks=blocks, dataflows=dfs, tiles_n=tuple(t for t in (8, 16, n) if n % t == 0),
                  tiles_k=tuple(t for t in (8, 16, 32, k) if k % t == 0))
    return case, mach, space


@pytest.mark.parametrize("seed", range(8))
def test_search_equals_exhaustive_on_small_spaces(seed):
    rng = np.random.default_rng(100 + seed)
    case, mach, space = _random_case(rng, exact=seed % 2 == 1)
    s = search(case, mach, space)
    e = exhaustive(case, mach, space)
    assert s.point.energy_pj == pytest.approx(e.point.energy_pj, rel=1e-9)
    # the pruned search's format is one of the optimal ones (dataflow ties may differ in where they sit)
    assert e.per_format[s.point.format].energy_pj == pytest.approx(e.point.energy_pj, rel=1e-9)
    assert s.energy_evaluations < e.energy_evaluations


def test_an_input_stationary_array_gets_a_column_major_format():
    # W enters an input-stationary array through its rows (one k per row): kn formats stream, nk ones do not
    mach = Machine.from_spec(load_accel(DESIGN))
    case = layer_cases(gemm_problem(256, 512, 512, weights="int8", activations="int8"), [0.9])[0]
    s = search(case, mach, Space(dataflows=("input",)))
    assert s.point.format.startswith("kn") and s.point.concordant
    assert search(case, mach, Space(dataflows=("weight",))).point.format.startswith("nk")


# ---- properties ----------------------------------------------------------------------------------------


def _monotone_formats() -> list[FiberFormat]:
    # UOP right above an RLE innermost rank is left out: its offsets' width follows the innermost entry
    # count, and the run width chosen for the rank alone may add fillers when a nonzero goes away
    out = []
    for f in enumerate_formats(blocks=(2, 4)):
        if len(f.prims) >= 2 and f.prims[-2] == "UOP" and f.prims[-1] == "RLE":
            continue
        out.append(f)
    return out


MONOTONE = _monotone_formats()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.sampled_from([(8, 8), (8, 4), (4, 8)]))
def test_fewer_nonzeros_never_more_bits(seed, d, keep, tile):
    rng = np.random.default_rng(seed)
    a = rng.random((8, 16)) < d
    b = a & (rng.random(a.shape) < keep)  # a subset of a's nonzeros
    for f in MONOTONE:
        if f.shapes(*tile) is None:
            continue
        big = format_size(f, (8, 16), mask=a, tile=tile, value_bits=8).bits
        small = format_size(f, (8, 16), mask=b, tile=tile, value_bits=8).bits
        assert small <= big, (f.name, small, big)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.sampled_from([(64, 64), (16, 64), (64, 8)]))
def test_more_sparsity_never_more_expected_bits(d1, d2, tile):
    lo, hi = sorted((d1, d2))
    for f in MONOTONE:
        if f.shapes(*tile) is None:
            continue
        a = format_size(f, (64, 128), density=lo, tile=tile, value_bits=8).bits
        b = format_size(f, (64, 128), density=hi, tile=tile, value_bits=8).bits
        assert a <= b * (1 + 1e-12), (f.name, lo, hi, a, b)


# ---- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, phrase", [("nk:UOP-XYZ", "unknown primitive 'XYZ'"), ("nk:CP-UOP", "innermost"),
                                          ("zz:U-B", "order"), ("nk:U-B-CP", "block"), ("nk/x:U-B-CP", "whole"),
                                          ("bitmap2", "ORDER")])
def test_bad_formats_are_refused(text, phrase):
    with pytest.raises(InputError, match=phrase):
        FiberFormat.parse(text)


def test_classic_names_parse():
    assert FiberFormat.parse("csr").name == "nk:UOP-CP" and FiberFormat.parse("CSC").name == "kn:UOP-CP"


BASE = ["hw", "format-search", "--design", str(DESIGN), "--gemm", "1,64,128", "--weights", "int8"]


@pytest.mark.parametrize("extra, phrase", [
    (["--sparsity", "1.0"], "[0, 1)"), (["--sparsity", "-0.1"], "[0, 1)"), (["--sparsity", "abc"], "not a number"),
    (["--sparsity", "150%"], "[0, 1)"), (["--sparsity", "0.5", "--primitives", "U,FOO"], "unknown primitive 'FOO'"),
    (["--sparsity", "0.5", "--dataflows", "ws,xs"], "unknown dataflow"),
    ([], "--sparsity"),  # the GEMM has no sparsity of its own
])
def test_cli_bad_input_is_one_line_and_exit_2(extra, phrase, capsys, monkeypatch):
    code, out, err = run_cli(BASE + extra, capsys, monkeypatch)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and phrase in err, err


def test_cli_refuses_a_design_that_does_not_parse(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pe_array: {rows: 16\n  cols: [\n")
    args = ["hw", "format-search", "--design", str(bad), "--gemm", "1,64,128", "--sparsity", "0.5"]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "bad.yaml" in err, err
    bad.write_text("pe_array: {rows: 0, cols: 4}\nmemory: []\n")
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and "bad.yaml" in err, err


def test_cli_runs_and_writes_json(tmp_path, capsys, monkeypatch):
    out = tmp_path / "fs.json"
    code, text, err = run_cli(BASE + ["--activations", "int8", "--sparsity", "0.5,90%", "--exhaustive", "--out",
                                      str(out), "--json"], capsys, monkeypatch)
    assert code == 0, err
    res = json.loads(text)
    assert json.loads(out.read_text()) == res
    assert [r["sparsity"] for r in res["rows"]] == pytest.approx([0.5, 0.1 * 9])
    assert res["summary"]["all_same_energy"] is True
    for r in res["rows"]:
        assert r["best"]["memory_energy_pj"] <= min(f["memory_energy_pj"] for f in r["fixed"].values()) * (1 + 1e-12)


def test_cli_bad_out_suffix_leaves_nothing(tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(BASE + ["--sparsity", "0.5", "--out", str(tmp_path / "x.txt")], capsys, monkeypatch)
    assert code == 2 and ".json" in err and list(tmp_path.iterdir()) == []
