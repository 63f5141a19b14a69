"""Packing keys and values with nmx formats: the storage layout a kernel will read.

Quantized tokens are stored in *pages*: one page per chunk of G = `group` consecutive cache
slots, for all batch rows and KV heads at once. A page is the `nmx.formats` encoding
(`Format.encode`: densely bit-packed element codes, then the format's scale buffers, see
`nmx/formats/base.py`) of the chunk tensor [b, h, G, d] viewed so that each scale block lies
along the chosen axis:

- axis "channel" (KIVI keys): the chunk is encoded along its token dim, so for every
  (b, h, channel) the G codes of the chunk's tokens are contiguous and share the scale(s) of
  that channel (one per G for a per-vector format such as int4, G / block for mxfp4 / nvfp4);
- axis "token" (KIVI values): the chunk is viewed [b, h, G, d / G, G] and encoded along the last
  dim, so for every (b, h, token) each group of G channels is contiguous with its scale.

Block order is row-major over the other dims, so a page is [b][h][channel][G codes] (channel
axis) or [b][h][token][d / G groups][G codes] (token axis), followed by one scale per block in
the same order (and `zeros` / `tensor_scale` where the format has them). Keys are stored
rotated by RoPE, or before RoPE with `key_rope: pre` (then re-rotated at each slot's position). Each buffer of a page
is one row of a [pages, bytes] uint8 tensor; pages are in slot order. When every page's buffers
are byte-aligned and the format has no per-tensor scale, the rows of all pages together are
exactly the encoding of the stacked chunks [pages, b, h, G, d], and one `decode` reads them all.
A format with a per-tensor float32 scale (nvfp4) has one per page: all pages are decoded at once
with that scale set to 1 and each page is then multiplied by its own, which is checked once, on
random data, to equal decoding page by page bit for bit (else pages are decoded one by one).
"""

from __future__ import annotations

import torch

from nmx.errors import InputError
from nmx.formats import Encoded, Format


class PageCodec:
    """Encodes chunks [pages, b, h, G, d] of keys or values into pages and back."""

    def __init__(self, fmt: Format, axis: str, group: int, what: str = "keys") -> None:
        self.fmt, self.axis, self.group, self.what = fmt, axis, group, what
        self._modes: dict[tuple, str] = {}

    def check_head_dim(self, head_dim: int) -> None:
        if self.axis == "token" and head_dim % self.group:
            raise InputError(f"quant.group: {self.group} does not divide head_dim {head_dim} (the {self.what} are "
                             f"quantized per token, in groups of channels); use a group that divides {head_dim}")

    def _view(self, chunks: torch.Tensor) -> tuple[torch.Tensor, int]:
        """[..., G, d] -> (view, dim) with the scale blocks along `dim` (non-negative)."""
        if self.axis == "channel":
            return chunks, chunks.dim() - 2
        g = self.group
        v = chunks.reshape(*chunks.shape[:-1], chunks.shape[-1] // g, g)
        return v, v.dim() - 1

    def _view_shape(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        if self.axis == "channel":
            return shape, len(shape) - 2
        g = self.group
        return (*shape[:-1], shape[-1] // g, g), len(shape)

    def page_bytes(self, b: int, h: int, d: int) -> int:
        """Exact bytes of one page (a chunk of G tokens for b batch rows and h heads)."""
        shape, dim = self._view_shape((b, h, self.group, d))
        return self.fmt.storage_bytes(shape, dim)

    def mode(self, b: int, h: int, d: int, device: torch.device) -> str:
        """How pages are encoded and decoded (checked once per shape, on random data):
        "stacked" (one call for all pages), "tensor_scale" (per-page encode, one decode call
        with the per-page float32 scale applied after) or "loop" (page by page)."""
        key = (b, h, d, str(device))
        if key not in self._modes:
            gen = torch.Generator().manual_seed(0)
            x = (torch.randn(3, b, h, self.group, d, generator=gen) * torch.tensor([1.0, 30.0, 1e-3])[:, None, None,
                                                                                     None, None]).to(device)
            one = [self.fmt.encode(*self._view(x[i])) for i in range(3)]
            both = self.fmt.encode(*self._view(x))
            names = set(one[0].buffers)
            if set(both.buffers) == names and all(
                    torch.equal(both.buffers[n], torch.cat([e.buffers[n] for e in one])) for n in names):
                self._modes[key] = "stacked"
            else:
                self._modes[key] = "loop"
                if "tensor_scale" in names and one[0].buffers["tensor_scale"].numel() == 4:
                    pages = {n: torch.stack([e.buffers[n] for e in one]) for n in names}
                    want = torch.stack([self.fmt.decode(e).reshape(b, h, self.group, d) for e in one])
                    if torch.equal(self._decode_scaled(pages, b, h, d), want):
                        self._modes[key] = "tensor_scale"
        return self._modes[key]

    def encode(self, chunks: torch.Tensor) -> dict[str, torch.Tensor]:
        """chunks [pages, b, h, G, d] (any float dtype) -> {buffer name: uint8 [pages, bytes]}."""
        pages = chunks.shape[0]
        if pages == 0:
            raise ValueError("no chunk to encode")
        _, b, h, _, d = chunks.shape
        if self.mode(b, h, d, chunks.device) == "stacked":
            enc = self.fmt.encode(*self._view(chunks))
            return {n: buf.reshape(pages, -1) for n, buf in enc.buffers.items()}
        encs = [self.fmt.encode(*self._view(chunks[i])) for i in range(pages)]
        return {n: torch.stack([e.buffers[n] for e in encs]) for n in encs[0].buffers}

    def _decode_stacked(self, pages: dict[str, torch.Tensor], b: int, h: int, d: int) -> torch.Tensor:
        n = next(iter(pages.values())).shape[0]
        shape, dim = self._view_shape((n, b, h, self.group, d))
        enc = Encoded(self.fmt.name, shape, dim, {k: p.reshape(-1) for k, p in pages.items()})
        return self.fmt.decode(enc).reshape(n, b, h, self.group, d)

    def _decode_scaled(self, pages: dict[str, torch.Tensor], b: int, h: int, d: int) -> torch.Tensor:
        scales = pages["tensor_scale"].contiguous().view(torch.float32).reshape(-1, 1, 1, 1, 1)
        unit = torch.tensor([1.0], dtype=torch.float32, device=scales.device).view(torch.uint8)
        rest = {k: p for k, p in pages.items() if k != "tensor_scale"}
        return self._decode_stacked({**rest, "tensor_scale": unit}, b, h, d) * scales

    def decode(self, pages: dict[str, torch.Tensor], b: int, h: int, d: int) -> torch.Tensor:
        """{name: [pages, bytes]} -> float32 [pages, b, h, G, d]."""
        first = next(iter(pages.values()))
        mode = self.mode(b, h, d, first.device)
        if mode == "stacked":
            return self._decode_stacked(pages, b, h, d)
        if mode == "tensor_scale":
            return self._decode_scaled(pages, b, h, d)
        one = (b, h, self.group, d)
        shape, dim = self._view_shape(one)
        return torch.stack([self.fmt.decode(Encoded(self.fmt.name, shape, dim, {k: p[i] for k, p in pages.items()}))
                            .reshape(one) for i in range(first.shape[0])])


def codecs(quant, head_dim: int) -> tuple[PageCodec, PageCodec]:
    """(keys codec, values codec) for a QuantSpec, checked against the model's head_dim."""
    k = PageCodec(quant.key_fmt, quant.key_axis, quant.chunk, "keys")
    v = PageCodec(quant.value_fmt, quant.value_axis, quant.chunk, "values")
    k.check_head_dim(head_dim)
    v.check_head_dim(head_dim)
    return k, v
