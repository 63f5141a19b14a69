"""Format names -> Format objects.

Names are parsed, so every member of a family is available, not only the listed ones:

  fp8_e4m3 fp8_e5m2 fp6_e2m3 fp6_e3m2 fp4_e2m1   OCP elements (plain casts, saturating)
  fpN_eEmM                                      any other float (finite-only, bias 2^(E-1)-1)
  bf16 fp16 e8m0 ue4m3                          pass-through and scale formats
  intN                                          symmetric, one fp16 scale per vector
  intN_gG[_asym]                                GPTQ/AWQ groups (fp16 scale, optional zero point)
  mxfp8_e4m3 mxfp8_e5m2 mxfp6_e2m3 mxfp6_e3m2 mxfp4 mxint8 mxfpN_eEmM
      [_gB] [_floor|_ceil|_even|_rceil]         OCP MX (block 32, E8M0 scale)
  nvfp4[_gB]                                    NVFP4 (block 16, UE4M3 + fp32 scales)
  bfp_mM_gG                                     block floating point (shared exponent)

A trailing `_sr` (stochastic rounding) or `_rz` (round toward zero) works on any
scaled or float format; nearest-even is the default.
"""

from __future__ import annotations

import re
from functools import lru_cache

import torch

from nmx.errors import FormatError, did_you_mean
from nmx.formats.base import Format
from nmx.formats.bfp import BFPFormat
from nmx.formats.elements import MXINT8, NAMED_FLOATS, float_element
from nmx.formats.elementwise import ElementFormat, TorchFloat
from nmx.formats.intgroup import IntGroupFormat
from nmx.formats.mx import SCALE_RULES, MXFormat
from nmx.formats.nvfp4 import NVFP4Format
from nmx.formats.rounding import Rounding

#: the formats `nmx formats` lists; any parsable name works with `get`
LISTED = (
    "fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp6_e3m2", "fp4_e2m1", "bf16", "fp16", "e8m0", "ue4m3",
    "int8", "int4",
    "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8",
    "nvfp4",
    "int8_g128", "int4_g128", "int4_g32", "int4_g128_asym", "int3_g128", "int2_g64",
    "bfp_m7_g16", "bfp_m4_g16", "bfp_m3_g16", "bfp_m2_g16",
)  # fmt: skip

ROUNDING_SUFFIXES = {"_sr": Rounding.STOCHASTIC, "_rz": Rounding.ZERO}
MAX_BLOCK = 1 << 16

_ELEMENT = re.compile(r"fp(\d+)_e(\d+)m(\d+)")
_INT = re.compile(r"int(\d+)(?:_g(\d+))?(_asym|_sym)?")
_MX = re.compile(
    r"mx(fp8_e4m3|fp8_e5m2|fp6_e2m3|fp6_e3m2|fp4|int8|fp\d+_e\d+m\d+)(?:_g(\d+))?(?:_(" + "|".join(SCALE_RULES) + r"))?"
)
_NVFP4 = re.compile(r"nvfp4(?:_g(\d+))?")
_BFP = re.compile(r"bfp_m(\d+)_g(\d+)")


def _block(text: str | None, default: int | None, name: str) -> int | None:
    if text is None:
        return default
    g = int(text)
    if not 1 <= g <= MAX_BLOCK:
        raise FormatError(f"{name}: block size {g} makes no sense; use 1 .. {MAX_BLOCK}")
    return g


def _float_element(ebits: int, mbits: int, total: int, name: str):
    if total != 1 + ebits + mbits:
        raise FormatError(f"{name}: fp{total} cannot have e{ebits}m{mbits} (1 sign + {ebits} + {mbits} bits)")
    return float_element(ebits, mbits)


def _parse(base: str, rounding: Rounding, name: str) -> Format:
    if base in ("bf16", "fp16"):
        return ElementFormat(TorchFloat(base, torch.bfloat16 if base == "bf16" else torch.float16), rounding)
    if base in NAMED_FLOATS:
        return ElementFormat(NAMED_FLOATS[base], rounding, name=name)
    if m := _ELEMENT.fullmatch(base):
        total, e, mb = map(int, m.groups())
        return ElementFormat(_float_element(e, mb, total, base), rounding, name=name)
    if m := _INT.fullmatch(base):
        bits = int(m[1])
        if not 2 <= bits <= 16:
            raise FormatError(f"{name}: integer formats need 2..16 bits")
        return IntGroupFormat(name, bits, _block(m[2], None, name), symmetric=m[3] != "_asym", rounding=rounding)
    if m := _MX.fullmatch(base):
        elem_name, block, rule = m.groups()
        if elem_name == "int8":
            element = MXINT8
        elif elem_name == "fp4":
            element = NAMED_FLOATS["fp4_e2m1"]
        else:
            total, e, mb = map(int, _ELEMENT.fullmatch(elem_name).groups())
            element = _float_element(e, mb, total, name)
        return MXFormat(name, element, _block(block, 32, name), rule or "floor", rounding)
    if m := _NVFP4.fullmatch(base):
        return NVFP4Format(name, _block(m[1], 16, name), rounding)
    if m := _BFP.fullmatch(base):
        mbits = int(m[1])
        if not 1 <= mbits <= 15:
            raise FormatError(f"{name}: BFP mantissas need 1..15 bits")
        return BFPFormat(name, mbits, _block(m[2], None, name), rounding)
    raise FormatError(f"unknown format {name!r}{did_you_mean(base, LISTED, 0.5)} (`nmx formats` lists them)")


def get(name: str) -> Format:
    """The format called `name` (see the module doc for the grammar)."""
    if not isinstance(name, str) or not name.strip():
        raise FormatError(f"a format name must be a non-empty string, got {name!r}")
    return _get(name.strip().lower())


@lru_cache(maxsize=None)
def _get(name: str) -> Format:
    rounding = Rounding.NEAREST
    base = name
    for suffix, mode in ROUNDING_SUFFIXES.items():
        if name.endswith(suffix):
            base, rounding = name[: -len(suffix)], mode
    return _parse(base, rounding, name)


def names() -> list[str]:
    """The listed formats, in table order."""
    return list(LISTED)
