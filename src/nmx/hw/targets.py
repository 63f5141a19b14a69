"""Hardware targets behind one protocol, and the registry that names them.

    from nmx.hw.targets import get_target
    gpu = get_target("h200")                          # a GPU preset (nmx.hw.gpu), impl "pytorch"
    acc = get_target("nm24-16x16-ws")                 # a packaged accelerator design (nmx.hw.accel)
    mine = get_target("examples/hardware/gpu_h100_pcie.yaml")   # any target described in YAML
    cost = gpu.cost(workload)                         # -> nmx.hw.cost.Cost, whatever the target

Every target has a `name`, a `kind` ("gpu", "accelerator", "timeloop"), the LLM `phases` it can
price, `cost(workload) -> Cost` and `describe()`. The math stays where it was: a GPU is priced by
`nmx.hw.gpu.llm_cost`, an accelerator by `nmx.hw.accel.evaluate`, a Timeloop case by
`nmx.hw.timeloop.evaluate`; the classes here only adapt their answers.

A YAML target file says what it is with `kind:`:

    kind: gpu                # a GPU without editing the package (see examples/hardware/)
    name: h100-pcie
    bandwidth_gb_s: 2000
    peak_tflops: {bf16: 756, fp16: 756, fp8: 1513, int8: 1513, tf32: 378}
    sparse_24: true
    sms: 114
    l2_mb: 50
    efficiencies_from: h200  # whose fitted efficiencies and fixed costs to use (default h200)
    bw_eff: {gemm: 0.72}     # optional overrides: bw_eff, flops_eff, launch_us, kernel_gap_us, ...

    kind: accelerator        # (or no `kind` and a `pe_array`): the accelerator YAML of nmx.hw.accel_spec

    kind: timeloop           # a Timeloop/Sparseloop v0.3 case: prices the one layer it describes
    name: eyeriss-v2-L07
    clock_ghz: 0.2
    arch: ${NMX_DATA_DIR}/hw/sparseloop-eyeriss-v2/arch/arch.yaml    # relative paths: to this file
    sparse_opts: ...
    workload: ...
    mapping: ...             # ert / art: optional (default: beside arch)

Errors are one line naming the file and the field (`gpu.yaml: bandwidth_gb_s: Input should be
greater than 0`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Protocol, runtime_checkable

from pydantic import Field, ValidationError, field_validator, model_validator

from nmx.errors import InputError, did_you_mean
from nmx.hw.cost import Cost, OpCost
from nmx.validation import Strict

#: the preset `nmx run` prices when a recipe has no `hardware:` section: the one GPU whose
#: efficiencies were fitted on measured kernels (nmx.hw.gpu)
DEFAULT_TARGET = "h200"
LLM_PHASES = ("prefill", "decode")
#: what GPUs and accelerator designs price: an LLM step, or a training step (nmx.hw.training)
STEP_PHASES = LLM_PHASES + ("train",)
KINDS = ("gpu", "accelerator", "timeloop")


@runtime_checkable
class Target(Protocol):
    name: str
    kind: str
    phases: tuple[str, ...]

    def cost(self, workload: Any) -> Cost: ...

    def describe(self) -> dict[str, Any]: ...


def _llm_step(target: Any, workload: Any) -> Any:
    """`workload` as an LLM step this target prices, else one InputError line."""
    phase = getattr(workload, "phase", None)
    if phase is None or not hasattr(workload, "ops"):
        raise InputError(f"{target.name}: expected an nmx.hw.workload.Workload (nmx.hw.workload.llm_workload), got "
                         f"{type(workload).__name__}")
    target.check_phase(phase)
    return workload


def _step_fields(workload: Any) -> dict[str, Any]:
    return {"phase": workload.phase, "batch": workload.batch, "tokens": workload.tokens,
            "context": workload.context, "kv_cache_bytes": workload.kv_cache_bytes,
            "notes": () if workload.kv_exact else (
                "KV bytes estimated: the eviction method scores tokens, so which slots stay is data-dependent "
                "(nmx.hw.kvcache)",)}


# ---------------------------------------------------------------- the three kinds


@dataclass(frozen=True)
class GpuModel:
    """A GPU target (`nmx.hw.gpu.GpuTarget`) priced by `llm_cost` with kernel implementation `impl`
    (pytorch: what PyTorch runs today; ideal: cached plans, fused dequantization; nmx: nmx's kernels
    as measured). No energy model: `energy_pj` is None."""

    gpu: Any  # nmx.hw.gpu.GpuTarget
    impl: str = "pytorch"
    source: str = "preset"
    kind: ClassVar[str] = "gpu"
    phases: ClassVar[tuple[str, ...]] = STEP_PHASES

    def __post_init__(self) -> None:
        from nmx.hw.gpu import IMPLS

        if self.impl not in IMPLS:
            raise InputError(f"GPU implementation (gpu_impl) must be one of {', '.join(IMPLS)}, got {self.impl!r}")
        if self.impl == "nmx" and not self.gpu.decode_s_per_weight:
            raise InputError(f"gpu_impl nmx: {self.gpu.name} has no measurement of nmx's kernels (they are "
                             "calibrated on h200 only); use pytorch or ideal")

    @property
    def name(self) -> str:
        return self.gpu.name

    def check_phase(self, phase: str) -> None:
        _check_llm_phase(self, phase)

    def cost(self, workload: Any) -> Cost:
        from nmx.hw.gpu import llm_cost

        w = _llm_step(self, workload)
        d = llm_cost(self.gpu, w, self.impl)
        ops = tuple(OpCost(r["name"], r["kind"], r["count"], r["latency_s"], None, r["bytes"], r["bound"])
                    for r in d["ops"])
        return Cost(self.name, self.kind, d["latency_s"], None, d["bytes_read"] + d["bytes_written"], d["bound"], ops,
                    extra={"impl": self.impl, "calibration": self.gpu.calibration,
                           "latency_by_bound_s": d["latency_by_bound_s"]}, **_step_fields(w))

    def describe(self) -> dict[str, Any]:
        g = self.gpu
        return {"name": self.name, "kind": self.kind, "source": self.source, "impl": self.impl,
                "bandwidth_bytes_per_s": g.bandwidth_bytes_per_s, "peak_flops": dict(g.peak_flops),
                "sparse_24": g.sparse_24, "calibration": g.calibration, "datasheet": g.source}


@dataclass(frozen=True)
class AccelModel:
    """An accelerator design (`nmx.hw.accel_spec.AccelSpec`) priced by `nmx.hw.accel.evaluate`."""

    spec: Any  # nmx.hw.accel_spec.AccelSpec
    source: str = "preset"
    kind: ClassVar[str] = "accelerator"
    phases: ClassVar[tuple[str, ...]] = STEP_PHASES

    @property
    def name(self) -> str:
        return self.spec.name

    def check_phase(self, phase: str) -> None:
        _check_llm_phase(self, phase)

    def cost(self, workload: Any) -> Cost:
        from nmx.hw.accel import evaluate

        w = _llm_step(self, workload)
        r = evaluate(self.spec, w, per_op=True)
        p = r.point()
        if not p["feasible"] or not math.isfinite(p["latency_s"]):
            raise InputError(f"{self.name}: no buffer tiling fits the step ({w.phase}, batch {w.batch}); give the "
                             "design a larger global buffer or an explicit mapping.tile")
        hz = self.spec.clock_ghz * 1e9
        ops = tuple(OpCost(row["name"], row["kind"], row["count"], float(row["cycles"]) / hz,
                           float(row["energy_pj"]), float(row["dram_bytes"]),
                           _accel_bound(row["compute_cycles"], row["glb_cycles"], row["dram_cycles"]))
                    for row in r.per_op)
        bound = _accel_bound(p["compute_cycles"], p["glb_cycles"], p["dram_cycles"])
        return Cost(self.name, self.kind, p["latency_s"], p["energy_pj"], p["dram_bytes"], bound, ops,
                    extra={"area_mm2": p["area_um2"] * 1e-6, "utilization": p["utilization"],
                           "energy_breakdown_pj": p["energy_breakdown_pj"], "cycles": p["cycles"]},
                    **_step_fields(w))

    def describe(self) -> dict[str, Any]:
        s = self.spec
        return {"name": self.name, "kind": self.kind, "source": self.source, "tech_nm": s.tech_nm,
                "clock_ghz": s.clock_ghz, "pe_array": [s.rows, s.cols], "pe_kind": s.pe_kind,
                "dram_gb_s": s.dram_gb_s, "glb_kb": s.glb_kb, "dataflow": s.dataflow}


def _accel_bound(compute: Any, glb: Any, dram: Any) -> str:
    parts = {"compute": float(compute), "buffer": float(glb), "memory": float(dram)}
    return max(parts, key=parts.get)


@dataclass(frozen=True)
class TimeloopModel:
    """A Timeloop/Sparseloop case (`nmx.hw.timeloop_spec.Case`): one layer with its own mapping.
    It prices only what it describes: `cost()` (or `cost(None)`) evaluates the case; an LLM step
    is refused in one line."""

    case: Any = field(compare=False)  # nmx.hw.timeloop_spec.Case
    name: str = "timeloop"
    clock_ghz: float = 1.0
    source: str = ""
    kind: ClassVar[str] = "timeloop"
    phases: ClassVar[tuple[str, ...]] = ()

    def check_phase(self, phase: str) -> None:
        raise InputError(f"{self.name} is a Timeloop case ({self.source or 'a YAML file'}): it prices only the layer "
                         f"it describes ({self.case.workload.name}, with its own mapping), not an LLM {phase} step; "
                         "price LLM phases on a GPU or an accelerator design (nmx hw targets)")

    def cost(self, workload: Any = None) -> Cost:
        from nmx.hw.timeloop import evaluate

        if workload is not None and workload is not self.case:
            self.check_phase(getattr(workload, "phase", None) or type(workload).__name__)
        r = evaluate(self.case)
        outer = self.case.arch.levels[0]
        moved = 0.0
        for level in r.levels[:1]:
            for t in level.traffic.values():
                moved += (t.reads + t.fills + t.updates) * outer.datawidth_bits / 8
                moved += (t.metadata_reads + t.metadata_fills) * (outer.metadata_word_bits or 0) / 8
        latency = r.cycles / (self.clock_ghz * 1e9)
        op = OpCost(self.case.workload.name, "layer", 1, latency, r.energy_pj, moved, r.bound)
        return Cost(self.name, self.kind, latency, r.energy_pj, moved, r.bound, (op,), notes=tuple(r.notes),
                    extra={"cycles": r.cycles, "utilization": r.utilization, "area_um2": r.area_um2})

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "source": self.source, "clock_ghz": self.clock_ghz,
                "layer": self.case.workload.name}


def _check_llm_phase(target: Any, phase: str) -> None:
    if phase not in target.phases:
        raise InputError(f"{target.name}: cannot price a {phase!r} step; it prices {', '.join(target.phases)}")


# ---------------------------------------------------------------- YAML files


class GpuYaml(Strict):
    """`kind: gpu` -- a GPU on the roofline of nmx.hw.gpu. Peaks are dense tensor-core rates."""

    kind: Literal["gpu"]
    name: str = Field(min_length=1)
    bandwidth_gb_s: float = Field(gt=0)
    peak_tflops: dict[str, float]
    sparse_24: bool = False
    sms: int = Field(ge=1)
    l2_mb: float = Field(gt=0)
    source: str = ""
    efficiencies_from: str = DEFAULT_TARGET
    bw_eff: Optional[dict[str, float]] = None
    flops_eff: Optional[dict[str, float]] = None
    launch_us: Optional[float] = Field(None, ge=0)
    kernel_gap_us: Optional[float] = Field(None, ge=0)
    sparse_call_us: Optional[float] = Field(None, ge=0)
    sparse_eff: Optional[float] = Field(None, gt=0, le=1)

    @field_validator("peak_tflops")
    @classmethod
    def _peaks(cls, v: dict[str, float]) -> dict[str, float]:
        from nmx.hw.gpu import DTYPES

        for k, x in v.items():
            if k not in DTYPES:
                raise ValueError(f"unknown dtype {k!r}; use {', '.join(DTYPES)}")
            if isinstance(x, bool) or not math.isfinite(x) or x <= 0:
                raise ValueError(f"{k}: must be a number > 0 (TFLOP/s), got {x!r}")
        if "bf16" not in v:
            raise ValueError("needs bf16 (attention and unquantized layers compute in bf16)")
        return v

    @field_validator("bw_eff", "flops_eff")
    @classmethod
    def _fractions(cls, v: Optional[dict[str, float]], info: Any) -> Optional[dict[str, float]]:
        from nmx.hw.gpu import DTYPES

        if v is None:
            return v
        keys = ("gemm", "attention", "elementwise") if info.field_name == "bw_eff" else DTYPES
        for k, x in v.items():
            if k not in keys:
                raise ValueError(f"unknown key {k!r}; use {', '.join(keys)}")
            if isinstance(x, bool) or not 0 < x <= 1:
                raise ValueError(f"{k}: an efficiency is a fraction in (0, 1], got {x!r}")
        return v

    @field_validator("efficiencies_from")
    @classmethod
    def _preset(cls, v: str) -> str:
        from nmx.hw.gpu import PRESETS

        if v not in PRESETS:
            raise ValueError(f"unknown GPU preset {v!r}; use one of {', '.join(PRESETS)}")
        return v

    @model_validator(mode="after")
    def _finite(self) -> "GpuYaml":
        for f in ("bandwidth_gb_s", "l2_mb"):
            if not math.isfinite(getattr(self, f)):
                raise ValueError(f"{f} must be a finite number")
        return self


def gpu_from_dict(data: dict[str, Any], where: str = "GPU") -> Any:
    """A validated `kind: gpu` description -> nmx.hw.gpu.GpuTarget."""
    from nmx.hw.accel_spec import _describe
    from nmx.hw.gpu import PRESETS

    try:
        y = GpuYaml.model_validate(data)
    except ValidationError as err:
        raise InputError(_describe(err, where)) from None
    base = PRESETS[y.efficiencies_from]
    overrides = {k: v for k, v in (("launch_s", y.launch_us), ("kernel_gap_s", y.kernel_gap_us),
                                   ("sparse_call_s", y.sparse_call_us)) if v is not None}
    overrides = {k: v * 1e-6 for k, v in overrides.items()}
    if y.sparse_eff is not None:
        overrides["sparse_eff"] = y.sparse_eff
    own = bool(overrides or y.bw_eff or y.flops_eff)
    calibration = (f"uncalibrated: {base.name}'s fitted efficiencies on this GPU's datasheet numbers"
                   + ("; with the file's own efficiencies" if own else ""))
    return replace(base, name=y.name, sms=y.sms, bandwidth_bytes_per_s=y.bandwidth_gb_s * 1e9,
                   peak_flops={k: v * 1e12 for k, v in y.peak_tflops.items()}, sparse_24=y.sparse_24,
                   l2_bytes=y.l2_mb * 1e6, source=y.source or where,
                   bw_eff={**base.bw_eff, **(y.bw_eff or {})}, flops_eff={**base.flops_eff, **(y.flops_eff or {})},
                   decode_s_per_weight={},  # nmx's kernel rates are per chip: they do not carry over
                   calibration=calibration, **overrides)


class TimeloopYaml(Strict):
    kind: Literal["timeloop"]
    name: str = Field(min_length=1)
    clock_ghz: float = Field(gt=0)
    arch: str
    sparse_opts: str
    workload: str
    mapping: str
    ert: Optional[str] = None
    art: Optional[str] = None


def _case_path(value: str, field_name: str, base: Path, where: str) -> Path:
    expanded = os.path.expandvars(value)
    if "$" in expanded:
        raise InputError(f"{where}: {field_name}: {value!r} names an environment variable that is not set")
    p = Path(expanded).expanduser()
    return p if p.is_absolute() else base / p


def timeloop_from_dict(data: dict[str, Any], where: str, base: Path) -> TimeloopModel:
    from nmx.hw.accel_spec import _describe
    from nmx.hw.timeloop_spec import load_case

    try:
        y = TimeloopYaml.model_validate(data)
    except ValidationError as err:
        raise InputError(_describe(err, where)) from None
    paths = {f: _case_path(getattr(y, f), f, base, where) for f in ("arch", "sparse_opts", "workload", "mapping")}
    tables = {f: _case_path(getattr(y, f), f, base, where) for f in ("ert", "art") if getattr(y, f)}
    case = load_case(paths["arch"], paths["sparse_opts"], paths["workload"], paths["mapping"], tables.get("ert"),
                     tables.get("art"))
    return TimeloopModel(case, y.name, y.clock_ghz, where)


def load_target_file(path: str | Path, gpu_impl: str = "pytorch") -> Target:
    """A target described in YAML (see the module doc); any unusable file is one InputError line."""
    from nmx.hw.accel_spec import _read_yaml, accel_from_dict

    path = Path(path).expanduser()
    where = str(path)
    data = _read_yaml(path, "hardware target YAML")
    kind = data.get("kind", "accelerator" if "pe_array" in data else None)
    if kind == "gpu":
        return GpuModel(gpu_from_dict(data, where), gpu_impl, where)
    if kind == "accelerator":
        return AccelModel(accel_from_dict({k: v for k, v in data.items() if k != "kind"}, where), where)
    if kind == "timeloop":
        return timeloop_from_dict(data, where, path.parent)
    if kind == "pim":  # a GPU with bank-level compute in its DRAM (nmx.hw.pim)
        from nmx.hw.pim import PimModel, pim_from_dict

        return PimModel(pim_from_dict(data, where), gpu_impl, where)
    if "kind" in data:
        raise InputError(f"{where}: kind: must be one of {', '.join(KINDS)}, got {data['kind']!r}")
    raise InputError(f"{where}: a hardware target file says what it describes with kind: gpu, accelerator or "
                     "timeloop (an accelerator may instead just have pe_array); see examples/hardware/")


# ---------------------------------------------------------------- the registry


def _accel_preset_files() -> dict[str, Path]:
    """Packaged accelerator designs (copies of examples/hw/), by the name in the file."""
    from nmx.hw.accel_spec import load_accel

    if _ACCEL_FILES:
        return _ACCEL_FILES
    folder = Path(str(resources.files("nmx.hw") / "data"))
    for f in sorted(folder.glob("accel_*.yaml")):
        _ACCEL_FILES[load_accel(f).name] = f
    return _ACCEL_FILES


_ACCEL_FILES: dict[str, Path] = {}


def preset_names() -> list[str]:
    """Every target a recipe can name without a file: the GPU presets, the accelerator designs, then the GPU hosts
    with near-memory compute (nmx.hw.pim)."""
    from nmx.hw.gpu import PRESETS
    from nmx.hw.pim import pim_presets

    return list(PRESETS) + list(_accel_preset_files()) + list(pim_presets())


def get_target(spec: Any, gpu_impl: str = "pytorch") -> Target:
    """A target from a preset name, a YAML file path, a GpuTarget / AccelSpec, or a Target (as is).
    `gpu_impl` is the kernel implementation GPU presets and GPU files are priced with."""
    from nmx.hw.accel_spec import AccelSpec, load_accel
    from nmx.hw.gpu import PRESETS, GpuTarget

    if isinstance(spec, (GpuModel, AccelModel, TimeloopModel)):
        return spec
    if isinstance(spec, GpuTarget):
        return GpuModel(spec, gpu_impl, "python")
    if isinstance(spec, AccelSpec):
        return AccelModel(spec, spec.source or "python")
    if isinstance(spec, Target):
        return spec
    if not isinstance(spec, (str, Path)) or not str(spec).strip():
        raise InputError(f"a hardware target is a preset name or a YAML file path, got {spec!r}")
    from nmx.hw.pim import get_pim, pim_presets  # near-memory presets (nmx.hw.pim, `nmx hw pim`)

    key = str(spec).strip()
    if key in PRESETS:
        return GpuModel(PRESETS[key], gpu_impl)
    accel = _accel_preset_files()
    if key in accel:
        return AccelModel(load_accel(accel[key]), "preset")
    if key in pim_presets():
        return get_pim(key, gpu_impl)
    path = Path(key).expanduser()
    if path.suffix.lower() in (".yaml", ".yml") or path.exists() or os.sep in key:
        return load_target_file(path, gpu_impl)
    raise InputError(f"unknown hardware target {key!r}{did_you_mean(key, preset_names())} "
                     f"(presets: {', '.join(preset_names())}; or a YAML file "
                     "of kind gpu, accelerator or timeloop)")


def list_targets() -> list[dict[str, Any]]:
    """One row per preset (`nmx hw targets`)."""
    return [get_target(n).describe() for n in preset_names()]
