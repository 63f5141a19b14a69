import os
from pathlib import Path

import pytest
import torch

# Tests find the shared data the way users do: through NMX_DATA_DIR.
os.environ.setdefault("NMX_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))


def assert_bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal bit patterns, except that any NaN matches any NaN (payloads are not compared)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    a32, b32 = a.float().contiguous(), b.float().contiguous()
    nan_a, nan_b = torch.isnan(a32), torch.isnan(b32)
    assert torch.equal(nan_a, nan_b), f"NaN positions differ at {torch.nonzero(nan_a != nan_b)[:5].tolist()}"
    ia, ib = a32.view(torch.int32)[~nan_a], b32.view(torch.int32)[~nan_b]
    bad = torch.nonzero(ia != ib).reshape(-1)
    if bad.numel():
        fa, fb = a32[~nan_a][bad[:5]], b32[~nan_b][bad[:5]]
        pytest.fail(f"{bad.numel()} values differ, e.g. {fa.tolist()} vs {fb.tolist()}")


@pytest.fixture(autouse=True)
def _seeded():
    """Every test sees the same torch random stream: a failure reproduces."""
    torch.manual_seed(0)
