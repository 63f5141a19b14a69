"""nmx.kernels.convert: packed modules in a real (tiny, random) Llama against the fake-quant model.

Oracle: the same model fake-quantized by nmx (nmx.quant.quantize_weights after pruning), cast to bf16 and
run by torch's own nn.Linear. The converted model's CPU path (the kernels' reference twin) performs the
same bf16 products with float32 accumulation, so its logits agree to within accumulation order: the
tests allow 2 bf16 ulps of the largest logit (observed here: bit for bit). A negative control shows the
tolerance is tight enough to see a wrong packing. Also: the KV pages -> kernel layout bridge (bit for bit
against pack_kv and against the cache's own decode), `nmx run --kernels`, `nmx bench decode` on CPU.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import subprocess
import sys

import pytest
import torch

from nmx.errors import InputError
from nmx.kernels import PackedLinearModule, convert, linear, pack
from nmx.kernels.convert import PPL_CAP, recipe_layers
from nmx.kernels.decode_bench import fake_compress
from nmx.model.layers import match_linears
from nmx.quant import attach_activation_quant
from nmx.sparsity.masks import nm_mask
from tests.cli import run_cli
from tests.model.conftest import tiny_llama

TARGETS = ["*.self_attn.*_proj", "*.mlp.*_proj"]


RECIPES = [("mxfp4", None), ("nvfp4", "2:4"), ("int4_g64", None), ("int4_g64", "2:4"), ("fp8_e4m3", None),
           ("mxfp8_e4m3", None), (None, "2:4"), (None, None)]
TOL_ULPS = 2 * 2.0**-8  # two bf16 ulps, relative to the largest |logit|


def wide_llama(seed: int = 0):
    """Hidden 128: every linear has K a multiple of 128 (int4_g128)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=96, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


def close(got, ref):
    return float((got - ref).abs().max()) <= TOL_ULPS * float(ref.abs().max())


@pytest.mark.parametrize("fmt,pattern", RECIPES + [("int4_g128", None), ("int4_g128", "2:4")])
def test_converted_model_matches_the_fake_quant_model(fmt, pattern):
    make = wide_llama if fmt == "int4_g128" else tiny_llama
    ref, conv = make(), make()
    fake_compress(ref, fmt, pattern)
    masks = fake_compress(conv, fmt, pattern)
    report = convert(conv, fmt, pattern, masks=masks, exact=True)
    assert report.as_dict()["converted_layers"] == 14 and not report.left
    assert sum(isinstance(m, PackedLinearModule) for m in conv.modules()) == 14
    ref, conv = ref.to(torch.bfloat16), conv.to(torch.bfloat16)
    ids = torch.randint(0, 90, (2, 24))
    got, want = logits(conv, ids), logits(ref, ids)
    assert torch.isfinite(got).all() and close(got, want), float((got - want).abs().max())
    if pattern:  # a 2:4 layer reads half the values plus 1 bit of index per weight (and scales)
        assert report.packed_bytes <= report.bf16_bytes * (9 / 16 if fmt is None else 5 / 16)


def test_the_tolerance_sees_a_wrong_packing():
    """Negative control: the model fake-quantized with mxfp4 but packed (re-quantized) as nvfp4."""
    ref, conv = tiny_llama(), tiny_llama()
    fake_compress(ref, "mxfp4", None)
    fake_compress(conv, "mxfp4", None)
    with pytest.raises(InputError, match="not on the grid of nvfp4"):
        convert(conv, "nvfp4", exact=True)
    conv2 = tiny_llama()
    fake_compress(conv2, "mxfp4", None)
    convert(conv2, "nvfp4")  # without exact: quantized again, a different grid
    ids = torch.randint(0, 90, (2, 24))
    assert not close(logits(conv2.to(torch.bfloat16), ids), logits(ref.to(torch.bfloat16), ids))


def test_module_is_the_reference_twin_bit_for_bit():
    w = torch.randn(48, 128) / 12
    w = w * nm_mask(w.abs(), 2, 4)
    p = pack(w, "nvfp4", "2:4")
    bias = torch.randn(48)
    m = PackedLinearModule(p, bias)
    x = torch.randn(3, 5, 128, dtype=torch.bfloat16)
    y = m(x)
    assert y.dtype == torch.bfloat16 and y.shape == (3, 5, 48)
    assert torch.equal(y, linear(x, p) + bias.to(torch.bfloat16))
    xt = torch.randn(128, 15, dtype=torch.bfloat16).T.reshape(3, 5, 128)  # non-contiguous: copied, same answer
    assert not torch.randn(128, 15).T.is_contiguous()
    assert torch.equal(m(xt), m(xt.contiguous()))


def test_fp32_input_is_a_documented_cast_with_one_warning(caplog):
    sys.modules["nmx.kernels.convert"]._WARNED.discard("dtype-torch.float32")  # the verb shadows the module name
    p = pack(torch.randn(32, 64), "mxfp4")
    m = PackedLinearModule(p)
    x = torch.randn(4, 64)
    with caplog.at_level(logging.WARNING, logger="nmx"):
        y = m(x)
        m(x)
    assert y.dtype == torch.float32
    assert torch.equal(y, m(x.to(torch.bfloat16)).float())
    assert sum("round their float32 input to bf16" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(InputError, match="float input"):
        m(torch.ones(4, 64, dtype=torch.int64))
    with pytest.raises(InputError, match="input features"):
        m(torch.randn(4, 32))


def test_dtype_casts_never_touch_packed_buffers():
    """model.to(bf16) / .half() move float buffers; the packed ones are integer bit patterns and stay exact
    (int4 groups keep fp16 scales; bf16 values stay bf16)."""
    for fmt in ("int4_g64", None):
        m = PackedLinearModule(pack(torch.randn(16, 128), fmt), torch.randn(16))
        before = m.dequantized_weight()
        old = m.packed
        m.to(torch.bfloat16).half().float().to("cpu")
        assert torch.equal(m.dequantized_weight(), before) and m.packed is not old
        assert m.bias.dtype == torch.float32
        assert {k for k, _ in m.named_buffers()} >= {"values", "bias"}


def test_a_deep_copy_is_a_layer_of_its_own():
    import copy

    m = PackedLinearModule(pack(torch.randn(16, 64), "mxfp4"))
    c = copy.deepcopy(m)
    assert c._key != m._key and c.packed is not m.packed
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    assert torch.equal(c(x), m(x))
    assert c.values.data_ptr() != m.values.data_ptr()  # the copy's buffers are its own
    del m
    assert torch.equal(c(x), c(x.clone()))  # and it runs after the original is gone


def test_hooks_travel_with_the_layer():
    """Activation fake quant (forward pre-hooks) still acts on a converted layer."""
    ref, conv = tiny_llama(), tiny_llama()
    for m in (ref, conv):
        fake_compress(m, "mxfp4", None)
        attach_activation_quant(match_linears(m, TARGETS), "mxfp4")
    convert(conv, "mxfp4", exact=True)
    ids = torch.randint(0, 90, (1, 20))
    assert close(logits(conv.to(torch.bfloat16), ids), logits(ref.to(torch.bfloat16), ids))


def test_refused_requests_are_one_line():
    with pytest.raises(InputError, match="do not read 'int8'"):
        convert(tiny_llama(), "int8")
    with pytest.raises(InputError, match="dense or 2:4 weights, not '4:8'"):
        convert(tiny_llama(), "mxfp4", "4:8")
    with pytest.raises(InputError, match="not 2:4 sparse"):
        convert(tiny_llama(), "mxfp4", "2:4")  # convert packs; it does not prune
    with pytest.raises(InputError, match="matches no linear"):
        convert(tiny_llama(), "mxfp4", targets=["*.nothing"])
    with pytest.raises(InputError, match="backend"):
        convert(tiny_llama(), "mxfp4", backend="magic")
    m = tiny_llama()
    masks = fake_compress(m, None, "2:4")
    name = next(iter(masks))
    masks[name] = ~masks[name]  # a mask that disagrees with the weight
    with pytest.raises(InputError, match="outside its recorded 2:4 mask"):
        convert(m, None, "2:4", masks=masks)


def test_layers_the_layout_cannot_take_are_left_with_one_warning(caplog):
    """tiny Llama: K = 64 for 12 layers, 128 for the down projections. int4_g128 takes only the latter."""
    m = tiny_llama()
    fake_compress(m, "int4_g128", None)
    with caplog.at_level(logging.WARNING, logger="nmx"):
        report = convert(m, "int4_g128", exact=True)
    warnings = [r.getMessage() for r in caplog.records if "left as nn.Linear" in r.getMessage()]
    assert len(warnings) == 1 and "12 of 14" in warnings[0] and "block of 128" in warnings[0]
    assert len(report.converted) == 2 and all(n.endswith("down_proj") for n in report.converted)
    assert sum(type(x) is torch.nn.Linear for x in m.model.layers.modules()) == 12
    with pytest.raises(InputError, match="cannot be packed: K not a multiple of int4_g128's block"):
        convert(tiny_llama(), "int4_g128", strict=True)
    odd = torch.nn.Sequential(torch.nn.Linear(96, 32), torch.nn.Linear(32, 64))
    report = convert(odd, "mxfp4", targets=["*"])
    assert set(report.left.values()) == {"K not a multiple of 64"} and len(report.left) == 2


def test_recipe_layers_follow_the_recipe():
    from nmx.recipe import load_recipe

    m = tiny_llama()
    r = load_recipe(base={"sparsity": {"method": "magnitude", "pattern": "2:4", "targets": ["*.mlp.*_proj"]},
                          "quantization": {"weights": "nvfp4", "targets": ["*.self_attn.*_proj", "*.mlp.*_proj"]}})
    plan = recipe_layers(m, r)
    assert plan["model.layers.0.mlp.up_proj"] == ("nvfp4", "2:4")
    assert plan["model.layers.0.self_attn.q_proj"] == ("nvfp4", None)
    r48 = load_recipe(base={"sparsity": {"method": "magnitude", "pattern": "4:8"}})
    assert set(recipe_layers(m, r48).values()) == {(None, None)}  # stored dense, zeros and all


def test_torch_compile_traces_a_converted_model_in_one_graph():
    m = tiny_llama()
    convert(m, "mxfp4")
    m = m.to(torch.bfloat16)
    ids = torch.randint(0, 90, (1, 8))
    with torch.no_grad():
        explained = torch._dynamo.explain(m)(ids)
    assert explained.graph_count == 1 and explained.graph_break_count == 0


TRITON = importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(not TRITON, reason="triton is not installed")
def test_converted_layers_run_the_triton_kernel_in_the_interpreter():
    """PackedLinearModule(backend="gemv") launches the one-token Triton kernel (Triton's CPU interpreter), its
    output NaN-poisoned first (convert.POISON): every element written, within 2 bf16 ulps of the twin (the
    kernel multiplies the unrounded decoded weight, the twin its bf16 rounding)."""
    code = r"""
import sys, torch
from nmx.kernels import PackedLinearModule, pack
from nmx.sparsity.masks import nm_mask
conv = sys.modules["nmx.kernels.convert"]
conv.POISON = True
torch.manual_seed(0)
for fmt, pat in (("nvfp4", "2:4"), ("int4_g64", None)):
    w = torch.randn(64, 128) / 12
    w = w * nm_mask(w.abs(), 2, 4) if pat else w
    p = pack(w, fmt, pat)
    x = torch.randn(1, 1, 128, dtype=torch.bfloat16)
    y = PackedLinearModule(p, backend="gemv")(x).float()
    r = PackedLinearModule(p)(x).float()
    err = float((y - r).abs().max()) / float(r.abs().max())
    assert torch.isfinite(y).all() and err <= 2 * 2.0**-8, (fmt, err)
assert conv.PATHS["gemv"] == 2, dict(conv.PATHS)
print("ok")
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


# ---- nmx run --kernels ----------------------------------------------------------------------------------


def _recipe(tmp_path, tiny_model_dir, text_file, **sections):
    import yaml

    base = {"model": str(tiny_model_dir), "calibration": {"text": str(text_file), "samples": 4, "seq_len": 32},
            "evaluation": {"text": str(text_file), "seq_len": 64, "max_windows": 3}, **sections}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def test_nmx_run_kernels_end_to_end(tmp_path, tiny_model_dir, text_file, capsys, monkeypatch):
    """On the CPU: one warning that the twin runs; perplexity through the kernels agrees with the bf16
    fake-quant model within the bound (to ~1e-6: the twin sums in float32, the CPU's bf16 matmul in its own
    order, bit for bit on some CPUs and torch builds, not on others); result.json and report.md say so; the saved
    weights are those of the fake-quant run (the bf16 cast is undone)."""
    recipe = _recipe(tmp_path, tiny_model_dir, text_file, sparsity={"method": "wanda", "pattern": "2:4"},
                     quantization={"weights": "nvfp4"})
    code, out, err = run_cli(["run", str(recipe), "--kernels", "--out", str(tmp_path / "k"), "--save-model"], capsys,
                             monkeypatch)
    assert code == 0, err
    assert err.count("CPU reference twin") == 1, err
    k = json.loads((tmp_path / "k" / "result.json").read_text())["kernels"]
    assert k["backend"] == "reference" and k["paths"]["reference"] > 0 and k["converted_layers"] == 14
    assert k["within_bound"] and k["relative_difference"] <= min(k["bound"], 1e-5)
    assert k["bound"] <= PPL_CAP and k["nll_difference_sigma"] < 1e-3
    assert k["tokens"] == 3 * 63 and abs(k["reference_perplexity"] / k["perplexity"] - 1) <= 1e-5
    assert abs(k["vs_fp32_fake_quant"]) < 1e-2 and k["dtype"] == "bfloat16"
    assert "through nmx.kernels (reference" in (tmp_path / "k" / "report.md").read_text()
    assert "through nmx.kernels (reference): perplexity" in out
    code, _, err = run_cli(["run", str(recipe), "--out", str(tmp_path / "plain"), "--save-model"], capsys,
                           monkeypatch)
    assert code == 0, err
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "k" / "model.safetensors"))
    b = load_file(str(tmp_path / "plain" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    plain = json.loads((tmp_path / "plain" / "result.json").read_text())
    assert "kernels" not in plain


def test_the_agreement_rule():
    """Oracle: hand-made per-token NLLs. Zero-mean noise passes at any size; a shift of the mean by more than
    4 sigma / sqrt(N) fails, and so does anything past the 1 % cap however noisy."""
    from nmx.kernels.evaluate import agreement

    g = torch.Generator().manual_seed(0)
    ref = 3.0 + torch.rand(4, 500, generator=g, dtype=torch.float64)
    noise = 0.05 * torch.randn(4, 500, generator=g, dtype=torch.float64)
    noise -= noise.mean()  # exactly zero-mean: ln ppl equal
    ok = agreement(ref + noise, ref)
    assert ok["within_bound"] and ok["relative_difference"] < 1e-12 and abs(ok["nll_difference_sigma"] - 0.05) < 5e-3
    assert ok["bound"] == pytest.approx(math.expm1(4 * ok["nll_difference_sigma"] / math.sqrt(2000)))
    shifted = agreement(ref + noise + 0.006, ref)  # 0.006 > 4 * 0.05 / sqrt(2000) = 0.0045
    assert not shifted["within_bound"] and shifted["relative_difference"] == pytest.approx(math.expm1(0.006))
    loud = agreement(ref + 40 * noise + 0.02, ref)  # within 4 sigma of a huge sigma, but 2 % off
    assert not loud["within_bound"] and loud["bound"] == PPL_CAP
    assert agreement(ref, ref)["within_bound"] and agreement(ref, ref)["bound"] == 0


def test_kernels_token_by_token(tiny_model_dir, text_file):
    """kernels.chunk: 1 scores through a cache one token per forward (the one-token kernel on a GPU)."""
    from nmx.recipe import load_recipe
    from nmx.runner import run

    base = {"model": str(tiny_model_dir), "quantization": {"weights": "mxfp4"},
            "evaluation": {"text": str(text_file), "seq_len": 12, "max_windows": 1}}
    r = run(load_recipe(base={**base, "kernels": {"chunk": 1}}))
    k = r["kernels"]
    assert k["chunk"] == 1 and k["paths"]["reference"] == 12 * 14  # tokens x layers (the kernel run)
    assert k["within_bound"] and abs(k["perplexity"] - r["perplexity"]) / r["perplexity"] < 1e-2


def test_kernels_flag_refuses_a_format_before_the_model_loads(tmp_path, tiny_model_dir, text_file, capsys,
                                                              monkeypatch):
    import nmx.runner

    monkeypatch.setattr(nmx.runner, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    recipe = _recipe(tmp_path, tiny_model_dir, text_file, quantization={"weights": "int8"})
    code, _, err = run_cli(["run", str(recipe), "--kernels"], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and "kernels: the compressed-weight kernels do not read 'int8'" in err


# ---- the KV layout ---------------------------------------------------------------------------------------


def _kv_cache(fmt, group, residual=20, sinks=0, key_rope="post", evict=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    from nmx.kv import KVCache
    from nmx.kv.policy import KVPolicy

    cfg = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    policy = {"quant": {"format": fmt, "group": group, "residual": residual, "sinks": sinks, "key_rope": key_rope}}
    if evict:
        policy["evict"] = evict
    cache = KVCache(KVPolicy.from_dict(policy), LlamaForCausalLM(cfg))
    ks, vs = [], []
    for step in (50, 1, 7, 33, 1):  # chunks flush at different steps
        k, v = torch.randn(2, 1, step, 64).bfloat16(), torch.randn(2, 1, step, 64).bfloat16()
        ks.append(k)
        vs.append(v)
        cache.layers[0].update(k, v)
        cache.layers[0]._view = None  # no attention hook runs here
    return cache.layers[0], torch.cat(ks, 2), torch.cat(vs, 2)


@pytest.mark.parametrize("fmt,group", [("int4", 32), ("int2", 16), ("mxfp4", 64), ("fp8_e4m3", 32)])
def test_kv_pages_become_the_kernel_layout_bit_for_bit(fmt, group):
    """Oracles: pack_kv of the same tokens (the same bytes) and the cache's own decode (the same values)."""
    from nmx.kernels import dequantize_kv, pack_kv, packed_kv_from_cache

    layer, k, v = _kv_cache(fmt, group)
    p = packed_kv_from_cache(layer)
    want = pack_kv(k, v, fmt, fmt, group=group, residual=20)
    assert p.quantized == want.quantized > 0
    assert all(torch.equal(a, b) for a, b in zip(p.tensors, want.tensors, strict=True))
    dk, dv = dequantize_kv(p)
    hk, hv = layer._physical(torch.float32)
    assert torch.equal(dk, hk) and torch.equal(dv, hv)


def test_kv_layouts_the_kernel_cannot_read_are_refused():
    from nmx.kernels import packed_kv_from_cache

    for kw, phrase in ((dict(fmt="int4", group=32, sinks=4), "sinks"), (dict(fmt="int4", group=32, key_rope="pre"),
                       "rotated keys"), (dict(fmt="nvfp4", group=16), "not nvfp4"), (dict(fmt="int4", group=8),
                       "power-of-two group")):
        layer, _, _ = _kv_cache(**kw)
        with pytest.raises(InputError, match=phrase):
            packed_kv_from_cache(layer)


# ---- nmx bench decode ------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_bench_decode_refuses_without_a_gpu(capsys, monkeypatch):
    code, _, err = run_cli(["bench", "decode", "--config", "llama-2-7b", "--weights", "int4_g128"], capsys,
                           monkeypatch)
    assert code == 2 and err.count("\n") == 1 and "needs a CUDA GPU" in err and "--allow-cpu" in err


def test_bench_decode_cpu_smoke(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench.json"
    code, text, err = run_cli(["bench", "decode", "--config", "tiny", "--weights", "nvfp4", "--pattern", "2:4",
                               "--batch", "1,2", "--context", "24", "--tokens", "3", "--allow-cpu", "--out",
                               str(out)], capsys, monkeypatch)
    assert code == 0, err
    rec = json.loads(out.read_text())
    rows = {(r["variant"], r["batch"]): r for r in rec["rows"]}
    assert set(rows) == {("bf16", 1), ("bf16", 2), ("compressed", 1), ("compressed", 2)}
    assert all(r["finite"] and r["tokens_per_s"] > 0 and r["mode"] == "eager" for r in rows.values())
    assert rec["conversion"]["converted_layers"] == 14 and rec["compressed"]["pattern"] == "2:4"
    c = rows[("compressed", 1)]["bytes_per_step"]
    assert c["linear_weights"] < rows[("bf16", 1)]["bytes_per_step"]["linear_weights"] / 3
    assert "compressed  batch   2" in text


def test_bench_decode_small_ops_both_times_each_model_both_ways(tmp_path, capsys, monkeypatch):
    """--small-ops both: every model timed with transformers' small ops, then fused (rows "... fused-ops"), and the
    compressed model of a --config run (the same module, converted) starts unfused again."""
    out = tmp_path / "b.json"
    code, _, err = run_cli(["bench", "decode", "--config", "tiny", "--weights", "int4_g128", "--batch", "1",
                            "--context", "8", "--tokens", "2", "--allow-cpu", "--small-ops", "both", "--out", str(out)],
                           capsys, monkeypatch)
    assert code == 0, err
    rec = json.loads(out.read_text())
    assert [(r["variant"], r["small_ops"]) for r in rec["rows"]] == [
        ("bf16", "hf"), ("bf16 fused-ops", "fused"), ("compressed", "hf"), ("compressed fused-ops", "fused")]
    assert rec["fused_small_ops"]["norms"] > 0 and rec["fused_small_ops"]["rotary"] > 0
    code, _, err = run_cli(["bench", "decode", "--config", "tiny", "--small-ops", "all", "--allow-cpu"], capsys,
                           monkeypatch)
    assert code == 2 and "--small-ops" in err


def test_bench_decode_profile_counts_each_step_once(tmp_path, capsys, monkeypatch):
    """--profile N: every row gets the operators (kernels on a GPU) of one step, by class; the calls per step do
    not depend on how many steps were profiled."""
    from nmx.kernels.decode_bench import kernel_class

    recs = []
    for steps in (1, 2):
        out = tmp_path / f"bench{steps}.json"
        code, text, err = run_cli(["bench", "decode", "--config", "tiny", "--batch", "1", "--context", "16",
                                   "--tokens", "2", "--allow-cpu", "--profile", str(steps), "--out", str(out)],
                                  capsys, monkeypatch)
        assert code == 0, err
        recs.append(json.loads(out.read_text())["rows"][0]["profile"])
        assert "per step, busy" in text
    one, two = recs
    assert one["steps"] == 1 and two["steps"] == 2 and one["calls_per_step"] == two["calls_per_step"] > 0
    assert sum(c["calls_per_step"] for c in one["by_class"].values()) == pytest.approx(one["calls_per_step"])
    assert kernel_class("_gemv1_kernel") == "nmx linear" and kernel_class("_kv_decode_kernel") == "nmx KV attention"
    assert kernel_class("sm90_xmma_gemm_bf16bf16_bf16f32") == "cuBLAS / cuSPARSELt GEMM"
    # names from an H100 profile: cuDNN's SDPA kernels carry sm80_ too and are attention, not GEMMs
    assert kernel_class("cudnn_generated_fort_native_sdpa_sm80_flash_fprop_wmma_f16_knob_35_16x128x128") == \
        "SDPA attention"
    assert kernel_class("void cudnn::fusion::lean_reduction_kernel<false, false, false>(void*)") == "SDPA attention"
    assert kernel_class("nvjet_sm90_tst_64x8_64x16_2x1_v_bz_splitK_TNT") == "cuBLAS / cuSPARSELt GEMM"
    assert kernel_class("void at::native::vectorized_elementwise_kernel<4>") == "elementwise"
    code, _, err = run_cli(["bench", "decode", "--config", "tiny", "--profile", "-1", "--allow-cpu"], capsys,
                           monkeypatch)
    assert code == 2 and err.count("\n") == 1


def test_bench_decode_from_a_run_folder(tmp_path, tiny_model_dir, text_file, capsys, monkeypatch):
    recipe = _recipe(tmp_path, tiny_model_dir, text_file, sparsity={"method": "magnitude", "pattern": "2:4"},
                     quantization={"weights": "mxfp4"})
    code, _, err = run_cli(["run", str(recipe), "--out", str(tmp_path / "run"), "--save-model"], capsys, monkeypatch)
    assert code == 0, err
    code, _, err = run_cli(["bench", "decode", "--run", str(tmp_path / "run"), "--batch", "1", "--context", "8",
                            "--tokens", "2", "--allow-cpu", "--json"], capsys, monkeypatch)
    assert code == 0, err
    (tmp_path / "nomodel").mkdir()
    (tmp_path / "nomodel" / "result.json").write_text((tmp_path / "run" / "result.json").read_text())
    code, _, err = run_cli(["bench", "decode", "--run", str(tmp_path / "nomodel"), "--allow-cpu"], capsys, monkeypatch)
    assert code == 2 and "no model.safetensors" in err and err.count("\n") == 1
