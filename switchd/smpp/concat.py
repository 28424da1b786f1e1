"""Long messages: splitting into SMPP parts, UDH / SAR headers, reassembly.

The modes are those of a gateway's "Oversized SMS Splitting Mode" setting:

``disabled``
    one part if the message fits, else :class:`TooLong`;
``not_split``
    one part whatever the length (in ``short_message`` up to 254 octets,
    beyond that in the ``message_payload`` TLV);
``physical``
    independent messages, no concatenation header;
``ultra_long``
    concatenated parts the handset joins: a user data header (``concat="udh"``,
    IEI 0x00 with an 8-bit reference or, with ``udh_16bit``, IEI 0x08 with a
    16-bit one, and the UDHI bit of esm_class) or the SAR TLVs
    (``concat="sar"``: sar_msg_ref_num, sar_total_segments, sar_segment_seqnum).

How big a part may be.  ``max_content_length`` counts the octets of
``short_message``, the UDH included.  On top of it every part must fit the air
interface once the SMSC adds the concatenation header itself (SAR) or sends
ours (UDH): 140 octets, i.e. 160 septets for the GSM 7-bit codings (SMPP
carries them unpacked, one septet per octet) and 140 octets for all the
others.  So a part's payload is the smaller of

* ``max_content_length`` minus the UDH octets in ``short_message``, and
* 160 septets minus the septets the header takes on air (7 for the 6-octet
  UDH, 8 for the 7-octet one: 153 and 152), or 140 octets minus the header
  octets for the other codings (134 and 133).

With the default ``max_content_length=140`` a GSM part therefore carries 140
septets alone and 134 with a UDH; set 160 on links whose SMSC counts septets
to get the classic 160/153.  Parts never end between an escape and its
extension character, nor between the two halves of a UTF-16 surrogate pair,
so a part may be one unit short of the limit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from switchd.smpp import gsm
from switchd.smpp.pdu import ESM_UDHI, SM_MAX_LENGTH, has_udhi

__all__ = [
    "MODES",
    "ConcatError",
    "ConcatInfo",
    "Incomplete",
    "Part",
    "Reassembler",
    "TooLong",
    "UdhError",
    "UserData",
    "UserDataHeader",
    "concat_info",
    "parse_udh",
    "payload_limit",
    "split",
    "split_user_data",
]

MODES = ("disabled", "not_split", "physical", "ultra_long")
IEI_CONCAT_8 = 0x00
IEI_CONCAT_16 = 0x08
IEI_PORTS_8 = 0x04
IEI_PORTS_16 = 0x05
MAX_PARTS = 255
AIR_OCTETS = 140
AIR_SEPTETS = 160


class TooLong(ValueError):
    """The message does not fit (in one part, or in 255 concatenated parts)."""

    def __init__(self, reason: str, length: int, limit: int) -> None:
        super().__init__(reason)
        self.length = length
        self.limit = limit


class UdhError(ValueError):
    """A user data header that does not parse."""


class ConcatError(ValueError):
    """Concatenation information that cannot be right (part 0, part 3 of 2...)."""


@dataclass(frozen=True)
class Part:
    """One SMPP message of a split: put these into a submit_sm / deliver_sm.

    ``esm_class`` holds only the UDHI bit (or 0): OR it into your own.
    """

    short_message: bytes
    number: int
    total: int
    data_coding: int
    esm_class: int = 0
    tlvs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConcatInfo:
    """Where a part belongs: reference, part count, 1-based sequence number."""

    reference: int
    total: int
    seq: int
    source: str = "udh"  # "udh" or "sar"
    bits: int = 8  # width of the reference


@dataclass(frozen=True)
class UserDataHeader:
    """A TP-UDH as information elements ``(iei, data)`` in order."""

    elements: tuple[tuple[int, bytes], ...]

    @property
    def concat(self) -> ConcatInfo | None:
        """The concatenation IE (0x00 or 0x08), if present and valid.

        TS 23.040 §9.2.3.24.1: a part count or sequence number of 0, or a
        sequence number above the count, makes the receiver ignore the IE.
        """
        for iei, data in self.elements:
            if iei == IEI_CONCAT_8 and len(data) == 3:
                reference, total, seq, bits = data[0], data[1], data[2], 8
            elif iei == IEI_CONCAT_16 and len(data) == 4:
                reference, total, seq, bits = (data[0] << 8) | data[1], data[2], data[3], 16
            else:
                continue
            if total and 1 <= seq <= total:
                return ConcatInfo(reference, total, seq, "udh", bits)
            return None
        return None

    @property
    def ports(self) -> tuple[int, int] | None:
        """``(destination, originator)`` application ports (IE 0x05 or 0x04)."""
        for iei, data in self.elements:
            if iei == IEI_PORTS_16 and len(data) == 4:
                return (data[0] << 8) | data[1], (data[2] << 8) | data[3]
            if iei == IEI_PORTS_8 and len(data) == 2:
                return data[0], data[1]
        return None

    def encode(self) -> bytes:
        body = b"".join(bytes((iei, len(data))) + data for iei, data in self.elements)
        if len(body) > 255:
            raise UdhError(f"user data header of {len(body)} octets, at most 255")
        return bytes((len(body),)) + body


def parse_udh(short_message: bytes) -> tuple[UserDataHeader, bytes]:
    """Split a UDHI short message into its header and the payload after it."""
    if not short_message:
        raise UdhError("empty message cannot carry a user data header")
    udhl = short_message[0]
    if udhl + 1 > len(short_message):
        raise UdhError(f"UDHL {udhl} but {len(short_message) - 1} octets follow")
    elements: list[tuple[int, bytes]] = []
    pos, end = 1, udhl + 1
    while pos < end:
        if pos + 2 > end:
            raise UdhError("information element header cut by the end of the UDH")
        iei, length = short_message[pos], short_message[pos + 1]
        pos += 2
        if pos + length > end:
            raise UdhError(f"information element 0x{iei:02X} of {length} octets overruns the UDH")
        elements.append((iei, bytes(short_message[pos : pos + length])))
        pos += length
    return UserDataHeader(tuple(elements)), bytes(short_message[end:])


@dataclass(frozen=True)
class UserData:
    """A message's content: its UDH (if any), the payload after it, and where it belongs."""

    header: UserDataHeader | None
    payload: bytes
    concat: ConcatInfo | None


def split_user_data(pdu: Any) -> UserData:
    """Header, payload and concatenation info of a submit_sm / deliver_sm / data_sm.

    Content is ``short_message``, or the ``message_payload`` TLV when the
    former is empty.  The UDH is parsed when esm_class has UDHI (a bad one
    raises :class:`UdhError`); otherwise the SAR TLVs, when all three are
    there and consistent, give the concatenation info.
    """
    tlvs = pdu.tlvs
    content = getattr(pdu, "short_message", b"") or tlvs.get("message_payload", b"")
    if has_udhi(pdu.esm_class):
        header, payload = parse_udh(content)
        return UserData(header, payload, header.concat)
    info = None
    try:
        reference = tlvs["sar_msg_ref_num"]
        total = tlvs["sar_total_segments"]
        seq = tlvs["sar_segment_seqnum"]
    except KeyError:
        pass
    else:
        if total and 1 <= seq <= total:
            info = ConcatInfo(reference, total, seq, "sar", 16)
    return UserData(None, bytes(content), info)


def concat_info(pdu: Any) -> ConcatInfo | None:
    """Reference, total and sequence number from the UDH (8/16-bit) or the SAR TLVs."""
    return split_user_data(pdu).concat


# --------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------


def payload_limit(data_coding: int, max_content_length: int, udh_in_message: int, header_on_air: int) -> int:
    """Payload octets allowed in one part (see the module docstring for the rule)."""
    if gsm.is_septet_coding(data_coding):
        air = AIR_SEPTETS - (header_on_air * 8 + 6) // 7
    else:
        air = AIR_OCTETS - header_on_air
    return min(max_content_length - udh_in_message, air)


def _units(data: bytes, data_coding: int) -> list[int]:
    """Offsets where a part may end: never inside an escape pair or a surrogate pair."""
    name = gsm.alphabet(data_coding)
    cuts: list[int] = []
    pos, end = 0, len(data)
    if name == gsm.UCS2:
        if end % 2:
            raise gsm.CodingError(f"UCS2 content of odd length {end}", data_coding)
        while pos < end:
            step = 4 if 0xD8 <= data[pos] <= 0xDB and pos + 4 <= end and 0xDC <= data[pos + 2] <= 0xDF else 2
            pos += step
            cuts.append(pos)
    elif name == gsm.GSM:
        while pos < end:
            pos += 2 if data[pos] == gsm.ESCAPE and pos + 1 < end else 1
            cuts.append(pos)
    else:
        cuts = list(range(1, end + 1))
    return cuts


def _chunks(data: bytes, data_coding: int, limit: int) -> list[bytes]:
    if limit <= 0:
        raise ValueError(f"no room for content: a part holds {limit} octets")
    chunks: list[bytes] = []
    start = 0
    previous = 0
    for cut in _units(data, data_coding):
        if cut - start > limit:
            if cut - previous > limit:
                raise ValueError(f"a {cut - previous}-octet character does not fit in {limit} octets")
            chunks.append(data[start:previous])
            start = previous
        previous = cut
    if start < len(data) or not chunks:
        chunks.append(data[start:])
    return chunks


def split(
    content: str | bytes,
    data_coding: int,
    mode: str,
    max_content_length: int = 140,
    concat: str = "udh",
    reference: int = 0,
    udh_16bit: bool = False,
) -> list[Part]:
    """Cut a message into the parts to submit, per ``mode`` (see the module docstring).

    ``content`` is text (encoded with ``data_coding``, :class:`gsm.CodingError`
    if it cannot be) or the already encoded octets.  ``reference`` is the
    concatenation reference: 0-255 for the 8-bit UDH, 0-65535 for the 16-bit
    UDH and SAR.
    """
    if mode not in MODES:
        raise ValueError(f"unknown split mode {mode!r}; one of {', '.join(MODES)}")
    if concat not in ("udh", "sar"):
        raise ValueError(f"concat must be 'udh' or 'sar', not {concat!r}")
    data = gsm.encode(data_coding, content) if isinstance(content, str) else bytes(content)
    _units(data, data_coding)  # validates UCS2 length / coding before any mode

    if mode == "not_split":
        if len(data) <= SM_MAX_LENGTH:
            return [Part(data, 1, 1, data_coding)]
        return [Part(b"", 1, 1, data_coding, tlvs={"message_payload": data})]

    single = payload_limit(data_coding, max_content_length, 0, 0)
    if len(data) <= single:
        return [Part(data, 1, 1, data_coding)]
    if mode == "disabled":
        raise TooLong(f"{len(data)} octets, at most {single} in one message", len(data), single)
    if mode == "physical":
        chunks = _chunks(data, data_coding, single)
        return [Part(chunk, number, len(chunks), data_coding) for number, chunk in enumerate(chunks, 1)]

    wide = udh_16bit or (concat == "sar" and reference > 0xFF)
    header_octets = 7 if wide else 6
    if not 0 <= reference <= (0xFFFF if wide or concat == "sar" else 0xFF):
        raise ValueError(f"reference {reference} out of range for {'16' if wide else '8'}-bit concatenation")
    in_message = header_octets if concat == "udh" else 0
    limit = payload_limit(data_coding, max_content_length, in_message, header_octets)
    chunks = _chunks(data, data_coding, limit)
    total = len(chunks)
    if total > MAX_PARTS:
        raise TooLong(f"{len(data)} octets need {total} parts, at most {MAX_PARTS}", len(data), limit * MAX_PARTS)
    parts = []
    for number, chunk in enumerate(chunks, 1):
        if concat == "sar":
            tlvs = {"sar_msg_ref_num": reference, "sar_total_segments": total, "sar_segment_seqnum": number}
            parts.append(Part(chunk, number, total, data_coding, 0, tlvs))
            continue
        if wide:
            element = (IEI_CONCAT_16, bytes((reference >> 8, reference & 0xFF, total, number)))
        else:
            element = (IEI_CONCAT_8, bytes((reference, total, number)))
        header = UserDataHeader((element,)).encode()
        parts.append(Part(header + chunk, number, total, data_coding, ESM_UDHI))
    return parts


# --------------------------------------------------------------------------
# Reassembly
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Incomplete:
    """A message given up on: what had arrived, and why (``timeout`` or ``overflow``)."""

    key: Hashable
    reference: int
    total: int
    parts: dict[int, bytes]
    reason: str


@dataclass
class _Pending:
    total: int
    parts: dict[int, bytes]
    timer: IDelayedCall


class Reassembler:
    """Collect the parts of concatenated messages, in any order.

    Messages are keyed by the caller's ``key`` (typically ``(source,
    destination)``) plus the reference and the part count.  A part seen twice
    is dropped, also for ``timeout`` seconds after its message completed.  A
    message still incomplete ``timeout`` seconds after its first part, or the
    oldest one when more than ``max_pending`` are open, is dropped and
    reported to ``on_incomplete``.  Time comes from ``clock``.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float = 300.0,
        max_pending: int = 10000,
        on_incomplete: Callable[[Incomplete], None] | None = None,
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._clock = clock
        self.timeout = timeout
        self.max_pending = max_pending
        self._on_incomplete = on_incomplete
        self._pending: OrderedDict[tuple[Hashable, int, int], _Pending] = OrderedDict()
        self._done: OrderedDict[tuple[Hashable, int, int], float] = OrderedDict()
        self.duplicates = 0

    def __len__(self) -> int:
        """Messages waiting for parts."""
        return len(self._pending)

    def feed(self, key: Hashable, part_info: ConcatInfo, payload: bytes) -> bytes | None:
        """Add one part; the whole payload once the last one is in, else ``None``."""
        total, seq = part_info.total, part_info.seq
        if total < 1 or not 1 <= seq <= total:
            raise ConcatError(f"part {seq} of {total}")
        if total == 1:
            return bytes(payload)
        full_key = (key, part_info.reference, total)
        self._forget_done()
        if full_key in self._done:
            self.duplicates += 1
            return None
        pending = self._pending.get(full_key)
        if pending is None:
            while len(self._pending) >= self.max_pending:
                oldest_key, oldest = self._pending.popitem(last=False)
                oldest.timer.cancel()
                self._report(oldest_key, oldest, "overflow")
            timer = self._clock.callLater(self.timeout, self._expire, full_key)
            pending = self._pending[full_key] = _Pending(total, {}, timer)
        if seq in pending.parts:
            self.duplicates += 1
            return None
        pending.parts[seq] = bytes(payload)
        if len(pending.parts) < total:
            return None
        del self._pending[full_key]
        pending.timer.cancel()
        self._done[full_key] = self._clock.seconds() + self.timeout
        while len(self._done) > self.max_pending:
            self._done.popitem(last=False)
        return b"".join(pending.parts[number] for number in range(1, total + 1))

    def clear(self) -> None:
        """Drop everything and cancel the timers (at shutdown), reporting nothing."""
        for pending in self._pending.values():
            pending.timer.cancel()
        self._pending.clear()
        self._done.clear()

    def _forget_done(self) -> None:
        now = self._clock.seconds()
        done = self._done
        while done:
            first_key = next(iter(done))
            if done[first_key] > now:
                break
            del done[first_key]

    def _expire(self, full_key: tuple[Hashable, int, int]) -> None:
        pending = self._pending.pop(full_key, None)
        if pending is not None:
            self._report(full_key, pending, "timeout")

    def _report(self, full_key: tuple[Hashable, int, int], pending: _Pending, reason: str) -> None:
        key, reference, total = full_key
        self.log.info(
            "incomplete long message {key} ref {reference}: {count} of {total} parts ({reason})",
            key=key,
            reference=reference,
            count=len(pending.parts),
            total=total,
            reason=reason,
        )
        if self._on_incomplete is not None:
            self._on_incomplete(Incomplete(key, reference, total, dict(pending.parts), reason))
