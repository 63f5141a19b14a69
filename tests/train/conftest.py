"""A tiny training recipe on the tiny random Llama (tests/model/conftest.py): seconds on a CPU."""

import pytest


@pytest.fixture
def recipe_dict(tiny_model_dir, text_file):
    """recipe_dict(**training) -> a recipe dict: the tiny Llama on the CPU, windows of 16 tokens, KD by default."""

    def make(sparsity=None, quantization=None, **training):
        t = {"steps": 4, "batch_size": 2, "seq_len": 16, "text": str(text_file), "lr": 1e-3, "eval_windows": 1,
             "warmup_steps": 1}
        t.update(training)
        d = {"model": str(tiny_model_dir), "device": "cpu",
             "evaluation": {"text": str(text_file), "seq_len": 32, "max_windows": 2}, "training": t}
        if sparsity is not None:
            d["sparsity"] = sparsity
        if quantization is not None:
            d["quantization"] = quantization
        return d

    return make


@pytest.fixture
def recipe_of(recipe_dict):
    from nmx.recipe import load_recipe

    return lambda **kw: load_recipe(base=recipe_dict(**kw))
