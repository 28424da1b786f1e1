"""Crash durability of the SMS path through the running daemon.

An ESME (smpplib) has N messages accepted (every ``submit_sm_resp`` OK,
each with a receipt asked for); while switchd sends them upstream and the
SMSC's receipts come back, the daemon is killed with SIGKILL, then started
again on the same state directory (SQLite) or database (PostgreSQL). What
``docs/sms.rst`` promises is checked:

* every accepted message reaches the SMSC, and only a part that was in
  flight when switchd died (sent and not answered, or answered and its
  SMSC id not yet committed) may reach it twice: the duplicates are at most
  the link's window plus the answers of one group commit, and every one of
  them is a message the SMSC had not yet receipted before the kill;
* every accepted message ends DELIVERED, and the customer gets exactly one
  receipt per message id (at least once on the wire: a ``deliver_sm_resp``
  lost in the kill may bring one again).

The SMSC here is a store-and-forward one, as real SMSCs are: a receipt
stays with it until switchd answers ``deliver_sm_resp`` OK, and is sent
again on the next bind otherwise.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import smpplib.client
import smpplib.exceptions
from sqlalchemy import create_engine, func, select

from switchd.smpp import pdu as p
from switchd.store import models as m

from ..daemon import Daemon
from .test_smpp_server import Network

pytestmark = pytest.mark.slow

N = 600
WINDOW = 16
#: Upstream sending rate (per second): the kill lands mid-stream.
RATE = 150


@dataclass
class _Receipt:
    smsc_id: str
    source: str
    destination: str
    due: float
    session: _Session | None = None
    sequence: int = 0
    sent_at: float = 0.0


class StoreAndForwardSmsc:
    """Binds anyone, answers submits with hex ids, sends a receipt ``receipt_delay``
    seconds later and keeps it until it is acknowledged (sent again after a
    session is lost, a refusal, or 5 s without an answer)."""

    def __init__(self, receipt_delay: float = 0.3) -> None:
        self.receipt_delay = receipt_delay
        self.lock = threading.Lock()
        self.texts: Counter[bytes] = Counter()
        self.submits: list[tuple[float, bytes, str]] = []  # (time, text, smsc id)
        self.acknowledged: dict[str, float] = {}  # smsc id -> when switchd answered OK
        self.pending: dict[str, _Receipt] = {}
        self.sessions: list[_Session] = []
        self._next_id = 0xA000
        self._stopped = False
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._send_receipts, daemon=True).start()

    @property
    def bound(self) -> bool:
        with self.lock:
            return any(s.bound and not s.closed for s in self.sessions)

    def wait(self, predicate, what: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            session = _Session(self, conn)
            with self.lock:
                self.sessions.append(session)
            threading.Thread(target=session.run, daemon=True).start()

    def submitted(self, message: p.Pdu, session: _Session) -> str:
        text = message.short_message or message.tlvs.get("message_payload", b"")
        with self.lock:
            self._next_id += 1
            smsc_id = f"{self._next_id:X}"
            self.texts[text] += 1
            self.submits.append((time.monotonic(), text, smsc_id))
            if message.registered_delivery & 0x03:
                self.pending[smsc_id] = _Receipt(smsc_id, message.destination_addr, message.source_addr,
                                                 time.monotonic() + self.receipt_delay)
        return smsc_id

    def answered(self, session: _Session, message: p.Pdu) -> None:
        with self.lock:
            for receipt in self.pending.values():
                if receipt.session is session and receipt.sequence == message.sequence:
                    if message.status == p.ESME_ROK:
                        del self.pending[receipt.smsc_id]
                        self.acknowledged[receipt.smsc_id] = time.monotonic()
                    else:
                        receipt.session, receipt.due = None, time.monotonic() + 1.0
                    return

    def _send_receipts(self) -> None:
        while not self._stopped:
            time.sleep(0.02)
            now = time.monotonic()
            with self.lock:
                live = [s for s in self.sessions if s.bound and not s.closed]
                if not live:
                    continue
                due = []
                for receipt in self.pending.values():
                    gone = receipt.session is not None and (receipt.session.closed or now - receipt.sent_at > 5)
                    if receipt.session is None and receipt.due <= now or gone:
                        due.append(receipt)
                for receipt in due:
                    receipt.session = live[0]
                    receipt.sequence = live[0].next_sequence()
                    receipt.sent_at = now
            for receipt in due:
                stamp = datetime.now(UTC)
                text = p.format_receipt(receipt.smsc_id, 1, 1, stamp, stamp, "DELIVRD", 0, "")
                receipt.session.send(p.DeliverSm(
                    sequence=receipt.sequence, source_addr=receipt.source, destination_addr=receipt.destination,
                    esm_class=p.ESM_TYPE_DELIVERY_RECEIPT, short_message=text.encode(),
                    tlvs={"receipted_message_id": receipt.smsc_id, "message_state": p.DELIVERED},
                ))

    def close(self) -> None:
        self._stopped = True
        self.listener.close()
        with self.lock:
            sessions = list(self.sessions)
        for session in sessions:
            session.close()


class _Session:
    def __init__(self, smsc: StoreAndForwardSmsc, conn: socket.socket) -> None:
        self.smsc = smsc
        self.conn = conn
        self.reader = p.PduReader()
        self.bound = False
        self.closed = False
        self._sequence = 0
        self._write = threading.Lock()

    def next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    def send(self, message: p.Pdu) -> None:
        with self._write:
            try:
                self.conn.sendall(message.encode())
            except OSError:
                self.closed = True

    def close(self) -> None:
        self.closed = True
        try:
            self.conn.close()
        except OSError:
            pass

    def run(self) -> None:
        while not self.closed:
            try:
                data = self.conn.recv(65536)
            except OSError:
                break
            if not data:
                break
            for item in self.reader.feed(data):
                if not isinstance(item, p.PduError):
                    self.handle(item)
        self.closed = True

    def handle(self, message: p.Pdu) -> None:
        if isinstance(message, (p.BindTransceiver, p.BindTransmitter, p.BindReceiver)):
            self.send(p.response_for(message, system_id="sfsmsc"))
            self.bound = True
        elif isinstance(message, p.EnquireLink):
            self.send(p.EnquireLinkResp(sequence=message.sequence))
        elif isinstance(message, p.Unbind):
            self.send(p.UnbindResp(sequence=message.sequence))
            self.close()
        elif isinstance(message, (p.SubmitSm, p.DataSm)):
            self.send(p.response_for(message, message_id=self.smsc.submitted(message, self)))
        elif isinstance(message, p.DeliverSmResp):
            self.smsc.answered(self, message)
        elif not message.is_response:
            self.send(p.response_for(message, p.ESME_RINVCMDID))


class Customer:
    """An smpplib ESME collecting answers and receipts, surviving the daemon's death."""

    def __init__(self, port: int, bind: str = "transceiver") -> None:
        self.client = smpplib.client.Client("127.0.0.1", port, timeout=2, allow_unknown_opt_params=True)
        self.accepted: list[str] = []
        self.refused: list[int] = []
        self.receipts: list[str] = []
        self.client.set_message_sent_handler(self._answer)
        self.client.set_message_received_handler(lambda pdu, **_: self.receipts.append(
            pdu.receipted_message_id.decode()))
        self.client.set_error_pdu_handler(lambda pdu: None)
        self.client.connect()
        getattr(self.client, f"bind_{bind}")(system_id="acme", password="s3cret")

    def _answer(self, pdu, **_) -> None:
        if pdu.status == p.ESME_ROK:
            self.accepted.append(pdu.message_id.decode())
        else:
            self.refused.append(pdu.status)

    def submit(self, text: str) -> None:
        self.client.send_message(source_addr="ACME", source_addr_ton=5, destination_addr="447700900001",
                                 dest_addr_ton=1, dest_addr_npi=1, short_message=text.encode(),
                                 registered_delivery=1)

    def read_until(self, predicate, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            try:
                self.client.read_once(auto_send_enquire_link=False)
            except TimeoutError:
                pass

    def read_for(self, seconds: float) -> None:
        """Read (receipts) until the time is up or the daemon goes away."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.client.read_once(auto_send_enquire_link=False)
            except TimeoutError:
                pass
            except (smpplib.exceptions.ConnectionError, OSError):
                return


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> tuple[dict[str, str], str]:
    """The daemon's environment for the database, and the database's URL."""
    if request.param == "sqlite":
        return {}, f"sqlite:///{tmp_path / 'state' / 'switchd.sqlite3'}"  # the file in the state directory
    url = request.getfixturevalue("pg_schema_url")
    return {"SWITCHD_DATABASE_URL": url, "SWITCHD_DATABASE_AUTO_MIGRATE": "yes"}, url


@dataclass
class Stored:
    """What the database holds after the test."""

    messages: Counter  # message states
    parts: Counter  # part states
    charges: int  # charges booked
    upstream_ids: dict[bytes, str]  # text -> the SMSC id stored for its part


def stored(url: str) -> Stored:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            messages = Counter(conn.execute(select(m.sms_messages.c.status)).scalars())
            parts = Counter(conn.execute(select(m.sms_parts.c.state)).scalars())
            charges = conn.execute(
                select(func.count()).select_from(m.ledger).where(m.ledger.c.kind == "charge")
            ).scalar_one()
            upstream = conn.execute(
                select(m.sms_messages.c.body, m.sms_parts.c.upstream_message_id)
                .join(m.sms_parts, m.sms_parts.c.sms_message_id == m.sms_messages.c.id)
            ).all()
    finally:
        engine.dispose()
    return Stored(messages, parts, charges, {body.encode(): smsc_id for body, smsc_id in upstream})


def test_sigkill_while_sending_loses_nothing_and_duplicates_only_the_window(tmp_path, database):
    database_env, url = database
    smsc = StoreAndForwardSmsc()
    env = {"SWITCHD_SIP_LISTEN": "", "SWITCHD_SMPP_RELOAD_SECONDS": "1", "SWITCHD_SWITCHD_NODE_ID": "crashy",
           **database_env}
    daemon = Daemon(tmp_path, env=env).start(expect=("api", "smpp"))
    try:
        network = Network(daemon, smsc, window_size=WINDOW, max_sending_rate=RATE)
        status, _ = network.api("PATCH", f"/v1/connections/smpp/{network.connection['id']}",
                                {"reception_speed": 100000})
        assert status == 200
        customer = Customer(daemon.smpp_port)
        for start in range(0, N, 50):
            for n in range(start, start + 50):
                customer.submit(f"durable {n:04d}")
            answered = start + 50
            customer.read_until(lambda: len(customer.accepted) + len(customer.refused) == answered,  # noqa: B023
                                "answers")
        assert customer.refused == [] and len(set(customer.accepted)) == N
        accepted = set(customer.accepted)
        # Kill it mid-stream: some parts answered and stored, some answered and not
        # stored yet, some unanswered, most still queued; receipts coming back.
        smsc.wait(lambda: len(smsc.submits) >= N // 3 and len(smsc.acknowledged) >= 20, "traffic upstream")
        customer.read_for(0.2)
        daemon.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        customer.read_for(0.5)
        before = Counter(text for when, text, _ in smsc.submits if when < killed_at)
        receipted_before = {text for _, text, smsc_id in smsc.submits if smsc_id in smsc.acknowledged}
        assert 0 < len(before) < N

        daemon.start(expect=("api", "smpp"))
        receiver = Customer(daemon.smpp_port, "receiver")
        receiver.read_until(lambda: accepted <= set(customer.receipts) | set(receiver.receipts),
                            "a receipt for every accepted message", timeout=90)
        receiver.read_for(1.0)
        # Upstream: every accepted message, at least once; the duplicates are parts
        # that were in flight at the kill (never ones the SMSC had receipted).
        expected = {f"durable {n:04d}".encode() for n in range(N)}
        assert set(smsc.texts) == expected
        duplicates = {text for text, count in smsc.texts.items() if count > 1}
        assert all(smsc.texts[text] == 2 for text in duplicates)
        assert not duplicates & receipted_before
        assert all(text in before for text in duplicates)
        assert len(duplicates) <= WINDOW + RATE // 2, duplicates  # the window, plus answers of one commit
        # The customer: one receipt per message (a resend of one lost in the kill is allowed).
        receipts = customer.receipts + receiver.receipts
        assert set(receipts) == accepted
        # Stored: every message and part DELIVERED, each part charged once.
        result = smsc.wait(lambda: (s := stored(url)).messages == Counter({"DELIVERED": N}) and s,
                           "every message DELIVERED in the database")
        assert result.parts == Counter({"DELIVERED": N}) and result.charges == N
        # A part whose SMSC id was stored is never sent again: the id kept is the
        # one of its last submission, and a resent part's first id was never stored.
        last_id = {text: smsc_id for _, text, smsc_id in smsc.submits}
        assert result.upstream_ids == last_id
        print(f"\n{len(before)} messages upstream before the kill, {len(duplicates)} sent twice")
        for esme in (customer, receiver):
            esme.client.disconnect()
    finally:
        daemon.stop()
        smsc.close()
    log = daemon.log.read_text()
    assert "Traceback" not in log
