"""Durable status callbacks on both backends: which callbacks a restart finds
due and not done (this node's HTTP messages, the switch on, the right state,
the bit not set, changed within the age limit and not too recently; every
MO for an HTTP connection), the ``callbacks_sent`` bits a batch writes, the
partial index, and a restart of the callbacks service over messages stored
by the engine."""

from __future__ import annotations

import datetime
import json

import pytest
from sqlalchemy import select, text, update
from twisted.internet.defer import Deferred, succeed

from switchd.api.webhooks import DueCallback, StatusCallbacks, due_callbacks, record_sent
from switchd.sms.engine import MessageReceived, MessageStateChanged
from switchd.store import models as m

from .test_sms_engine import NOW, World

URL = "https://crm.example/cb"
HOUR = datetime.timedelta(hours=1)


@pytest.fixture
def world(database):
    world = World(database)
    connect(world, url=URL, start_callback=True, end_callback=True)
    return world


def connect(world: World, **values) -> None:
    world.db.run_blocking(lambda conn: conn.execute(
        update(m.http_connections).where(m.http_connections.c.id == world.http_connection).values(**values)))


def message(world: World, name: str, *, status="DELIVERED", sent=0, node="node-1", direction="mt",
            kind="http", age=HOUR, **values) -> int:
    when = NOW - age
    return world.insert(
        m.sms_messages, message_id=name, account_id=world.account, service_id=world.service, direction=direction,
        origin_kind=kind, connection_id=world.http_connection if kind == "http" else world.smpp_connection,
        node=node, source="ACME", destination="447700900001", body=f"text of {name}", status=status,
        callbacks_sent=sent, created_at=when - HOUR, updated_at=when, **values)


def due(world: World, after=0, limit=100) -> list[DueCallback]:
    return world.db.run_blocking(due_callbacks, "node-1", after, NOW - datetime.timedelta(days=1),
                                 NOW - datetime.timedelta(minutes=1), limit)


def found(world: World, **kw) -> list[tuple[str, str]]:
    return [(d.event.message_id, d.kind) for d in due(world, **kw)]


def test_what_is_due_and_not_done(world):
    message(world, "start", status="ENROUTE")
    message(world, "started", status="ENROUTE", sent=1)
    message(world, "end", sent=1)
    message(world, "ended", sent=3)
    message(world, "elsewhere", node="node-2")
    message(world, "mo", direction="mo", node=None, status="ACCEPTED")
    message(world, "mo-done", direction="mo", node=None, status="ACCEPTED", sent=4)
    message(world, "smpp", kind="smpp")
    message(world, "too-old", age=datetime.timedelta(days=2))
    message(world, "too-recent", age=datetime.timedelta(seconds=10))
    failed = message(world, "failed", status="UNDELIVERABLE", error_code=34, parts=2, client_reference="r-1",
                     done_at=NOW - HOUR)
    assert found(world) == [("start", "start"), ("end", "end"), ("mo", "mo"), ("failed", "end")]
    # Paged by id.
    [first] = due(world, limit=1)
    assert found(world, after=first.pk, limit=2) == [("end", "end"), ("mo", "mo")]
    # Rebuilt as the bus brought them.
    items = {d.event.message_id: d for d in due(world)}
    assert items["failed"].pk == failed
    assert items["failed"].event == MessageStateChanged(
        at=(NOW - HOUR).timestamp(), message_id="failed", account_id=world.account, service_id=world.service,
        origin_kind="http", connection_id=world.http_connection, state="UNDELIVERABLE", parts=2, error_code=34,
        source="ACME", destination="447700900001", client_reference="r-1")
    assert items["mo"].event == MessageReceived(
        at=(NOW - 2 * HOUR).timestamp(), message_id="mo", account_id=world.account, service_id=world.service,
        origin_kind="http", connection_id=world.http_connection, source="ACME", destination="447700900001",
        content=b"", data_coding=0, esm_class=0, text="text of mo")
    # The switches and the URL of the connection count.
    connect(world, start_callback=False, end_callback=False)
    assert found(world) == [("mo", "mo")]
    connect(world, url=None)
    assert found(world) == []


def test_bits_are_added_in_one_statement(world):
    message(world, "a", status="ENROUTE")
    message(world, "b", sent=1)
    message(world, "c", direction="mo", node=None, status="ACCEPTED")
    world.db.run_blocking(record_sent, [("a", 1), ("b", 2), ("c", 4), ("unknown", 2)])
    world.db.run_blocking(record_sent, [("a", 1)])  # again: no change
    rows = world.rows(m.sms_messages)
    assert [(r.message_id, r.callbacks_sent) for r in rows] == [("a", 1), ("b", 3), ("c", 4)]
    assert found(world) == []
    world.db.run_blocking(record_sent, [])


def test_new_messages_start_with_no_bits_and_the_index_is_partial(world, engine):
    world.topup("1")
    accepted = world.submit("hello", kind="http")
    [row] = world.rows(m.sms_messages)
    assert row.message_id == accepted.message_id and row.callbacks_sent == 0
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            sql = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'ix_sms_messages_callbacks_waiting'"))
        else:
            sql = conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = "
                                    "'ix_sms_messages_callbacks_waiting'"))
        definition = sql.scalar_one()
    assert "WHERE" in definition.upper() and "callbacks_sent < 2" in definition


class Response:
    code = 200

    def content(self) -> Deferred:
        return succeed(b"")


class Http:
    def __init__(self) -> None:
        self.requests: list[dict] = []

    def request(self, method, url, **kwargs) -> Deferred:
        self.requests.append({"method": method, "url": url, **kwargs})
        return succeed(Response())


def callbacks(world: World, http: Http) -> StatusCallbacks:
    service = StatusCallbacks(world.db, world.clock, world.bus, http, node="node-1")
    service.startService()
    return service


def test_a_restart_sends_what_was_not_recorded(world):
    connect(world, callback_version="V2")
    world.topup("1")
    http = Http()
    first = callbacks(world, http)
    accepted = world.submit("hello", kind="http")
    [start] = http.requests
    assert json.loads(start["data"])["type"] == "start"
    world.clock.advance(1)  # the batch is written
    [row] = world.rows(m.sms_messages)
    assert row.callbacks_sent == 1
    # The receipt comes, and the process dies before its end callback.
    first.stopService()
    world.db.run_blocking(lambda conn: conn.execute(
        update(m.sms_messages).values(status="DELIVERED", done_at=NOW, updated_at=NOW)))
    world.clock.advance(5)
    http.requests.clear()
    second = callbacks(world, http)
    [end] = http.requests
    body = json.loads(end["data"])
    assert (body["type"], body["message_id"], body["state"]) == ("end", accepted.message_id, "DELIVERED")
    world.clock.advance(1)
    assert world.db.run_blocking(lambda conn: conn.execute(
        select(m.sms_messages.c.callbacks_sent)).scalar_one()) == 3
    world.clock.advance(60)  # the next pass: nothing left
    assert len(http.requests) == 1
    second.stopService()
