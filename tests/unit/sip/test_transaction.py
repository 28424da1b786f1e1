"""Unit tests of the sans-IO SIP transaction layer (RFC 3261 §17, RFC 6026)."""

from __future__ import annotations

import pytest
from twisted.internet import task

from switchd.sip.message import (
    Message,
    Request,
    Response,
    make_response,
    parse_datagram,
)
from switchd.sip.transaction import (
    ClientTransaction,
    Destination,
    FailureReason,
    ServerTransaction,
    State,
    TransactionLayer,
)

UDP = Destination("udp", "192.0.2.10", 5060)
TCP = Destination("tcp", "192.0.2.10", 5060)
PEER = Destination("udp", "198.51.100.7", 5070)
STEP = 1 / 16  # exact in binary floating point, like every default timer but 200 ms


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def wire(text: str) -> Message:
    """Parse a message written with LF line ends, as the transport would."""
    return parse_datagram(text.replace("\n", "\r\n").encode())


def incoming(
    method: str = "INVITE",
    branch: str | None = "z9hG4bKin1",
    *,
    host: str = "198.51.100.7",
    port: int = 5070,
    cseq: int = 1,
    cseq_method: str | None = None,
    to_tag: str | None = None,
    call_id: str = "c1@198.51.100.7",
    rport: bool = False,
    transport: str = "UDP",
) -> Request:
    """A request as received from the network."""
    via = f"SIP/2.0/{transport} {host}:{port}"
    if branch is not None:
        via += f";branch={branch}"
    if rport:
        via += ";rport"
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    message = wire(
        f"{method} sip:bob@example.com SIP/2.0\n"
        f"Via: {via}\n"
        "Max-Forwards: 70\n"
        'From: "Alice" <sip:alice@example.com>;tag=alice1\n'
        f"To: {to}\n"
        f"Call-ID: {call_id}\n"
        f"CSeq: {cseq} {cseq_method or method}\n"
        f"Contact: <sip:alice@{host}:{port}>\n"
        "Content-Length: 0\n\n"
    )
    assert isinstance(message, Request)
    return message


def outgoing(method: str = "INVITE", *, via: str | None = "SIP/2.0/UDP 192.0.2.1:5060", cseq: int = 314159) -> Request:
    """A request the TU wants to send (Via without branch, two Route headers)."""
    lines = [f"{method} sip:bob@biloxi.example.com SIP/2.0"]
    if via is not None:
        lines.append(f"Via: {via}")
    lines += [
        "Max-Forwards: 70",
        "Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
        "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
        "To: Bob <sip:bob@biloxi.example.com>",
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:alice@192.0.2.1>",
        "Content-Length: 0",
        "",
        "",
    ]
    message = wire("\n".join(lines))
    assert isinstance(message, Request)
    return message


def reply(request: Request, code: int, to_tag: str | None = None) -> Response:
    """A response to ``request`` as received from the network."""
    message = parse_datagram(make_response(request, code, to_tag=to_tag).to_bytes())
    assert isinstance(message, Response)
    return message


class ClientTU:
    """Records what a client transaction reports."""

    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.timeouts: list[ClientTransaction] = []
        self.errors: list[tuple[ClientTransaction, Exception]] = []

    def on_response(self, response: Response, tx: ClientTransaction) -> None:
        self.responses.append(response)

    def on_timeout(self, tx: ClientTransaction) -> None:
        self.timeouts.append(tx)

    def on_transport_error(self, tx: ClientTransaction, error: Exception) -> None:
        self.errors.append((tx, error))

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


class Harness:
    """A layer on a task.Clock with a recording transport and TU."""

    def __init__(self, **options: object) -> None:
        self.clock = task.Clock()
        self.sent: list[tuple[Message, Destination, float]] = []
        self.send_error: Exception | None = None
        self.redirect: Destination | None = None  # what send() reports it really used
        self.requests: list[tuple[Request, ServerTransaction]] = []
        self.strays: list[tuple[Message, Destination]] = []
        self.failures: list[tuple[ServerTransaction, FailureReason, Exception | None]] = []
        self.layer = TransactionLayer(
            self.clock, self.send, self.on_request, self.on_stray,
            on_server_failure=self.on_failure, **options,  # type: ignore[arg-type]
        )
        self.tu = ClientTU()

    def send(self, message: Message, destination: Destination) -> Destination:
        if self.send_error is not None:
            raise self.send_error
        parse_datagram(message.to_bytes())  # everything sent must be valid on the wire
        used = self.redirect or destination
        self.sent.append((message, used, self.clock.seconds()))
        return used

    def on_request(self, request: Request, tx: ServerTransaction) -> None:
        self.requests.append((request, tx))

    def on_stray(self, message: Message, source: Destination) -> None:
        self.strays.append((message, source))

    def on_failure(self, tx: ServerTransaction, reason: FailureReason, error: Exception | None) -> None:
        self.failures.append((tx, reason, error))

    def request(self, request: Request, destination: Destination = UDP, **kw: object) -> ClientTransaction:
        tu = self.tu
        return self.layer.request(request, destination, tu.on_response, tu.on_timeout, **kw)  # type: ignore[arg-type]

    def run(self, until: float) -> None:
        """Advance the clock to ``until`` in small exact steps, so send times are recorded exactly."""
        while self.clock.seconds() < until:
            self.clock.advance(min(STEP, until - self.clock.seconds()))

    def times(self, what: str) -> list[float]:
        """Times at which requests of method ``what`` (or responses with status ``what``) were sent."""
        return [t for m, _, t in self.sent if _label(m) == what]

    def labels(self) -> list[str]:
        return [_label(m) for m, _, _ in self.sent]

    def last(self) -> Message:
        return self.sent[-1][0]


def _label(message: Message) -> str:
    return message.method if isinstance(message, Request) else str(message.status)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------
# Client INVITE (RFC 3261 §17.1.1)
# --------------------------------------------------------------------------


def test_invite_client_timer_a_doubles_without_cap_until_timer_b():
    h = Harness()
    tx = h.request(outgoing())
    assert tx.state is State.CALLING
    h.run(31.9)
    assert h.times("INVITE") == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert h.tu.timeouts == []
    h.run(32)
    assert h.tu.timeouts == [tx]
    assert tx.state is State.TERMINATED and tx.failure is FailureReason.TIMEOUT
    h.run(100)
    assert len(h.sent) == 7
    assert len(h.layer) == 0 and h.clock.getDelayedCalls() == []


def test_invite_client_timers_follow_t1():
    h = Harness(t1=0.25)
    h.request(outgoing())
    h.run(16)
    assert h.times("INVITE") == [0, 0.25, 0.75, 1.75, 3.75, 7.75, 15.75]
    assert len(h.tu.timeouts) == 1


def test_invite_client_over_reliable_transport_never_retransmits_but_times_out():
    h = Harness()
    tx = h.request(outgoing(), TCP)
    h.run(31.9)
    assert h.times("INVITE") == [0]
    assert h.sent[0][1] == TCP
    h.run(32)
    assert h.tu.timeouts == [tx]


def test_invite_client_provisional_stops_retransmissions_and_timer_b():
    h = Harness()
    tx = h.request(outgoing())
    h.run(1)
    h.layer.receive(reply(tx.request, 180, "bob1"), UDP)
    assert tx.state is State.PROCEEDING
    assert h.tu.statuses == [180]
    assert not tx.timer_active("A") and not tx.timer_active("B")
    h.run(200)
    assert h.times("INVITE") == [0, 0.5]
    assert h.tu.timeouts == []
    assert len(h.layer) == 1  # Proceeding has no timer of its own (§17.1.1.2)
    h.layer.receive(reply(tx.request, 183, "bob1"), UDP)
    assert h.tu.statuses == [180, 183]
    tx.terminate()
    assert len(h.layer) == 0 and h.clock.getDelayedCalls() == []


def test_invite_client_builds_ack_for_non_2xx_final():
    h = Harness(user_agent="switchd-test")
    invite = outgoing()
    tx = h.request(invite)
    h.layer.receive(reply(tx.request, 100), UDP)
    busy = reply(tx.request, 486, "bobtag")
    h.layer.receive(busy, UDP)
    assert tx.state is State.COMPLETED
    assert h.tu.statuses == [100, 486]
    ack, destination, _ = h.sent[-1]
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert destination == UDP
    assert str(ack.uri) == "sip:bob@biloxi.example.com"
    assert len(ack.via) == 1 and ack.top_via.branch == tx.branch == tx.request.top_via.branch
    assert ack.call_id == invite.call_id
    assert ack.get("From") == invite.get("From")
    assert ack.to_addr.tag == "bobtag"
    assert ack.to_addr.uri == invite.to_addr.uri
    assert (ack.cseq.number, ack.cseq.method) == (314159, "ACK")
    assert [str(r.uri) for r in ack.routes] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert ack.max_forwards == 70
    assert ack.get("User-Agent") == "switchd-test"


def test_invite_client_completed_absorbs_final_retransmissions_until_timer_d():
    h = Harness()
    tx = h.request(outgoing())
    h.run(0.25)
    busy = reply(tx.request, 486, "bobtag")
    h.layer.receive(busy, UDP)
    h.run(5)
    h.layer.receive(reply(tx.request, 486, "bobtag"), UDP)
    h.layer.receive(reply(tx.request, 486, "bobtag"), UDP)
    assert h.tu.statuses == [486]  # passed up once
    assert h.labels() == ["INVITE", "ACK", "ACK", "ACK"]  # each retransmission re-ACKed
    assert h.times("INVITE") == [0]  # retransmissions stopped
    h.run(32.2)
    assert tx.state is State.COMPLETED
    h.run(32.25)  # Timer D = 32 s after the final
    assert tx.state is State.TERMINATED and len(h.layer) == 0
    assert h.tu.timeouts == []


def test_invite_client_reliable_completed_terminates_at_once():
    h = Harness()
    tx = h.request(outgoing(), TCP)
    h.layer.receive(reply(tx.request, 603, "bobtag"), TCP)
    assert h.labels() == ["INVITE", "ACK"]
    assert tx.state is State.TERMINATED and len(h.layer) == 0
    assert h.tu.statuses == [603]
    assert h.clock.getDelayedCalls() == []


def test_invite_client_accepted_passes_every_2xx_until_timer_m():
    h = Harness()
    tx = h.request(outgoing())
    h.run(0.1)
    ok = reply(tx.request, 200, "bob1")
    h.layer.receive(ok, UDP)
    assert tx.state is State.ACCEPTED
    h.layer.receive(reply(tx.request, 200, "bob1"), UDP)  # retransmission
    h.layer.receive(reply(tx.request, 200, "bob2"), UDP)  # another fork
    h.layer.receive(reply(tx.request, 486, "bob3"), UDP)  # ignored once accepted
    assert h.tu.statuses == [200, 200, 200]
    assert [r.to_addr.tag for r in h.tu.responses] == ["bob1", "bob1", "bob2"]
    assert h.labels() == ["INVITE"]  # the TU acknowledges 2xx, not the transaction
    h.run(32.05)
    assert tx.state is State.ACCEPTED
    h.run(32.125)  # Timer M = 64*T1 after the 2xx
    assert tx.state is State.TERMINATED and len(h.layer) == 0
    late = reply(tx.request, 200, "bob1")
    h.layer.receive(late, UDP)
    assert h.strays == [(late, UDP)]
    assert len(h.tu.responses) == 3


def test_invite_client_accepted_on_reliable_transport_keeps_timer_m():
    h = Harness()
    tx = h.request(outgoing(), TCP)
    h.layer.receive(reply(tx.request, 200, "bob1"), TCP)
    assert tx.state is State.ACCEPTED
    h.run(31.9)
    assert len(h.layer) == 1
    h.run(32)
    assert len(h.layer) == 0


# --------------------------------------------------------------------------
# Client non-INVITE (RFC 3261 §17.1.2)
# --------------------------------------------------------------------------


def test_non_invite_client_timer_e_doubles_up_to_t2_until_timer_f():
    h = Harness()
    tx = h.request(outgoing("OPTIONS"))
    assert tx.state is State.TRYING
    h.run(31.9)
    assert h.times("OPTIONS") == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    h.run(32)
    assert h.tu.timeouts == [tx] and tx.failure is FailureReason.TIMEOUT
    assert len(h.layer) == 0 and h.clock.getDelayedCalls() == []


def test_non_invite_client_proceeding_retransmits_every_t2():
    h = Harness()
    tx = h.request(outgoing("BYE"))
    h.run(0.75)
    h.layer.receive(reply(tx.request, 100), UDP)
    assert tx.state is State.PROCEEDING and h.tu.statuses == [100]
    h.run(31.9)
    assert h.times("BYE") == [0, 0.5, 1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    h.run(32)
    assert h.tu.timeouts == [tx]  # Timer F fires in Proceeding too


def test_non_invite_client_completed_absorbs_until_timer_k():
    h = Harness()
    tx = h.request(outgoing("OPTIONS"))
    h.run(0.5)
    h.layer.receive(reply(tx.request, 200, "x"), UDP)
    assert tx.state is State.COMPLETED
    h.run(2)
    h.layer.receive(reply(tx.request, 200, "x"), UDP)
    assert h.tu.statuses == [200]
    assert h.times("OPTIONS") == [0, 0.5]  # Timer E stopped
    h.run(5.4375)
    assert tx.state is State.COMPLETED
    h.run(5.5)  # Timer K = T4
    assert tx.state is State.TERMINATED and len(h.layer) == 0
    assert h.layer.stats()["absorbed"] >= 1


def test_non_invite_client_reliable_transport():
    h = Harness()
    tx = h.request(outgoing("REGISTER"), TCP)
    h.run(10)
    assert h.times("REGISTER") == [0]  # no Timer E
    h.layer.receive(reply(tx.request, 200, "x"), TCP)
    assert tx.state is State.TERMINATED and len(h.layer) == 0  # Timer K = 0
    assert h.tu.statuses == [200]


def test_response_matching_uses_branch_and_cseq_method():
    h = Harness()
    tx = h.request(outgoing())
    wrong_method = reply(tx.request, 200, "x")
    wrong_method.set("CSeq", "314159 CANCEL")
    h.layer.receive(wrong_method, UDP)
    assert h.tu.responses == []
    other_branch = reply(tx.request, 180, "x")
    other_branch.set("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKother")
    h.layer.receive(other_branch, UDP)
    assert h.tu.responses == [] and tx.state is State.CALLING
    assert h.strays == [(wrong_method, UDP)]  # a stray 2xx goes to the dialog layer; others are dropped


# --------------------------------------------------------------------------
# Client request preparation
# --------------------------------------------------------------------------


def test_request_adds_branch_and_fixes_via_transport():
    h = Harness()
    tx = h.request(outgoing(), TCP)
    via = tx.request.top_via
    assert via.has_magic_cookie and via.branch == tx.branch
    assert via.transport == "TCP" and via.sent_by == ("192.0.2.1", 5060)
    assert h.layer.client_transaction(tx.branch, "INVITE") is tx


def test_request_keeps_existing_rfc3261_branch():
    h = Harness()
    tx = h.request(outgoing(via="SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKmine"))
    assert tx.branch == "z9hG4bKmine"
    with pytest.raises(ValueError):
        h.request(outgoing(via="SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKmine"))


def test_request_without_via_uses_via_sent_by():
    h = Harness(via_sent_by=lambda destination: ("192.0.2.1", 5062))
    tx = h.request(outgoing(via=None), TCP)
    via = tx.request.top_via
    assert (via.transport, via.host, via.port) == ("TCP", "192.0.2.1", 5062)
    assert via.has_magic_cookie and via.has_rport
    with pytest.raises(ValueError):
        Harness().request(outgoing(via=None))


def test_request_rejects_ack_and_incomplete_requests():
    h = Harness()
    with pytest.raises(ValueError):
        h.request(outgoing("ACK"))
    mismatched = outgoing()
    mismatched.set("CSeq", "1 BYE")
    with pytest.raises(ValueError):
        h.request(mismatched)
    no_call_id = outgoing()
    no_call_id.remove("Call-ID")
    with pytest.raises(ValueError):
        h.request(no_call_id)
    assert len(h.layer) == 0


def test_send_ack_adds_a_branch_and_reports_transport_errors():
    h = Harness()
    ack = outgoing("ACK")
    assert h.layer.send_ack(ack, UDP) is True
    assert h.last() is ack and ack.top_via.has_magic_cookie
    h.send_error = OSError("unreachable")
    assert h.layer.send_ack(outgoing("ACK"), UDP) is False
    with pytest.raises(ValueError):
        h.layer.send_ack(outgoing("BYE"), UDP)


def test_client_follows_the_transport_to_tcp():
    # RFC 3261 §18.1.1: the transport may send a large request over TCP.
    h = Harness()
    h.redirect = TCP
    invite = h.request(outgoing(), UDP)
    options = h.request(outgoing("OPTIONS"), UDP)
    h.redirect = None
    assert invite.destination == TCP and invite.reliable and options.reliable
    h.run(10)
    assert h.labels() == ["INVITE", "OPTIONS"]  # no Timer A or E
    h.layer.receive(reply(invite.request, 486, "b"), TCP)
    assert h.sent[-1][1] == TCP and h.labels()[-1] == "ACK"
    assert invite.state is State.TERMINATED  # Timer D = 0
    h.layer.receive(reply(options.request, 200, "b"), TCP)
    assert len(h.layer) == 0  # Timer K = 0


# --------------------------------------------------------------------------
# Client transport errors
# --------------------------------------------------------------------------


def test_transport_error_on_first_send_is_reported():
    h = Harness()
    h.send_error = OSError("no route")
    tx = h.request(outgoing(), on_transport_error=h.tu.on_transport_error)
    assert tx.state is State.TERMINATED
    assert h.tu.errors == [(tx, h.send_error)] and h.tu.timeouts == []
    assert len(h.layer) == 0 and h.clock.getDelayedCalls() == []
    assert h.layer.stats()["transport_errors"] == 1


def test_transport_error_falls_back_to_on_timeout_with_reason():
    h = Harness()
    tx = h.request(outgoing("OPTIONS"))
    h.send_error = ConnectionRefusedError()
    h.run(0.5)  # Timer E retransmission fails
    assert h.tu.timeouts == [tx]
    assert tx.failure is FailureReason.TRANSPORT_ERROR and tx.error is h.send_error
    assert len(h.layer) == 0 and h.clock.getDelayedCalls() == []


def test_transport_error_sending_ack_terminates_completed_transaction():
    h = Harness()
    tx = h.request(outgoing(), on_transport_error=h.tu.on_transport_error)
    h.send_error = OSError("gone")
    h.layer.receive(reply(tx.request, 500, "x"), UDP)
    assert h.tu.statuses == [500]
    assert [e for _, e in h.tu.errors] == [h.send_error]
    assert len(h.layer) == 0


# --------------------------------------------------------------------------
# Client CANCEL (RFC 3261 §9.1)
# --------------------------------------------------------------------------


def test_cancel_is_deferred_until_a_provisional_response():
    h = Harness()
    invite = outgoing()
    tx = h.request(invite)
    assert tx.cancel() is None and tx.cancel_pending
    assert h.labels() == ["INVITE"]
    h.layer.receive(reply(tx.request, 180, "bob1"), UDP)
    cancel_tx = tx.cancel_transaction
    assert cancel_tx is not None and not tx.cancel_pending
    cancel = h.last()
    assert isinstance(cancel, Request) and cancel.method == "CANCEL"
    assert h.sent[-1][1] == UDP
    assert str(cancel.uri) == str(invite.uri)
    assert len(cancel.via) == 1 and cancel.top_via.branch == tx.branch
    assert cancel.call_id == invite.call_id
    assert cancel.get("From") == invite.get("From")
    assert cancel.get("To") == invite.get("To") and cancel.to_addr.tag is None
    assert (cancel.cseq.number, cancel.cseq.method) == (314159, "CANCEL")
    assert [str(r.uri) for r in cancel.routes] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert tx.cancel() is cancel_tx  # idempotent
    assert h.layer.client_transaction(tx.branch, "CANCEL") is cancel_tx
    # The 200 to CANCEL goes to the CANCEL transaction, the 487 to the INVITE.
    h.layer.receive(reply(cancel, 200, "bob1"), UDP)
    assert h.tu.statuses == [180]
    assert cancel_tx.state is State.COMPLETED
    h.layer.receive(reply(tx.request, 487, "bob1"), UDP)
    assert h.tu.statuses == [180, 487]
    assert h.labels() == ["INVITE", "CANCEL", "ACK"]
    h.run(40)
    assert len(h.layer) == 0


def test_cancel_sent_at_once_in_proceeding_with_own_callbacks():
    h = Harness()
    tx = h.request(outgoing())
    h.layer.receive(reply(tx.request, 100), UDP)
    cancel_tu = ClientTU()
    cancel_tx = tx.cancel(on_response=cancel_tu.on_response, on_timeout=cancel_tu.on_timeout,
                          headers=[("Reason", 'SIP;cause=487;text="Request Terminated"')])
    assert cancel_tx is not None and cancel_tx.method == "CANCEL"
    assert cancel_tx.request.get("Reason") == 'SIP;cause=487;text="Request Terminated"'
    h.run(0.5)
    assert h.times("CANCEL") == [0, 0.5]  # a non-INVITE transaction: Timer E
    h.layer.receive(reply(cancel_tx.request, 200, "b"), UDP)
    assert cancel_tu.statuses == [200]


def test_cancel_after_final_or_of_non_invite():
    h = Harness()
    tx = h.request(outgoing())
    h.layer.receive(reply(tx.request, 404, "b"), UDP)
    assert tx.cancel() is None
    assert "CANCEL" not in h.labels()
    options = h.request(outgoing("OPTIONS"))
    with pytest.raises(ValueError):
        options.cancel()


def test_pending_cancel_dropped_when_final_arrives_first():
    h = Harness()
    tx = h.request(outgoing())
    tx.cancel()
    h.layer.receive(reply(tx.request, 486, "b"), UDP)
    assert not tx.cancel_pending and tx.cancel_transaction is None
    assert "CANCEL" not in h.labels()


def test_invite_destroyed_64_t1_after_unanswered_cancel():
    h = Harness()
    tx = h.request(outgoing(), TCP)
    h.layer.receive(reply(tx.request, 180, "b"), TCP)
    h.run(10)
    cancel_tx = tx.cancel()
    h.layer.receive(reply(cancel_tx.request, 200, "b"), TCP)
    h.run(41.9)
    assert tx.state is State.PROCEEDING and h.tu.timeouts == []
    h.run(42)
    assert h.tu.timeouts == [tx] and tx.failure is FailureReason.TIMEOUT
    assert len(h.layer) == 0


# --------------------------------------------------------------------------
# Server INVITE (RFC 3261 §17.2.1)
# --------------------------------------------------------------------------


def test_server_invite_sends_100_trying_after_200_ms():
    h = Harness(user_agent="switchd-test")
    h.layer.receive(incoming(), PEER)
    (request, tx), = h.requests
    assert tx.state is State.PROCEEDING and tx.request is request
    h.clock.advance(0.19)
    assert h.sent == []
    h.clock.advance(0.02)
    trying, destination, _ = h.sent[0]
    assert trying.status == 100 and destination == PEER
    assert trying.to_addr.tag is None
    assert trying.get("Server") == "switchd-test"
    assert trying.top_via.branch == "z9hG4bKin1"
    h.run(10)
    assert len(h.sent) == 1


def test_server_invite_no_100_when_tu_answers_in_time():
    h = Harness()
    h.layer.receive(incoming(), PEER)
    (request, tx), = h.requests
    h.clock.advance(0.1)
    assert tx.respond(make_response(request, 180, to_tag="b1")) is True
    h.clock.advance(1)
    assert h.labels() == ["180"]


def test_server_invite_retransmission_gets_last_provisional_and_is_absorbed():
    h = Harness()
    h.layer.receive(incoming(), PEER)
    h.layer.receive(incoming(), PEER)  # before any provisional: nothing to resend
    assert h.sent == [] and len(h.requests) == 1
    (request, tx), = h.requests
    tx.respond(make_response(request, 183, to_tag="b1"))
    h.layer.receive(incoming(), PEER)
    assert h.labels() == ["183", "183"]
    assert len(h.requests) == 1 and len(h.layer) == 1


def test_server_invite_timer_g_until_timer_h():
    h = Harness()
    h.layer.receive(incoming(), PEER)
    (request, tx), = h.requests
    tx.respond(make_response(request, 486, to_tag="b1"))
    assert tx.state is State.COMPLETED
    h.run(31.9)
    assert h.times("486") == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert h.failures == []
    h.run(32)
    assert h.failures == [(tx, FailureReason.TIMEOUT, None)]
    assert tx.state is State.TERMINATED and len(h.layer) == 0
    assert h.clock.getDelayedCalls() == []


def test_server_invite_ack_confirms_and_timer_i_cleans_up():
    h = Harness()
    h.layer.receive(incoming(), PEER)
    (request, tx), = h.requests
    tx.respond(make_response(request, 404, to_tag="b1"))
    h.run(1)
    h.layer.receive(incoming(), PEER)  # INVITE retransmission: final resent
    assert h.times("404") == [0, 0.5, 1]
    h.layer.receive(incoming("ACK", to_tag="b1"), PEER)
    assert tx.state is State.CONFIRMED
    h.layer.receive(incoming("ACK", to_tag="b1"), PEER)  # absorbed, not stray
    h.run(5.9)
    assert h.times("404") == [0, 0.5, 1]  # Timer G stopped
    assert h.strays == [] and len(h.requests) == 1
    assert tx.state is State.CONFIRMED
    h.run(6)  # Timer I = T4
    assert tx.state is State.TERMINATED and len(h.layer) == 0 and h.failures == []


def test_server_invite_reliable_transport():
    h = Harness()
    source = Destination("tcp", "198.51.100.7", 40123)
    h.layer.receive(incoming(transport="TCP"), source)
    (request, tx), = h.requests
    tx.respond(make_response(request, 480, to_tag="b1"))
    h.run(20)
    assert h.labels() == ["480"] and h.sent[0][1] == source  # no Timer G, same connection
    h.layer.receive(incoming("ACK", to_tag="b1", transport="TCP"), source)
    assert tx.state is State.TERMINATED and len(h.layer) == 0  # Timer I = 0


def test_server_invite_reliable_transport_timer_h():
    h = Harness()
    source = Destination("tls", "198.51.100.7", 40123)
    h.layer.receive(incoming(transport="TLS"), source)
    (request, tx), = h.requests
    tx.respond(make_response(request, 480, to_tag="b1"))
    h.run(32)
    assert h.failures == [(tx, FailureReason.TIMEOUT, None)]


def test_server_invite_accepted_absorbs_invite_retransmissions_until_timer_l():
    h = Harness()
    h.layer.receive(incoming(), PEER)
    (request, tx), = h.requests
    h.clock.advance(0.1)
    ok = make_response(request, 200, to_tag="b1")
    assert tx.respond(ok) is True
    assert tx.state is State.ACCEPTED
    h.run(4)
    h.layer.receive(incoming(), PEER)
    assert h.labels() == ["200"]  # absorbed: no answer, not passed up
    assert len(h.requests) == 1
    assert tx.respond(ok) is True  # the TU's own 2xx retransmission
    assert tx.respond(make_response(request, 500, to_tag="b1")) is False
    assert h.labels() == ["200", "200"]
    h.run(32.0625)
    assert tx.state is State.ACCEPTED
    h.run(32.125)  # Timer L = 64*T1 after the 2xx
    assert tx.state is State.TERMINATED and len(h.layer) == 0


def test_ack_for_2xx_goes_to_stray_callback():
    h = Harness()
    h.layer.receive(incoming(), PEER)
    (request, tx), = h.requests
    tx.respond(make_response(request, 200, to_tag="b1"))
    ack = incoming("ACK", "z9hG4bKack1", to_tag="b1")
    h.layer.receive(ack, PEER)
    same_branch_ack = incoming("ACK", to_tag="b1")
    h.layer.receive(same_branch_ack, PEER)
    assert h.strays == [(ack, PEER), (same_branch_ack, PEER)]
    assert tx.state is State.ACCEPTED


def test_server_invite_transport_error():
    h = Harness()
    h.layer.receive(incoming(), PEER)
    (request, tx), = h.requests
    h.send_error = OSError("gone")
    assert tx.respond(make_response(request, 180, to_tag="b1")) is False
    assert h.failures == [(tx, FailureReason.TRANSPORT_ERROR, h.send_error)]
    assert tx.state is State.TERMINATED and len(h.layer) == 0


def test_server_accepted_survives_transport_error():
    h = Harness()
    h.layer.receive(incoming(), PEER)
    (request, tx), = h.requests
    h.send_error = OSError("gone")
    tx.respond(make_response(request, 200, to_tag="b1"))
    assert [f[1] for f in h.failures] == [FailureReason.TRANSPORT_ERROR]
    assert tx.state is State.ACCEPTED
    h.layer.receive(incoming(), PEER)
    assert len(h.requests) == 1  # still absorbing retransmissions


def test_per_transaction_failure_hook_overrides_layer_default():
    h = Harness()
    seen = []
    h.layer.on_request = lambda request, tx: setattr(tx, "on_failure", lambda *a: seen.append(a[1]))
    h.layer.receive(incoming(), PEER)
    tx, = h.layer._servers.values()
    tx.respond(make_response(tx.request, 503, to_tag="b"))
    h.run(32)
    assert seen == [FailureReason.TIMEOUT] and h.failures == []


# --------------------------------------------------------------------------
# Server non-INVITE (RFC 3261 §17.2.2)
# --------------------------------------------------------------------------


def test_server_non_invite_never_sends_100_and_absorbs_in_trying():
    h = Harness()
    h.layer.receive(incoming("OPTIONS"), PEER)
    h.run(10)
    assert h.sent == []
    h.layer.receive(incoming("OPTIONS"), PEER)
    assert h.sent == [] and len(h.requests) == 1
    (_, tx), = h.requests
    assert tx.state is State.TRYING


def test_server_non_invite_retransmits_last_response_until_timer_j():
    h = Harness()
    h.layer.receive(incoming("SUBSCRIBE"), PEER)
    (request, tx), = h.requests
    tx.respond(make_response(request, 100))
    assert tx.state is State.PROCEEDING
    h.layer.receive(incoming("SUBSCRIBE"), PEER)
    assert h.labels() == ["100", "100"]
    h.run(1)
    assert tx.respond(make_response(request, 202, to_tag="n1")) is True
    assert tx.state is State.COMPLETED
    assert tx.respond(make_response(request, 500, to_tag="n1")) is False  # second final discarded
    h.layer.receive(incoming("SUBSCRIBE"), PEER)
    assert h.labels() == ["100", "100", "202", "202"]
    assert len(h.requests) == 1
    h.run(32.9)
    assert tx.state is State.COMPLETED
    h.run(33)  # Timer J = 64*T1
    assert tx.state is State.TERMINATED and len(h.layer) == 0
    h.layer.receive(incoming("SUBSCRIBE"), PEER)  # now it is a new transaction
    assert len(h.requests) == 2


def test_server_non_invite_reliable_terminates_on_final():
    h = Harness()
    source = Destination("tcp", "198.51.100.7", 40000)
    h.layer.receive(incoming("BYE", transport="TCP"), source)
    (request, tx), = h.requests
    tx.respond(make_response(request, 200))
    assert tx.state is State.TERMINATED and len(h.layer) == 0  # Timer J = 0


# --------------------------------------------------------------------------
# Server matching (RFC 3261 §17.2.3) and CANCEL (§9.2)
# --------------------------------------------------------------------------


def test_matching_uses_sent_by_and_method():
    h = Harness()
    h.layer.receive(incoming("OPTIONS"), PEER)
    h.layer.receive(incoming("OPTIONS", host="198.51.100.8"), PEER)
    h.layer.receive(incoming("INFO", cseq_method="INFO"), PEER)
    assert len(h.requests) == 3 and len(h.layer) == 3


def test_cancel_matches_invite_and_goes_to_on_request_by_default():
    h = Harness()
    h.layer.receive(incoming(), PEER)
    (invite, invite_tx), = h.requests
    h.layer.receive(incoming("CANCEL"), PEER)
    cancel, cancel_tx = h.requests[1]
    assert cancel.method == "CANCEL" and cancel_tx is not invite_tx
    assert cancel_tx.cancels is invite_tx
    assert cancel_tx.state is State.TRYING
    # The TU answers both; a retransmitted CANCEL gets the 200 again.
    cancel_tx.respond(make_response(cancel, 200, to_tag="b1"))
    invite_tx.respond(make_response(invite, 487, to_tag="b1"))
    h.layer.receive(incoming("CANCEL"), PEER)
    assert h.labels() == ["200", "487", "200"]
    assert len(h.requests) == 2


def test_cancel_goes_to_on_cancel_hooks():
    cancels = []
    h = Harness(on_cancel=lambda request, tx: cancels.append(("layer", tx)))
    h.layer.receive(incoming(), PEER)
    h.layer.receive(incoming("CANCEL"), PEER)
    assert len(h.requests) == 1
    (_, invite_tx), = h.requests
    assert [(who, tx.cancels) for who, tx in cancels] == [("layer", invite_tx)]
    h.layer.receive(incoming(branch="z9hG4bKin2", call_id="c2"), PEER)
    second = h.requests[1][1]
    second.on_cancel = lambda request, tx: cancels.append(("own", tx))
    h.layer.receive(incoming("CANCEL", branch="z9hG4bKin2", call_id="c2"), PEER)
    assert [who for who, _ in cancels] == ["layer", "own"]


def test_unmatched_cancel_goes_to_on_request():
    h = Harness()
    h.layer.receive(incoming("CANCEL", branch="z9hG4bKnothing"), PEER)
    (cancel, tx), = h.requests
    assert tx.cancels is None
    tx.respond(make_response(cancel, 481, to_tag="x"))
    assert h.labels() == ["481"]


def test_rfc2543_requests_match_without_magic_cookie():
    h = Harness()
    h.layer.receive(incoming(branch=None), PEER)
    (invite, tx), = h.requests
    assert tx.rfc2543
    h.layer.receive(incoming(branch=None), PEER)
    assert len(h.requests) == 1
    h.layer.receive(incoming("CANCEL", branch=None), PEER)
    assert h.requests[1][1].cancels is tx
    tx.respond(make_response(invite, 487, to_tag="b1"))
    h.layer.receive(incoming("ACK", branch=None, to_tag="other"), PEER)
    assert tx.state is State.COMPLETED and len(h.strays) == 1  # To tag not ours: not this transaction
    h.layer.receive(incoming("ACK", branch=None, to_tag="b1"), PEER)
    assert tx.state is State.CONFIRMED
    h.layer.receive(incoming(branch=None, cseq=2), PEER)  # new CSeq: new transaction
    assert len(h.requests) == 3


def test_rfc2543_cancel_must_carry_the_invite_to_tag():
    h = Harness()
    h.layer.receive(incoming(branch=None), PEER)
    h.layer.receive(incoming("CANCEL", branch=None, to_tag="elsewhere"), PEER)
    assert h.requests[1][1].cancels is None


def test_received_and_rport_are_stamped_and_used_for_responses():
    h = Harness()
    nat = Destination("udp", "203.0.113.9", 61000)
    h.layer.receive(incoming("OPTIONS", host="10.0.0.5", port=5060, rport=True), nat)
    (request, tx), = h.requests
    via = request.top_via
    assert via.received == "203.0.113.9" and via.rport == 61000
    assert tx.destination == nat
    tx.respond(make_response(request, 200, to_tag="x"))
    response, destination, _ = h.sent[0]
    assert destination == nat
    assert response.top_via.rport == 61000 and response.top_via.received == "203.0.113.9"


def test_response_without_rport_goes_to_received_address_and_via_port():
    h = Harness()
    h.layer.receive(incoming("OPTIONS", host="10.0.0.5", port=5080), Destination("udp", "203.0.113.9", 61000))
    (request, tx), = h.requests
    assert request.top_via.received == "203.0.113.9" and not request.top_via.has_rport
    assert tx.destination == Destination("udp", "203.0.113.9", 5080)
    h.layer.receive(incoming("INFO"), PEER)
    assert h.requests[1][0].top_via.received is None  # sent-by already right


def test_unmatchable_messages_are_dropped_without_raising():
    h = Harness()
    no_via = incoming("OPTIONS")
    no_via.remove("Via")
    h.layer.receive(no_via, PEER)
    bad_cseq = incoming("OPTIONS", branch=None)
    bad_cseq.set("CSeq", "not a cseq")
    h.layer.receive(bad_cseq, PEER)
    stray_error = reply(outgoing(via="SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKzz"), 486, "b")
    h.layer.receive(stray_error, UDP)
    assert h.requests == [] and h.strays == [] and h.sent == []
    assert len(h.layer) == 0


# --------------------------------------------------------------------------
# TU exceptions, metrics, leaks
# --------------------------------------------------------------------------


def test_tu_exceptions_never_escape():
    def boom(*args: object) -> None:
        raise RuntimeError("TU bug")

    clock = task.Clock()
    sent: list[Message] = []
    layer = TransactionLayer(clock, lambda m, d: sent.append(m), boom, boom, on_server_failure=boom, on_cancel=boom)
    layer.receive(incoming(), PEER)  # on_request raises
    assert len(layer) == 1
    clock.advance(0.2)
    assert [m.status for m in sent] == [100]  # the transaction carries on
    layer.receive(incoming("CANCEL"), PEER)  # on_cancel raises
    layer.receive(incoming("ACK", "z9hG4bKack"), PEER)  # on_stray raises
    tx = layer.request(outgoing(), UDP, boom, boom)
    layer.receive(reply(tx.request, 180, "b"), UDP)  # on_response raises
    assert tx.state is State.PROCEEDING
    other = layer.request(outgoing("OPTIONS"), UDP, boom, boom)
    clock.advance(32)  # on_timeout and on_server_failure raise inside timers
    assert other.state is State.TERMINATED


def test_stats_count_live_transactions_and_events():
    h = Harness()
    h.request(outgoing())
    h.request(outgoing("OPTIONS"))
    h.layer.receive(incoming(), PEER)
    h.layer.receive(incoming("BYE", "z9hG4bKbye"), PEER)
    h.layer.receive(incoming("BYE", "z9hG4bKbye"), PEER)
    stats = h.layer.stats()
    assert len(h.layer) == 4
    assert (stats["client_invite"], stats["client_non_invite"]) == (1, 1)
    assert (stats["server_invite"], stats["server_non_invite"]) == (1, 1)
    assert stats["created"] == 4 and stats["absorbed"] == 1
    h.run(40)
    stats = h.layer.stats()
    assert stats["client_invite"] == stats["client_non_invite"] == 0
    assert stats["timeouts"] == 2 and stats["retransmissions"] > 0


def _transaction_wave(h: Harness, start: int, n: int) -> None:
    """Run ``n`` of each kind of transaction through, ``start`` numbering them."""
    layer = h.layer
    first_request = len(h.requests)
    for i in range(start, start + n):
        invite = h.request(outgoing(cseq=i + 1))
        layer.receive(reply(invite.request, 100), UDP)
        layer.receive(reply(invite.request, 486, f"t{i}"), UDP)
        ok = h.request(outgoing(cseq=i + 1))
        layer.receive(reply(ok.request, 200, f"o{i}"), UDP)
        options = h.request(outgoing("OPTIONS", cseq=i + 1), TCP if i % 2 else UDP)
        layer.receive(reply(options.request, 200, f"p{i}"), UDP)
        h.request(outgoing("MESSAGE", cseq=i + 1))  # never answered: Timer F
        layer.receive(incoming(branch=f"z9hG4bKs{i}", call_id=f"s{i}"), PEER)
        layer.receive(incoming("BYE", f"z9hG4bKb{i}", call_id=f"b{i}"), PEER)
    for request, tx in h.requests[first_request:]:
        code = 603 if request.method == "INVITE" and int(request.call_id[1:]) % 2 == 0 else 200
        tx.respond(make_response(request, code, to_tag="x"))
        if tx.state is State.COMPLETED and tx.is_invite:
            layer.receive(incoming("ACK", request.top_via.branch, call_id=request.call_id, to_tag="x"), PEER)
            assert tx.state is State.CONFIRMED


def test_no_leak_after_thousands_of_transactions():
    # task.Clock re-sorts its pending calls on every callLater, so the
    # transactions go through in waves to keep the test quick.
    h = Harness()
    layer = h.layer
    waves, n = 10, 100
    for wave in range(waves):
        _transaction_wave(h, wave * n, n)
        assert len(layer) == 6 * n - n // 2  # odd OPTIONS over TCP end at once (Timer K = 0)
        h.clock.advance(100)
        assert len(layer) == 0
    assert layer._clients == {} and layer._servers == {}
    assert all(v == 0 for k, v in layer.stats().items() if k.startswith(("client", "server")))
    assert layer.stats()["created"] == 6 * n * waves
    assert h.clock.getDelayedCalls() == []
    assert len(h.tu.timeouts) == n * waves and h.failures == []
