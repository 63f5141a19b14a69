"""Element codecs against ml_dtypes (every code, and >= 10^6 inputs each) and torch's float8."""

import ml_dtypes
import numpy as np
import pytest
import torch

from nmx.formats.elements import E8M0_SCALE, FP4_E2M1, FP6_E2M3, FP6_E3M2, FP8_E4M3, FP8_E5M2, UE4M3, float_element
from nmx.formats.rounding import Rounding, make_generator
from tests.conftest import assert_bitwise_equal

ORACLES = [
    (FP8_E4M3, ml_dtypes.float8_e4m3fn),
    (FP8_E5M2, ml_dtypes.float8_e5m2),
    (FP6_E2M3, ml_dtypes.float6_e2m3fn),
    (FP6_E3M2, ml_dtypes.float6_e3m2fn),
    (FP4_E2M1, ml_dtypes.float4_e2m1fn),
]
SATURATING_IN_ML_DTYPES = {"fp6_e2m3", "fp6_e3m2", "fp4_e2m1"}  # no Inf/NaN codes: ml_dtypes clamps


def _ml_values(codes: np.ndarray, dtype) -> np.ndarray:
    return codes.astype(np.uint8).view(dtype).astype(np.float32)


def adversarial_inputs(element, n_random: int = 1_000_000, seed: int = 0) -> np.ndarray:
    """Random values over the whole exponent range plus every tie and its neighbours, zeros, NaN, overflow."""
    rng = np.random.default_rng(seed)
    lo, hi = np.log2(element.min_subnormal) - 3, np.log2(element.max) + 2
    mags = np.exp2(rng.uniform(lo, hi, n_random)).astype(np.float32)
    rand = np.where(rng.random(n_random) < 0.5, -mags, mags)
    grid = np.unique(np.abs(element.table[np.isfinite(element.table)])).astype(np.float64)
    ties = ((grid[1:] + grid[:-1]) / 2).astype(np.float32)  # exact in float32
    top = np.array([element.max + (grid[-1] - grid[-2]) / 2], dtype=np.float32)  # overflow tie
    near = np.concatenate([ties, top, grid.astype(np.float32)])
    near = np.concatenate([near, np.nextafter(near, np.float32(np.inf)), np.nextafter(near, np.float32(0))])
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e30, -1e30, 1e-40, -1e-40, 3e38], dtype=np.float32)
    return np.concatenate([rand, near, -near, special]).astype(np.float32)


@pytest.mark.parametrize("element,dtype", ORACLES, ids=lambda v: getattr(v, "name", ""))
def test_decode_every_code_matches_ml_dtypes(element, dtype):
    codes = np.arange(2**element.bits)
    ours = element.decode(torch.from_numpy(codes))
    assert_bitwise_equal(ours, torch.from_numpy(_ml_values(codes, dtype)))


def test_e8m0_and_ue4m3_decode_every_code():
    codes = np.arange(256)
    assert_bitwise_equal(E8M0_SCALE.decode(torch.from_numpy(codes)),
                         torch.from_numpy(_ml_values(codes, ml_dtypes.float8_e8m0fnu)))
    # UE4M3 is E4M3 without the sign bit: codes 0..127 are E4M3's non-negative half
    half = np.arange(128)
    assert_bitwise_equal(UE4M3.decode(torch.from_numpy(half)),
                         torch.from_numpy(_ml_values(half, ml_dtypes.float8_e4m3fn)))


@pytest.mark.parametrize("element,dtype", ORACLES, ids=lambda v: getattr(v, "name", ""))
def test_rounding_matches_ml_dtypes_on_a_million_inputs(element, dtype):
    x = adversarial_inputs(element)
    assert x.size >= 1_000_000
    saturate = element.name in SATURATING_IN_ML_DTYPES
    ref = x.astype(dtype).astype(np.float32)
    if saturate:  # ml_dtypes maps NaN to a number here (no NaN code); we keep NaN: compare the rest
        keep = ~np.isnan(x)
        x, ref = x[keep], ref[keep]
    ours = element.round(torch.from_numpy(x), saturate=saturate)
    assert_bitwise_equal(ours, torch.from_numpy(ref))


@pytest.mark.parametrize("element,dtype", ORACLES, ids=lambda v: getattr(v, "name", ""))
def test_saturating_rounding_is_clamp_then_round(element, dtype):
    """The MX element rule: finite overflow and Inf (where there is no Inf code) become ±max."""
    x = adversarial_inputs(element, n_random=200_000, seed=1)
    x = x[~np.isnan(x)]
    clamped = np.clip(x, -element.max, element.max)
    if element.has_inf:  # E5M2 keeps Inf
        clamped = np.where(np.isinf(x), x, clamped)
    ref = clamped.astype(dtype).astype(np.float32)
    assert_bitwise_equal(element.round(torch.from_numpy(x), saturate=True), torch.from_numpy(ref))


@pytest.mark.parametrize("element,tdtype", [(FP8_E4M3, torch.float8_e4m3fn), (FP8_E5M2, torch.float8_e5m2)],
                         ids=["e4m3", "e5m2"])
def test_rounding_matches_torch_float8_in_range(element, tdtype):
    x = torch.from_numpy(adversarial_inputs(element, n_random=200_000, seed=2))
    x = x[torch.isfinite(x) & (x.abs() <= element.max)]
    assert_bitwise_equal(element.round(x), x.to(tdtype).float())


@pytest.mark.parametrize("element", [FP8_E4M3, FP8_E5M2, FP6_E2M3, FP6_E3M2, FP4_E2M1], ids=lambda e: e.name)
def test_encode_gives_the_codes_ml_dtypes_gives(element):
    dtype = dict((e.name, d) for e, d in ORACLES)[element.name]
    x = adversarial_inputs(element, n_random=100_000, seed=3)
    x = x[np.isfinite(x)]
    x = np.clip(x, -element.max, element.max)
    values = element.round(torch.from_numpy(x))
    codes = element.encode(values).numpy()
    ref_codes = x.astype(dtype).view(np.uint8).astype(np.int64) & ((1 << element.bits) - 1)
    np.testing.assert_array_equal(codes, ref_codes)


def test_nan_propagates_and_nan_codes():
    x = torch.tensor([float("nan"), 1.0])
    for el in (FP8_E4M3, FP8_E5M2, FP6_E2M3, FP4_E2M1):
        assert torch.isnan(el.round(x)[0]) and el.round(x)[1] == 1.0
    assert FP8_E4M3.encode(torch.tensor([float("nan")])).item() == 0x7F
    assert torch.isnan(FP8_E5M2.decode(FP8_E5M2.encode(torch.tensor([float("nan")]))))
    with pytest.raises(Exception, match="no NaN code"):
        FP4_E2M1.encode(torch.tensor([float("nan")]))


def test_e8m0_rounding_matches_ml_dtypes_for_normal_inputs():
    rng = np.random.default_rng(4)
    x = np.exp2(rng.uniform(-126, 127.9, 1_000_000)).astype(np.float32)
    ties = np.exp2(np.arange(-126, 127)).astype(np.float32) * np.float32(1.5)
    special = np.array([0.0, -1.0, np.inf, np.nan, 2.0**127, 1.5 * 2.0**127], dtype=np.float32)
    x = np.concatenate([x, ties, np.nextafter(ties, np.float32(0)), special])
    ref = x.astype(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    assert_bitwise_equal(E8M0_SCALE.round(torch.from_numpy(x)), torch.from_numpy(ref))


def test_e8m0_rounds_float32_subnormals_to_the_nearest_power_of_two():
    """Documented divergence: ml_dtypes rounds every float32 subnormal above 2^-127 up to 2^-126,
    even 1.1 * 2^-127; nmx picks the nearer of the two (ties up, as for normal inputs)."""
    x = torch.tensor([1.1 * 2.0**-127, 1.6 * 2.0**-127, 2.0**-140])
    assert E8M0_SCALE.round(x).tolist() == [2.0**-127, 2.0**-126, 2.0**-127]


def test_ue4m3_is_e4m3_for_positive_values_and_nan_for_negative():
    x = torch.from_numpy(np.abs(adversarial_inputs(FP8_E4M3, n_random=100_000, seed=5)))
    x = x[torch.isfinite(x)]
    ours = UE4M3.round(x)
    assert_bitwise_equal(ours, FP8_E4M3.round(x))
    assert torch.isnan(UE4M3.round(torch.tensor([-1.0]))).all()


def test_constants_of_the_ocp_formats():
    assert (FP8_E4M3.max, FP8_E5M2.max, FP6_E2M3.max, FP6_E3M2.max, FP4_E2M1.max) == (448, 57344, 7.5, 28, 6)
    assert (FP8_E4M3.emax, FP8_E5M2.emax, FP6_E2M3.emax, FP6_E3M2.emax, FP4_E2M1.emax) == (8, 15, 2, 4, 2)
    assert FP8_E4M3.min_subnormal == 2.0**-9 and FP4_E2M1.min_subnormal == 0.5
    assert float_element(2, 2).name == "fp5_e2m2" and float_element(2, 2).max == 7.0


@pytest.mark.parametrize("element", [FP8_E4M3, FP4_E2M1, FP6_E3M2], ids=lambda e: e.name)
def test_stochastic_rounding_is_unbiased_and_picks_a_neighbour(element):
    x = torch.full((200_000,), 0.3 * element.max, dtype=torch.float32)
    q = element.round(x, Rounding.STOCHASTIC, generator=make_generator(Rounding.STOCHASTIC, 0))
    down = element.round(x, Rounding.ZERO)
    grid = torch.from_numpy(np.unique(np.abs(element.table[np.isfinite(element.table)])).astype(np.float32))
    up = grid[torch.searchsorted(grid, down[:1]) + 1]
    assert set(q.unique().tolist()) <= {down[0].item(), up.item()}
    spacing = (up - down[0]).item()
    assert abs(q.double().mean().item() - x[0].item()) < 5 * spacing / np.sqrt(x.numel())
    again = element.round(x, Rounding.STOCHASTIC, generator=make_generator(Rounding.STOCHASTIC, 0))
    assert torch.equal(q, again)  # seeded


def test_round_toward_zero_never_grows_the_magnitude():
    x = torch.from_numpy(adversarial_inputs(FP8_E4M3, n_random=100_000, seed=6))
    x = x[torch.isfinite(x) & (x.abs() <= 448)]
    q = FP8_E4M3.round(x, Rounding.ZERO)
    nearest = FP8_E4M3.round(x)
    assert (q.abs() <= x.abs()).all()
    # and it is the largest grid value not above |x|: the next one up is above
    assert ((q == nearest) | (nearest.abs() > x.abs())).all()


@pytest.mark.parametrize("element,dtype", ORACLES, ids=lambda v: getattr(v, "name", ""))
def test_every_rounding_path_agrees(element, dtype):
    """Three paths round to nearest: add-and-subtract (the fast one), scale-round-unscale with
    float64 refinement near boundaries (`exact=`), and float64 arithmetic. Same answers."""
    x = torch.from_numpy(adversarial_inputs(element, n_random=100_000, seed=7))
    x64 = x.double()
    for saturate in (True, False):
        fast = element.round(x, saturate=saturate)
        refined = element.round(x, saturate=saturate, exact=lambda idx: x64[idx])
        assert_bitwise_equal(refined, fast)
        assert_bitwise_equal(element.round(x64, saturate=saturate), fast)


def test_float64_rounding_is_a_single_rounding():
    """Values a hair off an FP4 midpoint in float64 round by their true side (ml_dtypes goes
    through float32 here and gets 3.5 - 2^-30 wrong)."""
    x = torch.tensor([3.5 - 2**-30, 3.5 + 2**-30, 2.5 - 2**-40, 2.5, 3.5], dtype=torch.float64)
    assert FP4_E2M1.round(x).tolist() == [3.0, 4.0, 2.0, 2.0, 4.0]
