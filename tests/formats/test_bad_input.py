"""Bad names, bad block sizes, odd tensors: a clear NmxError or a documented behaviour."""

import math

import pytest
import torch

import nmx.formats as F
from nmx.errors import FormatError, InputError, NmxError


@pytest.mark.parametrize("name,hint", [
    ("mxfp5", "did you mean"), ("nvpf4", "'nvfp4'"), ("int4_g128x", "did you mean"), ("banana", "nmx formats"),
])
def test_unknown_names_suggest_the_closest(name, hint):
    with pytest.raises(FormatError, match=hint):
        F.get(name)


@pytest.mark.parametrize("name", ["mxfp4_g0", "int4_g0", "nvfp4_g100000", "bfp_m4_g0", "int4_g-3"])
def test_block_sizes_that_make_no_sense(name):
    with pytest.raises(FormatError):
        F.get(name)


@pytest.mark.parametrize("name", ["int1", "int17", "int0_g8", "bfp_m0_g16", "bfp_m16_g16", "fp9_e4m3",
                                  "fp12_e8m3", "mxfp7_e4m3", "bf16_sr", "", "  "])
def test_malformed_members_of_a_family(name):
    with pytest.raises(FormatError):
        F.get(name)


def test_name_must_be_a_string():
    with pytest.raises(FormatError):
        F.get(None)  # type: ignore[arg-type]
    with pytest.raises(FormatError):
        F.get(["mxfp4"])  # type: ignore[arg-type]


def test_names_are_case_and_space_insensitive():
    assert F.get(" MXFP4 ").name == "mxfp4"


def test_every_listed_name_parses_and_round_trips_its_name():
    for name in F.names():
        assert F.get(name).name == name


def test_empty_tensors_give_empty_results():
    for name in ("mxfp4", "nvfp4", "int4_g128", "int8", "fp8_e4m3", "bfp_m4_g16"):
        fmt = F.get(name)
        for shape in [(0,), (0, 64), (4, 0)]:
            x = torch.zeros(shape)
            assert fmt.quantize(x).shape == shape
            enc = fmt.encode(x)
            assert fmt.decode(enc).shape == shape and fmt.storage_bytes(shape) == 0 == enc.nbytes


def test_scalars_are_a_block_of_one():
    assert F.get("mxfp4").quantize(torch.tensor(5.0)).item() == 4.0  # X = 1; 5 ties between 4 and 6: even wins
    assert F.get("mxfp4").quantize(torch.tensor(5.0)).shape == ()


@pytest.mark.parametrize("dim", [2, -3, 7])
def test_dims_out_of_range(dim):
    with pytest.raises(InputError, match="out of range"):
        F.get("mxfp4").quantize(torch.randn(4, 32), dim=dim)
    with pytest.raises(InputError, match="out of range"):
        F.get("mxfp4").storage_bytes((4, 32), dim=dim)


def test_non_real_inputs():
    with pytest.raises(InputError):
        F.get("mxfp4").quantize(torch.randn(4, 32, dtype=torch.complex64))
    with pytest.raises(InputError):
        F.get("mxfp4").quantize(torch.ones(4, 32, dtype=torch.bool))
    with pytest.raises(InputError):
        F.get("mxfp4").quantize("not a tensor")
    with pytest.raises(InputError):
        F.get("mxfp4").quantize(torch.randn(4, 32), dim=1.5)  # type: ignore[arg-type]


def test_other_dtypes_and_arrays_are_read_as_float32():
    x = torch.randn(2, 32)
    assert torch.equal(F.get("mxfp4").quantize(x.numpy()), F.get("mxfp4").quantize(x))
    b = x.to(torch.bfloat16)
    assert torch.equal(F.get("mxfp4").quantize(b), F.get("mxfp4").quantize(b.float()))
    assert torch.equal(F.get("int8_g32").quantize(torch.arange(64).reshape(2, 32)),
                       F.get("int8_g32").quantize(torch.arange(64.0).reshape(2, 32)))


def test_decode_refuses_another_formats_bytes():
    enc = F.get("mxfp4").encode(torch.randn(2, 32))
    with pytest.raises(FormatError, match="encoded as mxfp4"):
        F.get("nvfp4").decode(enc)
    with pytest.raises(InputError):
        F.get("mxfp4").decode("bytes")  # type: ignore[arg-type]


def test_negative_shapes():
    with pytest.raises(InputError):
        F.get("mxfp4").storage_bytes((-1, 32))


def test_integer_formats_turn_a_nan_group_into_nan_and_keep_the_rest():
    """Documented: integers have no NaN code; the group's fp16 scale becomes NaN instead."""
    x = torch.randn(1, 256)
    x[0, 5] = math.nan
    q = F.get("int4_g128").quantize(x)
    assert torch.isnan(q[0, :128]).all() and torch.isfinite(q[0, 128:]).all()
    q8 = F.get("int8").quantize(x)  # one scale per vector: the whole row
    assert torch.isnan(q8).all()


def test_encoding_nan_into_a_format_without_nan_code_is_an_error():
    with pytest.raises(NmxError, match="no NaN code"):
        F.get("fp4_e2m1").encode(torch.tensor([math.nan, 1.0]))
    assert torch.isnan(F.get("fp4_e2m1").quantize(torch.tensor([math.nan]))).all()  # fake quant keeps NaN


def test_scale_formats_are_unsigned():
    assert torch.isnan(F.get("e8m0").quantize(torch.tensor([-1.0, 0.0]))).all()
    assert torch.isnan(F.get("ue4m3").quantize(torch.tensor([-1.0]))).all()
    assert F.get("ue4m3").quantize(torch.tensor([0.0, 500.0])).tolist() == [0.0, 448.0]
