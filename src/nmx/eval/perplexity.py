"""Perplexity with a pinned, recorded protocol (the Wanda/SparseGPT one by default).

The text is tokenized once; non-overlapping windows of `seq_len` tokens are scored
independently (no context carried over), every token after the first of each window is
predicted, and perplexity = exp(total NLL / tokens scored). With `max_windows` only the
first windows are scored, for quick runs; the record says so.

With `new_cache` (a factory of KV caches, e.g. an `nmx.kv.KVCache`), each window is fed in
chunks of `chunk` tokens through a fresh cache, which carries the (compressed) context from
chunk to chunk; the record gives the chunk size, and the cache's mean `bytes_per_token()` at
the end of the windows is returned as `kv_bytes_per_token`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from nmx.errors import InputError
from nmx.eval.text import Text
from nmx.model.layers import with_cache


@dataclass(frozen=True)
class Protocol:
    text: str
    source: str
    join_rule: str
    tokenizer: str
    seq_len: int
    stride: int
    windows: int
    windows_available: int
    tokens_scored: int
    text_tokens: int
    dtype: str
    device: str
    first_token_is_bos: bool
    cache_chunk: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tokenize(tokenizer: Any, text: Text) -> torch.Tensor:
    ids = tokenizer(text.text, return_tensors="pt").input_ids[0]
    if ids.numel() == 0:
        raise InputError(f"text {text.name!r} is empty after tokenization")
    return ids


def windows_of(ids: torch.Tensor, seq_len: int, max_windows: int | None, what: str) -> torch.Tensor:
    if seq_len < 2:
        raise InputError(f"seq_len must be at least 2, got {seq_len}")
    n = ids.numel() // seq_len
    if n == 0:
        raise InputError(
            f"{what} has {ids.numel()} tokens, fewer than one window of {seq_len}; "
            "use a longer text or a smaller seq_len"
        )
    if max_windows is not None:
        if max_windows < 1:
            raise InputError(f"max_windows must be at least 1, got {max_windows}")
        n = min(n, max_windows)
    return ids[: n * seq_len].reshape(n, seq_len)


@torch.inference_mode()
def window_logits(model: Any, window: torch.Tensor, cache: Any = None, chunk: int | None = None) -> torch.Tensor:
    """float32 logits predicting tokens 1.. of one window from the ones before ([len - 1, vocab]); with a
    `cache`, fed `chunk` tokens per forward through it."""
    window = window.to(next(model.parameters()).device)
    if cache is None:
        return model(window.unsqueeze(0)).logits[0, :-1].float()
    step, kw = chunk or window.numel(), with_cache(model, cache)
    parts = [model(window[i:i + step].unsqueeze(0), **kw).logits[0].float() for i in range(0, window.numel(), step)]
    return torch.cat(parts)[:-1]


@torch.inference_mode()
def window_nll(model: Any, window: torch.Tensor, cache: Any = None, chunk: int | None = None) -> float:
    """Summed negative log-likelihood (float64) of tokens 1.. of one window given the ones before;
    with a `cache`, fed `chunk` tokens per forward through it."""
    logits = window_logits(model, window, cache, chunk)
    return float(torch.nn.functional.cross_entropy(logits, window[1:].to(logits.device), reduction="sum").double())


def perplexity(
    model: Any,
    tokenizer: Any,
    text: Text,
    seq_len: int = 2048,
    max_windows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    new_cache: Callable[[], Any] | None = None,
    chunk: int | None = None,
) -> dict[str, Any]:
    ids = tokenize(tokenizer, text)
    wins = windows_of(ids, seq_len, max_windows, f"evaluation text {text.name!r}")
    if chunk is not None and chunk < 1:
        raise InputError(f"chunk must be at least 1, got {chunk}")
    total = 0.0
    kv_bytes: list[float] = []
    for i, w in enumerate(wins):
        cache = new_cache() if new_cache is not None else None
        total += window_nll(model, w, cache, chunk)
        if cache is not None and hasattr(cache, "bytes_per_token"):
            kv_bytes.append(float(cache.bytes_per_token()))
        del cache
        if progress:
            progress(i + 1, len(wins))
    scored = len(wins) * (seq_len - 1)
    protocol = Protocol(
        text=text.name, source=text.source, join_rule=text.join_rule,
        tokenizer=getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
        seq_len=seq_len, stride=seq_len, windows=len(wins), windows_available=ids.numel() // seq_len,
        tokens_scored=scored, text_tokens=ids.numel(),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        device=str(next(model.parameters()).device),
        first_token_is_bos=bool(ids[0] == getattr(tokenizer, "bos_token_id", None)),
        cache_chunk=(chunk or seq_len) if new_cache is not None else None,
    )
    out = {"perplexity": math.exp(total / scored), "nll": total, "eval_tokens": scored, "protocol": protocol.as_dict()}
    if kv_bytes:
        out["kv_bytes_per_token"] = sum(kv_bytes) / len(kv_bytes)
    return out
