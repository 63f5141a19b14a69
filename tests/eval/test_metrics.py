import math

import pytest
import torch

from nmx.errors import InputError
from nmx.eval.metrics import format_errors, quant_error
from nmx.eval.tensors import load_tensor, synthetic_activation


def test_quant_error_by_hand():
    r = quant_error(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 0.0, 2.5]))
    # signal 1 + 1 + 4 = 6, noise 0 + 1 + 0.25 = 1.25
    assert r["sqnr_db"] == pytest.approx(10 * math.log10(6 / 1.25))
    assert r["mse"] == pytest.approx(1.25 / 3) and r["max_abs_error"] == 1.0
    assert quant_error(torch.ones(3), torch.ones(3))["sqnr_db"] == math.inf


def test_quant_error_of_unrepresentable_results_is_nan():
    assert math.isnan(quant_error(torch.ones(2), torch.tensor([1.0, math.nan]))["sqnr_db"])
    with pytest.raises(InputError):
        quant_error(torch.ones(2), torch.ones(3))


def test_more_bits_less_error_on_the_synthetic_tensor():
    x = synthetic_activation(64, 512)
    rows = {r["name"]: r for r in format_errors(x, ["mxfp4", "mxfp6_e2m3", "mxfp8_e4m3", "int4_g32", "int8_g32"])}
    assert rows["mxfp4"]["sqnr_db"] < rows["mxfp6_e2m3"]["sqnr_db"]
    assert rows["int4_g32"]["sqnr_db"] < rows["int8_g32"]["sqnr_db"]
    # a plain 4-bit cast without a scale cannot hold the outliers
    assert format_errors(x, ["fp4_e2m1"])[0]["sqnr_db"] < rows["mxfp4"]["sqnr_db"] - 10


def test_synthetic_tensor_is_heavy_tailed_with_outlier_channels_and_seeded():
    x = synthetic_activation(256, 1024, seed=3)
    assert torch.equal(x, synthetic_activation(256, 1024, seed=3))
    col = x.abs().amax(0)
    assert (col > 20 * col.median()).sum() >= 5  # outlier channels
    z = x[:, col < 5 * col.median()].reshape(-1)
    kurtosis = ((z - z.mean()) ** 4).mean() / z.var() ** 2
    assert kurtosis > 5  # a Gaussian has 3


def test_load_tensor(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"layer.weight": torch.randn(4, 8)}, str(path))
    assert load_tensor(f"{path}:layer.weight").shape == (4, 8)
    with pytest.raises(InputError, match="has no tensor 'nope'; it has: layer.weight"):
        load_tensor(f"{path}:nope")
    with pytest.raises(InputError, match="not found"):
        load_tensor(f"{tmp_path / 'missing.safetensors'}:w")
    with pytest.raises(InputError, match="FILE.safetensors:NAME"):
        load_tensor(str(path))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:20])
    with pytest.raises(InputError, match="cannot read"):
        load_tensor(f"{bad}:layer.weight")
