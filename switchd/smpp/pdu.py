"""Sans-IO SMPP 3.4 codec: every PDU, TLVs, stream framing, delivery receipts.

Bytes go in, typed :class:`Pdu` dataclasses come out, and back: no socket, no
clock, no reactor.  One dataclass per command (``SubmitSm``, ``BindTransceiverResp``
...), built with keyword arguments and the spec's defaults, serialized with
:meth:`Pdu.encode`.  :func:`decode` reads one whole PDU, :class:`PduReader`
frames a byte stream cut at arbitrary places.

Strictness, both ways, never truncating:

* Encoding a value the spec does not allow (a C-Octet String longer than its
  field, a short_message over 254 octets, an integer out of range, a malformed
  time) raises :class:`FieldError`, naming the field.
* Decoding raises (or, from :class:`PduReader`, returns) :class:`PduError`,
  carrying the ``command_status`` the answer should have (``ESME_RINVSYSID``
  for a bad system_id, ``ESME_RINVSRCADR`` for a source address, ...), the
  ``command_id`` and ``sequence`` so :meth:`PduError.response` builds the
  right ``*_resp`` or ``generic_nack``; ``fatal`` says framing is lost and the
  connection must be closed.  Nothing else is ever raised for bad input.

Decoding rules worth knowing (each is tested):

* C-Octet Strings are ``str``, one character per octet (Latin-1), so any octet
  round-trips; a string that does not end within its field's maximum gets the
  field's status, a body that ends inside a field gets ``ESME_RINVCMDLEN``.
* ``sm_length`` above 254 or beyond the body -> ``ESME_RINVMSGLEN``; so do
  short_message and the message_payload TLV together (the spec forbids both).
* Octets after the last mandatory field are TLVs for the PDUs that may carry
  them (3.4, plus the SMPP 5.0 ``submit_sm_resp``, ``deliver_sm_resp`` and
  ``submit_multi_resp`` TLVs that real SMSCs send); for the others they are
  trailing garbage, ``ESME_RINVCMDLEN``.
* TLVs of SMPP 3.4 decode to typed values under their names; unknown tags are
  kept as raw bytes under their integer tag and re-encoded as they came.  A
  truncated TLV or a repeated tag is ``ESME_RINVTLVSTREAM``, a wrong length
  ``ESME_RINVTLVLEN``, a C-string with a NUL inside ``ESME_RINVTLVVAL``.  A
  C-string TLV missing its final NUL (a common vendor bug) is accepted.  A
  known TLV is not checked against the list of TLVs its PDU may carry (3.4
  asks receivers to ignore what they do not use): the server checks the ones
  it acts on.
* Field maxima include the NUL: system_id 16, password 9, system_type 13,
  address_range 41, service_type 6, addresses 21 (65 in data_sm and
  alert_notification), times 17 (empty or 16 characters, validated), message_id 65.
* A response may have an empty body (SMPP 3.4 returns no body with an error
  bind or submit_sm response, and many ESMEs send ``deliver_sm_resp`` without one); its
  fields keep their defaults.  Symmetrically, an error response whose fields
  are all at their defaults and that has no TLVs is encoded with no body.
"""

from __future__ import annotations

import abc
import re
import struct
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

HEADER_LENGTH = 16
#: Largest PDU a :class:`PduReader` accepts by default (one TLV can hold 64 KiB).
DEFAULT_MAX_LENGTH = 65536
SMPP_VERSION_34 = 0x34
SM_MAX_LENGTH = 254

# --------------------------------------------------------------------------
# command_id values (SMPP 3.4 §5.1.2.1)
# --------------------------------------------------------------------------

GENERIC_NACK = 0x80000000
BIND_RECEIVER = 0x00000001
BIND_RECEIVER_RESP = 0x80000001
BIND_TRANSMITTER = 0x00000002
BIND_TRANSMITTER_RESP = 0x80000002
QUERY_SM = 0x00000003
QUERY_SM_RESP = 0x80000003
SUBMIT_SM = 0x00000004
SUBMIT_SM_RESP = 0x80000004
DELIVER_SM = 0x00000005
DELIVER_SM_RESP = 0x80000005
UNBIND = 0x00000006
UNBIND_RESP = 0x80000006
REPLACE_SM = 0x00000007
REPLACE_SM_RESP = 0x80000007
CANCEL_SM = 0x00000008
CANCEL_SM_RESP = 0x80000008
BIND_TRANSCEIVER = 0x00000009
BIND_TRANSCEIVER_RESP = 0x80000009
OUTBIND = 0x0000000B
ENQUIRE_LINK = 0x00000015
ENQUIRE_LINK_RESP = 0x80000015
SUBMIT_MULTI = 0x00000021
SUBMIT_MULTI_RESP = 0x80000021
ALERT_NOTIFICATION = 0x00000102
DATA_SM = 0x00000103
DATA_SM_RESP = 0x80000103

RESPONSE_BIT = 0x80000000

# --------------------------------------------------------------------------
# command_status values (SMPP 3.4 §5.1.3; SMPP 5.0 names and additions too)
# --------------------------------------------------------------------------

ESME_ROK = 0x00000000
ESME_RINVMSGLEN = 0x00000001
ESME_RINVCMDLEN = 0x00000002
ESME_RINVCMDID = 0x00000003
ESME_RINVBNDSTS = 0x00000004
ESME_RALYBND = 0x00000005
ESME_RINVPRTFLG = 0x00000006
ESME_RINVREGDLVFLG = 0x00000007
ESME_RSYSERR = 0x00000008
ESME_RINVSRCADR = 0x0000000A
ESME_RINVDSTADR = 0x0000000B
ESME_RINVMSGID = 0x0000000C
ESME_RBINDFAIL = 0x0000000D
ESME_RINVPASWD = 0x0000000E
ESME_RINVSYSID = 0x0000000F
ESME_RCANCELFAIL = 0x00000011
ESME_RREPLACEFAIL = 0x00000013
ESME_RMSGQFUL = 0x00000014
ESME_RINVSERTYP = 0x00000015
ESME_RINVNUMDESTS = 0x00000033
ESME_RINVDLNAME = 0x00000034
ESME_RINVDESTFLAG = 0x00000040
ESME_RINVSUBREP = 0x00000042
ESME_RINVESMCLASS = 0x00000043
ESME_RCNTSUBDL = 0x00000044
ESME_RSUBMITFAIL = 0x00000045
ESME_RINVSRCTON = 0x00000048
ESME_RINVSRCNPI = 0x00000049
ESME_RINVDSTTON = 0x00000050
ESME_RINVDSTNPI = 0x00000051
ESME_RINVSYSTYP = 0x00000053
ESME_RINVREPFLAG = 0x00000054
ESME_RINVNUMMSGS = 0x00000055
ESME_RTHROTTLED = 0x00000058
ESME_RINVSCHED = 0x00000061
ESME_RINVEXPIRY = 0x00000062
ESME_RINVDFTMSGID = 0x00000063
ESME_RX_T_APPN = 0x00000064
ESME_RX_P_APPN = 0x00000065
ESME_RX_R_APPN = 0x00000066
ESME_RQUERYFAIL = 0x00000067
ESME_RINVOPTPARSTREAM = 0x000000C0
ESME_ROPTPARNOTALLWD = 0x000000C1
ESME_RINVPARLEN = 0x000000C2
ESME_RMISSINGOPTPARAM = 0x000000C3
ESME_RINVOPTPARAMVAL = 0x000000C4
ESME_RDELIVERYFAILURE = 0x000000FE
ESME_RUNKNOWNERR = 0x000000FF
# SMPP 5.0 names of the TLV errors (same values as the 3.4 names above)
ESME_RINVTLVSTREAM = ESME_RINVOPTPARSTREAM
ESME_RTLVNOTALLWD = ESME_ROPTPARNOTALLWD
ESME_RINVTLVLEN = ESME_RINVPARLEN
ESME_RMISSINGTLV = ESME_RMISSINGOPTPARAM
ESME_RINVTLVVAL = ESME_RINVOPTPARAMVAL
# SMPP 5.0 additions that SMSCs also return on 3.4 links
ESME_RSERTYPUNAUTH = 0x00000100
ESME_RPROHIBITED = 0x00000101
ESME_RSERTYPUNAVAIL = 0x00000102
ESME_RSERTYPDENIED = 0x00000103
ESME_RINVDCS = 0x00000104
ESME_RINVSRCADDRSUBUNIT = 0x00000105
ESME_RINVDSTADDRSUBUNIT = 0x00000106

#: command_status -> its SMPP 3.4 name (5.0 name for the 5.0 additions).
STATUS_NAMES: dict[int, str] = {
    ESME_ROK: "ESME_ROK",
    ESME_RINVMSGLEN: "ESME_RINVMSGLEN",
    ESME_RINVCMDLEN: "ESME_RINVCMDLEN",
    ESME_RINVCMDID: "ESME_RINVCMDID",
    ESME_RINVBNDSTS: "ESME_RINVBNDSTS",
    ESME_RALYBND: "ESME_RALYBND",
    ESME_RINVPRTFLG: "ESME_RINVPRTFLG",
    ESME_RINVREGDLVFLG: "ESME_RINVREGDLVFLG",
    ESME_RSYSERR: "ESME_RSYSERR",
    ESME_RINVSRCADR: "ESME_RINVSRCADR",
    ESME_RINVDSTADR: "ESME_RINVDSTADR",
    ESME_RINVMSGID: "ESME_RINVMSGID",
    ESME_RBINDFAIL: "ESME_RBINDFAIL",
    ESME_RINVPASWD: "ESME_RINVPASWD",
    ESME_RINVSYSID: "ESME_RINVSYSID",
    ESME_RCANCELFAIL: "ESME_RCANCELFAIL",
    ESME_RREPLACEFAIL: "ESME_RREPLACEFAIL",
    ESME_RMSGQFUL: "ESME_RMSGQFUL",
    ESME_RINVSERTYP: "ESME_RINVSERTYP",
    ESME_RINVNUMDESTS: "ESME_RINVNUMDESTS",
    ESME_RINVDLNAME: "ESME_RINVDLNAME",
    ESME_RINVDESTFLAG: "ESME_RINVDESTFLAG",
    ESME_RINVSUBREP: "ESME_RINVSUBREP",
    ESME_RINVESMCLASS: "ESME_RINVESMCLASS",
    ESME_RCNTSUBDL: "ESME_RCNTSUBDL",
    ESME_RSUBMITFAIL: "ESME_RSUBMITFAIL",
    ESME_RINVSRCTON: "ESME_RINVSRCTON",
    ESME_RINVSRCNPI: "ESME_RINVSRCNPI",
    ESME_RINVDSTTON: "ESME_RINVDSTTON",
    ESME_RINVDSTNPI: "ESME_RINVDSTNPI",
    ESME_RINVSYSTYP: "ESME_RINVSYSTYP",
    ESME_RINVREPFLAG: "ESME_RINVREPFLAG",
    ESME_RINVNUMMSGS: "ESME_RINVNUMMSGS",
    ESME_RTHROTTLED: "ESME_RTHROTTLED",
    ESME_RINVSCHED: "ESME_RINVSCHED",
    ESME_RINVEXPIRY: "ESME_RINVEXPIRY",
    ESME_RINVDFTMSGID: "ESME_RINVDFTMSGID",
    ESME_RX_T_APPN: "ESME_RX_T_APPN",
    ESME_RX_P_APPN: "ESME_RX_P_APPN",
    ESME_RX_R_APPN: "ESME_RX_R_APPN",
    ESME_RQUERYFAIL: "ESME_RQUERYFAIL",
    ESME_RINVOPTPARSTREAM: "ESME_RINVOPTPARSTREAM",
    ESME_ROPTPARNOTALLWD: "ESME_ROPTPARNOTALLWD",
    ESME_RINVPARLEN: "ESME_RINVPARLEN",
    ESME_RMISSINGOPTPARAM: "ESME_RMISSINGOPTPARAM",
    ESME_RINVOPTPARAMVAL: "ESME_RINVOPTPARAMVAL",
    ESME_RDELIVERYFAILURE: "ESME_RDELIVERYFAILURE",
    ESME_RUNKNOWNERR: "ESME_RUNKNOWNERR",
    ESME_RSERTYPUNAUTH: "ESME_RSERTYPUNAUTH",
    ESME_RPROHIBITED: "ESME_RPROHIBITED",
    ESME_RSERTYPUNAVAIL: "ESME_RSERTYPUNAVAIL",
    ESME_RSERTYPDENIED: "ESME_RSERTYPDENIED",
    ESME_RINVDCS: "ESME_RINVDCS",
    ESME_RINVSRCADDRSUBUNIT: "ESME_RINVSRCADDRSUBUNIT",
    ESME_RINVDSTADDRSUBUNIT: "ESME_RINVDSTADDRSUBUNIT",
}


def status_name(status: int) -> str:
    """A printable name for a command_status, vendor codes included."""
    return STATUS_NAMES.get(status) or f"0x{status:08X}"


# --------------------------------------------------------------------------
# esm_class and registered_delivery (SMPP 3.4 §5.2.12, §5.2.17)
# --------------------------------------------------------------------------

ESM_MODE_MASK = 0x03
ESM_MODE_DEFAULT = 0x00
ESM_MODE_DATAGRAM = 0x01
ESM_MODE_FORWARD = 0x02
ESM_MODE_STORE_AND_FORWARD = 0x03
ESM_TYPE_MASK = 0x3C
ESM_TYPE_DEFAULT = 0x00
ESM_TYPE_DELIVERY_RECEIPT = 0x04
ESM_TYPE_DELIVERY_ACK = 0x08
ESM_TYPE_MANUAL_ACK = 0x10
ESM_TYPE_CONVERSATION_ABORT = 0x18
ESM_TYPE_INTERMEDIATE_NOTIFICATION = 0x20
ESM_UDHI = 0x40
ESM_REPLY_PATH = 0x80

REGISTERED_RECEIPT_MASK = 0x03
RECEIPT_NONE = 0x00
RECEIPT_ALWAYS = 0x01  # on final success or failure
RECEIPT_ON_FAILURE = 0x02
RECEIPT_ON_SUCCESS = 0x03  # reserved in 3.4, "success only" in SMPP 5.0
REGISTERED_SME_ACK_MASK = 0x0C
REGISTERED_INTERMEDIATE = 0x10


def has_udhi(esm_class: int) -> bool:
    """The short message starts with a user data header."""
    return bool(esm_class & ESM_UDHI)


def message_type(esm_class: int) -> int:
    """The message type bits (``ESM_TYPE_*``)."""
    return esm_class & ESM_TYPE_MASK


def is_delivery_receipt(esm_class: int) -> bool:
    """A deliver_sm/data_sm that carries an SMSC delivery receipt."""
    return esm_class & ESM_TYPE_MASK == ESM_TYPE_DELIVERY_RECEIPT


def is_intermediate_notification(esm_class: int) -> bool:
    """A deliver_sm/data_sm that carries an intermediate delivery notification."""
    return esm_class & ESM_TYPE_MASK == ESM_TYPE_INTERMEDIATE_NOTIFICATION


# message_state values (SMPP 3.4 §5.2.28) and the receipt "stat" words (Appendix B)
ENROUTE = 1
DELIVERED = 2
EXPIRED = 3
DELETED = 4
UNDELIVERABLE = 5
ACCEPTED = 6
UNKNOWN = 7
REJECTED = 8

#: message_state -> receipt stat word.
MESSAGE_STATES: dict[int, str] = {
    ENROUTE: "ENROUTE",
    DELIVERED: "DELIVRD",
    EXPIRED: "EXPIRED",
    DELETED: "DELETED",
    UNDELIVERABLE: "UNDELIV",
    ACCEPTED: "ACCEPTD",
    UNKNOWN: "UNKNOWN",
    REJECTED: "REJECTD",
}
_STATE_BY_STAT = {stat: state for state, stat in MESSAGE_STATES.items()}
# long spellings some SMSCs write in receipts
_STAT_ALIASES = {
    "DELIVERED": "DELIVRD",
    "UNDELIVERABLE": "UNDELIV",
    "UNDELIVERED": "UNDELIV",
    "ACCEPTED": "ACCEPTD",
    "REJECTED": "REJECTD",
}
_FINAL_FAILURES = frozenset({EXPIRED, DELETED, UNDELIVERABLE, UNKNOWN, REJECTED})
_FINAL_SUCCESSES = frozenset({DELIVERED, ACCEPTED})


def _state(value: int | str) -> int:
    if isinstance(value, int):
        if value not in MESSAGE_STATES:
            raise ValueError(f"unknown message_state {value}")
        return value
    stat = value.strip().upper()
    stat = _STAT_ALIASES.get(stat, stat)
    try:
        return _STATE_BY_STAT[stat]
    except KeyError:
        raise ValueError(f"unknown receipt stat {value!r}") from None


def wants_receipt(registered_delivery: int, final_state: int | str) -> bool:
    """Does ``registered_delivery`` ask for an SMSC delivery receipt in this state?

    ``final_state`` is a message_state number or a stat word (``DELIVRD``...).
    0: never; 1: on any final outcome; 2: on failure only (EXPIRED, DELETED,
    UNDELIV, UNKNOWN, REJECTD); 3 (reserved in 3.4) is read as SMPP 5.0's
    "success only" (DELIVRD, ACCEPTD).  ENROUTE is not final: no receipt (see
    :func:`wants_intermediate`).
    """
    state = _state(final_state)
    mode = registered_delivery & REGISTERED_RECEIPT_MASK
    if mode == RECEIPT_ALWAYS:
        return state in _FINAL_FAILURES or state in _FINAL_SUCCESSES
    if mode == RECEIPT_ON_FAILURE:
        return state in _FINAL_FAILURES
    if mode == RECEIPT_ON_SUCCESS:
        return state in _FINAL_SUCCESSES
    return False


def wants_intermediate(registered_delivery: int) -> bool:
    """Intermediate notifications (ENROUTE...) were asked for."""
    return bool(registered_delivery & REGISTERED_INTERMEDIATE)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class FieldError(ValueError):
    """A value that cannot be encoded as the spec says.

    Attributes:
        field: the field or TLV name.
        reason: what is wrong.
        status: the command_status a peer would get for it.
    """

    def __init__(self, field: str, reason: str, status: int = ESME_RSYSERR) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.status = status


class PduError(ValueError):
    """A PDU (or stream) that cannot be accepted.

    Attributes:
        reason: what is wrong.
        status: the command_status of the answer (``ESME_RINVCMDLEN``...).
        command_id: of the offending PDU, when its header was read.
        sequence: of the offending PDU (0 when unknown).
        fatal: framing is lost; close the connection after the generic_nack.
    """

    def __init__(
        self,
        reason: str,
        status: int,
        *,
        command_id: int | None = None,
        sequence: int = 0,
        fatal: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.command_id = command_id
        self.sequence = sequence
        self.fatal = fatal

    def __repr__(self) -> str:
        command = "?" if self.command_id is None else COMMAND_NAMES.get(self.command_id, hex(self.command_id))
        return (
            f"PduError({self.reason!r}, status={status_name(self.status)}, command={command}, "
            f"sequence={self.sequence}, fatal={self.fatal})"
        )

    def response(self) -> Pdu | None:
        """The answer: the request's ``*_resp`` with :attr:`status`, else a generic_nack.

        ``None`` for a broken generic_nack (never answer one).
        """
        if self.command_id == GENERIC_NACK and not self.fatal:
            return None
        cls = None if self.fatal or self.command_id is None else _RESPONSES.get(self.command_id)
        if cls is None:
            return GenericNack(sequence=self.sequence, status=self.status)
        return cls(sequence=self.sequence, status=self.status)


class _BodyError(Exception):
    """Raised inside body decoding; :func:`decode` turns it into a :class:`PduError`."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


# --------------------------------------------------------------------------
# Time fields (SMPP 3.4 §7.1)
# --------------------------------------------------------------------------

_TIME_RE = re.compile(r"(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\d)(\d\d)([+\-R])")


def check_time(value: str) -> str:
    """Validate a schedule_delivery_time / validity_period / final_date.

    Returns ``""``, ``"absolute"`` or ``"relative"``; raises ``ValueError``
    otherwise.  Absolute ``YYMMDDhhmmsstnn+`` / ``-`` must be a real date with a
    UTC offset of at most 48 quarter hours; relative ``YYMMDDhhmmss000R``
    must be all digits.
    """
    if value == "":
        return ""
    match = _TIME_RE.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not YYMMDDhhmmsstnnp")
    if match[9] == "R":
        return "relative"
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    if int(match[8]) > 48:
        raise ValueError(f"{value!r}: UTC offset over 48 quarter hours")
    try:
        datetime(2000 + year, month, day, hour, minute, second)
    except ValueError as error:
        raise ValueError(f"{value!r}: {error}") from None
    return "absolute"


def parse_time(value: str, now: datetime) -> datetime | None:
    """An SMPP time as an aware UTC datetime; relative times count from ``now`` (aware).

    ``""`` gives ``None``.  Relative years and months are calendar ones
    (Jan 31 + 1 month is the last day of February).
    """
    kind = check_time(value)
    if not kind:
        return None
    parts = [int(value[i : i + 2]) for i in range(0, 12, 2)]
    if kind == "relative":
        years, months, days, hours, minutes, seconds = parts
        total_months = now.month - 1 + months + 12 * years
        year, month = now.year + total_months // 12, total_months % 12 + 1
        day = min(now.day, _days_in_month(year, month))
        shifted = now.replace(year=year, month=month, day=day)
        return (shifted + timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)).astimezone(
            UTC
        )
    year, month, day, hour, minute, second = parts
    offset = timedelta(minutes=15 * int(value[13:15]))
    if value[15] == "-":
        offset = -offset
    local = datetime(2000 + year, month, day, hour, minute, second, int(value[12]) * 100000)
    return (local - offset).replace(tzinfo=UTC)


def format_time(when: datetime) -> str:
    """An aware datetime as an absolute SMPP time in UTC (``YYMMDDhhmmsst00+``)."""
    if when.tzinfo is None:
        raise ValueError("format_time needs an aware datetime")
    utc = when.astimezone(UTC)
    return utc.strftime("%y%m%d%H%M%S") + f"{utc.microsecond // 100000}00+"


def _days_in_month(year: int, month: int) -> int:
    following = datetime(year + month // 12, month % 12 + 1, 1)
    return (following - timedelta(days=1)).day


# --------------------------------------------------------------------------
# TLVs (SMPP 3.4 §5.3)
# --------------------------------------------------------------------------

TlvValue = int | str | bytes | bool
Tlvs = dict[str | int, TlvValue]


@dataclass(frozen=True)
class TlvSpec:
    """How one optional parameter is typed.

    ``kind`` is ``int`` (``size`` octets, big endian), ``cstr`` (C-Octet String,
    at most ``max_len`` octets with its NUL), ``octets`` (``min_len`` to
    ``max_len`` octets) or ``flag`` (no value; present means ``True``).
    """

    name: str
    tag: int
    kind: str
    size: int = 0
    min_len: int = 0
    max_len: int = 0xFFFF


def _int_tlv(name: str, tag: int, size: int) -> TlvSpec:
    return TlvSpec(name, tag, "int", size=size, min_len=size, max_len=size)


TLV_SPECS: tuple[TlvSpec, ...] = (
    _int_tlv("dest_addr_subunit", 0x0005, 1),
    _int_tlv("dest_network_type", 0x0006, 1),
    _int_tlv("dest_bearer_type", 0x0007, 1),
    _int_tlv("dest_telematics_id", 0x0008, 2),
    _int_tlv("source_addr_subunit", 0x000D, 1),
    _int_tlv("source_network_type", 0x000E, 1),
    _int_tlv("source_bearer_type", 0x000F, 1),
    _int_tlv("source_telematics_id", 0x0010, 1),
    _int_tlv("qos_time_to_live", 0x0017, 4),
    _int_tlv("payload_type", 0x0019, 1),
    TlvSpec("additional_status_info_text", 0x001D, "cstr", max_len=256),
    TlvSpec("receipted_message_id", 0x001E, "cstr", max_len=65),
    _int_tlv("ms_msg_wait_facilities", 0x0030, 1),
    _int_tlv("privacy_indicator", 0x0201, 1),
    TlvSpec("source_subaddress", 0x0202, "octets", min_len=2, max_len=23),
    TlvSpec("dest_subaddress", 0x0203, "octets", min_len=2, max_len=23),
    _int_tlv("user_message_reference", 0x0204, 2),
    _int_tlv("user_response_code", 0x0205, 1),
    _int_tlv("source_port", 0x020A, 2),
    _int_tlv("destination_port", 0x020B, 2),
    _int_tlv("sar_msg_ref_num", 0x020C, 2),
    _int_tlv("language_indicator", 0x020D, 1),
    _int_tlv("sar_total_segments", 0x020E, 1),
    _int_tlv("sar_segment_seqnum", 0x020F, 1),
    _int_tlv("sc_interface_version", 0x0210, 1),
    _int_tlv("callback_num_pres_ind", 0x0302, 1),
    TlvSpec("callback_num_atag", 0x0303, "octets", max_len=65),
    _int_tlv("number_of_messages", 0x0304, 1),
    TlvSpec("callback_num", 0x0381, "octets", min_len=4, max_len=19),
    _int_tlv("dpf_result", 0x0420, 1),
    _int_tlv("set_dpf", 0x0421, 1),
    _int_tlv("ms_availability_status", 0x0422, 1),
    TlvSpec("network_error_code", 0x0423, "octets", min_len=3, max_len=3),
    TlvSpec("message_payload", 0x0424, "octets"),
    _int_tlv("delivery_failure_reason", 0x0425, 1),
    _int_tlv("more_messages_to_send", 0x0426, 1),
    _int_tlv("message_state", 0x0427, 1),
    _int_tlv("ussd_service_op", 0x0501, 1),
    _int_tlv("display_time", 0x1201, 1),
    _int_tlv("sms_signal", 0x1203, 2),
    _int_tlv("ms_validity", 0x1204, 1),
    TlvSpec("alert_on_message_delivery", 0x130C, "flag", max_len=0),
    _int_tlv("its_reply_type", 0x1380, 1),
    TlvSpec("its_session_info", 0x1383, "octets", min_len=2, max_len=2),
)
TLV_BY_NAME: dict[str, TlvSpec] = {spec.name: spec for spec in TLV_SPECS}
TLV_BY_TAG: dict[int, TlvSpec] = {spec.tag: spec for spec in TLV_SPECS}


def _encode_tlvs(tlvs: Tlvs, out: bytearray) -> None:
    for key, value in tlvs.items():
        if isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key <= 0xFFFF:
                raise FieldError(f"TLV 0x{key:X}", "tag out of 0-0xFFFF", ESME_RINVTLVSTREAM)
            if not isinstance(value, (bytes, bytearray)):
                raise FieldError(f"TLV 0x{key:04X}", "a TLV given by tag takes raw bytes", ESME_RINVTLVVAL)
            raw = bytes(value)
            tag = key
        else:
            spec = TLV_BY_NAME.get(key) if isinstance(key, str) else None
            if spec is None:
                raise FieldError(str(key), "unknown TLV name (give unknown TLVs by integer tag)", ESME_RINVTLVSTREAM)
            raw = _encode_tlv_value(spec, value)
            tag = spec.tag
        if len(raw) > 0xFFFF:
            raise FieldError(str(key), f"{len(raw)} octets, at most 65535", ESME_RINVTLVLEN)
        out += struct.pack(">HH", tag, len(raw))
        out += raw


def _encode_tlv_value(spec: TlvSpec, value: TlvValue) -> bytes:
    name = spec.name
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldError(name, f"must be an int, not {type(value).__name__}", ESME_RINVTLVVAL)
        if not 0 <= value < 1 << (8 * spec.size):
            raise FieldError(name, f"{value} does not fit in {spec.size} octet(s)", ESME_RINVTLVVAL)
        return value.to_bytes(spec.size, "big")
    if spec.kind == "cstr":
        raw = _cstring_octets(name, value, ESME_RINVTLVVAL)
        if len(raw) + 1 > spec.max_len:
            raise FieldError(name, f"{len(raw)} octets, at most {spec.max_len - 1}", ESME_RINVTLVLEN)
        return raw + b"\x00"
    if spec.kind == "flag":
        if value is not True:
            raise FieldError(name, "a flag TLV takes True (leave it out for False)", ESME_RINVTLVVAL)
        return b""
    if not isinstance(value, (bytes, bytearray)):
        raise FieldError(name, f"must be bytes, not {type(value).__name__}", ESME_RINVTLVVAL)
    if not spec.min_len <= len(value) <= spec.max_len:
        raise FieldError(name, f"{len(value)} octets, must be {spec.min_len}-{spec.max_len}", ESME_RINVTLVLEN)
    return bytes(value)


def _decode_tlvs(body: bytes, pos: int) -> Tlvs:
    tlvs: Tlvs = {}
    end = len(body)
    while pos < end:
        if end - pos < 4:
            raise _BodyError(f"{end - pos} stray octet(s) where a TLV header was expected", ESME_RINVTLVSTREAM)
        tag, length = struct.unpack_from(">HH", body, pos)
        pos += 4
        if pos + length > end:
            raise _BodyError(f"TLV 0x{tag:04X} claims {length} octets, {end - pos} left", ESME_RINVTLVSTREAM)
        raw = body[pos : pos + length]
        pos += length
        spec = TLV_BY_TAG.get(tag)
        key: str | int = tag if spec is None else spec.name
        if key in tlvs:
            raise _BodyError(f"TLV {key} appears twice", ESME_RINVTLVSTREAM)
        tlvs[key] = raw if spec is None else _decode_tlv_value(spec, raw)
    return tlvs


def _decode_tlv_value(spec: TlvSpec, raw: bytes) -> TlvValue:
    length = len(raw)
    if spec.kind == "int":
        if length != spec.size:
            raise _BodyError(f"TLV {spec.name} has {length} octets, not {spec.size}", ESME_RINVTLVLEN)
        return int.from_bytes(raw, "big")
    if spec.kind == "cstr":
        if length > spec.max_len:
            raise _BodyError(f"TLV {spec.name} has {length} octets, at most {spec.max_len}", ESME_RINVTLVLEN)
        if raw.endswith(b"\x00"):
            raw = raw[:-1]
        if b"\x00" in raw:
            raise _BodyError(f"TLV {spec.name} has a NUL inside", ESME_RINVTLVVAL)
        return raw.decode("latin-1")
    if spec.kind == "flag":
        if length:
            raise _BodyError(f"TLV {spec.name} takes no value, has {length} octets", ESME_RINVTLVLEN)
        return True
    if not spec.min_len <= length <= spec.max_len:
        raise _BodyError(
            f"TLV {spec.name} has {length} octets, must be {spec.min_len}-{spec.max_len}", ESME_RINVTLVLEN
        )
    return raw


# --------------------------------------------------------------------------
# Mandatory field kinds
# --------------------------------------------------------------------------


def _cstring_octets(name: str, value: object, status: int) -> bytes:
    if not isinstance(value, str):
        raise FieldError(name, f"must be str, not {type(value).__name__}", status)
    if "\x00" in value:
        raise FieldError(name, "contains a NUL", status)
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError as error:
        raise FieldError(name, f"{value[error.start]!r} is not one octet", status) from None


class _Reader:
    """A cursor over a PDU body."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)

    def u8(self, name: str) -> int:
        if self.pos >= self.end:
            raise _BodyError(f"body ends before {name}", ESME_RINVCMDLEN)
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u32(self, name: str) -> int:
        if self.pos + 4 > self.end:
            raise _BodyError(f"body ends inside {name}", ESME_RINVCMDLEN)
        (value,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return value

    def cstring(self, name: str, max_len: int, status: int) -> str:
        pos = self.pos
        nul = self.data.find(b"\x00", pos, min(pos + max_len, self.end))
        if nul < 0:
            if self.end - pos >= max_len:
                raise _BodyError(f"{name} longer than {max_len - 1} octets", status)
            raise _BodyError(f"body ends inside {name}", ESME_RINVCMDLEN)
        self.pos = nul + 1
        return self.data[pos:nul].decode("latin-1")


class _Kind(abc.ABC):
    """How a mandatory field is laid out on the wire."""

    @abc.abstractmethod
    def encode(self, name: str, value: Any, out: bytearray) -> None:
        """Append ``value`` to ``out``; :class:`FieldError` if the spec does not allow it."""

    @abc.abstractmethod
    def decode(self, name: str, reader: _Reader) -> Any:
        """Read the field; :class:`_BodyError` with the right status if it is bad."""


class _Int(_Kind):
    def __init__(self, size: int) -> None:
        self.size = size

    def encode(self, name: str, value: Any, out: bytearray) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldError(name, f"must be an int, not {type(value).__name__}")
        if not 0 <= value < 1 << (8 * self.size):
            raise FieldError(name, f"{value} does not fit in {self.size} octet(s)")
        out += value.to_bytes(self.size, "big")

    def decode(self, name: str, reader: _Reader) -> int:
        return reader.u8(name) if self.size == 1 else reader.u32(name)


class _CString(_Kind):
    def __init__(self, max_len: int, status: int, time: bool = False) -> None:
        self.max_len = max_len
        self.status = status
        self.time = time

    def encode(self, name: str, value: Any, out: bytearray) -> None:
        raw = _cstring_octets(name, value, self.status)
        if len(raw) + 1 > self.max_len:
            raise FieldError(name, f"{len(raw)} octets, at most {self.max_len - 1}", self.status)
        if self.time:
            try:
                check_time(value)
            except ValueError as error:
                raise FieldError(name, str(error), self.status) from None
        out += raw
        out.append(0)

    def decode(self, name: str, reader: _Reader) -> str:
        value = reader.cstring(name, self.max_len, self.status)
        if self.time:
            try:
                check_time(value)
            except ValueError as error:
                raise _BodyError(f"{name}: {error}", self.status) from None
        return value


class _ShortMessage(_Kind):
    """sm_length (1 octet) and short_message (that many octets)."""

    def encode(self, name: str, value: Any, out: bytearray) -> None:
        if not isinstance(value, (bytes, bytearray)):
            raise FieldError(name, f"must be bytes, not {type(value).__name__}", ESME_RINVMSGLEN)
        if len(value) > SM_MAX_LENGTH:
            raise FieldError(
                name, f"{len(value)} octets, at most {SM_MAX_LENGTH} (use message_payload)", ESME_RINVMSGLEN
            )
        out.append(len(value))
        out += value

    def decode(self, name: str, reader: _Reader) -> bytes:
        length = reader.u8("sm_length")
        if length > SM_MAX_LENGTH:
            raise _BodyError(f"sm_length {length} over {SM_MAX_LENGTH}", ESME_RINVMSGLEN)
        if reader.pos + length > reader.end:
            raise _BodyError(f"sm_length {length} but {reader.end - reader.pos} octets left", ESME_RINVMSGLEN)
        value = reader.data[reader.pos : reader.pos + length]
        reader.pos += length
        return value


@dataclass(frozen=True)
class SmeAddress:
    """A submit_multi destination that is one SME (dest_flag 1)."""

    address: str
    ton: int = 0
    npi: int = 0


@dataclass(frozen=True)
class DistributionList:
    """A submit_multi destination that is an SMSC distribution list (dest_flag 2)."""

    name: str


@dataclass(frozen=True)
class UnsuccessSme:
    """A submit_multi_resp destination the SMSC did not accept."""

    address: str
    error_status_code: int
    ton: int = 0
    npi: int = 0


_U8 = _Int(1)
_U32 = _Int(4)
_ADDR21_DST = _CString(21, ESME_RINVDSTADR)
_DL_NAME = _CString(21, ESME_RINVDLNAME)
MAX_DESTS = 254


class _DestAddresses(_Kind):
    """number_of_dests and the dest_address structures of submit_multi."""

    def encode(self, name: str, value: Any, out: bytearray) -> None:
        if not 1 <= len(value) <= MAX_DESTS:
            raise FieldError(name, f"{len(value)} destinations, must be 1-{MAX_DESTS}", ESME_RINVNUMDESTS)
        out.append(len(value))
        for dest in value:
            if isinstance(dest, SmeAddress):
                out.append(1)
                _U8.encode("dest_addr_ton", dest.ton, out)
                _U8.encode("dest_addr_npi", dest.npi, out)
                _ADDR21_DST.encode("destination_addr", dest.address, out)
            elif isinstance(dest, DistributionList):
                out.append(2)
                _DL_NAME.encode("dl_name", dest.name, out)
            else:
                raise FieldError(name, f"{dest!r} is neither SmeAddress nor DistributionList", ESME_RINVDESTFLAG)

    def decode(self, name: str, reader: _Reader) -> list[SmeAddress | DistributionList]:
        count = reader.u8("number_of_dests")
        if not 1 <= count <= MAX_DESTS:
            raise _BodyError(f"number_of_dests {count}, must be 1-{MAX_DESTS}", ESME_RINVNUMDESTS)
        dests: list[SmeAddress | DistributionList] = []
        for _ in range(count):
            flag = reader.u8("dest_flag")
            if flag == 1:
                ton = reader.u8("dest_addr_ton")
                npi = reader.u8("dest_addr_npi")
                dests.append(SmeAddress(_ADDR21_DST.decode("destination_addr", reader), ton, npi))
            elif flag == 2:
                dests.append(DistributionList(_DL_NAME.decode("dl_name", reader)))
            else:
                raise _BodyError(f"dest_flag {flag}, must be 1 or 2", ESME_RINVDESTFLAG)
        return dests


class _UnsuccessSmes(_Kind):
    """no_unsuccess and the unsuccess_sme structures of submit_multi_resp."""

    def encode(self, name: str, value: Any, out: bytearray) -> None:
        if len(value) > 255:
            raise FieldError(name, f"{len(value)} entries, at most 255")
        out.append(len(value))
        for sme in value:
            if not isinstance(sme, UnsuccessSme):
                raise FieldError(name, f"{sme!r} is not an UnsuccessSme")
            _U8.encode("dest_addr_ton", sme.ton, out)
            _U8.encode("dest_addr_npi", sme.npi, out)
            _ADDR21_DST.encode("destination_addr", sme.address, out)
            _U32.encode("error_status_code", sme.error_status_code, out)

    def decode(self, name: str, reader: _Reader) -> list[UnsuccessSme]:
        count = reader.u8("no_unsuccess")
        smes = []
        for _ in range(count):
            ton = reader.u8("dest_addr_ton")
            npi = reader.u8("dest_addr_npi")
            address = _ADDR21_DST.decode("destination_addr", reader)
            smes.append(UnsuccessSme(address, reader.u32("error_status_code"), ton, npi))
        return smes


_META = "smpp"


def _u8(default: int = 0) -> Any:
    return field(default=default, metadata={_META: _U8})


def _cstr(max_len: int, status: int, *, time: bool = False, repr: bool = True) -> Any:
    return field(default="", repr=repr, metadata={_META: _CString(max_len, status, time)})


def _sm() -> Any:
    return field(default=b"", metadata={_META: _ShortMessage()})


# --------------------------------------------------------------------------
# PDUs
# --------------------------------------------------------------------------

_LAYOUTS: dict[type, tuple[tuple[str, _Kind, Any], ...]] = {}


@dataclass(kw_only=True)
class Pdu:
    """One SMPP PDU: header fields, the command's mandatory fields, TLVs.

    ``tlvs`` maps TLV names (``"sar_msg_ref_num"``) to typed values and
    unknown integer tags to raw bytes, in wire order.
    """

    command_id: ClassVar[int] = 0
    command_name: ClassVar[str] = ""
    tlvs_allowed: ClassVar[bool] = False

    sequence: int = 0
    status: int = ESME_ROK
    tlvs: Tlvs = field(default_factory=dict)

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE_BIT)

    @classmethod
    def _layout(cls) -> tuple[tuple[str, _Kind, Any], ...]:
        layout = _LAYOUTS.get(cls)
        if layout is None:
            entries = []
            for f in fields(cls):
                if _META in f.metadata:
                    default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
                    entries.append((f.name, f.metadata[_META], default))
            layout = _LAYOUTS[cls] = tuple(entries)
        return layout

    def encode(self) -> bytes:
        """The PDU on the wire; :class:`FieldError` for anything the spec does not allow."""
        for name in ("sequence", "status"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
                raise FieldError(name, f"{value!r} is not a 32-bit unsigned integer")
        body = bytearray()
        layout = self._layout()
        if not (
            self.status != ESME_ROK
            and self.is_response
            and not self.tlvs
            and all(getattr(self, name) == default for name, _, default in layout)
        ):
            for name, kind, _ in layout:
                kind.encode(name, getattr(self, name), body)
        if self.tlvs:
            if not self.tlvs_allowed:
                raise FieldError("tlvs", f"{self.command_name} carries no TLVs", ESME_ROPTPARNOTALLWD)
            _encode_tlvs(self.tlvs, body)
        if getattr(self, "short_message", b"") and "message_payload" in self.tlvs:
            raise FieldError("short_message", "short_message and message_payload both set", ESME_RINVMSGLEN)
        return struct.pack(">IIII", HEADER_LENGTH + len(body), self.command_id, self.status, self.sequence) + body

    @classmethod
    def decode_body(cls, body: bytes, *, status: int = ESME_ROK, sequence: int = 0) -> Pdu:
        """Build this command from its body; raises :class:`PduError`."""
        try:
            return cls._decode_body(body, status, sequence)
        except _BodyError as error:
            raise PduError(error.reason, error.status, command_id=cls.command_id, sequence=sequence) from None

    @classmethod
    def _decode_body(cls, body: bytes, status: int, sequence: int) -> Pdu:
        layout = cls._layout()
        if not body and cls.command_id & RESPONSE_BIT:
            return cls(sequence=sequence, status=status)
        reader = _Reader(body)
        values = {name: kind.decode(name, reader) for name, kind, _ in layout}
        tlvs: Tlvs = {}
        if reader.pos < reader.end:
            if not cls.tlvs_allowed:
                raise _BodyError(f"{reader.end - reader.pos} octet(s) after the last field", ESME_RINVCMDLEN)
            tlvs = _decode_tlvs(body, reader.pos)
        if values.get("short_message") and "message_payload" in tlvs:
            raise _BodyError("short_message and message_payload both present", ESME_RINVMSGLEN)
        return cls(sequence=sequence, status=status, tlvs=tlvs, **values)


# -- session management --------------------------------------------------------


@dataclass(kw_only=True)
class _Bind(Pdu):
    system_id: str = _cstr(16, ESME_RINVSYSID)
    password: str = _cstr(9, ESME_RINVPASWD, repr=False)
    system_type: str = _cstr(13, ESME_RINVSYSTYP)
    interface_version: int = _u8(SMPP_VERSION_34)
    addr_ton: int = _u8()
    addr_npi: int = _u8()
    address_range: str = _cstr(41, ESME_RBINDFAIL)


@dataclass(kw_only=True)
class BindTransmitter(_Bind):
    command_id: ClassVar[int] = BIND_TRANSMITTER
    command_name: ClassVar[str] = "bind_transmitter"


@dataclass(kw_only=True)
class BindReceiver(_Bind):
    command_id: ClassVar[int] = BIND_RECEIVER
    command_name: ClassVar[str] = "bind_receiver"


@dataclass(kw_only=True)
class BindTransceiver(_Bind):
    command_id: ClassVar[int] = BIND_TRANSCEIVER
    command_name: ClassVar[str] = "bind_transceiver"


@dataclass(kw_only=True)
class _BindResp(Pdu):
    tlvs_allowed: ClassVar[bool] = True  # sc_interface_version
    system_id: str = _cstr(16, ESME_RINVSYSID)


@dataclass(kw_only=True)
class BindTransmitterResp(_BindResp):
    command_id: ClassVar[int] = BIND_TRANSMITTER_RESP
    command_name: ClassVar[str] = "bind_transmitter_resp"


@dataclass(kw_only=True)
class BindReceiverResp(_BindResp):
    command_id: ClassVar[int] = BIND_RECEIVER_RESP
    command_name: ClassVar[str] = "bind_receiver_resp"


@dataclass(kw_only=True)
class BindTransceiverResp(_BindResp):
    command_id: ClassVar[int] = BIND_TRANSCEIVER_RESP
    command_name: ClassVar[str] = "bind_transceiver_resp"


@dataclass(kw_only=True)
class Outbind(Pdu):
    command_id: ClassVar[int] = OUTBIND
    command_name: ClassVar[str] = "outbind"
    system_id: str = _cstr(16, ESME_RINVSYSID)
    password: str = _cstr(9, ESME_RINVPASWD, repr=False)


@dataclass(kw_only=True)
class Unbind(Pdu):
    command_id: ClassVar[int] = UNBIND
    command_name: ClassVar[str] = "unbind"


@dataclass(kw_only=True)
class UnbindResp(Pdu):
    command_id: ClassVar[int] = UNBIND_RESP
    command_name: ClassVar[str] = "unbind_resp"


@dataclass(kw_only=True)
class EnquireLink(Pdu):
    command_id: ClassVar[int] = ENQUIRE_LINK
    command_name: ClassVar[str] = "enquire_link"


@dataclass(kw_only=True)
class EnquireLinkResp(Pdu):
    command_id: ClassVar[int] = ENQUIRE_LINK_RESP
    command_name: ClassVar[str] = "enquire_link_resp"


@dataclass(kw_only=True)
class GenericNack(Pdu):
    command_id: ClassVar[int] = GENERIC_NACK
    command_name: ClassVar[str] = "generic_nack"


# -- messages --------------------------------------------------------------------


@dataclass(kw_only=True)
class _ShortMessagePdu(Pdu):
    """The common layout of submit_sm and deliver_sm."""

    tlvs_allowed: ClassVar[bool] = True
    service_type: str = _cstr(6, ESME_RINVSERTYP)
    source_addr_ton: int = _u8()
    source_addr_npi: int = _u8()
    source_addr: str = _cstr(21, ESME_RINVSRCADR)
    dest_addr_ton: int = _u8()
    dest_addr_npi: int = _u8()
    destination_addr: str = _cstr(21, ESME_RINVDSTADR)
    esm_class: int = _u8()
    protocol_id: int = _u8()
    priority_flag: int = _u8()
    schedule_delivery_time: str = _cstr(17, ESME_RINVSCHED, time=True)
    validity_period: str = _cstr(17, ESME_RINVEXPIRY, time=True)
    registered_delivery: int = _u8()
    replace_if_present_flag: int = _u8()
    data_coding: int = _u8()
    sm_default_msg_id: int = _u8()
    short_message: bytes = _sm()

    # submit_sm and deliver_sm are most of the traffic (every message and every
    # receipt crosses two of them), so they have a codec of their own, written out
    # for this layout: the generic one (a method call per field through the layout)
    # was about a tenth of the daemon's time under load. It takes only what is
    # plainly valid; anything else goes through the generic codec, which raises
    # the same FieldError / PduError as always.

    def encode(self) -> bytes:
        data = self._encode_fast()
        return data if data is not None else Pdu.encode(self)

    def _encode_fast(self) -> bytes | None:
        """The PDU on the wire, or None when a value needs the generic codec's checks."""
        sequence, status, tlvs = self.sequence, self.status, self.tlvs
        octets = (
            self.source_addr_ton, self.source_addr_npi, self.dest_addr_ton, self.dest_addr_npi, self.esm_class,
            self.protocol_id, self.priority_flag, self.registered_delivery, self.replace_if_present_flag,
            self.data_coding, self.sm_default_msg_id,
        )
        if type(sequence) is not int or type(status) is not int or not (
            0 <= sequence <= 0xFFFFFFFF and 0 <= status <= 0xFFFFFFFF
        ):
            return None
        for value in octets:
            if type(value) is not int:
                return None  # bool, None, ...: the generic codec names the field
        short_message = self.short_message
        if type(short_message) not in (bytes, bytearray) or len(short_message) > SM_MAX_LENGTH:
            return None
        schedule, validity = self.schedule_delivery_time, self.validity_period
        try:
            service_type = self.service_type.encode("latin-1")
            source = self.source_addr.encode("latin-1")
            destination = self.destination_addr.encode("latin-1")
            schedule_raw = schedule.encode("latin-1")
            validity_raw = validity.encode("latin-1")
            head = bytes(octets[:2])
            middle = bytes(octets[2:4])
            classes = bytes(octets[4:7])
            tail = bytes(octets[7:]) + bytes((len(short_message),))
            if schedule:
                check_time(schedule)
            if validity:
                check_time(validity)
        except (AttributeError, UnicodeEncodeError, ValueError):
            return None  # not a str, not Latin-1, an octet out of range, a bad time
        if (
            len(service_type) > 5 or len(source) > 20 or len(destination) > 20
            or len(schedule_raw) > 16 or len(validity_raw) > 16
            or b"\x00" in service_type or b"\x00" in source or b"\x00" in destination
        ):
            return None
        extra = b""
        if tlvs:
            if short_message and "message_payload" in tlvs:
                return None
            out = bytearray()
            _encode_tlvs(tlvs, out)  # its FieldError is the generic codec's
            extra = bytes(out)
        body = b"".join((
            service_type, b"\x00", head, source, b"\x00", middle, destination, b"\x00", classes,
            schedule_raw, b"\x00", validity_raw, b"\x00", tail, short_message, extra,
        ))
        return _HEADER.pack(HEADER_LENGTH + len(body), self.command_id, status, sequence) + body

    @classmethod
    def _decode_body(cls, body: bytes, status: int, sequence: int) -> Pdu:
        end = len(body)
        find = body.find
        nul = find(b"\x00", 0, min(6, end))
        if nul < 0:
            return super()._decode_body(body, status, sequence)
        service_type = body[:nul].decode("latin-1")
        pos = nul + 3
        nul = find(b"\x00", pos, min(pos + 21, end))
        if nul < 0 or pos > end:
            return super()._decode_body(body, status, sequence)
        source_ton, source_npi = body[pos - 2], body[pos - 1]
        source = body[pos:nul].decode("latin-1")
        pos = nul + 3
        nul = find(b"\x00", pos, min(pos + 21, end))
        if nul < 0 or pos > end:
            return super()._decode_body(body, status, sequence)
        dest_ton, dest_npi = body[pos - 2], body[pos - 1]
        destination = body[pos:nul].decode("latin-1")
        pos = nul + 4
        nul = find(b"\x00", pos, min(pos + 17, end))
        if nul < 0 or pos > end:
            return super()._decode_body(body, status, sequence)
        esm_class, protocol_id, priority_flag = body[pos - 3], body[pos - 2], body[pos - 1]
        schedule = body[pos:nul].decode("latin-1")
        pos = nul + 1
        nul = find(b"\x00", pos, min(pos + 17, end))
        if nul < 0:
            return super()._decode_body(body, status, sequence)
        validity = body[pos:nul].decode("latin-1")
        pos = nul + 6
        if pos > end:
            return super()._decode_body(body, status, sequence)
        registered, replace, data_coding, default_msg_id, length = body[pos - 5 : pos]
        if length > SM_MAX_LENGTH or pos + length > end:
            return super()._decode_body(body, status, sequence)
        try:
            if schedule:
                check_time(schedule)
            if validity:
                check_time(validity)
        except ValueError:
            return super()._decode_body(body, status, sequence)
        short_message = body[pos : pos + length]
        pos += length
        tlvs: Tlvs = _decode_tlvs(body, pos) if pos < end else {}
        if short_message and "message_payload" in tlvs:
            raise _BodyError("short_message and message_payload both present", ESME_RINVMSGLEN)
        return cls(
            sequence=sequence, status=status, tlvs=tlvs, service_type=service_type, source_addr_ton=source_ton,
            source_addr_npi=source_npi, source_addr=source, dest_addr_ton=dest_ton, dest_addr_npi=dest_npi,
            destination_addr=destination, esm_class=esm_class, protocol_id=protocol_id,
            priority_flag=priority_flag, schedule_delivery_time=schedule, validity_period=validity,
            registered_delivery=registered, replace_if_present_flag=replace, data_coding=data_coding,
            sm_default_msg_id=default_msg_id, short_message=short_message,
        )


@dataclass(kw_only=True)
class _MessageIdResp(Pdu):
    """submit_sm_resp and deliver_sm_resp (a message_id and TLVs), one for every
    message and receipt: a codec written out for them, the generic one for the rest."""

    tlvs_allowed: ClassVar[bool] = True
    message_id: str = _cstr(65, ESME_RINVMSGID)

    def encode(self) -> bytes:
        sequence, status, message_id = self.sequence, self.status, self.message_id
        if (
            type(sequence) is int and type(status) is int and type(message_id) is str and not self.tlvs
            and 0 <= sequence <= 0xFFFFFFFF and 0 <= status <= 0xFFFFFFFF
        ):
            if status != ESME_ROK and not message_id:
                return _HEADER.pack(HEADER_LENGTH, self.command_id, status, sequence)  # an error: no body
            try:
                raw = message_id.encode("latin-1")
            except UnicodeEncodeError:
                raw = None
            if raw is not None and len(raw) <= 64 and b"\x00" not in raw:
                return _HEADER.pack(HEADER_LENGTH + len(raw) + 1, self.command_id, status, sequence) + raw + b"\x00"
        return Pdu.encode(self)

    @classmethod
    def _decode_body(cls, body: bytes, status: int, sequence: int) -> Pdu:
        if not body:
            return cls(sequence=sequence, status=status)
        end = len(body)
        nul = body.find(b"\x00", 0, min(65, end))
        if nul < 0:
            return super()._decode_body(body, status, sequence)
        tlvs: Tlvs = _decode_tlvs(body, nul + 1) if nul + 1 < end else {}
        return cls(sequence=sequence, status=status, tlvs=tlvs, message_id=body[:nul].decode("latin-1"))


@dataclass(kw_only=True)
class SubmitSm(_ShortMessagePdu):
    command_id: ClassVar[int] = SUBMIT_SM
    command_name: ClassVar[str] = "submit_sm"


@dataclass(kw_only=True)
class DeliverSm(_ShortMessagePdu):
    command_id: ClassVar[int] = DELIVER_SM
    command_name: ClassVar[str] = "deliver_sm"


@dataclass(kw_only=True)
class SubmitSmResp(_MessageIdResp):
    command_id: ClassVar[int] = SUBMIT_SM_RESP
    command_name: ClassVar[str] = "submit_sm_resp"


@dataclass(kw_only=True)
class DeliverSmResp(_MessageIdResp):
    command_id: ClassVar[int] = DELIVER_SM_RESP
    command_name: ClassVar[str] = "deliver_sm_resp"


@dataclass(kw_only=True)
class SubmitMulti(Pdu):
    command_id: ClassVar[int] = SUBMIT_MULTI
    command_name: ClassVar[str] = "submit_multi"
    tlvs_allowed: ClassVar[bool] = True
    service_type: str = _cstr(6, ESME_RINVSERTYP)
    source_addr_ton: int = _u8()
    source_addr_npi: int = _u8()
    source_addr: str = _cstr(21, ESME_RINVSRCADR)
    dest_addresses: list[SmeAddress | DistributionList] = field(
        default_factory=list, metadata={_META: _DestAddresses()}
    )
    esm_class: int = _u8()
    protocol_id: int = _u8()
    priority_flag: int = _u8()
    schedule_delivery_time: str = _cstr(17, ESME_RINVSCHED, time=True)
    validity_period: str = _cstr(17, ESME_RINVEXPIRY, time=True)
    registered_delivery: int = _u8()
    replace_if_present_flag: int = _u8()
    data_coding: int = _u8()
    sm_default_msg_id: int = _u8()
    short_message: bytes = _sm()


@dataclass(kw_only=True)
class SubmitMultiResp(Pdu):
    command_id: ClassVar[int] = SUBMIT_MULTI_RESP
    command_name: ClassVar[str] = "submit_multi_resp"
    tlvs_allowed: ClassVar[bool] = True
    message_id: str = _cstr(65, ESME_RINVMSGID)
    unsuccess_smes: list[UnsuccessSme] = field(default_factory=list, metadata={_META: _UnsuccessSmes()})


@dataclass(kw_only=True)
class DataSm(Pdu):
    command_id: ClassVar[int] = DATA_SM
    command_name: ClassVar[str] = "data_sm"
    tlvs_allowed: ClassVar[bool] = True
    service_type: str = _cstr(6, ESME_RINVSERTYP)
    source_addr_ton: int = _u8()
    source_addr_npi: int = _u8()
    source_addr: str = _cstr(65, ESME_RINVSRCADR)
    dest_addr_ton: int = _u8()
    dest_addr_npi: int = _u8()
    destination_addr: str = _cstr(65, ESME_RINVDSTADR)
    esm_class: int = _u8()
    registered_delivery: int = _u8()
    data_coding: int = _u8()


@dataclass(kw_only=True)
class DataSmResp(Pdu):
    command_id: ClassVar[int] = DATA_SM_RESP
    command_name: ClassVar[str] = "data_sm_resp"
    tlvs_allowed: ClassVar[bool] = True
    message_id: str = _cstr(65, ESME_RINVMSGID)


# -- ancillary --------------------------------------------------------------------


@dataclass(kw_only=True)
class QuerySm(Pdu):
    command_id: ClassVar[int] = QUERY_SM
    command_name: ClassVar[str] = "query_sm"
    message_id: str = _cstr(65, ESME_RINVMSGID)
    source_addr_ton: int = _u8()
    source_addr_npi: int = _u8()
    source_addr: str = _cstr(21, ESME_RINVSRCADR)


@dataclass(kw_only=True)
class QuerySmResp(Pdu):
    command_id: ClassVar[int] = QUERY_SM_RESP
    command_name: ClassVar[str] = "query_sm_resp"
    message_id: str = _cstr(65, ESME_RINVMSGID)
    final_date: str = _cstr(17, ESME_RQUERYFAIL, time=True)
    message_state: int = _u8()
    error_code: int = _u8()


@dataclass(kw_only=True)
class CancelSm(Pdu):
    command_id: ClassVar[int] = CANCEL_SM
    command_name: ClassVar[str] = "cancel_sm"
    service_type: str = _cstr(6, ESME_RINVSERTYP)
    message_id: str = _cstr(65, ESME_RINVMSGID)
    source_addr_ton: int = _u8()
    source_addr_npi: int = _u8()
    source_addr: str = _cstr(21, ESME_RINVSRCADR)
    dest_addr_ton: int = _u8()
    dest_addr_npi: int = _u8()
    destination_addr: str = _cstr(21, ESME_RINVDSTADR)


@dataclass(kw_only=True)
class CancelSmResp(Pdu):
    command_id: ClassVar[int] = CANCEL_SM_RESP
    command_name: ClassVar[str] = "cancel_sm_resp"


@dataclass(kw_only=True)
class ReplaceSm(Pdu):
    command_id: ClassVar[int] = REPLACE_SM
    command_name: ClassVar[str] = "replace_sm"
    message_id: str = _cstr(65, ESME_RINVMSGID)
    source_addr_ton: int = _u8()
    source_addr_npi: int = _u8()
    source_addr: str = _cstr(21, ESME_RINVSRCADR)
    schedule_delivery_time: str = _cstr(17, ESME_RINVSCHED, time=True)
    validity_period: str = _cstr(17, ESME_RINVEXPIRY, time=True)
    registered_delivery: int = _u8()
    sm_default_msg_id: int = _u8()
    short_message: bytes = _sm()


@dataclass(kw_only=True)
class ReplaceSmResp(Pdu):
    command_id: ClassVar[int] = REPLACE_SM_RESP
    command_name: ClassVar[str] = "replace_sm_resp"


@dataclass(kw_only=True)
class AlertNotification(Pdu):
    command_id: ClassVar[int] = ALERT_NOTIFICATION
    command_name: ClassVar[str] = "alert_notification"
    tlvs_allowed: ClassVar[bool] = True  # ms_availability_status
    source_addr_ton: int = _u8()
    source_addr_npi: int = _u8()
    source_addr: str = _cstr(65, ESME_RINVSRCADR)
    esme_addr_ton: int = _u8()
    esme_addr_npi: int = _u8()
    esme_addr: str = _cstr(65, ESME_RINVDSTADR)


_CLASSES: dict[int, type[Pdu]] = {
    cls.command_id: cls
    for cls in (
        GenericNack, BindReceiver, BindReceiverResp, BindTransmitter, BindTransmitterResp,
        BindTransceiver, BindTransceiverResp, Outbind, Unbind, UnbindResp, EnquireLink,
        EnquireLinkResp, SubmitSm, SubmitSmResp, DeliverSm, DeliverSmResp, SubmitMulti,
        SubmitMultiResp, DataSm, DataSmResp, QuerySm, QuerySmResp, CancelSm, CancelSmResp,
        ReplaceSm, ReplaceSmResp, AlertNotification,
    )
}
#: command_id -> command name.
COMMAND_NAMES: dict[int, str] = {command_id: cls.command_name for command_id, cls in _CLASSES.items()}
# request command_id -> its response class (outbind and alert_notification have none)
_RESPONSES: dict[int, type[Pdu]] = {
    command_id: _CLASSES[command_id | RESPONSE_BIT]
    for command_id in _CLASSES
    if not command_id & RESPONSE_BIT and command_id | RESPONSE_BIT in _CLASSES
}


def pdu_class(command_id: int) -> type[Pdu] | None:
    """The dataclass of a command_id, or ``None`` for unknown ones."""
    return _CLASSES.get(command_id)


def response_for(pdu: Pdu, status: int = ESME_ROK, **values: Any) -> Pdu:
    """The response to ``pdu``: its ``*_resp`` with the same sequence, or a generic_nack.

    generic_nack answers PDUs that have no ``*_resp`` (outbind,
    alert_notification, responses themselves); it takes no ``values``.
    """
    cls = _RESPONSES.get(pdu.command_id, GenericNack)
    return cls(sequence=pdu.sequence, status=status, **values)


# --------------------------------------------------------------------------
# Decoding and stream framing
# --------------------------------------------------------------------------

_HEADER = struct.Struct(">IIII")


def decode(data: bytes) -> Pdu:
    """Decode exactly one whole PDU; raises :class:`PduError` (never anything else)."""
    if len(data) < HEADER_LENGTH:
        raise PduError(f"{len(data)} octets is shorter than a header", ESME_RINVCMDLEN)
    length, command_id, status, sequence = _HEADER.unpack_from(data)
    if length != len(data):
        raise PduError(
            f"command_length {length} for {len(data)} octets",
            ESME_RINVCMDLEN,
            command_id=command_id,
            sequence=sequence,
        )
    cls = _CLASSES.get(command_id)
    if cls is None:
        raise PduError(
            f"unknown command_id 0x{command_id:08X}", ESME_RINVCMDID, command_id=command_id, sequence=sequence
        )
    return cls.decode_body(bytes(data[HEADER_LENGTH:]), status=status, sequence=sequence)


class PduReader:
    """Frame a TCP byte stream into PDUs, sans-IO.

    ``feed`` returns the PDUs completed by the new bytes, with a
    :class:`PduError` in place of each one that did not decode.  An unknown
    command or a bad body is reported and the stream goes on; a
    command_length under 16 or over ``max_length`` is *fatal* (``fatal=True``,
    ``ESME_RINVCMDLEN``): the caller answers with the generic_nack from
    :meth:`PduError.response` and closes, and the reader ignores anything fed
    after it.
    """

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        if max_length < HEADER_LENGTH:
            raise ValueError(f"max_length must be at least {HEADER_LENGTH}")
        self.max_length = max_length
        self.failed = False
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Octets received but not yet part of a whole PDU."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Pdu | PduError]:
        if self.failed:
            return []
        buffer = self._buffer
        buffer += data
        out: list[Pdu | PduError] = []
        pos = 0
        available = len(buffer)
        while available - pos >= 4:
            (length,) = struct.unpack_from(">I", buffer, pos)
            if length < HEADER_LENGTH or length > self.max_length:
                command_id, sequence = None, 0
                if available - pos >= HEADER_LENGTH:
                    _, command_id, _, sequence = _HEADER.unpack_from(buffer, pos)
                out.append(
                    PduError(
                        f"command_length {length} outside {HEADER_LENGTH}-{self.max_length}",
                        ESME_RINVCMDLEN,
                        command_id=command_id,
                        sequence=sequence,
                        fatal=True,
                    )
                )
                self.failed = True
                buffer.clear()
                return out
            if available - pos < length:
                break
            chunk = bytes(buffer[pos : pos + length])
            pos += length
            try:
                out.append(decode(chunk))
            except PduError as error:
                out.append(error)
        del buffer[:pos]
        return out


# --------------------------------------------------------------------------
# Delivery receipts (SMPP 3.4 Appendix B) and message ids
# --------------------------------------------------------------------------


class ReceiptError(ValueError):
    """Text that is not a delivery receipt (no id or no stat)."""


@dataclass(frozen=True)
class Receipt:
    """A parsed delivery receipt; absent or unreadable parts are ``None``."""

    id: str
    stat: str
    sub: int | None = None
    dlvrd: int | None = None
    submit_date: datetime | None = None
    done_date: datetime | None = None
    err: str | None = None
    text: str | None = None

    @property
    def message_state(self) -> int | None:
        """The message_state number of :attr:`stat`, if it is a known word."""
        return _STATE_BY_STAT.get(self.stat)


def _receipt_date(when: datetime | None, seconds: bool) -> str:
    if when is None:
        return "0000000000" + ("00" if seconds else "")
    # strftime's "%y%m%d%H%M[%S]", at half its cost (every receipt has two).
    text = f"{when.year % 100:02d}{when.month:02d}{when.day:02d}{when.hour:02d}{when.minute:02d}"
    return text + f"{when.second:02d}" if seconds else text


def format_receipt(
    id: str,
    sub: int,
    dlvrd: int,
    submit_date: datetime | None,
    done_date: datetime | None,
    stat: int | str,
    err: int | str,
    text: str = "",
    *,
    seconds: bool = False,
) -> str:
    """The receipt text of SMPP 3.4 Appendix B.

    ``stat`` is a stat word or a message_state number; ``err`` an int (3
    digits) or a vendor string; ``text`` is cut to its first 20 characters, as
    the appendix says.  Dates are ``YYMMDDhhmm`` (``seconds=True`` adds ``ss``,
    which many ESMEs expect).
    """
    stat_word = MESSAGE_STATES[_state(stat)]
    err_text = f"{err:03d}" if isinstance(err, int) else err
    return (
        f"id:{id} sub:{sub:03d} dlvrd:{dlvrd:03d} submit date:{_receipt_date(submit_date, seconds)} "
        f"done date:{_receipt_date(done_date, seconds)} stat:{stat_word} err:{err_text} text:{text[:20]}"
    )


_RECEIPT_KEY_RE = re.compile(
    r"(?:^|(?<=\s))(id|sub|dlvrd|submit[ _]?date|done[ _]?date|stat|err|text)\s*:", re.IGNORECASE
)


def _parse_receipt_date(value: str) -> datetime | None:
    digits = value.strip()
    formats = {10: "%y%m%d%H%M", 12: "%y%m%d%H%M%S", 14: "%Y%m%d%H%M%S"}
    fmt = formats.get(len(digits))
    if fmt is None or not digits.isdigit():
        return None
    try:
        return datetime.strptime(digits, fmt)
    except ValueError:
        return None


def _receipt_int(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)


def parse_receipt(text: str | bytes) -> Receipt:
    """Read a delivery receipt, tolerating the variants seen in the field.

    Keys in any case, ``submit date`` / ``submit_date`` / ``submitdate``,
    missing parts (``text`` above all), 10 (``YYMMDDhhmm``), 12 (with seconds)
    or 14 (``YYYYMMDDhhmmss``) digit dates, long stat words (``DELIVERED``).
    Everything after ``text:`` is the text, colons included.  Raises
    :class:`ReceiptError` when there is no ``id`` or no ``stat``.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("latin-1")
    found: dict[str, str] = {}
    matches = list(_RECEIPT_KEY_RE.finditer(text))
    for index, match in enumerate(matches):
        key = re.sub(r"[ _]", "", match[1].lower())
        if key == "text":
            found.setdefault(key, text[match.end() :])
            break
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        found.setdefault(key, text[match.end() : end].strip())
    message_id = found.get("id")
    stat = found.get("stat")
    if not message_id or not stat:
        raise ReceiptError(f"not a delivery receipt: {text[:80]!r}")
    stat = stat.split()[0].upper()
    stat = _STAT_ALIASES.get(stat, stat)
    return Receipt(
        id=message_id.split()[0],
        stat=stat,
        sub=_receipt_int(found.get("sub")),
        dlvrd=_receipt_int(found.get("dlvrd")),
        submit_date=_parse_receipt_date(found.get("submitdate", "")),
        done_date=_parse_receipt_date(found.get("donedate", "")),
        err=found.get("err") or None,
        text=found.get("text"),
    )


_HEX_RE = re.compile(r"[0-9A-Fa-f]+")
_UUID_RE = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def normalize_message_id(message_id: str) -> str:
    """A key under which the forms of one SMSC message id compare equal.

    SMSCs often return an id in hex in submit_sm_resp and in decimal in the
    receipt (or the reverse), or zero-padded in one of them.  The rule:

    * all decimal digits: the decimal number, leading zeros dropped
      (``"000123"`` and ``"123"`` -> ``"123"``);
    * otherwise all hex digits (so at least one of a-f): its value written in
      decimal (``"0A1B2C"`` -> ``"662316"``, equal to the decimal form);
    * a UUID: lower-cased; anything else: as given (ids may be case-sensitive).

    Surrounding whitespace is dropped.  The one ambiguity left: a hex id made
    only of decimal digits (``"100"`` meaning 0x100) is read as decimal, so it
    will not match its decimal form ``"256"``; callers that know a link's
    convention should convert before storing.
    """
    value = message_id.strip()
    if not value:
        return ""
    if value.isdigit() and value.isascii():
        return str(int(value, 10))
    if _HEX_RE.fullmatch(value):
        return str(int(value, 16))
    if _UUID_RE.fullmatch(value):
        return value.lower()
    return value
