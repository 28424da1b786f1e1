"""switchctl: the admin command line, on SQLite and PostgreSQL.

Most checks call the installed ``switchctl`` console script in a subprocess,
as a sysadmin would; the rest call ``switchd.ctl.main(argv)`` in-process,
which is quicker and shows the same output through capsys.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from switchd import ctl
from switchd.api.auth import lookup
from switchd.store import migrate
from switchd.store.db import make_engine
from switchd.store.models import api_keys, customers

from ..daemon import Daemon, run_switchd

SWITCHCTL = Path(sys.executable).with_name("switchctl")
REPO = Path(__file__).resolve().parents[2]
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/x"
HEAD = migrate.head_revision()


def clean_environ(**extra: str) -> dict[str, str]:
    """os.environ without SWITCHD_* settings of the calling shell, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHD_")}
    env.update(extra)
    return env


def switchctl(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SWITCHCTL), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *, status: int) -> str:
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert line and "\n" not in line, result.stderr
    assert line.startswith("switchctl: ")
    return line


@pytest.fixture
def env(db_url, tmp_path) -> dict[str, str]:
    """Subprocess environment: the test database, a state dir that must not be needed, no API."""
    return clean_environ(
        SWITCHD_DATABASE_URL=db_url,
        SWITCHD_SWITCHD_STATE_DIR=str(tmp_path / "state-unused"),
        SWITCHD_API_LISTEN="",
    )


@pytest.fixture
def local(monkeypatch, env):
    """The same environment for in-process ``ctl.main`` calls."""
    for name in list(os.environ):
        if name.startswith("SWITCHD_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("SWITCHD_"):
            monkeypatch.setenv(name, value)


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    status = ctl.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def add_customer(engine, name: str, status: str = "active") -> int:
    now = datetime.datetime.now(datetime.timezone.utc)
    with engine.begin() as conn:
        return conn.execute(
            insert(customers)
            .values(name=name, status=status, company=f"{name} Ltd", created_at=now, updated_at=now)
            .returning(customers.c.id)
        ).scalar_one()


# -- db ------------------------------------------------------------------------


def test_db_upgrade_fresh_then_idempotent(db_url, env, tmp_path):
    first = switchctl("db", "upgrade", env=env)
    assert first.returncode == 0, first.stderr
    assert f"from revision none to {HEAD}" in first.stdout

    second = switchctl("--json", "db", "upgrade", env=env)
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["from"] == report["to"] == report["head"] == HEAD
    assert report["migrated"] is False and report["applied"] == []

    engine = make_engine(db_url, 1)
    try:
        assert migrate.current_revision(engine) == HEAD
    finally:
        engine.dispose()
    # An explicit database URL never needs (or creates) the state directory.
    assert not (tmp_path / "state-unused").exists()


def test_db_current_behind_then_at_head(db_url, local, capsys, tmp_path):
    status, out, err = run_main(capsys, "--json", "db", "current")
    assert status == 0, err
    before = json.loads(out)
    assert before["revision"] is None and before["head"] == HEAD
    assert before["behind"] is True and before["at_head"] is False
    assert before["pending"][0] == "0001" and before["pending"][-1] == HEAD
    if db_url.startswith("sqlite"):
        # Reading the revision must not create an SQLite file.
        assert before["exists"] is False
        assert not (tmp_path / "switchd.sqlite3").exists()

    status, out, _ = run_main(capsys, "db", "current")
    assert status == 0 and "behind head" in out and "db upgrade" in out

    assert run_main(capsys, "db", "upgrade")[0] == 0
    status, out, _ = run_main(capsys, "db", "current", "--json")  # --json after the command too
    after = json.loads(out)
    assert after["revision"] == HEAD and after["at_head"] is True and after["behind"] is False
    status, out, _ = run_main(capsys, "db", "current")
    assert f"revision {HEAD} (head)" in out


def test_default_sqlite_url_creates_the_state_dir(tmp_path, capsys, monkeypatch):
    for name in list(os.environ):
        if name.startswith("SWITCHD_"):
            monkeypatch.delenv(name)
    state = tmp_path / "deep" / "state"
    ini = tmp_path / "switchd.ini"
    ini.write_text(f"[switchd]\nstate_dir = {state}\n")
    status, out, err = run_main(capsys, "-c", str(ini), "db", "upgrade")
    assert status == 0, err
    assert (state / "switchd.sqlite3").is_file()
    assert f"from revision none to {HEAD}" in out


# -- api keys ----------------------------------------------------------------------


def test_api_key_create_admin_prints_a_working_key_last(engine, env):
    result = switchctl("api-key", "create", "--admin", "--name", "ops team", env=env)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("sk_")
    with engine.connect() as conn:
        principal = lookup(conn, key)
        assert principal is not None and principal.admin and principal.customer_id is None
        assert conn.execute(select(api_keys.c.name).where(api_keys.c.id == principal.key_id)).scalar() == "ops team"


def test_api_key_create_for_customer_json(engine, local, capsys):
    customer_id = add_customer(engine, "Acme")
    status, out, err = run_main(capsys, "--json", "api-key", "create", "--customer", str(customer_id))
    assert status == 0, err
    body = json.loads(out)
    assert body["customer_id"] == customer_id and body["admin"] is False
    with engine.connect() as conn:
        principal = lookup(conn, body["key"])
    assert principal is not None and principal.key_id == body["id"]
    assert principal.customer_id == customer_id and not principal.admin

    status, out, err = run_main(capsys, "api-key", "create", "--customer", str(customer_id + 1000))
    assert status == 1 and err.strip() == f"switchctl: there is no customer with id {customer_id + 1000}"


def test_api_key_list_and_revoke(engine, local, capsys):
    customer_id = add_customer(engine, "Acme")
    keys = {}
    for argv in (["--admin", "--name", "root"], ["--customer", str(customer_id)]):
        status, out, _ = run_main(capsys, "--json", "api-key", "create", *argv)
        assert status == 0
        body = json.loads(out)
        keys[body["id"]] = body["key"]
    admin_id, customer_key_id = keys

    status, out, _ = run_main(capsys, "--json", "api-key", "list")
    listed = json.loads(out)["items"]
    assert [k["id"] for k in listed] == [admin_id, customer_key_id]
    assert all("key" not in k and "secret_hash" not in k and "salt" not in k for k in listed)

    status, out, _ = run_main(capsys, "api-key", "revoke", str(customer_key_id))
    assert status == 0 and f"revoked API key {customer_key_id}" in out
    with engine.connect() as conn:
        assert lookup(conn, keys[customer_key_id]) is None
        assert lookup(conn, keys[admin_id]) is not None

    status, out, _ = run_main(capsys, "--json", "api-key", "list")
    assert [k["id"] for k in json.loads(out)["items"]] == [admin_id]
    status, out, _ = run_main(capsys, "--json", "api-key", "list", "--all")
    revoked = [k for k in json.loads(out)["items"] if k["id"] == customer_key_id]
    assert revoked and revoked[0]["revoked_at"] is not None
    status, out, _ = run_main(capsys, "api-key", "list")
    assert out.splitlines()[0].split() == ["ID", "PREFIX", "FOR", "NAME", "CREATED", "REVOKED"]
    assert "root" in out

    status, out, _ = run_main(capsys, "--json", "api-key", "revoke", str(customer_key_id))
    assert status == 0 and json.loads(out)["already_revoked"] is True
    status, out, err = run_main(capsys, "--json", "api-key", "revoke", "999999")
    assert status == 1 and json.loads(out)["error"]["kind"] == "not-found"
    assert err.strip() == "switchctl: there is no API key with id 999999"


# -- customers ------------------------------------------------------------------------


def test_customer_list(engine, env, local, capsys):
    acme = add_customer(engine, "Acme Telecom")
    globex = add_customer(engine, "Globex", status="suspended")

    result = switchctl("customer", "list", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "NAME", "STATUS"]
    assert any(line.startswith(str(acme)) and "Acme Telecom" in line for line in lines[1:])
    assert any(line.startswith(str(globex)) and "suspended" in line for line in lines[1:])

    status, out, _ = run_main(capsys, "--json", "customer", "list")
    items = json.loads(out)["items"]
    assert [(c["id"], c["name"], c["status"]) for c in items] == [
        (acme, "Acme Telecom", "active"),
        (globex, "Globex", "suspended"),
    ]
    assert items[0]["company"] == "Acme Telecom Ltd" and items[0]["created_at"].endswith("Z")

    status, out, _ = run_main(capsys, "--json", "customer", "list", "--status", "suspended")
    assert [c["id"] for c in json.loads(out)["items"]] == [globex]


def test_data_commands_refuse_a_schema_that_is_behind(db_url, local, capsys):
    status, out, err = run_main(capsys, "customer", "list")
    assert status == 1 and "db upgrade" in err and "\n" not in err.strip()


# -- health ------------------------------------------------------------------------------


def test_health_ok(engine, env):
    result = switchctl("health", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "database: ok" in result.stdout and f"revision {HEAD} (head)" in result.stdout
    # Honest about what it did not check: no [api] listen is configured here.
    assert "api: skipped: not checked" in result.stdout

    result = switchctl("--json", "health", "--skip-api", env=env)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["status"] == "ok" and report["reason"] is None
    assert {c["name"]: c["status"] for c in report["checks"]} == {"database": "ok", "api": "skipped"}


def test_health_fails_on_a_schema_that_is_behind(db_url, env):
    result = switchctl("health", env=env)
    line = assert_one_line_error(result, status=1)
    assert line.startswith("switchctl: unhealthy: database:") and "switchctl db upgrade" in line


def test_health_fails_when_postgresql_is_unreachable(tmp_path):
    env = clean_environ(SWITCHD_DATABASE_URL=UNREACHABLE, SWITCHD_API_LISTEN="")
    result = switchctl("health", env=env)
    line = assert_one_line_error(result, status=1)
    assert "cannot connect" in line and "127.0.0.1:1" in line

    result = switchctl("health", "--json", env=env)
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["status"] == "fail" and "cannot connect" in report["reason"]

    line = assert_one_line_error(switchctl("db", "upgrade", env=env), status=1)
    assert "[database] url: cannot connect" in line


def test_health_fails_when_the_configured_api_does_not_answer(engine, env):
    env = {**env, "SWITCHD_API_LISTEN": "tcp:1:interface=127.0.0.1"}
    line = assert_one_line_error(switchctl("health", env=env), status=1)
    assert "api: http://127.0.0.1:1/health: cannot get an answer" in line


def test_probe_target_from_endpoint_strings():
    assert ctl.probe_target("tcp:8080:interface=127.0.0.1") == ("http", ("127.0.0.1", 8080))
    assert ctl.probe_target("tcp:port=8080") == ("http", ("127.0.0.1", 8080))
    assert ctl.probe_target("tcp6:8080:interface=\\:\\:") == ("http", ("::1", 8080))
    assert ctl.probe_target("ssl:8443:privateKey=k.pem") == ("https", ("127.0.0.1", 8443))
    assert ctl.probe_target("unix:/run/switchd/api.sock") == ("unix", "/run/switchd/api.sock")
    assert isinstance(ctl.probe_target("tcp:0"), str)
    assert isinstance(ctl.probe_target("systemd:domain=INET:index=0"), str)


# -- configuration and usage errors -------------------------------------------------


def test_bad_config_file_exits_2_naming_file_section_and_key(tmp_path):
    ini = tmp_path / "switchd.ini"
    ini.write_text("[database]\nurll = sqlite:///x\n")
    result = switchctl("-c", str(ini), "db", "upgrade", env=clean_environ())
    line = assert_one_line_error(result, status=2)
    assert line.startswith(f"switchctl: configuration error: {ini}: [database] urll: unknown key")

    result = switchctl("--json", "-c", str(ini), "health", env=clean_environ())
    assert result.returncode == 2 and json.loads(result.stdout)["error"]["kind"] == "configuration"

    missing = tmp_path / "nope.ini"
    line = assert_one_line_error(switchctl("-c", str(missing), "customer", "list", env=clean_environ()), status=2)
    assert line.startswith(f"switchctl: configuration error: {missing}: cannot read the file")


def test_usage_errors_exit_2_without_traceback(capsys):
    assert ctl.main(["api-key", "create"]) == 2
    assert ctl.main(["api-key", "revoke", "abc"]) == 2
    assert ctl.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage: switchctl" in err
    # Checked like the API checks it, before any database is opened.
    assert ctl.main(["api-key", "create", "--admin", "--name", "x" * 201]) == 2
    assert capsys.readouterr().err.strip() == "switchctl: --name: must be at most 200 characters"


def test_checkout_wrapper_script():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "switchctl"), "--version"],
        env=clean_environ(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0 and result.stdout.startswith("switchctl (switchd) ")
    assert os.access(REPO / "scripts" / "switchctl", os.X_OK)


# -- the daemon and a PostgreSQL schema that is behind ---------------------------------


def test_daemon_refuses_a_schema_behind_until_switchctl_db_upgrade(pg_schema_url, tmp_path):
    daemon = Daemon(tmp_path, env={"SWITCHD_DATABASE_URL": pg_schema_url})
    refused = run_switchd(["-c", str(daemon.config)], env=daemon.env, cwd=tmp_path)
    assert refused.returncode != 0
    message = refused.stdout + refused.stderr
    assert f"switchctl -c {daemon.config} db upgrade" in message, message
    assert "Traceback" not in message

    ctl_env = clean_environ(**{k: v for k, v in daemon.env.items() if k.startswith("SWITCHD_")})
    upgraded = switchctl("-c", str(daemon.config), "db", "upgrade", env=ctl_env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"to {HEAD}" in upgraded.stdout

    daemon.start()
    try:
        # health asks the running daemon when [api] listen names its port.
        ctl_env["SWITCHD_API_LISTEN"] = f"tcp:{daemon.ports['api']}:interface=127.0.0.1"
        health = switchctl("-c", str(daemon.config), "--json", "health", env=ctl_env)
        assert health.returncode == 0, (health.stdout, health.stderr)
        checks = {c["name"]: c for c in json.loads(health.stdout)["checks"]}
        assert checks["database"]["status"] == "ok"
        assert checks["api"]["status"] == "ok" and checks["api"]["answer"]["status"] == "ok"
    finally:
        # twistd re-raises SIGTERM after a clean shutdown: -15 here is not a failure.
        daemon.stop()
