"""`nmx bench decode`: decode tokens/s of a model's own Hugging Face forward, dense bf16 vs compressed.

    nmx bench decode --config llama-2-7b --weights int4_g128 --batch 1,16 --context 2048 --tokens 128
    nmx bench decode --model smollm2-135m --recipe r.yaml        # nmx's compress, then convert_recipe
    nmx bench decode --run RUN_DIR                               # a `nmx run --save-model` folder
    nmx bench decode --config llama-2-7b --weights int4_g128 --kv int4   # + rows with nmx's packed int4 KV cache
    nmx bench decode --config llama-2-7b --weights int4_g128 --profile 3 # + each row's kernels, by class
    nmx bench decode --config llama-2-7b --weights int4_g128 --small-ops both  # + rows with fuse_small_ops

Both models run the same code: the transformers model's forward with a `StaticCache` of
context + tokens (+ a few) slots, one new token per sequence per step, greedy (the argmax feeds the next
step). On a CUDA GPU one step is captured in a CUDA graph and replayed (`mode="graph"`), optionally after
`torch.compile` fused its small ops (`mode="compile"`: compile once per model and batch, minutes for a
7B-shaped model). The converted model's linears run `nmx.kernels.linear` through the opaque custom op
`nmx::packed_linear` (convert.py), which both torch.compile and the graph capture take as is.

The cache is filled, not prefilled: one step initializes the StaticCache, its keys and values are then
set to random bf16 values and its length to `context` (decode speed does not depend on what the cache
holds, and this skips a batch x context prefill and its memory). Note that transformers' static cache
attends over all of its slots every step (masked), so the KV bytes read per step are those of
context + tokens + 8 slots. tokens/s = batch x tokens / (time of `tokens` replays).

Random-weight configs (`--config`, no download): a LlamaConfig of that shape, built in bf16 directly on the
device (no float32 copy on the host). A recipe on a random model is applied by magnitude (its pattern)
and by packing (its format): there is nothing to calibrate on. A real model (`--model`) with `--recipe`
runs nmx's own compress (calibration included) and `convert_recipe` (exact packing).

Without a CUDA GPU the command refuses (one line); `allow_cpu` runs eager steps on the CPU through the
reference twin: a smoke run of the code path, not a measurement.

A quantized KV cache (`kv="int4"` / `"int2"`, `--kv`): every model is also timed, as its own row, with nmx's
packed KV cache in graph mode (kv_hf.packed_cache(static=True): per layer one append kernel and the fixed-grid
decode-attention kernel, the token count on the device) instead of the StaticCache: rows "bf16 kv-int4" and
"compressed kv-int4" beside "bf16" and "compressed" (bf16 KV in a StaticCache), speedups against the "bf16" row
of the same batch, in the same run. Its cache holds context + tokens + 8 tokens; it is filled by appending
random bf16 keys and values of `context` tokens (quantized chunk by chunk as a prefill would leave them), and
rewound to `context` after the warm-up steps (the counter is set back; slots are rewritten, and the same
`tokens` steps, flushes included, are timed). The packed kernels read only the live tokens, so each row records
its KV bytes per step as the mean over the timed steps of what the decode kernel reads (codes, scales and the
bf16 window at that length; `bytes_per_step["kv_cache"]`, also `kv_bytes_per_step`), against the StaticCache's
all slots. On the CPU the packed rows run eagerly through the reference twins (the cache's torch path and the
float32 attention). `mode="compile"` is not applied to packed rows (their attention dispatch runs Python that
dynamo would break on): they are captured uncompiled, and their `mode` says so.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from nmx.errors import InputError
from nmx.model.layers import with_cache

log = logging.getLogger(__name__)

#: Llama-architecture shapes for random-weight models (no download)
CONFIGS: dict[str, dict[str, Any]] = {
    "llama-2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5),
    "llama-3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                       rms_norm_eps=1e-5, rope_theta=500000.0),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True),
    "tiny": dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True),
}
SMALL_OPS = ("hf", "fused", "both")
MODES = ("auto", "compile", "graph", "eager")
SLACK = 8  # cache slots beyond context + tokens (warm-up steps write there before the length is reset)
#: KV formats the graph-mode packed cache takes (its Triton append packs them; the decode kernel reads them)
KV_GRAPH_FORMATS = ("int4", "int2", "fp8_e4m3", "mxfp4")


@dataclass(frozen=True)
class KVSpec:
    """The packed KV cache of the `--kv` rows: one format for keys and values, its group and bf16 window."""

    format: str
    group: int | None = None
    residual: int = 128

    @property
    def name(self) -> str:
        return f"kv-{self.format}"


def kv_spec(fmt: str | None, group: int | None = None, residual: int = 128) -> KVSpec | None:
    """The `--kv` choice checked before any work: None for bf16 (transformers' StaticCache, the default)."""
    from nmx.kernels.kv_layout import KV_FORMATS

    if fmt is None or fmt == "bf16":
        return None
    if fmt not in KV_FORMATS:
        raise InputError(f"--kv {fmt}: the KV decode-attention kernel does not read {fmt!r}; --kv takes bf16 "
                         f"(transformers' StaticCache, the default), {', '.join(KV_GRAPH_FORMATS)}")
    if fmt not in KV_GRAPH_FORMATS:
        raise InputError(f"--kv {fmt}: the graph-mode packed KV cache takes {', '.join(KV_GRAPH_FORMATS)} (its "
                         f"Triton append packs no other format); bf16 (the default) times transformers' StaticCache")
    if isinstance(residual, bool) or not isinstance(residual, int) or residual < 0:
        raise InputError(f"--kv-residual must be an integer >= 0, got {residual!r}")
    if group is not None and (isinstance(group, bool) or not isinstance(group, int) or group < 1):
        raise InputError(f"--kv-group must be a positive integer, got {group!r}")
    return KVSpec(fmt, group, residual)


def check_kv_model(config: Any, kv: KVSpec | None) -> None:
    """Refuse (one line) a model whose KV shape the packed cache's kernels do not take."""
    if kv is None:
        return
    from nmx.kernels.kv_layout import MAX_HEAD_DIM, _pow2, resolve_group
    from nmx.kv.cache import model_kv_shape

    _, _, head_dim = model_kv_shape(config)
    if not (isinstance(head_dim, int) and _pow2(head_dim) and 16 <= head_dim <= MAX_HEAD_DIM):
        raise InputError(f"--kv {kv.format}: the KV decode-attention kernel takes head_dim 16, 32, 64, 128 or 256; "
                         f"this model's is {head_dim} (time it with the default --kv bf16)")
    try:
        resolve_group(kv.format, kv.format, kv.group, kv.residual, head_dim)
    except InputError as err:
        raise InputError(f"--kv {kv.format}: {str(err).replace('quant.group: ', '--kv-group: ')}") from None


def config_model(name: str, device: torch.device | str = "cpu", seed: int = 0,
                 dtype: torch.dtype = torch.bfloat16) -> Any:
    """A LlamaForCausalLM of a named shape (CONFIGS) with random weights, built in `dtype` on `device`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if name not in CONFIGS:
        raise InputError(f"unknown --config {name!r}: use one of {', '.join(CONFIGS)}")
    config = LlamaConfig(**CONFIGS[name])
    prev = torch.get_default_dtype()
    torch.manual_seed(seed)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(prev)
    model.name_or_path = f"random {name}"
    return model.eval()


def cache_kwarg(model: Any) -> str:
    """The keyword a model's forward takes its cache by (`cache` in transformers >= 5.2x, `past_key_values`)."""
    return next(iter(with_cache(model, None)))


def static_cache(model: Any, batch: int, length: int) -> Any:
    from transformers import StaticCache

    first = next(model.parameters())
    try:
        return StaticCache(config=model.config, max_cache_len=length)
    except TypeError:  # transformers 4.x
        return StaticCache(config=model.config, max_batch_size=batch, max_cache_len=length, device=first.device,
                           dtype=first.dtype)


def _set_length(cache: Any, n: int) -> None:
    for layer in cache.layers:
        if not hasattr(layer, "cumulative_length"):
            raise InputError("this transformers version's StaticCache has no cumulative_length; nmx bench decode "
                             "needs transformers >= 5")
        layer.cumulative_length.fill_(n)


def _fill_random(cache: Any, seed: int) -> None:
    g = torch.Generator(device=cache.layers[0].keys.device).manual_seed(seed)
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            t.copy_(torch.randn(t.shape, generator=g, device=t.device, dtype=torch.float32).to(t.dtype))


def bytes_per_step(model: Any, batch: int, cache_len: int, kv_bytes: int | None = None) -> dict[str, int]:
    """Bytes one decode step must read: linear weights (packed or bf16), the LM head, the norms, and the
    static cache's keys and values (all of its slots: transformers attends over the whole static cache), or
    `kv_bytes` (a packed cache: what its kernels read)."""
    from nmx.kernels.convert import PackedLinearModule

    linear = head = 0
    for name, m in model.named_modules():
        if isinstance(m, PackedLinearModule):
            linear += m.packed.nbytes
        elif isinstance(m, torch.nn.Linear):
            b = m.weight.numel() * m.weight.element_size()
            if name.endswith("lm_head"):
                head += b
            else:
                linear += b
    cfg = model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = cfg.num_hidden_layers * 2 * batch * heads * cache_len * head_dim * 2 if kv_bytes is None else kv_bytes
    return {"linear_weights": linear, "lm_head": head, "kv_cache": kv, "total": linear + head + kv}


def decode_step(fn: Any, cache: Any, ids: torch.Tensor, kw: dict) -> Callable[[], torch.Tensor]:
    """One greedy decode step of `ids` [batch, 1] through a StaticCache, capturable in a CUDA graph: the
    attention mask is a 4-D bool [batch, 1, 1, slots] made on the device from the cache's length (slots up to
    and including the new token's), which transformers passes to attention as it is. (A 2-D mask would be
    checked with a host sync, impossible inside a capture; no mask at all would let the token attend to every
    slot of the static cache, filled or not.) Returns the step's logits; the argmax becomes the next ids."""
    length = cache.layers[0].max_cache_len
    pos = cache.layers[0].cumulative_length
    slots = torch.arange(length, device=ids.device)
    batch = ids.shape[0]

    def step() -> torch.Tensor:
        mask = (slots <= pos).view(1, 1, 1, length).expand(batch, 1, 1, length)
        logits = fn(ids, attention_mask=mask, **kw).logits
        ids.copy_(logits[:, -1].argmax(-1, keepdim=True))
        return logits

    return step


def packed_decode_cache(model: Any, batch: int, length: int, context: int, kv: KVSpec, seed: int = 0) -> Any:
    """A graph-mode packed KV cache (kv_hf.packed_cache, static=True) for `length` tokens per sequence, filled
    with `context` tokens of random bf16 keys and values (appended as one prefill per layer: quantized chunk by
    chunk, the window as a prefill leaves it). On the CPU its layers run the reference twin (backend "torch")."""
    from nmx.kernels.kv_hf import packed_cache

    device = next(model.parameters()).device
    cache = packed_cache(model, batch, length, kv.format, kv.format, kv.group, kv.residual,
                         backend="auto" if device.type == "cuda" else "torch", static=True)
    g = torch.Generator(device=device).manual_seed(seed)
    for store in cache.stores():
        shape = (batch, store.kv_heads, context, store.head_dim)
        k = torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(torch.bfloat16)
        v = torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(torch.bfloat16)
        store.append(k, v)
        del k, v
    return cache


def _rewind(cache: Any, stores: list, n: int) -> None:
    """Set a StaticCache's length, or every graph-mode packed layer's device counter, to n tokens."""
    if not stores:
        _set_length(cache, n)
    for store in stores:
        store.lengths.fill_(n)


def _packed_step(fn: Any, ids: torch.Tensor, kw: dict) -> Callable[[], torch.Tensor]:
    """One greedy decode step through a graph-mode packed cache. The 4-D all-visible mask is passed through by
    transformers as it is (so nothing sizes a mask from the cache's count on the host) and ignored by the packed
    decode attention, which reads the count from the device."""
    mask = torch.ones(ids.shape[0], 1, 1, 1, dtype=torch.bool, device=ids.device)

    def step() -> torch.Tensor:
        logits = fn(ids, attention_mask=mask, **kw).logits
        ids.copy_(logits[:, -1].argmax(-1, keepdim=True))
        return logits

    return step


#: kernel classes of a step's profile: the first class whose pattern is in a kernel's (lower-case) name
KERNEL_CLASSES = (
    ("nmx linear", ("_gemv1_kernel", "_dot_kernel", "_tc_kernel")),
    ("nmx KV attention", ("_kv_decode_kernel", "_kv_reduce_kernel", "_kv_static_append_kernel", "_kv_int_pack")),
    # before the GEMMs: cuDNN's fused attention kernels carry sm80_ / sm90_ in their names too
    ("SDPA attention", ("sdpa", "flash", "attention", "fmha", "softmax", "cudnn")),
    ("cuBLAS / cuSPARSELt GEMM", ("gemm", "gemv", "cutlass", "xmma", "nvjet", "cublas", "sm90_", "sm80_")),
    ("norm", ("norm",)),
    ("copy / fill", ("copy", "memcpy", "memset", "fill", "cat", "index")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "triton_poi", "triton_per", "reduce")),
)


def kernel_class(name: str) -> str:
    low = name.lower()
    return next((c for c, pats in KERNEL_CLASSES if any(p in low for p in pats)), "other")


def profile_step(run: Callable[[], Any], steps: int, cuda: bool) -> dict:
    """What one decode step spends its time on: `steps` calls of `run` (a graph replay or an eager step) under
    torch.profiler; on a GPU the CUDA kernels (name, calls and device time per step, by class), on the CPU the
    top-level operators (a smoke run: CPU time, not a measurement)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run()
        if cuda:
            torch.cuda.synchronize()
    by_name: dict[str, list[float]] = {}
    for e in prof.events():
        if cuda and e.device_type == DeviceType.CUDA:
            t = e.time_range.elapsed_us() * 1e-6
        elif not cuda and e.device_type == DeviceType.CPU and e.cpu_parent is None:
            t = e.cpu_time_total * 1e-6
        else:
            continue
        got = by_name.setdefault(e.name, [0, 0.0])
        got[0] += 1
        got[1] += t
    rows = sorted(({"name": n[:120], "class": kernel_class(n), "calls_per_step": c / steps, "s_per_step": t / steps}
                   for n, (c, t) in by_name.items()), key=lambda r: -r["s_per_step"])
    classes: dict[str, dict[str, float]] = {}
    for r in rows:
        c = classes.setdefault(r["class"], {"calls_per_step": 0.0, "s_per_step": 0.0})
        c["calls_per_step"] += r["calls_per_step"]
        c["s_per_step"] += r["s_per_step"]
    return {"what": "CUDA kernels" if cuda else "CPU operators (smoke run)", "steps": steps,
            "calls_per_step": sum(r["calls_per_step"] for r in rows),
            "busy_s_per_step": sum(r["s_per_step"] for r in rows),
            "by_class": dict(sorted(classes.items(), key=lambda kv: -kv[1]["s_per_step"])), "top": rows[:30]}


@torch.no_grad()
def decode_speed(model: Any, batch: int, context: int, tokens: int, mode: str = "auto", seed: int = 0,
                 kv: KVSpec | None = None, profile: int = 0) -> dict:
    """Time `tokens` decode steps of `batch` sequences at `context` tokens (module docstring); `kv`: through a
    graph-mode packed KV cache instead of the StaticCache; `profile` > 0: then profile that many more steps
    (`profile_step`) into the record's "profile"."""
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    mode = ("graph" if cuda else "eager") if mode == "auto" else mode
    if not cuda and mode != "eager":
        raise InputError(f"mode {mode!r} needs a CUDA GPU; the CPU runs eager steps only")
    if kv is not None:
        check_kv_model(model.config, kv)
    from nmx.kernels.convert import PATHS

    PATHS.clear()
    length = context + tokens + SLACK
    g = torch.Generator(device=device).manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, 1), device=device, generator=g)
    uncompiled = kv is not None and mode == "compile"
    if uncompiled:
        mode = "graph"
    previous_attention = getattr(model.config, "_attn_implementation", None)
    try:
        return _decode_speed(model, batch, context, tokens, mode, seed, kv, length, ids, cuda, uncompiled, profile)
    finally:
        if kv is not None and getattr(model.config, "_attn_implementation", None) != previous_attention:
            model.set_attn_implementation(previous_attention)


def _decode_speed(model: Any, batch: int, context: int, tokens: int, mode: str, seed: int, kv: KVSpec | None,
                  length: int, ids: torch.Tensor, cuda: bool, uncompiled: bool, profile: int = 0) -> dict:
    from nmx.kernels.convert import PATHS

    if kv is None:
        cache = static_cache(model, batch, length)
        kw = {cache_kwarg(model): cache, "use_cache": True, "logits_to_keep": 1}
        model(ids, **kw)  # initializes the cache's layers
        _fill_random(cache, seed)
        stores = []
    else:
        cache = packed_decode_cache(model, batch, length, context, kv, seed)
        kw = {cache_kwarg(model): cache, "use_cache": True, "logits_to_keep": 1}
        stores = cache.stores()

    fn = model
    compile_s = 0.0
    if mode == "compile":
        t = time.perf_counter()
        fn = torch.compile(model, dynamic=False)  # graph breaks allowed: the capture records the kernels anyway
    step = decode_step(fn, cache, ids, kw) if kv is None else _packed_step(fn, ids, kw)
    _rewind(cache, stores, context)
    for _ in range(3):  # warm-up: compiles (compile mode), Triton JIT, the dispatcher's caches
        step()
    if mode == "compile":
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - t
    graph, graph_error, static_logits = None, None, None
    if mode in ("graph", "compile"):
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_logits = step()
        except Exception as err:  # noqa: BLE001 - timed eagerly instead, and said so
            graph, graph_error = None, f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
            log.warning("decode bench: the CUDA graph capture failed (%s); timing eager steps", graph_error)
            torch.cuda.synchronize()
            mode = f"{mode} capture failed: eager" if mode == "graph" else "compile (no graph)"
    _rewind(cache, stores, context)
    run = graph.replay if graph is not None else step
    last = None
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(tokens):
            last = run()
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1e3
    else:
        t0 = time.perf_counter()
        for _ in range(tokens):
            last = run()
        seconds = time.perf_counter() - t0
    last = static_logits if graph is not None else last
    if kv is None:
        done = int(cache.layers[0].cumulative_length) if hasattr(cache.layers[0], "cumulative_length") else None
    else:  # every layer, every program's counter (an overflow would show as capacity + 1)
        counts = torch.stack([s.lengths for s in stores])
        done = int(counts[0, 0]) if bool((counts == counts[0, 0]).all()) else f"unequal {counts.unique().tolist()}"
    if done is not None and done != context + tokens:
        raise RuntimeError(f"the cache advanced to {done} tokens, expected {context + tokens}")
    if kv is None:
        nbytes = bytes_per_step(model, batch, length)
        kv_info = {"format": "bf16", "cache": "StaticCache", "slots_read": length}
    else:  # the mean over the timed steps of what the kernels read (step i attends over context + i + 1 tokens)
        per_layer = sum(stores[0].nbytes_at(context + i + 1) for i in range(tokens)) / tokens
        nbytes = bytes_per_step(model, batch, length, round(per_layer * len(stores)))
        s0 = stores[0]
        kv_info = {"format": kv.format, "cache": "PackedKVCache (graph mode)", "group": s0.group,
                   "residual": s0.residual, "backend": s0.backend, "capacity": s0.capacity,
                   "static_cache_kv_bytes_per_step": bytes_per_step(model, batch, length)["kv_cache"]}
    ms = 1e3 * seconds / tokens
    prof = None
    if profile:  # after the timing and its checks; the cache is rewound so the profiled steps fit in it
        _rewind(cache, stores, context)
        prof = profile_step(run, min(profile, tokens), cuda)
        prof["idle_s_per_step"] = ms / 1e3 - prof["busy_s_per_step"] if cuda else None
    if uncompiled:
        mode = f"{mode} (packed KV: not compiled)"
    out = {"batch": batch, "context": context, "tokens": tokens, "mode": mode, "kv": kv_info,
           "kv_bytes_per_step": nbytes["kv_cache"], "ms_per_step": ms,
           "tokens_per_s": batch * tokens / seconds, "bytes_per_step": nbytes,
           "read_GBps": nbytes["total"] / (ms / 1e3) / 1e9, "compile_s": compile_s or None, "graph_error": graph_error,
           "finite": bool(torch.isfinite(last).all()),  # the last step's logits
           "paths": dict(PATHS)}  # converted layers' eager calls per dispatcher path (warm-up steps)
    if prof is not None:
        out["profile"] = prof
    del graph, cache, fn, kw, stores, step
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def copy_bandwidth(device: torch.device | str = "cuda", nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read and written (10 copies of 1 GiB)."""
    a = torch.empty(nbytes, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        b.copy_(a)
    end.record()
    torch.cuda.synchronize()
    return 2 * 10 * nbytes / (start.elapsed_time(end) / 1e3)


# ---- the models being compared -------------------------------------------------------------------------


def _prune_by_magnitude(model: Any, recipe: Any) -> dict[str, torch.Tensor]:
    """The recipe's sparsity pattern applied by magnitude (random-weight models: nothing to calibrate on)."""
    from nmx.model.layers import match_linears
    from nmx.sparsity.methods import get_method
    from nmx.sparsity.patterns import parse_pattern

    masks = {}
    if recipe.sparsity is None:
        return masks
    method, pattern = get_method("magnitude"), parse_pattern(recipe.sparsity.pattern)
    with torch.no_grad():
        for name, lin in match_linears(model, recipe.sparsity.targets).items():
            new, mask = method.prune(lin.weight.detach().float(), pattern, None)
            lin.weight.copy_(new.to(lin.weight.dtype))
            masks[name] = mask
    return masks


def fake_compress(model: Any, fmt: str | None, pattern: str | None) -> dict[str, torch.Tensor]:
    """What `nmx run` leaves, on a random-weight model: the default targets pruned 2:4 by magnitude (when
    `pattern`) and their weights fake-quantized to `fmt` in place; returns the masks by layer name."""
    from nmx.model.layers import DEFAULT_TARGETS, match_linears
    from nmx.quant import quantize_weights
    from nmx.sparsity.masks import nm_mask

    masks = {}
    with torch.no_grad():
        for name, lin in match_linears(model, list(DEFAULT_TARGETS)).items():
            if pattern:
                masks[name] = nm_mask(lin.weight.abs(), 2, 4)
                lin.weight.mul_(masks[name])
    if fmt:
        quantize_weights(match_linears(model, list(DEFAULT_TARGETS)), fmt)
    return masks


def quick_recipe(weights: str | None = None, pattern: str | None = None) -> Any:
    """A recipe of just a weight format and an N:M pattern (magnitude pruning), e.g. for `--weights`."""
    from nmx.kernels.layout import kernel_format
    from nmx.recipe import load_recipe

    kernel_format(weights)  # one line for a format the kernels do not read
    base: dict[str, Any] = {"kernels": True}
    if weights:
        base["quantization"] = {"weights": weights}
    if pattern:
        base["sparsity"] = {"method": "magnitude", "pattern": pattern}
    return load_recipe(base=base)


def compress_random(model: Any, recipe: Any, backend: str = "auto") -> dict:
    """Prune a random-weight model by magnitude to the recipe's pattern, then pack it with its format."""
    from nmx.kernels.convert import convert, recipe_layers

    masks = _prune_by_magnitude(model, recipe)
    return convert(model, layers=recipe_layers(model, recipe), masks=masks, backend=backend).as_dict()


def check_run_dir(run_dir: Path) -> dict:
    """The result.json of a `nmx run --save-model` folder; InputError if it is not one (checked before any work)."""
    from nmx.io import read_json

    run_dir = Path(run_dir)
    if not (run_dir / "result.json").is_file():
        raise InputError(f"{run_dir} is not an nmx run folder (no result.json); make one with `nmx run RECIPE "
                         "--out DIR --save-model`")
    result = read_json(run_dir / "result.json", "run result")
    if not (run_dir / "model.safetensors").is_file():
        raise InputError(f"{run_dir} has no model.safetensors (weights and masks): rerun `nmx run` with --save-model")
    if not isinstance(result.get("recipe"), dict):
        raise InputError(f"{run_dir}/result.json holds no recipe")
    return result


def load_run(run_dir: Path, device: torch.device | str, model_spec: str | None = None) -> tuple[Any, Any, dict]:
    """(loaded model with the run's saved weights, its recipe, its masks) from a `nmx run --save-model` folder."""
    from safetensors import safe_open

    from nmx.formats.packing import unpack_bits
    from nmx.model.sources import load_model
    from nmx.recipe import load_recipe

    run_dir = Path(run_dir)
    result = check_run_dir(run_dir)
    weights = run_dir / "model.safetensors"
    recipe = load_recipe(base=result["recipe"])
    loaded = load_model(model_spec or recipe.model, str(device) if torch.device(device).type == "cuda" else "cpu")
    state, masks = {}, {}
    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata() or {}
        shapes = json.loads(meta.get("nmx_masks", "{}"))
        for key in f.keys():
            t = f.get_tensor(key)
            if key.startswith("nmx_mask."):
                name = key[len("nmx_mask."):]
                shape = shapes.get(name)
                if shape is None:
                    raise InputError(f"{weights}: mask {name} has no shape in the file's metadata")
                masks[name] = unpack_bits(t, 1, math.prod(shape)).reshape(shape).to(torch.bool)
            else:
                state[key] = t
    if recipe.sparsity is not None and not masks:
        raise InputError(f"{weights} holds no masks, but the run pruned ({recipe.sparsity.pattern}); rerun `nmx run` "
                         "with --save-model")
    missing, unexpected = loaded.model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise InputError(f"{weights} does not fit {recipe.model}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return loaded, recipe, masks


def bench_decode(model: str | None = None, config: str | None = None, recipe: Any = None,
                 run_dir: Path | None = None, batches: tuple[int, ...] = (1, 16), context: int = 2048,
                 tokens: int = 128, mode: str = "auto", allow_cpu: bool = False, backend: str = "auto",
                 progress: Callable[[str], None] | None = None, kv: str | None = None, kv_group: int | None = None,
                 kv_residual: int = 128, profile: int = 0, small_ops: str = "hf") -> dict:
    """Dense bf16 and compressed, side by side in one run (module docstring), each also through the graph-mode
    packed KV cache when `kv` is a quantized format; `profile` > 0: every row also profiles that many steps (what
    the step's kernels are and how long they run: `profile_step`); `small_ops` "fused" times every model after
    `fuse_small_ops` (one kernel per RMSNorm, SiLU x up and rotary embedding), "both" each model both ways, the
    fused rows named "... fused-ops". Returns the record."""
    say = progress or (lambda msg: log.info("%s", msg))
    if sum(x is not None for x in (model, config, run_dir)) == 0:
        raise InputError("give --model M, --config NAME or --run RUN_DIR")
    if model is not None and config is not None:
        raise InputError("give --model or --config, not both")
    if recipe is not None and run_dir is not None:
        raise InputError("give --recipe or --run, not both")
    if min(batches, default=0) < 1 or context < 1 or tokens < 1:
        raise InputError("--batch values, --context and --tokens must be at least 1")
    if isinstance(profile, bool) or not isinstance(profile, int) or profile < 0:
        raise InputError(f"--profile takes a number of steps >= 0, got {profile!r}")
    if mode not in MODES:
        raise InputError(f"unknown --mode {mode!r}: use one of {', '.join(MODES)}")
    if small_ops not in SMALL_OPS:
        raise InputError(f"unknown --small-ops {small_ops!r}: use one of {', '.join(SMALL_OPS)}")
    if config is not None and config not in CONFIGS:
        raise InputError(f"unknown --config {config!r}: use one of {', '.join(CONFIGS)}")
    if run_dir is not None and config is not None:
        raise InputError("--run folders hold a real model's weights: use --model (or nothing), not --config")
    kv_choice = kv_spec(kv, kv_group, kv_residual)
    if kv_choice is not None and config is not None:
        from transformers import LlamaConfig

        check_kv_model(LlamaConfig(**CONFIGS[config]), kv_choice)
    run_result = check_run_dir(Path(run_dir)) if run_dir is not None else None
    if recipe is not None and recipe.quantization is not None and recipe.quantization.weights:
        from nmx.kernels.layout import kernel_format

        kernel_format(recipe.quantization.weights)
    cuda = torch.cuda.is_available()
    if not cuda and not allow_cpu:
        raise InputError("nmx bench decode times CUDA-graph decoding and needs a CUDA GPU (torch sees none); "
                         "--allow-cpu runs a slow eager smoke run through the CPU twin instead")
    if not cuda:
        log.warning("nmx bench decode on the CPU: eager steps through the kernels' reference twin; a smoke run, "
                    "not a measurement")
    device = torch.device("cuda" if cuda else "cpu")
    record: dict[str, Any] = {"device": torch.cuda.get_device_name() if cuda else "cpu", "context": context,
                              "tokens": tokens, "batches": list(batches),
                              "kv": None if kv_choice is None else {"format": kv_choice.format,
                                                                    "group": kv_choice.group,
                                                                    "residual": kv_choice.residual},
                              "rows": []}
    if cuda:
        record["copy_GBps"] = copy_bandwidth(device) / 1e9

    def time_all(m: Any, variant: str) -> None:
        from nmx.kernels.small_ops import fuse_small_ops, unfuse_small_ops

        check_kv_model(m.config, kv_choice)
        for ops in ("hf", "fused") if small_ops == "both" else (small_ops,):
            if ops == "fused":
                record.setdefault("fused_small_ops", fuse_small_ops(m))
            for cache_kv in (None, kv_choice) if kv_choice is not None else (None,):
                name = variant if cache_kv is None else f"{variant} {cache_kv.name}"
                name += " fused-ops" if small_ops == "both" and ops == "fused" else ""
                for b in batches:
                    say(f"timing {name}, batch {b}")
                    row = {"variant": name, "weights": variant, "small_ops": ops,
                           **decode_speed(m, b, context, tokens, mode, kv=cache_kv, profile=profile)}
                    if cuda:
                        row["fraction_of_copy_bandwidth"] = row["read_GBps"] / record["copy_GBps"]
                    record["rows"].append(row)
            if ops == "fused":
                unfuse_small_ops(m)  # the next model (a config's is this one, converted) starts as loaded

    # dense bf16
    if config is not None:
        say(f"building a random {config} in bf16 on {device}")
        dense = config_model(config, device)
        record["model"] = f"random {config}"
    else:
        from nmx.model.sources import load_model

        spec = model if model is not None else run_result["recipe"].get("model")
        say(f"loading {spec}")
        dense = load_model(spec, "cuda" if cuda else "cpu").model.to(torch.bfloat16)
        record["model"] = spec
    time_all(dense, "bf16")

    def speedups() -> None:  # against the first bf16 row of each batch (transformers' own ops where timed)
        base: dict[int, float] = {}
        for r in record["rows"]:
            if r["weights"] == "bf16" and r["variant"] in ("bf16", "bf16 fused-ops"):
                base.setdefault(r["batch"], r["tokens_per_s"])
        for r in record["rows"]:
            r["speedup_vs_bf16"] = r["tokens_per_s"] / base[r["batch"]]

    # compressed
    if recipe is None and run_dir is None:
        record["compressed"] = None
        if kv_choice is not None:
            speedups()
        return record
    if config is not None:
        say("compressing (magnitude pruning, packing)")
        record["conversion"] = compress_random(dense, recipe, backend)
        compressed = dense
    else:
        del dense
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        from nmx.kernels.convert import convert_recipe

        if run_dir is not None:
            say(f"loading the run {run_dir}")
            loaded, recipe, masks = load_run(Path(run_dir), device, model)
        else:
            from nmx.model.compress import compress
            from nmx.model.sources import load_model

            say("compressing with nmx (the recipe's method)")
            loaded = load_model(model, "cuda" if cuda else "cpu")
            masks = compress(loaded, recipe)["masks"]
        record["conversion"] = convert_recipe(loaded.model, recipe, masks, backend).as_dict()
        compressed = loaded.model.to(torch.bfloat16)
    sp, qz = recipe.sparsity, recipe.quantization
    record["compressed"] = {"weights": qz.weights if qz else None, "pattern": sp.pattern if sp else None,
                            "method": ("magnitude (random weights)" if config else sp.method) if sp else None,
                            "recipe_model": recipe.model, "from_run": str(run_dir) if run_dir else None}
    time_all(compressed, "compressed")
    speedups()
    return record


def write_record(record: dict, out: Path | None) -> None:
    if out is not None:
        from nmx.io import write_json_atomic

        write_json_atomic(Path(out), record)
