"""Pruning methods: magnitude, Wanda, SparseGPT -- one small class each, one registry.

    method = get_method("wanda")
    stats = LayerStats(layer.in_features, hessian=method.needs == "hessian")
    for x in calibration_inputs_of(layer):      # the model loop feeds the layer's inputs
        stats.add(x)
    w_pruned, mask = method.prune(layer.weight, "2:4", stats)

Every method's `prune(weight [out, in], pattern, stats=None, **options)` returns
(pruned weight in the weight's dtype, bool keep-mask) and leaves `weight` untouched.
Pruned weights are exactly +0. `needs` says what calibration the method wants:
"nothing", "input_norms" (a LayerStats) or "hessian" (a LayerStats built with hessian=True).

- magnitude: score |W_ij|.
- wanda (Sun et al. 2024): score |W_ij| · ‖X_j‖₂, the input channel's norm over all
  calibration tokens; compared within each output row: inside each group of M for N:M,
  across the row for unstructured (the paper's per-output comparison; an
  `Unstructured(..., scope="layer")` pattern compares across the layer instead).
- sparsegpt (Frantar & Alistarh 2023): OBS updates from H = 2/n XᵀX, see
  `nmx.sparsity.sparsegpt` (options: blocksize, percdamp, mask, quantizer, quant_group).

Masks follow `nmx.sparsity.masks`: exact counts, ties kept by lower index, no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from nmx.errors import InputError, registry_get
from nmx.sparsity.masks import mask_for
from nmx.sparsity.patterns import Pattern, parse_pattern
from nmx.sparsity.sparsegpt import check_weight, sparsegpt


class LayerStats:
    """Streaming calibration statistics of one linear layer's inputs, in float64.

    `add(x)` takes inputs shaped [..., in_features]; every vector of the last dim is one
    sample (a token). Memory is fixed: a running Σx² per input channel and, with
    `hessian=True`, a running XᵀX [in, in] -- never the inputs themselves. Buffers live on
    the device of the first batch.
    """

    def __init__(self, in_features: int, hessian: bool = False):
        if not isinstance(in_features, int) or isinstance(in_features, bool) or in_features < 1:
            raise InputError(f"in_features must be a positive integer, got {in_features!r}")
        self.in_features = in_features
        self.collects_hessian = bool(hessian)
        self.tokens = 0
        self._sq: torch.Tensor | None = None
        self._xtx: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        """Accumulate a batch of inputs [..., in_features]."""
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != self.in_features:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(
                f"calibration input must be [..., {self.in_features}] (the layer's inputs), got {shape}"
            )
        x = x.detach().reshape(-1, self.in_features)
        if self._sq is not None:
            x = x.to(self._sq.device)
        x = x.to(torch.float64)
        if not bool(torch.isfinite(x).all()):
            raise InputError("calibration inputs hold NaN or Inf; check the model's dtype (fp16 overflow?)")
        if self._sq is None:
            self._sq = torch.zeros(self.in_features, dtype=torch.float64, device=x.device)
            if self.collects_hessian:
                self._xtx = torch.zeros(self.in_features, self.in_features, dtype=torch.float64, device=x.device)
        self._sq += x.square().sum(dim=0)
        if self._xtx is not None:
            self._xtx.addmm_(x.T, x)
        self.tokens += x.shape[0]

    def _need_tokens(self) -> None:
        if self.tokens == 0:
            raise InputError("no calibration inputs were added to these LayerStats; run calibration text first")

    @property
    def input_sq_norms(self) -> torch.Tensor:
        """Σ over tokens of x_j², per input channel [in] (Wanda's ‖X_j‖₂²), float64."""
        self._need_tokens()
        return self._sq.clone()

    @property
    def input_norms(self) -> torch.Tensor:
        """‖X_j‖₂ per input channel [in], float64."""
        return self.input_sq_norms.sqrt()

    @property
    def hessian(self) -> torch.Tensor:
        """H = 2/n · XᵀX [in, in] in float64 (n = tokens), SparseGPT's layer Hessian."""
        if not self.collects_hessian:
            raise InputError(
                "these LayerStats were built without the Hessian; use LayerStats(in_features, hessian=True)"
            )
        self._need_tokens()
        return self._xtx * (2.0 / self.tokens)

    def __repr__(self) -> str:
        return f"LayerStats(in_features={self.in_features}, hessian={self.collects_hessian}, tokens={self.tokens})"


def _stats_for(method: str, stats: Any, weight: torch.Tensor, hessian: bool) -> LayerStats:
    if stats is None:
        what = "LayerStats(in_features, hessian=True)" if hessian else "LayerStats(in_features)"
        raise InputError(
            f"{method} needs calibration: pass stats={what} fed with the layer's inputs via .add(x)"
        )
    if not isinstance(stats, LayerStats):
        raise InputError(f"{method}: stats must be a LayerStats, got {type(stats).__name__}")
    if stats.in_features != weight.shape[1]:
        raise InputError(
            f"{method}: the stats were collected for {stats.in_features} inputs but the weight "
            f"{tuple(weight.shape)} has {weight.shape[1]}; collect them on this layer's inputs"
        )
    return stats


def _no_options(method: str, options: dict[str, Any]) -> None:
    if options:
        raise InputError(f"{method} takes no options, got {sorted(options)}")


class ScoreMethod:
    """A method that scores every weight and keeps the highest scores under the pattern."""

    name: ClassVar[str]
    needs: ClassVar[str]

    def check_options(self, options: dict[str, Any]) -> None:
        """Raises InputError for options a recipe may not give this method (it takes none)."""
        _no_options(self.name, options)

    def scores(self, weight: torch.Tensor, stats: LayerStats | None = None) -> torch.Tensor:
        raise NotImplementedError

    def prune(
        self, weight: torch.Tensor, pattern: Pattern | str | float, stats: LayerStats | None = None, **options: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _no_options(self.name, options)
        check_weight(weight)
        pattern = parse_pattern(pattern)
        mask = mask_for(self.scores(weight, stats), pattern)
        return torch.where(mask, weight.detach(), torch.zeros((), dtype=weight.dtype, device=weight.device)), mask


@dataclass(frozen=True)
class Magnitude(ScoreMethod):
    """Keep the largest |W| under the pattern."""

    name: ClassVar[str] = "magnitude"
    needs: ClassVar[str] = "nothing"

    def scores(self, weight: torch.Tensor, stats: LayerStats | None = None) -> torch.Tensor:
        return weight.detach().abs()


@dataclass(frozen=True)
class Wanda(ScoreMethod):
    """Keep the largest |W_ij| · ‖X_j‖₂, compared within each output row."""

    name: ClassVar[str] = "wanda"
    needs: ClassVar[str] = "input_norms"

    def scores(self, weight: torch.Tensor, stats: LayerStats | None = None) -> torch.Tensor:
        stats = _stats_for(self.name, stats, weight, hessian=False)
        norms = stats.input_norms.to(weight.device)
        return weight.detach().abs().to(torch.float64) * norms[None, :]


@dataclass(frozen=True)
class SparseGPT:
    """OBS pruning with the layer Hessian (optionally joint with a weight format)."""

    name: ClassVar[str] = "sparsegpt"
    needs: ClassVar[str] = "hessian"
    options: ClassVar[tuple[str, ...]] = ("blocksize", "percdamp", "mask", "quantizer", "quant_group")
    #: what a recipe's `sparsity.options` may set (the rest are filled in by nmx.model.compress)
    recipe_options: ClassVar[tuple[str, ...]] = ("blocksize", "percdamp", "joint_quant")

    def check_options(self, options: dict[str, Any]) -> None:
        """Raises InputError for a recipe option sparsegpt does not take or a value it cannot use,
        so a recipe fails when it loads, not after calibration."""
        unknown = sorted(set(options) - set(self.recipe_options))
        if unknown:
            raise InputError(f"sparsegpt: unknown option(s) {unknown}; a recipe may set {list(self.recipe_options)}")
        b, d, j = options.get("blocksize", 1), options.get("percdamp", 0.0), options.get("joint_quant", True)
        if not isinstance(b, int) or isinstance(b, bool) or b < 1:
            raise InputError(f"sparsegpt: blocksize must be a positive integer, got {b!r}")
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < float("inf"):
            raise InputError(f"sparsegpt: percdamp must be a finite number >= 0, got {d!r}")
        if not isinstance(j, bool):
            raise InputError(f"sparsegpt: joint_quant must be true or false, got {j!r}")

    def prune(
        self,
        weight: torch.Tensor,
        pattern: Pattern | str | float | None,
        stats: LayerStats | None = None,
        **options: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise InputError(f"sparsegpt: unknown option(s) {unknown}; it takes {list(self.options)}")
        check_weight(weight)
        stats = _stats_for(self.name, stats, weight, hessian=True)
        return sparsegpt(weight, stats.hessian, pattern, **options)


#: method name -> method; adding a method is one class and one entry here
METHODS: dict[str, Magnitude | Wanda | SparseGPT] = {m.name: m for m in (Magnitude(), Wanda(), SparseGPT())}


def get_method(name: str) -> Magnitude | Wanda | SparseGPT:
    """The pruning method called `name` (case and surrounding spaces ignored)."""
    return registry_get(METHODS, name, "pruning method")
