"""``switchctl``: the administrator's command-line tool.

Runs synchronously (no reactor) against the database named by the same
configuration the daemon reads (``-c FILE``, embedded defaults and
``SWITCHD_<SECTION>_<KEY>`` overrides)::

    switchctl [-c FILE] [--json] db upgrade
    switchctl [-c FILE] [--json] db current
    switchctl [-c FILE] [--json] api-key create (--admin | --customer ID) [--name N]
    switchctl [-c FILE] [--json] api-key list [--customer ID | --admin] [--all]
    switchctl [-c FILE] [--json] api-key revoke ID
    switchctl [-c FILE] [--json] customer list [--status S]
    switchctl [-c FILE] [--json] health [--skip-api] [--api-url URL] [--timeout S]

Exit status: 0 success (healthy), 1 the database or the daemon cannot be
reached or refuses the operation (unhealthy), 2 a configuration or usage
error. An operator's mistake is reported on one line of standard error, never
as a traceback. With ``--json`` standard output holds one JSON document
(an ``{"error": ...}`` object when the command fails).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import socket
import ssl
import sys
import urllib.parse
from typing import Any, Callable, Sequence

from sqlalchemy import exists, select, update
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from . import __version__
from .config import ENV_PREFIX, Config, ConfigError, load
from .store import migrate
from .store.db import make_engine

PROG = "switchctl"

#: Exit statuses.
OK, FAILED, USAGE = 0, 1, 2


class CtlError(Exception):
    """A failure reported as one line; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = FAILED, kind: str = "database") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


# -- output ----------------------------------------------------------------------


class Output:
    """Text for people or one JSON document for programs, on stdout."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def line(self, text: str = "") -> None:
        if not self.json:
            print(text, file=sys.stdout)

    def document(self, value: Any) -> None:
        if self.json:
            print(json.dumps(value, indent=2, default=str), file=sys.stdout)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.json:
            return
        cells = [[("" if v is None else str(v)) for v in row] for row in rows]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
        for row in [list(headers)] + cells:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=sys.stdout)


def _first_line(error: BaseException) -> str:
    """The driver's own message (not SQLAlchemy's wrapper), first line only."""
    inner = getattr(error, "orig", None) or error
    text = str(inner).strip() or type(inner).__name__
    return text.splitlines()[0].strip()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _time(value: datetime.datetime | None) -> str | None:
    if value is None:
        return None
    from .api.schema import format_time

    return format_time(value)


# -- configuration and database ----------------------------------------------------


def _origin(config: Config, section: str, key: str) -> str:
    """Where a setting came from: its environment variable or the file."""
    var = f"{ENV_PREFIX}{section.upper()}_{key.upper()}"
    return f"environment variable {var}" if var in os.environ else config.source


def _url_error(config: Config, problem: str) -> CtlError:
    return CtlError(f"{_origin(config, 'database', 'url')}: [database] url: {problem}")


def upgrade_hint(config: Config) -> str:
    if config.source == "<defaults>":
        return f"{PROG} db upgrade"
    return f"{PROG} -c {config.source} db upgrade"


def redacted(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def sqlite_path(url: str) -> str | None:
    """The file of an SQLite URL (None: not SQLite, or in memory)."""
    if not url.startswith("sqlite"):
        return None
    try:
        database = make_url(url).database
    except (SQLAlchemyError, ValueError):
        return None  # opening it reports the problem
    if not database or database == ":memory:":
        return None
    return os.path.abspath(database)


class Store:
    """The configured database, opened on demand; never creates a file by reading."""

    def __init__(self, config: Config, timeout: float = 10.0) -> None:
        self.config = config
        self.url = config.database_url
        self.display_url = redacted(self.url)
        self.timeout = timeout
        self._engine: Engine | None = None

    @property
    def backend(self) -> str:
        return "sqlite" if self.url.startswith("sqlite") else "postgresql"

    def missing_file(self) -> str | None:
        """The SQLite file if it does not exist yet."""
        path = sqlite_path(self.url)
        if path is not None and not os.path.exists(path):
            return path
        return None

    def engine(self) -> Engine:
        if self._engine is None:
            url = self.url
            if self.backend == "postgresql":
                try:
                    parsed = make_url(url)
                except (SQLAlchemyError, ValueError) as e:
                    raise _url_error(self.config, f"not a usable URL: {_first_line(e)}") from None
                if "connect_timeout" not in parsed.query:
                    # libpq waits forever by default; an admin tool must not.
                    timeout = str(max(1, int(round(self.timeout))))
                    url = parsed.update_query_dict({"connect_timeout": timeout}).render_as_string(
                        hide_password=False
                    )
            try:
                self._engine = make_engine(url, pool_size=1)
            except OSError as e:  # the SQLite file's directory cannot be created
                raise _url_error(self.config, f"cannot use {self.display_url}: {e.strerror or e}") from None
            except (SQLAlchemyError, ValueError) as e:
                raise _url_error(self.config, f"cannot use {self.display_url}: {_first_line(e)}") from None
        return self._engine

    def revision(self) -> str | None:
        """The schema revision; connecting errors become one line."""
        try:
            return migrate.current_revision(self.engine())
        except SQLAlchemyError as e:
            raise _url_error(self.config, f"cannot connect to {self.display_url}: {_first_line(e)}") from None

    def existing(self) -> "Store":
        """Check the database exists and is at the head revision (for data commands)."""
        missing = self.missing_file()
        if missing is not None:
            raise _url_error(
                self.config,
                f"there is no database at {missing}; run '{upgrade_hint(self.config)}' or start switchd",
            )
        current = self.revision()
        head = migrate.head_revision()
        if current != head:
            raise _url_error(
                self.config,
                f"the schema is at revision {current or 'none'} but this switchctl needs "
                f"{head}; run '{upgrade_hint(self.config)}' first",
            )
        return self

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(conn, ...)`` in one transaction (committed if it returns)."""
        try:
            with self.engine().begin() as conn:
                return fn(conn, *args, **kwargs)
        except SQLAlchemyError as e:
            raise CtlError(f"database error on {self.display_url}: {_first_line(e)}") from None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def revision_state(current: str | None) -> dict[str, Any]:
    """Where ``current`` stands against the migrations this code knows."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(migrate.MIGRATIONS)
    head = migrate.head_revision()
    known = _knows(script, current)
    pending: list[str] = []
    if known and current != head:
        pending = [r.revision for r in script.iterate_revisions(head, current)]
        pending.reverse()
    return {
        "revision": current,
        "head": head,
        "at_head": current == head,
        "behind": known and current != head,
        "known": known,
        "pending": pending,
    }


def _knows(script: Any, revision: str | None) -> bool:
    if revision is None:
        return True
    try:
        return script.get_revision(revision) is not None
    except Exception:  # alembic raises for revisions it has never heard of
        return False


# -- db ----------------------------------------------------------------------------


def cmd_db_upgrade(args: argparse.Namespace, config: Config, out: Output) -> int:
    if not config.database.url:
        # The default SQLite file lives in state_dir: create it as the daemon does.
        from .service import prepare_state_dir

        prepare_state_dir(config)
    store = Store(config)
    try:
        before = store.revision()
        state = revision_state(before)
        if not state["known"]:
            raise _url_error(
                config,
                f"the schema is at revision {before}, which this switchctl does not know "
                f"(its newest is {state['head']}); was it migrated by a newer switchd?",
            )
        if not state["at_head"]:
            try:
                migrate.upgrade(store.engine())
            except SQLAlchemyError as e:
                raise CtlError(
                    f"migrating {store.display_url} from {before or 'none'} failed: {_first_line(e)}"
                ) from None
        after = store.revision()
    finally:
        store.close()
    out.document(
        {
            "database": store.display_url,
            "backend": store.backend,
            "from": before,
            "to": after,
            "head": state["head"],
            "migrated": before != after,
            "applied": state["pending"],
        }
    )
    if before == after:
        out.line(f"{store.display_url}: already at revision {after} (head); nothing to do")
    else:
        out.line(f"{store.display_url}: migrated from revision {before or 'none'} to {after}")
    return OK


def cmd_db_current(args: argparse.Namespace, config: Config, out: Output) -> int:
    store = Store(config)
    try:
        missing = store.missing_file()
        current = None if missing else store.revision()
    finally:
        store.close()
    state = revision_state(current)
    out.document({"database": store.display_url, "backend": store.backend, "exists": missing is None, **state})
    where = f"{store.display_url}: "
    if missing:
        where += f"no database file yet ({missing}); "
    if state["at_head"]:
        out.line(f"{where}revision {current} (head)")
    elif not state["known"]:
        out.line(
            f"{where}revision {current}, unknown to this switchctl (its head is {state['head']}); "
            "migrated by a newer switchd?"
        )
    else:
        out.line(
            f"{where}revision {current or 'none'}, behind head {state['head']} "
            f"(pending: {', '.join(state['pending'])}); run '{upgrade_hint(config)}'"
        )
    return OK


# -- api-key -------------------------------------------------------------------------


def _key_row(row: Any) -> dict[str, Any]:
    from .api.resources import API_KEYS
    from .api.schema import render

    body = render(API_KEYS, row)
    body["revoked_at"] = _time(row.revoked_at)
    return body


def _key_columns():
    from .store.models import api_keys

    return (
        api_keys.c.id,
        api_keys.c.name,
        api_keys.c.customer_id,
        api_keys.c.admin,
        api_keys.c.prefix,
        api_keys.c.created_at,
        api_keys.c.revoked_at,
    )


def cmd_key_create(args: argparse.Namespace, config: Config, out: Output) -> int:
    from .api.auth import create_key
    from .api.resources import API_KEYS
    from .api.schema import coerce
    from .store.models import api_keys, customers

    if args.name is not None:
        _, problem = coerce(API_KEYS.by_name["name"], args.name)
        if problem:
            raise CtlError(f"--name: {problem}", USAGE, "usage")

    def work(conn: Connection) -> tuple[dict[str, Any], str]:
        if args.customer is not None:
            found = conn.execute(select(exists().where(customers.c.id == args.customer))).scalar()
            if not found:
                raise CtlError(f"there is no customer with id {args.customer}", kind="not-found")
        key_id, key = create_key(
            conn, _now(), admin=args.admin, customer_id=args.customer, name=args.name
        )
        row = conn.execute(select(*_key_columns()).where(api_keys.c.id == key_id)).one()
        return _key_row(row), key

    store = Store(config).existing()
    try:
        body, key = store.run(work)
    finally:
        store.close()
    out.document({**body, "key": key})
    who = "admin" if body["admin"] else f"customer {body['customer_id']}"
    name = f", name {body['name']!r}" if body["name"] else ""
    out.line(f"created {who} API key {body['id']} (prefix {body['prefix']}{name}); it is shown only now:")
    out.line(key)
    return OK


def cmd_key_list(args: argparse.Namespace, config: Config, out: Output) -> int:
    from .store.models import api_keys

    query = select(*_key_columns()).order_by(api_keys.c.id)
    if not args.all:
        query = query.where(api_keys.c.revoked_at.is_(None))
    if args.customer is not None:
        query = query.where(api_keys.c.customer_id == args.customer)
    if args.admin:
        query = query.where(api_keys.c.admin.is_(True))

    store = Store(config).existing()
    try:
        items = store.run(lambda conn: [_key_row(r) for r in conn.execute(query)])
    finally:
        store.close()
    out.document({"items": items})
    out.table(
        ("ID", "PREFIX", "FOR", "NAME", "CREATED", "REVOKED"),
        [
            (
                k["id"],
                k["prefix"],
                "admin" if k["admin"] else f"customer {k['customer_id']}",
                k["name"],
                k["created_at"],
                k["revoked_at"] or "",
            )
            for k in items
        ],
    )
    return OK


def cmd_key_revoke(args: argparse.Namespace, config: Config, out: Output) -> int:
    from .store.models import api_keys

    now = _now()

    def work(conn: Connection) -> tuple[dict[str, Any], bool, int]:
        row = conn.execute(select(*_key_columns()).where(api_keys.c.id == args.id)).first()
        if row is None:
            raise CtlError(f"there is no API key with id {args.id}", kind="not-found")
        already = row.revoked_at is not None
        if not already:
            conn.execute(
                update(api_keys)
                .where(api_keys.c.id == args.id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = conn.execute(select(*_key_columns()).where(api_keys.c.id == args.id)).one()
        admins = len(
            conn.execute(
                select(api_keys.c.id).where(api_keys.c.admin.is_(True), api_keys.c.revoked_at.is_(None))
            ).all()
        )
        return _key_row(row), already, admins

    store = Store(config).existing()
    try:
        body, already, admins = store.run(work)
    finally:
        store.close()
    out.document({**body, "already_revoked": already, "active_admin_keys": admins})
    if already:
        out.line(f"API key {body['id']} (prefix {body['prefix']}) was already revoked at {body['revoked_at']}")
        return OK
    out.line(f"revoked API key {body['id']} (prefix {body['prefix']})")
    cache = config.api.auth_cache_seconds
    if cache > 0:
        out.line(
            f"note: a running switchd may still accept it for up to {cache:g} s "
            "([api] auth_cache_seconds)"
        )
    if body["admin"] and admins == 0:
        out.line(f"note: no admin key is left; create one with '{PROG} api-key create --admin'")
    return OK


# -- customer ----------------------------------------------------------------------


def cmd_customer_list(args: argparse.Namespace, config: Config, out: Output) -> int:
    from .api.resources import CUSTOMERS
    from .api.schema import render
    from .store.models import customers

    query = select(*[customers.c[f.name] for f in CUSTOMERS.output_fields]).order_by(customers.c.id)
    if args.status is not None:
        query = query.where(customers.c.status == args.status)
    store = Store(config).existing()
    try:
        items = store.run(lambda conn: [render(CUSTOMERS, r) for r in conn.execute(query)])
    finally:
        store.close()
    out.document({"items": items})
    out.table(
        ("ID", "NAME", "STATUS", "COMPANY", "EMAIL", "PHONE", "CREATED"),
        [(c["id"], c["name"], c["status"], c["company"], c["email"], c["phone"], c["created_at"]) for c in items],
    )
    return OK


# -- health --------------------------------------------------------------------------


def _check(name: str, status: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "status": status, "detail": detail, **extra}


def check_database(config: Config, timeout: float) -> dict[str, Any]:
    store = Store(config, timeout=timeout)
    base = {"database": store.display_url, "backend": store.backend}
    missing = store.missing_file()
    if missing is not None:
        return _check(
            "database", "fail",
            f"there is no database at {missing}; run '{upgrade_hint(config)}' or start switchd",
            **base,
        )
    try:
        current = store.revision()
    except CtlError as e:
        return _check("database", "fail", str(e), **base)
    finally:
        store.close()
    state = revision_state(current)
    base.update(revision=current, head=state["head"])
    if state["at_head"]:
        return _check("database", "ok", f"{store.display_url} reachable, schema at revision {current} (head)", **base)
    if not state["known"]:
        problem = f"the schema is at revision {current}, unknown to this switchctl (head {state['head']})"
    else:
        problem = (
            f"the schema is at revision {current or 'none'} but this switchd needs "
            f"{state['head']}; run '{upgrade_hint(config)}'"
        )
    return _check("database", "fail", f"{store.display_url} reachable, but {problem}", **base)


def split_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """A Twisted endpoint string as (kind, positional, keyword), unescaping ``\\``."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in description:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    positional: list[str] = []
    keyword: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            keyword[key] = value
        else:
            positional.append(part)
    return parts[0].lower(), positional, keyword


def probe_target(description: str) -> tuple[str, Any] | str:
    """("http"/"https", (host, port)) or ("unix", path); a string says why not."""
    kind, positional, keyword = split_endpoint(description)
    if kind in ("tcp", "tcp6", "ssl"):
        port_text = keyword.get("port", positional[0] if positional else "")
        if kind in ("tcp", "tcp6"):
            interface = keyword.get("interface", positional[1] if len(positional) > 1 else "")
        else:
            interface = keyword.get("interface", "")
        if not port_text.isdigit():
            return f"no port in {description!r}"
        port = int(port_text)
        if port == 0:
            return f"{description!r} listens on a port chosen at start; give --api-url"
        if interface in ("", "0.0.0.0"):
            interface = "::1" if kind == "tcp6" else "127.0.0.1"
        elif interface == "::":
            interface = "::1"
        return ("https" if kind == "ssl" else "http", (interface, port))
    if kind == "unix":
        path = keyword.get("address", positional[0] if positional else "")
        if not path:
            return f"no socket path in {description!r}"
        return ("unix", path)
    return f"cannot probe {kind!r} endpoints; give --api-url"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _get_health(scheme: str, target: Any, path: str, timeout: float) -> tuple[int, bytes]:
    conn: http.client.HTTPConnection
    if scheme == "unix":
        conn = _UnixHTTPConnection(target, timeout)
    elif scheme == "https":
        host, port = target
        # A local liveness probe: the certificate names the service, not 127.0.0.1.
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl._create_unverified_context())
    else:
        host, port = target
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json", "User-Agent": f"{PROG}/{__version__}"})
        response = conn.getresponse()
        return response.status, response.read(65536)
    finally:
        conn.close()


def check_api(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    if args.skip_api:
        return _check("api", "skipped", "not checked (--skip-api)")
    if args.api_url:
        parsed = urllib.parse.urlsplit(args.api_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise CtlError(f"--api-url: expected an http:// or https:// URL, got {args.api_url!r}", USAGE, "usage")
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
        except ValueError:
            raise CtlError(f"--api-url: bad port in {args.api_url!r}", USAGE, "usage") from None
        base = parsed.path.rstrip("/")
        path = base if base.endswith("/health") else base + "/health"
        scheme, target, shown = parsed.scheme, (parsed.hostname, port), f"{parsed.scheme}://{parsed.netloc}{path}"
    else:
        if not config.api.listen:
            return _check("api", "skipped", "not checked: no [api] listen endpoints are configured")
        reasons = []
        for description in config.api.listen:
            found = probe_target(description)
            if isinstance(found, tuple):
                break
            reasons.append(found)
        else:
            return _check("api", "skipped", "not checked: " + "; ".join(reasons))
        scheme, target = found
        path = "/health"
        if scheme == "unix":
            shown = f"unix:{target} GET {path}"
        else:
            host, port = target
            shown = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}{path}"
    try:
        status, raw = _get_health(scheme, target, path, args.timeout)
    except (OSError, http.client.HTTPException) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        return _check("api", "fail", f"{shown}: cannot get an answer: {reason} (is switchd running?)", url=shown)
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _check("api", "fail", f"{shown}: HTTP {status}, not a switchd health answer", url=shown)
    if status != 200 or body.get("status") != "ok":
        detail = body.get("detail") or body.get("title") or body.get("status")
        return _check("api", "fail", f"{shown}: HTTP {status}: {detail}", url=shown, answer=body)
    version = body.get("version")
    note = f"switchd {version}" if version else "switchd"
    if version and version != __version__:
        note += f" (this switchctl is {__version__})"
    note += f", its database {body.get('database', '?')}"
    if scheme == "https" and not args.api_url:
        note += " (TLS certificate not verified)"
    return _check("api", "ok", f"{shown}: {note}", url=shown, answer=body)


def cmd_health(args: argparse.Namespace, config: Config, out: Output) -> int:
    checks = [check_database(config, args.timeout), check_api(config, args)]
    failures = [c for c in checks if c["status"] == "fail"]
    reason = "; ".join(f"{c['name']}: {c['detail']}" for c in failures) or None
    out.document({"status": "fail" if failures else "ok", "reason": reason, "checks": checks})
    for c in checks:
        out.line(f"{c['name']}: {c['status']}: {c['detail']}")
    if failures:
        print(f"{PROG}: unhealthy: {reason}", file=sys.stderr)
        return FAILED
    return OK


# -- command line --------------------------------------------------------------------


def _positive_int(raw: str) -> int:
    try:
        value = int(raw, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {raw!r}") from None
    if not 1 <= value <= 2**63 - 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {raw!r}")
    return value


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {raw!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"expected 0 < seconds <= 3600, got {raw!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    # -c and --json are accepted before or after the command; SUPPRESS keeps a
    # subcommand from resetting what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON on stdout")

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Administer a switchd node: database schema, API keys, customers, health.",
        epilog="Settings come from FILE (optional), then SWITCHD_<SECTION>_<KEY> environment "
        "variables. Exit status: 0 ok, 1 failed or unhealthy, 2 configuration or usage error.",
    )
    parser.add_argument("-c", "--config", metavar="FILE", default=None, help="switchd configuration file (INI)")
    parser.add_argument("--json", action="store_true", default=False, help="print JSON on stdout")
    parser.add_argument("--version", action="version", version=f"{PROG} (switchd) {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    db = commands.add_parser("db", help="database schema", description="Database schema migrations.")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    p = db_commands.add_parser(
        "upgrade", parents=[common], help="migrate the schema to the newest revision",
        description="Migrate the configured database to the newest revision this switchd knows.",
    )
    p.set_defaults(handler=cmd_db_upgrade)
    p = db_commands.add_parser(
        "current", parents=[common], help="show the schema revision",
        description="Show the schema revision and whether it is behind the newest.",
    )
    p.set_defaults(handler=cmd_db_current)

    keys = commands.add_parser("api-key", help="API keys", description="API keys of the REST API.")
    key_commands = keys.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    p = key_commands.add_parser(
        "create", parents=[common], help="create a key and print it (last line)",
        description="Create an API key. The key is printed once, as the last line of output.",
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--admin", action="store_true", help="an admin key (sees and changes everything)")
    who.add_argument("--customer", metavar="ID", type=_positive_int, help="a key acting for customer ID")
    p.add_argument("--name", metavar="N", help="a label for the key")
    p.set_defaults(handler=cmd_key_create)
    p = key_commands.add_parser(
        "list", parents=[common], help="list keys (never their secrets)",
        description="List API keys: id, public prefix, owner, name. Secrets are never shown.",
    )
    p.add_argument("--customer", metavar="ID", type=_positive_int, help="only keys of customer ID")
    p.add_argument("--admin", action="store_true", help="only admin keys")
    p.add_argument("--all", action="store_true", help="include revoked keys")
    p.set_defaults(handler=cmd_key_list)
    p = key_commands.add_parser(
        "revoke", parents=[common], help="revoke a key", description="Revoke the API key with this id."
    )
    p.add_argument("id", metavar="ID", type=_positive_int)
    p.set_defaults(handler=cmd_key_revoke)

    customer = commands.add_parser("customer", help="customers", description="Customers.")
    customer_commands = customer.add_subparsers(dest="customer_command", metavar="ACTION", required=True)
    p = customer_commands.add_parser("list", parents=[common], help="list customers", description="List customers.")
    p.add_argument("--status", choices=("active", "suspended", "closed"), help="only customers in this status")
    p.set_defaults(handler=cmd_customer_list)

    p = commands.add_parser(
        "health", parents=[common], help="check the database and the running daemon",
        description="Check that the database is reachable and its schema current, and, when "
        "[api] listen is configured, ask the running switchd's GET /health. Exit 0 if "
        "healthy, 1 otherwise (the reason on one line of standard error).",
    )
    p.add_argument("--skip-api", action="store_true", help="check the database only")
    p.add_argument("--api-url", metavar="URL", help="ask this base URL's /health instead of [api] listen")
    p.add_argument("--timeout", metavar="SECONDS", type=_seconds, default=5.0, help="for each check (default 5)")
    p.set_defaults(handler=cmd_health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else USAGE
    out = Output(args.json)
    try:
        try:
            config = load(args.config)
        except ConfigError as e:
            raise CtlError(f"configuration error: {e}", USAGE, "configuration") from None
        try:
            return args.handler(args, config, out)
        except ConfigError as e:  # e.g. state_dir cannot be created
            raise CtlError(f"configuration error: {e}", USAGE, "configuration") from None
    except CtlError as e:
        out.document({"error": {"kind": e.kind, "message": str(e)}})
        print(f"{PROG}: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (| head): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
