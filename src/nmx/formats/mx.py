"""OCP Microscaling (MX v1.0): blocks of 32 elements sharing one E8M0 scale.

Per block (spec section 6.3, the "minimally supported" conversion):
  X = 2^(floor(log2(amax)) - emax_elem), clamped to E8M0's 2^-127 .. 2^127;
  element_i = round(v_i / X) to the element format, saturating to its max.
A block whose amax is NaN or Inf gets the NaN scale (0xFF), so the whole block
decodes to NaN; its element codes are stored as zero.

Scale rules (`scale_rule`), FLOOR being the spec's and the default:
  floor: floor(log2 amax) - emax                      (spec; may saturate the top element)
  ceil:  ceil(log2 amax) - emax                       (never saturates, loses a bit of range)
  even:  floor(log2 of amax rounded to the element's mantissa width) - emax
  rceil: ceil(log2(amax / max_elem))                  (NVIDIA cuBLAS / "round up"; never saturates)
"""

from __future__ import annotations

import torch

from nmx.errors import FormatError
from nmx.formats.base import Format, block_absmax
from nmx.formats.elements import E8M0_SCALE, FloatElement, IntElement
from nmx.formats.rounding import Rounding

SCALE_RULES = ("floor", "ceil", "even", "rceil")
E8M0_NAN = 255


def _exponent_and_mantissa(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    bits = a.view(torch.int32)
    return ((bits >> 23) & 0xFF) - 127, bits & 0x7FFFFF


def e8m0_scale_exponent(amax: torch.Tensor, element: FloatElement | IntElement, rule: str) -> torch.Tensor:
    """Biased E8M0 scale codes (int32, 255 = NaN) for block maxima `amax` (float32, >= 0)."""
    if rule == "rceil":
        d = amax * (1.0 / element.max)
        e, m = _exponent_and_mantissa(d)
        # float32 subnormals: E8M0 code 0 is 2^-127, anything above it rounds up to 2^-126
        x = torch.where(e == -127, torch.where(m > 0x400000, -126, -127), e + (m != 0).to(torch.int32))
    else:
        a = amax
        if rule == "even":  # round amax to the element's mantissa width (half away from zero) first
            bits = a.view(torch.int32) + (1 << (23 - element.mbits - 1))
            a = (bits & 0x7F800000).view(torch.float32)
        e, m = _exponent_and_mantissa(a)
        if rule == "ceil":
            e = e + (m != 0).to(torch.int32)
        x = e - element.emax
    code = x.clamp(-127, 127) + 127
    return torch.where(torch.isfinite(amax), code, E8M0_NAN)


class MXFormat(Format):
    family = "mx"
    scale_description = "e8m0"

    def __init__(
        self,
        name: str,
        element: FloatElement | IntElement,
        block_size: int = 32,
        scale_rule: str = "floor",
        rounding: Rounding = Rounding.NEAREST,
    ):
        if scale_rule not in SCALE_RULES:
            raise FormatError(f"unknown MX scale rule {scale_rule!r}; choose one of {', '.join(SCALE_RULES)}")
        self.name = name
        self._element = element
        self.block_size = block_size
        self.scale_rule = scale_rule
        self.rounding = rounding
        self.code_bits = element.bits

    @property
    def element(self):
        return self._element

    overhead_bits_per_block = 8.0

    def _overhead_bytes(self, nblocks: int) -> int:
        return nblocks

    def _scales(self, blocks):
        return e8m0_scale_exponent(block_absmax(blocks), self._element, self.scale_rule)  # NaN propagates

    def _elements(self, blocks, code, generator):
        inv_scale = E8M0_SCALE.decode(torch.where(code == E8M0_NAN, 127, 254 - code))  # 2^-X, exact
        v = blocks * inv_scale
        if isinstance(self._element, IntElement):
            elements = self._element.round(v, self.rounding, generator)
        else:
            elements = self._element.round(v, self.rounding, saturate=True, generator=generator)
        nan_block = code == E8M0_NAN
        if bool(nan_block.any()):
            elements = torch.where(nan_block, 0.0, elements)
        return elements

    def _join(self, elements, code):
        return elements.mul_(E8M0_SCALE.decode(code))

    def _scale_buffers(self, code):
        return {"scales": code.reshape(-1).to(torch.uint8)}

    def _scales_from_buffers(self, buffers, nblocks):
        return buffers["scales"].reshape(nblocks, 1).to(torch.int32)
