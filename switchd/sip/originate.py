"""Calls placed by switchd itself: one SIP leg with no caller behind it.

The callback engine (``core/callback.py``) asks for a call to a number on a
service's routes; an :class:`OutboundLeg` goes through the router's
candidates as the B2BUA's B leg does (trunk limits, failover codes), offers
SDP pointing at one side of a relay session, and reports its answer and its
end. While it is up it answers the far end's BYE, re-INVITE, UPDATE and INFO
itself: there is no other leg to pass them to.

Each leg is a :class:`~switchd.core.calls.Call` in the registry (``direction
callback``), so it shows in ``GET /v1/calls``, gets an ``active_calls`` row at
answer and a CDR at the end, rated at its own destination's rate.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ..core import ids
from ..core.calls import Call, CallRegistry
from ..media.dtmf import DtmfError, parse_sip_info
from ..media.sdp import SdpError
from .dialog import Dialog, DialogId, RequestVerdict
from .media import CallMedia, is_sdp
from .message import URI, Address, Request, Response, make_response, new_tag
from .transaction import ClientTransaction, ServerTransaction, TransactionLayer

BUSY = frozenset({486, 600, 603})
NO_ANSWER = frozenset({408, 480, 487})


class LegFailed(Exception):
    """The leg was not answered: ``status`` is the final answer (or 408, 503 of our own)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason

    @property
    def kind(self) -> str:
        if self.status in BUSY:
            return "busy"
        if self.status in NO_ANSWER:
            return "no_answer"
        return "failed"


class OutboundLeg:
    """One call from switchd to ``call.callee`` over the candidates given."""

    log = Logger()

    def __init__(
        self,
        originator: "Originator",
        call: Call,
        candidates: list[Any],
        media: CallMedia,
        side: str,
        caller_id: str,
        ring_seconds: float,
    ) -> None:
        self.originator = originator
        self.call = call
        self.candidates = candidates
        self.media = media
        self.side = side
        self.caller_id = caller_id
        self.ring_seconds = ring_seconds
        #: Fires with the answer's SDP body; errbacks with LegFailed.
        self.answered: Deferred = Deferred()
        #: Fires with who ended the answered call: "remote", "switch".
        self.ended: Deferred = Deferred()
        self.dialog: Dialog | None = None
        self.invite: Request | None = None
        self.tx: ClientTransaction | None = None
        self.destination: Any = None
        self.lease: Any = None
        self.last_failure: tuple[int, str] | None = None
        self.refusals: list[Any] = []
        self.ring_timer: IDelayedCall | None = None
        self.done = False

    # -- placing the call ----------------------------------------------------------

    def start(self) -> None:
        self.ring_timer = self.originator.clock.callLater(self.ring_seconds, self._ring_timeout)
        self._try_next()

    def _try_next(self) -> None:
        router = self.originator.router
        while self.candidates:
            candidate = self.candidates.pop(0)
            lease = router.acquire(candidate)
            if not getattr(lease, "release", None):
                self.refusals.append(lease)
                continue
            self.lease = lease
            self._send(candidate)
            return
        if self.last_failure is not None:
            self._fail(*self.last_failure)
        elif self.refusals:
            self._fail(503, "Service Unavailable (trunk limits)")
        else:
            self._fail(503, "No Route Available")

    def _send(self, candidate: Any) -> None:
        o = self.originator
        destination = candidate.destination
        self.destination = destination
        self.call.trunk_id = candidate.trunk_id
        self.call.trunk_name = getattr(candidate, "name", None)
        policy = o.media_policy(candidate.trunk_id)
        self.media.comedia[self.side] = policy.comedia
        local_host, local_port = o.contact(destination)
        params = () if destination.transport == "udp" else (("transport", destination.transport),)
        request = Request("INVITE", URI("sip", destination.host, candidate.number, None, destination.port, params))
        request.add("Max-Forwards", "70")
        # Without a caller id, the trunk's own number (an external line) rather than anonymous.
        caller = self.caller_id or o.line_number(candidate.trunk_id) or "anonymous"
        request.add("From", Address(URI("sip", local_host, caller)).with_tag(new_tag()))
        request.add("To", Address(URI("sip", destination.host, candidate.number)))
        request.add("Call-ID", ids.token_hex(16))
        request.add("CSeq", "1 INVITE")
        request.add("Contact", Address(URI("sip", local_host, "switchd", None, local_port, params)))
        request.add("User-Agent", o.user_agent)
        request.add("Content-Type", "application/sdp")
        request.body = self.media.offer(self.side)
        self.invite = request
        self.tx = o.layer.request(
            request,
            destination,
            lambda response, tx: self._response(response),
            lambda tx: self._failed(408, "Request Timeout"),
            on_transport_error=lambda tx, error: self._failed(503, "Service Unavailable"),
        )

    def _response(self, response: Response) -> None:
        status = response.status
        if status < 101:
            return
        if self.done or self.answered.called:
            if 200 <= status < 300:
                self._reack_or_release(response)
            return
        if status < 200:
            if self.call.state == "trying":
                self.originator.registry.set_state(self.call, "ringing")
            if is_sdp(response.get("Content-Type"), response.body):
                self._learn(response.body)  # early media: the prompt or ringback plays through
            return
        if status < 300:
            self._answer(response)
            return
        self._failed(status, response.reason)

    def _learn(self, body: bytes) -> None:
        try:
            self.media.received(self.side, body)
        except SdpError as error:
            self.log.warn("call {call}: bad SDP from {number}: {error}", call=self.call.id,
                          number=self.call.callee, error=str(error))

    def _failed(self, status: int, reason: str) -> None:
        if self.done or self.answered.called:
            return
        self._release()
        self.last_failure = (status, reason)
        if self.originator.router.is_failover(status) and self.candidates:
            self.log.info("call {call}: {status} from trunk {trunk}, trying the next", call=self.call.id,
                          status=status, trunk=self.call.trunk_name)
            self._try_next()
            return
        self._fail(status, reason)

    def _fail(self, status: int, reason: str, hangup_side: str = "callee") -> None:
        if self.done:
            return
        self._cancel_ring_timer()
        self.done = True
        call = self.call
        call.sip_code = status
        call.reason = reason
        call.hangup_side = hangup_side
        self.originator.finished(self)
        self.answered.errback(LegFailed(status, reason))

    def _answer(self, response: Response) -> None:
        o = self.originator
        self._cancel_ring_timer()
        assert self.invite is not None
        self.dialog = Dialog.from_uac(self.invite, response)
        if self.tx is not None:
            self.destination = self.tx.destination
        o.layer.send_ack(self.dialog.ack_for(self.invite.cseq.number), self.destination)
        o.dialogs[self.dialog.id] = self
        call = self.call
        call.answer = o.clock.seconds()
        o.registry.set_state(call, "answered")
        if is_sdp(response.get("Content-Type"), response.body):
            self._learn(response.body)
        d = ensureDeferred(_call(o.on_answer, call))
        d.addErrback(lambda f: self.log.failure("call {call}: cannot persist the answer", f, call=call.id))
        self.answered.callback(response.body)

    def _reack_or_release(self, response: Response) -> None:
        """A 2xx again: our ACK was lost (ACK again), or a late one after we gave up (ACK and BYE)."""
        if self.invite is None:
            return
        dialog = Dialog.from_uac(self.invite, response)
        self.originator.layer.send_ack(dialog.ack_for(self.invite.cseq.number), self.destination)
        if self.dialog is None or dialog.id != self.dialog.id or self.done:
            self.originator.send_in_dialog(dialog, "BYE", self.destination)

    def _ring_timeout(self) -> None:
        self.ring_timer = None
        if self.done or self.answered.called:
            return
        self.candidates.clear()
        self._cancel_invite()
        self._fail(480, "No Answer", "switch")

    def _cancel_invite(self) -> None:
        tx = self.tx
        if tx is not None and tx.state.value not in ("Terminated", "Completed", "Accepted"):
            try:
                tx.cancel()
            except Exception:
                self.log.failure("cannot cancel the INVITE of {call}", call=self.call.id)

    def _cancel_ring_timer(self) -> None:
        if self.ring_timer is not None and self.ring_timer.active():
            self.ring_timer.cancel()
        self.ring_timer = None

    def _release(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    # -- while up -----------------------------------------------------------------

    def in_dialog(self, request: Request, tx: ServerTransaction) -> None:
        assert self.dialog is not None
        verdict = self.dialog.receive_request(request)
        if verdict is not RequestVerdict.ACCEPTED:
            tx.respond(make_response(request, verdict.status or 500))
            return
        method = request.method
        if method == "BYE":
            tx.respond(make_response(request, 200))
            self._end("remote", "BYE")
        elif method in ("INVITE", "UPDATE"):
            self._refresh(request, tx)
        elif method == "INFO":
            try:
                digit = parse_sip_info(request.get("Content-Type") or "", request.body)
            except DtmfError:
                digit = None
            if digit is not None and self.media.on_dtmf is not None:
                self.media.on_dtmf(self.side, digit)
            tx.respond(make_response(request, 200))
        else:
            tx.respond(make_response(request, 405))

    def _refresh(self, request: Request, tx: ServerTransaction) -> None:
        """A re-INVITE or UPDATE: learn the new SDP and answer with the relay's side."""
        response = make_response(request, 200)
        local = self.originator.contact(self.destination)
        response.add("Contact", Address(URI("sip", local[0], "switchd", None, local[1])))
        if is_sdp(request.get("Content-Type"), request.body):
            try:
                response.body = self.media.answer(self.side, request.body)
            except SdpError as error:
                tx.respond(make_response(request, 488, extra_headers=(("Warning", f'399 switchd "{error}"'),)))
                return
            response.add("Content-Type", "application/sdp")
        elif request.method == "INVITE":
            response.body = self.media.offer(self.side)  # an offerless re-INVITE: we offer in the 200
            response.add("Content-Type", "application/sdp")
        tx.respond(response)

    # -- the end ------------------------------------------------------------------

    def hangup(self, reason: str = "switch") -> None:
        """End the leg: CANCEL while it rings, BYE once answered."""
        if self.done:
            return
        if not self.answered.called:
            self.candidates.clear()
            self._cancel_invite()
            self._fail(487, "Request Terminated", "switch")
            return
        if self.dialog is not None:
            self.originator.send_in_dialog(self.dialog, "BYE", self.destination)
        self._end("switch", reason)

    def _end(self, side: str, reason: str) -> None:
        if self.done:
            return
        self.done = True
        self._cancel_ring_timer()
        call = self.call
        call.hangup_side = "callee" if side == "remote" else "switch"
        call.sip_code = call.sip_code or 200
        call.reason = reason
        self.originator.finished(self)
        self.ended.callback(side)


class Originator:
    """Places :class:`OutboundLeg` calls and owns their dialogs."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        layer: TransactionLayer,
        registry: CallRegistry,
        router: Any,
        *,
        contact: Callable[[Any], tuple[str, int]],
        media_policy: Callable[[int | None], Any],
        on_answer: Callable[[Call], Awaitable[Any]],
        on_end: Callable[[Call], Awaitable[Any]],
        user_agent: str = "switchd",
        line_number: Callable[[int | None], str | None] = lambda trunk_id: None,
    ) -> None:
        self.clock = clock
        self.layer = layer
        self.registry = registry
        self.router = router
        self.contact = contact
        self.media_policy = media_policy
        self.on_answer = on_answer
        self.on_end = on_end
        self.user_agent = user_agent
        self.line_number = line_number
        self.dialogs: dict[DialogId, OutboundLeg] = {}

    async def dial(
        self,
        call: Call,
        media: CallMedia,
        side: str,
        *,
        caller_id: str,
        ring_seconds: float = 60.0,
    ) -> OutboundLeg:
        """Route ``call.callee`` on ``call.service_id`` and start ringing it.

        Raises LegFailed(503) when the service has no route to the number.
        """
        candidates = await self.router.route(call.service_id, call.callee)
        if not candidates:
            raise LegFailed(503, "No Route Available")
        leg = OutboundLeg(self, call, list(candidates), media, side, caller_id, ring_seconds)
        self.registry.add(call)
        leg.start()
        return leg

    def in_dialog(self, request: Request, tx: ServerTransaction) -> bool:
        leg = self.dialogs.get(DialogId.of_received_request(request))
        if leg is None:
            return False
        leg.in_dialog(request, tx)
        return True

    def send_in_dialog(self, dialog: Dialog, method: str, destination: Any) -> None:
        try:
            request = dialog.create_request(method)
        except ValueError:
            return
        self.layer.request(request, destination, lambda r, tx: None, lambda tx: None,
                           on_transport_error=lambda tx, error: None)

    def finished(self, leg: OutboundLeg) -> None:
        """A leg is over: free its trunk slot, write its record."""
        leg._release()
        if leg.dialog is not None:
            self.dialogs.pop(leg.dialog.id, None)
            leg.dialog.terminate()
        leg.tx = None
        call = leg.call
        call.end = self.clock.seconds()
        call.hangup = None
        call.media_info = None
        self.registry.set_state(call, "ended")
        d = ensureDeferred(_call(self.on_end, call))
        d.addErrback(lambda f: self.log.failure("call {call}: the CDR could not be written", f, call=call.id))

    def __len__(self) -> int:
        return len(self.dialogs)


async def _call(fn, *args):
    return await fn(*args)
