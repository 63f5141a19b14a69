"""Bit-plane storage of BFP activations. Oracle: the element-wise BFP quantizer (`Format.quantize`),
bit for bit, and its `storage_bytes`; the plane order checked on a hand-made group."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmx import formats
from nmx.errors import FormatError, InputError
from nmx.formats.bitplane import bitplane_nbytes, decode_bitplanes, encode_bitplanes, to_encoded
from nmx.formats.packing import unpack_bits
from tests.conftest import assert_bitwise_equal


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 15), g=st.sampled_from([1, 3, 8, 16, 64]), rows=st.integers(1, 4), cols=st.integers(1, 70),
       scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e30]), zeros=st.floats(0, 1), seed=st.integers(0, 2**16),
       dim=st.sampled_from([0, -1]))
def test_round_trip_is_bit_exact_with_exact_bytes(m, g, rows, cols, scale, zeros, seed, dim):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=gen) * scale
    x[torch.rand(rows, cols, generator=gen) < zeros] = 0.0
    name = f"bfp_m{m}_g{g}"
    fmt = formats.get(name)
    bp = encode_bitplanes(x, name, dim)
    assert_bitwise_equal(decode_bitplanes(bp), fmt.quantize(x, dim))
    assert bp.nbytes == fmt.storage_bytes(x.shape, dim) == bitplane_nbytes(tuple(x.shape), name, dim)
    groups = (rows if dim == -1 else cols) * math.ceil((cols if dim == -1 else rows) / g)
    assert bp.plane_bytes == math.ceil(groups * g * (m + 1) / 8) and bp.exponents.numel() == groups
    # the same bits as the element-wise layout, reordered
    enc = to_encoded(bp)
    ref = fmt.encode(x, dim)
    assert torch.equal(enc.buffers["codes"], ref.buffers["codes"]) and torch.equal(enc.buffers["scales"],
                                                                                     ref.buffers["scales"])


@settings(max_examples=30, deadline=None)
@given(m=st.integers(2, 12), k=st.integers(0, 12), seed=st.integers(0, 2**16))
def test_reading_fewer_planes_truncates_the_mantissa(m, k, seed):
    """Reading k of m planes = the magnitude with its m - k low bits dropped (toward zero)."""
    k = min(k, m)
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(seed)) * 10
    name = f"bfp_m{m}_g16"
    bp = encode_bitplanes(x, name)
    y = formats.get(name).quantize(x).reshape(5, 2, 16)
    e = bp.exponents.reshape(5, 2, 1).to(torch.float64) - 127
    step = torch.pow(2.0, e - k + 1)  # grid spacing with k mantissa bits
    expect = (torch.trunc(y.double() / step) * step).float().reshape(5, 32) + 0.0  # a zero magnitude reads +0
    assert_bitwise_equal(decode_bitplanes(bp, planes=k), expect)


def test_plane_order_by_hand():
    """One group of 4 with m = 3: amax 7 -> E = 2, spacing 2^(2-3+1) = 1, integers = the values."""
    x = torch.tensor([[5.0, -3.0, 0.0, 7.0]])
    bp = encode_bitplanes(x, "bfp_m3_g4")
    bits = unpack_bits(bp.planes, 1, 16).tolist()
    assert bits[0:4] == [0, 1, 0, 0]  # signs
    assert bits[4:8] == [1, 0, 0, 1]  # bit 2 of 5, 3, 0, 7
    assert bits[8:12] == [0, 1, 0, 1]  # bit 1
    assert bits[12:16] == [1, 1, 0, 1]  # bit 0
    assert bp.exponents.tolist() == [127 + 2] and bp.nbytes == 2 + 1


def test_nan_groups_and_empty_tensors():
    x = torch.tensor([[1.0, float("nan"), 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    y = decode_bitplanes(encode_bitplanes(x, "bfp_m4_g4"))
    assert torch.isnan(y[0]).all() and torch.equal(y[1], formats.get("bfp_m4_g4").quantize(x[1:])[0])
    e = encode_bitplanes(torch.zeros(0, 8), "bfp_m4_g4")
    assert e.nbytes == 0 and decode_bitplanes(e).shape == (0, 8)


def test_bad_inputs():
    with pytest.raises(FormatError, match="BFP"):
        encode_bitplanes(torch.ones(4), "mxfp4")
    bp = encode_bitplanes(torch.ones(4), "bfp_m4_g4")
    with pytest.raises(InputError, match="0..4"):
        decode_bitplanes(bp, planes=5)
