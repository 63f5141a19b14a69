"""nmx.kernels: the packed layout and its reference twin against nmx.formats (bit for bit) and a
float64 product; the Triton kernel against the twin where it can run (CUDA, or Triton's CPU
interpreter); bad input."""

import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch

from nmx import formats
from nmx.errors import InputError
from nmx.kernels import decode_weight, linear, linear_reference, pack
from nmx.sparsity.masks import check_nm, nm_mask

CASES = [(None, "2:4"), ("mxfp4", None), ("nvfp4", None), ("int4_g128", None), ("int4_g32", None), ("fp8_e4m3", None),
         ("mxfp8_e4m3", None), ("mxfp4", "2:4"), ("nvfp4", "2:4"), ("int4_g128", "2:4"), ("fp8_e4m3", "2:4")]


def weight(n=40, k=256, pattern=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) / math.sqrt(k)
    w[0, :8] = torch.tensor([3.0, -2.5, 1e-9, 0.0, 6.0, -6.0, 0.5, 0.25])  # saturation, tiny, zero values
    return w * nm_mask(w.abs(), 2, 4) if pattern else w


@pytest.mark.parametrize("fmt,pattern", CASES)
def test_decode_is_the_nmx_format_bit_for_bit(fmt, pattern):
    """Oracle: nmx.formats.quantize of the (pruned) weight; pruned entries decode to 0."""
    w = weight(pattern=pattern)
    p = pack(w, fmt, pattern)
    expected = formats.get(fmt).quantize(w) if fmt else w.to(torch.bfloat16).float()
    assert torch.equal(decode_weight(p), expected)  # -0 and +0 compare equal: pruned zeros are +0 here
    if pattern:
        assert check_nm(decode_weight(p), 2, 4) == 0


@pytest.mark.parametrize("fmt,pattern", CASES)
def test_packed_bytes_are_what_the_layout_says(fmt, pattern):
    n, k = 40, 256
    p = pack(weight(n, k, pattern), fmt, pattern)
    value_bits = {None: 16, "fp8_e4m3": 8, "mxfp8_e4m3": 8}.get(fmt, 4)
    kept = n * k // 2 if pattern else n * k
    block_bytes = {"mxfp4": 1, "mxfp8_e4m3": 1, "nvfp4": 1, "int4_g128": 2, "int4_g32": 2}.get(fmt, 0)
    block = {"mxfp4": 32, "mxfp8_e4m3": 32, "nvfp4": 16, "int4_g128": 128, "int4_g32": 32}.get(fmt, 1)
    expected = kept * value_bits // 8 + (n * k // 8 if pattern else 0) + (n * k // block) * block_bytes
    assert p.nbytes == expected


@pytest.mark.parametrize("fmt,pattern", CASES)
def test_reference_linear_against_float64(fmt, pattern):
    w = weight(pattern=pattern, seed=1)
    p = pack(w, fmt, pattern)
    x = torch.randn(5, 256)
    wq = (formats.get(fmt).quantize(w) if fmt else w.to(torch.bfloat16).float()).double()
    exact = x.to(torch.bfloat16).double() @ wq.T
    y = linear(x, p)  # CPU: the reference path
    assert y.dtype == torch.bfloat16 and y.shape == (5, 40)
    assert float((y.double() - exact).norm() / exact.norm()) < 1e-2
    assert torch.equal(linear(x.reshape(1, 5, 256), p).reshape(5, 40), y)


def test_a_given_mask_is_kept_even_where_a_kept_weight_is_zero():
    w = weight(pattern="2:4")
    mask = nm_mask(w.abs(), 2, 4)
    w[3, :4] = 0.0  # both kept weights of a group are zero: the mask still says which
    p = pack(w, "nvfp4", "2:4", mask=mask)
    nib = p.meta[3, 0] & 15
    kept = mask[3, :4].nonzero().flatten().tolist()
    assert [int(nib & 3), int(nib >> 2)] == kept


def test_bad_input():
    with pytest.raises(InputError, match="multiple of 64"):
        pack(torch.randn(8, 96), "mxfp4")
    with pytest.raises(InputError, match="do not read"):
        pack(torch.randn(8, 128), "int3_g32")
    with pytest.raises(InputError, match="not 2:4"):
        pack(torch.randn(8, 128), None, "2:4")
    with pytest.raises(InputError, match="dense or 2:4"):
        pack(torch.randn(8, 128), None, "1:4")
    with pytest.raises(InputError, match="NaN"):
        pack(torch.full((8, 128), float("nan")), "mxfp4")
    p = pack(torch.randn(8, 128), "mxfp4")
    with pytest.raises(InputError, match="input features"):
        linear(torch.randn(2, 64), p)
    with pytest.raises(InputError, match="backend"):
        linear(torch.randn(2, 128), p, backend="magic")


def test_non_contiguous_input_gives_the_same_result():
    p = pack(weight(), "int4_g128")
    x = torch.randn(256, 6).T  # non-contiguous [6, 256]
    assert torch.equal(linear(x, p), linear(x.contiguous(), p))


TRITON = importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(not TRITON, reason="triton is not installed (the kernel's CPU twin is tested above)")
def test_triton_kernel_in_the_cpu_interpreter_matches_the_twin():
    """Runs the real Triton kernel source in Triton's interpreter (a subprocess: the interpreter
    flag must be set before triton is imported)."""
    code = r"""
import torch, math
from nmx.kernels import pack, linear_reference
from nmx.kernels.triton_gemv import gemv, word_linear
from nmx.sparsity.masks import nm_mask
# the word kernel's tensor-core path (several tokens), dense and 2:4, 4/8/16-bit
for fmt, pat in [(None, "2:4"), ("nvfp4", None), ("int4_g128", "2:4"), ("mxfp8_e4m3", None), ("int4_g128", None)]:
    w = torch.randn(24, 256) / 16
    w = w * nm_mask(w.abs(), 2, 4) if pat else w
    p = pack(w, fmt, pat)
    x = torch.randn(5, 256).to(torch.bfloat16)
    cfg = dict(BLOCK_M=16, BLOCK_N=16, W=16, SPLIT_K=1, num_warps=4, num_stages=1)
    y = word_linear(x, p, cfg, poison=True).float()
    r = linear_reference(x, p).float()
    err = float((y - r).norm() / r.norm())
    assert err < 1e-2, (fmt, pat, err)
print("ok")
# the one-token kernel on every format x pattern, one row block and split-K
for fmt in [None, "mxfp4", "nvfp4", "int4_g128", "int4_g32", "fp8_e4m3", "mxfp8_e4m3"]:
    for pat in (None, "2:4"):
        w = torch.randn(24, 256) / 16
        w[0, :8] = torch.tensor([3.0, -2.5, 1e-9, 0.0, 6.0, -6.0, 0.5, 0.25])
        w = w * nm_mask(w.abs(), 2, 4) if pat else w
        p = pack(w, fmt, pat)
        x = torch.randn(1, 256).to(torch.bfloat16)
        r = linear_reference(x, p).float()
        # one row block; split-K with prefetching (the switches test below runs a third tiling on every format)
        for cfg in (dict(BLOCK_N=16, W=4, SPLIT_K=1), dict(BLOCK_N=8, W=4, SPLIT_K=2, PREFETCH=True)):
            y = gemv(x, p, {**cfg, "num_warps": 4, "num_stages": 1}).float()
            err = float((y - r).norm() / r.norm())
            assert err < 1e-2, ("gemv", fmt, pat, cfg, err)
print("gemv ok")
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "gemv ok" in r.stdout, r.stderr[-2000:]


def test_one_token_kernel_switches_compute_the_same_bits_in_the_interpreter():
    """FOLD_SIGN (e2m1/e4m3 without the restoring multiply: x times 2^96/2^90, sums times 2^-30), X_BCAST (x
    loaded in the weights' layout) and PRMT_GATHER (2:4 x gathered by byte permutes, emulated by shifts in
    the interpreter) change how, not what: every combination gives the bits of the default config, and the
    twin's answer, on every format x pattern, with E2M1/E4M3 subnormals, a ragged K and x from 1e-6 to 1e9.
    INT4_FMA (int4 with one logic op and one FMA a weight) rounds its word sums differently: within 1 ulp."""
    code = r"""
import torch
from nmx.kernels import pack, linear_reference
from nmx.kernels.triton_gemv import gemv
from nmx.sparsity.masks import nm_mask
torch.manual_seed(1)
for fmt in [None, "mxfp4", "nvfp4", "int4_g32", "fp8_e4m3", "mxfp8_e4m3"]:
    for pat in (None, "2:4"):
        w = torch.randn(20, 320) / 16
        w[0, :8] = torch.tensor([3.0, -2.5, 1e-9, 0.0, 6.0, -6.0, 0.5, -0.25])
        w[1, :4] = torch.tensor([2.0**-8, -(2.0**-9), 2.0**-7, 1e-3])
        w = w * nm_mask(w.abs(), 2, 4) if pat else w
        p = pack(w, fmt, pat)
        # x over 15 decades in one vector (the row sums stay finite in bf16)
        x = (torch.randn(1, 320) * 10.0 ** torch.randint(-6, 10, (1, 320)).float()).to(torch.bfloat16)
        r = linear_reference(x, p).float()
        base = dict(BLOCK_N=8, W=8, SPLIT_K=1, num_warps=4, num_stages=1, PREFETCH=True)
        ref = gemv(x, p, dict(base, FOLD_SIGN=False), poison=True)
        err = float((ref.float() - r).norm() / r.norm())
        assert err < 1e-2, (fmt, pat, err)
        for fold, bc, pg in ((True, False, False), (False, True, False), (False, False, True), (True, True, True)):
            if pg and not pat:
                continue
            y = gemv(x, p, dict(base, FOLD_SIGN=fold, X_BCAST=bc, PRMT_GATHER=pg), poison=True)
            assert torch.equal(y, ref), (fmt, pat, fold, bc, pg, float((y.float() - ref.float()).abs().max()))
        if fmt == "int4_g32" and not pat:  # INT4_FMA rounds its word sums differently: within 1 bf16 ulp
            for bc in (False, True):
                y = gemv(x, p, dict(base, X_BCAST=bc, INT4_FMA=True), poison=True).float()
                ulps = (y - ref.float()).abs() / (ref.float().abs() * 2.0**-7).clamp_min(1e-30)
                assert float(ulps.max()) <= 1.0 and float((y - r).norm() / r.norm()) < 1e-2, (bc, float(ulps.max()))
print("switches ok")
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0 and "switches ok" in r.stdout, r.stderr[-2000:]


TC_FORMATS = ["int4_g128", "int4_g32", "mxfp4", "nvfp4", "fp8_e4m3", "mxfp8_e4m3"]
TC_CASES = [(f, None) for f in TC_FORMATS] + [(f, "2:4") for f in ("int4_g128", "nvfp4", "mxfp4", "fp8_e4m3")]


@pytest.mark.skipif(not TRITON, reason="triton is not installed (the kernel's CPU twin is tested above)")
def test_tensor_core_kernel_in_the_cpu_interpreter_matches_the_twin():
    """triton_tc.py in Triton's interpreter (float32 operands there: same values), every format dense and
    2:4, one token and several, split-K, ragged M and N; bad configs and formats refused."""
    code = r"""
import torch
from nmx.errors import InputError
from nmx.kernels import pack, linear_reference
from nmx.kernels.triton_tc import tc_linear
from nmx.kernels.triton_gemv import _SPLIT_WORKSPACE
from nmx.sparsity.masks import nm_mask
torch.manual_seed(0)
for fmt, pat in %r:
    w = torch.randn(40, 256) / 16
    w[0, :8] = torch.tensor([3.0, -2.5, 1e-9, 0.0, 6.0, -6.0, 0.5, 0.25])
    w[1, :4] = torch.tensor([2.0**-8, -(2.0**-9), 2.0**-7, 1e-3])  # e4m3 / e2m1 subnormals after scaling
    w = w * nm_mask(w.abs(), 2, 4) if pat else w
    p = pack(w, fmt, pat)
    for m, cfg in ((1, None), (5, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, SPLIT_K=2, num_warps=4, num_stages=1)),
                   (20, dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, SPLIT_K=1, num_warps=4, num_stages=1))):
        x = torch.randn(m, 256).to(torch.bfloat16)
        y = tc_linear(x, p, cfg, poison=True).float()
        r = linear_reference(x, p).float()
        err = float((y - r).norm() / r.norm())
        assert torch.isfinite(y).all() and err < 1e-2, (fmt, pat, m, err)
        if cfg and cfg["SPLIT_K"] > 1:  # one-launch split-K: the workspace cleans itself, a repeat agrees
            assert torch.equal(tc_linear(x, p, cfg).float(), y)
            for ws, count in _SPLIT_WORKSPACE.values():
                assert not ws.any() and not count.any()
for bad in (lambda: tc_linear(torch.randn(1, 256).to(torch.bfloat16), pack(torch.randn(8, 256), None)),
            lambda: tc_linear(torch.randn(1, 256).to(torch.bfloat16),
                              pack(torch.randn(8, 256) * nm_mask(torch.rand(8, 256), 2, 4), None, "2:4")),
            lambda: tc_linear(torch.randn(1, 256), pack(torch.randn(8, 256), "nvfp4")),
            lambda: tc_linear(torch.randn(256, 2).to(torch.bfloat16).T, pack(torch.randn(8, 256), "nvfp4")),
            lambda: tc_linear(torch.randn(1, 256).to(torch.bfloat16), pack(torch.randn(8, 256), "int4_g32"),
                              dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=64, SPLIT_K=1, num_warps=4, num_stages=1))):
    try:
        bad()
        raise SystemExit("not refused")
    except InputError:
        pass
print("tc ok")
""" % (TC_CASES,)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "tc ok" in r.stdout, r.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not TRITON, reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("fmt,pattern", TC_CASES)
@pytest.mark.parametrize("m", [1, 2, 7, 16, 33, 64])
def test_tensor_core_kernel_on_the_gpu(fmt, pattern, m):
    """triton_tc.py on a shape with several row blocks, K tiles and split-K, against the twin; subnormal
    weights included (bf16 subnormals in the packed multiply)."""
    from nmx.kernels.triton_tc import tc_linear

    w = weight(700, 2048, None, seed=m)
    w[1, :4] = torch.tensor([2.0**-8, -(2.0**-9), 2.0**-7, 1e-3])
    w = w * nm_mask(w.abs(), 2, 4) if pattern else w
    p = pack(w.cuda(), fmt, pattern)
    x = torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16)
    r = linear_reference(x, p).float()
    for cfg in (None, {"BLOCK_M": 16 if m <= 16 else 64, "BLOCK_N": 32, "BLOCK_K": 32, "SPLIT_K": 4, "num_warps": 4,
                       "num_stages": 3}):
        y = tc_linear(x, p, cfg, poison=True).float()
        assert torch.isfinite(y).all() and float((y - r).norm() / r.norm()) < 1e-2, cfg
        y2 = tc_linear(x, p, cfg).float()  # split-K's workspace cleaned itself (else y2 would hold y twice)
        assert float((y2 - y).norm() / y.norm()) < 1e-3  # atomics add in any order: not bit for bit
    # the decoded weight exactly: x = identity columns pick W's columns out (exact in float32)
    eye = torch.eye(2048, device="cuda", dtype=torch.bfloat16)[:64]
    got = tc_linear(eye, p).float()
    want = decode_weight(p)[:, :64].T.to(torch.bfloat16).float()
    assert torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not TRITON, reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("fmt,pattern", CASES)
@pytest.mark.parametrize("m", [1, 7, 16, 64])
def test_dispatch_on_the_gpu(fmt, pattern, m):
    w = weight(512, 1024, pattern, seed=m).cuda()
    p = pack(w, fmt, pattern)
    x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
    y = linear(x, p).float()
    r = linear_reference(x, p).float()
    assert torch.isfinite(y).all() and float((y - r).norm() / r.norm()) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not TRITON, reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("fmt,pattern", CASES + [(None, None)])
def test_one_token_kernel_on_the_gpu(fmt, pattern):
    """The dispatcher's M = 1 path (triton_gemv) on a shape with several row blocks and K tiles."""
    from nmx.kernels.triton_gemv import gemv

    w = weight(1000, 2048, pattern, seed=3).cuda()
    p = pack(w, fmt, pattern)
    x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
    r = linear_reference(x, p).float()
    for cfg in (None, {"BLOCK_N": 32, "W": 16, "SPLIT_K": 4, "num_warps": 4, "num_stages": 3}):
        y = gemv(x, p, cfg, poison=True).float()
        assert torch.isfinite(y).all() and float((y - r).norm() / r.norm()) < 1e-2, cfg
    assert torch.equal(linear(x, p), gemv(x, p))
    # the config switches (PTX prmt / mul.bf16x2 for PRMT_GATHER: checked only here) give the same bits
    base = {"BLOCK_N": 8, "W": 64, "SPLIT_K": 1, "num_warps": 4, "num_stages": 1, "PREFETCH": True}
    ref = gemv(x, p, {**base, "FOLD_SIGN": False}, poison=True)
    for fold, bc, pg in [(True, False, False), (True, True, False), (False, True, False), (True, False, True),
                         (True, True, True)]:
        if pg and not pattern:
            continue
        y = gemv(x, p, {**base, "FOLD_SIGN": fold, "X_BCAST": bc, "PRMT_GATHER": pg}, poison=True)
        assert torch.equal(y, ref), (fold, bc, pg, float((y.float() - ref.float()).abs().max()))
    if fmt and fmt.startswith("int4") and not pattern:
        for bc in (False, True):
            y = gemv(x, p, {**base, "X_BCAST": bc, "INT4_FMA": True}, poison=True).float()
            ulps = (y - ref.float()).abs() / (ref.float().abs() * 2.0**-7).clamp_min(1e-30)
            assert float(ulps.max()) <= 1.0, (bc, float(ulps.max()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not TRITON, reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("fmt,pattern", CASES + [(None, None)])
@pytest.mark.parametrize("m", [2, 33])
def test_word_kernel_tensor_core_path_on_the_gpu(fmt, pattern, m):
    from nmx.kernels.triton_gemv import word_linear

    p = pack(weight(700, 1024, pattern, seed=m).cuda(), fmt, pattern)
    x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
    r = linear_reference(x, p).float()
    for cfg in (None, {"BLOCK_M": 16, "BLOCK_N": 32, "W": 16, "SPLIT_K": 2, "num_warps": 4, "num_stages": 3}):
        y = word_linear(x, p, cfg, poison=True).float()
        assert torch.isfinite(y).all() and float((y - r).norm() / r.norm()) < 1e-2, cfg


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not TRITON, reason="needs a CUDA GPU and triton")
def test_large_m_dispatch_on_the_gpu():
    """M > 64: 2:4 bf16 goes to the measured sparse/dense choice, other formats to cuBLAS on the
    decoded weight; both equal the reference within bf16 rounding, eager and inside a CUDA graph."""
    from nmx.kernels import sparse_gemm

    for fmt, pattern in ((None, "2:4"), ("nvfp4", None)):
        p = pack(weight(1024, 2048, pattern, seed=5).cuda(), fmt, pattern)
        x = torch.randn(300, 2048, device="cuda", dtype=torch.bfloat16)
        r = linear_reference(x, p).float()
        y = linear(x, p).float()
        assert float((y - r).norm() / r.norm()) < 1e-2
        if pattern and sparse_gemm.available():
            assert (1024, 2048, 512, "eager") in sparse_gemm.DECISIONS.choice
            sparse_gemm.tune_graph(p, lambda p=p: decode_weight(p), [300])
            xs = x.clone()
            g = torch.cuda.CUDAGraph()
            linear(xs, p)  # warm-up outside the capture
            with torch.cuda.graph(g):
                yg = linear(xs, p)
            g.replay()
            torch.cuda.synchronize()
            assert float((yg.float() - r).norm() / r.norm()) < 1e-2
    with pytest.raises(InputError, match="2:4"):
        linear(torch.randn(100, 2048, device="cuda"), pack(weight(64, 2048).cuda(), None), backend="sparse24")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not TRITON, reason="needs a CUDA GPU and triton")
def test_small_m_switch_sends_2_to_64_tokens_to_the_tensor_core_kernel(monkeypatch):
    from nmx.kernels import dispatch
    from nmx.kernels.triton_tc import tc_linear

    monkeypatch.setattr(dispatch, "SMALL_M", "tc")
    monkeypatch.setattr(dispatch, "_table_here", lambda x: None)  # the rule without a measured table
    monkeypatch.setattr(dispatch, "_PLANS", {})
    p = pack(weight(512, 1024, "2:4", seed=9).cuda(), "nvfp4", "2:4")
    x = torch.randn(16, 1024, device="cuda", dtype=torch.bfloat16)
    assert dispatch.choose(x, p) == "tc" and dispatch.choose(x[:1], p) == "gemv"
    assert torch.equal(linear(x, p), tc_linear(x, p))
    bf16 = pack(weight(512, 1024, "2:4", seed=9).cuda(), None, "2:4")
    assert dispatch.choose(x, bf16) == "dense"  # bf16 values: the tensor-core kernel does not read them
