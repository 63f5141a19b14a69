"""Mask math and mask methods, each against a hand-derived or brute-force oracle."""

import pytest
import torch

from nmx.sparsity.masks import check_nm, nm_mask
from nmx.sparsity.patterns import NMPattern
from nmx.train.masks import partial_nm_mask, transposable_candidates, transposable_mask
from nmx.train.methods import SRSTE, BidirectionalLinear, Decay, Fixed, MaskController, PatternSchedule, ste_quantize


def _brute_force_best(block: torch.Tensor, n: int) -> float:
    """The most |score| any 0/1 mask with at most n per row and per column keeps (all 2^16 masks of a 4x4 block)."""
    bits = ((torch.arange(1 << 16)[:, None] >> torch.arange(16)) & 1).double().reshape(-1, 4, 4)
    ok = (bits.sum(1) <= n).all(-1) & (bits.sum(2) <= n).all(-1)
    return float((bits[ok] * block.double()).sum((1, 2)).max())


@pytest.mark.parametrize("n", [1, 2])
def test_transposable_mask_keeps_the_most_magnitude_of_all_transposable_masks(n):
    """Oracle: brute force over every 4x4 0/1 mask with <= n per row and column."""
    g = torch.Generator().manual_seed(n)
    for _ in range(8):
        block = torch.rand(4, 4, generator=g)
        mask = transposable_mask(block, n, 4)
        assert (mask.sum(0) == n).all() and (mask.sum(1) == n).all()
        assert float((block.double() * mask).sum()) == pytest.approx(_brute_force_best(block, n), abs=1e-6)


def test_transposable_mask_is_nm_along_both_dims_on_a_whole_weight():
    w = torch.randn(16, 24)
    mask = transposable_mask(w.abs(), 2, 4)
    assert check_nm(mask, 2, 4) == 0 and check_nm(mask.T.contiguous(), 2, 4) == 0
    assert int(mask.sum()) == w.numel() // 2
    # each block is the per-block optimum: compare with the best candidate by enumeration
    cands = transposable_candidates(2, 4).double()
    block = w[4:8, 8:12].abs().double()
    assert float((block * mask[4:8, 8:12]).sum()) == pytest.approx(float((cands * block).sum((1, 2)).max()))


def test_transposable_candidate_counts_match_oeis():
    """Oracle: OEIS A001499 (4x4 0/1 matrices with two 1s per row and column: 90) and 4! permutations."""
    assert transposable_candidates(2, 4).shape[0] == 90
    assert transposable_candidates(1, 4).shape[0] == 24
    assert transposable_candidates(3, 4).shape[0] == 24


def test_partial_mask_goes_from_dense_to_nm_and_nests():
    s = torch.rand(8, 32)
    assert partial_nm_mask(s, 2, 4, 0.0).all()
    assert torch.equal(partial_nm_mask(s, 2, 4, 1.0), nm_mask(s, 2, 4))
    half = partial_nm_mask(s, 2, 4, 0.5)
    assert float(half.float().mean()) == pytest.approx(0.75)  # half the 64 groups keep 2 of 4, half keep 4
    quarter = partial_nm_mask(s, 2, 4, 0.25)
    assert (half <= quarter).all()  # pruning more groups never regrows one


def test_sr_ste_gradient_equals_the_hand_derived_case():
    """Oracle by hand: W=[4,-3,2,1] keeps (4,-3) under 2:4; loss = sum(c * W~) with c=[1,2,3,4] has
    dL/dW = c + lambda*(1-mask)*W = [1, 2, 3 + 2*lambda, 4 + 1*lambda]."""
    lam = 0.5
    w = torch.tensor([[4.0, -3.0, 2.0, 1.0]], requires_grad=True)
    mask = nm_mask(w.detach().abs(), 2, 4)
    eff = SRSTE(lambda_w=lam).weight(w, mask, 0, 1)
    assert eff.tolist() == [[4.0, -3.0, 0.0, 0.0]]
    (eff * torch.tensor([[1.0, 2.0, 3.0, 4.0]])).sum().backward()
    assert w.grad.tolist() == [[1.0, 2.0, 3.0 + 2 * lam, 4.0 + 1 * lam]]


def test_fixed_mask_gradient_is_masked():
    w = torch.tensor([[4.0, -3.0, 2.0, 1.0]], requires_grad=True)
    mask = nm_mask(w.detach().abs(), 2, 4)
    Fixed().weight(w, mask, 0, 1).sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0, 0.0, 0.0]]


def test_bidirectional_linear_uses_the_other_mask_in_the_input_gradient():
    """Oracle: y = x (W*mf)^T, dx = dy (W*mb), dW = dy^T x (dense)."""
    torch.manual_seed(1)
    w = torch.randn(8, 8)
    mf, mb = nm_mask(w.abs(), 2, 4), nm_mask(w.abs().T, 2, 4).T
    x = torch.randn(3, 8, requires_grad=True)
    wf = (w * mf).requires_grad_(True)
    y = BidirectionalLinear.apply(x, wf, w * mb, None)
    gy = torch.randn_like(y)
    y.backward(gy)
    torch.testing.assert_close(y, x.detach() @ (w * mf).T)
    torch.testing.assert_close(x.grad, gy @ (w * mb))
    torch.testing.assert_close(wf.grad, gy.T @ x.detach())


def test_controller_bidirectional_masks_run_along_the_output_dim():
    lin = torch.nn.Linear(8, 8, bias=False)
    ctl = MaskController({"l": lin}, SRSTE(lambda_w=0.0), PatternSchedule(((0, NMPattern(2, 4)),)), 2,
                         bidirectional=True)
    ctl.update(0)
    assert check_nm(ctl.masks["l"], 2, 4) == 0 and check_nm(ctl.bmasks["l"].T.contiguous(), 2, 4) == 0
    ctl.attach()
    x = torch.randn(2, 8, requires_grad=True)
    lin(x).sum().backward()
    w = lin.weight.detach()
    torch.testing.assert_close(x.grad, torch.ones(2, 8) @ (w * ctl.bmasks["l"]))
    ctl.detach()
    assert "forward" not in lin.__dict__


def test_decay_factor_falls_linearly_to_zero():
    d = Decay(start=2, end=6)
    assert [d.factor(s, 10) for s in (0, 2, 4, 6, 9)] == [1.0, 1.0, 0.5, 0.0, 0.0]
    w = torch.tensor([[4.0, -3.0, 2.0, 1.0]])
    assert d.weight(w, nm_mask(w.abs(), 2, 4), 4, 10).tolist() == [[4.0, -3.0, 1.0, 0.5]]


def test_schedule_patterns_and_ramp():
    s = PatternSchedule(((0, NMPattern(2, 4)), (3, NMPattern(1, 4)), (5, NMPattern(2, 4))), ramp=(0, 4, "linear"))
    assert [str(s.pattern_at(t)) for t in range(7)] == ["2:4", "2:4", "2:4", "1:4", "1:4", "2:4", "2:4"]
    assert s.switches(7) == [[0, "2:4"], [3, "1:4"], [5, "2:4"]]
    assert [s.fraction_at(t) for t in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]
    assert PatternSchedule(((2, NMPattern(2, 4)),)).pattern_at(1) is None  # dense before the first point


def test_flip_rate_counts_changed_mask_bits():
    """Oracle: swapping the order of two weights of one group flips exactly 2 of 16 mask bits."""
    lin = torch.nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]] * 4))
    ctl = MaskController({"l": lin}, SRSTE(), PatternSchedule(((0, NMPattern(2, 4)),)), 3)
    assert ctl.update(0)["flip_rate"] == 0.5  # from dense: the 8 pruned bits changed
    assert ctl.update(1)["flip_rate"] == 0.0
    with torch.no_grad():
        lin.weight[0, 3] = 10.0  # now keeps (0, 3) in row 0 instead of (0, 1)
    assert ctl.update(2)["flip_rate"] == 2 / 16


def test_ste_quantize_forward_is_the_format_and_backward_passes_through():
    from nmx import formats

    fmt = formats.get("mxfp4")
    w = torch.randn(4, 64, requires_grad=True)
    q = ste_quantize(w, fmt)
    assert torch.equal(q.detach(), fmt.quantize(w.detach(), dim=-1))
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
