"""Weight and activation fake quantization on nn.Linear layers (model surgery lives here).

Weights are quantized along the input (reduction) dim, the last dim of `weight`. With
sparsity, the mask is applied first: the scales see only the kept weights and every
format maps 0 to 0, so pruned weights stay exactly zero. Activations (the input of
each targeted linear) are quantized on the fly, along their last dim, by a forward
pre-hook; removing the hooks restores the model.
"""

from __future__ import annotations

from typing import Any

import torch

from nmx import formats


@torch.no_grad()
def quantize_weights(linears: dict[str, torch.nn.Linear], fmt_name: str) -> None:
    """Replace each weight by its fake-quantized value, in place (zeros stay zero)."""
    fmt = formats.get(fmt_name)
    for module in linears.values():
        module.weight.copy_(fmt.quantize(module.weight.detach().float(), dim=-1).to(module.weight.dtype))


def attach_activation_quant(linears: dict[str, torch.nn.Linear], fmt_name: str) -> list[Any]:
    """Quantize the input of every linear in `linears`; returns the hook handles."""
    fmt = formats.get(fmt_name)

    def hook(_module, args):
        x = args[0]
        return (fmt.quantize(x, dim=-1).to(x.dtype), *args[1:])

    return [m.register_forward_pre_hook(hook) for m in linears.values()]


def attach_activation_formats(model: torch.nn.Module, by_name: dict[str, str]) -> list[Any]:
    """Quantize the input of each linear named in `by_name` (full name -> format name, e.g. from
    `nmx.quant.tensor_types.activation_formats`); returns the hook handles."""
    modules = dict(model.named_modules())
    handles: list[Any] = []
    for fmt_name in dict.fromkeys(by_name.values()):
        handles += attach_activation_quant({n: modules[n] for n, f in by_name.items() if f == fmt_name}, fmt_name)
    return handles
