"""Activation tensor types of a decoder, resolved from the model's own structure and dataflow.

A transformer block has four activation tensors a linear layer reads (the Anda paper's "tensor
types", the granularity at which it sets a mantissa length):

  qkv   the attention input: read by the Q, K and V projections (or one fused QKV projection)
  o     the attention output: read by the attention's output projection
  up    the FFN input: read by the up (and gate) projection(s)
  down  the FFN intermediate: read by the down projection

Nothing here lists layer names. `resolve_tensor_types` runs the model on a few tokens up to the end
of its first decoder layer and watches which linears of that layer are called, in which order, on
which input tensor:

- the *attention block* is the child module of the decoder layer that holds the first linear
  called (Llama's `self_attn`, OPT's `self_attn`, GPT-NeoX's `attention`); its linears that read the
  same tensor as that first one are `qkv`, its other linears are `o`;
- the layer's remaining linears are the FFN (inside an `mlp` module or not: OPT's fc1/fc2 hang off
  the layer itself); those that read the same tensor as the first FFN linear called are `up`, the
  others `down`.

Every decoder layer is assumed to have the first layer's structure (names relative to the layer).
A model in which one of the four types comes out empty (no attention block found, a layer with a
single linear, Conv1D instead of nn.Linear as in GPT-2) is refused with an InputError.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from nmx.errors import InputError, NmxError
from nmx.model.layers import decoder_layers, match_linears

log = logging.getLogger(__name__)

#: the tensor types, in the order a block reads them
TENSOR_TYPES = ("qkv", "o", "up", "down")
_GLOB_CHARS = set("*?[.")


@dataclass(frozen=True)
class TensorTypes:
    """Which linears read which activation tensor type, for every decoder layer of a model."""

    prefix: str  # the decoder layers' ModuleList, e.g. "model.layers"
    layers: int
    members: Mapping[str, tuple[str, ...]]  # type -> linear names relative to a decoder layer

    def linears(self, ttype: str) -> list[str]:
        """Full names of the linears of `ttype` over all decoder layers."""
        return [f"{self.prefix}.{i}.{rel}" for i in range(self.layers) for rel in self.members[ttype]]

    def type_of(self, full_name: str) -> str | None:
        head = self.prefix + "."
        if not full_name.startswith(head):
            return None
        _, _, rel = full_name[len(head):].partition(".")
        return next((t for t, names in self.members.items() if rel in names), None)

    def as_dict(self) -> dict[str, list[str]]:
        return {t: list(v) for t, v in self.members.items()}


class _Stop(Exception):
    """Raised after the first decoder layer ran: the rest of the forward is not needed."""


@torch.no_grad()
def resolve_tensor_types(model: Any) -> TensorTypes:
    """The tensor types of `model` (a transformers causal LM), traced on one short forward."""
    prefix, layers = decoder_layers(model)
    layer = layers[0]
    linears = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
    if len(linears) < 4:
        raise InputError(f"{type(model).__name__}: its decoder layer has {len(linears)} nn.Linear module(s) "
                         f"({', '.join(linears) or 'none'}); the tensor types (qkv, o, up, down) need separate "
                         "attention and FFN linears")
    calls: list[tuple[str, torch.Tensor]] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args, n=n: calls.append((n, args[0].detach())))
             for n, m in linears.items()]

    def stop(*_: Any) -> None:
        raise _Stop

    hooks.append(layer.register_forward_hook(stop))
    device = next(model.parameters()).device
    ids = torch.ones((1, 4), dtype=torch.long, device=device)
    try:
        model(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
    order: list[str] = []
    inputs: dict[str, torch.Tensor] = {}
    for name, x in calls:
        if name not in inputs:
            order.append(name)
            inputs[name] = x
    if not order:
        raise InputError(f"{type(model).__name__}: no linear of its first decoder layer ran in a forward pass")

    def same_input(a: str, b: str) -> bool:
        x, y = inputs[a], inputs[b]
        return x is y or (x.shape == y.shape and bool(torch.equal(x, y)))

    first = order[0]
    block = first.split(".")[0]
    if block == first:
        raise InputError(f"{type(model).__name__}: the first linear called ({first}) is not inside an attention "
                         "block module, so the attention input and output cannot be told apart")
    attn = [n for n in order if n.split(".")[0] == block]
    ffn = [n for n in order if n.split(".")[0] != block]
    members = {
        "qkv": tuple(n for n in attn if same_input(n, first)),
        "o": tuple(n for n in attn if not same_input(n, first)),
        "up": tuple(n for n in ffn if same_input(n, ffn[0])) if ffn else (),
        "down": tuple(n for n in ffn if not same_input(n, ffn[0])) if ffn else (),
    }
    empty = [t for t in TENSOR_TYPES if not members[t]]
    if empty:
        raise InputError(f"{type(model).__name__}: found no linear of tensor type(s) {', '.join(empty)} (linears "
                         f"called in order: {', '.join(order)}); use layer-name globs instead")
    return TensorTypes(prefix, len(layers), members)


def is_glob(key: str) -> bool:
    """A key of a per-tensor activation mapping that names layers (a glob) rather than a tensor type."""
    return bool(_GLOB_CHARS & set(key))


def check_activation_spec(spec: Any) -> Any:
    """Validate `quantization.activations` without a model: a format name, or a mapping from tensor
    types (qkv, o, up, down) or layer-name globs to format names."""
    from nmx import formats

    if isinstance(spec, str):
        formats.get(spec)
        return spec
    if not isinstance(spec, Mapping) or not spec:
        raise InputError("give a format name or a mapping {qkv: FORMAT, o: ..., up: ..., down: ...}")
    for key, fmt in spec.items():
        if not isinstance(key, str) or not (key in TENSOR_TYPES or is_glob(key)):
            raise InputError(f"unknown tensor type {key!r}; use one of {', '.join(TENSOR_TYPES)} "
                             "or a layer-name glob such as '*.mlp.down_proj'")
        if not isinstance(fmt, str):
            raise InputError(f"{key}: expected a format name, got {fmt!r}")
        try:
            formats.get(fmt)
        except NmxError as err:
            raise InputError(f"{key}: {err}") from None
    return spec


def activation_formats(model: Any, spec: Any, targets: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """Full linear name -> activation format, for `quantization.activations` = `spec`.

    A format name applies to every linear matching `targets` (the recipe's globs). A mapping assigns
    tensor types first (their linears resolved from the model, restricted to `targets` when given),
    then layer-name globs, which override the types on the linears they match."""
    if spec is None:
        return {}
    check_activation_spec(spec)
    if isinstance(spec, str):
        return {name: spec for name in match_linears(model, list(targets or ()))}
    allowed = set(match_linears(model, list(targets))) if targets else None
    out: dict[str, str] = {}
    types = None
    for key, fmt in spec.items():
        if key in TENSOR_TYPES:
            types = types or resolve_tensor_types(model)
            names = [n for n in types.linears(key) if allowed is None or n in allowed]
            if not names:
                raise InputError(f"activations.{key}: no targeted linear reads tensor type {key} "
                                 f"(its linears: {', '.join(types.members[key])}; targets: {list(targets or [])})")
            out.update({n: fmt for n in names})
    for key, fmt in spec.items():
        if key not in TENSOR_TYPES:
            out.update({n: fmt for n in match_linears(model, [key])})
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return dict(sorted(out.items(), key=lambda kv: order[kv[0]]))


def linear_types(model: Any, names: list[str]) -> dict[str, str | None]:
    """The tensor type of each named linear (None where it is none of the four, or the model's types
    cannot be resolved)."""
    try:
        types = resolve_tensor_types(model)
    except Exception as err:  # an annotation only (the bops block): never fail a run for it
        log.debug("tensor types of %s not resolved: %s", type(model).__name__, err)
        return dict.fromkeys(names)
    return {n: types.type_of(n) for n in names}
