"""Calls as the core sees them: who pays, where they go, what state they are in.

A :class:`Call` is protocol-independent: the B2BUA (or, later, the callback
engine) drives it and publishes a :class:`CallStateChanged` event on every
change; the registry answers "which calls are up?" for the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from . import ids
from .events import Event, EventBus

STATES = ("trying", "ringing", "answered", "ended")


@dataclass(frozen=True)
class CallStateChanged(Event):
    call_id: str
    state: str
    account_id: int | None
    service_id: int | None
    trunk_id: int | None
    caller: str
    callee: str
    sip_code: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class CallDtmf(Event):
    """A DTMF digit heard on a call: RFC 4733 telephone-event or SIP INFO."""

    call_id: str
    leg: str  # "caller" or "callee": who pressed it
    digit: str
    duration_ms: int
    source: str  # "rfc4733" or "info"


@dataclass
class Call:
    """One call through the switch (both legs)."""

    caller: str
    callee: str
    start: float
    id: str = field(default_factory=lambda: ids.token_hex(12))
    direction: str = "outbound"
    account_id: int | None = None
    service_id: int | None = None
    trunk_id: int | None = None
    trunk_name: str | None = None
    state: str = "trying"
    answer: float | None = None
    end: float | None = None
    hangup_side: str | None = None
    sip_code: int | None = None
    reason: str = ""
    max_seconds: int | None = None
    currency: str | None = None
    rate: Any = None  # billing.rating.Rate
    recording: str | None = None  # the call's WAV recording, under [media] recordings_dir
    dtmf: str = ""  # digits pressed so far, both legs
    # The relay sessions' state for the API (set by the B2BUA when media is relayed).
    media_info: Callable[[], list[dict[str, Any]]] | None = field(default=None, repr=False)
    # How to end the call from outside (API, max duration): set by the leg owner.
    hangup: Callable[[str], None] | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "direction": self.direction,
            "account_id": self.account_id,
            "service_id": self.service_id,
            "trunk_id": self.trunk_id,
            "caller": self.caller,
            "callee": self.callee,
            "start": self.start,
            "answer": self.answer,
            "max_seconds": self.max_seconds,
            "dtmf": self.dtmf,
            "recording": self.recording,
            "media": self.media_info() if self.media_info is not None else [],
        }


class CallRegistry:
    """The calls alive on this node."""

    def __init__(self, bus: EventBus, clock) -> None:
        self.bus = bus
        self.clock = clock
        self._calls: dict[str, Call] = {}

    def add(self, call: Call) -> None:
        self._calls[call.id] = call
        self._publish(call)

    def get(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    def set_state(self, call: Call, state: str) -> None:
        if call.state == state:
            return
        call.state = state
        if state == "ended":
            self._calls.pop(call.id, None)
        self._publish(call)

    def _publish(self, call: Call) -> None:
        self.bus.publish(
            CallStateChanged(
                at=self.clock.seconds(),
                call_id=call.id,
                state=call.state,
                account_id=call.account_id,
                service_id=call.service_id,
                trunk_id=call.trunk_id,
                caller=call.caller,
                callee=call.callee,
                sip_code=call.sip_code,
                reason=call.reason,
            )
        )

    def active(self, account_id: int | None = None, trunk_id: int | None = None) -> list[Call]:
        return [
            c
            for c in self._calls.values()
            if (account_id is None or c.account_id == account_id) and (trunk_id is None or c.trunk_id == trunk_id)
        ]

    def __len__(self) -> int:
        return len(self._calls)
