"""Column types shared by the models."""

from __future__ import annotations

import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from sqlalchemy import BigInteger, DateTime, Integer, Numeric
from sqlalchemy.types import TypeDecorator

#: Money has six decimal places everywhere: enough for per-second rates.
MONEY_PLACES = 6
_QUANTUM = Decimal(1).scaleb(-MONEY_PLACES)
_SCALE = 10**MONEY_PLACES

#: Largest absolute amount any column holds (fits SQLite's 64-bit integers).
MONEY_LIMIT = Decimal(10) ** 12

#: Primary keys of tables that grow without bound (ledger, CDRs, messages).
BigId = BigInteger().with_variant(Integer(), "sqlite")


def to_money(value: Decimal | int | str) -> Decimal:
    """Quantize to the money precision (banker's rounding)."""
    return Decimal(value).quantize(_QUANTUM, rounding=ROUND_HALF_EVEN)


class Money(TypeDecorator):
    """An exact decimal amount.

    PostgreSQL stores ``NUMERIC(20, 6)`` so billing back-ends read plain
    numbers; SQLite, which has no exact decimal type, stores an integer count
    of millionths so sums and comparisons in SQL stay exact.
    """

    impl = Numeric(20, MONEY_PLACES)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(20, MONEY_PLACES, asdecimal=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = to_money(value)
        if dialect.name == "sqlite":
            return int(value * _SCALE)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if dialect.name == "sqlite":
            return to_money(Decimal(int(value)) / _SCALE)
        return to_money(value)


class UTCDateTime(TypeDecorator):
    """A timestamp always stored and returned in UTC, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(datetime.timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=datetime.timezone.utc)
        return value.astimezone(datetime.timezone.utc)
