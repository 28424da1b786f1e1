"""The SMS engine on both backends: storing and charging per part, refusals,
group commits, SMSC ids and receipts, MO, the customers' outbox, cancel and
replace, expiry, the anti-fraud sending restriction."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from sqlalchemy import insert, select, update
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from switchd.billing.ledger import book
from switchd.core.events import EventBus
from switchd.core.ratelimit import RateLimiter
from switchd.core.router import Router
from switchd.smpp import dlr, pdu
from switchd.smpp.client import LinkSettings
from switchd.sms import store
from switchd.sms.engine import (
    Accepted,
    MessageEngine,
    MessageOrigin,
    MessageReceived,
    MessageRefused,
    MessageStateChanged,
    Submission,
)
from switchd.store import models as m
from switchd.store.db import Database

T0 = 1_800_000_000
NOW = datetime.datetime.fromtimestamp(T0, datetime.UTC)
STAMPS = {"created_at": NOW, "updated_at": NOW}


def run(coro_or_deferred):
    """Drive a coroutine or Deferred that the synchronous database completes at once."""
    d = Deferred.fromCoroutine(coro_or_deferred) if not isinstance(coro_or_deferred, Deferred) else coro_or_deferred
    out: list = []
    d.addBoth(out.append)
    assert out, "did not complete synchronously"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


class FakeTrunks:
    def is_usable(self, trunk_id):
        return True


class FakeLinks:
    """The link manager as the engine and the router see it."""

    def __init__(self):
        self.settings: dict[int, LinkSettings] = {}
        self.bound: set[int] = set()
        self.enqueued: list = []
        self.withdrawn: list = []
        self.in_flight: set[int] = set()

    def add(self, link_id, name, **values):
        self.settings[link_id] = LinkSettings(id=link_id, name=name, host="smsc.example.net", port=2775, **values)
        self.bound.add(link_id)

    def is_bound(self, link_id):
        return link_id in self.bound

    def settings_of(self, link_id):
        return self.settings.get(link_id)

    def enqueue(self, link_id, parts):
        self.enqueued.append((link_id, list(parts)))

    def withdraw(self, link_id, part_ids):
        if self.in_flight & set(part_ids):
            return False
        self.withdrawn.append(tuple(part_ids))
        return True

    def restore(self, link_id, part_ids):
        pass

    def bound_links(self):
        return sorted(self.bound)


class World:
    """Provisioning: a customer with an API service, a plan, a group of links, connections."""

    def __init__(self, database: Database):
        self.db = database
        self.clock = Clock()
        self.clock.advance(T0)
        self.bus = EventBus()
        self.events: list = []
        self.bus.subscribe(MessageStateChanged, self.events.append)
        self.bus.subscribe(MessageReceived, self.events.append)
        self.links = FakeLinks()
        self.router = Router(database, self.clock, RateLimiter(self.clock), FakeTrunks(), links=self.links)
        self.customer = self.insert(m.customers, name="ACME", status="active")
        self.account = self.insert(m.accounts, customer_id=self.customer, currency="EUR", balance=0,
                                   credit_limit=0, billing_type="prepaid", status="active")
        self.plan = self.insert(m.tariff_plans, name="sms", currency="EUR")
        self.insert(m.rates, tariff_plan_id=self.plan, prefix="44", price_per_message=Decimal("0.05"))
        self.insert(m.rates, tariff_plan_id=self.plan, prefix="49", price_per_message=Decimal(0))
        self.group = self.insert(m.routing_groups, name="sms-world")
        self.service = self.insert(m.services, account_id=self.account, type="api", tariff_plan_id=self.plan,
                                   routing_group_id=self.group, status="active")
        self.smpp_connection = self.insert(m.smpp_connections, service_id=self.service, login="acme",
                                           password_salt="s", password_hash="h", system_type="0")
        key = self.insert(m.api_keys, customer_id=self.customer, name="k", prefix="pfx", salt="s",
                          secret_hash="h", admin=False)
        self.http_connection = self.insert(m.http_connections, service_id=self.service, api_key_id=key)
        self.link = self.smpp_link("carrier-a", split_mode="ultra_long")
        self.engine = self.make_engine()

    def make_engine(self, **options):
        engine = MessageEngine(self.db, self.clock, self.bus, RateLimiter(self.clock), self.router,
                               node="node-1", links=self.links, **options)
        return engine

    def insert(self, table, **values):
        if "created_at" in table.c:
            values = {**STAMPS, **values} if "updated_at" in table.c else {"created_at": NOW, **values}
        return self.db.run_blocking(
            lambda conn: conn.execute(insert(table).values(**values).returning(table.c.id)).scalar_one()
        )

    def smpp_link(self, name, *, priority=0, prefixes=None, **settings):
        link_id = self.insert(m.smpp_links, name=name, host="smsc.example.net", port=2775, **settings)
        self.insert(m.routing_group_members, routing_group_id=self.group, smpp_link_id=link_id,
                    priority=priority, prefixes=prefixes)
        self.links.add(link_id, name, **settings)
        return link_id

    def topup(self, amount: str):
        self.db.run_blocking(lambda conn: book(conn, self.account, "topup", Decimal(amount), NOW))

    def balance(self) -> Decimal:
        return self.db.run_blocking(
            lambda conn: conn.execute(select(m.accounts.c.balance).where(m.accounts.c.id == self.account)).scalar_one()
        )

    def rows(self, table, *where):
        return self.db.run_blocking(lambda conn: conn.execute(select(table).where(*where).order_by(table.c.id)).all())

    def origin(self, kind="smpp"):
        connection = self.smpp_connection if kind == "smpp" else self.http_connection
        return MessageOrigin(kind=kind, service_id=self.service, account_id=self.account, connection_id=connection)

    def submit(self, text="hello", destination="447700900001", *, kind="smpp", engine=None, **fields):
        submission = Submission(source=fields.pop("source", "ACME"), destination=destination,
                                content=text.encode("ascii") if isinstance(text, str) else text,
                                data_coding=fields.pop("data_coding", 0), **fields)
        return run((engine or self.engine).submit(self.origin(kind), submission))

    def parts_enqueued(self):
        return [part for _, parts in self.links.enqueued for part in parts]


@pytest.fixture
def world(database):
    return World(database)


def refused(call) -> MessageRefused:
    with pytest.raises(MessageRefused) as info:
        call()
    return info.value


# -- submit -------------------------------------------------------------------------------


def test_a_message_is_stored_charged_per_part_and_handed_to_its_link(world):
    world.topup("1")
    accepted = world.submit("hello world")
    assert isinstance(accepted, Accepted) and accepted.parts == 1
    message = world.rows(m.sms_messages)[0]
    assert (message.message_id, message.status, message.parts, message.source, message.destination) == (
        accepted.message_id, "ENROUTE", 1, "ACME", "447700900001")
    assert message.body == "hello world" and message.charge == Decimal("0.05") and message.node == "node-1"
    part = world.rows(m.sms_parts)[0]
    assert (part.state, part.smpp_link_id, bytes(part.short_message)) == ("queued", world.link, b"hello world")
    charges = world.rows(m.ledger, m.ledger.c.kind == "charge")
    assert [(c.reference, c.amount) for c in charges] == [(f"sms:{accepted.message_id}:1", Decimal("-0.05"))]
    assert world.balance() == Decimal("0.95")
    [(link_id, [queued])] = world.links.enqueued
    assert link_id == world.link and queued.part_id == part.id and queued.message_id == accepted.message_id
    assert [(e.state, e.message_id, e.origin_kind) for e in world.events] == [("ENROUTE", accepted.message_id, "smpp")]


def test_a_long_message_is_split_by_its_link_and_each_part_charged_once(world):
    world.topup("1")
    accepted = world.submit("x" * 300)
    assert accepted.parts == 3  # 134 septets per UDH part at max_content_length 140
    parts = world.rows(m.sms_parts)
    assert [(p.number, p.total, p.esm_class) for p in parts] == [(1, 3, 0x40), (2, 3, 0x40), (3, 3, 0x40)]
    assert all(bytes(p.short_message)[:3] == b"\x05\x00\x03" for p in parts)
    references = sorted(c.reference for c in world.rows(m.ledger, m.ledger.c.kind == "charge"))
    assert references == [f"sms:{accepted.message_id}:{n}" for n in (1, 2, 3)]
    assert world.balance() == Decimal("0.85")


def test_a_link_that_cannot_carry_a_long_message_is_passed_over(world):
    world.links.settings[world.link] = LinkSettings(id=world.link, name="carrier-a", host="h", port=1)  # disabled split
    other = world.smpp_link("carrier-b", priority=-1, split_mode="physical")
    world.topup("1")
    accepted = world.submit("y" * 200)
    assert accepted.parts == 2 and {p.smpp_link_id for p in world.rows(m.sms_parts)} == {other}
    world.links.settings.pop(other)
    assert refused(lambda: world.submit("z" * 200)).status == pdu.ESME_RINVMSGLEN


def test_prepaid_accounts_pay_every_part_up_front(world):
    world.topup("0.10")
    assert refused(lambda: world.submit("x" * 300)).http_status == 402  # three parts: 0.15
    error = refused(lambda: world.submit("x" * 300))
    assert (error.status, error.http_status) == (pdu.ESME_RX_T_APPN, 402)
    assert world.rows(m.sms_messages) == [] and world.balance() == Decimal("0.10")
    world.submit("short")
    world.submit("short")
    assert refused(lambda: world.submit("short")).http_status == 402
    assert world.balance() == Decimal(0)
    world.submit("free", destination="4930123")  # a free rate needs no money


def test_refusals_carry_the_right_smpp_and_http_status(world):
    world.topup("1")
    for destination, status in (("", pdu.ESME_RINVDSTADR), ("44abc", pdu.ESME_RINVDSTADR),
                                ("3312345", pdu.ESME_RINVDSTADR)):  # no rate for France
        error = refused(lambda number=destination: world.submit(destination=number))
        assert (error.status, error.http_status) == (status, 400)
    assert refused(lambda: world.submit(source="S" * 21)).status == pdu.ESME_RINVSRCADR
    assert refused(lambda: world.submit(esm_class=0x04)).status == pdu.ESME_RINVESMCLASS
    assert refused(lambda: world.submit(validity_period="bad")).status == pdu.ESME_RINVEXPIRY
    assert refused(lambda: world.submit(schedule_delivery_time="bad")).status == pdu.ESME_RINVSCHED
    assert refused(lambda: world.submit(b"\x00\x41\x00", data_coding=8)).status == pdu.ESME_RINVDCS
    world.db.run_blocking(lambda c: c.execute(update(m.accounts).values(status="blocked")))
    error = refused(lambda: world.submit())
    assert (error.status, error.http_status) == (pdu.ESME_RX_P_APPN, 403)
    assert world.rows(m.sms_messages) == []


def test_no_route_at_all_is_refused_but_a_link_that_is_down_still_queues(world):
    world.topup("1")
    world.links.bound.clear()
    accepted = world.submit()  # queued on the best configured link, sent when it binds
    assert world.rows(m.sms_parts)[0].smpp_link_id == world.link and accepted.parts == 1
    world.db.run_blocking(lambda c: c.execute(update(m.smpp_links).values(enabled=False)))
    world.router.forget()
    error = refused(lambda: world.submit())
    assert (error.status, error.http_status, error.reason) == (pdu.ESME_RINVDSTADR, 400, "no route to the destination")


def test_links_are_chosen_by_priority_and_their_number_and_sender_prefixes(world):
    world.topup("5")
    uk = world.smpp_link("uk-only", priority=5, accepted_number_prefixes="7700")  # after the country code
    brand = world.smpp_link("brand", priority=9, sender_id_prefixes="BANK")
    world.submit(destination="447700900001")
    world.submit(destination="447800900001")
    world.submit(destination="447800900001", source="BANKofX")
    links = [p.smpp_link_id for p in world.rows(m.sms_parts)]
    assert links == [uk, world.link, brand]


def test_the_sending_restriction_caps_messages_per_number_for_http_connections(world):
    world.topup("5")
    world.db.run_blocking(lambda c: c.execute(
        update(m.http_connections).values(sending_restriction=True, number_of_sendings=2)))
    world.submit(kind="http")
    world.submit(kind="http", destination="+447700900001")  # the same number
    error = refused(lambda: world.submit(kind="http"))
    assert (error.status, error.http_status) == (pdu.ESME_RTHROTTLED, 429)
    world.submit(kind="http", destination="447700900002")
    world.submit(kind="smpp")  # SMPP connections have no such restriction
    world.clock.advance(86400)
    world.submit(kind="http")  # a new window
    counts = world.rows(m.sms_sending_counts)
    assert sorted(c.count for c in counts) == [1, 1, 2]
    world.clock.advance(3 * 86400)
    run(world.engine.sweep())
    assert len(world.rows(m.sms_sending_counts)) == 0


def test_concurrent_submits_share_commits_and_stay_exact(database):
    held: list = []

    def runner(fn, *args, **kwargs):
        d = Deferred()
        held.append((d, fn, args, kwargs))
        return d

    world = World(database)
    world.topup("1")
    world.router.forget()
    engine = world.make_engine(max_in_flight=1)
    engine.db = Database(database.engine, runner=runner)
    engine.batcher.db = engine.db
    world.router.db = engine.db
    results: list = []
    for n in range(25):
        submission = Submission(source="ACME", destination=f"4477009{n:05d}", content=b"hi", data_coding=0)
        Deferred.fromCoroutine(engine.submit(world.origin(), submission)).addBoth(results.append)
    while held:  # Database.run hands the runner its transaction as a callable
        d, fn, args, kwargs = held.pop(0)
        d.callback(fn(*args, **kwargs))
    accepted = [r for r in results if isinstance(r, Accepted)]
    refusals = [r.value for r in results if isinstance(r, Failure)]
    assert len(accepted) == 20 and all(e.http_status == 402 for e in refusals) and len(refusals) == 5
    assert engine.batcher.transactions == 2  # the first alone, the 24 that queued behind it together
    assert world.balance() == Decimal(0) and len(world.rows(m.sms_messages)) == 20
    assert len({c.reference for c in world.rows(m.ledger, m.ledger.c.kind == "charge")}) == 20


def test_a_failing_database_answers_a_system_error(world):
    world.topup("1")
    world.engine.batcher.db = Database(world.db.engine, runner=lambda fn, *a, **k: fail(OSError("disk full")))
    error = refused(lambda: world.submit())
    assert (error.status, error.http_status) == (pdu.ESME_RSYSERR, 503)


# -- upstream outcomes ------------------------------------------------------------------------------


def _sent(world, accepted_parts, ids):
    for part, upstream_id in zip(accepted_parts, ids):
        run(world.engine.part_sent(part.link_id, part, upstream_id))


def test_smsc_ids_are_stored_and_receipts_finish_the_message(world):
    world.topup("1")
    accepted = world.submit("x" * 300, registered_delivery=1)
    parts = world.parts_enqueued()
    _sent(world, parts, ["0A", "0B", "0C"])
    rows = world.rows(m.sms_parts)
    assert [(r.state, r.upstream_message_id, r.upstream_key) for r in rows] == [
        ("sent", "0A", "10"), ("sent", "0B", "11"), ("sent", "0C", "12")]
    assert world.rows(m.sms_messages)[0].upstream_message_id == "0A"
    # Receipts with the id in decimal, in another case, in the TLV form.
    for upstream in ("10", "0b"):
        status = run(world.engine.receipt_received(world.link, dlr.UpstreamReceipt(upstream, "DELIVERED")))
        assert status == pdu.ESME_ROK
    assert world.rows(m.sms_messages)[0].status == "ENROUTE"
    assert run(world.engine.receipt_received(world.link, dlr.UpstreamReceipt("12", "ENROUTE"))) == pdu.ESME_ROK
    run(world.engine.receipt_received(world.link, dlr.UpstreamReceipt("000012", "DELIVERED")))
    message = world.rows(m.sms_messages)[0]
    assert (message.status, message.done_at) == ("DELIVERED", NOW)
    assert [e.state for e in world.events] == ["ENROUTE", "DELIVERED"]
    [receipt] = world.rows(m.sms_outbox)
    assert (receipt.kind, receipt.connection_id, receipt.source, receipt.destination) == (
        "receipt", world.smpp_connection, "447700900001", "ACME")
    text = pdu.parse_receipt(bytes(receipt.content))
    assert (text.id, text.stat, text.sub, text.dlvrd) == (accepted.message_id, "DELIVRD", 3, 3)
    assert receipt.tlvs == {"receipted_message_id": accepted.message_id, "message_state": 2}
    # A receipt repeated by the SMSC changes nothing.
    run(world.engine.receipt_received(world.link, dlr.UpstreamReceipt("10", "UNDELIVERABLE")))
    assert world.rows(m.sms_messages)[0].status == "DELIVERED" and len(world.rows(m.sms_outbox)) == 1
    assert world.balance() == Decimal("0.85")


def test_a_failed_part_fails_the_message_and_parts_never_sent_are_refunded(world):
    world.topup("1")
    accepted = world.submit("x" * 300, registered_delivery=2)
    first, second, third = world.parts_enqueued()
    _sent(world, [first], ["77"])
    run(world.engine.part_failed(world.link, second, "REJECTED", pdu.ESME_RINVDSTADR))
    run(world.engine.part_failed(world.link, third, "EXPIRED", None))
    assert world.rows(m.sms_messages)[0].status == "ENROUTE"
    run(world.engine.receipt_received(world.link, dlr.UpstreamReceipt("77", "UNDELIVERABLE", error_code=1)))
    message = world.rows(m.sms_messages)[0]
    assert (message.status, message.error_code) == ("REJECTED", pdu.ESME_RINVDSTADR)
    refunds = world.rows(m.ledger, m.ledger.c.kind == "refund")
    assert sorted(r.reference for r in refunds) == [f"sms:{accepted.message_id}:2", f"sms:{accepted.message_id}:3"]
    assert world.balance() == Decimal("0.95")  # the part that left switchd stays paid
    [receipt] = world.rows(m.sms_outbox)
    assert pdu.parse_receipt(bytes(receipt.content)).stat == "REJECTD"
    assert receipt.tlvs["network_error_code"] == {"hex": "03000b"}


def test_no_receipt_when_the_customer_did_not_ask(world):
    world.topup("1")
    world.submit(registered_delivery=2)  # failures only
    [part] = world.parts_enqueued()
    _sent(world, [part], ["5"])
    run(world.engine.receipt_received(world.link, dlr.UpstreamReceipt("5", "DELIVERED")))
    assert world.rows(m.sms_outbox) == []
    assert world.rows(m.sms_messages)[0].status == "DELIVERED"


def test_a_receipt_for_an_unknown_message_is_retried_then_dropped(world):
    fired: list = []
    world.engine.receipt_received(world.link, dlr.UpstreamReceipt("999", "DELIVERED")).addBoth(fired.append)
    world.clock.pump([1, 1, 1])
    assert fired == []
    world.clock.pump([1, 1, 1])
    assert fired == [pdu.ESME_ROK]


def test_a_receipt_arriving_before_the_id_is_stored_still_matches(world):
    world.topup("1")
    world.submit(registered_delivery=1)
    [part] = world.parts_enqueued()
    fired: list = []
    world.engine.receipt_received(world.link, dlr.UpstreamReceipt("42", "DELIVERED")).addBoth(fired.append)
    assert fired == []
    _sent(world, [part], ["42"])
    world.clock.advance(1)
    assert fired == [pdu.ESME_ROK] and world.rows(m.sms_messages)[0].status == "DELIVERED"


def test_link_outcomes_are_retried_until_the_database_takes_them(world):
    world.topup("1")
    world.submit()
    [part] = world.parts_enqueued()
    real = world.engine.batcher.db
    world.engine.batcher.db = Database(world.db.engine, runner=lambda fn, *a, **k: fail(OSError("down")))
    fired: list = []
    world.engine.part_sent(world.link, part, "1").addBoth(fired.append)
    world.clock.pump([1, 2])
    assert fired == []
    world.engine.batcher.db = real
    world.clock.advance(4)
    assert fired == [None]
    assert world.rows(m.sms_parts)[0].state == "sent"


# -- MO ---------------------------------------------------------------------------------------------


def test_mo_reaches_the_owner_of_the_number(world):
    world.insert(m.numbers, number="+441134960000", service_id=world.service)
    mo = dlr.UpstreamMessage("447700900123", "441134960000", b"hi there", 0, 0x40, {"sar_msg_ref_num": 3})
    assert run(world.engine.message_received(world.link, mo)) == pdu.ESME_ROK
    [message] = world.rows(m.sms_messages)
    assert (message.direction, message.origin_kind, message.connection_id, message.body) == (
        "mo", "smpp", world.smpp_connection, "hi there")
    [row] = world.rows(m.sms_outbox)
    assert (row.kind, bytes(row.content), row.esm_class, row.tlvs) == ("mo", b"hi there", 0x40, {"sar_msg_ref_num": 3})
    [event] = [e for e in world.events if isinstance(e, MessageReceived)]  # on the bus as well
    assert (event.origin_kind, event.connection_id, event.message_id) == ("smpp", world.smpp_connection,
                                                                        message.message_id)
    unknown = dlr.UpstreamMessage("447700900123", "33999", b"?", 0)
    assert run(world.engine.message_received(world.link, unknown)) == pdu.ESME_RINVDSTADR


def test_mo_for_a_customer_without_smpp_goes_to_the_http_callback(world):
    world.db.run_blocking(lambda c: c.execute(m.smpp_connections.delete()))
    world.insert(m.numbers, number="441134960000", service_id=world.service)
    mo = dlr.UpstreamMessage("447700900123", "+441134960000", b"hello", 0)
    assert run(world.engine.message_received(world.link, mo)) == pdu.ESME_ROK
    [event] = [e for e in world.events if isinstance(e, MessageReceived)]
    assert (event.connection_id, event.text, event.source) == (world.http_connection, "hello", "447700900123")
    assert world.rows(m.sms_outbox) == []


# -- the outbox ------------------------------------------------------------------------------------


class Esme:
    def __init__(self, answer=True):
        self.got: list = []
        self.answer = answer
        self.pending: list[Deferred] = []

    def push(self, delivery):
        self.got.append(delivery)
        if self.answer is None:
            d = Deferred()
            self.pending.append(d)
            return d
        return succeed(None) if self.answer else fail(RuntimeError("deliver_sm_resp error"))


def _mo(world, n):
    mo = dlr.UpstreamMessage("447700900123", "441134960000", f"mo {n}".encode(), 0)
    run(world.engine.message_received(world.link, mo))


def test_stored_deliveries_are_pushed_on_bind_then_new_ones_as_they_come(world):
    world.insert(m.numbers, number="441134960000", service_id=world.service)
    _mo(world, 1)
    _mo(world, 2)
    esme = Esme()
    detach = world.engine.attach(world.smpp_connection, esme.push)
    assert [bytes(d.content) for d in esme.got] == [b"mo 1", b"mo 2"]
    _mo(world, 3)
    assert [bytes(d.content) for d in esme.got][-1] == b"mo 3"
    assert {r.state for r in world.rows(m.sms_outbox)} == {"done"}
    detach()
    _mo(world, 4)
    assert len(esme.got) == 3 and world.rows(m.sms_outbox)[-1].state == "pending"
    again = Esme()
    world.engine.attach(world.smpp_connection, again.push)
    assert [bytes(d.content) for d in again.got] == [b"mo 4"]


def test_the_outbox_reads_the_database_again_only_when_it_may_hold_more(world):
    world.insert(m.numbers, number="441134960000", service_id=world.service)
    engine = world.make_engine(outbox_page=4)
    reads = []
    real = world.db.run

    def counting(fn, *args, **kwargs):
        if fn is store.load_outbox:
            reads.append(args)
        return real(fn, *args, **kwargs)

    engine.db = type("Db", (), {"run": staticmethod(counting)})()
    for n in range(10):
        mo = dlr.UpstreamMessage("447700900123", "441134960000", f"mo {n}".encode(), 0)
        run(engine.message_received(world.link, mo))
    esme = Esme()
    engine.attach(world.smpp_connection, esme.push)
    assert [bytes(d.content) for d in esme.got] == [f"mo {n}".encode() for n in range(10)]
    assert len(reads) <= 5  # pages of 4: 4, 4, 2 (and the rescan after a full page)
    reads.clear()
    world.clock.advance(engine.outbox_poll_seconds)
    engine._poll_outboxes()
    assert len(reads) == 1


def test_a_refused_delivery_is_kept_and_pushed_again(world):
    world.insert(m.numbers, number="441134960000", service_id=world.service)
    _mo(world, 1)
    esme = Esme(answer=False)
    world.engine.attach(world.smpp_connection, esme.push)
    assert len(esme.got) == 1
    world.clock.advance(1)
    assert len(esme.got) == 2
    esme.answer = True
    world.clock.advance(2)
    assert len(esme.got) == 3 and world.rows(m.sms_outbox)[0].state == "done"
    assert world.rows(m.sms_outbox)[0].attempts == 2


def test_binds_of_one_connection_take_turns_within_the_window(world):
    world.insert(m.numbers, number="441134960000", service_id=world.service)
    engine = world.make_engine(deliver_window=3)
    for n in range(8):
        mo = dlr.UpstreamMessage("447700900123", "441134960000", f"mo {n}".encode(), 0)
        run(engine.message_received(world.link, mo))
    a, b = Esme(answer=None), Esme(answer=None)
    engine.attach(world.smpp_connection, a.push)
    engine.attach(world.smpp_connection, b.push)
    assert len(a.got) + len(b.got) == 3
    while a.pending or b.pending:
        for esme in (a, b):
            if esme.pending:
                esme.pending.pop(0).callback(None)
    assert len(a.got) + len(b.got) == 8 and a.got and b.got
    assert {r.state for r in world.rows(m.sms_outbox)} == {"done"}


# -- customers' requests ------------------------------------------------------------------------------


def test_query_shows_the_state_to_its_own_account_only(world):
    world.topup("1")
    accepted = world.submit()
    info = run(world.engine.query(world.origin(), accepted.message_id))
    assert (info.message_id, info.state, info.parts, info.submitted_at) == (accepted.message_id, "ENROUTE", 1, NOW)
    other = MessageOrigin("smpp", world.service, world.account + 1000, 1)
    assert run(world.engine.query(other, accepted.message_id)) is None


def test_cancel_by_source_and_destination_takes_the_connections_queued_messages(world):
    world.topup("5")
    to_a = world.submit(source="ACME", destination="447700900001")
    world.submit(source="ACME", destination="447700900002")
    sent = world.submit(source="ACME", destination="447700900001")
    _sent(world, [world.parts_enqueued()[-1]], ["9"])  # gone upstream: not cancellable
    world.submit(source="OTHER", destination="447700900001")
    http = world.submit(source="ACME", destination="447700900001", kind="http")  # another connection
    assert run(world.engine.cancel_from(world.origin(), "ACME", "447700900001")) == 1
    states = {row.message_id: row.status for row in world.rows(m.sms_messages)}
    assert states[to_a.message_id] == "DELETED" and states[sent.message_id] == "ENROUTE"
    assert states[http.message_id] == "ENROUTE"
    assert run(world.engine.cancel_from(world.origin(), "ACME", None)) == 1  # ...002
    assert sorted(states := [row.status for row in world.rows(m.sms_messages)]) == sorted(
        ["DELETED", "DELETED", "ENROUTE", "ENROUTE", "ENROUTE"]), states


def test_cancel_only_while_queued_and_refunds(world):
    world.topup("1")
    accepted = world.submit(registered_delivery=1)
    assert run(world.engine.cancel(world.origin(), accepted.message_id)) is True
    message = world.rows(m.sms_messages)[0]
    assert message.status == "DELETED" and world.balance() == Decimal(1)
    assert world.rows(m.sms_parts)[0].state == "DELETED"
    assert pdu.parse_receipt(bytes(world.rows(m.sms_outbox)[0].content)).stat == "DELETED"
    assert run(world.engine.cancel(world.origin(), accepted.message_id)) is False
    second = world.submit()
    [_, part] = world.parts_enqueued()
    _sent(world, [part], ["9"])
    assert run(world.engine.cancel(world.origin(), second.message_id)) is False
    third = world.submit()
    world.links.in_flight.add(world.parts_enqueued()[-1].part_id)
    assert run(world.engine.cancel(world.origin(), third.message_id)) is False


def test_replace_keeps_the_part_count(world):
    world.topup("1")
    accepted = world.submit("first text")
    assert run(world.engine.replace(world.origin(), accepted.message_id, b"second text", -1)) is True
    assert bytes(world.rows(m.sms_parts)[0].short_message) == b"second text"
    assert world.rows(m.sms_messages)[0].body == "second text"
    assert run(world.engine.replace(world.origin(), accepted.message_id, b"x" * 300, 0)) is False
    assert run(world.engine.replace(world.origin(), "no-such-id", b"x", 0)) is False


# -- expiry ---------------------------------------------------------------------------------------------


def test_parts_past_their_validity_expire_and_are_refunded(world):
    world.topup("1")
    engine = world.make_engine(validity_seconds=600)
    accepted = world.submit(engine=engine, registered_delivery=1)
    world.submit(engine=engine, validity_period="000000010000000R")  # one hour, cut to ten minutes
    world.links.bound.clear()
    world.clock.advance(601)
    run(engine.sweep())
    messages = world.rows(m.sms_messages)
    assert [msg.status for msg in messages] == ["EXPIRED", "EXPIRED"]
    assert world.balance() == Decimal(1)
    assert pdu.parse_receipt(bytes(world.rows(m.sms_outbox)[0].content)).id == accepted.message_id


def test_a_scheduled_message_waits_for_its_time(world):
    world.topup("1")
    world.submit(schedule_delivery_time="000000003000000R")  # in 30 minutes
    [part] = world.parts_enqueued()
    assert part.not_before == NOW + datetime.timedelta(minutes=30)
    assert run(world.engine.load_parts(world.link, 0, 10)) == []
    world.clock.advance(1800)
    assert [p.part_id for p in run(world.engine.load_parts(world.link, 0, 10))] == [part.part_id]


# -- storage helpers -----------------------------------------------------------------------------------


def test_load_parts_pages_by_id_and_only_this_nodes_queue(world):
    world.topup("5")
    for _ in range(5):
        world.submit()
    world.db.run_blocking(lambda c: c.execute(
        update(m.sms_parts).where(m.sms_parts.c.id == world.parts_enqueued()[0].part_id).values(node="node-2")))
    page = run(world.engine.load_parts(world.link, 0, 2))
    rest = run(world.engine.load_parts(world.link, page[-1].part_id, 10))
    assert len(page) == 2 and len(rest) == 2
    assert page[0].source == "ACME" and page[0].destination == "447700900001"


def test_book_many_skips_references_already_booked(database):
    world = World(database)

    def work(conn):
        first = store.book_many(conn, [store.Booking(world.account, "refund", Decimal(1), "r1", "x")], NOW)
        again = store.book_many(conn, [store.Booking(world.account, "refund", Decimal(1), "r1", "x"),
                                       store.Booking(world.account, "refund", Decimal(2), "r2", "y")], NOW)
        return first, again

    assert database.run_blocking(work) == (1, 1)
    assert world.balance() == Decimal(3)
    rows = world.rows(m.ledger)
    assert [r.balance_after for r in rows] == [Decimal(1), Decimal(3)]


def test_links_and_message_members_are_read_from_the_tables(world):
    from switchd.core.router import load_link_members
    from switchd.smpp.client import load_links

    receiver = world.smpp_link("receive-only", mode="receiver")
    disabled = world.smpp_link("off")
    world.db.run_blocking(lambda c: c.execute(
        update(m.smpp_links).where(m.smpp_links.c.id == disabled).values(enabled=False)))
    links = {s.name: s for s in world.db.run_blocking(load_links)}
    assert set(links) == {"carrier-a", "receive-only"}
    a = links["carrier-a"]
    assert (a.heartbeat_interval_ms, a.max_missed_heartbeats, a.transaction_timeout_ms, a.receiving_timeout_ms,
            a.window_size, a.registered_delivery, a.max_content_length, a.max_message_length) == (
        30000, 3, 6000, 180000, 16, 2, 140, 2048)  # seed 001 defaults
    members = world.db.run_blocking(lambda c: load_link_members(c, world.service))
    assert [member.link_id for member in members] == [world.link]
    assert receiver not in [member.link_id for member in members]


def test_a_receiver_link_reports_on_what_its_transmitter_sibling_sent(world):
    world.topup("1")
    receiver = world.smpp_link("carrier-a-rx", mode="receiver")
    world.submit(registered_delivery=1)
    [part] = world.parts_enqueued()
    _sent(world, [part], ["ABC"])
    assert run(world.engine.receipt_received(receiver, dlr.UpstreamReceipt("2748", "DELIVERED"))) == pdu.ESME_ROK
    assert world.rows(m.sms_messages)[0].status == "DELIVERED"


def test_parts_carry_their_services_distribution_priority(world):
    world.topup("5")
    world.db.run_blocking(lambda c: c.execute(
        update(m.services).where(m.services.c.id == world.service).values(distribution_priority=7)))
    world.submit()
    [stored] = world.parts_enqueued()
    assert stored.priority == 7  # the fast path, straight from the commit
    [loaded] = run(world.engine.load_parts(world.link, 0, 10))
    assert loaded.part_id == stored.part_id and loaded.priority == 7  # the database path
