"""The database: an SQLAlchemy engine whose work runs in a thread pool.

Every call returns a Deferred; the reactor thread never touches a
connection. ``Database.run(fn, ...)`` calls ``fn(conn, ...)`` in a worker
thread inside one transaction (committed when ``fn`` returns, rolled back if
it raises). Tests may pass ``runner=run_synchronously`` to run the same code
in the calling thread.
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


def make_engine(url: str, pool_size: int = 8, *, reader: bool = False) -> Engine:
    """An engine with the settings switchd needs on each backend.

    ``reader`` (SQLite only): connections that only read, in deferred
    transactions that never take the write lock (``PRAGMA query_only``); in
    WAL mode they read a snapshot while the writer commits.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=NullPool if path == ":memory:" else None,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            # Let SQLAlchemy, not pysqlite, decide where transactions begin.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # a commit is on disk before it is answered
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            if reader:
                cur.execute("PRAGMA query_only=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # pragma: no cover - trivial
            # IMMEDIATE takes the write lock up front: no upgrade deadlocks
            # between a reader that later writes and another writer. A
            # reader's transaction is a plain (deferred) one: a snapshot.
            conn.exec_driver_sql("BEGIN" if reader else "BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        # SQLAlchemy 2.1 defaults to psycopg 3; switchd ships psycopg2.
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        pool_recycle=3600,
        connect_args={"connect_timeout": 10},
    )


def run_synchronously(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred:
    """A runner for tests: do the work now, in this thread."""
    return maybeDeferred(fn, *args, **kwargs)


#: Threads (and connections) of SQLite's readers.
SQLITE_READERS = 2


class Database(Service):
    """Owns the engine and the worker threads; a child of the daemon's service.

    ``run`` is for work that writes; ``read`` for work that only reads and
    must not wait behind writes (authorising a call). On SQLite, the one
    writer thread runs ``run``; ``read`` has threads and connections of its
    own (WAL readers see the last commit and never wait for the writer). On
    PostgreSQL both share the pool.
    """

    log = Logger()

    def __init__(
        self,
        engine: Engine,
        reactor: IReactorThreads | None = None,
        threads: int = 8,
        runner: Callable[..., Deferred] | None = None,
    ) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._reactor = reactor
        if self.dialect == "sqlite":
            threads = 1  # one writer
        self._pool: ThreadPool | None = None
        self._read_pool: ThreadPool | None = None
        self.read_engine: Engine | None = None
        if runner is None:
            if reactor is None:
                raise ValueError("a Database needs a reactor or a runner")
            self._pool = ThreadPool(minthreads=1, maxthreads=threads, name="switchd-db")
            runner = self._in_pool
            database = engine.url.database
            if self.dialect == "sqlite" and database and database != ":memory:":
                self.read_engine = make_engine(
                    engine.url.render_as_string(hide_password=False), SQLITE_READERS, reader=True
                )
                self._read_pool = ThreadPool(minthreads=1, maxthreads=SQLITE_READERS, name="switchd-db-read")
        self._runner = runner

    def _in_pool(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred:
        assert self._pool is not None
        return deferToThreadPool(self._reactor, self._pool, fn, *args, **kwargs)

    def startService(self) -> None:
        super().startService()
        for pool in (self._pool, self._read_pool):
            if pool is not None:
                pool.start()

    def stopService(self) -> Deferred | None:
        super().stopService()
        engines = [e for e in (self.engine, self.read_engine) if e is not None]
        if self._pool is None:
            for engine in engines:
                engine.dispose()
            return None
        pools = [p for p in (self._pool, self._read_pool) if p is not None]
        self._pool = self._read_pool = None
        # Joining the workers waits for in-flight transactions to finish;
        # do it off the reactor thread so other services can stop meanwhile.

        def finish() -> None:
            for pool in pools:
                pool.stop()
            for engine in engines:
                engine.dispose()

        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), finish)

    def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred:
        """Run ``fn(conn, *args, **kwargs)``, which only reads, in one transaction
        that does not wait behind the writes (on SQLite; ``run`` elsewhere)."""
        if self._read_pool is None or self.read_engine is None:
            return self.run(fn, *args, **kwargs)
        engine = self.read_engine

        def work() -> T:
            with engine.begin() as conn:
                return fn(conn, *args, **kwargs)

        return deferToThreadPool(self._reactor, self._read_pool, work)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred:
        """Run ``fn(conn, *args, **kwargs)`` in one transaction, off the reactor."""

        def work() -> T:
            with self.engine.begin() as conn:
                return fn(conn, *args, **kwargs)

        return self._runner(work)

    def run_blocking(self, fn: Callable[[Connection], T], *args: Any, **kwargs: Any) -> T:
        """Run in the calling thread: for command-line tools and startup only."""
        with self.engine.begin() as conn:
            return fn(conn, *args, **kwargs)
