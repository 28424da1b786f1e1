"""The IIF server: a fake callback engine and task.Clock for the rules, then
one exchange over real loopback UDP sockets (port 0)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from switchd.core.callback import CallbackRefused, CallbackRequest, CallbackResult
from switchd.iif.codec import IifRequest
from switchd.iif.server import COUNTERS, IifPeer, IifServer, PeerConfigError, PeerTable

AS = ("192.0.2.10", 7000)
AS2 = ("192.0.2.11", 7000)
STRANGER = ("198.51.100.1", 7000)
PEER = IifPeer("192.0.2.10", 7000, service_id=3, default_caller="+15550001")
PEER2 = IifPeer("192.0.2.11", 7000, service_id=4, external_line_mode=True)
SEED_REQUEST = b"REQUEST: id=1234;user1=100;user2=101;duration=3600;"


@dataclass
class FakeCallback:
    id: str
    request: CallbackRequest
    done: Deferred = field(default_factory=Deferred)
    hangups: list[str] = field(default_factory=list)

    def hangup(self, reason: str = "cancelled") -> None:
        self.hangups.append(reason)

    def end(self, outcome: str = "completed", seconds: int = 0) -> None:
        self.done.callback(CallbackResult(self.id, outcome, seconds))


class FakeEngine:
    """``start`` as the engine's contract: returns a callback, or raises CallbackRefused."""

    def __init__(self) -> None:
        self.started: list[FakeCallback] = []
        self.refuse: Exception | None = None
        self.holding = False
        self.held: list[Deferred] = []

    async def start(self, request: CallbackRequest) -> FakeCallback:
        if self.holding:
            d: Deferred = Deferred()
            self.held.append(d)
            await d
        if self.refuse is not None:
            raise self.refuse
        callback = FakeCallback(f"cb{len(self.started) + 1}", request)
        self.started.append(callback)
        return callback

    def release(self) -> None:
        held, self.held, self.holding = self.held, [], False
        for d in held:
            d.callback(None)


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple]] = []
        self.broken = False

    def write(self, data: bytes, addr: tuple) -> None:
        if self.broken:
            raise OSError("network unreachable")
        self.sent.append((data, addr))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", "127.0.0.1", 5080)

    def take(self) -> list[tuple[bytes, tuple]]:
        sent, self.sent = self.sent, []
        return sent


def make(peers=(PEER, PEER2), **kwargs) -> tuple[IifServer, FakeEngine, FakeTransport, Clock]:
    engine, clock, transport = FakeEngine(), Clock(), FakeTransport()
    server = IifServer(engine, PeerTable(peers), clock, **kwargs)
    server.makeConnection(transport)
    return server, engine, transport, clock


def request(id: str = "1234", **params: str) -> bytes:
    values = {"user1": "100", "user2": "101", "duration": "3600", **params}
    return (f"REQUEST: id={id};" + "".join(f"{k}={v};" for k, v in values.items())).encode()


# -- the normal flow ------------------------------------------------------------------


def test_request_ack_response():
    server, engine, transport, _ = make()
    server.datagramReceived(SEED_REQUEST, AS)
    [callback] = engine.started
    assert callback.request == CallbackRequest(
        service_id=3, user1="100", user2="101", max_seconds=3600, caller_id1="+15550001", caller_id2="+15550001",
        ann_id1="00080002", ann_id2=None, ann_digit2=None, source="iif", reference="1234",
    )
    assert transport.take() == [(b"ACK: id=1234;code=ok", AS)]
    callback.end("completed", 180)
    assert transport.take() == [(b"RESPONSE: id=1234;real_duration=180;", AS)]
    stats = server.stats()
    assert (stats["received"], stats["requests"], stats["accepted"], stats["acks_ok"], stats["responses"]) == (
        1, 1, 1, 1, 1)
    assert (stats["in_progress"], stats["remembered"]) == (0, 1)
    assert server.outcomes == {"completed": 1}


def test_announcements_and_digits_reach_the_engine():
    server, engine, _, _ = make()
    server.datagramReceived(request(ann_id1="11112222", ann_id2="33334444", ann_digit2="42"), AS)
    r = engine.started[0].request
    assert (r.ann_id1, r.ann_id2, r.ann_digit2, r.max_seconds) == ("11112222", "33334444", "42", 3600)


def test_external_line_mode_uses_the_trunks_number_unless_a_default_caller_is_set():
    server, engine, _, _ = make()
    server.datagramReceived(request(), AS2)
    assert (engine.started[0].request.caller_id1, engine.started[0].request.caller_id2) == (None, None)
    assert engine.started[0].request.line_caller is True
    assert engine.started[0].request.service_id == 4
    with_caller = IifPeer("192.0.2.11", 7000, service_id=4, default_caller="777", external_line_mode=True)
    server, engine, _, _ = make(peers=[with_caller])
    server.datagramReceived(request(), AS2)
    assert (engine.started[0].request.caller_id1, engine.started[0].request.caller_id2) == ("777", "777")
    assert engine.started[0].request.line_caller is False


@pytest.mark.parametrize("outcome", ["user1_busy", "user1_no_answer", "user2_failed", "cancelled", "failed"])
def test_failed_callbacks_report_zero_seconds(outcome):
    server, engine, transport, _ = make()
    server.datagramReceived(SEED_REQUEST, AS)
    transport.take()
    engine.started[0].end(outcome, 0)
    assert transport.take() == [(b"RESPONSE: id=1234;real_duration=0;", AS)]
    assert server.outcomes == {outcome: 1}


def test_a_callback_that_errbacks_still_gets_a_response():
    server, engine, transport, _ = make()
    server.datagramReceived(SEED_REQUEST, AS)
    transport.take()
    with capturedLogs() as events:
        engine.started[0].done.errback(RuntimeError("engine bug"))
    assert transport.take() == [(b"RESPONSE: id=1234;real_duration=0;", AS)]
    assert server.counters["errors"] == 1
    assert any(e.get("log_failure") is not None for e in events)


# -- refusals and bad input -------------------------------------------------------------


def test_unknown_peers_are_ignored_counted_and_logged_once():
    server, engine, transport, _ = make()
    with capturedLogs() as events:
        server.datagramReceived(SEED_REQUEST, STRANGER)
        server.datagramReceived(SEED_REQUEST, STRANGER)
        server.datagramReceived(SEED_REQUEST, ("192.0.2.10", 7001))  # the right host, another port
    assert engine.started == [] and transport.sent == []
    assert server.counters["unknown_peer"] == 3
    assert [e["log_format"].split(":")[0] for e in events] == ["IIF datagrams from {host}"] * 2


def test_malformed_requests_get_ack_fail_when_the_id_can_be_read():
    server, engine, transport, _ = make()
    server.datagramReceived(b"REQUEST: id=77;user1=alice;user2=101;duration=5;", AS)
    server.datagramReceived(b"request: id=78;user1=100;user2=101;duration=5;", AS)
    server.datagramReceived(b"REQUEST: id=79;user1=100;user2=101;duration=5;ann_id1=123;", AS)
    server.datagramReceived(b"REQUEST: id=80;user1=\xff;user2=101;duration=5;", AS)
    server.datagramReceived(b"REQUEST: user1=100;user2=101;duration=5;", AS)  # no id: nothing to answer
    server.datagramReceived(b"\x00\x01\x02", AS)
    server.datagramReceived(b"HELLO: id=81;", AS)
    assert engine.started == []
    assert transport.take() == [(f"ACK: id={i};code=fail".encode(), AS) for i in (77, 78, 79, 80)]
    assert server.counters["malformed"] == 7 and server.counters["acks_fail"] == 4


def test_duration_above_the_configured_maximum_fails():
    server, engine, transport, _ = make(max_duration=600)
    server.datagramReceived(request(duration="601"), AS)
    assert engine.started == [] and transport.take() == [(b"ACK: id=1234;code=fail", AS)]
    server.datagramReceived(request(duration="600"), AS)
    assert engine.started[0].request.max_seconds == 600


def test_oversized_datagrams_are_dropped_without_answer():
    server, engine, transport, _ = make(max_datagram=100)
    server.datagramReceived(request(ann_digit2="1" * 31) + b" " * 100, AS)
    server.datagramReceived(b"\xff" * 65507, AS)
    assert engine.started == [] and transport.sent == []
    assert server.counters["oversized"] == 2


def test_acks_and_responses_sent_to_us_are_not_answered():
    server, engine, transport, _ = make()
    server.datagramReceived(b"ACK: id=1;code=fail", AS)
    server.datagramReceived(b"RESPONSE: id=1;real_duration=3;", AS)
    server.datagramReceived(b"ACK: id=1;code=maybe", AS)  # malformed, but not a REQUEST: no answer either
    assert transport.sent == [] and engine.started == []
    assert (server.counters["unexpected"], server.counters["malformed"]) == (2, 1)


def test_refused_requests_get_ack_fail_and_keep_it_on_retransmission():
    server, engine, transport, _ = make()
    engine.refuse = CallbackRefused("insufficient funds for both calls", 402)
    with capturedLogs() as events:
        server.datagramReceived(SEED_REQUEST, AS)
    assert transport.take() == [(b"ACK: id=1234;code=fail", AS)]
    assert "insufficient funds" in events[0]["reason"]
    engine.refuse = None
    server.datagramReceived(SEED_REQUEST, AS)  # a lost ACK fail: the same answer, no call
    assert transport.take() == [(b"ACK: id=1234;code=fail", AS)]
    assert engine.started == []
    assert (server.counters["refused"], server.counters["retransmissions"]) == (1, 1)
    server.datagramReceived(request("1235"), AS)  # a new id is a new attempt
    assert transport.take() == [(b"ACK: id=1235;code=ok", AS)]


def test_an_engine_failure_is_logged_and_answered_fail():
    server, engine, transport, _ = make()
    engine.refuse = RuntimeError("database is gone")
    with capturedLogs() as events:
        server.datagramReceived(SEED_REQUEST, AS)
    assert transport.take() == [(b"ACK: id=1234;code=fail", AS)]
    assert server.counters["errors"] == 1 and server.in_progress == 0
    assert events[0]["log_failure"].check(RuntimeError)


# -- retransmissions and ids ----------------------------------------------------------


def test_retransmission_while_starting_gets_one_ack_at_the_latest_address():
    server, engine, transport, _ = make(peers=[IifPeer("192.0.2.10", 0, service_id=3, default_caller="1")])
    engine.holding = True
    server.datagramReceived(SEED_REQUEST, AS)
    server.datagramReceived(SEED_REQUEST, ("192.0.2.10", 7001))  # the AS resent from a new socket
    assert transport.sent == [] and len(engine.held) == 1
    engine.release()
    assert len(engine.started) == 1
    assert transport.take() == [(b"ACK: id=1234;code=ok", ("192.0.2.10", 7001))]
    engine.started[0].end("completed", 5)
    assert transport.take() == [(b"RESPONSE: id=1234;real_duration=5;", ("192.0.2.10", 7001))]


def test_retransmission_in_progress_gets_the_same_ack_and_no_second_call():
    server, engine, transport, _ = make()
    server.datagramReceived(SEED_REQUEST, AS)
    server.datagramReceived(SEED_REQUEST + b"\r\n", AS)  # the same request, spelt differently
    assert len(engine.started) == 1
    assert transport.take() == [(b"ACK: id=1234;code=ok", AS)] * 2
    assert server.counters["retransmissions"] == 1


def test_retransmission_after_the_end_replays_ack_and_response_within_the_window():
    server, engine, transport, clock = make(remember_seconds=600)
    server.datagramReceived(SEED_REQUEST, AS)
    engine.started[0].end("completed", 42)
    transport.take()
    clock.advance(599)
    server.datagramReceived(SEED_REQUEST, AS)
    assert transport.take() == [(b"ACK: id=1234;code=ok", AS), (b"RESPONSE: id=1234;real_duration=42;", AS)]
    assert len(engine.started) == 1
    clock.advance(2)  # the window is over: the same id is a new callback
    server.datagramReceived(SEED_REQUEST, AS)
    assert len(engine.started) == 2
    assert transport.take() == [(b"ACK: id=1234;code=ok", AS)]
    assert (server.in_progress, server.remembered) == (1, 0)


def test_the_same_id_with_other_parameters_while_in_progress_fails():
    server, engine, transport, _ = make()
    server.datagramReceived(SEED_REQUEST, AS)
    server.datagramReceived(request(user2="999"), AS)
    assert transport.take() == [(b"ACK: id=1234;code=ok", AS), (b"ACK: id=1234;code=fail", AS)]
    assert len(engine.started) == 1 and server.counters["conflicts"] == 1
    engine.started[0].end("completed", 9)
    assert transport.take() == [(b"RESPONSE: id=1234;real_duration=9;", AS)]


def test_the_same_id_with_other_parameters_after_the_end_is_a_new_callback():
    server, engine, transport, _ = make()
    server.datagramReceived(SEED_REQUEST, AS)
    engine.started[0].end("completed", 9)
    transport.take()
    server.datagramReceived(request(user2="999"), AS)
    assert len(engine.started) == 2 and engine.started[1].request.user2 == "999"
    assert transport.take() == [(b"ACK: id=1234;code=ok", AS)]
    engine.started[1].end("user2_busy", 0)
    assert transport.take() == [(b"RESPONSE: id=1234;real_duration=0;", AS)]
    server.datagramReceived(request(user2="999"), AS)  # now the memory holds the new one
    assert transport.take() == [(b"ACK: id=1234;code=ok", AS), (b"RESPONSE: id=1234;real_duration=0;", AS)]


def test_ids_are_per_peer():
    server, engine, transport, _ = make()
    server.datagramReceived(SEED_REQUEST, AS)
    server.datagramReceived(SEED_REQUEST, AS2)
    assert [c.request.service_id for c in engine.started] == [3, 4]
    assert transport.take() == [(b"ACK: id=1234;code=ok", AS), (b"ACK: id=1234;code=ok", AS2)]


# -- memory bounds --------------------------------------------------------------------


def test_in_progress_callbacks_are_bounded():
    server, engine, transport, _ = make(max_in_progress=2)
    for i in range(3):
        server.datagramReceived(request(str(i)), AS)
    assert len(engine.started) == 2
    assert transport.take()[-1] == (b"ACK: id=2;code=fail", AS)
    assert server.counters["overload"] == 1
    engine.started[0].end("completed", 1)
    server.datagramReceived(request("2"), AS)  # not remembered: a retry may succeed
    assert len(engine.started) == 3 and transport.take()[-1] == (b"ACK: id=2;code=ok", AS)


def test_remembered_ids_are_bounded_oldest_first():
    server, engine, transport, _ = make(max_remembered=3)
    for i in range(5):
        server.datagramReceived(request(str(i)), AS)
        engine.started[-1].end("completed", i)
    assert server.remembered == 3
    transport.take()
    server.datagramReceived(request("4"), AS)
    assert transport.take()[-1] == (b"RESPONSE: id=4;real_duration=4;", AS)
    server.datagramReceived(request("0"), AS)  # forgotten: a new callback
    assert len(engine.started) == 6


def test_no_memory_at_all():
    server, engine, _, _ = make(remember_seconds=0)
    server.datagramReceived(SEED_REQUEST, AS)
    engine.started[0].end("completed", 1)
    assert server.remembered == 0
    server.datagramReceived(SEED_REQUEST, AS)
    assert len(engine.started) == 2


# -- output failures, shutdown, metrics ------------------------------------------------


def test_send_errors_are_counted_not_raised():
    server, _, transport, _ = make()
    transport.broken = True
    server.datagramReceived(SEED_REQUEST, AS)
    assert server.counters["send_errors"] == 1 and server.counters["acks_ok"] == 0
    transport.broken = False
    server.datagramReceived(SEED_REQUEST, AS)  # the AS resends: it gets the ACK now
    assert transport.take() == [(b"ACK: id=1234;code=ok", AS)]


def test_a_response_after_the_port_closed_is_counted():
    server, engine, _, _ = make()
    server.datagramReceived(SEED_REQUEST, AS)
    server.doStop()
    server.transport = None
    engine.started[0].end("completed", 3)
    assert server.counters["send_errors"] == 1


def test_hangup_all_ends_the_live_callbacks():
    server, engine, _, _ = make()
    server.datagramReceived(request("a"), AS)
    server.datagramReceived(request("b"), AS)
    engine.started[1].end("completed", 2)
    assert server.hangup_all() == 1
    assert engine.started[0].hangups == ["shutdown"] and engine.started[1].hangups == []


def test_stats_and_prometheus():
    registry = CollectorRegistry()
    server, engine, _, _ = make(registry=registry)
    assert set(server.stats()) == set(COUNTERS) | {"in_progress", "remembered"}
    server.datagramReceived(SEED_REQUEST, AS)
    server.datagramReceived(SEED_REQUEST, STRANGER)
    assert registry.get_sample_value("switchd_iif_in_progress") == 1
    engine.started[0].end("user1_busy", 0)
    assert registry.get_sample_value("switchd_iif_datagrams_total", {"result": "unknown_peer"}) == 1
    assert registry.get_sample_value("switchd_iif_requests_total", {"result": "accepted"}) == 1
    assert registry.get_sample_value("switchd_iif_sent_total", {"message": "responses"}) == 1
    assert registry.get_sample_value("switchd_iif_callbacks_total", {"outcome": "user1_busy"}) == 1
    assert registry.get_sample_value("switchd_iif_remembered") == 1
    assert registry.get_sample_value("switchd_iif_send_errors_total") == 0


def test_server_limits_are_checked():
    with pytest.raises(ValueError):
        IifServer(FakeEngine(), PeerTable(), Clock(), max_in_progress=0)


# -- peers ---------------------------------------------------------------------------


def test_peer_settings_are_checked():
    with pytest.raises(PeerConfigError, match="default_caller is required unless external_line_mode is on"):
        IifPeer("192.0.2.1", 5080, service_id=1)
    with pytest.raises(PeerConfigError, match="default_caller is required"):
        IifPeer("192.0.2.1", 5080, service_id=1, default_caller="")
    with pytest.raises(PeerConfigError, match="default_caller 'anonymous' must be digits"):
        IifPeer("192.0.2.1", 5080, service_id=1, default_caller="anonymous")
    with pytest.raises(PeerConfigError, match="port"):
        IifPeer("192.0.2.1", 70000, service_id=1, external_line_mode=True)
    with pytest.raises(PeerConfigError, match="service_id"):
        IifPeer("192.0.2.1", 5080, service_id=0, external_line_mode=True)
    with pytest.raises(PeerConfigError, match="host"):
        IifPeer("", 5080, service_id=1, external_line_mode=True)
    assert IifPeer("192.0.2.1", 5080, service_id=1, default_caller="", external_line_mode=True).caller is None


def test_peer_table():
    exact = IifPeer("2001:db8::1", 5080, service_id=1, external_line_mode=True)
    any_port = IifPeer("2001:0db8:0:0::1", 0, service_id=2, external_line_mode=True)
    v4 = IifPeer("192.0.2.7", 9000, service_id=3, external_line_mode=True)
    table = PeerTable([exact, any_port, v4])
    assert table("2001:db8::1", 5080) is exact
    assert table("2001:db8:0::1", 1234) is any_port
    assert table("::ffff:192.0.2.7", 9000) is v4
    assert table("192.0.2.7", 9001) is None
    assert table("not-an-address", 9000) is None
    assert len(table) == 3 and set(table) == {exact, any_port, v4}
    with pytest.raises(PeerConfigError, match="configured twice"):
        table.replace([v4, IifPeer("::ffff:192.0.2.7", 9000, service_id=9, external_line_mode=True)])
    with pytest.raises(PeerConfigError, match="host must be an IP address"):
        table.replace([IifPeer("as.example.com", 9000, service_id=9, external_line_mode=True)])
    assert len(table) == 3  # a bad reload keeps the old peers
    table.replace([v4])
    assert table("2001:db8::1", 5080) is None and table("192.0.2.7", 9000) is v4


# -- over real UDP sockets ------------------------------------------------------------


class Client(DatagramProtocol):
    def __init__(self) -> None:
        self.received: DeferredQueue = DeferredQueue()

    def datagramReceived(self, data: bytes, addr) -> None:
        self.received.put(data)

    def next(self) -> Deferred:
        return self.received.get().addTimeout(5, reactor)


@pytest_twisted.ensureDeferred
async def test_over_loopback_udp():
    client, stranger = Client(), Client()
    client_port = reactor.listenUDP(0, client, interface="127.0.0.1")
    stranger_port = reactor.listenUDP(0, stranger, interface="127.0.0.1")
    peer = IifPeer("127.0.0.1", client_port.getHost().port, service_id=3, default_caller="100")
    engine = FakeEngine()
    server = IifServer(engine, PeerTable([peer]), reactor)
    server_port = reactor.listenUDP(0, server, interface="127.0.0.1")
    to_server = ("127.0.0.1", server_port.getHost().port)
    try:
        stranger.transport.write(SEED_REQUEST, to_server)
        client.transport.write(SEED_REQUEST, to_server)
        assert await client.next() == b"ACK: id=1234;code=ok"
        assert server.counters["unknown_peer"] == 1 and stranger.received.pending == []
        assert engine.started[0].request.user1 == "100"

        client.transport.write(SEED_REQUEST, to_server)  # a retransmission: the same ACK, no second call
        assert await client.next() == b"ACK: id=1234;code=ok"
        assert len(engine.started) == 1

        engine.started[0].end("completed", 180)
        assert await client.next() == b"RESPONSE: id=1234;real_duration=180;"

        client.transport.write(SEED_REQUEST, to_server)  # after the end: ACK and RESPONSE again
        assert await client.next() == b"ACK: id=1234;code=ok"
        assert await client.next() == b"RESPONSE: id=1234;real_duration=180;"

        client.transport.write(b"REQUEST: id=9;user1=100;user2=101;duration=-1;", to_server)
        assert await client.next() == b"ACK: id=9;code=fail"
        assert len(engine.started) == 1 and stranger.received.pending == []
        assert IifRequest("1234", "100", "101", 3600).encode() == SEED_REQUEST
    finally:
        for port in (client_port, stranger_port, server_port):
            await port.stopListening()
