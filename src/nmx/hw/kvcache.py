"""The bytes a compressed KV cache keeps: `nmx.kv`'s layout counted without a model run.

    from nmx.hw.kvcache import kv_cache_bytes, kv_cache_layout
    kv_cache_bytes(policy, shape, tokens=2048, batch=16)   # == KVCache.nbytes() after those tokens
    kv_cache_layout(policy, shape, 2048).kept               # tokens per sequence and head still cached

The count is the one `nmx.kv.KVCache.nbytes()` reports for the same policy once `tokens` tokens
went into the cache in one forward (a prefill of the context): full-precision slots (sinks and
the residual window) at the policy's storage dtype, quantized pages (codes, scales, zero points)
at `PageCodec.page_bytes`, and the metadata the cache holds (h2o's accumulated attention and the
merge weights, 4 bytes per kept token and head; the live mask, 1 byte per physical slot and head,
while evicted slots are still stored; token positions with pre-RoPE keys and eviction).

Eviction leaves `budget` tokens per head. Where the evicted tokens were is known for the recency
methods (`streaming`: the sinks and the newest tokens; `recent`: the newest), so their layout is
exact: pages that lost every slot are freed, a page that lost only some keeps its dead slots (and
the cache its live mask) until a repack, which happens when the dead slots reach a group and a
quarter of the live ones -- the same rules as `nmx.kv.cache`. For the methods that score tokens
(h2o, tova, snapkv, knorm, random) the evicted slots depend on the data: the count is the compact
layout of the kept tokens (what the cache holds after a repack or when whole pages were evicted),
which is a lower bound while partly evicted pages stay. Without quantization or without eviction
every method's count is exact.

`model_dtype` matters only for `full_precision: model`; hardware prices a bf16 model.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from nmx.errors import InputError

#: eviction methods whose kept set does not depend on the data (recency scores shared by all heads)
RECENCY_METHODS = ("streaming", "recent")


def kv_config(shape: Any) -> SimpleNamespace:
    """A decoder config with the attributes `nmx.kv` reads, from an `nmx.hw.workload.ModelShape`."""
    return SimpleNamespace(num_hidden_layers=shape.layers, num_attention_heads=shape.heads_q,
                           num_key_value_heads=shape.heads_kv, head_dim=shape.head_dim, hidden_size=shape.hidden)


@dataclass(frozen=True)
class KVLayout:
    """One layer's cache after `seen` tokens (the same for every layer, batch row and head)."""

    seen: int
    kept: int  # live tokens per head
    sinks: int  # full-precision slots before the pages
    pages: int  # quantized pages of `group` slots
    group: int
    tail: int  # full-precision slots after the pages (the residual window)
    dead: int  # evicted slots still stored (inside partly evicted pages)
    exact: bool  # False: a scoring method's compact layout (see the module doc)

    @property
    def slots(self) -> int:
        return self.sinks + self.pages * self.group + self.tail


def kept_tokens(policy: Any, shape: Any, tokens: int, model_dtype: torch.dtype = torch.bfloat16) -> int:
    """Tokens per sequence the cache keeps after `tokens` tokens: all, or the eviction budget."""
    if policy is None or policy.evict is None:
        return tokens
    from nmx.kv.cache import budget_tokens

    return min(tokens, budget_tokens(policy, kv_config(shape), model_dtype))


def _fresh(quant: Any, n: int) -> tuple[int, int, int]:
    """(sinks, pages, tail) of n tokens written into an empty layer in one forward (`KVLayer._settle`)."""
    if quant is None:
        return 0, 0, n
    s = min(quant.sinks, n)
    over = n - s - quant.residual
    pages = over // quant.chunk if over >= quant.chunk else 0
    return s, pages, n - s - pages * quant.chunk


def kv_cache_layout(policy: Any, shape: Any, tokens: int, model_dtype: torch.dtype = torch.bfloat16) -> KVLayout:
    """The layout of one layer after `tokens` tokens went in in one forward (see the module doc)."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise InputError(f"KV cache tokens must be an integer >= 0, got {tokens!r}")
    quant = policy.quant if policy is not None else None
    g = quant.chunk if quant is not None else 0
    s, pages, tail = _fresh(quant, tokens)
    kept = kept_tokens(policy, shape, tokens, model_dtype)
    if kept == tokens:
        return KVLayout(tokens, kept, s, pages, g, tail, 0, True)
    if quant is None:  # every slot full precision: the kept tokens are compacted whatever their place
        return KVLayout(tokens, kept, 0, 0, 0, kept, 0, True)
    ev = policy.evict
    if ev.method not in RECENCY_METHODS:  # where the evicted slots are depends on the data
        dead = tokens - kept
        if dead >= g and 4 * dead > kept:  # scattered: a repack lays the live slots out afresh
            s2, p2, t2 = _fresh(quant, kept)
            return KVLayout(tokens, kept, s2, p2, g, t2, 0, False)
        return KVLayout(tokens, kept, s, pages, g, tail, dead, False)  # too few dead slots to repack
    first, _ = ev.protected(kept)  # the sinks; the rest of the budget goes to the newest tokens
    last_from = tokens - (kept - first)  # kept: positions [0, first) and [last_from, tokens)

    def live(lo: int, hi: int) -> int:
        return max(0, min(hi, first) - lo) + max(0, hi - max(lo, last_from))

    sinks_live = live(0, s)
    tail_live = live(s + pages * g, tokens)
    page_live = [live(s + i * g, s + (i + 1) * g) for i in range(pages)]
    alive = [n for n in page_live if n]
    dead = len(alive) * g - sum(alive)
    if dead >= g and 4 * dead > kept:  # `KVLayer._repack`: the live slots laid out afresh
        s2, p2, t2 = _fresh(quant, kept)
        return KVLayout(tokens, kept, s2, p2, g, t2, 0, True)
    return KVLayout(tokens, kept, sinks_live, len(alive), g, tail_live, dead, True)


def kv_cache_bytes(policy: Any, shape: Any, tokens: int, batch: int = 1,
                   model_dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of the whole cache (all layers, `batch` sequences) after `tokens` tokens: the count
    `KVCache.nbytes()` reports for `policy` (exact except where `kv_cache_layout(...).exact` is False)."""
    from nmx.kv.policy import KVPolicy
    from nmx.kv.quant import codecs

    policy = policy if policy is not None else KVPolicy()
    lay = kv_cache_layout(policy, shape, tokens, model_dtype)
    heads, d = shape.heads_kv, shape.head_dim
    rows = batch * heads
    fp = torch.empty(0, dtype=policy.fp_dtype(model_dtype)).element_size()
    per_layer = (lay.sinks + lay.tail) * rows * d * 2 * fp
    if lay.pages:
        ck, cv = codecs(policy.quant, d)
        per_layer += lay.pages * (ck.page_bytes(batch, heads, d) + cv.page_bytes(batch, heads, d))
    ev = policy.evict
    if ev is not None:
        per_layer += 4 * rows * lay.kept * (int(ev.method_obj.keeps_state) + int(policy.merge is not None))
        if lay.dead:
            per_layer += rows * lay.slots  # the live mask (bool)
        if policy.quant is not None and policy.quant.key_rope == "pre":
            per_layer += 4 * rows * lay.slots  # int32 positions: pages re-apply RoPE at them
    return shape.layers * per_layer
