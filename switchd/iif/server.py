"""The IIF server: REQUESTs from configured peer servers start callbacks.

A thin :class:`~twisted.internet.protocol.DatagramProtocol` over the sans-IO
codec (:mod:`switchd.iif.codec`) and the callback engine
(:class:`switchd.core.callback.CallbackEngine`):

* only datagrams from a configured peer (``peer_for(host, port)`` returns an
  :class:`IifPeer`) are served; anything else is dropped and counted;
* a valid REQUEST starts ``engine.start(...)``; ``ACK ... code=ok`` goes back
  once the engine has started the first call, ``code=fail`` when the request
  is invalid, the engine refuses it, or too many are in progress;
* ``RESPONSE ... real_duration=N`` goes back when the callback is over
  (``N`` is 0 for a callback that never bridged the two users);
* a retransmitted REQUEST (same peer, same id, same parameters) never starts
  a second call: while it is in progress it gets its ACK again, and for
  ``remember_seconds`` after it ended it gets its ACK and RESPONSE again;
  the same id with other parameters while in progress gets ``code=fail``;
* memory is bounded: at most ``max_in_progress`` callbacks at once and
  ``max_remembered`` finished ones.

Answers go to the address the REQUEST came from (the latest one, for a
retransmission from a new source port). Counters are kept in a dict
(:meth:`IifServer.stats`) and exported to Prometheus by :class:`IifCollector`.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core.callback import CallbackRefused, CallbackRequest, CallbackResult
from .codec import (
    MAX_DURATION,
    MAX_LENGTH,
    IifError,
    IifRequest,
    check_number,
    encode_ack,
    encode_response,
    parse_message,
)

__all__ = [
    "COUNTERS",
    "CallbackStarter",
    "IifCollector",
    "IifPeer",
    "IifServer",
    "PeerConfigError",
    "PeerTable",
]

#: Every counter of :meth:`IifServer.stats`, always present (0 until it happens).
COUNTERS = (
    "received",         # datagrams, from anyone
    "unknown_peer",     # from a source that is not a configured peer: dropped
    "oversized",        # longer than max_datagram: dropped, no answer
    "malformed",        # not a valid IIF message (ACK fail when it was a REQUEST with a readable id)
    "unexpected",       # a valid ACK or RESPONSE sent to us: dropped
    "requests",         # valid REQUESTs, retransmissions included
    "retransmissions",  # REQUESTs answered from memory, no new call
    "conflicts",        # an id in progress with other parameters: ACK fail
    "overload",         # max_in_progress reached: ACK fail
    "accepted",         # first call started: ACK ok
    "refused",          # the engine refused (no money, no route, limits): ACK fail
    "errors",           # the engine failed unexpectedly: ACK fail (logged)
    "acks_ok",          # ACK code=ok sent (retransmissions included)
    "acks_fail",        # ACK code=fail sent
    "responses",        # RESPONSE sent (retransmissions included)
    "send_errors",      # an answer could not be sent
)

# How many unknown sources are logged (once each) before the server stops logging new ones.
_LOGGED_SOURCES = 256


class PeerConfigError(ValueError):
    """A peer server's settings cannot work (named in the message)."""


@dataclass(frozen=True)
class IifPeer:
    """An application server allowed to send REQUESTs (the seed's "Peer server").

    ``host`` is an IP address; ``port`` its source port (0 in a :class:`PeerTable`:
    any port of that host). The service pays for the callbacks and routes
    both legs. ``default_caller`` is the calling number of the outbound legs;
    without it, ``external_line_mode`` must be on and the trunk's own number is
    used (server-to-server mode needs a caller: some carriers reject calls
    without one).
    """

    host: str
    port: int
    service_id: int
    default_caller: str | None = None
    external_line_mode: bool = False

    def __post_init__(self) -> None:
        where = f"IIF peer {self.host}:{self.port}"
        if not isinstance(self.host, str) or not self.host:
            raise PeerConfigError(f"{where}: host must be an IP address")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise PeerConfigError(f"{where}: port must be 0 to 65535")
        if isinstance(self.service_id, bool) or not isinstance(self.service_id, int) or self.service_id <= 0:
            raise PeerConfigError(f"{where}: service_id must be a positive integer")
        if self.default_caller is not None and self.default_caller != "":
            try:
                check_number("default_caller", self.default_caller)
            except IifError as e:
                raise PeerConfigError(f"{where}: {e.reason}") from None
        if not self.default_caller and not self.external_line_mode:
            raise PeerConfigError(
                f"{where}: default_caller is required unless external_line_mode is on "
                "(server-to-server mode: some carriers reject calls without a caller number)"
            )

    @property
    def caller(self) -> str | None:
        """The calling number of both legs; ``None``: the trunk's (external line's) own number."""
        return self.default_caller or None


def _normalize_host(host: str) -> str:
    """One spelling per address: IPv6 compressed, IPv4-mapped IPv6 as IPv4."""
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


class PeerTable:
    """Configured peers by (address, port): a ready-made ``peer_for`` callable.

    Addresses are compared as addresses (``::ffff:192.0.2.1`` is
    ``192.0.2.1``); a peer with port 0 matches any source port of its
    host, after the exact (host, port) peers. Host names are not resolved
    here: give addresses.
    """

    def __init__(self, peers: Iterable[IifPeer] = ()) -> None:
        self._peers: dict[tuple[str, int], IifPeer] = {}
        self.replace(peers)

    def replace(self, peers: Iterable[IifPeer]) -> None:
        """Use these peers from now on (a reload); raises :class:`PeerConfigError` and keeps the old ones."""
        table: dict[tuple[str, int], IifPeer] = {}
        for peer in peers:
            try:
                key = (_normalize_host(peer.host), peer.port)
            except ValueError:
                raise PeerConfigError(f"IIF peer {peer.host}:{peer.port}: host must be an IP address") from None
            if key in table:
                raise PeerConfigError(f"IIF peer {peer.host}:{peer.port} is configured twice")
            table[key] = peer
        self._peers = table

    def __call__(self, host: str, port: int) -> IifPeer | None:
        try:
            address = _normalize_host(host)
        except ValueError:
            return None
        peers = self._peers
        return peers.get((address, port)) or peers.get((address, 0))

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self):
        return iter(self._peers.values())


class CallbackStarter(Protocol):
    """What the server needs of :class:`switchd.core.callback.CallbackEngine`."""

    async def start(self, request: CallbackRequest) -> Any: ...


class _Entry:
    """One REQUEST id of one peer: where it stands and what was answered."""

    __slots__ = ("addr", "callback", "expires", "ok", "real_duration", "request")

    def __init__(self, request: IifRequest, addr: tuple) -> None:
        self.request = request
        self.addr = addr
        self.callback: Any = None
        self.ok: bool | None = None  # the ACK sent, once the engine answered
        self.real_duration: int | None = None  # the RESPONSE sent, once the callback ended
        self.expires = 0.0


class IifServer(DatagramProtocol):
    """The IIF endpoint; see the module docstring. Listen with ``reactor.listenUDP(port, server)``."""

    log = Logger()
    noisy = False

    def __init__(
        self,
        engine: CallbackStarter,
        peer_for: Callable[[str, int], IifPeer | None],
        clock: IReactorTime,
        *,
        remember_seconds: float = 600.0,
        max_in_progress: int = 10_000,
        max_remembered: int = 100_000,
        max_duration: int = MAX_DURATION,
        max_datagram: int = MAX_LENGTH,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if remember_seconds < 0 or max_in_progress < 1 or max_remembered < 0 or max_duration < 0 or max_datagram < 1:
            raise ValueError("IIF server limits must be positive")
        self.engine = engine
        self.peer_for = peer_for
        self.clock = clock
        self.remember_seconds = remember_seconds
        self.max_in_progress = max_in_progress
        self.max_remembered = max_remembered
        self.max_duration = max_duration
        self.max_datagram = max_datagram
        self.counters: Counter[str] = Counter({name: 0 for name in COUNTERS})
        self.outcomes: Counter[str] = Counter()
        self._live: dict[tuple[str, int, str], _Entry] = {}
        self._done: OrderedDict[tuple[str, int, str], _Entry] = OrderedDict()
        self._logged_sources: set[tuple[str, int]] = set()
        if registry is not None:
            registry.register(IifCollector(self))

    # -- Twisted -------------------------------------------------------------------

    def startProtocol(self) -> None:
        host = self.transport.getHost()
        self.log.info("IIF listening on UDP {host}:{port}", host=host.host, port=host.port)

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # type: ignore[override]
        counters = self.counters
        counters["received"] += 1
        peer = self.peer_for(addr[0], addr[1])
        if peer is None:
            counters["unknown_peer"] += 1
            self._log_unknown(addr)
            return
        if len(data) > self.max_datagram:
            counters["oversized"] += 1
            return
        try:
            message = parse_message(data, max_duration=self.max_duration, max_length=self.max_datagram)
        except IifError as e:
            counters["malformed"] += 1
            if e.method == "REQUEST" and e.id is not None:
                self._send_ack(e.id, False, addr)
            return
        if not isinstance(message, IifRequest):
            counters["unexpected"] += 1
            return
        counters["requests"] += 1
        self._request(peer, message, addr)

    # -- requests ------------------------------------------------------------------

    def _request(self, peer: IifPeer, request: IifRequest, addr: Any) -> None:
        counters = self.counters
        key = (peer.host, peer.port, request.id)
        entry = self._live.get(key)
        if entry is not None:
            if entry.request != request:
                counters["conflicts"] += 1
                self._send_ack(request.id, False, addr)
                return
            counters["retransmissions"] += 1
            entry.addr = addr
            if entry.ok is not None:  # else still starting: the ACK goes out when the engine answers
                self._send_ack(request.id, entry.ok, addr)
            return
        self._expire()
        entry = self._done.get(key)
        if entry is not None:
            if entry.request == request:
                counters["retransmissions"] += 1
                entry.addr = addr
                self._send_ack(request.id, bool(entry.ok), addr)
                if entry.real_duration is not None:
                    self._send_response(request.id, entry.real_duration, addr)
                return
            del self._done[key]  # the id was used again for a new callback once the old one had ended
        if len(self._live) >= self.max_in_progress:
            counters["overload"] += 1
            self._send_ack(request.id, False, addr)
            return
        entry = self._live[key] = _Entry(request, addr)
        caller = peer.caller
        d = maybeDeferred(self.engine.start, CallbackRequest(
            service_id=peer.service_id,
            user1=request.user1,
            user2=request.user2,
            max_seconds=request.duration,
            caller_id1=caller,
            caller_id2=caller,
            line_caller=caller is None and peer.external_line_mode,
            ann_id1=request.ann_id1,
            ann_id2=request.ann_id2,
            ann_digit2=request.ann_digit2,
            source="iif",
            reference=request.id,
        ))
        d.addCallbacks(self._started, self._not_started, callbackArgs=(key, entry), errbackArgs=(key, entry))
        d.addErrback(lambda f: self.log.failure("IIF request {id}: cannot follow the callback", f, id=request.id))

    def _started(self, callback: Any, key: tuple[str, int, str], entry: _Entry) -> None:
        self.counters["accepted"] += 1
        entry.callback = callback
        entry.ok = True
        self._send_ack(entry.request.id, True, entry.addr)
        callback.done.addCallbacks(self._finished, self._broken, callbackArgs=(key, entry),
                                   errbackArgs=(key, entry))

    def _not_started(self, failure: Failure, key: tuple[str, int, str], entry: _Entry) -> None:
        if failure.check(CallbackRefused):
            self.counters["refused"] += 1
            self.log.info("IIF request {id} from {host}:{port} refused: {reason}", id=entry.request.id,
                          host=key[0], port=key[1], reason=failure.value.reason)
        else:
            self.counters["errors"] += 1
            self.log.failure("IIF request {id} from {host}:{port}: the callback engine failed", failure,
                             id=entry.request.id, host=key[0], port=key[1])
        entry.ok = False
        self._send_ack(entry.request.id, False, entry.addr)
        self._remember(key, entry)

    def _finished(self, result: CallbackResult, key: tuple[str, int, str], entry: _Entry) -> None:
        self.outcomes[result.outcome] += 1
        entry.real_duration = max(0, int(result.real_duration))
        self._send_response(entry.request.id, entry.real_duration, entry.addr)
        self._remember(key, entry)

    def _broken(self, failure: Failure, key: tuple[str, int, str], entry: _Entry) -> None:
        """``done`` must never errback; if it does, the AS still gets its RESPONSE (0 seconds)."""
        self.counters["errors"] += 1
        self.log.failure("IIF request {id}: the callback ended with an error", failure, id=entry.request.id)
        self.outcomes["failed"] += 1
        entry.real_duration = 0
        self._send_response(entry.request.id, 0, entry.addr)
        self._remember(key, entry)

    # -- memory --------------------------------------------------------------------

    def _remember(self, key: tuple[str, int, str], entry: _Entry) -> None:
        """Move a finished id from the live table to the bounded, expiring memory."""
        if self._live.get(key) is entry:
            del self._live[key]
        entry.callback = None
        if self.max_remembered == 0 or self.remember_seconds == 0:
            return
        entry.expires = self.clock.seconds() + self.remember_seconds
        done = self._done
        done.pop(key, None)
        done[key] = entry
        while len(done) > self.max_remembered:
            done.popitem(last=False)

    def _expire(self) -> None:
        """Forget finished ids older than ``remember_seconds`` (they are in expiry order)."""
        done = self._done
        if not done:
            return
        now = self.clock.seconds()
        while done:
            key, entry = next(iter(done.items()))
            if entry.expires > now:
                break
            del done[key]

    # -- output --------------------------------------------------------------------

    def _send(self, data: bytes, addr: Any, sent: str) -> None:
        """Write one answer; ``sent`` names its counter (acks_ok, acks_fail, responses)."""
        transport = self.transport
        if transport is None:  # the port was closed while a callback went on
            self.counters["send_errors"] += 1
            return
        try:
            transport.write(data, addr)
        except OSError:
            self.counters["send_errors"] += 1
            return
        self.counters[sent] += 1

    def _send_ack(self, id: str, ok: bool, addr: Any) -> None:
        self._send(encode_ack(id, ok), addr, "acks_ok" if ok else "acks_fail")

    def _send_response(self, id: str, real_duration: int, addr: Any) -> None:
        self._send(encode_response(id, real_duration), addr, "responses")

    def _log_unknown(self, addr: Any) -> None:
        source = (addr[0], addr[1])
        if source in self._logged_sources or len(self._logged_sources) >= _LOGGED_SOURCES:
            return
        self._logged_sources.add(source)
        self.log.warn(  # noqa: G010 (twisted.logger.Logger has warn, not warning)
            "IIF datagrams from {host}:{port} ignored: not a configured peer server "
            "(logged once per source)", host=addr[0], port=addr[1])

    # -- introspection -------------------------------------------------------------

    @property
    def in_progress(self) -> int:
        """Callbacks started (or starting) and not over yet."""
        return len(self._live)

    @property
    def remembered(self) -> int:
        """Finished ids still answered from memory."""
        self._expire()
        return len(self._done)

    def stats(self) -> dict[str, int]:
        """Every counter of :data:`COUNTERS` plus the ``in_progress`` and ``remembered`` gauges."""
        out = dict(self.counters)
        out["in_progress"] = self.in_progress
        out["remembered"] = self.remembered
        return out

    def hangup_all(self, reason: str = "shutdown") -> int:
        """End every callback in progress (a stopping node); their RESPONSEs still go out. Returns how many."""
        callbacks = [e.callback for e in self._live.values() if e.callback is not None]
        for callback in callbacks:
            callback.hangup(reason)
        return len(callbacks)


class IifCollector:
    """The server's counters for Prometheus, read at scrape time."""

    def __init__(self, server: IifServer) -> None:
        self.server = server

    def collect(self):
        stats = self.server.stats()
        datagrams = CounterMetricFamily("switchd_iif_datagrams", "IIF datagrams received, by what became of them",
                                        labels=["result"])
        for name in ("unknown_peer", "oversized", "malformed", "unexpected", "requests"):
            datagrams.add_metric([name], stats[name])
        yield datagrams
        requests = CounterMetricFamily("switchd_iif_requests", "IIF REQUESTs by answer", labels=["result"])
        for name in ("accepted", "refused", "errors", "overload", "conflicts", "retransmissions"):
            requests.add_metric([name], stats[name])
        yield requests
        sent = CounterMetricFamily("switchd_iif_sent", "IIF answers sent", labels=["message"])
        for name in ("acks_ok", "acks_fail", "responses"):
            sent.add_metric([name], stats[name])
        yield sent
        yield CounterMetricFamily("switchd_iif_send_errors", "IIF answers that could not be sent",
                                  value=stats["send_errors"])
        outcomes = CounterMetricFamily("switchd_iif_callbacks", "IIF callbacks ended, by outcome", labels=["outcome"])
        for outcome, count in sorted(self.server.outcomes.items()):
            outcomes.add_metric([outcome], count)
        yield outcomes
        yield GaugeMetricFamily("switchd_iif_in_progress", "IIF callbacks in progress", value=stats["in_progress"])
        yield GaugeMetricFamily("switchd_iif_remembered", "Finished IIF ids answered from memory",
                                value=stats["remembered"])
