"""The real daemon under twistd: start, first admin key, config errors, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import urllib.request
from pathlib import Path

import pytest

from ..daemon import Daemon, run_switchd

# twistd shuts down cleanly on SIGTERM and then exits by that signal, as Unix
# daemons should (systemd counts it as a clean stop).
CLEAN = -signal.SIGTERM


def http(daemon: Daemon, method: str, path: str, body=None, key: str | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(daemon.url + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_first_start_on_embedded_defaults(tmp_path):
    daemon = Daemon(tmp_path).start()
    try:
        key_file = daemon.state_dir / "admin-api-key"
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        key = daemon.admin_key
        log = daemon.log.read_text()
        assert f"it is in {key_file}" in log
        assert key not in log  # the log names the file, never the key
        assert (daemon.state_dir / "switchd.sqlite3").exists()
        assert http(daemon, "GET", "/health")[0] == 200
        status, customer = http(daemon, "POST", "/v1/customers", {"name": "ACME"}, key)
        assert status == 201 and customer["name"] == "ACME"
        status, problem = http(daemon, "POST", "/v1/customers", {"nom": "x"}, key)
        assert status == 422
        assert http(daemon, "GET", "/health")[0] == 200  # still up after bad input
    finally:
        assert daemon.stop() == CLEAN
    log = daemon.log.read_text()
    assert "Received SIGTERM, shutting down." in log
    assert "Server Shut Down." in log
    assert "Traceback" not in log

    # A second start keeps the data and does not make a second admin key.
    again = Daemon(tmp_path).start()
    try:
        assert again.admin_key == key
        status, page = http(again, "GET", "/v1/customers", key=key)
        assert [c["name"] for c in page["items"]] == ["ACME"]
    finally:
        assert again.stop() == CLEAN


def test_the_daemon_runs_on_the_cpu_it_is_given(tmp_path):
    daemon = Daemon(tmp_path, env={"SWITCHD_SWITCHD_CPU_AFFINITY": "0"}).start()
    try:
        tasks = Path(f"/proc/{daemon.proc.pid}/task")
        # Every thread, those started after the setting too (the database's, twistd's pool).
        masks = {(task / "status").read_text().split("Cpus_allowed_list:")[1].split()[0] for task in tasks.iterdir()}
        assert masks == {"0"} and len(list(tasks.iterdir())) > 1
        assert "running on CPUs [0]" in daemon.log.read_text()
    finally:
        assert daemon.stop() == CLEAN


def test_postgresql_database_from_the_environment(tmp_path, pg_schema_url):
    daemon = Daemon(
        tmp_path,
        "[database]\nauto_migrate = yes\n",
        env={"SWITCHD_DATABASE_URL": pg_schema_url},
    ).start()
    try:
        assert not (daemon.state_dir / "switchd.sqlite3").exists()
        status, _ = http(daemon, "POST", "/v1/customers", {"name": "PG"}, daemon.admin_key)
        assert status == 201
    finally:
        assert daemon.stop() == CLEAN


@pytest.mark.parametrize(
    "ini, env, expected",
    [
        ("[smtp]\nlisten = tcp:25\n", {}, "switchd.ini: [smtp]: unknown section"),
        ("[api]\nlisen = tcp:1\n", {}, "switchd.ini: [api] lisen: unknown key"),
        ("[database]\npool_size = lots\n", {}, "switchd.ini: [database] pool_size: expected an integer, got 'lots'"),
        ("", {"SWITCHD_API_PAGE_SIZE": "-1"},
         "environment variable SWITCHD_API_PAGE_SIZE: [api] page_size: must be at least 1"),
        ("[api]\nlisten = bogus:1\n", {}, "switchd.ini: [api] listen: bad endpoint 'bogus:1'"),
        ("[switchd]\ncpu_affinity = 4095\n", {}, "switchd.ini: [switchd] cpu_affinity: CPUs [4095] are not available"),
    ],
)
def test_bad_configuration_stops_startup_with_one_clear_line(tmp_path, ini, env, expected):
    config = tmp_path / "switchd.ini"
    config.write_text(ini)
    result = run_switchd(
        ["-c", str(config)], env={"SWITCHD_SWITCHD_STATE_DIR": str(tmp_path / "s"), **env}, cwd=tmp_path
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("switchd: configuration error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_unreadable_config_file(tmp_path):
    result = run_switchd(["-c", str(tmp_path / "missing.ini")], cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip() == (
        f"switchd: configuration error: {tmp_path / 'missing.ini'}: cannot read the file: No such file or directory"
    )


def test_port_in_use_names_the_listen_key(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    config = tmp_path / "switchd.ini"
    config.write_text(f"[api]\nlisten = tcp:{port}:interface=127.0.0.1\n")
    try:
        result = run_switchd(
            ["-c", str(config)], env={"SWITCHD_SWITCHD_STATE_DIR": str(tmp_path / "s")}, cwd=tmp_path
        )
    finally:
        busy.close()
    assert result.returncode != 0
    message = [line for line in result.stderr.splitlines() if line.strip()]
    assert message == [
        f"switchd: {config}: [api] listen: cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use"
    ]


def test_state_dir_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_switchd([], env={"SWITCHD_SWITCHD_STATE_DIR": str(blocker / "state")}, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().startswith("switchd: configuration error: <defaults>: [switchd] state_dir: cannot create")


def test_help_documents_the_options():
    result = run_switchd(["--help"])
    assert result.returncode == 0
    assert "--config=" in result.stdout and "SWITCHD_<SECTION>_<KEY>" in result.stdout
