"""CPU fake-quant throughput of nmx formats, side by side with torchao's reference implementations.

Fake quantization = quantize then dequantize back to float32, of one seeded 4096x4096
torch.randn tensor, blocks along the last dim. Pairs (nmx format <- reference):

  mxfp4       <- torchao MXTensor.to_mx(x, float4_e2m1fn_x2, 32, FLOOR).dequantize(float32)
  mxfp8_e4m3  <- torchao MXTensor.to_mx(x, float8_e4m3fn,    32, FLOOR).dequantize(float32)
  nvfp4       <- torchao NVFP4Tensor.to_nvfp4(x, per_tensor_scale=amax/(448*6)).dequantize(float32)
  int4_g128   <- torchao quant_primitives: choose_qparams_affine(SYMMETRIC, -7..7, group 128,
                 fp16 scale) + _fake_quantize_affine (the GPTQ-style symmetric int4 recipe)

The reference timings include computing their scales (per-tensor amax, int4 qparams), as
nmx's `quantize` does. Each repeat runs every implementation once (interleaved), after one
warm-up; the table reports the median. "nmx/torchao" > 1 means nmx is faster.

torchao lives in its own venv (never in /work/venv). Run from the repo root:

    python3 -m venv /work/venv-bench
    /work/venv-bench/bin/pip install torch==2.13.0 numpy torchao typer rich safetensors
    PYTHONPATH=src /work/venv-bench/bin/python benchmarks/formats_bench.py [--repeats 5]

Without torchao (or where its CPU path fails) it says why and benchmarks nmx alone. torchao's
import logs "Failed to load .../_C_mxfp8...so" on stderr: those are its CUDA kernels, unused here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

import nmx.formats as F

SHAPE = (4096, 4096)
SEED = 0
FORMATS = ("mxfp4", "mxfp8_e4m3", "nvfp4", "int4_g128")
N_EXAMPLES = 5

Impl = Callable[[torch.Tensor], torch.Tensor]


def machine_info() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return {
        "cpu": model,
        "nproc": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def nmx_impl(name: str) -> Impl:
    fmt = F.get(name)
    return lambda x: fmt.quantize(x, dim=-1)


def torchao_impls() -> tuple[dict[str, Impl], dict[str, str], str | None]:
    """(implementations that ran on a small CPU tensor, {format: error} for those that did not, version)."""
    try:
        import torchao
        from torchao.prototype.mx_formats.config import ScaleCalculationMode
        from torchao.prototype.mx_formats.mx_tensor import MXTensor
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale
        from torchao.quantization.quant_primitives import MappingType, _fake_quantize_affine, choose_qparams_affine
    except Exception as err:  # noqa: BLE001 - report any import failure verbatim
        return {}, {name: f"import failed: {type(err).__name__}: {err}" for name in FORMATS}, None

    def mx(elem_dtype) -> Impl:
        return lambda x: MXTensor.to_mx(x, elem_dtype, 32, ScaleCalculationMode.FLOOR).dequantize(torch.float32)

    def nvfp4(x):
        scale = per_tensor_amax_to_scale(x.abs().amax())
        return NVFP4Tensor.to_nvfp4(x, per_tensor_scale=scale).dequantize(torch.float32)

    def int4_g128(x):
        group = (1,) * (x.dim() - 1) + (128,)
        scale, zero = choose_qparams_affine(
            x, MappingType.SYMMETRIC, group, torch.int8, quant_min=-7, quant_max=7, scale_dtype=torch.float16
        )
        return _fake_quantize_affine(x, group, scale.float(), zero, torch.int8, -7, 7)

    candidates = {
        "mxfp4": mx(torch.float4_e2m1fn_x2),
        "mxfp8_e4m3": mx(torch.float8_e4m3fn),
        "nvfp4": nvfp4,
        "int4_g128": int4_g128,
    }
    ok, errors = {}, {}
    probe = torch.randn(16, 256, generator=torch.Generator().manual_seed(1))
    for name, fn in candidates.items():
        try:
            out = fn(probe)
            assert out.shape == probe.shape and out.dtype == torch.float32, f"got {out.dtype} {tuple(out.shape)}"
            ok[name] = fn
        except Exception as err:  # noqa: BLE001
            errors[name] = f"{type(err).__name__}: {err}"
    return ok, errors, torchao.__version__


def time_interleaved(impls: dict[str, Impl], x: torch.Tensor, repeats: int) -> dict[str, list[float]]:
    """Seconds per call; one warm-up each, then every repeat runs every implementation once."""
    for fn in impls.values():
        fn(x)
    times = {key: [] for key in impls}
    for _ in range(repeats):
        for key, fn in impls.items():
            t0 = time.perf_counter()
            fn(x)
            times[key].append(time.perf_counter() - t0)
    return times


def compare(x: torch.Tensor, ours: torch.Tensor, ref: torch.Tensor) -> dict:
    """Bit-level and value-level agreement of two dequantized tensors, with a few differing elements."""
    bits_differ = ours.view(torch.int32) != ref.view(torch.int32)
    value_differ = (ours != ref) & ~(torch.isnan(ours) & torch.isnan(ref))
    idx = value_differ.nonzero()[:N_EXAMPLES]
    examples = [
        {
            "index": tuple(i.tolist()),
            "x": x[tuple(i)].item(),
            "nmx": ours[tuple(i)].item(),
            "torchao": ref[tuple(i)].item(),
        }
        for i in idx
    ]
    return {
        "bit_identical": not bool(bits_differ.any()),
        "bits_differ": int(bits_differ.sum()),
        "values_differ": int(value_differ.sum()),
        "max_abs_diff": float((ours - ref).abs().nan_to_num(0.0).max()),
        "examples": examples,
    }


# ---- an exact arbiter for the elements where nmx and torchao disagree ---------------------------

FP4_GRID = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])  # E2M1 codes 0..7
E4M3_GRID = torch.arange(127, dtype=torch.uint8).view(torch.float8_e4m3fn).double().numpy()  # codes 0..126


def nearest(v: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Nearest grid value to float64 v, ties to the even code, saturating (grid[i] has code i)."""
    a = np.minimum(np.abs(v), grid[-1])
    i = np.clip(np.searchsorted(grid, a), 1, len(grid) - 1)
    lo, hi = grid[i - 1], grid[i]
    mid = (lo + hi) / 2
    return np.copysign(np.where((a > mid) | ((a == mid) & (i % 2 == 0)), hi, lo), v)


def exact_values(name: str, x: torch.Tensor) -> np.ndarray | None:
    """The format's dequantized values from its formulas in float64 (quotients not rounded to float32)."""
    xs = x.numpy().astype(np.float64)
    if name == "nvfp4":
        s = np.float64(np.float32(np.abs(xs).max()) / np.float32(2688.0))
        blocks = xs.reshape(xs.shape[0], -1, 16)
        scale_b = nearest(np.abs(blocks).max(-1, keepdims=True) / (6.0 * s), E4M3_GRID)
        return (nearest(blocks / (scale_b * s), FP4_GRID) * scale_b * s).reshape(xs.shape)
    if name == "int4_g128":
        blocks = xs.reshape(xs.shape[0], -1, 128)
        scale = (np.abs(blocks).max(-1, keepdims=True).astype(np.float32) / np.float32(7)).astype(np.float16)
        return (np.clip(np.round(blocks / scale.astype(np.float64)), -7, 7) * scale).reshape(xs.shape)
    return None


def arbitrate(name: str, x: torch.Tensor, ours: torch.Tensor, ref: torch.Tensor) -> dict:
    """Split disagreements into last-bit ones (how the dequant product is rounded) and different
    codes; for the latter, count whose value matches the exact formula (to 1 ulp)."""
    differ = (ours != ref).numpy()
    if not differ.any():
        return {}
    o, r = ours.numpy()[differ].astype(np.float64), ref.numpy()[differ].astype(np.float64)
    ulp = np.spacing(np.maximum(np.abs(o), np.abs(r)).astype(np.float32)).astype(np.float64)
    code = np.abs(o - r) > 2 * ulp
    out = {"last_bit_only": int((~code).sum()), "different_code": int(code.sum())}
    exact = exact_values(name, x)
    if exact is not None:  # which side is the exact value rounded once to float32?
        rounded = exact[differ].astype(np.float32).astype(np.float64)
        out["nmx_is_exact_rounded"] = int((o == rounded).sum())
        out["torchao_is_exact_rounded"] = int((r == rounded).sum())
    if exact is not None and code.any():
        e = exact[differ][code]
        out["nmx_matches_exact"] = int((np.abs(o[code] - e) <= ulp[code]).sum())
        out["torchao_matches_exact"] = int((np.abs(r[code] - e) <= ulp[code]).sum())
    return out


def summarize(times: dict[str, list[float]], diffs: dict[str, dict], n: int) -> list[dict]:
    rows = []
    for name in FORMATS:
        row = {"format": name, "nmx_s": statistics.median(times[("nmx", name)])}
        row["nmx_elem_per_s"] = n / row["nmx_s"]
        if ("torchao", name) in times:
            row["torchao_s"] = statistics.median(times[("torchao", name)])
            row["torchao_elem_per_s"] = n / row["torchao_s"]
            row["nmx_over_torchao"] = row["nmx_elem_per_s"] / row["torchao_elem_per_s"]
            row.update({k: v for k, v in diffs[name].items() if k not in ("examples", "arbiter")})
            row.update(diffs[name]["arbiter"])
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    head = (
        "| format | nmx s | nmx Melem/s | torchao s | torchao Melem/s | nmx/torchao "
        "| bit-identical | elems differ | max abs diff |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        if "torchao_s" in r:
            ref = (
                f"{r['torchao_s']:.4f} | {r['torchao_elem_per_s'] / 1e6:.1f} | {r['nmx_over_torchao']:.2f}x "
                f"| {'yes' if r['bit_identical'] else 'no'} | {r['values_differ']} | {r['max_abs_diff']:.3g}"
            )
        else:
            ref = "n/a | n/a | n/a | n/a | n/a | n/a"
        lines.append(f"| {r['format']} | {r['nmx_s']:.4f} | {r['nmx_elem_per_s'] / 1e6:.1f} | {ref} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    env = machine_info()
    ao, ao_errors, env["torchao"] = torchao_impls()
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(SEED))
    n = x.numel()

    impls = {}
    for name in FORMATS:
        impls[("nmx", name)] = nmx_impl(name)
        if name in ao:
            impls[("torchao", name)] = ao[name]
    times = time_interleaved(impls, x, args.repeats)
    diffs = {}
    for name in ao:
        ours, ref = impls[("nmx", name)](x), ao[name](x)
        diffs[name] = {**compare(x, ours, ref), "arbiter": arbitrate(name, x, ours, ref)}
    rows = summarize(times, diffs, n)

    print(
        f"# nmx fake-quant throughput, CPU, {SHAPE[0]}x{SHAPE[1]} float32 randn (seed {SEED}), "
        f"median of {args.repeats} interleaved repeats after 1 warm-up"
    )
    print(
        f"machine: {env['cpu']}, nproc={env['nproc']}, torch.get_num_threads()={env['torch_threads']}; "
        f"python {env['python']}, torch {env['torch']}, torchao {env['torchao'] or 'NOT AVAILABLE'}"
    )
    if ao_errors:
        print("\ntorchao reference NOT benchmarked for: " + ", ".join(ao_errors) + " (nmx measured alone there)")
        for name, err in ao_errors.items():
            print(f"  {name}: {err}")
    print()
    print(markdown(rows))
    for name, d in diffs.items():
        if not d["bit_identical"]:
            print(
                f"\n{name}: nmx and torchao differ in {d['bits_differ']} element(s) bitwise, "
                f"{d['values_differ']} by value (max abs diff {d['max_abs_diff']:.6g}); examples:"
            )
            for e in d["examples"]:
                print(f"  x{list(e['index'])} = {e['x']!r}: nmx {e['nmx']!r}, torchao {e['torchao']!r}")
            a = d["arbiter"]
            print(f"  {a.get('last_bit_only', 0)} differ only in the last bit (rounding of the dequant product); "
                  f"{a.get('different_code', 0)} have a different code, of which the exact float64 formula "
                  f"agrees with nmx in {a.get('nmx_matches_exact', '?')} and with torchao in "
                  f"{a.get('torchao_matches_exact', '?')}; over all differing elements, the exact value rounded "
                  f"once to float32 is nmx's in {a.get('nmx_is_exact_rounded', '?')} and torchao's in "
                  f"{a.get('torchao_is_exact_rounded', '?')}")
    print()
    print(
        json.dumps(
            {
                "bench": "formats_fake_quant",
                "shape": list(SHAPE),
                "seed": SEED,
                "repeats": args.repeats,
                "env": env,
                "torchao_errors": ao_errors,
                "results": rows,
                "mismatch_examples": {k: v["examples"] for k, v in diffs.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
