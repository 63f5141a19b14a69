"""GPU kernels that make compressed weights pay, each with a CPU reference twin.

    from nmx.kernels import pack, linear
    p = pack(weight, "nvfp4", "2:4")     # nmx's encoding, re-arranged for the kernel (layout.py)
    y = linear(x, p)                     # Triton on a CUDA GPU for M <= 64 tokens; else the reference

    fake_quant(x, "mxfp4")               # quantize -> dequantize in one pass, bit-identical to nmx.formats
    kv = pack_kv(k, v, "int4", "int4")   # a KV cache as nmx.kv quantizes it, laid out for the kernel
    o = decode_attention(q, kv)          # one new token per sequence, GQA, split over the context

`layout.py` documents the byte layout; `reference.py` is the CPU twin (the same decode in plain
torch); `triton_gemv.py` (one token) and `triton_tc.py` (1 .. 64 tokens) the Triton kernels;
`dispatch.py` picks one.

    convert(model, "int4_g128")          # every targeted nn.Linear -> PackedLinearModule (convert.py)
    convert_recipe(model, recipe, masks) # exactly what `nmx run` applied; `nmx run --kernels` scores it
    packed_kv_from_cache(cache.layers[i])  # an nmx.kv cache layer in the attention kernel's layout
    fuse_small_ops(model)                # RMSNorm, SiLU x up, rotary embedding: one kernel each (small_ops.py)
"""

from nmx.kernels.convert import ConvertReport, PackedLinearModule, convert, convert_recipe
from nmx.kernels.dispatch import linear
from nmx.kernels.fakequant import fake_quant, fake_quant_reference
from nmx.kernels.fakequant import supported_formats as fake_quant_formats
from nmx.kernels.kv_attention import decode_attention, decode_attention_reference
from nmx.kernels.kv_convert import packed_kv_from_cache
from nmx.kernels.kv_layout import PackedKV, dequantize_kv, pack_kv, random_packed_kv
from nmx.kernels.layout import PackedLinear, kernel_format, pack
from nmx.kernels.reference import decode_weight, linear_reference
from nmx.kernels.small_ops import fuse_small_ops

__all__ = ["PackedLinear", "pack", "linear", "kernel_format", "decode_weight", "linear_reference", "fake_quant",
           "fake_quant_reference", "fake_quant_formats", "PackedKV", "pack_kv", "dequantize_kv", "random_packed_kv",
           "decode_attention", "decode_attention_reference", "convert", "convert_recipe", "PackedLinearModule",
           "ConvertReport", "packed_kv_from_cache", "fuse_small_ops"]
