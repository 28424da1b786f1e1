"""Media through the relay between SIPp peers: SIPp plays its A-law stream
and an RFC 2833 digit as the caller, a SIPp trunk echoes every RTP packet
back (``-rtp_echo``), and switchd sits in the media path."""

from __future__ import annotations

import io
import re
import struct
import subprocess
import urllib.request
import wave
import warnings
from pathlib import Path

import pytest

from ..daemon import Daemon
from .test_calls import CUSTOMER_IP, SCENARIOS, Network, errors
from .test_sip_peers import Api, free_port

PCAP_DIR = Path("/usr/share/sip-tester")
STREAM = PCAP_DIR / "g711a.pcap"  # 236 packets of 30 ms A-law, 7.05 s
DIGIT = PCAP_DIR / "dtmf_2833_1.pcap"  # the digit 1 as RFC 2833 events, payload type 101
WRONG_ADDRESS = "192.0.2.55"  # TEST-NET-1: nothing answers there


def pcap_payloads(path: Path) -> list[bytes]:
    """The RTP payloads of a pcap file (Ethernet, IPv4, UDP, RTP without CSRCs)."""
    data = path.read_bytes()
    offset, payloads = 24, []
    while offset < len(data):
        _, _, length, _ = struct.unpack("<IIII", data[offset:offset + 16])
        packet = data[offset + 16:offset + 16 + length]
        offset += 16 + length
        payloads.append(packet[14 + 20 + 8 + 12:])
    return payloads


def metric(daemon: Daemon, name: str) -> float:
    with urllib.request.urlopen(daemon.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


class MediaNetwork(Network):
    def echo_vendor(self, name: str = "vendor-echo", **connection) -> dict:
        return self.vendor(name, "127.0.0.3", "uas_echo.xml", extra=("-rtp_echo", "-mp", str(free_port())),
                           **connection)

    def media_call(self, media_addr: str = CUSTOMER_IP, calls: int = 1, rate: float = 1,
                   timeout: float = 120, scenario: str = "uac_pcap.xml") -> subprocess.Popen:
        port = self.daemon.listeners[("sip", "udp")]
        return subprocess.Popen(
            ["sipp", "-sf", str(SCENARIOS / scenario), f"127.0.0.1:{port}", "-s", "4420712345",
             "-i", CUSTOMER_IP, "-p", "0", "-mp", str(free_port()), "-m", str(calls), "-r", str(rate),
             "-l", str(max(calls, 1)), "-key", "media_addr", media_addr, "-key", "pcap", str(STREAM),
             "-key", "dtmf", str(DIGIT), "-nostdin", "-trace_err"],
            cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def active(self) -> list[dict]:
        return self.api("GET", "/v1/calls")[1]["items"]

    def customer_connection(self, **changes) -> None:
        [connection] = [c for c in self.api("GET", "/v1/connections/sip?limit=100")[1]["items"]
                        if c["trunk_id"] == self.inbound_trunk_id()]
        status, body = self.api("PATCH", f"/v1/connections/sip/{connection['id']}", changes)
        assert status == 200, body

    def inbound_trunk_id(self) -> int:
        [trunk] = [t for t in self.api("GET", "/v1/trunks?limit=100")[1]["items"] if t["name"] == "acme-in"]
        return trunk["id"]


@pytest.fixture
def media(tmp_path):
    daemon = Daemon(tmp_path, env={"SWITCHD_SIP_LISTEN": "udp:0:interface=127.0.0.1",
                                   "SWITCHD_SIP_RELOAD_SECONDS": "1",
                                   "SWITCHD_MEDIA_PORT_MIN": "41000", "SWITCHD_MEDIA_PORT_MAX": "41999"})
    daemon.start(expect=("api", "sip"))
    net = MediaNetwork(daemon, Api(daemon), tmp_path)
    net.topup("10")
    yield net
    net.close()
    daemon.stop()


def finish(process: subprocess.Popen, tmp_path: Path, timeout: float = 60) -> None:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-2000:] + errors(tmp_path)


def wait_media(net: MediaNetwork, check, what: str, timeout: float = 20) -> dict:
    def ready():
        for call in net.active():
            if call["media"] and check(call):
                return call
        return None

    return net.api.wait_for(ready, what, timeout=timeout)


@pytest.mark.slow
def test_audio_flows_both_ways_the_digit_is_heard_and_ports_come_back(media, tmp_path):
    free_before = metric(media.daemon, "switchd_media_ports_free")
    media.echo_vendor()
    media.settle()
    caller = media.media_call()
    # Both parties' packets reach the relay and are sent on: the caller's
    # stream to the trunk, the trunk's echo back to the caller.
    call = wait_media(media, lambda c: c["media"][0]["caller"]["packets_out"] > 50
                      and c["media"][0]["callee"]["packets_out"] > 50, "two-way audio")
    session = call["media"][0]
    assert session["caller"]["packets_in"] > 50 and session["callee"]["packets_in"] > 50
    assert session["caller"]["remote"].startswith(f"{CUSTOMER_IP}:")  # the caller's SDP address
    assert session["callee"]["remote"].startswith("127.0.0.3:")
    # The digit is heard from the caller, and again from the trunk that echoes it.
    call = wait_media(media, lambda c: c["dtmf"] == "11", "the digit 1 from both sides", timeout=20)
    finish(caller, tmp_path)
    [cdr] = media.wait_cdrs(1)
    assert cdr["sip_code"] == 200 and cdr["billable_seconds"] >= 9
    log = (tmp_path / "switchd.log").read_text()
    assert "DTMF 1 from the caller (rfc4733" in log and "DTMF 1 from the callee (rfc4733" in log
    # Every port is back, no session is left.
    media.api.wait_for(lambda: metric(media.daemon, "switchd_media_sessions") == 0, "sessions closed")
    assert metric(media.daemon, "switchd_media_ports_free") == free_before
    assert metric(media.daemon, 'switchd_media_packets_total{kind="packets_relayed"}') > 400


@pytest.mark.slow
def test_a_delayed_offer_is_offered_by_switchd_and_answered_in_the_ack(media, tmp_path):
    """The caller's INVITE has no SDP: switchd offers to the trunk from the relay, the
    trunk's answer is the caller's offer in the 200 OK, the caller answers in its ACK."""
    media.echo_vendor()
    media.settle()
    caller = media.media_call(scenario="uac_delayed_offer.xml")
    call = wait_media(media, lambda c: c["media"][0]["caller"]["packets_out"] > 50
                      and c["media"][0]["callee"]["packets_out"] > 50, "two-way audio")
    session = call["media"][0]
    assert session["caller"]["remote"].startswith(f"{CUSTOMER_IP}:")  # from the SDP in the ACK
    assert session["callee"]["remote"].startswith("127.0.0.3:")
    wait_media(media, lambda c: c["dtmf"] == "11", "the digit 1 from both sides", timeout=20)
    finish(caller, tmp_path)
    [cdr] = media.wait_cdrs(1)
    assert cdr["sip_code"] == 200 and cdr["billable_seconds"] >= 9
    log = (tmp_path / "switchd.log").read_text()
    assert "ACK has no SDP" not in log and "bad SDP" not in log


@pytest.mark.slow
def test_comedia_sends_to_the_source_when_the_sdp_address_is_wrong(media, tmp_path):
    media.echo_vendor()
    media.customer_connection(comedia=True)
    media.settle()
    caller = media.media_call(media_addr=WRONG_ADDRESS)
    call = wait_media(media, lambda c: c["media"][0]["caller"]["latched"]
                      and c["media"][0]["caller"]["packets_out"] > 50, "the caller's leg latched")
    leg = call["media"][0]["caller"]
    assert leg["comedia"] is True
    host, _, port = leg["remote"].rpartition(":")
    assert host == CUSTOMER_IP and int(port) > 0  # where SIPp's RTP comes from, not 192.0.2.55
    finish(caller, tmp_path)


@pytest.mark.slow
def test_without_comedia_the_sdp_address_is_used(media, tmp_path):
    media.echo_vendor()
    media.settle()
    caller = media.media_call(media_addr=WRONG_ADDRESS)
    call = wait_media(media, lambda c: c["media"][0]["caller"]["packets_in"] > 50, "caller's packets")
    leg = call["media"][0]["caller"]
    assert leg["comedia"] is False and leg["remote"].startswith(f"{WRONG_ADDRESS}:")
    finish(caller, tmp_path)


@pytest.mark.slow
def test_recording_holds_the_known_stream_on_the_caller_channel(media, tmp_path):
    media.echo_vendor(voice_record=True)
    media.settle()
    finish(media.media_call(), tmp_path)
    [cdr] = media.wait_cdrs(1)
    assert cdr["recording"] and cdr["recording"].endswith(".wav")
    request = urllib.request.Request(f"{media.daemon.url}/v1/cdrs/{cdr['id']}/recording",
                                     headers={"Authorization": f"Bearer {media.api.key}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"] == "audio/wav"
        data = response.read()
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, 8000, 2)
        frames = wav.readframes(wav.getnframes())
        seconds = wav.getnframes() / 8000
    # From the first audio packet to the last: the 7.05 s stream (telephone
    # events are not audio; the silence after the last packet is not padded).
    assert 7.0 <= seconds <= 7.6, seconds
    samples = struct.unpack(f"<{len(frames) // 2}h", frames)
    left, right = samples[0::2], samples[1::2]
    # The caller's channel holds SIPp's stream sample for sample, decoded by
    # an independent G.711 implementation (the standard library's).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    expected = struct.unpack_from("<2400h", audioop.alaw2lin(b"".join(pcap_payloads(STREAM)[20:30]), 2))
    joined = struct.pack(f"<{len(left)}h", *left)
    assert struct.pack("<2400h", *expected) in joined, "the caller's stream is not in the left channel"
    # The trunk echoed it: the callee's channel carries sound too.
    assert sum(abs(s) for s in right) / len(right) > 100
    # Another customer's key cannot fetch it.
    other = media.api.post("/v1/customers", {"name": "Other"})
    key = media.api.post("/v1/api-keys", {"customer_id": other["id"], "name": "other"})["key"]
    request = urllib.request.Request(f"{media.daemon.url}/v1/cdrs/{cdr['id']}/recording",
                                     headers={"Authorization": f"Bearer {key}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 404


@pytest.mark.slow
def test_a_call_without_media_is_ended_by_the_media_timeout(tmp_path):
    daemon = Daemon(tmp_path, env={"SWITCHD_SIP_LISTEN": "udp:0:interface=127.0.0.1",
                                   "SWITCHD_SIP_RELOAD_SECONDS": "1", "SWITCHD_MEDIA_TIMEOUT": "3"})
    daemon.start(expect=("api", "sip"))
    net = Network(daemon, Api(daemon), tmp_path)
    try:
        net.topup("10")
        net.vendor("vendor-a", "127.0.0.3", "uas_answer.xml")
        net.settle()
        result = net.call("uac_wait_bye.xml", calls=1, rate=1, timeout=60)
        assert result.returncode == 0, result.stdout[-2000:] + errors(tmp_path)
        [cdr] = net.wait_cdrs(1)
        assert cdr["reason"] == "media timeout" and cdr["hangup_side"] == "switch"
        assert 3 <= cdr["billable_seconds"] <= 6
    finally:
        net.close()
        daemon.stop()


def write_tone(path: Path, seconds: float, frequency: float = 1000.0) -> None:
    import math

    path.parent.mkdir(parents=True, exist_ok=True)
    samples = [int(8000 * math.sin(2 * math.pi * frequency * n / 8000)) for n in range(int(seconds * 8000))]
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(struct.pack(f"<{len(samples)}h", *samples))


def tone_seconds(channel: tuple[int, ...], frequency: float = 1000.0) -> float:
    """How many 100 ms windows of ``channel`` are a loud tone of ``frequency``, in seconds."""
    found = 0
    for start in range(0, len(channel) - 800, 800):
        window = channel[start:start + 800]
        crossings = sum(1 for x, y in zip(window, window[1:]) if (x < 0) != (y < 0))
        loud = sum(abs(s) for s in window) / 800 > 1000
        if loud and abs(crossings - 2 * frequency / 10) <= 6:
            found += 1
    return found / 10


@pytest.mark.slow
def test_prompts_play_into_a_leg_and_a_digit_interrupts_them(tmp_path):
    prompts = tmp_path / "prompts"
    write_tone(prompts / "00080001.wav", 2.0)  # for the callee
    write_tone(prompts / "en" / "00080003.wav", 20.0, 500.0)  # for the caller, cut short by the digit
    daemon = Daemon(tmp_path, env={"SWITCHD_SIP_LISTEN": "udp:0:interface=127.0.0.1",
                                   "SWITCHD_SIP_RELOAD_SECONDS": "1",
                                   "SWITCHD_MEDIA_PROMPTS_DIR": str(prompts)})
    daemon.start(expect=("api", "sip"))
    net = MediaNetwork(daemon, Api(daemon), tmp_path)
    try:
        net.topup("10")
        net.echo_vendor(voice_record=True)
        net.settle()
        caller = net.media_call()
        call = wait_media(net, lambda c: c["state"] == "answered", "the answer")
        status, body = net.api("POST", f"/v1/calls/{call['id']}/playback", {"leg": "callee", "announcement": "00080001"})
        assert status == 202 and body["seconds"] == 2.0, body
        status, body = net.api("POST", f"/v1/calls/{call['id']}/playback", {"leg": "caller", "announcement": "00080003"})
        assert status == 202 and body["seconds"] == 20.0, body
        status, body = net.api("POST", f"/v1/calls/{call['id']}/playback", {"leg": "caller", "text": "Bonjour",
                                                                           "language": "fr"})
        assert status == 202 and body["seconds"] > 0.3, body  # queued after the tone, spoken by espeak-ng
        status, body = net.api("POST", f"/v1/calls/{call['id']}/playback", {"leg": "caller", "announcement": "123"})
        assert status == 422 and body["errors"][0]["field"] == "announcement"
        status, body = net.api("POST", f"/v1/calls/{call['id']}/playback", {"leg": "caller", "announcement": "00089999"})
        assert status == 422, body  # no such file and no text
        finish(caller, tmp_path)
        [cdr] = net.wait_cdrs(1)
        log = (tmp_path / "switchd.log").read_text()
        assert "playback to the callee done" in log
        assert "playback to the caller interrupted" in log  # the digit at 7.5 s cut the 20 s tone
        request = urllib.request.Request(f"{daemon.url}/v1/cdrs/{cdr['id']}/recording",
                                         headers={"Authorization": f"Bearer {net.api.key}"})
        with urllib.request.urlopen(request, timeout=10) as response, wave.open(io.BytesIO(response.read())) as wav:
            frames = wav.readframes(wav.getnframes())
        samples = struct.unpack(f"<{len(frames) // 2}h", frames)
        # The trunk echoed what it heard: the 2 s tone played to it (the caller's
        # audio to it was muted meanwhile) is in the callee's channel.
        assert 1.5 <= tone_seconds(samples[1::2]) <= 2.3
    finally:
        net.close()
        daemon.stop()
