"""The provisioning REST API as a Klein application.

Handlers are thin: authenticate, parse and validate, run one transaction in
the database pool, render JSON. Errors are RFC 9457 problems; nothing the
client sends can make the handler raise past this module.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from typing import Any, Callable

import yaml
from klein import Klein
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import delete, insert, select, text
from sqlalchemy.exc import IntegrityError
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from .. import __version__
from ..media.prompts import PromptError
from ..billing import ledger as ledger_mod
from ..store.db import Database
from ..store.models import idempotency_keys, ledger
from . import crud
from .auth import KeyCache, Principal, lookup
from .openapi import document
from .problem import PROBLEM_JSON, Problem, invalid
from .resources import ACCOUNTS, COLLECTIONS, TRANSACTIONS
from .schema import WriteContext, coerce, render, validate
from .sms import SmsRoutes

JSON = "application/json"
MAX_ID = 2**63 - 1


def header(request: IRequest, name: bytes) -> str | None:
    """A request header as text; bytes that are not UTF-8 cannot crash us."""
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    return values[-1].decode("latin-1")


class ApiMetrics:
    """Request counters and latencies, in the node's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "switchd_api_requests",
            "API requests by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "switchd_api_request_seconds",
            "API request latency by route template",
            ["route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        )


class ProvisioningAPI:
    """``/v1`` provisioning, ``/health``, ``/metrics`` and ``/openapi.yaml``."""

    log = Logger()

    def __init__(
        self,
        db: Database,
        clock: IReactorTime,
        registry: CollectorRegistry,
        *,
        page_size: int = 100,
        max_body_bytes: int = 1 << 20,
        auth_cache_seconds: float = 5.0,
        sip_realm: str = "switchd",
        trunk_status: Callable[[int], dict[str, Any] | None] | None = None,
        calls: Any = None,
        call_registry: Any = None,
        messages: Any = None,
        recordings_dir: str | None = None,
        run_in_thread: Callable[[Callable[[], Any]], Deferred] | None = None,
    ) -> None:
        self.recordings_dir = recordings_dir
        self.run_in_thread = run_in_thread
        self.sip_realm = sip_realm
        self.trunk_status = trunk_status
        self.calls = calls
        self.call_registry = call_registry
        self.db = db
        self.clock = clock
        self.registry = registry
        self.page_size = page_size
        self.max_body_bytes = max_body_bytes
        self.keys = KeyCache(clock.seconds, auth_cache_seconds)
        #: Called after each successful write of settings through the API
        #: (``billing.authcache.AuthorizationCache.clear``).
        self.on_write: list[Callable[[], None]] = []
        self.metrics = ApiMetrics(registry)
        self.openapi_yaml = openapi_yaml()
        self.app = Klein()
        self.sms = SmsRoutes(self, messages, cache_seconds=auth_cache_seconds)
        self._routes()

    def resource(self):
        return self.app.resource()

    # -- plumbing -------------------------------------------------------------

    def _context(self, principal: Principal, now: datetime.datetime) -> WriteContext:
        return WriteContext(principal=principal, now=now, sip_realm=self.sip_realm)

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)

    def _handler(self, route: str, fn: Callable[..., Any], *, auth: bool = True, settings: bool = True):
        """Wrap an async handler: auth, problems, metrics, JSON rendering.

        ``settings``: a successful write through this route may change what
        calls are decided on (accounts, services, rates...): ``on_write`` hooks
        run after it. Routes that send (SMS, callbacks) pass False.
        """

        async def handle(request: IRequest, **kwargs: Any) -> bytes:
            started = time.perf_counter()
            try:
                if auth:
                    kwargs["principal"] = await self._authenticate(request)
                status, body = await fn(request, **kwargs)
                request.setResponseCode(status)
                if settings and status < 400 and request.method not in (b"GET", b"HEAD"):
                    for hook in self.on_write:
                        hook()
                if body is None:
                    result = b""
                elif isinstance(body, bytes):
                    result = body
                else:
                    request.setHeader("Content-Type", JSON)
                    result = json.dumps(body).encode("utf-8")
            except Problem as problem:
                result = self._problem(request, problem)
            except CancelledError:
                # The client went away mid-request: nothing to answer, nothing to log.
                self.metrics.requests.labels(route, request.method.decode(), "cancelled").inc()
                return b""
            except Exception:
                self.log.failure("API request {method} {path} failed", method=request.method, path=request.path)
                result = self._problem(request, Problem(500, "internal error; see the switchd log"))
            self.metrics.requests.labels(route, request.method.decode(), str(request.code)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            return result

        def entry(request: IRequest, **kwargs: Any) -> Deferred:
            return ensureDeferred(handle(request, **kwargs))

        return entry

    def _problem(self, request: IRequest, problem: Problem) -> bytes:
        request.setResponseCode(problem.status)
        request.setHeader("Content-Type", PROBLEM_JSON)
        for name, value in problem.headers.items():
            request.setHeader(name, value)
        return problem.render(request.path.decode("utf-8", "replace"))

    async def _authenticate(self, request: IRequest) -> Principal:
        scheme, _, key = (header(request, b"Authorization") or "").partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="switchd"'}
        if scheme.lower() != "bearer" or not key.strip():
            raise Problem(401, "send an API key as 'Authorization: Bearer <key>'", headers=challenge)
        key = key.strip()
        principal = self.keys.get(key)
        if principal is None:
            principal = await self.db.run(lookup, key)
            if principal is None:
                raise Problem(401, "the API key is not valid", headers=challenge)
            self.keys.put(key, principal)
        return principal

    def _body(self, request: IRequest) -> Any:
        length = header(request, b"Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            raise Problem(413, f"the body is larger than {self.max_body_bytes} bytes")
        raw = request.content.read(self.max_body_bytes + 1)
        if len(raw) > self.max_body_bytes:
            raise Problem(413, f"the body is larger than {self.max_body_bytes} bytes")
        ctype = (header(request, b"Content-Type") or "").split(";")[0].strip().lower()
        if ctype != JSON:
            raise Problem(415, "send the body as application/json")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise Problem(400, f"the body is not valid JSON: {e}") from None

    @staticmethod
    def _object_id(raw: str) -> int:
        if not raw.isdigit() or len(raw) > 19 or not 1 <= int(raw) <= MAX_ID:
            raise Problem(404, "no such object")
        return int(raw)

    def _query(self, request: IRequest, resource, extra_names: tuple[str, ...] = ()) -> tuple[dict, int, str | None, dict]:
        """Paging and filters from the query string, validated."""
        errors = []
        filters: dict[str, Any] = {}
        extra: dict[str, str] = {}
        limit = self.page_size
        cursor = None
        for raw_name, raw_values in request.args.items():
            name = raw_name.decode("utf-8", "replace")
            value = raw_values[-1].decode("utf-8", "replace")
            if name == "limit":
                if not value.isdigit() or not 1 <= int(value) <= 1000:
                    errors.append({"field": "limit", "message": "must be an integer from 1 to 1000"})
                else:
                    limit = int(value)
            elif name == "cursor":
                cursor = value
            elif name in extra_names:
                extra[name] = value
            elif name in resource.filters:
                f = resource.by_name[name]
                parsed: Any = value
                if f.type in ("integer", "id"):
                    parsed = int(value) if value.lstrip("-").isdigit() and len(value) < 20 else value
                elif f.type == "boolean":
                    parsed = {"true": True, "false": False}.get(value, value)
                checked, problem = coerce(f, parsed)
                if problem:
                    errors.append({"field": name, "message": problem})
                else:
                    filters[name] = checked
            else:
                errors.append({"field": name, "message": "unknown query parameter"})
        if errors:
            raise invalid(errors)
        return filters, limit, cursor, extra

    async def _idempotent(
        self,
        request: IRequest,
        principal: Principal,
        work: Callable[[Any], tuple[int, dict[str, Any]]],
        body: Any,
        once: tuple[str, ...] = (),
        resource=None,
    ) -> tuple[int, Any]:
        """Run a create at most once per Idempotency-Key of this API key."""
        key = header(request, b"Idempotency-Key")
        if key is None:
            return await self.db.run(work)
        if not (1 <= len(key) <= 255) or not all("!" <= c <= "~" for c in key):
            raise invalid([{"field": "Idempotency-Key", "message": "must be 1 to 255 visible ASCII characters"}])
        path = request.path.decode("utf-8", "replace")
        digest = hashlib.sha256(
            request.method + b" " + request.path + b"\n" + json.dumps(body, sort_keys=True).encode()
        ).hexdigest()
        now = self.now()

        def replay(conn):
            row = conn.execute(
                select(idempotency_keys).where(
                    idempotency_keys.c.api_key_id == principal.key_id,
                    idempotency_keys.c.key == key,
                )
            ).first()
            if row is None:
                return None
            if row.request_hash != digest:
                raise Problem(
                    409,
                    "this Idempotency-Key was used for a different request",
                    title="Idempotency-Key reused",
                )
            stored = json.loads(row.response)
            if resource is not None and row.status == 201 and not crud.still_exists(conn, resource, stored.get("id")):
                raise Problem(
                    409,
                    "the object created with this Idempotency-Key has been deleted since",
                    title="Idempotency-Key reused",
                )
            return row.status, stored, True

        def once_only(conn):
            previous = replay(conn)
            if previous is not None:
                return previous
            status, result = work(conn)
            stored = {k: (None if k in once else v) for k, v in result.items()}
            conn.execute(
                insert(idempotency_keys).values(
                    api_key_id=principal.key_id,
                    key=key,
                    method=request.method.decode(),
                    path=path[:500],
                    request_hash=digest,
                    status=status,
                    response=json.dumps(stored),
                    created_at=now,
                )
            )
            return status, result, False

        try:
            status, result, replayed = await self.db.run(once_only)
        except IntegrityError:
            # A concurrent request with the same key won the race: answer as it did.
            previous = await self.db.run(replay)
            if previous is None:
                raise
            status, result, replayed = previous
        if replayed:
            request.setHeader("Idempotent-Replayed", "true")
        return status, result

    # -- routes ---------------------------------------------------------------

    def _routes(self) -> None:
        app = self.app
        for resource in COLLECTIONS:
            self._collection_routes(resource)
        app.route("/v1/accounts/<string:id>/transactions", methods=["GET"], endpoint="listTransaction")(
            self._handler("/v1/accounts/{id}/transactions", self.list_transactions)
        )
        app.route("/v1/accounts/<string:id>/transactions", methods=["POST"], endpoint="createTransaction")(
            self._handler("/v1/accounts/{id}/transactions", self.create_transaction)
        )
        app.route("/v1/trunks/<string:id>/status", methods=["GET"], endpoint="trunkStatus")(
            self._handler("/v1/trunks/{id}/status", self.trunk_status_of)
        )
        app.route("/v1/calls", methods=["GET"], endpoint="listCall")(self._handler("/v1/calls", self.list_calls))
        app.route("/v1/calls/<string:id>", methods=["GET"], endpoint="getCall")(
            self._handler("/v1/calls/{id}", self.get_call)
        )
        app.route("/v1/calls/<string:id>", methods=["DELETE"], endpoint="deleteCall")(
            self._handler("/v1/calls/{id}", self.drop_call)
        )
        app.route("/v1/calls/<string:id>/playback", methods=["POST"], endpoint="startPlayback")(
            self._handler("/v1/calls/{id}/playback", self.start_playback)
        )
        app.route("/v1/calls/<string:id>/playback", methods=["DELETE"], endpoint="stopPlayback")(
            self._handler("/v1/calls/{id}/playback", self.stop_playback)
        )
        app.route("/v1/cdrs/<string:id>/recording", methods=["GET"], endpoint="getCdrRecording")(
            self._handler("/v1/cdrs/{id}/recording", self.cdr_recording)
        )
        self.sms.mount()
        app.route("/health", methods=["GET"], endpoint="health")(self._handler("/health", self.health, auth=False))
        app.route("/metrics", methods=["GET"], endpoint="metrics")(self._handler("/metrics", self.metrics_text, auth=False))
        app.route("/openapi.yaml", methods=["GET"], endpoint="openapi")(
            self._handler("/openapi.yaml", self.openapi, auth=False)
        )

        @app.handle_errors(NotFound)
        def not_found(request, failure):
            return self._problem(request, Problem(404, "no such resource"))

        @app.handle_errors(MethodNotAllowed)
        def not_allowed(request, failure):
            allowed = getattr(failure.value, "valid_methods", None) or []
            headers = {"Allow": ", ".join(allowed)} if allowed else {}
            return self._problem(request, Problem(405, "method not allowed here", headers=headers))

    def _collection_routes(self, resource) -> None:
        path = resource.path
        base = f"/v1/{path}"
        item = f"/v1/{path}/<string:id>"
        label = f"/v1/{path}/{{id}}"

        async def list_(request, principal):
            extra_names = ("from", "to") if path == "cdrs" else ()
            filters, limit, cursor, extra = self._query(request, resource, extra_names)
            clauses = self._time_range(resource, extra)
            return 200, await self.db.run(crud.list_, path, principal, filters, limit, cursor, clauses)

        async def get(request, principal, id):
            object_id = self._object_id(id)
            return 200, await self.db.run(crud.get, path, principal, object_id)

        async def create(request, principal):
            body = self._body(request)
            crud.allow_write(resource, principal, "create")
            values = validate(resource, body, creating=True, admin=principal.admin)
            now = self.now()

            def work(conn):
                return 201, crud.create(conn, path, self._context(principal, now), dict(values))

            once = tuple(f.name for f in resource.once_fields)
            status, result = await self._idempotent(request, principal, work, body, once, resource)
            if result.get("id") is not None:
                request.setHeader("Location", f"{base}/{result['id']}")
            return status, result

        async def patch(request, principal, id):
            object_id = self._object_id(id)
            body = self._body(request)
            crud.allow_write(resource, principal, "update")
            values = validate(resource, body, creating=False, admin=principal.admin)
            ctx = self._context(principal, self.now())
            return 200, await self.db.run(crud.modify, path, ctx, object_id, values)

        async def remove(request, principal, id):
            object_id = self._object_id(id)
            crud.allow_write(resource, principal, "delete")
            await self.db.run(crud.remove, path, principal, object_id, self.now())
            if resource.deleted_column is not None:
                self.keys.forget(object_id)
            return 204, None

        name = resource.name
        route = self.app.route
        route(base, methods=["GET"], endpoint=f"list{name}")(self._handler(base, list_))
        route(item, methods=["GET"], endpoint=f"get{name}")(self._handler(label, get))
        if resource.creatable:
            route(base, methods=["POST"], endpoint=f"create{name}")(self._handler(base, create))
        if resource.updatable:
            route(item, methods=["PATCH"], endpoint=f"update{name}")(self._handler(label, patch))
        if resource.deletable:
            route(item, methods=["DELETE"], endpoint=f"delete{name}")(self._handler(label, remove))

    @staticmethod
    def _time_range(resource, extra: dict[str, str]) -> list:
        clauses = []
        errors = []
        for name, value in extra.items():
            try:
                moment = datetime.datetime.fromisoformat(value)
            except ValueError:
                errors.append({"field": name, "message": "must be an ISO 8601 date-time"})
                continue
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=datetime.timezone.utc)
            column = resource.table.c.start_time
            clauses.append(column >= moment if name == "from" else column < moment)
        if errors:
            raise invalid(errors)
        return clauses

    # -- accounts' ledger -------------------------------------------------------

    async def list_transactions(self, request, principal, id):
        account_id = self._object_id(id)
        _, limit, cursor, _ = self._query(request, TRANSACTIONS)

        def work(conn):
            crud.get(conn, ACCOUNTS.path, principal, account_id)  # 404 if not visible
            return crud.list_(
                conn, TRANSACTIONS.path, principal, {}, limit, cursor,
                [ledger.c.account_id == account_id],
            )

        return 200, await self.db.run(work)

    async def create_transaction(self, request, principal, id):
        account_id = self._object_id(id)
        body = self._body(request)
        if not principal.admin:
            raise Problem(403, "only an admin key moves money")
        values = validate(TRANSACTIONS, body, creating=True, admin=True)
        now = self.now()

        def work(conn):
            crud.get(conn, ACCOUNTS.path, principal, account_id)
            try:
                movement = ledger_mod.book(
                    conn,
                    account_id,
                    values["kind"],
                    values["amount"],
                    now,
                    reference=values.get("reference"),
                    description=values.get("description"),
                )
            except ledger_mod.BalanceRangeError as e:
                raise Problem(409, str(e)) from None
            except ledger_mod.LedgerError as e:
                raise invalid([{"field": "amount", "message": str(e)}]) from None
            row = conn.execute(select(ledger).where(ledger.c.id == movement.id)).one()
            return (200 if movement.replayed else 201), render(TRANSACTIONS, row)

        return await self._idempotent(request, principal, work, body)

    async def trunk_status_of(self, request, principal, id):
        trunk_id = self._object_id(id)
        await self.db.run(crud.get, "trunks", principal, trunk_id)  # 404 / 403 as for the trunk
        live = self.trunk_status(trunk_id) if self.trunk_status is not None else None
        if live is None:
            live = {"trunk_id": trunk_id, "registrations": {}, "qualify": None}
        return 200, live

    # -- active calls -------------------------------------------------------------

    async def _visible_accounts(self, principal: Principal) -> set[int] | None:
        """None for admins (everything), else the caller's account ids."""
        if principal.admin:
            return None
        page = await self.db.run(crud.list_, ACCOUNTS.path, principal, {}, 1000, None)
        return {a["id"] for a in page["items"]}

    def _calls_now(self) -> list:
        return self.call_registry.active() if self.call_registry is not None else []

    async def list_calls(self, request, principal):
        """Calls up on this node, a page at a time in call id order (``limit``, ``cursor``)."""
        errors, filters = [], {}
        limit, cursor = self.page_size, None
        for raw_name, raw_values in request.args.items():
            name = raw_name.decode("utf-8", "replace")
            value = raw_values[-1].decode("utf-8", "replace")
            if name in ("account_id", "trunk_id"):
                if not value.isdigit() or len(value) > 19 or not 1 <= int(value) <= MAX_ID:
                    errors.append({"field": name, "message": f"must be an integer from 1 to {MAX_ID}"})
                else:
                    filters[name] = int(value)
            elif name == "limit":
                if not value.isdigit() or not 1 <= int(value) <= 1000:
                    errors.append({"field": "limit", "message": "must be an integer from 1 to 1000"})
                else:
                    limit = int(value)
            elif name == "cursor":
                cursor = value
            else:
                errors.append({"field": name, "message": "unknown query parameter"})
        if errors:
            raise invalid(errors)
        visible = await self._visible_accounts(principal)
        calls = sorted(
            (call for call in self._calls_now()
             if (visible is None or call.account_id in visible)
             and (cursor is None or call.id > cursor)
             and all(getattr(call, k) == v for k, v in filters.items())),
            key=lambda call: call.id,
        )
        page = calls[:limit]
        next_cursor = page[-1].id if len(calls) > limit else None
        return 200, {"items": [call.summary() for call in page], "next_cursor": next_cursor}

    async def _find_call(self, principal, call_id: str):
        visible = await self._visible_accounts(principal)
        for call in self._calls_now():
            if call.id == call_id and (visible is None or call.account_id in visible):
                return call
        raise Problem(404, "no such active call")

    async def get_call(self, request, principal, id):
        return 200, (await self._find_call(principal, id)).summary()

    async def drop_call(self, request, principal, id):
        call = await self._find_call(principal, id)
        if self.calls is None or not self.calls.hangup(call.id, "api"):
            raise Problem(404, "no such active call")
        return 204, None

    def _call_media(self, call_id: str):
        media = self.calls.media_of(call_id) if self.calls is not None else None
        if media is None or media.closed:
            raise Problem(409, "the call is not answered or its media is not relayed through switchd")
        return media

    async def start_playback(self, request, principal, id):
        """Play an announcement or a spoken text to one leg of an answered call."""
        call = await self._find_call(principal, id)
        body = self._body(request)
        errors = []
        if not isinstance(body, dict):
            raise invalid([{"field": "", "message": "expected a JSON object"}])
        unknown = set(body) - {"leg", "announcement", "text", "language", "interruptible"}
        errors += [{"field": name, "message": "unknown field"} for name in sorted(unknown)]
        leg = body.get("leg")
        if leg not in ("caller", "callee"):
            errors.append({"field": "leg", "message": "must be caller or callee"})
        announcement, text = body.get("announcement"), body.get("text")
        if (announcement is None) == (text is None):
            errors.append({"field": "announcement", "message": "give exactly one of announcement and text"})
        if announcement is not None and not (isinstance(announcement, str) and len(announcement) == 8
                                             and announcement.isdigit()):
            errors.append({"field": "announcement", "message": "must be an 8-digit announcement id"})
        if text is not None and not (isinstance(text, str) and 0 < len(text.strip()) <= 1000):
            errors.append({"field": "text", "message": "must be 1 to 1000 characters"})
        language = body.get("language", "en")
        if language not in ("en", "es", "fr", "vi", "zh"):
            errors.append({"field": "language", "message": "must be one of en, es, fr, vi, zh"})
        interruptible = body.get("interruptible", True)
        if not isinstance(interruptible, bool):
            errors.append({"field": "interruptible", "message": "must be a boolean"})
        if errors:
            raise invalid(errors)
        media = self._call_media(call.id)
        prompts = media.manager.prompts
        if prompts is None:
            raise Problem(409, "prompts are not available on this node")
        try:
            if announcement is not None:
                prompt = await prompts.announcement(announcement, language)
            else:
                prompt = await prompts.speak(text, language)
        except PromptError as error:
            raise Problem(422, str(error)) from None
        side = "a" if leg == "caller" else "b"
        try:
            played = media.play(side, [prompt], interruptible=interruptible)
        except ValueError as error:
            raise Problem(409, str(error)) from None
        played.addCallback(lambda result: self.log.info(
            "call {call}: playback to the {leg} {result}", call=call.id, leg=leg, result=result))
        played.addErrback(lambda f: self.log.failure("call {call}: playback failed", f, call=call.id))
        return 202, {"call_id": call.id, "leg": leg, "seconds": round(prompt.duration, 2)}

    async def stop_playback(self, request, principal, id):
        call = await self._find_call(principal, id)
        leg = request.args.get(b"leg", [b""])[-1].decode("utf-8", "replace") or None
        if leg not in (None, "caller", "callee"):
            raise invalid([{"field": "leg", "message": "must be caller or callee"}])
        media = self._call_media(call.id)
        side = None if leg is None else ("a" if leg == "caller" else "b")
        if not media.stop_playing(side):
            raise Problem(404, "nothing is playing")
        return 204, None

    async def cdr_recording(self, request, principal, id):
        """The call's WAV recording, streamed in chunks read off the reactor thread."""
        cdr = await self.db.run(crud.get, "cdrs", principal, self._object_id(id))  # 404 if not the caller's
        name = cdr.get("recording")
        if not name or self.recordings_dir is None or self.run_in_thread is None:
            raise Problem(404, "this call was not recorded")
        root = os.path.realpath(self.recordings_dir)
        path = os.path.realpath(os.path.join(root, name))
        if not path.startswith(root + os.sep):
            raise Problem(404, "this call was not recorded")
        try:
            handle = await self.run_in_thread(lambda: open(path, "rb"))  # noqa: SIM115 - closed below
        except OSError:
            raise Problem(404, "the recording file is no longer there") from None
        try:
            size = os.fstat(handle.fileno()).st_size
            request.setHeader("Content-Type", "audio/wav")
            request.setHeader("Content-Length", str(size))
            request.setHeader("Content-Disposition", f'attachment; filename="{os.path.basename(path)}"')
            while True:
                chunk = await self.run_in_thread(lambda: handle.read(256 * 1024))
                if not chunk:
                    break
                request.write(chunk)
        finally:
            self.run_in_thread(handle.close)
        return 200, b""

    # -- operations -----------------------------------------------------------

    async def health(self, request):
        try:
            await self.db.run(lambda conn: conn.execute(text("SELECT 1")).scalar())
        except Exception as e:
            raise Problem(503, f"the database is not reachable: {type(e).__name__}") from None
        return 200, {"status": "ok", "database": "ok", "version": __version__}

    async def metrics_text(self, request):
        request.setHeader("Content-Type", CONTENT_TYPE_LATEST)
        return 200, generate_latest(self.registry)

    async def openapi(self, request):
        request.setHeader("Content-Type", "application/yaml")
        return 200, self.openapi_yaml


class _PlainDumper(yaml.SafeDumper):
    """YAML without anchors and aliases: easier for people and tools to read."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def openapi_yaml() -> bytes:
    return yaml.dump(document(), Dumper=_PlainDumper, sort_keys=False, allow_unicode=True).encode("utf-8")


def expire_idempotency_keys(conn, before: datetime.datetime) -> int:
    """Forget Idempotency-Keys older than ``before``; returns how many."""
    return conn.execute(delete(idempotency_keys).where(idempotency_keys.c.created_at < before)).rowcount
