"""SIP transports: UDP, TCP and TLS listeners and connections (RFC 3261 §18,
RFC 3581 rport, RFC 5626 keep-alives).

Thin Twisted adapters over the sans-IO parser. Inbound: protection gets the
first look at every packet (a banned or flooding source costs no parsing),
then the message is parsed, a malformed request is answered with the status
RFC 3261 asks for, a malformed response is dropped, and the top Via of a
request is stamped with ``received`` and ``rport`` before the message goes
up to the transaction layer. Outbound: requests larger than the UDP MTU go
over TCP (§18.1.1), responses go where §18.2.2 and RFC 3581 say, stream
connections are reused in both directions and closed when idle.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Callable, Protocol as TypingProtocol

from twisted.internet import ssl
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .message import (
    Message,
    Ping,
    Pong,
    Request,
    Response,
    SIPParseError,
    StreamParser,
    is_keepalive,
    parse_datagram,
)
from .transaction import Destination

RELIABLE = frozenset({"tcp", "tls"})
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}


# -- listener descriptions ------------------------------------------------------


@dataclass(frozen=True)
class ListenSpec:
    """One ``[sip] listen`` item: ``udp:5060``, ``tcp:5060:interface=::1``,
    ``tls:5061:privateKey=key.pem:certKey=cert.pem``."""

    transport: str
    port: int
    interface: str = ""
    private_key: str = ""
    cert_key: str = ""
    description: str = ""


def _split_description(text: str) -> list[str]:
    """Split on ':' except inside [brackets] or after a backslash."""
    parts, current, depth, i = [], [], 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            current.append(text[i + 1])
            i += 2
            continue
        if c == "[":
            depth += 1
        elif c == "]":
            depth = max(0, depth - 1)
        elif c == ":" and depth == 0:
            parts.append("".join(current))
            current = []
            i += 1
            continue
        current.append(c)
        i += 1
    parts.append("".join(current))
    return parts


def parse_listen(description: str) -> ListenSpec:
    """Parse a listener; raises ValueError with a message fit for a sysadmin."""
    parts = _split_description(description)
    transport = parts[0].lower()
    if transport not in DEFAULT_PORTS:
        raise ValueError(f"{description!r}: the transport must be udp, tcp or tls")
    if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) > 65535:
        raise ValueError(f"{description!r}: expected {transport}:PORT with PORT from 0 to 65535")
    options = {}
    for part in parts[2:]:
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"{description!r}: expected name=value, got {part!r}")
        options[name] = value
    allowed = {"interface"} | ({"privateKey", "certKey"} if transport == "tls" else set())
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"{description!r}: unknown option {sorted(unknown)[0]!r}")
    interface = options.get("interface", "").strip("[]")
    if interface:
        try:
            ipaddress.ip_address(interface)
        except ValueError:
            raise ValueError(f"{description!r}: interface must be an IP address") from None
    if transport == "tls" and not options.get("privateKey"):
        raise ValueError(f"{description!r}: tls needs privateKey=FILE (and certKey=FILE if separate)")
    return ListenSpec(
        transport=transport,
        port=int(parts[1]),
        interface=interface,
        private_key=options.get("privateKey", ""),
        cert_key=options.get("certKey", "") or options.get("privateKey", ""),
        description=description,
    )


def server_tls_options(private_key: str, cert_key: str) -> ssl.CertificateOptions:
    """Server TLS with pyOpenSSL: TLS 1.2 at least, key and chain from PEM files."""
    with open(cert_key, "rb") as f:
        cert_pem = f.read()
    with open(private_key, "rb") as f:
        key_pem = f.read()
    certificate = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    chain = []
    for block in cert_pem.split(b"-----END CERTIFICATE-----")[1:]:
        if b"-----BEGIN CERTIFICATE-----" in block:
            chain.append(ssl.Certificate.loadPEM(block + b"-----END CERTIFICATE-----\n").original)
    return ssl.CertificateOptions(
        privateKey=certificate.privateKey.original,
        certificate=certificate.original,
        extraCertChain=chain or None,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def client_tls_options(hostname: str, ca_file: str = "", verify: bool = True):
    """Outbound TLS: the peer's certificate and name are checked (service_identity)."""
    if not verify:
        return ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_2, verify=False)
    trust = None
    if ca_file:
        with open(ca_file, "rb") as f:
            pem = f.read()
        certs = [
            ssl.Certificate.loadPEM(block + b"-----END CERTIFICATE-----\n")
            for block in pem.split(b"-----END CERTIFICATE-----")
            if b"-----BEGIN CERTIFICATE-----" in block
        ]
        trust = ssl.trustRootFromCertificates(certs)
    return ssl.optionsForClientTLS(
        hostname,
        trustRoot=trust,
        extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2},
    )


# -- Via processing ---------------------------------------------------------------


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.strip("[]")) == ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return a.lower() == b.lower()


def stamp_via(request: Request, host: str, port: int, force_rport: bool = False) -> None:
    """Add ``received`` (§18.2.1) and ``rport`` (RFC 3581 §4) to the top Via."""
    via = request.top_via
    if via is None:
        return
    sent_host, _ = via.sent_by
    changed = via
    if via.has_rport or force_rport:
        changed = changed.with_param("rport", str(port)).with_param("received", host)
    elif not _same_host(sent_host, host):
        changed = changed.with_param("received", host)
    if changed is not via:
        request.pop_first("Via")
        request.add("Via", changed, first=True)


def response_destination(response: Response, arrived: Destination) -> Destination:
    """Where a response goes (§18.2.2, RFC 3581 §4): the top Via decides."""
    via = response.top_via
    if via is None:
        return arrived
    transport = via.transport.lower() if via.transport else arrived.transport
    if transport in RELIABLE:
        return arrived  # the connection it came on, if still open (else reconnect below)
    maddr = via.maddr
    sent_host, sent_port = via.sent_by
    if maddr:
        return Destination("udp", maddr, sent_port or 5060)
    host = via.received or sent_host
    rport = via.rport
    port = rport if rport else (sent_port or 5060)
    return Destination("udp", host.strip("[]"), port)


# -- the protocols --------------------------------------------------------------


class Gatekeeper(TypingProtocol):
    """What the transport asks before it spends anything on a packet."""

    def admit(self, host: str) -> bool: ...


class _Datagrams(DatagramProtocol):
    def __init__(self, owner: "SIPTransport", family: int) -> None:
        self.owner = owner
        self.family = family

    def datagramReceived(self, data: bytes, addr) -> None:
        self.owner._datagram(self, data, addr[0], addr[1])


class StreamConnection(Protocol):
    """One TCP or TLS connection, inbound or outbound."""

    def __init__(self, owner: "SIPTransport", transport_name: str, key: Destination | None = None) -> None:
        self.owner = owner
        self.name = transport_name
        self.parser = StreamParser(owner.max_message_bytes)
        self.peer: Destination | None = key
        self.pending: list[bytes] = []
        self.connected = False
        self.last_activity = owner.clock.seconds()

    def connectionMade(self) -> None:
        address = self.transport.getPeer()
        peer = Destination(self.name, address.host, address.port)
        if self.peer is None:
            self.peer = peer
        self.owner._register(self, peer)
        self.connected = True
        self.last_activity = self.owner.clock.seconds()
        for data in self.pending:
            self.transport.write(data)
        self.pending.clear()

    def write(self, data: bytes) -> None:
        self.last_activity = self.owner.clock.seconds()
        if self.connected:
            self.transport.write(data)
        else:
            self.pending.append(data)

    def dataReceived(self, data: bytes) -> None:
        self.last_activity = self.owner.clock.seconds()
        peer = self.peer
        assert peer is not None
        if not self.owner._admit(peer.host):
            self.transport.abortConnection()
            return
        try:
            events = self.parser.feed(data)
        except SIPParseError:
            self.transport.abortConnection()
            return
        for event in events:
            if isinstance(event, Ping):
                self.transport.write(b"\r\n")
            elif isinstance(event, Pong):
                continue
            elif isinstance(event, SIPParseError):
                self.owner._malformed(event, peer)
                if event.fatal:
                    self.transport.loseConnection()
                    return
            else:
                self.owner._deliver(event, peer)

    def connectionLost(self, reason: Failure = None) -> None:
        self.connected = False
        self.owner._forget(self)


class _StreamFactory(Factory):
    def __init__(self, owner: "SIPTransport", name: str) -> None:
        self.owner = owner
        self.name = name

    def buildProtocol(self, addr):
        return StreamConnection(self.owner, self.name)


class _OutboundFactory(ClientFactory):
    def __init__(self, connection: StreamConnection) -> None:
        self.connection = connection

    def buildProtocol(self, addr):
        return self.connection

    def clientConnectionFailed(self, connector, reason: Failure) -> None:
        self.connection.owner._connect_failed(self.connection, reason)


# -- the transport ---------------------------------------------------------------------


class SIPTransport:
    """All SIP sockets of the node and the sending rules between them."""

    log = Logger()

    def __init__(
        self,
        reactor,
        clock: IReactorTime,
        on_message: Callable[[Message, Destination], None],
        *,
        udp_mtu: int = 1300,
        max_message_bytes: int = 65535,
        stream_idle_seconds: float = 300,
        advertise: str = "",
        tls_ca_file: str = "",
        tls_verify: bool = True,
        gatekeeper: Gatekeeper | None = None,
        force_rport: Callable[[str], bool] = lambda host: False,
        trace: Callable[[str, bytes, Destination], None] | None = None,
        on_counter: Callable[[str, str], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock = clock
        self.on_message = on_message
        self.udp_mtu = udp_mtu
        self.max_message_bytes = max_message_bytes
        self.idle_seconds = stream_idle_seconds
        self.advertise = advertise
        self.tls_ca_file = tls_ca_file
        self.tls_verify = tls_verify
        self.gatekeeper = gatekeeper
        self.force_rport = force_rport
        self.trace = trace
        self.count = on_counter or (lambda name, label: None)
        self.ports: list[tuple[ListenSpec, object]] = []
        self._udp: dict[int, tuple[_Datagrams, object]] = {}  # family -> (protocol, port)
        self._connections: dict[Destination, StreamConnection] = {}
        self._sweeper: LoopingCall | None = None

    # -- listening ------------------------------------------------------------

    def listen(self, spec: ListenSpec):
        """Bind one listener now; raises CannotListenError if it cannot."""
        interface = spec.interface or ""
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        if spec.transport == "udp":
            protocol = _Datagrams(self, family)
            port = self.reactor.listenUDP(spec.port, protocol, interface=interface, maxPacketSize=65535)
            self._udp.setdefault(family, (protocol, port))
        elif spec.transport == "tcp":
            port = self.reactor.listenTCP(spec.port, _StreamFactory(self, "tcp"), interface=interface)
        else:
            options = server_tls_options(spec.private_key, spec.cert_key)
            port = self.reactor.listenSSL(spec.port, _StreamFactory(self, "tls"), options, interface=interface)
        self.ports.append((spec, port))
        if self._sweeper is None:
            self._sweeper = LoopingCall(self._sweep)
            self._sweeper.clock = self.clock
            self._sweeper.start(max(1.0, min(30.0, self.idle_seconds / 3)), now=False)
        return port

    def local(self, transport: str) -> tuple[str, int] | None:
        """The address of our first listener of a transport, for Via and Contact."""
        for spec, port in self.ports:
            if spec.transport == transport:
                host = port.getHost()
                return (self.advertise or host.host, host.port)
        return None

    def via_host(self, transport: str, peer_host: str) -> tuple[str, int]:
        """The sent-by for a request to ``peer_host``: advertised, bound, or routed address."""
        local = self.local(transport) or self.local("udp") or ("127.0.0.1", 5060)
        host, port = local
        if self.advertise:
            return self.advertise, port
        if host in ("0.0.0.0", "::", ""):
            host = self._route_source(peer_host)
        return host, port

    @staticmethod
    def _route_source(peer_host: str) -> str:
        """The local address the kernel would use towards ``peer_host`` (no packet is sent)."""
        family = socket.AF_INET6 if ":" in peer_host else socket.AF_INET
        probe = socket.socket(family, socket.SOCK_DGRAM)
        try:
            probe.connect((peer_host, 9))
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1" if family == socket.AF_INET else "::1"
        finally:
            probe.close()

    def stop(self):
        """Close listeners and connections."""
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        for connection in list(self._connections.values()):
            if connection.transport is not None:
                connection.transport.loseConnection()
        results = [port.stopListening() for _, port in self.ports]
        self.ports = []
        self._udp.clear()
        return results

    # -- receiving --------------------------------------------------------------

    def _admit(self, host: str) -> bool:
        if self.gatekeeper is None or self.gatekeeper.admit(host):
            return True
        self.count("dropped", "banned-or-flood")
        return False

    def _datagram(self, protocol: _Datagrams, data: bytes, host: str, port: int) -> None:
        if not self._admit(host):
            return
        if is_keepalive(data):
            return
        source = Destination("udp", host, port)
        try:
            message = parse_datagram(data)
        except SIPParseError as error:
            self._malformed(error, source)
            return
        self._deliver(message, source)

    def _malformed(self, error: SIPParseError, source: Destination) -> None:
        self.count("malformed", "request" if error.status else "response")
        response = error.response() if error.status else None
        self.log.debug("malformed SIP from {source}: {reason}", source=source, reason=error.reason)
        if response is not None:
            try:
                self.send(response, source)
            except Exception:
                self.log.failure("cannot answer a malformed request from {source}", source=source)

    def _deliver(self, message: Message, source: Destination) -> None:
        if self.trace is not None:
            self.trace("in", message.to_bytes(), source)
        if isinstance(message, Request):
            try:
                stamp_via(message, source.host, source.port, self.force_rport(source.host))
            except SIPParseError as error:
                self._malformed(error, source)
                return
        try:
            self.on_message(message, source)
        except Exception:
            self.log.failure("SIP message handling failed for {source}", source=source)

    # -- sending ----------------------------------------------------------------

    def send(self, message: Message, destination: Destination) -> Destination:
        """Send now (or once the connection is up); returns where it really went.

        Raises OSError when there is no socket for the transport at all.
        """
        if isinstance(message, Response):
            destination = response_destination(message, destination)
        data = message.to_bytes()
        if (
            isinstance(message, Request)
            and destination.transport == "udp"
            and len(data) > self.udp_mtu
            and self.local("tcp") is not None
        ):
            destination = destination._replace(transport="tcp")
            via = message.top_via
            if via is not None:
                message.pop_first("Via")
                message.add("Via", via._replace(transport="TCP"), first=True)
                data = message.to_bytes()
        if self.trace is not None:
            self.trace("out", data, destination)
        if destination.transport == "udp":
            self._send_udp(data, destination)
        else:
            self._send_stream(data, destination)
        return destination

    def _send_udp(self, data: bytes, destination: Destination) -> None:
        host = destination.host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        entry = self._udp.get(family)
        if entry is None:
            raise OSError(f"no UDP listener for {'IPv6' if family == socket.AF_INET6 else 'IPv4'}")
        protocol, _ = entry
        try:
            ipaddress.ip_address(host)
        except ValueError:
            d = self.reactor.resolve(host)
            d.addCallback(lambda ip: protocol.transport.write(data, (ip, destination.port)))
            d.addErrback(lambda f: self.log.warn("cannot resolve {host}: {error}", host=host, error=f.value))
            return
        protocol.transport.write(data, (host, destination.port))

    def _send_stream(self, data: bytes, destination: Destination) -> None:
        key = Destination(destination.transport, destination.host.strip("[]"), destination.port)
        connection = self._connections.get(key)
        if connection is None:
            connection = self._connect(key)
        connection.write(data)

    def _connect(self, key: Destination) -> StreamConnection:
        if key.transport not in RELIABLE:
            raise OSError(f"cannot open a {key.transport} connection")
        connection = StreamConnection(self, key.transport, key)
        self._connections[key] = connection
        factory = _OutboundFactory(connection)
        if key.transport == "tcp":
            self.reactor.connectTCP(key.host, key.port, factory, timeout=10)
        else:
            options = client_tls_options(key.host, self.tls_ca_file, self.tls_verify)
            self.reactor.connectSSL(key.host, key.port, factory, options, timeout=10)
        return connection

    def _connect_failed(self, connection: StreamConnection, reason: Failure) -> None:
        self.log.warn("cannot connect to {peer}: {error}", peer=connection.peer, error=reason.value)
        self.count("connect-failed", connection.name)
        self._forget(connection)

    # -- connection table -----------------------------------------------------------

    def _register(self, connection: StreamConnection, peer: Destination) -> None:
        self._connections[peer] = connection
        if connection.peer is not None and connection.peer != peer:
            self._connections[connection.peer] = connection

    def _forget(self, connection: StreamConnection) -> None:
        for key in [k for k, c in self._connections.items() if c is connection]:
            del self._connections[key]

    def _sweep(self) -> None:
        limit = self.clock.seconds() - self.idle_seconds
        for connection in set(self._connections.values()):
            if connection.last_activity < limit and connection.transport is not None:
                connection.transport.loseConnection()

    @property
    def connections(self) -> int:
        return len(set(self._connections.values()))


__all__ = [
    "ListenSpec",
    "SIPTransport",
    "StreamConnection",
    "client_tls_options",
    "parse_listen",
    "response_destination",
    "server_tls_options",
    "stamp_via",
]
