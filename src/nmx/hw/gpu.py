"""GPU targets: a roofline with the corrections that make it right in practice.

Every kernel costs a launch (`launch_s`) plus the larger of its memory time and its compute time:

    memory   bytes / (bandwidth * bw_eff[class]) + ramp_s * (1 - exp(-bytes / ramp_bytes))
             (the ramp is the pipeline fill and tail a kernel pays before it streams at full rate:
             nearly linear in size for small transfers, a constant for large ones)
    compute  2 * M_pad * N_pad * K / (peak[dtype] * flops_eff[dtype])
             (tile quantization: M padded to the MMA tile, 64 rows up to 64 tokens, 128 above;
             N to 128; 2:4 sparse tensor cores double the peak)
    gemm     launch + max(memory, compute, host): on the `pytorch` implementation of 2:4,
             PyTorch's semi-structured path through cuSPARSELt sets up a plan on every call, a
             host cost of `sparse_call_s` (measured 0.5 - 1.2 ms on an H200); `ideal` is the same
             kernel without it (measured as CUDA-graph replays), where 2:4 reaches `sparse_eff`
             of the sparse tensor cores' 2x
    attention (decode and prefill) the same, with the KV cache's bytes (format-aware) and the
             QK^T + PV flops at the bf16 rate
    norms and activations: launch + memory, plus `row_s_per_element` * width for a norm (one
             program reduces a row serially).

Formats: `dtype` is what the tensor cores compute in (bf16, fp16, fp8, int8, fp4, tf32); it must be
native on the chip. `weights` (an nmx format) sets the bytes the weights take (values, N:M index
metadata and scales, by `nmx.sparsity.storage.weight_storage`); a weight format whose element the
tensor cores do not take is dequantized in registers (a weight-only kernel, Marlin-style): its
bytes shrink, its compute stays at `dtype`'s rate.

Presets cite their datasheets; `h200` is calibrated on kernels measured on the lent H200
(src/nmx/hw/data/h200_measured.csv, by benchmarks/gpu_calibrate.py; fitted by
benchmarks/gpu_fit.py), `h100-sxm` shares its calibration (the same chip, other memory) except for
nmx's own kernels, measured on an H100; `a100-80gb` has its GEMM, fused-attention and weight-streaming
efficiencies fitted on published A100 measurements (src/nmx/hw/data/a100_published.csv, each with its
source; held-out errors in docs/gpu_validation.md), the rest the H200's; `b200` and `l40s` use the H200's
efficiencies as defaults -- uncalibrated, and say so.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from nmx.errors import InputError
from nmx.io import read_text

DTYPES = ("bf16", "fp16", "fp8", "int8", "fp4", "tf32")
IMPLS = ("pytorch", "ideal", "nmx")
ELEMENT_BYTES = {"bf16": 2, "fp16": 2, "tf32": 4, "fp8": 1, "int8": 1, "fp4": 0.5}


def native_dtype(weight_format: str | None) -> str | None:
    """The tensor-core dtype that takes a weight format's elements as stored (None: dequantize first)."""
    if weight_format is None:
        return None
    name = weight_format.removesuffix("_sr").removesuffix("_rz")
    for prefix, dtype in (("mxfp8", "fp8"), ("fp8_", "fp8"), ("mxfp4", "fp4"), ("nvfp4", "fp4"),
                          ("fp4_e2m1", "fp4"), ("mxint8", "int8"), ("int8", "int8"), ("bf16", "bf16"),
                          ("fp16", "fp16")):
        if name.startswith(prefix) and not name.endswith("_asym"):
            return dtype
    return None


@dataclass(frozen=True)
class GpuTarget:
    name: str
    sms: int
    bandwidth_bytes_per_s: float  # datasheet peak of device memory
    peak_flops: dict[str, float]  # dense tensor-core peak per dtype (FLOP/s; int8 in OP/s)
    sparse_24: bool  # 2:4 sparse tensor cores (2x the dense peak)
    l2_bytes: float
    source: str
    # achievable fractions and fixed costs (fitted on measurements where `calibration` says so)
    bw_eff: dict[str, float] = field(default_factory=lambda: {"gemm": 0.8, "attention": 0.9, "elementwise": 0.8})
    flops_eff: dict[str, float] = field(default_factory=lambda: {"bf16": 0.7, "fp8": 0.6})
    launch_s: float = 5e-6
    kernel_gap_s: float = 2.5e-6  # each further kernel queued behind the first
    ramp_s: float = 5e-6
    ramp_bytes: float = 2e7
    row_s_per_element: float = 1.5e-9
    sparse_call_s: float = 7e-4
    sparse_eff: float = 1.0  # the fraction of the sparse tensor cores' 2x that 2:4 kernels reach
    # nmx's one-token kernel (impl "nmx"): seconds per dense weight, per element.scale kind and
    # pattern, e.g. "gemv:e2m1.ue4m3+24" (nvfp4, 2:4); see `nmx_decode_key`
    decode_s_per_weight: dict[str, float] = field(default_factory=dict)
    graph_launch_s: float = 2.5e-6  # fixed cost of a kernel replayed from a CUDA graph
    # nmx's 2..64-token paths (impl "nmx"): the measured dispatch table of nmx.kernels for this chip
    # ("h100": sm_90), whose speedup over cuBLAS scales the modelled cuBLAS time; None: cuBLAS
    dispatch_table: str | None = None
    # fused attention's (FlashAttention-style) share of the bf16 tensor-core peak; None: flops_eff["bf16"],
    # the GEMMs' (on the A100 the published FlashAttention-2 timings run at ~0.6 of the peak, cuBLAS at ~0.85)
    attention_flops_eff: float | None = None
    # nmx's decode attention over its packed KV layout and its graph-mode one-token append (impl "nmx"), per KV
    # format the kernel reads (`nmx_kv_key`): attention (fixed seconds beyond the graph replay, share of the
    # bandwidth on the op's bytes); append (fixed seconds, seconds per sequence of the batch)
    kv_decode: dict[str, tuple[float, float]] = field(default_factory=dict)
    kv_append: dict[str, tuple[float, float]] = field(default_factory=dict)
    # fused attention's tile (query rows x key columns a program computes at once: FlashAttention-2's forward
    # for head_dim 128 on sm80/sm90 is 128 x 64); a causal mask's diagonal tiles are computed whole
    attention_tile: tuple[int, int] = (128, 64)
    # each further kernel of an op that transformers' eager forward splits into several (`HF_EAGER_KERNELS`),
    # replayed from a CUDA graph: its run time plus the gap to the next; None: kernel_gap_s
    graph_kernel_s: float | None = None
    calibration: str = "uncalibrated: generic defaults"

    def peak(self, dtype: str, sparse: bool = False) -> float:
        if dtype not in DTYPES:
            raise InputError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        if dtype not in self.peak_flops:
            have = ", ".join(self.peak_flops)
            raise InputError(f"{self.name} has no {dtype} tensor cores (it has {have}); compute in one of those "
                             f"and give the weight format with --weights to model a dequantize-then-compute kernel")
        return self.peak_flops[dtype] * (2 if sparse else 1)

    def efficiency(self, dtype: str) -> float:
        return self.flops_eff.get(dtype, self.flops_eff.get("bf16", 0.7))

    def memory_s(self, nbytes: float, kind: str) -> float:
        bw = self.bandwidth_bytes_per_s * self.bw_eff[kind]
        return nbytes / bw + self.ramp_s * (1.0 - math.exp(-nbytes / self.ramp_bytes))


T = 1e12
# NVIDIA H100 Tensor Core GPU datasheet (SXM5): 3.35 TB/s HBM3; dense bf16 989.4 TFLOPS, fp8 1978.9,
# int8 1978.9 TOPS, tf32 494.7 (the sparse figures are twice these); 132 SMs, 50 MB L2.
_HOPPER = {"bf16": 989.4 * T, "fp16": 989.4 * T, "fp8": 1978.9 * T, "int8": 1978.9 * T, "tf32": 494.7 * T}
# Fitted by benchmarks/gpu_fit.py on src/nmx/hw/data/h200_measured.csv (2026-11-29, torch 2.11 + cu130).
SPARSE_EFF_FIT = 0.70  # fitted on the M >= 2048 CUDA-graph rows (the small-M rows vary with the algorithm)
_H200_FIT: dict[str, Any] = dict(
    bw_eff={"gemm": 0.723, "attention": 0.89, "elementwise": 0.976},
    flops_eff={"bf16": 0.72, "fp8": 0.63},
    launch_s=5.97e-6, kernel_gap_s=1.54e-6, ramp_s=3.18e-6, ramp_bytes=9.84e6, row_s_per_element=1.16e-9,
    sparse_call_s=8.57e-4, sparse_eff=SPARSE_EFF_FIT,
    # nmx's one-token kernel: `python benchmarks/gpu_fit.py --nmx-kernels benchmarks/results/kernels_h200_run6.json`
    # (fit on 4096x4096 and 11008x4096: median error 3.8 %; held-out 4096x11008: 11 %, max 16 %)
    graph_launch_s=2.5e-6,
    dispatch_table="h100",  # the same SMs: the H100's measured table is the one nmx.kernels uses on an H200
    decode_s_per_weight={
        "gemv:bf16+24": 5.05e-13, "gemv:e2m1.e8m0": 3.2e-13, "gemv:e2m1.e8m0+24": 3.8e-13,
        "gemv:e2m1.ue4m3": 3.52e-13, "gemv:e2m1.ue4m3+24": 5.13e-13, "gemv:e4m3": 3.75e-13, "gemv:e4m3+24": 4.32e-13,
        "gemv:e4m3.e8m0": 4.21e-13, "gemv:int4.fp16": 2.32e-13, "gemv:int4.fp16+24": 3.09e-13},
    calibration="fitted on the H200 measurements in src/nmx/hw/data/h200_measured.csv and h200_nmx_kernels.csv "
                "(2026-11-29)")

# H100 SXM: the H200's fit for cuBLAS and memory (the same chip, HBM3 at 3.35 TB/s); nmx's one-token kernel
# re-fitted on the H100 itself: `python benchmarks/gpu_fit.py --nmx-kernels benchmarks/results/kernels_peers_h100.json
# --target h100-sxm --write-csv` (2026-12-07; fit on 4096x4096 and 11008x4096: median error 1.1 %, max 6 %;
# held-out 4096x11008, 1024x4096, 14336x4096, 4096x14336: median 5.2 %, max 16 %)
_H100_FIT: dict[str, Any] = {
    **_H200_FIT, "graph_launch_s": 2.71e-6,
    # cuBLAS bf16 at M = 1..64 streams its weights at 0.879 of the H100's datasheet bandwidth (the H200's fit, 0.723,
    # was 18 % pessimistic here): `python benchmarks/gpu_fit.py --cublas benchmarks/results/kernels_peers_h100.json`
    # (2026-12-07; fit on 4096x4096 and 11008x4096: median error 1.8 %; held-out 4 shapes: median 3.2 %, max 14 %)
    "bw_eff": {**_H200_FIT["bw_eff"], "gemm": 0.879},
    # each further kernel of transformers' eager forward in a CUDA graph (llm_cost's small_ops="hf"): solved on the
    # bf16 batch-1 step of a Llama-2-7B decode profile, checked on 36 other end-to-end steps (batch 1 and 16, int4 /
    # nvfp4 / mxfp4 / fp8 / 2:4 weights, bf16 and int4 KV: error -7.1 % .. +5.4 %, against -38 % .. -13 % with one
    # kernel per op): `python benchmarks/gpu_fit.py --decode-profile benchmarks/results/decode_profile_h100.json`
    "graph_kernel_s": 1.41e-6,
    # nmx's int4 KV decode attention and append, graph mode, Llama-2-7B heads at context 2048, batch 1 and 16:
    # `python benchmarks/gpu_fit.py --nmx-kv benchmarks/results/kv_append_h100.json` (two rows, two parameters each:
    # an exact solve, checked on the end-to-end steps of benchmarks/results/decode_kv_int4_h100.json)
    "kv_decode": {"int4": (9.29e-06, 0.489)}, "kv_append": {"int4": (1.94e-06, 1.16e-07)},
    "decode_s_per_weight": {
        "gemv:e2m1.e8m0": 2.94e-13, "gemv:e2m1.e8m0+24": 3.32e-13, "gemv:e2m1.ue4m3": 3.27e-13,
        "gemv:e2m1.ue4m3+24": 4.14e-13, "gemv:e4m3": 3.92e-13, "gemv:int4.fp16": 2.21e-13,
        "gemv:int4.fp16+24": 2.9e-13},
    "calibration": "compute, launch and memory: the H200's fit (same chip, HBM3 at 3.35 TB/s); cuBLAS's weight "
                   "streaming and nmx's kernels: measured on an H100 (benchmarks/results/kernels_peers_h100.json, "
                   "src/nmx/hw/data/h100_nmx_kernels.csv, the dispatch table of nmx.kernels)"}

# the decode rates of nmx's kernels are per SM and clock: they do not carry over to another chip
_UNCALIBRATED = {**_H200_FIT, "decode_s_per_weight": {}, "dispatch_table": None,
                 "calibration": "uncalibrated: the H200's fitted efficiencies on this chip's datasheet"}

# A100: the datasheet's peaks; the GEMMs', fused attention's and the decode step's weight-streaming efficiencies
# fitted on published, measured A100 numbers (the `fit` rows of src/nmx/hw/data/a100_published.csv, every row with
# its source) by `python benchmarks/gpu_fit.py --published --target a100-80gb --rounds 10`; docs/gpu_validation.md
# has the held-out errors (median 13.9 % GEMM, 6.2 % fused attention with causal attention priced on whole tiles,
# 1.4 % bf16 decode step: the GEMM class misses the 10 % target, see there why). Everything else (launch and ramp
# costs, norms, attention's and elementwise bandwidth, 2:4, int8/tf32 rates) is still the H200's, not validated on
# an A100.
_A100_FIT: dict[str, Any] = {
    **_UNCALIBRATED, "flops_eff": {**_H200_FIT["flops_eff"], "bf16": 0.753}, "attention_flops_eff": 0.545,
    "bw_eff": {**_H200_FIT["bw_eff"], "gemm": 0.869},
    "calibration": "bf16 GEMM, fused-attention and decode weight-streaming efficiencies fitted on published A100 "
                   "measurements (src/nmx/hw/data/a100_published.csv, docs/gpu_validation.md); the rest: the H200's "
                   "efficiencies, not validated on an A100"}

PRESETS: dict[str, GpuTarget] = {t.name: t for t in (
    GpuTarget("h200", 132, 4.8e12, _HOPPER, True, 60e6,
              "NVIDIA H200 datasheet: 141 GB HBM3e at 4.8 TB/s, H100 SXM tensor-core rates", **_H200_FIT),
    GpuTarget("h100-sxm", 132, 3.35e12, _HOPPER, True, 50e6, "NVIDIA H100 Tensor Core GPU datasheet (SXM5)",
              **_H100_FIT),
    # NVIDIA A100 datasheet (80GB SXM): 2.039 TB/s; bf16 312 TFLOPS, int8 624 TOPS, tf32 156; 108 SMs, 40 MB L2.
    GpuTarget("a100-80gb", 108, 2.039e12, {"bf16": 312 * T, "fp16": 312 * T, "int8": 624 * T, "tf32": 156 * T},
              True, 40e6, "NVIDIA A100 Tensor Core GPU datasheet (80GB SXM)", **_A100_FIT),
    # NVIDIA HGX B200 datasheet, per GPU: 8 TB/s HBM3e; dense fp4 9 PFLOPS, fp8 4.5, bf16 2.25, tf32 1.1;
    # 148 SMs (Blackwell architecture technical brief).
    GpuTarget("b200", 148, 8.0e12, {"bf16": 2250 * T, "fp16": 2250 * T, "fp8": 4500 * T, "int8": 4500 * T,
                                    "fp4": 9000 * T, "tf32": 1100 * T}, True, 126e6,
              "NVIDIA HGX B200 datasheet (per GPU) and Blackwell technical brief", **_UNCALIBRATED),
    # NVIDIA L40S datasheet: 864 GB/s GDDR6; dense bf16 362 TFLOPS, fp8 733, int8 733 TOPS, tf32 183; 142 SMs, 96 MB L2.
    GpuTarget("l40s", 142, 0.864e12, {"bf16": 362 * T, "fp16": 362 * T, "fp8": 733 * T, "int8": 733 * T,
                                      "tf32": 183 * T}, True, 96e6, "NVIDIA L40S datasheet", **_UNCALIBRATED),
)}


def get_target(name: str | GpuTarget) -> GpuTarget:
    if isinstance(name, GpuTarget):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown GPU target {name!r}: use one of {', '.join(PRESETS)}") from None


def _result(t: GpuTarget, overhead: float, memory: float, compute: float, host: float = 0.0,
            **extra: Any) -> dict[str, Any]:
    """latency = launch overhead + the longest of memory, compute and host-side work that the GPU
    waits for (the per-call plan setup of PyTorch's 2:4 path overlaps the kernel it precedes)."""
    busy = max(memory, compute, host)
    bound = "overhead" if overhead + host >= max(memory, compute) else ("memory" if memory >= compute else "compute")
    return {"latency_s": overhead + busy, "bound": bound, "memory_s": memory, "compute_s": compute,
            "overhead_s": overhead + host, "target": t.name, **extra}


def _weight_bits(n: int, k: int, weights: str | None, sparsity: str | None, dtype: str) -> float:
    from nmx.sparsity.patterns import parse_pattern
    from nmx.sparsity.storage import weight_storage

    density = parse_pattern(sparsity).density if sparsity else 1.0
    if weights is None:  # the weights are stored in the compute dtype
        if sparsity is None:
            return n * k * ELEMENT_BYTES[dtype] * 8
        bits16 = weight_storage((n, k), density, None, sparsity)["bits"]  # values at 16 bits + index
        return bits16 - n * k * density * (16 - ELEMENT_BYTES[dtype] * 8)
    return weight_storage((n, k), density, weights, sparsity)["bits"]


def nmx_decode_key(weights: str | None, sparsity: str | None) -> str:
    """The `decode_s_per_weight` key of nmx's one-token kernel for a weight format and pattern."""
    from nmx.kernels.layout import kernel_format

    element, scale = kernel_format(weights)
    if sparsity not in (None, "2:4"):
        raise InputError(f"nmx's kernels read dense or 2:4 weights, not {sparsity!r}")
    return f"gemv:{element}{'.' + scale if scale else ''}{'+24' if sparsity else ''}"


def _dispatch_entry(t: GpuTarget, m: int, n: int, k: int, sparsity: str | None, weights: str | None) -> dict | None:
    """The entry of nmx.kernels' measured dispatch table that `linear` would follow on this chip, if any."""
    if t.dispatch_table is None or m > 64:
        return None
    from nmx.kernels.dispatch import lookup_case, measured_table

    table = measured_table("NVIDIA H100", (9, 0)) if t.dispatch_table == "h100" else None
    case = ("2:4+" if sparsity else "") + (weights or "bf16")
    return lookup_case(table, case, n, k, m) if table else None


def _nmx_gemm(t: GpuTarget, m: int, n: int, k: int, sparsity: str | None, weights: str | None) -> dict[str, Any]:
    """nmx's kernels as `nmx.kernels.linear` dispatches them, replayed from a CUDA graph (as a decode
    engine runs them). One token: the packed-weight kernel, `graph_launch_s` + the larger of its
    decode time (seconds per weight fitted per format on measurements) and its bytes at the gemm
    bandwidth. 2..64 tokens: the path nmx.kernels' measured dispatch table picks on this chip (the
    tensor-core kernel: the modelled cuBLAS time divided by its measured speedup; else cuBLAS on the
    weight decoded once, dense bf16); more tokens: 2:4 bf16 as the faster of the sparse tensor cores and
    cuBLAS, other formats dense bf16."""
    if weights is None and sparsity is None:  # a plain bf16 weight: not packed, cuBLAS
        return gemm(t, m, n, k, "bf16", None, None, "ideal") | {"impl": "nmx"}
    if m > 1:
        if m > 64 and sparsity == "2:4" and weights is None:
            return min((gemm(t, m, n, k, "bf16", s, None, "ideal") for s in ("2:4", None)),
                       key=lambda r: r["latency_s"]) | {"impl": "nmx"}
        dense = gemm(t, m, n, k, "bf16", None, None, "ideal") | {"impl": "nmx", "weights": weights}
        entry = _dispatch_entry(t, m, n, k, sparsity, weights)
        if entry is None or entry["backend"] == "dense":
            return dense | {"path": "cuBLAS on the decoded weight"}
        ratio = entry["cublas_s"] / entry["time_s"]  # measured speedup of the chosen nmx kernel over cuBLAS
        return dense | {"latency_s": dense["latency_s"] / ratio, "path": f"{entry['backend']} (measured {ratio:.2f}x "
                        f"cuBLAS at {entry['n']}x{entry['k']}, M = {entry['m']})"}
    key = nmx_decode_key(weights, sparsity)
    if key not in t.decode_s_per_weight:
        raise InputError(f"{t.name} has no measurement of nmx's kernel {key!r} (impl 'nmx' is calibrated on: "
                         f"{', '.join(sorted(t.decode_s_per_weight)) or 'nothing'})")
    w_bytes = _weight_bits(n, k, weights, sparsity, "bf16") / 8
    nbytes = w_bytes + k * 2 + n * 2
    memory = nbytes / (t.bandwidth_bytes_per_s * t.bw_eff["gemm"])
    decode = n * k * t.decode_s_per_weight[key]
    r = _result(t, t.graph_launch_s, memory, decode, m=m, n=n, k=k, flops=2.0 * n * k, bytes=nbytes,
                weight_bytes=w_bytes, dtype="bf16", sparsity=sparsity, weights=weights, impl="nmx", decode_s=decode)
    if r["bound"] == "compute":
        r["bound"] = "decode"
    return r


def gemm(target: str | GpuTarget, m: int, n: int, k: int, dtype: str = "bf16", sparsity: str | None = None,
         weights: str | None = None, impl: str = "pytorch", act_col_density: float = 1.0) -> dict[str, Any]:
    """Latency of y[m, n] = x[m, k] W[n, k]^T. `sparsity` "2:4" uses the sparse tensor cores
    (other patterns only shrink the weight bytes of a weight-only kernel); `impl` "pytorch" is
    what PyTorch does today (its 2:4 path pays a plan setup per call), "ideal" a kernel with
    cached plans and fused dequantization, "nmx" nmx's own kernels as measured (`_nmx_gemm`).
    `act_col_density`: the fraction of weight columns whose input channel is nonzero in some row
    (activation sparsity, nmx.sparsity.activation). Only "ideal" skips the others (a TEAL-style kernel
    reading only those columns, at the gemm bandwidth); PyTorch and nmx's kernels have no such path and
    read every weight. `skipped_weight_bytes` says what was not read."""
    from nmx.hw.workload import check_size

    t = get_target(target)
    for label, v in (("m", m), ("n", n), ("k", k)):
        check_size(f"gemm: {label} (--{label})", v)
    if impl not in IMPLS:
        raise InputError(f"unknown implementation {impl!r}: use one of {', '.join(IMPLS)}")
    if impl == "nmx":
        sparsity = sparsity.replace(" ", "") if sparsity else None
        if dtype != "bf16":
            raise InputError("impl 'nmx': nmx's kernels compute in bf16 (the weight format is --weights)")
        if weights is not None:
            from nmx import formats

            formats.get(weights)
        return _nmx_gemm(t, m, n, k, sparsity, weights)
    if weights is not None:
        from nmx import formats

        formats.get(weights)  # a bad name fails here, with the formats' own message
    is_24 = sparsity is not None and sparsity.replace(" ", "") == "2:4"
    # the sparse tensor cores take 2:4 values in the compute dtype; other weight formats or
    # patterns only shrink the bytes a weight-only kernel reads
    sparse_tc = is_24 and (weights is None or native_dtype(weights) == dtype)
    if sparse_tc and not t.sparse_24:
        raise InputError(f"{t.name} has no 2:4 sparse tensor cores")
    peak = t.peak(dtype, sparse_tc) * t.efficiency(dtype) * (t.sparse_eff if sparse_tc else 1.0)
    if isinstance(act_col_density, bool) or not 0 < act_col_density <= 1:
        raise InputError(f"gemm: act_col_density must be in (0, 1], got {act_col_density!r}")
    w_full = _weight_bits(n, k, weights, sparsity, dtype) / 8
    w_bytes = w_full * act_col_density if impl == "ideal" else w_full
    act_bytes = m * k * ELEMENT_BYTES[dtype]
    out_bytes = m * n * 2
    nbytes = w_bytes + act_bytes + out_bytes
    tm = 64 if m <= 64 else 128
    m_pad, n_pad = math.ceil(m / tm) * tm, math.ceil(n / 128) * 128
    compute = 2.0 * m_pad * n_pad * k / peak
    memory = t.memory_s(nbytes, "gemm")
    host = t.sparse_call_s if sparse_tc and impl == "pytorch" else 0.0
    return _result(t, t.launch_s, memory, compute, host, m=m, n=n, k=k, flops=2.0 * m * n * k, bytes=nbytes,
                   weight_bytes=w_bytes, skipped_weight_bytes=w_full - w_bytes,
                   dtype=dtype, sparsity=sparsity, weights=weights, impl=impl)


def attention(target: str | GpuTarget, batch: int, q_len: int, kv_len: int, heads_q: int, heads_kv: int,
              head_dim: int, kv_format: str | None = None, causal: bool | None = None) -> dict[str, Any]:
    """Latency of fused attention (FlashAttention / flash-decoding style) over a cache of kv_len
    tokens whose K and V are stored in `kv_format` (bf16 by default)."""
    from nmx.hw.workload import attention_op

    t = get_target(target)
    causal = q_len > 1 if causal is None else causal
    op = attention_op("attention", batch, q_len, kv_len, heads_q, heads_kv, head_dim, kv_format=kv_format,
                      causal=causal, new_kv=0)
    return attention_op_latency(t, op)


def nmx_kv_key(kv_format: str | None) -> str | None:
    """The format of nmx.kernels' KV layout (kv_layout.KV_FORMATS) that stores an nmx KV format, or None where the
    decode kernel does not read it (bf16: not packed, the attention is SDPA's)."""
    if kv_format is None:
        return None
    for prefix, key in (("int4_g", "int4"), ("int2_g", "int2"), ("mxfp4", "mxfp4"), ("fp8_e4m3", "fp8_e4m3")):
        if kv_format.startswith(prefix) and not kv_format.endswith(("_asym", "_sr")):
            return key
    return None


def _nmx_kv_attention(t: GpuTarget, op: Any, key: str) -> dict[str, Any]:
    """nmx's decode attention over the packed cache, replayed from a CUDA graph, with its one-token append:
    graph_launch_s + a fixed cost + the op's bytes at the measured share of the bandwidth, plus the append."""
    fixed, share = t.kv_decode[key]
    memory = op.bytes / (t.bandwidth_bytes_per_s * share)
    a_fixed, a_per_seq = t.kv_append.get(key, (0.0, 0.0))
    append = a_fixed + a_per_seq * op.batch
    r = _result(t, t.graph_launch_s + fixed + append, memory, 0.0, flops=op.flops, bytes=op.bytes,
                kv_bytes=op.kv_bytes_read, kv_format=op.kv_format, impl="nmx")
    return r | {"append_s": append, "path": f"nmx decode attention over packed {key} KV (measured)"}


def attention_op_latency(target: str | GpuTarget, op: Any, impl: str = "ideal") -> dict[str, Any]:
    """Fused attention priced on a workload's attention op as it is: its FLOPs (over the tokens the
    cache kept) and its bytes (the cache's real layout under a KV policy, the fresh K and V, Q and O),
    with the same roofline as `attention`. impl "nmx": one query over a KV format nmx's decode kernel reads
    and has measurements for (`kv_decode`) is priced as that kernel and its append; anything else as above."""
    t = get_target(target)
    key = nmx_kv_key(op.kv_format) if impl == "nmx" and op.q_len == 1 else None
    if key is not None and key in t.kv_decode:
        return _nmx_kv_attention(t, op, key)
    eff = t.attention_flops_eff if t.attention_flops_eff is not None else t.efficiency("bf16")
    executed = op.flops * causal_tile_factor(op.q_len, op.kv_len, t.attention_tile) if op.causal else op.flops
    compute = executed / (t.peak("bf16") * eff)
    memory = t.memory_s(op.bytes, "attention")
    return _result(t, t.launch_s, memory, compute, flops=op.flops, executed_flops=executed, bytes=op.bytes,
                   kv_bytes=op.kv_bytes_read, kv_format=op.kv_format)


def causal_tile_factor(q_len: int, kv_len: int, tile: tuple[int, int]) -> float:
    """Score pairs a tiled causal kernel computes over the pairs the mask keeps (>= 1): the queries in row blocks
    of tile[0], each block running over the key blocks of tile[1] up to the one holding the last key its last
    query sees (the mask aligned bottom-right: query i sees kv_len - q_len + i + 1 keys), those blocks whole.
    One query (decode) is computed as it is: 1."""
    if q_len <= 1:
        return 1.0
    bm, bn = tile
    computed = 0
    for start in range(0, q_len, bm):
        last = min(start + bm, q_len) - 1  # the block's last query
        seen = kv_len - q_len + last + 1
        computed += (min(start + bm, q_len) - start) * min(-(-seen // bn) * bn, kv_len)
    kept = q_len * kv_len - q_len * (q_len - 1) // 2
    return computed / kept


def elementwise(target: str | GpuTarget, kind: str, rows: int, width: int, nbytes: float,
                kernels: int = 1) -> dict[str, Any]:
    """A memory-bound pass (a norm reduces each row in one program: its serial part grows with width)."""
    t = get_target(target)
    memory = t.memory_s(nbytes, "elementwise") + (t.row_s_per_element * width if kind == "norm" else 0.0)
    return _result(t, t.launch_s + t.kernel_gap_s * (kernels - 1), memory, 0.0, bytes=nbytes, kind=kind)


def op_latency(target: str | GpuTarget, op: Any, impl: str = "pytorch") -> dict[str, Any]:
    """Latency of one `nmx.hw.workload.Op` instance."""
    if op.kind == "gemm":
        native = native_dtype(op.weight_format)
        t = get_target(target)
        # weights and activations both in a native low-precision dtype: the tensor cores take them
        dtype = native if native and native == native_dtype(op.act_format) and native in t.peak_flops else "bf16"
        return gemm(t, op.m, op.n, op.k, dtype, op.pattern, op.weight_format, impl, op.act_col_density)
    if op.kind == "attention":
        return attention_op_latency(target, op, impl)
    if op.kind == "embedding":
        return elementwise(target, "embedding", op.m or 1, 0, op.bytes)
    rows = int(op.elements if op.kind == "norm" else 1)
    width = int(round(op.bytes_written / 2 / max(rows, 1))) if op.kind == "norm" else 0
    return elementwise(target, op.kind, rows, width, op.bytes)


# The kernels transformers' eager Llama forward launches per op of nmx.hw.workload, where the model otherwise prices one
# fused kernel ("hf"): RMSNorm 8 (fp32 cast, pow, mean, + eps, rsqrt, multiply, bf16 cast, x weight) and the residual
# add before it; the MLP activation 2 (SiLU, x up); attention 20 with transformers' StaticCache (rotary embedding 10:
# 4 multiplies, 2 adds, 2 negations, 2 concatenations for q and k; the cache write 2 index copies and 2 fills;
# position / mask arithmetic 4; cuDNN's fused attention 2) and 17 with nmx's packed KV cache (its decode, reduce and
# append kernels instead of the SDPA pair and the index copies). Read off the kernel names of an H100 profile of a
# Llama-2-7B decode step (`nmx bench decode --profile`); the per-step sums are checked against that profile by
# `python benchmarks/gpu_fit.py --decode-profile benchmarks/results/decode_profile_h100.json`.
# "hf-fused": the same forward after `nmx.kernels.fuse_small_ops` (one kernel for each RMSNorm, SiLU x up and rotary
# embedding; the residual adds, the cache write and the position arithmetic stay): a prediction, not yet measured.
SMALL_OP_KERNELS = {"hf": {"norm": 9, "activation": 2, "attention": 20, "attention_packed_kv": 17},
                    "hf-fused": {"norm": 2, "activation": 1, "attention": 11, "attention_packed_kv": 8}}
HF_EAGER_KERNELS = SMALL_OP_KERNELS["hf"]
SMALL_OPS = ("fused", *SMALL_OP_KERNELS)


def hf_eager_kernels(t: GpuTarget, op: Any, impl: str, small_ops: str = "hf") -> int:
    """How many kernels transformers' forward (`small_ops` "hf", or "hf-fused" after nmx's fusion) launches for
    `op` (1: an op it runs as one kernel)."""
    counts = SMALL_OP_KERNELS[small_ops]
    if op.kind == "attention" and impl == "nmx" and nmx_kv_key(op.kv_format) in t.kv_decode:
        return counts["attention_packed_kv"]
    return counts.get(op.kind, 1)


def hf_eager_extra_s(t: GpuTarget, op: Any, impl: str, small_ops: str = "hf") -> float:
    """What an op costs beyond the one kernel the model prices when transformers' forward runs it as several,
    replayed from a CUDA graph: each further kernel's fixed cost plus one pass (read and write) over the op's output."""
    extra = hf_eager_kernels(t, op, impl, small_ops) - 1
    if extra <= 0:
        return 0.0
    per_kernel = t.graph_kernel_s if t.graph_kernel_s is not None else t.kernel_gap_s
    return extra * (per_kernel + t.memory_s(2.0 * op.bytes_written, "elementwise"))


def llm_cost(target: str | GpuTarget, workload: Any, impl: str = "pytorch", small_ops: str = "fused"
             ) -> dict[str, Any]:
    """Per-op latencies of a workload step and its totals (latency, tokens/s, bytes, bound).

    `small_ops`: "fused" prices each norm, activation and attention as the one kernel a serving engine launches;
    "hf" as the several kernels transformers' eager forward launches (`SMALL_OP_KERNELS`), replayed from a CUDA
    graph -- the step `nmx bench decode` times; "hf-fused" the same after `nmx.kernels.fuse_small_ops`."""
    if small_ops not in SMALL_OPS:
        raise InputError(f"small_ops (--small-ops) must be one of {', '.join(SMALL_OPS)}, got {small_ops!r}")
    t = get_target(target)
    if small_ops != "fused":  # the step replayed from a CUDA graph: every kernel's launch is a graph replay's
        t = replace(t, launch_s=t.graph_launch_s)
    rows, total, skipped = [], 0.0, 0.0
    by_bound: dict[str, float] = {}
    for op in workload.ops:
        r = op_latency(t, op, impl)
        if small_ops != "fused":
            r = {**r, "latency_s": r["latency_s"] + hf_eager_extra_s(t, op, impl, small_ops)}
        lat = r["latency_s"] * op.count
        total += lat
        by_bound[r["bound"]] = by_bound.get(r["bound"], 0.0) + lat
        skip = r.get("skipped_weight_bytes", 0.0) * op.count  # weight columns of zero activations, not read
        skipped += skip
        rows.append({"name": op.name, "kind": op.kind, "count": op.count, "latency_s": lat,
                     "latency_each_s": r["latency_s"], "bound": r["bound"], "bytes": op.bytes * op.count - skip,
                     "flops": op.flops * op.count})
    tokens = workload.batch * workload.tokens
    summary = workload.summary()
    summary["bytes_read"] -= skipped
    return {"target": t.name, "calibration": t.calibration, "impl": impl, "small_ops": small_ops, **summary,
            "skipped_weight_bytes": skipped, "latency_s": total, "tokens_per_s": tokens / total,
            "bound": max(by_bound, key=by_bound.get),
            "latency_by_bound_s": by_bound, "ops": rows}


# ---------------------------------------------------------------------------------------------
# measurements and the model's error on them

def measurement_file(name: str = "h200_measured.csv") -> Path:
    return Path(str(resources.files("nmx.hw") / "data" / name))


def load_measurements(path: str | Path | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, rows) of a CSV written by benchmarks/gpu_calibrate.py (a first line `# {json}`,
    then a header row and one row per kernel). Any unusable file is one InputError naming it."""
    path = Path(path) if path else measurement_file()
    text = read_text(path, "measurements file")
    lines = text.splitlines()
    header: dict[str, Any] = {}
    if lines and lines[0].startswith("# "):
        try:
            header = json.loads(lines[0][2:])
        except (ValueError, RecursionError):
            header = None  # type: ignore[assignment]
        if not isinstance(header, dict):
            raise InputError(f"{path} line 1: the `# ` header is not a JSON object; write the file with "
                             "benchmarks/gpu_calibrate.py")
    body = [ln for ln in lines if not ln.startswith("# ")]
    rows = []
    for line, r in csv_rows(body, path):
        out = {}
        for k, v in r.items():
            if k in ("op", "dtype", "sparsity", "weights", "role"):
                out[k] = v
                continue
            try:
                out[k] = float(v) if v else 0.0
            except ValueError:
                raise InputError(f"{path} row {line} of the table: column {k!r} must be a number, "
                                 f"got {v!r}") from None
        rows.append(out)
    return header, rows


def csv_rows(lines: list[str], path: Path | str) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of each row of a CSV whose first line is the header. A NUL byte, a row
    with fewer or more cells than the header, or anything else the csv module refuses is one
    InputError naming the file and line."""
    for n, ln in enumerate(lines, start=1):
        if "\0" in ln:
            raise InputError(f"{path} line {n} holds a NUL byte: not a text CSV file")
    reader = csv.DictReader(lines)
    out = []
    try:
        for r in reader:
            line = reader.line_num
            if None in r:
                raise InputError(f"{path} line {line} has more cells than the header ({len(reader.fieldnames)})")
            missing = [k for k, v in r.items() if v is None]
            if missing:
                raise InputError(f"{path} line {line} has fewer cells than the header (no {', '.join(missing)})")
            out.append((line, r))
    except csv.Error as err:
        raise InputError(f"{path} line {reader.line_num}: not a valid CSV file ({err})") from None
    return out


def predict_measured(target: str | GpuTarget, row: dict[str, Any]) -> float:
    """The model's latency for one measured row (the kernel exactly as benchmarks/gpu_calibrate.py ran it, or as
    the source of a published row ran it: `load_published`)."""
    i = lambda key: int(row[key])  # noqa: E731
    if row["op"] == "nmx_linear":  # nmx's packed-weight kernel, replayed from CUDA graphs
        return gemm(target, i("m"), i("n"), i("k"), "bf16", row["sparsity"] or None, row["weights"] or None,
                    impl="nmx")["latency_s"]
    if row["op"] == "linear_fwd_bwd":  # a dense linear's forward and backward: y = x W^T, dX = dY W, dW = dY^T X
        m, n, k, dtype = i("m"), i("n"), i("k"), row["dtype"]
        return sum(gemm(target, a, b, c, dtype, impl="ideal")["latency_s"]
                   for a, b, c in ((m, n, k), (m, k, n), (n, k, m)))
    if row["op"] == "gemm":  # "2:4@graph": replayed from a CUDA graph, so without PyTorch's plan setup
        sparsity, _, how = (row["sparsity"] or "").partition("@")
        return gemm(target, i("m"), i("n"), i("k"), row["dtype"], sparsity or None,
                    impl="ideal" if how == "graph" else "pytorch")["latency_s"]
    if row["op"] == "attention":  # causal unless the row says (published rows do; nmx's own are causal prefill)
        causal = row.get("causal")
        return attention(target, i("batch"), i("q_len"), i("kv_len"), i("heads_q"), i("heads_kv"),
                         i("head_dim"), causal=None if causal is None else bool(causal))["latency_s"]
    if row["op"] == "decode":  # one whole decode step of a model preset (published tokens/s at batch 1), run
        # as the sources run it: torch.compile's CUDA graphs, so each kernel's fixed cost is a graph replay's
        from nmx.hw.workload import Compression, llm_workload

        work = llm_workload(row["model"], "decode", batch=i("batch"), context=i("context"),
                            compression=Compression(weights=row.get("weights") or None))
        t = get_target(target)
        return llm_cost(replace(t, launch_s=t.graph_launch_s), work, impl="ideal")["latency_s"]
    n = i("m") * i("n")
    if row["op"] == "norm":  # read x, write y (the weight vector is negligible)
        return elementwise(target, "norm", i("m"), i("n"), 4.0 * n)["latency_s"]
    # F.silu(g) * x in eager PyTorch: two kernels, silu reads g and writes a temporary, mul reads two, writes one
    return elementwise(target, "activation", i("m"), i("n"), 10.0 * n, kernels=2)["latency_s"]


def op_class(row: dict[str, Any]) -> str:
    if row.get("class"):  # published rows name their class (a GEMM class spans bf16 and fp16 sources)
        return row["class"]
    if row["op"] == "nmx_linear":
        return "nmx " + ("gemv" if row["m"] == 1 else "dot") + " " + "+".join(
            x for x in (row["sparsity"], row["weights"] or "bf16") if x)
    if row["op"] == "gemm":
        return f"gemm {row['dtype']}" + (f" {row['sparsity']}" if row["sparsity"] else "")
    if row["op"] == "decode":
        return "decode " + (row.get("weights") or "bf16")
    return row["op"]


def model_error(target: str | GpuTarget, rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per op class and overall: median and 90th-percentile |predicted / measured - 1|, count."""
    errs: dict[str, list[float]] = {}
    for r in rows:
        e = abs(predict_measured(target, r) / r["latency_s"] - 1.0)
        errs.setdefault(op_class(r), []).append(e)
        errs.setdefault("all", []).append(e)

    def q(v: list[float], p: float) -> float:
        s = sorted(v)
        return s[min(len(s) - 1, int(p * (len(s) - 1) + 0.5))]

    return {c: {"median_abs_err": q(v, 0.5), "p90_abs_err": q(v, 0.9), "count": float(len(v))}
            for c, v in errs.items()}


def with_params(target: str | GpuTarget, **params: Any) -> GpuTarget:
    """A copy of a target with some calibration parameters changed (for fitting)."""
    return replace(get_target(target), **params)


def uncalibrated(target: str | GpuTarget) -> GpuTarget:
    """A preset's datasheet numbers with the H200's fitted efficiencies (what every preset but h200 and
    h100-sxm was before it had measurements of its own): the baseline a calibration is judged against."""
    return with_params(target, **_UNCALIBRATED, attention_flops_eff=None)


# ---------------------------------------------------------------------------------------------
# published measurements of other GPUs (src/nmx/hw/data/<gpu>_published.csv)

PUBLISHED_TEXT = ("id", "role", "class", "op", "gpu", "precision", "shape", "unit", "source", "where", "note", "model",
                  "weights", "dtype")
PUBLISHED_REQUIRED = ("id", "role", "class", "op", "gpu", "precision", "shape", "measured", "unit", "source", "where")
PUBLISHED_UNITS = ("TFLOPS", "ms", "us", "tok/s")


def published_latency_s(row: dict[str, Any]) -> float:
    """The latency a published number stands for: TFLOPS of a GEMM (2 M N K flops, as the source counts
    them), a time in ms or us, or the tokens per second of batch-1 decoding (one step per token)."""
    v, unit = row["measured"], row["unit"]
    if unit == "TFLOPS":
        if row["op"] != "gemm":
            raise InputError(f"published row {row['id']}: TFLOPS are only read for op gemm (give the time)")
        return 2.0 * row["m"] * row["n"] * row["k"] / (v * 1e12)
    if unit == "tok/s":
        if row["op"] != "decode" or row["batch"] != 1:
            raise InputError(f"published row {row['id']}: tok/s is read as one decode step per token at batch 1")
        return 1.0 / v
    return v * (1e-3 if unit == "ms" else 1e-6)


def load_published(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Rows of a CSV of published measurements (a100_published.csv by default): each names its source
    (`source` URL, `where` in it: table, row, figure), the GPU, precision and shape as the source gives
    them, the published number (`measured`, `unit`), the split (`role`: fit or held-out), and the fields
    `predict_measured` reads. `latency_s` is derived from the published number. An empty required cell, an
    unknown unit or role, or a cell that is not a number is one InputError naming the file and row."""
    path = Path(path) if path else measurement_file("a100_published.csv")
    lines = [ln for ln in read_text(path, "published measurements").splitlines() if not ln.startswith("# ")]
    rows = []
    for line, r in csv_rows(lines, path):
        missing = [k for k in PUBLISHED_REQUIRED if not (r.get(k) or "").strip()]
        if missing:
            raise InputError(f"{path} line {line}: empty {', '.join(missing)} (every number needs its source)")
        out: dict[str, Any] = {}
        for k, v in r.items():
            if k in PUBLISHED_TEXT:
                out[k] = v.strip()
            elif k == "causal":
                out[k] = None if not v.strip() else v.strip().lower() in ("1", "true", "yes")
            else:
                try:
                    out[k] = float(v) if v.strip() else 0.0
                except ValueError:
                    raise InputError(f"{path} line {line}: column {k!r} must be a number, got {v!r}") from None
        if out["unit"] not in PUBLISHED_UNITS:
            raise InputError(f"{path} line {line}: unit {out['unit']!r} is not one of {', '.join(PUBLISHED_UNITS)}")
        if out["role"] not in ("fit", "held-out"):
            raise InputError(f"{path} line {line}: role must be 'fit' or 'held-out', got {out['role']!r}")
        if not out["measured"] > 0:
            raise InputError(f"{path} line {line}: measured must be positive, got {out['measured']!r}")
        out.setdefault("sparsity", "")
        out["latency_s"] = published_latency_s(out)
        rows.append(out)
    return rows
