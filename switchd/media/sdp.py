"""Sans-IO SDP (RFC 4566) and what a relaying B2BUA does to it (RFC 3264).

A :class:`SessionDescription` keeps every line it was given, in order, as
``(type, value)`` pairs: the session part in ``lines``, each media section in
a :class:`MediaDescription`.  Only the ``o=``, ``c=`` and ``m=`` lines are
modelled (and re-written canonically: single spaces); every other line,
attributes included, is emitted exactly as received, so serializing an SDP
we did not touch gives back the same bytes.  Input may end lines with LF or
CRLF; output always uses CRLF.  Text that is not UTF-8 survives the round
trip unchanged.

:func:`rewrite` puts the relay in the media path (our address and ports,
ICE removed); :class:`OriginKeeper` gives the SDP we send one ``o=`` line per
dialog whose version moves only when the body changes (RFC 3264 sections 5
and 8).  Malformed input raises :class:`SdpError`.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "DIRECTIONS",
    "STATIC_PAYLOAD_TYPES",
    "Connection",
    "MediaDescription",
    "Origin",
    "OriginKeeper",
    "SdpError",
    "SessionDescription",
    "rewrite",
]

#: The direction attributes of RFC 3264 section 5.1 (``sendrecv`` is the default).
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")

#: RFC 3551 static payload types: encoding and clock rate.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int]] = {
    0: ("PCMU", 8000), 3: ("GSM", 8000), 4: ("G723", 8000), 5: ("DVI4", 8000), 6: ("DVI4", 16000),
    7: ("LPC", 8000), 8: ("PCMA", 8000), 9: ("G722", 8000), 10: ("L16", 44100), 11: ("L16", 44100),
    12: ("QCELP", 8000), 13: ("CN", 8000), 14: ("MPA", 90000), 15: ("G728", 8000),
    16: ("DVI4", 11025), 17: ("DVI4", 22050), 18: ("G729", 8000), 25: ("CelB", 90000),
    26: ("JPEG", 90000), 28: ("nv", 90000), 31: ("H261", 90000), 32: ("MPV", 90000),
    33: ("MP2T", 90000), 34: ("H263", 90000),
}

# Addresses that mean "do not send to me" (RFC 3264 section 8.4, RFC 2543 hold).
_HOLD_ADDRESSES = frozenset({"0.0.0.0", "::"})
_ICE_ATTRIBUTES = frozenset({"candidate", "end-of-candidates", "remote-candidates"})

Line = tuple[str, str]
"""One ``<type>=<value>`` line as ``(type, value)``."""


class SdpError(ValueError):
    """An SDP body (or a value given to this module) that cannot be used.

    ``reason`` says what is wrong; ``line`` is the 1-based line number in
    the parsed body, when the problem is on one line.
    """

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason if line is None else f"line {line}: {reason}")
        self.reason = reason
        self.line = line


def _port(text: str, what: str, line: int | None = None) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > 65535:
        raise SdpError(f"{what} {text!r} is not a port number", line)
    return int(text)


@dataclass(frozen=True, slots=True)
class Origin:
    """The ``o=`` line: who made the session and which version of it this is."""

    username: str
    session_id: str
    session_version: int
    net_type: str
    address_type: str
    address: str

    @classmethod
    def parse(cls, value: str, line: int | None = None) -> Origin:
        fields = value.split()
        if len(fields) != 6:
            raise SdpError(f"o= needs 6 fields, got {len(fields)}", line)
        username, session_id, version, net_type, address_type, address = fields
        if not version.isascii() or not version.isdigit():
            raise SdpError(f"o= session version {version!r} is not a number", line)
        return cls(username, session_id, int(version), net_type, address_type, address)

    @property
    def version(self) -> int:
        """Short for ``session_version``."""
        return self.session_version

    def value(self) -> str:
        return (f"{self.username} {self.session_id} {self.session_version} "
                f"{self.net_type} {self.address_type} {self.address}")


@dataclass(frozen=True, slots=True)
class Connection:
    """A ``c=`` line; ``suffix`` keeps a multicast ``/ttl/count`` as written."""

    net_type: str
    address_type: str
    address: str
    suffix: str = ""

    @classmethod
    def parse(cls, value: str, line: int | None = None) -> Connection:
        fields = value.split()
        if len(fields) != 3:
            raise SdpError(f"c= needs 3 fields, got {len(fields)}", line)
        address, slash, rest = fields[2].partition("/")
        if not address:
            raise SdpError("c= has an empty address", line)
        return cls(fields[0], fields[1], address, slash + rest)

    @classmethod
    def for_address(cls, address: str) -> Connection:
        """``IN IP4`` or ``IN IP6`` for an IP address literal."""
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            raise SdpError(f"{address!r} is not an IP address") from None
        return cls("IN", "IP4" if ip.version == 4 else "IP6", str(ip))

    def value(self) -> str:
        return f"{self.net_type} {self.address_type} {self.address}{self.suffix}"


def _attribute(value: str) -> tuple[str, str | None]:
    name, sep, rest = value.partition(":")
    return name, rest if sep else None


def _check_attribute(value: str, line: int | None) -> None:
    """Validate the attributes this module interprets, so accessors never fail."""
    name, rest = _attribute(value)
    if name == "rtpmap":
        pt, _, encoding = (rest or "").partition(" ")
        parts = encoding.strip().split("/")
        if not pt.isascii() or not pt.isdigit() or int(pt) > 127:
            raise SdpError(f"a=rtpmap payload type {pt!r} is not 0-127", line)
        if len(parts) < 2 or not parts[0] or not parts[1].isascii() or not parts[1].isdigit():
            raise SdpError(f"a=rtpmap {rest!r} is not <pt> <encoding>/<clock rate>", line)
    elif name == "rtcp":
        fields = (rest or "").split()
        if not fields:
            raise SdpError("a=rtcp has no port", line)
        _port(fields[0], "a=rtcp port", line)
        if len(fields) not in (1, 4):
            raise SdpError(f"a=rtcp {rest!r} is not <port> [<nettype> <addrtype> <address>]", line)


class _Section:
    """What the session part and the media sections share: lines and attributes."""

    __slots__ = ()
    lines: list[Line]

    @property
    def attributes(self) -> list[tuple[str, str | None]]:
        """``a=`` lines in order as ``(name, value)``; ``value`` is ``None`` for flags."""
        return [_attribute(value) for kind, value in self.lines if kind == "a"]

    def attribute(self, name: str) -> str | None:
        """The value of the first ``a=name``; ``""`` for a flag, ``None`` if absent."""
        for kind, value in self.lines:
            if kind == "a":
                found, rest = _attribute(value)
                if found == name:
                    return "" if rest is None else rest
        return None

    def has_attribute(self, name: str) -> bool:
        return self.attribute(name) is not None

    def set_attribute(self, name: str, value: str | None = None) -> None:
        """Replace the first ``a=name`` (dropping others), or append one."""
        text = name if value is None else f"{name}:{value}"
        _check_attribute(text, None)
        out: list[Line] = []
        done = False
        for line in self.lines:
            if line[0] == "a" and _attribute(line[1])[0] == name:
                if not done:
                    out.append(("a", text))
                    done = True
                continue
            out.append(line)
        if not done:
            out.append(("a", text))
        self.lines = out

    def remove_attributes(self, names: Iterable[str]) -> int:
        """Drop every ``a=`` line with one of ``names``; how many went."""
        drop = frozenset(names)
        before = len(self.lines)
        self.lines = [line for line in self.lines if line[0] != "a" or _attribute(line[1])[0] not in drop]
        return before - len(self.lines)

    def _own_connection(self) -> Connection | None:
        for kind, value in self.lines:
            if kind == "c":
                return Connection.parse(value)
        return None

    def _set_connection(self, connection: Connection | None, before: str) -> None:
        """Put ``connection`` where the first ``c=`` was (or before ``before`` types)."""
        out: list[Line] = []
        placed = connection is None
        for line in self.lines:
            if line[0] == "c":
                if not placed:
                    out.append(("c", connection.value()))  # type: ignore[union-attr]
                    placed = True
                continue
            out.append(line)
        if not placed:
            at = next((i for i, line in enumerate(out) if line[0] in before), len(out))
            out.insert(at, ("c", connection.value()))  # type: ignore[union-attr]
        self.lines = out

    def _direction(self) -> str | None:
        for kind, value in self.lines:
            if kind == "a" and value in DIRECTIONS:
                return value
        return None


class MediaDescription(_Section):
    """One ``m=`` section: the ``m=`` fields and the lines that follow it."""

    __slots__ = ("formats", "lines", "media", "port", "port_count", "proto", "session")

    def __init__(
        self,
        media: str,
        port: int,
        proto: str,
        formats: Sequence[str],
        port_count: int | None = None,
        lines: Iterable[Line] = (),
        session: SessionDescription | None = None,
    ) -> None:
        self.media = media
        self.port = port
        self.port_count = port_count
        self.proto = proto
        self.formats = list(formats)
        self.lines: list[Line] = list(lines)
        self.session = session

    @classmethod
    def parse_m_line(cls, value: str, line: int | None = None) -> MediaDescription:
        fields = value.split()
        if len(fields) < 3:
            raise SdpError(f"m= needs media, port and proto, got {value!r}", line)
        port_text, slash, count_text = fields[1].partition("/")
        port = _port(port_text, "m= port", line)
        count = None
        if slash:
            if not count_text.isascii() or not count_text.isdigit() or int(count_text) < 1:
                raise SdpError(f"m= port count {count_text!r} is not a positive number", line)
            count = int(count_text)
        return cls(fields[0], port, fields[2], fields[3:], port_count=count)

    def __repr__(self) -> str:
        return f"<MediaDescription {self.m_line()!r}>"

    def m_line(self) -> str:
        port = self.port if self.port_count is None else f"{self.port}/{self.port_count}"
        return " ".join([self.media, str(port), self.proto, *self.formats])

    def copy(self, session: SessionDescription | None = None) -> MediaDescription:
        return MediaDescription(self.media, self.port, self.proto, self.formats, self.port_count,
                                self.lines, session)

    # -- connection and direction --------------------------------------------

    @property
    def connection(self) -> Connection | None:
        """This section's own ``c=``; ``None`` means the session's applies."""
        return self._own_connection()

    @connection.setter
    def connection(self, connection: Connection | None) -> None:
        self._set_connection(connection, "bka")

    @property
    def effective_connection(self) -> Connection | None:
        own = self._own_connection()
        if own is None and self.session is not None:
            return self.session.connection
        return own

    @property
    def rejected(self) -> bool:
        """Port 0: the stream was refused or removed (RFC 3264 sections 6 and 8.2)."""
        return self.port == 0

    @property
    def direction(self) -> str:
        """sendrecv, sendonly, recvonly or inactive: media level over session level."""
        own = self._direction()
        if own is not None:
            return own
        if self.session is not None:
            return self.session.direction
        return "sendrecv"

    @property
    def is_hold(self) -> bool:
        """The offerer asks not to be sent media: sendonly, inactive or c=0.0.0.0."""
        if self.direction in ("sendonly", "inactive"):
            return True
        connection = self.effective_connection
        return connection is not None and connection.address in _HOLD_ADDRESSES

    def remote(self) -> tuple[str, int]:
        """Where the party wants this stream sent: (address, RTP port)."""
        connection = self.effective_connection
        if connection is None:
            raise SdpError(f"m={self.media} has no connection address")
        return connection.address, self.port

    # -- formats and ports --------------------------------------------------------

    @property
    def rtpmap(self) -> dict[int, tuple[str, int]]:
        """{payload type: (encoding, clock rate)} for the listed formats.

        ``a=rtpmap`` lines win; static payload types without one get their
        RFC 3551 meaning.
        """
        mapped: dict[int, tuple[str, int]] = {}
        for name, rest in self.attributes:
            if name == "rtpmap" and rest is not None:
                pt, _, encoding = rest.partition(" ")
                parts = encoding.strip().split("/")
                mapped.setdefault(int(pt), (parts[0], int(parts[1])))
        result: dict[int, tuple[str, int]] = {}
        for fmt in self.formats:
            if fmt.isascii() and fmt.isdigit():
                pt = int(fmt)
                known = mapped.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
                if known is not None:
                    result[pt] = known
        return result

    @property
    def telephone_event_pt(self) -> int | None:
        """The RFC 4733 payload type offered, preferring the first codec's clock rate."""
        rtpmap = self.rtpmap
        events = [(pt, rate) for pt, (encoding, rate) in rtpmap.items() if encoding.lower() == "telephone-event"]
        if not events:
            return None
        codecs = [rate for encoding, rate in rtpmap.values() if encoding.lower() not in ("telephone-event", "cn")]
        if codecs:
            for pt, rate in events:
                if rate == codecs[0]:
                    return pt
        return events[0][0]

    @property
    def rtcp_port(self) -> int:
        """RTCP port: ``a=rtcp`` (RFC 3605) or the RTP port plus one."""
        value = self.attribute("rtcp")
        if value:
            return int(value.split()[0])
        return self.port + 1 if self.port else 0

    @property
    def rtcp_mux(self) -> bool:
        """RTCP shares the RTP port (RFC 5761)."""
        return self.has_attribute("rtcp-mux")


class SessionDescription(_Section):
    """A whole SDP body; see the module docstring for what is kept how."""

    __slots__ = ("lines", "media")

    def __init__(self, lines: Iterable[Line], media: Iterable[MediaDescription] = ()) -> None:
        self.lines: list[Line] = list(lines)
        self.media: list[MediaDescription] = []
        for section in media:
            section.session = self
            self.media.append(section)

    @classmethod
    def parse(cls, data: bytes) -> SessionDescription:
        """Parse an SDP body; :class:`SdpError` names the first problem found."""
        text = data.decode("utf-8", "surrogateescape")
        session: list[Line] = []
        media: list[MediaDescription] = []
        current = session
        origin_seen = False
        first = True
        for number, raw in enumerate(text.split("\n"), 1):
            line = raw.removesuffix("\r")
            if not line.strip():
                continue
            kind = line[0]
            if len(line) < 2 or line[1] != "=" or not ("a" <= kind <= "z"):
                raise SdpError(f"{line[:40]!r} is not <type>=<value>", number)
            value = line[2:]
            if first:
                if kind != "v":
                    raise SdpError("SDP must start with v=", number)
                if value.strip() != "0":
                    raise SdpError(f"unsupported SDP version {value!r}", number)
                first = False
            elif kind == "v":
                raise SdpError("more than one v= line", number)
            if kind == "m":
                section = MediaDescription.parse_m_line(value, number)
                media.append(section)
                current = section.lines
                continue
            if kind == "o":
                if current is not session or origin_seen:
                    raise SdpError("o= must appear once, in the session part", number)
                Origin.parse(value, number)
                origin_seen = True
            elif kind == "c":
                Connection.parse(value, number)
            elif kind == "a":
                _check_attribute(value, number)
            current.append((kind, value))
        if first:
            raise SdpError("empty SDP body")
        if not origin_seen:
            raise SdpError("SDP has no o= line")
        sdp = cls(session, media)
        for section in sdp.media:
            if not section.rejected and section.effective_connection is None:
                raise SdpError(f"m={section.media} {section.port} has no c= line and the session has none")
        return sdp

    def serialize(self) -> bytes:
        """The body to send: every line in order, CRLF-terminated."""
        return self._text(origin=True).encode("utf-8", "surrogateescape")

    def _text(self, origin: bool) -> str:
        out = [f"{kind}={value}\r\n" for kind, value in self.lines if origin or kind != "o"]
        for section in self.media:
            out.append(f"m={section.m_line()}\r\n")
            out.extend(f"{kind}={value}\r\n" for kind, value in section.lines)
        return "".join(out)

    def copy(self) -> SessionDescription:
        return SessionDescription(self.lines, [section.copy() for section in self.media])

    def __repr__(self) -> str:
        return f"<SessionDescription {self.origin.value()!r} with {len(self.media)} media>"

    @property
    def origin(self) -> Origin:
        for kind, value in self.lines:
            if kind == "o":
                return Origin.parse(value)
        raise SdpError("SDP has no o= line")

    @origin.setter
    def origin(self, origin: Origin) -> None:
        for i, (kind, _) in enumerate(self.lines):
            if kind == "o":
                self.lines[i] = ("o", origin.value())
                return
        self.lines.insert(1 if self.lines and self.lines[0][0] == "v" else 0, ("o", origin.value()))

    @property
    def name(self) -> str | None:
        """The ``s=`` text, ``None`` if there is none."""
        return next((value for kind, value in self.lines if kind == "s"), None)

    @property
    def connection(self) -> Connection | None:
        """The session-level ``c=``, inherited by media sections without their own."""
        return self._own_connection()

    @connection.setter
    def connection(self, connection: Connection | None) -> None:
        self._set_connection(connection, "btrzka")

    @property
    def direction(self) -> str:
        """The session-level direction (sendrecv when none is given)."""
        return self._direction() or "sendrecv"

    @property
    def is_hold(self) -> bool:
        """Every accepted stream (there is at least one) is on hold."""
        active = [section for section in self.media if not section.rejected]
        return bool(active) and all(section.is_hold for section in active)


def _is_ice(line: Line) -> bool:
    if line[0] != "a":
        return False
    name = _attribute(line[1])[0]
    return name in _ICE_ATTRIBUTES or name.startswith("ice-")


def rewrite(sdp: SessionDescription, address: str, ports: Sequence[int | None]) -> SessionDescription:
    """A copy of ``sdp`` that sends the media of each stream through the relay.

    ``ports[i]`` is our RTP port for ``sdp.media[i]`` (RTCP on the next
    port); ``None``, or a stream the party rejected (port 0), leaves that
    stream rejected.  Every ``c=`` becomes ``address``; ``a=rtcp`` names our
    RTCP port and address; ICE attributes go (the relay terminates the media
    path, so candidates would be wrong).  Directions, codecs, ``a=crypto``
    and every other line stay as they were.  A port count (``m=video
    49170/2``) is dropped: the relay gives each stream one port pair.
    """
    if len(ports) != len(sdp.media):
        raise SdpError(f"{len(ports)} ports given for {len(sdp.media)} media streams")
    ours = Connection.for_address(address)
    out = sdp.copy()
    out.lines = [line for line in out.lines if not _is_ice(line)]
    if out.connection is not None:
        out.connection = ours
    for section, port in zip(out.media, ports):
        section.lines = [line for line in section.lines if not _is_ice(line)]
        if section.connection is not None:
            section.connection = ours
        section.port_count = None
        if port is None or section.port == 0:
            section.port = 0
            section.remove_attributes(["rtcp"])
            continue
        if not 0 < port < 65535:
            raise SdpError(f"relay port {port} is not 1-65534")
        section.port = port
        if section.has_attribute("rtcp"):
            section.set_attribute("rtcp", f"{port + 1} IN {ours.address_type} {ours.address}")
    return out


class OriginKeeper:
    """Our ``o=`` line for the SDP sent to one party over a dialog.

    The session id is random and fixed for the keeper's life; the version
    starts at 1 and goes up by one each time the body sent differs from the
    previous one (compared without the ``o=`` line), so a re-INVITE or
    answer that changes nothing keeps the version, as RFC 3264 section 8
    asks.
    """

    def __init__(self, username: str = "switchd", *, address: str, session_id: int | None = None) -> None:
        self.username = username
        self._connection = Connection.for_address(address)
        self.session_id = session_id if session_id is not None else secrets.randbits(62) + 1
        self.version = 1
        self._last: str | None = None

    def stamp(self, sdp: SessionDescription) -> SessionDescription:
        """Set ``sdp``'s ``o=`` line to ours (in place) and return it."""
        body = sdp._text(origin=False)
        if self._last is not None and body != self._last:
            self.version += 1
        self._last = body
        sdp.origin = Origin(self.username, str(self.session_id), self.version, "IN",
                            self._connection.address_type, self._connection.address)
        return sdp
