"""The central router: which trunks a call (or links a message) goes to, in which order.

A customer's service names a routing group; the group's members name trunks,
each with a distribution priority, a weight and the destination prefixes it
carries. For a called number the router returns the candidates to try in
order (``Router.route``); the B2BUA then asks for a slot on each candidate
before sending the INVITE (``Router.acquire``), releases it when the call
ends, and moves to the next candidate when the trunk answers with a failover
code (``Router.is_failover``).

Ordering (``order_candidates``, pure and tested without a database):

1. members whose prefixes do not match the number are dropped (a member
   without prefixes carries every number);
2. higher ``priority`` first;
3. among equal priorities, the member whose matching prefix is longest first
   (a member without prefixes counts as a match of length 0);
4. among members equal on both, a weighted random order: each place is drawn
   with probability ``weight / sum(weights left)``; members of weight 0 get no
   share and come after every weighted member of the same rank, in the order
   they were added;
5. a trunk that is a member twice is tried once, at its best place.

Limits are per trunk and live in the node's ``RateLimiter``: a token bucket
``("trunk-cps", trunk_id)`` for calls per second and a gate
``("trunk-calls", trunk_id)`` for simultaneous calls. ``configure_limits`` is
called with the trunk settings on every reload, so a change made through the
API applies without a restart. Time comes from the injected clock and
randomness from ``secrets``.

Messages are routed the same way (``Router.route_message``): the members of
the service's routing group that name an SMPP link, ordered by the same
rules against the destination number, keeping only links that can send
(enabled, not receive-only), whose sender ID prefixes accept the message's
source and whose accepted number prefixes accept its destination, and that
are bound to their SMSC now.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..sip.transaction import Destination
from ..store.models import (
    routing_group_members,
    services,
    sip_connections,
    smpp_links,
    trunks,
)
from .ratelimit import Gate, RateLimiter

#: SIP final responses after which the next candidate is tried.
FAILOVER_CODES: frozenset[int] = frozenset({408, 480, 500, 502, 503, 504})

#: Answers that are always passed back to the caller: the callee is busy
#: (486) or does not exist (404); another trunk would say the same.
NEVER_FAILOVER: frozenset[int] = frozenset({404, 486})

#: How long a service's routes unused are kept in the cache (as a fallback
#: when the database cannot be read) before they are forgotten.
_FORGET_SECONDS = 300.0


# -- number rules ------------------------------------------------------------------


def rewrite_number(number: str, strip_digits: int, add_prefix: str, e164: bool) -> str:
    """The called number as a trunk wants it, by its SIP connection's number rules.

    In this order:

    1. a leading ``+`` is set aside;
    2. the first ``strip_digits`` characters of what is left are removed
       (all of them if the number is shorter; a negative count removes none);
    3. ``add_prefix`` is put in front (a ``+`` it starts with is dropped);
    4. with ``e164`` the result is ``+`` followed by it; without, it carries
       no ``+``.

    ``rewrite_number("0044201234", 2, "", True) == "+44201234"``;
    ``rewrite_number("+44201234", 2, "0", False) == "0201234"``.
    """
    digits = number.removeprefix("+")
    digits = digits[max(0, strip_digits):]
    body = (add_prefix + digits).lstrip("+")
    return "+" + body if e164 else body


# -- members and candidates ----------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One routing group member with its trunk and SIP connection, as stored.

    What is cached per service; the number and the order are worked out per
    call by ``order_candidates``.
    """

    member_id: int
    trunk_id: int
    connection_id: int
    name: str
    transport: str
    host: str
    port: int
    priority: int
    weight: int
    prefixes: tuple[str, ...]
    strip_digits: int
    add_prefix: str
    e164: bool

    @property
    def destination(self) -> Destination:
        return Destination(self.transport.lower(), self.host, self.port)


@dataclass(frozen=True)
class Candidate:
    """A trunk to try for one call, with the number to send it."""

    trunk_id: int
    connection_id: int
    name: str
    destination: Destination
    number: str  # the called number after the connection's number rules
    priority: int
    weight: int
    matched_prefix: str  # the member prefix that matched ("" for a catch-all member)


def parse_prefixes(value: str | None) -> tuple[str, ...]:
    """A member's prefixes: ``;``-separated (``,`` accepted), blanks and ``+`` ignored."""
    items = (item.strip().lstrip("+") for item in (value or "").replace(",", ";").split(";"))
    return tuple(dict.fromkeys(item for item in items if item))


def load_members(conn: Connection, service_id: int) -> list[Member]:
    """The call members of the service's routing group, in the order they were added.

    Only members naming a trunk (not an SMPP link), whose trunk is enabled and
    has a SIP connection. A trunk's number rules come from one of its SIP
    connections: the one belonging to this service if there is one, else the
    one with the lowest id. A service without a routing group has no members.
    """
    rows = conn.execute(
        select(
            routing_group_members.c.id.label("member_id"),
            routing_group_members.c.priority,
            routing_group_members.c.weight,
            routing_group_members.c.prefixes,
            trunks.c.id.label("trunk_id"),
            trunks.c.name,
            trunks.c.transport,
            trunks.c.host,
            trunks.c.port,
            sip_connections.c.id.label("connection_id"),
            sip_connections.c.service_id.label("connection_service_id"),
            sip_connections.c.strip_digits,
            sip_connections.c.add_prefix,
            sip_connections.c.e164,
        )
        .select_from(
            services.join(
                routing_group_members,
                routing_group_members.c.routing_group_id == services.c.routing_group_id,
            )
            .join(trunks, trunks.c.id == routing_group_members.c.trunk_id)
            .join(sip_connections, sip_connections.c.trunk_id == trunks.c.id)
        )
        .where(services.c.id == service_id, trunks.c.enabled.is_(True))
        .order_by(routing_group_members.c.id, sip_connections.c.id)
    ).all()
    chosen: dict[int, Any] = {}
    for row in rows:  # by member, then connection id: the first is the lowest id
        best = chosen.get(row.member_id)
        if best is None or (
            row.connection_service_id == service_id and best.connection_service_id != service_id
        ):
            chosen[row.member_id] = row
    return [
        Member(
            member_id=row.member_id,
            trunk_id=row.trunk_id,
            connection_id=row.connection_id,
            name=row.name,
            transport=row.transport,
            host=row.host,
            port=row.port,
            priority=row.priority,
            weight=row.weight,
            prefixes=parse_prefixes(row.prefixes),
            strip_digits=row.strip_digits,
            add_prefix=row.add_prefix or "",
            e164=bool(row.e164),
        )
        for row in chosen.values()
    ]


class RandomSource(Protocol):
    """What ``order_candidates`` draws from: ``random.Random`` or ``secrets.SystemRandom``."""

    def random(self) -> float: ...


class Ranked(Protocol):
    """What the ordering reads of a member (``Member`` and ``LinkMember`` have it)."""

    @property
    def member_id(self) -> int: ...

    @property
    def priority(self) -> int: ...

    @property
    def weight(self) -> int: ...

    @property
    def prefixes(self) -> tuple[str, ...]: ...


R = TypeVar("R", bound=Ranked)


def _matched_prefix(member: Ranked, digits: str) -> str | None:
    """The longest of the member's prefixes that starts ``digits``; None if none does."""
    if not member.prefixes:
        return ""
    matches = [prefix for prefix in member.prefixes if digits.startswith(prefix)]
    return max(matches, key=len) if matches else None


def _weighted_order(members: list[R], rng: RandomSource) -> list[R]:
    """Weighted random order without replacement; weight 0 after, in input order."""
    weighted = [m for m in members if m.weight > 0]
    unweighted = [m for m in members if m.weight <= 0]
    ordered: list[R] = []
    while weighted:
        total = sum(m.weight for m in weighted)
        point = rng.random() * total
        index = len(weighted) - 1  # floating-point safety: the last one
        for i, m in enumerate(weighted):
            point -= m.weight
            if point < 0:
                index = i
                break
        ordered.append(weighted.pop(index))
    return ordered + unweighted


def order_candidates(
    rows: Iterable[Member], callee: str, rng: RandomSource | None = None
) -> list[Candidate]:
    """The candidates for ``callee`` in the order to try them (see the module doc).

    Prefixes are matched against ``callee`` without its leading ``+``, before
    number rules; each candidate's ``number`` is ``callee`` rewritten by its
    connection's rules. ``rng`` defaults to ``secrets.SystemRandom()``.
    """
    return [
        Candidate(
            trunk_id=member.trunk_id,
            connection_id=member.connection_id,
            name=member.name,
            destination=member.destination,
            number=rewrite_number(callee, member.strip_digits, member.add_prefix, member.e164),
            priority=member.priority,
            weight=member.weight,
            matched_prefix=matched,
        )
        for member, matched in rank_members(rows, callee, lambda m: m.trunk_id, rng)
    ]


def rank_members(
    rows: Iterable[R], number: str, target: Callable[[R], int], rng: RandomSource | None = None
) -> list[tuple[R, str]]:
    """Members in the order to try them for ``number``, with the prefix each matched.

    The ordering of the module doc (prefix filter, priority, longest prefix,
    weighted draw); ``target`` names what a member points at, so a trunk or
    link that is a member twice comes once, at its best place.
    """
    rng = rng if rng is not None else secrets.SystemRandom()
    digits = number.removeprefix("+")
    ranks: dict[tuple[int, int], list[tuple[R, str]]] = {}
    for member in sorted(rows, key=lambda m: m.member_id):
        matched = _matched_prefix(member, digits)
        if matched is not None:
            ranks.setdefault((-member.priority, -len(matched)), []).append((member, matched))
    ordered: list[tuple[R, str]] = []
    seen: set[int] = set()
    for rank in sorted(ranks):
        matched_by_id = {member.member_id: matched for member, matched in ranks[rank]}
        for member in _weighted_order([member for member, _ in ranks[rank]], rng):
            key = target(member)
            if key in seen:
                continue
            seen.add(key)
            ordered.append((member, matched_by_id[member.member_id]))
    return ordered


def load_candidates(
    conn: Connection, service_id: int, callee: str, rng: RandomSource | None = None
) -> list[Candidate]:
    """The ordered candidates straight from the database (no usability filter, no cache)."""
    return order_candidates(load_members(conn, service_id), callee, rng)


# -- messages ----------------------------------------------------------------------------

#: E.164 country codes of two digits (those starting with 1 or 7 have one,
#: every other has three): ITU-T E.164 assignments.
_CC2 = frozenset(
    {
        "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46",
        "47", "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63",
        "64", "65", "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95", "98",
    }
)


def country_code_length(digits: str) -> int:
    """Digits of the E.164 country code that starts ``digits`` (1, 2 or 3)."""
    if digits[:1] in ("1", "7"):
        return 1
    if digits[:2] in _CC2:
        return 2
    return 3


def prefix_accepts(prefixes: tuple[str, ...], address: str) -> bool:
    """Whether a link's sender ID or accepted number prefixes take ``address``.

    No prefixes: every address. Otherwise the address (without a leading
    ``+``; letters compared without case) must start with one of them, or,
    for an international number (all digits), the part after its country
    code must: ``123`` accepts ``+86123...`` as seed 001 describes, and also
    ``123...`` itself.
    """
    if not prefixes:
        return True
    value = address.strip().removeprefix("+").casefold()
    national = value[country_code_length(value):] if value.isdigit() else None
    for prefix in prefixes:
        prefix = prefix.casefold()
        if value.startswith(prefix) or (national is not None and national.startswith(prefix)):
            return True
    return False


@dataclass(frozen=True)
class LinkMember:
    """One routing group member naming an SMPP link, with the link's filters."""

    member_id: int
    link_id: int
    name: str
    mode: str  # transceiver, transmitter or receiver
    priority: int
    weight: int
    prefixes: tuple[str, ...]  # the member's destination prefixes
    sender_prefixes: tuple[str, ...]  # the link's sender ID prefixes
    number_prefixes: tuple[str, ...]  # the link's accepted number prefixes


@dataclass(frozen=True)
class MessageCandidate:
    """An SMPP link to send one message through."""

    link_id: int
    name: str
    priority: int
    weight: int
    matched_prefix: str


#: Link modes that send messages (a receiver link only takes receipts and MO).
SENDING_MODES = frozenset({"transceiver", "transmitter"})

_LINK_MEMBERS = (
    select(
        routing_group_members.c.id.label("member_id"),
        routing_group_members.c.priority,
        routing_group_members.c.weight,
        routing_group_members.c.prefixes,
        smpp_links.c.id.label("link_id"),
        smpp_links.c.name,
        smpp_links.c.mode,
        smpp_links.c.sender_id_prefixes,
        smpp_links.c.accepted_number_prefixes,
    )
    .select_from(
        services.join(
            routing_group_members,
            routing_group_members.c.routing_group_id == services.c.routing_group_id,
        ).join(smpp_links, smpp_links.c.id == routing_group_members.c.smpp_link_id)
    )
    .where(services.c.id == bindparam("service_id"), smpp_links.c.enabled.is_(True))
    .order_by(routing_group_members.c.id)
)


def load_link_members(conn: Connection, service_id: int) -> list[LinkMember]:
    """The message members of the service's routing group: enabled links that send."""
    return [
        LinkMember(
            member_id=row.member_id,
            link_id=row.link_id,
            name=row.name,
            mode=row.mode,
            priority=row.priority,
            weight=row.weight,
            prefixes=parse_prefixes(row.prefixes),
            sender_prefixes=parse_prefixes(row.sender_id_prefixes),
            number_prefixes=parse_prefixes(row.accepted_number_prefixes),
        )
        for row in conn.execute(_LINK_MEMBERS, {"service_id": service_id})
        if row.mode in SENDING_MODES
    ]


def order_message_candidates(
    rows: Iterable[LinkMember], source: str, destination: str, rng: RandomSource | None = None
) -> list[MessageCandidate]:
    """The links for a message, in the order to try them (see the module doc).

    Members are ranked against ``destination`` exactly like trunks against a
    called number; members whose link refuses the source (sender ID
    prefixes) or the destination (accepted number prefixes) are left out.
    """
    usable = [
        member
        for member in rows
        if prefix_accepts(member.sender_prefixes, source) and prefix_accepts(member.number_prefixes, destination)
    ]
    return [
        MessageCandidate(
            link_id=member.link_id,
            name=member.name,
            priority=member.priority,
            weight=member.weight,
            matched_prefix=matched,
        )
        for member, matched in rank_members(usable, destination, lambda m: m.link_id, rng)
    ]


# -- limits ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    """No slot on a trunk now: ``reason`` is the limit, ``retry_after`` seconds until
    it may allow (0 when unknown, as for a call limit)."""

    reason: str  # trunk-cps, trunk-calls, customer-calls
    retry_after: float = 0.0


class Lease:
    """One call's slot in a concurrency gate; ``release()`` frees it exactly once."""

    __slots__ = ("_gate", "_released", "kind", "who")

    def __init__(self, kind: str, who: Hashable, gate: Gate) -> None:
        self.kind = kind
        self.who = who
        self._gate = gate
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Free the slot; calling it again does nothing."""
        if not self._released:
            self._released = True
            self._gate.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<Lease {self.kind} {self.who!r} {state}>"


class LimitSettings(Protocol):
    """What ``configure_limits`` reads: ``TrunkSettings`` has it."""

    @property
    def trunk_id(self) -> int: ...

    @property
    def cps_limit(self) -> int: ...

    @property
    def call_limit(self) -> int: ...


def _strictest(values: Iterable[int]) -> int:
    """The smallest non-zero limit; 0 (no limit) when all are 0."""
    limits = [value for value in values if value and value > 0]
    return min(limits) if limits else 0


def retry_after(refusals: Iterable[Refused]) -> int:
    """Seconds for ``Retry-After`` when every candidate was refused by a limit.

    The soonest any of them may allow, rounded up, at least 1.
    """
    waits = [refusal.retry_after for refusal in refusals]
    if not waits:
        return 1
    return max(1, math.ceil(round(min(waits), 3)))


def give_up(last_failure: int | None, refusals: Sequence[Refused]) -> tuple[int, int | None]:
    """What the caller is answered when no candidate is left: ``(status, retry_after)``.

    The last final failure a trunk sent, if any trunk was tried; ``503`` with
    ``Retry-After`` when every candidate was refused by a limit; ``503``
    without it when there was no candidate at all.
    """
    if last_failure is not None:
        return last_failure, None
    if refusals:
        return 503, retry_after(refusals)
    return 503, None


# -- the router -----------------------------------------------------------------------------


class TrunkState(Protocol):
    """What the router asks of the trunk manager."""

    def is_usable(self, trunk_id: int) -> bool: ...


class LinkState(Protocol):
    """What the router asks of the SMPP link manager."""

    def is_bound(self, link_id: int) -> bool: ...


class _Cached:
    __slots__ = ("expires_at", "members", "used_at")

    def __init__(self, members: list[Member], expires_at: float, used_at: float) -> None:
        self.members = members
        self.expires_at = expires_at
        self.used_at = used_at


class Router:
    """Routes calls of a node: candidates, trunk limits, failover decisions.

    ``db`` is a ``Database`` (anything with ``run(fn, *args) -> Deferred``);
    ``trunks`` offers ``is_usable(trunk_id)`` (the ``TrunkManager``; if it
    has ``settings``, the limits are configured from them at once);
    ``links`` offers ``is_bound(link_id)`` (the ``SmppLinkManager``; set it
    later with ``set_links`` when it is built after the router).
    """

    log = Logger()

    def __init__(
        self,
        db: Any,
        clock: IReactorTime,
        limiter: RateLimiter,
        trunks: TrunkState,
        *,
        failover_codes: Iterable[int] = FAILOVER_CODES,
        cache_seconds: float = 5.0,
        rng: RandomSource | None = None,
        links: LinkState | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.limiter = limiter
        self.trunks = trunks
        self.failover_codes = frozenset(failover_codes)
        self.cache_seconds = cache_seconds
        self.rng: RandomSource = rng if rng is not None else secrets.SystemRandom()
        #: trunk_id -> (calls per second, simultaneous calls) as last configured.
        self.limits: dict[int, tuple[int, int]] = {}
        self._account_cps: dict[int, int] = {}
        self._cache: dict[int, _Cached] = {}
        self._loading: dict[int, list[Deferred]] = {}
        self.links = links
        self._link_cache: dict[int, _Cached] = {}
        self._link_loading: dict[int, list[Deferred]] = {}
        self._next_sweep = 0.0
        settings = getattr(trunks, "settings", None)
        if settings:
            self.configure_limits(settings.values())

    # -- routes ---------------------------------------------------------------------

    def route(self, service_id: int, callee: str) -> Deferred:
        """Fire with the usable candidates for ``callee``, in the order to try them.

        A plain ``Deferred`` (``await`` it from a coroutine). The service's
        members are read from the database at most once per ``cache_seconds``
        (concurrent calls share one read); trunk usability is checked on every
        call. When the database cannot be read, the last routes known for the
        service are used; without any, the Deferred fails.
        """
        d = self._members(service_id)
        d.addCallback(self._candidates, callee)
        return d

    def _candidates(self, members: list[Member], callee: str) -> list[Candidate]:
        return [
            candidate
            for candidate in order_candidates(members, callee, self.rng)
            if self.trunks.is_usable(candidate.trunk_id)
        ]

    def _members(self, service_id: int) -> Deferred:
        return self._cached(service_id, self._cache, self._loading, load_members)

    def _cached(
        self,
        service_id: int,
        cache: dict[int, _Cached],
        loading: dict[int, list[Deferred]],
        loader: Callable[[Connection, int], list[Any]],
    ) -> Deferred:
        now = self.clock.seconds()
        entry = cache.get(service_id)
        if entry is not None and now < entry.expires_at:
            entry.used_at = now
            return succeed(entry.members)
        waiter: Deferred = Deferred()
        waiters = loading.get(service_id)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        loading[service_id] = [waiter]
        load = self.db.run(loader, service_id)
        load.addCallbacks(
            self._loaded,
            self._load_failed,
            callbackArgs=(service_id, cache, loading),
            errbackArgs=(service_id, cache, loading),
        )
        return waiter

    def _loaded(
        self, members: list[Any], service_id: int, cache: dict[int, _Cached], loading: dict[int, list[Deferred]]
    ) -> None:
        now = self.clock.seconds()
        cache[service_id] = _Cached(members, now + self.cache_seconds, now)
        self._sweep(now)
        for waiter in loading.pop(service_id, []):
            waiter.callback(members)

    def _load_failed(
        self, failure: Failure, service_id: int, cache: dict[int, _Cached], loading: dict[int, list[Deferred]]
    ) -> None:
        waiters = loading.pop(service_id, [])
        entry = cache.get(service_id)
        if entry is not None:
            self.log.warn(
                "cannot read the routes of service {service_id}, using the last known: {error}",
                service_id=service_id,
                error=failure.getErrorMessage(),
            )
            entry.used_at = self.clock.seconds()
            for waiter in waiters:
                waiter.callback(entry.members)
            return
        for waiter in waiters:
            waiter.errback(failure)

    def _sweep(self, now: float) -> None:
        """Forget services not routed for a while (at most once a minute)."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60.0
        horizon = now - max(_FORGET_SECONDS, self.cache_seconds)
        for cache in (self._cache, self._link_cache):
            for service_id, entry in list(cache.items()):
                if entry.used_at < horizon:
                    del cache[service_id]

    def forget(self, service_id: int | None = None) -> None:
        """Drop cached routes (of one service, or all): the next call reads them again."""
        for cache in (self._cache, self._link_cache):
            if service_id is None:
                cache.clear()
            else:
                cache.pop(service_id, None)

    # -- message routes ----------------------------------------------------------------

    def set_links(self, links: LinkState | None) -> None:
        """The link manager whose ``is_bound`` says which links can send now."""
        self.links = links

    def route_message(
        self, service_id: int, source: str, destination: str, *, include_down: bool = False
    ) -> Deferred:
        """Fire with the SMPP links for a message, in the order to try them.

        Read and cached like ``route``; only links bound now are kept, unless
        ``include_down`` (the engine then queues the message on the best link
        that is configured, to be sent when it binds).
        """
        d = self._cached(service_id, self._link_cache, self._link_loading, load_link_members)
        d.addCallback(self._message_candidates, source, destination, include_down)
        return d

    def _message_candidates(
        self, members: list[LinkMember], source: str, destination: str, include_down: bool
    ) -> list[MessageCandidate]:
        candidates = order_message_candidates(members, source, destination, self.rng)
        if include_down:
            return candidates
        links = self.links
        if links is None:
            return []
        return [candidate for candidate in candidates if links.is_bound(candidate.link_id)]

    # -- limits ---------------------------------------------------------------------

    def configure_limits(self, settings: Iterable[LimitSettings]) -> None:
        """Apply trunk limits from the SIP connection settings (every reload).

        Limits are per trunk. A trunk with several SIP connections takes the
        strictest non-zero value of each limit; 0 means no limit. A trunk no
        longer in ``settings`` (removed or disabled) loses its limits.
        """
        wanted: dict[int, tuple[list[int], list[int]]] = {}
        for s in settings:
            cps_limits, call_limits = wanted.setdefault(s.trunk_id, ([], []))
            cps_limits.append(s.cps_limit)
            call_limits.append(s.call_limit)
        limits = {trunk_id: (_strictest(c), _strictest(n)) for trunk_id, (c, n) in wanted.items()}
        changed = {trunk_id: (0, 0) for trunk_id in self.limits.keys() - limits.keys()}
        changed.update(
            (trunk_id, value) for trunk_id, value in limits.items() if self.limits.get(trunk_id, (0, 0)) != value
        )
        for trunk_id, (cps, calls) in changed.items():
            self.limiter.configure("trunk-cps", trunk_id, rate=cps, burst=cps)
            self.limiter.gate("trunk-calls", trunk_id, calls)
            self.log.info(
                "trunk {trunk_id}: {cps} calls per second, {calls} simultaneous calls (0: no limit)",
                trunk_id=trunk_id,
                cps=cps,
                calls=calls,
            )
        self.limits = limits

    def acquire(self, candidate: Candidate) -> Lease | Refused:
        """A slot for one call on the candidate's trunk, or why not.

        The call limit is checked first, then one token is taken from the
        CPS bucket (a call refused by its call limit costs no token). Release
        the lease when the call ends or the attempt fails.
        """
        gate = self.limiter.gate("trunk-calls", candidate.trunk_id)
        if not gate.acquire():
            return Refused("trunk-calls")
        decision = self.limiter.allow("trunk-cps", candidate.trunk_id)
        if not decision.allowed:
            gate.release()
            return Refused("trunk-cps", decision.retry_after)
        return Lease("trunk-calls", candidate.trunk_id, gate)

    def acquire_account(self, account_id: int, call_limit: int, cps_limit: int = 0) -> Lease | Refused:
        """A slot for one call of a customer's account (limits 0: none).

        Taken once per call, before the first candidate, and released when
        the call ends; the limits given update the account's gate and bucket,
        so a change made through the API applies to the next call.
        """
        gate = self.limiter.gate("customer-calls", account_id, call_limit)
        if not gate.acquire():
            return Refused("customer-calls", 1.0)
        if cps_limit:
            if self._account_cps.get(account_id) != cps_limit:
                self.limiter.configure("customer-cps", account_id, rate=cps_limit, burst=cps_limit)
                self._account_cps[account_id] = cps_limit
            decision = self.limiter.allow("customer-cps", account_id)
            if not decision.allowed:
                gate.release()
                return Refused("customer-cps", decision.retry_after)
        return Lease("customer-calls", account_id, gate)

    # -- answers ---------------------------------------------------------------------

    def is_failover(self, status: int) -> bool:
        """Whether a trunk's final answer sends the call to the next candidate.

        Only the configured codes do; 404, 486 and every 6xx (a global
        failure, RFC 3261 §21.6) are always passed back to the caller.
        """
        if status in NEVER_FAILOVER or status >= 600:
            return False
        return status in self.failover_codes

    @staticmethod
    def retry_after(refusals: Iterable[Refused]) -> int:
        """``Retry-After`` seconds when every candidate was refused (module ``retry_after``)."""
        return retry_after(refusals)
