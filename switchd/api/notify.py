"""Fire-and-forget JSON notifications with retries (click-to-dial status URLs).

``JsonPoster.post(url, payload)`` returns at once; the POST runs in the
background with ``timeout`` seconds per attempt and, after a failure (no
answer, a 5xx or 429), is tried again after ``backoff`` seconds, doubling up to
``attempts`` tries. Posts to one URL keep their order. Nothing here blocks:
the notifications of a callback cannot slow the calls down.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger


class JsonPoster:
    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        request: Callable[..., Deferred],
        *,
        attempts: int = 5,
        backoff: float = 2.0,
        timeout: float = 10.0,
        user_agent: str = "switchd",
        max_queued: int = 10000,
    ) -> None:
        self.clock = clock
        self.request = request  # treq.request-like: (method, url, data=, headers=, timeout=)
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self.user_agent = user_agent
        self.max_queued = max_queued
        self.queues: dict[str, deque[dict[str, Any]]] = {}
        self.sent = 0
        self.failed = 0

    def post(self, url: str, payload: dict[str, Any]) -> None:
        queue = self.queues.get(url)
        if queue is None:
            queue = self.queues[url] = deque()
            queue.append(payload)
            ensureDeferred(self._drain(url)).addErrback(
                lambda f: self.log.failure("notifications to {url} stopped", f, url=url))
            return
        if sum(len(q) for q in self.queues.values()) >= self.max_queued:
            self.failed += 1
            self.log.warn("notification to {url} dropped: {n} already queued", url=url, n=self.max_queued)
            return
        queue.append(payload)

    async def _drain(self, url: str) -> None:
        queue = self.queues[url]
        while queue:
            payload = queue[0]
            if await self._deliver(url, payload):
                self.sent += 1
            else:
                self.failed += 1
            queue.popleft()
        del self.queues[url]

    async def _deliver(self, url: str, payload: dict[str, Any]) -> bool:
        body = json.dumps(payload).encode()
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                response = await self.request(
                    "POST", url, data=body, timeout=self.timeout,
                    headers={b"Content-Type": [b"application/json"], b"User-Agent": [self.user_agent.encode()]},
                )
                code = response.code
                await response.content()
                if code < 300:
                    return True
                if code < 500 and code != 429:
                    self.log.warn("notification to {url} refused with {code}; not retried", url=url, code=code)
                    return False
                problem = f"HTTP {code}"
            except Exception as error:
                problem = str(error) or type(error).__name__
            if attempt < self.attempts:
                self.log.info("notification to {url} failed ({problem}); retry {n} in {delay:.0f} s",
                              url=url, problem=problem, n=attempt, delay=delay)
                await deferLater(self.clock, delay, lambda: None)
                delay *= 2
        self.log.warn("notification to {url} given up after {n} attempts", url=url, n=self.attempts)
        return False
