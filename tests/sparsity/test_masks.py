"""Masks. Oracles: brute force per group / per row in plain Python (sort by (-score, index),
the documented tie rule), hand counts for the validity checker, round() for exact counts."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nmx.errors import InputError
from nmx.sparsity.masks import check_nm, is_valid, mask_for, nm_mask, unstructured_mask
from nmx.sparsity.patterns import NMPattern, Unstructured

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def brute_keep(values: list[float], keep: int) -> set[int]:
    """The `keep` indices with the highest values; equal values: the lower index first."""
    return set(sorted(range(len(values)), key=lambda j: (-values[j], j))[:keep])


def brute_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    out = torch.zeros(scores.shape, dtype=torch.bool)
    for r in range(scores.shape[0]):
        for g in range(0, scores.shape[1], m):
            for j in brute_keep(scores[r, g : g + m].tolist(), n):
                out[r, g + j] = True
    return out


@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (3, 4), (4, 8), (2, 8), (1, 32), (16, 32), (1, 2), (2, 3)])
def test_nm_mask_keeps_exactly_the_top_n_of_every_group(n, m):
    scores = torch.randn(6, 4 * m)
    mask = nm_mask(scores, n, m)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    assert (mask.reshape(6, 4, m).sum(-1) == n).all()
    assert check_nm(mask, n, m) == 0 and is_valid(mask, n, m)
    assert torch.equal(mask, brute_nm(scores, n, m))


@PROPS
@given(m=st.integers(2, 32), rows=st.integers(1, 4), groups=st.integers(1, 4), data=st.data())
def test_nm_mask_matches_brute_force_with_ties(m, rows, groups, data):
    n = data.draw(st.integers(1, m - 1))
    # a few distinct integer values: ties are common, and the tie rule is part of the oracle
    x = data.draw(arrays(np.float32, (rows, groups * m), elements=st.integers(-3, 3).map(float)))
    scores = torch.from_numpy(x)
    mask = nm_mask(scores, n, m)
    assert torch.equal(mask, brute_nm(scores, n, m))
    assert check_nm(mask, n, m) == 0
    assert (mask.reshape(rows, groups, m).sum(-1) == n).all()


def test_ties_keep_the_lower_index():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 5.0, 2.0, 2.0, 2.0]])
    assert nm_mask(scores, 2, 4).tolist() == [[True, True, False, False, True, True, False, False]]
    assert unstructured_mask(scores, 0.5).tolist() == [[False, False, False, False, True, True, True, True]]
    assert unstructured_mask(scores, 0.25).tolist() == [[True, True, False, False, True, True, True, True]]


def test_masks_are_deterministic_and_leading_dims_are_rows():
    scores = torch.randn(2, 3, 16)
    a, b = nm_mask(scores, 2, 4), nm_mask(scores.clone(), 2, 4)
    assert torch.equal(a, b)
    assert torch.equal(a.reshape(6, 16), nm_mask(scores.reshape(6, 16), 2, 4))


def test_refuses_an_input_dim_not_divisible_by_m():
    with pytest.raises(InputError, match="has 6 entries"):
        nm_mask(torch.randn(4, 6), 2, 4)
    with pytest.raises(InputError, match="has 10 entries.*multiple of 3"):
        mask_for(torch.randn(4, 10), "2:3")
    with pytest.raises(InputError, match="has 6 entries"):
        check_nm(torch.randn(4, 6), 2, 4)


def test_refuses_bad_scores():
    with pytest.raises(InputError, match="NaN"):
        nm_mask(torch.tensor([[1.0, float("nan"), 0.0, 2.0]]), 2, 4)
    with pytest.raises(InputError, match="NaN"):
        unstructured_mask(torch.tensor([[1.0, float("nan")]]), 0.5)
    with pytest.raises(InputError):
        nm_mask(torch.ones(4, 4, dtype=torch.bool), 2, 4)
    with pytest.raises(InputError):
        nm_mask([[1.0, 2.0, 3.0, 4.0]], 2, 4)
    with pytest.raises(InputError):
        nm_mask(torch.tensor(1.0), 1, 2)
    with pytest.raises(InputError, match="did you mean '2:4'"):
        nm_mask(torch.randn(4, 4), 4, 2)


@PROPS
@given(rows=st.integers(1, 5), cols=st.integers(1, 40), s=st.floats(0.0, 1.0, exclude_max=True), data=st.data())
def test_unstructured_row_prunes_exactly_round_s_in_per_row(rows, cols, s, data):
    x = data.draw(arrays(np.float32, (rows, cols), elements=st.integers(-4, 4).map(float)))
    scores = torch.from_numpy(x)
    mask = unstructured_mask(scores, s, "row")
    pruned = round(s * cols)  # the documented count, Python's round
    assert ((~mask).sum(dim=1) == pruned).all()
    for r in range(rows):
        assert set(torch.nonzero(mask[r]).reshape(-1).tolist()) == brute_keep(x[r].tolist(), cols - pruned)


@PROPS
@given(rows=st.integers(1, 5), cols=st.integers(1, 20), s=st.floats(0.0, 1.0, exclude_max=True), data=st.data())
def test_unstructured_layer_prunes_exactly_round_s_numel(rows, cols, s, data):
    x = data.draw(arrays(np.float32, (rows, cols), elements=st.integers(-4, 4).map(float)))
    scores = torch.from_numpy(x)
    mask = unstructured_mask(scores, s, "layer")
    pruned = round(s * (rows * cols))  # the contract: round(sparsity * numel), in that float order
    assert int((~mask).sum()) == pruned
    kept = brute_keep(x.reshape(-1).tolist(), rows * cols - pruned)  # row-major index breaks ties
    assert set(torch.nonzero(mask.reshape(-1)).reshape(-1).tolist()) == kept


def test_row_and_layer_scopes_differ_where_rows_differ_in_scale():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    assert unstructured_mask(scores, 0.5, "row").tolist() == [[False, False, True, True], [False, False, True, True]]
    assert unstructured_mask(scores, 0.5, "layer").tolist() == [[False] * 4, [True] * 4]


def test_mask_for_dispatches_on_the_pattern():
    scores = torch.randn(4, 16)
    assert torch.equal(mask_for(scores, "2:4"), nm_mask(scores, 2, 4))
    assert torch.equal(mask_for(scores, NMPattern(1, 8)), nm_mask(scores, 1, 8))
    assert torch.equal(mask_for(scores, "50%"), unstructured_mask(scores, 0.5))
    assert torch.equal(mask_for(scores, Unstructured(0.25, "layer")), unstructured_mask(scores, 0.25, "layer"))
    assert mask_for(scores, 0.0).all()


def test_check_nm_counts_violating_groups():
    # hand count: the four groups hold 3, 2, 4 and 0 nonzeros: 2:4 is broken by 2 groups (3, 4),
    # 3:4 by 1 (4), 1:4 by 3 (3, 2, 4)
    x = torch.tensor([[1.0, 2.0, 0.0, 3.0, 0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0]])
    assert check_nm(x, 2, 4) == 2
    assert check_nm(x, 3, 4) == 1
    assert check_nm(x, 1, 4) == 3
    assert check_nm(x != 0, "2:4") == 2  # a bool mask counts True entries; the pattern may be a string
    assert check_nm(x, NMPattern(2, 4)) == 2
    assert check_nm(torch.tensor([[float("nan"), 1.0, 0.0, 0.0]]), 1, 4) == 1  # NaN is nonzero
    assert not is_valid(x, 2, 4) and is_valid(torch.zeros(3, 8), 1, 4)
    assert check_nm(torch.zeros(0, 8), 2, 4) == 0
    with pytest.raises(InputError, match="both n and m"):
        check_nm(x, 2)
    with pytest.raises(InputError, match="N:M pattern"):
        check_nm(x, "50%")
