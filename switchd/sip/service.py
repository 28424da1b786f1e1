"""The SIP service: transports, transactions, protection, registrar, trunks.

Built by ``switchd.service.make_service`` from ``[sip]``; the one place the
SIP parts are wired together. Requests reach the transaction user here and
are dispatched by method: OPTIONS to switchd is answered with 200, REGISTER
goes to the registrar, methods switchd does not serve get 501 with Allow.
"""

from __future__ import annotations

import ipaddress
import math
import os
import secrets
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.application.service import Service
from twisted.internet.defer import ensureDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.threads import deferToThreadPool
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

import datetime

from ..billing import cdr, ledger, vouchers
from ..billing.authcache import AuthorizationCache
from ..config import Config, ConfigError
from ..core import ids
from ..core.calls import Call, CallRegistry
from ..core.events import EventBus
from ..core.ratelimit import RateLimiter
from ..core.router import Router
from sqlalchemy import select

from ..store.groupcommit import GroupCommit
from ..store.models import numbers, services, sip_accounts
from .b2bua import B2BUA, CallRefused, Contact, Delivery, Origin
from .digest import DigestError, DigestResult, DigestServer, parse_credentials
from .message import (
    Address,
    Message,
    Request,
    SIPParseError,
    URI,
    check_max_forwards,
    make_response,
    new_tag,
    validate_request,
)
from ..media.prompts import BUILTIN_TEXTS, PromptLibrary
from ..media.relay import MediaRelay, PortAllocator
from ..core import clients
from ..core.callback import CallbackEngine, CallbackRequest
from .media import MediaManager
from .originate import Originator
from .protection import Protection
from .registrar import Registrar
from .transaction import Destination, ServerTransaction, TransactionLayer
from .transport import SIPTransport, parse_listen
from .trunks import TrunkManager

# Methods switchd serves; OPTIONS answers list exactly these in Allow.
SERVED = frozenset({"OPTIONS", "REGISTER", "ACK", "CANCEL", "INVITE", "BYE", "INFO", "UPDATE"})
IN_DIALOG = frozenset({"BYE", "INFO", "UPDATE"})
ACCEPT = "application/sdp"
SUPPORTED = "path, outbound"


def nonce_secret(state_dir: str) -> bytes:
    """The digest nonce key, made once per node and kept in the state dir."""
    path = os.path.join(state_dir, "sip-nonce-secret")
    try:
        with open(path, "rb") as f:
            secret = bytes.fromhex(f.read().decode().strip())
        if len(secret) >= 16:
            return secret
    except (OSError, ValueError):
        pass
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex() + "\n")
    return secret


class TraceWriter:
    """Per-trunk SIP message traces, written by one thread off the reactor."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.pool = ThreadPool(minthreads=1, maxthreads=1, name="switchd-sip-trace")
        self._lock = threading.Lock()

    def start(self) -> None:
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        self.pool.start()

    def stop(self) -> None:
        self.pool.stop()

    def write(self, trunk: str, direction: str, peer: Destination, data: bytes) -> None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in trunk) or "trunk"
        path = os.path.join(self.directory, f"{safe}.log")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        arrow = "<-" if direction == "in" else "->"
        text = f"{stamp} {arrow} {peer.transport}:{peer.host}:{peer.port}\n{data.decode('utf-8', 'replace')}\n\n"

        def append() -> None:
            with self._lock, open(path, "a", encoding="utf-8") as f:
                f.write(text)

        self.pool.callInThread(append)


class _SipCollector:
    """Gauges read from live state at scrape time."""

    def __init__(self, service: "SIPService") -> None:
        self.service = service

    def collect(self):
        s = self.service
        stats = s.layer.stats()
        transactions = GaugeMetricFamily("switchd_sip_transactions", "Live SIP transactions", labels=["kind"])
        for kind in ("client_invite", "client_non_invite", "server_invite", "server_non_invite"):
            transactions.add_metric([kind], stats[kind])
        yield transactions
        yield GaugeMetricFamily("switchd_sip_registrations", "Registered contacts", value=len(s.registrar))
        yield GaugeMetricFamily("switchd_sip_banned_sources", "Sources banned now", value=len(s.protection.bans))
        yield GaugeMetricFamily("switchd_sip_connections", "Open TCP and TLS connections", value=s.transport.connections)
        up = GaugeMetricFamily("switchd_sip_trunk_up", "Trunk answers OPTIONS (1) or not (0)", labels=["trunk"])
        for qualify in s.trunks.qualifies.values():
            if qualify.up is not None:
                up.add_metric([qualify.settings.name], 1 if qualify.up else 0)
        yield up
        registered = GaugeMetricFamily(
            "switchd_sip_trunk_registered", "switchd is registered to the trunk (1) or not (0)", labels=["trunk", "connection"]
        )
        for registration in s.trunks.registrations.values():
            registered.add_metric(
                [registration.settings.name, str(registration.settings.connection_id)],
                1 if registration.state == "registered" else 0,
            )
        yield registered
        if s.media is not None:
            stats = s.media.relay.stats()
            yield GaugeMetricFamily("switchd_media_sessions", "Relay sessions open (one per call and m= line)",
                                    value=stats["sessions"])
            yield GaugeMetricFamily("switchd_media_ports_free", "RTP/RTCP port pairs free in [media] range",
                                    value=stats["ports_free"])
            packets = CounterMetricFamily("switchd_media_packets", "RTP and RTCP packets through the relay",
                                          labels=["kind"])
            for kind in ("packets_in", "packets_relayed", "rtcp", "dropped", "send_errors"):
                packets.add_metric([kind], stats[kind])
            yield packets
            yield CounterMetricFamily("switchd_media_bytes", "RTP bytes received by the relay", value=stats["bytes"])


class SIPService(Service):
    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor,
        db,
        bus: EventBus,
        limiter: RateLimiter,
        registry: CollectorRegistry,
        *,
        state_dir: str,
        node: str,
    ) -> None:
        sip = config.sip
        self.config = config
        self.reactor = reactor
        self.specs = []
        for description in sip.listen:
            try:
                self.specs.append(parse_listen(description))
            except ValueError as e:
                raise ConfigError(config.source, str(e), "sip", "listen") from None
        for name in sip.digest_algorithms:
            if name not in ("SHA-256", "MD5"):
                raise ConfigError(config.source, f"unknown algorithm {name!r}; use SHA-256 and/or MD5", "sip", "digest_algorithms")
        self.messages = Counter("switchd_sip_messages", "SIP messages", ["direction", "kind"], registry=registry)
        self.events = Counter("switchd_sip_events", "Drops, bans, auth failures, malformed input", ["name", "reason"], registry=registry)
        self.traces = TraceWriter(os.path.join(state_dir, "sip-trace"))
        # Calls and callback legs are authorised from memory (billing/authcache.py).
        self.authorizer = AuthorizationCache(db.read, reactor, registry=registry)
        # Answers and CDRs (with their charges) are written by group commit:
        # what ends while a transaction runs goes into the next one.
        self.cdr_writes = GroupCommit(db, max_batch=500, max_pending=200_000)
        self.trunks: TrunkManager  # set below; the transport asks it about peers
        self.protection = Protection(
            reactor,
            limiter,
            bus,
            flood_rate=sip.flood_rate,
            flood_burst=sip.flood_burst,
            ban_seconds=sip.ban_seconds,
            auth_failures=sip.auth_failures,
            auth_window=sip.auth_failure_window,
            scanners=sip.scanner_user_agents,
            trusted=sip.trusted,
            is_peer=lambda host: self.trunks.identify(host) is not None,
            count=lambda name, reason: self.events.labels(name, reason).inc(),
        )
        self.transport = SIPTransport(
            reactor,
            reactor,
            self._on_message,
            udp_mtu=sip.udp_mtu,
            max_message_bytes=sip.max_message_bytes,
            stream_idle_seconds=sip.stream_idle_seconds,
            advertise=sip.advertise,
            tls_ca_file=sip.tls_ca_file,
            tls_verify=sip.tls_verify,
            gatekeeper=self.protection,
            force_rport=lambda host: self.trunks.force_rport(host),
            trace=self._trace,
            on_counter=lambda name, label: self.events.labels(name, label).inc(),
        )
        self.layer = TransactionLayer(
            reactor,
            self.transport.send,
            self._on_request,
            self._on_stray,
            t1=sip.t1_ms / 1000,
            t2=sip.t2_ms / 1000,
            t4=sip.t4_ms / 1000,
            user_agent=sip.user_agent,
            via_sent_by=lambda d: self.transport.via_host(d.transport, d.host),
        )
        self.digest = DigestServer(
            nonce_secret(state_dir), sip.realm, lifetime=sip.nonce_seconds, algorithms=sip.digest_algorithms
        )
        self.registrar = Registrar(
            db,
            reactor,
            self.digest,
            bus,
            node=node,
            min_expires=sip.min_expires,
            max_expires=sip.max_expires,
            default_expires=sip.default_expires,
            max_contacts=sip.max_contacts,
            on_auth_failure=self.protection.auth_failed,
            server=sip.user_agent,
        )
        self.trunks = TrunkManager(
            db,
            reactor,
            self.layer,
            bus,
            contact_address=lambda d: self.transport.via_host(d.transport, d.host),
            user_agent=sip.user_agent,
            register_expires=sip.trunk_register_expires,
            qualify_misses=sip.qualify_misses,
            qualify_timeout=sip.qualify_timeout_ms / 1000,
            reload_seconds=sip.reload_seconds,
        )
        self.db = db
        self.node = node
        self._numbers: dict[str, tuple[Any, list[int]]] = {}
        self.calls = CallRegistry(bus, reactor)
        self.media = self._media(config, reactor, state_dir)
        codes = set()
        for code in sip.failover_codes:
            if not code.isdigit() or not 300 <= int(code) <= 699:
                raise ConfigError(config.source, f"{code!r} is not a SIP failure status", "sip", "failover_codes")
            codes.add(int(code))
        self.router = Router(db, reactor, limiter, self.trunks, failover_codes=frozenset(codes))
        self.trunks.on_settings = self.router.configure_limits
        self.b2bua = B2BUA(
            reactor,
            self.layer,
            self.calls,
            contact=lambda d: self.transport.via_host(d.transport, d.host),
            identify=self._identify,
            authorize=self._authorize,
            router=self.router,
            on_answer=self._on_answer,
            on_end=self._on_end,
            deliver=self._delivery,
            user_agent=sip.user_agent,
            max_calls_in_setup=sip.max_calls_in_setup,
            media=self.media,
            publish=bus.publish,
        )
        self.originator = Originator(
            reactor,
            self.layer,
            self.calls,
            self.router,
            contact=lambda d: self.transport.via_host(d.transport, d.host),
            media_policy=lambda trunk_id: self.trunks.media_policy(trunk_id),
            line_number=lambda trunk_id: self.trunks.line_number(trunk_id),
            on_answer=self._on_answer,
            on_end=self._on_end,
            user_agent=sip.user_agent,
        )
        callback = config.callback
        self.callbacks = CallbackEngine(
            reactor,
            authorize=self._authorize_number,
            acquire_account=self.router.acquire_account,
            originator=self.originator,
            media=self.media,
            publish=bus.publish,
            node=node,
            ring_seconds=callback.ring_seconds,
            balance_code=callback.balance_code,
            hangup_code=callback.hangup_code,
            first_digit_seconds=callback.first_digit_seconds,
            next_digit_seconds=callback.next_digit_seconds,
            language_menu=callback.language_menu,
            balance=lambda account_id: self.db.run(ledger.balance_of, account_id),
            redeem=self._ivr_redeem,
        )
        self._redeem_guard = vouchers.RedeemGuard(limiter, reactor)
        registry.register(_SipCollector(self))
        self._loops: list[LoopingCall] = []

    def _media(self, config: Config, reactor, state_dir: str) -> MediaManager | None:
        """The RTP relay of [media], bound next to the first SIP listener unless told otherwise."""
        media = config.media
        if not media.enabled:
            return None
        listen = media.listen or next((spec.interface for spec in self.specs if spec.interface), "") or "0.0.0.0"
        try:
            ipaddress.ip_address(listen)
        except ValueError:
            raise ConfigError(config.source, f"{listen!r} is not an IP address", "media", "listen") from None
        advertise = media.advertise or config.sip.advertise
        if not advertise:
            advertise = listen if listen not in ("0.0.0.0", "::") else SIPTransport._route_source("192.0.2.1")
        relay = MediaRelay(
            reactor,
            listen,
            PortAllocator(media.port_min, media.port_max),
            timeout=media.timeout or math.inf,
            hold_timeout=media.hold_timeout or math.inf,
            strict_source=media.strict_source,
        )
        pool = reactor.getThreadPool()

        def run_in_thread(f):
            return deferToThreadPool(reactor, pool, f)

        prompts = PromptLibrary(
            media.prompts_dir,
            run_in_thread=run_in_thread,
            reactor_for_processes=reactor,
            cache_dir=media.tts_cache_dir or os.path.join(state_dir, "tts"),
            espeak=media.espeak,
            texts=BUILTIN_TEXTS,
        )
        return MediaManager(
            reactor,
            relay,
            advertise=advertise,
            recordings_dir=media.recordings_dir or os.path.join(state_dir, "recordings"),
            run_in_thread=run_in_thread,
            trunk_policy=lambda trunk_id: self.trunks.media_policy(trunk_id),
            now=self._now,
            prompts=prompts,
        )

    # -- lifecycle --------------------------------------------------------------

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        for spec in self.specs:
            try:
                port = self.transport.listen(spec)
            except (CannotListenError, OSError) as e:
                error = getattr(e, "socketError", e)
                reason = getattr(error, "strerror", None) or str(error)
                message = ConfigError(self.config.source, f"cannot listen on {spec.description}: {reason}", "sip", "listen")
                os.write(2, f"switchd: {message}\n".encode())
                raise SystemExit(1) from None
            if spec.transport == "udp":
                self._grow_receive_buffer(port)
            address = port.getHost()
            self.log.info(
                "[sip] listening on {description} ({type} {host} port {port})",
                description=spec.description,
                type=spec.transport.upper(),
                host=address.host,
                port=address.port,
            )

    def _grow_receive_buffer(self, port) -> None:
        import socket as socket_module

        wanted = self.config.sip.udp_receive_buffer
        try:
            sock = port.getHandle()
            sock.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_RCVBUF, wanted)
            granted = sock.getsockopt(socket_module.SOL_SOCKET, socket_module.SO_RCVBUF)
        except (AttributeError, OSError) as e:
            self.log.warn("cannot set the UDP receive buffer: {error}", error=e)
            return
        if granted < wanted:  # Linux reports twice what it grants, capped by rmem_max
            self.log.info("UDP receive buffer is {granted} bytes (asked {wanted}; raise net.core.rmem_max for more)",
                          granted=granted, wanted=wanted)

    def startService(self) -> None:
        super().startService()
        self.traces.start()
        self.registrar.start()
        self.trunks.start()
        loop = LoopingCall(self._reload_numbers)
        loop.clock = self.reactor
        loop.start(self.config.sip.reload_seconds, now=True)
        self._loops.append(loop)
        sip = self.config.sip
        if sip.nat_keepalive_seconds:
            self._every(sip.nat_keepalive_seconds, self._nat_keepalive)
        self._every(60, self.protection.prune)

    def _every(self, seconds: float, action) -> None:
        loop = LoopingCall(action)
        loop.clock = self.reactor
        loop.start(seconds, now=False)
        self._loops.append(loop)

    def stopService(self):
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self.trunks.stop()
        self.registrar.stop()
        self.traces.stop()
        if self.media is not None:
            self.media.relay.close_all()
        # Give unregistrations a moment to leave before the sockets close.
        from twisted.internet.task import deferLater

        d = deferLater(self.reactor, 0.2, lambda: None)
        d.addCallback(lambda _: self.transport.stop())
        d.addCallback(lambda _: self.cdr_writes.drained())  # the last CDRs, before the database stops
        return d

    # -- inbound -------------------------------------------------------------------

    def _trace(self, direction: str, data: bytes, peer: Destination) -> None:
        kind = "request" if data[:4] != b"SIP/" else "response"
        self.messages.labels(direction, kind).inc()
        trunk = self.trunks.logging_trunk(peer.host) if self.trunks.settings else None
        if trunk is not None:
            self.traces.write(trunk, direction, peer, data)

    def _on_message(self, message: Message, source: Destination) -> None:
        if isinstance(message, Request) and self.protection.screen(message):
            return  # scanners get no answer at all
        self.layer.receive(message, source)

    def _on_request(self, request: Request, tx: ServerTransaction) -> None:
        try:
            validate_request(request, supported_methods=SERVED)
            if not check_max_forwards(request) and request.method != "OPTIONS":
                raise SIPParseError("Too Many Hops", 483, message=request)
        except SIPParseError as error:
            response = error.response(new_tag())
            if response is not None:
                tx.respond(response)
            return
        method = request.method
        if method == "OPTIONS":
            response = make_response(request, 200, to_tag=new_tag())
            response.set("Allow", ", ".join(sorted(SERVED)))
            response.set("Accept", ACCEPT)
            response.set("Supported", SUPPORTED)
            response.set("Server", self.config.sip.user_agent)
            tx.respond(response)
        elif method == "REGISTER":
            self.registrar.handle(request, tx.source, tx.respond)
        elif method == "INVITE":
            to = request.to_addr
            if to is not None and to.tag:
                if not self.b2bua.in_dialog(request, tx) and not self.originator.in_dialog(request, tx):
                    tx.respond(make_response(request, 481))
            else:
                self.b2bua.invite(request, tx)
        elif method in IN_DIALOG:
            if not self.b2bua.in_dialog(request, tx) and not self.originator.in_dialog(request, tx):
                tx.respond(make_response(request, 481))
        elif method == "CANCEL":
            if self.b2bua.cancel(request, tx):
                return
            invite = tx.cancels
            if invite is None:
                tx.respond(make_response(request, 481, to_tag=new_tag()))
                return
            tx.respond(make_response(request, 200, to_tag=new_tag()))
            if invite.last_response is None or invite.last_response.status < 200:
                invite.respond(make_response(invite.request, 487, to_tag=new_tag()))
        # ACK outside a transaction needs nothing.

    def _on_stray(self, message: Message, source: Destination) -> None:
        if isinstance(message, Request) and message.method == "ACK" and self.b2bua.ack(message):
            return
        self.log.debug("stray {message!r} from {source}", message=message, source=source)

    # -- calls: who calls, may they, and their records ---------------------------------

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.reactor.seconds(), datetime.timezone.utc)

    async def _identify(self, request: Request, source: Destination) -> Origin:
        trunk = self.trunks.identify(source.host)
        if trunk is not None:
            return Origin(service_id=trunk.service_id, kind="trunk", trunk_id=trunk.trunk_id)
        challenge = tuple(
            ("Proxy-Authenticate", str(c)) for c in self.digest.challenges(self.reactor.seconds())
        )
        header = request.get("Proxy-Authorization")
        if header is None:
            raise CallRefused(407, "Proxy Authentication Required", challenge)
        try:
            credentials = parse_credentials(header)
        except DigestError:
            raise CallRefused(400, "Malformed Proxy-Authorization") from None
        account = await self.db.run(Registrar.load_account, credentials.username)
        result = DigestResult.FAILED
        if account is not None and account.enabled and account.realm == self.digest.realm:
            result = self.digest.verify(
                credentials, method="INVITE", now=self.reactor.seconds(), ha1=account.ha1, body=request.body
            )
        if result is DigestResult.STALE:
            stale = tuple(
                ("Proxy-Authenticate", str(c)) for c in self.digest.challenges(self.reactor.seconds(), stale=True)
            )
            raise CallRefused(407, "Proxy Authentication Required", stale)
        if result is not DigestResult.OK:
            self.protection.auth_failed(source.host)
            raise CallRefused(407, "Proxy Authentication Required", challenge)
        return Origin(service_id=account.service_id, kind="device", caller_id=account.caller_id)

    @staticmethod
    def _load_numbers(conn) -> dict[str, tuple[Any, list[int]]]:
        """Every number of the switch with the SIP accounts its calls ring."""
        by_account: dict[int, list[int]] = {}
        for account_id, sip_account_id in conn.execute(
            select(services.c.account_id, sip_accounts.c.id)
            .select_from(sip_accounts.join(services, sip_accounts.c.service_id == services.c.id))
            .where(sip_accounts.c.enabled.is_(True))
        ):
            by_account.setdefault(account_id, []).append(sip_account_id)
        owners = dict(conn.execute(select(services.c.id, services.c.account_id)).all())
        kinds = dict(conn.execute(select(services.c.id, services.c.type)).all())
        table = {}
        for row in conn.execute(select(numbers)):
            if row.sip_account_id is not None:
                accounts = [row.sip_account_id]
            else:
                accounts = by_account.get(owners.get(row.service_id), [])
            table[row.number.lstrip("+")] = (row, accounts, kinds.get(row.service_id))
        return table

    def _reload_numbers(self):
        def loaded(table):
            self._numbers = table

        d = self.db.run(self._load_numbers)
        d.addCallback(loaded)
        d.addErrback(lambda f: self.log.failure("cannot read the switch's numbers", f))
        return d

    async def _delivery(self, callee: str, caller: str = "") -> Delivery | None:
        """Where a call to one of the switch's own numbers goes, if it is one.

        Numbers are read every ``reload_seconds``, like trunks, so no call
        waits for the database here. A number of a callback service is an
        ANI callback access number: the call is refused unanswered (nothing
        to pay) and, if the caller is a registered callback client, called
        back a moment later with the callback IVR.
        """
        found = self._numbers.get(callee.lstrip("+"))
        if found is None:
            return None
        row, accounts, kind = found
        if kind == "callback":
            await self._ani_callback(caller, row.number, row.language)
            raise CallRefused(603, "Decline")
        contacts = [
            Contact(uri=Address.parse(binding.contact).uri, destination=binding.source)
            for account in accounts
            for binding in self.registrar.contacts(account)
        ]
        return Delivery(
            service_id=row.service_id,
            contacts=contacts,
            always=row.redirect_always,
            busy=row.redirect_busy,
            no_answer=row.redirect_no_answer,
            unregistered=row.redirect_unregistered,
            no_answer_seconds=row.no_answer_seconds,
        )

    async def _ani_callback(self, caller: str, access_number: str, access_language: str | None = None) -> None:
        """Call back a registered client who rang an access number (after ``ani_delay_seconds``)."""
        client = await self.db.run(clients.by_number, caller) if caller else None
        if client is None:
            self.log.info("call from {caller} to access number {number}: not a callback client",
                          caller=caller or "an unknown number", number=access_number)
            raise CallRefused(403, "Forbidden")
        request = CallbackRequest(service_id=client.service_id, user1=caller, user2=None, max_seconds=0,
                                  caller_id1=access_number, source="ani", reference=access_number,
                                  language=client.language_at(access_language), ivr=True)

        def call_back() -> None:
            d = ensureDeferred(self.callbacks.start(request))
            d.addErrback(lambda f: self.log.warn("ANI callback to {caller} refused: {reason}", caller=caller,
                                                 reason=getattr(f.value, "reason", f.getErrorMessage())))

        self.reactor.callLater(self.config.callback.ani_delay_seconds, call_back)

    async def _ivr_redeem(self, account_id: int, pin: str):
        """A PIN keyed in the callback IVR, behind the same guessing brake as the API and SMS."""
        keys = (("account", account_id),)
        if self._redeem_guard.admit(keys):
            raise vouchers.RedeemRefused("guess", "too many wrong vouchers")
        failed = True
        try:
            done = await self.db.run(vouchers.redeem, account_id, self._now(), pin=pin)
            failed = False
            return done
        finally:
            self._redeem_guard.done(keys, failed)

    async def _authorize(self, origin: Origin, callee: str):
        return await self.authorizer.authorize(origin.service_id, callee, self._now())

    async def _authorize_number(self, service_id: int, number: str):
        return await self.authorizer.authorize(service_id, number, self._now())

    def _record(self, call: Call) -> cdr.CallRecord:
        def at(seconds: float | None) -> datetime.datetime | None:
            return None if seconds is None else datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)

        return cdr.CallRecord(
            call_id=call.id,
            account_id=call.account_id,
            node=self.node,
            start_time=at(call.start),
            service_id=call.service_id,
            trunk_id=call.trunk_id,
            direction=call.direction,
            caller=call.caller or None,
            callee=call.callee or None,
            answer_time=at(call.answer),
            end_time=at(call.end),
            hangup_side=call.hangup_side,
            sip_code=call.sip_code,
            reason=call.reason or None,
            rate=call.rate,
            currency=call.currency,
            recording=call.recording,
        )

    async def _on_answer(self, call: Call) -> None:
        await self.cdr_writes.submit(cdr.record_answers, (self._record(call), self._now()))

    async def _on_end(self, call: Call) -> None:
        await self.cdr_writes.submit(cdr.finish_calls, self._record(call))

    def _nat_keepalive(self) -> None:
        for binding in self.registrar.nat_bindings():
            uri = Address.parse(binding.contact).uri
            local = URI("sip", self.transport.via_host(binding.source.transport, binding.source.host)[0], "switchd")
            request = Request("OPTIONS", uri)
            request.add("Max-Forwards", "70")
            request.add("From", Address(local).with_tag(new_tag()))
            request.add("To", Address(uri))
            request.add("Call-ID", ids.token_hex(12))
            request.add("CSeq", "1 OPTIONS")
            request.add("User-Agent", self.config.sip.user_agent)
            try:
                self.layer.request(request, binding.source, lambda r, tx: None, lambda tx: None)
            except ValueError:
                continue

    def trunk_status(self, trunk_id: int) -> dict[str, Any] | None:
        return self.trunks.status(trunk_id)
