"""The driver of `nmx sweep`: decide the outputs, skip cached points, run the others on Ray, report.

    OUT/points/<key>.json   one finished point each (nmx.sweep.cache): the resumable part
    OUT/report/             table.csv, table.md, summary.json, report.html, plots/*.png, sweep.yaml:
                            rebuilt from every point at the end and replaced whole (nmx.io.OutputDir)

Order of work: the sweep file is validated (nmx.sweep.spec), then the output folder is decided, then
the texts and local model paths of the points to run are checked (when running locally), and only
then does Ray start or is joined. A sweep whose points are all cached never starts Ray.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import socket
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from nmx.errors import InputError
from nmx.io import OutputDir
from nmx.sweep.cache import PointCache
from nmx.sweep.spec import Point, Sweep

log = logging.getLogger(__name__)

#: seconds to wait for a Ray cluster given with --address (TCP first, then Ray's own handshake);
#: the environment variable NMX_RAY_CONNECT_TIMEOUT_S changes it
CONNECT_TIMEOUT_S = 30.0
#: seconds between progress updates while nothing finishes
TICK_S = 1.0
#: seconds between looks at the cluster's size (an autoscaler may add nodes)
RESIZE_S = 5.0


@dataclass
class Outcome:
    point: Point
    status: str  # "done" (computed now), "cached" (from OUT/points) or "failed"
    result: dict[str, Any] | None = None
    error: str | None = None
    worker: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    traceback: str | None = None  # of a failed point, for summary.json


@dataclass(frozen=True)
class State:
    """What the progress callback is told: counts of points, and times in seconds."""

    total: int
    done: int  # computed in this run
    cached: int
    failed: int
    running: int
    elapsed_s: float
    eta_s: float | None  # None until a point has finished
    event: str = ""  # what just happened ("done: LABEL", "failed: LABEL"), or ""


@dataclass
class SweepRun:
    out: Path
    outcomes: list[Outcome]
    files: list[Path]
    wall_s: float

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def run_sweep(
    sweep: Sweep,
    out: Path,
    address: str | None = None,
    cpus_per_point: float = 1,
    gpus_per_point: float = 0,
    overwrite: bool = False,
    progress: Callable[[State], None] | None = None,
    connect_timeout_s: float | None = None,
) -> SweepRun:
    """Run every point of `sweep` that OUT/points does not hold yet (all of them with `overwrite`),
    then write OUT/report. A failing point is reported and the others finish."""
    t0 = time.perf_counter()
    if not cpus_per_point > 0 or not gpus_per_point >= 0:
        raise InputError(f"--cpus-per-point must be above 0 and --gpus-per-point at least 0, got "
                         f"{cpus_per_point} and {gpus_per_point}")
    out = Path(out).expanduser()
    report = _decide_out(out)
    try:
        cache = PointCache(out / "points")
        outcomes: dict[str, Outcome] = {}
        todo: list[Point] = []
        for point in sweep.points:
            entry = None if overwrite else cache.load(point)
            if entry is not None:
                outcomes[point.key] = Outcome(point, "cached", entry["result"], worker=entry.get("worker"))
            else:
                todo.append(point)
        if todo:
            _run_points(todo, cache, outcomes, sweep, address, cpus_per_point, gpus_per_point, progress, t0,
                        connect_timeout_s)
        ordered = [outcomes[p.key] for p in sweep.points]
        from nmx.sweep.report import write_report

        with report as tmp:
            files = write_report(tmp, sweep, ordered, wall_s=time.perf_counter() - t0)
    except BaseException:
        report.abort()
        raise
    return SweepRun(out, ordered, [out / "report" / f for f in files], time.perf_counter() - t0)


def _decide_out(out: Path) -> OutputDir:
    """OUT must be new, empty, or a sweep's folder (points/ and report/); its report/ is replaced whole."""
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise InputError(f"--out {out} is a file; give a folder (new, empty, or an earlier sweep's)")
        others = sorted(e.name for e in out.iterdir() if not e.name.startswith(".") and e.name not in
                        ("points", "report"))
        if others:
            raise InputError(f"--out {out} holds files that are not a sweep's ({', '.join(others[:3])}); give a "
                             "new or empty folder, or an earlier sweep's folder to resume it")
        for sub in ("points", "report"):
            if (out / sub).exists() and not (out / sub).is_dir():
                raise InputError(f"--out {out}: {out / sub} is a file, not a sweep's folder")
    return OutputDir(out / "report", overwrite=True, what="--out")


# ---------------------------------------------------------------- before Ray


def _check_locally(points: list[Point]) -> None:
    """On this machine (a local sweep): every text loads and every model path exists, before Ray starts."""
    from nmx.model.sources import BUILTIN, _looks_like_path
    from nmx.runner import check_texts

    seen: set[Any] = set()
    for p in points:
        r = p.recipe
        texts = (r.evaluation.text, r.calibration.text if r.sparsity is not None else None)
        if texts not in seen:
            seen.add(texts)
            try:
                check_texts(r)
            except InputError as err:
                raise InputError(f"point {p.index} ({p.label}): {err}") from None
        if r.model not in BUILTIN and (_looks_like_path(r.model) or Path(r.model).expanduser().exists()):
            if not Path(r.model).expanduser().exists():
                raise InputError(f"point {p.index} ({p.label}): model path does not exist: {r.model}")
    _prepare_builtin(points)


def _prepare_builtin(points: list[Point]) -> None:
    """Fetch and convert the built-in model here, once, if a point uses it and the cache lacks it:
    the workers would otherwise all build the same cache folder at the same time."""
    from nmx.io import cache_dir
    from nmx.model import fetch
    from nmx.model.sources import DEFAULT_MODEL, _converted_problem, load_model

    if any(p.recipe.model == DEFAULT_MODEL for p in points):
        if _converted_problem(cache_dir() / DEFAULT_MODEL / "hf", fetch.GGUF_SHA256) is not None:
            log.info("preparing %s in the cache before the workers start", DEFAULT_MODEL)
            load_model(DEFAULT_MODEL, "cpu")


def _local_capacity_check(cpus: float, gpus: float) -> None:
    """Refuse, before Ray starts, a point that no local Ray could place."""
    try:
        have = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        have = os.cpu_count() or 1
    if cpus > have:
        raise InputError(f"--cpus-per-point {cpus:g}: this machine has {have} CPUs; give at most {have} "
                         "(or join a larger cluster with --address)")
    if gpus > 0:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus > n:
            raise InputError(f"--gpus-per-point {gpus:g}: this machine has {n} GPU{'s' * (n != 1)} that torch "
                             "can use; give at most that (0 runs on the CPU)")


# ---------------------------------------------------------------- joining or starting Ray


def _split_address(address: str) -> tuple[str, int] | None:
    """(host, port) of HOST:PORT or ray://HOST:PORT; None for `auto` / `local`."""
    if address in ("auto", "local"):
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--address {address}: give HOST:PORT of a Ray head (e.g. 10.0.0.5:6379), "
                         "ray://HOST:PORT (Ray Client) or auto")
    return host, int(port)


#: what an HTTP/2 client sends first; a gRPC server (a Ray head's GCS, Ray Client) answers with SETTINGS
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _probe(hostport: tuple[str, int], timeout_s: float, what: str) -> None:
    """Fail fast unless a gRPC server (as a Ray head is) answers at `hostport`: ray.init itself
    retries an unreachable or wrong address for minutes."""
    try:
        sock = socket.create_connection(hostport, timeout=timeout_s)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise InputError(f"{what}: cannot reach a Ray head there ({reason}); start one with `ray start --head` "
                         "or check the host and port") from None
    try:
        sock.sendall(_HTTP2_PREFACE)
        reply = b""
        while len(reply) < 9:
            chunk = sock.recv(9 - len(reply))
            if not chunk:
                break
            reply += chunk
    except OSError:  # a timeout or a reset
        reply = b""
    finally:
        sock.close()
    if len(reply) < 9 or reply[3] != 4:
        raise InputError(f"{what}: something answers there, but not as a Ray head does (no gRPC reply within "
                         f"{timeout_s:g} s); give the head's GCS port (6379 by default) or ray://HOST:10001")


def connect(address: str | None, timeout_s: float | None = None) -> bool:
    """Start a local Ray (address None; RAY_ADDRESS, when set, is joined instead) or join the cluster
    at `address`, waiting at most `timeout_s`. True when this call started or joined Ray (and the
    caller shuts it down); False when this process was already connected."""
    import ray

    if timeout_s is None:
        try:
            timeout_s = float(os.environ.get("NMX_RAY_CONNECT_TIMEOUT_S", CONNECT_TIMEOUT_S))
        except ValueError:
            raise InputError("NMX_RAY_CONNECT_TIMEOUT_S must be a number of seconds, got "
                             f"{os.environ['NMX_RAY_CONNECT_TIMEOUT_S']!r}") from None
    if ray.is_initialized():
        if address is not None:
            log.warning("Ray is already initialized in this process; --address %s is not used", address)
        return False
    kw: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        ray.init(address="local", **kw)
        return True
    target = address or os.environ["RAY_ADDRESS"]
    what = "--address" if address is not None else "RAY_ADDRESS"
    hostport = _split_address(target)
    if hostport is not None:
        _probe(hostport, min(timeout_s, 10.0), f"{what} {target}")
    kw.pop("include_dashboard")  # only for a cluster this process starts
    box: dict[str, Any] = {}

    def join() -> None:
        try:
            ray.init(address=target, **kw)
            box["ok"] = True
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = err

    thread = threading.Thread(target=join, name="nmx-ray-connect", daemon=True)
    with _fd2_held() as held:  # Ray's C++ client logs each failed retry on stderr
        thread.start()
        thread.join(timeout_s)
        held["keep"] = thread.is_alive()  # it goes on retrying (and logging) until the process ends
    if thread.is_alive():
        raise InputError(f"{what} {target}: the Ray head there did not let this process join within "
                         f"{timeout_s:.0f} s{_auth_hint()}")
    if "error" in box:
        err = box["error"]
        first = " ".join(str(err).split("\n")[0].split())[:200]
        raise InputError(f"{what} {target}: cannot join the Ray cluster ({type(err).__name__}: {first})"
                         f"{_auth_hint()}") from None
    sys.stderr.write(held.get("text", ""))  # joined: what Ray said is shown after all
    return True


def _auth_hint() -> str:
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return "; check that RAY_AUTH_TOKEN (or ~/.ray/auth_token) holds the cluster's token"
    return ("; if the cluster uses token authentication (Ray 2.59+ turns it on for clusters started by "
            "ray.init, 2.61+ for all), set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN or ~/.ray/auth_token here")


@contextmanager
def _fd2_held() -> Iterator[dict[str, Any]]:
    """Send file descriptor 2 to a temporary file while inside; its text is in the yielded dict after.
    With `held["keep"]` set inside, fd 2 stays there (for a thread that goes on writing into it until
    the process ends) and `sys.stderr` writes to the real stderr instead."""
    held: dict[str, Any] = {}
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2
        yield held
        return
    tmp = tempfile.TemporaryFile()
    os.dup2(tmp.fileno(), 2)
    try:
        yield held
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        tmp.seek(0)
        held["text"] = tmp.read().decode("utf-8", "replace")
        if held.get("keep"):
            sys.stderr = io.TextIOWrapper(os.fdopen(saved, "wb"), encoding="utf-8", line_buffering=True)
        else:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.close()


def capacity(cpus: float, gpus: float) -> int:
    """How many points the alive nodes of the cluster can run at once."""
    import ray

    total = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        fits = math.floor(res.get("CPU", 0) / cpus + 1e-9)
        if gpus > 0:
            fits = min(fits, math.floor(res.get("GPU", 0) / gpus + 1e-9))
        total += fits
    return total


# ---------------------------------------------------------------- running the points


def _group(point: Point) -> str:
    """Points of one group share a model and its pruning (see nmx.sweep.worker)."""
    r = point.recipe
    return json.dumps([r.model, r.device, r.sparsity.model_dump(mode="json") if r.sparsity else None,
                       r.calibration.model_dump(mode="json") if r.sparsity else None], sort_keys=True)


def _run_points(todo: list[Point], cache: PointCache, outcomes: dict[str, Outcome], sweep: Sweep,
                address: str | None, cpus: float, gpus: float, progress: Callable[[State], None] | None,
                t0: float, connect_timeout_s: float | None) -> None:
    try:
        import ray
    except ImportError:
        raise InputError(f"{len(todo)} point{'s' * (len(todo) != 1)} to run, and nmx sweep runs them on Ray, "
                         "which is not installed here: pip install 'nmx[sweep]'") from None
    local = address is None and not os.environ.get("RAY_ADDRESS")
    if local:
        _check_locally(todo)
        _local_capacity_check(cpus, gpus)

    started = connect(address, connect_timeout_s)
    try:
        _loop(todo, cache, outcomes, len(sweep.points), cpus, gpus, progress, t0, started and local)
    finally:
        if started:
            ray.shutdown()


def _loop(todo: list[Point], cache: PointCache, outcomes: dict[str, Outcome], total: int, cpus: float,
          gpus: float, progress: Callable[[State], None] | None, t0: float, local: bool) -> None:
    import ray

    from nmx.sweep.worker import run_point

    remote = ray.remote(max_calls=0, max_retries=1)(run_point).options(num_cpus=cpus, num_gpus=gpus)
    cap = capacity(cpus, gpus)
    if cap == 0:
        if local:
            raise InputError(f"no point fits the local Ray ({cpus:g} CPUs and {gpus:g} GPUs per point)")
        log.warning("no node of the cluster has %g CPUs and %g GPUs free for a point now; the points wait "
                    "for the cluster (an autoscaler) to offer them", cpus, gpus)
        cap = len(todo)
    order = {g: i for i, g in enumerate(dict.fromkeys(_group(p) for p in todo))}
    pending = sorted(todo, key=lambda p: order[_group(p)])  # a group's points one after another
    in_flight: dict[Any, Point] = {}
    cached = sum(o.status == "cached" for o in outcomes.values())
    counts = {"done": 0, "failed": 0}
    resized = time.perf_counter()
    cwd = os.getcwd()

    def tell(event: str = "") -> None:
        if progress is None:
            return
        elapsed = time.perf_counter() - t0
        finished = counts["done"] + counts["failed"]
        left = total - cached - finished
        eta = elapsed / finished * left if finished else None
        progress(State(total, counts["done"], cached, counts["failed"], len(in_flight), elapsed, eta, event))

    def take() -> Point:
        busy = {_group(p) for p in in_flight.values()}
        for i, p in enumerate(pending):  # prefer a group no worker is pruning right now
            if _group(p) not in busy:
                return pending.pop(i)
        return pending.pop(0)

    try:
        tell()
        while pending or in_flight:
            if time.perf_counter() - resized > RESIZE_S:
                cap, resized = max(cap, capacity(cpus, gpus)), time.perf_counter()
            while pending and len(in_flight) < cap:
                point = take()
                in_flight[remote.remote(point.recipe, cwd)] = point
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=TICK_S)
            if ready:
                ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0)
            for ref in ready:
                point = in_flight.pop(ref)
                outcome = _collect(ray, ref, point, cache)
                outcomes[point.key] = outcome
                counts[outcome.status] += 1
                tell(f"{outcome.status}: {point.label}")
            if not ready:
                tell()
    except BaseException:
        for ref in in_flight:  # a running point is lost; the finished ones are in the cache
            try:
                ray.cancel(ref)  # KeyboardInterrupt in the task: its worker (and its model) lives on
            except Exception:  # noqa: BLE001 - already finished or gone
                pass
        raise


def _collect(ray: Any, ref: Any, point: Point, cache: PointCache) -> Outcome:
    try:
        reply = ray.get(ref)
    except ray.exceptions.RayError as err:  # the worker died (memory, a crash) or the node left
        first = " ".join(str(err).strip().split("\n")[0].split())[:300]
        reply = {"ok": False, "error": f"{type(err).__name__}: {first}", "worker": None, "warnings": []}
    for line in reply.get("warnings") or []:
        log.warning("point %d (%s): %s", point.index, point.label, line)
    if not reply.get("ok"):
        log.warning("point %d (%s) failed: %s", point.index, point.label, reply.get("error"))
        return Outcome(point, "failed", error=reply.get("error"), worker=reply.get("worker"),
                       warnings=reply.get("warnings") or [], traceback=reply.get("traceback"))
    cache.store(point, reply["result"], reply.get("worker") or {})
    return Outcome(point, "done", reply["result"], worker=reply.get("worker"), warnings=reply.get("warnings") or [])
