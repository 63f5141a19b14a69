"""Bad sweep input: one line, exit code 2, nothing written, and Ray never started (the oracle: a
`connect` that fails the test if it is called)."""

import os
import socket
import time

import pytest

import nmx.sweep.driver
from nmx.sweep.spec import load_sweep, yaml_value
from tests.cli import run_cli


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("Ray was started before the bad input was found")

    monkeypatch.setattr(nmx.sweep.driver, "connect", refuse)


def _one_line_error(code, err, *phrases):
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err


def _sweep(args, capsys, monkeypatch, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run_cli(["sweep", *map(str, args), "--out", str(out)], capsys, monkeypatch)
    return code, err, out


GRID = "grid:\n  sparsity.pattern: ['2:4', '4:8']\n"


@pytest.mark.parametrize("body, phrases", [
    ("grid:\n  sparsity.patern: ['2:4']\n", ["grid point 1 of 1", "sparsity.patern: unknown key",
                                             "did you mean 'pattern'"]),
    ("points:\n  - {quantization.wieghts: mxfp4}\n", ["points item 1", "quantization.wieghts: unknown key"]),
    ("set:\n  evaluation.windows: 4\n" + GRID, ["line", "set: evaluation.windows: unknown key"]),
    ("grid:\n  model.name: [x]\n", ["model is a value, not a section"]),
    ("grid: {}\n", ["grid: the grid is empty"]),
    ("grid:\n  sparsity.pattern: []\n", ["line 6", "sparsity.pattern: the list of values is empty"]),
    ("grid:\n  sparsity.pattern: '2:4'\n", ["give a list of values"]),
    ("points: []\n", ["points: the list is empty"]),
    ("points:\n  - 2:4\n", ["item 1 is", "each point is a mapping"]),
    ("name: x\n", ["nothing to sweep"]),
    ("grid:\n  sparsity.pattern: ['2:4', '2:4']\n", ["grid point 2 of 2", "same recipe as point 1"]),
    (GRID + "points:\n  - {sparsity.pattern: '4:8'}\n", ["points item 1", "same recipe as point 2"]),
    ("grid:\n  sparsity.pattern: ['5:4']\n", ["grid point 1 of 1", "sparsity.pattern"]),
    ("gird:\n  sparsity.pattern: ['2:4']\n", ["line 5", "gird: unknown key", "did you mean 'grid'"]),
    ("grid:\n  sparsity.pattern: ['2:4'\n", ["not valid YAML"]),
    ("hardware: [no-such-gpu]\n" + GRID, ["hardware"]),
])
def test_bad_sweep_file_is_one_line_before_ray(body, phrases, write_sweep, tmp_path, capsys, monkeypatch, no_ray):
    path = write_sweep(body)
    code, err, out = _sweep([path], capsys, monkeypatch, tmp_path)
    _one_line_error(code, err, str(path), *phrases)
    assert not out.exists()


@pytest.mark.parametrize("text, phrase", [
    ("", "the sweep file is empty"),
    ("- a\n- b\n", "a sweep file is a mapping"),
    ("base: 3\ngrid: {sparsity.pattern: ['2:4']}\n", "base: give a recipe file or a recipe mapping"),
    ("base: nowhere.yaml\ngrid: {sparsity.pattern: ['2:4']}\n", "base recipe (base: in"),
    ("\x00\x01", "not"),
])
def test_malformed_sweep_file(text, phrase, tmp_path, capsys, monkeypatch, no_ray):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    code, err, out = _sweep([path], capsys, monkeypatch, tmp_path)
    _one_line_error(code, err, phrase)
    assert not out.exists()


def test_missing_sweep_file(tmp_path, capsys, monkeypatch, no_ray):
    code, err, out = _sweep([tmp_path / "none.yaml"], capsys, monkeypatch, tmp_path)
    _one_line_error(code, err, "sweep file not found")


def test_missing_model_and_text_fail_before_ray(write_sweep, tmp_path, capsys, monkeypatch, no_ray):
    path = write_sweep(GRID + "points:\n  - {name: gone, model: ./no/such/model}\n")
    code, err, out = _sweep([path], capsys, monkeypatch, tmp_path)
    _one_line_error(code, err, "point 3 (gone)", "model path does not exist")
    path = write_sweep(GRID + "set: {evaluation.text: /no/such/text.txt}\n")
    code, err, out = _sweep([path], capsys, monkeypatch, tmp_path)
    _one_line_error(code, err, "text file not found")
    assert not out.exists()


def test_out_that_is_not_a_sweep_folder(write_sweep, tmp_path, capsys, monkeypatch, no_ray):
    path = write_sweep(GRID)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    code, err, _ = _sweep([path], capsys, monkeypatch, tmp_path)
    _one_line_error(code, err, "not a sweep's")
    assert os.listdir(tmp_path / "out") == ["notes.txt"]


def test_too_many_cpus_per_point(write_sweep, tmp_path, capsys, monkeypatch, no_ray):
    code, err, out = _sweep([write_sweep(GRID), "--cpus-per-point", "4096"], capsys, monkeypatch, tmp_path)
    _one_line_error(code, err, "--cpus-per-point 4096")
    assert not out.exists()
    code, err, _ = _sweep([write_sweep(GRID), "--cpus-per-point", "0"], capsys, monkeypatch, tmp_path)
    assert code == 2 and "--cpus-per-point" in err


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("address, phrase", [
    ("127.0.0.1:CLOSED", "cannot reach a Ray head there"),  # a port found closed when the test runs
    ("no-port-here", "give HOST:PORT"),
    ("10.0.0.1:99999", "give HOST:PORT"),
])
def test_unreachable_address_is_bounded(address, phrase, write_sweep, tmp_path, capsys, monkeypatch):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is initialized in this process")
    address = address.replace("CLOSED", str(_closed_port()))  # not at collection: the same test ids in every worker
    t0 = time.perf_counter()
    code, err, out = _sweep([write_sweep(GRID), "--address", address], capsys, monkeypatch, tmp_path)
    assert time.perf_counter() - t0 < 20
    _one_line_error(code, err, f"--address {address}", phrase)
    assert not out.exists() and not ray.is_initialized()


def test_open_port_that_is_not_ray_is_bounded(write_sweep, tmp_path, capsys, monkeypatch):
    """Something listens but never answers as a Ray head: refused within NMX_RAY_CONNECT_TIMEOUT_S."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is initialized in this process")
    monkeypatch.setenv("NMX_RAY_CONNECT_TIMEOUT_S", "1")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    try:
        address = f"127.0.0.1:{srv.getsockname()[1]}"
        t0 = time.perf_counter()
        code, err, out = _sweep([write_sweep(GRID), "--address", address], capsys, monkeypatch, tmp_path)
        assert time.perf_counter() - t0 < 10
        _one_line_error(code, err, f"--address {address}", "not as a Ray head does")
        assert not out.exists() and not ray.is_initialized()
    finally:
        srv.close()


def test_points_labels_and_recipes(write_sweep, tiny_model_dir):
    path = write_sweep("grid:\n  sparsity.method: [magnitude, wanda]\n  sparsity.pattern: ['2:4', '4:8']\n"
                       "  quantization.weights: [mxfp4]\n"
                       "points:\n  - {name: dense}\n  - {sparsity: {method: magnitude, pattern: 50%}}\n"
                       "set:\n  evaluation.max_windows: 1\n")
    sweep = load_sweep(path)
    assert [p.index for p in sweep.points] == [1, 2, 3, 4, 5, 6]
    assert sweep.points[0].label == "sparsity.method=magnitude, sparsity.pattern=2:4"  # only what varies
    assert sweep.points[3].recipe.sparsity.method == "wanda" and sweep.points[3].recipe.sparsity.pattern == "4:8"
    assert all(p.recipe.quantization.weights == "mxfp4" for p in sweep.points[:4])
    assert sweep.points[4].label == "dense" and sweep.points[4].recipe.sparsity is None
    assert sweep.points[5].recipe.sparsity.pattern == "unstructured:0.5"
    assert all(p.recipe.evaluation.max_windows == 1 for p in sweep.points)
    assert sweep.points[0].recipe.model == str(tiny_model_dir)
    assert len({p.key for p in sweep.points}) == 6


@pytest.mark.parametrize("value", ["2:4", None, 1e-5, 0.5, 3, True, "null", "yes", "017", "1:4|2:4", "50%",
                                   "*.mlp.*_proj", "", "a: b", ["2:4", None], {"a": {"b": [1, "x:y"]}}])
def test_values_reach_the_recipe_unchanged(value):
    """The oracle: the recipe's own YAML reader (what --set uses) gives each value back."""
    from nmx.recipe import _yaml

    assert _yaml(yaml_value(value), "v", lines=False) == value
