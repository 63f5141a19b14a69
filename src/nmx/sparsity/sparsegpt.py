"""SparseGPT (Frantar & Alistarh, ICML 2023): prune with OBS updates from the layer Hessian.

For a linear layer W [rows, cols] and calibration inputs X, H = 2/n XᵀX. SparseGPT prunes
columns left to right; pruning (or rounding) a weight w_i of a row changes the row's later,
not yet fixed, weights by the OBS update −(w_i − q_i)/[H_F⁻¹]_ii · H_F⁻¹[i, later], where F
are the columns from i on. With U the upper Cholesky factor of H⁻¹ (H⁻¹ = UᵀU), row i of
H_F⁻¹ is U_ii · U[i, i:], so every update is one row of U -- the reference implementation's
trick, followed here step by step:

1. dead inputs (diag H = 0: never active in calibration) get H_ii = 1 and their weight
   column is zeroed, as the reference does (they contributed nothing on the calibration data);
2. dampening: H += λI with λ = percdamp · mean(diag H) (default percdamp 0.01);
3. U = upper Cholesky of H⁻¹ (computed in float64; the sweep runs in float32, or in float64
   for a float64 weight);
4. columns are swept in blocks of `blocksize` (default 128): inside a block each column's
   error updates the block's later columns at once; the later blocks get all of the
   block's errors in one matrix product after it (lazy batch updates);
5. mask selection by the saliency w²/U_ii² (= w²/[H_F⁻¹]_ii, the OBS error of pruning w with
   the earlier columns fixed), on the weights as updated so far:
   - N:M: at every M-th column, the n highest of the next M columns of every row are kept
     (the reference's order); `blocksize` must be a multiple of M;
   - unstructured: at the start of each block, per block -- with scope "row" every row of the
     block prunes round(s·b) − round(s·a) weights (block = columns a..b), so every row ends
     with exactly round(s·cols) pruned; with scope "layer" the block's rows·width scores are
     compared together (the reference's per-block threshold) and prune
     round(s·rows·b) − round(s·rows·a), exactly round(s·rows·cols) in all. (The reference
     thresholds with `<=` and can prune one more, or more on ties; nmx keeps exact counts.)
6. a pruned weight becomes exactly 0; its error (w − 0)/U_ii feeds the later columns.

Joint quantization (SparseGPT §3.4, as in its reference code with a GPTQ quantizer): pass
`quantizer` and `quant_group` g. When the sweep reaches a column i that starts a format
group (i a multiple of g), it calls `round_col = quantizer(W[:, i:i+g] * mask[:, i:i+g])` on
the current (already updated) weights of the group, with the pruned ones zeroed -- this
fixes the group's scales; every column j of the group is then `round_col(w_j * mask_j)`
(pruned entries forced to 0), and the rounding error (w_j − q_j)/U_jj is fed back exactly
like a pruning error. The returned kept weights are exactly the quantizer's values (cast to
the weight's dtype: exact for float32/float64 weights, rounded again for bf16/fp16).
The masks of a whole group are chosen before its scales: with g > M the N:M masks of the
group's later M-groups are chosen at its first column, on weights that the group's earlier
columns have not updated yet, so they can differ from pruning without a quantizer (with
g <= M for N:M, or g <= blocksize for unstructured patterns, the masks are chosen exactly as
without one). A group's columns must all be current when its scales are fixed, so every
group must start at a block start or lie inside one block: g divides `blocksize`, or
is a multiple of it; `quant_group=None` means one group per row (per-channel scales, fixed
from the whole row at column 0). The last group of a row may be shorter than g when g does
not divide cols.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from nmx.errors import InputError
from nmx.sparsity.masks import check_nm, keep_top_all, keep_top_rows, nm_mask
from nmx.sparsity.patterns import NMPattern, Pattern, parse_pattern

log = logging.getLogger(__name__)

#: quantizer(group [rows, g]) -> round_col(column [rows]) -> column [rows]
Quantizer = Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]

DEFAULT_BLOCKSIZE = 128
DEFAULT_PERCDAMP = 0.01


def check_weight(weight: torch.Tensor) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise InputError(f"pruning needs a 2-D weight [out, in], got {shape}")
    if not weight.is_floating_point():
        raise InputError(f"pruning needs a floating-point weight, got {weight.dtype}")
    if not bool(torch.isfinite(weight).all()):
        raise InputError("the weight holds NaN or Inf; pruning cannot rank or update it -- fix the checkpoint first")


def inverse_hessian_cholesky(
    hessian: torch.Tensor, percdamp: float = DEFAULT_PERCDAMP
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, dead): U the upper Cholesky factor of (H')⁻¹ in float64, where H' is H with dead
    inputs (diag 0) set to 1 on the diagonal and percdamp · mean(diag) added to the diagonal;
    `dead` marks the dead inputs."""
    H = hessian.detach().to(torch.float64).clone()
    if not bool(torch.isfinite(H).all()):
        raise InputError("the Hessian holds NaN or Inf: the calibration inputs of this layer overflowed")
    diag = H.diagonal()
    dead = diag == 0
    diag[dead] = 1.0
    diag += percdamp * diag.mean()
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) == 0:
        U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if int(info) != 0:
        raise InputError(
            f"the layer Hessian is not positive definite even after dampening (percdamp={percdamp}); "
            "raise percdamp (e.g. 0.1) or calibrate on more tokens"
        )
    return U, dead


def _check_group(quant_group: int | None, blocksize: int, cols: int) -> int:
    if quant_group is None:
        return max(cols, 1)
    if not isinstance(quant_group, int) or isinstance(quant_group, bool) or quant_group < 1:
        raise InputError(f"quant_group must be a positive integer (the format's block size), got {quant_group!r}")
    if blocksize % quant_group and quant_group % blocksize and quant_group < cols:
        raise InputError(
            f"quant_group {quant_group} and blocksize {blocksize} do not nest: a format group must start at a "
            f"block start or lie inside one block; use a blocksize that is a multiple of {quant_group} "
            "(and of M for an N:M pattern), or a quant_group that divides the blocksize"
        )
    return quant_group


def sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    pattern: Pattern | str | float | None,
    *,
    blocksize: int = DEFAULT_BLOCKSIZE,
    percdamp: float = DEFAULT_PERCDAMP,
    mask: Optional[torch.Tensor] = None,
    quantizer: Optional[Quantizer] = None,
    quant_group: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one layer: (pruned weight in the weight's dtype, bool keep-mask).

    `hessian` is H = 2/n XᵀX [cols, cols] (any positive scale gives the same result).
    `mask` (bool [rows, cols], True = keep) fixes the mask instead of choosing it; then
    `pattern` may be None, and an N:M pattern is checked against the mask. See the module
    doc for the algorithm, `quantizer` and `quant_group`. The input weight is not modified.
    """
    check_weight(weight)
    rows, cols = weight.shape
    if not isinstance(hessian, torch.Tensor) or tuple(hessian.shape) != (cols, cols):
        shape = tuple(hessian.shape) if isinstance(hessian, torch.Tensor) else type(hessian).__name__
        raise InputError(f"the Hessian must be [{cols}, {cols}] for a weight with {cols} inputs, got {shape}")
    if not isinstance(blocksize, int) or isinstance(blocksize, bool) or blocksize < 1:
        raise InputError(f"blocksize must be a positive integer, got {blocksize!r}")
    if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not 0 <= percdamp < float("inf"):
        raise InputError(f"percdamp must be a finite number >= 0 (default {DEFAULT_PERCDAMP}), got {percdamp!r}")
    if quantizer is not None and not callable(quantizer):
        raise InputError("quantizer must be callable: quantizer(group [rows, g]) -> round_col(column [rows])")
    if quantizer is None and quant_group is not None:
        raise InputError("quant_group is given without a quantizer; pass quantizer= too, or drop quant_group")
    group = _check_group(quant_group, blocksize, cols) if quantizer is not None else 0

    if pattern is None and mask is None:
        raise InputError("sparsegpt needs a pattern (e.g. '2:4' or 0.5) or a fixed mask=")
    if pattern is not None:
        pattern = parse_pattern(pattern)
    if isinstance(pattern, NMPattern):
        pattern.check_dim(cols)
        if mask is None and blocksize % pattern.m:
            raise InputError(f"blocksize {blocksize} must be a multiple of M={pattern.m} for pattern {pattern}")
    device = weight.device
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (rows, cols):
            raise InputError(f"mask must be a bool tensor [{rows}, {cols}] (True = keep)")
        if isinstance(pattern, NMPattern) and check_nm(mask, pattern):
            raise InputError(f"the given mask breaks {pattern} in {check_nm(mask, pattern)} group(s)")
        keep = mask.to(device).clone()
    else:
        keep = torch.zeros(rows, cols, dtype=torch.bool, device=device)
    if weight.numel() == 0:
        return weight.clone(), keep if mask is not None else torch.ones_like(keep)

    work = torch.float64 if weight.dtype == torch.float64 else torch.float32
    W = weight.detach().to(device=device, dtype=work).clone()
    U, dead = inverse_hessian_cholesky(hessian.to(device), float(percdamp))
    W[:, dead] = 0
    U = U.to(work)
    d = U.diagonal().clone()

    # -- mask selection, one unit at a time: N:M groups, or unstructured blocks ---------------------
    selected = cols if mask is not None else 0  # columns [0, selected) have their mask

    def select_until(upto: int) -> None:
        nonlocal selected
        while selected < upto:
            a = selected
            b = a + pattern.m if isinstance(pattern, NMPattern) else min(a + blocksize, cols)
            score = W[:, a:b].square() / d[a:b].square()
            if isinstance(pattern, NMPattern):
                keep[:, a:b] = nm_mask(score, pattern.n, pattern.m)
            elif pattern.scope == "row":
                keep[:, a:b] = keep_top_rows(score, pattern.pruned_count(b) - pattern.pruned_count(a))
            else:
                keep[:, a:b] = keep_top_all(score, pattern.pruned_count(rows * b) - pattern.pruned_count(rows * a))
            selected = b

    # -- the sweep -----------------------------------------------------------------------------------
    zero = torch.zeros((), dtype=work, device=device)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    round_col: Callable[[torch.Tensor], torch.Tensor] | None = None
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        errors = torch.zeros(rows, i2 - i1, dtype=work, device=device)
        for i in range(i1, i2):
            select_until(i + 1)
            if quantizer is not None and i % group == 0:
                select_until(min(i + group, cols))
                round_col = quantizer(torch.where(keep[:, i : i + group], W[:, i : i + group], zero))
            w = W[:, i].clone()
            q = torch.where(keep[:, i], w, zero)  # +0, not w * False (that gives -0 for w < 0)
            if round_col is not None:
                q = torch.where(keep[:, i], _rounded(round_col, q, rows, work), zero)
            err = (w - q) / d[i]
            W[:, i + 1 : i2] -= err[:, None] * U[i, i + 1 : i2][None, :]
            W[:, i] = q
            errors[:, i - i1] = err
            loss += err.double().square().sum() / 2
        W[:, i2:] -= errors @ U[i1:i2, i2:]
    if log.isEnabledFor(logging.DEBUG):
        log.debug("sparsegpt %dx%d %s: OBS loss estimate %.6g", rows, cols, pattern, float(loss))
    return W.to(weight.dtype), keep


def _rounded(round_col: Callable[[torch.Tensor], torch.Tensor], column: torch.Tensor, rows: int, work) -> torch.Tensor:
    q = round_col(column)
    if not isinstance(q, torch.Tensor) or tuple(q.shape) != (rows,):
        got = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise InputError(f"the quantizer's rounding function must map a column [{rows}] to [{rows}], got {got}")
    return q.to(device=column.device, dtype=work)

