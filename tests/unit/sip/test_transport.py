"""Transport rules without sockets: listener strings, Via stamping, where responses go."""

import pytest

from switchd.sip.message import parse_datagram
from switchd.sip.transaction import Destination
from switchd.sip.transport import parse_listen, response_destination, stamp_via

REQUEST = (
    "OPTIONS sip:s@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {via}\r\nFrom: <sip:a@x>;tag=1\r\n"
    "To: <sip:s@x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


def request(via: str):
    return parse_datagram(REQUEST.format(via=via).encode())


def test_listen_strings():
    assert parse_listen("udp:5060").transport == "udp"
    spec = parse_listen("tcp:5070:interface=[::1]")
    assert (spec.transport, spec.port, spec.interface) == ("tcp", 5070, "::1")
    assert parse_listen("udp:0:interface=\\:\\:1").interface == "::1"
    tls = parse_listen("tls:5061:privateKey=/k.pem:certKey=/c.pem")
    assert (tls.private_key, tls.cert_key) == ("/k.pem", "/c.pem")
    assert parse_listen("tls:5061:privateKey=/both.pem").cert_key == "/both.pem"
    for bad, message in [
        ("sctp:5060", "udp, tcp or tls"),
        ("udp:99999", "PORT from 0 to 65535"),
        ("udp:5060:interface=eth0", "interface must be an IP address"),
        ("udp:5060:privateKey=x", "unknown option"),
        ("tls:5061", "tls needs privateKey"),
        ("tcp:1:junk", "expected name=value"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_listen(bad)


def test_received_is_added_when_the_source_differs():
    r = request("pc33.example.com:5060;branch=z9hG4bK1")
    stamp_via(r, "192.0.2.9", 5060)
    assert r.top_via.received == "192.0.2.9" and not r.top_via.has_rport


def test_rport_is_filled_when_asked_or_forced():
    r = request("10.0.0.5:5060;branch=z9hG4bK1;rport")
    stamp_via(r, "198.51.100.2", 40001)
    assert (r.top_via.received, r.top_via.rport) == ("198.51.100.2", 40001)
    forced = request("10.0.0.5:5060;branch=z9hG4bK1")
    stamp_via(forced, "198.51.100.2", 40001, force_rport=True)
    assert forced.top_via.rport == 40001
    same = request("198.51.100.2:5060;branch=z9hG4bK1")
    stamp_via(same, "198.51.100.2", 5060)
    assert same.top_via.received is None


def test_responses_follow_the_top_via():
    arrived = Destination("udp", "198.51.100.2", 40001)
    def answer(via):
        r = request(via)
        stamp_via(r, arrived.host, arrived.port)
        return response_destination(parse_datagram(r.to_bytes().replace(b"OPTIONS sip:s@192.0.2.1 SIP/2.0", b"SIP/2.0 200 OK", 1)), arrived)
    # rport: back to the source address and port (RFC 3581).
    assert answer("10.0.0.5:5060;branch=z9hG4bK1;rport") == Destination("udp", "198.51.100.2", 40001)
    # no rport: the received address at the sent-by port (RFC 3261 18.2.2).
    assert answer("10.0.0.5:5070;branch=z9hG4bK1") == Destination("udp", "198.51.100.2", 5070)
    assert answer("10.0.0.5;branch=z9hG4bK1") == Destination("udp", "198.51.100.2", 5060)
    # streams: the connection the request came on.
    stream = Destination("tcp", "198.51.100.2", 40002)
    r = parse_datagram(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 10.0.0.5:5060;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\n"
                       b"To: <sip:s@x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    assert response_destination(r, stream) == stream


class _FakeUDP:
    def __init__(self):
        self.sent = []

    def write(self, data, addr):
        self.sent.append((data, addr))

    def getHost(self):
        from twisted.internet.address import IPv4Address
        return IPv4Address("UDP", "127.0.0.1", 5060)

    def stopListening(self):
        return None


def _transport():
    from twisted.internet.testing import MemoryReactorClock

    from switchd.sip.transport import SIPTransport

    fake = _FakeUDP()

    class Reactor(MemoryReactorClock):
        def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
            protocol.transport = fake
            return fake

    reactor = Reactor()
    received = []
    t = SIPTransport(reactor, reactor, lambda m, s: received.append((m, s)), udp_mtu=1300)
    t.listen(parse_listen("udp:5060:interface=127.0.0.1"))
    t.listen(parse_listen("tcp:5060:interface=127.0.0.1"))
    protocol = t._udp[next(iter(t._udp))][0]
    return reactor, t, fake, received, protocol


def test_large_requests_move_from_udp_to_tcp_and_reuse_the_connection():
    reactor, t, fake, _, _ = _transport()
    small = request("10.0.0.5:5060;branch=z9hG4bK1")
    assert t.send(small, Destination("udp", "192.0.2.50", 5060)).transport == "udp"
    assert fake.sent and fake.sent[0][1] == ("192.0.2.50", 5060)
    big = request("10.0.0.5:5060;branch=z9hG4bK2")
    big.add("X-Padding", "x" * 1400)
    went = t.send(big, Destination("udp", "192.0.2.50", 5060))
    assert went == Destination("tcp", "192.0.2.50", 5060)
    assert big.top_via.transport == "TCP"
    assert len(reactor.tcpClients) == 1 and reactor.tcpClients[0][:2] == ("192.0.2.50", 5060)
    # A second request to the same peer waits on the same connection, not a new one.
    again = request("10.0.0.5:5060;branch=z9hG4bK3")
    again.add("X-Padding", "y" * 1400)
    t.send(again, Destination("udp", "192.0.2.50", 5060))
    assert len(reactor.tcpClients) == 1 and t.connections == 1


def test_idle_connections_are_closed_and_banned_sources_are_not_parsed():
    from twisted.internet.testing import StringTransport

    from switchd.sip.transport import SIPTransport, StreamConnection

    class Gate:
        def __init__(self):
            self.calls = []

        def admit(self, host):
            self.calls.append(host)
            return host != "203.0.113.66"

    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    received = []
    gate = Gate()
    t = SIPTransport(reactor, reactor, lambda m, s: received.append(s), stream_idle_seconds=30, gatekeeper=gate)
    t.listen(parse_listen("tcp:5060:interface=127.0.0.1"))
    conn = StreamConnection(t, "tcp")
    wire = StringTransport(peerAddress=__import__("twisted.internet.address", fromlist=["IPv4Address"]).IPv4Address("TCP", "198.51.100.9", 40000))
    conn.makeConnection(wire)
    conn.dataReceived(REQUEST.format(via="198.51.100.9:40000;branch=z9hG4bK9").encode())
    assert received == [Destination("tcp", "198.51.100.9", 40000)]
    conn.dataReceived(b"\r\n\r\n")  # RFC 5626 ping
    assert wire.value().endswith(b"\r\n")
    reactor.advance(31)
    reactor.advance(10)
    assert wire.disconnecting  # idle: closed by the sweeper
    bad = StreamConnection(t, "tcp")
    bad_wire = StringTransport(peerAddress=__import__("twisted.internet.address", fromlist=["IPv4Address"]).IPv4Address("TCP", "203.0.113.66", 1))
    bad.makeConnection(bad_wire)
    bad.dataReceived(REQUEST.format(via="203.0.113.66:1;branch=z9hG4bK8").encode())
    assert received == [Destination("tcp", "198.51.100.9", 40000)]
    assert bad_wire.disconnecting
