"""Work done on a timer: periodic service fees and the node's heartbeat.

A service with a ``periodic_fee`` and a ``fee_period`` (day, week, month,
year; UTC calendar periods) is charged the whole fee once per period, as a
``writeoff`` with the reference ``service:<id>:<period>``. The ledger books
a reference at most once per account, so ``charge_periodic_fees`` can run
as often as wanted, after restarts and on several nodes at once: each
period is charged once. ``PeriodicFees`` runs it at start and then every
``interval`` seconds; ``NodeHeartbeat`` records every ``interval`` seconds
that the node is alive, which bounds how much of a call a crash can leave
unbilled (see ``cdr.reconcile``).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from sqlalchemy import String, case, cast, exists, literal, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..store.db import Database
from ..store.models import accounts, ledger, services
from . import cdr
from .ledger import book

#: The fee periods that charge something ("none" does not).
PERIODS = ("day", "week", "month", "year")

UTC = datetime.timezone.utc

_ADJECTIVE = {"day": "daily", "week": "weekly", "month": "monthly", "year": "yearly"}


def period_key(fee_period: str, now: datetime.datetime) -> tuple[str, datetime.datetime]:
    """The period containing ``now`` (UTC): its key and its first instant.

    day: ``2026-11-21``; week (ISO 8601, from Monday): ``2026-W47``;
    month: ``2026-11``; year: ``2026``.
    """
    now = now.astimezone(UTC)
    day = datetime.datetime(now.year, now.month, now.day, tzinfo=UTC)
    if fee_period == "day":
        return day.strftime("%Y-%m-%d"), day
    if fee_period == "week":
        year, week, weekday = now.isocalendar()
        return f"{year}-W{week:02d}", day - datetime.timedelta(days=weekday - 1)
    if fee_period == "month":
        return f"{now.year:04d}-{now.month:02d}", day.replace(day=1)
    if fee_period == "year":
        return f"{now.year:04d}", day.replace(month=1, day=1)
    raise ValueError(f"no periodic fee for the period {fee_period!r}")


def fee_reference(service_id: int, key: str) -> str:
    """The ledger reference of a service's fee for one period."""
    return f"service:{service_id}:{key}"


def charge_periodic_fees(conn: Connection, now: datetime.datetime) -> int:
    """Book every fee due for the periods containing ``now``; returns how many.

    Due: an active service with a fee above zero and a period other than
    "none", on an active account, whose ``service:<id>:<period>`` writeoff
    is not on the ledger yet. The whole fee is booked whatever the balance
    and however late in the period the service started. A fee booked
    meanwhile by another node is skipped, not an error.
    """
    keys = {period: period_key(period, now)[0] for period in PERIODS}
    reference = (
        literal("service:")
        + cast(services.c.id, String)
        + literal(":")
        + case(keys, value=services.c.fee_period)
    ).label("reference")
    due = conn.execute(
        select(services.c.id, services.c.account_id, services.c.periodic_fee, services.c.fee_period, reference)
        .join(accounts, accounts.c.id == services.c.account_id)
        .where(
            services.c.status == "active",
            accounts.c.status == "active",
            services.c.periodic_fee > 0,
            services.c.fee_period.in_(PERIODS),
            ~exists().where(
                ledger.c.account_id == services.c.account_id,
                ledger.c.kind == "writeoff",
                ledger.c.reference == reference,
            ),
        )
        .order_by(services.c.id)
    ).all()
    booked = 0
    for row in due:
        key = keys[row.fee_period]
        expected = fee_reference(row.id, key)
        try:
            with conn.begin_nested():
                movement = book(
                    conn,
                    row.account_id,
                    "writeoff",
                    row.periodic_fee,
                    now,
                    reference=expected,
                    description=f"{_ADJECTIVE[row.fee_period]} fee of service {row.id} for {key}",
                )
        except IntegrityError:
            # Another node booked it after our query: fine, if it is that.
            if not _booked(conn, row.account_id, expected):
                raise
            continue
        if not movement.replayed:
            booked += 1
    return booked


def _booked(conn: Connection, account_id: int, reference: str) -> bool:
    return (
        conn.execute(
            select(ledger.c.id).where(
                ledger.c.account_id == account_id,
                ledger.c.kind == "writeoff",
                ledger.c.reference == reference,
            )
        ).first()
        is not None
    )


class _Every(Service):
    """Runs ``work(conn, now)`` in the database every ``interval`` seconds.

    The first run is at start; a run is never started while the previous
    one is still going, and a failed run is logged and retried next time.
    """

    log = Logger()

    def __init__(
        self,
        db: Database,
        clock: IReactorTime,
        interval: float,
        work: Callable[[Connection, datetime.datetime], Any],
        what: str,
    ) -> None:
        if interval <= 0:
            raise ValueError("the interval must be positive")
        self.db = db
        self.clock = clock
        self.interval = interval
        self._work = work
        self._what = what
        self._loop: LoopingCall | None = None
        self._pending: Deferred | None = None

    def done(self, result: Any) -> None:
        """Called on the reactor thread with what the work returned."""

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), UTC)

    def _tick(self) -> Deferred:
        d = self.db.run(self._work, self.now())
        d.addCallbacks(self.done, self._failed)
        self._pending = d

        def settled(_: Any) -> None:
            self._pending = None

        d.addBoth(settled)
        return d

    def _failed(self, failure: Failure) -> None:
        self.log.failure(
            "{what} failed; trying again in {interval} s", failure, what=self._what, interval=self.interval
        )

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return self._pending  # let a run in progress finish


class PeriodicFees(_Every):
    """Charges the periodic fees that are due, at start and every ``interval`` s."""

    def __init__(self, db: Database, clock: IReactorTime, interval: float = 300.0) -> None:
        super().__init__(db, clock, interval, charge_periodic_fees, "charging the periodic fees")

    def done(self, booked: int) -> None:
        if booked:
            self.log.info("booked {count} periodic fees", count=booked)


class NodeHeartbeat(_Every):
    """Records every ``interval`` seconds that this node is alive.

    After a crash, the node's calls are billed up to its last heartbeat, so
    the interval bounds the unbilled time per call. ``cdr.start_node`` must
    have run (before any call) for the node's previous life to be reconciled.
    """

    def __init__(self, db: Database, clock: IReactorTime, node: str, interval: float = 10.0) -> None:
        super().__init__(db, clock, interval, self._beat, f"the heartbeat of node {node}")
        self.node = node

    def _beat(self, conn: Connection, now: datetime.datetime) -> None:
        cdr.heartbeat(conn, self.node, now)
