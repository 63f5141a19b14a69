"""Bad input to `nmx train`: one line on stderr, exit code 2, nothing left on disk (and a run folder's last
good checkpoint untouched)."""

import hashlib

import pytest
import yaml

from tests.cli import run_cli


def _tree(root):
    """Every path under root with the sha256 of each file: what is on disk."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def _fails(args, capsys, monkeypatch, root, expect):
    before = _tree(root)
    code, out, err = run_cli(["train", *args], capsys, monkeypatch)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expect in lines[0], lines[0]
    assert _tree(root) == before, "a failed command changed what is on disk"
    return lines[0]


def _write(tmp_path, d, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d))
    return path


RECIPE_ROWS = [  # (training overrides, expected words)
    ({"mask": {"method": "sr_ste", "schedule": [{"step": 3, "pattern": "2:4"}, {"step": 1, "pattern": "1:4"}]}},
     "must increase strictly"),
    ({"mask": {"method": "sr_ste", "schedule": [{"step": 0, "pattern": "2:4"}, {"step": 9, "pattern": "1:4"}]}},
     "beyond the last training step"),
    ({"mask": {"method": "fixed", "ramp": {"start": 0, "end": 40}}}, "beyond training.steps"),
    ({"lr": 0.0}, "learning rate must be a finite number > 0"),
    ({"lr": -1.0e-4}, "learning rate must be a finite number > 0"),
    ({"mask": {"method": "sr-stee"}}, "unknown mask method"),
    ({"mask": {"method": "sr_ste", "options": {"lambda": 1}}}, "unknown option"),
    ({"mask": {"method": "fixed", "transposable": True, "bidirectional": True}}, "choose one"),
    ({"mask": {"method": "fixed", "pattern": "50%"}}, "must be an N:M pattern"),
    ({"objective": "mse"}, "training.objective.name"),
]


@pytest.mark.parametrize("training,expect", RECIPE_ROWS)
def test_bad_training_section(training, expect, recipe_dict, tmp_path, capsys, monkeypatch):
    path = _write(tmp_path, recipe_dict(**training))
    _fails([str(path), "--out", str(tmp_path / "out")], capsys, monkeypatch, tmp_path, expect)


@pytest.fixture
def odd_model_dir(tmp_path_factory):
    """A tiny Llama whose MLP is 72 wide: gate_proj is [72, 64], so 16 divides its inputs but not its outputs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.model.conftest import char_tokenizer

    path = tmp_path_factory.mktemp("odd-llama")
    config = LlamaConfig(vocab_size=102, hidden_size=64, intermediate_size=72, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


def test_transposable_mask_on_a_shape_m_does_not_divide(odd_model_dir, recipe_dict, tmp_path, capsys, monkeypatch):
    d = recipe_dict(objective="ce", mask={"method": "fixed", "pattern": "1:16", "transposable": True,
                                          "targets": ["*.mlp.gate_proj"]})
    d["model"] = str(odd_model_dir)
    path = _write(tmp_path, d)
    _fails([str(path), "--out", str(tmp_path / "out")], capsys, monkeypatch, tmp_path,
           "transposable N:M needs both dims")


def test_kd_teacher_that_does_not_fit(recipe_dict, tmp_path, capsys, monkeypatch):
    import nmx.train.loop

    monkeypatch.setattr(nmx.train.loop, "available_bytes", lambda device: 10_000)
    path = _write(tmp_path, recipe_dict())
    _fails([str(path), "--out", str(tmp_path / "out")], capsys, monkeypatch, tmp_path,
           "objective kd needs a dense teacher")


def test_resume_folders(recipe_dict, tmp_path, capsys, monkeypatch):
    """An unfinished run (checkpoint at step 2): another recipe, --out on it, --overwrite with --resume, and a
    truncated checkpoint are refused; the checkpoint is never touched."""
    from nmx.recipe import load_recipe
    from nmx.train import checkpoint as ck
    from nmx.train.loop import train

    d = recipe_dict(steps=4, checkpoint_every=2, objective="ce")
    path = _write(tmp_path, d)
    run = tmp_path / "run"

    def stop(what, done, total, info=None):
        if what == "training" and done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load_recipe(path), run, progress=stop)
    args = [str(path), "--resume", str(run)]
    _fails([*args, "--set", "training.lr=0.01"], capsys, monkeypatch, tmp_path, "was trained from another recipe")
    _fails([str(path), "--out", str(run)], capsys, monkeypatch, tmp_path, "holds an unfinished training run")
    _fails([*args, "--overwrite"], capsys, monkeypatch, tmp_path, "not both")
    state = ck.list_checkpoints(run)[-1][1] / ck.STATE
    state.write_bytes(state.read_bytes()[:-100])
    _fails(args, capsys, monkeypatch, tmp_path, "is truncated or damaged")
    _fails([str(path), "--resume", str(tmp_path / "nowhere")], capsys, monkeypatch, tmp_path, "no such folder")
