"""Tensors to measure formats on: a synthetic LLM-like one, or one read from a file."""

from __future__ import annotations

from pathlib import Path

import torch

from nmx.errors import InputError


def synthetic_activation(rows: int = 256, cols: int = 4096, seed: int = 0) -> torch.Tensor:
    """A heavy-tailed matrix with outlier channels, shaped like LLM linear-layer inputs.

    Entries are Student-t with 3 degrees of freedom (heavy tails), and 0.5 % of the
    columns are scaled by 20-60x: the few large-magnitude feature channels that make
    LLM activations hard to quantize (LLM.int8, SmoothQuant). Seeded.
    """
    if rows < 1 or cols < 1:
        raise InputError(f"synthetic tensor needs positive sizes, got {rows}x{cols}")
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(rows, cols, generator=g)
    chi2 = torch.randn(rows, cols, 3, generator=g).pow(2).sum(-1)
    x = normal / torch.sqrt(chi2 / 3)
    n_out = max(1, cols // 200)
    idx = torch.randperm(cols, generator=g)[:n_out]
    x[:, idx] *= 20 + 40 * torch.rand(n_out, generator=g)
    return x


def load_tensor(spec: str) -> torch.Tensor:
    """Read `FILE.safetensors:NAME` (safetensors only: no pickle is ever loaded)."""
    from safetensors import SafetensorError, safe_open

    path_text, sep, name = spec.rpartition(":")
    if not sep or not path_text or not name:
        raise InputError(f"--tensor wants FILE.safetensors:NAME, got {spec!r}")
    path = Path(path_text)
    if not path.is_file():
        raise InputError(f"tensor file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if name not in keys:
                shown = ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else "")
                raise InputError(f"{path} has no tensor {name!r}; it has: {shown or 'none'}")
            t = f.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise InputError(f"cannot read {path} as safetensors: {err}") from err
    if t.is_complex() or t.dtype == torch.bool:
        raise InputError(f"tensor {name!r} has dtype {t.dtype}; formats need real numbers")
    return t.float()
