"""Call detail records: writing them once, charging them once, losing none.

A call's life in the database: when it is answered, ``record_answer`` writes
an ``active_calls`` row; when it ends, ``finish_call`` writes its CDR, books
its charge on the ledger and removes the active row, all in one
transaction. Each node beats (``heartbeat``) into ``nodes`` while it runs;
after a crash, ``start_node`` turns the node's leftover active calls into
CDRs ending at its last heartbeat (``reconcile``), before the node takes
new calls. A CDR and its charge exist once per call id, however many times
any of this is retried.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Column, Table, bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ..store.models import active_calls, cdrs, nodes
from ..store.models import ledger as ledger_table
from ..store.types import to_money
from . import ledger, rating
from .rating import Rate

#: Longest ledger reference (the width of ``ledger.reference``).
_REFERENCE_LIMIT: int = ledger_table.c.reference.type.length  # type: ignore[attr-defined]
#: Longest call id (the width of ``cdrs.call_id`` and ``active_calls.call_id``).
_CALL_ID_LIMIT: int = min(cdrs.c.call_id.type.length, active_calls.c.call_id.type.length)  # type: ignore[attr-defined]


@dataclass(kw_only=True)
class CallRecord:
    """What the B2BUA knows about one call; fills in as the call goes on."""

    call_id: str
    account_id: int
    node: str
    start_time: datetime.datetime  # the INVITE arrived
    service_id: int | None = None
    trunk_id: int | None = None
    direction: str = "outbound"  # outbound, inbound or callback
    caller: str | None = None
    callee: str | None = None
    answer_time: datetime.datetime | None = None  # None: never answered
    end_time: datetime.datetime | None = None
    hangup_side: str | None = None  # caller, callee or switch
    sip_code: int | None = None  # final response of an unanswered call
    reason: str | None = None
    rate: Rate | None = None  # None: not rated, charged nothing
    currency: str | None = None
    recording: str | None = None


def _insert(conn: Connection):
    """The dialect's INSERT, which knows ON CONFLICT."""
    return _dialect_insert(conn.dialect.name)


def _dialect_insert(name: str):
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    # config.parse_database_url admits only these two; anything else is a bug.
    raise RuntimeError(f"switchd supports SQLite and PostgreSQL, not the {name} database")


@dataclass(frozen=True)
class _Statements:
    insert_active: Any
    delete_active: Any
    insert_cdr: Any
    cdr_id: Any


@functools.cache
def _statements(dialect: str) -> _Statements:
    """The per-call statements, built once per dialect: a statement object
    memoises its cache key, so each call skips SQLAlchemy's construction."""
    insert = _dialect_insert(dialect)
    return _Statements(
        insert_active=insert(active_calls).on_conflict_do_nothing(index_elements=["call_id"]),
        delete_active=delete(active_calls).where(active_calls.c.call_id == bindparam("call_id")),
        insert_cdr=insert(cdrs).on_conflict_do_nothing(index_elements=["call_id"]).returning(cdrs.c.id),
        cdr_id=select(cdrs.c.id).where(cdrs.c.call_id == bindparam("call_id")),
    )


def _fit(column: Column, value: Any) -> Any:
    """Cut a string to its column's width: a CDR is never lost to a long name."""
    length = getattr(column.type, "length", None)
    if isinstance(value, str) and length is not None:
        return value[:length]
    return value


def _row(table: Table, **values: Any) -> dict[str, Any]:
    return {name: _fit(table.c[name], value) for name, value in values.items()}


def _seconds(start: datetime.datetime, end: datetime.datetime) -> float:
    return max((end - start).total_seconds(), 0.0)


def stored_call_id(call_id: str) -> str:
    """The call id as stored: an id too long for the column keeps its start
    and ends with the SHA-256 of the whole, so distinct calls stay distinct."""
    if len(call_id) <= _CALL_ID_LIMIT:
        return call_id
    digest = hashlib.sha256(call_id.encode("utf-8")).hexdigest()
    return f"{call_id[: _CALL_ID_LIMIT - len(digest) - 1]}~{digest}"


def call_reference(call_id: str) -> str:
    """The ledger reference of a call's charge: ``call:<call_id>``.

    When that is too long for the column, the call id is replaced by its
    SHA-256 (``call:sha256:<hex>``), so the reference stays unique and fits.
    """
    reference = f"call:{call_id}"
    if len(reference) <= _REFERENCE_LIMIT:
        return reference
    return "call:sha256:" + hashlib.sha256(call_id.encode("utf-8")).hexdigest()


def record_answer(conn: Connection, record: CallRecord, now: datetime.datetime) -> None:
    """Note an answered call in ``active_calls``; a second call changes nothing."""
    if record.answer_time is None:
        raise ValueError(f"call {record.call_id} is not answered")
    rate = record.rate
    values = _row(
        active_calls,
        call_id=stored_call_id(record.call_id),
        node=record.node,
        account_id=record.account_id,
        service_id=record.service_id,
        trunk_id=record.trunk_id,
        direction=record.direction,
        caller=record.caller,
        callee=record.callee,
        start_time=record.start_time,
        answer_time=record.answer_time,
        rate=None if rate is None else rate.price_per_minute,
        connection_fee=Decimal(0) if rate is None else rate.connection_fee,
        increment_first=60 if rate is None else rate.increment_first,
        increment_next=60 if rate is None else rate.increment_next,
        currency=record.currency or (None if rate is None else rate.currency),
        created_at=now,
    )
    conn.execute(_statements(conn.dialect.name).insert_active, values)


def finish_call(conn: Connection, record: CallRecord, now: datetime.datetime | None = None) -> int:
    """Write the call's CDR and book its charge; returns the CDR's id.

    In the caller's transaction: the CDR, the ledger movement (reference
    ``call:<call_id>``, only when the charge is above zero) and the removal
    of the ``active_calls`` row commit together or not at all. If the call
    already has a CDR, its id is returned and nothing is booked. The charge
    is booked whatever the balance: the call happened. ``now`` is when the
    record is written (``created_at``); it defaults to the end of the call.
    """
    if record.end_time is None:
        raise ValueError(f"call {record.call_id} has not ended")
    end = record.end_time
    rate = record.rate
    answer = record.answer_time
    if answer is not None:
        ring = _seconds(record.start_time, answer)
        talk = _seconds(answer, end)
    else:
        ring = _seconds(record.start_time, end)
        talk = 0.0
    if rate is None:
        billed = math.ceil(talk)
        amount = to_money(0)
    else:
        billed = rating.billable_seconds(talk, rate)
        amount = rating.charge(rate, talk)
    currency = record.currency or (None if rate is None else rate.currency)
    call_id = stored_call_id(record.call_id)
    values = _row(
        cdrs,
        call_id=call_id,
        account_id=record.account_id,
        service_id=record.service_id,
        trunk_id=record.trunk_id,
        direction=record.direction,
        caller=record.caller,
        callee=record.callee,
        start_time=record.start_time,
        answer_time=record.answer_time,
        end_time=end,
        ring_seconds=math.ceil(ring),
        billable_seconds=billed,
        hangup_side=record.hangup_side,
        sip_code=record.sip_code,
        reason=record.reason,
        rate=None if rate is None else rate.price_per_minute,
        charge=amount,
        currency=currency,
        recording=record.recording,
        node=record.node,
        created_at=now or end,
    )
    statements = _statements(conn.dialect.name)
    conn.execute(statements.delete_active, {"call_id": call_id})
    cdr_id = conn.execute(statements.insert_cdr, values).scalar()
    if cdr_id is None:  # written before: by a retry, or by another node
        return conn.execute(statements.cdr_id, {"call_id": call_id}).scalar_one()
    if amount > 0:
        ledger.book(
            conn,
            record.account_id,
            "charge",
            amount,
            end,
            reference=call_reference(call_id),
            description=_fit(ledger_table.c.description, f"call to {record.callee or '?'}, {billed} s billed"),
        )
    return cdr_id


def record_answers(conn: Connection, items: list[tuple[CallRecord, datetime.datetime]]) -> list[None]:
    """``record_answer`` for many calls in one transaction (a group commit's operation)."""
    for record, now in items:
        record_answer(conn, record, now)
    return [None] * len(items)


def finish_calls(conn: Connection, records: list[CallRecord]) -> list[int]:
    """``finish_call`` for many calls in one transaction (a group commit's operation)."""
    return [finish_call(conn, record) for record in records]


def heartbeat(conn: Connection, node: str, now: datetime.datetime) -> None:
    """Record that ``node`` is alive at ``now`` (``started_at`` on first insert)."""
    conn.execute(
        _insert(conn)(nodes)
        .values(name=node, heartbeat_at=now, started_at=now)
        .on_conflict_do_update(index_elements=["name"], set_={"heartbeat_at": now})
    )


def reconcile(conn: Connection, node: str, now: datetime.datetime) -> int:
    """Write CDRs for the calls ``node`` left in ``active_calls``; returns how many.

    For a node that is starting, before it takes calls (see ``start_node``):
    each leftover call is taken to have ended at the node's last heartbeat,
    or at its answer if that came later (or there was no heartbeat), hung up
    by the switch for "node restart". Running it again finds nothing to do.
    """
    last_beat = conn.execute(select(nodes.c.heartbeat_at).where(nodes.c.name == node)).scalar()
    rows = conn.execute(
        select(active_calls).where(active_calls.c.node == node).order_by(active_calls.c.answer_time)
    ).all()
    for row in rows:
        rate = None
        if row.rate is not None:
            rate = Rate(
                tariff_plan_id=None,
                prefix=None,
                price_per_minute=row.rate,
                connection_fee=row.connection_fee,
                increment_first=row.increment_first,
                increment_next=row.increment_next,
                currency=row.currency or "",
            )
        end = row.answer_time if last_beat is None else max(last_beat, row.answer_time)
        record = CallRecord(
            call_id=row.call_id,
            account_id=row.account_id,
            node=node,
            start_time=row.start_time,
            service_id=row.service_id,
            trunk_id=row.trunk_id,
            direction=row.direction,
            caller=row.caller,
            callee=row.callee,
            answer_time=row.answer_time,
            end_time=end,
            hangup_side="switch",
            reason="node restart",
            rate=rate,
            currency=row.currency,
        )
        finish_call(conn, record, now)
    return len(rows)


def start_node(conn: Connection, node: str, now: datetime.datetime) -> int:
    """At startup, before any call: reconcile the last run's calls, then beat.

    Both in the caller's transaction; ``started_at`` becomes ``now``.
    Returns how many calls were reconciled.
    """
    count = reconcile(conn, node, now)
    conn.execute(
        _insert(conn)(nodes)
        .values(name=node, heartbeat_at=now, started_at=now)
        .on_conflict_do_update(index_elements=["name"], set_={"heartbeat_at": now, "started_at": now})
    )
    return count
