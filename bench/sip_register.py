"""REGISTER with digest authentication through the daemon, driven by SIPp.

Starts switchd (SQLite in a temporary state directory, or PostgreSQL with
--database-url), provisions N SIP accounts, and runs SIPp's
tests/interop/scenarios/register_digest.xml (REGISTER, 401, REGISTER with
credentials, 200) at rising rates. Each SIPp "call" is one registration: two
REGISTER transactions, one answered from memory (the challenge), one that
reads the account and writes the binding to the database before the 200.

    python bench/sip_register.py --accounts 2000 --rates 200,400,600,800 --seconds 10

Prints, per rate: registrations per second achieved, REGISTER transactions
per second (twice that), failed registrations, and the daemon's CPU and RSS.
All traffic stays on 127.0.0.1 and every run is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.daemon import Daemon  # noqa: E402

SCENARIO = ROOT / "tests" / "interop" / "scenarios" / "register_digest.xml"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def provision(daemon: Daemon, accounts: int) -> Path:
    key = daemon.admin_key

    def post(path, body):
        request = urllib.request.Request(
            daemon.url + path, json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    customer = post("/v1/customers", {"name": "bench"})
    account = post("/v1/accounts", {"customer_id": customer["id"], "currency": "EUR"})
    plan = post("/v1/tariff-plans", {"name": "zero", "currency": "EUR"})
    service = post("/v1/services", {"account_id": account["id"], "type": "sip_telephony", "tariff_plan_id": plan["id"]})
    lines = ["SEQUENTIAL"]
    for i in range(accounts):
        user = f"u{i:05d}"
        post("/v1/sip-accounts", {"service_id": service["id"], "username": user, "password": f"pw-{user}-x"})
        lines.append(f"{user};[authentication username={user} password=pw-{user}-x]")
    users = daemon.dir / "users.csv"
    users.write_text("\n".join(lines) + "\n")
    return users


def run_rate(daemon: Daemon, users: Path, rate: int, seconds: float) -> dict:
    port = daemon.listeners[("sip", "udp")]
    total = int(rate * seconds)
    pid = daemon.proc.pid
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    result = subprocess.run(
        ["sipp", "-sf", str(SCENARIO), "-inf", str(users), f"127.0.0.1:{port}", "-i", "127.0.0.1", "-p", "0",
         "-r", str(rate), "-m", str(total), "-l", str(max(100, rate * 2)), "-timeout", str(int(seconds * 3 + 30)),
         "-nostdin", "-trace_stat", "-stf", str(daemon.dir / f"stat-{rate}.csv")],
        cwd=daemon.dir, capture_output=True, text=True, timeout=seconds * 4 + 60,
    )
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    out = result.stdout
    ok = re.search(r"Successful call\s+\|\s+\d+\s+\|\s+(\d+)", out)
    failed = re.search(r"Failed call\s+\|\s+\d+\s+\|\s+(\d+)", out)
    succeeded = int(ok.group(1)) if ok else 0
    return {
        "rate": rate,
        "registrations": succeeded,
        "failed": int(failed.group(1)) if failed else total - succeeded,
        "elapsed_s": round(elapsed, 2),
        "registrations_per_s": round(succeeded / elapsed, 1),
        "register_transactions_per_s": round(2 * succeeded / elapsed, 1),
        "daemon_cpu_percent": round(100 * cpu / elapsed, 1),
        "daemon_rss_mb": round(rss_mb(pid), 1),
        "sipp_exit": result.returncode,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--rates", default="200,400,600,800")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite)")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "sip_register.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="switchd-bench-") as tmp:
        env = {
            "SWITCHD_SIP_DIGEST_ALGORITHMS": "MD5",  # what SIPp 3.6 can answer
            "SWITCHD_SIP_FLOOD_RATE": "0",
            "SWITCHD_SIP_LISTEN": "udp:0:interface=127.0.0.1",
        }
        if args.database_url:
            env["SWITCHD_DATABASE_URL"] = args.database_url
            env["SWITCHD_DATABASE_AUTO_MIGRATE"] = "yes"
        daemon = Daemon(Path(tmp), env=env).start(expect=("api", "sip"))
        try:
            users = provision(daemon, args.accounts)
            results = []
            for rate in (int(r) for r in args.rates.split(",")):
                row = run_rate(daemon, users, rate, args.seconds)
                results.append(row)
                print(json.dumps(row), flush=True)
        finally:
            daemon.stop()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"database": args.database_url or "sqlite", "results": results}, indent=2))
    print(f"{'rate':>6} {'reg/s':>8} {'REGISTER tx/s':>14} {'failed':>7} {'cpu %':>6} {'rss MB':>7}")
    for r in results:
        print(f"{r['rate']:>6} {r['registrations_per_s']:>8} {r['register_transactions_per_s']:>14} "
              f"{r['failed']:>7} {r['daemon_cpu_percent']:>6} {r['daemon_rss_mb']:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
