"""Benchmark of the provisioning API over real HTTP, with wrk as the load generator.

For each backend (SQLite in a temporary state directory, then PostgreSQL in a
throw-away database on 127.0.0.1:5432) it starts the real daemon
(``twistd -n switchd``), seeds customers through the API, then runs wrk
against:

- the keyed read ``GET /v1/customers/{id}`` (ids drawn at random over the
  seeded set), closed loop at each ``--connections`` count and once paced at
  about ``--rate`` requests per second;
- the create ``POST /v1/customers`` (a unique name per request), closed loop
  at each ``--connections`` count.

Every run is preceded by a short unrecorded warm-up. For each run it records
wrk's requests per second and latency percentiles (``bench/api.lua`` prints
them from wrk's ``done()``), the daemon's CPU use (all threads, and the
reactor thread alone, from ``/proc``), wrk's, the PostgreSQL backends', what
the rest of the machine used meanwhile (other people's load skews the
figures; ``--wait-quiet`` and ``--repeat`` help on a shared machine) and the
daemon's resident memory. It prints a table and writes everything as JSON to
``bench/results/``.

By default the daemon is pinned to CPU 0 and wrk to CPU 1 with ``taskset``
(``--no-pin`` to let the scheduler place them); the PostgreSQL server is not
ours and runs wherever the scheduler puts it.

Run from the repository root (needs ``wrk``; PostgreSQL for that backend)::

    python bench/api_bench.py --wait-quiet 90 --repeat 3
    python bench/api_bench.py --backends sqlite --duration 10 --connections 1,8

All traffic stays on 127.0.0.1 and every wrk run is bounded by ``--duration``.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

LUA = ROOT / "bench" / "api.lua"
RESULTS = ROOT / "bench" / "results"
PG_ADMIN_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
TARGET_RPS = 1000.0
TARGET_P99_MS = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the daemon ------------------------------------------------------------------

LISTENING = re.compile(r"\[api\] listening on \S+ \(TCP \S+ port (\d+)\)")

# --gc-stats: run twistd through this wrapper, which times every garbage
# collection (one line "generation milliseconds" per collection into the file
# named by BENCH_GC_LOG). A measuring aid, not switchd's code.
GC_STATS_WRAPPER = """\
import gc, os, sys, time
_log = open(os.environ["BENCH_GC_LOG"], "a", buffering=1)
_started = [0.0]
def _timed(phase, info):
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        _log.write("%d %.3f\\n" % (info["generation"], (time.perf_counter() - _started[0]) * 1000))
gc.callbacks.append(_timed)
sys.argv[0] = "twistd"
from twisted.scripts.twistd import run
run()
"""


class BenchDaemon:
    """One ``twistd -n switchd``, logging to stdout like the systemd unit does.

    Like tests/daemon.py's Daemon, but the log goes to stdout, redirected to a
    file (twistd's own log file would rotate every megabyte of access log,
    on the reactor thread), and the process can be pinned to one CPU.
    """

    def __init__(self, directory: Path, env: dict[str, str], cpu: int | None, gc_stats: bool = False) -> None:
        self.dir = directory
        self.state_dir = directory / "state"
        self.config = directory / "switchd.ini"
        self.config.write_text("")
        self.log = directory / "switchd.log"
        self.env = {**os.environ, "SWITCHD_SWITCHD_STATE_DIR": str(self.state_dir), **env}
        self.cpu = cpu
        self.gc_log = directory / "gc.log" if gc_stats else None
        if self.gc_log is not None:
            self.env["BENCH_GC_LOG"] = str(self.gc_log)
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    def command(self) -> list[str]:
        args = ["-n", "--pidfile=", "--logfile=-", "switchd", "-c", str(self.config)]
        if self.gc_log is not None:
            command = [sys.executable, "-c", GC_STATS_WRAPPER, *args]
        else:
            command = [str(Path(sys.executable).with_name("twistd")), *args]
        if self.cpu is not None:
            # taskset execs the daemon: the pid stays the daemon's.
            command = ["taskset", "-c", str(self.cpu), *command]
        return command

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.dir, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"switchd exited with {self.proc.returncode}: {self.log.read_text()}")
            match = LISTENING.search(self.log.read_text(errors="replace"))
            if match:
                self.port = int(match.group(1))
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"switchd did not start: {self.log.read_text()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_key(self) -> str:
        return (self.state_dir / "admin-api-key").read_text().strip()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@dataclass
class CpuSample:
    wall: float
    total: int  # clock ticks, all threads
    reactor: int  # clock ticks, the main thread (the reactor)
    threads: int


def _ticks(stat_path: Path) -> int:
    # Fields after the parenthesised command name; utime and stime are 14 and 15.
    text = stat_path.read_text()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def cpu_sample(pid: int) -> CpuSample:
    proc = Path(f"/proc/{pid}")
    return CpuSample(
        wall=time.monotonic(),
        total=_ticks(proc / "stat"),
        reactor=_ticks(proc / "task" / str(pid) / "stat"),
        threads=len(list((proc / "task").iterdir())),
    )


def machine_busy() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs together, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024
    return {"rss_mib": round(values["VmRSS"], 1), "peak_rss_mib": round(values["VmHWM"], 1)}


# -- seeding through the API ----------------------------------------------------------


def seed_customers(port: int, key: str, count: int) -> tuple[list[int], float]:
    """Create ``count`` customers one after another on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    ids = []
    started = time.monotonic()
    for n in range(count):
        body = json.dumps({"name": f"Seed customer {n}", "email": f"seed{n}@example.net", "company": "Seed Ltd"})
        conn.request("POST", "/v1/customers", body, headers)
        answer = conn.getresponse()
        data = answer.read()
        if answer.status != 201:
            raise RuntimeError(f"seeding failed: {answer.status} {data[:200]!r}")
        ids.append(json.loads(data)["id"])
    elapsed = time.monotonic() - started
    conn.close()
    return ids, elapsed


# -- wrk -------------------------------------------------------------------------------


def wrk_version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False).stdout
    match = re.match(r"wrk (\S+)", out)
    return f"wrk {match.group(1)}" if match else "wrk ?"


def run_wrk(
    url: str,
    *,
    mode: str,
    key: str,
    ids: tuple[int, int],
    connections: int,
    threads: int,
    seconds: float,
    cpu: int | None,
    delay_ms: float = 0.0,
) -> dict[str, Any]:
    env = {
        **os.environ,
        "BENCH_MODE": mode,
        "BENCH_KEY": key,
        "BENCH_IDS": f"{ids[0]}:{ids[1]}",
        "BENCH_TAG": secrets.token_hex(4),
        "BENCH_DELAY_MS": f"{delay_ms:.3f}",
    }
    command = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{round(seconds)}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
    match = re.search(r"^BENCH_RESULT (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    return json.loads(match.group(1))


@dataclass
class Run:
    backend: str
    operation: str
    connections: int
    paced_ms: float
    wrk: dict[str, Any]
    cpu_total_pct: float
    cpu_reactor_pct: float
    cpu_ms_per_request: float
    wrk_cpu_pct: float
    pg_cpu_pct: float
    machine_cpu_pct: float
    other_cpu_pct: float
    background_before_pct: float
    threads: int
    memory: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.paced_ms:
            return f"{self.operation} paced"
        return self.operation


def wait_quiet(limit_s: float, threshold_pct: float = 15.0) -> float:
    """Wait (at most ``limit_s``) until the machine is nearly idle; returns its busy %.

    Between runs nothing of ours is working, so what keeps the CPUs busy then
    is someone else's load, which would skew the next run.
    """
    deadline = time.monotonic() + limit_s
    while True:
        start = machine_busy()
        time.sleep(1.0)
        end = machine_busy()
        busy = 100 * (end[0] - start[0]) / max(1, end[1] - start[1]) * (os.cpu_count() or 1)
        if busy < threshold_pct or time.monotonic() >= deadline:
            return round(busy, 1)


def measured_run(daemon: BenchDaemon, args, backend: str, operation: str, connections: int,
                 key: str, ids: tuple[int, int], pg: PgDatabase | None, delay_ms: float = 0.0,
                 warm: bool = True) -> Run:
    mode = "get" if operation.startswith("GET") else "create"
    common = {"mode": mode, "key": key, "ids": ids, "connections": connections, "threads": args.threads,
              "cpu": args.wrk_cpu, "delay_ms": delay_ms}
    if warm and args.warmup > 0:
        run_wrk(daemon.url, seconds=args.warmup, **common)
    background = wait_quiet(args.wait_quiet)
    pg_before = pg.backend_ticks() if pg else {}
    gc_offset = daemon.gc_log.stat().st_size if daemon.gc_log is not None and daemon.gc_log.exists() else 0
    before = cpu_sample(daemon.pid)
    busy_before = machine_busy()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    spy = None
    if args.py_spy:
        profile = args.out / f"profile-{backend}-{mode}-c{connections}{'-paced' if delay_ms else ''}-{int(time.time())}.txt"
        profile.parent.mkdir(parents=True, exist_ok=True)
        spy = subprocess.Popen(
            ["py-spy", "record", "--pid", str(daemon.pid), "--duration", str(max(1, int(args.duration) - 1)),
             "--rate", "250", "--threads", "--gil", "--nonblocking", "--format", "raw", "--output", str(profile)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    result = run_wrk(daemon.url, seconds=args.duration, **common)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk's, before py-spy is reaped
    extra: dict[str, Any] = {}
    if daemon.gc_log is not None:
        extra["gc"] = gc_summary(daemon.gc_log, gc_offset, args.duration)
    if spy is not None:
        spy.wait(timeout=60)
        extra["profile"] = {"file": str(profile), "top_self": top_functions(profile)}
    after = cpu_sample(daemon.pid)
    busy_after = machine_busy()
    pg_after = pg.backend_ticks() if pg else {}
    wall = after.wall - before.wall
    machine = (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1]) * (os.cpu_count() or 1)
    total = (after.total - before.total) / CLK_TCK
    reactor = (after.reactor - before.reactor) / CLK_TCK
    wrk_cpu = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    pg_cpu = sum(ticks - pg_before.get(pid, 0) for pid, ticks in pg_after.items()) / CLK_TCK
    requests = max(result["requests"], 1)

    def pct(seconds: float) -> float:
        return round(100 * seconds / wall, 1)

    return Run(
        backend=backend,
        operation=operation,
        connections=connections,
        paced_ms=delay_ms,
        wrk=result,
        cpu_total_pct=pct(total),
        cpu_reactor_pct=pct(reactor),
        cpu_ms_per_request=round(1000 * total / requests, 3),
        wrk_cpu_pct=pct(wrk_cpu),
        pg_cpu_pct=pct(pg_cpu),
        machine_cpu_pct=round(100 * machine, 1),
        other_cpu_pct=round(max(0.0, 100 * machine - pct(total) - pct(wrk_cpu) - pct(pg_cpu)), 1),
        background_before_pct=background,
        threads=after.threads,
        memory=memory(daemon.pid),
        extra=extra,
    )


def gc_summary(path: Path, offset: int, seconds: float) -> dict[str, Any]:
    """Collections per generation during a run: count, total and longest pause."""
    with open(path, "rb") as f:
        f.seek(offset)
        lines = f.read().decode().splitlines()
    per_gen: dict[str, dict[str, float]] = {}
    for line in lines:
        gen, _, ms = line.partition(" ")
        if not ms:
            continue
        entry = per_gen.setdefault(f"gen{gen}", {"count": 0, "total_ms": 0.0, "max_ms": 0.0, "over_5ms": 0})
        pause = float(ms)
        entry["count"] += 1
        entry["total_ms"] += pause
        entry["max_ms"] = max(entry["max_ms"], pause)
        entry["over_5ms"] += pause > 5
    total = sum(e["total_ms"] for e in per_gen.values())
    for e in per_gen.values():
        e["total_ms"] = round(e["total_ms"], 1)
        e["max_ms"] = round(e["max_ms"], 2)
    return {"generations": dict(sorted(per_gen.items())), "share_of_time_pct": round(total / 10 / seconds, 2)}


IDLE_FRAMES = ("Condition.wait (threading.py", "EPollReactor.doPoll (twisted/internet/epollreactor.py")


def top_functions(path: Path, count: int = 12) -> list[tuple[str, float]]:
    """The functions a py-spy raw profile was busy in, by share of busy samples.

    The profile holds only samples of the thread holding the GIL (``--gil``):
    the daemon's Python work is serialised by it, so these shares are shares of
    its CPU. Samples whose innermost frame waits are left out anyway.
    """
    if not path.exists():
        return []
    busy = 0
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        leaf = re.sub(r":\d+\)$", ")", frames[-1])
        if len(frames) < 2 or leaf.startswith(IDLE_FRAMES):
            continue
        busy += int(n)
        counts[leaf] = counts.get(leaf, 0) + int(n)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:count]
    return [(name, round(100 * n / busy, 1)) for name, n in ranked]


# -- PostgreSQL --------------------------------------------------------------------------


class PgDatabase:
    """A throw-away database on the local server, dropped afterwards."""

    def __init__(self, admin_url: str) -> None:
        import psycopg2

        self.psycopg2 = psycopg2
        self.admin_dsn = admin_url.replace("postgresql+psycopg2://", "postgresql://")
        self.name = "switchd_bench_" + secrets.token_hex(4)
        base = self.admin_dsn.rsplit("/", 1)[0]
        self.url = f"{base}/{self.name}"

    def _admin(self, sql: str) -> Any:
        conn = self.psycopg2.connect(self.admin_dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchone() if cur.description else None
        finally:
            conn.close()

    def create(self) -> None:
        self._admin(f"CREATE DATABASE {self.name}")

    def drop(self) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {self.name}")

    def version(self) -> str:
        return self._admin("SHOW server_version")[0]

    def backend_ticks(self) -> dict[int, int]:
        """CPU clock ticks so far of each server process serving this database."""
        conn = self.psycopg2.connect(self.admin_dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,))
                pids = [row[0] for row in cur.fetchall()]
        finally:
            conn.close()
        ticks = {}
        for pid in pids:
            try:
                ticks[pid] = _ticks(Path(f"/proc/{pid}/stat"))
            except OSError:
                pass  # gone, or on another host
        return ticks


# -- one backend -------------------------------------------------------------------------------


def bench_backend(backend: str, args) -> tuple[list[Run], dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix=f"switchd-bench-{backend}-"))
    # The API on an ephemeral loopback port, and no SIP listener: this
    # measures the API alone (and must not collide with anything on 5060).
    env = {"SWITCHD_API_LISTEN": "tcp:0:interface=127.0.0.1", "SWITCHD_SIP_LISTEN": ""}
    pg = None
    info: dict[str, Any] = {"backend": backend}
    if backend == "postgresql":
        pg = PgDatabase(args.pg_admin_url)
        pg.create()
        info["server_version"] = pg.version()
        env.update(SWITCHD_DATABASE_URL=pg.url, SWITCHD_DATABASE_AUTO_MIGRATE="yes")
        if args.pool_size is not None:
            env["SWITCHD_DATABASE_POOL_SIZE"] = str(args.pool_size)
    else:
        import sqlite3

        info["sqlite_version"] = sqlite3.sqlite_version
    if args.gc_thresholds is not None:
        env["SWITCHD_SWITCHD_GC_THRESHOLDS"] = args.gc_thresholds
    daemon = BenchDaemon(tmp, env, args.daemon_cpu, args.gc_stats)
    runs: list[Run] = []
    try:
        daemon.start(timeout=60)
        key = daemon.admin_key
        print(f"[{backend}] daemon pid {daemon.pid} on {daemon.url}; seeding {args.seed} customers", flush=True)
        ids, seconds = seed_customers(daemon.port, key, args.seed)
        info["seed"] = {"customers": len(ids), "seconds": round(seconds, 2),
                        "sequential_creates_per_second": round(len(ids) / seconds, 1)}
        info["memory_after_seed"] = memory(daemon.pid)
        span = (min(ids), max(ids))
        plan: list[tuple[str, int, float]] = [("GET /v1/customers/{id}", c, 0.0) for c in args.connections]
        if args.rate > 0:
            # Each connection waits on average conns/rate seconds between its
            # requests, less the unloaded response time (the median of the
            # 1-connection read run, else 0.5 ms): the offered rate is about --rate.
            conns = args.paced_connections
            plan.append(("GET /v1/customers/{id}", conns, conns * 1000.0 / args.rate))
        plan += [("POST /v1/customers", c, 0.0) for c in args.connections]
        unloaded_ms = 0.5
        for operation, connections, delay_ms in plan:
            if delay_ms:
                delay_ms = max(0.1, delay_ms - unloaded_ms)
            # Best of --repeat: the repeat least disturbed by other processes.
            repeats = [
                measured_run(daemon, args, backend, operation, connections, key, span, pg, delay_ms, warm=n == 0)
                for n in range(args.repeat)
            ]
            run = min(repeats, key=lambda r: r.other_cpu_pct)
            if args.repeat > 1:
                run.extra["repeats"] = [
                    {"rps": r.wrk["rps"], "p99_us": r.wrk["latency_us"]["p99"],
                     "errors": sum(r.wrk["errors"].values()), "other_cpu_pct": r.other_cpu_pct}
                    for r in repeats
                ]
            if operation.startswith("GET") and connections == 1 and not delay_ms:
                unloaded_ms = run.wrk["latency_us"]["p50"] / 1000
            runs.append(run)
            print(row(run), flush=True)
            if "gc" in run.extra:
                gcs = run.extra["gc"]
                print("    gc: " + "; ".join(
                    f"{gen} {e['count']}x, max {e['max_ms']} ms, {e['over_5ms']} over 5 ms"
                    for gen, e in gcs["generations"].items()
                ) + f"; {gcs['share_of_time_pct']}% of the time", flush=True)
            for name, share in run.extra.get("profile", {}).get("top_self", []):
                print(f"    {share:5.1f}%  {name}")
        info["memory_at_end"] = memory(daemon.pid)
    finally:
        code = daemon.stop()
        text = daemon.log.read_text(errors="replace") if daemon.log.exists() else ""
        info["daemon"] = {"exit_code": code, **logged_failures(text)}
        if pg is not None:
            pg.drop()
        if args.keep_logs:
            print(f"[{backend}] logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return runs, info


def logged_failures(log: str) -> dict[str, Any]:
    """The API handler's failure reports in the daemon's log, by exception.

    wrk closes its connections at the end of a run with requests in flight;
    Klein cancels those and the handler reports a CancelledError for each.
    Anything else is worth a look (the daemon's log is kept with --keep-logs).
    """
    kinds: dict[str, int] = {}
    blocks = re.split(r"^\S+ \[[^\]]*\] ", log, flags=re.MULTILINE)
    for block in blocks:
        if not block.startswith("API request "):
            continue
        lines = [line.strip() for line in block.splitlines()[1:] if line.strip()]
        kind = lines[-1][:160] if lines else "?"
        kinds[kind] = kinds.get(kind, 0) + 1
    cancelled = sum(n for kind, n in kinds.items() if kind.startswith("twisted.internet.defer.CancelledError"))
    return {"logged_failures": sum(kinds.values()), "of_which_cancelled": cancelled, "failures_by_kind": kinds}


# -- reporting ---------------------------------------------------------------------------


HEADER = (
    f"{'backend':10} {'operation':29} {'conns':>5} {'req/s':>8} {'p50':>7} {'p90':>7} {'p99':>7} "
    f"{'p99.9':>7} {'errs':>4} {'cpu%':>5} {'react%':>6} {'ms/req':>6} {'wrk%':>4} {'pg%':>4} {'other%':>6} {'RSS':>4}"
)


def row(run: Run) -> str:
    lat = run.wrk["latency_us"]
    errors = sum(run.wrk["errors"].values())
    conns = f"{run.connections}" + ("p" if run.paced_ms else "")
    return (
        f"{run.backend:10} {run.label:29} {conns:>5} {run.wrk['rps']:8.0f} "
        f"{lat['p50'] / 1000:7.2f} {lat['p90'] / 1000:7.2f} {lat['p99'] / 1000:7.2f} {lat['p99.9'] / 1000:7.2f} "
        f"{errors:4d} {run.cpu_total_pct:5.0f} {run.cpu_reactor_pct:6.0f} {run.cpu_ms_per_request:6.3f} "
        f"{run.wrk_cpu_pct:4.0f} {run.pg_cpu_pct:4.0f} {run.other_cpu_pct:6.0f} {run.memory['rss_mib']:4.0f}"
    )


def target_met(runs: list[Run], backend: str) -> dict[str, Any]:
    """The keyed-read target: some run with >= 1,000 req/s and p99 < 20 ms."""
    reads = [r for r in runs if r.backend == backend and r.operation.startswith("GET")]
    passing = [
        r for r in reads
        if r.wrk["rps"] >= TARGET_RPS and r.wrk["latency_us"]["p99"] < TARGET_P99_MS * 1000
        and sum(r.wrk["errors"].values()) == 0
    ]
    best = max(reads, key=lambda r: r.wrk["rps"], default=None)
    return {
        "met": bool(passing),
        "passing_runs": [f"{r.label} c={r.connections}" for r in passing],
        "best_rps": best.wrk["rps"] if best else None,
    }


def versions() -> dict[str, Any]:
    import sqlalchemy

    import twisted

    cpu_model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    try:
        import switchd

        switchd_version = switchd.__version__
    except Exception:  # noqa: BLE001
        switchd_version = "?"
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return {
        "cpu": cpu_model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "switchd": switchd_version,
        "git_commit": commit,
        "wrk": wrk_version(),
    }


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--connections", default="1,8,32", help="closed-loop connection counts")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (at most the connections)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unrecorded warm-up before each run")
    parser.add_argument("--seed", type=int, default=1000, help="customers created before the runs")
    parser.add_argument("--rate", type=float, default=1050.0,
                        help="offered rate of the paced keyed-read run (0: no paced run); a little "
                             "above the 1,000 req/s target so that the achieved rate clears it")
    parser.add_argument("--paced-connections", type=int, default=16, help="connections of the paced run")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin the daemon to CPU 0 and wrk to CPU 1")
    parser.add_argument("--pg-admin-url", default=os.environ.get("TEST_SWITCHD_POSTGRESQL", PG_ADMIN_DEFAULT),
                        help="a PostgreSQL URL allowed to CREATE DATABASE")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON results")
    parser.add_argument("--keep-logs", action="store_true", help="keep the daemon's state dir and log")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure each run this many times and keep the one least disturbed by "
                             "other processes (lowest other%%); all are in the JSON")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each run, wait up to this long for other load on the machine to stop")
    parser.add_argument("--pool-size", type=int, default=None,
                        help="[database] pool_size for PostgreSQL (default: the daemon's, 8)")
    parser.add_argument("--py-spy", action="store_true",
                        help="record a py-spy profile (the thread holding the GIL) of the daemon during "
                             "each run into --out, and print its busiest functions; slows the daemon a little")
    parser.add_argument("--gc-stats", action="store_true",
                        help="time every garbage collection in the daemon (through a small wrapper "
                             "around twistd) and report them per run")
    parser.add_argument("--gc-thresholds", default=None, metavar="'G0 G1 G2'",
                        help="[switchd] gc_thresholds for the daemon; '' runs it with the interpreter's "
                             "collector defaults and nothing frozen (default: the daemon's own default)")
    args = parser.parse_args(argv)
    args.connections = [int(c) for c in args.connections.split(",") if c]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for backend in args.backends:
        if backend not in ("sqlite", "postgresql"):
            parser.error(f"unknown backend {backend!r}")
    if args.duration < 1 or args.duration > 120:
        parser.error("--duration must be 1 to 120 seconds")
    pin = args.pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    args.daemon_cpu, args.wrk_cpu = (0, 1) if pin else (None, None)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    machine = versions()
    print(f"{machine['cpus']} x {machine['cpu']}, Linux {machine['kernel']}, Python {machine['python']}, "
          f"Twisted {machine['twisted']}, SQLAlchemy {machine['sqlalchemy']}, {machine['wrk']}")
    print(f"daemon CPU {args.daemon_cpu}, wrk CPU {args.wrk_cpu} (None: not pinned); "
          f"{args.duration:g}s runs after {args.warmup:g}s warm-up; wrk -t{args.threads}"
          + (f"; gc_thresholds {args.gc_thresholds!r}" if args.gc_thresholds is not None else ""))
    # SIGINT reaches the whole process group (daemon and wrk too); let the
    # finally clauses clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    all_runs: list[Run] = []
    backends = {}
    print(HEADER)
    for backend in args.backends:
        runs, info = bench_backend(backend, args)
        all_runs += runs
        info["target"] = target_met(runs, backend)
        backends[backend] = info
    print()
    print(HEADER)
    for run in all_runs:
        print(row(run))
    print("latencies in ms (wrk, corrected for coordinated omission); conns 'p' = paced run; "
          "errs = wrk errors incl. non-2xx;\ncpu% = daemon, all threads; react% = its reactor thread; "
          "ms/req = daemon CPU ms per request; wrk% = wrk; pg% = the PostgreSQL backends serving the bench;\n"
          "other% = the rest of the machine (not ours: noise if well above 0); "
          "RSS = the daemon's resident MiB at the end of the run")
    for backend, info in backends.items():
        t = info["target"]
        verdict = "MET" if t["met"] else "NOT MET"
        print(f"[{backend}] keyed-read target (>= {TARGET_RPS:.0f} req/s with p99 < {TARGET_P99_MS:.0f} ms): "
              f"{verdict} {', '.join(t['passing_runs'])}; seeded at {info['seed']['sequential_creates_per_second']} "
              f"creates/s sequentially; daemon log: {info['daemon']}")
    noisy = [r for r in all_runs if r.other_cpu_pct > 20]
    if noisy:
        print(f"WARNING: other processes used more than 20% of a CPU during {len(noisy)} of "
              f"{len(all_runs)} runs (other% column): those figures understate switchd; "
              "rerun on a quiet machine or with --wait-quiet")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"api-{stamp}{'-gc' if args.gc_thresholds is not None else ''}.json"
    document = {
        "benchmark": "api",
        "when": stamp,
        "machine": machine,
        "settings": {
            "duration_s": args.duration, "warmup_s": args.warmup, "wrk_threads": args.threads,
            "connections": args.connections, "paced_rate": args.rate,
            "paced_connections": args.paced_connections, "seed": args.seed,
            "daemon_cpu": args.daemon_cpu, "wrk_cpu": args.wrk_cpu, "gc_thresholds": args.gc_thresholds, "gc_stats": args.gc_stats,
            "pool_size": args.pool_size, "wait_quiet_s": args.wait_quiet, "repeat": args.repeat, "py_spy": args.py_spy,
        },
        "backends": backends,
        "runs": [
            {
                "backend": r.backend, "operation": r.operation, "connections": r.connections,
                "paced_delay_ms": r.paced_ms, "wrk": r.wrk, "daemon_cpu_pct": r.cpu_total_pct,
                "reactor_cpu_pct": r.cpu_reactor_pct, "daemon_cpu_ms_per_request": r.cpu_ms_per_request,
                "wrk_cpu_pct": r.wrk_cpu_pct, "pg_backends_cpu_pct": r.pg_cpu_pct,
                "machine_cpu_pct": r.machine_cpu_pct, "other_cpu_pct": r.other_cpu_pct,
                "background_before_pct": r.background_before_pct, **r.extra, "daemon_threads": r.threads, "daemon_memory": r.memory,
            }
            for r in all_runs
        ],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0 if all(info["target"]["met"] for info in backends.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
