import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmx.errors import FormatError
from nmx.formats.packing import pack_bits, packed_nbytes, unpack_bits


def reference_pack(codes: list[int], bits: int) -> list[int]:
    """Oracle: the layout written out one bit at a time (code i, bit t -> stream bit i*b + t)."""
    out = [0] * packed_nbytes(len(codes), bits)
    for i, code in enumerate(codes):
        for t in range(bits):
            if (code >> t) & 1:
                pos = i * bits + t
                out[pos // 8] |= 1 << (pos % 8)
    return out


@settings(max_examples=300, deadline=None)
@given(bits=st.integers(1, 32), data=st.data())
def test_pack_unpack_round_trip_against_a_bit_by_bit_reference(bits, data):
    codes = data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=0, max_size=80))
    t = torch.tensor(codes, dtype=torch.int64)
    packed = pack_bits(t, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(len(codes), bits)
    assert packed.tolist() == reference_pack(codes, bits)
    out = unpack_bits(packed, bits, len(codes))
    assert out.dtype == (torch.int32 if bits <= 16 else torch.int64)
    assert out.tolist() == codes


def test_layout_is_a_little_endian_bit_stream():
    assert pack_bits(torch.tensor([0x1, 0x2]), 4).tolist() == [0x21]  # first code in the low nibble
    # four 6-bit codes fill three bytes: bits of 0b000001, 0b000010, 0b000011, 0b111111
    assert pack_bits(torch.tensor([1, 2, 3, 63]), 6).tolist() == [0b10000001, 0b00110000, 0b11111100]
    assert pack_bits(torch.tensor([0x1234]), 16).tolist() == [0x34, 0x12]
    assert pack_bits(torch.tensor([1, 0, 1]), 1).tolist() == [0b101]
    assert pack_bits(torch.tensor([0x123456, 0xABCDEF]), 24).tolist() == [0x56, 0x34, 0x12, 0xEF, 0xCD, 0xAB]
    assert pack_bits(torch.tensor([0xFFFFFFFF, 1]), 32).tolist() == [0xFF] * 4 + [1, 0, 0, 0]
    # 17 bits: the second code starts at bit 1 of byte 2
    assert pack_bits(torch.tensor([0x1FFFF, 1]), 17).tolist() == [0xFF, 0xFF, 0b11, 0, 0]


def test_codes_wider_than_the_width_keep_their_low_bits():
    assert pack_bits(torch.tensor([0x1F]), 4).tolist() == [0x0F]
    assert unpack_bits(pack_bits(torch.tensor([(1 << 40) | 5]), 20), 20, 1).tolist() == [5]


def test_bad_widths_and_short_buffers():
    for bits in (0, 33):
        with pytest.raises(FormatError, match="1..32"):
            pack_bits(torch.tensor([1]), bits)
        with pytest.raises(FormatError, match="1..32"):
            unpack_bits(torch.zeros(8, dtype=torch.uint8), bits, 1)
    with pytest.raises(FormatError, match="too short"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), 4, 3)
    with pytest.raises(FormatError, match="too short"):
        unpack_bits(torch.zeros(5, dtype=torch.uint8), 20, 3)
