"""A Hugging Face model decoding with its keys and values stored only in the packed layout.

    from nmx.kernels.kv_hf import packed_cache
    cache = packed_cache(model, batch=1, capacity=4096, key_format="int4", value_format="int4", group=32,
                         residual=128)              # switches the model to the "nmx_packed_kv" attention
    out = model(ids, past_key_values=cache)         # (transformers >= 5.2x: cache=cache; see with_cache)
    out = model(next_ids, past_key_values=cache)    # one token: append, then decode_attention on the view

Two pieces, because transformers splits a layer's attention in two calls: `cache.update(k, v)` then the
attention function registered under `config._attn_implementation` (transformers' `AttentionInterface`):

- `PackedModelCache` (a transformers `Cache`) holds one `PackedKVCache` per layer. `update` appends the new
  tokens (quantizing each chunk once, as it leaves the bf16 window). For a prefill (several tokens) it returns
  the whole cache dequantized (`dequantize_kv`: exactly what nmx.kv's fake-quant `KVCache` returns, so the
  prompt attends to what the fake-quant run attends to); for one token it returns placeholders that carry the
  layer's `PackedKVCache` (an attribute on the key tensor) and hold NaN, so an attention function that does
  not know them gives NaN, never a silently wrong number.
- `packed_kv_attention` (registered as "nmx_packed_kv", with sdpa's mask function): on a placeholder it runs
  `decode_attention(q, cache.view())` (the Triton kernel on CUDA, the reference twin elsewhere); on anything
  else (a prefill, or a model run without a packed cache) it is transformers' sdpa attention.

What decode steps see is the quantized cache exactly as nmx.kv's fake-quant cache holds it (the same Tq
quantized tokens, bit for bit, and the same bf16 window); the decode attention itself rounds q and its
output to bf16 (the kernel's operands), which the fake-quant path (float32 SDPA) does not.

Graph mode (`packed_cache(..., static=True)`, int4 / int2 / fp8_e4m3 / mxfp4 / bf16): each layer's cache is a
graph-mode `PackedKVCache`; a one-token step is then one append kernel and the fixed-grid decode kernel per layer,
with no host sync anywhere (the attention skips its padded-mask check, which would sync; the cache's
`get_seq_length()` is the device-side count, a 0-dim tensor, so the model's positions come from the device, as
with transformers' StaticCache), so a whole decode step captures in one CUDA graph. A captured step must be given
a 4-D attention mask (any: the packed decode ignores it; `nmx.kernels.decode_bench` passes one), because
without one transformers sizes the mask from `get_mask_sizes`, which reads the count on the host. The prefill
(several tokens) runs as in eager mode, outside the graph. Off CUDA the caches run their reference twin.

Not supported (InputError): sliding-window or hybrid models, a padded batch in a decode step (the decode
kernel has no mask), beam search / batch reordering, crop, offloading, more tokens than the capacity.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from nmx.errors import InputError
from nmx.kernels.kv_cache import PackedKVCache
from nmx.kernels.kv_layout import dequantize_kv
from nmx.kv.cache import OneSequencePerRow

log = logging.getLogger(__name__)

ATTENTION_NAME = "nmx_packed_kv"
_MARK = "nmx_packed_kv"  # the attribute a decode step's placeholder key carries: the layer's PackedKVCache


def _mask_hides_nothing(mask: torch.Tensor) -> bool:
    """Whether an attention mask (bool: True = attend; float: 0 = attend) masks no key."""
    return bool(mask.all()) if mask.dtype == torch.bool else bool((mask == 0).all())


def packed_kv_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                        **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function (query [B, Hq, q, D] -> [B, q, Hq, D]): a decode step of a
    `PackedModelCache` reads the packed cache; anything else is sdpa attention (module docstring)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    store = getattr(key, _MARK, None)
    if store is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if store.static:  # graph mode: no host sync (so no mask check): the fixed-grid kernel on the device count
        from nmx.kernels.kv_attention import decode_attention_static

        out = decode_attention_static(query[:, :, 0].contiguous(), store, scale=scaling)
        return out.to(query.dtype)[:, None], None
    if attention_mask is not None and not _mask_hides_nothing(attention_mask):
        raise InputError("the packed KV decode attention has no mask: padded batch rows are not supported; decode "
                         "one unpadded sequence per row")
    b, hq, q_len, d = query.shape
    from nmx.kernels.kv_attention import decode_attention

    out = decode_attention(query[:, :, 0].contiguous(), store.view(), scale=scaling)  # [B, Hq, D] bf16
    return out.to(query.dtype)[:, None], None


def register_attention() -> None:
    """Register "nmx_packed_kv" with transformers (attention and mask functions); idempotent."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, packed_kv_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


class PackedKVLayer(OneSequencePerRow, CacheLayerMixin):
    """One decoder layer's cache: a `PackedKVCache` behind transformers' layer API."""

    cache_name = "the packed KV cache"

    is_compileable = False
    is_croppable = False
    is_sliding = False
    supports_early_init = False

    def __init__(self, store: PackedKVCache, config: Any, dtype: torch.dtype) -> None:
        super().__init__()
        self.store, self.config = store, config
        # a decode step's placeholders: NaN (see the module docstring), allocated once, a fresh view per step
        self._nan = torch.full((store.batch, store.kv_heads, 1, store.head_dim), float("nan"), dtype=dtype,
                               device=store.device)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        impl = getattr(self.config, "_attn_implementation", None)
        if impl != ATTENTION_NAME:
            raise InputError(f"a packed KV cache needs the model's attention implementation {ATTENTION_NAME!r}, the "
                             f"model uses {impl!r}: build the cache with nmx.kernels.kv_hf.packed_cache(model, ...)")
        self.store.append(key_states, value_states)
        self.is_initialized = True
        if key_states.shape[2] == 1:
            k, v = self._nan.view(self._nan.shape), self._nan.view(self._nan.shape)
            setattr(k, _MARK, self.store)
            return k, v
        k, v = dequantize_kv(self.store.view())
        return k.to(key_states.dtype), v.to(value_states.dtype)

    def get_seq_length(self) -> int | torch.Tensor:
        """Tokens so far; graph mode: the device-side count (a 0-dim tensor: positions computed without a sync)."""
        return self.store.length if self.store.static else self.store.tokens

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.store.tokens + query_length, 0  # graph mode: a sync (captured steps pass a 4-D mask instead)

    def get_max_length(self) -> int:
        return self.store.capacity

    def reset(self) -> None:
        self.store.reset()
        self.is_initialized = False


class PackedModelCache(Cache):
    """A transformers `Cache` of `PackedKVLayer`s, one per decoder layer (build it with `packed_cache`)."""

    def __init__(self, layers: list[PackedKVLayer], previous_attention: str | None) -> None:
        super().__init__(layers=layers)
        #: the model's attention implementation before `packed_cache` switched it (to switch back:
        #: model.set_attn_implementation(cache.previous_attention))
        self.previous_attention = previous_attention

    def stores(self) -> list[PackedKVCache]:
        return [layer.store for layer in self.layers]

    def nbytes(self) -> int:
        """Bytes the tokens so far occupy, all layers: codes, scales and the bf16 windows (what decode reads)."""
        return sum(s.view().nbytes for s in self.stores() if s.tokens)


def packed_cache(model: Any, batch: int, capacity: int, key_format: str = "int4", value_format: str = "int4",
                 group: int | None = None, residual: int = 128, backend: str = "auto",
                 static: bool = False) -> PackedModelCache:
    """A `PackedModelCache` for `model` (a decoder whose layers all use full attention), preallocated for `batch`
    sequences of up to `capacity` tokens each, on the model's device; switches the model's attention
    implementation to "nmx_packed_kv" (which is sdpa for every call that is not a packed decode step).
    `static=True`: graph-mode layer caches (module docstring)."""
    from nmx.kv.cache import model_kv_shape

    config = model.config.get_text_config(decoder=True)
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    sliding = getattr(config, "sliding_window", None)
    if types != {"full_attention"} or sliding:
        raise InputError(f"the packed KV cache supports models whose layers all use full attention; this one has "
                         f"{sorted(types)}{' with a sliding window' if sliding else ''}")
    layers, kv_heads, head_dim = model_kv_shape(config)
    first = next(model.parameters())
    stores = [PackedKVCache(batch, kv_heads, head_dim, capacity, key_format, value_format, group, residual,
                            first.device, backend, static) for _ in range(layers)]
    register_attention()
    previous = getattr(model.config, "_attn_implementation", None)
    if previous != ATTENTION_NAME:
        log.info("switching the model's attention from %s to %s (sdpa except packed decode steps)", previous,
                 ATTENTION_NAME)
        model.set_attn_implementation(ATTENTION_NAME)
    return PackedModelCache([PackedKVLayer(s, config, first.dtype) for s in stores], previous)
