"""SDP parsing, round trips, relay rewriting and o= versions, on real-looking bodies."""

import pytest

from switchd.media.sdp import (
    Connection,
    Origin,
    OriginKeeper,
    SdpError,
    SessionDescription,
    rewrite,
)


def sdp(text: str) -> bytes:
    """Test bodies are written with LF; real ones arrive with CRLF."""
    return text.strip("\n").replace("\n", "\r\n").encode() + b"\r\n"


# A WebRTC-ish offer: audio with telephone-event and a=rtcp, video on another address, ICE.
OFFER = sdp("""
v=0
o=alice 2890844526 2890844527 IN IP4 198.51.100.7
s=-
i=A call with video
c=IN IP4 198.51.100.7
t=0 0
a=ice-options:trickle
a=ice-ufrag:F7gI
a=ice-pwd:x9cml/YzichV2+XlhiMu8g
m=audio 49170 RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=rtcp:49171 IN IP4 198.51.100.7
a=candidate:1 1 UDP 2130706431 10.0.1.1 8998 typ host
a=candidate:2 1 UDP 1694498815 198.51.100.7 49170 typ srflx raddr 10.0.1.1 rport 8998
a=end-of-candidates
a=ptime:20
a=sendrecv
m=video 51372 RTP/AVP 99
c=IN IP4 198.51.100.8
b=AS:512
a=rtpmap:99 H264/90000
a=fmtp:99 profile-level-id=42e01f;packetization-mode=1
""")

# IPv6, SRTP keys and RTCP multiplexing.
IPV6 = sdp("""
v=0
o=- 20518 0 IN IP6 2001:db8::1
s=-
c=IN IP6 2001:db8::1
t=0 0
m=audio 5004 RTP/SAVP 8 101
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=rtcp-mux
""")

# An answer that takes the audio and refuses the video.
ANSWER_REJECTING_VIDEO = sdp("""
v=0
o=bob 2808844564 2808844564 IN IP4 203.0.113.5
s=-
c=IN IP4 203.0.113.5
t=0 0
m=audio 3456 RTP/AVP 0 101
a=rtpmap:101 telephone-event/8000
m=video 0 RTP/AVP 99
""")


def held(direction_line: str = "", address: str = "198.51.100.7") -> bytes:
    return sdp(f"""
v=0
o=alice 2890844526 2890844528 IN IP4 198.51.100.7
s=-
c=IN IP4 {address}
t=0 0
m=audio 49170 RTP/AVP 0
{direction_line}
""".replace("\n\n", "\n"))


def test_offer_fields():
    s = SessionDescription.parse(OFFER)
    assert s.origin == Origin("alice", "2890844526", 2890844527, "IN", "IP4", "198.51.100.7")
    assert s.origin.version == 2890844527
    assert s.name == "-" and s.connection == Connection("IN", "IP4", "198.51.100.7")
    assert s.attribute("ice-ufrag") == "F7gI" and s.direction == "sendrecv"
    audio, video = s.media
    assert (audio.media, audio.port, audio.port_count, audio.proto, audio.formats) == (
        "audio", 49170, None, "RTP/AVP", ["0", "8", "101"])
    assert audio.connection is None and audio.remote() == ("198.51.100.7", 49170)
    assert audio.rtpmap == {0: ("PCMU", 8000), 8: ("PCMA", 8000), 101: ("telephone-event", 8000)}
    assert audio.telephone_event_pt == 101 and audio.rtcp_port == 49171 and not audio.rtcp_mux
    assert audio.direction == "sendrecv" and not audio.is_hold and not s.is_hold
    assert audio.attribute("ptime") == "20" and audio.attribute("sendrecv") == ""
    assert audio.attribute("maxptime") is None
    assert video.remote() == ("198.51.100.8", 51372) and video.rtcp_port == 51373
    assert video.telephone_event_pt is None and video.rtpmap == {99: ("H264", 90000)}


def test_unchanged_bodies_round_trip_byte_for_byte():
    for body in (OFFER, IPV6, ANSWER_REJECTING_VIDEO, held("a=sendonly")):
        assert SessionDescription.parse(body).serialize() == body
    # Unknown lines keep odd spacing and bytes that are not UTF-8.
    odd = sdp("v=0\no=- 1 1 IN IP4 192.0.2.1\ns=caf\xe9\nc=IN IP4 192.0.2.1\nt=0 0\n"
              "a=X-custom:  two  spaces \nm=audio 4000 RTP/AVP 0\nk=prompt\na=fmtp:0 x=1").replace(b"\xc3\xa9", b"\xe9")
    assert SessionDescription.parse(odd).serialize() == odd


def test_lf_input_gives_crlf_output():
    body = OFFER.replace(b"\r\n", b"\n")
    assert SessionDescription.parse(body).serialize() == OFFER
    assert SessionDescription.parse(OFFER + b"\r\n\r\n").serialize() == OFFER


def test_ipv6_srtp_and_rtcp_mux():
    s = SessionDescription.parse(IPV6)
    (audio,) = s.media
    assert s.connection.address_type == "IP6" and audio.remote() == ("2001:db8::1", 5004)
    assert audio.rtcp_mux and audio.proto == "RTP/SAVP" and audio.attribute("crypto").startswith("1 AES_CM")


def test_static_payload_types_need_no_rtpmap():
    s = SessionDescription.parse(sdp("v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n"
                                     "m=audio 4000 RTP/AVP 18 0 96\n"))
    assert s.media[0].rtpmap == {18: ("G729", 8000), 0: ("PCMU", 8000)}


def test_telephone_event_matching_the_codec_rate_is_preferred():
    s = SessionDescription.parse(sdp("""
v=0
o=- 1 1 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 4000 RTP/AVP 111 0 110 101
a=rtpmap:111 opus/48000/2
a=rtpmap:110 telephone-event/48000
a=rtpmap:101 telephone-event/8000
"""))
    assert s.media[0].telephone_event_pt == 110


@pytest.mark.parametrize(
    "body, direction",
    [
        (held("a=sendonly"), "sendonly"),
        (held("a=inactive"), "inactive"),
        (held(address="0.0.0.0"), "sendrecv"),
    ],
)
def test_hold_forms(body, direction):
    s = SessionDescription.parse(body)
    assert s.media[0].direction == direction and s.media[0].is_hold and s.is_hold


def test_recvonly_is_not_hold_and_media_level_direction_wins():
    assert not SessionDescription.parse(held("a=recvonly")).is_hold
    s = SessionDescription.parse(sdp("""
v=0
o=- 1 1 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
a=sendonly
m=audio 4000 RTP/AVP 0
m=audio 4002 RTP/AVP 0
a=sendrecv
"""))
    assert [m.direction for m in s.media] == ["sendonly", "sendrecv"]
    assert s.direction == "sendonly" and not s.is_hold


def test_rejected_stream():
    s = SessionDescription.parse(ANSWER_REJECTING_VIDEO)
    audio, video = s.media
    assert not audio.rejected and video.rejected and video.port == 0
    assert audio.rtpmap == {0: ("PCMU", 8000), 101: ("telephone-event", 8000)}
    assert not s.is_hold  # the accepted audio is not held


def test_rewrite_puts_the_relay_in_the_path():
    original = SessionDescription.parse(OFFER)
    out = rewrite(original, "192.0.2.10", [30000, 30002])
    text = out.serialize().decode()
    assert text.count("c=IN IP4 192.0.2.10\r\n") == 2  # session and video levels
    # The far end's address is left only in its o= line (OriginKeeper replaces that).
    assert [line for line in text.split("\r\n") if "198.51.100" in line] == [
        "o=alice 2890844526 2890844527 IN IP4 198.51.100.7"]
    assert "candidate" not in text and "ice-" not in text and "end-of-candidates" not in text
    audio, video = out.media
    assert audio.remote() == ("192.0.2.10", 30000) and video.remote() == ("192.0.2.10", 30002)
    assert audio.attribute("rtcp") == "30001 IN IP4 192.0.2.10" and audio.rtcp_port == 30001
    assert video.attribute("rtcp") is None and video.rtcp_port == 30003
    # Everything else is as it was, in order.
    assert audio.formats == ["0", "8", "101"] and audio.attribute("fmtp") == "101 0-16"
    assert [a for a, _ in audio.attributes] == ["rtpmap", "rtpmap", "rtpmap", "fmtp", "rtcp", "ptime", "sendrecv"]
    assert ("b", "AS:512") in video.lines and out.lines[3] == ("i", "A call with video")
    assert out.origin == original.origin
    # The input is untouched.
    assert original.serialize() == OFFER


def test_rewrite_keeps_rejections_and_rejects_on_request():
    answer = rewrite(SessionDescription.parse(ANSWER_REJECTING_VIDEO), "192.0.2.10", [30000, 30002])
    assert [m.port for m in answer.media] == [30000, 0]
    offer = rewrite(SessionDescription.parse(OFFER), "192.0.2.10", [30000, None])
    video = offer.media[1]
    assert video.port == 0 and video.connection == Connection("IN", "IP4", "192.0.2.10")
    assert video.rtpmap == {99: ("H264", 90000)}


def test_rewrite_ipv6_keeps_crypto_and_drops_port_counts():
    out = rewrite(SessionDescription.parse(IPV6), "2001:db8::10", [40000])
    audio = out.media[0]
    assert out.connection == Connection("IN", "IP6", "2001:db8::10") and audio.port == 40000
    assert audio.attribute("crypto") == SessionDescription.parse(IPV6).media[0].attribute("crypto")
    assert audio.has_attribute("rtcp-mux")
    layered = SessionDescription.parse(sdp("v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n"
                                           "m=video 49170/2 RTP/AVP 31\n"))
    assert layered.media[0].port_count == 2
    assert rewrite(layered, "::1", [5000]).serialize().endswith(b"m=video 5000 RTP/AVP 31\r\n")


def test_rewrite_refuses_bad_arguments():
    s = SessionDescription.parse(OFFER)
    with pytest.raises(SdpError, match="1 ports given for 2 media"):
        rewrite(s, "192.0.2.10", [30000])
    with pytest.raises(SdpError, match="not an IP address"):
        rewrite(s, "relay.example.com", [30000, 30002])
    with pytest.raises(SdpError, match="relay port 65535"):
        rewrite(s, "192.0.2.10", [65535, 30002])


def test_hold_survives_rewrite():
    out = rewrite(SessionDescription.parse(held("a=sendonly")), "192.0.2.10", [30000])
    assert out.is_hold and out.media[0].direction == "sendonly"


def test_origin_version_moves_only_when_the_body_changes():
    keeper = OriginKeeper(address="192.0.2.10", session_id=4242)
    first = keeper.stamp(rewrite(SessionDescription.parse(OFFER), "192.0.2.10", [30000, 30002]))
    assert first.origin == Origin("switchd", "4242", 1, "IN", "IP4", "192.0.2.10")
    # A re-INVITE with the same media, even with the far end's o= version moved on, keeps ours.
    again = SessionDescription.parse(OFFER.replace(b"2890844527", b"2890844599"))
    assert keeper.stamp(rewrite(again, "192.0.2.10", [30000, 30002])).origin.session_version == 1
    # Hold changes the body: version 2; the same hold again stays 2.
    hold = SessionDescription.parse(OFFER.replace(b"a=sendrecv", b"a=sendonly"))
    assert keeper.stamp(rewrite(hold, "192.0.2.10", [30000, 30002])).origin.session_version == 2
    assert keeper.stamp(rewrite(hold, "192.0.2.10", [30000, 30002])).origin.session_version == 2
    assert keeper.stamp(rewrite(again, "192.0.2.10", [30000, 30002])).origin.session_version == 3
    v6 = OriginKeeper("sbc", address="2001:db8::10")
    stamped = v6.stamp(SessionDescription.parse(IPV6)).origin
    assert (stamped.username, stamped.address_type, stamped.address) == ("sbc", "IP6", "2001:db8::10")
    assert stamped.session_id.isdigit() and stamped.session_id != str(OriginKeeper(address="::1").session_id)


def test_attribute_editing():
    s = SessionDescription.parse(OFFER)
    audio = s.media[0]
    audio.set_attribute("sendonly")
    audio.remove_attributes(["sendrecv"])
    assert audio.direction == "sendonly"
    audio.set_attribute("ptime", "30")
    assert audio.attribute("ptime") == "30"
    with pytest.raises(SdpError, match="a=rtcp"):
        audio.set_attribute("rtcp", "x")
    audio.connection = Connection.for_address("192.0.2.99")
    assert audio.lines[0] == ("c", "IN IP4 192.0.2.99") and audio.remote() == ("192.0.2.99", 49170)
    audio.connection = None
    assert audio.remote() == ("198.51.100.7", 49170)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "empty SDP body"),
        (b"o=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n", "line 1: SDP must start with v="),
        (b"v=1\r\no=- 1 1 IN IP4 192.0.2.1\r\n", "unsupported SDP version"),
        (b"v=0\r\ns=-\r\nc=IN IP4 192.0.2.1\r\n", "no o= line"),
        (b"v=0\r\no=- 1 1 IN IP4\r\n", "line 2: o= needs 6 fields, got 5"),
        (b"v=0\r\no=- 1 one IN IP4 192.0.2.1\r\n", "session version 'one'"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nv=0\r\n", "more than one v="),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns -\r\n", "line 3: 's -' is not <type>=<value>"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nC=IN IP4 192.0.2.1\r\n", "not <type>=<value>"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4\r\n", "c= needs 3 fields"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 1.2.3.4\r\nm=audio abc RTP/AVP 0\r\n",
         "line 4: m= port 'abc' is not a port number"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 1.2.3.4\r\nm=audio 70000 RTP/AVP 0\r\n",
         "m= port '70000'"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000/0 RTP/AVP 0\r\n", "port count"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000\r\n", "m= needs media, port and proto"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\n", "m=audio 4000 has no c= line"),
        ((b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\n"
          b"o=- 1 1 IN IP4 192.0.2.1\r\n"), "o= must appear once"),
        ((b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 96\r\n"
          b"a=rtpmap:96 opus\r\n"), "line 5: a=rtpmap '96 opus' is not"),
        ((b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\n"
          b"a=rtpmap:300 PCMU/8000\r\n"), "payload type '300'"),
        ((b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\n"
          b"a=rtcp:port\r\n"), "a=rtcp port 'port'"),
    ],
)
def test_malformed_bodies(body, message):
    with pytest.raises(SdpError, match=message):
        SessionDescription.parse(body)


def test_a_rejected_stream_needs_no_connection():
    s = SessionDescription.parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\n")
    with pytest.raises(SdpError, match="no connection address"):
        s.media[0].remote()
