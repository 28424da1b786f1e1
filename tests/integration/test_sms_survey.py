"""The status survey on both backends: which messages are asked about (the
connection's, this node's, under way, every part sent, old enough, oldest
first, in pages), what a reported status changes (the message of that
connection only, never a part still queued, never a final message, no
refund), and a whole round through the engine with a customer system that
answers over a fake HTTP client."""

from __future__ import annotations

import datetime
import json
from decimal import Decimal

import pytest
from sqlalchemy import update
from twisted.internet.defer import Deferred, succeed

from switchd.sms.engine import MessageStateChanged
from switchd.sms.survey import (
    StatusSurvey,
    SurveyItem,
    SurveyStatus,
    load_survey_connections,
    record_reports,
    survey_candidates,
)
from switchd.store import models as m

from .test_sms_engine import NOW, World, run

URL = "https://crm.example/status"


@pytest.fixture
def world(database):
    return World(database)


def survey_on(world: World, **values) -> None:
    world.db.run_blocking(lambda conn: conn.execute(
        update(m.http_connections).where(m.http_connections.c.id == world.http_connection)
        .values(status_survey=True, url=URL, **values)))


def http_messages(world: World, count: int, sent: int | None = None) -> list[str]:
    """``count`` messages through the HTTP connection; the first ``sent`` of them sent upstream."""
    ids = []
    for n in range(count):
        ids.append(world.submit(f"code {n}", kind="http").message_id)
    parts = world.parts_enqueued()
    for n, part in enumerate(parts[: count if sent is None else sent]):
        run(world.engine.part_sent(part.link_id, part, f"{0xA000 + n:X}"))
    return ids


def candidates(world: World, connection, after=0, limit=100, age=60):
    now = datetime.datetime.fromtimestamp(world.clock.seconds(), datetime.UTC)
    return world.db.run_blocking(lambda conn: survey_candidates(
        conn, connection, "node-1", after, limit, now - datetime.timedelta(hours=48),
        now - datetime.timedelta(seconds=age)))


def states(world: World) -> list[tuple[str, str]]:
    return [(r.message_id, r.status) for r in world.rows(m.sms_messages)]


def test_connections_with_the_survey_on_and_a_url(world):
    assert world.db.run_blocking(load_survey_connections) == []
    survey_on(world, transfer_method="GET", callback_version="V4", username="crm", password="pw",
              headers={"X-Tenant": "acme"})
    [c] = world.db.run_blocking(load_survey_connections)
    assert (c.connection_id, c.account_id, c.url, c.method, c.version) == (
        world.http_connection, world.account, URL, "GET", "V4")
    assert (c.username, c.password, c.headers) == ("crm", "pw", {"X-Tenant": "acme"})


def test_which_messages_are_asked_about(world):
    world.topup("10")
    survey_on(world)
    [connection] = world.db.run_blocking(load_survey_connections)
    sent = http_messages(world, 3, sent=2)  # the third is still queued in switchd
    world.submit("over smpp", kind="smpp")  # another connection's
    world.clock.advance(30)
    page = candidates(world, connection)
    assert page.message_ids == [] and page.complete  # too recent: receipts come first
    world.clock.advance(31)
    page = candidates(world, connection)
    assert page.message_ids == sent[:2] and page.complete
    rows = world.rows(m.sms_messages)
    assert page.first_pk == rows[0].id and page.last_pk == rows[2].id
    # Pages, oldest first; a final message is not asked about.
    first = candidates(world, connection, limit=1)
    assert (first.message_ids, first.complete) == ([sent[0]], False)
    second = candidates(world, connection, after=first.last_pk, limit=1)
    assert second.message_ids == [sent[1]]
    world.db.run_blocking(lambda conn: conn.execute(
        update(m.sms_messages).where(m.sms_messages.c.message_id == sent[0]).values(status="DELIVERED")))
    assert candidates(world, connection).message_ids == [sent[1]]
    # Messages of another node are that node's to ask about.
    world.db.run_blocking(lambda conn: conn.execute(update(m.sms_messages).values(node="node-2")))
    assert candidates(world, connection).message_ids == []


def test_a_message_too_recent_ends_the_page_before_it(world):
    world.topup("10")
    survey_on(world)
    [connection] = world.db.run_blocking(load_survey_connections)
    old = http_messages(world, 1)
    world.clock.advance(61)
    recent = http_messages(world, 2)  # noqa: F841 - under way, but too recent
    page = candidates(world, connection)
    rows = world.rows(m.sms_messages)
    assert page.message_ids == old and page.complete
    assert page.last_pk == rows[0].id and page.first_pk == rows[0].id


def test_a_reported_status_finishes_its_message_like_a_receipt(world):
    world.topup("10")
    survey_on(world)
    ids = http_messages(world, 3, sent=2)
    balance = world.balance()
    now = NOW + datetime.timedelta(minutes=5)
    items = [
        SurveyItem(world.http_connection, SurveyStatus(ids[0], "DELIVERED"), now),
        SurveyItem(world.http_connection, SurveyStatus(ids[1], "UNDELIVERABLE", 34), now),
        SurveyItem(world.http_connection, SurveyStatus(ids[2], "DELIVERED"), now),  # a part is still queued
        SurveyItem(world.http_connection + 1, SurveyStatus(ids[0], "REJECTED"), now),  # not that connection's
        SurveyItem(world.http_connection, SurveyStatus("no-such-id", "DELIVERED"), now),
    ]
    outcomes = run(world.engine.apply_outcome(record_reports, items[0]))
    assert [e.state for e in outcomes.events] == ["DELIVERED"]
    for item in items[1:]:
        run(world.engine.apply_outcome(record_reports, item))
    assert states(world) == [(ids[0], "DELIVERED"), (ids[1], "UNDELIVERABLE"), (ids[2], "ENROUTE")]
    parts = world.rows(m.sms_parts)
    assert [(p.state, p.error_code, p.done_at) for p in parts] == [
        ("DELIVERED", None, now), ("UNDELIVERABLE", 34, now), ("queued", None, None)]
    assert world.rows(m.sms_messages)[1].error_code == 34
    assert world.balance() == balance  # parts that left switchd stay charged
    finals = [(e.message_id, e.state, e.origin_kind) for e in world.events if isinstance(e, MessageStateChanged)
              and e.state != "ENROUTE"]
    assert finals == [(ids[0], "DELIVERED", "http"), (ids[1], "UNDELIVERABLE", "http")]
    # A final message keeps its state; a later report changes nothing.
    again = run(world.engine.apply_outcome(record_reports, SurveyItem(
        world.http_connection, SurveyStatus(ids[0], "REJECTED"), now)))
    assert again.events == [] and states(world)[0] == (ids[0], "DELIVERED")


def test_several_reports_in_one_call(world):
    world.topup("10")
    survey_on(world)
    ids = http_messages(world, 2)
    now = NOW
    outcomes = world.db.run_blocking(lambda conn: record_reports(conn, [
        SurveyItem(world.http_connection, SurveyStatus(ids[0], "EXPIRED"), now),
        SurveyItem(world.http_connection, SurveyStatus(ids[0], "DELIVERED"), now),  # the first report wins
        SurveyItem(world.http_connection, SurveyStatus(ids[1], "ACCEPTED"), now),
    ]))
    assert [[e.state for e in o.events] for o in outcomes] == [["EXPIRED"], [], ["ACCEPTED"]]
    assert states(world) == [(ids[0], "EXPIRED"), (ids[1], "ACCEPTED")]


class Response:
    def __init__(self, body: dict) -> None:
        self.code = 200
        self.body = json.dumps(body).encode()

    def content(self) -> Deferred:
        return succeed(self.body)


class CustomerSystem:
    """Knows the fate of some messages; answers a survey with it."""

    def __init__(self, known: dict[str, str]) -> None:
        self.known = known
        self.asked: list[list[str]] = []

    def request(self, method, url, **kwargs) -> Deferred:
        ids = json.loads(kwargs["data"])["message_ids"]
        self.asked.append(ids)
        return succeed(Response({"statuses": [{"message_id": i, "state": self.known[i]}
                                              for i in ids if i in self.known]}))


def test_a_round_through_the_engine(world):
    world.topup("10")
    survey_on(world, callback_version="V2")
    ids = http_messages(world, 5, sent=4)
    system = CustomerSystem({ids[0]: "DELIVRD", ids[2]: "undeliv", ids[4]: "DELIVRD"})
    survey = StatusSurvey(world.db, world.clock, system, world.engine.apply_outcome, node="node-1", batch=2)
    world.clock.advance(61)
    recorded = run(survey.round())
    assert recorded == 2
    assert system.asked == [[ids[0], ids[1]], [ids[2], ids[3]]]  # the fifth is still queued: not asked
    assert [s for _, s in states(world)] == ["DELIVERED", "ENROUTE", "UNDELIVERABLE", "ENROUTE", "ENROUTE"]
    # The next round asks again about what is still under way, from the oldest.
    run(survey.round())
    assert system.asked[2:] == [[ids[1], ids[3]]]
    assert world.rows(m.sms_messages)[0].charge == Decimal("0.05")
