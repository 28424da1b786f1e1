"""SMS storage: messages, the upstream part queue, the customer outbox, group commits.

Every function taking ``conn`` runs inside one transaction given by
``Database.run`` (in a worker thread) and returns plain dataclasses. The hot
ones work on lists, so :class:`GroupCommit` can hand them everything that
queued up while the previous transaction ran: many messages stored,
charged and acknowledged per commit, so durability does not cap throughput.
Their statements are built once, at import, with bind parameters (a
statement object memoises its cache key).

The life of a message in the database:

1. ``store_messages``: the message row, one ``sms_parts`` row per PDU to send
   (state ``queued``), one ledger charge per part (reference
   ``sms:<message id>:<part>``) and the anti-fraud counter, in one commit;
2. ``mark_sent``: the SMSC acknowledged a part; its id is kept (``sent``);
3. ``record_receipts`` / ``finish_parts``: parts take their final state; when
   the last one does, the message does too, a receipt for the customer goes
   to ``sms_outbox`` when asked for, and parts that never left switchd are
   refunded (reference ``sms:<message id>:<part>``, kind ``refund``);
4. ``store_mo``: an MO from an SMSC, stored for the customer who owns the
   destination number;
5. ``load_outbox`` / ``outbox_done``: receipts and MO reach the customer's ESME.
"""

from __future__ import annotations

import datetime
import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Column, Table, bindparam, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..billing import rating
from ..billing.ledger import BalanceRangeError, LedgerError, signed_amount
from ..smpp import dlr, pdu
from ..smpp.client import OutboundPart
from ..store.models import (
    accounts,
    http_connections,
    ledger,
    numbers,
    services,
    smpp_connections,
    sms_messages,
    sms_outbox,
    sms_parts,
    sms_sending_counts,
)
from ..store.types import MONEY_LIMIT, to_money

# -- plain data ---------------------------------------------------------------------


@dataclass(frozen=True)
class NewPart:
    """One PDU of a message as split for its link."""

    number: int
    total: int
    short_message: bytes
    in_payload: bool
    data_coding: int
    esm_class: int
    registered_delivery: int
    tlvs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NewMessage:
    """A customer's message, routed and split, to store and charge."""

    message_id: str
    origin_kind: str  # smpp or http
    service_id: int
    account_id: int
    connection_id: int
    client_reference: str | None
    source: str
    destination: str
    body: str
    data_coding: int
    esm_class: int
    registered_delivery: int
    link_id: int
    parts: tuple[NewPart, ...]
    submitted_at: datetime.datetime
    scheduled_at: datetime.datetime | None = None
    expires_at: datetime.datetime | None = None


@dataclass(frozen=True)
class StoredMessage:
    """A message committed: its parts are ready for the link."""

    message_pk: int
    message_id: str
    account_id: int
    parts: tuple[OutboundPart, ...]
    price: Decimal
    charge: Decimal


@dataclass(frozen=True)
class Rejected:
    """A message not stored: ``sip_status`` as in ``rating.Refusal`` (403, 484, 404,
    402) or 429 for the anti-fraud sending restriction."""

    sip_status: int
    reason: str


@dataclass(frozen=True)
class MessageInfo:
    """A message as ``query`` shows it."""

    message_id: str
    state: str  # ENROUTE DELIVERED EXPIRED DELETED UNDELIVERABLE ACCEPTED UNKNOWN REJECTED
    parts: int
    error_code: int | None
    submitted_at: datetime.datetime
    done_at: datetime.datetime | None
    source: str
    destination: str


@dataclass(frozen=True)
class Delivery:
    """Something to push to a customer ESME as deliver_sm (a stored outbox row)."""

    id: int
    kind: str  # receipt or mo
    source: str
    destination: str
    content: bytes
    data_coding: int
    esm_class: int
    tlvs: dict[str, Any]


@dataclass(frozen=True)
class StateChange:
    """A message's new state, for ``MessageStateChanged``."""

    message_id: str
    account_id: int
    service_id: int
    origin_kind: str
    connection_id: int
    state: str
    parts: int
    error_code: int | None
    source: str
    destination: str
    client_reference: str | None


@dataclass
class Outcome:
    """What a transaction changed that the engine must tell after the commit."""

    events: list[StateChange] = field(default_factory=list)
    deliveries: list[tuple[int, Delivery]] = field(default_factory=list)  # (smpp connection id, delivery)

    def extend(self, other: Outcome) -> None:
        self.events.extend(other.events)
        self.deliveries.extend(other.deliveries)


@dataclass(frozen=True)
class SentPart:
    """An SMSC's acknowledgement of one part."""

    part_id: int
    message_pk: int
    upstream_id: str
    now: datetime.datetime


@dataclass(frozen=True)
class PartResult:
    """A part's final state (from a receipt, a refusal, an expiry, a cancel)."""

    part_id: int
    state: str
    error_code: int | None = None


@dataclass(frozen=True)
class ReceiptResult:
    matched: bool
    outcome: Outcome


@dataclass(frozen=True)
class MoStored:
    """An upstream MO stored for the customer owning its destination number."""

    message_id: str
    account_id: int
    service_id: int
    origin_kind: str  # smpp: an outbox row for an SMPP connection; http: for SERVER's callback
    connection_id: int
    delivery: Delivery | None


@dataclass(frozen=True)
class ChangeTarget:
    """A message a customer wants to cancel or replace, and where its parts are."""

    message_pk: int
    message_id: str
    node: str | None
    link_id: int | None
    status: str
    part_ids: tuple[int, ...]
    part_states: tuple[str, ...]
    registered_delivery: int
    data_coding: int = 0

    @property
    def queued(self) -> bool:
        return self.status == "ENROUTE" and all(state == "queued" for state in self.part_states)


# -- helpers ---------------------------------------------------------------------------


def _fit(column: Column, value: Any) -> Any:
    """Cut a string to its column's width (what an SMSC sends is not ours to refuse)."""
    length = getattr(column.type, "length", None)
    if isinstance(value, str) and length is not None:
        return value[:length]
    return value


def tlvs_to_json(tlvs: dict[str, Any]) -> dict[str, Any]:
    """TLVs as JSON: octets become ``{"hex": ...}``; unknown integer tags are dropped."""
    out: dict[str, Any] = {}
    for name, value in tlvs.items():
        if not isinstance(name, str):
            continue
        if isinstance(value, (bytes, bytearray)):
            out[name] = {"hex": bytes(value).hex()}
        else:
            out[name] = value
    return out


def tlvs_from_json(value: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, item in (value or {}).items():
        if isinstance(item, dict) and set(item) == {"hex"}:
            out[name] = bytes.fromhex(item["hex"])
        else:
            out[name] = item
    return out


def charge_reference(message_id: str, number: int) -> str:
    """The ledger reference of one part's charge (and of its refund)."""
    return f"sms:{message_id}:{number}"


def _dialect_insert(name: str):
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise RuntimeError(f"switchd supports SQLite and PostgreSQL, not the {name} database")


# -- statements (built once) ------------------------------------------------------------------

# Rows are inserted with ids allocated beforehand (``allocate_ids``): a plain
# executemany, where RETURNING in parameter order would send SQLite one
# statement per row.
_INSERT_MESSAGES = insert(sms_messages)
_INSERT_PARTS = insert(sms_parts)
_INSERT_OUTBOX = insert(sms_outbox)
_MAX_ID = {table.name: select(func.max(table.c.id)) for table in (sms_messages, sms_parts, sms_outbox)}
_NEXTVAL = {
    table.name: text(f"SELECT nextval(pg_get_serial_sequence('{table.name}', 'id')) FROM generate_series(1, :n)")
    for table in (sms_messages, sms_parts, sms_outbox)
}
_INSERT_LEDGER = insert(ledger)
_LOCK_BALANCE = select(accounts.c.balance).where(accounts.c.id == bindparam("account_id")).with_for_update()
_SET_BALANCE = (
    update(accounts)
    .where(accounts.c.id == bindparam("account_id"))
    .values(
        balance=bindparam("new_balance", type_=accounts.c.balance.type),
        updated_at=bindparam("now", type_=accounts.c.updated_at.type),
    )
)
_BOOKED = select(ledger.c.reference).where(
    ledger.c.account_id == bindparam("account_id"),
    ledger.c.kind == bindparam("kind"),
    ledger.c.reference.in_(bindparam("references", expanding=True)),
)
_RESTRICTIONS = select(
    http_connections.c.id, http_connections.c.sending_restriction, http_connections.c.number_of_sendings
).where(http_connections.c.id.in_(bindparam("ids", expanding=True)))
_COUNT = select(sms_sending_counts.c.count).where(
    sms_sending_counts.c.connection_id == bindparam("connection_id"),
    sms_sending_counts.c.destination == bindparam("destination"),
    sms_sending_counts.c.window_start == bindparam("window_start", type_=sms_sending_counts.c.window_start.type),
)
_MARK_SENT = (
    update(sms_parts)
    .where(sms_parts.c.id == bindparam("part_id"), sms_parts.c.state == "queued")
    .values(
        state="sent",
        upstream_message_id=bindparam("upstream_id"),
        upstream_key=bindparam("upstream_key"),
        sent_at=bindparam("now", type_=sms_parts.c.sent_at.type),
        updated_at=bindparam("now", type_=sms_parts.c.updated_at.type),
    )
)
_MESSAGE_UPSTREAM = (
    update(sms_messages)
    .where(sms_messages.c.id == bindparam("message_pk"), sms_messages.c.upstream_message_id.is_(None))
    .values(upstream_message_id=bindparam("upstream_id"))
)
_PARTS_BY_ID = select(
    sms_parts.c.id, sms_parts.c.sms_message_id, sms_parts.c.state, sms_parts.c.sent_at, sms_parts.c.number
).where(sms_parts.c.id.in_(bindparam("ids", expanding=True)))
_FINISH_PART = (
    update(sms_parts)
    # Not IN (...): an expanding parameter cannot be used with executemany.
    .where(sms_parts.c.id == bindparam("part_id"), or_(sms_parts.c.state == "queued", sms_parts.c.state == "sent"))
    .values(
        state=bindparam("state"),
        error_code=bindparam("error_code"),
        done_at=bindparam("now", type_=sms_parts.c.done_at.type),
        updated_at=bindparam("now", type_=sms_parts.c.updated_at.type),
    )
)
_PARTS_OF_MESSAGES = (
    select(sms_parts.c.sms_message_id, sms_parts.c.number, sms_parts.c.state, sms_parts.c.error_code)
    .where(sms_parts.c.sms_message_id.in_(bindparam("pks", expanding=True)))
    .order_by(sms_parts.c.sms_message_id, sms_parts.c.number)
)
_MESSAGES_BY_PK = select(sms_messages).where(sms_messages.c.id.in_(bindparam("pks", expanding=True)))
_FINISH_MESSAGE = (
    update(sms_messages)
    .where(sms_messages.c.id == bindparam("message_pk"), sms_messages.c.status == "ENROUTE")
    .values(
        status=bindparam("state"),
        error_code=bindparam("error_code"),
        done_at=bindparam("now", type_=sms_messages.c.done_at.type),
        updated_at=bindparam("now", type_=sms_messages.c.updated_at.type),
    )
)
_MATCH_KEYS = select(sms_parts.c.id, sms_parts.c.state, sms_parts.c.smpp_link_id, sms_parts.c.upstream_key).where(
    sms_parts.c.upstream_key.in_(bindparam("keys", expanding=True))
)
#: Keys looked up per query when matching a batch of receipts.
_KEYS_PER_QUERY = 500
_LOAD_PARTS = (
    select(
        sms_parts.c.id,
        sms_parts.c.sms_message_id,
        sms_messages.c.message_id,
        sms_parts.c.smpp_link_id,
        sms_parts.c.number,
        sms_parts.c.total,
        sms_messages.c.source,
        sms_messages.c.destination,
        sms_parts.c.short_message,
        sms_parts.c.in_payload,
        sms_parts.c.data_coding,
        sms_parts.c.esm_class,
        sms_parts.c.registered_delivery,
        sms_parts.c.tlvs,
        sms_parts.c.expires_at,
    )
    .join(sms_messages, sms_messages.c.id == sms_parts.c.sms_message_id)
    .where(
        sms_parts.c.node == bindparam("node"),
        sms_parts.c.smpp_link_id == bindparam("link_id"),
        sms_parts.c.state == "queued",
        sms_parts.c.next_attempt_at <= bindparam("now", type_=sms_parts.c.next_attempt_at.type),
        sms_parts.c.id > bindparam("after"),
    )
    .order_by(sms_parts.c.id)
    .limit(bindparam("limit"))
)
_LOAD_OUTBOX = (
    select(sms_outbox)
    .where(
        sms_outbox.c.connection_id == bindparam("connection_id"),
        sms_outbox.c.state == "pending",
        sms_outbox.c.id > bindparam("after"),
    )
    .order_by(sms_outbox.c.id)
    .limit(bindparam("limit"))
)
_OUTBOX_DONE = (
    update(sms_outbox)
    .where(sms_outbox.c.id == bindparam("delivery_id"), sms_outbox.c.state == "pending")
    .values(state="done", done_at=bindparam("now", type_=sms_outbox.c.done_at.type))
)
_OUTBOX_ATTEMPTED = (
    update(sms_outbox)
    .where(sms_outbox.c.id == bindparam("delivery_id"))
    .values(attempts=sms_outbox.c.attempts + 1)
)
_FIND_MESSAGE = select(sms_messages).where(
    sms_messages.c.message_id == bindparam("message_id"), sms_messages.c.account_id == bindparam("account_id")
)
_PARTS_OF_MESSAGE = (
    select(sms_parts.c.id, sms_parts.c.state)
    .where(sms_parts.c.sms_message_id == bindparam("message_pk"))
    .order_by(sms_parts.c.number)
)
_EXPIRED = (
    select(sms_parts.c.id)
    .where(
        sms_parts.c.node == bindparam("node"),
        sms_parts.c.state == "queued",
        sms_parts.c.expires_at <= bindparam("now", type_=sms_parts.c.expires_at.type),
        sms_parts.c.smpp_link_id.not_in(bindparam("skip", expanding=True)),
    )
    .order_by(sms_parts.c.id)
    .limit(bindparam("limit"))
)
_NUMBER_OWNER = (
    select(numbers.c.service_id, services.c.account_id)
    .join(services, services.c.id == numbers.c.service_id)
    .where(numbers.c.number.in_(bindparam("numbers", expanding=True)))
    .order_by(numbers.c.id)
    .limit(1)
)
_SMPP_OF_SERVICE = (
    select(smpp_connections.c.id)
    .where(smpp_connections.c.service_id == bindparam("service_id"))
    .order_by(smpp_connections.c.id)
    .limit(1)
)
_SMPP_OF_ACCOUNT = (
    select(smpp_connections.c.id, smpp_connections.c.service_id)
    .join(services, services.c.id == smpp_connections.c.service_id)
    .where(services.c.account_id == bindparam("account_id"))
    .order_by(smpp_connections.c.id)
    .limit(1)
)
_HTTP_OF_SERVICE = (
    select(http_connections.c.id)
    .where(http_connections.c.service_id == bindparam("service_id"))
    .order_by(http_connections.c.id)
    .limit(1)
)
_HTTP_OF_ACCOUNT = (
    select(http_connections.c.id, http_connections.c.service_id)
    .join(services, services.c.id == http_connections.c.service_id)
    .where(services.c.account_id == bindparam("account_id"))
    .order_by(http_connections.c.id)
    .limit(1)
)


@functools.cache
def _dialect_statements(dialect: str) -> dict[str, Any]:
    """The statements that depend on the dialect's upsert, built once per dialect."""
    insert_ = _dialect_insert(dialect)
    upsert = insert_(sms_sending_counts)
    upsert = upsert.on_conflict_do_update(
        index_elements=["connection_id", "destination", "window_start"],
        set_={"count": sms_sending_counts.c.count + upsert.excluded.count},
    )
    return {"count_sendings": upsert}


def allocate_ids(conn: Connection, table: Table, count: int) -> list[int]:
    """``count`` new ids for ``table``, in the caller's transaction.

    PostgreSQL draws them from the table's sequence. SQLite continues after
    the largest id: its transactions take the write lock when they begin
    (``BEGIN IMMEDIATE``), so no other writer can take the same ids.
    """
    if count <= 0:
        return []
    if conn.dialect.name == "postgresql":
        return list(conn.execute(_NEXTVAL[table.name], {"n": count}).scalars())
    start = (conn.execute(_MAX_ID[table.name]).scalar() or 0) + 1
    return list(range(start, start + count))


# -- the ledger, in bulk ---------------------------------------------------------------


@dataclass(frozen=True)
class Booking:
    account_id: int
    kind: str  # charge or refund
    amount: Decimal  # positive
    reference: str
    description: str


def book_many(conn: Connection, bookings: list[Booking], now: datetime.datetime) -> int:
    """Book many movements with one balance update per account; returns how many were booked.

    The same rules as ``ledger.book``: each row holds the balance right
    after it, the account's balance is locked and updated in the same
    transaction, and a reference already booked for the account and kind is
    skipped (so a replay books nothing).
    """
    by_account: dict[int, list[Booking]] = {}
    for booking in bookings:
        by_account.setdefault(booking.account_id, []).append(booking)
    rows: list[dict[str, Any]] = []
    for account_id in sorted(by_account):  # one lock order on every node: no deadlocks
        balance = conn.execute(_LOCK_BALANCE, {"account_id": account_id}).scalar()
        if balance is None:
            raise LedgerError(f"no account {account_id}")
        items = by_account[account_id]
        for kind in {booking.kind for booking in items}:
            booked = set(
                conn.execute(
                    _BOOKED,
                    {"account_id": account_id, "kind": kind, "references": [b.reference for b in items if b.kind == kind]},
                ).scalars()
            )
            items = [b for b in items if b.kind != kind or b.reference not in booked]
        if not items:
            continue
        for booking in items:
            balance = to_money(balance + signed_amount(booking.kind, booking.amount))
            if abs(balance) >= MONEY_LIMIT:
                raise BalanceRangeError(f"the balance would leave the supported range (below {MONEY_LIMIT})")
            rows.append(
                {
                    "account_id": account_id,
                    "kind": booking.kind,
                    "amount": signed_amount(booking.kind, booking.amount),
                    "balance_after": balance,
                    "reference": booking.reference,
                    "description": booking.description,
                    "created_at": now,
                }
            )
        conn.execute(_SET_BALANCE, {"account_id": account_id, "new_balance": balance, "now": now})
    if rows:
        conn.execute(_INSERT_LEDGER, rows)
    return len(rows)


# -- storing messages -----------------------------------------------------------------------


def window_start(now: datetime.datetime, window_seconds: int) -> datetime.datetime:
    """The start of the anti-fraud window holding ``now`` (windows aligned on the epoch)."""
    stamp = int(now.timestamp())
    return datetime.datetime.fromtimestamp(stamp - stamp % window_seconds, datetime.UTC)


def store_messages(
    conn: Connection, items: list[NewMessage], node: str, window_seconds: int = 86400
) -> list[StoredMessage | Rejected]:
    """Authorise, store and charge messages; one result per item, in order.

    Each message is checked like ``rating.authorize_message`` (active
    service, account and customer; a rate for the destination; a prepaid
    account able to pay every part, counting what earlier messages of the
    same batch spend) and, for HTTP connections with the sending
    restriction, against ``number_of_sendings`` per destination number per
    window. Accepted messages and their parts are inserted and charged in
    bulk; refused ones leave no trace.
    """
    payers: dict[int, Any] = {}
    for item in items:
        if item.service_id not in payers:
            payers[item.service_id] = rating.load_payer(conn, item.service_id)
    balances: dict[int, Decimal] = {}
    for account_id in sorted({row.account_id for row in payers.values() if row is not None}):
        balances[account_id] = conn.execute(_LOCK_BALANCE, {"account_id": account_id}).scalar_one()
    http_ids = sorted({item.connection_id for item in items if item.origin_kind == "http"})
    restrictions: dict[int, int] = {}
    if http_ids:
        for row in conn.execute(_RESTRICTIONS, {"ids": http_ids}):
            if row.sending_restriction:
                restrictions[row.id] = row.number_of_sendings
    counts: dict[tuple[int, str, datetime.datetime], int] = {}
    planned: dict[tuple[int, str, datetime.datetime], int] = {}
    spent: dict[int, Decimal] = {}
    # One rate lookup per tariff plan for the whole batch.
    by_plan: dict[int, set[str]] = {}
    for item in items:
        row = payers[item.service_id]
        if row is not None:
            by_plan.setdefault(row.tariff_plan_id, set()).add(rating.number_digits(item.destination))
    rates: dict[tuple[int, str], rating.Rate | None] = {
        (plan, digits): rate
        for plan, destinations in by_plan.items()
        for digits, rate in rating.find_rates(conn, plan, destinations).items()
    }
    results: list[StoredMessage | Rejected | None] = []
    accepted: list[tuple[int, NewMessage, rating.MessageAuthorization]] = []
    for item in items:
        row = payers[item.service_id]
        try:
            rating.check_payer(row, item.service_id)
            if row.account_id != item.account_id:
                raise rating.Refusal(403, "the service belongs to another account")
            digits = rating.number_digits(item.destination)
            if not digits:
                raise rating.Refusal(484, "no digits in the destination number")
            key = (row.tariff_plan_id, digits)
            available = None
            if row.billing_type != "postpaid":
                available = balances[row.account_id] + row.credit_limit - spent.get(row.account_id, Decimal(0))
            authorization = rating.check_message(row, rates[key], item.service_id, len(item.parts), available)
        except rating.Refusal as refusal:
            results.append(Rejected(refusal.sip_status, refusal.reason))
            continue
        if item.origin_kind == "http" and item.connection_id in restrictions:
            counter = (item.connection_id, digits[:32], window_start(item.submitted_at, window_seconds))
            if counter not in counts:
                counts[counter] = conn.execute(
                    _COUNT,
                    {"connection_id": counter[0], "destination": counter[1], "window_start": counter[2]},
                ).scalar() or 0
            if counts[counter] + planned.get(counter, 0) + 1 > restrictions[item.connection_id]:
                results.append(Rejected(429, "sending restriction: too many messages to this number"))
                continue
            planned[counter] = planned.get(counter, 0) + 1
        spent[row.account_id] = spent.get(row.account_id, Decimal(0)) + authorization.total
        accepted.append((len(results), item, authorization))
        results.append(None)
    if not accepted:
        return results  # type: ignore[return-value]

    message_rows = []
    for _, item, authorization in accepted:
        message_rows.append(
            {
                "message_id": item.message_id,
                "account_id": item.account_id,
                "service_id": item.service_id,
                "direction": "mt",
                "origin_kind": item.origin_kind,
                "connection_id": item.connection_id,
                "client_reference": _fit(sms_messages.c.client_reference, item.client_reference),
                "node": node,
                "source": item.source,
                "destination": item.destination,
                "body": item.body,
                "data_coding": item.data_coding,
                "esm_class": item.esm_class,
                "registered_delivery": item.registered_delivery,
                "parts": len(item.parts),
                "status": "ENROUTE",
                "smpp_link_id": item.link_id,
                "upstream_message_id": None,
                "error_code": None,
                "price": authorization.price,
                "charge": authorization.total,
                "scheduled_at": item.scheduled_at,
                "expires_at": item.expires_at,
                "done_at": None,
                "created_at": item.submitted_at,
                "updated_at": item.submitted_at,
            }
        )
    pks = allocate_ids(conn, sms_messages, len(message_rows))
    for pk, row in zip(pks, message_rows):
        row["id"] = pk
    conn.execute(_INSERT_MESSAGES, message_rows)
    part_rows = []
    bookings: list[Booking] = []
    for pk, (_, item, authorization) in zip(pks, accepted):
        for part in item.parts:
            part_rows.append(
                {
                    "sms_message_id": pk,
                    "number": part.number,
                    "total": part.total,
                    "node": node,
                    "smpp_link_id": item.link_id,
                    "state": "queued",
                    "short_message": part.short_message,
                    "in_payload": part.in_payload,
                    "data_coding": part.data_coding,
                    "esm_class": part.esm_class,
                    "registered_delivery": part.registered_delivery,
                    "tlvs": part.tlvs,
                    "upstream_message_id": None,
                    "upstream_key": None,
                    "error_code": None,
                    "next_attempt_at": item.scheduled_at or item.submitted_at,
                    "expires_at": item.expires_at,
                    "sent_at": None,
                    "done_at": None,
                    "created_at": item.submitted_at,
                    "updated_at": item.submitted_at,
                }
            )
            if authorization.price > 0:
                bookings.append(
                    Booking(
                        account_id=item.account_id,
                        kind="charge",
                        amount=authorization.price,
                        reference=charge_reference(item.message_id, part.number),
                        description=_fit(
                            ledger.c.description, f"SMS to {item.destination}, part {part.number}/{part.total}"
                        ),
                    )
                )
    allocated = allocate_ids(conn, sms_parts, len(part_rows))
    for part_id, row in zip(allocated, part_rows):
        row["id"] = part_id
    conn.execute(_INSERT_PARTS, part_rows)
    part_ids = iter(allocated)
    if bookings:
        book_many(conn, bookings, accepted[0][1].submitted_at)
    if planned:
        conn.execute(
            _dialect_statements(conn.dialect.name)["count_sendings"],
            [
                {"connection_id": key[0], "destination": key[1], "window_start": key[2], "count": count}
                for key, count in planned.items()
            ],
        )
    for pk, (index, item, authorization) in zip(pks, accepted):
        parts = tuple(
            OutboundPart(
                part_id=next(part_ids),
                message_pk=pk,
                message_id=item.message_id,
                link_id=item.link_id,
                number=part.number,
                total=part.total,
                source=item.source,
                destination=item.destination,
                short_message=part.short_message,
                in_payload=part.in_payload,
                data_coding=part.data_coding,
                esm_class=part.esm_class,
                registered_delivery=part.registered_delivery,
                tlvs=dict(part.tlvs),
                expires_at=item.expires_at,
                not_before=item.scheduled_at,
            )
            for part in item.parts
        )
        results[index] = StoredMessage(
            message_pk=pk,
            message_id=item.message_id,
            account_id=item.account_id,
            parts=parts,
            price=authorization.price,
            charge=authorization.total,
        )
    return results  # type: ignore[return-value]


# -- acknowledgements, receipts, final states ----------------------------------------------


def mark_sent(conn: Connection, items: list[SentPart]) -> list[None]:
    """Keep the ids SMSCs gave our parts (only parts still ``queued`` change)."""
    conn.execute(
        _MARK_SENT,
        [
            {
                "part_id": item.part_id,
                "upstream_id": _fit(sms_parts.c.upstream_message_id, item.upstream_id),
                "upstream_key": _fit(sms_parts.c.upstream_key, pdu.normalize_message_id(item.upstream_id)),
                "now": item.now,
            }
            for item in items
        ],
    )
    conn.execute(
        _MESSAGE_UPSTREAM,
        [
            {"message_pk": item.message_pk, "upstream_id": _fit(sms_messages.c.upstream_message_id, item.upstream_id)}
            for item in items
        ],
    )
    return [None] * len(items)


def finish_parts(conn: Connection, results: list[PartResult], now: datetime.datetime) -> list[Outcome]:
    """Give parts their final state; finish the messages whose last part this was.

    One ``Outcome`` per result: the message events and customer receipts are
    attached to the result that completed the message. A part already final
    does not change (a duplicate receipt, a retry). Parts that fail without
    having left switchd are refunded.
    """
    outcomes = [Outcome() for _ in results]
    if not results:
        return outcomes
    current = {
        row.id: row for row in conn.execute(_PARTS_BY_ID, {"ids": sorted({r.part_id for r in results})})
    }
    states: dict[int, str] = {part_id: row.state for part_id, row in current.items()}
    updates: list[dict[str, Any]] = []
    completing: dict[int, int] = {}  # message pk -> index of the result that touched it last
    refunds: list[tuple[int, int]] = []  # (message pk, part number)
    for index, result in enumerate(results):
        row = current.get(result.part_id)
        if row is None or states[result.part_id] in dlr.FINAL_STATES:
            continue
        if result.state not in dlr.FINAL_STATES:
            raise ValueError(f"{result.state!r} is not a final state")
        states[result.part_id] = result.state
        updates.append(
            {"part_id": result.part_id, "state": result.state, "error_code": result.error_code, "now": now}
        )
        completing[row.sms_message_id] = index
        if row.sent_at is None and result.state not in dlr.SUCCESS_STATES:
            refunds.append((row.sms_message_id, row.number))
    if not updates:
        return outcomes
    conn.execute(_FINISH_PART, updates)
    pks = sorted(completing)
    parts_by_message: dict[int, list[Any]] = {}
    for row in conn.execute(_PARTS_OF_MESSAGES, {"pks": pks}):
        parts_by_message.setdefault(row.sms_message_id, []).append(row)
    messages = {row.id: row for row in conn.execute(_MESSAGES_BY_PK, {"pks": pks})}
    finished: list[dict[str, Any]] = []
    receipts: list[tuple[int, int, dict[str, Any], Delivery]] = []  # (index, connection, row, delivery)
    for pk in pks:
        message = messages[pk]
        part_rows = parts_by_message.get(pk, [])
        state = dlr.message_state([row.state for row in part_rows])
        if state is None or message.status != "ENROUTE":
            continue
        # The error of a part that gave the message its state, else of any failed part.
        failed = [row for row in part_rows if row.state not in dlr.SUCCESS_STATES and row.error_code]
        error = next((row.error_code for row in failed if row.state == state), None)
        if error is None and failed:
            error = failed[0].error_code
        finished.append({"message_pk": pk, "state": state, "error_code": error, "now": now})
        index = completing[pk]
        outcomes[index].events.append(
            StateChange(
                message_id=message.message_id,
                account_id=message.account_id,
                service_id=message.service_id,
                origin_kind=message.origin_kind,
                connection_id=message.connection_id,
                state=state,
                parts=message.parts,
                error_code=error,
                source=message.source,
                destination=message.destination,
                client_reference=message.client_reference,
            )
        )
        if (
            message.origin_kind == "smpp"
            and message.direction == "mt"
            and message.connection_id is not None
            and pdu.wants_receipt(message.registered_delivery, dlr.STATE_NUMBERS[state])
        ):
            receipt = dlr.customer_receipt(
                message.message_id,
                message.source,
                message.destination,
                state,
                error,
                message.created_at,
                now,
                message.body,
                parts=message.parts,
                delivered=sum(1 for row in part_rows if row.state in dlr.SUCCESS_STATES),
            )
            row = {
                "connection_id": message.connection_id,
                "kind": "receipt",
                "sms_message_id": pk,
                "source": receipt.source,
                "destination": receipt.destination,
                "content": receipt.content,
                "data_coding": receipt.data_coding,
                "esm_class": receipt.esm_class,
                "tlvs": tlvs_to_json(receipt.tlvs),
                "state": "pending",
                "attempts": 0,
                "done_at": None,
                "created_at": now,
            }
            delivery = Delivery(0, "receipt", receipt.source, receipt.destination, receipt.content,
                                receipt.data_coding, receipt.esm_class, receipt.tlvs)
            receipts.append((index, message.connection_id, row, delivery))
    if finished:
        conn.execute(_FINISH_MESSAGE, finished)
    if receipts:
        ids = allocate_ids(conn, sms_outbox, len(receipts))
        rows = [{**row, "id": delivery_id} for delivery_id, (_, _, row, _) in zip(ids, receipts)]
        conn.execute(_INSERT_OUTBOX, rows)
        for delivery_id, (index, connection_id, _, delivery) in zip(ids, receipts):
            outcomes[index].deliveries.append((connection_id, _with_id(delivery, delivery_id)))
    bookings = []
    for pk, number in refunds:
        message = messages[pk]
        if message.price > 0 and message.charge > 0 and message.account_id is not None:
            bookings.append(
                Booking(
                    account_id=message.account_id,
                    kind="refund",
                    amount=message.price,
                    reference=charge_reference(message.message_id, number),
                    description=_fit(ledger.c.description, f"SMS to {message.destination} not sent, part {number}"),
                )
            )
    if bookings:
        book_many(conn, bookings, now)
    return outcomes


def _with_id(delivery: Delivery, delivery_id: int) -> Delivery:
    return Delivery(delivery_id, delivery.kind, delivery.source, delivery.destination, delivery.content,
                    delivery.data_coding, delivery.esm_class, delivery.tlvs)


@dataclass(frozen=True)
class ReceiptItem:
    link_id: int
    receipt: dlr.UpstreamReceipt
    now: datetime.datetime


def match_receipts(conn: Connection, items: list[ReceiptItem]) -> list[tuple[int, str] | None]:
    """The part (id, state) each receipt is about, or None; one query per key rank.

    A receipt's id is looked up under its keys, most likely first
    (``UpstreamReceipt.lookup_keys``), among the ids of every link: a receiver
    link reports on messages its transmitter sibling sent; the receiving link
    wins a tie, then the latest part.
    """
    keys = [item.receipt.lookup_keys() for item in items]
    found: dict[int, tuple[int, str]] = {}
    for rank in range(max((len(k) for k in keys), default=0)):
        pending = [i for i in range(len(items)) if i not in found and rank < len(keys[i])]
        wanted = sorted({keys[i][rank][:65] for i in pending})
        rows: dict[str, list[Any]] = {}
        for start in range(0, len(wanted), _KEYS_PER_QUERY):
            for row in conn.execute(_MATCH_KEYS, {"keys": wanted[start : start + _KEYS_PER_QUERY]}):
                rows.setdefault(row.upstream_key, []).append(row)
        for i in pending:
            candidates = rows.get(keys[i][rank][:65])
            if candidates:
                link_id = items[i].link_id
                best = max(candidates, key=lambda row: (row.smpp_link_id == link_id, row.id))
                found[i] = (best.id, best.state)
    return [found.get(i) for i in range(len(items))]


def record_receipts(conn: Connection, items: list[ReceiptItem]) -> list[ReceiptResult]:
    """Match receipts to parts and apply the final ones; one result per item."""
    matched: list[bool] = []
    results: list[PartResult] = []
    owners: list[int] = []
    for index, (item, found) in enumerate(zip(items, match_receipts(conn, items))):
        matched.append(found is not None)
        if found is not None and item.receipt.final:
            results.append(PartResult(found[0], item.receipt.state, item.receipt.error_code))
            owners.append(index)
    outcomes = [Outcome() for _ in items]
    if results:
        for owner, outcome in zip(owners, finish_parts(conn, results, items[-1].now)):
            outcomes[owner].extend(outcome)
    return [ReceiptResult(flag, outcome) for flag, outcome in zip(matched, outcomes)]


def finish_many(conn: Connection, items: list[tuple[PartResult, datetime.datetime]]) -> list[Outcome]:
    """``finish_parts`` for a group commit: items are (result, now)."""
    return finish_parts(conn, [result for result, _ in items], items[-1][1])


def expire_parts(
    conn: Connection, node: str, now: datetime.datetime, skip_links: list[int], limit: int = 1000
) -> Outcome:
    """Parts of this node still queued past their validity become EXPIRED (and are refunded).

    Links in ``skip_links`` (bound now) expire their own parts as they reach them.
    """
    ids = list(
        conn.execute(_EXPIRED, {"node": node, "now": now, "skip": list(skip_links), "limit": limit}).scalars()
    )
    outcome = Outcome()
    for item in finish_parts(conn, [PartResult(part_id, "EXPIRED", None) for part_id in ids], now):
        outcome.extend(item)
    return outcome


# -- the upstream queue ---------------------------------------------------------------------


def load_parts(
    conn: Connection, node: str, link_id: int, after: int, limit: int, now: datetime.datetime
) -> list[OutboundPart]:
    """Parts of this node queued for a link and due now, by id, after ``after``."""
    rows = conn.execute(
        _LOAD_PARTS, {"node": node, "link_id": link_id, "now": now, "after": after, "limit": limit}
    )
    return [
        OutboundPart(
            part_id=row.id,
            message_pk=row.sms_message_id,
            message_id=row.message_id,
            link_id=row.smpp_link_id,
            number=row.number,
            total=row.total,
            source=row.source,
            destination=row.destination,
            short_message=bytes(row.short_message),
            in_payload=row.in_payload,
            data_coding=row.data_coding,
            esm_class=row.esm_class,
            registered_delivery=row.registered_delivery,
            tlvs=dict(row.tlvs or {}),
            expires_at=row.expires_at,
        )
        for row in rows
    ]


# -- customers' outbox ---------------------------------------------------------------------------


def _delivery(row) -> Delivery:
    return Delivery(
        id=row.id,
        kind=row.kind,
        source=row.source,
        destination=row.destination,
        content=bytes(row.content),
        data_coding=row.data_coding,
        esm_class=row.esm_class,
        tlvs=tlvs_from_json(row.tlvs),
    )


def load_outbox(conn: Connection, connection_id: int, after: int, limit: int) -> list[Delivery]:
    """Pending deliveries of an SMPP connection, by id, after ``after``."""
    rows = conn.execute(_LOAD_OUTBOX, {"connection_id": connection_id, "after": after, "limit": limit})
    return [_delivery(row) for row in rows]


def outbox_done(conn: Connection, items: list[tuple[int, datetime.datetime]]) -> list[None]:
    """The ESME acknowledged these deliveries: never send them again."""
    conn.execute(_OUTBOX_DONE, [{"delivery_id": delivery_id, "now": now} for delivery_id, now in items])
    return [None] * len(items)


def outbox_attempted(conn: Connection, items: list[int]) -> list[None]:
    """Count failed pushes (visible to operators; the row stays pending)."""
    conn.execute(_OUTBOX_ATTEMPTED, [{"delivery_id": delivery_id} for delivery_id in items])
    return [None] * len(items)


# -- MO from upstream ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MoItem:
    link_id: int
    message: dlr.UpstreamMessage
    message_id: str
    body: str
    now: datetime.datetime


def mo_owner(conn: Connection, destination: str) -> tuple[int, int, str, int] | None:
    """Who receives an MO sent to ``destination``: (account, service, kind, connection).

    The number (with or without ``+``) is looked up in ``numbers``; its
    service's SMPP connection with the lowest id receives it, else the
    lowest SMPP connection of any service of the same account, else the
    HTTP connection of the service, else of the account (kind ``http``).
    """
    digits = rating.number_digits(destination)
    if not digits:
        return None
    owner = conn.execute(_NUMBER_OWNER, {"numbers": [digits, "+" + digits]}).first()
    if owner is None:
        return None
    service_id, account_id = owner
    smpp = conn.execute(_SMPP_OF_SERVICE, {"service_id": service_id}).first()
    if smpp is not None:
        return account_id, service_id, "smpp", smpp.id
    smpp = conn.execute(_SMPP_OF_ACCOUNT, {"account_id": account_id}).first()
    if smpp is not None:
        return account_id, smpp.service_id, "smpp", smpp.id
    http = conn.execute(_HTTP_OF_SERVICE, {"service_id": service_id}).first()
    if http is not None:
        return account_id, service_id, "http", http.id
    http = conn.execute(_HTTP_OF_ACCOUNT, {"account_id": account_id}).first()
    if http is not None:
        return account_id, http.service_id, "http", http.id
    return None


def store_mo(conn: Connection, items: list[MoItem]) -> list[MoStored | None]:
    """Store MO messages for their customers; None for a number nobody owns."""
    results: list[MoStored | None] = []
    for item in items:
        owner = mo_owner(conn, item.message.destination)
        if owner is None:
            results.append(None)
            continue
        account_id, service_id, kind, connection_id = owner
        mo = item.message
        [pk] = allocate_ids(conn, sms_messages, 1)
        conn.execute(
            _INSERT_MESSAGES,
            [
                {
                    "id": pk,
                    "message_id": item.message_id,
                    "account_id": account_id,
                    "service_id": service_id,
                    "direction": "mo",
                    "origin_kind": kind,
                    "connection_id": connection_id,
                    "client_reference": None,
                    "node": None,
                    "source": _fit(sms_messages.c.source, mo.source),
                    "destination": _fit(sms_messages.c.destination, mo.destination),
                    "body": item.body,
                    "data_coding": mo.data_coding,
                    "esm_class": mo.esm_class,
                    "registered_delivery": 0,
                    "parts": 1,
                    "status": "ACCEPTED",
                    "smpp_link_id": item.link_id,
                    "upstream_message_id": None,
                    "error_code": None,
                    "price": Decimal(0),
                    "charge": Decimal(0),
                    "scheduled_at": None,
                    "expires_at": None,
                    "done_at": item.now,
                    "created_at": item.now,
                    "updated_at": item.now,
                }
            ],
        )
        delivery = None
        if kind == "smpp":
            row = {
                "connection_id": connection_id,
                "kind": "mo",
                "sms_message_id": pk,
                "source": _fit(sms_outbox.c.source, mo.source),
                "destination": _fit(sms_outbox.c.destination, mo.destination),
                "content": mo.content,
                "data_coding": mo.data_coding,
                "esm_class": mo.esm_class,
                "tlvs": tlvs_to_json(mo.tlvs),
                "state": "pending",
                "attempts": 0,
                "done_at": None,
                "created_at": item.now,
            }
            [delivery_id] = allocate_ids(conn, sms_outbox, 1)
            conn.execute(_INSERT_OUTBOX, [{**row, "id": delivery_id}])
            delivery = Delivery(delivery_id, "mo", row["source"], row["destination"], mo.content, mo.data_coding,
                                mo.esm_class, dict(mo.tlvs))
        results.append(MoStored(item.message_id, account_id, service_id, kind, connection_id, delivery))
    return results


# -- customers' requests on their messages --------------------------------------------------------


def find_message(conn: Connection, account_id: int, message_id: str) -> MessageInfo | None:
    """A message of the account, by our message id."""
    row = conn.execute(_FIND_MESSAGE, {"message_id": message_id, "account_id": account_id}).first()
    if row is None:
        return None
    return MessageInfo(
        message_id=row.message_id,
        state=row.status,
        parts=row.parts,
        error_code=row.error_code,
        submitted_at=row.created_at,
        done_at=row.done_at,
        source=row.source,
        destination=row.destination,
    )


def change_target(conn: Connection, account_id: int, message_id: str) -> ChangeTarget | None:
    """A message of the account with its parts' ids and states (for cancel and replace)."""
    row = conn.execute(_FIND_MESSAGE, {"message_id": message_id, "account_id": account_id}).first()
    if row is None or row.direction != "mt":
        return None
    parts = conn.execute(_PARTS_OF_MESSAGE, {"message_pk": row.id}).all()
    return ChangeTarget(
        message_pk=row.id,
        message_id=row.message_id,
        node=row.node,
        link_id=row.smpp_link_id,
        status=row.status,
        part_ids=tuple(part.id for part in parts),
        part_states=tuple(part.state for part in parts),
        registered_delivery=row.registered_delivery,
        data_coding=row.data_coding,
    )


def cancel_message(conn: Connection, target: ChangeTarget, now: datetime.datetime) -> Outcome | None:
    """Delete a message whose parts are all still queued; None if one is not any more."""
    states = [row.state for row in conn.execute(_PARTS_OF_MESSAGE, {"message_pk": target.message_pk})]
    if not states or any(state != "queued" for state in states):
        return None
    outcome = Outcome()
    for item in finish_parts(conn, [PartResult(part_id, "DELETED", None) for part_id in target.part_ids], now):
        outcome.extend(item)
    return outcome


_REPLACE_PART = (
    update(sms_parts)
    .where(sms_parts.c.id == bindparam("part_id"), sms_parts.c.state == "queued")
    .values(
        short_message=bindparam("short_message"),
        in_payload=bindparam("in_payload"),
        data_coding=bindparam("data_coding"),
        esm_class=bindparam("esm_class"),
        tlvs=bindparam("tlvs", type_=sms_parts.c.tlvs.type),
        updated_at=bindparam("now", type_=sms_parts.c.updated_at.type),
    )
)
_REPLACE_BODY = (
    update(sms_messages)
    .where(sms_messages.c.id == bindparam("message_pk"))
    .values(
        body=bindparam("body"),
        data_coding=bindparam("data_coding"),
        updated_at=bindparam("now", type_=sms_messages.c.updated_at.type),
    )
)


def replace_message(
    conn: Connection,
    target: ChangeTarget,
    parts: tuple[NewPart, ...],
    body: str,
    data_coding: int,
    now: datetime.datetime,
) -> bool:
    """Put new content in a message whose parts are all still queued, part for part.

    The new content must split into as many parts as the old (each part was
    charged); False when it does not, or when a part is no longer queued.
    """
    states = [row.state for row in conn.execute(_PARTS_OF_MESSAGE, {"message_pk": target.message_pk})]
    if not states or any(state != "queued" for state in states) or len(parts) != len(states):
        return False
    conn.execute(
        _REPLACE_PART,
        [
            {
                "part_id": part_id,
                "short_message": part.short_message,
                "in_payload": part.in_payload,
                "data_coding": part.data_coding,
                "esm_class": part.esm_class,
                "tlvs": part.tlvs,
                "now": now,
            }
            for part_id, part in zip(target.part_ids, parts)
        ],
    )
    conn.execute(_REPLACE_BODY, {"message_pk": target.message_pk, "body": body, "data_coding": data_coding, "now": now})
    return True


_PRUNE_COUNTS = sms_sending_counts.delete().where(
    sms_sending_counts.c.window_start < bindparam("before", type_=sms_sending_counts.c.window_start.type)
)


def prune_counts(conn: Connection, before: datetime.datetime) -> int:
    """Forget anti-fraud counters of windows that ended."""
    return conn.execute(_PRUNE_COUNTS, {"before": before}).rowcount or 0


# -- group commit -------------------------------------------------------------------------------------


class Overloaded(Exception):
    """More operations are waiting for the database than the engine accepts."""


@dataclass
class _Waiting:
    op: Callable[[Connection, list[Any]], list[Any]]
    item: Any
    deferred: Deferred


class GroupCommit:
    """Many small writes, few transactions: the operations queued while
    transactions run go together into the next one.

    ``submit(op, item)`` returns a Deferred that fires with ``op``'s result
    for ``item`` once it is committed. ``op(conn, items) -> results`` takes a
    list and returns one result per item; consecutive operations of the same
    kind run as one call, in submission order. If a transaction fails, its
    operations are retried one per transaction, so one bad item fails alone.

    At most ``max_in_flight`` transactions run at once: 1 on SQLite (the
    single writer anyway; then a receipt's lookup always sees the id stored
    for its part just before), a few on PostgreSQL, where batches then
    commit side by side (the engine looks a receipt up again when it came
    first). Under load the batches grow, not the number of commits.
    """

    log = Logger()

    def __init__(
        self, db: Any, *, max_batch: int = 1000, max_pending: int = 100_000, max_in_flight: int | None = None
    ) -> None:
        self.db = db
        self.max_batch = max_batch
        self.max_pending = max_pending
        if max_in_flight is None:
            max_in_flight = 2 if getattr(db, "dialect", "sqlite") == "postgresql" else 1
        self.max_in_flight = max(max_in_flight, 1)
        self._queue: deque[_Waiting] = deque()
        self._in_flight = 0
        self._drain_waiters: list[Deferred] = []
        self.transactions = 0  # committed, for metrics and tests

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        return self._in_flight > 0

    def drained(self) -> Deferred:
        """Fires once nothing is queued or in flight (at shutdown, before the database stops)."""
        if not self._queue and not self._in_flight:
            return succeed(None)
        d: Deferred = Deferred()
        self._drain_waiters.append(d)
        return d

    def _check_drained(self) -> None:
        if self._drain_waiters and not self._queue and not self._in_flight:
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                d.callback(None)

    def submit(self, op: Callable[[Connection, list[Any]], list[Any]], item: Any) -> Deferred:
        """Queue ``item`` for ``op``; raises :class:`Overloaded` beyond ``max_pending``."""
        if len(self._queue) >= self.max_pending:
            raise Overloaded(f"{len(self._queue)} operations are waiting for the database")
        waiting = _Waiting(op, item, Deferred())
        self._queue.append(waiting)
        self._next()
        return waiting.deferred

    def _next(self) -> None:
        while self._queue and self._in_flight < self.max_in_flight:
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            self._in_flight += 1
            d = maybeDeferred(self.db.run, _run_batch, [(w.op, w.item) for w in batch])
            d.addCallbacks(self._committed, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))

    def _committed(self, results: list[Any], batch: list[_Waiting]) -> None:
        self.transactions += 1
        self._in_flight -= 1
        for waiting, result in zip(batch, results):
            waiting.deferred.callback(result)
        self._next()
        self._check_drained()

    def _failed(self, failure: Failure, batch: list[_Waiting]) -> None:
        if len(batch) == 1:
            self._in_flight -= 1
            batch[0].deferred.errback(failure)
            self._next()
            self._check_drained()
            return
        self.log.warn(  # noqa: G010 - twisted.logger has warn(), not warning()
            "a group commit of {count} operations failed ({error}); retrying them one by one",
            count=len(batch),
            error=failure.getErrorMessage(),
        )
        self._alone(batch, 0)

    def _alone(self, batch: list[_Waiting], index: int) -> None:
        if index >= len(batch):
            self._in_flight -= 1
            self._next()
            self._check_drained()
            return
        waiting = batch[index]
        d = maybeDeferred(self.db.run, _run_batch, [(waiting.op, waiting.item)])

        def done(result: Any) -> None:
            self.transactions += 1
            waiting.deferred.callback(result[0])

        d.addCallbacks(done, waiting.deferred.errback)
        d.addBoth(lambda _: self._alone(batch, index + 1))


def _run_batch(conn: Connection, work: list[tuple[Callable[[Connection, list[Any]], list[Any]], Any]]) -> list[Any]:
    """Run runs of the same operation as one call each, in order; results in order."""
    results: list[Any] = []
    start = 0
    while start < len(work):
        op = work[start][0]
        end = start
        while end < len(work) and work[end][0] is op:
            end += 1
        out = op(conn, [item for _, item in work[start:end]])
        if len(out) != end - start:
            raise RuntimeError(f"{op.__name__} returned {len(out)} results for {end - start} items")
        results.extend(out)
        start = end
    return results
