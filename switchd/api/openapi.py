"""The OpenAPI 3.1 document, generated from the same resource descriptions
that validate requests and render answers."""

from __future__ import annotations

from typing import Any

from .. import __version__
from .resources import ACCOUNTS, COLLECTIONS, TRANSACTIONS
from .schema import Resource
from .sms import TEXT_CODINGS

PROBLEM_REF = {"$ref": "#/components/responses/Problem"}


def _problem_responses(*codes: int) -> dict[str, Any]:
    return {str(code): PROBLEM_REF for code in codes}


def _schemas(resource: Resource) -> dict[str, Any]:
    name = resource.name
    out_props = {f.name: f.json_schema(False) for f in resource.output_fields}
    schemas: dict[str, Any] = {
        name: {
            "type": "object",
            "description": resource.doc,
            "properties": out_props,
            "required": list(out_props),
            "additionalProperties": False,
        },
        f"{name}List": {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": {"$ref": f"#/components/schemas/{name}"}},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "Pass as ?cursor= for the next page; null on the last page.",
                },
            },
            "required": ["items", "next_cursor"],
            "additionalProperties": False,
        },
    }
    writable = [f for f in resource.fields if not f.readonly]
    if resource.creatable:
        schemas[f"{name}Create"] = {
            "type": "object",
            "properties": {f.name: f.json_schema(True) for f in writable},
            # Admin-only fields cannot be required where customers create too.
            "required": [
                f.name
                for f in writable
                if f.required and (not f.admin_only or "create" not in resource.customer_writes)
            ],
            "additionalProperties": False,
        }
        if resource.once_fields:
            created_props = dict(out_props)
            for f in resource.once_fields:
                s = f.json_schema(False)
                s["type"] = ["string", "null"]  # null when an Idempotency-Key replays
                created_props[f.name] = s
            schemas[f"{name}Created"] = {
                "type": "object",
                "properties": created_props,
                "required": list(created_props),
                "additionalProperties": False,
            }
    if resource.updatable:
        schemas[f"{name}Update"] = {
            "type": "object",
            "properties": {f.name: f.json_schema(True) for f in writable if not f.immutable},
            "additionalProperties": False,
        }
    return schemas


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def _filter_params(resource: Resource) -> list[dict[str, Any]]:
    params = []
    for name in resource.filters:
        f = resource.by_name[name]
        schema = f.json_schema(True)
        schema.pop("default", None)
        if isinstance(schema.get("type"), list):
            schema["type"] = schema["type"][0]
            if "enum" in schema:
                schema["enum"] = [v for v in schema["enum"] if v is not None]
        params.append({"name": name, "in": "query", "required": False, "schema": schema})
    return params


PAGING = [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
        "description": "Page size.",
    },
    {
        "name": "cursor",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
        "description": "next_cursor of the previous page.",
    },
]

ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
}

IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
    "description": "Retrying a create with the same key and body returns the first answer "
    "and creates nothing new.",
}


def _operations(resource: Resource) -> dict[str, Any]:
    name = resource.name
    tag = resource.path.split("/")[0]
    collection: dict[str, Any] = {
        "get": {
            "operationId": f"list{name}",
            "tags": [tag],
            "summary": f"List {resource.path}",
            "parameters": PAGING + _filter_params(resource) + (
                [
                    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                    {"name": "to", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                ]
                if resource.path == "cdrs"
                else []
            ),
            "responses": {
                "200": {"description": "A page", "content": _json(f"{name}List")},
                **_problem_responses(401, 403, 422),
            },
        }
    }
    if resource.creatable:
        created = f"{name}Created" if resource.once_fields else name
        collection["post"] = {
            "operationId": f"create{name}",
            "tags": [tag],
            "summary": f"Create in {resource.path}",
            "parameters": [IDEMPOTENCY],
            "requestBody": {"required": True, "content": _json(f"{name}Create")},
            "responses": {
                "201": {"description": "Created", "content": _json(created)},
                **_problem_responses(400, 401, 403, 409, 413, 415, 422),
            },
        }
    item: dict[str, Any] = {
        "parameters": [ID_PARAM],
        "get": {
            "operationId": f"get{name}",
            "tags": [tag],
            "responses": {
                "200": {"description": "The object", "content": _json(name)},
                **_problem_responses(401, 403, 404),
            },
        },
    }
    if resource.updatable:
        item["patch"] = {
            "operationId": f"update{name}",
            "tags": [tag],
            "requestBody": {"required": True, "content": _json(f"{name}Update")},
            "responses": {
                "200": {"description": "Changed", "content": _json(name)},
                **_problem_responses(400, 401, 403, 404, 409, 413, 415, 422),
            },
        }
    if resource.deletable:
        item["delete"] = {
            "operationId": f"delete{name}",
            "tags": [tag],
            "responses": {
                "204": {"description": "Deleted"},
                **_problem_responses(401, 403, 404, 409),
            },
        }
    return {f"/v1/{resource.path}": collection, f"/v1/{resource.path}/{{id}}": item}


def _transactions() -> dict[str, Any]:
    schemas = _schemas(TRANSACTIONS)
    account = dict(ID_PARAM, description=f"{ACCOUNTS.name} id")
    path = {
        "parameters": [account],
        "get": {
            "operationId": "listTransaction",
            "tags": ["accounts"],
            "summary": "The account's ledger, oldest first",
            "parameters": PAGING,
            "responses": {
                "200": {"description": "A page", "content": _json("TransactionList")},
                **_problem_responses(401, 403, 404, 422),
            },
        },
        "post": {
            "operationId": "createTransaction",
            "tags": ["accounts"],
            "summary": "Move money (admin keys)",
            "parameters": [IDEMPOTENCY],
            "requestBody": {"required": True, "content": _json("TransactionCreate")},
            "responses": {
                "201": {"description": "Booked", "content": _json("Transaction")},
                "200": {
                    "description": "The reference was already booked: the first booking",
                    "content": _json("Transaction"),
                },
                **_problem_responses(400, 401, 403, 404, 409, 413, 415, 422),
            },
        },
    }
    return {"/v1/accounts/{id}/transactions": path}, schemas


def _sms_paths(schemas: dict[str, Any]) -> dict[str, Any]:
    """``/v1/sms``: send with an HTTP connection's API key, read the state back."""
    number = {"type": "string", "pattern": "^\\+?[0-9]{1,20}$"}
    schemas["SmsCreate"] = {
        "type": "object",
        "description": "A message to send. The text goes in the GSM 7-bit alphabet when it can, else UCS2, "
        "unless data_coding says otherwise.",
        "properties": {
            "from": {"description": "Sender: a number, or 1 to 11 letters, digits, spaces or ._&-.",
                     "anyOf": [number, {"type": "string", "pattern": "^[A-Za-z0-9 ._&-]{1,11}$"}]},
            "to": dict(number, description="Destination number; a leading '+' is dropped."),
            "text": {"type": "string", "minLength": 1, "maxLength": 16384},
            "data_coding": {"type": "integer", "enum": list(TEXT_CODINGS),
                            "description": "SMPP data_coding of a text alphabet (0 GSM, 1 IA5, 3 Latin-1, "
                            "6 Cyrillic, 7 Hebrew, 8 UCS2, ...); binary codings go over SMPP."},
            "registered_delivery": {"type": "integer", "minimum": 0, "maximum": 31,
                                    "description": "SMPP registered_delivery kept with the message."},
            "client_reference": {"type": "string", "minLength": 1, "maxLength": 64,
                                 "description": "Your own id, echoed in status callbacks."},
        },
        "required": ["from", "to", "text"],
        "additionalProperties": False,
    }
    schemas["SmsAccepted"] = {
        "type": "object",
        "description": "The message is stored; it is sent from here on.",
        "properties": {
            "id": {"type": "string"},
            "parts": {"type": "integer", "minimum": 1},
            "client_reference": {"type": ["string", "null"]},
        },
        "required": ["id", "parts", "client_reference"],
        "additionalProperties": False,
    }
    schemas["Sms"] = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "state": {"type": "string", "enum": ["ENROUTE", "DELIVERED", "EXPIRED", "DELETED", "UNDELIVERABLE",
                                                 "ACCEPTED", "UNKNOWN", "REJECTED"]},
            "parts": {"type": "integer"},
            "error_code": {"type": ["integer", "null"]},
            "from": {"type": "string"},
            "to": {"type": "string"},
            "submitted_at": {"type": "string", "format": "date-time"},
            "done_at": {"type": ["string", "null"], "format": "date-time"},
        },
        "required": ["id", "state", "parts", "error_code", "from", "to", "submitted_at", "done_at"],
        "additionalProperties": False,
    }
    message_id = {"name": "id", "in": "path", "required": True,
                  "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"}}
    return {
        "/v1/sms": {
            "post": {
                "operationId": "sendSms",
                "tags": ["sms"],
                "summary": "Send an SMS (API key of an HTTP connection)",
                "description": "201 once the message is stored. Refusals carry smpp_status and reason: "
                "400 no route or bad number, 402 insufficient funds, 429 limits, 503 storage.",
                "parameters": [IDEMPOTENCY],
                "requestBody": {"required": True, "content": _json("SmsCreate")},
                "responses": {
                    "201": {"description": "Stored", "content": _json("SmsAccepted")},
                    **_problem_responses(400, 401, 402, 403, 409, 413, 415, 422, 429, 503),
                },
            }
        },
        "/v1/sms/{id}": {
            "parameters": [message_id],
            "get": {
                "operationId": "getSms",
                "tags": ["sms"],
                "summary": "State of a message sent with this HTTP connection's key",
                "responses": {
                    "200": {"description": "The message", "content": _json("Sms")},
                    **_problem_responses(401, 403, 404, 503),
                },
            },
        },
    }


def _callback_paths(schemas: dict[str, Any]) -> dict[str, Any]:
    """Click-to-dial (switchd/api/callbacks.py)."""
    number = {"type": "string", "pattern": "^\\+?[0-9]{1,31}$"}
    announcement = {"type": "string", "pattern": "^[0-9]{8}$"}
    schemas["Callback"] = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "state": {"type": "string", "description": "starting, dialing1, answered1, collecting, dialing2, "
                                                       "answered2, bridged or ended."},
            "outcome": {"type": ["string", "null"], "enum": [None, "completed", "user1_busy", "user1_no_answer",
                                                             "user1_failed", "user2_busy", "user2_no_answer",
                                                             "user2_failed", "cancelled", "failed"]},
            "user1": {"type": "string"},
            "user2": {"type": ["string", "null"]},
            "max_seconds": {"type": ["integer", "null"], "description": "Limit from user1's answer (request or money)."},
            "real_duration": {"type": "integer", "description": "Seconds the two parties were bridged."},
            "source": {"type": "string"},
            "reference": {"type": "string"},
            "account_id": {"type": ["integer", "null"]},
            "started": {"type": "number"},
            "language": {"type": "string", "enum": ["en", "es", "fr", "vi", "zh"],
                         "description": "Language of the prompts (user1 may change it in the IVR)."},
            "ivr": {"type": "boolean", "description": "user1 may dial another number after each call."},
        },
        "required": ["id", "state", "outcome", "user1", "user2", "max_seconds", "real_duration", "source",
                     "reference", "account_id", "started", "language", "ivr"],
    }
    callback_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{1,64}$"}}
    return {
        "/v1/callbacks/support": {
            "get": {
                "operationId": "callbackSupport",
                "tags": ["callbacks"],
                "summary": "May this service place click-to-dial calls?",
                "parameters": [{"name": "service_id", "in": "query", "required": True,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}}],
                "responses": {
                    "200": {"description": "The answer and, when not, why", "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {"service_id": {"type": "integer"}, "supported": {"type": "boolean"},
                                       "reason": {"type": ["string", "null"]}},
                        "required": ["service_id", "supported", "reason"]}}}},
                    **_problem_responses(401, 404, 422),
                },
            },
        },
        "/v1/callbacks/sms": {
            "post": {
                "operationId": "smsCallback",
                "tags": ["callbacks"],
                "summary": "An SMS received by a carrier or forwarder for a callback access number (seed 002)",
                "description": "The text is a callback command (U.login P.password D.number O.number, "
                               "R.number, B.name, N<k>, T.pin, I). The reply goes to the sender by SMS "
                               "(unless send_reply is false) and is in the answer.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"from": number, "to": number, "text": {"type": "string", "maxLength": 1000},
                                   "send_reply": {"type": "boolean", "default": True,
                                                  "description": "false: the forwarder sends the reply itself."}},
                    "required": ["from", "to", "text"],
                }}}},
                "responses": {
                    "200": {"description": "Handled; the reply text", "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {"to": {"type": "string"}, "from": {"type": "string"},
                                       "reply": {"type": "string"},
                                       "sms_sent": {"type": "boolean",
                                                    "description": "The reply SMS was accepted for sending."}},
                        "required": ["to", "from", "reply", "sms_sent"]}}}},
                    **_problem_responses(400, 401, 404, 409, 413, 415, 422),
                },
            },
        },
        "/v1/callbacks": {
            "post": {
                "operationId": "createCallback",
                "tags": ["callbacks"],
                "summary": "Call a, then b, and bridge them (click-to-dial)",
                "parameters": [IDEMPOTENCY],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "service_id": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                        "a": number, "b": number,
                        "max_seconds": {"type": "integer", "minimum": 0, "maximum": 86400, "default": 0},
                        "caller_id": number, "caller_id_b": number,
                        "announcement_a": announcement, "announcement_b": announcement,
                        "digits_b": {"type": "string", "pattern": "^[0-9*#]{1,32}$"},
                        "language": {"type": "string", "enum": ["en", "es", "fr", "vi", "zh"]},
                        "ivr": {"type": "boolean", "default": False,
                                "description": "After b's call (or its failure) a may dial another number."},
                        "status_url": {"type": "string", "format": "uri", "maxLength": 2008},
                    },
                    "required": ["service_id", "a", "b"],
                }}}},
                "responses": {
                    "201": {"description": "a is being called", "content": _json("Callback")},
                    **_problem_responses(400, 401, 402, 404, 409, 413, 415, 422, 503),
                },
            },
        },
        "/v1/callbacks/{id}": {
            "parameters": [callback_id],
            "get": {
                "operationId": "getCallback",
                "tags": ["callbacks"],
                "summary": "A callback's state (kept an hour after it ends)",
                "responses": {"200": {"description": "The callback", "content": _json("Callback")},
                              **_problem_responses(401, 404)},
            },
            "delete": {
                "operationId": "dropCallback",
                "tags": ["callbacks"],
                "summary": "End a callback: both calls end",
                "responses": {"204": {"description": "Ended"}, **_problem_responses(401, 404, 409)},
            },
        },
        "/v1/callbacks/{id}/events": {
            "parameters": [callback_id],
            "get": {
                "operationId": "callbackEvents",
                "tags": ["callbacks"],
                "summary": "The steps of a callback, in order",
                "responses": {
                    "200": {"description": "Steps", "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {
                            "callback_id": {"type": "string"}, "state": {"type": "string"},
                            "outcome": {"type": ["string", "null"]}, "real_duration": {"type": "integer"},
                            "items": {"type": "array", "items": {"type": "object", "properties": {
                                "at": {"type": "number"}, "state": {"type": "string"}, "detail": {"type": "string"}},
                                "required": ["at", "state", "detail"]}},
                        },
                        "required": ["callback_id", "state", "outcome", "real_duration", "items"]}}}},
                    **_problem_responses(401, 404),
                },
            },
        },
    }


def _voucher_paths(schemas: dict[str, Any]) -> dict[str, Any]:
    """Voucher lots and PIN top-ups (switchd/api/vouchers.py)."""
    from .vouchers import (
        EXPIRES_DOC,
        EXPORT_KEY_PATTERN,
        LOGIN_PATTERN,
        LOTS,
        PASSWORD_PATTERN,
        PIN_PATTERN,
    )

    when = {"type": ["string", "null"], "format": "date-time"}
    lot_props = {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "kind": {"type": "string", "enum": ["pin", "login"]},
        "count": {"type": "integer"},
        "value": {"type": "string"},
        "currency": {"type": "string"},
        "expires_at": dict(when, description=EXPIRES_DOC),
        "status": {"type": "string", "enum": ["active", "disabled"]},
        "counts": {
            "type": "object",
            "description": "Vouchers in the lot, used ones, and not used yet.",
            "properties": {"total": {"type": "integer"}, "used": {"type": "integer"}, "left": {"type": "integer"}},
            "required": ["total", "used", "left"],
            "additionalProperties": False,
        },
        "created_by_key_id": {"type": ["integer", "null"]},
        "export_until": dict(when, description="Until when the secrets can be exported (once)."),
        "exported_at": dict(when, description="When the secrets were exported (null: not yet)."),
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    }
    schemas["VoucherLot"] = {"type": "object", "description": "A lot of prepaid vouchers.", "properties": lot_props,
                             "required": list(lot_props), "additionalProperties": False}
    created = dict(lot_props, export_key={
        "type": ["string", "null"],
        "description": "Opens the secrets for the one export (Export-Key of vouchers.csv). Shown only now; "
                       "null when an Idempotency-Key replays the answer."})
    schemas["VoucherLotCreated"] = {"type": "object", "properties": created, "required": list(created),
                                    "additionalProperties": False}
    inputs = {f.name: f.json_schema(True) for f in LOTS.fields}
    schemas["VoucherLotCreate"] = {
        "type": "object",
        "properties": {**inputs, "expires_at": dict(when, description=EXPIRES_DOC)},
        "required": [f.name for f in LOTS.fields if f.required],
        "additionalProperties": False,
    }
    schemas["VoucherLotUpdate"] = {
        "type": "object",
        "properties": {f.name: f.json_schema(True) for f in LOTS.fields if not f.immutable},
        "additionalProperties": False,
    }
    voucher_props = {
        "id": {"type": "integer"},
        "lot_id": {"type": "integer"},
        "serial": {"type": "integer", "description": "1 to count within the lot."},
        "pin_prefix": {"type": ["string", "null"], "description": "First digits of the PIN (not secret)."},
        "login": {"type": ["string", "null"], "description": "The login of a login voucher (not secret)."},
        "used": {"type": "boolean"},
        "used_at": when,
        "used_by_account_id": {"type": ["integer", "null"]},
        "transaction_id": {"type": ["integer", "null"], "description": "The ledger row of the top-up."},
    }
    schemas["Voucher"] = {"type": "object", "properties": voucher_props, "required": list(voucher_props),
                          "additionalProperties": False}
    for name in ("VoucherLot", "Voucher"):
        schemas[f"{name}List"] = {
            "type": "object",
            "properties": {"items": {"type": "array", "items": {"$ref": f"#/components/schemas/{name}"}},
                           "next_cursor": {"type": ["string", "null"]}},
            "required": ["items", "next_cursor"],
            "additionalProperties": False,
        }
    schemas["VoucherRedeem"] = {
        "description": "A PIN (spaces and dashes are ignored), or a login and password.",
        "oneOf": [
            {"type": "object", "properties": {"pin": {"type": "string", "pattern": PIN_PATTERN}},
             "required": ["pin"], "additionalProperties": False},
            {"type": "object", "properties": {"login": {"type": "string", "pattern": LOGIN_PATTERN},
                                              "password": {"type": "string", "pattern": PASSWORD_PATTERN}},
             "required": ["login", "password"], "additionalProperties": False},
        ],
    }
    topup = {
        "voucher_id": {"type": "integer"},
        "lot_id": {"type": "integer"},
        "account_id": {"type": "integer"},
        "amount": {"type": "string", "description": "What was added, in the account's currency."},
        "currency": {"type": "string"},
        "balance": {"type": "string", "description": "The balance right after."},
        "transaction_id": {"type": "integer", "description": "The ledger row (kind topup, reference voucher:<id>)."},
    }
    schemas["VoucherTopup"] = {"type": "object", "properties": topup, "required": list(topup),
                               "additionalProperties": False}
    lot_id = dict(ID_PARAM, description="Voucher lot id")
    too_many = {
        "description": "Too many failed attempts by this key or for this account",
        "headers": {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1},
                                    "description": "Seconds to wait."}},
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    tags = ["voucher-lots"]
    return {
        "/v1/voucher-lots": {
            "get": {
                "operationId": "listVoucherLot",
                "tags": tags,
                "summary": "List voucher lots (admin keys)",
                "parameters": PAGING + [
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["active", "disabled"]}},
                    {"name": "kind", "in": "query", "schema": {"type": "string", "enum": ["pin", "login"]}},
                ],
                "responses": {"200": {"description": "A page", "content": _json("VoucherLotList")},
                              **_problem_responses(401, 403, 422)},
            },
            "post": {
                "operationId": "createVoucherLot",
                "tags": tags,
                "summary": "Make a lot of vouchers (admin keys); the answer's export_key is shown once",
                "parameters": [IDEMPOTENCY],
                "requestBody": {"required": True, "content": _json("VoucherLotCreate")},
                "responses": {"201": {"description": "Made", "content": _json("VoucherLotCreated")},
                              **_problem_responses(400, 401, 403, 409, 413, 415, 422)},
            },
        },
        "/v1/voucher-lots/{id}": {
            "parameters": [lot_id],
            "get": {
                "operationId": "getVoucherLot",
                "tags": tags,
                "summary": "A lot with its counts",
                "responses": {"200": {"description": "The lot", "content": _json("VoucherLot")},
                              **_problem_responses(401, 403, 404)},
            },
            "patch": {
                "operationId": "updateVoucherLot",
                "tags": tags,
                "summary": "Disable or enable a lot, or rename it",
                "requestBody": {"required": True, "content": _json("VoucherLotUpdate")},
                "responses": {"200": {"description": "Changed", "content": _json("VoucherLot")},
                              **_problem_responses(400, 401, 403, 404, 409, 413, 415, 422)},
            },
        },
        "/v1/voucher-lots/{id}/vouchers": {
            "parameters": [lot_id],
            "get": {
                "operationId": "listVoucher",
                "tags": tags,
                "summary": "The lot's vouchers: which were used, when, by which account",
                "parameters": PAGING + [{"name": "used", "in": "query", "schema": {"type": "boolean"}}],
                "responses": {"200": {"description": "A page", "content": _json("VoucherList")},
                              **_problem_responses(401, 403, 404, 422)},
            },
        },
        "/v1/voucher-lots/{id}/vouchers.csv": {
            "parameters": [lot_id],
            "get": {
                "operationId": "exportVoucherLot",
                "tags": tags,
                "summary": "The lot as CSV: with Export-Key, once and within 24 hours, the secrets; else the state",
                "description": "With the lot's export key: serial, pin (or login, password), value, currency, "
                               "expires_at; the secrets are erased from switchd as they are sent. Without it: "
                               "serial, pin_prefix (or login), state (unused, used, expired, disabled), used_at, "
                               "used_by_account_id.",
                "parameters": [{"name": "Export-Key", "in": "header", "required": False,
                                "schema": {"type": "string", "pattern": EXPORT_KEY_PATTERN},
                                "description": "The export_key the create call returned."}],
                "responses": {
                    "200": {"description": "CSV (RFC 4180)", "content": {"text/csv": {"schema": {"type": "string"}}}},
                    **_problem_responses(401, 403, 404, 409, 422),
                },
            },
        },
        "/v1/accounts/{id}/topups/voucher": {
            "parameters": [dict(ID_PARAM, description="Account id")],
            "post": {
                "operationId": "redeemVoucher",
                "tags": ["accounts"],
                "summary": "Top the account up with a voucher (admin keys and the account's customer)",
                "description": "A voucher works once, for accounts in its currency, until it expires or its lot "
                               "is disabled. 404: wrong PIN or password; 409: used, expired, disabled, another "
                               "currency; 429 after too many failures.",
                "parameters": [IDEMPOTENCY],
                "requestBody": {"required": True, "content": _json("VoucherRedeem")},
                "responses": {
                    "201": {"description": "Topped up", "content": _json("VoucherTopup")},
                    "429": too_many,
                    **_problem_responses(400, 401, 403, 404, 409, 413, 415, 422),
                },
            },
        },
    }


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details.",
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "instance": {"type": "string"},
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                        "required": ["field", "message"],
                    },
                },
            },
            "required": ["type", "title", "status", "detail"],
        },
        "Health": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["ok"]},
                "database": {"type": "string", "enum": ["ok"]},
                "version": {"type": "string"},
            },
            "required": ["status", "database", "version"],
        },
    }
    for resource in COLLECTIONS:
        paths.update(_operations(resource))
        schemas.update(_schemas(resource))
    tx_paths, tx_schemas = _transactions()
    # Keep the account paths together in the document.
    paths.update(tx_paths)
    schemas.update(tx_schemas)
    paths.update(_callback_paths(schemas))
    paths["/v1/trunks/{id}/status"] = {
        "parameters": [ID_PARAM],
        "get": {
            "operationId": "getTrunkStatus",
            "tags": ["trunks"],
            "summary": "Registration and qualify state of the trunk on this node",
            "responses": {
                "200": {"description": "Live state", "content": _json("TrunkStatus")},
                **_problem_responses(401, 403, 404),
            },
        },
    }
    paths["/v1/calls/{id}/playback"] = {
        "parameters": [{"name": "id", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{1,64}$"}}],
        "post": {
            "operationId": "startPlayback",
            "tags": ["calls"],
            "summary": "Play an announcement (8-digit id) or a spoken text to one leg of an answered call",
            "description": "The other party's audio to that leg is muted while it plays; a digit pressed "
                           "by the listener interrupts an interruptible playback.",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "leg": {"type": "string", "enum": ["caller", "callee"]},
                    "announcement": {"type": "string", "pattern": "^[0-9]{8}$"},
                    "text": {"type": "string", "minLength": 1, "maxLength": 1000},
                    "language": {"type": "string", "enum": ["en", "es", "fr", "vi", "zh"], "default": "en"},
                    "interruptible": {"type": "boolean", "default": True},
                },
                "required": ["leg"],
            }}}},
            "responses": {
                "202": {"description": "Playing", "content": {"application/json": {"schema": {
                    "type": "object",
                    "properties": {"call_id": {"type": "string"}, "leg": {"type": "string"},
                                   "seconds": {"type": "number"}},
                    "required": ["call_id", "leg", "seconds"],
                }}}},
                **_problem_responses(400, 401, 403, 404, 409, 413, 415, 422),
            },
        },
        "delete": {
            "operationId": "stopPlayback",
            "tags": ["calls"],
            "summary": "Stop what is playing on the call (one leg with ?leg=)",
            "parameters": [{"name": "leg", "in": "query", "schema": {"type": "string", "enum": ["caller", "callee"]}}],
            "responses": {"204": {"description": "Stopped"}, **_problem_responses(401, 403, 404, 409, 422)},
        },
    }
    paths["/v1/cdrs/{id}/recording"] = {
        "parameters": [ID_PARAM],
        "get": {
            "operationId": "getCdrRecording",
            "tags": ["cdrs"],
            "summary": "The call's recording: stereo WAV, 8 kHz 16-bit, caller left, callee right",
            "responses": {
                "200": {"description": "The WAV file",
                        "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}}},
                **_problem_responses(401, 403, 404),
            },
        },
    }
    schemas["TrunkStatus"] = {
        "type": "object",
        "properties": {
            "trunk_id": {"type": "integer"},
            "registrations": {
                "type": "object",
                "description": "By SIP connection id: switchd's registration to the trunk.",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "state": {"type": "string", "enum": ["unregistered", "registering", "registered", "failed"]},
                        "detail": {"type": "string"},
                        "since": {"type": "number"},
                        "expires_at": {"type": ["number", "null"]},
                    },
                    "required": ["state", "detail", "since", "expires_at"],
                },
            },
            "qualify": {
                "type": ["object", "null"],
                "properties": {
                    "up": {"type": ["boolean", "null"]},
                    "misses": {"type": "integer"},
                    "rtt_ms": {"type": ["number", "null"]},
                    "since": {"type": "number"},
                },
                "required": ["up", "misses", "rtt_ms", "since"],
            },
        },
        "required": ["trunk_id", "registrations", "qualify"],
    }
    call_schema = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "state": {"type": "string", "enum": ["trying", "ringing", "answered", "ended"]},
            "direction": {"type": "string"},
            "account_id": {"type": ["integer", "null"]},
            "service_id": {"type": ["integer", "null"]},
            "trunk_id": {"type": ["integer", "null"]},
            "caller": {"type": "string"},
            "callee": {"type": "string"},
            "start": {"type": "number", "description": "Unix time the INVITE arrived."},
            "answer": {"type": ["number", "null"]},
            "max_seconds": {"type": ["integer", "null"], "description": "Cut-off the balance allows."},
            "dtmf": {"type": "string", "description": "Digits pressed so far (both legs, in order)."},
            "recording": {"type": ["string", "null"], "description": "Recording file, if recorded."},
            "media": {
                "type": "array",
                "description": "Relay sessions, one per m= line (empty: media not relayed).",
                "items": {
                    "type": "object",
                    "properties": {
                        side: {
                            "type": "object",
                            "description": f"The leg facing the {who}.",
                            "properties": {
                                "local_port": {"type": "integer", "description": "Relay RTP port (RTCP +1)."},
                                "remote": {"type": ["string", "null"], "description": "Where RTP is sent (host:port)."},
                                "comedia": {"type": "boolean"},
                                "latched": {"type": "boolean"},
                                "packets_in": {"type": "integer"},
                                "packets_out": {"type": "integer"},
                                "dropped": {"type": "integer"},
                            },
                            "required": ["local_port", "remote", "comedia", "latched", "packets_in",
                                         "packets_out", "dropped"],
                        }
                        for side, who in (("caller", "caller"), ("callee", "callee"))
                    },
                    "required": ["caller", "callee"],
                },
            },
        },
        "required": ["id", "state", "direction", "account_id", "service_id", "trunk_id", "caller", "callee",
                     "start", "answer", "max_seconds", "dtmf", "recording", "media"],
    }
    schemas["Call"] = call_schema
    call_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{1,64}$"}}
    paths["/v1/calls"] = {
        "get": {
            "operationId": "listCall",
            "tags": ["calls"],
            "summary": "Active calls on this node",
            "parameters": [
                {"name": "account_id", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}},
                {"name": "trunk_id", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                {"name": "cursor", "in": "query", "schema": {"type": "string"},
                 "description": "``next_cursor`` of the previous page (calls are in id order)."},
            ],
            "responses": {
                "200": {
                    "description": "Active calls",
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Call"}},
                                       "next_cursor": {"type": ["string", "null"]}},
                        "required": ["items", "next_cursor"],
                    }}},
                },
                **_problem_responses(401, 422),
            },
        }
    }
    paths["/v1/calls/{id}"] = {
        "parameters": [call_id],
        "get": {
            "operationId": "getCall",
            "tags": ["calls"],
            "responses": {"200": {"description": "The call", "content": _json("Call")}, **_problem_responses(401, 404)},
        },
        "delete": {
            "operationId": "deleteCall",
            "tags": ["calls"],
            "summary": "End the call (BYE to both legs, or 480 and CANCEL before answer)",
            "responses": {"204": {"description": "Ended"}, **_problem_responses(401, 404)},
        },
    }
    paths.update(_sms_paths(schemas))
    paths.update(_voucher_paths(schemas))
    paths["/health"] = {
        "get": {
            "operationId": "health",
            "tags": ["operations"],
            "security": [],
            "responses": {
                "200": {"description": "Up, database reachable", "content": _json("Health")},
                **_problem_responses(503),
            },
        }
    }
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "tags": ["operations"],
            "security": [],
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "switchd provisioning API",
            "version": __version__,
            "description": "Customers, accounts, services, connections, tariffs, routing, "
            "trunks, SMPP links, API keys and CDRs of a switchd node.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
            "responses": {
                "Problem": {
                    "description": "An error (RFC 9457)",
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                }
            },
        },
    }
