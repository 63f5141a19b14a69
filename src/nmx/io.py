"""Reading a person's files and writing outputs, so that bad input is one clear error and a
failure never leaves a half-written file or folder behind.

Reading: `read_text`, `read_yaml`, `read_json` turn every way a file can be unusable (missing, a
folder, unreadable, not UTF-8, not valid YAML/JSON, nested too deeply, the wrong top-level type)
into an `InputError` that names the file.

Writing: `OutputDir` and `OutputFile` are decided when they are made (before any long work):
the target is checked and a private temporary folder or file is created beside it, so a
target that cannot be written fails at once. The work writes into the temporary place; at the
end it is moved into place in one step, with SIGINT and SIGTERM held off during the move. On
any error or signal the temporary place is removed. An output folder that already holds a
result is refused unless `overwrite`, and then replaced whole, never mixed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from nmx.errors import InputError

#: file names whose presence marks a folder as an nmx output (a run, a study)
RESULT_MARKERS = ("result.json", "summary.json")


# ---------------------------------------------------------------- reading


def expand_user(path: Path | str) -> Path:
    """`~` and `~user` expanded; a `~user` with no home stays as written (it then is simply not found)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        return Path(path)


def read_bytes(path: Path | str, what: str = "file") -> bytes:
    path = expand_user(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder, not a file")
    try:
        return path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read {what} {path}: {err.strerror or err}") from None


def read_text(path: Path | str, what: str = "file") -> str:
    """The UTF-8 text of a file (a BOM is dropped)."""
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{what} {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def parse_yaml(text: str, where: str, loader: Any = None, compose: bool = False, lines: bool = True) -> Any:
    """YAML text -> Python objects (or the node tree with `compose`); any malformed input,
    however deep, is an InputError located at `where` (and its line, with `lines`)."""
    import yaml

    loader = loader or yaml.SafeLoader
    try:
        return yaml.compose(text, Loader=loader) if compose else yaml.load(text, Loader=loader)  # noqa: S506
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark and lines else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(f"{where}{at}: not valid YAML ({problem})") from None
    except RecursionError:
        raise InputError(f"{where}: nested too deeply to be a configuration file") from None
    except (ValueError, TypeError, OverflowError) as err:  # e.g. a timestamp or number the resolver cannot build
        raise InputError(f"{where}: not a usable YAML value ({err})") from None


def read_yaml(path: Path | str, what: str = "YAML file", expect: type | None = dict, loader: Any = None) -> Any:
    """Parse a YAML file; with `expect`, its top level must be of that type (an empty file is {})."""
    data = parse_yaml(read_text(path, what), str(path), loader)
    if data is None and expect is dict:
        data = {}
    return _expect(data, expect, path, what)


def read_json(path: Path | str, what: str = "JSON file", expect: type | None = dict) -> Any:
    text = read_text(path, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path} line {err.lineno}: not valid JSON ({err.msg})") from None
    except RecursionError:
        raise InputError(f"{path}: nested too deeply to be a {what}") from None
    return _expect(data, expect, path, what)


def _expect(data: Any, expect: type | None, path: Path | str, what: str) -> Any:
    if expect is not None and not isinstance(data, expect):
        kind = {dict: "a mapping (key: value)", list: "a list"}.get(expect, expect.__name__)
        raise InputError(f"{path}: a {what} holds {kind} at its top level, not {type(data).__name__}")
    return data


# ---------------------------------------------------------------- writing files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def set_normal_mode(path: Path, folder: bool = False) -> None:
    """tempfile creates 0600 files and 0700 folders; outputs get the modes the umask gives."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a unique temporary file beside `path`, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        set_normal_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ---------------------------------------------------------------- signals


class Interrupted(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that every cleanup on the way out runs."""


def _raise_interrupted(signum, frame):  # noqa: ARG001
    raise Interrupted(signal.Signals(signum).name)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises `Interrupted` (the default would end the process at once,
    skipping the removal of temporary outputs). Only where signals can be set (main thread)."""
    try:
        old = signal.signal(signal.SIGTERM, _raise_interrupted)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM off while outputs move into place (delivered right after)."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ---------------------------------------------------------------- outputs decided up front


def _first_existing(path: Path) -> tuple[Path, list[Path]]:
    """The nearest existing ancestor of `path` and the missing folders below it (top first)."""
    missing = []
    p = path.parent
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    return p, missing[::-1]


def _make_parents(path: Path, what: str) -> list[Path]:
    """Create the missing parents of `path`; return the ones created (to remove on failure)."""
    anchor, missing = _first_existing(path)
    if not anchor.is_dir():
        raise InputError(f"{what} {path}: {anchor} is a file, not a folder")
    created = []
    try:
        for p in missing:
            p.mkdir()
            created.append(p)
    except OSError as err:
        _remove_empty(created)
        raise InputError(f"{what} {path}: cannot create {p} ({err.strerror or err})") from None
    return created


def _remove_empty(folders: list[Path]) -> None:
    for p in reversed(folders):
        try:
            p.rmdir()
        except OSError:
            pass


def is_result_folder(path: Path) -> bool:
    return any((path / m).exists() for m in RESULT_MARKERS)


class OutputDir:
    """An output folder decided now and written all-or-nothing.

        out = OutputDir(path, overwrite=False, what="--out")   # checks; InputError if unusable
        ...                                                    # long work
        with out as tmp:                                       # write into tmp
            write_json_atomic(tmp / "result.json", ...)
        # now `path` holds exactly what was written into tmp

    `out.abort()` removes the temporary folder without writing (call it when the work fails
    before `with`; `with` does it itself on an error). A target that exists must be an empty
    folder or, with `overwrite`, a folder holding an nmx result; it is then replaced whole.
    """

    def __init__(self, path: Path | str, overwrite: bool = False, what: str = "--out") -> None:
        self.path = expand_user(path)
        self.what = what
        p = self.path
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                raise InputError(f"{what} {p} is a file; give a folder (new or empty)")
            entries = [e.name for e in p.iterdir()]
            if entries and not is_result_folder(p):
                raise InputError(f"{what} {p} is a folder with other files in it (not an nmx result); "
                                 "give a new or empty folder")
            if entries and not overwrite:
                raise InputError(f"{what} {p} already holds a result; pass --overwrite to replace it, "
                                 "or give another folder")
        self._created = _make_parents(p, what)
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.nmx-tmp-", dir=p.parent))
        except OSError as err:
            _remove_empty(self._created)
            raise InputError(f"{what} {p}: cannot write in {p.parent} ({err.strerror or err})") from None
        self._done = False

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, kind, value, tb) -> bool:
        if kind is None:
            self.commit()
        else:
            self.abort()
        return False

    def commit(self) -> None:
        for root, dirs, files in os.walk(self.tmp):
            for d in dirs:
                set_normal_mode(Path(root) / d, folder=True)
            for f in files:
                if not f.startswith("."):
                    set_normal_mode(Path(root) / f)
        set_normal_mode(self.tmp, folder=True)
        with _signals_held():
            old = None
            if self.path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.nmx-old-", dir=self.path.parent))
                self.path.rename(old / "previous")
            self.tmp.rename(self.path)
            self._done = True
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        if not self._done:
            shutil.rmtree(self.tmp, ignore_errors=True)
            _remove_empty(self._created)
            self._done = True


#: figure formats matplotlib writes without extra packages
PLOT_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".eps", ".ps")


class OutputFile:
    """One output file decided now (parent creatable, not a folder, an allowed suffix) and
    written all-or-nothing: `with out as tmp:` write `tmp`; it is renamed onto the target."""

    def __init__(self, path: Path | str, what: str = "--plot", suffixes: tuple[str, ...] | None = None) -> None:
        self.path = expand_user(path)
        p = self.path
        if suffixes is not None and p.suffix.lower() not in suffixes:
            raise InputError(f"{what} {p}: the file name must end in one of {', '.join(suffixes)}")
        if p.is_dir():
            raise InputError(f"{what} {p} is a folder; give a file name")
        self._created = _make_parents(p, what)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{p.stem}.nmx-tmp-", suffix=p.suffix, dir=p.parent)
            os.close(fd)
        except OSError as err:
            _remove_empty(self._created)
            raise InputError(f"{what} {p}: cannot write in {p.parent} ({err.strerror or err})") from None
        self.tmp = Path(tmp)
        self._done = False

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, kind, value, tb) -> bool:
        if kind is None:
            set_normal_mode(self.tmp)
            with _signals_held():
                os.replace(self.tmp, self.path)
                self._done = True
        else:
            self.abort()
        return False

    def abort(self) -> None:
        if not self._done:
            self.tmp.unlink(missing_ok=True)
            _remove_empty(self._created)
            self._done = True


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """A cache folder built whole or not at all (replaced if it exists)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        set_normal_mode(tmp, folder=True)
        yield tmp
        with _signals_held():
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
                path.rename(old / "previous")
                tmp.rename(path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cache_dir() -> Path:
    """Where nmx keeps downloaded and converted models: $NMX_CACHE_DIR, else the user cache dir.
    A path that exists and is not a folder is an InputError."""
    if os.environ.get("NMX_CACHE_DIR"):
        path, what = Path(os.environ["NMX_CACHE_DIR"]).expanduser(), "NMX_CACHE_DIR"
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path, what = Path(base) / "nmx", "the cache folder"
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file; point it at a folder nmx may write in")
    anchor, _ = _first_existing(path / "x")
    if not anchor.is_dir():
        raise InputError(f"{what} {path}: {anchor} is a file, not a folder")
    return path
