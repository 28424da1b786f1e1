"""Click-to-dial over HTTP: the four operations of the seed's interface in REST form.

* ``GET /v1/callbacks/support?service_id=N``: may this service place callbacks?
* ``POST /v1/callbacks``: call A, then B, and bridge them (``Idempotency-Key`` makes a
  retried create return the first callback instead of calling twice);
* ``GET /v1/callbacks/{id}`` and ``GET /v1/callbacks/{id}/events``: its state and steps;
* ``DELETE /v1/callbacks/{id}``: drop it (both legs end).

The paying service must belong to the caller's customer (admins may name any);
the callback itself runs in :mod:`switchd.core.callback`. With ``status_url``,
each step is POSTed there as JSON (retried with backoff, never blocking).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Callable

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from twisted.logger import Logger
from werkzeug.routing import BaseConverter

from ..core.callback import CallbackRefused, CallbackRequest, CallbackStateChanged
from ..store.models import accounts, customers, idempotency_keys, numbers, services
from .problem import Problem, invalid

NUMBER = re.compile(r"^\+?[0-9]{1,31}$")
ANNOUNCEMENT = re.compile(r"^[0-9]{8}$")
FIELDS = {"service_id", "a", "b", "max_seconds", "caller_id", "caller_id_b", "announcement_a",
          "announcement_b", "digits_b", "language", "ivr", "status_url"}
MAX_SECONDS = 86400


def service_state(conn, service_id: int, customer_id: int | None) -> dict[str, Any] | None:
    """The service, its account and customer as the support check needs them (None: not visible)."""
    row = conn.execute(
        select(services.c.id, services.c.status, services.c.routing_group_id, accounts.c.id.label("account_id"),
               accounts.c.status.label("account_status"), customers.c.id.label("customer_id"),
               customers.c.status.label("customer_status"))
        .join(accounts, accounts.c.id == services.c.account_id)
        .join(customers, customers.c.id == accounts.c.customer_id)
        .where(services.c.id == service_id)
    ).first()
    if row is None or (customer_id is not None and row.customer_id != customer_id):
        return None
    return dict(row._mapping)


def _integer(value: Any) -> int | None:
    """A JSON integer (7606.0 is one, as JSON Schema says); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


class HexId(BaseConverter):
    regex = "[0-9a-f]{1,64}"


def access_number_visible(conn, number: str, customer_id: int | None) -> bool:
    """Is ``number`` a number of a callback service (of this customer, unless admin)?"""
    row = conn.execute(
        select(services.c.type, accounts.c.customer_id)
        .select_from(numbers.join(services, services.c.id == numbers.c.service_id)
                     .join(accounts, accounts.c.id == services.c.account_id))
        .where(func.ltrim(numbers.c.number, "+") == number.lstrip("+"))
    ).first()
    return row is not None and row.type == "callback" and (customer_id is None or row.customer_id == customer_id)


class CallbacksAPI:
    """Routes mounted on the provisioning API's Klein app."""

    log = Logger()

    def __init__(self, api: Any, engine: Any, *, post_json: Callable[[str, dict], Any] | None = None,
                 bus: Any = None, sms: Any = None) -> None:
        self.api = api
        self.engine = engine
        self.sms = sms  # core.smscallback.SmsCallback
        self.post_json = post_json
        self.status_urls: dict[str, str] = {}
        if bus is not None:
            bus.subscribe(CallbackStateChanged, self._notify)

    def mount(self) -> None:
        app, handler = self.api.app, self.api._handler
        app.route("/v1/callbacks/support", methods=["GET"], endpoint="callbackSupport")(
            handler("/v1/callbacks/support", self.support))
        app.route("/v1/callbacks/sms", methods=["POST"], endpoint="smsCallback")(
            handler("/v1/callbacks/sms", self.sms_command))
        app.route("/v1/callbacks", methods=["POST"], endpoint="createCallback")(
            handler("/v1/callbacks", self.create, settings=False))
        # Callback ids are hex, so /v1/callbacks/support is never taken for one.
        app.url_map.converters.setdefault("hexid", HexId)
        app.route("/v1/callbacks/<hexid:id>", methods=["GET"], endpoint="getCallback")(
            handler("/v1/callbacks/{id}", self.get))
        app.route("/v1/callbacks/<hexid:id>/events", methods=["GET"], endpoint="callbackEvents")(
            handler("/v1/callbacks/{id}/events", self.events))
        app.route("/v1/callbacks/<hexid:id>", methods=["DELETE"], endpoint="dropCallback")(
            handler("/v1/callbacks/{id}", self.drop, settings=False))

    # -- support -------------------------------------------------------------------

    async def support(self, request, principal):
        raw = request.args.get(b"service_id", [b""])[-1].decode("utf-8", "replace")
        unknown = [k.decode("utf-8", "replace") for k in request.args if k != b"service_id"]
        errors = [{"field": name, "message": "unknown query parameter"} for name in unknown]
        if not raw.isdigit() or not 1 <= int(raw) <= 2**31 - 1:
            errors.append({"field": "service_id", "message": "must be an integer from 1 to 2147483647"})
        if errors:
            raise invalid(errors)
        state = await self._service(principal, int(raw))
        reason = self._unsupported(state)
        return 200, {"service_id": int(raw), "supported": reason is None, "reason": reason}

    def _unsupported(self, state: dict[str, Any]) -> str | None:
        if self.engine is None or self.engine.media is None:
            return "callbacks need the media relay, which is off on this node"
        for what in ("customer", "account"):
            if state[f"{what}_status"] != "active":
                return f"the {what} is {state[f'{what}_status']}"
        if state["status"] != "active":
            return f"the service is {state['status']}"
        if state["routing_group_id"] is None:
            return "the service has no routing group to route the calls"
        return None

    async def _service(self, principal, service_id: int) -> dict[str, Any]:
        customer = None if principal.admin else principal.customer_id
        state = await self.api.db.run(service_state, service_id, customer)
        if state is None:
            raise Problem(404, f"no service {service_id}")
        return state

    # -- create --------------------------------------------------------------------

    def _parse(self, body: Any) -> tuple[int, CallbackRequest, str | None]:
        if not isinstance(body, dict):
            raise invalid([{"field": "", "message": "expected a JSON object"}])
        errors = [{"field": name, "message": "unknown field"} for name in sorted(set(body) - FIELDS)]

        def number(name: str, required: bool) -> str | None:
            value = body.get(name)
            if value is None:
                if required:
                    errors.append({"field": name, "message": "required"})
                return None
            if not isinstance(value, str) or not NUMBER.match(value):
                errors.append({"field": name, "message": "must be a number: digits with an optional leading +"})
                return None
            return value

        service_id = _integer(body.get("service_id"))
        if service_id is None or not 1 <= service_id <= 2**31 - 1:
            errors.append({"field": "service_id", "message": "must be an integer from 1 to 2147483647"})
        a, b = number("a", True), number("b", True)
        caller_a, caller_b = number("caller_id", False), number("caller_id_b", False)
        max_seconds = _integer(body.get("max_seconds", 0))
        if max_seconds is None or not 0 <= max_seconds <= MAX_SECONDS:
            errors.append({"field": "max_seconds", "message": f"must be an integer from 0 to {MAX_SECONDS}"})
        announcements = {}
        for name in ("announcement_a", "announcement_b"):
            value = body.get(name)
            if value is not None and not (isinstance(value, str) and ANNOUNCEMENT.match(value)):
                errors.append({"field": name, "message": "must be an 8-digit announcement id"})
            announcements[name] = value
        digits = body.get("digits_b")
        if digits is not None and not (isinstance(digits, str) and re.fullmatch(r"[0-9*#]{1,32}", digits)):
            errors.append({"field": "digits_b", "message": "must be 1 to 32 of 0-9 * #"})
        language = body.get("language", "en")
        if language not in ("en", "es", "fr", "vi", "zh"):
            errors.append({"field": "language", "message": "must be one of en, es, fr, vi, zh"})
        ivr = body.get("ivr", False)
        if not isinstance(ivr, bool):
            errors.append({"field": "ivr", "message": "must be true or false"})
        url = body.get("status_url")
        if url is not None and not (isinstance(url, str) and re.match(r"^https?://[^\s]{1,2000}$", url)):
            errors.append({"field": "status_url", "message": "must be an http or https URL"})
        if errors:
            raise invalid(errors)
        request = CallbackRequest(
            service_id=service_id, user1=a, user2=b, max_seconds=max_seconds, caller_id1=caller_a,
            caller_id2=caller_b, ann_id1=announcements["announcement_a"], ann_id2=announcements["announcement_b"],
            ann_digit2=digits, source="http", language=language, ivr=ivr is True,
        )
        return service_id, request, url

    async def create(self, request, principal):
        body = self.api._body(request)
        service_id, wanted, url = self._parse(body)
        state = await self._service(principal, service_id)
        reason = self._unsupported(state)
        if reason is not None:
            raise Problem(409, f"click-to-dial is not available: {reason}")
        key = request.getHeader(b"Idempotency-Key")
        digest = hashlib.sha256(b"POST /v1/callbacks\n" + json.dumps(body, sort_keys=True).encode()).hexdigest()
        if key is not None:
            key = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
            if not (1 <= len(key) <= 255) or not all("!" <= c <= "~" for c in key):
                raise invalid([{"field": "Idempotency-Key", "message": "must be 1 to 255 visible ASCII characters"}])
            previous = await self.api.db.run(self._replay, principal.key_id, key, digest)
            if previous is not None:
                return previous
        try:
            callback = await self.engine.start(wanted)
        except CallbackRefused as refused:
            # 402: no money; 503: limits or no trunk now; 409: the service cannot reach a number.
            status = 402 if refused.status == 402 else 503 if refused.status == 503 else 409
            raise Problem(status, refused.reason, title="Callback refused") from None
        if url is not None:
            self.status_urls[callback.id] = url
            for event in list(callback.events):  # steps before the URL was known
                self._post(callback.id, url, event)
        answer = (201, callback.summary())
        if key is not None:
            try:
                await self.api.db.run(self._remember, principal.key_id, key, digest, answer, self.api.now())
            except IntegrityError:  # the same key won a race meanwhile: keep the first callback
                callback.hangup("duplicate request")
                previous = await self.api.db.run(self._replay, principal.key_id, key, digest)
                if previous is not None:
                    return previous
                raise
        return answer

    @staticmethod
    def _replay(conn, key_id: int, key: str, digest: str):
        row = conn.execute(select(idempotency_keys).where(idempotency_keys.c.api_key_id == key_id,
                                                          idempotency_keys.c.key == key)).first()
        if row is None:
            return None
        if row.request_hash != digest:
            raise Problem(409, "this Idempotency-Key was used for a different request", title="Idempotency-Key reused")
        return row.status, json.loads(row.response)

    @staticmethod
    def _remember(conn, key_id: int, key: str, digest: str, answer, now) -> None:
        conn.execute(insert(idempotency_keys).values(
            api_key_id=key_id, key=key, method="POST", path="/v1/callbacks", request_hash=digest,
            status=answer[0], response=json.dumps(answer[1]), created_at=now))

    # -- SMS callback over HTTP (an SMS carrier or forwarder posts what it received) ---

    async def sms_command(self, request, principal):
        body = self.api._body(request)
        if not isinstance(body, dict):
            raise invalid([{"field": "", "message": "expected a JSON object"}])
        errors = [{"field": name, "message": "unknown field"}
                  for name in sorted(set(body) - {"from", "to", "text", "send_reply"})]
        send_reply = body.get("send_reply", True)
        if not isinstance(send_reply, bool):
            errors.append({"field": "send_reply", "message": "must be true or false"})
        for name in ("from", "to"):
            value = body.get(name)
            if not isinstance(value, str) or not NUMBER.match(value):
                errors.append({"field": name, "message": "must be a number: digits with an optional leading +"})
        text = body.get("text")
        if not isinstance(text, str) or len(text) > 1000:
            errors.append({"field": "text", "message": "must be a string of at most 1000 characters"})
        if errors:
            raise invalid(errors)
        if self.sms is None:
            raise Problem(409, "SMS callback needs the media relay, which is off on this node")
        customer = None if principal.admin else principal.customer_id
        if not await self.api.db.run(access_number_visible, body["to"], customer):
            raise Problem(404, f"{body['to']} is not an access number of a callback service of yours")
        reply = await self.sms.handle(body["from"], body["to"], text)
        sent = send_reply is True and await self.sms.reply_by_sms(body["from"], body["to"], reply)
        return 200, {"to": body["from"], "from": body["to"], "reply": reply, "sms_sent": sent}

    # -- read, drop ------------------------------------------------------------------

    async def _find(self, principal, callback_id: str):
        callback = self.engine.get(callback_id) if self.engine is not None else None
        if callback is None:
            raise Problem(404, "no such callback (finished ones are kept for an hour)")
        if not principal.admin:
            state = await self.api.db.run(service_state, callback.request.service_id, principal.customer_id)
            if state is None:
                raise Problem(404, "no such callback (finished ones are kept for an hour)")
        return callback

    async def get(self, request, principal, id):
        return 200, (await self._find(principal, id)).summary()

    async def events(self, request, principal, id):
        callback = await self._find(principal, id)
        return 200, {"callback_id": callback.id, "state": callback.state, "outcome": callback.outcome,
                     "real_duration": callback.real_duration, "items": list(callback.events)}

    async def drop(self, request, principal, id):
        callback = await self._find(principal, id)
        if callback.state == "ended":
            raise Problem(409, "the callback has already ended")
        callback.hangup("dropped through the API")
        return 204, None

    # -- status callbacks ------------------------------------------------------------

    def _notify(self, event: CallbackStateChanged) -> None:
        url = self.status_urls.get(event.callback_id)
        if url is None:
            return
        self._post(event.callback_id, url, {"at": event.at, "state": event.state, "detail": event.detail})
        if event.state == "ended":
            self.status_urls.pop(event.callback_id, None)

    def _post(self, callback_id: str, url: str, step: dict[str, Any]) -> None:
        if self.post_json is None:
            return
        callback = self.engine.get(callback_id)
        payload = {"callback_id": callback_id, **step}
        if callback is not None and step.get("state") == "ended":
            payload.update(outcome=callback.outcome, real_duration=callback.real_duration)
        self.post_json(url, payload)
