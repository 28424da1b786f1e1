"""switchd's upstream SMPP client against an independent SMSC over real TCP.

The SMSC is ``smsc.pl`` next to this file, built on Net::SMPP (Debian
``libnet-smpp-perl``): it binds anyone, answers submits with hex ids and
sends receipts naming them in decimal. Messages go through the whole engine
(routing, storage, charging, the link) on SQLite, with a real thread pool.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest
import pytest_twisted
from sqlalchemy import insert, select
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import deferLater

from switchd.billing.ledger import book
from switchd.core.events import EventBus
from switchd.core.ratelimit import RateLimiter
from switchd.core.router import Router
from switchd.smpp.client import SmppLinkManager
from switchd.sms.engine import MessageEngine, MessageOrigin, Submission
from switchd.store import migrate
from switchd.store import models as m
from switchd.store.db import Database, make_engine

SMSC = Path(__file__).parent / "smsc.pl"
NOW = datetime.datetime.now(datetime.UTC)
STAMPS = {"created_at": NOW, "updated_at": NOW}


class Smsc:
    """The Perl SMSC as a child process (its own process group: connections are forked)."""

    def __init__(self, log: Path, port: int = 0, **env: str) -> None:
        self.log = log
        self.env = {**os.environ, **env}
        self.port = port
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["perl", str(SMSC), str(self.port), str(self.log)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=self.env, start_new_session=True, text=True,
        )
        line = self.process.stdout.readline()
        assert line.startswith("PORT "), f"the SMSC did not start: {line!r}"
        self.port = int(line.split()[1])

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the listener and its forked connections
            self.process.wait()
        self.process = None

    def lines(self, kind: str) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [line.split() for line in self.log.read_text().splitlines() if line.startswith(kind + " ")]

    def submitted_texts(self) -> list[bytes]:
        return [bytes.fromhex(fields[5]) if len(fields) > 5 else b"" for fields in self.lines("SUBMIT")]


class Node:
    """One switchd node's SMS side: database, router, engine, link manager."""

    def __init__(self, tmp_path: Path, smsc: Smsc, reactor, numbers: tuple[str, ...] = (), **link) -> None:
        self.reactor = reactor
        engine = make_engine(f"sqlite:///{tmp_path / 'switchd.sqlite3'}")
        migrate.upgrade(engine)
        self.db = Database(engine, reactor, threads=1)
        self.db.startService()
        customer = self.insert(m.customers, name="ACME", status="active")
        self.account = self.insert(m.accounts, customer_id=customer, currency="EUR", balance=0, credit_limit=0,
                                   billing_type="prepaid", status="active")
        self.db.run_blocking(lambda conn: book(conn, self.account, "topup", Decimal(100), NOW))
        plan = self.insert(m.tariff_plans, name="sms", currency="EUR")
        self.insert(m.rates, tariff_plan_id=plan, prefix="44", price_per_message=Decimal("0.01"))
        group = self.insert(m.routing_groups, name="world")
        self.service = self.insert(m.services, account_id=self.account, type="api", tariff_plan_id=plan,
                                   routing_group_id=group, status="active")
        self.connection = self.insert(m.smpp_connections, service_id=self.service, login="acme",
                                      password_salt="s", password_hash="h", system_type="0")
        self.link = self.insert(m.smpp_links, name="perl-smsc", host="127.0.0.1", port=smsc.port,
                                system_id="switchd", password="secret", **link)
        self.insert(m.routing_group_members, routing_group_id=group, smpp_link_id=self.link)
        for number in numbers:
            self.insert(m.numbers, number=number, service_id=self.service)
        self.bus = EventBus()
        limiter = RateLimiter(reactor)
        self.router = Router(self.db, reactor, limiter, trunks=None, cache_seconds=0.5)
        self.engine = MessageEngine(self.db, reactor, self.bus, limiter, self.router, node="interop",
                                    outbox_poll_seconds=0.5)
        self.links = SmppLinkManager(self.db, reactor, self.engine, limiter, self.bus, reactor=reactor,
                                     reload_seconds=0.5)
        self.engine.use_links(self.links)
        self.router.set_links(self.links)
        self.engine.startService()
        self.links.startService()
        self.receipts: list = []
        self.detach = self.engine.attach(self.connection, self.push)

    def push(self, delivery):
        self.receipts.append(delivery)
        return succeed(None)

    def insert(self, table, **values):
        if "created_at" in table.c:
            values = {**STAMPS, **values} if "updated_at" in table.c else {"created_at": NOW, **values}
        return self.db.run_blocking(
            lambda conn: conn.execute(insert(table).values(**values).returning(table.c.id)).scalar_one()
        )

    @property
    def origin(self) -> MessageOrigin:
        return MessageOrigin("smpp", self.service, self.account, self.connection)

    async def submit(self, text: str, **fields):
        submission = Submission(source="ACME", destination="447700900001", content=text.encode("ascii"),
                                data_coding=0, registered_delivery=1, **fields)
        return await self.engine.submit(self.origin, submission)

    async def states(self) -> list[str]:
        return await self.db.run(lambda conn: list(conn.execute(select(m.sms_messages.c.status)).scalars()))

    async def until(self, predicate, timeout: float = 30.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or predicate}")
            await deferLater(self.reactor, 0.05, lambda: None)

    async def all_delivered(self, count: int) -> bool:
        states = await self.states()
        return len(states) == count and all(state == "DELIVERED" for state in states)

    async def stop(self) -> None:
        self.detach()
        await self.links.stopService()
        await self.engine.stopService()  # fires once the last writes are committed
        await self.db.stopService()


@pytest.fixture
def reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def smsc(tmp_path):
    server = Smsc(tmp_path / "smsc.log")
    yield server
    server.kill()


@pytest_twisted.ensureDeferred
async def test_messages_receipts_and_long_messages_end_to_end(tmp_path, smsc, reactor):
    node = Node(tmp_path, smsc, reactor, split_mode="ultra_long")
    try:
        await node.until(lambda: node.links.is_bound(node.link), what="the bind")
        accepted = [await node.submit(f"message {n:03d}") for n in range(50)]
        long = await node.submit("L" * 300)
        assert long.parts == 3 and all(a.parts == 1 for a in accepted)
        await node.until(lambda: node.all_delivered(51), what="every receipt")
        texts = smsc.submitted_texts()
        assert sorted(t for t in texts if t.startswith(b"message")) == [f"message {n:03d}".encode() for n in range(50)]
        long_parts = [bytes.fromhex(fields[5]) for fields in smsc.lines("SUBMIT") if fields[4] == "64"]
        assert len(long_parts) == 3 and all(p[:3] == b"\x05\x00\x03" for p in long_parts)  # UDH, UDHI set
        assert [p[5] for p in long_parts] == [1, 2, 3] and {p[3] for p in long_parts} == {long_parts[0][3]}
        assert b"".join(p[6:] for p in long_parts) == b"L" * 300
        # Receipts (hex id in submit_sm_resp, decimal in the receipt) went back to the customer.
        await node.until(lambda: len(node.receipts) == 51, what="the customer's receipts")
        assert {d.tlvs["receipted_message_id"] for d in node.receipts} == {a.message_id for a in accepted + [long]}
        assert all(d.tlvs["message_state"] == 2 for d in node.receipts)
        await node.until(lambda: len([f for f in smsc.lines("DLRACK") if f[2] == "0"]) == 53,
                         what="a deliver_sm_resp OK for every receipt")
        balance = node.db.run_blocking(
            lambda c: c.execute(select(m.accounts.c.balance).where(m.accounts.c.id == node.account)).scalar_one())
        assert balance == Decimal(100) - Decimal("0.53")
    finally:
        await node.stop()


@pytest_twisted.ensureDeferred
async def test_the_link_reconnects_after_the_smsc_dies_and_nothing_queued_is_lost(tmp_path, smsc, reactor):
    node = Node(tmp_path, smsc, reactor, max_sending_rate=100)  # the kill comes mid-stream
    try:
        await node.until(lambda: node.links.is_bound(node.link), what="the bind")
        await gatherResults([Deferred.fromCoroutine(node.submit(f"before {n:03d}")) for n in range(300)])
        await node.until(lambda: len(smsc.lines("SUBMIT")) >= 40, what="the first submits")
        smsc.kill()  # some parts are answered, some in flight, most still queued
        await node.until(lambda: not node.links.is_bound(node.link), what="the link to go down")
        sent_before = len(smsc.lines("SUBMIT"))
        assert sent_before < 300
        for n in range(30):  # accepted while the link is down: queued in the database
            await node.submit(f"during {n:03d}")
        assert len(await node.states()) == 330
        smsc.start()  # on the same port
        await node.until(lambda: node.links.is_bound(node.link), timeout=30, what="the reconnection")
        await node.until(lambda: node.all_delivered(330), timeout=60, what="every message delivered")
        texts = set(smsc.submitted_texts())
        expected = {f"before {n:03d}".encode() for n in range(300)} | {f"during {n:03d}".encode() for n in range(30)}
        assert expected <= texts
        # At least once: only parts unanswered when the SMSC died may have gone twice.
        assert len(smsc.submitted_texts()) - len(texts) <= 16
        parts = await node.db.run(lambda c: c.execute(select(m.sms_parts.c.state, m.sms_parts.c.upstream_key)).all())
        assert all(state == "DELIVERED" and key for state, key in parts)
    finally:
        await node.stop()


@pytest.mark.parametrize("smsc_env", [{"SMSC_THROTTLE": "3"}])
@pytest_twisted.ensureDeferred
async def test_throttled_submits_are_sent_again(tmp_path, reactor, smsc_env):
    smsc = Smsc(tmp_path / "smsc.log", **smsc_env)
    node = Node(tmp_path, smsc, reactor, resend_wait_ms=200)
    try:
        await node.until(lambda: node.links.is_bound(node.link), what="the bind")
        for n in range(5):
            await node.submit(f"throttled {n}")
        await node.until(lambda: node.all_delivered(5), what="every message delivered")
        assert sorted(smsc.submitted_texts()) == [f"throttled {n}".encode() for n in range(5)]
    finally:
        await node.stop()
        smsc.kill()


@pytest_twisted.ensureDeferred
async def test_mo_from_the_smsc_reaches_the_owner_of_the_number(tmp_path, reactor):
    smsc = Smsc(tmp_path / "smsc.log", SMSC_MO="447700900123,441134960000,hello from a phone")
    node = Node(tmp_path, smsc, reactor, numbers=("+441134960000",))
    try:
        await node.until(lambda: any(d.kind == "mo" for d in node.receipts), what="the MO")
        [mo] = [d for d in node.receipts if d.kind == "mo"]
        assert (mo.source, mo.destination, mo.content) == ("447700900123", "441134960000", b"hello from a phone")
        await node.until(lambda: [f[2] for f in smsc.lines("DLRACK")] == ["0"], what="the deliver_sm_resp")
    finally:
        await node.stop()
        smsc.kill()
