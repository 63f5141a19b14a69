"""Formats without a scale: a plain cast of every element (FP8/FP6/FP4, E8M0, UE4M3, bf16, fp16)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nmx.errors import FormatError
from nmx.formats.base import Format
from nmx.formats.elements import FloatElement
from nmx.formats.rounding import Rounding


@dataclass(frozen=True)
class TorchFloat:
    """bf16 / fp16 pass-through: torch's IEEE cast (round to nearest even, overflow to Inf)."""

    name: str
    dtype: torch.dtype

    @property
    def bits(self) -> int:
        return 16

    @property
    def max(self) -> float:
        return float(torch.finfo(self.dtype).max)

    @property
    def min_subnormal(self) -> float:
        return float(torch.finfo(self.dtype).smallest_normal) * float(torch.finfo(self.dtype).eps)

    def round(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype).to(torch.float32)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        return values.to(self.dtype).view(torch.int16).to(torch.int32) & 0xFFFF

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        c = codes.to(torch.int32)
        return torch.where(c >= 0x8000, c - 0x10000, c).to(torch.int16).view(self.dtype).to(torch.float32)


class ElementFormat(Format):
    """Every element cast on its own; finite overflow saturates to ±max (see FloatElement.round)."""

    family = "element"
    block_size = 1

    def __init__(self, element: FloatElement | TorchFloat, rounding: Rounding = Rounding.NEAREST, name: str = ""):
        self._element = element
        self.rounding = rounding
        self.code_bits = getattr(element, "container_bits", None) or element.bits
        self.name = name or element.name
        if not getattr(element, "signed", True):
            self.family = "scale"  # E8M0 / UE4M3: unsigned scale formats, NaN for negatives
        if isinstance(element, TorchFloat) and rounding is not Rounding.NEAREST:
            raise FormatError(f"{element.name} is a pass-through cast: only nearest rounding is offered")

    @property
    def element(self):
        return self._element

    def _scales(self, blocks):
        return None

    def _elements(self, blocks, scales, generator):
        if isinstance(self._element, TorchFloat):
            return self._element.round(blocks)
        return self._element.round(blocks, self.rounding, saturate=True, generator=generator)

    def _join(self, elements, scales):
        return elements
