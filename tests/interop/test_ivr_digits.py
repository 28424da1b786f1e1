"""The callback IVR's codes keyed as real RFC 4733 (RFC 2833) telephone-events from SIPp.

An SMS callback (``D.<user2>``: the IVR comes after user2's call) calls user1
(SIPp on 127.0.0.3, ``uas_ivr_codes.xml``), then user2 (SIPp on 127.0.0.4,
answers and waits for a BYE). user1 talks for 3 s, keys the hang-up code
``##``, then the balance code ``111#`` in the IVR, and hangs up 6 s later.

SIPp's own DTMF pcaps (``/usr/share/sip-tester/dtmf_2833_*.pcap``) all carry
one fixed RTP timestamp each, so playing one twice ("##", "111") sends the
same event again, which a receiver rightly drops as a retransmission
(RFC 4733 section 2.5.1.2). The pcaps here are written by :func:`dtmf_pcap`:
one per key sequence, every key with its own timestamp.
"""

from __future__ import annotations

import datetime
from decimal import Decimal
import re
import struct
import time
from pathlib import Path

import pytest

from .test_callback import USER1, USER2, CallbackNetwork
from .test_calls import errors
from .test_sip_peers import free_port

pytestmark = pytest.mark.slow

EVENTS = {**{str(i): i for i in range(10)}, "*": 10, "#": 11}
TELEPHONE_EVENT_PT = 101  # what uas_ivr_codes.xml's SDP answer names


def dtmf_pcap(path: Path, keys: str, *, gap_ms: int = 400, first_seq: int = 1000,
              first_timestamp: int = 8000) -> None:
    """Write an Ethernet/IPv4/UDP pcap of RFC 4733 events for ``keys`` (what SIPp's
    ``play_pcap_audio`` replays: it keeps the RTP and rewrites the addresses).

    Each key: three packets 20 ms apart (the first with the marker bit), then the
    end packet three times, as RFC 4733 section 2.5.1.4 has it; each key has its own
    RTP timestamp, ``gap_ms`` after the previous key's start."""
    records = []
    seq = first_seq
    for index, key in enumerate(keys):
        start_ms = index * gap_ms
        timestamp = first_timestamp + start_ms * 8
        packets = [(False, 160 * (n + 1)) for n in range(3)] + [(True, 640)] * 3
        for n, (end, duration) in enumerate(packets):
            rtp = struct.pack("!BBHII", 0x80, (0x80 if n == 0 else 0) | TELEPHONE_EVENT_PT, seq & 0xFFFF,
                              timestamp, 0x5EED2833)
            rtp += struct.pack("!BBH", EVENTS[key], (0x80 if end else 0) | 10, duration)
            seq += 1
            udp = struct.pack("!HHHH", 6000, 6000, 8 + len(rtp), 0) + rtp  # checksum 0: none (IPv4)
            header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                                 bytes([127, 0, 0, 3]), bytes([127, 0, 0, 1]))
            total = sum(struct.unpack("!10H", header))
            while total > 0xFFFF:
                total = (total & 0xFFFF) + (total >> 16)
            header = header[:10] + struct.pack("!H", ~total & 0xFFFF) + header[12:]
            frame = b"\x00\x00\x00\x00\x00\x02" + b"\x00\x00\x00\x00\x00\x01" + b"\x08\x00" + header + udp
            at_ms = start_ms + 20 * min(n, 3) + (n - 3 if n > 3 else 0)  # the end packets back to back
            records.append(struct.pack("<IIII", 1_700_000_000 + at_ms // 1000, (at_ms % 1000) * 1000,
                                       len(frame), len(frame)) + frame)
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + b"".join(records))


def when(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def codes_net(tmp_path):
    """user1 keys "##" 3 s after answering and "111#" 3 s later; user2 answers, takes one call."""
    dtmf_pcap(tmp_path / "ivr_hangup.pcap", "##")
    dtmf_pcap(tmp_path / "ivr_balance.pcap", "111#", first_seq=2000, first_timestamp=80000)
    network = CallbackNetwork(
        tmp_path, user1_scenario=("uas_ivr_codes.xml", ("-m", "1", "-mp", str(free_port()))),
        user2_scenario=("uas_answer.xml", ("-m", "1")))
    yield network
    network.close()


def test_the_generated_pcap_is_what_sipp_replays(tmp_path):
    """Two "#" with distinct timestamps, end packets flagged, Ethernet link type."""
    path = tmp_path / "keys.pcap"
    dtmf_pcap(path, "##")
    data = path.read_bytes()
    assert struct.unpack("<IHHiIII", data[:24])[6] == 1  # LINKTYPE_ETHERNET
    offset, seen = 24, []
    while offset < len(data):
        length = struct.unpack("<IIII", data[offset:offset + 16])[2]
        frame = data[offset + 16:offset + 16 + length]
        offset += 16 + length
        rtp = frame[42:]
        seen.append((rtp[1] & 0x7F, struct.unpack("!I", rtp[4:8])[0], rtp[12], bool(rtp[13] & 0x80)))
    assert len(seen) == 12
    assert {s[0] for s in seen} == {101} and {s[2] for s in seen} == {11}
    assert [s[1] for s in seen] == [8000] * 6 + [11200] * 6
    assert [s[3] for s in seen] == [False] * 3 + [True] * 3 + [False] * 3 + [True] * 3


def sms_callback(net: CallbackNetwork, text: str) -> str:
    """Register USER1 for a client of the paying service and text ``text`` to its access number."""
    api = net.api
    client = api.post("/v1/callback-clients", {"service_id": net.service["id"], "login": "dora", "password": "pw"})
    api.post("/v1/callback-numbers", {"client_id": client["id"], "number": USER1})
    access = api.post("/v1/services", {"account_id": net.account["id"], "type": "callback",
                                       "tariff_plan_id": net.service["tariff_plan_id"]})
    api.post("/v1/numbers", {"number": "4415550009", "service_id": access["id"], "language": "en"})
    status, body = api("POST", "/v1/callbacks/sms", {"from": USER1, "to": "4415550009", "text": text,
                                                     "send_reply": False})
    assert status == 200, body
    return body["reply"]


def test_hangup_code_ends_user2_keeps_user1_and_balance_code_speaks_the_balance(codes_net, tmp_path):
    net = codes_net
    api = net.api
    user1, user2 = net.peers
    started = time.monotonic()
    assert sms_callback(net, f"D.{USER2}") == f"calling {USER1}, then {USER2}"
    log_path = tmp_path / "switchd.log"
    found = api.wait_for(lambda: re.search(rf"callback ([0-9a-f]+) \(sms {USER1}\) calls {USER1}, prompts in en",
                                           log_path.read_text()), "the callback's log line")
    callback_id = found.group(1)

    # user2's SIPp saw switchd's BYE about 3 s after answering (the hang-up code), answered it
    # and ended its one call well: exit status 0. user1 is still in the IVR then.
    assert user2.wait(timeout=20) == 0, errors(tmp_path)
    assert time.monotonic() - started < 15
    assert user1.poll() is None  # user1 stayed
    status, summary = api("GET", f"/v1/callbacks/{callback_id}")
    assert status == 200 and summary["state"] == "collecting" and summary["outcome"] is None, summary

    # user1 hangs up itself (its BYE answered: exit status 0), after the balance code.
    assert user1.wait(timeout=25) == 0, errors(tmp_path)
    events = api.wait_for(
        lambda: e if (e := api("GET", f"/v1/callbacks/{callback_id}/events")[1])["outcome"] else None,
        "the callback to end", timeout=10)
    items = events["items"]
    states = [(item["state"], item["detail"]) for item in items]
    assert events["outcome"] == "completed" and 2 <= events["real_duration"] <= 4, events
    start = states.index(("bridged", USER2))
    assert states[:start] == [("dialing1", USER1), ("answered1", USER1), ("dialing2", USER2),
                              ("answered2", USER2)], states
    assert states[start:] == [
        ("bridged", USER2),
        ("dtmf", "user1 #"), ("dtmf", "user1 #"),  # both keys: the second is not a retransmission
        ("user2_ended", "hang-up code"),
        ("collecting", ""),
        ("dtmf", "user1 1"), ("dtmf", "user1 1"), ("dtmf", "user1 1"), ("dtmf", "user1 #"),
        ("collecting", ""),  # asked again once the balance was said
        ("ended", "completed: user1 hung up"),
    ], states
    at = {index: item["at"] for index, item in enumerate(items)}
    bridged, hangup_key = at[start], at[start + 2]
    assert 2 <= hangup_key - bridged <= 4  # "##" 3 s after user1 answered
    balance_key, asked_again = at[start + 8], at[start + 9]
    assert 2.5 <= balance_key - hangup_key <= 4.5  # "111#" 3 s after "##"
    # The balance was spoken: espeak-ng said "Your balance is N EUR." once the keys came (the
    # log line of its synthesis), and the IVR asked again only after it had played in full.
    log = log_path.read_text()
    spoken = re.findall(r"spoke tts \S+ 'Your balance is (\d+\.\d\d) EUR\.' \((\d+\.\d) s\)", log)
    assert len(spoken) == 1, log[-4000:]
    amount, seconds = spoken[0]
    assert float(seconds) >= 1.0
    assert asked_again - balance_key >= float(seconds) - 0.2, (balance_key, asked_again, seconds)
    cdrs = api.wait_for(lambda: c if len(c := net.cdrs()) == 2 else None, "two CDRs", timeout=10)
    by_callee = {c["callee"]: c for c in cdrs}
    assert set(by_callee) == {USER1, USER2} and all(c["direction"] == "callback" for c in cdrs)
    leg1, leg2 = by_callee[USER1], by_callee[USER2]
    assert (leg2["hangup_side"], leg2["reason"], leg2["sip_code"]) == ("switch", "user1 hang-up code", 200), leg2
    assert (leg1["hangup_side"], leg1["reason"], leg1["sip_code"]) == ("callee", "BYE", 200), leg1
    assert (leg1["caller"], leg2["caller"]) == ("4415550009", USER1)
    assert 3 <= leg2["billable_seconds"] <= 5 and 11 <= leg1["billable_seconds"] <= 15, cdrs
    # user2's leg was charged when it ended, before the keys; user1's only at its end: the
    # balance spoken is the 10 EUR top-up less user2's leg (e.g. 4 s at 0.60 EUR/min).
    assert Decimal(leg2["charge"]) == Decimal(leg2["billable_seconds"]) / 100
    assert amount == f"{Decimal(10) - Decimal(leg2['charge']):.2f}", (amount, leg2)
    # user2's leg ended (the hang-up code) about 9 s before user1's.
    gap = (when(leg1["end_time"]) - when(leg2["end_time"])).total_seconds()
    assert 7 <= gap <= 11, cdrs
    assert time.monotonic() - started < 30
