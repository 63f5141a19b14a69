#!/usr/bin/env bash
# Rebuild, in a fresh checkout, the ignored folders a GPU device call carries (the device machine has no network
# and takes at most 64 MiB a call): run from the repository root, here (not on the device machine).
#
#   .whl/        wheels the device machine lacks (pydantic and its parts, gguf), for Python 3.12 x86-64
#   .carry1/ .carry2/   the default model's GGUF (94 MB) in two parts, joined on the device over two consecutive calls
#   .carrydata/  WikiText-2 validation (training / calibration text) from NMX_DATA_DIR
#   .carrysrc/   src, tests, benchmarks and pyproject.toml of HEAD (what the device runs, results left out)
#
# A call then carries [".whl", ".carrysrc", ".carry1", ".carrydata"] (about 62 MiB with the working tree) and starts
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD/.carrysrc/src
#   python3 .carrysrc/benchmarks/split_for_device.py join .carry1 --to /tmp/nmx-cache/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
# and the next call (the machine still warm) the same with .carry2; then NMX_CACHE_DIR=/tmp/nmx-cache finds the model.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
data="${NMX_DATA_DIR:-../shared/data}"
exclude=.git/info/exclude
mkdir -p .git/info
for d in /.whl/ /.carry1/ /.carry2/ /.carrydata/ /.carrysrc/; do
    grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >> "$exclude"
done

rm -rf .whl && mkdir .whl
for w in pydantic==2.13.4 pydantic-core==2.46.4 annotated-types typing-inspection gguf==0.19.0; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$w"
done

gguf=$(python3 -c "from nmx.model.fetch import smollm2_gguf; print(smollm2_gguf())")
rm -rf .carry1 .carry2
python3 benchmarks/split_for_device.py split "$gguf" --parts .carry1,.carry2

rm -rf .carrydata && mkdir -p .carrydata/text/wikitext-2
cp "$data/text/wikitext-2/wiki.valid.tokens" .carrydata/text/wikitext-2/

rm -rf .carrysrc && mkdir .carrysrc
git archive HEAD src tests benchmarks pyproject.toml | tar -x -C .carrysrc
rm -rf .carrysrc/benchmarks/results
du -sh .whl .carry1 .carry2 .carrydata .carrysrc
