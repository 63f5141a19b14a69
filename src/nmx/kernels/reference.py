"""CPU reference twins of the kernels: the same decode, written plainly in torch.

`decode_weight(p)` rebuilds the dense float32 weight from the packed layout with the arithmetic the
Triton kernel uses (element decode, scale decode, 2:4 scatter); tests check it equals
`nmx.formats` quantize of the masked weight bit for bit, and the GPU kernel against it.
`linear_reference(x, p)` is what the kernel computes: x in bf16, the decoded weight rounded to bf16
(the tensor cores' operand), float32 accumulation, bf16 output.
"""

from __future__ import annotations

import torch

from nmx.kernels.layout import PackedLinear, deinterleave


def _nibbles(b: torch.Tensor) -> torch.Tensor:
    """uint8 [..., j] -> codes [..., 2j], low nibble first."""
    b = b.to(torch.int32)
    return torch.stack((b & 15, b >> 4), dim=-1).flatten(-2)


def decode_e2m1(c: torch.Tensor) -> torch.Tensor:
    c = c.to(torch.int32)
    e, m = (c >> 1) & 3, (c & 1).to(torch.float32)
    mag = torch.where(e == 0, m * 0.5, (1.0 + 0.5 * m) * torch.exp2(e.to(torch.float32) - 1.0))
    return torch.where((c >> 3) & 1 == 1, -mag, mag)


def decode_int4(c: torch.Tensor) -> torch.Tensor:
    c = c.to(torch.int32)
    return (c - 16 * (c >= 8).to(torch.int32)).to(torch.float32)


def decode_e4m3(c: torch.Tensor) -> torch.Tensor:
    c = c.to(torch.int32)
    e, m = (c >> 3) & 15, (c & 7).to(torch.float32)
    mag = torch.where(e == 0, m * 2.0**-9, (1.0 + m / 8.0) * torch.exp2(e.to(torch.float32) - 7.0))
    mag = torch.where((e == 15) & (c & 7 == 7), torch.nan, mag)
    return torch.where((c >> 7) & 1 == 1, -mag, mag)


def decode_e8m0(c: torch.Tensor) -> torch.Tensor:
    bits = torch.where(c.to(torch.int32) == 0, 0x00400000, c.to(torch.int32) << 23)  # code 0 is 2^-127
    out = bits.view(torch.float32)
    return torch.where(c.to(torch.int32) == 255, torch.nan, out)


def _elements(p: PackedLinear) -> torch.Tensor:
    """The kept elements, [N, K] dense or [N, K/2] for 2:4, as float32 (before scaling), in column order."""
    if p.element == "bf16":
        return p.values.to(torch.float32)
    codes = p.values if p.element == "e4m3" else _nibbles(p.values)
    if not p.sparse24:  # dense words are pair-interleaved (layout.py)
        codes = deinterleave(codes, 4 if p.element == "e4m3" else 8)
    if p.element == "e4m3":
        return decode_e4m3(codes)
    return decode_e2m1(codes) if p.element == "e2m1" else decode_int4(codes)


def decode_weight(p: PackedLinear) -> torch.Tensor:
    """The dense float32 weight [N, K] the packed layout holds."""
    n, k = p.n, p.k
    vals = _elements(p)
    if p.sparse24:
        nib = _nibbles(p.meta)  # [N, K/4]
        pos = torch.stack((nib & 3, nib >> 2), dim=-1).to(torch.int64)  # [N, K/4, 2]
        dense = torch.zeros(n, k // 4, 4, dtype=torch.float32, device=vals.device)
        dense.scatter_(-1, pos, vals.reshape(n, k // 4, 2))
        vals = dense.reshape(n, k)
    if p.scales is not None:
        kind = p.scale_kind
        s = (decode_e8m0(p.scales) if kind == "e8m0" else decode_e4m3(p.scales) if kind == "ue4m3"
             else p.scales.to(torch.float32))
        vals = (vals.reshape(n, k // p.block, p.block) * s[..., None]).reshape(n, k)
    if p.tensor_scale != 1.0:
        vals = vals * torch.tensor(p.tensor_scale, dtype=torch.float32)
    return vals


def linear_reference(x: torch.Tensor, p: PackedLinear) -> torch.Tensor:
    """y [.., N] = x [.., K] W^T with the kernel's precisions (bf16 operands, float32 accumulation)."""
    w = decode_weight(p).to(torch.bfloat16).to(torch.float32)
    y = x.to(torch.bfloat16).to(torch.float32) @ w.to(x.device).T
    return y.to(torch.bfloat16)
