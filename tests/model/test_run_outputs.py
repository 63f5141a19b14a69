"""`nmx run / eval / prune / demo` outputs: decided before any work, written all-or-nothing,
never mixed with an earlier result; bad recipes and --set values are one line and exit 2."""

import json
import os
import signal
import stat

import pytest

import nmx.runner
from tests.cli import run_cli


def _no_model(monkeypatch):
    """Fail the test if a model is loaded: the error must come before the long work."""

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the bad input was found")

    monkeypatch.setattr(nmx.runner, "load_model", refuse)


def _eval(model_dir, text_file, *extra):
    return ["eval", "--model", str(model_dir), "--text", str(text_file), "--seq-len", "64", "--max-windows", "1",
            *extra]


def _one_line_error(code, err, phrase):
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert phrase in err, err


def _left(folder):
    """Every name under `folder`, hidden ones too (temporary leftovers)."""
    return sorted(os.listdir(folder))


def test_out_that_is_a_file_fails_before_the_model_loads(tmp_path, tiny_model_dir, text_file, capsys, monkeypatch):
    _no_model(monkeypatch)
    (tmp_path / "afile").write_text("hi")
    code, out, err = run_cli(_eval(tiny_model_dir, text_file, "--out", str(tmp_path / "afile")), capsys, monkeypatch)
    _one_line_error(code, err, "is a file")
    code, out, err = run_cli(_eval(tiny_model_dir, text_file, "--out", str(tmp_path / "afile" / "study")),
                             capsys, monkeypatch)
    _one_line_error(code, err, "is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "hi" and _left(tmp_path) == ["afile"]


def test_demo_out_under_a_file_fails_at_once(tmp_path, capsys, monkeypatch):
    import nmx.demo

    monkeypatch.setattr(nmx.demo, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    (tmp_path / "afile").write_text("hi")
    code, _, err = run_cli(["demo", "--out", str(tmp_path / "afile" / "study")], capsys, monkeypatch)
    _one_line_error(code, err, "is a file, not a folder")
    assert _left(tmp_path) == ["afile"]


def test_unwritable_out_fails_before_the_model_loads(tmp_path, tiny_model_dir, text_file, capsys, monkeypatch):
    # root may write anywhere, so the refusal of the file system is simulated where it happens
    import tempfile

    _no_model(monkeypatch)

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    code, _, err = run_cli(_eval(tiny_model_dir, text_file, "--out", str(tmp_path / "new" / "run")),
                           capsys, monkeypatch)
    _one_line_error(code, err, "cannot write in")
    assert _left(tmp_path) == []  # the parent it created for the run is gone too


def test_rerun_into_a_result_is_refused_then_replaced_whole(tmp_path, tiny_model_dir, text_file, capsys,
                                                           monkeypatch):
    out = tmp_path / "run"
    code, _, err = run_cli(["prune", "--model", str(tiny_model_dir), "--method", "magnitude", "--weights", "mxfp4",
                            "--text", str(text_file), "--seq-len", "64", "--max-windows", "1", "--out", str(out),
                            "--save-model"], capsys, monkeypatch)
    assert code == 0, err
    assert (out / "model.safetensors").is_file()
    first = json.loads((out / "result.json").read_text())

    code, _, err = run_cli(_eval(tiny_model_dir, text_file, "--out", str(out)), capsys, monkeypatch)
    _one_line_error(code, err, "already holds a result; pass --overwrite")
    assert json.loads((out / "result.json").read_text()) == first

    code, _, err = run_cli(_eval(tiny_model_dir, text_file, "--out", str(out), "--overwrite"), capsys, monkeypatch)
    assert code == 0, err
    assert _left(out) == ["recipe.yaml", "report.md", "result.json"]  # the old model is not left beside it
    assert json.loads((out / "result.json").read_text())["recipe"]["sparsity"] is None
    assert _left(tmp_path) == ["run"]


def test_a_folder_of_other_files_is_never_replaced(tmp_path, tiny_model_dir, text_file, capsys, monkeypatch):
    _no_model(monkeypatch)
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = run_cli(_eval(tiny_model_dir, text_file, "--out", str(tmp_path), "--overwrite"),
                           capsys, monkeypatch)
    _one_line_error(code, err, "other files in it")
    assert _left(tmp_path) == ["notes.txt"]


def test_save_model_without_out_is_an_error(tiny_model_dir, text_file, capsys, monkeypatch):
    _no_model(monkeypatch)
    code, _, err = run_cli(["prune", "--model", str(tiny_model_dir), "--method", "magnitude", "--text",
                            str(text_file), "--save-model"], capsys, monkeypatch)
    _one_line_error(code, err, "give --out DIR")


def test_a_failing_run_leaves_nothing(tmp_path, tiny_model_dir, text_file, capsys, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(nmx.runner, "evaluate", broken)
    with pytest.raises(RuntimeError, match="boom"):
        run_cli(_eval(tiny_model_dir, text_file, "--out", str(tmp_path / "a" / "run")), capsys, monkeypatch)
    assert _left(tmp_path) == []


def test_sigterm_mid_run_removes_the_private_folder(tmp_path, tiny_model_dir, text_file, capsys, monkeypatch):
    real = nmx.runner.evaluate

    def killed(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(nmx.runner, "evaluate", killed)
    code, out, err = run_cli(_eval(tiny_model_dir, text_file, "--out", str(tmp_path / "run")), capsys, monkeypatch)
    assert code == 143 and "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert _left(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is only set during the command


def test_outputs_get_the_umask_modes(tmp_path, tiny_model_dir, text_file, capsys, monkeypatch):
    old = os.umask(0o022)
    try:
        code, _, err = run_cli(_eval(tiny_model_dir, text_file, "--out", str(tmp_path / "run")), capsys, monkeypatch)
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755
    for name in ("result.json", "report.md", "recipe.yaml"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o644, name


def test_missing_text_is_found_before_the_model_loads(tiny_model_dir, capsys, monkeypatch):
    _no_model(monkeypatch)
    code, _, err = run_cli(["eval", "--model", str(tiny_model_dir), "--text", "/no/such/text.txt"],
                           capsys, monkeypatch)
    _one_line_error(code, err, "/no/such/text.txt")
    code, _, err = run_cli(["prune", "--model", str(tiny_model_dir), "--calib-text", "/no/calib.txt"],
                           capsys, monkeypatch)
    _one_line_error(code, err, "/no/calib.txt")


def test_context_beyond_the_model_warns_in_one_line(tiny_model_dir, text_file, capsys, monkeypatch):
    # the tiny Llama has max_position_embeddings = 512
    code, _, err = run_cli(["eval", "--model", str(tiny_model_dir), "--text", str(text_file), "--seq-len", "1024",
                            "--max-windows", "1"], capsys, monkeypatch)
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "longer than the model's context (512 tokens)" in warnings[0]


# ---------------------------------------------------------------- recipes and --set


def _recipe(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("body,phrase", [
    (b"model: \xff\xfe\n", "is not UTF-8"),
    ("a:\n" + "".join("  " * i + "b:\n" for i in range(1, 2000)), "nested too deeply"),
    ("[" * 5000, "nested too deeply"),
    ("- 1\n- 2\n", "a recipe is a mapping"),
    ("evaluation: {max_windows: true}\n", "evaluation.max_windows: Input should be a valid integer, got True"),
    ("evaluation: {seq_len: '2048'}\n", "valid integer"),
    ("evaluation: {seq_len: 64\n", "not valid YAML"),
    ("sparsity: {metod: wanda}\n", "did you mean 'method'"),
])
def test_bad_recipe_files_are_one_line(tmp_path, body, phrase, capsys, monkeypatch):
    _no_model(monkeypatch)
    code, _, err = run_cli(["run", str(_recipe(tmp_path, body))], capsys, monkeypatch)
    _one_line_error(code, err, phrase)


@pytest.mark.parametrize("assignment,phrase", [
    ("sparsity.pattern=[1,", "--set sparsity.pattern=[1,: not valid YAML"),
    ("sparsity.pattern=5:4", "--set sparsity.pattern=5:4: sparsity.pattern"),
    ("evaluation.max_windows=0", "--set evaluation.max_windows=0: evaluation.max_windows"),
    ("model.name=x", "--set model.name=x: model is a value, not a section"),
    ("=3", "--set wants key.path=value"),
    ("sparsity..pattern=2:4", "--set wants key.path=value"),
    ("evaluation.windows=3", "--set evaluation.windows=3: evaluation.windows: unknown key"),
])
def test_set_errors_name_the_set_argument(tmp_path, assignment, phrase, capsys, monkeypatch):
    _no_model(monkeypatch)
    path = _recipe(tmp_path, "model: smollm2-135m\nsparsity: {method: magnitude}\n")
    code, _, err = run_cli(["run", str(path), "--set", assignment], capsys, monkeypatch)
    _one_line_error(code, err, phrase)
    assert "line" not in err.split(": ")[1]  # not blamed on a line of the file


def test_a_file_error_still_names_its_line(tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    path = _recipe(tmp_path, "model: smollm2-135m\nsparsity: {method: magnitude, pattern: '5:4'}\n")
    code, _, err = run_cli(["run", str(path), "--set", "evaluation.max_windows=2"], capsys, monkeypatch)
    _one_line_error(code, err, f"{path} line 2: sparsity.pattern")


def test_empty_recipe_warns_that_it_runs_the_defaults(tmp_path, capsys, monkeypatch):
    from nmx.recipe import load_recipe

    path = _recipe(tmp_path, "# nothing yet\n")
    recipe = load_recipe(path)
    assert recipe.evaluation.max_windows is None
    err = capsys.readouterr().err
    assert "is empty: running the defaults" in err


def test_example_recipes_are_valid():
    from pathlib import Path

    from nmx.recipe import load_recipe

    recipes = sorted((Path(__file__).parents[2] / "examples" / "recipes").glob("*.yaml"))
    assert len(recipes) >= 2
    for path in recipes:
        assert load_recipe(path).model == "smollm2-135m"
