"""Block formats against references written from the specs with numpy, float64 and ml_dtypes."""

import math

import ml_dtypes
import numpy as np
import pytest
import torch

import nmx.formats as F
from tests.conftest import assert_bitwise_equal

MX_ELEMENTS = {
    "mxfp8_e4m3": (ml_dtypes.float8_e4m3fn, 448.0, 8, 3),
    "mxfp8_e5m2": (ml_dtypes.float8_e5m2, 57344.0, 15, 2),
    "mxfp6_e2m3": (ml_dtypes.float6_e2m3fn, 7.5, 2, 3),
    "mxfp6_e3m2": (ml_dtypes.float6_e3m2fn, 28.0, 4, 2),
    "mxfp4": (ml_dtypes.float4_e2m1fn, 6.0, 2, 1),
}


def llm_like(rows=64, cols=256, seed=0) -> np.ndarray:
    """Heavy tails, outliers, exact zeros, tiny values, and values that tie on the element grids."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(3, size=(rows, cols)) * np.exp2(rng.integers(-20, 20, size=(rows, 1)))
    x[:, rng.integers(0, cols, 3)] *= 50
    x[rng.random(x.shape) < 0.05] = 0.0
    x[0, :32] = [0.25 * k for k in range(32)]  # exact grid points and midpoints
    x[1, :32] = 1e-30
    return x.astype(np.float32)


def mx_scale_exponent(amax: np.ndarray, emax: int, rule: str, max_elem: float, mbits: int) -> np.ndarray:
    """The scale exponent X of each block from float64 math (OCP MX 6.3 for 'floor')."""
    out = np.empty(amax.shape, dtype=np.int64)
    for i, a in np.ndenumerate(amax.astype(np.float64)):
        if a == 0:
            x = -127
        elif rule == "floor":
            x = math.floor(math.log2(a)) - emax
        elif rule == "ceil":
            x = math.ceil(math.log2(a)) - emax
        elif rule == "rceil":
            x = math.ceil(math.log2(float(np.float32(a) * np.float32(1.0 / max_elem))))
        elif rule == "even":  # amax rounded (half up) to the element's mantissa width, then floor
            m, e = math.frexp(a)  # a = m 2^e, m in [0.5, 1)
            x = math.floor(math.log2(math.floor(m * 2 ** (mbits + 1) + 0.5) / 2 ** (mbits + 1) * 2.0**e)) - emax
        out[i] = max(-127, min(127, x))
    return out


def mx_reference(x: np.ndarray, name: str, rule: str = "floor", block: int = 32) -> np.ndarray:
    dtype, max_elem, emax, mbits = MX_ELEMENTS[name]
    blocks = x.reshape(x.shape[0], -1, block)
    X = mx_scale_exponent(np.abs(blocks).max(-1), emax, rule, max_elem, mbits)[..., None]
    v = blocks.astype(np.float64) / np.exp2(X)
    elems = np.clip(v, -max_elem, max_elem).astype(np.float32).astype(dtype).astype(np.float64)
    return (elems * np.exp2(X)).astype(np.float32).reshape(x.shape)


@pytest.mark.parametrize("name", list(MX_ELEMENTS))
def test_mx_matches_the_spec_rule_with_ml_dtypes_elements(name):
    x = llm_like()
    ours = F.get(name).quantize(torch.from_numpy(x))
    assert_bitwise_equal(ours, torch.from_numpy(mx_reference(x, name)))


@pytest.mark.parametrize("rule", ["ceil", "even", "rceil"])
@pytest.mark.parametrize("name", ["mxfp4", "mxfp8_e4m3", "mxfp6_e3m2"])
def test_mx_scale_rules(name, rule):
    x = llm_like(seed=1)
    ours = F.get(f"{name}_{rule}").quantize(torch.from_numpy(x))
    assert_bitwise_equal(ours, torch.from_numpy(mx_reference(x, name, rule)))


def test_mx_rceil_and_ceil_never_saturate_but_floor_can():
    x = torch.tensor([[7.9] + [0.1] * 31])  # amax/2^X = 7.9/4*4 -> above fp4's 6 under floor
    assert F.get("mxfp4").quantize(x)[0, 0] == 6.0  # FLOOR: X = 2^(2-2) = 1, 7.9 saturates to 6
    assert F.get("mxfp4_rceil").quantize(x)[0, 0] == 8.0  # X = 2^ceil(log2(7.9/6)) = 2, 7.9/2 -> 4
    assert F.get("mxfp4_ceil").quantize(x)[0, 0] == 8.0


def test_mx_scales_are_e8m0_codes_of_the_spec():
    x = llm_like(seed=2)
    enc = F.get("mxfp8_e4m3").encode(torch.from_numpy(x))
    amax = np.abs(x.reshape(x.shape[0], -1, 32)).max(-1)
    X = mx_scale_exponent(amax, 8, "floor", 448.0, 3)
    np.testing.assert_array_equal(enc.buffers["scales"].numpy().reshape(X.shape), X + 127)


def test_mxint8_is_two_complement_with_implicit_2_pow_minus_6():
    x = llm_like(seed=3)
    blocks = x.reshape(x.shape[0], -1, 32).astype(np.float64)
    amax = np.abs(blocks).max(-1, keepdims=True)
    X = np.where(amax > 0, np.floor(np.log2(np.where(amax > 0, amax, 1))), -127).clip(-127, 127)
    codes = np.clip(np.round(blocks / np.exp2(X) * 64), -127, 127) + 0.0  # half to even; no -0 in two's compl.
    ref = (codes / 64 * np.exp2(X)).astype(np.float32).reshape(x.shape)
    assert_bitwise_equal(F.get("mxint8").quantize(torch.from_numpy(x)), torch.from_numpy(ref))


def round_to_grid(v: np.ndarray, dtype) -> np.ndarray:
    """Nearest value of an ml_dtypes float format to float64 v (ties to the even code), saturating.

    Written out because ml_dtypes converts float64 to FP4 through float32 (a double rounding)."""
    bits = ml_dtypes.finfo(dtype).bits
    codes = np.arange(2 ** (bits - 1))  # the non-negative half
    vals = codes.astype(np.uint8).view(dtype).astype(np.float64)
    keep = np.isfinite(vals)
    vals, codes = vals[keep], codes[keep]
    a = np.minimum(np.abs(v), vals[-1])
    i = np.clip(np.searchsorted(vals, a), 1, len(vals) - 1)
    lo, hi = vals[i - 1], vals[i]
    mid = (lo + hi) / 2  # exact: grid values have few bits
    up = (a > mid) | ((a == mid) & (codes[i] % 2 == 0))
    return np.copysign(np.where(up, hi, lo), v)


def nvfp4_reference(x: np.ndarray) -> np.ndarray:
    """The two-level NVFP4 recipe with exact quotients (float64) and value = (elem * scale_b) * s."""
    f32 = np.float32
    s = f32(np.abs(x).max()) / f32(448.0 * 6.0)
    blocks = x.reshape(x.shape[0], -1, 16)
    amax = np.abs(blocks).max(-1, keepdims=True).astype(np.float64)
    scale_b = round_to_grid(amax / (6.0 * np.float64(s)), ml_dtypes.float8_e4m3fn)
    denom = scale_b * np.float64(s)  # exact: 4 x 24 bits
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(denom > 0, blocks.astype(np.float64) / denom, 0.0)
    elems = round_to_grid(v, ml_dtypes.float4_e2m1fn)
    return ((elems * scale_b).astype(np.float32) * s).astype(np.float32).reshape(x.shape)


def test_nvfp4_matches_the_two_level_recipe():
    for seed in range(6):
        x = llm_like(seed=seed)
        assert_bitwise_equal(F.get("nvfp4").quantize(torch.from_numpy(x)), torch.from_numpy(nvfp4_reference(x)))
    x = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    assert_bitwise_equal(F.get("nvfp4").quantize(torch.from_numpy(x)), torch.from_numpy(nvfp4_reference(x)))


def test_nvfp4_encoded_tensor_scale_is_amax_over_2688():
    x = torch.from_numpy(llm_like(seed=4))
    enc = F.get("nvfp4").encode(x)
    s = enc.buffers["tensor_scale"].clone().view(torch.float32).item()
    assert s == np.float32(x.abs().max().item()) / np.float32(2688.0)


def traps(denom: float, midpoints, n_ulps: int = 4) -> np.ndarray:
    """float32 x near m * denom that a float32 quotient x / fl32(denom) rounds to FP4 the wrong way."""
    cands = []
    for m in midpoints:
        t = np.float32(m * denom)
        cands.append(t)
        for direction in (np.inf, -np.inf):
            x = t
            for _ in range(n_ulps):
                x = np.nextafter(x, np.float32(direction))
                cands.append(x)
    x = np.array(cands, dtype=np.float32)
    naive = (x / np.float32(denom)).astype(ml_dtypes.float4_e2m1fn).astype(np.float64)
    exact = round_to_grid(x.astype(np.float64) / denom, ml_dtypes.float4_e2m1fn)
    return x[naive != exact]


def test_nvfp4_rounds_exact_quotients_where_float32_would_not():
    """Blocks with a known scale_b and s, filled with elements whose float32 quotient
    x / fl32(scale_b s) rounds to FP4 the other way than the exact x / (scale_b s)."""
    fp4_midpoints = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    g = np.float32(3001.37)  # the tensor amax: s = g / 2688 has a full 24-bit mantissa
    s = g / np.float32(2688.0)
    rows, found = [], 0
    for scale_b in [1.125, 1.375, 1.625, 1.875, 2.75, 3.25, 13.0, 0.8125, 96.0, 0.0390625, 5.5, 7.0]:
        denom = scale_b * np.float64(s)
        x = traps(denom, fp4_midpoints)
        found += x.size
        row = np.zeros(32, dtype=np.float32)
        row[0], row[16] = g, np.float32(6.0 * denom)  # block 1's amax gives it scale_b
        row[17:17 + min(15, x.size)] = x[:15]
        rows.append(row)
    assert found >= 10  # the test data does hold such elements
    x = np.stack(rows)
    assert_bitwise_equal(F.get("nvfp4").quantize(torch.from_numpy(x)), torch.from_numpy(nvfp4_reference(x)))


def test_int_group_division_cannot_make_false_ties():
    """Why INT groups need no settling: an fp16 scale (11 bits) times k + 1/2 (at most 13 bits for
    12-bit codes) is exact in float32, so x / scale rounds to k + 1/2 only when it is exactly that."""
    rng = np.random.default_rng(0)
    sc = rng.uniform(1e-3, 10, 20000).astype(np.float16).astype(np.float32)
    k = rng.integers(0, 2**11, 20000) + 0.5
    t = (k * sc).astype(np.float32)
    assert (t.astype(np.float64) == k * sc.astype(np.float64)).all()  # exact products
    for step in (np.inf, -np.inf):
        x = np.nextafter(t, np.float32(step))
        assert not (x / sc == k.astype(np.float32)).any()


def int_group_reference(x: np.ndarray, bits: int, group: int, symmetric: bool) -> np.ndarray:
    blocks = x.reshape(x.shape[0], -1, group).astype(np.float32)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = (np.abs(blocks).max(-1, keepdims=True) / np.float32(qmax)).astype(np.float16).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):  # float64 quotients: no false ties
            q = blocks.astype(np.float64) / scale.astype(np.float64)
            codes = np.where(scale > 0, np.clip(np.round(q), -qmax, qmax), 0) + 0.0
        return (codes * scale).astype(np.float32).reshape(x.shape)
    qmax = 2**bits - 1
    lo = np.minimum(blocks.min(-1, keepdims=True), 0)
    hi = np.maximum(blocks.max(-1, keepdims=True), 0)
    scale = ((hi - lo) / np.float32(qmax)).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        zero = np.where(scale > 0, np.clip(np.round(-lo.astype(np.float64) / scale), 0, qmax), 0)
        q = blocks.astype(np.float64) / scale.astype(np.float64)
        codes = np.where(scale > 0, np.clip(np.round(q) + zero, 0, qmax), 0)
    return ((codes - zero) * scale).astype(np.float32).reshape(x.shape)


@pytest.mark.parametrize("name,bits,group,sym", [
    ("int4_g128", 4, 128, True), ("int4_g32", 4, 32, True), ("int8_g128", 8, 128, True),
    ("int3_g64", 3, 64, True), ("int4_g128_asym", 4, 128, False), ("int2_g32_asym", 2, 32, False),
])
def test_int_groups_match_the_gptq_recipe(name, bits, group, sym):
    x = llm_like(seed=5) * np.float32(1e-3)  # weight-sized values: fp16 scales stay in range
    ref = int_group_reference(x, bits, group, sym)
    assert_bitwise_equal(F.get(name).quantize(torch.from_numpy(x)), torch.from_numpy(ref))


def test_int_without_group_has_one_scale_per_vector():
    x = torch.from_numpy(llm_like(seed=6) * np.float32(1e-3))
    ref = int_group_reference(x.numpy(), 8, x.shape[1], True)
    assert_bitwise_equal(F.get("int8").quantize(x), torch.from_numpy(ref))
    assert F.get("int8").storage_bytes(x.shape) == x.numel() + 2 * x.shape[0]


def bfp_reference(x: np.ndarray, m: int, group: int) -> np.ndarray:
    blocks = x.reshape(x.shape[0], -1, group).astype(np.float64)
    amax = np.abs(blocks).max(-1, keepdims=True)
    E = np.where(amax > 0, np.floor(np.log2(np.where(amax > 0, amax, 1))), -127).clip(-127, 127)
    step = np.exp2(E - m + 1)
    return ((np.clip(np.round(blocks / step), -(2**m - 1), 2**m - 1) + 0.0) * step).astype(np.float32).reshape(x.shape)


@pytest.mark.parametrize("m,group", [(4, 16), (2, 16), (7, 32), (3, 8)])
def test_bfp_matches_float64_reference(m, group):
    x = llm_like(seed=7)
    assert_bitwise_equal(F.get(f"bfp_m{m}_g{group}").quantize(torch.from_numpy(x)),
                         torch.from_numpy(bfp_reference(x, m, group)))


@pytest.mark.parametrize("name,bits", [
    ("mxfp4", 4.25), ("mxfp6_e2m3", 6.25), ("mxfp8_e4m3", 8.25), ("mxint8", 8.25), ("nvfp4", 4.5),
    ("int4_g128", 4.125), ("int4_g128_asym", 4.15625), ("int8_g128", 8.125), ("bfp_m4_g16", 5.5),
    ("fp8_e4m3", 8), ("fp4_e2m1", 4), ("bf16", 16), ("int4", 4), ("mxfp4_g16", 4.5), ("nvfp4_g32", 4.25),
])
def test_bits_per_element(name, bits):
    assert F.get(name).bits_per_element == bits


ALL = F.names() + ["mxfp4_rceil", "mxfp6_e2m3_g16_even", "mxfp5_e2m2", "fp5_e2m2", "int4_g128_sr", "mxfp4_sr",
                   "nvfp4_rz", "bfp_m5_g32_sr", "int2_g16_asym", "int12_g64"]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape,dim", [((8, 96), -1), ((5, 33), 1), ((40, 3, 7), 0), ((130,), 0)])
def test_decode_of_encode_is_quantize_bit_for_bit(name, shape, dim):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-8, 8, shape, generator=g).float())
    if F.get(name).family == "scale":
        x = x.abs()
    fmt = F.get(name)
    enc = fmt.encode(x, dim=dim, seed=3)
    assert all(b.dtype == torch.uint8 for b in enc.buffers.values())
    assert enc.nbytes == fmt.storage_bytes(shape, dim=dim)
    assert_bitwise_equal(fmt.decode(enc), fmt.quantize(x, dim=dim, seed=3))


def test_codes_are_packed_densely():
    x = torch.randn(4, 64)
    assert F.get("mxfp4").encode(x).buffers["codes"].numel() == 4 * 64 // 2
    assert F.get("mxfp6_e3m2").encode(x).buffers["codes"].numel() == 4 * 64 * 6 // 8
    assert F.get("int3_g64").encode(x).buffers["codes"].numel() == 4 * 64 * 3 // 8
    assert F.get("mxfp4").encode(x).buffers["scales"].numel() == 4 * 2


def test_padding_is_zeros_and_is_counted():
    x = torch.randn(3, 33)
    fmt = F.get("mxfp4")
    padded = torch.nn.functional.pad(x, (0, 31))
    assert_bitwise_equal(fmt.quantize(x), fmt.quantize(padded)[:, :33])
    assert fmt.storage_bytes((3, 33)) == 3 * 64 // 2 + 3 * 2  # two blocks per row, one scale byte each


def test_dim_selects_the_blocking_dimension():
    x = torch.randn(64, 48)
    for name in ("mxfp4", "nvfp4", "int4_g32", "bfp_m3_g16"):
        fmt = F.get(name)
        assert_bitwise_equal(fmt.quantize(x, dim=0), fmt.quantize(x.t().contiguous(), dim=-1).t())


def test_nan_and_inf_poison_only_their_block():
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    x[0, 3] = float("nan")
    x[1, 40] = float("inf")
    for name in ("mxfp4", "mxfp8_e4m3", "nvfp4", "int4_g32", "bfp_m4_g32", "mxint8", "int4_g16_asym"):
        fmt = F.get(name)
        b = fmt.block_size
        q = fmt.quantize(x)
        poisoned = torch.zeros_like(x, dtype=torch.bool)
        poisoned[0, (3 // b) * b: (3 // b + 1) * b] = True
        poisoned[1, (40 // b) * b: (40 // b + 1) * b] = True
        assert torch.equal(torch.isnan(q), poisoned), name
        assert_bitwise_equal(fmt.decode(fmt.encode(x)), q)
    # the NVFP4 tensor scale ignores the non-finite values
    clean = x.clone()
    clean[0, 3] = clean[1, 40] = 0.0
    q, q_clean = F.get("nvfp4").quantize(x), F.get("nvfp4").quantize(clean)
    assert torch.equal(q[0, 16:], q_clean[0, 16:]) and torch.equal(q[1, :32], q_clean[1, :32])


def test_element_formats_propagate_nan_and_saturate():
    x = torch.tensor([float("nan"), 1e6, -1e6, float("inf"), 1.0])
    assert F.get("fp8_e4m3").quantize(x)[1:].tolist() == [448, -448, 448, 1.0]
    assert torch.isnan(F.get("fp8_e4m3").quantize(x)[0])
    assert F.get("fp8_e5m2").quantize(x)[3] == float("inf")
    assert torch.isnan(F.get("fp4_e2m1").quantize(x)[0])


def test_all_zero_and_tiny_blocks():
    z = torch.zeros(2, 32)
    for name in ("mxfp4", "nvfp4", "int4_g32", "int4_g32_asym", "bfp_m4_g16", "mxint8"):
        assert torch.equal(F.get(name).quantize(z), z)
    tiny = torch.full((1, 32), 1e-40)
    assert torch.isfinite(F.get("mxfp4").quantize(tiny)).all()


@pytest.mark.parametrize("name", ["mxfp4", "mxfp8_e4m3", "nvfp4", "int4_g32", "int4_g32_asym", "bfp_m4_g16",
                                  "fp8_e4m3", "int8"])
def test_rounder_fixes_a_groups_scales(name):
    """Rounding a group's own columns with its fixed scales gives what quantize gives; a column that
    changed afterwards is rounded on the old grid (saturating), not re-scaled."""
    fmt = F.get(name)
    g = fmt.block_size or 48
    w = torch.randn(8, g if g > 1 else 16)
    r = fmt.rounder(w, tensor=w)
    cols = torch.stack([r(w[:, j]) for j in range(w.shape[1])], dim=1)
    assert_bitwise_equal(cols, fmt.quantize(w))
    assert_bitwise_equal(r(w[:, :3]), fmt.quantize(w)[:, :3])
    if fmt.block_size != 1:
        big = r(w[:, 0] * 100)  # beyond the group's range: saturates on the group's grid
        assert torch.equal(r(big), big)
        assert (big.abs() < (w[:, 0] * 100).abs()).all()


def test_rounder_bad_group():
    with pytest.raises(Exception, match="one block of 32"):
        F.get("mxfp4").rounder(torch.randn(4, 16))


@pytest.mark.parametrize("name", ["bfp_m1_g64", "bfp_m4_g16", "bfp_m7_g64", "bfp_m15_g32"])
def test_bfp_round_to_nearest_shortcut_is_the_generic_path_bit_for_bit(name):
    """BFPFormat.quantize (exponent bits built directly) against Format.quantize (codes split, then joined), at
    the ends of the exponent range: subnormal and zero blocks (code 0), the largest finite blocks (code 254),
    -0, Inf and NaN blocks."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 96, generator=g) * torch.exp2(torch.randint(-149, 128, (64, 1), generator=g).float())
    x[0] = 0.0
    x[1] = -0.0
    x[2] = torch.finfo(torch.float32).max * torch.rand(96, generator=g)
    x[3, 5], x[4, 7], x[5, 0] = float("inf"), float("nan"), -float("inf")
    x[6] = 2.0 ** -149
    fmt = F.get(name)
    for dim in (-1, 0):
        fast, generic = fmt.quantize(x, dim=dim), F.Format.quantize(fmt, x, dim=dim)
        assert torch.equal(fast.isnan(), generic.isnan())
        assert_bitwise_equal(fast.nan_to_num(), generic.nan_to_num())
