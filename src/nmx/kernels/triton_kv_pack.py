"""Triton kernel: quantize K and V into the packed KV layout (kv_layout.py) in one launch each, for the
integer formats (int4, int2: symmetric codes, one fp16 scale per group).

`pack_kv`'s torch path runs hundreds of small operations per call; a cache that re-quantizes a group
of G tokens from its bf16 window every G decode steps pays that in every layer. Here one program
takes one chunk of G tokens of one (batch, head) row, [G, D] elements:

- keys: per channel over the chunk's G tokens (the tile transposed, so a group is a row), values: per
  token over groups of G channels (the tile reshaped to [G * D/G, G]);
- scale and codes by nmx.formats' integer arithmetic step for step (`int_sym_codes`, shared with the
  fake-quant kernel: IEEE division, fp16 rounding of the scale, round half to even), so the bytes are
  equal to `pack_kv`'s torch path bit for bit;
- codes to offset binary, shifted into their place in the 32-bit words (token n of a half at bits
  n*bits, channel 2c+1 in the high half) and or-ed together (a sum of disjoint bit fields), stored.

`_kv_static_append_kernel` is the one-token append of a graph-mode `PackedKVCache` (kv_cache.py, static=True;
int4, int2, fp8_e4m3 or mxfp4 codes: `_e4m3_codes` and `_mxfp4_codes` are nmx's encodings of those formats):
one launch per layer per decode step that writes the token into the bf16 window at the position its device-side
counter gives and, only on the step that fills the window, packs the oldest chunk (the same `_pack_chunk`, so
the same bytes) and moves the residual tokens to the window's front. Every program reads the counter and does
nothing more than the token write otherwise: a fixed launch, no host sync, capturable in a CUDA graph.

Import this module only where triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nmx.kernels.triton_fakequant import _IEEE, ABS_MASK, INF_BITS, _load_f32, _store, int_sym_codes


@triton.jit
def _pack_words(codes, G: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, OFFSET: tl.constexpr = True):
    """Codes [G, D] -> the layout's words [G * BITS / 16, D / 2] (int32): signed integer codes (float32) in offset
    binary, or (OFFSET False) bit patterns (int32) as they are."""
    NPH: tl.constexpr = 16 // BITS
    if OFFSET:
        u = codes.to(tl.int32) + (1 << (BITS - 1))  # offset binary
    else:
        u = codes
    u = tl.reshape(u, (G // NPH, NPH, D // 2, 2))
    n = tl.arange(0, NPH)[None, :, None, None]
    h = tl.arange(0, 2)[None, None, None, :]
    return tl.sum(tl.sum(u << (n * BITS + 16 * h), axis=3), axis=1)


@triton.jit
def _e4m3_codes(x):
    """float32 -> nmx's fp8_e4m3 codes (int32 0..255): round to nearest even, saturating at +-448 (Inf too),
    subnormals (below 2^-6, steps of 2^-9) kept, NaN -> 127 whatever its sign."""
    u = x.to(tl.uint32, bitcast=True)
    a = u & 0x7FFFFFFF
    sign = ((u >> 24) & 0x80).to(tl.int32)
    # normal: the float32's exponent and top 3 mantissa bits, rounded to nearest even on the bit pattern, rebiased
    normal = (((a + (0x7FFFF + ((a >> 20) & 1))) >> 20).to(tl.int32)) - (120 << 3)
    sub = ((a.to(tl.float32, bitcast=True) * 512.0 + 8388608.0) - 8388608.0).to(tl.int32)  # m * 2^-9, m = 0 .. 8
    mag = tl.minimum(tl.where(a < 0x3C800000, sub, normal), 126)  # 0x3C800000: 2^-6, e4m3's smallest normal
    return tl.where(a > 0x7F800000, 127, sign | mag)


@triton.jit
def _mxfp4_codes(xb):
    """MX blocks [NB, 32] (float32) -> (e2m1 codes [NB, 32], e8m0 scale codes [NB]) as nmx's mxfp4 encodes them:
    the floor scale rule 2^(floor(log2 amax) - 2), clamped to 2^-127 .. 2^127; elements x / 2^X rounded to the
    e2m1 grid (nearest even, saturating at 6), the sign kept (also of a zero). NaN / Inf never reach here."""
    amax_bits = tl.max(xb.to(tl.int32, bitcast=True) & ABS_MASK, axis=1)
    sx = tl.minimum(tl.maximum((amax_bits >> 23) - 127 - 2, -127), 127)
    inv = tl.where(127 - sx == 0, 0x00400000, (127 - sx) << 23).to(tl.float32, bitcast=True)  # 2^-sx
    v = xb * inv[:, None]  # exact but for subnormal results, as nmx divides
    a = tl.minimum((v.to(tl.int32, bitcast=True) & ABS_MASK).to(tl.float32, bitcast=True), 6.0)
    eb = tl.maximum(a.to(tl.int32, bitcast=True) >> 23, 127)  # e2m1's smallest normal exponent is 0
    magic = (((eb + 22) << 23) | 0x400000).to(tl.float32, bitcast=True)
    e = (a + magic) - magic  # 0, 0.5, 1, 1.5, 2, 3, 4 or 6
    eb2 = e.to(tl.int32, bitcast=True)
    mag = tl.where(e >= 1.0, (((eb2 >> 23) - 126) << 1) | ((eb2 >> 22) & 1), tl.where(e == 0.5, 1, 0))
    sign = ((v.to(tl.int32, bitcast=True) >> 28) & 8)
    return sign | mag, sx + 127


@triton.jit
def _pack_chunk(x_base, codes_base, scales_base, KEYS: tl.constexpr, BITS: tl.constexpr, QMAX: tl.constexpr,
                G: tl.constexpr, D: tl.constexpr, ELEM: tl.constexpr = 0):
    """Quantize the G tokens x_base[i * D + c] (bf16 bits as int16, token-major) into one chunk slot: its words at
    codes_base[w * D/2 + c] (w < G * BITS / 16), its fp16 scales at scales_base[c] (keys: one per channel) or
    scales_base[i * D/G + j] (values: one per token and group of G channels). ELEM 1: fp8_e4m3 codes (8 bits),
    no scales."""
    t = tl.arange(0, G)
    d = tl.arange(0, D)
    bits16 = tl.load(x_base + t[:, None] * D + d[None, :])  # bf16 read as int16 bits
    x = (bits16.to(tl.int32) << 16).to(tl.float32, bitcast=True)  # exact, subnormals kept
    if ELEM == 1:
        words = _pack_words(_e4m3_codes(x), G, D, 8, False)
        tl.store(codes_base + tl.arange(0, G // 2)[:, None] * (D // 2) + tl.arange(0, D // 2)[None, :], words)
    elif ELEM == 2:  # mxfp4: blocks of 32 tokens of a channel (keys) or 32 channels of a token (values)
        if KEYS:
            codes, sc = _mxfp4_codes(tl.reshape(tl.trans(x), (D * (G // 32), 32)))
            codes = tl.trans(tl.reshape(codes, (D, G)))
            # scale rows j = 0 .. G/32 - 1 of the chunk, one per channel: [D, G/32] -> row-major [G/32, D]
            tl.store(scales_base + tl.arange(0, G // 32)[None, :] * D + d[:, None],
                     tl.reshape(sc, (D, G // 32)).to(tl.uint8))
        else:
            codes, sc = _mxfp4_codes(tl.reshape(x, (G * (D // 32), 32)))
            codes = tl.reshape(codes, (G, D))
            tl.store(scales_base + t[:, None] * (D // 32) + tl.arange(0, D // 32)[None, :],
                     tl.reshape(sc, (G, D // 32)).to(tl.uint8))
        words = _pack_words(codes, G, D, 4, False)
        tl.store(codes_base + tl.arange(0, G // 4)[:, None] * (D // 2) + tl.arange(0, D // 2)[None, :], words)
    else:
        if KEYS:  # one scale per channel: the transposed tile's rows
            xr = tl.trans(x)  # [D, G]
        else:  # one scale per (token, G channels)
            xr = tl.reshape(x, (G * (D // G), G))
        amax_bits = tl.max(xr.to(tl.int32, bitcast=True) & ABS_MASK, axis=1)
        codes, scale = int_sym_codes(xr, amax_bits, amax_bits >= INF_BITS, QMAX)
        if KEYS:
            codes = tl.trans(codes)
            tl.store(scales_base + d, tl.reshape(scale, (D,)).to(tl.float16))
        else:
            codes = tl.reshape(codes, (G, D))
            tl.store(scales_base + t[:, None] * (D // G) + tl.arange(0, D // G)[None, :],
                     tl.reshape(scale, (G, D // G)).to(tl.float16))
        NPH: tl.constexpr = 16 // BITS
        words = _pack_words(codes, G, D, BITS)
        tl.store(codes_base + tl.arange(0, G // NPH)[:, None] * (D // 2) + tl.arange(0, D // 2)[None, :], words)


@triton.jit
def _kv_int_pack_kernel(x_ptr, codes_ptr, scales_ptr, T, CHUNKS,
                        KEYS: tl.constexpr, BITS: tl.constexpr, QMAX: tl.constexpr, G: tl.constexpr,
                        D: tl.constexpr):
    """Program (bh, c): tokens c*G .. c*G + G - 1 of row bh of x [B*H, T, D] -> chunk c of row bh of outputs laid
    out for CHUNKS chunks per row."""
    bh = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    NPH: tl.constexpr = 16 // BITS
    if KEYS:
        scales_base = scales_ptr + (bh * CHUNKS + chunk) * D
    else:
        scales_base = scales_ptr + (bh * CHUNKS * G + chunk * G) * (D // G)
    _pack_chunk(x_ptr + (bh * T + chunk * G) * D,
                codes_ptr + (bh * CHUNKS * (G // NPH) + chunk * (G // NPH)) * (D // 2), scales_base,
                KEYS, BITS, QMAX, G, D)


@triton.jit
def _kv_static_append_kernel(k_ptr, v_ptr, win_ptr, kc_ptr, ks_ptr, vc_ptr, vs_ptr, len_ptr, k_sb, k_sh, v_sb, v_sh,
                             H, BH, CAP, CHUNKS, IN_KIND: tl.constexpr, W: tl.constexpr, RES: tl.constexpr,
                             G: tl.constexpr, D: tl.constexpr, DENSE: tl.constexpr, KBITS: tl.constexpr,
                             VBITS: tl.constexpr, NSHIFT: tl.constexpr, ELEM: tl.constexpr = 0):
    """One-token append of a graph-mode `PackedKVCache` (kv_cache.py): program (bh, kv) owns window row (kv, bh)
    and its own token counter len_ptr[kv * BH + bh] (all counters hold the same T; no program reads another's,
    so nothing races across programs). With T the tokens so far, Tq = G * floor((T - RES) / G) (0 below G) and
    Tr = T - Tq:
      1. write the new token (rounded to bf16, nearest even) at window slot Tr;
      2. only when that fills the window (Tr + 1 == RES + G): quantize its first G tokens into chunk slot Tq / G
         (`_pack_chunk`, the bytes of pack_kv), then move tokens G .. G + RES - 1 to 0 .. RES - 1 (pieces of G
         tokens, a barrier between each piece's load and its store: no piece overwrites what a later one reads);
      3. T + 1 into the counter (after a barrier: every warp has read T).
    A full cache (T == CAP) writes nothing and sets the counter to CAP + 1, which the decode kernel turns into NaN
    (a captured step cannot raise)."""
    bh = tl.program_id(0)
    kv = tl.program_id(1)
    slot = kv * BH + bh
    T = tl.load(len_ptr + slot)
    if T >= CAP:
        tl.debug_barrier()
        tl.store(len_ptr + slot, CAP + 1)
    else:
        if DENSE:
            tq = T * 0
        else:
            over = T - RES
            tq = tl.where(over >= G, (over // G) * G, 0)
        tr = T - tq
        b = (bh // H).to(tl.int64)
        h = (bh % H).to(tl.int64)
        d = tl.arange(0, D)
        if kv == 0:
            x = _load_f32(k_ptr + b * k_sb + h * k_sh, d, None, IN_KIND, False)
        else:
            x = _load_f32(v_ptr + b * v_sb + h * v_sh, d, None, IN_KIND, False)
        row = win_ptr + slot.to(tl.int64) * (W * D)
        _store(row + tr * D, d, x, None, 1, False)  # bf16 bits, round to nearest even (as torch's copy_)
        if not DENSE:
            if tr + 1 == RES + G:
                tl.debug_barrier()  # the token written above is read below by other threads
                chunk = (tq // G).to(tl.int64)
                bh64 = bh.to(tl.int64)
                if kv == 0:
                    KNPH: tl.constexpr = 16 // KBITS
                    KROWS: tl.constexpr = G // 32 if ELEM == 2 else 1  # key scale rows per chunk
                    _pack_chunk(row, kc_ptr + (bh64 * CHUNKS + chunk) * (G // KNPH) * (D // 2),
                                ks_ptr + (bh64 * CHUNKS + chunk) * KROWS * D, True, KBITS, (1 << (KBITS - 1)) - 1, G,
                                D, ELEM)
                else:
                    VNPH: tl.constexpr = 16 // VBITS
                    VSPAN: tl.constexpr = 32 if ELEM == 2 else G  # channels per value scale
                    _pack_chunk(row, vc_ptr + (bh64 * CHUNKS + chunk) * (G // VNPH) * (D // 2),
                                vs_ptr + (bh64 * CHUNKS + chunk) * G * (D // VSPAN), False, VBITS,
                                (1 << (VBITS - 1)) - 1, G, D, ELEM)
                tl.debug_barrier()  # the chunk is read before the shift overwrites it
                for p in tl.static_range(NSHIFT):
                    i = p * G + tl.arange(0, G)
                    keep = (i < RES)[:, None]
                    y = tl.load(row + (i + G)[:, None] * D + d[None, :], mask=keep, other=0)
                    tl.debug_barrier()
                    tl.store(row + i[:, None] * D + d[None, :], y, mask=keep)
        tl.debug_barrier()  # every thread has read T
        tl.store(len_ptr + slot, T + 1)


IN_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def append_token(cache, k: torch.Tensor, v: torch.Tensor) -> None:
    """Launch `_kv_static_append_kernel` for one token k, v [B, H, 1, D] (checked by the caller) of a graph-mode
    `PackedKVCache`: one launch, no host sync, nothing that depends on the data (CUDA-graph capturable)."""
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    if v.dtype != k.dtype:
        v = v.to(k.dtype)
    in_kind = IN_KINDS[k.dtype]
    if k.dtype == torch.bfloat16:
        k, v = k.view(torch.int16), v.view(torch.int16)
    b, h, d = cache.batch, cache.kv_heads, cache.head_dim
    dense = cache.dense
    g = 16 if dense else cache.group  # placeholders where dense: never read
    win = cache.window
    w = win.shape[3]
    kc = cache.lengths if dense else cache.k_codes
    vc = cache.lengths if dense else cache.v_codes
    ks = cache.lengths if dense or cache.k_scales is None else cache.k_scales
    vs = cache.lengths if dense or cache.v_scales is None else cache.v_scales
    kbits = 16 if dense else cache.key_kind[1]
    vbits = 16 if dense else cache.value_kind[1]
    tile = g * d
    _kv_static_append_kernel[(b * h, 2)](
        k, v, win.view(torch.int16), kc, ks, vc, vs, cache.lengths, k.stride(0), k.stride(1), v.stride(0),
        v.stride(1), h, b * h, cache.capacity, max(1, cache.quantized_capacity // g) if not dense else 1,
        IN_KIND=in_kind, W=w, RES=cache.residual, G=g, D=d,
        DENSE=dense, KBITS=kbits if kbits < 16 else 4, VBITS=vbits if vbits < 16 else 4,
        NSHIFT=0 if dense else -(-cache.residual // g), ELEM={"e4m3": 1, "e2m1": 2}.get(cache.key_kind[0], 0),
        num_warps=4 if tile <= 8192 else 8, **_IEEE)


def pack_int_codes(x16: torch.Tensor, tq: int, group: int, bits: int, keys: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Words [B, H, tq * bits/16, D/2] (int32) and fp16 scales ([B, H, tq/G, D] for keys, [B, H, tq, D/G]
    for values) of the first tq tokens of x16 (bf16 [B, H, T, D], contiguous), as pack_kv lays them out."""
    b, h, t, d = x16.shape
    chunks = tq // group
    codes = torch.empty(b, h, tq * bits // 16, d // 2, dtype=torch.int32, device=x16.device)
    shape = (b, h, chunks, d) if keys else (b, h, tq, d // group)
    scales = torch.empty(shape, dtype=torch.float16, device=x16.device)
    if chunks:
        tile = group * d
        _kv_int_pack_kernel[(b * h, chunks)](x16.view(torch.int16), codes, scales, t, chunks, KEYS=keys, BITS=bits,
                                             QMAX=(1 << (bits - 1)) - 1, G=group, D=d,
                                             num_warps=4 if tile <= 8192 else 8, **_IEEE)
    return codes, scales
