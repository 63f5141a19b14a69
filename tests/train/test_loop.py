"""The training loop on the tiny random Llama (CPU): masked fine-tuning keeps zeros, schedules switch where
they say, QAT composes with formats, and a resumed run ends bit-identical to an unbroken one."""

import json

import pytest
import torch
from safetensors.torch import load_file

from nmx.sparsity.masks import check_nm
from nmx.train import checkpoint as ck
from nmx.train.loop import train
from tests.conftest import assert_bitwise_equal


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_fixed_keeps_pruned_weights_and_their_adamw_state_exactly_zero(recipe_of, tmp_path):
    """Oracle: in a mid-run checkpoint, every weight outside the one-shot mask and both of its AdamW moments are
    exactly +0.0 (bit pattern 0), while the kept weights moved; with weight decay on, so decay cannot hide."""
    recipe = recipe_of(sparsity={"method": "magnitude", "pattern": "2:4"}, steps=3, checkpoint_every=2,
                       weight_decay=0.1, mask={"method": "fixed"})
    out = tmp_path / "run"
    train(recipe, out)
    state = load_file(str(ck.list_checkpoints(out)[0][1] / ck.STATE))
    masks = {k[len("mask."):]: v for k, v in state.items() if k.startswith("mask.")}
    assert len(masks) == 14  # 2 layers x 7 linears
    for name, mask in masks.items():
        assert check_nm(mask, 2, 4) == 0 and int(mask.sum()) == mask.numel() // 2
        for key in (f"model.{name}.weight", f"opt.exp_avg.{name}.weight", f"opt.exp_avg_sq.{name}.weight"):
            pruned = state[key][~mask]
            assert torch.equal(pruned.view(torch.int32), torch.zeros_like(pruned).view(torch.int32)), key
        assert bool((state[f"opt.exp_avg_sq.{name}.weight"][mask] > 0).all())  # the kept ones did learn
    final = load_file(str(out / "model.safetensors"))
    assert all(check_nm(final[f"{n}.weight"], 2, 4) == 0 for n in masks)


def test_pattern_stepping_switches_at_the_scheduled_steps(recipe_of, tmp_path):
    """Oracle: the schedule as written: 2:4 for steps 0-1, 1:4 for steps 2-3, back to 2:4 at step 4."""
    sched = [{"step": 0, "pattern": "2:4"}, {"step": 2, "pattern": "1:4"}, {"step": 4, "pattern": "2:4"}]
    recipe = recipe_of(steps=5, objective="ce", mask={"method": "sr_ste", "schedule": sched})
    result = train(recipe, tmp_path / "run")
    log = _log(tmp_path / "run")
    assert [r["pattern"] for r in log] == ["2:4", "2:4", "1:4", "1:4", "2:4"]
    assert [r["density"] for r in log] == [0.5, 0.5, 0.25, 0.25, 0.5]
    assert result["training"]["pattern_switches"] == [[0, "2:4"], [2, "1:4"], [4, "2:4"]]
    assert result["weight_sparsity"] == pytest.approx(0.5) and result["training"]["masks_valid"]


def test_gradual_density_ramps_from_dense_to_nm(recipe_of, tmp_path):
    recipe = recipe_of(steps=5, objective="ce", mask={"method": "fixed", "pattern": "2:4",
                                                      "ramp": {"start": 0, "end": 4, "shape": "linear"}})
    train(recipe, tmp_path / "run")
    assert [r["density"] for r in _log(tmp_path / "run")] == [1.0, 0.875, 0.75, 0.625, 0.5]


def test_sparse_qat_ends_on_the_format_grid_and_nm(recipe_of, tmp_path):
    """2:4 + MXFP4: the saved weights are fixed points of mxfp4 quantization and 2:4."""
    from nmx import formats

    recipe = recipe_of(sparsity={"method": "magnitude", "pattern": "2:4"}, quantization={"weights": "mxfp4"},
                       steps=2, mask={"method": "fixed", "transposable": True})
    result = train(recipe, tmp_path / "run")
    fmt = formats.get("mxfp4")
    final = load_file(str(tmp_path / "run" / "model.safetensors"))
    w = final["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(fmt.quantize(w, dim=-1), w)
    assert check_nm(w, 2, 4) == 0 and check_nm(w.T.contiguous(), 2, 4) == 0  # transposable
    assert result["bits_per_weight"] < 16


def test_resume_ends_bit_identical_to_an_unbroken_run(recipe_of, tmp_path):
    """Oracle: the unbroken run. Stop after step 3 (checkpoint at 2), resume, compare every saved tensor and
    every logged loss bit for bit."""
    recipe = recipe_of(steps=5, checkpoint_every=2, weight_decay=0.05,
                       mask={"method": "sr_ste", "bidirectional": True, "options": {"lambda_w": 0.01}})
    train(recipe, tmp_path / "a")

    class Stop(Exception):
        pass

    def stop_at_3(what, done, total, info=None):
        if what == "training" and done == 3:
            raise Stop

    with pytest.raises(Stop):
        train(recipe, tmp_path / "b", progress=stop_at_3)
    assert [s for s, _ in ck.list_checkpoints(tmp_path / "b")] == [2]
    assert not (tmp_path / "b" / "result.json").exists()
    result = train(recipe, resume=tmp_path / "b")
    assert result["resumed_from_step"] == 2
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            assert_bitwise_equal(a[k], b[k])
        else:
            assert torch.equal(a[k], b[k]), k
    la, lb = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [(r["step"], r["loss"], r["flip_rate"]) for r in la] == [(r["step"], r["loss"], r["flip_rate"]) for r in lb]
    ra, rb = (json.loads((tmp_path / d / "result.json").read_text()) for d in "ab")
    assert ra["perplexity"] == rb["perplexity"]


def test_training_from_a_saved_run_folder(recipe_of, recipe_dict, tmp_path):
    """Start from `nmx run --save-model`: its masks are the fixed masks (kept exactly)."""
    from nmx.recipe import load_recipe
    from nmx.runner import run

    base = recipe_dict(sparsity={"method": "magnitude", "pattern": "2:4"})
    base.pop("training")
    run(load_recipe(base=base), tmp_path / "oneshot", save_model=True)
    recipe = recipe_of(steps=2, start=str(tmp_path / "oneshot"), mask={"method": "fixed"})
    train(recipe, tmp_path / "run")
    saved = load_file(str(tmp_path / "oneshot" / "model.safetensors"))
    final = load_file(str(tmp_path / "run" / "model.safetensors"))
    k = "model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(saved[k] == 0, final[k] == 0)
    assert not torch.equal(saved[k], final[k])
