"""Sans-IO DTMF: RFC 4733 telephone-events in RTP, and SIP INFO bodies.

A key press arrives as a train of RTP packets that share one RTP timestamp
(the start of the event), with growing durations, and ends with the end bit
set, sent three times.  Loss and retransmission are normal, so
:class:`DtmfDetector` reports each key exactly once, keyed by that
timestamp:

* on the first end packet of the event (later end packets and late
  retransmits of already reported events are ignored);
* or, when every end packet was lost, as soon as a packet with a new event
  timestamp arrives, with the last duration seen.

Events longer than 65535 timestamp units are sent as segments with new
timestamps (RFC 4733 section 2.5.1.3); a segment that follows one whose
duration reached 0xFFFF with the same key and no end bit continues it.

:func:`parse_sip_info` reads the two SIP INFO bodies in common use:
``application/dtmf-relay`` (``Signal=5`` / ``Duration=160``) and
``application/dtmf`` (the key alone).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from switchd.media.rtp import (
    EVENT_DIGITS,
    FLASH,
    RtpError,
    RtpHeader,
    event_digit,
    parse_telephone_event,
)

__all__ = [
    "DEFAULT_DURATION_MS",
    "DEFAULT_VOLUME",
    "DtmfDetector",
    "DtmfDigit",
    "DtmfError",
    "parse_sip_info",
]

#: Duration given to a SIP INFO key whose body names none.
DEFAULT_DURATION_MS = 250
#: Volume (-dBm0) given to SIP INFO keys, which carry none.
DEFAULT_VOLUME = 10
# INFO durations beyond this are nonsense, not long key presses.
_MAX_INFO_DURATION_MS = 60_000
# Timestamps of recently reported events, to ignore their late retransmits.
_REMEMBERED = 8
_SEGMENT_FULL = 0xFFFF


class DtmfError(ValueError):
    """A DTMF payload or SIP INFO body that cannot be read; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    """One key press: "0"-"9", "*", "#", "A"-"D" or "!" (flash)."""

    digit: str
    duration_ms: int
    volume: int


class DtmfDetector:
    """Turns the telephone-event packets of one RTP stream into key presses.

    One detector per direction; :meth:`feed` ignores packets of any other
    payload type, so the caller may feed it everything or only the packets
    whose payload type matches.
    """

    __slots__ = (
        "_base",
        "_duration",
        "_ended",
        "_event",
        "_recent",
        "_reported",
        "_timestamp",
        "_volume",
        "clock_rate",
        "payload_type",
    )

    def __init__(self, payload_type: int, clock_rate: int = 8000) -> None:
        if not 0 <= payload_type <= 127:
            raise DtmfError(f"payload type {payload_type} is outside 0-127")
        if clock_rate <= 0:
            raise DtmfError(f"clock rate {clock_rate} must be positive")
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self._timestamp: int | None = None
        self._event = 0
        self._duration = 0  # of the current segment, in timestamp units
        self._base = 0  # of the finished segments of a long event
        self._volume = 0
        self._ended = False
        self._reported = True  # nothing pending
        self._recent: deque[int] = deque(maxlen=_REMEMBERED)

    def feed(self, header: RtpHeader, payload: bytes) -> DtmfDigit | None:
        """Account for one packet (``payload`` without header or padding).

        Returns the key the packet completes, if any.  A payload too short to
        be a telephone-event raises :class:`DtmfError`.
        """
        if header.payload_type != self.payload_type:
            return None
        try:
            event = parse_telephone_event(payload)
        except RtpError as exc:
            raise DtmfError(exc.reason) from None
        if event.event > 16:  # tones and other non-key events
            return None
        timestamp = header.timestamp
        if timestamp == self._timestamp:
            self._duration = max(self._duration, event.duration)
            self._volume = event.volume
            if event.end:
                self._ended = True
                if not self._reported:
                    return self._report()
            return None
        if timestamp in self._recent:
            return None  # a late retransmit of an event already reported
        if (
            not self._reported
            and not self._ended
            and event.event == self._event
            and self._duration >= _SEGMENT_FULL
        ):
            # The next segment of a long event (RFC 4733 section 2.5.1.3).
            self._base += self._duration
            if self._timestamp is not None:
                self._recent.append(self._timestamp)
            self._start(timestamp, event.duration, event.volume, event.end)
            return self._report() if event.end else None
        pending = None if self._reported else self._report()
        self._base = 0
        self._event = event.event
        self._start(timestamp, event.duration, event.volume, event.end)
        if event.end and pending is None:
            return self._report()
        # With a report pending, this event's end is reported by its next
        # (retransmitted) end packet, or when the next event starts.
        return pending

    def flush(self) -> DtmfDigit | None:
        """The event in progress whose end never came, if any (e.g. at hang-up)."""
        return None if self._reported else self._report()

    def _start(self, timestamp: int, duration: int, volume: int, ended: bool) -> None:
        self._timestamp = timestamp
        self._duration = duration
        self._volume = volume
        self._ended = ended
        self._reported = False

    def _report(self) -> DtmfDigit:
        self._reported = True
        if self._timestamp is not None:
            self._recent.append(self._timestamp)
        digit = event_digit(self._event)
        assert digit is not None  # events above 16 never start
        units = self._base + self._duration
        return DtmfDigit(digit, units * 1000 // self.clock_rate, self._volume)


# --------------------------------------------------------------------------
# SIP INFO
# --------------------------------------------------------------------------

_INFO_SIGNALS = {**{key: key for key in EVENT_DIGITS}, **{str(i): EVENT_DIGITS[i] for i in range(16)},
                 FLASH: FLASH, "16": FLASH}


def _signal(text: str) -> str:
    key = _INFO_SIGNALS.get(text.upper())
    if key is None:
        raise DtmfError(f"signal {text!r} is not a DTMF key")
    return key


def parse_sip_info(content_type: str, body: bytes) -> DtmfDigit | None:
    """The key carried by a SIP INFO, ``None`` if its body is not a DTMF type.

    ``content_type`` is the Content-Type header value (parameters and case
    are ignored).  A DTMF body that cannot be read raises :class:`DtmfError`.
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in ("application/dtmf-relay", "application/dtmf"):
        return None
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise DtmfError(f"{media_type} body is not ASCII") from None
    if media_type == "application/dtmf":
        value = text.strip()
        if not value:
            raise DtmfError("application/dtmf body is empty")
        if len(value) != 1:
            raise DtmfError(f"application/dtmf body {value!r} is not one key")
        return DtmfDigit(_signal(value), DEFAULT_DURATION_MS, DEFAULT_VOLUME)
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise DtmfError(f"application/dtmf-relay line {line!r} is not name=value")
        fields[name.strip().lower()] = value.strip()
    if "signal" not in fields:
        raise DtmfError("application/dtmf-relay body has no Signal")
    digit = _signal(fields["signal"])
    duration = DEFAULT_DURATION_MS
    if "duration" in fields:
        raw = fields["duration"]
        if not raw.isascii() or not raw.isdigit() or not 0 < int(raw) <= _MAX_INFO_DURATION_MS:
            raise DtmfError(f"Duration {raw!r} is not a number of milliseconds from 1 to {_MAX_INFO_DURATION_MS}")
        duration = int(raw)
    return DtmfDigit(digit, duration, DEFAULT_VOLUME)
