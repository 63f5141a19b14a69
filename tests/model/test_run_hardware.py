"""`nmx run` prices hardware through one protocol, on the tiny random Llama.

Oracles: the `hardware` block of result.json must equal pricing the finished result folder again
through another entry point (`llm_workload(RUN_DIR)` + `get_target(...).cost`, and `nmx explore
--results --target`), which reads the recipe and the real per-layer storage back from result.json;
KV bytes are counted by hand for an evict-only cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nmx.hw.targets import get_target
from nmx.hw.workload import llm_workload
from nmx.runner import run
from tests.cli import run_cli
from tests.model.test_pipeline import recipe_for

ROOT = Path(__file__).resolve().parents[2]
GPU_FILE = ROOT / "examples" / "hardware" / "gpu_h100_pcie.yaml"
COST_KEYS = {"target", "kind", "phase", "batch", "tokens", "context", "latency_s", "tokens_per_s", "energy_pj",
             "bytes", "kv_cache_bytes", "bound"}


def test_run_writes_the_hardware_block_and_report_section(tiny_model_dir, text_file, tmp_path):
    hardware = {"targets": ["h200", str(GPU_FILE), "nm24-16x16-ws"], "gpu_impl": "ideal",
                "phases": [{"phase": "prefill", "tokens": 64}, {"phase": "decode", "context": 48, "batch": 3}]}
    kv = {"quant": {"format": "int4", "group": 16, "residual": 8}, "evict": {"method": "streaming", "budget": 40}}
    r = run(recipe_for(tiny_model_dir, text_file, sparsity={"method": "wanda", "pattern": "2:4"},
                       quantization={"weights": "mxfp4"}, kv_cache=kv, hardware=hardware), tmp_path / "run")
    block = json.loads((tmp_path / "run" / "result.json").read_text())["hardware"]
    assert block == json.loads(json.dumps(r["hardware"]))
    assert block["default"] is False and block["workload"]["kv_exact"] is True
    assert "streaming eviction to 40 tokens" in block["workload"]["compression"]
    assert [t["name"] for t in block["targets"]] == ["h200", "h100-pcie", "nm24-16x16-ws"]
    assert [(c["target"], c["phase"]) for c in block["costs"]] == [
        (t, p) for p in ("prefill", "decode") for t in ("h200", "h100-pcie", "nm24-16x16-ws")]
    for c in block["costs"]:
        assert set(c) == COST_KEYS
        assert (c["energy_pj"] is None) == (c["kind"] == "gpu")
        assert c["tokens_per_s"] == pytest.approx(c["batch"] * c["tokens"] / c["latency_s"])
        # the same step priced again from the folder, through the workload reader and the registry
        w = llm_workload(tmp_path / "run", c["phase"], batch=c["batch"], tokens=64, context=c["context"])
        again = get_target(c["target"] if c["kind"] != "gpu" or c["target"] == "h200" else str(GPU_FILE),
                           gpu_impl="ideal").cost(w)
        assert (again.latency_s, again.energy_pj, again.bytes, again.bound) == \
            (c["latency_s"], c["energy_pj"], c["bytes"], c["bound"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Hardware" in report and "| nm24-16x16-ws | accelerator | decode | 3 | 48 |" in report
    assert "the recipe's hardware: section" in report


def test_without_a_section_the_calibrated_gpu_is_priced_at_batch_1_and_16(tiny_model_dir, text_file, tmp_path):
    evict = {"evict": {"method": "streaming", "budget": 24}}  # an evict-only cache (issue 13's crash)
    r = run(recipe_for(tiny_model_dir, text_file, kv_cache=evict), tmp_path / "run")
    block = r["hardware"]
    assert block["default"] is True and [t["name"] for t in block["targets"]] == ["h200"]
    assert block["phases"] == [{"phase": "prefill", "batch": 1, "tokens": 64},
                               {"phase": "decode", "batch": 1, "context": 64},
                               {"phase": "decode", "batch": 16, "context": 64}]
    decode16 = block["costs"][2]
    # by hand: 24 kept tokens x 2 layers x (K, V) x 2 KV heads x head_dim 16 x bf16, for 16 sequences
    assert decode16["kv_cache_bytes"] == 16 * 24 * 2 * 2 * 2 * 16 * 2
    assert "the default (the recipe has no hardware: section)" in (tmp_path / "run" / "report.md").read_text()


def test_explore_results_prices_gpu_targets_too(tiny_model_dir, text_file, tmp_path, capsys, monkeypatch):
    run(recipe_for(tiny_model_dir, text_file), tmp_path / "dense")
    r = run(recipe_for(tiny_model_dir, text_file, quantization={"weights": "mxfp4"}), tmp_path / "mx")
    args = ["explore", "--results", str(tmp_path / "dense"), str(tmp_path / "mx"), "--target", "h200",
            "--context", "64", "--batch", "16", "--plot", str(tmp_path / "p.png"), "--json"]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["target"] == "h200" and doc["kind"] == "gpu" and (tmp_path / "p.png").is_file()
    dense_row, mx_row = doc["rows"]
    assert mx_row["energy_pj"] is None and mx_row["perplexity"] == r["perplexity"]
    same = next(c for c in r["hardware"]["costs"] if c["phase"] == "decode" and c["batch"] == 16)
    assert mx_row["latency_s"] == same["latency_s"]  # explore and run price the same step the same way
    assert mx_row["bytes"] < dense_row["bytes"]
    code, _, err = run_cli(["explore", "--results", str(tmp_path / "mx")], capsys, monkeypatch)
    assert code == 2 and "--accel" in err and err.count("\n") == 1


def test_demo_puts_perplexity_next_to_bits_and_decode_latency(tiny_model_dir, text_file, tmp_path):
    from nmx.demo import ACCEL_TARGET, GPU_TARGET, study

    rows = study(tmp_path / "demo", model=str(tiny_model_dir), eval_text=str(text_file), seq_len=64, windows=1,
                 calib_text=str(text_file), calib_samples=4, calib_seq_len=32)
    for f in ("study.md", "summary.json", "perplexity_vs_bits.png", "perplexity_vs_latency.png"):
        assert (tmp_path / "demo" / f).is_file()
    by = {r["config"]: r for r in rows}
    for r in rows:
        assert set(r["decode"]) == {GPU_TARGET, ACCEL_TARGET}
        assert r["decode"][GPU_TARGET]["energy_pj"] is None and r["decode"][ACCEL_TARGET]["energy_pj"] > 0
    # fewer weight bytes make the step cheaper on both targets (the accelerator also skips 2:4 work)
    for target in (GPU_TARGET, ACCEL_TARGET):
        assert by["2:4 wanda + mxfp4"]["decode"][target]["latency_s"] < by["dense"]["decode"][target]["latency_s"]
    table = (tmp_path / "demo" / "study.md").read_text()
    assert f"| {GPU_TARGET} decode ms | {ACCEL_TARGET} decode ms / mJ |" in table
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary[0]["decode"][ACCEL_TARGET]["latency_s"] == rows[0]["decode"][ACCEL_TARGET]["latency_s"]


def test_nmx_run_prints_one_line_per_priced_step(tiny_model_dir, text_file, tmp_path, capsys, monkeypatch):
    import yaml

    recipe = {"model": str(tiny_model_dir), "evaluation": {"text": str(text_file), "seq_len": 64, "max_windows": 1},
              "hardware": {"targets": ["nm24-16x16-ws"], "phases": [{"phase": "decode", "context": 32, "batch": 2}]}}
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(recipe))
    code, out, err = run_cli(["run", str(f)], capsys, monkeypatch)
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if "nm24-16x16-ws decode @32 x2:" in ln)
    assert " ms, " in line and "tokens/s" in line and "mJ" in line and "-bound)" in line
