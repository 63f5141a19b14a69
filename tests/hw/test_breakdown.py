"""Whole-step breakdown by operation class (nmx.hw.breakdown).

Oracles: the classes add up to the target's own Cost (latency; an accelerator's energy); the
GPU's attention op split by hand (memory-bound decode: KV movement = busy time x KV bytes / op
bytes); monotonicity: with the nonlinear units fixed, the nonlinear share grows as the matrix array
grows (PICACHU's premise); fewer nonlinear lanes never make the step faster."""

from __future__ import annotations

import pytest

from nmx.hw.breakdown import CLASSES, array_sweep, breakdown
from nmx.hw.gpu import PRESETS, op_latency
from nmx.hw.targets import get_target
from nmx.hw.workload import llm_workload
from tests.cli import run_cli


@pytest.mark.parametrize("target", ["h200", "dense-16x16-ws"])
@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_classes_add_up_to_the_target(target, phase):
    b = breakdown("smollm2-135m", target, phase, batch=2, context=1024, tokens=512)
    assert set(b["classes"]) == set(CLASSES)
    assert sum(c["latency_s"] for c in b["classes"].values()) == pytest.approx(b["target_latency_s"], rel=1e-12)
    assert sum(c["share"] for c in b["classes"].values()) == pytest.approx(1.0)
    if target == "dense-16x16-ws":
        c = get_target(target).cost(llm_workload("smollm2-135m", phase, batch=2, context=1024, tokens=512))
        assert b["energy_pj"] == pytest.approx(c.energy_pj, rel=1e-12)


def test_gpu_decode_attention_split_by_hand():
    w = llm_workload("llama-2-7b", "decode", batch=1, context=4096)
    att = next(op for op in w.ops if op.kind == "attention")
    r = op_latency(PRESETS["h200"], att)
    assert r["memory_s"] > r["compute_s"]
    kv = r["memory_s"] * att.count * (att.kv_bytes_read + att.kv_bytes_written) / att.bytes
    b = breakdown("llama-2-7b", "h200", "decode", context=4096)
    assert b["classes"]["kv"]["latency_s"] == pytest.approx(kv)
    assert b["classes"]["softmax"]["latency_s"] == 0.0  # memory-bound: the exponentials hide
    p = breakdown("llama-2-7b", "h200", "prefill", tokens=4096)
    assert p["classes"]["kv"]["latency_s"] == 0.0 and p["classes"]["softmax"]["latency_s"] > 0


def test_nonlinear_share_grows_with_the_array():
    """Configuration (stated for the PICACHU comparison in docs/serving.md): Llama-2-7B prefill of
    2048 tokens on dense-16x16-ws (28 nm, int8 PEs, 0.7 GHz) resized to s x s with DRAM and buffer
    bandwidth scaled by s / 16, softmax and SiLU on 16 lut256 units."""
    rows = array_sweep("llama-2-7b", "dense-16x16-ws", (16, 32, 64, 128, 256), nonlinear="lut256", nl_lanes=16)
    shares = [r["nonlinear_share"] for r in rows]
    assert all(a < b for a, b in zip(shares, shares[1:], strict=False)), shares
    assert shares[0] < 0.01 < 0.15 < shares[-1]


def test_nonlinear_units_cost_time_and_energy():
    base = breakdown("llama-2-7b", "dense-16x16-ws", "prefill", tokens=1024)
    few = breakdown("llama-2-7b", "dense-16x16-ws", "prefill", tokens=1024, nonlinear="lut256", nl_lanes=1)
    many = breakdown("llama-2-7b", "dense-16x16-ws", "prefill", tokens=1024, nonlinear="lut256", nl_lanes=64)
    assert few["latency_s"] >= many["latency_s"] >= base["latency_s"]
    assert few["classes"]["softmax"]["energy_pj"] > base["classes"]["softmax"]["energy_pj"]


def test_bad_input(capsys, monkeypatch):
    for args, phrase in ((["--target", "h200", "--nonlinear", "lut256"], "accelerator"),
                         (["--target", "dense-16x16-ws", "--nonlinear", "lutx"], "nonlinear method"),
                         (["--target", "h1000"], "unknown hardware target"),
                         (["--phase", "train2"], "phase"),
                         (["--target", "dense-16x16-ws", "--nl-lanes", "0", "--nonlinear", "lut64"], "--nl-lanes")):
        code, _, err = run_cli(["hw", "breakdown", *args], capsys, monkeypatch)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and phrase in err, err
    code, out, err = run_cli(["hw", "breakdown", "--model", "smollm2-135m", "--json"], capsys, monkeypatch)
    assert code == 0, err
