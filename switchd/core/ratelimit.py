"""Token buckets and concurrency gates keyed by (what, who).

One limiter serves every protocol: a trunk's CPS and call limit, SMPP
reception speed, API keys, per-source SIP flood detection. Limits can be
changed at any time (``configure``); time comes from an injected clock, so
tests drive it with ``task.Clock``. Sans-IO: nothing here touches a socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

from twisted.internet.interfaces import IReactorTime


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are enough."""
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def give_back(self, now: float, amount: float = 1.0) -> None:
        """Return tokens taken for something that did not count (never above ``burst``)."""
        self._refill(now)
        self.tokens = min(self.burst, self.tokens + amount)

    def retry_after(self, now: float, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens will be there."""
        self._refill(now)
        if self.tokens >= cost or self.rate <= 0:
            return 0.0
        return (cost - self.tokens) / self.rate

    def idle(self, now: float) -> bool:
        """Full again: forgetting it changes nothing."""
        self._refill(now)
        return self.tokens >= self.burst


@dataclass
class Gate:
    """At most ``limit`` things at once (0: no limit)."""

    limit: int
    active: int = 0

    def acquire(self) -> bool:
        if self.limit and self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        if self.active > 0:
            self.active -= 1


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float = 0.0


class RateLimiter:
    """All buckets and gates of a node, keyed by ``(kind, who)``."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, Hashable], TokenBucket] = {}
        self._limits: dict[str, tuple[float, float]] = {}
        self._gates: dict[tuple[str, Hashable], Gate] = {}

    # -- rates ---------------------------------------------------------------

    def set_default(self, kind: str, rate: float, burst: float | None = None) -> None:
        """The rate for every ``who`` of ``kind`` not configured on its own."""
        self._limits[kind] = (rate, burst if burst is not None else max(rate, 1.0))

    def configure(self, kind: str, who: Hashable, rate: float, burst: float | None = None) -> None:
        """Set or change one key's rate; takes effect on the next request."""
        burst = burst if burst is not None else max(rate, 1.0)
        now = self._clock.seconds()
        bucket = self._buckets.get((kind, who))
        if bucket is None:
            self._buckets[(kind, who)] = TokenBucket(rate, burst, now)
        else:
            bucket._refill(now)
            bucket.rate, bucket.burst = rate, burst
            bucket.tokens = min(bucket.tokens, burst)

    def allow(self, kind: str, who: Hashable, cost: float = 1.0) -> Decision:
        """Take ``cost`` tokens from the key's bucket; unlimited if none applies."""
        now = self._clock.seconds()
        bucket = self._buckets.get((kind, who))
        if bucket is None:
            limits = self._limits.get(kind)
            if limits is None:
                return Decision(True)
            bucket = self._buckets[(kind, who)] = TokenBucket(limits[0], limits[1], now)
        if bucket.rate <= 0 and bucket.burst <= 0:
            return Decision(True)  # a zero limit means "no limit", as in the seeds
        if bucket.take(now, cost):
            return Decision(True)
        return Decision(False, bucket.retry_after(now, cost))

    def give_back(self, kind: str, who: Hashable, amount: float = 1.0) -> None:
        """Return ``amount`` tokens taken by ``allow`` for something that did not count."""
        bucket = self._buckets.get((kind, who))
        if bucket is not None:
            bucket.give_back(self._clock.seconds(), amount)

    # -- concurrency ---------------------------------------------------------------

    def gate(self, kind: str, who: Hashable, limit: int | None = None) -> Gate:
        """The gate for a key; ``limit`` (when given) updates its limit."""
        gate = self._gates.get((kind, who))
        if gate is None:
            gate = self._gates[(kind, who)] = Gate(limit or 0)
        elif limit is not None:
            gate.limit = limit
        return gate

    # -- housekeeping ---------------------------------------------------------------

    def prune(self) -> int:
        """Forget default-rate buckets that are full again and idle gates.

        Keys configured on their own are kept. Returns how many were dropped.
        """
        now = self._clock.seconds()
        dropped = 0
        for key, bucket in list(self._buckets.items()):
            kind = key[0]
            if kind in self._limits and (bucket.rate, bucket.burst) == self._limits[kind] and bucket.idle(now):
                del self._buckets[key]
                dropped += 1
        for key, gate in list(self._gates.items()):
            if gate.active == 0 and gate.limit == 0:
                del self._gates[key]
                dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._buckets) + len(self._gates)
