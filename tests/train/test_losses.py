"""Objectives against hand computations (float64 loops over the softmax definition)."""

import math

import pytest
import torch

from nmx.train.losses import KD, ce_loss, kd_loss


def _hand_kl(student, teacher, tau):
    """tau^2 * mean over rows of sum_v p_t (log p_t - log p_s), softmax written out in plain Python."""
    total = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        zs = [x / tau for x in s_row]
        zt = [x / tau for x in t_row]
        ls = [x - math.log(sum(math.exp(y) for y in zs)) for x in zs]
        lt = [x - math.log(sum(math.exp(y) for y in zt)) for x in zt]
        total += sum(math.exp(a) * (a - b) for a, b in zip(lt, ls, strict=True))
    return tau**2 * total / len(student)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_kd_loss_equals_a_hand_computed_kl(tau):
    student = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]
    teacher = [[0.0, 1.0, 3.0], [0.5, 2.0, 0.0]]
    got = kd_loss(torch.tensor(student), torch.tensor(teacher), tau)
    assert float(got) == pytest.approx(_hand_kl(student, teacher, tau), rel=1e-6)


def test_kd_objective_scores_the_predicting_positions_and_is_zero_for_the_teacher_itself():
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    assert float(KD()(logits, ids, logits.clone())) == pytest.approx(0.0, abs=1e-7)
    other = torch.randn(2, 5, 7)
    want = _hand_kl(logits[:, :-1].reshape(-1, 7).tolist(), other[:, :-1].reshape(-1, 7).tolist(), 1.0)
    assert float(KD()(logits, ids, other)) == pytest.approx(want, rel=1e-5)


def test_ce_loss_is_the_mean_next_token_nll():
    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]]])
    ids = torch.tensor([[0, 1, 0]])
    # predicts ids[1]=1 from position 0 and ids[2]=0 from position 1
    want = (-(1 - math.log(1 + math.e)) - (2 - math.log(math.exp(2) + 1))) / 2
    assert float(ce_loss(logits, ids)) == pytest.approx(want, rel=1e-6)
