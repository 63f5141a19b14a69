"""Sequential layer-wise calibration, the way SparseGPT and Wanda run it.

The calibration samples are embedded and captured at the input of the first decoder layer.
Then, one layer at a time: the layer is run on every sample with hooks that gather what
the method needs (input norms, Hessians) for its linear layers, the layer is modified
(pruned, quantized), and run again to produce the inputs of the next layer. Only one layer's
inputs and outputs are alive at a time, so memory does not grow with depth.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from nmx.model.layers import decoder_layers

log = logging.getLogger(__name__)


class _Captured(Exception):
    pass


@torch.inference_mode()
def capture_first_layer_inputs(model: Any, samples: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Hidden states entering layer 0 for each sample (batch of 1 each), and the keyword
    arguments the layers are called with (rotary embeddings, masks), shared by all samples."""
    _, layers = decoder_layers(model)
    hidden: list[torch.Tensor] = []
    shared: dict[str, Any] = {}

    def grab(_module, args, kwargs):
        hidden.append((args[0] if args else kwargs["hidden_states"]).detach())
        shared.update({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _Captured

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for sample in samples:
            try:
                model(sample.unsqueeze(0).to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    shared["use_cache"] = False
    shared.pop("past_key_values", None)
    shared.pop("past_key_value", None)
    return hidden, shared


def _output(result: Any) -> torch.Tensor:
    return result[0] if isinstance(result, (tuple, list)) else result


@torch.inference_mode()
def run_layer(layer: torch.nn.Module, inputs: list[torch.Tensor], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    return [_output(layer(x, **kwargs)).detach() for x in inputs]


def sequential(
    model: Any,
    samples: torch.Tensor,
    process: Callable[[int, str, torch.nn.Module, Callable[[], None]], None],
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """For each decoder layer i (prefix 'model.layers.i'), call process(i, prefix, layer, feed):
    `feed()` runs the layer on all current inputs (hooks the caller registered see them); after
    `process` returns, the modified layer produces the next layer's inputs."""
    prefix, layers = decoder_layers(model)
    inputs, kwargs = capture_first_layer_inputs(model, samples)
    for i, layer in enumerate(layers):
        process(i, f"{prefix}.{i}", layer, lambda layer=layer, inputs=inputs: run_layer(layer, inputs, kwargs))
        inputs = run_layer(layer, inputs, kwargs)
        if progress:
            progress(i + 1, len(layers))
