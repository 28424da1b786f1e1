"""Unit tests of the sans-IO SIP message parser, serializer and framers."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchd.sip.message import (
    COMPACT_FORMS,
    MAGIC_COOKIE,
    Address,
    CSeq,
    Ping,
    Pong,
    Request,
    Response,
    SIPParseError,
    StreamParser,
    URI,
    Via,
    check_max_forwards,
    is_keepalive,
    make_response,
    new_branch,
    new_tag,
    parse_address,
    parse_addresses,
    parse_cseq,
    parse_datagram,
    parse_uri,
    parse_via,
    quote_string,
    split_header_values,
    unquote_string,
    validate_request,
    validate_response,
)

TORTURE = Path(__file__).with_name("torture")

SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)

RINGING = (
    b"SIP/2.0 180 Ringing\r\n"
    b"Via: SIP/2.0/UDP server10.biloxi.example.com;branch=z9hG4bK4b43c2ff8.1;received=192.0.2.3\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;received=192.0.2.1\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def request(data: bytes = INVITE) -> Request:
    message = parse_datagram(data)
    assert isinstance(message, Request)
    return message


# --------------------------------------------------------------------------
# URIs
# --------------------------------------------------------------------------


def test_uri_components():
    text = "sips:alice:secret@atlanta.example.com:5061;transport=tcp;lr?subject=project%20x&priority=urgent"
    uri = parse_uri(text)
    assert uri.scheme == "sips" and uri.is_sip
    assert (uri.user, uri.password, uri.host, uri.port) == ("alice", "secret", "atlanta.example.com", 5061)
    assert uri.transport == "tcp" and uri.lr
    assert uri.header("Subject") == "project x" and uri.header("priority") == "urgent"
    assert str(uri) == text


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@atlanta.com",
        "sip:alice:secretword@atlanta.com;transport=tcp",
        "sips:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:+1-212-555-1212:1234@gateway.com;user=phone",
        "sips:1212@gateway.com",
        "sip:alice@192.0.2.4",
        "sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com",
        "sip:alice;day=tuesday@atlanta.com",
        "sip:[2001:db8::10]",
        "sip:[2001:db8::10]:5070",
        "sip:user@[::ffff:192.0.2.1]:5060;maddr=[2001:db8::1]",
        "tel:+1-201-555-0123",
        "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
        "http://www.example.com/a?b=c",
    ],
)
def test_uri_round_trip(text):
    uri = parse_uri(text)
    assert str(uri) == text
    assert parse_uri(str(uri)) == uri


def test_uri_scheme_is_case_insensitive():
    assert parse_uri("SIP:alice@atlanta.com").scheme == "sip"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "alice@atlanta.com",
        ":alice",
        "sip:",
        "sip:2001:db8::10",  # RFC 5118 §4.2: IPv6 without brackets
        "sip:[2001:db8::10",
        "sip:[2001:zz8::10]",
        "sip:[2001:db8::10]x",
        "sip:alice@",
        "sip:@host",
        "sip:alice@host:",
        "sip:alice@host:65536",
        "sip:alice@host:5060x",
        "sip:alice@ho st",
        "sip:al ice@host",
        "sip:alice@host;",
        "sip:alice@host;a=",
        "sip:alice@host?",
        "sip:alice@host?novalue",
        "sip:alice@host<",
        "sip:alice@-host-",
        "sip:<sip:alice@host>",
        "1sip:alice@host",
        "tel:",
        "tel:has space",
    ],
)
def test_uri_errors(text):
    with pytest.raises(SIPParseError) as exc:
        parse_uri(text)
    assert exc.value.status == 400


def test_rfc5118_port_ambiguity():
    assert parse_uri("sip:[2001:db8::10:5070]").port is None
    assert parse_uri("sip:[2001:db8::10]:5070").port == 5070


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
        ("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
         "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"),
        ("sip:alice@atlanta.com?subject=project%20x&priority=urgent",
         "sip:alice@atlanta.com?priority=urgent&subject=project%20x"),
    ],
)
def test_uri_equivalent(first, second):
    assert parse_uri(first).equivalent(parse_uri(second))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
        ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
        ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
        ("sips:bob@biloxi.com", "sip:bob@biloxi.com"),
    ],
)
def test_uri_not_equivalent(first, second):
    assert not parse_uri(first).equivalent(parse_uri(second))


def test_uri_derivation():
    uri = parse_uri("sip:bob@biloxi.com;transport=udp")
    changed = uri.with_param("transport", "tcp").with_param("lr")
    assert str(changed) == "sip:bob@biloxi.com;transport=tcp;lr"
    assert str(changed.without_param("TRANSPORT")) == "sip:bob@biloxi.com;lr"
    assert str(uri._replace(port=5070)) == "sip:bob@biloxi.com:5070;transport=udp"
    assert str(URI(scheme="sip", host="example.com")) == "sip:example.com"
    with pytest.raises(ValueError):
        uri.with_param("bad name")
    with pytest.raises(ValueError):
        uri.with_param("x", "a\r\nb")


# --------------------------------------------------------------------------
# Addresses, Via, CSeq
# --------------------------------------------------------------------------


def test_name_addr_with_quoted_display_name():
    address = parse_address(
        r'"Alice \"A.\" \\ Smith" <sip:alice@atlanta.com;transport=tcp> ;tag=88sja8x ;q=0.7'
    )
    assert address.display_name == 'Alice "A." \\ Smith'
    assert address.uri == parse_uri("sip:alice@atlanta.com;transport=tcp")
    assert address.tag == "88sja8x" and address.param("Q") == "0.7"
    assert str(address) == r'"Alice \"A.\" \\ Smith" <sip:alice@atlanta.com;transport=tcp>;tag=88sja8x;q=0.7'
    assert parse_address(str(address)) == address


def test_token_display_name_and_addr_spec():
    address = parse_address("Bob   Smith<sip:bob@biloxi.com>")
    assert address.display_name == "Bob Smith"
    spec = parse_address("sip:bob@biloxi.com;tag=1;expires=60")
    assert spec.display_name is None and spec.uri is not None and spec.uri.params == ()
    assert spec.params == (("tag", "1"), ("expires", "60"))
    assert str(spec) == "<sip:bob@biloxi.com>;tag=1;expires=60"


def test_quoted_parameter_values_are_kept_raw():
    address = parse_address('<sip:2000@192.0.2.9>;+sip.instance="<urn:uuid:a369bd8d>";reg-id=1')
    assert address.param("+sip.instance") == '"<urn:uuid:a369bd8d>"'
    assert unquote_string(address.param("+sip.instance") or "") == "<urn:uuid:a369bd8d>"


def test_contact_wildcard():
    (star,) = parse_addresses("*")
    assert star.is_wildcard and str(star) == "*"
    assert parse_address("*;expires=0").params == (("expires", "0"),)


def test_address_list_respects_quotes_and_brackets():
    contacts = parse_addresses('"Doe, John" <sip:j@a.com>, <sip:x,y@b.com>;q=0.5,sip:c@d.com')
    assert [c.display_name for c in contacts] == ["Doe, John", None, None]
    assert contacts[1].uri is not None and contacts[1].uri.user == "x,y"
    with pytest.raises(SIPParseError):
        parse_addresses("<sip:a@b.com>,,<sip:c@d.com>")


@pytest.mark.parametrize(
    "text",
    [
        "",
        '"unterminated <sip:a@b.com>',
        '"quoted" sip:a@b.com',
        "<sip:a@b.com",
        "< sip:a@b.com >",
        "Bell, Alexander <sip:a@b.com>",
        "sip:a@b.com?Route=x",
        "sip:a@b.com;;",
        "<sip:a@b.com>;tag",
        "<sip:a@b.com>;tag=",
        "<sip:a@b.com> garbage",
        "<>",
    ],
)
def test_address_errors(text):
    with pytest.raises(SIPParseError):
        parse_address(text)


def test_address_derivation():
    address = parse_address("<sip:bob@biloxi.com>")
    assert str(address.with_tag("x1")) == "<sip:bob@biloxi.com>;tag=x1"
    assert str(Address(uri=parse_uri("sip:a@b.c"), display_name='say "hi"')) == '"say \\"hi\\"" <sip:a@b.c>'


def test_via_with_lws_and_parameters():
    via = parse_via(
        "SIP / 2.0 / tcp  [2001:db8::9:1] : 5061 ; branch = z9hG4bKx ;received=[2001:db8::9:255];"
        "rport;ttl=16;maddr=224.2.0.1"
    )
    assert (via.protocol, via.transport, via.host, via.port) == ("SIP/2.0", "TCP", "[2001:db8::9:1]", 5061)
    assert via.branch == "z9hG4bKx" and via.has_magic_cookie
    assert via.received == "[2001:db8::9:255]"
    assert via.has_rport and via.rport is None
    assert via.ttl == 16 and via.maddr == "224.2.0.1"
    assert str(via) == (
        "SIP/2.0/TCP [2001:db8::9:1]:5061;branch=z9hG4bKx;received=[2001:db8::9:255];"
        "rport;ttl=16;maddr=224.2.0.1"
    )


def test_via_rport_value_and_unbracketed_ipv6_received():
    via = parse_via("SIP/2.0/UDP 192.0.2.1:5060;rport=5062;received=2001:db8::9:255;branch=z9hG4bKa")
    assert via.rport == 5062 and via.received == "2001:db8::9:255"
    assert via.sent_by == ("192.0.2.1", 5060)
    assert str(via.with_param("received", "192.0.2.7")).endswith(";received=192.0.2.7")
    assert Via("UDP", "a.example.com", 5060, (("branch", new_branch()),)).has_magic_cookie


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SIP/2.0/UDP",
        "SIP/2.0 UDP host",
        "SIP/2.0/UDP host:99999",
        "SIP/2.0/UDP host;;",
        "SIP/2.0/UDP host;branch",
        "SIP/2.0/UDP host;received=not-an-ip",
        "SIP/2.0/UDP host;rport=x",
        "SIP/2.0/UDP host;ttl=256",
        "SIP/2.0/UDP [2001:db8::1",
        "SIP/2.0/UDP host extra",
    ],
)
def test_via_errors(text):
    with pytest.raises(SIPParseError):
        parse_via(text)


def test_cseq():
    assert parse_cseq("0009   INVITE") == CSeq(9, "INVITE")
    assert str(CSeq(1, "BYE")) == "1 BYE"
    assert parse_cseq(str(2**31 - 1) + " ACK").number == 2**31 - 1
    for bad in ("", "1", "INVITE", "-1 INVITE", str(2**31) + " INVITE", "1 INV ITE", "١ INVITE"):
        with pytest.raises(SIPParseError):
            parse_cseq(bad)


def test_split_header_values():
    assert split_header_values(" a , b,c ") == ["a", "b", "c"]
    assert split_header_values('"x, \\"y" <s:a,b>;p="1,2", z') == ['"x, \\"y" <s:a,b>;p="1,2"', "z"]


def test_quote_string():
    assert quote_string('a"b\\c') == '"a\\"b\\\\c"'
    assert quote_string("bel\x07\r\n") == '"bel\\\x07  "'
    assert unquote_string(quote_string("x\\\"y")) == "x\\\"y"


# --------------------------------------------------------------------------
# Datagram framing
# --------------------------------------------------------------------------


def test_parse_request():
    msg = request()
    assert msg.method == "INVITE" and str(msg.uri) == "sip:bob@biloxi.example.com"
    assert msg.max_forwards == 70 and msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.cseq == CSeq(314159, "INVITE")
    assert msg.top_via is not None and msg.top_via.has_rport
    assert msg.to_addr is not None and msg.to_addr.display_name == "Bob" and msg.to_addr.tag is None
    assert msg.from_addr is not None and msg.from_addr.tag == "1928301774"
    assert msg.content_type == "application/sdp"
    assert msg.body == SDP
    assert bytes(msg) == INVITE


def test_parse_response():
    msg = parse_datagram(RINGING)
    assert isinstance(msg, Response) and (msg.status, msg.reason) == (180, "Ringing")
    assert [v.received for v in msg.via] == ["192.0.2.3", "192.0.2.1"]
    validate_response(msg)
    assert bytes(msg) == RINGING


def test_compact_forms_are_expanded():
    data = (
        b"OPTIONS sip:a@b.c SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nt: <sip:a@b.c>\r\n"
        b"f: <sip:c@d.e>;tag=1\r\ni: x@y\r\nCSeq: 1 OPTIONS\r\nm: <sip:c@h>\r\nk: path\r\nc: text/plain\r\n"
        b"e: gzip\r\ns: hi\r\nl: 3\r\n\r\nabc"
    )
    msg = request(data)
    names = [name for name, _ in msg.items()]
    assert names == ["Via", "To", "From", "Call-ID", "CSeq", "Contact", "Supported", "Content-Type",
                     "Content-Encoding", "Subject", "Content-Length"]
    assert msg.get("i") == msg.get("call-id") == msg.get("CALL-ID") == "x@y"
    assert msg.body == b"abc"
    out = bytes(msg)
    assert b"\r\nCall-ID: x@y\r\n" in out and b"\r\nContent-Length: 3\r\n" in out
    assert validate_request(msg) is None


@pytest.mark.parametrize(("short", "long"), sorted(COMPACT_FORMS.items()))
def test_every_compact_form(short, long):
    msg = request(b"OPTIONS sip:a@b.c SIP/2.0\r\n" + short.encode() + b": 0\r\n\r\n")
    assert msg.items() == [(long, "0")]


def test_folded_lines_and_header_colon_whitespace():
    msg = request(
        b"OPTIONS sip:a@b.c SIP/2.0\r\nSubject :  first\r\n   second\r\n\tthird\r\n"
        b"To:\r\n <sip:a@b.c>\r\nX-Empty:\r\n\r\n"
    )
    assert msg.get("Subject") == "first second third"
    assert msg.get("To") == "<sip:a@b.c>"
    assert msg.get("X-Empty") == ""


def test_body_bounds():
    head = b"MESSAGE sip:a@b.c SIP/2.0\r\nContent-Length: 5\r\n\r\n"
    assert parse_datagram(head + b"hello, extra").body == b"hello"
    with pytest.raises(SIPParseError) as exc:
        parse_datagram(head + b"hell")
    assert exc.value.status == 400 and exc.value.reason == "Truncated message body"
    assert isinstance(exc.value.message, Request)
    no_length = b"MESSAGE sip:a@b.c SIP/2.0\r\nTo: <sip:a@b.c>\r\n\r\nall of it"
    assert parse_datagram(no_length).body == b"all of it"


def test_leniencies():
    assert parse_datagram(b"\r\n\r\n" + INVITE).body == SDP  # leading CRLFs
    msg = parse_datagram(b"OPTIONS sip:a@b.c SIP/2.0\r\nCall-ID: x\r\n")  # no empty line
    assert msg.get("Call-ID") == "x" and msg.body == b""
    assert request(b"OPTIONS sip:a@b.c sip/2.0\r\n\r\n").method == "OPTIONS"


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (b"OPTIONS sip:a@b.c SIP/2.0", 400, "Unterminated header section"),
        (b"OPTIONS sip:a@b.c SIP/3.0\r\n\r\n", 505, "Version Not Supported"),
        (b"OPTIONS sip:a@b.c HTTP/1.1\r\n\r\n", 400, "Malformed SIP version"),
        (b"OPTIONS  sip:a@b.c SIP/2.0\r\n\r\n", 400, "Malformed Request-Line"),
        (b"OPTIONS sip:a@b.c SIP/2.0 \r\n\r\n", 400, "Malformed Request-Line"),
        (b"OPT@ONS sip:a@b.c SIP/2.0\r\n\r\n", 400, "Invalid method"),
        (b"OPTIONS <sip:a@b.c> SIP/2.0\r\n\r\n", 400, "Malformed Request-URI"),
        (b"OPTIONS sip:a@b.c?Route=x SIP/2.0\r\n\r\n", 400, "Headers not allowed in Request-URI"),
        (b"OPTIONS sip:a@b.c SIP/2.0\r\nNo colon here\r\n\r\n", 400, "Malformed header line"),
        (b"OPTIONS sip:a@b.c SIP/2.0\r\nBad Name: x\r\n\r\n", 400, "Malformed header name"),
        (b"OPTIONS sip:a@b.c SIP/2.0\r\n continuation\r\n\r\n", 400, "Continuation line without header"),
        (b"OPTIONS sip:a@b.c SIP/2.0\r\nTo: a\nb\r\n\r\n", 400, "Bare CR or LF in header section"),
        (b"OPTIONS sip:a@b.c SIP/2.0\r\nl: five\r\n\r\n", 400, "Invalid Content-Length"),
        (b"OPTIONS sip:a@b.c SIP/2.0\r\nl: 1\r\nl: 2\r\n\r\nxx", 400, "Conflicting Content-Length values"),
    ],
)
def test_request_errors(data, status, reason):
    with pytest.raises(SIPParseError) as exc:
        parse_datagram(data)
    assert (exc.value.status, exc.value.reason, exc.value.drop) == (status, reason, False)
    assert isinstance(exc.value.message, Request)


@pytest.mark.parametrize(
    "data",
    [
        b"SIP/2.0 2000 OK\r\n\r\n",
        b"SIP/2.0 099 Low\r\n\r\n",
        b"SIP/2.0 abc OK\r\n\r\n",
        b"SIP/2.0\r\n\r\n",
        b"SIP/3.0 200 OK\r\n\r\n",
        b"SIP/2.0 200 OK\r\nVia: x\r\nContent-Length: 10\r\n\r\nshort",
        b"SIP/2.0 200 OK",
        b"\r\n\r\n",
        b"",
    ],
)
def test_malformed_responses_are_dropped(data):
    with pytest.raises(SIPParseError) as exc:
        parse_datagram(data)
    assert exc.value.drop and exc.value.status is None and exc.value.response() is None


def test_accessor_errors_carry_context():
    msg = request(b"OPTIONS sip:a@b.c SIP/2.0\r\nVia: garbage\r\nCSeq: x\r\n\r\n")
    with pytest.raises(SIPParseError) as exc:
        _ = msg.via
    assert exc.value.status == 400 and exc.value.message is msg and exc.value.reason == "Malformed Via header"
    response = parse_datagram(b"SIP/2.0 200 OK\r\nCSeq: x\r\n\r\n")
    with pytest.raises(SIPParseError) as exc:
        _ = response.cseq
    assert exc.value.drop and exc.value.status is None


def test_is_keepalive():
    assert is_keepalive(b"\r\n\r\n") and is_keepalive(b"\r\n")
    assert not is_keepalive(b"") and not is_keepalive(INVITE)


# --------------------------------------------------------------------------
# Building and editing messages
# --------------------------------------------------------------------------


def test_header_editing_invalidates_typed_cache():
    msg = request()
    assert msg.max_forwards == 70
    msg.set("max-forwards", str(msg.max_forwards - 1))  # type: ignore[operator]
    assert msg.max_forwards == 69 and msg.get("Max-Forwards") == "69"
    via = Via("UDP", "proxy.example.com", 5060, (("branch", "z9hG4bKproxy1"),))
    msg.add("Via", via, first=True)
    assert [v.host for v in msg.via] == ["proxy.example.com", "pc33.atlanta.example.com"]
    msg.add("Record-Route", "<sip:proxy.example.com;lr>", first=True)
    msg.add("Route", "<sip:r1.example.com;lr>, <sip:r2.example.com;lr>")
    assert msg.pop_first("Route") == "<sip:r1.example.com;lr>"
    assert [str(r.uri) for r in msg.routes] == ["sip:r2.example.com;lr"]
    assert msg.pop_first("Route") == "<sip:r2.example.com;lr>" and msg.pop_first("Route") is None
    assert msg.remove("Contact") == 1 and msg.contacts == () and "Contact" not in msg
    out = bytes(msg)
    assert out.startswith(
        b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP proxy.example.com:5060;branch=z9hG4bKproxy1\r\n"
    )
    assert parse_datagram(out).get("Record-Route") == "<sip:proxy.example.com;lr>"


def test_set_replaces_all_lines():
    msg = request(b"OPTIONS sip:a@b.c SIP/2.0\r\nX-A: 1\r\nTo: <sip:a@b.c>\r\nX-A: 2\r\n\r\n")
    msg.set("x-a", "3")
    assert msg.items() == [("X-A", "3"), ("To", "<sip:a@b.c>")]


def test_copy_is_independent():
    original = request()
    clone = original.copy()
    clone.set("Max-Forwards", "1")
    clone.uri = "sip:other@example.com"
    assert original.max_forwards == 70 and clone.max_forwards == 1
    assert bytes(original) == INVITE
    assert bytes(clone).startswith(b"INVITE sip:other@example.com SIP/2.0\r\n")
    assert parse_datagram(RINGING).copy().status == 180  # type: ignore[union-attr]


def test_construct_messages():
    headers = [("v", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("Max-Forwards", "70")]
    msg = Request("OPTIONS", "sip:a@b.c", headers, b"x")
    assert bytes(msg) == (
        b"OPTIONS sip:a@b.c SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nMax-Forwards: 70\r\n"
        b"Content-Length: 1\r\n\r\nx"
    )
    assert bytes(Response(404)) == b"SIP/2.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    for bad in (lambda: Request("BAD METHOD", "sip:a@b.c"), lambda: Response(99),
                lambda: Response(200, "a\r\nb"), lambda: msg.add("X", "a\r\nInjected: 1"),
                lambda: msg.add("Bad Name", "x")):
        with pytest.raises(ValueError):
            bad()


def test_make_response():
    data = INVITE.replace(b"CSeq: 314159 INVITE\r\n", b"CSeq: 314159 INVITE\r\nTimestamp: 54\r\n")
    msg = request(data)
    msg.add("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp", first=True)
    trying = make_response(msg, 100)
    assert trying.reason == "Trying" and trying.get("Timestamp") == "54"
    assert trying.get_all("Via") == msg.get_all("Via")
    assert trying.to_addr is not None and trying.to_addr.tag is None
    ok = make_response(msg, 200, to_tag="xyz", extra_headers=[("Contact", "<sip:bob@192.0.2.4>")], body=SDP)
    assert ok.reason == "OK" and ok.get("Timestamp") is None
    assert ok.to_addr is not None and ok.to_addr.tag == "xyz"
    assert [name for name, _ in ok.items()] == ["Via", "Via", "To", "From", "Call-ID", "CSeq", "Contact"]
    reparsed = parse_datagram(bytes(ok))
    assert isinstance(reparsed, Response) and reparsed.body == SDP
    assert reparsed.from_addr == msg.from_addr and reparsed.cseq == msg.cseq
    bye = request(bytes(ok).replace(b"SIP/2.0 200 OK", b"BYE sip:a@b.c SIP/2.0"))
    again = make_response(bye, 200, to_tag="other")
    assert again.to_addr is not None and again.to_addr.tag == "xyz"  # an existing tag is kept
    with pytest.raises(ValueError):
        make_response(msg, 200, to_tag="x\r\nInjected: 1")


def test_error_response_from_partial_request():
    data = INVITE.replace(b"INVITE sip:", b"INVITE  sip:", 1)
    with pytest.raises(SIPParseError) as exc:
        parse_datagram(data)
    response = exc.value.response(to_tag="t1")
    assert response is not None
    assert bytes(response).startswith(b"SIP/2.0 400 Malformed Request-Line\r\nVia: SIP/2.0/UDP pc33")
    assert response.to_addr is not None and response.to_addr.tag == "t1"
    with pytest.raises(SIPParseError) as ack:
        parse_datagram(data.replace(b"INVITE", b"ACK"))
    assert ack.value.response() is None  # ACK is never answered


def test_new_tag_and_branch():
    assert new_tag() != new_tag() and len(new_tag()) == 16
    branch = new_branch()
    assert branch.startswith(MAGIC_COOKIE) and len(branch) == len(MAGIC_COOKIE) + 24


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def status_of(data: bytes, **config) -> int | None:
    try:
        validate_request(request(data), **config)
    except SIPParseError as exc:
        return exc.status
    return None


def test_validate_request():
    assert status_of(INVITE) is None
    assert status_of(INVITE.replace(b"Call-ID", b"X-Call-ID")) == 400
    assert status_of(INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: 256")) == 400
    assert status_of(INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE")) == 400
    assert status_of(INVITE.replace(b"To: Bob", b"To: Bob, Carol")) == 400
    dated = b"Max-Forwards: 70\r\nDate: Sat, 13 Nov 2010 23:29:00 GMT\r\n"
    assert status_of(INVITE.replace(b"Max-Forwards: 70\r\n", dated)) is None
    assert status_of(INVITE.replace(b"INVITE sip:bob@", b"INVITE sips:bob@")) is None
    assert status_of(INVITE.replace(b"INVITE sip:", b"INVITE im:", 1)) == 416
    assert status_of(INVITE, supported_methods={"OPTIONS"}) == 501
    required = INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nRequire: 100rel, foo\r\n")
    assert status_of(required, supported_extensions={"100rel"}) == 420
    assert status_of(required, supported_extensions={"100rel", "foo"}) is None
    assert status_of(required) is None  # not checked without a supported set
    assert status_of(INVITE, accepted_content_types={"application/SDP"}) is None
    assert status_of(INVITE, accepted_content_types={"text/plain"}) == 415


def test_501_lists_allowed_methods():
    with pytest.raises(SIPParseError) as exc:
        validate_request(request(), supported_methods=("OPTIONS", "BYE"))
    assert exc.value.headers == (("Allow", "BYE, OPTIONS"),)
    response = exc.value.response()
    assert response is not None and response.get("Allow") == "BYE, OPTIONS" and response.status == 501


def test_check_max_forwards():
    assert check_max_forwards(request()) is True
    assert check_max_forwards(request(INVITE.replace(b"Max-Forwards: 70\r\n", b""))) is True
    zero = request(INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: 0"))
    with pytest.raises(SIPParseError) as exc:
        check_max_forwards(zero)
    assert exc.value.status == 483 and exc.value.reason == "Too Many Hops"


def test_validate_response():
    validate_response(parse_datagram(RINGING))  # type: ignore[arg-type]
    broken = parse_datagram(RINGING.replace(b"CSeq: 314159 INVITE\r\n", b""))
    with pytest.raises(SIPParseError) as exc:
        validate_response(broken)  # type: ignore[arg-type]
    assert exc.value.drop


# --------------------------------------------------------------------------
# Stream framing
# --------------------------------------------------------------------------


def test_stream_several_messages_in_one_read():
    events = StreamParser().feed(INVITE + RINGING + INVITE)
    assert [type(e) for e in events] == [Request, Response, Request]
    assert all(bytes(e) in (INVITE, RINGING) for e in events)  # type: ignore[arg-type]


def test_stream_byte_by_byte():
    parser = StreamParser()
    events = []
    for i in range(len(INVITE)):
        events.extend(parser.feed(INVITE[i:i + 1]))
        if i < len(INVITE) - 1:
            assert events == []
    assert len(events) == 1 and bytes(events[0]) == INVITE  # type: ignore[arg-type]
    assert parser.buffered == 0


def test_stream_keepalives():
    parser = StreamParser()
    assert [type(e) for e in parser.feed(b"\r\n\r\n")] == [Ping]
    assert [type(e) for e in parser.feed(b"\r\n")] == [Pong]
    assert [type(e) for e in parser.feed(b"\r\n")] == [Ping]  # the second half of a split ping
    assert [type(e) for e in parser.feed(b"\r")] == []
    assert [type(e) for e in parser.feed(b"\n" + RINGING)] == [Pong, Response]
    assert [type(e) for e in parser.feed(b"\r\n\r")] == []
    assert [type(e) for e in parser.feed(b"\n")] == [Ping]


def test_stream_recoverable_error_then_continues():
    bad = INVITE.replace(b"SIP/2.0\r\n", b"SIP/9.0\r\n", 1)
    events = StreamParser().feed(bad + RINGING)
    assert isinstance(events[0], SIPParseError) and not events[0].fatal and events[0].status == 505
    assert events[0].message is not None and events[0].message.body == SDP
    assert isinstance(events[1], Response)


def test_stream_error_waits_for_the_rejected_body():
    bad = INVITE.replace(b"INVITE sip", b"INVITE <sip", 1)
    parser = StreamParser()
    assert parser.feed(bad[:-5]) == []
    events = parser.feed(bad[-5:] + RINGING)
    assert isinstance(events[0], SIPParseError) and isinstance(events[1], Response)


def test_stream_missing_content_length_is_fatal():
    parser = StreamParser()
    data = INVITE.replace(b"Content-Length", b"X-Length")
    (error,) = parser.feed(RINGING[:0] + data)
    assert isinstance(error, SIPParseError) and error.fatal and error.status == 400
    assert error.response() is not None
    with pytest.raises(SIPParseError):
        parser.feed(RINGING)


def test_stream_size_guard():
    parser = StreamParser(max_message_size=200)
    (error,) = parser.feed(INVITE)
    assert isinstance(error, SIPParseError) and error.fatal and error.status == 513
    response = error.response()
    assert response is not None and response.status == 513
    unterminated = StreamParser(max_message_size=100)
    (error,) = unterminated.feed(b"OPTIONS sip:a@b.c SIP/2.0\r\n" + b"X: y\r\n" * 20)
    assert error.status == 513 and error.fatal  # type: ignore[union-attr]
    huge = StreamParser()
    (error,) = huge.feed(b"OPTIONS sip:a@b.c SIP/2.0\r\nContent-Length: 99999999\r\n\r\n")
    assert error.status == 513  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        StreamParser(max_message_size=0)


def test_stream_bare_cr_between_messages_is_fatal():
    (error,) = StreamParser().feed(b"\rX")
    assert isinstance(error, SIPParseError) and error.fatal


# --------------------------------------------------------------------------
# Property-based tests
# --------------------------------------------------------------------------

CORPUS = [path.read_bytes() for path in sorted(TORTURE.glob("*.dat"))] + [INVITE, RINGING]


def exercise(message: Request | Response) -> None:
    """Use every public accessor; only SIPParseError may come out."""
    for attribute in ("via", "top_via", "from_addr", "to_addr", "call_id", "cseq", "contacts", "routes",
                      "record_routes", "max_forwards", "expires", "content_type"):
        with contextlib.suppress(SIPParseError):
            getattr(message, attribute)
    with contextlib.suppress(SIPParseError):
        message.option_tags("Require")
    try:
        if isinstance(message, Request):
            validate_request(message, supported_methods={"INVITE"}, supported_extensions=(),
                             accepted_content_types=("application/sdp",))
            check_max_forwards(message)
        else:
            validate_response(message)
    except SIPParseError:
        pass
    data = bytes(message)
    again = parse_datagram(data)
    assert bytes(again) == data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    try:
        message = parse_datagram(data)
    except SIPParseError:
        return
    exercise(message)


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "splice"]))
        chunk = draw(st.sampled_from([b"\r\n", b" ", b";", b",", b'"', b"<", b">", b":", b"\\", b"\x00",
                                      b"\xff", b"=", b"@", b"[", b"]", b"%", b"\t", b"\r", b"\n", b"?"])
                     | st.binary(min_size=1, max_size=4))
        if action == "insert":
            data[position:position] = chunk
        elif action == "delete":
            del data[position:position + draw(st.integers(1, 10))]
        elif action == "replace":
            data[position:position + len(chunk)] = chunk
        else:
            other = draw(st.sampled_from(CORPUS))
            start = draw(st.integers(0, len(other)))
            data[position:position] = other[start:start + draw(st.integers(1, 40))]
    return bytes(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_messages(data):
    try:
        message = parse_datagram(data)
    except SIPParseError:
        return
    exercise(message)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated() | st.sampled_from([b"\r\n", b"\r\n\r\n"]), max_size=4), st.data())
def test_fuzz_stream(pieces, data):
    stream = b"".join(pieces)
    parser = StreamParser(max_message_size=4096)
    position = 0
    while position < len(stream):
        size = data.draw(st.integers(1, 64))
        try:
            events = parser.feed(stream[position:position + size])
        except SIPParseError as exc:
            assert exc.fatal
            return
        position += size
        for event in events:
            if isinstance(event, (Request, Response)):
                exercise(event)
            elif isinstance(event, SIPParseError):
                event.response()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([INVITE, RINGING, b"\r\n\r\n"]), min_size=1, max_size=5), st.data())
def test_stream_chunking_does_not_matter(pieces, data):
    stream = b"".join(pieces)
    whole = [e for e in StreamParser().feed(stream)]
    parser = StreamParser()
    chunked = []
    position = 0
    while position < len(stream):
        size = data.draw(st.integers(1, 300))
        chunked.extend(parser.feed(stream[position:position + size]))
        position += size
    messages = [bytes(e) for e in chunked if isinstance(e, (Request, Response))]
    assert messages == [bytes(e) for e in whole if isinstance(e, (Request, Response))]
    assert messages == [p for p in pieces if p != b"\r\n\r\n"]
    assert sum(isinstance(e, Ping) for e in chunked) == pieces.count(b"\r\n\r\n")


_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_labels = st.text(_ALNUM, min_size=1, max_size=8)
_hosts = st.one_of(
    st.lists(_labels, min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
)
_user_text = st.text(_ALNUM + "-_.!~*'()&=+$,;?/%", min_size=1, max_size=12)


@st.composite
def sip_uris(draw):
    user = draw(st.none() | _user_text.map(lambda s: s.replace("%", "%25")))
    password = draw(st.none() | st.text(_ALNUM + "&=+$,", max_size=6)) if user else None
    params = tuple(draw(st.lists(st.tuples(st.text(_ALNUM + "-", min_size=1, max_size=6),
                                           st.none() | st.text(_ALNUM + ":[]/", min_size=1, max_size=6)),
                                 max_size=3)))
    headers = tuple(draw(st.lists(st.tuples(_labels, st.text(_ALNUM + "%20", max_size=5).map(
        lambda s: s.replace("%", "%25"))), max_size=2)))
    return URI(scheme=draw(st.sampled_from(["sip", "sips"])), host=draw(_hosts), user=user,
               password=password, port=draw(st.none() | st.integers(0, 65535)), params=params,
               headers=headers)


@given(sip_uris())
def test_generated_uris_round_trip(uri):
    assert parse_uri(str(uri)) == uri


@given(sip_uris(), st.none() | st.text(min_size=1, max_size=20), st.lists(
    st.tuples(st.text(_ALNUM + "-.!%*_+`'~", min_size=1, max_size=8),
              st.none() | st.text(_ALNUM, min_size=1, max_size=8)), max_size=3))
def test_generated_addresses_round_trip(uri, display_name, params):
    if display_name is not None:
        display_name = display_name.replace("\r", " ").replace("\n", " ")
    address = Address(uri=uri, display_name=display_name, params=tuple(params))
    parsed = parse_address(str(address))
    assert parsed.uri == uri and parsed.params == tuple(params)
    assert parsed.display_name == display_name


_header_names = st.sampled_from(["Subject", "X-Custom", "User-Agent", "Warning", "t", "f", "v", "i"])
_header_values = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)


@given(st.lists(st.tuples(_header_names, _header_values), max_size=8), st.binary(max_size=50))
def test_generated_messages_round_trip(headers, body):
    cleaned = [(name, value.strip(" \t")) for name, value in headers]
    msg = Request("MESSAGE", "sip:a@example.com", cleaned, body)
    parsed = parse_datagram(bytes(msg))
    assert isinstance(parsed, Request)
    assert [(n, v) for n, v in parsed.items() if n != "Content-Length"] == msg.items()
    assert parsed.body == body and bytes(parsed) == bytes(msg)
