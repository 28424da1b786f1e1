"""The status survey mechanism of HTTP connections: switchd asks the customer's system.

An HTTP connection with "Status Survey Mechanism" (``status_survey``) and a
URL is *polled*: every ``interval`` seconds switchd asks the customer's
system for the statuses of the connection's messages whose fate switchd
does not know, and records the answers in its database as if they had come
in a receipt. It is for systems that learn a message's fate themselves (a
PUSH ID service whose user confirmed the code it carried, an application
that saw its user act on the text) and for messages sent over links that
give no receipts, which would otherwise stay ``ENROUTE``.

Which messages are asked about: messages sent through the connection
(``origin_kind`` http, direction mt) by this node, still ``ENROUTE``, every
part of which has left switchd (a message still queued here has no fate to
learn), submitted at least ``min_age`` seconds ago (receipts first) and at
most ``max_age`` seconds ago (the longest validity), oldest first, at most
``batch`` ids per request and ``max_requests`` requests per connection and
round; a round that did not reach the newest continues in the next one.

The request (sans-IO: :func:`build_survey_request`) goes to the
connection's URL as its callbacks do: its transfer method (GET: query
parameters; POST: a body), HTTP Basic authentication when a username is
set, its extra headers, and the Standard Webhooks headers (``webhook-id``,
a new ``svy_`` id per request, ``webhook-timestamp``, and with a password
``webhook-signature``). The fields follow the connection's callback
version:

``V1``  ``type=survey``, ``ids`` (comma-separated), ``timestamp`` (Unix seconds), as a form
``V2``  JSON ``{"event_id", "type": "survey", "message_ids": [...], "timestamp"}``
``V4``  JSON ``{"type": "sms.survey", "timestamp", "data": {"message_ids": [...]}}``

(for GET the ids are one comma-separated parameter, ``ids`` or ``message_ids``).

The answer (:func:`parse_survey_answer`) is a 2xx with a JSON body, for
every version: ``{"statuses": [{"message_id": ..., "state": ...,
"error_code": ...}, ...]}`` (``data.statuses`` in V4, or the bare list;
``id`` and ``status`` are accepted for ``message_id`` and ``state``). A
state is a state of ``query_sm`` (``DELIVERED``, ``UNDELIVERABLE``...) or a
receipt's stat word (``DELIVRD``, ``UNDELIV``...), in any case; ``ENROUTE``
and ids not asked about are ignored; ``error_code`` is an optional integer.

A final state reported is recorded (:func:`record_reports`) only for a
message of that connection still ``ENROUTE`` whose parts have all left
switchd: its parts take the state and error, the message its final state,
an event is published (the EndCallback follows) and nothing is refunded (a
part that left switchd stays charged, as with receipts). A message that
reached its final state meanwhile (a receipt came) keeps it.
"""

from __future__ import annotations

import datetime
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..api.webhooks import HttpRequest, signed_request
from ..smpp import dlr, pdu
from ..store.models import http_connections, services, sms_messages, sms_parts
from . import store

__all__ = [
    "StatusSurvey",
    "SurveyConnection",
    "SurveyError",
    "SurveyItem",
    "SurveyStatus",
    "build_survey_request",
    "load_survey_connections",
    "parse_survey_answer",
    "record_reports",
    "survey_candidates",
]

UTC = datetime.UTC
#: Largest answer read, in octets.
MAX_ANSWER = 1 << 20
#: Receipt stat words (SMPP 3.4 Appendix B) and their states.
STAT_WORDS = {word: dlr.STATE_NAMES[number] for number, word in pdu.MESSAGE_STATES.items() if number in dlr.STATE_NAMES}


class SurveyError(ValueError):
    """A customer's answer switchd cannot use; ``reason`` says what was wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SurveyConnection:
    """An HTTP connection polled for statuses, with what its requests need."""

    connection_id: int
    account_id: int
    url: str
    method: str = "POST"
    version: str = "V1"
    username: str | None = None
    password: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SurveyStatus:
    """One status the customer's system reported."""

    message_id: str
    state: str  # a state of dlr.STATE_NUMBERS
    error_code: int | None = None


@dataclass(frozen=True)
class SurveyItem:
    """A reported status to record, for the connection that reported it."""

    connection_id: int
    status: SurveyStatus
    now: datetime.datetime


# -- sans-IO: the request and the answer ---------------------------------------------------------


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def survey_fields(version: str, message_ids: list[str], now: float, request_id: str) -> dict[str, Any]:
    """The fields of a survey request in a callback version (V1, V2 or V4)."""
    if version == "V1":
        return {"type": "survey", "ids": ",".join(message_ids), "timestamp": int(now)}
    if version == "V4":
        return {"type": "sms.survey", "timestamp": _iso(now), "data": {"message_ids": list(message_ids)}}
    return {"event_id": request_id, "type": "survey", "message_ids": list(message_ids), "timestamp": _iso(now)}


def _query_pairs(fields: dict[str, Any]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for name, value in fields.items():
        if isinstance(value, dict):
            pairs += _query_pairs(value)
        elif isinstance(value, list):
            pairs.append((name, ",".join(str(item) for item in value)))
        else:
            pairs.append((name, str(value)))
    return pairs


def build_survey_request(
    connection: SurveyConnection, message_ids: list[str], now: float, request_id: str | None = None
) -> HttpRequest:
    """The HTTP request asking ``connection``'s system about ``message_ids`` (see the module docstring)."""
    if not message_ids:
        raise SurveyError("a survey asks about at least one message")
    request_id = request_id or "svy_" + secrets.token_hex(16)
    fields = survey_fields(connection.version, message_ids, now, request_id)
    return signed_request(method=connection.method, url=connection.url, version=connection.version,
                          headers={**connection.headers, "Accept": "application/json"},
                          password=connection.password, event_id=request_id, fields=fields, now=now,
                          pairs=_query_pairs)


def parse_state(value: Any) -> str:
    """A reported state as one of switchd's states; :class:`SurveyError` if it is none."""
    if not isinstance(value, str) or not value.strip():
        raise SurveyError(f"a status needs a state, got {value!r}")
    word = value.strip().upper()
    if word in dlr.STATE_NUMBERS:
        return word
    if word in STAT_WORDS:
        return STAT_WORDS[word]
    raise SurveyError(f"unknown state {value!r}")


def _entries(document: Any) -> list[Any]:
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        if isinstance(document.get("statuses"), list):
            return document["statuses"]
        data = document.get("data")
        if isinstance(data, dict) and isinstance(data.get("statuses"), list):
            return data["statuses"]
    raise SurveyError("the answer has no list of statuses (\"statuses\", \"data.statuses\" or a list)")


def parse_survey_answer(body: bytes, asked: set[str] | frozenset[str]) -> list[SurveyStatus]:
    """The final statuses in a customer's answer about the ids ``asked``.

    ``ENROUTE`` and ids not asked about are left out (a system may answer
    about more than it was asked; it decides nothing else). Raises
    :class:`SurveyError` for a body that is not such JSON, or an entry
    without an id or with an unknown state or a bad error code.
    """
    if len(body) > MAX_ANSWER:
        raise SurveyError(f"the answer is longer than {MAX_ANSWER} octets")
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise SurveyError(f"the answer is not JSON: {error}") from None
    statuses: dict[str, SurveyStatus] = {}
    for index, entry in enumerate(_entries(document)):
        if not isinstance(entry, dict):
            raise SurveyError(f"status {index} is not an object")
        message_id = entry.get("message_id", entry.get("id"))
        if not isinstance(message_id, str) or not message_id:
            raise SurveyError(f"status {index} has no message_id")
        state = parse_state(entry.get("state", entry.get("status")))
        error = entry.get("error_code")
        if error == "":
            error = None
        if error is not None and (isinstance(error, bool) or not isinstance(error, int) or not 0 <= error < 1 << 31):
            raise SurveyError(f"status {index}: error_code must be a non-negative integer, got {error!r}")
        if state == "ENROUTE" or message_id not in asked:
            continue
        statuses[message_id] = SurveyStatus(message_id, state, error)
    return list(statuses.values())


# -- storage ----------------------------------------------------------------------------------

_CONNECTIONS = (
    select(
        http_connections.c.id,
        services.c.account_id,
        http_connections.c.url,
        http_connections.c.transfer_method,
        http_connections.c.callback_version,
        http_connections.c.username,
        http_connections.c.password,
        http_connections.c.headers,
    )
    .join(services, services.c.id == http_connections.c.service_id)
    .where(http_connections.c.status_survey.is_(True), http_connections.c.url.is_not(None))
    .order_by(http_connections.c.id)
)

_UNDER_WAY = (
    select(sms_messages.c.id, sms_messages.c.message_id, sms_messages.c.created_at)
    .where(
        # (account_id, id) is indexed: the scan stays within the customer's messages.
        sms_messages.c.account_id == bindparam("account_id"),
        sms_messages.c.id > bindparam("after"),
        sms_messages.c.connection_id == bindparam("connection_id"),
        sms_messages.c.origin_kind == "http",
        sms_messages.c.direction == "mt",
        sms_messages.c.node == bindparam("node"),
        sms_messages.c.status == "ENROUTE",
        sms_messages.c.created_at >= bindparam("oldest", type_=sms_messages.c.created_at.type),
    )
    .order_by(sms_messages.c.id)
    .limit(bindparam("limit"))
)

_STILL_QUEUED = select(sms_parts.c.sms_message_id).where(
    sms_parts.c.sms_message_id.in_(bindparam("pks", expanding=True)), sms_parts.c.state == "queued"
)

_REPORTED = select(
    sms_messages.c.id, sms_messages.c.message_id, sms_messages.c.connection_id, sms_messages.c.status
).where(
    sms_messages.c.message_id.in_(bindparam("ids", expanding=True)),
    sms_messages.c.origin_kind == "http",
    sms_messages.c.direction == "mt",
)

_PART_STATES = select(sms_parts.c.id, sms_parts.c.sms_message_id, sms_parts.c.state).where(
    sms_parts.c.sms_message_id.in_(bindparam("pks", expanding=True))
)


def load_survey_connections(conn: Connection) -> list[SurveyConnection]:
    """The HTTP connections with the status survey on and a URL."""
    out = []
    for row in conn.execute(_CONNECTIONS):
        headers = row.headers if isinstance(row.headers, dict) else {}
        out.append(
            SurveyConnection(
                connection_id=row.id,
                account_id=row.account_id,
                url=row.url,
                method=(row.transfer_method or "POST").upper(),
                version=row.callback_version or "V1",
                username=row.username,
                password=row.password,
                headers={str(k): str(v) for k, v in headers.items()},
            )
        )
    return out


@dataclass(frozen=True)
class Candidates:
    """One page of a connection's messages under way."""

    message_ids: list[str]  # to ask about: every part has left switchd, old enough
    last_pk: int  # the page's last message (the cursor for the next page)
    first_pk: int | None  # the page's first message under way, to start the next round from
    complete: bool  # nothing under way after this page (or only too recent)


def survey_candidates(
    conn: Connection,
    connection: SurveyConnection,
    node: str,
    after: int,
    limit: int,
    oldest: datetime.datetime,
    newest: datetime.datetime,
) -> Candidates:
    """A page of ``connection``'s messages under way on ``node``, after message ``after``."""
    rows = conn.execute(
        _UNDER_WAY,
        {"account_id": connection.account_id, "after": after, "connection_id": connection.connection_id,
         "node": node, "oldest": oldest, "limit": limit},
    ).all()
    if not rows:
        return Candidates([], after, None, True)
    recent = [row for row in rows if row.created_at > newest]
    old_enough = [row for row in rows if row.created_at <= newest]
    queued = set()
    if old_enough:
        queued = set(conn.execute(_STILL_QUEUED, {"pks": [row.id for row in old_enough]}).scalars())
    ids = [row.message_id for row in old_enough if row.id not in queued]
    # Ids grow with time: a message too recent ends the round (the next one starts here).
    stop = recent[0].id if recent else None
    last = old_enough[-1].id if old_enough else after
    if stop is not None:
        last = min(last, stop - 1)
    return Candidates(ids, last, rows[0].id, bool(recent) or len(rows) < limit)


def record_reports(conn: Connection, items: list[SurveyItem]) -> list[store.Outcome]:
    """Record reported final states; one Outcome per item (empty when nothing changed).

    Only a message of the reporting connection, still ``ENROUTE``, none of
    whose parts is still queued in switchd, changes: its parts that left take
    the state (``store.finish_parts``, so the message is finished and its
    events and receipts come as for a receipt).
    """
    outcomes = [store.Outcome() for _ in items]
    if not items:
        return outcomes
    messages = {
        row.message_id: row
        for row in conn.execute(_REPORTED, {"ids": sorted({item.status.message_id for item in items})})
    }
    pks = sorted({row.id for row in messages.values()})
    parts: dict[int, list[Any]] = {}
    if pks:
        for row in conn.execute(_PART_STATES, {"pks": pks}):
            parts.setdefault(row.sms_message_id, []).append(row)
    results: list[store.PartResult] = []
    owners: list[int] = []
    done: set[int] = set()
    for index, item in enumerate(items):
        message = messages.get(item.status.message_id)
        if (
            message is None
            or message.connection_id != item.connection_id
            or message.status != "ENROUTE"
            or message.id in done
            or item.status.state not in dlr.FINAL_STATES
        ):
            continue
        states = [part.state for part in parts.get(message.id, [])]
        if not states or "queued" in states:
            continue
        done.add(message.id)
        for part in parts[message.id]:
            if part.state == "sent":
                results.append(store.PartResult(part.id, item.status.state, item.status.error_code))
                owners.append(index)
    if results:
        for owner, outcome in zip(owners, store.finish_parts(conn, results, items[-1].now)):
            outcomes[owner].extend(outcome)
    return outcomes


# -- the service ------------------------------------------------------------------------------


class StatusSurvey(Service):
    """Polls the customers' systems of HTTP connections with the status survey on.

    ``db`` is a ``Database``; ``http`` a treq-like client
    (``request(method, url, **kwargs)``); ``record(op, item)`` commits
    ``op`` for ``item`` with the engine's other writes and publishes the
    :class:`~switchd.sms.store.Outcome` it returns
    (``MessageEngine.apply_outcome``). Rounds never overlap: a round still
    running when the next is due is not doubled.
    """

    log = Logger()

    def __init__(
        self,
        db: Any,
        clock: IReactorTime,
        http: Any,
        record: Callable[[Callable[..., Any], Any], Deferred],
        *,
        node: str,
        registry: CollectorRegistry | None = None,
        interval: float = 60.0,
        min_age: float = 60.0,
        max_age: float = 48 * 3600.0,
        batch: int = 100,
        max_requests: int = 10,
        timeout: float = 10.0,
    ) -> None:
        if batch < 1 or max_requests < 1:
            raise ValueError("batch and max_requests must be at least 1")
        self.db = db
        self.clock = clock
        self.http = http
        self.record = record
        self.node = node
        self.interval = interval
        self.min_age = min_age
        self.max_age = max_age
        self.batch = batch
        self.max_requests = max_requests
        self.timeout = timeout
        # Per connection: where the round goes on, and where the next round starts.
        self._cursor: dict[int, int] = {}
        self._floor: dict[int, int] = {}
        self._next_floor: dict[int, int | None] = {}
        self._loop: LoopingCall | None = None
        self._running: Deferred | None = None
        self._stopping = False
        registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter("switchd_sms_survey_requests", "Status survey requests by outcome", ["outcome"],
                                registry=registry)
        self.statuses = Counter("switchd_sms_survey_statuses", "Statuses reported by status surveys",
                                ["outcome"], registry=registry)

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self) -> Deferred | None:
        super().stopService()
        self._stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return self._running  # a round under way ends after its current request

    def tick(self) -> None:
        """Start a round unless one is running."""
        if self._running is not None:
            return
        d = ensureDeferred(self.round())
        self._running = d

        def finished(result: Any) -> Any:
            self._running = None
            return result

        d.addBoth(finished)
        d.addErrback(lambda f: self.log.failure("status survey round failed", f))

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), UTC)

    async def round(self) -> int:
        """One round over every connection; returns how many statuses were recorded."""
        connections = await self.db.run(load_survey_connections)
        known = {c.connection_id for c in connections}
        for mapping in (self._cursor, self._floor, self._next_floor):
            for connection_id in list(mapping):
                if connection_id not in known:
                    del mapping[connection_id]
        recorded = 0
        for connection in connections:
            if self._stopping:
                break
            recorded += await self._survey(connection)
        return recorded

    async def _survey(self, connection: SurveyConnection) -> int:
        key = connection.connection_id
        recorded = 0
        for _ in range(self.max_requests):
            if self._stopping:
                break
            now = self.now()
            after = self._cursor.get(key, self._floor.get(key, 0))
            page = await self.db.run(
                survey_candidates,
                connection,
                self.node,
                after,
                self.batch,
                now - datetime.timedelta(seconds=self.max_age),
                now - datetime.timedelta(seconds=self.min_age),
            )
            if key not in self._next_floor or self._next_floor[key] is None:
                self._next_floor[key] = page.first_pk
            self._cursor[key] = page.last_pk
            if page.message_ids:
                recorded += await self._ask(connection, page.message_ids)
            if page.complete:
                # The next round starts at the oldest message under way seen in this one.
                floor = self._next_floor.pop(key, None)
                self._floor[key] = floor - 1 if floor is not None else page.last_pk
                self._cursor.pop(key, None)
                break
        return recorded

    async def _ask(self, connection: SurveyConnection, message_ids: list[str]) -> int:
        request = build_survey_request(connection, message_ids, self.clock.seconds())
        kwargs: dict[str, Any] = {"headers": request.headers, "allow_redirects": False}
        if request.body is not None:
            kwargs["data"] = request.body
        if connection.username:
            kwargs["auth"] = (connection.username, connection.password or "")
        try:
            d = self.http.request(request.method, request.url, **kwargs)
            d.addTimeout(self.timeout, self.clock)
            response = await d
            body_d = response.content()
            body_d.addTimeout(self.timeout, self.clock)
            body = await body_d
            if not 200 <= response.code < 300:
                raise SurveyError(f"HTTP {response.code}")
            statuses = parse_survey_answer(body, frozenset(message_ids))
        except Exception as error:  # noqa: BLE001 - any failure of a customer's system is logged and counted
            self.requests.labels("failed").inc()
            reason = error.reason if isinstance(error, SurveyError) else type(error).__name__
            self.log.info(
                "status survey of HTTP connection {connection} failed: {reason}",
                connection=connection.connection_id,
                reason=reason,
            )
            return 0
        self.requests.labels("answered").inc()
        now = self.now()
        # Submitted together, they are recorded in one call of one commit.
        outcomes = await gatherResults(
            [self.record(record_reports, SurveyItem(connection.connection_id, status, now)) for status in statuses],
            consumeErrors=True,
        )
        recorded = sum(1 for outcome in outcomes if outcome.events)
        self.statuses.labels("recorded").inc(recorded)
        self.statuses.labels("unchanged").inc(len(outcomes) - recorded)
        return recorded
