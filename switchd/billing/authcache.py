"""Call authorisation from memory.

``rating.authorize_call`` reads the service's terms (states, balance,
limits) and the rate of the called number: two queries, on the database's
threads, for every call and every callback leg. Under load each of them
waits for a thread and for the GIL, behind the writes of CDRs, and that wait
(not the queries) was most of the time between an IIF REQUEST and its ACK.
:class:`AuthorizationCache` keeps both in memory and makes the same decision
(``rating.check_terms`` and ``rating.decide``) in the reactor thread.

Freshness, for each kind of entry:

* younger than ``fresh`` seconds: used as it is;
* older, but younger than ``stale`` seconds: used, and read again in the
  background (one read per entry at a time), so a busy service's terms are
  never more than about ``fresh`` seconds old and no call waits;
* older still, or not there: read now, and the call waits for it (several
  calls waiting for one entry share one read).

Terms are fresh for 1 second by default: a prepaid balance seen by a call is
at most about a second old (calls in progress at the same moment already
share one balance, as they do without the cache).

Rates: a tariff plan of at most ``plan_rates`` rates (100,000 by default) is
held whole, so any number is rated from memory (longest prefix, as
``find_rate``); it is fresh for 10 seconds, and reading it again first asks
whether it changed (its number of rates and their last change), so an
unchanged plan costs one small query. A larger plan is looked up number by
number, each answer kept as an entry (at most ``max_rates``).

Every write through this node's API empties the cache (``clear``), so a
top-up, a blocked account or a new rate counts at once; a change made on
another node counts within the freshness. Refusals are kept like answers (an
unknown service, a number with no rate).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from . import rating


@dataclass
class _Entry:
    value: Any
    at: float


class _Table:
    """Entries of one kind, with their loads in progress; at most ``size`` entries
    (the oldest read goes first)."""

    def __init__(self, kind: str, fresh: float, stale: float, size: int) -> None:
        self.kind = kind
        self.fresh = fresh
        self.stale = max(stale, fresh)
        self.size = size
        self.entries: dict[Any, _Entry] = {}
        self.loading: dict[Any, list[Deferred]] = {}
        self.generation = 0  # bumped by clear(): a load started before it is not kept

    def put(self, key: Any, value: Any, at: float) -> None:
        self.entries.pop(key, None)
        self.entries[key] = _Entry(value, at)
        while len(self.entries) > self.size:
            del self.entries[next(iter(self.entries))]

    def clear(self) -> None:
        self.entries.clear()
        self.generation += 1


class AuthorizationCache:
    """``authorize(service_id, callee, now)``: ``rating.authorize_call`` from memory.

    ``read(fn, *args)`` runs a read-only ``fn(conn, *args)`` off the reactor
    (``Database.read``) and returns a Deferred.
    """

    log = Logger()

    def __init__(
        self,
        read: Callable[..., Deferred],
        clock: IReactorTime,
        *,
        terms_fresh: float = 1.0,
        terms_stale: float = 30.0,
        rates_fresh: float = 10.0,
        rates_stale: float = 300.0,
        max_services: int = 100_000,
        max_rates: int = 200_000,
        plan_rates: int = 100_000,
        max_plans: int = 1_000,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.read = read
        self.clock = clock
        self.plan_rates = plan_rates
        self.terms = _Table("terms", terms_fresh, terms_stale, max_services)
        self.plans = _Table("plans", rates_fresh, rates_stale, max_plans)
        self.rates = _Table("rates", rates_fresh, rates_stale, max_rates)
        self.lookups = Counter(
            "switchd_authorization_cache_lookups",
            "Call authorisation lookups by kind (terms, plans, rates) and result (fresh, stale, miss)",
            ["kind", "result"],
            registry=registry,
        ) if registry is not None else None

    def clear(self) -> None:
        """Forget everything (after a write through the API): the next calls read again."""
        self.terms.clear()
        self.plans.clear()
        self.rates.clear()

    def authorize(self, service_id: int, callee: str, now: datetime.datetime) -> Deferred:
        """Fires with the ``rating.Authorization``, or fails with ``rating.Refusal``."""
        return ensureDeferred(self._authorize(service_id, callee, now))

    async def _authorize(self, service_id: int, callee: str, now: datetime.datetime) -> rating.Authorization:
        terms = await self._get(self.terms, service_id, lambda _: self.read(rating.service_terms, service_id))
        rating.check_terms(terms, service_id, callee, now)
        plan_id = terms.tariff_plan_id
        plan = await self._get(self.plans, plan_id,
                               lambda previous: self.read(rating.load_plan, plan_id, self.plan_rates, previous))
        if plan.by_prefix is not None:
            rate = plan.find(callee)
        else:  # too large to hold: number by number
            digits = rating.number_digits(callee)[: rating.MAX_PREFIX_DIGITS]
            rate = await self._get(self.rates, (plan_id, digits),
                                   lambda _: self.read(rating.find_rate, plan_id, digits))
        return rating.decide(terms, rate, service_id, callee, now)

    # -- entries --------------------------------------------------------------------------

    def _count(self, table: _Table, result: str) -> None:
        if self.lookups is not None:
            self.lookups.labels(table.kind, result).inc()

    def _get(self, table: _Table, key: Any, load: Callable[[Any], Deferred]) -> Deferred:
        """The entry for ``key``; ``load(previous value or None)`` reads it."""
        entry = table.entries.get(key)
        if entry is not None:
            age = self.clock.seconds() - entry.at
            if age < table.fresh:
                self._count(table, "fresh")
                return succeed(entry.value)
            if age < table.stale:
                self._count(table, "stale")
                if key not in table.loading:
                    self._load(table, key, load, entry.value).addErrback(
                        lambda f: self.log.failure("cannot refresh the {kind} of {key}", f, kind=table.kind, key=key)
                    )
                return succeed(entry.value)
        self._count(table, "miss")
        return self._load(table, key, load, None)

    def _load(self, table: _Table, key: Any, load: Callable[[Any], Deferred], previous: Any) -> Deferred:
        """A Deferred for the entry read now; one read per key at a time."""
        mine: Deferred = Deferred()
        waiting = table.loading.get(key)
        if waiting is not None:
            waiting.append(mine)
            return mine
        table.loading[key] = waiters = [mine]
        generation = table.generation
        started = self.clock.seconds()

        def done(value: Any) -> None:
            table.loading.pop(key, None)
            if generation == table.generation:
                table.put(key, value, started)
            for d in waiters:
                d.callback(value)

        def failed(failure: Any) -> None:
            table.loading.pop(key, None)
            for d in waiters:
                d.errback(failure)

        load(previous).addCallbacks(done, failed)
        return mine
