"""nmx.kernels.kv_cache (the appendable packed KV cache) and kv_hf (it inside a Hugging Face Llama).

Oracles:
- `pack_kv` of all the tokens at once: after any sequence of appends (one token at a time, prefills of
  various sizes, mixes) `view()` holds the same codes, scales and bf16 window bit for bit, for int4 and int2
  (Triton pack under TRITON_INTERPRET=1, and torch) and mxfp4, fp8_e4m3, bf16 (torch);
- decode attention on the view equals it on `pack_kv`'s result: bit for bit (the reference twin on the CPU;
  the Triton kernel in the interpreter, which reads the view's strides), and the kernel stays within the twin's
  1e-2 of test_kv_attention.py;
- nmx.kv's fake-quant `KVCache` in the same tiny Llama (float32): the prompt's logits bit for bit (the prompt
  attends to the dequantized cache through the same sdpa call), the cache layer 0 holds bit for bit (later
  layers see inputs that went through the decode attention), and every decode step's logits within
  2^-7 x max |logit|: the decode attention rounds q and its output to bf16 (2^-9 relative each, so about 2^-8
  per layer, two layers) where the fake-quant path runs float32 SDPA (measured: 1.3e-3 to 4.5e-3 x max |logit|
  over int4, int2, mxfp4 / fp8 and two seeds). A bf16 packed cache against transformers' DynamicCache (float32
  K, V) gets the same bound (its K and V are rounded to bf16 once more: measured 1.5e-3 to 1.9e-3).
"""

import copy
import importlib.util
import os
import subprocess
import sys
import types

import pytest
import torch

from nmx.errors import InputError
from nmx.kernels.kv_attention import decode_attention, decode_attention_reference
from nmx.kernels.kv_cache import PackedKVCache
from nmx.kernels.kv_layout import dequantize_kv, pack_kv
from tests.kernels.test_compile_sm90 import compiled  # noqa: F401  (a fixture: launches compiled for sm_90)

TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = TRITON and os.environ.get("TRITON_INTERPRET") == "1"

SCHEDULES = {
    "one_at_a_time": [1] * 130,
    "prefill_then_tokens": [70] + [1] * 60,
    "ragged_chunks": [3, 1, 40, 1, 1, 17, 33, 2, 1, 5, 16, 1, 9],
    "one_prefill": [129],
    "small_then_long": [1, 1, 2, 125],
}
# (key format, value format, group, residual, backend)
TORCH_CASES = [("int4", "int4", 16, 24, "torch"), ("int2", "int2", 16, 0, "torch"), ("int4", "int2", 32, 7, "torch"),
               ("mxfp4", "mxfp4", 32, 24, "torch"), ("fp8_e4m3", "fp8_e4m3", 16, 24, "torch"),
               ("fp8_e4m3", "mxfp4", 32, 16, "torch"), ("bf16", "bf16", None, 24, "torch")]
TRITON_CASES = [("int4", "int4", 16, 24, "triton"), ("int2", "int2", 32, 0, "triton"),
                ("int4", "int2", 16, 20, "triton")]


def kv(b=2, h=2, t=130, d=64, seed=0):
    """Keys with an outlier channel, a zero vector and tiny values; normal values."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(b, h, t, d, generator=g) * 2
    k[:, :, :, 3] *= 20
    v = torch.randn(b, h, t, d, generator=g)
    if t > 7:
        k[0, 0, 5] = 0.0
        k[0, h - 1, 7, :4] = torch.tensor([1e-30, -1e-38, 0.0, 3e-5])
        v[b - 1, 0, 2] = 0.0
    return k, v


def assert_same_packed(got, want):
    """Same layout facts and the same bytes (fp16 scales compared as bit patterns)."""
    for name in ("batch", "kv_heads", "tokens", "head_dim", "group", "residual", "key_format", "value_format",
                 "quantized"):
        assert getattr(got, name) == getattr(want, name), name
    for name in ("k_codes", "k_scales", "v_codes", "v_scales", "k_rest", "v_rest"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is None:
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape)
        bits = (lambda z: z.view(torch.int16)) if a.dtype in (torch.float16, torch.bfloat16) else (lambda z: z)
        assert torch.equal(bits(a), bits(b)), name


def run_schedule(case, schedule, check_every=True, seed=0):
    """Append k, v in the pieces of `schedule`, checking the view against pack_kv; returns (cache, k, v)."""
    kf, vf, group, residual, backend = case
    total = sum(schedule)
    k, v = kv(t=total, seed=seed)
    cache = PackedKVCache(2, 2, 64, total + 40, kf, vf, group, residual, "cpu", backend)
    assert cache.backend == backend
    quantized_calls = []
    inner = cache._quantize_chunks

    def counting(src_k, src_v, count):  # every token is quantized once, chunk slots in order
        quantized_calls.append((cache.quantized, count))
        inner(src_k, src_v, count)

    cache._quantize_chunks = counting
    lo = 0
    for i, n in enumerate(schedule):
        cache.append(k[:, :, lo:lo + n], v[:, :, lo:lo + n])
        lo += n
        if check_every or i == len(schedule) - 1:
            assert_same_packed(cache.view(), pack_kv(k[:, :, :lo], v[:, :, :lo], kf, vf, group, residual,
                                                     backend="torch"))
    starts = [s for s, _ in quantized_calls]
    assert starts == [sum(c for _, c in quantized_calls[:i]) for i in range(len(quantized_calls))]
    assert sum(c for _, c in quantized_calls) == cache.quantized
    return cache, k, v


# ---- the invariant: appends give pack_kv's bytes -------------------------------------------------------


@pytest.mark.parametrize("schedule", list(SCHEDULES), ids=str)
@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: f"{c[0]}-{c[1]}-g{c[2]}-r{c[3]}")
def test_appends_give_pack_kv_bit_for_bit(case, schedule):
    run_schedule(case, SCHEDULES[schedule], check_every=case[0] in ("int4", "bf16") or schedule != "one_at_a_time")


def test_view_is_slices_of_the_storage_and_decodes_like_pack_kv():
    """No copy: the view's tensors live in the cache's buffers; the reference decode attention on the view equals
    it on pack_kv's result bit for bit (GQA, 3 query heads per KV head)."""
    cache, k, v = run_schedule(("int4", "int4", 16, 24, "torch"), SCHEDULES["prefill_then_tokens"], False)
    view = cache.view()
    assert view.k_codes.data_ptr() == cache.k_codes.data_ptr() and view.v_scales.data_ptr() == cache.v_scales.data_ptr()
    assert view.k_rest.data_ptr() == cache.window.data_ptr()
    assert not view.k_codes.is_contiguous()  # a token slice of the capacity: the kernel reads its strides
    packed = pack_kv(k, v, "int4", "int4", 16, 24)
    q = torch.randn(2, 6, 64).to(torch.bfloat16)
    assert torch.equal(decode_attention_reference(q, view), decode_attention_reference(q, packed))
    assert torch.equal(decode_attention(q, view), decode_attention(q, packed))  # the CPU dispatch: the twin
    for a, b in zip(dequantize_kv(view), dequantize_kv(packed), strict=True):
        assert torch.equal(a, b)


def test_window_and_storage_sizes():
    cache = PackedKVCache(1, 2, 64, 1000, "int4", "int4", group=32, residual=128)
    assert cache.window.shape == (2, 1, 2, 160, 64)
    assert cache.quantized_capacity == 864 and cache.k_codes.shape == (1, 2, 864 // 4, 32)
    assert cache.k_scales.shape == (1, 2, 27, 64) and cache.v_scales.shape == (1, 2, 864, 2)
    dense = PackedKVCache(1, 2, 64, 100, "bf16", "bf16", residual=0)
    assert dense.window.shape == (2, 1, 2, 100, 64) and dense.quantized_capacity == 0
    small = PackedKVCache(1, 2, 64, 100, "int4", "int4", group=32, residual=128)  # never quantizes anything
    assert small.window.shape[3] == 100 and small.quantized_capacity == 0
    cache.append(*kv(1, 2, 200, 64))
    cache.reset()
    assert cache.tokens == cache.quantized == 0
    cache.append(*kv(1, 2, 3, 64, seed=4))
    assert_same_packed(cache.view(), pack_kv(*kv(1, 2, 3, 64, seed=4), "int4", "int4", 32, 128))


# ---- the Triton pack (int4 / int2) ----------------------------------------------------------------------


def check_triton_path() -> None:
    """The Triton path: packs straight into the preallocated slots (pack_kv's bytes), and the decode-attention
    kernel on the view equals it on pack_kv's result bit for bit. Needs TRITON_INTERPRET=1 (or CUDA)."""
    from nmx.kernels.triton_kv_attention import kv_decode_attention

    for case in TRITON_CASES:
        for name, schedule in SCHEDULES.items():
            run_schedule(case, schedule, check_every=name != "one_at_a_time")
    cache, k, v = run_schedule(("int4", "int4", 16, 24, "triton"), SCHEDULES["ragged_chunks"], False)
    q = torch.randn(2, 4, 64, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    for view, packed in ((cache.view(), pack_kv(k, v, "int4", "int4", 16, 24)),):
        for cfg in ({"num_splits": 2}, {}):
            a = kv_decode_attention(q, view, 0.125, cfg, poison=True)
            b = kv_decode_attention(q, packed, 0.125, cfg, poison=True)
            ref = decode_attention_reference(q, packed, 0.125).float()
            assert torch.equal(a, b), cfg
            assert float((a.float() - ref).norm() / ref.norm()) < 1e-2
    dense = PackedKVCache(2, 2, 64, 150, "bf16", "bf16", residual=0)
    dense.append(k[:, :, :100], v[:, :, :100])
    dense.append(k[:, :, 100:101], v[:, :, 100:101])
    a = kv_decode_attention(q, dense.view(), 0.125, {"num_splits": 2}, poison=True)
    b = kv_decode_attention(q, pack_kv(k[:, :, :101], v[:, :, :101], "bf16", "bf16"), 0.125, {"num_splits": 2})
    assert torch.equal(a, b)


@pytest.mark.skipif(not TRITON, reason="triton is not installed")
def test_triton_path_in_the_interpreter():
    if INTERPRET:
        check_triton_path()
        return
    code = "from tests.kernels.test_kv_cache_append import check_triton_path\ncheck_triton_path()\nprint('ok')\n"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900, cwd=root)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


@pytest.mark.skipif(not TRITON or INTERPRET, reason="needs triton, compiling (not TRITON_INTERPRET=1)")
@pytest.mark.parametrize("kf", ["int4", "int2"])
def test_append_and_view_kernels_compile_for_sm90(compiled, kf):  # noqa: F811 (the imported fixture)
    """The launches the GPU will make compile for sm_90 (test_compile_sm90.py's interception: nothing runs): the
    in-place chunk pack (output pointers at a chunk slot, the capacity as the chunk stride) and the decode kernel
    over a view (strided buffers)."""
    from nmx.kernels.triton_kv_attention import kv_decode_attention

    cache = PackedKVCache(2, 4, 128, 600, kf, kf, group=32, residual=128, backend="torch")
    cache.backend = "triton"  # below the device check: launches are intercepted, never run
    k, v = kv(2, 4, 200, 128)
    cache.append(k, v)  # 2 chunks from a prefill
    cache.append(k[:, :, :1], v[:, :, :1])
    kv_decode_attention(torch.randn(2, 8, 128).to(torch.bfloat16), cache.view(), 0.1)
    assert compiled.count("_kv_int_pack_kernel") == 2 and "_kv_decode_kernel" in compiled


def test_auto_backend_choice():
    assert PackedKVCache(1, 1, 64, 64, "mxfp4", "mxfp4").backend == "torch"
    assert PackedKVCache(1, 1, 64, 64, "int4", "int4").backend == ("triton" if INTERPRET else "torch")


# ---- bad input -----------------------------------------------------------------------------------------


def test_bad_input():
    k, v = kv(1, 2, 40, 64)
    cache = PackedKVCache(1, 2, 64, 50, "int4", "int4", group=16, residual=8)
    cache.append(k, v)
    before = cache.view()
    with pytest.raises(InputError, match="overflow the capacity of 50"):
        cache.append(*kv(1, 2, 11, 64))
    assert cache.tokens == 40 and torch.equal(cache.view().k_codes, before.k_codes)  # nothing written
    with pytest.raises(InputError, match=r"must be \[1, 2, n, 64\]"):
        cache.append(*kv(1, 3, 1, 64))
    with pytest.raises(InputError, match=r"must be \[1, 2, n, 64\]"):
        cache.append(k[:, :, 0], v[:, :, 0])
    with pytest.raises(InputError, match=r"must be \[1, 2, n, 64\]"):
        cache.append(k[:, :, :0], v[:, :, :0])
    with pytest.raises(InputError, match="same shape"):
        cache.append(k[:, :, :2], v[:, :, :1])
    with pytest.raises(InputError, match="bfloat16, float16 or float32"):
        cache.append(k[:, :, :1].to(torch.int32), v[:, :, :1])
    with pytest.raises(InputError, match="is on meta"):
        cache.append(k[:, :, :1].to("meta"), v[:, :, :1])
    with pytest.raises(InputError, match="NaN"):
        cache.append(torch.full_like(k[:, :, :2], float("nan")), v[:, :, :2])
    with pytest.raises(InputError, match="must be a tensor"):
        cache.append([1.0], v[:, :, :1])
    for bad in ("int8", "nvfp4", "int4_g128"):
        with pytest.raises(InputError, match="does not read"):
            PackedKVCache(1, 2, 64, 50, bad, "int4")
    with pytest.raises(InputError, match="both keys and values"):
        PackedKVCache(1, 2, 64, 50, "bf16", "int4")
    with pytest.raises(InputError, match="power-of-two group"):
        PackedKVCache(1, 2, 64, 50, "int4", "int4", group=48)
    with pytest.raises(InputError, match="mxfp4"):
        PackedKVCache(1, 2, 64, 50, "mxfp4", "mxfp4", group=16)
    with pytest.raises(InputError, match="head_dim"):
        PackedKVCache(1, 2, 96, 50)
    with pytest.raises(InputError, match="capacity"):
        PackedKVCache(1, 2, 64, 0)
    with pytest.raises(InputError, match="residual"):
        PackedKVCache(1, 2, 64, 50, residual=-1)
    with pytest.raises(InputError, match="backend"):
        PackedKVCache(1, 2, 64, 50, backend="cuda")
    with pytest.raises(InputError, match="int4 / int2"):
        PackedKVCache(1, 2, 64, 50, "mxfp4", "mxfp4", backend="triton")
    if not INTERPRET:
        with pytest.raises(InputError, match="TRITON_INTERPRET"):
            PackedKVCache(1, 2, 64, 50, backend="triton")
    with pytest.raises(InputError, match="no tokens"):
        PackedKVCache(1, 2, 64, 50).view()


# ---- inside a Hugging Face Llama ------------------------------------------------------------------------


def small_llama(seed=0):
    """A random 2-layer Llama, head_dim 32 (groups of 16 or 32 fit), GQA 4 / 2, float32, sdpa attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=101, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval()


def teacher_forced_logits(model, cache, prompt, tokens=None, steps=40):
    """Last-position logits [steps + 1, B, vocab] of a prompt then `steps` one-token steps (feeding `tokens`, or
    the greedy choice), and the tokens fed."""
    from nmx.model.layers import with_cache

    kw = with_cache(model, cache)
    with torch.no_grad():
        out = model(prompt, **kw).logits[:, -1]
        logits, fed = [out], []
        for i in range(steps):
            nxt = tokens[i] if tokens is not None else out.argmax(-1)
            fed.append(nxt)
            out = model(nxt[:, None], **kw).logits[:, -1]
            logits.append(out)
    return torch.stack(logits), fed


def assert_close_logits(got, want):
    """Within 2^-7 x max |logit| (module docstring); the argmax agrees wherever want's top two differ by more
    than twice that."""
    tol = 2.0**-7 * float(want.abs().max())
    assert float((got - want).abs().max()) <= tol
    top2 = want.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * tol
    assert torch.equal(got.argmax(-1)[clear], want.argmax(-1)[clear])


@pytest.mark.parametrize("kf,vf,group,residual", [("int4", "int4", 16, 16), ("int2", "int2", 16, 0),
                                                  ("mxfp4", "fp8_e4m3", 32, 24)])
def test_llama_decodes_like_the_fake_quant_cache(kf, vf, group, residual):
    from nmx.kernels.kv_hf import ATTENTION_NAME, packed_cache
    from nmx.kv import KVCache, KVPolicy, QuantSpec

    model = small_llama()
    prompt = torch.randint(0, 101, (2, 70), generator=torch.Generator().manual_seed(1))
    fake = copy.deepcopy(model)
    fake_cache = KVCache(KVPolicy(quant=QuantSpec(key_format=kf, value_format=vf, group=group, residual=residual)),
                         fake)
    want, tokens = teacher_forced_logits(fake, fake_cache, prompt)
    cache = packed_cache(model, 2, 120, kf, vf, group, residual)
    assert model.config._attn_implementation == ATTENTION_NAME and cache.previous_attention == "sdpa"
    got, _ = teacher_forced_logits(model, cache, prompt, tokens)
    assert torch.equal(got[0], want[0])  # the prompt: the same dequantized cache, the same sdpa call
    assert_close_logits(got, want)
    store = cache.layers[0].store
    assert store.tokens == 110 and store.quantized == fake_cache.layers[0].n_pages * group > 0
    for a, b in zip(dequantize_kv(store.view()), fake_cache.layers[0].view(), strict=True):
        assert torch.equal(a, b)  # layer 0's inputs do not depend on the decode attention: the same cache


def test_bf16_packed_cache_matches_the_dynamic_cache_and_generate_runs():
    from transformers import DynamicCache

    from nmx.kernels.kv_hf import packed_cache
    from nmx.model.layers import with_cache

    model = small_llama(seed=2)
    prompt = torch.randint(0, 101, (1, 33), generator=torch.Generator().manual_seed(2))
    want, tokens = teacher_forced_logits(copy.deepcopy(model), DynamicCache(), prompt)
    got, _ = teacher_forced_logits(model, packed_cache(model, 1, 80, "bf16", "bf16"), prompt, tokens)
    assert_close_logits(got, want)
    kw = with_cache(model, packed_cache(model, 1, 80, "int4", "int4", group=16, residual=8))
    kw.pop("use_cache")
    out = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0, **kw)
    assert out.shape == (1, 45)


def test_packed_cache_bad_input():
    from transformers import LlamaConfig, LlamaForCausalLM

    from nmx.kernels.kv_hf import packed_cache, packed_kv_attention
    from nmx.model.layers import with_cache

    model = small_llama()
    prompt = torch.randint(0, 101, (1, 20))
    cache = packed_cache(model, 1, 24, "int4", "int4", group=16, residual=0)
    model.set_attn_implementation("sdpa")
    with pytest.raises(InputError, match="nmx_packed_kv"):
        model(prompt, **with_cache(model, cache))
    cache = packed_cache(model, 1, 24, "int4", "int4", group=16, residual=0)
    model(prompt, **with_cache(model, cache))
    with pytest.raises(InputError, match="overflow the capacity"):
        model(torch.randint(0, 101, (1, 5)), **with_cache(model, cache))
    with pytest.raises(InputError, match="beam search"):
        cache.reorder_cache(torch.tensor([0]))
    # a decode step whose mask hides a key (a padded row) is refused, an all-visible mask is not
    layer = cache.layers[0]
    q, k1 = torch.randn(1, 4, 1, 32), torch.randn(1, 2, 1, 32)
    key, value = layer.update(k1, k1)
    module = types.SimpleNamespace(is_causal=True, num_key_value_groups=2, training=False)
    hidden = torch.zeros(1, 1, 1, 21, dtype=torch.bool)
    with pytest.raises(InputError, match="padded"):
        packed_kv_attention(module, q, key, value, hidden, scaling=0.2)
    out, _ = packed_kv_attention(module, q, key, value, ~hidden, scaling=0.2)
    assert out.shape == (1, 1, 4, 32) and torch.isfinite(out).all()
    assert torch.isnan(key).all()  # the placeholder: NaN for any attention that does not read the packed cache
    sliding = LlamaForCausalLM(LlamaConfig(vocab_size=11, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1))
    sliding.config.sliding_window = 16
    with pytest.raises(InputError, match="full attention"):
        packed_cache(sliding, 1, 24)
