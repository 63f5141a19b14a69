"""The measured dispatch table (data/dispatch_h100.json, from benchmarks/kernels_peers.py) and the lookup
that reads it. Oracle: the table's own measurements (every choice is the fastest path it recorded) and
the tensor-core kernel's legality rules (each config must be accepted for the shape it is used on)."""

from __future__ import annotations

import math

import pytest
import torch

from nmx.kernels import dispatch, pack
from nmx.kernels.dispatch import MEASURED_M, case_name, lookup, measured_table


@pytest.fixture(scope="module")
def table():
    t = measured_table("NVIDIA H100 80GB HBM3", (9, 0))
    assert t, "the packaged H100 table is missing or empty"
    return t


def test_only_sm90_has_a_table():
    assert measured_table("NVIDIA A100-SXM4-80GB", (8, 0)) is None


def test_every_entry_is_the_fastest_measured_path(table):
    for (case, n, k, m), e in table.items():
        assert m in MEASURED_M and e["backend"] in ("gemv", "tc", "dense"), e
        assert (e["backend"] == "gemv") == (m == 1 and e["backend"] != "dense"), e  # gemv is the one-token kernel
        if e["backend"] == "dense":  # chosen only where the best packed path lost to cuBLAS
            assert e["best_packed_s"] > e["cublas_s"], e
        else:  # a packed path is chosen only where it beat cuBLAS in the same run
            assert e["time_s"] <= e["cublas_s"], e


def test_table_covers_the_measured_grid(table):
    cases = {c for c, *_ in table}
    shapes = {(n, k) for _, n, k, _ in table}
    assert {"int4_g128", "nvfp4", "mxfp4", "fp8_e4m3", "2:4+int4_g128"} <= cases
    assert len(table) == len(cases) * len(shapes) * len(MEASURED_M)


def _packed(n, k, fmt, pattern=None):
    w = torch.randn(n, k) / math.sqrt(k)
    if pattern:
        from nmx.sparsity.masks import nm_mask

        w = w * nm_mask(w.abs(), 2, 4)
    return pack(w, fmt, pattern)


def test_lookup_exact_nearest_and_m_rounding(table):
    p = _packed(1024, 4096, "int4_g128")
    assert lookup(table, p, 1) is table[("int4_g128", 1024, 4096, 1)]
    assert lookup(table, p, 3) is table[("int4_g128", 1024, 4096, 4)]  # M rounded up
    assert lookup(table, p, 64) is table[("int4_g128", 1024, 4096, 64)]
    assert lookup(table, p, 65) is None  # past the kernels' range: the GEMM rules decide
    q = _packed(1024, 2048, "int4_g128")  # not measured: the nearest shape by N x K (1024x4096)
    assert lookup(table, q, 16) is table[("int4_g128", 1024, 4096, 16)]
    assert lookup(table, _packed(64, 256, "mxfp8_e4m3"), 1) is None  # a format never measured


def test_tc_configs_fit_other_shapes(table):
    """A tensor-core config measured on one shape, used on another, must pass tc_linear's checks."""
    for (case, n, k, m), e in table.items():
        if e["backend"] != "tc":
            continue
        for shape_k in (k, 1024, 576 * 2, 1536):
            fmt = case.split("+")[-1]
            p = pack(torch.zeros(64, shape_k), fmt, "2:4" if case.startswith("2:4") else None)
            cfg = dispatch._fit_tc(e["config"], p, m)
            if cfg is None:
                continue
            bk, split = cfg["BLOCK_K"], cfg["SPLIT_K"]
            assert p.k % bk == 0 and (p.k // bk) % split == 0 and cfg["BLOCK_M"] >= min(16, cfg["BLOCK_M"])
            if p.element == "int4":
                assert p.block % bk == 0


def test_case_names():
    assert case_name(_packed(64, 256, "nvfp4", "2:4")) == "2:4+nvfp4"
    assert case_name(_packed(64, 256, None, "2:4")) == "2:4+bf16"
