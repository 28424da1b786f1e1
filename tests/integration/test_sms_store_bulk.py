"""The SMS store's bulk writes on both backends (values converted as
SQLAlchemy would, conditions honoured, NULLs, JSON, octets, money), and on
PostgreSQL the charge's account lock, which must not wait for transactions
that only finished messages of the account (they hold the foreign key's KEY
SHARE lock): two such transactions charging the same account deadlocked."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from sqlalchemy import select, text
from sqlalchemy.dialects import sqlite

from switchd.sms import store
from switchd.store import migrate
from switchd.store import models as m
from switchd.store.db import Database, make_engine, run_synchronously
from switchd.store.types import UTCDateTime

from .test_sms_engine import NOW, World, run

#: Characters COPY's text format escapes, and some it does not.
SPECIAL = "a\tb\\N\nc\r\\d 'é' \"q\""


@pytest.fixture
def world(database):
    return World(database)


@pytest.fixture
def pg_world(pg_schema_url):
    """A World on PostgreSQL alone (SQLite has one writer: its transactions never overlap)."""
    engine = make_engine(pg_schema_url, pool_size=3)
    migrate.upgrade(engine)
    yield World(Database(engine, runner=run_synchronously))
    engine.dispose()


def test_sqlite_timestamps_are_written_as_sqlalchemy_writes_them():
    dialect = sqlite.dialect()
    process = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    for value in (
        datetime.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=datetime.UTC),
        datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        datetime.datetime(999, 1, 1, tzinfo=datetime.UTC),
    ):
        assert store.sqlite_timestamp(value) == process(value)
    assert store.sqlite_timestamp(None) is None
    with pytest.raises(ValueError):
        store.sqlite_timestamp(datetime.datetime(2026, 1, 1))


def test_bulk_insert_and_update_read_back_as_written(world):
    later = NOW + datetime.timedelta(seconds=1, microseconds=250)
    rows = [
        {"connection_id": world.smpp_connection, "kind": "receipt", "sms_message_id": None, "source": f"s{n}",
         "destination": SPECIAL, "content": bytes([n, 0, 255, 92, 9, 10]), "data_coding": n, "esm_class": 4,
         "tlvs": {"receipted_message_id": f"id{n}", "n": n, "text": SPECIAL}, "state": "pending", "attempts": 0,
         "done_at": None, "created_at": NOW if n % 2 else later}
        for n in range(3)
    ]
    world.db.run_blocking(lambda conn: store.bulk_insert(conn, m.sms_outbox, rows))
    stored = world.rows(m.sms_outbox)
    assert [(r.source, r.destination, bytes(r.content), r.data_coding, r.tlvs, r.created_at, r.done_at)
            for r in stored] == [
        (f"s{n}", SPECIAL, bytes([n, 0, 255, 92, 9, 10]), n, {"receipted_message_id": f"id{n}", "n": n, "text": SPECIAL},
         NOW if n % 2 else later, None)
        for n in range(3)]
    ids = [r.id for r in stored]
    # Only rows meeting the condition change; constants go with the values.
    world.db.run_blocking(lambda conn: conn.execute(
        m.sms_outbox.update().where(m.sms_outbox.c.id == ids[1]).values(state="done")))
    world.db.run_blocking(lambda conn: store.bulk_update(
        conn, m.sms_outbox, ("done_at", "attempts"), [(ids[0], later, 3), (ids[1], later, 4), (ids[2], None, 5)],
        constants="state = 'done'", where="state = 'pending'"))
    stored = world.rows(m.sms_outbox)
    assert [(r.state, r.done_at, r.attempts) for r in stored] == [
        ("done", later, 3), ("done", None, 0), ("done", None, 5)]


def test_copy_fields():
    assert [store.copy_field(v) for v in (None, "a\tb\\c\nd", True, False, 7, Decimal("0.001000"))] == [
        "\\N", "a\\tb\\\\c\\nd", "t", "f", "7", "0.001000"]
    assert store.copy_field(b"\x00\xff") == "\\\\x00ff"
    assert store.copy_field(NOW) == "2027-01-15T08:00:00+00:00"
    with pytest.raises(ValueError):
        store.copy_field(datetime.datetime(2026, 1, 1))
    with pytest.raises(TypeError):
        store.copy_field(1.5)


def test_bulk_writes_of_many_rows_and_amounts(world):
    world.topup("1000")
    rows = [{"account_id": world.account, "kind": "charge", "amount": Decimal("-0.000001") * (n + 1),
             "balance_after": Decimal("999.5"), "reference": f"bulk:{n}", "description": "x", "created_at": NOW}
            for n in range(1203)]  # more than one PostgreSQL statement's worth
    world.db.run_blocking(lambda conn: store.bulk_insert(conn, m.ledger, rows))
    booked = world.rows(m.ledger, m.ledger.c.reference.like("bulk:%"))
    assert len(booked) == 1203 and booked[-1].amount == Decimal("-0.001203")
    assert sum(r.amount for r in booked) == sum(row["amount"] for row in rows)


def test_charging_does_not_wait_for_transactions_that_finished_messages_of_the_account(pg_world):
    world = pg_world
    world.topup("10")
    first, second = world.submit("a"), world.submit("b")
    parts = world.parts_enqueued()
    engine = world.db.engine

    def finish(conn, part, upstream_id):
        # The SMSC's id and its receipt in one transaction: the message row
        # changed twice, so the foreign key to the account is checked (KEY SHARE).
        store.mark_sent(conn, [store.SentPart(part.part_id, part.message_pk, upstream_id, NOW)])
        store.finish_parts(conn, [store.PartResult(part.part_id, "DELIVERED")], NOW)

    one, two = engine.connect(), engine.connect()
    try:
        with one.begin(), two.begin():
            finish(one, parts[0], "A1")
            finish(two, parts[1], "A2")
            one.execute(text("SET LOCAL lock_timeout = '3s'"))
            item = store.NewMessage(
                message_id="bulk-lock", origin_kind="smpp", service_id=world.service, account_id=world.account,
                connection_id=world.smpp_connection, client_reference=None, source="ACME",
                destination="447700900001", body="c", data_coding=0, esm_class=0, registered_delivery=0,
                link_id=world.link, parts=(store.NewPart(1, 1, b"c", False, 0, 0, 0),), submitted_at=NOW)
            [stored] = store.store_messages(one, [item], "node-1")  # would wait for two's KEY SHARE
            assert isinstance(stored, store.StoredMessage)
    finally:
        one.close()
        two.close()
    states = {r.message_id: r.status for r in world.rows(m.sms_messages)}
    assert states == {first.message_id: "DELIVERED", second.message_id: "DELIVERED", "bulk-lock": "ENROUTE"}
    assert world.db.run_blocking(lambda conn: conn.execute(
        select(m.sms_messages.c.id).where(m.sms_messages.c.message_id == "bulk-lock")).scalar_one())
    assert run(world.engine.query(world.origin(), "bulk-lock")) is not None
