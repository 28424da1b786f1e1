"""Long messages without sockets: split modes and limits, UDH/SAR, reassembly
on a test clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from switchd.smpp import concat, gsm, pdu
from switchd.smpp.concat import (
    ConcatError,
    ConcatInfo,
    Reassembler,
    TooLong,
    UdhError,
    parse_udh,
    split,
)

GSM_CHARS = sorted(set(gsm.BASIC_TABLE) - {"\x1b"} | set(gsm.EXTENSION_TABLE.values()))


def joined(parts):
    """The content back from split parts (UDH stripped)."""
    out = b""
    for part in parts:
        if part.esm_class & pdu.ESM_UDHI:
            out += parse_udh(part.short_message)[1]
        else:
            out += part.short_message or part.tlvs.get("message_payload", b"")
    return out


# --------------------------------------------------------------------------
# Modes
# --------------------------------------------------------------------------


def test_a_short_message_is_one_part_in_every_mode():
    for mode in concat.MODES:
        (part,) = split("hello", 0, mode)
        assert (part.short_message, part.number, part.total, part.esm_class, part.tlvs) == (b"hello", 1, 1, 0, {})


def test_disabled_refuses_what_does_not_fit():
    split("x" * 140, 0, "disabled")
    with pytest.raises(TooLong) as info:
        split("x" * 141, 0, "disabled")
    assert (info.value.length, info.value.limit) == (141, 140)
    assert len(split("x" * 160, 0, "disabled", max_content_length=160)) == 1
    with pytest.raises(TooLong):
        split("x" * 161, 0, "disabled", max_content_length=200)  # 160 septets on air
    with pytest.raises(TooLong):
        split(b"x" * 141, 4, "disabled", max_content_length=200)  # 140 octets on air


def test_not_split_sends_one_part_whatever_the_length():
    (part,) = split("y" * 254, 0, "not_split")
    assert part.short_message == b"y" * 254
    (part,) = split("y" * 1000, 0, "not_split")
    assert part.short_message == b"" and part.tlvs == {"message_payload": b"y" * 1000}
    message = pdu.SubmitSm(short_message=part.short_message, tlvs=part.tlvs)
    assert pdu.decode(message.encode()) == message


def test_physical_parts_are_independent_messages():
    parts = split("z" * 300, 0, "physical")
    assert [len(p.short_message) for p in parts] == [140, 140, 20]
    assert all(p.esm_class == 0 and p.tlvs == {} for p in parts)
    assert [(p.number, p.total) for p in parts] == [(1, 3), (2, 3), (3, 3)]
    assert joined(parts) == b"z" * 300


def test_ultra_long_with_an_8_bit_udh():
    parts = split("w" * 300, 0, "ultra_long", reference=0x2A)
    assert [len(p.short_message) for p in parts] == [140, 140, 38]  # 134 + 134 + 32 septets, each after a 6-octet UDH
    for number, part in enumerate(parts, 1):
        assert part.short_message[:6] == bytes((5, 0, 3, 0x2A, 3, number))
        assert part.esm_class == pdu.ESM_UDHI
        assert concat.concat_info(pdu.SubmitSm(esm_class=0x40, short_message=part.short_message)) == ConcatInfo(
            0x2A, 3, number, "udh", 8
        )
    assert joined(parts) == b"w" * 300


def test_ultra_long_with_a_16_bit_udh():
    parts = split("w" * 300, 0, "ultra_long", max_content_length=160, reference=0xBEEF, udh_16bit=True)
    assert parts[0].short_message[:7] == bytes((6, 8, 4, 0xBE, 0xEF, 2, 1))
    assert [len(p.short_message) - 7 for p in parts] == [152, 148]  # 160 - 8 septets of header
    header, _ = parse_udh(parts[1].short_message)
    assert header.concat == ConcatInfo(0xBEEF, 2, 2, "udh", 16)


def test_ultra_long_with_sar_tlvs():
    parts = split("w" * 300, 0, "ultra_long", concat="sar", reference=0x1234)
    assert [len(p.short_message) for p in parts] == [140, 140, 20]  # no UDH in the message
    assert parts[2].tlvs == {"sar_msg_ref_num": 0x1234, "sar_total_segments": 3, "sar_segment_seqnum": 3}
    assert all(p.esm_class == 0 for p in parts)
    submit = pdu.SubmitSm(short_message=parts[1].short_message, tlvs=parts[1].tlvs)
    assert concat.concat_info(pdu.decode(submit.encode())) == ConcatInfo(0x1234, 3, 2, "sar", 16)
    # 8-bit data: the SMSC's header must still fit in 140 octets on air
    parts = split(b"\x00" * 300, 4, "ultra_long", concat="sar", reference=7)
    assert [len(p.short_message) for p in parts] == [134, 134, 32]
    parts = split(b"\x00" * 300, 4, "ultra_long", concat="sar", reference=700)
    assert [len(p.short_message) for p in parts] == [133, 133, 34]


def test_septet_limits_with_a_larger_max_content_length():
    # 160 on links whose SMSC counts septets: the classic 160 / 153.
    assert len(split("a" * 160, 0, "ultra_long", max_content_length=160)) == 1
    parts = split("a" * 161, 0, "ultra_long", max_content_length=160)
    assert [len(p.short_message) - 6 for p in parts] == [153, 8]
    # 8-bit and UCS2 stay within 140 octets whatever max_content_length says
    assert [len(p.short_message) for p in split("я" * 80, 8, "ultra_long", max_content_length=200)] == [140, 32]


def test_ucs2_parts_and_surrogate_pairs_are_never_cut():
    parts = split("я" * 200, 8, "ultra_long")
    assert [len(p.short_message) for p in parts] == [140, 140, 138]
    # 66 BMP characters (132 octets) then emoji (4 octets each): 134 octets fit
    # 66 + 0.5 emoji, so the pair moves whole to the next part.
    text = "я" * 66 + "😀" * 10
    parts = split(text, 8, "ultra_long")
    first = parse_udh(parts[0].short_message)[1]
    assert len(first) == 132 and first.decode("utf-16-be") == "я" * 66
    assert b"".join(parse_udh(p.short_message)[1] for p in parts).decode("utf-16-be") == text
    for part in parts:
        parse_udh(part.short_message)[1].decode("utf-16-be")  # each part decodes on its own
    with pytest.raises(gsm.CodingError):
        split(b"\x00a\x00", 8, "ultra_long")


def test_euro_signs_at_the_boundary_are_never_cut():
    # 134 payload octets per part with the UDH; € is 2 octets (escape + code).
    text = "a" + "€" * 100
    parts = split(text, 0, "ultra_long")
    payloads = [parse_udh(p.short_message)[1] for p in parts]
    assert [len(p) for p in payloads] == [133, 68]  # 'a' + 66 euros, then 34 euros
    assert all(not payload.endswith(b"\x1b") for payload in payloads)
    assert [gsm.decode(0, payload) for payload in payloads] == ["a" + "€" * 66, "€" * 34]
    # the same in physical mode and with SAR
    for parts in (split(text, 0, "physical"), split(text, 0, "ultra_long", concat="sar")):
        assert [gsm.decode(0, joined([p])) for p in parts] == ["a" + "€" * 69, "€" * 31]


def test_bytes_content_is_split_on_the_same_boundaries():
    data = gsm.encode(0, "€" * 100)
    assert joined(split(data, 0, "ultra_long")) == data
    assert [len(p.short_message) for p in split(data, 0, "ultra_long")] == [140, 72]


def test_split_arguments_are_checked():
    with pytest.raises(ValueError):
        split("x", 0, "ultra long")
    with pytest.raises(ValueError):
        split("x", 0, "ultra_long", concat="tlv")
    with pytest.raises(ValueError):
        split("x" * 300, 0, "ultra_long", reference=256)
    with pytest.raises(ValueError):
        split("x" * 300, 0, "ultra_long", reference=0x10000, udh_16bit=True)
    with pytest.raises(ValueError):
        split("€" * 10, 0, "physical", max_content_length=1)  # a 2-octet character in 1 octet
    with pytest.raises(gsm.CodingError):
        split("Привет", 0, "ultra_long")
    with pytest.raises(TooLong):
        split("x" * (134 * 255 + 1), 0, "ultra_long")
    assert len(split("x" * (134 * 255), 0, "ultra_long")) == 255


@settings(max_examples=200)
@given(
    st.text(alphabet=st.sampled_from(GSM_CHARS), max_size=700),
    st.sampled_from(["physical", "ultra_long"]),
    st.sampled_from(["udh", "sar"]),
    st.integers(20, 200),
    st.booleans(),
)
def test_gsm_parts_fit_both_limits_and_rejoin(text, mode, how, max_content_length, wide):
    parts = split(text, 0, mode, max_content_length=max_content_length, concat=how, udh_16bit=wide)
    for part in parts:
        assert len(part.short_message) <= max_content_length
        payload = joined([part])
        on_air = 0 if len(parts) == 1 or mode == "physical" else (7 if wide else 6)
        assert len(payload) + (on_air * 8 + 6) // 7 <= 160
        gsm.decode(0, payload)  # no escape left dangling
    assert gsm.decode(0, joined(parts)) == text


@settings(max_examples=200)
@given(st.text(max_size=400), st.integers(10, 140))
def test_ucs2_parts_fit_and_rejoin(text, max_content_length):
    parts = split(text, 8, "ultra_long", max_content_length=max_content_length)
    for part in parts:
        assert len(part.short_message) <= min(max_content_length, 140)
        joined([part]).decode("utf-16-be")
    assert joined(parts).decode("utf-16-be") == text


# --------------------------------------------------------------------------
# UDH and concatenation info
# --------------------------------------------------------------------------


def test_parse_udh_with_several_elements():
    # ports (IE 0x05: 2948 -> 9200) then concatenation, as WAP push does
    message = bytes.fromhex("0b 0504 0b84 23f0 0003 07 02 01") + b"payload"
    header, payload = parse_udh(message)
    assert payload == b"payload"
    assert header.elements == ((5, b"\x0b\x84\x23\xf0"), (0, b"\x07\x02\x01"))
    assert header.ports == (2948, 9200)
    assert header.concat == ConcatInfo(7, 2, 1, "udh", 8)
    assert header.encode() + payload == message
    assert parse_udh(bytes.fromhex("04 0402 0a0b") + b"x")[0].ports == (10, 11)
    assert parse_udh(b"\x00abc") == (concat.UserDataHeader(()), b"abc")


@pytest.mark.parametrize("bad", [b"", b"\x06\x00\x03\x01", b"\x03\x00\x03\x01\x02", b"\x01\x00"])
def test_bad_udh_raises(bad):
    with pytest.raises(UdhError):
        parse_udh(bad)


def test_invalid_concatenation_elements_are_ignored():
    # TS 23.040: a part count of 0 or a sequence number beyond it voids the IE.
    assert parse_udh(bytes.fromhex("05 0003 01 00 01"))[0].concat is None
    assert parse_udh(bytes.fromhex("05 0003 01 02 03"))[0].concat is None
    assert parse_udh(bytes.fromhex("05 0003 01 02 00"))[0].concat is None
    assert parse_udh(bytes.fromhex("04 0002 01 02"))[0].concat is None  # wrong IE length
    sar = pdu.SubmitSm(tlvs={"sar_msg_ref_num": 1, "sar_total_segments": 2, "sar_segment_seqnum": 3})
    assert concat.concat_info(sar) is None
    partial = pdu.SubmitSm(tlvs={"sar_msg_ref_num": 1, "sar_total_segments": 2})
    assert concat.concat_info(partial) is None


def test_split_user_data_reads_message_payload_too():
    data_sm = pdu.DataSm(esm_class=0x40, tlvs={"message_payload": bytes.fromhex("05 0003 09 02 02") + b"tail"})
    user_data = concat.split_user_data(data_sm)
    assert user_data.payload == b"tail" and user_data.concat == ConcatInfo(9, 2, 2)
    plain = concat.split_user_data(pdu.DeliverSm(short_message=b"plain"))
    assert (plain.header, plain.payload, plain.concat) == (None, b"plain", None)
    with pytest.raises(UdhError):
        concat.split_user_data(pdu.DeliverSm(esm_class=0x40, short_message=b""))


# --------------------------------------------------------------------------
# Reassembly
# --------------------------------------------------------------------------


def test_reassembly_out_of_order_drops_duplicates():
    clock = Clock()
    reassembler = Reassembler(clock, timeout=60)
    text = "€" * 150 + " the end"
    parts = split(text, 0, "ultra_long", reference=200)
    assert len(parts) == 3
    key = ("447700900123", "ACME")
    got = []
    for part in (parts[2], parts[0], parts[2], parts[1]):
        message = pdu.DeliverSm(esm_class=part.esm_class, short_message=part.short_message)
        user_data = concat.split_user_data(message)
        got.append(reassembler.feed(key, user_data.concat, user_data.payload))
    assert got[:3] == [None, None, None]
    assert gsm.decode(0, got[3]) == text
    assert reassembler.duplicates == 1 and len(reassembler) == 0
    # a late copy of a part of the finished message is a duplicate, not a new message
    user_data = concat.split_user_data(pdu.DeliverSm(esm_class=0x40, short_message=parts[0].short_message))
    assert reassembler.feed(key, user_data.concat, user_data.payload) is None
    assert len(reassembler) == 0 and reassembler.duplicates == 2
    assert clock.getDelayedCalls() == []


def test_messages_are_kept_apart_by_key_reference_and_total():
    reassembler = Reassembler(Clock())
    assert reassembler.feed("a", ConcatInfo(1, 2, 1), b"a1") is None
    assert reassembler.feed("b", ConcatInfo(1, 2, 2), b"b2") is None
    assert reassembler.feed("a", ConcatInfo(2, 2, 2), b"x2") is None
    assert reassembler.feed("a", ConcatInfo(1, 3, 2), b"y2") is None
    assert len(reassembler) == 4
    assert reassembler.feed("a", ConcatInfo(1, 2, 2), b"a2") == b"a1a2"
    assert reassembler.feed("b", ConcatInfo(1, 2, 1, "sar", 16), b"b1") == b"b1b2"
    assert reassembler.feed("c", ConcatInfo(5, 1, 1), b"single") == b"single"
    reassembler.clear()
    assert len(reassembler) == 0


def test_incomplete_messages_expire_and_are_reported():
    clock = Clock()
    reported = []
    reassembler = Reassembler(clock, timeout=30, on_incomplete=reported.append)
    reassembler.feed(("1", "2"), ConcatInfo(9, 3, 2), b"middle")
    clock.advance(29)
    assert reported == [] and len(reassembler) == 1
    reassembler.feed(("1", "2"), ConcatInfo(9, 3, 1), b"first")
    clock.advance(1)  # 30 s after the first part arrived
    assert reported == [concat.Incomplete(("1", "2"), 9, 3, {2: b"middle", 1: b"first"}, "timeout")]
    assert len(reassembler) == 0
    # the last part arriving afterwards starts a new (incomplete) message
    assert reassembler.feed(("1", "2"), ConcatInfo(9, 3, 3), b"last") is None
    clock.advance(30)
    assert reported[-1].parts == {3: b"last"}


def test_memory_is_bounded():
    clock = Clock()
    reported = []
    reassembler = Reassembler(clock, timeout=300, max_pending=2, on_incomplete=reported.append)
    for reference in range(3):
        reassembler.feed("k", ConcatInfo(reference, 2, 1), b"p")
    assert len(reassembler) == 2
    assert [(r.reference, r.reason) for r in reported] == [(0, "overflow")]
    assert len(clock.getDelayedCalls()) == 2
    # completed keys remembered against late duplicates are bounded too
    for reference in range(10, 20):
        reassembler.feed("d", ConcatInfo(reference, 2, 1), b"1")
        reassembler.feed("d", ConcatInfo(reference, 2, 2), b"2")
    assert len(reassembler._done) <= 2
    with pytest.raises(ValueError):
        Reassembler(clock, max_pending=0)


def test_done_messages_are_forgotten_after_the_timeout():
    clock = Clock()
    reassembler = Reassembler(clock, timeout=10)
    reassembler.feed("k", ConcatInfo(1, 2, 1), b"a")
    assert reassembler.feed("k", ConcatInfo(1, 2, 2), b"b") == b"ab"
    clock.advance(10)
    # the reference is reused by a new message once the old one is forgotten
    assert reassembler.feed("k", ConcatInfo(1, 2, 2), b"d") is None
    assert reassembler.feed("k", ConcatInfo(1, 2, 1), b"c") == b"cd"


@pytest.mark.parametrize("info", [ConcatInfo(1, 0, 1), ConcatInfo(1, 2, 0), ConcatInfo(1, 2, 3)])
def test_impossible_part_numbers_raise(info):
    with pytest.raises(ConcatError):
        Reassembler(Clock()).feed("k", info, b"x")
