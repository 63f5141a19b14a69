"""`PackedKVCache`: one layer's KV cache that grows token by token in the kernel's layout (kv_layout.py),
quantizing each token exactly once.

    cache = PackedKVCache(batch, kv_heads, head_dim, capacity=4096, key_format="int4", value_format="int4",
                          group=32, residual=128, device="cuda")
    cache.append(k, v)                     # k, v [B, H, n, D]: a prefill (n > 1) or one decode step (n = 1)
    out = decode_attention(q, cache.view())  # PackedKV over the tokens so far; no copy of the storage

Why: `pack_kv` quantizes a whole cache at once; calling it every step re-quantizes every token every step.
Here everything is preallocated for `capacity` tokens, in `PackedKV`'s byte layout:

    codes, scales   [B, H, capacity rows, ...]   the quantized tokens, one chunk of G tokens after the other
    window          bf16 [2 (K, V), B, H, W, D]   the newest tokens in token order, W = residual + G

`append` writes the new tokens into the window; whenever it holds residual + G tokens or more, the oldest
whole chunks of G tokens are quantized (each chunk alone: keys per channel over its G tokens, values per
token) straight into the next chunk slots of the codes and scales, and the window moves the tokens it keeps
to its front. Nothing quantized is ever touched again, so `view()` after any sequence of appends is, bit for
bit, `pack_kv` of all the tokens at once (the test's invariant): the same Tq = G * floor((T - residual) / G)
quantized tokens, the same bf16 window. `view()` slices the buffers to the current tokens (the kernel reads
each buffer's batch and head strides, so a slice of a preallocated buffer needs no copy).

Cost of a one-token append, per layer: one write of the token into the window (two small copies, K and V);
every G appends one flush: one Triton launch per K and V that quantizes the chunk into its slot (int4 / int2
on CUDA or under TRITON_INTERPRET=1; the torch path of kv_layout otherwise, e.g. mxfp4, fp8_e4m3, hundreds
of small operations), and a shift of the residual tokens the window keeps (K and V, one copy launch per G
tokens moved: ceil(residual / G) launches). Amortized per token: one window write + (a chunk pack + a shift
of `residual` tokens) / G. For B=16, 32 KV heads, D=128, residual 128, G=32 the shift moves 4 tokens' worth
of K and V (1 MiB read, 1 MiB written) per appended token: under 1 us at H100 bandwidth.

A bf16 cache (key and value format "bf16") quantizes nothing: its window is the whole capacity.

Graph mode (`static=True`): a decode step capturable in one CUDA graph.

    cache = PackedKVCache(..., static=True)     # int4, int2, fp8_e4m3, mxfp4 (K = V format) or bf16
    cache.append(k, v)                          # prefill (n > 1): the path above (host sync), then the counter
    cache.append(k1, v1)                        # one token: ONE kernel launch, no sync, no branch on data
    out = decode_attention_static(q, cache)     # kv_attention.py: a grid fixed for the capacity

The token count T lives on the device (`lengths`, int32, one slot per (K or V, batch row, head) program of the
append kernel, all equal; `length` is slot 0 as a 0-dim tensor, what a Hugging Face model takes positions from).
The quantized count and the window length follow from it: Tq = quantized_tokens(T), Tr = T - Tq (the pack_kv
invariant holds after every append, so nothing else is state). A one-token append is
triton_kv_pack's `_kv_static_append_kernel`: each program writes the token at window slot Tr and, only when that
fills the window (Tr + 1 == residual + G), packs the oldest chunk into slot Tq / G and shifts the residual tokens
to the window's front, then T + 1. The same window (shifted, not a ring), the same chunk slots and the same
`_pack_chunk` arithmetic as the eager Triton pack, so `view()` still equals `pack_kv` of all tokens bit for bit
(the graph tests check it in Triton's interpreter). Appending past the capacity writes nothing and leaves the
counter at capacity + 1: the decode kernel then returns NaN and `tokens` raises (a captured step cannot raise).

Cost of a graph-mode one-token append, per layer: one launch of 2 x B x H programs; on G - 1 steps in G each
program writes D bf16 values and its counter, on the step that fills the window each also packs one chunk
(G x D) and moves `residual` tokens (the eager path's work, in the same launch instead of 2 + 2 ceil(residual /
G) more). No NaN check (it would sync): a NaN key or value gives NaN attention outputs, as in eager mode on CUDA.

Reading `tokens`, `quantized` or `view()` of a graph-mode cache copies the counter to the host (a sync): do it
outside captured steps. mxfp4 / fp8_e4m3 have no Triton pack, and keys and values of different code widths are
not read by the decode kernel, so graph mode refuses them. backend="torch" (the default off CUDA, without
TRITON_INTERPRET=1) runs the reference twin instead of the kernel: the eager path with the counter copied to the
host and back, the same bytes, not capturable.
"""

from __future__ import annotations

import torch

from nmx.errors import InputError
from nmx.kernels.kv_layout import (
    HALF_BITS,
    MAX_HEAD_DIM,
    MX_BLOCK,
    PackedKV,
    _pow2,
    _torch_codes,
    _triton_runs_on,
    kv_format,
    quantized_tokens,
    resolve_group,
)

BACKENDS = ("auto", "torch", "triton")


def _positive_int(value: object, name: str, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InputError(f"PackedKVCache: {name} must be an integer >= {minimum}, got {value!r}")
    return value


class PackedKVCache:
    """One layer's appendable KV storage in `PackedKV`'s layout (see the module docstring)."""

    def __init__(self, batch: int, kv_heads: int, head_dim: int, capacity: int, key_format: str = "int4",
                 value_format: str = "int4", group: int | None = None, residual: int = 128,
                 device: torch.device | str = "cpu", backend: str = "auto", static: bool = False) -> None:
        self.batch = _positive_int(batch, "batch")
        self.kv_heads = _positive_int(kv_heads, "kv_heads")
        self.capacity = _positive_int(capacity, "capacity")
        self.residual = _positive_int(residual, "residual", 0)
        if not (isinstance(head_dim, int) and _pow2(head_dim) and 16 <= head_dim <= MAX_HEAD_DIM):
            raise InputError(f"the kernel supports head_dim 16, 32, 64, 128 or 256, got {head_dim!r}")
        self.head_dim = head_dim
        self.key_kind, self.value_kind = kv_format(key_format), kv_format(value_format)
        self.key_format, self.value_format = key_format, value_format
        self.dense = self.key_kind[0] == "bf16"
        if self.dense != (self.value_kind[0] == "bf16"):
            raise InputError("PackedKVCache: bf16 (no quantization) must be the format of both keys and values, "
                             "or of neither")
        if backend not in BACKENDS:
            raise InputError(f"PackedKVCache: unknown backend {backend!r}: use {', '.join(BACKENDS)}")
        self.device = torch.device(device)
        self.static = bool(static)
        ints = self.key_kind[0] == "int" and self.value_kind[0] == "int"
        # graph mode's Triton append also packs fp8_e4m3 and mxfp4 (both sides the same format)
        fp8s = self.key_kind[0] == self.value_kind[0] and self.key_kind[0] in ("e4m3", "e2m1")
        if self.static and not (self.dense or ((ints or fp8s) and self.key_kind[1] == self.value_kind[1])):
            raise InputError(f"PackedKVCache: graph mode (static=True) takes int4 / int4, int2 / int2, fp8_e4m3 / "
                             f"fp8_e4m3, mxfp4 / mxfp4 or bf16 / bf16 keys / values (what its Triton append packs "
                             f"and the decode kernel reads), not {key_format} / {value_format}")
        if backend == "triton" and not (ints or (self.static and (self.dense or fp8s))):
            raise InputError(f"PackedKVCache: the triton backend packs int4 / int2 keys and values (and fp8_e4m3, "
                             f"mxfp4 in graph mode), not {key_format} / "
                             f"{value_format}; use backend='torch' or 'auto'")
        if backend == "triton" and not _triton_runs_on(self.device):
            raise InputError(f"PackedKVCache: the triton backend needs triton and a CUDA device (or "
                             f"TRITON_INTERPRET=1 for CPU tensors); the cache is on {self.device}")
        if backend == "auto":
            backend = "triton" if (ints or self.static) and _triton_runs_on(self.device) else "torch"
        self.backend = backend
        b, h, d = self.batch, self.kv_heads, head_dim
        if self.dense:
            self.group = group or 0
            self.quantized_capacity = 0
            window = capacity
        else:
            self.group = resolve_group(key_format, value_format, group, residual, d)
            self.quantized_capacity = quantized_tokens(capacity, residual, self.group)
            window = min(capacity, residual + self.group)
        self.window = torch.zeros(2, b, h, window, d, dtype=torch.bfloat16, device=self.device)
        self.device = self.window.device  # "cuda" -> "cuda:0": what the appended tensors' device is compared to
        cap = self.quantized_capacity
        self.k_codes, self.k_scales = self._storage(self.key_kind, cap, keys=True)
        self.v_codes, self.v_scales = self._storage(self.value_kind, cap, keys=False)
        self._tokens = 0
        self._quantized = 0
        #: graph mode: tokens so far, one int32 slot per append-kernel program (K / V x batch row x head), all equal
        self.lengths = torch.zeros(2 * b * h, dtype=torch.int32, device=self.device) if self.static else None

    # ---- token counts --------------------------------------------------------------------------------

    @property
    def length(self) -> torch.Tensor:
        """Graph mode: the token count as a 0-dim int32 device tensor (a view of `lengths`: it follows appends)."""
        if not self.static:
            raise InputError("PackedKVCache.length is the device-side count of a graph-mode cache (static=True); "
                             "use .tokens")
        return self.lengths[0]

    def _pull(self) -> None:
        """Graph mode: the host counts from the device counter (a sync)."""
        t = int(self.lengths[0])
        if t > self.capacity:
            raise InputError(f"PackedKVCache: more tokens were appended than its capacity of {self.capacity} holds "
                             "(graph mode: nothing was written past it and the decode attention returned NaN since); "
                             "build the cache with a larger capacity")
        self._tokens = t
        self._quantized = 0 if self.dense else quantized_tokens(t, self.residual, self.group)

    @property
    def tokens(self) -> int:
        """Tokens in the cache (graph mode: read from the device, a sync)."""
        if self.static:
            self._pull()
        return self._tokens

    @tokens.setter
    def tokens(self, n: int) -> None:  # benchmarks rewind a cache by setting it
        self._tokens = int(n)
        if self.static:
            self.lengths.fill_(self._tokens)
            self._quantized = 0 if self.dense else quantized_tokens(self._tokens, self.residual, self.group)

    @property
    def quantized(self) -> int:
        """Tokens in quantized storage (graph mode: from the device count, a sync)."""
        if self.static:
            self._pull()
        return self._quantized

    @quantized.setter
    def quantized(self, n: int) -> None:
        if self.static:
            raise InputError("PackedKVCache: in graph mode the quantized count follows from .tokens; set that")
        self._quantized = int(n)

    # ---- layout facts --------------------------------------------------------------------------------

    def _span(self, kind: tuple[str, int, str | None], keys: bool) -> int:
        """Tokens per key scale (keys) or channels per value scale (values), as PackedKV defines them."""
        if kind[2] == "e8m0":
            return MX_BLOCK
        return self.group if (keys or kind[2] == "fp16") else self.head_dim

    def _storage(self, kind: tuple[str, int, str | None], cap: int, keys: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Zeroed codes [B, H, cap * bits / 16, D / 2] and scales for `cap` quantized tokens (empty for bf16)."""
        b, h, d = self.batch, self.kv_heads, self.head_dim
        bits, scale = kind[1], kind[2]
        rows = 0 if self.dense else cap * bits // HALF_BITS
        codes = torch.zeros(b, h, rows, d // 2, dtype=torch.int32, device=self.device)
        if scale is None:
            return codes, None
        span = self._span(kind, keys)
        shape = (b, h, cap // span, d) if keys else (b, h, cap, d // span)
        return codes, torch.zeros(shape, dtype=torch.float16 if scale == "fp16" else torch.uint8, device=self.device)

    @property
    def rest(self) -> int:
        """Tokens in the bf16 window."""
        if self.static:
            self._pull()
        return self._tokens - self._quantized

    @property
    def nbytes_allocated(self) -> int:
        """Bytes this layer holds for its capacity: codes, scales and the window (K and V)."""
        return sum(t.numel() * t.element_size() for t in (self.k_codes, self.k_scales, self.v_codes, self.v_scales,
                                                          self.window) if t is not None)

    # ---- appending -----------------------------------------------------------------------------------

    def _check_new(self, k: torch.Tensor, v: torch.Tensor, capacity: bool = True) -> int:
        want = f"[{self.batch}, {self.kv_heads}, n, {self.head_dim}]"
        for name, x in (("k", k), ("v", v)):
            if not isinstance(x, torch.Tensor):
                raise InputError(f"PackedKVCache.append: {name} must be a tensor {want}, got {type(x).__name__}")
            if x.dim() != 4 or (x.shape[0], x.shape[1], x.shape[3]) != (self.batch, self.kv_heads, self.head_dim) \
                    or x.shape[2] < 1:
                raise InputError(f"PackedKVCache.append: {name} must be {want} (n >= 1 new tokens), got "
                                 f"{tuple(x.shape)}")
            if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
                raise InputError(f"PackedKVCache.append: {name} must be bfloat16, float16 or float32, got {x.dtype}")
            if x.device != self.device:
                raise InputError(f"PackedKVCache.append: {name} is on {x.device}, the cache on {self.device}")
        if k.shape != v.shape:
            raise InputError(f"PackedKVCache.append: k {tuple(k.shape)} and v {tuple(v.shape)} must have the same "
                             "shape")
        n = k.shape[2]
        if not capacity:  # graph mode's one-token append: the kernel guards the capacity (no host sync)
            return n
        if self._tokens + n > self.capacity:
            raise InputError(f"PackedKVCache.append: {n} more tokens overflow the capacity of {self.capacity} (it "
                             f"holds {self._tokens}); build the cache with a larger capacity")
        # a one-token append on a GPU skips this check (a device sync per layer per step); a NaN there makes the
        # attention output NaN, never a wrong finite value
        if n > 1 or self.device.type != "cuda":
            if not (bool(torch.isfinite(k.to(torch.bfloat16)).all()) and
                    bool(torch.isfinite(v.to(torch.bfloat16)).all())):
                raise InputError("PackedKVCache.append: K or V holds NaN or Inf (or values beyond bf16's range)")
        return n

    @torch.no_grad()
    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add n tokens (k, v [B, H, n, D]); quantize every chunk that leaves the window (module docstring).
        Graph mode, one token, triton backend: one kernel launch (capturable); otherwise the eager path."""
        if self.static:
            if self.backend == "triton" and isinstance(k, torch.Tensor) and k.dim() == 4 and k.shape[2] == 1:
                from nmx.kernels.triton_kv_pack import append_token

                self._check_new(k, v, capacity=False)
                append_token(self, k, v)
                return
            self._pull()
            self._append_eager(k, v)
            self.lengths.fill_(self._tokens)
            return
        self._append_eager(k, v)

    def _append_eager(self, k: torch.Tensor, v: torch.Tensor) -> None:
        n = self._check_new(k, v)
        rest, width = self._tokens - self._quantized, self.window.shape[3]
        total = rest + n
        if total <= width:  # the common case (a decode step): the new tokens land in the window
            self.window[0, :, :, rest:total].copy_(k)
            self.window[1, :, :, rest:total].copy_(v)
            src_k, src_v = self.window[0], self.window[1]
        else:  # a prefill longer than the window: quantize from the window's tokens followed by the new ones
            src_k = torch.cat([self.window[0, :, :, :rest], k.to(torch.bfloat16)], dim=2)
            src_v = torch.cat([self.window[1, :, :, :rest], v.to(torch.bfloat16)], dim=2)
        moved = 0 if self.dense else quantized_tokens(total, self.residual, self.group)
        if moved:
            self._quantize_chunks(src_k, src_v, moved)
        keep = total - moved
        if total > width:
            self.window[0, :, :, :keep].copy_(src_k[:, :, moved:])
            self.window[1, :, :, :keep].copy_(src_v[:, :, moved:])
        elif moved:
            self._shift_window(moved, keep)
        self._tokens += n
        self._quantized += moved

    def _shift_window(self, by: int, keep: int) -> None:
        """Move window tokens by .. by + keep - 1 to 0 .. keep - 1 (K and V together), in pieces of at most `by`
        tokens: each piece's source and destination are disjoint, and no piece reads what an earlier one wrote."""
        for lo in range(0, keep, by):
            hi = min(lo + by, keep)
            self.window[:, :, :, lo:hi].copy_(self.window[:, :, :, lo + by:hi + by])

    def _quantize_chunks(self, src_k: torch.Tensor, src_v: torch.Tensor, count: int) -> None:
        """Quantize the first `count` tokens (whole chunks) of src [B, H, T, D] (bf16, contiguous) into the next
        chunk slots of the codes and scales."""
        from nmx import formats

        start = self._quantized
        for keys, src, kind, name in ((True, src_k, self.key_kind, self.key_format),
                                      (False, src_v, self.value_kind, self.value_format)):
            codes_buf = self.k_codes if keys else self.v_codes
            scales_buf = self.k_scales if keys else self.v_scales
            if self.backend == "triton" and kind[0] == "int":  # fp8 (graph mode) packs eagerly through torch
                self._triton_pack_into(src, count, kind[1], keys, codes_buf, scales_buf, start)
                continue
            nph, span = HALF_BITS // kind[1], self._span(kind, keys)
            codes, scales = _torch_codes(formats.get(name), src, keys, count, self.group, span, kind)
            codes_buf[:, :, start // nph:(start + count) // nph].copy_(codes)
            if scales is not None:
                lo, hi = (start // span, (start + count) // span) if keys else (start, start + count)
                scales_buf[:, :, lo:hi].copy_(scales)

    def _triton_pack_into(self, src: torch.Tensor, count: int, bits: int, keys: bool, codes_buf: torch.Tensor,
                          scales_buf: torch.Tensor, start: int) -> None:
        """triton_kv_pack's kernel (the one `pack_int_codes` launches) writing straight into the preallocated
        buffers: program (bh, c) reads tokens c*G .. c*G + G - 1 of src's row bh (row stride T = src.shape[2]) and
        writes chunk c of a [B*H, CHUNKS, ...] output, so output pointers at chunk slot `start / G` with
        CHUNKS = the capacity in chunks put it in place. Same arithmetic, so the same bytes as pack_kv."""
        from nmx.kernels.triton_fakequant import _IEEE
        from nmx.kernels.triton_kv_pack import _kv_int_pack_kernel

        b, h, t, d = src.shape
        g = self.group
        nph = HALF_BITS // bits
        chunk0 = start // g
        codes_out = codes_buf[:, :, chunk0 * (g // nph):]
        scales_out = scales_buf[:, :, chunk0:] if keys else scales_buf[:, :, start:]
        tile = g * d
        _kv_int_pack_kernel[(b * h, count // g)](
            src.view(torch.int16), codes_out, scales_out, t, self.quantized_capacity // g, KEYS=keys, BITS=bits,
            QMAX=(1 << (bits - 1)) - 1, G=g, D=d, num_warps=4 if tile <= 8192 else 8, **_IEEE)

    # ---- reading -------------------------------------------------------------------------------------

    def view(self) -> PackedKV:
        """The cache's tokens as a `PackedKV` whose tensors are slices of this cache's buffers (no copy): valid
        until the next `append` (which writes the window in place)."""
        if self.static:
            self._pull()
        if self._tokens == 0:
            raise InputError("PackedKVCache.view: the cache holds no tokens yet; append some first")
        tq, rest = self._quantized, self._tokens - self._quantized

        def rows(buf: torch.Tensor | None, tokens_per_row: int) -> torch.Tensor | None:
            return None if buf is None else buf[:, :, :tq // tokens_per_row]

        k_nph, v_nph = HALF_BITS // self.key_kind[1], HALF_BITS // self.value_kind[1]
        k_span = self._span(self.key_kind, True)  # value scales: one row per token
        return PackedKV(self.batch, self.kv_heads, self._tokens, self.head_dim, self.group, self.residual,
                        self.key_format, self.value_format, tq, rows(self.k_codes, k_nph), rows(self.k_scales, k_span),
                        rows(self.v_codes, v_nph), rows(self.v_scales, 1),
                        self.window[0, :, :, :rest], self.window[1, :, :, :rest])

    def capacity_view(self) -> PackedKV:
        """The whole preallocated storage as a `PackedKV` (all quantized slots, the whole window): the shapes the
        graph-mode decode kernel's fixed grid is planned on (it reads the live lengths from `lengths`). Not the
        cache's tokens: use `view()` for those."""
        w = self.window.shape[3]
        return PackedKV(self.batch, self.kv_heads, self.quantized_capacity + w, self.head_dim, self.group,
                        self.residual, self.key_format, self.value_format, self.quantized_capacity, self.k_codes,
                        self.k_scales, self.v_codes, self.v_scales, self.window[0], self.window[1])

    def nbytes_at(self, tokens: int) -> int:
        """Bytes a decode step reads at `tokens` tokens (codes, scales, the live window; K and V): `view().nbytes`
        of a cache holding that many, computed without one."""
        b, h, d = self.batch, self.kv_heads, self.head_dim
        tq = 0 if self.dense else quantized_tokens(tokens, self.residual, self.group)
        total = 2 * 2 * b * h * (tokens - tq) * d  # the bf16 window
        for kind, keys in ((self.key_kind, True), (self.value_kind, False)):
            if self.dense:
                continue
            total += b * h * (tq * kind[1] // HALF_BITS) * (d // 2) * 4
            if kind[2] is not None:
                span = self._span(kind, keys)
                total += b * h * ((tq // span) * d if keys else tq * (d // span)) * (2 if kind[2] == "fp16" else 1)
        return total

    def reset(self) -> None:
        """Forget every token (the buffers stay allocated; stale bytes are never read: views cover written
        tokens only)."""
        self._tokens = self._quantized = 0
        if self.static:
            self.lengths.zero_()
