"""A sweep point in this process, without Ray (`run_point` is what each Ray task calls): the model is
loaded once per process, and pruned weights are reused by points that differ only after pruning, with
the numbers of a fresh `nmx run` (the oracle: nmx.runner.run, which loads the model and prunes anew)."""

import pytest
import torch

from nmx.runner import run
from nmx.sweep import worker
from nmx.sweep.spec import load_sweep


@pytest.fixture
def fresh_worker(monkeypatch):
    """An empty worker state, and one torch thread as in a Ray worker with 1 CPU (fast for a tiny model)."""
    monkeypatch.setattr(worker, "_state", {"model_key": None, "pristine": None, "pruned": None, "loads": 0})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_model_loaded_once_and_pruning_shared(write_sweep, fresh_worker):
    sweep = load_sweep(write_sweep("grid:\n  quantization.weights: [null, mxfp4]\n"
                                   "  sparsity.method: [wanda]\n  sparsity.pattern: ['2:4']\n"
                                   "points:\n  - {name: magnitude, sparsity.method: magnitude}\n"))
    replies = [worker.run_point(p.recipe) for p in sweep.points]
    assert all(r["ok"] for r in replies), [r.get("error") for r in replies]
    assert [r["worker"]["loaded_model"] for r in replies] == [True, False, False]
    assert [r["worker"]["reused_pruning"] for r in replies] == [False, True, False]
    assert worker._state["loads"] == 1
    shared = sweep.points[1]  # its pruned weights came from the first point's
    direct = run(shared.recipe)
    assert replies[1]["result"]["perplexity"] == direct["perplexity"]
    assert replies[1]["result"]["bits_per_weight"] == direct["bits_per_weight"]
    assert replies[1]["result"]["weight_sparsity"] == direct["weight_sparsity"]
    assert replies[0]["result"]["perplexity"] != direct["perplexity"]  # bf16 and MXFP4 do differ


def test_a_failing_point_is_a_reply_not_an_exception(write_sweep, fresh_worker):
    sweep = load_sweep(write_sweep("points:\n  - {sparsity.method: wanda, calibration.seq_len: 100000}\n"))
    reply = worker.run_point(sweep.points[0].recipe)
    assert not reply["ok"] and reply["error"].startswith("InputError: calibration text")
    assert "Traceback" in reply["traceback"] and reply["warnings"]  # the context warning, kept for the driver
