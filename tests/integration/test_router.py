"""The router with the real database (SQLite and PostgreSQL) and a test clock."""

from __future__ import annotations

import datetime
import random

import pytest
from sqlalchemy import insert, update
from twisted.internet.task import Clock

from switchd.core.ratelimit import RateLimiter
from switchd.core.router import Router, load_candidates, load_members
from switchd.sip.transaction import Destination
from switchd.sip.trunks import load_settings
from switchd.store import models as m

T0 = 1_800_000_000
NOW = datetime.datetime.fromtimestamp(T0, datetime.timezone.utc)
STAMPS = {"created_at": NOW, "updated_at": NOW}


@pytest.fixture
def clock():
    c = Clock()
    c.advance(T0)
    return c


class FakeTrunks:
    """The trunk manager's view: every trunk usable unless marked down."""

    def __init__(self):
        self.down: set[int] = set()
        self.settings: dict = {}

    def is_usable(self, trunk_id):
        return trunk_id not in self.down


class World:
    """The provisioning chain and the carrier side, inserted with SQLAlchemy Core."""

    def __init__(self, database):
        self.database = database
        self.trunk_ids: dict[str, int] = {}

    def insert(self, table, **values):
        if "created_at" in table.c:
            values = {**STAMPS, **values} if "updated_at" in table.c else {"created_at": NOW, **values}
        return self.database.run_blocking(
            lambda conn: conn.execute(insert(table).values(**values).returning(table.c.id)).scalar_one()
        )

    def service(self, routing_group_id):
        customer = self.insert(m.customers, name="c", status="active")
        account = self.insert(m.accounts, customer_id=customer, currency="EUR", balance=0, credit_limit=0,
                              billing_type="prepaid", status="active")
        plan = self.insert(m.tariff_plans, name=f"plan-{account}", currency="EUR")
        return self.insert(m.services, account_id=account, type="sip_telephony", tariff_plan_id=plan,
                           routing_group_id=routing_group_id, distribution_priority=0, periodic_fee=0,
                           fee_period="none", status="active")

    def trunk(self, name, service_id, enabled=True, **rules):
        trunk_id = self.insert(m.trunks, name=name, host=f"{name}.example.net", port=5060, transport="udp",
                               enabled=enabled)
        self.trunk_ids[name] = trunk_id
        self.connection(trunk_id, service_id, **rules)
        return trunk_id

    def connection(self, trunk_id, service_id, **rules):
        return self.insert(m.sip_connections, service_id=service_id, trunk_id=trunk_id, auth_type="ip",
                           cps_limit=0, call_limit=0, strip_digits=rules.get("strip", 0),
                           add_prefix=rules.get("add", ""), e164=rules.get("e164", False))

    def member(self, group, trunk_id=None, smpp_link_id=None, priority=0, weight=100, prefixes=None):
        return self.insert(m.routing_group_members, routing_group_id=group, trunk_id=trunk_id,
                           smpp_link_id=smpp_link_id, priority=priority, weight=weight, prefixes=prefixes)


@pytest.fixture
def world(database):
    """Service ``service_id`` routes through group ``group``:

    - ``uk`` (priority 10, prefixes 44), ``any`` (priority 10, every number),
      ``backup`` (priority 5, weight 0), ``ldn`` (priority 10, prefix 4420);
    - ``off`` (priority 99, trunk disabled), ``bare`` (priority 99, trunk
      without a SIP connection), an SMPP link (priority 99);
    - ``shared`` (priority 1) has two SIP connections: one of another service
      (lower id) and one of this service, whose number rules apply.
    """
    w = World(database)
    w.group = w.insert(m.routing_groups, name="main")
    other_group = w.insert(m.routing_groups, name="other")
    w.other_service = w.service(other_group)
    w.service_id = w.service(w.group)
    sid = w.service_id
    w.member(w.group, w.trunk("uk", sid, strip=2, e164=True), priority=10, prefixes="44")
    w.member(w.group, w.trunk("any", sid, add="00"), priority=10)
    w.member(w.group, w.trunk("backup", sid), priority=5, weight=0)
    w.member(w.group, w.trunk("ldn", sid, e164=True), priority=10, prefixes="33; 4420")
    w.member(w.group, w.trunk("off", sid, enabled=False), priority=99)
    bare = w.insert(m.trunks, name="bare", host="bare.example.net", port=5060, transport="udp", enabled=True)
    w.member(w.group, bare, priority=99)
    link = w.insert(m.smpp_links, name="sms", enabled=True, host="smsc.example.net", port=2775)
    w.member(w.group, smpp_link_id=link, priority=99)
    shared = w.insert(m.trunks, name="shared", host="shared.example.net", port=5061, transport="tls", enabled=True)
    w.trunk_ids["shared"] = shared
    w.connection(shared, w.other_service, add="7")
    w.connection(shared, sid, add="8")
    w.member(w.group, shared, priority=1)
    # The other group routes to "any" only.
    w.member(other_group, w.trunk_ids["any"])
    return w


def make_router(database, clock, trunks=None, **kw):
    return Router(database, clock, RateLimiter(clock), trunks or FakeTrunks(), rng=random.Random(5), **kw)


def routed(router, service_id, callee):
    got = []
    router.route(service_id, callee).addCallbacks(got.append, got.append)
    assert len(got) == 1, "the synchronous database answers at once"
    return got[0]


def test_route_orders_by_priority_prefix_and_weight(database, clock, world):
    router = make_router(database, clock)
    got = routed(router, world.service_id, "004420712345")  # UK prefixes do not match a leading 00
    assert [c.name for c in got] == ["any", "backup", "shared"]
    got = routed(router, world.service_id, "+442071234567")
    assert [c.name for c in got] == ["ldn", "uk", "any", "backup", "shared"]
    assert [c.matched_prefix for c in got] == ["4420", "44", "", "", ""]
    assert [c.number for c in got] == ["+442071234567", "+2071234567", "00442071234567", "442071234567",
                                       "8442071234567"]
    ldn = got[0]
    assert ldn.trunk_id == world.trunk_ids["ldn"]
    assert ldn.destination == Destination("udp", "ldn.example.net", 5060)
    assert (ldn.priority, ldn.weight) == (10, 100)
    assert got[-1].destination == Destination("tls", "shared.example.net", 5061)


def test_prefix_filter(database, clock, world):
    router = make_router(database, clock)
    assert [c.name for c in routed(router, world.service_id, "33612345678")] == ["ldn", "any", "backup", "shared"]
    assert [c.name for c in routed(router, world.service_id, "4930123")] == ["any", "backup", "shared"]


def test_shared_trunk_uses_the_connection_of_the_service_else_the_lowest_id(database, world):
    mine = {mb.name: mb for mb in database.run_blocking(load_members, world.service_id)}
    assert mine["shared"].add_prefix == "8"
    # The other service has no connection to "shared": a group routing to it
    # takes the connection with the lowest id.
    group = world.insert(m.routing_groups, name="third")
    third = world.service(group)
    world.member(group, world.trunk_ids["shared"])
    [shared] = database.run_blocking(load_candidates, third, "123", random.Random(1))
    assert shared.number == "7123"
    assert shared.connection_id < mine["shared"].connection_id


def test_unusable_trunks_are_skipped(database, clock, world):
    trunks = FakeTrunks()
    trunks.down = {world.trunk_ids["ldn"], world.trunk_ids["any"]}
    router = make_router(database, clock, trunks)
    assert [c.name for c in routed(router, world.service_id, "442071234567")] == ["uk", "backup", "shared"]
    trunks.down.clear()  # back up: no need to wait for the cache
    assert len(routed(router, world.service_id, "442071234567")) == 5


def test_weights_split_between_equal_members(database, clock, world):
    group = world.insert(m.routing_groups, name="split")
    service = world.service(group)
    world.member(group, world.trunk("a", service), weight=3)
    world.member(group, world.trunk("b", service), weight=1)
    router = make_router(database, clock)
    draws = 2000
    firsts = [routed(router, service, "1")[0].name for _ in range(draws)]
    assert abs(firsts.count("a") / draws - 0.75) < 0.04


def test_service_without_group_or_members(database, clock, world):
    router = make_router(database, clock)
    lonely = world.service(None)
    assert routed(router, lonely, "123") == []
    empty = world.service(world.insert(m.routing_groups, name="empty"))
    assert routed(router, empty, "123") == []
    assert routed(router, 999_999, "123") == []


def test_cache_applies_changes_after_cache_seconds(database, clock, world):
    router = make_router(database, clock, cache_seconds=5)
    before = [c.name for c in routed(router, world.service_id, "4930123")]
    assert before == ["any", "backup", "shared"]
    database.run_blocking(lambda conn: conn.execute(
        update(m.trunks).where(m.trunks.c.id == world.trunk_ids["any"]).values(enabled=False)))
    database.run_blocking(lambda conn: conn.execute(
        update(m.routing_group_members)
        .where(m.routing_group_members.c.trunk_id == world.trunk_ids["backup"])
        .values(priority=50)))
    clock.advance(4.9)
    assert [c.name for c in routed(router, world.service_id, "4930123")] == before
    clock.advance(0.1)
    assert [c.name for c in routed(router, world.service_id, "4930123")] == ["backup", "shared"]


def test_limits_from_the_database_settings(database, clock, world):
    trunk = world.trunk_ids["uk"]
    database.run_blocking(lambda conn: conn.execute(
        update(m.sip_connections).where(m.sip_connections.c.trunk_id == trunk).values(cps_limit=2, call_limit=1)))
    router = make_router(database, clock)
    router.configure_limits(database.run_blocking(load_settings))
    assert router.limits[trunk] == (2, 1)
    [uk] = [c for c in routed(router, world.service_id, "4411") if c.name == "uk"]
    lease = router.acquire(uk)
    assert router.acquire(uk).reason == "trunk-calls"
    lease.release()
    second = router.acquire(uk)  # the slot is free again, and a second token is left
    assert second.kind == "trunk-calls"
    second.release()
    assert router.acquire(uk).reason == "trunk-cps"
