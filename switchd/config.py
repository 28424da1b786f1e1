"""Process configuration: an INI file plus ``SWITCHD_<SECTION>_<KEY>`` overrides.

The file holds only process settings (listeners, database URL, paths, log
level); provisioning lives in the database. Every section and key is declared
here once, with its default, its parser and its meaning: the sample
``etc/switchd.ini`` and ``docs/configuration.rst`` are checked against this
schema by the test suite.

Errors never surface as tracebacks: :class:`ConfigError` names the file (or
environment variable), the section and the key, and says what is wrong.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

ENV_PREFIX = "SWITCHD_"


class ConfigError(Exception):
    """A configuration problem, rendered as one line naming where it is."""

    def __init__(
        self,
        source: str,
        problem: str,
        section: str | None = None,
        key: str | None = None,
    ) -> None:
        self.source = source
        self.section = section
        self.key = key
        self.problem = problem
        where = source
        if section is not None:
            where += f": [{section}]"
            if key is not None:
                where += f" {key}"
        super().__init__(f"{where}: {problem}")


# -- value parsers: each takes the raw string and returns the value or raises
# ValueError with a message fit for a sysadmin.


def parse_str(raw: str) -> str:
    return raw.strip()


def parse_int(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise ValueError(f"expected an integer, got {raw.strip()!r}") from None
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}, got {value}")
        return value

    return parse


def parse_float(minimum: float | None = None) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {raw.strip()!r}") from None
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected yes or no, got {raw.strip()!r}")


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw.strip()!r}")
        return value

    return parse


def parse_endpoints(raw: str) -> tuple[str, ...]:
    """Whitespace-separated Twisted server endpoint strings (may be empty)."""
    return tuple(raw.split())


def parse_words(raw: str) -> tuple[str, ...]:
    """Items separated by commas or whitespace."""
    return tuple(word for word in raw.replace(",", " ").split() if word)


def parse_cpus(raw: str) -> tuple[int, ...]:
    """CPU numbers and ranges (``0``, ``2-3,6``); empty: none."""
    cpus: set[int] = set()
    for word in parse_words(raw):
        low, _, high = word.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"{word!r} is not a CPU number or range (such as 0 or 2-3)")
        first, last = int(low), int(high or low)
        if last < first:
            raise ValueError(f"{word!r}: the range ends before it starts")
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def parse_database_url(raw: str) -> str:
    value = raw.strip()
    if value and not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg2:")):
        raise ValueError(
            "expected an sqlite:/// or postgresql:// URL (empty means the SQLite "
            "file under state_dir)"
        )
    return value


def setting(default: str, parse: Callable[[str], Any], doc: str) -> Any:
    """Declare one key: its default as written in the INI file, parser, meaning."""
    return field(
        default=parse(default),
        metadata={"raw_default": default, "parse": parse, "doc": doc},
    )


@dataclass(frozen=True)
class SwitchdSection:
    """[switchd]: the process as a whole."""

    state_dir: str = setting(
        "switchd-state",
        parse_str,
        "Directory for the SQLite database, the admin API key and other state. "
        "A relative path is taken from twistd's working directory.",
    )
    node_id: str = setting(
        "",
        parse_str,
        "Name of this node when several share one database (empty: the host name).",
    )
    cpu_affinity: tuple[int, ...] = setting(
        "",
        parse_cpus,
        "CPUs the daemon runs on (such as 2 or 2-3; empty: any). One CPU is usually best: the "
        "reactor and the database threads take turns holding the interpreter lock, and the "
        "turns are cheaper on one core (see docs/benchmarks.rst).",
    )
    gc_thresholds: tuple[str, ...] = setting(
        "1000 10 1000",
        parse_words,
        "Python garbage collector thresholds (generations 0, 1, 2), set once startup is done; "
        "objects alive then are frozen out of collections. The default keeps young collections "
        "short (a few ms with many calls up) and full ones rare (see docs/benchmarks.rst). "
        "Empty: the interpreter's defaults.",
    )


@dataclass(frozen=True)
class DatabaseSection:
    """[database]: where provisioning, CDRs and messages are stored."""

    url: str = setting(
        "",
        parse_database_url,
        "SQLAlchemy URL. Empty: an SQLite file <state_dir>/switchd.sqlite3, created and "
        "migrated at start. postgresql://user@host/db for PostgreSQL (migrate it with "
        "'switchctl -c FILE db upgrade').",
    )
    pool_size: int = setting(
        "8",
        parse_int(1, 256),
        "Database threads and connections (PostgreSQL). SQLite always uses one writer thread.",
    )
    auto_migrate: bool = setting(
        "no",
        parse_bool,
        "Migrate a PostgreSQL schema at start instead of refusing to start when it is behind. "
        "SQLite files are always migrated.",
    )


@dataclass(frozen=True)
class ApiSection:
    """[api]: the provisioning REST API, health and metrics."""

    listen: tuple[str, ...] = setting(
        "tcp:8080:interface=127.0.0.1",
        parse_endpoints,
        "Twisted endpoint strings the HTTP API listens on, separated by whitespace "
        "(empty: no API).",
    )
    max_body_bytes: int = setting(
        "1048576", parse_int(1024), "Largest request body accepted (413 beyond it)."
    )
    page_size: int = setting("100", parse_int(1, 1000), "Default page size of list endpoints.")
    auth_cache_seconds: float = setting(
        "5",
        parse_float(0),
        "How long a verified API key is trusted without asking the database again "
        "(0 disables the cache). Keys revoked through this node are dropped at once.",
    )
    idempotency_hours: float = setting(
        "24", parse_float(0), "How long a POST Idempotency-Key is remembered."
    )


@dataclass(frozen=True)
class SipSection:
    """[sip]: SIP transports, timers, registrar, trunks and protection."""

    listen: tuple[str, ...] = setting(
        "udp:5060 tcp:5060",
        parse_endpoints,
        "SIP listeners separated by whitespace: udp:PORT, tcp:PORT and "
        "tls:PORT:privateKey=KEY.pem:certKey=CERT.pem, each with an optional "
        ":interface=ADDRESS (IPv6 addresses in brackets or with escaped colons). "
        "Empty: no SIP.",
    )
    advertise: str = setting(
        "",
        parse_str,
        "Host or IP address put in Via and Contact (empty: the listening address, or the "
        "local address that routes to the peer when listening on all interfaces).",
    )
    t1_ms: int = setting("500", parse_int(50, 10000), "RFC 3261 T1: round-trip time estimate.")
    t2_ms: int = setting("4000", parse_int(100, 60000), "RFC 3261 T2: longest retransmit interval.")
    t4_ms: int = setting("5000", parse_int(100, 60000), "RFC 3261 T4: longest time a message stays in the network.")
    udp_mtu: int = setting(
        "1300",
        parse_int(500, 65000),
        "Requests larger than this go over TCP instead of UDP (RFC 3261 18.1.1).",
    )
    max_message_bytes: int = setting("65535", parse_int(1024, 1048576), "Largest SIP message accepted.")
    stream_idle_seconds: int = setting(
        "300", parse_int(10), "TCP and TLS connections with no traffic for this long are closed."
    )
    user_agent: str = setting("switchd", parse_str, "User-Agent and Server header value.")
    tls_ca_file: str = setting(
        "",
        parse_str,
        "PEM file of CA certificates trusted for outbound TLS (empty: the system's CAs).",
    )
    tls_verify: bool = setting(
        "yes", parse_bool, "Verify the certificate and name of TLS peers (RFC 5922)."
    )
    realm: str = setting("switchd", parse_str, "Digest realm of the registrar and of call authentication.")
    nonce_seconds: int = setting("300", parse_int(10, 86400), "Lifetime of a digest nonce (then stale=true).")
    digest_algorithms: tuple[str, ...] = setting(
        "SHA-256 MD5",
        parse_words,
        "Digest algorithms offered in challenges, in order (RFC 8760): SHA-256, MD5.",
    )
    min_expires: int = setting("60", parse_int(1), "Shortest registration accepted (423 below it).")
    max_expires: int = setting("3600", parse_int(1), "Longest registration granted.")
    default_expires: int = setting("3600", parse_int(1), "Registration time when the client names none.")
    max_contacts: int = setting("10", parse_int(1, 1000), "Contacts per SIP account; the oldest goes first.")
    nat_keepalive_seconds: int = setting(
        "30", parse_int(0), "OPTIONS interval to contacts behind NAT (0: off)."
    )
    trunk_register_expires: int = setting(
        "3600", parse_int(60), "Expires asked for when switchd registers to a trunk."
    )
    qualify_misses: int = setting(
        "3", parse_int(1, 100), "Unanswered OPTIONS in a row before a trunk is marked down."
    )
    qualify_timeout_ms: int = setting(
        "2000", parse_int(100, 60000), "How long an OPTIONS to a trunk may take before it counts as missed."
    )
    reload_seconds: int = setting(
        "10", parse_int(1, 3600), "How often trunk and connection settings are re-read from the database."
    )
    max_calls_in_setup: int = setting(
        "1000",
        parse_int(1),
        "Calls being set up (not yet answered) beyond which new INVITEs get 503 with Retry-After "
        "at once, before any database work: the switch sheds load instead of collapsing.",
    )
    udp_receive_buffer: int = setting(
        "4194304",
        parse_int(65536),
        "Receive buffer of SIP UDP sockets in bytes (capped by the kernel's net.core.rmem_max); "
        "absorbs bursts while the reactor is busy.",
    )
    failover_codes: tuple[str, ...] = setting(
        "408 480 500 502 503 504",
        parse_words,
        "Final answers from a trunk that send a call to the next trunk (486, 404 and 6xx never do).",
    )
    flood_rate: float = setting(
        "100", parse_float(0), "Requests per second allowed from one source address (0: no limit)."
    )
    flood_burst: float = setting("200", parse_float(1), "Burst allowed above flood_rate.")
    ban_seconds: int = setting("300", parse_int(1), "How long a flooding or guessing source is ignored.")
    auth_failures: int = setting(
        "10", parse_int(1), "Failed digest attempts from one address before it is banned."
    )
    auth_failure_window: int = setting(
        "60", parse_int(1), "Seconds over which auth_failures are counted."
    )
    scanner_user_agents: tuple[str, ...] = setting(
        "friendly-scanner sipvicious sipcli sip-scan VaxSIPUserAgent iWar SIVuS smap pplsip sundayddr",
        parse_words,
        "Requests whose User-Agent contains one of these words (case-insensitive) are dropped.",
    )
    trusted: tuple[str, ...] = setting(
        "127.0.0.0/8 ::1/128",
        parse_words,
        "Addresses and networks never banned (trunk peers are trusted too).",
    )


@dataclass(frozen=True)
class MediaSection:
    """[media]: the RTP relay every call goes through, recordings and prompts."""

    enabled: bool = setting(
        "true",
        parse_bool,
        "Relay the media of every call through switchd (false: SDP passes untouched and the "
        "endpoints exchange RTP directly; no recording, no in-band DTMF, no prompts).",
    )
    listen: str = setting(
        "",
        parse_str,
        "Local IP address the relay's RTP sockets bind to (empty: the address of the first "
        "[sip] listen endpoint, or 0.0.0.0 when that is a wildcard).",
    )
    advertise: str = setting(
        "",
        parse_str,
        "IP address written into SDP (c= lines) for the relay (empty: [sip] advertise or the "
        "listen address). Set it to the public address behind 1:1 NAT.",
    )
    port_min: int = setting(
        "20000", parse_int(1024, 65534), "Lowest RTP port of the relay (RTP even, RTCP the odd one above)."
    )
    port_max: int = setting(
        "29999", parse_int(1025, 65535), "Highest port of the relay; each call leg takes two ports."
    )
    timeout: int = setting(
        "60", parse_int(0), "Seconds without any RTP from either side before an answered call is "
        "ended (reason \"media timeout\"); 0 disables the check."
    )
    hold_timeout: int = setting(
        "3600", parse_int(0), "The same while the call is on hold (a=sendonly, a=inactive); 0 disables it."
    )
    strict_source: bool = setting(
        "false",
        parse_bool,
        "After latching, drop RTP from any address other than the latched one (protects against "
        "RTP injection; breaks endpoints that change source port mid-call).",
    )
    recordings_dir: str = setting(
        "",
        parse_str,
        "Where call recordings (stereo WAV, one channel per leg) are written, by date "
        "(empty: <state_dir>/recordings).",
    )
    prompts_dir: str = setting(
        "/usr/share/switchd/prompts",
        parse_str,
        "Announcement files: <dir>/<language>/<8-digit id>.wav or .au, then <dir>/<id>.wav or .au.",
    )
    tts_cache_dir: str = setting(
        "", parse_str, "Cache of spoken texts (empty: <state_dir>/tts)."
    )
    espeak: str = setting("espeak-ng", parse_str, "The espeak-ng program used to speak texts.")


@dataclass(frozen=True)
class SmppSection:
    """[smpp]: the SMPP 3.4 server customers' ESMEs bind to (SMPP connections)."""

    listen: tuple[str, ...] = setting(
        "tcp:2775",
        parse_endpoints,
        "Twisted endpoint strings the SMPP server listens on, separated by whitespace: "
        "tcp:PORT or ssl:PORT:privateKey=KEY.pem:certKey=CERT.pem for SMPP over TLS, each "
        "with an optional :interface=ADDRESS. Empty: no SMPP server.",
    )
    inactivity_timeout: float = setting(
        "60",
        parse_float(1),
        "Seconds without any PDU from a bound ESME before switchd sends enquire_link (the "
        "session is closed if that is not answered within response_timeout). A connection "
        "that has not bound within this time is closed.",
    )
    response_timeout: float = setting(
        "10",
        parse_float(0.1),
        "Seconds an ESME has to answer switchd's deliver_sm, enquire_link and unbind; an "
        "unanswered deliver_sm is kept and delivered again later.",
    )
    max_pdu_length: int = setting(
        "65536",
        parse_int(64, 1048576),
        "Largest PDU accepted, in octets; a longer command_length gets generic_nack "
        "ESME_RINVCMDLEN and the connection is closed.",
    )
    window: int = setting(
        "16",
        parse_int(1, 1000),
        "deliver_sm (receipts and MO) sent to one session and not answered yet; more wait "
        "until answers come.",
    )
    reload_seconds: int = setting(
        "10",
        parse_int(1, 3600),
        "How often bound SMPP connections are re-read from the database: a new reception "
        "speed applies, a removed connection, a changed password or a service that is no "
        "longer active unbinds the session.",
    )


@dataclass(frozen=True)
class IifSection:
    """[iif]: the callback interface application servers send REQUESTs to (seed 003)."""

    listen: str = setting(
        "0.0.0.0:5080",
        parse_str,
        "ADDRESS:PORT of the IIF UDP socket (the seed's default port is 5080; use [::]:5080 "
        "for IPv6). Empty: no IIF interface.",
    )
    peers: tuple[str, ...] = setting(
        "",
        parse_words,
        "Application servers served, as IP:PORT (or [IPv6]:PORT) separated by whitespace; "
        "PORT 0 accepts any source port of that address. Datagrams from anyone else are ignored "
        "and counted.",
    )
    service_id: int = setting(
        "0",
        parse_int(0),
        "The service that pays for callbacks requested by these peers: its account is charged "
        "and its routing group routes both calls. Required when peers are listed.",
    )
    default_caller: str = setting(
        "",
        parse_str,
        "Calling number presented on both calls (the seed's \"Default caller\"). Required unless "
        "external_line_mode is on.",
    )
    external_line_mode: bool = setting(
        "false",
        parse_bool,
        "Present the trunk's own number instead of default_caller (the seed's \"External line "
        "mode\").",
    )
    remember_seconds: int = setting(
        "600",
        parse_int(1, 86400),
        "How long a finished REQUEST id is remembered: a retransmission within this time gets "
        "the same ACK and RESPONSE again instead of a new callback.",
    )


@dataclass(frozen=True)
class CallbackSection:
    """[callback]: how switchd runs callbacks (IIF, click-to-dial, SMS, ANI)."""

    ring_seconds: int = setting(
        "60", parse_int(5, 600), "How long each party of a callback may ring before it counts as no answer."
    )
    balance_code: str = setting(
        "111", parse_str, "Digits that make the callback IVR speak the account's balance (empty: off)."
    )
    hangup_code: str = setting(
        "##", parse_str, "Digits with which user1 ends the second call and stays in the IVR for another number."
    )
    first_digit_seconds: float = setting(
        "15", parse_float(1), "Seconds the IVR waits for the first digit of a number."
    )
    next_digit_seconds: float = setting(
        "5", parse_float(1), "Seconds between digits after which the number is taken as complete (or #)."
    )
    language_menu: bool = setting(
        "yes", parse_bool, "The first time the IVR asks for a number, it also names the other languages, "
        "each in its own voice, with the keys that choose them (star 1 to star 5)."
    )
    ani_delay_seconds: float = setting(
        "2", parse_float(0), "After refusing a client's call to an ANI access number, wait this long before "
        "calling back (a phone still hanging up would not ring)."
    )


@dataclass(frozen=True)
class Config:
    """The whole process configuration."""

    source: str = "<defaults>"
    switchd: SwitchdSection = field(default_factory=SwitchdSection)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    api: ApiSection = field(default_factory=ApiSection)
    sip: SipSection = field(default_factory=SipSection)
    media: MediaSection = field(default_factory=MediaSection)
    smpp: SmppSection = field(default_factory=SmppSection)
    iif: IifSection = field(default_factory=IifSection)
    callback: CallbackSection = field(default_factory=CallbackSection)

    @property
    def state_dir(self) -> str:
        return os.path.abspath(self.switchd.state_dir)

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return "sqlite:///" + os.path.join(self.state_dir, "switchd.sqlite3")


SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(Config)
    if f.name != "source"
}


def section_keys(section: str) -> list[dataclasses.Field]:
    """The declared keys of one section, in declaration order."""
    return list(dataclasses.fields(SECTIONS[section]))


def _env_overrides(environ: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """(variable, section, key, raw) for every ``SWITCHD_*`` variable."""
    found = []
    # Longest section names first so SWITCHD_SWITCHD_X is not read as [sw...].
    names = sorted(SECTIONS, key=len, reverse=True)
    for var, raw in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):].lower()
        for section in names:
            if rest.startswith(section + "_"):
                found.append((var, section, rest[len(section) + 1:], raw))
                break
        else:
            raise ConfigError(
                f"environment variable {var}",
                f"names no section; known sections: {', '.join(SECTIONS)}",
            )
    return found


def load(path: str | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the INI file at ``path`` (None: embedded defaults) and the environment."""
    if environ is None:
        environ = os.environ
    raw: dict[str, dict[str, tuple[str, str]]] = {name: {} for name in SECTIONS}
    source = path or "<defaults>"
    if path is not None:
        parser = configparser.ConfigParser(
            interpolation=None, strict=True, default_section="\0none"
        )
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            with open(path, encoding="utf-8") as f:
                parser.read_file(f, source=path)
        except OSError as e:
            raise ConfigError(path, f"cannot read the file: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(path, "the file is not UTF-8 text") from None
        except configparser.Error as e:
            message = str(e).splitlines()[0]
            raise ConfigError(path, f"not a valid INI file: {message}") from None
        for section in parser.sections():
            if section not in SECTIONS:
                raise ConfigError(
                    path,
                    f"unknown section; known sections: {', '.join(SECTIONS)}",
                    section,
                )
            for key, value in parser.items(section):
                raw[section][key] = (path, value)
    for var, section, key, value in _env_overrides(environ):
        raw[section][key] = (f"environment variable {var}", value)

    sections = {}
    for name, cls in SECTIONS.items():
        declared = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, (origin, value) in raw[name].items():
            if key not in declared:
                raise ConfigError(
                    origin,
                    f"unknown key; known keys: {', '.join(declared)}",
                    name,
                    key,
                )
            try:
                values[key] = declared[key].metadata["parse"](value)
            except ValueError as e:
                raise ConfigError(origin, str(e), name, key) from None
        sections[name] = cls(**values)
    media = sections["media"]
    if media.port_max - media.port_min < 3:
        origin = raw["media"].get("port_max", raw["media"].get("port_min", (source, "")))[0]
        raise ConfigError(origin, "port_max must be at least port_min + 3 (two legs of two ports)", "media", "port_max")
    return Config(source=source, **sections)


def render_sample() -> str:
    """The documented sample file: every key commented out at its default."""
    import textwrap

    lines = [
        "# switchd configuration.",
        "#",
        "# Every key is shown at its default, commented out: uncomment to change.",
        "# Any key can also be set from the environment as SWITCHD_<SECTION>_<KEY>",
        "# (for example SWITCHD_API_LISTEN or SWITCHD_DATABASE_URL), which wins over",
        "# this file. Provisioning (customers, trunks, tariffs...) lives in the",
        "# database and is managed through the REST API, not here.",
    ]
    for name, cls in SECTIONS.items():
        lines += ["", f"[{name}]"]
        doc = (cls.__doc__ or "").strip().split(": ", 1)[-1]
        if doc:
            lines.append(f"# {doc}")
        for f in dataclasses.fields(cls):
            lines.append("")
            for chunk in textwrap.wrap(f.metadata["doc"], 76, break_on_hyphens=False):
                lines.append(f"# {chunk}")
            default = f.metadata["raw_default"]
            lines.append(f"#{f.name} = {default}" if default else f"#{f.name} =")
    return "\n".join(lines) + "\n"


KEYS_BEGIN = ".. keys: generated by 'python -m switchd.config --rst' from switchd/config.py"
KEYS_END = ".. end of keys"


def render_rst_keys() -> str:
    """The keys section of docs/configuration.rst."""
    import textwrap

    out = [KEYS_BEGIN, ""]
    for name, cls in SECTIONS.items():
        title = f"[{name}]"
        out += [title, "-" * len(title), "", (cls.__doc__ or "").strip().split(": ", 1)[-1], ""]
        for f in dataclasses.fields(cls):
            raw = f.metadata["raw_default"]
            out.append(f"``{f.name}`` (default: ``{raw}``)" if raw else f"``{f.name}`` (default: empty)")
            out += textwrap.wrap(f.metadata["doc"], 84, initial_indent="    ", subsequent_indent="    ",
                                 break_on_hyphens=False)
            out.append("")
    out.append(KEYS_END)
    return "\n".join(out) + "\n"


def _main(argv: list[str]) -> int:
    """``python -m switchd.config --ini | --rst [FILE]``: regenerate the sample or the docs."""
    if argv[:1] == ["--ini"]:
        print(render_sample(), end="")
        return 0
    if argv[:1] == ["--rst"]:
        if len(argv) > 1:
            with open(argv[1], encoding="utf-8") as f:
                text = f.read()
            head, _, rest = text.partition(KEYS_BEGIN)
            _, _, tail = rest.partition(KEYS_END + "\n")
            with open(argv[1], "w", encoding="utf-8") as f:
                f.write(head + render_rst_keys() + tail)
        else:
            print(render_rst_keys(), end="")
        return 0
    print("usage: python -m switchd.config --ini | --rst [docs/configuration.rst]")
    return 2


if __name__ == "__main__":
    import sys

    raise SystemExit(_main(sys.argv[1:]))
