"""Callbacks through the running daemon: an application server asks over IIF
(UDP) or click-to-dial (HTTP); SIPp trunks play user1 (127.0.0.3, answers
and waits) and user2 (127.0.0.4, answers and hangs up after 3 s)."""

from __future__ import annotations

import datetime
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
from ..smsc import FakeSmsc
from .test_calls import SCENARIOS, errors
from .test_sip_peers import Api, free_port

USER1, USER2 = "4420711111", "4420822222"


class CallbackNetwork:
    def __init__(self, tmp_path: Path, user1_scenario=("uas_answer.xml", ()), user2_prefix: str = "44208",
                 user2_scenario=("uas_hangup.xml", ("-d", "3000")), env=None) -> None:
        self.dir = tmp_path
        self.daemon = Daemon(tmp_path, env={
            "SWITCHD_SIP_LISTEN": "udp:0:interface=127.0.0.1", "SWITCHD_SIP_RELOAD_SECONDS": "1",
            "SWITCHD_IIF_PEERS": "127.0.0.1:0", "SWITCHD_IIF_SERVICE_ID": "1",
            "SWITCHD_IIF_DEFAULT_CALLER": "442000000", **(env or {}),
        })
        self.daemon.start(expect=("api", "sip", "iif"))
        self.api = api = Api(self.daemon)
        self.peers: list[subprocess.Popen] = []
        customer = api.post("/v1/customers", {"name": "Callback Co"})
        self.account = api.post("/v1/accounts", {"customer_id": customer["id"], "currency": "EUR"})
        plan = api.post("/v1/tariff-plans", {"name": "callback", "currency": "EUR"})
        for prefix in ("44", "2"):
            api.post("/v1/rates", {"tariff_plan_id": plan["id"], "prefix": prefix, "price_per_minute": "0.600000",
                                   "increment_first": 1, "increment_next": 1})
        self.group = group = api.post("/v1/routing-groups", {"name": "world"})
        self.service = api.post("/v1/services", {"account_id": self.account["id"], "type": "api",
                                                 "tariff_plan_id": plan["id"], "routing_group_id": group["id"]})
        assert self.service["id"] == 1  # [iif] service_id names it
        api.post(f"/v1/accounts/{self.account['id']}/transactions", {"kind": "topup", "amount": "10"})
        customer_trunk = api.post("/v1/trunks", {"name": "customer-in", "host": "127.0.0.2", "port": 5060})
        api.post("/v1/connections/sip", {"service_id": self.service["id"], "trunk_id": customer_trunk["id"],
                                         "auth_type": "ip"})
        for name, host, prefix, scenario, extra in (
            ("user1-trunk", "127.0.0.3", "44207", user1_scenario[0], user1_scenario[1]),
            ("user2-trunk", "127.0.0.4", user2_prefix, user2_scenario[0], user2_scenario[1]),
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


@pytest.fixture
def ivr_net(tmp_path):
    """SMS callbacks run the IVR after user2's call: it waits 1 s for digits instead of 15."""
    network = CallbackNetwork(tmp_path, env={"SWITCHD_CALLBACK_FIRST_DIGIT_SECONDS": "1"})
    yield network
    network.close()


def user1_stayed_in_the_ivr(cdrs: list[dict]) -> bool:
    """user1's leg ended well after user2's: the IVR asked for another number first."""
    ends = {c["callee"]: datetime.datetime.fromisoformat(c["end_time"].replace("Z", "+00:00")) for c in cdrs}
    return (ends[USER1] - ends[USER2]).total_seconds() >= 2


@pytest.mark.slow
def test_iif_request_calls_both_users_and_reports_the_talk_time(net, tmp_path):
    net.send(f"REQUEST: id=as-1;user1={USER1};user2={USER2};duration=600;")
    assert net.receive() == "ACK: id=as-1;code=ok"
    net.send(f"REQUEST: id=as-1;user1={USER1};user2={USER2};duration=600;")  # a retransmission
    assert net.receive() == "ACK: id=as-1;code=ok"
    response = net.receive()  # user2 hangs up 3 s after answering
    assert response.startswith("RESPONSE: id=as-1;real_duration="), response
    seconds = int(response.split("real_duration=")[1].rstrip(";"))
    assert 2 <= seconds <= 4, response + errors(tmp_path)  # the scripted 3 s, within one second
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
        assert created["ivr"] is False  # click-to-dial ends with b's call unless "ivr": true
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
        status, problem = net.api("POST", "/v1/callbacks", {"service_id": service_id, "a": "x", "ivr": "yes"})
        assert status == 422 and {e["field"] for e in problem["errors"]} >= {"a", "b", "ivr"}
    finally:
        hooks.shutdown()


@pytest.mark.slow
def test_ani_callback_refuses_the_call_calls_back_and_the_ivr_takes_the_number(tmp_path):
    net = CallbackNetwork(tmp_path, user1_scenario=("uas_dtmf.xml", ("-d", "8000", "-mp", str(free_port()))),
                          user2_prefix="2")
    try:
        api = net.api
        # The client has no language of its own: the access number's (Spanish) is used.
        client = api.post("/v1/callback-clients", {"service_id": net.service["id"], "login": "alice",
                                                   "password": "s3cret"})
        assert client["language"] is None
        api.post("/v1/callback-numbers", {"client_id": client["id"], "number": USER1})
        access = api.post("/v1/services", {"account_id": net.account["id"], "type": "callback",
                                           "tariff_plan_id": net.service["tariff_plan_id"]})
        api.post("/v1/numbers", {"number": "4415550000", "service_id": access["id"], "language": "es"})
        time.sleep(1.5)  # numbers are re-read every second here
        # The client's phone calls the access number from 127.0.0.2 as USER1.
        port = net.daemon.listeners[("sip", "udp")]
        refused = subprocess.run(
            ["sipp", "-sf", str(SCENARIOS / "uac_refused.xml"), f"127.0.0.1:{port}", "-s", "4415550000",
             "-i", "127.0.0.2", "-p", "0", "-m", "1", "-key", "caller", USER1, "-nostdin", "-trace_err"],
            cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert refused.returncode == 0, refused.stdout[-2000:] + errors(tmp_path)
        # switchd calls USER1 back; the IVR asks, USER1 presses 2 3 #, switchd calls "23" on the
        # user2 trunk, which answers and hangs up after 3 s; USER1 hangs up later.
        cdrs = api.wait_for(lambda: c if len(c := net.cdrs()) == 2 else None, "two callback CDRs", timeout=40)
        by_callee = {c["callee"]: c for c in cdrs}
        assert set(by_callee) == {USER1, "23"}, cdrs
        assert by_callee[USER1]["caller"] == "4415550000"  # the access number calls back
        assert all(c["direction"] == "callback" for c in cdrs)
        log = (tmp_path / "switchd.log").read_text()
        assert "callback" in log and "ended: completed" in log, log[-3000:]
        assert f"(ani 4415550000) calls {USER1}, prompts in es" in log, log[-3000:]
    finally:
        net.close()


@pytest.mark.slow
def test_sms_callback_commands_over_http(ivr_net, tmp_path):
    net = ivr_net
    api = net.api
    client = api.post("/v1/callback-clients", {"service_id": net.service["id"], "login": "bob", "password": "pw"})
    api.post("/v1/phone-directory", {"client_id": client["id"], "position": 1, "name": "Office", "number": USER2})
    access = api.post("/v1/services", {"account_id": net.account["id"], "type": "callback",
                                       "tariff_plan_id": net.service["tariff_plan_id"]})
    api.post("/v1/numbers", {"number": "4415550001", "service_id": access["id"], "language": "vi"})

    def sms(sender, text):
        status, body = api("POST", "/v1/callbacks/sms", {"from": sender, "to": "4415550001", "text": text})
        assert status == 200, body
        return body["reply"]

    assert sms(USER1, "I") == "your number is not registered: send U.login P.password R.number first"
    assert sms(USER1, "U.bob P.wrong R." + USER1) == "wrong login or password"
    assert sms(USER1, "U.bob P.pw R." + USER1) == f"{USER1} registered"
    assert sms(USER1, "I") == "balance 10.00 EUR"
    # T.<pin>: a voucher tops the account up; its PIN comes from the lot's one export.
    lot = api.post("/v1/voucher-lots", {"name": "sms", "count": 1, "value": "5", "currency": "EUR"})
    export = urllib.request.Request(f"{net.daemon.url}/v1/voucher-lots/{lot['id']}/vouchers.csv", headers={
        "Authorization": f"Bearer {api.key}", "Export-Key": lot["export_key"]})
    with urllib.request.urlopen(export, timeout=10) as answer:
        pin = answer.read().decode().splitlines()[1].split(",")[1]
    assert sms(USER1, f"T.{pin}") == "topped up 5.00 EUR, balance 15.00 EUR"
    assert sms(USER1, f"T.{pin}") == "this voucher was already used"
    assert sms(USER1, "T.12") == "T. needs the voucher PIN: 12 to 32 digits"
    assert sms(USER1, "I") == "balance 15.00 EUR"
    assert sms(USER1, "B.nobody") == "no directory entry nobody"
    assert sms(USER1, "hello") == "cannot read 'hello'; fields look like D.number"
    assert sms(USER1, "b.office") == f"calling {USER1}, then {USER2}"
    cdrs = api.wait_for(lambda: c if len(c := net.cdrs()) == 2 else None, "two callback CDRs", timeout=60)
    assert {c["callee"] for c in cdrs} == {USER1, USER2}
    assert user1_stayed_in_the_ivr(cdrs), cdrs
    # bob has no language: the access number's. Once he has one, his own wins.
    assert f"(sms {USER1}) calls {USER1}, prompts in vi" in (tmp_path / "switchd.log").read_text()
    assert api("PATCH", f"/v1/callback-clients/{client['id']}", {"language": "fr"})[0] == 200
    assert sms(USER1, "N1") == f"calling {USER1}, then {USER2}"
    api.wait_for(lambda: c if len(c := net.cdrs()) == 4 else None, "four callback CDRs", timeout=60)
    assert f"(sms {USER1}) calls {USER1}, prompts in fr" in (tmp_path / "switchd.log").read_text()
    assert api("POST", "/v1/callbacks/sms", {"from": USER1, "to": "4400000000", "text": "I"})[0] == 404


@pytest.mark.slow
def test_sms_callback_over_smpp_from_an_upstream_link(ivr_net, tmp_path):
    """Texts to the access number arrive as MO from an upstream SMSC; replies go back through it."""
    net = ivr_net
    smsc = FakeSmsc(receipts=False)
    try:
        api = net.api
        link = api.post("/v1/smpp-links", {"name": "up", "host": "127.0.0.1", "port": smsc.port,
                                           "system_id": "switchd", "password": "pw"})
        api.post("/v1/routing-group-members", {"routing_group_id": net.group["id"], "smpp_link_id": link["id"]})
        client = api.post("/v1/callback-clients", {"service_id": net.service["id"], "login": "carol", "password": "pw"})
        api.post("/v1/phone-directory", {"client_id": client["id"], "position": 1, "name": "home", "number": USER2})
        access = api.post("/v1/services", {"account_id": net.account["id"], "type": "callback",
                                           "tariff_plan_id": net.service["tariff_plan_id"],
                                           "routing_group_id": net.group["id"]})
        api.post("/v1/numbers", {"number": "4415550002", "service_id": access["id"]})
        smsc.wait(lambda: smsc.bound, "the upstream link to bind", timeout=30)
        time.sleep(1.5)  # the access numbers are re-read every second here

        def replies():
            return [(s.pdu.destination_addr, s.pdu.short_message) for s in smsc.submitted]

        smsc.send_mo(USER1, "4415550002", f"U.carol P.pw R.{USER1}".encode())
        smsc.wait(lambda: (USER1, f"{USER1} registered".encode()) in replies(), "the reply to R.")
        smsc.send_mo(USER1, "4415550002", b"X.1")
        smsc.wait(lambda: (USER1, b"unknown field X.; use U. P. D. O. R. B. N T or I") in replies(), "the error reply")
        # The same commands posted by an SMS forwarder over HTTP: the reply goes by SMS as well,
        # unless the forwarder sends it itself.
        status, body = api("POST", "/v1/callbacks/sms", {"from": USER1, "to": "4415550002", "text": "B.nobody"})
        assert (status, body["reply"], body["sms_sent"]) == (200, "no directory entry nobody", True)
        smsc.wait(lambda: (USER1, b"no directory entry nobody") in replies(), "the reply to B. by SMS")
        status, body = api("POST", "/v1/callbacks/sms", {"from": USER1, "to": "4415550002", "text": "B.none",
                                                         "send_reply": False})
        assert (status, body["reply"], body["sms_sent"]) == (200, "no directory entry none", False)
        smsc.send_mo(USER1, "4415550002", b"N1")
        smsc.wait(lambda: (USER1, f"calling {USER1}, then {USER2}".encode()) in replies(), "the reply to N1")
        assert (USER1, b"no directory entry none") not in replies()
        cdrs = api.wait_for(lambda: c if len(c := net.cdrs()) == 2 else None, "two callback CDRs", timeout=60)
        assert {c["callee"] for c in cdrs} == {USER1, USER2}
        assert user1_stayed_in_the_ivr(cdrs), cdrs
        assert all(a.status == 0 for a in smsc.answered)  # every MO acknowledged
    finally:
        smsc.close()


@pytest.mark.slow
def test_iif_peers_added_through_the_api_are_served(net):
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.6", 0))
    other.settimeout(1)
    port = net.daemon.listeners[("iif", "udp")]
    try:
        other.sendto(b"REQUEST: id=p-1;user1=9;user2=8;duration=60;", ("127.0.0.1", port))
        with pytest.raises(socket.timeout):
            other.recvfrom(2048)  # not a peer yet: ignored
        net.api.post("/v1/iif-peers", {"host": "127.0.0.6", "port": other.getsockname()[1],
                                       "service_id": net.service["id"], "default_caller": "442000001"})
        time.sleep(1.5)  # peers are re-read every second here
        other.settimeout(10)
        other.sendto(b"REQUEST: id=p-2;user1=9;user2=8;duration=60;", ("127.0.0.1", port))
        assert other.recvfrom(2048)[0] == b"ACK: id=p-2;code=fail"  # served (9 has no rate)
    finally:
        other.close()


@pytest.mark.slow
@pytest.mark.parametrize("scenario, outcome", [("uas_486.xml", "user2_busy"), ("uas_ring.xml", "user2_no_answer")])
def test_iif_user2_refusing_or_never_answering_reports_zero(tmp_path, scenario, outcome):
    net = CallbackNetwork(tmp_path, user2_scenario=(scenario, ()), env={"SWITCHD_CALLBACK_RING_SECONDS": "5"})
    try:
        net.send(f"REQUEST: id=as-9;user1={USER1};user2={USER2};duration=60;")
        assert net.receive() == "ACK: id=as-9;code=ok"
        assert net.receive() == "RESPONSE: id=as-9;real_duration=0;"
        log = (tmp_path / "switchd.log").read_text()
        assert f"ended: {outcome}, 0 s bridged" in log, log[-2000:]
        cdrs = net.api.wait_for(lambda: c if len(c := net.cdrs()) == 2 else None, "two CDRs")
        by_callee = {c["callee"]: c for c in cdrs}
        assert by_callee[USER1]["answer_time"] is not None and by_callee[USER2]["answer_time"] is None
    finally:
        net.close()
