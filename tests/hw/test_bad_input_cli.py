"""Every bad input to `nmx hw ...` and `nmx explore` is one line on stderr and exit code 2, through
the real CLI entry point: unusable files (missing, a folder, not UTF-8, random bytes, malformed,
nested too deeply, the wrong top level, empty, truncated), garbage result folders, a bad --plot
(refused before any work, nothing left behind), Timeloop files in the wrong order, and numbers
or names that make no sense. Plus: every option of these commands has help text."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import typer

from tests.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "hw"
ACCEL = EXAMPLES / "dense_16x16_ws.yaml"
RESULT = ROOT / "benchmarks" / "results" / "kv_study_runs" / "weights_kv" / "result.json"
CASE = Path(os.environ.get("NMX_DATA_DIR", "/nonexistent")) / "hw" / "sparseloop-eyeriss-v2"
TL_FILES = (CASE / "arch" / "arch.yaml", CASE / "arch" / "sparse_opts.yaml", CASE / "workload" / "uniform" / "L07.yaml",
            CASE / "mappings" / "L07.yaml")
needs_case = pytest.mark.skipif(not CASE.is_dir(), reason="the Timeloop case needs NMX_DATA_DIR")


def one_line_error(args, capsys, monkeypatch, phrase=None, codes=(2,)):
    """Run `nmx ARGS`; assert a one-line `error:` on stderr (or success where `codes` allows it)
    and never a traceback. Returns (code, stdout, stderr)."""
    code, out, err = run_cli([str(a) for a in args], capsys, monkeypatch)
    assert code in codes, (code, err[-2000:])
    assert "Traceback" not in err
    if code == 2:
        assert err.startswith("error: ") and err.count("\n") == 1, err
        if phrase is not None:
            assert phrase in err, err
    return code, out, err


# ---------------------------------------------------------------- garbage files


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


#: name -> the bytes of a file that no reader can use (None: the path is missing or a folder)
GARBAGE = {
    "missing": None,
    "folder": None,
    "latin1": b"name: caf\xe9\n",
    "random": random.Random(0).randbytes(600),
    "malformed": b"a: [1, 2\n  b: {\n",
    # deeper than Python's recursion limit (kept small: PyYAML takes seconds on "[" * 10000)
    "deep_map": ("a:\n" + "".join("  " * i + "a:\n" for i in range(1, 1000))).encode(),
    "deep_flow": b"[" * 1200,
    "top_list": b"- 1\n- 2\n",
    "top_scalar": b"42\n",
    "empty": b"",
    "binary_nul": b"\x00\x01\x02name: x\n",
}


def _garbage_file(tmp_path: Path, kind: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / kind / name
    if kind == "missing":
        return path
    if kind == "folder":
        path.mkdir(parents=True)
        return path
    return _write(path, GARBAGE[kind])


def _yaml_entry_points(bad: Path) -> dict[str, list]:
    """Every command that reads one YAML file of the person's, with `bad` in its place."""
    tl = [str(p) for p in TL_FILES]
    points = {
        "accel --accel": ["hw", "accel", "--accel", bad, "--gemm", "1,64,64"],
        "accel --workload": ["hw", "accel", "--accel", ACCEL, "--workload", bad],
        "explore --accel": ["explore", "--accel", bad, "--sweep", "pe_rows=8,16", "--gemm", "1,64,64"],
        "explore --workload": ["explore", "--accel", ACCEL, "--sweep", "pe_rows=8", "--workload", bad],
    }
    if CASE.is_dir():
        for i, slot in enumerate(("ARCH", "SPARSE_OPTS", "WORKLOAD", "MAPPING")):
            points[f"timeloop {slot}"] = ["hw", "timeloop", *tl[:i], bad, *tl[i + 1:]]
        points["timeloop --ert"] = ["hw", "timeloop", *tl, "--ert", bad]
        points["timeloop --art"] = ["hw", "timeloop", *tl, "--art", bad]
    return points


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_an_unusable_yaml_file_is_one_line_naming_it(tmp_path, capsys, monkeypatch, kind):
    bad = _garbage_file(tmp_path, kind)
    for label, args in _yaml_entry_points(bad).items():
        _, _, err = one_line_error(args, capsys, monkeypatch)
        assert bad.name in err or str(bad) in err, (label, err)


CSV_GARBAGE = {
    "missing": (None, "not found"),
    "folder": (None, "folder"),
    "latin1": (b"m,n,k\n1,2,3\xe9\n", "not UTF-8"),
    "random": (random.Random(1).randbytes(400), "not UTF-8"),
    "nul": (b"m,n,k\n1,64\x00,64\n", "NUL"),
    "missing_cells": (b"m,n,k\n1,64\n", "fewer cells"),
    "extra_cells": (b"m,n,k\n1,64,64,7\n", "more cells"),
    "no_rows": (b"m,n,k\n", "no rows"),
    "empty": (b"", "no rows"),
    "not_a_number": (b"m,n,k\n1,x,64\n", "must be an integer"),
    "wrong_columns": (b"a,b\n1,2\n", "lacks the column"),
    "zero": (b"m,n,k\n0,64,64\n", "positive integer"),
}


@pytest.mark.parametrize("kind", list(CSV_GARBAGE))
def test_an_unusable_shapes_csv_is_one_line(tmp_path, capsys, monkeypatch, kind):
    data, phrase = CSV_GARBAGE[kind]
    path = tmp_path / "shapes.csv"
    if kind == "folder":
        path.mkdir()
    elif data is not None:
        path.write_bytes(data)
    _, _, err = one_line_error(["hw", "gemm", "--shapes", path], capsys, monkeypatch, phrase)
    assert "shapes.csv" in err
    if kind in ("latin1", "random", "nul", "missing_cells", "extra_cells"):
        att = data.replace(b"m,n,k", b"batch,q_len,kv_len,heads_q,heads_kv").replace(b"1,64,64,7", b"1,1,8,4,2,7")
        path.write_bytes(att)
        one_line_error(["hw", "attention", "--shapes", path], capsys, monkeypatch)


# ---------------------------------------------------------------- result folders


def _result(folder: Path, obj) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return folder


def _good_result() -> dict:
    return {"perplexity": 20.0, "layers": {},
            "recipe": {"model": "smollm2-135m", "sparsity": {"pattern": "2:4"}, "quantization": {"weights": "int8"}},
            "model": {"name": "smollm2-135m"}}


def _edit(**changes) -> dict:
    r = _good_result()
    for key, value in changes.items():
        node = r
        *parents, last = key.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return r


RESULTS = {
    "a list": ("[1, 2]", "top level"),
    "not JSON": ("nope {", "not valid JSON"),
    "truncated": (json.dumps(_good_result())[:40], "not valid JSON"),
    "no recipe": ({"perplexity": 3.0}, "'recipe'"),
    "recipe a list": (_edit(recipe=[1]), "'recipe' must be a mapping"),
    "sparsity a string": (_edit(recipe__sparsity="2:4"), "'sparsity' must be a mapping"),
    "pattern a number": (_edit(recipe__sparsity={"pattern": 24}), "'pattern' must be a string"),
    "unknown pattern": (_edit(recipe__sparsity={"pattern": "5:4"}), "5:4"),
    "unknown format": (_edit(recipe__quantization={"weights": "int99"}), "int99"),
    "model a list": (_edit(recipe__model=["smollm2-135m"]), "'model' must be a string"),
    "unknown model": (_edit(recipe__model="gpt-17"), "gpt-17"),
    "shape lacks keys": (_edit(model={"shape": {"hidden": 64}}), "'intermediate'"),
    "shape a string value": (_edit(model={"shape": {"name": "x", "hidden": "a", "intermediate": 1, "layers": 1,
                                                     "heads_q": 1, "heads_kv": 1, "head_dim": 1, "vocab": 1}}),
                             "hidden must be a positive integer"),
    "layer bits a string": (_edit(layers={"model.layers.0.mlp.up_proj": {"bits": "many"}}), "'bits'"),
    "layer bits missing": (_edit(layers={"model.layers.0.mlp.up_proj": {}}), "'bits'"),
    "layers a list": (_edit(layers=[1]), "'layers' must be a mapping"),
    "kv_cache a list": (_edit(recipe__kv_cache=[1]), "'kv_cache' must be a mapping"),
    "kv format a number": (_edit(recipe__kv_cache={"quant": {"format": 4}}), "'format' must be a string"),
    "targets not strings": (_edit(recipe__sparsity={"pattern": "2:4", "targets": [1]}), "targets"),
}


@pytest.mark.parametrize("case", list(RESULTS))
def test_a_garbage_result_folder_is_one_line_naming_it(tmp_path, capsys, monkeypatch, case):
    obj, phrase = RESULTS[case]
    folder = _result(tmp_path / "run", obj)
    for args in (["hw", "llm", "--model", folder],
                 ["hw", "accel", "--accel", ACCEL, "--model", folder],
                 ["explore", "--accel", ACCEL, "--results", folder]):
        _, _, err = one_line_error(args, capsys, monkeypatch, phrase)
        assert "run" in err


@pytest.mark.parametrize("case,phrase", [("folder", "is a folder"), ("no perplexity", "'perplexity'"),
                                         ("perplexity a string", "'perplexity' must be a number"),
                                         ("not a folder", "not a folder"), ("missing", "no such folder")])
def test_explore_results_needs_real_result_folders(tmp_path, capsys, monkeypatch, case, phrase):
    folder = tmp_path / "run"
    if case == "folder":
        (folder / "result.json").mkdir(parents=True)
    elif case == "no perplexity":
        r = _good_result()
        del r["perplexity"]
        _result(folder, r)
    elif case == "perplexity a string":
        _result(folder, _edit(perplexity="low"))
    elif case == "not a folder":
        folder.write_text("x")
    one_line_error(["explore", "--accel", ACCEL, "--results", folder], capsys, monkeypatch, phrase)


def test_a_cache_that_evicts_without_quantizing_is_priced_at_its_budget(tmp_path, capsys, monkeypatch):
    """Issue 13: an evict-only cache once crashed `nmx hw llm` (AttributeError), then was priced as if it
    held every token. Oracle: 512 kept of 2048 tokens seen, at the dense bf16 bytes per token."""
    evict = {"quant": None, "evict": {"method": "streaming", "sinks": 4, "budget": 512}, "merge": None}
    folder = _result(tmp_path / "evict", _edit(recipe__kv_cache=evict))
    dense = _result(tmp_path / "dense", _good_result())
    code, out, err = one_line_error(["hw", "llm", "--model", folder, "--json"], capsys, monkeypatch, codes=(0,))
    cost = json.loads(out)
    _, out_dense, _ = one_line_error(["hw", "llm", "--model", dense, "--json"], capsys, monkeypatch, codes=(0,))
    assert "KV bf16" in cost["compression"] and "streaming eviction to 512 tokens" in cost["compression"]
    dense_cost = json.loads(out_dense)
    assert cost["context"] == dense_cost["context"] == 2048
    assert cost["kv_bytes_per_token"] == dense_cost["kv_bytes_per_token"] * 512 / 2048
    assert cost["kv_kept_tokens"] == 512 and cost["kv_cache_bytes"] == 512 * dense_cost["kv_bytes_per_token"]
    one_line_error(["hw", "accel", "--accel", ACCEL, "--model", folder], capsys, monkeypatch, codes=(0,))
    code, out, _ = one_line_error(["explore", "--accel", ACCEL, "--results", folder, "--json"], capsys, monkeypatch,
                                  codes=(0,))
    assert json.loads(out)["rows"][0]["perplexity"] == 20.0


def test_a_real_result_folder_still_works(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "weights_kv"
    folder.mkdir()
    shutil.copy(RESULT, folder / "result.json")
    _, out, _ = one_line_error(["hw", "llm", "--model", folder, "--json"], capsys, monkeypatch, codes=(0,))
    assert "int4_asym" in json.loads(out)["compression"]


def test_a_garbage_model_config_is_one_line(tmp_path, capsys, monkeypatch):
    for content, phrase in (("[1]", "top level"), ("{", "not valid JSON"), ('{"hidden_size": 64}', "has no"),
                            ('{"hidden_size": "a", "num_attention_heads": 2}', "must be a whole number"),
                            ('{"hidden_size": 64, "num_attention_heads": 0, "intermediate_size": 1, '
                             '"num_hidden_layers": 1, "vocab_size": 1}', "at least 1")):
        cfg = _write(tmp_path / "cfg" / "config.json", content)
        _, _, err = one_line_error(["hw", "llm", "--model", cfg.parent], capsys, monkeypatch, phrase)
        assert "config.json" in err


# ---------------------------------------------------------------- --plot


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


PLOTS = {
    "unknown suffix": ("out.xyz", "must end in one of"),
    "no suffix": ("out", "must end in one of"),
    "a folder": ("fig.png", "is a folder"),
    "parent is a file": ("afile/fig.png", "is a file"),
    "read-only place": ("/proc/nmx-test-fig.png", "cannot write"),
}


@pytest.mark.parametrize("case", list(PLOTS))
@pytest.mark.parametrize("mode", ["sweep", "results"])
def test_a_bad_plot_is_refused_before_any_work_and_leaves_nothing(tmp_path, capsys, monkeypatch, case, mode):
    name, phrase = PLOTS[case]
    if name.startswith("/proc") and not Path("/proc").is_dir():
        pytest.skip("needs /proc")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if case == "a folder":
        (out_dir / "fig.png").mkdir()
    if case == "parent is a file":
        (out_dir / "afile").write_text("x")
    before = _listing(out_dir)
    plot = name if name.startswith("/") else out_dir / name
    run_dir = _result(tmp_path / "run", _good_result())

    # before any work: the accelerator file is not even read
    import nmx.hw.accel_spec as accel_spec

    def no_work(*a, **k):
        raise AssertionError("work started before --plot was checked")

    monkeypatch.setattr(accel_spec, "load_accel", no_work)
    args = (["explore", "--accel", ACCEL, "--sweep", "pe_rows=8,16", "--gemm", "1,64,64"] if mode == "sweep"
            else ["explore", "--accel", ACCEL, "--results", run_dir])
    one_line_error([*args, "--plot", plot], capsys, monkeypatch, phrase)
    assert _listing(out_dir) == before


def test_a_failed_run_leaves_no_plot_and_no_temporary_file(tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # the work fails after the --plot file was decided: nothing is left behind
    one_line_error(["explore", "--accel", ACCEL, "--sweep", "nosuchkey=1", "--gemm", "1,64,64",
                    "--plot", out_dir / "front.png"], capsys, monkeypatch, "nosuchkey")
    assert _listing(out_dir) == []
    # a figure that fails while being written leaves neither a partial file nor a temporary one
    from matplotlib.figure import Figure

    def broken_savefig(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError):
        run_cli(["explore", "--accel", str(ACCEL), "--sweep", "pe_rows=8,16", "--gemm", "1,64,64",
                 "--plot", str(out_dir / "front.png")], capsys, monkeypatch)
    assert _listing(out_dir) == []
    monkeypatch.undo()
    code, _, err = run_cli(["explore", "--accel", str(ACCEL), "--sweep", "pe_rows=8,16", "--gemm", "1,64,64",
                            "--plot", str(out_dir / "front.svg")], capsys, monkeypatch)
    assert code == 0, err
    assert _listing(out_dir) == ["front.svg"]


# ---------------------------------------------------------------- Timeloop argument order


@needs_case
@pytest.mark.parametrize("order,phrase", [
    ((3, 1, 2, 0), "argument 1 (ARCH) {3} looks like a mapping file"),
    ((1, 0, 2, 3), "argument 1 (ARCH) {1} looks like a sparse options file"),
    ((0, 2, 1, 3), "argument 2 (SPARSE_OPTS) {2} looks like a workload file"),
    ((0, 1, 3, 2), "argument 3 (WORKLOAD) {3} looks like a mapping file"),
    ((0, 1, 2, 0), "argument 4 (MAPPING) {0} looks like an architecture file"),
])
def test_timeloop_files_in_the_wrong_order_are_named(capsys, monkeypatch, order, phrase):
    args = [TL_FILES[i] for i in order]
    _, _, err = one_line_error(["hw", "timeloop", *args], capsys, monkeypatch,
                               phrase.format(*[str(p) for p in TL_FILES]))
    assert "the order is ARCH SPARSE_OPTS WORKLOAD MAPPING" in err


@needs_case
def test_timeloop_tables_in_the_wrong_option(capsys, monkeypatch):
    one_line_error(["hw", "timeloop", *TL_FILES, "--ert", CASE / "arch" / "ART.yaml"], capsys, monkeypatch,
                   "--ert")
    one_line_error(["hw", "timeloop", *TL_FILES, "--art", TL_FILES[0]], capsys, monkeypatch,
                   "looks like an architecture file")


# ---------------------------------------------------------------- numbers and names


GEMM = ["hw", "gemm", "--m", "1", "--n", "64", "--k", "64"]
ATT = ["hw", "attention", "--batch", "1", "--kv-len", "64", "--heads-q", "4", "--heads-kv", "2"]
XA = ["explore", "--accel", ACCEL]
AC = ["hw", "accel", "--accel", ACCEL]
BIG = "99999999999999999999"

NUMBERS = [
    (["hw", "gemm", "--m", "0", "--n", "1", "--k", "1"], "m (--m) must be a positive integer"),
    (["hw", "gemm", "--m", "-5", "--n", "1", "--k", "1"], "m (--m) must be a positive integer"),
    (["hw", "gemm", "--m", "1", "--n", BIG, "--k", "1"], "beyond what nmx models"),
    ([*GEMM, "--target", "nosuch"], "unknown GPU target"),
    ([*GEMM, "--dtype", "nosuch"], "unknown dtype"),
    ([*GEMM, "--sparsity", "5:4"], "5:4"),
    ([*GEMM, "--weights", "nosuch"], "unknown format"),
    ([*GEMM, "--impl", "nosuch"], "unknown implementation"),
    (["hw", "gemm", "--m", "1"], "give --m, --n and --k"),
    ([*ATT[:2], "--batch", "0", *ATT[4:]], "batch must be a positive integer"),
    ([*ATT[:6], "--heads-q", "3", "--heads-kv", "2"], "not a multiple"),
    ([*ATT, "--head-dim", "0"], "head_dim must be a positive integer"),
    ([*ATT, "--q-len", "100"], "longer than kv_len"),
    ([*ATT, "--kv-format", "nosuch"], "unknown format"),
    ([*ATT[:2], "--batch", BIG, *ATT[4:]], "beyond what nmx models"),
    (["hw", "llm", "--batch", "0"], "--batch"),
    (["hw", "llm", "--context", "-1"], "--context"),
    (["hw", "llm", "--tokens", "0"], "--tokens"),
    (["hw", "llm", "--context", BIG], "beyond what nmx models"),
    (["hw", "llm", "--phase", "train"], "--phase"),
    (["hw", "llm", "--model", "gpt-17"], "unknown model"),
    (["hw", "llm", "--target", "nosuch"], "unknown GPU target"),
    (["hw", "llm", "--kv-format", "nosuch"], "unknown format"),
    (["hw", "llm", "--sparsity", "nosuch"], "sparsity pattern"),
    ([*AC, "--gemm", "0,1,1"], "positive integer"),
    ([*AC, "--gemm", f"{BIG},1,1"], "beyond what nmx models"),
    ([*AC, "--gemm", "1,1"], "three integers"),
    ([*AC, "--gemm", "1,64,64", "--act-density", "0"], "act_density"),
    ([*AC, "--gemm", "1,64,64", "--act-density", "nan"], "act_density"),
    ([*AC, "--model", "llama-2-7b", "--batch", BIG], "beyond what nmx models"),
    ([*AC, "--model", "llama-2-7b", "--phase", "train"], "--phase"),
    ([*AC], "give exactly one of"),
    (["hw", "nonlinear", "--row-len", "0"], "--row-len"),
    (["hw", "nonlinear", "--seed", BIG], "--seed"),
    (["hw", "nonlinear", "--seed", "-1"], "--seed"),
    (["hw", "nonlinear", "--tech", "3"], "not tabulated"),
    (["hw", "nonlinear", "--function", "nosuch"], "unknown function"),
    (["hw", "nonlinear", "--methods", "lut0"], "lut0"),
    ([*XA, "--top", "0", "--sweep", "pe_rows=8,16", "--gemm", "1,64,64"], "--top"),
    ([*XA, "--top", "-3", "--sweep", "pe_rows=8,16", "--gemm", "1,64,64"], "--top"),
    ([*XA, "--sweep", "pe_rows=", "--gemm", "1,64,64"], "at least one value"),
    ([*XA, "--sweep", "pe_rows", "--gemm", "1,64,64"], "KEY=v1,v2"),
    ([*XA, "--sweep", "nosuchkey=1", "--gemm", "1,64,64"], "unknown parameter"),
    ([*XA, "--sweep", "pe_rows=0", "--gemm", "1,64,64"], "must be > 0"),
    ([*XA, "--sweep", "pe_rows=2.5", "--gemm", "1,64,64"], "whole number"),
    ([*XA, "--sweep", "pe_rows=nan", "--gemm", "1,64,64"], "finite"),
    ([*XA, "--sweep", "clock_ghz=inf", "--gemm", "1,64,64"], "finite"),
    ([*XA, "--sweep", f"pe_rows={BIG}", "--gemm", "1,64,64"], "beyond what the model takes"),
    ([*XA, "--sweep", "tile_m=-1", "--gemm", "1,64,64"], ">= 0"),
    ([*XA, "--sweep", "nm=5:4", "--gemm", "1,64,64"], "not a valid value"),
    ([*XA, "--sweep", "tech_nm=3", "--gemm", "1,64,64"], "not tabulated"),
    ([*XA, *(f"--sweep={k}=" + ",".join(str(v) for v in range(1, 11))
             for k in ("pe_rows", "pe_cols", "lanes", "glb_kb", "dram_gb_s", "clock_ghz", "act_bits", "reg_bytes")),
      "--gemm", "1,64,64"], "design points"),
    ([*XA, "--sweep", "pe_rows=8", "--model", "llama-2-7b", "--batch", "0"], "--batch"),
    ([*XA, "--sweep", "pe_rows=8", "--model", "llama-2-7b", "--phase", "train"], "--phase"),
]


@pytest.mark.parametrize("args,phrase", NUMBERS, ids=[" ".join(map(str, a[2:]))[:60] for a, _ in NUMBERS])
def test_numbers_and_names_that_make_no_sense_are_one_line(capsys, monkeypatch, args, phrase):
    one_line_error(args, capsys, monkeypatch, phrase)


# ---------------------------------------------------------------- generated garbage (property style)


def _truncations(path: Path, n: int = 7) -> list[tuple[str, bytes]]:
    data = path.read_bytes()
    rng = random.Random(path.name)
    cuts = sorted({0, 1, len(data) // 2, len(data) - 1, *(rng.randrange(len(data)) for _ in range(n - 4))})
    return [(f"{path.name}[:{c}]", data[:c]) for c in cuts]


def _generated(path: Path) -> list[tuple[str, bytes]]:
    out = []
    for seed in range(3):
        rng = random.Random(seed)
        out.append((f"random{seed}", rng.randbytes(rng.randrange(1, 900))))
    if path.suffix == ".json":
        out.append(("deep_json", b'{"a":' * 5000))
    elif path.suffix == ".yaml":  # (every YAML reader also meets both deep kinds in the test above)
        out.append(("deep_flow", GARBAGE["deep_flow"]))
    return out + _truncations(path)


def _entry_points(tmp_path: Path) -> dict[str, tuple[Path, Path, list]]:
    """name -> (the valid file the garbage is made from, where the garbage goes, the command)."""
    points = {
        "hw accel --accel": (ACCEL, tmp_path / "accel.yaml", ["hw", "accel", "--accel", "{}", "--gemm", "1,64,64"]),
        "hw accel --workload": (EXAMPLES / "workload_q_proj_decode.yaml", tmp_path / "work.yaml",
                                ["hw", "accel", "--accel", ACCEL, "--workload", "{}"]),
        "explore --accel": (EXAMPLES / "uspe_16x16_ws.yaml", tmp_path / "uspe.yaml",
                            ["explore", "--accel", "{}", "--sweep", "pe_rows=8,16", "--gemm", "1,64,64"]),
        "hw gemm --shapes": (None, tmp_path / "shapes.csv", ["hw", "gemm", "--shapes", "{}"]),
        "hw llm --model": (RESULT, tmp_path / "run" / "result.json", ["hw", "llm", "--model", "{parent}"]),
        "explore --results": (RESULT, tmp_path / "run" / "result.json",
                              ["explore", "--accel", ACCEL, "--results", "{parent}"]),
    }
    if CASE.is_dir():
        for i, slot in enumerate(("ARCH", "SPARSE_OPTS", "WORKLOAD", "MAPPING")):
            args = ["hw", "timeloop", *TL_FILES[:i], "{}", *TL_FILES[i + 1:]]
            # the workload's real-data files are found beside it: keep the garbage in its own folder
            points[f"hw timeloop {slot}"] = (TL_FILES[i], tmp_path / slot / TL_FILES[i].name, args)
        points["hw timeloop --ert"] = (CASE / "arch" / "ERT.yaml", tmp_path / "ERT.yaml",
                                       ["hw", "timeloop", *TL_FILES, "--ert", "{}"])
    return points


POINTS = ["hw accel --accel", "hw accel --workload", "explore --accel", "hw gemm --shapes", "hw llm --model",
          "explore --results", "hw timeloop ARCH", "hw timeloop SPARSE_OPTS", "hw timeloop WORKLOAD",
          "hw timeloop MAPPING", "hw timeloop --ert"]


@pytest.mark.parametrize("point", POINTS)
def test_generated_garbage_never_gives_a_traceback(tmp_path, capsys, monkeypatch, point):
    points = _entry_points(tmp_path)
    if point not in points:
        pytest.skip("the Timeloop case needs NMX_DATA_DIR")
    valid, target, template = points[point]
    if valid is None:  # the shapes CSV: a small valid file of our own
        valid = _write(tmp_path / "valid.csv", "m,n,k,dtype\n1,4096,4096,bf16\n16,11008,4096,fp8\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    for label, data in _generated(valid):
        target.write_bytes(data)
        args = [str(target.parent) if a == "{parent}" else str(target) if a == "{}" else a for a in template]
        truncated = "[:" in label
        code, _, err = one_line_error(args, capsys, monkeypatch, codes=(0, 2) if truncated else (2,))
        assert code == 2 or truncated, (label, err)


# ---------------------------------------------------------------- help text


def _commands(group, path: tuple[str, ...] = ()):
    """(path, command) of every leaf command (typer builds on its own copy of click: duck-typed)."""
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_command_and_option_has_help_text():
    import nmx.cli

    app = typer.main.get_command(nmx.cli.app)
    checked = []
    for path, cmd in _commands(app):
        checked.append(" ".join(path))
        assert (cmd.help or "").strip(), f"nmx {' '.join(path)} has no help"
        for p in cmd.params:
            assert p.param_type_name in ("option", "argument"), p
            assert (p.help or "").strip(), f"nmx {' '.join(path)} {p.opts[0]} has no help text"
            if p.param_type_name == "argument":
                assert "<" not in (p.metavar or p.name), p.metavar
    assert {"run", "eval", "demo", "hw gemm", "explore"} <= set(checked), checked


@pytest.mark.parametrize("args,usage", [
    (["explore"], "Usage: nmx explore [OPTIONS] [RESULT_DIR...]"),
    (["hw", "nonlinear"], "Usage: nmx hw nonlinear [OPTIONS] [METHOD...]"),
    (["hw", "timeloop"], "Usage: nmx hw timeloop [OPTIONS] ARCH SPARSE_OPTS WORKLOAD MAPPING"),
])
def test_usage_lines_read_plainly(capsys, monkeypatch, args, usage):
    code, out, _ = run_cli([*args, "--help"], capsys, monkeypatch)
    assert code == 0 and out.splitlines()[0] == usage
    assert "<list[" not in out
