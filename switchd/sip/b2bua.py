"""The B2BUA: every call is two independent SIP legs joined by switchd.

The A leg is the caller's INVITE (from a customer's device, authenticated by
digest, or from a customer's trunk, recognised by source address); the B
leg is a new INVITE, with its own Call-ID, tags and CSeq, to the trunk the
router picked. Provisional responses and SDP pass through; a failure on B
moves to the next candidate when the router calls it a failover code;
CANCEL, BYE, re-INVITE, UPDATE and INFO cross from one leg to the other;
the call is cut when the caller's money runs out.

The B2BUA decides nothing about money or routes: ``authorize``, ``router``,
``on_answer`` and ``on_end`` do (billing and CDRs); it only drives the legs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ..billing.rating import CUTOFF_MARGIN
from ..core import ids
from ..core.calls import Call, CallDtmf, CallRegistry
from ..media.dtmf import DtmfDigit, DtmfError, parse_sip_info
from ..media.relay import NoPorts
from ..media.sdp import SdpError, SessionDescription
from .dialog import Dialog, DialogId, RequestVerdict
from .media import CallMedia, MediaManager, MediaPolicy, is_sdp
from .message import URI, Address, Message, Request, Response, make_response, new_tag
from .transaction import ClientTransaction, Destination, ServerTransaction, TransactionLayer

FORWARDED_IN_DIALOG = frozenset({"INVITE", "UPDATE", "INFO"})
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE"
COPIED_HEADERS = ("Content-Type", "Content-Disposition", "P-Asserted-Identity", "Privacy", "Session-Expires",
                  "Min-SE", "Supported", "Require", "Allow")


class CallRefused(Exception):
    """Why a new call cannot proceed: answered to the caller with ``status``."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


@dataclass
class Origin:
    """Who placed the call and which service pays for it."""

    service_id: int
    kind: str  # "device" or "trunk"
    trunk_id: int | None = None
    caller_id: str | None = None


@dataclass
class Leg:
    side: str  # "a" (caller) or "b" (callee)
    destination: Destination
    dialog: Dialog | None = None
    invite: Request | None = None
    tx: ClientTransaction | None = None  # the INVITE client transaction of a B leg


@dataclass(frozen=True)
class Contact:
    """A registered device to ring for an incoming call."""

    uri: URI
    destination: Destination


@dataclass
class Delivery:
    """Where a call to one of the switch's own numbers goes (INCOMING, REDIRECTION)."""

    service_id: int
    contacts: list[Contact]
    always: str | None = None  # redirect every call to this number
    busy: str | None = None  # ... when every device is busy
    no_answer: str | None = None  # ... when nobody answers in time
    unregistered: str | None = None  # ... when no device is registered
    no_answer_seconds: int = 20


@dataclass
class ActiveCall:
    call: Call
    a: Leg
    a_request: Request
    a_tx: ServerTransaction
    a_tag: str
    candidates: list[Any] = field(default_factory=list)
    refusals: list[Any] = field(default_factory=list)
    b: Leg | None = None  # the B leg that answered (or the only one tried)
    forks: list[Leg] = field(default_factory=list)  # B legs still ringing
    delivery: Delivery | None = None
    fork_failures: list[int] = field(default_factory=list)
    no_answer_timer: IDelayedCall | None = None
    lease: Any = None
    account_lease: Any = None  # the customer's call-limit slot, held for the whole call
    timer: IDelayedCall | None = None
    last_failure: tuple[int, str] | None = None
    ended: bool = False
    session_expires: int | None = None  # RFC 4028 interval agreed for the call
    session_timer: IDelayedCall | None = None
    ok: Response | None = None  # the 2xx sent to A, retransmitted until its ACK
    retransmit: IDelayedCall | None = None
    acked: bool = False
    media: CallMedia | None = None  # None: the call's SDP passes untouched
    # A's INVITE had no SDP (RFC 3261 13.2.1 "delayed offer"): switchd offers to B
    # itself, B's answer becomes the offer to A, and A's answer comes in its ACK.
    delayed_offer: bool = False
    policy_a: MediaPolicy = field(default_factory=MediaPolicy)
    policy_b: MediaPolicy = field(default_factory=MediaPolicy)

    def other(self, leg: Leg) -> Leg | None:
        return self.b if leg is self.a else self.a


class B2BUA:
    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        layer: TransactionLayer,
        registry: CallRegistry,
        *,
        contact: Callable[[Destination], tuple[str, int]],
        identify: Callable[[Request, Destination], Awaitable[Origin] | Origin],
        authorize: Callable[[Origin, str], Awaitable[Any]],
        router: Any,
        on_answer: Callable[[Call], Awaitable[Any]],
        on_end: Callable[[Call], Awaitable[Any]],
        deliver: Callable[[str, str], Awaitable[Delivery | None]] | None = None,
        user_agent: str = "switchd",
        max_calls_in_setup: int = 1000,
        media: MediaManager | None = None,
        publish: Callable[[Any], None] | None = None,
    ) -> None:
        self.media = media
        self.publish = publish
        self.deliver = deliver
        self.max_calls_in_setup = max_calls_in_setup
        self._pending = 0  # INVITEs still being identified, authorised or routed
        self.clock = clock
        self.layer = layer
        self.registry = registry
        self.contact = contact
        self.identify = identify
        self.authorize = authorize
        self.router = router
        self.on_answer = on_answer
        self.on_end = on_end
        self.user_agent = user_agent
        self._dialogs: dict[DialogId, tuple[ActiveCall, Leg]] = {}
        self._invites: dict[int, ActiveCall] = {}  # id(server transaction) -> call

    # ==================================================================
    # entry points from the SIP service
    # ==================================================================

    def invite(self, request: Request, tx: ServerTransaction) -> Deferred:
        """A new INVITE (no To tag): start a call, unless the switch is overloaded."""
        if self._pending + len(self._invites) >= self.max_calls_in_setup:
            self._refuse(request, tx, 503, "Service Unavailable", (("Retry-After", "1"),))
            return succeed(None)
        self._pending += 1
        d = ensureDeferred(self._new_call(request, tx))

        def done(result):
            self._pending -= 1  # the call now rings (in _invites), is answered, or is over
            return result

        d.addBoth(done)
        d.addErrback(lambda f: self.log.failure("INVITE for {uri} failed", f, uri=str(request.uri)))
        return d

    def in_dialog(self, request: Request, tx: ServerTransaction) -> bool:
        """A request with a To tag; False if it belongs to no call of ours."""
        found = self._dialogs.get(DialogId.of_received_request(request))
        if found is None:
            return False
        active, leg = found
        verdict = leg.dialog.receive_request(request) if leg.dialog else RequestVerdict.NOT_IN_DIALOG
        if verdict is not RequestVerdict.ACCEPTED:
            tx.respond(make_response(request, verdict.status or 500))
            return True
        if request.method == "BYE":
            tx.respond(make_response(request, 200))
            self._hangup(active, "caller" if leg is active.a else "callee", 200, "BYE", skip=leg)
        elif request.method in FORWARDED_IN_DIALOG:
            if request.method == "INFO":
                self._info_dtmf(active, leg, request)
            self._forward(active, leg, request, tx)
        else:
            tx.respond(make_response(request, 405, extra_headers=(("Allow", ALLOW),)))
        return True

    def ack(self, request: Request) -> bool:
        """An ACK for a 2xx (from the layer's stray path); True if it was ours."""
        found = self._dialogs.get(DialogId.of_received_request(request))
        if found is None:
            return False
        active, leg = found
        if leg is active.a:
            if not active.acked and active.delayed_offer and active.media is not None:
                self._delayed_answer(active, request)
            active.acked = True
            if active.retransmit is not None and active.retransmit.active():
                active.retransmit.cancel()
        return True

    def _delayed_answer(self, active: ActiveCall, ack: Request) -> None:
        """A's SDP answer, in the ACK of a delayed-offer call: where A's media goes."""
        assert active.media is not None
        if not is_sdp(ack.get("Content-Type"), ack.body):
            self.log.warn("call {call}: the ACK has no SDP answer; A's media goes back where it comes from",
                          call=active.call.id)
            for session in active.media.sessions:
                if session is not None:
                    session.a.comedia = True
            return
        try:
            active.media.received("a", ack.body)  # B already has its answer: what this returns is not sent
        except SdpError as error:
            self.log.warn("call {call}: bad SDP answer in the ACK: {error}", call=active.call.id, error=str(error))

    def _retransmit_ok(self, active: ActiveCall, interval: float) -> None:
        """RFC 3261 13.3.1.4: resend the 2xx until the ACK; give up after 64*T1."""
        if active.ended or active.acked or active.ok is None:
            return
        waited = self.clock.seconds() - (active.call.answer or 0)
        if waited >= 64 * self.layer.t1:
            self.log.warn("call {call}: no ACK for the 200 OK; ending it", call=active.call.id)
            self._hangup(active, "switch", None, "no ACK")
            return
        try:
            self.layer.send(active.ok, active.a.destination)
        except Exception:
            self.log.failure("call {call}: cannot resend the 200 OK", call=active.call.id)
        interval = min(2 * interval, self.layer.t2)
        active.retransmit = self.clock.callLater(interval, self._retransmit_ok, active, interval)

    def cancel(self, request: Request, tx: ServerTransaction) -> bool:
        """A CANCEL matching an INVITE of one of our calls."""
        invite_tx = tx.cancels
        active = self._invites.get(id(invite_tx)) if invite_tx is not None else None
        if active is None:
            return False
        tx.respond(make_response(request, 200, to_tag=active.a_tag))
        if active.call.state != "answered":
            self._end_unanswered(active, 487, "Request Terminated", hangup_side="caller")
        return True

    def hangup(self, call_id: str, reason: str = "api") -> bool:
        """End a call from outside (API)."""
        for active, _ in self._dialogs.values():
            if active.call.id == call_id:
                self._hangup(active, "switch", None, reason)
                return True
        for active in self._invites.values():
            if active.call.id == call_id:
                self._end_unanswered(active, 480, "Call ended by operator", hangup_side="switch")
                return True
        return False

    def media_of(self, call_id: str) -> CallMedia | None:
        """The relayed media of an answered call (prompts from the API)."""
        for active, _ in self._dialogs.values():
            if active.call.id == call_id:
                return active.media
        return None

    def __len__(self) -> int:
        return len(self._invites) + len({id(a) for a, _ in self._dialogs.values()})

    # ==================================================================
    # a new call
    # ==================================================================

    async def _new_call(self, request: Request, tx: ServerTransaction) -> None:
        tx.respond(make_response(request, 100))
        try:
            if self._looped(request):
                raise CallRefused(482, "Loop Detected")
            origin = self.identify(request, tx.source)
            if isinstance(origin, Deferred) or hasattr(origin, "__await__"):
                origin = await origin
            if origin is None:
                return  # identify answered (407 challenge)
            callee = _digits(request.uri.user or "")
            if not callee:
                raise CallRefused(484, "Address Incomplete")
            delayed_offer = self.media is not None and not request.body.strip()
            relay_media = self.media is not None and (delayed_offer or is_sdp(request.get("Content-Type"), request.body))
            if relay_media and not delayed_offer:
                try:
                    SessionDescription.parse(request.body)
                except SdpError as error:
                    raise CallRefused(488, "Not Acceptable Here", (("Warning", f'399 switchd "{error}"'),))
            caller_address = request.from_addr
            caller = origin.caller_id or (_digits(caller_address.uri.user or "") if caller_address else "")
            delivery = await self.deliver(callee, caller) if self.deliver is not None else None
            if delivery is not None:
                # A call to one of the switch's own numbers: the number's service pays.
                origin = Origin(service_id=delivery.service_id, kind="number", trunk_id=origin.trunk_id)
            authorization = await self.authorize(origin, callee)
            account_lease = self.router.acquire_account(
                authorization.account_id, getattr(authorization, "call_limit", 0), getattr(authorization, "cps_limit", 0)
            )
            if not getattr(account_lease, "release", None):
                retry = self.router.retry_after([account_lease])
                raise CallRefused(503, "Service Unavailable", (("Retry-After", str(retry)),))
            call = Call(caller=caller or "", callee=callee, start=self.clock.seconds())
            call.account_id = authorization.account_id
            call.service_id = origin.service_id
            call.max_seconds = authorization.max_seconds
            call.rate = authorization.rate
            call.currency = authorization.currency
            call.direction = "inbound" if delivery is not None else "outbound"
            try:
                candidates = [] if delivery is not None else await self.router.route(origin.service_id, callee)
            except BaseException:
                account_lease.release()
                raise
        except CallRefused as refused:
            self._refuse(request, tx, refused.status, refused.reason, refused.headers)
            return
        except Exception as error:  # authorization refusals carry a SIP status
            status = getattr(error, "sip_status", None)
            if status is None:
                self.log.failure("cannot start a call for {uri}", uri=str(request.uri))
                self._refuse(request, tx, 500, "Server Internal Error")
            else:
                self._refuse(request, tx, status, getattr(error, "reason", "Refused"))
            return
        active = ActiveCall(
            call=call,
            a=Leg("a", tx.source, invite=request),
            a_request=request,
            a_tx=tx,
            a_tag=new_tag(),
            candidates=list(candidates),
            account_lease=account_lease,
        )
        call.hangup = functools.partial(self.hangup, call.id)
        if relay_media:
            active.delayed_offer = delayed_offer
            active.policy_a = self._policy_a(origin, request, tx.source)
            active.media = self._start_media(active)
            call.media_info = active.media.describe
        self._invites[id(tx)] = active
        self.registry.add(call)
        if delivery is not None:
            self._deliver(active, delivery)
            return
        if not candidates:
            self._end_unanswered(active, 503, "No Route Available", hangup_side="switch")
            return
        self._try_next(active)

    def _looped(self, request: Request) -> bool:
        for via in request.via[1:]:
            branch = via.branch
            if branch and self.layer.client_transaction(branch, "INVITE") is not None:
                return True
        return False

    # -- media ----------------------------------------------------------------------

    def _policy_a(self, origin: Origin, request: Request, source: Destination) -> MediaPolicy:
        """A trunk's own setting; a device behind NAT (Contact is not where it sends from) gets COMEDIA."""
        assert self.media is not None
        if origin.kind == "trunk":
            return self.media.trunk_policy(origin.trunk_id)
        try:
            contacts = request.contacts
        except Exception:  # an unparsable Contact: the INVITE is answered without it
            contacts = ()
        uri = contacts[0].uri if contacts else None
        natted = uri is not None and (uri.host, uri.port or 5060) != (source.host, source.port)
        return MediaPolicy(comedia=natted)

    def _start_media(self, active: ActiveCall) -> CallMedia:
        assert self.media is not None
        call = active.call
        media = self.media.start(
            call.id,
            on_timeout=lambda: self._hangup(active, "switch", None, "media timeout"),
            on_dtmf=lambda side, digit: self._dtmf(active, side, digit, "rfc4733"),
        )
        media.comedia["a"] = active.policy_a.comedia
        return media

    def _b_offer(self, active: ActiveCall, policy: MediaPolicy) -> bytes:
        """The SDP offer for a new B leg: through the relay, or A's own when bypassed."""
        body = active.a_request.body
        media = active.media
        if media is None:
            return body
        active.policy_b = policy
        media.comedia["b"] = policy.comedia
        if active.delayed_offer:
            # No SDP of A's to pass on: switchd's own offer (the relay, G.711 and
            # telephone-event), whatever the bypass setting.
            return media.offer("b")
        media.bypass = policy.bypass and not active.policy_a.comedia and not media.sessions
        return media.received("a", body)

    def _sdp_to(self, active: ActiveCall, source_side: str, message: Message) -> bytes:
        """The body to pass on from ``source_side``: SDP through the relay, the rest as is."""
        media = active.media
        if media is None or not is_sdp(message.get("Content-Type"), message.body):
            return message.body
        try:
            return media.received(source_side, message.body)
        except SdpError as error:
            self.log.warn("call {call}: bad SDP from the {side} leg passed on as is: {error}",
                          call=active.call.id, side=source_side, error=str(error))
            return message.body

    def _dtmf(self, active: ActiveCall, side: str, digit: DtmfDigit, source: str) -> None:
        call = active.call
        call.dtmf += digit.digit
        if active.media is not None:
            active.media.interrupt(side)
        self.log.info("call {call}: DTMF {digit} from the {leg} ({source}, {ms} ms)", call=call.id,
                      digit=digit.digit, leg="caller" if side == "a" else "callee", source=source,
                      ms=digit.duration_ms)
        if self.publish is None:
            return
        self.publish(CallDtmf(at=self.clock.seconds(), call_id=active.call.id, leg="caller" if side == "a" else "callee",
                              digit=digit.digit, duration_ms=digit.duration_ms, source=source))

    def _info_dtmf(self, active: ActiveCall, leg: Leg, request: Request) -> None:
        try:
            digit = parse_sip_info(request.get("Content-Type") or "", request.body)
        except DtmfError:
            return
        if digit is not None:
            self._dtmf(active, leg.side, digit, "info")

    def _refuse(self, request: Request, tx: ServerTransaction, status: int, reason: str, headers=()) -> None:
        response = make_response(request, status, reason, to_tag=new_tag())
        for name, value in headers:
            response.add(name, value)
        tx.respond(response)

    # ==================================================================
    # the B leg
    # ==================================================================

    def _try_next(self, active: ActiveCall) -> None:
        while active.candidates:
            candidate = active.candidates.pop(0)
            lease = self.router.acquire(candidate)
            if not getattr(lease, "release", None):
                active.refusals.append(lease)
                continue
            active.lease = lease
            self._send_b(active, candidate)
            return
        if active.last_failure is not None:
            status, reason = active.last_failure
            self._end_unanswered(active, status, reason, hangup_side="callee")
        elif active.refusals:
            retry = self.router.retry_after(active.refusals)
            self._end_unanswered(
                active, 503, "Service Unavailable", hangup_side="switch", headers=(("Retry-After", str(retry)),)
            )
        else:
            self._end_unanswered(active, 503, "No Route Available", hangup_side="switch")

    def _b_invite(self, active: ActiveCall, uri: URI, to: URI, destination: Destination, body: bytes) -> Request:
        a = active.a_request
        call = active.call
        local_host, local_port = self.contact(destination)
        params = () if destination.transport == "udp" else (("transport", destination.transport),)
        request = Request("INVITE", uri)
        request.add("Max-Forwards", str(max(0, (a.max_forwards if a.max_forwards is not None else 70) - 1)))
        caller = a.from_addr
        display = caller.display_name if caller is not None else None
        request.add("From", Address(URI("sip", local_host, call.caller or "anonymous"), display).with_tag(new_tag()))
        request.add("To", Address(to))
        request.add("Call-ID", ids.token_hex(16))
        request.add("CSeq", "1 INVITE")
        request.add("Contact", Address(URI("sip", local_host, "switchd", None, local_port, params)))
        for name in COPIED_HEADERS:
            for value in a.get_all(name):
                request.add(name, value)
        if body and active.delayed_offer:
            request.set("Content-Type", "application/sdp")
        request.add("User-Agent", self.user_agent)
        request.body = body
        return request

    def _send_b(self, active: ActiveCall, candidate: Any) -> None:
        """One attempt on a trunk the router chose."""
        destination = candidate.destination
        call = active.call
        call.trunk_id = candidate.trunk_id
        call.trunk_name = getattr(candidate, "name", None)
        params = () if destination.transport == "udp" else (("transport", destination.transport),)
        uri = URI("sip", destination.host, candidate.number, None, destination.port, params)
        policy = self.media.trunk_policy(candidate.trunk_id) if self.media is not None else MediaPolicy()
        try:
            body = self._b_offer(active, policy)
        except SdpError:  # checked when the call came in
            self._end_unanswered(active, 488, "Not Acceptable Here", hangup_side="switch")
            return
        except NoPorts:
            self.log.error("call {call}: the media relay has no free ports", call=active.call.id)
            self._end_unanswered(active, 503, "Service Unavailable", hangup_side="switch",
                                 headers=(("Retry-After", "5"),))
            return
        request = self._b_invite(active, uri, URI("sip", destination.host, candidate.number), destination, body)
        self._fork(active, request, destination)

    def _fork(self, active: ActiveCall, request: Request, destination: Destination) -> None:
        leg = Leg("b", destination, invite=request)
        active.forks.append(leg)
        if active.delivery is None:
            active.b = leg
        leg.tx = self.layer.request(
            request,
            destination,
            lambda response, tx: self._b_response(active, leg, response),
            lambda tx: self._b_failed(active, leg, 408, "Request Timeout"),
            on_transport_error=lambda tx, error: self._b_failed(active, leg, 503, "Service Unavailable"),
        )

    # -- calls to the switch's own numbers ------------------------------------------

    def _deliver(self, active: ActiveCall, delivery: Delivery) -> None:
        """Ring the registered devices of an INCOMING number, or redirect it."""
        active.delivery = delivery
        if delivery.always:
            self._redirect(active, delivery.always, "always")
            return
        if not delivery.contacts:
            if delivery.unregistered:
                self._redirect(active, delivery.unregistered, "unregistered")
            else:
                self._end_unanswered(active, 480, "Temporarily Unavailable", hangup_side="callee")
            return
        callee = URI("sip", self.contact(active.a.destination)[0], active.call.callee)
        # A device whose Contact is not where it registered from is behind NAT: COMEDIA.
        natted = any((c.uri.host, c.uri.port or 5060) != (c.destination.host, c.destination.port)
                     for c in delivery.contacts)
        try:
            body = self._b_offer(active, MediaPolicy(comedia=natted))
        except (SdpError, NoPorts):
            self._end_unanswered(active, 503, "Service Unavailable", hangup_side="switch")
            return
        for contact in delivery.contacts:  # all contacts ring; the first answer wins
            self._fork(active, self._b_invite(active, contact.uri, callee, contact.destination, body),
                       contact.destination)
        active.no_answer_timer = self.clock.callLater(delivery.no_answer_seconds, self._no_answer, active)

    def _no_answer(self, active: ActiveCall) -> None:
        if active.ended or active.call.state == "answered":
            return
        self._cancel_forks(active)
        delivery = active.delivery
        if delivery is not None and delivery.no_answer:
            self._redirect(active, delivery.no_answer, "no answer")
        else:
            self._end_unanswered(active, 480, "No Answer", hangup_side="callee")

    def _redirect(self, active: ActiveCall, number: str, why: str) -> None:
        """REDIRECTION: send the call on to a pre-set number through the router."""
        delivery = active.delivery
        active.delivery = None  # from here on it is an ordinary routed call
        active.b = None
        active.call.reason = f"redirected ({why})"
        self.log.info("call {call}: redirecting to {number} ({why})", call=active.call.id, number=number, why=why)

        def routed(candidates):
            if active.ended:
                return
            active.candidates = list(candidates)
            self._try_next(active)

        d = self.router.route(delivery.service_id if delivery else active.call.service_id, _digits(number))
        d.addCallback(routed)
        d.addErrback(lambda f: self._end_unanswered(active, 500, "Server Internal Error", hangup_side="switch"))

    def _cancel_forks(self, active: ActiveCall, keep: Leg | None = None) -> None:
        for leg in list(active.forks):
            if leg is keep:
                continue
            active.forks.remove(leg)
            tx = leg.tx
            if tx is not None and tx.state.value not in ("Terminated", "Completed", "Accepted"):
                try:
                    tx.cancel()
                except Exception:
                    self.log.failure("cannot cancel a B leg of {call}", call=active.call.id)

    # -- answers from B legs ------------------------------------------------------------

    def _b_response(self, active: ActiveCall, leg: Leg, response: Response) -> None:
        status = response.status
        if active.ended:
            if 200 <= status < 300:
                self._ack_and_bye(leg, response)
            return
        if status < 101:
            return
        if status < 200:
            if active.call.state == "trying":
                self.registry.set_state(active.call, "ringing")
            if leg in active.forks:
                self._relay_to_a(active, response)
            return
        if status < 300:
            if active.call.state == "answered":
                to = response.to_addr
                if leg is active.b and leg.dialog is not None and to is not None and to.tag == leg.dialog.remote_tag:
                    # Our ACK was lost: the callee retransmits its 200; ACK it again.
                    self.layer.send_ack(leg.dialog.ack_for(leg.invite.cseq.number), leg.destination)
                else:
                    self._ack_and_bye(leg, response)  # another fork answered too: not ours to keep
                return
            active.b = leg
            self._cancel_forks(active, keep=leg)
            if active.no_answer_timer is not None and active.no_answer_timer.active():
                active.no_answer_timer.cancel()
            d = ensureDeferred(self._answered(active, response))
            d.addErrback(lambda f: self.log.failure("call {call}: answer failed", f, call=active.call.id))
            return
        self._b_failed(active, leg, status, response.reason)

    def _b_failed(self, active: ActiveCall, leg: Leg, status: int, reason: str) -> None:
        if active.ended or active.call.state == "answered" or leg not in active.forks:
            return
        active.forks.remove(leg)
        if active.delivery is not None:  # ringing devices: wait for the others
            active.fork_failures.append(status)
            if active.forks:
                return
            if active.no_answer_timer is not None and active.no_answer_timer.active():
                active.no_answer_timer.cancel()
            busy = any(code in (486, 600, 603) for code in active.fork_failures)
            if busy and active.delivery.busy:
                self._redirect(active, active.delivery.busy, "busy")
            elif not busy and active.delivery.no_answer:
                self._redirect(active, active.delivery.no_answer, "no answer")
            else:
                self._end_unanswered(active, 486 if busy else status, "Busy Here" if busy else reason,
                                     hangup_side="callee")
            return
        self._release(active)
        active.last_failure = (status, reason)
        if self.router.is_failover(status) and active.candidates:
            self.log.info("call {call}: {status} from trunk {trunk}, trying the next", call=active.call.id,
                          status=status, trunk=active.call.trunk_name)
            self._try_next(active)
            return
        self._end_unanswered(active, status, reason, hangup_side="callee")

    async def _answered(self, active: ActiveCall, response: Response) -> None:
        call = active.call
        b = active.b
        assert b is not None and b.invite is not None
        active.forks.clear()
        b.dialog = Dialog.from_uac(b.invite, response)
        b.destination = b.tx.destination if b.tx else b.destination
        self.layer.send_ack(b.dialog.ack_for(b.invite.cseq.number), b.destination)
        call.answer = self.clock.seconds()
        self.registry.set_state(call, "answered")
        self._invites.pop(id(active.a_tx), None)
        local = self.contact(active.a.destination)
        our_contact = URI("sip", local[0], "switchd", None, local[1])
        a_dialog = Dialog.from_uas(active.a_request, active.a_tag, local_target=our_contact, confirmed=True)
        active.a.dialog = a_dialog
        self._dialogs[a_dialog.id] = (active, active.a)
        self._dialogs[b.dialog.id] = (active, b)
        try:
            await self.on_answer(call)
        except Exception:
            self.log.failure("call {call}: cannot persist the answer", call=call.id)
        if active.ended:
            return
        ok = self._response_for_a(active.a_request, response, active.a_tag, active.a.destination,
                                  self._sdp_to(active, "b", response))
        media = active.media
        if media is not None:
            media.mark_answered()
            if active.policy_a.record or active.policy_b.record:
                codec = media.codec("b", response.body)
                media.record(codec, codec)
                call.recording = media.recording
        active.a_tx.respond(ok)
        active.ok = ok
        if not active.a.destination.reliable:
            active.retransmit = self.clock.callLater(self.layer.t1, self._retransmit_ok, active, self.layer.t1)
        self._start_session_timer(active, response)
        if call.max_seconds is not None:
            # Cut a little early: a timer firing late must not start (and bill) one more increment.
            active.timer = self.clock.callLater(
                max(0, call.max_seconds - CUTOFF_MARGIN), self._hangup, active, "switch", None,
                "max duration (balance)",
            )

    def _ack_and_bye(self, leg: Leg, response: Response) -> None:
        if leg.invite is None:
            return
        dialog = Dialog.from_uac(leg.invite, response)
        destination = leg.tx.destination if leg.tx else leg.destination
        self.layer.send_ack(dialog.ack_for(leg.invite.cseq.number), destination)
        self._send_in_dialog(dialog, "BYE", destination)

    # ==================================================================
    # relaying
    # ==================================================================

    def _response_for_a(
        self, request: Request, response: Response, tag: str, destination: Destination, body: bytes
    ) -> Response:
        answer = make_response(request, response.status, response.reason, to_tag=tag)
        local = self.contact(destination)
        if response.status >= 101 and response.status < 300:
            answer.add("Contact", Address(URI("sip", local[0], "switchd", None, local[1])))
        for name in ("Content-Type", "Require", "RSeq", "Session-Expires", "Allow", "Supported"):
            for value in response.get_all(name):
                answer.add(name, value)
        answer.set("Server", self.user_agent)
        answer.body = body
        return answer

    def _relay_to_a(self, active: ActiveCall, response: Response) -> None:
        body = self._sdp_to(active, "b", response)
        active.a_tx.respond(self._response_for_a(active.a_request, response, active.a_tag, active.a.destination, body))

    def _forward(self, active: ActiveCall, leg: Leg, request: Request, tx: ServerTransaction) -> None:
        """re-INVITE, UPDATE or INFO from one leg to the other; the answer comes back."""
        other = active.other(leg)
        if other is None or other.dialog is None:
            tx.respond(make_response(request, 481))
            return
        headers = [(name, value) for name in COPIED_HEADERS for value in request.get_all(name)]
        body = request.body
        if active.media is not None and is_sdp(request.get("Content-Type"), body):
            try:
                body = active.media.received(leg.side, body)
            except SdpError as error:
                tx.respond(make_response(request, 488, extra_headers=(("Warning", f'399 switchd "{error}"'),)))
                return
        out = other.dialog.create_request(request.method, headers=headers, body=body)

        def answered(response: Response, ctx: ClientTransaction) -> None:
            if response.status < 101:
                return
            if request.method == "INVITE" and 200 <= response.status < 300:
                self.layer.send_ack(other.dialog.ack_for(out.cseq.number), other.destination)
            if request.method in ("INVITE", "UPDATE") and 200 <= response.status < 300:
                self._start_session_timer(active, response)  # a refresh
            tx.respond(self._response_for_a(request, response, leg.dialog.local_tag, leg.destination,
                                            self._sdp_to(active, other.side, response)))

        self.layer.request(
            out,
            other.destination,
            answered,
            lambda ctx: tx.respond(make_response(request, 408)),
            on_transport_error=lambda ctx, error: tx.respond(make_response(request, 503)),
        )

    def _start_session_timer(self, active: ActiveCall, response: Response) -> None:
        """RFC 4028: the endpoints refresh the session; if neither does in time, end it.

        switchd is not the refresher: it passes Session-Expires through and only
        watches. Without a refresh (re-INVITE or UPDATE answered 2xx) before the
        interval runs out, the other side is taken to have vanished.
        """
        interval = _session_expires(response) or _session_expires(active.a_request)
        if interval is None:
            return
        active.session_expires = interval
        if active.session_timer is not None and active.session_timer.active():
            active.session_timer.cancel()
        # RFC 4028 10: the session ends at the interval minus min(32 s, interval/3).
        deadline = interval - min(32, interval / 3)
        active.session_timer = self.clock.callLater(
            deadline, self._hangup, active, "switch", None, "session timer expired"
        )

    def _send_in_dialog(self, dialog: Dialog, method: str, destination: Destination) -> None:
        try:
            request = dialog.create_request(method)
        except ValueError:
            return
        self.layer.request(request, destination, lambda r, tx: None, lambda tx: None,
                           on_transport_error=lambda tx, error: None)

    # ==================================================================
    # the end
    # ==================================================================

    def _hangup(self, active: ActiveCall, side: str, status: int | None, reason: str, skip: Leg | None = None) -> None:
        if active.ended:
            return
        for leg in (active.a, active.b):
            if leg is not None and leg is not skip and leg.dialog is not None:
                self._send_in_dialog(leg.dialog, "BYE", leg.destination)
        call = active.call
        call.hangup_side = side
        call.sip_code = call.sip_code or 200
        call.reason = f"{call.reason}; {reason}" if call.reason.startswith("redirected") else reason
        self._finish(active)

    def _end_unanswered(self, active: ActiveCall, status: int, reason: str, *, hangup_side: str, headers=()) -> None:
        if active.ended:
            return
        self._cancel_forks(active)
        response = make_response(active.a_request, status, reason, to_tag=active.a_tag)
        for name, value in headers:
            response.add(name, value)
        active.a_tx.respond(response)
        call = active.call
        call.sip_code = status
        call.reason = reason
        call.hangup_side = hangup_side
        self._finish(active)

    def _release(self, active: ActiveCall) -> None:
        if active.lease is not None:
            active.lease.release()
            active.lease = None

    def _finish(self, active: ActiveCall) -> None:
        active.ended = True
        for timer in (active.timer, active.retransmit, active.session_timer, active.no_answer_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._release(active)
        if active.account_lease is not None:
            active.account_lease.release()
            active.account_lease = None
        self._invites.pop(id(active.a_tx), None)
        for leg in (active.a, active.b):
            if leg is not None and leg.dialog is not None:
                self._dialogs.pop(leg.dialog.id, None)
                leg.dialog.terminate()
        if active.media is not None:
            active.media.close()
        call = active.call
        call.end = self.clock.seconds()
        # Break the per-call reference cycles (transaction -> callback -> call
        # state -> leg -> transaction, call -> hangup -> call) so reference
        # counting frees an ended call at once instead of the cycle collector.
        call.hangup = None
        call.media_info = None
        for leg in (active.a, active.b, *active.forks):
            if leg is not None:
                leg.tx = None
        active.forks.clear()
        self.registry.set_state(call, "ended")
        d = ensureDeferred(_call(self.on_end, call))
        d.addErrback(lambda f: self.log.failure("call {call}: the CDR could not be written", f, call=call.id))


async def _call(fn, *args):
    return await fn(*args)


def _session_expires(message) -> int | None:
    value = message.get("Session-Expires") if message is not None else None
    if not value:
        return None
    number = value.split(";", 1)[0].strip()
    return int(number) if number.isdigit() and int(number) >= 90 else None


def _digits(text: str) -> str:
    """The dialled number: digits, with a leading '+' kept."""
    text = text.strip()
    plus = text.startswith("+")
    digits = "".join(c for c in text if c.isdigit())
    return ("+" + digits) if plus and digits else digits


