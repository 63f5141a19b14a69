"""Training checkpoints: safetensors for every tensor, JSON for every scalar; no pickle anywhere.

A checkpoint is a folder `RUN/checkpoints/step-00000050/` holding

- `state.safetensors`: the model's state dict (`model.<key>`; a tied lm_head stored once), the masks
  (`mask.<layer>`, `bmask.<layer>` for bidirectional backward masks), the AdamW moments
  (`opt.exp_avg.<param>`, `opt.exp_avg_sq.<param>`) and the RNG states (`rng.cpu`, `rng.cuda.<i>`);
- `state.json` (written last): the step, the data position, the recipe hash, AdamW's per-parameter step
  counts, the mask controller's scalars, and the size and sha256 of `state.safetensors`.

It is written into a private `.step-…tmp-…` folder beside it and renamed into place in one step (signals
held off), so the newest complete checkpoint is never replaced by a half-written one; older checkpoints
are removed only after the new one is in place. Reading verifies the size and sha256 first: a truncated
or damaged checkpoint is a one-line InputError, never a crash in the middle of loading.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from nmx.errors import InputError
from nmx.io import _signals_held, set_normal_mode
from nmx.model.fetch import sha256_of

CHECKPOINTS = "checkpoints"
STATE = "state.safetensors"
META = "state.json"
_NAME = re.compile(r"step-(\d{8})")


def recipe_hash(recipe_dict: dict[str, Any]) -> str:
    """sha256 of the recipe's canonical JSON (every field, defaults filled in)."""
    return hashlib.sha256(json.dumps(recipe_dict, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of the checkpoints in RUN/checkpoints, oldest first (temporary folders ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.fullmatch(p.name))]
    return sorted(found)


def save_checkpoint(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write checkpoint `step` atomically; keep the newest `keep` checkpoints."""
    from safetensors.torch import save_file

    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / STATE))
        _fsync(tmp / STATE)
        record = {**meta, "step": step, "files": {STATE: {"bytes": (tmp / STATE).stat().st_size,
                                                          "sha256": sha256_of(tmp / STATE)}}}
        (tmp / META).write_text(json.dumps(record, indent=1) + "\n")
        _fsync(tmp / META)
        for f in (tmp / STATE, tmp / META):
            set_normal_mode(f)
        set_normal_mode(tmp, folder=True)
        with _signals_held():
            old = None
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=root))
                final.rename(old / "previous")
            tmp.rename(final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, path in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    return final


def check_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's state.json after checking that state.safetensors is whole (size and sha256);
    InputError naming what is wrong otherwise."""
    path = Path(path)

    def bad(why: str) -> InputError:
        older = [s for s, p in list_checkpoints(path.parent.parent) if p != path]
        hint = (f"; delete {path} to resume from the checkpoint of step {older[-1]}" if older
                else f"; delete {path} to start over from step 0")
        return InputError(f"checkpoint {path} is unusable: {why}{hint}")

    meta_path, state_path = path / META, path / STATE
    if not meta_path.is_file():
        raise bad(f"{META} is missing (the checkpoint was cut short)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError, RecursionError) as err:
        raise bad(f"{META} is not readable JSON ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict) or STATE not in meta["files"]:
        raise bad(f"{META} does not describe the checkpoint's files")
    if not state_path.is_file():
        raise bad(f"{STATE} is missing")
    want = meta["files"][STATE]
    size = state_path.stat().st_size
    if size != want.get("bytes"):
        raise bad(f"{STATE} is truncated or damaged ({size} of {want.get('bytes')} bytes)")
    if sha256_of(state_path) != want.get("sha256"):
        raise bad(f"{STATE} does not match its sha256 (damaged on disk)")
    return meta


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a checked checkpoint folder."""
    from safetensors.torch import load_file

    meta = check_checkpoint(path)
    try:
        tensors = load_file(str(Path(path) / STATE))
    except Exception as err:  # noqa: BLE001 - a damaged file can fail in any way
        raise InputError(f"checkpoint {path}: {STATE} cannot be read ({err})") from None
    return tensors, meta


# ---------------------------------------------------------------- what goes in


def model_tensors(model: Any) -> dict[str, torch.Tensor]:
    """The state dict under `model.`; a tied lm_head is left out (it is the embedding)."""
    state = model.state_dict()
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return {f"model.{k}": v for k, v in state.items()}


def load_model_tensors(model: Any, tensors: dict[str, torch.Tensor], where: Path) -> None:
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise InputError(f"checkpoint {where} does not fit this model: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}")


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> tuple[dict, dict]:
    """AdamW's moments as tensors and its per-parameter step counts as JSON numbers."""
    tensors, steps = {}, {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if not st:
                continue
            name = names[id(p)]
            tensors[f"opt.exp_avg.{name}"] = st["exp_avg"]
            tensors[f"opt.exp_avg_sq.{name}"] = st["exp_avg_sq"]
            steps[name] = float(st["step"])
    return tensors, steps


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str], tensors: dict[str, torch.Tensor],
                           steps: dict[str, float]) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            if name not in steps:
                continue
            optimizer.state[p] = {
                "step": torch.tensor(steps[name], dtype=torch.float32),
                "exp_avg": tensors[f"opt.exp_avg.{name}"].to(p.device, p.dtype).clone(),
                "exp_avg_sq": tensors[f"opt.exp_avg_sq.{name}"].to(p.device, p.dtype).clone(),
            }


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def load_rng_tensors(tensors: dict[str, torch.Tensor]) -> None:
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    cuda = sorted((int(k.split(".")[-1]), v) for k, v in tensors.items() if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([v for _, v in cuda][: torch.cuda.device_count()])
