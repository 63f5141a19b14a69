"""Issue 3 acceptance runs: SmolLM2-135M, WikiText-2 test (full split, context 2048).

Sparsity: dense; magnitude / Wanda / SparseGPT at 50 % unstructured, 4:8 and 2:4 (calibration
128 x 2048 tokens of Tiny Shakespeare, seed 0); Wanda at 1:4 and 3:4. Formats: weights in
mxfp4, nvfp4, int4_g128, mxfp8_e4m3; W4A4 (mxfp4 / nvfp4 on activations too); 2:4 Wanda with
mxfp4 / nvfp4 weights.

Unstructured 50 % follows each paper's comparison group: magnitude per layer (Wanda's baseline),
Wanda per output row, SparseGPT per layer within its column blocks.

    NMX_DATA_DIR=../shared/data python benchmarks/acceptance_issue3.py --part sparsity --out DIR
    NMX_DATA_DIR=../shared/data python benchmarks/acceptance_issue3.py --part formats --out DIR

Each finished configuration is appended to DIR/results.jsonl at once (a cut-off run keeps what
it did); DIR/table.md is rewritten after each. `--max-windows` / `--calib-*` shrink the run.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from nmx.model.sources import load_model
from nmx.recipe import load_recipe
from nmx.runner import run

SPARSITY = [("dense", {})]
for _method, _unstructured in (("magnitude", "0.5:layer"), ("wanda", "0.5"), ("sparsegpt", "0.5:layer")):
    for _pattern in (_unstructured, "4:8", "2:4"):
        SPARSITY.append((f"{_method} {_pattern}", {"sparsity": {"method": _method, "pattern": _pattern}}))
SPARSITY += [(f"wanda {p}", {"sparsity": {"method": "wanda", "pattern": p}}) for p in ("1:4", "3:4")]

FORMATS = [(f"weights {f}", {"quantization": {"weights": f}}) for f in ("mxfp4", "nvfp4", "int4_g128", "mxfp8_e4m3")]
FORMATS += [(f"W4A4 {f}", {"quantization": {"weights": f, "activations": f}}) for f in ("mxfp4", "nvfp4")]
FORMATS += [(f"wanda 2:4 + {f}", {"sparsity": {"method": "wanda", "pattern": "2:4"}, "quantization": {"weights": f}})
            for f in ("mxfp4", "nvfp4")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("sparsity", "formats", "all"), default="all")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--calib-seq-len", type=int, default=2048)
    ap.add_argument("--only", nargs="*", default=None, help="run only these configuration labels")
    args = ap.parse_args()

    configs = {"sparsity": SPARSITY, "formats": FORMATS, "all": SPARSITY + FORMATS}[args.part]
    if args.only:
        configs = [c for c in configs if c[0] in args.only]
    base = {
        "device": args.device,
        "calibration": {"text": "tinyshakespeare", "samples": args.calib_samples, "seq_len": args.calib_seq_len,
                        "seed": 0},
        "evaluation": {"text": "wikitext-2", "seq_len": 2048, "max_windows": args.max_windows},
    }
    recipes = [(label, load_recipe(base={**base, **extra})) for label, extra in configs]
    loaded = load_model("smollm2-135m", args.device)
    pristine = copy.deepcopy(loaded.model)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, recipe in recipes:
        loaded.model = copy.deepcopy(pristine)
        t0 = time.perf_counter()
        r = run(recipe, loaded=loaded)
        row = {"config": label, "perplexity": r["perplexity"], "eval_tokens": r["eval_tokens"],
               "weight_sparsity": r["weight_sparsity"], "bits_per_weight": r["bits_per_weight"],
               "masks_valid": r["masks_valid"], "wall_s": time.perf_counter() - t0, "compress_s": r["compress_s"],
               "protocol": r["protocol"], "recipe": r["recipe"], "versions": r["versions"],
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
        rows.append(row)
        with open(args.out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        (args.out / "table.md").write_text(table(rows))
        print(f"{label}: ppl {row['perplexity']:.3f}, {row['bits_per_weight']:.3f} bits/weight, "
              f"sparsity {row['weight_sparsity']:.4f}, {row['wall_s']:.1f} s", flush=True)
    print(table(rows))


def table(rows: list[dict]) -> str:
    lines = ["| configuration | perplexity | bits/weight | weight sparsity | masks valid | tokens | wall s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['perplexity']:.3f} | {r['bits_per_weight']:.3f} | {r['weight_sparsity']:.4f} | "
              f"{r['masks_valid']} | {r['eval_tokens']} | {r['wall_s']:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
