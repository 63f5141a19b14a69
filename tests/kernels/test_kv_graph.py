"""Graph mode of the packed KV cache (PackedKVCache(static=True)), its fixed-grid decode attention, a Hugging Face
Llama decoding through it, and `nmx bench decode --kv`.

Oracles:
- `pack_kv` of all the tokens at once (torch path): after every one-token append of the graph-mode kernel
  (`_kv_static_append_kernel`, run by Triton's CPU interpreter) the live part of the buffers (`view()`) holds the
  same codes, scales and bf16 window bit for bit; int4, int2 (residual 0, below G, above 2G and not a multiple of
  G: the shift in several pieces) and bf16, fp32 / bf16 / fp16 inputs, non-contiguous token views as a Hugging Face
  layer passes them, from empty or after an eager prefill, and after a rewind;
- the same attention kernel over a view of the live tokens (`kv_decode_attention`): bit for bit when both run one
  split (the same blocks in the same order), and the float32 reference twin within the 1e-2 of
  test_kv_attention.py with the default (capacity-sized) splits, on NaN-poisoned outputs and workspaces;
- the eager packed cache in the same tiny Llama: graph-mode logits equal bit for bit where both run the reference
  twin (CPU); through the interpreted kernels, layer 0's cache bytes equal (its inputs do not depend on the
  attention) and the logits agree within test_kv_cache_append.py's 2^-7 x max |logit| (the kernel rounds q and
  its output to bf16, the twin does not);
- hand-computed byte counts (`nbytes_at` against `view().nbytes`).
"""

import copy
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from nmx.errors import InputError
from nmx.kernels.kv_attention import decode_attention_reference, decode_attention_static
from nmx.kernels.kv_cache import PackedKVCache
from nmx.kernels.kv_layout import pack_kv
from tests.cli import run_cli
from tests.kernels.test_compile_sm90 import compiled  # noqa: F401  (a fixture: launches compiled for sm_90)
from tests.kernels.test_kv_cache_append import (
    assert_close_logits,
    assert_same_packed,
    kv,
    small_llama,
    teacher_forced_logits,
)

TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = TRITON and os.environ.get("TRITON_INTERPRET") == "1"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (format, group, residual, input dtype)
GRAPH_CASES = {
    "int4-g16-r24-fp32": ("int4", 16, 24, torch.float32),
    "int2-g32-r0-bf16": ("int2", 32, 0, torch.bfloat16),
    "int4-g16-r40-bf16": ("int4", 16, 40, torch.bfloat16),  # the shift in 3 pieces, the last one partial
    "int2-g16-r8-fp16": ("int2", 16, 8, torch.float16),
    "bf16-r24-fp32": ("bf16", None, 24, torch.float32),
    "fp8-g16-r24-bf16": ("fp8_e4m3", 16, 24, torch.bfloat16),  # saturation and subnormals inside
    "mxfp4-g32-r8-fp32": ("mxfp4", 32, 8, torch.float32),  # blocks of 32 tokens (keys) / 32 channels (values)
}
GPU_GRAPH_CASES = {"int4-g32-r128-bf16-d128": ("int4", 32, 128, torch.bfloat16)}  # the bench's shape (D = 128)
CUDA = torch.cuda.is_available()


def in_interpreter(code: str) -> None:
    """Run `code` (which prints ok) in a fresh interpreter with TRITON_INTERPRET=1 (set before triton loads)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


def hf_token(x: torch.Tensor, i: int) -> torch.Tensor:
    """Token i of x [B, H, T, D] as a Hugging Face layer hands it over: a [B, H, 1, D] view of a [B, 1, H, D]
    tensor (batch and head strides that are not the contiguous ones)."""
    return x[:, :, i:i + 1].transpose(1, 2).contiguous().transpose(1, 2)


def check_graph_invariants(name: str, device: str = "cpu") -> None:
    """One-token appends by the graph-mode kernel equal pack_kv of all tokens at every step (module docstring)."""
    kf, g, res, dtype = GRAPH_CASES.get(name) or GPU_GRAPH_CASES[name]
    b, h, d = 2, 3, 128 if name in GPU_GRAPH_CASES else 64
    width = res + (g or 0)
    total = width + (g or 16) + 2  # two flushes
    k, v = kv(b, h, total, d, seed=len(name))
    if kf in ("fp8_e4m3", "mxfp4"):  # beyond e4m3's range (saturates to 448), below its normals; mixed block scales
        k[..., 0] *= 1000.0
        v[..., 1] *= 1e-3
    k, v = k.to(dtype).to(device), v.to(dtype).to(device)

    def same(cache, n):
        assert_same_packed(cache.view(), pack_kv(k[:, :, :n], v[:, :, :n], kf, kf, g, res, backend="torch"))
        assert torch.equal(cache.lengths, torch.full_like(cache.lengths, n))  # every program's counter

    # from empty, one token at a time
    cache = PackedKVCache(b, h, d, total + 1, kf, kf, g, res, device, static=True)
    assert cache.backend == "triton"
    for i in range(total):
        cache.append(*(hf_token(x, i) for x in (k, v)))
        same(cache, i + 1)
    # the last slot, then one token too many: nothing written, the counter at capacity + 1, NaN attention
    cache.append(*(hf_token(x, total - 1) for x in (k, v)))
    before = [t.clone() for t in (cache.k_codes, cache.v_codes, cache.window)]
    cache.append(*(hf_token(x, 0) for x in (k, v)))
    assert torch.equal(cache.lengths, torch.full_like(cache.lengths, total + 2))
    assert all(torch.equal(a, t) for a, t in zip(before, (cache.k_codes, cache.v_codes, cache.window), strict=True))
    with pytest.raises(InputError, match="capacity"):
        cache.view()
    q = torch.randn(b, 2 * h, d).to(torch.bfloat16).to(device)
    assert torch.isnan(decode_attention_static(q, cache)).all()
    # an eager prefill, then kernel steps; then reset() and kernel steps from empty again
    cache = PackedKVCache(b, h, d, total, kf, kf, g, res, device, static=True)
    pre = width - 3
    cache.append(k[:, :, :pre], v[:, :, :pre])
    same(cache, pre)
    for i in range(pre, total):
        cache.append(k[:, :, i:i + 1], v[:, :, i:i + 1])
    same(cache, total)
    cache.reset()
    for i in range(width):
        cache.append(k[:, :, i:i + 1], v[:, :, i:i + 1])
    same(cache, width)


DECODE_CASES = {"int4-g16-r16-gqa2": ("int4", 16, 16, 4), "int2-g16-r0-gqa3": ("int2", 16, 0, 6),
                "bf16-gqa2": ("bf16", None, 8, 4), "fp8-g16-r16-gqa2": ("fp8_e4m3", 16, 16, 4),
                "mxfp4-g32-r8-gqa2": ("mxfp4", 32, 8, 4)}


def check_static_decode(name: str, device: str = "cpu") -> None:
    """The fixed-grid decode kernel against the same kernel on the live view and against the twin, at lengths
    with nothing quantized, whole and partial blocks, an empty and a full window."""
    from nmx.kernels.triton_kv_attention import kv_decode_attention, kv_decode_attention_static, plan

    kf, g, res, hq = DECODE_CASES[name]
    b, h, d, total = 2, 2, 64, 50
    k, v = (x.to(device) for x in kv(b, h, total, d, seed=hq))
    cache = PackedKVCache(b, h, d, total + 30, kf, kf, g, res, device, static=True)
    q = torch.randn(b, hq, d, generator=torch.Generator().manual_seed(hq)).to(torch.bfloat16).to(device)
    for i in range(total):
        cache.append(k[:, :, i:i + 1], v[:, :, i:i + 1])
        if i + 1 in (1, 17, 32, 33, total):
            view = cache.view()
            one = kv_decode_attention_static(q, cache, 0.125, {"num_splits": 1}, poison=True)
            live = kv_decode_attention(q, view, 0.125, {"num_splits": 1}, poison=True)
            fixed_plan, live_plan = (plan(tuple(q.shape), x, {"num_splits": 1}) for x in (cache.capacity_view(), view))
            if all(fixed_plan[key] == live_plan[key] for key in ("NS", "BPS_R", "BTR")):
                assert torch.equal(one, live), i  # the same blocks in the same order: the same bits
            else:  # the capacity's plan cuts the bf16 window into more pieces (mxfp4's small blocks): 1 ulp apart
                assert float((one.float() - live.float()).abs().max()) <= 2 ** -7 * float(live.float().abs().max()), i
            out = kv_decode_attention_static(q, cache, 0.125, poison=True)
            ref = decode_attention_reference(q.cpu(), view.to("cpu"), 0.125).float()
            assert float((out.float().cpu() - ref).norm() / ref.norm()) < 1e-2, i
            assert torch.equal(decode_attention_static(q, cache, 0.125), out)  # auto: the kernel


def check_llama_through_the_kernels() -> None:
    """A tiny Llama through the interpreted kernels: layer 0's cache bytes equal the eager cache's, the logits
    within the bound of test_kv_cache_append.py."""
    from nmx.kernels.kv_hf import packed_cache

    model = small_llama()
    prompt = torch.randint(0, 101, (2, 20), generator=torch.Generator().manual_seed(1))
    for kf, g, res in (("int4", 16, 8), ("bf16", None, 8)):
        eager = copy.deepcopy(model)
        eager_cache = packed_cache(eager, 2, 40, kf, kf, g, res, backend="torch")
        want, tokens = teacher_forced_logits(eager, eager_cache, prompt, steps=6)  # one flush at 24 tokens
        graph = copy.deepcopy(model)
        cache = packed_cache(graph, 2, 40, kf, kf, g, res, static=True)
        assert cache.layers[0].store.backend == "triton"
        got, _ = teacher_forced_logits(graph, cache, prompt, tokens, steps=6)
        assert torch.equal(got[0], want[0])
        assert_close_logits(got, want)
        assert_same_packed(cache.layers[0].store.view(), eager_cache.layers[0].store.view())


# ---- in Triton's interpreter --------------------------------------------------------------------------


def _in_the_interpreter(check, name: str) -> None:
    """check(name) here when this process already runs Triton's interpreter, else in a child process that does."""
    if INTERPRET:
        check(name)
        return
    in_interpreter(f"from tests.kernels.test_kv_graph import {check.__name__}\n{check.__name__}({name!r})\n"
                   "print('ok')\n")


@pytest.mark.skipif(not TRITON, reason="triton is not installed")
@pytest.mark.parametrize("name", list(GRAPH_CASES))
def test_graph_appends_give_pack_kv_bit_for_bit(name):
    _in_the_interpreter(check_graph_invariants, name)


@pytest.mark.skipif(not TRITON, reason="triton is not installed")
@pytest.mark.parametrize("name", list(DECODE_CASES))
def test_fixed_grid_decode_attention_in_the_interpreter(name):
    _in_the_interpreter(check_static_decode, name)


@pytest.mark.skipif(not TRITON, reason="triton is not installed")
def test_llama_through_the_graph_kernels_in_the_interpreter():
    if INTERPRET:
        check_llama_through_the_kernels()
        return
    in_interpreter("from tests.kernels.test_kv_graph import check_llama_through_the_kernels\n"
                   "check_llama_through_the_kernels()\nprint('ok')\n")


@pytest.mark.skipif(not TRITON or INTERPRET, reason="needs triton, compiling (not TRITON_INTERPRET=1)")
@pytest.mark.parametrize("kf,dtype", [("int4", torch.bfloat16), ("int2", torch.float32), ("bf16", torch.bfloat16),
                                      ("fp8_e4m3", torch.bfloat16), ("mxfp4", torch.bfloat16)])
def test_graph_kernels_compile_for_sm90(compiled, kf, dtype):  # noqa: F811 (the imported fixture)
    """The launches a captured step makes compile for sm_90 (test_compile_sm90.py's interception: nothing runs):
    the append kernel (both branches: token write, chunk pack and shift) and the fixed-grid decode kernel."""
    from nmx.kernels.triton_kv_attention import kv_decode_attention_static

    cache = PackedKVCache(2, 4, 128, 600, kf, kf, group=None if kf == "bf16" else 32, residual=128, static=True,
                          backend="torch")
    cache.backend = "triton"  # below the device check: launches are intercepted, never run
    k, v = kv(2, 4, 1, 128)
    cache.append(hf_token(k.to(dtype), 0), hf_token(v.to(dtype), 0))
    kv_decode_attention_static(torch.randn(2, 8, 128).to(torch.bfloat16), cache, 0.1)
    assert compiled == ["_kv_static_append_kernel", "_kv_decode_kernel", "_kv_reduce_kernel"]


# ---- on a CUDA GPU (the in-program barriers race only there) ---------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not (CUDA and TRITON), reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("name", [*GRAPH_CASES, *GPU_GRAPH_CASES])
def test_graph_appends_on_the_gpu(name):
    check_graph_invariants(name, "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not (CUDA and TRITON), reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("name", list(DECODE_CASES))
def test_fixed_grid_decode_attention_on_the_gpu(name):
    check_static_decode(name, "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not (CUDA and TRITON), reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("kf,g,res", [("int4", 16, 8), ("int2", 16, 0), ("bf16", None, 8)])
def test_llama_step_captured_in_one_cuda_graph(kf, g, res):
    """The tiny Llama (float32, on the GPU): a one-token step with the graph-mode cache captured in one CUDA graph
    and replayed 30 times (teacher-forced) against the eager packed cache: layer 0's cache bytes equal (the same
    pack arithmetic on the same inputs), the logits within 2^-7 x max |logit| (the decode kernel's splits
    differ; in the interpreter against the twin: 2^-8.3 at most)."""
    from nmx.kernels.kv_hf import packed_cache
    from nmx.model.layers import with_cache

    model = small_llama().to("cuda")
    prompt = torch.randint(0, 101, (2, 20), generator=torch.Generator().manual_seed(1)).cuda()
    eager = copy.deepcopy(model)
    eager_cache = packed_cache(eager, 2, 64, kf, kf, g, res)
    want, tokens = teacher_forced_logits(eager, eager_cache, prompt, steps=30)
    cache = packed_cache(model, 2, 64, kf, kf, g, res, static=True)
    kw = with_cache(model, cache)
    ids = torch.zeros(2, 1, dtype=torch.long, device="cuda")
    mask = torch.ones(2, 1, 1, 1, dtype=torch.bool, device="cuda")
    with torch.no_grad():
        got = [model(prompt, **kw).logits[:, -1]]
        ids.copy_(tokens[0][:, None])
        model(ids, attention_mask=mask, **kw)  # warm-up (Triton compiles), then back one token (no flush yet)
        for store in cache.stores():
            store.tokens = 20
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            model(ids, attention_mask=mask, **kw)
        torch.cuda.current_stream().wait_stream(side)
        for store in cache.stores():
            store.tokens = 20
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = model(ids, attention_mask=mask, **kw).logits[:, -1]
        for i in range(30):
            ids.copy_(tokens[i][:, None])
            graph.replay()
            got.append(out.clone())
    got = torch.stack(got)
    assert int(cache.layers[0].store.length) == 50
    assert_close_logits(got, want)
    assert_same_packed(cache.layers[0].store.view(), eager_cache.layers[0].store.view())


# ---- the reference twin (CPU) ----------------------------------------------------------------------------


@pytest.mark.parametrize("kf,g,res", [("int4", 16, 24), ("int2", 16, 0), ("bf16", None, 8)])
def test_twin_appends_and_byte_counts(kf, g, res):
    """Graph mode with backend torch (the CPU's default): the eager path through the device counter, the same
    bytes; nbytes_at(T) is view().nbytes at T tokens."""
    k, v = kv(1, 2, 90, 32)
    cache = PackedKVCache(1, 2, 32, 90, kf, kf, g, res, static=True, backend="torch")
    for i in range(90):
        cache.append(k[:, :, i:i + 1], v[:, :, i:i + 1])
        view = cache.view()
        assert cache.nbytes_at(i + 1) == view.nbytes
        if i % 9 == 0 or i == 89:
            assert_same_packed(view, pack_kv(k[:, :, :i + 1], v[:, :, :i + 1], kf, kf, g, res, backend="torch"))
    assert cache.tokens == 90 and cache.length.shape == () and int(cache.length) == 90
    with pytest.raises(InputError, match="overflow the capacity"):  # the twin checks the capacity on the host
        cache.append(k[:, :, :1], v[:, :, :1])
    assert int(cache.length) == 90


@pytest.mark.parametrize("kf,g,res", [("int4", 16, 8), ("int2", 16, 0), ("bf16", None, 8)])
def test_llama_graph_mode_logits_equal_the_eager_cache(kf, g, res):
    """The tiny Llama's logits through a graph-mode packed cache (CPU: the twins, as the bench's CPU smoke runs it)
    equal the eager packed cache's bit for bit, prompt and 30 steps (flushes included); positions come from the
    device-side count (get_seq_length is a 0-dim tensor)."""
    from nmx.kernels.kv_hf import packed_cache

    model = small_llama()
    prompt = torch.randint(0, 101, (2, 20), generator=torch.Generator().manual_seed(1))
    eager = copy.deepcopy(model)
    eager_cache = packed_cache(eager, 2, 60, kf, kf, g, res, backend="torch")
    want, tokens = teacher_forced_logits(eager, eager_cache, prompt, steps=30)
    cache = packed_cache(model, 2, 60, kf, kf, g, res, backend="torch", static=True)
    got, _ = teacher_forced_logits(model, cache, prompt, tokens, steps=30)
    assert torch.equal(got, want)
    seq = cache.get_seq_length()
    assert isinstance(seq, torch.Tensor) and int(seq) == 50
    for a, b in zip(cache.stores(), eager_cache.stores(), strict=True):
        assert_same_packed(a.view(), b.view())


def test_graph_mode_bad_input():
    with pytest.raises(InputError, match="graph mode"):
        PackedKVCache(1, 2, 64, 50, "mxfp4", "fp8_e4m3", static=True)
    with pytest.raises(InputError, match="graph mode"):
        PackedKVCache(1, 2, 64, 50, "int4", "int2", group=16, static=True)
    with pytest.raises(InputError, match="graph mode"):
        PackedKVCache(1, 2, 64, 50, "fp8_e4m3", "int4", group=16, static=True)
    cache = PackedKVCache(1, 2, 64, 40, "int4", "int4", group=16, residual=8, static=True, backend="torch")
    k, v = kv(1, 2, 41, 64)
    cache.append(k[:, :, :40], v[:, :, :40])
    with pytest.raises(InputError, match="overflow the capacity of 40"):
        cache.append(k[:, :, 40:], v[:, :, 40:])
    with pytest.raises(InputError, match="follows from .tokens"):
        cache.quantized = 0
    with pytest.raises(InputError, match="static=True"):
        decode_attention_static(torch.randn(1, 2, 64), PackedKVCache(1, 2, 64, 40, "int4", "int4", group=16))
    with pytest.raises(InputError, match="device-side count"):
        _ = PackedKVCache(1, 2, 64, 40).length
    with pytest.raises(InputError, match="q has batch 2"):
        decode_attention_static(torch.randn(2, 2, 64), cache)


# ---- nmx bench decode --kv -------------------------------------------------------------------------------


def test_bench_decode_kv_cpu_smoke(tmp_path, capsys, monkeypatch):
    """`--kv int4` on the tiny config: four rows per batch (bf16 and compressed weights, each with the StaticCache
    and with the graph-mode packed cache, run eagerly through the twins on the CPU); the JSON records the KV format
    and the KV bytes per step (hand-computed below)."""
    out = tmp_path / "bench.json"
    code, text, err = run_cli(["bench", "decode", "--config", "tiny", "--weights", "int4_g128", "--kv", "int4",
                               "--kv-group", "16", "--kv-residual", "8", "--batch", "1,2", "--context", "24",
                               "--tokens", "3", "--allow-cpu", "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    rec = json.loads(out.read_text())
    assert rec["kv"] == {"format": "int4", "group": 16, "residual": 8}
    rows = {(r["variant"], r["batch"]): r for r in rec["rows"]}
    assert set(rows) == {(v, b) for v in ("bf16", "bf16 kv-int4", "compressed", "compressed kv-int4") for b in (1, 2)}
    assert all(r["finite"] and r["tokens_per_s"] > 0 and r["mode"] == "eager" for r in rows.values())
    assert all("speedup_vs_bf16" in r for r in rows.values())
    packed = rows[("compressed kv-int4", 2)]
    assert packed["kv"]["format"] == "int4" and packed["kv"]["cache"] == "PackedKVCache (graph mode)"
    assert rows[("bf16", 2)]["kv"]["format"] == "bf16"
    # tiny: 2 layers, 2 KV heads, head_dim 32; steps attend over 25, 26, 27 tokens: 16 quantized (G=16, residual 8)
    # and 9, 10, 11 in the window. Per layer and batch row: window 2 * 2 * 2 * T_r * 32, codes 2 * 2 * 16 * 32 / 2,
    # key scales 2 * 32 * 2, value scales 2 * 16 * 2 * 2
    per_row = 2 * (2 * 2 * 2 * 10 * 32 + 2 * 2 * 16 * 16 + 2 * 32 * 2 + 2 * 16 * 2 * 2)
    assert packed["kv_bytes_per_step"] == packed["bytes_per_step"]["kv_cache"] == 2 * per_row
    assert rows[("bf16", 2)]["kv_bytes_per_step"] == 2 * 2 * 2 * 2 * 35 * 32 * 2  # the StaticCache: all 35 slots
    assert "compressed kv-int4  batch   2" in text and "MiB/step" in text


@pytest.mark.parametrize("args,phrase", [
    (["--kv", "nvfp4"], "does not read 'nvfp4'"),
    (["--kv", "fp8_e4m3", "--kv-group", "0"], "--kv-group must be a positive integer"),
    (["--kv", "int4", "--kv-residual", "-1"], "--kv-residual"),
    (["--kv", "int4", "--kv-group", "48"], "power-of-two group"),
])
def test_bench_decode_kv_bad_input(args, phrase, capsys, monkeypatch):
    code, _, err = run_cli(["bench", "decode", "--config", "tiny", *args, "--batch", "1", "--context", "8",
                            "--tokens", "2", "--allow-cpu"], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and phrase in err, err


def test_bench_decode_kv_refuses_a_head_dim_the_kernel_does_not_take(capsys, monkeypatch):
    from nmx.kernels import decode_bench

    odd = dict(decode_bench.CONFIGS["tiny"], hidden_size=96, num_attention_heads=2, num_key_value_heads=1)  # 48
    monkeypatch.setitem(decode_bench.CONFIGS, "odd", odd)
    code, _, err = run_cli(["bench", "decode", "--config", "odd", "--kv", "int4", "--batch", "1", "--context", "8",
                            "--tokens", "2", "--allow-cpu"], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and "head_dim" in err and "48" in err, err
    code, _, err = run_cli(["bench", "decode", "--config", "odd", "--batch", "1", "--context", "8", "--tokens", "2",
                            "--allow-cpu"], capsys, monkeypatch)
    assert code == 0, err  # the bf16 StaticCache path takes it
