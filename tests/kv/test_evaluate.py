"""nmx.kv.evaluate on the tiny random Llama with the character tokenizer. Oracles: transformers'
`generate` (greedy) for both decoding loops, hand-computed divergence / match rates, the bit-identical
cache round trip (a policy that compresses nothing agrees everywhere), and the prompt text itself."""

import random

import pytest
import torch

from nmx.errors import InputError
from nmx.kv import KVCache, KVPolicy
from nmx.kv.evaluate import answer_key, compare_tokens, generation_agreement, passkey, passkey_prompt
from tests.kv.conftest import kv_llama
from tests.model.conftest import char_tokenizer

PROMPTS = ["The quick brown fox jumps over the lazy dog. Pack my box", "Sphinx of black quartz, judge my vow! How"]
STREAM = KVPolicy.from_dict({"evict": {"method": "streaming", "sinks": 4, "budget": 16}, "full_precision": "model"})


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def test_compare_tokens_hand_computed():
    assert compare_tokens([1, 2, 3, 4], [1, 2, 9, 4]) == (2, 0.75)
    assert compare_tokens([5, 6], [5, 6]) == (2, 1.0)
    assert compare_tokens([5, 6, 7], [0, 6, 0]) == (0, pytest.approx(1 / 3))
    with pytest.raises(ValueError):
        compare_tokens([1], [1, 2])


def test_a_cache_that_compresses_nothing_agrees_everywhere(tok):
    model = kv_llama()
    out = generation_agreement(model, tok, PROMPTS, KVPolicy(full_precision="model"), max_new_tokens=10)
    assert out["overall"]["match_rate"] == 1.0 and out["overall"]["identical"] == 2
    assert [p["first_divergence"] for p in out["prompts"]] == [10, 10]


def test_both_loops_equal_transformers_generate(tok):
    """The full and the compressed generation each equal greedy `generate` with that cache."""
    model = kv_llama(sharp=True)
    out = generation_agreement(model, tok, PROMPTS, STREAM, max_new_tokens=12)
    kw = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0, "min_new_tokens": 12}
    for prompt, row in zip(PROMPTS, out["prompts"], strict=True):
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            ref = model.generate(ids, **kw)[0, ids.shape[1]:].tolist()
            comp = model.generate(ids, cache=KVCache(STREAM, model), **kw)[0, ids.shape[1]:].tolist()
        assert list(row["full"]) == ref and list(row["compressed"]) == comp
        assert (row["first_divergence"], row["match_rate"]) == compare_tokens(ref, comp)
        assert row["prompt_tokens"] == ids.shape[1] > 16  # so the budget of 16 really evicts
    rates = [p["match_rate"] for p in out["prompts"]]
    assert out["overall"]["match_rate"] == pytest.approx(sum(rates) / 2)
    # 16 kept fp32 tokens x 2 layers x 2 KV heads x 32 dims x (K, V) over the tokens fed (the last one never is)
    for row in out["prompts"]:
        assert row["kv_bytes_per_token"] == 16 * 2 * 2 * 32 * 2 * 4 / (row["prompt_tokens"] + 11)


def test_attention_methods_switch_to_eager_and_back(tok):
    model = kv_llama(attn="sdpa")
    policy = KVPolicy.from_dict({"evict": {"method": "h2o", "budget": 16}})
    out = generation_agreement(model, tok, PROMPTS[:1], policy, max_new_tokens=4, chunk=8)
    assert out["overall"]["prompts"] == 1 and out["overall"]["chunk"] == 8
    assert model.config._attn_implementation == "sdpa"


def test_passkey_prompt_places_the_key_at_its_depth(tok):
    """Character tokenizer: one token per character, so lengths and positions are exact counts."""
    positions = []
    for depth in (0.0, 0.5, 1.0):
        p = passkey_prompt(tok, 400, depth, "12345", random.Random(0))
        text = "".join(tok.convert_ids_to_tokens(p.context[0].tolist()))
        assert text.count("12345") == 2 and "The pass key is 12345." in text
        assert 400 - 60 <= p.tokens <= 400  # filler sentences are whole: at most one sentence short
        positions.append(p.needle_token)
    assert positions[0] < positions[1] < positions[2]


def test_passkey_is_seeded_and_summarises_its_rows(tok):
    model = kv_llama(layers=1)
    kw = {"depths": (0.0, 1.0), "lengths": (300,), "seed": 3, "answer_tokens": 3}
    a = passkey(model, tok, STREAM, **kw)
    b = passkey(model, tok, STREAM, **kw)
    assert [r["key"] for r in a["rows"]] == [r["key"] for r in b["rows"]]
    assert [r["answer"] for r in a["rows"]] == [r["answer"] for r in b["rows"]]
    assert [r["key"] for r in passkey(model, tok, None, **{**kw, "seed": 4})["rows"]] != [r["key"] for r in a["rows"]]
    for field, acc in (("correct", a["accuracy"]), ("full_correct", a["baseline_accuracy"])):
        flags = [r[field] for r in a["rows"]]
        assert acc["overall"] == sum(flags) / len(flags)
        assert acc["by_depth"] == {"0.0": float(flags[0]), "1.0": float(flags[1])}
    assert passkey(model, tok, STREAM, baseline=False, **kw)["baseline_accuracy"] is None


def test_answer_key_reads_the_first_five_digits():
    assert answer_key(" 48213. Remember") == "48213"
    assert answer_key("the key 123 is 987654") == "98765"
    assert answer_key("no number") is None


@pytest.mark.parametrize("call, match", [
    (lambda m, t: generation_agreement(m, t, PROMPTS, STREAM, max_new_tokens=0), "max_new_tokens"),
    (lambda m, t: generation_agreement(m, t, [], STREAM), "at least one prompt"),
    (lambda m, t: generation_agreement(m, t, PROMPTS, {"evict": {}}), "KVPolicy"),
    (lambda m, t: passkey(m, t, STREAM, depths=(1.5,), lengths=(300,)), "depth"),
    (lambda m, t: passkey(m, t, STREAM, lengths=(40,)), "no room for filler"),
    (lambda m, t: passkey(m, t, STREAM, lengths=(300,), chunk=0), "chunk"),
])
def test_bad_input_is_refused(tok, call, match):
    with pytest.raises(InputError, match=match):
        call(kv_llama(layers=1), tok)
