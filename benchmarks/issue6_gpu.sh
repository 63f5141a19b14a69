#!/usr/bin/env bash
# Issue 6 on the GPU machine in one call: every GPU test, then each kernel benchmark, each one bounded
# in time so that one slow part cannot take the others with it. Results go to $OUT (default ./out).
#     bash benchmarks/issue6_gpu.sh            (PyTorch with CUDA, triton, pytest installed)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src
OUT=${OUT:-out}
mkdir -p "$OUT"
step() { echo "== $1 [$(date +%T)]"; }
step "GPU tests"
timeout 150 python3 -m pytest tests/kernels tests/formats/test_gpu.py tests/kv/test_gpu.py -q -m gpu -p no:cacheprovider \
    2>&1 | tail -4 | tee "$OUT/gpu_tests.txt"
step "end-to-end decode"
timeout 130 python3 benchmarks/decode_e2e.py --context 2048 --out "$OUT" 2>&1 | tail -6
step "kernel 4: decode attention over a quantized KV cache"
timeout 90 python3 benchmarks/kv_attention_bench.py --budget-s 60 --out "$OUT" 2>&1 | tail -22
step "kernels 1 and 2"
timeout 150 python3 benchmarks/kernels_bench.py --ms 1,16,64 --k2-ms 512,2048,4096,8192 --out "$OUT" 2>&1 \
    | grep -v "^#" | tail -24
step "kernel 3: fused fake-quant"
timeout 40 python3 benchmarks/fakequant_bench.py --quick --out "$OUT" 2>&1 | tail -16
step "done"
