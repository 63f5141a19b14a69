"""Regression (issue 5, part B): SnapKV pools the votes of the prefix only. The kvpress side-by-side
(benchmarks/kv_peers.py) found nmx keeping other tokens than SnapKV next to the observation window:
the window's votes for its own tokens leaked into the last prefix tokens through the pooling kernel.
Oracle: SnapKV's definition worked by hand (votes over the prefix, zero-padded average pool of 3)."""

import torch

from nmx.kv import EvictSpec, get_method, keep_mask
from nmx.kv.evict import ScoreInput


def test_window_votes_do_not_spill_into_the_prefix():
    n, window = 10, 2
    att = torch.zeros(1, 1, window, n)
    att[0, 0, :, 8:] = 1.0  # the window attends only to itself (protected anyway)
    att[0, 0, 0, 2] = 0.3  # one vote for position 2
    att[0, 0, 1, 5] = 0.6  # one vote for position 5
    x = ScoreInput(keys=torch.zeros(1, 1, n, 4), attention=att, state=None, layer=0, seen=n, seed=0, pool=3,
                   window=window)
    scores = get_method("snapkv").score(x)[0, 0]
    # prefix 0..7 votes [0, 0, .3, 0, 0, .6, 0, 0] pooled by 3 (zero padding counts): position 7 gets
    # (0 + 0 + pad) / 3 = 0, not (0 + 0 + 2) / 3 as when position 8's votes spilled in
    want = torch.tensor([0, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0])
    torch.testing.assert_close(scores[:8], want)
    spec = EvictSpec("snapkv", budget=4, window=window)
    keep = keep_mask(scores[None, None], 1, 4, *spec.protected(4))
    assert torch.nonzero(keep[0, 0]).flatten().tolist() == [4, 5, 8, 9]  # the best two of the prefix (0.2, older)
