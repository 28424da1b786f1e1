"""The registrar with the real database (SQLite and PostgreSQL) and a test clock."""

from __future__ import annotations

import datetime

import pytest
from sqlalchemy import func, insert, select
from twisted.internet.task import Clock

from switchd.core.events import ContactRegistered, ContactUnregistered, EventBus
from switchd.sip.digest import DigestClient, DigestServer, compute_ha1, parse_challenge
from switchd.sip.message import parse_datagram
from switchd.sip.registrar import Registrar
from switchd.sip.transaction import Destination
from switchd.store import models as m

T0 = 1_800_000_000
SOURCE = Destination("udp", "198.51.100.7", 40000)
NOW = datetime.datetime.fromtimestamp(T0, datetime.timezone.utc)


@pytest.fixture
def clock():
    c = Clock()
    c.advance(T0)
    return c


@pytest.fixture
def account(database):
    def work(conn):
        customer = conn.execute(insert(m.customers).values(name="c", status="active", created_at=NOW,
                                                           updated_at=NOW).returning(m.customers.c.id)).scalar_one()
        acc = conn.execute(insert(m.accounts).values(customer_id=customer, currency="EUR", balance=0, credit_limit=0,
                                                     billing_type="prepaid", status="active", created_at=NOW,
                                                     updated_at=NOW).returning(m.accounts.c.id)).scalar_one()
        plan = conn.execute(insert(m.tariff_plans).values(name="p", currency="EUR", created_at=NOW,
                                                          updated_at=NOW).returning(m.tariff_plans.c.id)).scalar_one()
        service = conn.execute(insert(m.services).values(account_id=acc, type="sip_telephony", tariff_plan_id=plan,
                                                         distribution_priority=0, periodic_fee=0, fee_period="none",
                                                         status="active", created_at=NOW,
                                                         updated_at=NOW).returning(m.services.c.id)).scalar_one()
        return conn.execute(insert(m.sip_accounts).values(
            service_id=service, username="alice", realm="switchd", enabled=True,
            ha1_md5=compute_ha1("MD5", "alice", "switchd", "alice-secret"),
            ha1_sha256=compute_ha1("SHA-256", "alice", "switchd", "alice-secret"),
            created_at=NOW, updated_at=NOW).returning(m.sip_accounts.c.id)).scalar_one()
    return database.run_blocking(work)


class Harness:
    def __init__(self, database, clock):
        self.database = database
        self.clock = clock
        self.bus = EventBus()
        self.events = []
        self.bus.subscribe(object, self.events.append)
        self.failures = []
        self.digest = DigestServer(b"k" * 32, "switchd", lifetime=300)
        self.registrar = self.make()
        self.client = DigestClient("alice", "alice-secret")
        self.cseq = 0

    def make(self, **kw):
        return Registrar(self.database, self.clock, self.digest, self.bus, min_expires=60, max_expires=3600,
                         max_contacts=kw.pop("max_contacts", 3), on_auth_failure=self.failures.append, **kw)

    def send(self, contacts=("<sip:alice@198.51.100.7:40000>",), expires=None, authorize=True, call_id="reg-1",
             cseq=None, password=None, registrar=None):
        registrar = registrar or self.registrar
        self.cseq = cseq if cseq is not None else self.cseq + 1
        lines = [
            "REGISTER sip:switchd.test SIP/2.0",
            "Via: SIP/2.0/UDP 198.51.100.7:40000;branch=z9hG4bK%d;rport=40000;received=198.51.100.7" % self.cseq,
            "From: <sip:alice@switchd.test>;tag=a", "To: <sip:alice@switchd.test>",
            f"Call-ID: {call_id}", f"CSeq: {self.cseq} REGISTER",
        ] + [f"Contact: {c}" for c in contacts]
        if expires is not None:
            lines.append(f"Expires: {expires}")
        text = "\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n"
        answers = []
        registrar.handle(parse_datagram(text.encode()), SOURCE, answers.append)
        challenge = answers[0]
        if challenge.status != 401 or not authorize:
            return challenge
        client = self.client if password is None else DigestClient("alice", password)
        credentials = client.authorize(parse_challenge(challenge.get_all("WWW-Authenticate")[0]),
                                       method="REGISTER", uri="sip:switchd.test")
        text = text.replace(f"CSeq: {self.cseq} REGISTER", f"CSeq: {self.cseq + 1} REGISTER").replace(
            "Content-Length: 0", f"Authorization: {credentials}\r\nContent-Length: 0")
        self.cseq += 1
        answers.clear()
        registrar.handle(parse_datagram(text.encode()), SOURCE, answers.append)
        return answers[0]

    def rows(self):
        return self.database.run_blocking(lambda c: c.execute(select(m.registrations).order_by(m.registrations.c.id)).all())


@pytest.fixture
def h(database, clock, account):
    return Harness(database, clock)


def test_register_is_challenged_then_stored(h):
    first = h.send(authorize=False)
    assert first.status == 401
    assert [parse_challenge(v).algorithm for v in first.get_all("WWW-Authenticate")] == ["SHA-256", "MD5"]
    ok = h.send(expires=600)
    assert ok.status == 200
    assert ok.get("Contact") == "<sip:alice@198.51.100.7:40000>;expires=600"
    [row] = h.rows()
    assert row.source_host == "198.51.100.7" and row.behind_nat is False
    assert row.expires_at.timestamp() == T0 + 600
    assert [type(e) for e in h.events] == [ContactRegistered]


def test_bindings_survive_a_restart_and_expire_on_time(h, clock):
    h.send(expires=120)
    reborn = h.make()
    reborn.start()
    assert [b.uri for b in reborn.contacts(h.rows()[0].sip_account_id)] == ["sip:alice@198.51.100.7:40000"]
    clock.advance(121)
    reborn.expire()
    reborn.stop()
    assert len(reborn) == 0 and h.rows() == []
    assert isinstance(h.events[-1], ContactUnregistered) and h.events[-1].reason == "expired"


def test_expiry_rules(h):
    too_short = h.send(expires=30)
    assert too_short.status == 423 and too_short.get("Min-Expires") == "60"
    capped = h.send(contacts=("<sip:alice@198.51.100.7:40000>;expires=99999",))
    assert capped.get("Contact").endswith("expires=3600")
    removed = h.send(expires=0)
    assert removed.status == 200 and removed.get("Contact") is None and h.rows() == []


def test_wildcard_removes_everything(h):
    h.send(contacts=("<sip:alice@198.51.100.7:40000>", "<sip:alice@198.51.100.7:40002>"))
    assert len(h.rows()) == 2
    bad = h.send(contacts=("*",))
    assert bad.status == 400
    assert h.send(contacts=("*",), expires=0).status == 200 and h.rows() == []


def test_out_of_order_register_is_refused(h):
    h.send(cseq=10)
    stale = h.send(cseq=3)
    assert stale.status == 500


def test_oldest_contact_makes_room(h, clock):
    for port in (1, 2, 3, 4):
        clock.advance(1)
        h.send(contacts=(f"<sip:alice@198.51.100.7:{port}>",))
    assert sorted(r.contact for r in h.rows()) == [f"<sip:alice@198.51.100.7:{p}>" for p in (2, 3, 4)]
    assert any(isinstance(e, ContactUnregistered) and e.reason == "evicted" for e in h.events)


def test_wrong_password_counts_as_a_failure(h, database):
    answer = h.send(password="not-it")
    assert answer.status == 401 and h.failures == ["198.51.100.7"]
    assert database.run_blocking(lambda c: c.execute(select(func.count()).select_from(m.registrations)).scalar()) == 0


def test_unknown_user_looks_like_a_wrong_password(h):
    h.client = DigestClient("mallory", "x")
    answer = h.send()
    assert answer.status == 401 and h.failures == ["198.51.100.7"]


def test_stale_nonce_is_rechallenged_with_stale_true(h, clock):
    first = h.send(authorize=False)
    challenge = parse_challenge(first.get_all("WWW-Authenticate")[0])
    clock.advance(301)
    credentials = h.client.authorize(challenge, method="REGISTER", uri="sip:switchd.test")
    text = ("REGISTER sip:switchd.test SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:40000;branch=z9hG4bKs\r\n"
            "From: <sip:alice@switchd.test>;tag=a\r\nTo: <sip:alice@switchd.test>\r\nCall-ID: s\r\nCSeq: 9 REGISTER\r\n"
            f"Contact: <sip:alice@198.51.100.7:40000>\r\nAuthorization: {credentials}\r\nContent-Length: 0\r\n\r\n")
    answers = []
    h.registrar.handle(parse_datagram(text.encode()), SOURCE, answers.append)
    assert answers[0].status == 401 and "stale=true" in answers[0].get("WWW-Authenticate").lower()
    assert h.failures == []
