#!/usr/bin/env bash
# Issue 16's open GPU measurements, each part bounded in time so that one slow part cannot take the others with it
# (all five parts take up to ~17 minutes: run them as two device calls, e.g. "gemv tests" and "fused fp8kv mxkv").
# Results go to $OUT (default ./out).
#     bash benchmarks/issue16_gpu.sh [PART ...]     (PyTorch with CUDA, triton, pytest, transformers installed)
# PARTs (default: all, in this order):
#   gemv       the one-token kernel's switches against the way before (FOLD_SIGN, X_BCAST, PRMT_GATHER), M = 1,
#              three shapes, after the GPU tests of the one-token kernel (which check the switches' bits)
#   tests      the GPU tests of what was built without a GPU: the fused small ops, the graph-mode KV cache (fp8 too)
#   fused      decode steps with transformers' small ops and with nmx.kernels.fuse_small_ops, int4 weights, int4 KV,
#              batch 1 and 16, each row profiled (checks the model's written-down "hf-fused" prediction)
#   fp8kv      the same with the fp8_e4m3 packed KV cache in graph mode, fused small ops
#   mxkv       the same with the mxfp4 packed KV cache
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src
OUT=${OUT:-out}
mkdir -p "$OUT"
PARTS=${*:-gemv tests fused fp8kv mxkv}
step() { echo "== $1 [$(date +%T)]"; }
for part in $PARTS; do  # every part named right before any runs
  case $part in gemv|tests|fused|fp8kv|mxkv) ;; *) echo "unknown part $part (gemv, tests, fused, fp8kv, mxkv)"; exit 2 ;; esac
done
for part in $PARTS; do
  case $part in
    gemv) step "one-token kernel: GPU tests, then the switches timed"
      timeout 100 python3 -m pytest tests/kernels/test_packed_linear.py -q -m gpu -k "one_token or dispatch_on" \
          -p no:cacheprovider 2>&1 | tail -4 | tee "$OUT/gpu_tests_gemv.txt"
      timeout 250 python3 benchmarks/gemv_variants.py --out "$OUT" --shapes 4096x4096,11008x4096,4096x11008 \
          --budget-s 215 ;;
    tests) step "GPU tests: fused small ops, graph-mode KV"
      timeout 200 python3 -m pytest tests/kernels/test_small_ops.py tests/kernels/test_kv_graph.py -q -m gpu \
          -p no:cacheprovider 2>&1 | tail -6 | tee "$OUT/gpu_tests_issue16.txt" ;;
    fused) step "decode, small ops as transformers launches them and fused"
      timeout 240 python3 -m nmx bench decode --config llama-2-7b --weights int4_g128 --kv int4 --batch 1,16 \
          --context 2048 --tokens 64 --small-ops both --profile 2 --out "$OUT/decode_small_ops_h100.json" 2>&1 \
          | grep -v "^timing\|Warning\|warn" | tail -40 ;;
    fp8kv) step "decode, fp8_e4m3 packed KV in graph mode, fused small ops"
      timeout 150 python3 -m nmx bench decode --config llama-2-7b --weights int4_g128 --kv fp8_e4m3 --batch 1,16 \
          --context 2048 --tokens 64 --small-ops fused --out "$OUT/decode_fp8kv_h100.json" 2>&1 \
          | grep -v "^timing\|Warning\|warn" | tail -20 ;;
    mxkv) step "decode, mxfp4 packed KV in graph mode, fused small ops"
      timeout 150 python3 -m nmx bench decode --config llama-2-7b --weights int4_g128 --kv mxfp4 --batch 1,16 \
          --context 2048 --tokens 64 --small-ops fused --out "$OUT/decode_mxkv_h100.json" 2>&1 \
          | grep -v "^timing\|Warning\|warn" | tail -20 ;;
  esac
done
