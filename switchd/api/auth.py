"""API keys: generation, salted hashing and verification with a short cache.

A key looks like ``sk_<prefix>_<secret>``. The prefix is its public lookup
id; only ``sha256(salt + secret)`` is stored. Keys carry 256 bits of entropy,
so a fast hash is safe (no password-stretching needed) and verification
costs microseconds.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from ..store.models import api_keys

KEY_PREFIX = "sk_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: an admin key, or a key acting for one customer."""

    key_id: int
    customer_id: int | None
    admin: bool


def hash_secret(secret: str, salt: str) -> str:
    return hashlib.sha256((salt + secret).encode("utf-8")).hexdigest()


def new_secret_hash(secret: str) -> tuple[str, str]:
    """(salt, hash) for a secret that is only ever verified."""
    salt = secrets.token_hex(16)
    return salt, hash_secret(secret, salt)


def verify_secret(secret: str, salt: str, expected: str) -> bool:
    return hmac.compare_digest(hash_secret(secret, salt), expected)


def generate_key() -> tuple[str, str, str]:
    """(full key, prefix, secret)."""
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return f"{KEY_PREFIX}{prefix}_{secret}", prefix, secret


def split_key(key: str) -> tuple[str, str] | None:
    if not key.startswith(KEY_PREFIX):
        return None
    prefix, sep, secret = key[len(KEY_PREFIX):].partition("_")
    if not sep or len(prefix) != 12 or not secret:
        return None
    return prefix, secret


def create_key(
    conn: Connection,
    now: datetime.datetime,
    *,
    admin: bool,
    customer_id: int | None,
    name: str | None,
) -> tuple[int, str]:
    """Insert a new key; returns (id, the full key to hand out once)."""
    key, prefix, secret = generate_key()
    salt, digest = new_secret_hash(secret)
    key_id = conn.execute(
        insert(api_keys)
        .values(
            admin=admin,
            customer_id=customer_id,
            name=name,
            prefix=prefix,
            salt=salt,
            secret_hash=digest,
            created_at=now,
        )
        .returning(api_keys.c.id)
    ).scalar_one()
    return key_id, key


def lookup(conn: Connection, key: str) -> Principal | None:
    """The principal of a valid, unrevoked key, else None."""
    parts = split_key(key)
    if parts is None:
        return None
    prefix, secret = parts
    row = conn.execute(
        select(
            api_keys.c.id,
            api_keys.c.customer_id,
            api_keys.c.admin,
            api_keys.c.salt,
            api_keys.c.secret_hash,
            api_keys.c.revoked_at,
        ).where(api_keys.c.prefix == prefix)
    ).first()
    if row is None or row.revoked_at is not None:
        return None
    if not verify_secret(secret, row.salt, row.secret_hash):
        return None
    return Principal(key_id=row.id, customer_id=row.customer_id, admin=row.admin)


class KeyCache:
    """Verified keys remembered for ``ttl`` seconds of the injected clock."""

    def __init__(self, seconds: Callable[[], float], ttl: float, size: int = 10000) -> None:
        self._seconds = seconds
        self._ttl = ttl
        self._size = size
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, key: str) -> Principal | None:
        if self._ttl <= 0:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, principal = entry
        if expires < self._seconds():
            del self._entries[key]
            return None
        return principal

    def put(self, key: str, principal: Principal) -> None:
        if self._ttl <= 0:
            return
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[key] = (self._seconds() + self._ttl, principal)

    def forget(self, key_id: int) -> None:
        """Drop a revoked key at once."""
        for cached, (_, principal) in list(self._entries.items()):
            if principal.key_id == key_id:
                del self._entries[cached]
