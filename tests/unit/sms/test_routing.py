"""Message routing without a database: sender ID and accepted number prefixes
(with the country code rule of seed 001), the order of links, link health,
the route cache."""

from __future__ import annotations

import random

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from switchd.core.ratelimit import RateLimiter
from switchd.core.router import (
    LinkMember,
    Router,
    country_code_length,
    order_message_candidates,
    parse_prefixes,
    prefix_accepts,
)


def member(member_id, link_id=None, *, priority=0, weight=100, prefixes="", senders="", numbers="", mode="transceiver"):
    link_id = link_id if link_id is not None else member_id
    return LinkMember(member_id=member_id, link_id=link_id, name=f"l{link_id}", mode=mode, priority=priority,
                      weight=weight, prefixes=parse_prefixes(prefixes), sender_prefixes=parse_prefixes(senders),
                      number_prefixes=parse_prefixes(numbers))


@pytest.mark.parametrize("digits,length", [
    ("15551234567", 1), ("79161234567", 1), ("447700900001", 2), ("4930123", 2), ("8613800138000", 2),
    ("353861234567", 3), ("971501234567", 3), ("2125", 3), ("", 3),
])
def test_country_codes(digits, length):
    assert country_code_length(digits) == length


@pytest.mark.parametrize("prefixes,address,accepted", [
    ((), "anything", True),
    (("123",), "+86123456789", True),  # seed 001's example: after the country code
    (("123",), "123456", True),
    (("123",), "+86321456789", False),
    (("7700",), "447700900001", True),
    (("7700",), "4477", False),
    (("acme",), "ACMEBank", True),  # sender IDs: letters, without case
    (("acme",), "BankACME", False),
    (("44", "33"), "+33612345678", True),
])
def test_link_prefixes(prefixes, address, accepted):
    assert prefix_accepts(prefixes, address) is accepted


def names(candidates):
    return [c.name for c in candidates]


def test_message_candidates_are_ordered_like_calls_and_filtered_by_the_link():
    members = [
        member(1, priority=10),
        member(2, priority=10, prefixes="44"),
        member(3, priority=20, numbers="7800"),
        member(4, priority=30, senders="BANK"),
        member(5, priority=5),
        member(6, 1, priority=1),  # link 1 again, lower: tried once, at its best place
    ]
    rng = random.Random(1)
    assert names(order_message_candidates(members, "ACME", "447700900001", rng)) == ["l2", "l1", "l5"]
    assert names(order_message_candidates(members, "ACME", "447800900001", rng)) == ["l3", "l2", "l1", "l5"]
    assert names(order_message_candidates(members, "BANKX", "33123", rng)) == ["l4", "l1", "l5"]


def test_weights_split_equal_links():
    members = [member(1, weight=300), member(2, weight=100), member(3, weight=0)]
    rng = random.Random(7)
    firsts = [order_message_candidates(members, "A", "44", rng)[0].name for _ in range(2000)]
    assert 0.70 < firsts.count("l1") / 2000 < 0.80 and "l3" not in firsts
    assert names(order_message_candidates(members, "A", "44", rng))[-1] == "l3"


class FakeDb:
    def __init__(self, members):
        self.members = members
        self.reads = 0
        self.pending: list[Deferred] = []

    def run(self, fn, *args):
        self.reads += 1
        assert fn.__name__ == "load_link_members"
        return succeed(self.members)


class Links:
    def __init__(self, bound):
        self.bound = set(bound)

    def is_bound(self, link_id):
        return link_id in self.bound


def route(router, *args, **kwargs):
    out: list = []
    router.route_message(*args, **kwargs).addBoth(out.append)
    return out[0]


def test_only_bound_links_are_offered_unless_asked_for_every_link():
    clock = Clock()
    db = FakeDb([member(1, priority=2), member(2, priority=1)])
    router = Router(db, clock, RateLimiter(clock), trunks=None, links=Links({2}), rng=random.Random(0))
    assert names(route(router, 7, "ACME", "44")) == ["l2"]
    assert names(route(router, 7, "ACME", "44", include_down=True)) == ["l1", "l2"]
    router.set_links(None)
    assert route(router, 7, "ACME", "44") == []
    assert db.reads == 1  # cached for cache_seconds
    clock.advance(5)
    route(router, 7, "ACME", "44")
    assert db.reads == 2
    router.forget(7)
    route(router, 7, "ACME", "44")
    assert db.reads == 3
