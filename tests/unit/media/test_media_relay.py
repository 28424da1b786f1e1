"""The RTP relay on real loopback sockets; time comes from task.Clock.

The relay's sockets live on the real reactor (pytest-twisted), while its
timeout checks run on a ``Clock`` passed as ``clock=``, so a test can move
time by hand and still exchange real datagrams.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock, deferLater

from switchd.media import relay as relay_module
from switchd.media.dtmf import DtmfDigit
from switchd.media.relay import MediaRelay, NoPorts, PortAllocator, RelayError
from switchd.media.rtp import build_rtp, build_telephone_event

LOW, HIGH = 40000, 49999  # tests take random blocks of this range; busy ports are skipped
HOST = "127.0.0.1"


def port_block(size: int) -> tuple[int, int]:
    """A random even-aligned block of ``size`` ports, so that concurrent runs rarely meet."""
    low = LOW + 2 * random.randrange((HIGH + 1 - LOW - size) // 2)
    return low, low + size - 1


class Party(DatagramProtocol):
    """A phone (or one of its sockets): records what it receives, sends on demand."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []

    def datagramReceived(self, data, addr):
        self.received.append((data, addr))

    @property
    def addr(self) -> tuple[str, int]:
        host = self.transport.getHost()
        return host.host, host.port

    @property
    def port(self) -> int:
        return self.transport.getHost().port

    def send(self, data: bytes, port: int, host: str = HOST) -> None:
        self.transport.write(data, (host, port))

    def payloads(self) -> list[bytes]:
        return [data for data, _ in self.received]


@pytest.fixture
def parties():
    """``parties()`` binds a new Party on 127.0.0.1 (or ``host``) port 0."""
    ports = []

    def make(host: str = HOST, port: int = 0) -> Party:
        party = Party()
        ports.append(reactor.listenUDP(port, party, interface=host))
        return party

    yield make
    for port in ports:
        port.stopListening()


def rtp_pair(parties) -> tuple[Party, Party]:
    """Two parties on adjacent ports (RTP, RTP + 1), as a phone that does not say a=rtcp."""
    for _ in range(50):
        rtp = parties()
        with contextlib.suppress(CannotListenError):
            return rtp, parties(port=rtp.port + 1)
    raise AssertionError("no two adjacent free ports")


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def relays(clock):
    """``relays(**options)``: a MediaRelay on 127.0.0.1, closed after the test."""
    made = []

    def make(ports: tuple[int, int] | None = None, address: str = HOST, **options) -> MediaRelay:
        options.setdefault("clock", clock)
        relay = MediaRelay(reactor, address, PortAllocator(*(ports or port_block(1000))), **options)
        made.append(relay)
        return relay

    yield make
    for relay in made:
        relay.close_all()


@pytest.fixture(params=["epoll set", "reader per socket"])
def readers(request, monkeypatch):
    """Run a test with each of the two read loops."""
    if request.param == "reader per socket":
        monkeypatch.setattr(relay_module, "_make_readers", relay_module._ReactorReaders)
    return request.param


async def until(predicate, timeout: float = 5.0) -> None:
    """Let the real reactor run until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.002, lambda: None)


def voice(seq: int, ssrc: int = 0x1111, pt: int = 0) -> bytes:
    return build_rtp(pt, seq, seq * 160, ssrc, bytes([seq & 0xFF]) * 160)


# --------------------------------------------------------------------------
# Port allocation
# --------------------------------------------------------------------------


def test_allocator_hands_out_even_ports_round_robin():
    ports = PortAllocator(40001, 40010)
    assert ports.free == ports.size == 4
    first = [ports.take() for _ in range(3)]
    assert first == [40002, 40004, 40006] and ports.free == 1
    ports.give(40004)
    assert [ports.take(), ports.take()] == [40008, 40004]  # the freed port comes last
    with pytest.raises(NoPorts, match="all 4 RTP port pairs of 40001-40010 are in use"):
        ports.take()
    with pytest.raises(RelayError, match="port 40003 was not taken"):
        ports.give(40003)
    for bad in [(40000, 40000), (0, 100), (60000, 70000), (41000, 40000)]:
        with pytest.raises(RelayError, match="holds no even/odd RTP/RTCP pair"):
            PortAllocator(*bad)


# --------------------------------------------------------------------------
# Forwarding
# --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_rtp_is_forwarded_both_ways(readers, relays, parties):
    relay = relays()
    alice, bob = parties(), parties()
    session = relay.open("call-1")
    assert relay.sessions == {"call-1": session} and session.leg("a") is session.a
    assert session.a.local_port % 2 == 0 and session.a.local_port != session.b.local_port
    session.a.set_remote(*alice.addr)
    session.b.set_remote(*bob.addr)
    sent_by_alice = [voice(i) for i in range(3)]
    for packet in sent_by_alice:
        alice.send(packet, session.a.local_port)
    sent_by_bob = [voice(i, ssrc=0x2222, pt=8) for i in range(2)]
    for packet in sent_by_bob:
        bob.send(packet, session.b.local_port)
    await until(lambda: len(bob.received) == 3 and len(alice.received) == 2)
    assert bob.payloads() == sent_by_alice and alice.payloads() == sent_by_bob
    assert {addr for _, addr in bob.received} == {(HOST, session.b.local_port)}
    assert {addr for _, addr in alice.received} == {(HOST, session.a.local_port)}
    a, b = session.a, session.b
    assert (a.packets_in, a.bytes_in, b.packets_out) == (3, 3 * 172, 3)
    assert (b.packets_in, a.packets_out, a.dropped, b.send_errors) == (2, 2, 0, 0)
    assert a.latched and a.remote == alice.addr
    stats = relay.stats()
    assert stats["sessions"] == 1 and stats["ports_free"] == relay.ports.size - 2
    assert (stats["packets_relayed"], stats["bytes"], stats["dropped"]) == (5, 5 * 172, 0)


@pytest_twisted.ensureDeferred
async def test_rtcp_goes_between_the_rtcp_ports(readers, relays, parties):
    relay = relays()
    alice_rtp, alice_rtcp = rtp_pair(parties)
    bob_rtp, bob_rtcp = parties(), parties()
    session = relay.open("call-rtcp")
    session.a.set_remote(HOST, alice_rtp.port)  # RTCP on port + 1
    session.b.set_remote(HOST, bob_rtp.port, bob_rtcp.port)  # a=rtcp
    report = bytes.fromhex("80c9 0001 0000abcd")
    alice_rtcp.send(report, session.a.local_port + 1)
    bob_rtcp.send(report + b"b", session.b.local_port + 1)
    await until(lambda: bob_rtcp.received and alice_rtcp.received)
    assert bob_rtcp.received == [(report, (HOST, session.b.local_port + 1))]
    assert alice_rtcp.received == [(report + b"b", (HOST, session.a.local_port + 1))]
    assert not alice_rtp.received and not bob_rtp.received
    assert (session.a.rtcp_in, session.b.rtcp_out, session.a.packets_in) == (1, 1, 0)
    assert relay.stats()["rtcp"] == 2


# --------------------------------------------------------------------------
# Latching
# --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_comedia_ignores_the_sdp_address_and_latches_on_the_first_packet(relays, parties):
    relay = relays()
    alice, bob, bob_rtcp = parties(), parties(), parties()
    session = relay.open("call-nat")
    session.a.set_remote(*alice.addr)
    session.b.set_remote("127.0.0.1", 9, comedia=True)  # the private address a NATed phone announces
    assert session.b.remote is None and not session.b.latched
    alice.send(voice(1), session.a.local_port)
    await until(lambda: session.a.packets_in == 1)
    assert session.b.packets_out == 0  # nowhere to send yet
    bob.send(voice(1, ssrc=7), session.b.local_port)
    await until(lambda: alice.received)
    assert session.b.latched and session.b.remote == bob.addr
    assert session.b.rtcp_remote == (HOST, bob.port + 1)  # until its RTCP shows where it comes from
    alice.send(voice(2), session.a.local_port)
    await until(lambda: bob.received)
    assert bob.payloads() == [voice(2)]
    bob_rtcp.send(b"\x80\xc9\x00\x01rtcp", session.b.local_port + 1)
    await until(lambda: session.b.rtcp_in == 1)
    assert session.b.rtcp_remote == bob_rtcp.addr


@pytest_twisted.ensureDeferred
async def test_set_remote_resets_the_latch(relays, parties):
    relay = relays()
    alice, bob, bob_moved = parties(), parties(), parties()
    session = relay.open("call-reinvite")
    session.a.set_remote(*alice.addr)
    session.b.set_remote(HOST, 9, comedia=True)
    bob.send(voice(1, ssrc=7), session.b.local_port)
    await until(lambda: session.b.latched)
    session.b.set_remote(HOST, 9, comedia=True)  # a re-INVITE
    assert not session.b.latched and session.b.remote is None
    bob_moved.send(voice(2, ssrc=7), session.b.local_port)  # same SSRC, old source not silent
    await until(lambda: session.b.latched)
    assert session.b.remote == bob_moved.addr
    alice.send(voice(3), session.a.local_port)
    await until(lambda: bob_moved.received)
    assert not bob.received


@pytest_twisted.ensureDeferred
async def test_a_new_ssrc_relatches_a_stray_packet_does_not(relays, parties):
    relay = relays()
    alice, bob, other = parties(), parties(), parties()
    session = relay.open("call-ssrc")
    session.a.set_remote(*alice.addr)
    session.b.set_remote(HOST, 9, comedia=True)
    other.send(b"not RTP", session.b.local_port)  # junk latches nothing
    await until(lambda: session.b.packets_in == 1)
    assert not session.b.latched and session.b.remote is None
    bob.send(voice(1, ssrc=7), session.b.local_port)
    await until(lambda: session.b.latched)
    other.send(voice(2, ssrc=7), session.b.local_port)  # same SSRC, bob still talking: forwarded only
    other.send(bytes.fromhex("80c8 0006 00000009") + b"\x00" * 20, session.b.local_port)  # RTCP (mux)
    await until(lambda: len(alice.received) == 4)
    assert session.b.remote == bob.addr
    other.send(voice(3, ssrc=8), session.b.local_port)  # a new stream from a new address: re-latch
    await until(lambda: len(alice.received) == 5)
    assert session.b.remote == other.addr
    alice.send(voice(4), session.a.local_port)
    await until(lambda: other.received)
    assert not bob.received and session.b.dropped == 0


@pytest_twisted.ensureDeferred
async def test_a_silent_source_yields_to_its_new_nat_binding(relays, parties, clock):
    relay = relays(check_interval=1.0)
    alice, bob, rebound = parties(), parties(), parties()
    session = relay.open("call-rebind")
    session.a.set_remote(*alice.addr)
    session.b.set_remote(HOST, 9, comedia=True)
    bob.send(voice(1, ssrc=7), session.b.local_port)
    await until(lambda: session.b.latched)
    clock.advance(1.0)  # a tick sees bob's packet
    rebound.send(voice(2, ssrc=7), session.b.local_port)
    await until(lambda: len(alice.received) == 2)
    assert session.b.remote == bob.addr  # bob spoke less than a second ago
    clock.advance(1.0)
    rebound.send(voice(3, ssrc=7), session.b.local_port)
    await until(lambda: len(alice.received) == 3)
    assert session.b.remote == bob.addr  # silent for exactly 1 s: not yet
    clock.advance(0.5)
    rebound.send(voice(4, ssrc=7), session.b.local_port)
    await until(lambda: len(alice.received) == 4)
    assert session.b.remote == rebound.addr


@pytest_twisted.ensureDeferred
async def test_strict_source_drops_other_addresses_until_set_remote(relays, parties):
    relay = relays(strict_source=True)
    alice, bob, intruder = parties(), parties(), parties()
    bob_rtcp, intruder_rtcp = parties(), parties()
    session = relay.open("call-strict")
    session.a.set_remote(*alice.addr)
    session.b.set_remote(*bob.addr)
    bob.send(voice(1, ssrc=7), session.b.local_port)
    await until(lambda: session.b.latched)
    intruder.send(voice(2, ssrc=9), session.b.local_port)
    bob.send(voice(3, ssrc=7), session.b.local_port)
    await until(lambda: len(alice.received) == 2)
    assert alice.payloads() == [voice(1, ssrc=7), voice(3, ssrc=7)]
    assert session.b.dropped == 1 and relay.stats()["dropped"] == 1
    bob_rtcp.send(b"\x80\xc9\x00\x01good", session.b.local_port + 1)
    intruder_rtcp.send(b"\x80\xc9\x00\x01evil", session.b.local_port + 1)
    bob_rtcp.send(b"\x80\xc9\x00\x01more", session.b.local_port + 1)
    await until(lambda: session.b.rtcp_in == 2 and session.b.dropped == 2)
    session.b.set_remote(*intruder.addr)  # the party moved (re-INVITE)
    intruder.send(voice(4, ssrc=9), session.b.local_port)
    await until(lambda: len(alice.received) == 3)
    assert session.b.dropped == 2


@pytest_twisted.ensureDeferred
async def test_strict_source_without_comedia_latches_only_on_the_sdp_host(relays, parties):
    relay = relays(strict_source=True)
    alice, bob, intruder = parties(), parties(), parties("127.0.0.9")
    session = relay.open("call-strict-first")
    session.a.set_remote(*alice.addr)
    session.b.set_remote(*bob.addr)
    intruder.send(voice(1, ssrc=9), session.b.local_port)  # first, from another host
    await until(lambda: session.b.dropped == 1)
    assert not session.b.latched and alice.received == []
    bob.send(voice(2, ssrc=7), session.b.local_port)
    await until(lambda: len(alice.received) == 1)
    assert session.b.latched and alice.payloads() == [voice(2, ssrc=7)]
    # With COMEDIA the SDP address means nothing: the first packet latches wherever it comes from.
    comedia = relay.open("call-strict-comedia")
    comedia.a.set_remote(*alice.addr)
    comedia.b.set_remote("192.0.2.1", 4000, comedia=True)
    intruder.send(voice(3, ssrc=9), comedia.b.local_port)
    await until(lambda: comedia.b.latched)
    assert comedia.b.dropped == 0


# --------------------------------------------------------------------------
# Mute, player, DTMF, tap
# --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_muted_leg_hears_only_the_player(relays, parties):
    relay = relays()
    alice, bob = parties(), parties()
    session = relay.open("call-prompt")
    session.a.set_remote(*alice.addr)
    session.b.set_remote(*bob.addr)
    session.b.muted = True
    alice.send(voice(1), session.a.local_port)
    session.b.send(b"prompt")
    bob.send(voice(1, ssrc=2), session.b.local_port)  # bob is still heard
    await until(lambda: alice.received and bob.received and session.a.packets_in == 1)
    session.b.muted = False
    alice.send(voice(2), session.a.local_port)
    await until(lambda: len(bob.received) == 2)
    assert bob.payloads() == [b"prompt", voice(2)]
    assert bob.received[0][1] == (HOST, session.b.local_port)  # the player sends from our RTP port
    assert session.b.packets_out == 2


@pytest_twisted.ensureDeferred
async def test_rfc4733_digits_are_detected_once_and_still_forwarded(readers, relays, parties):
    relay = relays()
    alice, bob = parties(), parties()
    session = relay.open("call-dtmf")
    session.a.set_remote(*alice.addr)
    session.b.set_remote(*bob.addr)
    session.a.telephone_event_pt = 101
    session.b.telephone_event_pt = 96
    digits = []
    session.on_dtmf = lambda side, digit: digits.append((side, digit))
    seq = 100

    def event(party, port, pt, ts, key, duration, end=False):
        nonlocal seq
        seq += 1
        party.send(build_rtp(pt, seq, ts, 0xABC, build_telephone_event(key, end=end, duration=duration),
                             marker=duration == 160), port)

    a_port, b_port = session.a.local_port, session.b.local_port
    alice.send(voice(1), a_port)
    for duration in (160, 320, 480):
        event(alice, a_port, 101, 8000, "5", duration)
    for _ in range(3):
        event(alice, a_port, 101, 8000, "5", 640, end=True)
    alice.send(voice(2), a_port)
    event(alice, a_port, 101, 8000, "5", 640, end=True)  # a late retransmit
    alice.send(build_rtp(101, 999, 9000, 0xABC, b"\x05"), a_port)  # too short to read
    event(bob, b_port, 96, 5000, "#", 160)
    event(bob, b_port, 96, 5000, "#", 800, end=True)
    event(bob, b_port, 101, 6000, "1", 800, end=True)  # not bob's telephone-event type
    await until(lambda: len(bob.received) == 10 and len(alice.received) == 3)
    assert digits == [("a", DtmfDigit("5", 80, 10)), ("b", DtmfDigit("#", 100, 10))]
    assert session.a.malformed == 1
    event(alice, a_port, 101, 16000, "7", 160)
    await until(lambda: len(bob.received) == 11)
    session.a.telephone_event_pt = 101  # a re-INVITE naming the same type: the press goes on
    event(alice, a_port, 101, 16000, "7", 800, end=True)
    await until(lambda: len(digits) == 3)
    assert digits[2] == ("a", DtmfDigit("7", 100, 10))
    session.a.telephone_event_pt = None
    event(alice, a_port, 101, 20000, "9", 800, end=True)
    await until(lambda: len(bob.received) == 13)
    assert len(digits) == 3


@pytest_twisted.ensureDeferred
async def test_the_tap_sees_rtp_from_both_sides_and_cannot_break_forwarding(relays, parties):
    relay = relays()
    alice, bob = parties(), parties()
    session = relay.open("call-rec")
    session.a.set_remote(*alice.addr)
    session.b.set_remote(*bob.addr)
    tapped = []

    def tap(side, packet):
        tapped.append((side, packet))
        if packet == voice(3):
            raise RuntimeError("recorder bug")

    session.tap = tap
    alice.send(voice(1), session.a.local_port)
    bob.send(voice(2, ssrc=2), session.b.local_port)
    alice.send(bytes.fromhex("80c8 0006 00001111") + b"\x00" * 20, session.a.local_port)  # RTCP muxed on RTP
    alice.send(voice(3), session.a.local_port)
    alice.send(b"\x80\xc9\x00\x01", session.a.local_port + 1)  # RTCP port: never tapped
    await until(lambda: len(bob.received) == 3 and alice.received and session.a.rtcp_in == 1)
    assert [packet for side, packet in tapped if side == "a"] == [voice(1), voice(3)]
    assert [packet for side, packet in tapped if side == "b"] == [voice(2, ssrc=2)]
    session.tap = None
    alice.send(voice(4), session.a.local_port)
    await until(lambda: len(bob.received) == 4)
    assert len(tapped) == 3


# --------------------------------------------------------------------------
# Timeouts
# --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_timeout_fires_once_per_silence_and_waits_longer_on_hold(relays, parties, clock):
    relay = relays(timeout=5, hold_timeout=20, check_interval=1)
    alice = parties()
    session = relay.open("call-idle")
    session.a.set_remote(*alice.addr)
    timeouts = []
    clock.advance(10)
    assert timeouts == []  # nobody to tell yet: the B2BUA sets on_timeout when it cares
    session.on_timeout = timeouts.append
    clock.advance(1)
    assert timeouts == [session]
    clock.advance(10)
    assert timeouts == [session]
    alice.send(voice(1), session.a.local_port)  # media resumes
    await until(lambda: session.a.packets_in == 1)
    for _ in range(5):
        clock.advance(1)
    assert len(timeouts) == 1
    clock.advance(1)
    assert len(timeouts) == 2
    session.held = True
    session.b.set_remote(*alice.addr)  # the hold re-INVITE restarts the idle time
    for _ in range(19):
        clock.advance(1)
    assert len(timeouts) == 2
    clock.advance(1)
    assert len(timeouts) == 3
    session.held = False
    clock.advance(4)
    session.restart_idle()  # e.g. the answer: idle time counts from now
    for _ in range(4):
        clock.advance(1)
    assert len(timeouts) == 3
    clock.advance(1)
    assert len(timeouts) == 4
    session.close()
    assert clock.getDelayedCalls() == []  # the check stops with the last session


# --------------------------------------------------------------------------
# Ports and sockets over a session's life
# --------------------------------------------------------------------------


def sockets_in(low: int, high: int) -> int:
    """This process's UDP sockets bound to a port of [low, high] (from /proc: other
    threads opening and closing files meanwhile do not count)."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if low <= port <= high:
                    inodes.add(fields[9])
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            count += 1
    return count


def test_every_port_comes_back_after_500_calls(relays):
    block = port_block(100)
    relay = relays(block)
    for i in range(500):
        session = relay.open(f"call-{i}")
        session.close()
        session.close()  # idempotent
    assert relay.ports.free == relay.ports.size == 50 and relay.sessions == {}
    for round_ in range(5):
        sessions = []
        with pytest.raises(NoPorts):  # fill the range (a pair another program holds is skipped)
            for i in range(26):
                sessions.append(relay.open(f"batch-{round_}-{i}"))
        assert 0 < len(sessions) <= 25 and len(relay.sessions) == len(sessions)
        assert relay.ports.free == 50 - 2 * len(sessions)
        for session in sessions:
            session.close()
    assert relay.ports.free == 50 and sockets_in(*block) == 0
    assert relay.stats()["sessions"] == 0


def test_ports_used_by_other_programs_are_skipped(relays):
    low, high = port_block(100)
    relay = relays((low, high))
    squatters = []
    for port in (low, low + 3):  # an RTP port, and the RTCP port of the next pair
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((HOST, port))
        except OSError:
            sock.close()  # already taken by someone else: just as good
        squatters.append(sock)
    try:
        session = relay.open("call-busy")
        used = {session.a.local_port, session.b.local_port}
        assert not used & {low, low + 2} and relay.bind_failures >= 2
        assert relay.ports.free == relay.ports.size - 2
        session.close()
        assert relay.ports.free == relay.ports.size
    finally:
        for sock in squatters:
            sock.close()


@pytest_twisted.ensureDeferred
async def test_close_stops_relaying_and_the_call_id_can_be_reused(relays, parties):
    relay = relays()
    alice, bob = parties(), parties()
    session = relay.open("call-x")
    session.a.set_remote(*alice.addr)
    session.b.set_remote(*bob.addr)
    with pytest.raises(RelayError, match="already has a media session"):
        relay.open("call-x")
    port = session.a.local_port
    session.close()
    session.b.send(b"late prompt")  # nothing to send from: ignored
    assert session.closed and relay.sessions == {} and session.b.packets_out == 0
    again = relay.open("call-x")
    assert again.a.local_port != port  # round-robin: not the port just freed


@pytest_twisted.ensureDeferred
async def test_ipv6(relays, parties):
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    relay = relays(address="::1")
    alice, bob = parties("::1"), parties("::1")
    session = relay.open("call-v6")
    session.a.set_remote(*alice.addr)
    session.b.set_remote(*bob.addr)
    alice.send(voice(1), session.a.local_port, host="::1")
    await until(lambda: bob.received)
    assert bob.received == [(voice(1), ("::1", session.b.local_port))]
    assert session.a.latched and session.a.remote == ("::1", alice.port)
    with pytest.raises(RelayError, match="not of the relay address family"):
        session.a.set_remote("192.0.2.1", 4000)


def test_bad_values_are_refused(relays):
    relay = relays()
    session = relay.open("call-bad")
    with pytest.raises(RelayError, match="'phone.example.com' is not an IP address"):
        session.a.set_remote("phone.example.com", 4000)
    with pytest.raises(RelayError, match="outside 0-65535"):
        session.a.set_remote("192.0.2.1", 70000)
    with pytest.raises(RelayError, match="neither 'a' nor 'b'"):
        session.leg("c")
    with pytest.raises(RelayError, match="payload type 300"):
        session.a.telephone_event_pt = 300
    session.a.set_remote("0.0.0.0", 4000)  # RFC 2543 hold: send nothing
    assert session.a.remote is None
    session.a.set_remote("192.0.2.1", 0)  # rejected stream
    assert session.a.remote is None
    with pytest.raises(RelayError, match="not an IP address"):
        MediaRelay(reactor, "localhost", PortAllocator(40000, 40999))
    with pytest.raises(RelayError, match="must be positive"):
        MediaRelay(reactor, HOST, PortAllocator(40000, 40999), timeout=0)
