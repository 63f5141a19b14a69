"""The cost of a training step (nmx.hw.training): each test names its oracle.

Anchor numbers for docs/training_cost.md: `python3 -m pytest tests/hw/test_training_cost.py -k anchor -s`."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from nmx.errors import InputError
from nmx.hw.training import (
    ADAMW_BF16,
    ADAMW_FP32,
    ATTN_BWD_FLOPS,
    VIT_L_MLP,
    VIT_L_TOKENS_PER_IMAGE,
    compare,
    gelu_between,
    group_of,
    linears_step,
    price_train_step,
    train_step,
)
from nmx.hw.workload import PRESETS
from tests.cli import run_cli

SMOL = PRESETS["smollm2-135m"]
B, S = 2, 64
T = B * S
# smollm2-135m's linears, written out by hand from its config (hidden 576, 9 query / 3 KV heads of
# 64, MLP 1536): (out, in)
HAND = {"self_attn.q_proj": (576, 576), "self_attn.k_proj": (192, 576), "self_attn.v_proj": (192, 576),
        "self_attn.o_proj": (576, 576), "mlp.gate_proj": (1536, 576), "mlp.up_proj": (1536, 576),
        "mlp.down_proj": (576, 1536)}
PER_LAYER_WEIGHTS = 3_538_944  # sum of out * in above, by hand: 2*576*576 + 2*192*576 + 3*1536*576


def _step(mask="plain", pattern="2:4", **kw):
    return train_step("smollm2-135m", batch=B, seq_len=S, pattern=pattern, mask=mask, **kw)


# ---------------------------------------------------------------- GEMM shapes and MACs


def test_gemm_shapes_and_macs_equal_hand_counts():
    """Oracle: the three GEMMs of y = x Wᵀ written out by hand -- forward (T, out, in), input gradient
    (T, in, out), weight gradient (out, in, T) -- and 3x the forward MACs for dense linears."""
    assert sum(o * i for o, i in HAND.values()) == PER_LAYER_WEIGHTS
    step = _step(mask="dense", pattern=None)
    by = {(g.linear, g.role): g for g in step.gemms}
    for name, (out, inp) in HAND.items():
        assert (by[name, "forward"].m, by[name, "forward"].n, by[name, "forward"].k) == (T, out, inp)
        assert (by[name, "input_grad"].m, by[name, "input_grad"].n, by[name, "input_grad"].k) == (T, inp, out)
        assert (by[name, "weight_grad"].m, by[name, "weight_grad"].n, by[name, "weight_grad"].k) == (out, inp, T)
        assert all(by[name, r].count == 30 for r in ("forward", "input_grad", "weight_grad"))
    fwd = T * (30 * PER_LAYER_WEIGHTS + 49152 * 576)  # decoder linears + the LM head over every token
    assert step.linear_macs("forward") == fwd
    assert step.linear_macs("input_grad") == step.linear_macs("weight_grad") == fwd
    assert step.linear_macs() == 3 * fwd
    # the workload's GEMM ops carry the same FLOPs (2 per MAC)
    gemm_flops = sum(op.flops * op.count for op in step.workload.ops if op.kind == "gemm")
    assert gemm_flops == 2 * 3 * fwd


def test_attention_backward_is_2_5x_the_forward_flops():
    """Oracle: FlashAttention-2's backward runs five GEMMs of the forward's size to its two; the
    causal forward has S(S+1)/2 score pairs per head, 4 FLOPs x head_dim each (QKᵀ and PV)."""
    step = _step(mask="dense", pattern=None)
    ops = {op.name: op for op in step.workload.ops}
    fwd, bwd = ops["fwd:self_attn.attention"], ops["dgrad:self_attn.attention"]
    assert fwd.flops == 4.0 * B * 9 * (S * (S + 1) // 2) * 64
    assert bwd.flops == ATTN_BWD_FLOPS * fwd.flops == 2.5 * fwd.flops
    assert fwd.kv_bytes_written == 0 and bwd.count == fwd.count == 30


# ---------------------------------------------------------------- which operand is sparse


@pytest.mark.parametrize("mask, fraction", [("dense", Fraction(0)), ("plain", Fraction(1, 3)),
                                            ("transposable", Fraction(2, 3)), ("bidirectional", Fraction(2, 3))])
def test_sparse_operand_fraction_per_mask_kind(mask, fraction):
    """Oracle: of a masked linear's three equal-MAC GEMMs, plain makes one (forward) sparse,
    transposable and bidirectional two (forward, input gradient), dense none."""
    step = _step(mask=mask, pattern=None if mask == "dense" else "2:4")
    assert step.sparse_fraction() == pytest.approx(float(fraction), abs=1e-15)
    # over every linear the LM head (dense) dilutes it: hand count of the sparse MACs over all
    all_macs = 3 * T * (30 * PER_LAYER_WEIGHTS + 49152 * 576)
    sparse = int(fraction * 3) * T * 30 * PER_LAYER_WEIGHTS
    assert step.sparse_fraction(masked_only=False) == pytest.approx(sparse / all_macs, rel=1e-12)


@pytest.mark.parametrize("mask, dgrad", [("plain", (None, None, None)), ("transposable", ("Wᵀ", "transposable", "2:4")),
                                         ("bidirectional", ("Wᵀ", "column", "2:4"))])
def test_masks_mark_the_right_gemms(mask, dgrad):
    """Oracle: the mask definitions -- forward X·Wᵀ sparse in W with the row-wise mask for every
    sparse kind; dY·W sparse in Wᵀ only for transposable (the same mask) and bidirectional (a
    column-wise mask); dYᵀ·X never; the LM head (not targeted) never."""
    step = _step(mask=mask)
    ops = {op.name: op for op in step.workload.ops}
    for g in step.gemms:
        if g.linear == "lm_head" or g.role == "weight_grad":
            assert g.sparse_operand is None and g.pattern is None and ops[g.name].pattern is None
        elif g.role == "forward":
            assert (g.sparse_operand, g.mask, g.pattern, g.a, g.b) == ("W", "row", "2:4", "X", "W")
            assert ops[g.name].pattern == "2:4"
        else:
            assert (g.sparse_operand, g.mask, g.pattern) == dgrad and (g.a, g.b) == ("dY", "Wᵀ")
            assert ops[g.name].pattern == dgrad[2]


def test_a_gpu_prices_the_sparse_input_gradient_on_the_sparse_tensor_cores():
    """Oracle: nmx.hw.gpu.gemm of the same (m, n, k) with and without 2:4 -- the step's input-gradient
    rows equal it, so a transposable mask makes dY·W cheaper than a plain one on a compute-bound shape."""
    from nmx.hw.gpu import gemm
    from nmx.hw.targets import get_target

    t = get_target("h100-sxm", "ideal")
    steps = {m: linears_step({"fc": (4096, 4096)}, 8192, pattern="2:4", mask=m, compress=False)
             for m in ("plain", "transposable")}
    rows = {m: {r.name: r.latency_s for r in t.cost(s.workload).ops} for m, s in steps.items()}
    assert rows["plain"]["dgrad:fc"] == gemm(t.gpu, 8192, 4096, 4096, "bf16", None, None, "ideal")["latency_s"]
    assert rows["transposable"]["dgrad:fc"] == gemm(t.gpu, 8192, 4096, 4096, "bf16", "2:4", None,
                                                    "ideal")["latency_s"]
    assert rows["transposable"]["dgrad:fc"] < rows["plain"]["dgrad:fc"]
    assert rows["transposable"]["wgrad:fc"] == rows["plain"]["wgrad:fc"]


def test_transposable_needs_m_to_divide_both_dims(tmp_path):
    """Oracle: a hand-made config whose only non-divisible dim is an output (k/v_proj: 2 KV heads x
    12 = 24 outputs, 24 % 16 != 0): plain 2:16 is fine, transposable and bidirectional are refused."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"hidden_size": 96, "intermediate_size": 128, "num_hidden_layers": 2,
                               "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 12,
                               "vocab_size": 64}))
    train_step(str(cfg), batch=1, seq_len=8, pattern="2:16", mask="plain")
    for mask in ("transposable", "bidirectional"):
        with pytest.raises(InputError, match=r"k_proj \[24 x 96\]: out = 24 is not divisible by 16"):
            train_step(str(cfg), batch=1, seq_len=8, pattern="2:16", mask=mask)


# ---------------------------------------------------------------- optimizer, checkpointing


def test_optimizer_bytes_equal_a_hand_count():
    """Oracle: AdamW per parameter, by hand. fp32 master / grads / moments + a bf16 copy: reads
    4 + 4 + 4 + 4 = 16, writes 4 + 4 + 4 + 2 = 14; a masked weight also reads its 1-byte mask. All
    bf16: reads 8, writes 6. smollm2-135m has 134,515,008 parameters (30 x 3,538,944 masked)."""
    params, masked = 134_515_008, 30 * PER_LAYER_WEIGHTS
    assert SMOL.parameters == params

    def adamw_bytes(step):
        return sum(op.bytes * op.count for op in step.workload.ops if op.name.startswith("optim:adamw."))

    assert adamw_bytes(_step(mask="dense", pattern=None)) == params * (16 + 14)
    sparse = _step(mask="plain")
    assert sparse.masked_parameters == masked
    assert adamw_bytes(sparse) == params * (16 + 14) + masked * 1
    assert adamw_bytes(_step(mask="dense", pattern=None, optimizer=ADAMW_BF16)) == params * (8 + 6)
    assert _step(mask="dense", pattern=None).optimizer_state_bytes == params * (4 + 4 + 8 + 2)
    # re-packing the sparse weights each step reads each masked weight once (its bf16 copy) and
    # writes one packed copy per orientation: plain W, transposable W and Wᵀ
    def pack(step, attr):
        return sum(getattr(op, attr) * op.count for op in step.workload.ops if op.name.startswith("optim:compress."))

    tr = _step(mask="transposable")
    assert pack(sparse, "bytes_read") == pack(tr, "bytes_read") == masked * 2
    assert pack(tr, "bytes_written") == pytest.approx(2 * pack(sparse, "bytes_written"), rel=1e-12)
    assert ADAMW_FP32.bytes_read(False) == 16 and ADAMW_FP32.bytes_written() == 14


def test_checkpointing_adds_exactly_the_recomputed_forward():
    """Oracle: per-layer gradient checkpointing re-runs each decoder layer's forward once -- the
    checkpointed step is the plain step plus a copy of every per-layer forward op (same count, FLOPs
    and bytes) and nothing else; saved activations by hand (bf16, per token: a layer saves
    4h + 2q + 2kv + 3i elements + 9 fp32 log-sum-exps = 16,932 bytes for smollm2; a layer input
    1,152; the head 2h + vocab = 100,608)."""
    for mask in ("dense", "transposable"):
        plain = _step(mask=mask, pattern=None if mask == "dense" else "2:4")
        ckpt = _step(mask=mask, pattern=None if mask == "dense" else "2:4", checkpointing=True)
        rest = [op for op in ckpt.workload.ops if group_of(op.name) != "recompute"]
        assert rest == list(plain.workload.ops)
        recompute = [op for op in ckpt.workload.ops if group_of(op.name) == "recompute"]
        layer_fwd = [op for op in plain.workload.ops if op.name.startswith("fwd:") and op.count == 30]
        assert [op.name.split(":", 1)[1] for op in recompute] == [op.name.split(":", 1)[1] for op in layer_fwd]
        for a, b in zip(recompute, layer_fwd, strict=True):
            assert (a.flops, a.bytes_read, a.bytes_written, a.count, a.pattern) == \
                (b.flops, b.bytes_read, b.bytes_written, b.count, b.pattern)
        assert ckpt.workload.total("flops") - plain.workload.total("flops") == sum(op.flops * 30 for op in layer_fwd)
    assert plain.activation_bytes == T * (30 * 16_932 + 100_608)
    assert ckpt.activation_bytes == T * (30 * 1_152 + 16_932 + 100_608)
    assert ckpt.activation_bytes_no_checkpointing == plain.activation_bytes


# ---------------------------------------------------------------- targets price it unchanged


def test_every_target_kind_prices_a_training_step():
    """Oracle: the targets' own per-op answers -- a GPU and an accelerator price the step's ops and
    the per-group sums add up to the total; the accelerator runs attention's backward as its two
    GEMMs 2.5 times (energy of the qk/pv rows exactly 2.5x the forward's), and a forward attention
    op still gives count x batch x KV heads GEMMs (unchanged by the extension)."""
    from nmx.hw.accel import Gemm, problems_from_workload
    from nmx.hw.targets import get_target
    from nmx.hw.training import group_costs
    from nmx.hw.workload import llm_workload

    step = _step(mask="transposable")
    for name in ("h100-sxm", "nm24-16x16-ws", "uspe-16x16-ws"):
        c = get_target(name).cost(step.workload)
        groups = group_costs(c)
        assert set(groups) == {"forward", "input_grad", "weight_grad", "optimizer"}
        assert sum(g["latency_s"] for g in groups.values()) == pytest.approx(c.latency_s, rel=1e-12)
        assert c.phase == "train" and c.tokens_per_s == pytest.approx(T / c.latency_s)
    rows = {r.name: r for r in get_target("nm24-16x16-ws").cost(step.workload).ops}
    for part in ("qk", "pv"):
        assert rows[f"dgrad:self_attn.attention.{part}"].energy_pj == pytest.approx(
            2.5 * rows[f"fwd:self_attn.attention.{part}"].energy_pj, rel=1e-12)
    w = llm_workload("smollm2-135m", "prefill", batch=2, tokens=64)
    qk = next(p for p in problems_from_workload(w) if isinstance(p, Gemm) and p.name.endswith(".qk"))
    assert qk.count == 30 * 2 * 3


# ---------------------------------------------------------------- published anchors


def _speedups(target, step, dense):
    r = compare(target, step, dense)
    return r, {g: v["speedup"] for g, v in r["groups"].items()}


def test_anchor_torchao_vit_l_mlp_2_4():
    """Published anchor: torchao's runtime 2:4 training (weights sparsified to 2:4 tiles that are
    transposable, so X·Wᵀ and dY·W run sparse, dYᵀ·X dense), measured on an A100 in fp16:
    ViT-L MLP linears fwd+bwd at m = 13008 tokens 1.24x (fc1) and 1.27x (fc2); the whole MLP fwd+bwd
    at m = 44160, 11534.3 us dense vs 9204.7 us (1.25x). Oracle for what nmx must predict: Amdahl
    over the three GEMMs -- with the sparse GEMMs at most 2x, the step is at most 3 / (2/2 + 1) = 1.5x."""
    from nmx.hw.targets import get_target

    print()
    for tokens, linears, label in ((13008, {"mlp.fc1": VIT_L_MLP["mlp.fc1"]}, "fc1"),
                                   (13008, {"mlp.fc2": VIT_L_MLP["mlp.fc2"]}, "fc2"),
                                   (44160, VIT_L_MLP, "mlp fc1+gelu+fc2")):
        between = gelu_between(tokens) if len(linears) == 2 else None
        step = linears_step(linears, tokens, pattern="2:4", mask="transposable", between=between)
        dense = linears_step(linears, tokens, mask="dense", between=between)
        for gpu in ("h100-sxm", "a100-80gb"):
            for impl in ("ideal", "pytorch"):
                r, sp = _speedups(get_target(gpu, impl), step, dense)
                t = r["total"]
                print(f"torchao-anchor {label:18s} m={tokens:5d} {gpu:9s} {impl:7s} dense {t['dense_s'] * 1e3:7.3f} ms "
                      f"sparse {t['sparse_s'] * 1e3:7.3f} ms speedup {t['speedup']:.3f} (fwd {sp['forward']:.3f}, "
                      f"dgrad {sp['input_grad']:.3f}, wgrad {sp['weight_grad']:.3f}, pack "
                      f"{r['groups']['optimizer']['sparse_s'] * 1e3:.3f} ms)")
                assert t["speedup"] <= 1.5 and sp["weight_grad"] == 1.0
                if impl == "ideal":  # compute-bound shapes: the sparse GEMMs gain, the step does
                    assert sp["forward"] > 1.2 and t["speedup"] > 1.1


def test_anchor_bidirectional_2_8_on_accelerators():
    """Published anchor: BDWP (Fang et al., TCAD 2023) -- 2:8 masks in the forward and backward
    (bidirectional), weight gradient dense -- 1.75x over dense training on an FPGA (SAT), 0.56 %
    average accuracy loss. Oracle for nmx's prediction: Amdahl over the three GEMMs with the sparse
    ones at most M/N = 4x: at most 3 / (2/4 + 1) = 2x, and a PE that cannot run 2:8 (the fixed 2:4 PE
    runs other M dense) gains nothing on the GEMMs."""
    from pathlib import Path

    from nmx.hw.targets import get_target

    ex = Path(__file__).resolve().parents[2] / "examples" / "hw"
    tokens = 8 * VIT_L_TOKENS_PER_IMAGE
    print()
    for design in (ex / "nm28_16x16_ws.yaml", ex / "elemserial_m8_16x16_ws.yaml", "nm24-16x16-ws"):
        t = get_target(str(design))
        step = linears_step(VIT_L_MLP, tokens, pattern="2:8", mask="bidirectional", between=gelu_between(tokens),
                            optimizer=ADAMW_FP32)
        dense = linears_step(VIT_L_MLP, tokens, mask="dense", between=gelu_between(tokens), optimizer=ADAMW_FP32)
        r, sp = _speedups(t, step, dense)
        whole = price_train_step(t, "smollm2-135m", batch=1, seq_len=512, pattern="2:8", mask="bidirectional")
        print(f"bdwp-anchor {t.name:24s} ViT-L MLP x {tokens} tokens + AdamW: speedup {r['total']['speedup']:.3f} "
              f"(fwd {sp['forward']:.3f}, dgrad {sp['input_grad']:.3f}, wgrad {sp['weight_grad']:.3f}, "
              f"optimizer {sp['optimizer']:.3f}), energy {r['total']['energy_ratio']:.3f}x less; "
              f"smollm2-135m step 1x512: speedup {whole['total']['speedup']:.3f}")
        assert r["total"]["speedup"] <= 2.0 and whole["total"]["speedup"] <= 2.0
        if t.name == "nm24-16x16-ws":
            assert sp["forward"] == pytest.approx(1.0, abs=1e-9) and sp["input_grad"] == pytest.approx(1.0, abs=1e-9)
        else:
            assert sp["forward"] > 2 and r["total"]["speedup"] > 1.4


# ---------------------------------------------------------------- CLI


def test_cli_prints_the_table_and_json(capsys, monkeypatch):
    """Oracle: the library's own answer (price_train_step) -- the CLI's JSON is it, the table has
    the five rows."""
    args = ["hw", "train-step", "--model", "smollm2-135m", "--batch", "1", "--seq-len", "128", "--pattern", "2:4",
            "--mask", "transposable", "--target", "uspe-16x16-ws"]
    code, out, err = run_cli(args + ["--json"], capsys, monkeypatch)
    assert code == 0, err
    got = json.loads(out)
    ref = price_train_step("uspe-16x16-ws", "smollm2-135m", batch=1, seq_len=128, pattern="2:4", mask="transposable")
    assert got["total"] == ref["total"] and got["sparse_mac_fraction"] == pytest.approx(2 / 3)
    code, out, err = run_cli(args + ["--checkpointing"], capsys, monkeypatch)
    assert code == 0, err
    for row in ("forward", "recompute", "input-grad", "weight-grad", "optimizer", "total", "speedup over dense"):
        assert row in out


@pytest.mark.parametrize("extra, phrase", [
    (["--pattern", "50%"], "must be N:M"),
    (["--pattern", "4:2"], "N must be smaller than M"),
    (["--pattern", "2:4:8"], "cannot read sparsity pattern"),
    (["--target", "h20"], "unknown hardware target"),
    (["--batch", "0"], "--batch must be a positive integer"),
    (["--batch", "-3"], "--batch must be a positive integer"),
    (["--seq-len", "0"], "--seq-len must be a positive integer"),
    (["--mask", "diagonal"], "--mask) must be one of"),
    (["--mask", "dense"], "--mask must be plain, transposable or bidirectional"),
    (["--master", "fp8"], "--master must be one of"),
    (["--impl", "magic"], "must be one of"),
    (["--pattern", "2:5"], "not divisible by 5"),
])
def test_cli_bad_inputs_are_one_line_exit_2(extra, phrase, capsys, monkeypatch):
    """Oracle: the CLI's error convention (DESIGN.md): one `error:` line on stderr, exit code 2."""
    args = ["hw", "train-step", "--model", "smollm2-135m", "--batch", "1", "--seq-len", "16", *extra]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 2, (code, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert phrase in err, err


def test_cli_transposable_on_a_shape_m_does_not_divide(tmp_path, capsys, monkeypatch):
    """Oracle: as test_transposable_needs_m_to_divide_both_dims, through the CLI: plain runs,
    transposable is one line and exit 2."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"hidden_size": 96, "intermediate_size": 128, "num_hidden_layers": 2,
                               "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 12,
                               "vocab_size": 64}))
    base = ["hw", "train-step", "--model", str(cfg), "--batch", "1", "--seq-len", "8", "--pattern", "2:16",
            "--target", "nm24-16x16-ws"]
    code, _, err = run_cli(base + ["--mask", "plain"], capsys, monkeypatch)
    assert code == 0, err
    code, _, err = run_cli(base + ["--mask", "transposable"], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and "not divisible by 16" in err, err
