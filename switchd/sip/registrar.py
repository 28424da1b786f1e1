"""The registrar (RFC 3261 §10.3): customers' SIP devices register here.

REGISTER is authenticated with Digest (MD5 or SHA-256, RFC 8760) against the
HA1s of the SIP account named in the To header. Bindings are kept in memory
for lookups and in the database so a restart keeps them; a binding is written
before the 200 OK goes out. A contact whose address differs from where the
REGISTER came from is behind NAT: it is stored with that source, requests for
it go there, and it is kept open with OPTIONS.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Callable

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..core.events import ContactRegistered, ContactUnregistered, EventBus
from ..store.models import registrations, sip_accounts
from .digest import DigestResult, DigestServer, parse_credentials
from .message import Address, Request, Response, SIPParseError, make_response, new_tag
from .transaction import Destination

Respond = Callable[[Response], None]


@dataclass(frozen=True)
class Account:
    id: int
    username: str
    realm: str
    ha1: dict[str, str]
    enabled: bool
    service_id: int = 0
    caller_id: str | None = None


@dataclass(frozen=True)
class Binding:
    """One registered contact of an account."""

    id: int
    account_id: int
    contact: str  # the Contact value as sent (name-addr or addr-spec)
    expires_at: float  # clock seconds
    call_id: str
    cseq: int
    source: Destination
    behind_nat: bool
    user_agent: str | None

    @property
    def uri(self) -> str:
        return str(Address.parse(self.contact).uri)


def _aware(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def behind_nat(contact: Address, source: Destination) -> bool:
    """The device's Contact is not where its packets come from."""
    uri = contact.uri
    host = (uri.host or "").strip("[]")
    port = uri.port or (5061 if uri.scheme == "sips" else 5060)
    try:
        same_host = ipaddress.ip_address(host) == ipaddress.ip_address(source.host)
    except ValueError:
        return True  # a host name in Contact: only the source address is reliable
    return not same_host or (source.transport == "udp" and port != source.port)


class Registrar:
    """Handles REGISTER and answers "where is this account reachable?"."""

    log = Logger()

    def __init__(
        self,
        db,
        clock: IReactorTime,
        digest: DigestServer,
        bus: EventBus,
        *,
        node: str = "",
        min_expires: int = 60,
        max_expires: int = 3600,
        default_expires: int = 3600,
        max_contacts: int = 10,
        on_auth_failure: Callable[[str], None] = lambda host: None,
        server: str = "switchd",
    ) -> None:
        self.db = db
        self.clock = clock
        self.digest = digest
        self.bus = bus
        self.node = node
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self.max_contacts = max_contacts
        self.on_auth_failure = on_auth_failure
        self.server = server
        self._bindings: dict[int, dict[str, Binding]] = {}
        self._sweeper: LoopingCall | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self, sweep_seconds: float = 5.0) -> Deferred:
        """Load unexpired bindings from the database and start expiring them."""
        now = self.clock.seconds()

        def load(conn: Connection) -> list[Any]:
            return conn.execute(select(registrations).where(registrations.c.expires_at > _aware(now))).all()

        def loaded(rows: list[Any]) -> None:
            for row in rows:
                binding = self._binding_from_row(row)
                self._bindings.setdefault(binding.account_id, {})[binding.uri] = binding
            self.log.info("registrar: {count} bindings loaded", count=len(rows))
            self._sweeper = LoopingCall(self.expire)
            self._sweeper.clock = self.clock
            self._sweeper.start(sweep_seconds, now=False)

        return self.db.run(load).addCallback(loaded)

    def stop(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()

    @staticmethod
    def _binding_from_row(row: Any) -> Binding:
        return Binding(
            id=row.id,
            account_id=row.sip_account_id,
            contact=row.contact,
            expires_at=row.expires_at.timestamp(),
            call_id=row.call_id,
            cseq=row.cseq,
            source=Destination(row.source_transport, row.source_host, row.source_port),
            behind_nat=row.behind_nat,
            user_agent=row.user_agent,
        )

    # -- lookups --------------------------------------------------------------

    def contacts(self, account_id: int) -> list[Binding]:
        now = self.clock.seconds()
        return [b for b in self._bindings.get(account_id, {}).values() if b.expires_at > now]

    def all_bindings(self) -> list[Binding]:
        return [b for bindings in self._bindings.values() for b in bindings.values()]

    def __len__(self) -> int:
        return sum(len(b) for b in self._bindings.values())

    # -- REGISTER ---------------------------------------------------------------

    def handle(self, request: Request, source: Destination, respond: Respond) -> Deferred:
        """Process one REGISTER; ``respond`` is called once with the answer."""
        to = request.to_addr
        if to is None or to.uri.user is None:
            respond(make_response(request, 400, "To must name the account (sip:user@domain)"))
            return succeed(None)
        if request.get("Authorization") is None:
            self._challenge(request, respond)  # no database work for the first leg
            return succeed(None)
        username = to.uri.user_unescaped or to.uri.user
        d = self.db.run(self.load_account, username)
        d.addCallback(self._authenticated, request, source, respond)
        d.addErrback(self._failed, request, respond)
        return d

    @staticmethod
    def load_account(conn: Connection, username: str) -> Account | None:
        row = conn.execute(select(sip_accounts).where(sip_accounts.c.username == username)).first()
        if row is None:
            return None
        return Account(
            id=row.id,
            username=row.username,
            realm=row.realm,
            ha1={"MD5": row.ha1_md5, "SHA-256": row.ha1_sha256},
            enabled=row.enabled,
            service_id=row.service_id,
            caller_id=row.caller_id,
        )

    def _challenge(self, request: Request, respond: Respond, stale: bool = False) -> None:
        response = make_response(request, 401, to_tag=new_tag())
        for challenge in self.digest.challenges(self.clock.seconds(), stale=stale):
            response.add("WWW-Authenticate", str(challenge))
        response.set("Server", self.server)
        respond(response)

    def _authenticated(self, account: Account | None, request: Request, source: Destination, respond: Respond):
        header = request.get("Authorization")
        if header is None:
            self._challenge(request, respond)
            return None
        try:
            credentials = parse_credentials(header)
        except Exception:
            respond(make_response(request, 400, "Malformed Authorization header"))
            return None
        if account is None or not account.enabled or credentials.username != account.username or (
            account.realm != self.digest.realm
        ):
            # Same answer as a wrong password: no hint which names exist.
            self.on_auth_failure(source.host)
            if account is not None and account.realm != self.digest.realm:
                self.log.warn(
                    "SIP account {user} has realm {realm} but the registrar uses {ours}: reset its password",
                    user=account.username,
                    realm=account.realm,
                    ours=self.digest.realm,
                )
            self._challenge(request, respond)
            return None
        result = self.digest.verify(
            credentials,
            method="REGISTER",
            now=self.clock.seconds(),
            ha1=account.ha1,
            body=request.body,
        )
        if result is DigestResult.STALE:
            self._challenge(request, respond, stale=True)
            return None
        if result is not DigestResult.OK:
            self.on_auth_failure(source.host)
            self._challenge(request, respond)
            return None
        return self._update(account, request, source, respond)

    def _expires_of(self, request: Request, contact: Address) -> int:
        value = contact.param("expires")
        if value is not None and value.isdigit():
            return int(value)
        header = request.expires
        return header if header is not None else self.default_expires

    def _update(self, account: Account, request: Request, source: Destination, respond: Respond):
        now = self.clock.seconds()
        contacts = request.contacts
        call_id = request.call_id or ""
        cseq = request.cseq.number if request.cseq else 0
        current = self._bindings.get(account.id, {})
        if any(c.is_wildcard for c in contacts):
            if len(contacts) != 1 or request.expires != 0:
                respond(make_response(request, 400, "Contact * needs Expires: 0 and no other contact"))
                return None
            removals = list(current.values())
            return self._store(account, request, source, respond, [], removals, now)
        changes: list[tuple[Address, int]] = []
        for contact in contacts:
            expires = self._expires_of(request, contact)
            if 0 < expires < self.min_expires:
                response = make_response(request, 423, to_tag=new_tag())
                response.set("Min-Expires", str(self.min_expires))
                respond(response)
                return None
            existing = current.get(str(contact.uri))
            if existing is not None and existing.call_id == call_id and cseq <= existing.cseq:
                respond(make_response(request, 500, "Out of order REGISTER", to_tag=new_tag()))
                return None
            changes.append((contact, min(expires, self.max_expires)))
        keep = [(c, e) for c, e in changes if e > 0]
        removals = [current[str(c.uri)] for c, e in changes if e == 0 and str(c.uri) in current]
        return self._store(account, request, source, respond, keep, removals, now)

    def _store(self, account, request, source, respond, keep, removals, now):
        user_agent = request.get("User-Agent")
        call_id = request.call_id or ""
        cseq = request.cseq.number if request.cseq else 0
        node = self.node
        max_contacts = self.max_contacts
        current = dict(self._bindings.get(account.id, {}))
        removal_uris = {b.uri for b in removals}
        # Oldest bindings make room when the account has too many contacts.
        new_uris = [str(c.uri) for c, _ in keep]
        survivors = [b for uri, b in current.items() if uri not in removal_uris and uri not in new_uris]
        overflow = len(survivors) + len(new_uris) - max_contacts
        evicted = sorted(survivors, key=lambda b: b.expires_at)[: max(0, overflow)]
        removals = removals + evicted

        def work(conn: Connection) -> list[Binding]:
            stamp = _aware(now)
            for binding in removals:
                conn.execute(delete(registrations).where(registrations.c.id == binding.id))
            stored = []
            for contact, expires in keep:
                uri = str(contact.uri)
                text = str(contact.with_param("expires", None) if contact.has_param("expires") else contact)
                values = dict(
                    contact=text,
                    expires_at=_aware(now + expires),
                    call_id=call_id,
                    cseq=cseq,
                    source_transport=source.transport,
                    source_host=source.host,
                    source_port=source.port,
                    behind_nat=behind_nat(contact, source),
                    user_agent=(user_agent or "")[:255] or None,
                    node=node or None,
                    updated_at=stamp,
                )
                existing = current.get(uri)
                if existing is not None and existing not in removals:
                    conn.execute(update(registrations).where(registrations.c.id == existing.id).values(**values))
                    binding_id = existing.id
                else:
                    binding_id = conn.execute(
                        insert(registrations)
                        .values(sip_account_id=account.id, created_at=stamp, **values)
                        .returning(registrations.c.id)
                    ).scalar_one()
                stored.append(
                    Binding(
                        id=binding_id,
                        account_id=account.id,
                        contact=text,
                        expires_at=now + expires,
                        call_id=call_id,
                        cseq=cseq,
                        source=source,
                        behind_nat=values["behind_nat"],
                        user_agent=values["user_agent"],
                    )
                )
            return stored

        def stored(bindings: list[Binding]) -> None:
            table = self._bindings.setdefault(account.id, {})
            for binding in removals:
                if table.pop(binding.uri, None) is not None:
                    self.bus.publish(
                        ContactUnregistered(
                            at=now,
                            account_id=account.id,
                            username=account.username,
                            contact=binding.uri,
                            reason="evicted" if binding in evicted else "removed",
                        )
                    )
            for binding in bindings:
                table[binding.uri] = binding
                self.bus.publish(
                    ContactRegistered(
                        at=now,
                        account_id=account.id,
                        username=account.username,
                        contact=binding.uri,
                        source=f"{source.transport}:{source.host}:{source.port}",
                        expires=int(binding.expires_at - now),
                    )
                )
            if not table:
                del self._bindings[account.id]
            response = make_response(request, 200, to_tag=new_tag())
            for binding in self.contacts(account.id):
                address = Address.parse(binding.contact).with_param("expires", str(int(binding.expires_at - now)))
                response.add("Contact", address)
            response.set("Date", formatdate(now, usegmt=True))
            response.set("Server", self.server)
            respond(response)

        return self.db.run(work).addCallback(stored)

    def _failed(self, failure, request: Request, respond: Respond) -> None:
        if failure.check(SIPParseError):
            respond(make_response(request, 400, failure.value.reason))
            return
        self.log.failure("REGISTER failed", failure)
        respond(make_response(request, 500, "Registrar error"))

    # -- expiry ----------------------------------------------------------------

    def expire(self) -> Deferred:
        """Drop lapsed bindings from memory and the database."""
        now = self.clock.seconds()
        lapsed = [b for b in self.all_bindings() if b.expires_at <= now]
        for binding in lapsed:
            table = self._bindings.get(binding.account_id, {})
            table.pop(binding.uri, None)
            if not table:
                self._bindings.pop(binding.account_id, None)
            self.bus.publish(
                ContactUnregistered(
                    at=now, account_id=binding.account_id, username="", contact=binding.uri, reason="expired"
                )
            )

        def work(conn: Connection) -> int:
            return conn.execute(delete(registrations).where(registrations.c.expires_at <= _aware(now))).rowcount

        return self.db.run(work)

    def nat_bindings(self) -> list[Binding]:
        """Bindings behind NAT, to keep open with OPTIONS."""
        return [b for b in self.all_bindings() if b.behind_nat and b.expires_at > self.clock.seconds()]


__all__ = ["Account", "Binding", "Registrar", "behind_nat"]
