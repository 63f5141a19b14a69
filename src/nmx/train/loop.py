"""`nmx train`: recipe -> model (dense, one-shot pruned, or a `nmx run --save-model` folder) -> sparse
(and quantization-aware) training -> perplexity -> a model `nmx run` / `nmx eval` read.

The run folder (`--out DIR`):

    train.json            the recipe and its hash (written when training starts; `--resume` checks it)
    checkpoints/step-N/   every training.checkpoint_every steps (nmx.train.checkpoint), the newest kept
    train_log.jsonl       one line per step: loss, lr, flip rate, density, pattern, tokens/s (+ eval ppl)
    train_curve.png       loss and evaluation perplexity against step
    model.safetensors     the trained weights and masks, as `nmx run --save-model` writes them, plus
    config.json, tokenizer files   so the folder is also a model folder (`nmx eval --model DIR`)
    recipe.yaml, result.json       result.json last: its presence means the run finished

Everything a person can get wrong (the recipe, the folders, a resume from another recipe, a damaged
checkpoint, a teacher that does not fit, shapes a mask cannot take) is checked before the folder is
created; a run that fails before its first checkpoint removes the folder it created. A run stopped after
a checkpoint keeps it: `nmx train RECIPE --resume DIR` continues from the newest checkpoint and ends
bit-identical to a run that was never stopped (same device; the data of step s is a function of the seed
and s, the learning rate a function of s, and every tensor of the state is in the checkpoint).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import yaml

from nmx.errors import InputError, NmxError
from nmx.io import expand_user, is_result_folder, set_normal_mode, write_json_atomic, write_text_atomic
from nmx.recipe import Recipe
from nmx.train import checkpoint as ck
from nmx.train.losses import get_loss
from nmx.train.methods import MaskController, PatternSchedule, get_mask_method

log = logging.getLogger(__name__)

TRAIN_MARKER = "train.json"
LOG = "train_log.jsonl"
PLOT = "train_curve.png"

#: progress(what, done, total, info): info holds the latest loss, perplexity, tokens/s and flip rate
Progress = Callable[..., None]


# ---------------------------------------------------------------- memory


def available_bytes(device: torch.device) -> Optional[int]:
    """Free memory on `device` (CUDA: free device memory; CPU: MemAvailable), or None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_teacher_fits(n_params: int, trainable: int, device: torch.device, teacher_bytes_per_param: int) -> dict:
    """KD keeps a dense teacher beside the student's gradients and AdamW moments: refuse (InputError) when
    their bytes exceed the free memory of the device (activations not counted)."""
    need_teacher = n_params * teacher_bytes_per_param
    need_student = trainable * 4 * 3  # gradient + two AdamW moments, float32
    avail = available_bytes(device)
    if avail is not None and need_teacher + need_student > avail:
        gb = 1 / 2**30
        raise InputError(f"objective kd needs a dense teacher ({need_teacher * gb:.2f} GiB) beside the student's "
                         f"gradients and AdamW moments ({need_student * gb:.2f} GiB), but only {avail * gb:.2f} GiB "
                         f"is free on {device}; use training.objective: ce, a smaller model, or more memory")
    return {"teacher_bytes": need_teacher, "optimizer_and_grad_bytes": need_student, "available_bytes": avail}


# ---------------------------------------------------------------- the run folder


def _check_new_folder(out: Path, overwrite: bool) -> None:
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise InputError(f"--out {out} is a file; give a folder (new or empty)")
        entries = [e.name for e in out.iterdir()]
        if not entries:
            return
        if (out / TRAIN_MARKER).is_file() and not is_result_folder(out) and not overwrite:
            steps = [s for s, _ in ck.list_checkpoints(out)]
            at = f" (newest checkpoint: step {steps[-1]})" if steps else " (no checkpoint yet)"
            raise InputError(f"--out {out} holds an unfinished training run{at}; continue it with --resume {out}, "
                             "or pass --overwrite to start over")
        if not is_result_folder(out) and not (out / TRAIN_MARKER).is_file():
            raise InputError(f"--out {out} is a folder with other files in it (not an nmx result); give a new or "
                             "empty folder")
        if not overwrite:
            raise InputError(f"--out {out} already holds a result; pass --overwrite to replace it, or give another "
                             "folder")
    anchor = out.parent
    while not anchor.exists() and anchor.parent != anchor:
        anchor = anchor.parent
    if not anchor.is_dir():
        raise InputError(f"--out {out}: {anchor} is a file, not a folder")
    if not os.access(anchor, os.W_OK):
        raise InputError(f"--out {out}: cannot write in {anchor}")


def _check_resume_folder(run_dir: Path, rhash: str) -> tuple[Optional[Path], Optional[dict]]:
    """The newest checkpoint of a run folder (checked whole) or (None, None); InputError for a folder that is
    not a training run, a finished one, or one trained from another recipe."""
    if not run_dir.is_dir():
        raise InputError(f"--resume {run_dir}: no such folder")
    marker = run_dir / TRAIN_MARKER
    if not marker.is_file():
        raise InputError(f"--resume {run_dir} is not an nmx training folder (no {TRAIN_MARKER})")
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"--resume {run_dir}: {TRAIN_MARKER} is not readable ({err})") from None
    if not isinstance(info, dict) or info.get("recipe_hash") != rhash:
        raise InputError(f"--resume {run_dir} was trained from another recipe (hash "
                         f"{str(info.get('recipe_hash') if isinstance(info, dict) else None)[:12]} vs {rhash[:12]}); "
                         f"resume with the recipe it started from ({marker} holds it) and the same --set, or start "
                         "a new run with --out")
    if (run_dir / "result.json").is_file():
        raise InputError(f"--resume {run_dir}: this run already finished (result.json); nothing to resume")
    cks = ck.list_checkpoints(run_dir)
    if not cks:
        return None, None
    meta = ck.check_checkpoint(cks[-1][1])
    if meta.get("recipe_hash") != rhash:
        raise InputError(f"checkpoint {cks[-1][1]} was written by another recipe; resume with the recipe in {marker}")
    return cks[-1][1], meta


def _make_folder(out: Path, overwrite: bool) -> bool:
    """Create (or, with overwrite, replace) the run folder; True when this call created it."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:  # checked before; a race
            raise InputError(f"--out {out} is not empty")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.nmx-old-", dir=out.parent))
        out.rename(old / "previous")
        shutil.rmtree(old, ignore_errors=True)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    return created


# ---------------------------------------------------------------- pieces of a run


def lr_at(step: int, tr: Any) -> float:
    """Linear warmup over warmup_steps, then constant or cosine down to lr * min_lr_ratio at the last step."""
    if tr.warmup_steps and step < tr.warmup_steps:
        return tr.lr * (step + 1) / tr.warmup_steps
    if tr.lr_schedule == "constant":
        return tr.lr
    span = max(1, tr.steps - tr.warmup_steps - 1)
    t = min(1.0, (step - tr.warmup_steps) / span)
    return tr.lr * (tr.min_lr_ratio + (1 - tr.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def batch_at(ids: torch.Tensor, step: int, tr: Any) -> torch.Tensor:
    """The windows of step `step`: batch_size random windows of seq_len tokens, a function of (seed, step)
    only, so a resumed run reads exactly the data an uninterrupted one does."""
    g = torch.Generator().manual_seed((int(tr.seed) % 2**31) * 2**32 + step)
    starts = torch.randint(0, ids.numel() - tr.seq_len + 1, (tr.batch_size,), generator=g)
    return torch.stack([ids[s: s + tr.seq_len] for s in starts.tolist()])


def _default_pattern(recipe: Recipe, start_recipe: Optional[Recipe]) -> str:
    from nmx.sparsity.patterns import NMPattern, parse_pattern

    tr = recipe.training
    if tr.mask.pattern or tr.mask.schedule:
        return tr.mask.pattern or str(tr.mask.schedule[0].pattern)
    for r in (recipe, start_recipe):
        if r is not None and r.sparsity is not None:
            p = parse_pattern(r.sparsity.pattern)
            if not isinstance(p, NMPattern):
                raise InputError(f"sparsity.pattern {p} is unstructured; training keeps N:M masks: set "
                                 "training.mask.pattern (e.g. '2:4')")
            return str(p)
    return "2:4"


def _targets(recipe: Recipe, start_recipe: Optional[Recipe]) -> list[str]:
    from nmx.model.layers import DEFAULT_TARGETS

    if recipe.training.mask.targets:
        return list(recipe.training.mask.targets)
    for r in (recipe, start_recipe):
        if r is not None and r.sparsity is not None:
            return list(r.sparsity.targets)
    return list(DEFAULT_TARGETS)


def _peak_bytes(device: torch.device) -> Optional[int]:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _set_checkpointing(model: Any, on: bool) -> None:
    if on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    elif getattr(model, "_nmx_checkpointing", False):
        model.gradient_checkpointing_disable()
    model._nmx_checkpointing = on


def _plot(records: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot([r["step"] for r in records], [r["loss"] for r in records], lw=1)
    a.set_xlabel("step")
    a.set_ylabel("training loss")
    a.set_yscale("log")
    ev = [r for r in records if r.get("eval_perplexity") is not None]
    b.plot([r["step"] for r in ev], [r["eval_perplexity"] for r in ev], marker="o", label="every eval_every steps")
    fin = [r for r in records if r.get("final_perplexity") is not None]
    if fin:
        b.plot([fin[-1]["step"]], [fin[-1]["final_perplexity"]], marker="*", ms=12, ls="",
               label="final (evaluation protocol)")
        b.legend(fontsize=7)
    b.set_xlabel("step")
    b.set_ylabel("evaluation perplexity")
    if ev or fin:
        b.set_yscale("log")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- train


def train(recipe: Recipe, out: Path | str | None = None, resume: Path | str | None = None, overwrite: bool = False,
          progress: Progress | None = None) -> dict:
    """Train as the recipe's `training:` section says; with `out` (or `resume`), write the run folder (see
    the module doc). Returns the result record (also DIR/result.json)."""
    from nmx import formats
    from nmx.eval.perplexity import tokenize
    from nmx.eval.text import load_text
    from nmx.kernels.decode_bench import check_run_dir
    from nmx.model.sources import resolve_device

    tr = recipe.training
    if tr is None:
        raise InputError("the recipe has no training: section; add one (e.g. training: {steps: 1000}) to train")
    if resume is not None and overwrite:
        raise InputError("give --resume DIR (continue a run) or --overwrite (start over), not both")
    if resume is not None and out is not None and expand_user(out).resolve() != expand_user(resume).resolve():
        raise InputError("--resume DIR continues the run in DIR; drop --out (or give the same folder)")
    run_dir = expand_user(resume if resume is not None else out) if (resume or out) is not None else None
    rdict = recipe.as_dict()
    rhash = ck.recipe_hash(rdict)
    ckpt_path, ckpt_meta = (None, None)
    if resume is not None:
        ckpt_path, ckpt_meta = _check_resume_folder(run_dir, rhash)
    elif run_dir is not None:
        _check_new_folder(run_dir, overwrite)
    elif tr.checkpoint_every:
        log.warning("training.checkpoint_every is set but there is no --out folder: no checkpoints are written")
    train_text = load_text(tr.text)
    eval_text = load_text(recipe.evaluation.text)
    if tr.start is not None:
        check_run_dir(expand_user(tr.start))
        if recipe.sparsity is not None:
            log.warning("training.start is set: the run folder's weights and masks are the starting point; the "
                        "recipe's sparsity: section is not applied again")
    weight_fmt_name = recipe.quantization.weights if recipe.quantization else None
    weight_fmt = formats.get(weight_fmt_name) if weight_fmt_name else None
    if recipe.quantization is not None and recipe.quantization.activations:
        raise InputError("training: quantization.activations is not trained through yet; drop it for nmx train "
                         "(score the trained model with `nmx run` and an activation format instead)")
    device = resolve_device(recipe.device)
    objective = get_loss(tr.objective.name, **({"temperature": tr.objective.temperature}
                                               if tr.objective.name == "kd" else {}))

    # ------------------------------------------------ the models
    t_start = time.perf_counter()
    loaded, start_recipe, start_masks = _load_student(recipe, device)
    model = loaded.model
    targets = _targets(recipe, start_recipe)
    from nmx.model.layers import match_linears

    linears = match_linears(model, targets)
    trainable_params = (sum(p.numel() for p in model.parameters()) if tr.trainable == "all"
                        else sum(m.weight.numel() for m in linears.values()))
    teacher = None
    memory_check = None
    if objective.needs_teacher:
        per_param = 2 if device.type == "cuda" and tr.bf16 else 4
        memory_check = check_teacher_fits(loaded.n_params, trainable_params, device, per_param)
        teacher = _load_teacher(loaded, recipe, start_recipe, device)
        if per_param == 2:
            teacher.to(torch.bfloat16)
    one_shot = None
    initial_masks = start_masks
    if recipe.sparsity is not None and tr.start is None and ckpt_path is None:
        from nmx.model.compress import compress

        pruning = recipe.model_copy(update={"quantization": None})
        record = compress(loaded, pruning, progress)
        initial_masks = record.pop("masks")
        one_shot = {"weight_sparsity": record["weight_sparsity"], "method": recipe.sparsity.method,
                    "pattern": recipe.sparsity.pattern}

    method = get_mask_method(tr.mask.method).build(dict(tr.mask.options), tr.steps)
    schedule = PatternSchedule.from_spec(tr.mask, _default_pattern(recipe, start_recipe))
    ctl = MaskController(linears, method, schedule, tr.steps, tr.mask.transposable, tr.mask.bidirectional,
                         weight_fmt if tr.quant_aware else None, initial_masks)

    ids = tokenize(loaded.tokenizer, train_text)
    if ids.numel() < tr.seq_len:
        raise InputError(f"training text {train_text.name!r} has {ids.numel()} tokens, fewer than one window of "
                         f"training.seq_len = {tr.seq_len}")

    # ------------------------------------------------ optimizer
    if tr.trainable == "targets":
        keep = {id(m.weight) for m in linears.values()}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = {id(p): n for n, p in named}
    decay = [p for _, p in named if p.dim() >= 2]
    no_decay = [p for _, p in named if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": tr.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=tr.lr, betas=(tr.beta1, tr.beta2), eps=tr.eps)
    ctl.optimizer = optimizer

    start_step = 0
    if ckpt_path is not None:
        tensors, meta = ck.load_checkpoint(ckpt_path)
        ck.load_model_tensors(model, tensors, ckpt_path)
        ck.load_optimizer_tensors(optimizer, names, tensors, meta.get("optimizer_steps", {}))
        ctl.load_state(tensors, meta.get("masks", {}))
        ck.load_rng_tensors(tensors)
        start_step = int(meta["step"])
        one_shot = meta.get("one_shot")
        del tensors

    # ------------------------------------------------ the folder (everything is checked by now)
    created = False
    if run_dir is not None and resume is None:
        created = _make_folder(run_dir, overwrite)
        write_json_atomic(run_dir / TRAIN_MARKER, {"recipe": rdict, "recipe_hash": rhash,
                                                   "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    records: list[dict] = []
    if run_dir is not None and resume is not None:
        records = _read_log(run_dir / LOG, start_step)
        write_text_atomic(run_dir / LOG, "".join(json.dumps(r) + "\n" for r in records))
    if resume is not None and ckpt_path is None:
        log.warning("--resume %s: no checkpoint yet; training starts over from step 0", run_dir)
    try:
        result = _loop(recipe, loaded, teacher, ctl, optimizer, names, objective, ids, eval_text, device,
                       start_step, run_dir, rhash, records, progress, weight_fmt, one_shot, memory_check,
                       schedule, t_start)
    except BaseException:
        if created and not ck.list_checkpoints(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    result["resumed_from_step"] = start_step if resume is not None else None
    return result


def _read_log(path: Path, upto: int) -> list[dict]:
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a line cut short by the interruption
            if isinstance(r, dict) and isinstance(r.get("step"), int) and r["step"] <= upto:
                records.append(r)
    return records


def _load_student(recipe: Recipe, device: torch.device) -> tuple[Any, Optional[Recipe], Optional[dict]]:
    from nmx.model.sources import load_model

    tr = recipe.training
    if tr.start is None:
        return load_model(recipe.model, recipe.device), None, None
    from nmx.kernels.decode_bench import load_run

    loaded, start_recipe, masks = load_run(expand_user(tr.start), device)
    loaded.notes.append(f"training started from the nmx run folder {tr.start}")
    return loaded, start_recipe, masks


def _load_teacher(loaded: Any, recipe: Recipe, start_recipe: Optional[Recipe], device: torch.device) -> Any:
    """The dense model: a copy of the freshly loaded student (before any pruning), or, when training starts
    from a run folder, the run's model loaded again."""
    if start_recipe is not None:
        from nmx.model.sources import load_model

        teacher = load_model(start_recipe.model, str(device)).model
    else:
        teacher = copy.deepcopy(loaded.model)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class _PeriodicEval:
    """Perplexity on the first `windows` windows of the evaluation text (the protocol of nmx.eval.perplexity:
    non-overlapping windows from the start), the text tokenized once for the whole run."""

    def __init__(self, loaded: Any, recipe: Recipe, text: Any, windows: int) -> None:
        self.loaded, self.seq_len, self.text, self.windows = loaded, recipe.evaluation.seq_len, text, windows
        self._wins = None

    def __call__(self) -> float:
        from nmx.eval.perplexity import tokenize, window_nll, windows_of

        if self._wins is None:
            ids = tokenize(self.loaded.tokenizer, self.text)
            self._wins = windows_of(ids, self.seq_len, self.windows, f"evaluation text {self.text.name!r}")
        model = self.loaded.model
        was = model.training
        model.eval()
        try:
            total = sum(window_nll(model, w) for w in self._wins)
        finally:
            model.train(was)
        return math.exp(total / (len(self._wins) * (self.seq_len - 1)))


def _loop(recipe, loaded, teacher, ctl, optimizer, names, objective, ids, eval_text, device, start_step, run_dir,
          rhash, records, progress, weight_fmt, one_shot, memory_check, schedule, t_start) -> dict:
    tr = recipe.training
    model = loaded.model
    use_bf16 = device.type == "cuda" and tr.bf16
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    model.train()
    _set_checkpointing(model, tr.gradient_checkpointing)
    ctl.attach()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    tokens_per_step = tr.batch_size * tr.seq_len
    peak = {"device": device.type, "gradient_checkpointing": tr.gradient_checkpointing, "step_bytes": None,
            "with_checkpointing_bytes": None, "without_checkpointing_bytes": None}
    logf = open(run_dir / LOG, "a") if run_dir is not None else None
    last_ppl = None
    periodic = _PeriodicEval(loaded, recipe, eval_text, tr.eval_windows)
    t_train = time.perf_counter()
    try:
        for step in range(start_step, tr.steps):
            t0 = time.perf_counter()
            info = ctl.update(step)
            lr = lr_at(step, tr)
            for g in optimizer.param_groups:
                g["lr"] = lr
            batch = batch_at(ids, step, tr).to(device)

            def forward_backward(batch: torch.Tensor = batch) -> torch.Tensor:
                with autocast():
                    t_logits = None
                    if teacher is not None:
                        with torch.no_grad():
                            t_logits = teacher(batch).logits
                    logits = model(batch).logits
                    loss = objective(logits, batch, t_logits)
                loss.backward()
                return loss

            if tr.measure_memory and step == start_step:
                peak.update(_measure(model, forward_backward, optimizer, device, tr.gradient_checkpointing))
            if device.type == "cuda" and step == start_step:
                torch.cuda.reset_peak_memory_stats(device)
            loss = forward_backward()
            loss_v = float(loss.detach())
            if not math.isfinite(loss_v):
                raise NmxError(f"training diverged at step {step} (loss {loss_v}); lower training.lr or raise "
                               "warmup_steps" + (" and resume from the last checkpoint" if run_dir else ""))
            if tr.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, tr.grad_clip)
            optimizer.step()
            ctl.after_step()
            optimizer.zero_grad(set_to_none=True)
            if step == start_step:
                peak["step_bytes"] = _peak_bytes(device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            done = step + 1
            rec = {"step": done, "loss": loss_v, "lr": lr, "flip_rate": info["flip_rate"], "density": info["density"],
                   "pattern": info["pattern"], "tokens_per_s": tokens_per_step / dt}
            if tr.eval_every and done % tr.eval_every == 0 and done != tr.steps:
                last_ppl = rec["eval_perplexity"] = periodic()
            records.append(rec)
            if logf is not None:
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
            if run_dir is not None and tr.checkpoint_every and done % tr.checkpoint_every == 0 and done != tr.steps:
                _save(run_dir, done, model, optimizer, names, ctl, rhash, tr, one_shot)
            if progress:
                shown = {"loss": loss_v, "perplexity": last_ppl, "flip_rate": info["flip_rate"],
                         "tokens_per_s": rec["tokens_per_s"]}
                progress("training", done, tr.steps, shown)
    finally:
        if logf is not None:
            logf.close()
    train_s = time.perf_counter() - t_train
    # ------------------------------------------------ the trained model
    _set_checkpointing(model, False)
    model.config.use_cache = True
    masks = ctl.finalize(weight_fmt)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    from nmx.runner import evaluate, model_shape, versions

    final = evaluate(loaded, recipe, eval_text, (lambda i, n: progress("evaluating", i, n)) if progress else None)
    if records:
        records[-1]["final_perplexity"] = final["perplexity"]  # the evaluation protocol (recipe.evaluation)
        if run_dir is not None:
            write_text_atomic(run_dir / LOG, "".join(json.dumps(r) + "\n" for r in records))
    layers, sparsity, bits = _account(ctl, weight_fmt.name if weight_fmt else None, schedule.pattern_at(tr.steps - 1))
    if device.type != "cuda":
        peak["note"] = ("torch reports a step's peak allocated memory on CUDA only; on the CPU, "
                        "process_max_rss_bytes is the whole process's peak resident memory")
        peak["process_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {
        "perplexity": final["perplexity"],
        "eval_tokens": final["eval_tokens"],
        "weight_sparsity": sparsity,
        "bits_per_weight": bits,
        "kv_bytes_per_token": final.get("kv_bytes_per_token"),
        "protocol": final["protocol"],
        "training": {
            "steps": tr.steps, "tokens": tr.steps * tokens_per_step, "tokens_per_step": tokens_per_step,
            "method": tr.mask.method, "objective": tr.objective.name,
            "final_loss": records[-1]["loss"] if records else None,
            "curve": [{"step": r["step"], "eval_perplexity": r["eval_perplexity"]} for r in records
                      if r.get("eval_perplexity") is not None],
            "eval_windows": tr.eval_windows,
            "pattern_switches": schedule.switches(tr.steps) if ctl.method.masked else [],
            "one_shot": one_shot, "peak_memory": peak, "teacher_memory_check": memory_check,
            "train_s": train_s, "tokens_per_s": (tr.steps - start_step) * tokens_per_step / max(train_s, 1e-9),
            "masks_valid": all(v.get("nm_violations", 0) == 0 for v in layers.values()),
        },
        "recipe": recipe.as_dict(),
        "model": {"name": loaded.name, "parameters": loaded.n_params, "source": loaded.source,
                  "notes": loaded.notes, "shape": model_shape(loaded)},
        "wall_s": time.perf_counter() - t_start,
        "versions": versions(),
        "layers": layers,
    }
    if run_dir is not None:
        _write_final(run_dir, loaded, result, masks, records)
    return result


def _measure(model, forward_backward, optimizer, device, checkpointing: bool) -> dict:
    """One extra forward + backward with gradient checkpointing off and on: the peak allocated bytes of each
    (CUDA); the gradients are dropped, so the run is unchanged."""
    if device.type != "cuda":
        return {"measure_note": "peak memory per step is measured on CUDA only"}
    out = {}
    for on, key in ((False, "without_checkpointing_bytes"), (True, "with_checkpointing_bytes")):
        _set_checkpointing(model, on)
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        forward_backward()
        torch.cuda.synchronize(device)
        out[key] = int(torch.cuda.max_memory_allocated(device))
        optimizer.zero_grad(set_to_none=True)
    _set_checkpointing(model, checkpointing)
    return out


def _save(run_dir, done, model, optimizer, names, ctl, rhash, tr, one_shot) -> None:
    opt_t, opt_steps = ck.optimizer_tensors(optimizer, names)
    tensors = {**ck.model_tensors(model), **opt_t, **ctl.state_tensors(), **ck.rng_tensors()}
    meta = {"recipe_hash": rhash, "next_step": done, "data_position": {"step": done, "tokens": done * tr.batch_size
                                                                       * tr.seq_len},
            "optimizer_steps": opt_steps, "masks": ctl.state_meta(), "one_shot": one_shot}
    ck.save_checkpoint(run_dir, done, tensors, meta, tr.keep_checkpoints)


def _account(ctl: MaskController, fmt_name: Optional[str], pattern: Any) -> tuple[dict, float, float]:
    from nmx.model.compress import layer_bits
    from nmx.sparsity.masks import check_nm

    layers, bits, total, zeros = {}, 0.0, 0, 0
    for name, lin in ctl.linears.items():
        w = lin.weight.detach()
        masked = ctl.masks.get(name) is not None
        rec = layer_bits(w, fmt_name, pattern if masked else None)
        if masked and pattern is not None:
            rec["nm_violations"] = check_nm(w, pattern.n, pattern.m)
        layers[name] = rec
        bits += rec["bits"]
        total += w.numel()
        zeros += w.numel() - rec["nonzero"]
    return layers, zeros / max(1, total), bits / max(1, total)


def _write_final(run_dir: Path, loaded: Any, result: dict, masks: dict, records: list[dict]) -> None:
    """model.safetensors (as `nmx run --save-model`), config and tokenizer (a model folder), recipe.yaml, the
    plot, and result.json last; each file is written beside and renamed into place."""
    from nmx.runner import save_weights

    tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=run_dir))
    try:
        save_weights(tmp / "model.safetensors", loaded, result, masks)
        loaded.model.config.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        if records:
            _plot(records, tmp / PLOT, f"{result['model']['name']}: {result['training']['method']}, "
                                      f"{result['training']['objective']}, {result['training']['steps']} steps")
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(result["recipe"], sort_keys=False))
        for f in sorted(tmp.iterdir()):
            set_normal_mode(f)
            os.replace(f, run_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json_atomic(run_dir / "result.json", _json_safe(result))


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v
