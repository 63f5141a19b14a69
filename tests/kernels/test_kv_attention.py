"""nmx.kernels decode attention over a packed KV cache.

Oracles: the packed cache decodes to exactly what nmx.kv's own cache layer (`KVLayer`, fed token
by token) and page codec (`PageCodec`) hold, bit for bit; the reference twin against a float64
softmax attention (and torch's SDPA with enable_gqa) on the dequantized cache; the Triton kernel
against the twin, under Triton's CPU interpreter (TRITON_INTERPRET=1) or on a CUDA GPU, with the
output and the split workspace poisoned with NaN. Kernel tolerance: relative error 1e-2 (Frobenius)
-- the kernel rounds its matmul operands to bf16 as flash attention does (q * scale * key scale,
the softmax weights times the value scale: 2^-9 relative each), accumulates and does the softmax
in float32, and rounds the output to bf16 (2^-9); on random data that is ~3e-3, measured.
"""

import dataclasses
import importlib.util
import logging
import math
import os
import types

import pytest
import torch

from nmx.errors import InputError
from nmx.kernels.kv_attention import decode_attention, decode_attention_reference
from nmx.kernels.kv_layout import (
    KV_FORMATS,
    PackedKV,
    _pack_words,
    _unpack_words,
    dequantize_kv,
    pack_kv,
    random_packed_kv,
)

TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = TRITON and os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available()
FORMAT_PAIRS = [("int4", "int4"), ("int2", "int2"), ("fp8_e4m3", "fp8_e4m3"), ("mxfp4", "mxfp4"), ("int4", "int2"),
                ("fp8_e4m3", "int4"), ("mxfp4", "int4")]


def kv(b=2, h=2, t=150, d=64, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(b, h, t, d, generator=g) * 2
    k[:, :, :, 3] *= 20  # an outlier channel, as real keys have
    v = torch.randn(b, h, t, d, generator=g)
    k[0, 0, 0, :4] = torch.tensor([0.0, 1e-6, -7.0, 448.0])
    return k.to(dtype), v.to(dtype)


def nmx_cache_view(k, v, key_format, value_format, group, residual, steps):
    """What nmx.kv's cache layer returns after receiving k, v in `steps` pieces (float32, exact)."""
    from nmx.kv.cache import KVLayer
    from nmx.kv.policy import KVPolicy, QuantSpec
    from nmx.kv.quant import codecs

    spec = QuantSpec(key_format=key_format, value_format=value_format, group=group, residual=residual)
    ck, cv = codecs(spec, k.shape[-1])
    layer = KVLayer(types.SimpleNamespace(policy=KVPolicy(quant=spec), codec_k=ck, codec_v=cv, method=None,
                                          rotary=None), 0)
    out = None
    for lo, hi in zip(steps[:-1], steps[1:], strict=True):
        layer._view = None  # the attention hook's job in a real model
        out = layer.update(k[:, :, lo:hi], v[:, :, lo:hi])
    return out, layer.n_pages


# ---- the layout and the packer ---------------------------------------------------------------------


@pytest.mark.parametrize("kf,vf", FORMAT_PAIRS)
@pytest.mark.parametrize("d", [64, 128])
def test_packed_cache_is_nmx_kv_cache_bit_for_bit(kf, vf, d):
    """Oracle: nmx.kv's KVLayer fed a prompt then single tokens: same quantized pages, same bf16 window."""
    k, v = kv(t=203, d=d, seed=d)
    (ek, ev), pages = nmx_cache_view(k, v, kf, vf, None, 40, [0, 150, 151, 152, 203])
    p = pack_kv(k, v, kf, vf, residual=40)
    assert p.quantized == pages * p.group
    dk, dv = dequantize_kv(p)
    assert torch.equal(dk, ek) and torch.equal(dv, ev)


@pytest.mark.parametrize("kf,vf,group", [("int4", "int4", 64), ("int4", "int4", 16), ("mxfp4", "mxfp4", 64)])
def test_other_groups_match_the_page_codec(kf, vf, group):
    """Oracle: nmx.kv.quant.PageCodec on the chunks [pages, b, h, G, d] (the cache's own call)."""
    from nmx.kv.policy import QuantSpec
    from nmx.kv.quant import codecs

    b, h, t, d = 2, 3, 300, 64
    k, v = kv(b, h, t, d, seed=group, dtype=torch.bfloat16)
    p = pack_kv(k, v, kf, vf, group=group, residual=10)
    ck, cv = codecs(QuantSpec(key_format=kf, value_format=vf, group=group, residual=10), d)
    n = p.quantized // group
    dk, dv = dequantize_kv(p)
    for codec, x, got in ((ck, k, dk), (cv, v, dv)):
        chunks = x[:, :, :p.quantized].reshape(b, h, n, group, d).permute(2, 0, 1, 3, 4)
        want = codec.decode(codec.encode(chunks), b, h, d).permute(1, 2, 0, 3, 4).reshape(b, h, -1, d)
        assert torch.equal(got[:, :, :p.quantized], want)
        assert torch.equal(got[:, :, p.quantized:], x[:, :, p.quantized:].float())


@pytest.mark.parametrize("t,residual,group,tq", [(100, 128, 32, 0), (159, 128, 32, 0), (160, 128, 32, 32),
                                                 (191, 128, 32, 32), (192, 128, 32, 64), (64, 0, 32, 64),
                                                 (70, 0, 16, 64)])
def test_quantized_tokens_follow_the_cache(t, residual, group, tq):
    p = pack_kv(*kv(1, 1, t, 64), group=group, residual=residual)
    assert (p.quantized, p.rest) == (tq, t - tq)


def test_word_layout_places_each_code_as_documented():
    """Word [i, c] holds channel 2c in its low and 2c + 1 in its high 16 bits; code n of a half is token
    i * (16 / bits) + n (module docstring)."""
    bits, t, d = 4, 8, 6
    codes = torch.zeros(t, d, dtype=torch.int64)
    codes[6, 3] = 0xA  # token 6 = word row 1, code 2; channel 3 = word 1, high half
    words = _pack_words(codes, bits)
    assert words.shape == (t * bits // 16, d // 2) and words.dtype == torch.int32
    assert int(words[1, 1]) == 0xA << (16 + 2 * bits) and int(words.count_nonzero()) == 1
    full = torch.randint(0, 16, (3, 32, 8))
    assert torch.equal(_unpack_words(_pack_words(full, bits), bits), full)
    two = torch.randint(0, 4, (32, 8))
    assert torch.equal(_unpack_words(_pack_words(two, 2), 2), two)
    top = torch.full((8, 2), 15)  # all bits set: the word's sign bit
    assert int(_pack_words(top, 4)[0, 0]) == -1


def test_layout_choices_and_bytes():
    b, h, t, d = 2, 2, 1000, 128
    p = pack_kv(*kv(b, h, t, d), "int4", "int4", residual=128)
    assert p.quantized == 864 and p.key_nph == p.value_nph == 4
    assert p.k_codes.shape == (b, h, 864 // 4, d // 2) and p.k_codes.dtype == torch.int32
    codes = 2 * b * h * p.quantized * d // 2
    scales = 2 * (b * h * (p.quantized // 32) * d) + 2 * (b * h * p.quantized * (d // 32))
    window = 2 * 2 * b * h * p.rest * d
    assert p.nbytes == codes + scales + window
    assert p.k_scales.dtype == torch.float16 and p.k_rest.dtype == torch.bfloat16
    q8 = pack_kv(*kv(b, h, t, d), "fp8_e4m3", "mxfp4")
    assert q8.k_scales is None and q8.v_scales.dtype == torch.uint8 and q8.v_scales.shape[-1] == d // 32
    assert q8.key_nph == 2 and q8.value_nph == 4
    dense = pack_kv(*kv(b, h, t, d), "bf16", "bf16")
    assert dense.quantized == 0 and dense.nbytes == dense.dense_nbytes


def test_random_packed_kv_and_move():
    p = random_packed_kv(1, 2, 300, 64, "int2", "int4", residual=32, seed=3)
    assert p.shape == (1, 2, 300, 64) and p.quantized == 256
    assert p.to("cpu").nbytes == p.nbytes


# ---- the reference twin ---------------------------------------------------------------------------


def float64_attention(q, k, v, scale):
    """softmax(q k^T scale) v in float64, GQA by repeating KV heads."""
    b, hq, d = q.shape
    rep = hq // k.shape[1]
    k, v = k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
    s = torch.einsum("bhd,bhtd->bht", q.double(), k) * scale
    return torch.einsum("bht,bhtd->bhd", torch.softmax(s, -1), v)


@pytest.mark.parametrize("kf,vf", [("int4", "int4"), ("fp8_e4m3", "mxfp4"), ("bf16", "bf16")])
@pytest.mark.parametrize("hq,hkv", [(4, 2), (6, 2), (3, 3)])
def test_reference_against_float64(kf, vf, hq, hkv):
    k, v = kv(2, hkv, 170, 64, seed=hq)
    p = pack_kv(k, v, kf, vf, residual=40)
    q = torch.randn(2, hq, 64).to(torch.bfloat16)
    dk, dv = dequantize_kv(p)
    exact = float64_attention(q, dk, dv, 0.3)
    out = decode_attention_reference(q, p, 0.3)
    assert out.dtype == torch.bfloat16 and out.shape == (2, hq, 64)
    assert float((out.double() - exact).norm() / exact.norm()) < 4e-3  # bf16 output rounding: 2^-9
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.double()[:, :, None], dk.double(), dv.double(), scale=0.3, enable_gqa=True)[:, :, 0]
    assert float((sdpa - exact).norm() / exact.norm()) < 1e-12


def test_dispatch_falls_back_to_the_reference_with_one_warning(caplog):
    p = pack_kv(*kv(1, 2, 100, 64), residual=16)
    q = torch.randn(1, 4, 64).to(torch.bfloat16)
    from nmx.kernels import kv_attention

    kv_attention._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="nmx.kernels.kv_attention"):
        a = decode_attention(q, p)
        b = decode_attention(q, p)
    assert torch.equal(a, b) and torch.equal(a, decode_attention_reference(q, p))
    assert sum("reference path" in r.getMessage() for r in caplog.records) == 1
    q32 = q.float()
    assert torch.equal(decode_attention(q32, p, backend="reference"), a)  # q is rounded to bf16 first


# ---- bad input ------------------------------------------------------------------------------------


def test_bad_input():
    k, v = kv(1, 2, 100, 64)
    p = pack_kv(k, v, residual=16)
    q = torch.randn(1, 4, 64).to(torch.bfloat16)
    with pytest.raises(InputError, match="multiple of the KV heads"):
        decode_attention(torch.randn(1, 3, 64).to(torch.bfloat16), p)
    with pytest.raises(InputError, match="head_dim"):
        decode_attention(torch.randn(1, 4, 32).to(torch.bfloat16), p)
    with pytest.raises(InputError, match="batch"):
        decode_attention(torch.randn(2, 4, 64).to(torch.bfloat16), p)
    with pytest.raises(InputError, match="one token"):
        decode_attention(torch.randn(1, 4, 1, 64).to(torch.bfloat16), p)
    with pytest.raises(InputError, match="contiguous"):
        decode_attention(torch.randn(1, 64, 4).to(torch.bfloat16).transpose(1, 2), p)
    with pytest.raises(InputError, match="bfloat16, float16 or float32"):
        decode_attention(torch.ones(1, 4, 64, dtype=torch.int32), p)
    with pytest.raises(InputError, match="is on"):
        decode_attention(q, p.to("meta"))
    with pytest.raises(InputError, match="k_scales"):
        decode_attention(q, dataclasses.replace(p, k_scales=p.k_scales.float()))
    with pytest.raises(InputError, match="not contiguous"):
        decode_attention(q, dataclasses.replace(p, k_rest=p.k_rest.mT.contiguous().mT))
    with pytest.raises(InputError, match="scale"):
        decode_attention(q, p, scale=-1.0)
    with pytest.raises(InputError, match="backend"):
        decode_attention(q, p, backend="magic")
    with pytest.raises(InputError, match="PackedKV"):
        decode_attention(q, (k, v))
    for bad in ("int8", "nvfp4", "int4_g128"):
        with pytest.raises(InputError, match=", ".join(KV_FORMATS)):
            pack_kv(k, v, bad, "int4")
    with pytest.raises(InputError, match="both keys and values"):
        pack_kv(k, v, "bf16", "int4")
    with pytest.raises(InputError, match="NaN"):
        pack_kv(k.clone().fill_(float("nan")), v)
    with pytest.raises(InputError, match="power-of-two group"):
        pack_kv(k, v, group=48)
    with pytest.raises(InputError, match="head_dim"):
        pack_kv(*kv(1, 2, 100, 96))
    with pytest.raises(InputError, match="same shape"):
        pack_kv(k, v[:, :, :50])
    with pytest.raises(InputError, match="residual"):
        pack_kv(k, v, residual=-1)
    with pytest.raises(InputError, match="mxfp4"):
        pack_kv(k, v, "mxfp4", "mxfp4", group=16)  # below the MX block
    if not TRITON:
        with pytest.raises(InputError, match="triton installed"):
            decode_attention(q, p, backend="triton")
    elif not INTERPRET:
        with pytest.raises(InputError, match="CUDA tensors"):
            decode_attention(q, p, backend="triton")


# ---- the Triton kernel -----------------------------------------------------------------------------

KERNEL_CASES = [  # (key fmt, value fmt, B, Hq, Hkv, D, T, residual, group, config)
    ("int4", "int4", 2, 4, 2, 64, 3 * 32 + 45, 40, None, {"num_splits": 2}),
    ("int4", "int4", 2, 4, 2, 64, 300, 40, None, {"num_splits": 3, "BT_MAX": 128}),
    ("int4", "int4", 1, 4, 2, 64, 300, 40, None, {"SUBNORMAL": True, "num_warps": 2}),
    ("int2", "int2", 2, 4, 2, 64, 330, 40, None, {}),
    ("fp8_e4m3", "fp8_e4m3", 2, 4, 2, 64, 170, 40, None, {"num_splits": 2}),
    ("mxfp4", "mxfp4", 2, 4, 2, 64, 170, 40, None, {}),
    ("mxfp4", "int4", 1, 4, 2, 64, 300, 8, 64, {"num_splits": 3}),
    ("int4", "mxfp4", 1, 6, 2, 64, 250, 20, None, {}),  # 3 query heads per KV head (padded to 4)
    ("fp8_e4m3", "fp8_e4m3", 1, 8, 1, 32, 150, 20, 16, {}),  # 8 heads per group, small head_dim
    ("int4", "int4", 1, 2, 2, 128, 200, 0, None, {"num_splits": 2}),  # MHA, no bf16 window (T % 32 == 8 ...)
    ("int4", "int4", 1, 2, 2, 64, 192, 0, None, {}),  # nothing left in bf16
    ("int4", "int4", 2, 4, 2, 64, 60, 40, None, {}),  # everything still in the bf16 window
    ("bf16", "bf16", 2, 4, 2, 64, 150, 0, None, {"num_splits": 3, "BTR": 32}),
]


def run_kernel_case(case, device, seed=0):
    kf, vf, b, hq, hkv, d, t, residual, group, cfg = case
    g = torch.Generator().manual_seed(seed)
    k = (torch.randn(b, hkv, t, d, generator=g) * 2).to(device)
    v = torch.randn(b, hkv, t, d, generator=g).to(device)
    q = torch.randn(b, hq, d, generator=g).to(torch.bfloat16).to(device)
    p = pack_kv(k, v, kf, vf, group=group, residual=residual)
    from nmx.kernels.triton_kv_attention import kv_decode_attention

    out = kv_decode_attention(q, p, 1.0 / math.sqrt(d), cfg, poison=True)
    ref = decode_attention_reference(q.cpu(), p.to("cpu")).float()
    got = out.float().cpu()
    assert torch.isfinite(got).all(), case
    err = float((got - ref).norm() / ref.norm())
    assert err < 1e-2, (case, err)
    return err


@pytest.mark.skipif(not (INTERPRET or (TRITON and CUDA)),
                    reason="the Triton kernel runs under TRITON_INTERPRET=1 or on a CUDA GPU")
@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: f"{c[0]}-{c[1]}-hq{c[3]}-hkv{c[4]}-d{c[5]}-t{c[6]}")
def test_triton_kernel_small_shapes_match_the_twin(case):
    run_kernel_case(case, "cpu" if INTERPRET else "cuda")


KERNEL_PAIRS = [(kf, vf) for kf, vf in FORMAT_PAIRS if KV_FORMATS[kf][1] == KV_FORMATS[vf][1]] + [("bf16", "bf16")]
GPU_CASES = [(kf, vf, 3, 32, 8, 128, t, 128, None, cfg) for kf, vf in KERNEL_PAIRS
             for t, cfg in ((1000, {}), (5003, {"num_splits": 7}))]


@pytest.mark.gpu
@pytest.mark.skipif(not (CUDA and TRITON), reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"{c[0]}-{c[1]}-t{c[6]}-{c[9]}")
def test_triton_kernel_on_the_gpu(case):
    for seed in (1, 2):  # fresh random inputs
        run_kernel_case(case, "cuda", seed)


@pytest.mark.gpu
@pytest.mark.skipif(not (CUDA and TRITON), reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("config", [{"num_warps": 2}, {"num_warps": 4}, {"num_stages": 3}, {"BT_MAX": 128},
                                    {"warps_per_sm": 64}, {"BTR": 16}, {"maxnreg": 168}, {"SUBNORMAL": True}])
def test_triton_kernel_configs_on_the_gpu(config):
    run_kernel_case(("int4", "int4", 2, 32, 8, 128, 3000, 128, None, config), "cuda", 5)


@pytest.mark.skipif(not (INTERPRET or (TRITON and CUDA)),
                    reason="the Triton kernel runs under TRITON_INTERPRET=1 or on a CUDA GPU")
@pytest.mark.parametrize("fmt", ["int4", "int2"])
@pytest.mark.parametrize("shape", [(2, 3, 100, 64, 32, 4), (1, 2, 64, 128, 16, 0), (1, 1, 300, 256, 64, 20),
                                   (2, 1, 20, 64, 16, 16)])
def test_triton_packing_gives_the_torch_paths_bytes(fmt, shape):
    """triton_kv_pack.py against pack_kv's torch path, bit for bit: zero groups, tiny values, a key beyond
    fp16's range (saturated scale), no quantized tokens at all."""
    b, h, t, d, g, res = shape
    k, v = kv(b, h, t, d, seed=t)
    k = k * torch.rand(1, 1, 1, d, generator=torch.Generator().manual_seed(1)) * 3
    k[0, 0, 0, :4] = torch.tensor([0.0, 1e-30, -1e-38, 65504.0 * 3])
    v[0, 0, 1] = 0.0
    device = "cpu" if INTERPRET else "cuda"
    a = pack_kv(k, v, fmt, fmt, group=g, residual=res, backend="torch")
    c = pack_kv(k.to(device), v.to(device), fmt, fmt, group=g, residual=res, backend="triton")
    for x, y in zip(a.tensors, c.tensors, strict=True):
        y = y.cpu()
        assert x.shape == y.shape and x.dtype == y.dtype
        bits = (lambda z: z.view(torch.int16)) if x.dtype == torch.float16 else (lambda z: z)  # NaN-safe
        assert torch.equal(bits(x), bits(y))


def test_pack_backend_bad_input():
    k, v = kv(1, 1, 64, 32)
    with pytest.raises(InputError, match="backend"):
        pack_kv(k, v, backend="cuda")
    with pytest.raises(InputError, match="int4 / int2"):
        pack_kv(k, v, "mxfp4", "mxfp4", backend="triton")
    if not INTERPRET:
        with pytest.raises(InputError, match="TRITON_INTERPRET"):
            pack_kv(k, v, backend="triton")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("kf,vf", FORMAT_PAIRS)
def test_packing_on_the_gpu_equals_packing_on_the_cpu(kf, vf):
    k, v = kv(2, 4, 700, 128, seed=9, dtype=torch.bfloat16)
    a, b = pack_kv(k, v, kf, vf), pack_kv(k.cuda(), v.cuda(), kf, vf)
    for x, y in zip(a.tensors, b.tensors, strict=True):
        assert torch.equal(x, y.cpu())


@pytest.mark.gpu
@pytest.mark.skipif(not (CUDA and TRITON), reason="needs a CUDA GPU and triton")
def test_auto_uses_the_kernel_on_the_gpu():
    p = random_packed_kv(2, 8, 2000, 128, device="cuda")
    q = torch.randn(2, 32, 128, device="cuda", dtype=torch.bfloat16)
    out = decode_attention(q, p)
    ref = decode_attention_reference(q.cpu(), p.to("cpu")).float()
    assert out.device.type == "cuda" and float((out.float().cpu() - ref).norm() / ref.norm()) < 1e-2


def test_mixed_code_widths_take_the_reference_path():
    p = pack_kv(*kv(1, 2, 200, 64), "int4", "int2", residual=16)
    q = torch.randn(1, 4, 64).to(torch.bfloat16)
    from nmx.kernels.kv_attention import kernel_reads

    assert not kernel_reads(p) and kernel_reads(pack_kv(*kv(1, 2, 200, 64), "mxfp4", "int4"))
    assert torch.equal(decode_attention(q, p), decode_attention_reference(q, p))
    if TRITON:
        from nmx.kernels.triton_kv_attention import plan

        with pytest.raises(InputError, match="same code width"):
            plan(tuple(q.shape), p)


def test_packed_kv_is_frozen():
    p = pack_kv(*kv(1, 1, 64, 64))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.tokens = 3  # type: ignore[misc]
    assert isinstance(p, PackedKV)
