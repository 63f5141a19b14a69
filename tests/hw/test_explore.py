"""Design-space exploration: Pareto front against brute force, sweeps, the `nmx explore` command."""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmx.errors import InputError
from nmx.hw.accel import gemm_problem
from nmx.hw.accel_spec import load_accel
from nmx.hw.explore import accuracy_vs_cost, pareto_mask, parse_sweeps, sweep
from tests.cli import run_cli as _main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "hw"


def brute_force_front(obj):
    """O(N^2) reference: i is on the front unless some j is <= everywhere and < somewhere, or an
    identical j comes first (ties keep the first); non-finite rows never are."""
    n = len(obj)
    out = np.zeros(n, bool)
    for i in range(n):
        if not np.all(np.isfinite(obj[i])):
            continue
        dom = False
        for j in range(n):
            if j == i or not np.all(np.isfinite(obj[j])):
                continue
            le, lt = np.all(obj[j] <= obj[i]), np.any(obj[j] < obj[i])
            if le and (lt or j < i):
                dom = True
                break
        out[i] = not dom
    return out


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(*[st.sampled_from([1.0, 2.0, 3.0, 5.0, np.inf])] * 3), min_size=1, max_size=40),
       st.sampled_from([3, 7, 1024]))
def test_pareto_matches_brute_force(points, chunk):
    obj = np.array(points, dtype=float)
    assert np.array_equal(pareto_mask(obj, chunk=chunk), brute_force_front(obj))


def test_pareto_random_large_against_brute_force():
    rng = np.random.default_rng(0)
    obj = rng.random((400, 3))
    assert np.array_equal(pareto_mask(obj, chunk=64), brute_force_front(obj))


def test_parse_sweeps():
    assert parse_sweeps(["pe_rows=8,16", "nm=none,1:4|2:4"]) == {"pe_rows": ["8", "16"], "nm": ["none", "1:4|2:4"]}
    for bad in (["pe_rows"], ["pe_rows="], ["a=1", "a=2"]):
        with pytest.raises(InputError):
            parse_sweeps(bad)


def test_sweep_grid_and_front():
    spec = load_accel(EXAMPLES / "uspe_16x16_ws.yaml")
    g = gemm_problem(16, 1024, 1024, weights="int8", activations="int8", pattern="2:4")
    ex = sweep(spec, {"pe_rows": ["8", "16", "32"], "glb_kb": ["64", "256"], "nm": ["none", "2:4"]}, g)
    assert ex.n_points == 12 and ex.pareto.size >= 1
    rows = ex.rows(ex.pareto)
    assert all(set(r) >= {"pe_rows", "glb_kb", "nm", "latency_s", "energy_pj", "area_mm2"} for r in rows)
    # every front point is non-dominated among all points (brute force)
    obj = np.stack([ex.latency_s, ex.energy_pj, ex.area_um2], 1)
    assert np.array_equal(np.sort(ex.pareto), np.flatnonzero(brute_force_front(obj)))
    # with N:M hardware the 2:4 GEMM is faster at equal rows/buffer
    lat = {(r["pe_rows"], r["glb_kb"], r["nm"]): r["latency_s"] for r in ex.rows(range(12))}
    assert lat[("16", "256", "2:4")] < lat[("16", "256", "none")]




def test_cli_explore_sweep_json_and_plot(tmp_path, capsys, monkeypatch):
    png = tmp_path / "front.png"
    code, out, err = _main(["explore", "--accel", str(EXAMPLES / "dense_16x16_ws.yaml"), "--sweep", "pe_rows=8,16",
                            "--sweep", "dram_gb_s=25,100", "--sweep", "dataflow=ws,os", "--model", "smollm2-135m",
                            "--phase", "decode", "--context", "64", "--plot", str(png), "--json"], capsys, monkeypatch)
    assert code == 0, err
    res = json.loads(out)
    assert res["points"] == 8 and res["pareto_points"] == len(res["pareto"]) >= 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_explore_bad_sweep_is_one_line(capsys, monkeypatch):
    code, _, err = _main(["explore", "--accel", str(EXAMPLES / "dense_16x16_ws.yaml"), "--sweep", "pe_rows=8,-1",
                          "--gemm", "1,64,64"], capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pe_rows" in err


def _fake_result(folder: Path, ppl: float, pattern=None, weights=None):
    folder.mkdir(parents=True)
    recipe = {"model": "smollm2-135m", "sparsity": {"pattern": pattern} if pattern else None,
              "quantization": {"weights": weights} if weights else None}
    (folder / "result.json").write_text(json.dumps({"perplexity": ppl, "recipe": recipe, "layers": {},
                                                    "model": {"name": "smollm2-135m"}}))
    return folder


def test_accuracy_joined_with_cost(tmp_path, capsys, monkeypatch):
    dense = _fake_result(tmp_path / "dense", 17.0)
    sparse = _fake_result(tmp_path / "2of4_int8", 29.0, pattern="2:4", weights="int8")
    spec = load_accel(EXAMPLES / "nm24_16x16_ws.yaml")
    rows = accuracy_vs_cost([dense, sparse], spec, phase="decode", context=64)
    assert [r["perplexity"] for r in rows] == [17.0, 29.0]
    # the pruned + int8 recipe moves fewer weight bytes: cheaper and faster on the same design
    assert rows[1]["energy_pj"] < rows[0]["energy_pj"] and rows[1]["latency_s"] < rows[0]["latency_s"]
    png = tmp_path / "ppl.png"
    code, out, err = _main(["explore", "--results", str(dense), str(sparse), "--accel",
                            str(EXAMPLES / "nm24_16x16_ws.yaml"), "--context", "64", "--plot", str(png), "--json"],
                           capsys, monkeypatch)
    assert code == 0, err
    assert [r["label"] for r in json.loads(out)["rows"]] == ["dense", "2of4_int8"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    code, _, err = _main(["explore", "--results", str(tmp_path / "missing"), "--accel",
                          str(EXAMPLES / "nm24_16x16_ws.yaml")], capsys, monkeypatch)
    assert code == 2 and "result.json" in err
