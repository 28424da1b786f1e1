"""Protection of the SIP edge: floods, password guessing, scanners.

Every packet's source first goes through :meth:`Protection.admit`: a banned
source costs nothing more; a source sending faster than ``flood_rate``
(token bucket from the shared rate limiter) is banned for ``ban_seconds``.
Failed digest attempts draw from a second bucket per address; when it is
empty the address is banned. Requests from known scanners are dropped
without an answer. Trusted networks and trunk peers are never banned.
"""

from __future__ import annotations

import ipaddress
from typing import Callable, Iterable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..core.events import EventBus, SourceBanned
from ..core.ratelimit import RateLimiter
from .message import Request

FLOOD = "sip-source"
AUTH = "sip-auth-failure"


class Protection:
    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        limiter: RateLimiter,
        bus: EventBus,
        *,
        flood_rate: float = 100,
        flood_burst: float = 200,
        ban_seconds: float = 300,
        auth_failures: int = 10,
        auth_window: float = 60,
        scanners: Iterable[str] = (),
        trusted: Iterable[str] = (),
        is_peer: Callable[[str], bool] = lambda host: False,
        count: Callable[[str, str], None] = lambda name, reason: None,
    ) -> None:
        self.clock = clock
        self.limiter = limiter
        self.bus = bus
        self.ban_seconds = ban_seconds
        self.scanners = tuple(s.lower() for s in scanners)
        self.trusted = tuple(ipaddress.ip_network(n, strict=False) for n in trusted)
        self.is_peer = is_peer
        self.count = count
        self.bans: dict[str, float] = {}
        if flood_rate > 0:
            limiter.set_default(FLOOD, flood_rate, flood_burst)
        limiter.set_default(AUTH, auth_failures / auth_window, auth_failures)

    def is_trusted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.trusted) or self.is_peer(host)

    def admit(self, host: str) -> bool:
        """May this packet be looked at? Called for every packet, before parsing."""
        until = self.bans.get(host)
        if until is not None:
            if until > self.clock.seconds():
                return False
            del self.bans[host]
        if not self.limiter.allow(FLOOD, host).allowed:
            if self.is_trusted(host):
                return True
            self.ban(host, "flood")
            return False
        return True

    def screen(self, request: Request) -> str | None:
        """Why a parsed request must be dropped silently, or None."""
        agent = (request.get("User-Agent") or "").lower()
        if agent and any(word in agent for word in self.scanners):
            self.count("dropped", "scanner")
            return "scanner"
        return None

    def auth_failed(self, host: str) -> None:
        """Count a failed digest attempt; too many ban the address."""
        self.count("auth-failures", "digest")
        if not self.limiter.allow(AUTH, host).allowed and not self.is_trusted(host):
            self.ban(host, "auth-failures")

    def ban(self, host: str, reason: str) -> None:
        now = self.clock.seconds()
        self.bans[host] = now + self.ban_seconds
        self.count("bans", reason)
        self.log.warn("banning {host} for {seconds} s: {reason}", host=host, seconds=self.ban_seconds, reason=reason)
        self.bus.publish(SourceBanned(at=now, source=host, reason=reason, seconds=self.ban_seconds))

    def prune(self) -> None:
        now = self.clock.seconds()
        for host in [h for h, until in self.bans.items() if until <= now]:
            del self.bans[host]
        self.limiter.prune()
