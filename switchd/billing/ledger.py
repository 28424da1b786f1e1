"""The balance ledger: the only way money moves on an account.

Each movement is one ``ledger`` row holding the signed amount and the balance
right after it, written in the same transaction as the account's new balance,
so ``balance == sum(amount)`` always holds and every cent is explained. A
movement with a reference is booked at most once per account and kind: a
retried charge for the same call returns the first booking.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection

from ..store.models import LEDGER_KINDS, accounts, ledger
from ..store.types import MONEY_LIMIT, to_money

#: Each kind moves money one way; the amount given is always positive.
CREDITS = frozenset({"topup", "refund", "credit"})
DEBITS = frozenset({"charge", "writeoff", "debit"})

# Built once (their cache keys are memoised): booking runs for every call.
_PREVIOUS = select(ledger).where(
    ledger.c.account_id == bindparam("account_id"),
    ledger.c.kind == bindparam("kind"),
    ledger.c.reference == bindparam("reference"),
)
_BALANCE = select(accounts.c.balance).where(accounts.c.id == bindparam("account_id")).with_for_update()
_SET_BALANCE = (
    update(accounts)
    .where(accounts.c.id == bindparam("account_id"))
    .values(
        balance=bindparam("new_balance", type_=accounts.c.balance.type),
        updated_at=bindparam("now", type_=accounts.c.updated_at.type),
    )
)
_INSERT = insert(ledger).returning(*ledger.c)


class LedgerError(ValueError):
    """A movement that cannot be booked (unknown account, bad amount)."""


class BalanceRangeError(LedgerError):
    """The balance would leave the range the database can hold."""


@dataclass(frozen=True)
class Movement:
    id: int
    account_id: int
    kind: str
    amount: Decimal
    balance_after: Decimal
    reference: str | None
    description: str | None
    created_at: datetime.datetime
    replayed: bool  # True: the reference was already booked; nothing moved now


def signed_amount(kind: str, amount: Decimal) -> Decimal:
    """Credits are stored positive, debits negative."""
    if kind not in LEDGER_KINDS:
        raise LedgerError(f"unknown movement kind {kind!r}")
    amount = to_money(amount)
    if amount <= 0:
        raise LedgerError(f"a {kind} amount must be positive")
    return amount if kind in CREDITS else -amount


def _movement(row, replayed: bool) -> Movement:
    return Movement(
        id=row.id,
        account_id=row.account_id,
        kind=row.kind,
        amount=row.amount,
        balance_after=row.balance_after,
        reference=row.reference,
        description=row.description,
        created_at=row.created_at,
        replayed=replayed,
    )


def book(
    conn: Connection,
    account_id: int,
    kind: str,
    amount: Decimal,
    now: datetime.datetime,
    reference: str | None = None,
    description: str | None = None,
) -> Movement:
    """Move money on an account, in the caller's transaction."""
    delta = signed_amount(kind, amount)
    if reference is not None:
        previous = conn.execute(
            _PREVIOUS, {"account_id": account_id, "kind": kind, "reference": reference}
        ).first()
        if previous is not None:
            return _movement(previous, replayed=True)
    # Lock the account row (PostgreSQL); SQLite's BEGIN IMMEDIATE already did.
    balance = conn.execute(_BALANCE, {"account_id": account_id}).scalar()
    if balance is None:
        raise LedgerError(f"no account {account_id}")
    new_balance = to_money(balance + delta)
    if abs(new_balance) >= MONEY_LIMIT:
        raise BalanceRangeError(f"the balance would leave the supported range (below {MONEY_LIMIT})")
    conn.execute(_SET_BALANCE, {"account_id": account_id, "new_balance": new_balance, "now": now})
    row = conn.execute(
        _INSERT,
        {
            "account_id": account_id,
            "kind": kind,
            "amount": delta,
            "balance_after": new_balance,
            "reference": reference,
            "description": description,
            "created_at": now,
        },
    ).one()
    return _movement(row, replayed=False)


def balance_of(conn: Connection, account_id: int) -> tuple[Decimal, str]:
    """The account's balance and currency (for the callback IVR's balance code)."""
    row = conn.execute(select(accounts.c.balance, accounts.c.currency).where(accounts.c.id == account_id)).first()
    if row is None:
        raise LedgerError(f"no account {account_id}")
    return row.balance, row.currency
