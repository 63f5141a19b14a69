"""NVFP4: FP4 (E2M1) elements, blocks of 16, a two-level scale.

  s       = amax(|x| over the tensor's finite values) / (448 * 6)    one float32 per tensor
  scale_b = round_ue4m3(amax_b / (6 s)), saturating at 448            one UE4M3 byte per block
  elem_i  = round_e2m1(x_i / (scale_b * s)), saturating at 6
  value_i = (elem_i * scale_b) * s                                    (float32; elem*scale is exact)

Both roundings are of the exact real quotients, as the formulas say: a quotient rounded
to float32 first can land exactly on (or a hair across) a rounding boundary that the true
quotient misses, and then round the wrong way (torchao's float32 recipe does, rarely).

Conventions the recipe leaves open, chosen here: a tensor with no non-zero finite
value uses s = 1; a block whose scale rounds to zero stores zero elements; a block
holding NaN or Inf gets the UE4M3 NaN scale (0x7F) and decodes to NaN, while the
tensor scale ignores it so one bad value does not poison the tensor.
"""

from __future__ import annotations

import torch

from nmx.formats.base import Format, block_absmax
from nmx.formats.elements import FP4_E2M1, UE4M3
from nmx.formats.rounding import Rounding

E4M3_MAX = 448.0
UE4M3_NAN = 0x7F


def tensor_scale(blocks: torch.Tensor) -> torch.Tensor:
    a = blocks.abs()
    amax = torch.where(torch.isfinite(a), a, 0.0).max()
    s = amax / amax.new_tensor(E4M3_MAX * FP4_E2M1.max)  # a tensor divisor: IEEE division on CUDA too
    return torch.where(s > 0, s, 1.0).to(torch.float32)


class NVFP4Format(Format):
    family = "nvfp4"
    scale_description = "ue4m3+fp32"
    code_bits = 4
    overhead_bits_per_block = 8.0

    def __init__(self, name: str = "nvfp4", block_size: int = 16, rounding: Rounding = Rounding.NEAREST):
        self.name = name
        self.block_size = block_size
        self.rounding = rounding

    @property
    def element(self):
        return FP4_E2M1

    def _overhead_bytes(self, nblocks: int) -> int:
        return nblocks + 4

    def _scales(self, blocks, tensor_scale_: torch.Tensor | None = None):
        """(UE4M3 block scales, float32 tensor scale); NaN block scale where a block holds NaN/Inf."""
        s = tensor_scale(blocks) if tensor_scale_ is None else tensor_scale_
        amax = block_absmax(blocks)
        # round_ue4m3 of the exact amax / (6 s) (float64: one value per block)
        scale_b = UE4M3.round(amax.double() / (6.0 * s.double()))
        return torch.where(torch.isfinite(amax), scale_b, torch.nan), s

    def _group_scales(self, blocks, tensor):
        full = tensor if tensor is not None else blocks
        return self._scales(blocks, tensor_scale(full.reshape(-1, 1)))

    def _elements(self, blocks, scales, generator):
        scale_b, s = scales
        # round_e2m1 of the exact x / (scale_b s). The float32 quotient by fl(scale_b s) is within a
        # few ulps of it; the few elements that close to a rounding boundary are rounded again from
        # the float64 quotient (scale_b s is exact in float64).
        denom = scale_b.double() * s.double()
        v = blocks / denom.float()

        def exact(idx):
            where = torch.unravel_index(idx, v.shape)
            return blocks.expand(v.shape)[where].double() / denom.expand(v.shape)[where]

        elements = FP4_E2M1.round(v, self.rounding, saturate=True, generator=generator, exact=exact)
        ok = scale_b > 0  # False for NaN and zero
        return elements if bool(ok.all()) else torch.where(ok, elements, 0.0)

    def _join(self, elements, scales):
        scale_b, s = scales
        return elements.mul_(scale_b).mul_(s)  # E2M1 x UE4M3 is exact in float32: one rounding, by s

    def _scale_buffers(self, scales):
        scale_b, s = scales
        return {
            "scales": UE4M3.encode(scale_b.reshape(-1)).to(torch.uint8),
            "tensor_scale": s.reshape(1).view(torch.uint8).clone(),
        }

    def _scales_from_buffers(self, buffers, nblocks):
        scale_b = UE4M3.decode(buffers["scales"].to(torch.int32)).reshape(nblocks, 1)
        s = buffers["tensor_scale"].clone().view(torch.float32).reshape(())
        return scale_b, s
