"""Accelerator and workload descriptions in YAML, validated at the boundary (pydantic).

    spec = load_accel("examples/hw/dense_16x16_ws.yaml")     # -> AccelSpec (frozen)
    spec.params()                                            # scalars the vectorized model takes
    work = load_workload("gemm.yaml")                        # -> list of Gemm / a Workload

An accelerator file (every field, with its default; see examples/hw/*.yaml):

    name: dense-16x16-ws
    tech_nm: 28                    # 45 | 28 | 16 | 7  (nmx.hw.tech)
    clock_ghz: 0.7                 # optional: the node's default clock
    pe_array: {rows: 16, cols: 16}
    pe:
      kind: dense                  # dense | nm_fixed | nm_reconfig | bit_serial
      arith: int                   # int | fp
      act_bits: 8                  # datapath widths the multiplier is built for
      weight_bits: 8
      lanes: 1                     # MAC lanes (multipliers) per PE
      nm_group: 4                  # nm kinds: M of the N:M hardware (mux fan-in)
      nm_supported: [2]            # nm kinds: the N values run natively (nm_fixed: exactly one)
      bits_per_cycle: 1            # bit_serial: activation bits consumed per cycle
      serial_overhead_cycles: 0    # bit_serial: fixed cycles per MAC sequence (BFP: exponent add + FP32 acc)
      bitplane_compressor: false   # bit_serial: on-the-fly BFP bit-plane compressor (energy and area)
    memory:                        # inner to outer: exactly one reg, one sram and one dram level
      - {name: reg, kind: reg, bytes_per_pe: 64}
      - {name: glb, kind: sram, capacity_kb: 256, bandwidth_bytes_per_cycle: 64}
      - {name: hbm, kind: dram, type: hbm3, bandwidth_gb_s: 100}   # energy_pj_per_bit: optional
    dataflow: {stationary: weight, loop_order: [n, k, m]}         # loop order outer -> inner, optional
    sparsity: {weights_format: auto, activations_format: dense, mode: gate}   # none | gate | skip
    overlap: true                  # cycles = max(compute, buffer, DRAM); false: their sum
    mapping: {tile: {m: 1, n: 256, k: 512}, loops: {m: 1, n: 16, k: 8}}  # optional, see below

`mapping.tile` fixes the buffer tile (default: chosen from the buffer size, see nmx.hw.accel);
`mapping.loops` fixes the DRAM-level loop counts and must cover the problem
(tile * loops >= dim for m, n and k of every GEMM it is used on).

A workload file is either one GEMM or an LLM step:

    gemm: {m: 1, n: 4096, k: 4096, weights: int8, activations: int8, pattern: "2:4", act_density: 1.0}
    # or
    model: llama-2-7b   # preset, HF config, or an `nmx run` result folder
    phase: decode
    batch: 1
    context: 4096
    compression: {weights: int4, activations: int8, pattern: "2:4", kv_format: int8}

Errors are one line naming the field: `accel.yaml: memory.1.capacity_kb: must be > 0`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from nmx.errors import InputError
from nmx.io import expand_user, read_yaml
from nmx.validation import Strict, as_value_error

PE_KINDS = ("dense", "nm_fixed", "nm_reconfig", "bit_serial")
DATAFLOWS = ("weight", "output", "input")
SPARSITY_MODES = ("none", "gate", "skip")
#: operand storage formats (nmx.sparsity.storage); "auto" = the smallest for the pattern, "nm" = nmN:M
OPERAND_FORMATS = ("auto", "dense", "bitmap", "rle", "csr", "csc", "coo", "nm")
DRAM_TYPES = ("hbm2e", "hbm3", "lpddr5", "ddr4")




class PEArray(Strict):
    rows: int = Field(ge=1)
    cols: int = Field(ge=1)


class PE(Strict):
    kind: Literal["dense", "nm_fixed", "nm_reconfig", "bit_serial"] = "dense"
    arith: Literal["int", "fp"] = "int"
    act_bits: int = Field(8, ge=1, le=64)
    weight_bits: int = Field(8, ge=1, le=64)
    lanes: int = Field(1, ge=1)
    nm_group: Optional[int] = Field(None, ge=2, le=32)
    nm_supported: Optional[list[int]] = None
    bits_per_cycle: int = Field(1, ge=1, le=64)
    serial_overhead_cycles: int = Field(0, ge=0, le=64)
    bitplane_compressor: bool = False

    @model_validator(mode="after")
    def _nm(self) -> "PE":
        nm = self.kind in ("nm_fixed", "nm_reconfig")
        if nm and (self.nm_group is None or not self.nm_supported):
            raise ValueError(f"pe.kind {self.kind} needs nm_group (M) and nm_supported (the N values)")
        if not nm and (self.nm_group is not None or self.nm_supported):
            raise ValueError(f"nm_group / nm_supported apply to nm_fixed and nm_reconfig PEs, not {self.kind}")
        if nm:
            bad = [n for n in self.nm_supported if not 1 <= n < self.nm_group]
            if bad:
                raise ValueError(f"nm_supported: N must be in 1..{self.nm_group - 1} for nm_group {self.nm_group}, "
                                 f"got {bad}")
            if self.kind == "nm_fixed" and len(set(self.nm_supported)) != 1:
                raise ValueError("nm_supported: a nm_fixed PE supports exactly one N (use nm_reconfig for several)")
        if self.kind != "bit_serial" and self.bits_per_cycle != 1:
            raise ValueError("bits_per_cycle applies to bit_serial PEs only")
        if self.kind != "bit_serial" and (self.serial_overhead_cycles or self.bitplane_compressor):
            raise ValueError("serial_overhead_cycles / bitplane_compressor apply to bit_serial PEs only")
        if self.kind == "bit_serial" and self.bits_per_cycle > self.act_bits:
            raise ValueError(f"bits_per_cycle {self.bits_per_cycle} exceeds act_bits {self.act_bits}")
        return self


class MemLevel(Strict):
    name: str
    kind: Literal["reg", "sram", "dram"]
    bytes_per_pe: Optional[float] = Field(None, gt=0)
    capacity_kb: Optional[float] = Field(None, gt=0)
    bandwidth_bytes_per_cycle: Optional[float] = Field(None, gt=0)
    type: Optional[Literal["hbm2e", "hbm3", "lpddr5", "ddr4"]] = None
    bandwidth_gb_s: Optional[float] = Field(None, gt=0)
    energy_pj_per_bit: Optional[float] = Field(None, gt=0)

    @model_validator(mode="after")
    def _fields_of_kind(self) -> "MemLevel":
        need = {"reg": ("bytes_per_pe",), "sram": ("capacity_kb", "bandwidth_bytes_per_cycle"),
                "dram": ("bandwidth_gb_s",)}[self.kind]
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.kind} level needs {', '.join(missing)}")
        if self.kind == "dram" and self.type is None and self.energy_pj_per_bit is None:
            raise ValueError(f"a dram level needs type ({', '.join(DRAM_TYPES)}) or energy_pj_per_bit")
        return self


class DataflowSpec(Strict):
    stationary: Literal["weight", "output", "input"] = "weight"
    loop_order: Optional[list[Literal["m", "n", "k"]]] = None

    @field_validator("loop_order")
    @classmethod
    def _perm(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        if v is not None and sorted(v) != ["k", "m", "n"]:
            raise ValueError(f"must order each of m, n, k once (outer to inner), got {v}")
        return v


class SparsitySpec(Strict):
    weights_format: str = "auto"
    activations_format: str = "dense"
    mode: Literal["none", "gate", "skip"] = "gate"

    @field_validator("weights_format", "activations_format")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in OPERAND_FORMATS:
            raise ValueError(f"unknown format {v!r}; use one of {', '.join(OPERAND_FORMATS)}")
        return v


class Dims(Strict):
    m: Optional[int] = Field(None, ge=1)
    n: Optional[int] = Field(None, ge=1)
    k: Optional[int] = Field(None, ge=1)


class MappingSpec(Strict):
    tile: Dims = Field(default_factory=Dims)
    loops: Dims = Field(default_factory=Dims)


class AccelYaml(Strict):
    name: str = "accelerator"
    tech_nm: Literal[45, 28, 16, 7] = 28
    clock_ghz: Optional[float] = Field(None, gt=0)
    pe_array: PEArray
    pe: PE = Field(default_factory=PE)
    memory: list[MemLevel]
    dataflow: DataflowSpec = Field(default_factory=DataflowSpec)
    sparsity: SparsitySpec = Field(default_factory=SparsitySpec)
    overlap: bool = True
    mapping: Optional[MappingSpec] = None

    @field_validator("memory")
    @classmethod
    def _levels(cls, v: list[MemLevel]) -> list[MemLevel]:
        kinds = [lv.kind for lv in v]
        for kind in ("reg", "sram", "dram"):
            if kind not in kinds:
                raise ValueError(f"missing level of kind {kind!r}: the model needs one reg, one sram and one "
                                 "dram level (inner to outer)")
            if kinds.count(kind) > 1:
                raise ValueError(f"{kinds.count(kind)} levels of kind {kind!r}: the model has exactly one of each")
        if kinds != ["reg", "sram", "dram"]:
            raise ValueError(f"levels must go inner to outer (reg, sram, dram), got {kinds}")
        return v


@dataclass(frozen=True)
class AccelSpec:
    """A validated accelerator (one design point); `params()` gives the model's scalars."""

    name: str
    tech_nm: int
    clock_ghz: float
    rows: int
    cols: int
    pe_kind: str
    arith: str
    act_bits: int
    weight_bits: int
    lanes: int
    nm_group: int  # 0: no N:M hardware
    nm_supported: tuple[int, ...]
    bits_per_cycle: int
    reg_bytes_per_pe: float
    glb_name: str
    glb_kb: float
    glb_bw_bytes_per_cycle: float
    dram_name: str
    dram_type: str
    dram_gb_s: float
    dram_pj_per_bit: float
    dataflow: str
    loop_order: str  # "" = the dataflow's default; else e.g. "nkm" (outer -> inner)
    weights_format: str
    activations_format: str
    sparsity_mode: str
    overlap: bool
    tile: tuple[int, int, int] = (0, 0, 0)  # (m, n, k), 0 = automatic
    loops: tuple[int, int, int] = (0, 0, 0)  # DRAM-level loop counts, 0 = ceil(dim / tile)
    serial_overhead: int = 0  # bit-serial: fixed cycles per MAC sequence
    bitplane: bool = False  # bit-plane compressor for BFP activations
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def params(self) -> dict[str, Any]:
        """The scalars of nmx.hw.accel's vectorized model (names = the sweepable keys)."""
        from nmx.hw.accel import params_from_spec

        return params_from_spec(self)


def _describe(err: ValidationError, where: str) -> str:
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"]) or "file"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "missing":
        msg = "is required"
    elif e["type"] == "extra_forbidden":
        msg = "is not a known field"
    return f"{where}: {loc}: {msg}"


def _read_yaml(path: str | Path, what: str) -> Any:
    """A YAML file's top-level mapping; every way it can be unusable (missing, a folder, not UTF-8,
    malformed, nested too deeply, empty, a list or a scalar) is one InputError naming the file."""
    path = expand_user(path)
    data = read_yaml(path, what, expect=None)
    if data is None:
        raise InputError(f"{path}: the {what} is empty; see examples/hw/ for one")
    if not isinstance(data, dict):
        raise InputError(f"{path}: {_a(what)} holds a mapping (key: value) at its top level, not "
                         f"{type(data).__name__}; see examples/hw/")
    return data


def _a(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def accel_from_dict(data: Any, where: str = "accelerator") -> AccelSpec:
    """Validate a parsed accelerator description (a dict) into an AccelSpec."""
    from nmx.hw.tech import get_tech

    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping with pe_array, pe, memory, ... at the top level")
    try:
        y = AccelYaml.model_validate(data)
    except ValidationError as err:
        raise InputError(_describe(err, where)) from None
    tech = get_tech(y.tech_nm)
    reg, glb, dram = y.memory
    dram_pj = dram.energy_pj_per_bit if dram.energy_pj_per_bit is not None else tech.dram_energy_pj_per_bit(dram.type)
    mp = y.mapping or MappingSpec()
    return AccelSpec(
        name=y.name, tech_nm=y.tech_nm, clock_ghz=y.clock_ghz or tech.clock_ghz, rows=y.pe_array.rows,
        cols=y.pe_array.cols, pe_kind=y.pe.kind, arith=y.pe.arith, act_bits=y.pe.act_bits,
        weight_bits=y.pe.weight_bits, lanes=y.pe.lanes, nm_group=y.pe.nm_group or 0,
        nm_supported=tuple(sorted(set(y.pe.nm_supported or ()))), bits_per_cycle=y.pe.bits_per_cycle,
        reg_bytes_per_pe=float(reg.bytes_per_pe), glb_name=glb.name, glb_kb=float(glb.capacity_kb),
        glb_bw_bytes_per_cycle=float(glb.bandwidth_bytes_per_cycle), dram_name=dram.name,
        dram_type=dram.type or "custom", dram_gb_s=float(dram.bandwidth_gb_s), dram_pj_per_bit=float(dram_pj),
        dataflow=y.dataflow.stationary, loop_order="".join(y.dataflow.loop_order or ()),
        weights_format=y.sparsity.weights_format, activations_format=y.sparsity.activations_format,
        sparsity_mode=y.sparsity.mode, overlap=y.overlap,
        tile=(mp.tile.m or 0, mp.tile.n or 0, mp.tile.k or 0),
        loops=(mp.loops.m or 0, mp.loops.n or 0, mp.loops.k or 0), serial_overhead=y.pe.serial_overhead_cycles,
        bitplane=y.pe.bitplane_compressor, source=where)


def load_accel(path: str | Path) -> AccelSpec:
    """Read and validate an accelerator YAML file."""
    return accel_from_dict(_read_yaml(path, "accelerator YAML"), where=str(path))


# ---- workload files ---------------------------------------------------------------------------


class GemmYaml(Strict):
    m: int = Field(ge=1)
    n: int = Field(ge=1)
    k: int = Field(ge=1)
    weights: Optional[str] = None
    activations: Optional[str] = None
    pattern: Optional[Union[str, float]] = None
    act_density: float = Field(1.0, gt=0, le=1)
    count: int = Field(1, ge=1)

    @field_validator("weights", "activations")
    @classmethod
    def _fmt(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            from nmx import formats

            as_value_error(formats.get, v)
        return v

    @field_validator("pattern")
    @classmethod
    def _pat(cls, v: Any) -> Any:
        if v is not None:
            from nmx.sparsity.patterns import parse_pattern

            return str(as_value_error(parse_pattern, v))
        return v


class CompressionYaml(Strict):
    weights: Optional[str] = None
    activations: Optional[str] = None
    pattern: Optional[str] = None
    kv_format: Optional[str] = None


class WorkloadYaml(Strict):
    gemm: Optional[GemmYaml] = None
    model: Optional[str] = None
    phase: Literal["prefill", "decode"] = "decode"
    batch: int = Field(1, ge=1)
    tokens: int = Field(2048, ge=1)
    context: int = Field(2048, ge=0)
    compression: Optional[CompressionYaml] = None

    @model_validator(mode="after")
    def _one(self) -> "WorkloadYaml":
        if (self.gemm is None) == (self.model is None):
            raise ValueError("give exactly one of gemm: {m, n, k, ...} or model: <preset or result folder>")
        return self


def workload_from_dict(data: Any, where: str = "workload") -> Any:
    """A parsed workload description -> a Gemm (one GEMM) or an nmx.hw.workload.Workload."""
    from nmx.hw.accel import gemm_problem
    from nmx.hw.workload import Compression, llm_workload

    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping with gemm: or model: at the top level")
    try:
        y = WorkloadYaml.model_validate(data)
    except ValidationError as err:
        raise InputError(_describe(err, where)) from None
    if y.gemm is not None:
        g = y.gemm
        return gemm_problem(g.m, g.n, g.k, weights=g.weights, activations=g.activations, pattern=g.pattern,
                            act_density=g.act_density, count=g.count)
    comp = Compression(**y.compression.model_dump()) if y.compression else None
    return llm_workload(y.model, y.phase, batch=y.batch, tokens=y.tokens, context=y.context, compression=comp)


def load_workload(path: str | Path) -> Any:
    """Read and validate a workload YAML file (one GEMM or an LLM step)."""
    return workload_from_dict(_read_yaml(path, "workload YAML"), where=str(path))
