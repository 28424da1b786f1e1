"""Record a call to a stereo WAV file: the caller left, the callee right.

The relay hands every RTP packet to :meth:`CallRecorder.feed` on the reactor
thread, which only appends it to a list.  Every ``flush_interval`` the batch
goes to a worker thread (``run_in_thread``), one job at a time per file, that
decodes G.711 and writes 8 kHz 16-bit stereo PCM.

Placement, per leg: samples go where the RTP timestamp says, counted from
the leg's first packet, so lost packets and silence suppression become
silence and the legs stay in step.  Duplicates and packets older than the
newest one seen (by sequence number, RFC 3550 appendix A.1 limits) are
dropped.  A new SSRC, a sequence restart or a timestamp that jumps back or
far ahead of the arrival clock starts a new timeline at the packet's arrival
time.  The two legs are aligned by the arrival time of their first packets.
Comfort noise, telephone-event and any payload type other than PCMU and
PCMA are skipped.

Durability: the RIFF header is written first with the sizes of an empty file
and patched after every flush, so a crash leaves a valid WAV holding all but
the last ``flush_interval`` of audio.  Samples are written once both legs
have reached them, or once a leg has been silent for a second.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from switchd.media.g711 import (
    SAMPLE_RATE,
    Codec,
    G711Error,
    codec_for,
    codec_for_payload_type,
)
from switchd.media.rtp import RtpError, parse_rtp

__all__ = ["SIDES", "CallRecorder", "RecorderError", "RecordingInfo", "wav_header"]

#: Leg "a" is the caller (left channel), leg "b" the callee (right channel).
SIDES = ("a", "b")

_CHANNELS = 2
_SAMPLE_BYTES = 2
_FRAME_BYTES = _CHANNELS * _SAMPLE_BYTES
_HEADER_BYTES = 44
# The largest data chunk a 32-bit RIFF size can describe, in whole frames.
_MAX_DATA = (0xFFFFFFFF - (_HEADER_BYTES - 8)) // _FRAME_BYTES * _FRAME_BYTES

# RFC 3550 appendix A.1: how far a sequence number may move and still belong
# to the same run of packets.
_MAX_DROPOUT = 3000
_MAX_MISORDER = 100
# A timestamp this far ahead of the arrival clock is a jump, not jitter.
_MAX_AHEAD = 5 * SAMPLE_RATE
# A leg with nothing newer than this (samples behind the arrival clock) no
# longer holds back the writing of the other.
_IDLE = 1 * SAMPLE_RATE


class RecorderError(Exception):
    """A recorder set up wrongly, or a recording that could not be written."""


@dataclass(frozen=True)
class RecordingInfo:
    """What a finished recording holds: its file, length and size on disk."""

    path: str
    duration_seconds: float
    bytes: int


def wav_header(data_bytes: int, channels: int = _CHANNELS, rate: int = SAMPLE_RATE) -> bytes:
    """The 44-byte header of a 16-bit PCM WAV file with ``data_bytes`` of samples."""
    block = channels * _SAMPLE_BYTES
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        _HEADER_BYTES - 8 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # WAVE_FORMAT_PCM
        channels,
        rate,
        rate * block,
        block,
        8 * _SAMPLE_BYTES,
        b"data",
        data_bytes,
    )


class _Leg:
    """One direction's timeline: where its next samples go, and the samples
    not yet written (``pcm`` starts at the writer's ``written`` position)."""

    __slots__ = ("end", "pcm", "position", "sequence", "skew", "ssrc", "timestamp")

    def __init__(self) -> None:
        self.ssrc: int | None = None
        self.sequence = 0
        self.timestamp = 0
        self.position = 0  # sample index of the last accepted packet
        self.skew = 0  # position minus arrival position when the timeline began
        self.end = 0  # sample index just after the last accepted packet
        self.pcm = bytearray()


@dataclass
class _Progress:
    info: RecordingInfo
    accepted: int
    dropped: int
    full: bool


class _WavWriter:
    """The worker-thread half: placement, mixing and file writes.

    Only ever used by one job at a time (the recorder chains the jobs), so it
    needs no lock.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.legs = {side: _Leg() for side in SIDES}
        self.file: BinaryIO | None = None
        self.origin: float | None = None  # arrival time of the first audio packet
        self.written = 0  # stereo frames in the file
        self.accepted = 0
        self.dropped = 0
        self.full = False

    # -- placement -------------------------------------------------------------

    def place(self, leg: _Leg, arrival: float, packet: bytes) -> None:
        try:
            header = parse_rtp(packet)
        except RtpError:
            self.dropped += 1
            return
        codec = codec_for_payload_type(header.payload_type)
        if codec is None or header.payload_end <= header.payload_offset:
            return  # comfort noise, telephone-event, another codec, or empty
        if self.origin is None:
            self.origin = arrival
        arrived_at = round((arrival - self.origin) * SAMPLE_RATE)
        floor = max(leg.end, self.written)
        restart = leg.ssrc != header.ssrc
        if not restart:
            step = (header.sequence - leg.sequence) & 0xFFFF
            if step == 0 or step >= 0x10000 - _MAX_MISORDER:
                self.dropped += 1  # duplicate or late
                return
            if step >= _MAX_DROPOUT:
                restart = True  # the sender restarted its sequence
            else:
                moved = (header.timestamp - leg.timestamp) & 0xFFFFFFFF
                if moved >= 0x80000000:
                    moved -= 0x100000000
                position = leg.position + moved
                restart = position < floor or position - arrived_at - leg.skew > _MAX_AHEAD
        if restart:
            position = max(arrived_at, floor)
            leg.ssrc = header.ssrc
            leg.skew = position - arrived_at
        leg.sequence = header.sequence
        leg.timestamp = header.timestamp
        leg.position = position
        gap = (position - self.written) * _SAMPLE_BYTES - len(leg.pcm)
        if gap > 0:
            leg.pcm += bytes(gap)
        leg.pcm += codec.decode(packet[header.payload_offset : header.payload_end])
        leg.end = position + header.payload_end - header.payload_offset
        self.accepted += 1

    def commit_point(self, now: float, final: bool) -> int:
        """How far both channels are settled: up to every busy leg's end."""
        started = [leg for leg in self.legs.values() if leg.ssrc is not None]
        if not started or self.origin is None:
            return self.written
        top = max(leg.end for leg in started)
        if final:
            return top
        idle_line = round((now - self.origin) * SAMPLE_RATE) - _IDLE
        point = min(max(leg.end, idle_line) for leg in started)
        return max(self.written, min(point, top))

    # -- file ----------------------------------------------------------------------

    def _take(self, leg: _Leg, count: int) -> bytes:
        size = count * _SAMPLE_BYTES
        chunk = bytes(leg.pcm[:size])
        del leg.pcm[:size]
        if len(chunk) < size:
            chunk += bytes(size - len(chunk))
        return chunk

    def write(self, batch: dict[str, list[tuple[float, bytes]]], now: float, final: bool) -> _Progress:
        if self.file is None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self.file = open(self.path, "wb")  # noqa: SIM115 - kept open across jobs
            self.file.write(wav_header(0))
            self.file.flush()
        for side in SIDES:
            leg = self.legs[side]
            for arrival, packet in batch[side]:
                self.place(leg, arrival, packet)
        target = self.commit_point(now, final)
        count = target - self.written
        if count > 0:
            left = self._take(self.legs["a"], count)
            right = self._take(self.legs["b"], count)
            frames = bytearray(count * _FRAME_BYTES)
            frames[0::4] = left[0::2]
            frames[1::4] = left[1::2]
            frames[2::4] = right[0::2]
            frames[3::4] = right[1::2]
            room = max(0, _MAX_DATA - self.written * _FRAME_BYTES)
            if len(frames) > room:
                del frames[room:]  # past the 4 GiB RIFF limit the rest is discarded
                self.full = True
            self.written = target
            if frames:
                self.file.write(frames)
                self._patch_sizes()
        if final:
            self._patch_sizes()
            self.file.close()
        data = min(self.written * _FRAME_BYTES, _MAX_DATA)
        info = RecordingInfo(self.path, data / _FRAME_BYTES / SAMPLE_RATE, _HEADER_BYTES + data)
        return _Progress(info, self.accepted, self.dropped, self.full)

    def _patch_sizes(self) -> None:
        assert self.file is not None
        data = min(self.written * _FRAME_BYTES, _MAX_DATA)
        self.file.seek(4)
        self.file.write(struct.pack("<I", _HEADER_BYTES - 8 + data))
        self.file.seek(40)
        self.file.write(struct.pack("<I", data))
        self.file.seek(0, os.SEEK_END)
        self.file.flush()

    def abandon(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()


class CallRecorder:
    """Record one call's two legs into ``path`` (see the module docstring).

    ``run_in_thread(f)`` runs the zero-argument callable ``f`` off the reactor
    thread and returns a Deferred of its result (production: a
    ``deferToThreadPool`` partial; tests: a synchronous stand-in).

    ``codec_a`` and ``codec_b`` are the legs' negotiated codecs: one the
    recorder cannot decode is refused here, before the call is bridged.
    Packets are decoded by their own payload type (0 PCMU, 8 PCMA), so a
    re-INVITE that switches law mid-call is recorded as well.  The recorder
    runs until :meth:`close`, which the call's end must reach.
    """

    log = Logger()

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: IReactorTime,
        run_in_thread: Callable[[Callable[[], Any]], Deferred[Any]],
        codec_a: str | Codec = "PCMU",
        codec_b: str | Codec = "PCMU",
        flush_interval: float = 1.0,
    ) -> None:
        if not flush_interval > 0:
            raise RecorderError(f"flush_interval must be positive, not {flush_interval!r}")
        try:
            self.codecs = {"a": codec_for(codec_a), "b": codec_for(codec_b)}
        except G711Error as error:
            raise RecorderError(f"cannot record {os.fspath(path)}: {error}") from None
        self.path = os.fspath(path)
        self._clock = clock
        self._run_in_thread = run_in_thread
        self._writer = _WavWriter(self.path)
        self._pending: dict[str, list[tuple[float, bytes]]] = {side: [] for side in SIDES}
        self._busy = False
        self._closing = False
        self._final_sent = False
        self._full_logged = False
        self._outcome: RecordingInfo | Failure | None = None
        self._waiters: list[Deferred[RecordingInfo]] = []
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._loop.start(flush_interval, now=False)
        self._submit(final=False)  # create the file and its header now

    def feed(self, side: str, packet: bytes) -> None:
        """One RTP packet of leg ``side`` ("a" caller, "b" callee), as received."""
        try:
            batch = self._pending[side]
        except KeyError:
            raise RecorderError(f"side must be 'a' or 'b', not {side!r}") from None
        if not self._closing:
            batch.append((self._clock.seconds(), packet))

    def close(self) -> Deferred[RecordingInfo]:
        """Write what is left, finalise the header; fires with :class:`RecordingInfo`."""
        waiter: Deferred[RecordingInfo] = Deferred()
        if self._outcome is not None:
            self._fire(waiter, self._outcome)
            return waiter
        self._waiters.append(waiter)
        if not self._closing:
            self._closing = True
            if self._loop.running:
                self._loop.stop()
            if not self._busy:
                self._submit(final=True)
        return waiter

    # -- jobs --------------------------------------------------------------------

    def _tick(self) -> None:
        if not self._busy and not self._closing:
            self._submit(final=False)

    def _submit(self, final: bool) -> None:
        batch, self._pending = self._pending, {side: [] for side in SIDES}
        now = self._clock.seconds()
        writer = self._writer
        self._busy = True
        self._final_sent = final
        d = maybeDeferred(self._run_in_thread, lambda: writer.write(batch, now, final))
        d.addCallbacks(self._written, self._failed)

    def _written(self, progress: _Progress) -> None:
        self._busy = False
        if progress.full and not self._full_logged:
            self._full_logged = True
            self.log.warn(  # noqa: G010 - twisted.logger has warn(), not warning()
                "recording {path} reached the WAV size limit; the rest of the call is not recorded", path=self.path
            )
        if self._final_sent:
            self.log.info(
                "recording {path} closed: {duration:.1f} s, {accepted} packets, {dropped} dropped",
                path=self.path,
                duration=progress.info.duration_seconds,
                accepted=progress.accepted,
                dropped=progress.dropped,
            )
            self._settle(progress.info)
        elif self._closing:
            self._submit(final=True)

    def _failed(self, failure: Failure) -> None:
        self._busy = False
        self._closing = True
        if self._loop.running:
            self._loop.stop()
        self._pending = {side: [] for side in SIDES}
        self.log.failure("recording {path} failed; no more audio is written", failure, path=self.path)
        writer = self._writer
        maybeDeferred(self._run_in_thread, writer.abandon).addErrback(
            lambda f: self.log.failure("closing {path} failed", f, path=self.path)
        )
        error = RecorderError(f"recording {self.path} failed: {failure.getErrorMessage()}")
        error.__cause__ = failure.value
        self._settle(Failure(error))

    def _settle(self, outcome: RecordingInfo | Failure) -> None:
        self._outcome = outcome
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._fire(waiter, outcome)

    @staticmethod
    def _fire(waiter: Deferred[RecordingInfo], outcome: RecordingInfo | Failure) -> None:
        if isinstance(outcome, Failure):
            waiter.errback(outcome)
        else:
            waiter.callback(outcome)
