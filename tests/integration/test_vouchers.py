"""Vouchers (PIN top-ups) on both backends: lots, the one export of the secrets,
redeeming once with a ledger row, refusals, and two redeems of one PIN at once."""

from __future__ import annotations

import csv
import datetime
import io
import threading
from decimal import Decimal

import pytest
from sqlalchemy import func, insert, select, update

from switchd.billing import vouchers as v
from switchd.billing.ledger import book
from switchd.store import models as m
from switchd.store.db import make_engine

UTC = datetime.UTC
NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LATER = NOW + datetime.timedelta(days=30)


def at(seconds: float) -> datetime.datetime:
    return NOW + datetime.timedelta(seconds=seconds)


def _account(conn, currency: str = "EUR", balance: str = "0", status: str = "active") -> int:
    customer = conn.execute(insert(m.customers).values(name="c", status="active", created_at=NOW, updated_at=NOW)
                            .returning(m.customers.c.id)).scalar_one()
    account = conn.execute(
        insert(m.accounts).values(customer_id=customer, currency=currency, balance=0, credit_limit=0,
                                  billing_type="prepaid", status=status, created_at=NOW, updated_at=NOW)
        .returning(m.accounts.c.id)
    ).scalar_one()
    if Decimal(balance) > 0:
        book(conn, account, "topup", Decimal(balance), NOW, reference="initial")
    return account


def _lot(database, count: int = 3, kind: str = "pin", value: str = "10", currency: str = "EUR",
         expires_at: datetime.datetime | None = LATER) -> v.CreatedLot:
    return database.run_blocking(lambda c: v.create_lot(c, name="print run 1", kind=kind, count=count,
                                                        value=Decimal(value), currency=currency, now=NOW,
                                                        expires_at=expires_at))


def _secrets(database, created: v.CreatedLot) -> list[dict[str, str]]:
    text = database.run_blocking(lambda c: v.export_csv(c, created.lot_id, at(1), created.export_key))
    return list(csv.DictReader(io.StringIO(text)))


def test_a_lot_stores_only_hashes_and_prefixes_and_exports_its_pins_once(database):
    created = _lot(database, count=5)
    lot = database.run_blocking(lambda c: v.get_lot(c, created.lot_id))
    assert (lot.count, lot.used, lot.left, lot.kind, lot.status) == (5, 0, 5, "pin", "active")
    assert lot.value == Decimal(10) and lot.expires_at == LATER and lot.exported_at is None
    assert created.export_key.startswith("vx_") and len(created.export_key) > 40
    rows = _secrets(database, created)
    assert [r["serial"] for r in rows] == ["1", "2", "3", "4", "5"]
    pins = [r["pin"] for r in rows]
    assert all(len(p) == v.PIN_DIGITS and p.isdigit() for p in pins) and len(set(pins)) == 5
    assert {(r["value"], r["currency"], r["expires_at"]) for r in rows} == {("10.000000", "EUR",
                                                                              "2026-12-22T12:00:00Z")}
    stored = database.run_blocking(lambda c: c.execute(select(m.vouchers).order_by(m.vouchers.c.serial)).all())
    dump = repr([tuple(r) for r in stored])
    assert not any(p in dump for p in pins)  # no PIN anywhere in the rows...
    assert [r.pin_prefix for r in stored] == [p[:4] for p in pins]  # ...only the first digits
    assert all(r.sealed is None for r in stored)  # the seals are gone with the export
    # Once: a second export with the key is refused, and so is a wrong key.
    with pytest.raises(v.ExportRefused) as again:
        database.run_blocking(lambda c: v.export_csv(c, created.lot_id, at(2), created.export_key))
    assert again.value.code == "exported"
    other = _lot(database)
    with pytest.raises(v.ExportRefused) as wrong:
        database.run_blocking(lambda c: v.export_csv(c, other.lot_id, at(2), created.export_key))
    assert wrong.value.code == "key"
    # Without the key: the state of each voucher, at any time.
    state = database.run_blocking(lambda c: v.export_csv(c, created.lot_id, at(3)))
    rows = list(csv.DictReader(io.StringIO(state)))
    assert rows[0] == {"serial": "1", "pin_prefix": pins[0][:4], "state": "unused", "used_at": "",
                       "used_by_account_id": ""}
    assert database.run_blocking(lambda c: v.get_lot(c, created.lot_id)).exported_at == at(1)


def test_the_export_window_closes_and_the_seals_are_erased(database):
    created = _lot(database)
    later = NOW + v.EXPORT_WINDOW
    with pytest.raises(v.ExportRefused) as closed:
        database.run_blocking(lambda c: v.export_csv(c, created.lot_id, later, created.export_key))
    assert closed.value.code == "expired"
    # The next lot made sweeps the stale seals away.
    database.run_blocking(lambda c: v.create_lot(c, name="next", kind="pin", count=1, value=Decimal(1),
                                                 currency="EUR", now=later))
    sealed = database.run_blocking(lambda c: c.execute(
        select(func.count()).select_from(m.vouchers)
        .where(m.vouchers.c.lot_id == created.lot_id, m.vouchers.c.sealed.is_not(None))).scalar())
    assert sealed == 0


def test_a_pin_tops_up_once_with_a_ledger_row(database):
    created = _lot(database, count=2, value="10")
    pins = [r["pin"] for r in _secrets(database, created)]
    account = database.run_blocking(lambda c: _account(c, balance="15"))
    spaced = " ".join(pins[0][i:i + 4] for i in range(0, 16, 4))  # as printed on a card
    done = database.run_blocking(lambda c: v.redeem(c, account, at(10), pin=spaced))
    assert (done.amount, done.currency, done.balance, done.lot_id) == (Decimal(10), "EUR", Decimal(25),
                                                                       created.lot_id)
    row = database.run_blocking(lambda c: c.execute(select(m.ledger).where(m.ledger.c.id == done.ledger_id)).one())
    assert (row.kind, row.amount, row.reference, row.account_id) == ("topup", Decimal(10),
                                                                      f"voucher:{done.voucher_id}", account)
    with pytest.raises(v.RedeemRefused) as used:
        database.run_blocking(lambda c: v.redeem(c, account, at(11), pin=pins[0]))
    assert used.value.code == "used" and used.value.reason == "this voucher was already used"
    lot = database.run_blocking(lambda c: v.get_lot(c, created.lot_id))
    assert (lot.used, lot.left) == (1, 1)
    listed = database.run_blocking(lambda c: v.list_vouchers(c, created.lot_id, limit=10))
    assert [(x.serial, x.used_at, x.used_by_account_id, x.ledger_id) for x in listed] == [
        (1, at(10), account, done.ledger_id), (2, None, None, None)]
    assert [x.serial for x in database.run_blocking(
        lambda c: v.list_vouchers(c, created.lot_id, limit=10, used=False))] == [2]
    state = list(csv.DictReader(io.StringIO(database.run_blocking(lambda c: v.export_csv(c, created.lot_id,
                                                                                         at(12))))))
    assert (state[0]["state"], state[0]["used_at"], state[0]["used_by_account_id"]) == (
        "used", "2026-11-22T12:00:10Z", str(account))
    balance = database.run_blocking(lambda c: c.execute(select(m.accounts.c.balance)
                                                        .where(m.accounts.c.id == account)).scalar())
    assert balance == Decimal(25)


def test_login_vouchers_take_the_login_and_password(database):
    created = _lot(database, count=2, kind="login", value="5")
    rows = _secrets(database, created)
    assert list(rows[0]) == ["serial", "login", "password", "value", "currency", "expires_at"]
    assert rows[1]["login"] == f"{created.lot_id}000002" and len(rows[1]["password"]) == v.PASSWORD_DIGITS
    account = database.run_blocking(_account)
    with pytest.raises(v.RedeemRefused) as wrong:
        database.run_blocking(lambda c: v.redeem(c, account, at(5), login=rows[1]["login"], password="1" * 12))
    assert wrong.value.code == "invalid"
    with pytest.raises(v.RedeemRefused):  # a login that is not one: a leading zero
        database.run_blocking(lambda c: v.redeem(c, account, at(5), login="0" + rows[1]["login"],
                                                 password=rows[1]["password"]))
    done = database.run_blocking(lambda c: v.redeem(c, account, at(5), login=rows[1]["login"],
                                                    password=rows[1]["password"]))
    assert done.balance == Decimal(5)
    listed = database.run_blocking(lambda c: v.list_vouchers(c, created.lot_id, limit=10, used=True))
    assert [(x.login, x.pin_prefix) for x in listed] == [(rows[1]["login"], None)]
    with pytest.raises(v.RedeemRefused):  # a login voucher has no PIN
        database.run_blocking(lambda c: v.redeem(c, account, at(6), pin=rows[0]["login"] + rows[0]["password"]))


def test_refusals_say_why_and_book_nothing(database):
    eur = _lot(database, count=2)
    usd = _lot(database, count=1, currency="USD")
    soon = _lot(database, count=1, expires_at=at(60))
    eur_pins = [r["pin"] for r in _secrets(database, eur)]
    usd_pin = _secrets(database, usd)[0]["pin"]
    soon_pin = _secrets(database, soon)[0]["pin"]
    account = database.run_blocking(_account)
    closed = database.run_blocking(lambda c: _account(c, status="closed"))

    def refused(code, **kw):
        account_id = kw.pop("account", account)
        with pytest.raises(v.RedeemRefused) as error:
            database.run_blocking(lambda c: v.redeem(c, account_id, kw.pop("now", at(10)), **kw))
        assert error.value.code == code, error.value.reason
        return error.value.reason

    wrong = eur_pins[0][:-1] + str((int(eur_pins[0][-1]) + 1) % 10)
    assert refused("invalid", pin=wrong) == "wrong voucher PIN"
    assert refused("invalid", pin="1234") == "wrong voucher PIN"
    assert refused("invalid", pin="１２３４５６７８９０１２３４５６") == "wrong voucher PIN"  # not ASCII digits
    assert refused("currency", pin=usd_pin) == "this voucher is in USD, the account in EUR"
    assert refused("expired", pin=soon_pin, now=at(60)) == "this voucher has expired"
    assert refused("account", pin=eur_pins[0], account=closed).startswith("account")
    assert refused("account", pin=eur_pins[0], account=999999).startswith("account")
    database.run_blocking(lambda c: v.update_lot(c, eur.lot_id, at(1), status="disabled"))
    assert refused("disabled", pin=eur_pins[0]) == "this voucher's lot is disabled"
    database.run_blocking(lambda c: v.update_lot(c, eur.lot_id, at(2), status="active"))
    assert database.run_blocking(lambda c: v.redeem(c, account, at(10), pin=eur_pins[0])).amount == Decimal(10)
    movements = database.run_blocking(lambda c: c.execute(select(func.count()).select_from(m.ledger)).scalar())
    assert movements == 1  # only the one that worked
    with pytest.raises(ValueError, match="give a pin"):
        database.run_blocking(lambda c: v.redeem(c, account, NOW, pin="1", login="2", password="3"))


def test_a_balance_out_of_range_is_refused_and_the_voucher_stays_unused(database):
    created = _lot(database, count=1, value="999999999999")
    pin = _secrets(database, created)[0]["pin"]
    account = database.run_blocking(lambda c: _account(c, balance="1"))
    with pytest.raises(v.RedeemRefused) as error:
        database.run_blocking(lambda c: v.redeem(c, account, at(3), pin=pin))
    assert error.value.code == "balance"
    assert database.run_blocking(lambda c: v.get_lot(c, created.lot_id)).used == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"count": 0}, "count must be from 1"),
    ({"count": v.MAX_COUNT + 1}, "count must be from 1"),
    ({"value": Decimal(0)}, "value must be above zero"),
    ({"currency": "eur"}, "currency must be"),
    ({"kind": "card"}, "kind must be one of"),
    ({"name": ""}, "name must be"),
    ({"expires_at": NOW}, "expires_at is in the past"),
    ({"expires_at": datetime.datetime(2027, 1, 1)}, "needs a time zone"),
])
def test_bad_lots_are_refused_with_the_reason(database, kwargs, message):
    args = {"name": "x", "kind": "pin", "count": 1, "value": Decimal(1), "currency": "EUR", "now": NOW, **kwargs}
    with pytest.raises(v.LotError, match=message):
        database.run_blocking(lambda c: v.create_lot(c, **args))
    with pytest.raises(v.NoSuchLot):
        database.run_blocking(lambda c: v.get_lot(c, 12345))


def test_lots_are_listed_in_pages_with_their_counts(database):
    first, second, third = (_lot(database, count=n) for n in (1, 2, 3))
    database.run_blocking(lambda c: v.update_lot(c, second.lot_id, at(1), status="disabled", name="spoiled"))
    page = database.run_blocking(lambda c: v.list_lots(c, limit=2))
    assert [(lot.id, lot.count) for lot in page] == [(first.lot_id, 1), (second.lot_id, 2)]
    rest = database.run_blocking(lambda c: v.list_lots(c, limit=2, after_id=page[-1].id))
    assert [lot.id for lot in rest] == [third.lot_id]
    disabled = database.run_blocking(lambda c: v.list_lots(c, limit=10, status="disabled"))
    assert [(lot.id, lot.name) for lot in disabled] == [(second.lot_id, "spoiled")]
    with pytest.raises(v.LotError):
        database.run_blocking(lambda c: v.update_lot(c, first.lot_id, at(1), status="gone"))


def test_a_large_lot_is_made_in_chunks_with_distinct_pins(database):
    created = _lot(database, count=v._CHUNK + 7)
    pins = [r["pin"] for r in _secrets(database, created)]
    assert len(pins) == v._CHUNK + 7 and len(set(pins)) == len(pins)
    account = database.run_blocking(_account)
    assert database.run_blocking(lambda c: v.redeem(c, account, at(5), pin=pins[-1])).voucher_id > 0


def test_one_pin_redeemed_twice_at_once_books_once(db_url, database):
    """Two threads, two connections, the same PIN for two accounts at the same moment."""
    created = _lot(database, count=1)
    pin = _secrets(database, created)[0]["pin"]
    accounts = [database.run_blocking(_account) for _ in range(2)]
    engine = make_engine(db_url, pool_size=4)
    barrier = threading.Barrier(2)
    outcomes: list[object] = [None, None]

    def attempt(i: int) -> None:
        try:
            with engine.begin() as conn:
                # Both transactions have read the voucher as unused before either claims it.
                conn.execute(select(m.vouchers.c.used_at)).all()
                barrier.wait(timeout=10)
                outcomes[i] = v.redeem(conn, accounts[i], at(20), pin=pin)
        except v.RedeemRefused as refused:
            outcomes[i] = refused.code
        except Exception as error:  # noqa: BLE001 - reported below
            outcomes[i] = error

    if engine.dialect.name == "sqlite":
        # SQLite's BEGIN IMMEDIATE lets one writer in at a time: the barrier would wait
        # for a transaction that cannot start. Race the two without it.
        barrier = threading.Barrier(1)
    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    engine.dispose()
    booked = [o for o in outcomes if isinstance(o, v.Redeemed)]
    assert len(booked) == 1 and outcomes.count("used") == 1, outcomes
    topups = database.run_blocking(lambda c: c.execute(
        select(m.ledger.c.account_id).where(m.ledger.c.reference.like("voucher:%"))).scalars().all())
    assert topups == [booked[0].account_id]
    voucher = database.run_blocking(lambda c: c.execute(select(m.vouchers)).one())
    assert (voucher.used_by_account_id, voucher.ledger_id) == (booked[0].account_id, booked[0].ledger_id)


def test_a_concurrent_claim_between_reading_and_booking_is_seen(database, monkeypatch):
    """The conditional UPDATE, not the first read, decides: a voucher claimed meanwhile is refused."""
    created = _lot(database, count=1)
    pin = _secrets(database, created)[0]["pin"]
    account = database.run_blocking(_account)
    find = v._find_pin

    def read_then_claimed_by_another(conn, pin_):
        found = find(conn, pin_)  # what this redeem read: unused...
        conn.execute(update(m.vouchers).where(m.vouchers.c.id == found.id).values(used_at=at(1)))  # ...then taken
        return found

    monkeypatch.setattr(v, "_find_pin", read_then_claimed_by_another)
    with pytest.raises(v.RedeemRefused) as error:
        database.run_blocking(lambda c: v.redeem(c, account, at(2), pin=pin))
    assert error.value.code == "used"
    assert database.run_blocking(lambda c: c.execute(select(func.count()).select_from(m.ledger)).scalar()) == 0
