"""KV-cache compression: quantize, evict, merge — one transformers `Cache` with real byte accounting.

    import nmx.kv as kv

    policy = kv.KVPolicy.from_dict({
        "quant": {"format": "int4", "key_axis": "channel", "value_axis": "token", "group": 32, "residual": 128},
        "evict": {"method": "streaming", "sinks": 4, "budget": 512},
    })                                    # or kv.KVPolicy(quant=kv.QuantSpec(...), evict=kv.EvictSpec(...))
    cache = kv.KVCache(policy, model)     # one per sequence batch; installs a hook on each attention module
    out = model(ids, cache=cache)         # or model.generate(ids, cache=cache, max_new_tokens=...)
    cache.nbytes()                        # bytes held now: codes + scales + full-precision slots + metadata
    cache.bytes_per_token()               # nbytes / tokens seen
    cache.nbytes_breakdown()              # {"full_precision", "codes", "scales", "metadata"}
    cache.kept_positions(layer)           # [b, kv_heads, kept] original positions of the kept tokens
    kv.dense_bytes_per_token(model.config)  # layers * 2 * kv_heads * head_dim * 2 (the bf16 figure)
    kv.expected_nbytes(policy, model.config, tokens)  # the layout's bytes, computed without a model run

The pieces, each usable alone:

- `policy`: frozen specs `QuantSpec`, `EvictSpec`, `MergeSpec`, `KVPolicy` (validated; errors
  name the field). A recipe's `kv_cache:` section has the same keys.
- `quant`: `PageCodec`, the page layout a kernel reads (keys per channel / values per token,
  groups, residual window, sinks in full precision). Keys are quantized after RoPE, or before
  it with `quant.key_rope: pre` (KVQuant).
- `evict`: the methods (`streaming`, `recent`, `random`, `knorm`, `h2o`, `tova`, `snapkv`), each
  a small class with one `score` method, `keep_mask` (scores -> kept set) and the registry
  (`get_method`, `methods()`).
- `merge`: `merge_evicted`, folding evicted tokens into their most similar kept neighbour.
- `cache`: `KVCache` / `KVLayer`, hooks, and the accounting helpers.

Attention scores: `h2o`, `tova` and `snapkv` read the attention probabilities, which only eager
attention returns. `KVCache` refuses (InputError) a model running another implementation;
`attention_for(policy, model)` switches a model to eager for the duration (with a logged
warning) and back, which is what `nmx run` does.
"""

from nmx.kv.cache import (
    KVCache,
    KVLayer,
    attention_for,
    budget_tokens,
    dense_bytes_per_token,
    expected_nbytes,
    model_kv_shape,
    remove_hooks,
)
from nmx.kv.evict import METHODS, get_method, keep_mask, methods
from nmx.kv.merge import merge_evicted
from nmx.kv.policy import EvictSpec, KVPolicy, MergeSpec, QuantSpec
from nmx.kv.quant import PageCodec

__all__ = [
    "EvictSpec", "KVCache", "KVLayer", "KVPolicy", "METHODS", "MergeSpec", "PageCodec", "QuantSpec",
    "attention_for", "budget_tokens", "dense_bytes_per_token", "expected_nbytes", "get_method", "keep_mask",
    "merge_evicted", "methods", "model_kv_shape", "remove_hooks",
]
