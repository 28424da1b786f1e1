"""Billing on both backends: rates by longest prefix, call authorization,
CDRs charged exactly once, crash recovery from heartbeats, periodic fees
once per period."""

from __future__ import annotations

import datetime
import threading
from decimal import Decimal

import pytest
from sqlalchemy import func, insert, select, update
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from switchd.billing import cdr, periodic, rating
from switchd.billing.ledger import book
from switchd.store import models as m
from switchd.store.db import Database, run_synchronously

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 21, 12, 0, tzinfo=UTC)  # a Saturday, ISO week 47


def at(seconds: float) -> datetime.datetime:
    return NOW + datetime.timedelta(seconds=seconds)


# -- provisioning ------------------------------------------------------------------


def _customer(conn, status: str = "active") -> int:
    return conn.execute(
        insert(m.customers)
        .values(name="c", status=status, created_at=NOW, updated_at=NOW)
        .returning(m.customers.c.id)
    ).scalar_one()


def _account(
    conn,
    *,
    topup: str = "0",
    credit_limit: str = "0",
    billing_type: str = "prepaid",
    status: str = "active",
    customer_status: str = "active",
) -> int:
    account = conn.execute(
        insert(m.accounts)
        .values(customer_id=_customer(conn, customer_status), currency="EUR", balance=0,
                credit_limit=Decimal(credit_limit), billing_type=billing_type, status=status,
                created_at=NOW, updated_at=NOW)
        .returning(m.accounts.c.id)
    ).scalar_one()
    if Decimal(topup) > 0:
        book(conn, account, "topup", Decimal(topup), NOW, reference="initial")
    return account


def _plan(conn, name: str, rates: dict[str, tuple], currency: str = "EUR") -> int:
    """rates: prefix -> (price per minute, connection fee, first, next)."""
    plan = conn.execute(
        insert(m.tariff_plans)
        .values(name=name, currency=currency, created_at=NOW, updated_at=NOW)
        .returning(m.tariff_plans.c.id)
    ).scalar_one()
    for prefix, (price, fee, first, step) in rates.items():
        conn.execute(
            insert(m.rates).values(
                tariff_plan_id=plan, prefix=prefix, description=f"to {prefix or 'anywhere'}",
                price_per_minute=Decimal(price), connection_fee=Decimal(fee),
                increment_first=first, increment_next=step, created_at=NOW, updated_at=NOW,
            )
        )
    return plan


def _service(conn, account: int, plan: int, *, status: str = "active", fee: str = "0", period: str = "none") -> int:
    return conn.execute(
        insert(m.services)
        .values(account_id=account, type="sip_telephony", tariff_plan_id=plan, status=status,
                periodic_fee=Decimal(fee), fee_period=period, created_at=NOW, updated_at=NOW)
        .returning(m.services.c.id)
    ).scalar_one()


def _balance(conn, account: int) -> Decimal:
    return conn.execute(select(m.accounts.c.balance).where(m.accounts.c.id == account)).scalar_one()


def _ledger(conn, account: int) -> list:
    return conn.execute(select(m.ledger).where(m.ledger.c.account_id == account).order_by(m.ledger.c.id)).all()


def _explained(conn, account: int) -> bool:
    """balance == sum(ledger), on both backends."""
    return sum((row.amount for row in _ledger(conn, account)), Decimal(0)) == _balance(conn, account)


# -- rates --------------------------------------------------------------------------


def test_the_longest_prefix_of_the_plan_wins(database):
    def work(conn):
        plan = _plan(conn, "retail", {
            "": ("0.50", "0", 60, 60),
            "4": ("0.40", "0", 60, 60),
            "44": ("0.10", "0", 1, 1),
            "4420": ("0.05", "0.01", 30, 6),
        })
        _plan(conn, "other", {"442079": ("9", "0", 1, 1)})  # never looked at
        narrow = _plan(conn, "narrow", {"49": ("0.20", "0", 1, 1)})
        found = {number: rating.find_rate(conn, plan, number) for number in (
            "+44 20 7946 0000", "+4430", "4", "155501", "", "+",
        )}
        return found, rating.find_rate(conn, narrow, "4420"), rating.find_rate(conn, narrow, "+49 30 1"), plan

    found, missing, german, plan = database.run_blocking(work)
    assert found["+44 20 7946 0000"] == rating.Rate(
        tariff_plan_id=plan, prefix="4420", price_per_minute=Decimal("0.05"), connection_fee=Decimal("0.01"),
        increment_first=30, increment_next=6, currency="EUR", price_per_message=Decimal(0), price_per_use=Decimal(0),
    )
    assert found["+4430"].prefix == "44"
    assert found["4"].prefix == "4"
    assert found["155501"].prefix == "" and found["155501"].price_per_minute == Decimal("0.5")
    assert found[""].prefix == "" and found["+"].prefix == ""
    assert missing is None  # no empty prefix: other numbers have no rate
    assert german.prefix == "49"


def test_a_plan_held_in_memory_rates_as_find_rate_and_knows_when_it_changed(database):
    numbers = ("+44 20 7946 0000", "+4430", "4", "155501", "", "+", "1" * 40)

    def work(conn):
        plan = _plan(conn, "retail", {"": ("0.50", "0", 60, 60), "4": ("0.40", "0", 60, 60),
                                      "44": ("0.10", "0", 1, 1), "4420": ("0.05", "0.01", 30, 6)})
        held = rating.load_plan(conn, plan, 10)
        expected = {number: rating.find_rate(conn, plan, number) for number in numbers}
        same = rating.load_plan(conn, plan, 10, held)
        too_big = rating.load_plan(conn, plan, 3)
        conn.execute(update(m.rates).where(m.rates.c.tariff_plan_id == plan, m.rates.c.prefix == "44")
                     .values(price_per_minute=Decimal("0.11"), updated_at=NOW + datetime.timedelta(seconds=1)))
        changed = rating.load_plan(conn, plan, 10, held)
        empty = _plan(conn, "empty", {})
        return held, expected, same, too_big, changed, rating.load_plan(conn, empty, 10), rating.load_plan(conn, 10**6, 10)

    held, expected, same, too_big, changed, empty, missing = database.run_blocking(work)
    assert {number: held.find(number) for number in numbers} == expected
    assert same is held  # unchanged: the one held is kept
    assert too_big.by_prefix is None and too_big.fingerprint == held.fingerprint
    assert changed is not held and changed.find("4430").price_per_minute == Decimal("0.11")
    assert empty.by_prefix == {} and empty.find("44") is None
    assert missing.by_prefix is None


def test_a_very_long_number_still_finds_its_rate(database):
    def work(conn):
        plan = _plan(conn, "p", {"1" * 32: ("1", "0", 1, 1), "1": ("2", "0", 1, 1)})
        return rating.find_rate(conn, plan, "1" * 80), rating.find_rate(conn, plan, "1" * 31)

    longest, shorter = database.run_blocking(work)
    assert longest.prefix == "1" * 32 and shorter.prefix == "1"


# -- authorization --------------------------------------------------------------------


def test_authorization_refusals(database):
    def work(conn):
        plan = _plan(conn, "p", {"44": ("0.60", "0.10", 60, 60)})
        usd = _plan(conn, "usd", {"": ("0.60", "0", 60, 60)}, currency="USD")
        ok = _account(conn, topup="10")
        refusals = {}
        cases = {
            "blocked": (_service(conn, _account(conn, topup="10", status="blocked"), plan), "44123"),
            "closed": (_service(conn, _account(conn, topup="10", status="closed"), plan), "44123"),
            "customer": (_service(conn, _account(conn, topup="10", customer_status="suspended"), plan), "44123"),
            "suspended": (_service(conn, ok, plan, status="suspended"), "44123"),
            "unknown": (999999, "44123"),
            "no rate": (_service(conn, ok, plan), "+1 555 0100"),
            "no digits": (_service(conn, ok, plan), "alice"),
            "currency": (_service(conn, ok, usd), "44123"),
            "poor": (_service(conn, _account(conn, topup="0.69"), plan), "44123"),
            "in debt": (_service(conn, _account(conn, credit_limit="0.50"), plan), "44123"),
        }
        for name, (service, callee) in cases.items():
            with pytest.raises(rating.Refusal) as caught:
                rating.authorize_call(conn, service, callee, NOW)
            refusals[name] = (caught.value.sip_status, caught.value.reason)
        return refusals

    refusals = database.run_blocking(work)
    assert refusals == {
        "blocked": (403, "account blocked"),
        "closed": (403, "account closed"),
        "customer": (403, "customer suspended"),
        "suspended": (403, "service suspended"),
        "unknown": (403, "unknown service"),
        "no rate": (404, "no rate for the destination"),
        "no digits": (484, "no digits in the called number"),
        "currency": (403, "tariff plan in USD, account in EUR"),
        "poor": (402, "insufficient funds"),
        "in debt": (402, "insufficient funds"),
    }


def test_prepaid_calls_last_what_the_balance_and_credit_pay(database):
    def work(conn):
        plan = _plan(conn, "p", {"44": ("0.60", "0.10", 60, 60), "": ("0", "0", 1, 1)})
        exact = _service(conn, _account(conn, topup="0.70"), plan)
        credit = _service(conn, _account(conn, topup="1", credit_limit="1.50"), plan)
        return (
            rating.authorize_call(conn, exact, "+44123", NOW),
            rating.authorize_call(conn, credit, "44123", NOW),
            rating.authorize_call(conn, credit, "1555", NOW),
        )

    exact, credit, free = database.run_blocking(work)
    assert exact.max_seconds == 60 and exact.billing_type == "prepaid" and exact.currency == "EUR"
    assert exact.rate.prefix == "44"
    # 2.50 available: 0.10 fee + 4 minutes at 0.60 = 2.50.
    assert credit.max_seconds == 240
    assert free.max_seconds is None and free.rate.price_per_minute == 0


def test_postpaid_accounts_are_not_limited_by_their_balance(database):
    def work(conn):
        plan = _plan(conn, "p", {"": ("0.60", "0.10", 60, 60)})
        account = _account(conn, billing_type="postpaid")
        book(conn, account, "debit", Decimal("500"), NOW, reference="old invoice")
        return rating.authorize_call(conn, _service(conn, account, plan), "44123", NOW)

    auth = database.run_blocking(work)
    assert auth.billing_type == "postpaid" and auth.max_seconds is None


def test_a_zero_cost_plan_lets_a_prepaid_account_call_without_money(database):
    def work(conn):
        plan = _plan(conn, "Zero cost (Call)", {"": ("0", "0", 60, 60)})
        service = _service(conn, _account(conn), plan)
        return rating.authorize_call(conn, service, "+44 20 7946 0000", NOW)

    auth = database.run_blocking(work)
    assert auth.max_seconds is None and auth.rate.price_per_minute == 0


# -- CDRs ---------------------------------------------------------------------------------


def _call(account: int, service: int | None, r: rating.Rate | None, **kw) -> cdr.CallRecord:
    values = dict(
        call_id="c-1", account_id=account, node="node-a", start_time=NOW, service_id=service,
        caller="+15550100", callee="+442079460000", answer_time=at(5), end_time=at(5 + 61),
        hangup_side="caller", rate=r, currency=None if r is None else r.currency,
    )
    values.update(kw)
    return cdr.CallRecord(**values)


def _setup_call(conn, rates=None, **account):
    plan = _plan(conn, "p", rates or {"44": ("1.20", "0.05", 60, 60)})
    account_id = _account(conn, **account)
    service = _service(conn, account_id, plan)
    return account_id, service, rating.authorize_call(conn, service, "+442079460000", NOW).rate


def test_finish_call_writes_the_cdr_and_charges_it_once(database):
    def setup(conn):
        return _setup_call(conn, topup="10")

    account, service, r = database.run_blocking(setup)
    record = _call(account, service, r, sip_code=200, reason="BYE", recording="/var/lib/switchd/rec/c-1.wav")
    first = database.run_blocking(cdr.finish_call, record)
    again = database.run_blocking(cdr.finish_call, record)
    assert first == again

    def check(conn):
        return conn.execute(select(m.cdrs)).all(), _ledger(conn, account), _balance(conn, account), _explained(conn, account)

    rows, moves, balance, explained = database.run_blocking(check)
    assert len(rows) == 1
    row = rows[0]
    assert row.id == first and row.call_id == "c-1" and row.account_id == account and row.service_id == service
    assert (row.start_time, row.answer_time, row.end_time) == (NOW, at(5), at(66))
    assert row.ring_seconds == 5 and row.billable_seconds == 120
    assert row.rate == Decimal("1.2") and row.charge == Decimal("2.45") and row.currency == "EUR"
    assert (row.hangup_side, row.sip_code, row.reason, row.node) == ("caller", 200, "BYE", "node-a")
    assert row.recording == "/var/lib/switchd/rec/c-1.wav" and row.direction == "outbound"
    assert row.created_at == at(66)
    assert [(mv.kind, mv.amount, mv.reference) for mv in moves] == [
        ("topup", Decimal("10"), "initial"),
        ("charge", Decimal("-2.45"), "call:c-1"),
    ]
    assert moves[1].created_at == at(66)
    assert balance == Decimal("7.55") and explained


def test_a_failed_transaction_leaves_neither_cdr_nor_charge(database):
    account, service, r = database.run_blocking(lambda conn: _setup_call(conn, topup="10"))

    def finish_then_fail(conn):
        cdr.record_answer(conn, _call(account, service, r), NOW)
        cdr.finish_call(conn, _call(account, service, r))
        raise RuntimeError("the worker died")

    with pytest.raises(RuntimeError):
        database.run_blocking(finish_then_fail)

    def check(conn):
        return (
            conn.execute(select(func.count()).select_from(m.cdrs)).scalar(),
            conn.execute(select(func.count()).select_from(m.active_calls)).scalar(),
            _balance(conn, account),
            len(_ledger(conn, account)),
        )

    assert database.run_blocking(check) == (0, 0, Decimal("10"), 1)


def test_a_prepaid_balance_may_end_below_zero_by_the_last_increment(database):
    def setup(conn):
        account, service, r = _setup_call(conn, topup="1.30")
        return account, service, r, rating.authorize_call(conn, service, "+442079460000", NOW).max_seconds

    account, service, r, max_seconds = database.run_blocking(setup)
    assert max_seconds == 60
    # Cut a second late: the second minute started, and is charged.
    database.run_blocking(cdr.finish_call, _call(account, service, r))
    balance, explained = database.run_blocking(lambda c: (_balance(c, account), _explained(c, account)))
    assert balance == Decimal("-1.15") and explained


def test_zero_cost_and_unanswered_calls_cost_nothing(database):
    def setup(conn):
        return _setup_call(conn, rates={"": ("0", "0", 60, 60)})

    account, service, free = database.run_blocking(setup)
    zero = database.run_blocking(cdr.finish_call, _call(account, service, free, call_id="free"))
    missed = database.run_blocking(
        cdr.finish_call,
        _call(account, service, free, call_id="busy", answer_time=None, end_time=at(7.2), sip_code=486,
              reason="Busy Here", hangup_side="callee"),
    )
    unrated = database.run_blocking(
        cdr.finish_call,
        _call(account, None, None, call_id="refused", answer_time=None, end_time=at(0.1), sip_code=402,
              reason="insufficient funds", hangup_side="switch"),
    )

    def check(conn):
        return {row.id: row for row in conn.execute(select(m.cdrs)).all()}, _ledger(conn, account)

    rows, moves = database.run_blocking(check)
    assert rows[zero].charge == Decimal("0") and rows[zero].billable_seconds == 120 and rows[zero].rate == Decimal("0")
    assert rows[missed].answer_time is None and rows[missed].ring_seconds == 8 and rows[missed].billable_seconds == 0
    assert rows[missed].charge == Decimal("0") and rows[missed].sip_code == 486
    assert rows[unrated].rate is None and rows[unrated].currency is None and rows[unrated].service_id is None
    assert moves == []


def test_long_values_are_cut_to_fit_rather_than_losing_the_cdr(database):
    account, service, r = database.run_blocking(lambda conn: _setup_call(conn, topup="10"))
    long_id = "x" * 199
    record = _call(account, service, r, call_id=long_id, caller="1" * 100, reason="r" * 300)
    database.run_blocking(cdr.finish_call, record)

    def check(conn):
        return conn.execute(select(m.cdrs)).one(), _ledger(conn, account)[-1]

    row, move = database.run_blocking(check)
    assert row.call_id == long_id and row.caller == "1" * 64 and len(row.reason) == 200
    assert move.reference == cdr.call_reference(long_id) and move.reference.startswith("call:sha256:")
    assert len(move.reference) <= 200 and cdr.call_reference("abc") == "call:abc"


def test_call_ids_too_long_for_the_column_stay_distinct(database):
    account, service, r = database.run_blocking(lambda conn: _setup_call(conn, topup="10"))
    first, second = "a" * 250 + "1", "a" * 250 + "2"
    for call_id in (first, second, first):
        database.run_blocking(cdr.record_answer, _call(account, service, r, call_id=call_id), at(5))
        database.run_blocking(cdr.finish_call, _call(account, service, r, call_id=call_id))

    def check(conn):
        return (
            conn.execute(select(m.cdrs.c.call_id).order_by(m.cdrs.c.id)).scalars().all(),
            [mv.reference for mv in _ledger(conn, account)[1:]],
            conn.execute(select(func.count()).select_from(m.active_calls)).scalar(),
        )

    ids, references, active = database.run_blocking(check)
    assert ids == [cdr.stored_call_id(first), cdr.stored_call_id(second)]
    assert all(len(i) == 200 and i.startswith("a" * 100) for i in ids) and ids[0] != ids[1]
    assert references == [cdr.call_reference(i) for i in ids] and len(set(references)) == 2
    assert active == 0


# -- crash safety -------------------------------------------------------------------------


def test_a_crashed_nodes_calls_end_at_its_last_heartbeat(database):
    account, service, r = database.run_blocking(lambda conn: _setup_call(conn, topup="10"))
    talking = _call(account, service, r, call_id="talking", end_time=None, hangup_side=None)
    late = _call(account, service, r, call_id="late", answer_time=at(100), end_time=None, hangup_side=None)
    elsewhere = _call(account, service, r, call_id="elsewhere", node="node-b", end_time=None, hangup_side=None)

    database.run_blocking(cdr.start_node, "node-a", NOW)
    database.run_blocking(cdr.record_answer, talking, at(5))
    database.run_blocking(cdr.record_answer, talking, at(6))  # a retry changes nothing
    database.run_blocking(cdr.record_answer, elsewhere, at(5))
    database.run_blocking(cdr.heartbeat, "node-a", at(70))
    database.run_blocking(cdr.record_answer, late, at(100))
    # ... node-a dies at 120 s and comes back at 600 s.
    assert database.run_blocking(cdr.start_node, "node-a", at(600)) == 2
    assert database.run_blocking(cdr.start_node, "node-a", at(601)) == 0
    assert database.run_blocking(cdr.reconcile, "node-a", at(602)) == 0

    def check(conn):
        return (
            {row.call_id: row for row in conn.execute(select(m.cdrs)).all()},
            conn.execute(select(m.active_calls.c.call_id)).scalars().all(),
            conn.execute(select(m.nodes).where(m.nodes.c.name == "node-a")).one(),
            _ledger(conn, account),
            _explained(conn, account),
        )

    rows, active, node, moves, explained = database.run_blocking(check)
    assert set(rows) == {"talking", "late"} and active == ["elsewhere"]
    talked = rows["talking"]
    assert talked.end_time == at(70) and talked.answer_time == at(5) and talked.billable_seconds == 120
    assert (talked.hangup_side, talked.reason, talked.sip_code) == ("switch", "node restart", None)
    assert talked.charge == Decimal("2.45") and talked.rate == Decimal("1.2") and talked.currency == "EUR"
    assert talked.created_at == at(600) and talked.caller == "+15550100" and talked.service_id == service
    # Answered after the last heartbeat: nothing is known to have been said.
    assert rows["late"].end_time == at(100) and rows["late"].charge == Decimal("0")
    assert node.started_at == at(601) and node.heartbeat_at == at(601)
    assert [mv.reference for mv in moves] == ["initial", "call:talking"] and explained


def test_reconcile_without_a_heartbeat_ends_calls_at_their_answer(database):
    account, service, _ = database.run_blocking(lambda conn: _setup_call(conn, topup="10"))
    database.run_blocking(cdr.record_answer, _call(account, service, None, end_time=None), at(5))
    assert database.run_blocking(cdr.reconcile, "node-a", at(900)) == 1
    row = database.run_blocking(lambda c: c.execute(select(m.cdrs)).one())
    assert row.end_time == at(5) and row.rate is None and row.charge == 0


def test_heartbeat_keeps_the_first_start(database):
    database.run_blocking(cdr.heartbeat, "node-a", NOW)
    database.run_blocking(cdr.heartbeat, "node-a", at(10))
    row = database.run_blocking(lambda c: c.execute(select(m.nodes)).one())
    assert (row.name, row.started_at, row.heartbeat_at) == ("node-a", NOW, at(10))


def test_record_answer_needs_an_answered_call_and_finish_an_ended_one(database):
    with pytest.raises(ValueError):
        database.run_blocking(cdr.record_answer, _call(1, None, None, answer_time=None), NOW)
    with pytest.raises(ValueError):
        database.run_blocking(cdr.finish_call, _call(1, None, None, end_time=None))


# -- periodic fees -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "now", "key", "start"),
    [
        ("day", NOW, "2026-11-21", datetime.datetime(2026, 11, 21, tzinfo=UTC)),
        ("week", NOW, "2026-W47", datetime.datetime(2026, 11, 16, tzinfo=UTC)),
        ("month", NOW, "2026-11", datetime.datetime(2026, 11, 1, tzinfo=UTC)),
        ("year", NOW, "2026", datetime.datetime(2026, 1, 1, tzinfo=UTC)),
        # ISO weeks straddle years: 1 January 2027 is in week 53 of 2026.
        ("week", datetime.datetime(2027, 1, 1, 9, tzinfo=UTC), "2026-W53", datetime.datetime(2026, 12, 28, tzinfo=UTC)),
        ("week", datetime.datetime(2027, 1, 4, tzinfo=UTC), "2027-W01", datetime.datetime(2027, 1, 4, tzinfo=UTC)),
        # Periods are UTC: 00:30 in Berlin is still the previous day.
        ("day", datetime.datetime(2026, 12, 1, 0, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
         "2026-11-30", datetime.datetime(2026, 11, 30, tzinfo=UTC)),
    ],
)
def test_period_keys(period, now, key, start):
    assert periodic.period_key(period, now) == (key, start)


def test_there_is_no_period_none():
    with pytest.raises(ValueError):
        periodic.period_key("none", NOW)


def _fee_setup(conn) -> dict[str, int]:
    plan = _plan(conn, "Zero cost (Call)", {"": ("0", "0", 60, 60)})
    account = _account(conn, topup="100")
    blocked = _account(conn, topup="100", status="blocked")
    return {
        "account": account,
        "day": _service(conn, account, plan, fee="0.10", period="day"),
        "week": _service(conn, account, plan, fee="1", period="week"),
        "month": _service(conn, account, plan, fee="3", period="month"),
        "year": _service(conn, account, plan, fee="30", period="year"),
        "none": _service(conn, account, plan, fee="5", period="none"),
        "free": _service(conn, account, plan, fee="0", period="month"),
        "suspended": _service(conn, account, plan, fee="3", period="month", status="suspended"),
        "blocked": _service(conn, blocked, plan, fee="3", period="month"),
    }


def test_periodic_fees_are_charged_once_per_period(database):
    ids = database.run_blocking(_fee_setup)
    account = ids["account"]
    runs = [
        NOW,  # every period starts: day, week, month, year
        at(1), at(3600),  # same periods
        datetime.datetime(2026, 11, 22, 0, 0, tzinfo=UTC),  # Sunday: a new day
        datetime.datetime(2026, 11, 23, 0, 0, tzinfo=UTC),  # Monday: new day and week
        datetime.datetime(2026, 11, 23, 23, 59, 59, tzinfo=UTC),
        datetime.datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC),  # new day, week 49, month
        datetime.datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC),  # Thursday: new day, week 53
        datetime.datetime(2027, 1, 1, 0, 0, tzinfo=UTC),  # new day, month, year; still week 53
    ]
    booked = [database.run_blocking(periodic.charge_periodic_fees, when) for when in runs]
    assert booked == [4, 0, 0, 1, 2, 0, 3, 2, 3]

    def check(conn):
        return [(mv.reference, mv.amount) for mv in _ledger(conn, account)[1:]], _explained(conn, account)

    moves, explained = database.run_blocking(check)
    d, w, mo, y = ids["day"], ids["week"], ids["month"], ids["year"]
    assert moves == [
        (f"service:{d}:2026-11-21", Decimal("-0.1")),
        (f"service:{w}:2026-W47", Decimal("-1")),
        (f"service:{mo}:2026-11", Decimal("-3")),
        (f"service:{y}:2026", Decimal("-30")),
        (f"service:{d}:2026-11-22", Decimal("-0.1")),
        (f"service:{d}:2026-11-23", Decimal("-0.1")),
        (f"service:{w}:2026-W48", Decimal("-1")),
        (f"service:{d}:2026-12-01", Decimal("-0.1")),
        (f"service:{w}:2026-W49", Decimal("-1")),
        (f"service:{mo}:2026-12", Decimal("-3")),
        (f"service:{d}:2026-12-31", Decimal("-0.1")),
        (f"service:{w}:2026-W53", Decimal("-1")),
        (f"service:{d}:2027-01-01", Decimal("-0.1")),
        (f"service:{mo}:2027-01", Decimal("-3")),
        (f"service:{y}:2027", Decimal("-30")),
    ]
    assert explained


def test_fees_are_charged_even_below_zero_and_only_while_active(database):
    def setup(conn):
        plan = _plan(conn, "p", {"": ("0", "0", 60, 60)})
        account = _account(conn)
        return account, _service(conn, account, plan, fee="9.99", period="month")

    account, service = database.run_blocking(setup)
    assert database.run_blocking(periodic.charge_periodic_fees, NOW) == 1
    assert database.run_blocking(_balance, account) == Decimal("-9.99")
    database.run_blocking(
        lambda c: c.execute(update(m.services).where(m.services.c.id == service).values(status="suspended"))
    )
    assert database.run_blocking(periodic.charge_periodic_fees, datetime.datetime(2026, 12, 2, tzinfo=UTC)) == 0


def test_two_nodes_charging_at_once_charge_once(engine):
    database = Database(engine, runner=run_synchronously)
    account = database.run_blocking(_fee_setup)["account"]
    results: list = []
    with engine.connect() as first:
        with first.begin():
            assert periodic.charge_periodic_fees(first, NOW) == 4

            def second_node():
                try:
                    results.append(database.run_blocking(periodic.charge_periodic_fees, NOW))
                except Exception as e:  # pragma: no cover - reported below
                    results.append(e)

            other = threading.Thread(target=second_node)
            other.start()
            other.join(0.5)  # it waits for our transaction (lock or unique index)
        other.join(30)
    assert results == [0]
    assert database.run_blocking(lambda c: len(_ledger(c, account))) == 5


def test_the_services_run_on_the_injected_clock(database):
    ids = database.run_blocking(_fee_setup)
    clock = Clock()
    clock.advance(NOW.timestamp())
    fees = periodic.PeriodicFees(database, clock, interval=3600)
    beat = periodic.NodeHeartbeat(database, clock, "node-a", interval=10)

    def count(conn):
        return len(_ledger(conn, ids["account"])) - 1

    def node(conn):
        return conn.execute(select(m.nodes)).one()

    with capturedLogs() as events:
        fees.startService()
        beat.startService()
    assert database.run_blocking(count) == 4
    assert any(e.get("count") == 4 for e in events)
    assert database.run_blocking(node).heartbeat_at == NOW
    clock.advance(10)
    assert database.run_blocking(node).heartbeat_at == at(10)
    for _ in range(12 * 360):  # to midnight, in heartbeat steps: 12 h
        clock.advance(10)
    assert database.run_blocking(count) == 5  # the next day's fee, from the hourly run
    assert database.run_blocking(node).heartbeat_at == at(12 * 3600 + 10)
    assert fees.stopService() is None and beat.stopService() is None
    clock.advance(86400)
    assert database.run_blocking(count) == 5 and not clock.getDelayedCalls()


def test_a_failed_run_is_logged_and_tried_again(engine):
    calls = []

    def flaky(fn, *args, **kwargs):
        calls.append(fn)
        if len(calls) == 1:
            return fail(RuntimeError("database is down"))
        return run_synchronously(fn, *args, **kwargs)

    database = Database(engine, runner=flaky)
    clock = Clock()
    clock.advance(NOW.timestamp())
    beat = periodic.NodeHeartbeat(database, clock, "node-a", interval=10)
    with capturedLogs() as events:
        beat.startService()
    assert any("log_failure" in e and "heartbeat of node node-a" in str(e.get("what")) for e in events)
    clock.advance(10)
    assert database.run_blocking(lambda c: c.execute(select(m.nodes.c.heartbeat_at)).scalar()) == at(10)
    beat.stopService()
    with pytest.raises(ValueError):
        periodic.PeriodicFees(database, clock, interval=0)
