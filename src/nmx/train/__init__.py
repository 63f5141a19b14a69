"""Sparse (and quantization-aware) training: mask methods, pattern schedules, KD, checkpoints.

    from nmx.recipe import load_recipe
    from nmx.train import train
    result = train(load_recipe("recipe.yaml"), out="runs/kd-2of4")

`nmx.train.spec` (the recipe's `training:` section) is imported by `nmx.recipe`, so this package imports
nothing heavy at load time: the names below are resolved on first use.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "train": "nmx.train.loop",
    "MASK_METHODS": "nmx.train.methods",
    "get_mask_method": "nmx.train.methods",
    "MaskController": "nmx.train.methods",
    "PatternSchedule": "nmx.train.methods",
    "LOSSES": "nmx.train.losses",
    "get_loss": "nmx.train.losses",
    "kd_loss": "nmx.train.losses",
    "ce_loss": "nmx.train.losses",
    "transposable_mask": "nmx.train.masks",
    "partial_nm_mask": "nmx.train.masks",
    "Training": "nmx.train.spec",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nmx.train' has no attribute {name!r}")
