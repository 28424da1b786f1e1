"""Sans-IO codec of IIF, the callback interface of seed 003.

An application server (AS) sends one ``REQUEST`` per datagram; switchd answers
with ``ACK`` (the request was parsed and the first call started, or not) and,
when the callback is over, ``RESPONSE`` (the bridged seconds)::

    REQUEST: id=1234;user1=100;user2=101;duration=3600;
    ACK: id=1234;code=ok
    RESPONSE: id=1234;real_duration=180;

Bytes go in, :class:`IifRequest` / :class:`IifAck` / :class:`IifResponse`
come out; the same classes encode themselves.  No socket, no clock.

How strict the parser is (each rule is tested, and documented in
``docs/iif.rst``):

* the message is UTF-8 text of at most :data:`MAX_LENGTH` bytes;
* whitespace and line ends (space, tab, CR, LF) around the whole message are
  ignored, and so are spaces and tabs around the ``:`` after the method, around
  each ``;`` and around each ``=``;
* the method is uppercase (``REQUEST``, ``ACK``, ``RESPONSE``) and parameter
  names are lowercase, as the seed says; ``request:`` or ``ID=`` are errors;
* parameters are separated by ``;``; one final ``;`` is optional, an empty
  parameter elsewhere (``;;``) is an error;
* an unknown parameter, a repeated one, or a missing required one is an error:
  a misspelt ``ann_id2`` must not be silently ignored.

Every problem raises :class:`IifError`, which carries the request's ``id``
when one could be read, so that the server can answer ``ACK: id=...;code=fail``.
No input makes :func:`parse_message` raise anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_ANN_ID1",
    "DEFAULT_PORT",
    "MAX_DURATION",
    "MAX_FIELD_LENGTH",
    "MAX_LENGTH",
    "METHODS",
    "IifAck",
    "IifError",
    "IifMessage",
    "IifRequest",
    "IifResponse",
    "check_number",
    "encode_ack",
    "encode_response",
    "parse_message",
    "parse_request",
]

#: The UDP port of the seed ("By default, MSS uses UDP port 5080").
DEFAULT_PORT = 5080
#: Announcement played to user1 when the request names none (seed: 'The default "ann1" is 00080002').
DEFAULT_ANN_ID1 = "00080002"
#: id, user1, user2 (and ann_digit2) are "less than 32 characters".
MAX_FIELD_LENGTH = 31
#: Largest ``duration`` accepted by default: one day, in seconds.
MAX_DURATION = 86400
#: Largest message accepted, in bytes. A REQUEST with every parameter at its
#: longest is about 200 bytes.
MAX_LENGTH = 512
#: The seed's three methods.
METHODS = ("REQUEST", "ACK", "RESPONSE")

# Integers are at most this many digits, so that no input makes int() work hard.
_MAX_DIGITS = 10
_SPACE = " \t"
_LINE_SPACE = " \t\r\n"

# Printable ASCII but ';' and '=', which delimit parameters: what an id may hold,
# so that it is echoed back unchanged in ACK and RESPONSE.
_ID_RE = re.compile(rf"[!-:<>-~]{{1,{MAX_FIELD_LENGTH}}}")
_NUMBER_RE = re.compile(rf"\+?[0-9]{{1,{MAX_FIELD_LENGTH}}}")
_ANN_ID_RE = re.compile(r"[0-9]{8}")
_DIGITS_RE = re.compile(rf"[0-9]{{1,{MAX_FIELD_LENGTH}}}")
_INTEGER_RE = re.compile(rf"[0-9]{{1,{_MAX_DIGITS}}}")

_REQUEST_REQUIRED = ("id", "user1", "user2", "duration")
_REQUEST_OPTIONAL = ("ann_id1", "ann_id2", "ann_digit2")
_PARAMETERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "REQUEST": (_REQUEST_REQUIRED, _REQUEST_OPTIONAL),
    "ACK": (("id", "code"), ()),
    "RESPONSE": (("id", "real_duration"), ()),
}
_CODES = {"ok": True, "fail": False}


class IifError(ValueError):
    """An IIF message that cannot be accepted.

    Attributes:
        reason: what is wrong, in words an AS developer can act on.
        id: the message's ``id`` when it could be read (a valid id), else ``None``;
            the server answers ``ACK: id=...;code=fail`` to a failed REQUEST with one.
        method: ``"REQUEST"``, ``"ACK"`` or ``"RESPONSE"`` when the method was
            recognised (even in the wrong case), else ``None``.
        parameter: the parameter at fault, if one is.
    """

    def __init__(self, reason: str, *, id: str | None = None, method: str | None = None,
                 parameter: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.id = id
        self.method = method
        self.parameter = parameter

    def __repr__(self) -> str:
        return f"IifError({self.reason!r}, id={self.id!r}, method={self.method!r}, parameter={self.parameter!r})"


# --------------------------------------------------------------------------
# Field checks, shared by the parser and the message classes
# --------------------------------------------------------------------------


def _check_id(value: str) -> None:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise IifError(
            f"id {value!r} must be 1 to {MAX_FIELD_LENGTH} printable ASCII characters, without ';', '=' or spaces",
            parameter="id",
        )


def check_number(name: str, value: str) -> None:
    """A dialable number: digits with an optional leading ``+``, less than 32 characters in all."""
    if not isinstance(value, str) or len(value) > MAX_FIELD_LENGTH or not _NUMBER_RE.fullmatch(value):
        raise IifError(
            f"{name} {value!r} must be digits with an optional leading '+', less than {MAX_FIELD_LENGTH + 1} "
            "characters",
            parameter=name,
        )


def _check_count(name: str, value: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise IifError(f"{name} {value!r} must be an integer >= 0", parameter=name)
    if maximum is not None and value > maximum:
        raise IifError(f"{name} {value} is more than the maximum {maximum}", parameter=name)


def _check_ann_id(name: str, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not _ANN_ID_RE.fullmatch(value)):
        raise IifError(f"{name} {value!r} must be exactly 8 digits", parameter=name)


def _check_digits(name: str, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not _DIGITS_RE.fullmatch(value)):
        raise IifError(f"{name} {value!r} must be 1 to {MAX_FIELD_LENGTH} digits", parameter=name)


def _integer(name: str, text: str) -> int:
    if not _INTEGER_RE.fullmatch(text):
        raise IifError(f"{name} {text!r} must be an integer >= 0 of at most {_MAX_DIGITS} digits", parameter=name)
    return int(text)


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IifRequest:
    """``REQUEST``: call user1, then user2 when user1 answers, for at most ``duration`` seconds.

    ``ann_id1`` is :data:`DEFAULT_ANN_ID1` when the request names none, as
    the seed says; ``duration`` 0 means no limit but the paying account's balance.
    """

    id: str
    user1: str
    user2: str
    duration: int
    ann_id1: str = DEFAULT_ANN_ID1
    ann_id2: str | None = None
    ann_digit2: str | None = None

    def __post_init__(self) -> None:
        _check_id(self.id)
        check_number("user1", self.user1)
        check_number("user2", self.user2)
        _check_count("duration", self.duration)
        if self.ann_id1 is None:
            raise IifError("ann_id1 must be exactly 8 digits (it has a default)", parameter="ann_id1")
        _check_ann_id("ann_id1", self.ann_id1)
        _check_ann_id("ann_id2", self.ann_id2)
        _check_digits("ann_digit2", self.ann_digit2)

    def encode(self) -> bytes:
        """The REQUEST as an AS sends it; ``ann_id1`` is left out when it is the default."""
        parts = [f"REQUEST: id={self.id};user1={self.user1};user2={self.user2};duration={self.duration};"]
        if self.ann_id1 != DEFAULT_ANN_ID1:
            parts.append(f"ann_id1={self.ann_id1};")
        if self.ann_id2 is not None:
            parts.append(f"ann_id2={self.ann_id2};")
        if self.ann_digit2 is not None:
            parts.append(f"ann_digit2={self.ann_digit2};")
        return "".join(parts).encode("ascii")


@dataclass(frozen=True, slots=True)
class IifAck:
    """``ACK``: the REQUEST was parsed and its first call started (``ok``), or not (``fail``)."""

    id: str
    ok: bool

    def __post_init__(self) -> None:
        _check_id(self.id)

    def encode(self) -> bytes:
        return encode_ack(self.id, self.ok)


@dataclass(frozen=True, slots=True)
class IifResponse:
    """``RESPONSE``: the callback is over; user1 and user2 talked ``real_duration`` seconds."""

    id: str
    real_duration: int

    def __post_init__(self) -> None:
        _check_id(self.id)
        _check_count("real_duration", self.real_duration)

    def encode(self) -> bytes:
        return encode_response(self.id, self.real_duration)


IifMessage = IifRequest | IifAck | IifResponse


def encode_ack(id: str, ok: bool) -> bytes:
    """``ACK: id=<id>;code=ok`` or ``...;code=fail`` (no final ';', as the issue writes it)."""
    _check_id(id)
    return f"ACK: id={id};code={'ok' if ok else 'fail'}".encode("ascii")


def encode_response(id: str, real_duration: int) -> bytes:
    """``RESPONSE: id=<id>;real_duration=<seconds>;`` exactly as the seed's example."""
    _check_id(id)
    _check_count("real_duration", real_duration)
    return f"RESPONSE: id={id};real_duration={real_duration};".encode("ascii")


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


def _segments(rest: str) -> list[str]:
    """The parameters after the method, stripped; one final ';' is dropped."""
    segments = [s.strip(_SPACE) for s in rest.split(";")]
    if len(segments) > 1 and not segments[-1]:
        segments.pop()
    return segments


def _peek_id(segments: list[str]) -> str | None:
    """The one valid ``id=`` among the segments, whatever else is wrong; else ``None``."""
    found = None
    for segment in segments:
        name, eq, value = segment.partition("=")
        if eq and name.rstrip(_SPACE) == "id":
            if found is not None:
                return None  # two ids: answer neither
            found = value.lstrip(_SPACE)
    return found if found is not None and _ID_RE.fullmatch(found) else None


def parse_message(
    data: bytes, *, max_duration: int = MAX_DURATION, max_length: int = MAX_LENGTH
) -> IifMessage:
    """Parse one datagram into an :class:`IifRequest`, :class:`IifAck` or :class:`IifResponse`.

    ``max_duration`` bounds a REQUEST's ``duration`` (larger is an error);
    ``max_length`` bounds the datagram in bytes. Raises :class:`IifError`.
    """
    if len(data) > max_length:
        raise IifError(f"message of {len(data)} bytes, more than {max_length}")
    try:
        text = data.decode("utf-8")
        utf8 = True
    except UnicodeDecodeError:
        text = data.decode("utf-8", "surrogateescape")  # only to find the id to answer
        utf8 = False
    text = text.strip(_LINE_SPACE)
    head, colon, rest = text.partition(":")
    word = head.rstrip(_SPACE)
    method = word.upper() if word.upper() in METHODS else None
    segments = _segments(rest) if colon else []
    ident = _peek_id(segments)

    def error(reason: str, parameter: str | None = None) -> IifError:
        return IifError(reason, id=ident, method=method, parameter=parameter)

    if not utf8:
        raise error("the message is not UTF-8 text")
    if not colon:
        raise error("no ':' after the method" if text else "empty message")
    if method is None:
        raise error(f"unknown method {word[:16]!r}; expected REQUEST, ACK or RESPONSE")
    if word != method:
        raise error(f"the method must be uppercase: {method}, not {word!r}")
    if segments == [""]:
        raise error("no parameters after the method")

    required, optional = _PARAMETERS[method]
    params: dict[str, str] = {}
    for segment in segments:
        if not segment:
            raise error("empty parameter (';' twice, or a ';' first)")
        name, eq, value = segment.partition("=")
        name, value = name.rstrip(_SPACE), value.lstrip(_SPACE)
        if not eq:
            raise error(f"parameter {segment[:40]!r} has no '='")
        if name not in required and name not in optional:
            if name.lower() in required or name.lower() in optional:
                raise error(f"parameter names are lowercase: {name.lower()}, not {name!r}", name.lower())
            raise error(f"unknown parameter {name[:40]!r} in {method}", name[:40])
        if name in params:
            raise error(f"parameter {name!r} given twice", name)
        params[name] = value
    for name in required:
        if name not in params:
            raise error(f"{method} without the required parameter {name!r}", name)

    try:
        if method == "REQUEST":
            duration = _integer("duration", params["duration"])
            if duration > max_duration:
                raise IifError(f"duration {duration} is more than the maximum {max_duration}", parameter="duration")
            return IifRequest(
                id=params["id"],
                user1=params["user1"],
                user2=params["user2"],
                duration=duration,
                ann_id1=params.get("ann_id1", DEFAULT_ANN_ID1),
                ann_id2=params.get("ann_id2"),
                ann_digit2=params.get("ann_digit2"),
            )
        if method == "ACK":
            code = params["code"]
            if code not in _CODES:
                raise IifError(f"code {code[:40]!r} must be ok or fail", parameter="code")
            return IifAck(params["id"], _CODES[code])
        return IifResponse(params["id"], _integer("real_duration", params["real_duration"]))
    except IifError as e:
        e.id = ident  # None when the id itself is what is wrong
        e.method = method
        raise


def parse_request(
    data: bytes, *, max_duration: int = MAX_DURATION, max_length: int = MAX_LENGTH
) -> IifRequest:
    """Parse a datagram that must be a REQUEST (what the server receives). Raises :class:`IifError`."""
    message = parse_message(data, max_duration=max_duration, max_length=max_length)
    if not isinstance(message, IifRequest):
        method = "ACK" if isinstance(message, IifAck) else "RESPONSE"
        raise IifError(f"expected a REQUEST, got {method}", id=message.id, method=method)
    return message
