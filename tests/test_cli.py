"""The `nmx` command through its real entry point: output, JSON, exit codes."""

import json
import subprocess
import sys

import pytest
import torch

from nmx import __version__
from nmx.cli import main
from nmx.formats import names


def run(args, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["nmx", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_version_and_help(capsys, monkeypatch):
    code, out, _ = run(["--version"], capsys, monkeypatch)
    assert code == 0 and out.strip() == f"nmx {__version__}"
    code, out, _ = run(["--help"], capsys, monkeypatch)
    assert code == 0
    for verb in ("formats", "quant-error", "demo"):
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


def test_demo(capsys, monkeypatch):
    code, out, _ = run(["demo"], capsys, monkeypatch)
    assert code == 0 and "quantization error" in out and "nvfp4" in out


def test_installed_entry_point_runs_as_a_module():
    r = subprocess.run([sys.executable, "-m", "nmx", "quant-error", "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: unknown format") and "Traceback" not in r.stderr
