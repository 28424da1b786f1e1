"""The status survey: requests in the three callback versions (GET and POST,
auth, headers, signature), answers and their errors, and the polling service
on task.Clock with a fake HTTP client and a scripted database (pages,
cursors, rounds, failures, timeouts, stopping)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import urllib.parse

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from switchd.sms import store
from switchd.sms.survey import (
    Candidates,
    StatusSurvey,
    SurveyConnection,
    SurveyError,
    SurveyStatus,
    build_survey_request,
    load_survey_connections,
    parse_state,
    parse_survey_answer,
    record_reports,
    survey_candidates,
)

T0 = 1_800_000_000.0


def connection(**kw) -> SurveyConnection:
    base = {"connection_id": 7, "account_id": 3, "url": "https://crm.example/status", "version": "V2"}
    return SurveyConnection(**{**base, **kw})


# -- requests ---------------------------------------------------------------------------------


def test_v2_post_is_json_with_the_standard_webhooks_headers_and_a_signature():
    c = connection(password="s3cret", headers={"X-Tenant": "acme"})
    request = build_survey_request(c, ["m1", "m2"], T0, request_id="svy_1")
    assert (request.method, request.url) == ("POST", "https://crm.example/status")
    assert json.loads(request.body) == {"event_id": "svy_1", "type": "survey", "message_ids": ["m1", "m2"],
                                        "timestamp": "2027-01-15T08:00:00Z"}
    headers = request.headers
    assert headers["Content-Type"] == "application/json" and headers["X-Tenant"] == "acme"
    assert (headers["webhook-id"], headers["webhook-timestamp"]) == ("svy_1", str(int(T0)))
    mac = hmac.new(b"s3cret", f"svy_1.{int(T0)}.".encode() + request.body, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()


def test_v1_post_is_a_form_and_v4_an_envelope():
    v1 = build_survey_request(connection(version="V1"), ["m1", "m2"], T0, request_id="svy_2")
    assert v1.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert urllib.parse.parse_qs(v1.body.decode()) == {"type": ["survey"], "ids": ["m1,m2"],
                                                       "timestamp": [str(int(T0))]}
    assert "webhook-signature" not in v1.headers  # no password
    v4 = build_survey_request(connection(version="V4"), ["m1"], T0, request_id="svy_3")
    assert json.loads(v4.body) == {"type": "sms.survey", "timestamp": "2027-01-15T08:00:00Z",
                                   "data": {"message_ids": ["m1"]}}


def test_get_puts_the_fields_in_the_query_after_the_urls_own_and_signs_the_query():
    c = connection(method="GET", version="V4", url="https://crm.example/status?client=9", password="k")
    request = build_survey_request(c, ["m1", "m2"], T0, request_id="svy_4")
    assert request.body is None and request.method == "GET"
    url = urllib.parse.urlsplit(request.url)
    assert url.path == "/status"
    assert urllib.parse.parse_qs(url.query) == {"client": ["9"], "type": ["sms.survey"],
                                                "timestamp": ["2027-01-15T08:00:00Z"], "message_ids": ["m1,m2"]}
    signed = url.query.split("&", 1)[1].encode()
    mac = hmac.new(b"k", f"svy_4.{int(T0)}.".encode() + signed, hashlib.sha256).digest()
    assert request.headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()


def test_a_request_ids_are_new_each_time_and_a_survey_asks_about_something():
    first = build_survey_request(connection(), ["m1"], T0)
    second = build_survey_request(connection(), ["m1"], T0)
    assert first.headers["webhook-id"].startswith("svy_") and first.headers["webhook-id"] != second.headers["webhook-id"]
    with pytest.raises(SurveyError):
        build_survey_request(connection(), [], T0)


# -- answers ----------------------------------------------------------------------------------


def test_answers_in_every_accepted_shape_and_state_spelling():
    asked = {"m1", "m2", "m3", "m4"}
    body = {"statuses": [{"message_id": "m1", "state": "DELIVERED"},
                         {"id": "m2", "status": "undeliv", "error_code": 34},
                         {"message_id": "m3", "state": "ENROUTE"},  # nothing to record
                         {"message_id": "m9", "state": "DELIVERED"},  # not asked: ignored
                         {"message_id": "m4", "state": "Rejectd", "error_code": ""}]}
    assert parse_survey_answer(json.dumps(body).encode(), asked) == [
        SurveyStatus("m1", "DELIVERED"), SurveyStatus("m2", "UNDELIVERABLE", 34), SurveyStatus("m4", "REJECTED")]
    bare = [{"message_id": "m1", "state": "expired"}]
    assert parse_survey_answer(json.dumps(bare).encode(), asked) == [SurveyStatus("m1", "EXPIRED")]
    v4 = {"type": "sms.survey", "data": {"statuses": [{"message_id": "m2", "state": "ACCEPTD"}]}}
    assert parse_survey_answer(json.dumps(v4).encode(), asked) == [SurveyStatus("m2", "ACCEPTED")]
    # The last word about one id wins.
    twice = [{"message_id": "m1", "state": "UNKNOWN"}, {"message_id": "m1", "state": "DELIVERED"}]
    assert parse_survey_answer(json.dumps(twice).encode(), asked) == [SurveyStatus("m1", "DELIVERED")]


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"<html>", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b'{"items": []}', "no list of statuses"),
        (b"[1]", "status 0 is not an object"),
        (b'[{"state": "DELIVERED"}]', "status 0 has no message_id"),
        (b'[{"message_id": "m1", "state": "GONE"}]', "unknown state 'GONE'"),
        (b'[{"message_id": "m1"}]', "needs a state"),
        (b'[{"message_id": "m1", "state": "DELIVERED", "error_code": -1}]', "error_code must be"),
        (b'[{"message_id": "m1", "state": "DELIVERED", "error_code": "34"}]', "error_code must be"),
        (b'[{"message_id": "m1", "state": "DELIVERED", "error_code": true}]', "error_code must be"),
        (b"[" + b" " * (1 << 20) + b"]", "longer than"),
    ],
)
def test_answers_switchd_cannot_use_say_why(body, reason):
    with pytest.raises(SurveyError) as caught:
        parse_survey_answer(body, {"m1"})
    assert reason in caught.value.reason


def test_states_by_name_or_stat_word():
    assert parse_state(" delivrd ") == "DELIVERED" and parse_state("UNDELIVERABLE") == "UNDELIVERABLE"
    with pytest.raises(SurveyError):
        parse_state(3)


# -- the service ------------------------------------------------------------------------------


class Response:
    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self.body = body

    def content(self) -> Deferred:
        return succeed(self.body)


class FakeHttp:
    """Records requests; answers at once with the next scripted answer, or holds them."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.answers: list = []

    def request(self, method, url, **kwargs) -> Deferred:
        self.requests.append({"method": method, "url": url, **kwargs})
        d: Deferred = Deferred()
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                d.errback(answer)
            else:
                d.callback(answer)
        return d

    def asked(self, index: int = -1) -> list[str]:
        return json.loads(self.requests[index]["data"])["message_ids"]


class ScriptedDb:
    """``run`` answers load_survey_connections and survey_candidates from the test's script."""

    def __init__(self, connections: list[SurveyConnection]) -> None:
        self.connections = connections
        self.pages: dict[int, list[Candidates]] = {}
        self.calls: list[tuple] = []

    def run(self, fn, *args):
        if fn is load_survey_connections:
            return succeed(list(self.connections))
        assert fn is survey_candidates
        c, node, after, limit, oldest, newest = args
        self.calls.append((c.connection_id, node, after, limit, oldest, newest))
        pages = self.pages.get(c.connection_id) or [Candidates([], after, None, True)]
        return succeed(pages.pop(0))


class Recorder:
    def __init__(self) -> None:
        self.items: list = []

    def __call__(self, op, item) -> Deferred:
        assert op is record_reports
        self.items.append(item)
        outcome = store.Outcome()
        if item.status.state != "UNKNOWN":  # pretend UNKNOWN reports changed nothing
            outcome.events.append(object())
        return succeed(outcome)


def answer(*statuses: tuple[str, str]) -> Response:
    body = {"statuses": [{"message_id": m, "state": s} for m, s in statuses]}
    return Response(200, json.dumps(body).encode())


def make(connections=None, **options):
    clock = Clock()
    clock.advance(T0)
    db = ScriptedDb(connections if connections is not None else [connection()])
    http = FakeHttp()
    recorder = Recorder()
    survey = StatusSurvey(db, clock, http, recorder, node="node-1", **options)
    return survey, clock, db, http, recorder


def test_a_round_asks_about_each_page_and_records_what_the_system_knows():
    survey, clock, db, http, recorder = make(batch=2)
    db.pages[7] = [Candidates(["m1", "m2"], 11, 10, False), Candidates(["m3"], 12, 12, True)]
    http.answers = [answer(("m1", "DELIVERED"), ("m2", "UNKNOWN")), answer(("m3", "UNDELIV"))]
    survey.startService()
    clock.advance(60)
    assert [http.asked(0), http.asked(1)] == [["m1", "m2"], ["m3"]]
    assert [(i.connection_id, i.status) for i in recorder.items] == [
        (7, SurveyStatus("m1", "DELIVERED")), (7, SurveyStatus("m2", "UNKNOWN")), (7, SurveyStatus("m3", "UNDELIVERABLE"))]
    assert all(i.now == datetime.datetime.fromtimestamp(T0 + 60, datetime.UTC) for i in recorder.items)
    # Pages follow each other; the window is now - max_age .. now - min_age; batch is the limit.
    (_, node, after0, limit, oldest, newest), (_, _, after1, _, _, _) = db.calls
    assert (node, after0, after1, limit) == ("node-1", 0, 11, 2)
    now = datetime.datetime.fromtimestamp(T0 + 60, datetime.UTC)
    assert (now - oldest, now - newest) == (datetime.timedelta(hours=48), datetime.timedelta(seconds=60))
    assert survey.statuses.labels("recorded")._value.get() == 2
    assert survey.statuses.labels("unchanged")._value.get() == 1
    assert survey.requests.labels("answered")._value.get() == 2
    # The next round starts again at the oldest message under way seen in this one.
    clock.advance(60)
    assert db.calls[2][2] == 9
    survey.stopService()


def test_a_round_asks_at_most_max_requests_times_per_connection_and_goes_on_next_round():
    survey, clock, db, http, _recorder = make(batch=1, max_requests=2)
    db.pages[7] = [Candidates(["m1"], 21, 21, False), Candidates(["m2"], 22, 22, False),
                   Candidates(["m3"], 23, 23, True)]
    http.answers = [answer(), answer(), answer()]
    survey.startService()
    clock.advance(60)
    assert len(http.requests) == 2
    clock.advance(60)
    assert [call[2] for call in db.calls] == [0, 21, 22] and len(http.requests) == 3
    clock.advance(60)
    assert db.calls[-1][2] == 20  # the round that finished had started at 21
    survey.stopService()


def test_nothing_under_way_asks_nothing_and_keeps_the_cursor():
    survey, clock, db, http, _recorder = make()
    db.pages[7] = [Candidates([], 40, 38, True)]  # under way, but every part still queued
    survey.startService()
    clock.advance(60)
    clock.advance(60)
    assert http.requests == [] and [call[2] for call in db.calls] == [0, 37]
    survey.stopService()


def test_failures_are_counted_and_record_nothing():
    survey, clock, db, http, recorder = make()
    db.pages[7] = [Candidates(["m1"], 1, 1, False), Candidates(["m2"], 2, 2, False),
                   Candidates(["m3"], 3, 3, False), Candidates(["m4"], 4, 4, True)]
    http.answers = [Response(500, b""), Response(200, b"not json"), ConnectionRefusedError()]
    survey.startService()
    clock.advance(60)
    assert len(http.requests) == 4 and recorder.items == []  # the fourth waits for its answer
    clock.advance(10)  # its timeout
    assert survey.requests.labels("failed")._value.get() == 4
    survey.stopService()


def test_basic_auth_headers_and_no_redirects():
    survey, clock, db, http, _recorder = make([connection(username="crm", password="pw", version="V1", method="GET")])
    db.pages[7] = [Candidates(["m1"], 5, 5, True)]
    http.answers = [answer(("m1", "DELIVERED"))]
    survey.startService()
    clock.advance(60)
    [request] = http.requests
    assert request["auth"] == ("crm", "pw") and request["allow_redirects"] is False and "data" not in request
    assert "ids=m1" in request["url"] and "webhook-signature" in request["headers"]
    survey.stopService()


def test_rounds_do_not_overlap_and_stopping_ends_the_round_after_its_request():
    survey, clock, db, http, _recorder = make([connection(), connection(connection_id=8)])
    db.pages[7] = [Candidates(["m1"], 1, 1, True)]
    db.pages[8] = [Candidates(["n1"], 2, 2, True)]
    survey.startService()
    clock.advance(60)  # the request for connection 7 hangs
    clock.advance(5)
    survey.tick()  # a round is running: no second one
    assert len(http.requests) == 1
    stopped = survey.stopService()
    assert not stopped.called
    clock.advance(5)  # the request times out; connection 8 is not asked
    assert stopped.called and len(http.requests) == 1


def test_connections_that_left_are_forgotten():
    survey, clock, db, _http, _recorder = make([connection(), connection(connection_id=8)])
    db.pages[7] = [Candidates([], 30, 29, True)]
    db.pages[8] = [Candidates([], 31, 31, True)]
    survey.startService()
    clock.advance(60)
    db.connections = [connection(connection_id=8)]
    clock.advance(60)
    db.connections = [connection(), connection(connection_id=8)]
    clock.advance(60)
    assert [(c[0], c[2]) for c in db.calls] == [(7, 0), (8, 0), (8, 30), (7, 0), (8, 30)]
    survey.stopService()


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        StatusSurvey(None, Clock(), FakeHttp(), Recorder(), node="n", batch=0)
