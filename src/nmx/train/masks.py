"""Mask math for sparse training: pure functions on tensors (no model, no optimizer).

- `nm_mask_along(scores, n, m, dim)`: N:M along any dim (dim -1 is `nmx.sparsity.masks.nm_mask`'s input dim;
  dim 0 groups the *output* dim, i.e. makes Wᵀ N:M — the mask of the input-gradient GEMM dY·W).
- `partial_nm_mask(scores, n, m, fraction)`: gradual density. A `fraction` of the groups of M is pruned to
  N:M, the rest stay dense; the groups pruned first are those that lose the least score (the sum of their
  M−N smallest scores; ties: the lower group index). fraction 0 = dense, 1 = `nm_mask` exactly, so density
  moves from 1 to N/M as the fraction grows.
- `transposable_mask(scores, n, m)`: on every M×M block, N kept in every row AND every column, so both W
  and Wᵀ are N:M. Exact: the block's kept score is linear in the mask, so the best transposable mask of a
  block is the argmax, over every M×M 0/1 matrix with N ones per row and per column, of <scores, mask>;
  those matrices are enumerated once per (N, M) (90 for 2:4, 24 for 1:4, 40320 for 1:8) and the argmax
  is one matmul (Hu et al., ICML'24, do the same for 2:4). Where the enumeration would be too large
  (2:8, 4:8: over 1e8 matrices) a greedy pass is used instead (highest score first, kept while its row and
  column hold fewer than N): still N:M along both dims (at most N per group) but not always the best.
- `flip_count(old, new)`: mask bits that changed (the flip rate is flips / bits).

Ties everywhere are broken by position, so masks are a deterministic function of the scores.
"""

from __future__ import annotations

import itertools
import logging
import math
from functools import lru_cache

import torch

from nmx.errors import InputError
from nmx.sparsity.masks import nm_mask
from nmx.sparsity.patterns import NMPattern

log = logging.getLogger(__name__)

#: enumerate transposable blocks when there are at most this many (else: greedy)
MAX_TRANSPOSABLE_CANDIDATES = 50_000


def nm_mask_along(scores: torch.Tensor, n: int, m: int, dim: int = -1) -> torch.Tensor:
    """N:M keep-mask with the groups of M running along `dim` of a 2-D score tensor."""
    if dim in (-1, scores.dim() - 1):
        return nm_mask(scores, n, m)
    return nm_mask(scores.transpose(dim, -1), n, m).transpose(dim, -1)


def partial_nm_mask(scores: torch.Tensor, n: int, m: int, fraction: float) -> torch.Tensor:
    """Prune round(fraction * groups) groups of M (last dim) to N:M, those losing the least score first."""
    if not 0.0 <= fraction <= 1.0:
        raise InputError(f"the pruned fraction of groups must be in [0, 1], got {fraction}")
    full = nm_mask(scores, n, m)
    if fraction >= 1.0:
        return full
    if fraction <= 0.0:
        return torch.ones_like(full)
    groups = scores.reshape(-1, m).double()
    lost = torch.where(full.reshape(-1, m), torch.zeros_like(groups), groups).sum(-1)
    count = round(fraction * lost.numel())
    order = torch.sort(lost, stable=True).indices[:count]
    pruned = torch.zeros(lost.numel(), dtype=torch.bool, device=scores.device)
    pruned[order] = True
    keep = full.reshape(-1, m) | ~pruned[:, None]
    return keep.reshape(scores.shape)


def _walk_transposable(n: int, m: int, cap: int):
    """Yield the M×M 0/1 matrices with N ones per row and column as tuples of row combinations, stopping
    after cap + 1 of them. A branch stops as soon as a column can no longer reach N ones."""
    rows = list(itertools.combinations(range(m), n))
    cols = [0] * m
    chosen: list[tuple[int, ...]] = []
    found = 0

    def walk():
        nonlocal found
        r = len(chosen)
        if r == m:
            found += 1
            yield tuple(chosen)
            return
        left = m - r - 1  # rows after this one
        for combo in rows:
            if any(cols[c] >= n for c in combo):
                continue
            for c in combo:
                cols[c] += 1
            if all(n - k <= left for k in cols):
                chosen.append(combo)
                yield from walk()
                chosen.pop()
            for c in combo:
                cols[c] -= 1
            if found > cap:
                return

    for block in walk():
        yield block
        if found > cap:
            return


def enumerable(n: int, m: int) -> bool:
    """Whether the transposable blocks of N:M are few enough to enumerate: M <= 4 (at most 90), or N = 1 or
    M - 1 (M! permutation-like blocks, 40320 for M = 8). 2:8 has 1.9e8 and 4:8 1.2e8: greedy."""
    return m <= 4 or (n in (1, m - 1) and math.factorial(m) <= MAX_TRANSPOSABLE_CANDIDATES)


def _count_transposable(n: int, m: int, cap: int) -> int:
    """Number of M×M 0/1 matrices with N ones per row and column, counted up to `cap` (then cap + 1)."""
    return sum(1 for _ in _walk_transposable(n, m, cap))


@lru_cache(maxsize=None)
def transposable_candidates(n: int, m: int) -> torch.Tensor | None:
    """Every M×M bool matrix with exactly N True per row and per column, [C, M, M] in lexicographic
    order of their rows' combinations; None when there are more than MAX_TRANSPOSABLE_CANDIDATES."""
    import numpy as np

    NMPattern(n, m)
    if not enumerable(n, m):
        return None
    found = list(_walk_transposable(n, m, MAX_TRANSPOSABLE_CANDIDATES))
    idx = np.asarray(found, dtype=np.int64)  # [C, m, n]: the kept columns of each row
    out = np.zeros((len(found), m, m), dtype=bool)
    np.put_along_axis(out, idx, True, axis=-1)
    return torch.from_numpy(out)


def check_transposable_shape(shape: tuple[int, ...], m: int, what: str = "weight") -> None:
    if len(shape) != 2 or shape[0] % m or shape[1] % m:
        raise InputError(f"transposable N:M needs both dims of {what} {tuple(shape)} to be multiples of M={m} "
                         f"(it keeps N:M on {m}x{m} blocks); set mask.transposable: false, pick an M that divides "
                         "both, or leave this layer out of mask.targets")


def _blocks(scores: torch.Tensor, m: int) -> torch.Tensor:
    rows, cols = scores.shape
    return scores.reshape(rows // m, m, cols // m, m).permute(0, 2, 1, 3).reshape(-1, m, m)


def _unblock(blocks: torch.Tensor, shape: tuple[int, int], m: int) -> torch.Tensor:
    rows, cols = shape
    return blocks.reshape(rows // m, cols // m, m, m).permute(0, 2, 1, 3).reshape(rows, cols)


def _greedy_transposable(blocks: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Highest score first, kept while its row and its column hold fewer than n (vectorized over blocks)."""
    b = blocks.shape[0]
    order = torch.sort(blocks.reshape(b, -1), dim=-1, descending=True, stable=True).indices
    keep = torch.zeros(b, m * m, dtype=torch.bool, device=blocks.device)
    row_n = torch.zeros(b, m, dtype=torch.long, device=blocks.device)
    col_n = torch.zeros_like(row_n)
    ar = torch.arange(b, device=blocks.device)
    for k in range(m * m):
        idx = order[:, k]
        r, c = idx // m, idx % m
        ok = (row_n[ar, r] < n) & (col_n[ar, c] < n)
        keep[ar, idx] |= ok
        row_n[ar, r] += ok.long()
        col_n[ar, c] += ok.long()
    return keep.reshape(b, m, m)


def transposable_mask(scores: torch.Tensor, n: int, m: int, fraction: float = 1.0) -> torch.Tensor:
    """Keep-mask that is N:M along both dims on every M×M block, keeping the most score (see the module
    doc). With `fraction` < 1, only that fraction of blocks (those losing the least score) is pruned."""
    NMPattern(n, m)
    check_transposable_shape(tuple(scores.shape), m, "the scores")
    blocks = _blocks(scores.detach().float(), m)
    cands = transposable_candidates(n, m)
    if cands is None:
        log.warning("transposable %d:%d: too many candidate blocks to enumerate; using a greedy mask (valid, "
                    "not always the most magnitude)", n, m)
        keep = _greedy_transposable(blocks, n, m)
    else:
        cands = cands.to(blocks.device)
        flat = cands.reshape(cands.shape[0], -1).to(blocks.dtype)  # [C, m*m]
        best = []
        chunk = max(1, (1 << 24) // max(1, cands.shape[0]))
        for i in range(0, blocks.shape[0], chunk):
            totals = blocks[i:i + chunk].reshape(-1, m * m) @ flat.T  # [b, C]
            best.append(torch.argmax(totals, dim=-1))  # first maximum: deterministic
        keep = cands[torch.cat(best)] if best else blocks.bool()
    if fraction < 1.0:
        lost = torch.where(keep, torch.zeros_like(blocks), blocks).double().sum((-1, -2))
        count = round(max(0.0, fraction) * lost.numel())
        pruned = torch.zeros(lost.numel(), dtype=torch.bool, device=blocks.device)
        pruned[torch.sort(lost, stable=True).indices[:count]] = True
        keep = keep | ~pruned[:, None, None]
    return _unblock(keep, tuple(scores.shape), m)


def flip_count(old: torch.Tensor | None, new: torch.Tensor) -> int:
    """Mask bits that differ between two masks (all of them count as flipped when there was none)."""
    if old is None:
        return 0
    return int((old != new).sum())


def kept_fraction(mask: torch.Tensor) -> float:
    return float(mask.sum()) / max(1, mask.numel())


def transposable_count(n: int, m: int, cap: int = MAX_TRANSPOSABLE_CANDIDATES) -> int:
    """How many M×M blocks are N:M along both dims (counted up to `cap`, then cap + 1; slow past ~1e4)."""
    return _count_transposable(n, m, cap)


__all__ = ["nm_mask_along", "partial_nm_mask", "transposable_mask", "transposable_candidates", "flip_count",
           "check_transposable_shape", "kept_fraction", "transposable_count"]
