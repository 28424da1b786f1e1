"""The HTTP SMS API through the running daemon: the real engine and database,
an upstream link to the test SMSC, status callbacks to a local HTTP server
(start and end, V1 form and V2 JSON, basic auth, headers, signature, retry)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ..daemon import Daemon
from ..smsc import FakeSmsc
from .test_daemon import http


class Callbacks:
    """A customer's web server: records every callback; the first ``fail`` answers are 500."""

    def __init__(self, fail: int = 0) -> None:
        self.received: list[dict] = []
        self.fail = fail
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.received.append({"method": self.command, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                       "body": body})
                failing = outer.fail > 0
                outer.fail -= 1
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _record

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/status"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received) >= count:
                return self.received
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {count} callbacks; got {self.received}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def call(daemon: Daemon, method: str, path: str, body=None, key=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(daemon.url + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {key}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null"), dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), dict(e.headers)


class Customer:
    """An API service with an HTTP connection, routed to the test SMSC's link."""

    def __init__(self, daemon: Daemon, smsc: FakeSmsc, callbacks: Callbacks, **connection) -> None:
        admin = daemon.admin_key

        def post(path, body):
            status, answer = http(daemon, "POST", path, body, admin)
            assert status == 201, answer
            return answer

        customer = post("/v1/customers", {"name": "ACME"})
        self.account = post("/v1/accounts", {"customer_id": customer["id"], "currency": "EUR"})
        post(f"/v1/accounts/{self.account['id']}/transactions", {"kind": "topup", "amount": "1"})
        plan = post("/v1/tariff-plans", {"name": "sms", "currency": "EUR"})
        post("/v1/rates", {"tariff_plan_id": plan["id"], "prefix": "44", "price_per_message": "0.4"})
        group = post("/v1/routing-groups", {"name": "sms"})
        link = post("/v1/smpp-links", {"name": "up", "host": "127.0.0.1", "port": smsc.port, "system_id": "sw",
                                       "password": "pw"})
        post("/v1/routing-group-members", {"routing_group_id": group["id"], "smpp_link_id": link["id"]})
        service = post("/v1/services", {"account_id": self.account["id"], "type": "api", "tariff_plan_id": plan["id"],
                                        "routing_group_id": group["id"]})
        self.connection = post("/v1/connections/http", {
            "service_id": service["id"], "url": callbacks.url, "start_callback": True, "end_callback": True,
            "username": "crm", "password": "secret", "headers": {"X-Tenant": "acme"}, **connection})
        self.key = self.connection["api_key"]
        smsc.wait(lambda: smsc.bound, "the upstream link to bind")


@pytest.fixture
def world(tmp_path: Path):
    smsc = FakeSmsc()
    callbacks = Callbacks()
    daemon = Daemon(tmp_path, env={"SWITCHD_SMPP_RELOAD_SECONDS": "1", "SWITCHD_SIP_LISTEN": ""}).start()
    yield daemon, smsc, callbacks
    daemon.stop()
    smsc.close()
    callbacks.close()
    assert "Traceback" not in daemon.log.read_text()


def test_send_over_http_with_start_and_end_callbacks(world):
    daemon, smsc, callbacks = world
    customer = Customer(daemon, smsc, callbacks, callback_version="V2")
    status, sent, headers = call(daemon, "POST", "/v1/sms", {"from": "ACME", "to": "+447700900001",
                                                             "text": "Hello", "client_reference": "order-42"},
                                 customer.key)
    assert status == 201, sent
    assert sent["parts"] == 1 and sent["client_reference"] == "order-42"
    assert headers["Location"] == f"/v1/sms/{sent['id']}"
    smsc.wait(lambda: smsc.submitted, "the message upstream")
    assert smsc.submitted[0].pdu.short_message == b"Hello"
    start, end = callbacks.wait(2)
    for received in (start, end):
        assert received["method"] == "POST" and received["path"] == "/status"
        assert received["headers"]["authorization"] == "Basic " + base64.b64encode(b"crm:secret").decode()
        assert received["headers"]["x-tenant"] == "acme"
        event, stamp = received["headers"]["webhook-id"], received["headers"]["webhook-timestamp"]
        mac = hmac.new(b"secret", f"{event}.{stamp}.".encode() + received["body"], hashlib.sha256).digest()
        assert received["headers"]["webhook-signature"] == "v1," + base64.b64encode(mac).decode()
    first, last = json.loads(start["body"]), json.loads(end["body"])
    assert (first["type"], first["state"], first["message_id"]) == ("start", "ENROUTE", sent["id"])
    assert (last["type"], last["state"], last["final"]) == ("end", "DELIVERED", True)
    assert last["client_reference"] == "order-42" and "from" not in last
    status, info, _ = call(daemon, "GET", f"/v1/sms/{sent['id']}", key=customer.key)
    assert status == 200 and info["state"] == "DELIVERED" and info["to"] == "447700900001"
    assert info["done_at"] is not None


def test_refusals_idempotency_and_ownership(world):
    daemon, smsc, callbacks = world
    customer = Customer(daemon, smsc, callbacks)
    key = {"Idempotency-Key": "send-1"}
    body = {"from": "ACME", "to": "447700900001", "text": "once"}
    first = call(daemon, "POST", "/v1/sms", body, customer.key, key)
    again = call(daemon, "POST", "/v1/sms", body, customer.key, key)
    assert first[0] == again[0] == 201 and first[1] == again[1]
    assert again[2].get("Idempotent-Replayed") == "true"
    # The balance (1 EUR at 0.4 a part) pays for one more message, not two.
    assert call(daemon, "POST", "/v1/sms", body, customer.key)[0] == 201
    status, problem, _ = call(daemon, "POST", "/v1/sms", body, customer.key)
    assert status == 402 and problem["smpp_status"] == "ESME_RX_T_APPN"
    status, problem, _ = call(daemon, "POST", "/v1/sms", dict(body, to="33612345678"), customer.key)
    assert status == 400 and problem["smpp_status"] == "ESME_RINVDSTADR"
    assert call(daemon, "POST", "/v1/sms", body, daemon.admin_key)[0] == 403
    assert call(daemon, "GET", f"/v1/sms/{first[1]['id']}", key=daemon.admin_key)[0] == 403
    smsc.wait(lambda: len(smsc.submitted) == 2, "two messages upstream")
    time.sleep(0.5)
    assert len(smsc.submitted) == 2


def test_v1_get_callbacks_are_retried_until_accepted(world):
    daemon, smsc, callbacks = world
    callbacks.fail = 2
    customer = Customer(daemon, smsc, callbacks, callback_version="V1", transfer_method="GET",
                        start_callback=False, callback_repeat=True, pass_a_number=True)
    status, sent, _ = call(daemon, "POST", "/v1/sms", {"from": "ACME", "to": "447700900001", "text": "Hi"},
                           customer.key)
    assert status == 201
    received = callbacks.wait(3, timeout=30)  # 500, 500 (after 1 s), 200 (after 2 s more)
    assert len({r["headers"]["webhook-id"] for r in received}) == 1
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(received[-1]["path"]).query,
                                        keep_blank_values=True))
    assert query["id"] == sent["id"] and query["type"] == "end" and query["status"] == "DELIVERED"
    assert query["from"] == "ACME" and query["to"] == "447700900001"
    time.sleep(1.5)
    assert len(callbacks.received) == 3  # accepted: no more tries
