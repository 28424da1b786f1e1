"""The authorisation cache: the same decisions as rating.authorize_call, from
memory, with reads driven by hand and time by task.Clock."""

from __future__ import annotations

import datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from switchd.billing import rating
from switchd.billing.authcache import AuthorizationCache
from switchd.billing.rating import PlanRates, Rate, Refusal

NOW = datetime.datetime(2026, 11, 22, tzinfo=datetime.timezone.utc)
RATE = Rate(7, "44", Decimal("0.10"), Decimal("0"), 60, 60, "EUR")
PLAN = PlanRates((1, "t", "t"), {"44": RATE})


def terms(**changes):
    values = dict(service_status="active", account_status="active", customer_status="active", tariff_plan_id=7,
                  account_id=3, billing_type="prepaid", currency="EUR", balance=Decimal("1.00"),
                  credit_limit=Decimal("0"), call_limit=0, cps_limit=0)
    values.update(changes)
    return SimpleNamespace(**values)


class Reads:
    """Database.read by hand: each read waits until answered."""

    def __init__(self) -> None:
        self.pending: list[tuple[object, tuple, Deferred]] = []

    def __call__(self, fn, *args):
        d: Deferred = Deferred()
        self.pending.append((fn, args, d))
        return d

    def answer(self, fn, value) -> tuple:
        for index, (f, args, d) in enumerate(self.pending):
            if f is fn:
                del self.pending[index]
                d.callback(value)
                return args
        raise AssertionError(f"no read of {fn.__name__} pending: {self.pending}")

    def kinds(self) -> list[str]:
        return [fn.__name__ for fn, _, _ in self.pending]


@pytest.fixture
def world():
    clock, reads, registry = Clock(), Reads(), CollectorRegistry()
    return SimpleNamespace(clock=clock, reads=reads, registry=registry,
                           cache=AuthorizationCache(reads, clock, registry=registry))


def results(d: Deferred) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


def lookups(world, kind, result) -> float:
    value = world.registry.get_sample_value("switchd_authorization_cache_lookups_total",
                                            {"kind": kind, "result": result})
    return value or 0.0


def test_a_miss_reads_terms_then_the_rate_and_decides_like_authorize_call(world):
    got = results(world.cache.authorize(1, "+44 20 7946 0000", NOW))
    assert world.reads.kinds() == ["service_terms"]
    assert world.reads.answer(rating.service_terms, terms()) == (1,)
    assert world.reads.answer(rating.load_plan, PLAN) == (7, 100_000, None)
    [auth] = got
    assert auth.account_id == 3 and auth.rate == RATE and auth.max_seconds == 600  # 1.00 EUR at 0.10/min
    # Cached now: the next call is decided without a read.
    again = results(world.cache.authorize(1, "442079460000", NOW))
    assert world.reads.pending == [] and again[0].max_seconds == 600
    assert lookups(world, "terms", "fresh") == 1 and lookups(world, "plans", "miss") == 1
    # Another number of the plan: no read either (longest prefix from memory).
    assert results(world.cache.authorize(1, "4420", NOW))[0].rate == RATE and world.reads.pending == []
    assert results(world.cache.authorize(1, "3312", NOW))[0].value.sip_status == 404


def test_refusals_are_those_of_authorize_call(world):
    cases = [(None, 403, "unknown service"), (terms(account_status="blocked"), 403, "account blocked"),
             (terms(balance=Decimal("0.01")), 402, "insufficient funds")]
    for service_id, (row, status, reason) in enumerate(cases, start=1):
        got = results(world.cache.authorize(service_id, "4420", NOW))
        world.reads.answer(rating.service_terms, row)
        if row is not None and row.account_status == "active":
            if service_id == 3:
                world.reads.answer(rating.load_plan, PLAN)
        [failure] = got
        assert isinstance(failure.value, Refusal) and (failure.value.sip_status, failure.value.reason) == (status, reason)
    got = results(world.cache.authorize(9, "33", NOW))
    world.reads.answer(rating.service_terms, terms())
    assert got[0].value.sip_status == 404  # the plan is held: no rate for 33
    got = results(world.cache.authorize(9, "abc", NOW))  # terms cached; no digits: no rate read
    assert got[0].value.sip_status == 484 and world.reads.pending == []


def test_stale_terms_are_used_and_read_again_in_the_background_once(world):
    world.cache.authorize(1, "4420", NOW)
    world.reads.answer(rating.service_terms, terms())
    world.reads.answer(rating.load_plan, PLAN)
    world.clock.advance(1.5)  # older than fresh (1 s), younger than stale (30 s)
    first = results(world.cache.authorize(1, "4420", NOW))
    second = results(world.cache.authorize(1, "4420", NOW))
    assert first[0].max_seconds == 600 and second[0].max_seconds == 600  # no wait
    assert world.reads.kinds() == ["service_terms"]  # one refresh for both
    world.reads.answer(rating.service_terms, terms(balance=Decimal("0.30")))
    assert results(world.cache.authorize(1, "4420", NOW))[0].max_seconds == 180


def test_terms_too_old_are_read_before_the_call_and_one_read_serves_all_waiting(world):
    world.cache.authorize(1, "4420", NOW)
    world.reads.answer(rating.service_terms, terms())
    world.reads.answer(rating.load_plan, PLAN)
    world.clock.advance(31)
    waiting = [results(world.cache.authorize(1, "4420", NOW)) for _ in range(3)]
    assert waiting == [[], [], []] and world.reads.kinds() == ["service_terms"]
    world.reads.answer(rating.service_terms, terms(balance=Decimal("0.20")))
    assert [w[0].max_seconds for w in waiting] == [120, 120, 120]


def test_clear_forgets_and_a_read_started_before_it_is_not_kept(world):
    world.cache.authorize(1, "4420", NOW)
    world.reads.answer(rating.service_terms, terms())
    world.reads.answer(rating.load_plan, PLAN)
    world.cache.clear()
    got = results(world.cache.authorize(1, "4420", NOW))
    world.cache.clear()  # a top-up lands while the read runs
    world.reads.answer(rating.service_terms, terms(balance=Decimal("0")))
    world.reads.answer(rating.load_plan, PLAN)
    assert got[0].value.sip_status == 402  # this call saw the old row, but...
    later = results(world.cache.authorize(1, "4420", NOW))
    assert world.reads.kinds() == ["service_terms"]  # ...it was not kept
    world.reads.answer(rating.service_terms, terms(balance=Decimal("5")))
    # (the rate was read after the second clear: it is kept)
    assert later[0].max_seconds == 3000


def test_a_failed_read_fails_the_waiting_calls_and_is_not_kept(world):
    got = results(world.cache.authorize(1, "4420", NOW))
    [(_, _, d)] = world.reads.pending
    world.reads.pending.clear()
    d.errback(RuntimeError("database down"))
    assert isinstance(got[0].value, RuntimeError)
    results(world.cache.authorize(1, "4420", NOW))
    assert world.reads.kinds() == ["service_terms"]


def test_a_plan_too_large_to_hold_is_looked_up_number_by_number():
    clock, reads = Clock(), Reads()
    cache = AuthorizationCache(reads, clock, max_rates=2)
    got = results(cache.authorize(1, "441", NOW))
    reads.answer(rating.service_terms, terms())
    reads.answer(rating.load_plan, PlanRates((500_000, "t", "t"), None))
    assert reads.answer(rating.find_rate, RATE) == (7, "441") and got[0].rate == RATE
    for number in ("442", "443"):
        got = results(cache.authorize(1, number, NOW))
        assert reads.answer(rating.find_rate, RATE) == (7, number) and got[0].rate == RATE
    # At most two numbers are kept, the oldest read going first.
    assert list(cache.rates.entries) == [(7, "442"), (7, "443")]
    assert results(cache.authorize(1, "443", NOW))[0].rate == RATE and reads.pending == []
    cache.authorize(1, "441", NOW)
    assert reads.kinds() == ["find_rate"]


def test_a_stale_plan_is_read_again_with_the_one_held():
    clock, reads = Clock(), Reads()
    cache = AuthorizationCache(reads, clock)
    cache.authorize(1, "441", NOW)
    reads.answer(rating.service_terms, terms())
    reads.answer(rating.load_plan, PLAN)
    clock.advance(11)  # rates are fresh for 10 s; the terms (1 s) are stale too
    assert results(cache.authorize(1, "441", NOW))[0].rate == RATE
    reads.answer(rating.service_terms, terms())
    assert reads.answer(rating.load_plan, PLAN) == (7, 100_000, PLAN)  # "has it changed since this one?"
