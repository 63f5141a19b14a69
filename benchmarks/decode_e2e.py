"""End-to-end decode speed of a Llama-2-7B-shaped model with random weights: bf16 vs nmx's
compressed path (2:4 + nvfp4 weights through `nmx.kernels.linear`, 4-bit KV cache through
`nmx.kernels.kv_attention`), batch 1 and 16, on one CUDA GPU.

    python benchmarks/decode_e2e.py [--out DIR] [--context 4096] [--batches 1,16] [--layers 32]
                                    [--weights 2:4+nvfp4] [--backend auto]

`--weights`: the compressed model's weights, "[2:4+]FORMAT" (default 2:4+nvfp4, the issue's recipe;
e.g. nvfp4 or int4_g128 for dense 4-bit); `--backend`: what `nmx.kernels.linear` runs them with
(auto = the dispatcher; tc = the tensor-core kernel at every batch); `--small-m tc`: the dispatcher
sends 2..64 tokens to the tensor-core kernel (one token stays on the word kernel).

Weights are real random values (normal / sqrt(K)) with real 2:4 masks (by magnitude), so zeros do
not make anything faster than it is. Both models are the same graph of operations: RMSNorm, fused
QKV projection, RoPE, attention over a cache of `context` tokens (the new token's K/V written into
its last slot), output projection, fused gate/up, SiLU * up, down projection; the LM head stays bf16
in both (it is not pruned or quantized in the recipe either). One decode step is captured in a CUDA
graph and replayed (what serving engines do); tokens/s = batch / step time.
Not included: the compressed cache re-quantizes a full group of G tokens from its bf16 window every G
steps; that cost is measured separately (pack_kv of one group, by the Triton pack kernel and by the
torch path) and reported amortized per step.
Writes DIR/decode_e2e.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nmx.kernels import dispatch, linear, pack  # noqa: E402
from nmx.kernels.kv_attention import decode_attention  # noqa: E402
from nmx.kernels.kv_layout import pack_kv, random_packed_kv  # noqa: E402
from nmx.kernels.timing import graph_time  # noqa: E402
from nmx.sparsity.masks import nm_mask  # noqa: E402

LLAMA2_7B = {"hidden": 4096, "heads": 32, "kv_heads": 32, "head_dim": 128, "ffn": 11008, "vocab": 32000}


def rms_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * w


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Layer:
    """One decoder layer's weights, in one of the two forms."""

    def __init__(self, cfg: dict, compressed: bool, device: str, seed: int, weights: str = "2:4+nvfp4",
                 backend: str = "auto") -> None:
        g = torch.Generator(device=device).manual_seed(seed)
        h, f = cfg["hidden"], cfg["ffn"]
        qkv_out = (cfg["heads"] + 2 * cfg["kv_heads"]) * cfg["head_dim"]
        shapes = {"qkv": (qkv_out, h), "o": (h, cfg["heads"] * cfg["head_dim"]), "gate_up": (2 * f, h), "down": (h, f)}
        self.compressed, self.backend = compressed, backend
        pattern, _, fmt = weights.rpartition("+")
        pattern = pattern or None
        self.w = {}
        for name, (n, k) in shapes.items():
            w = torch.randn(n, k, generator=g, device=device) / math.sqrt(k)
            if compressed:
                self.w[name] = pack(w * nm_mask(w.abs(), 2, 4) if pattern else w, fmt, pattern)
            else:
                self.w[name] = w.to(torch.bfloat16)
            del w
        self.norm1 = torch.ones(h, device=device, dtype=torch.bfloat16)
        self.norm2 = torch.ones(h, device=device, dtype=torch.bfloat16)

    def lin(self, x: torch.Tensor, name: str) -> torch.Tensor:
        w = self.w[name]
        return linear(x, w, self.backend) if self.compressed else F.linear(x, w)


class Model:
    def __init__(self, cfg: dict, layers: int, compressed: bool, device: str, weights: str = "2:4+nvfp4",
                 backend: str = "auto") -> None:
        self.cfg, self.compressed, self.device = cfg, compressed, device
        self.layers = [Layer(cfg, compressed, device, i, weights, backend) for i in range(layers)]
        g = torch.Generator(device=device).manual_seed(1000)
        self.embed = (torch.randn(cfg["vocab"], cfg["hidden"], generator=g, device=device) * 0.02).to(torch.bfloat16)
        self.lm_head = (torch.randn(cfg["vocab"], cfg["hidden"], generator=g, device=device)
                        / math.sqrt(cfg["hidden"])).to(torch.bfloat16)
        self.norm = torch.ones(cfg["hidden"], device=device, dtype=torch.bfloat16)

    def set_cache(self, batch: int, context: int) -> None:
        """A cache of `context` random tokens per layer (the new token overwrites the last slot)."""
        cfg, device, layers = self.cfg, self.device, len(self.layers)
        self.cache = None
        hk, d = cfg["kv_heads"], cfg["head_dim"]
        if self.compressed:  # 4-bit keys per channel, values per token, groups of 32, bf16 window of 128
            self.cache = [random_packed_kv(batch, hk, context, d, "int4", "int4", group=32, residual=128,
                                           device=device, seed=i) for i in range(layers)]
        else:
            self.cache = [(torch.randn(batch, hk, context, d, device=device, dtype=torch.bfloat16),
                           torch.randn(batch, hk, context, d, device=device, dtype=torch.bfloat16))
                          for _ in range(layers)]
        pos = context - 1
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=device).float() / d))
        ang = pos * inv
        self.cos = torch.cat((ang.cos(), ang.cos()))[: d // 2].to(torch.bfloat16)
        self.sin = torch.cat((ang.sin(), ang.sin()))[: d // 2].to(torch.bfloat16)

    def attention(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, Hq, D], k/v [B, Hk, D] of the new token, written into the cache's last slot."""
        if self.compressed:
            c = self.cache[i]
            c.k_rest[:, :, -1].copy_(k)
            c.v_rest[:, :, -1].copy_(v)
            return decode_attention(q, c)
        kc, vc = self.cache[i]
        kc[:, :, -1].copy_(k)
        vc[:, :, -1].copy_(v)
        hq, hk = q.shape[1], kc.shape[1]
        out = F.scaled_dot_product_attention(q[:, :, None], kc, vc, enable_gqa=hq != hk)
        return out[:, :, 0]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b, hq, hk, d = tokens.shape[0], cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
        x = self.embed[tokens]
        for i, layer in enumerate(self.layers):
            qkv = layer.lin(rms_norm(x, layer.norm1), "qkv")
            q, k, v = qkv.split((hq * d, hk * d, hk * d), dim=-1)
            q = rope(q.view(b, hq, d), self.cos, self.sin)
            k = rope(k.view(b, hk, d), self.cos, self.sin)
            a = self.attention(i, q, k, v.view(b, hk, d))
            x = x + layer.lin(a.reshape(b, hq * d), "o")
            gu = layer.lin(rms_norm(x, layer.norm2), "gate_up")
            gate, up = gu.chunk(2, dim=-1)
            x = x + layer.lin(F.silu(gate) * up, "down")
        return F.linear(rms_norm(x, self.norm), self.lm_head).argmax(-1)


def requant_cost(batch: int, kv_heads: int, head_dim: int, group: int, device: str, backend: str) -> float:
    """Seconds to quantize one group of G tokens into the 4-bit layout, per layer (pack_kv, eager, with its
    input checks): backend "torch" (hundreds of small operations) or "triton" (triton_kv_pack.py)."""
    k = torch.randn(batch, kv_heads, group, head_dim, device=device, dtype=torch.bfloat16)
    pack_kv(k, k, "int4", "int4", group=group, residual=0, backend=backend)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        pack_kv(k, k, "int4", "int4", group=group, residual=0, backend=backend)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / 5


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--weights", default="2:4+nvfp4", help="[2:4+]FORMAT of the compressed model's weights")
    ap.add_argument("--backend", default="auto", help="nmx.kernels.linear backend for them (auto, tc, ...)")
    ap.add_argument("--small-m", default="dense", choices=("dense", "tc"), help="the dispatcher's 2..64-token path")
    ap.add_argument("--cpu-smoke", action="store_true", help="one step of a tiny model on CPU (reference paths)")
    args = ap.parse_args()
    dispatch.SMALL_M = args.small_m
    if args.cpu_smoke:  # checks this script's logic without a GPU
        tiny = {"hidden": 128, "heads": 4, "kv_heads": 4, "head_dim": 32, "ffn": 256, "vocab": 100}
        for compressed in (False, True):
            m = Model(tiny, 2, compressed, "cpu", args.weights)
            m.set_cache(2, 200)
            print("smoke", compressed, m.step(torch.tensor([1, 2])).tolist())
        return
    device = "cuda"
    cfg = LLAMA2_7B
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "model": {**cfg, "layers": args.layers}, "context": args.context, "weights": args.weights,
               "backend": args.backend, "small_m": args.small_m, "rows": []}
    batches = [int(b) for b in args.batches.split(",")]
    rows = {b: {"batch": b} for b in batches}
    for compressed in (False, True):
        key = "compressed" if compressed else "bf16"
        t0 = time.time()
        model = Model(cfg, args.layers, compressed, device, args.weights, args.backend)
        results[f"{key}_build_s"] = time.time() - t0
        for batch in batches:
            model.set_cache(batch, args.context)
            tokens = torch.randint(0, cfg["vocab"], (batch,), device=device)
            model.step(tokens)  # compile / tune outside the graph
            t = graph_time(functools.partial(model.step, tokens))
            rows[batch][f"{key}_step_s"] = t
            rows[batch][f"{key}_tokens_per_s"] = batch / t
            print(f"{key} batch {batch}: {t * 1e3:.2f} ms/step", flush=True)
        del model
        torch.cuda.empty_cache()
    for batch in batches:
        row = rows[batch]
        row["speedup"] = row["bf16_step_s"] / row["compressed_step_s"]
        for backend in ("torch", "triton"):  # one group of 32 tokens per layer every 32 steps
            row[f"requant_{backend}_per_step_s"] = (requant_cost(batch, cfg["kv_heads"], cfg["head_dim"], 32, device,
                                                                 backend) * args.layers / 32)
        rq = row["requant_per_step_s"] = row["requant_triton_per_step_s"]
        row["speedup_with_requant"] = row["bf16_step_s"] / (row["compressed_step_s"] + rq)
        row["speedup_with_torch_requant"] = row["bf16_step_s"] / (row["compressed_step_s"]
                                                                  + row["requant_torch_per_step_s"])
        results["rows"].append(row)
        print(f"batch {batch:3d} context {args.context}: bf16 {row['bf16_step_s'] * 1e3:7.2f} ms/step "
              f"({row['bf16_tokens_per_s']:8.1f} tok/s) | {args.weights} weights ({args.backend}, 2..64 tokens: "
              f"{args.small_m}), int4 KV "
              f"{row['compressed_step_s'] * 1e3:7.2f} ms/step ({row['compressed_tokens_per_s']:8.1f} tok/s) | "
              f"{row['speedup']:.2f}x ({row['speedup_with_requant']:.2f}x with the cache's re-quantization "
              f"amortized: {rq * 1e6:.0f} us/step by the Triton pack; "
              f"{row['speedup_with_torch_requant']:.2f}x by the torch path)", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "decode_e2e.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
