"""Calls through the B2BUA, driven by SIPp, and the same against Sippy B2BUA.

What it measures (no media; all traffic on 127.0.0.1-3, every run bounded):

1. **Rate ladder.** switchd (``twistd -n switchd``, SQLite in a temporary
   state directory, or PostgreSQL with ``--database-url``) is provisioned
   through the API like tests/interop/test_calls.py: a customer trunk known
   by its source address 127.0.0.2 (``auth_type ip``), a vendor trunk on
   127.0.0.3 answered by a SIPp UAS (``bench/scenarios/uas_answer.xml``),
   a tariff with a small price and a large prepaid top-up, flood protection
   off. For each rate of ``--rates`` a SIPp UAC
   (``bench/scenarios/uac_call.xml``: INVITE, 180, 200, ACK, ``--call-ms``
   of talk, BYE, 200) places ``rate * --seconds`` calls. Per step it records
   SIPp's successful and failed calls, the rate SIPp actually achieved, the
   INVITE-to-200 time through the B2BUA, retransmissions, and, over the
   steady part of the step (calls starting and ending at the full rate), the
   CPU of the B2BUA, of both SIPps and of everything else on the machine
   (someone else's load), and the B2BUA's resident memory. A step is
   *sustained* when at most 0.1% of its calls failed and SIPp achieved at
   least 95% of the offered rate; a step that was not sustained while other
   work used more than ``--noisy`` % of a CPU is repeated (``--retries``).
   After the ladder, switchd's CDRs are counted against the calls placed.

2. **Sippy B2BUA**, the same ladder interleaved step by step with switchd's
   (so both see the same background load): ``python -m sippy.b2bua`` from a
   virtualenv (``--sippy-python``; ``--install-sippy`` creates
   /tmp/sippy-venv with ``pip install sippy``) with a static route to the
   same SIPp UAS, RADIUS authentication and accounting off (``-u -A 0``),
   its logging off (``SIPLOG_BEND=none``; ``--sippy-log`` keeps it). Sippy
   does less per call than switchd: no database, no rating, no CDR.
   The ratio is switchd's highest sustained rate over Sippy's.

3. **Concurrency.** A fresh switchd; SIPp places ``--concurrent`` long calls
   at ``--ramp-rate`` and holds them ``--hold`` seconds before they all end
   (BYE) at the same rate. Records the B2BUA's RSS before, at the peak and
   after, RSS per 1,000 active calls (peak minus idle, and the slope of RSS
   over active calls during the ramp), CPU while ramping and while holding,
   and how long ``GET /v1/calls`` takes with every call up.

4. ``--py-spy``: one more switchd step at ``--profile-rate`` with py-spy
   recording the thread holding the GIL; prints the busiest functions.

Experiments (switchd started through ``DAEMON_WRAPPER``, not switchd's code):
``--gc-stats`` times every garbage collection (the ``gc%`` column);
``--variant-gc 20000,20,20`` adds a second switchd to the ladder with
``gc.freeze()`` and those thresholds; ``--gc-garbage 500`` counts the objects
per call that only the cycle collector frees; ``--gc-freeze``,
``--gc-threshold`` and ``--switch-interval`` change the main daemon.

Run from the repository root (needs ``sipp``; Debian ``sip-tester``)::

    python bench/b2bua_bench.py --install-sippy --py-spy --profile-rate 200
    python bench/b2bua_bench.py --install-sippy --gc-stats --variant-gc 20000,20,20 \\
        --gc-garbage 500 --py-spy --profile-rate 200 --keep-logs
    python bench/b2bua_bench.py --rates 200,300 --seconds 10 --no-sippy --no-concurrency --direct-rates ""

It prints a table, writes JSON to ``bench/results/`` (not in git) and exits
1 when a target is missed (300 calls/s sustained; 10,000 concurrent calls in
under 1 GiB). Every process it starts is stopped by its pid at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
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
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "bench" / "scenarios"
UAC = SCENARIOS / "uac_call.xml"
UAS = SCENARIOS / "uas_answer.xml"
RESULTS = ROOT / "bench" / "results"
CUSTOMER_IP = "127.0.0.2"
VENDOR_IP = "127.0.0.3"
NUMBER = "4420712345"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
TARGET_CPS = 300
TARGET_FAIL_PCT = 0.1
TARGET_CONCURRENT = 10_000
TARGET_MEMORY_MIB = 1024
# --switch-interval, --gc-stats, --gc-freeze, --gc-threshold: run twistd through
# this wrapper, which sets the interpreter's GIL switch interval, times every
# garbage collection (written as JSON to BENCH_GC_LOG once a second, with the
# number of objects the collector tracks 5 s after start and whenever the file
# BENCH_GC_LOG.count appears; BENCH_GC_LOG.garbage asks for a census of what a
# full collection finds unreachable), moves the objects
# alive once the daemon runs out of the collector's reach (gc.freeze) and/or
# sets the collection thresholds. Experiments to measure proposed changes to
# switchd; not switchd.
DAEMON_WRAPPER = (
    "import gc, json, os, sys, threading, time\n"
    "env = os.environ.get\n"
    "if env('BENCH_SWITCH_INTERVAL'):\n"
    "    sys.setswitchinterval(float(env('BENCH_SWITCH_INTERVAL')))\n"
    "if env('BENCH_GC_DISABLE'):\n"
    "    gc.disable()\n"
    "if env('BENCH_GC_THRESHOLD'):\n"
    "    gc.set_threshold(*(int(x) for x in env('BENCH_GC_THRESHOLD').split(',')))\n"
    "stats = {g: {'count': 0, 'seconds': 0.0, 'max': 0.0} for g in ('0', '1', '2')}\n"
    "if env('BENCH_GC_LOG'):\n"
    "    began = [0.0]\n"
    "    def timed(phase, info):\n"
    "        if phase == 'start':\n"
    "            began[0] = time.perf_counter()\n"
    "            return\n"
    "        took = time.perf_counter() - began[0]\n"
    "        s = stats[str(info['generation'])]\n"
    "        s['count'] += 1; s['seconds'] += took; s['max'] = max(s['max'], took)\n"
    "    gc.callbacks.append(timed)\n"
    "    def dump():\n"
    "        while True:\n"
    "            time.sleep(1.0)\n"
    "            if os.path.exists(env('BENCH_GC_LOG') + '.garbage'):\n"
    "                import collections\n"
    "                gc.set_debug(gc.DEBUG_SAVEALL)\n"
    "                found = gc.collect()\n"
    "                gc.set_debug(0)\n"
    "                kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)\n"
    "                stats['garbage'] = {'objects': found, 'types': kinds.most_common(40)}\n"
    "                gc.garbage.clear()\n"
    "                os.unlink(env('BENCH_GC_LOG') + '.garbage')\n"
    "            if os.path.exists(env('BENCH_GC_LOG') + '.count'):\n"
    "                import collections\n"
    "                live = gc.get_objects()\n"
    "                stats['objects_now'] = len(live)\n"
    "                stats['live_types'] = collections.Counter(type(o).__qualname__ for o in live).most_common(40)\n"
    "                del live\n"
    "                os.unlink(env('BENCH_GC_LOG') + '.count')\n"
    "            tmp = env('BENCH_GC_LOG') + '.tmp'\n"
    "            with open(tmp, 'w') as f:\n"
    "                json.dump(stats, f)\n"
    "            os.replace(tmp, env('BENCH_GC_LOG'))\n"
    "    threading.Thread(target=dump, daemon=True).start()\n"
    "from twisted.internet import reactor\n"
    "def started():\n"
    "    if env('BENCH_GC_FREEZE'):\n"
    "        gc.collect(); gc.freeze()\n"
    "    stats['objects'] = len(gc.get_objects())\n"
    "    stats['frozen'] = gc.get_freeze_count()\n"
    "reactor.callWhenRunning(lambda: reactor.callLater(5, started))\n"
    "sys.argv[0] = 'twistd'\n"
    "from twisted.scripts.twistd import run\n"
    "run()\n"
)
LISTENING = re.compile(r"\[(\w+)\] listening on (\S+) \((\w+) (\S+) port (\d+)\)")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- processes: every one we start, stopped by pid ----------------------------------------


class Processes:
    """The children of this run; ``stop_all`` ends each by its own pid."""

    def __init__(self) -> None:
        self.procs: list[tuple[subprocess.Popen, int]] = []

    def start(self, command: list[str], *, quit_signal: int = signal.SIGTERM, **kwargs: Any) -> subprocess.Popen:
        proc = subprocess.Popen(command, **kwargs)
        self.procs.append((proc, quit_signal))
        return proc

    def stop(self, proc: subprocess.Popen | None, timeout: float = 10.0) -> int | None:
        if proc is None:
            return None
        quit_signal = next((s for p, s in self.procs if p is proc), signal.SIGTERM)
        if proc.poll() is None:
            try:
                proc.send_signal(quit_signal)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass
        self.procs = [(p, s) for p, s in self.procs if p is not proc]
        return proc.returncode

    def stop_all(self) -> None:
        for proc, _ in reversed(list(self.procs)):
            self.stop(proc, timeout=5.0)


# -- /proc ----------------------------------------------------------------------------------


def ticks(pid: int) -> int | None:
    """utime + stime of all the process's threads, in clock ticks."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) in MiB."""
    values = {"VmRSS": 0, "VmHWM": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in values:
                values[name] = int(rest.split()[0])
    except OSError:
        pass
    return {"rss_mib": round(values["VmRSS"] / 1024, 1), "peak_rss_mib": round(values["VmHWM"] / 1024, 1)}


def machine_busy() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs together, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total


def udp_errors() -> dict[str, int]:
    """The machine's UDP receive errors so far (/proc/net/snmp): datagrams dropped on full buffers."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    values = dict(zip(lines[0][1:], (int(v) for v in lines[1][1:])))
    return {"InErrors": values.get("InErrors", 0), "RcvbufErrors": values.get("RcvbufErrors", 0)}


def socket_drops(port: int) -> int | None:
    """Datagrams dropped on the receive buffer of the UDP socket bound to 127.0.0.x:port (/proc/net/udp)."""
    total = None
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            total = (total or 0) + int(fields[-1])
    return total


def wait_quiet(limit_s: float, threshold_pct: float) -> float:
    """Wait (at most ``limit_s``) until the machine uses less than ``threshold_pct``
    of one CPU; returns what it used in the last second (our processes are idle)."""
    deadline = time.monotonic() + limit_s
    while True:
        start = machine_busy()
        time.sleep(1.0)
        end = machine_busy()
        busy = 100 * NCPU * (end[0] - start[0]) / max(1, end[1] - start[1])
        if busy < threshold_pct or time.monotonic() >= deadline:
            return round(busy, 1)


class Sampler(threading.Thread):
    """Samples CPU ticks of named pids, the machine and one pid's RSS, twice a second."""

    def __init__(self, pids: dict[str, int], rss_of: int | None = None, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.rss_of = rss_of
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self._halt = threading.Event()

    def sample(self) -> None:
        entry = {"t": time.monotonic(), "machine": machine_busy(), "ticks": {}}
        for name, pid in self.pids.items():
            entry["ticks"][name] = ticks(pid)
        if self.rss_of is not None:
            entry["rss_mib"] = memory(self.rss_of)["rss_mib"]
        self.samples.append(entry)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        """CPU use (% of one CPU) of each pid, of the machine and of the rest between t0 and t1."""
        inside = [s for s in self.samples if t0 <= s["t"] <= t1]
        if len(inside) < 2:
            inside = self.samples[:1] + self.samples[-1:]
        a, b = inside[0], inside[-1]
        wall = max(1e-6, b["t"] - a["t"])
        out: dict[str, Any] = {"seconds": round(wall, 1)}
        ours = 0.0
        for name in self.pids:
            x, y = a["ticks"].get(name), b["ticks"].get(name)
            # A pid that ended inside the window: its last live sample.
            if y is None:
                y = next((s["ticks"][name] for s in reversed(inside) if s["ticks"].get(name) is not None), x)
            pct = 100 * ((y or 0) - (x or 0)) / CLK_TCK / wall if x is not None else 0.0
            out[f"{name}_cpu_pct"] = round(pct, 1)
            ours += pct
        busy = b["machine"][0] - a["machine"][0]
        total = max(1, b["machine"][1] - a["machine"][1])
        machine = 100 * NCPU * busy / total
        out["machine_cpu_pct"] = round(machine, 1)
        out["other_cpu_pct"] = round(max(0.0, machine - ours), 1)
        rss = [s["rss_mib"] for s in inside if "rss_mib" in s]
        if rss:
            out["rss_mib_max"] = max(rss)
        return out


# -- SIPp ------------------------------------------------------------------------------------


def sipp_version() -> str:
    out = subprocess.run(["sipp", "-v"], check=False, capture_output=True, text=True).stdout
    match = re.search(r"SIPp v\S+", out)
    return match.group(0) if match else out.strip()


def read_stat(path: Path) -> list[dict[str, str]]:
    """SIPp's -trace_stat CSV (``;``-separated, one row per -fd period)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    if len(lines) < 2:
        return []
    header = lines[0].rstrip(";").split(";")
    rows = []
    for line in lines[1:]:
        values = line.rstrip(";").split(";")
        if len(values) >= len(header) - 1:
            rows.append(dict(zip(header, values)))
    return rows


def duration_ms(text: str) -> float:
    """SIPp's HH:MM:SS:micro as milliseconds."""
    try:
        h, m, s, us = (int(x) for x in text.split(":"))
    except ValueError:
        return 0.0
    return round((h * 3600 + m * 60 + s) * 1000 + us / 1000, 1)


def epoch(text: str) -> float:
    return float(text.split("\t")[-1])


def summary_counts(out: str) -> dict[str, int]:
    counts = {}
    for name, key in (("Successful call", "successful"), ("Failed call", "failed"),
                      ("Outgoing calls created", "created")):
        match = re.search(rf"{name}\s+\|\s+\d+\s+\|\s+(\d+)", out)
        if match:
            counts[key] = int(match.group(1))
    return counts


def sipp_uas(procs: Processes, directory: Path, port: int, label: str) -> subprocess.Popen:
    return procs.start(
        ["sipp", "-sf", str(UAS), "-i", VENDOR_IP, "-p", str(port), "-l", "1000000", "-nostdin",
         "-trace_err", "-error_file", str(directory / f"uas-{label}-errors.log")],
        quit_signal=signal.SIGTERM, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def sipp_uac(procs: Processes, directory: Path, target: str, *, calls: int, rate: float, call_ms: int,
             limit: int, stat: Path, errors: Path, timeout_s: int) -> subprocess.Popen:
    return procs.start(
        ["sipp", "-sf", str(UAC), target, "-s", NUMBER, "-i", CUSTOMER_IP, "-p", "0",
         "-m", str(calls), "-r", str(rate), "-d", str(call_ms), "-l", str(limit),
         "-recv_timeout", "20000", "-timeout", str(timeout_s), "-timeout_error",
         # A late 180 after the 200 (Sippy sends from several threads, so its
         # datagrams can overtake each other) is ignored, as a UAC's INVITE
         # transaction would, instead of aborting the call; a missing answer
         # still fails the call (-recv_timeout).
         "-default_behaviors", "all,-abortunexp",
         "-nostdin", "-trace_stat", "-stf", str(stat), "-fd", "1", "-trace_err", "-error_file", str(errors)],
        quit_signal=signal.SIGTERM, cwd=stat.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


# -- the B2BUAs under test ----------------------------------------------------------------------


class Target:
    """A B2BUA listening for SIP on 127.0.0.1:port; ``pid`` is the process to measure."""

    name = "?"
    proc: subprocess.Popen | None = None
    port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def active_calls(self) -> int | None:
        return None

    def drain(self, timeout: float) -> bool:
        """Wait until the calls of the last step are gone (or the process is idle)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t0, c0 = time.monotonic(), ticks(self.pid) or 0
            time.sleep(1.0)
            pct = 100 * ((ticks(self.pid) or 0) - c0) / CLK_TCK / (time.monotonic() - t0)
            if pct < 5:
                return True
        return False


class Direct(Target):
    """No B2BUA: the SIPp UAC calls the UAS itself, the load generator's own ceiling."""

    name = "direct"

    def __init__(self, uas: subprocess.Popen, uas_port: int) -> None:
        self.uas = uas
        self.port = uas_port

    @property
    def address(self) -> str:
        return f"{VENDOR_IP}:{self.port}"

    @property
    def pid(self) -> int | None:  # type: ignore[override]
        return None

    def drain(self, timeout: float) -> bool:
        time.sleep(1.0)
        return True


class Switchd(Target):
    name = "switchd"

    def __init__(self, procs: Processes, directory: Path, database_url: str, experiment=None) -> None:
        self.procs = procs
        experiment = experiment or argparse.Namespace(switch_interval=0.0, gc_stats=False, gc_freeze=False,
                                                      gc_threshold="", gc_disable=False)
        self.experiment = {"BENCH_SWITCH_INTERVAL": str(experiment.switch_interval or ""),
                           "BENCH_GC_LOG": str(directory / "gc.json") if experiment.gc_stats else "",
                           "BENCH_GC_FREEZE": "1" if experiment.gc_freeze else "",
                           "BENCH_GC_THRESHOLD": experiment.gc_threshold or "",
                           "BENCH_GC_DISABLE": "1" if getattr(experiment, "gc_disable", False) else ""}
        self.gc_log = directory / "gc.json" if experiment.gc_stats else None
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = directory / "state"
        self.config = directory / "switchd.ini"
        self.config.write_text("")
        self.log = directory / "switchd.log"
        self.database_url = database_url
        self.env = {
            **os.environ,
            "SWITCHD_SWITCHD_STATE_DIR": str(self.state_dir),
            "SWITCHD_API_LISTEN": "tcp:0:interface=127.0.0.1",
            "SWITCHD_SIP_LISTEN": "udp:0:interface=127.0.0.1",
            "SWITCHD_SIP_FLOOD_RATE": "0",
            "SWITCHD_SIP_RELOAD_SECONDS": "1",
        }
        if database_url:
            self.env["SWITCHD_DATABASE_URL"] = database_url
            self.env["SWITCHD_DATABASE_AUTO_MIGRATE"] = "yes"
        self.api_port = 0

    def start(self, timeout: float = 60.0) -> Switchd:
        twistd_args = ["-n", "--pidfile=", "--logfile=-", "switchd", "-c", str(self.config)]
        command = [str(Path(sys.executable).with_name("twistd")), *twistd_args]
        env = self.env
        if any(self.experiment.values()):
            command = [sys.executable, "-c", DAEMON_WRAPPER, *twistd_args]
            env = {**env, **self.experiment}
        # The log to stdout (a file), as under systemd: twistd's own log file rotates on the reactor.
        with open(self.log, "wb") as out:
            self.proc = self.procs.start(command, cwd=self.dir, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"switchd exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            for match in LISTENING.finditer(self.log.read_text(errors="replace")):
                if match.group(1) == "api":
                    self.api_port = int(match.group(5))
                elif match.group(1) == "sip" and match.group(3).lower() == "udp":
                    self.port = int(match.group(5))
            if self.api_port and self.port:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"switchd did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.procs.stop(self.proc, timeout=30)

    def count_objects(self) -> None:
        """Ask the wrapper (--gc-stats) to count the objects the collector tracks now."""
        if self.gc_log is not None:
            Path(str(self.gc_log) + ".count").touch()

    def garbage_census(self, timeout: float = 60.0) -> dict[str, Any] | None:
        """What a full collection finds unreachable now (--gc-stats): a count and the commonest types."""
        if self.gc_log is None:
            return None
        request = Path(str(self.gc_log) + ".garbage")
        request.touch()
        deadline = time.monotonic() + timeout
        while request.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1.5)  # the next dump
        return (self.gc() or {}).get("garbage")

    def gc(self) -> dict[str, Any] | None:
        """Garbage collections so far (with --gc-stats): per generation, count, seconds and longest."""
        if self.gc_log is None:
            return None
        try:
            return json.loads(self.gc_log.read_text())
        except (OSError, ValueError):
            return None

    # -- the API --

    def api(self, method: str, path: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
        key = (self.state_dir / "admin-api-key").read_text().strip()
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", data=data, method=method)
        request.add_header("Authorization", f"Bearer {key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def post(self, path: str, body: Any) -> dict:
        status, answer = self.api("POST", path, body)
        if status != 201:
            raise RuntimeError(f"POST {path}: {status} {answer}")
        return answer

    def provision(self, vendor_port: int) -> None:
        """The network of tests/interop/test_calls.py, with money for every call of the run."""
        customer = self.post("/v1/customers", {"name": "bench customer"})
        account = self.post("/v1/accounts", {"customer_id": customer["id"], "currency": "EUR"})
        plan = self.post("/v1/tariff-plans", {"name": "bench", "currency": "EUR"})
        self.post("/v1/rates", {"tariff_plan_id": plan["id"], "prefix": "44", "price_per_minute": "0.001000",
                                "connection_fee": "0.000000", "increment_first": 1, "increment_next": 1})
        group = self.post("/v1/routing-groups", {"name": "bench"})
        service = self.post("/v1/services", {"account_id": account["id"], "type": "sip_telephony",
                                             "tariff_plan_id": plan["id"], "routing_group_id": group["id"]})
        inbound = self.post("/v1/trunks", {"name": "customer-in", "host": CUSTOMER_IP, "port": 5060})
        self.post("/v1/connections/sip", {"service_id": service["id"], "trunk_id": inbound["id"], "auth_type": "ip"})
        vendor = self.post("/v1/trunks", {"name": "vendor", "host": VENDOR_IP, "port": vendor_port})
        self.post("/v1/connections/sip", {"service_id": service["id"], "trunk_id": vendor["id"], "auth_type": "ip"})
        self.post("/v1/routing-group-members", {"routing_group_id": group["id"], "trunk_id": vendor["id"],
                                                "priority": 10})
        self.post(f"/v1/accounts/{account['id']}/transactions", {"kind": "topup", "amount": "1000000"})
        time.sleep(1.5)  # the trunks are re-read every second (SWITCHD_SIP_RELOAD_SECONDS=1)

    def active_calls(self) -> int | None:
        status, answer = self.api("GET", "/v1/calls")
        return len(answer["items"]) if status == 200 else None

    def drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.active_calls() == 0:
                return True
            time.sleep(0.5)
        return False

    def cdr_check(self) -> dict[str, Any]:
        """CDRs and active-call rows straight from the database (read only)."""
        from sqlalchemy import create_engine, text

        url = self.database_url or f"sqlite:///{self.state_dir / 'switchd.sqlite3'}"
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg2://" + url[len("postgresql://"):]
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                by_code = dict(conn.execute(text("SELECT sip_code, count(*) FROM cdrs GROUP BY sip_code")).all())
                answered = conn.execute(text("SELECT count(*) FROM cdrs WHERE answer_time IS NOT NULL")).scalar()
                active = conn.execute(text("SELECT count(*) FROM active_calls")).scalar()
        finally:
            engine.dispose()
        return {"cdrs": sum(by_code.values()), "answered": answered,
                "by_sip_code": {str(k): v for k, v in by_code.items()}, "active_calls_rows": active}


class Sippy(Target):
    name = "sippy"

    def __init__(self, procs: Processes, directory: Path, python: str, keep_log: bool) -> None:
        self.procs = procs
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.keep_log = keep_log

    def version(self) -> str:
        return subprocess.run(
            [self.python, "-c", "import importlib.metadata as m; print(m.version('sippy'))"],
            check=False, capture_output=True, text=True,
        ).stdout.strip()

    def start(self, vendor_port: int) -> Sippy:
        self.port = free_port()
        env = {**os.environ, "SIPLOG_BEND": "stderr" if self.keep_log else "none"}
        # b2bua_radius with a static route, RADIUS auth (-u) and accounting (-A 0) off, in the foreground.
        command = [self.python, "-m", "sippy.b2bua", "-f", "-u", "-A", "0", "-l", "127.0.0.1", "-p", str(self.port),
                   "-s", f"{VENDOR_IP}:{vendor_port}", "-c", str(self.dir / "b2bua.sock"),
                   "-L", str(self.dir / "b2bua.log"), "-P", str(self.dir / "b2bua.pid")]
        with open(self.dir / "sippy.out", "wb") as out:
            self.proc = self.procs.start(command, cwd=self.dir, env=env, stdout=out, stderr=subprocess.STDOUT)
        time.sleep(2.0)
        if self.proc.poll() is not None:
            raise RuntimeError(f"sippy exited with {self.proc.returncode}: "
                               f"{(self.dir / 'sippy.out').read_text(errors='replace')[-3000:]}")
        self.command = command
        return self

    def stop(self) -> None:
        # Sippy ignores SIGTERM while its loop runs: give it 3 s, then SIGKILL (by pid).
        self.procs.stop(self.proc, timeout=3)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_sippy(python: str, install: bool) -> str | None:
    """The interpreter with sippy importable, or None (with why on stdout)."""
    if Path(python).exists():
        ok = subprocess.run([python, "-c", "import sippy.b2bua"], check=False, capture_output=True, text=True)
        if ok.returncode == 0:
            return python
        log(f"sippy not importable with {python}: {ok.stderr.strip()[-500:]}")
    if not install:
        log("Sippy B2BUA not available: use --install-sippy or --sippy-python")
        return None
    venv = Path(python).parent.parent
    log(f"installing sippy into {venv}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "sippy"], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        log(f"pip install sippy failed: {done.stdout[-1500:]}{done.stderr[-1500:]}")
        return None
    return str(venv / "bin" / "python")


# -- one step of the ladder ----------------------------------------------------------------------


def run_step(procs: Processes, target: Target, uas: subprocess.Popen, directory: Path, rate: int, args,
             label: str, profile: Path | None = None) -> dict[str, Any]:
    calls = int(rate * args.seconds)
    call_s = args.call_ms / 1000
    stat = directory / f"{label}.csv"
    errors = directory / f"{label}-errors.log"
    for path in (stat, errors):
        path.unlink(missing_ok=True)
    background = wait_quiet(args.wait_quiet, args.quiet_pct)
    limit = max(200, int(rate * (call_s + 10) * 2))
    timeout_s = int(args.seconds * 3 + call_s + 60)
    udp_before = udp_errors()
    own_before = socket_drops(target.port)
    gc_before = target.gc() if isinstance(target, Switchd) else None
    started = time.monotonic()
    uac = sipp_uac(procs, directory, target.address, calls=calls, rate=rate, call_ms=args.call_ms, limit=limit,
                   stat=stat, errors=errors, timeout_s=timeout_s)
    pids = {"b2bua": target.pid, "uac": uac.pid, "uas": uas.pid}
    sampler = Sampler({k: v for k, v in pids.items() if v is not None}, rss_of=target.pid)
    sampler.start()
    counter = None
    if isinstance(target, Switchd) and target.gc_log is not None:
        counter = threading.Timer(max(1.0, args.seconds - 1.5), target.count_objects)  # in the steady part
        counter.start()
    spy = None
    if profile is not None:
        spy = procs.start(
            ["py-spy", "record", "--pid", str(target.pid), "--duration", str(max(1, int(args.seconds) - 2)),
             "--rate", "200", "--gil", "--nonblocking", "--format", "raw", "--output", str(profile)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
    try:
        out, _ = uac.communicate(timeout=timeout_s + 30)
    except subprocess.TimeoutExpired:
        procs.stop(uac)
        out = ""
    procs.stop(uac)
    (directory / f"{label}.out").write_text(out or "")
    sampler.stop()
    if spy is not None:
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        procs.stop(spy)
    elapsed = time.monotonic() - started
    udp_after = udp_errors()
    own_after = socket_drops(target.port)
    # The steady part: calls both starting and ending at the full rate.
    steady = sampler.window(started + call_s + 1.5, started + args.seconds)
    whole = sampler.window(started, started + elapsed)
    rows = read_stat(stat)
    counts = summary_counts(out)
    last = rows[-1] if rows else {}
    successful = counts.get("successful", int(last.get("SuccessfulCall(C)", 0) or 0))
    created = counts.get("created", int(last.get("OutgoingCall(C)", 0) or 0))
    failed = max(calls - successful, counts.get("failed", 0))  # a call never placed counts as failed
    achieved = 0.0
    for row in rows:  # the cumulative rate just before the last call was created
        if int(row.get("OutgoingCall(C)", 0) or 0) >= calls:
            break
        achieved = float(row.get("CallRate(C)", 0) or 0)
    if not achieved and rows:
        achieved = float(last.get("CallRate(C)", 0) or 0)
    repartition = {k.split("_", 1)[1]: int(v or 0) for k, v in last.items() if k.startswith("ResponseTimeRepartition1_")}
    answered = sum(repartition.values()) or 1
    slow = sum(v for k, v in repartition.items() if k in (">=1000", "<1000", "<500")) if repartition else 0
    if counter is not None:
        counter.cancel()
    gc_after = target.gc() if isinstance(target, Switchd) else None
    drained = target.drain(timeout=60)
    fail_pct = round(100 * failed / max(1, calls), 3)
    b2bua_cpu = steady.get("b2bua_cpu_pct", 0.0) if target.pid else 0.0
    result = {
        "target": target.name,
        "label": label,
        "rate": rate,
        "calls": calls,
        "created": created,
        "successful": successful,
        "failed": failed,
        "failed_pct": fail_pct,
        "achieved_cps": round(achieved, 1),
        "elapsed_s": round(elapsed, 1),
        "sipp_exit": uac.returncode,
        "invite_to_200_ms_mean": duration_ms(last.get("ResponseTime1(C)", "")),
        "bye_to_200_ms_mean": duration_ms(last.get("ResponseTime2(C)", "")),
        "invite_to_200_over_200ms_pct": round(100 * slow / answered, 2),
        "invite_to_200_repartition": repartition,
        "retransmissions": int(last.get("Retransmissions(C)", 0) or 0),
        "udp_receive_buffer_drops": udp_after["RcvbufErrors"] - udp_before["RcvbufErrors"],  # machine-wide
        # ... of which on the socket the target listens on (the UAS's own for "direct")
        "udp_drops_at_target": (own_after - own_before) if own_before is not None and own_after is not None else None,
        "steady": steady,
        "whole": whole,
        "b2bua_cpu_pct": b2bua_cpu,
        "b2bua_cpu_ms_per_call": round(10 * b2bua_cpu / rate, 2),  # pct of a CPU / calls per s, in ms
        "memory": memory(target.pid) if target.pid else {"rss_mib": 0.0, "peak_rss_mib": 0.0},
        "background_before_pct": background,
        "drained": drained,
    }
    result["sustained"] = fail_pct <= TARGET_FAIL_PCT and achieved >= 0.95 * rate
    if gc_before and gc_after:
        result["gc"] = gc_delta(gc_before, gc_after, elapsed)
    if spy is not None:
        result["profile"] = {"file": str(profile), **profile_summary(profile)}
    return result


def gc_delta(before: dict, after: dict, seconds: float) -> dict[str, Any]:
    """Collections during a step: per generation, count, % of the wall time, longest pause (ms);
    the longest pause is the daemon's so far, not only this step's."""
    out = {}
    for g in ("0", "1", "2"):
        a, b = before[g], after[g]
        out["tracked_objects_at_start"] = after.get("objects")
        out["tracked_objects_in_steady_state"] = after.get("objects_now")
        out[f"gen{g}"] = {"count": b["count"] - a["count"],
                          "time_pct": round(100 * (b["seconds"] - a["seconds"]) / max(seconds, 1e-6), 2),
                          "max_pause_ms_so_far": round(1000 * b["max"], 1)}
    return out


def step_line(r: dict[str, Any]) -> str:
    s = r["steady"]
    return (f"{r['target']:<10} {r['rate']:>5} {r['achieved_cps']:>8} {r['calls']:>7} {r['successful']:>7} "
            f"{r['failed']:>6} {r['failed_pct']:>7.3f} {r['b2bua_cpu_pct']:>6} {r['b2bua_cpu_ms_per_call']:>7} "
            f"{s.get('uac_cpu_pct', 0):>5} {s.get('uas_cpu_pct', 0):>5} {s.get('other_cpu_pct', 0):>6} "
            f"{r['memory']['rss_mib']:>7} {r['invite_to_200_ms_mean']:>7} {r['retransmissions']:>7} "
            f"{r.get('udp_receive_buffer_drops', 0):>6} {gc_pct(r):>5} {'yes' if r['sustained'] else 'NO':>4}")


def gc_pct(r: dict[str, Any]) -> str:
    """% of the step's wall time switchd spent collecting garbage (all generations; --gc-stats)."""
    gc = r.get("gc")
    if not gc:
        return "-"
    return f"{sum(gc[f'gen{g}']['time_pct'] for g in (0, 1, 2)):.1f}"


STEP_HEADER = (f"{'target':<10} {'rate':>5} {'got/s':>8} {'calls':>7} {'ok':>7} {'failed':>6} {'fail%':>7} "
               f"{'cpu%':>6} {'ms/call':>7} {'uac%':>5} {'uas%':>5} {'other%':>6} {'rss MiB':>7} "
               f"{'inv ms':>7} {'retrans':>7} {'drops':>6} {'gc%':>5} {'sust':>4}")


def measured_step(procs, target, uas, directory, rate, args, label, profile=None) -> list[dict[str, Any]]:
    """One step, repeated when it fell short while someone else kept the machine busy."""
    attempts = []
    for attempt in range(args.retries + 1):
        r = run_step(procs, target, uas, directory, rate, args, f"{label}-{attempt}", profile)
        r["attempt"] = attempt
        attempts.append(r)
        log(step_line(r))
        if r["sustained"] or r["steady"].get("other_cpu_pct", 0) <= args.noisy or attempt == args.retries:
            break
        log(f"  {target.name} at {rate}/s fell short while other work used "
            f"{r['steady'].get('other_cpu_pct')}% of a CPU: repeating")
    return attempts


def best(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    return min(attempts, key=lambda r: (not r["sustained"], r["failed"]))


# -- concurrency --------------------------------------------------------------------------------------


def concurrency(procs: Processes, target: Switchd, uas: subprocess.Popen, directory: Path, args) -> dict[str, Any]:
    n, ramp = args.concurrent, args.ramp_rate
    ramp_s = n / ramp
    hold_ms = int((ramp_s + args.hold) * 1000)
    stat = directory / "concurrency.csv"
    errors = directory / "concurrency-errors.log"
    background = wait_quiet(args.wait_quiet, args.quiet_pct)
    idle = memory(target.pid)
    gc_before = target.gc()
    timeout_s = int(2 * ramp_s + args.hold + 90)
    started = time.monotonic()
    uac = sipp_uac(procs, directory, target.address, calls=n, rate=ramp, call_ms=hold_ms, limit=n + 1000,
                   stat=stat, errors=errors, timeout_s=timeout_s)
    sampler = Sampler({"b2bua": target.pid, "uac": uac.pid, "uas": uas.pid}, rss_of=target.pid)
    sampler.start()
    trace: list[dict[str, Any]] = []  # (seconds, SIPp's current calls, RSS)
    peak: dict[str, Any] = {}
    ramp_end = hold_end = None
    deadline = started + timeout_s + 30
    while uac.poll() is None and time.monotonic() < deadline:
        time.sleep(1.0)
        rows = read_stat(stat)
        if not rows:
            continue
        row = rows[-1]
        now = time.monotonic()
        point = {"t": round(now - started, 1), "current": int(row.get("CurrentCall", 0) or 0),
                 "created": int(row.get("OutgoingCall(C)", 0) or 0),
                 "successful": int(row.get("SuccessfulCall(C)", 0) or 0),
                 "failed": int(row.get("FailedCall(C)", 0) or 0), **memory(target.pid)}
        trace.append(point)
        if not peak and point["created"] >= n and point["current"] >= n - point["failed"]:
            ramp_end = now
            settle = time.monotonic() + 15  # the last answers: until switchd lists every call SIPp has up
            while True:
                time.sleep(1.0)
                t0 = time.monotonic()
                listed = target.active_calls()
                api_s = time.monotonic() - t0
                latest = read_stat(stat)
                expected = int(latest[-1].get("CurrentCall", 0) or 0) if latest else point["current"]
                if (listed or 0) >= expected or time.monotonic() >= settle:
                    break
            target.count_objects()
            peak = {"t": round(time.monotonic() - started, 1), "sipp_current": point["current"],
                    "switchd_active_calls": listed, "get_calls_seconds": round(api_s, 2), **memory(target.pid)}
            log(f"  peak: SIPp {point['current']} calls up, switchd lists {listed} "
                f"(GET /v1/calls took {api_s:.2f} s), RSS {peak['rss_mib']} MiB")
            hold_end = started + ramp_s + args.hold
    try:
        out, _ = uac.communicate(timeout=max(5, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        out = ""
    procs.stop(uac)
    (directory / "concurrency.out").write_text(out or "")
    sampler.stop()
    drained = target.drain(timeout=90)
    after = memory(target.pid)
    gc_after = target.gc()
    counts = summary_counts(out)
    ramp_points = [p for p in trace if p["created"] < n and p["current"] > 0]
    slope = None
    if len(ramp_points) >= 5:
        xs = [p["current"] for p in ramp_points]
        ys = [p["rss_mib"] for p in ramp_points]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        if var:
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var * 1000
    up = (peak.get("switchd_active_calls") or peak.get("sipp_current") or 0)
    result = {
        "target": target.name,
        "concurrent": n,
        "ramp_rate": ramp,
        "hold_s": args.hold,
        "call_ms": hold_ms,
        "successful": counts.get("successful"),
        "failed": counts.get("failed"),
        "sipp_exit": uac.returncode,
        "idle": idle,
        "peak": peak,
        "after": after,
        "rss_per_1000_calls_mib": round((peak.get("rss_mib", 0) - idle["rss_mib"]) / max(1, up) * 1000, 2) if peak else None,
        "rss_slope_per_1000_calls_mib": round(slope, 2) if slope is not None else None,
        "ramp": sampler.window(started + 2, (ramp_end or started + ramp_s) - 1),
        "hold": sampler.window((ramp_end or started + ramp_s) + 3, (hold_end or started + ramp_s + args.hold) - 1),
        "background_before_pct": background,
        "drained": drained,
        "gc": gc_delta(gc_before, gc_after, time.monotonic() - started) if gc_before and gc_after else None,
        "trace": trace,
    }
    result["met"] = bool(peak) and up >= TARGET_CONCURRENT and peak.get("peak_rss_mib", 1e9) < TARGET_MEMORY_MIB \
        and (counts.get("failed") or 0) == 0
    return result


def garbage_per_call(procs: Processes, uas: subprocess.Popen, uas_port: int, directory: Path, args) -> dict[str, Any]:
    """Reference cycles per call: switchd with its collector off (and T1 = 100 ms, so that
    finished transactions go within 7 s) places ``--gc-garbage`` calls; then one full
    collection with DEBUG_SAVEALL counts what only the collector could free."""
    experiment = argparse.Namespace(**{**vars(args), "gc_stats": True, "gc_disable": True})
    daemon = Switchd(procs, directory / "switchd-garbage", args.database_url, experiment)
    daemon.env["SWITCHD_SIP_T1_MS"] = "100"
    daemon.start()
    daemon.provision(uas_port)
    calls = args.gc_garbage
    step = argparse.Namespace(**{**vars(args), "seconds": calls / 50, "call_ms": 500, "wait_quiet": 0})
    before = daemon.garbage_census()  # what start-up left
    r = run_step(procs, daemon, uas, directory, 50, step, "garbage")
    time.sleep(8)  # Timer L, J, K, I with T1 = 100 ms
    census = daemon.garbage_census()
    daemon.stop()
    found = (census or {}).get("objects", 0)
    log(f"cyclic garbage: {found} objects after {r['successful']} calls "
        f"({found / max(1, r['successful']):.0f} per call); commonest: {(census or {}).get('types', [])[:8]}")
    return {"calls": calls, "successful": r["successful"], "after_start": before, "after_calls": census,
            "objects_per_call": round(found / max(1, r["successful"]), 1)}


# -- py-spy --------------------------------------------------------------------------------------------


IDLE_FRAMES = ("Condition.wait (threading.py", "EPollReactor.doPoll (twisted/internet/epollreactor.py", "wait (threading.py")


def profile_summary(path: Path, count: int = 25) -> dict[str, Any]:
    """Busiest functions of a py-spy raw profile: innermost (self) and anywhere on the stack (inclusive)."""
    if not path.exists():
        return {"error": "no profile written (py-spy missing or no ptrace rights?)"}
    busy = 0
    self_counts: Counter = Counter()
    incl: Counter = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        if len(frames) < 2 or frames[-1].startswith(IDLE_FRAMES):
            continue
        k = int(n)
        busy += k
        self_counts[frames[-1]] += k
        for f in set(frames[1:]):
            incl[f] += k
    def top(c: Counter) -> list[tuple[str, float]]:
        return [(name, round(100 * k / max(1, busy), 1)) for name, k in c.most_common(count)]
    return {"busy_samples": busy, "top_self": top(self_counts), "top_inclusive": top(incl)}


# -- the run ------------------------------------------------------------------------------------------


def versions(sippy_version: str | None) -> dict[str, Any]:
    def git(*a):
        return subprocess.run(["git", *a], check=False, cwd=ROOT, capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import twisted
    return {"python": platform.python_version(), "twisted": twisted.__version__, "sipp": sipp_version(),
            "sippy": sippy_version, "commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain")),
            "cpu": cpu, "cpus": NCPU, "kernel": platform.release()}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="150,200,250,300,350,400", help="calls per second of the ladder")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of new calls per step")
    p.add_argument("--call-ms", type=int, default=1500, help="talk time of each ladder call")
    p.add_argument("--direct-rates", default="500",
                   help="rates at which SIPp also calls the UAS directly, without a B2BUA ('' for none)")
    p.add_argument("--retries", type=int, default=1, help="repeats of a step that fell short on a busy machine")
    p.add_argument("--noisy", type=float, default=30.0,
                   help="%% of one CPU used by others above which a failed step is repeated")
    p.add_argument("--wait-quiet", type=float, default=15.0, help="seconds to wait for a quiet machine before a step")
    p.add_argument("--quiet-pct", type=float, default=20.0, help="quiet means under this %% of one CPU")
    p.add_argument("--stop-after", type=int, default=2, help="stop a target's ladder after this many failed steps")
    p.add_argument("--database-url", default="", help="PostgreSQL URL of a throw-away database (default: SQLite)")
    p.add_argument("--no-sippy", action="store_true", help="skip Sippy B2BUA")
    p.add_argument("--sippy-python", default="/tmp/sippy-venv/bin/python")
    p.add_argument("--install-sippy", action="store_true", help="create the venv of --sippy-python and pip install sippy")
    p.add_argument("--sippy-log", action="store_true", help="let Sippy log every message (to a file)")
    p.add_argument("--no-concurrency", action="store_true")
    p.add_argument("--concurrent", type=int, default=TARGET_CONCURRENT)
    p.add_argument("--ramp-rate", type=int, default=200, help="calls per second while the concurrency test ramps up")
    p.add_argument("--hold", type=float, default=15.0, help="seconds all calls stay up")
    p.add_argument("--py-spy", action="store_true", help="profile switchd in one more step at --profile-rate")
    p.add_argument("--profile-rate", type=int, default=0, help="default: the highest rate of the ladder")
    p.add_argument("--switch-interval", type=float, default=0.0,
                   help="experiment: start switchd with sys.setswitchinterval(S) (default: Python's 0.005)")
    p.add_argument("--gc-stats", action="store_true",
                   help="time switchd's garbage collections (through a wrapper) and report them per step")
    p.add_argument("--gc-freeze", action="store_true",
                   help="experiment: gc.collect() and gc.freeze() in switchd 5 s after it starts")
    p.add_argument("--gc-threshold", default="",
                   help="experiment: gc.set_threshold(...) in switchd, e.g. 50000,20,100")
    p.add_argument("--gc-garbage", type=int, default=0, metavar="CALLS",
                   help="experiment: count the objects per call only the garbage collector can free")
    p.add_argument("--variant-gc", default="", metavar="THRESHOLDS",
                   help="experiment: also run the ladder against a second switchd with gc.freeze() and "
                        "gc.set_threshold(THRESHOLDS), e.g. 20000,20,20")
    p.add_argument("--keep-logs", action="store_true")
    p.add_argument("--output", default="")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by SIPp and the B2BUAs
    if shutil.which("sipp") is None:
        print("sipp not found (Debian: apt-get install sip-tester)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="switchd-b2bua-bench-"))
    procs = Processes()

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    results: dict[str, Any] = {"started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                               "settings": {k: v for k, v in vars(args).items()}, "ladder": [], "attempts": []}
    sippy_python = None if args.no_sippy else ensure_sippy(args.sippy_python, args.install_sippy)
    sippy_version = None
    try:
        uas_port = free_port()
        uas = sipp_uas(procs, tmp, uas_port, "ladder")
        switchd = Switchd(procs, tmp / "switchd", args.database_url, args).start()
        switchd.provision(uas_port)
        log(f"switchd pid {switchd.pid} on {switchd.address}, UAS pid {uas.pid} on {VENDOR_IP}:{uas_port}, in {tmp}")
        targets: list[Target] = [switchd]
        if args.variant_gc:
            # The same switchd with the collector tuned: what the GC proposals would buy.
            variant = Switchd(procs, tmp / "switchd-gc", args.database_url, argparse.Namespace(
                **{**vars(args), "gc_freeze": True, "gc_threshold": args.variant_gc}))
            variant.name = "switchd-gc"
            variant.start()
            variant.provision(uas_port)
            targets.append(variant)
            log(f"switchd-gc (gc.freeze(), gc.set_threshold({args.variant_gc})) pid {variant.pid} on {variant.address}")
        if sippy_python:
            sippy = Sippy(procs, tmp / "sippy", sippy_python, args.sippy_log)
            sippy_version = sippy.version()
            sippy.start(uas_port)
            targets.append(sippy)
            log(f"sippy {sippy_version} pid {sippy.pid} on {sippy.address}")
            results["sippy_command"] = sippy.command
        results["versions"] = versions(sippy_version)
        # A smoke test of each: 20 calls must get through.
        for target in targets:
            check = run_step(procs, target, uas, tmp, 10, argparse.Namespace(**{**vars(args), "seconds": 2.0,
                             "call_ms": 200, "wait_quiet": 0}), f"smoke-{target.name}")
            results.setdefault("smoke", []).append(check)
            if check["successful"] != check["calls"]:
                errors = "".join(p.read_text(errors="replace")[-2000:] for p in tmp.glob(f"smoke-{target.name}*errors.log"))
                raise RuntimeError(f"{target.name} fails the smoke test: {check}\n{errors}")
        log(STEP_HEADER)
        failures = {t.name: 0 for t in targets}
        for rate in rates:
            for target in targets:
                if failures[target.name] >= args.stop_after:
                    continue
                attempts = measured_step(procs, target, uas, tmp, rate, args, f"{target.name}-{rate}")
                results["attempts"] += attempts
                chosen = best(attempts)
                results["ladder"].append(chosen)
                failures[target.name] = 0 if chosen["sustained"] else failures[target.name] + 1
        direct = Direct(uas, uas_port)
        for rate in (int(r) for r in args.direct_rates.split(",") if r.strip()):
            attempts = measured_step(procs, direct, uas, tmp, rate, args, f"direct-{rate}")
            results["attempts"] += attempts
            results["ladder"].append(best(attempts))
        if args.py_spy and shutil.which("py-spy"):
            rate = args.profile_rate or max(rates)
            profile = RESULTS / f"b2bua-profile-{rate}-{int(time.time())}.txt"
            profile.parent.mkdir(parents=True, exist_ok=True)
            log(f"profiling switchd at {rate}/s")
            r = run_step(procs, switchd, uas, tmp, rate, args, f"profile-{rate}", profile)
            log(step_line(r))
            results["profile"] = r
        elif args.py_spy:
            log("py-spy not found (pip install py-spy)")
        placed = results["attempts"] + results["smoke"] + ([results["profile"]] if "profile" in results else [])
        results["cdr_check"] = {"placed": sum(r["created"] for r in placed if r["target"] == "switchd"),
                                "successful": sum(r["successful"] for r in placed if r["target"] == "switchd"),
                                **switchd.cdr_check()}
        log(f"CDR check: {results['cdr_check']}")
        results["switchd_log_bytes"] = switchd.log.stat().st_size
        for target in targets:
            target.stop()
        if args.gc_garbage:
            results["gc_garbage"] = garbage_per_call(procs, uas, uas_port, tmp, args)
        if not args.no_concurrency:
            switchd2 = Switchd(procs, tmp / "switchd-concurrency", args.database_url, args)
            if args.database_url:
                log("note: the concurrency test reuses the PostgreSQL database (a second provisioning)")
            switchd2.start()
            switchd2.provision(uas_port)
            log(f"concurrency: {args.concurrent} calls at {args.ramp_rate}/s, held {args.hold} s "
                f"(switchd pid {switchd2.pid}, idle RSS {memory(switchd2.pid)['rss_mib']} MiB)")
            results["concurrency"] = concurrency(procs, switchd2, uas, tmp, args)
            results["concurrency"]["cdr_check"] = switchd2.cdr_check()
            switchd2.stop()
    except KeyboardInterrupt:
        log("interrupted")
        results["interrupted"] = True
    finally:
        procs.stop_all()
        if not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"logs kept in {tmp}")
    report(results, rates)
    out = Path(args.output) if args.output else RESULTS / f"b2bua-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    log(f"results in {out}")
    return 0 if results.get("targets_met") else 1


def report(results: dict[str, Any], rates: list[int]) -> None:
    ladder = results.get("ladder", [])
    print()
    print("Rate ladder (cpu%, uac%, uas%, other%: % of one CPU over the steady part of each step; "
          "ms/call: B2BUA CPU per call; inv ms: mean INVITE-to-200 through the B2BUA; retrans: SIPp's "
          "retransmissions; drops: UDP datagrams the machine dropped on full receive buffers; gc%: "
          "switchd's wall time in garbage collection)")
    print(STEP_HEADER)
    for r in ladder:
        print(step_line(r))
    summary: dict[str, Any] = {}
    for name in ("switchd", "switchd-gc", "sippy", "direct"):
        rows = [r for r in ladder if r["target"] == name]
        if not rows:
            continue
        sustained = [r["rate"] for r in rows if r["sustained"]]
        zero = [r["rate"] for r in rows if r["sustained"] and r["failed"] == 0]
        summary[name] = {"highest_sustained_cps": max(sustained, default=0),
                         "highest_zero_failure_cps": max(zero, default=0),
                         "highest_tried_cps": max(r["rate"] for r in rows)}
    if "switchd" in summary and "sippy" in summary:
        s, p = summary["switchd"]["highest_sustained_cps"], summary["sippy"]["highest_sustained_cps"]
        summary["ratio_switchd_over_sippy"] = round(s / p, 2) if p else None
        if "switchd-gc" in summary:
            g = summary["switchd-gc"]["highest_sustained_cps"]
            summary["ratio_switchd_gc_over_sippy"] = round(g / p, 2) if p else None
    print()
    for name, values in summary.items():
        print(f"{name}: {values}")
    c = results.get("concurrency")
    if c:
        peak = c.get("peak", {})
        print(f"\nConcurrency: {peak.get('sipp_current')} calls up (switchd lists {peak.get('switchd_active_calls')}; "
              f"GET /v1/calls {peak.get('get_calls_seconds')} s), RSS idle {c['idle']['rss_mib']} MiB, "
              f"at peak {peak.get('rss_mib')} MiB (peak RSS {peak.get('peak_rss_mib')} MiB), after "
              f"{c['after']['rss_mib']} MiB; {c['rss_per_1000_calls_mib']} MiB per 1,000 calls "
              f"(slope {c['rss_slope_per_1000_calls_mib']}); failed {c['failed']}; CPU ramping "
              f"{c['ramp'].get('b2bua_cpu_pct')}%, holding {c['hold'].get('b2bua_cpu_pct')}%")
    prof = results.get("profile", {}).get("profile")
    if prof and "top_self" in prof:
        print("\nswitchd profile (share of the GIL-holding thread's busy samples), self:")
        for name, pct in prof["top_self"][:15]:
            print(f"  {pct:5.1f}%  {name}")
        print("inclusive:")
        for name, pct in prof["top_inclusive"][:25]:
            print(f"  {pct:5.1f}%  {name}")
    met = summary.get("switchd", {}).get("highest_sustained_cps", 0) >= TARGET_CPS and (not c or c.get("met"))
    summary["targets"] = {"cps": TARGET_CPS, "failed_pct": TARGET_FAIL_PCT, "concurrent": TARGET_CONCURRENT,
                          "memory_mib": TARGET_MEMORY_MIB}
    results["summary"] = summary
    results["targets_met"] = bool(met) and not results.get("interrupted")
    print(f"\ntargets met: {results['targets_met']}")


if __name__ == "__main__":
    raise SystemExit(main())
