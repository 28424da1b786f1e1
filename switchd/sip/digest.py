"""Sans-IO HTTP Digest authentication for SIP (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760).

Server side: :class:`DigestServer` issues challenges and verifies
``Authorization`` / ``Proxy-Authorization`` credentials against a stored
password or precomputed HA1 values.  Nonces are stateless: each one carries
its issue time and an HMAC-SHA-256 of it under the server secret, so any
node holding the secret can check it; a nonce older than the configured
lifetime is *stale* (the client is re-challenged with ``stale=true``).  A
bounded replay guard remembers the nonce-counts seen for each nonce and
rejects a reused ``nc``.

Client side: :func:`parse_challenge` reads ``WWW-Authenticate`` /
``Proxy-Authenticate``, :func:`select_challenge` picks the strongest
supported one (RFC 8760 §2.4), and :class:`DigestClient` answers it with a
``cnonce`` from :mod:`secrets` and an incrementing ``nc``.

Algorithms: MD5, MD5-sess, SHA-256 and SHA-256-sess; qop ``auth``,
``auth-int`` or none (RFC 2069 compatibility).  Time is always passed in as
a number of seconds; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "ALGORITHMS",
    "DigestChallenge",
    "DigestClient",
    "DigestCredentials",
    "DigestError",
    "DigestResult",
    "DigestServer",
    "compute_ha1",
    "compute_response",
    "format_auth_params",
    "parse_auth_header",
    "parse_challenge",
    "parse_credentials",
    "select_challenge",
]

_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}

#: Supported algorithm names, strongest first (RFC 8760 preference order).
ALGORITHMS = ("SHA-256", "SHA-256-sess", "MD5", "MD5-sess")

_CANONICAL_ALGORITHMS = {name.lower(): name for name in ALGORITHMS}


class DigestError(ValueError):
    """A malformed or unsupported challenge or credentials header."""


# --------------------------------------------------------------------------
# Header syntax (RFC 7235 §2.1 / RFC 3261 §25.1 auth-param lists)
# --------------------------------------------------------------------------

_TOKEN = r"[A-Za-z0-9.!%*_+`'~\-]+"
_SCHEME_RE = re.compile(r"[ \t]*(" + _TOKEN + r")(?:[ \t]+|$)")
_AUTH_PARAM_RE = re.compile(
    r"[ \t]*(" + _TOKEN + r")[ \t]*=[ \t]*(\"(?:[^\"\\]|\\[\s\S])*\"|" + _TOKEN + r"|[^\s,\"]+)[ \t]*"
)
_QUOTED_PAIR_RE = re.compile(r"\\([\s\S])")
_NC_RE = re.compile(r"[0-9A-Fa-f]{8}")

# Parameters that are quoted-strings in the syntax of RFC 2617/7616.
_QUOTED = frozenset(
    {"realm", "nonce", "opaque", "domain", "username", "uri", "response", "cnonce", "userhash"}
)


def parse_auth_header(value: str) -> tuple[str, dict[str, str]]:
    """Split an auth header into its scheme and ``name=value`` parameters.

    Parameter names are lower-cased; quoted values are unquoted.  Commas
    inside quoted strings are honoured.  Raises :class:`DigestError`.
    """
    m = _SCHEME_RE.match(value)
    if m is None:
        raise DigestError("missing authentication scheme")
    scheme = m.group(1)
    params: dict[str, str] = {}
    pos = m.end()
    size = len(value)
    expect_param = True
    while pos < size:
        if value[pos] in " \t":
            pos += 1
            continue
        if value[pos] == ",":
            pos += 1
            expect_param = True
            continue
        if not expect_param:
            raise DigestError("missing comma between parameters")
        m = _AUTH_PARAM_RE.match(value, pos)
        if m is None:
            raise DigestError("malformed authentication parameter")
        name = m.group(1).lower()
        raw = m.group(2)
        if raw.startswith('"'):
            raw = _QUOTED_PAIR_RE.sub(r"\1", raw[1:-1])
        if name in params:
            raise DigestError(f"duplicate parameter {name}")
        params[name] = raw
        pos = m.end()
        expect_param = False
    return scheme, params


def format_auth_params(scheme: str, params: Iterable[tuple[str, str]]) -> str:
    """Format ``scheme name=value, ...``, quoting the values RFC 2617/7616 quote."""
    parts = []
    for name, value in params:
        if "\r" in value or "\n" in value:
            raise ValueError("authentication parameters may not contain CR or LF")
        if name in _QUOTED:
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{name}="{escaped}"')
        else:
            parts.append(f"{name}={value}")
    return f"{scheme} " + ", ".join(parts)


def _algorithm(value: str | None) -> str:
    if value is None:
        return "MD5"
    try:
        return _CANONICAL_ALGORITHMS[value.lower()]
    except KeyError:
        raise DigestError(f"unsupported algorithm {value}") from None


# --------------------------------------------------------------------------
# Challenge and credentials
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DigestChallenge:
    """A Digest challenge (``WWW-Authenticate`` / ``Proxy-Authenticate``)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ("auth",)
    opaque: str | None = None
    stale: bool = False
    domain: str | None = None

    def __str__(self) -> str:
        params = [("realm", self.realm)]
        if self.domain is not None:
            params.append(("domain", self.domain))
        params.append(("nonce", self.nonce))
        if self.opaque is not None:
            params.append(("opaque", self.opaque))
        if self.stale:
            params.append(("stale", "true"))
        params.append(("algorithm", self.algorithm))
        if self.qop:
            params.append(("qop", '"' + ",".join(self.qop) + '"'))
        return format_auth_params("Digest", params)


def parse_challenge(value: str) -> DigestChallenge:
    """Parse a ``WWW-Authenticate`` / ``Proxy-Authenticate`` Digest challenge."""
    scheme, params = parse_auth_header(value)
    if scheme.lower() != "digest":
        raise DigestError(f"unsupported authentication scheme {scheme}")
    if "realm" not in params or "nonce" not in params:
        raise DigestError("challenge lacks realm or nonce")
    qop = tuple(q.strip() for q in params["qop"].split(",") if q.strip()) if "qop" in params else ()
    return DigestChallenge(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=_algorithm(params.get("algorithm")),
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
        domain=params.get("domain"),
    )


def select_challenge(challenges: Iterable[str]) -> DigestChallenge:
    """Pick the challenge with the strongest supported algorithm (RFC 8760 §2.4).

    ``challenges`` are the values of every WWW-Authenticate (or
    Proxy-Authenticate) header of a response.  Unsupported or malformed
    ones are skipped; :class:`DigestError` if none is usable.
    """
    best: DigestChallenge | None = None
    for value in challenges:
        try:
            challenge = parse_challenge(value)
        except DigestError:
            continue
        if best is None or ALGORITHMS.index(challenge.algorithm) < ALGORITHMS.index(best.algorithm):
            best = challenge
    if best is None:
        raise DigestError("no supported Digest challenge")
    return best


@dataclass(frozen=True)
class DigestCredentials:
    """Digest credentials (``Authorization`` / ``Proxy-Authorization``)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None

    def __str__(self) -> str:
        params = [
            ("username", self.username),
            ("realm", self.realm),
            ("nonce", self.nonce),
            ("uri", self.uri),
            ("response", self.response),
            ("algorithm", self.algorithm),
        ]
        if self.cnonce is not None:
            params.append(("cnonce", self.cnonce))
        if self.opaque is not None:
            params.append(("opaque", self.opaque))
        if self.qop is not None:
            params.append(("qop", self.qop))
        if self.nc is not None:
            params.append(("nc", self.nc))
        return format_auth_params("Digest", params)


def parse_credentials(value: str) -> DigestCredentials:
    """Parse an ``Authorization`` / ``Proxy-Authorization`` Digest header.

    Raises :class:`DigestError` for other schemes (RFC 4475 §3.3.7) and for
    incomplete or inconsistent credentials.
    """
    scheme, params = parse_auth_header(value)
    if scheme.lower() != "digest":
        raise DigestError(f"unsupported authentication scheme {scheme}")
    for name in ("username", "realm", "nonce", "uri", "response"):
        if name not in params:
            raise DigestError(f"credentials lack {name}")
    qop = params.get("qop")
    nc = params.get("nc")
    cnonce = params.get("cnonce")
    if qop is not None:
        if qop.lower() not in ("auth", "auth-int"):
            raise DigestError(f"unsupported qop {qop}")
        qop = qop.lower()
        if nc is None or cnonce is None or _NC_RE.fullmatch(nc) is None:
            raise DigestError("qop requires a cnonce and an 8-digit hexadecimal nc")
    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"],
        algorithm=_algorithm(params.get("algorithm")),
        qop=qop,
        nc=nc,
        cnonce=cnonce,
        opaque=params.get("opaque"),
    )


# --------------------------------------------------------------------------
# Digest computation (RFC 7616 §3.4)
# --------------------------------------------------------------------------


def _hash(algorithm: str, data: str) -> str:
    base = algorithm[:-5] if algorithm.endswith("-sess") else algorithm
    return _HASHES[base](data.encode("utf-8", "surrogateescape")).hexdigest()


def compute_ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """``H(username:realm:password)``, the value a server may store instead of the password.

    For the ``-sess`` algorithms this is the stored part; the session key
    is derived from it by :func:`compute_response`.
    """
    return _hash(_algorithm(algorithm), f"{username}:{realm}:{password}")


def compute_response(
    algorithm: str,
    ha1: str,
    *,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The request-digest for ``ha1`` (as returned by :func:`compute_ha1`)."""
    algorithm = _algorithm(algorithm)
    if algorithm.endswith("-sess"):
        if cnonce is None:
            raise DigestError("-sess algorithms need a cnonce")
        ha1 = _hash(algorithm, f"{ha1}:{nonce}:{cnonce}")
    if qop == "auth-int":
        base = algorithm[:-5] if algorithm.endswith("-sess") else algorithm
        ha2 = _hash(algorithm, f"{method}:{uri}:{_HASHES[base](body).hexdigest()}")
    else:
        ha2 = _hash(algorithm, f"{method}:{uri}")
    if qop is None:
        return _hash(algorithm, f"{ha1}:{nonce}:{ha2}")
    if nc is None or cnonce is None:
        raise DigestError("qop requires nc and cnonce")
    return _hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# --------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------


class DigestResult(enum.Enum):
    """Outcome of :meth:`DigestServer.verify`."""

    #: The credentials are valid.
    OK = "ok"
    #: The digest matched but the nonce expired: re-challenge with ``stale=true``.
    STALE = "stale"
    #: The nonce-count was already used with this nonce: a replay.
    REPLAY = "replay"
    #: Wrong password, forged or foreign nonce, or inconsistent credentials.
    FAILED = "failed"


_NONCE_STRUCT = struct.Struct(">Q8s")  # issue time in milliseconds, 64 random bits
_NONCE_MAC_SIZE = 16
_NONCE_SIZE = _NONCE_STRUCT.size + _NONCE_MAC_SIZE
_REPLAY_WINDOW = 64


@dataclass
class _NonceUse:
    expires: float
    highest: int = 0
    window: int = 0  # bit i set: nc (highest - i) was seen


class DigestServer:
    """Issue Digest challenges and verify credentials for one realm.

    ``secret`` signs the nonces; servers sharing it accept each other's
    nonces.  ``lifetime`` is how long (seconds) a nonce stays fresh.
    ``max_tracked_nonces`` bounds the replay guard's memory: when it is
    full the oldest entries are evicted, and a nonce that is no longer
    tracked is only accepted again with ``nc=00000001`` (otherwise it is
    reported :attr:`DigestResult.STALE`, forcing the client onto a new one).
    """

    def __init__(
        self,
        secret: bytes,
        realm: str,
        *,
        lifetime: float = 300.0,
        algorithms: Iterable[str] = ("SHA-256", "MD5"),
        qop: Iterable[str] = ("auth",),
        allow_no_qop: bool = False,
        max_tracked_nonces: int = 100_000,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the nonce secret must be at least 16 bytes long")
        if lifetime <= 0:
            raise ValueError("lifetime must be positive")
        self._secret = bytes(secret)
        self.realm = realm
        self.lifetime = lifetime
        self.algorithms = tuple(_algorithm(a) for a in algorithms)
        if not self.algorithms:
            raise ValueError("at least one algorithm is needed")
        self.qop = tuple(qop)
        for value in self.qop:
            if value not in ("auth", "auth-int"):
                raise ValueError(f"unsupported qop {value}")
        self.allow_no_qop = allow_no_qop or not self.qop
        self.max_tracked_nonces = max_tracked_nonces
        self._uses: OrderedDict[str, _NonceUse] = OrderedDict()

    # -- nonces ---------------------------------------------------------------

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self._secret, self.realm.encode() + b"\0" + data, hashlib.sha256).digest()[
            :_NONCE_MAC_SIZE
        ]

    def make_nonce(self, now: float) -> str:
        """A new nonce stamped with ``now`` (seconds since any fixed epoch)."""
        body = _NONCE_STRUCT.pack(max(0, int(now * 1000)), secrets.token_bytes(8))
        return base64.urlsafe_b64encode(body + self._mac(body)).decode("ascii").rstrip("=")

    def nonce_issued_at(self, nonce: str) -> float | None:
        """The issue time of one of our nonces, or ``None`` if it is forged or foreign."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _NONCE_SIZE:
            return None
        body, mac = raw[: _NONCE_STRUCT.size], raw[_NONCE_STRUCT.size:]
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        millis: int = _NONCE_STRUCT.unpack(body)[0]
        return millis / 1000.0

    def opaque_for(self, nonce: str) -> str:
        """The opaque value bound to ``nonce`` (checked statelessly on return)."""
        return hmac.new(self._secret, b"opaque\0" + nonce.encode(), hashlib.sha256).hexdigest()[:16]

    # -- challenges -------------------------------------------------------------

    def challenge(self, now: float, *, algorithm: str | None = None, stale: bool = False) -> DigestChallenge:
        """A fresh challenge; ``algorithm`` defaults to the first configured one."""
        algorithm = self.algorithms[0] if algorithm is None else _algorithm(algorithm)
        if algorithm not in self.algorithms:
            raise ValueError(f"algorithm {algorithm} is not enabled")
        nonce = self.make_nonce(now)
        return DigestChallenge(
            realm=self.realm,
            nonce=nonce,
            algorithm=algorithm,
            qop=self.qop,
            opaque=self.opaque_for(nonce),
            stale=stale,
        )

    def challenges(self, now: float, *, stale: bool = False) -> list[DigestChallenge]:
        """One challenge per configured algorithm, strongest first (RFC 8760 §2.4).

        Each goes into its own WWW-Authenticate / Proxy-Authenticate header;
        they share one nonce.
        """
        nonce = self.make_nonce(now)
        opaque = self.opaque_for(nonce)
        return [
            DigestChallenge(realm=self.realm, nonce=nonce, algorithm=algorithm, qop=self.qop,
                            opaque=opaque, stale=stale)
            for algorithm in self.algorithms
        ]

    # -- verification -------------------------------------------------------------

    def verify(
        self,
        credentials: DigestCredentials | str,
        *,
        method: str,
        now: float,
        password: str | None = None,
        ha1: Mapping[str, str] | None = None,
        request_uri: str | None = None,
        body: bytes = b"",
    ) -> DigestResult:
        """Check credentials for a request with ``method`` received at ``now``.

        Give either the user's ``password`` or ``ha1``, a mapping from
        algorithm name (``"MD5"``, ``"SHA-256"``) to the stored
        ``H(username:realm:password)``.  When ``request_uri`` is given the
        credentials' ``uri`` must equal it.  ``body`` is needed for qop
        ``auth-int``.  Returns :attr:`DigestResult.OK` only when every check
        passes; the nonce-count is recorded only then.
        """
        if isinstance(credentials, str):
            try:
                credentials = parse_credentials(credentials)
            except DigestError:
                return DigestResult.FAILED
        if (password is None) == (ha1 is None):
            raise ValueError("give exactly one of password and ha1")
        creds = credentials
        if creds.realm != self.realm or creds.algorithm not in self.algorithms:
            return DigestResult.FAILED
        if request_uri is not None and creds.uri != request_uri:
            return DigestResult.FAILED
        if creds.qop is None:
            if not self.allow_no_qop:
                return DigestResult.FAILED
        elif creds.qop not in self.qop:
            return DigestResult.FAILED
        issued = self.nonce_issued_at(creds.nonce)
        if issued is None:
            return DigestResult.FAILED
        if creds.opaque is not None and not hmac.compare_digest(creds.opaque, self.opaque_for(creds.nonce)):
            return DigestResult.FAILED
        base = creds.algorithm[:-5] if creds.algorithm.endswith("-sess") else creds.algorithm
        if password is not None:
            stored = compute_ha1(base, creds.username, self.realm, password)
        else:
            assert ha1 is not None
            stored = ha1.get(base) or ha1.get(creds.algorithm) or ""
            if not stored:
                return DigestResult.FAILED
        try:
            expected = compute_response(
                creds.algorithm, stored.lower(), method=method, uri=creds.uri, nonce=creds.nonce,
                qop=creds.qop, nc=creds.nc, cnonce=creds.cnonce, body=body,
            )
        except DigestError:
            return DigestResult.FAILED
        if not hmac.compare_digest(expected.encode(), creds.response.lower().encode()):
            return DigestResult.FAILED
        if now - issued > self.lifetime or issued - now > self.lifetime:
            return DigestResult.STALE
        return self._record_use(creds.nonce, creds.nc, issued, now)

    def _record_use(self, nonce: str, nc_text: str | None, issued: float, now: float) -> DigestResult:
        self._expire(now)
        if nc_text is None:
            return DigestResult.OK  # RFC 2069 style: no nonce-count, only the lifetime applies
        nc = int(nc_text, 16)
        use = self._uses.get(nonce)
        if use is None:
            if nc != 1:
                return DigestResult.STALE  # untracked (evicted?) nonce: demand a fresh one
            while len(self._uses) >= self.max_tracked_nonces:
                self._uses.popitem(last=False)
            self._uses[nonce] = _NonceUse(expires=issued + self.lifetime, highest=1, window=1)
            return DigestResult.OK
        if nc > use.highest:
            shift = nc - use.highest
            use.window = ((use.window << shift) | 1) & ((1 << _REPLAY_WINDOW) - 1)
            use.highest = nc
            return DigestResult.OK
        offset = use.highest - nc
        if offset >= _REPLAY_WINDOW or use.window & (1 << offset):
            return DigestResult.REPLAY
        use.window |= 1 << offset
        return DigestResult.OK

    def _expire(self, now: float) -> None:
        uses = self._uses
        while uses:
            nonce, use = next(iter(uses.items()))
            if use.expires >= now:
                break
            del uses[nonce]


# --------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------


class DigestClient:
    """Answer Digest challenges for one user (RFC 3261 §22.2, §22.3).

    Keeps the nonce-count per nonce (for the most recent ``max_nonces``
    nonces), so repeated requests answering the same challenge carry
    ``nc`` 1, 2, 3...  A fresh ``cnonce`` is drawn from :mod:`secrets` for
    each answer.
    """

    def __init__(self, username: str, password: str, *, max_nonces: int = 64) -> None:
        self.username = username
        self.password = password
        self.max_nonces = max_nonces
        self._counts: OrderedDict[str, int] = OrderedDict()

    def __repr__(self) -> str:
        return f"DigestClient(username={self.username!r})"

    def authorize(
        self,
        challenge: DigestChallenge | str,
        *,
        method: str,
        uri: str,
        body: bytes = b"",
    ) -> DigestCredentials:
        """Credentials answering ``challenge`` for a request; ``str()`` them into the header.

        qop ``auth`` is preferred, ``auth-int`` used when it is the only one
        offered, and no qop when the challenge offers none.
        """
        if isinstance(challenge, str):
            challenge = parse_challenge(challenge)
        offered = [q.lower() for q in challenge.qop]
        if not offered:
            qop = None
        elif "auth" in offered:
            qop = "auth"
        elif "auth-int" in offered:
            qop = "auth-int"
        else:
            raise DigestError("no supported qop offered")
        nc = cnonce = None
        if qop is not None or challenge.algorithm.endswith("-sess"):
            cnonce = secrets.token_hex(16)
        if qop is not None:
            count = self._counts.pop(challenge.nonce, 0) + 1
            while len(self._counts) >= self.max_nonces:
                self._counts.popitem(last=False)
            self._counts[challenge.nonce] = count
            nc = f"{count:08x}"
        ha1 = compute_ha1(challenge.algorithm, self.username, challenge.realm, self.password)
        response = compute_response(
            challenge.algorithm, ha1, method=method, uri=uri, nonce=challenge.nonce,
            qop=qop, nc=nc, cnonce=cnonce, body=body,
        )
        return DigestCredentials(
            username=self.username,
            realm=challenge.realm,
            nonce=challenge.nonce,
            uri=uri,
            response=response,
            algorithm=challenge.algorithm,
            qop=qop,
            nc=nc,
            cnonce=cnonce,
            opaque=challenge.opaque,
        )
