"""The serving model (nmx.hw.serve): a seeded discrete-event simulation.

Oracles: hand-computed TTFT / TPOT of tiny cases (evenly spaced arrivals, fixed lengths, constant
step times); DistServe's published qualitative result (Zhong et al., OSDI 2024: disaggregation
raises goodput per GPU under tight TTFT + TPOT SLOs where prefill-decode interference dominates,
colocation can win when the SLOs are loose) on a stated setup; the cost protocol itself for the step
times; monotonicity that must hold (a higher rate never raises attainment, a faster link never slows
the KV transfer); bad input is one line and exit code 2."""

from __future__ import annotations

import math

import pytest

from nmx.errors import InputError
from nmx.hw.serve import (
    CostSteps,
    Deployment,
    FixedSteps,
    LengthDist,
    Traffic,
    best_split,
    grid_points,
    max_goodput,
    simulate,
)
from nmx.hw.targets import get_target
from nmx.hw.workload import Compression, llm_workload
from tests.cli import run_cli


def _uniform(rate, n, prompt=100, output=5, ttft=0.2, tpot=0.03, samples=1):
    return Traffic(rate, LengthDist("fixed", prompt), LengthDist("fixed", output), ttft, tpot, requests=n,
                   arrival="uniform", parallel_samples=samples)


def test_one_gpu_no_overlap_by_hand():
    # arrivals 1 s apart, prefill 0.1 s, 4 decode steps of 0.02 s: every request alone on the GPU
    steps = FixedSteps(prefill_s_fixed=0.1, decode_s_fixed=0.02)
    r = simulate(_uniform(1.0, 5, ttft=0.1, tpot=0.02), Deployment("colocated", gpus=1), steps)
    assert r.ttft_s == pytest.approx((0.1,) * 5, abs=1e-12)
    assert r.tpot_s == pytest.approx((0.02,) * 5, abs=1e-12)
    assert r.attainment == 1.0 and r.goodput_rps == 1.0 and r.goodput_per_gpu_rps == 1.0
    assert r.kv_transfer_bytes == 0.0


def test_interference_and_disaggregation_by_hand():
    """Two requests at t = 0 and 0.05 s; prefill 0.1 s, decode step 0.02 s, 5 output tokens.
    Colocated: R0 prefills [0, .1], R1 [.1, .2] (prefill first), both decode 4 steps [.2, .28]:
    TTFT (.1, .15), TPOT ((.28 - .1) / 4, (.28 - .2) / 4) = (.045, .02).
    Disaggregated (1 + 1, 100 tokens x 1e5 B = 1e7 B at 1 GB/s = 10 ms): R0 reaches the decoder at
    .11, decodes to .19; R1 prefills [.1, .2], arrives .21, decodes to .29: TPOT (.0225, .0225)."""
    steps = FixedSteps(prefill_s_fixed=0.1, decode_s_fixed=0.02, kv_bytes_per_token=1e5)
    traffic = _uniform(20.0, 2, ttft=0.2, tpot=0.03)
    colo = simulate(traffic, Deployment("colocated", gpus=1), steps)
    assert colo.ttft_s == pytest.approx((0.1, 0.15), abs=1e-12)
    assert colo.tpot_s == pytest.approx((0.045, 0.02), abs=1e-12)
    assert colo.attainment == 0.5  # R0's TPOT misses the 30 ms SLO: the prefill of R1 stalled it
    dis = simulate(traffic, Deployment("disaggregated", prefill_gpus=1, decode_gpus=1, link_gb_s=1.0), steps)
    assert dis.ttft_s == pytest.approx((0.1, 0.15), abs=1e-12)
    assert dis.tpot_s == pytest.approx((0.0225, 0.0225), abs=1e-12)
    assert dis.kv_transfer_bytes == 2e7 and dis.kv_transfer_s_mean == pytest.approx(0.01)
    assert dis.attainment == 1.0 and dis.goodput_per_gpu_rps == pytest.approx(10.0)


H100 = CostSteps("h100-sxm", "llama-2-7b")


def test_distserve_qualitative_result():
    """Setup: Llama-2-7B shape on h100-sxm (pytorch kernels), prompts of 2048 tokens, 64 output
    tokens, Poisson arrivals for >= 30 s, seed 0, 2 GPUs: colocated x2 vs 1 prefill + 1 decode over a
    50 GB/s link; goodput = the highest rate with >= 90 % SLO attainment, per GPU (DistServe's).
    Tight SLOs (TTFT 0.3 s, TPOT 15 ms, ~1.6x an unloaded decode step): a 2048-token prefill (~44 ms)
    stalls every running decode on a colocated GPU, so disaggregation wins. Loose SLOs (5 s, 200 ms):
    the stalls no longer matter and the colocated GPUs, each doing both phases, serve more."""
    base = dict(prompt=LengthDist("fixed", 2048), output=LengthDist("fixed", 64), requests=100, min_duration_s=30)
    tight = Traffic(4.0, ttft_slo_s=0.3, tpot_slo_s=0.015, **base)
    loose = Traffic(4.0, ttft_slo_s=5.0, tpot_slo_s=0.2, **base)
    colo, dis = Deployment("colocated", gpus=2), Deployment("disaggregated", prefill_gpus=1, decode_gpus=1)
    t_colo, t_dis = (max_goodput(tight, d, H100)["per_gpu_rps"] for d in (colo, dis))
    l_colo, l_dis = (max_goodput(loose, d, H100)["per_gpu_rps"] for d in (colo, dis))
    assert t_dis > 1.2 * t_colo, (t_dis, t_colo)
    assert l_colo > 1.1 * l_dis, (l_colo, l_dis)
    # and the interference is what the tight case measures: at a rate both sustain, colocated TPOT is higher
    at = Traffic(4.0, ttft_slo_s=0.3, tpot_slo_s=0.015, **base)
    assert simulate(at, colo, H100).tpot_p90_s > simulate(at, dis, H100).tpot_p90_s


def test_best_split_covers_every_split_and_refuses_a_budget_of_one():
    traffic = Traffic(4.0, LengthDist("fixed", 512), LengthDist("fixed", 32), 0.5, 0.05, requests=60,
                      min_duration_s=5)
    r = best_split(traffic, 3, H100)
    assert [(s["prefill_gpus"], s["decode_gpus"]) for s in r["splits"]] == [(1, 2), (2, 1)]
    assert r["best"]["per_gpu_rps"] == max(s["per_gpu_rps"] for s in r["splits"])
    with pytest.raises(InputError, match="at least 2"):
        best_split(traffic, 1, H100)


def test_step_times_come_from_the_cost_protocol():
    t = get_target("h100-sxm")
    for b, ctx in ((1, 512), (8, 1024), (3, 640)):  # grid points: exact
        assert grid_points(b) == (b, b) and grid_points(ctx) == (ctx, ctx)
        ref = t.cost(llm_workload("llama-2-7b", "decode", batch=b, context=ctx)).latency_s
        assert H100.decode_s(b, ctx) == ref
    ref = t.cost(llm_workload("llama-2-7b", "prefill", batch=2, tokens=768)).latency_s
    assert H100.prefill_s(2, 768) == ref
    for b, ctx in ((13, 700), (37, 3000)):  # between grid points: linear interpolation, within 1 %
        ref = t.cost(llm_workload("llama-2-7b", "decode", batch=b, context=ctx)).latency_s
        assert H100.decode_s(b, ctx) == pytest.approx(ref, rel=0.01)


def test_a_compressed_recipe_changes_kv_bytes_and_step_times():
    comp = Compression(weights="nvfp4", pattern="2:4", kv_format="int4_g32")
    small = CostSteps("h100-sxm", "llama-2-7b", comp, gpu_impl="ideal")
    dense = CostSteps("h100-sxm", "llama-2-7b", gpu_impl="ideal")
    ratio = llm_workload("llama-2-7b", "prefill", tokens=512, compression=comp).kv_cache_bytes / \
        llm_workload("llama-2-7b", "prefill", tokens=512).kv_cache_bytes
    traffic = _uniform(2.0, 10, prompt=512, output=16)
    dep = Deployment("disaggregated", prefill_gpus=1, decode_gpus=1)
    a, b = simulate(traffic, dep, dense), simulate(traffic, dep, small)
    assert b.kv_transfer_bytes == pytest.approx(a.kv_transfer_bytes * ratio)
    assert small.decode_s(1, 512) < dense.decode_s(1, 512)
    assert small.weight_bytes < 0.35 * dense.weight_bytes


def test_a_higher_rate_never_raises_attainment():
    # the same exponential gaps scaled by 1 / rate (common random numbers): a monotonic property
    for dep in (Deployment("colocated", gpus=2), Deployment("disaggregated", prefill_gpus=1, decode_gpus=1)):
        att = []
        for rate in (2, 6, 12, 24, 32, 48, 64):
            tr = Traffic(rate, LengthDist.parse("lognormal:1024:0.5"), LengthDist.parse("uniform:16:128"), 0.3, 0.02,
                         requests=60, min_duration_s=10, seed=3)
            r = simulate(tr, dep, H100)
            att.append(r.attainment)
        assert all(x >= y for x, y in zip(att, att[1:], strict=False)), att
        assert att[-1] < 0.9  # the last rate is beyond what the SLOs allow
        # (beyond saturation goodput per GPU does not grow: a property test in test_serve_chunked_af.py)


def test_a_faster_link_never_slows_the_kv_transfer():
    steps = FixedSteps(prefill_s_fixed=0.05, decode_s_fixed=0.01, kv_bytes_per_token=5e5)
    prev = math.inf
    for gb_s in (0.5, 1, 5, 50):
        r = simulate(_uniform(10.0, 8), Deployment("disaggregated", prefill_gpus=1, decode_gpus=1, link_gb_s=gb_s),
                     steps)
        assert r.kv_transfer_s_mean == pytest.approx(100 * 5e5 / (gb_s * 1e9))  # the link is idle each time
        assert r.tpot_p90_s <= prev + 1e-12
        prev = r.tpot_p90_s


def test_parallel_samples_share_the_prompt():
    steps = FixedSteps(prefill_s_fixed=0.1, decode_s_fixed=0.02, kv_bytes_per_token=1e5)
    dep = Deployment("disaggregated", prefill_gpus=1, decode_gpus=1)
    one = simulate(_uniform(1.0, 3), dep, steps)
    four = simulate(_uniform(1.0, 3, samples=4), dep, steps)
    assert four.kv_transfer_bytes == one.kv_transfer_bytes  # the prompt's KV moves once
    # cost: 4 candidates of a 512-token prompt decode faster than 4 separate requests
    assert H100.decode_s(1, 512, 512, 4) < H100.decode_s(4, 512)


def test_seeded_and_deterministic():
    tr = Traffic(6.0, LengthDist.parse("lognormal:512:0.6"), LengthDist.parse("uniform:8:64"), 0.5, 0.05,
                 requests=50, seed=7)
    dep = Deployment("colocated", gpus=1)
    assert simulate(tr, dep, H100) == simulate(tr, dep, H100)
    from dataclasses import replace

    assert simulate(replace(tr, seed=8), dep, H100).ttft_s != simulate(tr, dep, H100).ttft_s
    lengths = LengthDist.parse("lognormal:512:0.5").sample(__import__("numpy").random.default_rng(0), 4000)
    assert abs(float(__import__("numpy").median(lengths)) / 512 - 1) < 0.05


def test_memory_limits_are_checked():
    with pytest.raises(InputError, match="do not fit"):
        simulate(_uniform(1.0, 2), Deployment("colocated", gpus=1), CostSteps("l40s", "llama-3-70b"))
    with pytest.raises(InputError, match="KV cache"):
        simulate(_uniform(1.0, 2, prompt=10**6), Deployment("colocated", gpus=1), H100)


@pytest.mark.parametrize("args, phrase", [
    (["--rate", "0"], "arrival rate"),
    (["--rate", "-1"], "arrival rate"),
    (["--ttft-slo", "0"], "TTFT SLO"),
    (["--tpot-slo", "-0.1"], "TPOT SLO"),
    (["--prompt", "0"], "--prompt"),
    (["--output", "uniform:10:5"], "--output"),
    (["--prompt", "lognormal:512"], "--prompt"),
    (["--mode", "disaggregated", "--gpus", "1"], "at least 2"),
    (["--target", "h1000"], "unknown hardware target"),
    (["--parallel-samples", "0"], "parallel samples"),
    (["--mode", "sideways"], "--mode"),
])
def test_bad_input_is_one_line(args, phrase, capsys, monkeypatch):
    code, _, err = run_cli(["hw", "serve", *args], capsys, monkeypatch)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and phrase in err, err


def test_cli_runs(capsys, monkeypatch):
    code, out, err = run_cli(["hw", "serve", "--prompt", "512", "--output", "16", "--rate", "2", "--duration", "5",
                              "--requests", "20", "--mode", "colocated", "--gpus", "1", "--json"], capsys, monkeypatch)
    assert code == 0, err
    import json

    rec = json.loads(out)
    assert rec["results"][0]["deployment"] == "colocated x1" and rec["setup"]["target"] == "h100-sxm"
