"""The HTTP SMS API over StubTreq: the real Klein app and database (SQLite
and PostgreSQL), the in-memory engine of the SMPP server's tests."""

from __future__ import annotations

import datetime

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock

from switchd.api.app import ProvisioningAPI
from switchd.api.auth import create_key
from switchd.api.problem import Problem
from switchd.api.sms import parse_message
from switchd.smpp import pdu as p

from ...apiclient import Client
from ..smpp.fake_engine import FakeEngine, refused


@pytest.fixture
def messages():
    return FakeEngine()


@pytest.fixture
def clock():
    clock = Clock()
    clock.advance(1_800_000_000)
    return clock


@pytest.fixture
def client(database, clock, messages):
    return Client(ProvisioningAPI(database, clock, CollectorRegistry(), messages=messages).resource())


@pytest.fixture
def admin(database):
    now = datetime.datetime.now(datetime.UTC)
    return database.run_blocking(lambda c: create_key(c, now, admin=True, customer_id=None, name="t"))[1]


class Customer:
    """A customer with an API service and one HTTP connection (its key sends SMS)."""

    def __init__(self, client: Client, admin: str, name: str) -> None:
        def post(path, body):
            answer = client.call("POST", path, body, key=admin)
            assert answer.status == 201, answer.body
            return answer.body

        customer = post("/v1/customers", {"name": name})
        self.account = post("/v1/accounts", {"customer_id": customer["id"], "currency": "EUR"})
        plan = post("/v1/tariff-plans", {"name": f"plan {name}", "currency": "EUR"})
        self.service = post("/v1/services", {"account_id": self.account["id"], "type": "api",
                                             "tariff_plan_id": plan["id"]})
        self.connection = post("/v1/connections/http", {"service_id": self.service["id"]})
        self.key = self.connection["api_key"]
        self.plain_key = post("/v1/api-keys", {"customer_id": customer["id"]})["key"]


@pytest.fixture
def acme(client, admin):
    return Customer(client, admin, "acme")


SMS = {"from": "ACME", "to": "+447700900001", "text": "Hello {world}"}


def test_send_stores_and_answers_with_id_and_parts(client, acme, messages):
    messages.parts = 2
    answer = client.call("POST", "/v1/sms", dict(SMS, client_reference="order-42"), key=acme.key)
    assert answer.status == 201, answer.body
    assert answer.body == {"id": "m0001", "parts": 2, "client_reference": "order-42"}
    assert answer.header("Location") == "/v1/sms/m0001"
    [(origin, submission)] = messages.submitted
    assert (origin.kind, origin.connection_id, origin.service_id, origin.account_id) == (
        "http", acme.connection["id"], acme.service["id"], acme.account["id"])
    assert (submission.source, submission.destination) == ("ACME", "447700900001")
    assert submission.data_coding == 0 and submission.content == b"Hello \x1b(world\x1b)"
    assert submission.client_reference == "order-42" and submission.registered_delivery == 0


def test_codings(client, acme, messages):
    assert client.call("POST", "/v1/sms", dict(SMS, text="Привет"), key=acme.key).status == 201
    assert messages.submitted[-1][1].data_coding == 8
    assert messages.submitted[-1][1].content == "Привет".encode("utf-16-be")
    assert client.call("POST", "/v1/sms", dict(SMS, text="café", data_coding=3), key=acme.key).status == 201
    assert messages.submitted[-1][1].content == b"caf\xe9"
    answer = client.call("POST", "/v1/sms", dict(SMS, data_coding=4), key=acme.key)
    assert answer.status == 422 and answer.body["errors"][0]["field"] == "data_coding"
    answer = client.call("POST", "/v1/sms", dict(SMS, text="日本", data_coding=3), key=acme.key)
    assert answer.status == 422 and answer.body["errors"][0]["field"] == "text"
    answer = client.call("POST", "/v1/sms", dict(SMS, data_coding=0x50), key=acme.key)
    assert answer.status == 422 and "not a text coding" in answer.body["errors"][0]["message"]


@pytest.mark.parametrize("body,fields", [
    ({"to": "1", "text": "x"}, ["from"]),
    ({"from": "ACME", "to": "12ab", "text": ""}, ["to", "text"]),
    (dict(SMS, colour="blue"), ["colour"]),
    (dict(SMS, registered_delivery=99, client_reference=""), ["registered_delivery", "client_reference"]),
    (dict(SMS, data_coding=True), ["data_coding"]),
    (dict(SMS, **{"from": "A sender too long"}), ["from"]),
    ([1, 2], ["(body)"]),
])
def test_bad_bodies_name_every_bad_field(body, fields):
    with pytest.raises(Problem) as caught:
        parse_message(body)
    assert caught.value.status == 422
    assert sorted(e["field"] for e in caught.value.errors) == sorted(fields)


def test_only_http_connection_keys_send(client, acme, admin, messages):
    assert client.call("POST", "/v1/sms", SMS).status == 401
    assert client.call("POST", "/v1/sms", SMS, key=admin).status == 403
    assert client.call("POST", "/v1/sms", {"bad": 1}, key=admin).status == 403  # who before what
    answer = client.call("POST", "/v1/sms", SMS, key=acme.plain_key)
    assert answer.status == 403 and "HTTP connection" in answer.body["detail"]
    assert client.call("GET", "/v1/sms/m0001", key=admin).status == 403
    assert messages.submitted == []
    answer = client.call("POST", "/v1/sms", raw=b"from=x", key=acme.key, headers={"Content-Type": "text/plain"})
    assert answer.status == 415


def test_refusals_are_problems_with_the_smpp_status(client, acme, messages):
    messages.refuse = refused(p.ESME_RX_T_APPN, 402, "insufficient funds for 1 part at 0.05 EUR")
    answer = client.call("POST", "/v1/sms", SMS, key=acme.key)
    assert answer.status == 402
    assert answer.header("Content-Type") == "application/problem+json"
    assert answer.body["smpp_status"] == "ESME_RX_T_APPN"
    assert answer.body["reason"] == answer.body["detail"] == "insufficient funds for 1 part at 0.05 EUR"
    messages.refuse = refused(p.ESME_RTHROTTLED, 429, "too many messages to this number")
    answer = client.call("POST", "/v1/sms", SMS, key=acme.key)
    assert answer.status == 429 and answer.header("Retry-After") == "1"
    messages.refuse = RuntimeError("bug")
    assert client.call("POST", "/v1/sms", SMS, key=acme.key).status == 500


def test_state_only_for_the_owner(client, admin, acme, messages):
    message_id = client.call("POST", "/v1/sms", SMS, key=acme.key).body["id"]
    answer = client.call("GET", f"/v1/sms/{message_id}", key=acme.key)
    assert answer.status == 200
    assert answer.body == {"id": message_id, "state": "ENROUTE", "parts": 1, "error_code": None,
                           "from": "ACME", "to": "447700900001", "submitted_at": "2026-01-01T00:00:00Z",
                           "done_at": None}
    messages.finish(message_id, "DELIVERED")
    body = client.call("GET", f"/v1/sms/{message_id}", key=acme.key).body
    assert body["state"] == "DELIVERED" and body["done_at"] == "2026-01-01T00:05:00Z"
    other = Customer(client, admin, "other")
    assert client.call("GET", f"/v1/sms/{message_id}", key=other.key).status == 404
    assert client.call("GET", "/v1/sms/nope", key=acme.key).status == 404
    assert client.call("GET", "/v1/sms/a%20b", key=acme.key).status == 404


def test_idempotency_key_sends_once(client, acme, messages):
    headers = {"Idempotency-Key": "k-1"}
    first = client.call("POST", "/v1/sms", SMS, key=acme.key, headers=headers)
    again = client.call("POST", "/v1/sms", SMS, key=acme.key, headers=headers)
    assert first.status == again.status == 201 and first.body == again.body
    assert again.header("Idempotent-Replayed") == "true" and first.header("Idempotent-Replayed") is None
    assert len(messages.submitted) == 1
    other = client.call("POST", "/v1/sms", dict(SMS, text="other"), key=acme.key, headers=headers)
    assert other.status == 409 and other.body["title"] == "Idempotency-Key reused"
    bad = client.call("POST", "/v1/sms", SMS, key=acme.key, headers={"Idempotency-Key": "a b"})
    assert bad.status == 422


def test_idempotency_key_is_freed_by_a_refusal_and_busy_while_in_progress(client, acme, messages):
    headers = {"Idempotency-Key": "k-2"}
    messages.refuse = refused(p.ESME_RINVDSTADR, 400, "no route")
    assert client.call("POST", "/v1/sms", SMS, key=acme.key, headers=headers).status == 400
    messages.refuse = None
    messages.hold()
    pending = client.stub.request("POST", "http://switchd.test/v1/sms", json=SMS,
                                  headers={"Authorization": f"Bearer {acme.key}", **headers})
    done = []
    pending.addBoth(done.append)
    client.stub.flush()
    assert done == []
    busy = client.call("POST", "/v1/sms", SMS, key=acme.key, headers=headers)
    assert busy.status == 409 and busy.body["title"] == "Idempotency-Key in use"
    messages.release()
    client.stub.flush()
    assert done[0].code == 201
    assert client.call("POST", "/v1/sms", SMS, key=acme.key, headers=headers).header("Idempotent-Replayed") == "true"
    assert len(messages.submitted) == 1


def test_without_an_engine_sms_is_503(database, clock, acme):
    client = Client(ProvisioningAPI(database, clock, CollectorRegistry()).resource())
    assert client.call("POST", "/v1/sms", SMS, key=acme.key).status == 503
    assert client.call("GET", "/v1/sms/x", key=acme.key).status == 503
