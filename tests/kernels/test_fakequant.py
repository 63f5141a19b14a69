"""nmx.kernels.fakequant: the fused fake-quant kernel against its oracle, `nmx.formats` quantize on the
CPU, bit for bit (equal bit patterns; NaN where and only where the oracle has NaN), on adversarial
inputs: zeros and all-zero blocks, exact ties at rounding midpoints (elements and NVFP4 block scales)
and values a hair off them, values at and over the saturation bound, float32 / fp16 subnormals,
values near the dtype's max, a wide dynamic range across blocks, scale-rule edges (amax at and
around powers of two), NaN and Inf. The Triton kernel runs in Triton's CPU interpreter (a
subprocess: the flag must be set before triton is imported) and, where there is one, on a GPU."""

import importlib.util
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nmx import formats
from nmx.errors import InputError
from nmx.kernels.fakequant import fake_quant, kernel_spec, supported_formats
from tests.conftest import assert_bitwise_equal

ROOT = Path(__file__).resolve().parents[2]
TRITON = importlib.util.find_spec("triton") is not None
CUDA = torch.cuda.is_available()
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LISTED = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8", "nvfp4", "int8_g128",
          "int4_g128", "int4_g32", "int4_g128_asym", "int3_g128", "int2_g64"]
VARIANTS = ["mxfp4_ceil", "mxfp4_even", "mxfp4_rceil", "mxint8_even", "mxint8_rceil", "mxfp8_e4m3_rceil",
            "mxfp8_e5m2_even", "mxfp6_e3m2_g16_ceil", "mxfp5_e2m2", "nvfp4_g32", "int8_g32_asym", "int5_g64"]
FAMILIES = {
    "mx": [f for f in LISTED + VARIANTS if f.startswith("mx")],
    "nvfp4": ["nvfp4", "nvfp4_g32"],
    "int": [f for f in LISTED + VARIANTS if f.startswith("int")],
}


# ---- adversarial inputs ----------------------------------------------------------------------------------


def _exp_range(dtype: torch.dtype) -> tuple[int, int]:
    """Exponents of the smallest subnormal and the largest binade of the input dtype."""
    return (-24, 15) if dtype == torch.float16 else (-133, 126)


def _positive_grid(fmt: str) -> np.ndarray:
    """The element values (>= 0) a block is rounded onto, in units of the block's scale."""
    spec = kernel_spec(fmt)
    if spec.family == "mx_float":
        t = formats.get(fmt).element.table
        return np.unique(t[np.isfinite(t) & (t >= 0)])
    if spec.family == "mx_int":
        return np.arange(spec.qmax + 1) * 2.0**-spec.frac_bits
    if spec.family == "nvfp4":
        return np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    return np.arange(spec.qmax + 1, dtype=np.float64)


def _mids(g: np.ndarray) -> np.ndarray:
    return (g[1:] + g[:-1]) / 2


def _signed(rng, v):
    v = np.asarray(v, dtype=np.float64)
    return v * rng.choice([-1.0, 1.0], size=v.shape)


def _fill(rng, first, pool, b):
    """A block: the values `first` (they fix its scale), then b - len(first) draws from pool."""
    first = np.asarray(first, dtype=np.float64)
    rest = rng.choice(np.asarray(pool, dtype=np.float64), size=b - len(first))
    out = np.concatenate([first, rest])
    perm = rng.permutation(b)
    return out[perm]


def _common_blocks(rng, b, dtype) -> list[np.ndarray]:
    """Blocks every format must get right: zeros, random magnitudes, subnormals, huge values, NaN/Inf."""
    lo, hi = _exp_range(dtype)
    blocks = [np.zeros(b), -np.zeros(b), _signed(rng, np.zeros(b))]
    one = np.zeros(b)
    one[rng.integers(b)] = -3.0
    blocks.append(one)
    for e in np.linspace(lo + 8, hi - 2, 12).round():  # a wide dynamic range across blocks
        blocks.append(rng.standard_normal(b) * 2.0**e)
    blocks.append(_signed(rng, rng.integers(1, 1 << 10, b) * 2.0**lo))  # subnormals of the dtype
    blocks.append(np.concatenate([[2.0**hi], _signed(rng, rng.integers(1, 8, b - 1) * 2.0**lo)]))
    top = torch.finfo(dtype).max
    blocks.append(_signed(rng, np.concatenate([[top], top * (1 - rng.random(b - 1) / 64)])))  # the dtype's max
    blocks.append(np.concatenate([[2.0 ** (hi - 1)], rng.standard_normal(b - 1) * 2.0 ** (lo + 30)]))
    for special in (np.nan, np.inf, -np.inf):
        blk = rng.standard_normal(b)
        blk[rng.integers(b)] = special
        blocks.append(blk)
    blocks.append(np.full(b, np.nan))
    for e in (0, lo + 40, hi - 30):  # amax at / just around a power of two: scale-rule edges
        for f in (1.0, 1 + 2.0**-23, 1 - 2.0**-24, 1 + 2.0**-7, 2 - 2.0**-4, 2 - 2.0**-5, 1.5, 1.75):
            blocks.append(np.concatenate([[f * 2.0**e], rng.standard_normal(b - 1) * 2.0 ** (e - 2)]))
    return blocks


def _family_blocks(rng, fmt, dtype) -> list[np.ndarray]:
    """Blocks built around the format's grid: exact ties, near ties, saturation."""
    spec, b = kernel_spec(fmt), kernel_spec(fmt).block
    lo, hi = _exp_range(dtype)
    g = _positive_grid(fmt)
    mids, top = _mids(g), g[-1]
    blocks = []
    if spec.family.startswith("mx"):
        for x in sorted({lo + 4, lo + 20, -3, 0, 5, hi - spec.emax - 3} | set(rng.integers(lo + 4, hi - 12, 4))):
            s = 2.0 ** float(x)
            pool = np.concatenate([mids, mids, g])
            blocks.append(_signed(rng, _fill(rng, [top], pool, b)) * s)  # ties, amax = max element
            near = mids * (1 + rng.choice([-1, 1], size=mids.shape) * 2.0**-20)
            blocks.append(_signed(rng, _fill(rng, [top], near, b)) * s)
            # saturation: amax above the largest element, below the next binade (the floor rule keeps X)
            over = np.linspace(top, 2.0 ** (spec.emax + 1), 9)[1:-1]
            blocks.append(_signed(rng, _fill(rng, [2.0 ** (spec.emax + 1) * (1 - 2.0**-10)], np.concatenate(
                [over, [top], mids[-3:]]), b)) * s)
    elif spec.family == "int_sym":
        for j in (-12, -3, 0, 4, 9):
            s0 = 2.0**j
            pool = np.concatenate([mids, mids, g[:-1]])
            blocks.append(_signed(rng, _fill(rng, [spec.qmax], pool, b)) * s0)
        blocks.append(_signed(rng, _fill(rng, [spec.qmax * 65504.0 * 4], rng.random(8) * 1e6, b)))  # fp16 saturates
        for amax in (2.0**-25 * spec.qmax, 2.0**-26 * spec.qmax, 3 * 2.0**-26 * spec.qmax, 2.0**-20 * spec.qmax):
            blocks.append(_fill(rng, [amax], [0.0, amax / 3, -amax / 2], b))  # zero and subnormal fp16 scales
    else:  # int_asym: scale = s0 exactly, zero point z0; codes at k + 1/2
        for j, z0 in ((-10, 0), (-3, 3), (0, spec.qmax // 2), (4, spec.qmax), (7, 1)):
            s0 = 2.0**j
            pool = (np.concatenate([mids, mids, g]) - z0) * s0
            blocks.append(_fill(rng, [-z0 * s0, (spec.qmax - z0) * s0], pool, b))
        blocks.append(np.abs(rng.standard_normal(b)) + 1.0)  # no negatives: lo = 0
        blocks.append(-np.abs(rng.standard_normal(b)) - 1.0)  # no positives: hi = 0
        blocks.append(_fill(rng, [3e38, -3e38], rng.standard_normal(8) * 1e37, b))  # hi - lo overflows
    return blocks


def _nvfp4_tie_blocks(rng, amax: float, b: int) -> list[np.ndarray]:
    """NVFP4 blocks of a tensor whose amax is `amax` (tensor scale s = fl32(amax / 2688)): block scales on
    the UE4M3 grid with elements at E2M1 midpoints times scale * s, and block maxima whose quotient
    amax_b / (6 s) is a UE4M3 midpoint -- exact ties where s is a power of two, else values within an
    ulp of a tie (the float32 quotient x / fl32(scale * s) can land on the wrong side: nmx re-rounds
    those from the exact quotient) -- and the same a hair off."""
    s = float(np.float32(amax) / np.float32(2688.0))
    ue = formats.get("ue4m3").element.table[:127]
    ue = np.unique(ue[np.isfinite(ue) & (ue > 0)])
    e2 = _positive_grid("nvfp4")
    em = _mids(e2)
    blocks = [np.concatenate([[amax], rng.standard_normal(b - 1) * s])]
    for sb in rng.choice(ue[ue * 6 * s <= amax], 12):
        blocks.append(_signed(rng, _fill(rng, [6.0 * sb * s], np.concatenate([em, em, e2]) * sb * s, b)))
        near = em * (1 + rng.choice([-1, 1], size=em.shape) * 2.0**-21)
        blocks.append(_signed(rng, _fill(rng, [6.0 * sb * s], np.concatenate([near, em]) * sb * s, b)))
    for m in rng.choice(_mids(ue), 12):
        for f in (1.0, 1 + 2.0**-20, 1 - 2.0**-20):
            blocks.append(_signed(rng, _fill(rng, [6.0 * m * s * f], rng.standard_normal(8) * m * s, b)))
    return blocks


def _tensor(blocks: list[np.ndarray], b: int, dtype: torch.dtype, per_row: int = 4) -> torch.Tensor:
    """Blocks laid out as rows of per_row blocks (zero blocks pad the last row), cast to dtype."""
    pad = (-len(blocks)) % per_row
    blocks = blocks + [np.zeros(b)] * pad
    x = torch.from_numpy(np.stack(blocks)).reshape(-1, per_row * b)
    return x.to(dtype)


def adversarial(fmt: str, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """CPU tensors of `dtype` that probe every rounding decision of `fmt` (see the module doc)."""
    rng = np.random.default_rng(seed)
    b = kernel_spec(fmt).block
    blocks = _common_blocks(rng, b, dtype) + _family_blocks(rng, fmt, dtype)
    out = [_tensor(blocks, b, dtype)]
    if kernel_spec(fmt).family == "nvfp4":  # the tensor scale couples all blocks: separate tensors
        lo, hi = _exp_range(dtype)
        for j in ((-8, 3) if dtype == torch.float16 else (-120, 0, 100)):
            out.append(_tensor(_nvfp4_tie_blocks(rng, 2688.0 * 2.0**j, b), b, dtype))  # s = 2^j: exact ties
            out.append(_tensor(_nvfp4_tie_blocks(rng, 2688.0 * 2.0**j * (1 + rng.random()), b), b, dtype))
        out.append(_tensor([_signed(rng, rng.integers(0, 1 << 10, b) * 2.0**lo) for _ in range(9)], b, dtype))
        out.append(_tensor([np.zeros(b), -np.zeros(b)], b, dtype))
        out.append(_tensor([np.zeros(b), np.full(b, np.inf), np.full(b, np.nan)], b, dtype))
    return out


def check_kernel(device: str, fmts, dtypes=DTYPES, out_dtypes=(torch.float32,), config=None) -> int:
    """The Triton kernel on `device` against nmx.formats on the CPU, bit for bit, poisoned output.
    Returns the number of (format, dtype, tensor) cases checked."""
    from nmx.kernels.triton_fakequant import fake_quant_triton

    n = 0
    for fmt in fmts:
        spec, ref_fmt = kernel_spec(fmt), formats.get(fmt)
        for dtype in dtypes:
            for x in adversarial(fmt, dtype, seed=n):
                ref = ref_fmt.quantize(x)
                for out_dtype in out_dtypes:
                    y = fake_quant_triton(x.to(device), spec, out_dtype, config=config, poison=True)
                    assert y.dtype == out_dtype and y.shape == x.shape
                    try:
                        assert_bitwise_equal(y.cpu(), ref.to(out_dtype))
                    except BaseException as err:  # name the case: pytest.fail's message has no context
                        raise AssertionError(f"{fmt} {dtype} -> {out_dtype}: {err}") from None
                n += 1
    return n


# ---- the API and the reference path (CI: no triton, no GPU) --------------------------------------------


def test_the_listed_formats_it_supports():
    assert supported_formats() == LISTED


@pytest.mark.parametrize("fmt", LISTED + VARIANTS)
def test_reference_path_is_nmx_formats(fmt):
    """Oracle: nmx.formats quantize (the reference path is that call; this pins the dispatch)."""
    x = adversarial(fmt, torch.bfloat16)[0]
    assert_bitwise_equal(fake_quant(x, fmt, backend="reference"), formats.get(fmt).quantize(x))
    y16 = fake_quant(x, fmt, backend="reference", out_dtype=torch.bfloat16)
    assert y16.dtype == torch.bfloat16
    assert_bitwise_equal(y16, formats.get(fmt).quantize(x).to(torch.bfloat16))


def test_the_adversarial_inputs_hit_the_cases_they_claim():
    """Sanity of the oracle's inputs: exact ties at E2M1 midpoints and at UE4M3 scale midpoints exist,
    and blocks with NaN, zeros, saturated elements and subnormals are there."""
    x = adversarial("nvfp4", torch.float32)[3].double()  # s = 2^0
    assert float(x.abs().max()) == 2688.0
    q = x / 6  # block amax / (6 s) for the scale-tie blocks; element midpoints for the others
    assert bool(((q * 2) % 1 == 0).any())
    mx = adversarial("mxfp4", torch.float32)[0]
    has_nan = bool(torch.isnan(mx).any())
    zero_block = bool((mx.reshape(-1, 32) == 0).all(dim=-1).any())
    subnormal = bool(((mx.abs() > 0) & (mx.abs() < 2.0**-126)).any())
    assert has_nan and zero_block and subnormal
    y = formats.get("mxfp4").quantize(mx)
    scale = mx.abs().reshape(-1, 32).amax(-1)
    assert bool((y.reshape(-1, 32).abs().amax(-1) < scale).any())  # some blocks saturate


def test_auto_dispatch_on_cpu_uses_the_reference_and_warns_once(caplog):
    from nmx.kernels import fakequant

    fakequant._warn_once.cache_clear()
    x = torch.randn(4, 64)
    with caplog.at_level(logging.WARNING, logger="nmx.kernels.fakequant"):
        y = fake_quant(x, "mxfp4")
        fake_quant(x, "nvfp4")
    assert torch.equal(y, formats.get("mxfp4").quantize(x))
    assert sum("reference path" in r.message for r in caplog.records) == 1


def test_non_contiguous_and_leading_shapes():
    x = torch.randn(64, 2, 3).permute(1, 2, 0)  # [2, 3, 64], non-contiguous
    y = fake_quant(x, "nvfp4", backend="reference")
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.equal(y, formats.get("nvfp4").quantize(x.contiguous()))
    assert fake_quant(torch.zeros(0, 32), "mxfp4", backend="reference").shape == (0, 32)


def test_bad_input():
    with pytest.raises(InputError, match="supported"):
        fake_quant(torch.randn(4, 64), "bfp_m4_g16")
    with pytest.raises(InputError, match="supported"):
        fake_quant(torch.randn(4, 64), "fp8_e4m3")
    with pytest.raises(InputError, match="whole vector"):
        fake_quant(torch.randn(4, 64), "int8")
    with pytest.raises(InputError, match="stochastic"):
        fake_quant(torch.randn(4, 64), "mxfp4_sr")
    with pytest.raises(InputError, match="zero rounding"):
        fake_quant(torch.randn(4, 64), "int4_g32_rz")
    with pytest.raises(InputError, match="power of two"):
        fake_quant(torch.randn(4, 48), "mxfp4_g24")
    with pytest.raises(InputError, match="16-bit codes"):
        fake_quant(torch.randn(4, 64), "int16_g32")
    with pytest.raises(InputError, match="unknown format"):
        fake_quant(torch.randn(4, 64), "mxfp44")
    with pytest.raises(InputError, match="must be a string"):
        fake_quant(torch.randn(4, 64), ["mxfp4"])
    with pytest.raises(InputError, match="multiple of the block"):
        fake_quant(torch.randn(4, 48), "mxfp4")
    with pytest.raises(InputError, match="bf16, fp16 or fp32"):
        fake_quant(torch.randn(4, 64, dtype=torch.float64), "mxfp4")
    with pytest.raises(InputError, match="bf16, fp16 or fp32"):
        fake_quant(torch.ones(4, 64, dtype=torch.int32), "mxfp4")
    with pytest.raises(InputError, match="torch.Tensor"):
        fake_quant([[1.0] * 32], "mxfp4")
    with pytest.raises(InputError, match="at least one dimension"):
        fake_quant(torch.tensor(1.0), "mxfp4")
    with pytest.raises(InputError, match="out_dtype"):
        fake_quant(torch.randn(4, 64), "mxfp4", out_dtype=torch.int8)
    with pytest.raises(InputError, match="backend"):
        fake_quant(torch.randn(4, 64), "mxfp4", backend="magic")
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(InputError, match="CUDA tensor|triton installed"):
            fake_quant(torch.randn(4, 64), "mxfp4", backend="triton")


# ---- the Triton kernel: interpreter (CPU) and GPU ------------------------------------------------------


@pytest.mark.skipif(not TRITON, reason="triton is not installed (the reference path is tested above)")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_triton_kernel_in_the_cpu_interpreter_is_bit_identical(family):
    """The real kernel source in Triton's interpreter (a subprocess: the flag must be set before triton
    is imported), every format of the family x bf16/fp16/fp32 inputs, adversarial tensors; one
    format also with bf16 / fp16 outputs, one with a small tile (several programs, masked tail)."""
    fmts = FAMILIES[family]
    code = f"""
import sys, warnings
warnings.simplefilter("ignore")  # numpy's divide-by-zero notes: zero block scales, handled as nmx does
sys.path.insert(0, {str(ROOT)!r})
import torch
from tests.kernels.test_fakequant import check_kernel
big = {{"TILE": 8192, "num_warps": 4}}
n = check_kernel("cpu", {fmts!r}, config=big)
n += check_kernel("cpu", {fmts[:1]!r}, out_dtypes=(torch.bfloat16, torch.float16), config=big)
n += check_kernel("cpu", {fmts[-1:]!r}, dtypes=(torch.bfloat16,), config={{"TILE": 256, "num_warps": 4}})
from nmx import formats
from nmx.kernels.fakequant import fake_quant
x = torch.randn(32, 3, 256).transpose(0, 1)  # the public call: 3-D, non-contiguous
assert torch.equal(fake_quant(x, {fmts[0]!r}, backend="triton"), formats.get({fmts[0]!r}).quantize(x))
print("ok", n)
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert r.returncode == 0 and "ok" in r.stdout, (r.stdout + r.stderr)[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA or not TRITON, reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_triton_kernel_on_the_gpu_adversarial(family):
    """The interpreter's check on the GPU (IEEE division, subnormals, no FMA contraction are the GPU's
    business): every format x input dtype, float32 output; bf16 / fp16 outputs for one format."""
    big = {"TILE": 4096, "num_warps": 8}
    assert check_kernel("cuda", FAMILIES[family], config=big) > 0
    assert check_kernel("cuda", FAMILIES[family][:1], out_dtypes=(torch.bfloat16, torch.float16), config=big) > 0


def _random_weights_and_activations(shape, dtype, seed):
    """Real-looking values: normal rows with per-row magnitudes over many decades, a few outliers
    (fewer decades for fp16, whose range is small)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi, outlier = (-4, 2, 30.0) if dtype == torch.float16 else (-5, 5, 1000.0)
    x = torch.randn(shape, generator=g) * torch.logspace(lo, hi, shape[0])[:, None]
    x.view(-1)[torch.randint(0, x.numel(), (64,), generator=g)] *= outlier
    return x.to(dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA or not TRITON, reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("fmt", LISTED + ["mxfp4_rceil", "mxint8_even", "nvfp4_g32"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_kernel_on_the_gpu_random(fmt, dtype):
    """Fresh random inputs of real size, output poisoned: kernel on the GPU == nmx.formats on the CPU."""
    from nmx.kernels.triton_fakequant import fake_quant_triton

    x = _random_weights_and_activations((384, 4096), dtype, seed=(LISTED + VARIANTS).index(fmt))
    ref = formats.get(fmt).quantize(x)
    y = fake_quant_triton(x.cuda(), kernel_spec(fmt), poison=True)
    assert_bitwise_equal(y.cpu(), ref)
    if dtype == torch.bfloat16:  # the public call, on a 3-D non-contiguous view, bf16 output
        xt = x.cuda().reshape(6, 64, 4096).transpose(0, 1)
        yt = fake_quant(xt, fmt, out_dtype=torch.bfloat16)
        assert_bitwise_equal(yt.cpu(), formats.get(fmt).quantize(xt.cpu()).to(torch.bfloat16))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA or not TRITON, reason="needs a CUDA GPU and triton")
def test_nvfp4_tensor_amax_pass_on_a_large_tensor():
    """The amax pre-pass over many programs and loop iterations (atomic max): one outlier decides s."""
    from nmx.kernels.triton_fakequant import finite_absmax_bits

    x = torch.randn(4096, 4096, device="cuda")
    x[4000, 123] = -77.0
    x[17, 5] = float("inf")
    x[100, 7] = float("nan")
    assert finite_absmax_bits(x).view(torch.float32).item() == 77.0
    xb = x.to(torch.bfloat16)
    assert finite_absmax_bits(xb).view(torch.float32).item() == 77.0
    sub = x[:1000]
    assert_bitwise_equal(fake_quant(sub, "nvfp4").cpu(), formats.get("nvfp4").quantize(sub.cpu()))


def test_kernel_constants_follow_the_formats():
    """A spot check of the numbers the kernel is compiled with (the oracle: the OCP MX tables)."""
    s = kernel_spec("mxfp4")
    assert (s.family, s.block, s.mbits, s.emax, s.emin, s.elem_max) == ("mx_float", 32, 1, 2, 0, 6.0)
    s = kernel_spec("mxfp8_e4m3_rceil")
    assert (s.scale_rule, s.emax, s.elem_max, s.rceil_mul) == (3, 8, 448.0, float(np.float32(1 / 448)))
    s = kernel_spec("mxint8")
    assert (s.family, s.frac_bits, s.qmax, s.mbits, s.emax) == ("mx_int", 6, 127, 6, 0)
    assert (kernel_spec("int4_g128_asym").family, kernel_spec("int4_g128_asym").qmax) == ("int_asym", 15)
    assert (kernel_spec("int3_g128").qmax, kernel_spec("nvfp4").block) == (3, 16)
    assert math.isclose(kernel_spec("mxfp6_e3m2").elem_max, 28.0)
