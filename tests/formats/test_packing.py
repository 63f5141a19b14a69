import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmx.errors import FormatError
from nmx.formats.packing import pack_bits, packed_nbytes, unpack_bits


@settings(max_examples=150, deadline=None)
@given(bits=st.integers(1, 16), data=st.data())
def test_pack_unpack_round_trip(bits, data):
    codes = data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=0, max_size=80))
    t = torch.tensor(codes, dtype=torch.int32)
    packed = pack_bits(t, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(len(codes), bits)
    assert torch.equal(unpack_bits(packed, bits, len(codes)), t)


def test_layout_is_a_little_endian_bit_stream():
    assert pack_bits(torch.tensor([0x1, 0x2]), 4).tolist() == [0x21]  # first code in the low nibble
    # four 6-bit codes fill three bytes: bits of 0b000001, 0b000010, 0b000011, 0b111111
    assert pack_bits(torch.tensor([1, 2, 3, 63]), 6).tolist() == [0b10000001, 0b00110000, 0b11111100]
    assert pack_bits(torch.tensor([0x1234]), 16).tolist() == [0x34, 0x12]
    assert pack_bits(torch.tensor([1, 0, 1]), 1).tolist() == [0b101]


def test_bad_widths_and_short_buffers():
    with pytest.raises(FormatError):
        pack_bits(torch.tensor([1]), 17)
    with pytest.raises(FormatError, match="too short"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), 4, 3)
