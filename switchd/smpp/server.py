"""The SMPP 3.4 server customers' ESMEs bind to.

Two layers, as for SIP:

:class:`ServerSession` (sans-IO)
    bytes in, :class:`Action` values out.  It frames the stream, keeps the
    bind state, answers what needs no decision (enquire_link, unbind,
    malformed or unknown PDUs, requests in the wrong bind state), numbers
    our deliver_sm and holds them to the window.  No clock, no socket.

:class:`SmppServerProtocol` / :class:`SmppServerFactory`
    the thin Twisted adapter: writes what the session says, asks the
    :class:`Directory` about binds and the message engine about
    messages, runs the timers on the injected clock (inactivity, response
    timeouts), and unbinds every session at shutdown.

Rules worth knowing (each one is tested):

* a bind is checked against ``smpp_connections``: the login is system_id, the
  password is verified against its salted hash in constant time, the
  system_type ("Identificator on SMSC") must match unless it is ``"0"`` or
  empty, and the service must be active;
* a second bind on a session gets ``ESME_RALYBND``; submit_sm, data_sm,
  query_sm, cancel_sm and replace_sm before a bind, or on a receiver bind,
  get ``ESME_RINVBNDSTS``;
* submit_sm and data_sm take a token from the ``("smpp-reception",
  connection id)`` bucket of the node's rate limiter (the connection's
  reception speed); beyond it the answer is ``ESME_RTHROTTLED`` and nothing
  is stored, so the ESME resends and loses nothing;
* the message_id goes back only once the engine has stored the message
  (``MessageEngine.submit`` returned);
* deliver_sm (receipts and MO) are pushed by the engine through
  ``MessageEngine.attach`` to receiver and transceiver binds, at most
  ``window`` unanswered at once; a push's Deferred fires on
  ``deliver_sm_resp`` with ``ESME_ROK`` and errbacks with
  :class:`DeliveryFailed` otherwise (refused, timed out, session gone), so the
  engine keeps the delivery for later.
"""

from __future__ import annotations

import datetime
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any
from typing import Protocol as TypingProtocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import select
from sqlalchemy.engine import Connection
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..api.auth import hash_secret, verify_secret
from ..core.ratelimit import RateLimiter
from ..sms.engine import Delivery, MessageOrigin, MessageRefused, Submission
from ..store.models import accounts, services, smpp_connections, sms_messages
from . import dlr
from . import pdu as p

__all__ = [
    "RECEPTION",
    "Action",
    "BindRefused",
    "BindRequested",
    "Close",
    "DeliveryFailed",
    "DeliveryResult",
    "DeliverySent",
    "Directory",
    "Request",
    "Send",
    "ServerSession",
    "SmppAccount",
    "SmppServerFactory",
    "SmppServerProtocol",
    "SmppServerService",
    "Unbound",
    "address_type",
    "deliver_sm_for",
]

#: Rate limiter kind of the reception speed restriction, keyed by connection id.
RECEPTION = "smpp-reception"
#: Our system_id in bind responses.
SYSTEM_ID = "switchd"

TRANSMITTER = "transmitter"
RECEIVER = "receiver"
TRANSCEIVER = "transceiver"

# Session states
OPEN = "open"
BINDING = "binding"
BOUND = "bound"
UNBINDING = "unbinding"
CLOSED = "closed"

_BIND_TYPES: dict[type, str] = {
    p.BindTransmitter: TRANSMITTER,
    p.BindReceiver: RECEIVER,
    p.BindTransceiver: TRANSCEIVER,
}
_BIND_RESPONSES: dict[type, type] = {
    p.BindTransmitter: p.BindTransmitterResp,
    p.BindReceiver: p.BindReceiverResp,
    p.BindTransceiver: p.BindTransceiverResp,
}
#: Operations of a transmitter (or transceiver) bind, answered by the engine.
_TRANSMIT_OPERATIONS = (p.SubmitSm, p.DataSm, p.QuerySm, p.CancelSm, p.ReplaceSm)
#: Requests an ESME never sends to an SMSC, or that switchd does not serve.
_NOT_SERVED = (p.DeliverSm, p.SubmitMulti, p.Outbind, p.AlertNotification)

_MAX_SEQUENCE = 0x7FFFFFFF


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class DeliveryFailed(Exception):
    """A deliver_sm that was not accepted; the engine keeps the delivery.

    Attributes:
        reason: what happened (refused, timeout, closed, unencodable).
        status: the ESME's command_status, when it answered.
    """

    def __init__(self, reason: str, status: int | None = None) -> None:
        detail = reason if status is None else f"{reason} ({p.status_name(status)})"
        super().__init__(detail)
        self.reason = reason
        self.status = status


class BindRefused(Exception):
    """A bind the server refuses; ``status`` goes back in the bind response."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{p.status_name(status)}: {reason}")
        self.status = status
        self.reason = reason


# --------------------------------------------------------------------------
# Sans-IO session
# --------------------------------------------------------------------------


class Action:
    """Something the adapter must do after feeding the session."""

    __slots__ = ()


@dataclass(frozen=True)
class Send(Action):
    """Write these bytes."""

    data: bytes


@dataclass(frozen=True)
class Close(Action):
    """Close the connection once what was written has gone.

    ``graceful``: after an unbind, first let requests in progress get their answers.
    """

    reason: str
    graceful: bool = False


@dataclass(frozen=True)
class BindRequested(Action):
    """Authenticate and answer with :meth:`ServerSession.accept_bind` or ``refuse_bind``."""

    pdu: Any
    bind_type: str


@dataclass(frozen=True)
class Request(Action):
    """A message operation of a bound transmitter/transceiver; answer with ``answer``."""

    pdu: Any


@dataclass(frozen=True)
class DeliverySent(Action):
    """A deliver_sm is on the wire: time its response."""

    token: Hashable
    sequence: int
    data: bytes


@dataclass(frozen=True)
class DeliveryResult(Action):
    """The outcome of a deliver_sm: ``status`` from the ESME, or ``None`` if it never answered.

    ``sequence`` is the deliver_sm's (``None`` if it never left the queue).
    """

    token: Hashable
    status: int | None
    reason: str = ""
    sequence: int | None = None


@dataclass(frozen=True)
class Unbound(Action):
    """The ESME unbound (our unbind_resp is in a preceding Send) or answered our unbind."""

    by_peer: bool


@dataclass(frozen=True)
class Malformed(Action):
    """A PDU that could not be decoded (already answered in a preceding Send)."""

    error: p.PduError


class ServerSession:
    """The state of one ESME connection, sans-IO.

    ``receive`` takes bytes and returns actions; the other methods return
    the bytes (or actions) of what the adapter decided.  Deliveries beyond
    the window wait here in order and go out as answers come back.
    """

    def __init__(self, *, max_pdu_length: int = p.DEFAULT_MAX_LENGTH, window: int = 16,
                 system_id: str = SYSTEM_ID) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self.reader = p.PduReader(max_pdu_length)
        self.window = window
        self.system_id = system_id
        self.state = OPEN
        self.bind_type: str | None = None
        self.login: str | None = None
        self._sequence = 0
        # sequence -> token of the deliver_sm waiting for its answer
        self._outstanding: dict[int, Hashable] = {}
        self._queue: deque[tuple[Hashable, bytes]] = deque()  # encoded deliver_sm waiting for the window
        self._unbind_sequence: int | None = None

    # -- state ------------------------------------------------------------------

    @property
    def bound(self) -> bool:
        return self.state == BOUND

    @property
    def can_transmit(self) -> bool:
        return self.state == BOUND and self.bind_type in (TRANSMITTER, TRANSCEIVER)

    @property
    def can_receive(self) -> bool:
        return self.state == BOUND and self.bind_type in (RECEIVER, TRANSCEIVER)

    @property
    def in_flight(self) -> int:
        """deliver_sm sent and not answered yet."""
        return len(self._outstanding)

    @property
    def queued(self) -> int:
        """deliver_sm waiting for room in the window."""
        return len(self._queue)

    def next_sequence(self) -> int:
        self._sequence = self._sequence % _MAX_SEQUENCE + 1
        return self._sequence

    # -- input --------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Action]:
        """Feed bytes from the ESME; returns what to do, in order."""
        actions: list[Action] = []
        for item in self.reader.feed(data):
            if isinstance(item, p.PduError):
                self._malformed(item, actions)
                if item.fatal:
                    break
            else:
                self._dispatch(item, actions)
        return actions

    def _malformed(self, error: p.PduError, actions: list[Action]) -> None:
        if error.command_id is not None and error.command_id & p.RESPONSE_BIT and not error.fatal:
            # A broken answer to one of our deliver_sm: count it as a refusal, never answer it.
            if error.command_id == p.DELIVER_SM_RESP:
                self._answered(error.sequence, error.status, actions)
            actions.append(Malformed(error))
            return
        response = error.response()
        if response is not None:
            actions.append(Send(response.encode()))
        actions.append(Malformed(error))
        if error.fatal:
            actions.append(Close(f"framing lost: {error.reason}"))

    def _dispatch(self, pdu: p.Pdu, actions: list[Action]) -> None:
        if pdu.is_response:
            self._response(pdu, actions)
            return
        if self.state in (CLOSED,):
            return
        kind = type(pdu)
        if kind in _BIND_TYPES:
            if self.state != OPEN:
                actions.append(Send(self._encode_answer(pdu, p.ESME_RALYBND)))
                return
            self.state = BINDING
            actions.append(BindRequested(pdu, _BIND_TYPES[kind]))
        elif kind is p.EnquireLink:
            actions.append(Send(p.EnquireLinkResp(sequence=pdu.sequence).encode()))
        elif kind is p.Unbind:
            if self.state not in (BOUND, UNBINDING):
                actions.append(Send(self._encode_answer(pdu, p.ESME_RINVBNDSTS)))
                return
            actions.append(Send(p.UnbindResp(sequence=pdu.sequence).encode()))
            self._end(actions, "unbound by the ESME")
            actions.append(Unbound(by_peer=True))
            actions.append(Close("unbound by the ESME", graceful=True))
        elif isinstance(pdu, _TRANSMIT_OPERATIONS):
            if not self.can_transmit:
                actions.append(Send(self._encode_answer(pdu, p.ESME_RINVBNDSTS)))
                return
            actions.append(Request(pdu))
        elif isinstance(pdu, _NOT_SERVED):
            actions.append(Send(self._encode_answer(pdu, p.ESME_RINVCMDID)))
        else:  # pragma: no cover - every request class is listed above
            actions.append(Send(p.GenericNack(sequence=pdu.sequence, status=p.ESME_RINVCMDID).encode()))

    def _response(self, pdu: p.Pdu, actions: list[Action]) -> None:
        if isinstance(pdu, p.DeliverSmResp):
            self._answered(pdu.sequence, pdu.status, actions)
        elif isinstance(pdu, p.GenericNack):
            self._answered(pdu.sequence, pdu.status or p.ESME_RUNKNOWNERR, actions)
        elif isinstance(pdu, p.UnbindResp) and pdu.sequence == self._unbind_sequence:
            self._unbind_sequence = None
            self._end(actions, "unbound")
            actions.append(Unbound(by_peer=False))
            actions.append(Close("unbind answered", graceful=True))
        # enquire_link_resp: the adapter saw traffic, nothing more to do; other
        # stray responses are ignored (never answer a response).

    def _answered(self, sequence: int, status: int, actions: list[Action]) -> None:
        token = self._outstanding.pop(sequence, None)
        if token is None:
            return
        actions.append(DeliveryResult(token, status, sequence=sequence))
        self._fill_window(actions)

    # -- answers ------------------------------------------------------------------

    @staticmethod
    def _encode_answer(pdu: p.Pdu, status: int, **values: Any) -> bytes:
        try:
            return p.response_for(pdu, status, **values).encode()
        except p.FieldError:
            # A value we cannot send (an overlong message id): a plain error instead.
            return p.response_for(pdu, p.ESME_RSYSERR).encode()

    def answer(self, pdu: p.Pdu, status: int = p.ESME_ROK, **values: Any) -> bytes:
        """The response to a :class:`Request`."""
        return self._encode_answer(pdu, status, **values)

    def accept_bind(self, pdu: p.Pdu, login: str) -> bytes:
        """Bound: the bind response with our system_id (and sc_interface_version)."""
        self.state = BOUND
        self.bind_type = _BIND_TYPES[type(pdu)]
        self.login = login
        tlvs = {"sc_interface_version": p.SMPP_VERSION_34} if pdu.interface_version >= p.SMPP_VERSION_34 else {}
        return _BIND_RESPONSES[type(pdu)](sequence=pdu.sequence, system_id=self.system_id, tlvs=tlvs).encode()

    def refuse_bind(self, pdu: p.Pdu, status: int) -> bytes:
        """Not bound; the session may try again."""
        if self.state == BINDING:
            self.state = OPEN
        return _BIND_RESPONSES[type(pdu)](sequence=pdu.sequence, status=status).encode()

    # -- our requests ----------------------------------------------------------------

    def enquire_link(self) -> bytes:
        return p.EnquireLink(sequence=self.next_sequence()).encode()

    def unbind(self) -> list[Action]:
        """Start unbinding from our side (shutdown, connection removed).

        New requests get ``ESME_RINVBNDSTS`` from now on; deliveries in
        flight may still be answered until the ESME's unbind_resp.
        """
        if self.state == UNBINDING:
            return []
        if self.state != BOUND:
            self.state = CLOSED
            return [Close("not bound", graceful=True)]
        self.state = UNBINDING
        actions: list[Action] = [DeliveryResult(token, None, "unbinding") for token, _ in self._queue]
        self._queue.clear()
        self._unbind_sequence = self.next_sequence()
        actions.append(Send(p.Unbind(sequence=self._unbind_sequence).encode()))
        return actions

    def deliver(self, token: Hashable, message: p.DeliverSm) -> list[Action]:
        """Send (or queue behind the window) a deliver_sm; raises :class:`p.FieldError` if it cannot be encoded."""
        if not self.can_receive:
            return [DeliveryResult(token, None, "the session is not bound as a receiver")]
        data = message.encode()  # the error now, to the caller, rather than later to nobody
        actions: list[Action] = []
        self._queue.append((token, data))
        self._fill_window(actions)
        return actions

    def _fill_window(self, actions: list[Action]) -> None:
        while self._queue and len(self._outstanding) < self.window and self.can_receive:
            token, data = self._queue.popleft()
            sequence = self.next_sequence()
            self._outstanding[sequence] = token
            # The sequence is the header's last field: set it in the encoded PDU.
            actions.append(DeliverySent(token, sequence, data[:12] + sequence.to_bytes(4, "big") + data[16:]))

    def expire(self, sequence: int) -> list[Action]:
        """No answer to a deliver_sm in time: it failed; room for the next one."""
        actions: list[Action] = []
        token = self._outstanding.pop(sequence, None)
        if token is not None:
            actions.append(DeliveryResult(token, None, "no deliver_sm_resp in time", sequence))
            self._fill_window(actions)
        return actions

    def close(self, reason: str = "connection closed") -> list[Action]:
        """The connection is gone: every delivery in flight or queued failed."""
        actions: list[Action] = []
        self._end(actions, reason)
        self.state = CLOSED
        return actions

    def _end(self, actions: list[Action], reason: str) -> None:
        for sequence, token in self._outstanding.items():
            actions.append(DeliveryResult(token, None, reason, sequence))
        self._outstanding.clear()
        for token, _ in self._queue:
            actions.append(DeliveryResult(token, None, reason))
        self._queue.clear()
        self.state = CLOSED


# --------------------------------------------------------------------------
# deliver_sm from the engine's deliveries
# --------------------------------------------------------------------------


def address_type(address: str) -> tuple[str, int, int]:
    """(address, TON, NPI) for an address we send: digits are E.164, letters alphanumeric.

    A leading ``+`` is dropped and means international; 10 digits or more
    are read as international too (ISDN plan); shorter digit strings are
    TON unknown (short codes, national numbers); anything with a letter is
    an alphanumeric sender (TON 5, NPI 0).  Empty stays empty (0, 0).
    """
    if not address:
        return "", 0, 0
    if address.startswith("+") and address[1:].isdigit():
        return address[1:], 1, 1
    if address.isdigit():
        return address, (1 if len(address) >= 10 else 0), 1
    return address, 5, 0


def deliver_sm_for(delivery: Delivery) -> p.DeliverSm:
    """The deliver_sm of a receipt or MO; content beyond 254 octets goes in message_payload."""
    source, source_ton, source_npi = address_type(delivery.source)
    destination, dest_ton, dest_npi = address_type(delivery.destination)
    tlvs = dict(delivery.tlvs)
    content = bytes(delivery.content)
    if len(content) > p.SM_MAX_LENGTH:
        tlvs["message_payload"] = content
        content = b""
    return p.DeliverSm(
        source_addr_ton=source_ton,
        source_addr_npi=source_npi,
        source_addr=source,
        dest_addr_ton=dest_ton,
        dest_addr_npi=dest_npi,
        destination_addr=destination,
        esm_class=delivery.esm_class,
        data_coding=delivery.data_coding,
        short_message=content,
        tlvs=tlvs,
    )


# --------------------------------------------------------------------------
# Binds: SMPP connections in the database
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SmppAccount:
    """An SMPP connection as a bind sees it."""

    connection_id: int
    service_id: int
    account_id: int
    login: str
    system_type: str
    reception_speed: int
    password_hash: str  # to notice a changed password on reload

    def origin(self) -> MessageOrigin:
        return MessageOrigin(kind="smpp", service_id=self.service_id, account_id=self.account_id,
                             connection_id=self.connection_id)


# Verified against when the login is unknown, so timing does not tell logins apart.
_DUMMY_SALT = "0" * 32
_DUMMY_HASH = hash_secret("", _DUMMY_SALT)


def _connection_query():
    return (
        select(
            smpp_connections.c.id,
            smpp_connections.c.service_id,
            smpp_connections.c.login,
            smpp_connections.c.password_salt,
            smpp_connections.c.password_hash,
            smpp_connections.c.system_type,
            smpp_connections.c.reception_speed,
            services.c.account_id,
            services.c.status,
        )
        .select_from(smpp_connections.join(services, smpp_connections.c.service_id == services.c.id)
                     .join(accounts, services.c.account_id == accounts.c.id))
    )


def _account(row) -> SmppAccount:
    return SmppAccount(
        connection_id=row.id,
        service_id=row.service_id,
        account_id=row.account_id,
        login=row.login,
        system_type=row.system_type or "0",
        reception_speed=row.reception_speed,
        password_hash=row.password_hash,
    )


def check_bind(conn: Connection, system_id: str, password: str, system_type: str) -> SmppAccount:
    """The SMPP connection of a bind, or :class:`BindRefused` with the status to answer."""
    row = conn.execute(_connection_query().where(smpp_connections.c.login == system_id)).first()
    if row is None:
        verify_secret(password, _DUMMY_SALT, _DUMMY_HASH)
        raise BindRefused(p.ESME_RINVSYSID, f"no SMPP connection with login {system_id!r}")
    if not verify_secret(password, row.password_salt, row.password_hash):
        raise BindRefused(p.ESME_RINVPASWD, f"wrong password for {system_id!r}")
    expected = (row.system_type or "0").strip()
    if expected not in ("", "0") and system_type != expected:
        raise BindRefused(p.ESME_RINVSYSTYP, f"system_type {system_type!r} is not the one of {system_id!r}")
    if row.status != "active":
        raise BindRefused(p.ESME_RBINDFAIL, f"the service of {system_id!r} is {row.status}")
    return _account(row)


def load_accounts(conn: Connection, connection_ids: list[int]) -> dict[int, SmppAccount]:
    """Current settings of bound connections (absent: deleted or service not active)."""
    rows = conn.execute(_connection_query().where(smpp_connections.c.id.in_(connection_ids))).all()
    return {row.id: _account(row) for row in rows if row.status == "active"}


def data_coding_of(conn: Connection, account_id: int, message_id: str) -> int | None:
    """The data_coding of one of the account's messages (replace_sm keeps it); None if unknown."""
    return conn.execute(
        select(sms_messages.c.data_coding).where(
            sms_messages.c.message_id == message_id, sms_messages.c.account_id == account_id
        )
    ).scalar()


class Database(TypingProtocol):
    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred: ...


class Directory:
    """What the server reads from the database (in its pool): binds, reloads, codings."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def authenticate(self, system_id: str, password: str, system_type: str) -> Deferred:
        """Fires with an :class:`SmppAccount` or fails with :class:`BindRefused`."""
        return self.db.run(check_bind, system_id, password, system_type)

    def reload(self, connection_ids: list[int]) -> Deferred:
        """Fires with {connection id: SmppAccount} for the ones still allowed to bind."""
        return self.db.run(load_accounts, connection_ids)

    def data_coding_of(self, account_id: int, message_id: str) -> Deferred:
        """Fires with the message's data_coding, or None."""
        return self.db.run(data_coding_of, account_id, message_id)


# --------------------------------------------------------------------------
# The Twisted adapter
# --------------------------------------------------------------------------


class MessageEngine(TypingProtocol):
    async def submit(self, origin: MessageOrigin, submission: Submission) -> Any: ...
    async def query(self, origin: MessageOrigin, message_id: str) -> Any: ...
    async def cancel(self, origin: MessageOrigin, message_id: str) -> bool: ...
    async def replace(self, origin: MessageOrigin, message_id: str, content: bytes, data_coding: int) -> bool: ...
    def attach(self, connection_id: int, push: Callable[[Delivery], Deferred]) -> Callable[[], None]: ...


class ServerMetrics:
    """Requests by command and status, binds by outcome, in the node's registry."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter("switchd_smpp_server_requests", "SMPP requests from ESMEs by command and answer",
                                ["command", "status"], registry=registry)
        self.binds = Counter("switchd_smpp_server_binds", "Bind attempts by bind type and answer",
                             ["type", "status"], registry=registry)
        self.deliveries = Counter("switchd_smpp_server_deliveries", "deliver_sm to ESMEs by outcome",
                                  ["outcome"], registry=registry)
        self.malformed = Counter("switchd_smpp_server_malformed", "PDUs that could not be decoded, by answer",
                                 ["status"], registry=registry)
        self._children: dict[tuple[str, int], Any] = {}

    def request(self, command: str, status: int) -> None:
        """Count one answered request (children cached: this runs for every submit_sm)."""
        child = self._children.get((command, status))
        if child is None:
            child = self._children[(command, status)] = self.requests.labels(command, p.status_name(status))
        child.inc()


class SmppServerProtocol(Protocol):
    """One ESME connection: a :class:`ServerSession` with I/O and timers."""

    log = Logger()

    def __init__(self, factory: SmppServerFactory) -> None:
        self.factory = factory
        self.clock = factory.clock
        self.session = ServerSession(max_pdu_length=factory.max_pdu_length, window=factory.window,
                                     system_id=factory.system_id)
        self.account: SmppAccount | None = None
        self.peer = "?"
        self.connected = False
        self._detach: Callable[[], None] | None = None
        self._last_received = 0.0
        self._enquire_sent_at: float | None = None
        self._idle_call: IDelayedCall | None = None
        self._close_guard: IDelayedCall | None = None
        self._closing = False
        self._timers: dict[int, IDelayedCall] = {}
        self._pushes: dict[Hashable, Deferred] = {}
        self._tokens = 0
        self._in_flight = 0
        self._bind_failures = 0
        self._closed: list[Deferred] = []

    # -- connection -----------------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected = True
        address = self.transport.getPeer()
        self.peer = f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
        self._last_received = self.clock.seconds()
        self.factory.sessions.add(self)
        self._schedule_idle(self.factory.inactivity_timeout)

    def dataReceived(self, data: bytes) -> None:
        self._last_received = self.clock.seconds()
        self._enquire_sent_at = None
        self._run(self.session.receive(data))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connected = False
        self.factory.sessions.discard(self)
        for call in (self._idle_call, self._close_guard):
            if call is not None and call.active():
                call.cancel()
        self._idle_call = self._close_guard = None
        self._stop_deliveries()
        self._run(self.session.close())
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        if self.account is not None:
            self.log.info("SMPP {login} ({bind}) from {peer} disconnected", login=self.account.login,
                          bind=self.session.bind_type, peer=self.peer)
        waiting, self._closed = self._closed, []
        for d in waiting:
            d.callback(None)

    def _stop_deliveries(self) -> None:
        if self._detach is not None:
            detach, self._detach = self._detach, None
            try:
                detach()
            except Exception:  # noqa: BLE001 - an engine bug must not keep a dead session attached
                self.log.failure("detaching SMPP connection {id} from the engine failed",
                                 id=self.account.connection_id if self.account else None)

    def _close(self, reason: str, graceful: bool = False) -> None:
        """Close now, or (graceful) once every request in progress has its answer."""
        if not self.connected:
            return
        if graceful and self._in_flight:
            self._closing = True
            if self._close_guard is None:
                # An engine that never answers must not keep the connection forever.
                self._close_guard = self.clock.callLater(self.factory.response_timeout, self._close, reason)
            return
        self.transport.loseConnection()

    # -- actions --------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.connected:
            self.transport.write(data)

    def _run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._write(action.data)
            elif isinstance(action, Request):
                self._request(action.pdu)
            elif isinstance(action, DeliverySent):
                self._write(action.data)
                self._timers[action.sequence] = self.clock.callLater(
                    self.factory.response_timeout, self._response_timeout, action.sequence
                )
            elif isinstance(action, DeliveryResult):
                self._delivery_result(action)
            elif isinstance(action, BindRequested):
                self._bind(action.pdu, action.bind_type)
            elif isinstance(action, Unbound):
                self._stop_deliveries()
            elif isinstance(action, Malformed):
                self.factory.metrics.malformed.labels(p.status_name(action.error.status)).inc()
                if action.error.fatal:
                    self.log.info("SMPP from {peer}: {reason}; closing", peer=self.peer, reason=action.error.reason)
            elif isinstance(action, Close):
                self._close(action.reason, action.graceful)

    # -- binds ----------------------------------------------------------------------

    def _bind(self, pdu: p.Pdu, bind_type: str) -> None:
        d = self.factory.directory.authenticate(pdu.system_id, pdu.password, pdu.system_type)
        d.addCallbacks(self._bound, self._bind_refused, callbackArgs=(pdu, bind_type),
                       errbackArgs=(pdu, bind_type))
        d.addErrback(self._bug, "bind")

    def _bound(self, account: SmppAccount, pdu: p.Pdu, bind_type: str) -> None:
        if not self.connected or self.session.state != BINDING:
            self.session.refuse_bind(pdu, p.ESME_RBINDFAIL)
            return
        self.account = account
        self.factory.limiter.configure(RECEPTION, account.connection_id, float(account.reception_speed))
        self._write(self.session.accept_bind(pdu, account.login))
        self.factory.metrics.binds.labels(bind_type, "ESME_ROK").inc()
        self.log.info("SMPP {login} bound as {bind} from {peer}", login=account.login, bind=bind_type, peer=self.peer)
        if self.session.can_receive:
            self._detach = self.factory.engine.attach(account.connection_id, self.push)

    def _bind_refused(self, failure: Failure, pdu: p.Pdu, bind_type: str) -> None:
        if failure.check(BindRefused):
            status, reason = failure.value.status, failure.value.reason
        else:
            self.log.failure("SMPP bind of {login!r} from {peer} failed", failure, login=pdu.system_id, peer=self.peer)
            status, reason = p.ESME_RBINDFAIL, "internal error"
        self.factory.metrics.binds.labels(bind_type, p.status_name(status)).inc()
        self.log.info("SMPP bind of {login!r} from {peer} refused: {reason}", login=pdu.system_id, peer=self.peer,
                      reason=reason)
        if not self.connected:
            return
        self._write(self.session.refuse_bind(pdu, status))
        self._bind_failures += 1
        if self._bind_failures >= self.factory.max_bind_failures:
            self._close("too many failed binds")

    def _bug(self, failure: Failure, what: str) -> None:
        self.log.failure("SMPP session {peer}: {what} went wrong", failure, peer=self.peer, what=what)
        self._close("internal error")

    # -- message operations ------------------------------------------------------------

    def _request(self, pdu: p.Pdu) -> None:
        self._in_flight += 1
        d = ensureDeferred(self._operate(pdu))
        d.addErrback(self._operation_failed, pdu)
        d.addCallback(self._answer, pdu)
        d.addErrback(self._bug, pdu.command_name)

    def _operation_failed(self, failure: Failure, pdu: p.Pdu) -> tuple[int, dict]:
        if failure.check(MessageRefused):
            return failure.value.status, {}
        self.log.failure("SMPP {command} from {login} failed", failure, command=pdu.command_name,
                         login=self.account.login if self.account else "?")
        return p.ESME_RSYSERR, {}

    def _answer(self, result: tuple[int, dict], pdu: p.Pdu) -> None:
        status, values = result
        self._in_flight -= 1
        self.factory.metrics.request(pdu.command_name, status)
        self._write(self.session.answer(pdu, status, **values))
        if self._closing and self._in_flight == 0:
            self._close("answers sent")

    async def _operate(self, pdu: p.Pdu) -> tuple[int, dict]:
        """(command_status, response fields) for one request."""
        account = self.account
        assert account is not None
        engine = self.factory.engine
        origin = account.origin()
        if isinstance(pdu, (p.SubmitSm, p.DataSm)):
            if not self.factory.limiter.allow(RECEPTION, account.connection_id).allowed:
                return p.ESME_RTHROTTLED, {}
            accepted = await engine.submit(origin, submission_for(pdu))
            return p.ESME_ROK, {"message_id": accepted.message_id}
        if isinstance(pdu, p.QuerySm):
            info = await engine.query(origin, pdu.message_id)
            if info is None:
                return p.ESME_RINVMSGID, {}
            final = info.done_at if info.state in dlr.FINAL_STATES and info.done_at is not None else None
            return p.ESME_ROK, {
                "message_id": pdu.message_id,
                "final_date": p.format_time(_aware(final)) if final is not None else "",
                "message_state": dlr.STATE_NUMBERS.get(info.state, p.UNKNOWN),
                "error_code": min(max(info.error_code or 0, 0), 255),
            }
        if isinstance(pdu, p.CancelSm):
            if not pdu.message_id:
                # SMPP 3.4 4.9: every message of this ESME from source_addr (to destination_addr,
                # when given) not delivered yet; here, those none of whose parts left switchd.
                if not pdu.source_addr:
                    return p.ESME_RINVSRCADR, {}
                cancelled = await engine.cancel_from(origin, pdu.source_addr, pdu.destination_addr or None)
                return (p.ESME_ROK if cancelled else p.ESME_RCANCELFAIL), {}
            return (p.ESME_ROK if await engine.cancel(origin, pdu.message_id) else p.ESME_RCANCELFAIL), {}
        if isinstance(pdu, p.ReplaceSm):
            if not pdu.message_id:
                return p.ESME_RINVMSGID, {}
            # replace_sm has no data_coding: the new text is in the original's coding.
            coding = await self.factory.directory.data_coding_of(account.account_id, pdu.message_id)
            if coding is None:
                return p.ESME_RREPLACEFAIL, {}
            done = await engine.replace(origin, pdu.message_id, pdu.short_message, coding)
            return (p.ESME_ROK if done else p.ESME_RREPLACEFAIL), {}
        return p.ESME_RINVCMDID, {}  # pragma: no cover - the session only passes the above

    # -- deliveries -------------------------------------------------------------------

    def push(self, delivery: Delivery) -> Deferred:
        """Send one receipt or MO; fires on deliver_sm_resp OK, errbacks with :class:`DeliveryFailed`."""
        self._tokens += 1
        token = self._tokens
        d: Deferred = Deferred()
        try:
            message = deliver_sm_for(delivery)
            self._pushes[token] = d
            actions = self.session.deliver(token, message)
        except p.FieldError as error:
            self._pushes.pop(token, None)
            self.factory.metrics.deliveries.labels("unencodable").inc()
            self.log.warn(  # noqa: G010 - twisted.logger has warn(), not warning()
                "delivery {id} cannot be sent as deliver_sm: {error}", id=delivery.id, error=error
            )
            d.errback(DeliveryFailed(f"cannot be encoded: {error}"))
            return d
        self._run(actions)
        return d

    def _response_timeout(self, sequence: int) -> None:
        self._timers.pop(sequence, None)
        self._run(self.session.expire(sequence))

    def _delivery_result(self, result: DeliveryResult) -> None:
        if result.sequence is not None:
            timer = self._timers.pop(result.sequence, None)
            if timer is not None and timer.active():
                timer.cancel()
        d = self._pushes.pop(result.token, None)
        if d is None:
            return
        if result.status == p.ESME_ROK:
            self.factory.metrics.deliveries.labels("delivered").inc()
            d.callback(None)
        elif result.status is None:
            self.factory.metrics.deliveries.labels("no answer").inc()
            d.errback(DeliveryFailed(result.reason or "no answer"))
        else:
            self.factory.metrics.deliveries.labels("refused").inc()
            d.errback(DeliveryFailed("refused by the ESME", result.status))

    # -- timers -------------------------------------------------------------------------

    def _schedule_idle(self, delay: float) -> None:
        self._idle_call = self.clock.callLater(max(delay, 0.001), self._idle_check)

    def _idle_check(self) -> None:
        self._idle_call = None
        if not self.connected:
            return
        now = self.clock.seconds()
        timeout = self.factory.inactivity_timeout
        if self._enquire_sent_at is not None:
            waited = now - self._enquire_sent_at
            if waited >= self.factory.response_timeout:
                self.log.info("SMPP {who} from {peer} did not answer enquire_link; closing",
                              who=self.account.login if self.account else "session", peer=self.peer)
                self._close("enquire_link unanswered")
                return
            self._schedule_idle(self.factory.response_timeout - waited)
            return
        idle = now - self._last_received
        if idle < timeout:
            self._schedule_idle(timeout - idle)
            return
        if not self.session.bound:
            self.log.info("SMPP connection from {peer} idle for {seconds}s without a bind; closing",
                          peer=self.peer, seconds=int(idle))
            self._close("idle before bind")
            return
        self._enquire_sent_at = now
        self._write(self.session.enquire_link())
        self._schedule_idle(self.factory.response_timeout)

    # -- our unbind -----------------------------------------------------------------------

    def unbind(self, reason: str) -> Deferred:
        """Unbind from our side and close; fires once the connection is closed.

        Requests in progress still get their answers; an ESME that does not
        answer the unbind is disconnected after the response timeout.
        """
        if not self.connected:
            return succeed(None)
        closed: Deferred = Deferred()
        self._closed.append(closed)
        if self.account is not None:
            self.log.info("unbinding SMPP {login} from {peer}: {reason}", login=self.account.login, peer=self.peer,
                          reason=reason)
        self._stop_deliveries()
        self._run(self.session.unbind())
        if self.connected and self._close_guard is None:
            self._close_guard = self.clock.callLater(self.factory.response_timeout, self._close, "unbind unanswered")
        return closed


class SmppServerFactory(Factory):
    """Builds a protocol per ESME connection; holds the shared settings and the open sessions."""

    protocol = SmppServerProtocol
    noisy = False  # one line per bind is enough
    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        engine: MessageEngine,
        directory: Directory,
        limiter: RateLimiter,
        *,
        registry: CollectorRegistry | None = None,
        inactivity_timeout: float = 60.0,
        response_timeout: float = 10.0,
        max_pdu_length: int = p.DEFAULT_MAX_LENGTH,
        window: int = 16,
        system_id: str = SYSTEM_ID,
        max_bind_failures: int = 3,
    ) -> None:
        self.clock = clock
        self.engine = engine
        self.directory = directory
        self.limiter = limiter
        self.metrics = ServerMetrics(registry)
        self.inactivity_timeout = inactivity_timeout
        self.response_timeout = response_timeout
        self.max_pdu_length = max_pdu_length
        self.window = window
        self.system_id = system_id
        self.max_bind_failures = max_bind_failures
        self.sessions: set[SmppServerProtocol] = set()
        if registry is not None:
            registry.register(_SessionCollector(self))

    def buildProtocol(self, addr) -> SmppServerProtocol:
        return self.protocol(self)

    def bound(self) -> list[SmppServerProtocol]:
        return [s for s in self.sessions if s.account is not None and s.session.bound]

    def unbind_all(self, reason: str) -> Deferred:
        """Unbind every session; fires when all are closed."""
        return DeferredList([s.unbind(reason) for s in list(self.sessions)], consumeErrors=True)

    def reload(self) -> Deferred:
        """Apply changed reception speeds; unbind sessions whose connection is gone or changed password."""
        by_id: dict[int, list[SmppServerProtocol]] = {}
        for session in self.bound():
            by_id.setdefault(session.account.connection_id, []).append(session)
        if not by_id:
            return succeed(None)

        def apply(current: dict[int, SmppAccount]) -> None:
            for connection_id, sessions in by_id.items():
                account = current.get(connection_id)
                for session in sessions:
                    if session.account is None:
                        continue
                    if account is None or account.login != session.account.login:
                        session.unbind("the SMPP connection was removed or its service is not active")
                    elif account.password_hash != session.account.password_hash:
                        session.unbind("the SMPP password changed")
                    elif account != session.account:
                        session.account = account
                if account is not None:
                    self.limiter.configure(RECEPTION, connection_id, float(account.reception_speed))

        d = self.directory.reload(list(by_id))
        d.addCallback(apply)
        d.addErrback(lambda f: self.log.failure("reloading SMPP connections failed", f))
        return d


class _SessionCollector:
    """Bound sessions by type, and deliveries in flight, read at scrape time."""

    def __init__(self, factory: SmppServerFactory) -> None:
        self.factory = factory

    def collect(self):
        sessions = GaugeMetricFamily("switchd_smpp_server_sessions", "ESME sessions by bind state", labels=["state"])
        counts: dict[str, int] = {}
        in_flight = 0
        for s in self.factory.sessions:
            state = s.session.bind_type if s.session.bound else s.session.state
            counts[state] = counts.get(state, 0) + 1
            in_flight += s.session.in_flight
        for state, count in sorted(counts.items()):
            sessions.add_metric([state], count)
        yield sessions
        yield GaugeMetricFamily("switchd_smpp_server_deliveries_in_flight", "deliver_sm awaiting an answer",
                                value=in_flight)


class SmppServerService(Service):
    """Reloads connection settings while running; unbinds every ESME at shutdown.

    The listening ports are separate services (one per endpoint); stopping
    this one sends unbind to each bound ESME, waits for the answers to
    requests in progress, and closes.
    """

    log = Logger()

    def __init__(self, factory: SmppServerFactory, clock: IReactorTime, reload_seconds: float = 10.0) -> None:
        self.factory = factory
        self.clock = clock
        self.reload_seconds = reload_seconds
        self._call: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self._schedule()

    def _schedule(self) -> None:
        self._call = self.clock.callLater(self.reload_seconds, self._reload)

    def _reload(self) -> None:
        self._call = None
        d = self.factory.reload()
        d.addBoth(lambda _: self._schedule() if self.running else None)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        count = len(self.factory.sessions)
        if count:
            self.log.info("unbinding {count} SMPP session(s)", count=count)
        return self.factory.unbind_all("switchd is shutting down")


# --------------------------------------------------------------------------
# Requests to submissions
# --------------------------------------------------------------------------


def submission_for(pdu: p.SubmitSm | p.DataSm) -> Submission:
    """The engine's view of a submit_sm or data_sm (message_payload becomes the content)."""
    tlvs = dict(pdu.tlvs)
    payload = tlvs.pop("message_payload", None)
    content = bytes(payload) if payload is not None else bytes(getattr(pdu, "short_message", b""))
    return Submission(
        source=pdu.source_addr,
        destination=pdu.destination_addr,
        content=content,
        data_coding=pdu.data_coding,
        esm_class=pdu.esm_class,
        registered_delivery=pdu.registered_delivery,
        tlvs=tlvs,
        schedule_delivery_time=getattr(pdu, "schedule_delivery_time", ""),
        validity_period=getattr(pdu, "validity_period", ""),
    )


def _aware(when: datetime.datetime) -> datetime.datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)
