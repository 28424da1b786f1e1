"""Rating: which rate applies to a call, what it costs, how long it may last.

A service's tariff plan holds rates by destination prefix; the longest
prefix of the called number wins and the empty prefix matches every number.
A call is billed by increments ("60/60", "1/1", "30/6"): its duration is
rounded up to whole seconds, the first increment is always paid in full,
then each started next increment. An answered call also pays the rate's
connection fee once. ``authorize_call`` decides, before a call is sent on,
whether a service may make it and for how long (prepaid accounts only).
Messages are priced per part at the rate's ``price_per_message``;
``authorize_message`` decides whether a service may send one (a prepaid
account must pay for every part).

Everything here except ``find_rate``, ``load_payer``, ``authorize_call`` and
``authorize_message`` is pure arithmetic; those run in the caller's
transaction (``Database.run``).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Connection
from twisted.logger import Logger

from ..store.models import accounts, customers, rates, services, tariff_plans
from ..store.types import to_money

log = Logger()


# Built once: a statement object memoises its cache key, so each call skips
# SQLAlchemy's construction and cache-key work (a large share of the
# per-call cost in bench/b2bua_bench.py).
_FIND_RATE = (
    select(
        rates.c.tariff_plan_id,
        rates.c.prefix,
        rates.c.price_per_minute,
        rates.c.price_per_message,
        rates.c.price_per_use,
        rates.c.connection_fee,
        rates.c.increment_first,
        rates.c.increment_next,
        tariff_plans.c.currency,
    )
    .join(tariff_plans, tariff_plans.c.id == rates.c.tariff_plan_id)
    .where(
        rates.c.tariff_plan_id == bindparam("plan"),
        rates.c.prefix.in_(bindparam("prefixes", expanding=True)),
    )
    .order_by(func.length(rates.c.prefix).desc())
    .limit(1)
)

# The same, for many numbers at once: every row among the given prefixes.
_FIND_RATES = (
    select(
        rates.c.tariff_plan_id,
        rates.c.prefix,
        rates.c.price_per_minute,
        rates.c.price_per_message,
        rates.c.price_per_use,
        rates.c.connection_fee,
        rates.c.increment_first,
        rates.c.increment_next,
        tariff_plans.c.currency,
    )
    .join(tariff_plans, tariff_plans.c.id == rates.c.tariff_plan_id)
    .where(
        rates.c.tariff_plan_id == bindparam("plan"),
        rates.c.prefix.in_(bindparam("prefixes", expanding=True)),
    )
)

#: Prefixes looked up per query by ``find_rates`` (well under SQLite's variable limit).
_PREFIXES_PER_QUERY = 900

_AUTHORIZE = (
    select(
        services.c.status.label("service_status"),
        services.c.tariff_plan_id,
        services.c.distribution_priority,
        accounts.c.id.label("account_id"),
        accounts.c.status.label("account_status"),
        accounts.c.billing_type,
        accounts.c.currency,
        accounts.c.balance,
        accounts.c.credit_limit,
        accounts.c.call_limit,
        accounts.c.cps_limit,
        customers.c.status.label("customer_status"),
    )
    .join(accounts, accounts.c.id == services.c.account_id)
    .join(customers, customers.c.id == accounts.c.customer_id)
    .where(services.c.id == bindparam("service_id"))
)

#: The longest prefix a rate can hold (the width of ``rates.prefix``).
MAX_PREFIX_DIGITS = 32

#: How long before ``max_seconds`` the B2BUA should cut a prepaid call.
#: Durations are rounded up to whole seconds, so a call cut a little early
#: (up to one second) is still billed exactly ``max_seconds``; cut late, it
#: would start one more increment.
CUTOFF_MARGIN = 0.5

_DIGITS = frozenset("0123456789")


@dataclass(frozen=True)
class Rate:
    """The prices of one destination of a tariff plan.

    ``tariff_plan_id`` and ``prefix`` are None for a rate restored from an
    active call after a crash, which keeps only the prices it was rated at.
    """

    tariff_plan_id: int | None
    prefix: str | None
    price_per_minute: Decimal
    connection_fee: Decimal
    increment_first: int
    increment_next: int
    currency: str
    price_per_message: Decimal = Decimal(0)
    price_per_use: Decimal = Decimal(0)


@dataclass(frozen=True)
class Authorization:
    """A call a service may make: who pays, at which rate, for how long."""

    account_id: int
    service_id: int
    billing_type: str  # "prepaid" or "postpaid"
    currency: str
    rate: Rate
    max_seconds: int | None  # None: not limited by money (postpaid, free rate)
    call_limit: int = 0  # the account's limits (0: none)
    cps_limit: int = 0


class Refusal(Exception):
    """A call that must not be made, with the SIP final response to send."""

    def __init__(self, sip_status: int, reason: str) -> None:
        super().__init__(f"{sip_status} {reason}")
        self.sip_status = sip_status
        self.reason = reason


def number_digits(number: str) -> str:
    """The ASCII digits of a number: '+1 (555) 010-99' gives '155501099'."""
    return "".join(c for c in number if c in _DIGITS)


def _rate(row) -> Rate:
    return Rate(
        tariff_plan_id=row.tariff_plan_id,
        prefix=row.prefix,
        price_per_minute=row.price_per_minute,
        connection_fee=row.connection_fee,
        increment_first=row.increment_first,
        increment_next=row.increment_next,
        currency=row.currency,
        price_per_message=row.price_per_message,
        price_per_use=row.price_per_use,
    )


def find_rate(conn: Connection, tariff_plan_id: int, number: str) -> Rate | None:
    """The plan's rate with the longest prefix of ``number``'s digits.

    One query on the (plan, prefix) unique index: every prefix of the number,
    the empty one included, is looked up and the longest found wins.
    """
    digits = number_digits(number)[:MAX_PREFIX_DIGITS]
    candidates = [digits[:n] for n in range(len(digits), -1, -1)]
    row = conn.execute(_FIND_RATE, {"plan": tariff_plan_id, "prefixes": candidates}).first()
    return None if row is None else _rate(row)


_PLAN_FINGERPRINT = (
    select(func.count(rates.c.id), func.max(rates.c.updated_at), tariff_plans.c.updated_at)
    .select_from(tariff_plans.outerjoin(rates, rates.c.tariff_plan_id == tariff_plans.c.id))
    .where(tariff_plans.c.id == bindparam("plan"))
    .group_by(tariff_plans.c.id, tariff_plans.c.updated_at)
)
_PLAN_RATES = (
    select(*_FIND_RATE.selected_columns)
    .select_from(rates.join(tariff_plans, tariff_plans.c.id == rates.c.tariff_plan_id))
    .where(rates.c.tariff_plan_id == bindparam("plan"))
)


@dataclass(frozen=True)
class PlanRates:
    """A whole tariff plan in memory (``by_prefix`` is None when it has more
    rates than were asked for); ``fingerprint`` tells whether it changed."""

    fingerprint: tuple
    by_prefix: dict[str, Rate] | None

    def find(self, number: str) -> Rate | None:
        """``find_rate`` from memory: the longest prefix of the number's digits."""
        assert self.by_prefix is not None
        digits = number_digits(number)[:MAX_PREFIX_DIGITS]
        for n in range(len(digits), -1, -1):
            rate = self.by_prefix.get(digits[:n])
            if rate is not None:
                return rate
        return None


def load_plan(conn: Connection, tariff_plan_id: int, limit: int, previous: PlanRates | None = None) -> PlanRates:
    """The plan's rates by prefix, if it has at most ``limit``; ``previous``
    itself when the plan has not changed since it was read (its number of rates
    and its rates' and its own last change are the same)."""
    row = conn.execute(_PLAN_FINGERPRINT, {"plan": tariff_plan_id}).first()
    fingerprint = tuple(row) if row is not None else (0, None, None)
    if previous is not None and previous.fingerprint == fingerprint:
        return previous
    if row is None or fingerprint[0] > limit:
        return PlanRates(fingerprint, None)
    return PlanRates(fingerprint, {r.prefix: _rate(r) for r in conn.execute(_PLAN_RATES, {"plan": tariff_plan_id})})


def find_rates(conn: Connection, tariff_plan_id: int, numbers: Iterable[str]) -> dict[str, Rate | None]:
    """``find_rate`` for many numbers with a query per few hundred distinct prefixes.

    For a batch of messages: the prefixes of every number are looked up
    together and each number takes its longest one found, as ``find_rate``
    would give it.
    """
    digits_of = {number: number_digits(number)[:MAX_PREFIX_DIGITS] for number in numbers}
    wanted = sorted({digits[:n] for digits in digits_of.values() for n in range(len(digits) + 1)})
    found: dict[str, Rate] = {}
    for start in range(0, len(wanted), _PREFIXES_PER_QUERY):
        chunk = wanted[start : start + _PREFIXES_PER_QUERY]
        for row in conn.execute(_FIND_RATES, {"plan": tariff_plan_id, "prefixes": chunk}):
            found[row.prefix] = _rate(row)
    return {
        number: next((found[digits[:n]] for n in range(len(digits), -1, -1) if digits[:n] in found), None)
        for number, digits in digits_of.items()
    }


def _increments(rate: Rate) -> tuple[int, int]:
    # The API keeps both between 1 and 3600; a row written by hand with 0
    # is billed per second rather than dividing by zero.
    return max(rate.increment_first, 1), max(rate.increment_next, 1)


def billable_seconds(duration: float, rate: Rate) -> int:
    """Seconds billed for ``duration`` seconds of conversation.

    The duration is first rounded up to whole seconds (any started second
    counts); zero stays zero. Then the first increment is billed in full and
    every started next increment after it: with 60/60, 61 s bills 120; with
    1/1, 61; with 30/6, 31 s bills 36.
    """
    if duration <= 0:
        return 0
    seconds = math.ceil(duration)
    first, step = _increments(rate)
    if seconds <= first:
        return first
    return first + -(-(seconds - first) // step) * step


def charge(rate: Rate, duration: float) -> Decimal:
    """What ``duration`` seconds of an answered call cost at ``rate``.

    The connection fee is due once the call lasted at all (duration > 0);
    the minutes are priced per billable second. Rounded to money precision.
    """
    billed = billable_seconds(duration, rate)
    if billed == 0:
        return to_money(0)
    return to_money(rate.connection_fee + rate.price_per_minute * billed / 60)


def max_duration(rate: Rate, available: Decimal) -> int | None:
    """The longest call, in seconds, that ``available`` money pays in full.

    Only whole increments count: the answer is ``increment_first + k *
    increment_next`` for the largest k whose charge (connection fee
    included) is at most ``available``; 0 when even the connection fee and
    the first increment do not fit; None when minutes are free.
    """
    first, step = _increments(rate)
    if charge(rate, first) > available:
        return 0
    price = rate.price_per_minute
    if price <= 0:
        return None
    # The exact k, then a step or two for the rounding to money precision.
    budget = (available - rate.connection_fee) * 60 / price - first
    k = max(int(budget // step), 0)
    while charge(rate, first + (k + 1) * step) <= available:
        k += 1
    while k > 0 and charge(rate, first + k * step) > available:
        k -= 1
    return first + k * step


def service_terms(conn: Connection, service_id: int) -> Any:
    """The row ``authorize_call`` decides on: the service, its account (balance,
    limits, currency) and customer, with their states; None for no service."""
    return conn.execute(_AUTHORIZE, {"service_id": service_id}).first()


def authorize_call(
    conn: Connection, service_id: int, callee: str, now: datetime.datetime
) -> Authorization:
    """May ``service_id`` call ``callee`` now, and for how long?

    ``callee`` is the called number (the user part of the Request-URI after
    the service's number rules), not a URI. Raises ``Refusal`` with the SIP
    status to answer: 403 when the service, its account or its customer is
    not active (or the plan's currency is not the account's), 484 when the
    number has no digits, 404 when the plan has no rate for it, 402 when a
    prepaid account cannot pay the connection fee and the first increment.
    ``now`` is the moment of the call, named in the (debug) log of refusals.
    ``billing.authcache`` makes the same decision from memory.
    """
    terms = service_terms(conn, service_id)
    check_terms(terms, service_id, callee, now)
    return decide(terms, find_rate(conn, terms.tariff_plan_id, callee), service_id, callee, now)


def _refusal(service_id: int, callee: str, now: datetime.datetime, sip_status: int, reason: str) -> Refusal:
    log.debug(
        "call from service {service_id} to {callee} refused at {now}: {status} {reason}",
        service_id=service_id,
        callee=callee,
        now=now.isoformat(),
        status=sip_status,
        reason=reason,
    )
    return Refusal(sip_status, reason)


def check_terms(terms: Any, service_id: int, callee: str, now: datetime.datetime) -> None:
    """What is refused before a rate is looked up: no service, a state that is not
    active, a number without digits (``Refusal``)."""
    if terms is None:
        raise _refusal(service_id, callee, now, 403, "unknown service")
    if terms.service_status != "active":
        raise _refusal(service_id, callee, now, 403, f"service {terms.service_status}")
    if terms.account_status != "active":
        raise _refusal(service_id, callee, now, 403, f"account {terms.account_status}")
    if terms.customer_status != "active":
        raise _refusal(service_id, callee, now, 403, f"customer {terms.customer_status}")
    if not number_digits(callee):
        raise _refusal(service_id, callee, now, 484, "no digits in the called number")


def decide(terms: Any, rate: Rate | None, service_id: int, callee: str, now: datetime.datetime) -> Authorization:
    """The authorisation for checked ``terms`` and the rate found for ``callee``."""
    if rate is None:
        raise _refusal(service_id, callee, now, 404, "no rate for the destination")
    if rate.currency != terms.currency:
        raise _refusal(service_id, callee, now, 403, f"tariff plan in {rate.currency}, account in {terms.currency}")
    max_seconds: int | None = None
    if terms.billing_type != "postpaid":
        available = terms.balance + terms.credit_limit
        first, _ = _increments(rate)
        if charge(rate, first) > available:
            raise _refusal(service_id, callee, now, 402, "insufficient funds")
        max_seconds = max_duration(rate, available)
    return Authorization(
        account_id=terms.account_id,
        service_id=service_id,
        billing_type=terms.billing_type,
        currency=terms.currency,
        rate=rate,
        max_seconds=max_seconds,
        call_limit=terms.call_limit,
        cps_limit=terms.cps_limit,
    )


# -- messages ----------------------------------------------------------------------


@dataclass(frozen=True)
class MessageAuthorization:
    """A message a service may send: who pays, at which rate, how much."""

    account_id: int
    service_id: int
    billing_type: str  # "prepaid" or "postpaid"
    currency: str
    rate: Rate
    parts: int
    price: Decimal  # per part: the rate's price_per_message
    total: Decimal  # price * parts

    def references(self, message_id: str) -> list[str]:
        """The ledger reference of each part's charge: ``sms:<message id>:<part>``."""
        return [f"sms:{message_id}:{number}" for number in range(1, self.parts + 1)]


def load_payer(conn: Connection, service_id: int):
    """The service, its account and customer (statuses, plan, balance) as one row, or None.

    The row ``authorize_call`` reads; ``check_message`` takes it, so a caller
    authorising many messages of one service reads it once.
    """
    return conn.execute(_AUTHORIZE, {"service_id": service_id}).first()


def check_payer(row, service_id: int) -> None:
    """Raise ``Refusal`` (403) unless the service, its account and customer are active."""
    if row is None:
        raise Refusal(403, "unknown service")
    if row.service_status != "active":
        raise Refusal(403, f"service {row.service_status}")
    if row.account_status != "active":
        raise Refusal(403, f"account {row.account_status}")
    if row.customer_status != "active":
        raise Refusal(403, f"customer {row.customer_status}")


def check_message(
    row, rate: Rate | None, service_id: int, parts: int, available: Decimal | None
) -> MessageAuthorization:
    """Pure part of ``authorize_message``: the payer row, the rate found, the money left.

    ``available`` is what a prepaid account may still spend (balance plus
    credit limit, minus what the caller already committed in the same
    transaction); it is ignored for postpaid accounts. Raises ``Refusal``
    with the codes of ``authorize_message``.
    """
    check_payer(row, service_id)
    if parts < 1:
        raise ValueError(f"a message has at least one part, not {parts}")
    if rate is None:
        raise Refusal(404, "no rate for the destination")
    if rate.currency != row.currency:
        raise Refusal(403, f"tariff plan in {rate.currency}, account in {row.currency}")
    price = to_money(rate.price_per_message)
    total = to_money(price * parts)
    if row.billing_type != "postpaid" and total > 0:
        if available is None:
            available = row.balance + row.credit_limit
        if total > available:
            raise Refusal(402, "insufficient funds")
    return MessageAuthorization(
        account_id=row.account_id,
        service_id=service_id,
        billing_type=row.billing_type,
        currency=row.currency,
        rate=rate,
        parts=parts,
        price=price,
        total=total,
    )


def authorize_message(
    conn: Connection, service_id: int, destination: str, parts: int, now: datetime.datetime
) -> MessageAuthorization:
    """May ``service_id`` send a message of ``parts`` parts to ``destination`` now?

    The rate is the plan's longest prefix of the destination (``find_rate``),
    priced per part at ``price_per_message``. Raises ``Refusal``: 403 when the
    service, its account or its customer is not active (or the plan's
    currency is not the account's), 484 when the number has no digits, 404
    when the plan has no rate for it, 402 when a prepaid account cannot pay
    every part (balance plus credit limit). ``now`` is named in the (debug)
    log of refusals. Nothing is booked: the caller charges each part (ledger
    reference ``sms:<message id>:<part>``).
    """
    row = load_payer(conn, service_id)
    try:
        check_payer(row, service_id)
        if not number_digits(destination):
            raise Refusal(484, "no digits in the destination number")
        rate = find_rate(conn, row.tariff_plan_id, destination)
        return check_message(row, rate, service_id, parts, None)
    except Refusal as refusal:
        log.debug(
            "message from service {service_id} to {destination} refused at {now}: {status} {reason}",
            service_id=service_id,
            destination=destination,
            now=now.isoformat(),
            status=refusal.sip_status,
            reason=refusal.reason,
        )
        raise
