"""benchmarks/train_acceptance.py (issue 12, acceptance runs 1-5) on the tiny Llama: group 4 trains its plain twin
beside the transposable run, the summary compares only runs of the same step count, a second call continues the
JSON, and the plot mode draws it."""

import json

import pytest

from tests.scripts import benchmark_script


def _script():
    return benchmark_script("train_acceptance")


def test_group_4_trains_its_plain_twin_and_continues(tmp_path, capsys):
    script, out = _script(), tmp_path / "acc.json"
    script.main(["--out", str(out), "--tiny", "--runs", "4", "--steps", "2"])
    record = json.loads(out.read_text())
    assert set(record["baselines"]) == {"dense"}
    assert set(record["runs"]) == {"srste24_plain_kd", "srste24_transposable_kd"}
    assert all(r["steps"] == 2 and r["weight_sparsity"] == pytest.approx(0.5) for r in record["runs"].values())
    ratio = record["summary"]["4_transposable_over_plain_ppl_ratio"]
    assert ratio == (record["runs"]["srste24_transposable_kd"]["final_perplexity"]
                     / record["runs"]["srste24_plain_kd"]["final_perplexity"])
    capsys.readouterr()
    script.main(["--out", str(out), "--tiny", "--runs", "4", "--steps", "2"])  # all there: nothing trained again
    assert "perplexity" not in capsys.readouterr().out.split("{")[0]
    assert len(json.loads(out.read_text())["earlier_calls"]) == 1
    script.main(["--out", str(out), "--plot", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_transposable_is_compared_only_at_equal_steps():
    s = _script()
    run = lambda ppl, steps: {"final_perplexity": ppl, "steps": steps}  # noqa: E731
    record = {"baselines": {"dense": {"perplexity": 20.0}},
              "runs": {"srste24_kd": run(30.0, 1000), "srste24_transposable_kd": run(60.0, 150)}}
    assert s.summarize(record)["4_transposable_over_plain_ppl_ratio"] is None  # 1000 vs 150 steps: not compared
    record["runs"]["srste24_plain_kd"] = run(40.0, 150)
    assert s.summarize(record)["4_transposable_over_plain_ppl_ratio"] == 1.5


def test_gap_recovered_is_in_log_perplexity():
    s = _script()
    record = {"baselines": {"dense": {"perplexity": 20.0}, "oneshot_wanda24": {"perplexity": 200.0}},
              "runs": {"wanda24_kd": {"final_perplexity": 20.0 * 10 ** 0.25, "steps": 1000}}}
    summary = s.summarize(record)
    assert summary["1_wanda24_kd_gap_recovered"] == pytest.approx(0.75)
    assert summary["1_wanda24_kd_meets_70pct"] is True


def test_continuing_a_json_of_other_settings_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "acc.json"
    out.write_text(json.dumps({"config": {"model": "other"}, "baselines": {}, "runs": {}}))
    with pytest.raises(SystemExit) as e:
        _script().main(["--out", str(out), "--tiny", "--runs", "4"])
    assert e.value.code == 2 and "written with other settings" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        _script().main(["--out", str(tmp_path / "missing.json"), "--plot", str(tmp_path / "p.png")])
    assert e.value.code == 2 and not (tmp_path / "p.png").exists()
