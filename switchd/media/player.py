"""Play announcements into a call leg as an RTP stream.

A :class:`Prompt` is audio already cut into 20 ms frames of G.711 (160 bytes
each), so the player does no work per packet beyond building a 12-byte RTP
header, and a translate when the prompt's law differs from the leg's.

:class:`Player` sends one packet every 20 ms through ``send`` (the relay's
way out to the leg).  Frame ``n`` of a stream is due at ``start + n * 20 ms``,
computed from the start each time rather than accumulated, so the stream
does not drift; if the clock jumps ahead (a busy reactor), the frames that
became due are sent at once.  Prompts queue and follow each other on the same
timeline; the first packet of each prompt carries the marker bit.  Sequence
numbers and timestamps keep counting across prompts and silences, as one RTP
source should (RFC 3550 section 5.1).
"""

from __future__ import annotations

import contextlib
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred, FirstError, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from switchd.media.g711 import SAMPLE_RATE, Codec, codec_for, transcode, transcode_table
from switchd.media.rtp import build_rtp

__all__ = [
    "DONE",
    "FRAME_BYTES",
    "FRAME_SECONDS",
    "INTERRUPTED",
    "STOPPED",
    "Player",
    "PlayerError",
    "Prompt",
]

#: One frame: 20 ms of G.711 at 8 kHz.
FRAME_BYTES = 160
FRAME_SECONDS = FRAME_BYTES / SAMPLE_RATE
#: What :meth:`Player.play` Deferreds fire with.
DONE = "done"
STOPPED = "stopped"
INTERRUPTED = "interrupted"

# A frame due within a microsecond counts as due: float sums of 0.02 are inexact.
_EPSILON = 1e-6


class PlayerError(ValueError):
    """A prompt or player set up with values that cannot work."""


@dataclass(frozen=True, eq=False)
class Prompt:
    """Audio ready to play: 20 ms frames of G.711 in ``codec``'s law."""

    codec: Codec
    frames: tuple[bytes, ...]
    name: str = ""

    def __post_init__(self) -> None:
        for index, frame in enumerate(self.frames):
            if len(frame) != FRAME_BYTES:
                raise PlayerError(
                    f"prompt {self.name or '(unnamed)'}: frame {index} has {len(frame)} bytes, not {FRAME_BYTES}"
                )

    @classmethod
    def from_payload(cls, payload: bytes, codec: str | Codec, name: str = "") -> Prompt:
        """Cut G.711 bytes into frames, padding the last one with silence."""
        law = codec_for(codec)
        rest = len(payload) % FRAME_BYTES
        if rest:
            payload = bytes(payload) + law.silence_frame(FRAME_BYTES - rest)
        frames = tuple(bytes(payload[i : i + FRAME_BYTES]) for i in range(0, len(payload), FRAME_BYTES))
        return cls(law, frames, name)

    @classmethod
    def from_pcm16(cls, pcm: bytes, codec: str | Codec, name: str = "") -> Prompt:
        """Encode 16-bit little-endian PCM at 8 kHz into a prompt."""
        law = codec_for(codec)
        return cls.from_payload(law.encode(pcm), law, name)

    @classmethod
    def silence(cls, seconds: float, codec: str | Codec, name: str = "silence") -> Prompt:
        """A pause of whole frames (rounded up)."""
        law = codec_for(codec)
        count = max(0, -int(-seconds // FRAME_SECONDS))
        return cls(law, (law.silence_frame(FRAME_BYTES),) * count, name)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return len(self.frames) * FRAME_SECONDS

    @property
    def payload(self) -> bytes:
        """All frames in one piece."""
        return b"".join(self.frames)

    def pcm16(self) -> bytes:
        """The audio as 16-bit little-endian PCM at 8 kHz."""
        return self.codec.decode(self.payload)

    def transcode(self, codec: str | Codec) -> Prompt:
        """The same audio in another law (itself if it already is)."""
        law = codec_for(codec)
        if law is self.codec:
            return self
        return Prompt(law, tuple(transcode(frame, self.codec, law) for frame in self.frames), self.name)


class _Item:
    """One queued play request."""

    __slots__ = ("deferred", "index", "interruptible", "prompt", "table")

    def __init__(self, prompt: Prompt, interruptible: bool, target: Codec, deferred: Deferred[str]) -> None:
        self.prompt = prompt
        self.interruptible = interruptible
        self.deferred = deferred
        self.index = 0
        #: The translate table from the prompt's law to the leg's, if they differ.
        self.table = transcode_table(prompt.codec, target)


class Player:
    """One outgoing RTP stream of announcements towards a leg."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        send: Callable[[bytes], object],
        payload_type: int,
        codec: str | Codec,
        *,
        ssrc: int | None = None,
        sequence: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        if not 0 <= payload_type <= 127:
            raise PlayerError(f"payload type {payload_type} is outside 0-127")
        if ssrc is not None and not 0 <= ssrc <= 0xFFFFFFFF:
            raise PlayerError(f"SSRC {ssrc} does not fit in 32 bits")
        self._clock = clock
        self._send = send
        self.payload_type = payload_type
        self.codec = codec_for(codec)
        #: The values the next packet will carry.
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc
        self.sequence = (secrets.randbits(16) if sequence is None else sequence) & 0xFFFF
        self.timestamp = (secrets.randbits(32) if timestamp is None else timestamp) & 0xFFFFFFFF
        self.packets_sent = 0
        self.octets_sent = 0
        self._queue: deque[_Item] = deque()
        self._current: _Item | None = None
        self._marker = False
        # The running stream's timeline: frame n is due at _start + n * 20 ms.
        self._start: float | None = None
        self._sent = 0
        self._last_frame_at: float | None = None
        self._call: IDelayedCall | None = None
        self._generation = 0

    # -- public --------------------------------------------------------------

    @property
    def playing(self) -> bool:
        """True while a prompt is playing or queued."""
        return self._current is not None or bool(self._queue)

    def play(self, prompt: Prompt, *, interruptible: bool = True) -> Deferred[str]:
        """Queue ``prompt``; the Deferred fires "done", "stopped" or "interrupted".

        When the player is idle the first packet is sent before this returns.
        ``interruptible=False`` makes :meth:`interrupt` leave it playing (a
        notice the caller must hear).  Cancelling the Deferred skips the prompt.
        """
        if not isinstance(prompt, Prompt):
            raise PlayerError(f"play() takes a Prompt, not {type(prompt).__name__}")
        item = _Item(prompt, interruptible, self.codec, Deferred(lambda _d: self._cancel(item)))
        self._queue.append(item)
        if self._start is None:
            self._begin()
        return item.deferred

    def play_many(self, prompts: Iterable[Prompt], *, interruptible: bool = True) -> Deferred[str]:
        """Queue several prompts; fires "done" once all played, else how they ended."""
        deferreds = [self.play(prompt, interruptible=interruptible) for prompt in prompts]
        if not deferreds:
            return succeed(DONE)

        def outcome(results: Sequence[str]) -> str:
            return next((result for result in results if result != DONE), DONE)

        def unwrap(failure: Failure) -> Failure:
            if failure.check(FirstError):
                return failure.value.subFailure
            return failure

        return gatherResults(deferreds, consumeErrors=True).addCallbacks(outcome, unwrap)

    def stop(self) -> None:
        """Stop now; the current and queued prompts fire "stopped"."""
        self._finish_all(STOPPED)

    def interrupt(self) -> bool:
        """Barge-in (a DTMF key): stop unless the current prompt is not interruptible.

        Returns whether anything was interrupted; the current and queued
        prompts fire "interrupted".
        """
        head = self._current if self._current is not None else (self._queue[0] if self._queue else None)
        if head is None or not head.interruptible:
            return False
        self._finish_all(INTERRUPTED)
        return True

    # -- timeline --------------------------------------------------------------

    def _begin(self) -> None:
        """Start a stream now; after a silence, the timestamp moves on by its length."""
        now = self._clock.seconds()
        if self._last_frame_at is not None:
            gap = now - (self._last_frame_at + FRAME_SECONDS)
            if gap > 0:
                self.timestamp = (self.timestamp + round(gap * SAMPLE_RATE)) & 0xFFFFFFFF
        self._generation += 1
        self._start = now
        self._sent = 0
        self._tick()

    def _end(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._start is not None and self._sent:
            self._last_frame_at = self._start + (self._sent - 1) * FRAME_SECONDS
        self._start = None

    def _tick(self) -> None:
        self._call = None
        generation = self._generation
        start = self._start
        if start is None:
            return
        now = self._clock.seconds()
        limit = now + _EPSILON
        while start + self._sent * FRAME_SECONDS <= limit:  # the next frame is due
            item = self._current
            if item is None:
                if not self._queue:
                    break
                item = self._current = self._queue.popleft()
                self._marker = True
            frames = item.prompt.frames
            if item.index < len(frames):
                frame = frames[item.index]
                if item.table is not None:
                    frame = frame.translate(item.table)
                packet = build_rtp(self.payload_type, self.sequence, self.timestamp, self.ssrc, frame, self._marker)
                try:
                    self._send(packet)
                except Exception:  # noqa: BLE001 - whatever the transport raises ends the stream
                    self.log.failure("sending a prompt packet failed; stopping the player")
                    self._finish_all(STOPPED, Failure())
                    return
                self._marker = False
                self.sequence = (self.sequence + 1) & 0xFFFF
                self.timestamp = (self.timestamp + FRAME_BYTES) & 0xFFFFFFFF
                self.packets_sent += 1
                self.octets_sent += FRAME_BYTES
                self._sent += 1
                item.index += 1
            if item.index >= len(frames):
                self._current = None
                item.deferred.callback(DONE)
                if self._generation != generation:
                    return  # a callback stopped this stream or started another
        if self._current is None and not self._queue:
            self._end()
            return
        # The loop left the next frame more than _EPSILON away; wake half of
        # that early, so a clock that lands a hair short still finds it due.
        delay = start + self._sent * FRAME_SECONDS - now - _EPSILON / 2
        self._call = self._clock.callLater(delay, self._tick)

    # -- endings ---------------------------------------------------------------

    def _finish_all(self, result: str, failure: Failure | None = None) -> None:
        items = ([self._current] if self._current is not None else []) + list(self._queue)
        self._current = None
        self._queue.clear()
        self._generation += 1
        self._end()
        for index, item in enumerate(items):
            if failure is not None and index == 0:
                item.deferred.errback(failure)
            else:
                item.deferred.callback(result)

    def _cancel(self, item: _Item) -> None:
        """Cancelling a play() Deferred: skip that prompt, keep the rest."""
        if item is self._current:
            self._current = None
            if not self._queue:
                self._generation += 1
                self._end()
        else:
            with contextlib.suppress(ValueError):  # already finished
                self._queue.remove(item)

