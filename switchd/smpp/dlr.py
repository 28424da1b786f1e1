"""Delivery receipts between SMSCs, switchd and customers: reading, matching, writing.

Sans-IO glue over the codec (:mod:`switchd.smpp.pdu`):

* :func:`classify` reads a ``deliver_sm`` / ``data_sm`` from an upstream SMSC:
  a delivery receipt (receipt ``esm_class``, or a ``receipted_message_id``
  TLV) becomes an :class:`UpstreamReceipt`, anything else an
  :class:`UpstreamMessage` (MO).  A receipt's id, state and error come from
  the TLVs when present (``receipted_message_id``, ``message_state``,
  ``network_error_code``), else from the Appendix B text.
* :func:`match_keys` gives the keys under which a receipt's id is looked up
  among the ids SMSCs returned in ``submit_sm_resp`` (stored as
  :func:`~switchd.smpp.pdu.normalize_message_id`): the normalised id first,
  then the readings of an all-digit id as hex and of a decimal id written in
  hex, because SMSCs mix the two (see ``normalize_message_id``).
* :func:`customer_receipt` writes the receipt switchd sends to a customer:
  Appendix B text with *our* message id, receipt ``esm_class`` and the
  ``receipted_message_id`` / ``message_state`` / ``network_error_code`` TLVs.

Message states are named as in ``query_sm`` (``MessageInfo.state``):
ENROUTE DELIVERED EXPIRED DELETED UNDELIVERABLE ACCEPTED UNKNOWN REJECTED.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import pdu

#: message_state numbers (SMPP 3.4 §5.2.28) by state name.
STATE_NUMBERS: dict[str, int] = {
    "ENROUTE": pdu.ENROUTE,
    "DELIVERED": pdu.DELIVERED,
    "EXPIRED": pdu.EXPIRED,
    "DELETED": pdu.DELETED,
    "UNDELIVERABLE": pdu.UNDELIVERABLE,
    "ACCEPTED": pdu.ACCEPTED,
    "UNKNOWN": pdu.UNKNOWN,
    "REJECTED": pdu.REJECTED,
}
#: State names by message_state number.
STATE_NAMES: dict[int, str] = {number: name for name, number in STATE_NUMBERS.items()}
#: States after which nothing more happens to a message.
FINAL_STATES: frozenset[str] = frozenset(STATE_NUMBERS) - {"ENROUTE"}
#: Final states that mean the message reached its recipient.
SUCCESS_STATES: frozenset[str] = frozenset({"DELIVERED", "ACCEPTED"})
#: Failures ranked worst first: a message whose parts failed differently takes the first.
FAILURE_RANK: tuple[str, ...] = ("REJECTED", "UNDELIVERABLE", "EXPIRED", "DELETED", "UNKNOWN")

#: network_error_code network type for GSM (SMPP 3.4 §5.3.2.31).
NETWORK_TYPE_GSM = 3

#: TLVs of an upstream MO that are passed on to the customer as they came.
PASSED_TLVS = ("sar_msg_ref_num", "sar_total_segments", "sar_segment_seqnum", "source_port", "destination_port")


class ReceiptUnreadable(ValueError):
    """A deliver_sm marked as a receipt that carries no usable id or state."""


@dataclass(frozen=True)
class UpstreamReceipt:
    """A delivery receipt from an SMSC, for one part we sent through it."""

    message_id: str  # the SMSC's id, as the receipt gave it
    state: str  # a key of STATE_NUMBERS
    error_code: int | None = None
    done_at: datetime | None = None  # naive, as the SMSC wrote it

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def lookup_keys(self) -> list[str]:
        """Stored keys this receipt may match, most likely first (:func:`match_keys`)."""
        return match_keys(self.message_id)


@dataclass(frozen=True)
class UpstreamMessage:
    """A mobile-originated message from an SMSC."""

    source: str
    destination: str
    content: bytes
    data_coding: int
    esm_class: int = 0  # UDHI kept: a part of a long MO passes as it is
    tlvs: dict[str, Any] = field(default_factory=dict)


def content_of(message: Any) -> bytes:
    """short_message, or the message_payload TLV when short_message is empty."""
    content = getattr(message, "short_message", b"") or b""
    if not content:
        payload = message.tlvs.get("message_payload", b"")
        content = bytes(payload) if isinstance(payload, (bytes, bytearray)) else b""
    return content


def match_keys(message_id: str) -> list[str]:
    """The normalised forms an SMSC's id may have been stored under, exact first.

    ``"00FF"`` -> ``["255"]``; ``"256"`` -> ``["256", "598", "100"]`` (as
    decimal, as hex digits, and 256 written in hex read back as digits).
    """
    keys = [pdu.normalize_message_id(message_id)]
    value = message_id.strip()
    if value and value.isdigit() and value.isascii():
        keys.append(str(int(value, 16)))
        hex_form = format(int(value, 10), "x")
        if hex_form.isdigit():
            keys.append(str(int(hex_form, 10)))
    return list(dict.fromkeys(key for key in keys if key))


def _error_from_tlv(value: Any) -> int | None:
    if isinstance(value, (bytes, bytearray)) and len(value) == 3:
        return int.from_bytes(value[1:3], "big")
    return None


def _error_from_text(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return int(text, 10)
    if text.lower().startswith("0x"):
        try:
            return int(text, 16)
        except ValueError:
            return None
    return None


def is_receipt(message: Any) -> bool:
    """A deliver_sm / data_sm that reports on a message rather than carrying one."""
    esm_class = message.esm_class
    return (
        pdu.is_delivery_receipt(esm_class)
        or pdu.is_intermediate_notification(esm_class)
        or pdu.message_type(esm_class) == pdu.ESM_TYPE_DELIVERY_ACK
        or "receipted_message_id" in message.tlvs
    )


def read_receipt(message: Any) -> UpstreamReceipt:
    """The receipt in a deliver_sm / data_sm; :class:`ReceiptUnreadable` if there is none.

    The text is read only when the TLVs do not say it all: an id and a
    state, and for a failure its network error. Reading it (regular
    expressions, two dates) was a good share of a receipt's cost in switchd,
    and most SMSCs send both.
    """
    tlvs = message.tlvs
    tlv_id = tlvs.get("receipted_message_id")
    tlv_state = tlvs.get("message_state")
    if (
        isinstance(tlv_id, str)
        and tlv_id.strip()
        and isinstance(tlv_state, int)
        and tlv_state in STATE_NAMES
        and (STATE_NAMES[tlv_state] in SUCCESS_STATES or _error_from_tlv(tlvs.get("network_error_code")) is not None)
    ):
        return UpstreamReceipt(
            message_id=tlv_id.strip(),
            state=STATE_NAMES[tlv_state],
            error_code=_error_from_tlv(tlvs.get("network_error_code")),
        )
    text = content_of(message)
    parsed: pdu.Receipt | None = None
    if text:
        try:
            parsed = pdu.parse_receipt(text)
        except pdu.ReceiptError:
            parsed = None
    message_id = tlvs.get("receipted_message_id")
    if not isinstance(message_id, str) or not message_id.strip():
        message_id = parsed.id if parsed is not None else None
    if not message_id:
        raise ReceiptUnreadable(f"receipt without a message id: {text[:80]!r}")
    state_number = tlvs.get("message_state")
    if isinstance(state_number, int) and state_number in STATE_NAMES:
        state = STATE_NAMES[state_number]
    elif parsed is not None:
        number = parsed.message_state
        state = STATE_NAMES.get(number, "UNKNOWN") if number is not None else "UNKNOWN"
    else:
        raise ReceiptUnreadable(f"receipt for {message_id!r} without a state: {text[:80]!r}")
    error = _error_from_tlv(tlvs.get("network_error_code"))
    if error is None and parsed is not None:
        error = _error_from_text(parsed.err)
    return UpstreamReceipt(
        message_id=message_id.strip(),
        state=state,
        error_code=error,
        done_at=parsed.done_date if parsed is not None else None,
    )


def classify(message: Any) -> UpstreamReceipt | UpstreamMessage:
    """A receipt or an MO, from an upstream deliver_sm / data_sm.

    Raises :class:`ReceiptUnreadable` for a receipt that cannot be read.
    """
    if is_receipt(message):
        return read_receipt(message)
    return UpstreamMessage(
        source=message.source_addr,
        destination=message.destination_addr,
        content=content_of(message),
        data_coding=message.data_coding,
        esm_class=message.esm_class & (pdu.ESM_UDHI | pdu.ESM_REPLY_PATH),
        tlvs={name: message.tlvs[name] for name in PASSED_TLVS if name in message.tlvs},
    )


def message_state(states: list[str]) -> str | None:
    """A message's state from its parts': None while any part is not final.

    Every part a success: DELIVERED (ACCEPTED only when every part says so);
    otherwise the worst failure by :data:`FAILURE_RANK`.
    """
    if not states or any(state not in FINAL_STATES for state in states):
        return None
    failures = [state for state in states if state not in SUCCESS_STATES]
    if not failures:
        return "ACCEPTED" if all(state == "ACCEPTED" for state in states) else "DELIVERED"
    return min(failures, key=FAILURE_RANK.index)


@dataclass(frozen=True)
class CustomerReceipt:
    """What goes in the deliver_sm of a receipt to a customer."""

    source: str
    destination: str
    content: bytes
    data_coding: int
    esm_class: int
    tlvs: dict[str, Any]


def customer_receipt(
    message_id: str,
    source: str,
    destination: str,
    state: str,
    error_code: int | None,
    submitted_at: datetime | None,
    done_at: datetime | None,
    text: str = "",
    *,
    parts: int = 1,
    delivered: int = 0,
) -> CustomerReceipt:
    """The receipt for one of our messages, addressed back to its sender.

    ``source`` and ``destination`` are the message's: the receipt comes from
    the recipient and goes to the sender.  ``sub`` is the part count and
    ``dlvrd`` the parts delivered; ``err`` and ``network_error_code`` carry
    the SMSC's error (or the SMPP status that refused the message).
    """
    number = STATE_NUMBERS[state]
    err = error_code if error_code is not None else 0
    content = pdu.format_receipt(
        id=message_id,
        sub=min(parts, 999),
        dlvrd=min(delivered, 999),
        submit_date=submitted_at,
        done_date=done_at,
        stat=number,
        err=err if 0 <= err <= 999 else str(err),
        text=text,
    ).encode("latin-1", "replace")
    tlvs: dict[str, Any] = {"receipted_message_id": message_id, "message_state": number}
    if error_code and 0 < error_code <= 0xFFFF:
        tlvs["network_error_code"] = bytes((NETWORK_TYPE_GSM,)) + error_code.to_bytes(2, "big")
    return CustomerReceipt(
        source=destination,
        destination=source,
        content=content,
        data_coding=0,
        esm_class=pdu.ESM_TYPE_DELIVERY_RECEIPT,
        tlvs=tlvs,
    )
