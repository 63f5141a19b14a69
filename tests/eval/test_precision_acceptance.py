"""benchmarks/precision_acceptance.py (issue 14, acceptance 1-4) in its --tiny CPU mode: the JSON's structure and
its internal consistency. Oracles: BOPs = MACs x weight bits x activation bits, so with one activation format on
every linear BOPs(format) / BOPs(A16) = bits(format) / 16 and bits(bfp_mM_g64) = 1 + M + 8/64; exhaustive search is
optimal on its grid by definition, so the greedy point (on the grid) can never be cheaper among accepted points; the
same lengths evaluated twice on CPU give the same perplexity."""

import json
import math
from pathlib import Path

import pytest

from tests.scripts import benchmark_script

TYPES = ("qkv", "o", "up", "down")


def _script():
    return benchmark_script("precision_acceptance")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("acceptance") / "tiny.json"
    _script().main(["--out", str(out), "--tiny"])
    return json.loads(out.read_text()), out  # what a reader gets


def test_written_json_is_the_record_and_nothing_was_skipped(tiny):
    rec, out = tiny
    assert rec["wall_s"] > 0 and rec["skipped"] == []
    for key in ("command", "date", "machine", "config", "model", "calibration", "formats", "search", "search_cost",
                "sensitivity", "codesign", "answer"):
        assert key in rec, key
    assert rec["calibration"]["same_windows_as_whole_text"] is True
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_searches_are_consistent(tiny):
    rec, out = tiny
    a16 = rec["formats"]["rows"]["A16"]
    assert set(rec["search"]) == {"0.001", "0.01"}
    for tol, s in rec["search"].items():
        assert s["tolerance"] == float(tol)
        assert s["bops_reduction_vs_a16"] == pytest.approx(s["a16_bops_per_token"] / s["chosen_bops_per_token"])
        # the search's BOPs and `nmx run`'s result.json bops block agree (two code paths)
        assert s["a16_bops_per_token"] == pytest.approx(a16["bops_per_token"])
        assert s["evaluation"]["bops_per_token"] == pytest.approx(s["chosen_bops_per_token"])
        assert all(1 <= s["chosen_lengths"][t] <= 15 for t in TYPES)
        assert s["iterations"] == len(s["points"]) <= s["max_iter"] and s["evaluations"] == s["iterations"] + 1
        accepted = [p for p in s["points"] if p["accepted"]]
        assert all(p["calibration_ppl"] <= s["calibration_limit"] for p in accepted)
        assert s["calibration_limit"] == pytest.approx(s["calibration_ppl_a16"] * (1 + float(tol)))
        cheapest = min(accepted, key=lambda p: p["bops"])
        assert cheapest["lengths"] == [s["chosen_lengths"][t] for t in TYPES]
        assert math.isfinite(s["evaluation"]["perplexity"]) and s["wall_s"] > 0
        summary = json.loads((Path(s["summary"]) / "summary.json").read_text())  # as `search-precision --out`
        assert summary["kind"] == "precision-search" and summary["chosen_lengths"] == s["chosen_lengths"]


def test_format_table_bops_follow_the_bits(tiny):
    rec, _ = tiny
    rows = rec["formats"]["rows"]
    assert list(rows) == ["A16", "A8 (int8 per token)", "MXFP8", "MXFP4", "NVFP4"] + [f"BFP m{m}" for m in range(4, 9)]
    a16 = rows["A16"]["bops_per_token"]
    for r in rows.values():
        assert r["bops_reduction_vs_a16"] == pytest.approx(a16 / r["bops_per_token"])
        assert r["bops_per_token"] / a16 == pytest.approx(r["bits_per_activation_element"] / 16)
        assert r["windows"] == rec["config"]["eval_windows"] and math.isfinite(r["perplexity"])
    for m in range(4, 9):
        assert rows[f"BFP m{m}"]["bits_per_activation_element"] == pytest.approx(1 + m + 8 / 64)
    assert [rows[k]["bits_per_activation_element"] for k in ("A8 (int8 per token)", "MXFP8", "MXFP4", "NVFP4")] == \
        pytest.approx([8, 8.25, 4.25, 4.5])


def test_exhaustive_is_never_beaten_by_the_greedy_point(tiny):
    sc = tiny[0]["search_cost"]
    grid = sc["grid"]
    assert sc["a16_bops_per_token"] == pytest.approx(tiny[0]["formats"]["rows"]["A16"]["bops_per_token"])
    assert sc["exhaustive"]["evaluations"] == len(sc["table"]) == len(grid) ** 4
    ok = [r for r in sc["table"] if r["accepted"]]
    best = sc["exhaustive"]["best"]
    assert best["bops"] == min(r["bops"] for r in ok) and best["accepted"]
    g = sc["greedy"]
    assert all(m in grid for p in g["points"] for m in p["lengths"])
    assert 1 <= g["evaluations"] == len(g["points"]) <= tiny[0]["config"]["max_iter"]
    assert best["bops"] <= g["best"]["bops"]
    assert sc["agree"] == (best["bops"] == g["best"]["bops"])
    assert g["max_rel_diff_vs_exhaustive_same_points"] == 0.0  # deterministic evaluation on CPU
    assert 1 <= sc["exhaustive"]["sorted_scan_evaluations"] <= len(sc["table"])
    assert sc["evaluations_ratio"] == pytest.approx(len(sc["table"]) / g["evaluations"])


def test_codesign_rows_sit_on_their_designs(tiny):
    rec, _ = tiny
    mod = _script()
    co = rec["codesign"]
    labels = set(rec["formats"]["rows"]) | {s["evaluation"]["label"] for s in rec["search"].values()}
    for phase in ("decode", "prefill"):
        rows = co["phases"][phase]["rows"]
        assert {r["label"] for r in rows} == labels
        for r in rows:
            assert r["target"] == co["designs"][mod.design_of(r["activations"])]
            assert r["latency_s"] > 0 and r["energy_pj"] > 0 and 0 < r["linears_latency_s"] <= r["latency_s"]
        a16 = next(r for r in rows if r["label"] == "A16")
        assert a16["target"] == "anda-fp16-int4-16x16" and a16["speedup_vs_a16_fp16"] == 1.0
        assert set(co["phases"][phase]["pareto"]) <= labels and co["phases"][phase]["pareto"]
        assert len(co["phases"][phase]["every_point_on_every_design"]) == len(labels) * len(co["designs"])
    assert set(co["searched_vs_paper"]) == {"0.001", "0.01"}
    ex = co["explore_search"]
    assert ex["rows"] == 2 * sum(s["iterations"] for s in rec["search"].values()) and ex["pareto"]


def test_answer_follows_its_sources(tiny):
    ans = tiny[0]["answer"]
    assert set(ans["sources"]) == {"chosen_lengths_tol0.001", "chosen_lengths_tol0.01", "sensitivity_shortest_passing"}
    for src in ans["sources"].values():
        L = src["lengths"]
        assert src["qkv_most"] == (L["qkv"] >= max(L["o"], L["up"], L["down"]))
        assert src["down_fewest"] == (L["down"] <= min(L["qkv"], L["o"], L["up"]))
    v = [s["qkv_most"] for s in ans["sources"].values()]
    assert ans["qkv_needs_most_bits"] == (True if all(v) else False if not any(v) else "mixed")


def test_a_budget_too_small_skips_and_records(tmp_path):
    out = tmp_path / "cut.json"
    rec = _script().main(["--out", str(out), "--tiny", "--budget-s", "0", "--items", "1,2,4,sensitivity"])
    on_disk = json.loads(out.read_text())
    assert on_disk["skipped"] == rec["skipped"] and len(rec["skipped"]) == 2 + 9 + 1 + 1
    assert all("budget" in s["skipped"] for s in rec["search"].values())
    assert "skipped" in rec["search_cost"] and "estimate_s" in rec["sensitivity"]
    assert list(rec["formats"]["rows"])[0] == "A16" and "perplexity" in rec["formats"]["rows"]["A16"]
    assert rec["answer"]["qkv_needs_most_bits"] is None
