"""Voucher lots, PIN top-ups and IIF peers through the provisioning API (StubTreq),
on SQLite and PostgreSQL; the SMS command T.<pin>."""

from __future__ import annotations

import csv
import datetime
import io

import pytest
import pytest_twisted
import yaml
from prometheus_client import CollectorRegistry
from sqlalchemy import func, insert, select
from twisted.internet.task import Clock

from switchd.api import vouchers as vouchers_api
from switchd.api.app import ProvisioningAPI
from switchd.api.auth import create_key
from switchd.core.ratelimit import RateLimiter
from switchd.core.smscallback import SmsCallback
from switchd.iif.peers import load_iif_peers
from switchd.iif.server import IifPeer
from switchd.store import models as m

from ..apiclient import Client

T0 = 1_800_000_000  # 2027-01-15T08:00:00Z
LATER = "2027-12-31T23:59:59Z"


@pytest.fixture
def clock():
    clock = Clock()
    clock.advance(T0)
    return clock


@pytest.fixture
def api(database, clock):
    api = ProvisioningAPI(database, clock, CollectorRegistry(), page_size=50)
    vouchers_api.mount(api, RateLimiter(clock))
    return api


@pytest.fixture
def client(api):
    return Client(api.resource())


@pytest.fixture
def admin(database):
    now = datetime.datetime.now(datetime.UTC)
    return database.run_blocking(lambda c: create_key(c, now, admin=True, customer_id=None, name="t"))[1]


class World:
    def __init__(self, client: Client, admin: str) -> None:
        self.client = client
        self.admin = admin

    def call(self, method, path, body=None, key=None, **kw):
        return self.client.call(method, path, body, key=key or self.admin, **kw)

    def post(self, path, body, key=None, status=201):
        answer = self.call("POST", path, body, key)
        assert answer.status == status, answer.body
        return answer.body

    def customer(self, name: str, currency: str = "EUR"):
        customer = self.post("/v1/customers", {"name": name})
        account = self.post("/v1/accounts", {"customer_id": customer["id"], "currency": currency})
        key = self.post("/v1/api-keys", {"customer_id": customer["id"], "name": name})["key"]
        return account, key

    def lot(self, count=3, value="10", currency="EUR", kind="pin", **extra):
        return self.post("/v1/voucher-lots", {"name": "run", "count": count, "value": value, "currency": currency,
                                              "kind": kind, "expires_at": LATER, **extra})

    def secrets(self, lot) -> list[dict[str, str]]:
        answer = self.call("GET", f"/v1/voucher-lots/{lot['id']}/vouchers.csv",
                           headers={"Export-Key": lot["export_key"]})
        assert answer.status == 200, answer.body
        return list(csv.DictReader(io.StringIO(answer.raw.decode())))

    def redeem(self, account, body, key=None):
        return self.call("POST", f"/v1/accounts/{account['id']}/topups/voucher", body, key)


@pytest.fixture
def world(client, admin):
    return World(client, admin)


def test_a_lot_is_made_exported_once_and_managed(world):
    created = world.call("POST", "/v1/voucher-lots", {"name": "Run 1", "count": 4, "value": "10.5",
                                                      "currency": "EUR", "expires_at": "2027-12-31T23:59:59+01:00"})
    assert created.status == 201, created.body
    lot = created.body
    assert created.header("Location") == f"/v1/voucher-lots/{lot['id']}"
    assert (lot["kind"], lot["status"], lot["value"], lot["expires_at"]) == ("pin", "active", "10.500000",
                                                                              "2027-12-31T22:59:59Z")
    assert lot["counts"] == {"total": 4, "used": 0, "left": 4} and lot["export_key"].startswith("vx_")
    assert lot["export_until"] == "2027-01-16T08:00:00Z" and lot["exported_at"] is None
    path = f"/v1/voucher-lots/{lot['id']}"
    wrong = world.call("GET", path + "/vouchers.csv", headers={"Export-Key": "vx_guess"})
    assert wrong.status == 403
    export = world.call("GET", path + "/vouchers.csv", headers={"Export-Key": lot["export_key"]})
    assert export.status == 200 and export.header("Content-Type") == "text/csv; charset=utf-8"
    assert export.header("Cache-Control") == "no-store"
    rows = list(csv.DictReader(io.StringIO(export.raw.decode())))
    assert len(rows) == 4 and all(len(r["pin"]) == 16 for r in rows)
    again = world.call("GET", path + "/vouchers.csv", headers={"Export-Key": lot["export_key"]})
    assert again.status == 409 and "were exported" in again.body["detail"]
    state = world.call("GET", path + "/vouchers.csv")
    assert state.status == 200
    assert state.raw.decode().splitlines()[:2] == [
        "serial,pin_prefix,state,used_at,used_by_account_id", f"1,{rows[0]['pin'][:4]},unused,,"]
    # Managed as a lot: read, listed, disabled and enabled, renamed.
    read = world.call("GET", path).body
    assert read["exported_at"] == "2027-01-15T08:00:00Z" and "export_key" not in read
    assert [x["id"] for x in world.call("GET", "/v1/voucher-lots?status=active").body["items"]] == [lot["id"]]
    disabled = world.call("PATCH", path, {"status": "disabled", "name": "Run 1 (lost)"})
    assert disabled.status == 200 and (disabled.body["status"], disabled.body["name"]) == ("disabled", "Run 1 (lost)")
    assert world.call("GET", "/v1/voucher-lots?status=active").body["items"] == []
    assert world.call("PATCH", path, {"count": 9}).status == 422  # fixed at creation
    assert world.call("PATCH", path, {"status": "active"}).body["status"] == "active"
    assert world.call("GET", "/v1/voucher-lots/999").status == 404
    assert world.call("GET", "/v1/voucher-lots/99999999999").status == 404


def test_redeeming_tops_up_once_and_the_lot_shows_who_used_what(world):
    account, key = world.customer("Alice")
    lot = world.lot(count=2, value="10")
    pins = [r["pin"] for r in world.secrets(lot)]
    done = world.redeem(account, {"pin": f"{pins[0][:4]}-{pins[0][4:8]}-{pins[0][8:12]}-{pins[0][12:]}"}, key=key)
    assert done.status == 201, done.body
    assert {k: done.body[k] for k in ("amount", "currency", "balance", "lot_id", "account_id")} == {
        "amount": "10.000000", "currency": "EUR", "balance": "10.000000", "lot_id": lot["id"],
        "account_id": account["id"]}
    again = world.redeem(account, {"pin": pins[0]}, key=key)
    assert again.status == 409 and again.body["detail"] == "this voucher was already used"
    ledger = world.call("GET", f"/v1/accounts/{account['id']}/transactions", key=key).body["items"]
    assert [(t["kind"], t["amount"], t["reference"]) for t in ledger] == [
        ("topup", "10.000000", f"voucher:{done.body['voucher_id']}")]
    assert ledger[0]["id"] == done.body["transaction_id"]
    used = world.call("GET", f"/v1/voucher-lots/{lot['id']}/vouchers?used=true").body["items"]
    assert [(u["serial"], u["used_by_account_id"], u["used_at"], u["transaction_id"]) for u in used] == [
        (1, account["id"], "2027-01-15T08:00:00Z", done.body["transaction_id"])]
    unused = world.call("GET", f"/v1/voucher-lots/{lot['id']}/vouchers?used=false&limit=1").body
    assert [u["serial"] for u in unused["items"]] == [2] and unused["next_cursor"] is None
    assert world.call("GET", f"/v1/voucher-lots/{lot['id']}").body["counts"] == {"total": 2, "used": 1, "left": 1}
    # An Idempotency-Key makes a retried redeem answer the same, booking once.
    headers = {"Idempotency-Key": "topup-2"}
    first = world.call("POST", f"/v1/accounts/{account['id']}/topups/voucher", {"pin": pins[1]}, headers=headers)
    replay = world.call("POST", f"/v1/accounts/{account['id']}/topups/voucher", {"pin": pins[1]}, headers=headers)
    assert first.status == replay.status == 201 and first.body == replay.body
    assert replay.header("Idempotent-Replayed") == "true"
    assert world.call("GET", f"/v1/accounts/{account['id']}").body["balance"] == "20.000000"


def test_who_may_do_what(world):
    alice, alice_key = world.customer("Alice")
    bob, _ = world.customer("Bob")
    lot = world.lot(count=2)
    pins = [r["pin"] for r in world.secrets(lot)]
    for method, path in (("GET", "/v1/voucher-lots"), ("GET", f"/v1/voucher-lots/{lot['id']}"),
                         ("GET", f"/v1/voucher-lots/{lot['id']}/vouchers"),
                         ("GET", f"/v1/voucher-lots/{lot['id']}/vouchers.csv")):
        assert world.call(method, path, key=alice_key).status == 403, path
    assert world.call("POST", "/v1/voucher-lots", {"name": "x", "count": 1, "value": "1", "currency": "EUR"},
                      key=alice_key).status == 403
    assert world.call("PATCH", f"/v1/voucher-lots/{lot['id']}", {"status": "disabled"}, key=alice_key).status == 403
    assert world.redeem(bob, {"pin": pins[0]}, key=alice_key).status == 404  # not Alice's account
    assert world.redeem(bob, {"pin": pins[0]}).status == 201  # an admin tops up anyone
    assert world.redeem(alice, {"pin": pins[1]}, key=alice_key).status == 201
    assert world.call("POST", f"/v1/accounts/{alice['id']}/topups/voucher", {"pin": pins[1]}).status == 409


def test_refusals_and_validation(world):
    eur, _ = world.customer("Euro")
    usd_lot = world.lot(count=1, currency="USD")
    usd_pin = world.secrets(usd_lot)[0]["pin"]
    refused = world.redeem(eur, {"pin": usd_pin})
    assert refused.status == 409 and refused.body["detail"] == "this voucher is in USD, the account in EUR"
    assert refused.body["title"] == "Voucher refused"
    login_lot = world.lot(count=1, kind="login", value="3")
    row = world.secrets(login_lot)[0]
    assert world.redeem(eur, {"login": row["login"], "password": row["password"]}).body["amount"] == "3.000000"
    for body, fields in (
        ({}, {"pin"}),
        ({"pin": "12ab"}, {"pin"}),
        ({"pin": "1" * 16, "login": "1234567"}, {"pin"}),
        ({"login": "1234567"}, {"pin"}),
        ({"pin": "1" * 16, "color": "red"}, {"color"}),
    ):
        answer = world.redeem(eur, body)
        assert answer.status == 422 and {e["field"] for e in answer.body["errors"]} == fields, body
    for body, fields in (
        ({"name": "x", "count": 0, "value": "1", "currency": "EUR"}, {"count"}),
        ({"name": "x", "count": 100001, "value": "1", "currency": "EUR"}, {"count"}),
        ({"name": "x", "count": 1, "value": "0", "currency": "eur"}, {"value", "currency"}),
        ({"name": "x", "count": 1, "value": "1", "currency": "EUR", "kind": "card"}, {"kind"}),
        ({"name": "x", "count": 1, "value": "1", "currency": "EUR", "expires_at": "tomorrow"}, {"expires_at"}),
        ({"count": 1, "value": "1", "currency": "EUR", "export_key": "mine"}, {"name", "export_key"}),
    ):
        answer = world.call("POST", "/v1/voucher-lots", body)
        assert answer.status == 422 and {e["field"] for e in answer.body["errors"]} == fields, (body, answer.body)
    past = world.call("POST", "/v1/voucher-lots", {"name": "x", "count": 1, "value": "1", "currency": "EUR",
                                                   "expires_at": "2020-01-01T00:00:00Z"})
    assert past.status == 409 and "in the past" in past.body["detail"]
    assert world.call("GET", "/v1/voucher-lots?color=red").status == 422
    assert world.call("GET", "/v1/voucher-lots?status=gone").status == 422
    never = world.post("/v1/voucher-lots", {"name": "x", "count": 1, "value": "1", "currency": "EUR",
                                            "expires_at": None, "status": "disabled"})
    assert (never["expires_at"], never["status"]) == (None, "disabled")


def test_guessing_is_answered_429_with_retry_after(world, clock):
    account, key = world.customer("Mallory")
    lot = world.lot(count=1)
    pin = world.secrets(lot)[0]["pin"]
    for guess in range(5):
        answer = world.redeem(account, {"pin": f"{guess:016d}"}, key=key)
        assert answer.status == 404 and answer.body["detail"] == "wrong voucher PIN"
    blocked = world.redeem(account, {"pin": pin}, key=key)  # even the right PIN waits now
    assert blocked.status == 429 and blocked.header("Retry-After") == "180"
    assert world.redeem(account, {"pin": pin}).status == 429  # the account is braked for every key
    clock.advance(180)
    assert world.redeem(account, {"pin": pin}, key=key).status == 201


def test_creating_a_lot_with_an_idempotency_key_shows_the_export_key_once(world, database):
    headers = {"Idempotency-Key": "run-7"}
    body = {"name": "Run 7", "count": 2, "value": "5", "currency": "EUR"}
    first = world.call("POST", "/v1/voucher-lots", body, headers=headers)
    again = world.call("POST", "/v1/voucher-lots", body, headers=headers)
    assert first.status == again.status == 201 and first.body["id"] == again.body["id"]
    assert first.body["export_key"] and again.body["export_key"] is None
    assert database.run_blocking(lambda c: c.execute(select(func.count()).select_from(m.vouchers)).scalar()) == 2


def test_lots_page_with_a_cursor(world):
    ids = [world.lot(count=1)["id"] for _ in range(3)]
    first = world.call("GET", "/v1/voucher-lots?limit=2").body
    rest = world.call("GET", f"/v1/voucher-lots?limit=2&cursor={first['next_cursor']}").body
    assert [x["id"] for x in first["items"] + rest["items"]] == ids and rest["next_cursor"] is None


def test_the_openapi_document_describes_the_new_paths(world):
    document = yaml.safe_load(world.client.call("GET", "/openapi.yaml").raw)
    paths = document["paths"]
    for path in ("/v1/voucher-lots", "/v1/voucher-lots/{id}", "/v1/voucher-lots/{id}/vouchers",
                 "/v1/voucher-lots/{id}/vouchers.csv", "/v1/accounts/{id}/topups/voucher", "/v1/iif-peers",
                 "/v1/iif-peers/{id}"):
        assert path in paths, path
    redeem = paths["/v1/accounts/{id}/topups/voucher"]["post"]
    assert redeem["responses"]["429"]["headers"]["Retry-After"]["required"] is True
    assert document["components"]["schemas"]["VoucherLotCreate"]["required"] == ["name", "count", "value",
                                                                                   "currency"]


# -- IIF peers --------------------------------------------------------------------------------


def _service(world) -> int:
    account, _ = world.customer("AS owner")
    plan = world.post("/v1/tariff-plans", {"name": "plan", "currency": "EUR"})
    return world.post("/v1/services", {"account_id": account["id"], "type": "api",
                                       "tariff_plan_id": plan["id"]})["id"]


def test_iif_peers_are_provisioned_and_loaded(world, database):
    service_id = _service(world)
    peer = world.post("/v1/iif-peers", {"host": "192.0.2.10", "port": 5090, "service_id": service_id,
                                        "default_caller": "+442000000"})
    assert (peer["port"], peer["enabled"], peer["external_line_mode"]) == (5090, True, False)
    mapped = world.post("/v1/iif-peers", {"host": "::ffff:c000:20b", "service_id": service_id,
                                          "external_line_mode": True})
    assert (mapped["host"], mapped["port"], mapped["default_caller"]) == ("192.0.2.11", 0, None)
    v6 = world.post("/v1/iif-peers", {"host": "2001:DB8:0::1", "port": 7, "service_id": service_id,
                                      "default_caller": "123"})
    assert v6["host"] == "2001:db8::1"
    same = world.call("POST", "/v1/iif-peers", {"host": "2001:db8::0:1", "port": 7, "service_id": service_id,
                                                "default_caller": "9"})
    assert same.status == 409  # the same address in another spelling
    no_caller = world.call("POST", "/v1/iif-peers", {"host": "192.0.2.12", "service_id": service_id})
    assert no_caller.status == 409 and "default_caller" in no_caller.body["detail"]
    assert world.call("PATCH", f"/v1/iif-peers/{peer['id']}", {"default_caller": None}).status == 409
    assert world.call("PATCH", f"/v1/iif-peers/{mapped['id']}", {"external_line_mode": False}).status == 409
    for bad in ({"host": "example.com"}, {"host": "192.0.2.1", "port": 70000}, {"host": "010.0.0.1"},
                {"host": "192.0.2.1", "default_caller": "+" + "1" * 31}):
        answer = world.call("POST", "/v1/iif-peers", {"service_id": service_id, "default_caller": "1", **bad})
        assert answer.status == 422, bad
    assert world.call("POST", "/v1/iif-peers", {"host": "192.0.2.13", "service_id": 999,
                                                "default_caller": "1"}).status == 409
    _, customer_key = world.customer("Customer")
    assert world.call("GET", "/v1/iif-peers", key=customer_key).status == 403
    world.call("PATCH", f"/v1/iif-peers/{v6['id']}", {"enabled": False})
    loaded = database.run_blocking(load_iif_peers)
    assert loaded == [IifPeer("192.0.2.10", 5090, service_id, "+442000000", False),
                      IifPeer("192.0.2.11", 0, service_id, None, True)]
    assert loaded[0].caller == "+442000000" and loaded[1].caller is None
    configured = [IifPeer("192.0.2.10", 5090, 1, "1")]
    assert database.run_blocking(load_iif_peers, configured) == loaded[1:]  # [iif] peers come first


def test_load_iif_peers_skips_rows_that_cannot_be_peers(database):
    now = datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)

    def rows(conn):
        customer = conn.execute(insert(m.customers).values(name="c", status="active", created_at=now,
                                                           updated_at=now).returning(m.customers.c.id)).scalar_one()
        account = conn.execute(insert(m.accounts).values(customer_id=customer, currency="EUR", balance=0,
                                                         credit_limit=0, billing_type="prepaid", status="active",
                                                         created_at=now, updated_at=now)
                               .returning(m.accounts.c.id)).scalar_one()
        plan = conn.execute(insert(m.tariff_plans).values(name="p", currency="EUR", created_at=now, updated_at=now)
                            .returning(m.tariff_plans.c.id)).scalar_one()
        service = conn.execute(insert(m.services).values(account_id=account, type="api", tariff_plan_id=plan,
                                                         status="active", created_at=now, updated_at=now)
                               .returning(m.services.c.id)).scalar_one()
        for host, port, caller, line in (("not-an-address", 1, "1", False), ("192.0.2.1", 1, None, False),
                                         ("192.0.2.2", 1, "1", False), ("::ffff:192.0.2.2", 1, "2", False)):
            conn.execute(insert(m.iif_peers).values(host=host, port=port, service_id=service, default_caller=caller,
                                                    external_line_mode=line, enabled=True, created_at=now,
                                                    updated_at=now))
        return service

    service = database.run_blocking(rows)
    assert database.run_blocking(load_iif_peers) == [IifPeer("192.0.2.2", 1, service, "1")]


# -- SMS: T.<pin> ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_sms_command_tops_up_the_clients_account(world, database, clock):
    account, _ = world.customer("Texter")
    plan = world.post("/v1/tariff-plans", {"name": "sms plan", "currency": "EUR"})
    service = world.post("/v1/services", {"account_id": account["id"], "type": "api", "tariff_plan_id": plan["id"]})
    client = world.post("/v1/callback-clients", {"service_id": service["id"], "login": "texter", "password": "pw"})
    world.post("/v1/callback-numbers", {"client_id": client["id"], "number": "447700900001"})
    world.post(f"/v1/accounts/{account['id']}/transactions", {"kind": "topup", "amount": "15"})
    pins = [r["pin"] for r in world.secrets(world.lot(count=2, value="10"))]
    sms = SmsCallback(database, clock, engine=None, limiter=RateLimiter(clock))
    reply = await sms.handle("447700900001", "4415550000", f"T.{pins[0][:8]}-{pins[0][8:]}")
    assert reply == "topped up 10.00 EUR, balance 25.00 EUR"
    assert await sms.handle("447700900001", "4415550000", f"T.{pins[0]}") == "this voucher was already used"
    stranger = await sms.handle("447700900002", "4415550000", f"T.{pins[1]}")
    assert stranger.startswith("your number is not registered")
    assert await sms.handle("447700900002", "4415550000",
                            f"U.texter P.pw T.{pins[1]}") == "topped up 10.00 EUR, balance 35.00 EUR"
    assert await sms.handle("447700900001", "4415550000", "T.12") == "T. needs the voucher PIN: 12 to 32 digits"
    for _ in range(4):
        assert await sms.handle("447700900001", "4415550000", "T." + "9" * 16) == "wrong voucher PIN"
    assert await sms.handle("447700900001", "4415550000", "T." + "9" * 16) == (
        "too many wrong vouchers; try again in 3 min")


@pytest_twisted.ensureDeferred
async def test_wrong_sms_passwords_are_braked_per_login_and_per_sender(world, database, clock):
    account, _ = world.customer("Guessed")
    plan = world.post("/v1/tariff-plans", {"name": "guess plan", "currency": "EUR"})
    service = world.post("/v1/services", {"account_id": account["id"], "type": "api", "tariff_plan_id": plan["id"]})
    world.post("/v1/callback-clients", {"service_id": service["id"], "login": "carol", "password": "right"})
    world.post(f"/v1/accounts/{account['id']}/transactions", {"kind": "topup", "amount": "3"})
    sms = SmsCallback(database, clock, engine=None, limiter=RateLimiter(clock))
    for n in range(5):
        assert await sms.handle(f"44770090010{n}", "4415550000", f"U.carol P.guess{n} I") == "wrong login or password"
    # Five wrong passwords for carol from five numbers: her login is braked, even with the right one.
    assert await sms.handle("447700900199", "4415550000", "U.Carol P.right I") == (
        "too many wrong passwords; try again in 3 min")
    clock.advance(180)  # one try is back
    assert await sms.handle("447700900199", "4415550000", "U.carol P.right I") == "balance 3.00 EUR"
    # One sender guessing many logins is braked too.
    for n in range(5):
        assert await sms.handle("447700900200", "4415550000", f"U.nobody{n} P.x I") == "wrong login or password"
    assert (await sms.handle("447700900200", "4415550000", "U.carol P.right I")).startswith("too many wrong passwords")
