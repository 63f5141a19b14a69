"""Merging evicted tokens into their most similar kept neighbour (CaM / D2O style)."""

import torch

from nmx.kv import merge_evicted


def test_merge_folds_into_the_most_similar_kept_key_and_preserves_the_weighted_sum():
    keys = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.8], [-1.0, 0.0]]]])  # [1, 1, 5, 2]
    values = torch.arange(10, dtype=torch.float32).reshape(1, 1, 5, 2)
    mass = torch.tensor([[[1.0, 2.0, 1.0, 1.0, 1.0]]])
    keep = torch.tensor([[[True, True, False, False, True]]])
    k, v, m, changed = merge_evicted(keys, values, mass, keep)
    # token 2 is closest (cosine) to token 0, token 3 to token 1; token 4 receives nothing
    assert changed.tolist() == [[[True, True, False, False, False]]]
    assert m[0, 0, [0, 1, 4]].tolist() == [2.0, 3.0, 1.0]
    assert torch.allclose(k[0, 0, 0], (keys[0, 0, 0] + keys[0, 0, 2]) / 2)
    assert torch.allclose(v[0, 0, 1], (2 * values[0, 0, 1] + values[0, 0, 3]) / 3)
    assert torch.equal(k[0, 0, 4], keys[0, 0, 4]) and torch.equal(v[0, 0, 4], values[0, 0, 4])  # untouched, bit for bit
    # oracle: sum(m * x) over the kept tokens after = over all tokens before
    for before, after in ((keys, k), (values, v)):
        total = (before * mass[..., None]).sum(2)
        assert torch.allclose((after * m[..., None])[keep].sum(0), total[0, 0])


def test_merge_is_per_head_and_conserves_mass_on_random_data():
    torch.manual_seed(0)
    keys, values = torch.randn(2, 3, 40, 8), torch.randn(2, 3, 40, 8)
    mass = torch.randint(1, 4, (2, 3, 40)).float()
    keep = torch.zeros(2, 3, 40, dtype=torch.bool)
    for b in range(2):
        for h in range(3):
            keep[b, h, torch.randperm(40)[:12]] = True
    k, v, m, _ = merge_evicted(keys, values, mass, keep)
    assert torch.allclose((m * keep).sum(-1), mass.sum(-1))
    for before, after in ((keys, k), (values, v)):
        want = (before * mass[..., None]).sum(2)
        got = (after * (m * keep)[..., None]).sum(2)
        assert torch.allclose(got, want, atol=1e-5)
