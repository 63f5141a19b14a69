"""`nmx explore --search`: the points of `nmx search-precision` joined with the designs' cost. Oracles: each row's
cost equals pricing the same recipe directly (nmx.hw.workload.llm_workload + Target.cost); the Pareto flags equal a
brute-force front over the rows; the bit-serial design's linears get faster with fewer mantissa bits (cycles =
bits + 1 per MAC sequence, tests/hw/test_anda.py)."""

import json
from pathlib import Path

import pytest
import yaml

from nmx.hw.accel_spec import load_accel
from nmx.hw.explore import FRONTS, read_search, search_points, search_vs_cost
from nmx.hw.targets import get_target
from nmx.hw.workload import PRESETS, Compression, llm_workload
from tests.cli import run_cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "hw"
BITSERIAL, FP16 = EXAMPLES / "anda_16x16_bitserial.yaml", EXAMPLES / "anda_fp16_int4_16x16.yaml"
TYPES = ["qkv", "o", "up", "down"]


def _summary(folder: Path, points, chosen, model="smollm2-135m", tolerance=0.01):
    """A summary.json shaped as `nmx search-precision --out` writes it (only what the join reads, plus a little)."""
    folder.mkdir(parents=True)
    rec = {"kind": "precision-search", "mode": "greedy", "model": model, "group": 64, "weights": "int4_g128",
           "types": TYPES, "tolerance": tolerance, "reference_ppl": 20.0,
           "points": [{"lengths": list(ls), "bops": 1.0, "quality": q, "accepted": q <= 20.2, "iteration": i + 1,
                       "varied": None} for i, (ls, q) in enumerate(points)],
           "chosen_lengths": dict(zip(TYPES, chosen, strict=True)),
           "recipe": {"model": model, "quantization": {"weights": "int4_g128", "activations": {
               t: f"bfp_m{m}_g64" for t, m in zip(TYPES, chosen, strict=True)}}}}
    (folder / "summary.json").write_text(json.dumps(rec))
    return folder


POINTS = [([4, 4, 4, 4], 25.0), ([6, 6, 6, 6], 20.5), ([7, 7, 7, 7], 20.1), ([7, 7, 6, 7], 20.15),
          ([7, 6, 6, 7], 20.3), ([8, 8, 8, 8], 20.02)]


def _dominated(i, rows, cols):
    return any(all(rows[j][c] <= rows[i][c] for c in cols) and any(rows[j][c] < rows[i][c] for c in cols)
               for j in range(len(rows)) if j != i)


def test_rows_are_the_direct_pricing_and_fronts_are_brute_force(tmp_path):
    s = _summary(tmp_path / "search", POINTS, [7, 7, 6, 7])
    res = search_vs_cost([s], [load_accel(BITSERIAL), load_accel(FP16)], phase="prefill", tokens=256)
    rows = res["rows"]
    assert len(rows) == 2 * len(POINTS) and [r["target"] for r in rows[:2]] == ["anda-16x16-bitserial",
                                                                                "anda-fp16-int4-16x16"]
    for r in rows:
        acts = {t: f"bfp_m{r['lengths'][t]}_g64" for t in TYPES}
        w = llm_workload(PRESETS["smollm2-135m"], "prefill", tokens=256,
                         compression=Compression(weights="int4_g128", activations=acts))
        c = get_target(load_accel(BITSERIAL if r["target"] == "anda-16x16-bitserial" else FP16)).cost(w)
        assert r["latency_s"] == pytest.approx(c.latency_s) and r["energy_pj"] == pytest.approx(c.energy_pj)
        assert r["perplexity_kind"] == "calibration" and r["search"] == "search"
    assert [r["chosen"] for r in rows] == [ls == [7, 7, 6, 7] for ls, _ in POINTS for _ in range(2)]
    for key, cols in FRONTS.items():
        assert [r[key] for r in rows] == [not _dominated(i, rows, cols) for i in range(len(rows))], key
    assert res["pareto"] == sorted((i for i, r in enumerate(rows) if r["pareto"]), key=lambda i: rows[i]["latency_s"])
    bs = {r["label"]: r for r in rows if r["target"] == "anda-16x16-bitserial"}
    assert bs["4/4/4/4"]["linears_latency_s"] < bs["6/6/6/6"]["linears_latency_s"] < bs["8/8/8/8"]["linears_latency_s"]


def test_point_selection_and_several_searches(tmp_path):
    a = _summary(tmp_path / "tol0.01", POINTS, [7, 7, 6, 7])
    b = _summary(tmp_path / "tol0.001", POINTS[:3], [8, 8, 8, 8], tolerance=0.001)
    rec, name = read_search(b / "summary.json")
    assert name == "tol0.001" and [p["label"] for p in search_points(rec, name, "accepted")] == ["7/7/7/7"]
    res = search_vs_cost([a, b], [load_accel(BITSERIAL)], which="chosen")
    assert [(r["search"], r["label"]) for r in res["rows"]] == [("tol0.01", "7/7/6/7")]  # b's chosen: never tried
    assert [m["search"] for m in res["searches"]] == ["tol0.01", "tol0.001"]


def test_cli_on_a_real_tiny_search(tmp_path, tiny_model_dir, text_file, capsys, monkeypatch):
    cal = tmp_path / "calib.txt"
    cal.write_text("Jackdaws love my big sphinx of quartz. The five boxing wizards jump quickly. " * 20)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "device": "cpu", "calibration": {"text": str(cal), "samples": 1, "seq_len": 48},
        "evaluation": {"text": str(text_file), "seq_len": 64, "max_windows": 1},
        "quantization": {"weights": "int4_g32", "activations": "bfp_m8_g32"}}))
    out = tmp_path / "search"
    code, _, err = run_cli(["search-precision", str(recipe), "--tolerance", "0.05", "--max-iter", "3", "--out",
                            str(out)], capsys, monkeypatch)
    assert code == 0, err
    png = tmp_path / "front.png"
    code, stdout, err = run_cli(["explore", "--search", str(out), "--accel", str(BITSERIAL), "--accel", str(FP16),
                                 "--phase", "decode", "--context", "32", "--plot", str(png), "--json"],
                                capsys, monkeypatch)
    assert code == 0, err
    res = json.loads(stdout)
    summary = json.loads((out / "summary.json").read_text())
    assert len(res["rows"]) == 2 * len(summary["points"]) == 6  # the shape comes from the tiny model's folder
    assert res["searches"][0]["shape"] == "llama" and res["searches"][0]["weights"] == "int4_g32"  # its config's
    assert [r["perplexity"] for r in res["rows"][::2]] == [p["quality"] for p in summary["points"]]
    assert res["pareto"] and png.read_bytes()[:4] == b"\x89PNG"
    code, stdout, err = run_cli(["explore", "--search", str(out / "summary.json"), "--target", "h100-sxm"],
                                capsys, monkeypatch)
    assert code == 0, err
    assert "Pareto front" in stdout and "h100-sxm" in stdout  # a GPU: latency only


@pytest.mark.parametrize("case, phrase", [
    ("no summary", "no summary.json"),
    ("not a search", "not a precision search record"),
    ("bad lengths", "'lengths' must list 4"),
    ("with results", "--search and --results"),
    ("no design", "--search needs the designs"),
    ("with sweep", "drop --sweep"),
    ("bad points", "--points must be one of"),
    ("two designs without search", "several --accel/--target designs are for --search"),
    ("unknown model", "give --model"),
    ("with formats", "drop --weights"),
])
def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch, case, phrase):
    s = _summary(tmp_path / "s", POINTS[:2], [6, 6, 6, 6], model="no-such-model" if case == "unknown model"
                 else "smollm2-135m")
    rec = json.loads((s / "summary.json").read_text())
    if case == "no summary":
        (s / "summary.json").unlink()
    elif case == "not a search":
        (s / "summary.json").write_text(json.dumps({**rec, "kind": "run"}))
    elif case == "bad lengths":
        rec["points"][1]["lengths"] = [6, 6]
        (s / "summary.json").write_text(json.dumps(rec))
    args = {"with results": ["--results", str(s), "--accel", str(BITSERIAL)], "no design": [],
            "with sweep": ["--accel", str(BITSERIAL), "--sweep", "pe_rows=8,16"],
            "bad points": ["--accel", str(BITSERIAL), "--points", "best"],
            "with formats": ["--accel", str(BITSERIAL), "--activations", "int8"]}.get(case, ["--accel", str(BITSERIAL)])
    cmd = ["explore", *(["--search", str(s)] if case != "two designs without search" else
                        ["--results", str(s), "--accel", str(FP16)]), *args]
    plot = tmp_path / "p.png"
    code, _, err = run_cli([*cmd, "--plot", str(plot)], capsys, monkeypatch)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert phrase in err
    assert not plot.exists()
