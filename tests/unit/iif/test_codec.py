"""The IIF codec with plain bytes: the seed's own examples, the tolerated
spellings, and every validation error with the id the server answers to."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchd.iif.codec import (
    DEFAULT_ANN_ID1,
    DEFAULT_PORT,
    MAX_DURATION,
    MAX_LENGTH,
    IifAck,
    IifError,
    IifRequest,
    IifResponse,
    check_number,
    encode_ack,
    encode_response,
    parse_message,
    parse_request,
)

SEED_REQUEST = b"REQUEST: id=1234;user1=100;user2=101;duration=3600;"
SEED_RESPONSE = b"RESPONSE: id=1234;real_duration=180;"


def error_of(data: bytes, **kwargs) -> IifError:
    with pytest.raises(IifError) as info:
        parse_message(data, **kwargs)
    return info.value


# -- the seed's examples ------------------------------------------------------------


def test_the_seeds_request_example():
    request = parse_message(SEED_REQUEST)
    assert request == IifRequest(id="1234", user1="100", user2="101", duration=3600)
    assert request.ann_id1 == DEFAULT_ANN_ID1 == "00080002"
    assert request.ann_id2 is None and request.ann_digit2 is None
    assert parse_request(SEED_REQUEST) == request
    assert DEFAULT_PORT == 5080


def test_the_seeds_response_example_both_ways():
    assert parse_message(SEED_RESPONSE) == IifResponse("1234", 180)
    assert encode_response("1234", 180) == SEED_RESPONSE
    assert IifResponse("1234", 180).encode() == SEED_RESPONSE


def test_ack_encoding_is_exact_and_lowercase():
    assert encode_ack("1234", True) == b"ACK: id=1234;code=ok"
    assert encode_ack("1234", False) == b"ACK: id=1234;code=fail"
    assert IifAck("1234", True).encode() == b"ACK: id=1234;code=ok"


@pytest.mark.parametrize("data, ok", [
    (b"ACK: id=1234;code=ok", True),
    (b"ACK: id=1234;code=fail;", False),
    (b"ACK:id=1234;code=ok\r\n", True),
])
def test_acks_parse_with_or_without_the_final_semicolon(data, ok):
    assert parse_message(data) == IifAck("1234", ok)


def test_the_seeds_demo_parameters_lack_duration():
    error = error_of(b"REQUEST: id=1234;user1=100;user2=101")
    assert error.reason == "REQUEST without the required parameter 'duration'"
    assert (error.id, error.method, error.parameter) == ("1234", "REQUEST", "duration")


def test_every_optional_parameter():
    data = b"REQUEST: id=a-1;user1=+4930123;user2=0049301;duration=0;ann_id1=12345678;ann_id2=00000001;ann_digit2=4711;"
    request = parse_message(data)
    assert request == IifRequest("a-1", "+4930123", "0049301", 0, "12345678", "00000001", "4711")
    assert request.encode() == data


def test_encode_leaves_out_the_default_announcement_and_round_trips():
    request = IifRequest("x", "1", "2", 60, ann_digit2="9")
    assert request.encode() == b"REQUEST: id=x;user1=1;user2=2;duration=60;ann_digit2=9;"
    assert parse_message(request.encode()) == request
    explicit = parse_message(b"REQUEST: id=x;user1=1;user2=2;duration=60;ann_id1=00080002;ann_digit2=9;")
    assert explicit == request


# -- what is tolerated -------------------------------------------------------------


@pytest.mark.parametrize("data", [
    SEED_REQUEST + b"\r\n",
    SEED_REQUEST + b"\n",
    b"\r\n  " + SEED_REQUEST + b" \t\r\n",
    b"REQUEST: id=1234;user1=100;user2=101;duration=3600",
    b"REQUEST:id=1234;user1=100;user2=101;duration=3600;",
    b"REQUEST :  id=1234 ; user1 = 100;\tuser2=101 ;duration= 3600 ;",
    b"REQUEST: duration=3600;user2=101;user1=100;id=1234;",
    b"REQUEST: id=1234;user1=100;user2=101;duration=03600;",
])
def test_tolerated_spellings(data):
    assert parse_message(data) == IifRequest(id="1234", user1="100", user2="101", duration=3600)


def test_ids_may_hold_any_printable_ascii_but_the_delimiters():
    assert parse_message(b"REQUEST: id=AS-7:x/y_{1}!~;user1=1;user2=2;duration=1;").id == "AS-7:x/y_{1}!~"
    assert parse_message(b"REQUEST: id=" + b"7" * 31 + b";user1=1;user2=2;duration=1;").id == "7" * 31


def test_longest_numbers_and_durations():
    data = b"REQUEST: id=1;user1=+" + b"1" * 30 + b";user2=" + b"2" * 31 + b";duration=86400;ann_digit2=" + b"3" * 31
    request = parse_message(data)
    assert request.user1 == "+" + "1" * 30 and request.user2 == "2" * 31
    assert request.duration == MAX_DURATION == 86400
    assert parse_message(b"REQUEST: id=1;user1=1;user2=2;duration=99;", max_duration=99).duration == 99


# -- every error ---------------------------------------------------------------------

GOOD = {"id": "1234", "user1": "100", "user2": "101", "duration": "3600"}


def request_with(**changes: str | None) -> bytes:
    params = {**GOOD, **changes}
    return ("REQUEST: " + "".join(f"{k}={v};" for k, v in params.items() if v is not None)).encode()


@pytest.mark.parametrize("parameter, value, reason", [
    ("id", "", "id '' must be 1 to 31 printable ASCII characters, without ';', '=' or spaces"),
    ("id", "x" * 32, None),
    ("id", "a b", None),
    ("id", "a=b", None),
    ("id", "caf\u00e9", None),
    ("user1", "", "user1 '' must be digits with an optional leading '+', less than 32 characters"),
    ("user1", "alice", None),
    ("user1", "+", None),
    ("user1", "++49", None),
    ("user1", "49+1", None),
    ("user1", "1" * 32, None),
    ("user1", "+" + "1" * 31, None),
    ("user1", "\u0661\u0662", None),  # Arabic-Indic digits are not dialable
    ("user2", "", None),
    ("user2", "12 34", None),
    ("user2", "1" * 32, None),
    ("duration", "", "duration '' must be an integer >= 0 of at most 10 digits"),
    ("duration", "-1", None),
    ("duration", "+5", None),
    ("duration", "1.5", None),
    ("duration", "1e3", None),
    ("duration", "sixty", None),
    ("duration", "12345678901", None),
    ("duration", "86401", "duration 86401 is more than the maximum 86400"),
    ("ann_id1", "", "ann_id1 '' must be exactly 8 digits"),
    ("ann_id1", "0008000", None),
    ("ann_id1", "000800021", None),
    ("ann_id1", "0008000a", None),
    ("ann_id2", "", "ann_id2 '' must be exactly 8 digits"),
    ("ann_id2", "1234567", None),
    ("ann_id2", "abcdefgh", None),
    ("ann_digit2", "", "ann_digit2 '' must be 1 to 31 digits"),
    ("ann_digit2", "12a", None),
    ("ann_digit2", "1" * 32, None),
    ("ann_digit2", "#1", None),
])
def test_bad_values(parameter, value, reason):
    error = error_of(request_with(**{parameter: value}))
    assert error.parameter == parameter
    assert error.method == "REQUEST"
    assert error.id == (None if parameter == "id" else "1234")
    if reason is not None:
        assert error.reason == reason
    assert str(error) == error.reason


def test_duration_maximum_is_a_parameter():
    error = error_of(request_with(duration="61"), max_duration=60)
    assert (error.reason, error.id) == ("duration 61 is more than the maximum 60", "1234")


@pytest.mark.parametrize("missing", ["id", "user1", "user2", "duration"])
def test_missing_required_parameters(missing):
    error = error_of(request_with(**{missing: None}))
    assert error.reason == f"REQUEST without the required parameter {missing!r}"
    assert error.parameter == missing
    assert error.id == (None if missing == "id" else "1234")


@pytest.mark.parametrize("data, reason, ident, method", [
    (b"", "empty message", None, None),
    (b" \r\n", "empty message", None, None),
    (b"REQUEST id=1234;user1=1", "no ':' after the method", None, None),
    (b"CALL: id=1234;user1=1;user2=2;duration=3;", "unknown method 'CALL'; expected REQUEST, ACK or RESPONSE",
     "1234", None),
    (b"request: id=1234;user1=1;user2=2;duration=3;", "the method must be uppercase: REQUEST, not 'request'",
     "1234", "REQUEST"),
    (b"Request: id=1234;", "the method must be uppercase: REQUEST, not 'Request'", "1234", "REQUEST"),
    (b"REQUEST:", "no parameters after the method", None, "REQUEST"),
    (b"REQUEST: ;", "no parameters after the method", None, "REQUEST"),
    (b"REQUEST: id=1234;;user1=1;user2=2;duration=3;", "empty parameter (';' twice, or a ';' first)", "1234",
     "REQUEST"),
    (b"REQUEST: ;id=1234;user1=1;user2=2;duration=3;", "empty parameter (';' twice, or a ';' first)", "1234",
     "REQUEST"),
    (b"REQUEST: id=1234;user1=1;user2=2;duration=3;;", "empty parameter (';' twice, or a ';' first)", "1234",
     "REQUEST"),
    (b"REQUEST: id=1234;user1;user2=2;duration=3;", "parameter 'user1' has no '='", "1234", "REQUEST"),
    (b"REQUEST: id=1234;user1=1;user2=2;duration=3;=5", "unknown parameter '' in REQUEST", "1234", "REQUEST"),
    (b"REQUEST: id=1234;user1=1;user2=2;duration=3;ann_id3=12345678;",
     "unknown parameter 'ann_id3' in REQUEST", "1234", "REQUEST"),
    (b"REQUEST: id=1234;user1=1;user2=2;duration=3;code=ok;", "unknown parameter 'code' in REQUEST", "1234",
     "REQUEST"),
    (b"REQUEST: id=1234;USER1=1;user2=2;duration=3;", "parameter names are lowercase: user1, not 'USER1'", "1234",
     "REQUEST"),
    (b"REQUEST: ID=1234;user1=1;user2=2;duration=3;", "parameter names are lowercase: id, not 'ID'", None,
     "REQUEST"),
    (b"REQUEST: id=1234;user1=1;user1=1;user2=2;duration=3;", "parameter 'user1' given twice", "1234", "REQUEST"),
    (b"REQUEST: id=1234;id=1234;user1=1;user2=2;duration=3;", "parameter 'id' given twice", None, "REQUEST"),
    (b"ACK: id=1234;code=OK", "code 'OK' must be ok or fail", "1234", "ACK"),
    (b"ACK: id=1234", "ACK without the required parameter 'code'", "1234", "ACK"),
    (b"ACK: id=1234;code=ok;real_duration=1", "unknown parameter 'real_duration' in ACK", "1234", "ACK"),
    (b"RESPONSE: id=1234;real_duration=-1;", "real_duration '-1' must be an integer >= 0 of at most 10 digits",
     "1234", "RESPONSE"),
])
def test_syntax_errors(data, reason, ident, method):
    error = error_of(data)
    assert (error.reason, error.id, error.method) == (reason, ident, method)


def test_non_utf8_is_an_error_that_still_names_a_readable_id():
    error = error_of(b"REQUEST: id=1234;user1=\xff\xfe;user2=2;duration=3;")
    assert (error.reason, error.id, error.method) == ("the message is not UTF-8 text", "1234", "REQUEST")
    error = error_of(b"REQUEST: id=12\xe934;user1=1;user2=2;duration=3;")
    assert (error.reason, error.id) == ("the message is not UTF-8 text", None)


def test_utf8_outside_ascii_is_rejected_by_the_field_rules():
    error = error_of("REQUEST: id=1234;user1=١٢;user2=2;duration=3;".encode())
    assert (error.parameter, error.id) == ("user1", "1234")


def test_oversized_messages_are_refused_before_reading():
    data = request_with(ann_digit2="1") + b" " * (MAX_LENGTH - len(request_with(ann_digit2="1")))
    assert len(data) == MAX_LENGTH and parse_message(data).id == "1234"
    error = error_of(data + b" ")
    assert error.reason == f"message of {MAX_LENGTH + 1} bytes, more than {MAX_LENGTH}"
    assert error.id is None and error.method is None
    assert error_of(SEED_REQUEST, max_length=10).reason == f"message of {len(SEED_REQUEST)} bytes, more than 10"


def test_parse_request_refuses_answers():
    with pytest.raises(IifError) as info:
        parse_request(b"ACK: id=9;code=ok")
    assert (info.value.reason, info.value.id, info.value.method) == ("expected a REQUEST, got ACK", "9", "ACK")
    with pytest.raises(IifError, match="got RESPONSE"):
        parse_request(SEED_RESPONSE)


def test_the_message_classes_validate_what_they_encode():
    with pytest.raises(IifError, match="id"):
        encode_ack("a;b", True)
    with pytest.raises(IifError, match="id"):
        encode_response("", 1)
    with pytest.raises(IifError, match="real_duration -1 must be an integer >= 0"):
        encode_response("1", -1)
    with pytest.raises(IifError, match="real_duration True"):
        IifResponse("1", True)
    with pytest.raises(IifError, match="user2"):
        IifRequest("1", "100", "bob", 1)
    with pytest.raises(IifError, match="ann_id1"):
        IifRequest("1", "100", "101", 1, ann_id1=None)
    with pytest.raises(IifError, match="duration -5"):
        IifRequest("1", "100", "101", -5)
    with pytest.raises(IifError, match="default_caller"):
        check_number("default_caller", "anonymous")
    check_number("default_caller", "+15551234567")


@given(st.binary(max_size=600))
def test_any_bytes_give_a_message_or_an_iif_error(data):
    try:
        message = parse_message(data)
    except IifError as e:
        assert e.reason
        if e.id is not None:
            assert encode_ack(e.id, False).startswith(b"ACK: id=")
    else:
        assert parse_message(message.encode()) == message


@given(st.text(alphabet="REQUESTACKPONid=user12durationann_digt;: \r\n0123456789+", max_size=120))
def test_near_miss_texts_give_a_message_or_an_iif_error(text):
    try:
        message = parse_message(text.encode())
    except IifError as e:
        assert e.reason
    else:
        assert parse_message(message.encode()) == message
