"""benchmarks/gemv_variants.py refuses bad input with exit code 2 before any GPU work."""

import torch

from tests.scripts import benchmark_script


def test_bad_input_exits_2(capsys):
    gv = benchmark_script("gemv_variants")
    assert gv.main(["--cases", "int4_g128,int3"]) == 2
    assert "unknown shape or case int3" in capsys.readouterr().err
    assert gv.main(["--shapes", "4096x4097"]) == 2
    if not torch.cuda.is_available():
        assert gv.main([]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err
