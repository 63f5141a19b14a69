"""Reasoning workloads: n candidates sharing a prompt (llm_workload(parallel_samples=n)), and the
bound against n (nmx.hw.reasoning).

Oracles: candidates that share nothing are exactly n independent sequences; a shared prefix is read
once (hand count of the KV bytes); n = 1 is the workload as it was; the crossover of dense bf16
weights on the H200 sits where the roofline's ridge (peak x efficiency / bandwidth x efficiency,
~205 FLOP per byte) says, since a GEMV of M = n rows does ~n FLOPs per weight byte; monotonicity
(fewer weight bytes never move the crossover later; a small accelerator turns compute-bound first)."""

from __future__ import annotations

import pytest

from nmx.errors import InputError
from nmx.hw.gpu import PRESETS
from nmx.hw.reasoning import bound_curve, parse_ns, recipe_compression
from nmx.hw.workload import PRESETS as SHAPES
from nmx.hw.workload import kv_bytes, llm_workload
from tests.cli import run_cli

NS = parse_ns("1,2,4,...,256")


def test_no_sharing_is_n_independent_sequences():
    a = llm_workload("llama-2-7b", "decode", batch=3 * 4, context=1000)
    b = llm_workload("llama-2-7b", "decode", batch=3, context=1000, parallel_samples=4, shared_prefix=0)
    assert a.ops == b.ops and a.kv_cache_bytes == b.kv_cache_bytes and b.batch == 12


def test_a_shared_prefix_is_read_once():
    s = SHAPES["llama-2-7b"]
    w = llm_workload(s, "decode", batch=2, context=1000, parallel_samples=8, shared_prefix=800)
    per_layer = 2 * (kv_bytes(s, 800, None) + 8 * kv_bytes(s, 200, None))
    att = next(op for op in w.ops if op.kind == "attention")
    assert att.kv_bytes_read == per_layer and w.kv_cache_bytes == s.layers * per_layer
    assert att.batch == 16 and att.kv_len == 1001  # every candidate attends to the whole context
    gemms = [op for op in w.ops if op.kind == "gemm"]
    assert all(op.m == 16 for op in gemms)
    one = llm_workload(s, "decode", batch=2, context=1000)
    assert w.total("weight_bytes") == one.total("weight_bytes")  # weights once for all candidates


def test_n_of_one_changes_nothing():
    a = llm_workload("llama-2-7b", "decode", batch=2, context=512)
    b = llm_workload("llama-2-7b", "decode", batch=2, context=512, parallel_samples=1, shared_prefix=100)
    assert a == b
    p = llm_workload("llama-2-7b", "prefill", batch=2, tokens=512, parallel_samples=4)
    assert p.ops == llm_workload("llama-2-7b", "prefill", batch=2, tokens=512).ops  # the prompt, once
    with pytest.raises(InputError, match="parallel_samples"):
        llm_workload("llama-2-7b", "decode", parallel_samples=0)
    with pytest.raises(InputError, match="shared_prefix"):
        llm_workload("llama-2-7b", "decode", context=10, parallel_samples=2, shared_prefix=11)


def test_the_crossover_sits_at_the_ridge_on_the_gpu():
    g = PRESETS["h200"]
    ridge = g.peak("bf16") * g.efficiency("bf16") / (g.bandwidth_bytes_per_s * g.bw_eff["gemm"])
    assert 128 < ridge < 256
    r = bound_curve("llama-2-7b", "h200", 4096, NS)["recipes"]
    assert r["dense"]["crossover_n"] == 256
    assert r["dense"]["points"][0]["bound"] == "memory"
    for label in ("4-bit", "2:4+4-bit"):  # fewer weight bytes: compute-bound no later
        assert r[label]["crossover_n"] <= r["dense"]["crossover_n"]
    # past the crossover the compute saving (2:4) is worth more than the byte saving (4-bit), before it the reverse
    at = {p["n"]: p for p in r["2:4"]["points"]}, {p["n"]: p for p in r["4-bit"]["points"]}
    assert at[0][256]["s_per_token"] < at[1][256]["s_per_token"]
    assert at[0][1]["s_per_token"] > at[1][1]["s_per_token"]


def test_an_accelerator_turns_compute_bound_first():
    gpu = bound_curve("llama-2-7b", "h200", 4096, NS)["recipes"]["dense"]["crossover_n"]
    acc = bound_curve("llama-2-7b", "nm24-16x16-ws", 4096, NS)["recipes"]
    assert acc["dense"]["crossover_n"] < gpu
    assert acc["2:4"]["points"][-1]["s_per_token"] < acc["dense"]["points"][-1]["s_per_token"]  # N:M PEs pay


def test_parsing_and_bad_input(tmp_path, capsys, monkeypatch):
    assert parse_ns("1,2,4,...,32") == [1, 2, 4, 8, 16, 32] and parse_ns("5,1") == [1, 5]
    assert recipe_compression("2:4+4-bit").weights == "nvfp4"
    for args, phrase in ((["--n", "0"], "--n"), (["--n", "1,x"], "--n"), (["--target", "h1000"], "unknown"),
                         (["--context", "0"], "context"), (["--plot", str(tmp_path / "x.txt")], "--plot")):
        code, _, err = run_cli(["hw", "reasoning", *args], capsys, monkeypatch)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and phrase in err, err
    assert not list(tmp_path.iterdir())
    png = tmp_path / "r.png"
    code, out, err = run_cli(["hw", "reasoning", "--n", "1,16,256", "--target", "h200", "--plot", str(png)],
                             capsys, monkeypatch)
    assert code == 0 and png.stat().st_size > 1000 and "crossover" in out, err
