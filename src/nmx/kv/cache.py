"""`KVCache`: a transformers `Cache` that stores what it claims (packed codes and scales).

Each layer keeps its cache slots in three segments, in token order:

    [ sinks: full precision ][ pages: quantized, `group` slots each ][ residual window: full precision ]

New tokens enter the residual window; whole chunks of `group` tokens move into pages once
the window holds `residual + group` tokens (see `nmx.kv.quant` for the page layout); the first
`quant.sinks` tokens stay in full precision. Without quantization every slot is full precision.
Attention reads the cache as it is stored: `update` returns the full-precision slots and the
dequantized pages (the CPU reference path dequantizes all pages each step; a fused kernel reads
the pages directly), so a token is quantized in the very forward that flushes it.

Eviction runs after each layer's attention (a forward hook on the attention module gives the
attention probabilities, which methods such as h2o need) and leaves every KV head of every layer
with exactly `budget` tokens. Positions keep their original RoPE rotation: `get_seq_length` is
the number of tokens seen (so new tokens get their true positions) and `get_mask_sizes`
offsets the mask by the evicted count. An evicted slot inside a page is marked dead in a
live-mask until the whole page is dead and freed; full-precision segments are compacted at
once when every head lost as many slots there; when dead slots exceed a quarter of the live
ones (scattered per-head eviction over pages), the layer is repacked: the live slots are
re-encoded, which requantizes them (exact for per-token formats whose rounding is idempotent,
lossy when a per-channel group changes). Merging modifies kept slots; a page holding one is
re-encoded the same way.

`nbytes()` is the sum of the bytes the cache holds: full-precision slots at their storage
dtype, page buffers (codes, scales, zero points, tensor scales), and metadata (the live mask
while slots are dead; h2o's accumulated attention and merge weights, 4 bytes per token and
head). Token positions (int32 per slot and head) are bookkeeping and not counted (post-RoPE keys
carry their rotation), except with pre-RoPE keys and eviction: then the pages need them to
re-apply RoPE (without eviction a kernel derives them from the slot index).

Not supported: sliding-window or hybrid models, beam search and batch reordering, `crop`, and
left-padded batches with eviction (the padding mask is indexed by position, and kept slots no
longer line up with positions).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from nmx.errors import InputError
from nmx.kv.evict import SNAPKV_POOL, ScoreInput, keep_mask
from nmx.kv.merge import merge_evicted
from nmx.kv.policy import KVPolicy
from nmx.kv.quant import codecs

log = logging.getLogger(__name__)

_HOOK = "_nmx_kv_hook"
MAX_BUDGET_TOKENS = 1 << 22


def model_kv_shape(config: Any) -> tuple[int, int, int]:
    """(layers, KV heads, head_dim) of a decoder config."""
    config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, heads, head_dim


def dense_bytes_per_token(config: Any, bytes_per_element: int = 2) -> int:
    """Bytes per token of a dense cache: layers * 2 (K and V) * KV heads * head_dim * bytes (bf16: 2)."""
    layers, heads, head_dim = model_kv_shape(config)
    return layers * 2 * heads * head_dim * bytes_per_element


def expected_nbytes(policy: KVPolicy, config: Any, tokens: int, batch: int = 1,
                    model_dtype: torch.dtype = torch.float32) -> int:
    """Bytes a cache under `policy` holds after `tokens` tokens with no eviction in flight
    (no dead slots): the hand-computable layout, summed over layers."""
    layers, heads, head_dim = model_kv_shape(config)
    fp_bytes = torch.empty(0, dtype=policy.fp_dtype(model_dtype)).element_size()
    sinks = pages = 0
    page_bytes = 0
    if policy.quant is not None:
        q = policy.quant
        ck, cv = codecs(q, head_dim)
        sinks = min(q.sinks, tokens)
        rest = tokens - sinks
        pages = (rest - q.residual) // q.chunk if rest - q.residual >= q.chunk else 0
        page_bytes = ck.page_bytes(batch, heads, head_dim) + cv.page_bytes(batch, heads, head_dim)
    full = tokens - pages * (policy.quant.chunk if policy.quant else 0)
    per_layer = full * batch * heads * head_dim * 2 * fp_bytes + pages * page_bytes
    if policy.evict is not None:
        meta = int(policy.evict.method_obj.keeps_state) + int(policy.merge is not None)
        per_layer += meta * 4 * tokens * batch * heads
    return layers * per_layer


def budget_tokens(policy: KVPolicy, config: Any, model_dtype: torch.dtype = torch.float32) -> int:
    """The eviction budget in tokens: `evict.budget`, or the longest context whose cache stays within
    `evict.budget_bytes` (all layers, batch 1) at every length up to it."""
    ev = policy.evict
    if ev.budget is not None:
        return ev.budget
    n = 0
    while expected_nbytes(policy, config, n + 1, 1, model_dtype) <= ev.budget_bytes:
        n += 1
        if n >= MAX_BUDGET_TOKENS:
            raise InputError(f"evict.budget_bytes: {ev.budget_bytes} bytes hold more than {MAX_BUDGET_TOKENS} "
                             "tokens; give a token budget instead")
    ev.check_budget(n, f"evict.budget_bytes ({ev.budget_bytes} bytes = {n} tokens)")
    return n


def _after_attention(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if isinstance(cache, KVCache):
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        cache.after_attention(module.layer_idx, weights)


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules()
            if type(m).__name__.endswith("Attention") and isinstance(getattr(m, "layer_idx", None), int)]


def install_hooks(model: torch.nn.Module, layers: int) -> None:
    """One forward hook per attention module (idempotent); it acts only when a KVCache is passed."""
    mods = attention_modules(model)
    if len(mods) != layers:
        raise InputError(f"nmx.kv found {len(mods)} attention modules with a layer_idx in {type(model).__name__}, "
                         f"expected {layers}; this architecture is not supported")
    for m in mods:
        if getattr(m, _HOOK, None) is None:
            setattr(m, _HOOK, m.register_forward_hook(_after_attention, with_kwargs=True))


def remove_hooks(model: torch.nn.Module) -> None:
    for m in attention_modules(model):
        handle = getattr(m, _HOOK, None)
        if handle is not None:
            handle.remove()
            setattr(m, _HOOK, None)


@contextmanager
def attention_for(policy: KVPolicy, model: Any, quiet: bool = False) -> Iterator[bool]:
    """Switch the model to eager attention while `policy` needs attention scores (logged unless
    `quiet`), and back. Yields whether it switched. `nmx run` uses this; `KVCache` itself refuses."""
    prev = getattr(model.config, "_attn_implementation", None)
    switch = policy.needs_attention and prev != "eager"
    if switch and not quiet:
        log.warning("evict.method %s needs attention scores: switching the model from %s to eager attention",
                    policy.evict.method, prev)
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield switch
    finally:
        if switch:
            model.set_attn_implementation(prev)


def _live_order(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the True entries of each row of `mask` ([..., n]), in order (each row has `count`)."""
    return torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)[..., :count]


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [b, h, n, d] at slots idx [b, h, m] -> [b, h, m, d]."""
    return x.gather(2, idx[..., None].expand(*idx.shape, x.shape[-1]))


class OneSequencePerRow:
    """The cache operations of transformers that move or copy batch rows or offload layers, refused with one
    line: nmx's caches (here and nmx.kernels.kv_hf) keep per-row state that those operations would not carry."""

    #: the cache's name in the refusal
    cache_name = "nmx.kv caches"

    def _unsupported(self, what: str) -> None:
        raise InputError(f"{what} is not supported by {self.cache_name}; decode one sequence per row (greedy or "
                         "sampling)")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._unsupported("beam search (reorder_cache)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._unsupported("repeating batch rows (num_return_sequences > 1)")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._unsupported("selecting batch rows")

    def crop(self, tokens_to_remove: int) -> None:
        self._unsupported("crop (assisted decoding)")

    def offload(self) -> None:
        self._unsupported("offloading")

    def prefetch(self) -> None:
        self._unsupported("offloading")


class KVLayer(OneSequencePerRow, CacheLayerMixin):
    """The cache of one decoder layer (see the module doc)."""

    is_compileable = False
    is_croppable = False
    is_sliding = False
    supports_early_init = False

    def __init__(self, cache: "KVCache", layer_idx: int) -> None:
        super().__init__()
        self.cache, self.layer_idx = cache, layer_idx
        self.seen = 0
        self._view: tuple[torch.Tensor, torch.Tensor] | None = None

    # ---- state ------------------------------------------------------------------------------

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.b, self.h, self.d = b, h, d
        self.device, self.dtype = key_states.device, key_states.dtype
        self.fp = self.cache.policy.fp_dtype(key_states.dtype)
        empty = torch.zeros(b, h, 0, d, dtype=self.fp, device=self.device)
        self.sink_k = self.sink_v = self.tail_k = self.tail_v = empty
        self.pages_k: dict[str, torch.Tensor] = {}
        self.pages_v: dict[str, torch.Tensor] = {}
        self.n_pages = 0
        self.live: torch.Tensor | None = None  # [b, h, slots] over physical slots; None = all live
        self.pos = torch.zeros(b, h, 0, dtype=torch.int32, device=self.device)  # position of each physical slot
        self.kept = 0  # live tokens per head
        self.state: torch.Tensor | None = None  # the method's statistic, live order
        self.mass: torch.Tensor | None = None  # merge weights, live order
        self.is_initialized = True

    @property
    def group(self) -> int:
        return self.cache.policy.quant.chunk if self.cache.policy.quant else 0

    @property
    def n_slots(self) -> int:
        return self.sink_k.shape[2] + self.n_pages * self.group + self.tail_k.shape[2]

    @property
    def n_live(self) -> int:
        return self.kept if self.is_initialized else 0

    @property
    def pre_rope(self) -> bool:
        return self.cache.policy.quant is not None and self.cache.policy.quant.key_rope == "pre"

    def _rope(self, keys: torch.Tensor, pos: torch.Tensor, inverse: bool) -> torch.Tensor:
        """Rotate float32 keys [b, h, n, d] at positions [b, h, n] by RoPE (or back, `inverse`)."""
        b, h, n, d = keys.shape
        cos, sin = self.cache.rotary(keys, pos.reshape(b * h, n).long())
        cos, sin = cos.float().reshape(b, h, n, d), sin.float().reshape(b, h, n, d)
        half = torch.cat([-keys[..., d // 2:], keys[..., : d // 2]], dim=-1)
        return keys * cos + half * (-sin if inverse else sin)

    def _append_pages(self, chunks_k: torch.Tensor, chunks_v: torch.Tensor, pos: torch.Tensor) -> None:
        """chunks [b, h, n*G, d] at positions pos [b, h, n*G] -> n new pages."""
        b, h, m, d = chunks_k.shape
        n, g = m // self.group, self.group
        if self.pre_rope:  # store keys as they were before RoPE (KVQuant)
            chunks_k = self._rope(chunks_k.float(), pos, inverse=True)
        for pages, codec, x in ((self.pages_k, self.cache.codec_k, chunks_k), (self.pages_v, self.cache.codec_v,
                                                                               chunks_v)):
            new = codec.encode(x.reshape(b, h, n, g, d).permute(2, 0, 1, 3, 4))
            for name, rows in new.items():
                pages[name] = torch.cat([pages[name], rows]) if name in pages else rows
        self.n_pages += n

    def _decode_pages(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 [b, h, pages*G, d] of keys (rotated) and values."""
        out = []
        for pages, codec in ((self.pages_k, self.cache.codec_k), (self.pages_v, self.cache.codec_v)):
            x = codec.decode(pages, self.b, self.h, self.d)  # [P, b, h, G, d]
            out.append(x.permute(1, 2, 0, 3, 4).reshape(self.b, self.h, -1, self.d))
        if self.pre_rope:
            s = self.sink_k.shape[2]
            out[0] = self._rope(out[0], self.pos[:, :, s:s + out[0].shape[2]], inverse=False)
        return out[0], out[1]

    def _physical(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Every stored slot (dead ones included), [b, h, slots, d] in `dtype`."""
        ks, vs = [self.sink_k.to(dtype)], [self.sink_v.to(dtype)]
        if self.n_pages:
            pk, pv = self._decode_pages()
            ks.append(pk.to(dtype))
            vs.append(pv.to(dtype))
        ks.append(self.tail_k.to(dtype))
        vs.append(self.tail_v.to(dtype))
        ks = [x for x in ks if x.shape[2]] or ks[:1]
        vs = [x for x in vs if x.shape[2]] or vs[:1]
        if len(ks) == 1:
            return ks[0], vs[0]
        return torch.cat(ks, dim=2), torch.cat(vs, dim=2)

    def live_index(self) -> torch.Tensor:
        """Physical slot of each live token, [b, h, live], in token order."""
        if self.live is None:
            return torch.arange(self.n_slots, device=self.device).expand(self.b, self.h, -1)
        return _live_order(self.live, self.n_live)

    def view(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The live keys and values as attention reads them ([b, h, live, d], the model's dtype)."""
        k, v = self._physical(self.dtype)
        if self.live is None:
            return k, v
        idx = self.live_index()
        return _take(k, idx), _take(v, idx)

    # ---- the transformers layer API ------------------------------------------------------------

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        b, h, q, _ = key_states.shape
        if self._view is not None:
            raise InputError("no attention hook ran after the previous forward through this KV cache: build the "
                             "KVCache with the model that runs it (KVCache(policy, model))")
        if (b, h) != (self.b, self.h):
            raise InputError(f"KV cache layer {self.layer_idx} holds batch {self.b} x {self.h} heads, got {b} x {h}")
        self.tail_k = torch.cat([self.tail_k, key_states.to(self.fp)], dim=2)
        self.tail_v = torch.cat([self.tail_v, value_states.to(self.fp)], dim=2)
        if self.live is not None:
            self.live = torch.cat([self.live, self.live.new_ones(b, h, q)], dim=2)
        new_pos = torch.arange(self.seen, self.seen + q, dtype=torch.int32, device=self.device).expand(b, h, q)
        self.pos = torch.cat([self.pos, new_pos], dim=2)
        self.kept += q
        if self.cache.method is not None and self.cache.method.keeps_state:
            zeros = torch.zeros(b, h, q, device=self.device)
            self.state = zeros if self.state is None else torch.cat([self.state, zeros], dim=2)
        if self.cache.policy.merge is not None:
            ones = torch.ones(b, h, q, device=self.device)
            self.mass = ones if self.mass is None else torch.cat([self.mass, ones], dim=2)
        self.seen += q
        self._settle()
        k, v = self.view()
        self._view = (k, v) if self.cache.method is not None else None
        return k, v

    def get_seq_length(self) -> int:
        """Tokens seen (not kept): new tokens take their true positions after it."""
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        kept = self.n_live
        return kept + query_length, self.seen - kept

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.is_initialized = False
        self.seen = self.kept = 0
        self._view = None


    # ---- quantization: sinks and flushes ----------------------------------------------------

    def _settle(self) -> None:
        quant = self.cache.policy.quant
        if quant is None:
            return
        s = self.sink_k.shape[2]
        if self.n_pages == 0 and s < quant.sinks and self.tail_k.shape[2]:
            m = min(quant.sinks - s, self.tail_k.shape[2])
            self.sink_k = torch.cat([self.sink_k, self.tail_k[:, :, :m]], dim=2)
            self.sink_v = torch.cat([self.sink_v, self.tail_v[:, :, :m]], dim=2)
            self.tail_k, self.tail_v = self.tail_k[:, :, m:], self.tail_v[:, :, m:]
        over = self.tail_k.shape[2] - quant.residual
        n = over // quant.chunk if over >= quant.chunk else 0
        if n:
            m = n * quant.chunk
            start = self.sink_k.shape[2] + self.n_pages * quant.chunk
            self._append_pages(self.tail_k[:, :, :m], self.tail_v[:, :, :m], self.pos[:, :, start:start + m])
            self.tail_k, self.tail_v = self.tail_k[:, :, m:], self.tail_v[:, :, m:]

    # ---- eviction ---------------------------------------------------------------------------

    def after_attention(self, weights: torch.Tensor | None) -> None:
        view, self._view = self._view, None
        cache = self.cache
        if view is None or cache.method is None:
            return
        k, v = view
        b, h, n, _ = k.shape
        att = None
        if cache.method.needs_attention:
            if weights is None:
                raise InputError(f"evict.method {cache.method.name} needs attention scores, but the attention of layer "
                                 f"{self.layer_idx} returned none; use eager attention")
            hq, q = weights.shape[1], weights.shape[2]
            att = weights.detach().float().reshape(b, h, hq // h, q, n).mean(dim=2)
        if cache.method.keeps_state:
            self.state = cache.method.observe(self.state, att)
        if n <= cache.budget:
            return
        sinks, window = cache.protected
        spec = cache.policy.evict
        scores = cache.method.score(ScoreInput(keys=k, attention=att, state=self.state, layer=self.layer_idx,
                                               seen=self.seen, seed=spec.seed, pool=spec.pool or SNAPKV_POOL,
                                               window=window))
        keep = keep_mask(scores, h, cache.budget, sinks, window)
        merged = None
        if cache.policy.merge is not None:
            k2, v2, self.mass, changed = merge_evicted(k, v, self.mass, keep)
            merged = (k2, v2, changed)
        self.apply_keep(keep, merged)

    def apply_keep(self, keep: torch.Tensor, merged: tuple | None = None) -> None:
        """Keep the live tokens marked in `keep` ([b, h, live] bool, the same count per head); `merged`:
        (keys, values, changed) over the live tokens, new values for the kept tokens marked changed."""
        idx = self.live_index()
        count = int(keep[0, 0].sum())
        if bool((keep.sum(-1) != count).any()):
            raise ValueError("every head must keep the same number of tokens")
        if merged is not None and bool(merged[2].any()):
            self._write(idx, *merged)
        live = self.live.clone() if self.live is not None else torch.ones(self.b, self.h, self.n_slots,
                                                                          dtype=torch.bool, device=self.device)
        live.scatter_(2, idx, keep)
        self.live = live
        kept = _live_order(keep, count)
        self.kept = count
        if self.state is not None:
            self.state = self.state.gather(2, kept)
        if self.mass is not None:
            self.mass = self.mass.gather(2, kept)
        self._compact()

    def _write(self, idx: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, changed: torch.Tensor) -> None:
        """Overwrite the changed live slots; re-encode the pages they sit in."""
        k_all, v_all = self._physical(torch.float32)
        slots = idx[..., None].expand(*idx.shape, self.d)
        for full, new in ((k_all, keys), (v_all, values)):
            full.scatter_(2, slots, torch.where(changed[..., None], new.float(), full.gather(2, slots)))
        s, g = self.sink_k.shape[2], self.group
        body_end = s + self.n_pages * g
        self.sink_k, self.sink_v = k_all[:, :, :s].to(self.fp), v_all[:, :, :s].to(self.fp)
        self.tail_k, self.tail_v = k_all[:, :, body_end:].to(self.fp), v_all[:, :, body_end:].to(self.fp)
        if self.n_pages:
            hit = torch.zeros(self.n_slots, dtype=torch.bool, device=self.device)
            hit[idx[changed]] = True
            pages = hit[s:body_end].reshape(self.n_pages, g).any(dim=1).nonzero().flatten().tolist()
            for p in pages:
                lo = s + p * g
                page_k = k_all[:, :, lo:lo + g]
                if self.pre_rope:
                    page_k = self._rope(page_k, self.pos[:, :, lo:lo + g], inverse=True)
                for store, codec, full in ((self.pages_k, self.cache.codec_k, page_k),
                                           (self.pages_v, self.cache.codec_v, v_all[:, :, lo:lo + g])):
                    rows = codec.encode(full[None])
                    for name, row in rows.items():
                        store[name][p] = row[0]

    def _compact(self) -> None:
        """Free dead pages, squeeze full-precision segments, repack when too many slots are dead."""
        s, g = self.sink_k.shape[2], self.group
        if self.n_pages:
            body = self.live[:, :, s:s + self.n_pages * g].reshape(self.b, self.h, self.n_pages, g)
            alive = body.any(dim=3).any(dim=1).any(dim=0)
            if not bool(alive.all()):
                for store in (self.pages_k, self.pages_v):
                    for name in store:
                        store[name] = store[name][alive]
                slot_keep = torch.ones(self.n_slots, dtype=torch.bool, device=self.device)
                slot_keep[s:s + self.n_pages * g] = alive.repeat_interleave(g)
                self.live = self.live[:, :, slot_keep]
                self.pos = self.pos[:, :, slot_keep]
                self.n_pages = int(alive.sum())
        for seg in ("sink", "tail"):
            lo = 0 if seg == "sink" else s + self.n_pages * g
            seg_k, seg_v = getattr(self, f"{seg}_k"), getattr(self, f"{seg}_v")
            hi = lo + seg_k.shape[2]
            seg_live = self.live[:, :, lo:hi]
            cnt = seg_live.sum(-1)
            c = int(cnt.flatten()[0]) if hi > lo else hi - lo
            if c < hi - lo and bool((cnt == c).all()):
                i = _live_order(seg_live, c)
                setattr(self, f"{seg}_k", _take(seg_k, i))
                setattr(self, f"{seg}_v", _take(seg_v, i))
                self.live = torch.cat([self.live[:, :, :lo], self.live.new_ones(self.b, self.h, c),
                                       self.live[:, :, hi:]], dim=2)
                self.pos = torch.cat([self.pos[:, :, :lo], self.pos[:, :, lo:hi].gather(2, i), self.pos[:, :, hi:]],
                                     dim=2)
            s = self.sink_k.shape[2]
        if bool(self.live.all()):
            self.live = None
            return
        dead = self.n_slots - self.n_live
        if self.cache.policy.quant is not None and dead >= g and 4 * dead > self.n_live:
            self._repack()

    def _repack(self) -> None:
        """Re-lay the live slots out as sinks / pages / window from scratch (re-encodes the pages)."""
        quant = self.cache.policy.quant
        k_all, v_all = self._physical(torch.float32)
        idx = self.live_index()
        k, v = _take(k_all, idx), _take(v_all, idx)
        self.pos = self.pos.gather(2, idx)
        n = k.shape[2]
        s = min(quant.sinks, n)
        over = n - s - quant.residual
        m = (over // quant.chunk) * quant.chunk if over >= quant.chunk else 0
        self.sink_k, self.sink_v = k[:, :, :s].to(self.fp), v[:, :, :s].to(self.fp)
        self.pages_k, self.pages_v, self.n_pages = {}, {}, 0
        if m:
            self._append_pages(k[:, :, s:s + m], v[:, :, s:s + m], self.pos[:, :, s:s + m])
        self.tail_k, self.tail_v = k[:, :, s + m:].to(self.fp), v[:, :, s + m:].to(self.fp)
        self.live = None
        self.cache.repacks += 1

    # ---- accounting -------------------------------------------------------------------------

    def nbytes_breakdown(self) -> dict[str, int]:
        out = {"full_precision": 0, "codes": 0, "scales": 0, "metadata": 0}
        if not self.is_initialized:
            return out
        out["full_precision"] = sum(x.numel() * x.element_size()
                                    for x in (self.sink_k, self.sink_v, self.tail_k, self.tail_v))
        for store in (self.pages_k, self.pages_v):
            for name, buf in store.items():
                out["codes" if name == "codes" else "scales"] += buf.numel() * buf.element_size()
        out["metadata"] = sum(x.numel() * x.element_size() for x in (self.live, self.state, self.mass) if x is not None)
        if self.pre_rope and self.cache.policy.evict is not None:
            out["metadata"] += self.pos.numel() * self.pos.element_size()  # pages re-apply RoPE at these
        return out


class KVCache(Cache):
    """A compressed KV cache for one model and one sequence batch (see the module doc).

        policy = KVPolicy.from_dict({"quant": {"format": "int4"}, "evict": {"method": "streaming", "budget": 512}})
        cache = KVCache(policy, model)
        model(ids, cache=cache)            # or model.generate(ids, cache=cache)
        cache.nbytes(), cache.bytes_per_token()
    """

    def __init__(self, policy: KVPolicy, model: Any) -> None:
        if not isinstance(policy, KVPolicy):
            raise InputError(f"KVCache takes a KVPolicy, got {type(policy).__name__}")
        config = model.config.get_text_config(decoder=True)
        types = set(getattr(config, "layer_types", None) or ["full_attention"])
        if types != {"full_attention"} or getattr(config, "sliding_window", None):
            raise InputError(f"nmx.kv supports models whose layers all use full attention; this one has {sorted(types)}"
                             f"{' with a sliding window' if getattr(config, 'sliding_window', None) else ''}")
        self.policy = policy
        layers, _, head_dim = model_kv_shape(config)
        self.codec_k = self.codec_v = None
        if policy.quant is not None:
            self.codec_k, self.codec_v = codecs(policy.quant, head_dim)
        self.method = policy.evict.method_obj if policy.evict is not None else None
        self.rotary = None
        if policy.quant is not None and policy.quant.key_rope == "pre":
            self.rotary = getattr(getattr(model, "model", model), "rotary_emb", None)
            if self.rotary is None or head_dim % 2:
                raise InputError("quant.key_rope: pre needs the model's rotary embedding (model.model.rotary_emb), "
                                 f"which {type(model).__name__} does not have; use key_rope: post")
        if policy.needs_attention:
            impl = getattr(config, "_attn_implementation", None)
            if impl != "eager":
                raise InputError(
                    f"evict.method {policy.evict.method} needs attention scores, which only eager attention returns; "
                    f"this model uses {impl!r}: load it with attn_implementation='eager' or call "
                    "model.set_attn_implementation('eager') (nmx run switches by itself)")
        self.budget = 0
        self.protected = (0, 0)
        if policy.evict is not None:
            dtype = next(model.parameters()).dtype
            self.budget = budget_tokens(policy, config, dtype)
            policy.evict.check_budget(self.budget)
            self.protected = policy.evict.protected(self.budget)
        self.repacks = 0
        install_hooks(model, layers)
        super().__init__(layers=[KVLayer(self, i) for i in range(layers)])

    def after_attention(self, layer_idx: int, weights: torch.Tensor | None) -> None:
        """Called by the attention hook after layer `layer_idx` attended: observe, then evict."""
        self.layers[layer_idx].after_attention(weights)

    def nbytes_breakdown(self) -> dict[str, int]:
        total = {"full_precision": 0, "codes": 0, "scales": 0, "metadata": 0}
        for layer in self.layers:
            for k, v in layer.nbytes_breakdown().items():
                total[k] += v
        return total

    def nbytes(self) -> int:
        """Bytes the cache holds now, all layers (see the module doc for what counts)."""
        return sum(self.nbytes_breakdown().values())

    def bytes_per_token(self) -> float:
        """nbytes() per token seen, per sequence of the batch (0.0 before the first token): the dense
        figure for a dense cache, less with quantization, about budget / seen of it with eviction."""
        seen = self.get_seq_length()
        return self.nbytes() / (seen * self.layers[0].b) if seen else 0.0

    def kept_positions(self, layer_idx: int = 0) -> torch.Tensor:
        """Original positions of the kept tokens of a layer, [b, h, kept], in cache order."""
        layer = self.layers[layer_idx]
        return layer.pos.gather(2, layer.live_index()).long()

    def merge_weights(self, layer_idx: int = 0) -> torch.Tensor | None:
        """Tokens folded into each kept slot ([b, h, kept]), or None without merging."""
        m = self.layers[layer_idx].mass
        return None if m is None else m.clone()

    def summary(self) -> dict[str, Any]:
        return {"kv_bytes": self.nbytes(), "kv_bytes_per_token": self.bytes_per_token(),
                "tokens_seen": self.get_seq_length(), "tokens_kept": self.layers[0].n_live if self.layers else 0,
                "budget_tokens": self.budget or None, "repacks": self.repacks, **self.nbytes_breakdown()}
