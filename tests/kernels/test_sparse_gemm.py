"""The prefill dispatcher's decision logic (sparse_gemm.py) on CPU: buckets, the 3 % margin, and
what it does when it cannot time (inside a capture). Its GPU behaviour is in test_packed_linear.py."""

import torch

from nmx.kernels import sparse_gemm


def test_buckets_are_the_next_power_of_two():
    assert [sparse_gemm.bucket(m) for m in (1, 2, 3, 64, 65, 300, 2048, 2049)] == [1, 2, 4, 64, 128, 512, 2048, 4096]


def test_sparse_is_chosen_only_when_faster_by_more_than_the_margin():
    key = (11008, 4096, 4096, "graph")
    assert sparse_gemm._decide(key, 0.98e-3, 1.0e-3) == "dense"  # 2 % faster: within noise, keep dense
    assert sparse_gemm._decide(key, 0.96e-3, 1.0e-3) == "sparse"
    assert sparse_gemm.DECISIONS.timings_s[key] == (0.96e-3, 1.0e-3)
    assert sparse_gemm._decide(key, 1.2e-3, 1.0e-3) == "dense"


def test_no_cusparselt_without_a_gpu():
    if not torch.cuda.is_available():
        assert not sparse_gemm.available()
