"""Text sources for calibration and evaluation: a named corpus, or any plain-text file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nmx.errors import InputError

# name -> (path under NMX_DATA_DIR, Hugging Face datasets (path, config, split) when online)
NAMED = {
    "wikitext-2": ("text/wikitext-2/wiki.test.raw", ("wikitext", "wikitext-2-raw-v1", "test")),
    "tinyshakespeare": ("text/tinyshakespeare/input.txt", ("karpathy/tiny_shakespeare", None, "train")),
}
WIKITEXT_JOIN = (
    'WikiText-2 raw test rows (the lines of wiki.test.raw, blank lines as empty rows, as the HF '
    'dataset has them) joined with "\\n\\n", as Wanda and SparseGPT evaluate'
)


@dataclass(frozen=True)
class Text:
    name: str
    text: str
    source: str  # the file it came from, or "hf:<dataset>"
    join_rule: str


def _wikitext_rows_joined(raw: str) -> str:
    return "\n\n".join(line if line.strip() else "" for line in raw.splitlines(keepends=True))


def _from_hub(name: str) -> Text | None:
    try:
        import datasets  # optional: only where installed and online
    except ImportError:
        return None
    path, config, split = NAMED[name][1]
    try:
        rows = datasets.load_dataset(path, config, split=split)["text"]
    except Exception:  # noqa: BLE001 - any hub failure means "not available here"
        return None
    if name == "wikitext-2":
        return Text(name, "\n\n".join(rows), f"hf:{path}/{config}/{split}", WIKITEXT_JOIN)
    return Text(name, "\n".join(rows), f"hf:{path}/{split}", "dataset rows joined with \\n")


def load_text(spec: str) -> Text:
    """`spec` is a name ('wikitext-2', 'tinyshakespeare') found in $NMX_DATA_DIR or on the HF Hub,
    or the path of a UTF-8 text file (used as is)."""
    if spec in NAMED:
        data_dir = os.environ.get("NMX_DATA_DIR")
        if data_dir and (Path(data_dir) / NAMED[spec][0]).is_file():
            path = Path(data_dir) / NAMED[spec][0]
            raw = path.read_text(encoding="utf-8")
            if spec == "wikitext-2":
                return Text(spec, _wikitext_rows_joined(raw), str(path), WIKITEXT_JOIN)
            return Text(spec, raw, str(path), "the file as is")
        hub = _from_hub(spec)
        if hub is not None:
            return hub
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            return Text(path.name, path.read_text(encoding="utf-8"), str(path.resolve()), "the file as is")
        except UnicodeDecodeError as err:
            raise InputError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    names = ", ".join(NAMED)
    where = os.environ.get("NMX_DATA_DIR") or "unset"
    raise InputError(
        f"text {spec!r} not found: it is neither a name ({names}) found under NMX_DATA_DIR "
        f"(now {where}), nor on the Hugging Face Hub (needs `datasets` and a network), nor a text file"
    )
