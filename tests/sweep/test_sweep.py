"""Sweeps under a local Ray (one per module, 2 CPUs): a 4-point sweep whose numbers are those of
`nmx run` (the oracle: nmx.runner.run in this process), resumption from the cache after a kill (the
oracle: cache files' mtimes, and Ray not started at all when nothing is left), a corrupt cache entry
recomputed, --overwrite, a failing point that does not stop the others, and `nmx sweep --address` joining this
module's Ray from another process, as it joins any running cluster."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

import nmx.sweep.driver
from nmx.sweep import load_sweep, run_sweep
from tests.cli import run_cli

pytestmark = pytest.mark.usefixtures("local_ray")

GRID4 = "grid:\n  sparsity.method: [magnitude, wanda]\n  quantization.weights: [null, mxfp4]\n"


def _summary(out):
    return json.loads((out / "report" / "summary.json").read_text())


def _mtimes(out):
    return {p.name: p.stat().st_mtime_ns for p in (out / "points").glob("*.json")}


def _hidden(folder):
    return [p for p in folder.rglob(".*")]


def _no_ray(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("Ray was needed, but every point should come from the cache")

    monkeypatch.setattr(nmx.sweep.driver, "connect", refuse)
    monkeypatch.setattr(nmx.sweep.driver, "_loop", refuse)


def test_four_points_match_nmx_run_and_resume_from_the_cache(write_sweep, tmp_path, capsys, monkeypatch):
    from nmx.runner import run

    path = write_sweep(GRID4)
    out = tmp_path / "out"
    code, stdout, err = run_cli(["sweep", str(path), "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    assert "4/4 done" in err and "wrote" in stdout
    summary = _summary(out)
    assert [p["status"] for p in summary["points"]] == ["done"] * 4
    sweep = load_sweep(path)
    assert [p["point"] for p in summary["points"]] == [p.label for p in sweep.points]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers (1 CPU per point): the same order of float sums
    try:  # the oracle for the last point (Wanda + MXFP4); tests/sweep/test_worker.py checks them all
        direct = run(sweep.points[-1].recipe)  # the same recipe in this process, without Ray or sharing
    finally:
        torch.set_num_threads(threads)
    assert summary["points"][-1]["perplexity"] == direct["perplexity"]
    assert summary["points"][-1]["bits_per_weight"] == direct["bits_per_weight"]
    assert summary["points"][1]["bits_per_weight"] < summary["points"][0]["bits_per_weight"]  # mxfp4 < bf16

    with open(out / "report" / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["point"] for r in table] == [p.label for p in sweep.points]
    assert {"sparsity.method", "quantization.weights", "perplexity", "bits_per_weight", "kv_bytes_per_token"} <= set(
        table[0])
    md = (out / "report" / "table.md").read_text()
    assert md.count("\n| ") == 5  # header + 4 points
    html = (out / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "<table>" in html and "src=\"plots/" not in html
    assert (out / "report" / "plots" / "ppl_vs_bits_per_weight.png").read_bytes()[:4] == b"\x89PNG"
    assert not _hidden(out)

    # re-run: every point comes from the cache, Ray is not even started, nothing is rewritten
    before = _mtimes(out)
    _no_ray(monkeypatch)
    code, stdout, err = run_cli(["sweep", str(path), "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    assert [p["status"] for p in _summary(out)["points"]] == ["cached"] * 4
    assert _mtimes(out) == before


def test_corrupt_or_missing_cache_entries_are_recomputed(write_sweep, tmp_path, capsys, monkeypatch):
    path = write_sweep("grid:\n  sparsity.pattern: ['2:4', '4:8', '1:4']\n  sparsity.method: [magnitude]\n")
    out = tmp_path / "out"
    first = run_sweep(load_sweep(path), out)
    assert [o.status for o in first.outcomes] == ["done"] * 3
    keys = [o.point.key for o in first.outcomes]
    (out / "points" / f"{keys[0]}.json").write_text('{"format": "nmx-sweep-point-1", "key": ')  # cut short
    (out / "points" / f"{keys[1]}.json").unlink()
    before = _mtimes(out)
    code, _, err = run_cli(["sweep", str(path), "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    assert f"cached point {out / 'points' / keys[0]}.json" in err and "recomputing it" in err
    assert [p["status"] for p in _summary(out)["points"]] == ["done", "done", "cached"]
    after = _mtimes(out)
    assert after[f"{keys[2]}.json"] == before[f"{keys[2]}.json"] and after[f"{keys[0]}.json"] != before[
        f"{keys[0]}.json"]
    assert json.loads((out / "points" / f"{keys[0]}.json").read_text())["key"] == keys[0]

    # --overwrite: every point computed again, its cache file replaced, the report replaced whole
    before = _mtimes(out)
    code, _, err = run_cli(["sweep", str(path), "--out", str(out), "--overwrite"], capsys, monkeypatch)
    assert code == 0, err
    assert [p["status"] for p in _summary(out)["points"]] == ["done"] * 3
    assert all(_mtimes(out)[name] != t for name, t in before.items()) and not _hidden(out)


def test_killed_sweep_resumes_without_recomputing_finished_points(write_sweep, tmp_path, monkeypatch):
    """Ctrl-C once the first point has finished: the report is not written, the finished points are
    kept, and the re-run computes only the others."""
    path = write_sweep("grid:\n  sparsity.pattern: ['2:4', '4:8', '1:4', '3:4']\n  sparsity.method: [magnitude]\n")
    out = tmp_path / "out"
    sweep = load_sweep(path)

    def interrupt(state):
        if state.done >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, out, progress=interrupt)
    assert not (out / "report").exists() and not _hidden(out)
    kept = _mtimes(out)
    assert 1 <= len(kept) < 4

    events = []
    second = run_sweep(sweep, out, progress=events.append)
    statuses = {o.point.key: o.status for o in second.outcomes}
    assert sorted(statuses.values()).count("cached") == len(kept)
    assert all(statuses[name.removesuffix(".json")] == "cached" for name in kept)
    assert events[-1].done == 4 - len(kept) and events[-1].cached == len(kept) and events[-1].running == 0
    after = _mtimes(out)
    assert all(after[name] == t for name, t in kept.items()) and len(after) == 4
    assert (out / "report" / "summary.json").exists()


def test_a_failing_point_does_not_stop_the_others(write_sweep, tmp_path, capsys, monkeypatch):
    # a calibration window longer than the whole text fails inside the worker, after the model loaded
    path = write_sweep("grid:\n  sparsity.pattern: ['2:4', '4:8']\n  sparsity.method: [wanda]\n"
                       "points:\n  - {name: too long, sparsity.method: wanda, calibration.seq_len: 100000}\n")
    out = tmp_path / "out"
    code, stdout, err = run_cli(["sweep", str(path), "--out", str(out)], capsys, monkeypatch)
    assert code == 1
    assert "point 3 (too long) failed: InputError: calibration text" in err and "1 of 3 points failed" in err
    summary = _summary(out)
    assert [p["status"] for p in summary["points"]] == ["done", "done", "failed"]
    assert "not more than one window of 100000" in summary["points"][2]["error"]
    assert "Traceback" in summary["points"][2]["traceback"]
    assert "too long" in (out / "report" / "table.md").read_text()
    assert len(_mtimes(out)) == 2  # failures are not cached: a re-run tries them again

    before = _mtimes(out)
    code, _, err = run_cli(["sweep", str(path), "--out", str(out)], capsys, monkeypatch)
    assert code == 1 and [p["status"] for p in _summary(out)["points"]] == ["cached", "cached", "failed"]
    assert _mtimes(out) == before


def test_interrupted_command_says_what_is_kept(write_sweep, tmp_path, capsys, monkeypatch):
    import nmx.sweep.cli

    def interrupt(self, state):
        if state.done >= 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(nmx.sweep.cli.SweepProgress, "__call__", interrupt)
    path = write_sweep("grid:\n  sparsity.pattern: ['2:4', '4:8', '1:4']\n  sparsity.method: [magnitude]\n")
    out = tmp_path / "out"
    code, _, err = run_cli(["sweep", str(path), "--out", str(out)], capsys, monkeypatch)
    assert code == 130
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted (SIGINT): the report was not written; ") and (
        f"kept in {out / 'points'}: run the same command to resume" in lines[0]), err
    assert not (out / "report").exists() and not _hidden(out)


def _sweep_process(args, env_changes, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-m", "nmx", "sweep", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_address_joins_a_running_cluster(local_ray, write_sweep, tmp_path):
    """Another process joins this module's Ray (a one-node cluster) with --address, as it would a
    cluster's head; the points run on the cluster's workers and the command leaves it running."""
    address = local_ray.get_runtime_context().gcs_address
    path = write_sweep("points:\n  - {name: one, sparsity.method: magnitude}\n")
    out = tmp_path / "out"
    # Ray 2.59+ gives a cluster that ray.init starts token authentication; the token is in
    # ~/.ray/auth_token, where ray.init put it (a Ray without it ignores the variable)
    proc = _sweep_process([path, "--address", address, "--out", out], {"RAY_AUTH_MODE": "token"}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1/1 done" in proc.stderr and "error" not in proc.stderr.lower()
    summary = _summary(out)
    assert summary["points"][0]["status"] == "done"
    assert summary["points"][0]["worker"]["pid"] != os.getpid()  # a worker of the cluster ran it
    assert local_ray.is_initialized() and local_ray.cluster_resources().get("CPU") == 2  # still up


def test_address_without_the_token_is_one_line(local_ray, write_sweep, tmp_path):
    """Joining a token-protected cluster without the token: one line that says what to set, promptly."""
    address = local_ray.get_runtime_context().gcs_address
    path = write_sweep("points:\n  - {name: dense}\n")
    proc = _sweep_process([path, "--address", address, "--out", tmp_path / "out"],
                          {"NMX_RAY_CONNECT_TIMEOUT_S": "2"}, tmp_path)
    if proc.returncode == 0:
        pytest.skip("this Ray lets any process join (no token authentication)")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --address"), proc.stderr
    assert "RAY_AUTH_MODE=token" in lines[0] and not (tmp_path / "out").exists()
