"""Kannel (Debian ``kannel`` 1.4: bearerbox and smsbox) as a real-world ESME
binding to switchd's SMPP server.

bearerbox binds as a transceiver with an SMPP connection's login and
password (an SMPP ``smsc`` group pointing at switchd's port); messages are
sent through smsbox's sendsms HTTP interface, switchd stores them, routes
them to its upstream link (the test SMSC of ``tests/smsc.py``), and the
SMSC's receipts come back through switchd to Kannel as ``deliver_sm``,
which Kannel matches to its message (our message id, a UUID, in
``submit_sm_resp``) and reports to the ``dlr-url``. An MO from the SMSC to
a number of the customer reaches Kannel and its ``sms-service``. Every
port is a free one, every file is in ``tmp_path``, Kannel is killed at the
end.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from switchd.smpp import pdu as p

from ..smsc import FakeSmsc
from .test_smpp_server import PASSWORD, Network, start

pytestmark = pytest.mark.slow

BEARERBOX = shutil.which("bearerbox") or "/usr/sbin/bearerbox"
SMSBOX = shutil.which("smsbox") or "/usr/sbin/smsbox"
NUMBER = "447700900999"  # the customer's number, for MO


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hooks:
    """An HTTP server for Kannel's dlr-url and the sms-service's get-url: what it heard, by path."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        lock = self.lock = threading.Lock()
        calls = self.calls

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                with lock:
                    calls.append((url.path, dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))))
                body = b"" if url.path == "/dlr" else b"thanks"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [query for where, query in self.calls if where == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Kannel:
    """bearerbox and smsbox with one configuration file in ``directory``."""

    def __init__(self, directory: Path, smpp_port: int, hooks: Hooks) -> None:
        self.dir = directory
        self.admin_port = free_port()
        self.box_port = free_port()
        self.sendsms_port = free_port()
        self.hooks = hooks
        self.config = directory / "kannel.conf"
        self.config.write_text(self.configuration(smpp_port))
        self.processes: list[subprocess.Popen] = []

    def configuration(self, smpp_port: int) -> str:
        d = self.dir
        return f"""
group = core
admin-port = {self.admin_port}
admin-password = adminpw
admin-allow-ip = "127.0.0.1"
smsbox-port = {self.box_port}
box-allow-ip = "127.0.0.1"
log-file = "{d / 'bearerbox.log'}"
log-level = 0
access-log = "{d / 'access.log'}"
dlr-storage = internal

group = smsc
smsc = smpp
smsc-id = switchd
host = 127.0.0.1
port = {smpp_port}
transceiver-mode = true
smsc-username = acme
smsc-password = {PASSWORD}
system-type = ""
enquire-link-interval = 30
reconnect-delay = 1
wait-ack = 30

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {self.box_port}
sendsms-port = {self.sendsms_port}
log-file = "{d / 'smsbox.log'}"
log-level = 0

group = sendsms-user
username = tester
password = testpw
max-messages = 5
concatenation = true

group = sms-service
keyword = default
get-url = "http://127.0.0.1:{self.hooks.port}/mo?from=%p&to=%P&text=%a&smsc=%i"
max-messages = 0
catch-all = true
"""

    def start(self) -> None:
        for binary in (BEARERBOX, SMSBOX):
            self.processes.append(subprocess.Popen(
                [binary, "-v", "0", str(self.config)], cwd=self.dir,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            ))
            time.sleep(0.5)  # smsbox connects to bearerbox; bearerbox first

    def status(self) -> str:
        url = f"http://127.0.0.1:{self.admin_port}/status.txt?password=adminpw"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode(errors="replace")
        except OSError:
            return ""

    def online(self) -> bool:
        return any("switchd" in line and "online" in line for line in self.status().splitlines())

    def sendsms(self, text: str, to: str = "447700900001", **extra: str) -> tuple[int, str]:
        query = urllib.parse.urlencode({"username": "tester", "password": "testpw", "from": "ACME", "to": to,
                                        "text": text, "smsc": "switchd", **extra})
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.sendsms_port}/cgi-bin/sendsms?{query}",
                                        timeout=10) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def logs(self) -> str:
        return "\n".join(f.read_text(errors="replace")[-4000:] for f in sorted(self.dir.glob("*box.log")))

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def wait(predicate, what: str, timeout: float = 30.0, details=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{details()}")


@pytest.fixture
def smsc():
    smsc = FakeSmsc()
    yield smsc
    smsc.close()


@pytest.fixture
def hooks():
    server = Hooks()
    yield server
    server.close()


@pytest.fixture
def kannel(tmp_path, smsc, hooks):
    if not Path(BEARERBOX).exists():
        pytest.fail("Kannel is not installed (Debian package kannel: apt-get install kannel)")
    (tmp_path / "switchd").mkdir()
    daemon = start(tmp_path / "switchd")
    network = Network(daemon, smsc)  # the connection "acme" Kannel binds with
    incoming = network.api.post("/v1/services", {"account_id": network.account["id"], "type": "incoming",
                                                 "tariff_plan_id": network.plan["id"]})
    network.api.post("/v1/numbers", {"number": NUMBER, "service_id": incoming["id"]})
    directory = tmp_path / "kannel"
    directory.mkdir()
    kannel = Kannel(directory, daemon.smpp_port, hooks)
    kannel.start()
    kannel.network = network
    try:
        yield kannel
    finally:
        kannel.stop()
        daemon.stop()
    assert "Traceback" not in daemon.log.read_text()


def dlrs(hooks: Hooks, message: str) -> list[dict[str, str]]:
    return [query for query in hooks.of("/dlr") if query.get("ref") == message]


def test_kannel_binds_sends_and_gets_its_delivery_receipt(kannel, smsc, hooks):
    wait(kannel.online, "bearerbox bound to switchd", details=kannel.logs)
    dlr_url = f"http://127.0.0.1:{hooks.port}/dlr?ref=one&type=%d&id=%F&answer=%A"
    status, body = kannel.sendsms("Hello from Kannel", **{"dlr-mask": "31", "dlr-url": dlr_url})
    assert status == 202, body
    # switchd accepted it (submit_sm_resp with its id) and sent it upstream.
    smsc.wait(lambda: smsc.submitted, "the message at the upstream SMSC")
    [upstream] = smsc.submitted
    assert upstream.pdu.short_message == b"Hello from Kannel"
    assert (upstream.pdu.source_addr, upstream.pdu.destination_addr) == ("ACME", "447700900001")
    assert upstream.pdu.registered_delivery & 0x03 == 1  # Kannel asked for receipts: so does switchd
    # Kannel got switchd's answer (SMSC success, 8) and then the receipt (delivered, 1).
    reports = wait(lambda: {q["type"] for q in dlrs(hooks, "one")} >= {"1", "8"} and dlrs(hooks, "one"),
                   "the delivery reports at the dlr-url", details=kannel.logs)
    delivered = [q for q in reports if q["type"] == "1"]
    assert len(delivered) == 1
    message_id = delivered[0]["id"]
    assert len(message_id) == 36 and message_id.count("-") == 4  # switchd's message id, as Kannel kept it
    assert f"id:{message_id}" in delivered[0]["answer"] and "stat:DELIVRD" in delivered[0]["answer"]
    assert kannel.network.balance() == "99.950000"  # one part charged


def test_kannel_long_message_and_mo(kannel, smsc, hooks):
    wait(kannel.online, "bearerbox bound to switchd", details=kannel.logs)
    text = "".join(f"part of a long message {n:02d}; " for n in range(12))  # about 330 characters
    dlr_url = f"http://127.0.0.1:{hooks.port}/dlr?ref=long&type=%d&id=%F"
    status, body = kannel.sendsms(text, **{"dlr-mask": "3", "dlr-url": dlr_url})
    assert status == 202, body
    # Kannel split it (UDH); each part passed through switchd as a part of its own.
    smsc.wait(lambda: len(smsc.submitted) >= 3, "the parts upstream")
    time.sleep(0.5)
    parts = [s.pdu for s in smsc.submitted]
    assert len(parts) == 3 and all(part.esm_class & p.ESM_UDHI for part in parts)
    assert b"".join(part.short_message[6:] for part in parts) == text.encode()
    wait(lambda: any(q["type"] == "1" for q in dlrs(hooks, "long")), "the long message's delivery report",
         details=kannel.logs)
    # An MO from a handset to the customer's number reaches Kannel's sms-service.
    smsc.send_mo("447700900123", NUMBER, b"Hi Kannel")
    [mo] = wait(lambda: hooks.of("/mo"), "the MO at Kannel's sms-service", details=kannel.logs)
    assert mo["text"] == "Hi Kannel" and mo["from"].endswith("447700900123") and mo["to"].endswith(NUMBER)
    assert mo["smsc"] == "switchd"
    smsc.wait(lambda: any(a.status == 0 for a in smsc.answered), "the MO acknowledged upstream")
