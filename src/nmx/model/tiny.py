"""A tiny random Llama from a transformers config, with a character tokenizer built in place: the real
model code paths in milliseconds, with no download (the tests' model and the benchmarks' `--tiny` modes)."""

from __future__ import annotations

import string
from pathlib import Path

import torch

CHARS = ["[UNK]", "[BOS]"] + list(string.printable)


def char_tokenizer():
    """One token per printable character (plus [UNK] and [BOS])."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(CHARS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="[BOS]")


def tiny_llama(seed: int = 0, layers: int = 2):
    """A random 2-layer (by default) Llama, hidden 64, 4 heads over 2 KV heads, tied embeddings, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(CHARS), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def save_tiny_llama(folder: Path, seed: int = 0) -> str:
    """`tiny_llama` and its tokenizer saved in `folder` (a model folder any nmx command loads); returns the path."""
    tiny_llama(seed).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return str(folder)
