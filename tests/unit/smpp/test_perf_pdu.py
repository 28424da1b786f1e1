"""The written-out codec of submit_sm, deliver_sm and their responses gives exactly
what the generic, layout-driven codec gives: the same octets, the same PDUs, the
same errors, for valid and for broken input."""

from __future__ import annotations

import random

import pytest

from switchd.smpp import pdu as p


def generic_encode(message: p.Pdu) -> bytes:
    return p.Pdu.encode(message)


def generic_decode(cls: type[p.Pdu], body: bytes, status: int = 0, sequence: int = 1) -> p.Pdu:
    # The generic body decoder, bypassing the class's own.
    return p.Pdu._decode_body.__func__(cls, body, status, sequence)


def outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except (p.FieldError, p.PduError, p._BodyError) as error:  # noqa: SLF001 - the codec's internal error
        return type(error).__name__, str(error), getattr(error, "status", None)


VALID = [
    dict(source_addr="BENCH", source_addr_ton=5, destination_addr="447700900001", dest_addr_ton=1,
         dest_addr_npi=1, registered_delivery=1, short_message=b"Your code is 493027."),
    dict(service_type="CMT", source_addr="", destination_addr="1", esm_class=0x40, data_coding=8,
         short_message=bytes(range(140)), validity_period="260101120000000+",
         schedule_delivery_time="000001000000000R", tlvs={"sar_msg_ref_num": 7, "sar_total_segments": 2,
                                                           "sar_segment_seqnum": 1, 0x1500: b"xy"}),
    dict(source_addr="\xff" * 20, destination_addr="9" * 20, short_message=b"", priority_flag=3, protocol_id=255,
         replace_if_present_flag=1, sm_default_msg_id=9, tlvs={"message_payload": b"p" * 600}),
    dict(esm_class=0x04, short_message=b"id:1 stat:DELIVRD", tlvs={"receipted_message_id": "A1", "message_state": 2}),
]

INVALID = [
    dict(source_addr="x" * 21),
    dict(destination_addr="a\x00b"),
    dict(service_type="toolong"),
    dict(source_addr="\u20ac"),
    dict(validity_period="bad"),
    dict(schedule_delivery_time="261301000000000+"),
    dict(esm_class=256),
    dict(data_coding=True),
    dict(registered_delivery=None),
    dict(short_message=b"x" * 255),
    dict(short_message="text"),
    dict(short_message=b"x", tlvs={"message_payload": b"y"}),
    dict(tlvs={"no_such_tlv": 1}),
    dict(tlvs={"sar_msg_ref_num": 70000}),
    dict(sequence=-1),
    dict(sequence=True),
    dict(status=1 << 32),
]


@pytest.mark.parametrize("cls", [p.SubmitSm, p.DeliverSm])
@pytest.mark.parametrize("values", VALID + INVALID)
def test_short_message_pdus_encode_as_the_generic_codec(cls, values):
    values = {"sequence": 42, **values}
    message = cls(**values)
    assert outcome(message.encode) == outcome(generic_encode, message)


@pytest.mark.parametrize("cls", [p.SubmitSm, p.DeliverSm])
@pytest.mark.parametrize("values", VALID)
def test_short_message_pdus_decode_as_the_generic_codec(cls, values):
    data = cls(sequence=9, **values).encode()
    body = data[p.HEADER_LENGTH:]
    assert outcome(cls._decode_body, body, 0, 9) == outcome(generic_decode, cls, body, 0, 9)
    assert p.decode(data) == cls(sequence=9, **values)
    # Every truncation and many corruptions of a good body: the same PDU or the same error.
    rng = random.Random(7)
    for cut in range(len(body)):
        broken = body[:cut]
        assert outcome(cls._decode_body, broken, 0, 9) == outcome(generic_decode, cls, broken, 0, 9)
    for _ in range(300):
        broken = bytearray(body)
        for _ in range(rng.randint(1, 3)):
            broken[rng.randrange(len(broken))] = rng.choice((0, 1, 0x30, 0xFF, rng.randrange(256)))
        broken = bytes(broken)
        assert outcome(cls._decode_body, broken, 0, 9) == outcome(generic_decode, cls, broken, 0, 9)


@pytest.mark.parametrize("cls", [p.SubmitSmResp, p.DeliverSmResp])
@pytest.mark.parametrize(
    "values",
    [
        {}, {"message_id": "6f1c0c7e-0000-4000-8000-000000000001"}, {"status": p.ESME_RTHROTTLED},
        {"status": p.ESME_RSYSERR, "message_id": "x"}, {"message_id": "m" * 64}, {"message_id": "m" * 65},
        {"message_id": "a\x00"}, {"message_id": "\u20ac"}, {"message_id": 5}, {"sequence": 1 << 32},
        {"tlvs": {"additional_status_info_text": "busy"}}, {"status": 8, "tlvs": {0x1400: b"\x01"}},
    ],
)
def test_message_id_responses_as_the_generic_codec(cls, values):
    message = cls(**{"sequence": 3, **values})
    assert outcome(message.encode) == outcome(generic_encode, message)
    if outcome(message.encode)[0] != "ok":
        return
    body = message.encode()[p.HEADER_LENGTH:]
    for cut in range(len(body) + 1):
        broken = body[:cut]
        assert outcome(cls._decode_body, broken, 0, 3) == outcome(generic_decode, cls, broken, 0, 3)
    assert outcome(cls._decode_body, b"abc", 0, 3) == outcome(generic_decode, cls, b"abc", 0, 3)
