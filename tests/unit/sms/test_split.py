"""How a message becomes the parts a link sends: split modes, concatenation,
pre-split customer parts, message format, data_sm, size limits; and its text."""

from __future__ import annotations

import pytest

from switchd.smpp import concat, gsm, pdu
from switchd.smpp.client import LinkSettings
from switchd.sms.engine import Submission, is_presplit, message_text, split_for_link


def link(**values) -> LinkSettings:
    return LinkSettings(id=1, name="carrier", host="h", port=1, **values)


def submission(content: bytes, data_coding: int = 0, **values) -> Submission:
    return Submission(source="ACME", destination="447700900001", content=content, data_coding=data_coding, **values)


def test_a_short_message_is_one_part_as_given():
    [part] = split_for_link(link(), submission(b"hello", registered_delivery=1), "smpp", 0)
    assert (part.number, part.total, part.short_message, part.in_payload, part.esm_class) == (1, 1, b"hello", False, 0)
    assert part.registered_delivery == 1


def test_disabled_splitting_refuses_a_long_message():
    with pytest.raises(concat.TooLong):
        split_for_link(link(), submission(b"x" * 141), "smpp", 0)


def test_ultra_long_with_udh_and_with_sar():
    parts = split_for_link(link(split_mode="ultra_long"), submission(b"x" * 300), "smpp", 7)
    assert [(p.number, p.total, p.esm_class) for p in parts] == [(1, 3, 0x40), (2, 3, 0x40), (3, 3, 0x40)]
    assert parts[0].short_message[:6] == b"\x05\x00\x03\x07\x03\x01"
    sar = split_for_link(link(split_mode="ultra_long", concatenation_mode="sar"), submission(b"x" * 300), "smpp", 300)
    assert [p.tlvs for p in sar] == [
        {"sar_msg_ref_num": 300, "sar_total_segments": 3, "sar_segment_seqnum": n} for n in (1, 2, 3)]
    assert all(p.esm_class == 0 and len(p.short_message) == 140 for p in sar[:2])


def test_physical_and_not_split_modes():
    physical = split_for_link(link(split_mode="physical", max_content_length=160), submission(b"y" * 200), "smpp", 0)
    assert [len(p.short_message) for p in physical] == [160, 40] and all(p.esm_class == 0 for p in physical)
    [whole] = split_for_link(link(split_mode="not_split"), submission(b"z" * 300), "smpp", 0)
    assert whole.in_payload and whole.short_message == b"z" * 300 and whole.tlvs == {}


def test_a_customers_own_part_passes_as_it_is():
    udh = b"\x05\x00\x03\x09\x02\x01" + b"a" * 100
    [part] = split_for_link(link(split_mode="ultra_long", concatenation_mode="sar"),
                            submission(udh, esm_class=0x40), "smpp", 0)
    assert (part.short_message, part.esm_class, part.tlvs) == (udh, 0x40, {})
    sar = {"sar_msg_ref_num": 9, "sar_total_segments": 2, "sar_segment_seqnum": 2, "user_message_reference": 1}
    [part] = split_for_link(link(), submission(b"b" * 100, tlvs=sar), "smpp", 0)
    assert part.tlvs == {"sar_msg_ref_num": 9, "sar_total_segments": 2, "sar_segment_seqnum": 2}
    assert is_presplit(submission(b"", tlvs=sar)) and not is_presplit(submission(b"", tlvs={"sar_msg_ref_num": 1}))


def test_a_ucs2_link_gets_text_in_ucs2():
    [part] = split_for_link(link(message_format="ucs2"), submission(gsm.encode(0, "hi @ €")), "smpp", 0)
    assert (part.data_coding, part.short_message) == (8, "hi @ €".encode("utf-16-be"))
    [binary] = split_for_link(link(message_format="ucs2"), submission(b"\x01\x02", data_coding=4), "smpp", 0)
    assert (binary.data_coding, binary.short_message) == (4, b"\x01\x02")


def test_a_data_sm_link_carries_every_part_in_the_payload():
    parts = split_for_link(link(pdu_type="data_sm", split_mode="physical"), submission(b"d" * 200), "smpp", 0)
    assert all(p.in_payload for p in parts) and len(parts) == 2


def test_the_links_largest_message_is_enforced():
    with pytest.raises(concat.TooLong, match="at most 100"):
        split_for_link(link(split_mode="not_split", max_message_length=100), submission(b"x" * 101), "smpp", 0)


def test_content_the_coding_cannot_hold_is_an_error():
    with pytest.raises(gsm.CodingError):
        split_for_link(link(), submission(b"\x00\x41\x00", data_coding=8), "smpp", 0)


def test_http_messages_ask_the_smsc_for_every_final_state():
    [part] = split_for_link(link(), submission(b"x"), "http", 0)
    assert part.registered_delivery == pdu.RECEIPT_ALWAYS


@pytest.mark.parametrize("content,coding,esm_class,text", [
    (b"hello", 0, 0, "hello"),
    ("€uro".encode("utf-16-be"), 8, 0, "€uro"),
    (b"\x05\x00\x03\x01\x02\x01part", 0, 0x40, "part"),
    (b"\x01\xff", 4, 0, "01ff"),
    (b"\xe9t\xe9", 3, 0, "été"),
    (b"\x80", 0, 0, "\ufffd"),
    (b"x", 0x05, 0, "78"),  # JIS: a coding switchd does not read
])
def test_message_text(content, coding, esm_class, text):
    assert message_text(content, coding, esm_class) == text
