"""GSM 03.38 and the other SMPP data_coding alphabets, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchd.smpp import gsm
from switchd.smpp.gsm import CodingError

GSM_CHARS = sorted(set(gsm.BASIC_TABLE) - {"\x1b"} | set(gsm.EXTENSION_TABLE.values()))


def test_basic_table_has_128_septets_at_their_places():
    assert len(gsm.BASIC_TABLE) == 128
    assert gsm.gsm_encode("@£$¥") == b"\x00\x01\x02\x03"
    assert gsm.gsm_encode("\n\r") == b"\x0a\x0d"
    assert gsm.gsm_encode("ΔΩ ¤¡§¿à") == b"\x10\x15\x20\x24\x40\x5f\x60\x7f"
    assert gsm.gsm_encode("AZaz09") == b"AZaz09"
    assert gsm.gsm_decode(bytes(range(0x1B)) + bytes(range(0x1C, 0x80))) == gsm.BASIC_TABLE.replace("\x1b", "")


def test_extension_table_characters_take_an_escape_each():
    assert gsm.gsm_encode("^{}\\[~]|€") == (
        b"\x1b\x14\x1b\x28\x1b\x29\x1b\x2f\x1b\x3c\x1b\x3d\x1b\x3e\x1b\x40\x1b\x65"
    )
    assert gsm.gsm_encode("\f") == b"\x1b\x0a"
    assert gsm.gsm_decode(b"\x1b\x65 5") == "€ 5"
    assert gsm.septet_length("€uro [x]") == 11
    assert gsm.septet_length("plain") == 5


def test_escape_followed_by_an_undefined_code_shows_the_basic_character():
    # TS 23.038: unknown extension -> the main table's character; ESC ESC -> space.
    assert gsm.gsm_decode(b"\x1bA") == "A"
    assert gsm.gsm_decode(b"\x1b\x1bA") == " A"


def test_bad_septets_are_errors_or_replaced():
    with pytest.raises(CodingError) as info:
        gsm.gsm_decode(b"ab\x80")
    assert info.value.position == 2
    with pytest.raises(CodingError):
        gsm.gsm_decode(b"ab\x1b")
    assert gsm.gsm_decode(b"a\x80b\x1b", errors="replace") == "a\ufffdb\ufffd"


def test_characters_outside_the_alphabet_are_refused_with_their_position():
    with pytest.raises(CodingError) as info:
        gsm.gsm_encode("abc`")
    assert info.value.position == 3 and info.value.data_coding == 0
    with pytest.raises(CodingError):
        gsm.septet_length("Привет")
    assert not gsm.is_gsm("ç")  # only the capital Ç is in the table
    assert gsm.is_gsm("Ça coûte 5€") is False  # û is not
    assert gsm.is_gsm("Ça va, 5€ [ok]")


def test_choose_coding_prefers_gsm_and_falls_back_to_ucs2():
    assert gsm.choose_coding("Hello {world} €5") == (0, b"Hello \x1b(world\x1b) \x1be5")
    assert gsm.choose_coding("Привет") == (8, "Привет".encode("utf-16-be"))
    coding, octets = gsm.choose_coding("ok 😀")
    assert coding == 8
    assert octets == b"\x00o\x00k\x00 \xd8\x3d\xde\x00"  # surrogate pair for U+1F600
    assert gsm.choose_coding("") == (0, b"")


def test_encode_and_decode_each_data_coding():
    assert gsm.encode(0, "a€") == b"a\x1be"
    assert gsm.encode(1, "plain ascii") == b"plain ascii"
    assert gsm.encode(3, "café") == b"caf\xe9"
    assert gsm.encode(8, "é😀") == b"\x00\xe9\xd8\x3d\xde\x00"
    assert gsm.encode(6, "Да") == "Да".encode("iso8859-5")
    assert gsm.encode(2, b"\x00\xff") == b"\x00\xff"
    assert gsm.encode(4, bytearray(b"\x01")) == b"\x01"
    assert gsm.decode(0, b"a\x1be") == "a€"
    assert gsm.decode(1, b"abc") == "abc"
    assert gsm.decode(3, b"caf\xe9") == "café"
    assert gsm.decode(8, b"\x00\xe9\xd8\x3d\xde\x00") == "é😀"
    assert gsm.decode(0xF1, b"hi") == "hi"  # GSM class 1, default alphabet
    assert gsm.decode(0xE0, "ß".encode("utf-16-be")) == "ß"


def test_coding_errors_name_the_problem():
    with pytest.raises(CodingError):
        gsm.encode(1, "café")
    with pytest.raises(CodingError):
        gsm.encode(3, "€")
    with pytest.raises(CodingError):
        gsm.encode(2, "text for a binary coding")
    with pytest.raises(CodingError):
        gsm.encode(0, b"bytes for a text coding")
    with pytest.raises(CodingError):
        gsm.decode(4, b"\x00")  # binary carries no text
    with pytest.raises(CodingError):
        gsm.decode(8, b"\x00a\x00")  # odd UCS2 length
    with pytest.raises(CodingError):
        gsm.decode(8, b"\xd8\x3d")  # lone high surrogate
    assert gsm.decode(8, b"\xd8\x3d", errors="replace") == "\ufffd"
    with pytest.raises(CodingError):
        gsm.decode(1, b"\xff")
    with pytest.raises(CodingError) as info:
        gsm.alphabet(0x05)  # JIS: never guessed
    assert info.value.data_coding == 5
    with pytest.raises(CodingError):
        gsm.encode(8, "\ud83d")  # a lone surrogate in the str


def test_alphabets_of_the_gsm_coding_groups():
    assert gsm.alphabet(0) == "gsm"
    assert gsm.alphabet(0xF0) == "gsm"
    assert gsm.alphabet(0xF4) == "binary"
    assert gsm.alphabet(0xC8) == "gsm"
    assert gsm.alphabet(0xE3) == "ucs2"
    assert gsm.is_septet_coding(0) and gsm.is_septet_coding(0xF3)
    assert not gsm.is_septet_coding(8) and not gsm.is_septet_coding(3) and not gsm.is_septet_coding(0x05)


def test_pack_septets_known_vector():
    # "hellohello" packed: the classic TS 23.038 example.
    assert gsm.pack_septets(gsm.gsm_encode("hellohello")).hex() == "e8329bfd4697d9ec37"
    assert gsm.unpack_septets(bytes.fromhex("e8329bfd4697d9ec37"), 10) == b"hellohello"
    assert gsm.pack_septets(b"") == b""


def test_pack_with_fill_bits_after_a_udh():
    # A 6-octet concatenation UDH is 48 bits: 1 fill bit brings text to septet 7.
    assert gsm.udh_fill_bits(6) == 1
    assert gsm.udh_fill_bits(7) == 0
    assert gsm.udh_fill_bits(1) == 6
    packed = gsm.pack_septets(b"\x41\x42", fill_bits=1)
    assert packed == b"\x82\x42"  # 0 fill bit, then 1000001, then 1000010
    assert gsm.unpack_septets(packed, 2, fill_bits=1) == b"AB"


def test_unpack_without_count_shows_the_padding_ambiguity():
    # 7 septets fill 49 bits: 7 padding bits read as a spurious '@' without a count.
    packed = gsm.pack_septets(b"1234567")
    assert len(packed) == 7
    assert gsm.unpack_septets(packed) == b"1234567\x00"
    assert gsm.unpack_septets(packed, 7) == b"1234567"
    with pytest.raises(CodingError):
        gsm.unpack_septets(packed, 9)
    with pytest.raises(CodingError):
        gsm.pack_septets(b"\x80")
    with pytest.raises(ValueError):
        gsm.pack_septets(b"a", fill_bits=7)


@given(st.text(alphabet=st.sampled_from(GSM_CHARS), max_size=300))
def test_gsm_text_round_trips_unpacked_and_packed(text):
    septets = gsm.gsm_encode(text)
    assert len(septets) == gsm.septet_length(text)
    assert gsm.gsm_decode(septets) == text
    for fill in range(7):
        packed = gsm.pack_septets(septets, fill)
        assert len(packed) == (len(septets) * 7 + fill + 7) // 8
        assert gsm.unpack_septets(packed, len(septets), fill) == septets


@given(st.text(max_size=200))
def test_choose_coding_round_trips_any_text(text):
    coding, octets = gsm.choose_coding(text)
    assert coding == (0 if gsm.is_gsm(text) else 8)
    assert gsm.decode(coding, octets) == text


@given(st.binary(max_size=200))
def test_decode_with_replace_never_raises(data):
    for coding in (0, 1, 3, 8):
        assert isinstance(gsm.decode(coding, data, errors="replace"), str)
