"""Voucher lots and PIN top-ups over HTTP (the logic is in :mod:`switchd.billing.vouchers`).

Admin keys only, for lots:

* ``POST /v1/voucher-lots``: make a lot; the answer carries the lot's
  ``export_key``, shown once (``Idempotency-Key`` replays show it as null);
* ``GET /v1/voucher-lots``, ``GET /v1/voucher-lots/{id}`` (with counts: total,
  used, left), ``PATCH /v1/voucher-lots/{id}`` (disable, enable, rename);
* ``GET /v1/voucher-lots/{id}/vouchers.csv``: with ``Export-Key``, once and
  within 24 hours, the CSV of the secrets; without it, at any time, the CSV of
  each voucher's state;
* ``GET /v1/voucher-lots/{id}/vouchers``: which were used, when, by whom.

Admin keys and the account's customer:

* ``POST /v1/accounts/{id}/topups/voucher`` with ``{"pin": ...}`` or
  ``{"login": ..., "password": ...}``. Refusals: 404 wrong PIN, 409 used,
  expired, disabled or another currency, 429 (with ``Retry-After``) once a key
  or an account has failed too often (:class:`~switchd.billing.vouchers.RedeemGuard`).
"""

from __future__ import annotations

import datetime
import math
import re
from typing import Any

from twisted.logger import Logger

from ..billing import vouchers as v
from ..core.ratelimit import RateLimiter
from ..store import models as m
from . import crud
from .problem import Problem, invalid
from .resources import ACCOUNTS, CURRENCY, POSITIVE_MONEY, choice, integer, money, text
from .schema import Resource, format_time, validate

#: Create and update fields of a lot (expires_at, a date-time, is read apart).
LOTS = Resource(
    "VoucherLot",
    "voucher-lots",
    m.voucher_lots,
    (
        text("name", 200, "Label of the lot, e.g. the print run.", required=True, min_length=1),
        integer("count", "How many vouchers to make.", None, required=True, minimum=1, maximum=v.MAX_COUNT,
                immutable=True),
        money("value", "What one voucher adds to an account.", default=None, required=True, pattern=POSITIVE_MONEY,
              immutable=True),
        text("currency", 3, "Currency of the value; only accounts in it can use the vouchers.", required=True,
             immutable=True, **CURRENCY),
        choice("kind", m.VOUCHER_KINDS, "pin: 16-digit PINs; login: a login and a 12-digit password each.", "pin",
               immutable=True),
        choice("status", v.LOT_STATUSES, "A disabled lot's vouchers are refused.", "active"),
    ),
    "Voucher lots (input).",
)
EXPIRES_DOC = "When the vouchers stop working (UTC; null: never). Must be in the future."
PIN_PATTERN = r"^[0-9 -]{12,40}$"
LOGIN_PATTERN = r"^[0-9]{7,16}$"
PASSWORD_PATTERN = r"^[0-9 -]{1,40}$"
EXPORT_KEY_PATTERN = r"^[!-~]{1,100}$"
_RFC3339 = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$")


def parse_time(name: str, value: Any) -> datetime.datetime | None:
    """An RFC 3339 date-time (or null) as an aware UTC datetime; a 422 Problem otherwise."""
    if value is None:
        return None
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise invalid([{"field": name, "message": "must be an RFC 3339 date-time, e.g. 2027-01-31T23:59:59Z"}])
    text_ = value.upper().replace("Z", "+00:00").replace(" ", "T")
    if text_[17:19] == "60":  # a leap second: the second before it will do
        text_ = text_[:17] + "59" + text_[19:]
    try:
        moment = datetime.datetime.fromisoformat(text_)
    except ValueError:
        raise invalid([{"field": name, "message": "is not a date and time that exists"}]) from None
    try:
        return moment.astimezone(datetime.UTC)
    except OverflowError:
        raise Problem(409, f"{name} is out of the range switchd stores") from None


def render_lot(lot: v.Lot) -> dict[str, Any]:
    return {
        "id": lot.id,
        "name": lot.name,
        "kind": lot.kind,
        "count": lot.count,
        "value": str(lot.value),
        "currency": lot.currency,
        "expires_at": None if lot.expires_at is None else format_time(lot.expires_at),
        "status": lot.status,
        "counts": {"total": lot.count, "used": lot.used, "left": lot.left},
        "created_by_key_id": lot.created_by_key_id,
        "export_until": None if lot.export_until is None else format_time(lot.export_until),
        "exported_at": None if lot.exported_at is None else format_time(lot.exported_at),
        "created_at": format_time(lot.created_at),
        "updated_at": format_time(lot.updated_at),
    }


def render_voucher(voucher: v.Voucher) -> dict[str, Any]:
    return {
        "id": voucher.id,
        "lot_id": voucher.lot_id,
        "serial": voucher.serial,
        "pin_prefix": voucher.pin_prefix,
        "login": voucher.login,
        "used": voucher.used_at is not None,
        "used_at": None if voucher.used_at is None else format_time(voucher.used_at),
        "used_by_account_id": voucher.used_by_account_id,
        "transaction_id": voucher.ledger_id,
    }


def render_redeemed(done: v.Redeemed) -> dict[str, Any]:
    return {
        "voucher_id": done.voucher_id,
        "lot_id": done.lot_id,
        "account_id": done.account_id,
        "amount": str(done.amount),
        "currency": done.currency,
        "balance": str(done.balance),
        "transaction_id": done.ledger_id,
    }


class VouchersAPI:
    """Routes mounted on the provisioning API's Klein app (see the module docstring)."""

    log = Logger()

    def __init__(self, api: Any, limiter: RateLimiter | None = None, *, failures: int = 5,
                 window: float = 900.0) -> None:
        self.api = api
        self.guard = v.RedeemGuard(limiter if limiter is not None else RateLimiter(api.clock), api.clock,
                                   failures=failures, window=window)

    def mount(self) -> None:
        app, handler = self.api.app, self.api._handler
        routes = (
            ("/v1/voucher-lots", "voucher-lots", "GET", "listVoucherLot", self.list_lots),
            ("/v1/voucher-lots", "voucher-lots", "POST", "createVoucherLot", self.create_lot),
            ("/v1/voucher-lots/{id}", "voucher-lots/<string:id>", "GET", "getVoucherLot", self.get_lot),
            ("/v1/voucher-lots/{id}", "voucher-lots/<string:id>", "PATCH", "updateVoucherLot", self.update_lot),
            ("/v1/voucher-lots/{id}/vouchers", "voucher-lots/<string:id>/vouchers", "GET", "listVoucher",
             self.list_vouchers),
            ("/v1/voucher-lots/{id}/vouchers.csv", "voucher-lots/<string:id>/vouchers.csv", "GET",
             "exportVoucherLot", self.export),
            ("/v1/accounts/{id}/topups/voucher", "accounts/<string:id>/topups/voucher", "POST", "redeemVoucher",
             self.redeem),
        )
        for label, rule, method, endpoint, fn in routes:
            app.route(f"/v1/{rule}", methods=[method], endpoint=endpoint)(handler(label, fn))

    # -- lots --------------------------------------------------------------------------

    @staticmethod
    def _admin(principal) -> None:
        if not principal.admin:
            raise Problem(403, "voucher lots need an admin key")

    def _lot_id(self, raw: str) -> int:
        lot_id = self.api._object_id(raw)
        if lot_id > 2**31 - 1:
            raise Problem(404, "no such voucher lot")
        return lot_id

    async def _run(self, fn, *args, **kwargs):
        """Run in the database; this module's errors become problems."""
        try:
            return await self.api.db.run(fn, *args, **kwargs)
        except v.NoSuchLot as error:
            raise Problem(404, error.reason) from None
        except v.LotError as error:
            raise Problem(409, error.reason) from None

    async def create_lot(self, request, principal):
        self._admin(principal)
        body = self.api._body(request)
        if not isinstance(body, dict):
            raise invalid([{"field": "", "message": "the body must be a JSON object"}])
        fields = dict(body)
        expires_raw = fields.pop("expires_at", None)
        values = validate(LOTS, fields, creating=True, admin=True)
        expires_at = parse_time("expires_at", expires_raw)
        now = self.api.now()

        def work(conn):
            try:
                created = v.create_lot(conn, name=values["name"], kind=values["kind"], count=values["count"],
                                       value=values["value"], currency=values["currency"], now=now,
                                       expires_at=expires_at, created_by_key_id=principal.key_id)
                if values.get("status", "active") != "active":
                    v.update_lot(conn, created.lot_id, now, status=values["status"])
                lot = v.get_lot(conn, created.lot_id)
            except v.LotError as error:
                raise Problem(409, error.reason) from None
            return 201, {**render_lot(lot), "export_key": created.export_key}

        status, result = await self.api._idempotent(request, principal, work, body, once=("export_key",))
        request.setHeader("Location", f"/v1/voucher-lots/{result['id']}")
        if status == 201 and result.get("export_key"):
            self.log.info("voucher lot {lot} made: {count} x {value} {currency} by key {key}", lot=result["id"],
                          count=result["count"], value=result["value"], currency=result["currency"],
                          key=principal.key_id)
        return status, result

    def _page(self, request, filters: dict[str, tuple[str, ...]]) -> tuple[int, int | None, dict[str, str]]:
        """limit, cursor (the last id seen) and the named filters, from the query string."""
        errors, chosen = [], {}
        limit, cursor = self.api.page_size, None
        for raw_name, raw_values in request.args.items():
            name = raw_name.decode("utf-8", "replace")
            value = raw_values[-1].decode("utf-8", "replace")
            if name == "limit":
                if not value.isdigit() or not 1 <= int(value) <= 1000:
                    errors.append({"field": "limit", "message": "must be an integer from 1 to 1000"})
                else:
                    limit = int(value)
            elif name == "cursor":
                cursor = crud.decode_cursor(value)
            elif name in filters:
                if value not in filters[name]:
                    errors.append({"field": name, "message": "must be one of " + ", ".join(filters[name])})
                chosen[name] = value
            else:
                errors.append({"field": name, "message": "unknown query parameter"})
        if errors:
            raise invalid(errors)
        return limit, cursor, chosen

    async def list_lots(self, request, principal):
        self._admin(principal)
        limit, cursor, chosen = self._page(request, {"status": v.LOT_STATUSES, "kind": m.VOUCHER_KINDS})
        lots = await self._run(v.list_lots, limit=limit + 1, after_id=cursor, **chosen)
        more = len(lots) > limit
        return 200, {"items": [render_lot(lot) for lot in lots[:limit]],
                     "next_cursor": crud.encode_cursor(lots[limit - 1].id) if more else None}

    async def get_lot(self, request, principal, id):
        self._admin(principal)
        return 200, render_lot(await self._run(v.get_lot, self._lot_id(id)))

    async def update_lot(self, request, principal, id):
        self._admin(principal)
        lot_id = self._lot_id(id)
        body = self.api._body(request)
        values = validate(LOTS, body, creating=False, admin=True)
        lot = await self._run(v.update_lot, lot_id, self.api.now(), status=values.get("status"),
                              name=values.get("name"))
        if "status" in values:
            self.log.info("voucher lot {lot} is {status}", lot=lot_id, status=lot.status)
        return 200, render_lot(lot)

    async def list_vouchers(self, request, principal, id):
        self._admin(principal)
        lot_id = self._lot_id(id)
        limit, cursor, chosen = self._page(request, {"used": ("true", "false")})
        used = None if "used" not in chosen else chosen["used"] == "true"
        found = await self._run(v.list_vouchers, lot_id, limit=limit + 1, after_id=cursor, used=used)
        more = len(found) > limit
        return 200, {"items": [render_voucher(voucher) for voucher in found[:limit]],
                     "next_cursor": crud.encode_cursor(found[limit - 1].id) if more else None}

    async def export(self, request, principal, id):
        self._admin(principal)
        lot_id = self._lot_id(id)
        unknown = [k.decode("utf-8", "replace") for k in request.args]
        if unknown:
            raise invalid([{"field": name, "message": "unknown query parameter"} for name in unknown])
        values = request.requestHeaders.getRawHeaders(b"Export-Key")
        key = values[-1].decode("latin-1").strip() if values else None
        try:
            text_ = await self._run(v.export_csv, lot_id, self.api.now(), key)
        except v.ExportRefused as refused:
            raise Problem(403 if refused.code == "key" else 409, refused.reason) from None
        if key is not None:
            self.log.info("voucher lot {lot}: secrets exported by key {key}", lot=lot_id, key=principal.key_id)
        request.setHeader("Content-Type", "text/csv; charset=utf-8")
        request.setHeader("Content-Disposition", f'attachment; filename="voucher-lot-{lot_id}.csv"')
        request.setHeader("Cache-Control", "no-store")
        return 200, text_.encode("utf-8")

    # -- redeeming ------------------------------------------------------------------------

    @staticmethod
    def _credentials(body: Any) -> dict[str, str]:
        if not isinstance(body, dict):
            raise invalid([{"field": "", "message": "the body must be a JSON object"}])
        errors = [{"field": name, "message": "unknown field"} for name in sorted(set(body) - {"pin", "login",
                                                                                               "password"})]
        given = {name: body[name] for name in ("pin", "login", "password") if name in body}
        patterns = {"pin": PIN_PATTERN, "login": LOGIN_PATTERN, "password": PASSWORD_PATTERN}
        for name, value in given.items():
            if not isinstance(value, str) or not re.match(patterns[name], value):
                errors.append({"field": name, "message": f"must match {patterns[name]}"})
        if "pin" in given and ("login" in given or "password" in given):
            errors.append({"field": "pin", "message": "give a pin, or a login and a password, not both"})
        elif "pin" not in given and set(given) != {"login", "password"}:
            errors.append({"field": "pin", "message": "give a pin, or a login and a password"})
        if errors:
            raise invalid(errors)
        return given

    async def redeem(self, request, principal, id):
        account_id = self.api._object_id(id)
        body = self.api._body(request)
        credentials = self._credentials(body)
        keys = (("key", principal.key_id), ("account", account_id))
        wait = self.guard.admit(keys)
        if wait:
            raise Problem(429, "too many failed voucher attempts; wait before trying again",
                          headers={"Retry-After": str(max(1, math.ceil(wait)))})
        now = self.api.now()

        def work(conn):
            crud.get(conn, ACCOUNTS.path, principal, account_id)  # 404 unless the caller's
            return 201, render_redeemed(v.redeem(conn, account_id, now, **credentials))

        failed = False
        try:
            status, result = await self.api._idempotent(request, principal, work, body)
        except v.RedeemRefused as refused:
            failed = True
            self.log.info("voucher refused for account {account} (key {key}): {reason}", account=account_id,
                          key=principal.key_id, reason=refused.reason)
            raise Problem(404 if refused.code == "invalid" else 409, refused.reason, title="Voucher refused") from None
        finally:
            self.guard.done(keys, failed)
        self.log.info("account {account} topped up by {amount} {currency} with voucher {voucher}",
                      account=account_id, amount=result["amount"], currency=result["currency"],
                      voucher=result["voucher_id"])
        return status, result


def mount(api: Any, limiter: RateLimiter | None = None) -> VouchersAPI:
    """Add the voucher routes to a :class:`~switchd.api.app.ProvisioningAPI`; ``limiter``: the node's shared one."""
    routes = VouchersAPI(api, limiter)
    routes.mount()
    return routes
