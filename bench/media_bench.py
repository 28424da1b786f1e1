"""Media relay benchmark: switchd's relay against rtpengine, one core each, same load, same run.

What it measures (all on 127.0.0.1; every run bounded in time; every process
it starts is stopped by its pid):

1. **The load.** ``bench/rtpload.c`` (built with ``gcc -O2`` into
   ``bench/results/``) opens two UDP sockets per call, party A and party B,
   and sends 172-byte RTP packets (PCMU, 20 ms) from each to its call's relay
   port, 50 packets per second each way, spread evenly over the 20 ms; every
   packet carries its send time, so the generator measures loss per direction
   and the one-way latency through the relay. It is pinned to CPU 0
   (``--generator-cpu``); the relay to CPU 1 (``--relay-cpu``).

2. **switchd** (``bench/relay_server.py``): ``switchd.media.relay.MediaRelay``
   on Twisted's epoll reactor in its own process, one session per call.

3. **rtpengine** (Debian ``rtpengine-daemon``): started in the foreground for
   each step, userspace forwarding only (``--table=-1``: no kernel module),
   ``--num-threads`` 1 by default (``--rtpengine-threads``), calls created with
   ng offer/answer carrying the generator's addresses
   (``bench/rtpengine_ng.py``), deleted at the end (their packet counters are
   kept as a cross-check).

4. **The generator alone** (``rtpload --self``: every A sends straight to its
   B): its own ceiling and the latency floor of the same load without a relay.
   The *added latency* of a relay is its latency minus this floor.

For each call count of ``--calls`` the three run one after the other (so
they see the same background load), ``--duration`` seconds each after
``--warmup`` seconds that are sent but not counted. A step is *sustained*
when under ``--max-loss`` % (0.1) of the packets were lost, none went to the
wrong party, and the generator kept to its schedule (less than 50 ms late in
its last second of sending; if not, the generator was the limit, not the
relay: one that cannot keep up falls further behind all the time). A relay's
ladder ends at its first step not sustained (a step that failed while other
processes used more than ``--noisy`` % of a CPU is repeated, ``--retries``);
after the list, counts go on rising by ``--extend`` until every relay failed
or ``--max-calls``. Past its capacity a relay queues before it drops (its
sockets' buffers hold seconds of audio), so the summary also gives the
largest count sustained with p99 latency within ``--max-p99-ms`` (20).

Per step: loss per direction, latency p50/p99/max, the relay's CPU (user and
system, % of one core: system is the kernel's share, the UDP stack and the
loopback delivery its sends cause), the relay core's busy % (with softirq),
the relay's CPU microseconds per relayed packet, the generator's CPU, the
datagrams the kernel dropped on full receive buffers, and what other
processes used (other%: noise). Latency is the kernel's receive time stamp
at the generator's socket minus the send time in the packet: the relay's
queueing and work plus two loopback hops, without the generator's own
scheduling (rtpload also reports the user-space figure).

``--profile`` (or whenever switchd misses its target): one more switchd step
at ``--profile-calls`` with py-spy (``pip install py-spy``: the busiest
Python lines and functions; a line that makes a system call is charged with
its time), ``perf stat`` counting the relay's system calls per relayed
packet, and ``perf record`` for the split of its CPU samples between the
kernel, the interpreter and libc (Debian ``linux-perf``).

Targets (the Media issue): switchd sustains at least 1,000 concurrent calls
(100,000 packets per second in, as many out) on one core with under 0.1%
loss, and at least half of the calls rtpengine sustains the same way.

Run from the repository root with the development virtualenv::

    .venv/bin/python bench/media_bench.py
    .venv/bin/python bench/media_bench.py --calls 500,1000 --duration 10 --only switchd
    .venv/bin/python bench/media_bench.py --only rtpengine --calls 1000,2000,3000
    .venv/bin/python bench/media_bench.py --only generator --calls 2000,3000   # its ceiling
    .venv/bin/python bench/media_bench.py --report bench/results/media_<date>.json

It prints a table, writes ``bench/results/media_<date>.json`` (not in git)
and exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import linecache
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rtpengine_ng import NgClient, NgError, sdp_audio, sdp_media_port

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
RTPLOAD_SOURCE = BENCH / "rtpload.c"
RELAY_SERVER = BENCH / "relay_server.py"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PPS_PER_STREAM = 50
TARGET_CALLS = 1000
TARGET_RATIO = 0.5
GENERATOR_LAG_LIMIT_US = 50_000
RELAYS = ("switchd", "rtpengine")


class BenchError(RuntimeError):
    """A process of the bench did not start, answer or finish as it should."""


# -- CPU accounting from /proc ------------------------------------------------------------


def process_ticks(pid: int) -> tuple[int, int]:
    """(user, system) clock ticks of a process, all its threads."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]), int(fields[12])


def cpu_ticks() -> dict[str, list[int]]:
    """Per CPU ("cpu" is all of them): user nice system idle iowait irq softirq steal."""
    result = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if not line.startswith("cpu"):
            break
        name, *values = line.split()
        result[name] = [int(v) for v in values[:8]]
    return result


def busy(ticks: list[int]) -> int:
    """Ticks a CPU worked: not idle, not waiting for I/O, not stolen by the host."""
    return sum(ticks) - ticks[3] - ticks[4] - ticks[7]


@dataclass
class Snapshot:
    """CPU counters of the machine and of the processes of one step, at one moment."""

    at: float
    cpus: dict[str, list[int]]
    procs: dict[str, tuple[int, int]]

    @classmethod
    def take(cls, pids: dict[str, int]) -> Snapshot:
        procs = {}
        for name, pid in pids.items():
            try:
                procs[name] = process_ticks(pid)
            except (FileNotFoundError, ProcessLookupError):
                procs[name] = (0, 0)
        return cls(time.monotonic(), cpu_ticks(), procs)


def kernel_threads(prefix: str = "ksoftirqd/") -> dict[str, int]:
    """pid of each kernel thread whose name starts with ``prefix``, by name.

    Softirq work (the loopback delivery of our packets) that overflows the
    sender's context runs in ksoftirqd/N; it is ours, not other load.
    """
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if name.startswith(prefix):
                found[name] = int(entry.name)
    return found


KSOFTIRQD = kernel_threads()


def cpu_usage(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """% of one CPU per process (user, system), per core (busy, softirq), and the rest."""
    wall = max(after.at - before.at, 1e-6)

    def pct(ticks: int) -> float:
        return round(100 * ticks / CLK_TCK / wall, 1)

    usage: dict[str, Any] = {"window_s": round(wall, 2)}
    ours = 0
    for name, (user, system) in after.procs.items():
        user0, system0 = before.procs.get(name, (0, 0))
        usage[name] = {"user": pct(user - user0), "system": pct(system - system0),
                       "total": pct(user - user0 + system - system0)}
        ours += user - user0 + system - system0
    for cpu, ticks in after.cpus.items():
        if cpu == "cpu":
            continue
        start = before.cpus[cpu]
        usage[cpu] = {"busy": pct(busy(ticks) - busy(start)), "softirq": pct(ticks[6] - start[6]),
                      "steal": pct(ticks[7] - start[7])}
    machine = busy(after.cpus["cpu"]) - busy(before.cpus["cpu"])
    # Tick-based accounting charges softirq work done in a process's context to
    # that process, and the overflow runs in ksoftirqd (counted above), so what
    # is left is other processes' work: noise when it is large.
    usage["other"] = max(0.0, pct(machine - ours))
    return usage


def udp_counters() -> dict[str, int]:
    """The machine's UDP counters (/proc/net/snmp): where datagrams were dropped."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    return dict(zip(lines[0][1:], (int(v) for v in lines[1][1:]), strict=True))


def udp_drops(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    names = ("InDatagrams", "RcvbufErrors", "SndbufErrors", "InErrors", "NoPorts")
    return {name: after.get(name, 0) - before.get(name, 0) for name in names}


def wait_quiet(limit_s: float, threshold_pct: float) -> float:
    """Wait (at most ``limit_s``) until the machine is nearly idle; returns its busy % of one CPU."""
    deadline = time.monotonic() + limit_s
    while True:
        start = cpu_ticks()["cpu"]
        time.sleep(1.0)
        end = cpu_ticks()["cpu"]
        pct = 100 * (busy(end) - busy(start)) / CLK_TCK
        if pct < threshold_pct or time.monotonic() >= deadline:
            return round(pct, 1)


def raise_fd_limit() -> None:
    """Children inherit it: thousands of sockets per relay or generator."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def pinned(cpu: int | None, command: list[str], nice: int = 0) -> list[str]:
    """``command`` on one CPU (taskset), at a scheduling priority (nice) when asked."""
    if nice:
        command = ["nice", "-n", str(nice), *command]
    return command if cpu is None else ["taskset", "-c", str(cpu), *command]


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL: by its pid only."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode} before writing {path.name}: "
                             f"{(proc.stderr.read() if proc.stderr else '')[-2000:]}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} wrote no {path.name} within {timeout:.0f} s")
        time.sleep(0.02)


def read_ports(path: Path) -> list[tuple[int, int]]:
    pairs = []
    for line in path.read_text().splitlines():
        if line.strip():
            a, b = line.split()
            pairs.append((int(a), int(b)))
    return pairs


def write_ports(path: Path, pairs: list[tuple[int, int]]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    os.replace(temporary, path)


# -- the generator ----------------------------------------------------------------------


def build_rtpload(out: Path) -> Path:
    """Compile bench/rtpload.c (again when the source is newer than the binary)."""
    binary = out / "rtpload"
    if binary.exists() and binary.stat().st_mtime >= RTPLOAD_SOURCE.stat().st_mtime:
        return binary
    if shutil.which("gcc") is None:
        raise BenchError("gcc is needed to build bench/rtpload.c (Debian: apt-get install gcc)")
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(RTPLOAD_SOURCE)], check=True)
    return binary


class Generator:
    """One rtpload process: binds, writes its ports, waits for go, sends, prints JSON."""

    def __init__(self, binary: Path, workdir: Path, calls: int, args: argparse.Namespace,
                 self_test: bool = False) -> None:
        self.ports_file = workdir / "generator-ports.txt"
        self.targets_file = workdir / "targets.txt"
        for path in (self.ports_file, self.targets_file):
            path.unlink(missing_ok=True)
        common = ["--calls", str(calls), "--duration", str(args.duration), "--warmup", str(args.warmup),
                  "--drain", str(args.drain), "--pps", str(PPS_PER_STREAM), "--host", HOST]
        mode = ["--self"] if self_test else ["--ports-out", str(self.ports_file), "--targets",
                                             str(self.targets_file)]
        self.self_test = self_test
        self.proc = subprocess.Popen(pinned(args.generator_cpu, [str(binary), *mode, *common], args.nice),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ports(self, timeout: float = 30.0) -> list[tuple[int, int]]:
        wait_for_file(self.ports_file, self.proc, timeout, "rtpload")
        return read_ports(self.ports_file)

    def go(self) -> float:
        """Start sending; returns when (monotonic) the first packet is due."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return time.monotonic() + 0.001

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
            raise BenchError(f"rtpload did not finish within {timeout:.0f} s") from None
        if self.proc.returncode != 0:
            raise BenchError(f"rtpload exited with {self.proc.returncode}: {err.strip()[-2000:]}")
        return json.loads(out)

    def stop(self) -> None:
        stop_process(self.proc)


# -- the relays ------------------------------------------------------------------------------


class SwitchdRelay:
    """bench/relay_server.py: switchd's MediaRelay alone in a process."""

    name = "switchd"

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, generator: Generator) -> float:
        """Open one session per call; returns the set-up time in seconds."""
        generator.ports()
        command = [sys.executable, str(RELAY_SERVER), "--generator-ports", str(generator.ports_file),
                   "--targets-out", str(generator.targets_file), "--port-range", self.args.port_range,
                   "--max-seconds", str(self.args.duration + self.args.warmup + 300)]
        if self.args.gc_freeze:
            command.append("--gc-freeze")
        self.proc = subprocess.Popen(pinned(self.args.relay_cpu, command, self.args.nice), cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            stop_process(self.proc)
            raise BenchError(f"relay_server did not get ready: {line!r} {self.proc.stderr.read()[-3000:]}")
        ready = json.loads(line[len("ready "):])
        return float(ready["setup_s"])

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def stop(self) -> dict[str, Any]:
        """Stop it and return what it printed: relay.stats(), its CPU time."""
        if self.proc is None:
            return {}
        stop_process(self.proc, timeout=60)
        out, err = self.proc.communicate()
        self.proc = None
        for line in out.splitlines():
            if line.startswith("result "):
                return json.loads(line[len("result "):])
        raise BenchError(f"relay_server printed no result: {err.strip()[-3000:]}")


class Rtpengine:
    """rtpengine in the foreground, userspace forwarding only, calls made over ng."""

    name = "rtpengine"

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.ng: NgClient | None = None
        self.calls: list[tuple[str, str]] = []
        self.log = workdir / "rtpengine.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self, ng_port: int) -> list[str]:
        low, high = self.args.port_range.split("-")
        return [
            self.args.rtpengine, "--config-file=none", "--foreground", "--log-stderr",
            f"--log-level={self.args.rtpengine_log_level}", "--table=-1", f"--interface={HOST}",
            f"--listen-ng={HOST}:{ng_port}", f"--port-min={low}", f"--port-max={high}",
            f"--num-threads={self.args.rtpengine_threads}", "--timeout=600", "--delete-delay=0",
        ]

    def start(self, generator: Generator) -> float:
        ports = generator.ports()
        ng_port = free_udp_port()
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(pinned(self.args.relay_cpu, self.command(ng_port), self.args.nice),
                                         stdout=log, stderr=subprocess.STDOUT)
        self.ng = NgClient(HOST, ng_port, timeout=1.0, retries=3)
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"rtpengine exited with {self.proc.returncode}: "
                                 f"{self.log.read_text()[-2000:]}")
            try:
                self.ng.ping()
                break
            except NgError:
                if time.monotonic() > deadline:
                    raise BenchError("rtpengine does not answer ng ping") from None
        began = time.monotonic()
        targets = []
        self.calls = []
        options = {"ICE": "remove", "replace": ["origin", "session-connection"]}
        for index, (a_port, b_port) in enumerate(ports):
            call_id = f"bench-{index}-{ng_port}"
            to_b = self.ng.offer(call_id, f"a{index}", sdp_audio(HOST, a_port, 2 * index + 1), **options)
            to_a = self.ng.answer(call_id, f"a{index}", f"b{index}", sdp_audio(HOST, b_port, 2 * index + 2),
                                  **options)
            # A sends where the SDP for A (the answer's) says B is; B where the offer's says A is.
            targets.append((sdp_media_port(to_a), sdp_media_port(to_b)))
            self.calls.append((call_id, f"a{index}"))
        write_ports(generator.targets_file, targets)
        return time.monotonic() - began

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def stop(self) -> dict[str, Any]:
        """Delete every call (summing rtpengine's own packet counters), then stop it."""
        if self.proc is None:
            return {}
        counted = {"rtp_packets": 0, "rtp_errors": 0, "rtcp_packets": 0}
        failed = 0
        if self.ng is not None and self.proc.poll() is None:
            for call_id, from_tag in self.calls:
                try:
                    totals = self.ng.delete(call_id, from_tag).get("totals", {})
                except NgError:
                    failed += 1
                    continue
                counted["rtp_packets"] += int(totals.get("RTP", {}).get("packets", 0))
                counted["rtp_errors"] += int(totals.get("RTP", {}).get("errors", 0))
                counted["rtcp_packets"] += int(totals.get("RTCP", {}).get("packets", 0))
            self.ng.close()
            self.ng = None
        code = stop_process(self.proc)
        self.proc = None
        return {"totals": counted, "delete_failures": failed, "exit_code": code,
                "threads_setting": self.args.rtpengine_threads}


# -- one step -------------------------------------------------------------------------------


@dataclass
class Step:
    relay: str  # switchd, rtpengine, or generator (rtpload --self, no relay)
    calls: int
    attempt: int
    load: dict[str, Any]
    cpu: dict[str, Any]
    setup_s: float = 0.0
    threads: int = 0
    background_pct: float = 0.0
    relay_report: dict[str, Any] = field(default_factory=dict)
    udp: dict[str, int] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def loss_pct(self) -> float:
        return float(self.load.get("total", {}).get("loss_pct", 100.0)) if self.load else 100.0

    @property
    def generator_limited(self) -> bool:
        """The generator could not keep to its schedule: still over 50 ms late in its last second.

        One that cannot keep up falls further behind all the time (its offered
        rate is lower than asked); packets a few ms late now and then are
        another process's time slice, or a relay's burst, and harmless.
        """
        if not self.load:
            return False
        lag = self.load["send_lag_us"]
        return lag.get("last_second_max", lag["mean"]) > GENERATOR_LAG_LIMIT_US

    def sustained(self, max_loss_pct: float) -> bool:
        return (not self.error and bool(self.load) and self.loss_pct < max_loss_pct
                and self.load["misrouted"] == 0 and self.load["total"]["send_errors"] == 0
                and not self.generator_limited)

    @property
    def relay_cpu_pct(self) -> float:
        return float(self.cpu.get("relay", {}).get("total", 0.0))

    @property
    def cpu_us_per_packet(self) -> float:
        """The relay's CPU time per packet it relayed (in and out counted once)."""
        if self.relay == "generator" or not self.load:
            return 0.0
        received = self.load["total"]["received"] / max(self.load["duration_s"], 1e-6)
        return round(self.relay_cpu_pct / 100 * 1e6 / max(received, 1.0), 2)


def run_step(kind: str, calls: int, attempt: int, args: argparse.Namespace, binary: Path,
             workdir: Path, profile: bool = False) -> Step:
    """One relay (or the generator alone) under the load of ``calls`` calls."""
    background = wait_quiet(args.wait_quiet, args.quiet_threshold) if args.wait_quiet else 0.0
    step = Step(relay=kind, calls=calls, attempt=attempt, load={}, cpu={}, background_pct=background)
    generator = Generator(binary, workdir, calls, args, self_test=kind == "generator")
    relay: SwitchdRelay | Rtpengine | None = None
    if kind == "switchd":
        relay = SwitchdRelay(args, workdir)
    elif kind == "rtpengine":
        relay = Rtpengine(args, workdir)
    profiler: Profiler | None = None
    udp_before = udp_counters()
    try:
        if relay is not None:
            step.setup_s = round(relay.start(generator), 3)
            step.threads = relay.threads()
            first = generator.go()
        else:
            first = generator.started
        pids = {"generator": generator.pid, **KSOFTIRQD}
        if relay is not None:
            pids["relay"] = relay.pid
        # The measured window: the counted packets, less half a second at each end.
        window_start = first + args.warmup + 0.5
        window_end = first + args.warmup + args.duration - 0.5
        time.sleep(max(0.0, window_start - time.monotonic()))
        before = Snapshot.take(pids)
        if profile and relay is not None:
            profiler = Profiler(relay.pid, args, workdir, seconds=window_end - time.monotonic())
        time.sleep(max(0.0, window_end - time.monotonic()))
        after = Snapshot.take(pids)
        step.cpu = cpu_usage(before, after)
        if profiler is not None:
            step.profile = profiler.finish()
        step.load = generator.result(timeout=args.duration + args.warmup + args.drain + 60)
    except BenchError as e:
        step.error = str(e)
        generator.stop()
    finally:
        if profiler is not None and not step.profile:
            profiler.abort()
        if relay is not None:
            try:
                step.relay_report = relay.stop()
            except BenchError as e:
                step.error = step.error or str(e)
        generator.stop()
    step.udp = udp_drops(udp_before, udp_counters())
    if step.profile and step.load:
        step.profile = summarise_profile(step.profile, step.load, step.cpu)
    return step


# -- profiling (switchd) ----------------------------------------------------------------------

SYSCALLS = ("recvfrom", "recvmsg", "recvmmsg", "sendto", "sendmsg", "sendmmsg", "epoll_wait",
            "epoll_pwait", "epoll_ctl")


class Profiler:
    """py-spy and perf on the relay process during one step's window.

    py-spy samples without stopping the process (``--nonblocking``); perf
    counts and samples for the first half of the window only.
    """

    def __init__(self, pid: int, args: argparse.Namespace, workdir: Path, seconds: float) -> None:
        self.args = args
        self.seconds = max(2, int(seconds))
        stamp = int(time.time())
        self.pyspy_out = args.out / f"media-profile-{stamp}.pyspy.txt"
        self.perf_stat_out = workdir / "perf-stat.txt"
        self.perf_data = workdir / "perf.data"
        self.procs: dict[str, subprocess.Popen] = {}
        args.out.mkdir(parents=True, exist_ok=True)
        if args.py_spy:
            self.procs["py-spy"] = subprocess.Popen(
                [args.py_spy, "record", "--pid", str(pid), "--duration", str(self.seconds), "--rate", "200",
                 "--nonblocking", "--full-filenames", "--format", "raw", "--output", str(self.pyspy_out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if args.perf:
            events = ",".join(f"syscalls:sys_enter_{name}" for name in SYSCALLS) + ",raw_syscalls:sys_enter"
            self.procs["perf-stat"] = subprocess.Popen(
                [args.perf, "stat", "-x", ",", "-o", str(self.perf_stat_out), "-e", events, "-p", str(pid),
                 "--", "sleep", str(self.seconds // 2)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            self.procs["perf-record"] = subprocess.Popen(
                [args.perf, "record", "-e", "cpu-clock", "-F", "999", "-o", str(self.perf_data), "-p", str(pid),
                 "--", "sleep", str(self.seconds // 2)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.started = time.monotonic()

    def finish(self) -> dict[str, Any]:
        result: dict[str, Any] = {"seconds": self.seconds}
        for name, proc in self.procs.items():
            try:
                _, err = proc.communicate(timeout=self.seconds + 60)
            except subprocess.TimeoutExpired:
                stop_process(proc)
                err = "timed out"
            if proc.returncode != 0:
                result[f"{name}_error"] = err.strip()[-1000:]
        if "py-spy" in self.procs and self.pyspy_out.exists():
            result["py_spy"] = read_pyspy(self.pyspy_out)
            result["py_spy"]["file"] = str(self.pyspy_out)
        if "perf-stat" in self.procs and self.perf_stat_out.exists():
            result["perf_stat"] = read_perf_stat(self.perf_stat_out)
            result["perf_stat"]["seconds"] = self.seconds // 2
        if "perf-record" in self.procs and self.perf_data.exists():
            result["perf_record"] = read_perf_record(self.args.perf, self.perf_data)
        return result

    def abort(self) -> None:
        for proc in self.procs.values():
            stop_process(proc)


# A call whose name ends so, e.g. ``sock.recvfrom(``, ``leg._rtp_sendto(``, ``poller.poll(``.
SYSCALL_LINE = re.compile(r"(recvfrom|recvmsg|recvmmsg|recv_into|\brecv|sendto|sendmsg|sendmmsg|\bsend|poll|select)\(")


def classify_line(path: str, lineno: int) -> str:
    """A py-spy leaf: a Python line that makes a system call, or other Python work.

    py-spy (without native frames) charges the time of a system call to the
    Python line that made it, so the source text of the line tells them apart.
    """
    text = linecache.getline(path, lineno)
    return "system call lines" if SYSCALL_LINE.search(text) else "python"


def read_pyspy(path: Path, count: int = 15) -> dict[str, Any]:
    """Shares of the relay's busy samples: by kind, by leaf line, by Python function (inclusive)."""
    total = 0
    leaves: dict[str, int] = {}
    kinds: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    frame_re = re.compile(r"^(.*) \((.*):(\d+)\)$")
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        samples = int(n)
        frames = [m.groups() for m in map(frame_re.match, stack.split(";")) if m]
        if not frames:
            continue
        total += samples
        function, filename, lineno = frames[-1]
        text = linecache.getline(filename, int(lineno)).strip()
        leaf = f"{function} ({Path(filename).name}:{lineno}: {text[:60]})"
        leaves[leaf] = leaves.get(leaf, 0) + samples
        kind = classify_line(filename, int(lineno))
        kinds[kind] = kinds.get(kind, 0) + samples
        for name in {f"{f} ({Path(p).name})" for f, p, _ in frames}:
            inclusive[name] = inclusive.get(name, 0) + samples

    def share(items: dict[str, int], n: int) -> list[tuple[str, float]]:
        ranked = sorted(items.items(), key=lambda kv: -kv[1])[:n]
        return [(name, round(100 * v / max(total, 1), 1)) for name, v in ranked]

    return {"busy_samples": total, "by_kind_pct": dict(share(kinds, 10)), "top_leaf_pct": share(leaves, count),
            "top_function_inclusive_pct": share(inclusive, count)}


def read_perf_stat(path: Path) -> dict[str, Any]:
    counts = {}
    for line in path.read_text().splitlines():
        parts = line.split(",")
        if len(parts) < 3 or line.startswith("#"):
            continue
        value, event = parts[0], parts[2]
        if value.replace(".", "").isdigit():
            counts[event.split(":")[-1].replace("sys_enter_", "").replace("sys_enter", "all")] = int(float(value))
    return {"syscalls": counts}


def read_perf_record(perf: str, data: Path) -> dict[str, Any]:
    """Where the relay's CPU samples fell: kernel, interpreter, libc; and the top symbols."""
    out = subprocess.run([perf, "report", "-i", str(data), "--stdio", "--sort", "dso", "--percent-limit", "0.5"],
                         capture_output=True, text=True, check=False).stdout
    dsos = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S.*)$", line)
        if m:
            dsos.append((m.group(2).strip(), float(m.group(1))))
    out = subprocess.run([perf, "report", "-i", str(data), "--stdio", "--sort", "dso,sym", "--percent-limit",
                          "1"], capture_output=True, text=True, check=False).stdout
    symbols = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)$", line)
        if m:
            symbols.append((f"{m.group(3).strip()} ({m.group(2)})", float(m.group(1))))
    return {"by_dso_pct": dsos, "top_symbols_pct": symbols[:25]}


def summarise_profile(profile: dict[str, Any], load: dict[str, Any], cpu: dict[str, Any]) -> dict[str, Any]:
    """Add system calls per relayed packet, and the relay's kernel/user split of CPU."""
    received_pps = load["total"]["received"] / max(load["duration_s"], 1e-6)
    stat = profile.get("perf_stat")
    if stat:
        seconds = stat["seconds"]
        stat["per_packet"] = {name: round(n / seconds / max(received_pps, 1.0), 3)
                              for name, n in stat["syscalls"].items()}
    relay = cpu.get("relay", {})
    if relay.get("total"):
        profile["cpu_split_pct"] = {"user (Python, interpreter, libc)": relay["user"],
                                    "system (syscalls, UDP, loopback)": relay["system"]}
        profile["cpu_us_per_packet"] = {
            "user": round(relay["user"] / 100 * 1e6 / max(received_pps, 1.0), 2),
            "system": round(relay["system"] / 100 * 1e6 / max(received_pps, 1.0), 2),
        }
    return profile


# -- the ladder --------------------------------------------------------------------------------


def ladder(args: argparse.Namespace, binary: Path, workdir: Path) -> list[Step]:
    """Each count for the generator alone and every relay still standing, interleaved."""
    steps: list[Step] = []
    standing = [kind for kind in args.kinds if kind != "generator"]
    with_generator = "generator" in args.kinds
    generator_only = not standing
    counts = list(args.calls)
    index = 0
    while index < len(counts) and (standing or generator_only):
        calls = counts[index]
        for kind in (["generator"] if with_generator else []) + standing:
            for attempt in range(1, args.retries + 2):
                step = run_step(kind, calls, attempt, args, binary, workdir)
                steps.append(step)
                print(row(step, steps), flush=True)
                if step.sustained(args.max_loss) or step.cpu.get("other", 0.0) <= args.noisy:
                    break
            if step.sustained(args.max_loss):
                continue
            if kind == "generator":
                break
            if step.generator_limited:
                print(f"  {kind}: the generator fell behind at {calls} calls: its limit, not the relay's")
            standing.remove(kind)
        if with_generator and not steps[-1].sustained(args.max_loss) and steps[-1].relay == "generator":
            print(f"  the generator alone does not sustain {calls} calls: the ladder stops here")
            break
        index += 1
        if (index == len(counts) and (standing or generator_only) and args.extend
                and counts[-1] + args.extend <= args.max_calls):
            counts.append(counts[-1] + args.extend)
    return steps


def best(steps: list[Step], kind: str, max_loss: float) -> Step | None:
    sustained = [s for s in steps if s.relay == kind and s.sustained(max_loss)]
    return max(sustained, key=lambda s: s.calls, default=None)


def first_failure(steps: list[Step], kind: str, max_loss: float) -> Step | None:
    """The lowest count whose last attempt failed (a retry that held makes the count held)."""
    last = {s.calls: s for s in steps if s.relay == kind}
    failed = [s for s in last.values() if not s.sustained(max_loss)]
    return min(failed, key=lambda s: s.calls, default=None)


def baseline_latency(steps: list[Step], calls: int) -> dict[str, float] | None:
    own = [s for s in steps if s.relay == "generator" and s.calls == calls and s.load]
    return own[-1].load["latency_us"] if own else None


HEADER = (f"{'relay':9} {'calls':>5} {'try':>3} {'pps in':>7} {'loss%':>7} {'lost':>6} {'p50us':>6} "
          f"{'p99us':>7} {'maxus':>8} {'+p50':>5} {'+p99':>6} {'relay%':>6} {'usr%':>5} {'sys%':>5} "
          f"{'us/pkt':>6} {'core%':>5} {'gen%':>5} {'ksirq%':>6} {'lag>1ms':>7} {'rxdrop':>7} {'other%':>6} {'thr':>3}  result")


def row(step: Step, steps: list[Step] | None = None) -> str:
    if not step.load:
        return f"{step.relay:9} {step.calls:5d} {step.attempt:3d}  ERROR {step.error[:160]}"
    load = step.load
    lat = load["latency_us"]
    relay = step.cpu.get("relay", {})
    core = step.cpu.get("cpu1", {}).get("busy", 0.0)
    gen = step.cpu.get("generator", {}).get("total", 0.0)
    ksoftirqd = sum(v.get("total", 0.0) for k, v in step.cpu.items() if k.startswith("ksoftirqd/"))
    base = baseline_latency(steps, step.calls) if steps is not None and step.relay != "generator" else None
    added_50 = f"{lat['p50'] - base['p50']:5.0f}" if base else f"{'':5}"
    added_99 = f"{lat['p99'] - base['p99']:6.0f}" if base else f"{'':6}"
    verdict = "ok" if step.sustained(ARGS_MAX_LOSS) else (
        "generator behind" if step.generator_limited else ("misrouted" if load["misrouted"] else "LOSS"))
    if step.error:
        verdict = f"ERROR {step.error[:80]}"
    return (f"{step.relay:9} {step.calls:5d} {step.attempt:3d} {load['offered_pps']:7.0f} "
            f"{step.loss_pct:7.3f} {load['total']['lost']:6d} {lat['p50']:6d} {lat['p99']:7d} {lat['max']:8.0f} "
            f"{added_50} {added_99} {relay.get('total', 0.0):6.1f} {relay.get('user', 0.0):5.1f} "
            f"{relay.get('system', 0.0):5.1f} {step.cpu_us_per_packet:6.2f} {core:5.1f} {gen:5.1f} {ksoftirqd:6.1f} "
            f"{load['send_lag_us']['over_1ms']:7d} {step.udp.get('RcvbufErrors', 0):7d} "
            f"{step.cpu.get('other', 0.0):6.1f} {step.threads:3d}  {verdict}")


ARGS_MAX_LOSS = 0.1  # set from --max-loss in main(), for row()


def summary(steps: list[Step], args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for kind in args.kinds:
        top = best(steps, kind, args.max_loss)
        fail = first_failure(steps, kind, args.max_loss)
        quick = [st for st in steps if st.relay == kind and st.sustained(args.max_loss)
                 and st.load["latency_us"]["p99"] <= args.max_p99_ms * 1000]
        entry: dict[str, Any] = {
            "max_sustained_calls": top.calls if top else 0,
            "max_sustained_pps_each_way": top.calls * 2 * PPS_PER_STREAM if top else 0,
            "first_failed_calls": fail.calls if fail else None,
            "first_failed_loss_pct": fail.loss_pct if fail else None,
            "limited_by_generator": bool(fail and fail.generator_limited),
            # Past its capacity a relay first queues (its sockets' receive buffers
            # hold seconds of audio) and only later drops: latency shows it first.
            "max_sustained_calls_low_latency": max((st.calls for st in quick), default=0),
            "low_latency_p99_ms": args.max_p99_ms,
        }
        if top and kind != "generator":
            base = baseline_latency(steps, top.calls)
            entry["at_max"] = {
                "latency_us": top.load["latency_us"], "relay_cpu_pct": top.cpu.get("relay"),
                "cpu_us_per_packet": top.cpu_us_per_packet,
                "added_latency_us": {q: top.load["latency_us"][q] - base[q] for q in ("p50", "p99")} if base else None,
            }
        at_target = [s for s in steps if s.relay == kind and s.calls == TARGET_CALLS and s.load]
        if at_target and kind != "generator":
            s = at_target[-1]
            base = baseline_latency(steps, TARGET_CALLS)
            entry["at_1000_calls"] = {
                "loss_pct": s.loss_pct, "latency_us": s.load["latency_us"], "relay_cpu": s.cpu.get("relay"),
                "cpu_us_per_packet": s.cpu_us_per_packet,
                "added_latency_us": {q: s.load["latency_us"][q] - base[q] for q in ("p50", "p99")} if base else None,
            }
        result[kind] = entry
    targets: dict[str, Any] = {}
    if "switchd" in result:
        calls = result["switchd"]["max_sustained_calls"]
        targets["switchd_1000_calls"] = {"met": calls >= TARGET_CALLS, "sustained_calls": calls}
    if "switchd" in result and "rtpengine" in result:
        ours = result["switchd"]["max_sustained_calls"]
        theirs = result["rtpengine"]["max_sustained_calls"]
        ratio = round(ours / theirs, 3) if theirs else None
        note = ""
        if result["rtpengine"]["limited_by_generator"]:
            note = "rtpengine held up to the generator's limit: its figure is a lower bound, the ratio an upper one"
        elif result["rtpengine"]["first_failed_calls"] is None:
            note = "rtpengine held every count run: its figure is a lower bound, the ratio an upper one"
        targets["half_of_rtpengine"] = {"met": ratio is not None and ratio >= TARGET_RATIO, "ratio": ratio,
                                        "note": note}
        quick_ours = result["switchd"]["max_sustained_calls_low_latency"]
        quick_theirs = result["rtpengine"]["max_sustained_calls_low_latency"]
        targets["half_of_rtpengine_low_latency"] = {
            "informational": f"both criteria: loss < {args.max_loss:g}% and p99 latency <= {args.max_p99_ms:g} ms",
            "ratio": round(quick_ours / quick_theirs, 3) if quick_theirs else None,
            "switchd_calls": quick_ours, "rtpengine_calls": quick_theirs,
        }

        # CPU per packet where neither relay is saturated (past that, bigger
        # batches per wake-up make every packet cheaper and the figure moves).
        def unsaturated(kind: str) -> dict[int, Step]:
            return {st.calls: st for st in steps if st.relay == kind and st.sustained(args.max_loss)
                    and st.relay_cpu_pct < 90}

        ours_ok, theirs_ok = unsaturated("switchd"), unsaturated("rtpengine")
        same = sorted(set(ours_ok) & set(theirs_ok))
        if same:
            calls = same[-1]
            targets["cpu_per_packet_at_same_load"] = {
                "calls": calls,
                "switchd_us": ours_ok[calls].cpu_us_per_packet,
                "rtpengine_us": theirs_ok[calls].cpu_us_per_packet,
                "switchd_over_rtpengine": round(ours_ok[calls].cpu_us_per_packet
                                                / max(theirs_ok[calls].cpu_us_per_packet, 1e-6), 3),
                "relay_cpu_pct": {"switchd": ours_ok[calls].relay_cpu_pct,
                                  "rtpengine": theirs_ok[calls].relay_cpu_pct},
            }
    result["targets"] = targets
    return result


def versions(args: argparse.Namespace) -> dict[str, Any]:
    import twisted

    cpu_model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    rtpengine = ""
    if args.rtpengine and "rtpengine" in args.only:
        rtpengine = subprocess.run([args.rtpengine, "--version"], capture_output=True, text=True,
                                   check=False).stderr.strip() or "?"
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    return {"cpu": cpu_model, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "twisted": twisted.__version__, "git_commit": commit,
            "rtpengine": rtpengine, "gcc": gcc}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="250,500,750,1000,1250,1500,1750,2000,2250,2500",
                        help="comma-separated concurrent call counts, in rising order")
    parser.add_argument("--extend", type=int, default=250,
                        help="after the list, go on rising by this many calls while a relay holds (0: no)")
    parser.add_argument("--max-calls", type=int, default=5000, help="never more calls than this")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of counted load per step")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before counting")
    parser.add_argument("--drain", type=float, default=1.0, help="seconds to wait for late packets")
    parser.add_argument("--only", choices=(*RELAYS, "generator"), action="append",
                        help="only this relay (repeatable; default: both); 'generator' alone: its ceiling")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="do not run the generator alone (no latency floor, no generator check)")
    parser.add_argument("--max-loss", type=float, default=0.1, help="%% of packets a sustained step may lose")
    parser.add_argument("--max-p99-ms", type=float, default=20.0,
                        help="the latency bound of the second figure reported: sustained with p99 at most this")
    parser.add_argument("--retries", type=int, default=1,
                        help="repeat a failed step this many times when other load was above --noisy")
    parser.add_argument("--noisy", type=float, default=15.0,
                        help="%% of a CPU used by other processes above which a failed step is repeated")
    parser.add_argument("--wait-quiet", type=float, default=60.0, metavar="SECONDS",
                        help="before each step, wait up to this long for the machine to be idle")
    parser.add_argument("--quiet-threshold", type=float, default=10.0,
                        help="%% of one CPU busy below which the machine counts as idle")
    parser.add_argument("--relay-cpu", type=int, default=1, help="CPU of the relay (-1: not pinned)")
    parser.add_argument("--generator-cpu", type=int, default=0, help="CPU of the generator (-1: not pinned)")
    parser.add_argument("--port-range", default="10000-29999", help="the relays' RTP ports, LOW-HIGH")
    parser.add_argument("--nice", type=int, default=0,
                        help="run the relays and the generator at this nice value (e.g. -10 on a machine "
                             "others use: their processes then take less of our two CPUs; the same for both "
                             "relays)")
    parser.add_argument("--rtpengine", default=shutil.which("rtpengine") or "/usr/bin/rtpengine",
                        help="the rtpengine binary")
    parser.add_argument("--rtpengine-threads", type=int, default=1,
                        help="rtpengine --num-threads (its worker threads; all on the one relay CPU)")
    parser.add_argument("--rtpengine-log-level", type=int, default=4, help="rtpengine --log-level")
    parser.add_argument("--gc-freeze", action="store_true", help="relay_server.py --gc-freeze")
    parser.add_argument("--profile", action="store_true",
                        help="profile switchd's relay at --profile-calls (done anyway when it misses a target)")
    parser.add_argument("--no-profile", dest="auto_profile", action="store_false",
                        help="do not profile switchd's relay even when it misses a target")
    parser.add_argument("--profile-calls", type=int, default=TARGET_CALLS, help="the load of the profiled step")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                        help="the py-spy binary ('' : none)")
    parser.add_argument("--perf", default=shutil.which("perf") or "", help="the perf binary ('' : none)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the binary and the JSON")
    parser.add_argument("--report", type=Path, default=None, metavar="JSON",
                        help="run nothing: print the table and summary of a saved media_*.json again")
    args = parser.parse_args(argv)
    try:
        args.calls = sorted({int(c) for c in args.calls.split(",") if c.strip()})
    except ValueError:
        parser.error(f"--calls: expected comma-separated integers, got {args.calls!r}")
    if not args.calls or args.calls[0] < 1 or args.calls[-1] > 9000:
        parser.error("--calls: counts from 1 to 9000")
    args.only = list(dict.fromkeys(args.only or RELAYS))
    # What runs: the generator alone first (the latency floor, and the check
    # that it keeps up), then the relays.
    args.kinds = list(dict.fromkeys((["generator"] if args.baseline else []) + args.only))
    if not 1 <= args.duration <= 300:
        parser.error("--duration must be 1 to 300 seconds")
    low, sep, high = args.port_range.partition("-")
    if not sep or not low.isdigit() or not high.isdigit() or not 1024 <= int(low) < int(high) < 65536:
        parser.error(f"--port-range: expected LOW-HIGH, got {args.port_range!r}")
    if 4 * min(max(args.calls), args.max_calls) > int(high) - int(low) + 1:
        parser.error(f"--port-range {args.port_range} is too small for {max(args.calls)} calls (4 ports each)")
    ncpu = os.cpu_count() or 1
    for name in ("relay_cpu", "generator_cpu"):
        value = getattr(args, name)
        if value >= ncpu:
            parser.error(f"--{name.replace('_', '-')} {value}: this machine has {ncpu} CPUs")
        setattr(args, name, None if value < 0 or shutil.which("taskset") is None else value)
    if "rtpengine" in args.only and not (args.rtpengine and Path(args.rtpengine).exists()):
        parser.error("rtpengine is not installed (Debian: apt-get install rtpengine-daemon); "
                     "or use --only switchd")
    args.py_spy = args.py_spy if args.py_spy and Path(args.py_spy).exists() else ""
    return args


def print_report(steps: list[Step], result: dict[str, Any], profiled: Step | None,
                 args: argparse.Namespace) -> None:
    """The table of every step, what each relay sustained, the targets, the profile."""
    print(HEADER)
    for step in steps:
        print(row(step, steps))
    print("pps in = packets/s the relay receives (it sends as many); +p50/+p99 = latency added to the "
          "generator-alone floor at the same count;\nrelay% = the relay process (usr/sys: user and kernel "
          "time), % of one CPU; us/pkt = relay CPU us per relayed packet; core% = the relay's CPU busy "
          "(softirq included);\ngen% = the generator; ksirq% = ksoftirqd threads (overflow of our packets' "
          "softirq work); lag>1ms = packets the generator sent over 1 ms late;\n"
          "rxdrop = datagrams the kernel dropped on full receive buffers (machine-wide, the whole step); "
          "other% = other processes (noise); thr = relay threads")
    for kind in args.kinds:
        entry = result[kind]
        print(f"[{kind}] largest sustained: {entry['max_sustained_calls']} calls "
              f"({entry['max_sustained_pps_each_way']} packets/s each way); first failed: "
              f"{entry['first_failed_calls']} calls ({entry['first_failed_loss_pct']}% lost)"
              + (" - the generator's limit" if entry["limited_by_generator"] else "")
              + f"; with p99 <= {entry['low_latency_p99_ms']:g} ms too: {entry['max_sustained_calls_low_latency']}")
    for name, target in result["targets"].items():
        print(f"target {name}: {json.dumps(target)}")
    if profiled is not None:
        print_profile(profiled)


def print_profile(step: Step) -> None:
    """The profile in a few lines; all of it is in the JSON."""
    profile = step.profile
    print(f"profile of switchd's relay at {step.calls} calls (relay CPU {step.relay_cpu_pct:.1f}%, "
          f"{step.loss_pct:.3f}% lost; py-spy and perf running beside it):")
    if "cpu_us_per_packet" in profile:
        print(f"  CPU per relayed packet: {json.dumps(profile['cpu_us_per_packet'])} us (user, system)")
    stat = profile.get("perf_stat", {}).get("per_packet")
    if stat:
        print("  system calls per relayed packet: " + ", ".join(f"{k} {v}" for k, v in stat.items() if v))
    record = profile.get("perf_record")
    if record:
        print("  perf samples by object: " + ", ".join(f"{name} {pct:.1f}%" for name, pct in record["by_dso_pct"]))
        print("  perf top symbols: " + ", ".join(f"{name} {pct:.1f}%" for name, pct in record["top_symbols_pct"][:8]))
    spy = profile.get("py_spy")
    if spy:
        print(f"  py-spy ({spy['busy_samples']} samples): " + ", ".join(
            f"{kind} {pct:.1f}%" for kind, pct in spy["by_kind_pct"].items()))
        for leaf, pct in spy["top_leaf_pct"][:8]:
            print(f"    {pct:5.1f}%  {leaf}")
    for key, value in profile.items():
        if key.endswith("_error"):
            print(f"  {key}: {value}")


def replay(path: Path, args: argparse.Namespace) -> int:
    """--report: print the table and summary of a saved run again (with today's criteria)."""
    document = json.loads(path.read_text())
    names = {f.name for f in fields(Step)}
    steps = [Step(**{k: v for k, v in item.items() if k in names}) for item in document["steps"]]
    profile = document.get("profile")
    profiled = Step(**{k: v for k, v in profile.items() if k in names}) if profile else None
    saved = document["settings"]
    args.only = saved["only"]
    args.kinds = saved.get("kinds", ["generator", *saved["only"]])
    print(f"{path}: {document['when']}, {document['machine']['cpu']}, {saved['duration']:g} s steps")
    result = summary(steps, args)
    print_report(steps, result, profiled, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    global ARGS_MAX_LOSS
    args = parse_args(argv)
    ARGS_MAX_LOSS = args.max_loss
    if args.report is not None:
        return replay(args.report, args)
    raise_fd_limit()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    binary = build_rtpload(args.out)
    machine = versions(args)
    print(f"{machine['cpus']} x {machine['cpu']}, Linux {machine['kernel']}, Python {machine['python']}, "
          f"Twisted {machine['twisted']}; {machine['rtpengine'].splitlines()[0] if machine['rtpengine'] else ''}")
    print(f"relay on CPU {args.relay_cpu}, generator on CPU {args.generator_cpu}; {args.duration:g} s counted "
          f"after {args.warmup:g} s; {PPS_PER_STREAM} packets/s each way per call; sustained: loss < "
          f"{args.max_loss:g}%; rtpengine --num-threads={args.rtpengine_threads} --table=-1; nice {args.nice}")
    print(HEADER, flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="media-bench-"))
    steps: list[Step] = []
    try:
        steps = ladder(args, binary, workdir)
        result = summary(steps, args)
        switchd_missed = "switchd" in args.only and not result["targets"].get("switchd_1000_calls", {}).get("met")
        profiled: Step | None = None
        if "switchd" in args.only and (args.profile or (switchd_missed and args.auto_profile)) and (
                args.py_spy or args.perf):
            print(f"profiling switchd's relay at {args.profile_calls} calls "
                  f"(py-spy: {args.py_spy or 'none'}, perf: {args.perf or 'none'})", flush=True)
            profiled = run_step("switchd", args.profile_calls, 1, args, binary, workdir, profile=True)
            print(row(profiled, steps), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print_report(steps, result, profiled, args)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"media_{stamp}.json"
    document = {
        "benchmark": "media",
        "when": stamp,
        "machine": machine,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": result,
        "steps": [{**asdict(s), "loss_pct": s.loss_pct, "sustained": s.sustained(args.max_loss),
                   "generator_limited": s.generator_limited, "cpu_us_per_packet": s.cpu_us_per_packet}
                  for s in steps],
        "profile": asdict(profiled) if profiled is not None else None,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    targets = result["targets"]
    return 0 if all(t.get("met", True) for t in targets.values() if "met" in t) else 1


if __name__ == "__main__":
    sys.exit(main())
