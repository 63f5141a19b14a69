"""The co-design loop on a tiny random Llama: sources, calibration, pruning, quantization, perplexity."""

import json
import math

import pytest
import torch

from nmx.errors import InputError
from nmx.eval.perplexity import perplexity
from nmx.eval.text import Text, load_text
from nmx.model import load_model
from nmx.model.calibrate import capture_first_layer_inputs, run_layer
from nmx.model.layers import decoder_layers
from nmx.recipe import load_recipe
from nmx.runner import run
from tests.model.conftest import char_tokenizer, tiny_llama


def test_perplexity_matches_a_hand_computed_value():
    """Oracle: the NLL of each window computed token by token with log_softmax in float64."""
    model, tok = tiny_llama(), char_tokenizer()
    text = Text("t", "abcdefghij" * 5, "mem", "as is")
    r = perplexity(model, tok, text, seq_len=16, max_windows=None)
    ids = tok(text.text, return_tensors="pt").input_ids[0]
    total, count = 0.0, 0
    for w in range(ids.numel() // 16):
        window = ids[w * 16:(w + 1) * 16]
        with torch.no_grad():
            logp = torch.log_softmax(model(window[None]).logits[0].double(), -1)
        for t in range(1, 16):
            total -= logp[t - 1, window[t]].item()
            count += 1
    assert r["eval_tokens"] == count == 3 * 15
    assert r["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert r["protocol"]["windows"] == 3 and r["protocol"]["stride"] == 16


def test_text_too_short_for_one_window():
    model, tok = tiny_llama(), char_tokenizer()
    with pytest.raises(InputError, match="fewer than one window"):
        perplexity(model, tok, Text("t", "abc", "mem", "as is"), seq_len=16)
    with pytest.raises(InputError, match="empty"):
        perplexity(model, tok, Text("t", "", "mem", "as is"), seq_len=16)


def test_text_sources(tmp_path, monkeypatch):
    t = load_text("wikitext-2")  # from NMX_DATA_DIR where the test conftest finds the shared data, else embedded
    assert t.text.startswith("\n\n = Robert Boulter = \n")
    assert "wiki.test.raw" in t.source or t.source.startswith("embedded:")
    f = tmp_path / "x.txt"
    f.write_text("hello")
    assert load_text(str(f)).text == "hello"
    monkeypatch.setenv("NMX_DATA_DIR", str(tmp_path))  # nothing there: the embedded copy answers
    embedded = load_text("wikitext-2")
    assert embedded.source.startswith("embedded:") and embedded.text == t.text
    bad = tmp_path / "bin.txt"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="not UTF-8"):
        load_text(str(bad))


def test_sequential_calibration_reproduces_the_full_forward():
    """Feeding layer outputs forward one layer at a time gives the same hidden states as the model."""
    model, tok = tiny_llama(layers=3), char_tokenizer()
    samples = tok(["hello world, quick fox!"] * 2, return_tensors="pt").input_ids
    inputs, kwargs = capture_first_layer_inputs(model, samples)
    _, layers = decoder_layers(model)
    for layer in layers:
        inputs = run_layer(layer, inputs, kwargs)
    with torch.no_grad():
        ref = model.model(samples[:1]).last_hidden_state
    assert torch.allclose(model.model.norm(inputs[0]), ref, atol=1e-5)


def test_local_folder_source(tiny_model_dir):
    m = load_model(str(tiny_model_dir))
    assert m.source["kind"] == "local" and m.n_params > 0
    with pytest.raises(InputError, match="does not exist"):
        load_model(str(tiny_model_dir / "nope"))
    with pytest.raises(InputError, match="no config.json"):
        load_model(str(tiny_model_dir.parent))


def test_corrupt_gguf_is_one_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 40)  # a header and then nothing
    with pytest.raises(InputError, match="cannot read .* as a GGUF model"):
        load_model(str(bad))
    with pytest.raises(InputError, match="not found"):
        load_model(str(tmp_path / "missing.gguf"))


def recipe_for(model_dir, text_file, **sections):
    base = {"model": str(model_dir),
            "calibration": {"text": str(text_file), "samples": 4, "seq_len": 32, "seed": 0},
            "evaluation": {"text": str(text_file), "seq_len": 64, "max_windows": 4}}
    base.update(sections)
    return load_recipe(base=base)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "50%"])
def test_prune_run(tiny_model_dir, text_file, tmp_path, method, pattern):
    recipe = recipe_for(tiny_model_dir, text_file, sparsity={"method": method, "pattern": pattern})
    r = run(recipe, tmp_path / "out")
    assert abs(r["weight_sparsity"] - 0.5) < 0.01 and r["masks_valid"]
    assert math.isfinite(r["perplexity"])
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    for key in ("perplexity", "eval_tokens", "weight_sparsity", "bits_per_weight", "protocol", "recipe", "wall_s",
                "versions"):
        assert key in saved
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "recipe.yaml").is_file()


def test_dense_run_counts_bf16(tiny_model_dir, text_file):
    r = run(recipe_for(tiny_model_dir, text_file))
    assert r["weight_sparsity"] < 0.01 and r["bits_per_weight"] == 16


def test_wanda_beats_magnitude_and_quantization_composes(tiny_model_dir, text_file):
    dense = run(recipe_for(tiny_model_dir, text_file))["perplexity"]
    r = run(recipe_for(tiny_model_dir, text_file, sparsity={"method": "wanda", "pattern": "2:4"},
                       quantization={"weights": "mxfp4"}))
    # 2:4 values at 4 bits + 3-bit combinatorial index per 4 + an 8-bit scale per 32 = 2 + 0.75 + 0.25
    assert r["bits_per_weight"] == pytest.approx(3.0)
    assert r["perplexity"] > dense * 0.9  # a random tiny model barely cares, but it must run


def test_weight_and_activation_quantization(tiny_model_dir, text_file):
    r = run(recipe_for(tiny_model_dir, text_file, quantization={"weights": "nvfp4", "activations": "nvfp4"}))
    assert r["activation_hooks"] > 0 and r["bits_per_weight"] == pytest.approx(4.5, abs=0.01)


def test_bad_recipes_name_the_field_and_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model: smollm2-135m\nsparsity:\n  method: wanda\n  patern: '2:4'\n")
    with pytest.raises(InputError, match=r"line 4: sparsity.patern: unknown key; did you mean 'pattern'"):
        load_recipe(p)
    p.write_text("sparsity: {method: wandaa}\n")
    with pytest.raises(InputError, match=r"line 1: sparsity.method: .*wanda"):
        load_recipe(p)
    p.write_text("sparsity:\n  pattern: '4:2'\n")
    with pytest.raises(InputError, match=r"line 2: sparsity.pattern"):
        load_recipe(p)
    p.write_text("quantization: {weights: mxfp5}\n")
    with pytest.raises(InputError, match="mxfp4"):
        load_recipe(p)
    with pytest.raises(InputError, match="not found"):
        load_recipe(tmp_path / "none.yaml")
    p.write_text("model: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_recipe(p)


def test_set_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("sparsity: {method: wanda, pattern: '2:4'}\n")
    r = load_recipe(p, ["sparsity.pattern=4:8", "evaluation.max_windows=3", "quantization.weights=mxfp4"])
    assert r.sparsity.pattern == "4:8" and r.evaluation.max_windows == 3 and r.quantization.weights == "mxfp4"
    with pytest.raises(InputError, match="unknown key"):
        load_recipe(p, ["sparsity.bogus=1"])
    with pytest.raises(InputError, match="key.path=value"):
        load_recipe(p, ["nonsense"])


def test_unquoted_nm_patterns_are_not_base_60_integers(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("sparsity: {method: wanda, pattern: 2:4}\n")  # YAML 1.1 would read 124
    assert load_recipe(p).sparsity.pattern == "2:4"


def test_sparsegpt_joint_with_a_format_lands_on_its_grid(tiny_model_dir, text_file):
    from nmx import formats
    from nmx.model.layers import match_linears
    from nmx.model.sources import load_model as load

    loaded = load(str(tiny_model_dir))
    recipe = recipe_for(tiny_model_dir, text_file, sparsity={"method": "sparsegpt", "pattern": "2:4"},
                        quantization={"weights": "mxfp4"})
    r = run(recipe, loaded=loaded)
    assert r["masks_valid"] and r["weight_sparsity"] >= 0.5
    for linear in match_linears(loaded.model, ["*.mlp.*_proj"]).values():
        w = linear.weight.detach()
        assert torch.equal(formats.get("mxfp4").quantize(w), w)


def test_unstructured_bits_use_unstructured_storage(tiny_model_dir, text_file):
    r = run(recipe_for(tiny_model_dir, text_file, sparsity={"method": "magnitude", "pattern": "50%"}))
    assert {x["storage"] for x in r["layers"].values()} == {"bitmap"}
    assert r["bits_per_weight"] == pytest.approx(0.5 * 16 + 1)  # values + a 1-bit mask


def test_a_run_folder_is_priced_with_its_real_storage(tiny_model_dir, text_file, tmp_path):
    """The hardware workload reads `nmx run`'s folder: the model's shapes and each linear's real bits."""
    from nmx.hw.gpu import llm_cost
    from nmx.hw.workload import llm_workload

    r = run(recipe_for(tiny_model_dir, text_file, sparsity={"method": "wanda", "pattern": "2:4"},
                       quantization={"weights": "mxfp4"}), out=tmp_path / "run")
    w = llm_workload(tmp_path / "run", "decode", context=8)
    assert w.model.parameters == r["model"]["parameters"]
    gemms = {op.name: op for op in w.ops if op.kind == "gemm"}
    up = gemms["mlp.up_proj"]
    real = [x["bits"] for name, x in r["layers"].items() if name.endswith("mlp.up_proj")]
    assert up.weight_bytes == pytest.approx(sum(real) / len(real) / 8)
    assert up.weight_format == "mxfp4" and up.pattern == "2:4"
    assert llm_cost("h200", w)["latency_s"] > 0
    # and `nmx explore --results`: perplexity next to the cost on an accelerator, dense vs compressed
    from pathlib import Path

    from nmx.hw.accel_spec import load_accel
    from nmx.hw.explore import accuracy_vs_cost

    run(recipe_for(tiny_model_dir, text_file), out=tmp_path / "dense")
    spec = load_accel(Path(__file__).resolve().parents[2] / "examples" / "hw" / "nm24_16x16_ws.yaml")
    dense_row, sparse_row = accuracy_vs_cost([tmp_path / "dense", tmp_path / "run"], spec)
    assert sparse_row["perplexity"] == r["perplexity"]
    # the tiny model is mostly embedding and LM head (untargeted): fewer bytes, not 5x fewer
    assert sparse_row["dram_bytes"] < dense_row["dram_bytes"] and sparse_row["energy_pj"] < dense_row["energy_pj"]


def test_the_cache_goes_under_the_keyword_the_model_takes():
    """transformers >= 5.2x calls it `cache`, earlier `past_key_values`; a wrong name is silently dropped."""
    from nmx.model.layers import with_cache

    class New(torch.nn.Module):
        def forward(self, input_ids, cache=None, use_cache=None, **kwargs):
            return cache

    class Old(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=None, **kwargs):
            return past_key_values

    marker = object()
    for model in (New(), Old(), tiny_llama()):
        kw = with_cache(model, marker)
        assert kw["use_cache"] is True and marker in kw.values()
    assert New()(None, **with_cache(New(), marker)) is marker and Old()(None, **with_cache(Old(), marker)) is marker
