"""The HTTP SMS API: ``POST /v1/sms`` sends, ``GET /v1/sms/{id}`` tells the state.

Callers authenticate with the API key of an HTTP connection (the key issued
when the connection was created, ``http_connections.api_key_id``); the
message belongs to that connection, its service and account, exactly as an
SMPP submit belongs to its SMPP connection.  Any other key gets 403.

The request body (JSON)::

    {"from": "ACME", "to": "+447700900001", "text": "Hello",
     "data_coding": 0, "registered_delivery": 1, "client_reference": "order-42"}

``from``, ``to`` and ``text`` are required.  ``to`` is digits with an
optional leading ``+`` (dropped); ``from`` is the same or an alphanumeric
sender of up to 11 characters.  Without ``data_coding`` the text goes in the
GSM 7-bit alphabet when it can, else UCS2; with it, the text must be
representable in that coding (binary codings carry no text: 422).
``client_reference`` is echoed in status callbacks.

A 201 answer means the message is stored (the engine committed it):
``{"id": ..., "parts": ..., "client_reference": ...}``.  A refusal is an
RFC 9457 problem with the engine's HTTP status and two extra members:
``smpp_status`` (the SMPP command_status name an SMPP customer would get)
and ``reason``.

Idempotency-Key works as for the other creates, with one difference made
necessary by the engine committing on its own: the key is reserved (a row
with status 0) *before* the message is submitted and completed after, so two
requests with one key can never send two messages, even on two nodes; the
second one, while the first is still running, gets 409.  A refused message
frees its key, so the retry is tried again.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from ..smpp import gsm
from ..smpp.pdu import status_name
from ..store.models import http_connections, idempotency_keys, services
from .auth import Principal
from .problem import Problem, invalid

__all__ = ["SmsProblem", "SmsRoutes", "parse_message"]

NUMBER = re.compile(r"^\+?[0-9]{1,20}$")
ALPHANUMERIC = re.compile(r"^[A-Za-z0-9 ._&-]{1,11}$")
MESSAGE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_TEXT = 16384
MAX_REFERENCE = 64
FIELDS = ("from", "to", "text", "data_coding", "registered_delivery", "client_reference")


def _text_codings() -> tuple[int, ...]:
    codings = []
    for value in range(256):
        try:
            if gsm.alphabet(value) != gsm.BINARY:
                codings.append(value)
        except gsm.CodingError:
            continue
    return tuple(codings)


#: data_coding values that carry text (the others are binary or unknown).
TEXT_CODINGS = _text_codings()


class SmsProblem(Problem):
    """A refusal by the message engine, with the SMPP status it stands for."""

    def __init__(self, status: int, detail: str, smpp_status: int, **kw: Any) -> None:
        super().__init__(status, detail, **kw)
        self.smpp_status = status_name(smpp_status)

    def body(self, instance: str | None = None) -> dict[str, Any]:
        out = super().body(instance)
        out["smpp_status"] = self.smpp_status
        out["reason"] = self.detail
        return out


@dataclass(frozen=True)
class Message:
    """A validated request body."""

    source: str
    destination: str
    text: str
    content: bytes
    data_coding: int
    registered_delivery: int
    client_reference: str | None


def _integer(body: dict, name: str, low: int, high: int, errors: list) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        errors.append({"field": name, "message": f"must be an integer from {low} to {high}"})
        return None
    return value


def parse_message(body: Any) -> Message:
    """The message of a ``POST /v1/sms`` body, or a 422 problem naming every bad field."""
    if not isinstance(body, dict):
        raise invalid([{"field": "(body)", "message": "must be a JSON object"}])
    errors: list[dict[str, str]] = []
    for name in body:
        if name not in FIELDS:
            errors.append({"field": str(name), "message": "unknown field"})
    for name in ("from", "to", "text"):
        if name not in body:
            errors.append({"field": name, "message": "is required"})
        elif not isinstance(body[name], str):
            errors.append({"field": name, "message": "must be a string"})
    to, source, text = body.get("to"), body.get("from"), body.get("text")
    if isinstance(to, str) and not NUMBER.match(to):
        errors.append({"field": "to", "message": "must be 1 to 20 digits, optionally after a '+'"})
    if isinstance(source, str) and not (NUMBER.match(source) or ALPHANUMERIC.match(source)):
        errors.append({"field": "from", "message": "must be a number (1 to 20 digits, optional '+') or "
                                                   "1 to 11 letters, digits, spaces or ._&-"})
    if isinstance(text, str) and not 1 <= len(text) <= MAX_TEXT:
        errors.append({"field": "text", "message": f"must have 1 to {MAX_TEXT} characters"})
    data_coding = _integer(body, "data_coding", 0, 255, errors)
    if data_coding is not None and data_coding not in TEXT_CODINGS:
        errors.append({"field": "data_coding", "message": f"{data_coding} is not a text coding switchd knows; "
                                                          "binary messages go over SMPP"})
        data_coding = None
    registered_delivery = _integer(body, "registered_delivery", 0, 31, errors)
    reference = body.get("client_reference")
    if reference is not None and (
        not isinstance(reference, str) or not 1 <= len(reference) <= MAX_REFERENCE or not reference.isprintable()
    ):
        errors.append({"field": "client_reference", "message": f"must be 1 to {MAX_REFERENCE} printable characters"})
    content = b""
    if not errors:
        content, data_coding = _encode(text, data_coding, errors)
    if errors:
        raise invalid(errors)
    assert isinstance(to, str) and isinstance(source, str) and data_coding is not None
    return Message(
        source=source.removeprefix("+"),
        destination=to.removeprefix("+"),
        text=text,
        content=content,
        data_coding=data_coding,
        registered_delivery=registered_delivery or 0,
        client_reference=reference,
    )


def _encode(text: str, data_coding: int | None, errors: list) -> tuple[bytes, int | None]:
    """The octets of ``text`` in ``data_coding`` (chosen when None); problems go to ``errors``."""
    try:
        if data_coding is None:
            data_coding, content = gsm.choose_coding(text)
            return content, data_coding
        return gsm.encode(data_coding, text), data_coding
    except gsm.CodingError as error:
        errors.append({"field": "text", "message": error.reason})
        return b"", None


# -- idempotency (reserve, then complete) ---------------------------------------------


def _reserve(conn: Connection, key_id: int, key: str, digest: str, path: str, now) -> tuple[int, Any] | None:
    """None when the key is now ours; the stored answer when it was used before."""
    row = conn.execute(
        select(idempotency_keys.c.request_hash, idempotency_keys.c.status, idempotency_keys.c.response).where(
            idempotency_keys.c.api_key_id == key_id, idempotency_keys.c.key == key
        )
    ).first()
    if row is not None:
        if row.request_hash != digest:
            raise Problem(409, "this Idempotency-Key was used for a different request", title="Idempotency-Key reused")
        if row.status == 0:
            raise Problem(409, "a request with this Idempotency-Key is still being processed; retry later",
                          title="Idempotency-Key in use")
        return row.status, json.loads(row.response)
    conn.execute(
        insert(idempotency_keys).values(api_key_id=key_id, key=key, method="POST", path=path[:500],
                                        request_hash=digest, status=0, response="", created_at=now)
    )
    return None


def _complete(conn: Connection, key_id: int, key: str, status: int, result: dict) -> None:
    conn.execute(
        update(idempotency_keys)
        .where(idempotency_keys.c.api_key_id == key_id, idempotency_keys.c.key == key)
        .values(status=status, response=json.dumps(result))
    )


def _release(conn: Connection, key_id: int, key: str) -> None:
    conn.execute(
        delete(idempotency_keys).where(
            idempotency_keys.c.api_key_id == key_id, idempotency_keys.c.key == key, idempotency_keys.c.status == 0
        )
    )


# -- connections of API keys -----------------------------------------------------------


def origin_of_key(conn: Connection, key_id: int) -> tuple[int, int, int] | None:
    """(connection id, service id, account id) of the HTTP connection a key belongs to."""
    row = conn.execute(
        select(http_connections.c.id, http_connections.c.service_id, services.c.account_id)
        .select_from(http_connections.join(services, http_connections.c.service_id == services.c.id))
        .where(http_connections.c.api_key_id == key_id)
    ).first()
    return None if row is None else (row.id, row.service_id, row.account_id)


def _iso(when: datetime.datetime | None) -> str | None:
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.isoformat().replace("+00:00", "Z")


class SmsRoutes:
    """The SMS routes of a :class:`~switchd.api.app.ProvisioningAPI`.

    ``api`` gives the Klein app, the request plumbing (authentication,
    problems, metrics, body parsing), the database and the clock;
    ``engine`` is the :class:`~switchd.sms.engine.MessageEngine` (``None``:
    SMS is not running on this node, every call is 503).
    """

    log = Logger()

    def __init__(self, api: Any, engine: Any, *, cache_seconds: float = 5.0) -> None:
        self.api = api
        self.engine = engine
        self.cache_seconds = cache_seconds
        self._origins: dict[int, tuple[float, Any]] = {}

    def mount(self) -> None:
        route, handler = self.api.app.route, self.api._handler
        route("/v1/sms", methods=["POST"], endpoint="sendSms")(handler("/v1/sms", self.send, settings=False))
        route("/v1/sms/<string:id>", methods=["GET"], endpoint="getSms")(handler("/v1/sms/{id}", self.get))

    # -- who is sending ---------------------------------------------------------------------

    async def origin(self, principal: Principal):
        """The MessageOrigin of an HTTP connection's key, or 403."""
        from ..sms.engine import MessageOrigin

        now = self.api.clock.seconds()
        cached = self._origins.get(principal.key_id)
        if cached is not None and cached[0] > now:
            found = cached[1]
        else:
            row = await self.api.db.run(origin_of_key, principal.key_id)
            found = None if row is None else MessageOrigin(kind="http", connection_id=row[0], service_id=row[1],
                                                           account_id=row[2])
            if self.cache_seconds > 0:
                if len(self._origins) > 10000:
                    self._origins.clear()
                self._origins[principal.key_id] = (now + self.cache_seconds, found)
        if found is None:
            raise Problem(403, "this API key is not the key of an HTTP connection; send SMS with the key "
                               "issued when the connection was created")
        return found

    def _engine(self) -> Any:
        if self.engine is None:
            raise Problem(503, "SMS is not running on this node")
        return self.engine

    # -- routes -----------------------------------------------------------------------------

    async def send(self, request: IRequest, principal: Principal) -> tuple[int, dict]:
        from ..sms.engine import MessageRefused, Submission

        engine = self._engine()
        body = self.api._body(request)
        origin = await self.origin(principal)  # who may send comes before what is sent
        message = parse_message(body)

        async def submit() -> tuple[int, dict]:
            submission = Submission(
                source=message.source,
                destination=message.destination,
                content=message.content,
                data_coding=message.data_coding,
                registered_delivery=message.registered_delivery,
                client_reference=message.client_reference,
            )
            try:
                accepted = await engine.submit(origin, submission)
            except MessageRefused as refusal:
                headers = {"Retry-After": "1"} if refusal.http_status in (429, 503) else {}
                raise SmsProblem(refusal.http_status, refusal.reason, refusal.status, headers=headers) from None
            return 201, {"id": accepted.message_id, "parts": accepted.parts,
                         "client_reference": message.client_reference}

        status, result = await self._once(request, principal, body, submit)
        request.setHeader("Location", f"/v1/sms/{result['id']}")
        return status, result

    async def get(self, request: IRequest, principal: Principal, id: str) -> tuple[int, dict]:
        engine = self._engine()
        if not MESSAGE_ID.match(id):
            raise Problem(404, "no such message")
        origin = await self.origin(principal)
        info = await engine.query(origin, id)
        if info is None:
            raise Problem(404, "no such message")
        return 200, {
            "id": info.message_id,
            "state": info.state,
            "parts": info.parts,
            "error_code": info.error_code,
            "from": info.source,
            "to": info.destination,
            "submitted_at": _iso(info.submitted_at),
            "done_at": _iso(info.done_at),
        }

    # -- Idempotency-Key --------------------------------------------------------------------

    async def _once(
        self, request: IRequest, principal: Principal, body: Any, work: Callable[[], Awaitable[tuple[int, dict]]]
    ) -> tuple[int, dict]:
        """Run ``work`` (the submit) at most once per Idempotency-Key of this API key.

        The submit is shielded from cancellation: a client that hangs up does
        not stop a message half-way, and its key is completed all the same.
        """
        raw = request.requestHeaders.getRawHeaders(b"Idempotency-Key")
        if not raw:
            return await _shielded(ensureDeferred(work()))
        key = raw[-1].decode("latin-1")
        if not (1 <= len(key) <= 255) or not all("!" <= c <= "~" for c in key):
            raise invalid([{"field": "Idempotency-Key", "message": "must be 1 to 255 visible ASCII characters"}])
        path = request.path.decode("utf-8", "replace")
        digest = hashlib.sha256(
            request.method + b" " + request.path + b"\n" + json.dumps(body, sort_keys=True).encode()
        ).hexdigest()
        db, key_id = self.api.db, principal.key_id
        try:
            previous = await db.run(_reserve, key_id, key, digest, path, self.api.now())
        except IntegrityError:
            # Another request (maybe on another node) reserved it a moment ago.
            previous = await db.run(_reserve, key_id, key, digest, path, self.api.now())
        if previous is not None:
            request.setHeader("Idempotent-Replayed", "true")
            return previous
        return await _shielded(ensureDeferred(self._reserved(work, key_id, key)))

    async def _reserved(self, work: Callable[[], Awaitable[tuple[int, dict]]], key_id: int, key: str
                        ) -> tuple[int, dict]:
        db = self.api.db
        try:
            status, result = await work()
        except Exception:
            # Refused (nothing stored): the key is free for the retry.
            await db.run(_release, key_id, key)
            raise
        try:
            await db.run(_complete, key_id, key, status, result)
        except Exception:  # noqa: BLE001 - the message is stored either way
            # The message is stored and goes out: answer so; a retry with this key gets 409.
            self.log.failure("could not record Idempotency-Key for SMS {id}", id=result.get("id"))
        return status, result


def _shielded(inner: Deferred) -> Deferred:
    """A Deferred with ``inner``'s result whose cancellation leaves ``inner`` running."""
    outer: Deferred = Deferred()

    def relay(result: Any) -> None:
        # Returning None consumes a failure nobody waits for any more (the caller went away).
        if outer.called:
            return
        if isinstance(result, Failure):
            outer.errback(result)
        else:
            outer.callback(result)

    inner.addBoth(relay)
    return outer
