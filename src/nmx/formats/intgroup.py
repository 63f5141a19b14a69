"""Integer group quantization as GPTQ and AWQ store it: N-bit codes, one fp16 scale per group.

Symmetric (`int4_g128`):   scale = fp16(amax / (2^(N-1) - 1)); code = clamp(round(x / scale), ±(2^(N-1) - 1))
Asymmetric (`int4_g128_asym`): lo = min(x, 0), hi = max(x, 0) (zero stays exact);
                           scale = fp16((hi - lo) / (2^N - 1)); zero = clamp(round(-lo / scale), 0, 2^N - 1);
                           code = clamp(round(x / scale) + zero, 0, 2^N - 1); value = (code - zero) * scale
Without `_gN` (`int8`, `int4`) there is one scale per vector along `dim`: per output
channel for a weight, per token for an activation.

Conventions: the scale is rounded to fp16 first and the codes are computed with the
rounded scale (so decode reproduces quantize); scales beyond fp16's range saturate
at 65504; a zero scale stores zero codes; a group holding NaN or Inf gets a NaN
scale and decodes to NaN (integers have no NaN code). Zero points are stored as
N-bit unsigned integers, packed like the codes.
"""

from __future__ import annotations

import torch

from nmx.formats.base import Format, block_absmax
from nmx.formats.elements import IntElement
from nmx.formats.packing import pack_bits, packed_nbytes, unpack_bits
from nmx.formats.rounding import Rounding, round_int

FP16_MAX = 65504.0


def _div(x: torch.Tensor, scalar: float) -> torch.Tensor:
    """x / scalar, correctly rounded on every device (CUDA turns a division by a Python scalar
    into a multiplication by its rounded reciprocal, which can differ in the last bit)."""
    return x / x.new_tensor(scalar)


def _fp16_scale(raw: torch.Tensor) -> torch.Tensor:
    return raw.clamp(max=FP16_MAX).to(torch.float16).to(torch.float32)


def _round_quotient(num, den, rounding, generator, wide: bool):
    """round(num / den) of the exact quotient. An fp16 scale (11 bits) times k + 1/2 is exact
    in float32 for codes of up to 13 bits, so there float32 division cannot land on a false
    tie; wider codes divide in float64."""
    if wide:
        return round_int(num.double() / den.double(), rounding, generator).float()
    return round_int(num / den, rounding, generator)


class IntGroupFormat(Format):
    family = "int"
    scale_description = "fp16"

    def __init__(
        self,
        name: str,
        bits: int,
        group_size: int | None,
        symmetric: bool = True,
        rounding: Rounding = Rounding.NEAREST,
    ):
        self.name = name
        self._element = IntElement(f"int{bits}" if symmetric else f"uint{bits}", bits, signed=symmetric)
        self.block_size = group_size
        self.symmetric = symmetric
        self.rounding = rounding
        self.code_bits = bits
        if not symmetric:
            self.scale_description = "fp16+zero"

    @property
    def element(self):
        return self._element

    @property
    def overhead_bits_per_block(self) -> float:
        return 16.0 + (0 if self.symmetric else self.code_bits)

    def _overhead_bytes(self, nblocks: int) -> int:
        return 2 * nblocks + (0 if self.symmetric else packed_nbytes(nblocks, self.code_bits))

    def _scales(self, blocks):
        """(scale, zero point): NaN scale for a group holding NaN/Inf, zero None when symmetric."""
        el = self._element
        if self.symmetric:
            amax = block_absmax(blocks)
            return torch.where(torch.isfinite(amax), _fp16_scale(_div(amax, el.qmax)), torch.nan), None
        lo = blocks.amin(dim=-1, keepdim=True).clamp(max=0.0)
        hi = blocks.amax(dim=-1, keepdim=True).clamp(min=0.0)
        finite = torch.isfinite(lo) & torch.isfinite(hi)
        scale = torch.where(finite, _fp16_scale(_div(hi - lo, el.qmax)), torch.nan)
        zero = torch.round(-lo.double() / scale.double()).clamp(0, el.qmax).float()  # float64: exact
        return scale, torch.where(scale > 0, zero, 0.0)

    def _elements(self, blocks, scales, generator):
        scale, zero = scales
        el, wide = self._element, self.code_bits > 13
        if zero is None:
            # round |x| / scale, then put the sign back; + 0.0 turns -0 into +0 (two's
            # complement has no negative zero)
            codes = _round_quotient(blocks.abs(), scale, self.rounding, generator, wide)
            codes = codes.clamp_(max=el.qmax).copysign_(blocks).add_(0.0)
        else:
            codes = _round_quotient(blocks, scale, self.rounding, generator, wide).add_(zero).clamp_(0, el.qmax)
        ok = scale > 0  # False for NaN and zero scales
        return codes if bool(ok.all()) else torch.where(ok, codes, 0.0)

    def _join(self, codes, scales):
        scale, zero = scales
        return (codes if zero is None else codes.sub_(zero)).mul_(scale)

    def _scale_buffers(self, scales):
        scale, zero = scales
        buffers = {"scales": scale.reshape(-1).to(torch.float16).view(torch.uint8).clone()}
        if zero is not None:
            buffers["zeros"] = pack_bits(zero.to(torch.int32), self.code_bits)
        return buffers

    def _scales_from_buffers(self, buffers, nblocks):
        scale = buffers["scales"].clone().view(torch.float16).to(torch.float32).reshape(nblocks, 1)
        zero = None
        if not self.symmetric:
            zero = unpack_bits(buffers["zeros"], self.code_bits, nblocks).to(torch.float32).reshape(nblocks, 1)
        return scale, zero
