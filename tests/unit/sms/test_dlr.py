"""Receipts without sockets: reading them (text and TLVs), matching SMSC ids
in their hex and decimal forms, a message's state from its parts', and the
receipt written for a customer."""

from __future__ import annotations

import datetime

import pytest

from switchd.smpp import dlr, pdu


def deliver(text: bytes = b"", esm_class: int = pdu.ESM_TYPE_DELIVERY_RECEIPT, **tlvs) -> pdu.DeliverSm:
    return pdu.DeliverSm(source_addr="447700900001", destination_addr="ACME", esm_class=esm_class,
                         short_message=text, tlvs=tlvs)


def test_a_text_receipt_is_read():
    text = b"id:0A1B sub:001 dlvrd:001 submit date:2611211200 done date:2611211201 stat:DELIVRD err:000 text:hi"
    receipt = dlr.classify(deliver(text))
    assert receipt == dlr.UpstreamReceipt("0A1B", "DELIVERED", 0, datetime.datetime(2026, 11, 21, 12, 1))
    assert receipt.final and receipt.lookup_keys() == ["2587"]


def test_tlvs_win_over_the_text():
    text = b"id:1 stat:DELIVRD err:000"
    receipt = dlr.classify(deliver(text, receipted_message_id="99", message_state=pdu.UNDELIVERABLE,
                                   network_error_code=b"\x03\x00\x22"))
    assert (receipt.message_id, receipt.state, receipt.error_code) == ("99", "UNDELIVERABLE", 0x22)


def test_a_receipt_is_recognised_by_its_tlv_even_without_the_esm_class():
    receipt = dlr.classify(deliver(esm_class=0, receipted_message_id="5", message_state=pdu.DELIVERED))
    assert isinstance(receipt, dlr.UpstreamReceipt) and receipt.state == "DELIVERED"


@pytest.mark.parametrize("text,state,error", [
    (b"id:7 stat:UNDELIV err:0x1F", "UNDELIVERABLE", 0x1F),
    (b"id:7 stat:EXPIRED err:abc", "EXPIRED", None),
    (b"id:7 stat:WEIRD", "UNKNOWN", None),
    (b"id:7 stat:ENROUTE", "ENROUTE", None),
])
def test_states_and_errors_from_text(text, state, error):
    receipt = dlr.read_receipt(deliver(text))
    assert (receipt.state, receipt.error_code, receipt.final) == (state, error, state != "ENROUTE")


def test_unreadable_receipts_are_refused():
    with pytest.raises(dlr.ReceiptUnreadable, match="without a message id"):
        dlr.classify(deliver(b"hello"))
    with pytest.raises(dlr.ReceiptUnreadable, match="without a state"):
        dlr.classify(deliver(esm_class=0x04, receipted_message_id="5"))


def test_anything_else_is_an_mo_with_its_udh_and_sar_kept():
    mo = dlr.classify(pdu.DeliverSm(source_addr="447700900001", destination_addr="441134960000",
                                    esm_class=0x40 | 0x03, data_coding=8, short_message=b"\x05\x00\x03\x01\x02\x01hi",
                                    tlvs={"sar_msg_ref_num": 1, "user_message_reference": 4}))
    assert mo == dlr.UpstreamMessage("447700900001", "441134960000", b"\x05\x00\x03\x01\x02\x01hi", 8, 0x40,
                                     {"sar_msg_ref_num": 1})
    payload = dlr.classify(pdu.DataSm(source_addr="1", destination_addr="2", tlvs={"message_payload": b"x" * 300}))
    assert payload.content == b"x" * 300


@pytest.mark.parametrize("given,keys", [
    ("0A1B", ["2587"]),
    ("000123", ["123", "291"]),
    ("256", ["256", "598", "100"]),
    ("e6e5ab5b-3bd7-4b9e-9d4e-3c1e2f6a7b8c", ["e6e5ab5b-3bd7-4b9e-9d4e-3c1e2f6a7b8c"]),
    ("abc-XYZ", ["abc-XYZ"]),
])
def test_match_keys_cover_hex_and_decimal_forms(given, keys):
    assert dlr.match_keys(given) == list(dict.fromkeys(keys))


def test_a_hex_id_made_of_digits_matches_its_decimal_receipt_and_back():
    stored = pdu.normalize_message_id("100")  # the SMSC meant 0x100
    assert stored in dlr.match_keys("256")
    stored = pdu.normalize_message_id("256")  # decimal in the answer, hex in the receipt
    assert stored in dlr.match_keys("100")


@pytest.mark.parametrize("states,expected", [
    (["DELIVERED", "DELIVERED"], "DELIVERED"),
    (["ACCEPTED", "ACCEPTED"], "ACCEPTED"),
    (["ACCEPTED", "DELIVERED"], "DELIVERED"),
    (["DELIVERED", "EXPIRED", "REJECTED"], "REJECTED"),
    (["UNKNOWN", "EXPIRED"], "EXPIRED"),
    (["DELIVERED", "sent"], None),
    (["queued"], None),
    ([], None),
])
def test_a_message_state_from_its_parts(states, expected):
    assert dlr.message_state(states) == expected


def test_the_customer_receipt_carries_our_id_and_goes_back_to_the_sender():
    submitted = datetime.datetime(2026, 11, 21, 12, 0, tzinfo=datetime.UTC)
    receipt = dlr.customer_receipt("our-id", "ACME", "447700900001", "UNDELIVERABLE", 0x45, submitted,
                                   submitted + datetime.timedelta(minutes=1), "Hello there, this is long",
                                   parts=2, delivered=1)
    assert (receipt.source, receipt.destination, receipt.esm_class, receipt.data_coding) == (
        "447700900001", "ACME", pdu.ESM_TYPE_DELIVERY_RECEIPT, 0)
    parsed = pdu.parse_receipt(receipt.content)
    assert (parsed.id, parsed.stat, parsed.sub, parsed.dlvrd, parsed.err, parsed.text) == (
        "our-id", "UNDELIV", 2, 1, "069", "Hello there, this is")
    assert receipt.tlvs == {"receipted_message_id": "our-id", "message_state": 5,
                            "network_error_code": b"\x03\x00\x45"}
    pdu.decode(pdu.DeliverSm(sequence=1, short_message=receipt.content, tlvs=receipt.tlvs).encode())
    plain = dlr.customer_receipt("x", "A", "1", "DELIVERED", None, None, None)
    assert "network_error_code" not in plain.tlvs and pdu.parse_receipt(plain.content).err == "000"
