"""Generated garbage fed to every file-reading entry point outside nmx.hw (the hardware files
have their own in tests/hw/test_bad_input_cli.py): random bytes, truncated copies of real
files, deep nesting. Each must end in exit code 2 with one line on stderr and no traceback
(or, for a truncation that happens to still be valid, exit 0), and leave no output behind."""

import os
import random
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nmx.runner
from tests.cli import run_cli

GARBAGE = settings(max_examples=12, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _check(code, err, out_dir=None, valid_ok=False):
    assert code in ((0, 2) if valid_ok else (2,)), err
    assert "Traceback" not in err, err
    if code == 2:
        assert err.startswith("error: ") and err.count("\n") == 1, err
    if out_dir is not None and code != 0:
        assert not out_dir.exists()
        assert not [n for n in os.listdir(out_dir.parent) if ".nmx-tmp-" in n]


class Reached(BaseException):
    """The input was valid: the run itself was reached (and stopped there, the test is about input)."""


def _no_model(monkeypatch):
    def reached(*a, **k):
        raise Reached

    monkeypatch.setattr(nmx.runner, "_run", reached)


def _cli(args, capsys, monkeypatch):
    """run_cli, with a valid input that reached the run reported as exit code 0."""
    try:
        return run_cli(args, capsys, monkeypatch)
    except Reached:
        return 0, "", capsys.readouterr().err


def _deep(n):
    return [("[" * n).encode(), ("{a: " * n).encode(), ("- " * n + "x").encode(),
            "".join("  " * i + "k:\n" for i in range(n)).encode()]


def _truncations(data, pieces=6):
    return [data[: len(data) * i // pieces] for i in range(pieces)]


# ---------------------------------------------------------------- recipes

@GARBAGE
@given(st.binary(max_size=400))
def test_recipe_random_bytes(tmp_path, capsys, monkeypatch, data):
    _no_model(monkeypatch)
    path = tmp_path / "r.yaml"
    path.write_bytes(data)
    out = tmp_path / "out"
    code, _, err = _cli(["run", str(path), "--out", str(out)], capsys, monkeypatch)
    # random bytes are a valid recipe only when they parse to nothing (the defaults)
    _check(code, err, out, valid_ok=not data.strip() or data.lstrip().startswith(b"#"))


@pytest.mark.parametrize("i", range(4))
def test_recipe_deep_nesting(tmp_path, capsys, monkeypatch, i):
    _no_model(monkeypatch)
    path = tmp_path / "r.yaml"
    path.write_bytes(_deep(3000)[i])
    code, _, err = _cli(["run", str(path)], capsys, monkeypatch)
    _check(code, err)


def test_recipe_truncations(tmp_path, capsys, monkeypatch):
    recipes = sorted((Path(__file__).parents[1] / "examples" / "recipes").glob("*.yaml"))
    assert recipes, "examples/recipes holds recipes"
    _no_model(monkeypatch)
    for src in recipes:
        for cut in _truncations(src.read_bytes(), 12):
            path = tmp_path / "r.yaml"
            path.write_bytes(cut)
            code, _, err = _cli(["run", str(path)], capsys, monkeypatch)
            _check(code, err, valid_ok=True)  # a prefix can itself be a valid recipe


# ---------------------------------------------------------------- texts

@GARBAGE
@given(st.binary(min_size=1, max_size=300).filter(lambda b: not b.strip()
                                                  or _not_utf8(b)))
def test_text_random_bytes(tmp_path, capsys, monkeypatch, data):
    _no_model(monkeypatch)
    path = tmp_path / "t.txt"
    path.write_bytes(data)
    out = tmp_path / "out"
    code, _, err = _cli(["eval", "--text", str(path), "--out", str(out)], capsys, monkeypatch)
    _check(code, err, out)


def _not_utf8(b):
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


# ---------------------------------------------------------------- tensors (safetensors)

def _real_safetensors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "real.safetensors"
    save_file({"w": torch.randn(8, 64), "b": torch.randn(64)}, str(path))
    return path.read_bytes()


def test_tensor_file_truncations_and_garbage(tmp_path, capsys, monkeypatch):
    real = _real_safetensors(tmp_path)
    rng = random.Random(0)
    cases = _truncations(real, 8) + [bytes(rng.randrange(256) for _ in range(n)) for n in (1, 8, 100, 4096)]
    cases += [len(real).to_bytes(8, "little") + b"{" * 2000, (10**12).to_bytes(8, "little") + b"{}"]
    for data in cases:
        path = tmp_path / "t.safetensors"
        path.write_bytes(data)
        code, _, err = run_cli(["quant-error", "mxfp4", "--tensor", f"{path}:w"], capsys, monkeypatch)
        _check(code, err)


# ---------------------------------------------------------------- models

@GARBAGE
@given(st.binary(max_size=2000))
def test_gguf_random_bytes(tmp_path, capsys, monkeypatch, data):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + data if data[:1] == b"\x00" else data)
    out = tmp_path / "out"
    code, _, err = run_cli(["eval", "--model", str(path), "--text", "tinyshakespeare", "--out", str(out)],
                           capsys, monkeypatch)
    _check(code, err, out)


@pytest.mark.parametrize("victim", ["config.json", "model.safetensors", "tokenizer.json"])
def test_model_folder_with_a_garbage_file(tmp_path, tiny_model_dir_copy, capsys, monkeypatch, victim):
    rng = random.Random(victim)
    target = tiny_model_dir_copy / victim
    real = target.read_bytes()
    for data in _truncations(real, 4)[1:] + [bytes(rng.randrange(256) for _ in range(300)), b"[1, 2]"]:
        target.write_bytes(data)
        out = tmp_path / "out"
        code, _, err = run_cli(["eval", "--model", str(tiny_model_dir_copy), "--text", "tinyshakespeare",
                                "--seq-len", "64", "--max-windows", "1", "--out", str(out)], capsys, monkeypatch)
        _check(code, err, out)


@pytest.fixture()
def tiny_model_dir_copy(tmp_path):
    import shutil

    from tests.model.conftest import char_tokenizer, tiny_llama

    path = tmp_path / "tiny"
    tiny_llama().save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)
