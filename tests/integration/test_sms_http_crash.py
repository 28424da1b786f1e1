"""A status callback survives a crash of the daemon: the customer's system
refuses the end callback (CallbackRepeat on), switchd is killed with SIGKILL
while it waits to try again, and after the restart the same callback (same
``webhook-id``) reaches the customer once the system accepts it."""

from __future__ import annotations

import json
import signal
import time

from .test_sms_http import Customer, call, world  # noqa: F401 - world: the same daemon, SMSC and callback server


def test_an_end_callback_refused_before_sigkill_arrives_after_the_restart(world):
    daemon, smsc, callbacks = world
    callbacks.fail = 1_000_000  # the customer's system is down
    customer = Customer(daemon, smsc, callbacks, callback_version="V2", start_callback=False,
                        callback_repeat=True)
    status, sent, _ = call(daemon, "POST", "/v1/sms", {"from": "ACME", "to": "447700900001", "text": "Hi"},
                           customer.key)
    assert status == 201, sent
    refused = callbacks.wait(2)  # the first try and its retry a second later, both 500
    event = refused[0]["headers"]["webhook-id"]
    assert json.loads(refused[0]["body"])["type"] == "end"
    daemon.stop(signal.SIGKILL)
    time.sleep(0.2)
    callbacks.fail = 0  # back up while switchd is down
    count = len(callbacks.received)
    daemon.start()
    received = callbacks.wait(count + 1)
    last = received[-1]
    body = json.loads(last["body"])
    assert last["headers"]["webhook-id"] == event
    assert (body["type"], body["message_id"], body["state"]) == ("end", sent["id"], "DELIVERED")
    time.sleep(1.5)
    assert len(callbacks.received) == count + 1  # accepted: not sent again
