"""The recipe's kv_cache section and `nmx run` with it, on the shared tiny Llama (head_dim 16)."""

import json
import logging
import math
import subprocess
import sys

import pytest

from nmx.errors import InputError
from nmx.recipe import load_recipe
from nmx.runner import run
from tests.model.conftest import TEXT, char_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("kv-tiny-llama")
    tiny_llama().save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    (path / "text.txt").write_text(TEXT)
    return path


def recipe(model_dir, **sections):
    base = {"model": str(model_dir), "device": "cpu",
            "evaluation": {"text": str(model_dir / "text.txt"), "seq_len": 64, "max_windows": 2}}
    base.update(sections)
    return load_recipe(base=base)


def test_every_result_reports_kv_bytes_per_token(model_dir, tmp_path):
    dense = run(recipe(model_dir))
    assert dense["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 2  # layers * (K, V) * kv heads * head_dim * bf16
    assert dense["protocol"]["cache_chunk"] is None
    kv = {"quant": {"format": "int4", "group": 16, "residual": 16, "sinks": 4},
          "evict": {"method": "streaming", "sinks": 4, "budget": 40}, "chunk": 8}
    r = run(recipe(model_dir, kv_cache=kv), out=tmp_path / "kv")
    assert math.isfinite(r["perplexity"]) and r["eval_tokens"] == dense["eval_tokens"]
    # at the end of a 64-token window: 40 kept, at most 16 + 16 + 15 of them in bf16, the rest in int4 pages
    assert 0.2 * dense["kv_bytes_per_token"] < r["kv_bytes_per_token"] < 40 / 64 * dense["kv_bytes_per_token"]
    assert r["protocol"]["cache_chunk"] == 8 and r["recipe"]["kv_cache"]["evict"]["budget"] == 40
    saved = json.loads((tmp_path / "kv" / "result.json").read_text())
    assert saved["kv_bytes_per_token"] == r["kv_bytes_per_token"]
    assert "streaming eviction to 40 tokens" in (tmp_path / "kv" / "report.md").read_text()


def test_uncompressed_cache_reproduces_the_plain_evaluation(model_dir):
    plain = run(recipe(model_dir))
    cached = run(recipe(model_dir, kv_cache={"full_precision": "model", "chunk": 16}))
    assert cached["perplexity"] == pytest.approx(plain["perplexity"], rel=1e-5)
    assert cached["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # stored at the model's float32


def test_run_switches_to_eager_attention_for_scoring_methods(model_dir, caplog):
    from nmx.model import load_model

    loaded = load_model(str(model_dir), "cpu")
    loaded.model.set_attn_implementation("sdpa")
    with caplog.at_level(logging.WARNING):
        r = run(recipe(model_dir, kv_cache={"evict": {"method": "h2o", "budget": 32}, "merge": True, "chunk": 16}),
                loaded=loaded)
    assert math.isfinite(r["perplexity"]) and "switching the model from sdpa to eager" in caplog.text
    assert loaded.model.config._attn_implementation == "sdpa"  # put back


@pytest.mark.parametrize("yaml_text, message", [
    ("kv_cache:\n  evict:\n    method: streaming\n    window: 4\n    budget: 6\n",
     r"line 5: kv_cache.evict.budget: 6 tokens is smaller than sinks \+ window \(4 \+ 4\)"),
    ("kv_cache:\n  evict: {method: h2p, budget: 8}\n", r"kv_cache.evict.method: .*did you mean 'h2o'"),
    ("kv_cache:\n  evict: {method: streaming}\n", r"kv_cache.evict: .*exactly one of budget"),
    ("kv_cache:\n  quant: {format: e8m0}\n", r"kv_cache.quant.format: e8m0 cannot store negative numbers"),
    ("kv_cache:\n  quant: {format: mxfp4, group: 48}\n", r"kv_cache.quant: .*group 48 is not a multiple of mxfp4"),
    ("kv_cache:\n  quant: {format: int4, key_axis: row}\n", r"kv_cache.quant.key_axis"),
    ("evaluation: {seq_len: 256}\nkv_cache:\n  quant:\n    format: int4\n    residual: 512\n",
     r"line 5: kv_cache.quant.residual: .*exceeds the evaluation.seq_len of 256 tokens"),
    ("kv_cache: {merge: true}\n", r"kv_cache: merge folds evicted tokens, so it needs an evict section"),
    ("kv_cache:\n  quant: {format: int4, residul: 8}\n",
     r"kv_cache.quant.residul: unknown key; did you mean 'residual'"),
    ("kv_cache: {full_precision: fp8}\n", r"kv_cache.full_precision"),
])
def test_bad_kv_cache_sections_name_the_field(tmp_path, yaml_text, message):
    p = tmp_path / "r.yaml"
    p.write_text(yaml_text)
    with pytest.raises(InputError, match=message):
        load_recipe(p)


def test_overrides_and_the_cli_exit_code(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("kv_cache:\n  quant: {format: int4}\n  evict: {method: streaming, budget: 512}\n")
    r = load_recipe(p, ["kv_cache.evict.budget=256", "kv_cache.quant.group=64"])
    policy = r.kv_cache.to_policy()
    assert policy.evict.budget == 256 and policy.quant.chunk == 64 and policy.quant.key_axis == "channel"
    p.write_text("kv_cache:\n  evict: {method: snapkv, budget: 8, window: 8, sinks: 4}\n")
    done = subprocess.run([sys.executable, "-m", "nmx", "run", str(p)], capture_output=True, text=True)
    assert done.returncode == 2 and "kv_cache.evict.budget" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
