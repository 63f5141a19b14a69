"""The report without Ray: Pareto fronts against a brute-force oracle, the hardware block read in
the shapes nmx run writes, and a whole report written from made-up outcomes."""

import json
import random
from pathlib import Path

import pytest

from nmx.sweep.driver import Outcome
from nmx.sweep.report import hardware_metrics, pareto, write_report
from nmx.sweep.spec import load_sweep


def _dominated(i, pts):
    x, y = pts[i]
    return any((a <= x and b <= y) and (a < x or b < y) for a, b in pts)


@pytest.mark.parametrize("seed", range(20))
def test_pareto_front_is_the_undominated_points(seed):
    rnd = random.Random(seed)
    pts = [(rnd.choice([1, 2, 3, 4.5]), rnd.choice([10, 11, 12.5, 13])) for _ in range(rnd.randint(1, 12))]
    front = pareto(pts)
    oracle = {i for i in range(len(pts)) if not _dominated(i, pts)}
    # duplicates of a front point: the oracle keeps all copies, the front one of them
    assert {pts[i] for i in front} == {pts[i] for i in oracle}
    assert [pts[i][0] for i in front] == sorted(pts[i][0] for i in front)


COSTS = {"default": True, "targets": [{"name": "h200", "kind": "gpu", "peak_flops": {"bf16": 1e15}}],
         "phases": [{"phase": "prefill", "batch": 1, "tokens": 64}],
         "costs": [{"target": "h200", "phase": "prefill", "batch": 1, "tokens": 64, "context": 0, "latency_s": 0.5,
                    "tokens_per_s": 128.0, "energy_pj": None, "bytes": 10.0, "bound": "memory",
                    "ops": [{"name": "q_proj", "latency_s": 0.1}]},
                   {"target": "nm24", "phase": "decode", "batch": 16, "tokens": 1, "context": 64,
                    "latency_s": 0.25, "tokens_per_s": 64.0, "energy_pj": 3e9, "bytes": 5.0, "bound": "compute"}]}


def test_hardware_block_per_target_and_phase():
    got = hardware_metrics(COSTS)
    assert got == {("h200", "prefill L=64 B=1"): {"latency_s": 0.5, "tokens_per_s": 128.0, "energy_pj": None,
                                                   "bytes": 10.0, "bound": "memory"},
                   ("nm24", "decode C=64 B=16"): {"latency_s": 0.25, "tokens_per_s": 64.0, "energy_pj": 3e9,
                                                  "bytes": 5.0, "bound": "compute"}}
    nested = {"h100": {"decode": {"latency_s": 1.0, "bound": "memory"}}}
    assert hardware_metrics(nested) == {("h100", "decode"): {"latency_s": 1.0, "bound": "memory"}}
    assert hardware_metrics(None) == {}


def test_report_from_outcomes(write_sweep, tmp_path):
    sweep = load_sweep(write_sweep("grid:\n  sparsity.pattern: ['2:4', '4:8']\npoints:\n  - {name: 'a|b'}\n"))
    a, b, c = sweep.points
    result = {"perplexity": 12.5, "bits_per_weight": 8.75, "weight_sparsity": 0.5, "kv_bytes_per_token": 256,
              "eval_tokens": 100, "wall_s": 1.0, "hardware": COSTS,
              "model": {"notes": ["dense baseline: dequantized Q4_1"]},
              "protocol": {"text": "t", "windows": 1, "windows_available": 3, "seq_len": 64, "tokens_scored": 63}}
    cheaper = {**result, "perplexity": 11.0, "bits_per_weight": 9.0}
    outcomes = [Outcome(a, "done", result), Outcome(b, "cached", cheaper),
                Outcome(c, "failed", error="InputError: no", traceback="Traceback ...")]
    files = write_report(tmp_path / "r", sweep, outcomes, wall_s=3.0)
    assert {"table.csv", "table.md", "report.html", "summary.json", "sweep.yaml"} <= set(files)
    plots = {f for f in files if f.startswith("plots/")}
    assert {"plots/ppl_vs_bits_per_weight.png", "plots/ppl_vs_h200_prefill_L_64_B_1_latency_s.png",
            "plots/ppl_vs_nm24_decode_C_64_B_16_energy_pj.png"} <= plots
    assert "plots/ppl_vs_h200_prefill_L_64_B_1_energy_pj.png" not in plots  # no energy for that target
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["pareto"]["ppl_vs_bits_per_weight.png"] == [1, 2]
    assert [p["status"] for p in summary["points"]] == ["done", "cached", "failed"]
    md = (tmp_path / "r" / "table.md").read_text()
    assert "a\\|b" in md and "InputError: no" in md and "dense baseline" in md
    html = (tmp_path / "r" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(plots) and "a|b" in html
    assert "<script" not in html and "http" not in html.split("<h2>Sweep file</h2>")[0]  # self-contained


def test_example_sweeps_load():
    examples = sorted(Path(__file__).resolve().parents[2].joinpath("examples", "sweeps").glob("*.yaml"))
    assert examples
    for path in examples:
        sweep = load_sweep(path)
        assert len(sweep.points) >= 2 and all(p.recipe.hardware is not None for p in sweep.points), path
