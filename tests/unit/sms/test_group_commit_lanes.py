"""Group commit lanes: each lane in order, one transaction at a time; lanes side
by side up to max_in_flight; the oldest waiting operation goes first when
slots are scarce; one slot means one queue; retries, drain and the default
concurrency per database."""

from __future__ import annotations

from twisted.internet.defer import Deferred, maybeDeferred

from switchd.store.groupcommit import GroupCommit


class HeldDb:
    """``run`` holds each transaction until the test releases it (by index or oldest first)."""

    dialect = "sqlite"

    def __init__(self) -> None:
        self.held: list = []
        self.transactions: list[list] = []
        self.failing: set = set()

    def run(self, fn, work):
        d: Deferred = Deferred()
        self.held.append((d, fn, work))
        return d

    def release(self, index: int = 0) -> None:
        d, fn, work = self.held.pop(index)
        items = [item for _, item in work]
        self.transactions.append(items)
        if self.failing & set(items) and len(items) > 1:
            d.errback(RuntimeError("batch failed"))
            return
        maybeDeferred(fn, "conn", work).chainDeferred(d)


def store(conn, items):
    return [("stored", item) for item in items]


def receipt(conn, items):
    return [("receipt", item) for item in items]


def done(conn, items):
    return [("done", item) for item in items]


def test_lanes_commit_side_by_side_each_in_order():
    db = HeldDb()
    commit = GroupCommit(db, max_in_flight=2, lanes={store: "submit"})
    results: list = []
    for n in range(3):
        commit.submit(store, f"s{n}").addCallback(results.append)
        commit.submit(receipt, f"r{n}").addCallback(results.append)
    # One transaction per lane: the first of each, the rest waits in its lane.
    assert [[item for _, item in work] for _, _, work in db.held] == [["s0"], ["r0"]]
    assert commit.pending == 4 and commit.busy
    db.release(1)  # the receipt lane commits first: its next batch starts, the store lane still runs
    assert [[item for _, item in work] for _, _, work in db.held] == [["s0"], ["r1", "r2"]]
    db.release(0)
    db.release(0)
    db.release(0)
    assert results == [("receipt", "r0"), ("stored", "s0"), ("receipt", "r1"), ("receipt", "r2"),
                       ("stored", "s1"), ("stored", "s2")]
    assert not commit.busy and commit.pending == 0 and commit.transactions == 4


def test_when_slots_are_scarce_the_lane_waiting_longest_goes_first():
    db = HeldDb()
    commit = GroupCommit(db, max_in_flight=2, lanes={store: "submit", done: "outbox"})
    commit.submit(receipt, "r0")
    commit.submit(store, "s0")
    commit.submit(done, "d0")
    commit.submit(receipt, "r1")
    assert [[item for _, item in work] for _, _, work in db.held] == [["r0"], ["s0"]]
    db.release(0)  # r0's slot: d0 waited longer than r1
    assert [[item for _, item in work] for _, _, work in db.held] == [["s0"], ["d0"]]
    db.release(0)
    assert [[item for _, item in work] for _, _, work in db.held] == [["d0"], ["r1"]]


def test_one_transaction_at_a_time_ignores_lanes():
    db = HeldDb()
    commit = GroupCommit(db, max_in_flight=1, lanes={store: "submit", done: "outbox"})
    results: list = []
    for op, item in ((receipt, "r0"), (done, "d0"), (store, "s0"), (done, "d1")):
        commit.submit(op, item).addCallback(results.append)
    db.release()
    db.release()
    assert db.transactions == [["r0"], ["d0", "s0", "d1"]]  # one commit for everything that waited
    assert results == [("receipt", "r0"), ("done", "d0"), ("stored", "s0"), ("done", "d1")]


def test_a_failed_batch_is_retried_one_by_one_within_its_lane():
    db = HeldDb()
    commit = GroupCommit(db, max_in_flight=2, lanes={store: "submit"})
    commit.submit(store, "s0")
    outcomes: list = []
    for name in ("s1", "bad", "s2"):
        commit.submit(store, name).addBoth(outcomes.append)
    db.failing = {"bad"}
    db.release()  # s0
    db.release()  # s1, bad, s2 together: fails
    while db.held:
        db.release()
    assert db.transactions[2:] == [["s1"], ["bad"], ["s2"]]
    assert outcomes[0] == ("stored", "s1") and outcomes[2] == ("stored", "s2")
    assert outcomes[1] == ("stored", "bad")  # alone, it went through


def test_one_failing_item_fails_alone():
    class Db(HeldDb):
        def release(self, index: int = 0) -> None:
            d, fn, work = self.held.pop(index)
            items = [item for _, item in work]
            self.transactions.append(items)
            if "bad" in items:
                d.errback(RuntimeError("bad item"))
            else:
                maybeDeferred(fn, "conn", work).chainDeferred(d)

    db = Db()
    commit = GroupCommit(db, lanes={store: "submit"})
    commit.submit(store, "s0")
    outcomes: list = []
    for name in ("s1", "bad"):
        commit.submit(store, name).addCallbacks(outcomes.append, lambda f: outcomes.append(f.getErrorMessage()))
    drained = commit.drained()
    while db.held:
        db.release()
    assert outcomes == [("stored", "s1"), "bad item"] and drained.called


def test_drained_waits_for_every_lane():
    db = HeldDb()
    commit = GroupCommit(db, max_in_flight=2, lanes={store: "submit"})
    commit.submit(store, "s0")
    commit.submit(receipt, "r0")
    drained = commit.drained()
    db.release(0)
    assert not drained.called
    db.release(0)
    assert drained.called


def test_postgresql_runs_every_lane_at_once():
    class Pg(HeldDb):
        dialect = "postgresql"

    assert GroupCommit(Pg(), lanes={store: "submit", done: "outbox"}).max_in_flight == 3
    assert GroupCommit(Pg(), lanes={store: "submit"}).max_in_flight == 2
    sqlite = GroupCommit(HeldDb(), lanes={store: "submit", done: "outbox"})
    assert sqlite.max_in_flight == 1 and sqlite.lanes == {}
