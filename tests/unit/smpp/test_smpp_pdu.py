"""The SMPP 3.4 codec without sockets: vectors from the spec layout, limits,
TLVs, framing, receipts, and interop with smpplib (an independent codec)."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest
import smpplib.smpp
from hypothesis import given, settings
from hypothesis import strategies as st

from switchd.smpp import pdu
from switchd.smpp.pdu import (
    AlertNotification,
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    CancelSm,
    CancelSmResp,
    DataSm,
    DataSmResp,
    DeliverSm,
    DeliverSmResp,
    DistributionList,
    EnquireLink,
    EnquireLinkResp,
    FieldError,
    GenericNack,
    Outbind,
    PduError,
    PduReader,
    QuerySm,
    QuerySmResp,
    ReplaceSm,
    ReplaceSmResp,
    SmeAddress,
    SubmitMulti,
    SubmitMultiResp,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
    UnsuccessSme,
)


def header(length, command_id, status=0, sequence=1):
    return struct.pack(">IIII", length, command_id, status, sequence)


def frame(command_id, body, status=0, sequence=1):
    return header(16 + len(body), command_id, status, sequence) + body


def error_of(data):
    with pytest.raises(PduError) as info:
        pdu.decode(data)
    return info.value


# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------


def test_command_ids_and_statuses_have_their_spec_values():
    assert (pdu.BIND_TRANSMITTER, pdu.SUBMIT_SM, pdu.DELIVER_SM_RESP) == (2, 4, 0x80000005)
    assert (pdu.OUTBIND, pdu.ENQUIRE_LINK, pdu.SUBMIT_MULTI) == (0x0B, 0x15, 0x21)
    assert (pdu.ALERT_NOTIFICATION, pdu.DATA_SM_RESP, pdu.GENERIC_NACK) == (0x102, 0x80000103, 0x80000000)
    assert (pdu.ESME_RINVMSGLEN, pdu.ESME_RINVCMDLEN, pdu.ESME_RINVCMDID) == (1, 2, 3)
    assert (pdu.ESME_RSYSERR, pdu.ESME_RINVSRCADR, pdu.ESME_RINVSYSID) == (8, 0x0A, 0x0F)
    assert (pdu.ESME_RTHROTTLED, pdu.ESME_RMSGQFUL, pdu.ESME_RINVSYSTYP) == (0x58, 0x14, 0x53)
    assert (pdu.ESME_RX_T_APPN, pdu.ESME_RINVSCHED, pdu.ESME_RINVEXPIRY) == (0x64, 0x61, 0x62)
    assert pdu.ESME_RINVTLVSTREAM == pdu.ESME_RINVOPTPARSTREAM == 0xC0
    assert pdu.ESME_RMISSINGTLV == 0xC3 and pdu.ESME_RINVTLVLEN == 0xC2 and pdu.ESME_RINVTLVVAL == 0xC4
    assert pdu.ESME_RINVDCS == 0x104 and pdu.ESME_RUNKNOWNERR == 0xFF
    assert pdu.status_name(0x58) == "ESME_RTHROTTLED"
    assert pdu.status_name(0x400) == "0x00000400"
    assert pdu.COMMAND_NAMES[0x80000021] == "submit_multi_resp"
    assert len(pdu.COMMAND_NAMES) == 27


# --------------------------------------------------------------------------
# Byte-exact vectors written from the spec's layouts
# --------------------------------------------------------------------------


def test_enquire_link_and_generic_nack_vectors():
    assert EnquireLink(sequence=1).encode() == bytes.fromhex("00000010 00000015 00000000 00000001")
    assert EnquireLinkResp(sequence=1).encode() == bytes.fromhex("00000010 80000015 00000000 00000001")
    nack = GenericNack(sequence=0x7FFFFFFF, status=pdu.ESME_RINVCMDID)
    assert nack.encode() == bytes.fromhex("00000010 80000000 00000003 7fffffff")


def test_bind_transmitter_vector():
    bind = BindTransmitter(
        sequence=1, system_id="SMPP3TEST", password="secret08", system_type="SUBMIT1", addr_ton=1, addr_npi=1
    )
    expected = (
        bytes.fromhex("0000002f 00000002 00000000 00000001")
        + b"SMPP3TEST\x00secret08\x00SUBMIT1\x00"
        + b"\x34\x01\x01"  # interface_version 3.4, addr_ton, addr_npi
        + b"\x00"  # address_range empty
    )
    assert bind.encode() == expected
    assert pdu.decode(expected) == bind


def test_bind_resp_vector_with_sc_interface_version():
    resp = BindTransceiverResp(sequence=9, system_id="SMSC", tlvs={"sc_interface_version": 0x34})
    expected = bytes.fromhex("0000001a 80000009 00000000 00000009") + b"SMSC\x00" + bytes.fromhex("0210 0001 34")
    assert resp.encode() == expected
    assert pdu.decode(expected) == resp


def test_submit_sm_vector():
    submit = SubmitSm(
        sequence=2,
        service_type="CMT",
        source_addr_ton=5,
        source_addr="ACME",
        dest_addr_ton=1,
        dest_addr_npi=1,
        destination_addr="447700900123",
        registered_delivery=1,
        data_coding=0,
        short_message=b"Hello",
        tlvs={"user_message_reference": 0x1234},
    )
    body = (
        b"CMT\x00"
        + b"\x05\x00ACME\x00"
        + b"\x01\x01447700900123\x00"
        + b"\x00\x00\x00"  # esm_class, protocol_id, priority_flag
        + b"\x00\x00"  # schedule_delivery_time, validity_period (empty C-strings)
        + b"\x01\x00\x00\x00"  # registered_delivery, replace_if_present, data_coding, sm_default_msg_id
        + b"\x05Hello"
        + bytes.fromhex("0204 0002 1234")
    )
    expected = header(16 + len(body), 4, 0, 2) + body
    assert len(expected) == 0x3F  # 16 + 4 + 7 + 15 + 3 + 2 + 4 + 6 + 6
    assert submit.encode() == expected
    assert pdu.decode(expected) == submit


def test_submit_sm_resp_and_deliver_receipt_vectors():
    resp = SubmitSmResp(sequence=2, message_id="0A1B2C")
    assert resp.encode() == bytes.fromhex("00000017 80000004 00000000 00000002") + b"0A1B2C\x00"
    receipt = DeliverSm(
        sequence=77,
        source_addr="447700900123",
        destination_addr="ACME",
        esm_class=pdu.ESM_TYPE_DELIVERY_RECEIPT,
        short_message=b"id:0A1B2C stat:DELIVRD",
        tlvs={"receipted_message_id": "0A1B2C", "message_state": 2, "network_error_code": b"\x03\x00\x00"},
    )
    tlvs = bytes.fromhex("001e 0007") + b"0A1B2C\x00" + bytes.fromhex("0427 0001 02") + bytes.fromhex("0423 0003 030000")
    body = (
        b"\x00\x00\x00447700900123\x00\x00\x00ACME\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00"
        + b"\x16id:0A1B2C stat:DELIVRD"
        + tlvs
    )
    assert receipt.encode() == frame(5, body, sequence=77)


def test_submit_multi_vectors():
    multi = SubmitMulti(
        sequence=3,
        source_addr="ACME",
        dest_addresses=[SmeAddress("447700900001", ton=1, npi=1), DistributionList("staff")],
        short_message=b"hi",
    )
    body = (
        b"\x00\x00\x00ACME\x00"
        + b"\x02"  # number_of_dests
        + b"\x01\x01\x01447700900001\x00"  # dest_flag 1: SME address
        + b"\x02staff\x00"  # dest_flag 2: distribution list
        + b"\x00\x00\x00\x00\x00\x00\x00\x00\x00"
        + b"\x02hi"
    )
    assert multi.encode() == frame(0x21, body, sequence=3)
    assert pdu.decode(multi.encode()) == multi
    resp = SubmitMultiResp(sequence=3, message_id="m1", unsuccess_smes=[UnsuccessSme("447700900002", 0x0B, 1, 1)])
    body = b"m1\x00\x01" + b"\x01\x01447700900002\x00" + bytes.fromhex("0000000b")
    assert resp.encode() == frame(0x80000021, body, sequence=3)
    assert pdu.decode(resp.encode()) == resp


# --------------------------------------------------------------------------
# Round trip of every PDU
# --------------------------------------------------------------------------

SAMPLES = [
    BindTransmitter(sequence=1, system_id="esme", password="pw", system_type="VMA", addr_ton=1, address_range="^44"),
    BindReceiver(sequence=2, system_id="esme", password="pw", interface_version=0x33),
    BindTransceiver(sequence=3, system_id="a" * 15, password="b" * 8, system_type="c" * 12, address_range="d" * 40),
    BindTransmitterResp(sequence=1, system_id="smsc"),
    BindReceiverResp(sequence=2, system_id="smsc", tlvs={"sc_interface_version": 0x34}),
    BindTransceiverResp(sequence=3, status=pdu.ESME_RBINDFAIL),
    Outbind(sequence=4, system_id="smsc", password="pw"),
    Unbind(sequence=5),
    UnbindResp(sequence=5),
    EnquireLink(sequence=0x7FFFFFFF),
    EnquireLinkResp(sequence=0x7FFFFFFF),
    GenericNack(sequence=6, status=pdu.ESME_RINVCMDLEN),
    SubmitSm(
        sequence=7,
        source_addr="1" * 20,
        destination_addr="2" * 20,
        esm_class=0x40,
        schedule_delivery_time="240102030405000R",
        validity_period="240102030405648+",
        data_coding=8,
        short_message=bytes(range(254)),
        tlvs={"source_port": 9200, "destination_port": 2948, 0x1400: b"vendor", "alert_on_message_delivery": True},
    ),
    SubmitSmResp(sequence=7, message_id="x" * 64),
    SubmitSmResp(sequence=8, status=pdu.ESME_RTHROTTLED),
    DeliverSm(sequence=8, source_addr="44", destination_addr="55", short_message=b"", tlvs={"message_payload": b"p" * 1000}),
    DeliverSmResp(sequence=8),
    SubmitMulti(sequence=9, dest_addresses=[SmeAddress(str(n)) for n in range(254)], short_message=b"multi"),
    SubmitMultiResp(sequence=9, message_id="m", unsuccess_smes=[UnsuccessSme("1", 0x45)]),
    DataSm(
        sequence=10,
        source_addr="s" * 64,
        destination_addr="d" * 64,
        tlvs={
            "message_payload": b"data",
            "sar_msg_ref_num": 0xBEEF,
            "sar_total_segments": 3,
            "sar_segment_seqnum": 2,
            "callback_num": b"\x01\x01" + b"4477",
            "qos_time_to_live": 0xFFFFFFFF,
            "additional_status_info_text": "note",
        },
    ),
    DataSmResp(sequence=10, message_id="d1", tlvs={"delivery_failure_reason": 1}),
    QuerySm(sequence=11, message_id="q1", source_addr="44"),
    QuerySmResp(sequence=11, message_id="q1", final_date="240101000000000+", message_state=2, error_code=0),
    CancelSm(sequence=12, service_type="CMT", message_id="c1", source_addr="1", destination_addr="2"),
    CancelSmResp(sequence=12),
    ReplaceSm(
        sequence=13, message_id="r1", source_addr="1", validity_period="000001000000000R", short_message=b"new text"
    ),
    ReplaceSmResp(sequence=13),
    AlertNotification(sequence=14, source_addr="4" * 64, esme_addr="5" * 64, tlvs={"ms_availability_status": 1}),
]


def test_every_command_has_a_sample():
    assert {type(sample).command_id for sample in SAMPLES} == set(pdu.COMMAND_NAMES)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda sample: type(sample).__name__)
def test_round_trip(sample):
    data = sample.encode()
    assert struct.unpack(">I", data[:4])[0] == len(data)
    decoded = pdu.decode(data)
    assert type(decoded) is type(sample)
    assert decoded == sample
    assert decoded.encode() == data


def test_builders_take_spec_defaults():
    submit = SubmitSm(source_addr="1", destination_addr="2", short_message=b"x")
    assert (submit.esm_class, submit.data_coding, submit.registered_delivery, submit.service_type) == (0, 0, 0, "")
    assert BindTransceiver().interface_version == 0x34
    assert not submit.is_response and SubmitSmResp().is_response
    assert pdu.pdu_class(4) is SubmitSm and pdu.pdu_class(0x99) is None


def test_repr_hides_passwords():
    assert "hunter2" not in repr(BindTransmitter(system_id="esme", password="hunter2"))
    assert "hunter2" not in repr(Outbind(system_id="esme", password="hunter2"))


# --------------------------------------------------------------------------
# Length limits, both ways
# --------------------------------------------------------------------------

LIMITS = [
    (BindTransmitter, "system_id", 16, pdu.ESME_RINVSYSID),
    (BindReceiver, "password", 9, pdu.ESME_RINVPASWD),
    (BindTransceiver, "system_type", 13, pdu.ESME_RINVSYSTYP),
    (BindTransmitter, "address_range", 41, pdu.ESME_RBINDFAIL),
    (BindTransmitterResp, "system_id", 16, pdu.ESME_RINVSYSID),
    (Outbind, "password", 9, pdu.ESME_RINVPASWD),
    (SubmitSm, "service_type", 6, pdu.ESME_RINVSERTYP),
    (SubmitSm, "source_addr", 21, pdu.ESME_RINVSRCADR),
    (SubmitSm, "destination_addr", 21, pdu.ESME_RINVDSTADR),
    (DeliverSm, "source_addr", 21, pdu.ESME_RINVSRCADR),
    (DeliverSm, "destination_addr", 21, pdu.ESME_RINVDSTADR),
    (DataSm, "source_addr", 65, pdu.ESME_RINVSRCADR),
    (DataSm, "destination_addr", 65, pdu.ESME_RINVDSTADR),
    (SubmitSmResp, "message_id", 65, pdu.ESME_RINVMSGID),
    (QuerySm, "message_id", 65, pdu.ESME_RINVMSGID),
    (CancelSm, "destination_addr", 21, pdu.ESME_RINVDSTADR),
    (ReplaceSm, "source_addr", 21, pdu.ESME_RINVSRCADR),
    (AlertNotification, "esme_addr", 65, pdu.ESME_RINVDSTADR),
]


@pytest.mark.parametrize(("cls", "name", "max_len", "status"), LIMITS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_c_string_limits(cls, name, max_len, status):
    fits = cls(sequence=4, **{name: "7" * (max_len - 1)})
    assert pdu.decode(fits.encode()) == fits
    with pytest.raises(FieldError) as info:
        cls(**{name: "7" * max_len}).encode()
    assert info.value.field == name and info.value.status == status
    # The same value forced onto the wire: one octet too long for the field.
    wire = fits.encode()
    at = wire.index(b"7" * (max_len - 1))
    tampered = wire[:at] + b"7" + wire[at:]
    tampered = struct.pack(">I", len(tampered)) + tampered[4:]
    error = error_of(tampered)
    assert error.status == status
    assert error.command_id == cls.command_id and error.sequence == 4
    assert name in error.reason


def test_strings_refuse_nul_and_non_octet_characters_and_never_truncate():
    with pytest.raises(FieldError):
        SubmitSm(source_addr="12\x0034").encode()
    with pytest.raises(FieldError):
        SubmitSm(source_addr="€").encode()
    with pytest.raises(FieldError):
        SubmitSm(source_addr=1234).encode()
    # Octets above 0x7F round-trip as Latin-1 characters.
    latin = SubmitSm(source_addr="Zoë")
    assert pdu.decode(latin.encode()).source_addr == "Zoë"


def test_short_message_length_rules():
    SubmitSm(short_message=b"x" * 254).encode()
    with pytest.raises(FieldError) as info:
        SubmitSm(short_message=b"x" * 255).encode()
    assert info.value.status == pdu.ESME_RINVMSGLEN
    body = SubmitSm(short_message=b"abc").encode()[16:]
    # sm_length claims more than the body holds
    assert error_of(frame(4, body[:-4] + b"\x09abc")).status == pdu.ESME_RINVMSGLEN
    # sm_length 255 is over the spec's 254
    assert error_of(frame(4, body[:-4] + b"\xff" + b"x" * 255)).status == pdu.ESME_RINVMSGLEN
    # short_message and message_payload together
    both = SubmitSm(short_message=b"a", tlvs={"message_payload": b"b"})
    with pytest.raises(FieldError):
        both.encode()
    wire = frame(4, body + bytes.fromhex("0424 0001 62"))
    assert error_of(wire).status == pdu.ESME_RINVMSGLEN


def test_integers_out_of_range_are_field_errors():
    with pytest.raises(FieldError):
        SubmitSm(esm_class=256).encode()
    with pytest.raises(FieldError):
        SubmitSm(data_coding=-1).encode()
    with pytest.raises(FieldError):
        EnquireLink(sequence=1 << 32).encode()
    with pytest.raises(FieldError):
        SubmitMultiResp(unsuccess_smes=[UnsuccessSme("1", 1 << 32)]).encode()


def test_submit_multi_destination_rules():
    with pytest.raises(FieldError) as info:
        SubmitMulti(dest_addresses=[]).encode()
    assert info.value.status == pdu.ESME_RINVNUMDESTS
    with pytest.raises(FieldError):
        SubmitMulti(dest_addresses=[SmeAddress("1")] * 255).encode()
    with pytest.raises(FieldError):
        SubmitMulti(dest_addresses=["447700900001"]).encode()
    good = SubmitMulti(dest_addresses=[DistributionList("x" * 20)]).encode()
    with pytest.raises(FieldError) as info:
        SubmitMulti(dest_addresses=[DistributionList("x" * 21)]).encode()
    assert info.value.status == pdu.ESME_RINVDLNAME
    body = good[16:]
    at = body.index(b"\x01\x02x")  # number_of_dests 1, dest_flag 2
    assert error_of(frame(0x21, body[:at] + b"\x00" + body[at + 1 :])).status == pdu.ESME_RINVNUMDESTS
    assert error_of(frame(0x21, body[:at] + b"\x01\x03" + body[at + 2 :])).status == pdu.ESME_RINVDESTFLAG
    too_long = body[:at] + b"\x01\x02" + b"x" * 21 + body[at + 22 :]
    assert error_of(frame(0x21, too_long)).status == pdu.ESME_RINVDLNAME


# --------------------------------------------------------------------------
# Times
# --------------------------------------------------------------------------


def test_time_fields_are_validated():
    assert pdu.check_time("") == ""
    assert pdu.check_time("240229235959948-") == "absolute"
    assert pdu.check_time("000007000000000R") == "relative"
    for bad in ("240230000000000+", "241301000000000+", "240101240000000+", "240101000000049+", "2401010000000+",
                "24010100000000A+", "240101000000000*"):
        with pytest.raises(ValueError):
            pdu.check_time(bad)
    with pytest.raises(FieldError) as info:
        SubmitSm(schedule_delivery_time="tomorrow").encode()
    assert info.value.status == pdu.ESME_RINVSCHED
    with pytest.raises(FieldError) as info:
        SubmitSm(validity_period="241301000000000+").encode()
    assert info.value.status == pdu.ESME_RINVEXPIRY
    good = SubmitSm(validity_period="240101000000000+").encode()
    bad = good.replace(b"240101000000000+", b"241301000000000+")
    assert error_of(bad).status == pdu.ESME_RINVEXPIRY
    bad = SubmitSm(schedule_delivery_time="240101000000000+").encode().replace(b"240101", b"249901")
    assert error_of(bad).status == pdu.ESME_RINVSCHED


def test_times_convert_to_utc():
    now = datetime(2024, 1, 31, 12, 0, tzinfo=UTC)
    assert pdu.parse_time("", now) is None
    # 14:00 local at UTC+2 (8 quarter hours) is 12:00 UTC
    assert pdu.parse_time("240615140000008+", now) == datetime(2024, 6, 15, 12, 0, tzinfo=UTC)
    assert pdu.parse_time("240615100000008-", now) == datetime(2024, 6, 15, 12, 0, tzinfo=UTC)
    assert pdu.parse_time("000001000000000R", now) == datetime(2024, 2, 1, 12, 0, tzinfo=UTC)
    assert pdu.parse_time("000100000000000R", now) == datetime(2024, 2, 29, 12, 0, tzinfo=UTC)
    assert pdu.parse_time("000000013000000R", now) == datetime(2024, 1, 31, 13, 30, tzinfo=UTC)
    assert pdu.parse_time("010000000000000R", now) == datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
    assert pdu.format_time(datetime(2024, 6, 15, 12, 0, 5, 300000, tzinfo=UTC)) == "240615120005300+"
    with pytest.raises(ValueError):
        pdu.format_time(datetime(2024, 1, 1))


# --------------------------------------------------------------------------
# TLVs
# --------------------------------------------------------------------------


def test_tlvs_decode_to_typed_values_by_name():
    body = DataSm().encode()[16:] + (
        bytes.fromhex("020c 0002 0102")  # sar_msg_ref_num
        + bytes.fromhex("020e 0001 03")
        + bytes.fromhex("020f 0001 01")
        + bytes.fromhex("001e 0004") + b"abc\x00"
        + bytes.fromhex("0423 0003 010203")
        + bytes.fromhex("130c 0000")
        + bytes.fromhex("0426 0001 01")
        + bytes.fromhex("0019 0001 00")
        + bytes.fromhex("0381 0005 0101343434")
        + bytes.fromhex("020d 0001 02")
    )
    decoded = pdu.decode(frame(0x103, body))
    assert decoded.tlvs == {
        "sar_msg_ref_num": 0x0102,
        "sar_total_segments": 3,
        "sar_segment_seqnum": 1,
        "receipted_message_id": "abc",
        "network_error_code": b"\x01\x02\x03",
        "alert_on_message_delivery": True,
        "more_messages_to_send": 1,
        "payload_type": 0,
        "callback_num": b"\x01\x01444",
        "language_indicator": 2,
    }


def test_unknown_tlvs_are_kept_raw_and_round_trip_in_order():
    body = SubmitSm().encode()[16:] + bytes.fromhex("1401 0003 aabbcc") + bytes.fromhex("020a 0002 0050")
    body += bytes.fromhex("fffe 0000")
    wire = frame(4, body)
    decoded = pdu.decode(wire)
    assert decoded.tlvs == {0x1401: b"\xaa\xbb\xcc", "source_port": 80, 0xFFFE: b""}
    assert decoded.encode() == wire


@pytest.mark.parametrize(
    ("tlv", "status"),
    [
        (bytes.fromhex("020c 0001 01"), pdu.ESME_RINVTLVLEN),  # int16 in one octet
        (bytes.fromhex("0427 0002 0001"), pdu.ESME_RINVTLVLEN),
        (bytes.fromhex("0423 0002 0102"), pdu.ESME_RINVTLVLEN),  # network_error_code is 3
        (bytes.fromhex("130c 0001 00"), pdu.ESME_RINVTLVLEN),  # a flag has no value
        (bytes.fromhex("001e 0042") + b"x" * 65 + b"\x00", pdu.ESME_RINVTLVLEN),  # over 65
        (bytes.fromhex("001e 0004") + b"a\x00b\x00", pdu.ESME_RINVTLVVAL),
        (bytes.fromhex("0381 0002 0101"), pdu.ESME_RINVTLVLEN),  # callback_num is 4-19
        (bytes.fromhex("020c 0005 0102"), pdu.ESME_RINVTLVSTREAM),  # runs past the body
        (bytes.fromhex("020c00"), pdu.ESME_RINVTLVSTREAM),  # stray octets
        (bytes.fromhex("020a 0002 0050 020a 0002 0051"), pdu.ESME_RINVTLVSTREAM),  # repeated
    ],
)
def test_bad_tlvs_get_their_status(tlv, status):
    error = error_of(frame(4, SubmitSm().encode()[16:] + tlv, sequence=42))
    assert error.status == status
    assert error.sequence == 42 and error.command_id == pdu.SUBMIT_SM
    assert error.response() == SubmitSmResp(sequence=42, status=status)


def test_c_string_tlv_without_its_nul_is_accepted():
    body = DeliverSm().encode()[16:] + bytes.fromhex("001e 0003") + b"abc"
    assert pdu.decode(frame(5, body)).tlvs == {"receipted_message_id": "abc"}


def test_tlv_encoding_errors():
    for tlvs in (
        {"no_such_tlv": 1},
        {"sar_msg_ref_num": 0x10000},
        {"sar_total_segments": "3"},
        {"receipted_message_id": "x" * 65},
        {"network_error_code": b"\x01"},
        {"alert_on_message_delivery": False},
        {0x1400: "not bytes"},
        {0x10000: b""},
        {"message_payload": b"x" * 0x10000},
    ):
        with pytest.raises(FieldError):
            SubmitSm(tlvs=tlvs).encode()
    with pytest.raises(FieldError) as info:
        EnquireLink(tlvs={"source_port": 1}).encode()
    assert info.value.status == pdu.ESME_ROPTPARNOTALLWD


def test_tlv_table_covers_smpp_34():
    names = {spec.name for spec in pdu.TLV_SPECS}
    assert len(names) == len(pdu.TLV_SPECS) == 44
    assert {spec.tag for spec in pdu.TLV_SPECS} == set(pdu.TLV_BY_TAG)
    assert pdu.TLV_BY_NAME["message_payload"].tag == 0x0424
    assert pdu.TLV_BY_NAME["its_session_info"].tag == 0x1383


# --------------------------------------------------------------------------
# Bodies that do not parse
# --------------------------------------------------------------------------


def test_trailing_garbage_and_truncated_bodies():
    assert error_of(frame(0x15, b"\x00")).status == pdu.ESME_RINVCMDLEN  # enquire_link has no body
    assert error_of(frame(0x06, b"junk")).status == pdu.ESME_RINVCMDLEN
    bind = BindTransmitter(system_id="esme").encode()
    assert error_of(frame(2, bind[16:] + b"\x00")).status == pdu.ESME_RINVCMDLEN  # no TLVs in a bind
    assert error_of(frame(2, bind[16:-3])).status == pdu.ESME_RINVCMDLEN  # ends before addr_ton
    assert error_of(frame(2, b"esm")).status == pdu.ESME_RINVCMDLEN  # ends inside system_id
    assert error_of(frame(4, SubmitSm().encode()[16:] + b"\x00\x01")).status == pdu.ESME_RINVTLVSTREAM
    assert error_of(b"\x00" * 10).status == pdu.ESME_RINVCMDLEN
    assert error_of(header(20, 0x15)).status == pdu.ESME_RINVCMDLEN  # length says 20, 16 given


def test_empty_response_bodies_are_accepted_and_error_responses_carry_none():
    assert pdu.decode(frame(0x80000005, b"")) == DeliverSmResp(sequence=1)
    assert pdu.decode(frame(0x80000004, b"", status=0x58)) == SubmitSmResp(sequence=1, status=0x58)
    assert SubmitSmResp(sequence=1, status=0x58).encode() == header(16, 0x80000004, 0x58)
    assert BindTransmitterResp(sequence=1, status=pdu.ESME_RINVPASWD).encode() == header(16, 0x80000002, 0x0E)
    # An error response with something to say keeps its body (never drop a value).
    kept = DataSmResp(sequence=1, status=pdu.ESME_RDELIVERYFAILURE, tlvs={"delivery_failure_reason": 2})
    assert pdu.decode(kept.encode()) == kept
    assert len(SubmitSmResp(sequence=1, status=0x58, message_id="m").encode()) == 18
    # but requests are never short-cut
    assert error_of(frame(4, b"")).status == pdu.ESME_RINVCMDLEN


def test_unknown_command_id():
    error = error_of(frame(0x0000_0104, b"whatever", sequence=9))
    assert error.status == pdu.ESME_RINVCMDID and error.sequence == 9 and not error.fatal
    assert error.response() == GenericNack(sequence=9, status=pdu.ESME_RINVCMDID)


# --------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------


def test_response_for_builds_the_matching_resp():
    submit = SubmitSm(sequence=31, source_addr="1", destination_addr="2")
    assert pdu.response_for(submit, message_id="abc") == SubmitSmResp(sequence=31, message_id="abc")
    assert pdu.response_for(submit, pdu.ESME_RTHROTTLED) == SubmitSmResp(sequence=31, status=0x58)
    assert pdu.response_for(BindReceiver(sequence=2), system_id="smsc") == BindReceiverResp(sequence=2, system_id="smsc")
    assert pdu.response_for(EnquireLink(sequence=3)) == EnquireLinkResp(sequence=3)
    assert pdu.response_for(Unbind(sequence=4)) == UnbindResp(sequence=4)
    assert type(pdu.response_for(QuerySm())) is QuerySmResp
    assert type(pdu.response_for(CancelSm())) is CancelSmResp
    assert type(pdu.response_for(ReplaceSm())) is ReplaceSmResp
    assert type(pdu.response_for(DataSm())) is DataSmResp
    assert type(pdu.response_for(SubmitMulti())) is SubmitMultiResp
    assert type(pdu.response_for(DeliverSm())) is DeliverSmResp
    assert type(pdu.response_for(BindTransmitter())) is BindTransmitterResp
    assert type(pdu.response_for(BindTransceiver())) is BindTransceiverResp
    # no *_resp exists: generic_nack
    assert pdu.response_for(AlertNotification(sequence=5), pdu.ESME_RINVCMDID) == GenericNack(sequence=5, status=3)
    assert type(pdu.response_for(Outbind())) is GenericNack
    assert type(pdu.response_for(SubmitSmResp())) is GenericNack


def test_pdu_error_response_for_a_bad_bind():
    wire = BindTransmitter(sequence=12, system_id="x" * 15).encode().replace(b"x" * 15, b"x" * 16)
    wire = struct.pack(">I", len(wire)) + wire[4:]
    error = error_of(wire)
    assert error.response() == BindTransmitterResp(sequence=12, status=pdu.ESME_RINVSYSID)
    assert "ESME_RINVSYSID" in repr(error)
    broken_nack = error_of(frame(0x80000000, b"x"))
    assert broken_nack.response() is None


# --------------------------------------------------------------------------
# Stream framing
# --------------------------------------------------------------------------


def test_reader_frames_pdus_cut_anywhere():
    stream = b"".join(sample.encode() for sample in SAMPLES)
    for step in (1, 2, 3, 7, 16, 100, len(stream)):
        reader = PduReader()
        got = []
        for at in range(0, len(stream), step):
            got.extend(reader.feed(stream[at : at + step]))
        assert got == SAMPLES
        assert reader.buffered == 0


def test_reader_reports_bad_pdus_and_goes_on():
    reader = PduReader()
    good = EnquireLink(sequence=1).encode()
    unknown = frame(0x77, b"", sequence=2)
    bad_body = frame(0x15, b"\x00", sequence=3)
    got = reader.feed(good + unknown + bad_body + good[:5])
    assert got[0] == EnquireLink(sequence=1)
    assert isinstance(got[1], PduError) and got[1].status == pdu.ESME_RINVCMDID and got[1].sequence == 2
    assert isinstance(got[2], PduError) and got[2].status == pdu.ESME_RINVCMDLEN and not got[2].fatal
    assert reader.feed(good[5:]) == [EnquireLink(sequence=1)]


@pytest.mark.parametrize("length", [0, 15, 4097, 0xFFFFFFFF])
def test_reader_framing_errors_are_fatal(length):
    reader = PduReader(max_length=4096)
    got = reader.feed(EnquireLink(sequence=1).encode() + header(length, 4, 0, 99) + b"rest")
    assert got[0] == EnquireLink(sequence=1)
    error = got[1]
    assert isinstance(error, PduError) and error.fatal and error.status == pdu.ESME_RINVCMDLEN
    assert error.sequence == 99
    assert error.response() == GenericNack(sequence=99, status=pdu.ESME_RINVCMDLEN)
    assert reader.failed
    assert reader.feed(EnquireLink(sequence=2).encode()) == []


def test_reader_framing_error_seen_before_the_whole_header():
    reader = PduReader()
    (error,) = reader.feed(b"\x00\x00\x00\x05")
    assert error.fatal and error.sequence == 0 and error.command_id is None
    assert error.response() == GenericNack(sequence=0, status=pdu.ESME_RINVCMDLEN)


def test_reader_accepts_a_pdu_of_exactly_max_length():
    submit = SubmitSm(tlvs={"message_payload": b"x" * 100})
    size = len(submit.encode())
    assert PduReader(max_length=size).feed(submit.encode()) == [submit]
    assert PduReader(max_length=size - 1).feed(submit.encode())[0].fatal
    with pytest.raises(ValueError):
        PduReader(max_length=15)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_reader_never_raises_on_random_bytes(chunks):
    reader = PduReader(max_length=1024)
    for chunk in chunks:
        for item in reader.feed(chunk):
            assert isinstance(item, (pdu.Pdu, PduError))


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.sampled_from(sorted(pdu.COMMAND_NAMES) + [0x77]), st.binary(max_size=80)), max_size=8),
    st.integers(1, 50),
)
def test_reader_survives_well_framed_random_bodies(frames, step):
    stream = b"".join(frame(command_id, body, sequence=n) for n, (command_id, body) in enumerate(frames))
    reader = PduReader()
    got = []
    for at in range(0, len(stream), step):
        got.extend(reader.feed(stream[at : at + step]))
    assert len(got) == len(frames)  # one result per frame, good or bad: the stream never desyncs
    assert [item.sequence for item in got] == list(range(len(frames)))
    assert not reader.failed and reader.buffered == 0


@settings(max_examples=500)
@given(st.sampled_from(sorted(pdu.COMMAND_NAMES)), st.binary(max_size=120), st.integers(0, 0xFFFFFFFF))
def test_any_body_decodes_or_raises_pdu_error(command_id, body, sequence):
    try:
        decoded = pdu.decode(frame(command_id, body, sequence=sequence))
    except PduError as error:
        assert error.command_id == command_id and error.sequence == sequence
        assert error.status in pdu.STATUS_NAMES
    else:
        assert decoded.command_id == command_id


@settings(max_examples=300)
@given(
    st.sampled_from([SubmitSm, DeliverSm]),
    st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=255), max_size=20),
    st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=255), max_size=20),
    st.integers(0, 255),
    st.binary(max_size=254),
    st.dictionaries(st.integers(0x1400, 0x3FFF), st.binary(max_size=40), max_size=3),
)
def test_message_round_trip_property(cls, source, destination, esm_class, message, raw_tlvs):
    message_pdu = cls(
        sequence=1, source_addr=source, destination_addr=destination, esm_class=esm_class, short_message=message,
        tlvs=dict(raw_tlvs),
    )
    assert pdu.decode(message_pdu.encode()) == message_pdu


# --------------------------------------------------------------------------
# esm_class and registered_delivery
# --------------------------------------------------------------------------


def test_esm_class_bits():
    assert pdu.has_udhi(0x40) and pdu.has_udhi(0x43) and not pdu.has_udhi(0x04)
    assert pdu.is_delivery_receipt(0x04) and pdu.is_delivery_receipt(0x44)
    assert not pdu.is_delivery_receipt(0x08) and not pdu.is_delivery_receipt(0x24)
    assert pdu.is_intermediate_notification(0x20) and not pdu.is_intermediate_notification(0x04)
    assert pdu.message_type(0xC7) == pdu.ESM_TYPE_DELIVERY_RECEIPT


@pytest.mark.parametrize(
    ("registered_delivery", "state", "wanted"),
    [
        (0, "DELIVRD", False),
        (0, "UNDELIV", False),
        (1, "DELIVRD", True),
        (1, "UNDELIV", True),
        (1, pdu.EXPIRED, True),
        (1, "ENROUTE", False),
        (2, "DELIVRD", False),
        (2, "undeliv", True),
        (2, pdu.REJECTED, True),
        (2, "EXPIRED", True),
        (2, "ACCEPTD", False),
        (3, "DELIVRD", True),
        (3, "UNDELIV", False),
        (0x11, "DELIVRD", True),  # intermediate bit does not change final receipts
        (0x1C, "DELIVRD", False),  # SME acks only
    ],
)
def test_wants_receipt(registered_delivery, state, wanted):
    assert pdu.wants_receipt(registered_delivery, state) is wanted


def test_wants_receipt_refuses_unknown_states():
    with pytest.raises(ValueError):
        pdu.wants_receipt(1, "BOGUS")
    with pytest.raises(ValueError):
        pdu.wants_receipt(1, 42)
    assert pdu.wants_intermediate(0x10) and not pdu.wants_intermediate(0x01)


# --------------------------------------------------------------------------
# Delivery receipts and message ids
# --------------------------------------------------------------------------


def test_format_receipt_follows_appendix_b():
    text = pdu.format_receipt(
        "0A1B2C", 1, 1, datetime(2024, 3, 9, 14, 5, 33), datetime(2024, 3, 9, 14, 6, 1), "DELIVRD", 0,
        "Hello there, this is longer than twenty",
    )
    assert text == (
        "id:0A1B2C sub:001 dlvrd:001 submit date:2403091405 done date:2403091406 "
        "stat:DELIVRD err:000 text:Hello there, this is"
    )
    with_seconds = pdu.format_receipt("7", 1, 0, None, datetime(2024, 3, 9, 14, 6, 1), pdu.UNDELIVERABLE, "0x1F",
                                      seconds=True)
    assert with_seconds == (
        "id:7 sub:001 dlvrd:000 submit date:000000000000 done date:240309140601 stat:UNDELIV err:0x1F text:"
    )
    parsed = pdu.parse_receipt(text)
    assert parsed.id == "0A1B2C" and parsed.stat == "DELIVRD" and parsed.message_state == pdu.DELIVERED
    assert parsed.submit_date == datetime(2024, 3, 9, 14, 5) and parsed.text == "Hello there, this is"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            (
                "id:1234567890 sub:001 dlvrd:001 submit date:1901011200 done date:1901011201 stat:DELIVRD "
                "err:000 text:Hi: there"
            ),
            pdu.Receipt("1234567890", "DELIVRD", 1, 1, datetime(2019, 1, 1, 12, 0), datetime(2019, 1, 1, 12, 1),
                        "000", "Hi: there"),
        ),
        (
            "ID:abc SUB:001 DLVRD:000 SUBMIT_DATE:190101120005 DONE_DATE:190101120109 STAT:undeliv ERR:001",
            pdu.Receipt("abc", "UNDELIV", 1, 0, datetime(2019, 1, 1, 12, 0, 5), datetime(2019, 1, 1, 12, 1, 9),
                        "001", None),
        ),
        (
            (
                "id:5f3e9a1c-0b7d-4c1e-9a55-0123456789ab submitdate:20190101120005 donedate:bogus "
                "stat:DELIVERED Text:"
            ),
            pdu.Receipt("5f3e9a1c-0b7d-4c1e-9a55-0123456789ab", "DELIVRD", None, None,
                        datetime(2019, 1, 1, 12, 0, 5), None, None, ""),
        ),
        (
            b"id:77 sub:1 dlvrd:1 stat:EXPIRED err:0x5a",
            pdu.Receipt("77", "EXPIRED", 1, 1, None, None, "0x5a", None),
        ),
    ],
)
def test_parse_receipt_variants(text, expected):
    assert pdu.parse_receipt(text) == expected


def test_parse_receipt_refuses_ordinary_text():
    with pytest.raises(pdu.ReceiptError):
        pdu.parse_receipt("hello, no receipt here")
    with pytest.raises(pdu.ReceiptError):
        pdu.parse_receipt("id:123 sub:001")  # no stat
    assert pdu.parse_receipt("id:1 stat:WEIRD").message_state is None


@pytest.mark.parametrize(
    ("forms", "key"),
    [
        (("0A1B2C", "0a1b2c", "662316", "0662316", " 662316 "), "662316"),
        (("000123", "123", "0123"), "123"),
        (("7B",), "123"),  # hex 7B is decimal 123: the same message
        (("5F3E9A1C-0B7D-4C1E-9A55-0123456789AB", "5f3e9a1c-0b7d-4c1e-9a55-0123456789ab"),
         "5f3e9a1c-0b7d-4c1e-9a55-0123456789ab"),
        (("MSG-AbC",), "MSG-AbC"),  # other ids stay as they are: case may matter
        (("",), ""),
    ],
)
def test_normalize_message_id(forms, key):
    assert {pdu.normalize_message_id(form) for form in forms} == {key}


def test_normalize_message_id_keeps_distinct_ids_apart():
    assert pdu.normalize_message_id("msg-a") != pdu.normalize_message_id("MSG-A")
    assert pdu.normalize_message_id("100") != pdu.normalize_message_id("256")  # the documented ambiguity


# --------------------------------------------------------------------------
# Interop with smpplib 2.2.4 (an independent implementation)
# --------------------------------------------------------------------------


class SmpplibClient:
    """What smpplib asks of a client when building or parsing a PDU: sequence numbers."""

    def __init__(self, sequence=0):
        self.sequence = sequence

    def next_sequence(self):
        return self.sequence


def smpplib_bytes(command, sequence, **values):
    return smpplib.smpp.make_pdu(command, client=SmpplibClient(sequence), **values).generate()


def smpplib_parse(data):
    return smpplib.smpp.parse_pdu(data, client=SmpplibClient())


def test_we_decode_what_smpplib_builds():
    bind = pdu.decode(
        smpplib_bytes("bind_transceiver", sequence=1, system_id="esme", password="pw", system_type="", addr_ton=1)
    )
    assert bind == BindTransceiver(sequence=1, system_id="esme", password="pw", addr_ton=1)

    submit = pdu.decode(
        smpplib_bytes(
            "submit_sm", sequence=2, source_addr="ACME", destination_addr="447700900123", source_addr_ton=5,
            dest_addr_ton=1, dest_addr_npi=1, esm_class=0x40, data_coding=8, registered_delivery=1,
            short_message=b"\x05\x00\x03\x2a\x02\x01" + "Привет".encode("utf-16-be"),
            sar_msg_ref_num=0x2A, user_message_reference=7, destination_port=2948,
        )
    )
    assert isinstance(submit, SubmitSm)
    assert (submit.source_addr, submit.destination_addr, submit.esm_class) == ("ACME", "447700900123", 0x40)
    assert submit.short_message[6:].decode("utf-16-be") == "Привет"
    assert submit.tlvs == {"user_message_reference": 7, "destination_port": 2948, "sar_msg_ref_num": 0x2A}

    receipt = pdu.decode(
        smpplib_bytes(
            "deliver_sm", sequence=3, source_addr="447700900123", destination_addr="ACME", esm_class=4,
            short_message=b"id:42 stat:DELIVRD err:000", receipted_message_id="42", message_state=2,
            network_error_code=b"\x03\x00\x01",
        )
    )
    assert receipt.tlvs == {"network_error_code": b"\x03\x00\x01", "message_state": 2, "receipted_message_id": "42"}
    assert pdu.parse_receipt(receipt.short_message).id == "42"

    data_sm = pdu.decode(
        smpplib_bytes("data_sm", sequence=4, source_addr="s" * 20, destination_addr="d", message_payload=b"x" * 300)
    )
    assert data_sm.tlvs == {"message_payload": b"x" * 300} and data_sm.source_addr == "s" * 20

    assert pdu.decode(smpplib_bytes("enquire_link", sequence=5)) == EnquireLink(sequence=5)
    assert pdu.decode(smpplib_bytes("unbind", sequence=6)) == Unbind(sequence=6)
    assert pdu.decode(smpplib_bytes("query_sm", sequence=7, message_id="q", source_addr="1")) == QuerySm(
        sequence=7, message_id="q", source_addr="1"
    )
    alert = pdu.decode(
        smpplib_bytes("alert_notification", sequence=8, source_addr="1", esme_addr="2", ms_availability_status=1)
    )
    assert alert == AlertNotification(sequence=8, source_addr="1", esme_addr="2", tlvs={"ms_availability_status": 1})
    submit_resp = pdu.decode(smpplib_bytes("submit_sm_resp", sequence=2, message_id="0A1B2C"))
    assert submit_resp == SubmitSmResp(sequence=2, message_id="0A1B2C")
    nack = pdu.decode(smpplib_bytes("generic_nack", sequence=9, status=3))
    assert nack == GenericNack(sequence=9, status=3)


def test_smpplib_decodes_what_we_build():
    parsed = smpplib_parse(
        BindTransmitter(sequence=1, system_id="esme", password="pw", system_type="VMA", addr_ton=1).encode()
    )
    assert (parsed.command, parsed.sequence, parsed.system_id, parsed.password) == ("bind_transmitter", 1, b"esme", b"pw")
    assert parsed.interface_version == 0x34 and parsed.addr_ton == 1

    parsed = smpplib_parse(
        BindTransmitterResp(sequence=1, system_id="smsc", tlvs={"sc_interface_version": 0x34}).encode()
    )
    assert (parsed.command, parsed.system_id, parsed.sc_interface_version) == ("bind_transmitter_resp", b"smsc", 0x34)

    submit = SubmitSm(
        sequence=2, source_addr="ACME", destination_addr="447700900123", dest_addr_ton=1, registered_delivery=1,
        data_coding=8, short_message="Привет".encode("utf-16-be"),
        tlvs={"sar_msg_ref_num": 513, "sar_total_segments": 2, "sar_segment_seqnum": 1},
    )
    parsed = smpplib_parse(submit.encode())
    assert (parsed.command, parsed.sequence, parsed.source_addr, parsed.destination_addr) == (
        "submit_sm", 2, b"ACME", b"447700900123"
    )
    assert parsed.sm_length == 12 and parsed.short_message.decode("utf-16-be") == "Привет"
    assert (parsed.sar_msg_ref_num, parsed.sar_total_segments, parsed.sar_segment_seqnum) == (513, 2, 1)
    assert parsed.registered_delivery == 1 and parsed.data_coding == 8

    receipt = DeliverSm(
        sequence=3, source_addr="447700900123", destination_addr="ACME", esm_class=4,
        short_message=pdu.format_receipt("42", 1, 1, None, None, "DELIVRD", 0).encode("ascii"),
        tlvs={"receipted_message_id": "42", "message_state": 2, "network_error_code": b"\x03\x00\x01"},
    )
    parsed = smpplib_parse(receipt.encode())
    assert parsed.command == "deliver_sm" and parsed.esm_class == 4
    assert (parsed.receipted_message_id, parsed.message_state, parsed.network_error_code) == (
        b"42", 2, b"\x03\x00\x01"
    )
    assert pdu.parse_receipt(parsed.short_message).stat == "DELIVRD"

    parsed = smpplib_parse(SubmitSmResp(sequence=2, message_id="0A1B2C").encode())
    assert (parsed.command, parsed.message_id) == ("submit_sm_resp", b"0A1B2C")
    parsed = smpplib_parse(SubmitSmResp(sequence=2, status=pdu.ESME_RTHROTTLED).encode())
    assert parsed.status == pdu.ESME_RTHROTTLED and parsed.is_error()
    parsed = smpplib_parse(DataSm(sequence=4, source_addr="1", tlvs={"message_payload": b"p" * 300}).encode())
    assert parsed.message_payload == b"p" * 300
    parsed = smpplib_parse(
        QuerySmResp(sequence=5, message_id="q", final_date="240101000000000+", message_state=2).encode()
    )
    assert (parsed.message_id, parsed.final_date, parsed.message_state) == (b"q", b"240101000000000+", 2)
    for ours in (EnquireLink(sequence=6), EnquireLinkResp(sequence=6), Unbind(sequence=6), UnbindResp(sequence=6),
                 DeliverSmResp(sequence=6), GenericNack(sequence=6, status=3)):
        parsed = smpplib_parse(ours.encode())
        assert (parsed.command, parsed.sequence, parsed.status) == (ours.command_name, 6, ours.status)
