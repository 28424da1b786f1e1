"""Sans-IO SIP message parsing and serialization (RFC 3261 §7, §19, §20, §25).

Bytes go in, :class:`Request` / :class:`Response` objects come out; no I/O,
no clock, no reactor.  Two framers are provided:

* :func:`parse_datagram` for message-per-datagram transports (UDP);
* :class:`StreamParser` for byte streams (TCP, TLS), which also reports the
  RFC 5626 CRLF keep-alives as :class:`Ping` / :class:`Pong` events.

Header fields are kept as raw text (compact names expanded to their
canonical long form, folded lines joined) and are only parsed into typed
values (:class:`Via`, :class:`Address`, :class:`CSeq`, :class:`URI`) when a
typed accessor is used, so forwarding a message costs little more than
splitting it into lines.  Serializing an unmodified message re-emits every
header value exactly as received, under its canonical name, with a
``Content-Length`` that matches the body.

Every syntax problem is reported as :class:`SIPParseError`, which carries the
status code RFC 3261 calls for when the input is a request (so that
:meth:`SIPParseError.response` can answer it) or the ``drop`` flag when the
input is a response (which must be discarded silently).  No input makes the
public parsing functions raise anything else.

Semantic checks that a user agent server or proxy applies before acting on a
request (mandatory headers, 501, 416, 420, 415, 483, ...) live in
:func:`validate_request`, :func:`validate_response` and
:func:`check_max_forwards`.
"""

from __future__ import annotations

import abc
import ipaddress
import re
from collections.abc import Callable, Collection, Iterable
from typing import NamedTuple, TypeVar
from urllib.parse import unquote

from ..core import ids

__all__ = [
    "Address",
    "CSeq",
    "KNOWN_METHODS",
    "MAGIC_COOKIE",
    "Message",
    "Params",
    "Ping",
    "Pong",
    "REASON_PHRASES",
    "Request",
    "Response",
    "SIPParseError",
    "SIP_VERSION",
    "StreamEvent",
    "StreamParser",
    "URI",
    "Via",
    "check_max_forwards",
    "is_keepalive",
    "make_response",
    "new_branch",
    "new_tag",
    "parse_address",
    "parse_addresses",
    "parse_cseq",
    "parse_datagram",
    "parse_uri",
    "parse_via",
    "quote_string",
    "split_header_values",
    "unquote_string",
    "validate_request",
    "validate_response",
]

SIP_VERSION = "SIP/2.0"
MAGIC_COOKIE = "z9hG4bK"

#: Methods defined by RFC 3261 and its common extensions.
KNOWN_METHODS = frozenset(
    {
        "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK",
        "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
    }
)

#: Default reason phrases (RFC 3261 §21 and extensions).
REASON_PHRASES: dict[int, str] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated",
    200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    305: "Use Proxy", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    412: "Conditional Request Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 417: "Unknown Resource-Priority",
    420: "Bad Extension", 421: "Extension Required", 422: "Session Interval Too Small",
    423: "Interval Too Brief", 428: "Use Identity Header", 429: "Provide Referrer Identity",
    433: "Anonymity Disallowed", 436: "Bad Identity-Info", 437: "Unsupported Certificate",
    438: "Invalid Identity Header", 439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded", 469: "Bad Info Package", 470: "Consent Needed",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete",
    485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending",
    493: "Undecipherable", 494: "Security Agreement Required",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 580: "Precondition Failure",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable", 607: "Unwanted",
}

# --------------------------------------------------------------------------
# Header names
# --------------------------------------------------------------------------

_CANONICAL_NAMES = (
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Accept-Resource-Priority",
    "Alert-Info", "Allow", "Allow-Events", "Authentication-Info", "Authorization", "Call-ID",
    "Call-Info", "Contact", "Content-Disposition", "Content-Encoding", "Content-Language",
    "Content-Length", "Content-Type", "CSeq", "Date", "Diversion", "Error-Info", "Event",
    "Expires", "From", "History-Info", "Identity", "Identity-Info", "In-Reply-To",
    "Max-Breadth", "Max-Forwards", "MIME-Version", "Min-Expires", "Min-SE", "Organization",
    "P-Asserted-Identity", "P-Associated-URI", "P-Called-Party-ID", "P-Charging-Vector",
    "P-Preferred-Identity", "Path", "Priority", "Privacy", "Proxy-Authenticate",
    "Proxy-Authorization", "Proxy-Require", "RAck", "Reason", "Record-Route", "Refer-To",
    "Referred-By", "Reject-Contact", "Replaces", "Reply-To", "Request-Disposition", "Require",
    "Resource-Priority", "Retry-After", "Route", "RSeq", "Security-Client", "Security-Server",
    "Security-Verify", "Server", "Service-Route", "Session-Expires", "SIP-ETag",
    "SIP-If-Match", "Subject", "Subscription-State", "Supported", "Timestamp", "To",
    "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate",
)

#: Compact header forms (RFC 3261 §7.3.3 and extensions) to their long names.
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
    "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact", "k": "Supported",
    "l": "Content-Length", "m": "Contact", "n": "Identity-Info", "o": "Event", "r": "Refer-To",
    "s": "Subject", "t": "To", "u": "Allow-Events", "v": "Via", "x": "Session-Expires",
    "y": "Identity",
}

# lower-case spelling -> (lookup key, canonical name)
_HEADER_IDS: dict[str, tuple[str, str]] = {name.lower(): (name.lower(), name) for name in _CANONICAL_NAMES}
_HEADER_IDS.update({short: (long.lower(), long) for short, long in COMPACT_FORMS.items()})
# exact spellings seen on the wire, to skip lower-casing on the hot path
_WIRE_IDS: dict[str, tuple[str, str]] = {
    **_HEADER_IDS,
    **{ident[1]: ident for ident in _HEADER_IDS.values()},
    **{short.upper(): _HEADER_IDS[short] for short in COMPACT_FORMS},
}

# Headers whose values are comma-separated lists (RFC 3261 §7.3.1); the
# others (Date, WWW-Authenticate, unknown extension headers...) are never split.
_LIST_HEADERS = frozenset(
    {
        "accept", "accept-contact", "accept-encoding", "accept-language", "alert-info", "allow",
        "allow-events", "call-info", "contact", "content-encoding", "content-language",
        "diversion", "error-info", "history-info", "in-reply-to", "p-asserted-identity",
        "p-associated-uri", "p-preferred-identity", "path", "proxy-require", "reason",
        "record-route", "reject-contact", "request-disposition", "require", "route",
        "security-client", "security-server", "security-verify", "service-route", "supported",
        "unsupported", "via", "warning",
    }
)

# Headers that must not appear more than once in a request (RFC 3261 §7.3.1).
_SINGLE_HEADERS = ("to", "from", "call-id", "cseq", "max-forwards", "content-length",
                   "content-type", "expires", "date")


def _key(name: str) -> str:
    """The lookup key of a header name (lower-cased long form)."""
    lowered = name.lower()
    hit = _HEADER_IDS.get(lowered)
    return lowered if hit is None else hit[0]


def _header_id(name: str) -> tuple[str, str]:
    """Map any spelling of a header name to ``(lookup key, canonical name)``."""
    hit = _HEADER_IDS.get(name.lower())
    if hit is not None:
        return hit
    if not _TOKEN_RE.fullmatch(name):
        raise ValueError(f"invalid SIP header name {name!r}")
    return name.lower(), name


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class SIPParseError(ValueError):
    """A SIP message (or part of one) that cannot be accepted.

    Attributes:
        reason: what is wrong; also the reason phrase of the error response.
        status: the response code the RFC calls for when the offending
            message is a request (400, 415, 416, 420, 483, 501, 505, 513...);
            ``None`` when no response must be sent.
        drop: the message must be discarded silently (malformed responses,
            RFC 3261 §18.1.2 / §18.2.1).
        fatal: stream framing is lost (e.g. bad ``Content-Length`` on TCP);
            the connection must be closed after any error response.
        message: the part of the message that could be parsed (enough, as a
            rule, to build an error response), or ``None``.
        headers: extra header fields for the error response, such as
            ``Unsupported`` for 420 or ``Accept`` for 415.
    """

    def __init__(
        self,
        reason: str,
        status: int | None = 400,
        *,
        drop: bool = False,
        fatal: bool = False,
        message: Message | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.drop = drop
        self.fatal = fatal
        self.message = message
        self.headers: tuple[tuple[str, str], ...] = tuple(headers)

    def __repr__(self) -> str:
        return (
            f"SIPParseError({self.reason!r}, status={self.status!r}, drop={self.drop!r}, "
            f"fatal={self.fatal!r})"
        )

    def response(self, to_tag: str | None = None) -> Response | None:
        """Build the error response RFC 3261 calls for, or ``None``.

        ``None`` is returned when the offending message must be dropped,
        when it is not a request, when it is an ACK (never answered), or when
        too little of it was parsed to address a response (no Via, From,
        To, Call-ID or CSeq).
        """
        request = self.message
        if self.drop or self.status is None or not isinstance(request, Request):
            return None
        if request.method == "ACK":
            return None
        for key in ("via", "from", "to", "call-id", "cseq"):
            if request.get(key) is None:
                return None
        return make_response(request, self.status, self.reason, to_tag=to_tag, extra_headers=self.headers)


# --------------------------------------------------------------------------
# Grammar helpers (RFC 3261 §25.1)
# --------------------------------------------------------------------------

_TOKEN_CLASS = "A-Za-z0-9.!%*_+`'~\\-"
_TOKEN = "[" + _TOKEN_CLASS + "]+"
_TOKEN_RE = re.compile(_TOKEN)
_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\[\s\S])*)"')
_QUOTED_PAIR_RE = re.compile(r"\\([\s\S])")
# generic-param value: token / host (IPv6 references included) / quoted-string
_GENERIC_VALUE = r'"(?:[^"\\]|\\[\s\S])*"|[' + _TOKEN_CLASS + r":\[\]]+"
_PARAM_RE = re.compile(r"[ \t]*;[ \t]*(" + _TOKEN + r")(?:[ \t]*=[ \t]*(" + _GENERIC_VALUE + r"))?")
_PARAMS_BLOCK_RE = re.compile(
    r"(?:[ \t]*;[ \t]*" + _TOKEN + r"(?:[ \t]*=[ \t]*(?:" + _GENERIC_VALUE + r"))?)*[ \t]*"
)
_ESC = r"%[0-9A-Fa-f]{2}"
_USER = r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|" + _ESC + r")+"
_PASSWORD = r"(?:[A-Za-z0-9\-_.!~*'()&=+$,]|" + _ESC + r")*"
_PARAMCHARS = r"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|" + _ESC + r")+"
_HNVCHAR = r"(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|" + _ESC + r")"
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?"
_HOSTNAME = r"(?:" + _LABEL + r"\.)*" + _LABEL + r"\.?"
_HOSTNAME_RE = re.compile(_HOSTNAME)
_URI_PARAM_RE = re.compile(_PARAMCHARS)
_URI_HEADER = _HNVCHAR + "+=" + _HNVCHAR + "*"
# everything after "sip:" / "sips:" (RFC 3261 §25.1 SIP-URI, RFC 5118 hosts)
_SIP_URI_RE = re.compile(
    r"(?:(" + _USER + r")(?::(" + _PASSWORD + r"))?@)?"
    r"(\[[0-9A-Fa-f:.]+\]|" + _HOSTNAME + r")"
    r"(?::([0-9]{1,5}))?"
    r"((?:;" + _PARAMCHARS + r"(?:=" + _PARAMCHARS + r")?)*)"
    r"(?:\?(" + _URI_HEADER + r"(?:&" + _URI_HEADER + r")*))?"
)
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_URIC_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'();/?:@&=+$,\[\]]|" + _ESC + r")+")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = re.compile(_OCTET + r"(?:\." + _OCTET + r"){3}")
_DIGITS_RE = re.compile(r"[0-9]+")
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
_VIA_RE = re.compile(
    r"[ \t]*(" + _TOKEN + r")[ \t]*/[ \t]*(" + _TOKEN + r")[ \t]*/[ \t]*(" + _TOKEN + r")[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(?:[ \t]*:[ \t]*([0-9]+))?"
)
_CSEQ_RE = re.compile(r"[ \t]*([0-9]+)[ \t]+(" + _TOKEN + r")[ \t]*")
_MEDIA_TYPE_RE = re.compile(r"[ \t]*(" + _TOKEN + r")[ \t]*/[ \t]*(" + _TOKEN + r")")
_WKDAY = "Mon|Tue|Wed|Thu|Fri|Sat|Sun"
_MONTH = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
_DATE_RE = re.compile(
    r"(?:" + _WKDAY + r"), [0-9]{2} (?:" + _MONTH + r") [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)

_MAX_CSEQ = 2**31 - 1
_MAX_PORT = 65535

Params = tuple[tuple[str, str | None], ...]
"""Ordered ``(name, value)`` pairs; ``value`` is ``None`` for a valueless
parameter and keeps surrounding quotes when it is a quoted string."""

_T = TypeVar("_T")


def _is_token(text: str) -> bool:
    return _TOKEN_RE.fullmatch(text) is not None


def _int_digits(text: str) -> int | None:
    """``int(text)`` if ``text`` is 1*DIGIT (ASCII only), else ``None``."""
    if _DIGITS_RE.fullmatch(text) is None:
        return None
    return int(text)


def unquote_string(value: str) -> str:
    """Return a quoted-string's content with quoted-pairs resolved.

    Values that are not quoted strings are returned unchanged.
    """
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return _QUOTED_PAIR_RE.sub(r"\1", value[1:-1])
    return value


def quote_string(value: str) -> str:
    """Quote ``value`` as a SIP quoted-string (RFC 3261 §25.1).

    Backslash, double quote and control characters become quoted-pairs; CR
    and LF, which cannot be represented, are replaced by a space.
    """
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in "\r\n":
            out.append(" ")
        elif ch in '"\\' or (code < 0x20 and ch != "\t") or code == 0x7F:
            out.append("\\" + ch)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def split_header_values(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quotes and ``<>``.

    Elements are stripped of surrounding whitespace; empty elements are
    kept (as ``""``) so that callers can reject them.
    """
    if '"' not in value and "<" not in value:
        parts = value.split(",")
    else:
        parts = []
        start = 0
        in_quotes = in_angle = False
        i = 0
        n = len(value)
        while i < n:
            ch = value[i]
            if in_quotes:
                if ch == "\\":
                    i += 1
                elif ch == '"':
                    in_quotes = False
            elif ch == '"':
                in_quotes = True
            elif ch == "<":
                in_angle = True
            elif ch == ">":
                in_angle = False
            elif ch == "," and not in_angle:
                parts.append(value[start:i])
                start = i + 1
            i += 1
        parts.append(value[start:])
    return [part.strip(" \t") for part in parts]


def _parse_params(text: str, pos: int, what: str) -> Params:
    """Parse ``*( SEMI generic-param )`` from ``text[pos:]`` to its end."""
    if _PARAMS_BLOCK_RE.fullmatch(text, pos) is None:
        raise SIPParseError(f"Malformed {what} parameters")
    return tuple((name, value or None) for name, value in _PARAM_RE.findall(text, pos))


def _format_params(params: Params) -> str:
    return "".join(f";{name}" if value is None else f";{name}={value}" for name, value in params)


def _find_param(params: Params, name: str) -> tuple[bool, str | None]:
    name = name.lower()
    for key, value in params:
        if key.lower() == name:
            return True, value
    return False, None


def _replace_param(params: Params, name: str, value: str | None) -> Params:
    lowered = name.lower()
    out = [(k, v) for k, v in params if k.lower() != lowered]
    out.append((name, value))
    return tuple(out)


def _check_param_value(value: str | None) -> None:
    if value is not None and (not value or "\r" in value or "\n" in value):
        raise ValueError(f"invalid parameter value {value!r}")


def _valid_host(host: str) -> bool:
    """hostname / IPv4address / IPv6reference (RFC 3261, RFC 5118)."""
    if host.startswith("["):
        return _valid_ipv6_reference(host)
    return _HOSTNAME_RE.fullmatch(host) is not None


def _valid_ipv6_reference(host: str) -> bool:
    """``[IPv6address]`` (RFC 5118 §4.2: the brackets are mandatory)."""
    if not host.endswith("]"):
        return False
    try:
        ipaddress.IPv6Address(host[1:-1])
    except ValueError:
        return False
    return True


def _valid_ip(text: str) -> bool:
    if _IPV4_RE.fullmatch(text) is not None:
        return True
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" not in text:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------
# URIs
# --------------------------------------------------------------------------


class URI(NamedTuple):
    """A SIP/SIPS URI (RFC 3261 §19.1), or any other absolute URI.

    For ``sip`` and ``sips`` every component is filled in; ``user``,
    ``password``, parameter values and header values keep their escaped
    (on-the-wire) form, see :attr:`user_unescaped`.  Other schemes (``tel``,
    ``urn``, ``http``...) only carry :attr:`scheme` and :attr:`opaque`, the
    text after the colon.  Instances are immutable; use ``_replace`` or
    :meth:`with_param` to derive modified URIs.
    """

    scheme: str
    host: str = ""
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    opaque: str | None = None

    @classmethod
    def parse(cls, text: str) -> URI:
        """Parse ``text``; see :func:`parse_uri`."""
        return parse_uri(text)

    @property
    def is_sip(self) -> bool:
        """True for ``sip:`` and ``sips:`` URIs."""
        return self.opaque is None

    @property
    def user_unescaped(self) -> str | None:
        """The user part with %-escapes resolved (undecodable octets kept as surrogates)."""
        if self.user is None:
            return None
        return unquote(self.user, errors="surrogateescape")

    def param(self, name: str) -> str | None:
        """Value of URI parameter ``name`` (case-insensitive); ``None`` if absent or valueless."""
        return _find_param(self.params, name)[1]

    def has_param(self, name: str) -> bool:
        """Whether URI parameter ``name`` is present."""
        return _find_param(self.params, name)[0]

    def with_param(self, name: str, value: str | None = None) -> URI:
        """A copy with parameter ``name`` set (replacing any previous value)."""
        _check_param_value(value)
        if not _URI_PARAM_RE.fullmatch(name):
            raise ValueError(f"invalid URI parameter name {name!r}")
        return self._replace(params=_replace_param(self.params, name, value))

    def without_param(self, name: str) -> URI:
        """A copy without parameter ``name``."""
        lowered = name.lower()
        return self._replace(params=tuple((k, v) for k, v in self.params if k.lower() != lowered))

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, lower-cased."""
        value = self.param("transport")
        return value.lower() if value is not None else None

    @property
    def lr(self) -> bool:
        """Whether the loose-routing ``lr`` parameter is present."""
        return self.has_param("lr")

    @property
    def maddr(self) -> str | None:
        """The ``maddr`` parameter."""
        return self.param("maddr")

    def header(self, name: str) -> str | None:
        """Unescaped value of URI header ``name`` (``?name=value``), or ``None``."""
        lowered = name.lower()
        for key, value in self.headers:
            if unquote(key).lower() == lowered:
                return unquote(value, errors="surrogateescape")
        return None

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts.append(":" + self.password)
            parts.append("@")
        parts.append(self.host)
        if self.port is not None:
            parts.append(f":{self.port}")
        if self.params:
            parts.append(_format_params(self.params))
        if self.headers:
            parts.append("?" + "&".join(f"{k}={v}" for k, v in self.headers))
        return "".join(parts)

    def equivalent(self, other: URI) -> bool:
        """Compare two URIs with the rules of RFC 3261 §19.1.4."""
        if self.scheme != other.scheme:
            return False
        if self.opaque is not None or other.opaque is not None:
            return self.opaque == other.opaque
        if self.user_unescaped != other.user_unescaped:
            return False
        unesc = _unescape_or_none
        if unesc(self.password) != unesc(other.password):
            return False
        if self.host.lower() != other.host.lower() or self.port != other.port:
            return False
        mine = {k.lower(): v for k, v in self.params}
        theirs = {k.lower(): v for k, v in other.params}
        for name in ("user", "ttl", "method", "maddr", "transport"):
            if (name in mine) != (name in theirs):
                return False
        for name in mine.keys() & theirs.keys():
            if (unesc(mine[name]) or "").lower() != (unesc(theirs[name]) or "").lower():
                return False
        my_headers = {unquote(k).lower(): unquote(v) for k, v in self.headers}
        their_headers = {unquote(k).lower(): unquote(v) for k, v in other.headers}
        return my_headers == their_headers


def _unescape_or_none(value: str | None) -> str | None:
    return None if value is None else unquote(value, errors="surrogateescape")


def parse_uri(text: str) -> URI:
    """Parse a SIP/SIPS URI or a generic absolute URI.

    IPv6 hosts must be bracketed references (RFC 5118).  Raises
    :class:`SIPParseError` (400) on any syntax error.
    """
    colon = text.find(":")
    if colon <= 0:
        raise SIPParseError("Malformed URI: no scheme")
    scheme = text[:colon]
    if _SCHEME_RE.fullmatch(scheme) is None:
        raise SIPParseError("Malformed URI scheme")
    scheme = scheme.lower()
    rest = text[colon + 1:]
    if scheme == "sip" or scheme == "sips":
        return _parse_sip_uri(scheme, rest)
    if not rest or _URIC_RE.fullmatch(rest) is None:
        raise SIPParseError("Malformed URI")
    return URI(scheme=scheme, opaque=rest)


def _parse_sip_uri(scheme: str, rest: str) -> URI:
    m = _SIP_URI_RE.fullmatch(rest)
    if m is None:
        raise SIPParseError("Malformed SIP URI")
    user, password, host, port_text, params_text, headers_text = m.groups()
    if host[0] == "[" and not _valid_ipv6_reference(host):
        raise SIPParseError("Malformed IPv6 reference in URI")
    port = None
    if port_text is not None:
        port = int(port_text)
        if port > _MAX_PORT:
            raise SIPParseError("Malformed port")
    params: Params = ()
    if params_text:
        params = tuple(
            (name, value if eq else None)
            for name, eq, value in (item.partition("=") for item in params_text[1:].split(";"))
        )
    headers: tuple[tuple[str, str], ...] = ()
    if headers_text:
        headers = tuple(
            (name, value) for name, _, value in (item.partition("=") for item in headers_text.split("&"))
        )
    return URI(scheme=scheme, host=host, user=user, password=password, port=port,
               params=params, headers=headers)


def _parse_port(text: str) -> int:
    port = _int_digits(text) if len(text) <= 5 else None
    if port is None or port > _MAX_PORT:
        raise SIPParseError("Malformed port")
    return port


# --------------------------------------------------------------------------
# Typed header values
# --------------------------------------------------------------------------


class Address(NamedTuple):
    """A name-addr or addr-spec with header parameters (From, To, Contact, Route...).

    ``uri`` is ``None`` only for the ``Contact: *`` wildcard.  The display
    name is stored unquoted, with quoted-pairs resolved.
    """

    uri: URI | None
    display_name: str | None = None
    params: Params = ()

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``text``; see :func:`parse_address`."""
        return parse_address(text)

    @property
    def is_wildcard(self) -> bool:
        """Whether this is the ``*`` Contact of a REGISTER removing all bindings."""
        return self.uri is None

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter (From/To)."""
        return self.param("tag")

    def param(self, name: str) -> str | None:
        """Raw value of header parameter ``name``; ``None`` if absent or valueless."""
        return _find_param(self.params, name)[1]

    def has_param(self, name: str) -> bool:
        """Whether header parameter ``name`` is present."""
        return _find_param(self.params, name)[0]

    def with_param(self, name: str, value: str | None = None) -> Address:
        """A copy with header parameter ``name`` set."""
        _check_param_value(value)
        if not _is_token(name):
            raise ValueError(f"invalid parameter name {name!r}")
        return self._replace(params=_replace_param(self.params, name, value))

    def with_tag(self, tag: str) -> Address:
        """A copy carrying ``tag``."""
        return self.with_param("tag", tag)

    def __str__(self) -> str:
        if self.uri is None:
            return "*" + _format_params(self.params)
        prefix = "" if self.display_name is None else quote_string(self.display_name) + " "
        return f"{prefix}<{self.uri}>{_format_params(self.params)}"


def parse_address(text: str) -> Address:
    """Parse one name-addr / addr-spec with its header parameters.

    Per RFC 3261 §20.10 parameters after a URI that is not enclosed in
    ``<>`` are header parameters, and such a URI may not contain a comma,
    semicolon or question mark.  Raises :class:`SIPParseError` (400).
    """
    s = text.strip(" \t")
    if not s:
        raise SIPParseError("Empty address")
    if s[0] == "*":
        return Address(uri=None, params=_parse_params(s, 1, "Contact"))
    display: str | None = None
    if s[0] == '"':
        m = _QUOTED_RE.match(s)
        if m is None:
            raise SIPParseError("Unterminated quoted string in display name")
        display = _QUOTED_PAIR_RE.sub(r"\1", m.group(1))
        lt = m.end()
        while lt < len(s) and s[lt] in " \t":
            lt += 1
        if lt >= len(s) or s[lt] != "<":
            raise SIPParseError("Missing <URI> after quoted display name")
    else:
        lt = s.find("<")
        semi = s.find(";")
        if lt >= 0 and (semi < 0 or lt < semi):
            words = s[:lt].split()
            for word in words:
                if not _is_token(word):
                    raise SIPParseError("Invalid characters in display name")
            display = " ".join(words) if words else None
        else:
            lt = -1
    if lt >= 0:
        gt = s.find(">", lt)
        if gt < 0:
            raise SIPParseError("Unterminated <URI>")
        uri_text = s[lt + 1:gt]
        if not uri_text or " " in uri_text or "\t" in uri_text:
            raise SIPParseError("Whitespace within addr-spec")
        uri = parse_uri(uri_text)
        params = _parse_params(s, gt + 1, "address")
    else:
        semi = s.find(";")
        uri_text = s if semi < 0 else s[:semi].rstrip(" \t")
        if "?" in uri_text or "," in uri_text or " " in uri_text or "\t" in uri_text:
            raise SIPParseError("URI must be enclosed in <>")
        uri = parse_uri(uri_text)
        params = _parse_params(s, semi, "address") if semi >= 0 else ()
    for name, value in params:
        if value is None and name.lower() == "tag":
            raise SIPParseError("tag parameter without value")
    return Address(uri=uri, display_name=display, params=params)


def parse_addresses(value: str) -> list[Address]:
    """Parse a comma-separated list of addresses (Contact, Route...)."""
    out = []
    for item in split_header_values(value):
        if not item:
            raise SIPParseError("Empty element in address list")
        out.append(parse_address(item))
    return out


class Via(NamedTuple):
    """One Via header value (RFC 3261 §20.42)."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    protocol: str = SIP_VERSION

    @classmethod
    def parse(cls, text: str) -> Via:
        """Parse one Via value; see :func:`parse_via`."""
        return parse_via(text)

    def param(self, name: str) -> str | None:
        """Raw value of parameter ``name``; ``None`` if absent or valueless."""
        return _find_param(self.params, name)[1]

    def has_param(self, name: str) -> bool:
        """Whether parameter ``name`` is present."""
        return _find_param(self.params, name)[0]

    def with_param(self, name: str, value: str | None = None) -> Via:
        """A copy with parameter ``name`` set (e.g. ``received``, ``rport``)."""
        _check_param_value(value)
        if not _is_token(name):
            raise ValueError(f"invalid parameter name {name!r}")
        return self._replace(params=_replace_param(self.params, name, value))

    @property
    def branch(self) -> str | None:
        """The ``branch`` parameter."""
        return self.param("branch")

    @property
    def has_magic_cookie(self) -> bool:
        """Whether the branch is an RFC 3261 transaction id (magic cookie plus an id)."""
        branch = self.branch
        return branch is not None and len(branch) > len(MAGIC_COOKIE) and branch.startswith(MAGIC_COOKIE)

    @property
    def received(self) -> str | None:
        """The ``received`` parameter."""
        return self.param("received")

    @property
    def has_rport(self) -> bool:
        """Whether ``rport`` is present, with or without a value (RFC 3581)."""
        return self.has_param("rport")

    @property
    def rport(self) -> int | None:
        """The numeric value of ``rport``; ``None`` when absent or valueless."""
        value = self.param("rport")
        return None if value is None else _int_digits(value)

    @property
    def maddr(self) -> str | None:
        """The ``maddr`` parameter."""
        return self.param("maddr")

    @property
    def ttl(self) -> int | None:
        """The ``ttl`` parameter."""
        value = self.param("ttl")
        return None if value is None else _int_digits(value)

    @property
    def sent_by(self) -> tuple[str, int | None]:
        """``(host, port)`` of the sent-by field."""
        return self.host, self.port

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {self.host}{port}{_format_params(self.params)}"


def parse_via(text: str) -> Via:
    """Parse one via-parm (not a comma-separated list).

    LWS is accepted around the slashes, colon and parameters; ``received``
    may hold an IPv6 address with or without brackets (RFC 5118 §4.5).
    """
    m = _VIA_RE.match(text)
    if m is None:
        raise SIPParseError("Malformed Via header")
    name, version, transport, host, port_text = m.groups()
    if not _valid_host(host):
        raise SIPParseError("Malformed Via sent-by host")
    port = None if port_text is None else _parse_port(port_text)
    params = _parse_params(text, m.end(), "Via")
    for key, value in params:
        lowered = key.lower()
        if lowered == "branch" and value is None:
            raise SIPParseError("Via branch without value")
        if lowered == "received" and (value is None or not _valid_ip(value)):
            raise SIPParseError("Malformed Via received parameter")
        if lowered in ("rport", "ttl") and value is not None:
            number = _int_digits(value)
            if number is None or number > (_MAX_PORT if lowered == "rport" else 255):
                raise SIPParseError(f"Malformed Via {lowered} parameter")
        if lowered == "maddr" and (value is None or not _valid_host(value)):
            raise SIPParseError("Malformed Via maddr parameter")
    return Via(transport=transport.upper(), host=host, port=port, params=params,
               protocol=f"{name.upper()}/{version}")


class CSeq(NamedTuple):
    """A CSeq header value (RFC 3261 §20.16)."""

    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(text: str) -> CSeq:
    """Parse a CSeq value; the number must be below 2**31."""
    m = _CSEQ_RE.fullmatch(text)
    if m is None:
        raise SIPParseError("Malformed CSeq header")
    number = int(m.group(1))
    if number > _MAX_CSEQ:
        raise SIPParseError("CSeq number out of range")
    return CSeq(number, m.group(2))


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------

_Header = tuple[str, str, str]  # (lookup key, canonical name, raw value)


class Message(abc.ABC):
    """Common part of :class:`Request` and :class:`Response`.

    Header fields are an ordered list of raw ``(name, value)`` pairs with
    canonical names; lookups accept any spelling, compact forms included.
    Typed accessors (:attr:`via`, :attr:`cseq`, :attr:`from_addr`...) parse
    on first use and cache the result until the headers change; they raise
    :class:`SIPParseError` when the header is malformed.
    """

    __slots__ = ("_headers", "body", "_cache")

    _headers: list[_Header]
    body: bytes
    _cache: dict[str, object] | None

    def __init__(self, headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> None:
        self._headers = []
        self._cache = None
        self.body = bytes(body)
        for name, value in headers:
            self.add(name, value)

    # -- raw header access ------------------------------------------------

    def get(self, name: str, default: str | None = None) -> str | None:
        """First raw value of header ``name`` (any spelling), or ``default``."""
        key = _key(name)
        for k, _, value in self._headers:
            if k == key:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Raw values of every header line named ``name``, in order."""
        key = _key(name)
        return [value for k, _, value in self._headers if k == key]

    def values(self, name: str) -> list[str]:
        """All values of header ``name``, comma-separated lists split up.

        Only headers defined as lists (Via, Contact, Route, Require...) are
        split; for the others this is :meth:`get_all`.
        """
        key = _key(name)
        raw = [value for k, _, value in self._headers if k == key]
        if key not in _LIST_HEADERS:
            return raw
        out: list[str] = []
        for value in raw:
            out.extend(split_header_values(value))
        return out

    def items(self) -> list[tuple[str, str]]:
        """Every header line as ``(canonical name, raw value)``, in order."""
        return [(name, value) for _, name, value in self._headers]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def count(self, name: str) -> int:
        """Number of header lines named ``name``."""
        key = _key(name)
        return sum(1 for k, _, _ in self._headers if k == key)

    def add(self, name: str, value: object, *, first: bool = False) -> None:
        """Add a header line, at the end or (``first=True``) above all others of that name.

        ``value`` may be a string or any typed value (:class:`Via`,
        :class:`Address`...), which is serialized with ``str()``.
        """
        key, canonical = _header_id(name)
        text = _header_text(value)
        self._cache = None
        if first:
            for i, (k, _, _) in enumerate(self._headers):
                if k == key:
                    self._headers.insert(i, (key, canonical, text))
                    return
        self._headers.append((key, canonical, text))

    def set(self, name: str, value: object) -> None:
        """Replace every line of header ``name`` by one line holding ``value``."""
        key, canonical = _header_id(name)
        text = _header_text(value)
        self._cache = None
        headers = self._headers
        for i, (k, existing, _) in enumerate(headers):
            if k == key:
                headers[i] = (key, existing, text)
                self._headers = headers[:i + 1] + [h for h in headers[i + 1:] if h[0] != key]
                return
        headers.append((key, canonical, text))

    def remove(self, name: str) -> int:
        """Remove every line of header ``name``; return how many were removed."""
        key = _key(name)
        before = len(self._headers)
        self._headers = [h for h in self._headers if h[0] != key]
        self._cache = None
        return before - len(self._headers)

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first value of list header ``name`` (e.g. the top Route)."""
        key = _key(name)
        for i, (k, canonical, value) in enumerate(self._headers):
            if k == key:
                self._cache = None
                parts = split_header_values(value) if key in _LIST_HEADERS else [value]
                if len(parts) > 1:
                    self._headers[i] = (k, canonical, ", ".join(parts[1:]))
                else:
                    del self._headers[i]
                return parts[0]
        return None

    # -- typed accessors ----------------------------------------------------

    def _error(self, reason: str) -> SIPParseError:
        if isinstance(self, Response):
            return SIPParseError(reason, None, drop=True, message=self)
        return SIPParseError(reason, 400, message=self)

    def _first(self, key: str) -> str | None:
        for k, _, value in self._headers:
            if k == key:
                return value
        return None

    def _single(self, key: str, parser: Callable[[str], _T]) -> _T | None:
        """Typed value of the first ``key`` header, parsed once and cached."""
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        elif key in cache:
            return cache[key]  # type: ignore[return-value]
        value = self._first(key)
        try:
            parsed = None if value is None else parser(value)
        except SIPParseError as exc:
            raise self._error(exc.reason) from None
        cache[key] = parsed
        return parsed

    def _many(self, key: str, parser: Callable[[str], _T], slot: str | None = None) -> tuple[_T, ...]:
        """Typed values of every ``key`` header (lists split), parsed once and cached."""
        slot = slot or key
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        elif slot in cache:
            return cache[slot]  # type: ignore[return-value]
        out = []
        try:
            for k, _, value in self._headers:
                if k != key:
                    continue
                for item in split_header_values(value) if key in _LIST_HEADERS else (value,):
                    if not item:
                        raise SIPParseError(f"Empty element in {_canonical(key)} header")
                    out.append(parser(item))
        except SIPParseError as exc:
            raise self._error(exc.reason) from None
        parsed = tuple(out)
        cache[slot] = parsed
        return parsed

    @property
    def via(self) -> tuple[Via, ...]:
        """Every Via value, topmost first."""
        return self._many("via", parse_via)

    @property
    def top_via(self) -> Via | None:
        """The topmost Via value, or ``None``.

        Only the first value is parsed (transaction matching and response
        routing need nothing else), so a long Via stack costs nothing here.
        """
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        elif "top_via" in cache:
            return cache["top_via"]  # type: ignore[return-value]
        if "via" in cache:
            vias = cache["via"]
            top = vias[0] if vias else None  # type: ignore[index]
        else:
            raw = self._first("via")
            if raw is None:
                top = None
            else:
                first = split_header_values(raw)[0] if "," in raw else raw.strip()
                if not first:
                    raise self._error("Empty element in Via header")
                try:
                    top = parse_via(first)
                except SIPParseError as exc:
                    raise self._error(exc.reason) from None
        cache["top_via"] = top
        return top

    @property
    def from_addr(self) -> Address | None:
        """The From header."""
        return self._single("from", parse_address)

    @property
    def to_addr(self) -> Address | None:
        """The To header."""
        return self._single("to", parse_address)

    @property
    def call_id(self) -> str | None:
        """The Call-ID header."""
        return self._single("call-id", _parse_call_id)

    @property
    def cseq(self) -> CSeq | None:
        """The CSeq header."""
        return self._single("cseq", parse_cseq)

    @property
    def contacts(self) -> tuple[Address, ...]:
        """Every Contact value (a wildcard has ``uri`` ``None``)."""
        return self._many("contact", parse_address)

    @property
    def routes(self) -> tuple[Address, ...]:
        """Every Route value, topmost first."""
        return self._many("route", parse_address)

    @property
    def record_routes(self) -> tuple[Address, ...]:
        """Every Record-Route value, topmost first."""
        return self._many("record-route", parse_address)

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (0..255)."""
        return self._single("max-forwards", _parse_max_forwards)

    @property
    def expires(self) -> int | None:
        """The Expires header in seconds."""
        return self._single("expires", _parse_delta_seconds)

    @property
    def content_type(self) -> str | None:
        """The media type of the body (``type/subtype``, lower-cased, without parameters)."""
        return self._single("content-type", _parse_media_type)

    def option_tags(self, name: str) -> tuple[str, ...]:
        """Option tags listed in Require, Proxy-Require, Supported or Unsupported."""
        key = _key(name)
        return self._many(key, _parse_option_tag, "tags:" + key)

    # -- serialization -------------------------------------------------------

    @abc.abstractmethod
    def _start_line(self) -> str:
        """The request or status line, without CRLF."""

    def to_bytes(self) -> bytes:
        """Serialize with canonical header names and a correct Content-Length."""
        body = self.body
        lines = [self._start_line()]
        append = lines.append
        have_length = False
        for key, name, value in self._headers:
            if key == "content-length":
                if not have_length:
                    append(f"Content-Length: {len(body)}")
                    have_length = True
            else:
                append(f"{name}: {value}")
        if not have_length:
            append(f"Content-Length: {len(body)}")
        append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body

    __bytes__ = to_bytes

    def _copy_into(self, other: Message) -> None:
        other._headers = list(self._headers)
        other._cache = None
        other.body = self.body


def _canonical(key: str) -> str:
    return _HEADER_IDS.get(key, (key, key))[1]


def _header_text(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if "\r" in text or "\n" in text:
        raise ValueError("header values may not contain CR or LF")
    return text.strip(" \t")


def _parse_call_id(value: str) -> str:
    if not value or " " in value or "\t" in value:
        raise SIPParseError("Malformed Call-ID header")
    return value


def _parse_max_forwards(value: str) -> int:
    number = _int_digits(value)
    if number is None or number > 255:
        raise SIPParseError("Malformed Max-Forwards header")
    return number


def _parse_delta_seconds(value: str) -> int:
    number = _int_digits(value)
    if number is None:
        raise SIPParseError("Malformed Expires header")
    return number


def _parse_media_type(value: str) -> str:
    m = _MEDIA_TYPE_RE.match(value)
    if m is None:
        raise SIPParseError("Malformed Content-Type header")
    _parse_params(value, m.end(), "Content-Type")
    return f"{m.group(1)}/{m.group(2)}".lower()


def _parse_option_tag(value: str) -> str:
    if not _is_token(value):
        raise SIPParseError("Malformed option tag")
    return value


class Request(Message):
    """A SIP request.

    ``uri`` is parsed (and so validated) when the request is parsed; the
    request line is serialized with the URI text exactly as received unless
    a new URI is assigned.
    """

    __slots__ = ("method", "_uri", "_uri_text")

    method: str
    _uri: URI | None
    _uri_text: str

    def __init__(
        self,
        method: str,
        uri: URI | str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        if not _is_token(method):
            raise ValueError(f"invalid SIP method {method!r}")
        self.method = method
        self.uri = uri
        super().__init__(headers, body)

    @property
    def uri(self) -> URI:
        """The Request-URI.  Raises :class:`SIPParseError` on a partially parsed request."""
        if self._uri is None:
            raise SIPParseError("Request-URI unavailable", 400, message=self)
        return self._uri

    @uri.setter
    def uri(self, value: URI | str) -> None:
        if isinstance(value, str):
            value = parse_uri(value)
        self._uri = value
        self._uri_text = str(value)

    def _start_line(self) -> str:
        return f"{self.method} {self._uri_text} {SIP_VERSION}"

    def copy(self) -> Request:
        """A copy whose headers can be changed independently (for forwarding)."""
        other = Request.__new__(Request)
        other.method = self.method
        other._uri = self._uri
        other._uri_text = self._uri_text
        self._copy_into(other)
        return other

    def __repr__(self) -> str:
        return f"<Request {self.method} {self._uri_text}>"


class Response(Message):
    """A SIP response."""

    __slots__ = ("status", "reason")

    status: int
    reason: str

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        if not 100 <= status <= 699:
            raise ValueError(f"invalid SIP status code {status!r}")
        if reason is None:
            reason = REASON_PHRASES.get(status, "Unknown")
        if "\r" in reason or "\n" in reason:
            raise ValueError("reason phrase may not contain CR or LF")
        self.status = status
        self.reason = reason
        super().__init__(headers, body)

    def _start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def copy(self) -> Response:
        """A copy whose headers can be changed independently."""
        other = Response.__new__(Response)
        other.status = self.status
        other.reason = self.reason
        self._copy_into(other)
        return other

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------

def _parse_head(text: str) -> tuple[Message, int | None, SIPParseError | None]:
    """Parse a start line and header block (without the terminating empty line).

    Never raises.  Returns the (possibly partial) message, the
    Content-Length value (``None`` if absent or invalid) and the first error
    found, if any.  A Content-Length problem is reported with ``fatal=True``
    because it breaks stream framing.
    """
    lines = text.split("\r\n")
    crlf = len(lines) - 1
    start = lines[0]
    error: str | None = None
    status = 400
    message: Message
    if start[:4].upper() == "SIP/":
        response = Response.__new__(Response)
        parts = start.split(" ", 2)
        code = parts[1] if len(parts) > 1 else ""
        response.status = int(code) if len(code) == 3 and code.isascii() and code.isdigit() else 0
        response.reason = parts[2] if len(parts) > 2 else ""
        if not 100 <= response.status <= 699:
            error = "Malformed Status-Line"
        elif parts[0].upper() != SIP_VERSION:
            error = "Unsupported SIP version"
        message = response
    else:
        request = Request.__new__(Request)
        request._uri = None
        request._uri_text = ""
        parts = start.split(" ")
        request.method = parts[0] if _is_token(parts[0]) else ""
        if len(parts) != 3 or not parts[1] or not parts[2]:
            error = "Malformed Request-Line"
        elif not request.method:
            error = "Invalid method"
        elif parts[2].upper() != SIP_VERSION:
            if _VERSION_RE.fullmatch(parts[2]):
                error, status = REASON_PHRASES[505], 505
            else:
                error = "Malformed SIP version"
        else:
            try:
                uri = parse_uri(parts[1])
            except SIPParseError:
                error = "Malformed Request-URI"
            else:
                if uri.headers:
                    error = "Headers not allowed in Request-URI"
                else:
                    request._uri = uri
                    request._uri_text = parts[1]
        message = request
    message.body = b""
    message._cache = None
    headers: list[_Header] = []
    message._headers = headers
    append = headers.append
    ids = _WIRE_IDS
    lower_ids = _HEADER_IDS
    length_at = []
    for line in lines[1:]:
        first = line[:1]
        if first == " " or first == "\t":
            more = line.strip(" \t")
            if not headers:
                if more:
                    error = error or "Continuation line without header"
                continue
            if more:
                key, name, value = headers[-1]
                headers[-1] = (key, name, f"{value} {more}" if value else more)
            continue
        colon = line.find(":")
        if colon <= 0:
            error = error or "Malformed header line"
            continue
        raw_name = line[:colon]
        ident = ids.get(raw_name)
        if ident is None:
            raw_name = raw_name.rstrip(" \t")
            ident = lower_ids.get(raw_name.lower())
            if ident is None:
                if _TOKEN_RE.fullmatch(raw_name) is None:
                    error = error or "Malformed header name"
                    continue
                ident = (raw_name.lower(), raw_name)
        if ident[0] == "content-length":
            length_at.append(len(headers))
        append((ident[0], ident[1], line[colon + 1:].strip(" \t")))
    if text.count("\n") != crlf or text.count("\r") != crlf:
        error = error or "Bare CR or LF in header section"
    length: int | None = None
    for index in length_at:
        number = _int_digits(headers[index][2])
        if number is None or (length is not None and number != length):
            problem = "Invalid Content-Length" if number is None else "Conflicting Content-Length values"
            failure = message._error(problem)
            failure.fatal = True
            return message, None, failure
        length = number
    if error is None:
        return message, length, None
    if status != 400:
        return message, length, SIPParseError(error, status, message=message)
    return message, length, message._error(error)


def parse_datagram(data: bytes) -> Request | Response:
    """Parse one SIP message received as a datagram (UDP).

    The body is bounded by Content-Length when present; octets beyond it
    are discarded (RFC 3261 §18.3).  Without Content-Length the body is the
    rest of the datagram.  A body shorter than Content-Length is an error.
    Leading CRLFs are skipped, and a missing empty line after the last
    header is tolerated.  Raises :class:`SIPParseError` and nothing else.
    """
    data = bytes(data)
    size = len(data)
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    if start >= size:
        raise SIPParseError("Empty message", None, drop=True)
    unterminated = False
    end = data.find(b"\r\n\r\n", start)
    if end >= 0:
        body_start = end + 4
    elif data.endswith(b"\r\n"):
        end, body_start = size - 2, size
    else:
        end = body_start = size
        unterminated = True
    message, length, error = _parse_head(data[start:end].decode("utf-8", "surrogateescape"))
    if error is not None:
        error.fatal = False
        raise error
    if unterminated:
        raise message._error("Unterminated header section")
    if length is None:
        message.body = data[body_start:]
    elif body_start + length > size:
        raise message._error("Truncated message body")
    else:
        message.body = data[body_start:body_start + length]
    return message  # type: ignore[return-value]


def is_keepalive(data: bytes) -> bool:
    """Whether a datagram holds nothing but CRLF keep-alive octets (RFC 5626 §3.5.1)."""
    data = bytes(data)
    return bool(data) and not data.replace(b"\r\n", b"")


class Ping:
    """A double-CRLF keep-alive ping on a stream (RFC 5626 §3.5.1).

    The transport should answer it with a single CRLF (a pong).
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "Ping()"


class Pong:
    """A single CRLF received between messages on a stream (an RFC 5626 pong)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Pong()"


_PING = Ping()
_PONG = Pong()

StreamEvent = Request | Response | Ping | Pong | SIPParseError
"""What :meth:`StreamParser.feed` reports."""


class StreamParser:
    """Incremental framer for SIP over TCP/TLS (RFC 3261 §18.3, RFC 5626).

    :meth:`feed` takes whatever the transport read and returns the events
    it completes, in order: messages, :class:`Ping` / :class:`Pong`
    keep-alives, and :class:`SIPParseError` for a message that was framed
    correctly but is malformed (answer it if :meth:`SIPParseError.response`
    gives a response, then carry on).

    Content-Length is mandatory on streams.  When framing is lost (missing
    or invalid Content-Length, a message over ``max_message_size``, a bare
    CR between messages) the error is reported with ``fatal=True`` as the
    last event; the transport should send the error response if any and
    close the connection.  Later calls to :meth:`feed` raise that error.

    A ping split across two reads is first reported as a :class:`Pong` and,
    once its second CRLF arrives, as a :class:`Ping`: a server answers
    every ping and a client sees every pong as soon as it arrives.
    """

    def __init__(self, max_message_size: int = 65535) -> None:
        if max_message_size <= 0:
            raise ValueError("max_message_size must be positive")
        self.max_message_size = max_message_size
        self._buffer = bytearray()
        self._scan_from = 0
        # a message (or the error about it) whose body is still arriving:
        # (event, offset of the body in the buffer, body length)
        self._pending: tuple[Message | SIPParseError, int, int] | None = None
        self._lone_crlf = False
        self._failed: SIPParseError | None = None

    @property
    def buffered(self) -> int:
        """Number of octets received but not yet consumed."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[StreamEvent]:
        """Add received octets; return the events they complete."""
        if self._failed is not None:
            raise SIPParseError(
                f"Stream closed after framing error: {self._failed.reason}", None, drop=True, fatal=True
            )
        buf = self._buffer
        buf += data
        size = len(buf)
        events: list[StreamEvent] = []
        pos = 0
        fresh = True
        while True:
            if self._pending is not None:
                item, body_start, length = self._pending
                if size - body_start < length:
                    break
                body = bytes(buf[body_start:body_start + length])
                target = item.message if isinstance(item, SIPParseError) else item
                if target is not None:
                    target.body = body
                events.append(item)  # type: ignore[arg-type]
                pos = self._scan_from = body_start + length
                self._pending = None
                fresh = False
                continue
            if pos >= size:
                break
            if buf[pos] == 13:  # CR at a message boundary: a keep-alive
                if size - pos < 2 or (size - pos == 3 and buf[pos + 2] == 13):
                    break
                if buf[pos + 1] != 10:
                    return self._fail(events, SIPParseError("Bare CR between messages"))
                if fresh and pos == 0 and self._lone_crlf:
                    events.append(_PING)  # second half of a ping split across reads
                    pos += 2
                    self._lone_crlf = False
                elif buf.startswith(b"\r\n\r\n", pos):
                    events.append(_PING)
                    pos += 4
                    self._lone_crlf = False
                else:
                    events.append(_PONG)
                    pos += 2
                    self._lone_crlf = pos == size
                self._scan_from = pos
                fresh = False
                continue
            self._lone_crlf = False
            fresh = False
            end = buf.find(b"\r\n\r\n", max(pos, self._scan_from))
            if end < 0:
                if size - pos > self.max_message_size:
                    return self._fail(events, SIPParseError(REASON_PHRASES[513], 513))
                self._scan_from = max(pos, size - 3)
                break
            message, body_length, error = _parse_head(bytes(buf[pos:end]).decode("utf-8", "surrogateescape"))
            if error is not None and error.fatal:
                return self._fail(events, error)
            if body_length is None:
                return self._fail(events, message._error("Missing Content-Length"))
            if end + 4 - pos + body_length > self.max_message_size:
                too_large = message._error(REASON_PHRASES[513])
                if too_large.status is not None:
                    too_large.status = 513
                return self._fail(events, too_large)
            self._pending = (error if error is not None else message, end + 4, body_length)
        if pos:
            del buf[:pos]
            self._scan_from = max(0, self._scan_from - pos)
            if self._pending is not None:
                item, body_start, length = self._pending
                self._pending = (item, body_start - pos, length)
        return events

    def _fail(self, events: list[StreamEvent], error: SIPParseError) -> list[StreamEvent]:
        error.fatal = True
        self._failed = error
        self._buffer.clear()
        self._pending = None
        events.append(error)
        return events


# --------------------------------------------------------------------------
# Responses and validation
# --------------------------------------------------------------------------


def new_tag() -> str:
    """A fresh From/To tag (RFC 3261 §19.3): 64 unpredictable bits (``core.ids``)."""
    return ids.token_hex(8)


def new_branch() -> str:
    """A fresh RFC 3261 Via branch: the magic cookie plus 96 random bits."""
    return MAGIC_COOKIE + ids.token_hex(12)


def make_response(
    request: Request,
    code: int,
    reason: str | None = None,
    to_tag: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """Build a response to ``request`` (RFC 3261 §8.2.6).

    Via (every value, in order), From, To, Call-ID and CSeq are copied from
    the request; ``to_tag`` is added to To unless it already has a tag;
    Timestamp is copied into 100 responses (§8.2.6.1).  Works on the
    partial request carried by a :class:`SIPParseError`, copying whatever
    header text is there.
    """
    if to_tag is not None and not _is_token(to_tag):
        raise ValueError(f"invalid To tag {to_tag!r}")
    response = Response(code, reason, body=body)
    headers = response._headers
    seen: set[str] = set()
    for key, name, value in request._headers:
        if key == "via":
            headers.append((key, name, value))
    for key, name, value in request._headers:
        if key in seen:
            continue
        if key not in ("from", "to", "call-id", "cseq") and not (key == "timestamp" and code == 100):
            continue
        seen.add(key)
        if key == "to" and to_tag is not None:
            try:
                has_tag = parse_address(value).tag is not None
            except SIPParseError:
                has_tag = True  # never rewrite a To we cannot parse
            if not has_tag:
                value = f"{value};tag={to_tag}"
        headers.append((key, name, value))
    for name, value in extra_headers:
        response.add(name, value)
    return response


def check_max_forwards(request: Request) -> bool:
    """Apply the Max-Forwards rule of RFC 3261 §16.3 step 3 before forwarding.

    Returns ``True`` when the request may be forwarded, ``False`` for an
    OPTIONS with Max-Forwards 0 (the element may then answer it itself,
    §11), and raises :class:`SIPParseError` with status 483 for any other
    request whose Max-Forwards is 0.  A missing Max-Forwards allows
    forwarding (the proxy then adds one with value 70).
    """
    value = request.max_forwards
    if value is None or value > 0:
        return True
    if request.method == "OPTIONS":
        return False
    raise SIPParseError(REASON_PHRASES[483], 483, message=request)


def validate_request(
    request: Request,
    *,
    supported_methods: Collection[str] | None = None,
    supported_schemes: Collection[str] = ("sip", "sips", "tel"),
    supported_extensions: Collection[str] | None = None,
    proxy: bool = False,
    accepted_content_types: Collection[str] | None = None,
) -> None:
    """Check a parsed request before acting on it; raise :class:`SIPParseError` if unfit.

    In order (RFC 3261 §8.2, §16.3):

    1. 400 when To, From, Call-ID, CSeq or Via is missing, when a
       single-valued header appears twice, when To, From, CSeq, Call-ID,
       Via, Max-Forwards, Contact, Route, Record-Route, Expires or Date is
       malformed (CSeq must stay below 2**31, Max-Forwards within 0..255,
       Date in GMT), or when the top Via branch is a bare magic cookie;
    2. 501 with an Allow header when ``supported_methods`` is given and the
       method is not in it;
    3. 400 when the CSeq method differs from the request method;
    4. 416 when the Request-URI scheme is not in ``supported_schemes``;
    5. 420 with an Unsupported header when ``supported_extensions`` is
       given and Require (or Proxy-Require with ``proxy=True``) lists an
       option tag outside it (ignored for ACK and CANCEL);
    6. 415 with an Accept header when ``accepted_content_types`` is given
       and a non-empty body has another media type.
    """
    for key in ("to", "from", "call-id", "cseq", "via"):
        if request.get(key) is None:
            raise request._error(f"Missing {_HEADER_IDS[key][1]} header")
    for key in _SINGLE_HEADERS:
        if request.count(key) > 1:
            raise request._error(f"Multiple {_HEADER_IDS[key][1]} headers")
    top = request.top_via
    cseq = request.cseq
    _ = request.call_id, request.from_addr, request.to_addr, request.max_forwards
    _ = request.contacts, request.routes, request.record_routes, request.expires
    date = request.get("date")
    if date is not None and _DATE_RE.fullmatch(date) is None:
        raise request._error("Malformed Date header")
    if top is not None and top.branch == MAGIC_COOKIE:
        raise request._error("Malformed Via branch")
    if supported_methods is not None and request.method not in supported_methods:
        allow = ", ".join(sorted(supported_methods))
        raise SIPParseError(REASON_PHRASES[501], 501, message=request, headers=[("Allow", allow)])
    if cseq is not None and cseq.method != request.method:
        raise request._error("CSeq method does not match request method")
    if request.uri.scheme not in supported_schemes:
        raise SIPParseError(REASON_PHRASES[416], 416, message=request)
    if supported_extensions is not None and request.method not in ("ACK", "CANCEL"):
        name = "proxy-require" if proxy else "require"
        unknown = [tag for tag in request.option_tags(name) if tag not in supported_extensions]
        if unknown:
            raise SIPParseError(
                REASON_PHRASES[420], 420, message=request, headers=[("Unsupported", ", ".join(unknown))]
            )
    if accepted_content_types is not None and request.body:
        media = request.content_type
        if media not in {t.lower() for t in accepted_content_types}:
            accept = ", ".join(accepted_content_types)
            raise SIPParseError(REASON_PHRASES[415], 415, message=request, headers=[("Accept", accept)])


def validate_response(response: Response) -> None:
    """Check the headers a UAC or proxy relies on; raise a ``drop`` error if unfit.

    A response lacking Via, From, To, Call-ID or CSeq, or with any of them
    (or Contact) malformed, must be discarded silently (RFC 3261 §18.1.2).
    """
    for key in ("via", "from", "to", "call-id", "cseq"):
        if response.get(key) is None:
            raise response._error(f"Missing {_HEADER_IDS[key][1]} header")
    for key in ("to", "from", "call-id", "cseq"):
        if response.count(key) > 1:
            raise response._error(f"Multiple {_HEADER_IDS[key][1]} headers")
    _ = response.via, response.from_addr, response.to_addr, response.call_id, response.cseq
    _ = response.contacts, response.record_routes
