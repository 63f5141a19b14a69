"""Bit operations (BOPs) of linear layers: MACs x weight bits x activation bits.

    operand_bits("bfp_m7_g64")          # 8.125 = sign + 7 mantissa bits + an 8-bit exponent per 64
    linear_bops(576, 576, "int4_g128", "bfp_m7_g64")   # per token
    bops_block(layers)                  # the `bops` block of result.json

Conventions (stated in every block this module writes):
- per token: a linear [out, in] costs in * out MACs per token (dense: pruned weights are not
  subtracted, `macs_per_token_nonzero` says how many of them have a nonzero weight);
- an operand's bits are its format's bits per element, *scale bits included* (element code bits
  plus the per-block scale, zero point or tensor scale amortized over the block:
  `nmx.formats.Format.bits_per_element`); an operand without a format counts as bf16 (16 bits);
- the total sums the counted linears (the recipe's targets); attention's QK^T and PV products, whose
  MACs grow with the context, and the LM head are not included.
"""

from __future__ import annotations

from typing import Any, Mapping

UNQUANTIZED_BITS = 16.0  # bf16
CONVENTION = ("BOPs per token = sum over the counted linears of in*out MACs x weight bits x activation bits; bits "
              "per element include the format's scales (Format.bits_per_element), unquantized = 16 (bf16); "
              "attention QK^T/PV and the LM head are not counted")


def operand_bits(fmt: str | None) -> float:
    """Bits per element of an operand stored in `fmt` (scales amortized); None = bf16."""
    if fmt is None:
        return UNQUANTIZED_BITS
    from nmx import formats

    return float(formats.get(fmt).bits_per_element)


def linear_bops(out_features: int, in_features: int, weight_fmt: str | None, act_fmt: str | None) -> float:
    """BOPs of one token through a linear [out_features, in_features]."""
    return float(out_features) * in_features * operand_bits(weight_fmt) * operand_bits(act_fmt)


def bops_block(layers: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The `bops` block of a result: `layers` maps a linear's name to {shape: [out, in], weight_format,
    act_format, tensor_type (optional), nonzero (optional)}. Returns per-layer rows, totals per token,
    per tensor type, the A16 total (same weights, bf16 activations) and the reduction against it."""
    rows: dict[str, dict[str, Any]] = {}
    total = a16 = 0.0
    by_type: dict[str, float] = {}
    for name, rec in layers.items():
        out_f, in_f = (int(s) for s in rec["shape"])
        wb, ab = operand_bits(rec.get("weight_format")), operand_bits(rec.get("act_format"))
        macs = float(out_f) * in_f
        b = macs * wb * ab
        row = {"macs_per_token": macs, "weight_format": rec.get("weight_format"), "weight_bits": wb,
               "act_format": rec.get("act_format"), "act_bits": ab, "bops_per_token": b}
        if rec.get("nonzero") is not None:
            row["macs_per_token_nonzero"] = float(rec["nonzero"])
        if rec.get("tensor_type") is not None:
            row["tensor_type"] = rec["tensor_type"]
            by_type[rec["tensor_type"]] = by_type.get(rec["tensor_type"], 0.0) + b
        rows[name] = row
        total += b
        a16 += macs * wb * UNQUANTIZED_BITS
    return {"per_token": total, "a16_per_token": a16, "reduction_vs_a16": a16 / total if total else None,
            "by_tensor_type": by_type, "convention": CONVENTION, "layers": rows}
