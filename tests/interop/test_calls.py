"""Calls through the B2BUA between SIPp peers: a customer's trunk calls in
from 127.0.0.2, vendor trunks answer on 127.0.0.3 and 127.0.0.4."""

from __future__ import annotations

import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest

from ..daemon import Daemon
from .test_sip_peers import Api, free_port

SCENARIOS = Path(__file__).parent / "scenarios"
CUSTOMER_IP = "127.0.0.2"


class Network:
    """A customer with a trunk, a tariff, a routing group and vendor trunks."""

    def __init__(self, daemon: Daemon, api: Api, tmp_path: Path) -> None:
        self.daemon = daemon
        self.api = api
        self.dir = tmp_path
        self.peers: list[subprocess.Popen] = []
        customer = api.post("/v1/customers", {"name": "ACME Telecom"})
        self.account = api.post("/v1/accounts", {"customer_id": customer["id"], "currency": "EUR"})
        plan = api.post("/v1/tariff-plans", {"name": "retail", "currency": "EUR"})
        api.post("/v1/rates", {"tariff_plan_id": plan["id"], "prefix": "44", "price_per_minute": "0.600000",
                               "connection_fee": "0.010000", "increment_first": 1, "increment_next": 1})
        self.group = api.post("/v1/routing-groups", {"name": "world"})
        self.service = api.post("/v1/services", {"account_id": self.account["id"], "type": "sip_telephony",
                                                 "tariff_plan_id": plan["id"], "routing_group_id": self.group["id"]})
        inbound = api.post("/v1/trunks", {"name": "acme-in", "host": CUSTOMER_IP, "port": 5060})
        api.post("/v1/connections/sip", {"service_id": self.service["id"], "trunk_id": inbound["id"], "auth_type": "ip"})

    def topup(self, amount: str) -> None:
        self.api.post(f"/v1/accounts/{self.account['id']}/transactions", {"kind": "topup", "amount": amount})

    def vendor(self, name: str, host: str, scenario: str, *, priority: int = 10, extra=(), **connection) -> dict:
        port = free_port()
        trunk = self.api.post("/v1/trunks", {"name": name, "host": host, "port": port})
        self.api.post("/v1/connections/sip", {"service_id": self.service["id"], "trunk_id": trunk["id"],
                                              "auth_type": "ip", **connection})
        self.api.post("/v1/routing-group-members", {"routing_group_id": self.group["id"], "trunk_id": trunk["id"],
                                                    "priority": priority})
        self.peers.append(subprocess.Popen(
            ["sipp", "-sf", str(SCENARIOS / scenario), "-i", host, "-p", str(port), "-nostdin", "-trace_err",
             *extra],
            cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        return trunk

    def settle(self) -> None:
        time.sleep(1.5)  # trunk settings are re-read every second in these tests

    def call(self, scenario: str, calls: int, rate: float, duration_ms: int = 500, timeout: float = 120,
             number: str = "4420712345", extra=()) -> subprocess.CompletedProcess:
        port = self.daemon.listeners[("sip", "udp")]
        return subprocess.run(
            ["sipp", "-sf", str(SCENARIOS / scenario), f"127.0.0.1:{port}", "-s", number, "-i", CUSTOMER_IP,
             "-p", "0", "-m", str(calls), "-r", str(rate), "-d", str(duration_ms), "-l", str(max(10, int(rate * 5))),
             "-nostdin", "-trace_err", *extra],
            cwd=self.dir, capture_output=True, text=True, timeout=timeout,
        )

    def cdrs(self) -> list[dict]:
        items, cursor = [], None
        while True:
            page = self.api("GET", "/v1/cdrs?limit=1000" + (f"&cursor={cursor}" if cursor else ""))[1]
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return items

    def balance(self) -> Decimal:
        return Decimal(self.api("GET", f"/v1/accounts/{self.account['id']}")[1]["balance"])

    def wait_cdrs(self, count: int, timeout: float = 20) -> list[dict]:
        return self.api.wait_for(lambda: c if len(c := self.cdrs()) >= count else None,
                                 f"{count} CDRs", timeout=timeout)

    def close(self) -> None:
        for peer in self.peers:
            if peer.poll() is None:
                peer.send_signal(signal.SIGUSR1)  # SIPp: quit
                try:
                    peer.wait(3)
                except subprocess.TimeoutExpired:
                    peer.kill()
                    peer.wait()


def errors(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-2500:] for p in tmp_path.glob("*_errors.log"))


@pytest.fixture
def network(tmp_path):
    daemon = Daemon(tmp_path, env={"SWITCHD_SIP_LISTEN": "udp:0:interface=127.0.0.1",
                                   "SWITCHD_SIP_RELOAD_SECONDS": "1"})
    daemon.start(expect=("api", "sip"))
    net = Network(daemon, Api(daemon), tmp_path)
    yield net
    net.close()
    daemon.stop()


@pytest.mark.slow
def test_2000_calls_at_100_per_second_with_correct_cdrs(network, tmp_path):
    network.topup("1000")
    network.vendor("vendor-a", "127.0.0.3", "uas_answer.xml")
    network.settle()
    result = network.call("uac_call.xml", calls=2000, rate=100, duration_ms=1000, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + errors(tmp_path)
    cdrs = network.wait_cdrs(2000, timeout=60)
    assert len(cdrs) == 2000 and len({c["call_id"] for c in cdrs}) == 2000
    assert {(c["sip_code"], c["hangup_side"]) for c in cdrs} == {(200, "caller")}
    assert all(c["answer_time"] and c["trunk_id"] and c["charge"] != "0.000000" for c in cdrs)
    charged = sum(Decimal(c["charge"]) for c in cdrs)
    assert network.balance() == Decimal("1000") - charged
    assert network.api("GET", "/v1/calls")[1]["items"] == []


@pytest.mark.slow
def test_cancel_before_answer(network, tmp_path):
    network.topup("10")
    network.vendor("vendor-a", "127.0.0.3", "uas_ring.xml")
    network.settle()
    result = network.call("uac_cancel.xml", calls=1, rate=1)
    assert result.returncode == 0, result.stdout[-2000:] + errors(tmp_path)
    [cdr] = network.wait_cdrs(1)
    assert (cdr["sip_code"], cdr["hangup_side"], cdr["answer_time"], cdr["charge"]) == (487, "caller", None, "0.000000")
    assert network.balance() == Decimal("10")


@pytest.mark.slow
def test_failover_from_503_to_the_next_trunk(network, tmp_path):
    network.topup("10")
    network.vendor("vendor-busy", "127.0.0.3", "uas_503.xml", priority=20)
    good = network.vendor("vendor-b", "127.0.0.4", "uas_answer.xml", priority=10)
    network.settle()
    result = network.call("uac_call.xml", calls=3, rate=3)
    assert result.returncode == 0, result.stdout[-2000:] + errors(tmp_path)
    cdrs = network.wait_cdrs(3)
    assert {c["trunk_id"] for c in cdrs} == {good["id"]}
    assert {c["sip_code"] for c in cdrs} == {200}


@pytest.mark.slow
def test_486_is_passed_back_not_failed_over(network, tmp_path):
    network.topup("10")
    network.vendor("vendor-busy", "127.0.0.3", "uas_486.xml", priority=20)
    network.vendor("vendor-b", "127.0.0.4", "uas_answer.xml", priority=10)
    network.settle()
    result = network.call("uac_maybe.xml", calls=2, rate=2)
    assert result.returncode == 0, result.stdout[-2000:] + errors(tmp_path)
    assert {(c["sip_code"], c["hangup_side"]) for c in network.wait_cdrs(2)} == {(486, "callee")}


@pytest.mark.slow
def test_trunk_cps_and_call_limits(network, tmp_path):
    network.topup("100")
    network.vendor("vendor-a", "127.0.0.3", "uas_answer.xml", cps_limit=2, call_limit=3)
    network.settle()
    result = network.call("uac_maybe.xml", calls=20, rate=20, duration_ms=3000)
    assert result.returncode == 0, result.stdout[-2000:] + errors(tmp_path)
    cdrs = network.wait_cdrs(20)
    answered = [c for c in cdrs if c["sip_code"] == 200]
    refused = [c for c in cdrs if c["sip_code"] == 503]
    assert len(answered) + len(refused) == 20
    assert 1 <= len(answered) <= 3 and refused  # at most 3 up at once, and no more than 2 per second
    assert all(c["hangup_side"] == "switch" for c in refused)


@pytest.mark.slow
def test_prepaid_balance_ends_the_call_on_time(network, tmp_path):
    # 0.01 connection fee + 0.60/min in 1 s increments: 0.06 buys 5 seconds.
    network.topup("0.06")
    network.vendor("vendor-a", "127.0.0.3", "uas_answer.xml")
    network.settle()
    started = time.monotonic()
    result = network.call("uac_wait_bye.xml", calls=1, rate=1, timeout=60)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-2000:] + errors(tmp_path)
    [cdr] = network.wait_cdrs(1)
    assert cdr["hangup_side"] == "switch" and cdr["reason"].startswith("max duration")
    assert 4 <= cdr["billable_seconds"] <= 6
    assert 4 <= took <= 8
    assert network.balance() >= Decimal("-0.011")


@pytest.mark.slow
def test_callee_hangs_up(network, tmp_path):
    network.topup("10")
    network.vendor("vendor-a", "127.0.0.3", "uas_hangup.xml", extra=("-d", "1000"))
    network.settle()
    result = network.call("uac_wait_bye.xml", calls=2, rate=2)
    assert result.returncode == 0, result.stdout[-2000:] + errors(tmp_path)
    assert {c["hangup_side"] for c in network.wait_cdrs(2)} == {"callee"}


@pytest.mark.slow
def test_reinvite_for_hold_passes_through(network, tmp_path):
    network.topup("10")
    network.vendor("vendor-a", "127.0.0.3", "uas_reinvite.xml")
    network.settle()
    result = network.call("uac_hold.xml", calls=1, rate=1)
    assert result.returncode == 0, result.stdout[-2000:] + errors(tmp_path)
    [cdr] = network.wait_cdrs(1)
    assert cdr["sip_code"] == 200 and cdr["hangup_side"] == "caller"


@pytest.mark.slow
def test_unknown_caller_is_challenged_and_no_route_is_503(network, tmp_path):
    # A device (not a trunk) must authenticate; without credentials it gets 407.
    port = network.daemon.listeners[("sip", "udp")]
    result = subprocess.run(
        ["sipp", "-sf", str(SCENARIOS / "uac_call.xml"), f"127.0.0.1:{port}", "-s", "4420712345", "-i", "127.0.0.9",
         "-p", "0", "-m", "1", "-nostdin", "-trace_err"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0 and "SIP/2.0 407" in errors(tmp_path)
    # The customer's trunk with money but no vendor in its routing group: 503.
    network.topup("10")
    result = network.call("uac_maybe.xml", calls=1, rate=1)
    assert result.returncode == 0
    [cdr] = network.wait_cdrs(1)
    assert cdr["sip_code"] == 503 and cdr["reason"] == "No Route Available"


@pytest.mark.slow
def test_answered_calls_survive_a_crash_with_exactly_one_cdr(network, tmp_path):
    network.topup("100")
    network.vendor("vendor-a", "127.0.0.3", "uas_answer.xml")
    network.settle()
    port = network.daemon.listeners[("sip", "udp")]
    caller = subprocess.Popen(
        ["sipp", "-sf", str(SCENARIOS / "uac_call.xml"), f"127.0.0.1:{port}", "-s", "4420712345", "-i", CUSTOMER_IP,
         "-p", "0", "-m", "5", "-r", "5", "-d", "60000", "-nostdin"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        calls = network.api.wait_for(
            lambda: c if len(c := network.api("GET", "/v1/calls")[1]["items"]) == 5
            and all(x["state"] == "answered" for x in c) else None,
            "five answered calls",
        )
        ids = {c["id"] for c in calls}
        # Paged in id order: 2 + 2 + 1, each once.
        paged, cursor = [], None
        for _ in range(3):
            status, page = network.api("GET", "/v1/calls?limit=2" + (f"&cursor={cursor}" if cursor else ""))
            assert status == 200
            paged += [c["id"] for c in page["items"]]
            cursor = page["next_cursor"]
        assert paged == sorted(ids) and cursor is None
        assert network.api("GET", "/v1/calls?limit=0")[0] == 422
        network.daemon.stop(signal.SIGKILL)
        network.daemon.start(expect=("api", "sip"))
        cdrs = network.wait_cdrs(5)
        assert {c["call_id"] for c in cdrs} == ids and len(cdrs) == 5
        # Their end is the node's last heartbeat (every 10 s), never before the answer.
        assert {(c["reason"], c["hangup_side"]) for c in cdrs} == {("node restart", "switch")}, cdrs
        assert all(c["answer_time"] and c["end_time"] >= c["answer_time"] for c in cdrs)
        # A second restart must not write them again.
        network.daemon.stop()
        network.daemon.start(expect=("api", "sip"))
        assert len(network.cdrs()) == 5
    finally:
        caller.kill()
        caller.wait()


def register_device(daemon: Daemon, user: str, password: str, host: str, port: int) -> None:
    """Register a device's contact (host:port) with digest, from that very address."""
    import socket

    from switchd.sip.digest import DigestClient, select_challenge
    from switchd.sip.message import parse_datagram

    sip_port = daemon.listeners[("sip", "udp")]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, port))
        sock.settimeout(5)

        def send(cseq: int, authorization: str = "") -> object:
            auth = f"Authorization: {authorization}\r\n" if authorization else ""
            sock.sendto(
                (f"REGISTER sip:127.0.0.1:{sip_port} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:{port};branch=z9hG4bKr{cseq};rport\r\n"
                 f"From: <sip:{user}@switchd.test>;tag=r\r\nTo: <sip:{user}@switchd.test>\r\nCall-ID: reg-{user}\r\n"
                 f"CSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{host}:{port}>\r\nExpires: 300\r\n{auth}"
                 "Content-Length: 0\r\n\r\n").encode(),
                ("127.0.0.1", sip_port),
            )
            return parse_datagram(sock.recvfrom(65535)[0])

        challenge = send(1)
        credentials = DigestClient(user, password).authorize(
            select_challenge(challenge.get_all("WWW-Authenticate")), method="REGISTER", uri=f"sip:127.0.0.1:{sip_port}"
        )
        assert send(2, str(credentials)).status == 200


@pytest.mark.slow
def test_incoming_number_rings_the_registered_device_and_redirects_when_unregistered(network, tmp_path):
    api = network.api
    network.topup("10")
    zero = api.post("/v1/tariff-plans", {"name": "Zero cost (Call)", "currency": "EUR"})
    api.post("/v1/rates", {"tariff_plan_id": zero["id"], "prefix": ""})
    incoming = api.post("/v1/services", {"account_id": network.account["id"], "type": "incoming",
                                         "tariff_plan_id": zero["id"], "routing_group_id": network.group["id"]})
    device = api.post("/v1/sip-accounts", {"service_id": network.service["id"], "username": "desk",
                                           "password": "desk-secret-1"})
    api.post("/v1/numbers", {"number": "4420799900", "service_id": incoming["id"], "sip_account_id": device["id"]})
    # A second number whose device never registered: its calls go on to the vendor.
    other = api.post("/v1/sip-accounts", {"service_id": network.service["id"], "username": "away",
                                          "password": "away-secret-1"})
    api.post("/v1/numbers", {"number": "4420799901", "service_id": incoming["id"], "sip_account_id": other["id"],
                             "redirect_unregistered": "4420712345"})
    vendor = network.vendor("vendor-a", "127.0.0.3", "uas_answer.xml")
    device_port = free_port()
    register_device(network.daemon, "desk", "desk-secret-1", "127.0.0.5", device_port)
    network.peers.append(subprocess.Popen(
        ["sipp", "-sf", str(SCENARIOS / "uas_answer.xml"), "-i", "127.0.0.5", "-p", str(device_port), "-nostdin"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ))
    network.settle()
    result = network.call("uac_call.xml", calls=2, rate=2, number="4420799900")
    assert result.returncode == 0, result.stdout[-2000:] + errors(tmp_path)
    delivered = network.wait_cdrs(2)
    assert {(c["direction"], c["service_id"], c["trunk_id"], c["charge"]) for c in delivered} == {
        ("inbound", incoming["id"], None, "0.000000")}
    result = network.call("uac_call.xml", calls=1, rate=1, number="4420799901")
    assert result.returncode == 0, result.stdout[-2000:] + errors(tmp_path)
    redirected = [c for c in network.wait_cdrs(3) if c["callee"] == "4420799901"]
    assert [(c["trunk_id"], c["reason"]) for c in redirected] == [(vendor["id"], "redirected (unregistered); BYE")]


@pytest.mark.slow
def test_customer_call_limit(network, tmp_path):
    network.topup("100")
    status, _ = network.api("PATCH", f"/v1/accounts/{network.account['id']}", {"call_limit": 2})
    assert status == 200
    network.vendor("vendor-a", "127.0.0.3", "uas_answer.xml")
    network.settle()
    result = network.call("uac_maybe.xml", calls=6, rate=20, duration_ms=3000)
    assert result.returncode == 0, result.stdout[-2000:] + errors(tmp_path)
    network.wait_cdrs(2)
    time.sleep(0.5)
    # Only two calls of the account were up at once; the others got 503 and no CDR.
    assert len(network.cdrs()) == 2 and {c["sip_code"] for c in network.cdrs()} == {200}
