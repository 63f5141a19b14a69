"""Pruning methods and calibration statistics.

Oracles: float64 numpy sums for LayerStats; hand arithmetic for Wanda; for SparseGPT a plain
float64 transcription of the published reference (IST-DASLab/sparsegpt `fasterprune`, N:M
branch), brute-force least-squares optima over every 2:4 mask of tiny layers, the closed-form
single-weight OBS update, and an explicit grid check for joint quantization."""

import itertools

import numpy as np
import pytest
import torch

from nmx.errors import InputError
from nmx.sparsity.masks import check_nm, mask_for, nm_mask
from nmx.sparsity.methods import METHODS, LayerStats, get_method
from nmx.sparsity.patterns import Unstructured
from nmx.sparsity.sparsegpt import sparsegpt

# ---- helpers ------------------------------------------------------------------------------------


def llm_like(seed: int, rows: int, cols: int, tokens: int):
    """W ~ N(0, 1); inputs with a shared component (correlated channels) and log-normal
    channel scales (a few loud channels), as LLM activations have."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    Z = torch.randn(tokens, cols, generator=g, dtype=torch.float64)
    shared = torch.randn(tokens, 1, generator=g, dtype=torch.float64)
    X = (Z + shared) * torch.exp(torch.randn(cols, generator=g, dtype=torch.float64))
    return W, X


def hessian_of(X: torch.Tensor) -> torch.Tensor:
    return 2.0 / X.shape[0] * X.T @ X


def recon_error(W, W_hat, X) -> float:
    """‖(W − Ŵ) Xᵀ‖²: the layer-output error on the calibration tokens."""
    return float(((W - W_hat) @ X.T).square().sum())


def stats_of(X: torch.Tensor, hessian: bool = True) -> LayerStats:
    stats = LayerStats(X.shape[-1], hessian=hessian)
    stats.add(X)
    return stats


# ---- registry -----------------------------------------------------------------------------------


def test_registry_names_and_needs():
    assert list(METHODS) == ["magnitude", "wanda", "sparsegpt"]
    assert {n: get_method(n).needs for n in METHODS} == {
        "magnitude": "nothing", "wanda": "input_norms", "sparsegpt": "hessian"}
    assert get_method(" Wanda ") is METHODS["wanda"]


@pytest.mark.parametrize("name,hint", [("wnada", "did you mean 'wanda'"), ("sparse-gpt", "did you mean 'sparsegpt'"),
                                       ("obs", "methods: magnitude, wanda, sparsegpt"), ("", "non-empty"),
                                       (None, "non-empty")])
def test_unknown_methods(name, hint):
    with pytest.raises(InputError, match=hint):
        get_method(name)


# ---- LayerStats ---------------------------------------------------------------------------------


def test_layer_stats_streaming_equals_one_shot_float64():
    batches = [torch.randn(2, 7, 12), torch.randn(5, 12), torch.randn(1, 3, 4, 12).half()]
    stats = LayerStats(12, hessian=True)
    for b in batches:
        stats.add(b)
    X = np.concatenate([b.double().reshape(-1, 12).numpy() for b in batches])  # the oracle: all tokens at once
    assert stats.tokens == X.shape[0] == 14 + 5 + 12
    np.testing.assert_allclose(stats.input_sq_norms.numpy(), (X**2).sum(0), rtol=1e-12)
    np.testing.assert_allclose(stats.input_norms.numpy(), np.sqrt((X**2).sum(0)), rtol=1e-12)
    np.testing.assert_allclose(stats.hessian.numpy(), 2.0 / X.shape[0] * X.T @ X, rtol=1e-12, atol=1e-14)
    assert stats.hessian.dtype == torch.float64


def test_layer_stats_memory_does_not_grow_with_batches():
    stats = LayerStats(16, hessian=True)

    def held() -> int:
        return sum(v.numel() for v in vars(stats).values() if isinstance(v, torch.Tensor))

    stats.add(torch.randn(8, 16))
    first = held()
    for _ in range(50):
        stats.add(torch.randn(8, 16))
    assert held() == first == 16 + 16 * 16
    assert stats.tokens == 51 * 8


def test_layer_stats_bad_input():
    with pytest.raises(InputError, match=r"\[\.\.\., 8\]"):
        LayerStats(8).add(torch.randn(4, 9))
    with pytest.raises(InputError, match="NaN or Inf"):
        LayerStats(2).add(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(InputError, match="no calibration inputs"):
        _ = LayerStats(8, hessian=True).hessian
    with pytest.raises(InputError, match="hessian=True"):
        _ = stats_of(torch.randn(4, 8), hessian=False).hessian
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InputError):
            LayerStats(bad)


# ---- magnitude and Wanda ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("pattern", ["2:4", "1:8", 0.5, "0.3:layer"])
def test_methods_keep_the_pattern_and_leave_the_input_alone(name, pattern):
    W, X = llm_like(0, 8, 32, 64)
    W = W.float()
    before = W.clone()
    options = {"blocksize": 16} if name == "sparsegpt" else {}
    pruned, mask = get_method(name).prune(W, pattern, stats_of(X.float()), **options)
    assert torch.equal(W, before)
    assert pruned.dtype == W.dtype and mask.dtype == torch.bool and mask.shape == W.shape
    assert (pruned[~mask] == 0).all() and not pruned[~mask].signbit().any()  # exactly +0
    if isinstance(pattern, str) and pattern.count(":") == 1 and "layer" not in pattern:
        n, m = map(int, pattern.split(":"))
        assert check_nm(pruned, n, m) == 0 and (mask.reshape(8, -1, m).sum(-1) == n).all()
    else:
        p = Unstructured(0.5) if pattern == 0.5 else Unstructured(0.3, "layer")
        if p.scope == "row":
            assert ((~mask).sum(1) == p.pruned_count(32)).all()
        else:
            assert int((~mask).sum()) == p.pruned_count(8 * 32)
    again, mask2 = get_method(name).prune(W, pattern, stats_of(X.float()), **options)
    assert torch.equal(again, pruned) and torch.equal(mask2, mask)  # deterministic


def test_magnitude_keeps_the_largest_and_keeps_the_dtype():
    W = torch.randn(4, 16).bfloat16()
    pruned, mask = get_method("magnitude").prune(W, "2:4")
    assert pruned.dtype == torch.bfloat16
    assert torch.equal(mask, nm_mask(W.float().abs(), 2, 4))
    assert torch.equal(pruned, torch.where(mask, W, torch.zeros((), dtype=torch.bfloat16)))


def test_wanda_and_magnitude_disagree_on_a_hand_made_example():
    W = torch.tensor([[1.0, 2.0, 3.0, 4.0, 4.0, 3.0, 2.0, 1.0],
                      [-0.5, 3.0, -2.0, 0.1, 1.0, -1.5, 0.2, 0.4]])
    # 8 calibration tokens, one per input channel: ‖X_j‖₂ = 5, 5, 1, 1, 1, 1, 5, 5
    X = torch.diag(torch.tensor([5.0, 5.0, 1.0, 1.0, 1.0, 1.0, 5.0, 5.0]))
    stats = stats_of(X, hessian=False)
    assert stats.input_norms.tolist() == [5.0, 5.0, 1.0, 1.0, 1.0, 1.0, 5.0, 5.0]
    # magnitude, 2:4: row 0 |W| = 1 2 3 4 | 4 3 2 1        keeps columns 2,3 | 4,5
    #                 row 1 |W| = .5 3 2 .1 | 1 1.5 .2 .4  keeps columns 1,2 | 4,5
    # wanda, |W|·‖X‖:  row 0  = 5 10 3 4 | 4 3 10 5      keeps columns 0,1 | 6,7
    #                 row 1  = 2.5 15 2 .1 | 1 1.5 1 2   keeps columns 0,1 | 5,7
    _, mag = get_method("magnitude").prune(W, "2:4")
    _, wanda = get_method("wanda").prune(W, "2:4", stats)
    cols = lambda mask: [torch.nonzero(r).reshape(-1).tolist() for r in mask]  # noqa: E731
    assert cols(mag) == [[2, 3, 4, 5], [1, 2, 4, 5]]
    assert cols(wanda) == [[0, 1, 6, 7], [0, 1, 5, 7]]
    # unstructured 50% per row, the 4 best of the row's 8 scores: row 0 10 10 5 5 -> 0,1,6,7;
    # row 1 15 2.5 2 2 -> 0,1,2,7 (magnitude: row 0 4 4 3 3 -> 2,3,4,5; row 1 3 2 1.5 1 -> 1,2,4,5)
    _, wanda_u = get_method("wanda").prune(W, 0.5, stats)
    _, mag_u = get_method("magnitude").prune(W, 0.5)
    assert cols(wanda_u) == [[0, 1, 6, 7], [0, 1, 2, 7]]
    assert cols(mag_u) == [[2, 3, 4, 5], [1, 2, 4, 5]]


def test_wanda_equals_magnitude_when_all_input_norms_are_equal():
    W = torch.randn(16, 64)
    X = 3.0 * torch.eye(64)  # every channel: ‖X_j‖₂ = 3
    stats = stats_of(X, hessian=False)
    for pattern in ("2:4", "4:8", 0.6, "0.5:layer"):
        wp, wm = get_method("wanda").prune(W, pattern, stats)
        mp, mm = get_method("magnitude").prune(W, pattern)
        assert torch.equal(wm, mm) and torch.equal(wp, mp)


def test_wanda_compares_within_rows():
    W = torch.tensor([[0.1, 0.2, 0.3, 0.4], [10.0, 20.0, 30.0, 40.0]])
    _, mask = get_method("wanda").prune(W, 0.5, stats_of(torch.eye(4), hessian=False))
    assert mask.tolist() == [[False, False, True, True], [False, False, True, True]]


# ---- calibration required, shapes, options ------------------------------------------------------


@pytest.mark.parametrize("name,what", [("wanda", r"LayerStats\(in_features\)"),
                                       ("sparsegpt", r"LayerStats\(in_features, hessian=True\)")])
def test_methods_that_need_calibration_say_so(name, what):
    with pytest.raises(InputError, match=f"needs calibration: pass stats={what}"):
        get_method(name).prune(torch.randn(4, 8), "2:4")
    with pytest.raises(InputError, match="collected for 16 inputs but the weight"):
        get_method(name).prune(torch.randn(4, 8), "2:4", stats_of(torch.randn(32, 16)))
    with pytest.raises(InputError, match="must be a LayerStats"):
        get_method(name).prune(torch.randn(4, 8), "2:4", torch.ones(8))


def test_sparsegpt_needs_the_hessian_in_its_stats():
    with pytest.raises(InputError, match="hessian=True"):
        get_method("sparsegpt").prune(torch.randn(4, 8), "2:4", stats_of(torch.randn(32, 8), hessian=False))


def test_bad_weights_patterns_and_options():
    stats = stats_of(torch.randn(32, 8))
    for name in METHODS:
        with pytest.raises(InputError, match="2-D weight"):
            get_method(name).prune(torch.randn(8), "2:4", stats)
        with pytest.raises(InputError, match="NaN or Inf"):
            get_method(name).prune(torch.tensor([[float("nan")] * 8]), "2:4", stats)
        with pytest.raises(InputError, match="has 8 entries"):
            get_method(name).prune(torch.randn(4, 8), "2:3", stats)
        with pytest.raises(InputError, match="did you mean '2:4'"):
            get_method(name).prune(torch.randn(4, 8), "4:2", stats)
    with pytest.raises(InputError, match="takes no options"):
        get_method("magnitude").prune(torch.randn(4, 8), "2:4", blocksize=4)
    sg = get_method("sparsegpt")
    with pytest.raises(InputError, match=r"unknown option\(s\) \['block_size'\]"):
        sg.prune(torch.randn(4, 8), "2:4", stats, block_size=4)
    for bad in ({"blocksize": 0}, {"blocksize": 2.0}, {"percdamp": -0.1}, {"percdamp": float("nan")},
                {"quant_group": 4}, {"quantizer": 3, "quant_group": 4}):
        with pytest.raises(InputError):
            sg.prune(torch.randn(4, 8), "2:4", stats, **bad)
    with pytest.raises(InputError, match="multiple of M=4"):
        sg.prune(torch.randn(4, 8), "2:4", stats, blocksize=6)
    with pytest.raises(InputError, match="do not nest"):
        sg.prune(torch.randn(4, 8), "2:4", stats, blocksize=4, quantizer=lambda g: lambda c: c, quant_group=3)
    with pytest.raises(InputError, match="breaks 2:4"):
        sg.prune(torch.randn(4, 8), "2:4", stats, mask=torch.ones(4, 8, dtype=torch.bool))
    with pytest.raises(InputError, match="pattern .* or a fixed mask"):
        sg.prune(torch.randn(4, 8), None, stats)
    with pytest.raises(InputError, match="not positive definite"):
        sg.prune(torch.randn(4, 8), "2:4", stats_of(torch.ones(32, 8)), percdamp=0.0)  # rank-1 H, no dampening


# ---- SparseGPT ----------------------------------------------------------------------------------


def reference_fasterprune_nm(W, H, n, m, blocksize, percdamp=0.01):
    """Float64 transcription of the published SparseGPT `fasterprune` (IST-DASLab/sparsegpt,
    sparsegpt.py), N:M branch: `prunen` = m − n pruned per group, chosen by topk(largest=False)."""
    W, H = W.clone(), H.clone()
    cols = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H[range(cols), range(cols)] += percdamp * torch.mean(torch.diag(H))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    pruned_all = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        pruned = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if i % m == 0:
                tmp = W1[:, i : i + m] ** 2 / torch.diag(Hinv1)[i : i + m].reshape(1, -1) ** 2
                pruned.scatter_(1, i + torch.topk(tmp, m - n, dim=1, largest=False)[1], True)
            q = w.clone()
            q[pruned[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
        pruned_all[:, i1:i2] = pruned
    return W, ~pruned_all


@pytest.mark.parametrize("n,m,blocksize", [(2, 4, 128), (2, 4, 8), (1, 4, 16), (4, 8, 8), (3, 4, 12)])
def test_sparsegpt_matches_the_reference_transcription(n, m, blocksize):
    W, X = llm_like(n * 10 + m, 12, 48, 96)
    X[:, 5] = 0  # a dead input: its column is zeroed, H_55 set to 1
    H = hessian_of(X)
    ref_w, ref_mask = reference_fasterprune_nm(W, H, n, m, blocksize)
    got_w, got_mask = sparsegpt(W, H, f"{n}:{m}", blocksize=blocksize)
    assert torch.equal(got_mask, ref_mask)
    torch.testing.assert_close(got_w, ref_w, rtol=1e-10, atol=1e-12)
    assert (got_w[:, 5] == 0).all()


def brute_force_optimum_2_4(W: torch.Tensor, X: torch.Tensor) -> float:
    """min over every 2:4 mask of each row (C(4,2)² = 36) of the least-squares error with the
    kept weights re-fitted exactly (float64 lstsq): the true optimum of 2:4 reconstruction."""
    choices = [a + b for a in itertools.combinations(range(4), 2) for b in itertools.combinations(range(4, 8), 2)]
    A = torch.stack([X[:, list(S)] for S in choices])  # [36, tokens, 4]
    total = 0.0
    for w in W:
        y = (X @ w)[None, :, None].expand(len(choices), -1, -1)
        fit = torch.linalg.lstsq(A, y).solution
        total += float((y - A @ fit).square().sum(dim=(1, 2)).min())
    return total


def test_sparsegpt_is_near_the_brute_force_optimum_and_far_below_magnitude():
    ratios, mag_ratios = [], []
    for seed in range(20):
        W, X = llm_like(seed, 4, 8, 64)
        best = brute_force_optimum_2_4(W, X)
        W_hat, mask = sparsegpt(W, hessian_of(X), "2:4")
        err = recon_error(W, W_hat, X)
        assert err >= best * (1 - 1e-9)  # nothing beats the optimum: a sanity check of the oracle
        ratios.append(err / best)
        mag_ratios.append(recon_error(W, W * nm_mask(W.abs(), 2, 4), X) / err)
    # measured (torch 2.13 CPU): mean 1.38, max 2.12; magnitude/sparsegpt mean 7.4, min 1.37
    assert np.mean(ratios) < 1.6 and max(ratios) < 3.0
    assert min(mag_ratios) > 1.0 and np.mean(mag_ratios) > 3.0


@pytest.mark.parametrize("q,blocksize,percdamp", [(0, 8, 0.01), (5, 8, 0.01), (1, 2, 0.01), (5, 2, 0.1), (3, 4, 0.0)])
def test_single_weight_obs_update(q, blocksize, percdamp):
    W, X = llm_like(7, 3, 8, 64)
    H = hessian_of(X)
    Hd = H + percdamp * H.diagonal().mean() * torch.eye(8, dtype=torch.float64)  # the documented dampening
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[1, q] = False
    W_hat, out_mask = sparsegpt(W, H, None, mask=mask, blocksize=blocksize, percdamp=percdamp)
    assert torch.equal(out_mask, mask)
    # OBS: with columns < q fixed, the inverse Hessian of the free columns F = q.. is inv(H_FF)
    # (for q = 0 the full H⁻¹); the row changes by δ = −w_q / [H_F⁻¹]_qq · H_F⁻¹[q, :]
    Hinv_F = torch.linalg.inv(Hd[q:, q:])
    expected = W[1].clone()
    expected[q:] -= W[1, q] / Hinv_F[0, 0] * Hinv_F[0]
    assert W_hat[1, q] == 0
    torch.testing.assert_close(W_hat[1], expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(W_hat[1, :q], W[1, :q])
    assert torch.equal(W_hat[[0, 2]], W[[0, 2]])  # nothing pruned there: not touched


@pytest.mark.parametrize("pattern,blocksize", [("2:4", 16), ("1:4", 8), ("4:8", 32), ("2:8", 64), ("1:32", 32)])
def test_sparsegpt_nm_validity_and_exact_zeros(pattern, blocksize):
    W, X = llm_like(3, 8, 64, 128)
    W_hat, mask = sparsegpt(W.float(), hessian_of(X), pattern, blocksize=blocksize)
    n, m = map(int, pattern.split(":"))
    assert check_nm(W_hat, n, m) == 0 and check_nm(mask, n, m) == 0
    assert (mask.reshape(8, -1, m).sum(-1) == n).all()
    assert (W_hat[~mask] == 0).all() and not W_hat[~mask].signbit().any()
    assert W_hat.dtype == torch.float32


@pytest.mark.parametrize("scope", ["row", "layer"])
def test_sparsegpt_unstructured_exact_counts_per_block(scope):
    rows, cols, blocksize, s = 8, 70, 16, 0.3
    W, X = llm_like(4, rows, cols, 128)
    W_hat, mask = sparsegpt(W, hessian_of(X), Unstructured(s, scope), blocksize=blocksize)
    p = Unstructured(s, scope)
    for a in range(0, cols, blocksize):
        b = min(a + blocksize, cols)
        pruned = ~mask[:, a:b]
        if scope == "row":  # the documented cumulative rounding: every row ends with round(s·cols)
            assert (pruned.sum(1) == p.pruned_count(b) - p.pruned_count(a)).all()
        else:
            assert int(pruned.sum()) == p.pruned_count(rows * b) - p.pruned_count(rows * a)
    total = (~mask).sum(1) if scope == "row" else (~mask).sum()
    assert (total == (round(s * cols) if scope == "row" else round(s * (rows * cols)))).all()
    assert (W_hat[~mask] == 0).all()


def grid_quantizer(log: list | None = None):
    """Per row and group: scale = max |kept weight|; values k/8 · scale, k = −8..8 (round half even)."""
    def quantizer(group: torch.Tensor):
        scale = group.abs().amax(dim=1)
        if log is not None:
            log.append((group.clone(), scale.clone()))
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        return lambda col: torch.clamp(torch.round(col / safe * 8), -8, 8) / 8 * scale
    return quantizer


def quantize_without_feedback(W: torch.Tensor, g: int) -> torch.Tensor:
    out = W.clone()
    for a in range(0, W.shape[1], g):
        round_col = grid_quantizer()(W[:, a : a + g])
        for j in range(a, min(a + g, W.shape[1])):
            out[:, j] = round_col(W[:, j])
    return out


@pytest.mark.parametrize("pattern,g,blocksize,compare", [
    ("2:4", 16, 32, True), ("2:4", 4, 16, True), ("2:4", 64, 16, True), ("2:4", None, 32, True),
    (0.5, 16, 32, True), ("0.5:layer", 32, 16, True), (0.5, None, 32, True),
    # 2:8 with groups of 4 or 8: measured 0-10% *worse* than quantizing afterwards (the group's
    # scales are fixed before the pruning updates of its earlier columns land); grid checks only
    ("2:8", 4, 16, False), ("2:8", 8, 16, False),
])
def test_joint_quantization_lands_on_the_grid_and_beats_quantizing_afterwards(pattern, g, blocksize, compare):
    rows, cols = 16, 64
    joint_err = separate_err = 0.0
    for seed in range(3):
        W, X = llm_like(seed, rows, cols, 256)
        H = hessian_of(X)
        log = []
        W_q, mask = sparsegpt(W, H, pattern, blocksize=blocksize, quantizer=grid_quantizer(log), quant_group=g)
        group = g or cols
        assert len(log) == cols // group  # one call per format group, in sweep order
        for k, (seen, scale) in enumerate(log):
            cols_k = slice(k * group, (k + 1) * group)
            assert torch.equal(seen == 0, ~mask[:, cols_k])  # the quantizer saw the group's final mask
            codes = W_q[:, cols_k] / torch.where(scale > 0, scale, 1.0)[:, None] * 8
            assert torch.allclose(codes, codes.round(), atol=1e-9) and (codes.abs() <= 8 + 1e-9).all()
            round_col = grid_quantizer()(seen)  # same scales: every final value is a fixed point
            for j in range(k * group, (k + 1) * group):
                assert torch.equal(round_col(W_q[:, j]) * mask[:, j], W_q[:, j])
        assert (W_q[~mask] == 0).all()
        if isinstance(pattern, str) and ":" in pattern and "layer" not in pattern:
            assert check_nm(W_q, *map(int, pattern.split(":"))) == 0
        W_p, _ = sparsegpt(W, H, pattern, blocksize=blocksize)
        joint_err += recon_error(W, W_q, X)
        separate_err += recon_error(W, quantize_without_feedback(W_p, group), X)
    # measured joint/separate over these 3 seeds (torch 2.13 CPU): 0.86 (2:4 g16), 0.92 (2:4 g4),
    # 0.82 (2:4 g64 and per row), 0.70 (50% g16), 0.60 (50% layer g32), 0.59 (50% per row); 2:8: 1.05, 1.06
    if compare:
        assert joint_err < 0.95 * separate_err


@pytest.mark.parametrize("pattern,g", [("2:4", 4), ("2:8", 4), (0.5, 16), ("0.5:layer", 32)])
def test_identity_quantizer_changes_nothing(pattern, g):
    # with g <= M (or any g for unstructured patterns within a block) the masks are chosen at the
    # same columns as without a quantizer, so an exact "quantizer" must give the same result bit for bit
    W, X = llm_like(5, 8, 64, 128)
    H = hessian_of(X)
    plain = sparsegpt(W, H, pattern, blocksize=32)
    joint = sparsegpt(W, H, pattern, blocksize=32, quantizer=lambda grp: lambda col: col, quant_group=g)
    assert torch.equal(plain[0], joint[0]) and torch.equal(plain[1], joint[1])


def test_quantizer_output_shape_is_checked():
    W, X = llm_like(5, 8, 32, 64)
    with pytest.raises(InputError, match="map a column"):
        sparsegpt(W, hessian_of(X), "2:4", quantizer=lambda grp: lambda col: col[:4], quant_group=8)


def test_sparsegpt_keeps_the_weight_dtype_and_device_and_agrees_with_mask_for_at_zero_sparsity():
    W, X = llm_like(6, 8, 32, 64)
    W_hat, mask = get_method("sparsegpt").prune(W.bfloat16(), 0.5, stats_of(X))
    assert W_hat.dtype == torch.bfloat16 and ((~mask).sum(1) == 16).all()
    W_same, mask_all = sparsegpt(W, hessian_of(X), 0.0)
    assert mask_all.all() and torch.equal(W_same, W)  # nothing pruned, nothing updated
    assert torch.equal(mask_for(torch.ones(2, 4), 0.0), torch.ones(2, 4, dtype=torch.bool))
