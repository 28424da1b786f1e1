"""RTP headers and RFC 4733 payloads, byte by byte."""

import pytest

from switchd.media.rtp import (
    RtpError,
    TelephoneEvent,
    build_rtp,
    build_telephone_event,
    digit_event,
    event_digit,
    is_rtcp,
    parse_rtp,
    parse_telephone_event,
    ssrc_of,
)

# A G.711 packet as a phone sends it: V=2, M=1, PT=0, seq 0x1234, ts 0xdeadbeef, SSRC 0x01020304.
PCMU = bytes.fromhex("8080 1234 deadbeef 01020304") + b"\xff" * 160


def test_fixed_header_fields():
    h = parse_rtp(PCMU)
    assert (h.version, h.padding, h.extension, h.csrc_count, h.marker) == (2, False, False, 0, True)
    assert (h.payload_type, h.sequence, h.timestamp, h.ssrc) == (0, 0x1234, 0xDEADBEEF, 0x01020304)
    assert (h.payload_offset, h.payload_end) == (12, 172)


def test_csrcs_extension_and_padding_bound_the_payload():
    # CC=2, X=1, P=1; extension profile 0xbede with 1 word; 3 bytes of padding.
    packet = (
        bytes.fromhex("b2 60 0001 00000010 0000abcd")
        + bytes.fromhex("00000001 00000002")
        + bytes.fromhex("bede 0001 11223344")
        + b"audio"
        + b"\x00\x00\x03"
    )
    h = parse_rtp(packet)
    assert (h.padding, h.extension, h.csrc_count, h.payload_type, h.marker) == (True, True, 2, 96, False)
    assert packet[h.payload_offset:h.payload_end] == b"audio"


@pytest.mark.parametrize(
    "packet, message",
    [
        (b"\x80\x00\x00\x01", "shorter than the 12-byte header"),
        (bytes.fromhex("40 00 0001 00000000 00000000"), "RTP version 1"),
        (bytes.fromhex("83 00 0001 00000000 00000000") + b"\x00" * 8, "3 CSRCs do not fit"),
        (bytes.fromhex("90 00 0001 00000000 00000000") + b"\xbe\xde", "no extension header"),
        (bytes.fromhex("90 00 0001 00000000 00000000 bede 0004 00000000"), "runs past the end"),
        (bytes.fromhex("a0 00 0001 00000000 00000000") + b"ab\x00", "padding count 0"),
        (bytes.fromhex("a0 00 0001 00000000 00000000") + b"ab\x09", "padding count 9"),
    ],
)
def test_malformed_packets_say_what_is_wrong(packet, message):
    with pytest.raises(RtpError, match=message):
        parse_rtp(packet)


def test_build_round_trips_and_wraps_counters():
    packet = build_rtp(8, 0x1_0005, 0x1_0000_0007, 0xCAFEBABE, b"xyz", marker=True)
    assert packet[:12] == bytes.fromhex("8088 0005 00000007 cafebabe") and packet[12:] == b"xyz"
    h = parse_rtp(packet)
    assert (h.payload_type, h.marker, h.sequence, h.timestamp, h.ssrc) == (8, True, 5, 7, 0xCAFEBABE)
    with pytest.raises(RtpError, match="outside 0-127"):
        build_rtp(128, 0, 0, 1, b"")
    with pytest.raises(RtpError, match="32 bits"):
        build_rtp(0, 0, 0, 1 << 32, b"")


def test_rtcp_is_told_apart_from_rtp_on_a_shared_port():
    sender_report = bytes.fromhex("80c8 0006 01020304") + b"\x00" * 20
    receiver_report = bytes.fromhex("81c9 0007 01020304") + b"\x00" * 24
    bye = bytes.fromhex("81cb 0001 01020304")
    assert is_rtcp(sender_report) and is_rtcp(receiver_report) and is_rtcp(bye)
    assert not is_rtcp(PCMU)
    assert not is_rtcp(build_rtp(101, 1, 1, 1, b"\x05\x0a\x00\xa0", marker=True))  # 101|M = 0xe5
    assert not is_rtcp(b"\x80")


def test_ssrc_of_reads_bytes_8_to_12():
    assert ssrc_of(PCMU) == 0x01020304
    with pytest.raises(RtpError, match="no SSRC"):
        ssrc_of(PCMU[:11])


def test_telephone_event_payload():
    # RFC 4733 figure: event 5, end bit, volume 10, duration 1280 (160 ms at 8 kHz).
    event = parse_telephone_event(bytes.fromhex("058a0500"))
    assert event == TelephoneEvent(event=5, end=True, volume=10, duration=1280)
    assert event.digit == "5"
    assert parse_telephone_event(bytes.fromhex("0b3f00a0")) == TelephoneEvent(11, False, 63, 160)
    assert build_telephone_event("5", end=True, volume=10, duration=1280) == bytes.fromhex("058a0500")
    assert build_telephone_event(16, duration=800) == bytes.fromhex("100a0320")
    with pytest.raises(RtpError, match="shorter than 4"):
        parse_telephone_event(b"\x05\x8a\x05")
    with pytest.raises(RtpError, match="volume 64"):
        build_telephone_event(1, volume=64)
    with pytest.raises(RtpError, match="duration 65536"):
        build_telephone_event(1, duration=65536)
    with pytest.raises(RtpError, match="not a DTMF key"):
        build_telephone_event("E")


def test_event_codes_map_to_keys():
    assert "".join(event_digit(code) for code in range(17)) == "0123456789*#ABCD!"
    assert event_digit(17) is None and event_digit(255) is None
    assert [digit_event(key) for key in "09*#Ad!"] == [0, 9, 10, 11, 12, 15, 16]
    with pytest.raises(RtpError):
        digit_event("55")
