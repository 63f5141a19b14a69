"""Where a step's time and energy go, by operation class, on any GPU target or accelerator design.

    from nmx.hw.breakdown import breakdown, array_sweep
    b = breakdown("llama-2-7b", "h200", phase="decode", batch=1, context=4096)
    b["classes"]["softmax"]["latency_s"], b["nonlinear_share"]
    array_sweep("llama-2-7b", "dense-16x16-ws", sizes=(16, 32, 64, 128), nonlinear="lut256", nl_lanes=16)

Classes: gemm (the linear layers and the LM head), attention (the QK^T and PV matrix products),
softmax, norm, activation (SiLU), kv (moving the KV cache), other (the embedding lookup). The
nonlinear share is (softmax + norm + activation) / step.

Attribution (the classes always add up to the target's own `Cost.latency_s`):
- an op of a class is that class's;
- attention (a GPU's fused kernel, an accelerator's QK^T and PV): memory-bound time is KV movement
  in proportion of the KV bytes to the op's bytes (the rest, Q and O, stays attention); compute-bound
  time on a GPU is split between the matrix products (FLOPs at the bf16 tensor-core rate) and the
  softmax's exponentials at the special-function rate (`SFU_EXP_PER_S`), in proportion of the two
  times; an accelerator prices the softmax as its own vector op.

Nonlinear units (`nonlinear=` a method of `nmx.hw.nonlinear`, accelerators only): the softmax and the
SiLU run on `nl_lanes` copies of that unit (softmax: `softmax_cost` per row of the kept context; SiLU:
the unit's cost per element) at the design's technology node and clock; the op takes the longer of
its vector-unit time and the unit's time, and adds the unit's energy. Norms stay on the vector unit
(one reciprocal square root per row). Without a method, the design's vector unit (`cols` x `lanes`
lanes, nmx.hw.accel) does all of it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

from nmx.errors import InputError

CLASSES = ("gemm", "attention", "softmax", "norm", "activation", "kv", "other")
NONLINEAR = ("softmax", "norm", "activation")

#: special-function (MUFU) throughput of the H100 SXM5: 3.9 TFLOPS against 989 TFLOPS of FP16 matmul
#: (J. Shah et al., "FlashAttention-3", 2024, section 3.3); other GPUs: scaled by SM count (estimated)
SFU_EXP_PER_S_H100 = 3.9e12


def sfu_exp_per_s(gpu: Any) -> tuple[float, bool]:
    """(exponentials per second, estimated?) of a GPU target."""
    if gpu.name in ("h100-sxm", "h200"):
        return SFU_EXP_PER_S_H100, False
    return SFU_EXP_PER_S_H100 * gpu.sms / 132, True


def _op_index(workload: Any) -> dict[str, Any]:
    return {op.name: op for op in workload.ops}


def breakdown(model: Any, target: Any, phase: str = "decode", batch: int = 1, context: int = 4096, tokens: int = 2048,
              compression: Any = None, nonlinear: str | None = None, nl_lanes: int = 16,
              gpu_impl: str = "pytorch") -> dict[str, Any]:
    """Time and energy of one step by operation class (see the module doc)."""
    from nmx.hw.targets import get_target
    from nmx.hw.workload import llm_workload

    t = get_target(target, gpu_impl)
    if t.kind not in ("gpu", "accelerator"):
        raise InputError(f"{t.name} is a {t.kind} target; the breakdown prices GPU targets and accelerator designs")
    if nonlinear is not None and t.kind != "accelerator":
        raise InputError("--nonlinear: nonlinear units are priced on accelerator designs (a GPU runs softmax and "
                         "SiLU on its own special-function units)")
    if isinstance(nl_lanes, bool) or not isinstance(nl_lanes, int) or nl_lanes < 1:
        raise InputError(f"--nl-lanes must be a positive integer, got {nl_lanes!r}")
    w = llm_workload(model, phase, batch=batch, tokens=tokens, context=context, compression=compression)
    c = t.cost(w)
    ops = _op_index(w)
    lat = dict.fromkeys(CLASSES, 0.0)
    energy: dict[str, float] | None = dict.fromkeys(CLASSES, 0.0) if c.energy_pj is not None else None
    notes: list[str] = []
    unit_info = None
    if t.kind == "gpu":
        from nmx.hw.gpu import op_latency

        sfu, est = sfu_exp_per_s(t.gpu)
        if est:
            notes.append(f"{t.name}: special-function rate {sfu / 1e12:.2f} T/s scaled by SM count from the H100's "
                         "3.9 TFLOPS (estimated)")
        for row in c.ops:
            op = ops[row.name]
            if op.kind == "gemm":
                lat["gemm"] += row.latency_s
            elif op.kind == "norm":
                lat["norm"] += row.latency_s
            elif op.kind == "activation":
                lat["activation"] += row.latency_s
            elif op.kind == "attention":
                r = op_latency(t.gpu, op, gpu_impl)
                busy = max(r["memory_s"], r["compute_s"])
                over = (r["latency_s"] - busy) * op.count  # launch: attention's own
                kv_bytes = op.kv_bytes_read + op.kv_bytes_written
                if r["memory_s"] >= r["compute_s"]:
                    kv = busy * op.count * kv_bytes / op.bytes
                    lat["kv"] += kv
                    lat["attention"] += busy * op.count - kv + over
                else:
                    mm = op.flops / (t.gpu.peak("bf16") * t.gpu.efficiency("bf16"))
                    ex = op.elements / sfu
                    lat["softmax"] += busy * op.count * ex / (mm + ex)
                    lat["attention"] += busy * op.count * mm / (mm + ex) + over
            else:
                lat["other"] += row.latency_s
    else:
        spec = t.spec
        unit_info = _units(spec, nonlinear, nl_lanes) if nonlinear else None
        for row in c.ops:
            name = row.name
            e = row.energy_pj or 0.0
            if name.endswith((".qk", ".pv")):
                att = ops[name.rsplit(".", 1)[0]]
                if row.bound == "memory":
                    share = (att.kv_bytes_read + att.kv_bytes_written) / att.bytes if att.bytes else 0.0
                    cls_lat = {"kv": row.latency_s * share, "attention": row.latency_s * (1 - share)}
                else:
                    cls_lat = {"attention": row.latency_s}
                for k, v in cls_lat.items():
                    lat[k] += v
                    energy[k] += e * v / row.latency_s if row.latency_s else 0.0  # type: ignore[index]
                continue
            if name.endswith(".softmax"):
                cls, extra = "softmax", None
                if unit_info:
                    att = ops[name.rsplit(".", 1)[0]]
                    extra = unit_info["softmax"](att)
            else:
                op = ops[name]
                cls = {"gemm": "gemm", "norm": "norm", "activation": "activation"}.get(op.kind, "other")
                extra = unit_info["activation"](op) if (unit_info and cls == "activation") else None
            if extra is not None:
                lat[cls] += max(row.latency_s, extra[0])
                energy[cls] += e + extra[1]  # type: ignore[index]
            else:
                lat[cls] += row.latency_s
                energy[cls] += e  # type: ignore[index]
        if unit_info:
            notes.append(unit_info["note"])
    total = sum(lat.values())
    classes = {k: {"latency_s": lat[k], "share": lat[k] / total if total else 0.0,
                   "energy_pj": energy[k] if energy is not None else None,
                   "energy_share": (energy[k] / sum(energy.values())) if energy else None} for k in CLASSES}
    nl = sum(lat[k] for k in NONLINEAR) / total if total else 0.0
    nl_e = sum(energy[k] for k in NONLINEAR) / sum(energy.values()) if energy else None
    return {"model": w.model.name, "target": t.name, "kind": t.kind, "phase": phase, "batch": batch,
            "context": w.context, "tokens": w.tokens, "compression": w.compression.describe(),
            "nonlinear_unit": nonlinear, "nl_lanes": nl_lanes if nonlinear else None, "latency_s": total,
            "target_latency_s": c.latency_s, "energy_pj": sum(energy.values()) if energy else None,
            "classes": classes, "nonlinear_share": nl, "nonlinear_energy_share": nl_e, "notes": notes}


def _units(spec: Any, method: str, lanes: int) -> dict[str, Any]:
    """Pricers of the softmax and SiLU on `lanes` nonlinear units of `method` at the design's node and
    clock: op -> (seconds, energy pJ) for all of the op's instances."""
    from nmx.hw import nonlinear as nl
    from nmx.hw.tech import get_tech

    nl.get(method)
    tech = get_tech(spec.tech_nm)
    hz = spec.clock_ghz * 1e9

    def softmax(att: Any) -> tuple[float, float]:
        row_len = max(1, round(att.elements / max(1, att.batch * att.heads_q * att.q_len)))
        rows = att.batch * att.heads_q * att.q_len * att.count
        r = nl.softmax_cost(method, tech, row_len, rows=1, lanes=lanes)
        return r["cycles"] * rows / hz, r["energy_pj"] * rows

    def activation(op: Any) -> tuple[float, float]:
        r = nl.unit(method, "silu").cost(tech, elements=int(op.elements), lanes=lanes)
        return r["cycles"] * op.count / hz, r["energy_pj"] * op.count

    return {"softmax": softmax, "activation": activation,
            "note": f"softmax and SiLU on {lanes} x {method} units at {spec.tech_nm} nm, {spec.clock_ghz:g} GHz "
                    "(nmx.hw.nonlinear); norms on the vector unit"}


def array_sweep(model: Any, accelerator: Any, sizes: Iterable[int] = (16, 32, 64, 128, 256), phase: str = "prefill",
                batch: int = 1, context: int = 4096, tokens: int = 2048, compression: Any = None,
                nonlinear: str | None = "lut256", nl_lanes: int = 16, scale_dram: bool = True) -> list[dict[str, Any]]:
    """The nonlinear share as the matrix array grows (rows = cols = size) while the nonlinear units stay:
    one breakdown per size. `scale_dram` grows the DRAM and buffer bandwidth with the array (so the
    matrix products stay compute-bound, the premise of PICACHU's claim); the vector unit is the design's."""
    from nmx.hw.targets import AccelModel, get_target

    base = get_target(accelerator)
    if base.kind != "accelerator":
        raise InputError(f"{base.name} is not an accelerator design; the array sweep resizes a PE array")
    out = []
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise InputError(f"array sizes must be positive integers, got {s!r}")
        f = s / base.spec.cols
        spec = replace(base.spec, name=f"{base.spec.name}@{s}x{s}", rows=s, cols=s,
                       dram_gb_s=base.spec.dram_gb_s * (f if scale_dram else 1.0),
                       glb_bw_bytes_per_cycle=base.spec.glb_bw_bytes_per_cycle * (f if scale_dram else 1.0))
        b = breakdown(model, AccelModel(spec, "sweep"), phase, batch, context, tokens, compression, nonlinear, nl_lanes)
        out.append({"size": s, "latency_s": b["latency_s"], "nonlinear_share": b["nonlinear_share"],
                    "nonlinear_energy_share": b["nonlinear_energy_share"],
                    **{f"{k}_share": v["share"] for k, v in b["classes"].items()}})
    return out
