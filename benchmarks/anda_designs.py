"""The Anda (HPCA 2025, issue 14) hardware study: the bit-serial design against the FP16 x INT4 "GPU-like"
baseline and the INT8 / MXFP8 / MXFP4 / NVFP4 activation designs of examples/hw/anda_*.yaml, at equal
PE-array area in nmx.hw.accel's model; and per-group variable mantissa widths measured on smollm2-135m.

    python benchmarks/anda_designs.py                       # every part; ~4-7 min on 2 shared CPU cores (widths)
    python benchmarks/anda_designs.py --parts designs hand compare
    python benchmarks/anda_designs.py --parts widths --tokens 512 --json /tmp/anda.json

Parts (docs/anda_hardware.md reads them):
  designs  the six designs: array, lanes, PE-array and chip area (nmx.hw.accel's own figures), the
           bit-serial PE's area by component.
  hand     one decode and one prefill GEMM on the bit-serial and the FP16 designs: the model's compute /
           buffer / DRAM cycles beside the closed form written out here (they must agree: asserted).
  widths   per-group mantissa widths from real activations: the inputs of the four tensor types (qkv, o,
           up/gate, down) of smollm2-135m (the dequantized Q4_1 checkpoint, A16, no other quantization) on
           the first --tokens tokens of WikiText-2 test; for the per-tensor-type lengths a search chose,
           each group of 64 gets the fewest mantissa bits whose error meets the tensor type's error at its
           searched length (see `group_widths`); then nmx.hw.lanes' utilization with and without reordering.
  compare  the equal-area table: the decoder's linear layers (the FP-INT GEMMs Anda reports on) of
           Llama-2-7B and smollm2-135m, decode (batch 1, 2048 cached) and prefill (2048 tokens), INT4
           (int4_g128) weights; speedup, area efficiency and energy efficiency over the FP16 baseline; and
           three readings of it: the bit-serial flush pipelined (no overhead cycle), the baseline's MAC energy
           at the dequantized 16-bit weight, and the speedup over the baseline at its bound (max of its DRAM
           time and its MACs at one per PE per cycle: what a GEMV mapping without the array fill would reach).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HW = ROOT / "examples" / "hw"
TYPES = ("qkv", "o", "up", "down")
#: design file -> (label, activation format on it)
DESIGNS = {
    "anda_fp16_int4_16x16.yaml": ("FP16 x INT4 (A16, baseline)", None),
    "anda_16x16_bitserial.yaml": ("bit-serial BFP", "bfp"),
    "anda_int8_int4_16x16.yaml": ("INT8 x INT4", "int8"),
    "anda_mxfp8_int4_16x16.yaml": ("MXFP8 x INT4", "mxfp8_e4m3"),
    "anda_mxfp4_int4_16x16.yaml": ("MXFP4 x INT4", "mxfp4"),
    "anda_nvfp4_int4_16x16.yaml": ("NVFP4 x INT4", "nvfp4"),
}
#: per-tensor-type lengths `nmx search-precision` chose on smollm2-135m (BENCHMARKS.md, issue 14)
SEARCHED = {"1 %": (7, 7, 7, 7), "5 %": (6, 5, 6, 5)}
#: Anda's published averages over its FP-FP (W4A16) baseline (HPCA 2025, abstract and issue 14)
PUBLISHED = {"speedup": 2.4, "area_eff": 4.0, "energy_eff": 3.1, "speedup_0.1%": 2.14, "speedup_1%": 2.49,
             "energy_eff_0.1%": 3.07, "energy_eff_1%": 3.16}
PE_PARTS = ("mac", "mux", "reg", "decode")


def spec(name: str):
    from nmx.hw.accel_spec import load_accel

    return load_accel(HW / name)


def md(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# ---- designs ----------------------------------------------------------------------------------------


def pe_area_mm2(result) -> float:
    return sum(float(result.area_breakdown[k]) for k in PE_PARTS) * 1e-6


def part_designs() -> dict:
    from nmx.hw.accel import evaluate, gemm_problem
    from nmx.hw.tech import get_tech

    g = gemm_problem(1, 64, 64)
    rows, rec = [], {}
    ref = pe_area_mm2(evaluate(spec("anda_16x16_bitserial.yaml"), g))
    for f, (label, _) in DESIGNS.items():
        s = spec(f)
        r = evaluate(s, g)
        pe = pe_area_mm2(r)
        rec[f] = {"pe_mm2": pe, "chip_mm2": float(r.area_mm2), "macs_mm2": float(r.area_breakdown["mac"]) * 1e-6}
        rows.append([label, f"{s.rows} x {s.cols}", s.lanes, f"{s.pe_kind}/{s.arith} {s.act_bits}x{s.weight_bits}",
                     f"{rec[f]['macs_mm2']:.4f}", f"{pe:.4f}", f"{pe / ref - 1:+.1%}", f"{r.area_mm2:.3f}"])
    print("\n## Designs (nmx.hw.accel's area model, 16 nm)\n")
    print(md(["design", "PEs", "lanes/PE", "datapath", "MAC area mm^2", "PE-array area mm^2", "vs bit-serial",
              "chip mm^2 (+2176 KiB SRAM)"], rows))
    # the bit-serial PE by component (um^2 at 45 nm, then 16 nm), as nmx.hw.accel builds it
    s = spec("anda_16x16_bitserial.yaml")
    t, sc = get_tech(45), get_tech(16).area_scale
    lanes, b, w = s.lanes, s.bits_per_cycle, s.weight_bits
    acc = s.act_bits + w + math.ceil(math.log2(lanes))
    tree, n, lvl = 0.0, lanes, 1
    while n > 1:
        tree += (n // 2) * t.add_area_um2("int", b + w + lvl)
        n, lvl = math.ceil(n / 2), lvl + 1
    parts = {"partial products (16 x 1b x 4b)": lanes * t.mul_area_um2("int", b, w),
             "adder tree (15 adders, 6..9 b)": tree,
             f"shift-accumulator ({acc} b adder + register)":
                 t.add_area_um2("int", acc) + acc * t.reg_area_um2_per_bit(),
             "flush: exponent add (8 b)": t.add_area_um2("int", 8),
             "flush: FP32 adder + 32 b register": t.add_area_um2("fp", 32) + 32 * t.reg_area_um2_per_bit()}
    old_acc = 16 + w + 16  # the old model: every lane its own act_bits + weight_bits + 16 bit accumulator
    old_lane = t.mul_area_um2("int", b, w) + t.add_area_um2("int", old_acc) + old_acc * t.reg_area_um2_per_bit()
    fp16 = t.mul_area_um2("fp", 16) + t.add_area_um2("fp", 32) + 32 * t.reg_area_um2_per_bit()
    total = sum(parts.values())
    rows = [[k, f"{v:.0f}", f"{v * sc:.1f}", f"{v / total:.0%}"] for k, v in parts.items()]
    rows.append(["**one bit-serial PE**", f"{total:.0f}", f"{total * sc:.1f}", "100%"])
    rows.append(["(before this change: 16 lanes x own 36 b accumulator)", f"{lanes * old_lane:.0f}",
                 f"{lanes * old_lane * sc:.1f}", ""])
    rows.append(["one FP16 x FP16 MAC, FP32 accumulate (baseline PE)", f"{fp16:.0f}", f"{fp16 * sc:.1f}", ""])
    print("\n### The bit-serial PE by component\n")
    print(md(["component", "um^2 at 45 nm", "um^2 at 16 nm", "share"], rows))
    rec["bitserial_pe_um2_45"] = parts
    return rec


# ---- hand-checked GEMMs -----------------------------------------------------------------------------


def closed_form(s, m: int, n: int, k: int, passes: int) -> int:
    """Weight-stationary compute cycles: tiles x max(M x passes, R) + R + C, K' = ceil(K / lanes)."""
    kp = math.ceil(k / s.lanes)
    tiles = math.ceil(kp / s.rows) * math.ceil(n / s.cols)
    return tiles * max(m * passes, s.rows) + s.rows + s.cols


def part_hand() -> dict:
    from nmx.hw.accel import evaluate, gemm_problem

    cases = [("Llama-2-7B q_proj, decode", 1, 4096, 4096), ("Llama-2-7B q_proj, prefill 2048", 2048, 4096, 4096),
             ("smollm2 q_proj, prefill 2048", 2048, 576, 576)]
    rows, rec = [], {}
    for label, m, n, k in cases:
        out = {}
        for f, act, passes in (("anda_16x16_bitserial.yaml", "bfp_m7_g64", 7 + 1),
                               ("anda_fp16_int4_16x16.yaml", None, 1)):
            s = spec(f)
            r = evaluate(s, gemm_problem(m, n, k, weights="int4_g128", activations=act))
            cf = closed_form(s, m, n, k, passes)
            assert float(r.compute_cycles) == cf, (label, f, float(r.compute_cycles), cf)
            bound = max(("compute", float(r.compute_cycles)), ("buffer", float(r.glb_cycles)),
                        ("DRAM", float(r.dram_cycles)), key=lambda x: x[1])[0]
            out[f] = {"compute": cf, "glb": float(r.glb_cycles), "dram": float(r.dram_cycles),
                      "cycles": float(r.cycles), "bound": bound, "util": float(r.utilization)}
            rows.append([label, DESIGNS[f][0], f"{cf:,}", f"{float(r.glb_cycles):,.0f}", f"{float(r.dram_cycles):,.0f}",
                         f"{float(r.cycles):,.0f} ({bound})", f"{float(r.utilization):.3f}"])
        a, b = out["anda_fp16_int4_16x16.yaml"], out["anda_16x16_bitserial.yaml"]
        rows.append([label, "**FP16 / bit-serial**", f"{a['compute'] / b['compute']:.2f}x", "", "",
                     f"**{a['cycles'] / b['cycles']:.2f}x**", ""])
        rec[label] = out
    print("\n## One GEMM by hand (bit-serial at m7: 7 + 1 cycles per MAC sequence)\n")
    print(md(["GEMM", "design", "compute cycles (closed form = model)", "buffer cycles", "DRAM cycles",
              "cycles (bound)", "PE utilization"], rows))
    return rec


# ---- per-group widths from real activations ---------------------------------------------------------


def capture(tokens: int) -> dict:
    """The inputs of one linear per tensor type in every decoder layer: type -> [layers * tokens, features]."""
    import torch

    from nmx.eval.text import load_text
    from nmx.model import load_model
    from nmx.quant.tensor_types import resolve_tensor_types

    lm = load_model("smollm2-135m", device="cpu")
    text = load_text("wikitext-2")
    ids = lm.tokenizer(text.text[:40 * tokens], return_tensors="pt").input_ids[0]  # the text's start is enough
    if ids.numel() < tokens:
        raise SystemExit(f"only {ids.numel()} tokens in the first {40 * tokens} characters")
    ids = ids[:tokens]
    tt = resolve_tensor_types(lm.model)
    got: dict[str, list] = {t: [] for t in TYPES}
    hooks = []
    for t in TYPES:
        rel = tt.members[t][0]
        for i in range(tt.layers):
            mod = lm.model.get_submodule(f"{tt.prefix}.{i}.{rel}")
            hooks.append(mod.register_forward_pre_hook(
                lambda _m, a, t=t: got[t].append(a[0].detach().reshape(-1, a[0].shape[-1]).float().clone())))
    try:
        with torch.no_grad():
            lm.model(ids.view(1, -1))
    finally:
        for h in hooks:
            h.remove()
    return {t: torch.cat(v) for t, v in got.items()}, {t: tt.members[t] for t in TYPES}


def group_errors(x, group: int, max_bits: int = 15):
    """Squared error of every group at 1..max_bits mantissa bits ([bits, groups]) and each group's energy."""
    import torch

    from nmx import formats

    rows, k = x.shape
    assert k % group == 0
    xg = x.reshape(rows, k // group, group)
    energy = xg.pow(2).sum(-1).reshape(-1).double()
    errs = []
    for m in range(1, max_bits + 1):
        q = formats.get(f"bfp_m{m}_g{group}").quantize(x)
        errs.append((x - q).reshape(rows, k // group, group).pow(2).sum(-1).reshape(-1).double())
    return torch.stack(errs), energy


RULES = {
    "per-group bound": "every group's relative error <= the tensor's relative error at the searched length",
    "equal tensor error": "fewest total bits with the tensor's squared error <= the uniform setting's "
                          "(a Lagrangian allocation)",
}


def group_widths(errs, energy, length: int, rule: str, budget: float | None = None):
    """Per-group mantissa widths (1..15, the range of nmx's bfp_mM_gG) from errs [bits, groups] (squared
    error at 1..15 bits) and each group's energy, at the error of the uniform setting `length`:

    per-group bound     eps^2 = the tensor's relative squared error at `length`; each group gets the fewest
                        bits m with err_g(m) <= eps^2 energy_g. Every group is held to the tensor's relative
                        error, so the tensor's error ends below the uniform setting's (a sum of bounds).
    equal tensor error  minimize sum_g m_g subject to sum_g err_g(m_g) <= sum_g err_g(length): each group
                        takes argmin_m err_g(m) + lam m, lam the largest (bisection on log lam) that meets the
                        budget. Low-energy groups give bits to outlier groups; the tensor error is the uniform's.
    `budget` overrides sum_g err_g(length) (the equal-error rule at another group size).
    """
    import torch

    budget = float(errs[length - 1].sum()) if budget is None else budget
    m = torch.arange(1, errs.shape[0] + 1, dtype=errs.dtype).unsqueeze(1)
    if rule == "per-group bound":
        eps2 = budget / float(energy.sum())
        ok = errs <= eps2 * energy.unsqueeze(0) * (1 + 1e-9)
        ok[-1] = True
        return (ok.to(torch.int8).argmax(0) + 1).to(torch.int64)
    lo, hi = -60.0, 60.0  # log2 lam: lam = 2^-60 -> (nearly) the most bits, 2^60 -> 1 bit everywhere
    best = torch.full((errs.shape[1],), errs.shape[0], dtype=torch.int64)
    for _ in range(60):
        mid = (lo + hi) / 2
        w = (errs + 2.0 ** mid * m).argmin(0)
        if float(errs.gather(0, w.unsqueeze(0)).sum()) <= budget * (1 + 1e-12):
            best, lo = w + 1, mid
        else:
            hi = mid
    return best


def part_widths(tokens: int, lanes_list=(4, 16, 64), groups=(16, 32, 64, 192)) -> dict:
    import torch

    from nmx.hw.lanes import reorder_ops, variable_width_gain

    torch.set_num_threads(2)
    t0 = time.time()
    acts, members = capture(tokens)
    print(f"\n## Per-group mantissa widths, smollm2-135m, {tokens} tokens of WikiText-2 test "
          f"(captured in {time.time() - t0:.1f} s)\n")
    print("tensor types: " + "; ".join(f"{t} = {', '.join(members[t])} input {tuple(acts[t].shape)}" for t in TYPES))
    rec: dict = {"tokens": tokens, "members": {t: list(v) for t, v in members.items()}, "g64": {}, "groups": {}}
    overhead = spec("anda_16x16_bitserial.yaml").serial_overhead
    errs64 = {t: group_errors(acts[t], 64) for t in TYPES}
    # leading zero bit-planes: with a per-group exponent the top plane always holds the group's largest element
    nz = {t: float((acts[t].reshape(-1, 64).abs().amax(-1) > 0).float().mean()) for t in TYPES}
    print("\ngroups of 64 with a nonzero element (its top mantissa plane then holds the group's largest element: "
          "no leading bit-plane is ever all zero): " + ", ".join(f"{t} {nz[t]:.4%}" for t in TYPES))
    for rule, what in RULES.items():
        for tol, lengths in SEARCHED.items():
            rows, lane_rows = [], []
            for t, L in zip(TYPES, lengths, strict=True):
                errs, energy = errs64[t]
                w = group_widths(errs, energy, L, rule)
                hist = torch.bincount(w, minlength=16)[1:].tolist()
                n, wl = w.numel(), w.tolist()
                row = {"length": L, "rel_err": math.sqrt(float(errs[L - 1].sum() / energy.sum())),
                       "mean": float(w.float().mean()), "max": int(w.max()), "min": int(w.min()),
                       "p50": int(w.median()), "p99": int(torch.quantile(w.float(), 0.99)),
                       "above": float((w > L).float().mean()), "below": float((w < L).float().mean()),
                       "tensor_err_ratio": float(errs.gather(0, (w - 1).unsqueeze(0)).sum() / errs[L - 1].sum()),
                       "hist": hist, "lanes": {}}
                rows.append([t, L, f"{row['rel_err']:.4f}", f"{row['mean']:.2f}", row["min"], row["p50"], row["p99"],
                             row["max"], f"{row['below']:.1%}", f"{row['above']:.1%}", f"{row['tensor_err_ratio']:.3f}",
                             " ".join(f"{b}:{c / n:.0%}" for b, c in enumerate(hist, 1) if c / n >= 0.005)])
                for lanes in lanes_list:
                    vs_len = variable_width_gain(wl, lanes, overhead, uniform_width=L)
                    vs_max = variable_width_gain(wl, lanes, overhead)
                    lr = row["lanes"][lanes] = {
                        "util": vs_len["utilization"], "util_reordered": vs_len["utilization_reordered"],
                        "speedup_vs_length": vs_len["speedup"],
                        "speedup_vs_length_reordered": vs_len["speedup_reordered"],
                        "speedup_vs_max": vs_max["speedup"], "speedup_vs_max_reordered": vs_max["speedup_reordered"],
                        "reorder_ops_per_group": vs_len["reorder_ops"] / n}
                    lane_rows.append([t, L, lanes, f"{lr['util']:.3f}", f"{lr['util_reordered']:.3f}",
                                      f"{lr['speedup_vs_length']:.3f}", f"{lr['speedup_vs_length_reordered']:.3f}",
                                      f"{lr['speedup_vs_max']:.3f}", f"{lr['speedup_vs_max_reordered']:.3f}"])
                rec["g64"].setdefault(rule, {}).setdefault(tol, {})[t] = row
            print(f"\n### {rule} ({what}); groups of 64, lengths {'/'.join(map(str, lengths))} (searched at {tol})\n")
            print(md(["type", "searched length", "its rel. RMS error", "mean width", "min", "median", "p99", "max",
                      "groups below length", "above", "tensor error / uniform's", "width histogram (>= 0.5 %)"], rows))
            print(f"\nlanes ({rule}, {'/'.join(map(str, lengths))}; overhead {overhead} cycle per group):\n")
            print(md(["type", "length", "groups in lock-step", "utilization", "reordered",
                      "speedup vs per-type length", "reordered", "speedup vs one width = max", "reordered"], lane_rows))
    # group size: finer groups need fewer bits but pay 8 / G exponent bits per element (1 % lengths, equal error)
    rows = []
    for t, L in zip(TYPES, SEARCHED["1 %"], strict=True):
        budget = float(errs64[t][0][L - 1].sum())
        for g in groups:
            if acts[t].shape[1] % g:
                continue
            errs, energy = errs64[t] if g == 64 else group_errors(acts[t], g)
            uni = next(m for m in range(1, 16) if m == 15 or float(errs[m - 1].sum()) <= budget * (1 + 1e-9))
            # the same budget (the 64-group uniform setting's squared error) at this group size
            w = group_widths(errs, energy, L, "equal tensor error", budget=budget)
            mean = float(w.float().mean())
            lanes = max(1, 256 // g)  # one wave = the groups of one 256-wide K tile of the 16 x 16-lane array
            gain = variable_width_gain(w.tolist(), lanes, overhead, uniform_width=uni)
            rec["groups"].setdefault(t, {})[g] = {
                "uniform_length": uni, "uniform_bits_per_element": 1 + uni + 8 / g, "mean": mean,
                "bits_per_element": 1 + mean + 8 / g, "lockstep": lanes, "speedup_vs_uniform": gain["speedup"],
                "speedup_vs_uniform_reordered": gain["speedup_reordered"]}
            rows.append([t, g, uni, f"{1 + uni + 8 / g:.3f}", f"{mean:.2f}", f"{1 + mean + 8 / g:.3f}", lanes,
                         f"{gain['speedup']:.3f}", f"{gain['speedup_reordered']:.3f}"])
    print("\n### Group size, equal tensor error = the uniform 64-group setting's at the 1 % lengths (7/7/7/7)\n")
    print(md(["type", "group G", "uniform length meeting that error", "its bits/element (1 + m + 8/G)",
              "per-group mean width", "bits/element", "groups in lock-step (256 / G)",
              "speedup vs that uniform length", "reordered"], rows))
    print(f"\nreorder cost: a counting sort, {reorder_ops(1000) / 1000:.3f} ops per group (nmx.hw.lanes.reorder_ops), "
          "plus an address per group for the partial-sum accumulator (see docs/anda_hardware.md)")
    return rec


# ---- the equal-area comparison ----------------------------------------------------------------------


def linears_cost(s, model: str, phase: str, acts, weights: str | None = "int4_g128",
                 params: dict | None = None) -> dict:
    from nmx.hw.accel import evaluate
    from nmx.hw.workload import PRESETS, Compression, llm_workload

    w = llm_workload(model, phase, tokens=2048, context=2048,
                     compression=Compression(weights=weights, activations=acts))
    names = set(PRESETS[model].linears())
    r = evaluate(params if params is not None else s, w, per_op=True)
    rows = [o for o in r.per_op if o["name"] in names]
    cyc = sum(float(o["cycles"]) for o in rows)
    return {"latency_s": cyc / (s.clock_ghz * 1e9), "energy_pj": sum(float(o["energy_pj"]) for o in rows),
            "dram_s": sum(float(o["dram_cycles"]) for o in rows) / (s.clock_ghz * 1e9),
            "compute_cycles": sum(float(o["compute_cycles"]) for o in rows), "cycles": cyc,
            "pe_mm2": pe_area_mm2(r), "chip_mm2": float(r.area_mm2),
            "macs": float(sum(g.m * g.n * g.k * g.count for g in w.ops if g.name in names)),
            "mac_reg_pj": float(r.energy_breakdown["mac"] + r.energy_breakdown["reg"])}


def part_compare() -> dict:
    from nmx.hw.accel import params_from_spec

    workloads = [("llama-2-7b", "prefill"), ("llama-2-7b", "decode"), ("smollm2-135m", "prefill"),
                 ("smollm2-135m", "decode")]
    points = [("FP16 x INT4 (A16, baseline)", "anda_fp16_int4_16x16.yaml", None)]
    for tol, ls in SEARCHED.items():
        points.append((f"bit-serial BFP {'/'.join(map(str, ls))} ({tol})", "anda_16x16_bitserial.yaml",
                       {t: f"bfp_m{m}_g64" for t, m in zip(TYPES, ls, strict=True)}))
    points += [(label, f, act) for f, (label, act) in DESIGNS.items() if act not in (None, "bfp")]
    rec: dict = {}
    for model, phase in workloads:
        base_spec = spec(points[0][1])
        base = linears_cost(base_spec, model, phase, None)
        # the baseline's MAC + register energy at the dequantized FP16 weight (the model evaluates the multiplier
        # at the stored INT4 width): the same run with 16-bit weights, MAC + register parts only
        b16 = linears_cost(base_spec, model, phase, None, weights=None)
        base_e16 = base["energy_pj"] - base["mac_reg_pj"] + b16["mac_reg_pj"]
        # the baseline at its bound: max(DRAM time, MACs / (its MACs per cycle)) -- a GEMV mapping with no array fill
        base_bound = max(base["dram_s"], base["macs"] / (base_spec.rows * base_spec.cols * base_spec.lanes
                                                         * base_spec.clock_ghz * 1e9))
        rows = []
        for label, f, act in points:
            s = spec(f)
            c = linears_cost(s, model, phase, act)
            sp = base["latency_s"] / c["latency_s"]
            row = {"latency_s": c["latency_s"], "energy_pj": c["energy_pj"], "speedup": sp,
                   "area_eff_chip": sp * base["chip_mm2"] / c["chip_mm2"],
                   "area_eff_pe": sp * base["pe_mm2"] / c["pe_mm2"],
                   "energy_eff": base["energy_pj"] / c["energy_pj"], "energy_eff_fp16w": base_e16 / c["energy_pj"],
                   "dram_floor_ratio": base["dram_s"] / c["dram_s"], "speedup_vs_bound": base_bound / c["latency_s"],
                   "dram_share": c["dram_s"] / c["latency_s"]}
            extra = ""
            if s.pe_kind == "bit_serial":  # the flush pipelined behind the next sequence: no overhead cycle
                p = {**params_from_spec(s), "serial_overhead": 0}
                c0 = linears_cost(s, model, phase, act, params=p)
                row["speedup_pipelined_flush"] = base["latency_s"] / c0["latency_s"]
                extra = f"{row['speedup_pipelined_flush']:.2f}x"
            rec.setdefault(f"{model} {phase}", {})[label] = row
            rows.append([label, f"{c['latency_s'] * 1e3:.3f}", f"{sp:.2f}x", extra, f"{row['area_eff_chip']:.2f}x",
                         f"{row['area_eff_pe']:.2f}x", f"{row['energy_eff']:.2f}x", f"{row['energy_eff_fp16w']:.2f}x",
                         f"{row['dram_share']:.2f}", f"{row['speedup_vs_bound']:.2f}x"])
        print(f"\n### {model}, {phase} ({'2048 tokens' if phase == 'prefill' else 'batch 1, 2048 cached'}), "
              "decoder linears\n")
        print(md(["design", "latency ms", "speedup", "speedup, flush pipelined", "area eff. (chip)",
                  "area eff. (PE array)", "energy eff.", "energy eff. vs FP16-weight MAC energy",
                  "DRAM time / latency", "speedup over the baseline at its bound"], rows))
        print(f"\nthe baseline at its bound: {base_bound * 1e3:.3f} ms = max(DRAM {base['dram_s'] * 1e3:.3f} ms, "
              f"{base['macs']:.3g} MACs / {base_spec.rows * base_spec.cols * base_spec.lanes} per cycle); "
              f"its modelled latency is {base['latency_s'] / base_bound:.2f}x that")
    print("\nAnda (HPCA 2025), over its GPU-like FP-FP W4A16 baseline, averaged over OPT / LLaMA / LLaMA-2 "
          f"FP-INT GEMMs: speedup {PUBLISHED['speedup']}x ({PUBLISHED['speedup_0.1%']}x at 0.1 % loss, "
          f"{PUBLISHED['speedup_1%']}x at 1 %), "
          f"area efficiency {PUBLISHED['area_eff']}x, energy efficiency {PUBLISHED['energy_eff']}x "
          f"({PUBLISHED['energy_eff_0.1%']}x / {PUBLISHED['energy_eff_1%']}x).")
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", default=["designs", "hand", "widths", "compare"],
                    choices=["designs", "hand", "widths", "compare"])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--json", type=Path, default=None, help="write every number to this JSON file")
    a = ap.parse_args(argv)
    np.set_printoptions(precision=4)
    args = argv if argv is not None else sys.argv[1:]
    out: dict = {"command": " ".join(["python", "benchmarks/anda_designs.py", *args])}
    for part in a.parts:
        out[part] = {"designs": part_designs, "hand": part_hand, "compare": part_compare,
                     "widths": lambda: part_widths(a.tokens)}[part]()
    if a.json:
        a.json.write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
