"""Text sources for calibration and evaluation: a built-in corpus, any plain-text file, or a
Hugging Face dataset.

`load_text(spec)` resolves `spec` in this order:

a. a path to an existing file: its UTF-8 text, used as is (whatever its name; the WikiText
   join rule is only for the built-in name);
b. a built-in name (`wikitext-2`, `tinyshakespeare`) whose file is under $NMX_DATA_DIR
   (`text/wikitext-2/wiki.test.raw`, `text/tinyshakespeare/input.txt`);
c. the copy of that built-in text shipped in the package (`nmx/eval/data/*.xz`, checked against
   its sha256), so the default evaluation works on a fresh machine without a network;
d. `hf:PATH[:CONFIG[:SPLIT]]`: a dataset on the Hugging Face Hub, read through `datasets`
   (the optional extra: pip install "nmx[hub]"); the rows of its `text` column are joined with
   "\\n\\n". CONFIG may be empty; SPLIT defaults to `test`. Examples:
   `hf:wikitext:wikitext-2-raw-v1:test` (the same text as `wikitext-2`),
   `hf:karpathy/tiny_shakespeare::train`.

Anything else (a missing file, a folder, bytes that are not UTF-8, an empty text, an unknown
name, any failure on the Hub) is a one-line `InputError`.
"""

from __future__ import annotations

import hashlib
import logging
import lzma
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from nmx.errors import InputError
from nmx.io import expand_user, read_text


@dataclass(frozen=True)
class Builtin:
    data_path: str  # relative to $NMX_DATA_DIR
    embedded: str  # file name in nmx/eval/data/ (xz)
    sha256: str  # of the decompressed bytes (the original file); see nmx/eval/data/README.md


BUILTIN = {
    "wikitext-2": Builtin(
        "text/wikitext-2/wiki.test.raw", "wikitext-2-raw-test.txt.xz",
        "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
    ),
    "tinyshakespeare": Builtin(
        "text/tinyshakespeare/input.txt", "tinyshakespeare.txt.xz",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
}
NAMED = BUILTIN  # the names load_text knows
HUB_PREFIX = "hf:"
HUB_SYNTAX = "hf:PATH[:CONFIG[:SPLIT]]"
HUB_EXTRA = 'pip install "nmx[hub]"'

WIKITEXT_JOIN = (
    'WikiText-2 raw test rows (the lines of wiki.test.raw, blank lines as empty rows, as the HF '
    'dataset has them) joined with "\\n\\n", as Wanda and SparseGPT evaluate'
)
AS_IS = "the file as is"
HUB_JOIN = 'dataset rows (column "text") joined with "\\n\\n"'


@dataclass(frozen=True)
class Text:
    name: str
    text: str
    source: str  # the file it came from, "embedded:nmx/eval/data/<file>", or "hf:<dataset>"
    join_rule: str


def _wikitext_rows_joined(raw: str) -> str:
    return "\n\n".join(line if line.strip() else "" for line in raw.splitlines(keepends=True))


def _builtin_text(name: str, raw: str, source: str) -> Text:
    if name == "wikitext-2":
        return Text(name, _wikitext_rows_joined(raw), source, WIKITEXT_JOIN)
    return Text(name, raw, source, AS_IS)


def _not_empty(text: str, where: str) -> str:
    if not text.strip():
        raise InputError(f"{where} is empty (no text to evaluate or calibrate on)")
    return text


# ---------------------------------------------------------------- built-in texts


def _from_data_dir(name: str) -> Text | None:
    data_dir = os.environ.get("NMX_DATA_DIR")
    if not data_dir:
        return None
    path = expand_user(data_dir) / BUILTIN[name].data_path
    if not path.is_file():
        return None
    raw = _not_empty(read_text(path, what="text file"), f"text file {path}")
    return _builtin_text(name, raw, str(path))


@lru_cache(maxsize=None)
def _embedded(name: str) -> Text:
    """The shipped copy of a built-in text, decompressed and checked once per process."""
    b = BUILTIN[name]
    damaged = f"the package's copy of {name!r} (nmx/eval/data/{b.embedded})"
    try:
        packed = (resources.files("nmx.eval") / "data" / b.embedded).read_bytes()
        data = lzma.decompress(packed)
    except (OSError, lzma.LZMAError) as err:
        raise InputError(f"{damaged} cannot be read ({err}): the nmx package is damaged; reinstall it") from None
    if hashlib.sha256(data).hexdigest() != b.sha256:
        raise InputError(f"{damaged} does not match its sha256: the nmx package is damaged; reinstall it")
    return _builtin_text(name, data.decode("utf-8-sig"), f"embedded:nmx/eval/data/{b.embedded}")


# ---------------------------------------------------------------- Hugging Face Hub


def _parse_hub(spec: str) -> tuple[str, str | None, str]:
    parts = spec[len(HUB_PREFIX):].split(":")
    if len(parts) > 3 or not parts[0].strip():
        raise InputError(f"text {spec!r}: write a Hugging Face dataset as {HUB_SYNTAX}, "
                         "e.g. hf:wikitext:wikitext-2-raw-v1:test")
    path = parts[0].strip()
    config = parts[1].strip() if len(parts) > 1 and parts[1].strip() else None
    split = parts[2].strip() if len(parts) > 2 and parts[2].strip() else "test"
    return path, config, split


def _one_line(err: BaseException, limit: int = 300) -> str:
    msg = " ".join(str(err).split()) or type(err).__name__
    msg = msg if len(msg) <= limit else msg[: limit - 3] + "..."
    return f"{type(err).__name__}: {msg}"


def _from_hub(spec: str) -> Text:
    path, config, split = _parse_hub(spec)
    where = f"Hugging Face dataset {path} ({f'config {config}, ' if config else ''}split {split})"
    try:
        import datasets  # optional extra
    except ImportError:
        raise InputError(f"text {spec!r}: reading a Hugging Face dataset needs `datasets`; "
                         f"install the extra: {HUB_EXTRA}") from None
    except Exception as err:  # noqa: BLE001 - a broken install is one line too
        raise InputError(f"text {spec!r}: cannot import `datasets` ({_one_line(err)})") from None
    loggers = [logging.getLogger(n) for n in ("datasets", "huggingface_hub", "fsspec", "urllib3")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = datasets.load_dataset(path, config, split=split)
            columns = list(getattr(ds, "column_names", None) or [])
            if "text" not in columns:
                raise InputError(f"{where} has no 'text' column (columns: {', '.join(columns) or 'none'})")
            rows = ds["text"]
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - any Hub failure is one line, no traceback
        raise InputError(f"{where}: {_one_line(err)}") from None
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    if any(not isinstance(r, str) for r in rows):
        raise InputError(f"{where}: the 'text' column does not hold strings")
    text = _not_empty("\n\n".join(rows), where)
    return Text(spec, text, HUB_PREFIX + path + (f"/{config}" if config else "") + f"/{split}", HUB_JOIN)


# ---------------------------------------------------------------- resolution


def _looks_like_path(spec: str) -> bool:
    return any(s in spec for s in ("/", os.sep)) or spec.startswith(("~", ".")) or bool(Path(spec).suffix)


def load_text(spec: str) -> Text:
    """The text named by `spec`: a file path, a built-in name (from $NMX_DATA_DIR, else the copy
    in the package), or hf:PATH[:CONFIG[:SPLIT]]; see the module docstring for the order."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("no text given: name a text file, a built-in text "
                         f"({', '.join(BUILTIN)}) or a Hugging Face dataset ({HUB_SYNTAX})")
    path = expand_user(spec)
    if path.is_file():  # (a) a file is used as is, whatever its name
        return Text(path.name, _not_empty(read_text(path, what="text file"), f"text file {path}"),
                    str(path.resolve()), AS_IS)
    if spec in BUILTIN:  # (b) NMX_DATA_DIR, (c) the embedded copy
        return _from_data_dir(spec) or _embedded(spec)
    if spec.startswith(HUB_PREFIX):  # (d)
        return _from_hub(spec)
    if path.exists() or _looks_like_path(spec):
        read_text(path, what="text file")  # raises: not found / a folder / unreadable
    hint = f"for a Hugging Face dataset write {HUB_SYNTAX}"
    try:
        import datasets  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed (or broken): say how to get it
        hint += f" and install the extra: {HUB_EXTRA}"
    raise InputError(f"text {spec!r} is not a file or a built-in text ({', '.join(BUILTIN)}); {hint}")


def check_text(spec: str) -> None:
    """Fail now (one-line InputError) if `spec` cannot be loaded, before any model is. Built-in
    texts are cached per process, so the later `load_text` costs nothing more."""
    load_text(spec)
