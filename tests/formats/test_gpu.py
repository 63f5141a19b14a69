"""Formats on a CUDA GPU give the CPU's bits (skipped where torch sees no GPU, as in CI)."""

import pytest
import torch

import nmx.formats as F
from tests.conftest import assert_bitwise_equal

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

NAMES = F.names() + ["mxfp4_rceil", "mxfp4_sr", "int4_g128_sr", "nvfp4_rz", "int4_g64_asym", "bfp_m5_g32"]


@pytest.mark.parametrize("name", NAMES)
def test_cuda_quantize_and_codec_match_the_cpu(name):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 384, generator=g) * torch.exp2(torch.randint(-6, 6, (256, 1), generator=g).float())
    x[3, 5] = float("nan")
    if F.get(name).family == "scale":
        x = x.abs()
    fmt = F.get(name)
    cpu = fmt.quantize(x, seed=1)
    gpu = fmt.quantize(x.cuda(), seed=1)
    assert gpu.is_cuda
    assert_bitwise_equal(gpu.cpu(), cpu)
    if not (name.startswith(("fp4", "fp6")) and torch.isnan(x).any()):
        enc = fmt.encode(x.cuda(), seed=1)
        assert_bitwise_equal(fmt.decode(enc).cpu(), cpu)
