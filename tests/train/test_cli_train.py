"""`nmx train` end to end on the tiny model: the files a run writes, and what `nmx eval` reads back."""

import json

import yaml

from tests.cli import run_cli


def test_nmx_train_writes_the_run_folder(recipe_dict, tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(sparsity={"method": "magnitude", "pattern": "2:4"},
                                                 eval_every=2, checkpoint_every=2, mask={"method": "fixed"})))
    out = tmp_path / "run"
    code, stdout, err = run_cli(["train", str(recipe), "--out", str(out), "--set", "training.steps=3", "--json"],
                                capsys, monkeypatch)
    assert code == 0, err
    printed = json.loads(stdout)
    names = {p.name for p in out.iterdir()}
    assert {"result.json", "model.safetensors", "train_log.jsonl", "train_curve.png", "recipe.yaml", "train.json",
            "config.json", "checkpoints"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temporary leftovers
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert {"loss", "lr", "flip_rate", "tokens_per_s"} <= set(log[0]) and "eval_perplexity" in log[1]
    result = json.loads((out / "result.json").read_text())
    assert result["perplexity"] == printed["perplexity"] == log[-1]["final_perplexity"]
    assert result["weight_sparsity"] == 0.5 and result["training"]["peak_memory"]["step_bytes"] is None
    # the trained folder is a model folder: `nmx eval` scores the same weights
    code, stdout, err = run_cli(["eval", "--model", str(out), "--text", result["protocol"]["source"], "--seq-len", "32",
                                 "--max-windows", "2", "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(stdout)["perplexity"] == result["perplexity"]
    # a second run into the same folder needs --overwrite
    code, _, err = run_cli(["train", str(recipe), "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and "--overwrite" in err
