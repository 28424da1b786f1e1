"""A synchronous test client for the Klein API, over treq's StubTreq."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred


@dataclass
class Answer:
    status: int
    headers: Any
    body: Any
    raw: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


class Client:
    def __init__(self, resource) -> None:
        self.stub = StubTreq(resource)

    def _result(self, d: Deferred) -> Any:
        self.stub.flush()
        results: list[Any] = []
        d.addBoth(results.append)
        self.stub.flush()
        assert results, "the request did not complete"
        if hasattr(results[0], "raiseException"):
            results[0].raiseException()
        return results[0]

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        response = self._result(
            self.stub.request(method, "http://switchd.test" + path, headers=sent, data=data)
        )
        content = self._result(response.content())
        ctype = (response.headers.getRawHeaders("Content-Type") or [""])[0]
        parsed = json.loads(content) if "json" in ctype and content else content
        return Answer(response.code, response.headers, parsed, content)
