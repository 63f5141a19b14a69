"""The bit-serial PE on BFP activations (Anda-style): cycles = mantissa bits + a fixed overhead per MAC
sequence, the bit-plane compressor's energy, per-tensor-type formats in the workload, the example
designs. Oracle: the model's own closed form written out by hand (tiles x stream x passes + R + C)."""

import glob
import math

import pytest

from nmx.hw.accel import evaluate, gemm_problem
from nmx.hw.accel_spec import accel_from_dict, load_accel
from nmx.hw.workload import Compression, llm_workload

ANDA = "examples/hw/anda_16x16_bitserial.yaml"


@pytest.mark.parametrize("m", [1, 2, 4, 7, 12, 15])
def test_compute_cycles_scale_with_mantissa_bits(m):
    spec = load_accel(ANDA)  # 16 x 16 PEs, 16 lanes, 1 bit per cycle, 1 overhead cycle, weight stationary
    g = gemm_problem(2048, 576, 576, weights="int4_g128", activations=f"bfp_m{m}_g64")
    r = evaluate(spec, g)
    tiles = math.ceil(math.ceil(576 / 16) / 16) * math.ceil(576 / 16)  # K' = 576 / 16 lanes over 16 rows; N / 16
    assert float(r.compute_cycles) == tiles * 2048 * (m + 1) + 16 + 16


def test_non_bfp_activations_stream_every_bit_and_dense_pes_ignore_mantissas():
    spec = load_accel(ANDA)
    c8 = float(evaluate(spec, gemm_problem(2048, 576, 576, activations="int8")).compute_cycles)
    c7 = float(evaluate(spec, gemm_problem(2048, 576, 576, activations="bfp_m7_g64")).compute_cycles)
    assert c8 == c7 * (8 + 1) / (7 + 1) + 32 * (1 - 9 / 8)  # int8: 8 bits + overhead vs 7 + overhead
    fp = load_accel("examples/hw/anda_fp16_int4_16x16.yaml")
    a = [float(evaluate(fp, gemm_problem(2048, 576, 576, activations=f"bfp_m{m}_g64")).compute_cycles) for m in (3, 9)]
    assert a[0] == a[1]


def test_bitplane_compressor_energy_and_area():
    spec = load_accel(ANDA)
    raw = {"name": "x", "tech_nm": 16, "clock_ghz": 0.285, "pe_array": {"rows": 16, "cols": 16},
           "pe": {"kind": "bit_serial", "act_bits": 16, "weight_bits": 4, "lanes": 16, "serial_overhead_cycles": 1},
           "memory": [{"name": "reg", "kind": "reg", "bytes_per_pe": 16},
                      {"name": "glb", "kind": "sram", "capacity_kb": 2176, "bandwidth_bytes_per_cycle": 256},
                      {"name": "dram", "kind": "dram", "type": "lpddr5", "bandwidth_gb_s": 51.2}]}
    off = accel_from_dict(raw)
    g = gemm_problem(64, 576, 576, weights="int4_g128", activations="bfp_m5_g64")
    on_r, off_r = evaluate(spec, g), evaluate(off, g)
    extra = float(on_r.energy_breakdown["decode"] - off_r.energy_breakdown["decode"])
    from nmx.hw.tech import get_tech

    bit_pj = get_tech(45).add_energy_pj("int", 8) / 8 * get_tech(16).energy_scale
    assert extra == pytest.approx(64 * 576 * (6 + 8) * bit_pj)  # (sign + 5 + 8 exponent-compare) bit-slices
    assert float(on_r.area_breakdown["decode"]) == pytest.approx(2 * float(off_r.area_breakdown["decode"]))
    assert float(on_r.compute_cycles) == float(off_r.compute_cycles)  # pipelined: no cycles
    with pytest.raises(Exception, match="bit_serial PEs only"):
        accel_from_dict({**raw, "pe": {"kind": "dense", "bitplane_compressor": True}})


def test_per_tensor_type_lengths_drive_the_cycles_of_each_linear():
    acts = {"qkv": "bfp_m8_g64", "o": "bfp_m7_g64", "up": "bfp_m6_g64", "down": "bfp_m3_g64"}
    w = llm_workload("smollm2-135m", "prefill", tokens=256, compression=Compression(weights="int4_g128",
                                                                                  activations=acts))
    by = {op.name: op.act_format for op in w.ops if op.kind == "gemm"}
    assert by["self_attn.q_proj"] == by["self_attn.v_proj"] == "bfp_m8_g64" and by["mlp.gate_proj"] == "bfp_m6_g64"
    assert by["self_attn.o_proj"] == "bfp_m7_g64" and by["mlp.down_proj"] == "bfp_m3_g64" and by["lm_head"] is None
    spec = load_accel(ANDA)

    def down_cycles(fmt):
        work = llm_workload("smollm2-135m", "prefill", tokens=256,
                            compression=Compression(weights="int4_g128", activations={**acts, "down": fmt}))
        row = next(r for r in evaluate(spec, work, per_op=True).per_op if r["name"] == "mlp.down_proj")
        return float(row["compute_cycles"]) / row["count"] - 32  # per layer, less the R + C fill

    assert down_cycles("bfp_m3_g64") / down_cycles("bfp_m7_g64") == (3 + 1) / (7 + 1)


def test_example_designs_load_and_share_the_buffers():
    files = sorted(glob.glob("examples/hw/anda_*.yaml"))
    assert len(files) == 6
    specs = [load_accel(f) for f in files]
    assert {s.glb_kb for s in specs} == {2176.0} and {s.clock_ghz for s in specs} == {0.285}
    assert {s.tech_nm for s in specs} == {16}
