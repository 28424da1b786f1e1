"""SMS callback (seed 002): a text to an access number becomes a callback.

:meth:`SmsCallback.handle` takes the sender, the access number and the text
(from an upstream SMPP link, a customer ESME or an SMS carrier's HTTP POST),
authorises the client by its registered sender number or by ``U.``/``P.`` in
the text, acts on the command (see :mod:`switchd.core.smscommands`) and
returns the short reply, which the entry point sends back by SMS (or in its
HTTP answer). The callback's first call shows the access number as caller,
so the user recognises it. ``T.<pin>`` tops the client's account up with a
voucher (:mod:`switchd.billing.vouchers`), behind the same brake on guessing
as the API: an account whose vouchers fail too often is refused for a while.
"""

from __future__ import annotations

import datetime
import math
from typing import Any, NamedTuple

from sqlalchemy import select
from twisted.application.service import Service
from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..billing import vouchers
from ..store.models import numbers, services

from . import clients
from .callback import CallbackRefused, CallbackRequest
from .ratelimit import RateLimiter
from .smscommands import Command, CommandError, parse


class AccessNumber(NamedTuple):
    service_id: int
    account_id: int
    language: str | None


def load_access_numbers(conn, number: str | None = None) -> dict[str, AccessNumber]:
    """Numbers of callback services (or this one): digits -> their service, its account, their IVR language."""
    query = (
        select(numbers.c.number, numbers.c.language, services.c.id, services.c.account_id)
        .join(services, services.c.id == numbers.c.service_id)
        .where(services.c.type == "callback", services.c.status == "active")
    )
    if number is not None:
        query = query.where(numbers.c.number.in_((number, "+" + number)))
    rows = conn.execute(query)
    return {row.number.lstrip("+"): AccessNumber(row.id, row.account_id, row.language) for row in rows}


class LoginGuard(vouchers.RedeemGuard):
    """The same brake on guessing ``U.login P.password``: 5 wrong passwords per login and
    per sender number in 15 minutes, then refused until a try is back."""

    FAILURES = "sms-login-failures"


class SmsCallback(Service):
    """Also a service: it re-reads the access numbers every ``reload_seconds`` so
    that the message engine can tell a command from a message without a query."""

    log = Logger()

    def __init__(self, db: Any, clock: IReactorTime, engine: Any, *, messages: Any = None,
                 reload_seconds: float = 10.0, limiter: RateLimiter | None = None) -> None:
        self.db = db
        self.clock = clock
        self.engine = engine
        self.messages = messages  # the SMS engine that sends replies (None: replies only over HTTP)
        self.reload_seconds = reload_seconds
        self.access: dict[str, AccessNumber] = {}
        self.handled = 0
        # Without the node's shared limiter, a limiter of its own: SMS guesses are braked all the same.
        limiter = limiter if limiter is not None else RateLimiter(clock)
        self.guard = vouchers.RedeemGuard(limiter, clock)
        self.login_guard = LoginGuard(limiter, clock)
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.reload)
        self._loop.clock = self.clock
        self._loop.start(self.reload_seconds, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def reload(self):
        def loaded(table):
            self.access = table

        d = self.db.read(load_access_numbers)
        d.addCallbacks(loaded, lambda f: self.log.failure("cannot read the callback access numbers", f))
        return d

    def access_account(self, number: str) -> int | None:
        """The account of the callback service whose access number ``number`` is, if it is one."""
        found = self.access.get(number.lstrip("+"))
        return found.account_id if found is not None else None

    def consume(self, source: str, destination: str, text: str) -> bool:
        """A text to an access number: act on it and reply by SMS; True if it was one."""
        found = self.access.get(destination.lstrip("+"))
        if found is None:
            return False
        d = ensureDeferred(self._answer(source, destination, text, found.service_id, found.account_id))
        d.addErrback(lambda f: self.log.failure("SMS callback from {source} failed", f, source=source))
        return True

    async def _answer(self, source: str, destination: str, text: str, service_id: int, account_id: int) -> None:
        reply = await self.handle(source, destination, text)
        await self._send_reply(source, destination, reply, service_id, account_id)

    async def reply_by_sms(self, source: str, access_number: str, reply: str) -> bool:
        """Send ``reply`` to ``source`` from the access number (a text that came by HTTP); True once stored."""
        number = access_number.lstrip("+")
        found = self.access.get(number)
        if found is None:
            found = (await self.db.read(load_access_numbers, number)).get(number)
        if found is None:
            return False
        return await self._send_reply(source, access_number, reply, found.service_id, found.account_id)

    async def _send_reply(self, source: str, destination: str, reply: str, service_id: int, account_id: int) -> bool:
        """The reply, by SMS from the access number through the access service's routes."""
        if self.messages is None or not reply:
            return False
        from ..sms.engine import MessageOrigin, MessageRefused, Submission
        from ..smpp.gsm import choose_coding

        coding, content = choose_coding(reply)
        try:
            await self.messages.submit(
                MessageOrigin(kind="switch", service_id=service_id, account_id=account_id, connection_id=0),
                Submission(source=destination, destination=source, content=content, data_coding=coding),
            )
        except MessageRefused as refused:
            self.log.warn("cannot reply by SMS to {to}: {reason}", to=source, reason=refused.reason)
            return False
        return True

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)

    async def handle(self, sender: str, access_number: str, text: str) -> str:
        """Act on one text; returns the reply for the sender (never raises for bad input)."""
        self.handled += 1
        try:
            command = parse(text)
        except CommandError as error:
            return error.reason
        if command.login is not None:
            keys = (("login", command.login.lower()), ("sender", sender))
            wait = self.login_guard.admit(keys)
            if wait:
                return f"too many wrong passwords; try again in {max(1, math.ceil(wait / 60))} min"
            wrong = False
            try:
                client = await self.db.run(clients.by_login, command.login, command.password)
                wrong = client is None
            finally:
                self.login_guard.done(keys, wrong)
            if client is None:
                return "wrong login or password"
        else:
            client = await self.db.run(clients.by_number, sender)
            if client is None:
                return "your number is not registered: send U.login P.password R.number first"
        if command.action == "register":
            try:
                added = await self.db.run(clients.register_number, client, command.number, self._now())
            except clients.NumberTaken:
                return f"{command.number} is registered to another user"
            return f"{command.number} registered" if added else f"{command.number} was already registered"
        if command.action == "info":
            amount, currency = await self.db.run(clients.balance, client)
            return f"balance {amount:.2f} {currency}"
        if command.action == "topup":
            return await self._topup(client, command)
        if command.action == "directory":
            number = await self.db.run(clients.directory_number, client, name=command.name, position=command.position)
            if number is None:
                which = command.name if command.name is not None else f"N{command.position}"
                return f"no directory entry {which}"
            return await self._call(client, sender, sender, number, access_number)
        return await self._call(client, sender, command.source or sender, command.destination, access_number)

    async def _access_language(self, access_number: str) -> str | None:
        """The access number's IVR language: from the table, or the database for a number newer than it."""
        if not access_number:
            return None
        found = self.access.get(access_number.lstrip("+"))
        if found is None:
            found = (await self.db.read(load_access_numbers, access_number.lstrip("+"))).get(access_number.lstrip("+"))
        return found.language if found is not None else None

    async def _topup(self, client: clients.Client, command: Command) -> str:
        """T.<pin>: redeem for the client's account, behind the guard; the reply says what happened."""
        keys = (("account", client.account_id),)
        wait = self.guard.admit(keys)
        if wait:
            return f"too many wrong vouchers; try again in {max(1, math.ceil(wait / 60))} min"
        failed = False
        try:
            done = await self.db.run(vouchers.redeem, client.account_id, self._now(), pin=command.pin,
                                     login=command.voucher_login, password=command.voucher_password)
        except vouchers.RedeemRefused as refused:
            failed = True
            self.log.info("SMS voucher for account {account} refused: {reason}", account=client.account_id,
                          reason=refused.reason)
            return refused.reason[:150]
        finally:
            self.guard.done(keys, failed)
        self.log.info("account {account} topped up by {amount} {currency} with voucher {voucher} by SMS",
                      account=client.account_id, amount=done.amount, currency=done.currency,
                      voucher=done.voucher_id)
        return f"topped up {done.amount:.2f} {done.currency}, balance {done.balance:.2f} {done.currency}"

    async def _call(self, client: clients.Client, sender: str, source: str, destination: str,
                    access_number: str) -> str:
        request = CallbackRequest(
            service_id=client.service_id,
            user1=source,
            user2=destination,
            max_seconds=0,
            caller_id1=access_number or None,
            source="sms",
            reference=sender,
            ivr=True,  # the callback IVR comes with SMS callback: another number after each call
            language=client.language_at(await self._access_language(access_number)),
        )
        try:
            callback = await self.engine.start(request)
        except CallbackRefused as refused:
            return f"cannot call: {refused.reason}"[:150]
        self.log.info("SMS callback from {sender}: {id} calls {source}, then {destination}", sender=sender,
                      id=callback.id, source=source, destination=destination)
        return f"calling {source}, then {destination}"

