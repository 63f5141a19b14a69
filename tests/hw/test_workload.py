"""nmx.hw.workload: shapes, bytes and FLOPs of an LLM step, against hand counts and published sizes."""

import json

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from nmx.errors import InputError
from nmx.hw.workload import (
    PRESETS,
    Compression,
    ModelShape,
    attention_op,
    gemm_op,
    llm_workload,
    resolve_model,
    shape_from_config,
)


def test_preset_parameter_counts_match_the_published_models():
    # SmolLM2-135M-Instruct as loaded by nmx (issue 3) and Llama-2-7B's published 6,738,415,616
    assert PRESETS["smollm2-135m"].parameters == 134_515_008
    assert PRESETS["llama-2-7b"].parameters == 6_738_415_616


def tiny_config(**kw):
    base = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=128, tie_word_embeddings=False)
    return LlamaConfig(**{**base, **kw})


def test_shape_from_a_transformers_config_counts_the_real_model():
    cfg = tiny_config()
    shape = shape_from_config(cfg, name="tiny")
    model = LlamaForCausalLM(cfg)
    assert shape.parameters == sum(p.numel() for p in model.parameters())
    assert (shape.heads_q, shape.heads_kv, shape.head_dim) == (4, 2, 16)
    # each linear's (out, in) is the real module's weight shape
    for name, (out, inp) in shape.linears().items():
        assert tuple(model.get_submodule(f"model.layers.0.{name}").weight.shape) == (out, inp)


def test_shape_from_a_config_file_and_bad_configs(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    assert resolve_model(tmp_path)[0].hidden == 64
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(InputError, match="intermediate_size"):
        resolve_model(tmp_path)
    with pytest.raises(InputError, match="unknown model"):
        resolve_model("no-such-model")
    with pytest.raises(InputError, match="multiple"):
        ModelShape("x", 64, 64, 1, 6, 4, 16, 10)


def test_dense_decode_reads_every_weight_once_in_bf16():
    w = llm_workload("llama-2-7b", "decode", batch=1, context=100)
    s = PRESETS["llama-2-7b"]
    linear = sum(o * i for o, i in s.linears().values()) * s.layers + s.vocab * s.hidden
    assert w.total("weight_bytes") == 2 * linear
    gemm = [op for op in w.ops if op.kind == "gemm"]
    assert all(op.m == 1 for op in gemm)
    assert w.total("flops") > 2 * linear  # plus attention and norms


def test_gemm_bytes_of_24_nvfp4_by_hand():
    # 64x64 weight, 2:4, nvfp4: 2048 kept values x 4 bits = 8192; index: the combinatorial code
    # takes ceil(log2 C(4,2)) = 3 bits per group of 4 (1024 groups) = 3072 (smaller than 2x2 bits);
    # scales: one UE4M3 byte per 16 weights of the dense layout (256 blocks) = 2048, + a 32-bit tensor scale
    op = gemm_op("w", m=3, n=64, k=64, weights="nvfp4", pattern="2:4")
    assert op.weight_bytes * 8 == 8192 + 3072 + 2048 + 32
    assert op.flops == 2 * 3 * 64 * 64
    assert op.bytes_read == op.weight_bytes + 3 * 64 * 2 and op.bytes_written == 3 * 64 * 2


def test_attention_by_hand():
    # decode: batch 2, cache of 9 + 1 new token, 4 query heads over 2 KV heads, d = 8
    op = attention_op("a", batch=2, q_len=1, kv_len=10, heads_q=4, heads_kv=2, head_dim=8)
    assert op.flops == 2 * 2 * (2 * 4 * 1 * 10 * 8)  # QK^T and PV
    assert op.kv_bytes_read == 2 * 2 * 2 * 9 * 8 * 2  # K and V, batch, heads, cached tokens, d, bf16
    assert op.kv_bytes_written == 2 * 2 * 2 * 1 * 8 * 2
    causal = attention_op("a", 1, 4, 4, 1, 1, 8, causal=True)
    assert causal.flops == 4 * 10 * 8  # 4 + 3 + 2 + 1 query-key pairs
    with pytest.raises(InputError, match="q_len"):
        attention_op("a", 1, 5, 4, 1, 1, 8)


def test_kv_bytes_per_token_with_and_without_a_format():
    s = PRESETS["smollm2-135m"]
    assert llm_workload(s).kv_bytes_per_token == 30 * 2 * 3 * 64 * 2
    # int4 with a fp16 scale per group of 32 along head_dim: 64 x 4 bits + 2 scales x 16 bits per head
    w = llm_workload(s, compression=Compression(kv_format="int4_g32"))
    assert w.kv_bytes_per_token == 30 * 2 * 3 * (64 * 4 + 2 * 16) / 8


def test_targets_limit_the_compression_to_the_matching_linears():
    comp = Compression(weights="mxfp4", targets=("*.mlp.*_proj",))
    w = llm_workload("smollm2-135m", compression=comp)
    fmts = {op.name: op.weight_format for op in w.ops if op.kind == "gemm"}
    assert fmts["mlp.up_proj"] == "mxfp4" and fmts["self_attn.q_proj"] is None and fmts["lm_head"] is None
    with pytest.raises(Exception, match="nope"):
        Compression(weights="nope")


def test_a_result_folder_gives_the_recipe_and_the_real_storage(tmp_path):
    layers = {f"model.layers.{i}.mlp.up_proj": {"bits": 1000.0 + i} for i in range(30)}
    result = {"recipe": {"model": "smollm2-135m", "sparsity": {"pattern": "2:4", "targets": ["*.mlp.*_proj"]},
                         "quantization": {"weights": "mxfp4"}}, "layers": layers}
    (tmp_path / "result.json").write_text(json.dumps(result))
    w = llm_workload(tmp_path, "decode")
    up = next(op for op in w.ops if op.name == "mlp.up_proj")
    assert up.weight_bytes == pytest.approx((1000 + 14.5) / 8)  # the mean over the 30 layers
    assert up.pattern == "2:4" and up.weight_format == "mxfp4"
    q = next(op for op in w.ops if op.name == "self_attn.q_proj")
    assert q.weight_format is None


def test_bad_arguments():
    with pytest.raises(InputError, match="phase"):
        llm_workload("llama-2-7b", "train")
    with pytest.raises(InputError, match="batch"):
        llm_workload("llama-2-7b", batch=0)


def test_prefill_is_causal_and_uses_all_tokens():
    w = llm_workload("smollm2-135m", "prefill", batch=2, tokens=16)
    att = next(op for op in w.ops if op.kind == "attention")
    assert att.causal and att.q_len == att.kv_len == 16 and att.kv_bytes_read == 0
    assert next(op for op in w.ops if op.name == "mlp.up_proj").m == 32
