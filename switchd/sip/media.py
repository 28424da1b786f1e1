"""The media side of a B2BUA call: relay sessions, SDP rewriting, recording, DTMF.

Every SDP body a leg sends (offer or answer, in an INVITE, a provisional or
final response, a re-INVITE or an UPDATE) goes through :meth:`CallMedia.received`:
the sending side's relay legs learn where to send its party's media, and
the body sent on to the other side names the relay's address and the other
side's ports. Each ``m=`` line has its own relay session (RTP and RTCP
ports on both sides); rejected streams (port 0) stay rejected.

A call bypasses the relay when the B leg's trunk allows it (``media_bypass``)
and the caller is reachable at the address its SDP gives (no COMEDIA): the
bodies then pass untouched and switchd stays out of the media path.

Per call, :class:`MediaManager` decides COMEDIA for each side (a trunk's
``comedia`` setting; for a device, whether its Contact differs from the
address its requests come from), records calls whose trunk has
``voice_record``, publishes DTMF digits as :class:`~switchd.core.calls.CallDtmf`
events, and ends calls whose media stopped.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..media.dtmf import DtmfDigit
from ..media.g711 import codec_for
from ..media.player import Player, Prompt
from ..media.prompts import PromptLibrary
from ..media.recorder import CallRecorder
from ..media.relay import MediaRelay, MediaSession
from ..media.sdp import OriginKeeper, SdpError, SessionDescription, rewrite

SIDES = ("a", "b")
SDP_TYPE = "application/sdp"
G711 = {"PCMU", "PCMA"}


@dataclass(frozen=True)
class MediaPolicy:
    """What a trunk (or a device) asks of the media path."""

    comedia: bool = False
    record: bool = False
    bypass: bool = False


def is_sdp(content_type: str | None, body: bytes) -> bool:
    return bool(body) and (content_type or "").split(";", 1)[0].strip().lower() == SDP_TYPE


class CallMedia:
    """The relay sessions of one call, one per ``m=`` line, and the SDP each side sees."""

    log = Logger()

    def __init__(
        self,
        manager: "MediaManager",
        call_id: str,
        *,
        on_timeout: Callable[[], None],
        on_dtmf: Callable[[str, DtmfDigit], None],
    ) -> None:
        self.manager = manager
        self.call_id = call_id
        self.on_timeout = on_timeout
        self.on_dtmf = on_dtmf
        self.sessions: list[MediaSession | None] = []
        self.comedia = {"a": False, "b": False}
        self.bypass = False
        self.held = False
        self.answered = False
        self.recorder: CallRecorder | None = None
        self.recording: str | None = None
        # What each side sends (first audio format of its SDP): a prompt is played in it.
        self.formats: dict[str, tuple[int, str]] = {}
        # What switchd offers on calls it places (a callback's second leg: only the first's codec).
        self.offer_codecs: list[tuple[int, str]] = [(8, "PCMA"), (0, "PCMU")]
        self.players: dict[str, Player] = {}
        # One o= line per direction we send SDP in (RFC 3264 8: versions move on change only).
        self._keepers = {side: OriginKeeper(address=manager.advertise) for side in SIDES}
        # What each side's relay legs were last told (address, port, rtcp, o= version).
        self._remotes: dict[tuple[int, str], tuple[Any, ...]] = {}
        self.closed = False

    # -- SDP ------------------------------------------------------------------

    def received(self, side: str, body: bytes) -> bytes:
        """SDP sent by ``side``; returns the SDP to send to the other side.

        Raises :class:`SdpError` for a body that is not valid SDP.
        """
        if self.closed:
            return body
        sdp = SessionDescription.parse(body)
        if self.bypass:
            return body
        other = "b" if side == "a" else "a"
        ports: list[int | None] = []
        version = sdp.origin.version
        for index, media in enumerate(sdp.media):
            if media.rejected:
                ports.append(None)
                continue
            session = self._session(index)
            leg = session.leg(side)
            address, port = media.remote()
            seen = (address, port, media.rtcp_port, self.comedia[side], version)
            if not media.is_hold and self._remotes.get((index, side)) != seen:
                # A new or changed description: learn it, and latch again (COMEDIA).
                leg.set_remote(address, port, None if media.rtcp_mux else media.rtcp_port,
                               comedia=self.comedia[side])
                self._remotes[(index, side)] = seen
            leg.telephone_event_pt = media.telephone_event_pt
            if index == 0 and media.media == "audio":
                self._note_format(side, media)
            ports.append(session.leg(other).local_port)
        self.held = any(media.is_hold for media in sdp.media if not media.rejected) or sdp.is_hold
        for session in self.sessions:
            if session is not None:
                session.held = self.held
        out = rewrite(sdp, self.manager.advertise, ports)
        return self._keepers[other].stamp(out).serialize()

    def offer(self, side: str) -> bytes:
        """switchd's own offer to ``side`` (a call switchd places): one audio stream at
        the relay, the codecs of ``offer_codecs`` and telephone-event."""
        session = self._session(0)
        port = session.leg(side).local_port
        family = "IP6" if ":" in self.manager.advertise else "IP4"
        formats = " ".join(str(pt) for pt, _ in self.offer_codecs)
        lines = [
            "v=0",
            f"o=switchd 0 0 IN {family} {self.manager.advertise}",
            "s=switchd",
            f"c=IN {family} {self.manager.advertise}",
            "t=0 0",
            f"m=audio {port} RTP/AVP {formats} 101",
            *(f"a=rtpmap:{pt} {name}/8000" for pt, name in self.offer_codecs),
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-15",
            "a=ptime:20",
            "a=sendrecv",
        ]
        sdp = SessionDescription.parse(("\r\n".join(lines) + "\r\n").encode())
        session.leg(side).telephone_event_pt = None  # learnt from the answer
        return self._keepers[side].stamp(sdp).serialize()

    def answer(self, side: str, body: bytes) -> bytes:
        """Answer an offer ``side`` made (a re-INVITE on a call switchd placed): the
        same streams and codecs at the relay's address, the direction mirrored."""
        sdp = SessionDescription.parse(body)
        self.received(side, body)
        ports = [None if media.rejected else self._session(index).leg(side).local_port
                 for index, media in enumerate(sdp.media)]
        out = rewrite(sdp, self.manager.advertise, ports)
        mirror = {"sendonly": "recvonly", "recvonly": "sendonly"}
        for media in out.media:
            direction = media.direction
            if direction in mirror:
                media.remove_attributes(("sendonly", "recvonly", "sendrecv", "inactive"))
                media.set_attribute(mirror[direction])
        return self._keepers[side].stamp(out).serialize()

    def codec(self, side: str, body: bytes) -> str | None:
        """The first audio encoding of an SDP body (what ``side`` will send)."""
        try:
            sdp = SessionDescription.parse(body)
        except SdpError:
            return None
        for media in sdp.media:
            if media.media == "audio" and not media.rejected and media.formats:
                try:
                    pt = int(media.formats[0])
                except ValueError:
                    return None
                encoding = media.rtpmap.get(pt)
                return encoding[0].upper() if encoding else None
        return None

    def _note_format(self, side: str, media: Any) -> None:
        for fmt in media.formats:
            try:
                pt = int(fmt)
            except ValueError:
                continue
            encoding = media.rtpmap.get(pt)
            if encoding and encoding[0].upper() in G711:
                self.formats[side] = (pt, encoding[0].upper())
                return

    # -- prompts --------------------------------------------------------------

    def play(self, side: str, prompts: list[Prompt], *, interruptible: bool = True) -> Deferred:
        """Play ``prompts`` to ``side``'s party; fires "done", "stopped" or "interrupted".

        The other party's audio to that side is muted meanwhile. A digit
        pressed by ``side`` interrupts an interruptible prompt. Raises
        ValueError when the call has no relayed G.711 audio towards ``side``.
        """
        session = self.sessions[0] if self.sessions and not self.bypass else None
        if session is None or self.closed:
            raise ValueError("the call's media is not relayed")
        if side not in self.formats:
            raise ValueError(f"the {side} leg negotiated no G.711 audio")
        leg = session.leg(side)
        player = self.players.get(side)
        if player is None:
            pt, codec = self.formats[side]
            player = Player(self.manager.clock, leg.send, pt, codec_for(codec))
            self.players[side] = player
        leg.muted = True
        d = player.play_many(prompts, interruptible=interruptible)

        def unmute(result):
            if not player.playing and not self.closed:
                leg.muted = False
            return result

        return d.addBoth(unmute)

    def stop_playing(self, side: str | None = None) -> bool:
        stopped = False
        for name, player in self.players.items():
            if (side is None or name == side) and player.playing:
                player.stop()
                stopped = True
        return stopped

    def interrupt(self, side: str) -> None:
        """A digit from ``side`` cuts short the prompt it is hearing."""
        player = self.players.get(side)
        if player is not None and player.playing:
            player.interrupt()

    def mark_answered(self) -> None:
        """From now on a media silence ends the call; the idle time counts from the answer."""
        self.answered = True
        for session in self.sessions:
            if session is not None:
                session.restart_idle()

    def _session(self, index: int) -> MediaSession:
        while len(self.sessions) <= index:
            self.sessions.append(None)
        session = self.sessions[index]
        if session is None:
            session = self.manager.relay.open(f"{self.call_id}/{index}")
            session.on_timeout = self._timed_out
            session.on_dtmf = self.on_dtmf
            session.held = self.held
            if index == 0 and self.recorder is not None:
                session.tap = self.recorder.feed
            self.sessions[index] = session
        return session

    def _timed_out(self, session: MediaSession) -> None:
        if self.answered and not self.closed:
            self.on_timeout()

    # -- recording ------------------------------------------------------------

    def record(self, codec_a: str | None, codec_b: str | None) -> None:
        """Record the first media stream, one channel per leg (G.711 only)."""
        if self.recorder is not None or self.closed or self.bypass or not self.sessions:
            return
        if codec_a not in G711 or codec_b not in G711:
            self.log.warn(
                "call {call}: not recorded: {a}/{b} is not G.711", call=self.call_id, a=codec_a, b=codec_b
            )
            return
        name = self.manager.recording_name(self.call_id)
        path = os.path.join(self.manager.recordings_dir, name)
        self.recorder = CallRecorder(
            path,
            clock=self.manager.clock,
            run_in_thread=self.manager.run_in_thread,
            codec_a=codec_a,
            codec_b=codec_b,
        )
        self.recording = name
        first = self.sessions[0]
        if first is not None:
            first.tap = self.recorder.feed

    # -- the end --------------------------------------------------------------

    def close(self) -> Deferred:
        """Give the ports back and finish the recording (fires when it is written)."""
        if self.closed:
            return succeed(None)
        self.closed = True
        for player in self.players.values():
            player.stop()
        self.players.clear()
        for session in self.sessions:
            if session is not None:
                session.tap = None
                session.on_dtmf = None
                session.on_timeout = None
                session.close()
        self.sessions.clear()
        recorder, self.recorder = self.recorder, None
        if recorder is None:
            return succeed(None)
        d = recorder.close()
        d.addErrback(lambda f: self.log.failure("call {call}: recording failed", f, call=self.call_id))
        return d

    def describe(self) -> list[dict[str, Any]]:
        """Each relay session's legs, for the calls API."""
        described = []
        for session in self.sessions:
            if session is None or session.closed:
                continue
            described.append({name: _leg(session.leg(side)) for side, name in (("a", "caller"), ("b", "callee"))})
        return described

    def stats(self) -> dict[str, int]:
        packets = {"a_in": 0, "b_in": 0, "dropped": 0}
        for session in self.sessions:
            if session is not None:
                packets["a_in"] += session.a.packets_in
                packets["b_in"] += session.b.packets_in
                packets["dropped"] += session.a.dropped + session.b.dropped
        return packets


def _leg(leg: Any) -> dict[str, Any]:
    remote = leg.remote
    return {
        "local_port": leg.local_port,
        "remote": None if remote is None else f"{remote[0]}:{remote[1]}",
        "comedia": leg.comedia,
        "latched": leg.latched,
        "packets_in": leg.packets_in,
        "packets_out": leg.packets_out,
        "dropped": leg.dropped,
    }


class MediaManager:
    """Everything the B2BUA needs for media: the relay and per-call policy."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        relay: MediaRelay,
        *,
        advertise: str,
        recordings_dir: str,
        run_in_thread: Callable[[Callable[[], Any]], Deferred],
        trunk_policy: Callable[[int | None], MediaPolicy],
        now: Callable[[], datetime.datetime],
        prompts: PromptLibrary | None = None,
    ) -> None:
        self.prompts = prompts
        self.clock = clock
        self.relay = relay
        self.advertise = advertise
        self.recordings_dir = recordings_dir
        self.run_in_thread = run_in_thread
        self.trunk_policy = trunk_policy
        self.now = now

    def start(self, call_id: str, *, on_timeout: Callable[[], None],
              on_dtmf: Callable[[str, DtmfDigit], None]) -> CallMedia:
        return CallMedia(self, call_id, on_timeout=on_timeout, on_dtmf=on_dtmf)

    def recording_name(self, call_id: str) -> str:
        """YYYY/MM/DD/<call id>.wav, under ``recordings_dir`` (the writer makes the directory)."""
        day = self.now()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in call_id)
        return f"{day:%Y}/{day:%m}/{day:%d}/{safe}.wav"
