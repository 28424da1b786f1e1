"""The brake on guessing voucher PINs (sans-IO, on a task.Clock)."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from switchd.billing.vouchers import RedeemGuard
from switchd.core.ratelimit import RateLimiter

KEYS = (("key", 1), ("account", 7))


def _guard(**kw) -> tuple[RedeemGuard, Clock]:
    clock = Clock()
    clock.advance(1000)
    return RedeemGuard(RateLimiter(clock), clock, **kw), clock


def _fail(guard: RedeemGuard, keys=KEYS) -> float:
    wait = guard.admit(keys)
    if not wait:
        guard.done(keys, failed=True)
    return wait


def test_five_failures_then_wait_until_one_is_forgotten():
    guard, clock = _guard(failures=5, window=900)
    assert [_fail(guard) for _ in range(5)] == [0.0] * 5
    assert guard.admit(KEYS) == pytest.approx(180)  # one token back takes 900 s / 5
    clock.advance(179)
    assert guard.admit(KEYS) == pytest.approx(1)
    clock.advance(1)
    assert _fail(guard) == 0.0  # one more try; it fails too...
    assert guard.admit(KEYS) == pytest.approx(180)  # ...and the next waits a full token again
    clock.advance(900)
    assert [_fail(guard) for _ in range(6)] == [0.0] * 5 + [pytest.approx(180)]  # the bucket holds 5, no more


def test_successes_cost_nothing():
    guard, _ = _guard(failures=2, window=60)
    for _ in range(50):
        assert guard.admit(KEYS) == 0.0
        guard.done(KEYS, failed=False)
    assert _fail(guard) == 0.0 and _fail(guard) == 0.0
    assert guard.admit(KEYS) > 0


def test_each_key_is_braked_on_its_own_and_a_refusal_takes_nothing():
    guard, _ = _guard(failures=1, window=60)
    _fail(guard, (("key", 1), ("account", 7)))
    assert guard.admit((("key", 1), ("account", 8))) > 0  # the key is out, whatever the account
    assert guard.admit((("key", 2), ("account", 7))) > 0  # and the account, whatever the key
    assert guard.admit((("key", 2), ("account", 8))) == 0.0  # the refusals above took nothing from these
    guard.done((("key", 2), ("account", 8)), failed=False)
    assert guard.admit((("account", 8), ("key", 1))) > 0
    assert guard.admit((("account", 8),)) == 0.0  # refused by key 1 after account 8 was charged: given back


def test_parallel_attempts_hold_a_token_each_until_they_end():
    guard, _ = _guard(failures=3, window=60)
    assert [guard.admit(KEYS) for _ in range(3)] == [0.0] * 3
    assert guard.admit(KEYS) > 0  # a fourth guess at once must wait for the others' outcome
    guard.done(KEYS, failed=False)
    assert guard.admit(KEYS) == 0.0


def test_bad_limits_are_refused():
    clock = Clock()
    with pytest.raises(ValueError):
        RedeemGuard(RateLimiter(clock), clock, failures=0)
