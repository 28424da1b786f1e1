"""switchd's media relay alone in its own process, for ``bench/media_bench.py``.

The bench pins this process to one core and the load generator
(``bench/rtpload.c``) to the other, so the relay's figures are those of one
core and nothing else of switchd competes with it. The relay is
``switchd.media.relay.MediaRelay`` on Twisted's epoll reactor, exactly as the
daemon builds it; this script only wires it to the generator.

How ports are exchanged: the generator binds first and writes its ports, one
call a line ("A_PORT B_PORT"), to ``--generator-ports``. This script opens one
relay session per line, points leg a at party A and leg b at party B, and
writes where each party must send ("A_TARGET B_TARGET": ``s.a.local_port``,
``s.b.local_port``) to ``--targets-out`` (whole, through a rename); then it
prints one line ``ready {json}`` on stdout. A packet from A to s.a's port
leaves s.b's port for B, and the other way round.

It relays until SIGTERM or SIGINT (or ``--max-seconds``), closes every
session, and prints one line ``result {json}``: ``relay.stats()``, its CPU
time (``resource.getrusage``: user and system, the whole run and from ready
to stop), its peak memory and how long the sessions took to open and close.

    python bench/relay_server.py --generator-ports gen.txt --targets-out targets.txt \\
        --port-range 10000-29999
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any


class BenchInputError(ValueError):
    """A generator ports file or an option the relay bench cannot use."""


def read_generator_ports(path: Path) -> list[tuple[int, int]]:
    """(A port, B port) per call from the generator's ports file."""
    calls = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) != 2 or not all(w.isdigit() and 0 < int(w) < 65536 for w in words):
            raise BenchInputError(f"{path} line {number}: expected two ports, got {line!r}")
        calls.append((int(words[0]), int(words[1])))
    if not calls:
        raise BenchInputError(f"{path} lists no call")
    return calls


def port_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    if not sep or not low.isdigit() or not high.isdigit() or not 1024 <= int(low) < int(high) < 65536:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH within 1024-65535, got {text!r}")
    return int(low), int(high)


def raise_fd_limit(need: int) -> None:
    """Four sockets per call (RTP and RTCP of two legs) outgrow the default file limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise BenchInputError(f"{need} files needed, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def cpu() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"user": usage.ru_utime, "system": usage.ru_stime}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator-ports", type=Path, required=True,
                        help="the generator's ports, 'A_PORT B_PORT' per call")
    parser.add_argument("--targets-out", type=Path, required=True,
                        help="where to write the relay ports, 'A_TARGET B_TARGET' per call")
    parser.add_argument("--host", default="127.0.0.1", help="the relay's and the generator's address")
    parser.add_argument("--port-range", type=port_range, default=(10000, 29999),
                        help="the relay's RTP port range, LOW-HIGH (default 10000-29999)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="the relay's inactivity timeout: longer than the idle set-up time")
    parser.add_argument("--max-seconds", type=float, default=900.0,
                        help="stop by itself after this long, whatever happens")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() once the sessions are open, as switchd does after start-up")
    args = parser.parse_args(argv)

    # The epoll reactor, installed before anything imports the default one.
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    from switchd.media.relay import MediaRelay, PortAllocator

    calls = read_generator_ports(args.generator_ports)
    raise_fd_limit(4 * len(calls) + 256)
    low, high = args.port_range
    relay = MediaRelay(reactor, args.host, PortAllocator(low, high), timeout=args.timeout)

    began = time.monotonic()
    sessions = []
    lines = []
    for index, (a_port, b_port) in enumerate(calls):
        session = relay.open(f"bench-{index}")
        session.a.set_remote(args.host, a_port)
        session.b.set_remote(args.host, b_port)
        sessions.append(session)
        lines.append(f"{session.a.local_port} {session.b.local_port}\n")
    setup_s = time.monotonic() - began
    temporary = args.targets_out.with_name(args.targets_out.name + ".tmp")
    temporary.write_text("".join(lines))
    os.replace(temporary, args.targets_out)
    if args.gc_freeze:
        gc.collect()
        gc.freeze()

    state: dict[str, Any] = {}

    def ready() -> None:
        state["ready_cpu"] = cpu()
        state["ready_at"] = time.monotonic()
        print("ready " + json.dumps({"calls": len(sessions), "setup_s": round(setup_s, 3), "pid": os.getpid()}),
              flush=True)

    reactor.callWhenRunning(ready)
    reactor.callLater(args.max_seconds, reactor.stop)
    gc_before = [s["collections"] for s in gc.get_stats()]
    reactor.run()  # SIGTERM and SIGINT stop it (Twisted's own handlers)

    stopped_cpu = cpu()
    stopped_at = time.monotonic()
    stats = relay.stats()
    began = time.monotonic()
    for session in sessions:
        session.close()
    close_s = time.monotonic() - began
    ready_cpu = state.get("ready_cpu", stopped_cpu)
    result = {
        "calls": len(sessions),
        "setup_s": round(setup_s, 3),
        "close_s": round(close_s, 3),
        "relayed_s": round(stopped_at - state.get("ready_at", stopped_at), 3),
        "stats": stats,
        "stats_after_close": relay.stats(),
        "cpu_s": {k: round(v, 3) for k, v in stopped_cpu.items()},
        "cpu_s_relaying": {k: round(stopped_cpu[k] - ready_cpu[k], 3) for k in stopped_cpu},
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "gc_collections": [s["collections"] - b for s, b in zip(gc.get_stats(), gc_before)],
        "gc_frozen": gc.get_freeze_count(),
    }
    print("result " + json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
