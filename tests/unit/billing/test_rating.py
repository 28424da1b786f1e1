"""Rating arithmetic: increments, connection fees, free plans and the longest
call a balance pays for, exact at every boundary."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchd.billing.rating import CUTOFF_MARGIN, Rate, billable_seconds, charge, max_duration, number_digits


def rate(per_minute: str = "0.60", first: int = 60, step: int = 60, fee: str = "0") -> Rate:
    return Rate(
        tariff_plan_id=1,
        prefix="",
        price_per_minute=Decimal(per_minute),
        connection_fee=Decimal(fee),
        increment_first=first,
        increment_next=step,
        currency="EUR",
    )


@pytest.mark.parametrize(
    ("first", "step", "duration", "billed"),
    [
        (60, 60, 0, 0),
        (60, 60, 0.2, 60),
        (60, 60, 60, 60),
        (60, 60, 60.000001, 120),
        (60, 60, 61, 120),
        (60, 60, 120, 120),
        (60, 60, 121, 180),
        (1, 1, 0.4, 1),
        (1, 1, 61, 61),
        (1, 1, 61.5, 62),
        (30, 6, 1, 30),
        (30, 6, 30, 30),
        (30, 6, 31, 36),
        (30, 6, 36, 36),
        (30, 6, 37, 42),
    ],
)
def test_billable_seconds_go_by_increments(first, step, duration, billed):
    assert billable_seconds(duration, rate(first=first, step=step)) == billed


def test_increments_of_zero_bill_per_second():
    assert billable_seconds(61.2, rate(first=0, step=0)) == 62


def test_charge_adds_the_connection_fee_to_answered_calls_only():
    r = rate("1.20", 60, 60, fee="0.05")
    assert charge(r, 0) == Decimal("0")  # not answered: no fee either
    assert charge(r, 1) == Decimal("1.25")
    assert charge(r, 61) == Decimal("2.45")
    assert charge(rate("0.60", 1, 1), 61) == Decimal("0.61")
    assert charge(rate("0.60", 30, 6), 31) == Decimal("0.36")
    # Rounded to six places, banker's rounding.
    assert charge(rate("0.000001", 1, 1), 31) == Decimal("0.000001")
    assert charge(rate("0.000001", 1, 1), 29) == Decimal("0")


def test_zero_cost_rates_charge_nothing_and_never_cut():
    free = rate("0")
    assert charge(free, 3600) == Decimal("0")
    assert max_duration(free, Decimal("0")) is None
    assert max_duration(free, Decimal("1000")) is None
    # A free rate with a connection fee: unlimited once the fee is paid.
    assert max_duration(rate("0", fee="0.10"), Decimal("0.10")) is None
    assert max_duration(rate("0", fee="0.10"), Decimal("0.09")) == 0


def test_max_duration_at_the_boundaries():
    r = rate("0.60", 60, 60)  # 0.60 a minute
    assert max_duration(r, Decimal("0.59")) == 0
    assert max_duration(r, Decimal("0.60")) == 60
    assert max_duration(r, Decimal("1.19")) == 60
    assert max_duration(r, Decimal("1.20")) == 120
    per_second = rate("0.60", 1, 1)  # 0.01 a second
    assert max_duration(per_second, Decimal("0.005")) == 0
    assert max_duration(per_second, Decimal("1.00")) == 100
    assert max_duration(per_second, Decimal("1.009")) == 100
    thirty_six = rate("0.60", 30, 6, fee="0.10")
    assert max_duration(thirty_six, Decimal("0.39")) == 0
    assert max_duration(thirty_six, Decimal("0.40")) == 30
    assert max_duration(thirty_six, Decimal("0.46")) == 36
    assert max_duration(thirty_six, Decimal("-5")) == 0


def test_a_call_cut_within_the_margin_is_billed_max_seconds():
    r = rate("0.60", 60, 60)
    longest = max_duration(r, Decimal("1.50"))
    assert longest == 120
    cut = longest - CUTOFF_MARGIN
    assert billable_seconds(cut, r) == longest and charge(r, cut) <= Decimal("1.50")


def test_number_digits():
    assert number_digits("+44 (20) 7946-0000") == "442079460000"
    assert number_digits("+") == ""
    assert number_digits("٣٤") == ""  # only ASCII digits


prices = st.decimals(min_value=Decimal("0.000001"), max_value=Decimal("100"), places=6)
fees = st.decimals(min_value=Decimal("0"), max_value=Decimal("10"), places=6)
increments = st.integers(min_value=1, max_value=3600)
amounts = st.decimals(min_value=Decimal("0"), max_value=Decimal("1000000"), places=6)


@settings(max_examples=500, deadline=None)
@given(prices, fees, increments, increments, amounts)
def test_max_duration_is_the_longest_call_the_money_pays(price, fee, first, step, available):
    r = Rate(1, "", price, fee, first, step, "EUR")
    longest = max_duration(r, available)
    assert longest is not None
    if longest == 0:
        assert charge(r, first) > available
        return
    assert billable_seconds(longest, r) == longest  # a whole number of increments
    assert charge(r, longest) <= available
    if longest < 10**9:  # beyond, a float cannot hold a thousandth of a second
        assert charge(r, longest + 0.001) > available  # one more started increment
    assert charge(r, longest + step) > available


@settings(max_examples=200, deadline=None)
@given(prices, fees, increments, increments, st.floats(min_value=0, max_value=100000, allow_nan=False))
def test_charge_grows_with_the_duration(price, fee, first, step, duration):
    r = Rate(1, "", price, fee, first, step, "EUR")
    billed = billable_seconds(duration, r)
    assert billed >= duration
    assert duration == 0 or billed < max(duration, first) + step
    assert charge(r, duration) <= charge(r, duration + 1)
