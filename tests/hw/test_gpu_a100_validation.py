"""The a100-80gb preset against published, measured A100 numbers (src/nmx/hw/data/a100_published.csv).

Oracle: the published numbers themselves, each row naming its source (URL, table and row); the held-out
errors pinned here are the ones docs/gpu_validation.md reports, so a change to the GPU model or to the
preset that moves them fails here and the document has to be redone with
`python benchmarks/gpu_fit.py --published --target a100-80gb --rounds 10`.
"""

from __future__ import annotations

import pytest

from nmx.errors import InputError
from nmx.hw import gpu
from tests.scripts import benchmark_script

MAIN = ("gemm bf16/fp16", "attention", "decode bf16")  # the operation classes the preset is fitted and judged on


@pytest.fixture(scope="module")
def rows():
    return gpu.load_published()


def test_the_csv_parses_and_every_number_names_its_source(rows):
    assert len(rows) == 25 and len({r["id"] for r in rows}) == 25
    assert {gpu.op_class(r) for r in rows} == {*MAIN, "decode int8", "decode int4_g32"}
    for r in rows:
        assert r["source"].startswith("https://github.com/"), r["id"]
        for key in ("where", "gpu", "precision", "shape"):
            assert r[key], (r["id"], key)
        assert "A100" in r["gpu"] and r["measured"] > 0 and r["latency_s"] > 0, r["id"]
    # every class the preset is judged on has rows to fit and rows held out
    for cls in MAIN:
        roles = {r["role"] for r in rows if gpu.op_class(r) == cls}
        assert roles == {"fit", "held-out"}, cls
    # the derived latencies, by hand: MAMF's 271.2 TFLOPS at 1024x10240x5120 is 2 M N K flops in 396 us;
    # FlashAttention-2's 1.535 ms is 1.535 ms; 107.38 tokens/s at batch 1 is one step per 9.31 ms
    by_id = {r["id"]: r for r in rows}
    assert by_id["gemm-mamf-a100-sxm"]["latency_s"] == pytest.approx(2 * 1024 * 10240 * 5120 / 271.2e12)
    assert by_id["fa2-fwd-full-b16-q1024-kv1024-hkv32"]["latency_s"] == pytest.approx(1.535e-3)
    assert by_id["decode-torchao-llama2-7b-bf16"]["latency_s"] == pytest.approx(1 / 107.38)


def test_a_row_without_its_source_or_with_a_bad_unit_is_refused(tmp_path):
    text = gpu.measurement_file("a100_published.csv").read_text()
    header, first = [ln for ln in text.splitlines() if not ln.startswith("# ")][:2]
    no_source = first.replace("https://github.com/stas00/ml-engineering/blob/b9e29720eebd4aa946fa9678975385efbc90a777/"
                              "compute/accelerator/README.md", "")
    assert no_source != first
    (tmp_path / "a.csv").write_text(header + "\n" + no_source + "\n")
    with pytest.raises(InputError, match="empty source"):
        gpu.load_published(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text(header + "\n" + first.replace(",TFLOPS,", ",GFLOPS,") + "\n")
    with pytest.raises(InputError, match="unit 'GFLOPS'"):
        gpu.load_published(tmp_path / "b.csv")


def test_the_preset_reproduces_the_reported_held_out_errors(rows):
    held = [r for r in rows if r["role"] == "held-out"]
    after = gpu.model_error("a100-80gb", held)
    before = gpu.model_error(gpu.uncalibrated("a100-80gb"), held)
    reported = {  # class: (held-out rows, uncalibrated, calibrated median |pred/meas - 1|), docs/gpu_validation.md
        "gemm bf16/fp16": (4, 0.184, 0.139), "attention": (8, 0.204, 0.062), "decode bf16": (1, 0.150, 0.014),
        "decode int8": (3, 0.103, 0.037), "decode int4_g32": (1, 0.007, 0.031)}
    for cls, (n, b, a) in reported.items():
        assert after[cls]["count"] == n, cls
        assert before[cls]["median_abs_err"] == pytest.approx(b, abs=0.002), cls
        assert after[cls]["median_abs_err"] == pytest.approx(a, abs=0.002), cls
    # the target (<= 10 %) holds for the bf16 decode step and fused attention (causal priced on the tiles
    # FlashAttention-2 computes); the GEMMs (14 %: best-shape maxima and training linears 30 % apart) miss it --
    # docs/gpu_validation.md says why. The calibration still beats the H200's numbers.
    assert after["decode bf16"]["median_abs_err"] <= 0.10
    assert after["attention"]["median_abs_err"] <= 0.10
    for cls in MAIN:
        assert after[cls]["median_abs_err"] < before[cls]["median_abs_err"], cls


def test_the_preset_is_the_fit_on_the_fit_rows_alone():
    """benchmarks/gpu_fit.py --published, run here on the `fit` rows: the preset holds what it finds
    (rounded to 3 digits), so the held-out rows had no part in it."""
    fit_tool = benchmark_script("gpu_fit")
    p = fit_tool.fit_published(None, "a100-80gb", rounds=10, verbose=False)
    t = gpu.get_target("a100-80gb")
    assert p[("flops_eff", "bf16")] == pytest.approx(t.flops_eff["bf16"], rel=0.01)
    assert p[("attention_flops_eff", None)] == pytest.approx(t.attention_flops_eff, rel=0.01)
    assert p[("bw_eff", "gemm")] == pytest.approx(t.bw_eff["gemm"], rel=0.01)


def test_attention_has_its_own_efficiency_and_the_uncalibrated_baseline_is_the_h200s():
    t = gpu.get_target("a100-80gb")
    # compute-bound FlashAttention forward, by hand: 4 b h s^2 d flops at 312 TFLOPS x 0.545, plus the launch
    r = gpu.attention(t, 16, 1024, 1024, 32, 32, 128, causal=False)
    assert r["bound"] == "compute"
    assert r["latency_s"] == pytest.approx(4 * 16 * 32 * 1024 * 1024 * 128 / (312e12 * 0.545) + t.launch_s)
    # GEMMs keep flops_eff["bf16"]; presets without their own attention efficiency use it for attention too
    g = gpu.gemm(t, 4096, 4096, 4096, impl="ideal")
    assert g["latency_s"] == pytest.approx(2 * 4096 ** 3 / (312e12 * 0.753) + t.launch_s)
    # a linear's forward and backward (published row op "linear_fwd_bwd"): its three GEMMs of 2 m n k flops each,
    # fp16 at the bf16 rate and efficiency; the forward and input-gradient GEMMs pad M = 13008 to 13056 rows
    row = {"op": "linear_fwd_bwd", "m": 13008, "n": 4096, "k": 1024, "dtype": "fp16"}
    one = 2 * 13008 * 4096 * 1024 / (312e12 * 0.753)
    assert gpu.predict_measured(t, row) == pytest.approx((2 * 13056 / 13008 + 1) * one + 3 * t.launch_s)
    h = gpu.get_target("h200")
    assert h.attention_flops_eff is None
    assert gpu.attention(h, 16, 1024, 1024, 32, 32, 128, causal=False)["compute_s"] == pytest.approx(
        4 * 16 * 32 * 1024 * 1024 * 128 / (h.peak("bf16") * h.efficiency("bf16")))
    base = gpu.uncalibrated("a100-80gb")
    assert base.attention_flops_eff is None and base.flops_eff == h.flops_eff and base.bw_eff == h.bw_eff
    assert base.peak("bf16") == t.peak("bf16") and base.bandwidth_bytes_per_s == t.bandwidth_bytes_per_s


@pytest.mark.parametrize("q_len,kv_len,tile", [(1024, 1024, (128, 64)), (1024, 4096, (128, 64)), (300, 300, (128, 64)),
                                              (7, 50, (4, 8)), (33, 33, (16, 16)), (1, 90, (128, 64))])
def test_causal_tile_factor_counts_the_tiles_a_causal_kernel_computes(q_len, kv_len, tile):
    """Brute force: a tile (row block x key block, clipped at the edges) is computed whole when the mask keeps any
    pair in it (query i sees keys j <= kv_len - q_len + i); one query is computed as it is."""
    bm, bn = tile
    keep = lambda i, j: j <= kv_len - q_len + i  # noqa: E731
    kept = sum(keep(i, j) for i in range(q_len) for j in range(kv_len))
    computed = 0
    for r in range(0, q_len, bm):
        for c in range(0, kv_len, bn):
            rows, cols = range(r, min(r + bm, q_len)), range(c, min(c + bn, kv_len))
            if any(keep(i, j) for i in rows for j in cols):
                computed += len(rows) * len(cols)
    want = 1.0 if q_len == 1 else computed / kept
    assert gpu.causal_tile_factor(q_len, kv_len, tile) == pytest.approx(want)


def test_causal_attention_is_priced_on_the_tiles_it_computes():
    t = gpu.get_target("a100-80gb")
    full = gpu.attention(t, 16, 1024, 1024, 32, 32, 128, causal=False)
    causal = gpu.attention(t, 16, 1024, 1024, 32, 32, 128, causal=True)
    # the mask keeps 1024 * 1025 / 2 pairs of 1024^2; 128 x 64 tiles compute 72 key blocks of 64 per head
    assert causal["flops"] == pytest.approx(full["flops"] * 1025 / 2048)
    assert causal["executed_flops"] == pytest.approx(full["flops"] * 72 * 128 * 64 / 1024 ** 2)
    assert causal["compute_s"] == pytest.approx(full["compute_s"] * 72 * 128 * 64 / 1024 ** 2)
