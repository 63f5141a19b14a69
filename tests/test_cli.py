"""The `nmx` command through its real entry point: output, JSON, exit codes."""

import json
import subprocess
import sys

import pytest
import torch

from nmx import __version__
from nmx.formats import names
from tests.cli import run_cli as run


def test_version_and_help(capsys, monkeypatch):
    code, out, _ = run(["--version"], capsys, monkeypatch)
    assert code == 0 and out.strip() == f"nmx {__version__}"
    code, out, _ = run(["--help"], capsys, monkeypatch)
    assert code == 0
    for verb in ("formats", "quant-error", "demo", "run", "eval", "prune", "sparsity"):
        assert verb in out


def test_formats_json_lists_every_format(capsys, monkeypatch):
    code, out, _ = run(["formats", "--json"], capsys, monkeypatch)
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == names()
    by_name = {r["name"]: r for r in rows}
    required = ["fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp6_e3m2", "fp4_e2m1", "bf16", "fp16", "int8", "int4", "e8m0",
                "ue4m3", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8", "nvfp4",
                "int4_g128", "int4_g32", "int8_g128", "bfp_m4_g16"]
    assert set(required) <= set(by_name)
    assert by_name["mxfp4"]["bits_per_element"] == 4.25 and by_name["nvfp4"]["bits_per_element"] == 4.5
    assert by_name["fp8_e4m3"]["max"] == 448 and by_name["fp8_e4m3"]["min_subnormal"] == 2**-9


def test_formats_table(capsys, monkeypatch):
    code, out, _ = run(["formats"], capsys, monkeypatch)
    assert code == 0 and "mxfp6_e3m2" in out and "range dB" in out


def test_quant_error_json(capsys, monkeypatch):
    code, out, _ = run(["quant-error", "mxfp4", "nvfp4", "int4_g128", "--json"], capsys, monkeypatch)
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == ["mxfp4", "nvfp4", "int4_g128"]
    assert all(r["sqnr_db"] > 5 for r in rows)


def test_quant_error_on_a_safetensors_tensor(tmp_path, capsys, monkeypatch):
    from safetensors.torch import save_file

    path = tmp_path / "t.safetensors"
    save_file({"w": torch.randn(16, 64)}, str(path))
    code, out, _ = run(["quant-error", "mxfp8_e4m3", "--tensor", f"{path}:w", "--json"], capsys, monkeypatch)
    assert code == 0 and json.loads(out)[0]["sqnr_db"] > 25


@pytest.mark.parametrize("args,message", [
    (["quant-error", "mxfp5"], "unknown format 'mxfp5'; did you mean"),
    (["quant-error", "mxfp4_g0"], "block size 0 makes no sense"),
    (["quant-error", "mxfp4", "--tensor", "/no/such.safetensors:w"], "tensor file not found"),
    (["quant-error", "mxfp4", "--dim", "5"], "out of range"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, monkeypatch):
    code, out, err = run(args, capsys, monkeypatch)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_usage_errors_exit_2(capsys, monkeypatch):
    code, _, err = run(["quant-error"], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err


def test_quant_error_all_formats(capsys, monkeypatch):
    code, out, _ = run(["quant-error", *names()[9:]], capsys, monkeypatch)
    assert code == 0 and "quantization error" in out and "nvfp4" in out


def test_installed_entry_point_runs_as_a_module():
    r = subprocess.run([sys.executable, "-m", "nmx", "quant-error", "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: unknown format") and "Traceback" not in r.stderr


def test_run_verbs_refuse_bad_input_before_writing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    cases = [
        (["prune", "--pattern", "4:2", "--out", str(out)], "4:2"),
        (["prune", "--pattern", "0:4", "--out", str(out)], "0:4"),
        (["prune", "--method", "wandaa", "--out", str(out)], "wanda"),
        (["eval", "--model", str(tmp_path / "no-such-model"), "--out", str(out)], "does not exist"),
        (["eval", "--model", str(tmp_path / "x.gguf"), "--out", str(out)], "GGUF file not found"),
    ]
    for args, message in cases:
        code, stdout, err = run(args, capsys, monkeypatch)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, (args, err)
        assert not out.exists()
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: smollm2-135m\nsparsity: {method: wanda, patern: '2:4'}\n")
    code, _, err = run(["run", str(recipe), "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and "line 2" in err and "did you mean 'pattern'" in err and not out.exists()
    code, _, err = run(["run", str(tmp_path / "missing.yaml")], capsys, monkeypatch)
    assert code == 2 and "recipe file not found" in err


def test_tiny_text_is_one_clear_error(tmp_path, capsys, monkeypatch):
    from tests.model.conftest import char_tokenizer, tiny_llama

    model_dir = tmp_path / "m"
    tiny_llama().save_pretrained(model_dir)
    char_tokenizer().save_pretrained(model_dir)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("too short")
    out = tmp_path / "out"
    code, _, err = run(["eval", "--model", str(model_dir), "--text", str(tiny), "--seq-len", "64", "--out", str(out)],
                       capsys, monkeypatch)
    assert code == 2 and "fewer than one window of 64" in err and not out.exists()


def test_eval_and_prune_verbs_on_a_tiny_model(tmp_path, capsys, monkeypatch):
    from tests.model.conftest import TEXT, char_tokenizer, tiny_llama

    model_dir = tmp_path / "m"
    tiny_llama().save_pretrained(model_dir)
    char_tokenizer().save_pretrained(model_dir)
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    out = tmp_path / "out"
    code, stdout, _ = run(["prune", "--model", str(model_dir), "--method", "wanda", "--pattern", "2:4", "--weights",
                           "mxfp4", "--calib-text", str(text), "--calib-samples", "2", "--calib-seq-len", "32",
                           "--text", str(text), "--seq-len", "64", "--max-windows", "2", "--out", str(out), "--json",
                           "--save-model"], capsys, monkeypatch)
    assert code == 0
    result = json.loads(stdout)
    assert result["bits_per_weight"] == pytest.approx(3.0) and (out / "model.safetensors").is_file()
    from safetensors import safe_open

    from nmx.formats.packing import unpack_bits
    from nmx.sparsity.masks import check_nm

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["nmx_recipe"])["sparsity"]["pattern"] == "2:4"
        shapes = json.loads(f.metadata()["nmx_masks"])
        name = "model.layers.0.mlp.down_proj"
        mask = unpack_bits(f.get_tensor(f"nmx_mask.{name}"), 1, shapes[name][0] * shapes[name][1])
        mask = mask.reshape(shapes[name]).bool()
        weight = f.get_tensor(f"{name}.weight")
    assert check_nm(mask, 2, 4) == 0 and mask.sum() == mask.numel() // 2 and (weight[~mask] == 0).all()


def test_sparsity_formats_table(capsys, monkeypatch):
    code, out, _ = run(["sparsity", "formats", "--sparsity", "0.5", "0.9", "0.99", "--value-bits", "16", "4", "--json"],
                       capsys, monkeypatch)
    rows = json.loads(out)
    assert code == 0
    winners = {(round(r["sparsity"], 2), r["value_bits"]): r["winner"] for r in rows}
    assert winners[(0.5, 16)] == "nm2:4_comb" and len(winners) == 6
    code, _, err = run(["sparsity", "formats", "--density", "0.5", "--sparsity", "0.5"], capsys, monkeypatch)
    assert code == 2 and "not both" in err
