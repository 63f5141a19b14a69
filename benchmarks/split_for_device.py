"""Move a file larger than the device call's 64 MiB working-tree cap to the GPU machine in parts.

The GPU machine has no network and each call carries at most 64 MiB, but a machine that stays warm keeps
what earlier calls left outside the working tree. So: split here into parts under ignored folders, carry
one part per call (consecutive calls, the machine still warm), append each part to one file there, and
check the sha256 when the last part is in.

    # here (the folders must be in .git/info/exclude):
    python3 benchmarks/split_for_device.py split ~/.cache/nmx/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf \
        --parts .carry1,.carry2
    # call 1 (carry [".carry1"]), call 2 (carry [".carry2"]), each starting with:
    python3 benchmarks/split_for_device.py join .carryN --to /tmp/nmx-cache/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
    # the join of the last part checks the whole file's sha256 (written by `split` into every part folder)
    # and prints "complete"; then NMX_CACHE_DIR=/tmp/nmx-cache finds the model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nmx.model.fetch import sha256_of  # noqa: E402


def split(src: Path, folders: list[Path]) -> None:
    size = src.stat().st_size
    per = -(-size // len(folders))
    if per > 60 << 20:
        sys.exit(f"{src}: {size} bytes in {len(folders)} parts is {per} bytes a part; use more parts (<= 60 MiB each)")
    digest = sha256_of(src)
    with src.open("rb") as f:
        for i, folder in enumerate(folders):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "part").write_bytes(f.read(per))
            meta = {"name": src.name, "index": i, "parts": len(folders), "offset": i * per, "size": size,
                    "sha256": digest}
            (folder / "part.json").write_text(json.dumps(meta))
            print(f"{folder}/part: bytes {i * per}..{min(size, (i + 1) * per)} of {size}")


def join(folder: Path, to: Path) -> None:
    meta = json.loads((folder / "part.json").read_text())
    part = (folder / "part").read_bytes()
    to.parent.mkdir(parents=True, exist_ok=True)
    have = to.stat().st_size if to.exists() else 0
    if have != meta["offset"]:
        sys.exit(f"{to} holds {have} bytes; part {meta['index']} starts at {meta['offset']}: join the parts in order "
                 "on a machine that stayed warm between the calls")
    with to.open("ab") as f:
        f.write(part)
    done = to.stat().st_size
    if done < meta["size"]:
        print(f"part {meta['index'] + 1}/{meta['parts']} in: {done} of {meta['size']} bytes")
        return
    if sha256_of(to) != meta["sha256"]:
        to.unlink()
        sys.exit(f"{to}: sha256 differs from the source's; removed")
    print(f"complete: {to} ({done} bytes, sha256 {meta['sha256'][:16]}...)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("src", type=Path)
    s.add_argument("--parts", required=True, help="comma-separated part folders (ignored by git)")
    j = sub.add_parser("join")
    j.add_argument("folder", type=Path)
    j.add_argument("--to", type=Path, required=True)
    a = ap.parse_args()
    if a.cmd == "split":
        split(a.src.expanduser(), [Path(p) for p in a.parts.split(",")])
    else:
        join(a.folder, a.to)


if __name__ == "__main__":
    main()
