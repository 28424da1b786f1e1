"""Callback clients in the database: who a number or a login is, their directory.

Every function runs in the caller's transaction (``Database.run``).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from ..api.auth import hash_secret
from ..store.models import accounts, callback_clients, callback_numbers, phone_directory, services


@dataclass(frozen=True)
class Client:
    id: int
    service_id: int
    account_id: int
    login: str
    language: str | None  # None: the access number's
    routed: bool  # the service has a routing group (its calls can go somewhere)

    def language_at(self, access_language: str | None) -> str:
        """The IVR language for a callback through an access number: the
        client's own, else the access number's, else English."""
        return self.language or access_language or "en"


_CLIENT = (
    select(callback_clients.c.id, callback_clients.c.service_id, callback_clients.c.login,
           callback_clients.c.language, callback_clients.c.password_salt, callback_clients.c.password_hash,
           services.c.account_id, services.c.routing_group_id)
    .join(services, services.c.id == callback_clients.c.service_id)
    .where(callback_clients.c.status == "active", services.c.status == "active")
)


def _client(row) -> Client:
    return Client(row.id, row.service_id, row.account_id, row.login, row.language, row.routing_group_id is not None)


def digits(number: str) -> str:
    return number.strip().lstrip("+")


def by_number(conn: Connection, number: str) -> Client | None:
    """The active client a phone number is registered to ("+" or not, the same number)."""
    wanted = digits(number)
    row = conn.execute(
        _CLIENT.join(callback_numbers, callback_numbers.c.client_id == callback_clients.c.id)
        .where(func.ltrim(callback_numbers.c.number, "+") == wanted)
    ).first()
    return None if row is None else _client(row)


def by_login(conn: Connection, login: str, password: str) -> Client | None:
    """The active client with this login and password (compared in constant time)."""
    row = conn.execute(_CLIENT.where(callback_clients.c.login == login)).first()
    if row is None:
        hash_secret(password, "0" * 32)  # the same work whether the login exists or not
        return None
    if not hmac.compare_digest(hash_secret(password, row.password_salt), row.password_hash):
        return None
    return _client(row)


class NumberTaken(Exception):
    """The number is registered to another client."""


def register_number(conn: Connection, client: Client, number: str, now) -> bool:
    """Register ``number`` for ``client``; False if it already was theirs."""
    wanted = digits(number)
    row = conn.execute(
        select(callback_numbers.c.client_id).where(func.ltrim(callback_numbers.c.number, "+") == wanted)
    ).first()
    if row is not None:
        if row.client_id != client.id:
            raise NumberTaken(number)
        return False
    conn.execute(insert(callback_numbers).values(client_id=client.id, number=number, created_at=now, updated_at=now))
    return True


def directory_number(conn: Connection, client: Client, *, name: str | None = None,
                     position: int | None = None) -> str | None:
    """The number of a directory entry, by name (any case) or by position."""
    query = select(phone_directory.c.number).where(phone_directory.c.client_id == client.id)
    if name is not None:
        query = query.where(func.lower(phone_directory.c.name) == name.lower())
    else:
        query = query.where(phone_directory.c.position == position)
    return conn.execute(query).scalar()


def balance(conn: Connection, client: Client):
    row = conn.execute(select(accounts.c.balance, accounts.c.currency).where(accounts.c.id == client.account_id)).first()
    return row.balance, row.currency
