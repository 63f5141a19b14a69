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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny Llama + tokenizer folder (tests/model/conftest.py's), loadable as a local HF model."""
    from tests.model.conftest import char_tokenizer, tiny_llama

    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    """A small text file (tests/model/conftest.py's pangrams)."""
    from tests.model.conftest import TEXT

    path = tmp_path_factory.mktemp("text") / "pangrams.txt"
    path.write_text(TEXT)
    return path

