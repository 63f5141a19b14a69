"""`nmx sweep`: many recipes (a grid and/or a list of points, each priced on the recipe's hardware)
run as Ray tasks, cached per point, reported as one table, Pareto plots and one HTML file.

    from nmx.sweep import load_sweep, run_sweep
    run = run_sweep(load_sweep(Path("examples/sweeps/nm_formats.yaml")), Path("out"))

Parts: `spec` (the sweep file -> validated points), `driver` (outputs, Ray, the scheduling loop),
`worker` (one point inside a Ray worker), `cache` (OUT/points/<key>.json), `report` (table, plots,
HTML), `cli` (the command).

Why Ray core tasks, not Ray Tune. A sweep point is one deterministic function call — recipe in,
result record out — with nothing to stop early and nothing to search, so what Tune adds (trial
schedulers, search algorithms, per-trial checkpoints and its experiment folder) is machinery we
would not use, while what we need Tune does not give in the shape we need:

- resumption: Tune resumes *an experiment* from its own state folder (`Tuner.restore`); a sweep
  must resume by *content*: a point is done when a result for its resolved recipe exists, whatever
  sweep file, grid order or earlier run produced it. That is a cache keyed by the recipe's hash,
  which we need anyway, and with it a re-run simply submits the missing points;
- resources: `ray.remote(...).options(num_cpus=, num_gpus=)` per task is the whole of it; Ray's
  scheduler places the tasks on any node of the cluster, and retries a task whose worker died
  (`max_retries=1`); an application error comes back as that point's failure;
- progress: the driver holds one future per running point and `ray.wait`s on them, so done /
  running / failed counts and the estimate come from the futures, printed by the CLI on stderr
  (Tune's reporters print tables on stdout);
- reuse: a task's worker process outlives the task (`max_calls=0`), so the process keeps the model
  it loaded and the pruned weights it computed for the next points (see `worker`); Tune runs each
  trial in its own actor unless actors are reused, which gives the same with more moving parts.

The driver keeps at most as many points in flight as the cluster can run at once (it looks again
every few seconds, for autoscalers), so "running" means running, and an interrupted sweep has only
those to cancel.
"""

from typing import Any

_EXPORTS = {"Outcome": "driver", "State": "driver", "SweepRun": "driver", "run_sweep": "driver",
            "Point": "spec", "Sweep": "spec", "load_sweep": "spec", "recipe_key": "spec"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # lazy: `nmx --help` does not import torch through here
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"nmx.sweep.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'nmx.sweep' has no attribute {name!r}")
