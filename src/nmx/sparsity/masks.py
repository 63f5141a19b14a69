"""Masks from scores: keep the highest scores under a pattern; check N:M validity.

A mask is a bool tensor shaped like the weight, True where a weight is kept. Scores are
laid out like a linear weight [out, in] (any leading dims work: the last dim is the input,
reduction, dim along which N:M groups run; every other dim indexes "rows").

Ties are broken by position: among equal scores the one with the lower index along the
input dim is kept (for `scope="layer"`, the lower row-major index). Masks are therefore a
deterministic function of the scores. NaN scores cannot be ranked and are refused.

Counts are exact: `nm_mask` keeps exactly n per group; `unstructured_mask` with
`scope="row"` prunes exactly round(sparsity * in) weights of every row, with
`scope="layer"` exactly round(sparsity * numel) of the tensor (Python's round: halves to
even; see `Unstructured.pruned_count`).
"""

from __future__ import annotations

from typing import Any

import torch

from nmx.errors import InputError
from nmx.sparsity.patterns import NMPattern, Pattern, Unstructured, parse_pattern


def _scores(scores: Any, what: str = "scores") -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        raise InputError(f"{what} must be a torch.Tensor, got {type(scores).__name__}")
    if scores.is_complex() or scores.dtype == torch.bool:
        raise InputError(f"{what} must be real numbers, got a tensor of {scores.dtype}")
    if scores.dim() == 0:
        raise InputError(f"{what} must have an input dim (shape [out, in]), got a scalar")
    if scores.is_floating_point() and bool(torch.isnan(scores).any()):
        raise InputError(f"{what} contain NaN, which cannot be ranked; check the weights and calibration data")
    return scores


def _keep_first(order: torch.Tensor, keep: int, shape: torch.Size) -> torch.Tensor:
    """A bool mask of `shape`, True at the first `keep` indices of `order` along the last dim."""
    mask = torch.zeros(shape, dtype=torch.bool, device=order.device)
    return mask.scatter_(-1, order[..., :keep], True)


def _descending(scores: torch.Tensor) -> torch.Tensor:
    """Indices sorting the last dim by score, highest first; equal scores keep index order."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the `n` highest scores in every group of `m` consecutive entries of the last dim.

    Ties: the lower index wins. The last dim must be a multiple of m (refused otherwise).
    """
    pattern = NMPattern(n, m)
    scores = _scores(scores)
    pattern.check_dim(scores.shape[-1])
    groups = scores.reshape(*scores.shape[:-1], scores.shape[-1] // m, m)
    return _keep_first(_descending(groups), n, groups.shape).reshape(scores.shape)


def keep_top_rows(scores: torch.Tensor, pruned: int) -> torch.Tensor:
    """Prune exactly `pruned` of the lowest scores of every row (last dim); ties: lower index kept."""
    size = scores.shape[-1]
    if not 0 <= pruned <= size:
        raise InputError(f"cannot prune {pruned} of {size} weights per row")
    return _keep_first(_descending(scores), size - pruned, scores.shape)


def keep_top_all(scores: torch.Tensor, pruned: int) -> torch.Tensor:
    """Prune exactly `pruned` of the lowest scores of the whole tensor; ties: lower row-major index kept."""
    flat = scores.reshape(-1)
    if not 0 <= pruned <= flat.numel():
        raise InputError(f"cannot prune {pruned} of {flat.numel()} weights")
    return _keep_first(_descending(flat), flat.numel() - pruned, flat.shape).reshape(scores.shape)


def unstructured_mask(scores: torch.Tensor, sparsity: float, scope: str = "row") -> torch.Tensor:
    """Prune the fraction `sparsity` of lowest scores, per row (`"row"`) or per tensor (`"layer"`).

    Row scope prunes exactly round(sparsity * in) per row; layer scope exactly
    round(sparsity * numel). Ties: the lower index is kept.
    """
    pattern = Unstructured(sparsity, scope)  # validates both
    scores = _scores(scores)
    if pattern.scope == "row":
        return keep_top_rows(scores, pattern.pruned_count(scores.shape[-1]))
    return keep_top_all(scores, pattern.pruned_count(scores.numel()))


def mask_for(scores: torch.Tensor, pattern: Pattern | str | float) -> torch.Tensor:
    """The keep-mask of `pattern` (anything `parse_pattern` reads) for these scores."""
    pattern = parse_pattern(pattern)
    if isinstance(pattern, NMPattern):
        return nm_mask(scores, pattern.n, pattern.m)
    return unstructured_mask(scores, pattern.sparsity, pattern.scope)


def _nm_args(n: int | NMPattern | str, m: int | None) -> NMPattern:
    if m is None:
        if not isinstance(n, (str, NMPattern)):
            raise InputError(f"check_nm needs both n and m (e.g. check_nm(x, 2, 4)), got n={n!r} only")
        pattern = parse_pattern(n)
        if not isinstance(pattern, NMPattern):
            raise InputError(f"check_nm needs an N:M pattern, got {pattern}")
        return pattern
    return NMPattern(n, m)


def check_nm(tensor_or_mask: torch.Tensor, n: int | NMPattern | str, m: int | None = None) -> int:
    """The number of groups of m consecutive entries (last dim) holding more than n nonzeros
    (True entries of a bool mask; nonzero values otherwise, NaN counts as nonzero).
    0 means the tensor meets the pattern. Call as check_nm(x, 2, 4) or check_nm(x, "2:4").
    A last dim that m does not divide is refused, as everywhere in nmx."""
    pattern = _nm_args(n, m)
    if not isinstance(tensor_or_mask, torch.Tensor):
        raise InputError(f"check_nm takes a torch.Tensor, got {type(tensor_or_mask).__name__}")
    if tensor_or_mask.dim() == 0:
        raise InputError("check_nm needs a tensor with an input dim (shape [out, in]), got a scalar")
    pattern.check_dim(tensor_or_mask.shape[-1])
    nonzero = tensor_or_mask if tensor_or_mask.dtype == torch.bool else tensor_or_mask != 0
    counts = nonzero.reshape(-1, pattern.m).sum(dim=-1)
    return int((counts > pattern.n).sum())


def is_valid(tensor_or_mask: torch.Tensor, n: int | NMPattern | str, m: int | None = None) -> bool:
    """True when every group of m consecutive entries (last dim) holds at most n nonzeros."""
    return check_nm(tensor_or_mask, n, m) == 0
