"""Every Triton kernel of nmx.kernels compiles for an H100/H200 (sm_90), checked on a CPU.

The CPU interpreter runs a kernel's Python, not the compiler: a kernel can pass every interpreter
test and still not compile (a constexpr re-assigned in a loop did exactly that). Here the real
wrappers are called on CPU tensors with the launch intercepted: each launch's arguments become a
signature (pointer dtypes, integer and float scalars, 16-divisibility as Triton specializes it) and
the kernel is compiled for sm_90 with the ptxas that ships inside the triton wheel. Nothing runs.
"""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET") == "1",
                                reason="needs triton, compiling (not TRITON_INTERPRET=1)")

PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.int32: "*i32",
       torch.int16: "*i16", torch.uint8: "*u8", torch.int8: "*i8", torch.int64: "*i64"}
OPTIONS = ("num_warps", "num_stages", "maxnreg", "enable_fp_fusion", "enable_reflect_ftz")


@pytest.fixture
def compiled(monkeypatch):
    """Intercept launches; compile each for sm_90; yields the list of compiled kernel names."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    done: list[str] = []

    def run(self, *args, grid, warmup, **kwargs):
        names = self.arg_names
        bound = dict(zip(names, args, strict=False)) | {k: v for k, v in kwargs.items() if k in names}
        options = {k: v for k, v in kwargs.items() if k in OPTIONS}
        sig, const, attrs = {}, {}, {}
        for i, (name, param) in enumerate(zip(names, self.params, strict=True)):
            value = bound[name]
            if param.is_constexpr:
                sig[name], const[name] = "constexpr", value
            elif isinstance(value, torch.Tensor):
                sig[name] = PTR[value.dtype]
                if value.data_ptr() % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
            elif isinstance(value, bool):
                sig[name] = "i1"
            elif isinstance(value, int):
                sig[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
                if value % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
            else:
                sig[name] = "fp32"
        src = ASTSource(fn=self, signature=sig, constexprs=const, attrs=attrs)
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
        assert kernel.asm["cubin"], self.__name__
        done.append(self.__name__)

    monkeypatch.setattr(JITFunction, "run", run)
    return done


def weight(n, k, pattern, seed=0):
    from nmx.sparsity.masks import nm_mask

    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) / math.sqrt(k)
    return w * nm_mask(w.abs(), 2, 4) if pattern else w


FORMATS = [(None, None), (None, "2:4"), ("int4_g128", None), ("mxfp4", None), ("nvfp4", None), ("fp8_e4m3", None),
           ("mxfp8_e4m3", None), ("nvfp4", "2:4"), ("int4_g128", "2:4"), ("fp8_e4m3", "2:4")]


@pytest.mark.parametrize("fmt,pattern", FORMATS)
def test_weight_kernels_compile(compiled, fmt, pattern):
    from nmx.kernels import pack
    from nmx.kernels.triton_gemv import gemv, word_linear
    from nmx.kernels.triton_tc import supports, tc_linear

    p = pack(weight(256, 1024, pattern), fmt, pattern)
    gemv(torch.randn(1, 1024).to(torch.bfloat16), p)
    gemv(torch.randn(1, 1024).to(torch.bfloat16), p, {"BLOCK_N": 32, "W": 16, "SPLIT_K": 4, "num_warps": 4,
                                                        "num_stages": 3})
    gemv(torch.randn(1, 1024).to(torch.bfloat16), p, {"BLOCK_N": 8, "W": 32, "SPLIT_K": 1, "num_warps": 4,
                                                        "num_stages": 1, "PREFETCH": True})
    # the switches, the 2:4 byte-permute gather's inline PTX (prmt, mul.rn.bf16x2) included
    gemv(torch.randn(1, 1024).to(torch.bfloat16), p, {"BLOCK_N": 8, "W": 32, "SPLIT_K": 1, "num_warps": 4,
                                                        "num_stages": 1, "PREFETCH": True, "FOLD_SIGN": False,
                                                        "X_BCAST": True, "PRMT_GATHER": pattern is not None})
    word_linear(torch.randn(20, 1024).to(torch.bfloat16), p)
    expected = 5
    if fmt == "int4_g128" and not pattern:
        gemv(torch.randn(1, 1024).to(torch.bfloat16), p, {"BLOCK_N": 8, "W": 32, "SPLIT_K": 1, "num_warps": 4,
                                                            "num_stages": 1, "PREFETCH": True, "INT4_FMA": True})
        expected += 1
    if supports(p):
        for m in (1, 33):
            tc_linear(torch.randn(m, 1024).to(torch.bfloat16), p)
        expected += 2
    assert len(compiled) == expected


@pytest.mark.parametrize("kf,vf", [("int4", "int4"), ("int2", "int2"), ("fp8_e4m3", "fp8_e4m3"), ("mxfp4", "mxfp4"),
                                   ("bf16", "bf16")])
def test_kv_kernels_compile(compiled, kf, vf):
    from nmx.kernels.kv_layout import pack_kv
    from nmx.kernels.triton_kv_attention import kv_decode_attention

    k, v = torch.randn(2, 2, 300, 128), torch.randn(2, 2, 300, 128)
    p = pack_kv(k, v, kf, vf, group=32, residual=64)
    kv_decode_attention(torch.randn(2, 8, 128).to(torch.bfloat16), p, 0.1)
    expected = 2
    if kf.startswith("int"):  # pack_kv's triton backend, called below its device check
        from nmx.kernels.triton_kv_pack import pack_int_codes

        for keys in (True, False):
            pack_int_codes(k.to(torch.bfloat16), 224, 32, int(kf[3:]), keys)
        expected += 2
    assert len(compiled) == expected


@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp8_e4m3", "mxint8", "nvfp4", "int4_g128", "int4_g128_asym"])
def test_fake_quant_kernels_compile(compiled, fmt):
    from nmx.kernels.fakequant import kernel_spec
    from nmx.kernels.triton_fakequant import fake_quant_triton

    fake_quant_triton(torch.randn(64, 256).to(torch.bfloat16), kernel_spec(fmt), torch.bfloat16)
    assert len(compiled) >= 1


@pytest.mark.parametrize("kf", ["int4", "int2", "mxfp4", "fp8_e4m3"])
@pytest.mark.parametrize("tokens,residual", [(1, 16), (17, 16), (32, 0)])
def test_kv_kernel_compiles_with_an_empty_part(compiled, kf, tokens, residual):
    """Nothing quantized yet (tokens < residual + group) or nothing in the bf16 window (residual 0): the empty
    buffer's stand-in must keep the buffer's dtype, or the kernel does not compile for sm_90 (found on an H100:
    an fp32 stand-in for fp16 key scales made q' fp32 against fp16 tensor-core operands)."""
    from nmx.kernels.kv_layout import pack_kv
    from nmx.kernels.triton_kv_attention import kv_decode_attention

    k, v = torch.randn(2, 2, tokens, 64), torch.randn(2, 2, tokens, 64)
    p = pack_kv(k, v, kf, kf, group=16 if kf.startswith("int") else 32, residual=residual)
    assert p.quantized == 0 or p.rest == 0
    kv_decode_attention(torch.randn(2, 4, 64).to(torch.bfloat16), p, 0.125, {"num_splits": 1})
    assert len(compiled) == 2
