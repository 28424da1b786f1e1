"""Sans-IO SIP transactions (RFC 3261 §17, amended by RFC 6026).

The :class:`TransactionLayer` sits between a transport and a transaction
user (TU: a UA core, the B2BUA, a proxy core).  It never touches a socket:

* the transport hands it every parsed message with
  :meth:`TransactionLayer.receive` and the :class:`Destination` it came from;
* it sends through the ``send(message, destination)`` callable it was given;
  an exception raised by ``send`` (``OSError`` typically) is a transport
  error, which terminates the transaction and is reported to the TU.
  ``send`` may return the :class:`Destination` it really used (a request
  too large for UDP goes over TCP, RFC 3261 §18.1.1): a client transaction
  then follows it, stopping retransmissions on a reliable transport and
  sending its ACK or CANCEL there;
* every timer goes through the injected ``IReactorTime`` (``callLater``),
  so tests drive time with :class:`twisted.internet.task.Clock`.

Client side, :meth:`TransactionLayer.request` starts a
:class:`ClientTransaction` which retransmits over UDP (timers A and E),
times out (B and F), acknowledges non-2xx final responses to INVITE itself
(§17.1.1.3), absorbs retransmitted final responses (D and K) and, in the
RFC 6026 "Accepted" state (timer M), passes every 2xx on to the TU so that
it can acknowledge each of them.  :meth:`ClientTransaction.cancel` builds
and sends the CANCEL of §9.1.

Server side, new requests are handed to the TU's ``on_request(request,
server_transaction)``; retransmissions are absorbed and answered with the
last response; :meth:`ServerTransaction.respond` drives the state machine:
100 Trying after 200 ms for INVITE (§17.2.1), retransmission of non-2xx
finals over UDP (G) until the ACK arrives or H fires, and the "Accepted"
state (L) after a 2xx.  ACKs for 2xx responses and stray 2xx responses
belong to the dialog layer and go to ``on_stray(message, source)``.

Failures are reported through callbacks, never raised into the caller of
:meth:`TransactionLayer.receive`:

* client: ``on_timeout(tx)`` when B or F fires (or when an INVITE stays
  unanswered 64*T1 after its CANCEL, §9.1); ``on_transport_error(tx, exc)``
  when ``send`` fails, or ``on_timeout(tx)`` with ``tx.failure`` set to
  :attr:`FailureReason.TRANSPORT_ERROR` and ``tx.error`` to the exception
  when no ``on_transport_error`` was given;
* server: ``tx.on_failure(tx, reason, error)`` when H fires (the ACK never
  came) or ``send`` fails.  It defaults to the layer's ``on_server_failure``
  and may be replaced per transaction by the TU.

Exceptions raised by TU callbacks are logged and contained.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, NamedTuple

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from switchd.sip.message import (
    Message,
    Request,
    Response,
    SIPParseError,
    Via,
    make_response,
    new_branch,
)

__all__ = [
    "ClientTransaction",
    "Destination",
    "FailureReason",
    "OnCancel",
    "OnRequest",
    "OnResponse",
    "OnServerFailure",
    "OnStray",
    "OnTimeout",
    "OnTransportError",
    "SendFunction",
    "ServerTransaction",
    "State",
    "TransactionLayer",
]


class Destination(NamedTuple):
    """Where a message goes to (or came from): transport, host and port.

    ``transport`` is ``"udp"``, ``"tcp"`` or ``"tls"`` (lower case); every
    transport but UDP counts as reliable.  For a reliable transport the
    address identifies the connection the transport should use.
    """

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        """Whether the transport is reliable (no retransmissions, zero-length wait timers)."""
        return self.transport.lower() != "udp"


class State(enum.Enum):
    """Transaction states (RFC 3261 §17 and RFC 6026 "Accepted")."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class FailureReason(enum.Enum):
    """Why a transaction ended abnormally."""

    #: B, F or H fired, or an INVITE was not answered 64*T1 after its CANCEL.
    TIMEOUT = "timeout"
    #: the ``send`` callable raised.
    TRANSPORT_ERROR = "transport-error"


SendFunction = Callable[[Message, Destination], "Destination | None"]
OnRequest = Callable[[Request, "ServerTransaction"], None]
OnCancel = Callable[[Request, "ServerTransaction"], None]
OnStray = Callable[[Message, Destination], None]
OnServerFailure = Callable[["ServerTransaction", FailureReason, "Exception | None"], None]
OnResponse = Callable[[Response, "ClientTransaction"], None]
OnTimeout = Callable[["ClientTransaction"], None]
OnTransportError = Callable[["ClientTransaction", Exception], None]

_ServerKey = tuple[object, ...]
_ClientKey = tuple[str, str]

_DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}


class _Unmatchable(ValueError):
    """A message lacks what transaction matching needs (Via, CSeq...)."""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _replace_top_via(message: Message, via: Via) -> None:
    message.pop_first("Via")
    message.add("Via", via, first=True)


class _Transaction:
    """What client and server transactions share: request, state and timers."""

    log: ClassVar[Logger] = Logger()

    state: State
    key: tuple[object, ...]  # the transaction's entry in the layer's table

    def __init__(self, layer: TransactionLayer, request: Request, reliable: bool) -> None:
        self.layer = layer
        self.request = request
        self.method = request.method
        self.is_invite = request.method == "INVITE"
        self.reliable = reliable
        self.last_response: Response | None = None
        self.failure: FailureReason | None = None
        self.error: Exception | None = None
        self._timers: dict[str, IDelayedCall] = {}

    # -- timers ---------------------------------------------------------------

    def _start_timer(self, name: str, delay: float, action: Callable[[], None]) -> None:
        self._stop_timer(name)
        self._timers[name] = self.layer.clock.callLater(delay, self._fire, name, action)

    def _stop_timer(self, *names: str) -> None:
        for name in names:
            call = self._timers.pop(name, None)
            if call is not None and call.active():
                call.cancel()

    def _fire(self, name: str, action: Callable[[], None]) -> None:
        self._timers.pop(name, None)
        try:
            action()
        except Exception:  # noqa: BLE001 (logged, never propagated into the reactor)
            self.log.failure("timer {timer} of {tx!r} failed", timer=name, tx=self)

    def timer_active(self, name: str) -> bool:
        """Whether timer ``name`` ("A", "B", "G"...) is running; for tests and diagnostics."""
        call = self._timers.get(name)
        return call is not None and call.active()

    # -- life cycle -------------------------------------------------------------

    def _transmit(self, message: Message, destination: Destination) -> Exception | None:
        """Pass ``message`` to the transport; return the exception it raised, if any."""
        try:
            used = self.layer.send(message, destination)
        except Exception as exc:  # noqa: BLE001 (any failure of the transport counts)
            self.log.warn(
                "transport error sending {what} for {tx!r} to {destination}: {error!r}",
                what=_describe(message), tx=self, destination=destination, error=exc,
            )
            return exc
        if isinstance(used, Destination) and used != destination:
            self._redirected(used)
        return None

    def _redirected(self, used: Destination) -> None:
        """The transport sent elsewhere than asked (e.g. over TCP instead of UDP)."""

    def _terminate(self) -> None:
        if self.state is State.TERMINATED:
            return
        self.state = State.TERMINATED
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()
        self.layer._forget(self)

    def terminate(self) -> None:
        """Destroy the transaction now, silently (no callback is called).

        For a TU that gives up on its own, e.g. a proxy whose timer C fired.
        """
        self._terminate()


def _describe(message: Message) -> str:
    if isinstance(message, Request):
        return message.method
    if isinstance(message, Response):
        return f"{message.status} response"
    return "message"


# ============================================================================
# Client transactions (RFC 3261 §17.1)
# ============================================================================


class ClientTransaction(_Transaction):
    """An INVITE (§17.1.1) or non-INVITE (§17.1.2) client transaction.

    Created by :meth:`TransactionLayer.request`.  Public attributes:
    ``request``, ``destination``, ``branch``, ``method``, ``state``,
    ``last_response`` (the last response passed to the TU), ``failure`` and
    ``error`` (why it ended abnormally), ``cancel_transaction`` (the CANCEL
    sent by :meth:`cancel`, once sent).
    """

    def __init__(
        self,
        layer: TransactionLayer,
        request: Request,
        destination: Destination,
        branch: str,
        on_response: OnResponse,
        on_timeout: OnTimeout,
        on_transport_error: OnTransportError | None,
    ) -> None:
        super().__init__(layer, request, destination.reliable)
        self.destination = destination
        self.branch = branch
        self.key: _ClientKey = (branch, request.method)
        self.on_response = on_response
        self.on_timeout = on_timeout
        self.on_transport_error = on_transport_error
        self.state = State.CALLING if self.is_invite else State.TRYING
        self.cancel_transaction: ClientTransaction | None = None
        self._cancel_pending: tuple[OnResponse | None, OnTimeout | None, OnTransportError | None,
                                    tuple[tuple[str, str], ...]] | None = None
        self._interval = layer.t1
        self._ack: Request | None = None

    def __repr__(self) -> str:
        return f"<ClientTransaction {self.method} {self.branch} {self.state.value}>"

    def _redirected(self, used: Destination) -> None:
        self.destination = used
        if used.reliable and not self.reliable:
            self.reliable = True
            self._stop_timer("A", "E")

    # -- start and timers -------------------------------------------------------

    def _start(self) -> None:
        layer = self.layer
        if self.is_invite:
            if not self.reliable:
                self._start_timer("A", layer.t1, self._timer_a)
            self._start_timer("B", 64 * layer.t1, self._timeout)
        else:
            if not self.reliable:
                self._start_timer("E", layer.t1, self._timer_e)
            self._start_timer("F", 64 * layer.t1, self._timeout)
        error = self._transmit(self.request, self.destination)
        if error is not None:
            self._fail(FailureReason.TRANSPORT_ERROR, error)

    def _retransmit_request(self) -> bool:
        self.layer._count("retransmissions")
        error = self._transmit(self.request, self.destination)
        if error is not None:
            self._fail(FailureReason.TRANSPORT_ERROR, error)
            return False
        return True

    def _timer_a(self) -> None:
        if self.state is State.CALLING and self._retransmit_request():
            self._interval *= 2
            self._start_timer("A", self._interval, self._timer_a)

    def _timer_e(self) -> None:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return
        if self._retransmit_request():
            t2 = self.layer.t2
            self._interval = min(2 * self._interval, t2) if self.state is State.TRYING else t2
            self._start_timer("E", self._interval, self._timer_e)

    def _timeout(self) -> None:
        if self.state is not State.TERMINATED:
            self._fail(FailureReason.TIMEOUT, None)

    def _fail(self, reason: FailureReason, error: Exception | None) -> None:
        self.failure = reason
        self.error = error
        self._cancel_pending = None
        self._terminate()
        layer = self.layer
        if reason is FailureReason.TIMEOUT:
            layer._count("timeouts")
            layer._call_tu(self.on_timeout, self)
            return
        layer._count("transport_errors")
        if self.on_transport_error is not None and error is not None:
            layer._call_tu(self.on_transport_error, self, error)
        else:
            layer._call_tu(self.on_timeout, self)

    # -- responses ---------------------------------------------------------------

    def _deliver(self, response: Response) -> None:
        self.last_response = response
        self.layer._call_tu(self.on_response, response, self)

    def _receive(self, response: Response) -> None:
        if self.is_invite:
            self._receive_invite_response(response)
        else:
            self._receive_non_invite_response(response)

    def _receive_invite_response(self, response: Response) -> None:
        status = response.status
        state = self.state
        layer = self.layer
        if state in (State.CALLING, State.PROCEEDING):
            if status < 200:
                if state is State.CALLING:
                    self._stop_timer("A", "B")
                    self.state = State.PROCEEDING
                self._deliver(response)
                if self._cancel_pending is not None and self.state is State.PROCEEDING:
                    pending, self._cancel_pending = self._cancel_pending, None
                    self._send_cancel(*pending)
                return
            self._stop_timer("A", "B", "cancel")
            self._cancel_pending = None
            if status < 300:
                self.state = State.ACCEPTED
                self._start_timer("M", 64 * layer.t1, self._terminate)
                self._deliver(response)
                return
            self.state = State.COMPLETED
            if not self.reliable:
                self._start_timer("D", layer.timer_d, self._terminate)
            self._ack = self._build_ack(response)
            error = self._transmit(self._ack, self.destination)
            self._deliver(response)
            if error is not None:
                if self.state is State.COMPLETED:
                    self._fail(FailureReason.TRANSPORT_ERROR, error)
            elif self.reliable:
                self._terminate()
            return
        if state is State.COMPLETED and status >= 300 and self._ack is not None:
            layer._count("absorbed")
            layer._count("retransmissions")
            error = self._transmit(self._ack, self.destination)
            if error is not None:
                self._fail(FailureReason.TRANSPORT_ERROR, error)
            return
        if state is State.ACCEPTED and 200 <= status < 300:
            self._deliver(response)
            return
        layer._count("absorbed")
        self.log.debug("{tx!r} ignores a {status} response", tx=self, status=status)

    def _receive_non_invite_response(self, response: Response) -> None:
        status = response.status
        if self.state in (State.TRYING, State.PROCEEDING):
            if status < 200:
                self.state = State.PROCEEDING
                self._deliver(response)
                return
            self._stop_timer("E", "F")
            self.state = State.COMPLETED
            if not self.reliable:
                self._start_timer("K", self.layer.t4, self._terminate)
            self._deliver(response)
            if self.reliable and self.state is State.COMPLETED:
                self._terminate()
            return
        self.layer._count("absorbed")
        self.log.debug("{tx!r} absorbs a {status} response", tx=self, status=status)

    # -- ACK and CANCEL ----------------------------------------------------------

    def _build_ack(self, response: Response) -> Request:
        """The ACK for a non-2xx final response (RFC 3261 §17.1.1.3)."""
        invite = self.request
        ack = Request("ACK", invite.uri)
        ack.add("Via", invite.via[0])
        ack.add("Max-Forwards", "70")
        for route in invite.get_all("Route"):
            ack.add("Route", route)
        ack.add("From", invite.get("From"))
        ack.add("To", response.get("To") or invite.get("To"))
        ack.add("Call-ID", invite.get("Call-ID"))
        cseq = invite.cseq
        assert cseq is not None  # checked by TransactionLayer.request
        ack.add("CSeq", f"{cseq.number} ACK")
        if self.layer.user_agent:
            ack.add("User-Agent", self.layer.user_agent)
        return ack

    def build_cancel(self, headers: Iterable[tuple[str, str]] = ()) -> Request:
        """The CANCEL for this INVITE (RFC 3261 §9.1), without sending it.

        Same Request-URI, Call-ID, From, To (no tag added), CSeq number and
        Route headers as the INVITE, and a single Via: the INVITE's top Via,
        branch included.  ``headers`` are appended (e.g. ``Reason``).
        """
        invite = self.request
        cancel = Request("CANCEL", invite.uri)
        cancel.add("Via", invite.via[0])
        cancel.add("Max-Forwards", "70")
        for route in invite.get_all("Route"):
            cancel.add("Route", route)
        cancel.add("From", invite.get("From"))
        cancel.add("To", invite.get("To"))
        cancel.add("Call-ID", invite.get("Call-ID"))
        cseq = invite.cseq
        assert cseq is not None  # checked by TransactionLayer.request
        cancel.add("CSeq", f"{cseq.number} CANCEL")
        if self.layer.user_agent:
            cancel.add("User-Agent", self.layer.user_agent)
        for name, value in headers:
            cancel.add(name, value)
        return cancel

    def cancel(
        self,
        *,
        on_response: OnResponse | None = None,
        on_timeout: OnTimeout | None = None,
        on_transport_error: OnTransportError | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> ClientTransaction | None:
        """Cancel this INVITE (RFC 3261 §9.1); return the CANCEL transaction if sent now.

        The CANCEL is its own non-INVITE client transaction to the same
        destination; the callbacks (optional: by default its outcome is
        only logged) follow it.  Before any provisional response the CANCEL
        is deferred until one arrives (``None`` is returned); once a final
        response has arrived nothing is sent (``None``).  Calling it again
        returns the CANCEL already sent.  If no final response to the INVITE
        arrives within 64*T1 of the CANCEL, the INVITE transaction is
        destroyed and ``on_timeout`` of the INVITE is called.
        """
        if not self.is_invite:
            raise ValueError("only INVITE transactions can be cancelled")
        if self.cancel_transaction is not None:
            return self.cancel_transaction
        extra = tuple(headers)
        if self.state is State.CALLING:
            self._cancel_pending = (on_response, on_timeout, on_transport_error, extra)
            return None
        if self.state is State.PROCEEDING:
            return self._send_cancel(on_response, on_timeout, on_transport_error, extra)
        return None

    @property
    def cancel_pending(self) -> bool:
        """Whether a CANCEL waits for the first provisional response."""
        return self._cancel_pending is not None

    def _send_cancel(
        self,
        on_response: OnResponse | None,
        on_timeout: OnTimeout | None,
        on_transport_error: OnTransportError | None,
        headers: tuple[tuple[str, str], ...],
    ) -> ClientTransaction:
        self._start_timer("cancel", 64 * self.layer.t1, self._cancel_expired)
        cancel = self.build_cancel(headers)
        tx = self.layer.request(
            cancel, self.destination,
            on_response=on_response or _log_cancel_response,
            on_timeout=on_timeout or _log_cancel_timeout,
            on_transport_error=on_transport_error,
        )
        self.cancel_transaction = tx
        return tx

    def _cancel_expired(self) -> None:
        if self.state is State.PROCEEDING:
            self.log.info("{tx!r} got no final response 64*T1 after its CANCEL", tx=self)
            self._fail(FailureReason.TIMEOUT, None)


def _log_cancel_response(response: Response, tx: ClientTransaction) -> None:
    tx.log.debug("CANCEL {branch} answered {status}", branch=tx.branch, status=response.status)


def _log_cancel_timeout(tx: ClientTransaction) -> None:
    tx.log.info("CANCEL {branch} failed: {reason}", branch=tx.branch, reason=tx.failure)


# ============================================================================
# Server transactions (RFC 3261 §17.2)
# ============================================================================


class ServerTransaction(_Transaction):
    """An INVITE (§17.2.1) or non-INVITE (§17.2.2) server transaction.

    Handed to the TU with each new request.  Public attributes:
    ``request``, ``source`` (where it came from), ``destination`` (where
    responses go, §18.2.2), ``method``, ``state``, ``last_response``,
    ``cancels`` (for a CANCEL: the INVITE server transaction it matches, or
    ``None``), and the TU hooks ``on_failure`` and (INVITE) ``on_cancel``,
    which default to the layer's ``on_server_failure`` and ``on_cancel``.
    """

    def __init__(
        self,
        layer: TransactionLayer,
        request: Request,
        source: Destination,
        key: _ServerKey,
        rfc2543: bool,
    ) -> None:
        super().__init__(layer, request, source.reliable)
        self.source = source
        self.destination = _response_destination(request, source)
        self.key = key
        self.rfc2543 = rfc2543
        self.state = State.PROCEEDING if self.is_invite else State.TRYING
        self.cancels: ServerTransaction | None = None
        self.on_failure: OnServerFailure | None = layer.on_server_failure
        self.on_cancel: OnCancel | None = layer.on_cancel if self.is_invite else None
        self._interval = layer.t1

    def __repr__(self) -> str:
        return f"<ServerTransaction {self.method} {self.key[0]} {self.state.value}>"

    def _start(self) -> None:
        if self.is_invite:
            self._start_timer("Trying", self.layer.trying_delay, self._send_trying)

    def _send_trying(self) -> None:
        if self.state is State.PROCEEDING and self.last_response is None:
            trying = make_response(self.request, 100)
            if self.layer.user_agent:
                trying.add("Server", self.layer.user_agent)
            self._send_response(trying)

    # -- responses from the TU ---------------------------------------------------

    def respond(self, response: Response) -> bool:
        """Send ``response`` (built with ``make_response(tx.request, ...)``) and drive the state machine.

        Returns whether it was passed to the transport: responses the state
        forbids (a second final, anything after termination, a non-2xx
        after a 2xx) are discarded, as §17.2 requires, and ``False`` is
        returned.  A transport error is reported to ``on_failure``.
        """
        status = response.status
        state = self.state
        layer = self.layer
        if state is State.TERMINATED:
            self.log.warn("{tx!r} is terminated; {status} not sent", tx=self, status=status)
            return False
        if self.is_invite:
            if state is State.PROCEEDING:
                self._stop_timer("Trying")
                if status < 200:
                    return self._send_response(response)
                if status < 300:
                    self.state = State.ACCEPTED
                    self._start_timer("L", 64 * layer.t1, self._terminate)
                    return self._send_response(response)
                self.state = State.COMPLETED
                if not self.reliable:
                    self._start_timer("G", layer.t1, self._timer_g)
                self._start_timer("H", 64 * layer.t1, self._timer_h)
                return self._send_response(response)
            if state is State.ACCEPTED and 200 <= status < 300:
                return self._send_response(response)
        elif state in (State.TRYING, State.PROCEEDING):
            if status < 200:
                self.state = State.PROCEEDING
                return self._send_response(response)
            self.state = State.COMPLETED
            if not self.reliable:
                self._start_timer("J", 64 * layer.t1, self._terminate)
            sent = self._send_response(response)
            if sent and self.reliable:
                self._terminate()
            return sent
        self.log.warn("{tx!r} discards a {status} response from the TU", tx=self, status=status)
        return False

    def _send_response(self, response: Response) -> bool:
        self.last_response = response
        error = self._transmit(response, self.destination)
        if error is None:
            return True
        self._transport_error(error)
        return False

    def _transport_error(self, error: Exception) -> None:
        self.layer._count("transport_errors")
        if self.state is not State.ACCEPTED:
            # RFC 6026: "Accepted" survives a transport error, so that
            # retransmissions of the INVITE are still absorbed.
            self.failure = FailureReason.TRANSPORT_ERROR
            self.error = error
            self._terminate()
        self._report(FailureReason.TRANSPORT_ERROR, error)

    def _report(self, reason: FailureReason, error: Exception | None) -> None:
        if self.on_failure is None:
            self.log.info("{tx!r} failed: {reason}", tx=self, reason=reason.value)
            return
        self.layer._call_tu(self.on_failure, self, reason, error)

    def _timer_g(self) -> None:
        if self.state is not State.COMPLETED or self.last_response is None:
            return
        self.layer._count("retransmissions")
        if self._send_response(self.last_response):
            self._interval = min(2 * self._interval, self.layer.t2)
            self._start_timer("G", self._interval, self._timer_g)

    def _timer_h(self) -> None:
        if self.state is State.COMPLETED:
            self.failure = FailureReason.TIMEOUT
            self._terminate()
            self.layer._count("timeouts")
            self._report(FailureReason.TIMEOUT, None)

    # -- requests from the network -------------------------------------------------

    def _receive_retransmission(self) -> None:
        """A retransmission of the request: answer with the last response, or absorb it."""
        layer = self.layer
        layer._count("absorbed")
        state = self.state
        if self.last_response is None or state in (State.ACCEPTED, State.CONFIRMED, State.TRYING):
            return
        layer._count("retransmissions")
        self._send_response(self.last_response)

    def _receive_ack(self, ack: Request, source: Destination) -> None:
        state = self.state
        layer = self.layer
        if state is State.COMPLETED:
            self._stop_timer("G", "H")
            self.state = State.CONFIRMED
            if self.reliable:
                self._terminate()
            else:
                self._start_timer("I", layer.t4, self._terminate)
        elif state is State.ACCEPTED:
            layer._stray(ack, source)
        else:
            layer._count("absorbed")

    def _acknowledges(self, ack: Request) -> bool:
        """RFC 2543 matching of an ACK: its To tag is the one of our final response."""
        if not self.rfc2543:
            return True
        sent = self.last_response
        if sent is None:
            return False
        ours = sent.to_addr
        theirs = ack.to_addr
        return ours is None or ours.tag is None or (theirs is not None and theirs.tag == ours.tag)

    def _same_request(self, request: Request) -> bool:
        """RFC 2543 matching of a request: the To tag is the original one."""
        if not self.rfc2543:
            return True
        mine, theirs = self.request.to_addr, request.to_addr
        return (mine.tag if mine else None) == (theirs.tag if theirs else None)


def _response_destination(request: Request, source: Destination) -> Destination:
    """Where responses to ``request`` go (RFC 3261 §18.2.2, RFC 3581 §4)."""
    if source.reliable:
        return source
    via = request.top_via
    if via is None:
        return source
    default = _DEFAULT_PORTS.get(source.transport.lower(), 5060)
    if via.maddr:
        return Destination(source.transport, via.maddr, via.port or default)
    if via.has_rport:
        return source
    return Destination(source.transport, source.host, via.port or default)


# ============================================================================
# The layer
# ============================================================================


class TransactionLayer:
    """Matches messages to transactions and owns every live transaction.

    ``clock`` provides ``callLater``; ``send(message, destination)`` is the
    transport (it may raise to signal a transport error); ``on_request``
    receives each new request with its :class:`ServerTransaction`;
    ``on_stray`` receives ACKs for 2xx responses and 2xx responses that
    match no client transaction.  ``on_cancel(cancel, cancel_tx)`` is the
    default hook for a CANCEL matching an INVITE server transaction (the
    INVITE transaction is ``cancel_tx.cancels``); when neither it nor the
    INVITE transaction's own ``on_cancel`` is set, such a CANCEL goes to
    ``on_request`` like a CANCEL that matches nothing.  The TU answers the
    CANCEL itself (200, then 487 to the INVITE; 481 when unmatched).
    ``on_server_failure`` is the default ``on_failure`` hook of server
    transactions.

    ``via_sent_by(destination)`` gives ``(host, port)`` for the Via the
    layer adds to requests that have none; without it such requests are
    refused.  ``user_agent`` goes into the User-Agent header of the ACKs and
    CANCELs the layer builds and the Server header of its 100 Trying.

    Received requests get the ``received`` and ``rport`` Via parameters of
    RFC 3261 §18.2.1 and RFC 3581 filled in from their source before the TU
    sees them.
    """

    log: ClassVar[Logger] = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        send: SendFunction,
        on_request: OnRequest,
        on_stray: OnStray,
        *,
        on_cancel: OnCancel | None = None,
        on_server_failure: OnServerFailure | None = None,
        t1: float = 0.5,
        t2: float = 4.0,
        t4: float = 5.0,
        timer_d: float = 32.0,
        trying_delay: float = 0.2,
        user_agent: str | None = None,
        via_sent_by: Callable[[Destination], tuple[str, int | None]] | None = None,
    ) -> None:
        if t1 <= 0 or t2 < t1 or t4 < 0 or timer_d < 0 or trying_delay < 0:
            raise ValueError("timer values must satisfy 0 < T1 <= T2 and be non-negative")
        self.clock = clock
        self.send = send
        self.on_request = on_request
        self.on_stray = on_stray
        self.on_cancel = on_cancel
        self.on_server_failure = on_server_failure
        self.t1 = t1
        self.t2 = t2
        self.t4 = t4
        self.timer_d = timer_d
        self.trying_delay = trying_delay
        self.user_agent = user_agent
        self.via_sent_by = via_sent_by
        self._clients: dict[_ClientKey, ClientTransaction] = {}
        self._servers: dict[_ServerKey, ServerTransaction] = {}
        self._live: Counter[str] = Counter()
        self._counters: Counter[str] = Counter()

    # -- metrics ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._clients) + len(self._servers)

    def stats(self) -> dict[str, int]:
        """Live transactions by kind and cumulative event counts, for metrics."""
        out = {
            "client_invite": self._live["client_invite"],
            "client_non_invite": self._live["client_non_invite"],
            "server_invite": self._live["server_invite"],
            "server_non_invite": self._live["server_non_invite"],
        }
        for name in ("created", "retransmissions", "absorbed", "timeouts", "transport_errors", "stray"):
            out[name] = self._counters[name]
        return out

    def _count(self, name: str) -> None:
        self._counters[name] += 1

    @staticmethod
    def _kind(tx: _Transaction) -> str:
        side = "client" if isinstance(tx, ClientTransaction) else "server"
        return f"{side}_invite" if tx.is_invite else f"{side}_non_invite"

    def _forget(self, tx: _Transaction) -> None:
        table: dict[Any, Any] = self._clients if isinstance(tx, ClientTransaction) else self._servers
        if table.get(tx.key) is tx:
            del table[tx.key]
            self._live[self._kind(tx)] -= 1

    def _call_tu(self, callback: Callable[..., object], *args: object) -> None:
        try:
            callback(*args)
        except Exception:  # noqa: BLE001 (TU failures are logged and contained)
            self.log.failure("transaction user callback {callback!r} failed", callback=callback)

    # -- lookups ---------------------------------------------------------------

    def client_transaction(self, branch: str, method: str) -> ClientTransaction | None:
        """The live client transaction for ``branch`` and ``method``, if any."""
        return self._clients.get((branch, method))

    # -- client side -------------------------------------------------------------

    def request(
        self,
        request: Request,
        destination: Destination,
        on_response: OnResponse,
        on_timeout: OnTimeout,
        *,
        on_transport_error: OnTransportError | None = None,
    ) -> ClientTransaction:
        """Start a client transaction sending ``request`` to ``destination``.

        The top Via gets a fresh RFC 3261 branch unless it already has one
        (a CANCEL reuses its INVITE's) and its transport is set to the
        destination's; a request without Via gets one from ``via_sent_by``.
        ``on_response(response, tx)`` receives every provisional and final
        response (and, for INVITE, every 2xx arriving in "Accepted");
        ``on_timeout(tx)`` is called when B or F fires; see the module
        docstring for transport errors, which may be reported before this
        method returns (the transaction is then already terminated).
        Raises ``ValueError`` for an ACK (see :meth:`send_ack`), a request
        lacking Call-ID, From, To or a CSeq matching its method, or a branch
        already in use for this method.
        """
        if request.method == "ACK":
            raise ValueError("ACK is not a transaction; use send_ack()")
        cseq = request.cseq
        if cseq is None or cseq.method != request.method:
            raise ValueError("request needs a CSeq header with its own method")
        for name in ("Call-ID", "From", "To"):
            if request.get(name) is None:
                raise ValueError(f"request needs a {name} header")
        via = self._prepare_via(request, destination)
        branch = via.branch
        assert branch is not None
        key = (branch, request.method)
        if key in self._clients:
            raise ValueError(f"a {request.method} client transaction with branch {branch} exists")
        tx = ClientTransaction(self, request, destination, branch, on_response, on_timeout, on_transport_error)
        self._clients[key] = tx
        self._live[self._kind(tx)] += 1
        self._count("created")
        tx._start()
        return tx

    def send_ack(self, ack: Request, destination: Destination) -> bool:
        """Send the ACK for a 2xx (its own "transaction", RFC 3261 §13.2.2.4, §17.1.1.3).

        Gives the ACK a Via branch like :meth:`request` does.  Returns
        ``False`` (and logs) on a transport error instead of raising.
        """
        if ack.method != "ACK":
            raise ValueError("send_ack() sends ACK requests only")
        self._prepare_via(ack, destination)
        try:
            self.send(ack, destination)
        except Exception as exc:  # noqa: BLE001 (reported as False)
            self._count("transport_errors")
            self.log.warn("transport error sending ACK to {destination}: {error!r}",
                          destination=destination, error=exc)
            return False
        return True

    def _prepare_via(self, request: Request, destination: Destination) -> Via:
        transport = destination.transport.upper()
        via = request.top_via
        if via is None:
            if self.via_sent_by is None:
                raise ValueError("request has no Via and the layer has no via_sent_by")
            host, port = self.via_sent_by(destination)
            via = Via(transport, host, port, (("branch", new_branch()), ("rport", None)))
            request.add("Via", via, first=True)
            return via
        changed = via
        if not via.has_magic_cookie:
            changed = changed.with_param("branch", new_branch())
        if via.transport != transport:
            changed = changed._replace(transport=transport)
        if changed is not via:
            _replace_top_via(request, changed)
        return changed

    # -- incoming messages ----------------------------------------------------------

    def receive(self, message: Message, source: Destination) -> None:
        """Hand a parsed message from the transport to its transaction or the TU.

        Never raises: messages that cannot be matched (no Via, CSeq...) are
        logged and dropped, and TU failures are logged.
        """
        try:
            if isinstance(message, Request):
                self._receive_request(message, source)
            elif isinstance(message, Response):
                self._receive_response(message, source)
        except (SIPParseError, _Unmatchable) as exc:
            self.log.warn("dropping unmatchable {what} from {source}: {error}",
                          what=_describe(message), source=source, error=exc)
        except Exception:  # noqa: BLE001 (the transport must survive any message)
            self.log.failure("failed to process a {what} from {source}", what=_describe(message), source=source)

    def _receive_response(self, response: Response, source: Destination) -> None:
        via = response.top_via
        cseq = response.cseq
        branch = via.branch if via is not None else None
        tx = None
        if branch is not None and cseq is not None:
            tx = self._clients.get((branch, cseq.method))
        if tx is not None:
            tx._receive(response)
        elif 200 <= response.status < 300:
            self._stray(response, source)
        else:
            self._count("stray")
            self.log.debug("dropping stray {status} response from {source}", status=response.status, source=source)

    def _stray(self, message: Message, source: Destination) -> None:
        self._count("stray")
        self._call_tu(self.on_stray, message, source)

    def _receive_request(self, request: Request, source: Destination) -> None:
        via = request.top_via
        if via is None:
            raise _Unmatchable("request without Via")
        self._stamp_via(request, via, source)
        method = request.method
        if method == "ACK":
            key, _ = self._server_key(request, "INVITE")
            tx = self._servers.get(key)
            if tx is not None and tx._acknowledges(request):
                tx._receive_ack(request, source)
            else:
                self._stray(request, source)
            return
        key, rfc2543 = self._server_key(request, method)
        tx = self._servers.get(key)
        if tx is not None:
            if tx._same_request(request):
                tx._receive_retransmission()
            else:
                self.log.warn("dropping {method} from {source}: RFC 2543 transaction clash",
                              method=method, source=source)
            return
        tx = ServerTransaction(self, request, source, key, rfc2543)
        self._servers[key] = tx
        self._live[self._kind(tx)] += 1
        self._count("created")
        tx._start()
        if method == "CANCEL":
            invite_key, _ = self._server_key(request, "INVITE")
            invite = self._servers.get(invite_key)
            if invite is not None and invite._same_request(request):
                tx.cancels = invite
                if invite.on_cancel is not None:
                    self._call_tu(invite.on_cancel, request, tx)
                    return
        self._call_tu(self.on_request, request, tx)

    @staticmethod
    def _stamp_via(request: Request, via: Via, source: Destination) -> None:
        """Add ``received`` / fill ``rport`` in the top Via (RFC 3261 §18.2.1, RFC 3581 §4)."""
        if not _is_ip(source.host):
            return
        stamped = via
        wants_rport = via.has_rport and via.rport is None
        if wants_rport or via.host.strip("[]").lower() != source.host.strip("[]").lower():
            stamped = stamped.with_param("received", source.host.strip("[]"))
        if wants_rport:
            stamped = stamped.with_param("rport", str(source.port))
        if stamped is not via:
            _replace_top_via(request, stamped)

    @staticmethod
    def _server_key(request: Request, method: str) -> tuple[_ServerKey, bool]:
        """The server transaction key of ``request`` as if its method were ``method``.

        RFC 3261 §17.2.3: branch, sent-by and method.  Without the magic
        cookie (RFC 2543 peers) an approximation: Call-ID, CSeq number,
        method, From tag and top Via; the To tag is checked on lookup.
        """
        via = request.top_via
        if via is None:
            raise _Unmatchable("request without Via")
        sent_by = (via.host.lower(), via.port)
        if via.has_magic_cookie:
            return (via.branch, sent_by, method), False
        cseq = request.cseq
        from_addr = request.from_addr
        call_id = request.call_id
        if cseq is None or from_addr is None or call_id is None:
            raise _Unmatchable("RFC 2543 request without CSeq, From or Call-ID")
        return ("rfc2543", call_id, cseq.number, method, from_addr.tag, sent_by, via.branch), True
