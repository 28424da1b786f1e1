from twisted.internet.task import Clock

from switchd.core.events import EventBus, SourceBanned
from switchd.core.ratelimit import RateLimiter
from switchd.sip.message import parse_datagram
from switchd.sip.protection import Protection


def make(**kw):
    clock = Clock()
    bus = EventBus()
    bans = []
    bus.subscribe(SourceBanned, bans.append)
    counted = []
    protection = Protection(clock, RateLimiter(clock), bus, count=lambda n, r: counted.append((n, r)), **kw)
    return clock, protection, bans, counted


def test_a_flooding_source_is_banned_for_a_while():
    clock, protection, bans, counted = make(flood_rate=10, flood_burst=20, ban_seconds=60)
    assert all(protection.admit("192.0.2.1") for _ in range(20))
    assert not protection.admit("192.0.2.1")
    assert [(b.source, b.reason) for b in bans] == [("192.0.2.1", "flood")]
    assert protection.admit("192.0.2.2")  # others are not affected
    clock.advance(30)
    assert not protection.admit("192.0.2.1")  # still banned, even though the bucket refilled
    clock.advance(31)
    assert protection.admit("192.0.2.1")
    assert ("bans", "flood") in counted


def test_trusted_networks_and_peers_are_never_banned():
    clock, protection, bans, _ = make(
        flood_rate=1, flood_burst=1, trusted=["10.0.0.0/8"], is_peer=lambda h: h == "198.51.100.7"
    )
    assert all(protection.admit("10.1.2.3") for _ in range(100))
    assert all(protection.admit("198.51.100.7") for _ in range(100))
    assert bans == []


def test_password_guessing_is_banned():
    clock, protection, bans, _ = make(auth_failures=3, auth_window=60, ban_seconds=120)
    for _ in range(3):
        protection.auth_failed("203.0.113.5")
        assert protection.admit("203.0.113.5")
    protection.auth_failed("203.0.113.5")
    assert not protection.admit("203.0.113.5")
    assert bans[0].reason == "auth-failures"
    clock.advance(121)
    protection.prune()
    assert protection.admit("203.0.113.5") and protection.bans == {}


def test_scanner_user_agents_are_dropped():
    _, protection, _, counted = make(scanners=["friendly-scanner", "sipvicious"])
    scan = parse_datagram(
        b"OPTIONS sip:100@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bK1\r\n"
        b"From: <sip:100@x>;tag=1\r\nTo: <sip:100@x>\r\nCall-ID: a\r\nCSeq: 1 OPTIONS\r\n"
        b"User-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n"
    )
    assert protection.screen(scan) == "scanner"
    scan.set("User-Agent", "baresip 3.0")
    assert protection.screen(scan) is None
    assert counted == [("dropped", "scanner")]
