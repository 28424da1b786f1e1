"""Sans-IO RTP (RFC 3550) headers and RFC 4733 telephone-event payloads.

The relay forwards packets without looking inside them; this module is what
it uses when it does have to look: :func:`ssrc_of` when a packet arrives from
an unexpected address, :func:`parse_rtp` and :func:`parse_telephone_event`
for DTMF, :func:`is_rtcp` to tell RTCP apart on a multiplexed port
(RFC 5761).  :func:`build_rtp` and :func:`build_telephone_event` serve the
prompt player and the tests.  Bytes in, values out: no clock, no sockets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "EVENT_DIGITS",
    "FLASH",
    "RTP_VERSION",
    "RtpError",
    "RtpHeader",
    "TelephoneEvent",
    "build_rtp",
    "build_telephone_event",
    "digit_event",
    "event_digit",
    "is_rtcp",
    "parse_rtp",
    "parse_telephone_event",
    "ssrc_of",
]

RTP_VERSION = 2

#: RFC 4733 section 3.2: events 0-15 are the DTMF keys, in this order.
EVENT_DIGITS = "0123456789*#ABCD"
#: Event 16 is the hook flash; it is spelled "!" as in SIP INFO bodies.
FLASH = "!"
_FLASH_EVENT = 16

_HEADER = struct.Struct("!BBHII")
_EVENT = struct.Struct("!BBH")


class RtpError(ValueError):
    """A packet or payload that is not valid RTP; ``reason`` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class RtpHeader:
    """The fixed header of one RTP packet, plus where its payload lies.

    ``data[payload_offset:payload_end]`` is the payload: after the CSRC list
    and any header extension, without padding.
    """

    version: int
    padding: bool
    extension: bool
    csrc_count: int
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload_offset: int
    payload_end: int


def parse_rtp(data: bytes) -> RtpHeader:
    """Decode the RTP header of ``data``; :class:`RtpError` if it is not RTP."""
    size = len(data)
    if size < 12:
        raise RtpError(f"RTP packet of {size} bytes is shorter than the 12-byte header")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    version = first >> 6
    if version != RTP_VERSION:
        raise RtpError(f"RTP version {version}, expected 2")
    csrc_count = first & 0x0F
    offset = 12 + 4 * csrc_count
    if offset > size:
        raise RtpError(f"{csrc_count} CSRCs do not fit in a {size}-byte packet")
    extension = bool(first & 0x10)
    if extension:
        if offset + 4 > size:
            raise RtpError("header extension flag set but no extension header")
        words = int.from_bytes(data[offset + 2 : offset + 4], "big")
        offset += 4 + 4 * words
        if offset > size:
            raise RtpError(f"header extension of {words} words runs past the end of the packet")
    end = size
    padding = bool(first & 0x20)
    if padding:
        count = data[-1]
        if count == 0 or offset + count > size:
            raise RtpError(f"padding count {count} is invalid for {size - offset} bytes after the header")
        end = size - count
    return RtpHeader(
        version=version,
        padding=padding,
        extension=extension,
        csrc_count=csrc_count,
        marker=bool(second & 0x80),
        payload_type=second & 0x7F,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload_offset=offset,
        payload_end=end,
    )


def build_rtp(
    payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes, marker: bool = False
) -> bytes:
    """One RTP packet with no CSRCs, extension or padding.

    Sequence and timestamp wrap (they are modular counters); a payload type
    outside 0-127 or an SSRC outside 32 bits raises :class:`RtpError`.
    """
    if not 0 <= payload_type <= 127:
        raise RtpError(f"payload type {payload_type} is outside 0-127")
    if not 0 <= ssrc <= 0xFFFFFFFF:
        raise RtpError(f"SSRC {ssrc} does not fit in 32 bits")
    second = payload_type | 0x80 if marker else payload_type
    return _HEADER.pack(0x80, second, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + payload


def is_rtcp(data: bytes) -> bool:
    """True for RTCP on a port shared with RTP (RFC 5761 section 4).

    RTCP packet types 200-204 (SR, RR, SDES, BYE, APP) read as RTP payload
    types 72-76 once the marker bit is masked; those are never used for RTP.
    """
    return len(data) >= 2 and 72 <= (data[1] & 0x7F) <= 76


def ssrc_of(data: bytes) -> int:
    """The SSRC (bytes 8-11) of an RTP packet, without decoding the rest."""
    if len(data) < 12:
        raise RtpError(f"RTP packet of {len(data)} bytes has no SSRC")
    return int.from_bytes(data[8:12], "big")


# --------------------------------------------------------------------------
# RFC 4733 telephone-event
# --------------------------------------------------------------------------


def event_digit(event: int) -> str | None:
    """The key of a DTMF event code (0-15, 16 for flash), ``None`` for other events."""
    if 0 <= event < 16:
        return EVENT_DIGITS[event]
    if event == _FLASH_EVENT:
        return FLASH
    return None


def digit_event(digit: str) -> int:
    """The RFC 4733 event code of a key ("0"-"9", "*", "#", "A"-"D", "!")."""
    if digit == FLASH:
        return _FLASH_EVENT
    index = EVENT_DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if index < 0:
        raise RtpError(f"{digit!r} is not a DTMF key")
    return index


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One RFC 4733 event report (section 2.3).

    ``volume`` is the power level in -dBm0 (0-63); ``duration`` is in
    timestamp units since the event began (the RTP timestamp of the packet).
    """

    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str | None:
        """The DTMF key this event stands for, or ``None`` (not a DTMF event)."""
        return event_digit(self.event)


def parse_telephone_event(payload: bytes) -> TelephoneEvent:
    """Decode the first event report of a telephone-event payload."""
    if len(payload) < 4:
        raise RtpError(f"telephone-event payload of {len(payload)} bytes is shorter than 4")
    event, flags, duration = _EVENT.unpack_from(payload)
    return TelephoneEvent(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)


def build_telephone_event(event: int | str, end: bool = False, volume: int = 10, duration: int = 0) -> bytes:
    """The 4-byte payload of one event report; ``event`` may be a key such as "5"."""
    code = digit_event(event) if isinstance(event, str) else event
    if not 0 <= code <= 255:
        raise RtpError(f"event code {code} is outside 0-255")
    if not 0 <= volume <= 63:
        raise RtpError(f"volume {volume} is outside 0-63")
    if not 0 <= duration <= 0xFFFF:
        raise RtpError(f"duration {duration} is outside 0-65535")
    return _EVENT.pack(code, (0x80 if end else 0) | volume, duration)
