"""The prompt player: packet fields, 20 ms timing on an injected clock,
queueing, stop, barge-in and transcoding."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from switchd.media import g711
from switchd.media.player import FRAME_BYTES, Player, PlayerError, Prompt
from switchd.media.rtp import parse_rtp


class Wire:
    """What the player sent, with the clock time of each packet."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, bytes]] = []

    def __call__(self, packet: bytes) -> None:
        self.sent.append((self.clock.seconds(), packet))

    @property
    def headers(self):
        return [parse_rtp(packet) for _, packet in self.sent]

    def payloads(self) -> list[bytes]:
        pairs = zip(self.sent, self.headers, strict=True)
        return [packet[h.payload_offset : h.payload_end] for (_, packet), h in pairs]


def numbered_prompt(frames: int, codec: str = "PCMU", first: int = 0) -> Prompt:
    """Frame i is filled with the byte ``first + i`` (mod 256) so packets can be told apart."""
    return Prompt(g711.codec_for(codec), tuple(bytes([(first + i) % 256]) * FRAME_BYTES for i in range(frames)))


def setup(**kwargs):
    clock = Clock()
    wire = Wire(clock)
    defaults = {"ssrc": 0x11223344, "sequence": 65534, "timestamp": 0xFFFFFF00}
    defaults.update(kwargs)
    player = Player(clock, wire, 0, "PCMU", **defaults)
    return clock, wire, player


def results(deferred) -> list:
    seen: list = []
    deferred.addBoth(seen.append)
    return seen


def test_packets_carry_sequence_timestamp_marker_and_payload_type():
    clock, wire, player = setup()
    done = results(player.play(numbered_prompt(5)))
    clock.pump([0.02] * 10)
    headers = wire.headers
    assert [h.sequence for h in headers] == [65534, 65535, 0, 1, 2]  # wraps
    assert [h.timestamp for h in headers] == [0xFFFFFF00 + 160 * i & 0xFFFFFFFF for i in range(5)]
    assert [h.marker for h in headers] == [True, False, False, False, False]
    assert {h.payload_type for h in headers} == {0} and {h.ssrc for h in headers} == {0x11223344}
    assert wire.payloads() == [bytes([i]) * 160 for i in range(5)]
    assert done == ["done"]
    assert player.packets_sent == 5 and player.octets_sent == 800 and not player.playing


def test_one_packet_every_20_ms_without_drift():
    clock, wire, player = setup()
    done = results(player.play(numbered_prompt(500)))
    # Uneven steps; the n-th packet still leaves at n * 20 ms.
    steps = [0.013, 0.007, 0.019, 0.001, 0.0005, 0.0195] * 300
    elapsed = 0.0
    for step in steps:
        clock.advance(step)
        elapsed += step
        expected = min(500, int(round(elapsed, 9) / 0.02 + 1e-9) + 1)
        assert len(wire.sent) == expected
        if expected == 500:
            break
    times = [t for t, _ in wire.sent]
    for n, t in enumerate(times):
        assert n * 0.02 <= t + 1e-9 < n * 0.02 + 0.0195 + 1e-9
    assert done == ["done"]
    # 500 frames end 9.98 s after the first: no accumulated lateness.
    assert times[-1] == pytest.approx(9.98, abs=0.02)


def test_a_clock_jump_sends_the_missed_frames_at_once():
    clock, wire, player = setup()
    player.play(numbered_prompt(50))
    assert len(wire.sent) == 1
    clock.advance(0.1)  # five frames became due
    assert len(wire.sent) == 6
    assert [h.sequence for h in wire.headers][-5:] == [65535, 0, 1, 2, 3]
    clock.advance(0.019)
    assert len(wire.sent) == 6
    clock.advance(0.001)  # back on the original grid
    assert len(wire.sent) == 7


def test_play_many_runs_the_queue_back_to_back_with_a_marker_per_prompt():
    clock, wire, player = setup(sequence=100, timestamp=1000)
    done = results(player.play_many([numbered_prompt(3), numbered_prompt(2, first=50), numbered_prompt(1, first=90)]))
    clock.pump([0.02] * 10)
    headers = wire.headers
    assert [h.sequence for h in headers] == list(range(100, 106))
    assert [h.timestamp for h in headers] == [1000 + 160 * i for i in range(6)]
    assert [h.marker for h in headers] == [True, False, False, True, False, True]
    assert [t for t, _ in wire.sent] == pytest.approx([0.02 * i for i in range(6)])
    assert done == ["done"]


def test_play_while_playing_queues():
    clock, wire, player = setup()
    first = results(player.play(numbered_prompt(2)))
    second = results(player.play(numbered_prompt(2, first=10)))
    clock.pump([0.02] * 5)
    assert first == ["done"] and second == ["done"]
    assert [p[0] for p in wire.payloads()] == [0, 1, 10, 11]


def test_stop_ends_the_current_and_queued_prompts():
    clock, wire, player = setup()
    first = results(player.play(numbered_prompt(100)))
    second = results(player.play(numbered_prompt(100)))
    clock.pump([0.02] * 4)
    player.stop()
    assert first == ["stopped"] and second == ["stopped"] and not player.playing
    clock.pump([0.02] * 50)
    assert len(wire.sent) == 5
    assert clock.getDelayedCalls() == []


def test_interrupt_is_a_barge_in_unless_the_prompt_must_be_heard():
    clock, wire, player = setup()
    notice = results(player.play(numbered_prompt(3), interruptible=False))
    menu = results(player.play_many([numbered_prompt(100), numbered_prompt(100)]))
    clock.advance(0.02)
    assert player.interrupt() is False and notice == []
    clock.pump([0.02] * 5)
    assert notice == ["done"]
    assert player.interrupt() is True
    assert menu == ["interrupted"]
    sent = len(wire.sent)
    clock.pump([0.02] * 5)
    assert len(wire.sent) == sent
    assert player.interrupt() is False  # nothing left to interrupt


def test_a_pcmu_prompt_on_a_pcma_leg_is_transcoded():
    clock = Clock()
    wire = Wire(clock)
    player = Player(clock, wire, 8, "PCMA")
    tone = bytes(range(0, 256, 2)) + bytes(range(1, 64, 2))  # 160 µ-law codes
    player.play(Prompt.from_payload(tone * 2, "PCMU"))
    clock.pump([0.02] * 3)
    assert {h.payload_type for h in wire.headers} == {8}
    assert wire.payloads() == [g711.ulaw_to_alaw(tone)] * 2


def test_negotiated_dynamic_payload_type_is_used_as_given():
    clock = Clock()
    wire = Wire(clock)
    Player(clock, wire, 96, "PCMA").play(numbered_prompt(1, codec="PCMA"))
    assert wire.headers[0].payload_type == 96


def test_random_initial_ssrc_sequence_and_timestamp():
    clock = Clock()
    players = [Player(clock, lambda p: None, 0, "PCMU") for _ in range(8)]
    assert len({p.ssrc for p in players}) > 1
    assert len({(p.sequence, p.timestamp) for p in players}) > 1
    assert all(0 <= p.sequence < 65536 and 0 <= p.timestamp < 2**32 for p in players)


def test_after_a_silence_the_timestamp_counts_the_time_that_passed():
    clock, wire, player = setup(sequence=0, timestamp=0)
    player.play(numbered_prompt(2))
    clock.pump([0.02] * 2)
    clock.advance(1.0)  # one second of silence
    player.play(numbered_prompt(1))
    headers = wire.headers
    assert [h.sequence for h in headers] == [0, 1, 2]
    assert headers[2].marker
    # The last frame left at 0.02 s, the new one at 1.04 s: 1.02 s = 8160 samples later.
    assert headers[2].timestamp - headers[1].timestamp == 8160


def test_a_callback_can_queue_the_next_prompt_on_the_same_timeline():
    clock, wire, player = setup()
    d = player.play(numbered_prompt(2))
    d.addCallback(lambda _: player.play(numbered_prompt(2, first=20)))
    clock.pump([0.02] * 6)
    times = [t for t, _ in wire.sent]
    assert times == pytest.approx([0.0, 0.02, 0.04, 0.06])
    assert [h.marker for h in wire.headers] == [True, False, True, False]


def test_cancelling_a_play_skips_that_prompt_only():
    clock, wire, player = setup()
    first = player.play(numbered_prompt(10))
    second = results(player.play(numbered_prompt(2, first=50)))
    third = player.play(numbered_prompt(2, first=70))
    first_result, third_result = results(first), results(third)
    clock.advance(0.02)
    first.cancel()  # the one playing
    third.cancel()  # one still queued
    clock.pump([0.02] * 10)
    assert [p[0] for p in wire.payloads()] == [0, 1, 50, 51]
    assert [h.marker for h in wire.headers] == [True, False, True, False]
    assert first_result[0].check(CancelledError) and third_result[0].check(CancelledError)
    assert second == ["done"] and not player.playing


def test_a_send_error_stops_the_player_and_fails_the_prompt():
    clock = Clock()
    calls = []

    def send(packet: bytes) -> None:
        calls.append(packet)
        if len(calls) == 3:
            raise OSError("network is unreachable")

    player = Player(clock, send, 0, "PCMU")
    first = results(player.play(numbered_prompt(10)))
    second = results(player.play(numbered_prompt(10)))
    clock.pump([0.02] * 10)
    assert len(calls) == 3
    assert first[0].check(OSError) and second == ["stopped"]
    assert not player.playing


def test_empty_prompt_plays_nothing_and_is_done():
    clock, wire, player = setup()
    assert results(player.play(Prompt.silence(0, "PCMU"))) == ["done"]
    assert wire.sent == [] and clock.getDelayedCalls() == []
    assert results(player.play_many([])) == ["done"]


def test_prompt_construction():
    prompt = Prompt.from_payload(b"\x01" * 170, "PCMU", name="greeting")
    assert len(prompt) == 2 and prompt.duration == pytest.approx(0.04)
    assert prompt.frames[1] == b"\x01" * 10 + b"\xff" * 150  # padded with µ-law silence
    assert Prompt.from_payload(b"\x01", "PCMA").frames[0][1:] == b"\xd5" * 159
    assert len(Prompt.silence(0.05, "PCMU")) == 3
    pcm = bytes(320)
    assert Prompt.from_pcm16(pcm, "PCMU").payload == b"\xff" * 160
    assert prompt.transcode("PCMU") is prompt
    assert prompt.transcode("PCMA").payload == g711.ulaw_to_alaw(prompt.payload)
    assert prompt.pcm16() == g711.ulaw_to_pcm16(prompt.payload)
    with pytest.raises(PlayerError, match="frame 0 has 100 bytes"):
        Prompt(g711.codec_for("PCMU"), (b"\x00" * 100,), "bad")


def test_player_rejects_bad_arguments():
    clock = Clock()
    with pytest.raises(PlayerError, match="payload type 128"):
        Player(clock, lambda p: None, 128, "PCMU")
    with pytest.raises(PlayerError, match="SSRC"):
        Player(clock, lambda p: None, 0, "PCMU", ssrc=2**32)
    with pytest.raises(g711.G711Error):
        Player(clock, lambda p: None, 18, "G729")
    with pytest.raises(PlayerError, match="takes a Prompt"):
        Player(clock, lambda p: None, 0, "PCMU").play(b"\xff" * 160)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=0.15, allow_nan=False), min_size=1, max_size=200))
def test_any_clock_steps_give_exactly_the_frames_due(steps):
    clock, wire, player = setup()
    player.play(numbered_prompt(10_000))
    for step in steps:
        clock.advance(step)
        now = clock.seconds()
        # Frames due by now; one within a microsecond of its slot may go either way.
        assert int((now - 1e-6) / 0.02) + 1 <= len(wire.sent) <= int((now + 1e-6) / 0.02) + 1
    for n, (t, _) in enumerate(wire.sent):
        assert t >= n * 0.02 - 1e-6
    headers = wire.headers
    assert all((b.sequence - a.sequence) % 65536 == 1 for a, b in itertools.pairwise(headers))
