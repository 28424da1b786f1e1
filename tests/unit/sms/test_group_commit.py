"""Group commits without a database: batching, order, one call per run of the
same operation, retry one by one after a failed transaction, overload."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, fail, maybeDeferred

from switchd.sms.store import GroupCommit, Overloaded


class FakeDb:
    """``run(fn, *args)`` calls ``fn("conn", *args)`` when released (or at once)."""

    def __init__(self, hold: bool = True):
        self.hold = hold
        self.held: list = []
        self.transactions: list[list] = []
        self.fail_when = lambda work: False

    def run(self, fn, *args):
        if self.hold:
            d = Deferred()
            self.held.append((d, fn, args))
            return d
        return self._execute(fn, args)

    def _execute(self, fn, args):
        work = args[0]
        self.transactions.append([item for _, item in work])
        if self.fail_when(work):
            return fail(RuntimeError("transaction failed"))
        return maybeDeferred(fn, "conn", *args)

    def release(self):
        d, fn, args = self.held.pop(0)
        self._execute(fn, args).chainDeferred(d)


def double(conn, items):
    return [item * 2 for item in items]


def negate(conn, items):
    return [-item for item in items]


def test_what_queues_behind_a_transaction_goes_together_in_the_next():
    db = FakeDb()
    commit = GroupCommit(db)
    results: list = []
    for n in range(1, 6):
        commit.submit(double, n).addCallback(results.append)
    assert len(db.held) == 1 and commit.pending == 4 and commit.busy
    db.release()
    assert results == [2]
    db.release()
    assert results == [2, 4, 6, 8, 10] and db.transactions == [[1], [2, 3, 4, 5]]
    assert commit.transactions == 2 and not commit.busy


def test_runs_of_one_operation_are_one_call_and_order_is_kept():
    calls: list = []

    def tracked(op):
        def run(conn, items):
            calls.append((op.__name__, list(items)))
            return op(conn, items)
        return run

    db = FakeDb()
    commit = GroupCommit(db)
    d, n = tracked(double), tracked(negate)
    results: list = []
    commit.submit(d, 0).addCallback(results.append)
    for op, item in ((d, 1), (d, 2), (n, 3), (d, 4)):
        commit.submit(op, item).addCallback(results.append)
    db.release()
    db.release()
    assert calls == [("double", [0]), ("double", [1, 2]), ("negate", [3]), ("double", [4])]
    assert results == [0, 2, 4, -3, 8]


def test_a_failed_transaction_is_retried_one_operation_at_a_time():
    db = FakeDb(hold=False)
    db.fail_when = lambda work: any(item == 3 for _, item in work)
    commit = GroupCommit(db, max_batch=10)
    db.hold = True
    outcomes: list = []
    for n in range(1, 5):
        commit.submit(double, n).addBoth(outcomes.append)
    db.hold = False
    db.release()  # the first, alone
    assert outcomes[:2] == [2, 4] and outcomes[2].check(RuntimeError) and outcomes[3] == 8
    assert db.transactions == [[1], [2, 3, 4], [2], [3], [4]]


def test_a_batch_is_at_most_max_batch():
    db = FakeDb()
    commit = GroupCommit(db, max_batch=2)
    for n in range(5):
        commit.submit(double, n)
    while db.held:
        db.release()
    assert db.transactions == [[0], [1, 2], [3, 4]]


def test_too_much_waiting_is_refused():
    db = FakeDb()
    commit = GroupCommit(db, max_pending=2)
    commit.submit(double, 1)
    commit.submit(double, 2)
    commit.submit(double, 3)
    with pytest.raises(Overloaded):
        commit.submit(double, 4)


def test_an_operation_must_answer_every_item():
    db = FakeDb(hold=False)
    commit = GroupCommit(db)
    failures: list = []
    commit.submit(lambda conn, items: [], 1).addErrback(failures.append)
    assert failures and "returned 0 results for 1 items" in str(failures[0].value)


def test_several_transactions_may_run_at_once_where_the_database_allows():
    db = FakeDb()
    commit = GroupCommit(db, max_in_flight=2)
    results: list = []
    for n in range(1, 6):
        commit.submit(double, n).addCallback(results.append)
    assert len(db.held) == 2 and commit.pending == 3  # two transactions of one, the rest queued
    db.release()
    assert len(db.held) == 2  # the next batch took the freed slot
    while db.held:
        db.release()
    assert sorted(results) == [2, 4, 6, 8, 10] and db.transactions == [[1], [2], [3, 4, 5]]


def test_the_default_concurrency_follows_the_database():
    class Pg(FakeDb):
        dialect = "postgresql"

    assert GroupCommit(FakeDb()).max_in_flight == 1
    assert GroupCommit(Pg()).max_in_flight == 2


def test_drained_fires_when_the_last_commit_is_done():
    db = FakeDb()
    commit = GroupCommit(db)
    assert commit.drained().called
    commit.submit(double, 1)
    commit.submit(double, 2)
    drained = commit.drained()
    db.release()
    assert not drained.called
    db.release()
    assert drained.called
