"""Run the real daemon (``twistd -n switchd``) in a subprocess for tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

LISTENING = re.compile(r"\[(\w+)\] listening on (\S+) \((\w+) (\S+) port (\d+)\)")
SIP_LISTEN = "udp:0:interface=127.0.0.1 tcp:0:interface=127.0.0.1"
SMPP_LISTEN = "tcp:0:interface=127.0.0.1"


class Daemon:
    """One switchd process; ``ports`` maps section to its first bound port."""

    def __init__(self, tmp_path: Path, ini: str = "", env: dict[str, str] | None = None) -> None:
        self.dir = tmp_path
        self.state_dir = tmp_path / "state"
        self.config = tmp_path / "switchd.ini"
        self.config.write_text(ini)
        self.log = tmp_path / "switchd.log"
        self.env = {
            **os.environ,
            "SWITCHD_SWITCHD_STATE_DIR": str(self.state_dir),
            "SWITCHD_API_LISTEN": "tcp:0:interface=127.0.0.1",
            "SWITCHD_SIP_LISTEN": SIP_LISTEN,
            "SWITCHD_SMPP_LISTEN": SMPP_LISTEN,
            "SWITCHD_IIF_LISTEN": "127.0.0.1:0",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        # (section, transport) -> port, e.g. ("sip", "udp") -> 40123
        self.listeners: dict[tuple[str, str], int] = {}

    def command(self) -> list[str]:
        twistd = Path(sys.executable).with_name("twistd")
        return [
            str(twistd),
            "-n",
            "--pidfile=",
            "--logfile",
            str(self.log),
            "switchd",
            "-c",
            str(self.config),
        ]

    def start(self, timeout: float = 30.0, expect: tuple[str, ...] = ("api",)) -> "Daemon":
        if self.log.exists():  # a previous run's log: keep it aside
            self.log.replace(self.log.with_suffix(".log.old"))
        self.ports = {}
        self.listeners = {}
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.dir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"switchd exited with {self.proc.returncode}: {self.output()}")
            text = self.log.read_text() if self.log.exists() else ""
            for match in LISTENING.finditer(text):
                self.ports.setdefault(match.group(1), int(match.group(5)))
                self.listeners.setdefault((match.group(1), match.group(3).lower()), int(match.group(5)))
            if all(section in self.ports for section in expect):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"switchd did not start: {self.output()}")

    def output(self) -> str:
        out = ""
        if self.proc is not None and self.proc.stdout is not None and self.proc.poll() is not None:
            out = self.proc.stdout.read().decode(errors="replace")
        text = self.log.read_text() if self.log.exists() else ""
        return out + text

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def smpp_port(self) -> int:
        """The bound port of the first [smpp] listener (start with expect=("api", "smpp"))."""
        return self.ports["smpp"]

    @property
    def admin_key(self) -> str:
        return (self.state_dir / "admin-api-key").read_text().strip()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def run_switchd(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 30):
    """Run twistd switchd to completion (for startup errors); returns CompletedProcess."""
    twistd = Path(sys.executable).with_name("twistd")
    return subprocess.run(
        [str(twistd), "-n", "--pidfile=", "switchd", *args],
        env={**os.environ, "SWITCHD_SIP_LISTEN": SIP_LISTEN, "SWITCHD_SMPP_LISTEN": SMPP_LISTEN, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
