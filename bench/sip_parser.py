"""Benchmark of the SIP message parser and serializer.

Measures, on one core, how many messages per second
:func:`switchd.sip.message.parse_datagram` followed by ``bytes(message)``
handles for a typical INVITE carrying SDP and for a typical 200 OK, and the
same with the typed accessors a transaction layer touches on every message
(top Via, CSeq, Call-ID, From/To tags).

Run from the repository root::

    python bench/sip_parser.py [--seconds 2.0] [--repeat 5]

Each figure is the best of ``--repeat`` timed runs of about ``--seconds``
each (best-of-N filters out scheduler noise on a shared machine).
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from switchd.sip.message import parse_datagram  # noqa: E402

SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 198.51.100.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 198.51.100.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 18 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:18 G729/8000\r\n"
    b"a=fmtp:18 annexb=no\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)

INVITE = (
    b"INVITE sip:+15551234567@core.example.net;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:+15551234567@core.example.net;user=phone>\r\n"
    b'From: "Alice" <sip:+15557654321@edge.example.net;user=phone>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.example.net\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@198.51.100.10:5060;transport=udp>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, PRACK, INFO, REFER, NOTIFY\r\n"
    b"Supported: 100rel, timer, replaces\r\n"
    b"Session-Expires: 1800;refresher=uac\r\n"
    b"User-Agent: ExampleUA/1.0\r\n"
    b"P-Asserted-Identity: <sip:+15557654321@edge.example.net;user=phone>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)

OK_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKnashds8;received=203.0.113.5;rport=5060\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK776asdhds;received=198.51.100.10;rport=5060\r\n"
    b"Record-Route: <sip:203.0.113.5;lr>\r\n"
    b"To: <sip:+15551234567@core.example.net;user=phone>;tag=a6c85cf\r\n"
    b'From: "Alice" <sip:+15557654321@edge.example.net;user=phone>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.example.net\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4:5060>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE\r\n"
    b"Supported: timer\r\n"
    b"Session-Expires: 1800;refresher=uac\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)


def parse_serialize(data: bytes) -> bytes:
    """The measured operation: parse one datagram, serialize it back."""
    return bytes(parse_datagram(data))


def parse_access_serialize(data: bytes) -> bytes:
    """Parse, read what a transaction layer reads, serialize."""
    message = parse_datagram(data)
    via = message.top_via
    assert via is not None and via.branch
    assert message.cseq is not None and message.call_id
    from_addr, to_addr = message.from_addr, message.to_addr
    assert from_addr is not None and to_addr is not None and from_addr.tag
    return bytes(message)


def measure(operation: Callable[[bytes], bytes], data: bytes, seconds: float, repeat: int) -> float:
    """Best messages-per-second figure of ``repeat`` runs of about ``seconds`` each."""
    batch = 1000
    start = time.perf_counter()
    for _ in range(batch):
        operation(data)
    per_call = (time.perf_counter() - start) / batch
    loops = max(batch, int(seconds / per_call))
    best = 0.0
    gc.collect()
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(loops):
            operation(data)
        elapsed = time.perf_counter() - start
        best = max(best, loops / elapsed)
    return best


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one line per figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one timed run")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per figure (best is kept)")
    args = parser.parse_args(argv)
    assert parse_serialize(INVITE) == INVITE and parse_serialize(OK_200) == OK_200
    print(f"python {platform.python_version()} ({platform.python_implementation()}) on {platform.machine()}")
    print(f"INVITE {len(INVITE)} octets, 200 OK {len(OK_200)} octets; "
          f"best of {args.repeat} x {args.seconds}s")
    cases = [
        ("INVITE+SDP parse+serialize", parse_serialize, INVITE),
        ("200 OK+SDP parse+serialize", parse_serialize, OK_200),
        ("INVITE+SDP parse+access+serialize", parse_access_serialize, INVITE),
        ("200 OK+SDP parse+access+serialize", parse_access_serialize, OK_200),
    ]
    for label, operation, data in cases:
        rate = measure(operation, data, args.seconds, args.repeat)
        print(f"{label:36s} {rate:10,.0f} msg/s  {1e6 / rate:7.2f} us/msg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
