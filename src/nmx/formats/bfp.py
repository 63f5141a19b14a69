"""Block floating point (BFP): one shared 8-bit exponent per group, sign + m-bit mantissas.

`bfp_m4_g16` = groups of 16, 4 mantissa bits plus a sign bit per element, and an
E8M0 shared exponent: 1 + 4 + 8/16 = 5.5 bits per element. This is the family of
MSFP and of the variable-length grouped activation format of Anda (HPCA 2025),
whose point is that m can be chosen per tensor or per layer.

Per group: E = floor(log2 amax) (clamped to E8M0's range); the largest magnitude's
leading one sits in the top mantissa bit, so the grid spacing is 2^(E - m + 1) and
element = clamp(round(x / 2^(E-m+1)), ±(2^m - 1)). There is no implicit leading one,
so small elements keep fewer significant bits (the BFP trade-off).

Conventions: a value that rounds up past 2^m - 1 saturates (the exponent is not
bumped); elements are stored as (m+1)-bit two's complement, which holds exactly
the sign-magnitude range ±(2^m - 1) (-0 is not kept); NaN or Inf in a group makes
its exponent NaN (0xFF) and the group decodes to NaN.
"""

from __future__ import annotations

import torch

from nmx.formats.base import Format, block_absmax
from nmx.formats.elements import E8M0_SCALE, IntElement
from nmx.formats.rounding import Rounding

E8M0_NAN = 255


class BFPFormat(Format):
    family = "bfp"
    scale_description = "e8m0 (exp)"
    overhead_bits_per_block = 8.0

    def __init__(self, name: str, mantissa_bits: int, group_size: int, rounding: Rounding = Rounding.NEAREST):
        self.name = name
        self.mantissa_bits = mantissa_bits
        self.block_size = group_size
        self.rounding = rounding
        self._element = IntElement(f"sm{mantissa_bits + 1}", mantissa_bits + 1)
        self.code_bits = mantissa_bits + 1

    @property
    def element(self):
        return self._element

    def _overhead_bytes(self, nblocks: int) -> int:
        return nblocks

    def _scales(self, blocks):
        amax = block_absmax(blocks)
        e = ((amax.view(torch.int32) >> 23) & 0xFF) - 127  # floor(log2 amax); -127 for 0
        return torch.where(torch.isfinite(amax), e.clamp(-127, 127) + 127, E8M0_NAN)

    def _elements(self, blocks, code, generator):
        # x / 2^(E-m+1) as two exact power-of-two products
        inv = E8M0_SCALE.decode(torch.where(code == E8M0_NAN, 127, 254 - code))
        v = (blocks * inv) * 2.0 ** (self.mantissa_bits - 1)
        elements = self._element.round(v, self.rounding, generator)
        nan_block = code == E8M0_NAN
        if bool(nan_block.any()):
            elements = torch.where(nan_block, 0.0, elements)
        return elements

    def quantize(self, x, dim: int = -1, *, seed: int = 0) -> torch.Tensor:
        """Fake quantization; round-to-nearest takes a shorter path with the same bits: the shared exponent's
        E8M0 code is amax's biased float32 exponent itself (255 for Inf/NaN), and 2^-E, 2^E are built from
        exponent bits instead of decoded codes (activation fake-quant calls this on every linear input)."""
        if self.rounding is not Rounding.NEAREST:
            return super().quantize(x, dim, seed=seed)
        x, layout, blocks = self._blocks(x, dim)
        if blocks is None:
            return x.clone()
        code = (block_absmax(blocks).view(torch.int32) >> 23) & 0xFF  # floor(log2 amax) + 127; 0 for 0 and subnormals
        m = self.mantissa_bits
        # 2^(127 - code) = 2^-E as float32 bits (code 254: 2^-127, a subnormal); Inf/NaN blocks: 1
        inv_bits = torch.where(code == 254, 0x00400000, (254 - code) << 23)
        inv = torch.where(code == E8M0_NAN, 0x3F800000, inv_bits).view(torch.float32)
        top = float(2**m - 1)
        q = blocks.mul(inv).mul_(2.0 ** (m - 1)).round_().add_(0.0).clamp_(-top, top)
        # 2^E = 2^(code - 127) as float32 bits (code 0: 2^-127, a subnormal); Inf/NaN blocks decode to NaN
        scale_bits = torch.where(code == 0, 0x00400000, code << 23)
        scale = torch.where(code == E8M0_NAN, 0x7FC00000, scale_bits).view(torch.float32)
        return self._unblock(q.mul_(2.0 ** (1 - m)).mul_(scale), layout)

    def _join(self, elements, code):
        return elements.mul_(2.0 ** (1 - self.mantissa_bits)).mul_(E8M0_SCALE.decode(code))

    def _scale_buffers(self, code):
        return {"scales": code.reshape(-1).to(torch.uint8)}

    def _scales_from_buffers(self, buffers, nblocks):
        return buffers["scales"].reshape(nblocks, 1).to(torch.int32)
