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
import io
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import Column, Table, bindparam, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ..billing import rating
from ..billing.ledger import BalanceRangeError, LedgerError, signed_amount
from ..smpp import dlr, pdu
from ..smpp.client import OutboundPart
from ..store.groupcommit import GroupCommit, Overloaded  # noqa: F401 - the engine's names for them
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
from ..store.types import MONEY_LIMIT, UTCDateTime, to_money

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
    if isinstance(value, str):
        length = _width(column)
        if length is not None:
            return value[:length]
    return value


#: id(column) -> its width (the columns are module-level objects, alive for ever).
_WIDTHS: dict[int, int | None] = {}


def _width(column: Column) -> int | None:
    # Keyed by id: a Column's == builds SQL, it cannot be a dict key safely.
    key = id(column)
    if key not in _WIDTHS:
        _WIDTHS[key] = getattr(column.type, "length", None)
    return _WIDTHS[key]


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


# -- bulk writes ---------------------------------------------------------------------------------
#
# The hot writes (rows of messages, parts, receipts, ledger movements, and the
# updates of their states) go to the driver as plain SQL with the values
# already in the form the driver takes: SQLite gets one ``executemany`` that
# sqlite3 runs in C, PostgreSQL one multi-row ``INSERT ... VALUES`` or
# ``UPDATE ... FROM (VALUES ...)`` per 500 rows (one round trip, where the
# driver's executemany makes one per row). Values are converted by each
# column's own bind processor, as SQLAlchemy would, once per distinct
# timestamp or amount of the batch (a message's rows share their
# timestamps). SQLAlchemy's per-row handling of parameters (a dict per row,
# a conversion per value) was about a quarter of the engine's time under load.

#: Rows per PostgreSQL statement.
_PG_ROWS = 500
#: Values whose conversion is the same for every row that has them.
_MEMO_TYPES = (datetime.datetime, Decimal)


def sqlite_timestamp(value: datetime.datetime | None) -> str | None:
    """A UTC timestamp as SQLAlchemy stores it in SQLite (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC)."""
    if value is None:
        return None
    tz = value.tzinfo
    if tz is None:
        raise ValueError("naive datetime given to a UTC column")
    if tz is not datetime.UTC:
        value = value.astimezone(datetime.UTC)
    # "YYYY-MM-DD HH:MM:SS.ffffff+00:00" without its offset: one call, no copy.
    return value.isoformat(" ", "microseconds")[:-6]


@functools.cache
def _bind_processors(dialect: Any, table: Table, columns: tuple[str, ...]) -> tuple[Callable[[Any], Any] | None, ...]:
    processors = []
    for name in columns:
        type_ = table.c[name].type
        if dialect.name == "sqlite" and isinstance(type_, UTCDateTime):
            processors.append(sqlite_timestamp)  # the same text, without two layers of Python calls
        else:
            processors.append(type_.dialect_impl(dialect).bind_processor(dialect))
    return tuple(processors)


def _driver_rows(conn: Connection, table: Table, columns: tuple[str, ...], rows: list[tuple]) -> list[tuple]:
    """``rows`` with each value as the column's bind processor makes it for this dialect.

    Column by column (``zip``): each processor runs over its column in one
    loop, with one memo per processor, so the columns of one type share
    conversions (a part's created_at, updated_at and next_attempt_at are one
    timestamp) and a row is not unpacked and rebuilt per processor.
    """
    active = [(index, process) for index, process in enumerate(_bind_processors(conn.dialect, table, columns))
              if process is not None]
    if not active or not rows:
        return rows
    data = list(zip(*rows))
    memos: dict[Any, dict[Any, Any]] = {}
    for index, process in active:
        data[index] = _converted(process, data[index], memos.setdefault(process, {}))
    return list(zip(*data))


def _converted(process: Callable[[Any], Any], values: tuple, memo: dict[Any, Any]) -> list[Any]:
    """One column's values through its processor, once per distinct timestamp,
    amount or NULL (the rows of a batch share many: a message's rows have the
    same timestamps)."""
    out = []
    append = out.append
    for value in values:
        if value is None or isinstance(value, _MEMO_TYPES):
            converted = memo.get(value, memo)
            if converted is memo:
                converted = memo[value] = process(value)
            append(converted)
        elif type(value) is dict and not value:
            # No TLVs, most parts: JSON "{}" once, not json.dumps per row.
            converted = memo.get(_NO_ITEMS, memo)
            if converted is memo:
                converted = memo[_NO_ITEMS] = process(value)
            append(converted)
        else:
            append(process(value))
    return out


#: The memo key of an empty dict (a dict cannot be one).
_NO_ITEMS = object()


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _chunks(rows: list[tuple], size: int) -> list[list[tuple]]:
    return [rows[start:start + size] for start in range(0, len(rows), size)]


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_field(value: Any) -> str:
    """A driver-ready value as a field of PostgreSQL's COPY text format."""
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, (int, Decimal)):
        return str(value)
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.isoformat()
    raw = getattr(value, "adapted", value)  # psycopg2.Binary wraps octets
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return "\\\\x" + bytes(raw).hex()
    raise TypeError(f"cannot write a {type(value).__name__} with COPY")


def _copy(conn: Connection, table: Table, columns: tuple[str, ...], values: list[tuple]) -> None:
    """PostgreSQL: the rows through COPY, in the caller's transaction (a quarter of the
    time of a multi-row INSERT, most of it the client's formatting of parameters)."""
    memo: dict[Any, str] = {}
    lines = []
    for row in values:
        fields = []
        for value in row:
            if isinstance(value, _MEMO_TYPES):
                text_ = memo.get(value)
                if text_ is None:
                    text_ = memo[value] = copy_field(value)
                fields.append(text_)
            else:
                fields.append(copy_field(value))
        lines.append("\t".join(fields))
    sql = f"COPY {_quote(conn, table.name)} ({', '.join(_quote(conn, c) for c in columns)}) FROM STDIN"
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.copy_expert(sql, io.StringIO("\n".join(lines) + "\n"))
    finally:
        cursor.close()


def bulk_insert(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows (dicts with the same keys): SQLite one executemany, PostgreSQL one COPY."""
    if not rows:
        return
    columns = tuple(rows[0])
    pick = operator.itemgetter(*columns) if len(columns) > 1 else lambda row: (row[columns[0]],)
    values = _driver_rows(conn, table, columns, [pick(row) for row in rows])
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(_sqlite_insert(conn.dialect, table, columns), values)
        return
    _copy(conn, table, columns, values)


# The SQL of the bulk writes, built once per table and columns (quoting and type
# compilation are not free, and these run several times per transaction).


@functools.cache
def _sqlite_insert(dialect: Any, table: Table, columns: tuple[str, ...]) -> str:
    quote = dialect.identifier_preparer.quote
    return (f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) VALUES "
            f"({', '.join('?' * len(columns))})")


@functools.cache
def _sqlite_update(dialect: Any, table: Table, columns: tuple[str, ...], constants: str, where: str) -> str:
    quote = dialect.identifier_preparer.quote
    extra = f" AND ({where})" if where else ""
    sets = [f"{quote(c)} = ?" for c in columns] + ([constants] if constants else [])
    return f"UPDATE {quote(table.name)} SET {', '.join(sets)} WHERE id = ?{extra}"


@functools.cache
def _pg_update(dialect: Any, table: Table, columns: tuple[str, ...], constants: str, where: str) -> tuple[str, str]:
    """The text before and after the VALUES rows of a PostgreSQL bulk update."""
    quote = dialect.identifier_preparer.quote
    name = quote(table.name)
    extra = f" AND ({where})" if where else ""
    # The values' columns are v.v0, v.v1...: names no column of the table has.
    sets = [f"{quote(c)} = v.v{index}::{table.c[c].type.dialect_impl(dialect).compile(dialect)}"
            for index, c in enumerate(columns)] + ([constants] if constants else [])
    key_type = table.c.id.type.dialect_impl(dialect).compile(dialect)
    alias = "v(k, " + ", ".join(f"v{index}" for index in range(len(columns))) + ")"
    return f"UPDATE {name} SET {', '.join(sets)} FROM (VALUES ", f") AS {alias} WHERE {name}.id = v.k::{key_type}{extra}"


def bulk_update(
    conn: Connection,
    table: Table,
    columns: tuple[str, ...],
    rows: list[tuple],
    *,
    constants: str = "",
    where: str = "",
) -> None:
    """Update rows by id: each of ``rows`` is ``(id, *values of columns)``.

    ``constants`` is more of the SET clause (SQL, the same for every row);
    ``where`` a further condition (SQL over unqualified columns of the table).
    A row whose condition does not hold is left alone. Ids should be unique
    in ``rows``: PostgreSQL applies one of several rows for one id.
    """
    if not rows:
        return
    names = ("id", *columns)
    values = _driver_rows(conn, table, names, rows)
    if conn.dialect.name == "sqlite":
        sql = _sqlite_update(conn.dialect, table, columns, constants, where)
        conn.exec_driver_sql(sql, [(*row[1:], row[0]) for row in values])
        return
    head, tail = _pg_update(conn.dialect, table, columns, constants, where)
    one = "(" + ", ".join(["%s"] * len(names)) + ")"
    for chunk in _chunks(values, _PG_ROWS):
        sql = f"{head}{', '.join([one] * len(chunk))}{tail}"
        conn.exec_driver_sql(sql, tuple(v for row in chunk for v in row))


# -- statements (built once) ------------------------------------------------------------------

# Rows are inserted with ids allocated beforehand (``allocate_ids``): a plain
# executemany, where RETURNING in parameter order would send SQLite one
# statement per row.
_MAX_ID = {table.name: select(func.max(table.c.id)) for table in (sms_messages, sms_parts, sms_outbox)}
_NEXTVAL = {
    table.name: text(f"SELECT nextval(pg_get_serial_sequence('{table.name}', 'id')) FROM generate_series(1, :n)")
    for table in (sms_messages, sms_parts, sms_outbox)
}
# FOR NO KEY UPDATE (PostgreSQL), not FOR UPDATE: a transaction that finished a
# message it had just changed holds a KEY SHARE lock on the message's account
# (the foreign key's check); FOR UPDATE would wait for it, and two such
# transactions charging the same account would deadlock.
_LOCK_BALANCE = (
    select(accounts.c.balance).where(accounts.c.id == bindparam("account_id")).with_for_update(key_share=True)
)
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
#: Whether a part never left switchd (a refund on failure): a flag, not the
#: timestamp, which would be parsed for every receipt only to be compared with NULL.
_UNSENT = sms_parts.c.sent_at.is_(None).label("unsent")
_PARTS_BY_ID = select(
    sms_parts.c.id,
    sms_parts.c.sms_message_id,
    sms_parts.c.state,
    _UNSENT,
    sms_parts.c.number,
    sms_parts.c.total,
).where(sms_parts.c.id.in_(bindparam("ids", expanding=True)))
_PARTS_OF_MESSAGES = (
    select(sms_parts.c.sms_message_id, sms_parts.c.number, sms_parts.c.state, sms_parts.c.error_code)
    .where(sms_parts.c.sms_message_id.in_(bindparam("pks", expanding=True)))
    .order_by(sms_parts.c.sms_message_id, sms_parts.c.number)
)
# What finishing a message needs of it (not the whole row: this runs for every receipt).
_MESSAGES_BY_PK = select(
    *(
        sms_messages.c[name]
        for name in (
            "id", "message_id", "account_id", "service_id", "direction", "origin_kind", "connection_id",
            "client_reference", "source", "destination", "body", "registered_delivery", "parts", "status",
            "created_at",
        )
    )
).where(sms_messages.c.id.in_(bindparam("pks", expanding=True)))
# The price of messages with parts to refund (rare: not read for every receipt).
_PRICES_BY_PK = select(sms_messages.c.id, sms_messages.c.price, sms_messages.c.charge).where(
    sms_messages.c.id.in_(bindparam("pks", expanding=True))
)
_MATCH_KEYS = select(
    sms_parts.c.id,
    sms_parts.c.state,
    sms_parts.c.smpp_link_id,
    sms_parts.c.upstream_key,
    # What finish_parts needs, so it does not read the part again.
    sms_parts.c.sms_message_id,
    _UNSENT,
    sms_parts.c.number,
    sms_parts.c.total,
).where(sms_parts.c.upstream_key.in_(bindparam("keys", expanding=True)))
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
        func.coalesce(services.c.distribution_priority, 0).label("priority"),
    )
    .join(sms_messages, sms_messages.c.id == sms_parts.c.sms_message_id)
    .outerjoin(services, services.c.id == sms_messages.c.service_id)
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


def book_many(
    conn: Connection,
    bookings: list[Booking],
    now: datetime.datetime,
    *,
    fresh: bool = False,
    locked: dict[int, Decimal] | None = None,
) -> int:
    """Book many movements with one balance update per account; returns how many were booked.

    The same rules as ``ledger.book``: each row holds the balance right
    after it, the account's balance is locked and updated in the same
    transaction, and a reference already booked for the account and kind is
    skipped (so a replay books nothing). ``fresh``: the references name
    something created in this transaction (a new message's id), so none can
    be booked yet and they are not looked up (the ledger's unique constraint
    still holds); that lookup reads the account's index of references and
    grows with its history. ``locked``: balances the caller already read
    with the lock in this transaction (and did not change since), not read again.
    """
    by_account: dict[int, list[Booking]] = {}
    for booking in bookings:
        by_account.setdefault(booking.account_id, []).append(booking)
    rows: list[dict[str, Any]] = []
    for account_id in sorted(by_account):  # one lock order on every node: no deadlocks
        balance = locked.get(account_id) if locked is not None else None
        if balance is None:
            balance = conn.execute(_LOCK_BALANCE, {"account_id": account_id}).scalar()
        if balance is None:
            raise LedgerError(f"no account {account_id}")
        items = by_account[account_id]
        for kind in {booking.kind for booking in items} if not fresh else ():
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
        bulk_insert(conn, ledger, rows)
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
    bulk_insert(conn, sms_messages, message_rows)
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
    bulk_insert(conn, sms_parts, part_rows)
    part_ids = iter(allocated)
    if bookings:
        book_many(conn, bookings, accepted[0][1].submitted_at, fresh=True, locked=balances)
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
                priority=payers[item.service_id].distribution_priority,
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
    """Keep the ids SMSCs gave our parts (only parts still ``queued`` change).

    A part answered twice in one batch (sent again after a timeout) keeps
    its first id, as it would in two batches.
    """
    parts: dict[int, tuple] = {}
    messages: dict[int, tuple] = {}
    for item in items:
        if item.part_id not in parts:
            upstream_id = _fit(sms_parts.c.upstream_message_id, item.upstream_id)
            key = _fit(sms_parts.c.upstream_key, pdu.normalize_message_id(item.upstream_id))
            parts[item.part_id] = (item.part_id, upstream_id, key, item.now, item.now)
        if item.message_pk not in messages:
            messages[item.message_pk] = (item.message_pk, _fit(sms_messages.c.upstream_message_id, item.upstream_id))
    bulk_update(conn, sms_parts, ("upstream_message_id", "upstream_key", "sent_at", "updated_at"),
                list(parts.values()), constants="state = 'sent'", where="state = 'queued'")
    bulk_update(conn, sms_messages, ("upstream_message_id",), list(messages.values()),
                where="upstream_message_id IS NULL")
    return [None] * len(items)


def finish_parts(
    conn: Connection, results: list[PartResult], now: datetime.datetime, known: dict[int, Any] | None = None
) -> list[Outcome]:
    """Give parts their final state; finish the messages whose last part this was.

    One ``Outcome`` per result: the message events and customer receipts are
    attached to the result that completed the message. A part already final
    does not change (a duplicate receipt, a retry). Parts that fail without
    having left switchd are refunded.
    """
    outcomes = [Outcome() for _ in results]
    if not results:
        return outcomes
    # ``known``: rows of these parts the caller read in this transaction (the receipts' match).
    current = dict(known or {})
    missing = sorted({r.part_id for r in results} - current.keys())
    if missing:
        current.update((row.id, row) for row in conn.execute(_PARTS_BY_ID, {"ids": missing}))
    states: dict[int, str] = {part_id: row.state for part_id, row in current.items()}
    updates: list[tuple] = []
    completing: dict[int, int] = {}  # message pk -> index of the result that touched it last
    # The new states of messages of one part: no need to read their parts back.
    alone: dict[int, list[_PartState]] = {}
    refunds: list[tuple[int, int]] = []  # (message pk, part number)
    for index, result in enumerate(results):
        row = current.get(result.part_id)
        if row is None or states[result.part_id] in dlr.FINAL_STATES:
            continue
        if result.state not in dlr.FINAL_STATES:
            raise ValueError(f"{result.state!r} is not a final state")
        states[result.part_id] = result.state
        updates.append((result.part_id, result.state, result.error_code, now, now))
        completing[row.sms_message_id] = index
        if row.total == 1:
            alone[row.sms_message_id] = [_PartState(row.number, result.state, result.error_code)]
        if row.unsent and result.state not in dlr.SUCCESS_STATES:
            refunds.append((row.sms_message_id, row.number))
    if not updates:
        return outcomes
    bulk_update(conn, sms_parts, ("state", "error_code", "done_at", "updated_at"), updates,
                where="state IN ('queued', 'sent')")
    pks = sorted(completing)
    parts_by_message: dict[int, list[Any]] = dict(alone)
    several = [pk for pk in pks if pk not in alone]
    if several:
        for row in conn.execute(_PARTS_OF_MESSAGES, {"pks": several}):
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
        finished.append((pk, state, error, now, now))
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
        bulk_update(conn, sms_messages, ("status", "error_code", "done_at", "updated_at"), finished,
                    where="status = 'ENROUTE'")
    if receipts:
        ids = allocate_ids(conn, sms_outbox, len(receipts))
        rows = [{**row, "id": delivery_id} for delivery_id, (_, _, row, _) in zip(ids, receipts)]
        bulk_insert(conn, sms_outbox, rows)
        for delivery_id, (index, connection_id, _, delivery) in zip(ids, receipts):
            outcomes[index].deliveries.append((connection_id, _with_id(delivery, delivery_id)))
    bookings = []
    prices = {}
    if refunds:
        prices = {row.id: row for row in conn.execute(_PRICES_BY_PK, {"pks": sorted({pk for pk, _ in refunds})})}
    for pk, number in refunds:
        message = messages[pk]
        price = prices[pk]
        if price.price > 0 and price.charge > 0 and message.account_id is not None:
            bookings.append(
                Booking(
                    account_id=message.account_id,
                    kind="refund",
                    amount=price.price,
                    reference=charge_reference(message.message_id, number),
                    description=_fit(ledger.c.description, f"SMS to {message.destination} not sent, part {number}"),
                )
            )
    if bookings:
        book_many(conn, bookings, now)
    return outcomes


class _PartState(NamedTuple):
    number: int
    state: str
    error_code: int | None


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
    return [(row.id, row.state) if row is not None else None for row in _match_rows(conn, items)]


def _match_rows(conn: Connection, items: list[ReceiptItem]) -> list[Any]:
    """``match_receipts`` with the parts' rows (``_MATCH_KEYS``' columns)."""
    keys = [item.receipt.lookup_keys() for item in items]
    found: dict[int, Any] = {}
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
                found[i] = max(candidates, key=lambda row: (row.smpp_link_id == link_id, row.id))
    return [found.get(i) for i in range(len(items))]


def record_receipts(conn: Connection, items: list[ReceiptItem]) -> list[ReceiptResult]:
    """Match receipts to parts and apply the final ones; one result per item."""
    matched: list[bool] = []
    results: list[PartResult] = []
    owners: list[int] = []
    known: dict[int, Any] = {}
    for index, (item, found) in enumerate(zip(items, _match_rows(conn, items))):
        matched.append(found is not None)
        if found is not None and item.receipt.final:
            results.append(PartResult(found.id, item.receipt.state, item.receipt.error_code))
            owners.append(index)
            known[found.id] = found
    outcomes = [Outcome() for _ in items]
    if results:
        for owner, outcome in zip(owners, finish_parts(conn, results, items[-1].now, known)):
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
            priority=row.priority,
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
    done = {delivery_id: (delivery_id, now) for delivery_id, now in reversed(items)}
    bulk_update(conn, sms_outbox, ("done_at",), list(done.values()), constants="state = 'done'",
                where="state = 'pending'")
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
    node: str | None = None  # the node that took it: the one that sends its HTTP callback


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
        bulk_insert(
            conn,
            sms_messages,
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
                    "node": item.node,
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
            bulk_insert(conn, sms_outbox, [{**row, "id": delivery_id}])
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


def pending_message_ids(
    conn: Connection, account_id: int, origin_kind: str, connection_id: int, source: str,
    destination: str | None, limit: int = 1000,
) -> list[str]:
    """Ids of a connection's messages still under way from ``source`` (to
    ``destination`` if given), oldest first: what a cancel_sm without a
    message_id names."""
    m = sms_messages
    query = (
        select(m.c.message_id)
        .where(m.c.account_id == account_id, m.c.origin_kind == origin_kind, m.c.connection_id == connection_id,
               m.c.direction == "mt", m.c.status == "ENROUTE", m.c.source == source)
        .order_by(m.c.id)
        .limit(limit)
    )
    if destination:
        query = query.where(m.c.destination == destination)
    return list(conn.execute(query).scalars())


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


