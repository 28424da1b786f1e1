"""The IIF interface in the daemon: ``[iif]`` settings, the UDP port, a clean stop."""

from __future__ import annotations

import ipaddress
import os

from prometheus_client import CollectorRegistry
from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..config import Config, ConfigError
from .peers import load_iif_peers
from .server import IifPeer, IifServer, PeerConfigError, PeerTable


def split_address(text: str) -> tuple[str, int]:
    """``IP:PORT`` or ``[IPv6]:PORT`` -> (IP, PORT); ValueError with a readable reason."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not ADDRESS:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return host, int(port)


def peers_from_config(config: Config) -> list[IifPeer]:
    iif = config.iif
    if iif.peers and iif.service_id <= 0:
        raise ConfigError(config.source, "set the service that pays for the peers' callbacks", "iif", "service_id")
    peers = []
    for text in iif.peers:
        try:
            host, port = split_address(text)
            peers.append(IifPeer(host, port, iif.service_id, iif.default_caller or None, iif.external_line_mode))
        except (ValueError, PeerConfigError) as e:
            raise ConfigError(config.source, str(e), "iif", "peers") from None
    try:
        PeerTable(peers)
    except PeerConfigError as e:
        raise ConfigError(config.source, str(e), "iif", "peers") from None
    return peers


class IifService(Service):
    """Binds the IIF UDP socket at start; at stop ends the callbacks in progress
    (their RESPONSEs go out) before the socket closes."""

    log = Logger()

    def __init__(self, config: Config, reactor, engine, registry: CollectorRegistry, db=None,
                 reload_seconds: float = 10.0) -> None:
        self.config = config
        self.reactor = reactor
        self.db = db
        self.reload_seconds = reload_seconds
        self._loop: LoopingCall | None = None
        try:
            self.host, self.port_number = split_address(config.iif.listen)
        except ValueError as e:
            raise ConfigError(config.source, str(e), "iif", "listen") from None
        self.config_peers = peers_from_config(config)
        self.peers = PeerTable(self.config_peers)
        self.server = IifServer(engine, self.peers, reactor, remember_seconds=config.iif.remember_seconds,
                                registry=registry)
        self.port = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            self.port = self.reactor.listenUDP(self.port_number, self.server, interface=self.host)
        except CannotListenError as e:
            error = getattr(e, "socketError", e)
            reason = getattr(error, "strerror", None) or str(error)
            message = ConfigError(self.config.source, f"cannot listen on {self.config.iif.listen}: {reason}",
                                  "iif", "listen")
            os.write(2, f"switchd: {message}\n".encode())
            raise SystemExit(1) from None
        address = self.port.getHost()
        self.log.info("[iif] listening on {listen} (UDP {host} port {port})", listen=self.config.iif.listen,
                      host=address.host, port=address.port)

    def startService(self) -> None:
        super().startService()
        if self.db is not None:
            self._loop = LoopingCall(self.reload)
            self._loop.clock = self.reactor
            self._loop.start(self.reload_seconds, now=True)

    def reload(self):
        """``[iif] peers`` plus the enabled rows of ``/v1/iif-peers``."""
        def loaded(api_peers):
            try:
                self.peers.replace(self.config_peers + api_peers)
            except PeerConfigError as e:
                self.log.warn("IIF peers not reloaded: {error}", error=str(e))

        d = self.db.run(load_iif_peers, self.config_peers)
        d.addCallbacks(loaded, lambda f: self.log.failure("cannot read the IIF peers", f))
        return d

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.server.hangup_all("shutdown")
        if self.port is not None:
            return self.port.stopListening()
        return None
