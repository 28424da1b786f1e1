"""G.711 µ-law (PCMU) and A-law (PCMA) per ITU-T G.711, in bulk.

Every conversion is a table look-up built once at import time from the
segment structure of G.711 (Tables 1 and 2): decoding is two
``bytes.translate`` calls (low and high byte of each 16-bit sample) and an
interleave by slice assignment; encoding indexes a 65536-entry table with
the unsigned view of each sample; µ-law <-> A-law is a single translate.
No per-sample Python function call, and no ``audioop`` (gone in 3.13).

Linear samples are 16-bit two's complement, little-endian, as in WAV files.
Negative inputs are folded with the one's complement (``-x - 1``) as in the
ITU-T G.191 reference software, so the quantiser is symmetric: ``-1`` is the
negative zero of µ-law, not its first negative step.  Bad input raises
:class:`G711Error`.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "ALAW_SILENCE",
    "PCMA",
    "PCMU",
    "SAMPLE_RATE",
    "ULAW_SILENCE",
    "Codec",
    "G711Error",
    "alaw_decode",
    "alaw_encode",
    "alaw_to_pcm16",
    "alaw_to_ulaw",
    "codec_for",
    "codec_for_payload_type",
    "pcm16_to_alaw",
    "pcm16_to_ulaw",
    "transcode",
    "transcode_table",
    "ulaw_decode",
    "ulaw_encode",
    "ulaw_to_alaw",
    "ulaw_to_pcm16",
]

#: Static RTP payload types (RFC 3551 table 4).
PCMU = 0
PCMA = 8
#: G.711 runs at 8000 samples per second, one byte per sample.
SAMPLE_RATE = 8000
#: The code of a zero sample: µ-law positive zero, A-law smallest positive step.
ULAW_SILENCE = 0xFF
ALAW_SILENCE = 0xD5


class G711Error(ValueError):
    """Input that cannot be converted; the message says what was wrong."""


# --------------------------------------------------------------------------
# One code at a time, straight from the segment tables
# --------------------------------------------------------------------------


def ulaw_decode(code: int) -> int:
    """The 16-bit linear value of one µ-law code (G.711 Table 2, decoder output).

    Segment ``s`` (0-7) and step ``q`` (0-15) are stored inverted; in 14-bit
    units the output is ``((2q + 33) << s) - 33``, i.e. 0, 2 ... 30, 33, 37
    ... 8031.  Scaled by 4 to the 16-bit range (maximum 32124).
    """
    if not 0 <= code <= 255:
        raise G711Error(f"µ-law code {code} is outside 0-255")
    inverted = ~code & 0xFF
    segment = (inverted >> 4) & 0x07
    step = inverted & 0x0F
    magnitude = (((2 * step + 33) << segment) - 33) * 4
    return -magnitude if inverted & 0x80 else magnitude


def alaw_decode(code: int) -> int:
    """The 16-bit linear value of one A-law code (G.711 Table 1, decoder output).

    Even bits are inverted on the line.  Segment 0 outputs ``2q + 1``, segment
    ``s >= 1`` outputs ``(2q + 33) << (s - 1)`` in 12-bit units (1, 3 ... 31,
    33, 35 ... 4032); scaled by 8 to the 16-bit range (maximum 32256).
    """
    if not 0 <= code <= 255:
        raise G711Error(f"A-law code {code} is outside 0-255")
    toggled = code ^ 0x55
    segment = (toggled >> 4) & 0x07
    step = toggled & 0x0F
    if segment == 0:
        magnitude = 2 * step + 1
    else:
        magnitude = (2 * step + 33) << (segment - 1)
    magnitude *= 8
    return magnitude if toggled & 0x80 else -magnitude


def _ulaw_intervals() -> list[tuple[int, int]]:
    """(exclusive upper bound of the 16-bit magnitude, positive code), ascending.

    The 14-bit magnitude ``m`` biased by 33 falls in segment ``s`` with step
    ``q`` when ``(16 + q) << (s + 1) <= m + 33 < (17 + q) << (s + 1)``; the
    16-bit magnitude is ``4m .. 4m + 3``.  Magnitudes past the last decision
    value clip to the largest code.
    """
    runs = []
    for segment in range(8):
        for step in range(16):
            upper14 = ((17 + step) << (segment + 1)) - 33
            runs.append((upper14 * 4, 0xFF - ((segment << 4) | step)))
    runs[-1] = (32768, runs[-1][1])
    return runs


def _alaw_intervals() -> list[tuple[int, int]]:
    """As :func:`_ulaw_intervals` for A-law: the 12-bit magnitude ``M >> 4``
    is ``q`` in segment 0 and ``(16 + q) << (s - 1)`` onwards in segment ``s``."""
    runs = []
    for segment in range(8):
        for step in range(16):
            upper12 = step + 1 if segment == 0 else (17 + step) << (segment - 1)
            runs.append((upper12 * 16, (0x80 | (segment << 4) | step) ^ 0x55))
    runs[-1] = (32768, runs[-1][1])
    return runs


def _encode_table(runs: list[tuple[int, int]]) -> bytes:
    """A table indexed by the unsigned 16-bit view of a sample.

    Entries 0-32767 are the non-negative samples; entry ``u`` >= 32768 is the
    sample ``u - 65536`` whose folded magnitude ``65535 - u`` runs backwards,
    with the sign bit cleared.
    """
    positive = bytearray()
    start = 0
    for upper, code in runs:
        if upper > start:
            positive += bytes((code,)) * (upper - start)
            start = upper
    if len(positive) != 32768:
        raise AssertionError("G.711 decision intervals do not cover 0-32767")
    clear_sign = bytes(value & 0x7F for value in range(256))
    negative = bytes(reversed(positive)).translate(clear_sign)
    return bytes(positive) + negative


_ULAW_ENCODE = _encode_table(_ulaw_intervals())
_ALAW_ENCODE = _encode_table(_alaw_intervals())


def ulaw_encode(sample: int) -> int:
    """The µ-law code of one 16-bit sample (clipped at the largest step)."""
    if not -32768 <= sample <= 32767:
        raise G711Error(f"sample {sample} is outside the 16-bit range")
    return _ULAW_ENCODE[sample & 0xFFFF]


def alaw_encode(sample: int) -> int:
    """The A-law code of one 16-bit sample (clipped at the largest step)."""
    if not -32768 <= sample <= 32767:
        raise G711Error(f"sample {sample} is outside the 16-bit range")
    return _ALAW_ENCODE[sample & 0xFFFF]


# --------------------------------------------------------------------------
# Bulk conversions
# --------------------------------------------------------------------------


def _split_table(decode: Callable[[int], int]) -> tuple[bytes, bytes]:
    values = [decode(code) & 0xFFFF for code in range(256)]
    return bytes(v & 0xFF for v in values), bytes(v >> 8 for v in values)


_ULAW_LOW, _ULAW_HIGH = _split_table(ulaw_decode)
_ALAW_LOW, _ALAW_HIGH = _split_table(alaw_decode)
_ULAW_TO_ALAW = bytes(_ALAW_ENCODE[ulaw_decode(code) & 0xFFFF] for code in range(256))
_ALAW_TO_ULAW = bytes(_ULAW_ENCODE[alaw_decode(code) & 0xFFFF] for code in range(256))
_BIG_ENDIAN = sys.byteorder == "big"


def _expand(payload: bytes, low: bytes, high: bytes) -> bytes:
    out = bytearray(2 * len(payload))
    out[0::2] = payload.translate(low)
    out[1::2] = payload.translate(high)
    return bytes(out)


def _compress(pcm: bytes, table: bytes) -> bytes:
    if len(pcm) % 2:
        raise G711Error(f"16-bit PCM of odd length {len(pcm)}")
    samples = array("H")
    samples.frombytes(pcm)
    if _BIG_ENDIAN:
        samples.byteswap()
    return bytes(map(table.__getitem__, samples))


def ulaw_to_pcm16(payload: bytes) -> bytes:
    """µ-law bytes to 16-bit little-endian linear PCM (twice as long)."""
    return _expand(payload, _ULAW_LOW, _ULAW_HIGH)


def alaw_to_pcm16(payload: bytes) -> bytes:
    """A-law bytes to 16-bit little-endian linear PCM (twice as long)."""
    return _expand(payload, _ALAW_LOW, _ALAW_HIGH)


def pcm16_to_ulaw(pcm: bytes) -> bytes:
    """16-bit little-endian linear PCM to µ-law bytes (half as long)."""
    return _compress(pcm, _ULAW_ENCODE)


def pcm16_to_alaw(pcm: bytes) -> bytes:
    """16-bit little-endian linear PCM to A-law bytes (half as long)."""
    return _compress(pcm, _ALAW_ENCODE)


def ulaw_to_alaw(payload: bytes) -> bytes:
    """µ-law to A-law through the linear value (decode, then encode)."""
    return payload.translate(_ULAW_TO_ALAW)


def alaw_to_ulaw(payload: bytes) -> bytes:
    """A-law to µ-law through the linear value (decode, then encode)."""
    return payload.translate(_ALAW_TO_ULAW)


# --------------------------------------------------------------------------
# Codecs by name and payload type
# --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Codec:
    """One G.711 law: its SDP name, static payload type and conversions."""

    name: str
    payload_type: int
    silence: int
    decode: Callable[[bytes], bytes]
    encode: Callable[[bytes], bytes]

    def __repr__(self) -> str:
        return f"Codec({self.name})"

    def silence_frame(self, samples: int) -> bytes:
        """``samples`` bytes of digital silence in this law."""
        return bytes((self.silence,)) * samples


_CODECS = {
    "PCMU": Codec("PCMU", PCMU, ULAW_SILENCE, ulaw_to_pcm16, pcm16_to_ulaw),
    "PCMA": Codec("PCMA", PCMA, ALAW_SILENCE, alaw_to_pcm16, pcm16_to_alaw),
}
_BY_PAYLOAD_TYPE = {codec.payload_type: codec for codec in _CODECS.values()}
_TRANSCODE = {("PCMU", "PCMA"): _ULAW_TO_ALAW, ("PCMA", "PCMU"): _ALAW_TO_ULAW}


def codec_for(encoding_name: str | Codec) -> Codec:
    """The codec of an SDP encoding name: "PCMU", "pcma", "PCMU/8000" ...

    A :class:`Codec` is returned as is, so callers may take either.
    """
    if isinstance(encoding_name, Codec):
        return encoding_name
    name, _, rate = str(encoding_name).strip().partition("/")
    codec = _CODECS.get(name.upper())
    if codec is None:
        raise G711Error(f"{encoding_name!r} is not a G.711 encoding (PCMU or PCMA)")
    if rate and rate.split("/")[0] != str(SAMPLE_RATE):
        raise G711Error(f"{encoding_name!r}: G.711 runs at {SAMPLE_RATE} Hz")
    return codec


def codec_for_payload_type(payload_type: int) -> Codec | None:
    """The codec of a static payload type (0 or 8), ``None`` for any other."""
    return _BY_PAYLOAD_TYPE.get(payload_type)


def transcode_table(source: str | Codec, target: str | Codec) -> bytes | None:
    """The ``bytes.translate`` table from one law to the other, ``None`` if
    they are the same (for callers converting frame after frame)."""
    src, dst = codec_for(source), codec_for(target)
    return None if src is dst else _TRANSCODE[(src.name, dst.name)]


def transcode(payload: bytes, source: str | Codec, target: str | Codec) -> bytes:
    """``payload`` in ``source``'s law re-encoded in ``target``'s (returned
    as is when they are the same)."""
    table = transcode_table(source, target)
    return payload if table is None else payload.translate(table)
