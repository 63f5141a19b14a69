"""Calibration samples: random windows of a tokenized text, seeded."""

from __future__ import annotations

from typing import Any

import torch

from nmx.errors import InputError
from nmx.eval.perplexity import tokenize
from nmx.eval.text import Text


def calibration_windows(tokenizer: Any, text: Text, samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """`samples` windows of `seq_len` tokens starting at uniformly random offsets (as SparseGPT
    and Wanda draw them), from one tokenization of the whole text."""
    if samples < 1 or seq_len < 2:
        raise InputError(f"calibration needs samples >= 1 and seq_len >= 2, got {samples} x {seq_len}")
    ids = tokenize(tokenizer, text)
    if ids.numel() <= seq_len:
        raise InputError(
            f"calibration text {text.name!r} has {ids.numel()} tokens, not more than one window of {seq_len}"
        )
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (samples,), generator=g)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])
