"""The callback engine over the real transaction layer, originator and relay
(loopback sockets, a test clock): user1 and user2 are played by the test."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest
from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from switchd.billing.rating import Rate, Refusal
from switchd.core.calls import CallRegistry
from switchd.core.callback import CallbackEngine, CallbackRefused, CallbackRequest, combined_max_seconds
from switchd.core.events import EventBus
from switchd.media.relay import MediaRelay, PortAllocator
from switchd.media.sdp import SessionDescription
from switchd.sip.media import MediaManager, MediaPolicy
from switchd.sip.message import parse_datagram
from switchd.sip.originate import Originator
from switchd.sip.transaction import Destination, TransactionLayer

U1 = Destination("udp", "192.0.2.10", 5060)
U2 = Destination("udp", "198.51.100.20", 5060)
RATE = Rate(tariff_plan_id=1, prefix="44", price_per_minute=Decimal("0.6"), connection_fee=Decimal("0"),
            increment_first=1, increment_next=1, currency="EUR")


@dataclass
class Authz:
    account_id: int = 7
    rate: Rate = RATE
    currency: str = "EUR"
    max_seconds: int | None = None
    available: Decimal | None = None
    call_limit: int = 0
    cps_limit: int = 0


@dataclass(frozen=True)
class Candidate:
    trunk_id: int
    destination: Destination
    number: str
    name: str = "vendor"


class Router:
    def __init__(self):
        self.released = 0

    def route(self, service_id, number):
        return succeed([Candidate(1, U1 if number == "111" else U2, number)])

    def acquire(self, candidate):
        router = self

        class Lease:
            def release(self):
                router.released += 1

        return Lease()

    def is_failover(self, status):
        return status in (408, 500, 503)


class Harness:
    def __init__(self, authz=None, refuse=None, line_number=None):
        self.clock = Clock()
        self.clock.advance(1000)
        self.sent = []
        self.answered, self.ended, self.events, self.account_released = [], [], [], 0
        self.layer = TransactionLayer(self.clock, self.send, self.on_request, lambda m, s: None,
                                      via_sent_by=lambda d: ("203.0.113.1", 5060))
        bus = EventBus()
        self.registry = CallRegistry(bus, self.clock)
        self.router = Router()
        self.relay = MediaRelay(reactor, "127.0.0.1", PortAllocator(46000, 46999), clock=self.clock)

        async def on_answer(call):
            self.answered.append(call)

        async def on_end(call):
            self.ended.append(call)

        self.originator = Originator(self.clock, self.layer, self.registry, self.router,
                                     contact=lambda d: ("203.0.113.1", 5060),
                                     media_policy=lambda trunk_id: MediaPolicy(),
                                     on_answer=on_answer, on_end=on_end,
                                     line_number=lambda trunk_id: line_number)
        self.media = MediaManager(self.clock, self.relay, advertise="127.0.0.1", recordings_dir="/nonexistent",
                                  run_in_thread=lambda f: succeed(f()), trunk_policy=lambda t: MediaPolicy(),
                                  now=lambda: None)

        async def authorize(service_id, number):
            if refuse is not None:
                raise refuse
            return authz or Authz()

        def acquire_account(account_id, limit, cps):
            harness = self

            class Lease:
                def release(self):
                    harness.account_released += 1

            return Lease()

        self.engine = CallbackEngine(self.clock, authorize=authorize, acquire_account=acquire_account,
                                     originator=self.originator, media=self.media, publish=self.events.append,
                                     ring_seconds=30)

    def send(self, message, destination):
        self.sent.append((parse_datagram(message.to_bytes()), destination))

    def on_request(self, request, tx):
        assert self.originator.in_dialog(request, tx)

    def take(self, where, what):
        found = [m for m, d in self.sent if d == where and m.to_bytes().split(b"\r\n", 1)[0].decode().startswith(what)]
        return found

    def start(self, **request):
        values = {"service_id": 3, "user1": "111", "user2": "222", "max_seconds": 0, **request}
        d = self.engine.start(CallbackRequest(**values))
        from twisted.internet.defer import ensureDeferred

        result = []
        ensureDeferred(d).addBoth(result.append)
        return result[0]

    def answer(self, where, status, reason, body=b"", tag="t1"):
        invite = self.take(where, "INVITE")[-1]  # the last (UDP retransmissions are copies)
        lines = [f"SIP/2.0 {status} {reason}"] + [f"Via: {v}" for v in invite.get_all("Via")] + [
            f"From: {invite.get('From')}", f"To: {invite.get('To')};tag={tag}", f"Call-ID: {invite.call_id}",
            f"CSeq: {invite.get('CSeq')}", f"Contact: <sip:user@{where.host}:5060>",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        text = "\r\n".join(lines) + f"\r\nContent-Length: {len(body)}\r\n\r\n"
        self.layer.receive(parse_datagram(text.encode() + body), where)
        return invite

    def bye_from(self, where, invite, tag="t1"):
        text = (f"BYE sip:switchd@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP {where.host}:5060;branch=z9hG4bKbye\r\n"
                f"From: {invite.get('To')};tag={tag}\r\nTo: {invite.get('From')}\r\nCall-ID: {invite.call_id}\r\n"
                "CSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n")
        self.layer.receive(parse_datagram(text.encode()), where)

    def close(self):
        self.relay.close_all()


def sdp(codec_pt: int, port: int = 30000) -> bytes:
    name = {0: "PCMU", 8: "PCMA"}[codec_pt]
    return (f"v=0\r\no=u 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {codec_pt} 101\r\na=rtpmap:{codec_pt} {name}/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\n").encode()


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


def test_user1_then_user2_are_called_bridged_and_the_talk_time_is_reported(h):
    callback = h.start()
    invite1 = h.answer(U1, 180, "Ringing")
    offer1 = SessionDescription.parse(invite1.body)
    assert [m.formats for m in offer1.media] == [["8", "0", "101"]] and not h.take(U2, "INVITE")
    h.answer(U1, 200, "OK", sdp(0, 30000))  # user1 speaks PCMU
    assert h.take(U1, "ACK")
    invite2 = h.take(U2, "INVITE")[0]
    assert invite2.from_addr.uri.user == "111"  # user2 sees user1's number
    # user2 is offered only user1's codec: the relay bridges without transcoding.
    assert SessionDescription.parse(invite2.body).media[0].formats == ["0", "101"]
    h.clock.advance(5)
    h.answer(U2, 200, "OK", sdp(0, 30002), tag="t2")
    assert callback.state == "bridged"
    h.clock.advance(42)
    h.bye_from(U2, invite2, tag="t2")
    assert h.take(U2, "SIP/2.0 200") and h.take(U1, "BYE")
    result = callback.done.result
    assert (result.outcome, result.real_duration) == ("completed", 42)
    assert [c.callee for c in h.answered] == ["111", "222"]
    assert sorted((c.callee, c.direction, c.hangup_side) for c in h.ended) == [
        ("111", "callback", "switch"), ("222", "callback", "callee")]
    assert h.account_released == 1 and h.router.released == 2 and len(h.registry) == 0
    assert h.relay.sessions == {}
    states = [e.state for e in h.events]
    assert states == ["dialing1", "answered1", "dialing2", "answered2", "bridged", "ended"]


@pytest.mark.parametrize("line_number", ["442071230000", None])
def test_external_line_mode_shows_the_trunks_own_number_on_both_legs(line_number):
    h = Harness(line_number=line_number)
    try:
        h.start(line_caller=True)
        invite1 = h.answer(U1, 200, "OK", sdp(0, 30000))
        invite2 = h.take(U2, "INVITE")[0]
        shown = line_number or "anonymous"  # an IP-only trunk has no number of its own
        assert invite1.from_addr.uri.user == shown and invite2.from_addr.uri.user == shown
    finally:
        h.close()


def test_a_caller_id_wins_over_the_trunks_own_number():
    h = Harness(line_number="442071230000")
    try:
        h.start(caller_id1="777", caller_id2="778")
        invite1 = h.answer(U1, 200, "OK", sdp(0, 30000))
        assert invite1.from_addr.uri.user == "777" and h.take(U2, "INVITE")[0].from_addr.uri.user == "778"
    finally:
        h.close()


def test_user1_busy_means_no_second_call(h):
    callback = h.start()
    h.answer(U1, 486, "Busy Here")
    assert callback.done.result.outcome == "user1_busy" and callback.done.result.real_duration == 0
    assert not h.take(U2, "INVITE") and h.account_released == 1 and h.relay.sessions == {}


def test_user2_not_answering_is_cancelled_and_user1_released(h):
    callback = h.start()
    h.answer(U1, 200, "OK", sdp(8))
    h.answer(U2, 180, "Ringing", tag="t2")
    h.clock.advance(30)
    assert h.take(U2, "CANCEL") and h.take(U1, "BYE")
    assert callback.done.result.outcome == "user2_no_answer"


def test_user1_hanging_up_while_user2_rings_cancels_user2(h):
    callback = h.start()
    invite1 = h.answer(U1, 200, "OK", sdp(8))
    h.answer(U2, 180, "Ringing", tag="t2")
    h.bye_from(U1, invite1)
    assert h.take(U2, "CANCEL")
    assert callback.done.result.outcome == "cancelled"


def test_the_duration_limit_ends_both_legs():
    h = Harness()
    try:
        callback = h.start(max_seconds=60)
        h.answer(U1, 200, "OK", sdp(8))
        h.clock.advance(10)
        h.answer(U2, 200, "OK", sdp(8, 30002), tag="t2")
        h.clock.advance(50)
        assert h.take(U1, "BYE") and h.take(U2, "BYE")
        assert (callback.done.result.outcome, callback.done.result.real_duration) == ("completed", 50)
    finally:
        h.close()


def test_the_balance_limits_both_legs_together():
    # 1.20 EUR at 0.60 + 0.60 per minute: one minute for the two legs together.
    assert combined_max_seconds(Authz(available=Decimal("1.2"), max_seconds=120), Authz(max_seconds=120)) == 60
    h = Harness(authz=Authz(available=Decimal("0"), max_seconds=0))
    try:
        with pytest.raises(CallbackRefused) as refused:
            h.start().raiseException()
        assert refused.value.status == 402 and not h.sent
    finally:
        h.close()


def test_a_refused_number_refuses_the_callback():
    h = Harness(refuse=Refusal(404, "no rate for the destination"))
    try:
        with pytest.raises(CallbackRefused) as refused:
            h.start().raiseException()
        assert refused.value.status == 404 and "no rate" in refused.value.reason and not h.sent
    finally:
        h.close()


def press(h, callback, keys):
    for key in keys:
        h.engine._dtmf(callback, "a", key)


def test_the_ivr_asks_user1_for_the_number_and_comes_back_after_each_call():
    h = Harness()
    try:
        callback = h.start(user2=None, ivr=True)
        invite1 = h.answer(U1, 200, "OK", sdp(8))
        assert callback.state == "collecting" and not h.take(U2, "INVITE")
        press(h, callback, "222#")
        invite2 = h.answer(U2, 486, "Busy Here", tag="t2")
        assert callback.state == "collecting"  # "the number is busy", then asked again
        assert [e["state"] for e in callback.events][-2:] == ["user2_busy", "collecting"]
        press(h, callback, "222")
        h.clock.advance(5)  # no hash: the pause ends the number
        invite2 = h.answer(U2, 200, "OK", sdp(8, 30002), tag="t3")
        assert callback.state == "bridged"
        h.clock.advance(20)
        press(h, callback, "##")  # user1 ends this call and stays
        assert h.take(U2, "BYE") and callback.state == "collecting"
        h.clock.advance(3)
        h.bye_from(U1, invite1)
        result = callback.done.result
        assert (result.outcome, result.real_duration) == ("completed", 20)
        assert invite2.call_id
    finally:
        h.close()


def test_user1_waiting_in_the_ivr_is_limited_by_the_money_for_its_own_leg():
    h = Harness(authz=Authz(available=Decimal("1"), max_seconds=100))
    try:
        async def balance(account_id):
            return Decimal("1"), "EUR"

        h.engine.balance = balance
        callback = h.start(user2=None, ivr=True)
        h.answer(U1, 200, "OK", sdp(8))
        assert callback.max_seconds == 100
        for _ in range(9):  # the balance code asks again without using up an attempt
            h.clock.advance(10)
            press(h, callback, "111#")
        assert callback.state == "collecting"
        h.clock.advance(10)
        assert callback.done.result.outcome == "cancelled" and h.take(U1, "BYE")
        assert callback.events[-1]["detail"] == "cancelled: max duration"
    finally:
        h.close()


def test_the_ivr_gives_up_after_three_empty_attempts():
    h = Harness()
    try:
        callback = h.start(user2=None)
        h.answer(U1, 200, "OK", sdp(8))
        for _ in range(3):
            h.clock.advance(15)
        assert callback.done.result.outcome == "cancelled" and h.take(U1, "BYE")
    finally:
        h.close()


def test_user1_picks_the_ivr_language_with_star_and_a_digit():
    h = Harness()
    try:
        callback = h.start(user2=None)
        h.answer(U1, 200, "OK", sdp(8))
        press(h, callback, "*3#")
        assert callback.language == "fr" and callback.state == "collecting"
        assert ("language", "fr") in [(e["state"], e["detail"]) for e in callback.events]
        press(h, callback, "*9#")  # not a language: an invalid number, asked again
        assert callback.language == "fr" and callback.state == "collecting"
    finally:
        h.close()


def test_a_voucher_pin_keyed_in_the_ivr_tops_up_the_account():
    from types import SimpleNamespace

    h = Harness()
    redeemed = []

    async def redeem(account_id, pin):
        redeemed.append((account_id, pin))
        if pin != "123456789012":
            raise ValueError("no such voucher")
        return SimpleNamespace(amount=Decimal("5"), currency="EUR", balance=Decimal("15"))

    h.engine.redeem = redeem
    try:
        callback = h.start(user2=None)
        h.answer(U1, 200, "OK", sdp(8))
        press(h, callback, "**999#")
        press(h, callback, "**123456789012#")
        states = [(e["state"], e["detail"]) for e in callback.events]
        assert ("topup_refused", "no such voucher") in states and ("topup", "5.00 EUR") in states
        assert redeemed == [(7, "999"), (7, "123456789012")] and callback.state == "collecting"
    finally:
        h.close()


def test_the_ivr_language_is_the_clients_else_the_access_numbers_else_english():
    from switchd.core.clients import Client

    def client(language):
        return Client(1, 2, 3, "alice", language, True)

    assert client("fr").language_at("es") == "fr"
    assert client(None).language_at("es") == "es"
    assert client(None).language_at(None) == "en"
    assert client("vi").language_at(None) == "vi"


def test_finished_callbacks_are_kept_an_hour_and_at_most_keep_finished():
    h = Harness()
    h.engine.keep_finished = 2
    ended = []
    for _ in range(3):
        callback = h.start()
        callback.hangup("dropped")
        ended.append(callback)
        h.clock.advance(1)
    h.start()  # starting one forgets what is beyond the limits
    assert [h.engine.get(c.id) for c in ended] == [None, ended[1], ended[2]]
    # What a finished callback keeps is its summary, not its legs and relay session.
    assert ended[2]._legs == [] and ended[2]._media is None and ended[2].summary()["state"] == "ended"
    h.clock.advance(3600)
    h.start()
    assert h.engine.get(ended[1].id) is None and h.engine.get(ended[2].id) is None
