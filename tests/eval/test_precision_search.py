"""The BOPs-greedy mantissa-length search. Oracle: brute force over a small grid with a synthetic,
monotone quality function (perplexity grows as 4^-m per tensor type); end to end on the tiny Llama."""

import json
import random

import pytest
import yaml

from nmx.errors import InputError
from nmx.eval.precision_search import (Criterion, SearchError, brute_force, check_lengths, greedy_search,
                                       sensitivity_scan)
from tests.cli import run_cli

TYPES = ("qkv", "o", "up", "down")


def _problem(macs, sens, group=64):
    def bops(lengths):
        return sum(c * (16 if m is None else 1 + m + 8 / group) for c, m in zip(macs, lengths))

    def ppl(lengths):
        return 10.0 * (1 + sum(a * 4.0 ** -m for a, m in zip(sens, lengths) if m is not None))

    return bops, ppl


@pytest.mark.parametrize("tol, expect", [(0.001, (7, 7, 6, 6)), (0.01, (6, 5, 4, 4))])
def test_greedy_finds_the_brute_force_optimum(tol, expect):
    bops, ppl = _problem([3, 1, 4, 2], [8, 2, 1, 0.25])  # qkv most sensitive, down least
    crit = Criterion(10.0, tol)
    res = greedy_search(TYPES, bops, ppl, crit, starts=range(1, 9), max_iter=32)
    best, best_bops = brute_force(TYPES, bops, ppl, crit, range(1, 9))  # 4096 points
    assert res.best.lengths == best == expect and res.best.bops == best_bops
    assert res.iterations <= 32 and res.stopped.startswith("converged")
    accepted = [p for p in res.points if p.accepted]
    assert all(a.bops > b.bops for a, b in zip(accepted, accepted[1:]))  # every acceptance improves BOPs


def test_greedy_on_random_problems_is_feasible_locally_minimal_and_never_beats_brute_force():
    equal = 0
    for seed in range(40):
        r = random.Random(seed)
        bops, ppl = _problem([r.choice([1, 2, 4, 8]) for _ in TYPES], [r.uniform(0.1, 10) for _ in TYPES])
        crit = Criterion(10.0, r.choice([0.001, 0.01, 0.05]))
        res = greedy_search(TYPES, bops, ppl, crit, starts=range(1, 9), max_iter=200)
        _, bf = brute_force(TYPES, bops, ppl, crit, range(1, 9))
        b = res.best
        assert crit.ok(ppl(b.lengths)) and b.bops >= bf - 1e-9
        for i in range(4):  # no single-bit cut of the answer passes
            cut = b.lengths[:i] + (b.lengths[i] - 1,) + b.lengths[i + 1:]
            assert b.lengths[i] == 1 or not crit.ok(ppl(cut))
        equal += b.bops == pytest.approx(bf)
    assert equal >= 20  # a greedy descent: often, not always, the optimum (measured: 26 of 40)


def test_max_iter_caps_the_evaluations():
    bops, ppl = _problem([3, 1, 4, 2], [8, 2, 1, 0.25])
    calls = []
    res = greedy_search(TYPES, bops, lambda lengths: calls.append(lengths) or ppl(lengths), Criterion(10.0, 0.01),
                        max_iter=5)
    assert res.iterations == len(calls) == 5 and "max_iter" in res.stopped
    assert calls[0] == (4, 4, 4, 4)  # the cheapest uniform start comes first


def test_all_starts_failing_is_one_clear_error():
    bops, _ = _problem([1, 1, 1, 1], [1, 1, 1, 1])
    with pytest.raises(SearchError, match="no uniform starting point.*loosen --tolerance"):
        greedy_search(TYPES, bops, lambda lengths: 100.0, Criterion(10.0, 0.01))


def test_sensitivity_finds_each_types_shortest_length():
    bops, ppl = _problem([3, 1, 4, 2], [8, 2, 1, 0.25])
    crit = Criterion(10.0, 0.01)
    res, shortest = sensitivity_scan(TYPES, bops, ppl, crit)
    for i, t in enumerate(TYPES):  # oracle: the smallest m with 10 (1 + a 4^-m) <= 10.1, from the formula
        a = [8, 2, 1, 0.25][i]
        assert shortest[t] == min(m for m in range(1, 14) if a * 4.0 ** -m <= 0.01)
    assert all(p.lengths.count(None) == 3 for p in res.points)


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, True])
def test_bad_tolerances(bad):
    with pytest.raises(InputError, match="tolerance"):
        Criterion(10.0, bad)


def test_bad_lengths_and_iterations():
    bops, ppl = _problem([1, 1, 1, 1], [1, 1, 1, 1])
    with pytest.raises(InputError, match="1..15"):
        check_lengths([0, 4])
    with pytest.raises(InputError, match="1..15"):
        greedy_search(TYPES, bops, ppl, Criterion(10.0, 0.1), starts=[16])
    with pytest.raises(InputError, match="max-iter"):
        greedy_search(TYPES, bops, ppl, Criterion(10.0, 0.1), max_iter=0)


# ---- end to end on the tiny Llama -----------------------------------------------------------------


@pytest.fixture
def recipe_file(tmp_path, tiny_model_dir, text_file):
    cal = tmp_path / "calib.txt"
    cal.write_text("Jackdaws love my big sphinx of quartz. The five boxing wizards jump quickly. " * 20)

    def write(**quant):
        p = tmp_path / "r.yaml"
        r = {"model": str(tiny_model_dir), "device": "cpu",
             "calibration": {"text": str(cal), "samples": 1, "seq_len": 48},
             "evaluation": {"text": str(text_file), "seq_len": 64, "max_windows": 1},
             "quantization": {"weights": "int4_g32", **quant}}
        p.write_text(yaml.safe_dump(r))
        return p

    return write


def test_end_to_end_writes_every_point_and_a_runnable_recipe(recipe_file, tmp_path, capsys, monkeypatch):
    from nmx.recipe import load_recipe

    out = tmp_path / "search"
    code, stdout, err = run_cli(["search-precision", str(recipe_file(activations="bfp_m8_g32")), "--tolerance",
                                 "0.05", "--max-iter", "3", "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert s["iterations"] == len(s["points"]) == 3 and s["group"] == 32
    assert s["points"][0]["lengths"] == [4, 4, 4, 4]
    chosen = s["chosen_lengths"]
    assert [chosen[t] for t in TYPES] == s["best"]["lengths"]
    assert s["bops_reduction_vs_a16"] == pytest.approx(s["a16_bops_per_token"] / s["chosen_bops_per_token"])
    r = load_recipe(out / "recipe.yaml")
    assert r.quantization.activations == {t: f"bfp_m{chosen[t]}_g32" for t in TYPES}
    assert "chosen:" in stdout and "fewer than A16" in stdout


@pytest.mark.parametrize("quant, args, phrase", [
    ({"activations": {"qvk": "bfp_m7_g64"}}, ["--tolerance", "0.01"], "unknown tensor type 'qvk'"),
    ({"activations": "int8"}, ["--tolerance", "0.01"], "not a BFP format"),
    ({}, ["--tolerance", "0"], "--tolerance must be in (0, 1)"),
    ({}, ["--tolerance", "1"], "--tolerance must be in (0, 1)"),
    ({}, ["--tolerance", "0.01", "--max-iter", "0"], "--max-iter must be at least 1"),
    ({}, ["--tolerance", "0.01", "--metric", "accuracy"], "--metric 'accuracy' is not supported"),
    ({"activations": {"up": "bfp_m16_g64"}}, ["--tolerance", "0.01"], "BFP mantissas need 1..15 bits"),
])
def test_bad_inputs_are_one_line_and_write_nothing(recipe_file, tmp_path, capsys, monkeypatch, quant, args, phrase):
    out = tmp_path / "search"
    code, _, err = run_cli(["search-precision", str(recipe_file(**quant)), *args, "--out", str(out)],
                           capsys, monkeypatch)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert phrase in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_every_start_failing_is_one_line_and_writes_nothing(recipe_file, tmp_path, capsys, monkeypatch):
    """The tiny random model barely cares about its activations, so its perplexity is made to: the A16
    reference (the first score) is 10, every quantized point 20."""
    import nmx.eval.perplexity

    scores = iter([10.0] + [20.0] * 100)
    monkeypatch.setattr(nmx.eval.perplexity, "perplexity", lambda *a, **k: {"perplexity": next(scores)})
    out = tmp_path / "search"
    code, _, err = run_cli(["search-precision", str(recipe_file()), "--tolerance", "0.01", "--max-iter", "4",
                            "--out", str(out)], capsys, monkeypatch)
    last = err.strip().splitlines()[-1]  # after the progress bar (on stderr, like `nmx run`'s)
    assert code == 2 and err.count("error:") == 1 and last.startswith("error: no uniform starting point"), err
    assert "loosen --tolerance" in last
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_calibration_must_differ_from_evaluation(tmp_path, tiny_model_dir, text_file, capsys, monkeypatch):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "calibration": {"text": str(text_file)},
                                 "evaluation": {"text": str(text_file)}}))
    code, _, err = run_cli(["search-precision", str(p), "--tolerance", "0.01"], capsys, monkeypatch)
    assert code == 2 and "held apart" in err
