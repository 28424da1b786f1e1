"""The SMS engine: customers' messages in, upstream links out, receipts and MO back.

Protocol adapters (the SMPP server, the HTTP SMS API) hand the engine what
a customer submitted; the engine authorises it, routes it
(``Router.route_message``), splits it for the chosen link, stores message
and parts durably and charges each part once, all in one commit, and only
then answers (:meth:`MessageEngine.submit`). The stored parts go to the
link (:class:`~switchd.smpp.client.SmppLinkManager`), which sends them and
reports back through the :class:`~switchd.smpp.client.LinkSink` methods
here: SMSC ids, refusals, receipts, MO. State changes are events on the bus
(:class:`MessageStateChanged`); receipts and MO for customers' ESMEs are
stored in the outbox and pushed to their binds (:meth:`MessageEngine.attach`).

Writes go through a :class:`~switchd.store.groupcommit.GroupCommit`: whatever
arrives while a transaction runs is committed together in the next, in
order, so thousands of messages a second cost a few commits, and a
receipt's lookup always sees the SMSC id stored for its part before it.
"""

from __future__ import annotations

import datetime
import re
import secrets
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.exc import SQLAlchemyError
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..billing.ledger import LedgerError
from ..core.events import Event, EventBus
from ..core.ratelimit import RateLimiter
from ..smpp import concat, dlr, gsm, pdu
from ..smpp.client import LinkSettings, OutboundPart
from . import store
from .store import Delivery, MessageInfo

__all__ = [
    "Accepted",
    "Delivery",
    "Links",
    "MessageEngine",
    "MessageInfo",
    "MessageOrigin",
    "MessageReceived",
    "MessageRefused",
    "MessageStateChanged",
    "Submission",
    "build_sms",
    "is_presplit",
    "message_text",
    "split_for_link",
]

UTC = datetime.UTC

#: A destination: digits, with an optional leading '+' (SMPP addresses hold 20 characters).
_DESTINATION = re.compile(r"\+?[0-9]{1,20}")
#: Longest source address: an SMPP address without its NUL.
MAX_SOURCE = 20
#: TLVs of a customer's pre-split part passed on upstream.
SAR_TLVS = ("sar_msg_ref_num", "sar_total_segments", "sar_segment_seqnum")
#: What a failing database raises (through Database.run): answered with ESME_RSYSERR / 503.
STORAGE_ERRORS = (SQLAlchemyError, OSError, LedgerError)
#: ``replace``'s data_coding meaning "the message's own" (replace_sm has no data_coding).
KEEP_DATA_CODING = -1


# -- the contract -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageOrigin:
    """Who submitted a message."""

    kind: str  # "smpp" (a customer ESME), "http", or "switch" (its own replies; connection_id 0)
    service_id: int
    account_id: int
    connection_id: int  # smpp_connections.id or http_connections.id


@dataclass(frozen=True)
class Submission:
    """A message as a customer gave it."""

    source: str
    destination: str
    content: bytes  # short_message or message_payload as received (HTTP: encoded text)
    data_coding: int
    esm_class: int = 0  # UDHI kept: a customer's pre-split part passes as one part
    registered_delivery: int = 0
    tlvs: dict = field(default_factory=dict)  # as decoded by switchd.smpp.pdu (sar_*, etc.)
    schedule_delivery_time: str = ""
    validity_period: str = ""
    client_reference: str | None = None  # HTTP: the caller's own id, echoed in callbacks


class MessageRefused(Exception):
    """A message (or request) switchd does not take, with the answers to give.

    ``status`` is the SMPP command_status, ``http_status`` the HTTP status
    and ``reason`` a short text for the customer.
    """

    def __init__(self, status: int, http_status: int, reason: str) -> None:
        super().__init__(f"{pdu.status_name(status)} / {http_status}: {reason}")
        self.status = status
        self.http_status = http_status
        self.reason = reason


@dataclass(frozen=True)
class Accepted:
    """A message stored: ``message_id`` is our id as sent to the customer."""

    message_id: str
    parts: int


@dataclass(frozen=True)
class MessageStateChanged(Event):
    """A message was accepted (ENROUTE) or reached its final state."""

    message_id: str
    account_id: int
    service_id: int
    origin_kind: str
    connection_id: int
    state: str
    parts: int
    error_code: int | None
    source: str
    destination: str
    client_reference: str | None


@dataclass(frozen=True)
class MessageReceived(Event):
    """An MO for a customer reached by HTTP (its service has no SMPP connection)."""

    message_id: str
    account_id: int
    service_id: int
    origin_kind: str  # "http"
    connection_id: int  # http_connections.id
    source: str
    destination: str
    content: bytes
    data_coding: int
    esm_class: int
    text: str


class Links(Protocol):
    """What the engine asks of the link manager."""

    def settings_of(self, link_id: int) -> LinkSettings | None: ...

    def enqueue(self, link_id: int, parts: tuple[OutboundPart, ...]) -> None: ...

    def withdraw(self, link_id: int, part_ids: tuple[int, ...]) -> bool: ...

    def restore(self, link_id: int, part_ids: tuple[int, ...]) -> None: ...

    def bound_links(self) -> list[int]: ...


# -- pure helpers ---------------------------------------------------------------------------------


def message_text(content: bytes, data_coding: int, esm_class: int = 0) -> str:
    """The text of a message for people (records, receipts, callbacks).

    The UDH is left out; binary content is shown in hex; octets a coding
    does not define become U+FFFD.
    """
    payload = content
    if esm_class & pdu.ESM_UDHI:
        try:
            _, payload = concat.parse_udh(content)
        except concat.UdhError:
            payload = content
    try:
        if gsm.alphabet(data_coding) == gsm.BINARY:
            return payload.hex()
        return gsm.decode(data_coding, payload, errors="replace")
    except gsm.CodingError:
        return payload.hex()


def is_presplit(submission: Submission) -> bool:
    """A customer's own part of a long message (UDH, or all three SAR TLVs)."""
    return bool(submission.esm_class & pdu.ESM_UDHI) or all(name in submission.tlvs for name in SAR_TLVS)


def split_for_link(
    settings: LinkSettings,
    submission: Submission,
    origin_kind: str,
    reference: int,
) -> tuple[store.NewPart, ...]:
    """The parts of a message as this link sends them.

    A customer's pre-split part stays one part (its UDH or SAR TLVs kept).
    Otherwise the link's ``message_format`` ``ucs2`` re-encodes text as UCS2,
    and the content is cut by the link's ``split_mode``,
    ``max_content_length`` and ``concatenation_mode`` (``concat.split``).
    Raises ``concat.TooLong`` when the link cannot carry it (longer than
    ``max_message_length``, or too long for its split mode) and
    ``gsm.CodingError`` for content the coding cannot hold.
    """
    content = bytes(submission.content)
    data_coding = submission.data_coding
    registered = settings.upstream_registered_delivery(submission.registered_delivery, origin_kind == "http")
    data_sm = settings.pdu_type == "data_sm"
    if len(content) > settings.max_message_length:
        raise concat.TooLong(
            f"{len(content)} octets, link {settings.name} takes at most {settings.max_message_length}",
            len(content),
            settings.max_message_length,
        )
    if is_presplit(submission):
        tlvs = {name: submission.tlvs[name] for name in SAR_TLVS if name in submission.tlvs}
        return (
            store.NewPart(
                number=1,
                total=1,
                short_message=content,
                in_payload=data_sm or len(content) > pdu.SM_MAX_LENGTH,
                data_coding=data_coding,
                esm_class=submission.esm_class & pdu.ESM_UDHI,
                registered_delivery=registered,
                tlvs=tlvs,
            ),
        )
    if settings.message_format == "ucs2" and gsm.alphabet(data_coding) not in (gsm.BINARY, gsm.UCS2):
        text = gsm.decode(data_coding, content)
        content = text.encode("utf-16-be", "surrogatepass")
        data_coding = gsm.DC_UCS2
    parts = concat.split(
        content,
        data_coding,
        settings.split_mode,
        settings.max_content_length,
        concat=settings.concatenation_mode,
        reference=reference,
    )
    out = []
    for part in parts:
        tlvs = dict(part.tlvs)
        payload = tlvs.pop("message_payload", None)
        short_message = payload if payload is not None else part.short_message
        out.append(
            store.NewPart(
                number=part.number,
                total=part.total,
                short_message=short_message,
                in_payload=data_sm or payload is not None,
                data_coding=part.data_coding,
                esm_class=part.esm_class,
                registered_delivery=registered,
                tlvs=tlvs,
            )
        )
    return tuple(out)


def _refused(rejected: store.Rejected) -> MessageRefused:
    if rejected.sip_status == 402:
        return MessageRefused(pdu.ESME_RX_T_APPN, 402, rejected.reason)
    if rejected.sip_status in (404, 484):
        return MessageRefused(pdu.ESME_RINVDSTADR, 400, rejected.reason)
    if rejected.sip_status == 429:
        return MessageRefused(pdu.ESME_RTHROTTLED, 429, rejected.reason)
    return MessageRefused(pdu.ESME_RX_P_APPN, 403, rejected.reason)


# -- customers' ESMEs ----------------------------------------------------------------------------


class _Subscriber:
    """The binds of one SMPP connection and its deliveries in memory."""

    def __init__(self, connection_id: int) -> None:
        self.connection_id = connection_id
        self.pushes: list[Callable[[Delivery], Deferred]] = []
        self.turn = 0
        self.queue: deque[Delivery] = deque()
        self.in_flight: set[int] = set()
        self.known: set[int] = set()  # queued, in flight, retrying, or done not yet committed
        self.committing: set[int] = set()
        self.failures: dict[int, int] = {}
        self.retries: dict[int, IDelayedCall] = {}
        self.loading = False
        self.settled_while_loading: set[int] = set()
        self.after = 0
        self.more = True  # the database may hold deliveries the memory queue does not

    def next_push(self) -> Callable[[Delivery], Deferred]:
        push = self.pushes[self.turn % len(self.pushes)]
        self.turn += 1
        return push


# -- the engine -------------------------------------------------------------------------------


class MessageEngine(Service):
    """Messages of a node: submit, query, cancel, replace; the upstream links' sink;
    the customers' outbox.

    ``db`` is a ``Database``; ``router`` has ``route_message``; ``links``
    (the ``SmppLinkManager``, set later with ``use_links`` when built after
    the engine) sends the parts. Options: ``validity_seconds`` (a message
    without a validity period expires after it; a longer one is cut to it),
    ``restriction_window_seconds`` (the anti-fraud sending restriction counts
    messages per destination number per window), ``deliver_window``
    (deliveries in flight per SMPP connection), ``max_pending`` (operations
    waiting for the database before submits are throttled), ``batch_size``
    and ``max_in_flight`` (the group commit's largest batch and concurrent
    transactions: 1 on SQLite, 2 on PostgreSQL by default).
    """

    log = Logger()

    def __init__(
        self,
        db: Any,
        clock: IReactorTime,
        bus: EventBus,
        limiter: RateLimiter,
        router: Any,
        *,
        node: str,
        links: Links | None = None,
        batch_size: int = 1000,
        max_pending: int = 20000,
        validity_seconds: int = 48 * 3600,
        restriction_window_seconds: int = 86400,
        deliver_window: int = 16,
        outbox_page: int = 500,
        outbox_poll_seconds: float = 5.0,
        sweep_seconds: float = 60.0,
        receipt_wait_seconds: float = 6.0,
        retry_seconds: float = 1.0,
        max_in_flight: int | None = None,
        rng: secrets.SystemRandom | Any = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.bus = bus
        self.limiter = limiter
        self.router = router
        # Texts for switchd itself (SMS callback commands): ``consume(source,
        # destination, text) -> bool`` takes those sent to its access numbers.
        self.commands: Any = None
        self.node = node
        self.links = links
        self.validity_seconds = validity_seconds
        self.window_seconds = restriction_window_seconds
        self.deliver_window = deliver_window
        self.outbox_page = outbox_page
        self.outbox_poll_seconds = outbox_poll_seconds
        self.sweep_seconds = sweep_seconds
        self.receipt_wait_seconds = receipt_wait_seconds
        self.retry_seconds = retry_seconds
        self.rng = rng if rng is not None else secrets.SystemRandom()
        self.max_pending = max_pending
        self._subscribers: dict[int, _Subscriber] = {}
        self._loops: list[LoopingCall] = []
        self._stopped = False
        # Each operation is one function object, so the group commit can run
        # a batch of the same kind as one call.
        self._store_op = self._store_messages
        self._sent_op = store.mark_sent
        self._finish_op = store.finish_many
        self._receipt_op = store.record_receipts
        self._mo_op = store.store_mo
        self._done_op = store.outbox_done
        self._attempted_op = store.outbox_attempted
        self._cancel_op = self._cancel_many
        self._replace_op = self._replace_many
        # New messages have a lane of their own, and so have the deliveries the
        # customers acknowledged: on PostgreSQL their commits run beside those
        # of SMSC ids and receipts (which stay in order in the default lane).
        self.batcher = store.GroupCommit(
            db,
            max_batch=batch_size,
            max_pending=max_pending * 5,
            max_in_flight=max_in_flight,
            lanes={self._store_op: "submit", self._done_op: "outbox", self._attempted_op: "outbox"},
        )

    def _store_messages(self, conn: Any, items: list[store.NewMessage]) -> list[Any]:
        return store.store_messages(conn, items, self.node, self.window_seconds)

    @staticmethod
    def _cancel_many(conn: Any, items: list[tuple[store.ChangeTarget, datetime.datetime]]) -> list[Any]:
        return [store.cancel_message(conn, target, now) for target, now in items]

    @staticmethod
    def _replace_many(conn: Any, items: list[tuple[Any, ...]]) -> list[bool]:
        return [store.replace_message(conn, *item) for item in items]

    def use_links(self, links: Links) -> None:
        self.links = links

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), UTC)

    # -- service ------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopped = False
        for interval, work in ((self.sweep_seconds, self.sweep), (self.outbox_poll_seconds, self._poll_outboxes)):
            loop = LoopingCall(work)
            loop.clock = self.clock
            loop.start(interval, now=False)
            self._loops.append(loop)

    def stopService(self) -> Deferred:
        """Stop the timers and the outbox; fires once every pending write is committed."""
        super().stopService()
        self._stopped = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        for subscriber in list(self._subscribers.values()):
            self._close_subscriber(subscriber)
        self._subscribers.clear()
        return self.batcher.drained()

    # -- submit ---------------------------------------------------------------------

    def _validate(self, submission: Submission) -> None:
        if not _DESTINATION.fullmatch(submission.destination or ""):
            raise MessageRefused(pdu.ESME_RINVDSTADR, 400, "the destination must be a number")
        if len(submission.source) > MAX_SOURCE:
            raise MessageRefused(pdu.ESME_RINVSRCADR, 400, f"the source is longer than {MAX_SOURCE} characters")
        if not 0 <= submission.data_coding <= 0xFF:
            raise MessageRefused(pdu.ESME_RINVDCS, 400, "data_coding out of range")
        if pdu.message_type(submission.esm_class) != pdu.ESM_TYPE_DEFAULT:
            raise MessageRefused(pdu.ESME_RINVESMCLASS, 400, "a customer message cannot be a receipt")

    def _times(
        self, submission: Submission, now: datetime.datetime
    ) -> tuple[datetime.datetime | None, datetime.datetime]:
        try:
            scheduled = pdu.parse_time(submission.schedule_delivery_time, now)
        except ValueError:
            raise MessageRefused(pdu.ESME_RINVSCHED, 400, "bad schedule_delivery_time") from None
        try:
            validity = pdu.parse_time(submission.validity_period, now)
        except ValueError:
            raise MessageRefused(pdu.ESME_RINVEXPIRY, 400, "bad validity_period") from None
        longest = now + datetime.timedelta(seconds=self.validity_seconds)
        if scheduled is not None and scheduled <= now:
            scheduled = None
        start = scheduled or now
        expires = min(validity, longest) if validity is not None else longest
        if expires <= start:
            raise MessageRefused(pdu.ESME_RINVEXPIRY, 400, "the message would expire before it is sent")
        return scheduled, expires

    async def submit(self, origin: MessageOrigin, submission: Submission) -> Accepted:
        """Authorise, route, split, store and charge a message; answer once it is committed.

        Raises :class:`MessageRefused`: ``ESME_RINVDSTADR``/400 for a bad
        number, no rate or no route, ``ESME_RINVSRCADR``/400,
        ``ESME_RINVMSGLEN``/400 when no link can carry it, ``ESME_RINVDCS``/400,
        ``ESME_RINVSCHED``/``ESME_RINVEXPIRY``/400, ``ESME_RX_T_APPN``/402
        for a prepaid account that cannot pay every part,
        ``ESME_RX_P_APPN``/403 for an inactive service, account or customer,
        ``ESME_RTHROTTLED``/429 for the sending restriction or when the
        database lags, ``ESME_RSYSERR``/503 when it cannot be written.
        """
        self._validate(submission)
        body = message_text(submission.content, submission.data_coding, submission.esm_class)
        if self.commands is not None:
            owner = self.commands.access_account(submission.destination)
            if owner is not None:
                # A text to a callback access number is a command for switchd, not a message to
                # send on; a customer's system may only send to its own account's access numbers,
                # as the source number it gives is not proof of who is texting.
                if owner != origin.account_id:
                    raise MessageRefused(pdu.ESME_RINVDSTADR, 403,
                                         "the access number belongs to another account")
                self.commands.consume(submission.source, submission.destination, body)
                return Accepted(message_id=str(uuid.uuid4()), parts=1)
        now = self.now()
        scheduled, expires = self._times(submission, now)
        if self.batcher.pending >= self.max_pending:
            raise MessageRefused(pdu.ESME_RTHROTTLED, 429, "switchd is busy, try again")
        try:
            candidates = await self.router.route_message(origin.service_id, submission.source, submission.destination)
            if not candidates:
                candidates = await self.router.route_message(
                    origin.service_id, submission.source, submission.destination, include_down=True
                )
        except STORAGE_ERRORS as error:
            self.log.warn(  # noqa: G010 - twisted.logger has warn(), not warning()
                "cannot route a message of service {service}: {error}", service=origin.service_id, error=error
            )
            raise MessageRefused(pdu.ESME_RSYSERR, 503, "routing is not available") from None
        if not candidates:
            raise MessageRefused(pdu.ESME_RINVDSTADR, 400, "no route to the destination")
        chosen, settings, parts = self._choose(candidates, origin, submission)
        source = submission.source or (settings.default_sender_id or "")
        message_id = str(uuid.uuid4())
        item = store.NewMessage(
            message_id=message_id,
            origin_kind=origin.kind,
            service_id=origin.service_id,
            account_id=origin.account_id,
            connection_id=origin.connection_id,
            client_reference=submission.client_reference,
            source=source[:MAX_SOURCE],
            destination=submission.destination,
            body=body,
            data_coding=submission.data_coding,
            esm_class=submission.esm_class,
            registered_delivery=submission.registered_delivery,
            link_id=chosen.link_id,
            parts=parts,
            submitted_at=now,
            scheduled_at=scheduled,
            expires_at=expires,
        )
        try:
            result = await self.batcher.submit(self._store_op, item)
        except store.Overloaded:
            raise MessageRefused(pdu.ESME_RTHROTTLED, 429, "switchd is busy, try again") from None
        except STORAGE_ERRORS as error:
            self.log.warn(  # noqa: G010 - twisted.logger has warn(), not warning()
                "cannot store a message of service {service}: {error}", service=origin.service_id, error=error
            )
            raise MessageRefused(pdu.ESME_RSYSERR, 503, "the message cannot be stored now") from None
        if isinstance(result, store.Rejected):
            raise _refused(result)
        if self.links is not None:
            self.links.enqueue(chosen.link_id, result.parts)
        self.bus.publish(
            MessageStateChanged(
                at=self.clock.seconds(),
                message_id=message_id,
                account_id=origin.account_id,
                service_id=origin.service_id,
                origin_kind=origin.kind,
                connection_id=origin.connection_id,
                state="ENROUTE",
                parts=len(parts),
                error_code=None,
                source=item.source,
                destination=item.destination,
                client_reference=submission.client_reference,
            )
        )
        return Accepted(message_id, len(parts))

    def _choose(
        self, candidates: list[Any], origin: MessageOrigin, submission: Submission
    ) -> tuple[Any, LinkSettings, tuple[store.NewPart, ...]]:
        """The first candidate whose link can carry the message, with its parts."""
        too_long: concat.TooLong | None = None
        for candidate in candidates:
            settings = self.links.settings_of(candidate.link_id) if self.links is not None else None
            if settings is None:
                continue
            reference = self.rng.randrange(0x10000 if settings.concatenation_mode == "sar" else 0x100)
            try:
                return candidate, settings, split_for_link(settings, submission, origin.kind, reference)
            except concat.TooLong as error:
                too_long = error
            except gsm.CodingError as error:
                raise MessageRefused(pdu.ESME_RINVDCS, 400, f"the content is not valid: {error}") from None
        if too_long is not None:
            raise MessageRefused(pdu.ESME_RINVMSGLEN, 400, f"the message is too long: {too_long}")
        raise MessageRefused(pdu.ESME_RINVDSTADR, 400, "no route to the destination")

    # -- query, cancel, replace ------------------------------------------------------------

    async def query(self, origin: MessageOrigin, message_id: str) -> MessageInfo | None:
        """A message of the origin's account; None if there is none by that id."""
        try:
            return await self.db.run(store.find_message, origin.account_id, message_id)
        except STORAGE_ERRORS as error:
            self.log.warn(  # noqa: G010 - twisted.logger has warn(), not warning()
                "cannot read message {id}: {error}", id=message_id, error=error
            )
            raise MessageRefused(pdu.ESME_RSYSERR, 503, "messages cannot be read now") from None

    async def _target(self, origin: MessageOrigin, message_id: str) -> store.ChangeTarget | None:
        try:
            target = await self.db.run(store.change_target, origin.account_id, message_id)
        except STORAGE_ERRORS as error:
            self.log.warn(  # noqa: G010 - twisted.logger has warn(), not warning()
                "cannot read message {id}: {error}", id=message_id, error=error
            )
            raise MessageRefused(pdu.ESME_RSYSERR, 503, "messages cannot be read now") from None
        if target is None or not target.queued or target.node != self.node:
            return None  # sent already, finished, or queued on another node
        return target

    async def cancel(self, origin: MessageOrigin, message_id: str) -> bool:
        """Delete a message none of whose parts has left switchd; False otherwise.

        Parts never sent are refunded; the message ends DELETED (with a
        receipt if the customer asked for failure receipts).
        """
        target = await self._target(origin, message_id)
        if target is None:
            return False
        links = self.links
        if target.link_id is not None and links is not None and not links.withdraw(target.link_id, target.part_ids):
            return False
        try:
            outcome = await self.batcher.submit(self._cancel_op, (target, self.now()))
        except STORAGE_ERRORS as error:
            self.log.warn(  # noqa: G010 - twisted.logger has warn(), not warning()
                "cannot cancel message {id}: {error}", id=message_id, error=error
            )
            raise MessageRefused(pdu.ESME_RSYSERR, 503, "the message cannot be cancelled now") from None
        finally:
            if target.link_id is not None and links is not None:
                links.restore(target.link_id, target.part_ids)
        if outcome is None:
            return False
        self._publish(outcome)
        return True

    async def cancel_from(self, origin: MessageOrigin, source: str, destination: str | None) -> int:
        """Cancel the origin's messages from ``source`` (to ``destination``) none of whose
        parts has left switchd (SMPP's cancel_sm without a message_id); how many were."""
        try:
            ids = await self.db.run(store.pending_message_ids, origin.account_id, origin.kind,
                                    origin.connection_id, source, destination)
        except STORAGE_ERRORS as error:
            self.log.warn(  # noqa: G010 - twisted.logger has warn(), not warning()
                "cannot read messages from {source}: {error}", source=source, error=error
            )
            raise MessageRefused(pdu.ESME_RSYSERR, 503, "messages cannot be read now") from None
        cancelled = 0
        for message_id in ids:
            if await self.cancel(origin, message_id):
                cancelled += 1
        return cancelled

    async def replace(self, origin: MessageOrigin, message_id: str, content: bytes, data_coding: int) -> bool:
        """New content for a message none of whose parts has left switchd.

        The new content is split for the same link and must give as many
        parts as the old one (each was charged); False otherwise.
        ``data_coding`` :data:`KEEP_DATA_CODING` keeps the message's own.
        """
        target = await self._target(origin, message_id)
        if target is None or target.link_id is None or self.links is None:
            return False
        settings = self.links.settings_of(target.link_id)
        if settings is None:
            return False
        if data_coding == KEEP_DATA_CODING:
            data_coding = target.data_coding
        submission = Submission(
            source="", destination="0", content=content, data_coding=data_coding,
            registered_delivery=target.registered_delivery,
        )
        reference = self.rng.randrange(0x10000 if settings.concatenation_mode == "sar" else 0x100)
        try:
            parts = split_for_link(settings, submission, origin.kind, reference)
        except (concat.TooLong, gsm.CodingError):
            return False
        if len(parts) != len(target.part_ids):
            return False
        links = self.links
        if not links.withdraw(target.link_id, target.part_ids):
            return False
        try:
            return await self.batcher.submit(
                self._replace_op,
                (target, parts, message_text(content, data_coding), data_coding, self.now()),
            )
        except STORAGE_ERRORS as error:
            self.log.warn(  # noqa: G010 - twisted.logger has warn(), not warning()
                "cannot replace message {id}: {error}", id=message_id, error=error
            )
            raise MessageRefused(pdu.ESME_RSYSERR, 503, "the message cannot be replaced now") from None
        finally:
            links.restore(target.link_id, target.part_ids)

    # -- the links' sink ----------------------------------------------------------------------

    def load_parts(self, link_id: int, after: int, limit: int) -> Deferred:
        return self.db.run(store.load_parts, self.node, link_id, after, limit, self.now())

    def part_sent(self, link_id: int, part: OutboundPart, upstream_id: str) -> Deferred:
        return self._durably(self._sent_op, store.SentPart(part.part_id, part.message_pk, upstream_id, self.now()))

    def part_failed(self, link_id: int, part: OutboundPart, state: str, error_code: int | None) -> Deferred:
        d = self._durably(self._finish_op, (store.PartResult(part.part_id, state, error_code), self.now()))
        d.addCallback(self._publish)
        return d

    def receipt_received(self, link_id: int, receipt: dlr.UpstreamReceipt) -> Deferred:
        """Store a receipt's outcome; fires with the status for the SMSC once it is committed.

        A receipt that matches no part yet is looked up again for
        ``receipt_wait_seconds`` (an SMSC may send it before the
        submit_sm_resp is stored), then acknowledged and dropped as not ours.
        """
        return self._match_receipt(link_id, receipt, 0.0)

    # Callbacks, not a coroutine: this runs for every receipt, and a coroutine
    # driven through a Deferred costs several times a plain callback.

    def _match_receipt(self, link_id: int, receipt: dlr.UpstreamReceipt, waited: float) -> Deferred:
        try:
            d = self.batcher.submit(self._receipt_op, store.ReceiptItem(link_id, receipt, self.now()))
        except store.Overloaded as error:
            return fail(error)
        d.addCallback(self._receipt_stored, link_id, receipt, waited)
        return d

    def _receipt_stored(
        self, result: store.ReceiptResult, link_id: int, receipt: dlr.UpstreamReceipt, waited: float
    ) -> int | Deferred:
        if result.matched:
            self._publish(result.outcome)
            return pdu.ESME_ROK
        if waited >= self.receipt_wait_seconds:
            self.log.info(
                "link {link}: receipt for unknown message {id} ({state}) dropped",
                link=link_id,
                id=receipt.message_id,
                state=receipt.state,
            )
            return pdu.ESME_ROK
        return deferLater(
            self.clock, self.retry_seconds, self._match_receipt, link_id, receipt, waited + self.retry_seconds
        )

    def message_received(self, link_id: int, message: dlr.UpstreamMessage) -> Deferred:
        """Store an MO for the customer owning its destination; fires with the status to answer.

        An MO to a callback access number is a command (see ``commands``) and is not stored.
        """
        if self.commands is not None and self.commands.consume(
            message.source, message.destination, message_text(message.content, message.data_coding, message.esm_class)
        ):
            return succeed(pdu.ESME_ROK)
        item = store.MoItem(
            link_id=link_id,
            message=message,
            message_id=str(uuid.uuid4()),
            body=message_text(message.content, message.data_coding, message.esm_class),
            now=self.now(),
            node=self.node,
        )
        d = self.batcher.submit(self._mo_op, item)
        d.addCallback(self._mo_stored, item)
        return d

    def _mo_stored(self, stored: store.MoStored | None, item: store.MoItem) -> int:
        if stored is None:
            self.log.info(
                "MO to {destination} from link {link}: no customer owns the number",
                destination=item.message.destination,
                link=item.link_id,
            )
            return pdu.ESME_RINVDSTADR
        if stored.delivery is not None:
            self._deliver_new(stored.connection_id, stored.delivery)
        # Every MO is an event (an HTTP customer's callback hears of it there).
        self.bus.publish(
            MessageReceived(
                at=self.clock.seconds(),
                message_id=stored.message_id,
                account_id=stored.account_id,
                service_id=stored.service_id,
                origin_kind=stored.origin_kind,
                connection_id=stored.connection_id,
                source=item.message.source,
                destination=item.message.destination,
                content=item.message.content,
                data_coding=item.message.data_coding,
                esm_class=item.message.esm_class,
                text=item.body,
            )
        )
        return pdu.ESME_ROK

    def apply_outcome(self, op: Callable[[Any, list[Any]], list[store.Outcome]], item: Any) -> Deferred:
        """Commit ``op`` for ``item`` with the engine's other writes, then publish
        the :class:`~switchd.sms.store.Outcome` it gives (events, receipts for
        customers); fires with it. For changes made outside the engine, such as
        statuses a customer's system reported (``switchd.sms.survey``)."""
        try:
            d = self.batcher.submit(op, item)
        except store.Overloaded as error:
            return fail(error)

        def published(outcome: store.Outcome) -> store.Outcome:
            self._publish(outcome)
            return outcome

        return d.addCallback(published)

    def _durably(self, op: Callable[..., list[Any]], item: Any, attempt: int = 0) -> Deferred:
        """Commit ``item``, trying again with backoff while the database fails: an
        outcome that happened upstream must not be lost to a database outage."""
        try:
            d = self.batcher.submit(op, item)
        except store.Overloaded as error:
            d = fail(error)

        def failed(failure: Failure) -> Deferred | Failure:
            if self._stopped:
                return failure  # stopping: the part stays queued and is sent again after the restart
            delay = min(self.retry_seconds * 2**attempt, 30.0)
            self.log.warn(  # noqa: G010 - twisted.logger has warn(), not warning()
                "cannot store a link outcome ({error}); retrying in {delay} s",
                error=failure.getErrorMessage(),
                delay=delay,
            )
            return deferLater(self.clock, delay, self._durably, op, item, attempt + 1)

        d.addErrback(failed)
        return d

    def _publish(self, outcome: store.Outcome | None) -> None:
        if outcome is None:
            return
        at = self.clock.seconds()
        for change in outcome.events:
            self.bus.publish(MessageStateChanged(at=at, **change.__dict__))
        for connection_id, delivery in outcome.deliveries:
            self._deliver_new(connection_id, delivery)

    # -- housekeeping -----------------------------------------------------------------------

    def sweep(self) -> Deferred:
        """Expire this node's parts queued past their validity on links not bound
        now, and forget ended anti-fraud windows."""
        now = self.now()
        bound = self.links.bound_links() if self.links is not None else []
        d = self.db.run(store.expire_parts, self.node, now, bound)
        d.addCallback(self._publish)
        before = store.window_start(now, self.window_seconds) - datetime.timedelta(seconds=self.window_seconds)
        d.addCallback(lambda _: self.db.run(store.prune_counts, before))
        d.addErrback(lambda f: self.log.warn(  # noqa: G010 - twisted.logger has warn(), not warning()
     "SMS sweep failed: {error}", error=f.getErrorMessage())
 )
        return d

    # -- the outbox -----------------------------------------------------------------------------

    def attach(self, connection_id: int, push: Callable[[Delivery], Deferred]) -> Callable[[], None]:
        """Push this SMPP connection's receipts and MO through ``push`` (a bind that receives).

        Stored deliveries first, then new ones as they happen; ``push``'s
        Deferred fires when the ESME answered deliver_sm_resp OK (the row is
        then marked done) and errbacks otherwise (kept, pushed again after a
        backoff or on the next bind). Several binds of one connection take
        turns. Returns the function that detaches this bind.
        """
        subscriber = self._subscribers.get(connection_id)
        if subscriber is None:
            subscriber = self._subscribers[connection_id] = _Subscriber(connection_id)
        subscriber.pushes.append(push)
        self._load_outbox(subscriber, force=True)
        self._pump_outbox(subscriber)

        def detach() -> None:
            if push in subscriber.pushes:
                subscriber.pushes.remove(push)
            if not subscriber.pushes and self._subscribers.get(connection_id) is subscriber:
                del self._subscribers[connection_id]
                self._close_subscriber(subscriber)

        return detach

    def _close_subscriber(self, subscriber: _Subscriber) -> None:
        for timer in subscriber.retries.values():
            if timer.active():
                timer.cancel()
        subscriber.retries.clear()
        subscriber.queue.clear()
        subscriber.pushes.clear()

    def _active(self, subscriber: _Subscriber) -> bool:
        return self._subscribers.get(subscriber.connection_id) is subscriber and bool(subscriber.pushes)

    def _poll_outboxes(self) -> None:
        for subscriber in list(self._subscribers.values()):
            self._load_outbox(subscriber, force=True)

    def _load_outbox(self, subscriber: _Subscriber, force: bool = False) -> None:
        if subscriber.loading or not self._active(subscriber):
            return
        if force:
            subscriber.more = True
        if not subscriber.more or len(subscriber.queue) >= self.outbox_page // 2:
            return
        subscriber.loading = True
        subscriber.settled_while_loading = set()
        d = self.db.run(store.load_outbox, subscriber.connection_id, subscriber.after, self.outbox_page)
        d.addCallbacks(self._outbox_loaded, self._outbox_load_failed, (subscriber,), errbackArgs=(subscriber,))

    def _outbox_loaded(self, deliveries: list[Delivery], subscriber: _Subscriber) -> None:
        subscriber.loading = False
        settled, subscriber.settled_while_loading = subscriber.settled_while_loading, set()
        subscriber.known.difference_update(settled)
        if not self._active(subscriber):
            return
        for delivery in deliveries:
            if delivery.id in subscriber.known or delivery.id in settled:
                continue
            subscriber.queue.append(delivery)
            subscriber.known.add(delivery.id)
        full = len(deliveries) >= self.outbox_page
        subscriber.after = deliveries[-1].id if full else 0
        subscriber.more = full
        self._pump_outbox(subscriber)

    def _outbox_load_failed(self, failure: Failure, subscriber: _Subscriber) -> None:
        subscriber.loading = False
        subscriber.known.difference_update(subscriber.settled_while_loading)
        subscriber.settled_while_loading = set()
        self.log.warn(  # noqa: G010 - twisted.logger has warn(), not warning()
            "cannot read the outbox of SMPP connection {connection}: {error}",
            connection=subscriber.connection_id,
            error=failure.getErrorMessage(),
        )

    def _deliver_new(self, connection_id: int, delivery: Delivery) -> None:
        subscriber = self._subscribers.get(connection_id)
        if subscriber is None or delivery.id in subscriber.known:
            return  # not bound here: it waits in the database for the next bind
        if len(subscriber.queue) >= self.outbox_page * 2:
            subscriber.more = True
            return  # memory stays bounded; the next load reads it
        subscriber.queue.append(delivery)
        subscriber.known.add(delivery.id)
        self._pump_outbox(subscriber)

    def _pump_outbox(self, subscriber: _Subscriber) -> None:
        while subscriber.queue and subscriber.pushes and len(subscriber.in_flight) < self.deliver_window:
            delivery = subscriber.queue.popleft()
            push = subscriber.next_push()
            subscriber.in_flight.add(delivery.id)
            try:
                d = push(delivery)
            except Exception:  # noqa: BLE001 - a push that raises is a failed push, retried later
                d = fail()
            d.addCallbacks(
                self._pushed, self._push_failed, (subscriber, delivery), errbackArgs=(subscriber, delivery)
            )
        if len(subscriber.queue) < self.outbox_page // 2:
            self._load_outbox(subscriber)

    def _pushed(self, _: Any, subscriber: _Subscriber, delivery: Delivery) -> None:
        subscriber.in_flight.discard(delivery.id)
        subscriber.failures.pop(delivery.id, None)
        subscriber.committing.add(delivery.id)
        d = self._durably(self._done_op, (delivery.id, self.now()))
        d.addBoth(self._delivery_settled, subscriber, delivery.id)
        self._pump_outbox(subscriber)

    def _delivery_settled(self, _: Any, subscriber: _Subscriber, delivery_id: int) -> None:
        subscriber.committing.discard(delivery_id)
        if subscriber.loading:
            subscriber.settled_while_loading.add(delivery_id)
        else:
            subscriber.known.discard(delivery_id)

    def _push_failed(self, failure: Failure, subscriber: _Subscriber, delivery: Delivery) -> None:
        subscriber.in_flight.discard(delivery.id)
        count = subscriber.failures[delivery.id] = subscriber.failures.get(delivery.id, 0) + 1
        try:
            self.batcher.submit(self._attempted_op, delivery.id).addErrback(lambda _: None)
        except store.Overloaded:
            pass
        if not self._active(subscriber):
            subscriber.known.discard(delivery.id)
            return
        delay = min(self.retry_seconds * 2 ** (count - 1), 60.0)
        subscriber.retries[delivery.id] = self.clock.callLater(delay, self._retry_delivery, subscriber, delivery)
        self._pump_outbox(subscriber)

    def _retry_delivery(self, subscriber: _Subscriber, delivery: Delivery) -> None:
        subscriber.retries.pop(delivery.id, None)
        if not self._active(subscriber):
            subscriber.known.discard(delivery.id)
            return
        subscriber.queue.appendleft(delivery)
        self._pump_outbox(subscriber)


def build_sms(
    db: Any,
    reactor: Any,
    bus: EventBus,
    limiter: RateLimiter,
    router: Any,
    *,
    node: str,
    clock: IReactorTime | None = None,
    reload_seconds: float = 10.0,
    **engine_options: Any,
) -> tuple[MessageEngine, Any]:
    """The engine and the link manager of a node, wired to each other and to the router.

    Add both to the daemon's ``MultiService`` (the manager connects the links
    when it starts).
    """
    from ..smpp.client import SmppLinkManager

    clock = clock if clock is not None else reactor
    engine = MessageEngine(db, clock, bus, limiter, router, node=node, **engine_options)
    manager = SmppLinkManager(db, clock, engine, limiter, bus, reactor=reactor, reload_seconds=reload_seconds)
    engine.use_links(manager)
    if hasattr(router, "set_links"):
        router.set_links(manager)
    return engine, manager

