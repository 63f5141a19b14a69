"""The packed weight layout the compressed-weight linear kernels read, and `pack` that makes it.

A weight W [N, K] (out features, in features) of `nn.Linear` is stored row-major, K contiguous,
every buffer a plain uint8 / bf16 / fp16 tensor (16-byte aligned rows when K is a multiple of 64):

    values  the kept values along K:
              bf16 values           bf16  [N, K]      (dense)   or [N, K/2] (2:4)
              4-bit codes (e2m1 or two's-complement int4), two per byte, the first in the low nibble:
                                    uint8 [N, K/2]    (dense)   or [N, K/4] (2:4: one byte per group
                                                                  of 4, low nibble = the lower kept position)
              8-bit codes (e4m3)    uint8 [N, K]      (dense)   or [N, K/2] (2:4)
            Dense 4- and 8-bit codes are pair-interleaved within each 32-bit word (P = 8 or 4 codes
            covering P consecutive columns): code slot j holds column 2*(j mod P/2) + j div P/2, i.e.
            4-bit slots 0..7 = columns 0, 2, 4, 6, 1, 3, 5, 7 and 8-bit slots 0..3 = columns 0, 2, 1, 3.
            Then slots j and j + P/2, 16 bits apart, are columns 2j and 2j + 1: one shift and one
            mask put two adjacent weights into the two halves of a register, a bf16x2 tensor-core
            operand (triton_tc.py). Word kernels read any slot at the same cost.
    meta    2:4 only: the two kept positions p0 < p1 of each group of 4 consecutive K entries as a
            nibble p0 | p1 << 2; two groups per byte, the even group in the low nibble: uint8 [N, K/8]
            (1 bit per weight: the N*ceil(log2 M) index encoding, as NVIDIA's sparse tensor cores use)
    scales  one per block of B consecutive K entries of the DENSE layout (B = the format's block):
              e8m0 (MX): uint8 [N, K/B], value 2^(code - 127)
              ue4m3 (NVFP4): uint8 [N, K/B], times the fp32 `tensor_scale`
              fp16 (int groups): fp16 [N, K/B]

Values decode as the nmx format decodes them (`nmx.formats`): value = element * scale (* tensor
scale), so a packed weight holds exactly `fmt.quantize(W * mask)`; pruned entries are zero.
`pack` starts from nmx's own encodings (`Format.encode`) and only re-arranges their bytes.

Constraints (refused with an InputError, never padded silently): K a multiple of 64 and of the
format's block; formats: bf16 values, mxfp4, nvfp4, int4_gG (symmetric), fp8_e4m3, mxfp8_e4m3;
pattern: none or 2:4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nmx.errors import InputError

#: weight formats the kernels read, and how: (element kind, scale kind)
KERNEL_FORMATS = {
    None: ("bf16", None),
    "mxfp4": ("e2m1", "e8m0"),
    "nvfp4": ("e2m1", "ue4m3"),
    "fp8_e4m3": ("e4m3", None),
    "mxfp8_e4m3": ("e4m3", "e8m0"),
}
K_MULTIPLE = 64


def kernel_format(name: str | None) -> tuple[str, str | None]:
    """(element kind, scale kind) of a weight format the kernels support."""
    if name in KERNEL_FORMATS:
        return KERNEL_FORMATS[name]
    if name and name.startswith("int4_g") and name[6:].isdigit():
        return ("int4", "fp16")
    supported = ", ".join(["bf16 (no format)"] + [n for n in KERNEL_FORMATS if n] + ["int4_gG"])
    raise InputError(f"the compressed-weight kernels do not read {name!r}: use one of {supported}")


@dataclass(frozen=True, eq=False)
class PackedLinear:
    """A weight in the kernels' layout (see the module docstring)."""

    n: int
    k: int
    format: str | None  # nmx format name, None = bf16 values
    sparse24: bool
    values: torch.Tensor
    meta: torch.Tensor | None
    scales: torch.Tensor | None
    tensor_scale: float = 1.0
    block: int = 0  # scale block along K (0: no scales)

    @property
    def element(self) -> str:
        return kernel_format(self.format)[0]

    @property
    def scale_kind(self) -> str | None:
        return kernel_format(self.format)[1]

    @property
    def nbytes(self) -> int:
        """Bytes a kernel must read for the weight: values, index metadata and scales."""
        return sum(t.numel() * t.element_size() for t in (self.values, self.meta, self.scales) if t is not None)

    def to(self, device: torch.device | str) -> "PackedLinear":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PackedLinear(self.n, self.k, self.format, self.sparse24, move(self.values), move(self.meta),
                            move(self.scales), self.tensor_scale, self.block)


def mask_24(weight: torch.Tensor) -> torch.Tensor:
    """The 2:4 mask of a pruned weight: its nonzeros, topped up with its first zeros where a group
    keeps fewer than two (a kept weight may be 0); refuses a weight with 3+ nonzeros in a group."""
    n, k = weight.shape
    nz = (weight != 0).reshape(n, k // 4, 4)
    if bool((nz.sum(-1) > 2).any()):
        raise InputError("the weight is not 2:4 sparse: some group of 4 along K holds more than 2 nonzeros")
    # rank positions: nonzeros first, then by position; keep the first two
    order = torch.argsort((~nz).to(torch.int8) * 4 + torch.arange(4, device=weight.device), dim=-1, stable=True)
    keep = torch.zeros_like(nz)
    keep.scatter_(-1, order[..., :2], True)
    return keep.reshape(n, k)


def _check(weight: torch.Tensor, fmt: str | None) -> None:
    if weight.dim() != 2:
        raise InputError(f"pack() takes a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise InputError("pack() got a weight with NaN or Inf")
    k = weight.shape[1]
    kernel_format(fmt)
    if k % K_MULTIPLE:
        raise InputError(f"the kernels need the input dim K to be a multiple of {K_MULTIPLE}, got K={k}; "
                         "use the dense path for this layer")


def word_order(per: int) -> torch.Tensor:
    """The column (within its word) of each code slot of a dense 4-bit (per = 8) or 8-bit (per = 4)
    word: 2*(j mod per/2) + j div per/2."""
    j = torch.arange(per)
    return 2 * (j % (per // 2)) + j // (per // 2)


def interleave(codes: torch.Tensor, per: int) -> torch.Tensor:
    """Codes [N, K] in column order -> in slot order (pair-interleaved words)."""
    n, k = codes.shape
    return codes.reshape(n, k // per, per)[..., word_order(per).to(codes.device)].reshape(n, k)


def deinterleave(codes: torch.Tensor, per: int) -> torch.Tensor:
    """Inverse of `interleave`."""
    n, k = codes.shape
    inverse = torch.argsort(word_order(per)).to(codes.device)
    return codes.reshape(n, k // per, per)[..., inverse].reshape(n, k)


def _pair_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """[..., 2j] low nibble, [..., 2j+1] high nibble -> uint8 [..., j]."""
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def pack(weight: torch.Tensor, weight_format: str | None = None, pattern: str | None = None,
         mask: torch.Tensor | None = None) -> PackedLinear:
    """Pack W [N, K] (float) for the kernels: prune to `pattern` with `mask` (or the weight's own
    2:4 zeros), quantize with `weight_format` through nmx.formats, re-arrange the bytes."""
    from nmx import formats
    from nmx.formats.packing import unpack_bits

    _check(weight, weight_format)
    if pattern not in (None, "2:4"):
        raise InputError(f"the kernels read dense or 2:4 weights, not {pattern!r}")
    w = weight.detach().to(torch.float32)
    n, k = w.shape
    sparse = pattern == "2:4"
    keep = None
    if sparse:
        keep = mask.to(torch.bool) if mask is not None else mask_24(w)
        if keep.shape != w.shape or bool((keep.reshape(n, k // 4, 4).sum(-1) != 2).any()):
            raise InputError("the 2:4 mask must keep exactly 2 of every 4 weights along K")
        w = w * keep
    element, scale_kind = kernel_format(weight_format)
    meta, scales, tensor_scale, block = None, None, 1.0, 0
    if weight_format is None:
        codes = w.to(torch.bfloat16)
    else:
        fmt = formats.get(weight_format)
        enc = fmt.encode(w)  # blocks along K
        block = fmt.block_size or 0
        if block and k % block:
            raise InputError(f"K={k} is not a multiple of {weight_format}'s block of {block}")
        codes = unpack_bits(enc.buffers["codes"], fmt.code_bits, n * k).reshape(n, k).to(torch.uint8)
        if scale_kind in ("e8m0", "ue4m3"):
            scales = enc.buffers["scales"].reshape(n, k // block).clone()
        elif scale_kind == "fp16":
            scales = enc.buffers["scales"].view(torch.float16).reshape(n, k // block).clone()
        if "tensor_scale" in enc.buffers:
            tensor_scale = float(enc.buffers["tensor_scale"].view(torch.float32).item())
    if sparse:
        pos = torch.nonzero(keep.reshape(-1, 4))[:, 1].reshape(n, k // 4, 2)  # p0 < p1, row-major
        nib = (pos[..., 0] | (pos[..., 1] << 2)).to(torch.uint8)  # [N, K/4]
        meta = _pair_nibbles(nib)  # [N, K/8]
        codes = codes.reshape(n, k // 4, 4).gather(-1, pos.to(codes.device)).reshape(n, k // 2)
    elif element in ("e2m1", "int4", "e4m3"):
        codes = interleave(codes, 8 if element != "e4m3" else 4)
    if element in ("e2m1", "int4"):
        codes = _pair_nibbles(codes)
    return PackedLinear(n, k, weight_format, sparse, codes.contiguous(), meta, scales, tensor_scale, block)
