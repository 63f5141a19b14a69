"""Eviction methods: each one small class with one scoring method (like a kvpress "press").

A method scores the cached tokens of one layer (higher = more worth keeping); `keep_mask`
turns scores into the kept set: the first `sinks` and the last `window` tokens are always
kept, and the remaining budget goes to the highest-scoring tokens in between (ties go to the
older token). Scores are per KV head where the method defines them per head (`per_head`),
else one score per layer shared by all heads.

method     score (higher = keep)                                           attention  per head  sinks  window
streaming  recency: attention sinks + recent window (StreamingLLM)         no         shared    4      0
recent     recency, no sinks: the window-only baseline                     no         shared    0*     0
random     uniform draws from a generator seeded by (seed, layer, seen)    no         yes       0      0
knorm      minus the key's L2 norm: low-norm keys kept (as kvpress)        no         yes       0      0
h2o        attention accumulated over every query so far (heavy hitters)   yes        yes       0      b // 2
tova       the newest query's attention, averaged over the layer's heads   yes        shared    0      0
snapkv     attention of this forward's last `window` queries (observation  yes        yes       0      min(32, b // 2)
           window), summed, average-pooled over the prefix (the window itself is not pooled) (kernel `pool`, default 7)
(b: the budget; *: fixed)

Attention here is the softmax probability of each query head, averaged over the query heads
that share a KV head (GQA). Methods that need it read it from the attention module's output,
which only eager attention returns. SnapKV is defined on the prefill; here it also runs on
each later forward that overflows the budget, with that forward's queries as the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from nmx.errors import InputError, did_you_mean


@dataclass(frozen=True)
class ScoreInput:
    """What a method may look at, for one layer after one forward."""

    keys: torch.Tensor  # [b, h, n, d]: the cached keys (dequantized), oldest first
    attention: torch.Tensor | None  # [b, h, q, n]: this forward's attention probabilities per KV head
    state: torch.Tensor | None  # [b, h, n]: the method's running statistic (after `observe`)
    layer: int
    seen: int  # tokens the layer has seen, this forward's included
    seed: int
    pool: int
    window: int = 0  # the protected recent tokens (SnapKV's observation window)


class Method:
    name: ClassVar[str]
    needs_attention: ClassVar[bool] = False
    per_head: ClassVar[bool] = True
    default_sinks: ClassVar[int] = 0
    fixed_sinks: ClassVar[int | None] = None
    keeps_state: ClassVar[bool] = False

    def default_window(self, budget: int) -> int:
        return 0

    def observe(self, state: torch.Tensor | None, attention: torch.Tensor | None) -> torch.Tensor | None:
        """Update the running per-token statistic with this forward's attention ([b, h, n] or None)."""
        return None

    def score(self, x: ScoreInput) -> torch.Tensor:
        """[b, h, n] or [b, 1, n] (shared by the heads); higher = keep."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "needs_attention": self.needs_attention, "per_head": self.per_head,
                "doc": (self.__doc__ or "").strip()}


def _recency(x: ScoreInput) -> torch.Tensor:
    n = x.keys.shape[-2]
    return torch.arange(n, dtype=torch.float32, device=x.keys.device).expand(x.keys.shape[0], 1, n)


class Streaming(Method):
    """StreamingLLM (Xiao et al., 2023): the first tokens (attention sinks) and the most recent ones."""

    name = "streaming"
    per_head = False
    default_sinks = 4

    def score(self, x):
        return _recency(x)


class Recent(Method):
    """The most recent tokens only: a sliding window without sinks (the baseline that shows
    the attention-sink effect)."""

    name = "recent"
    per_head = False
    fixed_sinks = 0

    def score(self, x):
        return _recency(x)


class Random(Method):
    """Uniformly random tokens (per head), from a generator seeded by (seed, layer, tokens seen)."""

    name = "random"

    def score(self, x):
        b, h, n, _ = x.keys.shape
        g = torch.Generator().manual_seed((x.seed * 1_000_003 + x.layer * 10_007 + x.seen) % (2**63))
        return torch.rand(b, h, n, generator=g).to(x.keys.device)


class KNorm(Method):
    """Keys with the smallest L2 norm are kept (Devoto et al., 2024; kvpress KnormPress)."""

    name = "knorm"

    def score(self, x):
        return -x.keys.float().norm(dim=-1)


class H2O(Method):
    """Heavy hitters (Zhang et al., 2023): attention accumulated over all queries so far, plus a
    recent window (by default half the budget, the paper's equal split)."""

    name = "h2o"
    needs_attention = True
    keeps_state = True

    def default_window(self, budget):
        return budget // 2

    def observe(self, state, attention):
        acc = attention.sum(dim=2)
        return acc if state is None else state + acc

    def score(self, x):
        return x.state


class TOVA(Method):
    """Token Omission Via Attention (Oren et al., 2024): drop the tokens with the lowest attention
    from the newest query, averaged over all heads of the layer."""

    name = "tova"
    needs_attention = True
    per_head = False

    def score(self, x):
        return x.attention[:, :, -1, :].mean(dim=1, keepdim=True)


class SnapKV(Method):
    """SnapKV (Li et al., 2024): the observation window's queries vote for prefix tokens; votes are
    average-pooled over the prefix (kernel `pool`) so that neighbours of important tokens stay."""

    name = "snapkv"
    needs_attention = True

    def default_window(self, budget):
        return min(32, budget // 2)

    def score(self, x):
        att = x.attention[:, :, -max(x.window, 1):]  # the observation window's queries (this forward's last)
        b, h, q, n = att.shape
        votes = att.sum(dim=2)
        # pool the prefix only (as SnapKV does): the protected window's own votes must not spill into
        # the scores of the last prefix tokens through the pooling kernel
        prefix = n - min(x.window, n)
        if prefix == 0:
            return votes
        pooled = torch.nn.functional.avg_pool1d(votes[..., :prefix].reshape(b * h, 1, prefix), kernel_size=x.pool,
                                                stride=1, padding=x.pool // 2)
        return torch.cat([pooled.reshape(b, h, prefix), votes[..., prefix:]], dim=-1)


METHODS: dict[str, Method] = {m.name: m for m in (Streaming(), Recent(), Random(), KNorm(), H2O(), TOVA(), SnapKV())}
SNAPKV_POOL = 7


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise InputError(f"evict.method: unknown eviction method {name!r}{did_you_mean(name, METHODS)} "
                         f"(known: {', '.join(METHODS)})")
    return METHODS[name]


def methods() -> list[dict]:
    """One row per registered eviction method."""
    return [m.describe() for m in METHODS.values()]


def keep_mask(scores: torch.Tensor, heads: int, budget: int, sinks: int, window: int) -> torch.Tensor:
    """Which of n cached tokens to keep ([b, heads, n] bool, exactly min(n, budget) per head).

    `scores`: [b, heads or 1, n], higher = keep. Kept: positions < sinks, positions >= n - window,
    and the `budget - sinks - window` best-scoring others (ties: the older token)."""
    b, _, n = scores.shape
    if budget < sinks + window:
        raise InputError(f"evict.budget: {budget} is smaller than sinks + window ({sinks} + {window})")
    if n <= budget:
        return torch.ones(b, heads, n, dtype=torch.bool, device=scores.device)
    protect = torch.zeros(n, dtype=torch.bool, device=scores.device)
    protect[:sinks] = True
    if window:
        protect[n - window:] = True
    free = budget - sinks - window
    s = scores.float().masked_fill(protect, float("-inf")).expand(b, heads, n)
    keep = protect.expand(b, heads, n).clone()
    if free:
        best = torch.sort(s, dim=-1, descending=True, stable=True).indices[..., :free]
        keep.scatter_(-1, best, True)
    return keep
