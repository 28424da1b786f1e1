from twisted.internet.task import Clock

from switchd.core.events import EventBus, SourceBanned, TrunkReachabilityChanged
from switchd.core.ratelimit import RateLimiter


def test_bucket_allows_the_rate_and_says_when_to_retry():
    clock = Clock()
    limiter = RateLimiter(clock)
    limiter.configure("trunk-cps", 7, rate=10, burst=10)
    assert all(limiter.allow("trunk-cps", 7).allowed for _ in range(10))
    refused = limiter.allow("trunk-cps", 7)
    assert not refused.allowed and refused.retry_after == 0.1
    clock.advance(0.1)
    assert limiter.allow("trunk-cps", 7).allowed
    assert not limiter.allow("trunk-cps", 7).allowed
    # Other keys and unconfigured kinds are not limited.
    assert limiter.allow("trunk-cps", 8).allowed
    assert limiter.allow("nothing", 1).allowed


def test_tokens_given_back_count_again_but_never_above_the_burst():
    clock = Clock()
    limiter = RateLimiter(clock)
    limiter.configure("guess", 1, rate=0.1, burst=2)
    assert limiter.allow("guess", 1).allowed and limiter.allow("guess", 1).allowed
    assert not limiter.allow("guess", 1).allowed
    limiter.give_back("guess", 1)
    assert limiter.allow("guess", 1).allowed
    for _ in range(5):
        limiter.give_back("guess", 1)
    assert limiter.allow("guess", 1).allowed and limiter.allow("guess", 1).allowed
    assert not limiter.allow("guess", 1).allowed  # capped at 2
    limiter.give_back("guess", 99)  # a key with no bucket: nothing happens
    limiter.give_back("nothing", 1)


def test_limits_change_without_a_restart():
    clock = Clock()
    limiter = RateLimiter(clock)
    limiter.configure("smpp", "acme", rate=1, burst=1)
    assert limiter.allow("smpp", "acme").allowed
    assert not limiter.allow("smpp", "acme").allowed
    limiter.configure("smpp", "acme", rate=100, burst=100)
    clock.advance(0.05)
    assert sum(limiter.allow("smpp", "acme").allowed for _ in range(10)) == 5


def test_default_rate_applies_per_key_and_idle_keys_are_pruned():
    clock = Clock()
    limiter = RateLimiter(clock)
    limiter.set_default("sip-source", rate=2, burst=4)
    assert [limiter.allow("sip-source", "192.0.2.1").allowed for _ in range(5)] == [True] * 4 + [False]
    assert limiter.allow("sip-source", "192.0.2.2").allowed
    assert limiter.prune() == 0  # not yet refilled
    clock.advance(2)
    assert limiter.prune() == 2 and len(limiter) == 0


def test_zero_limit_means_no_limit():
    limiter = RateLimiter(Clock())
    limiter.configure("trunk-cps", 1, rate=0, burst=0)
    assert all(limiter.allow("trunk-cps", 1).allowed for _ in range(1000))
    gate = limiter.gate("trunk-calls", 1, limit=0)
    assert all(gate.acquire() for _ in range(1000))


def test_gate_counts_concurrent_use():
    limiter = RateLimiter(Clock())
    gate = limiter.gate("trunk-calls", 3, limit=2)
    assert gate.acquire() and gate.acquire() and not gate.acquire()
    gate.release()
    assert gate.acquire()
    assert limiter.gate("trunk-calls", 3, limit=5) is gate and gate.acquire()


def test_bus_fans_out_by_class_and_isolates_failing_sinks():
    bus = EventBus()
    seen, everything = [], []

    def broken(event):
        raise RuntimeError("sink bug")

    bus.subscribe(TrunkReachabilityChanged, broken)
    bus.subscribe(TrunkReachabilityChanged, seen.append)
    unsubscribe = bus.subscribe(object, everything.append)
    up = TrunkReachabilityChanged(at=1.0, trunk_id=1, trunk="a", up=True)
    bus.publish(up)
    bus.publish(SourceBanned(at=2.0, source="192.0.2.9", reason="flood", seconds=60))
    unsubscribe()
    bus.publish(up)
    assert seen == [up, up]
    assert len(everything) == 2
