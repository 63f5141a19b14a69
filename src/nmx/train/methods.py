"""Mask methods for sparse training, the pattern schedule, and the controller that puts them in a model.

One small dataclass per method, one registry (`MASK_METHODS`); a method owns its options:

- `dense`: no mask (a dense fine-tuning baseline).
- `fixed`: masked fine-tuning. The mask is the one-shot mask (the recipe's `sparsity:`) or, without one, a
  magnitude mask; it changes only when the schedule says so (a new pattern, a density ramp). Pruned weights
  are exactly zero in the parameters, their gradients are masked, and their AdamW moments are zeroed after
  every step, so they stay exactly zero.
- `sr_ste` (Zhou et al., ICLR'21): the dense weights W are trained; every step the N:M mask is recomputed
  from |W|, the forward uses W⊙mask, and the backward passes the gradient g of W⊙mask straight through to W
  plus the sparse-refined term: ∂W = g + λ_W·(1−mask)⊙W (option `lambda_w`).
- `decay` (Progressive Gradient Flow's decaying mask): the mask is recomputed from |W| every step and the
  pruned weights are scaled by a factor that falls linearly from 1 to 0 between options `start` and `end`
  (default: the whole run); the forward uses W⊙(mask + (1−mask)·factor).

A `PatternSchedule` says which N:M pattern holds at each step (N:M stepping, 2:4 then 1:4 and back) and
which fraction of the groups is pruned (gradual density, dense → N:M over a step range). Masks can be
transposable (N:M along both dims on M×M blocks, so Wᵀ in the input-gradient GEMM dY·W is N:M too) or
bidirectional: the forward uses W masked N:M along the input dim, and the input-gradient GEMM uses W masked
N:M along the output dim (a custom autograd Function), the weight gradient stays dense.

`MaskController` owns the masks of the targeted linears, patches their forward (the state dict is
unchanged), recomputes masks each step, applies weight fake quantization with a straight-through backward,
and reports the flip rate.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F

from nmx.errors import InputError, registry_get
from nmx.sparsity.patterns import NMPattern, parse_pattern
from nmx.train.masks import check_transposable_shape, nm_mask_along, partial_nm_mask, transposable_mask

# ---------------------------------------------------------------- autograd pieces


class SparseRefinedSTE(torch.autograd.Function):
    """forward: W⊙mask (pruned entries +0). backward: g + λ·(1−mask)⊙W (SR-STE)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, mask: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.save_for_backward(w, mask)
        ctx.lam = lam
        return torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        w, mask = ctx.saved_tensors
        refine = torch.where(mask, torch.zeros((), dtype=w.dtype, device=w.device), w) * ctx.lam
        return g + refine.to(g.dtype), None, None


def sr_ste(w: torch.Tensor, mask: torch.Tensor, lam: float) -> torch.Tensor:
    return SparseRefinedSTE.apply(w, mask, lam)


class BidirectionalLinear(torch.autograd.Function):
    """y = x·wᵀ + b with a different weight in the input-gradient GEMM: ∂x = ∂y·w_backward.
    The weight gradient ∂w = ∂yᵀ·x is dense (it flows on to the mask method's straight-through)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, w, w_backward, bias):
        ctx.save_for_backward(x, w_backward)
        ctx.has_bias = bias is not None
        return F.linear(x, w, bias)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, gy):
        x, wb = ctx.saved_tensors
        gx = gy @ wb.to(gy.dtype)
        g2 = gy.reshape(-1, gy.shape[-1])
        gw = g2.transpose(0, 1) @ x.reshape(-1, x.shape[-1]).to(g2.dtype)
        gb = g2.sum(0) if ctx.has_bias else None
        return gx, gw, None, gb


def ste_quantize(w: torch.Tensor, fmt: Any) -> torch.Tensor:
    """Fake quantization with a straight-through backward: the forward sees fmt.quantize(w) (rows along the
    input dim), the backward passes the gradient unchanged. Zeros stay zero (every format maps 0 to 0)."""
    with torch.no_grad():
        q = fmt.quantize(w.detach().float(), dim=-1).to(w.dtype)
    return w + (q - w).detach()


# ---------------------------------------------------------------- methods


def _number(name: str, key: str, v: Any, integer: bool = False, positive: bool = False) -> None:
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or (positive and v <= 0) or (not positive and v < 0) or v != v:
        kind = "an integer" if integer else "a number"
        raise InputError(f"mask method {name}: option {key} must be {kind} {'> 0' if positive else '>= 0'}, "
                         f"got {v!r}")


@dataclass(frozen=True)
class MaskMethod:
    name: ClassVar[str]
    #: masks recomputed from the dense weights every step
    recompute: ClassVar[bool] = False
    #: pruned weights and their optimizer state are zeroed in place (masked fine-tuning)
    hard: ClassVar[bool] = False
    #: the method uses masks at all
    masked: ClassVar[bool] = True

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        if not isinstance(options, dict):
            raise InputError(f"mask method {cls.name}: options must be a mapping, got {type(options).__name__}")
        known = cls.option_names()
        unknown = sorted(set(options) - set(known))
        if unknown:
            takes = f"it takes {known}" if known else "it takes none"
            raise InputError(f"mask method {cls.name}: unknown option(s) {unknown}; {takes}")
        cls._check_values(options)

    @classmethod
    def _check_values(cls, options: dict[str, Any]) -> None:
        pass

    @classmethod
    def check_steps(cls, options: dict[str, Any], steps: int) -> None:
        pass

    @classmethod
    def build(cls, options: dict[str, Any], steps: int) -> "MaskMethod":
        cls.check_options(options)
        cls.check_steps(options, steps)
        return cls(**options)

    def weight(self, w: torch.Tensor, mask: torch.Tensor, step: int, steps: int) -> torch.Tensor:
        """The weight the forward pass uses (differentiable in w)."""
        return torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))


@dataclass(frozen=True)
class Dense(MaskMethod):
    """No mask: dense fine-tuning."""

    name: ClassVar[str] = "dense"
    masked: ClassVar[bool] = False


@dataclass(frozen=True)
class Fixed(MaskMethod):
    """Masked fine-tuning: pruned weights and their AdamW moments held at exactly zero."""

    name: ClassVar[str] = "fixed"
    hard: ClassVar[bool] = True


@dataclass(frozen=True)
class SRSTE(MaskMethod):
    """Masks from |W| every step, straight-through gradient plus λ_W·(1−mask)⊙W."""

    name: ClassVar[str] = "sr_ste"
    recompute: ClassVar[bool] = True
    lambda_w: float = 2e-4

    @classmethod
    def _check_values(cls, options: dict[str, Any]) -> None:
        if "lambda_w" in options:
            _number(cls.name, "lambda_w", options["lambda_w"])

    def weight(self, w: torch.Tensor, mask: torch.Tensor, step: int, steps: int) -> torch.Tensor:
        return sr_ste(w, mask, float(self.lambda_w))


@dataclass(frozen=True)
class Decay(MaskMethod):
    """Masks from |W| every step; pruned weights scaled by a factor falling linearly 1 -> 0 over
    [start, end) (end default: the last step)."""

    name: ClassVar[str] = "decay"
    recompute: ClassVar[bool] = True
    start: int = 0
    end: Optional[int] = None

    @classmethod
    def _check_values(cls, options: dict[str, Any]) -> None:
        for key in ("start", "end"):
            if options.get(key) is not None:
                _number(cls.name, key, options[key], integer=True, positive=key == "end")

    @classmethod
    def check_steps(cls, options: dict[str, Any], steps: int) -> None:
        start, end = options.get("start", 0), options.get("end")
        end = steps if end is None else end
        if end > steps or start >= end:
            raise InputError(f"mask method decay: the decay runs over [start, end) = [{start}, {end}), which must be "
                             f"a non-empty range within the {steps} training steps")

    def factor(self, step: int, steps: int) -> float:
        end = steps if self.end is None else self.end
        if step < self.start:
            return 1.0
        if step >= end:
            return 0.0
        return 1.0 - (step - self.start) / (end - self.start)

    def weight(self, w: torch.Tensor, mask: torch.Tensor, step: int, steps: int) -> torch.Tensor:
        f = self.factor(step, steps)
        if f == 0.0:
            return super().weight(w, mask, step, steps)
        scale = torch.where(mask, torch.ones((), dtype=w.dtype, device=w.device),
                            torch.full((), f, dtype=w.dtype, device=w.device))
        return w * scale


#: method name -> class; adding a method is one class and one entry here
MASK_METHODS: dict[str, type[MaskMethod]] = {c.name: c for c in (Dense, Fixed, SRSTE, Decay)}


def get_mask_method(name: str) -> type[MaskMethod]:
    return registry_get(MASK_METHODS, name, "mask method")


# ---------------------------------------------------------------- schedule


@dataclass(frozen=True)
class PatternSchedule:
    """`points`: (step, pattern) sorted by step; before the first point the weights are dense. `ramp`:
    (start, end, shape): the fraction of groups pruned grows from 0 at start to 1 at end."""

    points: tuple[tuple[int, NMPattern], ...]
    ramp: Optional[tuple[int, int, str]] = None

    def __post_init__(self) -> None:
        steps = [s for s, _ in self.points]
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise InputError(f"mask schedule steps must increase strictly, got {steps}")

    @classmethod
    def from_spec(cls, mask: Any, default: str) -> "PatternSchedule":
        if mask.schedule:
            points = tuple((p.step, parse_pattern(p.pattern)) for p in mask.schedule)
        else:
            points = ((0, parse_pattern(mask.pattern or default)),)
        ramp = (mask.ramp.start, mask.ramp.end, mask.ramp.shape) if mask.ramp is not None else None
        return cls(points, ramp)

    def pattern_at(self, step: int) -> Optional[NMPattern]:
        current = None
        for s, p in self.points:
            if s <= step:
                current = p
        return current

    def fraction_at(self, step: int) -> float:
        if self.ramp is None:
            return 1.0
        start, end, shape = self.ramp
        t = min(1.0, max(0.0, (step - start) / (end - start)))
        return t if shape == "linear" else 1.0 - (1.0 - t) ** 3

    def switches(self, steps: int) -> list[list]:
        """(step, pattern) at each step where the pattern changes, within `steps`."""
        out, last = [], None
        for step in range(steps):
            p = self.pattern_at(step)
            if p != last:
                out.append([step, str(p) if p else "dense"])
                last = p
        return out

    def patterns(self) -> list[NMPattern]:
        return [p for _, p in self.points]


# ---------------------------------------------------------------- controller


class MaskController:
    """The masks of `linears` (name -> nn.Linear) under `method` and `schedule`, put into their forward."""

    def __init__(self, linears: dict[str, torch.nn.Linear], method: MaskMethod, schedule: PatternSchedule,
                 steps: int, transposable: bool = False, bidirectional: bool = False, weight_format: Any = None,
                 initial: dict[str, torch.Tensor] | None = None) -> None:
        self.linears, self.method, self.schedule, self.steps = linears, method, schedule, steps
        self.transposable, self.bidirectional, self.fmt = transposable, bidirectional, weight_format
        self.masks: dict[str, Optional[torch.Tensor]] = {n: None for n in linears}
        self.bmasks: dict[str, Optional[torch.Tensor]] = {n: None for n in linears}
        self.last: Optional[tuple[str, float]] = None  # (pattern, fraction) the masks were made for
        self.step = 0
        self.optimizer: Any = None
        self._patched: list[torch.nn.Linear] = []
        if method.masked:
            self.check_shapes()
        p0 = schedule.pattern_at(0) if method.masked else None
        if (initial and p0 is not None and not transposable and schedule.fraction_at(0) == 1.0
                and set(initial) >= set(linears)):
            for n in linears:
                if bool(nm_ok(initial[n], p0)):
                    self.masks[n] = initial[n].to(linears[n].weight.device, torch.bool)
            if all(self.masks[n] is not None for n in linears):
                self.last = (str(p0), 1.0)
                if bidirectional:
                    self.bmasks = {n: self._make(lin.weight, p0, 1.0, dim=0) for n, lin in linears.items()}
            else:
                self.masks = {n: None for n in linears}

    # ------------------------------------------------ masks

    def check_shapes(self) -> None:
        """Refuse (InputError) a targeted weight the schedule's patterns cannot divide."""
        for name, lin in self.linears.items():
            rows, cols = lin.weight.shape
            for p in self.schedule.patterns():
                if cols % p.m:
                    raise InputError(f"mask pattern {p}: {name} has {cols} inputs, not a multiple of {p.m}; leave it "
                                     "out of mask.targets or pick another M")
                if self.transposable:
                    check_transposable_shape((rows, cols), p.m, name)
                if self.bidirectional and rows % p.m:
                    raise InputError(f"bidirectional mask {p}: {name} has {rows} outputs, not a multiple of {p.m} "
                                     "(the backward mask runs along the output dim)")

    def _make(self, w: torch.Tensor, p: NMPattern, fraction: float, dim: int = -1) -> torch.Tensor:
        scores = w.detach().abs().float()
        if self.transposable:
            return transposable_mask(scores, p.n, p.m, fraction)
        if dim == 0:
            return partial_nm_mask(scores.T, p.n, p.m, fraction).T.contiguous()
        return partial_nm_mask(scores, p.n, p.m, fraction)

    @torch.no_grad()
    def update(self, step: int) -> dict[str, Any]:
        """Masks for `step` (recomputed as the method and schedule say); returns the flip rate (fraction of
        mask bits changed since the previous step, a dense weight counting as all kept), the kept fraction
        and the pattern."""
        self.step = step
        p = self.schedule.pattern_at(step) if self.method.masked else None
        f = self.schedule.fraction_at(step)
        key = (str(p) if p else "dense", f)
        flips = total = kept = 0
        new_masks = self.masks
        if self.method.recompute or key != self.last:
            new_masks = {}
            for name, lin in self.linears.items():
                new_masks[name] = None if p is None else self._make(lin.weight, p, f)
                if self.bidirectional:
                    self.bmasks[name] = None if p is None else self._make(lin.weight, p, f, dim=0)
        dev = next(iter(self.linears.values())).weight.device
        acc = torch.zeros(2, dtype=torch.long, device=dev)  # flips, kept: summed on the device, read once per step
        for name, lin in self.linears.items():
            old, new = self.masks[name], new_masks[name]
            total += lin.weight.numel()
            if new is not None:
                acc[1] += new.sum()
                if old is None:
                    acc[0] += (~new).sum()
                elif old is not new:
                    acc[0] += (old != new).sum()
            else:
                kept += lin.weight.numel()
                if old is not None:
                    acc[0] += (~old).sum()
        f_sum, k_sum = acc.tolist()
        flips, kept = flips + f_sum, kept + k_sum
        self.masks = new_masks
        self.last = key
        if self.method.hard:
            self.zero_pruned()
        return {"flip_rate": flips / max(1, total), "density": kept / max(1, total), "pattern": key[0],
                "pruned_fraction": f if p is not None else 0.0}

    @torch.no_grad()
    def zero_pruned(self) -> None:
        """Pruned weights and their AdamW moments to exactly +0 (hard methods)."""
        for name, lin in self.linears.items():
            mask = self.masks[name]
            if mask is None:
                continue
            lin.weight.masked_fill_(~mask, 0.0)
            state = self.optimizer.state.get(lin.weight, {}) if self.optimizer is not None else {}
            for k in ("exp_avg", "exp_avg_sq"):
                if k in state:
                    state[k].masked_fill_(~mask, 0.0)

    # ------------------------------------------------ forward

    def effective(self, name: str, w: torch.Tensor) -> torch.Tensor:
        mask = self.masks[name]
        out = w if mask is None else self.method.weight(w, mask, self.step, self.steps)
        return ste_quantize(out, self.fmt) if self.fmt is not None else out

    def _forward(self, name: str, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        w = self.effective(name, module.weight)
        bmask = self.bmasks[name]
        if bmask is None:
            return F.linear(x, w, module.bias)
        with torch.no_grad():
            wb = self.method.weight(module.weight.detach(), bmask, self.step, self.steps)
        return BidirectionalLinear.apply(x, w, wb, module.bias)

    def attach(self) -> None:
        for name, module in self.linears.items():
            module.forward = (lambda x, _n=name, _m=module: self._forward(_n, _m, x))
            self._patched.append(module)

    def detach(self) -> None:
        for module in self._patched:
            if "forward" in module.__dict__:
                del module.forward
        self._patched = []

    def after_step(self) -> None:
        if self.method.hard:
            self.zero_pruned()

    @torch.no_grad()
    def finalize(self, weight_format: Any = None) -> dict[str, torch.Tensor]:
        """Make the weights what inference uses: pruned entries +0 (hard masks at the last step's masks) and,
        with a format, fake-quantized. Returns the masks (on the CPU); the forwards are restored."""
        self.detach()
        out = {}
        fmt = weight_format if weight_format is not None else self.fmt
        for name, lin in self.linears.items():
            mask = self.masks[name]
            w = lin.weight.detach()
            if mask is not None:
                w = torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))
                out[name] = mask.detach().cpu()
            if fmt is not None:
                w = fmt.quantize(w.float(), dim=-1).to(w.dtype)
            lin.weight.copy_(w)
        return out

    # ------------------------------------------------ checkpoint

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.linears:
            if self.masks[name] is not None:
                out[f"mask.{name}"] = self.masks[name].detach().cpu().contiguous()
            if self.bmasks[name] is not None:
                out[f"bmask.{name}"] = self.bmasks[name].detach().cpu().contiguous()
        return out

    def state_meta(self) -> dict[str, Any]:
        return {"last": list(self.last) if self.last is not None else None}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        for name, lin in self.linears.items():
            m, b = tensors.get(f"mask.{name}"), tensors.get(f"bmask.{name}")
            self.masks[name] = m.to(lin.weight.device, torch.bool) if m is not None else None
            self.bmasks[name] = b.to(lin.weight.device, torch.bool) if b is not None else None
        last = meta.get("last")
        self.last = (last[0], float(last[1])) if last is not None else None


def nm_ok(mask: torch.Tensor, p: NMPattern) -> bool:
    """Whether a bool mask keeps at most N in every group of M of its last dim."""
    if mask.shape[-1] % p.m:
        return False
    return bool((mask.reshape(-1, p.m).sum(-1) <= p.n).all())


__all__ = ["MASK_METHODS", "get_mask_method", "MaskMethod", "Dense", "Fixed", "SRSTE", "Decay", "PatternSchedule",
           "MaskController", "SparseRefinedSTE", "BidirectionalLinear", "ste_quantize", "sr_ste", "nm_mask_along"]
