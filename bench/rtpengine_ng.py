"""A minimal client of rtpengine's ng control protocol, for the media benchmark.

Just what ``bench/media_bench.py`` needs to put calls through rtpengine: ping,
offer, answer, delete. The protocol: one UDP datagram per message, a cookie
(any token without spaces), a space, then a bencoded dictionary; the reply
carries the same cookie. rtpengine remembers its replies by cookie for a
while, so sending the same message again after a lost reply is safe, and is
what this client does on a timeout.

A blocking socket, not Twisted: the bench drives rtpengine from a plain
script, one command at a time, and nothing else runs beside it.

    client = NgClient("127.0.0.1", 2223)
    client.ping()
    to_b = client.offer("call-1", "tag-a", sdp_audio("127.0.0.1", 40000, 1))
    to_a = client.answer("call-1", "tag-a", "tag-b", sdp_audio("127.0.0.1", 40002, 2))
    sdp_media_port(to_b)   # where party B sends its audio
    client.delete("call-1", "tag-a")
"""

from __future__ import annotations

import itertools
import re
import secrets
import socket
import time
from typing import Any, Self, TypeAlias

Bencodable: TypeAlias = (
    "bytes | str | int | list[Bencodable] | tuple[Bencodable, ...] | dict[str | bytes, Bencodable]"
)


class BencodeError(ValueError):
    """Bytes that are not bencoding, or a value bencoding cannot carry."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message if offset is None else f"{message} at offset {offset}")
        self.offset = offset


class NgError(Exception):
    """rtpengine refused a command (result "error"), or answered nonsense."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(f"ng {command}: {reason}")
        self.command = command
        self.reason = reason


class NgTimeout(NgError):
    """No reply to a command after every retry."""


class SdpError(ValueError):
    """An SDP body without the audio media line the bench needs."""


# -- bencode ----------------------------------------------------------------------


def bencode(value: Bencodable) -> bytes:
    """Bencoding of ``value``; text is UTF-8, dictionary keys are sorted."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: Bencodable, out: list[bytes]) -> None:
    if isinstance(value, bool):
        raise BencodeError("bencoding has no booleans (use 0/1 or a string)")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, str):
        data = value.encode()
        out.append(b"%d:" % len(data))
        out.append(data)
    elif isinstance(value, bytes):
        out.append(b"%d:" % len(value))
        out.append(value)
    elif isinstance(value, (list, tuple)):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        for (key, _), (following, _) in itertools.pairwise(items):
            if key == following:
                raise BencodeError(f"duplicate dictionary key {key!r}")
        out.append(b"d")
        for key, item in items:
            if not isinstance(key, bytes):
                raise BencodeError(f"dictionary key {key!r} is not text")
            _encode(key, out)
            _encode(item, out)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> Any:
    """The value bencoded in ``data`` (strings as ``bytes``); all of it must be used."""
    value, end = _decode(data, 0)
    if end != len(data):
        raise BencodeError("trailing bytes after the value", end)
    return value


def _decode(data: bytes, i: int) -> tuple[Any, int]:
    if i >= len(data):
        raise BencodeError("truncated", i)
    lead = data[i:i + 1]
    if lead == b"i":
        end = data.find(b"e", i + 1)
        if end < 0:
            raise BencodeError("unterminated integer", i)
        digits = data[i + 1:end]
        if not re.fullmatch(rb"-?(0|[1-9][0-9]*)", digits) or digits == b"-0":
            raise BencodeError(f"bad integer {digits!r}", i)
        return int(digits), end + 1
    if lead == b"l":
        items = []
        i += 1
        while data[i:i + 1] != b"e":
            item, i = _decode(data, i)
            items.append(item)
        return items, i + 1
    if lead == b"d":
        result: dict[bytes, Any] = {}
        i += 1
        while data[i:i + 1] != b"e":
            key, i = _decode(data, i)
            if not isinstance(key, bytes):
                raise BencodeError("dictionary key is not a string", i)
            result[key], i = _decode(data, i)
        return result, i + 1
    if lead.isdigit():
        colon = data.find(b":", i)
        if colon < 0 or not data[i:colon].isdigit():
            raise BencodeError("bad string length", i)
        length = int(data[i:colon])
        start = colon + 1
        if start + length > len(data):
            raise BencodeError("string runs past the end", i)
        return data[start:start + length], start + length
    raise BencodeError(f"unexpected byte {lead!r}", i)


def _text(value: Any) -> Any:
    """Decoded bencoding with its strings as text (rtpengine speaks UTF-8)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        return {k.decode("utf-8", "replace"): _text(v) for k, v in value.items()}
    return value


# -- SDP ----------------------------------------------------------------------------


def sdp_audio(address: str, port: int, session_id: int, payload_type: int = 0,
              encoding: str = "PCMU/8000") -> str:
    """A one-stream audio SDP body (RTP/AVP, 20 ms), as a party of a call would offer."""
    return "\r\n".join([
        "v=0",
        f"o=- {session_id} 1 IN IP4 {address}",
        "s=rtpload",
        f"c=IN IP4 {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {payload_type}",
        f"a=rtpmap:{payload_type} {encoding}",
        "a=ptime:20",
        "a=sendrecv",
        "",
    ])


_MEDIA = re.compile(r"^m=audio (\d+) ", re.MULTILINE)
_CONNECTION = re.compile(r"^c=IN IP4 (\S+)", re.MULTILINE)


def sdp_media_port(sdp: str) -> int:
    """The port of the first audio stream of ``sdp``: where its party receives."""
    found = _MEDIA.search(sdp)
    if found is None or not 0 < int(found.group(1)) < 65536:
        raise SdpError(f"no audio media line with a port in SDP: {sdp[:200]!r}")
    return int(found.group(1))


def sdp_connection_address(sdp: str) -> str:
    """The first IPv4 connection address of ``sdp``."""
    found = _CONNECTION.search(sdp)
    if found is None:
        raise SdpError(f"no IPv4 connection line in SDP: {sdp[:200]!r}")
    return found.group(1)


# -- the client ---------------------------------------------------------------------


class NgClient:
    """Commands to one rtpengine over UDP, one at a time, retried on timeout."""

    def __init__(self, host: str, port: int, timeout: float = 2.0, retries: int = 3) -> None:
        if retries < 1:
            raise ValueError(f"retries must be at least 1, got {retries}")
        self.address = (host, port)
        self.timeout = timeout
        self.retries = retries
        self._prefix = secrets.token_hex(4)
        self._count = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.settimeout(timeout)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, name: str, params: dict[str, Bencodable] | None = None) -> dict[str, Any]:
        """Send ``name`` with ``params`` (ng keys as given, e.g. "call-id"); the reply as text.

        Raises NgError when rtpengine answers with result "error", NgTimeout
        when it does not answer at all.
        """
        self._count += 1
        cookie = f"{self._prefix}_{self._count}".encode()
        message = dict(params or {})
        message["command"] = name
        datagram = cookie + b" " + bencode(message)
        for _ in range(self.retries):
            self._sock.sendto(datagram, self.address)
            deadline = time.monotonic() + self.timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._sock.settimeout(left)
                try:
                    data, _ = self._sock.recvfrom(65536)
                except TimeoutError:
                    break
                got, _, body = data.partition(b" ")
                if got != cookie:
                    continue  # a late reply to an earlier, retried command
                try:
                    reply = _text(bdecode(body))
                except BencodeError as e:
                    raise NgError(name, f"undecodable reply ({e})") from None
                if not isinstance(reply, dict):
                    raise NgError(name, f"reply is not a dictionary: {reply!r}")
                result = reply.get("result")
                if result == "error":
                    raise NgError(name, reply.get("error-reason", "error without a reason"))
                if result not in ("ok", "pong"):
                    raise NgError(name, f"unexpected result {result!r}")
                return reply
        raise NgTimeout(name, f"no reply from {self.address[0]}:{self.address[1]} "
                              f"after {self.retries} tries of {self.timeout} s")

    def ping(self) -> None:
        """Raises unless rtpengine answers "pong"."""
        reply = self.command("ping")
        if reply.get("result") != "pong":
            raise NgError("ping", f"expected pong, got {reply.get('result')!r}")

    def offer(self, call_id: str, from_tag: str, sdp: str, **options: Bencodable) -> str:
        """The caller's SDP in, the SDP for the callee out (rtpengine's ports for the callee)."""
        params: dict[str, Bencodable] = {"call-id": call_id, "from-tag": from_tag, "sdp": sdp}
        params.update({k.replace("_", "-"): v for k, v in options.items()})
        return self._sdp("offer", params)

    def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: str, **options: Bencodable) -> str:
        """The callee's SDP in, the SDP for the caller out (rtpengine's ports for the caller)."""
        params: dict[str, Bencodable] = {"call-id": call_id, "from-tag": from_tag, "to-tag": to_tag, "sdp": sdp}
        params.update({k.replace("_", "-"): v for k, v in options.items()})
        return self._sdp("answer", params)

    def delete(self, call_id: str, from_tag: str | None = None) -> dict[str, Any]:
        """End the call; the reply holds rtpengine's final statistics of it."""
        params: dict[str, Bencodable] = {"call-id": call_id}
        if from_tag is not None:
            params["from-tag"] = from_tag
        return self.command("delete", params)

    def _sdp(self, name: str, params: dict[str, Bencodable]) -> str:
        reply = self.command(name, params)
        sdp = reply.get("sdp")
        if not isinstance(sdp, str):
            raise NgError(name, "reply has no SDP")
        return sdp
