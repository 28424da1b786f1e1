"""Group commit: many small writes, few transactions.

Operations submitted while a transaction runs go together into the next one
(one commit for hundreds of messages, CDRs or receipts), so durability does
not cap throughput. Used by the SMS engine (``sms/engine.py``) and by the SIP
service for answers and CDRs (``sip/service.py``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure


class Overloaded(Exception):
    """More operations are waiting for the database than the engine accepts."""


@dataclass
class _Waiting:
    op: Callable[[Connection, list[Any]], list[Any]]
    item: Any
    deferred: Deferred
    sequence: int = 0


class GroupCommit:
    """Many small writes, few transactions: the operations queued while
    transactions run go together into the next one.

    ``submit(op, item)`` returns a Deferred that fires with ``op``'s result
    for ``item`` once it is committed. ``op(conn, items) -> results`` takes a
    list and returns one result per item; consecutive operations of the same
    kind run as one call, in submission order. If a transaction fails, its
    operations are retried one per transaction, so one bad item fails alone.

    ``lanes`` maps operations to a lane (by default every operation is in
    one lane). A lane has its own queue and runs one transaction at a time,
    in order; different lanes commit side by side, at most
    ``max_in_flight`` transactions at once (on PostgreSQL one per lane, at
    least 2). With one transaction at a time (SQLite, the single writer
    anyway) lanes are ignored: one queue, one commit for all. The engine puts new
    messages in a lane of their own, so their transactions never wait for
    the account's lock behind another batch of new messages, nor do
    receipts wait behind them; and the customers' acknowledged deliveries in
    another. Within a lane a receipt's lookup always sees the id stored for
    its part just before. Without lanes, ``max_in_flight`` batches of the one
    queue may commit side by side. Under load the batches grow, not the
    number of commits.
    """

    log = Logger()

    def __init__(
        self,
        db: Any,
        *,
        max_batch: int = 1000,
        max_pending: int = 100_000,
        max_in_flight: int | None = None,
        lanes: dict[Callable[..., Any], str] | None = None,
    ) -> None:
        self.db = db
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.lanes = dict(lanes or {})
        if max_in_flight is None:
            # PostgreSQL: every lane at once (at least two transactions); SQLite: one writer.
            postgresql = getattr(db, "dialect", "") == "postgresql"
            max_in_flight = max(2, len(set(self.lanes.values()) | {""})) if postgresql else 1
        self.max_in_flight = max(max_in_flight, 1)
        if self.max_in_flight == 1:
            # One transaction at a time (SQLite): lanes would only split what one
            # commit can carry into several; one queue, in submission order.
            self.lanes = {}
        # One lane: it may use every slot. Several: one transaction per lane, in order.
        self._per_lane = self.max_in_flight if not self.lanes else 1
        self._queues: dict[str, deque[_Waiting]] = {"": deque()}
        for lane in self.lanes.values():
            self._queues.setdefault(lane, deque())
        self._lane_flight: dict[str, int] = dict.fromkeys(self._queues, 0)
        self._waiting = 0
        self._sequence = 0
        self._in_flight = 0
        self._drain_waiters: list[Deferred] = []
        self.transactions = 0  # committed, for metrics and tests

    @property
    def pending(self) -> int:
        """Operations waiting for a transaction (all lanes)."""
        return self._waiting

    @property
    def busy(self) -> bool:
        return self._in_flight > 0

    def drained(self) -> Deferred:
        """Fires once nothing is queued or in flight (at shutdown, before the database stops)."""
        if not self._waiting and not self._in_flight:
            return succeed(None)
        d: Deferred = Deferred()
        self._drain_waiters.append(d)
        return d

    def _check_drained(self) -> None:
        if self._drain_waiters and not self._waiting and not self._in_flight:
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                d.callback(None)

    def submit(self, op: Callable[[Connection, list[Any]], list[Any]], item: Any) -> Deferred:
        """Queue ``item`` for ``op``; raises :class:`Overloaded` beyond ``max_pending``."""
        if self._waiting >= self.max_pending:
            raise Overloaded(f"{self._waiting} operations are waiting for the database")
        self._sequence += 1
        waiting = _Waiting(op, item, Deferred(), self._sequence)
        self._queues[self.lanes.get(op, "")].append(waiting)
        self._waiting += 1
        self._next()
        return waiting.deferred

    def _ready_lane(self) -> str | None:
        """The lane whose oldest operation waited longest among those that may start a transaction."""
        best: str | None = None
        for lane, queue in self._queues.items():
            if not queue or self._lane_flight[lane] >= self._per_lane:
                continue
            if best is None or queue[0].sequence < self._queues[best][0].sequence:
                best = lane
        return best

    def _next(self) -> None:
        while self._in_flight < self.max_in_flight:
            lane = self._ready_lane()
            if lane is None:
                return
            queue = self._queues[lane]
            batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
            self._waiting -= len(batch)
            self._in_flight += 1
            self._lane_flight[lane] += 1
            d = maybeDeferred(self.db.run, _run_batch, [(w.op, w.item) for w in batch])
            d.addCallbacks(self._committed, self._failed, callbackArgs=(batch, lane), errbackArgs=(batch, lane))

    def _release(self, lane: str) -> None:
        self._in_flight -= 1
        self._lane_flight[lane] -= 1
        self._next()
        self._check_drained()

    def _committed(self, results: list[Any], batch: list[_Waiting], lane: str) -> None:
        self.transactions += 1
        self._in_flight -= 1
        self._lane_flight[lane] -= 1
        for waiting, result in zip(batch, results):
            waiting.deferred.callback(result)
        self._next()
        self._check_drained()

    def _failed(self, failure: Failure, batch: list[_Waiting], lane: str) -> None:
        if len(batch) == 1:
            batch[0].deferred.errback(failure)
            self._release(lane)
            return
        self.log.warn(  # noqa: G010 - twisted.logger has warn(), not warning()
            "a group commit of {count} operations failed ({error}); retrying them one by one",
            count=len(batch),
            error=failure.getErrorMessage(),
        )
        self._alone(batch, 0, lane)

    def _alone(self, batch: list[_Waiting], index: int, lane: str) -> None:
        if index >= len(batch):
            self._release(lane)
            return
        waiting = batch[index]
        d = maybeDeferred(self.db.run, _run_batch, [(waiting.op, waiting.item)])

        def done(result: Any) -> None:
            self.transactions += 1
            waiting.deferred.callback(result[0])

        d.addCallbacks(done, waiting.deferred.errback)
        d.addBoth(lambda _: self._alone(batch, index + 1, lane))


def _run_batch(conn: Connection, work: list[tuple[Callable[[Connection, list[Any]], list[Any]], Any]]) -> list[Any]:
    """Run runs of the same operation as one call each, in order; results in order."""
    results: list[Any] = []
    start = 0
    while start < len(work):
        op = work[start][0]
        end = start
        while end < len(work) and work[end][0] is op:
            end += 1
        out = op(conn, [item for _, item in work[start:end]])
        if len(out) != end - start:
            raise RuntimeError(f"{op.__name__} returned {len(out)} results for {end - start} items")
        results.extend(out)
        start = end
    return results
