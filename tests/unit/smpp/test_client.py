"""The upstream SMPP client without sockets: bind, window, rates, heartbeats,
timeouts, resends and throttling, reconnection with nothing lost, receipts
and MO answered only once stored, and the link manager."""

from __future__ import annotations

import dataclasses
import datetime

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from switchd.core.events import EventBus
from switchd.core.ratelimit import RateLimiter
from switchd.smpp import dlr, pdu
from switchd.smpp.client import (
    LinkError,
    LinkSettings,
    OutboundPart,
    SmppLink,
    SmppLinkManager,
    SmppLinkStateChanged,
    build_submit,
)

T0 = 1_800_000_000.0
UTC = datetime.UTC


def part(part_id: int, **values) -> OutboundPart:
    defaults = OutboundPart(
        part_id=part_id, message_pk=part_id, message_id=f"m{part_id}", link_id=1, number=1, total=1,
        source="ACME", destination="447700900001", short_message=f"text {part_id}".encode(), in_payload=False,
        data_coding=0, esm_class=0, registered_delivery=1,
    )
    return dataclasses.replace(defaults, **values)


class Sink:
    """The engine as a link sees it: a queue of parts and the outcomes reported."""

    def __init__(self, parts=()):
        self.queued: dict[int, OutboundPart] = {p.part_id: p for p in parts}
        self.sent: list[tuple[int, str]] = []
        self.failed: list[tuple[int, str, int | None]] = []
        self.receipts: list[dlr.UpstreamReceipt] = []
        self.messages: list[dlr.UpstreamMessage] = []
        self.answers: list[Deferred] = []
        self.hold = False
        self.loads = 0

    def load_parts(self, link_id, after, limit):
        self.loads += 1
        ids = sorted(i for i in self.queued if i > after)[:limit]
        return succeed([dataclasses.replace(self.queued[i]) for i in ids])  # fresh rows, as read

    def part_sent(self, link_id, part, upstream_id):
        self.sent.append((part.part_id, upstream_id))
        self.queued.pop(part.part_id, None)
        return succeed(None)

    def part_failed(self, link_id, part, state, error_code):
        self.failed.append((part.part_id, state, error_code))
        self.queued.pop(part.part_id, None)
        return succeed(None)

    def _answer(self):
        if self.hold:
            d = Deferred()
            self.answers.append(d)
            return d
        return succeed(pdu.ESME_ROK)

    def receipt_received(self, link_id, receipt):
        self.receipts.append(receipt)
        return self._answer()

    def message_received(self, link_id, message):
        self.messages.append(message)
        return self._answer()


class Smsc:
    """The far end of one connection: reads what the link wrote, answers it."""

    def __init__(self, protocol, transport):
        self.protocol = protocol
        self.transport = transport
        self.reader = pdu.PduReader()

    def read(self) -> list[pdu.Pdu]:
        data = self.transport.value()
        self.transport.clear()
        items = self.reader.feed(data)
        assert not [i for i in items if isinstance(i, pdu.PduError)]
        return items

    def send(self, message: pdu.Pdu) -> None:
        self.protocol.dataReceived(message.encode())

    def answer(self, request: pdu.Pdu, status: int = pdu.ESME_ROK, **values) -> None:
        self.send(pdu.response_for(request, status, **values))

    def bind(self, status: int = pdu.ESME_ROK) -> pdu.Pdu:
        [request] = self.read()
        self.answer(request, status, system_id="SMSC")
        return request


class Net:
    """A connector handing each connection a StringTransport; optionally refusing."""

    def __init__(self):
        self.connections: list[Smsc] = []
        self.refuse = False

    def connect(self, settings, factory):
        if self.refuse:
            return fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append(Smsc(protocol, transport))
        return succeed(protocol)

    @property
    def smsc(self) -> Smsc:
        return self.connections[-1]


class Rig:
    def __init__(self, parts=(), **settings):
        self.clock = Clock()
        self.clock.advance(T0)
        self.bus = EventBus()
        self.states: list[str] = []
        self.bus.subscribe(SmppLinkStateChanged, lambda e: self.states.append(e.state))
        self.sink = Sink(parts)
        self.net = Net()
        self.limiter = RateLimiter(self.clock)
        self.settings = LinkSettings(id=1, name="carrier", host="smsc.example.net", port=2775,
                                     system_id="switchd", password="secret", **settings)
        self.link = SmppLink(self.settings, clock=self.clock, connect=self.net.connect, sink=self.sink,
                             limiter=self.limiter, bus=self.bus)

    def bound(self) -> Smsc:
        self.link.start()
        self.net.smsc.bind()
        return self.net.smsc

    def lose(self):
        self.net.smsc.protocol.connectionLost(Failure(ConnectionDone()))


def submits(items):
    return [i for i in items if isinstance(i, (pdu.SubmitSm, pdu.DataSm))]


# -- bind -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,cls", [("transceiver", pdu.BindTransceiver), ("transmitter", pdu.BindTransmitter),
                                      ("receiver", pdu.BindReceiver)])
def test_binds_with_the_links_mode_and_credentials(mode, cls):
    rig = Rig(mode=mode, system_type="VMA", addr_ton=1, addr_npi=1, address_range="^44")
    rig.link.start()
    request = rig.net.smsc.bind()
    assert isinstance(request, cls)
    assert (request.system_id, request.password, request.system_type) == ("switchd", "secret", "VMA")
    assert (request.interface_version, request.addr_ton, request.addr_npi, request.address_range) == (0x34, 1, 1, "^44")
    assert rig.link.is_bound and rig.states == ["connecting", "binding", "bound"]


def test_a_bad_mode_or_pdu_type_is_refused_with_the_link_named():
    with pytest.raises(LinkError, match="carrier.*'both'"):
        LinkSettings(id=1, name="carrier", host="h", port=1, mode="both")
    with pytest.raises(LinkError, match="pdu_type"):
        LinkSettings(id=1, name="carrier", host="h", port=1, pdu_type="submit_multi")


def test_a_refused_bind_is_retried_with_growing_backoff():
    rig = Rig()
    rig.link.start()
    for delay in (1, 2, 4):
        rig.net.smsc.bind(pdu.ESME_RINVPASWD)
        assert rig.net.smsc.transport.disconnecting
        rig.net.smsc.protocol.connectionLost(Failure(ConnectionDone()))
        assert rig.link.state == "waiting" and "ESME_RINVPASWD" in rig.link.detail
        count = len(rig.net.connections)
        rig.clock.advance(delay - 0.01)
        assert len(rig.net.connections) == count
        rig.clock.advance(0.01)
        assert len(rig.net.connections) == count + 1
    rig.net.smsc.bind()
    assert rig.link.is_bound
    rig.clock.advance(SmppLink.STABLE_SECONDS)
    assert rig.link.failures == 0


def test_an_unreachable_smsc_is_retried():
    rig = Rig()
    rig.net.refuse = True
    rig.link.start()
    assert rig.link.state == "waiting"
    rig.clock.advance(1)
    rig.clock.advance(2)
    assert rig.link.failures == 3
    rig.net.refuse = False
    rig.clock.advance(4)
    rig.net.smsc.bind()
    assert rig.link.is_bound


def test_an_unanswered_bind_closes_the_connection():
    rig = Rig(transaction_timeout_ms=2000)
    rig.link.start()
    rig.clock.advance(2)
    assert rig.net.smsc.transport.disconnecting


# -- sending ------------------------------------------------------------------------------------------


def test_parts_go_within_the_sliding_window():
    rig = Rig([part(n) for n in range(1, 21)], window_size=16)
    smsc = rig.bound()
    sent = submits(smsc.read())
    assert len(sent) == 16
    smsc.answer(sent[0], message_id="AB01")
    more = submits(smsc.read())
    assert len(more) == 1 and more[0].short_message == b"text 17"
    assert rig.sink.sent == [(1, "AB01")]
    for request in sent[1:] + more:
        smsc.answer(request, message_id="x")
    for request in submits(smsc.read()):
        smsc.answer(request, message_id="y")
    assert sorted(i for i, _ in rig.sink.sent) == list(range(1, 21))
    assert rig.link.known == set()


def test_higher_priority_services_are_served_first_in_arrival_order_within_one():
    rig = Rig([part(n) for n in range(1, 4)], window_size=1)
    smsc = rig.bound()
    [first] = submits(smsc.read())  # the window is full; the rest waits in memory
    rig.link.enqueue([part(10, priority=5), part(11), part(12, priority=5), part(13, priority=9)])
    order = []
    request = first
    for _ in range(7):
        smsc.answer(request, message_id="x")
        order.append(request.short_message.decode())
        [request] = submits(smsc.read()) or [None]
        if request is None:
            break
    assert order == ["text 1", "text 13", "text 10", "text 12", "text 2", "text 3", "text 11"]
    assert len(rig.link.queue) == 0


def test_withdrawing_from_the_priority_queue_keeps_the_rest_in_order():
    from switchd.smpp.client import PartQueue

    queue = PartQueue()
    for p in (part(1), part(2, priority=3), part(3), part(4, priority=3)):
        queue.append(p)
    queue.appendleft(part(5))
    assert [p.part_id for p in queue] == [2, 4, 5, 1, 3] and len(queue) == 5 and queue[0].part_id == 2
    queue.remove_ids({4, 1})
    assert [p.part_id for p in queue] == [2, 5, 3] and len(queue) == 3
    assert [queue.popleft().part_id for _ in range(3)] == [2, 5, 3] and not queue
    with pytest.raises(IndexError):
        queue.popleft()


def test_submit_sm_carries_the_link_and_part_settings():
    settings = LinkSettings(id=1, name="c", host="h", port=1, service_type="CMT", source_addr_ton=5,
                            source_addr_npi=0, dest_addr_ton=1, dest_addr_npi=1, esm_class=0x03, protocol_id=7,
                            replace_if_present=True, default_msg_id=9)
    expires = datetime.datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
    message = build_submit(settings, part(3, esm_class=0x40, data_coding=8, registered_delivery=1,
                                          tlvs={"sar_msg_ref_num": 5}, expires_at=expires), 42)
    assert isinstance(message, pdu.SubmitSm) and message.sequence == 42
    assert (message.service_type, message.source_addr_ton, message.dest_addr_ton, message.dest_addr_npi) == (
        "CMT", 5, 1, 1)
    assert (message.esm_class, message.protocol_id, message.replace_if_present_flag, message.sm_default_msg_id) == (
        0x43, 7, 1, 9)
    assert (message.data_coding, message.registered_delivery, message.validity_period) == (8, 1, "270115080000000+")
    assert message.tlvs == {"sar_msg_ref_num": 5}
    pdu.decode(message.encode())  # it is valid on the wire
    payload = build_submit(settings, part(4, short_message=b"x" * 300, in_payload=True), 1)
    assert payload.short_message == b"" and payload.tlvs["message_payload"] == b"x" * 300
    data_sm = build_submit(LinkSettings(id=1, name="c", host="h", port=1, pdu_type="data_sm"), part(5), 2)
    assert isinstance(data_sm, pdu.DataSm) and data_sm.tlvs["message_payload"] == b"text 5"


def test_registered_delivery_asks_for_what_the_message_needs():
    failures_only = LinkSettings(id=1, name="c", host="h", port=1)  # seed 001 default: 2
    assert failures_only.upstream_registered_delivery(0, False) == 2
    assert failures_only.upstream_registered_delivery(1, False) == 1  # success receipts wanted
    assert failures_only.upstream_registered_delivery(2, False) == 2
    assert failures_only.upstream_registered_delivery(0, True) == 1  # an HTTP message's end callback
    never = LinkSettings(id=1, name="c", host="h", port=1, registered_delivery=0)
    assert never.upstream_registered_delivery(1, True) == 0


def test_the_sending_rate_is_a_token_bucket():
    rig = Rig([part(n) for n in range(1, 11)], max_sending_rate=5)
    smsc = rig.bound()
    first = submits(smsc.read())
    assert len(first) == 5
    for request in first:
        smsc.answer(request, message_id="1")
    assert submits(smsc.read()) == []
    rig.clock.advance(0.2)
    assert len(submits(smsc.read())) == 1
    rig.clock.advance(0.8)
    assert len(submits(smsc.read())) == 4


@pytest.mark.parametrize("status", [pdu.ESME_RTHROTTLED, pdu.ESME_RMSGQFUL])
def test_throttling_pauses_the_link_and_resends_with_backoff(status):
    rig = Rig([part(1), part(2)], resend_wait_ms=500)
    smsc = rig.bound()
    first, second = submits(smsc.read())
    smsc.answer(first, status)
    smsc.answer(second, status)
    assert rig.sink.failed == [] and submits(smsc.read()) == []
    rig.clock.advance(0.5)
    assert submits(smsc.read()) == []  # the second refusal doubled the pause
    rig.clock.advance(0.5)
    again = submits(smsc.read())
    assert [r.short_message for r in again] == [b"text 1", b"text 2"]  # in their order
    for request in again:
        smsc.answer(request, message_id="ok")
    assert sorted(i for i, _ in rig.sink.sent) == [1, 2] and rig.sink.failed == []


def test_temporary_errors_are_resent_resend_times_then_fail():
    rig = Rig([part(1)], resend_times=2, resend_wait_ms=1000)
    smsc = rig.bound()
    for _ in range(2):
        [request] = submits(smsc.read())
        smsc.answer(request, pdu.ESME_RSYSERR)
        assert submits(smsc.read()) == []
        rig.clock.advance(1)
    [request] = submits(smsc.read())
    smsc.answer(request, pdu.ESME_RSYSERR)
    assert rig.sink.failed == [(1, "UNDELIVERABLE", pdu.ESME_RSYSERR)]


def test_a_permanent_refusal_rejects_the_part_at_once():
    rig = Rig([part(1)], resend_times=5)
    smsc = rig.bound()
    [request] = submits(smsc.read())
    smsc.answer(request, pdu.ESME_RINVDSTADR)
    assert rig.sink.failed == [(1, "REJECTED", pdu.ESME_RINVDSTADR)]


def test_a_part_that_cannot_be_encoded_is_rejected_not_sent():
    rig = Rig([part(1, source="S" * 30), part(2)])
    smsc = rig.bound()
    assert [r.short_message for r in submits(smsc.read())] == [b"text 2"]
    assert rig.sink.failed == [(1, "REJECTED", pdu.ESME_RINVSRCADR)]


def test_expired_parts_are_not_sent():
    expired = datetime.datetime.fromtimestamp(T0 - 1, UTC)
    rig = Rig([part(1, expires_at=expired), part(2)])
    smsc = rig.bound()
    assert len(submits(smsc.read())) == 1
    assert rig.sink.failed == [(1, "EXPIRED", None)]


def test_an_unanswered_submit_is_sent_again():
    rig = Rig([part(1)], transaction_timeout_ms=6000)
    smsc = rig.bound()
    [request] = submits(smsc.read())
    rig.clock.advance(6)
    [again] = submits(smsc.read())
    assert again.short_message == request.short_message and again.sequence != request.sequence
    smsc.answer(request, message_id="late")  # too late: ignored
    smsc.answer(again, message_id="ok")
    assert rig.sink.sent == [(1, "ok")]


def test_a_zero_transaction_timeout_waits_as_long_as_the_session():
    rig = Rig([part(1)], transaction_timeout_ms=0)
    smsc = rig.bound()
    [request] = submits(smsc.read())
    rig.clock.advance(120)
    assert submits(smsc.read()) == [] and not smsc.transport.disconnecting
    smsc.answer(request, message_id="9")
    assert rig.sink.sent == [(1, "9")]


def test_nothing_is_lost_when_the_connection_drops():
    rig = Rig([part(n) for n in range(1, 6)])
    smsc = rig.bound()
    sent = submits(smsc.read())
    smsc.answer(sent[0], message_id="one")
    rig.lose()
    assert rig.link.state == "waiting" and not rig.link.queue
    rig.clock.advance(1)
    rig.net.smsc.bind()
    resent = submits(rig.net.smsc.read())
    assert [r.short_message for r in resent] == [f"text {n}".encode() for n in range(2, 6)]
    for request in resent:
        rig.net.smsc.answer(request, message_id="x")
    assert sorted(i for i, _ in rig.sink.sent) == [1, 2, 3, 4, 5]


def test_new_parts_are_taken_at_once_while_bound_and_from_the_database_after():
    rig = Rig()
    smsc = rig.bound()
    rig.sink.queued[7] = part(7)
    rig.link.enqueue([part(7)])
    [request] = submits(smsc.read())
    assert request.short_message == b"text 7"
    rig.link.enqueue([part(7)])  # known: not twice
    assert submits(smsc.read()) == []
    smsc.answer(request, message_id="7")
    rig.lose()
    rig.sink.queued[8] = part(8)
    rig.link.enqueue([part(8)])  # not bound: the database has it
    rig.clock.advance(1)
    rig.net.smsc.bind()
    assert [r.short_message for r in submits(rig.net.smsc.read())] == [b"text 8"]


def test_the_queue_is_read_again_only_when_the_database_may_hold_more():
    rig = Rig()
    rig.link.page = 4
    rig.sink.queued.update({n: part(n) for n in range(1, 11)})
    smsc = rig.bound()
    loads = rig.sink.loads
    while True:
        requests = submits(smsc.read())
        if not requests:
            break
        for request in requests:
            smsc.answer(request, message_id="x")
    assert len(rig.sink.sent) == 10
    assert rig.sink.loads - loads <= 4
    before = rig.sink.loads
    rig.clock.advance(rig.link.refill_seconds)
    assert rig.sink.loads == before + 1


def test_withdrawn_parts_are_not_sent_and_in_flight_ones_cannot_be_withdrawn():
    rig = Rig([part(n) for n in range(1, 4)], window_size=1)
    smsc = rig.bound()
    [first] = submits(smsc.read())
    assert rig.link.withdraw([1]) is False
    assert rig.link.withdraw([2]) is True
    smsc.answer(first, message_id="1")
    [third] = submits(smsc.read())
    assert third.short_message == b"text 3"
    rig.link.restore([2])


# -- the session ------------------------------------------------------------------------------------


def test_heartbeats_keep_the_session_and_missed_ones_drop_it():
    rig = Rig(heartbeat_interval_ms=30000, max_missed_heartbeats=3, transaction_timeout_ms=6000)
    smsc = rig.bound()
    rig.clock.advance(30)
    [ping] = smsc.read()
    assert isinstance(ping, pdu.EnquireLink)
    smsc.answer(ping)
    rig.clock.pump([30, 6] * 3)  # three heartbeats sent and missed
    assert len(smsc.read()) == 3 and not smsc.transport.disconnecting
    rig.clock.pump([24, 6])
    assert smsc.transport.disconnecting  # the fourth exceeds max_missed_heartbeats


def test_silence_longer_than_the_receiving_timeout_drops_the_session():
    rig = Rig(receiving_timeout_ms=60000, heartbeat_interval_ms=100000)
    smsc = rig.bound()
    rig.clock.advance(59)
    smsc.send(pdu.EnquireLink(sequence=9))
    rig.clock.advance(59)
    assert not smsc.transport.disconnecting
    rig.clock.advance(1)
    assert smsc.transport.disconnecting


def test_consecutive_bad_pdus_drop_the_session():
    rig = Rig(max_error_packets=3)
    smsc = rig.bound()
    unknown = (16).to_bytes(4, "big") + (0x0000_0FFF).to_bytes(4, "big") + bytes(4) + (5).to_bytes(4, "big")
    smsc.protocol.dataReceived(unknown * 2)
    nacks = smsc.read()
    assert [type(n) for n in nacks] == [pdu.GenericNack] * 2 and nacks[0].status == pdu.ESME_RINVCMDID
    assert not smsc.transport.disconnecting
    smsc.protocol.dataReceived(unknown)
    assert smsc.transport.disconnecting


def test_the_smsc_can_check_the_link_and_unbind_it():
    rig = Rig()
    smsc = rig.bound()
    smsc.send(pdu.EnquireLink(sequence=77))
    [answer] = smsc.read()
    assert isinstance(answer, pdu.EnquireLinkResp) and answer.sequence == 77
    smsc.send(pdu.Unbind(sequence=78))
    [answer] = smsc.read()
    assert isinstance(answer, pdu.UnbindResp) and smsc.transport.disconnecting
    rig.lose()
    rig.clock.advance(1)
    assert len(rig.net.connections) == 2


def test_stopping_unbinds_and_stops_reconnecting():
    rig = Rig()
    smsc = rig.bound()
    done = rig.link.stop()
    [unbind] = smsc.read()
    assert isinstance(unbind, pdu.Unbind) and not done.called
    smsc.answer(unbind)
    rig.lose()
    assert done.called and rig.link.state == "stopped"
    rig.clock.advance(60)
    assert len(rig.net.connections) == 1


# -- receipts and MO -----------------------------------------------------------------------------------


def receipt_pdu(sequence=5, message_id="1A2B"):
    text = pdu.format_receipt(message_id, 1, 1, None, None, "DELIVRD", 0, "hello")
    return pdu.DeliverSm(sequence=sequence, source_addr="447700900001", destination_addr="ACME",
                         esm_class=pdu.ESM_TYPE_DELIVERY_RECEIPT, short_message=text.encode())


def test_receipts_are_answered_only_once_stored():
    rig = Rig()
    smsc = rig.bound()
    rig.sink.hold = True
    smsc.send(receipt_pdu())
    assert smsc.read() == []
    [received] = rig.sink.receipts
    assert (received.message_id, received.state) == ("1A2B", "DELIVERED")
    rig.sink.answers.pop().callback(pdu.ESME_ROK)
    [answer] = smsc.read()
    assert isinstance(answer, pdu.DeliverSmResp) and answer.sequence == 5 and answer.status == pdu.ESME_ROK


def test_a_receipt_in_tlvs_and_an_mo_are_told_apart():
    rig = Rig()
    smsc = rig.bound()
    smsc.send(pdu.DeliverSm(sequence=1, esm_class=0x04, tlvs={"receipted_message_id": "77", "message_state": 5,
                                                              "network_error_code": b"\x03\x00\x45"}))
    smsc.send(pdu.DataSm(sequence=2, source_addr="447700900001", destination_addr="441134960000",
                         tlvs={"message_payload": b"hi"}))
    assert rig.sink.receipts == [dlr.UpstreamReceipt("77", "UNDELIVERABLE", 0x45)]
    assert rig.sink.messages == [dlr.UpstreamMessage("447700900001", "441134960000", b"hi", 0)]
    answers = smsc.read()
    assert [type(a) for a in answers] == [pdu.DeliverSmResp, pdu.DataSmResp]


def test_a_storage_failure_is_answered_with_a_system_error():
    rig = Rig()
    smsc = rig.bound()
    rig.sink.receipt_received = lambda link_id, receipt: fail(OSError("database down"))
    smsc.send(receipt_pdu())
    [answer] = smsc.read()
    assert answer.status == pdu.ESME_RSYSERR


def test_an_unreadable_receipt_is_acknowledged_and_dropped():
    rig = Rig()
    smsc = rig.bound()
    smsc.send(pdu.DeliverSm(sequence=3, esm_class=0x04, short_message=b"garbage"))
    [answer] = smsc.read()
    assert answer.status == pdu.ESME_ROK and rig.sink.receipts == []


def test_the_receiving_rate_holds_or_throttles_the_excess():
    rig = Rig(max_receiving_rate=1)
    smsc = rig.bound()
    smsc.send(receipt_pdu(1))
    smsc.send(receipt_pdu(2))
    assert len(smsc.read()) == 1 and len(rig.sink.receipts) == 1
    rig.clock.advance(1)
    assert len(smsc.read()) == 1 and len(rig.sink.receipts) == 2
    strict = Rig(max_receiving_rate=1, extra_traffic_policy=2)
    smsc = strict.bound()
    smsc.send(receipt_pdu(1))
    smsc.send(receipt_pdu(2))
    answers = smsc.read()
    assert [a.status for a in answers] == [pdu.ESME_ROK, pdu.ESME_RTHROTTLED]


def test_deliveries_before_the_bind_completes_are_refused():
    rig = Rig()
    rig.link.start()
    smsc = rig.net.smsc
    smsc.read()
    smsc.send(receipt_pdu())
    [answer] = smsc.read()
    assert answer.status == pdu.ESME_RINVBNDSTS


# -- the manager --------------------------------------------------------------------------------------


def test_the_manager_follows_the_table():
    clock = Clock()
    net = Net()
    sink = Sink()
    manager = SmppLinkManager(None, clock, sink, RateLimiter(clock), EventBus(), connect=net.connect)
    a = LinkSettings(id=1, name="a", host="a.example", port=2775)
    b = LinkSettings(id=2, name="b", host="b.example", port=2775, mode="receiver")
    manager.apply([a, b])
    assert len(net.connections) == 2
    for smsc in net.connections:
        smsc.bind()
    assert manager.is_bound(1) and not manager.is_bound(2)  # a receiver link does not send
    assert manager.bound_links() == [1, 2] and manager.settings_of(1) is a
    manager.apply([LinkSettings(id=1, name="a", host="a.example", port=2775, window_size=64), b])
    assert not net.connections[0].transport.disconnecting  # not a connection setting
    assert manager.settings_of(1).window_size == 64
    manager.apply([LinkSettings(id=1, name="a", host="a.example", port=2775, password="new"), b])
    assert net.connections[0].transport.disconnecting
    manager.apply([a])
    [unbind] = net.connections[1].read()
    assert isinstance(unbind, pdu.Unbind) and 2 not in manager.links
    assert [s["name"] for s in manager.status()] == ["a"] and manager.status(9) is None


def test_the_manager_needs_a_way_to_connect():
    with pytest.raises(ValueError, match="reactor or a connect"):
        SmppLinkManager(None, Clock(), Sink(), RateLimiter(Clock()), EventBus())
