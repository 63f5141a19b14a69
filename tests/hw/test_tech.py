"""Technology tables against their published sources (Horowitz ISSCC 2014; Stillmaker & Baas 2017)."""

import math

import numpy as np
import pytest

from nmx.errors import InputError
from nmx.hw.tech import NODES_NM, get_tech, tech_table

T45 = get_tech(45)


@pytest.mark.parametrize("kind,op,bits,pj", [
    # Horowitz ISSCC 2014, 45 nm 0.9 V
    ("int", "add", 8, 0.03), ("int", "add", 32, 0.1), ("int", "mul", 8, 0.2), ("int", "mul", 32, 3.1),
    ("fp", "add", 16, 0.4), ("fp", "add", 32, 0.9), ("fp", "mul", 16, 1.1), ("fp", "mul", 32, 3.7),
])
def test_45nm_energy_reproduces_horowitz(kind, op, bits, pj):
    f = T45.add_energy_pj if op == "add" else T45.mul_energy_pj
    assert f(kind, bits) == pytest.approx(pj, rel=1e-12)


@pytest.mark.parametrize("kind,op,bits,um2", [
    ("int", "add", 8, 36), ("int", "add", 32, 137), ("int", "mul", 8, 282), ("int", "mul", 32, 3495),
    ("fp", "add", 16, 1360), ("fp", "add", 32, 4184), ("fp", "mul", 16, 1640), ("fp", "mul", 32, 7700),
])
def test_45nm_area_reproduces_horowitz(kind, op, bits, um2):
    f = T45.add_area_um2 if op == "add" else T45.mul_area_um2
    assert f(kind, bits) == pytest.approx(um2, rel=1e-12)


def test_bit_width_laws_adder_linear_multiplier_quadratic():
    # fitted exponents: int adder log(0.1/0.03)/log(4) = 0.868, int multiplier log(15.5)/log(4) = 1.977
    assert T45.add_energy_pj("int", 16) / T45.add_energy_pj("int", 8) == pytest.approx(2 ** 0.8685, rel=1e-3)
    assert T45.mul_energy_pj("int", 16) / T45.mul_energy_pj("int", 8) == pytest.approx(2 ** 1.9767, rel=1e-3)
    # unequal operands at the geometric mean width: 4 x 16 costs what 8 x 8 costs
    assert T45.mul_energy_pj("int", 4, 16) == pytest.approx(T45.mul_energy_pj("int", 8), rel=1e-12)


def test_mac_is_multiplier_plus_accumulator_add():
    # 8x8 int MAC, 32-bit accumulator (8 + 8 + 16): 0.2 + 0.1 pJ (Horowitz)
    assert T45.mac_energy_pj("int", 8, 8) == pytest.approx(0.3, rel=1e-12)
    # fp16 MAC with fp32 accumulation: 1.1 + 0.9
    assert T45.mac_energy_pj("fp", 16, 16) == pytest.approx(2.0, rel=1e-12)


def test_sram_points_and_sqrt_law_below_8kb():
    cap = np.array([8 * 1024, 32 * 1024, 1024 * 1024])
    assert np.allclose(T45.sram_read_energy_pj_per_bit(cap), [10 / 64, 20 / 64, 100 / 64])
    # below 8 KB the 8 -> 32 KB slope (energy doubles per 4x capacity): 2 KB costs half of 8 KB
    assert T45.sram_read_energy_pj_per_bit(2048) == pytest.approx(10 / 64 / 2)
    e = T45.sram_read_energy_pj_per_bit(np.logspace(8, 26, 40, base=2))
    assert np.all(np.diff(e) >= 0)
    assert T45.sram_write_energy_pj_per_bit(4096) == T45.sram_read_energy_pj_per_bit(4096)


def test_stillmaker_baas_scaling_factors_by_hand():
    e45 = 1.103 * 0.81 - 0.362 * 0.9 + 0.2767  # 45 nm at 0.9 V
    e16 = 0.2958 * 0.64 - 0.1241 * 0.8 + 0.03024  # 16 nm at 0.8 V
    e7 = 0.1776 * 0.49 - 0.09097 * 0.7 + 0.02447  # 7 nm at 0.7 V
    assert get_tech(16).energy_scale == pytest.approx(e16 / e45)
    assert get_tech(7).energy_scale == pytest.approx(e7 / e45)
    assert get_tech(16).area_scale == 0.19 and get_tech(7).area_scale == 0.059
    # 28 nm: log-linear between 32 (0.46) and 20 nm (0.21)
    t = (math.log(32) - math.log(28)) / (math.log(32) - math.log(20))
    assert get_tech(28).area_scale == pytest.approx(math.exp((1 - t) * math.log(0.46) + t * math.log(0.21)))
    assert get_tech(7).mac_energy_pj("int", 8, 8) == pytest.approx(0.3 * e7 / e45)


def test_nodes_are_monotone_and_tabulated():
    techs = [get_tech(n) for n in NODES_NM]
    for a, b in zip(techs, techs[1:], strict=False):
        assert b.energy_scale < a.energy_scale and b.area_scale < a.area_scale
        assert b.sram_area_um2_per_bit() < a.sram_area_um2_per_bit()
        assert b.reg_energy_pj_per_bit() < a.reg_energy_pj_per_bit()
    assert [r["node_nm"] for r in tech_table()] == list(NODES_NM)
    # 6T bit cell 0.346 um^2 (Intel 45 nm) over array efficiency 0.7
    assert T45.sram_area_um2_per_bit() == pytest.approx(0.346 / 0.7)


def test_dram_kinds():
    assert T45.dram_energy_pj_per_bit("hbm2e") == 3.9  # O'Connor et al. MICRO 2017 (HBM2)
    assert get_tech(7).dram_energy_pj_per_bit("ddr4") == T45.dram_energy_pj_per_bit("ddr4")  # not node-scaled
    e = T45.dram_energy_pj_per_bit
    assert e("hbm3") < e("lpddr5") < e("ddr4")


def test_arrays_broadcast():
    bits = np.array([[4], [8]])
    w = np.array([4, 8, 16])
    out = T45.mac_energy_pj("int", bits, w)
    assert out.shape == (2, 3)
    assert out[1, 1] == pytest.approx(0.3)


@pytest.mark.parametrize("call", [
    lambda: get_tech(22), lambda: get_tech(True), lambda: T45.add_energy_pj("posit", 8),
    lambda: T45.mul_energy_pj("int", 0), lambda: T45.sram_read_energy_pj_per_bit(0),
    lambda: T45.dram_energy_pj_per_bit("gddr7"),
])
def test_bad_inputs_raise_input_error(call):
    with pytest.raises(InputError):
        call()
