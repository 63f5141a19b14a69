"""A tiny random Llama with head_dim 32 (the shared tiny model has 16, too small for per-token groups)."""

import pytest
import torch


def kv_llama(seed: int = 0, layers: int = 2, dtype: torch.dtype = torch.float32, attn: str = "sdpa",
             sharp: bool = False):
    """`sharp`: queries scaled up so that attention is peaked (a random init attends almost uniformly)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=102, hidden_size=128, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, attn_implementation=attn)
    model = LlamaForCausalLM(config).to(dtype).eval()
    if sharp:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.mul_(30)
    return model


@pytest.fixture
def ids():
    """Two rows of 48 token ids (every cache test runs a batch of two)."""
    return torch.randint(0, 100, (2, 48), generator=torch.Generator().manual_seed(1))
