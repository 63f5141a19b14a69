"""Near-memory targets (nmx.hw.pim): a GPU whose DRAM computes next to its banks.

Oracles: the published device figures (Samsung HBM-PIM, ISSCC 2021 25.4 / ISCA 2021: 1.2 TFLOPS
FP16 per stack, PCUs at 300 MHz, 4x the off-chip bandwidth inside; SK hynix GDDR6-AiM, ISSCC 2022
3.5 / Hot Chips 34: 1 TFLOPS per chip, 16 banks per channel, 32 GB/s per bank) reproduced by the
presets; a GEMV priced by hand; the host GPU's own cost where nothing is offloaded; monotonicity
(more internal bandwidth never slower; 4-bit weights never more bytes in the banks)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from nmx.errors import InputError
from nmx.hw.gpu import PRESETS as GPUS
from nmx.hw.pim import PimModel, get_pim, pim_attention, pim_gain, pim_gemm, pim_presets
from nmx.hw.targets import get_target
from nmx.hw.workload import Compression, gemm_op, llm_workload
from tests.cli import run_cli


def test_presets_reproduce_the_published_figures():
    hbm = get_pim("h100-hbm-pim").spec
    assert hbm.device_tflops == 1.2 and hbm.unit_clock_mhz == 300 and hbm.internal_bw_multiple == 4
    assert hbm.units_per_device == 128  # 4 PIM dies x 32 PCUs
    assert hbm.unit_flops / (hbm.unit_clock_mhz * 1e6) == pytest.approx(31.25)  # ~16 FP16 MAD lanes x 2
    assert hbm.internal_bytes_per_s / hbm.devices == pytest.approx(4 * 307.2e9)  # 4 x HBM2 at 2.4 Gb/s x 1024
    aim = get_pim("l40s-aim").spec
    assert aim.device_tflops == 1.0 and aim.unit_clock_mhz == 1000
    assert aim.unit_bw_bytes_per_s == pytest.approx(32e9)  # 32 GB/s per bank
    assert aim.internal_bytes_per_s / aim.devices / 2 == pytest.approx(16 * 32e9)  # 512 GB/s per 16-bank channel
    for name in pim_presets():
        s = get_pim(name).spec
        assert len(s.citations) == 8 and all(src for _, src in s.citations)
        for f in s.estimated:  # whatever is estimated says so in its source
            assert dict(s.citations)[f].startswith("estimated")
        assert "internal_pj_per_bit" in s.estimated  # no published per-bit in-bank energy


def test_a_gemv_by_hand():
    t = get_pim("h100-hbm-pim")
    s, host = t.spec, GPUS["h100-sxm"]
    op = gemm_op("x", 1, 4096, 4096)
    r = pim_gemm(s, op, host)
    w = 4096 * 4096 * 2
    memory, compute = w / (5 * 307.2e9 * 4), 2 * 4096 * 4096 / 6e12
    bus = (4096 * 2 + 4096 * 2) / 3.35e12
    assert r["latency_s"] == pytest.approx(host.launch_s + max(memory, compute, bus))
    assert r["bound"] == "pim-compute" and compute > memory  # FP16 GEMV: 1 FLOP per byte, 6 TFLOPS < 6.1 TB/s
    # 4-bit weights: a quarter of the bytes inside the banks, but the published units compute at 16 bits
    q = pim_gemm(s, gemm_op("x", 1, 4096, 4096, weights="nvfp4"), host)
    assert q["internal_bytes"] < 0.3 * w and q["latency_s"] == pytest.approx(r["latency_s"])
    fast = pim_gemm(replace(s, scales_with_bits=True), gemm_op("x", 1, 4096, 4096, weights="nvfp4"), host)
    assert fast["latency_s"] - host.launch_s < 0.5 * (r["latency_s"] - host.launch_s)  # the busy part
    sparse = pim_gemm(replace(s, sparse_skip=True), gemm_op("x", 1, 4096, 4096, pattern="2:4"), host)
    assert sparse["flops"] == pytest.approx(r["flops"] / 2)


def test_decode_gains_prefill_does_not_change():
    w = llm_workload("llama-2-7b", "decode", batch=1, context=4096)
    for name in pim_presets():
        t = get_pim(name, "ideal")
        g = pim_gain(t, w)
        assert g["speedup"] > 1.0 and g["energy_ratio"] < 1.0 and "self_attn.attention" in g["on_pim"]
        c = t.cost(w)
        assert c.latency_s == pytest.approx(sum(op.latency_s for op in c.ops)) and c.energy_pj is None
        assert c.extra["gpu_only_latency_s"] == pytest.approx(get_target(t.spec.host, "ideal").cost(w).latency_s)
    p = llm_workload("llama-2-7b", "prefill", tokens=1024)
    t = get_pim("h100-hbm-pim", "ideal")
    c = t.cost(p)
    assert set(c.extra["placement"].values()) == {"gpu"}
    assert c.latency_s == pytest.approx(get_target("h100-sxm", "ideal").cost(p).latency_s)


def test_monotonic_in_internal_bandwidth_and_weight_bits():
    w = llm_workload("llama-2-7b", "decode", batch=1, context=2048)
    base = get_pim("a100-hbm-pim", "ideal").spec
    prev = float("inf")
    for mult in (1, 2, 4, 8, 16):
        lat = PimModel(replace(base, internal_bw_multiple=mult, scales_with_bits=True), "ideal").cost(w).latency_s
        assert lat <= prev + 1e-15
        prev = lat
    t = get_pim("a100-hbm-pim", "ideal")
    inside = [t.cost(llm_workload("llama-2-7b", "decode", context=2048, compression=Compression(weights=f)))
              .extra["pim_internal_bytes"] for f in (None, "int8", "nvfp4")]
    assert inside[0] > inside[1] > inside[2]


def test_attention_on_pim_reads_the_kv_inside():
    w = llm_workload("llama-2-7b", "decode", batch=4, context=8192)
    att = next(op for op in w.ops if op.kind == "attention")
    r = pim_attention(get_pim("h100-hbm-pim").spec, att, GPUS["h100-sxm"])
    assert r["internal_bytes"] == att.kv_bytes_read and r["flops"] == att.flops


def test_registry_yaml_and_bad_input(tmp_path, capsys, monkeypatch):
    assert get_target("l40s-aim").kind == "pim"
    src = Path(pim_presets()["h100-hbm-pim"]).read_text()
    f = tmp_path / "mine.yaml"
    f.write_text(src.replace("name: h100-hbm-pim", "name: mine"))
    assert get_target(str(f)).name == "mine"
    data = yaml.safe_load(src)
    data["units_per_device"]["value"] = 0
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match="at least one compute unit"):
        get_target(str(f))
    code, _, err = run_cli(["hw", "pim", "--target", str(f)], capsys, monkeypatch)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    code, _, err = run_cli(["hw", "pim", "--target", "nope-pim"], capsys, monkeypatch)
    assert code == 2 and "unknown PIM target" in err
    code, _, err = run_cli(["hw", "pim", "--recipes", "dense,2:5"], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1
    code, out, err = run_cli(["hw", "pim", "--json", "--recipes", "dense"], capsys, monkeypatch)
    assert code == 0, err
