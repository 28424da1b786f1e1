"""Unit tests of SIP dialog state (RFC 3261 §12)."""

from __future__ import annotations

import pytest

from switchd.sip.dialog import Dialog, DialogId, DialogState, RequestVerdict
from switchd.sip.message import (
    URI,
    Message,
    Request,
    Response,
    make_response,
    parse_datagram,
)


def wire(text: str) -> Message:
    return parse_datagram(text.replace("\n", "\r\n").encode())


def invite(*, record_route: str | None = "<sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
           uri: str = "sip:bob@biloxi.example.com", contact: str = "<sip:alice@192.0.2.1:5060>") -> Request:
    lines = [
        f"INVITE {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds",
        "Max-Forwards: 70",
        'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774',
        "To: Bob <sip:bob@biloxi.example.com>",
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
        "CSeq: 314159 INVITE",
    ]
    if contact:
        lines.append(f"Contact: {contact}")
    if record_route:
        lines.append(f"Record-Route: {record_route}")
    lines += ["Content-Length: 0", "", ""]
    message = wire("\n".join(lines))
    assert isinstance(message, Request)
    return message


def answer(request: Request, code: int, to_tag: str | None = "a6c85cf",
           contact: str | None = "<sip:bob@192.0.2.4:5062>") -> Response:
    """The response as the UAC receives it: Record-Route copied, Contact of the UAS."""
    response = make_response(request, code, to_tag=to_tag)
    for value in request.get_all("Record-Route"):
        response.add("Record-Route", value)
    if contact:
        response.add("Contact", contact)
    message = parse_datagram(response.to_bytes())
    assert isinstance(message, Response)
    return message


def uac_dialog(**kw: object) -> tuple[Request, Dialog]:
    request = invite(**kw)  # type: ignore[arg-type]
    return request, Dialog.from_uac(request, answer(request, 200))


def roundtrip(request: Request) -> Request:
    message = parse_datagram(request.to_bytes())
    assert isinstance(message, Request)
    return message


# --------------------------------------------------------------------------
# Creation
# --------------------------------------------------------------------------


def test_uac_dialog_from_2xx():
    _, dialog = uac_dialog()
    assert dialog.state is DialogState.CONFIRMED and dialog.is_uac
    assert dialog.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert (dialog.local_tag, dialog.remote_tag) == ("1928301774", "a6c85cf")
    assert dialog.id == DialogId("a84b4c76e66710@pc33.atlanta.example.com", "1928301774", "a6c85cf")
    assert str(dialog.local_uri) == "sip:alice@atlanta.example.com"
    assert str(dialog.remote_uri) == "sip:bob@biloxi.example.com"
    assert (dialog.local_seq, dialog.remote_seq) == (314159, None)
    assert [str(u) for u in dialog.route_set] == ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]  # reversed
    assert str(dialog.remote_target) == "sip:bob@192.0.2.4:5062"
    assert str(dialog.local_target) == "sip:alice@192.0.2.1:5060"
    assert dialog.secure is False


def test_uac_early_dialog_from_provisional_with_tag():
    request = invite()
    dialog = Dialog.from_uac(request, answer(request, 180))
    assert dialog.state is DialogState.EARLY
    with pytest.raises(ValueError):
        Dialog.from_uac(request, answer(request, 180, to_tag=None))
    with pytest.raises(ValueError):
        Dialog.from_uac(request, answer(request, 100))
    with pytest.raises(ValueError):
        Dialog.from_uac(request, answer(request, 486))


def test_uac_dialog_secure_and_missing_contact():
    request = invite(uri="sips:bob@biloxi.example.com")
    dialog = Dialog.from_uac(request, answer(request, 200, contact=None))
    assert dialog.secure is True
    assert str(dialog.remote_target) == "sips:bob@biloxi.example.com"  # falls back to the Request-URI
    assert Dialog.from_uac(request, answer(request, 200), secure=False).secure is False


def test_uas_dialog_from_request():
    request = invite()
    dialog = Dialog.from_uas(request, "a6c85cf", local_target=URI.parse("sip:bob@192.0.2.4:5062"))
    assert dialog.state is DialogState.EARLY and not dialog.is_uac
    assert (dialog.local_tag, dialog.remote_tag) == ("a6c85cf", "1928301774")
    assert [str(u) for u in dialog.route_set] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]  # in order
    assert (dialog.local_seq, dialog.remote_seq) == (None, 314159)
    assert str(dialog.remote_target) == "sip:alice@192.0.2.1:5060"
    assert str(dialog.local_uri) == "sip:bob@biloxi.example.com"
    assert str(dialog.remote_uri) == "sip:alice@atlanta.example.com"
    dialog.confirm()
    assert dialog.state is DialogState.CONFIRMED
    assert Dialog.from_uas(request, "x", confirmed=True).state is DialogState.CONFIRMED
    with pytest.raises(ValueError):
        Dialog.from_uas(request, "")


def test_dialog_ids_agree_between_the_two_sides():
    request = invite()
    response = answer(request, 200)
    uac = Dialog.from_uac(request, response)
    uas = Dialog.from_uas(request, "a6c85cf")
    assert DialogId.of_received_response(response) == uac.id
    bye = roundtrip(uac.create_request("BYE"))
    assert DialogId.of_received_request(bye) == uas.id
    assert uas.receive_request(bye) is RequestVerdict.ACCEPTED


# --------------------------------------------------------------------------
# Requests within the dialog (§12.2.1.1)
# --------------------------------------------------------------------------


def test_create_request_loose_routing_and_cseq_increment():
    _, dialog = uac_dialog()
    bye = roundtrip(dialog.create_request("BYE"))
    assert bye.method == "BYE"
    assert str(bye.uri) == "sip:bob@192.0.2.4:5062"  # the remote target
    assert [str(r.uri) for r in bye.routes] == ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]
    assert (bye.cseq.number, bye.cseq.method) == (314160, "BYE")
    assert bye.from_addr.tag == "1928301774" and str(bye.from_addr.uri) == "sip:alice@atlanta.example.com"
    assert bye.to_addr.tag == "a6c85cf" and str(bye.to_addr.uri) == "sip:bob@biloxi.example.com"
    assert bye.call_id == dialog.call_id
    assert bye.max_forwards == 70
    assert bye.get("Contact") is None and bye.get("Via") is None
    sdp = [("Content-Type", "application/sdp")]
    reinvite = roundtrip(dialog.create_request("INVITE", headers=sdp, body=b"v=0\r\n"))
    assert reinvite.cseq.number == 314161 and dialog.local_seq == 314161
    assert str(reinvite.contacts[0].uri) == "sip:alice@192.0.2.1:5060"  # target refresh carries Contact
    assert reinvite.body == b"v=0\r\n" and reinvite.content_type == "application/sdp"


def test_create_request_without_route_set():
    _, dialog = uac_dialog(record_route=None)
    info = roundtrip(dialog.create_request("INFO"))
    assert str(info.uri) == "sip:bob@192.0.2.4:5062"
    assert info.routes == ()


def test_create_request_strict_routing():
    # The UAC reverses Record-Route: the strict router nearest to it comes first.
    request = invite(record_route="<sip:loose.example.com;lr>, <sip:strict.example.com;method=INVITE;maddr=192.0.2.9>")
    dialog = Dialog.from_uac(request, answer(request, 200))
    assert not dialog.route_set[0].lr
    bye = roundtrip(dialog.create_request("BYE"))
    assert str(bye.uri) == "sip:strict.example.com;maddr=192.0.2.9"  # method param stripped
    assert [str(r.uri) for r in bye.routes] == ["sip:loose.example.com;lr", "sip:bob@192.0.2.4:5062"]


def test_ack_reuses_the_invite_cseq_and_cancel_is_refused():
    _, dialog = uac_dialog()
    ack = roundtrip(dialog.ack_for(314159, body=b"v=0\r\n", headers=[("Content-Type", "application/sdp")]))
    assert ack.method == "ACK" and (ack.cseq.number, ack.cseq.method) == (314159, "ACK")
    assert str(ack.uri) == "sip:bob@192.0.2.4:5062"
    assert [str(r.uri) for r in ack.routes] == ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]
    assert ack.get("Contact") is None and ack.body == b"v=0\r\n"
    assert dialog.local_seq == 314159  # unchanged
    with pytest.raises(ValueError):
        dialog.create_request("ACK")
    with pytest.raises(ValueError):
        dialog.create_request("CANCEL", cseq=314159)
    with pytest.raises(ValueError):
        dialog.create_request("BYE", cseq=5)


def test_uas_chooses_initial_local_cseq():
    dialog = Dialog.from_uas(invite(), "a6c85cf", confirmed=True)
    first = dialog.create_request("BYE")
    assert 1 <= first.cseq.number <= 2**20
    assert dialog.create_request("INFO").cseq.number == first.cseq.number + 1
    assert first.from_addr.tag == "a6c85cf" and first.to_addr.tag == "1928301774"
    assert str(first.uri) == "sip:alice@192.0.2.1:5060"
    assert [str(r.uri) for r in first.routes] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]


def test_terminated_dialog_sends_nothing():
    _, dialog = uac_dialog()
    dialog.terminate()
    with pytest.raises(ValueError):
        dialog.create_request("BYE")


# --------------------------------------------------------------------------
# Requests received (§12.2.2)
# --------------------------------------------------------------------------


def in_dialog(method: str, cseq: int, *, to_tag: str = "a6c85cf", contact: str | None = None) -> Request:
    lines = [
        f"{method} sip:bob@192.0.2.4:5062 SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx" + str(cseq) + method,
        "Max-Forwards: 70",
        "From: <sip:alice@atlanta.example.com>;tag=1928301774",
        f"To: <sip:bob@biloxi.example.com>;tag={to_tag}",
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
        f"CSeq: {cseq} {method}",
    ]
    if contact:
        lines.append(f"Contact: {contact}")
    lines += ["Content-Length: 0", "", ""]
    message = wire("\n".join(lines))
    assert isinstance(message, Request)
    return message


def test_receive_request_checks_cseq_order():
    dialog = Dialog.from_uas(invite(), "a6c85cf", confirmed=True)
    assert dialog.receive_request(in_dialog("INFO", 314160)) is RequestVerdict.ACCEPTED
    assert dialog.remote_seq == 314160
    verdict = dialog.receive_request(in_dialog("INFO", 314150))
    assert verdict is RequestVerdict.OUT_OF_ORDER and verdict.status == 500
    assert dialog.remote_seq == 314160
    assert dialog.receive_request(in_dialog("ACK", 314159)) is RequestVerdict.ACCEPTED  # ACK keeps the INVITE's CSeq
    assert dialog.remote_seq == 314160
    assert RequestVerdict.ACCEPTED.status is None


def test_receive_request_of_another_dialog():
    dialog = Dialog.from_uas(invite(), "a6c85cf", confirmed=True)
    verdict = dialog.receive_request(in_dialog("BYE", 314160, to_tag="someone-else"))
    assert verdict is RequestVerdict.NOT_IN_DIALOG and verdict.status == 481
    dialog.terminate()
    assert dialog.receive_request(in_dialog("BYE", 314161)) is RequestVerdict.NOT_IN_DIALOG


def test_target_refresh_updates_remote_target():
    dialog = Dialog.from_uas(invite(), "a6c85cf", confirmed=True)
    dialog.receive_request(in_dialog("BYE", 314160, contact="<sip:alice@192.0.2.99>"))
    assert str(dialog.remote_target) == "sip:alice@192.0.2.1:5060"  # BYE is no target refresh
    dialog.receive_request(in_dialog("INVITE", 314161, contact="<sip:alice@192.0.2.77>"))
    assert str(dialog.remote_target) == "sip:alice@192.0.2.77"
    dialog.receive_request(in_dialog("UPDATE", 314162, contact="<sip:alice@192.0.2.78>"))
    assert str(dialog.remote_target) == "sip:alice@192.0.2.78"
    assert str(dialog.create_request("BYE").uri) == "sip:alice@192.0.2.78"


def test_uac_remote_seq_starts_empty():
    _, dialog = uac_dialog()
    request = wire(
        "BYE sip:alice@192.0.2.1:5060 SIP/2.0\n"
        "Via: SIP/2.0/UDP 192.0.2.4:5062;branch=z9hG4bKbye\n"
        "From: <sip:bob@biloxi.example.com>;tag=a6c85cf\n"
        "To: <sip:alice@atlanta.example.com>;tag=1928301774\n"
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\n"
        "CSeq: 7 BYE\n"
        "Content-Length: 0\n\n"
    )
    assert dialog.receive_request(request) is RequestVerdict.ACCEPTED  # any number is fine at first
    assert dialog.remote_seq == 7


# --------------------------------------------------------------------------
# Responses received
# --------------------------------------------------------------------------


def test_early_dialog_confirmed_by_2xx_recomputes_route_set():
    request = invite()
    dialog = Dialog.from_uac(request, answer(request, 183, contact="<sip:bob@192.0.2.4:5000>"))
    assert str(dialog.remote_target) == "sip:bob@192.0.2.4:5000"
    ok = make_response(request, 200, to_tag="a6c85cf")
    ok.add("Record-Route", "<sip:only.example.com;lr>")
    ok.add("Contact", "<sip:bob@192.0.2.4:5062>")
    dialog.receive_response(parse_datagram(ok.to_bytes()))  # type: ignore[arg-type]
    assert dialog.state is DialogState.CONFIRMED
    assert [str(u) for u in dialog.route_set] == ["sip:only.example.com;lr"]
    assert str(dialog.remote_target) == "sip:bob@192.0.2.4:5062"


def test_early_dialog_terminated_by_error_final():
    request = invite()
    dialog = Dialog.from_uac(request, answer(request, 180))
    dialog.receive_response(answer(request, 486))
    assert dialog.state is DialogState.TERMINATED


def test_responses_in_confirmed_dialog():
    _, dialog = uac_dialog()
    reinvite = dialog.create_request("INVITE")
    reinvite.add("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKre")
    dialog.receive_response(answer(reinvite, 200, contact="<sip:bob@192.0.2.44>"))
    assert str(dialog.remote_target) == "sip:bob@192.0.2.44"
    assert [str(u) for u in dialog.route_set] == ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]  # unchanged
    info = dialog.create_request("INFO")
    info.add("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKinfo")
    dialog.receive_response(answer(info, 200, contact="<sip:bob@192.0.2.55>"))
    assert str(dialog.remote_target) == "sip:bob@192.0.2.44"  # INFO is no target refresh
    dialog.receive_response(answer(info, 491))
    assert dialog.state is DialogState.CONFIRMED
    dialog.receive_response(answer(info, 481))
    assert dialog.state is DialogState.TERMINATED


def test_response_of_another_dialog_is_refused():
    request, dialog = uac_dialog()
    with pytest.raises(ValueError):
        dialog.receive_response(answer(request, 200, to_tag="fork2"))
