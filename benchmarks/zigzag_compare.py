"""nmx's accelerator model side by side with ZigZag (zigzag-dse) on the same GEMM layers.

    /work/venv/bin/python benchmarks/zigzag_compare.py [--zigzag-python /work/venv-zigzag/bin/python]

ZigZag lives in its own venv (`python -m venv /work/venv-zigzag && /work/venv-zigzag/bin/pip install
zigzag-dse`); this script writes ZigZag's three inputs (hardware, mapping, workload YAML) for an
architecture equivalent to examples/hw/dense_16x16_ws.yaml and runs ZigZag in that venv.

The two models get the *same* unit energies, all from nmx.hw.tech at the design's node (28 nm):
MAC energy (int8 x int8, 32-bit accumulation), register pJ/bit, SRAM pJ/bit of the 256 KiB buffer
times its 512-bit word, DRAM pJ/bit (LPDDR5) times the DRAM word -- so differences come from the
models (mapping search, data reuse, stalls), not from the technology numbers. Architecture: 16x16
int8 PEs, weight stationary (spatial: output channels x reduction), one 8-bit weight register and
one 32-bit accumulator per PE, a 256 KiB shared buffer (64 B/cycle), LPDDR5 at 51.2 GB/s and
0.7 GHz (73 B/cycle). ZigZag searches the temporal mapping (LOMA) and reports its best-latency
mapping; nmx uses its closed-form default tiling.

Prints one JSON object: per layer, each tool's latency (cycles), energy (pJ) and seconds per design
point (ZigZag: one `get_hardware_performance_zigzag` call, including its mapping search; nmx: one
scalar `evaluate` call, and amortized over a 10^4-point vectorized sweep).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from nmx.hw.accel import evaluate, gemm_problem, grid
from nmx.hw.accel_spec import load_accel
from nmx.hw.tech import get_tech

HERE = Path(__file__).resolve().parent
SPEC = HERE.parent / "examples" / "hw" / "dense_16x16_ws.yaml"
LAYERS = [("decode_q_proj", 1, 4096, 4096), ("prefill64_q_proj", 64, 4096, 4096), ("prefill256_mlp", 256, 1024, 1024)]

RUNNER = r"""
import json, logging, sys, time, tempfile
logging.disable(logging.CRITICAL)
from zigzag.api import get_hardware_performance_zigzag
hw, mp, wl = sys.argv[1:4]
t0 = time.perf_counter()
out = get_hardware_performance_zigzag(workload=wl, accelerator=hw, mapping=mp, opt="latency",
                                      dump_folder=tempfile.mkdtemp(), loma_show_progress_bar=False)
dt = time.perf_counter() - t0
energy, latency = out[0], out[1]
cmes = out[-1]
cme = cmes[0][0] if cmes else None
detail = {}
for key, attr in (("mac_energy_pj", "mac_energy"), ("mem_energy_pj", "mem_energy"), ("ideal_cycles", "ideal_cycle"),
                  ("stall_cycles", "stall_slack_comb"), ("mac_utilization", "mac_utilization1")):
    try:
        v = getattr(cme, attr)
        detail[key] = float(v if not isinstance(v, dict) else sum(v.values()))
    except Exception:
        pass
print(json.dumps({"energy_pj": float(energy), "latency_cycles": float(latency), "seconds": dt, **detail}))
"""


def zigzag_inputs(folder: Path, m: int, n: int, k: int) -> tuple[Path, Path, Path]:
    spec = load_accel(SPEC)
    t = get_tech(spec.tech_nm)
    reg = t.reg_energy_pj_per_bit()
    sram_bit = t.sram_read_energy_pj_per_bit(spec.glb_kb * 1024)
    glb_word = int(spec.glb_bw_bytes_per_cycle * 8)
    dram_word = int(round(spec.dram_gb_s / spec.clock_ghz * 8))
    mac = t.mac_energy_pj("int", 8, 8)

    def port(name, kind, bw, alloc):
        return {"name": name, "type": kind, "bandwidth_min": bw, "bandwidth_max": bw, "allocation": alloc}

    hw = {
        "name": "nmx_dense_16x16_ws",
        "memories": {
            "rf_w": {"size": 8, "r_cost": 8 * reg, "w_cost": 8 * reg, "area": 0, "latency": 1, "operands": ["I2"],
                     "ports": [port("r_port_1", "read", 8, ["I2, tl"]), port("w_port_1", "write", 8, ["I2, fh"])],
                     "served_dimensions": []},
            "rf_o": {"size": 32, "r_cost": 32 * reg, "w_cost": 32 * reg, "area": 0, "latency": 1, "operands": ["O"],
                     "ports": [port("r_port_1", "read", 32, ["O, tl"]), port("r_port_2", "read", 32, ["O, th"]),
                               port("w_port_1", "write", 32, ["O, fh"]), port("w_port_2", "write", 32, ["O, fl"])],
                     "served_dimensions": []},
            "glb": {"size": int(spec.glb_kb * 1024 * 8), "r_cost": glb_word * sram_bit, "w_cost": glb_word * sram_bit,
                    "area": 0, "latency": 1, "operands": ["I1", "I2", "O"],
                    "ports": [port("r_port_1", "read", glb_word, ["I1, tl", "I2, tl", "O, tl", "O, th"]),
                              port("w_port_1", "write", glb_word, ["I1, fh", "I2, fh", "O, fh", "O, fl"])],
                    "served_dimensions": ["D1", "D2"]},
            "dram": {"size": 10_000_000_000, "r_cost": dram_word * spec.dram_pj_per_bit,
                     "w_cost": dram_word * spec.dram_pj_per_bit, "area": 0, "latency": 1,
                     "operands": ["I1", "I2", "O"],
                     "ports": [port("rw_port_1", "read_write", dram_word,
                                    ["I1, fh", "I1, tl", "I2, fh", "I2, tl", "O, fh", "O, tl", "O, fl", "O, th"])],
                     "served_dimensions": ["D1", "D2"]},
        },
        "operational_array": {"input_precision": [8, 8], "unit_energy": mac, "unit_area": 1,
                              "dimensions": ["D1", "D2"], "sizes": [spec.cols, spec.rows]},
    }
    mapping = [{"name": "default", "spatial_mapping": {"D1": [f"K, {spec.cols}"], "D2": [f"C, {spec.rows}"]},
                "memory_operand_links": {"O": "O", "W": "I2", "I": "I1"}}]
    workload = [{"id": 0, "name": "gemm", "operator_type": "Gemm", "equation": "O[b][k]+=W[k][c]*I[b][c]",
                 "loop_dims": ["B", "K", "C"], "loop_sizes": [m, n, k],
                 "operand_precision": {"I": 8, "W": 8, "O": 32, "O_final": 16}, "operand_source": {"I": 0}}]
    paths = folder / "hw.yaml", folder / "mapping.yaml", folder / "workload.yaml"
    for p, obj in zip(paths, (hw, mapping, workload), strict=True):
        p.write_text(yaml.safe_dump(obj, sort_keys=False))
    return paths


def run_zigzag(python: str, m: int, n: int, k: int, timeout: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        hw, mp, wl = zigzag_inputs(Path(d), m, n, k)
        try:
            proc = subprocess.run([python, "-c", RUNNER, str(hw), str(mp), str(wl)], capture_output=True, text=True,
                                  timeout=timeout, cwd=d)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s"}
        except OSError as err:
            return {"error": f"cannot run {python}: {err}"}
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:400]}
        return json.loads(proc.stdout.strip().splitlines()[-1])


def run_nmx(m: int, n: int, k: int) -> dict:
    spec = load_accel(SPEC)
    g = gemm_problem(m, n, k, weights="int8", activations="int8")
    t0 = time.perf_counter()
    r = evaluate(spec, g)
    dt = time.perf_counter() - t0
    p, axes = grid(spec.params(), {"pe_rows": [str(x) for x in (4, 8, 16, 32, 64)],
                                   "pe_cols": [str(x) for x in (4, 8, 16, 32, 64)],
                                   "glb_kb": [str(x) for x in (32, 64, 128, 256, 512, 1024, 2048, 4096)],
                                   "dram_gb_s": [str(x) for x in (12.8, 25.6, 51.2, 102.4, 204.8)],
                                   "dataflow": ["ws", "os", "is", "ws", "os", "is", "ws", "os", "is", "ws"]})
    npts = int(np.prod([len(v) for _, v in axes]))
    t1 = time.perf_counter()
    evaluate(p, g)
    dt_vec = (time.perf_counter() - t1) / npts
    pt = r.point()
    return {"energy_pj": pt["energy_pj"], "latency_cycles": pt["cycles"], "seconds": dt,
            "seconds_per_point_vectorized": dt_vec, "vectorized_points": npts,
            "compute_cycles": pt["compute_cycles"], "glb_cycles": pt["glb_cycles"], "dram_cycles": pt["dram_cycles"],
            "utilization": pt["utilization"], "energy_breakdown_pj": pt["energy_breakdown_pj"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zigzag-python", default=os.environ.get("ZIGZAG_PYTHON", "/work/venv-zigzag/bin/python"))
    ap.add_argument("--timeout", type=int, default=900)
    args = ap.parse_args()
    out = {"architecture": str(SPEC.relative_to(HERE.parent)), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "layers": []}
    try:
        code = "import importlib.metadata as m; print(m.version('zigzag-dse'))"
        ver = subprocess.run([args.zigzag_python, "-c", code],
                             capture_output=True, text=True, timeout=120)
        out["zigzag_version"] = ver.stdout.strip() or ver.stderr.strip().splitlines()[-1]
    except (OSError, subprocess.TimeoutExpired) as err:
        out["zigzag_version"] = f"unavailable: {err}"
    for name, m, n, k in LAYERS:
        ours = run_nmx(m, n, k)
        zz = run_zigzag(args.zigzag_python, m, n, k, args.timeout)
        row = {"layer": name, "m": m, "n": n, "k": k, "macs": m * n * k, "nmx": ours, "zigzag": zz}
        if "energy_pj" in zz:
            row["ratio_nmx_over_zigzag"] = {"energy": ours["energy_pj"] / zz["energy_pj"],
                                            "latency": ours["latency_cycles"] / zz["latency_cycles"],
                                            "seconds_per_point": ours["seconds"] / zz["seconds"]}
        out["layers"].append(row)
        print(f"{name}: done", file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
