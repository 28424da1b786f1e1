"""Status callbacks of HTTP connections: the customer's URL hears about its messages.

:class:`StatusCallbacks` listens to ``MessageStateChanged`` on the bus and,
for messages sent through an HTTP connection (origin kind ``"http"``),
calls the connection's URL:

* a *start* callback (with StartCallback on) when the message is under way
  (ENROUTE: stored and being sent upstream);
* an *end* callback (with EndCallback on) at its final state (DELIVERED,
  ACCEPTED, EXPIRED, DELETED, UNDELIVERABLE, UNKNOWN, REJECTED).

Each callback goes with the connection's transfer method (GET: the fields as
query parameters; POST: a body), its extra headers, HTTP Basic
authentication when a username is set, and the payload of its callback
version:

``V1`` (flat, form style)
    ``id``, ``type`` (start/end), ``status`` (the state word),
    ``error_code`` (empty when none), ``parts``, ``to``, ``from`` (only with
    "Pass A-number"), ``client_reference`` (empty when none) and
    ``timestamp`` (Unix seconds of the state change).  POST sends them
    ``application/x-www-form-urlencoded``.
``V2`` (JSON)
    ``event_id``, ``type``, ``message_id``, ``state``, ``final`` (bool),
    ``parts``, ``error_code`` (null when none), ``to``, ``from`` (only with
    "Pass A-number"), ``client_reference`` (null when none) and
    ``timestamp`` (ISO 8601, UTC).  POST sends ``application/json``; GET the
    same keys as parameters (nulls left out, booleans as true/false).
``V4`` (Standard Webhooks envelope)
    ``{"type": "sms.start" | "sms.end", "timestamp": ISO 8601, "data": {...}}``
    where ``data`` holds V2's message fields (``message_id``, ``state``,
    ``final``, ``parts``, ``error_code``, ``to``, ``from``,
    ``client_reference``).  GET flattens ``data`` next to ``type`` and
    ``timestamp``.

An MO message for a customer reached by HTTP (``MessageReceived``: its
service has no SMPP connection) goes to the same URL, the same way, whatever
the start and end switches say, as an ``mo`` callback: V1 ``id``, ``type``
(mo), ``from``, ``to``, ``text``, ``timestamp``; V2 ``event_id``, ``type``,
``message_id``, ``from``, ``to``, ``text``, ``data_coding``, ``timestamp``;
V4 ``{"type": "sms.mo", "timestamp": ..., "data": {message_id, from, to,
text, data_coding}}``.

Every callback carries the Standard Webhooks headers ``webhook-id`` (the
event id: stable for one message state, so retries and duplicates can be
recognised), ``webhook-timestamp`` (Unix seconds of this attempt) and, when
the connection has a password, ``webhook-signature: v1,<base64 HMAC-SHA256>``
over ``"<id>.<timestamp>.<body>"`` keyed with the password's UTF-8 octets
(for GET the body is the query string).

A 2xx answer is success.  Anything else (another status, no answer within
the timeout, a refused connection) is retried with exponential backoff on
the injected clock (1, 2, 4 ... seconds, at most ``backoff_cap`` apart) when
CallbackRepeat is on, until it is accepted or ``callback_max_age`` (a day)
has passed since its event; without CallbackRepeat the one try is all.  The
callbacks of one message go out in the order of its events, one at a time:
its end callback waits until its start callback is answered or given up
(retries included), so a receiver never hears the end first.  Callbacks of
different messages run side by side and may arrive in any order.
Callbacks never hold anything up: the bus handler only queues; at most
``max_in_flight`` requests run at once, at most ``max_queue`` wait to be
sent and at most ``max_queue`` wait for a retry (beyond that the oldest are
dropped from memory and counted as dropped: not given up, see below).

Durability: a callback delivered or given up (its age limit passed, its one
try failed, or nothing to send: no URL, the switch off, the connection
gone) is recorded in the message's ``callbacks_sent`` bits (1 start, 2 end,
4 mo), in batches (every ``flush_seconds`` or ``flush_batch`` callbacks, and
at shutdown) by one ``UPDATE`` through the database pool, never per message
on the hot path; a batch that fails is written with the next one.  When the
service starts, and then every ``recover_seconds``, it looks for callbacks
due and not recorded (:func:`due_callbacks`) within ``callback_max_age``, in
pages of ``recover_page`` and never more than ``max_queue`` waiting, and
queues them as if their event had just come:

* the start callback of a message of this node still ENROUTE (a message
  already final gets its end callback only: the start is not sent late);
* the end callback of a message of this node in a final state;
* the mo callback of an MO message for an HTTP connection that this node
  took (MO rows stored before they named their node belong to none: every
  node recovers those, so in a cluster one may come from two nodes, with one
  ``webhook-id``).

A message changed since this service started and less than
``recover_grace`` ago is left alone (its event is on its way through the
bus), as is one with a callback in memory or a record not yet written.
So a callback not delivered before a crash, SIGKILL or a drop is sent after
the restart (or the next pass) with the same ``webhook-id``; a callback
delivered just before a crash, its record not yet written, may come twice.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import and_, bindparam, or_, select, text
from sqlalchemy.engine import Connection
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import RequestNotSent, RequestTransmissionFailed, ResponseNeverReceived

from ..smpp import dlr
from ..sms.engine import MessageReceived, MessageStateChanged
from ..store.models import http_connections, sms_messages

__all__ = [
    "FINAL_STATES",
    "SENT_BITS",
    "Callback",
    "DueCallback",
    "HttpSettings",
    "StatusCallbacks",
    "build_request",
    "due_callbacks",
    "event_id",
    "record_sent",
    "sign",
]

#: States after which nothing more happens (end callbacks); the others get start callbacks.
FINAL_STATES = dlr.FINAL_STATES

#: The bit of each kind of callback in ``sms_messages.callbacks_sent``.
SENT_BITS = {"start": 1, "end": 2, "mo": 4}


@dataclass(frozen=True)
class HttpSettings:
    """The callback settings of one HTTP connection."""

    connection_id: int
    url: str | None
    method: str = "POST"
    version: str = "V1"
    start: bool = False
    end: bool = False
    username: str | None = None
    password: str | None = None
    repeat: bool = False
    pass_a_number: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    def wants(self, kind: str) -> bool:
        """Start and end callbacks follow their switches; MO goes wherever a URL is set."""
        if not self.url:
            return False
        return {"start": self.start, "end": self.end}.get(kind, True)


def load_settings(conn: Connection, connection_id: int) -> HttpSettings | None:
    row = conn.execute(select(http_connections).where(http_connections.c.id == connection_id)).first()
    if row is None:
        return None
    headers = row.headers if isinstance(row.headers, dict) else {}
    return HttpSettings(
        connection_id=row.id,
        url=row.url,
        method=(row.transfer_method or "POST").upper(),
        version=row.callback_version or "V1",
        start=bool(row.start_callback),
        end=bool(row.end_callback),
        username=row.username,
        password=row.password,
        repeat=bool(row.callback_repeat),
        pass_a_number=bool(row.pass_a_number),
        headers={str(k): str(v) for k, v in headers.items()},
    )


_RECORD_SENT = text(
    "UPDATE sms_messages SET callbacks_sent = callbacks_sent | :bits WHERE message_id = :message_id"
).bindparams(bindparam("bits", type_=sms_messages.c.callbacks_sent.type),
             bindparam("message_id", type_=sms_messages.c.message_id.type))


def record_sent(conn: Connection, done: list[tuple[str, int]]) -> None:
    """Add ``bits`` to the ``callbacks_sent`` of each message: one executemany."""
    if done:
        conn.execute(_RECORD_SENT, [{"message_id": message_id, "bits": bits} for message_id, bits in done])


@dataclass(frozen=True)
class DueCallback:
    """A callback due and not recorded as done, rebuilt from its message's row."""

    pk: int
    kind: str
    event: Any  # MessageStateChanged or MessageReceived, as the bus would have brought it


_m, _h = sms_messages, http_connections
_SENT = _m.c.callbacks_sent
_DUE = (
    select(_m, _h.c.start_callback, _h.c.end_callback)
    .select_from(_m.join(_h, _h.c.id == _m.c.connection_id))
    # Literal, as in the index ix_sms_messages_callbacks_waiting, so that it serves.
    .where(text("sms_messages.origin_kind = 'http' AND sms_messages.callbacks_sent < 2"))
    .where(
        or_(_m.c.node == bindparam("node"), _m.c.node.is_(None)),
        _m.c.id > bindparam("after"),
        _m.c.updated_at >= bindparam("since", type_=_m.c.updated_at.type),
        _m.c.updated_at < bindparam("before", type_=_m.c.updated_at.type),
        _h.c.url.is_not(None),
        or_(
            and_(_m.c.direction == "mt", _m.c.node.is_not(None), _m.c.status == "ENROUTE",
                 _h.c.start_callback.is_(True), _SENT.op("&")(1) == 0),
            and_(_m.c.direction == "mt", _m.c.node.is_not(None), _m.c.status.in_(sorted(FINAL_STATES)),
                 _h.c.end_callback.is_(True), _SENT.op("&")(2) == 0),
            and_(_m.c.direction == "mo", _SENT.op("&")(4) == 0),
        ),
    )
    .order_by(_m.c.id)
    .limit(bindparam("limit"))
)


def _seconds(moment: datetime.datetime | None) -> float:
    return moment.timestamp() if moment is not None else 0.0


def due_callbacks(
    conn: Connection, node: str, after: int, since: datetime.datetime, before: datetime.datetime, limit: int
) -> list[DueCallback]:
    """The callbacks due and not done of HTTP messages changed in [since, before):
    the start of this node's ENROUTE messages, the end of its final ones
    (when the connection has that switch on), every MO; in id order after
    ``after``, at most ``limit``."""
    rows = conn.execute(_DUE, {"node": node, "after": after, "since": since, "before": before, "limit": limit})
    due = []
    for row in rows:
        if row.direction == "mo":
            event: Any = MessageReceived(
                at=_seconds(row.created_at), message_id=row.message_id, account_id=row.account_id,
                service_id=row.service_id, origin_kind=row.origin_kind, connection_id=row.connection_id,
                source=row.source, destination=row.destination, content=b"",  # the octets are not kept
                data_coding=row.data_coding, esm_class=row.esm_class, text=row.body,
            )
            due.append(DueCallback(row.id, "mo", event))
            continue
        final = row.status in FINAL_STATES
        event = MessageStateChanged(
            at=_seconds((row.done_at or row.updated_at) if final else row.created_at),
            message_id=row.message_id, account_id=row.account_id, service_id=row.service_id,
            origin_kind=row.origin_kind, connection_id=row.connection_id, state=row.status, parts=row.parts,
            error_code=row.error_code, source=row.source, destination=row.destination,
            client_reference=row.client_reference,
        )
        due.append(DueCallback(row.id, "end" if final else "start", event))
    return due


def event_id(message_id: str, state: str) -> str:
    """Stable id of one state of one message: the same for every retry and duplicate."""
    return "evt_" + hashlib.sha256(f"{message_id}\0{state}".encode()).hexdigest()[:32]


def sign(secret: str, event: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` value."""
    mac = hmac.new(secret.encode("utf-8"), f"{event}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


@dataclass
class Callback:
    """One callback to deliver (with its retry count)."""

    settings: HttpSettings
    kind: str  # start, end, or mo
    event: Any  # MessageStateChanged (start, end) or MessageReceived (mo)
    attempts: int = 0

    @property
    def id(self) -> str:
        return event_id(self.event.message_id, "MO" if self.kind == "mo" else self.event.state)


class _Slot:
    """A place in a message's line of callbacks, taken when its event arrives
    (before its settings are read, so that a slow read keeps its turn)."""

    __slots__ = ("callback", "ready", "started")

    def __init__(self) -> None:
        self.callback: Callback | None = None  # None once ready: nothing to send
        self.ready = False
        self.started = False


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat().replace("+00:00", "Z")


def _message_fields(event: Any, settings: HttpSettings, final: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "message_id": event.message_id,
        "state": event.state,
        "final": final,
        "parts": event.parts,
        "error_code": event.error_code,
        "to": event.destination,
    }
    if settings.pass_a_number:
        data["from"] = event.source
    data["client_reference"] = event.client_reference
    return data


def _mo_payload(callback: Callback) -> dict[str, Any]:
    event, version = callback.event, callback.settings.version
    if version == "V1":
        return {"id": event.message_id, "type": "mo", "from": event.source, "to": event.destination,
                "text": event.text, "timestamp": int(event.at)}
    data = {"message_id": event.message_id, "from": event.source, "to": event.destination, "text": event.text,
            "data_coding": event.data_coding}
    if version == "V4":
        return {"type": "sms.mo", "timestamp": _iso(event.at), "data": data}
    return {"event_id": callback.id, "type": "mo", **data, "timestamp": _iso(event.at)}


def payload(callback: Callback) -> dict[str, Any]:
    """The fields of a callback in its connection's version (see the module docstring)."""
    if callback.kind == "mo":
        return _mo_payload(callback)
    event, settings, kind = callback.event, callback.settings, callback.kind
    final = event.state in FINAL_STATES
    if settings.version == "V1":
        fields: dict[str, Any] = {
            "id": event.message_id,
            "type": kind,
            "status": event.state,
            "error_code": "" if event.error_code is None else event.error_code,
            "parts": event.parts,
            "to": event.destination,
        }
        if settings.pass_a_number:
            fields["from"] = event.source
        fields["client_reference"] = event.client_reference or ""
        fields["timestamp"] = int(event.at)
        return fields
    if settings.version == "V4":
        return {"type": f"sms.{kind}", "timestamp": _iso(event.at), "data": _message_fields(event, settings, final)}
    return {"event_id": callback.id, "type": kind, **_message_fields(event, settings, final),
            "timestamp": _iso(event.at)}


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _flat(fields: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for name, value in fields.items():
        if isinstance(value, dict):
            out += _flat(value)
        elif value is not None:
            out.append((name, _query_value(value)))
    return out


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


def signed_request(
    *,
    method: str,
    url: str,
    version: str,
    headers: dict[str, str],
    password: str | None,
    event_id: str,
    fields: dict[str, Any],
    now: float,
    pairs: Callable[[dict[str, Any]], list[tuple[str, str]]],
) -> HttpRequest:
    """A request to a customer's system as its connection says: the fields in the
    query (GET) or the body (POST: a form for V1, JSON otherwise, ``pairs``
    flattening them for a query or a form), the Standard Webhooks ``webhook-id``
    and ``webhook-timestamp`` headers, and with a password ``webhook-signature``
    over what was sent. Status callbacks and status surveys both use it."""
    headers = dict(headers)
    if method == "GET":
        query = urllib.parse.urlencode(pairs(fields))
        parts = urllib.parse.urlsplit(url)
        joined = f"{parts.query}&{query}" if parts.query else query
        url = urllib.parse.urlunsplit(parts._replace(query=joined))
        body = None
        signed = query.encode("ascii")
    else:
        if version == "V1":
            body = urllib.parse.urlencode(pairs(fields)).encode("ascii")
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            body = json.dumps(fields, separators=(",", ":")).encode("utf-8")
            headers["Content-Type"] = "application/json"
        signed = body
    timestamp = int(now)
    headers["webhook-id"] = event_id
    headers["webhook-timestamp"] = str(timestamp)
    if password:
        headers["webhook-signature"] = sign(password, event_id, timestamp, signed)
    return HttpRequest(method, url, headers, body)


def build_request(callback: Callback, now: float) -> HttpRequest:
    """The request of one attempt: method, URL (with query for GET), headers, body."""
    settings = callback.settings
    assert settings.url is not None
    return signed_request(method=settings.method, url=settings.url, version=settings.version,
                          headers=settings.headers, password=settings.password, event_id=callback.id,
                          fields=payload(callback), now=now, pairs=_flat)


class CallbackFailed(Exception):
    """One attempt did not get a 2xx answer."""


class StatusCallbacks(Service):
    """Queue, send, retry and record status callbacks; see the module docstring."""

    log = Logger()

    def __init__(
        self,
        db: Any,
        clock: IReactorTime,
        bus: Any,
        http: Any,
        *,
        node: str,
        registry: CollectorRegistry | None = None,
        timeout: float = 10.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        callback_max_age: float = 86400.0,
        max_in_flight: int = 64,
        max_queue: int = 10000,
        settings_seconds: float = 10.0,
        flush_seconds: float = 1.0,
        flush_batch: int = 500,
        recover_seconds: float = 60.0,
        recover_grace: float = 60.0,
        recover_page: int = 1000,
    ) -> None:
        self.db = db
        self.clock = clock
        self.bus = bus
        self.http = http
        self.node = node
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.callback_max_age = callback_max_age
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.settings_seconds = settings_seconds
        self.flush_seconds = flush_seconds
        self.flush_batch = flush_batch
        self.recover_seconds = recover_seconds
        self.recover_grace = recover_grace
        self.recover_page = recover_page
        self._queue: deque[Callback] = deque()
        self._lines: dict[str, deque[_Slot]] = {}  # per message: its callbacks in event order
        self._in_flight = 0
        self._retries: dict[int, tuple[IDelayedCall, Callback]] = {}  # oldest first
        self._retry_ids = 0
        self._settings: dict[int, tuple[float, HttpSettings | None]] = {}
        self._unsubscribe: list[Callable[[], None]] = []
        self._dropping = False
        # Records of callbacks done (message id -> bits): waiting, and being written.
        self._unflushed: dict[str, int] = {}
        self._flushing: dict[str, int] | None = None
        self._flush_call: IDelayedCall | None = None
        self._flush_waiters: list[Deferred] = []
        # Messages recorded while a recovery query runs (it may have read them before).
        self._fresh: set[str] | None = None
        self._recovery: LoopingCall | None = None
        self._started_at = 0.0
        registry = registry if registry is not None else CollectorRegistry()
        self.sent = Counter("switchd_sms_callbacks", "Status callbacks by outcome", ["outcome"], registry=registry)

    # -- lifecycle ------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._started_at = self.clock.seconds()
        self._unsubscribe = [
            self.bus.subscribe(MessageStateChanged, self.on_event),
            self.bus.subscribe(MessageReceived, self.on_mo),
        ]
        self._recovery = LoopingCall(self.recover)
        self._recovery.clock = self.clock
        self._recovery.start(self.recover_seconds, now=True)

    def stopService(self) -> Deferred:
        super().stopService()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        if self._recovery is not None and self._recovery.running:
            self._recovery.stop()
        self._recovery = None
        waiting = len(self._queue) + len(self._retries)
        if waiting:
            self.log.info("{count} status callback(s) not sent at shutdown: sent after the restart", count=waiting)
        for call, _ in self._retries.values():
            if call.active():
                call.cancel()
        self._retries.clear()
        self._queue.clear()
        self._lines.clear()
        return ensureDeferred(self._flush_all())

    # -- events -----------------------------------------------------------------------

    def on_event(self, event: MessageStateChanged) -> None:
        """Bus sink: only looks and queues, never waits."""
        if event.origin_kind != "http":
            return
        self._prepare("end" if event.state in FINAL_STATES else "start", event)

    def on_mo(self, event: MessageReceived) -> None:
        """An MO for a customer reached by HTTP: to its callback URL."""
        if event.origin_kind == "http":
            self._prepare("mo", event)

    def _prepare(self, kind: str, event: Any) -> None:
        slot = _Slot()
        line = self._lines.get(event.message_id)
        if line is None:
            line = self._lines[event.message_id] = deque()
        line.append(slot)
        d = ensureDeferred(self._settings_of(event.connection_id))
        d.addCallback(self._prepared, slot, kind, event)
        d.addErrback(self._not_prepared, slot, event)

    async def _settings_of(self, connection_id: int) -> HttpSettings | None:
        now = self.clock.seconds()
        cached = self._settings.get(connection_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        settings = await self.db.run(load_settings, connection_id)
        if len(self._settings) > 10000:
            self._settings.clear()
        self._settings[connection_id] = (now + self.settings_seconds, settings)
        return settings

    def _prepared(self, settings: HttpSettings | None, slot: _Slot, kind: str, event: Any) -> None:
        if self.running:
            if settings is not None and settings.wants(kind):
                slot.callback = Callback(settings, kind, event)
            elif kind != "start":
                # Nothing to send: done. (A start not wanted is never looked for again.)
                self._record(event.message_id, kind)
        slot.ready = True
        self._advance(event.message_id)

    def _not_prepared(self, failure: Failure, slot: _Slot, event: Any) -> None:
        self.log.failure("status callback for {id} not queued", failure, id=event.message_id)
        slot.ready = True
        self._advance(event.message_id)

    def _advance(self, message_id: str) -> None:
        """Start the first callback of a message's line, unless one is under way."""
        line = self._lines.get(message_id)
        if line is None:
            return
        while line and line[0].ready:
            head = line[0]
            if head.started:
                return
            if head.callback is None:
                line.popleft()
                continue
            head.started = True
            self._enqueue(head.callback)
            return
        if not line:
            del self._lines[message_id]

    def _done(self, callback: Callback) -> None:
        """``callback`` is answered, given up or dropped: its message's next one may go."""
        line = self._lines.get(callback.event.message_id)
        if line and line[0].callback is callback:
            line.popleft()
            self._advance(callback.event.message_id)

    def _drop(self, callback: Callback) -> None:
        """Out of memory, not done: not recorded, so recovery sends it later."""
        self._done(callback)
        self.sent.labels("dropped").inc()
        if not self._dropping:
            self._dropping = True
            self.log.warn("status callbacks over {size} waiting; dropping the oldest from memory until the "  # noqa: G010
                          "next recovery", size=self.max_queue)

    def _enqueue(self, callback: Callback) -> None:
        if len(self._queue) >= self.max_queue:
            self._drop(self._queue.popleft())
        self._queue.append(callback)
        self._pump()

    def _pump(self) -> None:
        while self._queue and self._in_flight < self.max_in_flight:
            callback = self._queue.popleft()
            self._in_flight += 1
            d = ensureDeferred(self._attempt(callback))
            d.addBoth(self._finished, callback)
        if not self._queue and len(self._retries) < self.max_queue:
            self._dropping = False

    # -- attempts ---------------------------------------------------------------------

    async def _attempt(self, callback: Callback) -> None:
        callback.attempts += 1
        request = build_request(callback, self.clock.seconds())
        kwargs: dict[str, Any] = {"headers": request.headers, "allow_redirects": False}
        if request.body is not None:
            kwargs["data"] = request.body
        if callback.settings.username:
            kwargs["auth"] = (callback.settings.username, callback.settings.password or "")
        d = self.http.request(request.method, request.url, **kwargs)
        d.addTimeout(self.timeout, self.clock)
        response = await d
        code = response.code
        # Read (and forget) the body so a persistent connection can be reused.
        content = getattr(response, "content", None)
        if callable(content):
            body = content()
            body.addTimeout(self.timeout, self.clock)
            body.addErrback(lambda _: None)  # a body cut short changes nothing: the status code counts
            await body
        if not 200 <= code < 300:
            raise CallbackFailed(f"HTTP {code}")

    def _finished(self, result: Any, callback: Callback) -> None:
        self._in_flight -= 1
        if result is None:
            self.sent.labels("delivered").inc()
            self._record(callback.event.message_id, callback.kind)
            self._done(callback)
        else:
            self._failed(result, callback)
        self._pump()

    def _failed(self, failure: Any, callback: Callback) -> None:
        error = failure.value
        reason = str(error) if isinstance(error, CallbackFailed) else type(error).__name__
        if not self.running:
            return  # shutting down: not done, sent after the restart
        now = self.clock.seconds()
        delay = min(self.backoff_cap, self.backoff_base * 2 ** min(callback.attempts - 1, 62))
        if callback.settings.repeat and now + delay <= callback.event.at + self.callback_max_age:
            self.sent.labels("retried").inc()
            if len(self._retries) >= self.max_queue:
                oldest = next(iter(self._retries))
                call, dropped = self._retries.pop(oldest)
                call.cancel()
                self._drop(dropped)
            self._retry_ids += 1
            token = self._retry_ids
            self._retries[token] = (self.clock.callLater(delay, self._retry, token, callback), callback)
            return
        self.sent.labels("failed").inc()
        self._record(callback.event.message_id, callback.kind)
        self._done(callback)
        self.log.info(
            "status callback {event} for message {id} to connection {connection} failed after {attempts} "
            "attempt(s): {reason}",
            event=callback.id, id=callback.event.message_id, connection=callback.settings.connection_id,
            attempts=callback.attempts, reason=reason,
        )

    def _retry(self, token: int, callback: Callback) -> None:
        self._retries.pop(token, None)
        self._enqueue(callback)

    @property
    def pending(self) -> int:
        """Callbacks queued, sending, waiting for a retry or for their message's earlier one."""
        waiting = sum(1 for line in self._lines.values() for slot in line if not slot.started)
        return len(self._queue) + self._in_flight + len(self._retries) + waiting

    # -- records ----------------------------------------------------------------------

    def _record(self, message_id: str, kind: str) -> None:
        """``kind`` of ``message_id`` is done (delivered or given up): write it with the next batch."""
        self._unflushed[message_id] = self._unflushed.get(message_id, 0) | SENT_BITS[kind]
        if self._fresh is not None:
            self._fresh.add(message_id)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._unflushed or self._flushing is not None:
            return  # the flush under way schedules the next
        if len(self._unflushed) >= self.flush_batch:
            ensureDeferred(self._flush())
        elif self._flush_call is None and self.running:
            self._flush_call = self.clock.callLater(self.flush_seconds, self._flush_due)

    def _flush_due(self) -> None:
        self._flush_call = None
        ensureDeferred(self._flush())

    async def _flush(self) -> None:
        """Write the records waiting in one statement; on failure they wait for the next flush."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if self._flushing is not None or not self._unflushed:
            return
        batch, self._unflushed = self._unflushed, {}
        self._flushing = batch
        try:
            await self.db.run(record_sent, sorted(batch.items()))
        except Exception:
            self.log.failure("recording {count} status callback(s) as sent failed; trying again", count=len(batch))
            for message_id, bits in batch.items():
                self._unflushed[message_id] = self._unflushed.get(message_id, 0) | bits
        finally:
            self._flushing = None
            waiters, self._flush_waiters = self._flush_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        self._schedule_flush()

    async def _flush_all(self) -> None:
        """At shutdown: wait for the flush under way, then write what is left (once)."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if self._flushing is not None:
            waiter: Deferred = Deferred()
            self._flush_waiters.append(waiter)
            await waiter
        await self._flush()

    # -- recovery ---------------------------------------------------------------------

    def _known(self, message_id: str, fresh: set[str]) -> bool:
        return (message_id in self._lines or message_id in fresh or message_id in self._unflushed
                or (self._flushing is not None and message_id in self._flushing))

    def recover(self) -> Deferred:
        """Queue the callbacks due and not recorded as done (see the module docstring)."""
        return ensureDeferred(self._recover())

    async def _recover(self) -> int:
        queued = 0
        try:
            now = self.clock.seconds()
            before = _utc(max(self._started_at, now - self.recover_grace))
            since = _utc(now - self.callback_max_age)
            after = 0
            while self.running:
                limit = min(self.recover_page, self.max_queue - self.pending)
                if limit <= 0:
                    break  # the rest on a later pass, when there is room
                self._fresh = set(self._unflushed) | set(self._flushing or ())
                try:
                    due = await self.db.run(due_callbacks, self.node, after, since, before, limit)
                    for connection_id in sorted({item.event.connection_id for item in due}):
                        await self._settings_of(connection_id)  # one read per connection, not per message
                    fresh = self._fresh
                finally:
                    self._fresh = None
                for item in due:
                    if self.running and not self._known(item.event.message_id, fresh):
                        self._prepare(item.kind, item.event)
                        queued += 1
                if len(due) < limit:
                    break
                after = due[-1].pk
        except Exception:
            self.log.failure("looking for status callbacks to send again failed")
        if queued:
            self.log.info("{count} status callback(s) not recorded as sent queued again", count=queued)
        return queued


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


#: Failures of a request that got no answer because its connection broke
#: (typically a pooled connection the server had already closed).
BROKEN_CONNECTION = (ResponseNeverReceived, RequestTransmissionFailed, RequestNotSent)


class FreshConnectionRetry:
    """A treq-like client that sends a request once more, at once, when its
    connection broke before any answer.

    Twisted keeps a connection in the pool after an HTTP/1.0 answer without
    ``Connection: close``, and any server may close an idle keep-alive
    connection just as a request goes out on it; neither is the receiver
    failing. Only non-idempotent methods need this (Twisted retries GET
    itself), and webhooks carry an id for the receiver to drop a duplicate.
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        d = self.client.request(method, url, **kwargs)

        def again(failure: Failure) -> Any:
            failure.trap(*BROKEN_CONNECTION)
            return self.client.request(method, url, **kwargs)

        return d.addErrback(again)


def default_http_client(reactor: Any) -> Any:
    """treq over a persistent connection pool of ``reactor``, retried once on a broken connection."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 4
    return FreshConnectionRetry(HTTPClient(Agent(reactor, pool=pool)))
