"""switchd's SIP edge against independent peers over loopback sockets:
sipsak (OPTIONS), SIPp (REGISTER with digest over UDP, TCP and TLS; a
carrier registrar that challenges switchd; a trunk answering OPTIONS), and
raw sockets for SHA-256 digest, floods and password guessing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from switchd.sip.digest import DigestClient, parse_challenge, select_challenge
from switchd.sip.message import parse_datagram

from ..certs import make_certificate
from ..daemon import Daemon

SCENARIOS = Path(__file__).parent / "scenarios"


def free_port(kind=socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.key = daemon.admin_key

    def __call__(self, method: str, path: str, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.daemon.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def post(self, path: str, body):
        status, answer = self("POST", path, body)
        assert status == 201, answer
        return answer

    def sip_service(self):
        customer = self.post("/v1/customers", {"name": "ACME"})
        account = self.post("/v1/accounts", {"customer_id": customer["id"], "currency": "EUR"})
        plan = self.post("/v1/tariff-plans", {"name": "Zero cost (Call)", "currency": "EUR"})
        return self.post("/v1/services", {"account_id": account["id"], "type": "sip_telephony", "tariff_plan_id": plan["id"]})

    def wait_for(self, predicate, what: str, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture
def tls_files(tmp_path):
    return make_certificate(tmp_path, "127.0.0.1")


@pytest.fixture
def switchd(tmp_path, tls_files):
    key, cert = tls_files
    env = {
        "SWITCHD_SIP_LISTEN": (
            "udp:0:interface=127.0.0.1 tcp:0:interface=127.0.0.1 "
            f"tls:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        ),
        "SWITCHD_SIP_RELOAD_SECONDS": "1",
    }
    daemon = Daemon(tmp_path, env=env)
    yield daemon
    daemon.stop()


def start(daemon: Daemon, **env: str) -> Api:
    daemon.env.update(env)
    daemon.start(expect=("api", "sip"))
    assert {("sip", "udp"), ("sip", "tcp"), ("sip", "tls")} <= set(daemon.listeners)
    return Api(daemon)


def sipp(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sipp", *args, "-nostdin", "-trace_err"], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def sipp_errors(cwd: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in cwd.glob("*_errors.log"))


# -- OPTIONS ------------------------------------------------------------------------


@pytest.mark.slow
def test_sipsak_options_gets_200(switchd):
    start(switchd)
    port = switchd.listeners[("sip", "udp")]
    result = subprocess.run(
        ["sipsak", "-vv", "-s", f"sip:switchd@127.0.0.1:{port}"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SIP/2.0 200 OK" in result.stdout
    assert "Allow: ACK, BYE, CANCEL, INFO, INVITE, OPTIONS, REGISTER, UPDATE" in result.stdout
    assert "rport=" in result.stdout and "received=127.0.0.1" in result.stdout


# -- REGISTER with digest, over each transport ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("transport, flag", [("udp", "u1"), ("tcp", "t1")])
def test_sipp_registers_with_digest(switchd, tmp_path, tls_files, transport, flag):
    # SIPp 3.6 answers MD5 challenges only; SHA-256 is covered below.
    api = start(switchd, SWITCHD_SIP_DIGEST_ALGORITHMS="MD5")
    service = api.sip_service()
    account = api.post("/v1/sip-accounts", {"service_id": service["id"], "username": "alice", "password": "alice-secret"})
    users = tmp_path / "users.csv"
    users.write_text("SEQUENTIAL\nalice;[authentication username=alice password=alice-secret]\n")
    port = switchd.listeners[("sip", transport)]
    result = sipp(
        ["-sf", str(SCENARIOS / "register_digest.xml"), "-inf", str(users), f"127.0.0.1:{port}",
         "-i", "127.0.0.1", "-p", "0", "-t", flag, "-m", "1"],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + sipp_errors(tmp_path)
    status, page = api("GET", f"/v1/registrations?sip_account_id={account['id']}")
    assert status == 200
    [binding] = page["items"]
    assert binding["source_transport"] == transport
    assert f"transport={transport.upper()}" in binding["contact"]
    assert binding["user_agent"] == "SIPp"


def tls_exchange(conn, message: str) -> bytes:
    """Send one request over a TLS stream and read one framed response."""
    conn.sendall(message.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65535)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += conn.recv(65535)
    return head + b"\r\n\r\n" + body


@pytest.mark.slow
def test_register_over_tls_with_an_openssl_client(switchd, tls_files):
    # Debian's SIPp is built without TLS, so the peer here is CPython's ssl
    # module (OpenSSL), verifying switchd's certificate against our test CA.
    import ssl

    api = start(switchd)
    service = api.sip_service()
    api.post("/v1/sip-accounts", {"service_id": service["id"], "username": "dave", "password": "dave-secret"})
    port = switchd.listeners[("sip", "tls")]
    _, cert = tls_files
    context = ssl.create_default_context(cafile=str(cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            assert conn.version() in ("TLSv1.2", "TLSv1.3")
            local = conn.getsockname()[1]

            def request(cseq: int, authorization: str = "") -> str:
                auth = f"Authorization: {authorization}\r\n" if authorization else ""
                return (
                    f"REGISTER sips:127.0.0.1:{port} SIP/2.0\r\n"
                    f"Via: SIP/2.0/TLS 127.0.0.1:{local};branch=z9hG4bKtls{cseq};rport\r\n"
                    "Max-Forwards: 70\r\nFrom: <sips:dave@switchd.test>;tag=d1\r\nTo: <sips:dave@switchd.test>\r\n"
                    f"Call-ID: tls-register\r\nCSeq: {cseq} REGISTER\r\n"
                    f"Contact: <sips:dave@127.0.0.1:{local};transport=tls>\r\nExpires: 300\r\n{auth}"
                    "Content-Length: 0\r\n\r\n"
                )

            challenge = parse_datagram(tls_exchange(conn, request(1)))
            assert challenge.status == 401
            credentials = DigestClient("dave", "dave-secret").authorize(
                select_challenge(challenge.get_all("WWW-Authenticate")), method="REGISTER", uri=f"sips:127.0.0.1:{port}"
            )
            ok = parse_datagram(tls_exchange(conn, request(2, str(credentials))))
            assert ok.status == 200, ok.to_bytes()
    [binding] = api("GET", "/v1/registrations")[1]["items"]
    assert binding["source_transport"] == "tls"


@pytest.mark.slow
def test_sipp_wrong_password_is_refused(switchd, tmp_path):
    api = start(switchd, SWITCHD_SIP_DIGEST_ALGORITHMS="MD5")
    service = api.sip_service()
    api.post("/v1/sip-accounts", {"service_id": service["id"], "username": "alice", "password": "alice-secret"})
    users = tmp_path / "users.csv"
    users.write_text("SEQUENTIAL\nalice;[authentication username=alice password=wrong-pass]\n")
    port = switchd.listeners[("sip", "udp")]
    result = sipp(
        ["-sf", str(SCENARIOS / "register_digest.xml"), "-inf", str(users), f"127.0.0.1:{port}",
         "-i", "127.0.0.1", "-p", "0", "-m", "1"],
        tmp_path,
    )
    assert result.returncode != 0
    assert "SIP/2.0 401" in sipp_errors(tmp_path)
    assert api("GET", "/v1/registrations")[1]["items"] == []


# -- SHA-256 digest and protection, with raw sockets -------------------------------------------


def register(sock: socket.socket, port: int, user: str, cseq: int, authorization: str | None = None) -> bytes:
    local = sock.getsockname()
    lines = [
        f"REGISTER sip:127.0.0.1:{port} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{local[1]};branch=z9hG4bK{os.urandom(6).hex()};rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@switchd.test>;tag=t{cseq}",
        f"To: <sip:{user}@switchd.test>",
        "Call-ID: raw-register@test",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{user}@10.0.0.7:5062>",
        "Expires: 120",
    ]
    if authorization:
        lines.append(f"Authorization: {authorization}")
    sock.sendto(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", port))
    data, _ = sock.recvfrom(65535)
    return data


@pytest.mark.slow
def test_sha256_digest_and_nat_binding(switchd):
    api = start(switchd)
    service = api.sip_service()
    account = api.post("/v1/sip-accounts", {"service_id": service["id"], "username": "bob", "password": "bob-secret-1"})
    port = switchd.listeners[("sip", "udp")]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        challenge = parse_datagram(register(sock, port, "bob", 1))
        assert challenge.status == 401
        offered = challenge.get_all("WWW-Authenticate")
        assert [parse_challenge(v).algorithm for v in offered] == ["SHA-256", "MD5"]  # RFC 8760 order
        chosen = select_challenge(offered)
        credentials = DigestClient("bob", "bob-secret-1").authorize(
            chosen, method="REGISTER", uri=f"sip:127.0.0.1:{port}"
        )
        assert credentials.algorithm == "SHA-256"
        ok = parse_datagram(register(sock, port, "bob", 2, str(credentials)))
        assert ok.status == 200, ok.to_bytes()
        assert "expires=120" in ok.get("Contact")
        # Replaying the same nonce-count is refused.
        replay = parse_datagram(register(sock, port, "bob", 3, str(credentials)))
        assert replay.status == 401
    [binding] = api("GET", f"/v1/registrations?sip_account_id={account['id']}")[1]["items"]
    # The Contact (10.0.0.7:5062) is not where the packets came from: behind NAT.
    assert binding["behind_nat"] is True and binding["source_host"] == "127.0.0.1"


def metric(daemon: Daemon, name: str) -> float:
    with urllib.request.urlopen(daemon.url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{") and line.split(" ")[0] == name:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.slow
def test_flood_and_password_guessing_are_banned(switchd):
    api = start(
        switchd,
        SWITCHD_SIP_TRUSTED="",
        SWITCHD_SIP_FLOOD_RATE="20",
        SWITCHD_SIP_FLOOD_BURST="20",
        SWITCHD_SIP_AUTH_FAILURES="3",
    )
    service = api.sip_service()
    api.post("/v1/sip-accounts", {"service_id": service["id"], "username": "carol", "password": "carol-secret"})
    port = switchd.listeners[("sip", "udp")]
    # Guessing: each wrong answer is challenged again until the address is banned.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.2", 0))
        sock.settimeout(1)
        answers = []
        for cseq in range(1, 8):
            try:
                reply = parse_datagram(register(sock, port, "carol", cseq, 'Digest username="carol", realm="switchd", '
                                                'nonce="x", uri="sip:x", response="0", algorithm=MD5'))
                answers.append(reply.status)
            except socket.timeout:
                answers.append(None)
        assert answers[:3] == [401, 401, 401] and answers[-1] is None
    # Flood: beyond the burst, nothing comes back from the banned source.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.3", 0))
        sock.settimeout(0.5)
        local = sock.getsockname()[1]
        replies = 0
        for i in range(60):
            sock.sendto(
                (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.3:{local};branch=z9hG4bKf{i}\r\n"
                 f"From: <sip:f@x>;tag=f\r\nTo: <sip:s@x>\r\nCall-ID: flood{i}\r\nCSeq: 1 OPTIONS\r\n"
                 "Content-Length: 0\r\n\r\n").encode(),
                ("127.0.0.1", port),
            )
        try:
            while True:
                sock.recvfrom(65535)
                replies += 1
        except socket.timeout:
            pass
        assert 15 <= replies <= 25
    text = urllib.request.urlopen(switchd.url + "/metrics", timeout=10).read().decode()
    assert 'switchd_sip_events_total{name="bans",reason="flood"} 1.0' in text
    assert 'switchd_sip_events_total{name="bans",reason="auth-failures"} 1.0' in text
    # Other sources still get answers.
    result = subprocess.run(["sipsak", "-s", f"sip:switchd@127.0.0.1:{port}"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0


# -- trunks ----------------------------------------------------------------------------------


def trunk(api: Api, service, port: int, **connection):
    trunk = api.post("/v1/trunks", {"name": "carrier", "host": "127.0.0.1", "port": port})
    api.post("/v1/connections/sip", {"service_id": service["id"], "trunk_id": trunk["id"], **connection})
    return trunk


@pytest.mark.slow
def test_switchd_registers_to_a_challenging_trunk(switchd, tmp_path):
    api = start(switchd)
    service = api.sip_service()
    sipp_port = free_port()
    peer = subprocess.Popen(
        ["sipp", "-sf", str(SCENARIOS / "trunk_registrar.xml"), "-i", "127.0.0.1", "-p", str(sipp_port),
         "-m", "1", "-nostdin", "-trace_err", "-trace_msg"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(0.3)
        t = trunk(api, service, sipp_port, auth_type="registration", auth_user="trunkuser", auth_password="trunkpass")

        def registered():
            status = api("GET", f"/v1/trunks/{t['id']}/status")[1]
            states = [r["state"] for r in status["registrations"].values()]
            return status if states == ["registered"] else None

        status = api.wait_for(registered, "switchd to register to the trunk")
        [registration] = status["registrations"].values()
        assert registration["detail"].startswith("200")
        assert 100 < registration["expires_at"] - time.time() <= 120  # the trunk granted 120 s
        assert peer.wait(timeout=10) == 0  # SIPp verified the digest answer (verifyauth)
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
    messages = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("*_messages.log"))
    assert 'Authorization: Digest username="trunkuser", realm="carrier.test"' in messages
    text = urllib.request.urlopen(switchd.url + "/metrics", timeout=10).read().decode()
    assert 'switchd_sip_trunk_registered{connection="1",trunk="carrier"} 1.0' in text


@pytest.mark.slow
def test_qualify_marks_a_trunk_up_then_down(switchd, tmp_path):
    api = start(switchd, SWITCHD_SIP_QUALIFY_MISSES="2", SWITCHD_SIP_QUALIFY_TIMEOUT_MS="300")
    service = api.sip_service()
    sipp_port = free_port()
    peer = subprocess.Popen(
        ["sipp", "-sf", str(SCENARIOS / "options_responder.xml"), "-i", "127.0.0.1", "-p", str(sipp_port),
         "-nostdin"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        t = trunk(api, service, sipp_port, auth_type="ip", qualify_ms=500, logging=True)
        up = api.wait_for(
            lambda: (s := api("GET", f"/v1/trunks/{t['id']}/status")[1])["qualify"] and s["qualify"]["up"] and s,
            "the trunk to be up",
        )
        assert up["qualify"]["rtt_ms"] is not None
    finally:
        peer.kill()
        peer.wait()
    down = api.wait_for(
        lambda: (s := api("GET", f"/v1/trunks/{t['id']}/status")[1])["qualify"]["up"] is False and s,
        "the trunk to be down",
    )
    assert down["qualify"]["misses"] >= 2
    # "Logging" on the trunk wrote a SIP trace of the OPTIONS exchange.
    trace = (switchd.state_dir / "sip-trace" / "carrier.log").read_text()
    assert "OPTIONS sip:127.0.0.1" in trace and "SIP/2.0 200 OK" in trace


@pytest.mark.slow
def test_ipv6_listeners_answer_with_received_and_rport(tmp_path):
    daemon = Daemon(tmp_path, env={"SWITCHD_SIP_LISTEN": "udp:0:interface=[::1] tcp:0:interface=[::1]"})
    daemon.start(expect=("api", "sip"))
    try:
        port = daemon.listeners[("sip", "udp")]
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
            sock.settimeout(5)
            local = sock.getsockname()[1]
            sock.sendto(
                (f"OPTIONS sip:[::1]:{port} SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bK6;rport\r\n"
                 "From: <sip:v6@[2001:db8::9]>;tag=6\r\nTo: <sip:switchd@[::1]>\r\nCall-ID: v6\r\nCSeq: 1 OPTIONS\r\n"
                 "Content-Length: 0\r\n\r\n").encode(),
                ("::1", port),
            )
            reply = parse_datagram(sock.recvfrom(65535)[0])
        assert reply.status == 200
        assert reply.top_via.received in ("::1", "[::1]") and reply.top_via.rport == local
        with socket.create_connection(("::1", daemon.listeners[("sip", "tcp")]), timeout=5) as conn:
            conn.sendall(b"\r\n\r\n")  # RFC 5626 keep-alive ping over TCP
            assert conn.recv(10) == b"\r\n"
    finally:
        daemon.stop()


@pytest.mark.slow
def test_qualify_over_tcp_reuses_one_connection(switchd, tmp_path):
    api = start(switchd, SWITCHD_SIP_QUALIFY_TIMEOUT_MS="500")
    service = api.sip_service()
    sipp_port = free_port(socket.SOCK_STREAM)
    peer = subprocess.Popen(
        ["sipp", "-sf", str(SCENARIOS / "options_responder.xml"), "-i", "127.0.0.1", "-p", str(sipp_port),
         "-t", "t1", "-nostdin", "-trace_msg"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        t = api.post("/v1/trunks", {"name": "tcp-carrier", "host": "127.0.0.1", "port": sipp_port, "transport": "tcp"})
        api.post("/v1/connections/sip", {"service_id": service["id"], "trunk_id": t["id"], "auth_type": "ip",
                                         "qualify_ms": 300})
        api.wait_for(lambda: (s := api("GET", f"/v1/trunks/{t['id']}/status")[1])["qualify"] and s["qualify"]["up"],
                     "the TCP trunk to be up")
        time.sleep(1.2)  # several more OPTIONS
        text = urllib.request.urlopen(switchd.url + "/metrics", timeout=10).read().decode()
        assert "switchd_sip_connections 1.0" in text
    finally:
        peer.kill()
        peer.wait()
    log = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("*_messages.log"))
    assert log.count("OPTIONS sip:127.0.0.1") >= 4
