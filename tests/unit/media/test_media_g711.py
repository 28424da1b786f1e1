"""G.711 against the segment tables of the standard, exhaustively."""

from __future__ import annotations

import bisect
import struct

import pytest

from switchd.media import g711
from switchd.media.g711 import (
    G711Error,
    alaw_decode,
    alaw_encode,
    codec_for,
    codec_for_payload_type,
    ulaw_decode,
    ulaw_encode,
)

ALL_SAMPLES = range(-32768, 32768)

# G.711 Table 2 (µ-law), in the 14-bit magnitude units of the standard: the
# decision values where the eight segments begin and the interval width in
# each; segment 1 starts with a single interval [0, 1) that decodes to 0.
ULAW_SEGMENT_STARTS = [1, 31, 95, 223, 479, 991, 2015, 4063]
ULAW_WIDTHS = [2, 4, 8, 16, 32, 64, 128, 256]
ULAW_TOP = 8159
# G.711 Table 1 (A-law), in its 13-bit units (magnitude up to 4096): segment
# starts and interval widths.
ALAW_SEGMENT_STARTS = [0, 32, 64, 128, 256, 512, 1024, 2048]
ALAW_WIDTHS = [2, 2, 4, 8, 16, 32, 64, 128]
ALAW_TOP = 4096


def ulaw_table() -> list[tuple[int, int, int]]:
    """(lower decision value, upper decision value, output value) per positive
    code in increasing order, as the tables list them."""
    rows = [(0, 1, 0)]
    for start, width in zip(ULAW_SEGMENT_STARTS, ULAW_WIDTHS, strict=True):
        count = 15 if start == 1 else 16
        for j in range(count):
            low = start + j * width
            rows.append((low, low + width, low + width // 2))
    assert rows[-1][1] == ULAW_TOP and len(rows) == 128
    return rows


def alaw_table() -> list[tuple[int, int, int]]:
    rows = []
    for start, width in zip(ALAW_SEGMENT_STARTS, ALAW_WIDTHS, strict=True):
        for j in range(16):
            low = start + j * width
            rows.append((low, low + width, low + width // 2))
    assert rows[-1][1] == ALAW_TOP and len(rows) == 128
    return rows


def ulaw_code(index: int, negative: bool) -> int:
    """The line code of the index-th positive interval: all bits inverted."""
    return (0x7F if negative else 0xFF) - index


def alaw_code(index: int, negative: bool) -> int:
    """Sign bit 1 for positive, then the even bits inverted."""
    return (index | (0 if negative else 0x80)) ^ 0x55


def test_decoders_give_the_output_values_of_the_tables():
    for index, (_low, _high, output) in enumerate(ulaw_table()):
        assert ulaw_decode(ulaw_code(index, negative=False)) == 4 * output
        assert ulaw_decode(ulaw_code(index, negative=True)) == -4 * output
    for index, (_low, _high, output) in enumerate(alaw_table()):
        assert alaw_decode(alaw_code(index, negative=False)) == 8 * output
        assert alaw_decode(alaw_code(index, negative=True)) == -8 * output


def test_encoders_pick_the_interval_holding_every_16_bit_value():
    ulaw_lows = [low for low, _high, _out in ulaw_table()]
    alaw_lows = [low for low, _high, _out in alaw_table()]
    for sample in ALL_SAMPLES:
        negative = sample < 0
        magnitude = -sample - 1 if negative else sample  # one's complement, as G.191
        index = min(bisect.bisect_right(ulaw_lows, magnitude >> 2) - 1, 127)
        assert ulaw_encode(sample) == ulaw_code(index, negative), sample
        index = bisect.bisect_right(alaw_lows, magnitude >> 3) - 1
        assert alaw_encode(sample) == alaw_code(index, negative), sample


def test_known_points():
    assert ulaw_encode(0) == 0xFF and ulaw_encode(-1) == 0x7F
    assert ulaw_encode(32767) == 0x80 and ulaw_encode(-32768) == 0x00
    assert ulaw_decode(0x00) == -32124 and ulaw_decode(0x80) == 32124
    assert ulaw_decode(0xFF) == 0 and ulaw_decode(0x7F) == 0
    assert alaw_encode(0) == 0xD5 and alaw_encode(-1) == 0x55
    assert alaw_encode(32767) == 0xAA and alaw_encode(-32768) == 0x2A
    assert alaw_decode(0xD5) == 8 and alaw_decode(0x55) == -8
    assert alaw_decode(0xAA) == 32256 and alaw_decode(0x2A) == -32256
    assert g711.ULAW_SILENCE == ulaw_encode(0) and g711.ALAW_SILENCE == alaw_encode(0)


def test_every_code_round_trips():
    for code in range(256):
        expected = 0xFF if code == 0x7F else code  # µ-law has two zeros; +0 wins
        assert ulaw_encode(ulaw_decode(code)) == expected
        assert alaw_encode(alaw_decode(code)) == code


def test_quantisation_error_is_at_most_half_an_interval_and_monotonic():
    ulaw_max, alaw_max = ulaw_decode(0x80), alaw_decode(0xAA)
    previous_u = previous_a = -40000
    for sample in ALL_SAMPLES:
        u = ulaw_decode(ulaw_encode(sample))
        a = alaw_decode(alaw_encode(sample))
        assert u >= previous_u and a >= previous_a
        previous_u, previous_a = u, a
        magnitude = abs(sample)
        if magnitude < ulaw_max:
            width = 4 * 2 ** max(1, (magnitude // 4 + 33).bit_length() - 5)
            assert abs(u - sample) <= width // 2 + 4, sample
        if magnitude < alaw_max:
            width = 8 * ALAW_WIDTHS[max(0, (magnitude // 8).bit_length() - 5)]
            assert abs(a - sample) <= width // 2 + 8, sample


def test_quantisers_are_symmetric():
    for sample in range(32768):
        assert ulaw_encode(-1 - sample) == ulaw_encode(sample) ^ 0x80
        assert alaw_encode(-1 - sample) == alaw_encode(sample) ^ 0x80


def test_bulk_forms_match_the_scalar_ones():
    codes = bytes(range(256))
    assert g711.ulaw_to_pcm16(codes) == struct.pack("<256h", *map(ulaw_decode, codes))
    assert g711.alaw_to_pcm16(codes) == struct.pack("<256h", *map(alaw_decode, codes))
    pcm = struct.pack(f"<{len(ALL_SAMPLES)}h", *ALL_SAMPLES)
    assert g711.pcm16_to_ulaw(pcm) == bytes(map(ulaw_encode, ALL_SAMPLES))
    assert g711.pcm16_to_alaw(pcm) == bytes(map(alaw_encode, ALL_SAMPLES))
    assert g711.ulaw_to_alaw(codes) == bytes(alaw_encode(ulaw_decode(c)) for c in codes)
    assert g711.alaw_to_ulaw(codes) == bytes(ulaw_encode(alaw_decode(c)) for c in codes)
    assert g711.ulaw_to_pcm16(b"") == b"" and g711.pcm16_to_alaw(b"") == b""
    with pytest.raises(G711Error, match="odd length 3"):
        g711.pcm16_to_ulaw(b"\x00\x01\x02")


def test_scalar_forms_reject_out_of_range_values():
    with pytest.raises(G711Error, match="32768"):
        ulaw_encode(32768)
    with pytest.raises(G711Error, match="-32769"):
        alaw_encode(-32769)
    with pytest.raises(G711Error, match="256"):
        ulaw_decode(256)
    with pytest.raises(G711Error, match="-1"):
        alaw_decode(-1)


def test_codecs_by_name_and_payload_type():
    pcmu, pcma = codec_for("PCMU"), codec_for("pcma/8000")
    assert (pcmu.name, pcmu.payload_type, g711.PCMU) == ("PCMU", 0, 0)
    assert (pcma.name, pcma.payload_type, g711.PCMA) == ("PCMA", 8, 8)
    assert codec_for(pcmu) is pcmu and codec_for(" pcmu/8000/1 ") is pcmu
    assert codec_for_payload_type(0) is pcmu and codec_for_payload_type(8) is pcma
    assert codec_for_payload_type(18) is None and codec_for_payload_type(101) is None
    assert pcma.decode(pcma.silence_frame(160)) == struct.pack("<160h", *[8] * 160)
    assert pcmu.decode(pcmu.silence_frame(2)) == bytes(4)
    with pytest.raises(G711Error, match="'G729' is not a G.711 encoding"):
        codec_for("G729")
    with pytest.raises(G711Error, match="8000 Hz"):
        codec_for("PCMU/16000")


def test_transcode_between_laws():
    payload = bytes(range(256))
    assert g711.transcode(payload, "PCMU", "PCMU") is payload
    assert g711.transcode(payload, "PCMU", "PCMA") == g711.ulaw_to_alaw(payload)
    assert g711.transcode_table("PCMA", "PCMA") is None
    # A round trip through the other law lands on a code of the same value or a neighbour.
    for code in range(256):
        back = g711.alaw_to_ulaw(g711.ulaw_to_alaw(bytes([code])))[0]
        assert abs(ulaw_decode(back) - ulaw_decode(code)) <= abs(ulaw_decode(code)) // 16 + 16
