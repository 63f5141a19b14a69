"""Importing a script of benchmarks/ as a module, the way the tests of its functions do."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def benchmark_script(name: str):
    """benchmarks/NAME.py, loaded afresh as a module."""
    spec = importlib.util.spec_from_file_location(f"nmx_benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
