"""The SMPP server: the sans-IO session and the protocol over StringTransport,
with task.Clock for every timer and an in-memory engine; binds checked
against the real database on both backends."""

from __future__ import annotations

import datetime

import pytest
from sqlalchemy import insert, select, update
from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from switchd.api.auth import new_secret_hash
from switchd.core.ratelimit import RateLimiter
from switchd.smpp import pdu as p
from switchd.smpp.server import (
    RECEPTION,
    BindRefused,
    BindRequested,
    Close,
    DeliveryFailed,
    DeliveryResult,
    DeliverySent,
    Request,
    Send,
    ServerSession,
    SmppAccount,
    SmppServerFactory,
    SmppServerService,
    address_type,
    check_bind,
    data_coding_of,
    deliver_sm_for,
    load_accounts,
    submission_for,
)
from switchd.sms.engine import Delivery
from switchd.store import models as m

from .fake_engine import FakeEngine, refused

NOW = datetime.datetime(2026, 11, 21, 12, 0, tzinfo=datetime.UTC)


def decode_all(data: bytes) -> list[p.Pdu]:
    reader = p.PduReader()
    out = reader.feed(data)
    assert reader.buffered == 0
    assert all(isinstance(x, p.Pdu) for x in out), out
    return out


def account(connection_id: int = 7, login: str = "acme", speed: int = 50) -> SmppAccount:
    return SmppAccount(connection_id=connection_id, service_id=3, account_id=2, login=login, system_type="0",
                       reception_speed=speed, password_hash="h" + login)


class FakeDirectory:
    """Logins and passwords in a dict, codings from the engine; the database's queries are tested below."""

    def __init__(self, engine: FakeEngine, **logins: tuple[str, SmppAccount]) -> None:
        self.engine = engine
        self.logins = dict(logins)
        self.reloaded: list[list[int]] = []

    def data_coding_of(self, account_id, message_id):
        return succeed(self.engine.codings.get(message_id))

    def authenticate(self, system_id, password, system_type):
        found = self.logins.get(system_id)
        if found is None:
            return fail(BindRefused(p.ESME_RINVSYSID, "unknown"))
        if found[0] != password:
            return fail(BindRefused(p.ESME_RINVPASWD, "wrong password"))
        return succeed(found[1])

    def reload(self, ids):
        self.reloaded.append(sorted(ids))
        return succeed({a.connection_id: a for _, a in self.logins.values() if a.connection_id in ids})


class World:
    def __init__(self, *, window: int = 16, speed: int = 50) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.engine = FakeEngine()
        self.auth = FakeDirectory(self.engine, acme=("secret", account(speed=speed)), other=("pw", account(8, "other")))
        self.limiter = RateLimiter(self.clock)
        self.factory = SmppServerFactory(self.clock, self.engine, self.auth, self.limiter, inactivity_timeout=60,
                                         response_timeout=10, window=window)

    def connect(self) -> Esme:
        return Esme(self)


class Esme:
    """One ESME connection over a StringTransport."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.proto = world.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.proto.makeConnection(self.transport)
        self.sequence = 0

    def send(self, pdu: p.Pdu) -> None:
        if not pdu.sequence:
            self.sequence += 1
            pdu.sequence = self.sequence
        self.proto.dataReceived(pdu.encode())

    def received(self) -> list[p.Pdu]:
        data = self.transport.value()
        self.transport.clear()
        return decode_all(data)

    def one(self) -> p.Pdu:
        got = self.received()
        assert len(got) == 1, got
        return got[0]

    def bind(self, kind=p.BindTransceiver, login="acme", password="secret") -> p.Pdu:
        self.send(kind(system_id=login, password=password, system_type=""))
        return self.one()

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def lose(self) -> None:
        self.proto.connectionLost(None)


def receipt(id: int = 1, text: bytes = b"id:m0001 sub:001 dlvrd:001 stat:DELIVRD err:000 text:") -> Delivery:
    return Delivery(id=id, kind="receipt", source="447700900001", destination="ACME", content=text,
                    data_coding=0, esm_class=p.ESM_TYPE_DELIVERY_RECEIPT,
                    tlvs={"receipted_message_id": "m0001", "message_state": p.DELIVERED})


# -- sans-IO session ----------------------------------------------------------------


def test_session_asks_to_authenticate_a_bind_and_refuses_a_second_one():
    session = ServerSession()
    bind = p.BindTransceiver(sequence=5, system_id="acme", password="x")
    [action] = session.receive(bind.encode())
    assert action == BindRequested(bind, "transceiver")
    # A second bind while the first is being checked: already bound (in progress).
    [again] = session.receive(p.BindTransmitter(sequence=6, system_id="acme").encode())
    assert isinstance(again, Send)
    answer = p.decode(again.data)
    assert isinstance(answer, p.BindTransmitterResp) and answer.status == p.ESME_RALYBND and answer.sequence == 6
    resp = p.decode(session.accept_bind(bind, "acme"))
    assert isinstance(resp, p.BindTransceiverResp) and resp.status == 0 and resp.system_id == "switchd"
    assert resp.tlvs == {"sc_interface_version": 0x34}
    assert session.can_transmit and session.can_receive


def test_session_refused_bind_can_be_retried():
    session = ServerSession()
    bind = p.BindReceiver(sequence=1, system_id="acme")
    session.receive(bind.encode())
    resp = p.decode(session.refuse_bind(bind, p.ESME_RINVPASWD))
    assert isinstance(resp, p.BindReceiverResp) and resp.status == p.ESME_RINVPASWD and resp.sequence == 1
    assert not session.bound
    [action] = session.receive(p.BindReceiver(sequence=2, system_id="acme").encode())
    assert isinstance(action, BindRequested)


@pytest.mark.parametrize("request_pdu", [
    p.SubmitSm(destination_addr="4412345"),
    p.DataSm(destination_addr="4412345"),
    p.QuerySm(message_id="1"),
    p.CancelSm(message_id="1"),
    p.ReplaceSm(message_id="1"),
])
def test_session_message_operations_need_a_transmitting_bind(request_pdu):
    session = ServerSession()
    request_pdu.sequence = 9
    [action] = session.receive(request_pdu.encode())
    answer = p.decode(action.data)
    assert answer.command_id == request_pdu.command_id | p.RESPONSE_BIT
    assert answer.status == p.ESME_RINVBNDSTS and answer.sequence == 9
    # A receiver may not submit either.
    bind = p.BindReceiver(sequence=1, system_id="acme")
    session.receive(bind.encode())
    session.accept_bind(bind, "acme")
    [action] = session.receive(request_pdu.encode())
    assert p.decode(action.data).status == p.ESME_RINVBNDSTS
    # A transmitter may.
    other = ServerSession()
    bind = p.BindTransmitter(sequence=1, system_id="acme")
    other.receive(bind.encode())
    other.accept_bind(bind, "acme")
    assert other.receive(request_pdu.encode()) == [Request(request_pdu)]


def test_session_answers_enquire_link_in_any_state_and_unbind_only_when_bound():
    session = ServerSession()
    [action] = session.receive(p.EnquireLink(sequence=3).encode())
    assert p.decode(action.data) == p.EnquireLinkResp(sequence=3)
    [action] = session.receive(p.Unbind(sequence=4).encode())
    assert p.decode(action.data) == p.UnbindResp(sequence=4, status=p.ESME_RINVBNDSTS)


def test_session_malformed_input_gets_the_right_status_and_sequence():
    session = ServerSession()
    # Unknown command id: generic_nack ESME_RINVCMDID with the PDU's sequence, stream goes on.
    unknown = (16).to_bytes(4, "big") + (0x00000099).to_bytes(4, "big") + bytes(4) + (77).to_bytes(4, "big")
    actions = session.receive(unknown + p.EnquireLink(sequence=78).encode())
    sends = [p.decode(a.data) for a in actions if isinstance(a, Send)]
    assert sends == [p.GenericNack(sequence=77, status=p.ESME_RINVCMDID), p.EnquireLinkResp(sequence=78)]
    assert not any(isinstance(a, Close) for a in actions)
    # A body cut short: the request's own response with ESME_RINVCMDLEN.
    body = p.BindTransmitter(sequence=80, system_id="acme").encode()[:-3]
    broken = len(body).to_bytes(4, "big") + body[4:]
    [send, _] = session.receive(broken)
    assert p.decode(send.data) == p.BindTransmitterResp(sequence=80, status=p.ESME_RINVCMDLEN)
    # A command_length under 16 loses the framing: generic_nack, then close.
    actions = session.receive(b"\x00\x00\x00\x08" + bytes(12))
    assert p.decode(actions[0].data).command_id == p.GENERIC_NACK
    assert p.decode(actions[0].data).status == p.ESME_RINVCMDLEN
    assert isinstance(actions[-1], Close) and not actions[-1].graceful


def test_session_refuses_what_an_esme_never_sends_to_an_smsc():
    session = ServerSession()
    [action] = session.receive(p.DeliverSm(sequence=2, destination_addr="1").encode())
    assert p.decode(action.data) == p.DeliverSmResp(sequence=2, status=p.ESME_RINVCMDID)
    [action] = session.receive(p.Outbind(sequence=3, system_id="x").encode())
    assert p.decode(action.data) == p.GenericNack(sequence=3, status=p.ESME_RINVCMDID)
    # Stray responses are never answered.
    assert session.receive(p.SubmitSmResp(sequence=4, message_id="x").encode()) == []


def bound_session(window: int = 2) -> ServerSession:
    session = ServerSession(window=window)
    bind = p.BindTransceiver(sequence=1, system_id="acme")
    session.receive(bind.encode())
    session.accept_bind(bind, "acme")
    return session


def test_session_holds_deliveries_to_the_window_and_sends_more_as_answers_come():
    session = bound_session(window=2)
    sent = []
    for token in ("a", "b", "c"):
        sent += session.deliver(token, p.DeliverSm(destination_addr="1", short_message=token.encode()))
    assert [type(a) for a in sent] == [DeliverySent, DeliverySent]
    assert session.in_flight == 2 and session.queued == 1
    first = sent[0]
    actions = session.receive(p.DeliverSmResp(sequence=first.sequence).encode())
    assert actions[0] == DeliveryResult("a", p.ESME_ROK, sequence=first.sequence)
    third = actions[1]
    assert isinstance(third, DeliverySent) and third.token == "c"
    # A generic_nack to a deliver_sm is a refusal; a timeout is a failure without status.
    actions = session.receive(p.GenericNack(sequence=sent[1].sequence, status=p.ESME_RINVCMDID).encode())
    assert actions == [DeliveryResult("b", p.ESME_RINVCMDID, sequence=sent[1].sequence)]
    assert session.expire(9999) == []
    [expired] = session.expire(third.sequence)
    assert expired == DeliveryResult("c", None, "no deliver_sm_resp in time", third.sequence)
    assert session.in_flight == 0


def test_session_close_fails_everything_in_flight_or_queued():
    session = bound_session(window=1)
    session.deliver(1, p.DeliverSm(destination_addr="1"))
    session.deliver(2, p.DeliverSm(destination_addr="1"))
    results = session.close()
    assert sorted(r.token for r in results) == [1, 2] and all(r.status is None for r in results)
    assert session.deliver(3, p.DeliverSm(destination_addr="1"))[0].status is None


def test_session_unbind_from_our_side_then_answer_closes():
    session = bound_session()
    [send] = session.unbind()
    unbind = p.decode(send.data)
    assert isinstance(unbind, p.Unbind)
    # Requests after our unbind are refused.
    [answer] = session.receive(p.SubmitSm(sequence=40, destination_addr="1").encode())
    assert p.decode(answer.data).status == p.ESME_RINVBNDSTS
    actions = session.receive(p.UnbindResp(sequence=unbind.sequence).encode())
    assert isinstance(actions[-1], Close) and actions[-1].graceful


def test_deliver_sm_for_a_receipt_and_a_long_mo():
    message = deliver_sm_for(receipt())
    assert message.esm_class == p.ESM_TYPE_DELIVERY_RECEIPT
    assert (message.source_addr, message.source_addr_ton, message.source_addr_npi) == ("447700900001", 1, 1)
    assert (message.destination_addr, message.dest_addr_ton, message.dest_addr_npi) == ("ACME", 5, 0)
    assert message.tlvs["receipted_message_id"] == "m0001" and message.tlvs["message_state"] == 2
    long = Delivery(id=2, kind="mo", source="+33612345678", destination="1234", content=b"x" * 300,
                    data_coding=0, esm_class=0, tlvs={})
    message = deliver_sm_for(long)
    assert message.short_message == b"" and message.tlvs["message_payload"] == b"x" * 300
    assert message.source_addr == "33612345678" and message.dest_addr_ton == 0
    assert address_type("") == ("", 0, 0)


def test_submission_for_takes_the_payload_of_data_sm_and_submit_sm():
    sm = p.SubmitSm(source_addr="ACME", destination_addr="447700900001", short_message=b"hi", data_coding=8,
                    esm_class=0x40, registered_delivery=1, validity_period="000001000000000R",
                    tlvs={"sar_msg_ref_num": 5})
    sub = submission_for(sm)
    assert (sub.source, sub.destination, sub.content, sub.data_coding, sub.esm_class) == (
        "ACME", "447700900001", b"hi", 8, 0x40)
    assert sub.registered_delivery == 1 and sub.validity_period == "000001000000000R"
    assert sub.tlvs == {"sar_msg_ref_num": 5}
    data = p.DataSm(source_addr="ACME", destination_addr="1", tlvs={"message_payload": b"y" * 400})
    sub = submission_for(data)
    assert sub.content == b"y" * 400 and sub.tlvs == {} and sub.schedule_delivery_time == ""


# -- the protocol ----------------------------------------------------------------------


@pytest.mark.parametrize("kind,resp", [
    (p.BindTransmitter, p.BindTransmitterResp),
    (p.BindReceiver, p.BindReceiverResp),
    (p.BindTransceiver, p.BindTransceiverResp),
])
def test_bind_each_type(kind, resp):
    world = World()
    esme = world.connect()
    answer = esme.bind(kind)
    assert isinstance(answer, resp) and answer.status == p.ESME_ROK and answer.system_id == "switchd"
    assert esme.proto.account.login == "acme"
    attached = world.engine.pushers.get(7, [])
    assert len(attached) == (0 if kind is p.BindTransmitter else 1)


def test_bind_refusals_keep_the_session_for_a_retry_then_close():
    world = World()
    esme = world.connect()
    assert esme.bind(login="nobody").status == p.ESME_RINVSYSID
    assert esme.bind(password="wrong").status == p.ESME_RINVPASWD
    assert not esme.closed
    assert esme.bind(password="wrong").status == p.ESME_RINVPASWD
    assert esme.closed  # the third failure


def test_second_bind_is_already_bound():
    esme = World().connect()
    esme.bind()
    answer = esme.bind(p.BindReceiver)
    assert isinstance(answer, p.BindReceiverResp) and answer.status == p.ESME_RALYBND


def test_submit_answers_with_the_message_id_only_once_stored():
    world = World()
    esme = world.connect()
    esme.bind(p.BindTransmitter)
    world.engine.hold()
    esme.send(p.SubmitSm(source_addr="ACME", destination_addr="447700900001", short_message=b"hello",
                         registered_delivery=1))
    assert esme.received() == []  # nothing until the engine stored it
    world.engine.release()
    answer = esme.one()
    assert isinstance(answer, p.SubmitSmResp) and answer.status == 0 and answer.message_id == "m0001"
    origin, submission = world.engine.submitted[0]
    assert (origin.kind, origin.connection_id, origin.service_id, origin.account_id) == ("smpp", 7, 3, 2)
    assert submission.content == b"hello" and submission.registered_delivery == 1


def test_data_sm_is_submitted_with_its_payload():
    world = World()
    esme = world.connect()
    esme.bind()
    esme.send(p.DataSm(source_addr="ACME", destination_addr="4477", tlvs={"message_payload": b"z" * 300}))
    answer = esme.one()
    assert isinstance(answer, p.DataSmResp) and answer.message_id == "m0001"
    assert world.engine.submitted[0][1].content == b"z" * 300


def test_reception_speed_throttles_and_nothing_is_stored_beyond_it():
    world = World(speed=2)
    esme = world.connect()
    esme.bind()
    for _ in range(3):
        esme.send(p.SubmitSm(destination_addr="4477", short_message=b"x"))
    statuses = [r.status for r in esme.received()]
    assert statuses == [p.ESME_ROK, p.ESME_ROK, p.ESME_RTHROTTLED]
    assert len(world.engine.submitted) == 2
    world.clock.advance(1)
    esme.send(p.SubmitSm(destination_addr="4477", short_message=b"x"))
    assert esme.one().status == p.ESME_ROK and len(world.engine.submitted) == 3


def test_engine_refusal_and_engine_failure():
    world = World()
    esme = world.connect()
    esme.bind()
    world.engine.refuse = refused(p.ESME_RINVDSTADR, 400, "no route")
    esme.send(p.SubmitSm(destination_addr="999", short_message=b"x"))
    answer = esme.one()
    assert answer.status == p.ESME_RINVDSTADR and answer.message_id == ""
    world.engine.refuse = RuntimeError("database on fire")
    with capturedLogs() as logs:
        esme.send(p.SubmitSm(destination_addr="999", short_message=b"x"))
    assert esme.one().status == p.ESME_RSYSERR
    assert any("failed" in str(e.get("log_format")) for e in logs)
    world.engine.refuse = None
    esme.send(p.SubmitSm(destination_addr="999", short_message=b"x"))
    assert esme.one().status == p.ESME_ROK  # the session survived


def test_query_cancel_replace():
    world = World()
    esme = world.connect()
    esme.bind()
    esme.send(p.SubmitSm(destination_addr="4477", short_message="Привет".encode("utf-16-be"), data_coding=8))
    message_id = esme.one().message_id
    esme.send(p.QuerySm(message_id=message_id))
    answer = esme.one()
    assert (answer.message_id, answer.message_state, answer.final_date) == (message_id, p.ENROUTE, "")
    world.engine.finish(message_id, "UNDELIVERABLE", error_code=300)
    esme.send(p.QuerySm(message_id=message_id))
    answer = esme.one()
    assert answer.message_state == p.UNDELIVERABLE and answer.error_code == 255
    assert answer.final_date == "260101000500000+"
    esme.send(p.QuerySm(message_id="nope"))
    assert esme.one().status == p.ESME_RINVMSGID
    esme.send(p.CancelSm(message_id=message_id))
    assert esme.one().status == p.ESME_ROK and world.engine.cancelled == [message_id]
    esme.send(p.CancelSm(message_id="nope"))
    assert esme.one().status == p.ESME_RCANCELFAIL
    esme.send(p.CancelSm(message_id=""))  # no id and no source address: nothing is named
    assert esme.one().status == p.ESME_RINVSRCADR
    esme.send(p.ReplaceSm(message_id=message_id, short_message="Пока".encode("utf-16-be")))
    answer = esme.one()
    assert isinstance(answer, p.ReplaceSmResp) and answer.status == p.ESME_ROK
    # replace_sm has no data_coding: the original's (UCS2) is kept.
    assert world.engine.replaced == [(message_id, "Пока".encode("utf-16-be"), 8)]
    esme.send(p.ReplaceSm(message_id="nope", short_message=b"new"))
    assert esme.one().status == p.ESME_RREPLACEFAIL
    # Another connection cannot see the message.
    other = world.connect()
    other.bind(login="other", password="pw")
    other.send(p.QuerySm(message_id=message_id))
    assert other.one().status == p.ESME_RINVMSGID


def test_cancel_without_a_message_id_cancels_by_source_and_destination():
    world = World()
    esme = world.connect()
    esme.bind()
    ids = []
    for destination in ("4471", "4472", "4471"):
        esme.send(p.SubmitSm(source_addr="ACME", destination_addr=destination, short_message=b"x"))
        ids.append(esme.one().message_id)
    esme.send(p.CancelSm(message_id="", source_addr="ACME", destination_addr="4471"))
    assert esme.one().status == p.ESME_ROK and world.engine.cancelled == [ids[0], ids[2]]
    esme.send(p.CancelSm(message_id="", source_addr="ACME", destination_addr="4471"))
    assert esme.one().status == p.ESME_RCANCELFAIL  # none left
    esme.send(p.CancelSm(message_id="", source_addr="ACME"))  # every destination
    assert esme.one().status == p.ESME_ROK and world.engine.cancelled == [ids[0], ids[2], ids[1]]


def test_unbind_by_the_esme_waits_for_answers_in_progress():
    world = World()
    esme = world.connect()
    esme.bind()
    world.engine.hold()
    esme.send(p.SubmitSm(destination_addr="4477", short_message=b"x"))
    esme.send(p.Unbind())
    assert isinstance(esme.one(), p.UnbindResp)
    assert not esme.closed  # the submit is still being stored
    world.engine.release()
    assert esme.one().message_id == "m0001"
    assert esme.closed


def test_malformed_streams_leave_the_server_answering():
    world = World()
    esme = world.connect()
    esme.bind()
    esme.proto.dataReceived(b"\x00\x00\x00\x10\x00\x00\x00\x77\x00\x00\x00\x00\x00\x00\x00\x09")
    assert esme.one() == p.GenericNack(sequence=9, status=p.ESME_RINVCMDID)
    esme.send(p.EnquireLink())
    assert isinstance(esme.one(), p.EnquireLinkResp)
    esme.proto.dataReceived(b"\xff\xff\xff\xff" + bytes(12))
    assert esme.one().status == p.ESME_RINVCMDLEN
    assert esme.closed


def test_receipts_are_pushed_to_receivers_and_kept_when_nobody_is_bound():
    world = World()
    world.engine.store(7, receipt(1))  # nobody bound yet: kept
    esme = world.connect()
    esme.send(p.BindReceiver(system_id="acme", password="secret"))
    bound, deliver = esme.received()  # the stored receipt follows the bind response
    assert isinstance(bound, p.BindReceiverResp) and bound.status == p.ESME_ROK
    assert isinstance(deliver, p.DeliverSm) and deliver.tlvs["receipted_message_id"] == "m0001"
    assert world.engine.delivered == []
    esme.send(p.DeliverSmResp(sequence=deliver.sequence))
    assert [d.id for d in world.engine.delivered] == [1]
    world.engine.store(7, receipt(2))
    [deliver] = esme.received()
    esme.send(p.DeliverSmResp(sequence=deliver.sequence, status=p.ESME_RX_T_APPN))
    [(failed, error)] = world.engine.failed
    assert failed.id == 2 and isinstance(error, DeliveryFailed) and error.status == p.ESME_RX_T_APPN
    assert [d.id for d in world.engine.outbox[7]] == [2]  # kept for later


def test_deliver_sm_response_timeout_and_window():
    world = World(window=2)
    esme = world.connect()
    esme.bind()
    for i in range(3):
        world.engine.store(7, receipt(i))
    sent = esme.received()
    assert len(sent) == 2
    world.clock.advance(10)
    assert [d.id for d, _ in world.engine.failed] == [0, 1]
    assert all(isinstance(e, DeliveryFailed) and e.status is None for _, e in world.engine.failed)
    [third] = esme.received()  # room in the window again
    esme.send(p.DeliverSmResp(sequence=third.sequence))
    assert [d.id for d in world.engine.delivered] == [2]
    # A late answer to a timed-out deliver_sm changes nothing.
    esme.send(p.DeliverSmResp(sequence=sent[0].sequence))
    assert [d.id for d in world.engine.delivered] == [2]


def test_connection_lost_detaches_and_fails_deliveries_in_flight():
    world = World()
    esme = world.connect()
    esme.bind()
    world.engine.store(7, receipt(1))
    esme.lose()
    assert world.engine.pushers[7] == []
    [(failed, error)] = world.engine.failed
    assert failed.id == 1 and isinstance(error, DeliveryFailed)
    assert world.factory.sessions == set()
    assert world.clock.getDelayedCalls() == []


def test_inactivity_enquire_link_then_close():
    world = World()
    esme = world.connect()
    esme.bind()
    world.clock.advance(59)
    assert esme.received() == []
    world.clock.advance(1)
    enquire = esme.one()
    assert isinstance(enquire, p.EnquireLink)
    esme.send(p.EnquireLinkResp(sequence=enquire.sequence))
    world.clock.advance(30)
    assert not esme.closed and esme.received() == []
    world.clock.advance(30)
    assert isinstance(esme.one(), p.EnquireLink)
    world.clock.advance(10)
    assert esme.closed


def test_a_connection_that_never_binds_is_closed():
    world = World()
    esme = world.connect()
    world.clock.advance(60)
    assert esme.closed and esme.received() == []


def test_shutdown_unbinds_every_session():
    world = World()
    service = SmppServerService(world.factory, world.clock, reload_seconds=10)
    service.startService()
    answering, silent, unbound = world.connect(), world.connect(), world.connect()
    answering.bind()
    silent.bind(p.BindReceiver, login="other", password="pw")
    done = service.stopService()
    assert unbound.closed
    unbound.lose()
    unbind = answering.one()
    assert isinstance(unbind, p.Unbind) and isinstance(silent.one(), p.Unbind)
    answering.send(p.UnbindResp(sequence=unbind.sequence))
    assert answering.closed
    answering.lose()
    assert not done.called
    world.clock.advance(10)  # the silent one is cut off
    assert silent.closed
    silent.lose()
    assert done.called
    assert world.engine.pushers[8] == []


def test_reload_applies_reception_speed_and_unbinds_removed_connections():
    world = World()
    service = SmppServerService(world.factory, world.clock, reload_seconds=10)
    service.startService()
    kept, removed, changed = world.connect(), world.connect(), world.connect()
    kept.bind()
    removed.bind(login="other", password="pw")
    world.auth.logins["acme"] = ("secret", account(speed=1))
    del world.auth.logins["other"]
    world.clock.advance(10)
    assert world.auth.reloaded == [[7, 8]]
    assert isinstance(removed.one(), p.Unbind)
    kept.send(p.SubmitSm(destination_addr="1", short_message=b"x"))
    kept.send(p.SubmitSm(destination_addr="1", short_message=b"x"))
    assert [a.status for a in kept.received()] == [p.ESME_ROK, p.ESME_RTHROTTLED]
    changed.bind()
    world.auth.logins["acme"] = ("secret", SmppAccount(**{**account(speed=1).__dict__, "password_hash": "new"}))
    world.clock.advance(10)
    assert isinstance(changed.one(), p.Unbind) and isinstance(kept.one(), p.Unbind)
    assert world.limiter.allow(RECEPTION, 7).allowed  # one token a second: refilled
    assert not world.limiter.allow(RECEPTION, 7).allowed


# -- binds against the database ------------------------------------------------------


def _provision(conn, *, system_type="0", status="active", password="s3cret") -> int:
    customer = conn.execute(insert(m.customers).values(name="c", created_at=NOW, updated_at=NOW)
                            .returning(m.customers.c.id)).scalar_one()
    acct = conn.execute(insert(m.accounts).values(customer_id=customer, currency="EUR", created_at=NOW,
                                                  updated_at=NOW).returning(m.accounts.c.id)).scalar_one()
    plan = conn.execute(insert(m.tariff_plans).values(name=f"p{customer}", currency="EUR", created_at=NOW,
                                                      updated_at=NOW).returning(m.tariff_plans.c.id)).scalar_one()
    service = conn.execute(insert(m.services).values(account_id=acct, type="api", tariff_plan_id=plan,
                                                     status=status, created_at=NOW, updated_at=NOW)
                           .returning(m.services.c.id)).scalar_one()
    salt, digest = new_secret_hash(password)
    return conn.execute(insert(m.smpp_connections).values(
        service_id=service, login="acme", password_salt=salt, password_hash=digest, system_type=system_type,
        reception_speed=20, created_at=NOW, updated_at=NOW).returning(m.smpp_connections.c.id)).scalar_one()


def refusal(database, *args) -> int:
    with pytest.raises(BindRefused) as caught:
        database.run_blocking(check_bind, *args)
    return caught.value.status


def test_check_bind_against_the_database(database):
    connection_id = database.run_blocking(_provision)
    found = database.run_blocking(check_bind, "acme", "s3cret", "")
    assert (found.connection_id, found.login, found.reception_speed) == (connection_id, "acme", 20)
    assert found.origin().kind == "smpp"
    assert database.run_blocking(check_bind, "acme", "s3cret", "anything").connection_id == connection_id
    assert refusal(database, "acme", "wrong", "") == p.ESME_RINVPASWD
    assert refusal(database, "nobody", "s3cret", "") == p.ESME_RINVSYSID
    assert database.run_blocking(load_accounts, [connection_id]) == {connection_id: found}


def test_check_bind_system_type_and_service_status(database):
    connection_id = database.run_blocking(_provision, system_type="VMA")
    assert refusal(database, "acme", "s3cret", "") == p.ESME_RINVSYSTYP
    assert database.run_blocking(check_bind, "acme", "s3cret", "VMA").connection_id == connection_id
    database.run_blocking(lambda c: c.execute(update(m.services).values(status="suspended")))
    assert refusal(database, "acme", "s3cret", "VMA") == p.ESME_RBINDFAIL
    assert database.run_blocking(load_accounts, [connection_id]) == {}


def test_data_coding_of_a_stored_message(database):
    def provision(conn):
        _provision(conn)
        account_id = conn.execute(select(m.accounts.c.id)).scalar_one()
        conn.execute(insert(m.sms_messages).values(
            message_id="abc", account_id=account_id, source="ACME", destination="4477", data_coding=8,
            created_at=NOW, updated_at=NOW))
        return account_id

    account_id = database.run_blocking(provision)
    assert database.run_blocking(data_coding_of, account_id, "abc") == 8
    assert database.run_blocking(data_coding_of, account_id + 1, "abc") is None  # not that account's
    assert database.run_blocking(data_coding_of, account_id, "nope") is None
