"""Near-memory targets: a GPU whose DRAM has bank-level compute units (HBM-PIM, GDDR6-AiM).

    from nmx.hw.targets import get_target
    t = get_target("h100-hbm-pim")          # a PIM preset (src/nmx/hw/data/pim_*.yaml) or a `kind: pim` file
    c = t.cost(llm_workload("llama-2-7b", "decode", batch=1, context=4096))
    c.latency_s, c.extra["placement"], c.extra["memory_energy_pj"], c.extra["gpu_only_latency_s"]
    pim_gain(t, workload)                   # GPU alone vs GPU + PIM, time and memory-side energy

The machine: `devices` DRAM devices (HBM stacks, GDDR6 chips) behind the host GPU, each with
`units_per_device` compute units next to its banks. The units read their banks at
`internal_bw_multiple` x the device's external bus (all banks at once), compute `device_tflops`
per device, and pay `internal_pj_per_bit` per bit read inside the bank (no I/O, no TSV) and
`unit_pj_per_flop` per FLOP. The host GPU (an `nmx.hw.gpu` preset) runs everything else at its own
roofline (`nmx.hw.gpu.op_latency`).

What runs where (decode only; a prefill is compute-bound and stays on the GPU): a linear layer
with at most `max_rows` rows (a GEMV: M = batch) and the decode attention are priced on both and run
where they are faster (`offload`). On the PIM units:

    GEMM       launch + max(weight bytes / internal bandwidth,
                            FLOPs / PIM FLOP rate,
                            (input vector + output) / host bus bandwidth)
    attention  QK^T pass + softmax on the host (scores out, probabilities back in) + PV pass, each
               pass max(K or V bytes / internal bandwidth, its FLOPs / PIM rate, its bus bytes / bus)

Weights sit in the banks in their stored format, so N:M values + index and 4-bit elements shrink
the bytes read inside the banks. The published units compute in FP16/BF16: a 4-bit weight is
widened in the unit at the 16-bit rate (FLOPs do not shrink) and the zeros of 2:4 are multiplied
unless `sparse_skip` (an index-driven unit, not a published one: estimated) skips them;
`scales_with_bits` (also not published) makes the unit's rate scale with 16 / weight bits.

Energy: the GPU has no energy model here (`Cost.energy_pj` is None, as for every GPU target);
`extra["memory_energy_pj"]` is the memory side: bits over the external bus x external_pj_per_bit,
bits read inside the banks x internal_pj_per_bit, and the units' FLOPs x unit_pj_per_flop; the same
for the GPU alone (`gpu_only_memory_energy_pj`: every byte over the bus).

Presets cite their figures in their YAML files (src/nmx/hw/data/pim_*.yaml); every number marked
`estimated` there is not from a publication.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Optional

from pydantic import Field, ValidationError

from nmx.errors import InputError
from nmx.hw.cost import Cost, OpCost
from nmx.validation import Strict

OFFLOADABLE = ("gemm", "attention")
BF16 = 2


@dataclass(frozen=True)
class PimSpec:
    """A GPU host with PIM-capable DRAM (see the module doc). Bandwidths in bytes/s, energies in pJ."""

    name: str
    host: str  # a GPU preset of nmx.hw.gpu
    devices: int
    units_per_device: int
    device_tflops: float
    device_external_gb_s: float
    internal_bw_multiple: float
    internal_pj_per_bit: float
    external_pj_per_bit: float
    unit_pj_per_flop: float
    unit_clock_mhz: float = 0.0  # informational
    max_rows: int = 8
    offload: tuple[str, ...] = OFFLOADABLE
    sparse_skip: bool = False
    scales_with_bits: bool = False
    launch_us: Optional[float] = None  # per PIM pass; default: the host's kernel launch
    source: str = ""
    citations: tuple[tuple[str, str], ...] = ()
    estimated: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in ("devices", "units_per_device", "max_rows"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"PIM target {self.name!r}: {f} must be an integer >= 1 (a PIM target needs "
                                 f"compute units in its banks), got {v!r}")
        for f in ("device_tflops", "device_external_gb_s", "internal_bw_multiple"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise InputError(f"PIM target {self.name!r}: {f} must be a number > 0, got {v!r}")
        for f in ("internal_pj_per_bit", "external_pj_per_bit", "unit_pj_per_flop"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                raise InputError(f"PIM target {self.name!r}: {f} must be a number >= 0, got {v!r}")
        bad = [o for o in self.offload if o not in OFFLOADABLE]
        if bad:
            raise InputError(f"PIM target {self.name!r}: offload takes {', '.join(OFFLOADABLE)}, got {bad}")
        from nmx.hw.gpu import PRESETS

        if self.host not in PRESETS:
            raise InputError(f"PIM target {self.name!r}: host must be a GPU preset ({', '.join(PRESETS)}), "
                             f"got {self.host!r}")

    @property
    def internal_bytes_per_s(self) -> float:
        return self.devices * self.device_external_gb_s * 1e9 * self.internal_bw_multiple

    @property
    def flops_per_s(self) -> float:
        return self.devices * self.device_tflops * 1e12

    @property
    def units(self) -> int:
        return self.devices * self.units_per_device

    @property
    def unit_bw_bytes_per_s(self) -> float:
        return self.internal_bytes_per_s / self.units

    @property
    def unit_flops(self) -> float:
        return self.flops_per_s / self.units


# ---------------------------------------------------------------------------------------------
# pricing


def _weight_bits(fmt: str | None) -> float:
    if fmt is None:
        return 16.0
    from nmx import formats

    return float(formats.get(fmt).code_bits)


def pim_gemm(spec: PimSpec, op: Any, host: Any) -> dict[str, float]:
    """One instance of a linear layer on the PIM units: latency, bytes inside / over the bus, FLOPs."""
    launch = (spec.launch_us * 1e-6) if spec.launch_us is not None else host.launch_s
    internal = float(op.weight_bytes)
    flops = 2.0 * op.m * op.n * op.k * (op.weight_density if spec.sparse_skip else 1.0)
    rate = spec.flops_per_s * (16.0 / min(16.0, _weight_bits(op.weight_format)) if spec.scales_with_bits else 1.0)
    bus = float(op.m * op.k * BF16 + op.m * op.n * BF16)  # the input vector in, the outputs back
    parts = {"memory": internal / spec.internal_bytes_per_s, "compute": flops / rate,
             "bus": bus / host.bandwidth_bytes_per_s}
    bound = max(parts, key=parts.get)
    return {"latency_s": launch + parts[bound], "bound": f"pim-{bound}", "internal_bytes": internal, "bus_bytes": bus,
            "flops": flops}


def pim_attention(spec: PimSpec, op: Any, host: Any) -> dict[str, float]:
    """One instance of decode attention on the PIM units: QK^T pass, softmax on the host, PV pass."""
    launch = (spec.launch_us * 1e-6) if spec.launch_us is not None else host.launch_s
    kv = float(op.kv_bytes_read)
    scores = float(op.batch * op.heads_q * op.kv_len * BF16)
    q_bytes = float(op.batch * op.heads_q * op.head_dim * BF16)
    new_kv = float(op.kv_bytes_written) + 2.0 * op.batch * op.heads_kv * op.head_dim * BF16
    half = op.flops / 2
    qk = max(kv / 2 / spec.internal_bytes_per_s, half / spec.flops_per_s,
             (q_bytes + scores + new_kv) / host.bandwidth_bytes_per_s)
    softmax = host.memory_s(2 * scores, "elementwise") + host.launch_s
    pv = max(kv / 2 / spec.internal_bytes_per_s, half / spec.flops_per_s,
             (scores + q_bytes) / host.bandwidth_bytes_per_s)
    parts = {"memory": kv / spec.internal_bytes_per_s, "compute": op.flops / spec.flops_per_s,
             "bus": (2 * q_bytes + 2 * scores + new_kv) / host.bandwidth_bytes_per_s}
    return {"latency_s": 2 * launch + qk + softmax + pv, "bound": f"pim-{max(parts, key=parts.get)}",
            "internal_bytes": kv, "bus_bytes": 2 * q_bytes + 4 * scores + new_kv, "flops": float(op.flops)}


def _offloadable(spec: PimSpec, op: Any, phase: str) -> bool:
    if phase != "decode" or op.kind not in spec.offload:
        return False
    if op.kind == "gemm":
        return op.m <= spec.max_rows
    return op.q_len == 1 and op.kv_bytes_read > 0


@dataclass(frozen=True)
class PimModel:
    """The target: `cost(workload) -> Cost` with each op placed where it runs faster."""

    spec: PimSpec
    impl: str = "pytorch"
    source: str = "preset"
    kind: ClassVar[str] = "pim"
    phases: ClassVar[tuple[str, ...]] = ("prefill", "decode")

    @property
    def name(self) -> str:
        return self.spec.name

    def check_phase(self, phase: str) -> None:
        if phase not in self.phases:
            raise InputError(f"{self.name}: cannot price a {phase!r} step; it prices {', '.join(self.phases)}")

    @property
    def host(self) -> Any:
        from nmx.hw.gpu import PRESETS

        return PRESETS[self.spec.host]

    def cost(self, workload: Any) -> Cost:
        from nmx.hw.gpu import op_latency

        if getattr(workload, "phase", None) is None or not hasattr(workload, "ops"):
            raise InputError(f"{self.name}: expected an nmx.hw.workload.Workload, got {type(workload).__name__}")
        self.check_phase(workload.phase)
        s, host = self.spec, self.host
        ext = s.external_pj_per_bit * 8
        rows, placement = [], {}
        total = gpu_total = 0.0
        bus_bytes = internal_bytes = pim_flops = gpu_bytes = 0.0
        by_bound: dict[str, float] = {}
        for op in workload.ops:
            g = op_latency(host, op, self.impl)
            g_lat = g["latency_s"] * op.count
            gpu_total += g_lat
            gpu_bytes += op.bytes * op.count
            p = None
            if _offloadable(s, op, workload.phase):
                p = pim_gemm(s, op, host) if op.kind == "gemm" else pim_attention(s, op, host)
            if p is not None and p["latency_s"] * op.count < g_lat:
                lat, bound, moved = p["latency_s"] * op.count, p["bound"], p["bus_bytes"] * op.count
                internal_bytes += p["internal_bytes"] * op.count
                pim_flops += p["flops"] * op.count
                e = moved * ext + p["internal_bytes"] * op.count * s.internal_pj_per_bit * 8 + \
                    p["flops"] * op.count * s.unit_pj_per_flop
                placement[op.name] = "pim"
            else:
                lat, bound, moved = g_lat, g["bound"], op.bytes * op.count
                e = moved * ext
                placement[op.name] = "gpu"
            total += lat
            bus_bytes += moved
            by_bound[bound] = by_bound.get(bound, 0.0) + lat
            rows.append(OpCost(op.name, op.kind, op.count, lat, None, moved, bound))
            placement[op.name + ":memory_energy_pj"] = e
        mem_energy = sum(v for k, v in placement.items() if k.endswith(":memory_energy_pj"))
        place = {k: v for k, v in placement.items() if not k.endswith(":memory_energy_pj")}
        op_energy = {k.removesuffix(":memory_energy_pj"): v for k, v in placement.items()
                     if k.endswith(":memory_energy_pj")}
        return Cost(self.name, self.kind, total, None, bus_bytes, max(by_bound, key=by_bound.get), tuple(rows),
                    phase=workload.phase, batch=workload.batch, tokens=workload.tokens, context=workload.context,
                    kv_cache_bytes=workload.kv_cache_bytes,
                    extra={"host": host.name, "impl": self.impl, "placement": place,
                           "memory_energy_pj": mem_energy, "memory_energy_by_op_pj": op_energy,
                           "pim_internal_bytes": internal_bytes, "pim_flops": pim_flops,
                           "gpu_only_latency_s": gpu_total, "gpu_only_bytes": gpu_bytes,
                           "gpu_only_memory_energy_pj": gpu_bytes * ext, "latency_by_bound_s": by_bound})

    def describe(self) -> dict[str, Any]:
        s = self.spec
        return {"name": self.name, "kind": self.kind, "source": self.source, "host": s.host, "devices": s.devices,
                "units": s.units, "pim_tflops": s.flops_per_s / 1e12,
                "internal_tb_s": s.internal_bytes_per_s / 1e12, "internal_bw_multiple": s.internal_bw_multiple,
                "host_tb_s": self.host.bandwidth_bytes_per_s / 1e12, "unit_gb_s": s.unit_bw_bytes_per_s / 1e9,
                "unit_gflops": s.unit_flops / 1e9, "sparse_skip": s.sparse_skip,
                "scales_with_bits": s.scales_with_bits, "estimated": list(s.estimated)}


def pim_gain(target: Any, workload: Any) -> dict[str, Any]:
    """GPU alone vs GPU + PIM on one step: latency, speedup, memory-side energy, placement."""
    t = target if isinstance(target, PimModel) else get_pim(target)
    c = t.cost(workload)
    x = c.extra
    return {"target": t.name, "host": x["host"], "compression": workload.compression.describe(),
            "phase": workload.phase, "batch": workload.batch, "context": workload.context,
            "gpu_latency_s": x["gpu_only_latency_s"], "pim_latency_s": c.latency_s,
            "speedup": x["gpu_only_latency_s"] / c.latency_s,
            "gpu_memory_energy_pj": x["gpu_only_memory_energy_pj"], "pim_memory_energy_pj": x["memory_energy_pj"],
            "energy_ratio": x["memory_energy_pj"] / x["gpu_only_memory_energy_pj"],
            "on_pim": sorted(k for k, v in x["placement"].items() if v == "pim"), "bound": c.bound,
            "weight_bytes": workload.total("weight_bytes"), "kv_cache_bytes": workload.kv_cache_bytes}


# ---------------------------------------------------------------------------------------------
# YAML and presets


class _Cited(Strict):
    value: float = Field(gt=0)
    source: str = Field(min_length=1)
    estimated: bool = False


class PimYaml(Strict):
    """`kind: pim`. Every figure is `{value, source, estimated}`: what it is and where it comes from."""

    kind: str = Field(pattern="^pim$")
    name: str = Field(min_length=1)
    host: str
    devices: int = Field(ge=1)
    units_per_device: _Cited
    device_tflops: _Cited
    device_external_gb_s: _Cited
    internal_bw_multiple: _Cited
    internal_pj_per_bit: _Cited
    external_pj_per_bit: _Cited
    unit_pj_per_flop: _Cited
    unit_clock_mhz: Optional[_Cited] = None
    max_rows: int = Field(8, ge=1)
    offload: list[str] = Field(default_factory=lambda: list(OFFLOADABLE))
    sparse_skip: bool = False
    scales_with_bits: bool = False
    launch_us: Optional[float] = Field(None, ge=0)
    note: str = ""


CITED = ("units_per_device", "device_tflops", "device_external_gb_s", "internal_bw_multiple", "internal_pj_per_bit",
         "external_pj_per_bit", "unit_pj_per_flop", "unit_clock_mhz")


def pim_from_dict(data: dict[str, Any], where: str = "PIM target") -> PimSpec:
    from nmx.hw.accel_spec import _describe

    if isinstance(data, dict) and isinstance(data.get("units_per_device"), dict) and \
            data["units_per_device"].get("value") == 0:
        raise InputError(f"{where}: units_per_device: a PIM target needs at least one compute unit per device "
                         "(zero banks with compute is plain DRAM)")
    try:
        y = PimYaml.model_validate(data)
    except ValidationError as err:
        raise InputError(_describe(err, where)) from None
    units = y.units_per_device.value
    if units != int(units):
        raise InputError(f"{where}: units_per_device: must be a whole number, got {units}")
    cites = tuple((f, getattr(y, f).source) for f in CITED if getattr(y, f) is not None)
    est = tuple(f for f in CITED if getattr(y, f) is not None and getattr(y, f).estimated)
    try:
        return PimSpec(y.name, y.host, y.devices, int(units), y.device_tflops.value, y.device_external_gb_s.value,
                       y.internal_bw_multiple.value, y.internal_pj_per_bit.value, y.external_pj_per_bit.value,
                       y.unit_pj_per_flop.value, y.unit_clock_mhz.value if y.unit_clock_mhz else 0.0, y.max_rows,
                       tuple(y.offload), y.sparse_skip, y.scales_with_bits, y.launch_us, where, cites, est)
    except InputError as err:
        raise InputError(f"{where}: {err}") from None


def load_pim(path: str | Path) -> PimSpec:
    from nmx.hw.accel_spec import _read_yaml

    path = Path(path).expanduser()
    return pim_from_dict(_read_yaml(path, "PIM target YAML"), str(path))


_PRESETS: dict[str, Path] = {}


def pim_presets() -> dict[str, Path]:
    """Packaged PIM targets (src/nmx/hw/data/pim_*.yaml), by the name in the file."""
    if not _PRESETS:
        folder = Path(str(resources.files("nmx.hw") / "data"))
        for f in sorted(folder.glob("pim_*.yaml")):
            _PRESETS[load_pim(f).name] = f
    return _PRESETS


def get_pim(name: Any, impl: str = "pytorch") -> PimModel:
    """A PIM target from a preset name, a `kind: pim` YAML file, a PimSpec or a PimModel."""
    if isinstance(name, PimModel):
        return name
    if isinstance(name, PimSpec):
        return PimModel(name, impl, name.source or "python")
    key = str(name).strip()
    presets = pim_presets()
    if key in presets:
        return PimModel(load_pim(presets[key]), impl, "preset")
    p = Path(key).expanduser()
    if p.suffix.lower() in (".yaml", ".yml") or p.exists():
        return PimModel(load_pim(p), impl, str(p))
    raise InputError(f"unknown PIM target {key!r}: use one of {', '.join(presets)} or a `kind: pim` YAML file")


__all__ = ["PimSpec", "PimModel", "pim_gemm", "pim_attention", "pim_gain", "pim_from_dict", "load_pim",
           "pim_presets", "get_pim"]
