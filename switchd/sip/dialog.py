"""SIP dialog state (RFC 3261 §12).

A :class:`Dialog` holds what RFC 3261 §12 calls the dialog state: Call-ID,
local and remote tags, local and remote URIs, local and remote CSeq
numbers, the route set, the remote target and the "secure" flag, plus the
local target (our Contact) used in target refresh requests.  It is built
on the UAC side from the request we sent and the 1xx-with-tag or 2xx
response that created it (:meth:`Dialog.from_uac`), or on the UAS side from
the request we received and the tag we chose (:meth:`Dialog.from_uas`).

It builds in-dialog requests (:meth:`Dialog.create_request`,
:meth:`Dialog.ack_for`) with the Request-URI and Route header of
§12.2.1.1, loose and strict routing included, and checks in-dialog requests
we receive (:meth:`Dialog.receive_request`), returning a
:class:`RequestVerdict` (500 for a CSeq going backwards, 481 for a request
of another dialog).  It never sends anything: Via and transactions belong
to :mod:`switchd.sip.transaction`.  :class:`DialogId` is the key of dialog
tables.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from twisted.logger import Logger

from switchd.sip.message import URI, Address, Message, Request, Response

__all__ = [
    "TARGET_REFRESH_METHODS",
    "Dialog",
    "DialogId",
    "DialogState",
    "RequestVerdict",
]

#: Requests that replace the remote target with their Contact (RFC 3261
#: §12.2, RFC 3311 UPDATE, RFC 6665 SUBSCRIBE / NOTIFY).
TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY"})

# Initial local CSeq numbers are chosen well below 2**31 (RFC 3261 §8.1.1.5)
# so that a long dialog never runs out of numbers.
_INITIAL_CSEQ_LIMIT = 2**20


class DialogId(NamedTuple):
    """The dialog identifier (RFC 3261 §12): Call-ID, local tag, remote tag.

    A missing tag (RFC 2543 peers) is the empty string.
    """

    call_id: str
    local_tag: str
    remote_tag: str

    @classmethod
    def of_received_request(cls, request: Request) -> DialogId:
        """The id of the dialog a request we received belongs to (To tag is ours)."""
        return cls(_call_id(request), _tag(request, "to"), _tag(request, "from"))

    @classmethod
    def of_received_response(cls, response: Response) -> DialogId:
        """The id of the dialog a response to one of our requests belongs to (From tag is ours)."""
        return cls(_call_id(response), _tag(response, "from"), _tag(response, "to"))


class DialogState(enum.Enum):
    """Dialog states (RFC 3261 §12)."""

    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class RequestVerdict(enum.Enum):
    """What :meth:`Dialog.receive_request` thinks of a request."""

    #: in order; the dialog state has been updated.
    ACCEPTED = "accepted"
    #: CSeq lower than the remote sequence number: answer 500 (§12.2.2).
    OUT_OF_ORDER = "out-of-order"
    #: Call-ID or tags belong to another dialog (or this one is over): answer 481.
    NOT_IN_DIALOG = "not-in-dialog"

    @property
    def status(self) -> int | None:
        """The error status the caller should answer with, ``None`` when accepted."""
        return _VERDICT_STATUS[self]


_VERDICT_STATUS = {
    RequestVerdict.ACCEPTED: None,
    RequestVerdict.OUT_OF_ORDER: 500,
    RequestVerdict.NOT_IN_DIALOG: 481,
}


def _call_id(message: Message) -> str:
    call_id = message.call_id
    if call_id is None:
        raise ValueError("message has no Call-ID")
    return call_id


def _tag(message: Message, which: str) -> str:
    address = message.from_addr if which == "from" else message.to_addr
    if address is None:
        raise ValueError(f"message has no {which.capitalize()} header")
    return address.tag or ""


def _address(message: Message, which: str) -> Address:
    address = message.from_addr if which == "from" else message.to_addr
    if address is None or address.uri is None:
        raise ValueError(f"message has no usable {which.capitalize()} header")
    return address


def _contact_uri(message: Message) -> URI | None:
    for contact in message.contacts:
        if contact.uri is not None:
            return contact.uri
    return None


def _cseq_number(message: Message) -> int:
    cseq = message.cseq
    if cseq is None:
        raise ValueError("message has no CSeq")
    return cseq.number


@dataclass(eq=False)
class Dialog:
    """The state of one dialog (RFC 3261 §12) and the requests it sends.

    ``local_seq`` / ``remote_seq`` are ``None`` while "empty";
    ``route_set`` holds URIs in the order Route headers will list them;
    ``local_target`` is the Contact we put in target refresh requests.
    """

    log: ClassVar[Logger] = Logger()

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: URI
    remote_uri: URI
    remote_target: URI
    local_seq: int | None = None
    remote_seq: int | None = None
    route_set: tuple[URI, ...] = ()
    secure: bool = False
    local_target: URI | None = None
    is_uac: bool = True
    state: DialogState = DialogState.CONFIRMED

    # -- construction --------------------------------------------------------

    @classmethod
    def from_uac(cls, request: Request, response: Response, *, secure: bool | None = None) -> Dialog:
        """The dialog created by ``response`` to the ``request`` we sent (RFC 3261 §12.1.2).

        ``response`` is a 2xx (confirmed dialog) or a 101-199 with a To tag
        (early dialog).  The route set is its Record-Route, reversed; the
        remote target its Contact (the Request-URI we used when it has
        none).  ``secure`` defaults to whether the Request-URI is a SIPS URI
        (pass the truth when the request did not go over TLS).
        """
        status = response.status
        if not 101 <= status <= 299:
            raise ValueError(f"a {status} response does not create a dialog")
        remote_tag = _tag(response, "to")
        if status < 200 and not remote_tag:
            raise ValueError("a provisional response without To tag does not create a dialog")
        local_tag = _tag(request, "from")
        if not local_tag:
            raise ValueError("the request has no From tag")
        target = _contact_uri(response)
        if target is None:
            cls.log.warn("{status} response without Contact; remote target is the Request-URI",
                         status=status)
            target = request.uri
        return cls(
            call_id=_call_id(request),
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=_address(request, "from").uri,  # type: ignore[arg-type]
            remote_uri=_address(request, "to").uri,  # type: ignore[arg-type]
            remote_target=target,
            local_seq=_cseq_number(request),
            remote_seq=None,
            route_set=tuple(a.uri for a in reversed(response.record_routes) if a.uri is not None),
            secure=request.uri.scheme == "sips" if secure is None else secure,
            local_target=_contact_uri(request),
            is_uac=True,
            state=DialogState.CONFIRMED if status >= 200 else DialogState.EARLY,
        )

    @classmethod
    def from_uas(
        cls,
        request: Request,
        local_tag: str,
        *,
        local_target: URI | None = None,
        secure: bool | None = None,
        confirmed: bool = False,
    ) -> Dialog:
        """The dialog created by answering the received ``request`` (RFC 3261 §12.1.1).

        ``local_tag`` is the To tag we put in our responses (see
        :func:`switchd.sip.message.new_tag`); ``local_target`` the Contact
        we send.  The route set is the request's Record-Route in order; the
        remote target its Contact (its From URI when it has none).  The
        dialog is early until :meth:`confirm` (call it when sending a 2xx)
        unless ``confirmed``.  ``secure`` defaults to whether the
        Request-URI is a SIPS URI (pass the truth when it did not arrive
        over TLS).
        """
        if not local_tag:
            raise ValueError("a UAS dialog needs a local tag")
        remote = _address(request, "from")
        target = _contact_uri(request)
        if target is None:
            cls.log.warn("{method} without Contact; remote target is the From URI", method=request.method)
            target = remote.uri
        return cls(
            call_id=_call_id(request),
            local_tag=local_tag,
            remote_tag=remote.tag or "",
            local_uri=_address(request, "to").uri,  # type: ignore[arg-type]
            remote_uri=remote.uri,  # type: ignore[arg-type]
            remote_target=target,  # type: ignore[arg-type]
            local_seq=None,
            remote_seq=_cseq_number(request),
            route_set=tuple(a.uri for a in request.record_routes if a.uri is not None),
            secure=request.uri.scheme == "sips" if secure is None else secure,
            local_target=local_target,
            is_uac=False,
            state=DialogState.CONFIRMED if confirmed else DialogState.EARLY,
        )

    @property
    def id(self) -> DialogId:
        """The key of this dialog in lookup tables."""
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    def confirm(self) -> None:
        """Move an early dialog to "confirmed" (a 2xx was sent or received)."""
        if self.state is DialogState.EARLY:
            self.state = DialogState.CONFIRMED

    def terminate(self) -> None:
        """Mark the dialog as over (BYE, non-2xx final on an early dialog...)."""
        self.state = DialogState.TERMINATED

    # -- requests we send ------------------------------------------------------

    def target_and_routes(self) -> tuple[URI, tuple[URI, ...]]:
        """Request-URI and Route values for the next request (RFC 3261 §12.2.1.1).

        Empty route set: the remote target and no Route.  Loose routing
        (``lr`` on the first route): the remote target and the whole route
        set.  Strict routing: the first route (without the parameters and
        headers a Request-URI may not carry) and the rest of the route set
        followed by the remote target.
        """
        routes = self.route_set
        if not routes:
            return self.remote_target, ()
        first = routes[0]
        if first.lr:
            return self.remote_target, routes
        request_uri = first.without_param("method")._replace(headers=())
        return request_uri, routes[1:] + (self.remote_target,)

    def create_request(
        self,
        method: str,
        *,
        cseq: int | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        max_forwards: int = 70,
    ) -> Request:
        """Build an in-dialog request (RFC 3261 §12.2.1.1), without Via.

        To, From, Call-ID, CSeq, Max-Forwards, Route and, for target refresh
        requests when ``local_target`` is known, Contact are set; ``headers``
        are appended.  The local CSeq is incremented (or initialised at
        random when empty).  ACK takes ``cseq``, the number of the INVITE
        it acknowledges, and leaves the local CSeq alone; CANCEL is refused
        (use ``ClientTransaction.cancel``, which copies the INVITE's branch).
        """
        if self.state is DialogState.TERMINATED:
            raise ValueError("the dialog is terminated")
        if method == "CANCEL":
            raise ValueError("CANCEL is built from the INVITE transaction, not the dialog")
        if method == "ACK":
            if cseq is None:
                raise ValueError("ACK needs the CSeq number of its INVITE")
            number = cseq
        else:
            if cseq is not None:
                raise ValueError("only ACK takes an explicit CSeq number")
            if self.local_seq is None:
                number = secrets.randbelow(_INITIAL_CSEQ_LIMIT) + 1
            else:
                number = self.local_seq + 1
            self.local_seq = number
        request_uri, routes = self.target_and_routes()
        request = Request(method, request_uri)
        request.add("Max-Forwards", str(max_forwards))
        for route in routes:
            request.add("Route", f"<{route}>")
        request.add("From", Address(self.local_uri).with_tag(self.local_tag))
        remote = Address(self.remote_uri)
        request.add("To", remote.with_tag(self.remote_tag) if self.remote_tag else remote)
        request.add("Call-ID", self.call_id)
        request.add("CSeq", f"{number} {method}")
        if self.local_target is not None and method in TARGET_REFRESH_METHODS:
            request.add("Contact", f"<{self.local_target}>")
        for name, value in headers:
            request.add(name, value)
        request.body = bytes(body)
        return request

    def ack_for(self, invite_cseq: int, *, headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> Request:
        """The ACK for a 2xx to the INVITE whose CSeq number was ``invite_cseq`` (§13.2.2.4)."""
        return self.create_request("ACK", cseq=invite_cseq, headers=headers, body=body)

    def receive_response(self, response: Response) -> None:
        """Update the dialog from a response to a request we sent in it.

        A 2xx confirms an early dialog (the UAC then recomputes the route
        set from the 2xx, §13.2.2.4) and, for target refresh requests,
        replaces the remote target with its Contact (§12.2.1.2), as does a
        provisional response on an early dialog.  A non-2xx final to the
        INVITE of an early dialog, or a 481 or 408 to any request,
        terminates the dialog.  Raises ``ValueError`` for a response of
        another dialog.
        """
        other = DialogId.of_received_response(response)
        if (other.call_id, other.local_tag) != (self.call_id, self.local_tag) or (
            self.remote_tag and other.remote_tag != self.remote_tag
        ):
            raise ValueError("the response belongs to another dialog")
        status = response.status
        cseq = response.cseq
        method = cseq.method if cseq is not None else ""
        if 200 <= status < 300:
            if self.state is DialogState.EARLY:
                self.state = DialogState.CONFIRMED
                if self.is_uac:
                    self.route_set = tuple(
                        a.uri for a in reversed(response.record_routes) if a.uri is not None
                    )
            if method in TARGET_REFRESH_METHODS:
                self._refresh_target(response)
        elif status < 200:
            if self.state is DialogState.EARLY and status > 100:
                self._refresh_target(response)
        elif status in (408, 481) or (self.state is DialogState.EARLY and method == "INVITE"):
            self.state = DialogState.TERMINATED

    def _refresh_target(self, message: Message) -> None:
        target = _contact_uri(message)
        if target is not None:
            self.remote_target = target

    # -- requests we receive ------------------------------------------------------

    def receive_request(self, request: Request) -> RequestVerdict:
        """Check a request received in this dialog and update the state (RFC 3261 §12.2.2).

        Returns :attr:`RequestVerdict.NOT_IN_DIALOG` when Call-ID or tags do
        not match (or the dialog is over), :attr:`RequestVerdict.OUT_OF_ORDER`
        when its CSeq is below the remote sequence number, else records the
        CSeq, replaces the remote target with the Contact of a target
        refresh request and returns :attr:`RequestVerdict.ACCEPTED`.  ACK
        and CANCEL carry the CSeq of their INVITE and are not checked
        against it.
        """
        if self.state is DialogState.TERMINATED:
            return RequestVerdict.NOT_IN_DIALOG
        try:
            if DialogId.of_received_request(request) != self.id:
                return RequestVerdict.NOT_IN_DIALOG
            number = _cseq_number(request)
        except ValueError:
            return RequestVerdict.NOT_IN_DIALOG
        if request.method in ("ACK", "CANCEL"):
            return RequestVerdict.ACCEPTED
        if self.remote_seq is not None and number < self.remote_seq:
            return RequestVerdict.OUT_OF_ORDER
        self.remote_seq = number
        if request.method in TARGET_REFRESH_METHODS:
            self._refresh_target(request)
        return RequestVerdict.ACCEPTED
