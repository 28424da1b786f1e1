"""Callbacks through the running daemon: an application server asks over IIF
(UDP) or click-to-dial (HTTP); SIPp trunks play user1 (127.0.0.3, answers
and waits) and user2 (127.0.0.4, answers and hangs up after 3 s)."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from ..daemon import Daemon
from .test_calls import SCENARIOS, errors
from .test_sip_peers import Api, free_port

USER1, USER2 = "4420711111", "4420822222"


class CallbackNetwork:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.daemon = Daemon(tmp_path, env={
            "SWITCHD_SIP_LISTEN": "udp:0:interface=127.0.0.1", "SWITCHD_SIP_RELOAD_SECONDS": "1",
            "SWITCHD_IIF_PEERS": "127.0.0.1:0", "SWITCHD_IIF_SERVICE_ID": "1",
            "SWITCHD_IIF_DEFAULT_CALLER": "442000000",
        })
        self.daemon.start(expect=("api", "sip", "iif"))
        self.api = api = Api(self.daemon)
        self.peers: list[subprocess.Popen] = []
        customer = api.post("/v1/customers", {"name": "Callback Co"})
        self.account = api.post("/v1/accounts", {"customer_id": customer["id"], "currency": "EUR"})
        plan = api.post("/v1/tariff-plans", {"name": "callback", "currency": "EUR"})
        api.post("/v1/rates", {"tariff_plan_id": plan["id"], "prefix": "44", "price_per_minute": "0.600000",
                               "increment_first": 1, "increment_next": 1})
        group = api.post("/v1/routing-groups", {"name": "world"})
        self.service = api.post("/v1/services", {"account_id": self.account["id"], "type": "api",
                                                 "tariff_plan_id": plan["id"], "routing_group_id": group["id"]})
        assert self.service["id"] == 1  # [iif] service_id names it
        api.post(f"/v1/accounts/{self.account['id']}/transactions", {"kind": "topup", "amount": "10"})
        for name, host, prefix, scenario, extra in (
            ("user1-trunk", "127.0.0.3", "44207", "uas_answer.xml", ()),
            ("user2-trunk", "127.0.0.4", "44208", "uas_hangup.xml", ("-d", "3000")),
        ):
            port = free_port()
            trunk = api.post("/v1/trunks", {"name": name, "host": host, "port": port})
            api.post("/v1/connections/sip", {"service_id": self.service["id"], "trunk_id": trunk["id"],
                                             "auth_type": "ip"})
            api.post("/v1/routing-group-members", {"routing_group_id": group["id"], "trunk_id": trunk["id"],
                                                   "prefixes": prefix})
            self.peers.append(subprocess.Popen(
                ["sipp", "-sf", str(SCENARIOS / scenario), "-i", host, "-p", str(port), "-nostdin",
                 "-trace_err", *extra], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.5)  # trunk settings are re-read every second here
        self.iif = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.iif.bind(("127.0.0.1", 0))
        self.iif.settimeout(30)

    def send(self, text: str) -> None:
        self.iif.sendto(text.encode(), ("127.0.0.1", self.daemon.listeners[("iif", "udp")]))

    def receive(self) -> str:
        return self.iif.recvfrom(2048)[0].decode()

    def cdrs(self) -> list[dict]:
        return self.api("GET", "/v1/cdrs?limit=100")[1]["items"]

    def close(self) -> None:
        self.iif.close()
        for peer in self.peers:
            peer.kill()
            peer.wait()
        self.daemon.stop()


@pytest.fixture
def net(tmp_path):
    network = CallbackNetwork(tmp_path)
    yield network
    network.close()


@pytest.mark.slow
def test_iif_request_calls_both_users_and_reports_the_talk_time(net, tmp_path):
    net.send(f"REQUEST: id=as-1;user1={USER1};user2={USER2};duration=600;")
    assert net.receive() == "ACK: id=as-1;code=ok"
    net.send(f"REQUEST: id=as-1;user1={USER1};user2={USER2};duration=600;")  # a retransmission
    assert net.receive() == "ACK: id=as-1;code=ok"
    response = net.receive()  # user2 hangs up 3 s after answering
    assert response.startswith("RESPONSE: id=as-1;real_duration="), response
    seconds = int(response.split("real_duration=")[1].rstrip(";"))
    assert 2 <= seconds <= 5, response + errors(tmp_path)
    cdrs = net.api.wait_for(lambda: c if len(c := net.cdrs()) == 2 else None, "two CDRs")
    assert {c["callee"] for c in cdrs} == {USER1, USER2}  # one call, not two: the retransmission was absorbed
    assert {c["direction"] for c in cdrs} == {"callback"}
    assert all(c["caller"] == "442000000" for c in cdrs)  # [iif] default_caller on both legs
    assert all(c["sip_code"] == 200 and c["billable_seconds"] >= 2 for c in cdrs)


@pytest.mark.slow
def test_iif_refuses_bad_requests_and_ignores_strangers(net):
    net.send(f"REQUEST: id=as-2;user1={USER1};user2=abc;duration=60;")
    assert net.receive() == "ACK: id=as-2;code=fail"
    net.send(f"REQUEST: id=as-3;user1={USER1};user2={USER2};duration=60;ann_id1=123;")
    assert net.receive() == "ACK: id=as-3;code=fail"
    net.send("REQUEST: id=as-4;user1=9999;user2=8888;duration=60;")  # no rate for 9...
    assert net.receive() == "ACK: id=as-4;code=fail"
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.5", 0))
    stranger.settimeout(1)
    stranger.sendto(f"REQUEST: id=x;user1={USER1};user2={USER2};duration=60;".encode(),
                    ("127.0.0.1", net.daemon.listeners[("iif", "udp")]))
    with pytest.raises(socket.timeout):
        stranger.recvfrom(2048)
    stranger.close()
    assert net.cdrs() == []


class Hooks(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hooks.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_click_to_dial_over_http_with_status_callbacks(net, tmp_path):
    hooks = HTTPServer(("127.0.0.1", 0), Hooks)
    Hooks.received = []
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    try:
        service_id = net.service["id"]
        status, support = net.api("GET", f"/v1/callbacks/support?service_id={service_id}")
        assert status == 200 and support["supported"] is True, support
        body = {"service_id": service_id, "a": USER1, "b": USER2, "max_seconds": 120,
                "status_url": f"http://127.0.0.1:{hooks.server_port}/hook"}
        request = urllib.request.Request(
            net.daemon.url + "/v1/callbacks", data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {net.api.key}", "Content-Type": "application/json",
                     "Idempotency-Key": "order-42"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            created = json.loads(answer.read())
        with urllib.request.urlopen(request, timeout=10) as answer:  # retried: the same callback
            assert json.loads(answer.read())["id"] == created["id"]
        events = net.api.wait_for(
            lambda: e if (e := net.api("GET", f"/v1/callbacks/{created['id']}/events")[1])["outcome"] else None,
            "the callback to end", timeout=30)
        states = [item["state"] for item in events["items"]]
        assert states[:3] == ["dialing1", "answered1", "dialing2"] and "bridged" in states, states
        assert events["outcome"] == "completed" and 2 <= events["real_duration"] <= 5
        hook_states = net.api.wait_for(lambda: [h["state"] for h in Hooks.received if h["state"] == "ended"]
                                       and [h["state"] for h in Hooks.received], "the status callbacks")
        assert hook_states[0] == "dialing1" and hook_states[-1] == "ended"
        ended = [h for h in Hooks.received if h["state"] == "ended"][0]
        assert ended["outcome"] == "completed" and ended["callback_id"] == created["id"]
        assert len(net.api.wait_for(lambda: c if len(c := net.cdrs()) == 2 else None, "two CDRs")) == 2
        # A callback that does not exist, and one of another customer's service.
        assert net.api("DELETE", f"/v1/callbacks/{created['id']}")[0] == 409  # already over
        assert net.api("GET", "/v1/callbacks/00ff")[0] == 404
        status, problem = net.api("POST", "/v1/callbacks", {"service_id": service_id, "a": "x"})
        assert status == 422 and {e["field"] for e in problem["errors"]} >= {"a", "b"}
    finally:
        hooks.shutdown()
