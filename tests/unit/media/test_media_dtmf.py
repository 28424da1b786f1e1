"""DTMF detection from RFC 4733 packet trains, and SIP INFO bodies."""

import pytest

from switchd.media.dtmf import (
    DEFAULT_DURATION_MS,
    DtmfDetector,
    DtmfDigit,
    DtmfError,
    parse_sip_info,
)
from switchd.media.rtp import build_rtp, build_telephone_event, parse_rtp

PT = 101


class Stream:
    """A sender of telephone-events: RTP sequence numbers go up packet by packet."""

    def __init__(self, detector: DtmfDetector, pt: int = PT) -> None:
        self.detector = detector
        self.pt = pt
        self.seq = 1000

    def send(self, timestamp: int, key, duration: int, end: bool = False, volume: int = 10):
        self.seq += 1
        packet = build_rtp(self.pt, self.seq, timestamp, 0x5EED,
                           build_telephone_event(key, end=end, volume=volume, duration=duration))
        header = parse_rtp(packet)
        return self.detector.feed(header, packet[header.payload_offset:header.payload_end])

    def press(self, timestamp: int, key, steps=(160, 320, 480, 640), ends: int = 3):
        """A whole key press; returns what the detector reported, in order."""
        out = [self.send(timestamp, key, d) for d in steps]
        out += [self.send(timestamp, key, steps[-1] + 160, end=True) for _ in range(ends)]
        return [d for d in out if d is not None]


def test_a_key_press_is_reported_once_on_the_first_end_packet():
    stream = Stream(DtmfDetector(PT))
    assert stream.send(8000, "5", 160) is None
    assert stream.send(8000, "5", 320) is None
    assert stream.send(8000, "5", 480, end=True) == DtmfDigit("5", 60, 10)
    assert stream.send(8000, "5", 480, end=True) is None
    assert stream.send(8000, "5", 480, end=True) is None
    # A late retransmit, after the next key began, is not a new key either.
    assert stream.press(9600, "#") == [DtmfDigit("#", 100, 10)]
    assert stream.send(8000, "5", 480, end=True) is None


def test_keys_in_a_row_and_the_same_key_twice():
    stream = Stream(DtmfDetector(PT))
    digits = []
    for i, key in enumerate("1*11D!"):
        digits += stream.press(16000 + 2000 * i, key)
    assert "".join(d.digit for d in digits) == "1*11D!"
    assert all(d.duration_ms == 100 for d in digits)


def test_an_event_whose_end_packets_are_lost_is_reported_when_the_next_starts():
    stream = Stream(DtmfDetector(PT))
    assert stream.press(1000, "7", ends=0) == []
    # The next event's first packet reveals the lost end, with the last duration seen.
    assert stream.send(5000, "8", 160) == DtmfDigit("7", 80, 10)
    assert stream.send(5000, "8", 320, end=True) == DtmfDigit("8", 40, 10)
    assert stream.detector.flush() is None


def test_lost_end_then_a_lone_end_packet_gives_both_keys():
    stream = Stream(DtmfDetector(PT))
    stream.press(1000, "1", ends=0)
    assert stream.send(3000, "2", 800, end=True) == DtmfDigit("1", 80, 10)
    assert stream.send(3000, "2", 800, end=True) == DtmfDigit("2", 100, 10)
    assert stream.send(3000, "2", 800, end=True) is None


def test_flush_reports_a_press_cut_short_by_hang_up():
    stream = Stream(DtmfDetector(PT))
    stream.send(1000, "9", 400)
    assert stream.detector.flush() == DtmfDigit("9", 50, 10)
    assert stream.detector.flush() is None


def test_a_long_press_sent_in_segments_is_one_key():
    stream = Stream(DtmfDetector(PT))
    assert stream.send(0, "0", 30000) is None
    assert stream.send(0, "0", 0xFFFF) is None
    assert stream.send(0xFFFF, "0", 8000) is None  # next segment, new timestamp
    assert stream.send(0xFFFF, "0", 16000, end=True) == DtmfDigit("0", (0xFFFF + 16000) // 8, 10)
    assert stream.send(0xFFFF, "0", 16000, end=True) is None


def test_volume_and_clock_rate_and_other_payloads():
    detector = DtmfDetector(96, clock_rate=16000)
    stream = Stream(detector, pt=96)
    assert stream.press(1, "3", steps=(320, 640), ends=1) == [DtmfDigit("3", 50, 10)]
    assert stream.send(9999, "4", 1600, end=True, volume=30) == DtmfDigit("4", 100, 30)
    # Other payload types and non-key events (tones above 16) are ignored.
    voice = build_rtp(0, 1, 1, 1, b"\xff" * 160)
    assert detector.feed(parse_rtp(voice), voice[12:]) is None
    assert stream.send(20000, 70, 160, end=True) is None
    with pytest.raises(DtmfError, match="shorter than 4"):
        detector.feed(parse_rtp(build_rtp(96, 1, 1, 1, b"\x01")), b"\x01")
    with pytest.raises(DtmfError):
        DtmfDetector(200)


@pytest.mark.parametrize(
    "content_type, body, digit",
    [
        ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", DtmfDigit("5", 160, 10)),
        ("Application/DTMF-Relay; charset=x", b"signal = #\nduration= 250", DtmfDigit("#", 250, 10)),
        ("application/dtmf-relay", b"Signal=11\r\n", DtmfDigit("#", DEFAULT_DURATION_MS, 10)),
        ("application/dtmf-relay", b"Signal=a\r\nDuration=100\r\n", DtmfDigit("A", 100, 10)),
        ("application/dtmf-relay", b"Signal=16\r\nDuration=500\r\n", DtmfDigit("!", 500, 10)),
        ("application/dtmf", b"5", DtmfDigit("5", DEFAULT_DURATION_MS, 10)),
        ("application/dtmf", b"*\r\n", DtmfDigit("*", DEFAULT_DURATION_MS, 10)),
    ],
)
def test_sip_info_bodies(content_type, body, digit):
    assert parse_sip_info(content_type, body) == digit


def test_other_info_bodies_are_not_dtmf():
    assert parse_sip_info("application/media_control+xml", b"<media_control/>") is None
    assert parse_sip_info("text/plain", b"5") is None


@pytest.mark.parametrize(
    "content_type, body, message",
    [
        ("application/dtmf-relay", b"Duration=160\r\n", "no Signal"),
        ("application/dtmf-relay", b"Signal=X\r\n", "'X' is not a DTMF key"),
        ("application/dtmf-relay", b"Signal=5\r\nDuration=-1\r\n", "Duration '-1'"),
        ("application/dtmf-relay", b"Signal=5\r\nDuration=0\r\n", "Duration '0'"),
        ("application/dtmf-relay", b"Signal=5\r\nDuration=abc\r\n", "Duration 'abc'"),
        ("application/dtmf-relay", b"Signal 5\r\n", "not name=value"),
        ("application/dtmf-relay", b"Signal=\xe9\r\n", "not ASCII"),
        ("application/dtmf", b"", "empty"),
        ("application/dtmf-relay", b"Signal=17\r\n", "'17' is not a DTMF key"),
        ("application/dtmf", b"12", "'12' is not one key"),
        ("application/dtmf", b"x", "'x' is not a DTMF key"),
    ],
)
def test_bad_info_bodies_raise(content_type, body, message):
    with pytest.raises(DtmfError, match=message):
        parse_sip_info(content_type, body)
