"""The analytical accelerator model: each formula against a hand-computed case, properties
(hypothesis), the YAML boundary (one-line errors, exit code 2) and the example designs."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from nmx.errors import InputError
from nmx.hw.accel import LOOP_ORDERS, evaluate, gemm_problem, grid, nm_mask, params_from_spec, problems_from_workload
from nmx.hw.accel_spec import OPERAND_FORMATS, accel_from_dict, load_accel, workload_from_dict
from nmx.hw.tech import get_tech
from nmx.hw.workload import Compression, llm_workload
from tests.cli import run_cli as _main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "hw"
T28 = get_tech(28)


def base(**over):
    """A 4x4 int16 weight-stationary array with a huge buffer and DRAM bandwidth (compute bound)."""
    p = dict(rows=4, cols=4, lanes=1, nm_group=0, nm_mask=0, bit_serial=0, bits_per_cycle=1, arith_fp=0,
             act_bits=16, weight_bits=16, reg_bytes=16, glb_kb=1024, glb_bw=1e6, dram_gb_s=1e6,
             dram_pj_per_bit=4.0, clock_ghz=1.0, tech_nm=28, dataflow=0, loop_order=-1,
             weights_format=OPERAND_FORMATS.index("auto"), activations_format=OPERAND_FORMATS.index("dense"),
             sparsity_mode=1, overlap=1, tile_m=0, tile_n=0, tile_k=0, loops_m=0, loops_n=0, loops_k=0)
    p.update(over)
    return p


def fmt(name):
    return OPERAND_FORMATS.index(name)


# ---- compute cycles and utilization ------------------------------------------------------------


def test_weight_stationary_cycles_by_hand():
    g = gemm_problem(8, 8, 8)  # bf16 operands: 16-bit, one pass on the 16-bit datapath
    r = evaluate(base(), g)
    # K'=8 on 4 rows, N=8 on 4 cols: 2*2 tiles; each streams M=8 (> R=4 load) cycles; + R + C fill
    assert r.compute_cycles == 2 * 2 * 8 + 4 + 4 == 40
    assert r.cycles == 40 and r.latency_s == pytest.approx(40e-9)
    assert r.utilization == pytest.approx(512 / (16 * 40))


def test_tile_quantization_and_load_bound_tiles():
    # N=5 on 4 columns: 2 column tiles; M=1 (decode): each tile is bound by the R=4 cycle weight load
    r = evaluate(base(), gemm_problem(1, 5, 8))
    assert r.compute_cycles == 2 * 2 * 4 + 8
    assert r.utilization == pytest.approx(1 * 5 * 8 / (16 * 24))


@pytest.mark.parametrize("df,expected", [
    (1, 2 * 2 * 8 + 8),   # OS: rows <- M=8, cols <- N=8, stream K'=8
    (2, 2 * 2 * 8 + 8),   # IS: rows <- K'=8, cols <- M=8, stream N=8
])
def test_output_and_input_stationary_cycles(df, expected):
    assert evaluate(base(dataflow=df), gemm_problem(8, 8, 8)).compute_cycles == expected


def test_os_with_small_k_is_drain_bound():
    # OS, M=N=4, K=2: one tile streaming 2 cycles, bound by the R=4 drain: 4 + 8
    assert evaluate(base(dataflow=1), gemm_problem(4, 4, 2)).compute_cycles == 12


def test_memory_bound_overlap_and_no_overlap():
    g = gemm_problem(8, 8, 8)
    # DRAM bytes: W 128 + X 128 + Y 128 (bf16), one buffer tile; 1 byte per cycle
    r = evaluate(base(dram_gb_s=1.0), g)
    assert r.dram_bytes == 384 and r.dram_cycles == 384 and r.cycles == 384
    r2 = evaluate(base(dram_gb_s=1.0, overlap=0), g)
    assert r2.cycles == pytest.approx(40 + r2.glb_cycles + 384)


def test_buffer_traffic_and_energy_by_hand():
    g = gemm_problem(8, 8, 8)
    r = evaluate(base(glb_bw=1000.0), g)
    pb = (16 + 16 + 16) / 8  # int accumulator a + w + 16 bits
    psum = 64 * pb * (2 * 2 - 1)  # partial sums: 2 K' array tiles -> written/read 3 times
    glb = 384 + 128 * 1 + 128 * 2 + psum  # DRAM fills + W once + X once per column tile + psums
    assert r.glb_bytes == pytest.approx(glb) and r.glb_cycles == pytest.approx(glb / 1000)
    e = r.energy_breakdown
    assert e["glb"] == pytest.approx(glb * 8 * T28.sram_read_energy_pj_per_bit(1024 * 1024))
    assert e["dram"] == pytest.approx(384 * 8 * 4.0)
    assert e["mac"] == pytest.approx(512 * T28.mac_energy_pj("int", 16, 16))
    assert e["reg"] == pytest.approx(512 * (16 + 16 + 2 * 48) * T28.reg_energy_pj_per_bit())
    assert e["mux"] == 0 and e["decode"] == 0 and e["vector"] == 0
    assert r.energy_pj == pytest.approx(sum(float(v) for v in e.values()))


def test_area_by_hand():
    r = evaluate(base(lanes=2), gemm_problem(8, 8, 8))
    mac = T28.mul_area_um2("int", 16) + T28.add_area_um2("int", 48) + 48 * T28.reg_area_um2_per_bit()
    assert r.area_breakdown["mac"] == pytest.approx(16 * 2 * mac)
    assert r.area_breakdown["glb"] == pytest.approx(1024 * 1024 * 8 * T28.sram_area_um2_per_bit())
    assert r.area_breakdown["reg"] == pytest.approx(16 * 16 * 8 * T28.reg_area_um2_per_bit())
    assert r.area_breakdown["mux"] == 0


# ---- N:M, bit-serial, gating vs skipping ---------------------------------------------------------


NM24 = dict(nm_group=4, nm_mask=nm_mask([2]), lanes=2)


@pytest.mark.parametrize("pattern,cycles,effectual", [
    ("2:4", 2 * 8 + 8, 8 * 8 * 8),      # K'=ceil(16*(2/4)/2)=4: 1x2 tiles of 8 cycles + 8
    ("1:4", 2 * 8 + 8, 8 * 8 * 4),      # runs as 2:4 (nearest supported), half the slots hold zeros
    ("3:4", 4 * 8 + 8, 8 * 8 * 12),     # denser than supported: dense, K'=ceil(16/2)=8
    ("4:8", 4 * 8 + 8, 8 * 8 * 8),      # other M: dense
])
def test_fixed_24_pe(pattern, cycles, effectual):
    r = evaluate(base(**NM24), gemm_problem(8, 8, 16, pattern=pattern))
    assert r.compute_cycles == cycles
    assert r.macs_effectual == pytest.approx(effectual)


def test_reconfigurable_pe_runs_each_supported_density_natively():
    p = base(nm_group=4, nm_mask=nm_mask([1, 2, 3]), lanes=4, rows=4, cols=4)
    g = lambda pat: gemm_problem(64, 4, 48, pattern=pat)  # noqa: E731
    # K' = ceil(48 * n/4 / 4): 1:4 -> 3, 2:4 -> 6, 3:4 -> 9, dense -> 12; 1 col tile; stream M=64
    for pat, kp in (("1:4", 3), ("2:4", 6), ("3:4", 9), (None, 12)):
        assert evaluate(p, g(pat)).compute_cycles == np.ceil(kp / 4) * 64 + 8
    # its muxes: fan-in M x (number of supported N) = 12 -> 11 2:1 mux bits per activation bit per lane
    r = evaluate(p, g("2:4"))
    mux_bit = T28.add_area_um2("int", 8) / 8
    assert r.area_breakdown["mux"] == pytest.approx(16 * 4 * 16 * 11 * mux_bit)
    assert r.energy_breakdown["mux"] == pytest.approx(
        64 * 4 * 48 * 0.5 * 16 * np.log2(12) * T28.add_energy_pj("int", 8) / 8)


@pytest.mark.parametrize("bpc,act,cycles", [(1, None, 8 * 16 + 8), (2, None, 8 * 8 + 8), (1, "int4", 8 * 4 + 8)])
def test_bit_serial_cycles_scale_with_activation_bits(bpc, act, cycles):
    # OS 4x4, M=N=4, K=8: one tile streaming K'=8 x passes; bf16 activations = 16 bits
    p = base(bit_serial=1, bits_per_cycle=bpc, dataflow=1)
    assert evaluate(p, gemm_problem(4, 4, 8, activations=act)).compute_cycles == cycles


def test_bit_serial_energy_per_pass():
    p = base(bit_serial=1, bits_per_cycle=2, dataflow=1)
    r = evaluate(p, gemm_problem(4, 4, 8))
    passes = 8  # 16 activation bits, 2 per cycle
    e_pass = T28.mul_energy_pj("int", 2, 16) + T28.add_energy_pj("int", 48)
    assert r.energy_breakdown["mac"] == pytest.approx(128 * passes * e_pass)


def test_operands_wider_than_the_datapath_take_passes():
    # bf16 (16-bit) operands on an 8x8 datapath: 2 x 2 passes per MAC
    r = evaluate(base(act_bits=8, weight_bits=8), gemm_problem(8, 8, 8))
    assert r.compute_cycles == 2 * 2 * (8 * 4) + 8


@pytest.mark.parametrize("mode,wfmt,stream,mac_frac", [
    (0, "bitmap", 8, 1.0),   # none: every issued MAC full energy
    (1, "bitmap", 8, 0.5),   # gate: zeros gated, same cycles
    (2, "bitmap", 4, 0.5),   # skip from a compressed operand: half the stream, half the energy
    (2, "dense", 8, 1.0),    # skip needs a compressed operand: a dense one cannot be skipped
])
def test_gating_vs_skipping(mode, wfmt, stream, mac_frac):
    g = gemm_problem(8, 8, 8, pattern="50%")
    r = evaluate(base(sparsity_mode=mode, weights_format=fmt(wfmt), rows=8, cols=8), g)
    assert r.compute_cycles == max(stream, 8) + 16
    assert r.energy_breakdown["mac"] == pytest.approx(mac_frac * 512 * T28.mac_energy_pj("int", 16, 16))
    assert r.macs_effectual == pytest.approx(256)


def test_metadata_traffic_and_decode_follow_the_storage_format():
    from nmx.sparsity.storage import get_storage

    g = gemm_problem(8, 64, 64, pattern="50%")
    r = evaluate(base(weights_format=fmt("csr")), g)
    bd = get_storage("csr").expected_breakdown((64, 64), 0.5, 16)
    assert r.metadata_bytes == pytest.approx(bd.metadata_bits / 8)
    assert r.dram_bytes == pytest.approx(bd.bits / 8 + 8 * 64 * 2 + 8 * 64 * 2)
    # one adder bit-slice per metadata bit delivered to the array (W goes in once: one m tile)
    assert r.energy_breakdown["decode"] == pytest.approx(bd.metadata_bits * T28.add_energy_pj("int", 8) / 8)


# ---- tiling, loop order, DRAM traffic ------------------------------------------------------------


@pytest.mark.parametrize("order,tiles,expected", [
    ("nkm", (4, 4, 8), 128 + 2 * 128 + 128),          # X refetched per n tile
    ("mnk", (4, 4, 8), 2 * 128 + 128 + 128),          # W refetched per m tile
    ("kmn", (4, 4, 4), 2 * 128 + 128 + 128 + 2 * 64 * 6),  # psums of Y spill once (48-bit accumulators)
])
def test_dram_traffic_from_loop_order(order, tiles, expected):
    p = base(loop_order=LOOP_ORDERS.index(order), tile_m=tiles[0], tile_n=tiles[1], tile_k=tiles[2])
    assert evaluate(p, gemm_problem(8, 8, 8)).dram_bytes == expected


def test_default_tiles_read_each_weight_once_in_decode():
    g = gemm_problem(1, 4096, 4096, weights="int8", activations="int8")
    r = evaluate(base(glb_kb=256), g)
    w_bytes = g.w_bits[fmt("auto")] / 8
    assert w_bytes <= r.dram_bytes <= w_bytes + 4096 * 16 + 4096 * 2


def test_infeasible_tiles_and_uncovering_loops():
    g = gemm_problem(64, 64, 64)
    assert np.isinf(evaluate(base(glb_kb=1, tile_m=64, tile_n=64, tile_k=64), g).cycles)
    with pytest.raises(InputError, match="mapping.loops.n"):
        evaluate(base(tile_n=8, loops_n=2), g)


# ---- vectorization -------------------------------------------------------------------------------


def test_arrays_broadcast_and_match_scalar_evaluation():
    g = gemm_problem(16, 64, 128, pattern="2:4", weights="int8", activations="int8")
    rows = np.array([4, 8, 16])[:, None]
    glb = np.array([1, 16, 256])[None, :]
    r = evaluate(base(rows=rows, glb_kb=glb, **{k: v for k, v in NM24.items()}), g)
    assert r.latency_s.shape == (3, 3)
    for i, rr in enumerate([4, 8, 16]):
        for j, gg in enumerate([1, 16, 256]):
            s = evaluate(base(rows=rr, glb_kb=gg, **NM24), g)
            assert r.latency_s[i, j] == pytest.approx(float(s.latency_s))
            assert r.energy_pj[i, j] == pytest.approx(float(s.energy_pj))
            assert r.area_um2[i, j] == pytest.approx(float(s.area_um2))


def test_grid_is_an_open_mesh():
    p, axes = grid(base(), {"pe_rows": ["4", "8"], "nm": ["none", "2:4"], "dataflow": ["ws", "os", "is"]})
    assert p["rows"].shape == (2, 1, 1) and p["nm_group"].shape == (1, 2, 1) and p["dataflow"].shape == (1, 1, 3)
    r = evaluate(p, gemm_problem(4, 8, 8))
    assert r.cycles.shape == (2, 2, 3)


# ---- properties ----------------------------------------------------------------------------------

designs = st.fixed_dictionaries({
    "rows": st.sampled_from([2, 4, 8, 16]), "cols": st.sampled_from([2, 4, 8, 16]),
    "lanes": st.sampled_from([1, 2, 4]), "dataflow": st.integers(0, 2), "loop_order": st.integers(-1, 5),
    "glb_kb": st.sampled_from([1, 4, 64, 1024]), "glb_bw": st.sampled_from([8.0, 64.0, 512.0]),
    "sparsity_mode": st.integers(0, 2), "weights_format": st.integers(0, len(OPERAND_FORMATS) - 1),
    "overlap": st.integers(0, 1), "bit_serial": st.integers(0, 1),
    "nm": st.sampled_from([(0, []), (4, [2]), (4, [1, 2, 3]), (8, [4])]),
})
dims = st.tuples(st.integers(1, 64), st.integers(1, 64), st.sampled_from([8, 16, 32, 64]))


def _design(d):
    d = dict(d)
    grp, sup = d.pop("nm")
    return base(nm_group=grp, nm_mask=nm_mask(sup), **d)


@settings(max_examples=60, deadline=None)
@given(designs, dims, st.sampled_from([None, "2:4", "1:4", "50%"]))
def test_more_bandwidth_is_never_slower(d, mnk, pattern):
    g = gemm_problem(*mnk, pattern=pattern)
    bw = np.array([0.5, 1.0, 4.0, 16.0, 1e3])
    r = evaluate({**_design(d), "dram_gb_s": bw}, g)
    assert np.all(np.diff(r.cycles) <= 1e-9 * r.cycles[:-1])
    r2 = evaluate({**_design(d), "dram_gb_s": 1.0, "glb_bw": bw * 10}, g)
    assert np.all(np.diff(r2.cycles) <= 1e-9 * r2.cycles[:-1])


@settings(max_examples=60, deadline=None)
@given(designs, dims, st.sampled_from([4, 8]))
def test_more_sparsity_never_more_macs(d, mnk, m):
    m_, n_, k_ = mnk
    p = _design(d)
    # N:M of one group size, from dense to sparsest; then unstructured densities
    pats = [None] + [f"{n}:{m}" for n in range(m - 1, 0, -1)]
    runs = [evaluate(p, gemm_problem(m_, n_, k_, pattern=pat)) for pat in pats]
    runs += [evaluate(p, gemm_problem(m_, n_, k_, pattern=f"{s}%")) for s in (50, 75, 90)]
    for seq in (runs[:len(pats)], [runs[0]] + runs[len(pats):]):
        for a, b in zip(seq, seq[1:], strict=False):
            assert b.macs_executed <= a.macs_executed * (1 + 1e-12)
            assert b.macs_effectual <= a.macs_effectual * (1 + 1e-12)
            assert b.macs_issued <= a.macs_issued * (1 + 1e-12)


# ---- LLM workloads -------------------------------------------------------------------------------


def test_attention_runs_as_gemms_with_gqa_heads_stacked():
    w = llm_workload("smollm2-135m", "decode", batch=2, context=100)
    probs = {p.name: p for p in problems_from_workload(w)}
    qk, pv = probs["self_attn.attention.qk"], probs["self_attn.attention.pv"]
    # 9 query heads on 3 KV heads: m = 1 token x 3 grouped heads; one instance per (layer, batch, KV head)
    assert (qk.m, qk.n, qk.k) == (3, 101, 64) and (pv.m, pv.n, pv.k) == (3, 64, 101)
    assert qk.count == 30 * 2 * 3
    attn = next(op for op in w.ops if op.kind == "attention")
    assert 2 * qk.macs * qk.count == pytest.approx(attn.flops / 2 * attn.count)


def test_workload_sums_its_ops():
    w = llm_workload("smollm2-135m", "decode", context=64, compression=Compression(weights="int8", pattern="2:4"))
    spec = load_accel(EXAMPLES / "nm24_16x16_ws.yaml")
    r = evaluate(spec, w, per_op=True)
    assert r.cycles == pytest.approx(sum(float(o["cycles"]) for o in r.per_op))
    assert r.energy_pj == pytest.approx(sum(float(o["energy_pj"]) for o in r.per_op))
    assert np.isfinite(r.latency_s) and 0 < r.utilization <= 1


def test_examples_load_and_rank_as_expected_on_a_24_gemm():
    g = gemm_problem(64, 4096, 4096, weights="int8", activations="int8", pattern="2:4")
    lat = {f.stem: float(evaluate(load_accel(f), g).compute_cycles) for f in EXAMPLES.glob("*.yaml")
           if not f.name.startswith("workload_")}
    assert set(lat) >= {"dense_16x16_ws", "nm24_16x16_ws", "uspe_16x16_ws", "bitserial_32x32_os"}
    # same array size: 2 lanes at 2:4 -> 4x the dense PE; 4 lanes at 2:4 -> 8x
    assert lat["dense_16x16_ws"] / lat["nm24_16x16_ws"] == pytest.approx(4, rel=0.01)
    assert lat["dense_16x16_ws"] / lat["uspe_16x16_ws"] == pytest.approx(8, rel=0.02)


# ---- the YAML boundary ---------------------------------------------------------------------------


def _dense_yaml():
    return yaml.safe_load((EXAMPLES / "dense_16x16_ws.yaml").read_text())


def test_spec_params_round_trip():
    spec = accel_from_dict(_dense_yaml())
    p = params_from_spec(spec)
    assert p["rows"] == 16 and p["dataflow"] == 0 and p["dram_pj_per_bit"] == T28.dram_energy_pj_per_bit("lpddr5")
    assert spec.clock_ghz == T28.clock_ghz


def _bad(edit):
    d = _dense_yaml()
    edit(d)
    return d


BAD = {
    "memory": lambda d: d["memory"].pop(2),  # missing level
    "memory.1.capacity_kb": lambda d: d["memory"][1].update(capacity_kb=-64),  # negative size
    "sparsity.weights_format": lambda d: d["sparsity"].update(weights_format="zip"),  # unknown format
    "mapping.loops.k": lambda d: d.update(mapping={"tile": {"m": 1, "n": 4096, "k": 256}, "loops": {"k": 4}}),
    "pe_array.rows": lambda d: d["pe_array"].update(rows=0),
    "pe": lambda d: d["pe"].update(kind="nm_fixed"),  # nm kind without nm_group
}




@pytest.mark.parametrize("field", list(BAD))
def test_bad_yaml_is_one_line_naming_the_field_exit_2(field, tmp_path, capsys, monkeypatch):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_bad(BAD[field])))
    code, _, err = _main(["hw", "accel", "--accel", str(path), "--gemm", "1,4096,4096"], capsys, monkeypatch)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"{field}:" in lines[0] and str(path) in lines[0]


def test_bad_yaml_exit_code_through_the_real_entry_point(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_bad(BAD["memory"])))
    proc = subprocess.run([sys.executable, "-m", "nmx", "hw", "accel", "--accel", str(path), "--gemm", "1,64,64"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {path}: memory: missing level of kind 'dram': the model "
                                                "needs one reg, one sram and one dram level (inner to outer)"]


def test_example_workloads_load():
    from nmx.hw.accel_spec import load_workload

    g = load_workload(EXAMPLES / "workload_q_proj_decode.yaml")
    assert (g.m, g.n, g.k, g.pattern_n, g.pattern_m) == (1, 4096, 4096, 2, 4)
    w = load_workload(EXAMPLES / "workload_llama2_decode.yaml")
    assert w.model.name == "llama-2-7b" and w.context == 4096 and w.compression.kv_format == "int8"


def test_workload_yaml():
    g = workload_from_dict({"gemm": {"m": 1, "n": 64, "k": 64, "pattern": "2:4", "weights": "int8"}})
    assert (g.m, g.n, g.k, g.pattern_n, g.pattern_m, g.weight_bits) == (1, 64, 64, 2, 4, 8)
    w = workload_from_dict({"model": "smollm2-135m", "phase": "decode", "context": 16})
    assert w.phase == "decode"
    with pytest.raises(InputError, match="gemm.pattern"):
        workload_from_dict({"gemm": {"m": 1, "n": 64, "k": 64, "pattern": "5:4"}})
    with pytest.raises(InputError, match="exactly one"):
        workload_from_dict({"phase": "decode"})


def test_cli_accel_json(capsys, monkeypatch):
    import json

    code, out, err = _main(["hw", "accel", "--accel", str(EXAMPLES / "uspe_16x16_ws.yaml"), "--gemm", "1,256,256",
                            "--weights", "int8", "--activations", "int8", "--pattern", "1:4", "--json"],
                           capsys, monkeypatch)
    assert code == 0, err
    out = json.loads(out)
    assert out["feasible"] and out["latency_s"] > 0 and set(out["energy_breakdown_pj"]) >= {"mac", "dram", "mux"}


def test_cli_tech_json(capsys, monkeypatch):
    import json

    code, out, _ = _main(["hw", "tech", "--json"], capsys, monkeypatch)
    assert code == 0 and [r["node_nm"] for r in json.loads(out)] == [45, 28, 16, 7]
