"""Fused fake quantization: quantize -> dequantize in one pass, bit-identical to `nmx.formats`.

    from nmx.kernels.fakequant import fake_quant
    y = fake_quant(x, "mxfp4")     # == formats.get("mxfp4").quantize(x, dim=-1), bit for bit

Calibration and quantized evaluation call the format's `quantize` on every weight and activation;
in torch ops that is a dozen full-size temporaries per call. The Triton kernel
(`triton_fakequant.py`) reads x once and writes the result once, with the same arithmetic.

Formats (blocks along the last dim; round to nearest even only):
  MX        mxfp8_e4m3 mxfp8_e5m2 mxfp6_e2m3 mxfp6_e3m2 mxfp4 mxint8, any mxfpN_eEmM,
            with any power-of-two block (_gB) and scale rule (_floor _ceil _even _rceil)
  NVFP4     nvfp4[_gB]: the per-tensor scale needs the amax of the whole tensor first: a small
            reduction kernel reads x once before the fused pass (so nvfp4 reads x twice)
  int       intN_gG and intN_gG_asym, N = 2 .. 13 (the widths whose codes nmx computes in float32)
Refused with an InputError: per-vector formats (int8, int4: one scale per whole row), element-wise
and BFP formats, stochastic (`_sr`) and toward-zero (`_rz`) rounding, blocks that are not a power of
two or longer than 4096. `supported_formats()` lists the registered names that work.

Input: bf16, fp16 or fp32, any leading shape, the last dim a multiple of the block (no padding:
an InputError otherwise). A non-contiguous x is copied to a contiguous one first (one extra pass).

Output: float32 by default, the values `quantize` returns. `out_dtype=torch.bfloat16` or
`torch.float16` returns `quantize(x).to(out_dtype)` (round to nearest even) bit for bit, and halves
the bytes written; it is exact only where the values fit the narrower type: MX values do in bf16
(a 4..8-bit element times a power of two), outside the float32-subnormal range; NVFP4 and int-group
values (element x fp32 or fp16 scale) in general do not, and fp16 also overflows past 65504.

Backends: "triton" (CUDA tensors, triton installed), "reference" (`nmx.formats` quantize in torch
ops, on whatever device x is), "auto" = triton when it can run, else the reference with a warning
logged once. The result carries no autograd graph (calibration / evaluation, not training).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from nmx import formats
from nmx.errors import FormatError, InputError
from nmx.formats.elements import FloatElement, IntElement
from nmx.formats.intgroup import IntGroupFormat
from nmx.formats.mx import SCALE_RULES, MXFormat
from nmx.formats.nvfp4 import NVFP4Format
from nmx.formats.rounding import Rounding

log = logging.getLogger(__name__)

IN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_BLOCK = 4096
MAX_INT_BITS = 13  # wider codes are divided in float64 by nmx.formats.intgroup
SUPPORTED_TEXT = ("MX (mxfp8_e4m3, mxfp8_e5m2, mxfp6_e2m3, mxfp6_e3m2, mxfp4, mxint8, mxfpN_eEmM; _gB, scale rules), "
                  "nvfp4[_gB], intN_gG[_asym] (N 2..13); blocks a power of two <= 4096; nearest rounding only")


@dataclass(frozen=True)
class FakeQuantSpec:
    """What the kernel needs to know about a format (plain numbers: they become compile-time constants)."""

    name: str
    family: str  # "mx_float" | "mx_int" | "nvfp4" | "int_sym" | "int_asym"
    block: int
    scale_rule: int = 0  # MX: index into SCALE_RULES (floor, ceil, even, rceil)
    mbits: int = 0  # MX: element mantissa bits (the "even" rule's width; the float grid)
    emax: int = 0  # MX: exponent of the element's largest power of two (the spec's emax_elem)
    emin: int = 0  # MX float: exponent of the element's smallest normal
    elem_max: float = 0.0  # MX float: largest element (saturation bound)
    rceil_mul: float = 0.0  # MX: float32(1 / largest element), as nmx multiplies for the rceil rule
    frac_bits: int = 0  # MX int: fixed-point fraction bits (MXINT8: 6)
    qmax: int = 0  # integer elements: largest code (symmetric: magnitude; asymmetric: 2^N - 1)


def _unsupported(name: str, why: str) -> InputError:
    return InputError(f"fake_quant cannot run {name!r}: {why}; supported: {SUPPORTED_TEXT}")


def kernel_spec(fmt: str) -> FakeQuantSpec:
    """The kernel constants of format `fmt`, or an InputError naming what is supported."""
    if not isinstance(fmt, str):
        raise InputError(f"a format name must be a string, got {type(fmt).__name__}; supported: {SUPPORTED_TEXT}")
    return _kernel_spec(fmt)


@lru_cache(maxsize=None)
def _kernel_spec(fmt: str) -> FakeQuantSpec:
    try:
        f = formats.get(fmt)
    except FormatError as err:
        raise _unsupported(fmt, str(err)) from None
    name = f.name
    if f.rounding is not Rounding.NEAREST:
        raise _unsupported(name, f"{f.rounding.value} rounding (use formats.get({name!r}).quantize)")
    block = f.block_size
    if isinstance(f, MXFormat):
        el = f.element
        common = dict(name=name, block=block, scale_rule=SCALE_RULES.index(f.scale_rule), mbits=el.mbits,
                      emax=el.emax, rceil_mul=float(np.float32(1.0 / el.max)))
        if isinstance(el, IntElement):
            spec = FakeQuantSpec(family="mx_int", frac_bits=el.frac_bits, qmax=el.qmax, **common)
        elif isinstance(el, FloatElement):
            spec = FakeQuantSpec(family="mx_float", emin=el.emin, elem_max=float(el.max), **common)
        else:  # pragma: no cover - the registry makes only these two
            raise _unsupported(name, f"MX element {el!r}")
    elif isinstance(f, NVFP4Format):
        spec = FakeQuantSpec(name=name, family="nvfp4", block=block)
    elif isinstance(f, IntGroupFormat):
        if block is None:
            raise _unsupported(name, "one scale per whole vector (use a group size, e.g. int8_g128)")
        if f.code_bits > MAX_INT_BITS:
            raise _unsupported(name, f"{f.code_bits}-bit codes (at most {MAX_INT_BITS})")
        spec = FakeQuantSpec(name=name, family="int_sym" if f.symmetric else "int_asym", block=block,
                             qmax=f.element.qmax)
    else:
        raise _unsupported(name, f"the {f.family} family")
    if block < 2 or block > MAX_BLOCK or block & (block - 1):
        raise _unsupported(name, f"block {block} (need a power of two from 2 to {MAX_BLOCK})")
    return spec


def supported_formats() -> list[str]:
    """The registered (`nmx formats`) names fake_quant runs; any other member of these families works too."""
    out = []
    for n in formats.names():
        try:
            kernel_spec(n)
        except InputError:
            continue
        out.append(n)
    return out


@lru_cache(maxsize=1)
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


@lru_cache(maxsize=None)
def _warn_once(reason: str) -> None:
    log.warning("nmx.kernels.fake_quant: %s; using the reference path (nmx.formats in torch ops: same values, slower)",
                reason)


def _check(x, spec: FakeQuantSpec, out_dtype) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"fake_quant takes a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in IN_DTYPES:
        raise InputError(f"fake_quant takes bf16, fp16 or fp32 tensors, got {x.dtype} (cast it first)")
    if out_dtype not in OUT_DTYPES:
        raise InputError(f"out_dtype must be torch.float32, torch.bfloat16 or torch.float16, got {out_dtype!r}")
    if x.dim() == 0:
        raise InputError("fake_quant needs a tensor with at least one dimension (blocks run along the last)")
    if x.shape[-1] % spec.block:
        raise InputError(f"{spec.name}: the last dim ({x.shape[-1]}) must be a multiple of the block "
                         f"({spec.block}); pad it or use formats.get({spec.name!r}).quantize, which pads")
    return x.detach()


def _choose(x: torch.Tensor) -> str:
    if x.device.type != "cuda":
        _warn_once(f"x is on {x.device.type}, the Triton kernel needs a CUDA tensor")
        return "reference"
    if not triton_installed():
        _warn_once("triton is not installed")
        return "reference"
    return "triton"


def fake_quant_reference(x: torch.Tensor, fmt: str, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The oracle: `nmx.formats` quantize along the last dim, cast to out_dtype (no checks)."""
    return formats.get(fmt).quantize(x, dim=-1).to(out_dtype)


def fake_quant(x: torch.Tensor, fmt: str, backend: str = "auto", *,
               out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`formats.get(fmt).quantize(x, dim=-1)` (as out_dtype), in one fused pass on a CUDA GPU.

    backend: "auto" (triton where it can run, else the reference, warned once), "triton", "reference".
    """
    spec = kernel_spec(fmt)
    x = _check(x, spec, out_dtype)
    if backend == "auto":
        backend = _choose(x)
    if backend == "triton":
        if not triton_installed():
            raise InputError("backend='triton' needs triton installed (pip install triton) or use backend='auto'")
        if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise InputError(f"backend='triton' needs a CUDA tensor, x is on {x.device} (or use backend='auto')")
        from nmx.kernels.triton_fakequant import fake_quant_triton

        return fake_quant_triton(x.contiguous(), spec, out_dtype)
    if backend == "reference":
        return fake_quant_reference(x, fmt, out_dtype)
    raise InputError(f"unknown backend {backend!r}: use auto, triton or reference")
