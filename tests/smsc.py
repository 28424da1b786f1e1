"""A small SMSC for tests: switchd's upstream links bind to it over loopback.

Blocking sockets in threads (no reactor): it answers binds, enquire_link and
unbind, acknowledges submit_sm and data_sm with its own ids (hex), sends a
delivery receipt for each when ``receipts`` is on, and can send MO.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from switchd.smpp import pdu as p


@dataclass
class Submitted:
    pdu: p.Pdu
    smsc_id: str


class FakeSmsc:
    def __init__(self, *, receipts: bool = True, receipt_state: str = "DELIVRD") -> None:
        self.receipts = receipts
        self.receipt_state = receipt_state
        self.submitted: list[Submitted] = []
        self.answered: list[p.Pdu] = []  # deliver_sm_resp from switchd
        self.binds: list[p.Pdu] = []
        self._lock = threading.Lock()
        self._sessions: list[_Session] = []
        self._next_id = 0x1000
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            session = _Session(self, conn)
            with self._lock:
                self._sessions.append(session)
            threading.Thread(target=session.run, daemon=True).start()

    def new_id(self) -> str:
        with self._lock:
            self._next_id += 1
            return f"{self._next_id:X}"

    @property
    def bound(self) -> bool:
        with self._lock:
            return any(s.bound and not s.closed for s in self._sessions)

    def send_mo(self, source: str, destination: str, text: bytes, data_coding: int = 0) -> None:
        """An MO message from a handset, through the first bound session."""
        with self._lock:
            session = next(s for s in self._sessions if s.bound and not s.closed)
        session.send(p.DeliverSm(source_addr=source, source_addr_ton=1, source_addr_npi=1,
                                 destination_addr=destination, data_coding=data_coding, short_message=text))

    def wait(self, predicate, what: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def close(self) -> None:
        self._stopped = True
        self._listener.close()
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.close()


class _Session:
    def __init__(self, smsc: FakeSmsc, conn: socket.socket) -> None:
        self.smsc = smsc
        self.conn = conn
        self.reader = p.PduReader()
        self.bound = False
        self.closed = False
        self.sequence = 0
        self._write = threading.Lock()

    def send(self, message: p.Pdu) -> None:
        with self._write:
            if not message.is_response:
                self.sequence += 1
                message.sequence = self.sequence
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
                if isinstance(item, p.PduError):
                    continue
                self.handle(item)
        self.closed = True

    def handle(self, message: p.Pdu) -> None:
        smsc = self.smsc
        if isinstance(message, (p.BindTransceiver, p.BindTransmitter, p.BindReceiver)):
            smsc.binds.append(message)
            self.bound = True
            self.send(p.response_for(message, system_id="fakesmsc"))
        elif isinstance(message, p.EnquireLink):
            self.send(p.EnquireLinkResp(sequence=message.sequence))
        elif isinstance(message, p.Unbind):
            self.send(p.UnbindResp(sequence=message.sequence))
            self.close()
        elif isinstance(message, (p.SubmitSm, p.DataSm)):
            smsc_id = smsc.new_id()
            with smsc._lock:
                smsc.submitted.append(Submitted(message, smsc_id))
            self.send(p.response_for(message, message_id=smsc_id))
            if smsc.receipts and message.registered_delivery & 0x03:
                self.receipt(message, smsc_id)
        elif isinstance(message, p.DeliverSmResp):
            with smsc._lock:
                smsc.answered.append(message)
        elif not message.is_response:
            self.send(p.response_for(message, p.ESME_RINVCMDID))

    def receipt(self, message: p.Pdu, smsc_id: str) -> None:
        now = datetime.now(UTC)
        text = p.format_receipt(smsc_id, 1, 1, now, now, self.smsc.receipt_state, 0, "")
        self.send(p.DeliverSm(
            source_addr=message.destination_addr, destination_addr=message.source_addr,
            esm_class=p.ESM_TYPE_DELIVERY_RECEIPT, short_message=text.encode(),
            tlvs={"receipted_message_id": smsc_id,
                  "message_state": p.DELIVERED if self.smsc.receipt_state == "DELIVRD" else p.UNDELIVERABLE},
        ))
