"""The KV cache on a CUDA GPU does what it does on the CPU (skipped where torch sees no GPU, as in CI):
the same bytes, the same kept positions, logits within float tolerance."""

import inspect

import pytest
import torch

from nmx.kv import KVCache, KVPolicy
from tests.kv.conftest import kv_llama

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

POLICIES = {
    "kivi-int4-streaming-merge": {"quant": {"format": "int4", "group": 8, "residual": 8, "sinks": 4},
                                  "evict": {"method": "streaming", "budget": 24}, "merge": True},
    "nvfp4-h2o": {"quant": {"format": "nvfp4", "group": 16, "residual": 0}, "evict": {"method": "h2o", "budget": 20}},
    "mxfp4-pre-rope-snapkv": {"quant": {"format": "mxfp4", "residual": 4, "key_rope": "pre"},
                              "evict": {"method": "snapkv", "budget": 40, "window": 8}},
    "int2-asym-random": {"quant": {"format": "int2_asym", "key_axis": "token", "group": 16, "residual": 0},
                         "evict": {"method": "random", "budget": 16, "seed": 3}},
    "fp8-tova": {"quant": {"format": "fp8_e4m3", "group": 8, "residual": 8}, "evict": {"method": "tova", "budget": 24}},
    "knorm": {"evict": {"method": "knorm", "budget": 12}},
}


def _run(model, policy, ids):
    cache = KVCache(policy, model)
    # transformers renamed past_key_values to cache in 5.2x; a GPU image may hold an older one
    kw = {"cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values": cache}
    logits = []
    with torch.no_grad():
        logits.append(model(ids[:, :32], **kw).logits[:, -1])
        for t in range(32, ids.shape[1]):
            logits.append(model(ids[:, t:t + 1], **kw).logits[:, -1])
    return cache, torch.stack(logits).float().cpu()


@pytest.mark.parametrize("name", POLICIES)
def test_cuda_cache_matches_the_cpu(name):
    policy = KVPolicy.from_dict(POLICIES[name])
    ids = torch.randint(0, 100, (2, 64), generator=torch.Generator().manual_seed(0))
    cpu_cache, cpu = _run(kv_llama(attn="eager", sharp=True), policy, ids)
    gpu_cache, gpu = _run(kv_llama(attn="eager", sharp=True).cuda(), policy, ids.cuda())
    assert gpu_cache.layers[0].tail_k.is_cuda
    assert gpu_cache.nbytes() == cpu_cache.nbytes()
    for layer in range(2):
        assert torch.equal(gpu_cache.kept_positions(layer).cpu(), cpu_cache.kept_positions(layer))
    assert torch.allclose(gpu, cpu, atol=2e-3, rtol=1e-3), (gpu - cpu).abs().max()
