"""switchd's SMPP server against smpplib 2.2.4, an independent ESME, through
the running daemon (real engine, real database, a real upstream link to the
test SMSC of ``tests/smsc.py``): binds, submits, long messages in both
concatenation modes and split by the link, receipts (also kept while no
receiver is bound), MO, query_sm, throttling, malformed streams, TLS and the
unbind at shutdown."""

from __future__ import annotations

import signal
import socket
import ssl
import struct
import time
from pathlib import Path

import pytest
import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.gsm
import smpplib.smpp

from switchd.smpp import pdu as p

from ..certs import make_certificate
from ..daemon import Daemon
from ..smsc import FakeSmsc
from .test_sip_peers import Api

PASSWORD = "s3cret"


class Network:
    """A customer with an API service routed to one SMPP link (the test SMSC)."""

    def __init__(self, daemon: Daemon, smsc: FakeSmsc, **link) -> None:
        self.daemon = daemon
        self.smsc = smsc
        self.api = api = Api(daemon)
        customer = api.post("/v1/customers", {"name": "ACME"})
        self.account = api.post("/v1/accounts", {"customer_id": customer["id"], "currency": "EUR"})
        api.post(f"/v1/accounts/{self.account['id']}/transactions", {"kind": "topup", "amount": "100"})
        self.plan = api.post("/v1/tariff-plans", {"name": "sms", "currency": "EUR"})
        api.post("/v1/rates", {"tariff_plan_id": self.plan["id"], "prefix": "44", "price_per_message": "0.05"})
        group = api.post("/v1/routing-groups", {"name": "sms"})
        self.link = api.post("/v1/smpp-links", {"name": "up", "host": "127.0.0.1", "port": smsc.port,
                                                "system_id": "switchd", "password": "pw", **link})
        api.post("/v1/routing-group-members", {"routing_group_id": group["id"], "smpp_link_id": self.link["id"]})
        self.service = api.post("/v1/services", {"account_id": self.account["id"], "type": "api",
                                                 "tariff_plan_id": self.plan["id"], "routing_group_id": group["id"]})
        self.connection = self.smpp_connection("acme")
        smsc.wait(lambda: smsc.bound, "the upstream link to bind")

    def smpp_connection(self, login: str, **settings) -> dict:
        return self.api.post("/v1/connections/smpp", {"service_id": self.service["id"], "login": login,
                                                      "password": PASSWORD, **settings})

    def esme(self, bind: str = "transceiver", login: str = "acme", **kw) -> Esme:
        return Esme(self.daemon.smpp_port, bind, login, **kw)

    def balance(self) -> str:
        return self.api("GET", f"/v1/accounts/{self.account['id']}")[1]["balance"]


class Esme:
    """smpplib's client, with what it received collected."""

    def __init__(self, port: int, bind: str, login: str, password: str = PASSWORD, ssl_context=None,
                 **bind_args) -> None:
        self.client = smpplib.client.Client("127.0.0.1", port, timeout=5, ssl_context=ssl_context,
                                            allow_unknown_opt_params=True)
        self.sent: list = []  # submit_sm_resp
        self.received: list = []  # deliver_sm
        self.queries: list = []
        self.client.set_message_sent_handler(lambda pdu, **_: self.sent.append(pdu))
        self.client.set_message_received_handler(lambda pdu, **_: self.received.append(pdu))
        self.client.set_query_resp_handler(lambda pdu, **_: self.queries.append(pdu))
        self.client.set_error_pdu_handler(lambda pdu: None)  # error answers reach the handlers above too
        self.client.connect()
        getattr(self.client, f"bind_{bind}")(system_id=login, password=password, **bind_args)

    def submit(self, text: bytes = b"hello", to: str = "447700900001", **kw) -> None:
        kw.setdefault("source_addr", "ACME")
        kw.setdefault("source_addr_ton", smpplib.consts.SMPP_TON_ALNUM)
        self.client.send_message(destination_addr=to, dest_addr_ton=1, dest_addr_npi=1, short_message=text, **kw)

    def read_until(self, predicate, what: str, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            try:
                self.client.read_once(auto_send_enquire_link=False)
            except TimeoutError:
                pass
        raise AssertionError(f"timed out waiting for {what}")

    def close(self) -> None:
        try:
            self.client.unbind()
        except (smpplib.exceptions.ConnectionError, smpplib.exceptions.PDUError, OSError):
            pass
        self.client.disconnect()


@pytest.fixture
def smsc():
    smsc = FakeSmsc()
    yield smsc
    smsc.close()


def start(tmp_path: Path, env: dict | None = None) -> Daemon:
    return Daemon(tmp_path, env={"SWITCHD_SIP_LISTEN": "", "SWITCHD_SMPP_RELOAD_SECONDS": "1", **(env or {})}).start(
        expect=("api", "smpp"))


@pytest.fixture
def network(tmp_path, smsc):
    daemon = start(tmp_path)
    net = Network(daemon, smsc, split_mode="ultra_long")
    yield net
    daemon.stop()
    assert "Traceback" not in daemon.log.read_text()


def test_bind_types_and_refusals(network):
    for bind in ("transmitter", "receiver", "transceiver"):
        network.esme(bind).close()
    with pytest.raises(smpplib.exceptions.PDUError) as caught:
        network.esme(password="wrong")
    assert caught.value.args[1] == p.ESME_RINVPASWD
    with pytest.raises(smpplib.exceptions.PDUError) as caught:
        network.esme(login="nobody")
    assert caught.value.args[1] == p.ESME_RINVSYSID
    network.smpp_connection("legacy", system_type="VMA")
    with pytest.raises(smpplib.exceptions.PDUError) as caught:
        network.esme(login="legacy", system_type="OTHER")
    assert caught.value.args[1] == p.ESME_RINVSYSTYP
    network.esme(login="legacy", system_type="VMA").close()


def test_submit_then_receipt_with_our_message_id(network):
    esme = network.esme()
    esme.submit(b"hello", registered_delivery=1)
    esme.read_until(lambda: esme.sent and esme.received, "submit_sm_resp and the receipt")
    [resp] = esme.sent
    assert resp.status == 0
    message_id = resp.message_id.decode()
    [receipt] = esme.received
    assert receipt.esm_class & 0x3C == p.ESM_TYPE_DELIVERY_RECEIPT
    assert receipt.receipted_message_id.decode() == message_id
    text = p.parse_receipt(receipt.short_message)
    assert text.id == message_id and text.stat == "DELIVRD" and text.message_state == p.DELIVERED
    assert receipt.message_state == p.DELIVERED
    [upstream] = network.smsc.submitted
    assert upstream.pdu.short_message == b"hello" and upstream.pdu.destination_addr == "447700900001"
    assert network.balance() == "99.950000"
    # query_sm sees the final state.
    esme.client.query_message(message_id=message_id, source_addr_ton=5, source_addr_npi=0, source_addr="ACME")
    esme.read_until(lambda: esme.queries, "query_sm_resp")
    assert esme.queries[0].message_state == p.DELIVERED and esme.queries[0].status == 0
    esme.close()


def test_long_messages_udh_and_sar_pass_as_parts_and_the_link_splits_one_long_text(network):
    esme = network.esme()
    text = "Long message " * 30
    parts, coding, esm_class = smpplib.gsm.make_parts(text)
    assert len(parts) > 1 and esm_class == 0x40
    for part in parts:
        esme.submit(part, esm_class=esm_class, data_coding=coding)
    raw, _, _ = smpplib.gsm.make_parts(text, use_udhi=False)
    for number, chunk in enumerate(raw, 1):
        esme.submit(chunk, sar_msg_ref_num=0x1234, sar_total_segments=len(raw), sar_segment_seqnum=number)
    count = len(parts) + len(raw)
    esme.read_until(lambda: len(esme.sent) == count, "every part answered")
    assert all(r.status == 0 for r in esme.sent)
    network.smsc.wait(lambda: len(network.smsc.submitted) == count, "every part upstream")
    upstream = [s.pdu for s in network.smsc.submitted]
    assert sorted(u.short_message for u in upstream[: len(parts)]) == sorted(parts)  # UDH kept
    sar = upstream[len(parts):]
    assert [u.tlvs["sar_segment_seqnum"] for u in sar] == list(range(1, len(raw) + 1))
    assert {u.tlvs["sar_msg_ref_num"] for u in sar} == {0x1234}
    # One long text in message_payload: the link (ultra_long) splits it with a UDH.
    esme.client.send_message(source_addr="ACME", destination_addr="447700900001", short_message=b"",
                             message_payload=text.encode())
    esme.read_until(lambda: len(esme.sent) == count + 1, "the long submit answered")
    assert esme.sent[-1].status == 0
    network.smsc.wait(lambda: len(network.smsc.submitted) > count + 1, "the split parts upstream")
    time.sleep(0.5)
    split = [s.pdu for s in network.smsc.submitted[count:]]
    assert len(split) == 3 and all(pdu.esm_class & 0x40 for pdu in split)
    assert b"".join(pdu.short_message[6:] for pdu in split) == text.encode()
    esme.close()


def test_reception_speed_throttles_and_loses_nothing(network):
    network.smpp_connection("slow", reception_speed=5)
    esme = network.esme(login="slow")
    for _ in range(20):
        esme.submit(b"x")
    esme.read_until(lambda: len(esme.sent) == 20, "20 answers")
    statuses = [r.status for r in esme.sent]
    accepted = statuses.count(0)
    assert statuses.count(p.ESME_RTHROTTLED) == 20 - accepted and 5 <= accepted < 10
    network.smsc.wait(lambda: len(network.smsc.submitted) == accepted, "every accepted message upstream")
    time.sleep(0.5)
    assert len(network.smsc.submitted) == accepted  # throttled ones were never stored
    esme.close()


def test_receipts_wait_for_a_receiver_and_mo_reaches_it(network):
    transmitter = network.esme("transmitter")
    transmitter.submit(b"receipt later", registered_delivery=1)
    transmitter.read_until(lambda: transmitter.sent, "submit_sm_resp")
    message_id = transmitter.sent[0].message_id
    network.smsc.wait(lambda: network.smsc.submitted, "the message upstream")
    time.sleep(1)  # the receipt came back while no receiver was bound
    transmitter.close()
    incoming = network.api.post("/v1/services", {"account_id": network.account["id"], "type": "incoming",
                                                 "tariff_plan_id": network.plan["id"]})
    network.api.post("/v1/numbers", {"number": "447700900999", "service_id": incoming["id"]})
    receiver = network.esme("receiver")
    receiver.read_until(lambda: receiver.received, "the stored receipt")
    assert receiver.received[0].receipted_message_id == message_id
    network.smsc.send_mo("447700900123", "447700900999", b"Hi there")
    receiver.read_until(lambda: len(receiver.received) == 2, "the MO")
    mo = receiver.received[1]
    assert mo.short_message == b"Hi there" and mo.source_addr == b"447700900123"
    assert mo.destination_addr == b"447700900999" and mo.esm_class & 0x3C == 0
    network.smsc.wait(lambda: any(a.status == 0 for a in network.smsc.answered), "the MO acknowledged upstream")
    receiver.close()


def raw_session(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def read_pdus(sock: socket.socket, count: int) -> list[p.Pdu]:
    reader, out = p.PduReader(), []
    while len(out) < count:
        data = sock.recv(4096)
        if not data:
            break
        out += reader.feed(data)
    return out


def test_malformed_streams_leave_the_server_up(network):
    sock = raw_session(network.daemon.smpp_port)
    sock.sendall(struct.pack(">IIII", 16, 0x00000099, 0, 7))  # unknown command id
    sock.sendall(p.SubmitSm(sequence=8, destination_addr="1").encode())  # before bind
    short = p.BindTransmitter(sequence=9, system_id="acme", password=PASSWORD).encode()[:-2]
    sock.sendall(struct.pack(">I", len(short)) + short[4:])  # a body that ends inside its fields
    nack, submit, bind = read_pdus(sock, 3)
    assert nack == p.GenericNack(sequence=7, status=p.ESME_RINVCMDID)
    assert (submit.command_id, submit.status, submit.sequence) == (p.SUBMIT_SM_RESP, p.ESME_RINVBNDSTS, 8)
    assert bind == p.BindTransmitterResp(sequence=9, status=p.ESME_RINVCMDLEN)
    sock.sendall(struct.pack(">I", 0xFFFFFFF0) + bytes(12))  # framing lost
    [fatal] = read_pdus(sock, 1)
    assert fatal.command_id == p.GENERIC_NACK and fatal.status == p.ESME_RINVCMDLEN
    assert sock.recv(100) == b""  # closed
    sock.close()
    network.esme().close()  # still serving


def test_smpp_over_tls(tmp_path, smsc):
    key, cert = make_certificate(tmp_path, "127.0.0.1")
    daemon = start(tmp_path, {"SWITCHD_SMPP_LISTEN": f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"})
    try:
        network = Network(daemon, smsc)
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False  # smpplib wraps without a server name; the chain is still verified
        esme = network.esme(ssl_context=context)
        esme.submit(b"over TLS")
        esme.read_until(lambda: esme.sent, "submit_sm_resp")
        assert esme.sent[0].status == 0
        esme.close()
    finally:
        daemon.stop()


def test_shutdown_unbinds_bound_esmes(tmp_path, smsc):
    daemon = start(tmp_path)
    network = Network(daemon, smsc)
    esme = network.esme()
    daemon.proc.send_signal(signal.SIGTERM)
    unbind = esme.client.read_pdu()
    assert unbind.command == "unbind"
    answer = smpplib.smpp.make_pdu("unbind_resp", client=esme.client)
    answer.sequence = unbind.sequence
    esme.client._socket.sendall(answer.generate())
    started = time.monotonic()
    daemon.proc.wait(15)
    assert time.monotonic() - started < 8  # it did not wait for the response timeout
    log = daemon.log.read_text()
    assert "unbinding SMPP acme" in log and "Traceback" not in log
    esme.client.disconnect()
