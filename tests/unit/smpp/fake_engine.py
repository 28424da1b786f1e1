"""An in-memory message engine with the contract of ``switchd.sms.engine.MessageEngine``.

Unit tests of the SMPP server and the HTTP SMS API drive it by hand:
``hold()`` makes the next submits wait, ``refuse`` makes them fail,
``store()`` adds a receipt or MO for a connection (pushed at once to an
attached session, else kept for the next attach, as the engine does).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from twisted.internet.defer import Deferred

from switchd.sms.engine import (
    Accepted,
    Delivery,
    MessageInfo,
    MessageOrigin,
    MessageRefused,
    Submission,
)

__all__ = ["FakeEngine", "refused"]


def refused(status: int, http_status: int, reason: str) -> MessageRefused:
    return MessageRefused(status, http_status, reason)


class FakeEngine:
    def __init__(self) -> None:
        self.codings: dict[str, int] = {}
        self.submitted: list[tuple[MessageOrigin, Submission]] = []
        self.infos: dict[str, tuple[MessageOrigin, MessageInfo]] = {}
        self.cancelled: list[str] = []
        self.replaced: list[tuple[str, bytes, int]] = []
        self.refuse: Exception | None = None
        self._holds: list[Deferred] = []
        self.holding = False
        self.pushers: dict[int, list[Callable[[Delivery], Deferred]]] = {}
        self.outbox: dict[int, list[Delivery]] = {}
        self.delivered: list[Delivery] = []
        self.failed: list[tuple[Delivery, Exception]] = []
        self._turn = 0
        self.parts = 1

    # -- the contract -----------------------------------------------------------

    async def submit(self, origin: MessageOrigin, submission: Submission) -> Accepted:
        if self.holding:
            d: Deferred = Deferred()
            self._holds.append(d)
            await d
        if self.refuse is not None:
            raise self.refuse
        message_id = f"m{len(self.submitted) + 1:04d}"
        self.submitted.append((origin, submission))
        self.codings[message_id] = submission.data_coding
        now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        self.infos[message_id] = (
            origin,
            MessageInfo(message_id=message_id, state="ENROUTE", parts=self.parts, error_code=None,
                        submitted_at=now, done_at=None, source=submission.source,
                        destination=submission.destination),
        )
        return Accepted(message_id=message_id, parts=self.parts)

    async def query(self, origin: MessageOrigin, message_id: str) -> MessageInfo | None:
        found = self.infos.get(message_id)
        if found is None or found[0].connection_id != origin.connection_id or found[0].kind != origin.kind:
            return None
        return found[1]

    async def cancel(self, origin: MessageOrigin, message_id: str) -> bool:
        if await self.query(origin, message_id) is None:
            return False
        self.cancelled.append(message_id)
        return True

    async def cancel_from(self, origin: MessageOrigin, source: str, destination: str | None) -> int:
        ids = [mid for mid, (o, info) in self.infos.items()
               if o.connection_id == origin.connection_id and o.kind == origin.kind and info.state == "ENROUTE"
               and info.source == source and destination in (None, info.destination) and mid not in self.cancelled]
        self.cancelled += ids
        return len(ids)

    async def replace(self, origin: MessageOrigin, message_id: str, content: bytes, data_coding: int) -> bool:
        if await self.query(origin, message_id) is None:
            return False
        self.replaced.append((message_id, content, data_coding))
        return True

    def attach(self, connection_id: int, push: Callable[[Delivery], Deferred]) -> Callable[[], None]:
        pushers = self.pushers.setdefault(connection_id, [])
        pushers.append(push)
        for delivery in list(self.outbox.get(connection_id, [])):
            self._push(connection_id, delivery)

        def detach() -> None:
            if push in pushers:
                pushers.remove(push)

        return detach

    # -- test controls ------------------------------------------------------------------

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        self.holding = False
        holds, self._holds = self._holds, []
        for d in holds:
            d.callback(None)

    def finish(self, message_id: str, state: str, error_code: int | None = None) -> None:
        origin, info = self.infos[message_id]
        done = datetime.datetime(2026, 1, 1, 0, 5, tzinfo=datetime.UTC)
        self.infos[message_id] = (origin, MessageInfo(
            message_id=info.message_id, state=state, parts=info.parts, error_code=error_code,
            submitted_at=info.submitted_at, done_at=done, source=info.source, destination=info.destination))

    def store(self, connection_id: int, delivery: Delivery) -> None:
        self.outbox.setdefault(connection_id, []).append(delivery)
        self._push(connection_id, delivery)

    def _push(self, connection_id: int, delivery: Delivery) -> None:
        pushers = self.pushers.get(connection_id)
        if not pushers:
            return
        self._turn += 1
        push = pushers[self._turn % len(pushers)]
        d = push(delivery)

        def done(_: object) -> None:
            box = self.outbox.get(connection_id, [])
            if delivery in box:
                box.remove(delivery)
                self.delivered.append(delivery)

        def failed(failure) -> None:
            self.failed.append((delivery, failure.value))

        d.addCallbacks(done, failed)
