"""Status callbacks: payload versions, methods, auth, headers, signatures,
retries with backoff until the age limit and timeouts on task.Clock,
concurrency, records of callbacks done written in batches, recovery of those
not done, on a fake HTTP client and a fake database; settings read from the
real database."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import urllib.parse

from sqlalchemy import insert
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from switchd.api.auth import new_secret_hash
from switchd.api.webhooks import (
    SENT_BITS,
    Callback,
    DueCallback,
    HttpSettings,
    StatusCallbacks,
    build_request,
    due_callbacks,
    event_id,
    load_settings,
    record_sent,
    sign,
)
from switchd.core.events import EventBus
from switchd.sms.engine import MessageReceived, MessageStateChanged
from switchd.store import models as m

NOW = datetime.datetime(2026, 11, 21, 12, 0, tzinfo=datetime.UTC)


class Response:
    def __init__(self, code: int) -> None:
        self.code = code

    def content(self) -> Deferred:
        return succeed(b"ok")


class FakeHttp:
    """Records requests; each answers when the test says."""

    def __init__(self) -> None:
        self.requests: list[dict] = []

    def request(self, method, url, **kwargs) -> Deferred:
        d: Deferred = Deferred()
        self.requests.append({"method": method, "url": url, "d": d, **kwargs})
        return d

    def answer(self, index: int, code: int = 200) -> None:
        self.requests[index]["d"].callback(Response(code))


class FakeDb:
    """Settings by connection; records written (one list per statement); due callbacks to recover."""

    def __init__(self, settings: dict[int, HttpSettings]) -> None:
        self.settings = settings
        self.loads = 0
        self.records: list[list[tuple[str, int]]] = []
        self.failing = False  # record_sent fails
        self.due: list[DueCallback] = []
        self.queries: list[tuple] = []

    def run(self, fn, *args):
        if fn is record_sent:
            if self.failing:
                return fail(RuntimeError("database down"))
            self.records.append(list(args[0]))
            return succeed(None)
        if fn is due_callbacks:
            node, after, since, before, limit = args
            self.queries.append(args)
            done = self.recorded()
            due = [d for d in self.due if d.pk > after and not done.get(d.event.message_id, 0) & SENT_BITS[d.kind]]
            return succeed(due[:limit])
        assert fn is load_settings
        self.loads += 1
        return succeed(self.settings.get(args[0]))

    def recorded(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for batch in self.records:
            for message_id, bits in batch:
                out[message_id] = out.get(message_id, 0) | bits
        return out


def settings(**kw) -> HttpSettings:
    base = {"connection_id": 5, "url": "https://crm.example/cb", "start": True, "end": True, "version": "V2"}
    return HttpSettings(**{**base, **kw})


def changed(state: str = "DELIVERED", kind: str = "http", connection_id: int = 5, at: float = 1_800_000_000.0,
            **kw) -> MessageStateChanged:
    base = {"at": at, "message_id": "m0001", "account_id": 2, "service_id": 3, "origin_kind": kind,
                "connection_id": connection_id, "state": state, "parts": 2, "error_code": None, "source": "ACME",
                "destination": "447700900001", "client_reference": "order-42"}
    return MessageStateChanged(**{**base, **kw})


class World:
    def __init__(self, **kw) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_100)
        self.bus = EventBus()
        self.http = FakeHttp()
        self.db = FakeDb({5: settings(**kw)})
        self.callbacks = StatusCallbacks(self.db, self.clock, self.bus, self.http, node="node-1", timeout=10,
                                         max_in_flight=2)
        self.callbacks.startService()


def test_v2_post_json_with_basic_auth_headers_and_signature():
    world = World(username="u", password="pw", headers={"X-Token": "abc"})
    world.bus.publish(changed("ENROUTE"))
    world.bus.publish(changed("DELIVERED"))
    world.bus.publish(changed("DELIVERED", kind="smpp"))  # not an HTTP message: no callback
    assert len(world.http.requests) == 1  # the end waits for the start's answer
    world.http.answer(0)
    start, end = world.http.requests
    assert start["method"] == "POST" and start["url"] == "https://crm.example/cb"
    assert start["auth"] == ("u", "pw") and start["allow_redirects"] is False
    headers = end["headers"]
    assert headers["X-Token"] == "abc" and headers["Content-Type"] == "application/json"
    body = json.loads(end["data"])
    assert body == {"event_id": event_id("m0001", "DELIVERED"), "type": "end", "message_id": "m0001",
                    "state": "DELIVERED", "final": True, "parts": 2, "error_code": None, "to": "447700900001",
                    "client_reference": "order-42", "timestamp": "2027-01-15T08:00:00Z"}
    assert json.loads(start["data"])["type"] == "start" and json.loads(start["data"])["final"] is False
    # Standard Webhooks: id, timestamp of the attempt, HMAC-SHA256 over "id.timestamp.body".
    assert headers["webhook-id"] == body["event_id"] and headers["webhook-timestamp"] == "1800000100"
    mac = hmac.new(b"pw", f"{body['event_id']}.1800000100.".encode() + end["data"], hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()


def test_start_and_end_follow_the_switches():
    world = World(start=False)
    world.bus.publish(changed("ENROUTE"))
    world.bus.publish(changed("UNDELIVERABLE", error_code=34))
    [end] = world.http.requests
    assert json.loads(end["data"])["error_code"] == 34
    world = World(end=False, url=None)
    world.bus.publish(changed("ENROUTE"))
    assert world.http.requests == []


def test_v1_get_and_post_and_pass_a_number():
    world = World(version="V1", method="GET", url="https://crm.example/cb?token=1", pass_a_number=True)
    world.bus.publish(changed("DELIVERED"))
    [get] = world.http.requests
    url = urllib.parse.urlsplit(get["url"])
    query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
    assert query == {"token": "1", "id": "m0001", "type": "end", "status": "DELIVERED", "error_code": "",
                     "parts": "2", "to": "447700900001", "from": "ACME", "client_reference": "order-42",
                     "timestamp": "1800000000"}
    assert "data" not in get and "webhook-signature" not in get["headers"] and "auth" not in get
    world = World(version="V1")
    world.bus.publish(changed("DELIVERED", client_reference=None))
    [post] = world.http.requests
    assert post["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    form = dict(urllib.parse.parse_qsl(post["data"].decode(), keep_blank_values=True))
    assert form["client_reference"] == "" and "from" not in form


def test_v4_envelope_and_get_flattening():
    callback = Callback(settings(version="V4", pass_a_number=True, password="k"), "end", changed())
    request = build_request(callback, 1_800_000_200)
    body = json.loads(request.body)
    assert body["type"] == "sms.end" and body["timestamp"] == "2027-01-15T08:00:00Z"
    assert body["data"]["from"] == "ACME" and body["data"]["final"] is True
    assert request.headers["webhook-signature"] == sign("k", callback.id, 1_800_000_200, request.body)
    get = build_request(Callback(settings(version="V4", method="GET"), "start", changed("ENROUTE")), 0)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(get.url).query))
    assert query["type"] == "sms.start" and query["final"] == "false" and "error_code" not in query


def test_retries_with_backoff_and_a_stable_event_id():
    world = World(repeat=True)
    world.bus.publish(changed())
    world.http.answer(0, 500)
    assert len(world.http.requests) == 1
    world.clock.advance(1)
    world.http.answer(1, 503)
    world.clock.advance(1.9)
    assert len(world.http.requests) == 2
    world.clock.advance(0.1)  # 2 s after the second failure
    world.http.answer(2, 204)
    ids = {r["headers"]["webhook-id"] for r in world.http.requests}
    stamps = [r["headers"]["webhook-timestamp"] for r in world.http.requests]
    assert len(ids) == 1 and stamps == ["1800000100", "1800000101", "1800000103"]
    assert world.callbacks.pending == 0 and world.callbacks._retries == {}


def test_retries_go_on_past_ten_attempts_until_the_age_limit_and_without_repeat_once():
    world = World(repeat=True)
    world.callbacks.callback_max_age = 3600  # the event was at 1_800_000_000: 100 s before the first try
    world.bus.publish(changed())
    delays = []
    while world.callbacks.pending:
        world.http.answer(len(world.http.requests) - 1, 500)
        if not world.callbacks._retries:
            break
        [(call, _)] = world.callbacks._retries.values()
        delays.append(call.getTime() - world.clock.seconds())
        world.clock.advance(delays[-1])
    assert delays[:10] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300] and set(delays[9:]) == {300}
    assert len(world.http.requests) > 10
    # The last try is the last one before the event is an hour old; then given up: recorded.
    assert world.clock.seconds() + 300 > 1_800_000_000 + 3600 >= world.clock.seconds()
    assert world.callbacks.pending == 0 and world.db.recorded() == {}
    world.clock.advance(1)
    assert world.db.recorded() == {"m0001": 2}
    assert len({r["headers"]["webhook-id"] for r in world.http.requests}) == 1
    once = World()
    once.bus.publish(changed())
    once.http.answer(0, 500)
    once.clock.advance(3600)
    assert len(once.http.requests) == 1 and once.db.recorded() == {"m0001": 2}  # given up: done


def test_timeout_counts_as_a_failure():
    world = World(repeat=True)
    world.bus.publish(changed())
    world.clock.advance(10)  # no answer: cancelled
    assert world.http.requests[0]["d"].called
    world.clock.advance(1)
    assert len(world.http.requests) == 2


def test_at_most_max_in_flight_and_settings_are_cached():
    world = World()
    for n in range(3):
        world.bus.publish(changed(message_id=f"m{n}"))
    assert len(world.http.requests) == 2 and world.callbacks.pending == 3
    world.http.answer(0)
    assert len(world.http.requests) == 3
    assert world.db.loads == 1
    world.clock.advance(10)
    world.bus.publish(changed(message_id="m9"))
    assert world.db.loads == 2


def test_stop_cancels_retries():
    world = World(repeat=True)
    world.bus.publish(changed())
    world.http.answer(0, 500)
    world.callbacks.stopService()
    assert world.clock.getDelayedCalls() == []
    world.bus.publish(changed(message_id="m2"))
    assert len(world.http.requests) == 1


def test_load_settings_from_the_database(database):
    def provision(conn):
        customer = conn.execute(insert(m.customers).values(name="c", created_at=NOW, updated_at=NOW)
                                .returning(m.customers.c.id)).scalar_one()
        account = conn.execute(insert(m.accounts).values(customer_id=customer, currency="EUR", created_at=NOW,
                                                         updated_at=NOW).returning(m.accounts.c.id)).scalar_one()
        plan = conn.execute(insert(m.tariff_plans).values(name="p", currency="EUR", created_at=NOW,
                                                          updated_at=NOW).returning(m.tariff_plans.c.id)).scalar_one()
        service = conn.execute(insert(m.services).values(account_id=account, type="api", tariff_plan_id=plan,
                                                         created_at=NOW, updated_at=NOW)
                               .returning(m.services.c.id)).scalar_one()
        salt, digest = new_secret_hash("x")
        key = conn.execute(insert(m.api_keys).values(prefix="abcdefabcdef", salt=salt, secret_hash=digest,
                                                     customer_id=customer, created_at=NOW)
                           .returning(m.api_keys.c.id)).scalar_one()
        return conn.execute(insert(m.http_connections).values(
            service_id=service, api_key_id=key, callback_version="V4", start_callback=True, transfer_method="GET",
            url="https://crm.example/cb", username="u", password="p", callback_repeat=True,
            headers={"X-A": "1"}, created_at=NOW, updated_at=NOW).returning(m.http_connections.c.id)).scalar_one()

    connection_id = database.run_blocking(provision)
    loaded = database.run_blocking(load_settings, connection_id)
    assert loaded == HttpSettings(connection_id=connection_id, url="https://crm.example/cb", method="GET",
                                  version="V4", start=True, end=False, username="u", password="p", repeat=True,
                                  pass_a_number=False, headers={"X-A": "1"})
    assert database.run_blocking(load_settings, connection_id + 1) is None


def mo(**kw) -> MessageReceived:
    base = {"at": 1_800_000_000.0, "message_id": "mo-1", "account_id": 2, "service_id": 3, "origin_kind": "http",
            "connection_id": 5, "source": "447700900001", "destination": "447700900999", "content": b"Hi",
            "data_coding": 0, "esm_class": 0, "text": "Hi"}
    return MessageReceived(**{**base, **kw})


def test_mo_for_http_customers_goes_to_the_callback_url():
    world = World(start=False, end=False)
    world.bus.publish(mo())
    world.bus.publish(mo(origin_kind="smpp"))  # an ESME's: the outbox, not a callback
    [request] = world.http.requests
    body = json.loads(request["data"])
    assert body == {"event_id": event_id("mo-1", "MO"), "type": "mo", "message_id": "mo-1",
                    "from": "447700900001", "to": "447700900999", "text": "Hi", "data_coding": 0,
                    "timestamp": "2027-01-15T08:00:00Z"}
    v1 = build_request(Callback(settings(version="V1"), "mo", mo()), 0)
    assert dict(urllib.parse.parse_qsl(v1.body.decode())) == {
        "id": "mo-1", "type": "mo", "from": "447700900001", "to": "447700900999", "text": "Hi",
        "timestamp": "1800000000"}
    v4 = json.loads(build_request(Callback(settings(version="V4"), "mo", mo()), 0).body)
    assert v4["type"] == "sms.mo" and v4["data"]["text"] == "Hi"
    world = World(url=None)
    world.bus.publish(mo())
    assert world.http.requests == []


class BreakingClient:
    """Fails the first ``breaks`` requests with ``error``, then answers 200."""

    def __init__(self, breaks: int, error: Exception) -> None:
        self.breaks = breaks
        self.error = error
        self.calls: list[tuple] = []

    def request(self, method, url, **kwargs) -> Deferred:
        self.calls.append((method, url, kwargs))
        if len(self.calls) <= self.breaks:
            return fail(self.error)
        return succeed(Response(200))


def test_a_broken_pooled_connection_is_tried_once_more_at_once():
    from twisted.web.client import ResponseNeverReceived

    from switchd.api.webhooks import FreshConnectionRetry

    inner = BreakingClient(1, ResponseNeverReceived([]))
    results = []
    FreshConnectionRetry(inner).request("POST", "http://h/x", data=b"1").addCallback(results.append)
    assert [r.code for r in results] == [200]
    assert inner.calls == [("POST", "http://h/x", {"data": b"1"})] * 2


def test_only_once_and_only_for_a_broken_connection():
    from twisted.internet.error import ConnectionRefusedError
    from twisted.web.client import RequestTransmissionFailed

    from switchd.api.webhooks import FreshConnectionRetry

    errors = []
    twice = BreakingClient(2, RequestTransmissionFailed([]))
    FreshConnectionRetry(twice).request("POST", "http://h/x").addErrback(errors.append)
    assert len(twice.calls) == 2 and errors[0].check(RequestTransmissionFailed)
    refused = BreakingClient(1, ConnectionRefusedError())
    FreshConnectionRetry(refused).request("POST", "http://h/x").addErrback(errors.append)
    assert len(refused.calls) == 1 and errors[1].check(ConnectionRefusedError)


class SlowDb(FakeDb):
    """Settings reads that finish when the test says, in any order."""

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.reads: list[Deferred] = []

    def run(self, fn, *args):
        if fn is not load_settings:
            return super().run(fn, *args)
        d: Deferred = Deferred()
        self.reads.append((d, self.settings.get(args[0])))
        return d


def test_one_message_in_order_across_slow_settings_and_retries():
    world = World(repeat=True)
    world.callbacks.db = slow = SlowDb({5: settings(repeat=True)})
    world.callbacks.settings_seconds = 0  # every event reads its settings
    world.bus.publish(changed("ENROUTE"))
    world.bus.publish(changed("DELIVERED"))
    world.bus.publish(changed("DELIVERED", message_id="other"))
    (first, s1), (second, s2), (third, s3) = slow.reads
    second.callback(s2)  # the end's settings come first: it still waits
    third.callback(s3)  # another message does not wait
    assert [json.loads(r["data"])["message_id"] for r in world.http.requests] == ["other"]
    first.callback(s1)
    assert [json.loads(r["data"])["type"] for r in world.http.requests] == ["end", "start"]
    world.http.answer(1, 500)  # the start fails: its retry comes before the end
    world.clock.advance(1)
    assert len(world.http.requests) == 3 and world.callbacks.pending == 3  # other, start again, end waiting
    world.http.answer(2, 200)
    end = world.http.requests[3]
    assert json.loads(end["data"])["type"] == "end" and json.loads(end["data"])["message_id"] == "m0001"
    world.http.answer(3)
    world.http.answer(0)
    assert world.callbacks.pending == 0 and world.callbacks._lines == {}


def test_a_start_given_up_or_not_wanted_lets_the_end_go():
    world = World()  # no repeat: one try
    world.bus.publish(changed("ENROUTE"))
    world.bus.publish(changed("DELIVERED"))
    world.http.answer(0, 500)
    assert json.loads(world.http.requests[1]["data"])["type"] == "end"
    world.http.answer(1)
    quiet = World(start=False)
    quiet.bus.publish(changed("ENROUTE"))
    quiet.bus.publish(changed("DELIVERED"))
    [end] = quiet.http.requests
    assert json.loads(end["data"])["type"] == "end"
    quiet.http.answer(0)
    assert world.callbacks._lines == {} and quiet.callbacks._lines == {}


# -- records of callbacks done --------------------------------------------------------------


def test_done_callbacks_are_recorded_in_batches():
    world = World()
    for n in range(3):
        world.bus.publish(changed(message_id=f"m{n}"))
    world.http.answer(0)
    world.http.answer(1)
    world.http.answer(2, 500)  # no repeat: given up, done too
    assert world.db.records == []  # nothing written per callback
    world.clock.advance(1)
    assert world.db.records == [[("m0", 2), ("m1", 2), ("m2", 2)]]
    world.callbacks.flush_batch = 2  # a full batch goes at once
    world.bus.publish(changed("ENROUTE", message_id="m7"))
    world.bus.publish(mo(message_id="mo-7"))
    world.http.answer(3)
    assert len(world.db.records) == 1
    world.http.answer(4)
    assert world.db.records[1] == [("m7", 1), ("mo-7", 4)]


def test_a_failed_write_is_tried_again_with_the_next_batch():
    world = World()
    world.db.failing = True
    world.bus.publish(changed("ENROUTE"))
    world.http.answer(0)
    world.clock.advance(1)
    assert world.db.records == [] and world.callbacks._unflushed == {"m0001": 1}
    world.db.failing = False
    world.bus.publish(changed("DELIVERED"))
    world.http.answer(1)
    world.clock.advance(1)
    assert world.db.records == [[("m0001", 3)]] and world.callbacks._unflushed == {}


def test_nothing_to_send_is_done_but_a_start_not_wanted_is_not_recorded():
    world = World(start=False, end=False)
    world.bus.publish(changed("ENROUTE"))
    world.bus.publish(changed("DELIVERED"))
    world.bus.publish(changed("DELIVERED", message_id="gone", connection_id=99))  # connection deleted
    world.clock.advance(1)
    assert world.http.requests == [] and world.db.recorded() == {"m0001": 2, "gone": 2}


def test_stop_writes_what_is_waiting():
    world = World()
    world.bus.publish(changed())
    world.http.answer(0)
    done = []
    world.callbacks.stopService().addCallback(done.append)
    assert done == [None] and world.db.recorded() == {"m0001": 2}
    assert world.clock.getDelayedCalls() == []


def test_dropped_from_memory_is_not_recorded():
    world = World(repeat=True)
    world.callbacks.max_queue = 1  # one retry waits at most
    world.bus.publish(changed(message_id="a"))
    world.bus.publish(changed(message_id="b"))
    world.http.answer(0, 500)
    world.http.answer(1, 500)  # its retry pushes a's out
    assert world.callbacks.sent.labels("dropped")._value.get() == 1
    assert [c.event.message_id for _, c in world.callbacks._retries.values()] == ["b"]
    world.clock.advance(1)
    world.http.answer(2)
    world.clock.advance(1)
    assert world.db.recorded() == {"b": 2}  # a is left for recovery
    assert "a" not in world.callbacks._lines


# -- recovery ---------------------------------------------------------------------------------


def due(pk: int, state: str = "DELIVERED", **kw) -> DueCallback:
    kind = "end" if state != "ENROUTE" else "start"
    return DueCallback(pk, kind, changed(state, message_id=f"r{pk}", **kw))


def test_recovery_queues_what_is_due_and_skips_what_is_in_memory():
    world = World(repeat=True)
    world.callbacks.backoff_base = 100
    world.bus.publish(changed(message_id="r2"))  # in memory: failing, retried in 100 s
    world.http.answer(0, 500)
    world.bus.publish(changed(message_id="r4"))  # delivered, its record not written yet
    world.http.answer(1)
    world.db.due = [due(1), due(2), due(3, "ENROUTE"), due(4), DueCallback(5, "mo", mo(message_id="r5"))]
    world.callbacks.recover()
    sent = [(json.loads(r["data"])["message_id"], json.loads(r["data"])["type"]) for r in world.http.requests[2:]]
    assert sent == [("r1", "end"), ("r3", "start")]  # two in flight at most
    world.http.answer(2)
    assert json.loads(world.http.requests[4]["data"])["message_id"] == "r5"
    assert world.http.requests[2]["headers"]["webhook-id"] == event_id("r1", "DELIVERED")
    world.http.answer(3)
    world.http.answer(4)
    # The next pass: all recorded but r2, which still waits for its retry.
    world.clock.advance(60)
    assert len(world.http.requests) == 5
    assert world.db.recorded() == {"r1": 2, "r3": 1, "r4": 2, "r5": 4}
    node, after, since, before, limit = world.db.queries[-1]
    assert node == "node-1" and after == 0 and limit == 1000
    now = world.clock.seconds()
    assert since.timestamp() == now - 86400 and before.timestamp() == now - 60


def test_recovery_pages_by_id_and_keeps_within_max_queue():
    world = World()
    world.callbacks.recover_page = 2
    world.callbacks.max_queue = 5
    world.db.due = [due(pk) for pk in range(1, 11)]
    world.callbacks.recover()
    assert [q[1] for q in world.db.queries[-3:]] == [0, 2, 4]  # pages after the last id
    assert world.callbacks.pending == 5 and len(world.http.requests) == 2
    answered = 0
    while answered < len(world.http.requests):
        world.http.answer(answered)
        answered += 1
    assert answered == 5 and world.callbacks.pending == 0  # the rest on the next pass
    world.clock.advance(60)
    assert len(world.http.requests) == 7


def test_recovery_skips_a_message_recorded_while_it_read():
    world = World()
    world.bus.publish(changed(message_id="r1"))
    slow = SlowQueryDb(world.db)
    world.callbacks.db = slow
    world.db.due = [due(1)]
    world.callbacks.recover()
    world.http.answer(0)  # delivered (and recorded) while the query runs
    world.clock.advance(1)
    slow.finish()
    assert len(world.http.requests) == 1


class SlowQueryDb:
    """Recovery queries that answer when the test says."""

    def __init__(self, inner: FakeDb) -> None:
        self.inner = inner
        self.waiting: list[tuple[Deferred, tuple]] = []

    def run(self, fn, *args):
        if fn is due_callbacks:
            d: Deferred = Deferred()
            self.waiting.append((d, args))
            return d
        return self.inner.run(fn, *args)

    def finish(self) -> None:
        for d, args in self.waiting:
            self.inner.run(due_callbacks, *args).addCallback(d.callback)
