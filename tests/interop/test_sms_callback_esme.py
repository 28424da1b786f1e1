"""SMS callback commands from a customer's ESME: smpplib 2.2.4 (an independent
ESME) binds to switchd's SMPP server as a transceiver and submits the commands
to a callback access number. The daemon runs with SIP and media as in
``test_callback.py``: SIPp trunks play user1 (answers, hangs up after 6 s, while
the IVR that follows an SMS callback asks for another number) and user2
(answers, hangs up after 3 s). The access service routes to an upstream link
(the test SMSC of ``tests/smsc.py``), which carries switchd's short replies
(docs/callback.rst: "a short reply by SMS from the access number, through the
access service's routes")."""

from __future__ import annotations

import re
import select
import time
from decimal import Decimal

import pytest

from ..daemon import LISTENING
from ..smsc import FakeSmsc
from .test_callback import USER1, USER2, CallbackNetwork
from .test_calls import errors
from .test_smpp_server import PASSWORD, Esme

pytestmark = pytest.mark.slow

ACCESS = "4415550003"  # the access number
SENDER = "447700900555"  # the handset the customer's system texts for: the replies go to it


class EsmeCallbackNetwork:
    """``CallbackNetwork`` plus an access number routed to the test SMSC, a callback
    client and an SMPP connection of the customer's API service."""

    def __init__(self, tmp_path) -> None:
        self.smsc = FakeSmsc(receipts=False)
        # user1 hangs up 6 s after answering: 3 s after user2, while the IVR asks for another number.
        self.net = net = CallbackNetwork(tmp_path, user1_scenario=("uas_hangup.xml", ("-d", "6000")), env={
            "SWITCHD_SMPP_RELOAD_SECONDS": "1",
            "SWITCHD_CALLBACK_FIRST_DIGIT_SECONDS": "1",  # the IVR after user2's call waits 1 s, not 15
        })
        self.esme: Esme | None = None
        try:
            api = self.api = net.api
            link = api.post("/v1/smpp-links", {"name": "up", "host": "127.0.0.1", "port": self.smsc.port,
                                               "system_id": "switchd", "password": "pw"})
            api.post("/v1/routing-group-members", {"routing_group_id": net.group["id"], "smpp_link_id": link["id"]})
            self.client = api.post("/v1/callback-clients", {"service_id": net.service["id"], "login": "dave",
                                                            "password": "pw"})
            api.post("/v1/callback-numbers", {"client_id": self.client["id"], "number": USER1})
            access = api.post("/v1/services", {"account_id": net.account["id"], "type": "callback",
                                               "tariff_plan_id": net.service["tariff_plan_id"],
                                               "routing_group_id": net.group["id"]})
            api.post("/v1/numbers", {"number": ACCESS, "service_id": access["id"]})
            api.post("/v1/connections/smpp", {"service_id": net.service["id"], "login": "dave-esme",
                                              "password": PASSWORD})
            self.smsc.wait(lambda: self.smsc.bound, "the upstream link to bind", timeout=30)
            time.sleep(1.5)  # access numbers and SMPP connections are re-read every second here
            # CallbackNetwork waits for the api, sip and iif listeners; the SMPP one is in the log by now.
            self.smpp_port = next(int(m.group(5)) for m in LISTENING.finditer(net.daemon.log.read_text())
                                  if m.group(1) == "smpp")
            self.esme = Esme(self.smpp_port, "transceiver", "dave-esme")
        except BaseException:
            self.close()
            raise

    def submit(self, text: str, sender: str = SENDER):
        """submit_sm from the ESME to the access number; returns its submit_sm_resp."""
        answered = len(self.esme.sent)
        self.esme.submit(text.encode(), to=ACCESS, source_addr=sender, source_addr_ton=1, source_addr_npi=1)
        self.esme.read_until(lambda: len(self.esme.sent) > answered, "submit_sm_resp")
        return self.esme.sent[answered]

    def drain(self, seconds: float) -> None:
        """Read whatever switchd sends the ESME during ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.esme.client._socket], [], [], left)[0]:
                self.esme.client.read_once(auto_send_enquire_link=False)

    def replies(self) -> list[tuple[str, str, str]]:
        """What switchd sent upstream: (source, destination, text)."""
        return [(s.pdu.source_addr, s.pdu.destination_addr, s.pdu.short_message.decode()) for s in self.smsc.submitted]

    def wait_reply(self, to: str, text: str) -> None:
        self.smsc.wait(lambda: (ACCESS, to, text) in self.replies(), f"the reply {text!r}")

    def close(self) -> None:
        if self.esme is not None:
            self.esme.close()
        self.net.close()
        self.smsc.close()


@pytest.fixture
def net(tmp_path):
    network = EsmeCallbackNetwork(tmp_path)
    yield network
    network.close()
    assert "Traceback" not in (tmp_path / "switchd.log").read_text()


def test_esme_login_command_calls_the_source_then_the_destination(net, tmp_path):
    resp = net.submit(f"U.dave P.pw D.{USER2} O.{USER1}")
    assert resp.status == 0 and resp.message_id, resp  # a command is accepted like a message
    net.wait_reply(SENDER, f"calling {USER1}, then {USER2}")
    log = net.net.daemon.log
    found = net.api.wait_for(
        lambda: re.search(rf"SMS callback from {SENDER}: ([0-9a-f]+) calls {USER1}, then {USER2}", log.read_text()),
        "the callback in the log")
    callback_id = found.group(1)
    events = net.api.wait_for(
        lambda: e if (e := net.api("GET", f"/v1/callbacks/{callback_id}/events")[1])["outcome"] else None,
        "the callback to end", timeout=30)
    states = [item["state"] for item in events["items"]]
    assert states[:5] == ["dialing1", "answered1", "dialing2", "answered2", "bridged"], states
    assert "collecting" in states[states.index("user2_ended"):], states  # then the IVR (docs/callback.rst)
    assert events["outcome"] == "completed", events
    assert 2 <= events["real_duration"] <= 5, str(events) + errors(tmp_path)  # user2 hangs up after 3 s
    summary = net.api("GET", f"/v1/callbacks/{callback_id}")[1]
    assert (summary["user1"], summary["user2"]) == (USER1, USER2)
    assert summary["source"] == "sms" and summary["reference"] == SENDER
    assert summary["account_id"] == net.net.account["id"]
    cdrs = net.api.wait_for(lambda: c if len(c := net.net.cdrs()) == 2 else None, "two callback CDRs")
    by_callee = {c["callee"]: c for c in cdrs}
    assert set(by_callee) == {USER1, USER2}, cdrs
    assert all(c["direction"] == "callback" and c["sip_code"] == 200 for c in cdrs), cdrs
    assert by_callee[USER1]["caller"] == ACCESS  # the first call shows the access number
    assert by_callee[USER1]["answer_time"] <= by_callee[USER2]["answer_time"]  # user1 was reached first
    assert by_callee[USER2]["billable_seconds"] >= 2
    balance = Decimal(net.api("GET", f"/v1/accounts/{net.net.account['id']}")[1]["balance"])
    assert balance < Decimal(10)  # the talk time was charged to the client's account
    assert all(upstream.destination_addr == SENDER for upstream in (s.pdu for s in net.smsc.submitted))


def test_esme_bad_command_is_accepted_and_answered_by_sms(net):
    resp = net.submit("X.1")
    assert resp.status == 0 and resp.message_id, resp
    net.wait_reply(SENDER, "unknown field X.; use U. P. D. O. R. B. N T or I")
    resp = net.submit("U.dave P.wrong D." + USER2)
    assert resp.status == 0, resp
    net.wait_reply(SENDER, "wrong login or password")
    # The reply goes to the sender's number through the access service's routes, not
    # back over the ESME's own session: nothing was delivered to it.
    net.drain(1.0)
    assert net.esme.received == []
    assert net.net.cdrs() == []


def test_esme_info_from_a_registered_number_replies_with_the_balance(net):
    resp = net.submit("I", sender=USER1)  # no U./P.: USER1 is registered to dave
    assert resp.status == 0, resp
    balance = Decimal(net.api("GET", f"/v1/accounts/{net.net.account['id']}")[1]["balance"])
    net.wait_reply(USER1, f"balance {balance:.2f} EUR")
    resp = net.submit("I", sender="447700900777")  # not registered
    assert resp.status == 0, resp
    net.wait_reply("447700900777", "your number is not registered: send U.login P.password R.number first")


def test_another_customers_esme_cannot_act_as_a_registered_number(net):
    api = net.api
    other = api.post("/v1/customers", {"name": "Other Co"})
    account = api.post("/v1/accounts", {"customer_id": other["id"], "currency": "EUR"})
    service = api.post("/v1/services", {"account_id": account["id"], "type": "api",
                                        "tariff_plan_id": net.net.service["tariff_plan_id"]})
    api.post("/v1/connections/smpp", {"service_id": service["id"], "login": "other-esme", "password": PASSWORD})
    time.sleep(1.5)  # SMPP connections are re-read every second here
    esme = Esme(net.smpp_port, "transceiver", "other-esme")
    try:
        # USER1 is dave's registered number, not this customer's: "D. O." without U./P.
        esme.submit(f"D.{USER2} O.{USER1}".encode(), to=ACCESS, source_addr=USER1, source_addr_ton=1,
                    source_addr_npi=1)
        esme.read_until(lambda: esme.sent, "submit_sm_resp")
        assert esme.sent[0].status == 0x0B, esme.sent[0]  # ESME_RINVDSTADR: not its account's access number
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert "SMS callback from" not in net.net.daemon.log.read_text(), "a callback on dave's account"
            time.sleep(0.2)
        assert net.net.cdrs() == []
    finally:
        esme.close()
