"""The router without a database: number rules, ordering, limits, failover, the cache."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from switchd.core.ratelimit import RateLimiter
from switchd.core.router import (
    FAILOVER_CODES,
    Candidate,
    Lease,
    Member,
    Refused,
    Router,
    give_up,
    order_candidates,
    parse_prefixes,
    retry_after,
    rewrite_number,
)
from switchd.sip.transaction import Destination


def member(member_id, trunk_id=None, *, priority=0, weight=100, prefixes="", strip=0, add="", e164=False):
    trunk_id = trunk_id if trunk_id is not None else member_id
    return Member(
        member_id=member_id, trunk_id=trunk_id, connection_id=100 + trunk_id, name=f"t{trunk_id}",
        transport="UDP", host=f"192.0.2.{trunk_id}", port=5060, priority=priority, weight=weight,
        prefixes=parse_prefixes(prefixes), strip_digits=strip, add_prefix=add, e164=e164,
    )


def names(candidates):
    return [c.name for c in candidates]


# -- number rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "strip", "add", "e164", "expected"),
    [
        ("+441234567", 0, "", True, "+441234567"),
        ("+441234567", 0, "", False, "441234567"),
        ("00441234567", 2, "", True, "+441234567"),
        ("01234567", 1, "44", True, "+441234567"),
        ("+441234567", 2, "0", False, "01234567"),  # '+' aside, then strip "44"
        ("1234", 0, "9", False, "91234"),
        ("1234", 9, "55", False, "55"),  # strips everything there is
        ("1234", -3, "", False, "1234"),
        ("1234", 0, "+49", True, "+491234"),  # never a double '+'
        ("1234", 0, "+49", False, "491234"),
        ("", 0, "", True, "+"),
    ],
)
def test_rewrite_number(number, strip, add, e164, expected):
    assert rewrite_number(number, strip, add, e164) == expected


def test_parse_prefixes():
    assert parse_prefixes(None) == ()
    assert parse_prefixes("") == ()
    assert parse_prefixes(" ; ;") == ()
    assert parse_prefixes("44; +49,447;44") == ("44", "49", "447")


# -- ordering ------------------------------------------------------------------------------


def test_priority_first_then_longest_prefix():
    rows = [
        member(1, priority=5),
        member(2, priority=10),
        member(3, priority=10, prefixes="44"),
        member(4, priority=10, prefixes="4420;44"),
        member(5, priority=20, prefixes="33"),  # does not carry UK numbers
    ]
    got = order_candidates(rows, "+442071234567", random.Random(1))
    assert names(got) == ["t4", "t3", "t2", "t1"]
    assert [c.matched_prefix for c in got] == ["4420", "44", "", ""]
    assert [c.priority for c in got] == [10, 10, 10, 5]
    # A number the prefixed members do not carry goes to the catch-alls only.
    assert names(order_candidates(rows, "4930123", random.Random(1))) == ["t2", "t1"]
    assert names(order_candidates(rows, "33612345678", random.Random(1))) == ["t5", "t2", "t1"]


def test_candidates_carry_destination_and_rewritten_number():
    rows = [member(1, strip=2, add="", e164=True), member(2, add="0", e164=False, priority=-1)]
    first, second = order_candidates(rows, "0049301234", random.Random(1))
    assert first == Candidate(trunk_id=1, connection_id=101, name="t1", destination=Destination("udp", "192.0.2.1", 5060),
                              number="+49301234", priority=0, weight=100, matched_prefix="")
    assert second.number == "00049301234"


def test_a_trunk_listed_twice_is_tried_once_at_its_best_place():
    rows = [member(1, trunk_id=7, priority=1), member(2, trunk_id=8, priority=5), member(3, trunk_id=7, priority=9, prefixes="44")]
    got = order_candidates(rows, "4411", random.Random(1))
    assert [(c.trunk_id, c.priority, c.matched_prefix) for c in got] == [(7, 9, "44"), (8, 5, "")]


def test_weights_split_traffic():
    rng = random.Random(20261121)
    rows = [member(1, weight=300), member(2, weight=100)]
    draws = 4000
    first = Counter(order_candidates(rows, "123", rng)[0].name for _ in range(draws))
    assert abs(first["t1"] / draws - 0.75) < 0.03
    # The other one always follows: a failed attempt moves to it.
    assert all(len(order_candidates(rows, "123", rng)) == 2 for _ in range(10))


def test_three_weights_and_equal_weights():
    rng = random.Random(7)
    rows = [member(1, weight=50), member(2, weight=30), member(3, weight=20)]
    draws = 6000
    first = Counter(order_candidates(rows, "1", rng)[0].name for _ in range(draws))
    for name, share in (("t1", 0.5), ("t2", 0.3), ("t3", 0.2)):
        assert abs(first[name] / draws - share) < 0.03


def test_weight_zero_comes_last_within_its_rank():
    rng = random.Random(3)
    rows = [member(1, weight=0), member(2, weight=1), member(3, weight=0), member(4, weight=1000), member(5, priority=-1)]
    for _ in range(200):
        got = names(order_candidates(rows, "1", rng))
        assert sorted(got[:2]) == ["t2", "t4"]
        assert got[2:] == ["t1", "t3", "t5"]  # weight 0 in the order added, then lower priority


def test_default_rng_is_the_system_one():
    rows = [member(1), member(2)]
    assert sorted(names(order_candidates(rows, "1"))) == ["t1", "t2"]


# -- limits ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    trunk_id: int
    cps_limit: int = 0
    call_limit: int = 0
    connection_id: int = 0


class Trunks:
    def __init__(self, settings=(), down=()):
        self.settings = {s.connection_id or i: s for i, s in enumerate(settings, 1)}
        self.down = set(down)

    def is_usable(self, trunk_id):
        return trunk_id not in self.down


def candidate(trunk_id=1):
    return Candidate(trunk_id, 100 + trunk_id, f"t{trunk_id}", Destination("udp", "192.0.2.1", 5060), "1", 0, 100, "")


@pytest.fixture
def clock():
    c = Clock()
    c.advance(1_800_000_000)
    return c


def make_router(clock, settings=(), db=None, **kw):
    limiter = RateLimiter(clock)
    return Router(db, clock, limiter, Trunks(settings), **kw)


def test_cps_limit_allows_n_per_second_then_refuses_with_retry_after(clock):
    router = make_router(clock, [Settings(1, cps_limit=3)])
    for _ in range(3):
        lease = router.acquire(candidate())
        assert isinstance(lease, Lease)
        lease.release()
    refused = router.acquire(candidate())
    assert refused == Refused("trunk-cps", pytest.approx(1 / 3))
    assert retry_after([refused]) == 1
    clock.advance(0.34)  # a little over a third of a second: one new token
    assert isinstance(router.acquire(candidate()), Lease)
    assert isinstance(router.acquire(candidate(2)), Lease)  # other trunks are not limited


def test_call_limit_gate_and_idempotent_release(clock):
    router = make_router(clock, [Settings(1, call_limit=2)])
    first, second = router.acquire(candidate()), router.acquire(candidate())
    assert isinstance(first, Lease) and isinstance(second, Lease)
    assert router.acquire(candidate()) == Refused("trunk-calls", 0.0)
    first.release()
    first.release()  # a second release frees nothing more
    assert first.released
    third = router.acquire(candidate())
    assert isinstance(third, Lease)
    assert router.acquire(candidate()) == Refused("trunk-calls", 0.0)
    gate = router.limiter.gate("trunk-calls", 1)
    assert gate.active == 2


def test_a_call_refused_by_its_call_limit_costs_no_cps_token_and_vice_versa(clock):
    router = make_router(clock, [Settings(1, cps_limit=1, call_limit=1)])
    lease = router.acquire(candidate())
    assert router.acquire(candidate()).reason == "trunk-calls"
    lease.release()
    assert router.acquire(candidate()).reason == "trunk-cps"
    assert router.limiter.gate("trunk-calls", 1).active == 0  # the CPS refusal gave its slot back
    clock.advance(1)
    assert isinstance(router.acquire(candidate()), Lease)


def test_configure_limits_takes_effect_without_a_restart(clock):
    router = make_router(clock)
    assert all(isinstance(router.acquire(candidate()), Lease) for _ in range(50))  # no limits yet
    router.configure_limits([Settings(1, cps_limit=2, call_limit=100)])
    clock.advance(1)
    assert [isinstance(router.acquire(candidate()), Lease) for _ in range(3)] == [True, True, False]
    router.configure_limits([Settings(1, cps_limit=10, call_limit=100)])
    clock.advance(1)
    assert sum(isinstance(router.acquire(candidate()), Lease) for _ in range(12)) == 10
    # The gate already holds 52 calls: a lower call limit refuses new ones at once.
    router.configure_limits([Settings(1, cps_limit=0, call_limit=52)])
    clock.advance(1)
    assert router.acquire(candidate()).reason == "trunk-calls"
    # 0 is "no limit".
    router.configure_limits([Settings(1, cps_limit=0, call_limit=0)])
    assert all(isinstance(router.acquire(candidate()), Lease) for _ in range(100))
    assert router.limits == {1: (0, 0)}


def test_a_trunk_with_several_connections_takes_the_strictest_non_zero_limit(clock):
    router = make_router(clock)
    router.configure_limits([Settings(1, 0, 5, 11), Settings(1, 4, 0, 12), Settings(1, 8, 3, 13)])
    assert router.limits == {1: (4, 3)}


def test_a_trunk_gone_from_the_settings_loses_its_limits(clock):
    router = make_router(clock, [Settings(1, cps_limit=1, call_limit=1)])
    assert router.limits == {1: (1, 1)}  # taken from the trunk manager at once
    assert isinstance(router.acquire(candidate()), Lease)
    router.configure_limits([])
    assert router.limits == {}
    assert all(isinstance(router.acquire(candidate()), Lease) for _ in range(5))


def test_account_call_limit(clock):
    router = make_router(clock)
    first = router.acquire_account(42, 1)
    assert isinstance(first, Lease)
    assert router.acquire_account(42, 1) == Refused("customer-calls", 1.0)
    assert isinstance(router.acquire_account(43, 1), Lease)
    first.release()
    assert isinstance(router.acquire_account(42, 1), Lease)
    assert isinstance(router.acquire_account(42, 0), Lease)  # 0: no limit


def test_retry_after_and_give_up():
    assert retry_after([Refused("trunk-cps", 0.2), Refused("trunk-cps", 1.5)]) == 1
    assert retry_after([Refused("trunk-cps", 2.3), Refused("trunk-cps", 4)]) == 3
    assert retry_after([Refused("trunk-cps", 1.0000000001)]) == 1
    assert retry_after([Refused("trunk-calls")]) == 1
    assert retry_after([]) == 1
    assert Router.retry_after([Refused("trunk-cps", 0.5)]) == 1  # as the B2BUA calls it
    assert give_up(None, [Refused("trunk-cps", 2.5)]) == (503, 3)
    assert give_up(502, [Refused("trunk-cps", 2.5)]) == (502, None)
    assert give_up(None, []) == (503, None)


# -- failover ------------------------------------------------------------------------------


def test_failover_codes(clock):
    router = make_router(clock)
    assert {code for code in range(300, 700) if router.is_failover(code)} == FAILOVER_CODES
    for code in (404, 486, 603, 600, 200, 180, 403):
        assert not router.is_failover(code)
    custom = make_router(clock, failover_codes={403, 404, 486, 503, 603})
    assert [code for code in (403, 404, 486, 503, 603, 408) if custom.is_failover(code)] == [403, 503]


# -- routes and the cache ------------------------------------------------------------------


class FakeDatabase:
    """Answers ``run(load_members, service_id)`` with Deferreds the test fires."""

    def __init__(self):
        self.pending: list[tuple[int, Deferred]] = []
        self.members: dict[int, list[Member]] = {}
        self.immediate = True

    def run(self, fn, service_id):
        if self.immediate:
            return succeed(list(self.members.get(service_id, [])))
        d = Deferred()
        self.pending.append((service_id, d))
        return d


def test_route_filters_unusable_trunks_and_caches(clock):
    db = FakeDatabase()
    db.members[1] = [member(1, priority=2), member(2, priority=1), member(3)]
    router = Router(db, clock, RateLimiter(clock), Trunks(down={2}), cache_seconds=5, rng=random.Random(1))
    got = []
    router.route(1, "+4411").addCallback(got.append)
    assert names(got[0]) == ["t1", "t3"]
    db.members[1] = [member(3)]
    router.route(1, "4411").addCallback(got.append)
    assert names(got[1]) == ["t1", "t3"]  # cached
    clock.advance(5)
    router.route(1, "4411").addCallback(got.append)
    assert names(got[2]) == ["t3"]
    router.trunks.down.add(3)
    router.route(1, "4411").addCallback(got.append)
    assert got[3] == []  # usability is checked on every call, not cached


def test_concurrent_misses_share_one_read(clock):
    db = FakeDatabase()
    db.immediate = False
    router = Router(db, clock, RateLimiter(clock), Trunks(), rng=random.Random(1))
    got = []
    for _ in range(3):
        router.route(9, "1").addCallback(got.append)
    assert len(db.pending) == 1 and got == []
    db.pending.pop()[1].callback([member(1)])
    assert [names(g) for g in got] == [["t1"]] * 3


def test_a_database_failure_uses_the_last_known_routes(clock):
    db = FakeDatabase()
    db.immediate = False
    router = Router(db, clock, RateLimiter(clock), Trunks(), cache_seconds=5, rng=random.Random(1))
    failures = []
    router.route(9, "1").addErrback(failures.append)
    db.pending.pop()[1].errback(Failure(RuntimeError("database down")))
    assert len(failures) == 1 and failures[0].check(RuntimeError)  # nothing known yet
    router.route(9, "1")
    db.pending.pop()[1].callback([member(1)])
    clock.advance(6)
    got = []
    router.route(9, "1").addCallback(got.append)
    db.pending.pop()[1].errback(Failure(RuntimeError("database down")))
    assert names(got[0]) == ["t1"]
    router.route(9, "1")  # still stale: the next call reads again
    assert len(db.pending) == 1


def test_forget_and_sweep(clock):
    db = FakeDatabase()
    db.members[1] = [member(1)]
    db.members[2] = [member(2)]
    router = Router(db, clock, RateLimiter(clock), Trunks(), cache_seconds=5)
    router.route(1, "1")
    router.route(2, "1")
    assert set(router._cache) == {1, 2}
    router.forget(1)
    assert set(router._cache) == {2}
    clock.advance(400)
    router.route(1, "1")  # the sweep forgets service 2, unused for 400 s
    assert set(router._cache) == {1}
    router.forget()
    assert router._cache == {}
