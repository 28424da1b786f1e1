"""Generic create/read/update/delete over a Resource, inside one transaction.

These run in a database thread (called through ``Database.run``); they take a
connection and return plain dicts ready for JSON, or raise a Problem.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from sqlalchemy import and_, delete, exists, insert, select, true, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from .auth import Principal
from .problem import Problem, invalid
from .resources import BY_PATH
from .schema import Resource, WriteContext, render


def encode_cursor(last_id: int) -> str:
    """Keyset pagination: the cursor is the last id of the page."""
    return str(last_id)


def decode_cursor(cursor: str) -> int:
    if not cursor.isdigit() or len(cursor) > 19:
        raise invalid([{"field": "cursor", "message": "is not a cursor this API returned"}])
    return min(int(cursor), 2**63 - 1)


def scope(resource: Resource, principal: Principal) -> ColumnElement:
    """What rows of the resource the caller may see."""
    table = resource.table
    clause: ColumnElement = true()
    if resource.deleted_column is not None:
        clause = table.c[resource.deleted_column].is_(None)
    if principal.admin:
        return clause
    if resource.owner is None or principal.customer_id is None:
        raise Problem(403, "this collection needs an admin key")
    return and_(clause, resource.owner(principal.customer_id))


def allow_write(resource: Resource, principal: Principal, operation: str) -> None:
    allowed = {
        "create": resource.creatable,
        "update": resource.updatable,
        "delete": resource.deletable,
    }[operation]
    if not allowed:
        raise Problem(405, f"{resource.path} cannot be {operation}d through the API")
    if principal.admin:
        return
    scope(resource, principal)  # 403 for admin-only collections
    if operation not in resource.customer_writes:
        raise Problem(403, f"a customer key cannot {operation} {resource.path}")


def _columns(resource: Resource):
    return [resource.table.c[f.name] for f in resource.output_fields]


def _load(conn: Connection, resource: Resource, principal: Principal, object_id: int):
    table = resource.table
    return conn.execute(
        select(*_columns(resource)).where(table.c.id == object_id, scope(resource, principal))
    ).first()


def still_exists(conn: Connection, resource: Resource, object_id: Any) -> bool:
    """Whether the object is still there (deleted objects are not)."""
    if not isinstance(object_id, int):
        return False
    clause = resource.table.c.id == object_id
    if resource.deleted_column is not None:
        clause = and_(clause, resource.table.c[resource.deleted_column].is_(None))
    return conn.execute(select(resource.table.c.id).where(clause)).first() is not None


def get(conn: Connection, path: str, principal: Principal, object_id: int) -> dict[str, Any]:
    resource = BY_PATH[path]
    row = _load(conn, resource, principal, object_id)
    if row is None:
        raise Problem(404, f"no such object in {resource.path}")
    return render(resource, row)


def list_(
    conn: Connection,
    path: str,
    principal: Principal,
    filters: dict[str, Any],
    limit: int,
    cursor: str | None,
    extra: list[ColumnElement] | None = None,
) -> dict[str, Any]:
    resource = BY_PATH[path]
    table = resource.table
    query = select(*_columns(resource)).where(scope(resource, principal))
    for name, value in filters.items():
        query = query.where(table.c[name] == value)
    for clause in extra or ():
        query = query.where(clause)
    if cursor is not None:
        query = query.where(table.c.id > decode_cursor(cursor))
    rows = conn.execute(query.order_by(table.c.id).limit(limit + 1)).all()
    items = [render(resource, row) for row in rows[:limit]]
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return {"items": items, "next_cursor": next_cursor}


def check_references(
    conn: Connection, resource: Resource, principal: Principal, values: dict[str, Any]
) -> None:
    """Every referenced id must exist and be visible to the caller."""
    errors = []
    for f in resource.fields:
        if f.ref is None or values.get(f.name) is None:
            continue
        target = BY_PATH[f.ref]
        try:
            visible = scope(target, principal)
        except Problem:
            visible = true()  # carrier objects (tariffs, trunks) may be referenced
        found = conn.execute(
            select(exists().where(target.table.c.id == values[f.name], visible))
        ).scalar()
        if not found:
            errors.append({"field": f.name, "message": f"no such object in {target.path}"})
    if errors:
        # The body is well-formed; what it names does not exist (now).
        raise Problem(
            409,
            f"{len(errors)} referenced object{'s' if len(errors) != 1 else ''} not found",
            title="Referenced object not found",
            errors=errors,
        )


def _conflict(resource: Resource, error: IntegrityError) -> Problem:
    message = str(error.orig).lower()
    if "unique" in message or "duplicate" in message:
        return Problem(409, f"an object in {resource.path} with these values already exists")
    if "foreign key" in message or "violates" in message or "constraint" in message:
        return Problem(409, f"the change conflicts with objects that refer to this one: {resource.path}")
    return Problem(409, f"the change conflicts with the stored data of {resource.path}")


def _stamped(resource: Resource, values: dict[str, Any], now: datetime.datetime, new: bool) -> dict[str, Any]:
    table = resource.table
    stamped = dict(values)
    if new and "created_at" in table.c:
        stamped["created_at"] = now
    if "updated_at" in table.c:
        stamped["updated_at"] = now
    return stamped


def create(conn: Connection, path: str, ctx: WriteContext, values: dict[str, Any]) -> dict[str, Any]:
    resource = BY_PATH[path]
    principal, now = ctx.principal, ctx.now
    check_references(conn, resource, principal, values)
    extras: dict[str, Any] = {}
    try:
        with conn.begin_nested():
            if resource.on_create is not None:
                extras = resource.on_create(conn, values, ctx)
            if "id" in values:  # the hook stored the object itself
                object_id = values["id"]
            else:
                object_id = conn.execute(
                    insert(resource.table)
                    .values(**_stamped(resource, values, now, new=True))
                    .returning(resource.table.c.id)
                ).scalar_one()
    except IntegrityError as e:
        raise _conflict(resource, e) from None
    row = _load(conn, resource, principal, object_id)
    body = render(resource, row)
    body.update(extras)
    return body


def modify(
    conn: Connection, path: str, ctx: WriteContext, object_id: int, values: dict[str, Any]
) -> dict[str, Any]:
    resource = BY_PATH[path]
    principal, now = ctx.principal, ctx.now
    if _load(conn, resource, principal, object_id) is None:
        raise Problem(404, f"no such object in {resource.path}")
    check_references(conn, resource, principal, values)
    if resource.on_update is not None:
        resource.on_update(conn, values, dataclasses.replace(ctx, object_id=object_id))
    if values:
        try:
            with conn.begin_nested():
                conn.execute(
                    update(resource.table)
                    .where(resource.table.c.id == object_id)
                    .values(**_stamped(resource, values, now, new=False))
                )
        except IntegrityError as e:
            raise _conflict(resource, e) from None
    return render(resource, _load(conn, resource, principal, object_id))


def remove(
    conn: Connection,
    path: str,
    principal: Principal,
    object_id: int,
    now: datetime.datetime,
) -> None:
    resource = BY_PATH[path]
    if _load(conn, resource, principal, object_id) is None:
        raise Problem(404, f"no such object in {resource.path}")
    if resource.on_delete is not None:
        resource.on_delete(conn, object_id, principal)
    table = resource.table
    try:
        with conn.begin_nested():
            if resource.deleted_column is not None:
                conn.execute(
                    update(table).where(table.c.id == object_id).values(**{resource.deleted_column: now})
                )
            else:
                conn.execute(delete(table).where(table.c.id == object_id))
    except IntegrityError as e:
        raise _conflict(resource, e) from None
