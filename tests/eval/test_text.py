"""Text resolution: files, $NMX_DATA_DIR, the copies shipped in the package, the Hub (faked)."""

import dataclasses
import hashlib
import lzma
import sys
import types
from importlib import resources
from pathlib import Path

import pytest

from nmx.errors import InputError
from nmx.eval import text as textmod
from nmx.eval.text import check_text, load_text

# The oracle: sha256 of the original files, as listed in src/nmx/eval/data/README.md (and taken
# from the files in the shared data folder, not computed by nmx).
ORACLE_SHA256 = {
    "wikitext-2-raw-test.txt.xz": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
    "tinyshakespeare.txt.xz": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
}
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(autouse=True)
def _fresh_cache():
    textmod._embedded.cache_clear()
    yield
    textmod._embedded.cache_clear()


def _one_line_error(spec: str, match: str) -> str:
    with pytest.raises(InputError, match=match) as err:
        load_text(spec)
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    return msg


def test_embedded_copies_decompress_to_the_original_bytes():
    for name, sha in ORACLE_SHA256.items():
        packed = (resources.files("nmx.eval") / "data" / name).read_bytes()
        assert len(packed) < 400_000, (name, len(packed))
        assert hashlib.sha256(lzma.decompress(packed)).hexdigest() == sha, name
    assert {b.embedded: b.sha256 for b in textmod.BUILTIN.values()} == ORACLE_SHA256
    readme = (resources.files("nmx.eval") / "data" / "README.md").read_text(encoding="utf-8")
    assert all(sha in readme for sha in ORACLE_SHA256.values()) and "CC BY-SA 3.0" in readme


@pytest.mark.parametrize("name", ["wikitext-2", "tinyshakespeare"])
def test_embedded_copy_equals_the_data_dir_copy(name, monkeypatch):
    monkeypatch.delenv("NMX_DATA_DIR", raising=False)
    emb = load_text(name)
    assert emb.source == "embedded:nmx/eval/data/" + textmod.BUILTIN[name].embedded
    assert emb.name == name and len(emb.text) > 1_000_000
    if name == "wikitext-2":  # the WikiText join rule applies to the embedded copy too
        assert emb.text.startswith("\n\n = Robert Boulter = \n") and emb.join_rule == textmod.WIKITEXT_JOIN
    else:
        assert emb.text.startswith("First Citizen:\nBefore we proceed any further") and emb.join_rule == textmod.AS_IS
    if not (SHARED / textmod.BUILTIN[name].data_path).is_file():
        pytest.skip("no shared data folder here")
    monkeypatch.setenv("NMX_DATA_DIR", str(SHARED))
    shared = load_text(name)
    assert shared.source == str(SHARED / textmod.BUILTIN[name].data_path)
    assert shared.text == emb.text  # same characters, so the same tokens and perplexity
    assert dataclasses.replace(emb, source=shared.source) == shared  # only the source differs


def test_embedded_text_is_read_once_per_process(monkeypatch):
    monkeypatch.delenv("NMX_DATA_DIR", raising=False)
    assert load_text("tinyshakespeare") is load_text("tinyshakespeare")
    assert textmod._embedded.cache_info().hits >= 1


def test_a_file_wins_over_a_name_and_is_used_as_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wikitext-2").write_text("a file called wikitext-2\n\nline\n", encoding="utf-8")
    t = load_text("wikitext-2")
    assert t.text == "a file called wikitext-2\n\nline\n" and t.join_rule == textmod.AS_IS
    assert t.source == str((tmp_path / "wikitext-2").resolve())
    # the WikiText raw file given by path is not special either: no join rule
    raw = tmp_path / "text" / "wikitext-2" / "wiki.test.raw"
    raw.parent.mkdir(parents=True)
    raw.write_text(" \n = T = \n \n x \n", encoding="utf-8")
    assert load_text(str(raw)).text == " \n = T = \n \n x \n"
    # a folder with a built-in name does not hide the name
    (tmp_path / "tinyshakespeare").mkdir()
    monkeypatch.delenv("NMX_DATA_DIR", raising=False)
    assert load_text("tinyshakespeare").source.startswith("embedded:")


def test_data_dir_wins_over_the_embedded_copy(tmp_path, monkeypatch):
    raw = tmp_path / "text" / "wikitext-2" / "wiki.test.raw"
    raw.parent.mkdir(parents=True)
    raw.write_text(" \n = T = \n \n x \n", encoding="utf-8")
    monkeypatch.setenv("NMX_DATA_DIR", str(tmp_path))
    t = load_text("wikitext-2")
    # rows "", " = T = \n", "", " x \n" joined with "\n\n" (worked out by hand)
    assert t.text == "\n\n = T = \n\n\n\n\n x \n"
    assert t.source == str(raw) and t.join_rule == textmod.WIKITEXT_JOIN
    # a data folder without the file falls back to the copy in the package
    assert load_text("tinyshakespeare").source == "embedded:nmx/eval/data/tinyshakespeare.txt.xz"


def test_bad_files_are_one_line_errors(tmp_path):
    _one_line_error("/no/such.txt", r"^text file not found: /no/such.txt$")
    _one_line_error(str(tmp_path), "is a folder")
    bad = tmp_path / "bin.txt"
    bad.write_bytes(b"ok \xff\xfe\x00")
    assert "bin.txt" in _one_line_error(str(bad), "not UTF-8")
    for content in ("", " \n\t\n"):
        empty = tmp_path / "empty.txt"
        empty.write_text(content, encoding="utf-8")
        assert "empty.txt" in _one_line_error(str(empty), "is empty")
    _one_line_error("", "no text given")
    with pytest.raises(InputError, match="not found"):
        check_text("/no/such.txt")
    good = tmp_path / "good.txt"
    good.write_text("some text", encoding="utf-8")
    assert check_text(str(good)) is None


def test_empty_data_dir_file_is_an_error(tmp_path, monkeypatch):
    raw = tmp_path / "text" / "tinyshakespeare" / "input.txt"
    raw.parent.mkdir(parents=True)
    raw.write_text("\n\n", encoding="utf-8")
    monkeypatch.setenv("NMX_DATA_DIR", str(tmp_path))
    _one_line_error("tinyshakespeare", "is empty")


def test_unknown_name_without_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` fails
    msg = _one_line_error("foo", r"^text 'foo' is not a file or a built-in text \(wikitext-2, tinyshakespeare\)")
    assert 'pip install "nmx[hub]"' in msg and "hf:" in msg
    msg = _one_line_error("hf:wikitext:wikitext-2-raw-v1:test", "needs `datasets`")
    assert 'pip install "nmx[hub]"' in msg
    _one_line_error("hf:", "write a Hugging Face dataset as hf:PATH")
    _one_line_error("hf:a:b:c:d", "write a Hugging Face dataset as hf:PATH")


def _fake_datasets(monkeypatch, load):
    mod = types.ModuleType("datasets")
    mod.load_dataset = load
    monkeypatch.setitem(sys.modules, "datasets", mod)
    return mod


class _Rows:
    def __init__(self, columns):
        self.columns = columns
        self.column_names = list(columns)

    def __getitem__(self, key):
        return self.columns[key]


def test_hub_names_are_parsed_and_joined(monkeypatch):
    calls = []

    def load(path, config=None, split=None):
        calls.append((path, config, split))
        return _Rows({"text": ["", " = T = \n", "", " x \n"]})

    _fake_datasets(monkeypatch, load)
    t = load_text("hf:wikitext:wikitext-2-raw-v1:test")
    assert calls[-1] == ("wikitext", "wikitext-2-raw-v1", "test")
    # the rows of the HF dataset joined with "\n\n" give the same text as the raw file's join rule
    assert t.text == textmod._wikitext_rows_joined(" \n = T = \n \n x \n") == "\n\n = T = \n\n\n\n\n x \n"
    assert t.source == "hf:wikitext/wikitext-2-raw-v1/test"
    load_text("hf:karpathy/tiny_shakespeare::train")
    assert calls[-1] == ("karpathy/tiny_shakespeare", None, "train")
    load_text("hf:someone/data")
    assert calls[-1] == ("someone/data", None, "test")


def test_hub_failures_are_one_line(monkeypatch):
    def offline(path, config=None, split=None):
        raise ConnectionError("Couldn't reach 'x' on the Hub\n  (retrying...)\nTraceback: ...")

    _fake_datasets(monkeypatch, offline)
    msg = _one_line_error("hf:x", r"^Hugging Face dataset x \(split test\): ConnectionError: Couldn't reach")
    assert "Traceback" in msg  # squeezed onto the one line, not dropped silently
    _fake_datasets(monkeypatch, lambda path, config=None, split=None: _Rows({"content": ["a"]}))
    _one_line_error("hf:x", "no 'text' column \\(columns: content\\)")
    _fake_datasets(monkeypatch, lambda path, config=None, split=None: _Rows({"text": ["", " "]}))
    _one_line_error("hf:x", "is empty")


def test_damaged_package_copy(monkeypatch):
    monkeypatch.delenv("NMX_DATA_DIR", raising=False)
    b = textmod.BUILTIN["tinyshakespeare"]
    monkeypatch.setitem(textmod.BUILTIN, "tinyshakespeare", dataclasses.replace(b, sha256="0" * 64))
    _one_line_error("tinyshakespeare", "damaged; reinstall")
    textmod._embedded.cache_clear()
    monkeypatch.setitem(textmod.BUILTIN, "tinyshakespeare", dataclasses.replace(b, embedded="missing.txt.xz"))
    _one_line_error("tinyshakespeare", "damaged; reinstall")
