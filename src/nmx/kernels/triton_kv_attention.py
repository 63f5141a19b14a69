"""Triton kernels: decode attention (one query token) over a packed KV cache (kv_layout.py), split-K.

Flash-decoding: `_kv_decode_kernel` runs one program per (batch row, KV head, split of the context);
each program streams its tokens, computes the scores of every query head of the KV head's group,
and writes a partial result (running max m, sum l of 2^(s - m), unnormalized output) per query head;
`_kv_reduce_kernel` merges the splits of each query head. The splits over quantized storage and
the splits over the bf16 window (the residual tokens, or the whole cache for bf16) are programs of
the same grid. A quantized program is one warp by default: no cross-warp traffic, and many
programs per SM keep enough bytes in flight.

Quantized tokens, per block of BT tokens (one contiguous run of 32-bit code words):

- decode costs integer operations on whole words only (conversion instructions run at 1/8 of the
  FMA rate on Hopper): a block's words hold NPH = 16 / bits *planes*; plane n (tokens i * NPH + n)
  is one shift and one mask of every word, which leaves code n of channels 2c and 2c + 1 in the two
  16-bit halves: for int formats, or-ed with 0x3C003C00, exactly two fp16 X = 1 + u / 2^bits (u the
  offset-binary code: the value is 2^bits (X - 1.5)); each plane is its own matmul, so decoded
  values never move between lanes. e4m3 codes move into fp16 bits (value * 2^-8); e2m1 (mxfp4) is
  decoded exactly through float32 into bf16 operands (correct, not fast);
- the key scales (one per channel per SK tokens) are folded into the query: row r of the score
  matmul is (chunk c, query head h) with q' = q * s_k[c] in fp16 (q first multiplied by a power of
  two to |q| < 1, so no product overflows), and only the tokens of chunk c count for that row: with
  4 query heads per KV head, chunks x heads fill the 16 rows the tensor cores need instead of 12
  padding rows. Each row keeps its own running max and sum (like a split); rows of the same head
  are merged at the end of the program. The code offset is one small matmul per block: the row sums
  of q' come from q' times a block of ones;
- the value scales (one per token per SV channels) are folded into the attention weights: per
  scale group, P' = p * s_v in fp16 (p <= 1 and s_v an fp16: no overflow), and a matmul batched over
  groups accumulates P' (X - 1.5) in float32 (X - 1.5 is exact in fp16: no offset left to remove);
- softmax runs in float32 in base 2 (the query carries log2(e)).

bf16 tokens: the plain flash-decoding loop, 16 query-head rows (padded) per program.

Each buffer's (batch row, KV head) run starts at b * stride_b + h * stride_h, read from the tensor itself, so
the kernel takes `pack_kv`'s tight buffers and `PackedKVCache.view()`'s token slices of preallocated ones
(rows of a capacity, not of the current length) alike, without a copy.

Under Triton's CPU interpreter (TRITON_INTERPRET=1) the matmul operands are float32 holding the same
fp16 / bf16 values (its bf16 dots are wrong and its bf16 casts truncate, Triton 3.6) and the block
loops are while loops (its range() cannot take runtime bounds with numpy 2.4).

Import this module only where triton is installed (nmx.kernels.kv_attention does).
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch
import triton
import triton.language as tl

from nmx.errors import InputError
from nmx.kernels.kv_layout import PackedKV

ELEM_IDS = {"int": 0, "e2m1": 1, "e4m3": 2}
SCALE_IDS = {None: 0, "fp16": 1, "e8m0": 2}
LOG2E = 1.4426950408889634
NEG = tl.constexpr(-1.0e30)  # the running max before any token: finite, so empty rows never make inf - inf


@triton.jit
def _round(x, DT: tl.constexpr, INTERPRET: tl.constexpr):
    """float32 x rounded (nearest even) to DT (fp16 or bf16) as a matmul operand: DT on the GPU, float32
    holding the same value under the interpreter."""
    if not INTERPRET:
        y = x.to(DT)
    elif DT == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        y = bits.to(tl.float32, bitcast=True)
    else:
        y = x.to(tl.float16).to(tl.float32)
    return y


@triton.jit
def _plane(w, n: tl.constexpr, BITS: tl.constexpr, ELEM: tl.constexpr, SUBNORMAL: tl.constexpr,
           INTERPRET: tl.constexpr):
    """Code n of both halves of every word of `w` [..., W] (one token in 16 / BITS, channels 2c and 2c + 1) as
    a matmul operand [..., 2 W], from integer operations on whole words (two 16-bit lanes at a time):
      int  fp16 X = 1 + u / 2^bits (bits 0x3C00 | u << (10 - bits)), or with SUBNORMAL X = u * 2^-(14 + bits)
           (bits u << (10 - bits), one operation less), u the offset-binary code;
      e4m3 fp16 X = value * 2^-8 (the e4m3 bits moved into an fp16, subnormals included);
      e2m1 bf16 X = value (exactly, through float32)."""
    if ELEM == 0:
        SH: tl.constexpr = n * BITS - (10 - BITS)  # moves code n to bits 10 - BITS .. 9 of each half
        M: tl.constexpr = (((1 << BITS) - 1) << (10 - BITS)) * 0x10001
        if SH >= 0:
            y = (w >> SH) & M
        else:
            y = (w << -SH) & M
        if not SUBNORMAL:
            y = y | 0x3C003C00
    elif ELEM == 2:
        u = (w >> (8 * n)) & 0x00FF00FF
        y = ((u & 0x007F007F) << 7) | ((u & 0x00800080) << 8)
    else:
        u = (w >> (4 * n)) & 0x000F000F
        y = ((u & 0x00070007) << 9) | ((u & 0x00080008) << 12)  # fp16 bits of the value * 2^-14
    lo = y.to(tl.int16).to(tl.float16, bitcast=True)
    hi = (y >> 16).to(tl.int16).to(tl.float16, bitcast=True)
    if ELEM == 1:
        lo = (lo.to(tl.float32) * 16384.0).to(tl.bfloat16)
        hi = (hi.to(tl.float32) * 16384.0).to(tl.bfloat16)
    x = tl.join(lo, hi)
    if INTERPRET:
        x = x.to(tl.float32)
    return tl.reshape(x, x.shape[:-2] + (2 * x.shape[-2],))


@triton.jit
def _scales(ptr, offs, mask, KIND: tl.constexpr):
    """Scales as stored: fp16 (KIND 1, kept fp16) or e8m0 codes (KIND 2, float32 2^(e - 127); code 0 is 2^-127)."""
    if KIND == 1:
        s = tl.load(ptr + offs, mask=mask, other=0.0)
    else:
        e = tl.load(ptr + offs, mask=mask, other=127).to(tl.int32)
        s = tl.where(e == 0, 0x00400000, e << 23).to(tl.float32, bitcast=True)
    return s


@triton.jit
def _quant_block(blk, qn, fk, kc_base, ks_base, vc_base, vs_base, m_i, l_i, acc, c_r, row_ok, d, TQ, NCK,
                 R: tl.constexpr, D: tl.constexpr, SK: tl.constexpr, BT: tl.constexpr, NPH: tl.constexpr,
                 KBITS: tl.constexpr, KELEM: tl.constexpr, KSCALE: tl.constexpr, NSV: tl.constexpr,
                 SV: tl.constexpr, VBITS: tl.constexpr, VELEM: tl.constexpr, VSCALE: tl.constexpr,
                 XOFF_K: tl.constexpr, XOFF_V: tl.constexpr, SUBNORMAL: tl.constexpr, INTERPRET: tl.constexpr):
    """One block of BT quantized tokens, NPH planes of TG = BT / NPH tokens (plane n: tokens i * NPH + n):
    update every row's running max, sum and output."""
    TG: tl.constexpr = BT // NPH
    DW: tl.constexpr = D // 2
    KDT: tl.constexpr = tl.bfloat16 if KELEM == 1 else tl.float16
    VDT: tl.constexpr = tl.bfloat16 if VELEM == 1 else tl.float16
    i = tl.arange(0, TG)
    words_ok = blk * TG + i < TQ // NPH
    chunk = blk * (BT // SK) + c_r
    # q' = q * (the key scales of the row's chunk)
    if KSCALE == 0:
        qk = qn
    else:
        sk = _scales(ks_base, chunk[:, None] * D + d[None, :], (chunk < NCK)[:, None] & row_ok[:, None], KSCALE)
        if KELEM == 0:  # fp16 q (|q| < 1) times the fp16 scale, rounded once
            if INTERPRET:
                qk = (qn.to(tl.float16) * sk).to(tl.float32)
            else:
                qk = qn * sk
        else:
            qk = _round(qn * sk, KDT, INTERPRET)
    if KELEM == 0:  # the code offset: XOFF * (row sum of q'), the sum taken by the tensor cores
        ones_k = tl.full((D, 16), 1.0, tl.float32 if INTERPRET else KDT)
        shift = tl.max(tl.dot(qk, ones_k), axis=1) * (XOFF_K * fk)
    else:
        shift = tl.zeros([R], tl.float32)
    # scores, plane by plane, kept until the block's max is known
    wk = tl.load(kc_base + (blk * TG + i)[:, None] * DW + tl.arange(0, DW)[None, :], mask=words_ok[:, None], other=0)
    scores = ()
    m_new = m_i
    # token i * NPH + n of the block is in chunk i // (SK / NPH) of it whatever n: one mask for all planes
    # (the last block's missing chunks are rows whose chunk >= NCK)
    valid = ((i // (SK // NPH))[None, :] == c_r[:, None]) & (row_ok & (chunk < NCK))[:, None]
    for n in tl.static_range(NPH):
        s = tl.dot(qk, tl.trans(_plane(wk, n, KBITS, KELEM, SUBNORMAL, INTERPRET))) * fk - shift[:, None]
        s = tl.where(valid, s, float("-inf"))
        scores = scores + (s,)
        m_new = tl.maximum(m_new, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha
    acc = acc * alpha[None, :, None]
    # values: the value scales folded into the weights, one scale group per batch of the matmul
    g = tl.arange(0, NSV)
    j = tl.arange(0, SV // 2)
    wv = tl.load(vc_base + (blk * TG + i)[None, :, None] * DW + (g[:, None] * (SV // 2) + j[None, :])[:, None, :],
                 mask=words_ok[None, :, None], other=0)  # [NSV, TG, SV / 2]
    for n in tl.static_range(NPH):
        p = tl.exp2(scores[n] - m_new[:, None])
        l_i = l_i + tl.sum(p, axis=1)
        tok = blk * BT + i * NPH + n
        x = _plane(wv, n, VBITS, VELEM, SUBNORMAL, INTERPRET)
        if VELEM == 0:
            x = x - XOFF_V  # exact in fp16: the signed code times a power of two
        if VSCALE == 0:
            p3 = tl.broadcast_to(_round(p, VDT, INTERPRET)[None, :, :], (NSV, R, TG))
        else:
            sv = _scales(vs_base, tok[None, :] * NSV + g[:, None], (tok < TQ)[None, :], VSCALE)  # [NSV, TG]
            if VELEM == 0:  # fp16 weights times fp16 scales (p <= 1: no overflow)
                if INTERPRET:
                    p3 = (p.to(tl.float16)[None, :, :] * sv[:, None, :]).to(tl.float32)
                else:
                    p3 = p.to(tl.float16)[None, :, :] * sv[:, None, :]
            else:
                p3 = _round(p[None, :, :] * sv[:, None, :], VDT, INTERPRET)
        acc = tl.dot(p3, x, acc)
    return m_new, l_i, acc


@triton.jit
def _bf16_block(blk, qb, kr_base, vr_base, m_b, l_b, acc_b, row_ok, d, TR, D: tl.constexpr, BTR: tl.constexpr,
                INTERPRET: tl.constexpr):
    """One block of BTR bf16 tokens (the window)."""
    tok = blk * BTR + tl.arange(0, BTR)
    tok_ok = tok < TR
    kt = tl.load(kr_base + tok[:, None] * D + d[None, :], mask=tok_ok[:, None], other=0.0)
    vt = tl.load(vr_base + tok[:, None] * D + d[None, :], mask=tok_ok[:, None], other=0.0)
    if INTERPRET:
        kt = kt.to(tl.float32)
        vt = vt.to(tl.float32)
    s = tl.dot(qb, tl.trans(kt))
    s = tl.where(tok_ok[None, :] & row_ok[:, None], s, float("-inf"))
    m_new = tl.maximum(m_b, tl.max(s, axis=1))
    alpha = tl.exp2(m_b - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_b = l_b * alpha + tl.sum(p, axis=1)
    acc_b = tl.dot(_round(p, tl.bfloat16, INTERPRET), vt, acc_b * alpha[:, None])
    return m_new, l_b, acc_b


@triton.jit
def _kv_decode_kernel(
        q_ptr, kc_ptr, ks_ptr, vc_ptr, vs_ptr, kr_ptr, vr_ptr, wo_ptr, wm_ptr, wl_ptr, len_ptr,
        qscale, TQ, TR, NCK, NBLK, BPS, NSQ, NBLK_R, BPS_R, NS, HKV, CAP, RES, GQ,
        kc_sb, kc_sh, ks_sb, ks_sh, vc_sb, vc_sh, vs_sb, vs_sh, kr_sb, kr_sh, vr_sb, vr_sh,
        HG: tl.constexpr, HGP: tl.constexpr, D: tl.constexpr, R: tl.constexpr, SK: tl.constexpr,
        BT: tl.constexpr, NPH: tl.constexpr, KBITS: tl.constexpr, KELEM: tl.constexpr, KSCALE: tl.constexpr,
        NSV: tl.constexpr,
        SV: tl.constexpr, VBITS: tl.constexpr, VELEM: tl.constexpr, VSCALE: tl.constexpr, RB: tl.constexpr,
        BTR: tl.constexpr, XSCALE_K: tl.constexpr, XOFF_K: tl.constexpr, XSCALE_V: tl.constexpr,
        XOFF_V: tl.constexpr, SUBNORMAL: tl.constexpr, DEVLEN: tl.constexpr, INTERPRET: tl.constexpr):
    pid_bh = tl.program_id(0)
    split = tl.program_id(1)
    b64 = (pid_bh // HKV).to(tl.int64)  # each buffer's (b, h) row starts at b * stride_b + h * stride_h
    h64 = (pid_bh % HKV).to(tl.int64)
    d = tl.arange(0, D)
    ws_row = (pid_bh * NS + split) * HGP
    if DEVLEN:  # graph mode: the grid covers the capacity; the live lengths come from the cache's counter
        t_all = tl.load(len_ptr + pid_bh)
        t_all = tl.where(t_all > CAP, 0, t_all)  # an overflowed cache: no tokens, a NaN output
        over = t_all - RES
        tq = tl.where(over >= GQ, (over // GQ) * GQ, 0)
        tr = t_all - tq
        nck = tq // SK
        nblk = (tq + BT - 1) // BT
        nblk_r = (tr + BTR - 1) // BTR
    else:
        tq = TQ
        tr = TR
        nck = NCK
        nblk = NBLK
        nblk_r = NBLK_R
    if split < NSQ:
        # ---- quantized tokens: rows r = (chunk r // HGP of the block, query head r % HGP) ----------
        rows = tl.arange(0, R)
        c_r = rows // HGP
        h_r = rows % HGP
        row_ok = h_r < HG
        qf = tl.load(q_ptr + (pid_bh * HG + h_r)[:, None] * D + d[None, :], mask=row_ok[:, None],
                     other=0.0).to(tl.float32) * qscale
        if KELEM == 1:  # bf16 operands: q as it is
            qn = qf
            fk = 1.0
        else:  # fp16 operands: q times a power of two to |q| < 1, so q * (an fp16 scale) never overflows
            eb = tl.minimum((tl.max(tl.max(tl.abs(qf), axis=1), axis=0).to(tl.int32, bitcast=True) >> 23) & 255, 253)
            qn = _round(qf * ((253 - eb) << 23).to(tl.float32, bitcast=True), tl.float16, INTERPRET)
            fk = ((eb + 1) << 23).to(tl.float32, bitcast=True) * XSCALE_K
        kc_base = kc_ptr + b64 * kc_sb + h64 * kc_sh
        vc_base = vc_ptr + b64 * vc_sb + h64 * vc_sh
        ks_base = ks_ptr + b64 * ks_sb + h64 * ks_sh
        vs_base = vs_ptr + b64 * vs_sb + h64 * vs_sh
        m_i = tl.full([R], NEG, tl.float32)
        l_i = tl.zeros([R], tl.float32)
        acc = tl.zeros([NSV, R, SV], tl.float32)
        blk = split * BPS
        blk_hi = tl.minimum(blk + BPS, nblk)
        if INTERPRET:
            while blk < blk_hi:
                m_i, l_i, acc = _quant_block(
                    blk, qn, fk, kc_base, ks_base, vc_base, vs_base, m_i, l_i, acc, c_r, row_ok, d, tq, nck, R, D, SK,
                    BT, NPH, KBITS, KELEM, KSCALE, NSV, SV, VBITS, VELEM, VSCALE, XOFF_K, XOFF_V, SUBNORMAL,
                    INTERPRET)
                blk += 1
        else:
            for bq in range(blk, blk_hi):
                m_i, l_i, acc = _quant_block(
                    bq, qn, fk, kc_base, ks_base, vc_base, vs_base, m_i, l_i, acc, c_r, row_ok, d, tq, nck, R, D, SK,
                    BT, NPH, KBITS, KELEM, KSCALE, NSV, SV, VBITS, VELEM, VSCALE, XOFF_K, XOFF_V, SUBNORMAL,
                    INTERPRET)
        acc = acc * XSCALE_V
        # merge the chunk rows of each head
        CR: tl.constexpr = R // HGP
        m2 = tl.reshape(m_i, (CR, HGP))
        mh = tl.max(m2, axis=0)
        w2 = tl.exp2(m2 - mh[None, :])
        lh = tl.sum(tl.reshape(l_i, (CR, HGP)) * w2, axis=0)
        o = tl.sum(tl.reshape(acc, (NSV, CR, HGP, SV)) * w2[None, :, :, None], axis=1)  # [NSV, HGP, SV]
        hh = tl.arange(0, HGP)
        chan = tl.arange(0, NSV)[:, None, None] * SV + tl.arange(0, SV)[None, None, :]
        tl.store(wo_ptr + (ws_row + hh)[None, :, None] * D + chan, o, mask=(hh < HG)[None, :, None])
        tl.store(wm_ptr + ws_row + hh, mh, mask=hh < HG)
        tl.store(wl_ptr + ws_row + hh, lh, mask=hh < HG)
    else:
        # ---- bf16 tokens (the residual window): rows = query heads, padded to RB ----------------------
        rows_b = tl.arange(0, RB)
        ok_b = rows_b < HG
        qb = _round(tl.load(q_ptr + (pid_bh * HG + rows_b)[:, None] * D + d[None, :], mask=ok_b[:, None],
                            other=0.0).to(tl.float32) * qscale, tl.bfloat16, INTERPRET)
        kr_base = kr_ptr + b64 * kr_sb + h64 * kr_sh
        vr_base = vr_ptr + b64 * vr_sb + h64 * vr_sh
        m_b = tl.full([RB], NEG, tl.float32)
        l_b = tl.zeros([RB], tl.float32)
        acc_b = tl.zeros([RB, D], tl.float32)
        blk_b = (split - NSQ) * BPS_R
        hi_b = tl.minimum(blk_b + BPS_R, nblk_r)
        if INTERPRET:
            while blk_b < hi_b:
                m_b, l_b, acc_b = _bf16_block(blk_b, qb, kr_base, vr_base, m_b, l_b, acc_b, ok_b, d, tr, D, BTR,
                                               INTERPRET)
                blk_b += 1
        else:
            for bb in range(blk_b, hi_b):
                m_b, l_b, acc_b = _bf16_block(bb, qb, kr_base, vr_base, m_b, l_b, acc_b, ok_b, d, tr, D, BTR,
                                               INTERPRET)
        tl.store(wo_ptr + (ws_row + rows_b)[:, None] * D + d[None, :], acc_b, mask=ok_b[:, None])
        tl.store(wm_ptr + ws_row + rows_b, m_b, mask=ok_b)
        tl.store(wl_ptr + ws_row + rows_b, l_b, mask=ok_b)


@triton.jit
def _kv_reduce_kernel(wo_ptr, wm_ptr, wl_ptr, out_ptr, NS, HG: tl.constexpr, HGP: tl.constexpr, D: tl.constexpr,
                      NSP: tl.constexpr, INTERPRET: tl.constexpr):
    """out[b, hq] = sum over splits of o * 2^(m - M) / sum of l * 2^(m - M), M the largest m."""
    pid = tl.program_id(0)  # = (b * kv_heads + kv head) * HG + h = b * Hq + query head
    bh = pid // HG
    h = pid % HG
    s = tl.arange(0, NSP)
    ok = s < NS
    row = (bh * NS + s) * HGP + h
    m = tl.load(wm_ptr + row, mask=ok, other=float("-inf"))
    l_s = tl.load(wl_ptr + row, mask=ok, other=0.0)
    top = tl.max(m, axis=0)
    total = tl.sum(l_s * tl.exp2(m - top), axis=0)
    d = tl.arange(0, D)
    out = tl.zeros([D], tl.float32)
    CH: tl.constexpr = 16 if NSP > 16 else NSP
    for c in tl.static_range(NSP // CH):  # splits CH at a time: bounded registers for any split count
        sc = c * CH + tl.arange(0, CH)
        okc = sc < NS
        rc = (bh * NS + sc) * HGP + h
        w = tl.exp2(tl.load(wm_ptr + rc, mask=okc, other=float("-inf")) - top)
        o = tl.load(wo_ptr + rc[:, None] * D + d[None, :], mask=okc[:, None], other=0.0)
        out += tl.sum(o * w[:, None], axis=0)
    out = out / total
    tl.store(out_ptr + pid * D + d, _round(out, tl.bfloat16, INTERPRET).to(tl.bfloat16))


# ---- launch ---------------------------------------------------------------------------------------

#: num_warps None: 1 for quantized caches (a program per warp: no cross-warp traffic), 4 for bf16 ones;
#: BT_MAX caps the quantized block (tokens); BTR: bf16 tokens per block (None: 32 with 1 warp, else 64);
#: num_splits None: enough programs for `warps_per_sm` warps per SM, at least `min_blocks_per_split` blocks each;
#: SUBNORMAL: decode int codes as fp16 subnormals (one operation less; needs tensor cores that take them);
#: maxnreg: a register cap for the decode kernel (more programs per SM, some spills)
DEFAULTS = {"num_warps": None, "num_stages": 2, "BT_MAX": 64, "BTR": None, "num_splits": None, "warps_per_sm": 32,
            "min_blocks_per_split": 2, "SUBNORMAL": False, "maxnreg": None}


def _x_encoding(elem: str, bits: int, subnormal: bool) -> tuple[float, float]:
    """(XSCALE, XOFF): a code's value is XSCALE * (X - XOFF) for the operand X `_segments` builds."""
    if elem == "int":
        return (2.0 ** (14 + bits), 2.0 ** -15) if subnormal else (2.0 ** bits, 1.5)
    return (256.0, 0.0) if elem == "e4m3" else (1.0, 0.0)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _splits(blocks: int, pairs: int, want: int | None, cfg: dict, device: torch.device, warps: int) -> tuple[int, int]:
    """(splits, blocks per split) over `blocks` blocks for `pairs` (batch, KV head) pairs: by default enough
    programs for `warps_per_sm` warps on every SM, each with at least `min_blocks_per_split` blocks."""
    if blocks == 0:
        return 0, 1
    if want is None:
        want = max(1, -(-cfg["warps_per_sm"] * _sm_count(device) // (pairs * warps)))
        want = min(want, max(1, blocks // cfg["min_blocks_per_split"]))
    want = max(1, min(int(want), blocks))
    per = -(-blocks // want)
    return -(-blocks // per), per


def plan(q_shape: tuple[int, int, int], packed: PackedKV, config: dict | None = None,
         device: torch.device | None = None) -> dict:
    """Tile sizes, splits and constexprs of one call (also what benchmarks report)."""
    cfg = {**DEFAULTS, **(config or {})}
    b, hq, d = q_shape
    hkv = packed.kv_heads
    hg = hq // hkv
    hgp = _next_pow2(hg)
    device = device or packed.device
    kelem, kbits, kscale = packed.key_kind
    velem, vbits, vscale = packed.value_kind
    quant = kelem != "bf16" and packed.quantized > 0
    p = {"HG": hg, "HGP": hgp, "D": d, "RB": max(16, hgp)}
    warps = cfg["num_warps"]
    if kelem != "bf16":
        nph = 16 // kbits
        if 16 // vbits != nph:
            raise InputError(f"the Triton kernel reads keys and values of the same code width; {packed.key_format} "
                             f"keys with {packed.value_format} values need backend='reference'")
        sk = packed.key_span
        # a block: at least 16 tokens per plane (the matmul's N), whole key-scale chunks, and enough chunks
        # that chunks x query heads fill 16 rows
        bt = max(16 * nph, sk, min(max(1, 16 // hgp) * sk, cfg["BT_MAX"]))
        r = max(16, (bt // sk) * hgp)
        sub = bool(cfg["SUBNORMAL"])
        (xsk, xok), (xsv, xov) = _x_encoding(kelem, kbits, sub), _x_encoding(velem, vbits, sub)
        sv = packed.value_span
        p.update(R=r, SK=sk, BT=bt, NPH=nph, KBITS=kbits, KELEM=ELEM_IDS[kelem], KSCALE=SCALE_IDS[kscale],
                 NSV=d // sv, SV=sv, VBITS=vbits, VELEM=ELEM_IDS[velem], VSCALE=SCALE_IDS[vscale], XSCALE_K=xsk,
                 XOFF_K=xok, XSCALE_V=xsv, XOFF_V=xov, SUBNORMAL=sub)
        if warps is None:  # one warp per program while a block's scores fit its registers
            warps = 1 if r * bt <= 16 * 128 else 4
    else:  # placeholders: the quantized branch never runs
        p.update(R=16, SK=16, BT=32, NPH=2, KBITS=8, KELEM=2, KSCALE=0, NSV=1, SV=d, VBITS=8, VELEM=2, VSCALE=0,
                 XSCALE_K=1.0, XOFF_K=0.0, XSCALE_V=1.0, XOFF_V=0.0, SUBNORMAL=False)
    warps = warps or 4
    p["BTR"] = cfg["BTR"] or (32 if warps == 1 else 64)
    pairs = b * hkv
    nblk = -(-packed.quantized // p["BT"]) if quant else 0
    nblk_r = -(-packed.rest // p["BTR"])
    want = cfg["num_splits"]
    nsq, bps = _splits(nblk, pairs, want, cfg, device, warps)
    if nblk and nblk_r:  # the window next to quantized splits: pieces of about a split's bytes each
        split_bytes = bps * p["BT"] * d * (p["KBITS"] + p["VBITS"]) // 8
        nsr = max(1, min(nblk_r, -(-nblk_r * p["BTR"] * d * 4 // split_bytes)))
        bps_r = -(-nblk_r // nsr)
        nsr = -(-nblk_r // bps_r)
    else:
        nsr, bps_r = _splits(nblk_r, pairs, want, cfg, device, warps)
    p.update(NBLK=nblk, BPS=bps, NSQ=nsq, NBLK_R=nblk_r, BPS_R=bps_r, NS=nsq + nsr,
             num_warps=warps, num_stages=cfg["num_stages"], maxnreg=cfg["maxnreg"])
    return p


KERNEL_KEYS = ("HG", "HGP", "D", "R", "SK", "BT", "NPH", "KBITS", "KELEM", "KSCALE", "NSV", "SV", "VBITS", "VELEM",
               "VSCALE", "RB", "BTR", "XSCALE_K", "XOFF_K", "XSCALE_V", "XOFF_V", "SUBNORMAL")


def _arg(t: torch.Tensor | None, dtype: torch.dtype | None, dummy: torch.Tensor) -> torch.Tensor:
    if t is None or t.numel() == 0:
        return dummy
    return t.view(dtype) if dtype is not None else t


def _stand_in(scale_kind: str | None, device: torch.device) -> torch.Tensor:
    """A one-element tensor of the dtype a scale buffer of this kind has (kv_layout's module docstring)."""
    dtype = {"fp16": torch.float16, "e8m0": torch.uint8}.get(scale_kind, torch.float16)
    return torch.zeros(1, device=device, dtype=dtype)


def _bh_strides(t: torch.Tensor | None) -> tuple[int, int]:
    """(batch, head) strides in elements of a [B, H, rows, cols] buffer (dense rows, kv_layout.rows_are_dense);
    (0, 0) for an absent or empty one, which the kernel never reads."""
    if t is None or t.numel() == 0:
        return 0, 0
    return t.stride(0), t.stride(1)


def kv_decode_attention(q: torch.Tensor, packed: PackedKV, scale: float, config: dict | None = None,
                        poison: bool = False) -> torch.Tensor:
    """out [B, Hq, D] bf16 for q [B, Hq, D] (bf16, contiguous) over `packed` (checked by the caller).
    `poison` fills the output and the split workspace with NaN first (tests: all must be written)."""
    return _launch(q, packed, scale, config, poison)


def kv_decode_attention_static(q: torch.Tensor, cache, scale: float, config: dict | None = None,
                               poison: bool = False) -> torch.Tensor:
    """The same attention over a graph-mode `PackedKVCache` (kv_cache.py, static=True; checked by the caller):
    tiles, splits and grid planned once for the cache's capacity (`capacity_view()`), so every call launches the
    same grid with the same arguments (CUDA-graph capturable); each program reads the token count from the
    cache's device counter, derives Tq and Tr from it and runs only the blocks below them (a split past the live
    tokens writes an empty partial: running max -1e30, sum 0, which the reduction weighs by 0)."""
    layout = cache.capacity_view()
    dense = cache.dense
    return _launch(q, layout, scale, config, poison, lengths=cache.lengths, cap=cache.capacity,
                   res=cache.residual, gq=cache.capacity + 1 if dense else cache.group)


def _launch(q: torch.Tensor, packed: PackedKV, scale: float, config: dict | None, poison: bool,
            lengths: torch.Tensor | None = None, cap: int = 0, res: int = 0, gq: int = 1) -> torch.Tensor:
    b, hq, d = q.shape
    p = plan(tuple(q.shape), packed, config, q.device)
    hkv, hg, hgp, ns = packed.kv_heads, p["HG"], p["HGP"], p["NS"]
    out = torch.empty((b, hq, d), device=q.device, dtype=torch.bfloat16)
    wo = torch.empty((b * hkv * ns * hgp, d), device=q.device, dtype=torch.float32)
    wm = torch.empty((b * hkv * ns * hgp,), device=q.device, dtype=torch.float32)
    wl = torch.empty_like(wm)
    if poison:
        for t in (out, wo, wm, wl):
            t.fill_(float("nan"))
    # an absent or empty buffer is never read, but its stand-in must have the buffer's dtype: the kernel is
    # specialized on pointer types (an fp32 stand-in for fp16 scales made q' fp32 and failed to compile)
    words = torch.zeros(1, device=q.device, dtype=torch.int32)  # a bf16 cache has no codes: still int32 words
    kc = _arg(packed.k_codes, torch.int32, words)  # rows of 32-bit words
    vc = _arg(packed.v_codes, torch.int32, words)
    ks = _arg(packed.k_scales, None, _stand_in(packed.key_kind[2], q.device))
    vs = _arg(packed.v_scales, None, _stand_in(packed.value_kind[2], q.device))
    rest = torch.zeros(1, device=q.device, dtype=torch.bfloat16)
    kr = _arg(packed.k_rest, None, rest)
    vr = _arg(packed.v_rest, None, rest)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    strides = [s for t in (packed.k_codes, packed.k_scales, packed.v_codes, packed.v_scales, packed.k_rest,
                           packed.v_rest) for s in _bh_strides(t)]
    _kv_decode_kernel[(b * hkv, ns)](
        q, kc, ks, vc, vs, kr, vr, wo, wm, wl, words if lengths is None else lengths,
        float(scale * LOG2E), packed.quantized, packed.rest, packed.quantized // p["SK"], p["NBLK"], p["BPS"],
        p["NSQ"], p["NBLK_R"], p["BPS_R"], ns, hkv, cap, res, gq, *strides, **{k: p[k] for k in KERNEL_KEYS},
        DEVLEN=lengths is not None, INTERPRET=interpret, num_warps=p["num_warps"], num_stages=p["num_stages"],
        **({"maxnreg": p["maxnreg"]} if p["maxnreg"] else {}))
    _kv_reduce_kernel[(b * hq,)](wo, wm, wl, out, ns, HG=hg, HGP=hgp, D=d, NSP=max(2, _next_pow2(ns)),
                                 INTERPRET=interpret, num_warps=4 if d >= 128 else 2)
    return out


def bytes_read(q: torch.Tensor, packed: PackedKV) -> int:
    """Bytes one call must move at least: the cache, the query and the output."""
    return packed.nbytes + 2 * q.numel() * 2
