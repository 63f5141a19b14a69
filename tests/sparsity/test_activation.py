"""Activation sparsity (nmx.sparsity.activation) and its cost (nmx.hw): thresholds, hooks, the union of
nonzeros over a batch, skipped weight bytes, the result.json block, bad input."""

import json
import math

import pytest
import torch
import yaml

from nmx.errors import InputError
from nmx.sparsity.activation import (
    ActivationSparsity,
    attach,
    calibrate,
    get_method,
    independent_density,
    magnitude_threshold,
    resolve_targets,
    threshold_input,
    union_density,
)
from tests.cli import run_cli
from tests.model.conftest import TEXT, char_tokenizer, tiny_llama


def _linear_inputs(model, wins, layers) -> dict[str, list[torch.Tensor]]:
    """The inputs each of `layers` receives while `model` runs over the windows `wins`."""
    modules = dict(model.named_modules())
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    hooks = [modules[n].register_forward_pre_hook(lambda _m, a, n=n: seen[n].append(a[0].detach()))
             for n in layers]
    with torch.no_grad():
        for w in wins:
            model(w[None])
    for h in hooks:
        h.remove()
    return seen


def _windows(n: int, seq_len: int) -> torch.Tensor:
    ids = char_tokenizer()(TEXT, return_tensors="pt").input_ids[0]
    return ids[: n * seq_len].reshape(n, seq_len)


@pytest.mark.parametrize("target", [0.25, 0.5])
def test_calibrated_thresholds_hit_the_target_on_the_calibration_data(target):
    """Oracle: the zero fraction counted directly (|x| <= t) on every calibration input.

    The threshold is the quantile of a reservoir of R token rows. On a sample without ties it zeroes exactly
    ceil(s N) / N of the N entries (checked on a continuous tensor); on the model's sample at least s (the
    tiny model repeats tokens, so its layer-0 inputs tie). On all the calibration rows, each row's zero
    fraction f lies in [0, 1] with mean s, so its variance is <= s(1 - s) (f^2 <= f), and a sample of R rows
    estimates the population fraction with a standard deviation <= sqrt(s(1 - s) / R); 4 of those."""
    x = torch.rand(1000, generator=torch.Generator().manual_seed(0)) + 0.01
    assert float((x <= magnitude_threshold(x, target)).float().mean()) == math.ceil(target * 1000) / 1000
    model, rows = tiny_llama(), 48
    section = ActivationSparsity(sparsity=target, calibration_tokens=rows)
    plan = resolve_targets(model, section)
    wins = _windows(4, 64)  # 256 token rows per input: the reservoir keeps 48
    layers = calibrate(model, wins, plan, get_method("teal"), tokens=rows, seed=0)
    assert set(layers) == set(plan) and len(layers) == 2 * 7
    modules = dict(model.named_modules())
    seen = _linear_inputs(model, wins, layers)
    tol = 4 * math.sqrt(target * (1 - target) / rows)
    for name, rec in layers.items():
        x = torch.cat(seen[name]).reshape(-1, modules[name].in_features)
        assert rec["calibration_sparsity"] >= target and rec["calibration_rows"] == rows, name
        full = float((x.abs() <= rec["threshold"]).float().mean())
        assert abs(full - target) <= tol, (name, full, tol)


def test_hook_zeroes_exactly_the_entries_at_or_below_the_threshold():
    """Oracle: a plain loop over the entries in float64 (|x| <= t -> 0, else x unchanged), then the linear."""
    lin = torch.nn.Linear(16, 8)
    model = torch.nn.Sequential(lin)
    x = torch.randn(3, 5, 16)
    t = 0.7
    ref = x.double().clone()
    zeros = 0
    for idx in range(ref.numel()):
        v = ref.view(-1)[idx]
        if abs(float(v)) <= t:
            ref.view(-1)[idx] = 0.0
            zeros += 1
    section = ActivationSparsity(batches=[1, 2], union_tokens=4)
    sp = attach(model, {"0": {"type": None, "target": 0.5, "threshold": t, "calibration_sparsity": 0.5}}, section)
    with torch.no_grad():
        out = model(x)
    assert torch.equal(threshold_input(x, t).double(), ref)
    assert torch.allclose(out.double(), torch.nn.functional.linear(ref, lin.weight.double(), lin.bias.double()),
                          atol=1e-5)
    tap = sp.taps["0"]
    assert tap.total == x.numel() and tap.zeros == zeros
    sp.remove()
    with torch.no_grad():
        assert torch.equal(model(x), lin(x))  # removing the hooks restores the model
    assert magnitude_threshold(torch.tensor([0.1, 0.2, 0.3, 0.4]), 0.5) == pytest.approx(0.2)
    assert magnitude_threshold(torch.tensor([0.1, 0.2]), 0.0) == 0.0


def test_union_at_batch_1_is_the_single_token_density_and_grows_with_batch():
    """Oracle: the mean of the masks (B = 1) and a brute-force union of one group; monotone by construction."""
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(64, 100, generator=g) < torch.rand(100, generator=g)  # channel-dependent densities
    u = union_density(masks, (1, 2, 4, 8, 16, 32), seed=3)
    assert u[1] == pytest.approx(float(masks.float().mean()), abs=1e-7)
    vals = [u[b] for b in (1, 2, 4, 8, 16, 32)]
    assert all(a <= b + 1e-12 for a, b in zip(vals, vals[1:], strict=False)) and vals[-1] > vals[0]
    assert union_density(masks, (64,))[64] == pytest.approx(float(masks.any(0).float().mean()))  # all tokens
    with pytest.raises(InputError, match="distinct tokens"):
        union_density(masks, (65,))


def test_union_matches_independence_only_for_independent_entries():
    """Oracle: 1 - s^B for independent Bernoulli entries. Each group's union fraction is a mean over k
    independent channels, SD sqrt(q(1 - q) / k) with q = 1 - s^B; the mean over groups has an SD no larger;
    5 of those (+1e-6). Correlated inputs (channels either mostly on or mostly off, density 0.5) stay far
    below 1 - s^B."""
    s, k, batches = 0.6, 4096, (1, 2, 4, 8, 16, 32)
    g = torch.Generator().manual_seed(0)
    indep = torch.rand(256, k, generator=g) >= s
    u = union_density(indep, batches)
    s_hat = 1 - u[1]
    for b, q in independent_density(s_hat, batches).items():
        assert abs(u[b] - q) <= 5 * math.sqrt(q * (1 - q) / k) + 1e-6, (b, u[b], q)
    p = torch.where(torch.arange(k) % 2 == 0, 0.95, 0.05)  # correlated across tokens through the channel
    corr = torch.rand(256, k, generator=g) < p
    u = union_density(corr, batches)
    q = independent_density(1 - u[1], batches)
    assert u[8] == pytest.approx(0.5 * (1 - 0.05 ** 8) + 0.5 * (1 - 0.95 ** 8), abs=0.02)  # the channel model
    assert q[8] - u[8] > 0.25


def test_bytes_at_batch_1_scale_by_the_column_density():
    """Oracle: hand counts. GPU (impl ideal): weight bytes = n k 2 d, bytes = that + k 2 (x) + n 2 (y);
    PyTorch reads every weight. Accelerator with skip and bitmap activations: DRAM bytes drop by exactly
    n k 2 (1 - d) bf16 weight bytes at m = 1 (W fetched once); in gate mode nothing moves less."""
    from nmx.hw.accel import evaluate, gemm_problem
    from nmx.hw.accel_spec import accel_from_dict
    from nmx.hw.gpu import gemm

    n = k = 4096
    d = 0.4
    r = gemm("h200", 1, n, k, impl="ideal", act_col_density=d)
    assert r["weight_bytes"] == pytest.approx(n * k * 2 * d)
    assert r["bytes"] == pytest.approx(n * k * 2 * d + k * 2 + n * 2)
    assert r["skipped_weight_bytes"] == pytest.approx(n * k * 2 * (1 - d))
    assert gemm("h200", 1, n, k, impl="pytorch", act_col_density=d)["weight_bytes"] == n * k * 2
    dense_ideal = gemm("h200", 1, n, k, impl="ideal")
    assert r["latency_s"] < dense_ideal["latency_s"]

    def spec(mode):
        return accel_from_dict({"name": "a", "pe_array": {"rows": 16, "cols": 16},
                                "pe": {"kind": "dense", "act_bits": 8, "weight_bits": 8},
                                "memory": [{"name": "reg", "kind": "reg", "bytes_per_pe": 16},
                                           {"name": "glb", "kind": "sram", "capacity_kb": 256,
                                            "bandwidth_bytes_per_cycle": 64},
                                           {"name": "dram", "kind": "dram", "type": "lpddr5", "bandwidth_gb_s": 51.2}],
                                "sparsity": {"weights_format": "dense", "activations_format": "bitmap", "mode": mode}})

    def dram(mode, col):
        g = gemm_problem(1, n, k, weights=None, activations="int8", act_density=0.3, weight_col_density=col)
        return float(evaluate(spec(mode), g).dram_bytes)

    assert dram("skip", 1.0) - dram("skip", d) == pytest.approx(n * k * 2 * (1 - d))
    assert dram("gate", 1.0) == dram("gate", d)


def test_workload_reads_the_measured_densities():
    """Oracle: the measured points as given (batch 1, 4), the log2-linear interpolation at batch 2 and the
    independence extrapolation 1 - (1 - d(B_max))^(m / B_max) beyond the last one, by hand."""
    from nmx.hw.workload import Compression, llm_workload

    comp = Compression(act_sparsity=(("mlp.down_proj", ((1, 0.4), (4, 0.7))),))
    assert comp.act_densities("mlp.down_proj", 1) == (0.4, 0.4)
    assert comp.act_densities("mlp.down_proj", 2) == pytest.approx((0.4, 0.55))
    assert comp.act_densities("mlp.down_proj", 4) == (0.4, 0.7)
    assert comp.act_densities("mlp.down_proj", 8) == pytest.approx((0.4, 1 - 0.3 ** 2))
    assert comp.act_densities("mlp.up_proj", 1) == (1.0, 1.0)
    ops = {op.name: op for op in llm_workload("llama-2-7b", "decode", batch=4, context=16, compression=comp).ops}
    assert ops["mlp.down_proj"].act_col_density == 0.7 and ops["mlp.down_proj"].act_density == 0.4
    assert ops["mlp.up_proj"].act_col_density == 1.0
    with pytest.raises(InputError, match="act_sparsity"):
        Compression(act_sparsity=(("mlp.down_proj", ((1, 0.0),)),))
    # from_result: the mean over all decoder layers, an unthresholded layer counting as density 1
    from nmx.hw.workload import from_result

    shape = {"name": "m", "hidden": 64, "intermediate": 128, "layers": 2, "heads_q": 4, "heads_kv": 2,
             "head_dim": 16, "vocab": 10}
    block = {"layers": {"model.layers.0.mlp.down_proj": {"union_density": {"1": 0.5, "2": 0.8}}}}
    _, comp = from_result({"recipe": {"model": "m"}, "model": {"shape": shape}, "activation_sparsity": block})
    assert comp.act_sparsity == (("mlp.down_proj", ((1, 0.75), (2, 0.9))),)


def _recipe(tmp_path, tiny_model_dir, text_file, section, hardware=None):
    r = {"model": str(tiny_model_dir), "device": "cpu",
         "calibration": {"text": str(text_file), "samples": 2, "seq_len": 64},
         "evaluation": {"text": str(text_file), "seq_len": 128, "max_windows": 4},
         "activation_sparsity": section}
    if hardware:
        r["hardware"] = hardware
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def test_run_writes_the_block_and_prices_it(tmp_path, tiny_model_dir, text_file, capsys, monkeypatch):
    """Oracle: the block's own definitions -- per-layer zero fractions in [0, 1] near the target, the
    union at B = 1 equal to 1 - (the pool's zero fraction) and monotone, model-wide means weighted by
    weights recomputed from the layers; `from_result` hands the measured densities to the workload, and the
    GPU target with the skipping kernel (ideal) reads fewer bytes at batch 1 than at batch 16."""
    from nmx.hw.workload import from_result

    hw = {"targets": ["h200"], "gpu_impl": "ideal",
          "phases": [{"phase": "decode", "context": 64, "batch": 1}, {"phase": "decode", "context": 64, "batch": 16}]}
    path = _recipe(tmp_path, tiny_model_dir, text_file, {"sparsity": {"qkv": 0.4, "up": 0.5, "down": 0.5},
                                                         "union_tokens": 64}, hw)
    code, out, err = run_cli(["run", str(path), "--out", str(tmp_path / "out")], capsys, monkeypatch)
    assert code == 0, err
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    b = res["activation_sparsity"]
    assert b["batches"] == [1, 2, 4, 8, 16, 32] and set(b["by_type"]) == {"qkv", "up", "down"}
    assert len(b["layers"]) == 2 * 6  # q, k, v, gate, up, down per layer (o not targeted)
    for name, rec in b["layers"].items():
        u = [rec["union_density"][str(x)] for x in b["batches"]]
        assert all(p <= q for p, q in zip(u, u[1:], strict=False))
        assert abs(rec["sparsity"] - rec["target"]) < 0.15, name  # other text windows than calibration
        assert rec["independent_density"]["1"] == rec["union_density"]["1"]
    w = {n: r["weights"] for n, r in b["layers"].items()}
    mean = sum(r["sparsity"] * w[n] for n, r in b["layers"].items()) / sum(w.values())
    assert b["model_wide"]["sparsity"] == pytest.approx(mean)
    _, comp = from_result(res)
    assert dict(comp.act_sparsity)["mlp.down_proj"][0][0] == 1 and "self_attn.o_proj" not in dict(comp.act_sparsity)
    costs = {c["batch"]: c for c in res["hardware"]["costs"]}
    assert "activation density" in res["hardware"]["workload"]["compression"]
    assert costs[1]["bytes"] < costs[16]["bytes"]
    code, out, _ = run_cli(["sparsity", "activations", str(tmp_path / "out")], capsys, monkeypatch)
    assert code == 0 and "1 - s^B" in out


def test_relufication_replaces_silu_and_says_so(tmp_path, tiny_model_dir, text_file, capsys, monkeypatch):
    """Oracle: ReLU's output is zero wherever its input is <= 0, so the down projection's input (ReLU(gate) *
    up) has natural zeros with no threshold at all (target 0); the block says it was not fine-tuned."""
    path = _recipe(tmp_path, tiny_model_dir, text_file, {"sparsity": 0.0, "targets": ["down"], "relufication": True,
                                                         "batches": [1, 4], "union_tokens": 16})
    code, _, err = run_cli(["run", str(path), "--out", str(tmp_path / "out")], capsys, monkeypatch)
    assert code == 0, err
    b = json.loads((tmp_path / "out" / "result.json").read_text())["activation_sparsity"]
    assert b["relufied"] == 2 and any("without fine-tuning" in n for n in b["notes"])
    for rec in b["layers"].values():
        assert rec["threshold"] == 0.0 and 0.3 < rec["sparsity"] < 0.7


@pytest.mark.parametrize("section, message", [
    ({"sparsity": 1.0}, "in [0, 1)"),
    ({"sparsity": -0.1}, "in [0, 1)"),
    ({"sparsity": {"ffn": 0.5}}, "unknown tensor type 'ffn'"),
    ({"sparsity": 0.5, "targets": ["attn"]}, "unknown tensor type 'attn'"),
    ({"method": "cats"}, "unknown activation sparsity method 'cats'"),
    ({"options": {"allocation": "best"}}, "allocation must be uniform, greedy or block_greedy"),
    ({"options": {"allocation": "block_greedy", "block_windows": 0}}, "block_windows must be a positive integer"),
    ({"options": {"allocation": "block_greedy", "step": 0.0}}, "step must be in (0, 0.5]"),
    ({"options": {"allocation": "block_greedy", "steps": 0.1}}, "unknown option(s) ['steps']"),
    ({"sparsity": {"qkv": 0.4, "down": 0.5}, "options": {"allocation": "block_greedy"}},
     "block_greedy spreads one model-wide target"),
    ({"sparsity": 0.4, "targets": ["*lm_head"], "options": {"allocation": "block_greedy"}},
     "block_greedy allocates within decoder blocks"),
    ({"batches": [1, 64], "union_tokens": 32}, "union_tokens"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_model_dir, text_file, capsys, monkeypatch, section, message):
    path = _recipe(tmp_path, tiny_model_dir, text_file, section)
    code, out, err = run_cli(["run", str(path), "--out", str(tmp_path / "out")], capsys, monkeypatch)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_greedy_allocation_meets_the_model_wide_target():
    """Oracle: the weight-weighted mean of the allocated sparsities reaches the target and overshoots by
    less than one step of the largest group; the allocation is not uniform on a real model."""
    model = tiny_llama()
    section = ActivationSparsity(sparsity=0.4, options={"allocation": "greedy", "step": 0.05})
    plan = resolve_targets(model, section)
    layers = calibrate(model, _windows(2, 64), plan, get_method("teal", section.options), tokens=128)
    modules = dict(model.named_modules())
    w = {n: modules[n].weight.numel() for n in layers}
    mean = sum(layers[n]["target"] * w[n] for n in layers) / sum(w.values())
    largest_group = max(3 * 64 * 64, 2 * 128 * 64)
    assert 0.4 - 1e-9 <= mean <= 0.4 + 0.05 * largest_group / sum(w.values())
    assert len({r["target"] for r in layers.values()}) > 1


def _block_greedy(step: float = 0.2, target: float = 0.4):
    model = tiny_llama()
    section = ActivationSparsity(sparsity=target, options={"allocation": "block_greedy", "step": step})
    plan = resolve_targets(model, section)
    trace: list = []
    wins = _windows(2, 64)  # 128 token rows per input: the reservoir (tokens=128) keeps them all
    layers = calibrate(model, wins, plan, get_method("teal", section.options), tokens=128, trace=trace)
    return model, wins, layers, trace


def test_block_greedy_meets_the_target_in_every_block():
    """Oracle: per decoder block, the weight-weighted mean of the allocated sparsities (weights counted from
    the modules) lies in [target, target + one block increment), the increment being step * W_min / W_block
    with W_min the smallest input group (o_proj: 64 x 64); every block's allocation differs from uniform."""
    step, target = 0.2, 0.4
    model, _, layers, trace = _block_greedy(step, target)
    modules = dict(model.named_modules())
    for i in range(2):
        names = [n for n in layers if n.startswith(f"model.layers.{i}.")]
        assert len(names) == 7
        w = {n: modules[n].weight.numel() for n in names}
        mean = sum(layers[n]["target"] * w[n] for n in names) / sum(w.values())
        inc = step * 64 * 64 / sum(w.values())
        assert target - 1e-9 <= mean < target + inc, (i, mean)
        assert len({layers[n]["target"] for n in names}) > 1
        # one shared input, one threshold
        assert len({layers[n]["threshold"] for n in names if ".self_attn." in n and "o_proj" not in n}) == 1
        ffn = f"model.layers.{i}.mlp"
        assert layers[f"{ffn}.gate_proj"]["threshold"] == layers[f"{ffn}.up_proj"]["threshold"]
    assert {t["block"] for t in trace} == {"model.layers.0", "model.layers.1"}


def test_block_greedy_takes_the_cheapest_candidate_at_each_step():
    """Oracle, recomputed from scratch for the first two steps of each block: the candidate sparsities
    (current + step * W_min / W_g), thresholds as quantiles of all the calibration inputs of each linear
    (collected here by hooks), the whole model run on the first calibration window with only that block's
    linears thresholded, and the block's output (a forward hook) compared to the dense model's:
    ||Y - Y_dense|| / ||Y_dense||. The chosen group has the smallest recomputed error."""
    step = 0.2
    model, wins, layers, trace = _block_greedy(step)
    modules = dict(model.named_modules())
    seen = _linear_inputs(model, wins, layers)
    inputs = {n: torch.cat(v).reshape(-1, modules[n].in_features).abs() for n, v in seen.items()}

    def block_out(block: str, thresholds: dict[str, float]) -> torch.Tensor:
        out: list = []
        hs = [modules[block].register_forward_hook(lambda _m, _a, o: out.append(o[0] if isinstance(o, tuple) else o))]
        hs += [modules[n].register_forward_pre_hook(lambda _m, a, t=t: (torch.where(a[0].abs() > t, a[0], 0.0),))
               for n, t in thresholds.items() if t is not None]
        with torch.no_grad():
            model(wins[0][None])
        for h in hs:
            h.remove()
        return out[0].double()

    def members(group: str) -> list[str]:
        block, ttype = group.split(":")[:2]
        rel = {"qkv": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "o": ["self_attn.o_proj"],
               "up": ["mlp.gate_proj", "mlp.up_proj"], "down": ["mlp.down_proj"]}[ttype]
        return [f"{block}.{r}" for r in rel]

    checked = 0
    for block in ("model.layers.0", "model.layers.1"):
        steps = [t for t in trace if t["block"] == block][:2]
        groups = list(steps[0]["before"])
        w = {g: sum(modules[m].weight.numel() for m in members(g)) for g in groups}
        dense = block_out(block, {})
        for t in steps:
            errors = {}
            for g in groups:
                s = dict(t["before"])
                s[g] += step * min(w.values()) / w[g]
                thr = {m: (magnitude_threshold(inputs[m], s[k]) if s[k] > 0 else None)
                       for k in groups for m in members(k)}
                y = block_out(block, thr)
                errors[g] = float((y - dense).norm() / dense.norm())
            assert errors == pytest.approx(t["candidates"], rel=1e-4, abs=1e-7), (block, errors, t["candidates"])
            assert t["chosen"] == min(errors, key=errors.get)
            checked += 1
    assert checked == 4


def test_block_greedy_in_the_library_needs_one_target_and_the_blocks():
    """The library path (no recipe validation): mixed targets, or no blocks to run, are one InputError."""
    from nmx.sparsity.activation import GroupSample

    method = get_method("teal", {"allocation": "block_greedy"})
    g = {k: GroupSample(torch.ones(4, 8), (k,), 32, torch.ones(8), s) for k, s in (("a", 0.4), ("b", 0.5))}
    with pytest.raises(InputError, match="one model-wide target"):
        method.allocate(g, lambda b, s: 0.0, {"blk": ["a", "b"]})
    g["b"] = GroupSample(torch.ones(4, 8), ("b",), 32, torch.ones(8), 0.4)
    with pytest.raises(InputError, match="needs the decoder blocks"):
        method.allocate(g)
