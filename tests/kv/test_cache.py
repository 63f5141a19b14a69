"""KVCache on a tiny random Llama: the transformers Cache contract, eviction inside the model, quantized
storage, and generate. Oracles: transformers' DynamicCache (bit for bit when nothing is compressed),
a full forward with a hand-built 4D mask (eviction), the eager attention maps (which tokens a method
keeps), and Format.quantize (what the pages hold)."""

import pytest
import torch
from transformers import DynamicCache

from nmx import formats
from nmx.errors import InputError
from nmx.kv import EvictSpec, KVCache, KVPolicy, QuantSpec, attention_for, get_method, keep_mask
from nmx.kv.evict import ScoreInput
from tests.conftest import assert_bitwise_equal
from tests.kv.conftest import kv_llama

FULL = KVPolicy(full_precision="model")


def steps(model, ids, cache, cuts=(20, 21, 22, 23, 33)):
    """Prefill ids[:20], then three single tokens, a chunk of 10 and the rest: logits of each forward."""
    out, start = [], 0
    with torch.no_grad():
        for end in (*cuts, ids.shape[1]):
            out.append(model(ids[:, start:end], cache=cache).logits)
            start = end
    return out


@pytest.mark.parametrize("policy", [
    FULL,
    KVPolicy(quant=QuantSpec("int4", group=16, residual=64), full_precision="model"),  # never reaches a flush
    KVPolicy(evict=EvictSpec("h2o", budget=64), full_precision="model"),  # budget above the context
])
def test_nothing_compressed_is_bit_identical_to_dynamic_cache(ids, policy):
    model = kv_llama(attn="eager")
    ref = steps(model, ids, DynamicCache(config=model.config))
    got = steps(model, ids, KVCache(policy, model))
    for a, b in zip(ref, got, strict=True):
        assert_bitwise_equal(a, b)


def test_bf16_model_with_the_default_bf16_storage_is_bit_identical(ids):
    model = kv_llama(dtype=torch.bfloat16)
    ref = steps(model, ids, DynamicCache(config=model.config))
    for a, b in zip(ref, steps(model, ids, KVCache(KVPolicy(), model)), strict=True):
        assert_bitwise_equal(a, b)


def test_streaming_eviction_equals_a_masked_full_forward(ids):
    """After a 30-token prefill with budget 12 (4 sinks), token 30 attends to {0..3, 22..29} and itself:
    the same as a full forward whose last row is masked to those positions."""
    model = kv_llama(attn="eager")
    cache = KVCache(KVPolicy(evict=EvictSpec("streaming", budget=12), full_precision="model"), model)
    with torch.no_grad():
        model(ids[:, :30], cache=cache)
        assert cache.kept_positions(1)[0].tolist() == [[0, 1, 2, 3, *range(22, 30)]] * 2
        assert cache.get_seq_length() == 30 and cache.layers[0].get_mask_sizes(1) == (13, 18)
        got = model(ids[:, 30:31], cache=cache).logits[0, -1]
        mask = torch.full((31, 31), torch.finfo(torch.float32).min).triu(1)
        mask[30, 4:22] = torch.finfo(torch.float32).min
        want = model(ids[:, :31], attention_mask=mask[None, None]).logits[0, -1]
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["h2o", "tova", "snapkv"])
def test_attention_methods_keep_what_the_attention_maps_say(ids, method):
    """Prefill 24 tokens, budget 10: the kept positions per layer and head are the method's choice on the
    model's own eager attention maps (mean over the query heads of each KV head)."""
    model = kv_llama(attn="eager", sharp=True)
    spec = EvictSpec(method, budget=10, sinks=1, window=3)
    cache = KVCache(KVPolicy(evict=spec, full_precision="model"), model)
    with torch.no_grad():
        model(ids[:, :24], cache=cache)
        maps = model(ids[:, :24], output_attentions=True).attentions
    m = get_method(method)
    for layer, att in enumerate(maps):
        att = att.reshape(2, 2, 2, 24, 24).mean(2)
        x = ScoreInput(keys=torch.zeros(2, 2, 24, 1), attention=att, state=m.observe(None, att), layer=layer,
                       seen=24, seed=0, pool=7, window=3)
        want = keep_mask(m.score(x), 2, 10, 1, 3)
        got = torch.zeros(2, 2, 24, dtype=torch.bool).scatter_(2, cache.kept_positions(layer), True)
        assert torch.equal(got, want), (layer, got, want)
    assert not torch.equal(cache.kept_positions(0)[0], cache.kept_positions(0)[1])  # each row its own choice
    heads_agree = all(torch.equal(cache.kept_positions(i)[0, 0], cache.kept_positions(i)[0, 1]) for i in range(2))
    assert heads_agree == (method == "tova")  # TOVA scores a layer; h2o and SnapKV each head


def test_quantized_pages_hold_the_format_quantization_of_the_keys(ids):
    """Layer 0's keys do not depend on the cache: 2 full-precision sinks, pages of 16 tokens quantized per
    channel (keys) / per token (values), the last 8..23 tokens in full precision."""
    model = kv_llama()
    dyn = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, cache=dyn)
    policy = KVPolicy(quant=QuantSpec("mxfp4", group=32, residual=8, sinks=2), full_precision="model")
    cache = KVCache(policy, model)
    steps(model, ids, cache)
    layer = cache.layers[0]
    assert (layer.sink_k.shape[2], layer.n_pages, layer.tail_k.shape[2]) == (2, 1, 14)  # 2 + 32 + 14 = 48
    k, v = layer.view()
    keys, values = dyn.layers[0].keys, dyn.layers[0].values
    fmt = formats.get("mxfp4")
    want_k = torch.cat([keys[:, :, :2], fmt.quantize(keys[:, :, 2:34], dim=2), keys[:, :, 34:]], dim=2)
    want_v = torch.cat([values[:, :, :2], fmt.quantize(values[:, :, 2:34], dim=-1), values[:, :, 34:]], dim=2)
    assert_bitwise_equal(k, want_k)
    assert_bitwise_equal(v, want_v)


def test_pre_rope_pages_hold_the_quantized_unrotated_keys(ids):
    """KVQuant's variant: a page stores the keys rotated back to before RoPE; reading re-rotates them."""
    from transformers.models.llama.modeling_llama import rotate_half

    model = kv_llama()
    dyn = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, cache=dyn)
    keys = dyn.layers[0].keys[:, :, :32]
    cos, sin = model.model.rotary_emb(keys, torch.arange(32)[None])
    fmt = formats.get("int4")
    want = {}
    for rope in ("pre", "post"):
        cache = KVCache(KVPolicy(quant=QuantSpec("int4", group=32, residual=8, key_rope=rope), full_precision="model"),
                        model)
        steps(model, ids, cache)
        want[rope] = cache.layers[0].view()[0][:, :, :32]
    unrotated = keys * cos[:, None] - rotate_half(keys) * sin[:, None]
    rerotated = (lambda k: k * cos[:, None] + rotate_half(k) * sin[:, None])(fmt.quantize(unrotated, dim=2))
    assert torch.allclose(want["pre"], rerotated, atol=1e-5)
    assert_bitwise_equal(want["post"], fmt.quantize(keys, dim=2))
    assert not torch.allclose(want["pre"], want["post"], atol=1e-3)


def test_kivi_with_streaming_keeps_a_bounded_cache_and_merge_conserves_tokens(ids):
    model = kv_llama()
    policy = KVPolicy.from_dict({"quant": {"format": "int4", "group": 8, "residual": 8, "sinks": 4},
                                 "evict": {"method": "streaming", "budget": 24}, "merge": True})
    cache = KVCache(policy, model)
    long_ids = torch.randint(0, 100, (1, 120), generator=torch.Generator().manual_seed(2))
    sizes = []
    with torch.no_grad():
        model(long_ids[:, :40], cache=cache)
        for t in range(40, 120):
            model(long_ids[:, t:t + 1], cache=cache)
            sizes.append(cache.nbytes())
    assert cache.kept_positions(0)[0].tolist() == [[0, 1, 2, 3, *range(100, 120)]] * 2
    assert max(sizes) <= 2 * min(sizes)  # flat: the budget holds, dead pages are freed
    assert cache.layers[0].n_slots <= 24 + 8  # at most one partly dead page
    # every token seen is folded somewhere: the merge weights of a head sum to the tokens seen
    assert torch.equal(cache.merge_weights(1).sum(-1), torch.full((1, 2), 120.0))


def test_scattered_eviction_over_pages_repacks_exactly_for_per_token_formats(ids):
    """h2o drops different tokens per head; once many page slots are dead the layer is re-encoded.
    With per-token int4 (idempotent rounding) the re-encoding does not change a kept value."""
    model = kv_llama(attn="eager", sharp=True)
    policy = KVPolicy.from_dict({"quant": {"format": "int4", "key_axis": "token", "group": 8, "residual": 0},
                                 "evict": {"method": "h2o", "budget": 16}})
    cache = KVCache(policy, model)
    long_ids = torch.randint(0, 100, (1, 80), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model(long_ids[:, :24], cache=cache)
        for t in range(24, 80):
            model(long_ids[:, t:t + 1], cache=cache)
    assert cache.repacks > 0 and all(layer.n_slots < 2 * 16 for layer in cache.layers)
    layer = cache.layers[1]
    before = layer.view()
    layer.apply_keep(torch.ones(1, 2, 16, dtype=torch.bool))
    layer._repack()
    for a, b in zip(before, layer.view(), strict=True):
        assert_bitwise_equal(a, b)


def test_generate_runs_with_the_cache(ids):
    model = kv_llama()
    prompt = ids[:, :20]
    kw = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        ref = model.generate(prompt, **kw)
        same = model.generate(prompt, cache=KVCache(FULL, model), **kw)
        cache = KVCache(KVPolicy.from_dict({"quant": {"format": "int4", "group": 8, "residual": 8},
                                            "evict": {"method": "streaming", "budget": 16}}), model)
        small = model.generate(prompt, cache=cache, **kw)
    assert torch.equal(ref, same)
    assert small.shape == ref.shape and torch.equal(small[:, :20], prompt)
    assert cache.get_seq_length() == 31 and cache.layers[0].n_live == 16  # the last token is never fed back
    with pytest.raises(InputError, match="beam search"):
        model.generate(prompt, cache=KVCache(FULL, model), num_beams=2, **kw)


def test_attention_methods_need_eager_attention():
    model = kv_llama(attn="sdpa")
    policy = KVPolicy(evict=EvictSpec("h2o", budget=8))
    with pytest.raises(InputError, match="h2o needs attention scores.*eager"):
        KVCache(policy, model)
    KVCache(KVPolicy(evict=EvictSpec("streaming", budget=8)), model)  # no scores needed: fine
    with attention_for(policy, model) as switched:
        assert switched and model.config._attn_implementation == "eager"
        KVCache(policy, model)
    assert model.config._attn_implementation == "sdpa"


def test_a_cache_refuses_a_model_it_did_not_hook(ids):
    """Eviction runs in hooks installed on the model the cache was built for; another model would skip it."""
    built_for, other = kv_llama(), kv_llama(seed=1)
    cache = KVCache(KVPolicy(evict=EvictSpec("streaming", budget=8)), built_for)
    with torch.no_grad():
        other(ids[:, :12], cache=cache)
        with pytest.raises(InputError, match="no attention hook ran"):
            other(ids[:, 12:13], cache=cache)


def test_budget_in_bytes_is_the_longest_context_that_fits():
    model = kv_llama()
    per_token = 512  # bf16 dense: 2 layers x (K, V) x 2 heads x 32 x 2 B
    cache = KVCache(KVPolicy(evict=EvictSpec("streaming", budget_bytes=100 * per_token + 10)), model)
    assert cache.budget == 100
    with pytest.raises(InputError, match=r"budget_bytes .* smaller than sinks \+ window"):
        KVCache(KVPolicy(evict=EvictSpec("streaming", budget_bytes=3 * per_token)), model)
