"""Announcements: audio files and text-to-speech, ready for the player.

Files are read and converted in a worker thread (``run_in_thread``): WAV
(16-bit PCM, µ-law or A-law) and Sun ``.au`` (µ-law, A-law, 16-bit linear),
mono or stereo, any rate; stereo is mixed down and other rates go through a
windowed-sinc resampler to 8 kHz.  A µ-law or A-law file already at 8 kHz
mono is used byte for byte.  Anything else raises :class:`PromptError`
naming the file and what is wrong with it.

:class:`PromptLibrary` finds announcements by their 8-digit id, per language,
and speaks configured texts with espeak-ng, run as a child process through
the reactor.  Spoken prompts are cached on disk (8 kHz WAV named by a hash of
voice, text and espeak-ng version) and every prompt is kept in a bounded
in-memory LRU; concurrent requests for the same prompt share one load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import stat
import struct
import sys
from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from functools import lru_cache
from operator import mul
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from switchd.media.g711 import (
    SAMPLE_RATE,
    Codec,
    alaw_to_pcm16,
    codec_for,
    transcode,
    ulaw_to_pcm16,
)
from switchd.media.player import FRAME_BYTES, Prompt

__all__ = [
    "DEFAULT_LANGUAGES",
    "MAX_PROMPT_FILE_BYTES",
    "VOICES",
    "PromptError",
    "PromptLibrary",
    "decode_audio",
    "decode_prompt",
    "load_prompt",
    "read_prompt_file",
    "resample",
    "wav_bytes",
]

_T = TypeVar("_T")
RunInThread = Callable[[Callable[[], Any]], "Deferred[Any]"]

DEFAULT_LANGUAGES = ("en", "es", "fr", "vi", "zh")
#: espeak-ng voice for each language (``espeak-ng --voices``): Mandarin is "cmn".
VOICES = {"en": "en-us", "es": "es", "fr": "fr-fr", "vi": "vi", "zh": "cmn"}
#: Larger files are refused: an hour of 8 kHz 16-bit stereo is 115 MB.
MAX_PROMPT_FILE_BYTES = 128 * 1024 * 1024
_MAX_TEXT = 4000
_ANNOUNCEMENT_ID = re.compile(r"[0-9]{8}")

_WAVE_PCM, _WAVE_ALAW, _WAVE_MULAW, _WAVE_EXTENSIBLE = 1, 6, 7, 0xFFFE
_WAVE_NAMES = {2: "MS ADPCM", 3: "IEEE float", 0x11: "IMA ADPCM", 0x31: "GSM 6.10", 0x55: "MPEG layer 3"}
_AU_MULAW, _AU_LINEAR16, _AU_ALAW = 1, 3, 27
_AU_NAMES = {2: "8-bit linear", 4: "24-bit linear", 5: "32-bit linear", 6: "float", 7: "double", 23: "G.721"}
_BIG_ENDIAN = sys.byteorder == "big"


#: Texts spoken for the seeds' built-in announcements when no file is installed.
BUILTIN_TEXTS: dict[str, dict[str, str]] = {
    # 00080002: the default announcement to user 1 of a callback (seed 003, IIF ann_id1).
    "00080002": {
        "en": "Please wait, we are connecting your call.",
        "es": "Por favor espere, estamos conectando su llamada.",
        "fr": "Veuillez patienter, nous connectons votre appel.",
        "vi": "Xin vui lòng chờ, chúng tôi đang kết nối cuộc gọi của bạn.",
        "zh": "请稍候，我们正在为您接通电话。",
    },
}


class PromptError(Exception):
    """An announcement that cannot be had: bad id, bad file, no TTS."""


# --------------------------------------------------------------------------
# Decoding files (blocking: run in a thread)
# --------------------------------------------------------------------------


def _pcm_from_le(data: bytes) -> array[int]:
    samples = array("h")
    samples.frombytes(data)
    if _BIG_ENDIAN:
        samples.byteswap()
    return samples


def _pcm_to_le(samples: array[int]) -> bytes:
    if _BIG_ENDIAN:
        samples = array("h", samples)
        samples.byteswap()
    return samples.tobytes()


def _mix_down(pcm: bytes) -> bytes:
    """Interleaved 16-bit stereo to mono, averaging the two channels."""
    samples = _pcm_from_le(pcm)
    left, right = samples[0::2], samples[1::2]
    return _pcm_to_le(array("h", [(a + b) >> 1 for a, b in zip(left, right, strict=True)]))


def _parse_wav(data: bytes, name: str) -> tuple[int, int, int, int, bytes]:
    """(format tag, channels, rate, bits, sample bytes) of a RIFF/WAVE file."""
    fmt: bytes | None = None
    samples: bytes | None = None
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        body = data[offset + 8 : offset + 8 + size]  # a short last chunk: what is there
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            samples = body
            if fmt is not None:
                break
        offset += 8 + size + (size & 1)
    if fmt is None:
        raise PromptError(f"{name}: WAV file without a 'fmt ' chunk")
    if len(fmt) < 16:
        raise PromptError(f"{name}: WAV 'fmt ' chunk of {len(fmt)} bytes is too short")
    tag, channels, rate, _byte_rate, _block, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _WAVE_EXTENSIBLE:
        if len(fmt) < 26:
            raise PromptError(f"{name}: WAVE_FORMAT_EXTENSIBLE without a sub-format")
        (tag,) = struct.unpack_from("<H", fmt, 24)
    if samples is None:
        raise PromptError(f"{name}: WAV file without a 'data' chunk")
    return tag, channels, rate, bits, samples


def _parse_au(data: bytes, name: str) -> tuple[int, int, int, bytes]:
    """(encoding, channels, rate, sample bytes) of a Sun/NeXT .au file."""
    if len(data) < 24:
        raise PromptError(f"{name}: .au header of {len(data)} bytes is shorter than 24")
    _magic, start, size, encoding, rate, channels = struct.unpack_from(">4sIIIII", data)
    if start < 24 or start > len(data):
        raise PromptError(f"{name}: .au data offset {start} is outside the file")
    end = len(data) if size == 0xFFFFFFFF else min(len(data), start + size)
    return encoding, channels, rate, data[start:end]


def _check_layout(name: str, channels: int, rate: int) -> None:
    if channels not in (1, 2):
        raise PromptError(f"{name}: {channels} channels; mono or stereo expected")
    if not 1000 <= rate <= 192000:
        raise PromptError(f"{name}: sample rate {rate} Hz is not plausible")


def _read_audio(data: bytes, name: str) -> tuple[str, int, int, bytes]:
    """(kind, channels, rate, samples) where kind is "pcm" (16-bit
    little-endian), "PCMU" or "PCMA"; samples are whole frames, never none."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        tag, channels, rate, bits, samples = _parse_wav(data, name)
        _check_layout(name, channels, rate)
        if tag == _WAVE_PCM and bits == 16:
            kind = "pcm"
        elif tag in (_WAVE_MULAW, _WAVE_ALAW) and bits == 8:
            kind = "PCMU" if tag == _WAVE_MULAW else "PCMA"
        else:
            law = {_WAVE_PCM: "PCM", _WAVE_MULAW: "µ-law", _WAVE_ALAW: "A-law"}.get(tag)
            what = f"{bits}-bit {law}" if law else _WAVE_NAMES.get(tag, f"format {tag}")
            raise PromptError(f"{name}: WAV {what} is not supported; use 16-bit PCM, µ-law or A-law")
    elif data[:4] == b".snd":
        encoding, channels, rate, samples = _parse_au(data, name)
        _check_layout(name, channels, rate)
        if encoding == _AU_LINEAR16:
            swapped = bytearray(len(samples) // 2 * 2)
            swapped[0::2] = samples[1 : len(swapped) : 2]
            swapped[1::2] = samples[0 : len(swapped) : 2]
            kind, samples = "pcm", bytes(swapped)
        elif encoding in (_AU_MULAW, _AU_ALAW):
            kind = "PCMU" if encoding == _AU_MULAW else "PCMA"
        else:
            what = _AU_NAMES.get(encoding, f"encoding {encoding}")
            raise PromptError(f"{name}: .au {what} is not supported; use µ-law (1), A-law (27) or 16-bit linear (3)")
    else:
        raise PromptError(f"{name}: neither a WAV (RIFF/WAVE) nor a Sun .au file")
    frame = channels * (2 if kind == "pcm" else 1)
    samples = samples[: len(samples) // frame * frame]
    if not samples:
        raise PromptError(f"{name}: holds no audio")
    return kind, channels, rate, samples


def _to_pcm8k(kind: str, channels: int, rate: int, samples: bytes) -> bytes:
    pcm = samples if kind == "pcm" else ulaw_to_pcm16(samples) if kind == "PCMU" else alaw_to_pcm16(samples)
    if channels == 2:
        pcm = _mix_down(pcm)
    if rate != SAMPLE_RATE:
        pcm = resample(pcm, rate, SAMPLE_RATE)
    return pcm


def decode_audio(data: bytes, name: str = "audio") -> bytes:
    """The bytes of a WAV or .au file as 8 kHz mono 16-bit little-endian PCM."""
    return _to_pcm8k(*_read_audio(data, name))


def decode_prompt(data: bytes, codec: str | Codec, name: str = "prompt") -> Prompt:
    """A prompt from the bytes of a WAV or .au file (``name`` is for errors).

    µ-law or A-law at 8 kHz mono is taken byte for byte (translated between
    the laws if need be); everything else goes through 16-bit PCM.
    """
    law = codec_for(codec)
    kind, channels, rate, samples = _read_audio(data, name)
    if kind != "pcm" and channels == 1 and rate == SAMPLE_RATE:
        return Prompt.from_payload(transcode(samples, kind, law), law, name)
    return Prompt.from_pcm16(_to_pcm8k(kind, channels, rate, samples), law, name)


def wav_bytes(pcm: bytes, rate: int = SAMPLE_RATE) -> bytes:
    """A mono 16-bit WAV file holding little-endian ``pcm``."""
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, _WAVE_PCM, 1, rate, 2 * rate, 2, 16,
        b"data", len(pcm),
    ) + pcm


def read_prompt_file(path: str | os.PathLike[str], codec: str | Codec) -> Prompt:
    """Read and convert one file (blocking: call it in a thread)."""
    name = os.fspath(path)
    try:
        size = os.stat(name).st_size
        if size > MAX_PROMPT_FILE_BYTES:
            raise PromptError(f"{name}: {size} bytes is too large for a prompt")
        with open(name, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise PromptError(f"{name}: no such file") from None
    except OSError as error:
        raise PromptError(f"{name}: cannot be read: {error.strerror or error}") from None
    return decode_prompt(data, codec, name)


def load_prompt(path: str | os.PathLike[str], codec: str | Codec, run_in_thread: RunInThread) -> Deferred[Prompt]:
    """:func:`read_prompt_file` in a worker thread; fires with the :class:`Prompt`."""
    law = codec_for(codec)
    return maybeDeferred(run_in_thread, lambda: read_prompt_file(path, law))


# --------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------

# Cut-off at 90 % of the lower Nyquist frequency, 24 zero crossings each side,
# Kaiser window with beta 8 (about 80 dB stop band): for 22.05 or 44.1 kHz
# to 8 kHz the stop band starts just below 4 kHz.
_ROLLOFF = 0.9
_ZERO_CROSSINGS = 24
_KAISER_BETA = 8.0
_MAX_PHASES = 512


def _bessel_i0(x: float) -> float:
    total = term = 1.0
    k = 0
    while term > 1e-12 * total:
        k += 1
        term *= (x / (2 * k)) ** 2
        total += term
    return total


@lru_cache(maxsize=16)
def _filter_bank(rate_in: int, rate_out: int) -> tuple[int, int, int, int, tuple[tuple[float, ...], ...]]:
    """(up, down, phases, half width, coefficients per phase) for a rate pair."""
    common = math.gcd(rate_in, rate_out)
    up, down = rate_out // common, rate_in // common
    phases = min(up, _MAX_PHASES)
    cutoff = _ROLLOFF * min(1.0, rate_out / rate_in)  # in cycles per 2 input samples
    half = math.ceil(_ZERO_CROSSINGS / cutoff)
    norm = _bessel_i0(_KAISER_BETA)
    bank = []
    for phase in range(phases):
        fraction = phase / phases
        taps = []
        for j in range(-half + 1, half + 1):
            t = j - fraction  # input sample j relative to the output instant
            x = cutoff * t
            sinc = 1.0 if x == 0 else math.sin(math.pi * x) / (math.pi * x)
            ratio = t / half
            window = _bessel_i0(_KAISER_BETA * math.sqrt(1 - ratio * ratio)) / norm if abs(ratio) < 1 else 0.0
            taps.append(sinc * window)
        gain = sum(taps)
        bank.append(tuple(tap / gain for tap in taps))
    return up, down, phases, half, tuple(bank)


def resample(pcm: bytes, rate_in: int, rate_out: int = SAMPLE_RATE) -> bytes:
    """16-bit little-endian mono PCM from ``rate_in`` to ``rate_out``, band-limited.

    Windowed-sinc interpolation on a polyphase filter bank (exact phases for
    ratios of up to 512 steps, the nearest of 512 otherwise).  Pure Python,
    about 40 ms per second of audio: run it in a thread.
    """
    if rate_in <= 0 or rate_out <= 0:
        raise PromptError(f"cannot resample from {rate_in} Hz to {rate_out} Hz")
    if rate_in == rate_out:
        return bytes(pcm)
    up, down, phases, half, bank = _filter_bank(rate_in, rate_out)
    samples = _pcm_from_le(pcm[: len(pcm) // 2 * 2])
    padded = [0] * half + samples.tolist() + [0] * (half + 1)
    width = 2 * half
    count = len(samples) * up // down
    out = array("h", bytes(2 * count))
    exact = phases == up
    for n in range(count):
        start, rest = divmod(n * down, up)
        if exact:
            phase = rest
        else:
            phase = round(rest * phases / up)
            if phase == phases:
                phase, start = 0, start + 1
        value = round(sum(map(mul, bank[phase], padded[start + 1 : start + 1 + width])))
        out[n] = 32767 if value > 32767 else max(value, -32768)
    return _pcm_to_le(out)


# --------------------------------------------------------------------------
# espeak-ng as a child process
# --------------------------------------------------------------------------


class _Collect(ProcessProtocol):
    """Gather a child's output and exit status; kill it after ``timeout``."""

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.done: Deferred[tuple[bytes, bytes, int | None, bool]] = Deferred()
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._clock = clock
        self._timeout = timeout
        self._timer: IDelayedCall | None = None
        self._timed_out = False

    def connectionMade(self) -> None:
        self.transport.closeStdin()  # type: ignore[union-attr]
        self._timer = self._clock.callLater(self._timeout, self._kill)

    def _kill(self) -> None:
        self._timer = None
        self._timed_out = True
        with contextlib.suppress(ProcessExitedAlready):
            self.transport.signalProcess("KILL")  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self._out.append(data)

    def errReceived(self, data: bytes) -> None:
        self._err.append(data)

    def processEnded(self, reason: Failure) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        code: int | None = None
        if reason.check(ProcessDone):
            code = 0
        elif reason.check(ProcessTerminated):
            code = reason.value.exitCode
        self.done.callback((b"".join(self._out), b"".join(self._err), code, self._timed_out))


def _first_line(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else ""


class PromptLibrary:
    """Announcements by id and language, from files or spoken by espeak-ng.

    ``run_in_thread(f)`` runs a zero-argument callable in a worker thread and
    returns a Deferred (see :class:`switchd.media.recorder.CallRecorder`);
    ``reactor_for_processes`` spawns espeak-ng and times it out.  ``texts``
    maps an announcement id to ``{language: text}`` for announcements that
    have no file.  Prompts come out in ``codec`` (the player transcodes).
    """

    log = Logger()

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        run_in_thread: RunInThread,
        reactor_for_processes: IReactorProcess,
        cache_dir: str | os.PathLike[str],
        espeak: str = "espeak-ng",
        languages: Iterable[str] = DEFAULT_LANGUAGES,
        texts: Mapping[str, Mapping[str, str]] | None = None,
        voices: Mapping[str, str] | None = None,
        codec: str | Codec = "PCMU",
        memory_limit: int = 32 * 1024 * 1024,
        tts_timeout: float = 30.0,
    ) -> None:
        self.directory = Path(directory)
        self.cache_dir = Path(cache_dir)
        self.languages = tuple(languages)
        self.codec = codec_for(codec)
        self.espeak = espeak
        self.voices = {**VOICES, **(voices or {})}
        self.memory_limit = memory_limit
        self.tts_timeout = tts_timeout
        self._run = run_in_thread
        self._reactor = reactor_for_processes
        self.texts: dict[str, dict[str, str]] = {}
        for ann_id, by_language in (texts or {}).items():
            self._check_id(ann_id)
            for language in by_language:
                self._check_language(language)
            self.texts[ann_id] = dict(by_language)
        self._memory: OrderedDict[Hashable, Prompt] = OrderedDict()
        self._memory_bytes = 0
        self._inflight: dict[Hashable, list[Deferred[Any]]] = {}
        self._espeak_identity: tuple[str, str] | None = None  # (executable, version)

    # -- public -------------------------------------------------------------------

    def announcement(self, ann_id: str, language: str = "en") -> Deferred[Prompt]:
        """The prompt of ``ann_id``: ``<dir>/<lang>/<id>.wav|.au``, then
        ``<dir>/<id>.wav|.au``, then its text for ``language`` spoken."""
        try:
            self._check_id(ann_id)
            self._check_language(language)
        except PromptError:
            return fail()
        found = maybeDeferred(self._run, lambda: self._find(ann_id, language))
        return found.addCallback(self._found, ann_id, language)

    def speak(self, text: str, language: str = "en") -> Deferred[Prompt]:
        """``text`` spoken in ``language`` by espeak-ng (cached on disk and in memory)."""
        try:
            self._check_language(language)
            text = " ".join(text.split())
            if not text:
                raise PromptError("nothing to speak: the text is empty")
            if len(text) > _MAX_TEXT:
                raise PromptError(f"text of {len(text)} characters is longer than {_MAX_TEXT}")
        except PromptError:
            return fail()
        voice = self.voices.get(language, language)
        d = self._espeak_ready()
        d.addCallback(lambda identity: self._spoken(voice, text, identity))
        return d

    def forget(self) -> None:
        """Drop the in-memory prompts (files changed on disk are noticed anyway)."""
        self._memory.clear()
        self._memory_bytes = 0

    # -- files ------------------------------------------------------------------------

    def _check_id(self, ann_id: object) -> None:
        if not isinstance(ann_id, str) or not _ANNOUNCEMENT_ID.fullmatch(ann_id):
            raise PromptError(f"announcement id {ann_id!r} is not 8 digits")

    def _check_language(self, language: object) -> None:
        if language not in self.languages:
            raise PromptError(f"language {language!r} is not one of {', '.join(self.languages)}")

    def _find(self, ann_id: str, language: str) -> tuple[str, int, int] | None:
        """The first existing file for the announcement, with its mtime and size."""
        for folder in (self.directory / language, self.directory):
            for suffix in (".wav", ".au"):
                path = folder / f"{ann_id}{suffix}"
                try:
                    status = path.stat()
                except OSError:
                    continue
                if stat.S_ISREG(status.st_mode):
                    return str(path), status.st_mtime_ns, status.st_size
        return None

    def _found(self, found: tuple[str, int, int] | None, ann_id: str, language: str) -> Deferred[Prompt]:
        if found is not None:
            path, mtime, size = found
            codec = self.codec
            return self._shared(
                ("file", path, mtime, size, codec.name),
                lambda: maybeDeferred(self._run, lambda: read_prompt_file(path, codec)),
            )
        text = self.texts.get(ann_id, {}).get(language)
        if text:
            return self.speak(text, language)
        raise PromptError(
            f"announcement {ann_id} ({language}): no {ann_id}.wav or {ann_id}.au in "
            f"{self.directory / language} or {self.directory}, and no text to speak"
        )

    # -- sharing and memory -----------------------------------------------------------

    def _shared(self, key: Hashable, load: Callable[[], Deferred[_T]], remember: bool = True) -> Deferred[_T]:
        """One ``load`` per key at a time; later callers wait for the same result."""
        if remember and key in self._memory:
            self._memory.move_to_end(key)
            return succeed(self._memory[key])  # type: ignore[arg-type]
        waiters = self._inflight.get(key)
        if waiters is not None:
            waiter: Deferred[_T] = Deferred()
            waiters.append(waiter)
            return waiter
        self._inflight[key] = []

        def settle(result: _T | Failure) -> _T | Failure:
            pending = self._inflight.pop(key, [])
            if remember and isinstance(result, Prompt):
                self._remember(key, result)
            for waiter in pending:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
            return result

        return maybeDeferred(load).addBoth(settle)

    def _remember(self, key: Hashable, prompt: Prompt) -> None:
        size = len(prompt.frames) * FRAME_BYTES
        if size > self.memory_limit:
            return
        self._memory[key] = prompt
        self._memory_bytes += size
        while self._memory_bytes > self.memory_limit:
            _old_key, old = self._memory.popitem(last=False)
            self._memory_bytes -= len(old.frames) * FRAME_BYTES

    # -- text to speech ----------------------------------------------------------------

    def _espeak_ready(self) -> Deferred[tuple[str, str]]:
        """(executable, version) of espeak-ng, looked up once it works."""
        if self._espeak_identity is not None:
            return succeed(self._espeak_identity)

        def look_up() -> Deferred[tuple[str, str]]:
            d = maybeDeferred(self._run, self._locate_espeak)
            d.addCallback(lambda exe: self._spawn(exe, ["--version"]).addCallback(version_of, exe))
            return d

        def version_of(result: tuple[bytes, bytes, int | None, bool], exe: str) -> tuple[str, str]:
            out, err, code, _ = result
            if code != 0:
                raise PromptError(f"{exe} --version failed ({code}): {_first_line(err) or _first_line(out)}")
            line = _first_line(out)
            match = re.search(r"text-to-speech:\s*(\S+)", line)
            self._espeak_identity = (exe, match.group(1) if match else line)
            self.log.info("text to speech by {exe}, version {version}", exe=exe, version=self._espeak_identity[1])
            return self._espeak_identity

        return self._shared(("espeak",), look_up, remember=False)

    def _locate_espeak(self) -> str:
        name = self.espeak
        found = name if os.sep in name else shutil.which(name)
        if found is None or not os.access(found, os.X_OK) or not os.path.isfile(found):
            raise PromptError(
                f"{name} was not found (PATH or file): install espeak-ng (Debian: apt install espeak-ng) "
                "to speak announcements"
            )
        return found

    def _spawn(self, executable: str, args: list[str]) -> Deferred[tuple[bytes, bytes, int | None, bool]]:
        protocol = _Collect(self._reactor, self.tts_timeout)  # type: ignore[arg-type]
        try:
            self._reactor.spawnProcess(protocol, executable, [executable, *args], env=None)
        except OSError as error:
            return fail(PromptError(f"cannot run {executable}: {error}"))
        return protocol.done

    def _spoken(self, voice: str, text: str, identity: tuple[str, str]) -> Deferred[Prompt]:
        executable, version = identity
        digest = hashlib.sha256(json.dumps([voice, text, version], ensure_ascii=False).encode()).hexdigest()
        cached = self.cache_dir / f"{digest}.wav"
        codec = self.codec
        name = f"tts {voice} {text[:40]!r}"

        def load() -> Deferred[Prompt]:
            d = maybeDeferred(self._run, lambda: self._read_cache(cached, codec, name))
            d.addCallback(lambda found: found[0] if found[0] is not None else synthesize(found[1]))
            return d

        def synthesize(problem: str | None) -> Deferred[Prompt]:
            if problem:
                self.log.warn("ignoring TTS cache file {path}: {problem}", path=str(cached), problem=problem)  # noqa: G010
            scratch = self.cache_dir / f".{digest}.{secrets.token_hex(4)}.espeak.wav"
            d = self._spawn(executable, ["-b", "1", "-v", voice, "-w", str(scratch), "--", text])
            d.addCallback(lambda result: self._run(lambda: self._convert(result, scratch, cached, codec, name)))
            d.addCallback(spoken)
            return d

        def spoken(outcome: tuple[Prompt, str | None]) -> Prompt:
            prompt, problem = outcome
            if problem:
                self.log.warn("TTS cache {path} not written: {problem}", path=str(cached), problem=problem)  # noqa: G010
            else:
                self.log.info("spoke {name} ({duration:.1f} s)", name=name, duration=prompt.duration)
            return prompt

        return self._shared(("tts", digest, codec.name), load)

    def _read_cache(self, cached: Path, codec: Codec, name: str) -> tuple[Prompt | None, str | None]:
        """(the cached prompt, or ``None`` with why a cache file was unusable).

        Runs in a thread, so it reports rather than logs; it creates the cache
        directory for the miss.
        """
        problem = None
        if cached.is_file():
            try:
                return decode_prompt(cached.read_bytes(), codec, name), None
            except (OSError, PromptError) as error:
                problem = str(error)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise PromptError(f"TTS cache directory {self.cache_dir} cannot be created: {error.strerror}") from None
        return None, problem

    def _convert(
        self, result: tuple[bytes, bytes, int | None, bool], scratch: Path, cached: Path, codec: Codec, name: str
    ) -> tuple[Prompt, str | None]:
        """espeak-ng's WAV to 8 kHz: cache it (atomically) and make the prompt;
        also says why the cache could not be written, if it could not."""
        out, err, code, timed_out = result
        try:
            if timed_out:
                raise PromptError(f"{name}: espeak-ng took longer than {self.tts_timeout} s and was killed")
            if code != 0:
                raise PromptError(f"{name}: espeak-ng failed ({code}): {_first_line(err) or _first_line(out)}")
            try:
                data = scratch.read_bytes()
            except OSError as error:
                raise PromptError(f"{name}: espeak-ng wrote no audio ({error.strerror})") from None
            pcm = decode_audio(data, name)
            problem = None
            partial = cached.with_name(f"{cached.name}.{secrets.token_hex(4)}.tmp")
            try:
                partial.write_bytes(wav_bytes(pcm))
                os.replace(partial, cached)
            except OSError as error:  # a full disk costs the cache, not the call
                problem = error.strerror or str(error)
                with contextlib.suppress(OSError):
                    partial.unlink()
            return Prompt.from_pcm16(pcm, codec, name), problem
        finally:
            with contextlib.suppress(OSError):
                scratch.unlink()

