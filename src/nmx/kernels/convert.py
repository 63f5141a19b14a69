"""Put the kernels into a loaded model: `convert` swaps targeted `nn.Linear`s for `PackedLinearModule`s.

    from nmx.kernels import convert
    report = convert(model, "int4_g128")                    # quantize + pack every targeted linear
    report = convert(model, "nvfp4", "2:4")                 # weights already 2:4 sparse (nmx's masks)
    report = convert_recipe(model, recipe, masks)           # what `nmx run` applied, packed exactly
    model.to("cuda")                                        # packed buffers move with the model

A `PackedLinearModule` holds the weight in the kernels' layout (`nmx.kernels.pack`: values, 2:4
metadata, block scales) and its `forward` calls `nmx.kernels.linear`: Triton on a CUDA GPU (the
dispatcher picks the one-token kernel, cuBLAS on the decoded weight, ...), and on CPU the reference
twin (`linear_reference`'s arithmetic, with the decoded weight kept so it is not decoded per call).
The call goes through one opaque custom op (`torch.ops.nmx.packed_linear`) so that `torch.compile`
does not trace into the dispatcher and CUDA graphs capture the kernel launches.

Precision (documented cast, never silent): the kernels multiply bf16 activations by the decoded
weight and accumulate in float32, with a bf16 result. A converted layer therefore rounds its input
to bf16 whatever its float dtype (fp32 inputs log one warning per process), copies a non-contiguous
input to contiguous rows, and returns the input's dtype (bias added in that dtype). A non-float
input, or one on another device than the packed weight, is one InputError.

What `convert` packs. The weight as it is: for a model that `nmx run` compressed, the fake-quantized
weight (float32 values on the format's grid, pruned entries zero). `pack` re-encodes it with the same
format; `exact=True` (what `convert_recipe` uses) decodes every packed weight and requires it to equal
the weight bit for bit (bf16-rounded for layers without a format), so the converted model computes
with exactly the values the fake-quant run scored. Without `exact`, a weight off the format's grid is
simply quantized (torchao's `quantize_` semantics). A 2:4 layer must already be 2:4 sparse (nmx prunes;
`convert` only packs): its mask is the recorded one where given (`masks`), else the weight's zeros.

What it refuses and what it leaves (documented policy):
- a format the kernels do not read (e.g. int8, mxfp6) or a pattern other than none / 2:4 passed to
  `convert`: one InputError line, nothing converted (the whole request is wrong);
- a layer whose shape the layout cannot take (K not a multiple of 64 or of the format's block, e.g.
  int4_g128 on SmolLM2's K = 576): left as `nn.Linear` (its fake-quant weight: the same values, not
  the kernels), with ONE warning naming how many layers were left and why; `strict=True` makes it an
  InputError instead. The report lists every layer left and its reason.
`convert_recipe` packs a recipe's N:M pattern other than 2:4 (4:8, 1:4 ...) in the dense layout (the
values are exact, the sparsity is not exploited), with one warning.

Agreement bound: perplexity through the kernels (ppl_k) vs the fake-quant model (ppl_ref), both in bf16,
scored on the same windows the same way (`nmx run --kernels` does both and records this):

    |ln ppl_k - ln ppl_ref| <= SIGMAS * sigma / sqrt(N)     and     |ppl_k / ppl_ref - 1| <= PPL_CAP
    SIGMAS = 4, PPL_CAP = 1e-2; sigma = rms of the N per-token NLL differences, measured in the same run

Derivation. (1) One layer. Both sides multiply the same bf16 operands (x rounded to bf16; the weight the
fake-quant run scored, which the reference model holds as bf16) with float32 sums and round y to bf16;
only the summation order differs (the CPU twin's matmul vs torch's bf16 GEMM; on the GPU Triton vs
cuBLAS). Two float32 sums of the same K products differ by at most gamma_K sum|x_i w_i|, gamma_K =
K u / (1 - K u), u = 2^-24 (typically sqrt(K) u), so the bf16 outputs differ only where the sums straddle
a rounding boundary, by one bf16 ulp (2^-8 relative): measured on SmolLM2-135M's layers, 1e-4 to 3e-4 of
the outputs, in every format. On the GPU the one-token kernel also multiplies the *unrounded* decoded
weight (element x scale in float32) where the reference holds bf16(element x scale): for int4_gG (fp16
scales) and nvfp4 (fp32 tensor scale) a weight differs by up to 2^-9 relative, about one more bf16
rounding of each output (mxfp4, fp8_e4m3 and mxfp8 values are exact in bf16: only the order differs).
(2) The model. A deep network amplifies such differences chaotically: on SmolLM2-135M (one 2048-token
window of WikiText-2, CPU twin) accumulation order alone gives per-token NLL differences of rms
sigma = 0.053 (bf16 weights) and 0.063 (mxfp4), the same spread as bf16 against float32 inference (0.059,
0.067). But they are zero-mean (neither side is the more exact one) and ln ppl is the mean NLL, so
ln ppl_k - ln ppl_ref is a mean of N such differences: within 4 sigma / sqrt(N), with tokens of a window
correlated, at about three standard errors (one 2048-token window: 5e-3; all of WikiText-2, 290K tokens
of SmolLM2's tokenizer: 4.5e-4). The same rule holds on the GPU, whose sigma includes its extra weight
rounding: emulated on the CPU (bf16 x times the unrounded float32 weight) for SmolLM2, sigma = 0.064
(int4_g64) and 0.060 (nvfp4), no larger than accumulation order alone, the chaos saturating at the spread
of bf16 itself; the means of one window were 2.3 and 1.5 standard errors. (3) A systematic error
(a wrong scale, a shifted 2:4 index, a missing bias) shifts the mean, not only the spread; PPL_CAP bounds
the difference even where sigma is large. On the tiny test model the twin is bit-identical (sigma = 0).
Measured on SmolLM2-135M, 3 windows of 2048 (N = 6141, bound about 3e-3), relative perplexity
differences: CPU twin vs bf16 fake quant 4.8e-4 (2:4+nvfp4), 9.2e-4 (int4_g64), 6.8e-4 (mxfp4), 1.4e-6
(bf16 values); the GPU one-token kernel's arithmetic emulated on the CPU 1.2e-3 (int4_g64, bound 3.3e-3)
and 8.9e-4 (nvfp4, bound 3.1e-3). Not yet measured on a GPU (benchmarks/decode_model.py does, on random
models: the GPU machine cannot load the real SmolLM2 offline).
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections import Counter
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import torch

from nmx.errors import InputError
from nmx.kernels.layout import K_MULTIPLE, PackedLinear, kernel_format, pack
from nmx.kernels.reference import decode_weight

log = logging.getLogger(__name__)

SIGMAS = 4.0
PPL_CAP = 1e-2
DEFAULT_TARGETS = ("*.self_attn.*_proj", "*.mlp.*_proj")

_MODULES: "weakref.WeakValueDictionary[int, PackedLinearModule]" = weakref.WeakValueDictionary()
_KEYS = itertools.count()
#: eager calls of converted layers per path ("gemv", "dense", "reference", ...): what a run actually used
PATHS: Counter = Counter()
#: tests and benchmarks: one-token launches fill their output with NaN first (every element must be written)
POISON = False
_WARNED: set[str] = set()


def _warn_once(key: str, msg: str, *args: Any) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(msg, *args)


# ---- the custom op -----------------------------------------------------------------------------------


@torch.library.custom_op("nmx::packed_linear", mutates_args=())
def packed_linear_op(x: torch.Tensor, key: int, n: int, backend: str) -> torch.Tensor:
    """y [..., n] (bf16) = x [..., K] W^T for the packed weight of converted layer `key`."""
    module = _MODULES.get(key)
    if module is None:
        raise InputError(f"packed layer {key} no longer exists (its PackedLinearModule was deleted)")
    return module._compute(x, backend)


@packed_linear_op.register_fake
def _(x: torch.Tensor, key: int, n: int, backend: str) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], n), dtype=torch.bfloat16)


# ---- the module --------------------------------------------------------------------------------------


_TRITON_BACKENDS = ("gemv", "tc", "triton")


def _interpreting() -> bool:
    """Triton's CPU interpreter is on (tests): an explicit Triton backend then runs on CPU tensors too."""
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


class PackedLinearModule(torch.nn.Module):
    """An `nn.Linear` whose weight is packed for the kernels (see the module docstring).

    Buffers (moved by `.to(device)`, never cast by `.to(dtype)` / `.half()`: every packed buffer is
    stored as an integer tensor, bf16 values and fp16 scales as int16 bit patterns): `values`, `meta`
    (2:4 only), `scales` (block formats only), `bias` (float, follows the model's dtype).
    """

    def __init__(self, packed: PackedLinear, bias: torch.Tensor | None = None, backend: str = "auto",
                 name: str = "") -> None:
        super().__init__()
        self.in_features, self.out_features = packed.k, packed.n
        self.format, self.sparse24 = packed.format, packed.sparse24
        self.tensor_scale, self.block = float(packed.tensor_scale), packed.block
        self.backend, self.name = backend, name
        self._float_views: dict[str, torch.dtype] = {}
        for which in ("values", "meta", "scales"):
            t = getattr(packed, which)
            if t is not None and t.is_floating_point():
                self._float_views[which] = t.dtype
                t = t.view(torch.int16)
            self.register_buffer(which, t)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._key = next(_KEYS)
        _MODULES[self._key] = self
        self._rebuild()

    # the PackedLinear view of the buffers; one object per placement (the dispatcher caches per object)
    def _rebuild(self) -> None:
        view = {w: (None if getattr(self, w) is None else
                    getattr(self, w).view(self._float_views[w]) if w in self._float_views else getattr(self, w))
                for w in ("values", "meta", "scales")}
        self.packed = PackedLinear(self.out_features, self.in_features, self.format, self.sparse24, view["values"],
                                   view["meta"], view["scales"], self.tensor_scale, self.block)
        self._twin_weight: torch.Tensor | None = None

    def __setstate__(self, state: dict) -> None:  # copy.deepcopy / pickle: a copy is a layer of its own
        super().__setstate__(state)
        self._key = next(_KEYS)
        _MODULES[self._key] = self
        self._rebuild()

    def _apply(self, fn, recurse=True):  # .to(device), .cuda(), ...: the buffers move, the view is rebuilt
        out = super()._apply(fn, recurse)
        self._rebuild()
        return out

    @property
    def weight_nbytes(self) -> int:
        return self.packed.nbytes

    def extra_repr(self) -> str:
        fmt = self.format or "bf16"
        return (f"in_features={self.in_features}, out_features={self.out_features}, format={fmt}, "
                f"sparse24={self.sparse24}, bias={self.bias is not None}, backend={self.backend}")

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight [N, K] the packed layout holds."""
        return decode_weight(self.packed)

    def _compute(self, x: torch.Tensor, backend: str) -> torch.Tensor:
        """The op's body (eager): checks, then the kernels (CUDA) or the reference twin (CPU)."""
        if not x.is_floating_point():
            raise InputError(f"a converted linear layer takes a float input, got {x.dtype}")
        if x.shape[-1] != self.in_features:
            raise InputError(f"x has {x.shape[-1]} input features, the packed layer {self.name or ''} expects "
                             f"{self.in_features}".replace("  ", " "))
        if x.device != self.values.device:
            raise InputError(f"x is on {x.device} but the packed layer is on {self.values.device}: move the model "
                             "(model.to(device)) or the input")
        if x.dtype != torch.bfloat16:
            _warn_once(f"dtype-{x.dtype}", "nmx.kernels: converted layers round their %s input to bf16 (the kernels' "
                       "operand) and compute in bf16 with float32 accumulation; cast the model to bf16 to match",
                       str(x.dtype).replace("torch.", ""))
        if x.device.type == "cuda" or (backend in _TRITON_BACKENDS and _interpreting()):
            from nmx.kernels.dispatch import choose, linear

            x2 = x.reshape(-1, self.in_features)
            path = choose(x2, self.packed) if backend == "auto" else backend
            if x.device.type != "cuda" or not torch.cuda.is_current_stream_capturing():
                PATHS[path] += 1
            if POISON and path == "gemv":
                from nmx.kernels.triton_gemv import gemv

                y = gemv(x2.to(torch.bfloat16).contiguous(), self.packed, poison=True)
                return y.reshape(*x.shape[:-1], self.out_features)
            return linear(x, self.packed, backend)
        PATHS["reference"] += 1
        return self._twin(x)

    def _twin(self, x: torch.Tensor) -> torch.Tensor:
        """`nmx.kernels.linear_reference`'s arithmetic (bf16 operands, float32 accumulation, bf16 result) with
        the decoded weight kept (decoded once, float32 of its bf16 rounding): equal to it bit for bit."""
        if self._twin_weight is None:
            self._twin_weight = decode_weight(self.packed).to(torch.bfloat16).to(torch.float32)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16).to(torch.float32)
        return (x2 @ self._twin_weight.T).to(torch.bfloat16).reshape(*lead, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.nmx.packed_linear(x, self._key, self.out_features, self.backend)
        if y.dtype != x.dtype and x.is_floating_point():
            y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y


# ---- convert -------------------------------------------------------------------------------------------


@dataclass
class ConvertReport:
    """What `convert` did: the converted layers (name -> format / 2:4), those left as nn.Linear and why,
    and the bytes a decode step reads for the converted weights against their bf16 size."""

    converted: dict[str, dict[str, Any]] = field(default_factory=dict)
    left: dict[str, str] = field(default_factory=dict)
    packed_bytes: int = 0
    bf16_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        reasons = Counter(self.left.values())
        return {"converted_layers": len(self.converted), "left_as_linear": len(self.left),
                "left_reasons": dict(reasons), "packed_bytes": self.packed_bytes, "bf16_bytes": self.bf16_bytes,
                "formats": dict(Counter(f"{v['format'] or 'bf16'}{' 2:4' if v['sparse24'] else ''}"
                                        for v in self.converted.values()))}


def _linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {name: m for name, m in model.named_modules() if type(m) is torch.nn.Linear}


def plan_layers(model: torch.nn.Module, weights: str | None = None, pattern: str | None = None,
                targets: tuple[str, ...] | list[str] = DEFAULT_TARGETS) -> dict[str, tuple[str | None, str | None]]:
    """{layer name: (format, pattern)} for every nn.Linear matching one of `targets` (a target that matches
    nothing is an InputError, as in recipes)."""
    linears = _linears(model)
    plan: dict[str, tuple[str | None, str | None]] = {}
    for t in targets:
        hits = [n for n in linears if fnmatchcase(n, t)]
        if not hits:
            sample = ", ".join(list(linears)[:4])
            raise InputError(f"target {t!r} matches no linear layer (names look like: {sample}, ...)")
        plan.update({n: (weights, pattern) for n in hits})
    return dict(sorted(plan.items(), key=lambda kv: list(linears).index(kv[0])))


def _check_request(fmt: str | None, pattern: str | None) -> None:
    kernel_format(fmt)  # InputError for a format the kernels do not read
    if pattern not in (None, "2:4"):
        raise InputError(f"the kernels read dense or 2:4 weights, not {pattern!r}: prune to 2:4, or convert with "
                         "pattern=None (the pruned zeros are then stored, exactly, in the dense layout)")


def _shape_problem(k: int, fmt: str | None) -> str | None:
    if k % K_MULTIPLE:
        return f"K not a multiple of {K_MULTIPLE}"
    if fmt is not None:
        from nmx import formats

        block = formats.get(fmt).block_size or 1
        if k % block:
            return f"K not a multiple of {fmt}'s block of {block}"
    return None


def _swap(model: torch.nn.Module, name: str, new: torch.nn.Module) -> torch.nn.Module:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    # activation fake-quant and other hooks travel with the layer
    for hooks in ("_forward_pre_hooks", "_forward_hooks", "_forward_pre_hooks_with_kwargs",
                  "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
        if hasattr(old, hooks):
            getattr(new, hooks).update(getattr(old, hooks))
    setattr(parent, child, new)
    return old


@torch.no_grad()
def pack_layers(model: torch.nn.Module, layers: dict[str, tuple[str | None, str | None]],
                masks: dict[str, torch.Tensor] | None = None, backend: str = "auto", strict: bool = False,
                exact: bool = False) -> tuple[dict[str, PackedLinearModule], ConvertReport]:
    """Pack the named linears (name -> (format, pattern)) into PackedLinearModules without installing them
    (`install` does): returns the modules and the report. See `convert`."""
    from nmx.kernels.dispatch import BACKENDS

    if backend not in BACKENDS:
        raise InputError(f"unknown kernel backend {backend!r}: use one of {', '.join(BACKENDS)}")
    for fmt, pattern in set(layers.values()):
        _check_request(fmt, pattern)
    linears = _linears(model)
    report, modules = ConvertReport(), {}
    for name, (fmt, pattern) in layers.items():
        lin = linears.get(name)
        if lin is None:
            raise InputError(f"{name!r} is not an nn.Linear of this model")
        problem = _shape_problem(lin.in_features, fmt)
        if problem:
            if strict:
                raise InputError(f"layer {name} ({lin.out_features}x{lin.in_features}) cannot be packed: {problem}")
            report.left[name] = problem
            continue
        w = lin.weight.detach()
        mask = masks.get(name) if masks and pattern == "2:4" else None
        if mask is not None:
            mask = mask.to(w.device).to(torch.bool)
            if bool(((w != 0) & ~mask).any()):
                raise InputError(f"layer {name}: the weight has nonzeros outside its recorded 2:4 mask")
        try:
            p = pack(w, fmt, pattern, mask)
        except InputError as err:
            raise InputError(f"layer {name}: {err}") from None
        if exact:
            want = w.float() if fmt is not None else w.to(torch.bfloat16).float()
            got = decode_weight(p)
            if not torch.equal(got, want):
                bad = int((got != want).sum())
                raise InputError(f"layer {name}: {bad} weights are not on the grid of {fmt or 'bf16'} (the packed "
                                 "weight would differ from the fake-quant one); was the model quantized with this "
                                 "format, in float32?")
        modules[name] = PackedLinearModule(p, lin.bias, backend, name)
        report.converted[name] = {"shape": [p.n, p.k], "format": fmt, "sparse24": p.sparse24, "bytes": p.nbytes}
        report.packed_bytes += p.nbytes
        report.bf16_bytes += 2 * p.n * p.k
    if report.left:
        reasons = "; ".join(f"{n} layers: {r}" for r, n in Counter(report.left.values()).items())
        log.warning("nmx.kernels.convert: %d of %d targeted linear layers left as nn.Linear (their fake-quant "
                    "weights, not the kernels): %s", len(report.left), len(layers), reasons)
    return modules, report


def install(model: torch.nn.Module, modules: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
    """Put `modules` in place of the named submodules; returns the ones they replaced (to put back)."""
    return {name: _swap(model, name, m) for name, m in modules.items()}


def convert(model: torch.nn.Module, weights: str | None = None, pattern: str | None = None, *,
            targets: tuple[str, ...] | list[str] = DEFAULT_TARGETS, masks: dict[str, torch.Tensor] | None = None,
            backend: str = "auto", strict: bool = False, exact: bool = False,
            layers: dict[str, tuple[str | None, str | None]] | None = None) -> ConvertReport:
    """Swap every targeted nn.Linear of `model` for a PackedLinearModule, in place (module docstring).

    weights: an nmx format the kernels read (mxfp4, nvfp4, int4_gG, fp8_e4m3, mxfp8_e4m3) or None (bf16
    values); pattern: None or "2:4" (the weights must already be 2:4 sparse); targets: glob patterns of
    layer names; masks: {layer name: bool mask} of 2:4 layers (kept positions, some may hold zeros);
    backend: what `nmx.kernels.linear` runs ("auto" = the dispatcher); strict: refuse a layer whose shape
    the layout cannot take instead of leaving it with one warning; exact: require every packed weight
    to equal the layer's weight bit for bit; layers: {name: (format, pattern)} instead of weights /
    pattern / targets. Returns a ConvertReport."""
    plan = layers if layers is not None else plan_layers(model, weights, pattern, targets)
    modules, report = pack_layers(model, plan, masks, backend, strict, exact)
    install(model, modules)
    return report


def recipe_layers(model: torch.nn.Module, recipe: Any) -> dict[str, tuple[str | None, str | None]]:
    """{name: (format, pattern)} for what a recipe compressed: its quantization targets get its weight
    format, its sparsity targets its pattern when that is 2:4 (other N:M patterns are packed dense, their
    zeros stored exactly, with one warning); with neither, the default targets in bf16."""
    from nmx.model.layers import match_linears

    sp, qz = recipe.sparsity, recipe.quantization
    fmt = qz.weights if qz else None
    pruned = set(match_linears(model, sp.targets)) if sp else set()
    quantized = set(match_linears(model, qz.targets)) if qz and qz.weights else set()
    if sp and sp.pattern != "2:4":
        _warn_once(f"pattern-{sp.pattern}", "nmx.kernels: the kernels read dense or 2:4 weights; the recipe's %s "
                   "layers are packed dense (their zeros stored exactly, the sparsity not exploited)", sp.pattern)
    names = pruned | quantized or set(match_linears(model, list(DEFAULT_TARGETS)))
    order = list(_linears(model))
    pattern = "2:4" if sp and sp.pattern == "2:4" else None
    return {n: (fmt if n in quantized else None, pattern if n in pruned else None)
            for n in sorted(names, key=order.index)}


def convert_recipe(model: torch.nn.Module, recipe: Any, masks: dict[str, torch.Tensor] | None = None,
                   backend: str = "auto", strict: bool = False) -> ConvertReport:
    """`convert` with what `nmx run` applied (a recipe and the masks its compress step recorded), exactly:
    every packed weight equals the fake-quant weight bit for bit, or InputError."""
    return convert(model, layers=recipe_layers(model, recipe), masks=masks, backend=backend, strict=strict,
                   exact=True)


def backend_name(device: torch.device | str) -> str:
    """What converted layers run on `device`: "triton" (CUDA with triton) or "reference" (the CPU twin)."""
    from nmx.kernels.dispatch import triton_available

    return "triton" if torch.device(device).type == "cuda" and triton_available() else "reference"
