"""SIP trunks: registration to carriers, OPTIONS qualify, source recognition.

Trunk settings live in the database (``trunks`` and ``sip_connections``) and
are re-read every ``reload_seconds``, so changes made through the API apply
without a restart. For each SIP connection:

- "Require registration with credentials" (``auth_type = registration``):
  switchd registers to the trunk, answers its digest challenge, refreshes
  before the registration lapses and retries with backoff when it fails;
- "Do not require registration" (``auth_type = ip``): the trunk is
  recognised by the source address of its traffic (its host and the
  addresses listed as Outbound SRC hardware);
- "Qualify" (``qualify_ms > 0``): an OPTIONS every ``qualify_ms``; a trunk
  that misses ``qualify_misses`` in a row is down, any answer (even 404 or
  501) brings it up.

States are events on the bus (for the router), gauges in ``/metrics`` and a
status document in the API.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.engine import Connection
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..core import ids
from ..core.events import EventBus, TrunkReachabilityChanged, TrunkRegistrationChanged
from ..store.models import sip_connections, trunks
from .media import MediaPolicy
from .digest import DigestClient, DigestError, parse_challenge
from .message import Address, Request, Response, URI, new_tag
from .transaction import ClientTransaction, Destination, TransactionLayer

DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}


@dataclass(frozen=True)
class TrunkSettings:
    """One SIP connection joined with its trunk, as read from the database."""

    connection_id: int
    trunk_id: int
    service_id: int
    name: str
    host: str
    port: int
    transport: str
    auth_type: str
    auth_user: str | None
    auth_password: str | None
    outbound_src_hardware: str | None
    cps_limit: int
    call_limit: int
    force_rport: bool
    logging: bool
    qualify_ms: int
    strip_digits: int = 0
    add_prefix: str = ""
    e164: bool = False
    comedia: bool = False
    voice_record: bool = False
    media_bypass: bool = False

    @property
    def destination(self) -> Destination:
        return Destination(self.transport, self.host, self.port)

    def source_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The trunk's host (if an address) and its Outbound SRC hardware."""
        items = [self.host] + [
            item for item in (self.outbound_src_hardware or "").replace(",", ";").split(";") if item.strip()
        ]
        networks = []
        for item in items:
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                continue  # a host name: matched after resolution by the transport
        return networks


def load_settings(conn: Connection) -> list[TrunkSettings]:
    rows = conn.execute(
        select(
            sip_connections.c.id.label("connection_id"),
            trunks.c.id.label("trunk_id"),
            sip_connections.c.service_id,
            trunks.c.name,
            trunks.c.host,
            trunks.c.port,
            trunks.c.transport,
            sip_connections.c.auth_type,
            sip_connections.c.auth_user,
            sip_connections.c.auth_password,
            sip_connections.c.outbound_src_hardware,
            sip_connections.c.cps_limit,
            sip_connections.c.call_limit,
            sip_connections.c.force_rport,
            sip_connections.c.logging,
            sip_connections.c.qualify_ms,
            sip_connections.c.strip_digits,
            sip_connections.c.add_prefix,
            sip_connections.c.e164,
            sip_connections.c.comedia,
            sip_connections.c.voice_record,
            sip_connections.c.media_bypass,
        )
        .select_from(sip_connections.join(trunks, sip_connections.c.trunk_id == trunks.c.id))
        .where(trunks.c.enabled.is_(True))
        .order_by(sip_connections.c.id)
    ).all()
    return [TrunkSettings(**row._mapping) for row in rows]


# -- registration client ------------------------------------------------------------


class Registration:
    """switchd's registration to one trunk, as a small state machine.

    unregistered -> registering -> registered (refreshed before expiry)
                                -> failed (retried with backoff)
    """

    log = Logger()
    BACKOFF = (5, 10, 20, 40, 80, 160, 300)

    def __init__(self, manager: "TrunkManager", settings: TrunkSettings) -> None:
        self.manager = manager
        self.settings = settings
        self.state = "unregistered"
        self.detail = ""
        self.since = manager.clock.seconds()
        self.expires_at: float | None = None
        self.call_id = ids.token_hex(12)
        self.tag = new_tag()
        self.cseq = 0
        self.failures = 0
        self.client = DigestClient(settings.auth_user or "", settings.auth_password or "")
        self._answered: set[str] = set()
        self._timer: IDelayedCall | None = None
        self._tx: ClientTransaction | None = None
        self._stopped = False

    # -- public ---------------------------------------------------------------

    def start(self) -> None:
        self._send(expires=self.manager.register_expires)

    def stop(self, unregister: bool = True) -> None:
        self._stopped = True
        self._cancel_timer()
        if unregister and self.state == "registered":
            self._send(expires=0)

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "detail": self.detail,
            "since": self.since,
            "expires_at": self.expires_at,
        }

    # -- protocol ---------------------------------------------------------------

    def _uri(self) -> URI:
        s = self.settings
        params = () if s.transport == "udp" else (("transport", s.transport),)
        return URI("sip", s.host, None, None, s.port, params, (), None)

    def _build(self, expires: int, authorization: tuple[str, str] | None = None) -> Request:
        s = self.settings
        manager = self.manager
        self.cseq += 1
        aor = URI("sip", s.host, s.auth_user, None, None, (), (), None)
        local_host, local_port = manager.contact_address(s.destination)
        contact_uri = URI(
            "sip",
            local_host,
            s.auth_user,
            None,
            local_port,
            () if s.transport == "udp" else (("transport", s.transport),),
            (),
            None,
        )
        request = Request("REGISTER", self._uri())
        request.add("Max-Forwards", "70")
        request.add("From", Address(aor, None, ()).with_tag(self.tag))
        request.add("To", Address(aor, None, ()))
        request.add("Call-ID", self.call_id)
        request.add("CSeq", f"{self.cseq} REGISTER")
        request.add("Contact", Address(contact_uri, None, ()))
        request.add("Expires", str(expires))
        request.add("User-Agent", manager.user_agent)
        if authorization is not None:
            request.add(*authorization)
        return request

    def _send(self, expires: int, authorization: tuple[str, str] | None = None) -> None:
        if expires:
            self._set_state("registering", "")
        request = self._build(expires, authorization)
        self._tx = self.manager.layer.request(
            request,
            self.settings.destination,
            lambda response, tx: self._on_response(response, expires, request),
            lambda tx: self._on_failure("no answer (timeout)", expires),
            on_transport_error=lambda tx, error: self._on_failure(f"transport error: {error}", expires),
        )

    def _on_response(self, response: Response, expires: int, request: Request) -> None:
        status = response.status
        if status < 200 or expires == 0:
            if expires == 0 and status >= 200:
                self._set_state("unregistered", f"{status} {response.reason}")
            return
        if status in (401, 407):
            header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
            answer = "Authorization" if status == 401 else "Proxy-Authorization"
            try:
                challenge = parse_challenge(response.get(header) or "")
            except DigestError:
                self._on_failure(f"{status} with an unusable challenge", expires)
                return
            if challenge.nonce in self._answered and not challenge.stale:
                self._on_failure(f"{status} {response.reason}: credentials refused", expires)
                return
            self._answered.add(challenge.nonce)
            credentials = self.client.authorize(challenge, method="REGISTER", uri=str(request.uri))
            self._send(expires, (answer, str(credentials)))
            return
        if 200 <= status < 300:
            granted = self._granted(response, expires)
            now = self.manager.clock.seconds()
            self.expires_at = now + granted
            self.failures = 0
            self._answered.clear()
            self._set_state("registered", f"{status} {response.reason}")
            refresh = max(1.0, min(granted * 0.85, granted - 5))
            self._schedule(refresh, lambda: self._send(self.manager.register_expires))
            return
        if status == 423:
            minimum = response.get("Min-Expires")
            if minimum and minimum.isdigit():
                self._send(int(minimum))
                return
        self._on_failure(f"{status} {response.reason}", expires)

    def _granted(self, response: Response, asked: int) -> int:
        ours = self.manager.contact_address(self.settings.destination)
        for contact in response.contacts:
            uri = contact.uri
            value = contact.param("expires")
            if value and value.isdigit() and (uri.host, uri.port) == ours:
                return int(value)
        header = response.expires
        return header if header is not None else asked

    def _on_failure(self, detail: str, expires: int) -> None:
        if expires == 0 or self._stopped:
            return
        self.failures += 1
        self.expires_at = None
        delay = self.BACKOFF[min(self.failures, len(self.BACKOFF)) - 1]
        self._set_state("failed", f"{detail}; retrying in {delay} s")
        self._answered.clear()
        self._schedule(delay, lambda: self._send(self.manager.register_expires))

    # -- helpers ------------------------------------------------------------------

    def _schedule(self, delay: float, action: Callable[[], None]) -> None:
        self._cancel_timer()
        if not self._stopped:
            self._timer = self.manager.clock.callLater(delay, action)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _set_state(self, state: str, detail: str) -> None:
        changed = state != self.state
        self.state, self.detail = state, detail
        if changed:
            self.since = self.manager.clock.seconds()
            s = self.settings
            self.log.info("trunk {trunk}: registration {state} {detail}", trunk=s.name, state=state, detail=detail)
            self.manager.bus.publish(
                TrunkRegistrationChanged(
                    at=self.since, trunk_id=s.trunk_id, trunk=s.name, state=state, detail=detail
                )
            )


# -- qualify ---------------------------------------------------------------------------


@dataclass
class Qualify:
    """OPTIONS pings to one trunk and the up/down verdict."""

    settings: TrunkSettings
    up: bool | None = None
    misses: int = 0
    rtt_ms: float | None = None
    since: float = 0.0
    loop: LoopingCall | None = None
    pending: dict[int, IDelayedCall] = field(default_factory=dict)
    sequence: int = 0

    def status(self) -> dict[str, Any]:
        return {"up": self.up, "misses": self.misses, "rtt_ms": self.rtt_ms, "since": self.since}


# -- the manager ---------------------------------------------------------------------------


class TrunkManager:
    log = Logger()

    def __init__(
        self,
        db,
        clock: IReactorTime,
        layer: TransactionLayer,
        bus: EventBus,
        *,
        contact_address: Callable[[Destination], tuple[str, int]],
        user_agent: str = "switchd",
        register_expires: int = 3600,
        qualify_misses: int = 3,
        qualify_timeout: float = 2.0,
        reload_seconds: float = 10.0,
        on_settings: Callable[[list[TrunkSettings]], None] = lambda settings: None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.layer = layer
        self.bus = bus
        self.contact_address = contact_address
        self.user_agent = user_agent
        self.register_expires = register_expires
        self.qualify_misses = qualify_misses
        self.qualify_timeout = qualify_timeout
        self.reload_seconds = reload_seconds
        self.on_settings = on_settings
        self.settings: dict[int, TrunkSettings] = {}
        self.registrations: dict[int, Registration] = {}
        self.qualifies: dict[int, Qualify] = {}
        self._networks: list[tuple[Any, TrunkSettings]] = []
        self._loop: LoopingCall | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self):
        self._loop = LoopingCall(self.reload)
        self._loop.clock = self.clock
        return self._loop.start(self.reload_seconds, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for registration in self.registrations.values():
            registration.stop(unregister=True)
        for qualify in self.qualifies.values():
            self._stop_qualify(qualify)
        self.registrations.clear()
        self.qualifies.clear()

    def reload(self):
        d = self.db.run(load_settings)
        d.addCallback(self.apply)
        d.addErrback(lambda f: self.log.failure("cannot read trunk settings", f))
        return d

    def apply(self, settings: list[TrunkSettings]) -> None:
        """Bring running registrations and qualifies in line with ``settings``."""
        new = {s.connection_id: s for s in settings}
        for connection_id, old in list(self.settings.items()):
            if new.get(connection_id) != old:
                registration = self.registrations.pop(connection_id, None)
                if registration is not None:
                    registration.stop(unregister=new.get(connection_id) is None)
        for connection_id, s in new.items():
            if s.auth_type == "registration" and s.auth_user and connection_id not in self.registrations:
                registration = self.registrations[connection_id] = Registration(self, s)
                registration.start()
        self.settings = new
        self._networks = [(network, s) for s in settings for network in s.source_networks()]
        self._apply_qualify(settings)
        self.on_settings(settings)

    def _apply_qualify(self, settings: list[TrunkSettings]) -> None:
        wanted: dict[int, TrunkSettings] = {}
        for s in settings:
            if s.qualify_ms > 0:
                best = wanted.get(s.trunk_id)
                if best is None or s.qualify_ms < best.qualify_ms:
                    wanted[s.trunk_id] = s
        for trunk_id, qualify in list(self.qualifies.items()):
            s = wanted.get(trunk_id)
            if s is None or (s.qualify_ms, s.destination) != (qualify.settings.qualify_ms, qualify.settings.destination):
                self._stop_qualify(qualify)
                del self.qualifies[trunk_id]
        for trunk_id, s in wanted.items():
            if trunk_id not in self.qualifies:
                qualify = self.qualifies[trunk_id] = Qualify(s, since=self.clock.seconds())
                qualify.loop = LoopingCall(self._ping, qualify)
                qualify.loop.clock = self.clock
                qualify.loop.start(s.qualify_ms / 1000.0, now=True)

    def _stop_qualify(self, qualify: Qualify) -> None:
        if qualify.loop is not None and qualify.loop.running:
            qualify.loop.stop()
        for timer in qualify.pending.values():
            if timer.active():
                timer.cancel()
        qualify.pending.clear()

    # -- qualify -------------------------------------------------------------------

    def _ping(self, qualify: Qualify) -> None:
        s = qualify.settings
        qualify.sequence += 1
        number = qualify.sequence
        sent_at = self.clock.seconds()
        uri = URI("sip", s.host, None, None, s.port, () if s.transport == "udp" else (("transport", s.transport),), (), None)
        local = URI("sip", self.contact_address(s.destination)[0], "switchd", None, None, (), (), None)
        request = Request("OPTIONS", uri)
        request.add("Max-Forwards", "70")
        request.add("From", Address(local, None, ()).with_tag(new_tag()))
        request.add("To", Address(uri, None, ()))
        request.add("Call-ID", ids.token_hex(12))
        request.add("CSeq", f"{number} OPTIONS")
        request.add("User-Agent", self.user_agent)
        qualify.pending[number] = self.clock.callLater(self.qualify_timeout, self._missed, qualify, number)
        try:
            self.layer.request(
                request,
                s.destination,
                lambda response, tx: self._answered(qualify, number, response, sent_at),
                lambda tx: None,  # the qualify timeout already counted the miss
                on_transport_error=lambda tx, error: self._missed(qualify, number),
            )
        except ValueError as e:
            self.log.warn("trunk {trunk}: cannot send OPTIONS: {error}", trunk=s.name, error=e)

    def _answered(self, qualify: Qualify, number: int, response: Response, sent_at: float) -> None:
        if response.status < 200:
            return
        timer = qualify.pending.pop(number, None)
        if timer is None:
            return  # already counted as missed
        if timer.active():
            timer.cancel()
        qualify.misses = 0
        qualify.rtt_ms = round((self.clock.seconds() - sent_at) * 1000, 1)
        if qualify.up is not True:
            self._set_reachable(qualify, True)

    def _missed(self, qualify: Qualify, number: int) -> None:
        timer = qualify.pending.pop(number, None)
        if timer is None:
            return
        if timer.active():
            timer.cancel()
        qualify.misses += 1
        if qualify.misses >= self.qualify_misses and qualify.up is not False:
            self._set_reachable(qualify, False)

    def _set_reachable(self, qualify: Qualify, up: bool) -> None:
        s = qualify.settings
        qualify.up = up
        qualify.since = self.clock.seconds()
        self.log.info("trunk {trunk} is {state}", trunk=s.name, state="up" if up else "down")
        self.bus.publish(
            TrunkReachabilityChanged(
                at=qualify.since, trunk_id=s.trunk_id, trunk=s.name, up=up, rtt_ms=qualify.rtt_ms if up else None
            )
        )

    # -- lookups ---------------------------------------------------------------------

    def identify(self, host: str) -> TrunkSettings | None:
        """The trunk whose traffic comes from ``host``, if any."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
        for network, s in self._networks:
            if address in network:
                return s
        for s in self.settings.values():
            if s.host == host:
                return s
        return None

    def force_rport(self, host: str) -> bool:
        s = self.identify(host)
        return s is not None and s.force_rport

    def line_number(self, trunk_id: int | None) -> str | None:
        """The trunk's own number (an external line): the user of a SIP connection of it
        that registers, a registered one first; ``None`` for an IP-only trunk."""
        lines = [s for s in self.settings.values()
                 if s.trunk_id == trunk_id and s.auth_type == "registration" and s.auth_user]
        lines.sort(key=lambda s: (getattr(self.registrations.get(s.connection_id), "state", "") != "registered",
                                  s.connection_id))
        return lines[0].auth_user if lines else None

    def media_policy(self, trunk_id: int | None) -> MediaPolicy:
        """COMEDIA, recording and bypass for a trunk: any of its SIP connections asking for one."""
        connections = [s for s in self.settings.values() if s.trunk_id == trunk_id]
        return MediaPolicy(
            comedia=any(s.comedia for s in connections),
            record=any(s.voice_record for s in connections),
            bypass=bool(connections) and all(s.media_bypass for s in connections),
        )

    def logging_trunk(self, host: str) -> str | None:
        s = self.identify(host)
        return s.name if s is not None and s.logging else None

    def status(self, trunk_id: int) -> dict[str, Any] | None:
        """Registration and qualify state of a trunk on this node."""
        connections = [s for s in self.settings.values() if s.trunk_id == trunk_id]
        if not connections:
            return None
        registrations = {
            str(s.connection_id): self.registrations[s.connection_id].status()
            for s in connections
            if s.connection_id in self.registrations
        }
        qualify = self.qualifies.get(trunk_id)
        return {
            "trunk_id": trunk_id,
            "registrations": registrations,
            "qualify": qualify.status() if qualify else None,
        }

    def is_usable(self, trunk_id: int) -> bool:
        """Up (or not qualified) and registered where registration is required."""
        qualify = self.qualifies.get(trunk_id)
        if qualify is not None and qualify.up is False:
            return False
        for s in self.settings.values():
            if s.trunk_id == trunk_id and s.connection_id in self.registrations:
                if self.registrations[s.connection_id].state != "registered":
                    return False
        return any(s.trunk_id == trunk_id for s in self.settings.values())
