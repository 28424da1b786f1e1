"""Unit tests of sans-IO SIP Digest authentication."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchd.sip.digest import (
    DigestChallenge,
    DigestClient,
    DigestCredentials,
    DigestError,
    DigestResult,
    DigestServer,
    compute_ha1,
    compute_response,
    format_auth_params,
    parse_auth_header,
    parse_challenge,
    parse_credentials,
    select_challenge,
)

SECRET = b"0123456789abcdef0123456789abcdef"
NOW = 1_700_000_000.0


def server(**options) -> DigestServer:
    return DigestServer(SECRET, "sip.example.net", **options)


def answer(challenge: DigestChallenge, *, method: str = "REGISTER", uri: str = "sip:sip.example.net",
           password: str = "s3cret", client: DigestClient | None = None) -> DigestCredentials:
    client = client or DigestClient("alice", password)
    return client.authorize(challenge, method=method, uri=uri)


# --------------------------------------------------------------------------
# Published test vectors
# --------------------------------------------------------------------------


def test_rfc2617_example():
    ha1 = compute_ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
    response = compute_response("MD5", ha1, method="GET", uri="/dir/index.html",
                                nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", qop="auth",
                                nc="00000001", cnonce="0a4f113b")
    assert response == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_examples(algorithm, expected):
    ha1 = compute_ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
    response = compute_response(algorithm, ha1, method="GET", uri="/dir/index.html",
                                nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", qop="auth",
                                nc="00000001", cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
    assert response == expected


def test_rfc2069_style_without_qop():
    # RFC 2617 §3.2.2.1: request-digest = KD(H(A1), nonce ":" H(A2)) when qop is absent
    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    nonce = "dcd98b7102dd2f0e8b11d0f600bfb0c093"
    ha1 = compute_ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
    assert ha1 == md5("Mufasa:testrealm@host.com:Circle Of Life")
    response = compute_response("MD5", ha1, method="GET", uri="/dir/index.html", nonce=nonce)
    assert response == md5(f"{ha1}:{nonce}:{md5('GET:/dir/index.html')}")


def test_sess_and_auth_int_formulas():
    def sha(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    ha1 = compute_ha1("SHA-256", "u", "r", "p")
    response = compute_response("SHA-256-sess", ha1, method="MESSAGE", uri="sip:x", nonce="n", qop="auth-int",
                                nc="00000001", cnonce="c", body=b"body")
    session = sha(f"{ha1}:n:c")
    ha2 = sha(f"MESSAGE:sip:x:{hashlib.sha256(b'body').hexdigest()}")
    assert response == sha(f"{session}:n:00000001:c:auth-int:{ha2}")


# --------------------------------------------------------------------------
# Header syntax
# --------------------------------------------------------------------------


def test_parse_auth_header_quoting_and_commas():
    scheme, params = parse_auth_header(
        'Digest realm="a, \\"b\\"", qop="auth,auth-int" ,nonce=abc,  algorithm = SHA-256,opaque=""'
    )
    assert scheme == "Digest"
    assert params == {"realm": 'a, "b"', "qop": "auth,auth-int", "nonce": "abc", "algorithm": "SHA-256",
                      "opaque": ""}


@pytest.mark.parametrize(
    "value",
    ["", "   ", "Digest realm", "Digest realm=\"unterminated", "Digest a=1 b=2", "Digest a=1, a=2",
     "Digest =x", "Digest a=1,, ,b"],
)
def test_parse_auth_header_errors(value):
    with pytest.raises(DigestError):
        parse_auth_header(value)


def test_challenge_round_trip():
    challenge = DigestChallenge(realm='my "realm"', nonce="n1", algorithm="SHA-256", qop=("auth", "auth-int"),
                                opaque="o1", stale=True, domain="sip:example.net")
    text = str(challenge)
    assert text.startswith('Digest realm="my \\"realm\\"", domain="sip:example.net", nonce="n1", opaque="o1"')
    assert 'qop="auth,auth-int"' in text and "stale=true" in text and "algorithm=SHA-256" in text
    assert parse_challenge(text) == challenge


def test_challenge_defaults_and_errors():
    challenge = parse_challenge('Digest realm="r", nonce="n"')
    assert challenge.algorithm == "MD5" and challenge.qop == () and not challenge.stale
    for bad in ('Basic realm="r"', 'Digest nonce="n"', 'Digest realm="r", nonce="n", algorithm=SHA-1'):
        with pytest.raises(DigestError):
            parse_challenge(bad)


def test_select_challenge_prefers_sha256():
    headers = [
        'Digest realm="r", nonce="n", algorithm=MD5, qop="auth"',
        'Digest realm="r", nonce="n", algorithm=SHA-512-256, qop="auth"',
        'Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth"',
        "Basic realm=r",
    ]
    assert select_challenge(headers).algorithm == "SHA-256"
    assert select_challenge(headers[:1]).algorithm == "MD5"
    with pytest.raises(DigestError):
        select_challenge(headers[1:2] + headers[3:])


def test_credentials_round_trip():
    credentials = DigestCredentials(username="al\\ice", realm="r", nonce="n", uri="sip:r", response="ab",
                                    algorithm="MD5-sess", qop="auth", nc="0000000a", cnonce="c", opaque="o")
    text = str(credentials)
    assert "qop=auth" in text and "nc=0000000a" in text and 'username="al\\\\ice"' in text
    assert parse_credentials(text) == credentials


@pytest.mark.parametrize(
    "value",
    [
        "NoOneKnowsThisScheme opaque-data=here",
        'Digest realm="r", nonce="n", uri="u", response="x"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, nc=1, cnonce="c"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth-conf, '
        'nc=00000001, cnonce="c"',
    ],
)
def test_parse_credentials_errors(value):
    with pytest.raises(DigestError):
        parse_credentials(value)


def test_format_rejects_header_injection():
    with pytest.raises(ValueError):
        format_auth_params("Digest", [("realm", "a\r\nX: y")])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_header_parsers_raise_only_digest_error(value):
    for parser in (parse_auth_header, parse_challenge, parse_credentials):
        with contextlib.suppress(DigestError):
            parser(value)
    try:
        server().verify(value, method="INVITE", now=NOW, password="x")
    except DigestError:
        pytest.fail("verify must not raise for malformed credentials")


# --------------------------------------------------------------------------
# Server and client together
# --------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256", "MD5-sess", "SHA-256-sess"])
def test_client_server_round_trip(algorithm):
    srv = server(algorithms=(algorithm,))
    challenge = parse_challenge(str(srv.challenge(NOW)))
    assert challenge.algorithm == algorithm and challenge.opaque == srv.opaque_for(challenge.nonce)
    credentials = answer(challenge)
    header = str(credentials)
    assert srv.verify(header, method="REGISTER", now=NOW + 1, password="s3cret") is DigestResult.OK


def test_verify_with_precomputed_ha1():
    srv = server()
    challenge = srv.challenge(NOW, algorithm="MD5")
    credentials = answer(challenge)
    stored = {
        "MD5": compute_ha1("MD5", "alice", "sip.example.net", "s3cret"),
        "SHA-256": compute_ha1("SHA-256", "alice", "sip.example.net", "s3cret"),
    }
    assert srv.verify(credentials, method="REGISTER", now=NOW, ha1=stored) is DigestResult.OK
    assert srv.verify(answer(srv.challenge(NOW, algorithm="MD5")), method="REGISTER", now=NOW,
                      ha1={"SHA-256": stored["SHA-256"]}) is DigestResult.FAILED
    with pytest.raises(ValueError):
        srv.verify(credentials, method="REGISTER", now=NOW)
    with pytest.raises(ValueError):
        srv.verify(credentials, method="REGISTER", now=NOW, password="x", ha1=stored)


def test_wrong_password_method_realm_or_uri_fail():
    srv = server()
    challenge = srv.challenge(NOW)
    assert srv.verify(answer(challenge, password="nope"), method="REGISTER", now=NOW,
                      password="s3cret") is DigestResult.FAILED
    assert srv.verify(answer(challenge), method="INVITE", now=NOW, password="s3cret") is DigestResult.FAILED
    other_realm = DigestServer(SECRET, "other.example.net")
    assert other_realm.verify(answer(challenge), method="REGISTER", now=NOW,
                              password="s3cret") is DigestResult.FAILED
    assert srv.verify(answer(challenge), method="REGISTER", now=NOW, password="s3cret",
                      request_uri="sip:elsewhere.example.net") is DigestResult.FAILED
    assert srv.verify(answer(challenge), method="REGISTER", now=NOW, password="s3cret",
                      request_uri="sip:sip.example.net") is DigestResult.OK


def test_forged_or_foreign_nonce_fails():
    srv = server()
    challenge = srv.challenge(NOW)
    foreign = DigestServer(b"another secret of 32 bytes......", "sip.example.net")
    assert foreign.verify(answer(challenge), method="REGISTER", now=NOW,
                          password="s3cret") is DigestResult.FAILED
    for nonce in ("", "!!!", "AAAA", challenge.nonce[:-2] + "AA"):
        forged = DigestChallenge(realm=challenge.realm, nonce=nonce, qop=("auth",))
        assert srv.verify(answer(forged), method="REGISTER", now=NOW,
                          password="s3cret") is DigestResult.FAILED
    assert srv.nonce_issued_at(challenge.nonce) == pytest.approx(NOW)


def test_tampered_opaque_fails():
    srv = server()
    challenge = srv.challenge(NOW)
    tampered = DigestChallenge(realm=challenge.realm, nonce=challenge.nonce, qop=challenge.qop,
                               algorithm=challenge.algorithm, opaque="0000000000000000")
    assert srv.verify(answer(tampered), method="REGISTER", now=NOW, password="s3cret") is DigestResult.FAILED


def test_expired_nonce_is_stale_only_with_the_right_password():
    srv = server(lifetime=30)
    challenge = srv.challenge(NOW)
    assert srv.verify(answer(challenge), method="REGISTER", now=NOW + 31,
                      password="s3cret") is DigestResult.STALE
    assert srv.verify(answer(challenge, password="bad"), method="REGISTER", now=NOW + 31,
                      password="s3cret") is DigestResult.FAILED
    assert srv.verify(answer(srv.challenge(NOW + 60)), method="REGISTER", now=NOW,
                      password="s3cret") is DigestResult.STALE  # issued in the future
    assert "stale=true" in str(srv.challenge(NOW + 31, stale=True))


def test_nonce_count_replay_is_rejected():
    srv = server()
    client = DigestClient("alice", "s3cret")
    challenge = srv.challenge(NOW)
    first = answer(challenge, client=client)
    second = answer(challenge, client=client)
    assert (first.nc, second.nc) == ("00000001", "00000002")
    assert first.cnonce != second.cnonce
    assert srv.verify(second, method="REGISTER", now=NOW, password="s3cret") is DigestResult.STALE
    assert srv.verify(first, method="REGISTER", now=NOW, password="s3cret") is DigestResult.OK
    assert srv.verify(first, method="REGISTER", now=NOW, password="s3cret") is DigestResult.REPLAY
    assert srv.verify(second, method="REGISTER", now=NOW, password="s3cret") is DigestResult.OK
    assert srv.verify(second, method="REGISTER", now=NOW, password="s3cret") is DigestResult.REPLAY


def test_out_of_order_counts_within_the_window_are_accepted_once():
    srv = server()
    client = DigestClient("alice", "s3cret")
    challenge = srv.challenge(NOW)
    answers = [answer(challenge, client=client) for _ in range(5)]
    for index in (0, 4, 2, 1, 3):
        assert srv.verify(answers[index], method="REGISTER", now=NOW, password="s3cret") is DigestResult.OK
    for credentials in answers:
        assert srv.verify(credentials, method="REGISTER", now=NOW, password="s3cret") is DigestResult.REPLAY
    late = [answer(challenge, client=client) for _ in range(70)]
    assert srv.verify(late[-1], method="REGISTER", now=NOW, password="s3cret") is DigestResult.OK
    assert srv.verify(late[0], method="REGISTER", now=NOW, password="s3cret") is DigestResult.REPLAY


def test_replay_guard_is_bounded():
    srv = server(max_tracked_nonces=2)
    challenges = [srv.challenge(NOW) for _ in range(3)]
    clients = [DigestClient("alice", "s3cret") for _ in challenges]
    for challenge, client in zip(challenges, clients, strict=True):
        assert srv.verify(answer(challenge, client=client), method="REGISTER", now=NOW,
                          password="s3cret") is DigestResult.OK
    # the oldest nonce was evicted: it may only come back with nc=1, which forces a new nonce
    assert srv.verify(answer(challenges[0], client=clients[0]), method="REGISTER", now=NOW,
                      password="s3cret") is DigestResult.STALE


def test_expired_entries_are_forgotten():
    srv = server(lifetime=10)
    challenge = srv.challenge(NOW)
    assert srv.verify(answer(challenge), method="REGISTER", now=NOW, password="s3cret") is DigestResult.OK
    srv.verify(answer(srv.challenge(NOW + 20)), method="REGISTER", now=NOW + 20, password="s3cret")
    assert challenge.nonce not in srv._uses


def test_qop_policy():
    srv = server()
    legacy = DigestChallenge(realm="sip.example.net", nonce=srv.make_nonce(NOW), qop=())
    assert srv.verify(answer(legacy), method="REGISTER", now=NOW, password="s3cret") is DigestResult.FAILED
    lenient = server(allow_no_qop=True)
    credentials = answer(legacy)
    assert credentials.qop is None and credentials.nc is None and credentials.cnonce is None
    assert lenient.verify(credentials, method="REGISTER", now=NOW, password="s3cret") is DigestResult.OK


def test_auth_int_covers_the_body():
    srv = server(qop=("auth-int",))
    challenge = srv.challenge(NOW)
    credentials = DigestClient("alice", "s3cret").authorize(challenge, method="MESSAGE", uri="sip:b@x",
                                                            body=b"hello")
    assert credentials.qop == "auth-int"
    assert srv.verify(credentials, method="MESSAGE", now=NOW, password="s3cret",
                      body=b"hello") is DigestResult.OK
    assert srv.verify(credentials, method="MESSAGE", now=NOW, password="s3cret",
                      body=b"hellO") is DigestResult.FAILED


def test_challenges_for_every_algorithm_share_a_nonce():
    srv = server(algorithms=("SHA-256", "MD5"))
    challenges = srv.challenges(NOW)
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    assert len({c.nonce for c in challenges}) == 1
    chosen = select_challenge(str(c) for c in challenges)
    assert srv.verify(answer(chosen), method="REGISTER", now=NOW, password="s3cret") is DigestResult.OK


def test_client_rejects_unsupported_qop():
    with pytest.raises(DigestError):
        DigestClient("a", "b").authorize('Digest realm="r", nonce="n", qop="auth-conf"',
                                         method="X", uri="sip:x")


def test_client_forgets_old_nonces():
    client = DigestClient("a", "b", max_nonces=2)
    for nonce in ("n1", "n2", "n3"):
        client.authorize(DigestChallenge(realm="r", nonce=nonce), method="X", uri="sip:x")
    assert client.authorize(DigestChallenge(realm="r", nonce="n3"), method="X", uri="sip:x").nc == "00000002"
    assert client.authorize(DigestChallenge(realm="r", nonce="n1"), method="X", uri="sip:x").nc == "00000001"


def test_server_configuration_errors():
    with pytest.raises(ValueError):
        DigestServer(b"short", "r")
    with pytest.raises(ValueError):
        server(lifetime=0)
    with pytest.raises(DigestError):
        server(algorithms=("SHA-1",))
    with pytest.raises(ValueError):
        server(qop=("auth-conf",))
    with pytest.raises(ValueError):
        server(algorithms=("MD5",)).challenge(NOW, algorithm="SHA-256")
