"""Storage on both backends: migrations match the models, money is exact,
time is UTC, the ledger explains every balance, work runs off the reactor."""

from __future__ import annotations

import datetime
import threading
from decimal import Decimal

import pytest
import pytest_twisted
from twisted.internet.task import deferLater
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, insert, select

from switchd.billing.ledger import LedgerError, book
from switchd.store import migrate
from switchd.store import models as m
from switchd.store.db import Database

NOW = datetime.datetime(2026, 11, 21, 12, 0, tzinfo=datetime.timezone.utc)


def test_migrations_create_exactly_the_models(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), m.metadata)
    assert diff == []
    assert migrate.current_revision(engine) == migrate.head_revision()


def test_upgrade_is_idempotent(engine):
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()


def _account(conn) -> int:
    customer = conn.execute(
        insert(m.customers).values(name="c", status="active", created_at=NOW, updated_at=NOW).returning(m.customers.c.id)
    ).scalar_one()
    return conn.execute(
        insert(m.accounts)
        .values(customer_id=customer, currency="EUR", balance=0, credit_limit=0, billing_type="prepaid",
                status="active", created_at=NOW, updated_at=NOW)
        .returning(m.accounts.c.id)
    ).scalar_one()


def test_money_is_exact_and_time_is_utc(database):
    def work(conn):
        account = _account(conn)
        for _ in range(1000):
            book(conn, account, "charge", Decimal("0.000001"), NOW)
        book(conn, account, "topup", Decimal("123456789012.5"), NOW)
        return account

    account = database.run_blocking(work)
    row = database.run_blocking(lambda c: c.execute(select(m.accounts).where(m.accounts.c.id == account)).one())
    assert row.balance == Decimal("123456789012.499000")
    assert row.updated_at == NOW and row.updated_at.tzinfo is not None
    total = database.run_blocking(
        lambda c: c.execute(select(func.sum(m.ledger.c.amount)).where(m.ledger.c.account_id == account)).scalar()
    )
    assert Decimal(total) == row.balance or Decimal(total) / 10**6 == row.balance
    with pytest.raises(LedgerError, match="supported range"):
        database.run_blocking(lambda c: book(c, account, "topup", Decimal("900000000000"), NOW))


def test_ledger_books_a_reference_once_and_explains_the_balance(database):
    def work(conn):
        account = _account(conn)
        first = book(conn, account, "charge", Decimal("1.5"), NOW, reference="call-1")
        again = book(conn, account, "charge", Decimal("1.5"), NOW, reference="call-1")
        refund = book(conn, account, "refund", Decimal("1.5"), NOW, reference="call-1")
        return account, first, again, refund

    account, first, again, refund = database.run_blocking(work)
    assert first.amount == Decimal("-1.5") and not first.replayed
    assert again.replayed and again.id == first.id
    assert refund.balance_after == Decimal("0")
    with pytest.raises(LedgerError):
        database.run_blocking(lambda c: book(c, account, "topup", Decimal("0"), NOW))
    with pytest.raises(LedgerError):
        database.run_blocking(lambda c: book(c, 999999, "topup", Decimal("1"), NOW))


@pytest_twisted.ensureDeferred
async def test_work_runs_in_the_pool_not_on_the_reactor(engine):
    from twisted.internet import reactor

    db = Database(engine, reactor, threads=2)
    db.startService()
    try:
        main = threading.get_ident()
        seen = await db.run(lambda conn: threading.get_ident())
        assert seen != main
        with pytest.raises(ZeroDivisionError):
            await db.run(lambda conn: 1 / 0)
        # A failed transaction rolled back; the pool still works.
        assert await db.run(lambda conn: conn.execute(select(func.count()).select_from(m.customers)).scalar()) == 0
    finally:
        await db.stopService()


@pytest_twisted.ensureDeferred
async def test_reads_do_not_wait_behind_a_write(engine):
    """``read`` sees the last commit while a write transaction is still running."""
    from twisted.internet import reactor

    db = Database(engine, reactor, threads=2)
    db.startService()
    inside, release = threading.Event(), threading.Event()

    def slow_write(conn):
        conn.execute(insert(m.customers).values(name="late", status="active", created_at=NOW, updated_at=NOW))
        inside.set()
        assert release.wait(10)

    def count(conn):
        return conn.execute(select(func.count()).select_from(m.customers)).scalar()

    try:
        await db.run(lambda conn: conn.execute(
            insert(m.customers).values(name="first", status="active", created_at=NOW, updated_at=NOW)))
        writing = db.run(slow_write)
        while not inside.is_set():
            await deferLater(reactor, 0.005, lambda: None)
        # The writer holds its transaction: the read gets the committed state now.
        assert await db.read(count) == 1
        release.set()
        await writing
        assert await db.read(count) == 2
        if db.dialect == "sqlite":
            with pytest.raises(Exception, match="readonly|read-only|attempt to write"):
                await db.read(lambda conn: conn.execute(
                    insert(m.customers).values(name="x", status="active", created_at=NOW, updated_at=NOW)))
    finally:
        release.set()
        await db.stopService()
