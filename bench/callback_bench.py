"""Callbacks through switchd, asked over IIF (UDP) or click-to-dial (HTTP), answered by SIPp.

switchd (``twistd -n switchd``, SQLite in a temporary state directory) is
provisioned through the API: a prepaid account with a large balance, a rate
for 44, a routing group whose member for 44207 is a SIPp UAS on 127.0.0.3
that answers and waits (user1) and whose member for 44208 is a SIPp UAS on
127.0.0.4 that answers and hangs up after ``--talk-ms`` (user2). This process
is the application server: for each rate of ``--rates`` it sends ``rate *
--seconds`` REQUESTs paced evenly, each with its own id, and records

* the REQUEST-to-ACK time of every request (p50, p99, max),
* ACK ``code=fail``, missing ACKs, and RESPONSEs with ``real_duration=0`` or
  none at all within ``--talk-ms`` + 30 s (each a failed callback),
* switchd's CPU over the step.

A callback is two calls, so ``rate`` callbacks per second put ``2 * rate``
calls per second through the originator and ``rate`` relay sessions per
second. A step is *sustained* when no callback failed. Run from the repository
root (needs ``sipp``)::

    python bench/callback_bench.py --rates 10,25,50,100,150 --seconds 10

With ``--http`` the requests are click-to-dial creates (``POST /v1/callbacks`` with
the admin key) and the "ACK" columns are the time to the ``201``; a callback counts
as failed unless ``GET /v1/callbacks/{id}`` later says ``completed`` with talk time.
It prints a table and writes JSON to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import b2bua_bench as common

SCENARIOS = Path(__file__).resolve().parent.parent / "tests" / "interop" / "scenarios"
RESULTS = Path(__file__).resolve().parent / "results"


class Switchd(common.Switchd):
    """switchd with the IIF interface open to this process."""

    def __init__(self, procs, directory: Path, experiment=None) -> None:
        super().__init__(procs, directory, "", experiment)
        self.env.update({
            "SWITCHD_IIF_LISTEN": "127.0.0.1:0",
            "SWITCHD_IIF_PEERS": "127.0.0.1:0",
            "SWITCHD_IIF_SERVICE_ID": "1",
            "SWITCHD_IIF_DEFAULT_CALLER": "442000000",
            "SWITCHD_SMPP_LISTEN": "",
            "SWITCHD_MEDIA_PORT_MIN": "30000",
            "SWITCHD_MEDIA_PORT_MAX": "39999",
        })
        self.iif_port = 0

    def start(self, timeout: float = 60.0):
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.iif_port:
            for match in common.LISTENING.finditer(self.log.read_text(errors="replace")):
                if match.group(1) == "iif":
                    self.iif_port = int(match.group(5))
            time.sleep(0.05)
        if not self.iif_port:
            raise RuntimeError("switchd did not open IIF")
        return self


def provision(switchd: Switchd, uas_ports: tuple[int, int]) -> None:
    def post(path, body):
        status, answer = switchd.api("POST", path, body)
        if status != 201:
            raise RuntimeError(f"POST {path}: {status} {answer}")
        return answer

    customer = post("/v1/customers", {"name": "bench"})
    account = post("/v1/accounts", {"customer_id": customer["id"], "currency": "EUR"})
    plan = post("/v1/tariff-plans", {"name": "bench", "currency": "EUR"})
    post("/v1/rates", {"tariff_plan_id": plan["id"], "prefix": "44", "price_per_minute": "0.010000",
                       "increment_first": 1, "increment_next": 1})
    group = post("/v1/routing-groups", {"name": "bench"})
    service = post("/v1/services", {"account_id": account["id"], "type": "api", "tariff_plan_id": plan["id"],
                                    "routing_group_id": group["id"]})
    assert service["id"] == 1
    post(f"/v1/accounts/{account['id']}/transactions", {"kind": "topup", "amount": "1000000"})
    for name, host, port, prefix in (("user1", "127.0.0.3", uas_ports[0], "44207"),
                                     ("user2", "127.0.0.4", uas_ports[1], "44208")):
        trunk = post("/v1/trunks", {"name": name, "host": host, "port": port})
        post("/v1/connections/sip", {"service_id": service["id"], "trunk_id": trunk["id"], "auth_type": "ip"})
        post("/v1/routing-group-members", {"routing_group_id": group["id"], "trunk_id": trunk["id"],
                                           "prefixes": prefix})
    time.sleep(2)  # trunk settings are re-read every second


class Server(threading.Thread):
    """The application server's socket: receives ACKs and RESPONSEs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.acks: dict[str, tuple[float, str]] = {}
        self.responses: dict[str, tuple[float, int]] = {}
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                data, _ = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            now = time.monotonic()
            text = data.decode(errors="replace")
            fields = dict(p.split("=", 1) for p in text.split(":", 1)[1].strip().rstrip(";").split(";") if "=" in p)
            if text.startswith("ACK:"):
                self.acks.setdefault(fields.get("id", ""), (now, fields.get("code", "")))
            elif text.startswith("RESPONSE:"):
                self.responses[fields.get("id", "")] = (now, int(fields.get("real_duration", "0")))


def step(switchd: Switchd, server: Server, rate: int, seconds: float, talk_ms: int, label: str) -> dict:
    count = int(rate * seconds)
    sent: dict[str, float] = {}
    target = ("127.0.0.1", switchd.iif_port)
    cpu0, t0 = common.ticks(switchd.pid) or 0, time.monotonic()
    for n in range(count):
        due = t0 + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        request_id = f"{label}-{n}"
        sent[request_id] = time.monotonic()
        server.sock.sendto(f"REQUEST: id={request_id};user1=44207{n:06d};user2=44208{n:06d};duration=600;".encode(),
                           target)
    send_seconds = time.monotonic() - t0
    deadline = time.monotonic() + talk_ms / 1000 + 30
    while time.monotonic() < deadline and sum(1 for i in sent if i in server.responses) < count:
        time.sleep(0.2)
    elapsed = time.monotonic() - t0
    cpu = ((common.ticks(switchd.pid) or 0) - cpu0) / common.CLK_TCK
    latencies = sorted((server.acks[i][0] - t) * 1000 for i, t in sent.items() if i in server.acks)
    failed_ack = sum(1 for i in sent if i in server.acks and server.acks[i][1] != "ok")
    missing_ack = sum(1 for i in sent if i not in server.acks)
    no_response = sum(1 for i in sent if i not in server.responses)
    zero = sum(1 for i in sent if i in server.responses and server.responses[i][1] == 0)
    durations = [server.responses[i][1] for i in sent if i in server.responses and server.responses[i][1] > 0]
    failed = failed_ack + missing_ack + no_response + zero

    # When the slow ACKs were asked for (seconds into the step): clustered (a pause) or spread (load)?
    slow = sorted((round(t - t0, 2), round((server.acks[i][0] - t) * 1000, 1))
                  for i, t in sent.items() if i in server.acks and server.acks[i][0] - t > 0.010)

    def pct(p: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 2) if latencies else None

    return {
        "rate": rate, "requests": count, "achieved_rate": round(count / send_seconds, 1), "failed": failed,
        "ack_fail": failed_ack, "ack_missing": missing_ack, "response_missing": no_response, "zero_duration": zero,
        "ack_ms_p50": pct(0.50), "ack_ms_p99": pct(0.99), "ack_ms_max": round(latencies[-1], 2) if latencies else None,
        "real_duration_mean": round(statistics.mean(durations), 2) if durations else None,
        "cpu_pct": round(100 * cpu / elapsed, 1), "sustained": failed == 0,
        "ack_over_10ms_pct": round(100 * len(slow) / max(1, len(latencies)), 2), "slow_acks": slow[:500],
    }


def step_http(switchd: Switchd, rate: int, seconds: float, talk_ms: int, label: str) -> dict:
    """Click-to-dial: ``POST /v1/callbacks`` paced at ``rate`` (a pool of client threads,
    each request on its own connection), then each callback's state once it ended."""
    from concurrent.futures import ThreadPoolExecutor

    count = int(rate * seconds)
    created: dict[int, tuple[float, int, dict]] = {}  # n -> (latency s, status, body)

    def create(n: int) -> None:
        started = time.monotonic()
        try:
            status, body = switchd.api("POST", "/v1/callbacks", {
                "service_id": 1, "a": f"44207{n:06d}", "b": f"44208{n:06d}", "max_seconds": 600}, timeout=30)
        except OSError:  # refused, reset, timed out: a failed create
            status, body = 0, {}
        created[n] = (time.monotonic() - started, status, body if isinstance(body, dict) else {})

    cpu0, t0 = common.ticks(switchd.pid) or 0, time.monotonic()
    with ThreadPoolExecutor(max_workers=64) as pool:
        for n in range(count):
            delay = t0 + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(create, n)
    send_seconds = time.monotonic() - t0
    time.sleep(talk_ms / 1000 + 8)  # user1 rings, answers, user2 talks and hangs up
    elapsed = time.monotonic() - t0
    cpu = ((common.ticks(switchd.pid) or 0) - cpu0) / common.CLK_TCK
    completed, durations = 0, []
    for latency, status, body in created.values():
        if status != 201:
            continue
        state_status, state = switchd.api("GET", f"/v1/callbacks/{body['id']}")
        if state_status == 200 and state.get("outcome") == "completed" and state.get("real_duration", 0) > 0:
            completed += 1
            durations.append(state["real_duration"])
    latencies = sorted(latency * 1000 for latency, status, _ in created.values() if status == 201)

    def pct(p: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 2) if latencies else None

    failed = count - completed
    return {
        "rate": rate, "kind": "http", "requests": count, "achieved_rate": round(count / send_seconds, 1),
        "failed": failed, "refused": sum(1 for _, status, _ in created.values() if status != 201),
        "ack_ms_p50": pct(0.50), "ack_ms_p99": pct(0.99), "ack_ms_max": round(latencies[-1], 2) if latencies else None,
        "real_duration_mean": round(statistics.mean(durations), 2) if durations else None,
        "cpu_pct": round(100 * cpu / elapsed, 1), "sustained": failed == 0,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="10,25,50,100,150")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--talk-ms", type=int, default=2000)
    parser.add_argument("--http", action="store_true",
                        help="click-to-dial: POST /v1/callbacks instead of IIF REQUESTs (ACK = the 201)")
    parser.add_argument("--gc-stats", action="store_true",
                        help="time switchd's garbage collections (through b2bua_bench's wrapper); per step")
    parser.add_argument("--switch-interval", type=float, default=0.0,
                        help="run switchd with this GIL switch interval (seconds; an experiment)")
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",") if r]
    procs = common.Processes()
    directory = Path(tempfile.mkdtemp(prefix="switchd-callback-bench-"))
    results: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "settings": vars(args),
                     "steps": []}
    try:
        uas_ports = (common.free_port(), common.free_port())
        for host, port, scenario, extra in (("127.0.0.3", uas_ports[0], "uas_answer.xml", []),
                                            ("127.0.0.4", uas_ports[1], "uas_hangup.xml", ["-d", str(args.talk_ms)])):
            procs.start(["sipp", "-sf", str(SCENARIOS / scenario), "-i", host, "-p", str(port), "-nostdin",
                         "-trace_err", *extra], cwd=directory, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, quit_signal=common.signal.SIGUSR1)
        experiment = argparse.Namespace(switch_interval=args.switch_interval, gc_stats=args.gc_stats,
                                        gc_freeze=False, gc_threshold="", gc_disable=False)
        switchd = Switchd(procs, directory / "switchd", experiment).start()
        common.log(f"switchd pid {switchd.pid}, IIF on 127.0.0.1:{switchd.iif_port}")
        provision(switchd, uas_ports)
        server = Server()
        server.start()
        print(f"{'rate':>6} {'got/s':>7} {'reqs':>6} {'failed':>6} {'ack p50':>8} {'ack p99':>8} {'ack max':>8} "
              f"{'talk s':>7} {'cpu%':>6} sust")
        for rate in rates:
            if args.http:
                result = step_http(switchd, rate, args.seconds, args.talk_ms, f"r{rate}")
            else:
                result = step(switchd, server, rate, args.seconds, args.talk_ms, f"r{rate}")
            gc_now = switchd.gc()
            if gc_now is not None:  # cumulative: the step's collections are the difference
                result["gc"] = {g: gc_now.get(g) for g in ("0", "1", "2")}
                common.log(f"gc after rate {rate}: " + ", ".join(
                    f"gen{g} {v['count']}x max {v['max'] * 1000:.1f} ms" for g, v in result["gc"].items() if v))
            results["steps"].append(result)
            print(f"{rate:>6} {result['achieved_rate']:>7} {result['requests']:>6} {result['failed']:>6} "
                  f"{result['ack_ms_p50']!s:>8} {result['ack_ms_p99']!s:>8} {result['ack_ms_max']!s:>8} "
                  f"{result['real_duration_mean']!s:>7} {result['cpu_pct']:>6} {'yes' if result['sustained'] else 'no'}",
                  flush=True)
            time.sleep(3)
        server.running = False
        sustained = [s["rate"] for s in results["steps"] if s["sustained"]]
        results["highest_sustained_rate"] = max(sustained) if sustained else 0
        at100 = next((s for s in results["steps"] if s["rate"] == 100), None)
        results["ack_p99_ms_at_100"] = at100["ack_ms_p99"] if at100 else None
        print(json.dumps({k: results[k] for k in ("highest_sustained_rate", "ack_p99_ms_at_100")}))
    finally:
        procs.stop_all()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"callback-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    common.log(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
