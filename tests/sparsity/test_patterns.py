"""Pattern parsing. Oracles: the grammar in nmx.sparsity.patterns' doc, and parse(str(p)) == p."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmx.errors import InputError
from nmx.sparsity.patterns import NMPattern, Unstructured, parse_pattern


@pytest.mark.parametrize("text,n,m", [("2:4", 2, 4), ("4:8", 4, 8), ("1:4", 1, 4), ("3:4", 3, 4),
                                      (" 16 : 32 ", 16, 32), ("2:3", 2, 3), ("1:2", 1, 2)])
def test_nm_strings(text, n, m):
    p = parse_pattern(text)
    assert p == NMPattern(n, m)
    assert p.density == n / m and p.sparsity == 1 - n / m


@pytest.mark.parametrize("value,sparsity,scope", [
    ("50%", 0.5, "row"), ("0.5", 0.5, "row"), (0.5, 0.5, "row"), ("unstructured:0.5", 0.5, "row"),
    ("Unstructured: 0.7", 0.7, "row"), ("62.5%", 0.625, "row"), ("0", 0.0, "row"), (0, 0.0, "row"),
    ("0.5:layer", 0.5, "layer"), ("50%:layer", 0.5, "layer"), ("unstructured:0.25:row", 0.25, "row"),
    (".9", 0.9, "row"), (np.float32(0.5), 0.5, "row"), (np.float64(0.25), 0.25, "row"),
])
def test_unstructured_forms(value, sparsity, scope):
    p = parse_pattern(value)
    assert p == Unstructured(sparsity, scope)
    assert p.density == pytest.approx(1 - sparsity)


@pytest.mark.parametrize("bad,hint", [
    ("4:2", "did you mean '2:4'"), ("0:4", "at least 1"), ("2:2", "smaller than M"), ("33:64", "at most 32"),
    ("-1:4", "at least 1"), ("4:4", "smaller than M"),
    ("abc", "write N:M like '2:4'"), ("", "write N:M"), ("2:4:8", "write N:M"), ("2-4", "write N:M"),
    ("1.5", r"\[0, 1\)"), ("-0.1", r"\[0, 1\)"), ("100%", r"\[0, 1\)"), ("50", "write '50%'"), ("nan", r"\[0, 1\)"),
    ("inf", r"\[0, 1\)"), ("0.5:banana", "'row' or 'layer'"),
    (1.5, r"\[0, 1\)"), (-0.1, r"\[0, 1\)"), (1, r"\[0, 1\)"), (float("nan"), r"\[0, 1\)"),
    (True, "boolean"), (None, "string or a number"), ([2, 4], "string or a number"),
])
def test_bad_patterns_raise_input_error_with_a_hint(bad, hint):
    with pytest.raises(InputError, match=hint):
        parse_pattern(bad)


@pytest.mark.parametrize("n,m", [(0, 4), (4, 2), (2, 2), (33, 64), (2.0, 4), (True, 4)])
def test_direct_construction_is_validated(n, m):
    with pytest.raises(InputError):
        NMPattern(n, m)


def test_unstructured_direct_construction_is_validated():
    for bad in (1.0, -0.1, float("inf"), "0.5"):
        with pytest.raises(InputError):
            Unstructured(bad)
    with pytest.raises(InputError, match="'row' or 'layer'"):
        Unstructured(0.5, "column")


def test_refuses_a_dim_that_m_does_not_divide_and_names_its_size():
    NMPattern(2, 4).check_dim(4096)
    with pytest.raises(InputError, match="has 4095 entries"):
        NMPattern(2, 4).check_dim(4095)
    with pytest.raises(InputError, match="has 10 entries.*multiple of 3"):
        NMPattern(2, 3).check_dim(10)


def test_pruned_count_rounds_half_to_even():
    # the documented rule, Python's round: 2.5 -> 2, 1.5 -> 2, 3.5 -> 4
    assert Unstructured(0.5).pruned_count(5) == 2
    assert Unstructured(0.5).pruned_count(3) == 2
    assert Unstructured(0.5).pruned_count(7) == 4
    assert Unstructured(0.3).pruned_count(10) == 3  # 0.3 * 10 = 3.0000000000000004


def test_patterns_pass_through_and_print():
    p = NMPattern(2, 4)
    assert parse_pattern(p) is p
    assert str(p) == "2:4"
    assert str(Unstructured(0.5)) == "unstructured:0.5"
    assert str(Unstructured(0.5, "layer")) == "unstructured:0.5:layer"


@settings(max_examples=300, deadline=None)
@given(m=st.integers(2, 32), data=st.data())
def test_nm_str_round_trips(m, data):
    p = NMPattern(data.draw(st.integers(1, m - 1)), m)
    assert parse_pattern(str(p)) == p


@settings(max_examples=300, deadline=None)
@given(s=st.floats(0.0, 1.0, exclude_max=True), scope=st.sampled_from(["row", "layer"]))
def test_unstructured_str_round_trips_exactly(s, scope):
    p = Unstructured(s, scope)
    back = parse_pattern(str(p))
    assert back == p and back.sparsity == s  # float repr round-trips bit for bit
