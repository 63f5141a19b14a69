#!/usr/bin/env bash
# Issue 6 on the GPU machine in one call: every GPU test, then each kernel benchmark, each one bounded
# in time so that one slow part cannot take the others with it. Results go to $OUT (default ./out).
#     bash benchmarks/issue6_gpu.sh [PART ...]     (PyTorch with CUDA, triton, pytest installed)
# A device call runs 10 minutes at most: "tc-tests tests" fit one call, "tc e2e e2e-tc" another.
# PARTs (default: all, in this order): tests e2e kv kernels tc fakequant; also "tc-tests" (only the
# tensor-core kernel's GPU tests) and "e2e-tc" (end to end, 2..64 tokens on that kernel).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src
OUT=${OUT:-out}
mkdir -p "$OUT"
PARTS=${*:-tests e2e kv kernels tc fakequant}
step() { echo "== $1 [$(date +%T)]"; }
for part in $PARTS; do
  case $part in
    tests) step "GPU tests"
      timeout 360 python3 -m pytest tests/kernels tests/formats/test_gpu.py tests/kv/test_gpu.py -q -m gpu \
          -p no:cacheprovider 2>&1 | tail -4 | tee "$OUT/gpu_tests.txt" ;;
    tc-tests) step "GPU tests of the tensor-core kernel"
      timeout 240 python3 -m pytest tests/kernels/test_packed_linear.py -q -m gpu -k tensor_core -p no:cacheprovider \
          2>&1 | tail -4 | tee "$OUT/gpu_tests_tc.txt" ;;
    e2e) step "end-to-end decode"
      timeout 130 python3 benchmarks/decode_e2e.py --context 2048 --out "$OUT" 2>&1 | tail -6 ;;
    e2e-tc) step "end-to-end decode, 2..64 tokens on the tensor-core kernel"
      timeout 130 python3 benchmarks/decode_e2e.py --context 2048 --small-m tc --out "$OUT/e2e_tc" 2>&1 | tail -6 ;;
    kv) step "kernel 4: decode attention over a quantized KV cache"
      timeout 90 python3 benchmarks/kv_attention_bench.py --budget-s 60 --out "$OUT" 2>&1 | tail -22 ;;
    kernels) step "kernels 1 and 2"
      timeout 150 python3 benchmarks/kernels_bench.py --ms 1,16,64 --k2-ms 512,2048,4096,8192 --out "$OUT" 2>&1 \
          | grep -v "^#" | tail -24 ;;
    tc) step "kernel 1 over M = 1 .. 64: the tensor-core kernel"
      timeout 260 python3 benchmarks/tc_curve.py --budget-s 200 --out "$OUT" 2>&1 | tail -120 ;;
    fakequant) step "kernel 3: fused fake-quant"
      timeout 40 python3 benchmarks/fakequant_bench.py --quick --out "$OUT" 2>&1 | tail -16 ;;
    *) echo "unknown part $part"; exit 2 ;;
  esac
done
step "done"
