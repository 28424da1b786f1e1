"""SMS callback (seed 002): a text to an access number becomes a callback.

:meth:`SmsCallback.handle` takes the sender, the access number and the text
(from an upstream SMPP link, a customer ESME or an SMS carrier's HTTP POST),
authorises the client by its registered sender number or by ``U.``/``P.`` in
the text, acts on the command (see :mod:`switchd.core.smscommands`) and
returns the short reply, which the entry point sends back by SMS (or in its
HTTP answer). The callback's first call shows the access number as caller,
so the user recognises it.
"""

from __future__ import annotations

import datetime
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from . import clients
from .callback import CallbackRefused, CallbackRequest
from .smscommands import CommandError, parse


class SmsCallback:
    log = Logger()

    def __init__(self, db: Any, clock: IReactorTime, engine: Any) -> None:
        self.db = db
        self.clock = clock
        self.engine = engine
        self.handled = 0

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
            client = await self.db.run(clients.by_login, command.login, command.password)
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
        if command.action == "directory":
            number = await self.db.run(clients.directory_number, client, name=command.name, position=command.position)
            if number is None:
                which = command.name if command.name is not None else f"N{command.position}"
                return f"no directory entry {which}"
            return await self._call(client, sender, sender, number, access_number)
        return await self._call(client, sender, command.source or sender, command.destination, access_number)

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
            language=client.language,
        )
        try:
            callback = await self.engine.start(request)
        except CallbackRefused as refused:
            return f"cannot call: {refused.reason}"[:150]
        self.log.info("SMS callback from {sender}: {id} calls {source}, then {destination}", sender=sender,
                      id=callback.id, source=source, destination=destination)
        return f"calling {source}, then {destination}"

