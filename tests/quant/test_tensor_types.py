"""Tensor types (qkv, o, up, down) resolved from a model's structure and dataflow, and per-type
activation formats landing on the right linears.

Oracle: the architectures' source code (which projection reads which tensor) -- Llama/Qwen2:
q/k/v_proj read the attention input, o_proj the attention output, gate/up_proj the FFN input,
down_proj the intermediate; OPT: q/k/v_proj, out_proj, fc1, fc2; GPT-NeoX: the fused
query_key_value, dense, dense_h_to_4h, dense_4h_to_h. The resolver never sees these names."""

import pytest
import torch

from nmx.errors import InputError
from nmx.quant.tensor_types import activation_formats, check_activation_spec, resolve_tensor_types
from nmx.recipe import load_recipe
from tests.model.conftest import tiny_llama


def _opt():
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(vocab_size=50, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                    max_position_embeddings=64, word_embed_proj_dim=32)
    return OPTForCausalLM(cfg).eval()


def _neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                        num_attention_heads=4, max_position_embeddings=64)
    return GPTNeoXForCausalLM(cfg).eval()


def test_tiny_llama_types():
    t = resolve_tensor_types(tiny_llama())
    assert t.prefix == "model.layers" and t.layers == 2
    assert set(t.members["qkv"]) == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}
    assert t.members["o"] == ("self_attn.o_proj",)
    assert set(t.members["up"]) == {"mlp.gate_proj", "mlp.up_proj"}
    assert t.members["down"] == ("mlp.down_proj",)
    assert t.type_of("model.layers.1.mlp.down_proj") == "down" and t.type_of("lm_head") is None


@pytest.mark.parametrize("build, expect", [
    (_opt, {"qkv": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}, "o": {"self_attn.out_proj"},
            "up": {"fc1"}, "down": {"fc2"}}),
    (_neox, {"qkv": {"attention.query_key_value"}, "o": {"attention.dense"}, "up": {"mlp.dense_h_to_4h"},
             "down": {"mlp.dense_4h_to_h"}}),
])
def test_other_architectures(build, expect):
    model = build()
    t = resolve_tensor_types(model)
    assert {k: set(v) for k, v in t.members.items()} == expect
    assert len(t.linears("qkv")) == t.layers * len(expect["qkv"])


def test_per_type_formats_land_on_the_right_linears():
    model = tiny_llama()
    spec = {"qkv": "bfp_m7_g64", "o": "bfp_m6_g64", "up": "bfp_m5_g64", "down": "bfp_m4_g64"}
    got = activation_formats(model, spec, None)
    assert len(got) == 2 * 7
    for layer in range(2):
        p = f"model.layers.{layer}."
        for n in ("q_proj", "k_proj", "v_proj"):
            assert got[p + "self_attn." + n] == "bfp_m7_g64"
        assert got[p + "self_attn.o_proj"] == "bfp_m6_g64"
        assert got[p + "mlp.gate_proj"] == got[p + "mlp.up_proj"] == "bfp_m5_g64"
        assert got[p + "mlp.down_proj"] == "bfp_m4_g64"
    # a glob overrides a type on the linears it matches; targets restrict the types
    got = activation_formats(model, {"down": "bfp_m4_g64", "*.1.mlp.down_proj": "int8"}, None)
    assert got == {"model.layers.0.mlp.down_proj": "bfp_m4_g64", "model.layers.1.mlp.down_proj": "int8"}
    got = activation_formats(model, {"qkv": "int8"}, ["*.0.self_attn.*"])
    assert sorted(got) == [f"model.layers.0.self_attn.{n}_proj" for n in "kqv"]
    # one format string keeps meaning "every targeted linear"
    assert len(activation_formats(model, "int8", ["*.mlp.*_proj"])) == 6


def test_hooks_quantize_each_type_with_its_format(tiny_model_dir, text_file):
    """Oracle: the input each hook passes on equals the format's quantize() of the input it got."""
    from nmx.model import load_model
    from nmx.model.compress import compress
    from nmx import formats

    loaded = load_model(str(tiny_model_dir), "cpu")
    recipe = load_recipe(base={"model": str(tiny_model_dir),
                               "quantization": {"activations": {"qkv": "bfp_m7_g64", "down": "bfp_m2_g64"}},
                               "evaluation": {"text": str(text_file), "seq_len": 32}})
    record = compress(loaded, recipe)
    assert record["activation_hooks"] == 2 * 4
    modules = dict(loaded.model.named_modules())
    seen = {}
    for name in ("model.layers.0.self_attn.k_proj", "model.layers.1.mlp.down_proj", "model.layers.0.mlp.up_proj"):
        modules[name].register_forward_pre_hook(lambda _m, a, n=name: seen.__setitem__(n, a[0].detach().clone()))
    with torch.no_grad():
        loaded.model(torch.arange(2, 20)[None])
    k, down, up = (seen[n] for n in ("model.layers.0.self_attn.k_proj", "model.layers.1.mlp.down_proj",
                                     "model.layers.0.mlp.up_proj"))
    assert torch.equal(k, formats.get("bfp_m7_g64").quantize(k))
    assert torch.equal(down, formats.get("bfp_m2_g64").quantize(down))
    assert not torch.equal(up, formats.get("bfp_m2_g64").quantize(up))  # untouched: not a quantized type
    assert record["bops"]["layers"]["model.layers.0.mlp.down_proj"]["tensor_type"] == "down"


def test_bad_specs_are_refused_when_the_recipe_loads():
    with pytest.raises(InputError, match="unknown tensor type 'qvk'"):
        load_recipe(base={"quantization": {"activations": {"qvk": "bfp_m7_g64"}}})
    with pytest.raises(InputError, match=r"quantization.activations: up: .*bfp_m99_g64"):
        load_recipe(base={"quantization": {"activations": {"up": "bfp_m99_g64"}}})
    with pytest.raises(InputError, match="quantization.activations"):
        load_recipe(base={"quantization": {"activations": {}}})
    r = load_recipe(base={"quantization": {"activations": {"qkv": "bfp_m7_g64", "*.mlp.down_proj": "int8"}}})
    assert r.quantization.activations["qkv"] == "bfp_m7_g64"
    assert check_activation_spec("mxfp4") == "mxfp4"


def test_a_model_without_separable_types_is_refused():
    class TwoLinears(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 1})()
            self.layers = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))])
            self.emb = torch.nn.Embedding(5, 4)

        def forward(self, input_ids, use_cache=False):
            return self.layers[0](self.emb(input_ids))

    with pytest.raises(InputError, match="tensor types"):
        resolve_tensor_types(TwoLinears())
