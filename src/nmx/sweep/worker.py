"""What runs inside a Ray worker process: one sweep point, through `nmx.runner.run`.

A Ray worker process runs many points one after another (the remote function is declared with
`max_calls=0`, so GPU workers are kept too). The process keeps the last model it loaded, pristine,
and gives each point a fresh copy: a worker loads a model once per sweep (once per Ray job, in fact).
It also keeps the pruned weights of the last pruning configurations it computed
(`nmx.model.compress.SHARED_PRUNING`): points that differ only after pruning — weight formats, the KV
cache, the evaluation, the hardware — calibrate and prune once per worker. (Calibration statistics
themselves cannot be shared between different pruning configurations: the sequential calibration
feeds each layer the outputs of the already pruned layers before it.)

Errors are returned, not raised: a point's failure is data for the table (its type and message on one
line); only a dying worker process reaches the driver as a Ray error.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
import traceback
from collections import OrderedDict
from typing import Any

#: pruning configurations a worker keeps (each about the size of the model's linear weights)
SHARED_PRUNINGS = 2

_state: dict[str, Any] = {"model_key": None, "pristine": None, "pruned": None, "loads": 0}


class _Bounded(OrderedDict):
    """A mapping that forgets its oldest entries beyond `limit`."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.hits = 0  # reads: each is a pruning a point did not compute

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        self.move_to_end(key)
        self.hits += 1
        return value


class _Collect(logging.Handler):
    """nmx's warnings during a point, kept for the driver to print with the point's label."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(" ".join(record.getMessage().split()))


def _one_line(err: BaseException, limit: int = 400) -> str:
    text = " ".join(str(err).split())
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fresh_model(spec: str, device: str) -> tuple[Any, bool]:
    """A copy of the pristine model `spec` on `device`, loading it only when this process has another."""
    from nmx.model.sources import LoadedModel, load_model

    key = (spec, device)
    loaded_now = False
    if _state["model_key"] != key:
        _state.update(model_key=None, pristine=None, pruned=None)  # free the old one before loading
        _state["pristine"] = load_model(spec, device)
        _state["pruned"] = _Bounded(SHARED_PRUNINGS)
        _state["model_key"] = key
        _state["loads"] += 1
        loaded_now = True
    p = _state["pristine"]
    return LoadedModel(copy.deepcopy(p.model), p.tokenizer, p.name, dict(p.source), list(p.notes)), loaded_now


def _threads() -> None:
    """Torch's threads = the CPUs Ray gave this point (the process may have started for another)."""
    try:
        import ray
        import torch

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus:
            torch.set_num_threads(max(1, int(cpus)))
    except Exception:  # noqa: BLE001 - not inside Ray: leave torch's default
        pass


def run_point(recipe: Any, cwd: str | None = None) -> dict[str, Any]:
    """Run one recipe; {"ok": True, "result": ..., "worker": ...} or {"ok": False, "error": ..., ...}."""
    from nmx.model.compress import SHARED_PRUNING
    from nmx.runner import run

    t0 = time.perf_counter()
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # relative paths in a recipe mean what they mean to `nmx run` there
    _threads()
    collect = _Collect()
    logger = logging.getLogger("nmx")
    logger.addHandler(collect)
    worker = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        loaded, loaded_now = _fresh_model(recipe.model, recipe.device)
        memo = _state["pruned"]
        hits = memo.hits
        token = SHARED_PRUNING.set(memo)
        try:
            result = run(recipe, loaded=loaded)
        finally:
            SHARED_PRUNING.reset(token)
        worker.update(loaded_model=loaded_now, reused_pruning=memo.hits > hits, point_s=time.perf_counter() - t0)
        return {"ok": True, "result": result, "worker": worker, "warnings": collect.lines}
    except Exception as err:  # noqa: BLE001 - any failure of one point is that point's result
        worker.update(point_s=time.perf_counter() - t0)
        return {"ok": False, "error": _one_line(err), "traceback": traceback.format_exc(), "worker": worker,
                "warnings": collect.lines}
    finally:
        logger.removeHandler(collect)
