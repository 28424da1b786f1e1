"""Upstream SMPP links: switchd as an ESME bound to carriers' SMSCs.

One :class:`SmppLink` per enabled ``smpp_links`` row, kept by the
:class:`SmppLinkManager`, which re-reads the table every ``reload_seconds``
(like the SIP trunk manager) and starts, stops or reconfigures links.

A link is an explicit state machine on the injected clock::

    stopped -> connecting -> binding -> bound -> (lost) -> waiting -> connecting ...

``waiting`` lasts ``BACKOFF`` seconds, longer after each failure in a row
(the count is reset once a bind has held for ``STABLE_SECONDS``).  Every
seed 001 ESME parameter is read from the link's row:

* bind: ``mode`` (transceiver, transmitter, receiver), ``system_id``,
  ``password``, ``system_type``, ``addr_ton``, ``addr_npi``,
  ``address_range``; ``client_port`` (``mo_port`` for a receiver) as the
  local port, 0 for any;
* session: an ``enquire_link`` every ``heartbeat_interval_ms``; more than
  ``max_missed_heartbeats`` unanswered in a row, nothing at all received for
  ``receiving_timeout_ms``, or ``max_error_packets`` undecodable PDUs in a
  row drop the connection; a request unanswered after
  ``transaction_timeout_ms`` is given up;
* sending: at most ``window_size`` submits unanswered, at most
  ``max_sending_rate`` per second (a token bucket of the node's rate
  limiter), ``submit_sm`` or ``data_sm`` (``pdu_type``) with
  ``service_type``, TON/NPI, ``esm_class``, ``protocol_id``,
  ``replace_if_present``, ``default_msg_id`` and the ``registered_delivery``
  stored with each part;
* answers: ``ESME_RTHROTTLED`` and ``ESME_RMSGQFUL`` pause the link (the part
  goes back to the head of the queue; ``resend_wait_ms`` or 1 s, doubling,
  at most 30 s); other temporary failures are resent ``resend_times`` times
  after ``resend_wait_ms``; anything else rejects the part;
* receiving: receipts and MO (``deliver_sm``, ``data_sm``) at most
  ``max_receiving_rate`` per second; beyond it the answer waits for the
  bucket, or with ``extra_traffic_policy`` 2 is ``ESME_RTHROTTLED``.

The queue is the database.  A link holds in memory only a window's worth
of parts (``queue``, refilled from the ``sms_parts`` rows of its node);
parts not acknowledged when a connection drops are sent again after the
next bind, and a part leaves the link's memory only when its outcome is
committed.  The SMSC's message id is stored (``LinkSink.part_sent``) before
the link forgets the part, and receipts are answered only once they are
stored, so nothing acknowledged is lost in a crash; a part sent but not yet
acknowledged when switchd dies is sent again (at least once).
"""

from __future__ import annotations

import datetime
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.engine import Connection
from twisted.application.service import Service
from twisted.internet import protocol as twisted_protocol
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core.events import Event, EventBus
from ..core.ratelimit import RateLimiter
from ..store.models import smpp_links
from . import dlr, pdu

UTC = datetime.UTC
_log = Logger()

#: Answers after which the part waits and goes again, whatever resend_times says.
THROTTLING = frozenset({pdu.ESME_RTHROTTLED, pdu.ESME_RMSGQFUL})

#: Answers worth ``resend_times`` more tries; any other error rejects the part.
TEMPORARY = frozenset(
    {
        pdu.ESME_RSYSERR,
        pdu.ESME_RSUBMITFAIL,
        pdu.ESME_RUNKNOWNERR,
        pdu.ESME_RX_T_APPN,
        pdu.ESME_RDELIVERYFAILURE,
    }
)

#: Seconds an unbind waits for its answer when the link has no transaction timeout.
UNBIND_GRACE = 5.0

#: Settings whose change needs a new connection (and bind).
CONNECTION_FIELDS = (
    "host",
    "port",
    "system_id",
    "password",
    "mode",
    "system_type",
    "addr_ton",
    "addr_npi",
    "address_range",
    "client_port",
    "mo_port",
)

BIND_CLASSES = {
    "transceiver": pdu.BindTransceiver,
    "transmitter": pdu.BindTransmitter,
    "receiver": pdu.BindReceiver,
}


class LinkError(ValueError):
    """A link setting switchd cannot use (an unknown mode or PDU type)."""


@dataclass(frozen=True)
class LinkSettings:
    """One ``smpp_links`` row (seed 001 names and defaults)."""

    id: int
    name: str
    host: str
    port: int
    enabled: bool = True
    system_id: str | None = None
    password: str | None = None
    mode: str = "transceiver"
    pdu_type: str = "submit_sm"
    sender_id_prefixes: str | None = None
    accepted_number_prefixes: str | None = None
    default_sender_id: str | None = None
    client_port: int = 0
    mo_port: int = 0
    heartbeat_interval_ms: int = 30000
    max_missed_heartbeats: int = 3
    resend_times: int = 0
    resend_wait_ms: int = 0
    receiving_timeout_ms: int = 180000
    max_error_packets: int = 10
    window_size: int = 16
    transaction_timeout_ms: int = 6000
    max_message_length: int = 2048
    split_mode: str = "disabled"
    max_content_length: int = 140
    max_receiving_rate: int | None = None
    max_sending_rate: int | None = None
    extra_traffic_policy: int | None = None
    concatenation_mode: str = "udh"
    system_type: str | None = None
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str | None = None
    service_type: str | None = None
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    esm_class: int = 0
    message_format: str = "ascii"
    protocol_id: int = 0
    registered_delivery: int = 2
    replace_if_present: bool = False
    default_msg_id: int = 0

    def __post_init__(self) -> None:
        if self.mode not in BIND_CLASSES:
            raise LinkError(f"link {self.name}: unknown mode {self.mode!r}")
        if self.pdu_type not in ("submit_sm", "data_sm"):
            raise LinkError(f"link {self.name}: unknown pdu_type {self.pdu_type!r}")

    @property
    def sends(self) -> bool:
        return self.mode != "receiver"

    @property
    def local_port(self) -> int:
        """The local port to connect from: ``mo_port`` for a receiver link, else ``client_port``."""
        return self.mo_port if self.mode == "receiver" else self.client_port

    def connection_key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in CONNECTION_FIELDS)

    def upstream_registered_delivery(self, customer: int, wants_final: bool) -> int:
        """registered_delivery to ask of the SMSC for one message.

        The link's setting (0 none, 1 every final state, 2 failures only),
        raised to 1 when the message needs its success known too (a customer
        asking for receipts on success, or an HTTP message whose final state
        is called back); a link set to 0 never asks.
        """
        if self.registered_delivery == 0:
            return 0
        if wants_final or (customer & pdu.REGISTERED_RECEIPT_MASK) in (pdu.RECEIPT_ALWAYS, pdu.RECEIPT_ON_SUCCESS):
            return pdu.RECEIPT_ALWAYS
        return self.registered_delivery & pdu.REGISTERED_RECEIPT_MASK


_LINK_FIELDS = tuple(f.name for f in fields(LinkSettings))
_LOAD_LINKS = select(*(smpp_links.c[name] for name in _LINK_FIELDS)).where(smpp_links.c.enabled.is_(True)).order_by(
    smpp_links.c.id
)


def load_links(conn: Connection) -> list[LinkSettings]:
    """Every enabled link (a row switchd cannot use is logged and left out)."""
    links = []
    for row in conn.execute(_LOAD_LINKS):
        try:
            links.append(LinkSettings(**row._mapping))
        except LinkError as error:
            _log.warn("{error}", error=error)
    return links


@dataclass(eq=False, slots=True)
class OutboundPart:
    """One PDU to send upstream, as stored in ``sms_parts``."""

    part_id: int
    message_pk: int
    message_id: str  # ours
    link_id: int | None
    number: int
    total: int
    source: str
    destination: str
    short_message: bytes
    in_payload: bool
    data_coding: int
    esm_class: int
    registered_delivery: int
    tlvs: dict[str, Any] = field(default_factory=dict)
    expires_at: datetime.datetime | None = None
    not_before: datetime.datetime | None = None
    attempts: int = 0  # failed tries on this node (not stored)
    priority: int = 0  # the service's distribution priority: higher goes first

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at.timestamp() <= now


class PartQueue:
    """A link's queue in memory: parts of higher-priority services first (the
    seed's "Distribution Priority": high priority services are served first),
    in arrival order within one priority. The deque operations the link uses."""

    __slots__ = ("_buckets", "_order", "_size")

    def __init__(self) -> None:
        self._buckets: dict[int, deque[OutboundPart]] = {}
        self._order: list[int] = []  # priorities with a bucket, highest first
        self._size = 0

    def _bucket(self, priority: int) -> deque[OutboundPart]:
        bucket = self._buckets.get(priority)
        if bucket is None:
            bucket = self._buckets[priority] = deque()
            self._order.append(priority)
            self._order.sort(reverse=True)
        return bucket

    def _head(self) -> deque[OutboundPart]:
        for priority in self._order:
            bucket = self._buckets[priority]
            if bucket:
                return bucket
        raise IndexError("the queue is empty")

    def append(self, part: OutboundPart) -> None:
        self._bucket(part.priority).append(part)
        self._size += 1

    def appendleft(self, part: OutboundPart) -> None:
        self._bucket(part.priority).appendleft(part)
        self._size += 1

    def extendleft(self, parts) -> None:
        for part in parts:
            self.appendleft(part)

    def popleft(self) -> OutboundPart:
        part = self._head().popleft()
        self._size -= 1
        return part

    def __getitem__(self, index: int) -> OutboundPart:
        if index != 0:
            raise IndexError("only the head can be read")
        return self._head()[0]

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self):
        for priority in self._order:
            yield from self._buckets[priority]

    def clear(self) -> None:
        self._buckets.clear()
        self._order.clear()
        self._size = 0

    def remove_ids(self, ids: set[int]) -> None:
        """Drop the parts whose id is in ``ids``."""
        for priority in self._order:
            bucket = self._buckets[priority]
            kept = deque(part for part in bucket if part.part_id not in ids)
            self._size -= len(bucket) - len(kept)
            self._buckets[priority] = kept


def build_submit(settings: LinkSettings, part: OutboundPart, sequence: int) -> pdu.Pdu:
    """The submit_sm or data_sm of one part on a link; :class:`pdu.FieldError` if it cannot be encoded."""
    tlvs = dict(part.tlvs)
    validity = pdu.format_time(part.expires_at) if part.expires_at is not None else ""
    esm_class = settings.esm_class | part.esm_class
    if settings.pdu_type == "data_sm":
        tlvs["message_payload"] = part.short_message
        message: pdu.Pdu = pdu.DataSm(
            sequence=sequence,
            service_type=settings.service_type or "",
            source_addr_ton=settings.source_addr_ton,
            source_addr_npi=settings.source_addr_npi,
            source_addr=part.source,
            dest_addr_ton=settings.dest_addr_ton,
            dest_addr_npi=settings.dest_addr_npi,
            destination_addr=part.destination,
            esm_class=esm_class,
            registered_delivery=part.registered_delivery,
            data_coding=part.data_coding,
            tlvs=tlvs,
        )
    else:
        short_message = part.short_message
        if part.in_payload:
            tlvs["message_payload"] = short_message
            short_message = b""
        message = pdu.SubmitSm(
            sequence=sequence,
            service_type=settings.service_type or "",
            source_addr_ton=settings.source_addr_ton,
            source_addr_npi=settings.source_addr_npi,
            source_addr=part.source,
            dest_addr_ton=settings.dest_addr_ton,
            dest_addr_npi=settings.dest_addr_npi,
            destination_addr=part.destination,
            esm_class=esm_class,
            protocol_id=settings.protocol_id,
            validity_period=validity,
            registered_delivery=part.registered_delivery,
            replace_if_present_flag=1 if settings.replace_if_present else 0,
            data_coding=part.data_coding,
            sm_default_msg_id=settings.default_msg_id,
            short_message=short_message,
            tlvs=tlvs,
        )
    return message


def build_bind(settings: LinkSettings, sequence: int) -> pdu.Pdu:
    """The bind of a link's mode with its credentials and address range."""
    return BIND_CLASSES[settings.mode](
        sequence=sequence,
        system_id=settings.system_id or "",
        password=settings.password or "",
        system_type=settings.system_type or "",
        addr_ton=settings.addr_ton,
        addr_npi=settings.addr_npi,
        address_range=settings.address_range or "",
    )


@dataclass(frozen=True)
class SmppLinkStateChanged(Event):
    """A link connected, bound, or went down."""

    link_id: int
    link: str
    state: str  # connecting, binding, bound, waiting, stopped
    detail: str = ""


class LinkSink(Protocol):
    """What a link asks of the message engine (every answer is a Deferred)."""

    def load_parts(self, link_id: int, after: int, limit: int) -> Deferred: ...

    def part_sent(self, link_id: int, part: OutboundPart, upstream_id: str) -> Deferred: ...

    def part_failed(self, link_id: int, part: OutboundPart, state: str, error_code: int | None) -> Deferred: ...

    def receipt_received(self, link_id: int, receipt: dlr.UpstreamReceipt) -> Deferred: ...

    def message_received(self, link_id: int, message: dlr.UpstreamMessage) -> Deferred: ...


# -- the session --------------------------------------------------------------------------


@dataclass(eq=False)
class _Request:
    kind: str  # bind, submit, enquire_link, unbind
    deadline: float
    part: OutboundPart | None = None


class ClientProtocol(twisted_protocol.Protocol):
    """One SMPP session to an SMSC, bound as the link says.

    Thin over the codec: bytes go through :class:`pdu.PduReader`, decisions
    about parts are the link's. Timers use the link's clock.
    """

    log = Logger()

    def __init__(self, link: SmppLink) -> None:
        self.link = link
        self.clock = link.clock
        self.settings = link.settings
        self.state = "opening"  # opening, binding, bound, unbinding, closed
        self.reader = pdu.PduReader()
        self._sequence = 0
        self._pending: dict[int, _Request] = {}
        self.submits = 0  # unanswered submits: the sliding window
        self.missed_heartbeats = 0
        self.error_packets = 0
        self.last_received = self.clock.seconds()
        self._expiry: IDelayedCall | None = None
        self._heartbeat: IDelayedCall | None = None
        self._idle: IDelayedCall | None = None
        self._unbind_timer: IDelayedCall | None = None
        self.closed: Deferred = Deferred()

    # -- helpers -----------------------------------------------------------------

    @property
    def timeout(self) -> float | None:
        """Seconds a request waits for its answer; None (setting 0): as long as the session lasts."""
        ms = self.settings.transaction_timeout_ms
        return ms / 1000.0 if ms > 0 else None

    def _next_sequence(self) -> int:
        self._sequence = self._sequence % 0x7FFFFFFF + 1
        return self._sequence

    def _send(self, message: pdu.Pdu) -> None:
        self.transport.write(message.encode())

    def _request(self, message: pdu.Pdu, kind: str, part: OutboundPart | None = None) -> None:
        data = message.encode()  # FieldError before anything is counted
        timeout = self.timeout
        deadline = self.clock.seconds() + timeout if timeout is not None else float("inf")
        self._pending[message.sequence] = _Request(kind, deadline, part)
        if self._expiry is None and timeout is not None:
            self._expiry = self.clock.callLater(timeout, self._expire)
        self.transport.write(data)

    def _cancel(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None and timer.active():
            timer.cancel()
        setattr(self, name, None)

    def close(self, reason: str) -> None:
        if self.state == "closed":
            return
        self.log.info("link {link}: closing the session: {reason}", link=self.settings.name, reason=reason)
        self.state = "closed"
        if self.transport is not None:
            self.transport.loseConnection()

    # -- connection ----------------------------------------------------------------

    def connectionMade(self) -> None:
        self.state = "binding"
        self.last_received = self.clock.seconds()
        self._request(build_bind(self.settings, self._next_sequence()), "bind")
        self._schedule_idle()
        self.link.session_opened(self)

    def connectionLost(self, reason: Failure = twisted_protocol.connectionDone) -> None:
        self.state = "closed"
        for name in ("_expiry", "_heartbeat", "_idle", "_unbind_timer"):
            self._cancel(name)
        unanswered = [request.part for request in self._pending.values() if request.part is not None]
        self._pending.clear()
        self.submits = 0
        self.link.session_closed(self, unanswered, reason.getErrorMessage())
        if not self.closed.called:
            self.closed.callback(None)

    # -- timers -------------------------------------------------------------------

    def _expire(self) -> None:
        self._expiry = None
        now = self.clock.seconds()
        expired: list[tuple[int, _Request]] = []
        for sequence, request in self._pending.items():
            if request.deadline > now:
                break
            expired.append((sequence, request))
        for sequence, _ in expired:
            del self._pending[sequence]
        if self._pending:
            head = next(iter(self._pending.values()))
            if head.deadline != float("inf"):
                self._expiry = self.clock.callLater(max(head.deadline - now, 0.0), self._expire)
        for _, request in expired:
            if self.state == "closed":
                break
            if request.kind == "submit":
                self.submits -= 1
                assert request.part is not None
                self.link.submit_timed_out(self, request.part)
            elif request.kind == "enquire_link":
                self.missed_heartbeats += 1
                if self.missed_heartbeats > self.settings.max_missed_heartbeats:
                    self.close(f"{self.missed_heartbeats} heartbeats unanswered")
            elif request.kind == "bind":
                self.link.bind_failed(self, "no answer to the bind")
                self.close("no answer to the bind")
            else:
                self.close(f"no answer to {request.kind}")

    def _send_heartbeat(self) -> None:
        self._heartbeat = None
        if self.state != "bound":
            return
        self._request(pdu.EnquireLink(sequence=self._next_sequence()), "enquire_link")
        self._heartbeat = self.clock.callLater(self._heartbeat_interval(), self._send_heartbeat)

    def _heartbeat_interval(self) -> float:
        return max(self.settings.heartbeat_interval_ms, 1) / 1000.0

    def _schedule_idle(self) -> None:
        timeout = max(self.settings.receiving_timeout_ms, 1) / 1000.0
        wait = max(self.last_received + timeout - self.clock.seconds(), 0.0)
        self._idle = self.clock.callLater(wait, self._check_idle)

    def _check_idle(self) -> None:
        self._idle = None
        timeout = max(self.settings.receiving_timeout_ms, 1) / 1000.0
        if self.clock.seconds() - self.last_received >= timeout:
            self.close(f"nothing received for {timeout:g} s")
            return
        self._schedule_idle()

    # -- the link's requests ----------------------------------------------------------

    @property
    def can_submit(self) -> bool:
        return self.state == "bound" and self.settings.sends and self.submits < max(self.settings.window_size, 1)

    def submit(self, part: OutboundPart) -> None:
        """Send one part; :class:`pdu.FieldError` when it cannot be encoded."""
        message = build_submit(self.settings, part, self._next_sequence())
        self._request(message, "submit", part)
        self.submits += 1

    def unbind(self) -> Deferred:
        """Unbind politely (the connection closes on the answer or its timeout)."""
        if self.state == "bound":
            self.state = "unbinding"
            self._cancel("_heartbeat")
            self._request(pdu.Unbind(sequence=self._next_sequence()), "unbind")
            if self.timeout is None:  # no transaction timeout: still do not wait for ever
                self._unbind_timer = self.clock.callLater(UNBIND_GRACE, self.close, "no answer to unbind")
        elif self.state != "closed":
            self.close("stopping")
        return self.closed

    # -- bytes in --------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.last_received = self.clock.seconds()
        for item in self.reader.feed(data):
            if self.state == "closed":
                return
            if isinstance(item, pdu.PduError):
                self._bad_pdu(item)
                continue
            self.error_packets = 0
            if item.is_response:
                self._response(item)
            else:
                self._request_received(item)

    def _bad_pdu(self, error: pdu.PduError) -> None:
        self.error_packets += 1
        answer = error.response()
        is_request = error.command_id is not None and not error.command_id & pdu.RESPONSE_BIT
        if answer is not None and self.transport is not None and is_request:
            self._send(answer)
        limit = self.settings.max_error_packets
        if error.fatal:
            self.close(f"unreadable stream: {error.reason}")
        elif limit and self.error_packets >= limit:
            self.close(f"{self.error_packets} bad PDUs in a row (last: {error.reason})")

    def _response(self, message: pdu.Pdu) -> None:
        request = self._pending.pop(message.sequence, None)
        if request is None:
            return  # late (already timed out) or unsolicited
        if request.kind == "submit":
            self.submits -= 1
            assert request.part is not None
            if message.status == pdu.ESME_ROK:
                self.link.submit_answered(self, request.part, getattr(message, "message_id", "") or "")
            else:
                self.link.submit_refused(self, request.part, message.status)
        elif request.kind == "enquire_link":
            self.missed_heartbeats = 0
        elif request.kind == "bind":
            if message.status == pdu.ESME_ROK:
                self.state = "bound"
                self._heartbeat = self.clock.callLater(self._heartbeat_interval(), self._send_heartbeat)
                self.link.session_bound(self, getattr(message, "system_id", ""))
            else:
                detail = f"bind refused: {pdu.status_name(message.status)}"
                self.link.bind_failed(self, detail)
                self.close(detail)
        elif request.kind == "unbind":
            self.close("unbound")

    def _request_received(self, message: pdu.Pdu) -> None:
        if isinstance(message, pdu.EnquireLink):
            self._send(pdu.response_for(message))
        elif isinstance(message, pdu.Unbind):
            self._send(pdu.response_for(message))
            self.close("the SMSC unbound")
        elif isinstance(message, (pdu.DeliverSm, pdu.DataSm)):
            if self.state not in ("bound", "unbinding"):
                self._send(pdu.response_for(message, pdu.ESME_RINVBNDSTS))
                return
            d = self.link.incoming(message)
            d.addCallback(self._answer_incoming, message)
        elif isinstance(message, pdu.AlertNotification):
            return  # no response exists; nothing to do with it
        else:
            self._send(pdu.response_for(message, pdu.ESME_RINVBNDSTS))

    def _answer_incoming(self, status: int, message: pdu.Pdu) -> None:
        if self.state != "closed" and self.transport is not None:
            self._send(pdu.response_for(message, status))


class _SessionFactory(twisted_protocol.Factory):
    def __init__(self, link: SmppLink) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> ClientProtocol:
        return ClientProtocol(self.link)


# -- the link ---------------------------------------------------------------------------------

Connector = Callable[[LinkSettings, twisted_protocol.Factory], Deferred]


class SmppLink:
    """One upstream link: its connection state machine and its share of the queue."""

    log = Logger()
    BACKOFF = (1, 2, 4, 8, 16, 30, 60)
    STABLE_SECONDS = 30.0
    MAX_PAUSE = 30.0

    def __init__(
        self,
        settings: LinkSettings,
        *,
        clock: IReactorTime,
        connect: Connector,
        sink: LinkSink,
        limiter: RateLimiter,
        bus: EventBus,
        page: int = 500,
        refill_seconds: float = 5.0,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.connect_to = connect
        self.sink = sink
        self.limiter = limiter
        self.bus = bus
        self.page = page
        self.refill_seconds = refill_seconds
        self.state = "stopped"
        self.detail = ""
        self.since = clock.seconds()
        self.protocol: ClientProtocol | None = None
        self.failures = 0
        self.queue = PartQueue()
        # Parts sent but refused for now (throttled, timed out): back to the
        # head of the queue, in the order they were sent, on the next pump.
        self._held: list[OutboundPart] = []
        self.known: set[int] = set()  # queued, in flight, waiting to be resent, or outcome not committed
        self.withdrawn: set[int] = set()
        self._committing: set[int] = set()
        self._resends: dict[int, IDelayedCall] = {}
        self.sent = 0
        self.refused = 0
        self._connecting: Deferred | None = None
        self._retry: IDelayedCall | None = None
        self._stable: IDelayedCall | None = None
        self._wake: IDelayedCall | None = None
        self._refill_timer: IDelayedCall | None = None
        self._paused_until = 0.0
        self._pauses = 0
        self._loading = False
        self._settled_while_loading: set[int] = set()
        self._after = 0
        # The database may hold parts the memory queue does not: after a bind,
        # a full page, a part left out of memory, on the periodic refill.
        self._more = True
        self._pumping = False
        self._stopping = False
        self.configure_limits()

    @property
    def link_id(self) -> int:
        return self.settings.id

    @property
    def is_bound(self) -> bool:
        return self.state == "bound" and self.protocol is not None and self.protocol.state == "bound"

    # -- lifecycle ------------------------------------------------------------------

    def configure_limits(self) -> None:
        s = self.settings
        rate = s.max_sending_rate or 0
        self.limiter.configure("smpp-link-send", s.id, rate=rate, burst=rate)
        rate = s.max_receiving_rate or 0
        self.limiter.configure("smpp-link-receive", s.id, rate=rate, burst=rate)

    def start(self) -> None:
        self._stopping = False
        if self.state in ("stopped", "waiting"):
            self._connect()

    def stop(self) -> Deferred:
        """Unbind and stop reconnecting; fires when the connection is closed."""
        self._stopping = True
        for name in ("_retry", "_stable", "_wake", "_refill_timer"):
            self._cancel(name)
        for timer in self._resends.values():
            if timer.active():
                timer.cancel()
        self._resends.clear()
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        self.queue.clear()
        self._held.clear()
        if self.protocol is not None:
            d = self.protocol.unbind()
        else:
            d = succeed(None)
        self._set_state("stopped", "")
        return d

    def reconfigure(self, settings: LinkSettings) -> None:
        """New settings from the database; a new bind only when a connection field changed."""
        old = self.settings
        self.settings = settings
        if self.protocol is not None:
            self.protocol.settings = settings
        self.configure_limits()
        if old.connection_key() != settings.connection_key() and self.protocol is not None:
            self.log.info("link {link}: connection settings changed, binding again", link=settings.name)
            self.protocol.close("settings changed")
        self._pump()

    def _cancel(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None and timer.active():
            timer.cancel()
        setattr(self, name, None)

    def _set_state(self, state: str, detail: str) -> None:
        changed = state != self.state
        self.state, self.detail = state, detail
        if changed:
            self.since = self.clock.seconds()
            self.log.info(
                "link {link}: {state} {detail}", link=self.settings.name, state=state, detail=detail
            )
            self.bus.publish(
                SmppLinkStateChanged(
                    at=self.since, link_id=self.settings.id, link=self.settings.name, state=state, detail=detail
                )
            )

    def _connect(self) -> None:
        self._retry = None
        if self._stopping:
            return
        self._set_state("connecting", f"{self.settings.host}:{self.settings.port}")
        d = self.connect_to(self.settings, _SessionFactory(self))
        self._connecting = d

        def connected(protocol: Any) -> None:
            self._connecting = None

        def failed(failure: Failure) -> None:
            if self._connecting is not d:
                return  # cancelled by stop()
            self._connecting = None
            self._schedule_retry(f"cannot connect: {failure.getErrorMessage()}")

        d.addCallbacks(connected, failed)

    def _schedule_retry(self, detail: str) -> None:
        self.protocol = None
        if self._stopping:
            self._set_state("stopped", detail)
            return
        self.failures += 1
        delay = self.BACKOFF[min(self.failures, len(self.BACKOFF)) - 1]
        self._set_state("waiting", f"{detail}; retrying in {delay} s")
        self._cancel("_retry")
        self._retry = self.clock.callLater(delay, self._connect)

    # -- session events (from ClientProtocol) -------------------------------------------------

    def session_opened(self, protocol: ClientProtocol) -> None:
        if self._stopping:
            protocol.close("link stopped")
            return
        self.protocol = protocol
        self._set_state("binding", self.settings.system_id or "")

    def session_bound(self, protocol: ClientProtocol, system_id: str) -> None:
        if protocol is not self.protocol:
            return
        self._set_state("bound", f"as {self.settings.mode} to {system_id or self.settings.host}")
        self._cancel("_stable")
        self._stable = self.clock.callLater(self.STABLE_SECONDS, self._became_stable)
        self._after = 0
        self._refill(force=True)
        self._schedule_refill()
        self._pump()

    def _became_stable(self) -> None:
        self._stable = None
        self.failures = 0

    def bind_failed(self, protocol: ClientProtocol, detail: str) -> None:
        self.detail = detail

    def session_closed(self, protocol: ClientProtocol, unanswered: list[OutboundPart], detail: str) -> None:
        if protocol is not self.protocol and self.protocol is not None:
            return
        for name in ("_stable", "_wake", "_refill_timer"):
            self._cancel(name)
        for timer in self._resends.values():
            if timer.active():
                timer.cancel()
        self._resends.clear()
        # The memory queue, the unanswered parts and those waiting to be
        # resent are dropped: they are still queued in the database and the
        # next bind reads them again. Only parts whose outcome is being
        # committed stay known, so they are not read back meanwhile.
        self.queue.clear()
        self._held.clear()
        self.known = set(self._committing)
        self._paused_until = 0.0
        reason = self.detail if self.state == "binding" and self.detail else detail
        self._schedule_retry(f"session closed ({reason})")

    # -- the queue ----------------------------------------------------------------------

    def enqueue(self, parts: list[OutboundPart] | tuple[OutboundPart, ...]) -> None:
        """Parts just stored for this link (the fast path; the database has them too)."""
        if not self.is_bound or not self.settings.sends:
            return
        now = self.clock.seconds()
        for part in parts:
            if part.part_id in self.known or part.part_id in self.withdrawn:
                continue
            if part.not_before is not None and part.not_before.timestamp() > now:
                continue  # scheduled: the refill brings it when due
            if len(self.queue) >= self.page * 2:
                self._more = True
                break  # memory stays bounded; the refill reads the rest
            self.queue.append(part)
            self.known.add(part.part_id)
        self._pump()

    def withdraw(self, part_ids: list[int] | tuple[int, ...]) -> bool:
        """Keep these parts from being sent (cancel, replace); False if one is in flight."""
        ids = set(part_ids)
        self._release_held()
        in_queue = {part.part_id for part in self.queue}
        if any(part_id in self.known and part_id not in in_queue and part_id not in self._resends for part_id in ids):
            return False
        for part_id in ids & self._resends.keys():
            timer = self._resends.pop(part_id)
            if timer.active():
                timer.cancel()
            self.known.discard(part_id)
        self.withdrawn.update(ids)
        if ids & in_queue:
            self.queue.remove_ids(ids)
            self.known.difference_update(ids)
        return True

    def restore(self, part_ids: list[int] | tuple[int, ...]) -> None:
        """Withdrawn parts may go again (the refill reads them from the database)."""
        self.withdrawn.difference_update(part_ids)
        self._after = 0
        self._more = True
        if self.is_bound:
            self._refill(force=True)

    def _schedule_refill(self) -> None:
        self._cancel("_refill_timer")
        self._refill_timer = self.clock.callLater(self.refill_seconds, self._periodic_refill)

    def _periodic_refill(self) -> None:
        self._refill_timer = None
        if self.is_bound:
            self._refill(force=True)
            self._schedule_refill()

    def _refill(self, force: bool = False) -> None:
        if self._loading or not self.is_bound or not self.settings.sends:
            return
        if force:
            self._more = True
        if not self._more or len(self.queue) >= self.page // 2:
            return
        self._loading = True
        self._settled_while_loading = set()
        d = self.sink.load_parts(self.settings.id, self._after, self.page)
        d.addCallbacks(self._loaded, self._load_failed)

    def _loaded(self, parts: list[OutboundPart]) -> None:
        self._loading = False
        settled, self._settled_while_loading = self._settled_while_loading, set()
        for part_id in settled:
            self.known.discard(part_id)
        if not self.is_bound:
            return
        for part in parts:
            if part.part_id in self.known or part.part_id in self.withdrawn or part.part_id in settled:
                continue
            self.queue.append(part)
            self.known.add(part.part_id)
        full = len(parts) >= self.page
        self._after = parts[-1].part_id if full else 0
        self._more = full
        self._pump()

    def _load_failed(self, failure: Failure) -> None:
        self._loading = False
        for part_id in self._settled_while_loading:
            self.known.discard(part_id)
        self._settled_while_loading = set()
        self.log.warn(  # noqa: G010 - twisted.logger has warn(), not warning()
            "link {link}: cannot read its queue: {error}", link=self.settings.name, error=failure.getErrorMessage()
        )

    def _settled(self, _: Any, part_id: int) -> None:
        """A part's outcome is committed: the link may forget it."""
        self._committing.discard(part_id)
        if self._loading:
            self._settled_while_loading.add(part_id)
        else:
            self.known.discard(part_id)

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            self._pump_once()
        finally:
            self._pumping = False
        if self.is_bound and len(self.queue) < self.page // 2:
            self._refill()

    def _release_held(self) -> None:
        if self._held:
            self.queue.extendleft(reversed(self._held))
            self._held.clear()

    def _pump_once(self) -> None:
        self._release_held()
        protocol = self.protocol
        while self.queue and protocol is not None and protocol.can_submit:
            now = self.clock.seconds()
            if now < self._paused_until:
                self._wake_at(self._paused_until - now)
                return
            part = self.queue[0]
            if part.part_id in self.withdrawn:
                self.queue.popleft()
                self.known.discard(part.part_id)
                continue
            if part.expired(now):
                self.queue.popleft()
                self._finish(part, "EXPIRED", None)
                continue
            if self.settings.max_sending_rate:
                decision = self.limiter.allow("smpp-link-send", self.settings.id)
                if not decision.allowed:
                    self._wake_at(max(decision.retry_after, 0.001))
                    return
            self.queue.popleft()
            try:
                protocol.submit(part)
            except pdu.FieldError as error:
                self.log.warn(  # noqa: G010 - twisted.logger has warn(), not warning()
                    "link {link}: part {part} of {message} cannot be sent: {error}",
                    link=self.settings.name,
                    part=part.number,
                    message=part.message_id,
                    error=error,
                )
                self._finish(part, "REJECTED", error.status)

    def _wake_at(self, delay: float) -> None:
        if self._wake is not None and self._wake.active():
            return
        self._wake = self.clock.callLater(delay, self._woken)

    def _woken(self) -> None:
        self._wake = None
        self._pump()

    def _finish(self, part: OutboundPart, state: str, error_code: int | None) -> None:
        self.refused += 1
        self._committing.add(part.part_id)
        d = self.sink.part_failed(self.settings.id, part, state, error_code)
        d.addBoth(self._settled, part.part_id)

    # -- answers (from ClientProtocol) ------------------------------------------------------

    def submit_answered(self, protocol: ClientProtocol, part: OutboundPart, upstream_id: str) -> None:
        self.sent += 1
        self._pauses = 0
        self._committing.add(part.part_id)
        d = self.sink.part_sent(self.settings.id, part, upstream_id)
        d.addBoth(self._settled, part.part_id)
        self._pump()

    def submit_refused(self, protocol: ClientProtocol, part: OutboundPart, status: int) -> None:
        s = self.settings
        if status in THROTTLING:
            self._pauses += 1
            base = s.resend_wait_ms / 1000.0 if s.resend_wait_ms > 0 else 1.0
            pause = min(base * 2 ** (self._pauses - 1), self.MAX_PAUSE)
            self._paused_until = max(self._paused_until, self.clock.seconds() + pause)
            self._held.append(part)
            self._wake_at(pause)
            return
        if status == pdu.ESME_RINVBNDSTS:
            protocol.close("the SMSC says we are not bound")  # the part is read again after the bind
            return
        if status in TEMPORARY and part.attempts < s.resend_times:
            part.attempts += 1
            self._resends[part.part_id] = self.clock.callLater(max(s.resend_wait_ms, 0) / 1000.0, self._resend, part)
            self._pump()
            return
        state = "UNDELIVERABLE" if status in TEMPORARY else "REJECTED"
        self._finish(part, state, status)
        self._pump()

    def _resend(self, part: OutboundPart) -> None:
        self._resends.pop(part.part_id, None)
        if part.part_id in self.withdrawn:
            self.known.discard(part.part_id)
            return
        self.queue.appendleft(part)
        self._pump()

    def submit_timed_out(self, protocol: ClientProtocol, part: OutboundPart) -> None:
        # The SMSC may have taken it: sending again risks a duplicate, not
        # sending risks a loss; switchd prefers at least once.
        self._held.append(part)
        self._pump()

    # -- receipts and MO ------------------------------------------------------------------

    def incoming(self, message: pdu.Pdu) -> Deferred:
        """Handle a deliver_sm / data_sm; fires with the command_status to answer."""
        s = self.settings
        if s.max_receiving_rate:
            decision = self.limiter.allow("smpp-link-receive", s.id)
            if not decision.allowed:
                if s.extra_traffic_policy == 2:
                    return succeed(pdu.ESME_RTHROTTLED)
                waiter: Deferred = Deferred()
                self.clock.callLater(max(decision.retry_after, 0.001), lambda: self.incoming(message).chainDeferred(waiter))
                return waiter
        try:
            item = dlr.classify(message)
        except dlr.ReceiptUnreadable as error:
            self.log.warn(  # noqa: G010 - twisted.logger has warn(), not warning()
                "link {link}: {error}", link=s.name, error=error
            )
            return succeed(pdu.ESME_ROK)
        if isinstance(item, dlr.UpstreamReceipt):
            d = self.sink.receipt_received(s.id, item)
        else:
            d = self.sink.message_received(s.id, item)

        def failed(failure: Failure) -> int:
            self.log.failure("link {link}: cannot store an incoming message", failure, link=s.name)
            return pdu.ESME_RSYSERR

        d.addErrback(failed)
        return d

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        protocol = self.protocol
        return {
            "link_id": self.settings.id,
            "name": self.settings.name,
            "state": self.state,
            "detail": self.detail,
            "since": self.since,
            "queued": len(self.queue),
            "in_flight": protocol.submits if protocol is not None else 0,
            "sent": self.sent,
            "refused": self.refused,
        }


# -- the manager ---------------------------------------------------------------------------------


def tcp_connector(reactor: Any, timeout: float = 10.0) -> Connector:
    """Connect over TCP (names resolved by the reactor), from the link's local port if set."""
    from twisted.internet.endpoints import HostnameEndpoint

    def connect(settings: LinkSettings, factory: twisted_protocol.Factory) -> Deferred:
        bind = None
        if settings.local_port:
            bind = ("::" if ":" in settings.host else "0.0.0.0", settings.local_port)
        endpoint = HostnameEndpoint(reactor, settings.host, settings.port, timeout=timeout, bindAddress=bind)
        return endpoint.connect(factory)

    return connect


class SmppLinkManager(Service):
    """The node's upstream links, in line with ``smpp_links`` (re-read every ``reload_seconds``).

    A new enabled link is connected, a disabled or deleted one unbound, a
    changed one reconfigured (and bound again when a connection setting
    changed). The engine hands stored parts to ``enqueue``; the router asks
    ``is_bound``.
    """

    log = Logger()

    def __init__(
        self,
        db: Any,
        clock: IReactorTime,
        sink: LinkSink,
        limiter: RateLimiter,
        bus: EventBus,
        *,
        connect: Connector | None = None,
        reactor: Any = None,
        reload_seconds: float = 10.0,
        page: int = 500,
        refill_seconds: float = 5.0,
        connect_timeout: float = 10.0,
    ) -> None:
        if connect is None:
            if reactor is None:
                raise ValueError("SmppLinkManager needs a reactor or a connect function")
            connect = tcp_connector(reactor, connect_timeout)
        self.db = db
        self.clock = clock
        self.sink = sink
        self.limiter = limiter
        self.bus = bus
        self.connect = connect
        self.reload_seconds = reload_seconds
        self.page = page
        self.refill_seconds = refill_seconds
        self.links: dict[int, SmppLink] = {}
        self._loop: LoopingCall | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.reload)
        self._loop.clock = self.clock
        self._loop.start(self.reload_seconds, now=True)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        links, self.links = list(self.links.values()), {}
        return DeferredList([link.stop() for link in links], consumeErrors=True)

    def reload(self) -> Deferred:
        d = self.db.run(load_links)
        d.addCallback(self.apply)
        d.addErrback(lambda f: self.log.failure("cannot read the SMPP links", f))
        return d

    def apply(self, settings: list[LinkSettings]) -> None:
        """Bring the running links in line with ``settings`` (the enabled rows)."""
        wanted = {s.id: s for s in settings if s.enabled}
        for link_id in list(self.links):
            if link_id not in wanted:
                link = self.links.pop(link_id)
                self.log.info("link {link} removed or disabled: unbinding", link=link.settings.name)
                link.stop()
        for link_id, s in wanted.items():
            link = self.links.get(link_id)
            if link is None:
                link = self.links[link_id] = SmppLink(
                    s,
                    clock=self.clock,
                    connect=self.connect,
                    sink=self.sink,
                    limiter=self.limiter,
                    bus=self.bus,
                    page=self.page,
                    refill_seconds=self.refill_seconds,
                )
                link.start()
            elif link.settings != s:
                link.reconfigure(s)

    # -- what the engine and the router ask ----------------------------------------------------

    def is_bound(self, link_id: int) -> bool:
        link = self.links.get(link_id)
        return link is not None and link.is_bound and link.settings.sends

    def settings_of(self, link_id: int) -> LinkSettings | None:
        link = self.links.get(link_id)
        return link.settings if link is not None else None

    def bound_links(self) -> list[int]:
        return [link_id for link_id, link in self.links.items() if link.is_bound]

    def enqueue(self, link_id: int, parts: list[OutboundPart] | tuple[OutboundPart, ...]) -> None:
        link = self.links.get(link_id)
        if link is not None:
            link.enqueue(parts)

    def withdraw(self, link_id: int, part_ids: list[int] | tuple[int, ...]) -> bool:
        link = self.links.get(link_id)
        return True if link is None else link.withdraw(part_ids)

    def restore(self, link_id: int, part_ids: list[int] | tuple[int, ...]) -> None:
        link = self.links.get(link_id)
        if link is not None:
            link.restore(part_ids)

    def status(self, link_id: int | None = None) -> Any:
        """One link's state (None if it is not running here), or every link's."""
        if link_id is not None:
            link = self.links.get(link_id)
            return link.status() if link is not None else None
        return [link.status() for link in self.links.values()]
