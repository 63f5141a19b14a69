"""Lane utilization of bit-serial lanes with per-group widths. Oracle: hand-counted waves."""

import pytest

from nmx.errors import InputError
from nmx.hw.lanes import lane_cycles, variable_width_gain


def test_waves_by_hand():
    # 2 lanes, widths [8, 2, 7, 3], overhead 1: waves (8, 2) -> 9, (7, 3) -> 8 cycles; busy 9+3+8+4 = 24
    r = lane_cycles([8, 2, 7, 3], lanes=2, overhead=1)
    assert r["cycles"] == 17 and r["busy"] == 24 and r["utilization"] == pytest.approx(24 / 34)
    # reordered: (8, 7) -> 9, (3, 2) -> 4 cycles
    s = lane_cycles([8, 2, 7, 3], lanes=2, overhead=1, reorder=True)
    assert s["cycles"] == 13 and s["utilization"] == pytest.approx(24 / 26) and s["reorder_ops"] == 2 * 4 + 16


def test_gain_against_one_width():
    g = variable_width_gain([8, 2, 7, 3], lanes=2, overhead=1)
    assert g["uniform_cycles"] == 18  # (8 + 1) x 2 waves
    assert g["speedup"] == pytest.approx(18 / 17) and g["speedup_reordered"] == pytest.approx(18 / 13)
    assert variable_width_gain([5] * 8, lanes=4)["speedup"] == 1  # equal widths: nothing to gain
    assert variable_width_gain([1, 9] * 4, lanes=8)["speedup_reordered"] == 1  # one wave: no gain either


def test_bad_input():
    with pytest.raises(InputError):
        lane_cycles([], lanes=2)
    with pytest.raises(InputError):
        lane_cycles([3], lanes=0)
