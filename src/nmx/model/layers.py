"""Finding the decoder layers of a causal LM and the linear layers a recipe targets."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import torch

from nmx.errors import InputError

DEFAULT_TARGETS = ("*.self_attn.*_proj", "*.mlp.*_proj")


def decoder_layers(model: Any) -> tuple[str, torch.nn.ModuleList]:
    """(prefix, layers): the ModuleList holding the transformer blocks (e.g. 'model.layers')."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0 and (n is None or len(module) == n):
            return name, module
    raise InputError(f"cannot find the decoder layers of {type(model).__name__}")


def match_linears(model: Any, patterns: list[str] | tuple[str, ...]) -> dict[str, torch.nn.Linear]:
    """Every nn.Linear whose full name matches one of the glob patterns; a pattern that matches
    nothing is an error (it is almost always a typo)."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    chosen: dict[str, torch.nn.Linear] = {}
    for pattern in patterns:
        hits = {name: m for name, m in linears.items() if fnmatchcase(name, pattern)}
        if not hits:
            sample = ", ".join(list(linears)[:4])
            raise InputError(f"target {pattern!r} matches no linear layer (names look like: {sample}, ...)")
        chosen.update(hits)
    return dict(sorted(chosen.items(), key=lambda kv: list(linears).index(kv[0])))


def with_cache(model: Any, cache: Any) -> dict[str, Any]:
    """The keyword arguments that hand `cache` to a Hugging Face model's forward: transformers >= 5.2x
    names it `cache`, earlier versions `past_key_values` (and silently drop an unknown keyword, which
    would score without the cache)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"cache" if "cache" in params else "past_key_values": cache, "use_cache": True}

