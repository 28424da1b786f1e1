"""The provisioning API end to end over HTTP semantics (StubTreq), with the
real database on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
import yaml
from prometheus_client import CollectorRegistry
from sqlalchemy import func, insert, select
from twisted.internet.task import Clock

from switchd.api.app import ProvisioningAPI
from switchd.api.auth import create_key, lookup
from switchd.store import models as m

from ..apiclient import Client

T0 = 1_800_000_000


@pytest.fixture
def clock():
    clock = Clock()
    clock.advance(T0)
    return clock


@pytest.fixture
def api(database, clock):
    return ProvisioningAPI(database, clock, CollectorRegistry(), page_size=50)


@pytest.fixture
def client(api):
    return Client(api.resource())


@pytest.fixture
def admin(database):
    now = datetime.datetime.now(datetime.timezone.utc)
    return database.run_blocking(lambda c: create_key(c, now, admin=True, customer_id=None, name="t"))[1]


class World:
    """Objects made through the API, as an operator would."""

    def __init__(self, client: Client, admin: str) -> None:
        self.client = client
        self.admin = admin

    def post(self, path, body, key=None, status=201):
        answer = self.client.call("POST", path, body, key=key or self.admin)
        assert answer.status == status, answer.body
        return answer.body

    def customer(self, name: str):
        customer = self.post("/v1/customers", {"name": name})
        account = self.post("/v1/accounts", {"customer_id": customer["id"], "currency": "EUR"})
        key = self.post("/v1/api-keys", {"customer_id": customer["id"], "name": name})["key"]
        return customer, account, key

    def plan(self, name="Zero cost (Call)"):
        return self.post("/v1/tariff-plans", {"name": name, "currency": "EUR"})


@pytest.fixture
def world(client, admin):
    return World(client, admin)


# -- round trips of every object with the seed's fields and defaults --------------


def test_every_object_round_trips_with_seed_defaults(client, admin, world):
    customer, account, _ = world.customer("ACME")
    assert account["balance"] == "0.000000"
    assert account["billing_type"] == "prepaid" and account["status"] == "active"
    plan = world.plan()
    rate = world.post(
        "/v1/rates",
        {"tariff_plan_id": plan["id"], "prefix": "4420", "price_per_minute": "0.012", "connection_fee": "0.05",
         "increment_first": 1, "increment_next": 1},
    )
    assert rate["price_per_minute"] == "0.012000" and rate["increment_first"] == 1
    assert world.post("/v1/rates", {"tariff_plan_id": plan["id"], "prefix": ""})["increment_next"] == 60
    group = world.post("/v1/routing-groups", {"name": "Europe"})
    trunk = world.post("/v1/trunks", {"name": "carrier-a", "host": "192.0.2.10"})
    assert (trunk["port"], trunk["transport"], trunk["enabled"]) == (5060, "udp", True)
    link = world.post("/v1/smpp-links", {"name": "smsc-1", "host": "smsc.example.net", "port": 2775,
                                          "system_id": "switchd", "password": "pw"})
    assert "password" not in link
    seed_001_defaults = {
        "mode": "transceiver", "pdu_type": "submit_sm", "client_port": 0, "mo_port": 0,
        "heartbeat_interval_ms": 30000, "max_missed_heartbeats": 3, "resend_times": 0,
        "resend_wait_ms": 0, "receiving_timeout_ms": 180000, "max_error_packets": 10,
        "window_size": 16, "transaction_timeout_ms": 6000, "max_message_length": 2048,
        "split_mode": "disabled", "max_content_length": 140, "concatenation_mode": "udh",
        "source_addr_ton": 0, "source_addr_npi": 0, "dest_addr_ton": 0, "dest_addr_npi": 0,
        "esm_class": 0, "message_format": "ascii", "protocol_id": 0, "registered_delivery": 2,
        "replace_if_present": False, "default_msg_id": 0,
    }
    assert {k: link[k] for k in seed_001_defaults} == seed_001_defaults
    # Seed 001: transaction timeout < heartbeat interval < receiving timeout.
    answer = client.call("PATCH", f"/v1/smpp-links/{link['id']}", {"heartbeat_interval_ms": 200000}, key=admin)
    assert answer.status == 409 and answer.body["detail"] == (
        "heartbeat_interval_ms (200000) must be less than receiving_timeout_ms (180000)")
    answer = client.call("POST", "/v1/smpp-links", {"name": "smsc-2", "host": "smsc.example.net", "port": 2775,
                                                    "transaction_timeout_ms": 40000}, key=admin)
    assert answer.status == 409 and answer.body["detail"] == (
        "transaction_timeout_ms (40000) must be less than heartbeat_interval_ms (30000)")
    answer = client.call("PATCH", f"/v1/smpp-links/{link['id']}", {"transaction_timeout_ms": 0,
                                                                   "heartbeat_interval_ms": 60000}, key=admin)
    assert answer.status == 200, answer.body
    answer = client.call("PATCH", f"/v1/smpp-links/{link['id']}", {"transaction_timeout_ms": 6000,
                                                                   "heartbeat_interval_ms": 30000}, key=admin)
    assert answer.status == 200, answer.body
    member = world.post("/v1/routing-group-members", {"routing_group_id": group["id"], "trunk_id": trunk["id"],
                                                      "priority": 10})
    assert member["weight"] == 100
    service = world.post("/v1/services", {"account_id": account["id"], "type": "sip_telephony",
                                          "tariff_plan_id": plan["id"], "routing_group_id": group["id"],
                                          "distribution_priority": 5, "periodic_fee": "9.99",
                                          "fee_period": "month"})
    assert service["periodic_fee"] == "9.990000"
    sip = world.post("/v1/connections/sip", {"service_id": service["id"], "trunk_id": trunk["id"],
                                             "auth_user": "u", "auth_password": "secret"})
    seed_000_sip = {"auth_type": "registration", "cps_limit": 0, "call_limit": 0, "voice_record": False,
                    "area_id": 1, "interface_name": "mitto", "comedia": False, "force_rport": False,
                    "filter_caching": False, "logging": False, "qualify_ms": 0}
    assert {k: sip[k] for k in seed_000_sip} == seed_000_sip
    assert "auth_password" not in sip
    api_service = world.post("/v1/services", {"account_id": account["id"], "type": "api",
                                              "tariff_plan_id": plan["id"]})
    smpp = world.post("/v1/connections/smpp", {"service_id": api_service["id"], "login": "acme", "password": "s3cret"})
    assert (smpp["system_type"], smpp["reception_speed"]) == ("0", 50)
    http = world.post("/v1/connections/http", {"service_id": api_service["id"], "url": "https://crm.example/cb",
                                               "password": "p", "headers": {"X-Token": "abc"}})
    assert http["callback_version"] == "V1" and http["transfer_method"] == "POST"
    assert http["headers"] == {"X-Token": "abc"} and "password" not in http
    assert http["api_key"].startswith("sk_")
    imap = world.post("/v1/connections/imap", {"service_id": api_service["id"], "server": "imap.example",
                                               "username": "box", "password": "pw"})
    assert (imap["folder"], imap["protection"], imap["port"]) == ("INBOX", "ssl", 993)

    # Every object reads back as it was created, without the create-only fields.
    for path, created in [
        ("customers", customer), ("accounts", account), ("tariff-plans", plan), ("rates", rate),
        ("routing-groups", group), ("trunks", trunk), ("smpp-links", link),
        ("routing-group-members", member), ("services", service), ("connections/sip", sip),
        ("connections/smpp", smpp), ("connections/imap", imap),
    ]:
        got = client.call("GET", f"/v1/{path}/{created['id']}", key=admin)
        assert got.status == 200 and got.body == created, path
        listed = client.call("GET", f"/v1/{path}", key=admin).body["items"]
        assert created in listed, path
    got = client.call("GET", f"/v1/connections/http/{http['id']}", key=admin).body
    assert "api_key" not in got and got["api_key_id"] == http["api_key_id"]

    # Updates change what they say and nothing else.
    changed = client.call("PATCH", f"/v1/connections/sip/{sip['id']}", {"cps_limit": 30, "qualify_ms": 60000},
                          key=admin)
    assert changed.status == 200
    assert changed.body == {**sip, "cps_limit": 30, "qualify_ms": 60000, "updated_at": changed.body["updated_at"]}
    assert client.call("PATCH", f"/v1/services/{service['id']}", {"type": "api"}, key=admin).body["errors"] == [
        {"field": "type", "message": "cannot be changed after creation"}
    ]

    # Deletes remove; what still refers to an object keeps it (409).
    assert client.call("DELETE", f"/v1/trunks/{trunk['id']}", key=admin).status == 409
    assert client.call("DELETE", f"/v1/connections/sip/{sip['id']}", key=admin).status == 204
    assert client.call("GET", f"/v1/connections/sip/{sip['id']}", key=admin).status == 404
    assert client.call("DELETE", f"/v1/routing-group-members/{member['id']}", key=admin).status == 204
    assert client.call("DELETE", f"/v1/trunks/{trunk['id']}", key=admin).status == 204


def test_connection_secrets_are_stored_as_the_switch_needs_them(client, admin, world, database):
    _, account, _ = world.customer("ACME")
    plan = world.plan()
    service = world.post("/v1/services", {"account_id": account["id"], "type": "api", "tariff_plan_id": plan["id"]})
    world.post("/v1/connections/smpp", {"service_id": service["id"], "login": "acme", "password": "s3cret"})
    http = world.post("/v1/connections/http", {"service_id": service["id"]})
    row = database.run_blocking(lambda c: c.execute(select(m.smpp_connections)).one())
    assert "s3cret" not in (row.password_hash, row.password_salt)  # verified only: hashed
    principal = database.run_blocking(lambda c: lookup(c, http["api_key"]))
    assert principal is not None and principal.customer_id == account["customer_id"]
    assert not principal.admin
    link = world.post("/v1/smpp-links", {"name": "up", "host": "h", "port": 1, "password": "pw"})
    stored = database.run_blocking(lambda c: c.execute(select(m.smpp_links.c.password)).scalar_one())
    assert stored == "pw"  # presented to the peer: readable by the switch
    assert "password" not in client.call("GET", f"/v1/smpp-links/{link['id']}", key=admin).body


# -- who may see and change what ---------------------------------------------------


def test_customer_keys_see_only_their_own_objects(client, admin, world):
    a, a_account, a_key = world.customer("A")
    b, b_account, b_key = world.customer("B")
    plan = world.plan()
    a_service = world.post("/v1/services", {"account_id": a_account["id"], "type": "api", "tariff_plan_id": plan["id"]})
    b_service = world.post("/v1/services", {"account_id": b_account["id"], "type": "api", "tariff_plan_id": plan["id"]})

    assert client.call("GET", f"/v1/customers/{a['id']}", key=a_key).status == 200
    assert client.call("GET", f"/v1/customers/{b['id']}", key=a_key).status == 404
    assert [c["id"] for c in client.call("GET", "/v1/customers", key=a_key).body["items"]] == [a["id"]]
    assert client.call("GET", f"/v1/accounts/{b_account['id']}", key=a_key).status == 404
    assert client.call("GET", f"/v1/services/{b_service['id']}", key=a_key).status == 404
    assert client.call("GET", f"/v1/services/{a_service['id']}", key=a_key).status == 200
    assert client.call("GET", f"/v1/accounts/{b_account['id']}/transactions", key=a_key).status == 404
    # Changing another customer's object answers as if it did not exist.
    assert client.call("PATCH", f"/v1/customers/{b['id']}", {"name": "x"}, key=a_key).status == 404
    # Own contact details may change; status may not (admin-only field).
    assert client.call("PATCH", f"/v1/customers/{a['id']}", {"email": "ops@a.example"}, key=a_key).status == 200
    denied = client.call("PATCH", f"/v1/customers/{a['id']}", {"status": "active"}, key=a_key)
    assert denied.status == 422
    assert denied.body["errors"] == [{"field": "status", "message": "may be set only with an admin key"}]
    # Carrier objects and money are admin-only.
    assert client.call("GET", "/v1/trunks", key=a_key).status == 403
    assert client.call("POST", "/v1/accounts", {"customer_id": a["id"], "currency": "EUR"}, key=a_key).status == 403
    assert client.call("POST", f"/v1/accounts/{a_account['id']}/transactions",
                       {"kind": "topup", "amount": "100"}, key=a_key).status == 403
    # A customer may connect its own mailbox but not to another's service.
    imap = {"server": "imap.a.example", "username": "u", "password": "p"}
    assert client.call("POST", "/v1/connections/imap", {**imap, "service_id": a_service["id"]}, key=a_key).status == 201
    other = client.call("POST", "/v1/connections/imap", {**imap, "service_id": b_service["id"]}, key=a_key)
    assert other.status == 409 and other.body["errors"][0]["field"] == "service_id"
    # Keys: a customer makes its own, cannot pick the owner, cannot see B's.
    own = client.call("POST", "/v1/api-keys", {"name": "ci"}, key=a_key)
    assert own.status == 201 and own.body["customer_id"] == a["id"] and own.body["admin"] is False
    assert client.call("POST", "/v1/api-keys", {"customer_id": b["id"]}, key=a_key).status == 422  # admin-only
    assert client.call("POST", "/v1/api-keys", {"customer_id": None}, key=a_key).status == 422
    listed = client.call("GET", "/v1/api-keys", key=a_key).body["items"]
    assert {k["customer_id"] for k in listed} == {a["id"]}
    assert client.call("GET", "/v1/cdrs", key=b_key).body["items"] == []


def test_revoked_key_stops_working_at_once(client, world, admin):
    customer, _, key = world.customer("A")
    assert client.call("GET", "/v1/customers", key=key).status == 200
    keys = client.call("GET", f"/v1/api-keys?customer_id={customer['id']}", key=admin).body["items"]
    assert client.call("DELETE", f"/v1/api-keys/{keys[0]['id']}", key=admin).status == 204
    answer = client.call("GET", "/v1/customers", key=key)
    assert answer.status == 401
    assert client.call("GET", f"/v1/api-keys/{keys[0]['id']}", key=admin).status == 404


# -- bad requests get clear problems ----------------------------------------------------


def test_authentication_errors(client, admin):
    missing = client.call("GET", "/v1/customers")
    assert missing.status == 401
    assert missing.header("Content-Type") == "application/problem+json"
    assert missing.header("WWW-Authenticate") == 'Bearer realm="switchd"'
    assert missing.body["title"] == "Unauthorized" and missing.body["status"] == 401
    for bad in ("nonsense", admin[:-2] + "xx", "sk_000000000000_abc"):
        assert client.call("GET", "/v1/customers", key=bad).status == 401
    basic = client.call("GET", "/v1/customers", headers={"Authorization": "Basic YTpi"})
    assert basic.status == 401


def test_validation_lists_every_bad_field(client, admin):
    answer = client.call(
        "POST",
        "/v1/accounts",
        {"customer_id": "1", "currency": "euro", "balance": "10", "id": 5, "color": "red", "credit_limit": 1.5},
        key=admin,
    )
    assert answer.status == 422
    assert answer.header("Content-Type") == "application/problem+json"
    fields = {e["field"]: e["message"] for e in answer.body["errors"]}
    assert fields == {
        "customer_id": "must be an integer",
        "currency": "must be at most 3 characters",
        "balance": "is read-only",
        "id": "is read-only",
        "color": "unknown field",
        "credit_limit": 'must be a decimal amount in a string, like "12.50"',
    }
    missing = client.call("POST", "/v1/customers", {}, key=admin)
    assert missing.body["errors"] == [{"field": "name", "message": "is required"}]
    control = client.call("POST", "/v1/customers", {"name": "a\x00b"}, key=admin)
    assert control.body["errors"] == [{"field": "name", "message": "must not contain control characters"}]
    assert client.call("POST", "/v1/customers", [1, 2], key=admin).status == 422
    ref = client.call("POST", "/v1/accounts", {"customer_id": 999, "currency": "EUR"}, key=admin)
    assert ref.status == 409
    assert ref.body["errors"] == [{"field": "customer_id", "message": "no such object in customers"}]
    whole = client.call("POST", "/v1/trunks", {"name": "t", "host": "h", "port": 5070.0}, key=admin)
    assert whole.status == 201 and whole.body["port"] == 5070


def test_malformed_requests(client, admin, api):
    bad_json = client.call("POST", "/v1/customers", key=admin, raw=b"{nope",
                           headers={"Content-Type": "application/json"})
    assert bad_json.status == 400 and bad_json.body["detail"].startswith("the body is not valid JSON")
    form = client.call("POST", "/v1/customers", key=admin, raw=b"name=x",
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status == 415
    big = client.call("POST", "/v1/customers", key=admin, raw=b'{"name": "' + b"x" * (2 << 20) + b'"}',
                      headers={"Content-Type": "application/json"})
    assert big.status == 413
    assert client.call("GET", "/v1/customers/abc", key=admin).status == 404
    assert client.call("GET", "/v1/customers/99999999999999999999", key=admin).status == 404
    unknown = client.call("GET", "/v1/unknown", key=admin)
    assert unknown.status == 404 and unknown.header("Content-Type") == "application/problem+json"
    method = client.call("PUT", "/v1/customers", {"name": "x"}, key=admin)
    assert method.status == 405 and method.header("Content-Type") == "application/problem+json"
    assert client.call("DELETE", "/v1/cdrs/1", key=admin).status == 405
    query = client.call("GET", "/v1/customers?limit=0&color=red", key=admin)
    assert query.status == 422
    assert {e["field"] for e in query.body["errors"]} == {"limit", "color"}


# -- idempotency, paging, money ---------------------------------------------------------


def test_idempotency_key_makes_a_retried_create_safe(client, admin, database):
    headers = {"Idempotency-Key": "order-1"}
    first = client.call("POST", "/v1/customers", {"name": "A"}, key=admin, headers=headers)
    again = client.call("POST", "/v1/customers", {"name": "A"}, key=admin, headers=headers)
    assert first.status == again.status == 201
    assert first.body == again.body
    assert again.header("Idempotent-Replayed") == "true"
    assert database.run_blocking(lambda c: c.execute(select(func.count()).select_from(m.customers)).scalar()) == 1
    other = client.call("POST", "/v1/customers", {"name": "B"}, key=admin, headers=headers)
    assert other.status == 409 and other.body["title"] == "Idempotency-Key reused"
    # A replayed key creation does not hand out the secret a second time.
    key_first = client.call("POST", "/v1/api-keys", {}, key=admin, headers={"Idempotency-Key": "k"})
    key_again = client.call("POST", "/v1/api-keys", {}, key=admin, headers={"Idempotency-Key": "k"})
    assert key_first.body["admin"] is True
    assert key_first.body["key"].startswith("sk_") and key_again.body["key"] is None
    assert key_first.body["id"] == key_again.body["id"]


def test_cursor_pagination_walks_every_object_once(client, admin):
    created = [client.call("POST", "/v1/customers", {"name": f"c{i}"}, key=admin).body["id"] for i in range(7)]
    seen, cursor, pages = [], None, 0
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.call("GET", "/v1/customers" + query, key=admin).body
        seen += [c["id"] for c in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == created and pages == 3
    assert client.call("GET", "/v1/customers?cursor=zzz", key=admin).status == 422


def test_money_moves_only_through_the_ledger(client, admin, world):
    customer, account, key = world.customer("A")
    path = f"/v1/accounts/{account['id']}/transactions"
    assert client.call("POST", path, {"kind": "topup", "amount": "100.50"}, key=admin).status == 201
    charge = client.call("POST", path, {"kind": "charge", "amount": "0.25", "reference": "call-1"}, key=admin)
    assert charge.status == 201 and charge.body["amount"] == "-0.250000"
    replay = client.call("POST", path, {"kind": "charge", "amount": "0.25", "reference": "call-1"}, key=admin)
    assert replay.status == 200 and replay.body == charge.body
    client.call("POST", path, {"kind": "writeoff", "amount": "10", "reference": "service:1:2026-11"}, key=admin)
    client.call("POST", path, {"kind": "refund", "amount": "0.25"}, key=admin)
    client.call("POST", path, {"kind": "debit", "amount": "0.5"}, key=admin)
    bad = client.call("POST", path, {"kind": "charge", "amount": "-3"}, key=admin)
    assert bad.status == 422 and bad.body["errors"][0]["message"] == "must be greater than zero"
    zero = client.call("POST", path, {"kind": "credit", "amount": "0.000"}, key=admin)
    assert zero.status == 422 and zero.body["errors"][0]["message"] == "must be greater than zero"
    assert client.call("PATCH", f"/v1/accounts/{account['id']}", {"balance": "1000"}, key=admin).status == 422
    balance = Decimal(client.call("GET", f"/v1/accounts/{account['id']}", key=key).body["balance"])
    ledger = client.call("GET", path, key=key).body["items"]
    assert balance == Decimal("90.000000") == sum(Decimal(e["amount"]) for e in ledger)
    assert Decimal(ledger[-1]["balance_after"]) == balance
    assert [e["kind"] for e in ledger] == ["topup", "charge", "writeoff", "refund", "debit"]
    assert client.call("POST", "/v1/accounts/999/transactions", {"kind": "topup", "amount": "1"},
                       key=admin).status == 404


def test_cdrs_are_read_by_account_and_time(client, admin, world, database):
    _, a_account, a_key = world.customer("A")
    _, b_account, _ = world.customer("B")
    base = datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc)

    def add(conn):
        for i, account in enumerate([a_account, a_account, b_account]):
            start = base + datetime.timedelta(hours=i)
            conn.execute(insert(m.cdrs).values(
                call_id=f"call-{i}", account_id=account["id"], start_time=start,
                answer_time=start + datetime.timedelta(seconds=5), end_time=start + datetime.timedelta(seconds=65),
                ring_seconds=5, billable_seconds=60, sip_code=200, rate=Decimal("0.01"), charge=Decimal("0.01"),
                currency="EUR", created_at=start,
            ))

    database.run_blocking(add)
    mine = client.call("GET", "/v1/cdrs", key=a_key).body["items"]
    assert [c["call_id"] for c in mine] == ["call-0", "call-1"]
    assert mine[0]["start_time"] == "2026-11-01T00:00:00Z" and mine[0]["charge"] == "0.010000"
    window = client.call("GET", "/v1/cdrs?from=2026-11-01T00:30:00Z&to=2026-11-01T03:00:00Z", key=admin).body
    assert [c["call_id"] for c in window["items"]] == ["call-1", "call-2"]
    by_account = client.call("GET", f"/v1/cdrs?account_id={b_account['id']}", key=admin).body["items"]
    assert [c["call_id"] for c in by_account] == ["call-2"]
    assert client.call("GET", "/v1/cdrs?from=yesterday", key=admin).status == 422


# -- operations endpoints ----------------------------------------------------------


def test_health_metrics_and_openapi(client, admin):
    health = client.call("GET", "/health")
    assert health.status == 200 and health.body["database"] == "ok"
    client.call("GET", "/v1/customers", key=admin)
    metrics = client.call("GET", "/metrics").raw.decode()
    assert 'switchd_api_requests_total{method="GET",route="/v1/customers",status="200"} 1.0' in metrics
    document = yaml.safe_load(client.call("GET", "/openapi.yaml").raw)
    assert document["openapi"] == "3.1.0"
    assert "/v1/accounts/{id}/transactions" in document["paths"]
    assert document["components"]["schemas"]["SmppConnectionCreate"]["properties"]["reception_speed"]["default"] == 50


def test_keys_cannot_lock_the_operator_out(client, admin, database):
    own = client.call("GET", "/v1/api-keys", key=admin).body["items"][0]
    answer = client.call("DELETE", f"/v1/api-keys/{own['id']}", key=admin)
    assert answer.status == 409 and "itself" in answer.body["detail"]
    second = client.call("POST", "/v1/api-keys", {"name": "second admin"}, key=admin).body
    assert second["admin"] is True
    # The last admin key cannot go; with two, either may be revoked by the other.
    assert client.call("DELETE", f"/v1/api-keys/{own['id']}", key=second["key"]).status == 204
    last = client.call("DELETE", f"/v1/api-keys/{second['id']}", key=second["key"])
    assert last.status == 409


def test_headers_that_are_not_utf8_are_rejected_cleanly(client, admin):
    answer = client.call("POST", "/v1/customers", {"name": "x"}, key=admin,
                         headers={"Idempotency-Key": "caf\u00e9"})
    assert answer.status == 422


def test_successful_writes_of_settings_run_the_on_write_hooks(api, client, admin, world):
    """The authorisation cache is cleared this way: a top-up or a new rate counts at once."""
    writes = []
    api.on_write.append(lambda: writes.append(1))
    customer, account, _ = world.customer("Hooked")
    assert len(writes) == 3  # customer, account, API key
    client.call("GET", f"/v1/accounts/{account['id']}", key=admin)
    assert client.call("POST", "/v1/customers", {"nam": "x"}, key=admin).status == 422
    assert len(writes) == 3  # reads and refused writes change nothing
    world.post(f"/v1/accounts/{account['id']}/transactions", {"kind": "topup", "amount": "5"})
    assert len(writes) == 4
