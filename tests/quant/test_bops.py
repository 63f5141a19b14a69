"""BOPs = MACs x weight bits x activation bits, scale bits included. Oracle: hand arithmetic."""

import json

import pytest

from nmx.quant.bops import bops_block, linear_bops, operand_bits


def test_operand_bits_include_scales():
    assert operand_bits(None) == 16
    assert operand_bits("bfp_m7_g64") == 1 + 7 + 8 / 64  # sign + mantissa + shared E8M0 exponent
    assert operand_bits("int4_g128") == 4 + 16 / 128  # fp16 scale per 128
    assert operand_bits("mxfp4") == 4 + 8 / 32
    assert operand_bits("nvfp4") == 4 + 8 / 16  # (+ one fp32 per tensor, not per element)


def test_one_linear_by_hand():
    # 576 x 576 = 331776 MACs; int4_g128 = 4.125 bits; bfp_m7_g64 = 8.125 bits
    assert linear_bops(576, 576, "int4_g128", "bfp_m7_g64") == 331776 * 4.125 * 8.125 == 11119680.0
    b = bops_block({"a": {"shape": [576, 576], "weight_format": "int4_g128", "act_format": "bfp_m7_g64",
                          "tensor_type": "qkv"},
                    "b": {"shape": [10, 20], "weight_format": None, "act_format": None, "nonzero": 100}})
    assert b["per_token"] == 11119680.0 + 200 * 16 * 16
    assert b["a16_per_token"] == 331776 * 4.125 * 16 + 200 * 16 * 16
    assert b["reduction_vs_a16"] == pytest.approx(b["a16_per_token"] / b["per_token"])
    assert b["by_tensor_type"] == {"qkv": 11119680.0}
    assert b["layers"]["b"]["macs_per_token_nonzero"] == 100


def test_result_json_has_the_bops_block(tiny_model_dir, text_file, tmp_path):
    """Tiny Llama: hidden 64, intermediate 128, 4 heads of 16, 2 KV heads, 2 layers. MACs per layer:
    qkv 64*64 + 2*32*64 = 8192, o 4096, up (gate + up) 2*128*64 = 16384, down 8192; bf16 weights."""
    from nmx.recipe import load_recipe
    from nmx.runner import run

    acts = {"qkv": "bfp_m7_g64", "o": "bfp_m7_g64", "up": "bfp_m6_g64", "down": "bfp_m5_g64"}
    recipe = load_recipe(base={"model": str(tiny_model_dir), "quantization": {"activations": acts},
                               "evaluation": {"text": str(text_file), "seq_len": 64, "max_windows": 2}})
    run(recipe, tmp_path / "out")
    r = json.loads((tmp_path / "out" / "result.json").read_text())
    b = r["bops"]
    expect = 2 * 16 * (8192 * 8.125 + 4096 * 8.125 + 16384 * 7.125 + 8192 * 6.125)
    assert b["per_token"] == expect == 8536064
    assert b["a16_per_token"] == 2 * 16 * 16 * 36864
    assert b["by_tensor_type"]["down"] == 2 * 16 * 8192 * 6.125
    assert len(b["layers"]) == 14 and b["layers"]["model.layers.1.self_attn.k_proj"]["act_bits"] == 8.125
    assert r["recipe"]["quantization"]["activations"] == acts
    assert "hardware" in r  # the pricing reads the per-type formats too
