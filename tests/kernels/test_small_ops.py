"""nmx.kernels.small_ops: RMSNorm, SiLU x up and the rotary embedding fused into one kernel each.

The Triton kernels run under Triton's CPU interpreter (a child process with TRITON_INTERPRET=1) against the
reference twins, which are transformers' own eager arithmetic, and compile for sm_90 offline; the module swap is
checked on the tiny random Llama: the fused model's logits equal the original's (on CPU the ops run the twins, so
exactly; under the interpreter, the kernels, within bf16 rounding)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from nmx.kernels.small_ops import FusedRMSNorm, fuse_small_ops, rms_norm_reference, rotary_reference, silu_mul_reference
from tests.kernels.test_compile_sm90 import compiled  # noqa: F401  (a fixture: launches compiled for sm_90)

TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def in_interpreter(code: str) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


def bf16_ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """The largest distance in bf16 units in the last place between two bf16 tensors of finite values."""
    ia = a.view(torch.int16).to(torch.int32)
    ib = b.view(torch.int16).to(torch.int32)
    # map sign-magnitude bit patterns onto a monotonic integer line
    ia = torch.where(ia < 0, -(ia & 0x7FFF), ia)
    ib = torch.where(ib < 0, -(ib & 0x7FFF), ib)
    return int((ia - ib).abs().max())


def check_kernels_against_twins(device: str = "cpu") -> None:
    from nmx.kernels.triton_small_ops import rms_norm, rotary, silu_mul

    g = torch.Generator().manual_seed(0)
    bf = torch.bfloat16
    dev = torch.device(device)
    # RMSNorm: rows of 3 widths (one not a power of two), a padded row stride, a row of zeros and a huge row
    for h in (64, 576, 1000):
        x = (torch.randn(5, h, generator=g) * 3).to(bf)
        x[1] = 0
        x[2] *= 1e30
        x, w = x.to(dev), torch.randn(h, generator=g).to(bf).to(dev)
        got, want = rms_norm(x, w, 1e-5).cpu(), rms_norm_reference(x, w, 1e-5).cpu()
        x, w = x.cpu(), w.cpu()
        assert got.dtype == bf and bf16_ulps(got, want) <= 1, h  # the mean's summation order, rsqrt: 1 ulp
        exact = (x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5)).to(bf).double() * w.double()
        assert (got.double() - exact).abs().max() <= (want.double() - exact).abs().max() * 1.01 + 1e-30
    # SiLU x up: bit for bit with torch's bf16 ops but for exp's last bit
    gate, up = (torch.randn(3, 1000, generator=g) * 4).to(bf).to(dev), torch.randn(3, 1000, generator=g).to(bf).to(dev)
    assert bf16_ulps(silu_mul(gate, up).cpu(), silu_mul_reference(gate, up).cpu()) <= 1
    # rotary: q and k as a Llama layer hands them over (transposed views), GQA (8 q heads, 2 k heads), 3 positions
    for s in (1, 3):
        q = torch.randn(2, s, 8, 64, generator=g).to(bf).to(dev).transpose(1, 2)
        k = torch.randn(2, s, 2, 64, generator=g).to(bf).to(dev).transpose(1, 2)
        ang = torch.randn(2, s, 64, generator=g)
        cos, sin = ang.cos().to(bf).to(dev), ang.sin().to(bf).to(dev)
        qo, ko = rotary(q, k, cos, sin)
        qr, kr = rotary_reference(q, k, cos, sin)
        assert qo.shape == q.shape and qo.stride() == q.stride() and ko.stride() == k.stride()
        assert torch.equal(qo, qr) and torch.equal(ko, kr)  # every rounding where the eager ops round


def check_tiny_llama_fused_in_interpreter() -> None:
    from nmx.model.tiny import tiny_llama

    model = tiny_llama().to(torch.bfloat16).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids).logits.float()
        report = fuse_small_ops(model)
        got = model(ids).logits.float()
    assert report["norms"] == 2 * model.config.num_hidden_layers + 1 and report["mlps"] == report["rotary"] > 0
    assert (got - want).norm() / want.norm() < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not (TRITON and torch.cuda.is_available()), reason="needs a CUDA GPU and triton")
def test_kernels_against_their_twins_on_the_gpu():
    check_kernels_against_twins("cuda")


@pytest.mark.skipif(not TRITON or INTERPRET, reason="runs the interpreter in a child process")
def test_kernels_against_their_twins_in_the_interpreter():
    in_interpreter("from tests.kernels.test_small_ops import check_kernels_against_twins as c\nc()\nprint('ok')\n")


@pytest.mark.skipif(not TRITON or INTERPRET, reason="runs the interpreter in a child process")
def test_a_fused_tiny_llama_in_the_interpreter():
    in_interpreter("from tests.kernels.test_small_ops import check_tiny_llama_fused_in_interpreter as c\nc()\n"
                   "print('ok')\n")


def test_fused_model_on_cpu_computes_what_the_original_computes():
    """On CPU the custom ops run the twins (transformers' arithmetic): logits equal bit for bit, the swap is
    reported, a second call changes nothing, and the rotary path is taken only inside the fused model's forward."""
    from transformers.models.llama import modeling_llama

    from nmx.model.tiny import tiny_llama

    model = tiny_llama().eval()
    other = tiny_llama().eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(ids).logits
        weight = model.model.norm.weight
        report = fuse_small_ops(model)
        got = model(ids).logits
        assert torch.equal(got, want)
        assert torch.equal(other(ids).logits, tiny_llama().eval()(ids).logits)  # an unfused model: untouched
    layers = model.config.num_hidden_layers
    assert report == {"norms": 2 * layers + 1, "mlps": layers, "rotary": layers, "left": {}}
    assert isinstance(model.model.norm, FusedRMSNorm) and model.model.norm.weight is weight
    assert fuse_small_ops(model) == {"norms": 0, "mlps": 0, "rotary": 0, "left": {}}
    calls = []
    real = torch.ops.nmx.rotary

    class Spy:
        def __call__(self, *a):
            calls.append(1)
            return real(*a)

    try:
        torch.ops.nmx.rotary = Spy()  # type: ignore[attr-defined]
        with torch.no_grad():
            model(ids)
            n_fused = len(calls)
            other(ids)
    finally:
        torch.ops.nmx.rotary = real  # type: ignore[attr-defined]
    assert n_fused == layers and len(calls) == layers  # the unfused model kept transformers' rotary
    assert getattr(modeling_llama.apply_rotary_pos_emb, "_nmx_original", None) is not None


def test_unknown_norms_and_activations_are_left_and_named():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, hidden_act="gelu")
    model = LlamaForCausalLM(cfg).eval()
    report = fuse_small_ops(model)
    assert report["mlps"] == 0 and report["norms"] == 3
    assert "only SiLU is fused" in report["left"]["model.layers.0.mlp"]


@pytest.mark.skipif(not TRITON or INTERPRET, reason="needs triton, compiling (not TRITON_INTERPRET=1)")
def test_small_op_kernels_compile_for_sm90(compiled):  # noqa: F811 (the imported fixture)
    from nmx.kernels.triton_small_ops import rms_norm, rotary, silu_mul

    bf = torch.bfloat16
    rms_norm(torch.randn(1, 4096).to(bf), torch.randn(4096).to(bf), 1e-5)
    silu_mul(torch.randn(1, 11008).to(bf), torch.randn(1, 11008).to(bf))
    q, k = torch.randn(1, 1, 32, 128).to(bf).transpose(1, 2), torch.randn(1, 1, 8, 128).to(bf).transpose(1, 2)
    rotary(q, k, torch.randn(1, 1, 128).to(bf), torch.randn(1, 1, 128).to(bf))
    assert compiled == ["_rms_norm_kernel", "_silu_mul_kernel", "_rotary_kernel"]


def test_unfuse_puts_the_originals_back():
    from nmx.kernels.small_ops import unfuse_small_ops
    from nmx.model.tiny import tiny_llama

    model = tiny_llama().eval()
    norm, layers = model.model.norm, model.config.num_hidden_layers
    fuse_small_ops(model)
    assert unfuse_small_ops(model) == (2 * layers + 1) + 2 * layers  # norms, MLPs, attentions
    assert model.model.norm is norm and "forward" not in model.model.layers[0].mlp.__dict__
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert fuse_small_ops(model)["norms"] == 2 * layers + 1  # fusable again
