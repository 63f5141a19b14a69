"""nmx.kv's quantized pages -> the decode-attention kernel's layout (`nmx.kernels.kv_layout.PackedKV`).

Finding: the two are the same *values* (the same codes and the same scales, bit for bit: both come from
`Format.encode` of the same chunks), but NOT the same bytes, so one cannot be a view of the other:

- nmx.kv (`nmx.kv.quant.PageCodec`) stores one page per chunk of G tokens for all batch rows and heads
  at once: the format's densely bit-packed codes in block order ([b][h][channel][G tokens] for keys,
  [b][h][token][d/G groups][G channels] for values), two's-complement integers, then the scales in the
  same block order, each page one row of a [pages, bytes] uint8 tensor.
- the kernel (`kv_layout`) stores per (b, h) a run of int32 words over tokens: word [i, c] holds
  channels 2c and 2c+1 in its two 16-bit halves, 16/bits consecutive tokens each, integers in offset
  binary (c + 2^(bits-1)); key scales [b, h, T/SK, d], value scales [b, h, T, d/SV].

The page-major order (batch and heads inside a page) against the kernel's head-major order (tokens
inside a head), the channel pairing and the offset binary all differ, so the kernel layout is produced
by re-arranging the codes: `packed_kv_from_cache(layer)` unpacks the pages' codes and re-packs them into
words (no re-quantization: the decoded values are bit-identical, checked by the tests against
`KVLayer.view()` and against `pack_kv` of the same tokens). It reads every page once and writes a new
buffer of the same size (the codes and scales; the bf16 window is copied): an O(cache) re-layout, fine
once per prompt, too slow per decode step. Making the cache itself keep pages in the kernel's layout
(so the append is free, issue 16's "one layout") means changing `PageCodec`; not done here.

What the kernel layout cannot express, refused with one InputError: attention sinks (quant.sinks > 0),
evicted slots, pre-RoPE keys (the kernel reads rotated keys), axes other than KIVI's (keys per channel,
values per token), formats other than int4 / int2 / mxfp4 / fp8_e4m3, a full-precision window not in
bf16, a group that is not a power of two between 16 and head_dim.
"""

from __future__ import annotations

from typing import Any

import torch

from nmx.errors import InputError
from nmx.kernels.kv_layout import HALF_BITS, KV_FORMATS, MX_BLOCK, PackedKV, _pack_words, _pow2


def _codes(pages: dict[str, torch.Tensor], fmt: Any, count: int) -> torch.Tensor:
    from nmx.formats.packing import unpack_bits

    return unpack_bits(pages["codes"].reshape(-1), fmt.code_bits, count).to(torch.int64)


def _check_layer(layer: Any) -> tuple[Any, str, str]:
    policy = layer.cache.policy
    q = policy.quant
    if not getattr(layer, "is_initialized", False):
        raise InputError(f"KV cache layer {layer.layer_idx} holds no tokens yet")
    if q is None:
        return None, "bf16", "bf16"
    kf, vf = (q.key_format or q.format), (q.value_format or q.format)
    for which, name in (("key", kf), ("value", vf)):
        if name not in KV_FORMATS or name == "bf16":
            raise InputError(f"the KV decode-attention kernel reads int4, int2, mxfp4 or fp8_e4m3 {which}s, not {name}")
    if (q.key_axis, q.value_axis) != ("channel", "token"):
        raise InputError("the KV kernel layout holds keys per channel and values per token (KIVI): "
                         f"got key_axis {q.key_axis}, value_axis {q.value_axis}")
    if layer.sink_k.shape[2]:
        raise InputError("the KV kernel layout has no attention sinks: use quant.sinks: 0")
    if layer.live is not None:
        raise InputError("the KV cache has evicted slots; the kernel layout holds a contiguous run of tokens")
    if layer.pre_rope:
        raise InputError("the KV kernel reads rotated keys: use quant.key_rope: post")
    if layer.fp != torch.bfloat16:
        raise InputError(f"the KV kernel's full-precision window is bf16, the cache keeps {layer.fp}: use "
                         "kv_cache.full_precision: bf16")
    g, d = q.chunk, layer.d
    if not (_pow2(d) and 16 <= d <= 256):
        raise InputError(f"the KV kernel supports head_dim 16, 32, 64, 128 or 256, got {d}")
    if not (_pow2(g) and 16 <= g <= d and d % g == 0):
        raise InputError(f"quant.group: the KV kernel needs a power-of-two group between 16 and head_dim ({d}), "
                         f"got {g}")
    return q, kf, vf


@torch.no_grad()
def packed_kv_from_cache(layer: Any) -> PackedKV:
    """The kernel's PackedKV of one `nmx.kv.KVCache` layer (`cache.layers[i]`), from its pages' codes and
    scales re-arranged (module docstring); decodes (`dequantize_kv`) to exactly what the layer holds."""
    q, kf, vf = _check_layer(layer)
    b, h, d = layer.b, layer.h, layer.d
    k_rest, v_rest = layer.tail_k.to(torch.bfloat16).contiguous(), layer.tail_v.to(torch.bfloat16).contiguous()
    t = layer.n_slots
    if q is None:
        empty = torch.zeros(b, h, 0, d // 2, dtype=torch.int32, device=layer.device)
        out = PackedKV(b, h, t, d, 0, 0, "bf16", "bf16", 0, empty, None, empty, None, k_rest, v_rest)
        out.check()
        return out
    g, n = q.chunk, layer.n_pages
    tq = n * g
    over = t - q.residual
    if ((over // g) * g if over >= g else 0) != tq:
        raise InputError(f"KV cache layer {layer.layer_idx} holds {n} pages for {t} tokens, not the kernel layout's "
                         f"G * floor((T - residual) / G)")
    fields: dict[str, torch.Tensor | None] = {}
    for which, name, pages, codec in (("k", kf, layer.pages_k, layer.cache.codec_k),
                                      ("v", vf, layer.pages_v, layer.cache.codec_v)):
        elem, bits, scale_kind = KV_FORMATS[name]
        fmt = codec.fmt
        extra = set(pages) - {"codes", "scales"}
        if extra:
            raise InputError(f"the {name} pages carry {sorted(extra)}, which the KV kernel layout does not hold")
        if n == 0:
            codes = torch.zeros(b, h, 0, d, dtype=torch.int64, device=layer.device)
            scales = None
            if scale_kind is not None:
                shape = (b, h, 0, d) if which == "k" else (b, h, 0, d // (MX_BLOCK if scale_kind == "e8m0" else g))
                scales = torch.zeros(shape, dtype=torch.float16 if scale_kind == "fp16" else torch.uint8,
                                     device=layer.device)
        else:
            c = _codes(pages, fmt, n * b * h * g * d)
            raw = pages.get("scales")
            if raw is not None:
                raw = raw.reshape(-1)
                raw = raw.view(torch.float16) if scale_kind == "fp16" else raw
            if which == "k":  # [P][b][h][channel][G tokens] -> [b, h, P*G, d]
                codes = c.reshape(n, b, h, d, g).permute(1, 2, 0, 4, 3).reshape(b, h, tq, d)
                span = MX_BLOCK if scale_kind == "e8m0" else g
                scales = None if raw is None else (raw.reshape(n, b, h, d, g // span).permute(1, 2, 0, 4, 3)
                                                   .reshape(b, h, tq // span, d))
            else:  # [P][b][h][token][d/G][G channels] -> [b, h, P*G, d]
                codes = c.reshape(n, b, h, g, d).permute(1, 2, 0, 3, 4).reshape(b, h, tq, d)
                span = MX_BLOCK if scale_kind == "e8m0" else g
                scales = None if raw is None else (raw.reshape(n, b, h, g, d // span).permute(1, 2, 0, 3, 4)
                                                   .reshape(b, h, tq, d // span))
        if elem == "int":
            codes = codes ^ (1 << (bits - 1))  # two's complement -> offset binary
        if tq % (HALF_BITS // bits):
            raise InputError(f"{tq} quantized tokens do not fill whole {bits}-bit words")
        fields[f"{which}_codes"] = _pack_words(codes, bits).contiguous()
        fields[f"{which}_scales"] = None if scales is None else scales.contiguous()
    out = PackedKV(b, h, t, d, g, q.residual, kf, vf, tq, fields["k_codes"], fields["k_scales"], fields["v_codes"],
                   fields["v_scales"], k_rest, v_rest)
    out.check()
    return out
