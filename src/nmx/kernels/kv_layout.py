"""The packed KV-cache layout the decode-attention kernel reads, `pack_kv` that makes it, and
`dequantize_kv`, its plain-torch decode.

The quantization is nmx.kv's (`nmx.kv.quant.PageCodec`, KIVI style), bit for bit: keys [B, H, T, D]
are quantized per channel over chunks of G consecutive tokens, values per token over groups of G
channels (one scale per group; a block format such as mxfp4 keeps its own block of 32 inside the
group), and the most recent tokens stay in full precision. As in `nmx.kv.KVCache` (no sinks,
`full_precision: bf16`): the first

    Tq = G * floor((T - residual) / G)   tokens are quantized (0 when T - residual < G),

the last T - Tq (between `residual` and `residual + G - 1`, or all of them) stay bf16, and tokens are
rounded to bf16 before they are quantized (that is how they sit in the cache's window).

Buffers (per batch row b and KV head h; element formats: int4 / int2 symmetric with an fp16 scale per
vector, mxfp4 = e2m1 elements with an e8m0 scale per block of 32, fp8_e4m3 without scales, bf16 = nothing
quantized). Each buffer's last two dims are contiguous (a (b, h) row is one dense run); the batch and head
dims may have any strides, so a buffer can be the first tokens of a larger preallocated one
(`kv_cache.PackedKVCache.view()`: buf[:, :, :rows] of a [B, H, capacity rows, ...] buffer, no copy).
`pack_kv` returns contiguous buffers; the kernel reads each tensor's own batch and head strides:

    k_codes   int32 [B, H, Tq/NPH, D/2]   32-bit words (bit patterns): word [i, c] holds channel 2c in its
    v_codes   int32 [B, H, Tq/NPH, D/2]   low 16 bits and channel 2c+1 in its high 16 bits, for the NPH =
                                          16 / bits tokens i*NPH .. i*NPH + NPH - 1: code n of a half (bits
                                          n*bits .. n*bits + bits - 1 of it) is token i*NPH + n
    k_scales  [B, H, Tq/SK, D]   one per (SK consecutive tokens, channel); SK = G (int), 32 (mxfp4)
    v_scales  [B, H, Tq, D/SV]   one per (token, SV consecutive channels); SV = G (int), 32 (mxfp4)
              fp16 for int formats, uint8 e8m0 codes (value 2^(code - 127)) for mxfp4, None for fp8
    k_rest    bf16 [B, H, T - Tq, D]   the full-precision window (everything for bf16)
    v_rest    bf16 [B, H, T - Tq, D]

A block of tokens is one contiguous run of words (a program streaming tokens reads 16-byte vectors),
and one shift and one mask of a word give one token in NPH for two adjacent channels: exactly the two
fp16 halves of a tensor-core operand register, for every channel at once, with no element shuffling.
Codes of a word never mix scale groups (a group spans G >= 16 >= NPH tokens).

Integer codes are stored in *offset binary*, u = c + 2^(bits-1) (nmx encodes two's complement; the
value is the same), so that the fp16 with bit pattern 0x3C00 | u << (10 - bits) is exactly
1 + u / 2^bits and c = 2^bits * (that - 1.5): the kernel turns a word into two tensor-core operands
with two integer operations (a shift and a mask, then the or of 0x3C003C00).

Dequantized values are nmx's: code * scale in float32 (int), e2m1 * 2^(e - 127) (mxfp4), the e4m3
value (fp8); `dequantize_kv` returns them, and the tests check them against `nmx.kv.quant.PageCodec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nmx.errors import InputError

#: element kind, code bits, scale kind of each format the kernel reads
KV_FORMATS = {
    "int4": ("int", 4, "fp16"),
    "int2": ("int", 2, "fp16"),
    "mxfp4": ("e2m1", 4, "e8m0"),
    "fp8_e4m3": ("e4m3", 8, None),
    "bf16": ("bf16", 16, None),
}
MX_BLOCK = 32
MAX_HEAD_DIM = 256


def kv_format(name: str) -> tuple[str, int, str | None]:
    """(element kind, code bits, scale kind) of a KV format the kernel supports."""
    if name in KV_FORMATS:
        return KV_FORMATS[name]
    raise InputError(f"the KV decode-attention kernel does not read {name!r}: use one of "
                     f"{', '.join(KV_FORMATS)} (bf16 = not quantized)")


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


HALF_BITS = 16  # a code word is two 16-bit halves (two channels)


def _triton_runs_on(device: torch.device) -> bool:
    import importlib.util
    import os

    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def rows_are_dense(t: torch.Tensor) -> bool:
    """Whether t [B, H, rows, cols] has dense (b, h) rows: its last two dims are contiguous. The batch and head
    strides are free (a token slice of a preallocated buffer qualifies)."""
    rows, cols = t.shape[-2:]
    return (cols <= 1 or t.stride(-1) == 1) and (rows <= 1 or t.stride(-2) == cols)


@dataclass(frozen=True, eq=False)
class PackedKV:
    """A KV cache in the kernel's layout (see the module docstring)."""

    batch: int
    kv_heads: int
    tokens: int
    head_dim: int
    group: int
    residual: int
    key_format: str
    value_format: str
    quantized: int  # Tq: tokens in quantized storage (a multiple of group)
    k_codes: torch.Tensor
    k_scales: torch.Tensor | None
    v_codes: torch.Tensor
    v_scales: torch.Tensor | None
    k_rest: torch.Tensor
    v_rest: torch.Tensor

    # ---- derived layout facts -----------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.kv_heads, self.tokens, self.head_dim)

    @property
    def rest(self) -> int:
        return self.tokens - self.quantized

    @property
    def device(self) -> torch.device:
        return self.k_rest.device

    @property
    def key_kind(self) -> tuple[str, int, str | None]:
        return kv_format(self.key_format)

    @property
    def value_kind(self) -> tuple[str, int, str | None]:
        return kv_format(self.value_format)

    @property
    def key_span(self) -> int:
        """Tokens sharing one key scale (SK)."""
        return MX_BLOCK if self.key_kind[2] == "e8m0" else self.group

    @property
    def value_span(self) -> int:
        """Channels sharing one value scale (SV); head_dim when there is no scale."""
        kind = self.value_kind[2]
        return MX_BLOCK if kind == "e8m0" else self.group if kind == "fp16" else self.head_dim

    @property
    def key_nph(self) -> int:
        """Tokens per key code word (per 16-bit half)."""
        return HALF_BITS // self.key_kind[1]

    @property
    def value_nph(self) -> int:
        """Tokens per value code word (per 16-bit half)."""
        return HALF_BITS // self.value_kind[1]

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(t for t in (self.k_codes, self.k_scales, self.v_codes, self.v_scales, self.k_rest, self.v_rest)
                     if t is not None)

    @property
    def nbytes(self) -> int:
        """Bytes a decode step must read: codes, scales and the full-precision window."""
        return sum(t.numel() * t.element_size() for t in self.tensors)

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the same cache in bf16 (K and V)."""
        return 2 * 2 * self.batch * self.kv_heads * self.tokens * self.head_dim

    def to(self, device: torch.device | str) -> "PackedKV":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PackedKV(self.batch, self.kv_heads, self.tokens, self.head_dim, self.group, self.residual,
                        self.key_format, self.value_format, self.quantized, move(self.k_codes), move(self.k_scales),
                        move(self.v_codes), move(self.v_scales), move(self.k_rest), move(self.v_rest))

    def check(self) -> None:
        """Refuse buffers without the layout's shapes, dtypes, device and dense (b, h) rows (`rows_are_dense`)."""
        b, h, tq, d = self.batch, self.kv_heads, self.quantized, self.head_dim
        dev = self.device
        want = {"k_rest": ((b, h, self.rest, d), torch.bfloat16), "v_rest": ((b, h, self.rest, d), torch.bfloat16)}
        for which, (_, bits, scale) in (("k", self.key_kind), ("v", self.value_kind)):
            if bits == 16:
                continue
            want[f"{which}_codes"] = ((b, h, tq * bits // HALF_BITS, d // 2), torch.int32)
            if scale is not None:
                shape = (b, h, tq // self.key_span, d) if which == "k" else (b, h, tq, d // self.value_span)
                want[f"{which}_scales"] = (shape, torch.float16 if scale == "fp16" else torch.uint8)
        for name, (shape, dtype) in want.items():
            t = getattr(self, name)
            if t is None or tuple(t.shape) != shape or t.dtype != dtype:
                got = "None" if t is None else f"{t.dtype} {tuple(t.shape)}"
                raise InputError(f"PackedKV.{name} must be {dtype} {shape}, got {got}: build it with pack_kv")
            if t.device != dev:
                raise InputError(f"PackedKV.{name} is on {t.device}, the rest of the cache on {dev}")
            if not rows_are_dense(t):
                raise InputError(f"PackedKV.{name} is not contiguous in its last two dims (a [B, H, rows, cols] "
                                 "buffer may be a token slice of a larger one, nothing else); call .contiguous() on it")


# ---- packing ---------------------------------------------------------------------------------------


def _check_kv(k: torch.Tensor, v: torch.Tensor) -> None:
    for name, x in (("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise InputError(f"pack_kv: {name} must be a tensor [batch, kv_heads, tokens, head_dim], got "
                             f"{type(x).__name__}")
        if x.dim() != 4:
            raise InputError(f"pack_kv: {name} must be [batch, kv_heads, tokens, head_dim], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise InputError(f"pack_kv: {name} must be a floating-point tensor, got {x.dtype}")
    if k.shape != v.shape:
        raise InputError(f"pack_kv: k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    if k.device != v.device:
        raise InputError(f"pack_kv: k is on {k.device} but v is on {v.device}")
    b, h, t, d = k.shape
    if min(b, h, t) < 1:
        raise InputError(f"pack_kv: empty cache {tuple(k.shape)}; need at least one token per sequence")
    if not (_pow2(d) and 16 <= d <= MAX_HEAD_DIM):
        raise InputError(f"the kernel supports head_dim 16, 32, 64, 128 or 256, got {d}")


def _codes_and_scales(fmt, x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """nmx's own encoding of x along `dim`: (element codes in the block layout order, i.e. x.movedim(dim, -1)
    flattened, as int32; scale buffer or None)."""
    from nmx.formats.packing import unpack_bits

    enc = fmt.encode(x, dim)
    codes = unpack_bits(enc.buffers["codes"], fmt.code_bits, x.numel())
    return codes, enc.buffers.get("scales")


def _pack_words(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes [..., T, D] (ints < 2^bits, T a multiple of 16/bits) -> int32 words [..., T*bits/16, D/2]: word [i, c]
    holds channels 2c (low half) and 2c+1 (high half); code n of a half is token i*(16/bits) + n."""
    lead, (t, d) = codes.shape[:-2], codes.shape[-2:]
    nph = HALF_BITS // bits
    c = codes.reshape(*lead, t // nph, nph, d // 2, 2).to(torch.int64)
    shifts = (torch.arange(nph, device=codes.device, dtype=torch.int64) * bits)[:, None, None]
    halves = (c << shifts).sum(dim=-3)  # [..., T/nph, D/2, 2]; disjoint bit fields: the sum is an or
    words = halves[..., 0] | (halves[..., 1] << HALF_BITS)
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def _unpack_words(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of `_pack_words`: int32 [..., T*bits/16, D/2] -> int64 codes [..., T, D]."""
    lead, (tw, dw) = words.shape[:-2], words.shape[-2:]
    nph = HALF_BITS // bits
    w = words.to(torch.int64) & 0xFFFFFFFF
    halves = torch.stack((w & 0xFFFF, w >> HALF_BITS), dim=-1)  # [..., tw, dw, 2]
    shifts = (torch.arange(nph, device=words.device, dtype=torch.int64) * bits)[:, None, None]
    codes = (halves[..., None, :, :] >> shifts) & ((1 << bits) - 1)  # [..., tw, nph, dw, 2]
    return codes.reshape(*lead, tw * nph, dw * 2)


def _torch_codes(fmt, x: torch.Tensor, keys: bool, tq: int, g: int, span: int, kind: tuple[str, int, str | None]
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """pack_kv's torch path for one of K (keys) or V: the layout's words and scales of x's first tq tokens."""
    b, h, _, d = x.shape
    elem, bits, scale_kind = kind
    xq = x[:, :, :tq].float()
    if keys:  # per channel over the chunk's tokens: [B, H, chunks, G, D] along the token dim
        codes, scales = _codes_and_scales(fmt, xq.reshape(b, h, tq // g, g, d), 3) if tq else (None, None)
        if codes is not None:
            codes = codes.reshape(b, h, tq // g, d, g).transpose(-1, -2).reshape(b, h, tq, d)
        if scales is not None:
            view = scales.view(torch.float16) if scale_kind == "fp16" else scales
            scales = view.reshape(b, h, tq // g, d, g // span).transpose(-1, -2).reshape(b, h, tq // span, d)
    else:  # per token over groups of G channels: [B, H, T, D/G, G] along the last dim
        codes, scales = _codes_and_scales(fmt, xq.reshape(b, h, tq, d // g, g), -1) if tq else (None, None)
        if codes is not None:
            codes = codes.reshape(b, h, tq, d)
        if scales is not None:
            view = scales.view(torch.float16) if scale_kind == "fp16" else scales
            scales = view.reshape(b, h, tq, d // span)
    if codes is None:
        codes = torch.zeros(b, h, 0, d, dtype=torch.int32, device=x.device)
        if scale_kind is not None:
            shape = (b, h, 0, d) if keys else (b, h, 0, d // span)
            scales = torch.zeros(shape, dtype=torch.float16 if scale_kind == "fp16" else torch.uint8,
                                 device=x.device)
    if elem == "int":
        codes = codes ^ (1 << (bits - 1))  # two's complement -> offset binary
    return _pack_words(codes, bits).contiguous(), None if scales is None else scales.contiguous()


def resolve_group(key_format: str, value_format: str, group: int | None, residual: int, head_dim: int) -> int:
    """The group G (tokens per key chunk, channels per value group) of quantized formats, as nmx.kv resolves it
    (`QuantSpec.chunk`), checked against what the kernel layout takes: a power of two in [16, head_dim]."""
    from nmx.kv.policy import QuantSpec

    g = QuantSpec(key_format=key_format, value_format=value_format, group=group, residual=residual).chunk
    if not (_pow2(g) and 16 <= g <= head_dim):
        raise InputError(f"quant.group: the kernel needs a power-of-two group between 16 and head_dim ({head_dim}), "
                         f"got {g}")
    if head_dim % g:
        raise InputError(f"quant.group: {g} does not divide head_dim {head_dim}")
    return g


def quantized_tokens(tokens: int, residual: int, group: int) -> int:
    """Tq = G * floor((T - residual) / G), or 0 while T - residual < G: the tokens in quantized storage."""
    over = tokens - residual
    return (over // group) * group if over >= group else 0


def pack_kv(k: torch.Tensor, v: torch.Tensor, key_format: str = "int4", value_format: str = "int4",
            group: int | None = None, residual: int = 128, backend: str = "auto") -> PackedKV:
    """Quantize K, V [batch, kv_heads, tokens, head_dim] as nmx.kv does and lay them out for the kernel.

    `group` / `residual` mean what they mean in `nmx.kv.QuantSpec` (group: tokens per key chunk and
    channels per value group, default the formats' block or 32; residual: recent tokens kept in bf16).
    `backend`: "torch" (vectorized torch on any device, no loop over tokens: a CUDA cache of B=16 x 8
    heads x 32K tokens packs in well under a second, but one call is hundreds of small operations),
    "triton" (one kernel launch each for K and V: triton_kv_pack.py, int4 / int2 only; CUDA, or the CPU
    interpreter), or "auto" (torch for now: the Triton pack has been checked bit for bit in Triton's
    CPU interpreter and compiled for sm_90, but not yet run on a GPU). Both give the same bytes."""
    from nmx import formats

    _check_kv(k, v)
    if backend not in ("auto", "torch", "triton"):
        raise InputError(f"pack_kv: unknown backend {backend!r}: use auto, torch or triton")
    kk, vk = kv_format(key_format), kv_format(value_format)
    if (kk[0] == "bf16") != (vk[0] == "bf16"):
        raise InputError("pack_kv: bf16 (no quantization) must be the format of both keys and values, or of neither")
    b, h, t, d = k.shape
    k16, v16 = k.detach().to(torch.bfloat16), v.detach().to(torch.bfloat16)
    if not (bool(torch.isfinite(k16).all()) and bool(torch.isfinite(v16).all())):
        raise InputError("pack_kv: K or V holds NaN or Inf (or values beyond bf16's range)")
    if kk[0] == "bf16":
        if not isinstance(residual, int) or residual < 0:
            raise InputError(f"residual must be an integer >= 0, got {residual!r}")
        empty = torch.zeros(b, h, 0, d // 2, dtype=torch.int32, device=k.device)
        return PackedKV(b, h, t, d, group or 0, residual, key_format, value_format, 0, empty, None, empty, None,
                        k16.contiguous(), v16.contiguous())
    ints = kk[0] == "int" and vk[0] == "int"
    if backend == "triton" and not ints:
        raise InputError(f"pack_kv: the triton backend packs int4 / int2 keys and values, not {key_format} / "
                         f"{value_format}")
    if backend == "triton" and not _triton_runs_on(k.device):
        raise InputError(f"pack_kv: the triton backend needs triton and a CUDA device (or TRITON_INTERPRET=1 for "
                         f"CPU tensors); k is on {k.device}")
    if backend == "auto":
        backend = "torch"
    g = resolve_group(key_format, value_format, group, residual, d)
    tq = quantized_tokens(t, residual, g)
    packed = PackedKV(b, h, t, d, g, residual, key_format, value_format, tq, None, None, None, None,
                      k16[:, :, tq:].contiguous(), v16[:, :, tq:].contiguous())
    out: dict[str, torch.Tensor | None] = {}
    for which, x, kind in (("k", k16, kk), ("v", v16, vk)):
        keys = which == "k"
        if backend == "triton":
            from nmx.kernels.triton_kv_pack import pack_int_codes

            codes, scales = pack_int_codes(x.contiguous(), tq, g, kind[1], keys)
        else:
            codes, scales = _torch_codes(formats.get(key_format if keys else value_format), x, keys, tq, g,
                                         packed.key_span if keys else packed.value_span, kind)
        out[f"{which}_codes"], out[f"{which}_scales"] = codes, scales
    packed = PackedKV(b, h, t, d, g, residual, key_format, value_format, tq, out["k_codes"], out["k_scales"],
                      out["v_codes"], out["v_scales"], packed.k_rest, packed.v_rest)
    packed.check()
    return packed


def random_packed_kv(batch: int, kv_heads: int, tokens: int, head_dim: int, key_format: str = "int4",
                     value_format: str = "int4", group: int | None = None, residual: int = 128,
                     device: torch.device | str = "cpu", seed: int = 0) -> PackedKV:
    """A packed cache of normal random K, V (bf16) built directly on `device`: for benchmarks that need a
    realistic cache of a given shape (codes spread over the whole grid, real scales)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (batch, kv_heads, tokens, head_dim)
    k = torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(torch.bfloat16)
    v = torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(torch.bfloat16)
    return pack_kv(k, v, key_format, value_format, group, residual)


# ---- reference decode ------------------------------------------------------------------------------


def _elements(codes: torch.Tensor, elem: str, bits: int) -> torch.Tensor:
    """Codes (offset binary for int) -> float32 element values, as nmx's element codecs decode them."""
    if elem == "int":
        return (codes - (1 << (bits - 1))).to(torch.float32)
    from nmx.formats.elements import FP4_E2M1, FP8_E4M3

    return (FP4_E2M1 if elem == "e2m1" else FP8_E4M3).decode(codes)


def _scale_values(s: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "fp16":
        return s.to(torch.float32)
    from nmx.formats.elements import E8M0_SCALE

    return E8M0_SCALE.decode(s.to(torch.int64))


def dequantize_kv(packed: PackedKV) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, V) float32 [B, H, T, D] as the cache holds them: the quantized tokens decoded from the layout
    (equal bit for bit to nmx.kv's decode of the same tokens), then the bf16 window."""
    packed.check()
    b, h, tq, d = packed.batch, packed.kv_heads, packed.quantized, packed.head_dim
    out = []
    for which, (elem, bits, scale_kind) in (("k", packed.key_kind), ("v", packed.value_kind)):
        rest = (packed.k_rest if which == "k" else packed.v_rest).to(torch.float32)
        if elem == "bf16" or tq == 0:
            out.append(rest)
            continue
        codes = _unpack_words(getattr(packed, f"{which}_codes"), bits)
        x = _elements(codes, elem, bits)  # [B, H, Tq, D]
        if scale_kind is not None:
            s = _scale_values(getattr(packed, f"{which}_scales"), scale_kind)
            if which == "k":
                span = packed.key_span
                x = (x.reshape(b, h, tq // span, span, d) * s[:, :, :, None, :]).reshape(b, h, tq, d)
            else:
                span = packed.value_span
                x = (x.reshape(b, h, tq, d // span, span) * s[..., None]).reshape(b, h, tq, d)
        out.append(torch.cat([x, rest], dim=2))
    return out[0], out[1]


def describe(packed: PackedKV) -> dict:
    """A one-line summary for benchmark tables."""
    return {"shape": packed.shape, "key_format": packed.key_format, "value_format": packed.value_format,
            "group": packed.group, "quantized_tokens": packed.quantized, "bf16_tokens": packed.rest,
            "bytes": packed.nbytes, "bits_per_element": 8 * packed.nbytes / max(1, math.prod(packed.shape) * 2)}
