"""Typed events and one in-process bus.

Adapters and the core publish what happened (a trunk went down, a contact
registered); sinks subscribe (metrics, the router, later the database, AMQP,
webhooks). A sink that raises is logged and does not stop the others or the
publisher: an event never fails the protocol work that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

from twisted.logger import Logger

E = TypeVar("E")


@dataclass(frozen=True)
class Event:
    """Base of every event; ``at`` is the clock's seconds when it happened."""

    at: float


@dataclass(frozen=True)
class TrunkRegistrationChanged(Event):
    trunk_id: int
    trunk: str
    state: str  # unregistered, registering, registered, failed
    detail: str = ""


@dataclass(frozen=True)
class TrunkReachabilityChanged(Event):
    trunk_id: int
    trunk: str
    up: bool
    rtt_ms: float | None = None


@dataclass(frozen=True)
class ContactRegistered(Event):
    account_id: int
    username: str
    contact: str
    source: str
    expires: int


@dataclass(frozen=True)
class ContactUnregistered(Event):
    account_id: int
    username: str  # empty when the binding lapsed (only the account id is at hand)
    contact: str
    reason: str  # expired, removed, evicted


@dataclass(frozen=True)
class SourceBanned(Event):
    source: str
    reason: str  # flood, auth-failures, scanner
    seconds: float


class EventBus:
    """Synchronous fan-out of events to subscribers, by event class."""

    log = Logger()

    def __init__(self) -> None:
        self._subscribers: dict[type, list[Callable[[Event], None]]] = {}

    def subscribe(self, kind: type[E], sink: Callable[[E], None]) -> Callable[[], None]:
        """Call ``sink`` for every event of class ``kind`` (or a subclass).

        Returns a function that unsubscribes.
        """
        sinks = self._subscribers.setdefault(kind, [])
        sinks.append(sink)  # type: ignore[arg-type]

        def unsubscribe() -> None:
            if sink in sinks:
                sinks.remove(sink)  # type: ignore[arg-type]

        return unsubscribe

    def publish(self, event: Event) -> None:
        for kind in type(event).__mro__:
            for sink in list(self._subscribers.get(kind, ())):
                try:
                    sink(event)
                except Exception:
                    self.log.failure("event sink {sink!r} failed on {event!r}", sink=sink, event=event)
