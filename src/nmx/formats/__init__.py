"""Number formats, exact to the bit: element casts, MX, NVFP4, integer groups, BFP.

    fmt = nmx.formats.get("mxfp4")
    y = fmt.quantize(w)            # fake quant: float32, same shape
    enc = fmt.encode(w)            # packed codes + scales (uint8 buffers)
    fmt.decode(enc)                # == y, bit for bit
    fmt.bits_per_element           # 4.25
    fmt.storage_bytes(w.shape)     # exact bytes of enc, padding included
"""

from nmx.formats.base import Encoded, Format
from nmx.formats.registry import get, names
from nmx.formats.rounding import Rounding

__all__ = ["Encoded", "Format", "Rounding", "get", "names"]
