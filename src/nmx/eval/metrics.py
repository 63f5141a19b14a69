"""Numerical error of a quantized tensor against its reference."""

from __future__ import annotations

import math

import torch

from nmx.errors import InputError


def quant_error(reference: torch.Tensor, quantized: torch.Tensor) -> dict[str, float]:
    """SQNR (dB), MSE and max |error| in float64, over the elements where the reference is finite.

    SQNR = 10 log10(sum x^2 / sum (x - q)^2); +inf when the error is zero. A quantized
    value that is NaN or Inf where the reference is finite makes every metric NaN:
    the format could not represent the tensor.
    """
    if reference.shape != quantized.shape:
        raise InputError(f"shapes differ: {tuple(reference.shape)} vs {tuple(quantized.shape)}")
    x = reference.detach().double().reshape(-1)
    q = quantized.detach().double().reshape(-1)
    keep = torch.isfinite(x)
    x, q = x[keep], q[keep]
    if x.numel() == 0:
        raise InputError("the reference tensor has no finite values to compare")
    if not torch.isfinite(q).all():
        nan = math.nan
        return {"sqnr_db": nan, "mse": nan, "max_abs_error": nan}
    err = x - q
    noise = float((err * err).sum())
    signal = float((x * x).sum())
    sqnr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    return {"sqnr_db": sqnr, "mse": noise / x.numel(), "max_abs_error": float(err.abs().max())}


def format_errors(x: torch.Tensor, format_names: list[str], dim: int = -1, seed: int = 0) -> list[dict]:
    """`quant_error` of each named format on `x`, with its bits per element and exact storage."""
    from nmx import formats

    rows = []
    for name in format_names:
        fmt = formats.get(name)
        q = fmt.quantize(x, dim=dim, seed=seed)
        storage_bits = 8 * fmt.storage_bytes(tuple(x.shape), dim=dim) / max(1, x.numel())
        rows.append({"name": fmt.name, "bits_per_element": fmt.bits_per_element,
                     "storage_bits_per_element": storage_bits, **quant_error(x, q)})
    return rows
