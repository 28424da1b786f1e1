"""Click-to-dial status notifications: order, retries on an injected clock, giving up."""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from switchd.api.notify import JsonPoster


class Response:
    def __init__(self, code):
        self.code = code

    def content(self):
        return succeed(b"")


class Server:
    def __init__(self, codes):
        self.codes = list(codes)
        self.seen = []

    def __call__(self, method, url, data, timeout, headers):
        self.seen.append((method, url, json.loads(data), headers[b"Content-Type"]))
        code = self.codes.pop(0) if self.codes else 200
        if code == 0:
            d = Deferred()
            d.errback(ConnectionRefusedError("refused"))
            return d
        return succeed(Response(code))


def test_posts_keep_their_order_and_failures_are_retried_with_backoff():
    clock, server = Clock(), Server([503, 0, 200])
    poster = JsonPoster(clock, server, attempts=5, backoff=2)
    poster.post("http://as.example/cb", {"state": "dialing1"})
    poster.post("http://as.example/cb", {"state": "bridged"})
    assert [s[2]["state"] for s in server.seen] == ["dialing1"]
    clock.advance(2)  # second try, refused
    clock.advance(4)  # third try, accepted; the next one goes at once
    assert [s[2]["state"] for s in server.seen] == ["dialing1"] * 3 + ["bridged"]
    assert server.seen[0][3] == [b"application/json"]
    assert (poster.sent, poster.failed, poster.queues) == (2, 0, {})


def test_a_client_error_is_not_retried_and_a_dead_url_is_given_up():
    clock = Clock()
    poster = JsonPoster(clock, Server([404]), attempts=3, backoff=1)
    poster.post("http://as.example/gone", {"state": "ended"})
    assert (poster.sent, poster.failed) == (0, 1)
    server = Server([0, 0, 0])
    poster = JsonPoster(clock, server, attempts=3, backoff=1)
    poster.post("http://as.example/down", {"state": "ended"})
    clock.advance(1)
    clock.advance(2)
    assert len(server.seen) == 3 and (poster.sent, poster.failed) == (0, 1) and not clock.getDelayedCalls()
