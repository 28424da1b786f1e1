"""Fixtures shared by the whole suite.

``db_url`` runs a test once on SQLite and once on the PostgreSQL server of
the machine (127.0.0.1:5432, database ``test``), each test in a schema of its
own. PostgreSQL is required: if it is down the tests fail, they never skip.
"""

from __future__ import annotations

import os
import secrets
import urllib.parse

import pytest
from sqlalchemy import create_engine, text

from switchd.store import migrate
from switchd.store.db import Database, make_engine, run_synchronously

PG_ADMIN_URL = os.environ.get(
    "TEST_SWITCHD_POSTGRESQL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def pg_schema_url():
    """A fresh, empty PostgreSQL schema; yields a URL whose search_path is it."""
    schema = "t_" + secrets.token_hex(6)
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    options = urllib.parse.quote(f"-csearch_path={schema}")
    yield f"{PG_ADMIN_URL}?options={options}"
    with admin.connect() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'switchd.sqlite3'}"
    else:
        yield request.getfixturevalue("pg_schema_url")


@pytest.fixture
def engine(db_url):
    """A migrated engine on each backend."""
    engine = make_engine(db_url, pool_size=2)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def database(engine):
    """A Database that runs its work synchronously (no threads, no reactor)."""
    return Database(engine, runner=run_synchronously)
