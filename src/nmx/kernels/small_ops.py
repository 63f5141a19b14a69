"""Fuse the small ops of a loaded Llama-style model: `fuse_small_ops(model)` makes each RMSNorm, each SiLU-gated
MLP's activation-times-up and each attention's rotary embedding one kernel (`triton_small_ops.py`) where
transformers' eager forward launches 8, 2 and 10 (an H100 decode step of Llama-2-7B spends ~3.3 ms in ~40 such
kernels a layer: BENCHMARKS.md, "Where a decode step's time goes").

    from nmx.kernels import convert, fuse_small_ops
    convert(model, "int4_g128")
    report = fuse_small_ops(model)            # {"norms": 65, "mlps": 32, "rotary": 32, "left": {...}}

What it changes, by module class (a class nmx does not know is left as it is and named in the report):
- RMSNorm of Llama, Mistral, Qwen2/3 (weight * normalized, not Gemma's 1 + weight) -> `FusedRMSNorm`, the same
  weight parameter;
- a gated MLP with SiLU (Llama, Mistral, Qwen2/3) -> its forward computes silu_mul(gate(x), up(x)) (its gate, up and
  down modules, packed or not, are called as before);
- rotary embedding: while the model runs a forward (a pre-hook counts it in, a hook out), transformers'
  `apply_rotary_pos_emb` of its modeling module takes the fused kernel; other models in the process keep the
  original (unless they run inside a fused model's forward).

The kernels run through custom ops (`torch.ops.nmx.rms_norm`, `silu_mul`, `rotary`), so CUDA graphs capture one
launch each and torch.compile does not trace into them. On a CUDA tensor (or under Triton's CPU interpreter) they
run the Triton kernels for bf16; otherwise (CPU, other dtypes) the reference twins below, which are transformers'
own arithmetic: a fused model computes what the original computes, to the rounding documented in
`triton_small_ops.py`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

NORM_CLASSES = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")
MLP_CLASSES = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP")
# how many fused models are inside their forward now (a plain counter, not a ContextVar: torch.compile traces it)
_ROTARY_ACTIVE = [0]


def _triton(*tensors: torch.Tensor) -> bool:
    """Run the Triton kernel: bf16 tensors on a GPU, or on the CPU under Triton's interpreter (tests)."""
    if any(t.dtype != torch.bfloat16 for t in tensors):
        return False
    return all(t.is_cuda for t in tensors) or os.environ.get("TRITON_INTERPRET") == "1"


# ---- reference twins: transformers' eager arithmetic ------------------------------------------------------------


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def silu_mul_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.silu(gate) * up


def rotary_reference(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)

    def rot(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    return q * cos + rot(q) * sin, k * cos + rot(k) * sin


# ---- the custom ops -----------------------------------------------------------------------------------------------


@torch.library.custom_op("nmx::rms_norm", mutates_args=())
def rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if _triton(x, weight) and x.shape[-1] <= 65536:
        from nmx.kernels.triton_small_ops import rms_norm

        return rms_norm(x.contiguous(), weight.contiguous(), eps)
    return rms_norm_reference(x, weight, eps)


@rms_norm_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty_like(x, dtype=torch.promote_types(x.dtype, weight.dtype))


@torch.library.custom_op("nmx::silu_mul", mutates_args=())
def silu_mul_op(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if _triton(gate, up) and gate.shape == up.shape:
        from nmx.kernels.triton_small_ops import silu_mul

        return silu_mul(gate.contiguous(), up.contiguous())
    return silu_mul_reference(gate, up)


@silu_mul_op.register_fake
def _(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.empty(torch.broadcast_shapes(gate.shape, up.shape), dtype=gate.dtype, device=gate.device)


@torch.library.custom_op("nmx::rotary", mutates_args=())
def rotary_op(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    ok = (_triton(q, k, cos, sin) and q.dim() == k.dim() == 4 and cos.dim() == sin.dim() == 3
          and q.shape[-1] % 2 == 0 and q.stride(-1) == k.stride(-1) == 1
          and cos.shape == sin.shape == (q.shape[0], q.shape[2], q.shape[3]) and k.shape[0] == q.shape[0]
          and k.shape[2:] == q.shape[2:])
    if ok:
        from nmx.kernels.triton_small_ops import rotary

        return rotary(q, k, cos.contiguous(), sin.contiguous())
    qo, ko = rotary_reference(q, k, cos, sin)
    return qo.clone(), ko.clone()


@rotary_op.register_fake
def _(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(q), torch.empty_like(k)


# ---- the modules --------------------------------------------------------------------------------------------------


class FusedRMSNorm(torch.nn.Module):
    """An RMSNorm (weight * x / rms(x)) in one kernel; shares the original's weight parameter."""

    def __init__(self, weight: torch.nn.Parameter, eps: float, original: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.weight, self.variance_epsilon = weight, float(eps)
        self.__dict__["_original"] = original  # not a submodule: what `unfuse_small_ops` puts back

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.nmx.rms_norm(x, self.weight, self.variance_epsilon)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, fused"


def _fused_mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(torch.ops.nmx.silu_mul(self.gate_proj(x), self.up_proj(x)))


def _patch_rotary(module: Any) -> bool:
    """Wrap `apply_rotary_pos_emb` of a transformers modeling module once: the fused op while a fused model runs."""
    original = getattr(module, "apply_rotary_pos_emb", None)
    if original is None:
        return False
    if getattr(original, "_nmx_original", None) is not None:
        return True

    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        unsqueeze_dim = args[-1] if args else kwargs.get("unsqueeze_dim", 1)
        if _ROTARY_ACTIVE[0] > 0 and unsqueeze_dim == 1 and len(args) <= 1 and set(kwargs) <= {"unsqueeze_dim"}:
            return torch.ops.nmx.rotary(q, k, cos, sin)
        return original(q, k, cos, sin, *args, **kwargs)

    apply_rotary_pos_emb._nmx_original = original  # type: ignore[attr-defined]
    module.apply_rotary_pos_emb = apply_rotary_pos_emb
    return True


def _rotary_on(_module: Any, _args: Any) -> None:
    _ROTARY_ACTIVE[0] += 1


def _rotary_off(_module: Any, _args: Any, _out: Any) -> None:
    _ROTARY_ACTIVE[0] = max(0, _ROTARY_ACTIVE[0] - 1)


def fuse_small_ops(model: torch.nn.Module) -> dict[str, Any]:
    """Swap the small ops of `model` for fused kernels (module docstring); returns what it changed and what it
    left. Calling it again on a fused model changes nothing."""
    import types

    report: dict[str, Any] = {"norms": 0, "mlps": 0, "rotary": 0, "left": {}}
    for name, mod in list(model.named_modules()):
        cls = type(mod).__name__
        if cls in NORM_CLASSES and isinstance(getattr(mod, "weight", None), torch.nn.Parameter):
            eps = getattr(mod, "variance_epsilon", getattr(mod, "eps", None))
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, FusedRMSNorm(mod.weight, eps, mod))
            report["norms"] += 1
        elif cls in MLP_CLASSES:
            act = type(getattr(mod, "act_fn", None)).__name__
            if getattr(mod, "_nmx_fused", False):
                continue
            if act in ("SiLUActivation", "SiLU"):
                mod.forward = types.MethodType(_fused_mlp_forward, mod)
                mod._nmx_fused = True
                report["mlps"] += 1
            else:
                report["left"][name] = f"{cls} with activation {act}: only SiLU is fused"
        elif cls.endswith("Attention") and hasattr(mod, "q_proj"):
            modeling = sys.modules.get(type(mod).__module__)
            if getattr(mod, "_nmx_fused", False):
                continue
            if modeling is not None and _patch_rotary(modeling):
                mod._nmx_fused = True
                report["rotary"] += 1
            else:
                report["left"][name] = f"{cls}: no apply_rotary_pos_emb in {type(mod).__module__}"
        elif cls.endswith("RMSNorm") and not isinstance(mod, FusedRMSNorm):
            report["left"][name] = f"{cls}: not a known weight * x / rms(x) norm"
    if report["rotary"] and not getattr(model, "_nmx_rotary_hooks", None):
        model._nmx_rotary_hooks = (model.register_forward_pre_hook(_rotary_on),
                                   model.register_forward_hook(_rotary_off, always_call=True))
    return report


def unfuse_small_ops(model: torch.nn.Module) -> int:
    """Undo `fuse_small_ops`: the original norm modules, MLP forwards and rotary embedding come back. Returns how
    many modules were restored."""
    n = 0
    for name, mod in list(model.named_modules()):
        if isinstance(mod, FusedRMSNorm) and mod._original is not None:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, mod._original)
            n += 1
        elif getattr(mod, "_nmx_fused", False):
            mod.__dict__.pop("forward", None)  # the MLP's own class forward again
            del mod._nmx_fused
            n += 1
    for handle in getattr(model, "_nmx_rotary_hooks", None) or ():
        handle.remove()
    model._nmx_rotary_hooks = None
    return n
