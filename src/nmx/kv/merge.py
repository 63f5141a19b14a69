"""Merge instead of drop (CaM, Zhang et al. 2024; D2O, Wan et al. 2024): each evicted token is
folded into its most similar kept token of the same head.

For an evicted token e with weight m_e and its target t (the kept token whose key has the
highest cosine similarity with e's key):

    k_t <- (m_t k_t + sum_e m_e k_e) / (m_t + sum_e m_e),   likewise v_t,   m_t <- m_t + sum_e m_e

A token's weight is the number of original tokens folded into it (1 for a plain token), so
sum(m k) and sum(m v) over a head are preserved exactly (up to float rounding): the test's oracle.
Kept tokens that receive nothing keep their values bit for bit.
"""

from __future__ import annotations

import torch


def merge_evicted(
    keys: torch.Tensor, values: torch.Tensor, mass: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold every non-kept token into its most similar kept one.

    keys, values: [b, h, n, d]; mass: [b, h, n] (weights); keep: [b, h, n] bool with the same
    number of kept tokens in every head. Returns (keys, values, mass, changed): the same shapes,
    rows of kept tokens updated (evicted rows are left as they were, to be dropped by the
    caller), `changed` marking the kept tokens that received a merge.
    """
    b, h, n, d = keys.shape
    evicted = ~keep
    n_evict = int(evicted[0, 0].sum())
    if n_evict == 0:
        return keys, values, mass, torch.zeros_like(keep)
    k64, v64, m64 = keys.double(), values.double(), mass.double()
    unit = torch.nn.functional.normalize(k64, dim=-1)
    out_idx = torch.argsort(keep.to(torch.int8), dim=-1, stable=True)[..., :n_evict]  # [b, h, E]
    sim = unit.gather(2, out_idx[..., None].expand(b, h, n_evict, d)) @ unit.transpose(-1, -2)  # [b, h, E, n]
    sim = sim.masked_fill(~keep[:, :, None, :], float("-inf"))
    target = sim.argmax(dim=-1)  # [b, h, E]: index of the most similar kept token
    m_e = m64.gather(2, out_idx)
    add_m = torch.zeros_like(m64).scatter_add_(2, target, m_e)
    tgt = target[..., None].expand(b, h, n_evict, d)
    src = out_idx[..., None].expand(b, h, n_evict, d)
    new_m = m64 + add_m
    changed = keep & (add_m > 0)

    def fold(x: torch.Tensor, x64: torch.Tensor) -> torch.Tensor:
        add = torch.zeros_like(x64).scatter_add_(2, tgt, x64.gather(2, src) * m_e[..., None])
        merged = (x64 * m64[..., None] + add) / new_m[..., None]
        return torch.where(changed[..., None], merged.to(x.dtype), x)

    return fold(keys, k64), fold(values, v64), torch.where(changed, new_m.to(mass.dtype), mass), changed
