"""Applying number formats to a model: fake-quantized weights and activations of linear layers."""

from nmx.quant.apply import attach_activation_formats, attach_activation_quant, quantize_weights

__all__ = ["attach_activation_formats", "attach_activation_quant", "quantize_weights"]
