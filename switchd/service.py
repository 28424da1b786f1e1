"""makeService: the one place where switchd's parts are built and wired."""

from __future__ import annotations

import datetime
import os
import socket

from prometheus_client import CollectorRegistry
from sqlalchemy import select
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.server import Site

from .api.app import ProvisioningAPI, expire_idempotency_keys
from .api.auth import create_key
from .config import Config, ConfigError
from .core.events import EventBus
from .core.ratelimit import RateLimiter
from .store import migrate
from .store.db import Database, make_engine
from .store.models import api_keys

log = Logger(namespace="switchd")

ADMIN_KEY_FILE = "admin-api-key"


class StartupError(Exception):
    """Startup cannot go on; the message is one line for the sysadmin."""


class ListeningService(StreamServerEndpointService):
    """Listens at start and turns a failure into one clear line."""

    def __init__(self, endpoint, factory, config: Config, section: str, description: str) -> None:
        super().__init__(endpoint, factory)
        self._raiseSynchronously = True
        self._where = (config.source, section, description)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            source, section, description = self._where
            reason = e.socketError.strerror if getattr(e.socketError, "strerror", None) else e.socketError
            message = f"switchd: {ConfigError(source, f'cannot listen on {description}: {reason}', section, 'listen')}"
            # twistd has already sent sys.stderr to the log; say it on the
            # real standard error too, where the sysadmin is looking.
            os.write(2, (message + "\n").encode("utf-8", "replace"))
            raise SystemExit(1) from None
        source, section, description = self._where
        self._waitingForPort.addCallback(self._listening, section, description)

    def _listening(self, port, section: str, description: str):
        address = port.getHost()
        log.info(
            "[{section}] listening on {description} ({type} {host} port {port})",
            section=section,
            description=description,
            type=getattr(address, "type", "?"),
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
        )
        return port


def prepare_state_dir(config: Config) -> str:
    path = config.state_dir
    try:
        os.makedirs(path, mode=0o750, exist_ok=True)
    except OSError as e:
        raise ConfigError(config.source, f"cannot create {path}: {e.strerror}", "switchd", "state_dir") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(config.source, f"{path} is not writable", "switchd", "state_dir")
    return path


def open_database(config: Config, reactor, *, for_daemon: bool = True) -> Database:
    """The engine, migrated (SQLite, or PostgreSQL with auto_migrate) or checked."""
    url = config.database_url
    engine = make_engine(url, config.database.pool_size)
    try:
        current = migrate.current_revision(engine)
    except Exception as e:
        raise StartupError(
            f"{config.source}: [database] url: cannot connect: {str(e).splitlines()[0]}"
        ) from None
    head = migrate.head_revision()
    if current != head:
        if engine.dialect.name == "sqlite" or config.database.auto_migrate or not for_daemon:
            log.info("migrating the database from {current} to {head}", current=current or "empty", head=head)
            migrate.upgrade(engine)
        else:
            command = "switchctl db upgrade" if config.source == "<defaults>" else f"switchctl -c {config.source} db upgrade"
            raise StartupError(
                f"{config.source}: [database] url: the schema is at revision "
                f"{current or 'none'} but this switchd needs {head}; run "
                f"'{command}' first"
            )
    if engine.dialect.name == "sqlite" and engine.url.database:
        # Trunk and upstream passwords are in it: private to the switchd user.
        os.chmod(engine.url.database, 0o600)
    return Database(engine, reactor, threads=config.database.pool_size)


def ensure_admin_key(db: Database, state_dir: str, now: datetime.datetime) -> str | None:
    """On the first start, create an admin key and write it to the state dir."""

    def work(conn):
        exists = conn.execute(
            select(api_keys.c.id).where(api_keys.c.admin.is_(True), api_keys.c.revoked_at.is_(None)).limit(1)
        ).first()
        if exists is not None:
            return None
        return create_key(conn, now, admin=True, customer_id=None, name="first admin key")[1]

    key = db.run_blocking(work)
    if key is None:
        return None
    path = os.path.join(state_dir, ADMIN_KEY_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.chmod(path, 0o600)
    log.info("created the first admin API key; it is in {path}", path=path)
    return path


class OrderedServices(MultiService):
    """Children start in the order added and stop one after another in reverse,
    each waiting for the one before: nothing is stopped under a part still using it."""

    def stopService(self) -> Deferred:
        Service.stopService(self)

        async def stop_all() -> None:
            for child in reversed(list(self)):
                try:
                    await maybeDeferred(child.stopService)
                except Exception:  # noqa: BLE001 - the others must still stop
                    log.failure("stopping {service!r} failed", service=child)

        return ensureDeferred(stop_all())


class _NoTrunks:
    """The router's trunk state on a node without SIP: no trunk is usable."""

    @staticmethod
    def is_usable(trunk_id: int) -> bool:
        return False


class SmsServices(OrderedServices):
    """The message engine, the upstream links, status callbacks and the SMPP server.

    At shutdown the listeners close first, then every ESME is unbound (answers
    to requests in progress still go out), then callbacks, the upstream links
    and the engine stop, in that order.
    """

    def __init__(self, engine, http) -> None:
        super().__init__()
        self.engine = engine
        self.http = http  # the outgoing HTTP client: callbacks, surveys, notifications


def build_sms_services(config: Config, reactor, db: Database, bus: EventBus, limiter: RateLimiter,
                       registry: CollectorRegistry, node: str, router=None) -> SmsServices:
    """SMS on this node: engine and links (always), the SMPP server when ``[smpp] listen`` names endpoints."""
    from .api.webhooks import StatusCallbacks, default_http_client
    from .core.router import Router
    from .smpp.server import Directory, SmppServerFactory, SmppServerService
    from .sms.engine import build_sms
    from .sms.survey import StatusSurvey

    smpp = config.smpp
    if router is None:
        router = Router(db, reactor, limiter, _NoTrunks())
    engine, links = build_sms(db, reactor, bus, limiter, router, node=node, deliver_window=smpp.window,
                              reload_seconds=smpp.reload_seconds)
    http = default_http_client(reactor)  # callbacks, status surveys and notifications share its pool
    services = SmsServices(engine, http)
    engine.setServiceParent(services)
    links.setServiceParent(services)
    StatusCallbacks(db, reactor, bus, http, node=node, registry=registry,
                    settings_seconds=smpp.reload_seconds).setServiceParent(services)
    StatusSurvey(db, reactor, http, engine.apply_outcome, node=node, registry=registry).setServiceParent(services)
    if smpp.listen:
        factory = SmppServerFactory(
            reactor,
            engine,
            Directory(db),
            limiter,
            registry=registry,
            inactivity_timeout=smpp.inactivity_timeout,
            response_timeout=smpp.response_timeout,
            max_pdu_length=smpp.max_pdu_length,
            window=smpp.window,
        )
        SmppServerService(factory, reactor, reload_seconds=smpp.reload_seconds).setServiceParent(services)
        for description in smpp.listen:
            try:
                endpoint = serverFromString(reactor, description)
            except (ValueError, TypeError, KeyError) as e:
                raise ConfigError(config.source, f"bad endpoint {description!r}: {e}", "smpp", "listen") from None
            ListeningService(endpoint, factory, config, "smpp", description).setServiceParent(services)
    return services


def make_service(config: Config, reactor) -> MultiService:
    """Build the daemon's MultiService from a loaded configuration.

    Parts stop in the reverse order of their start, one after another: the
    database (first in) stops last, once nothing can use it any more.
    """
    top = OrderedServices()
    _pin(config)  # before any thread starts: threads inherit the mask
    state_dir = prepare_state_dir(config)
    db = open_database(config, reactor)
    db.setServiceParent(top)
    now = datetime.datetime.fromtimestamp(reactor.seconds(), datetime.timezone.utc)
    ensure_admin_key(db, state_dir, now)

    registry = CollectorRegistry()
    node = config.switchd.node_id or socket.gethostname()
    bus = EventBus()
    limiter = RateLimiter(reactor)
    # Calls a crash left behind get their CDRs before any new call is taken.
    from .billing.cdr import start_node
    from .billing.periodic import NodeHeartbeat, PeriodicFees

    reconciled = db.run_blocking(start_node, node, now)
    if reconciled:
        log.warn("wrote CDRs for {count} calls left by the previous run of node {node}", count=reconciled, node=node)
    NodeHeartbeat(db, reactor, node).setServiceParent(top)
    PeriodicFees(db, reactor).setServiceParent(top)
    sip = None
    if config.sip.listen:
        from .sip.service import SIPService

        sip = SIPService(config, reactor, db, bus, limiter, registry, state_dir=state_dir, node=node)
        sip.setServiceParent(top)
    sms = build_sms_services(config, reactor, db, bus, limiter, registry, node,
                             sip.router if sip is not None else None)
    sms.setServiceParent(top)
    api = ProvisioningAPI(
        db,
        reactor,
        registry,
        page_size=config.api.page_size,
        max_body_bytes=config.api.max_body_bytes,
        auth_cache_seconds=config.api.auth_cache_seconds,
        sip_realm=config.sip.realm,
        trunk_status=sip.trunk_status if sip is not None else None,
        calls=sip.b2bua if sip is not None else None,
        call_registry=sip.calls if sip is not None else None,
        messages=sms.engine,
        recordings_dir=config.media.recordings_dir or os.path.join(state_dir, "recordings"),
        run_in_thread=lambda f: deferToThreadPool(reactor, reactor.getThreadPool(), f),
    )
    if sip is not None:
        api.on_write.append(sip.authorizer.clear)  # a top-up or a new rate counts at once
    from .api import vouchers as vouchers_api

    vouchers_api.mount(api, limiter)
    if sip is not None:
        from .api.callbacks import CallbacksAPI
        from .api.notify import JsonPoster
        from .core.smscallback import SmsCallback

        poster = JsonPoster(reactor, sms.http.request, user_agent=config.sip.user_agent)
        sms_callback = None
        if sip.media is not None:
            sms_callback = SmsCallback(db, reactor, sip.callbacks, messages=sms.engine,
                                       reload_seconds=config.sip.reload_seconds, limiter=limiter)
            sms.engine.commands = sms_callback
            sms_callback.setServiceParent(top)
        CallbacksAPI(api, sip.callbacks, post_json=poster.post, bus=bus, sms=sms_callback).mount()
        if config.iif.listen:
            from .iif.service import IifService

            IifService(config, reactor, sip.callbacks, registry, db=db,
                       reload_seconds=config.sip.reload_seconds).setServiceParent(top)
    site = Site(api.resource())
    site.displayTracebacks = False
    for description in config.api.listen:
        try:
            endpoint = serverFromString(reactor, description)
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(config.source, f"bad endpoint {description!r}: {e}", "api", "listen") from None
        ListeningService(endpoint, site, config, "api", description).setServiceParent(top)

    def expire():
        horizon = reactor.seconds() - config.api.idempotency_hours * 3600
        before = datetime.datetime.fromtimestamp(horizon, datetime.timezone.utc)
        return db.run(expire_idempotency_keys, before)

    cleanup = TimerService(3600, expire)
    cleanup.clock = reactor
    cleanup.setServiceParent(top)
    thresholds = _gc_thresholds(config)
    reactor.callWhenRunning(_tune_gc, thresholds)
    log.info("switchd node {node} configured from {source}", node=node, source=config.source)
    return top


def _pin(config: Config) -> None:
    cpus = config.switchd.cpu_affinity
    if not cpus:
        return
    available = os.sched_getaffinity(0)
    if not set(cpus) <= available:
        raise ConfigError(config.source, f"CPUs {sorted(set(cpus) - available)} are not available to this "
                          f"process (it may use {sorted(available)})", "switchd", "cpu_affinity")
    os.sched_setaffinity(0, cpus)
    log.info("running on CPUs {cpus}", cpus=list(cpus))


def _gc_thresholds(config: Config) -> tuple[int, int, int] | None:
    words = config.switchd.gc_thresholds
    if not words:
        return None
    if len(words) != 3 or not all(w.isdigit() and int(w) > 0 for w in words):
        raise ConfigError(config.source, "expected three positive integers", "switchd", "gc_thresholds")
    return int(words[0]), int(words[1]), int(words[2])


def _tune_gc(thresholds: tuple[int, int, int] | None) -> None:
    """Fewer, shorter collector pauses: thousands of calls are thousands of live objects.

    What startup built (modules, tables, the OpenAPI document) is frozen so no
    collection scans it again, and the thresholds make young-generation
    collections rarer.
    """
    import gc

    if thresholds is None:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
    log.info("garbage collector: {frozen} objects frozen, thresholds {thresholds}",
             frozen=gc.get_freeze_count(), thresholds=thresholds)
