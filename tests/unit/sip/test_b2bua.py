"""The B2BUA without sockets: the real transaction layer, a test clock, and
stubs for identification, authorisation, routing and records."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from switchd.core.calls import CallRegistry
from switchd.core.events import EventBus
from switchd.sip.b2bua import B2BUA, Origin
from switchd.sip.message import Request, Response, parse_datagram
from switchd.sip.transaction import Destination, TransactionLayer

A = Destination("udp", "192.0.2.10", 5060)
B = Destination("udp", "198.51.100.20", 5060)


@dataclass
class Authz:
    account_id: int = 7
    service_id: int = 3
    currency: str = "EUR"
    rate: object = None
    max_seconds: int | None = None


@dataclass(frozen=True)
class Candidate:
    trunk_id: int
    destination: Destination
    number: str
    name: str = "vendor"


class Lease:
    def __init__(self, router):
        self.router = router

    def release(self):
        self.router.released += 1


class Router:
    def __init__(self, candidates):
        self.candidates = candidates
        self.released = 0
        self.account_released = 0

    def route(self, service_id, callee):
        return succeed(list(self.candidates))

    def acquire(self, candidate):
        return Lease(self)

    def acquire_account(self, account_id, call_limit, cps_limit=0):
        router = self

        class AccountLease:
            def release(self):
                router.account_released += 1

        return AccountLease()

    def is_failover(self, status):
        return status in (408, 480, 500, 502, 503, 504)

    @staticmethod
    def retry_after(refusals):
        return 1


class Harness:
    def __init__(self, max_seconds=None, candidates=None):
        self.clock = Clock()
        self.clock.advance(1000)
        self.sent: list[tuple[object, Destination]] = []
        self.answered, self.ended = [], []
        self.layer = TransactionLayer(self.clock, self.send, self.on_request, self.on_stray,
                                      via_sent_by=lambda d: ("203.0.113.1", 5060))
        self.registry = CallRegistry(EventBus(), self.clock)
        self.router = Router(candidates or [Candidate(5, B, "4420712345")])

        async def on_answer(call):
            self.answered.append(call)

        async def on_end(call):
            self.ended.append(call)

        async def authorize(origin, callee):
            return Authz(max_seconds=max_seconds)

        self.b2bua = B2BUA(
            self.clock, self.layer, self.registry,
            contact=lambda d: ("203.0.113.1", 5060),
            identify=lambda request, source: Origin(service_id=3, kind="trunk", trunk_id=1),
            authorize=authorize, router=self.router, on_answer=on_answer, on_end=on_end,
        )

    def send(self, message, destination):
        self.sent.append((parse_datagram(message.to_bytes()), destination))

    def on_request(self, request, tx):
        to = request.to_addr
        if request.method == "INVITE" and not (to and to.tag):
            self.b2bua.invite(request, tx)
        elif request.method == "CANCEL":
            self.b2bua.cancel(request, tx)
        else:
            assert self.b2bua.in_dialog(request, tx)

    def on_stray(self, message, source):
        if isinstance(message, Request) and message.method == "ACK":
            self.b2bua.ack(message)

    def take(self, where: Destination, what: str) -> list:
        """Messages sent to ``where`` whose first line starts with ``what``."""
        found = [m for m, d in self.sent if d == where and _first_line(m).startswith(what)]
        return found

    def receive(self, text: str, source: Destination) -> None:
        self.layer.receive(parse_datagram(text.encode()), source)


def _first_line(message) -> str:
    return message.to_bytes().split(b"\r\n", 1)[0].decode()


INVITE = (
    "INVITE sip:4420712345@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKa1;rport\r\n"
    "From: \"Alice\" <sip:442070001@192.0.2.10>;tag=a1\r\nTo: <sip:4420712345@203.0.113.1>\r\n"
    "Call-ID: a-leg\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@192.0.2.10:5060>\r\nMax-Forwards: 70\r\n"
    "{extra}Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n"
)


def respond_b(h: Harness, status: int, reason: str, extra: str = "", tag: str = "b1") -> None:
    [invite] = h.take(B, "INVITE")
    lines = [f"SIP/2.0 {status} {reason}"] + [f"Via: {v}" for v in invite.get_all("Via")] + [
        f"From: {invite.get('From')}", f"To: {invite.get('To')};tag={tag}", f"Call-ID: {invite.call_id}",
        f"CSeq: {invite.get('CSeq')}", "Contact: <sip:vendor@198.51.100.20:5060>",
    ]
    h.receive("\r\n".join(lines) + f"\r\n{extra}Content-Length: 0\r\n\r\n", B)


def answered_call(h: Harness, extra_200: str = "", invite_extra: str = "") -> Response:
    h.receive(INVITE.format(extra=invite_extra), A)
    [b_invite] = h.take(B, "INVITE")
    assert b_invite.call_id != "a-leg" and b_invite.get("Max-Forwards") == "69"
    assert b_invite.from_addr.display_name == "Alice" and b_invite.body == b"v=0\n"
    respond_b(h, 180, "Ringing")
    respond_b(h, 200, "OK", extra_200)
    [ok] = h.take(A, "SIP/2.0 200")
    return ok


def ack_from_a(h: Harness, ok: Response) -> None:
    h.receive(
        "ACK sip:switchd@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKack\r\n"
        f"From: {ok.get('From')}\r\nTo: {ok.get('To')}\r\nCall-ID: a-leg\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        A,
    )


def test_a_call_goes_through_and_both_legs_end_on_bye():
    h = Harness()
    ok = answered_call(h)
    assert h.take(A, "SIP/2.0 180") and h.take(B, "ACK")
    assert ok.to_addr.tag and ok.get("Contact") == "<sip:switchd@203.0.113.1:5060>"
    assert [c.state for c in h.answered] == ["answered"]
    ack_from_a(h, ok)
    h.receive(
        "BYE sip:switchd@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKbye\r\n"
        f"From: {ok.get('From')}\r\nTo: {ok.get('To')}\r\nCall-ID: a-leg\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        A,
    )
    assert h.take(A, "SIP/2.0 200") and h.take(B, "BYE")
    [call] = h.ended
    assert (call.hangup_side, call.state) == ("caller", "ended") and h.router.released == 1
    assert h.router.account_released == 1
    assert len(h.b2bua) == 0 and len(h.registry) == 0


def test_the_200_is_resent_to_a_udp_caller_until_its_ack():
    h = Harness()
    ok = answered_call(h)
    h.clock.advance(0.5)
    h.clock.advance(1.0)
    assert len(h.take(A, "SIP/2.0 200")) == 3
    ack_from_a(h, ok)
    h.clock.advance(10)
    assert len(h.take(A, "SIP/2.0 200")) == 3


def test_no_ack_ends_the_call():
    h = Harness()
    answered_call(h)
    for _ in range(40):
        h.clock.advance(1)
    assert h.ended and h.ended[0].reason == "no ACK" and h.take(B, "BYE")


def test_the_balance_cuts_the_call_just_before_max_seconds():
    h = Harness(max_seconds=30)
    ok = answered_call(h)
    ack_from_a(h, ok)
    h.clock.advance(29.4)
    assert not h.ended
    h.clock.advance(0.2)
    assert h.ended[0].reason == "max duration (balance)"
    assert h.take(A, "BYE") and h.take(B, "BYE")


def test_session_timer_ends_a_call_nobody_refreshes():
    h = Harness()
    ok = answered_call(h, extra_200="Session-Expires: 120;refresher=uac\r\n")
    ack_from_a(h, ok)
    assert ok.get("Session-Expires") == "120;refresher=uac"
    h.clock.advance(87)
    assert not h.ended
    h.clock.advance(2)
    assert h.ended[0].reason == "session timer expired" and h.take(A, "BYE") and h.take(B, "BYE")


def test_failover_then_the_callee_is_busy():
    second = Destination("udp", "198.51.100.30", 5060)
    h = Harness(candidates=[Candidate(5, B, "4420712345"), Candidate(6, second, "4420712345", "other")])
    h.receive(INVITE.format(extra=""), A)
    respond_b(h, 503, "Service Unavailable")
    assert h.take(B, "ACK")  # the transaction layer ACKs the non-2xx itself
    [b2] = h.take(second, "INVITE")
    lines = ["SIP/2.0 486 Busy Here"] + [f"Via: {v}" for v in b2.get_all("Via")] + [
        f"From: {b2.get('From')}", f"To: {b2.get('To')};tag=z", f"Call-ID: {b2.call_id}", f"CSeq: {b2.get('CSeq')}"]
    h.receive("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n", second)
    assert h.take(A, "SIP/2.0 486")
    assert h.ended[0].sip_code == 486 and h.ended[0].trunk_id == 6 and h.router.released == 2


def test_cancel_before_answer():
    h = Harness()
    h.receive(INVITE.format(extra=""), A)
    respond_b(h, 180, "Ringing")
    h.receive(
        "CANCEL sip:4420712345@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKa1;rport\r\n"
        "From: \"Alice\" <sip:442070001@192.0.2.10>;tag=a1\r\nTo: <sip:4420712345@203.0.113.1>\r\n"
        "Call-ID: a-leg\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
        A,
    )
    assert h.take(A, "SIP/2.0 200") and h.take(A, "SIP/2.0 487") and h.take(B, "CANCEL")
    assert (h.ended[0].sip_code, h.ended[0].hangup_side) == (487, "caller")


@pytest.mark.parametrize("method", ["INFO", "UPDATE"])
def test_in_dialog_requests_cross_to_the_other_leg(method):
    h = Harness()
    ok = answered_call(h)
    ack_from_a(h, ok)
    h.receive(
        f"{method} sip:switchd@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKi1\r\n"
        f"From: {ok.get('From')}\r\nTo: {ok.get('To')}\r\nCall-ID: a-leg\r\nCSeq: 5 {method}\r\n"
        "Content-Type: application/dtmf-relay\r\nContent-Length: 10\r\n\r\nSignal=5\r\n",
        A,
    )
    [out] = h.take(B, method)
    assert out.call_id != "a-leg" and out.body == b"Signal=5\r\n"
    lines = ["SIP/2.0 200 OK"] + [f"Via: {v}" for v in out.get_all("Via")] + [
        f"From: {out.get('From')}", f"To: {out.get('To')}", f"Call-ID: {out.call_id}", f"CSeq: {out.get('CSeq')}"]
    h.receive("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n", B)
    answers = [m for m in h.take(A, "SIP/2.0 200") if m.cseq.method == method]
    assert len(answers) == 1


def test_a_loop_is_refused():
    h = Harness()
    h.receive(INVITE.format(extra=""), A)
    [b_invite] = h.take(B, "INVITE")
    looped = b_invite.to_bytes().decode().replace(
        "Via: ", "Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bKloop\r\nVia: ", 1
    )
    h.layer.receive(parse_datagram(looped.encode()), B)
    assert h.take(B, "SIP/2.0 482")


def delivery_harness(**redirects):
    from switchd.sip.b2bua import Contact, Delivery
    from switchd.sip.message import URI

    desk = Destination("udp", "10.0.0.21", 5060)
    phone = Destination("udp", "10.0.0.22", 5062)
    h = Harness()

    async def deliver(callee, caller=None):
        return Delivery(service_id=9, contacts=[Contact(URI("sip", "10.0.0.21", "desk", None, 5060), desk),
                                               Contact(URI("sip", "10.0.0.22", "phone", None, 5062), phone)],
                        no_answer_seconds=15, **redirects)

    h.b2bua.deliver = deliver
    return h, desk, phone


def answer_fork(h, where, status, reason, tag):
    [invite] = h.take(where, "INVITE")
    lines = [f"SIP/2.0 {status} {reason}"] + [f"Via: {v}" for v in invite.get_all("Via")] + [
        f"From: {invite.get('From')}", f"To: {invite.get('To')};tag={tag}", f"Call-ID: {invite.call_id}",
        f"CSeq: {invite.get('CSeq')}", f"Contact: <sip:x@{where.host}:{where.port}>"]
    h.receive("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n", where)


def test_incoming_rings_every_device_and_the_first_answer_wins():
    h, desk, phone = delivery_harness()
    h.receive(INVITE.format(extra=""), A)
    assert h.take(desk, "INVITE") and h.take(phone, "INVITE") and not h.take(B, "INVITE")
    answer_fork(h, phone, 180, "Ringing", "p")
    answer_fork(h, desk, 200, "OK", "d")
    assert h.take(A, "SIP/2.0 200") and h.take(phone, "CANCEL")
    assert h.ended == [] and h.answered[0].direction == "inbound" and h.answered[0].service_id == 9


def test_incoming_busy_everywhere_is_redirected():
    h, desk, phone = delivery_harness(busy="4420712345")
    h.receive(INVITE.format(extra=""), A)
    answer_fork(h, desk, 486, "Busy Here", "d")
    assert not h.take(B, "INVITE")  # the other device still rings
    answer_fork(h, phone, 486, "Busy Here", "p")
    [out] = h.take(B, "INVITE")
    assert out.uri.user == "4420712345"


def test_incoming_no_answer_is_redirected_or_480():
    h, desk, phone = delivery_harness(no_answer="4420712345")
    h.receive(INVITE.format(extra=""), A)
    answer_fork(h, desk, 180, "Ringing", "d")
    answer_fork(h, phone, 180, "Ringing", "p")  # CANCEL needs a provisional first (RFC 3261 9.1)
    h.clock.advance(15)
    assert h.take(desk, "CANCEL") and h.take(phone, "CANCEL") and h.take(B, "INVITE")
    h2, _, _ = delivery_harness()
    h2.receive(INVITE.format(extra=""), A)
    h2.clock.advance(15)
    assert h2.take(A, "SIP/2.0 480") and h2.ended[0].hangup_side == "callee"


def test_overload_is_shed_with_503_before_any_work():
    h = Harness()
    h.b2bua.max_calls_in_setup = 1
    h.receive(INVITE.format(extra=""), A)  # rings: one call in set-up
    second = INVITE.format(extra="").replace("a-leg", "second").replace("z9hG4bKa1", "z9hG4bKa2")
    h.receive(second, A)
    [refused] = [m for m in h.take(A, "SIP/2.0 503")]
    assert refused.get("Retry-After") == "1" and refused.call_id == "second"
    assert len(h.take(B, "INVITE")) == 1
