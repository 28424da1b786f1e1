"""RFC 9457 problem details: every API error is one of these."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error answer. ``errors`` lists field problems for validation errors."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        type_: str = "about:blank",
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.errors = errors
        self.headers = headers or {}
        self.type = type_

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        if self.errors is not None:
            body["errors"] = self.errors
        return body

    def render(self, instance: str | None = None) -> bytes:
        return json.dumps(self.body(instance)).encode("utf-8")


def invalid(errors: list[dict[str, str]]) -> Problem:
    """422 with one entry per bad field: ``{"field": ..., "message": ...}``."""
    count = len(errors)
    return Problem(
        422,
        f"{count} field{'s' if count != 1 else ''} failed validation",
        title="Validation failed",
        errors=errors,
    )
