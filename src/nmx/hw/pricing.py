"""Pricing a run: the workload of the compressed model on every target and phase of a recipe.

    from nmx.hw.pricing import Phase, price, price_result
    costs = price("smollm2-135m", Compression(weights="mxfp4"), ["h200", "nm24-16x16-ws"],
                  [Phase("decode", batch=1, context=2048)])           # -> list[Cost]
    block = price_result(result_record, recipe)                       # result.json's `hardware` block

`nmx run` calls `price_result` after the evaluation: the workload comes from the result record
itself (the model's shapes, each linear's real storage, the recipe's formats, pattern and whole KV
policy), so a result folder priced later (`nmx hw llm --model RUN_DIR`, `nmx explore --results`)
gives the same numbers. A recipe without a `hardware:` section is priced on `DEFAULT_TARGET`
(the calibrated GPU preset) at the evaluation's context: a prefill of that many tokens and decode
steps at batch 1 and 16.

The `hardware` block of result.json:

    {"default": bool,                   # true: the recipe had no hardware: section
     "workload": {"model", "compression", "kv_exact"},
     "targets": [{"name", "kind", "source", ...}],        # Target.describe()
     "phases": [{"phase", "batch", "tokens", "context"}],
     "costs": [{"target", "kind", "phase", "batch", "tokens", "context", "latency_s", "tokens_per_s",
                "energy_pj" (null: no energy model), "bytes", "kv_cache_bytes", "bound"}]}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from nmx.errors import InputError
from nmx.hw.cost import Cost
from nmx.hw.targets import DEFAULT_TARGET, Target, get_target

#: decode batches priced when a recipe names no phases
DEFAULT_BATCHES = (1, 16)


@dataclass(frozen=True)
class Phase:
    """One step to price: a prefill of `tokens` tokens per sequence, or a decode step with
    `context` tokens cached; `batch` sequences."""

    phase: str
    batch: int = 1
    tokens: int | None = None
    context: int | None = None

    def __post_init__(self) -> None:
        from nmx.hw.workload import PHASES, check_size

        if self.phase not in PHASES:
            raise InputError(f"phase must be 'prefill' or 'decode', got {self.phase!r}")
        check_size("phase batch", self.batch)
        if self.phase == "prefill":
            if self.tokens is None or self.context is not None:
                raise InputError("a prefill phase takes tokens (the prompt length), not context")
            check_size("prefill tokens", self.tokens)
        else:
            if self.context is None or self.tokens is not None:
                raise InputError("a decode phase takes context (tokens already cached), not tokens")
            check_size("decode context", self.context, minimum=0)

    @property
    def label(self) -> str:
        if self.phase == "prefill":
            return f"prefill {self.tokens} x{self.batch}"
        return f"decode @{self.context} x{self.batch}"

    def workload(self, shape: Any, compression: Any) -> Any:
        from nmx.hw.workload import llm_workload

        if self.phase == "prefill":
            return llm_workload(shape, "prefill", batch=self.batch, tokens=self.tokens, compression=compression)
        return llm_workload(shape, "decode", batch=self.batch, context=self.context, compression=compression)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def default_phases(context: int, batches: Sequence[int] = DEFAULT_BATCHES) -> list[Phase]:
    """A prefill of `context` tokens and decode steps at `context` for each batch."""
    return [Phase("prefill", 1, tokens=context)] + [Phase("decode", b, context=context) for b in batches]


def resolve(targets: Sequence[Any], gpu_impl: str = "pytorch") -> list[Target]:
    """Targets from names, files or objects; two targets with one name are refused."""
    out = [get_target(t, gpu_impl) for t in targets]
    seen: dict[str, Any] = {}
    for spec, t in zip(targets, out, strict=True):
        if t.name in seen:
            raise InputError(f"two hardware targets are named {t.name!r} ({seen[t.name]} and {spec}); "
                             "give each a distinct name")
        seen[t.name] = spec
    return out


def price(model: Any, compression: Any, targets: Sequence[Any], phases: Sequence[Phase],
          gpu_impl: str = "pytorch") -> list[Cost]:
    """Every target on every phase (phases outer, targets inner). Each target is checked against
    each phase before anything is priced: a target that cannot price one is one InputError line."""
    ts = resolve(targets, gpu_impl)
    for ph in phases:
        for t in ts:
            t.check_phase(ph.phase)
    return [t.cost(w) for w in workloads(model, compression, phases) for t in ts]


def workloads(model: Any, compression: Any, phases: Sequence[Phase]) -> list[Any]:
    """One `nmx.hw.workload.Workload` per phase."""
    return [ph.workload(model, compression) for ph in phases]


def check_recipe(recipe: Any) -> None:
    """Refuse, before any model loads, a `hardware:` section whose targets cannot price its phases
    or this recipe's formats (e.g. gpu_impl nmx on a format its kernels were not measured on): the
    same pricing runs on a small probe shape with the recipe's weight and activation formats."""
    from nmx.hw.workload import Compression, ModelShape

    section = recipe.hardware
    if section is None:
        return
    phases = section_phases(recipe)
    sp, qz = recipe.sparsity, recipe.quantization
    targets = tuple(sp.targets) if sp else tuple(qz.targets) if qz else Compression().targets
    comp = Compression(weights=qz.weights if qz else None, activations=qz.activations if qz else None,
                       pattern=sp.pattern if sp else None, targets=targets)
    probe = ModelShape("probe", 768, 1536, 1, 6, 2, 128, 256)
    small = [Phase(p.phase, 1, tokens=min(p.tokens, 16) if p.tokens else None,
                   context=min(p.context, 16) if p.context is not None else None) for p in phases]
    price(probe, comp, section.targets, small, section.gpu_impl)


def section_phases(recipe: Any) -> list[Phase]:
    """The phases a recipe prices: its hardware section's, else the defaults at the evaluation's context."""
    section = recipe.hardware
    if section is not None and section.phases:
        return [Phase(p.phase, p.batch, p.tokens, p.context) for p in section.phases]
    return default_phases(recipe.evaluation.seq_len)


def price_result(result: dict[str, Any], recipe: Any) -> dict[str, Any]:
    """The `hardware` block of a run's result.json (see the module doc)."""
    from nmx.hw.workload import from_result

    section = recipe.hardware
    specs = list(section.targets) if section is not None else [DEFAULT_TARGET]
    impl = section.gpu_impl if section is not None else "pytorch"
    phases = section_phases(recipe)
    if not (result.get("model") or {}).get("shape"):
        return {"default": section is None, "skipped": "the model is not a Llama-style decoder: nmx.hw has no "
                "workload for it"}
    shape, comp = from_result(result, "the run's result")
    targets = resolve(specs, impl)
    costs = price(shape, comp, targets, phases)
    exact = all(w.kv_exact for w in workloads(shape, comp, phases))
    return {"default": section is None,
            "workload": {"model": shape.name, "compression": comp.describe(), "kv_exact": exact},
            "targets": [t.describe() for t in targets],
            "phases": [p.as_dict() for p in phases],
            "costs": [c.as_dict() for c in costs]}


def markdown(block: dict[str, Any]) -> list[str]:
    """The report.md section of a `hardware` block."""
    lines = ["## Hardware", ""]
    if "skipped" in block:
        return lines + [f"- not priced: {block['skipped']}", ""]
    w = block["workload"]
    how = ("the default (the recipe has no hardware: section)" if block["default"]
           else "the recipe's hardware: section")
    lines += [f"One step of {w['model']} with this run's compression ({w['compression']}) priced on {how}; "
              "latency per step, bytes through off-chip memory, energy where the target has an energy model.", "",
              "| target | kind | phase | batch | context | latency ms | tokens/s | energy mJ | MB moved | KV cache MB "
              "| bound |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in block["costs"]:
        energy = "-" if c["energy_pj"] is None else f"{c['energy_pj'] * 1e-9:.4g}"
        tps = "-" if c["tokens_per_s"] is None else f"{c['tokens_per_s']:.4g}"
        kv = "-" if c.get("kv_cache_bytes") is None else f"{c['kv_cache_bytes'] / 1e6:.4g}"
        ctx = c["context"] if c["phase"] == "decode" else f"{c['tokens']} new"
        lines.append(f"| {c['target']} | {c['kind']} | {c['phase']} | {c['batch']} | {ctx} | "
                     f"{c['latency_s'] * 1e3:.4g} | {tps} | {energy} | {c['bytes'] / 1e6:.4g} | {kv} | {c['bound']} |")
    lines.append("")
    for t in block["targets"]:
        note = t.get("calibration") or f"{t['kind']} model ({t.get('source', '')})"
        lines.append(f"- {t['name']}: {note}" + (f"; kernels: {t['impl']}" if t.get("impl") else ""))
    if not w.get("kv_exact", True):
        lines.append("- KV cache bytes are estimated: the eviction method scores tokens, so which slots stay stored "
                     "depends on the data (nmx.hw.kvcache)")
    lines.append("")
    return lines


def summary_lines(block: dict[str, Any]) -> list[str]:
    """One short line per priced step (what `nmx run` prints)."""
    if "skipped" in block:
        return [f"hardware: not priced ({block['skipped']})"]
    out = []
    for c in block["costs"]:
        step = f"prefill {c['tokens']}" if c["phase"] == "prefill" else f"decode @{c['context']}"
        energy = f", {c['energy_pj'] * 1e-9:.4g} mJ" if c["energy_pj"] is not None else ""
        out.append(f"{c['target']} {step} x{c['batch']}: {c['latency_s'] * 1e3:.4g} ms, "
                   f"{c['tokens_per_s']:.4g} tokens/s{energy} ({c['bound']}-bound)")
    return out
