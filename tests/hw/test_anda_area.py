"""The Anda designs at equal area, and the bit-serial PE as a dot-product unit (partial products, adder tree,
one shift-accumulator per PE, the FP32 flush of the overhead cycle). Oracles: the PE written out by hand from
nmx.hw.tech's per-op laws (Horowitz ISSCC 2014 tables), hand-counted adder trees and lane waves."""

import glob
import math

import numpy as np
import pytest

from nmx.errors import InputError
from nmx.hw.accel import _adder_tree, evaluate, gemm_problem, params_from_spec
from nmx.hw.accel_spec import load_accel
from nmx.hw.lanes import variable_width_gain
from nmx.hw.tech import get_tech

ANDA = "examples/hw/anda_16x16_bitserial.yaml"
T45, T16 = get_tech(45), get_tech(16)
#: PE-array (MACs + registers + decoders) areas of the baselines agree with the bit-serial design's within this
PE_TOLERANCE = 0.05
#: and the chip areas (with the shared 2176 KiB buffer) within this
CHIP_TOLERANCE = 0.02


def _areas(path):
    r = evaluate(load_accel(path), gemm_problem(1, 64, 64))
    pe = sum(float(r.area_breakdown[k]) for k in ("mac", "mux", "reg", "decode"))
    return pe, float(r.area_um2)


def test_the_anda_designs_have_equal_area():
    files = sorted(glob.glob("examples/hw/anda_*.yaml"))
    ref_pe, ref_chip = _areas(ANDA)
    assert 0.29e6 < ref_pe < 0.32e6  # the bit-serial PE array, ~0.30 mm^2 (docs/anda_hardware.md)
    for f in files:
        pe, chip = _areas(f)
        assert abs(pe / ref_pe - 1) <= PE_TOLERANCE, (f, pe, ref_pe)
        assert abs(chip / ref_chip - 1) <= CHIP_TOLERANCE, (f, chip, ref_chip)
    # the FP16 baseline at 16 x 16 (its old size) would not be: +8.5 %
    p = {**params_from_spec(load_accel("examples/hw/anda_fp16_int4_16x16.yaml")), "rows": 16}
    r = evaluate(p, gemm_problem(1, 64, 64))
    assert sum(float(r.area_breakdown[k]) for k in ("mac", "mux", "reg", "decode")) / ref_pe - 1 > PE_TOLERANCE


def test_adder_tree_counts_lanes_minus_one_adders():
    assert float(_adder_tree(lambda b: np.ones_like(b), 16, 5)) == 15
    assert float(_adder_tree(lambda b: np.ones_like(b), 13, 5)) == 12
    assert float(_adder_tree(lambda b: np.ones_like(b), 1, 5)) == 0
    # widths: 8 adders of 6 bits, 4 of 7, 2 of 8, 1 of 9 (inputs of 5 bits)
    assert float(_adder_tree(lambda b: b, 16, 5)) == 8 * 6 + 4 * 7 + 2 * 8 + 9
    assert np.allclose(_adder_tree(lambda b: np.ones_like(b), np.array([2, 4, 16]), 5), [1, 3, 15])


def _pe_by_hand(lanes=16, b=1, w=4, act=16, flush=True):
    acc = act + w + math.ceil(math.log2(lanes)) if flush else act + w + 16
    tree = sum(n * T45.add_area_um2("int", b + w + lvl) for lvl, n in enumerate((8, 4, 2, 1), 1)) if lanes == 16 else 0
    pe = (lanes * T45.mul_area_um2("int", b, w) + tree + T45.add_area_um2("int", acc)
          + acc * T45.reg_area_um2_per_bit())
    if flush:
        pe += T45.add_area_um2("int", 8) + T45.add_area_um2("fp", 32) + 32 * T45.reg_area_um2_per_bit()
    return pe


def test_bit_serial_pe_area_by_hand():
    r = evaluate(load_accel(ANDA), gemm_problem(1, 64, 64))
    assert float(r.area_breakdown["mac"]) == pytest.approx(256 * _pe_by_hand() * T16.area_scale)
    # one lane and no flush: the PE is exactly a dense integer MAC lane at the same widths (as before)
    p = {**params_from_spec(load_accel(ANDA)), "lanes": 1, "serial_overhead": 0}
    one = evaluate(p, gemm_problem(1, 64, 64))
    lane = T45.mul_area_um2("int", 1, 4) + T45.add_area_um2("int", 36) + 36 * T45.reg_area_um2_per_bit()
    assert float(one.area_breakdown["mac"]) == pytest.approx(256 * lane * T16.area_scale)


def test_bit_serial_energy_by_hand():
    spec = load_accel(ANDA)
    m, n, k, mant = 32, 64, 256, 5
    r = evaluate(spec, gemm_problem(m, n, k, weights="int4_g128", activations=f"bfp_m{mant}_g64"))
    es = T16.energy_scale
    acc = 6 + 4 + 4  # act code bits (sign + 5) + 4 weight bits + log2(16 lanes)
    tree = sum(c * T45.add_energy_pj("int", 1 + 4 + lvl) for lvl, c in enumerate((8, 4, 2, 1), 1))
    e_lane = (T45.mul_energy_pj("int", 1, 4) + (tree + T45.add_energy_pj("int", acc)) / 16) * es
    sequences = m * n * (k / 16)  # one flush per PE per streamed token
    flush = (T45.add_energy_pj("int", 8) + T45.add_energy_pj("fp", 32)) * es
    assert float(r.energy_breakdown["mac"]) == pytest.approx(m * n * k * mant * e_lane + sequences * flush)
    reg = m * n * k * mant * (1 + 4 + 2 * acc / 16) + sequences * (acc + 64)
    assert float(r.energy_breakdown["reg"]) == pytest.approx(reg * T45.reg_energy_pj_per_bit() * es)
    # the overhead cycle is not charged as a data pass: energy does not depend on serial_overhead's cycles
    # beyond the flush, and the MAC part scales with the mantissa bits
    r3 = evaluate(spec, gemm_problem(m, n, k, weights="int4_g128", activations="bfp_m3_g64"))
    acc3 = 4 + 4 + 4
    e3 = (T45.mul_energy_pj("int", 1, 4) + (tree + T45.add_energy_pj("int", acc3)) / 16) * es
    assert float(r3.energy_breakdown["mac"]) == pytest.approx(m * n * k * 3 * e3 + sequences * flush)


def test_uniform_width_reference_in_lane_gain():
    # 2 lanes, widths [8, 2, 7, 3], overhead 1: against width 6 for all: (6 + 1) x 2 waves = 14 cycles
    g = variable_width_gain([8, 2, 7, 3], lanes=2, overhead=1, uniform_width=6)
    assert g["uniform_cycles"] == 14 and g["speedup"] == pytest.approx(14 / 17)
    assert g["speedup_reordered"] == pytest.approx(14 / 13)
    assert variable_width_gain([8, 2, 7, 3], lanes=2, overhead=1)["uniform_width"] == 8
    with pytest.raises(InputError):
        variable_width_gain([3], lanes=1, uniform_width=-1)
