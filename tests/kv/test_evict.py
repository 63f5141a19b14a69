"""Eviction methods on hand-made scores and attention maps: each keeps exactly the positions its
definition names (the oracle is the definition, worked by hand in each test)."""

import pytest
import torch

from nmx.errors import InputError
from nmx.kv import EvictSpec, get_method, keep_mask, methods
from nmx.kv.evict import ScoreInput


def kept(mask: torch.Tensor) -> list:
    """[b, h, n] bool -> positions kept per head of batch row 0."""
    return [torch.nonzero(m).flatten().tolist() for m in mask[0]]


def score_input(n=10, heads=2, attention=None, state=None, keys=None, seed=0, pool=7, window=0):
    keys = keys if keys is not None else torch.randn(1, heads, n, 4)
    return ScoreInput(keys=keys, attention=attention, state=state, layer=0, seen=n, seed=seed, pool=pool,
                      window=window)


def select(method, x, budget, sinks=None, window=None):
    spec = EvictSpec(method, budget=budget, sinks=sinks, window=window)
    s, w = spec.protected(budget)
    return keep_mask(get_method(method).score(x), x.keys.shape[1], budget, s, w)


def test_keep_mask_protects_sinks_and_window_then_takes_the_best():
    scores = torch.tensor([[[9.0, 0, 5, 1, 7, 2, 3, 8, 0, 0]]])  # one head
    # sinks {0, 1}, window {8, 9}, 2 free slots: best of positions 2..7 are 7 (8.0) and 4 (7.0)
    assert kept(keep_mask(scores, 1, 6, 2, 2)) == [[0, 1, 4, 7, 8, 9]]
    # ties go to the older token
    assert kept(keep_mask(torch.zeros(1, 1, 6), 1, 3, 0, 1)) == [[0, 1, 5]]
    assert kept(keep_mask(scores, 1, 20, 2, 2)) == [list(range(10))]  # under budget: all
    with pytest.raises(InputError, match="smaller than sinks"):
        keep_mask(scores, 1, 3, 2, 2)


def test_streaming_keeps_sinks_and_the_recent_window():
    assert kept(select("streaming", score_input(10), budget=6)) == [[0, 1, 2, 3, 8, 9]] * 2  # 4 sinks by default
    assert kept(select("streaming", score_input(10), budget=5, sinks=1)) == [[0, 6, 7, 8, 9]] * 2


def test_recent_keeps_only_the_window():
    assert kept(select("recent", score_input(10), budget=4)) == [[6, 7, 8, 9]] * 2
    with pytest.raises(InputError, match="recent keeps 0 sinks"):
        EvictSpec("recent", budget=4, sinks=2)


def test_h2o_keeps_heavy_hitters_per_head_plus_recent():
    """Accumulated attention over two queries; head 0's heavy hitters are 1 and 4, head 1's are 0 and 3."""
    att = torch.zeros(1, 2, 2, 8)
    att[0, 0, 0, [1, 4, 6]] = torch.tensor([0.5, 0.3, 0.2])
    att[0, 0, 1, [1, 4, 7]] = torch.tensor([0.2, 0.3, 0.5])
    att[0, 1, 0, [0, 3, 5]] = torch.tensor([0.6, 0.2, 0.2])
    att[0, 1, 1, [3, 5, 7]] = torch.tensor([0.5, 0.1, 0.4])
    h2o = get_method("h2o")
    state = h2o.observe(None, att)
    assert torch.allclose(state[0, 0, [1, 4]], torch.tensor([0.7, 0.6]))
    x = score_input(8, attention=att, state=state)
    assert kept(select("h2o", x, budget=4)) == [[1, 4, 6, 7], [0, 3, 6, 7]]  # window = budget // 2
    state = h2o.observe(state, att)  # accumulates
    assert torch.allclose(state[0, 0, 1], torch.tensor(1.4))


def test_tova_drops_the_lowest_last_query_attention_averaged_over_heads():
    att = torch.zeros(1, 2, 2, 6)
    att[0, :, 0] = torch.tensor([1.0, 0, 0, 0, 0, 0])  # earlier query: ignored by TOVA
    att[0, 0, 1] = torch.tensor([0.05, 0.4, 0.1, 0.05, 0.2, 0.2])
    att[0, 1, 1] = torch.tensor([0.05, 0.0, 0.5, 0.05, 0.2, 0.2])
    # head mean: [0.05, 0.2, 0.3, 0.05, 0.2, 0.2]; keep 4: positions 2 (0.3), then 1, 4, 5 (0.2, older first)
    assert kept(select("tova", score_input(6, attention=att), budget=4)) == [[1, 2, 4, 5]] * 2


def test_snapkv_votes_of_the_window_are_pooled():
    """Votes = attention of the last `window` queries summed; avg-pooled with kernel 3 (zero padding counts)."""
    att = torch.zeros(1, 1, 3, 12)
    att[0, 0, 0, 9] = 1.0  # not in the 2-query observation window: ignored
    att[0, 0, 1, 2] = 0.9
    att[0, 0, 2, 6] = 0.6
    x = score_input(12, heads=1, attention=att, pool=3, window=2)
    # pooled: positions 1..3 get 0.3, positions 5..7 get 0.2; window = last 2 (10, 11); 4 free slots
    assert kept(select("snapkv", x, budget=6, window=2)) == [[1, 2, 3, 5, 10, 11]]
    with pytest.raises(InputError, match="odd"):
        EvictSpec("snapkv", budget=8, pool=4)
    with pytest.raises(InputError, match="pooling kernel"):
        EvictSpec("h2o", budget=8, pool=3)


def test_knorm_keeps_the_smallest_keys_per_head():
    keys = torch.zeros(1, 2, 6, 2)
    keys[0, 0, :, 0] = torch.tensor([5.0, 1, 4, 2, 3, 6])
    keys[0, 1, :, 1] = torch.tensor([1.0, 2, 3, 4, 5, 6])
    assert kept(select("knorm", score_input(6, keys=keys), budget=3)) == [[1, 3, 4], [0, 1, 2]]


def test_random_is_seeded_per_head_and_keeps_the_protected():
    x = score_input(64, heads=2, seed=3)
    a = select("random", x, budget=16, sinks=2, window=4)
    assert torch.equal(a, select("random", score_input(64, heads=2, seed=3, keys=x.keys), budget=16, sinks=2, window=4))
    b = select("random", score_input(64, heads=2, seed=4, keys=x.keys), budget=16, sinks=2, window=4)
    assert not torch.equal(a, b)
    assert (a.sum(-1) == 16).all() and not torch.equal(a[0, 0], a[0, 1])
    assert a[..., :2].all() and a[..., -4:].all()


def test_budget_validation_names_the_field():
    with pytest.raises(InputError, match=r"evict.budget: 10 tokens is smaller than sinks \+ window \(4 \+ 8\)"):
        EvictSpec("streaming", budget=10, window=8)
    with pytest.raises(InputError, match="exactly one of budget"):
        EvictSpec("streaming")
    with pytest.raises(InputError, match="did you mean 'h2o'"):
        EvictSpec("h2p", budget=8)
    assert EvictSpec("h2o", budget=10).protected(10) == (0, 5)
    assert {m["name"] for m in methods()} == {"streaming", "recent", "random", "knorm", "h2o", "tova", "snapkv"}
    assert [m["name"] for m in methods() if m["needs_attention"]] == ["h2o", "tova", "snapkv"]
