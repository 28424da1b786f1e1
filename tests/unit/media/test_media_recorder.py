"""Call recording: samples land where the RTP timestamps say, legs aligned by
arrival, written in order off the reactor thread, readable after a crash."""

from __future__ import annotations

import math
import struct
import threading
import wave

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from switchd.media import g711
from switchd.media.recorder import (
    CallRecorder,
    RecorderError,
    RecordingInfo,
    wav_header,
)
from switchd.media.rtp import build_rtp


def synchronous(f):
    return maybeDeferred(f)


def tone(frequency: float, samples: int, amplitude: int = 8000, phase: int = 0) -> list[int]:
    return [round(amplitude * math.sin(2 * math.pi * frequency * (n + phase) / 8000)) for n in range(samples)]


def pcm(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}h", *values)


def decoded(values: list[int], codec: str) -> list[int]:
    """What the recorder can give back for ``values`` sent as G.711."""
    law = g711.codec_for(codec)
    data = law.decode(law.encode(pcm(values)))
    return list(struct.unpack(f"<{len(values)}h", data))


def read_wav(path) -> tuple[list[int], list[int]]:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getcomptype()) == (2, 2, 8000, "NONE")
        frames = w.readframes(w.getnframes())
    samples = struct.unpack(f"<{len(frames) // 2}h", frames)
    return list(samples[0::2]), list(samples[1::2])


class Stream:
    """An RTP sender: 20 ms packets of a PCM signal in one law."""

    def __init__(self, codec: str = "PCMU", ssrc: int = 1, sequence: int = 1000, timestamp: int = 50_000) -> None:
        self.law = g711.codec_for(codec)
        self.ssrc, self.sequence, self.timestamp = ssrc, sequence, timestamp

    def packet(self, samples: list[int], skip: bool = False, payload_type: int | None = None) -> bytes:
        data = build_rtp(
            self.law.payload_type if payload_type is None else payload_type,
            self.sequence,
            self.timestamp,
            self.ssrc,
            self.law.encode(pcm(samples)) if payload_type is None else b"\x01\x02\x03\x04",
        )
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + len(samples)) & 0xFFFFFFFF
        return data


def make(tmp_path, **kwargs):
    clock = Clock()
    path = tmp_path / "call.wav"
    recorder = CallRecorder(path, clock=clock, run_in_thread=kwargs.pop("run_in_thread", synchronous), **kwargs)
    return clock, path, recorder


def closed(recorder: CallRecorder) -> RecordingInfo:
    seen: list = []
    recorder.close().addBoth(seen.append)
    assert len(seen) == 1 and isinstance(seen[0], RecordingInfo), seen
    return seen[0]


def test_tone_with_a_lost_stretch_and_the_second_leg_aligned_by_arrival(tmp_path):
    clock, path, recorder = make(tmp_path, codec_b="PCMA")
    caller = Stream("PCMU", ssrc=7, timestamp=0xFFFFFF00)  # wraps around 2**32 on the way
    callee = Stream("PCMA", ssrc=9, sequence=65530)  # and this one's sequence wraps
    signal_a = tone(1000, 160 * 100)
    signal_b = tone(440, 160 * 60, amplitude=12000)
    lost = range(30, 40)  # packets 30-39 of the caller never arrive: 200 ms of silence
    for n in range(100):
        if n not in lost:
            recorder.feed("a", caller.packet(signal_a[160 * n : 160 * n + 160]))
        else:
            caller.packet([0] * 160)  # sent, but lost on the way
        if 25 <= n < 85:  # the callee's first packet arrives 0.5 s after the caller's
            k = n - 25
            recorder.feed("b", callee.packet(signal_b[160 * k : 160 * k + 160]))
        clock.advance(0.02)
    info = closed(recorder)
    left, right = read_wav(path)
    assert info == RecordingInfo(str(path), 2.0, 44 + 16000 * 4)
    assert path.stat().st_size == info.bytes
    expected_left = decoded(signal_a, "PCMU")
    for n in lost:
        expected_left[160 * n : 160 * n + 160] = [0] * 160
    assert left == expected_left
    assert right == [0] * 4000 + decoded(signal_b, "PCMA") + [0] * 2400


def test_duplicates_and_late_packets_are_dropped(tmp_path):
    clock, path, recorder = make(tmp_path)
    stream = Stream()
    frames = [[1000 * (k + 1)] * 160 for k in range(4)]
    packets = [stream.packet(frame) for frame in frames]
    for packet in (packets[0], packets[1], packets[1], packets[3], packets[2]):
        recorder.feed("a", packet)
        clock.advance(0.02)
    closed(recorder)
    left, right = read_wav(path)
    # Packet 2 came after packet 3: too late, its 20 ms stay silent.
    assert left == decoded(frames[0] + frames[1] + [0] * 160 + frames[3], "PCMU")
    assert right == [0] * 640


def test_comfort_noise_and_telephone_events_are_skipped(tmp_path):
    _, path, recorder = make(tmp_path)
    stream = Stream()
    recorder.feed("a", stream.packet([500] * 160))
    recorder.feed("a", stream.packet([0] * 160, payload_type=101))  # telephone-event
    recorder.feed("a", stream.packet([0] * 160, payload_type=13))  # comfort noise
    recorder.feed("a", stream.packet([700] * 160))
    recorder.feed("a", b"\x00garbage")
    info = closed(recorder)
    left, _ = read_wav(path)
    # The skipped packets' time is silence, as for any gap in the timestamps.
    assert left == decoded([500] * 160 + [0] * 320 + [700] * 160, "PCMU")
    assert info.duration_seconds == pytest.approx(0.08)


def test_ssrc_change_starts_a_new_timeline_at_arrival(tmp_path):
    clock, path, recorder = make(tmp_path)
    first = Stream(ssrc=1, timestamp=1000)
    for _ in range(10):
        recorder.feed("a", first.packet([300] * 160))
        clock.advance(0.02)
    clock.advance(0.3)  # re-INVITE: new source, timestamps from somewhere else
    second = Stream(ssrc=2, timestamp=3_000_000_000, sequence=5)
    for _ in range(5):
        recorder.feed("a", second.packet([-300] * 160))
        clock.advance(0.02)
    info = closed(recorder)
    left, _ = read_wav(path)
    # The new source's first packet arrived 0.5 s after the first one's.
    assert left == decoded([300] * 1600 + [0] * 2400 + [-300] * 800, "PCMU")
    assert info.duration_seconds == pytest.approx(0.6)


def test_a_timestamp_jump_within_one_source_does_not_fill_the_file_with_silence(tmp_path):
    clock, path, recorder = make(tmp_path)
    stream = Stream()
    recorder.feed("a", stream.packet([100] * 160))
    clock.advance(0.02)
    stream.timestamp += 8000 * 3600  # an hour ahead, but it arrived 20 ms later
    recorder.feed("a", stream.packet([200] * 160))
    clock.advance(0.02)
    stream.timestamp -= 8000 * 60  # and back: before what was already written
    recorder.feed("a", stream.packet([300] * 160))
    info = closed(recorder)
    left, _ = read_wav(path)
    assert left == decoded([100] * 160 + [200] * 160 + [300] * 160, "PCMU")
    assert info.duration_seconds == pytest.approx(0.06)


def test_silence_suppression_gaps_become_silence(tmp_path):
    clock, path, recorder = make(tmp_path)
    stream = Stream()
    recorder.feed("a", stream.packet([1200] * 160))
    clock.advance(2.0)
    stream.timestamp += 16000  # two seconds without packets (the sequence goes on)
    recorder.feed("a", stream.packet([1200] * 160))
    closed(recorder)
    left, _ = read_wav(path)
    assert left == decoded([1200] * 160 + [0] * 16000 + [1200] * 160, "PCMU")


def test_header_is_patched_after_every_flush_so_a_crash_leaves_a_valid_file(tmp_path):
    clock, path, recorder = make(tmp_path, flush_interval=1.0)
    assert path.read_bytes() == wav_header(0)  # written when the recorder starts
    a, b = Stream(ssrc=1), Stream(ssrc=2)
    for _ in range(60):  # 1.2 s of both legs
        recorder.feed("a", a.packet([1000] * 160))
        recorder.feed("b", b.packet([-1000] * 160))
        clock.advance(0.02)
    # One flush happened at 1.0 s; the process "crashes" here.
    with wave.open(str(path), "rb") as w:
        flushed = w.getnframes()
    assert flushed == 50 * 160  # both legs had reached 1.0 s
    left, right = read_wav(path)
    assert set(left) == set(decoded([1000], "PCMU")) and set(right) == set(decoded([-1000], "PCMU"))
    assert closed(recorder).duration_seconds == pytest.approx(1.2)


def test_a_leg_that_falls_silent_does_not_hold_back_the_other(tmp_path):
    clock, path, recorder = make(tmp_path)
    a, b = Stream(ssrc=1), Stream(ssrc=2)
    recorder.feed("b", b.packet([50] * 160))  # the callee says one thing, then nothing
    for _ in range(260):
        recorder.feed("a", a.packet([900] * 160))
        clock.advance(0.02)
    with wave.open(str(path), "rb") as w:
        # At the 5 s flush (a step late if the float clock lands short of
        # 5.0) everything older than a second is written.
        assert 8000 * 4 <= w.getnframes() <= 8000 * 4 + 160
    left, right = read_wav(path)
    assert set(left) == set(decoded([900], "PCMU"))
    assert right[:160] == decoded([50] * 160, "PCMU") and set(right[160:]) == {0}
    closed(recorder)
    assert len(read_wav(path)[0]) == 260 * 160


def test_one_writer_job_at_a_time_in_order(tmp_path):
    jobs: list[tuple[Deferred, object]] = []

    def manual(f):
        d: Deferred = Deferred()
        jobs.append((d, f))
        return d

    def run_next():
        d, f = jobs.pop(0)
        d.callback(f())

    clock, path, recorder = make(tmp_path, run_in_thread=manual)
    stream = Stream()
    assert len(jobs) == 1  # the header job
    for _ in range(150):  # three flush intervals while the first job is stuck
        recorder.feed("a", stream.packet([400] * 160))
        clock.advance(0.02)
    assert len(jobs) == 1
    run_next()
    assert jobs == []  # the next batch waits for the next tick
    clock.advance(1.0)
    assert len(jobs) == 1
    result: list = []
    recorder.close().addBoth(result.append)
    assert len(jobs) == 1 and result == []  # close waits for the running job
    run_next()
    assert len(jobs) == 1  # then the final one
    run_next()
    assert result == [RecordingInfo(str(path), 3.0, 44 + 24000 * 4)]
    assert read_wav(path)[0] == decoded([400] * 24000, "PCMU")
    again: list = []
    recorder.close().addBoth(again.append)
    assert again == result


def test_a_write_failure_is_reported_by_close(tmp_path):
    clock = Clock()
    (tmp_path / "missing").write_text("a file where the directory should be")
    recorder = CallRecorder(tmp_path / "missing" / "call.wav", clock=clock, run_in_thread=synchronous)
    recorder.feed("a", Stream().packet([1] * 160))
    outcome: list = []
    recorder.close().addBoth(outcome.append)
    assert outcome[0].check(RecorderError)
    assert "missing/call.wav failed" in outcome[0].getErrorMessage()
    assert clock.getDelayedCalls() == []


def test_bad_arguments(tmp_path):
    clock = Clock()
    with pytest.raises(RecorderError, match="'G729' is not a G.711 encoding"):
        CallRecorder(tmp_path / "x.wav", clock=clock, run_in_thread=synchronous, codec_b="G729")
    with pytest.raises(RecorderError, match="flush_interval"):
        CallRecorder(tmp_path / "x.wav", clock=clock, run_in_thread=synchronous, flush_interval=0)
    _, _, recorder = make(tmp_path)
    with pytest.raises(RecorderError, match="side must be 'a' or 'b', not 'c'"):
        recorder.feed("c", b"")


def test_an_empty_call_is_an_empty_valid_file(tmp_path):
    _, path, recorder = make(tmp_path)
    assert closed(recorder) == RecordingInfo(str(path), 0.0, 44)
    assert read_wav(path) == ([], [])


@pytest_twisted.ensureDeferred
async def test_writes_happen_off_the_reactor_thread(tmp_path):
    from twisted.internet import reactor

    threads = set()

    def in_thread(f):
        def job():
            threads.add(threading.get_ident())
            return f()

        return deferToThread(job)

    recorder = CallRecorder(tmp_path / "t.wav", clock=reactor, run_in_thread=in_thread, flush_interval=0.05)
    stream = Stream()
    for _ in range(10):
        recorder.feed("a", stream.packet([100] * 160))
    info = await recorder.close()
    assert threads and threading.get_ident() not in threads
    assert info.duration_seconds == pytest.approx(0.2)
    assert read_wav(tmp_path / "t.wav")[0] == decoded([100] * 1600, "PCMU")


def test_each_packet_is_decoded_by_its_payload_type(tmp_path):
    _, path, recorder = make(tmp_path, codec_a="PCMU")
    stream = Stream("PCMU")
    signal = tone(600, 640)
    recorder.feed("a", stream.packet(signal[:320]))
    stream.law = g711.codec_for("PCMA")  # a re-INVITE switched the leg to A-law
    recorder.feed("a", stream.packet(signal[320:]))
    closed(recorder)
    assert read_wav(path)[0] == decoded(signal[:320], "PCMU") + decoded(signal[320:], "PCMA")
