"""Triton kernel: fused fake quantization (fakequant.py has the API and the format rules it supports).

x is viewed as [nblocks, B] (B = the format's block, along the last dim, contiguous). One program
takes BPP consecutive blocks (a [BPP, B] tile of TILE = BPP*B contiguous elements, ~4096): one
vector load, the block maxima by an integer max over |x|'s bit patterns (exact, NaN-safe: NaN and
Inf patterns sort above every finite one), the scale per block, every element rounded with
float32 bit tricks, one store. No tables.

The arithmetic is nmx.formats' own, step for step, so the result is bit-identical:
- MX (mx.py): the E8M0 scale exponent from amax's exponent/mantissa bits per scale rule; x times
  2^-X (exact); float elements rounded by the magic-number add of FloatElement.round (a + 1.5*2^k
  - 1.5*2^k rounds a to the grid, ties to even; torch's fp8 casts do the same rounding), integer
  elements by round(|v| * 2^6); the product with 2^X is the one rounding (subnormal results only).
- NVFP4 (nvfp4.py): the tensor scale from a first pass (`_finite_absmax_kernel`: max |x| over the
  finite values, atomically combined); the UE4M3 block scale rounded from the float64 quotient as
  nmx does (one float64 division per block); elements from the IEEE float32 quotient
  x / fl32(scale_b * s), except those within 2^-16 of a rounding boundary, which nmx rounds from
  the exact quotient: here, by comparing |x| with boundary * scale_b * s computed exactly in float64
  (only in tiles that hold such an element: a uniform branch).
- int groups (intgroup.py): the fp16 scale fl16(amax / qmax) by IEEE division and a round-to-nearest
  cast; codes round(x / scale) by IEEE division; the asymmetric zero point in float64 as nmx does.
IEEE details that make this exact on the GPU: divisions use `tl.math.div_rn` (Triton's `/` on
float32 is the approximate div.full), launches pass enable_fp_fusion=False (no FMA contraction)
and enable_reflect_ftz=False (no flushed subnormals in library calls); float32 subnormals are kept.

Non-finite blocks: a block holding NaN or Inf is all NaN (every family), as in nmx.formats.
Output float32, or bf16 / fp16 by round to nearest even of the float32 result (bf16 by integer
bit arithmetic, so Triton's CPU interpreter, whose bf16 cast truncates, agrees with the GPU).

Import this module only where triton is installed (fakequant.py does).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from nmx.kernels.fakequant import FakeQuantSpec

FAMILY_IDS = {"mx_float": 0, "mx_int": 1, "nvfp4": 2, "int_sym": 3, "int_asym": 4}
KIND_IDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
DEFAULT_TILE = 4096
MIN_PROGRAMS = 264  # two waves of an H100/H200's 132 SMs: small tensors get smaller tiles

SIGN_BIT = tl.constexpr(-(2**31))
ABS_MASK = tl.constexpr(0x7FFFFFFF)
INF_BITS = tl.constexpr(0x7F800000)
NAN_BITS = tl.constexpr(0x7FC00000)  # a quiet NaN; kept as bits: Triton re-checks globals by ==, and NaN != NaN


@triton.jit
def _nan():
    return tl.full((), NAN_BITS, tl.uint32).to(tl.float32, bitcast=True)


@triton.jit
def _f32(bits):
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _i32(v):
    return v.to(tl.int32, bitcast=True)


@triton.jit
def _with_sign_of(mag, like):
    """mag (non-negative) with the sign bit of `like` (copysign on the bit patterns)."""
    return _f32(_i32(mag) | (_i32(like) & SIGN_BIT))


@triton.jit
def _rint(a):
    """Round half to even of 0 <= a < 2^23 (float32): a + 2^23 - 2^23, where the float adder does the
    rounding. NaN and Inf pass; a larger a gives some value >= 2^23, which every caller clamps to a
    code far below it (so it need not be the integer nearest a)."""
    return (a + 8388608.0) - 8388608.0


@triton.jit
def _e8m0(code):
    """E8M0 code 0 .. 254 -> 2^(code - 127) as float32 (code 0 is the subnormal 2^-127)."""
    return _f32(tl.where(code == 0, 0x00400000, code << 23))


@triton.jit
def _load_f32(ptr, offs, mask, IN_KIND: tl.constexpr, MASKED: tl.constexpr):
    if IN_KIND == 1:  # bf16 passed as int16 bits: they are the high half of the same float32
        if MASKED:
            h = tl.load(ptr + offs, mask=mask, other=0)
        else:
            h = tl.load(ptr + offs)
        x = _f32(h.to(tl.int32) << 16)
    else:
        if MASKED:
            x = tl.load(ptr + offs, mask=mask, other=0.0)
        else:
            x = tl.load(ptr + offs)
        x = x.to(tl.float32)
    return x


@triton.jit
def _store(ptr, offs, y, mask, OUT_KIND: tl.constexpr, MASKED: tl.constexpr):
    if OUT_KIND == 1:  # bf16 as int16 bits: round to nearest even on the bit pattern, NaN kept NaN
        u = y.to(tl.uint32, bitcast=True)
        r = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
        out = tl.where(y != y, 0x7FC0, r).to(tl.int16)
    elif OUT_KIND == 2:
        out = y.to(tl.float16)
    else:
        out = y
    if MASKED:
        tl.store(ptr + offs, out, mask=mask)
    else:
        tl.store(ptr + offs, out)


@triton.jit
def _mx(x, amax_bits, bad, RULE: tl.constexpr, MBITS: tl.constexpr, EMAX: tl.constexpr, EMIN: tl.constexpr,
        ELEM_MAX: tl.constexpr, RCEIL_MUL: tl.constexpr, IS_INT: tl.constexpr, UNIT: tl.constexpr,
        INV_UNIT: tl.constexpr, QMAX: tl.constexpr):
    """MX blocks [BPP, B] with block maxima (bit patterns) [BPP] -> fake-quantized float32 (mx.py).
    A block with NaN or Inf (`bad`) gets the NaN scale: every element times NaN."""
    e = (amax_bits >> 23) - 127
    if RULE == 0:  # floor
        sx = e - EMAX
    elif RULE == 1:  # ceil
        sx = e + ((amax_bits & 0x7FFFFF) != 0).to(tl.int32) - EMAX
    elif RULE == 2:  # even: amax rounded to the element's mantissa width (half up) first
        sx = (((amax_bits + (1 << (22 - MBITS))) >> 23) & 0xFF) - 127 - EMAX
    else:  # rceil: ceil(log2(amax * fl32(1 / max_elem)))
        db = _i32(_f32(amax_bits) * RCEIL_MUL)
        de = ((db >> 23) & 0xFF) - 127
        dm = db & 0x7FFFFF
        sx = tl.where(de == -127, tl.where(dm > 0x400000, -126, -127), de + (dm != 0).to(tl.int32))
    sx = tl.minimum(tl.maximum(sx, -127), 127)
    scale = tl.where(bad, _nan(), _e8m0(sx + 127))[:, None]
    v = x * _e8m0(127 - sx)[:, None]  # x / 2^X, exact (but for subnormal results)
    vb = _i32(v)
    a = _f32(vb & ABS_MASK)
    if IS_INT:  # IntElement.round: round(|v| / unit), clamped, sign back, -0 -> +0
        q = tl.minimum(_rint(a * INV_UNIT), QMAX * 1.0)
        elem = tl.where(q == 0.0, 0.0, _with_sign_of(q, v)) * UNIT
    else:  # FloatElement.round, saturating: clamp, then the magic-number add at |v|'s binade
        a = tl.minimum(a, ELEM_MAX)  # (NaN only in NaN-scale blocks)
        eb = tl.maximum(_i32(a) >> 23, EMIN + 127)
        magic = _f32(((eb + (23 - MBITS)) << 23) | 0x400000)
        elem = _with_sign_of((a + magic) - magic, v)
    return elem * scale


@triton.jit
def _nvfp4(x, amax_bits, bad, amax_ptr):
    """NVFP4 blocks [BPP, B] -> fake-quantized float32 (nvfp4.py)."""
    s = tl.math.div_rn(_f32(tl.load(amax_ptr)), 2688.0)  # amax over the tensor's finite values / (448 * 6)
    s = tl.where(s > 0.0, s, 1.0)
    s64 = s.to(tl.float64)
    # UE4M3 block scale: round_ue4m3(amax_b / (6 s)) of the float64 quotient, saturating at 448
    q = _f32(amax_bits).to(tl.float64) / (s64 * 6.0)
    q = tl.where(q > 448.0, 448.0, q)
    qe = tl.maximum(q.to(tl.int64, bitcast=True) >> 52, 1023 - 6)  # biased exponent, at least emin = -6
    magic = (((qe + (52 - 3)) << 52) | (1 << 51)).to(tl.float64, bitcast=True)
    sb = ((q + magic) - magic).to(tl.float32)  # exact: a UE4M3 value
    sb = tl.where(bad, _nan(), sb)  # NaN or Inf in the block: the NaN scale
    # elements: round_e2m1(x / fl32(sb * s)), saturating at 6 (FloatElement.round with `exact`)
    d = sb * s
    v = tl.math.div_rn(x, d[:, None])
    vb = _i32(v)
    a = _f32(vb & ABS_MASK)
    a = tl.minimum(a, 6.0, propagate_nan=tl.PropagateNan.ALL)  # NaN passes, as torch.clamp
    eb = tl.maximum(_i32(a) >> 23, 127)  # E2M1's smallest normal exponent is 0
    scaled = a * _f32((255 - eb) << 23)  # grid spacing -> 1 (NaN a: NaN * 0)
    n = _rint(scaled)
    # within 2^-16 of a tie (|frac - 1/2| <= 2^-16 <=> distance to the nearest integer >= 1/2 - 2^-16,
    # exactly in float32 here): nmx rounds those again from the exact quotient
    near = tl.abs(scaled - n) >= 0.4999847412109375
    if tl.max(near.to(tl.int32)) > 0:
        # the exact quotient |x| / (sb s) lies above, on or below the boundary (lower + 1/2) * spacing:
        # compare |x| with boundary * sb * s, a product of 3 + 4 + 24 bits, exact in float64
        lower = tl.floor(scaled)
        spacing = _f32((eb - 1) << 23)
        bound = ((lower + 0.5) * spacing).to(tl.float64) * (sb.to(tl.float64) * s64)[:, None]
        ax = _f32(_i32(x) & ABS_MASK).to(tl.float64)
        odd = (lower - 2.0 * tl.floor(lower * 0.5)) == 1.0
        up = (ax > bound) | ((ax == bound) & odd)
        n = tl.where(near, lower + up.to(tl.float32), n)
    elem = _with_sign_of(n * _f32((eb - 1) << 23), v)
    elem = tl.where(sb[:, None] > 0.0, elem, 0.0)  # a zero block scale stores zero elements
    return (elem * sb[:, None]) * s  # NaN blocks: 0 * NaN


@triton.jit
def _fp16_scale(raw):
    """fl16(raw) as float32, saturating at 65504 (intgroup._fp16_scale)."""
    return tl.where(raw > 65504.0, 65504.0, raw).to(tl.float16).to(tl.float32)


@triton.jit
def int_sym_codes(x, amax_bits, bad, QMAX: tl.constexpr):
    """Symmetric int codes of the rows of x [R, B] (float32 values; amax_bits [R]: the bits of max |x| per
    row; bad [R]: NaN or Inf in the row) and their fp16 scales [R, 1] as float32 (NaN for a bad row,
    whose codes are 0): intgroup.py's arithmetic, step for step. Also used by triton_kv_pack.py."""
    scale = _fp16_scale(tl.math.div_rn(_f32(amax_bits), QMAX * 1.0))
    scale = tl.where(bad, _nan(), scale)[:, None]  # NaN or Inf in the group
    q = tl.minimum(_rint(tl.math.div_rn(_f32(_i32(x) & ABS_MASK), scale)), QMAX * 1.0)  # (NaN: masked below)
    codes = tl.where(q == 0.0, 0.0, _with_sign_of(q, x))  # -0 -> +0: two's complement has no -0
    return tl.where(scale > 0.0, codes, 0.0), scale


@triton.jit
def _int_sym(x, amax_bits, bad, QMAX: tl.constexpr):
    codes, scale = int_sym_codes(x, amax_bits, bad, QMAX)
    return codes * scale


@triton.jit
def _int_asym(x, bad, QMAX: tl.constexpr):
    lo = tl.min(x, axis=1)
    lo = tl.where(lo > 0.0, 0.0, lo)
    hi = tl.max(x, axis=1)
    hi = tl.where(hi < 0.0, 0.0, hi)
    scale = _fp16_scale(tl.math.div_rn(hi - lo, QMAX * 1.0))
    scale = tl.where(bad, _nan(), scale)
    z = (-lo).to(tl.float64) / scale.to(tl.float64)  # float64 as nmx: round(-lo / scale)
    z = tl.where(z < 4503599627370496.0, (z + 4503599627370496.0) - 4503599627370496.0, z)
    z = tl.where(z > QMAX, QMAX, z)
    zero = tl.where(scale > 0.0, z, 0.0).to(tl.float32)[:, None]
    scale = scale[:, None]
    q = tl.math.div_rn(x, scale)
    codes = _with_sign_of(_rint(_f32(_i32(q) & ABS_MASK)), q) + zero
    codes = tl.where(codes < 0.0, 0.0, codes)
    codes = tl.where(codes > QMAX, QMAX, codes)
    codes = tl.where(scale > 0.0, codes, 0.0)
    return (codes - zero) * scale


@triton.jit
def _fake_quant_kernel(x_ptr, y_ptr, amax_ptr, nblocks,
                       FAMILY: tl.constexpr, B: tl.constexpr, BPP: tl.constexpr, MASKED: tl.constexpr,
                       IN_KIND: tl.constexpr, OUT_KIND: tl.constexpr,
                       RULE: tl.constexpr, MBITS: tl.constexpr, EMAX: tl.constexpr, EMIN: tl.constexpr,
                       ELEM_MAX: tl.constexpr, RCEIL_MUL: tl.constexpr, UNIT: tl.constexpr,
                       INV_UNIT: tl.constexpr, QMAX: tl.constexpr):
    pid = tl.program_id(0)
    rows = tl.arange(0, BPP)
    offs = rows[:, None] * B + tl.arange(0, B)[None, :]
    mask = (pid * BPP + rows)[:, None] < nblocks
    base = pid.to(tl.int64) * (BPP * B)
    x = _load_f32(x_ptr + base, offs, mask, IN_KIND, MASKED)
    amax_bits = tl.max(_i32(x) & ABS_MASK, axis=1)  # |x| bit patterns order as the values; NaN on top
    bad = amax_bits >= INF_BITS  # NaN or Inf in the block: every family makes the whole block NaN
    if FAMILY == 0:
        y = _mx(x, amax_bits, bad, RULE, MBITS, EMAX, EMIN, ELEM_MAX, RCEIL_MUL, False, UNIT, INV_UNIT, QMAX)
    elif FAMILY == 1:
        y = _mx(x, amax_bits, bad, RULE, MBITS, EMAX, EMIN, ELEM_MAX, RCEIL_MUL, True, UNIT, INV_UNIT, QMAX)
    elif FAMILY == 2:
        y = _nvfp4(x, amax_bits, bad, amax_ptr)
    elif FAMILY == 3:
        y = _int_sym(x, amax_bits, bad, QMAX)
    else:
        y = _int_asym(x, bad, QMAX)
    _store(y_ptr + base, offs, y, mask, OUT_KIND, MASKED)


@triton.jit
def _finite_absmax_kernel(x_ptr, out_ptr, n, IN_KIND: tl.constexpr, TILE: tl.constexpr, ITERS: tl.constexpr):
    """out (int32, zeroed) = max over the finite |x| as float32 bit patterns (non-negative: int order)."""
    pid = tl.program_id(0)
    cols = tl.arange(0, TILE)
    acc = tl.zeros([TILE], dtype=tl.int32)
    for i in range(ITERS):
        offs = (pid.to(tl.int64) * ITERS + i) * TILE + cols
        b = _i32(_load_f32(x_ptr, offs, offs < n, IN_KIND, True)) & ABS_MASK
        acc = tl.maximum(acc, tl.where(b < INF_BITS, b, 0))
    tl.atomic_max(out_ptr, tl.max(acc, axis=0))


# launch options that keep the float arithmetic IEEE (see the module doc); Triton's interpreter ignores them
_IEEE = {"enable_fp_fusion": False, "enable_reflect_ftz": False}


def default_config(n_elements: int, block: int) -> dict[str, int]:
    """~4096 elements per program (8 warps); smaller tiles when that leaves too few programs."""
    tile = max(DEFAULT_TILE, block)
    while tile > max(block, 512) and triton.cdiv(n_elements, tile) < MIN_PROGRAMS:
        tile //= 2
    return {"TILE": tile, "num_warps": 8 if tile >= 4096 else 4}


def finite_absmax_bits(x: torch.Tensor) -> torch.Tensor:
    """int32 [1] on x's device: the float32 bit pattern of max |x| over x's finite values (0 if none)."""
    out = torch.zeros(1, dtype=torch.int32, device=x.device)
    n = x.numel()
    if n == 0:
        return out
    tile = 4096
    iters = 1 << max(0, min(6, math.ceil(math.log2(max(1, triton.cdiv(n, tile * 1024))))))
    xk = x.view(torch.int16) if x.dtype == torch.bfloat16 else x
    _finite_absmax_kernel[(triton.cdiv(n, tile * iters),)](xk, out, n, IN_KIND=KIND_IDS[x.dtype], TILE=tile,
                                                           ITERS=iters, num_warps=8, **_IEEE)
    return out


def fake_quant_triton(x: torch.Tensor, spec: FakeQuantSpec, out_dtype: torch.dtype = torch.float32,
                      config: dict[str, int] | None = None, poison: bool = False) -> torch.Tensor:
    """The fused pass over a contiguous x (bf16 / fp16 / fp32, last dim a multiple of spec.block).
    `poison` fills the output with NaN first (tests: every element must be written)."""
    if x.dim() == 0 or not x.is_contiguous() or x.shape[-1] % spec.block:
        raise ValueError("fake_quant_triton needs a contiguous x whose last dim is a multiple of the block")
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    if poison:
        y.fill_(float("nan"))
    n = x.numel()
    if n == 0:
        return y
    block = spec.block
    cfg = dict(config or default_config(n, block))
    bpp = max(1, cfg["TILE"] // block)
    nblocks = n // block
    xk = x.view(torch.int16) if x.dtype == torch.bfloat16 else x
    amax = finite_absmax_bits(x) if spec.family == "nvfp4" else xk  # (a placeholder pointer, never read)
    yk = y.view(torch.int16) if out_dtype == torch.bfloat16 else y
    unit = 2.0 ** -spec.frac_bits
    _fake_quant_kernel[(triton.cdiv(nblocks, bpp),)](
        xk, yk, amax, nblocks,
        FAMILY=FAMILY_IDS[spec.family], B=block, BPP=bpp, MASKED=nblocks % bpp != 0,
        IN_KIND=KIND_IDS[x.dtype], OUT_KIND=KIND_IDS[out_dtype],
        RULE=spec.scale_rule, MBITS=spec.mbits, EMAX=spec.emax, EMIN=spec.emin, ELEM_MAX=spec.elem_max,
        RCEIL_MUL=spec.rceil_mul, UNIT=unit, INV_UNIT=1.0 / unit, QMAX=spec.qmax,
        num_warps=cfg["num_warps"], **_IEEE)
    return y
