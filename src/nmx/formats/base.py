"""The `Format` contract and the block layout every format shares.

A format splits a tensor into blocks along one dimension (the reduction dimension:
the last dim of a linear weight and of an activation), derives a scale per block,
and rounds the scaled elements onto an element grid. Subclasses say only how:

- `_scales(blocks)`: the scales as the format stores them (already rounded to their format);
- `_elements(blocks, scales, generator)`: element values on the element grid;
- `_join(elements, scales) -> values`: the dequantized float32 values;
- `_scale_buffers(scales)` / `_scales_from_buffers(buffers, nblocks)`: the scales as
  bytes and back.

The base class turns that into `quantize` (scales + elements + join, no packing),
`encode` (+ packing), `decode` (unpacking + join) and `rounder` (fixed scales, for
GPTQ/SparseGPT-style error feedback). `quantize` and `decode` share
`_join`, so decode(encode(x)) equals quantize(x) bit for bit.

Layout of `Encoded` buffers (all uint8, kernel-friendly, documented for kernels/):
the tensor is viewed with the block dimension last (`movedim(dim, -1)`), that
dimension is zero-padded to a whole number of blocks, and blocks are numbered in
row-major order. `codes` holds every element code in that order, densely bit-packed
(see `packing`); `scales` holds one scale per block in the same order; some formats
add `zeros` (packed zero points) or `tensor_scale` (one float32, little-endian).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from nmx.errors import FormatError, InputError
from nmx.formats.packing import pack_bits, packed_nbytes, unpack_bits
from nmx.formats.rounding import Rounding, make_generator


@dataclass(frozen=True, eq=False)
class Encoded:
    """Packed codes and scales of one tensor: the real bytes a format stores."""

    format: str
    shape: tuple[int, ...]
    dim: int
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() for b in self.buffers.values())


@dataclass(frozen=True)
class _Layout:
    shape: tuple[int, ...]
    dim: int
    length: int  # size of the block dimension before padding
    block: int

    @property
    def lead(self) -> tuple[int, ...]:
        return tuple(s for i, s in enumerate(self.shape) if i != self.dim)

    @property
    def nblocks(self) -> int:
        return math.prod(self.lead) * (math.ceil(self.length / self.block) if self.block else 0)


def block_absmax(blocks: torch.Tensor) -> torch.Tensor:
    """max |x| over the last dim, kept as a dim of 1; NaN propagates. Two reductions beat abs + amax
    (no full-size temporary)."""
    top = torch.maximum(blocks.amax(dim=-1, keepdim=True), blocks.amin(dim=-1, keepdim=True).neg_())
    return top.abs_()  # max(0, -0) may be -0; a scale must not carry a sign


def _as_float32(x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as err:
            raise InputError(f"expected a tensor or array of numbers, got {type(x).__name__}") from err
    if x.is_complex() or x.dtype == torch.bool:
        raise InputError(f"formats quantize real numbers; got a tensor of {x.dtype}")
    return x.detach().float()


def _normalize_dim(dim: int, ndim: int) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise InputError(f"dim must be an integer, got {dim!r}")
    if not -ndim <= dim < ndim:
        raise InputError(f"dim {dim} is out of range for a tensor with {ndim} dimension(s)")
    return dim % ndim


class Format(ABC):
    """A number format: `quantize`, `encode`, `decode`, and what it costs in bits."""

    name: str
    family: str
    rounding: Rounding = Rounding.NEAREST
    #: elements sharing one scale along `dim`; None = one scale per whole vector
    block_size: int | None = 1
    #: bits of one element code
    code_bits: int = 8

    # ---- what subclasses provide -------------------------------------------------------

    @property
    @abstractmethod
    def element(self) -> Any:
        """The element codec (with `encode`/`decode` between grid values and codes)."""

    @abstractmethod
    def _scales(self, blocks: torch.Tensor) -> Any:
        """The scales of each block ([..., nblocks, block] -> as the format stores them)."""

    @abstractmethod
    def _elements(self, blocks: torch.Tensor, scales: Any, generator: torch.Generator | None) -> torch.Tensor:
        """Element grid values of `blocks` under `scales` (blocks may be narrower than a block:
        scales broadcast along the last dim)."""

    def _split(self, blocks: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, Any]:
        scales = self._scales(blocks)
        return self._elements(blocks, scales, generator), scales

    @abstractmethod
    def _join(self, elements: torch.Tensor, scales: Any) -> torch.Tensor:
        """Dequantized values; may reuse `elements` (always a fresh tensor) for the result."""

    def _scale_buffers(self, scales: Any) -> dict[str, torch.Tensor]:
        return {}

    def _scales_from_buffers(self, buffers: dict[str, torch.Tensor], nblocks: int) -> Any:
        """Scales as `_split` made them, shaped (nblocks, 1)."""
        return None

    def _overhead_bytes(self, nblocks: int) -> int:
        """Bytes of scales (and zero points, tensor scales) for `nblocks` blocks."""
        return 0

    @property
    def overhead_bits_per_block(self) -> float:
        return 0.0

    # ---- the public contract -------------------------------------------------------------

    @property
    def bits_per_element(self) -> float:
        """Element bits plus per-block overhead (scales, zero points), amortized.

        One-scale-per-vector formats (block_size None) report the element bits: their
        overhead depends on the vector length, which `storage_bytes` counts exactly.
        """
        if self.block_size is None:
            return float(self.code_bits)
        return self.code_bits + self.overhead_bits_per_block / self.block_size

    def quantize(self, x: Any, dim: int = -1, *, seed: int = 0) -> torch.Tensor:
        """Fake quantization: the float32 values this format would store, same shape as x."""
        x, layout, blocks = self._blocks(x, dim)
        if blocks is None:
            return x.clone()
        elements, scales = self._split(blocks, make_generator(self.rounding, seed))
        return self._unblock(self._join(elements, scales), layout)

    def encode(self, x: Any, dim: int = -1, *, seed: int = 0) -> Encoded:
        """Packed codes and scales (uint8 buffers); `decode` inverts it exactly."""
        x, layout, blocks = self._blocks(x, dim)
        if blocks is None:
            return Encoded(self.name, tuple(x.shape), layout.dim,
                           {"codes": torch.zeros(0, dtype=torch.uint8, device=x.device)})
        elements, scales = self._split(blocks, make_generator(self.rounding, seed))
        buffers = {"codes": pack_bits(self.element.encode(elements), self.code_bits)}
        buffers.update(self._scale_buffers(scales))
        return Encoded(self.name, tuple(x.shape), layout.dim, buffers)

    def decode(self, encoded: Encoded) -> torch.Tensor:
        if not isinstance(encoded, Encoded):
            raise InputError(f"decode() takes an Encoded, got {type(encoded).__name__}")
        if encoded.format != self.name:
            raise FormatError(f"this tensor was encoded as {encoded.format}, not {self.name}")
        layout = self._layout(encoded.shape, encoded.dim)
        if math.prod(encoded.shape) == 0:
            return torch.zeros(encoded.shape, dtype=torch.float32, device=encoded.buffers["codes"].device)
        nblocks, block = layout.nblocks, layout.block
        codes = unpack_bits(encoded.buffers["codes"], self.code_bits, nblocks * block)
        # (nblocks, block) elements and (nblocks, 1) scales: _join only broadcasts
        elements = self.element.decode(codes).reshape(nblocks, block)
        scales = self._scales_from_buffers(encoded.buffers, nblocks)
        return self._unblock(self._join(elements, scales), layout)

    def rounder(self, group: Any, *, tensor: Any = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """Fix the scales of `group` ([rows, g]: one block per row, g = block_size; any g for a
        per-vector or per-element format) and return a function rounding columns ([rows] or
        [rows, k <= g]) onto that group's grids. This is how GPTQ/SparseGPT quantize with error
        feedback: a group's scale is set when the sweep reaches it. `tensor`: the whole weight,
        for formats with a per-tensor scale (NVFP4)."""
        group = _as_float32(group)
        if group.dim() != 2:
            raise InputError(f"rounder() takes a [rows, g] group, got shape {tuple(group.shape)}")
        if self.block_size not in (None, 1) and group.shape[1] != self.block_size:
            raise InputError(f"{self.name}: a group must span one block of {self.block_size}, got {group.shape[1]}")
        rows = group.shape[0]
        scales = self._group_scales(group.reshape(rows, 1, -1), None if tensor is None else _as_float32(tensor))
        generator = make_generator(self.rounding, 0)

        def round_columns(cols: torch.Tensor) -> torch.Tensor:
            c = _as_float32(cols)
            blocks = c.reshape(rows, 1, -1) if self.block_size != 1 else c.reshape(rows, -1, 1)
            s = scales if self.block_size != 1 else None
            return self._join(self._elements(blocks, s, generator), s).reshape(c.shape)

        return round_columns

    def _group_scales(self, blocks: torch.Tensor, tensor: torch.Tensor | None) -> Any:
        return self._scales(blocks)

    def storage_bytes(self, shape: tuple[int, ...] | torch.Size, dim: int = -1) -> int:
        """Exact bytes of `encode` for a tensor of `shape`, padding and scales included."""
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise InputError(f"shape {shape} has a negative size")
        if math.prod(shape) == 0:
            return 0
        layout = self._layout(shape, _normalize_dim(dim, max(1, len(shape))))
        return packed_nbytes(layout.nblocks * layout.block, self.code_bits) + self._overhead_bytes(layout.nblocks)

    def describe(self) -> dict[str, Any]:
        """One row of `nmx formats`."""
        el = self.element
        return {
            "name": self.name,
            "family": self.family,
            "bits_per_element": self.bits_per_element,
            "block_size": self.block_size,
            "element": el.name,
            "scale": self.scale_description,
            "max": float(el.max),
            "min_subnormal": float(el.min_subnormal),
            "dynamic_range_db": 20 * math.log10(el.max / el.min_subnormal),
            "rounding": self.rounding.value,
        }

    scale_description: str = "none"

    def __repr__(self) -> str:
        return f"<Format {self.name}: {self.bits_per_element:g} bits/element>"

    # ---- blocking ---------------------------------------------------------------------------

    def _layout(self, shape: tuple[int, ...], dim: int) -> _Layout:
        length = shape[dim] if shape else 1
        return _Layout(tuple(shape), dim, length, self.block_size or length)

    def _blocks(self, x: Any, dim: int) -> tuple[torch.Tensor, _Layout, torch.Tensor | None]:
        x = _as_float32(x)
        d = _normalize_dim(dim, max(1, x.dim()))
        layout = self._layout(tuple(x.shape), d)
        if x.numel() == 0:
            return x, layout, None
        moved = x.reshape(1) if x.dim() == 0 else x.movedim(d, -1)
        pad = (-layout.length) % layout.block
        if pad:
            moved = torch.nn.functional.pad(moved, (0, pad))
        return x, layout, moved.reshape(*moved.shape[:-1], -1, layout.block).contiguous()

    def _unblock(self, y: torch.Tensor, layout: _Layout) -> torch.Tensor:
        y = y.reshape(*layout.lead, -1)[..., : layout.length]
        if not layout.shape:
            return y.reshape(())
        return y.movedim(-1, layout.dim).contiguous()
