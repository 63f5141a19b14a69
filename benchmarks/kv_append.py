"""Check, then time, the appendable packed KV cache (nmx.kernels.kv_cache.PackedKVCache) on one CUDA GPU.

    PYTHONPATH=$PWD/src python3 benchmarks/kv_append.py --out benchmarks/results/kv_append_h100.json \
        [--step-ms 6.41]
    PYTHONPATH=$PWD/src python3 benchmarks/kv_append.py --cpu-dry-run --out /tmp/kv_append_dry.json

1. Check, before any timing (exit 1 and no timing if anything fails): caches fed a prefill then single
   tokens, ragged chunks, or one token at a time equal `pack_kv` (torch path, same device) of all their
   tokens bit for bit at every step (int4 and int2 through the Triton pack; mxfp4, fp8_e4m3 through torch;
   bf16); the Triton decode-attention kernel on the view equals it on `pack_kv`'s result bit for bit, and
   the reference twin (float32, on the CPU) within 1e-2 relative. B=2, 8 KV heads, D=128.
   Graph mode (int4, int2, bf16; a prefill then single tokens, and one token at a time): the append kernel's
   cache equals `pack_kv` bit for bit at every step (on a GPU this is the only check of its in-program barriers:
   the interpreter runs a program's threads in lockstep), every counter slot holds the token count, and the
   fixed-grid decode kernel equals the view's kernel bit for bit with one split each, and the twin within 1e-2
   with its own (capacity-sized) splits.
2. Timing, a Llama-2-7B-shaped model's KV: 32 layers, each its own cache (so the layers' bytes do not
   sit in the L2 together), B in {1, 16}, 32 KV heads = 32 query heads, D=128, context 2048 (prefilled:
   1920 tokens quantized, 128 in the bf16 window), int4 keys and values, G=32, residual 128:
   - append: one decode step = one one-token append into each of the 32 layers; G consecutive steps
     include exactly one flush per layer (the window reaches residual + G), then each cache is rewound by
     G tokens (two ints: the next group rewrites the same slots, at the same context). Per token per layer
     = time of the G steps / (G x 32). "eager": CUDA events around each step, launches from Python (what an
     uncaptured decode step pays, host gaps included), median over groups; also the flush step and a plain
     step alone. "graph": the G steps captured in one CUDA graph and replayed (GPU work only: what the
     append would cost inside a captured step, had it a capturable form; see kv_cache.py).
   - attention: `decode_attention` (Triton kernel) on each layer's view, 32 layers in a row, eager
     (events) and graph-replayed; per layer = / 32.
   - the append as a fraction of 32 x (append + attention), eager and graph, and, with --step-ms (a
     measured decode step, e.g. from `nmx bench decode`), of that step: 32 x append / step.
   - graph mode (PackedKVCache(static=True): the token count on the device, one append kernel per layer per
     step whose flush only runs on the step that fills the window): the same G steps into 32 fresh graph-mode
     caches, eager (events per step; each group ends with a host check of the counters and a rewind) and
     captured: one graph of G steps x 32 layers plus a rewind of each layer's counter by G (so replays repeat the
     same slots and one flush per layer), minus a graph of the same 32 counter updates alone
     ("static_append"); and the fixed-grid decode attention (`decode_attention_static`, grid sized for the
     capacity, lengths read on the device), graph-replayed over the 32 layers ("graph_static_per_layer_s").
Writes JSON to --out (a file, or DIR/kv_append.json for a folder) and prints a markdown table.

--cpu-dry-run runs the same code, tiny (2 layers, B in {1, 2}, 2 KV heads, D=64, context 96, G=16,
residual 32; the check on B=1, 2 heads, D=64, G=32), on the CPU with TRITON_INTERPRET=1 (set here) and
time.perf_counter in place of CUDA events, no graphs: a check of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

FULL = dict(layers=32, batches=(1, 16), kv_heads=32, q_heads=32, head_dim=128, context=2048, group=32, residual=128,
            groups=20, attention_reps=50, check=dict(batch=2, kv_heads=8, head_dim=128, group=32, residual=64))
DRY = dict(layers=2, batches=(1, 2), kv_heads=2, q_heads=4, head_dim=64, context=96, group=16, residual=32,
           groups=2, attention_reps=2, check=dict(batch=1, kv_heads=2, head_dim=64, group=32, residual=24))
CHECK_FORMATS = [("int4", "int4"), ("int2", "int2"), ("mxfp4", "mxfp4"), ("fp8_e4m3", "fp8_e4m3"), ("bf16", "bf16")]
GRAPH_FORMATS = ["int4", "int2", "bf16"]  # what graph mode (PackedKVCache(static=True)) takes


class Clock:
    """CUDA events on a GPU, time.perf_counter on the CPU (dry run)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def seconds(self, a, b) -> float:
        if self.cuda:
            b.synchronize()
            return a.elapsed_time(b) * 1e-3
        return b - a

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def random_kv(shape, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    k = torch.randn(shape, generator=g, device=device, dtype=torch.float32) * 2
    v = torch.randn(shape, generator=g, device=device, dtype=torch.float32)
    return k.to(torch.bfloat16), v.to(torch.bfloat16)


# ---- 1. correctness ------------------------------------------------------------------------------------


def same_bytes(got, want) -> str | None:
    """None if the two PackedKVs hold the same layout and bytes, else what differs."""
    for name in ("tokens", "quantized", "group", "residual"):
        if getattr(got, name) != getattr(want, name):
            return f"{name} {getattr(got, name)} != {getattr(want, name)}"
    for name in ("k_codes", "k_scales", "v_codes", "v_scales", "k_rest", "v_rest"):
        a, b = getattr(got, name), getattr(want, name)
        if (a is None) != (b is None):
            return f"{name} presence"
        if a is None:
            continue
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{name} {a.dtype} {tuple(a.shape)} != {b.dtype} {tuple(b.shape)}"
        if a.dtype in (torch.float16, torch.bfloat16):
            a, b = a.view(torch.int16), b.view(torch.int16)
        if not torch.equal(a, b):
            return f"{name} bytes"
    return None


def check(device: torch.device, cfg: dict) -> list[dict]:
    from nmx.kernels.kv_attention import decode_attention, decode_attention_reference
    from nmx.kernels.kv_cache import PackedKVCache
    from nmx.kernels.kv_layout import pack_kv

    b, h, d, g, res = cfg["batch"], cfg["kv_heads"], cfg["head_dim"], cfg["group"], cfg["residual"]
    schedules = {"prefill_then_tokens": [3 * g + res + 5] + [1] * (2 * g + 3),
                 "ragged": [1, 2 * g + 1, 1, 1, g - 3, 3 * g, 2, 1, g + 1],
                 "one_at_a_time": [1] * (res + 3 * g + 2)}
    rows = []
    for kf, vf in CHECK_FORMATS:
        for name, schedule in schedules.items():
            total = sum(schedule)
            k, v = random_kv((b, h, total, d), device, seed=total + len(kf))
            row = {"formats": f"{kf}/{vf}", "schedule": name, "tokens": total}
            try:
                cache = PackedKVCache(b, h, d, total + g, kf, vf, g, res, device)
                row["backend"] = cache.backend
                lo, bad = 0, None
                for n in schedule:
                    cache.append(k[:, :, lo:lo + n], v[:, :, lo:lo + n])
                    lo += n
                    bad = same_bytes(cache.view(), pack_kv(k[:, :, :lo], v[:, :, :lo], kf, vf, g, res,
                                                           backend="torch"))
                    if bad:
                        bad = f"after {lo} tokens: {bad}"
                        break
                if bad is None:
                    packed = pack_kv(k, v, kf, vf, g, res, backend="torch")
                    q = torch.randn(b, 2 * h, d, device=device).to(torch.bfloat16)
                    out_view = decode_attention(q, cache.view(), backend="triton")
                    out_packed = decode_attention(q, packed, backend="triton")
                    ref = decode_attention_reference(q.cpu(), packed.to("cpu")).float()
                    row["rel_err_vs_twin"] = float((out_view.float().cpu() - ref).norm() / ref.norm())
                    if not torch.equal(out_view, out_packed):
                        bad = "decode attention on the view differs from it on pack_kv's result"
                    elif not row["rel_err_vs_twin"] < 1e-2:
                        bad = f"decode attention {row['rel_err_vs_twin']:.2e} from the twin"
                row["ok"], row["error"] = bad is None, bad
            except Exception as err:  # noqa: BLE001 -- recorded, and the run stops before timing
                row["ok"], row["error"] = False, f"{type(err).__name__}: {err}"
                traceback.print_exc()
            rows.append(row)
            print(f"check {row['formats']:18s} {name:20s} {'ok' if row['ok'] else 'FAIL ' + str(row['error'])}",
                  flush=True)
    for kf in GRAPH_FORMATS:
        for name in ("prefill_then_tokens", "one_at_a_time"):
            row = {"formats": f"{kf}/{kf}", "schedule": name, "mode": "graph (static=True)"}
            try:
                row["tokens"], bad = check_graph(device, cfg, kf, schedules[name])
                row["ok"], row["error"] = bad is None, bad
            except Exception as err:  # noqa: BLE001 -- recorded, and the run stops before timing
                row["ok"], row["error"] = False, f"{type(err).__name__}: {err}"
                traceback.print_exc()
            rows.append(row)
            print(f"check {row['formats']:18s} {name:20s} graph mode "
                  f"{'ok' if row['ok'] else 'FAIL ' + str(row['error'])}", flush=True)
    return rows


def check_graph(device: torch.device, cfg: dict, kf: str, schedule: list[int]) -> tuple[int, str | None]:
    """A graph-mode cache fed `schedule` (prefills through the eager path, single tokens through the append
    kernel) against pack_kv at every step, its counters, and its fixed-grid decode attention."""
    from nmx.kernels.kv_attention import decode_attention, decode_attention_reference, decode_attention_static
    from nmx.kernels.kv_cache import PackedKVCache
    from nmx.kernels.kv_layout import pack_kv

    b, h, d, res = cfg["batch"], cfg["kv_heads"], cfg["head_dim"], cfg["residual"]
    g = None if kf == "bf16" else cfg["group"]
    total = sum(schedule)
    k, v = random_kv((b, h, total, d), device, seed=total + 7)
    cache = PackedKVCache(b, h, d, total + 3, kf, kf, g, res, device, static=True)
    lo = 0
    for n in schedule:
        cache.append(k[:, :, lo:lo + n], v[:, :, lo:lo + n])
        lo += n
        if not bool((cache.lengths == lo).all()):
            return total, f"after {lo} tokens: counters {cache.lengths.unique().tolist()}"
        bad = same_bytes(cache.view(), pack_kv(k[:, :, :lo], v[:, :, :lo], kf, kf, g, res, backend="torch"))
        if bad:
            return total, f"after {lo} tokens: {bad}"
    q = torch.randn(b, 2 * h, d, device=device).to(torch.bfloat16)
    view = cache.view()
    one = decode_attention_static(q, cache, config={"num_splits": 1})
    if not torch.equal(one, decode_attention(q, view, backend="triton", config={"num_splits": 1})):
        return total, "the fixed-grid decode attention differs from the view's (one split each)"
    out = decode_attention_static(q, cache)
    ref = decode_attention_reference(q.cpu(), view.to("cpu")).float()
    err = float((out.float().cpu() - ref).norm() / ref.norm())
    if not err < 1e-2:
        return total, f"the fixed-grid decode attention is {err:.2e} from the twin"
    return total, None


# ---- 2. timing -----------------------------------------------------------------------------------------


def build_layers(cfg: dict, batch: int, device: torch.device, static: bool = False) -> list:
    from nmx.kernels.kv_cache import PackedKVCache

    g = cfg["group"]
    caches = []
    for i in range(cfg["layers"]):
        c = PackedKVCache(batch, cfg["kv_heads"], cfg["head_dim"], cfg["context"] + g, "int4", "int4", g,
                          cfg["residual"], device, static=static)
        k, v = random_kv((batch, cfg["kv_heads"], cfg["context"], cfg["head_dim"]), device, seed=i)
        c.append(k, v)
        caches.append(c)
    return caches


def rewind(caches: list, group: int) -> None:
    """Back by one group of G tokens after G appends (one flush each): the same counts, the same slots next time."""
    for c in caches:
        c.tokens -= group
        c.quantized -= group


def time_appends(caches: list, new_k: list, new_v: list, cfg: dict, clock: Clock) -> dict:
    g, layers = cfg["group"], len(caches)
    start = [(c.tokens, c.quantized) for c in caches]
    group_s, flush_s, plain_s, host_s = [], [], [], []
    for rep in range(cfg["groups"] + 2):  # two warm-up groups (Triton compiles on the first flush)
        clock.sync()
        h0 = time.perf_counter()
        marks = [clock.mark()]
        for i in range(g):
            for c in caches:
                c.append(new_k[i], new_v[i])
            marks.append(clock.mark())
        clock.sync()
        h1 = time.perf_counter()
        flushed = [c.quantized - q0 for c, (_, q0) in zip(caches, start, strict=True)]
        if flushed != [g] * layers:
            raise RuntimeError(f"a group of {g} appends flushed {flushed} tokens, not {g} per layer")
        rewind(caches, g)
        if rep < 2:
            continue
        steps = [clock.seconds(a, b) for a, b in zip(marks[:-1], marks[1:], strict=True)]
        group_s.append(clock.seconds(marks[0], marks[-1]))
        flush_s.append(steps[-1])  # the window reaches residual + G on the G-th append of the group
        plain_s.append(statistics.median(steps[:-1]))
        host_s.append(h1 - h0)
    per = g * layers
    out = {"eager_per_token_per_layer_s": statistics.median(group_s) / per,
           "eager_host_per_token_per_layer_s": statistics.median(host_s) / per,
           "eager_plain_step_all_layers_s": statistics.median(plain_s),
           "eager_flush_step_all_layers_s": statistics.median(flush_s)}
    if clock.cuda:
        out["graph_per_token_per_layer_s"] = graph_appends(caches, new_k, new_v, g) / per
    return out


def graph_appends(caches: list, new_k: list, new_v: list, group: int, reps: int = 50) -> float:
    """Seconds of G steps of appends into every layer, captured once and replayed (the same slots each time)."""
    from nmx.kernels.timing import event_time

    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph, stream=stream):
            for i in range(group):
                for c in caches:
                    c.append(new_k[i], new_v[i])
    torch.cuda.current_stream().wait_stream(stream)
    rewind(caches, group)
    t = event_time(graph.replay, reps)
    del graph
    return t


def time_static_appends(caches: list, new_k: list, new_v: list, cfg: dict, clock: Clock) -> dict:
    """Graph-mode caches: G one-token steps into every layer (one append kernel each, the flush inside it on the
    G-th), eager by events per step, then rewound (the counter set back by G: the same slots next time)."""
    g, layers = cfg["group"], len(caches)
    start = caches[0].tokens
    group_s, flush_s, plain_s = [], [], []
    for rep in range(cfg["groups"] + 2):  # two warm-up groups (Triton compiles on the first launch)
        clock.sync()
        marks = [clock.mark()]
        for i in range(g):
            for c in caches:
                c.append(new_k[i], new_v[i])
            marks.append(clock.mark())
        clock.sync()
        counts = {int(x) for c in caches for x in c.lengths.unique().tolist()}
        if counts != {start + g}:
            raise RuntimeError(f"graph mode: a group of {g} appends left the counters at {sorted(counts)}, not "
                               f"{start + g}")
        for c in caches:
            c.tokens = start
        if rep < 2:
            continue
        steps = [clock.seconds(a, b) for a, b in zip(marks[:-1], marks[1:], strict=True)]
        group_s.append(clock.seconds(marks[0], marks[-1]))
        flush_s.append(max(steps))  # the step that fills the window (which one depends on the context)
        plain_s.append(statistics.median(steps))
    out = {"eager_per_token_per_layer_s": statistics.median(group_s) / (g * layers),
           "eager_plain_step_all_layers_s": statistics.median(plain_s),
           "eager_flush_step_all_layers_s": statistics.median(flush_s)}
    if clock.cuda:
        from nmx.kernels.timing import graph_time

        def group():
            for i in range(g):
                for c in caches:
                    c.append(new_k[i], new_v[i])
            for c in caches:
                c.lengths.sub_(g)

        def counters_only():  # the same 32 small launches, no state change
            for c in caches:
                c.lengths.sub_(0)

        both = graph_time(group, reps=cfg["attention_reps"])
        rewinds = graph_time(counters_only, reps=cfg["attention_reps"])
        out["graph_per_token_per_layer_s"] = (both - rewinds) / (g * layers)
        out["graph_counter_rewinds_s"] = rewinds
    return out


def time_attention(caches: list, q: torch.Tensor, cfg: dict, clock: Clock) -> dict:
    from nmx.kernels.kv_attention import decode_attention

    views = [c.view() for c in caches]

    def all_layers():
        for view in views:
            decode_attention(q, view, backend="triton")

    all_layers()  # compile
    runs = []
    for _ in range(cfg["attention_reps"]):
        clock.sync()
        a = clock.mark()
        all_layers()
        runs.append(clock.seconds(a, clock.mark()))
    out = {"eager_per_layer_s": statistics.median(runs) / len(views)}
    if clock.cuda:
        from nmx.kernels.timing import graph_time

        out["graph_per_layer_s"] = graph_time(all_layers, reps=cfg["attention_reps"]) / len(views)
    return out


def time_static_attention(caches: list, q: torch.Tensor, cfg: dict) -> float:
    """Seconds per layer of the fixed-grid decode attention over graph-mode caches, graph-replayed."""
    from nmx.kernels.kv_attention import decode_attention_static
    from nmx.kernels.timing import graph_time

    return graph_time(lambda: [decode_attention_static(q, c) for c in caches], reps=cfg["attention_reps"],
                      calls=len(caches))


def timing(cfg: dict, device: torch.device, step_ms: float | None) -> list[dict]:
    clock = Clock(device)
    rows = []
    for batch in cfg["batches"]:
        caches = build_layers(cfg, batch, device)
        shape = (batch, cfg["kv_heads"], 1, cfg["head_dim"])
        new = [random_kv(shape, device, seed=1000 + i) for i in range(cfg["group"])]
        append = time_appends(caches, [k for k, _ in new], [v for _, v in new], cfg, clock)
        pack_backend = caches[0].backend
        q = torch.randn(batch, cfg["q_heads"], cfg["head_dim"], device=device).to(torch.bfloat16)
        attention = time_attention(caches, q, cfg, clock)
        view = caches[0].view()
        del caches
        if device.type == "cuda":
            torch.cuda.empty_cache()
        static = build_layers(cfg, batch, device, static=True)
        static_append = time_static_appends(static, [k for k, _ in new], [v for _, v in new], cfg, clock)
        if clock.cuda:
            attention["graph_static_per_layer_s"] = time_static_attention(static, q, cfg)
        del static
        row = {"batch": batch, "layers": cfg["layers"], "kv_heads": cfg["kv_heads"], "q_heads": cfg["q_heads"],
               "head_dim": cfg["head_dim"], "context": cfg["context"], "group": cfg["group"],
               "residual": cfg["residual"], "formats": "int4/int4", "quantized_tokens": view.quantized,
               "bf16_tokens": view.rest, "cache_bytes_per_layer": view.nbytes, "pack_backend": pack_backend,
               "append": append, "static_append": static_append, "attention": attention}
        layers = cfg["layers"]
        for kind in ("eager", "graph"):
            a, t = append.get(f"{kind}_per_token_per_layer_s"), attention.get(f"{kind}_per_layer_s")
            if a is None or t is None:
                continue
            row[f"{kind}_append_fraction_of_append_plus_attention"] = a / (a + t)
            row[f"{kind}_layers_append_plus_attention_ms"] = layers * (a + t) * 1e3
            if step_ms:
                row[f"{kind}_append_fraction_of_step"] = layers * a * 1e3 / step_ms
        a, t = static_append.get("graph_per_token_per_layer_s"), attention.get("graph_static_per_layer_s")
        if a is not None and t is not None:
            row["graph_static_append_fraction_of_append_plus_attention"] = a / (a + t)
            row["graph_static_layers_append_plus_attention_ms"] = layers * (a + t) * 1e3
            if step_ms:
                row["graph_static_append_fraction_of_step"] = layers * a * 1e3 / step_ms
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| B | append/token/layer eager (host) | append graph | flush step / plain step (all layers) | "
             "attention/layer eager | graph | append share eager | graph | of step | graph mode: append graph | "
             "attention graph | append share |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    us = lambda s: "-" if s is None else f"{s * 1e6:.2f} us"  # noqa: E731
    pct = lambda f: "-" if f is None else f"{100 * f:.2f} %"  # noqa: E731
    for r in rows:
        a, t = r["append"], r["attention"]
        lines.append(f"| {r['batch']} | {us(a['eager_per_token_per_layer_s'])} "
                     f"({us(a['eager_host_per_token_per_layer_s'])}) | {us(a.get('graph_per_token_per_layer_s'))} | "
                     f"{us(a['eager_flush_step_all_layers_s'])} / {us(a['eager_plain_step_all_layers_s'])} | "
                     f"{us(t['eager_per_layer_s'])} | {us(t.get('graph_per_layer_s'))} | "
                     f"{pct(r.get('eager_append_fraction_of_append_plus_attention'))} | "
                     f"{pct(r.get('graph_append_fraction_of_append_plus_attention'))} | "
                     f"{pct(r.get('graph_append_fraction_of_step', r.get('eager_append_fraction_of_step')))} | "
                     f"{us(r['static_append'].get('graph_per_token_per_layer_s'))} | "
                     f"{us(t.get('graph_static_per_layer_s'))} | "
                     f"{pct(r.get('graph_static_append_fraction_of_append_plus_attention'))} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file to write (or a folder: FOLDER/kv_append.json)")
    ap.add_argument("--step-ms", type=float, default=None, help="a measured decode step (ms) to compare the append to")
    ap.add_argument("--cpu-dry-run", action="store_true", help="the same code, tiny, on the CPU (TRITON_INTERPRET=1)")
    args = ap.parse_args()
    out = Path(args.out)
    if out.is_dir():
        out = out / "kv_append.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.cpu_dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (nmx imports it lazily)
        device, cfg = torch.device("cpu"), DRY
    else:
        if not torch.cuda.is_available():
            print("kv_append.py: no CUDA GPU; use --cpu-dry-run to check the script on the CPU", file=sys.stderr)
            return 2
        device, cfg = torch.device("cuda"), FULL
    import triton

    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({platform.processor()})",
               "dry_run": args.cpu_dry_run, "torch": torch.__version__, "triton": triton.__version__,
               "step_ms": args.step_ms, "config": {k: v for k, v in cfg.items() if k != "check"}}
    save = lambda: out.write_text(json.dumps(results, indent=1, default=str))  # noqa: E731
    t0 = time.time()
    results["check"] = check(device, cfg["check"])
    results["check_ok"] = all(r["ok"] for r in results["check"])
    save()
    if not results["check_ok"]:
        print("kv_append.py: the appendable cache does not match pack_kv; no timing (see the JSON)", file=sys.stderr)
        return 1
    results["timing"] = timing(cfg, device, args.step_ms)
    results["wall_s"] = time.time() - t0
    save()
    print(table(results["timing"]))
    print(f"wrote {out} ({results['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
