"""Prepaid vouchers (PIN top-ups): lots, the one export of their secrets, redemption.

A *lot* is ``count`` vouchers of one ``value`` in one ``currency``, valid until
``expires_at``. A ``pin`` voucher is a 16-digit PIN; a ``login`` voucher is a
login (the lot id followed by the 6-digit serial: not secret) and a 12-digit
password. Digits only, so a PIN can be keyed in the IVR as well as sent by SMS
or through the API. Every secret comes from :mod:`secrets`.

What is stored, and why it is safe (docs/billing.rst, "Vouchers"):

* a salted SHA-256 of each secret, and for PINs the first four digits
  (``pin_prefix``: not secret; it narrows a PIN down to a few candidates and
  lets support talk about a card);
* until the one export, each secret *sealed* under the lot's export key: the
  secret plus a pad (HMAC-SHA256 of the key, lot and serial) modulo 10^digits.
  Creating a lot returns the key once (256 random bits; only its hash is
  kept). The first export with the key, within :data:`EXPORT_WINDOW`, opens the
  seals, returns the CSV and erases them; after that switchd can only say which
  vouchers were used, never what their secrets were.

Redeeming books one ``topup`` with reference ``voucher:<id>`` and marks the
voucher used in the same transaction with a conditional UPDATE, so of two
redeems of one PIN at once exactly one books. Every function here runs in the
caller's transaction (``Database.run``); :class:`RedeemGuard` is the sans-IO
brake on guessing that the API, the SMS commands and the IVR put in front.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import hmac
import io
import re
import secrets
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection
from twisted.internet.interfaces import IReactorTime

from ..core.ratelimit import RateLimiter
from ..store.models import VOUCHER_KINDS, accounts, voucher_lots, vouchers
from ..store.types import MONEY_LIMIT, to_money
from .ledger import BalanceRangeError, book

PIN_DIGITS = 16
PREFIX_DIGITS = 4
PASSWORD_DIGITS = 12
SERIAL_DIGITS = 6  # a login is the lot id followed by the serial in 6 digits
MAX_COUNT = 100_000
EXPORT_WINDOW = datetime.timedelta(hours=24)
EXPORT_KEY_PREFIX = "vx_"
_CHUNK = 5000  # vouchers generated and inserted at a time
_SEPARATORS = re.compile(r"[\s-]")
_CURRENCY = re.compile(r"[A-Z]{3}")
_CONTROL = re.compile(r"[\u0000-\u001f\u007f-\u009f]")

LOT_STATUSES = ("active", "disabled")


class VoucherError(ValueError):
    """Base of this module's errors; ``reason`` is short enough for an SMS reply."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LotError(VoucherError):
    """A lot that cannot be made or changed (bad count, value, currency, expiry...)."""


class NoSuchLot(VoucherError):
    """No lot has this id."""


class ExportRefused(VoucherError):
    """The secrets cannot be exported: ``code`` is ``exported``, ``expired`` or ``key``."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class RedeemRefused(VoucherError):
    """A redeem that adds nothing. ``code`` says why:

    ``invalid`` (no voucher has this PIN, or a wrong password), ``used``,
    ``expired``, ``disabled`` (the lot), ``currency`` (not the account's),
    ``account`` (unknown or closed), ``balance`` (out of the storable range).
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class CreatedLot:
    lot_id: int
    export_key: str  # shown once: it opens the secrets for the one export


@dataclass(frozen=True)
class Lot:
    id: int
    name: str
    kind: str
    count: int
    value: Decimal
    currency: str
    expires_at: datetime.datetime | None
    status: str
    created_by_key_id: int | None
    export_until: datetime.datetime | None
    exported_at: datetime.datetime | None
    used: int
    created_at: datetime.datetime
    updated_at: datetime.datetime

    @property
    def left(self) -> int:
        """Vouchers not used yet (whether they still can be depends on status and expiry)."""
        return self.count - self.used


@dataclass(frozen=True)
class Voucher:
    id: int
    lot_id: int
    serial: int
    pin_prefix: str | None
    login: str | None
    used_at: datetime.datetime | None
    used_by_account_id: int | None
    ledger_id: int | None


@dataclass(frozen=True)
class Redeemed:
    voucher_id: int
    lot_id: int
    account_id: int
    amount: Decimal
    currency: str
    balance: Decimal  # the account's balance right after the top-up
    ledger_id: int


# -- secrets -----------------------------------------------------------------------


def _hash(salt: str, serial: int, secret: str) -> str:
    return hashlib.sha256(f"{salt}:{serial}:{secret}".encode()).hexdigest()


def _pad(export_key: str, lot_id: int, serial: int, digits: int) -> int:
    mac = hmac.digest(export_key.encode(), f"{lot_id}:{serial}".encode(), "sha256")
    return int.from_bytes(mac, "big") % 10**digits


def _key_hash(export_key: str) -> str:
    return hashlib.sha256(export_key.encode()).hexdigest()


def login_of(lot_id: int, serial: int) -> str:
    """The login of a login voucher: not secret, unique by construction."""
    return f"{lot_id}{serial:0{SERIAL_DIGITS}d}"


def normalize_pin(text: str) -> str:
    """What was typed, without the spaces and dashes printed on cards."""
    return _SEPARATORS.sub("", text)


# -- lots --------------------------------------------------------------------------


def _check_lot(name: str, kind: str, count: int, value: Decimal, currency: str,
               expires_at: datetime.datetime | None, now: datetime.datetime) -> Decimal:
    if not isinstance(name, str) or not 1 <= len(name) <= 200 or _CONTROL.search(name):
        raise LotError("name must be 1 to 200 printable characters")
    if kind not in VOUCHER_KINDS:
        raise LotError(f"kind must be one of {', '.join(VOUCHER_KINDS)}")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise LotError(f"count must be from 1 to {MAX_COUNT}")
    amount = to_money(value)
    if not 0 < amount < MONEY_LIMIT:
        raise LotError(f"value must be above zero and below {MONEY_LIMIT}")
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise LotError("currency must be an ISO 4217 code such as EUR")
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise LotError("expires_at needs a time zone")
        if expires_at <= now:
            raise LotError("expires_at is in the past: the vouchers could never be used")
    return amount


def create_lot(
    conn: Connection,
    *,
    name: str,
    kind: str,
    count: int,
    value: Decimal,
    currency: str,
    now: datetime.datetime,
    expires_at: datetime.datetime | None = None,
    created_by_key_id: int | None = None,
    export_window: datetime.timedelta = EXPORT_WINDOW,
) -> CreatedLot:
    """Make a lot and its vouchers; the export key in the answer is the only way to their secrets."""
    amount = _check_lot(name, kind, count, value, currency, expires_at, now)
    _wipe_stale(conn, now)
    export_key = EXPORT_KEY_PREFIX + secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    lot_id = conn.execute(
        insert(voucher_lots)
        .values(name=name, kind=kind, count=count, value=amount, currency=currency, expires_at=expires_at,
                status="active", created_by_key_id=created_by_key_id, salt=salt,
                export_key_hash=_key_hash(export_key), export_until=now + export_window, created_at=now,
                updated_at=now)
        .returning(voucher_lots.c.id)
    ).scalar_one()
    digits = PIN_DIGITS if kind == "pin" else PASSWORD_DIGITS
    modulus = 10**digits
    for first in range(1, count + 1, _CHUNK):
        rows = []
        for serial in range(first, min(first + _CHUNK, count + 1)):
            number = secrets.randbelow(modulus)
            secret = f"{number:0{digits}d}"
            rows.append({
                "lot_id": lot_id,
                "serial": serial,
                "pin_prefix": secret[:PREFIX_DIGITS] if kind == "pin" else None,
                "secret_hash": _hash(salt, serial, secret),
                "sealed": (number + _pad(export_key, lot_id, serial, digits)) % modulus,
            })
        conn.execute(insert(vouchers), rows)
    return CreatedLot(lot_id, export_key)


_USED = (
    select(vouchers.c.lot_id, func.count(vouchers.c.used_at).label("used"))
    .group_by(vouchers.c.lot_id)
)


def _lots(conn: Connection, query) -> list[Lot]:
    rows = conn.execute(query).all()
    if not rows:
        return []
    used = {lot_id: n for lot_id, n in conn.execute(_USED.where(vouchers.c.lot_id.in_([r.id for r in rows])))}
    return [
        Lot(id=r.id, name=r.name, kind=r.kind, count=r.count, value=r.value, currency=r.currency,
            expires_at=r.expires_at, status=r.status, created_by_key_id=r.created_by_key_id,
            export_until=r.export_until, exported_at=r.exported_at, used=used.get(r.id, 0),
            created_at=r.created_at, updated_at=r.updated_at)
        for r in rows
    ]


def get_lot(conn: Connection, lot_id: int) -> Lot:
    """The lot with its used count; raises :class:`NoSuchLot`."""
    found = _lots(conn, select(voucher_lots).where(voucher_lots.c.id == lot_id))
    if not found:
        raise NoSuchLot(f"no voucher lot {lot_id}")
    return found[0]


def list_lots(conn: Connection, *, limit: int, after_id: int | None = None, status: str | None = None,
              kind: str | None = None) -> list[Lot]:
    """Lots in id order, ``limit`` at a time after ``after_id``."""
    query = select(voucher_lots).order_by(voucher_lots.c.id).limit(limit)
    if after_id is not None:
        query = query.where(voucher_lots.c.id > after_id)
    if status is not None:
        query = query.where(voucher_lots.c.status == status)
    if kind is not None:
        query = query.where(voucher_lots.c.kind == kind)
    return _lots(conn, query)


def update_lot(conn: Connection, lot_id: int, now: datetime.datetime, *, status: str | None = None,
               name: str | None = None) -> Lot:
    """Disable or enable a lot (a disabled lot's vouchers are refused), or rename it."""
    values: dict[str, object] = {}
    if status is not None:
        if status not in LOT_STATUSES:
            raise LotError(f"status must be one of {', '.join(LOT_STATUSES)}")
        values["status"] = status
    if name is not None:
        if not 1 <= len(name) <= 200 or _CONTROL.search(name):
            raise LotError("name must be 1 to 200 printable characters")
        values["name"] = name
    get_lot(conn, lot_id)
    if values:
        conn.execute(update(voucher_lots).where(voucher_lots.c.id == lot_id).values(updated_at=now, **values))
    return get_lot(conn, lot_id)


def list_vouchers(conn: Connection, lot_id: int, *, limit: int, after_id: int | None = None,
                  used: bool | None = None) -> list[Voucher]:
    """The lot's vouchers in id order: which were used, when, by which account, with which ledger row."""
    lot = get_lot(conn, lot_id)
    query = (
        select(vouchers.c.id, vouchers.c.serial, vouchers.c.pin_prefix, vouchers.c.used_at,
               vouchers.c.used_by_account_id, vouchers.c.ledger_id)
        .where(vouchers.c.lot_id == lot_id)
        .order_by(vouchers.c.id)
        .limit(limit)
    )
    if after_id is not None:
        query = query.where(vouchers.c.id > after_id)
    if used is not None:
        query = query.where(vouchers.c.used_at.is_not(None) if used else vouchers.c.used_at.is_(None))
    return [
        Voucher(id=r.id, lot_id=lot_id, serial=r.serial, pin_prefix=r.pin_prefix,
                login=login_of(lot_id, r.serial) if lot.kind == "login" else None, used_at=r.used_at,
                used_by_account_id=r.used_by_account_id, ledger_id=r.ledger_id)
        for r in conn.execute(query)
    ]


# -- the export ---------------------------------------------------------------------------


def _wipe_stale(conn: Connection, now: datetime.datetime) -> int:
    """Erase the sealed secrets of lots whose export window closed unused; returns how many lots."""
    stale = conn.execute(
        select(voucher_lots.c.id).where(voucher_lots.c.export_key_hash.is_not(None),
                                        voucher_lots.c.export_until <= now)
    ).scalars().all()
    for lot_id in stale:
        _erase(conn, lot_id, now, exported=False)
    return len(stale)


def _erase(conn: Connection, lot_id: int, now: datetime.datetime, *, exported: bool) -> None:
    conn.execute(update(vouchers).where(vouchers.c.lot_id == lot_id, vouchers.c.sealed.is_not(None))
                 .values(sealed=None))
    values: dict[str, object] = {"export_key_hash": None, "updated_at": now}
    if exported:
        values["exported_at"] = now
    conn.execute(update(voucher_lots).where(voucher_lots.c.id == lot_id).values(**values))


def _when(value: datetime.datetime | None) -> str:
    return "" if value is None else value.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def _csv(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def export_csv(conn: Connection, lot_id: int, now: datetime.datetime, export_key: str | None = None) -> str:
    """The lot as CSV (RFC 4180). With the export key, once, within the window: the secrets.

    Without a key: serial, PIN prefix or login, state (unused, used, expired,
    disabled), when it was used and by which account; this can be fetched at
    any time. Raises :class:`NoSuchLot` or :class:`ExportRefused`.
    """
    lot = get_lot(conn, lot_id)
    if export_key is None:
        return _state_csv(conn, lot, now)
    if lot.exported_at is not None:
        raise ExportRefused("exported", f"the secrets of lot {lot_id} were exported at {_when(lot.exported_at)}; "
                                        "only their state can be exported now")
    if lot.export_until is None or lot.export_until <= now:
        raise ExportRefused("expired", f"the export window of lot {lot_id} closed at {_when(lot.export_until)}; "
                                       "the secrets are erased: disable the lot and make another")
    stored = conn.execute(select(voucher_lots.c.export_key_hash).where(voucher_lots.c.id == lot_id)).scalar()
    if stored is None or not hmac.compare_digest(_key_hash(export_key), stored):
        raise ExportRefused("key", f"this is not the export key of lot {lot_id}")
    # Claim the export: of two at once, one finds exported_at already set.
    claimed = conn.execute(
        update(voucher_lots)
        .where(voucher_lots.c.id == lot_id, voucher_lots.c.exported_at.is_(None))
        .values(exported_at=now, updated_at=now)
    ).rowcount
    if claimed != 1:
        raise ExportRefused("exported", f"the secrets of lot {lot_id} were exported already")
    digits = PIN_DIGITS if lot.kind == "pin" else PASSWORD_DIGITS
    modulus = 10**digits
    value, expires = str(lot.value), _when(lot.expires_at)

    def rows() -> Iterator[list[object]]:
        for serial, sealed in conn.execute(
            select(vouchers.c.serial, vouchers.c.sealed).where(vouchers.c.lot_id == lot_id)
            .order_by(vouchers.c.serial)
        ):
            secret = f"{(sealed - _pad(export_key, lot_id, serial, digits)) % modulus:0{digits}d}"
            if lot.kind == "pin":
                yield [serial, secret, value, lot.currency, expires]
            else:
                yield [serial, login_of(lot_id, serial), secret, value, lot.currency, expires]

    header = (["serial", "pin"] if lot.kind == "pin" else ["serial", "login", "password"]) + [
        "value", "currency", "expires_at"]
    text = _csv(header, rows())
    _erase(conn, lot_id, now, exported=True)
    return text


def _state_csv(conn: Connection, lot: Lot, now: datetime.datetime) -> str:
    lapsed = lot.expires_at is not None and lot.expires_at <= now

    def rows() -> Iterator[list[object]]:
        for r in conn.execute(
            select(vouchers.c.serial, vouchers.c.pin_prefix, vouchers.c.used_at, vouchers.c.used_by_account_id)
            .where(vouchers.c.lot_id == lot.id).order_by(vouchers.c.serial)
        ):
            if r.used_at is not None:
                state = "used"
            elif lot.status != "active":
                state = "disabled"
            else:
                state = "expired" if lapsed else "unused"
            code = r.pin_prefix if lot.kind == "pin" else login_of(lot.id, r.serial)
            yield [r.serial, code, state, _when(r.used_at), r.used_by_account_id or ""]

    header = ["serial", "pin_prefix" if lot.kind == "pin" else "login", "state", "used_at", "used_by_account_id"]
    return _csv(header, rows())


# -- redeeming ------------------------------------------------------------------------------

_CANDIDATE = select(
    vouchers.c.id, vouchers.c.lot_id, vouchers.c.serial, vouchers.c.secret_hash, vouchers.c.used_at,
    voucher_lots.c.salt, voucher_lots.c.name, voucher_lots.c.value, voucher_lots.c.currency,
    voucher_lots.c.expires_at, voucher_lots.c.status,
).join(voucher_lots, voucher_lots.c.id == vouchers.c.lot_id)


def _find_pin(conn: Connection, pin: str):
    if len(pin) != PIN_DIGITS or not pin.isdigit() or not pin.isascii():
        return None
    found = None
    for row in conn.execute(_CANDIDATE.where(vouchers.c.pin_prefix == pin[:PREFIX_DIGITS],
                                             voucher_lots.c.kind == "pin")):
        if hmac.compare_digest(_hash(row.salt, row.serial, pin), row.secret_hash):
            found = row
    return found


def _find_login(conn: Connection, login: str, password: str):
    row = None
    if login.isascii() and login.isdigit() and len(login) > SERIAL_DIGITS and len(login) <= SERIAL_DIGITS + 10:
        lot_id, serial = int(login[:-SERIAL_DIGITS]), int(login[-SERIAL_DIGITS:])
        if login == login_of(lot_id, serial):  # no leading zeros: one spelling per login
            row = conn.execute(_CANDIDATE.where(vouchers.c.lot_id == lot_id, vouchers.c.serial == serial,
                                                voucher_lots.c.kind == "login")).first()
    if row is None:
        _hash("0" * 32, 0, password)  # the same work whether the login exists or not
        return None
    if not hmac.compare_digest(_hash(row.salt, row.serial, password), row.secret_hash):
        return None
    return row


def redeem(
    conn: Connection,
    account_id: int,
    now: datetime.datetime,
    *,
    pin: str | None = None,
    login: str | None = None,
    password: str | None = None,
) -> Redeemed:
    """Add a voucher's value to the account, once: give ``pin``, or ``login`` and ``password``.

    Raises :class:`RedeemRefused`; nothing is written then.
    """
    if (pin is None) == (login is None) or (login is None) != (password is None):
        raise ValueError("give a pin, or a login and a password")
    if pin is not None:
        row = _find_pin(conn, normalize_pin(pin))
        if row is None:
            raise RedeemRefused("invalid", "wrong voucher PIN")
    else:
        assert login is not None and password is not None
        row = _find_login(conn, login, password)
        if row is None:
            raise RedeemRefused("invalid", "wrong voucher login or password")
    if row.used_at is not None:
        raise RedeemRefused("used", "this voucher was already used")
    if row.status != "active":
        raise RedeemRefused("disabled", "this voucher's lot is disabled")
    if row.expires_at is not None and row.expires_at <= now:
        raise RedeemRefused("expired", "this voucher has expired")
    account = conn.execute(select(accounts.c.currency, accounts.c.status).where(accounts.c.id == account_id)).first()
    if account is None or account.status == "closed":
        raise RedeemRefused("account", f"account {account_id} cannot be topped up")
    if account.currency != row.currency:
        raise RedeemRefused("currency", f"this voucher is in {row.currency}, the account in {account.currency}")
    claimed = conn.execute(
        update(vouchers)
        .where(vouchers.c.id == row.id, vouchers.c.used_at.is_(None))
        .values(used_at=now, used_by_account_id=account_id)
    ).rowcount
    if claimed != 1:  # a concurrent redeem of the same voucher won
        raise RedeemRefused("used", "this voucher was already used")
    try:
        movement = book(conn, account_id, "topup", row.value, now, reference=f"voucher:{row.id}",
                        description=f"voucher {row.serial} of lot {row.lot_id} ({row.name})"[:500])
    except BalanceRangeError as error:
        raise RedeemRefused("balance", str(error)) from None
    conn.execute(update(vouchers).where(vouchers.c.id == row.id).values(ledger_id=movement.id))
    return Redeemed(voucher_id=row.id, lot_id=row.lot_id, account_id=account_id, amount=movement.amount,
                    currency=account.currency, balance=movement.balance_after, ledger_id=movement.id)


# -- guessing -------------------------------------------------------------------------------


class RedeemGuard:
    """A brake on guessing PINs, shared by every way of redeeming.

    ``keys`` name who is trying (``("key", api_key_id)``, ``("account", id)``,
    ...). Each key has a token bucket in the shared :class:`RateLimiter`:
    ``failures`` tokens, refilled over ``window`` seconds. An attempt takes a
    token from each of its keys before the PIN is looked at, and gives them
    back if it succeeds: so only failures stay counted, and attempts running
    in parallel cannot outrun the count. A key with no token left is refused
    until one is back (:meth:`admit` says how long).
    """

    FAILURES = "voucher-failures"

    def __init__(self, limiter: RateLimiter, clock: IReactorTime, *, failures: int = 5,
                 window: float = 900.0) -> None:
        if failures < 1 or window <= 0:
            raise ValueError("voucher guard limits must be positive")
        self.limiter = limiter
        self.clock = clock
        limiter.set_default(self.FAILURES, failures / window, failures)

    def admit(self, keys: Iterable[Hashable]) -> float:
        """0.0: go ahead, then call :meth:`done`; else the seconds to wait (nothing was taken)."""
        taken: list[Hashable] = []
        for key in keys:
            decision = self.limiter.allow(self.FAILURES, key)
            if not decision.allowed:
                self._give_back(taken)
                return max(decision.retry_after, 0.001)
            taken.append(key)
        return 0.0

    def done(self, keys: Iterable[Hashable], failed: bool) -> None:
        """The admitted attempt is over: a success gives its tokens back, a failure keeps them spent."""
        if not failed:
            self._give_back(keys)

    def _give_back(self, keys: Iterable[Hashable]) -> None:
        for key in keys:
            self.limiter.give_back(self.FAILURES, key)
