"""Click-to-dial over HTTP (``/v1/callbacks``) through the running daemon: customers' own
keys, dropping a live callback, Idempotency-Key conflicts, the support check, the IVR
after user2's call and bad bodies. SIPp trunks play user1 and user2 as in test_callback."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from .test_callback import USER1, USER2, CallbackNetwork, errors, user1_stayed_in_the_ivr

pytestmark = pytest.mark.slow


def request(net: CallbackNetwork, method: str, path: str, data: bytes | None = None, *, key: str | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, str, object]:
    """One raw API request: (status, Content-Type, decoded JSON body or None)."""
    raw = urllib.request.Request(net.daemon.url + path, data=data, method=method)
    raw.add_header("Authorization", f"Bearer {key or net.api.key}")
    for name, value in (headers or {}).items():
        raw.add_header(name, value)
    try:
        with urllib.request.urlopen(raw, timeout=10) as answer:
            status, ctype, body = answer.status, answer.headers.get("Content-Type", ""), answer.read()
    except urllib.error.HTTPError as error:
        status, ctype, body = error.code, error.headers.get("Content-Type", ""), error.read()
    return status, ctype, json.loads(body) if body else None


def create(net: CallbackNetwork, body: dict, *, key: str | None = None, idempotency_key: str | None = None):
    headers = {"Content-Type": "application/json"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    status, _, answer = request(net, "POST", "/v1/callbacks", json.dumps(body).encode(), key=key, headers=headers)
    return status, answer


def events(net: CallbackNetwork, callback_id: str) -> dict:
    status, answer = net.api("GET", f"/v1/callbacks/{callback_id}/events")
    assert status == 200, answer
    return answer


def wait_for_state(net: CallbackNetwork, callback_id: str, state: str, timeout: float = 15.0) -> dict:
    def reached():
        answer = events(net, callback_id)
        return answer if state in [item["state"] for item in answer["items"]] else None

    return net.api.wait_for(reached, f"callback {callback_id} to reach {state}", timeout=timeout)


def wait_until_ended(net: CallbackNetwork, callback_id: str, timeout: float = 20.0) -> dict:
    return net.api.wait_for(lambda: e if (e := events(net, callback_id))["outcome"] else None,
                            f"callback {callback_id} to end", timeout=timeout)


def add_service(net: CallbackNetwork, account_id: int, **fields) -> dict:
    return net.api.post("/v1/services", {"account_id": account_id, "type": "api",
                                         "tariff_plan_id": net.service["tariff_plan_id"], **fields})


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """One daemon for the tests that do not count SIPp calls: user1 answers and stays,
    user2 answers and hangs up after 3 s."""
    network = CallbackNetwork(tmp_path_factory.mktemp("click_to_dial"))
    yield network
    network.close()


def test_a_customer_key_reaches_its_own_services_only(net):
    admin = net.api
    own_key = admin.post("/v1/api-keys", {"customer_id": net.account["customer_id"], "name": "web"})["key"]
    # Another customer, with a service that can place callbacks too.
    other = admin.post("/v1/customers", {"name": "Other Co"})
    other_account = admin.post("/v1/accounts", {"customer_id": other["id"], "currency": "EUR"})
    admin.post(f"/v1/accounts/{other_account['id']}/transactions", {"kind": "topup", "amount": "10"})
    other_service = add_service(net, other_account["id"], routing_group_id=net.group["id"])
    assert other_service["id"] != net.service["id"]

    status, mine = create(net, {"service_id": net.service["id"], "a": USER1, "b": USER2, "max_seconds": 60},
                          key=own_key)
    assert status == 201, mine
    assert mine["account_id"] == net.account["id"] and mine["user1"] == USER1 and mine["source"] == "http"
    status, _, seen = request(net, "GET", f"/v1/callbacks/{mine['id']}", key=own_key)
    assert status == 200 and seen["id"] == mine["id"]
    status, _, support = request(net, "GET", f"/v1/callbacks/support?service_id={net.service['id']}", key=own_key)
    assert (status, support["supported"]) == (200, True)

    status, theirs = create(net, {"service_id": other_service["id"], "a": USER1, "b": USER2, "max_seconds": 60})
    assert status == 201 and theirs["account_id"] == other_account["id"], theirs
    # The customer's key sees none of the other customer's service or callbacks: 404, as if absent.
    status, problem = create(net, {"service_id": other_service["id"], "a": USER1, "b": USER2}, key=own_key)
    assert (status, problem["detail"]) == (404, f"no service {other_service['id']}")
    for method, path in (("GET", f"/v1/callbacks/{theirs['id']}"), ("GET", f"/v1/callbacks/{theirs['id']}/events"),
                         ("DELETE", f"/v1/callbacks/{theirs['id']}"),
                         ("GET", f"/v1/callbacks/support?service_id={other_service['id']}")):
        status, ctype, problem = request(net, method, path, key=own_key)
        assert (status, ctype) == (404, "application/problem+json"), (method, path, status, problem)
    # The refused DELETE dropped nothing: the other customer's callback runs to its end.
    ended = wait_until_ended(net, theirs["id"])
    assert ended["outcome"] == "completed" and ended["real_duration"] >= 2, ended
    assert not any("dropped" in item["detail"] for item in ended["items"]), ended["items"]
    assert wait_until_ended(net, mine["id"])["outcome"] == "completed"


def test_idempotency_key_reused_for_another_body_is_a_conflict(net):
    body = {"service_id": net.service["id"], "a": USER1, "b": USER2, "max_seconds": 30}
    status, first = create(net, body, idempotency_key="order-7")
    assert status == 201, first
    status, problem = create(net, {**body, "max_seconds": 31}, idempotency_key="order-7")
    assert status == 409 and problem["title"] == "Idempotency-Key reused", problem
    status, again = create(net, body, idempotency_key="order-7")
    assert (status, again["id"]) == (201, first["id"])
    status, problem = create(net, body, idempotency_key="bad key")  # a space is not visible ASCII
    assert status == 422 and problem["errors"][0]["field"] == "Idempotency-Key", problem
    assert wait_until_ended(net, first["id"])["outcome"] == "completed"


def test_support_says_why_a_service_cannot_place_callbacks(net):
    def support(service_id):
        status, answer = net.api("GET", f"/v1/callbacks/support?service_id={service_id}")
        assert status == 200, answer
        return answer

    assert support(net.service["id"]) == {"service_id": net.service["id"], "supported": True, "reason": None}
    routed = add_service(net, net.account["id"], routing_group_id=net.group["id"])
    assert support(routed["id"])["supported"] is True
    assert net.api("PATCH", f"/v1/services/{routed['id']}", {"status": "suspended"})[0] == 200
    assert support(routed["id"]) == {"service_id": routed["id"], "supported": False,
                                     "reason": "the service is suspended"}
    status, problem = create(net, {"service_id": routed["id"], "a": USER1, "b": USER2})
    assert (status, problem["detail"]) == (409, "click-to-dial is not available: the service is suspended")
    unrouted = add_service(net, net.account["id"])
    assert support(unrouted["id"]) == {"service_id": unrouted["id"], "supported": False,
                                       "reason": "the service has no routing group to route the calls"}
    assert net.api("GET", "/v1/callbacks/support?service_id=999999")[0] == 404
    status, problem = net.api("GET", "/v1/callbacks/support?service_id=x&colour=red")
    assert status == 422 and {e["field"] for e in problem["errors"]} == {"service_id", "colour"}


def test_ivr_callback_keeps_user1_asking_for_another_number(tmp_path):
    # user1 answers and hangs up itself 7 s later; user2 answers and hangs up after 3 s.
    # -m 1: a SIPp exits 0 only if its call went as scripted (a BYE from switchd to user1
    # before its own would fail its scenario).
    net = CallbackNetwork(tmp_path, user1_scenario=("uas_hangup.xml", ("-d", "7000", "-m", "1")),
                          user2_scenario=("uas_hangup.xml", ("-d", "3000", "-m", "1")),
                          env={"SWITCHD_CALLBACK_FIRST_DIGIT_SECONDS": "1"})
    try:
        status, created = create(net, {"service_id": net.service["id"], "a": USER1, "b": USER2,
                                       "max_seconds": 120, "ivr": True})
        assert status == 201, created
        assert created["ivr"] is True
        assert net.api("GET", f"/v1/callbacks/{created['id']}")[1]["ivr"] is True
        ended = wait_until_ended(net, created["id"], timeout=20)
        states = [item["state"] for item in ended["items"]]
        assert states[:3] == ["dialing1", "answered1", "dialing2"] and "bridged" in states, states
        # After user2's hang-up the IVR asks user1 for a number (the question and the
        # language menu take longer than the 4 s user1 stays): user1 hangs up while asked.
        after = states[states.index("bridged") + 1:]
        assert after == ["user2_ended", "collecting", "ended"], states
        at = {item["state"]: item["at"] for item in ended["items"]}  # the last of each
        assert 3 <= at["ended"] - at["user2_ended"] <= 6, ended["items"]
        assert ended["outcome"] == "completed" and ended["items"][-1]["detail"] == "completed: user1 hung up"
        assert 2 <= ended["real_duration"] <= 4, ended  # user2's 3 s only, not the time in the IVR
        for name, peer in zip(("user1", "user2"), net.peers):
            assert peer.wait(timeout=10) == 0, name + errors(tmp_path)
        cdrs = net.api.wait_for(lambda: c if len(c := net.cdrs()) == 2 else None, "two CDRs")
        assert user1_stayed_in_the_ivr(cdrs), cdrs
        assert {c["hangup_side"] for c in cdrs} == {"callee"}, cdrs  # each party hung up itself
    finally:
        net.close()


def test_bad_bodies_are_problems(net):
    good = {"service_id": net.service["id"], "a": USER1, "b": USER2}
    status, ctype, problem = request(net, "POST", "/v1/callbacks", b"{not json",
                                     headers={"Content-Type": "application/json"})
    assert (status, ctype, problem["status"]) == (400, "application/problem+json", 400), problem
    status, ctype, problem = request(net, "POST", "/v1/callbacks", json.dumps(good).encode(),
                                     headers={"Content-Type": "text/plain"})
    assert (status, ctype, problem["status"]) == (415, "application/problem+json", 415), problem
    status, ctype, problem = request(net, "POST", "/v1/callbacks", b"[1, 2]",
                                     headers={"Content-Type": "application/json"})
    assert (status, problem["errors"]) == (422, [{"field": "", "message": "expected a JSON object"}])
    status, problem = create(net, {**good, "colour": "red"})
    assert (status, problem["errors"]) == (422, [{"field": "colour", "message": "unknown field"}]), problem


@pytest.mark.parametrize("user2_scenario, outcome, user2_answered", [
    ("uas_ring.xml", "cancelled", False),  # dropped while user2 rings: user1 gets BYE, user2 CANCEL
    ("uas_answer.xml", "completed", True),  # dropped while bridged: both get BYE
])
def test_dropping_a_live_callback_ends_both_calls(tmp_path, user2_scenario, outcome, user2_answered):
    # -m 1: each SIPp exits 0 only once its one call went through the whole scenario
    # (BYE received and answered, or CANCEL answered with 487 and ACKed).
    net = CallbackNetwork(tmp_path, user1_scenario=("uas_answer.xml", ("-m", "1")),
                          user2_scenario=(user2_scenario, ("-m", "1")))
    try:
        status, created = create(net, {"service_id": net.service["id"], "a": USER1, "b": USER2, "max_seconds": 600})
        assert status == 201, created
        wait_for_state(net, created["id"], "bridged" if user2_answered else "dialing2")
        time.sleep(0.5 if not user2_answered else 1.2)  # user2's 180 is in; or a second of talk
        assert net.api("DELETE", f"/v1/callbacks/{created['id']}")[0] == 204
        ended = wait_until_ended(net, created["id"], timeout=5)
        assert ended["outcome"] == outcome and ended["state"] == "ended", ended
        assert ended["items"][-1] == {**ended["items"][-1], "state": "ended",
                                      "detail": f"{outcome}: dropped through the API"}
        if user2_answered:
            assert 1 <= ended["real_duration"] <= 3, ended
        else:
            assert ended["real_duration"] == 0 and "answered2" not in [i["state"] for i in ended["items"]]
        assert net.api("DELETE", f"/v1/callbacks/{created['id']}")[0] == 409  # already over
        for name, peer in zip(("user1", "user2"), net.peers):
            assert peer.wait(timeout=10) == 0, name + errors(tmp_path)
        cdrs = net.api.wait_for(lambda: c if len(c := net.cdrs()) == 2 else None, "two CDRs")
        by_callee = {c["callee"]: c for c in cdrs}
        assert set(by_callee) == {USER1, USER2} and {c["direction"] for c in cdrs} == {"callback"}
        assert by_callee[USER1]["answer_time"] is not None and by_callee[USER1]["sip_code"] == 200
        if user2_answered:
            assert by_callee[USER2]["answer_time"] is not None and by_callee[USER2]["sip_code"] == 200
        else:
            assert by_callee[USER2]["answer_time"] is None and by_callee[USER2]["billable_seconds"] == 0
            assert by_callee[USER2]["charge"] in ("0", "0.000000", "0.00"), by_callee[USER2]
        assert {c["hangup_side"] for c in cdrs} == {"switch"}, cdrs
    finally:
        net.close()
