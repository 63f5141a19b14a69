"""The hardware workload prices the bytes a compressed KV cache really keeps.

Oracle: `nmx.kv.KVCache.nbytes()` of the real cache, run on the tiny random Llama with the same
policy after the same tokens (one forward of the context, as a prefill fills it). The workload
(`llm_workload(..., compression=Compression(kv_policy=...))`), `kv_cache_bytes` and the decode
step's attention op must all count exactly those bytes."""

from __future__ import annotations

import pytest
import torch

from nmx.errors import InputError
from nmx.hw.kvcache import kv_cache_bytes, kv_cache_layout
from nmx.hw.workload import Compression, llm_workload, shape_from_config
from nmx.kv import KVCache, KVPolicy, attention_for
from tests.model.conftest import tiny_llama


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def real_cache(model, policy: KVPolicy, tokens: int, batch: int) -> KVCache:
    ids = torch.randint(0, 90, (batch, tokens), generator=torch.Generator().manual_seed(1))
    with attention_for(policy, model, quiet=True):
        cache = KVCache(policy, model)
        with torch.no_grad():
            model(ids, cache=cache)
    return cache


# the tiny Llama: 2 layers, 2 KV heads of head_dim 16, float32 (so full_precision: model is 4 bytes)
POLICIES = {
    "quant only (KIVI axes, residual)": ({"quant": {"format": "int4", "group": 16, "residual": 8}}, 100),
    "quant only (sinks, block format on channels)": (
        {"quant": {"format": "mxfp4", "group": 32, "residual": 8, "sinks": 4, "value_axis": "channel"}}, 150),
    "quant only, fp32 slots": ({"quant": {"format": "int8", "group": 8, "residual": 4}, "full_precision": "model"}, 77),
    "evict only (streaming)": ({"evict": {"method": "streaming", "budget": 40}}, 100),
    "evict only (h2o + merge: state and weights)": ({"evict": {"method": "h2o", "budget": 40}, "merge": True}, 100),
    "evict only (budget in bytes)": ({"evict": {"method": "knorm", "budget_bytes": 10000}}, 120),
    "quant + evict, aligned sinks": (
        {"quant": {"format": "int4", "group": 16, "residual": 8, "sinks": 4},
         "evict": {"method": "streaming", "budget": 40, "sinks": 4}}, 104),
    # quant sinks 0, evict sinks 4: page 0 keeps 4 live slots and 12 dead ones (plus a live mask)
    "quant + evict, dead slots in a page": (
        {"quant": {"format": "int4", "group": 16, "residual": 8}, "evict": {"method": "streaming", "budget": 40}}, 100),
    "quant + evict, pre-RoPE keys (positions stored)": (
        {"quant": {"format": "int4", "group": 8, "residual": 8, "key_rope": "pre"},
         "evict": {"method": "recent", "budget": 40}}, 91),
    "quant + evict, a scoring method far over budget (repacked)": (
        {"quant": {"format": "int4", "group": 16, "residual": 8}, "evict": {"method": "random", "budget": 40}}, 200),
}


@pytest.mark.parametrize("name", list(POLICIES))
@pytest.mark.parametrize("batch", [1, 2])
def test_priced_kv_bytes_equal_the_real_cache(model, name, batch):
    spec, tokens = POLICIES[name]
    policy = KVPolicy.from_dict(spec)
    shape = shape_from_config(model.config)
    cache = real_cache(model, policy, tokens, batch)
    real = cache.nbytes()
    assert kv_cache_bytes(policy, shape, tokens, batch, model_dtype=torch.float32) == real
    if policy.full_precision == "model":
        return  # hardware prices a bf16 model: the workload's slots are bf16, the tiny model's fp32
    w = llm_workload(shape, "decode", batch=batch, context=tokens, compression=Compression(kv_policy=policy))
    assert w.kv_cache_bytes == real
    assert w.kv_exact == kv_cache_layout(policy, shape, tokens).exact  # a scoring method's count: an estimate
    att = next(op for op in w.ops if op.kind == "attention")
    assert att.kv_bytes_read * att.count == real  # the decode step reads the whole cache
    assert att.kv_len == w.kv_kept_tokens + 1 == cache.layers[0].n_live + 1
    pre = llm_workload(shape, "prefill", batch=batch, tokens=tokens, compression=Compression(kv_policy=policy))
    assert pre.kv_cache_bytes == real and next(op for op in pre.ops if op.kind == "attention").kv_bytes_read == 0


def test_the_dead_slot_case_really_holds_dead_slots(model):
    """The case above is not trivially compact: the real cache keeps a live mask, and the priced count
    is larger than the compact layout of the kept tokens."""
    policy = KVPolicy.from_dict(POLICIES["quant + evict, dead slots in a page"][0])
    shape = shape_from_config(model.config)
    cache = real_cache(model, policy, 100, 1)
    assert cache.layers[0].live is not None
    lay = kv_cache_layout(policy, shape, 100)
    assert lay.dead == 12 and lay.kept == 40
    compact = KVPolicy.from_dict({"quant": {"format": "int4", "group": 16, "residual": 8}})
    assert kv_cache_bytes(policy, shape, 100) > kv_cache_bytes(compact, shape, 40)


def test_evict_only_by_hand():
    """A bf16 cache evicted to 512 of 4096 tokens: 512 x layers x 2 x kv_heads x head_dim x 2 bytes."""
    policy = KVPolicy.from_dict({"evict": {"method": "streaming", "budget": 512}})
    w = llm_workload("llama-3-8b", "decode", batch=3, context=4096, compression=Compression(kv_policy=policy))
    assert w.kv_cache_bytes == 3 * 512 * 32 * 2 * 8 * 128 * 2
    assert w.kv_bytes_per_token == w.kv_cache_bytes / (3 * 4096)
    dense = llm_workload("llama-3-8b", "decode", batch=3, context=4096)
    assert dense.kv_cache_bytes == 8 * w.kv_cache_bytes
    # eviction cuts the attention's work too: 513 keys, not 4097
    att = next(op for op in w.ops if op.kind == "attention")
    dense_att = next(op for op in dense.ops if op.kind == "attention")
    assert att.kv_len == 513 and dense_att.kv_len == 4097
    assert att.flops == pytest.approx(dense_att.flops * 513 / 4097)


def test_a_scoring_method_near_its_budget_is_flagged_as_an_estimate(model):
    policy = KVPolicy.from_dict({"quant": {"format": "int4", "group": 16, "residual": 8},
                                 "evict": {"method": "knorm", "budget": 40}})
    shape = shape_from_config(model.config)
    lay = kv_cache_layout(policy, shape, 50)
    assert not lay.exact and lay.dead == 10  # too few dead slots for a repack: all 50 slots stay stored
    w = llm_workload(shape, "decode", context=50, compression=Compression(kv_policy=policy))
    assert not w.kv_exact


def test_policy_and_format_are_exclusive_and_bad_tokens_are_one_line():
    policy = KVPolicy.from_dict({"evict": {"method": "streaming", "budget": 64}})
    with pytest.raises(InputError, match="not both"):
        Compression(kv_format="int4_g32", kv_policy=policy)
    with pytest.raises(InputError, match="KVPolicy"):
        Compression(kv_policy={"evict": {}})
    with pytest.raises(InputError, match="tokens"):
        kv_cache_layout(policy, shape_from_config(tiny_llama().config), -1)
