"""One cost protocol: every hardware target answers `cost(workload) -> Cost`.

Oracles: the functions each target wraps (`gpu.llm_cost`, `accel.evaluate`, `timeloop.evaluate`)
must give the same numbers through the protocol; a GPU described in YAML with a preset's datasheet
numbers and efficiencies must price exactly like that preset; the packaged accelerator designs are
byte-identical to examples/hw/."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nmx.errors import InputError
from nmx.hw import accel, gpu
from nmx.hw.accel_spec import load_accel
from nmx.hw.cost import Cost
from nmx.hw.pricing import Phase, default_phases, price
from nmx.hw.targets import DEFAULT_TARGET, Target, get_target, load_target_file, preset_names
from nmx.hw.workload import Compression, llm_workload
from tests.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "hardware"
CASE = Path(os.environ.get("NMX_DATA_DIR", "/nonexistent")) / "hw" / "sparseloop-eyeriss-v2"
needs_case = pytest.mark.skipif(not CASE.is_dir(), reason="the Timeloop case needs NMX_DATA_DIR")

COMP = Compression(weights="mxfp4", pattern="2:4", kv_format="int4_g32")


def test_every_preset_answers_the_protocol():
    w = llm_workload("smollm2-135m", "decode", batch=4, context=512, compression=COMP)
    kinds = set()
    for name in preset_names():
        t = get_target(name)
        assert isinstance(t, Target) and t.name == name
        c = t.cost(w)
        kinds.add(t.kind)
        assert isinstance(c, Cost) and c.target == name and c.latency_s > 0 and c.bytes > 0
        assert c.tokens_per_s == pytest.approx(4 / c.latency_s)
        # a roofline has no energy model: None, not 0 (a PIM host's is the GPU's, with memory-side energy aside)
        assert (c.energy_pj is None) == (t.kind in ("gpu", "pim"))
        assert sum(op.latency_s for op in c.ops) == pytest.approx(c.latency_s, rel=1e-9) or t.kind == "accelerator"
        assert c.kv_cache_bytes == w.kv_cache_bytes
    assert kinds == {"gpu", "accelerator", "pim"}
    assert DEFAULT_TARGET == "h200" and "fitted" in get_target(DEFAULT_TARGET).gpu.calibration


def test_the_protocol_wraps_the_models_it_names_without_changing_them():
    w = llm_workload("llama-2-7b", "decode", batch=1, context=4096, compression=COMP)
    ref = gpu.llm_cost("h100-sxm", w, "ideal")
    c = get_target("h100-sxm", gpu_impl="ideal").cost(w)
    assert (c.latency_s, c.bound) == (ref["latency_s"], ref["bound"])
    assert c.bytes == ref["bytes_read"] + ref["bytes_written"]
    spec = load_accel(ROOT / "examples" / "hw" / "uspe_16x16_ws.yaml")
    ref = accel.evaluate(spec, w).point()
    c = get_target(spec).cost(w)
    assert (c.latency_s, c.energy_pj, c.bytes) == (ref["latency_s"], ref["energy_pj"], ref["dram_bytes"])
    # per-op rows add up to the totals (accelerator: energy, bytes; its latency overlaps inside each op only)
    assert sum(op.energy_pj for op in c.ops) == pytest.approx(c.energy_pj)
    assert sum(op.bytes for op in c.ops) == pytest.approx(c.bytes)
    assert c.bound in ("compute", "buffer", "memory")


def test_packaged_accelerator_designs_are_the_examples():
    from importlib import resources

    data = Path(str(resources.files("nmx.hw") / "data"))
    packaged = sorted(data.glob("accel_*.yaml"))
    assert len(packaged) == 4
    for f in packaged:
        assert f.read_bytes() == (ROOT / "examples" / "hw" / f.name.removeprefix("accel_")).read_bytes()


def test_a_gpu_yaml_with_a_presets_numbers_prices_like_the_preset(tmp_path):
    f = tmp_path / "h100.yaml"
    f.write_text("kind: gpu\nname: my-h100\nbandwidth_gb_s: 3350\n"
                 "peak_tflops: {bf16: 989.4, fp16: 989.4, fp8: 1978.9, int8: 1978.9, tf32: 494.7}\n"
                 "sparse_24: true\nsms: 132\nl2_mb: 50\nefficiencies_from: h100-sxm\n")
    mine = get_target(str(f))
    assert mine.kind == "gpu" and mine.name == "my-h100" and "uncalibrated" in mine.gpu.calibration
    for phase in default_phases(1024):
        w = phase.workload("llama-3-8b", COMP)
        assert mine.cost(w).latency_s == pytest.approx(get_target("h100-sxm").cost(w).latency_s, rel=1e-12)
    # an efficiency override changes what it should: half the gemm bandwidth, slower memory-bound decode
    f.write_text(f.read_text() + "bw_eff: {gemm: 0.36}\n")
    slow = get_target(str(f))
    w = llm_workload("llama-3-8b", "decode", context=1024)
    assert slow.cost(w).latency_s > 1.5 * mine.cost(w).latency_s
    assert "own efficiencies" in slow.gpu.calibration


def test_the_example_gpu_file_loads():
    t = load_target_file(EXAMPLES / "gpu_h100_pcie.yaml")
    assert t.name == "h100-pcie" and t.gpu.bandwidth_bytes_per_s == 2.0e12 and t.gpu.peak_flops["bf16"] == 756e12


@pytest.mark.parametrize("body, phrase", [
    ("bandwidth_gb_s: -3350", "bandwidth_gb_s: Input should be greater than 0"),
    ("bandwidth_gb_s: .inf", "bandwidth_gb_s"),
    ("peak_tflops: {fp16: 100}", "peak_tflops: needs bf16"),
    ("peak_tflops: {bf16: 100, fp7: 3}", "unknown dtype 'fp7'"),
    ("peak_tflops: {bf16: -1}", "bf16: must be a number > 0"),
    ("bw_eff: {gemm: 1.5}", "bw_eff: gemm: an efficiency is a fraction in (0, 1]"),
    ("efficiencies_from: h300", "unknown GPU preset 'h300'"),
    ("sms: 0", "sms: Input should be greater than or equal to 1"),
    ("colour: green", "colour: is not a known field"),
])
def test_bad_gpu_yaml_is_one_line_naming_the_field(tmp_path, body, phrase):
    good = {"kind": "gpu", "name": "g", "bandwidth_gb_s": "100", "peak_tflops": "{bf16: 10}", "sms": "10",
            "l2_mb": "10"}
    key = body.split(":")[0]
    lines = [f"{k}: {v}" for k, v in good.items() if k != key] + [body]
    f = tmp_path / "g.yaml"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as err:
        get_target(str(f))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(f)) and phrase in msg, msg


@pytest.mark.parametrize("text, phrase", [
    ("kind: tpu\nname: x\n", "kind: must be one of gpu, accelerator, timeloop"),
    ("name: x\n", "says what it describes with kind"),
    ("kind: accelerator\npe_array: {rows: 0, cols: 4}\nmemory: []\n", "pe_array.rows"),
])
def test_bad_target_files(tmp_path, text, phrase):
    f = tmp_path / "t.yaml"
    f.write_text(text)
    with pytest.raises(InputError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        get_target(str(f))


def test_an_accelerator_file_may_say_its_kind(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("kind: accelerator\n" + (ROOT / "examples" / "hw" / "dense_16x16_ws.yaml").read_text())
    w = llm_workload("smollm2-135m", "decode", context=256)
    assert get_target(str(f)).cost(w).latency_s == get_target("dense-16x16-ws").cost(w).latency_s


def test_unknown_names_and_duplicate_targets():
    with pytest.raises(InputError, match="did you mean 'h200'"):
        get_target("h20")
    with pytest.raises(InputError, match="not found"):
        get_target("no/such/gpu.yaml")
    with pytest.raises(InputError, match="two hardware targets are named 'h200'"):
        price("smollm2-135m", Compression(), ["h200", get_target("h200")], [Phase("decode", context=8)])
    with pytest.raises(InputError, match="no measurement of nmx's kernels"):
        get_target("a100-80gb", gpu_impl="nmx")
    with pytest.raises(InputError, match="takes context"):
        Phase("decode", tokens=5)
    with pytest.raises(InputError, match="takes tokens"):
        Phase("prefill", context=5)


@needs_case
def test_a_timeloop_case_prices_only_what_it_describes(monkeypatch):
    from nmx.hw.timeloop import evaluate

    monkeypatch.setenv("NMX_DATA_DIR", str(CASE.parents[1]))
    t = get_target(str(EXAMPLES / "eyeriss_v2_L07.yaml"))
    assert t.kind == "timeloop" and t.phases == ()
    c = t.cost()
    ref = evaluate(t.case)
    assert c.latency_s == ref.cycles / 0.2e9 and c.energy_pj == ref.energy_pj and c.bound == ref.bound
    assert c.tokens_per_s is None and len(c.ops) == 1
    with pytest.raises(InputError, match="prices only the layer it describes .* not an LLM decode step"):
        t.cost(llm_workload("smollm2-135m", "decode", context=64))
    from nmx.recipe import load_recipe

    with pytest.raises(InputError) as err:
        load_recipe(base={"hardware": {"targets": ["h200", str(EXAMPLES / "eyeriss_v2_L07.yaml")]}})
    assert "hardware.targets" in str(err.value) and "not an LLM prefill step" in str(err.value)


def test_a_timeloop_file_with_an_unset_variable_is_one_line(monkeypatch):
    monkeypatch.delenv("NMX_DATA_DIR", raising=False)
    with pytest.raises(InputError, match="arch: .* names an environment variable that is not set"):
        get_target(str(EXAMPLES / "eyeriss_v2_L07.yaml"))


def test_hw_targets_lists_gpus_accelerators_and_pim_hosts(capsys, monkeypatch):
    code, out, _ = run_cli(["hw", "targets", "--json"], capsys, monkeypatch)
    rows = json.loads(out)
    assert code == 0 and {r["kind"] for r in rows} == {"gpu", "accelerator", "pim"}
    assert [r["name"] for r in rows] == preset_names()


def test_hw_llm_takes_a_gpu_file_and_refuses_an_accelerator(capsys, monkeypatch):
    code, out, err = run_cli(["hw", "llm", "--target", str(EXAMPLES / "gpu_h100_pcie.yaml"), "--model",
                              "smollm2-135m", "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["target"] == "h100-pcie"
    code, _, err = run_cli(["hw", "llm", "--target", "nm24-16x16-ws", "--json"], capsys, monkeypatch)
    assert code == 2 and "nmx hw llm prices GPUs" in err and err.count("\n") == 1


def test_a_recipe_with_a_negative_bandwidth_gpu_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import nmx.runner

    monkeypatch.setattr(nmx.runner, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    g = tmp_path / "gpu.yaml"
    g.write_text((EXAMPLES / "gpu_h100_pcie.yaml").read_text().replace("bandwidth_gb_s: 2000", "bandwidth_gb_s: -2"))
    r = tmp_path / "r.yaml"
    r.write_text(f"hardware:\n  targets: [h200, {g}]\n")
    code, _, err = run_cli(["run", str(r), "--out", str(tmp_path / "out")], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "hardware.targets" in err and "bandwidth_gb_s: Input should be greater than 0" in err
    assert not (tmp_path / "out").exists()
