"""Task-level checks of a compressed KV cache: greedy-generation agreement and passkey retrieval.

    import nmx.kv as kv
    from nmx.kv.evaluate import generation_agreement, passkey

    policy = kv.KVPolicy.from_dict({"evict": {"method": "streaming", "budget": 256}})
    agree = generation_agreement(model, tokenizer, prompts, policy, max_new_tokens=32)
    agree["overall"]       # {"match_rate", "mean_first_divergence", "identical", ...}
    pk = passkey(model, tokenizer, policy, depths=(0.0, 0.5, 1.0), lengths=(1024, 2048), seed=0)
    pk["accuracy"], pk["baseline_accuracy"]   # compressed cache vs the full cache, per depth / length

Both decode greedily with a hand-written loop (no `generate` sampling defaults can creep in):
the prompt (the context, for the passkey) is fed in chunks of `chunk` tokens (None: one forward,
so that, as in kvpress, a method compresses after seeing the whole prefill), then one token per
forward. The full-cache reference runs the same loop through a transformers `DynamicCache`
under the same attention implementation (eager while the policy needs attention scores), so the
two runs differ only by the cache. Generation runs for exactly `max_new_tokens` tokens (no stop
at end-of-sequence), so every prompt contributes the same number of positions.

- *first divergence*: index (0-based) of the first generated token that differs from the
  full-cache generation; `max_new_tokens` when all agree. *match rate*: fraction of positions
  whose tokens are equal (after a divergence the two generations see different histories, so
  this is a free-running figure, not a teacher-forced one).
- *passkey*: a random 5-digit number (drawn from `random.Random(seed)`) is stated once inside
  filler text, at relative depth d of the filler (0 = start, 1 = end), in a prompt of about
  `length` tokens (the filler is sized with the tokenizer; the actual count is recorded). The
  context (instruction, filler, key) goes through the cache first, then the question, then
  `answer_tokens` greedy tokens; a trial is correct when the first 5-digit run in the decoded
  answer is the key. The format follows the passkey test of Mohtashami & Jaggi (2023,
  "Landmark Attention", arXiv:2305.16300); the wording and the filler sentences are ours.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from nmx.errors import InputError
from nmx.kv.cache import KVCache, attention_for
from nmx.kv.policy import KVPolicy
from nmx.model.layers import with_cache

log = logging.getLogger(__name__)

#: filler sentences (ours), drawn in a seeded order to build the haystack
FILLER = (
    "The river bends twice before it reaches the old mill.",
    "Clouds drift slowly over the hills in the afternoon.",
    "A cat sleeps on the warm stones near the garden wall.",
    "The market opens early and closes when the bread is gone.",
    "Leaves turn yellow at the end of the summer.",
    "The road to the village is quiet after dark.",
    "Children play by the lake while the boats come back.",
    "The library keeps its windows open on warm days.",
)
INSTRUCTION = ("Below is a long text. Somewhere inside it is a pass key, a five-digit number. "
               "Read the text, remember the pass key, and answer the question at the end.\n\n")
NEEDLE = " The pass key is {key}. Remember it: {key} is the pass key."
QUESTION = "\n\nWhat is the pass key? The pass key is"
KEY_RE = re.compile(r"\d{5}")


# ---- decoding --------------------------------------------------------------------------------


def _full_cache(model: Any):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


@torch.inference_mode()
def _feed(model: Any, ids: torch.Tensor, cache: Any, chunk: int | None) -> torch.Tensor:
    """Feed ids [1, n] through the cache in chunks; the logits of the last position ([vocab])."""
    step = chunk or ids.shape[1]
    logits = None
    for i in range(0, ids.shape[1], step):
        logits = model(ids[:, i:i + step], **with_cache(model, cache)).logits[0, -1]
    return logits


@torch.inference_mode()
def greedy(model: Any, context: torch.Tensor, cache: Any, max_new_tokens: int, chunk: int | None = None,
           suffix: torch.Tensor | None = None) -> list[int]:
    """Greedy tokens after `context` ([1, n] ids fed in `chunk`s) and `suffix` (one forward), one
    token per forward through `cache`; exactly `max_new_tokens` of them."""
    device = next(model.parameters()).device
    logits = _feed(model, context.to(device), cache, chunk)
    if suffix is not None and suffix.numel():
        logits = _feed(model, suffix.to(device), cache, None)
    out: list[int] = []
    for i in range(max_new_tokens):
        tok = int(logits.argmax())
        out.append(tok)
        if i + 1 < max_new_tokens:
            logits = model(torch.tensor([[tok]], device=device), **with_cache(model, cache)).logits[0, -1]
    return out


def _ids(tokenizer: Any, text: str, special: bool = True) -> torch.Tensor:
    """[1, n] ids of `text`; `special=False`: no BOS (a piece that continues a text)."""
    return tokenizer(text, return_tensors="pt", add_special_tokens=special).input_ids


def _check(policy: KVPolicy, max_new_tokens: int, chunk: int | None) -> None:
    if not isinstance(policy, KVPolicy):
        raise InputError(f"policy must be an nmx.kv.KVPolicy, got {type(policy).__name__}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
        raise InputError(f"chunk must be an integer >= 1 (or None for one forward), got {chunk!r}")


# ---- generation agreement --------------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    """One prompt: the two generations and how far they agree."""

    prompt_tokens: int
    first_divergence: int  # index of the first differing generated token; = generated when none differs
    match_rate: float  # fraction of positions with equal tokens
    generated: int
    full: tuple[int, ...]
    compressed: tuple[int, ...]
    kv_bytes_per_token: float  # the compressed cache's bytes per token at the end


def compare_tokens(full: Sequence[int], compressed: Sequence[int]) -> tuple[int, float]:
    """(first divergence, match rate) of two equally long token sequences."""
    if len(full) != len(compressed) or not full:
        raise ValueError("compare two non-empty generations of the same length")
    first = next((i for i, (a, b) in enumerate(zip(full, compressed, strict=True)) if a != b), len(full))
    return first, sum(a == b for a, b in zip(full, compressed, strict=True)) / len(full)


def generation_agreement(model: Any, tokenizer: Any, prompts: Sequence[str | torch.Tensor], policy: KVPolicy,
                         max_new_tokens: int = 32, chunk: int | None = None) -> dict[str, Any]:
    """Greedy generation with `policy`'s compressed cache vs the full cache, per prompt and overall.

    `prompts`: strings (tokenized with `tokenizer`) or token ids ([n] or [1, n]). Returns
    {"prompts": [Agreement as dict, ...], "overall": {"match_rate" (mean over prompts, = over tokens),
    "mean_first_divergence", "min_first_divergence", "identical" (prompts with no divergence),
    "prompts", "max_new_tokens", "chunk"}}."""
    _check(policy, max_new_tokens, chunk)
    if not prompts:
        raise InputError("generation_agreement needs at least one prompt")
    rows: list[Agreement] = []
    with attention_for(policy, model, quiet=True):
        for p in prompts:
            ids = _ids(tokenizer, p) if isinstance(p, str) else torch.as_tensor(p).reshape(1, -1)
            if ids.shape[1] == 0:
                raise InputError("generation_agreement: a prompt is empty")
            full = greedy(model, ids, _full_cache(model), max_new_tokens, chunk)
            cache = KVCache(policy, model)
            comp = greedy(model, ids, cache, max_new_tokens, chunk)
            first, rate = compare_tokens(full, comp)
            rows.append(Agreement(ids.shape[1], first, rate, max_new_tokens, tuple(full), tuple(comp),
                                  float(cache.bytes_per_token())))
    n = len(rows)
    overall = {
        "match_rate": sum(r.match_rate for r in rows) / n,
        "mean_first_divergence": sum(r.first_divergence for r in rows) / n,
        "min_first_divergence": min(r.first_divergence for r in rows),
        "identical": sum(r.first_divergence == r.generated for r in rows),
        "prompts": n, "max_new_tokens": max_new_tokens, "chunk": chunk,
        "kv_bytes_per_token": sum(r.kv_bytes_per_token for r in rows) / n,
    }
    return {"prompts": [asdict(r) for r in rows], "overall": overall}


# ---- passkey retrieval -----------------------------------------------------------------------


@dataclass(frozen=True)
class PasskeyPrompt:
    key: str
    context: torch.Tensor  # [1, n] ids: instruction, filler with the needle
    question: torch.Tensor  # [1, q] ids
    tokens: int  # context + question
    needle_token: int  # token index where the needle starts (approximate: tokenized pieces)


def passkey_prompt(tokenizer: Any, length: int, depth: float, key: str, rng: random.Random) -> PasskeyPrompt:
    """The prompt of about `length` tokens with `key` at relative `depth` of the filler."""
    if not 0.0 <= depth <= 1.0:
        raise InputError(f"passkey depth must be in [0, 1], got {depth}")
    sentences = [rng.choice(FILLER) for _ in range(4 * length)]  # more than enough; cut below
    n_fixed = (len(_ids(tokenizer, INSTRUCTION)[0]) + len(_ids(tokenizer, NEEDLE.format(key=key), False)[0])
               + len(_ids(tokenizer, QUESTION, False)[0]))
    budget = length - n_fixed
    if budget < 8:
        raise InputError(f"passkey length {length} leaves no room for filler text; use at least {n_fixed + 8} tokens")
    sizes = {s: len(_ids(tokenizer, " " + s, False)[0]) for s in FILLER}
    filler, used = [], 0
    for s in sentences:
        t = sizes[s]
        if used + t > budget:
            break
        filler.append(s)
        used += t
    cut = round(depth * len(filler))
    before = INSTRUCTION + " ".join(filler[:cut])
    context = before + NEEDLE.format(key=key) + (" " + " ".join(filler[cut:]) if filler[cut:] else "")
    ctx = _ids(tokenizer, context)
    q = _ids(tokenizer, QUESTION, False)  # continues the context: no second BOS
    return PasskeyPrompt(key, ctx, q, ctx.shape[1] + q.shape[1], len(_ids(tokenizer, before)[0]))


def answer_key(text: str) -> str | None:
    """The first run of 5 digits in a generated answer."""
    m = KEY_RE.search(text)
    return m.group(0) if m else None


def _accuracy(rows: list[dict], field: str, by: str) -> dict[str, float]:
    groups: dict[Any, list[bool]] = {}
    for r in rows:
        groups.setdefault(r[by], []).append(r[field])
    return {str(k): sum(v) / len(v) for k, v in sorted(groups.items())}


def passkey(model: Any, tokenizer: Any, policy: KVPolicy | None, depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
            lengths: Sequence[int] = (1024, 2048), seed: int = 0, trials: int = 1, chunk: int | None = None,
            answer_tokens: int = 8, baseline: bool = True) -> dict[str, Any]:
    """Passkey retrieval accuracy with `policy`'s cache (None: the full cache only), per depth
    and per length, with the full-cache baseline beside it (`baseline=False` skips it).

    Returns {"rows": [{length, depth, trial, key, tokens, answer, correct, full_answer, full_correct}],
    "accuracy": {"overall", "by_depth", "by_length"}, "baseline_accuracy": same or None, "protocol"}."""
    _check(policy if policy is not None else KVPolicy(), answer_tokens, chunk)
    if not depths or not lengths:
        raise InputError("passkey needs at least one depth and one length")
    if not isinstance(trials, int) or trials < 1:
        raise InputError(f"passkey trials must be an integer >= 1, got {trials!r}")
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    run_full = baseline or policy is None
    with attention_for(policy or KVPolicy(), model, quiet=True):
        for length in lengths:
            for depth in depths:
                for trial in range(trials):
                    key = f"{rng.randrange(10_000, 100_000)}"
                    prompt = passkey_prompt(tokenizer, int(length), float(depth), key, rng)
                    row: dict[str, Any] = {"length": int(length), "depth": float(depth), "trial": trial, "key": key,
                                           "tokens": prompt.tokens, "needle_token": prompt.needle_token}
                    if policy is not None:
                        toks = greedy(model, prompt.context, KVCache(policy, model), answer_tokens, chunk,
                                      prompt.question)
                        row["answer"] = tokenizer.decode(toks)
                        row["correct"] = answer_key(row["answer"]) == key
                    if run_full:
                        toks = greedy(model, prompt.context, _full_cache(model), answer_tokens, chunk, prompt.question)
                        row["full_answer"] = tokenizer.decode(toks)
                        row["full_correct"] = answer_key(row["full_answer"]) == key
                    rows.append(row)

    def summary(field: str) -> dict[str, Any]:
        return {"overall": sum(r[field] for r in rows) / len(rows), "by_depth": _accuracy(rows, field, "depth"),
                "by_length": _accuracy(rows, field, "length")}

    return {
        "rows": rows,
        "accuracy": summary("correct") if policy is not None else None,
        "baseline_accuracy": summary("full_correct") if run_full else None,
        "protocol": {"depths": [float(d) for d in depths], "lengths": [int(n) for n in lengths], "seed": seed,
                     "trials": trials, "chunk": chunk, "answer_tokens": answer_tokens,
                     "policy": policy.as_dict() if policy is not None else None},
    }
