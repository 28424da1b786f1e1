"""RFC 4475 SIP torture test messages against the sans-IO parser.

Each message of RFC 4475 §3 is stored byte for byte in ``torture/<name>.dat``
(the names are the RFC's; non-printable characters and repeated strings are
expanded).  Valid messages must parse and re-serialize to an equivalent
message; invalid ones must yield the response code the RFC calls for, or be
dropped when they are responses.  The pipeline is the one a UAS applies:
:func:`parse_datagram`, then :func:`validate_request` /
:func:`validate_response`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from switchd.sip.digest import DigestError, parse_credentials
from switchd.sip.message import (
    KNOWN_METHODS,
    Ping,
    Pong,
    Request,
    Response,
    SIPParseError,
    StreamParser,
    check_max_forwards,
    parse_datagram,
    validate_request,
    validate_response,
)

TORTURE = Path(__file__).with_name("torture")

# RFC 4475 §3.1.1 (valid messages).  SHA-256 of the archive members of
# RFC 4475 Appendix A, to show the fixtures are the RFC's exact octets.
VALID = {
    "wsinv": "d6f6cdee99cd0a1f8e3d9a0fdd67c877700e19ab86d8186dada06f61260e3e61",
    "intmeth": "b957a8292c1c0a9851fe94705b90f94320738f43aacde64998e401f742ef688d",
    "esc01": "be3a316d4ce5f69cad474646191e390dd4b50fc8371e44b5197fe1237781973e",
    "escnull": "263fe2ecd12a5ccbb6c67b3174e9211d11da9b600e7d69666a86d2ee42873e90",
    "esc02": "9a9c59449f00327b02071feafc8e5c2a261c98c818044167894cc17809a12199",
    "lwsdisp": "d1b36b6316c12824f6f04bf6b1fd1f021cade9b74871693b9c3474cd9fa7f4e6",
    "longreq": "185739292bc676760e5b1cca77c87705aa570240171c506ad76f8c35af0ecdaa",
    "dblreq": "a6be48426565c2a705389c4ce2ea17e57b891cb13f80490a2cb9392c797b46ef",
    "semiuri": "87bbaed6b4b354dbd3c5c7a20e66686303c63e43a0aa19b89de1ac75231611a2",
    "transports": "33b4553a3b9418121b099ff07882535151edd6a1e81898c63a916aad2cbf90bc",
    "mpart01": "92147c8e24997bac59629e1b163767697d0d6d499af87f89e325d69968bec3ba",
    "unreason": "4f939d6ebf4817eea70f011d3209e83732872ffc20ffd304b244084dc392f4d7",
    "noreason": "07e11e470a69fffa3674de805e5165d1351a9439a91045ee70c9570ea24ab4fe",
}

# Messages of §3.2, §3.3 and §3.4 that are well-formed: a parser must accept them.
WELL_FORMED = ["badbranch", "insuf", "unkscm", "novelsc", "unksm2", "bext01", "invut", "regaut01",
               "multi01", "bcast", "zeromf", "cparam01", "cparam02", "regescrt", "sdp01", "inv2543"]

# Expected outcome of the UAS pipeline: a status code, "drop", or "ok".
EXPECTED: dict[str, int | str] = {
    # §3.1.1: valid, but endpoints answer unknown methods with 501
    **{name: "ok" for name in VALID},
    "intmeth": 501,
    "esc02": 501,
    # §3.1.2 invalid messages
    "badinv01": 400,
    "clerr": 400,
    "ncl": 400,
    "scalar02": 400,
    "scalarlg": "drop",
    "quotbal": 400,
    "ltgtruri": 400,
    "lwsruri": 400,
    "lwsstart": 400,
    "trws": 400,
    "escruri": 400,
    "baddate": 400,
    "regbadct": 400,
    "badaspec": 400,
    "baddn": 400,
    "badvers": 505,
    "mismatch01": 400,
    "mismatch02": 501,
    "bigcode": "drop",
    # §3.2 transaction layer
    "badbranch": 400,
    # §3.3 application layer
    "insuf": 400,
    "unkscm": 416,
    "novelsc": 416,
    "unksm2": "ok",
    "bext01": 420,
    "invut": 415,
    "regaut01": "ok",
    "multi01": 400,
    "mcl01": 400,
    "bcast": "ok",
    "zeromf": "ok",
    "cparam01": "ok",
    "cparam02": "ok",
    "regescrt": "ok",
    "sdp01": "ok",
    # §3.4 backward compatibility
    "inv2543": "ok",
}

UAS = {
    "supported_methods": KNOWN_METHODS,
    "supported_extensions": frozenset({"100rel", "timer", "replaces"}),
    "accepted_content_types": ("application/sdp", "multipart/mixed", "text/plain"),
}


def load(name: str) -> bytes:
    return TORTURE.joinpath(f"{name}.dat").read_bytes()


def outcome(data: bytes, **config: object) -> int | str:
    """Run the UAS pipeline on one datagram: "ok", "drop" or the response status."""
    try:
        message = parse_datagram(data)
        if isinstance(message, Request):
            validate_request(message, **config)  # type: ignore[arg-type]
        else:
            validate_response(message)
    except SIPParseError as exc:
        if exc.drop:
            assert exc.status is None
            return "drop"
        assert exc.status is not None
        return exc.status
    return "ok"


def assert_equivalent(first: Request | Response, second: Request | Response) -> None:
    assert type(first) is type(second)
    if isinstance(first, Request):
        assert isinstance(second, Request)
        assert (first.method, first.uri) == (second.method, second.uri)
    else:
        assert isinstance(second, Response)
        assert (first.status, first.reason) == (second.status, second.reason)
    assert [(n, v) for n, v in first.items() if n != "Content-Length"] == [
        (n, v) for n, v in second.items() if n != "Content-Length"
    ]
    assert first.body == second.body
    for attribute in ("via", "from_addr", "to_addr", "call_id", "cseq", "contacts", "routes",
                      "max_forwards"):
        assert getattr(first, attribute) == getattr(second, attribute), attribute


def test_every_rfc4475_message_is_a_fixture():
    assert {path.stem for path in TORTURE.glob("*.dat")} == set(EXPECTED)
    assert len(EXPECTED) == 49


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_fixture_is_the_rfc_octets(name):
    assert hashlib.sha256(load(name)).hexdigest() == VALID[name]


@pytest.mark.parametrize("name", sorted(VALID) + WELL_FORMED)
def test_valid_message_round_trips(name):
    message = parse_datagram(load(name))
    again = parse_datagram(bytes(message))
    assert_equivalent(message, again)
    assert bytes(again) == bytes(message)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pipeline_outcome(name):
    assert outcome(load(name), **UAS) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if isinstance(e, int)))
def test_rejected_requests_can_be_answered(name):
    try:
        message = parse_datagram(load(name))
        validate_request(message, **UAS)  # type: ignore[arg-type]
    except SIPParseError as exc:
        response = exc.response(to_tag="srv1")
        message = exc.message
    else:
        pytest.fail("request was accepted")
    assert isinstance(message, Request)
    if name == "insuf":
        assert response is None  # no To, From or Call-ID to answer with
        return
    assert response is not None and response.status == EXPECTED[name]
    reparsed = parse_datagram(bytes(response))
    assert isinstance(reparsed, Response)
    assert reparsed.get_all("Via") == message.get_all("Via")
    assert reparsed.get("Call-ID") == message.get("Call-ID")
    assert reparsed.get("CSeq") == message.get("CSeq")


def test_wsinv():
    msg = parse_datagram(load("wsinv"))
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert msg.uri.user == "vivekg" and msg.uri.host == "chair-dnrc.example.com"
    assert msg.uri.has_param("unknownparam") and msg.uri.param("unknownparam") is None
    assert msg.to_addr is not None and msg.to_addr.display_name is None
    assert msg.to_addr.tag == "1918181833n"
    assert msg.from_addr is not None and msg.from_addr.display_name == 'J Rosenberg \\"'
    assert msg.from_addr.tag == "98asjd8"
    assert msg.max_forwards == 68
    assert msg.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert msg.cseq is not None and (msg.cseq.number, msg.cseq.method) == (9, "INVITE")
    vias = msg.via
    assert [(v.transport, v.host, v.port) for v in vias] == [
        ("UDP", "192.0.2.2", None), ("TCP", "spindle.example.com", None), ("UDP", "192.168.255.111", None)
    ]
    assert [v.branch for v in vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert [v.has_magic_cookie for v in vias] == [False, True, True]
    assert msg.get("Subject") == ""
    assert msg.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert msg.values("UnknownHeaderWithUnusualValue") == [";;,,;;,;"]
    assert msg.content_type == "application/sdp"
    (route,) = msg.routes
    assert route.uri is not None and route.uri.lr and route.uri.param("unknownwith") == "value"
    assert route.uri.has_param("unknown-no-value")
    (contact,) = msg.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.param("newparam") == "newvalue"
    assert contact.has_param("secondparam") and contact.param("secondparam") is None
    assert contact.param("q") == "0.33"
    assert len(msg.body) == 150 and msg.body.startswith(b"v=0\r\n")


def test_intmeth():
    msg = parse_datagram(load("intmeth"))
    assert isinstance(msg, Request)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert msg.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert msg.uri.host == "example.com"
    assert msg.top_via is not None and msg.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert msg.to_addr is not None and msg.to_addr.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.from_addr is not None
    assert msg.from_addr.display_name == "token1~` token2'+_ token3*%!.-"
    assert msg.from_addr.param("fromParam''~+*_!.-%") == '"работающий"'
    assert msg.from_addr.tag == "_token~1'+`*%!-."
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.cseq is not None and msg.cseq.method == msg.method
    assert msg.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    validate_request(msg)  # a proxy forwards it
    assert outcome(load("intmeth"), supported_methods=KNOWN_METHODS) == 501


def test_escaping():
    esc01 = parse_datagram(load("esc01"))
    assert isinstance(esc01, Request)
    assert esc01.uri.user_unescaped == "sips:user@example.com"
    assert esc01.to_addr is not None and esc01.to_addr.uri is not None
    assert esc01.to_addr.uri.user_unescaped == "user"
    assert esc01.from_addr is not None and esc01.from_addr.uri is not None
    assert esc01.from_addr.uri.user_unescaped == "I have spaces"
    (contact,) = esc01.contacts
    assert contact.uri is not None and contact.uri.user_unescaped == "caller"
    assert contact.uri.params == (("%6C%72", None), ("n%61me", "v%61lue%25%34%31"))
    escnull = parse_datagram(load("escnull"))
    assert escnull.to_addr is not None and escnull.to_addr.uri is not None
    assert escnull.to_addr.uri.user_unescaped == "null-\x00-null"
    assert [c.uri.user_unescaped for c in escnull.contacts if c.uri] == ["\x00", "\x00\x00"]
    esc02 = parse_datagram(load("esc02"))
    assert isinstance(esc02, Request) and esc02.method == "RE%47IST%45R"
    assert esc02.to_addr is not None and esc02.to_addr.display_name == "%Z%45"
    assert len(esc02.contacts) == 2 and esc02.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert esc02.top_via is not None and esc02.top_via.branch == "z9hG4bK209%fzsnel234"


def test_lwsdisp_semiuri_transports():
    lwsdisp = parse_datagram(load("lwsdisp"))
    assert lwsdisp.from_addr is not None and lwsdisp.from_addr.display_name == "caller"
    semiuri = parse_datagram(load("semiuri"))
    assert isinstance(semiuri, Request)
    assert semiuri.uri.user == "user;par=u%40example.net" and semiuri.uri.params == ()
    assert semiuri.values("Accept") == [
        "application/sdp", "application/pkcs7-mime", "multipart/mixed", "multipart/signed",
        "message/sip", "message/sipfrag",
    ]
    transports = parse_datagram(load("transports"))
    assert [v.transport for v in transports.via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_longreq():
    msg = parse_datagram(load("longreq"))
    assert len(msg.via) == 34
    assert msg.to_addr is not None and msg.to_addr.uri is not None and msg.to_addr.uri.port == 6000
    assert msg.from_addr is not None and msg.from_addr.tag == "12" + "982" * 50 + "424"
    assert msg.via[-1].received == "192.0.2.5"
    assert msg.get("Unknown-" + "Long" * 20 + "-Name", "").startswith("unknown-long")
    assert msg.get("unknown-" + "long" * 20 + "-name") is not None  # names are case-insensitive
    assert len(msg.body) == 150


def test_dblreq_extra_octets_are_discarded():
    msg = parse_datagram(load("dblreq"))
    assert isinstance(msg, Request) and msg.method == "REGISTER" and msg.body == b""


def test_dblreq_on_a_stream_is_two_requests():
    events = StreamParser().feed(load("dblreq"))
    kinds = [type(e).__name__ if not isinstance(e, Request) else e.method for e in events]
    assert kinds == ["REGISTER", "Pong", "INVITE", "SIPParseError"]
    assert len(events[2].body) == 150  # type: ignore[union-attr]
    # the INVITE body is 3 octets longer than its Content-Length: on a
    # stream the leftover octets are garbage and framing is lost
    error = events[3]
    assert isinstance(error, SIPParseError) and error.fatal


def test_mpart01_binary_body():
    msg = parse_datagram(load("mpart01"))
    assert len(msg.body) == 553 and b"\x30\x82\x01\x52" in msg.body
    assert msg.content_type == "multipart/mixed"
    assert msg.top_via is not None and msg.top_via.has_rport and msg.top_via.rport is None


def test_reason_phrases():
    unreason = parse_datagram(load("unreason"))
    assert isinstance(unreason, Response) and unreason.status == 200
    assert unreason.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    noreason = parse_datagram(load("noreason"))
    assert isinstance(noreason, Response) and (noreason.status, noreason.reason) == (100, "")


def test_bext01_as_proxy_lists_proxy_require():
    msg = parse_datagram(load("bext01"))
    assert isinstance(msg, Request)
    with pytest.raises(SIPParseError) as uas:
        validate_request(msg, supported_extensions=())
    assert uas.value.headers == (("Unsupported", "nothingSupportsThis, nothingSupportsThisEither"),)
    with pytest.raises(SIPParseError) as proxy:
        validate_request(msg, supported_extensions=(), proxy=True)
    assert proxy.value.status == 420
    assert proxy.value.headers == (("Unsupported", "noProxiesSupportThis, norDoAnyProxiesSupportThis"),)


def test_invut_lists_accepted_types():
    msg = parse_datagram(load("invut"))
    assert isinstance(msg, Request)
    with pytest.raises(SIPParseError) as exc:
        validate_request(msg, accepted_content_types=("application/sdp",))
    assert exc.value.status == 415 and exc.value.headers == (("Accept", "application/sdp"),)


def test_unknown_schemes_parse():
    unksm2 = parse_datagram(load("unksm2"))
    assert unksm2.to_addr is not None and unksm2.to_addr.uri is not None
    assert (unksm2.to_addr.uri.scheme, unksm2.to_addr.uri.opaque) == ("isbn", "2983792873")
    assert unksm2.from_addr is not None and unksm2.from_addr.uri is not None
    assert unksm2.from_addr.uri.scheme == "http"
    assert [str(c.uri) for c in unksm2.contacts] == ["name:John_Smith"]
    novelsc = parse_datagram(load("novelsc"))
    assert isinstance(novelsc, Request)
    assert (novelsc.uri.scheme, novelsc.uri.opaque) == ("soap.beep", "//192.0.2.103:3002")
    validate_request(novelsc, supported_schemes=("sip", "soap.beep"))


def test_regaut01_unknown_authorization_scheme():
    msg = parse_datagram(load("regaut01"))
    header = msg.get("Authorization")
    assert header == "NoOneKnowsThisScheme opaque-data=here"
    with pytest.raises(DigestError):
        parse_credentials(header)


def test_zeromf():
    msg = parse_datagram(load("zeromf"))
    assert isinstance(msg, Request) and msg.max_forwards == 0
    assert check_max_forwards(msg) is False  # OPTIONS: the proxy may answer it itself
    invite = parse_datagram(load("zeromf").replace(b"OPTIONS", b"INVITE"))
    assert isinstance(invite, Request)
    with pytest.raises(SIPParseError) as exc:
        check_max_forwards(invite)
    assert exc.value.status == 483


def test_contact_parameters():
    cparam01 = parse_datagram(load("cparam01"))
    (contact,) = cparam01.contacts
    assert contact.has_param("unknownparam") and contact.uri is not None and contact.uri.params == ()
    cparam02 = parse_datagram(load("cparam02"))
    (contact,) = cparam02.contacts
    assert contact.params == () and contact.uri is not None and contact.uri.has_param("unknownparam")
    regescrt = parse_datagram(load("regescrt"))
    (contact,) = regescrt.contacts
    assert contact.uri is not None and contact.uri.header("Route") == "<sip:sip.example.com>"


def test_bcast_and_sdp01_and_inv2543():
    bcast = parse_datagram(load("bcast"))
    assert [v.host for v in bcast.via] == ["192.0.2.198", "255.255.255.255"]
    sdp01 = parse_datagram(load("sdp01"))
    assert sdp01.values("Accept") == ["text/nobodyKnowsThis"]
    inv2543 = parse_datagram(load("inv2543"))
    assert inv2543.get("Content-Length") is None and len(inv2543.body) > 0
    assert inv2543.top_via is not None and inv2543.top_via.branch is None
    assert inv2543.max_forwards is None


def test_inv2543_on_a_stream_lacks_content_length():
    (error,) = StreamParser().feed(load("inv2543"))
    assert isinstance(error, SIPParseError) and error.fatal and error.status == 400
    assert error.reason == "Missing Content-Length"
    response = error.response()
    assert response is not None and response.get("Call-ID") == "inv2543.1717@ift.client.example.com"


@pytest.mark.parametrize("name", sorted(VALID) + [n for n in WELL_FORMED if n != "inv2543"])
def test_stream_framing_matches_datagram(name):
    data = load(name)
    expected = parse_datagram(data)
    length = int(expected.get("Content-Length") or 0)
    framed = data[: data.index(b"\r\n\r\n") + 4 + length]
    parser = StreamParser()
    events = []
    for i in range(0, len(framed), 7):
        events.extend(parser.feed(framed[i:i + 7]))
    messages = [e for e in events if not isinstance(e, (Ping, Pong))]
    assert len(messages) == 1
    assert_equivalent(expected, messages[0])  # type: ignore[arg-type]
