"""benchmarks/activation_sparsity_acceptance.py (issue 15, acceptance item 1) on the tiny Llama: one `nmx run` per
row, a summary whose numbers are those of the rows' result.json, and a second call that keeps what is done."""

import json

import pytest

from tests.scripts import benchmark_script


def _script():
    return benchmark_script("activation_sparsity_acceptance")


def test_rows_summary_and_continuation(tmp_path, tiny_model_dir, capsys):
    args = ["--out", str(tmp_path / "as"), "--model", str(tiny_model_dir), "--device", "cpu", "--windows", "1",
            "--seq-len", "32", "--calib-samples", "2", "--calib-seq-len", "32", "--rows", "dense,teal0.4"]
    script = _script()
    script.main(args)
    summary = json.loads((tmp_path / "as" / "summary.json").read_text())
    assert [s["row"] for s in summary] == ["dense", "teal0.4"]
    dense, teal = summary
    for s in summary:
        result = json.loads((tmp_path / "as" / s["row"] / "result.json").read_text())
        assert s["perplexity"] == result["perplexity"]
        assert set(s["costs"]) == {f"{t}@{b}" for t in ("h200", "dense-16x16-ws", "dense-16x16-ws-skip")
                                   for b in (1, 4, 16)}
    assert dense["sparsity"] == 0.0 and teal["sparsity"] == pytest.approx(0.4, abs=0.1)
    # zero inputs: fewer weight columns read at batch 1, less energy where the accelerator skips them
    assert teal["costs"]["h200@1"]["bytes"] < dense["costs"]["h200@1"]["bytes"]
    assert teal["costs"]["dense-16x16-ws-skip@1"]["energy_pj"] < dense["costs"]["dense-16x16-ws-skip@1"]["energy_pj"]
    assert all(teal["union_density"][str(b)] <= teal["union_density"][str(2 * b)] for b in (1, 2, 4, 8))
    assert "| teal0.4 |" in (tmp_path / "as" / "summary.md").read_text()
    capsys.readouterr()
    script.main(args)  # everything is there: kept, not run again
    assert capsys.readouterr().out.count(": kept (") == 2


def test_an_unknown_row_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _script().main(["--out", str(tmp_path / "x"), "--rows", "dense,teal0.9"])
    assert e.value.code == 2 and "unknown rows ['teal0.9']" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
