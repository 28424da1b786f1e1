"""Declarative resource schemas: one description drives validation, JSON
output and the OpenAPI document, so the three cannot disagree."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

from sqlalchemy import Table
from sqlalchemy.sql.elements import ColumnElement

from ..store.types import to_money
from .problem import invalid

INT32_MAX = 2**31 - 1
ID_MAX = 2**63 - 1
MONEY_PATTERN = r"^-?[0-9]{1,12}(\.[0-9]{1,6})?$"
_MONEY_RE = re.compile(MONEY_PATTERN)
# Printable text: no C0/C1 control characters (NUL breaks PostgreSQL, the
# rest breaks logs, SIP headers and SMPP fields).
TEXT_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f]*$"
_CONTROL_RE = re.compile(r"[\u0000-\u001f\u007f-\u009f]")


@dataclass(frozen=True)
class WriteContext:
    """What a create or update hook may need besides the values."""

    principal: Any  # auth.Principal
    now: datetime.datetime
    sip_realm: str = "switchd"
    object_id: int | None = None  # set for updates


@dataclass(frozen=True)
class Field:
    """One attribute of a resource, as the API sees it."""

    name: str
    type: str  # string, integer, boolean, money, datetime, object, id
    doc: str
    required: bool = False
    default: Any = None
    nullable: bool = False
    readonly: bool = False
    writeonly: bool = False
    immutable: bool = False
    admin_only: bool = False
    enum: tuple[Any, ...] = ()
    min_length: int | None = None
    max_length: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    pattern: str | None = None
    ref: str | None = None
    column: bool = True  # False: accepted on input, handled by a hook

    def json_schema(self, for_input: bool) -> dict[str, Any]:
        s: dict[str, Any]
        if self.type == "string":
            s = {"type": "string"}
            if self.max_length is not None:
                s["maxLength"] = self.max_length
            if self.min_length is not None:
                s["minLength"] = self.min_length
            if self.pattern is not None:
                s["pattern"] = self.pattern
            elif not self.enum and for_input:
                s["pattern"] = TEXT_PATTERN
        elif self.type in ("integer", "id"):
            s = {"type": "integer"}
            s["minimum"] = self.minimum if self.minimum is not None else (
                1 if self.type == "id" else 0
            )
            s["maximum"] = self.maximum if self.maximum is not None else (
                ID_MAX if self.type == "id" else INT32_MAX
            )
        elif self.type == "boolean":
            s = {"type": "boolean"}
        elif self.type == "money":
            s = {"type": "string", "pattern": self.pattern if for_input and self.pattern else MONEY_PATTERN}
        elif self.type == "datetime":
            s = {"type": "string", "format": "date-time"}
        elif self.type == "object":
            s = {
                "type": "object",
                "maxProperties": 20,
                "propertyNames": {"pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$"},
                "additionalProperties": {
                    "type": "string",
                    "maxLength": 1000,
                    "pattern": TEXT_PATTERN,
                },
            }
        else:  # pragma: no cover - a programming error
            raise AssertionError(self.type)
        if self.enum:
            s["enum"] = list(self.enum)
        if self.nullable:
            s["type"] = [s["type"], "null"]
            if "enum" in s:
                s["enum"] = s["enum"] + [None]
        s["description"] = self.doc
        if self.default is not None and not self.readonly:
            s["default"] = self.default
        return s


@dataclass
class Resource:
    """A collection under ``/v1/<path>`` backed by one table."""

    name: str  # schema name, e.g. "Customer"
    path: str  # URL path under /v1, e.g. "customers"
    table: Table
    fields: tuple[Field, ...]
    doc: str
    # SQL clause restricting rows to one customer; None: admin-only collection.
    owner: Callable[[int], ColumnElement] | None = None
    creatable: bool = True
    updatable: bool = True
    deletable: bool = True
    customer_writes: frozenset[str] = frozenset()  # "create", "update", "delete"
    filters: tuple[str, ...] = ()
    # Hook run in the create transaction: (conn, values, WriteContext) ->
    # fields shown once in the 201 answer (new secrets).
    on_create: Callable[..., dict[str, Any]] | None = None
    on_update: Callable[..., None] | None = None
    # Hook run before a delete: (conn, object_id, principal) -> None or raise.
    on_delete: Callable[..., None] | None = None
    once_fields: tuple[Field, ...] = ()  # shown only in the 201 answer
    # Set to the time on DELETE instead of deleting; such rows are invisible.
    deleted_column: str | None = None

    def __post_init__(self) -> None:
        self.by_name = {f.name: f for f in self.fields}

    @property
    def output_fields(self) -> list[Field]:
        return [f for f in self.fields if not f.writeonly]


def _check_text(value: str) -> str | None:
    if _CONTROL_RE.search(value):
        return "must not contain control characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text"
    return None


def coerce(f: Field, value: Any) -> tuple[Any, str | None]:
    """Check one input value against its field; returns (value, error)."""
    if value is None:
        if f.nullable:
            return None, None
        return None, "must not be null"
    if f.type == "string":
        if not isinstance(value, str):
            return None, "must be a string"
        if f.enum and value not in f.enum:
            return None, "must be one of " + ", ".join(map(str, f.enum))
        if f.max_length is not None and len(value) > f.max_length:
            return None, f"must be at most {f.max_length} characters"
        if f.min_length is not None and len(value) < f.min_length:
            return None, f"must be at least {f.min_length} characters"
        if f.pattern is not None and not re.search(f.pattern, value):
            return None, f"must match {f.pattern}"
        problem = _check_text(value)
        if problem:
            return None, problem
        return value, None
    if f.type in ("integer", "id"):
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            value = int(value)  # JSON Schema: 2.0 is an integer
        if isinstance(value, bool) or not isinstance(value, int):
            return None, "must be an integer"
        schema = f.json_schema(True)
        if value < schema["minimum"] or value > schema["maximum"]:
            return None, f"must be between {schema['minimum']} and {schema['maximum']}"
        return value, None
    if f.type == "boolean":
        if not isinstance(value, bool):
            return None, "must be true or false"
        return value, None
    if f.type == "money":
        if not isinstance(value, str) or not _MONEY_RE.match(value):
            return None, "must be a decimal amount in a string, like \"12.50\""
        if f.pattern is not None and not re.search(f.pattern, value):
            return None, "must be greater than zero"
        try:
            return to_money(Decimal(value)), None
        except InvalidOperation:  # pragma: no cover - the pattern prevents it
            return None, "must be a decimal amount"
    if f.type == "object":
        schema = f.json_schema(True)
        if not isinstance(value, dict):
            return None, "must be an object"
        if len(value) > schema["maxProperties"]:
            return None, f"must have at most {schema['maxProperties']} entries"
        name_re = schema["propertyNames"]["pattern"]
        for k, v in value.items():
            if not re.match(name_re, k):
                return None, f"{k!r} is not a valid header name"
            if not isinstance(v, str) or len(v) > 1000 or _check_text(v):
                return None, f"the value of {k!r} must be printable text up to 1000 characters"
        return dict(value), None
    return None, "cannot be set"


def validate(
    resource: Resource, body: Any, *, creating: bool, admin: bool
) -> dict[str, Any]:
    """Input JSON -> column values, or a 422 Problem listing every bad field."""
    if not isinstance(body, dict):
        raise invalid([{"field": "", "message": "the body must be a JSON object"}])
    errors: list[dict[str, str]] = []
    values: dict[str, Any] = {}
    for name, raw in body.items():
        f = resource.by_name.get(name)
        if f is None:
            errors.append({"field": name, "message": "unknown field"})
            continue
        if f.readonly:
            errors.append({"field": name, "message": "is read-only"})
            continue
        if not creating and f.immutable:
            errors.append({"field": name, "message": "cannot be changed after creation"})
            continue
        if f.admin_only and not admin:
            errors.append({"field": name, "message": "may be set only with an admin key"})
            continue
        value, problem = coerce(f, raw)
        if problem:
            errors.append({"field": name, "message": problem})
        else:
            values[name] = value
    if creating:
        for f in resource.fields:
            if f.readonly or f.name in body:
                continue
            if f.required and not (f.admin_only and not admin):
                errors.append({"field": f.name, "message": "is required"})
            elif f.default is not None:
                values[f.name] = coerce(f, f.default)[0]
    if errors:
        raise invalid(errors)
    return values


def render_value(f: Field, value: Any) -> Any:
    if value is None:
        return None
    if f.type == "money":
        return str(value)
    if f.type == "datetime":
        return format_time(value)
    return value


def format_time(value: datetime.datetime) -> str:
    return value.astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def render(resource: Resource, row: Any) -> dict[str, Any]:
    mapping = row._mapping
    return {f.name: render_value(f, mapping[f.name]) for f in resource.output_fields}
