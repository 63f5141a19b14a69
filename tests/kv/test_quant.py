"""Page packing and byte accounting. Oracles: sizes computed by hand from each format's definition,
and `Format.quantize` (decode(encode(x)) must equal it bit for bit)."""

import pytest
import torch

from nmx import formats
from nmx.errors import InputError
from nmx.kv import KVCache, KVPolicy, QuantSpec, dense_bytes_per_token, expected_nbytes
from nmx.kv.quant import codecs
from tests.conftest import assert_bitwise_equal
from tests.kv.conftest import kv_llama

B, H, G, D = 1, 2, 32, 32  # one page: a chunk of 32 tokens, 1 batch row, 2 KV heads, head_dim 32 = 2048 elements

# (key page, value page) bytes with keys per channel and values per token, group 32, by hand:
PAGE_BYTES = {
    # 2048 codes of 8 bits; one fp16 scale per (head, channel) for keys, per (head, token) for values: 64 x 2 B
    "int8": (2048 + 128, 2048 + 128),
    "int4": (1024 + 128, 1024 + 128),  # 4-bit codes
    "int2": (512 + 128, 512 + 128),
    # asymmetric: + a 4-bit zero point per scale (64 x 4 bits = 32 B)
    "int4_asym": (1024 + 128 + 32, 1024 + 128 + 32),
    "fp8_e4m3": (2048, 2048),  # plain casts: no scale
    "bf16": (4096, 4096),
    "mxfp4": (1024 + 64, 1024 + 64),  # one E8M0 byte per block of 32: 64 blocks
    "nvfp4": (1024 + 128 + 4, 1024 + 128 + 4),  # one UE4M3 byte per 16 (128 blocks) + one fp32 tensor scale
}


@pytest.mark.parametrize("name", PAGE_BYTES)
def test_page_bytes_are_exact(name):
    ck, cv = codecs(QuantSpec(name, group=G), D)
    x = torch.randn(3, B, H, G, D)  # three pages
    for codec, want in zip((ck, cv), PAGE_BYTES[name], strict=True):
        assert codec.page_bytes(B, H, D) == want
        pages = codec.encode(x)
        assert sum(p.numel() for p in pages.values()) == 3 * want
        assert all(p.dtype == torch.uint8 and p.shape[0] == 3 for p in pages.values())


@pytest.mark.parametrize("name", ["int4", "int2", "int4_asym", "fp8_e4m3", "mxfp4", "nvfp4", "int3_g16"])
@pytest.mark.parametrize("axis", ["channel", "token"])
def test_pages_decode_to_the_format_quantization(name, axis):
    """Keys per channel: one scale per channel over the chunk's tokens; per token: per group of channels."""
    group = 16 if name == "int3_g16" else 32
    codec = codecs(QuantSpec(name, key_axis=axis, group=group), D)[0]
    x = torch.randn(4, B, H, group, D) * torch.linspace(0.1, 8, D)  # channels of very different ranges (KIVI)
    got = codec.decode(codec.encode(x), B, H, D)
    assert codec.mode(B, H, D, x.device) == ("tensor_scale" if name == "nvfp4" else "stacked")  # one decode call
    fmt = formats.get(name)
    pages = []
    for page in x:  # each page is encoded on its own (nvfp4's tensor scale is per page)
        if axis == "channel":
            pages.append(fmt.quantize(page, dim=2))
        else:
            pages.append(fmt.quantize(page.reshape(B, H, group, D // group, group), dim=-1).reshape(page.shape))
    assert_bitwise_equal(got, torch.stack(pages))


def test_per_channel_keys_beat_per_token_on_outlier_channels():
    """KIVI's observation: key outliers sit in fixed channels, so per-channel scales confine them;
    per-token scales stretched by the outlier flush the ordinary channels to zero."""
    x = torch.randn(1, B, H, G, D)
    x[..., 3] *= 50
    err = {}
    for axis in ("channel", "token"):
        codec = codecs(QuantSpec("int4", key_axis=axis, group=G), D)[0]
        e = codec.decode(codec.encode(x), B, H, D) - x
        err[axis] = torch.cat([e[..., :3], e[..., 4:]], -1).pow(2).mean().item()
    assert err["channel"] < 0.1 * err["token"]


def _config(layers=2):
    return kv_llama(layers=layers).config


def test_dense_cache_holds_exactly_the_dense_bf16_figure(ids):
    model = kv_llama()
    assert dense_bytes_per_token(model.config) == 2 * 2 * 2 * 32 * 2  # layers * (K, V) * heads * head_dim * bf16
    cache = KVCache(KVPolicy(), model)
    with torch.no_grad():
        model(ids, cache=cache)
    assert cache.bytes_per_token() == 512 and cache.nbytes() == 512 * ids.numel()  # two rows of 48 tokens
    assert KVCache(KVPolicy(full_precision="fp32"), model).policy.full_precision == "fp32"


@pytest.mark.parametrize("name", ["int4", "nvfp4", "fp8_e4m3"])
def test_cache_bytes_match_the_hand_computed_layout(name):
    """100 tokens, 4 sinks, residual 16, group 32: pages = (100 - 4 - 16) // 32 = 2, so 36 slots stay in
    bf16 at 2 heads x 32 x (K, V) x 2 B = 256 B each, plus 2 key pages and 2 value pages, per layer."""
    model = kv_llama()
    policy = KVPolicy(quant=QuantSpec(name, group=32, residual=16, sinks=4))
    k_page, v_page = PAGE_BYTES[name]
    want = 2 * (36 * 256 + 2 * (k_page + v_page))
    assert expected_nbytes(policy, model.config, 100) == want
    cache = KVCache(policy, model)
    ids = torch.randint(0, 100, (1, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for start in (0, 37, 38, 90):  # chunks of 37, 1, 52, 10 tokens
            model(ids[:, start:{0: 37, 37: 38, 38: 90, 90: 100}[start]], cache=cache)
    assert cache.nbytes() == want
    parts = cache.nbytes_breakdown()
    assert parts["full_precision"] == 2 * 36 * 256 and parts["metadata"] == 0
    layer = cache.layers[0]
    assert (layer.sink_k.shape[2], layer.n_pages, layer.tail_k.shape[2]) == (4, 2, 32)


def _held_bytes(layer, positions: bool) -> int:
    """Every tensor a layer object holds (pages included); the positions only when they are needed."""
    total = 0
    for key, value in vars(layer).items():
        values = value.values() if isinstance(value, dict) else [value]
        for t in values:
            if isinstance(t, torch.Tensor) and (key != "pos" or positions):
                total += t.numel() * t.element_size()
    return total


@pytest.mark.parametrize("kv_cache", [
    {"quant": {"format": "int4", "group": 16, "residual": 8}},
    {"quant": {"format": "mxfp4", "group": 32, "residual": 0, "sinks": 2}, "evict": {"method": "h2o", "budget": 40}},
    {"evict": {"method": "knorm", "budget": 20}, "merge": True},
    {"quant": {"format": "int2", "group": 8, "residual": 8, "key_rope": "pre"},
     "evict": {"method": "tova", "budget": 30}},
])
def test_nbytes_counts_everything_the_cache_holds(kv_cache, ids):
    """The cache stores codes and scales, no dequantized copy: the bytes of all tensors it holds are
    exactly nbytes() (positions, kept for inspection only, aside)."""
    model = kv_llama(attn="eager")
    cache = KVCache(KVPolicy.from_dict(kv_cache), model)
    with torch.no_grad():
        model(ids, cache=cache)
        for t in range(4):
            model(ids[:, t:t + 1], cache=cache)
    positions = kv_cache.get("quant", {}).get("key_rope") == "pre"  # pre-RoPE pages re-rotate at them
    assert sum(_held_bytes(layer, positions) for layer in cache.layers) == cache.nbytes() > 0
    assert all(layer._view is None for layer in cache.layers)  # the transient dequantized view is dropped


def test_formats_the_cache_cannot_pack():
    for name in ("e8m0", "ue4m3"):
        with pytest.raises(InputError, match="cannot store negative"):
            QuantSpec(name)
    with pytest.raises(InputError, match="not a multiple of mxfp4's block of 32"):
        QuantSpec("mxfp4", group=48)
    with pytest.raises(InputError, match="unknown format"):
        QuantSpec("int5x")
    with pytest.raises(InputError, match="does not divide head_dim 32"):
        KVCache(KVPolicy(quant=QuantSpec("int4", group=24)), kv_llama())
    with pytest.raises(InputError, match="key_axis"):
        QuantSpec("int4", key_axis="row")
    assert QuantSpec("nvfp4").chunk == 16 and QuantSpec("int4").chunk == 32  # the block, else KIVI's 32
