"""The callback engine: call user1, and when they answer, call user2 and bridge them.

Every way of asking for a callback (the IIF UDP interface, click-to-dial over
HTTP, an SMS command, a missed call to an access number) ends in
:meth:`CallbackEngine.start`. The engine:

1. authorises both numbers for the paying service (active account, a rate for
   each destination, prepaid money for both legs together) and takes one slot
   of the account's call limit for the whole callback;
2. calls user1 through the router (failover as for any call);
3. when user1 answers, plays user1's announcement (if any), starts the
   duration timer (the smaller of the request's ``max_seconds`` and what the
   balance pays for both legs), and calls user2, offering only the codec
   user1 chose, so the relay can bridge them without transcoding;
4. when user2 answers, plays user2's announcement or digits (if any) and
   bridges the two: one relay session, user1 on its ``a`` side and user2 on
   its ``b`` side;
5. ends both legs when either hangs up or the time is up, and reports the
   bridged seconds (``real_duration``).

Each leg is a call of its own with its own CDR (``direction callback``),
rated at its destination's rate; the same account pays for both.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from .calls import Call
from .events import Event

OUTCOMES = ("completed", "user1_busy", "user1_no_answer", "user1_failed", "user2_busy", "user2_no_answer",
            "user2_failed", "cancelled", "failed")
DEFAULT_ANNOUNCEMENT = "00080002"


@dataclass(frozen=True)
class CallbackRequest:
    service_id: int
    user1: str
    user2: str
    max_seconds: int  # 0: no limit but the balance
    caller_id1: str | None = None
    caller_id2: str | None = None
    ann_id1: str | None = None
    ann_id2: str | None = None
    ann_digit2: str | None = None
    source: str = "iif"
    reference: str = ""
    language: str = "en"


class CallbackRefused(Exception):
    """Refused before any call was made: no money, no route, limits, bad numbers."""

    def __init__(self, reason: str, status: int = 403) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status  # the SIP-style status of the refusal (402, 403, 404, 484, 503)


@dataclass(frozen=True)
class CallbackResult:
    callback_id: str
    outcome: str
    real_duration: int


@dataclass(frozen=True)
class CallbackStateChanged(Event):
    """A step of a callback: dialing1, ringing1, answered1, dialing2, ringing2, bridged, ended."""

    callback_id: str
    state: str
    account_id: int | None
    source: str
    reference: str
    detail: str = ""


@dataclass
class Callback:
    id: str
    request: CallbackRequest
    account_id: int | None = None
    state: str = "starting"
    outcome: str | None = None
    started: float = 0.0
    bridged_at: float | None = None
    ended_at: float | None = None
    max_seconds: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    done: Deferred = field(default_factory=Deferred)
    _engine: Any = field(default=None, repr=False)
    _legs: list[Any] = field(default_factory=list, repr=False)
    _media: Any = field(default=None, repr=False)
    _timer: IDelayedCall | None = field(default=None, repr=False)
    _lease: Any = field(default=None, repr=False)

    @property
    def real_duration(self) -> int:
        if self.bridged_at is None:
            return 0
        end = self.ended_at if self.ended_at is not None else self._engine.clock.seconds()
        return max(0, math.floor(end - self.bridged_at + 0.5))

    def hangup(self, reason: str = "cancelled") -> None:
        """End the callback now (both legs), e.g. from the API."""
        self._engine._finish(self, "cancelled" if self.bridged_at is None else "completed", reason)

    def summary(self) -> dict[str, Any]:
        r = self.request
        return {
            "id": self.id,
            "state": self.state,
            "outcome": self.outcome,
            "user1": r.user1,
            "user2": r.user2,
            "max_seconds": self.max_seconds,
            "real_duration": self.real_duration,
            "source": r.source,
            "reference": r.reference,
            "account_id": self.account_id,
            "started": self.started,
        }


def combined_max_seconds(auth1: Any, auth2: Any) -> int | None:
    """How long both legs may last together on the account's money (None: unlimited).

    The two legs are billed at once, so the limit is the longest time whose
    combined charge (both connection fees, both per-minute prices, each
    rounded up to the larger of the two increments) fits the money available.
    """
    from ..billing.rating import Rate, max_duration

    available = getattr(auth1, "available", None)
    if available is None or auth1.max_seconds is None and auth2.max_seconds is None:
        return None
    r1, r2 = auth1.rate, auth2.rate
    combined = Rate(
        tariff_plan_id=None,
        prefix=None,
        price_per_minute=r1.price_per_minute + r2.price_per_minute,
        connection_fee=r1.connection_fee + r2.connection_fee,
        increment_first=max(r1.increment_first, r2.increment_first),
        increment_next=max(r1.increment_next, r2.increment_next),
        currency=r1.currency,
    )
    return max_duration(combined, Decimal(available))


class CallbackEngine:
    """Runs callbacks; see the module docstring."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        authorize: Callable[[int, str], Awaitable[Any]],
        acquire_account: Callable[[int, int, int], Any],
        originator: Any,
        media: Any,
        publish: Callable[[Event], None],
        ring_seconds: float = 60.0,
        node: str = "",
        keep_seconds: float = 3600.0,
    ) -> None:
        self.clock = clock
        self.authorize = authorize
        self.acquire_account = acquire_account
        self.originator = originator
        self.media = media
        self.publish = publish
        self.ring_seconds = ring_seconds
        self.node = node
        self.keep_seconds = keep_seconds
        self.callbacks: dict[str, Callback] = {}

    # -- starting ------------------------------------------------------------------

    async def start(self, request: CallbackRequest) -> Callback:
        """Authorise and call user1; returns once user1's INVITE is on its way."""
        if self.media is None:
            raise CallbackRefused("callbacks need the media relay ([media] enabled)", 503)
        self._expire()
        auth1 = await self._authorize(request.service_id, request.user1)
        auth2 = await self._authorize(request.service_id, request.user2)
        limits = [m for m in (request.max_seconds or None, combined_max_seconds(auth1, auth2)) if m is not None]
        max_seconds = min(limits) if limits else None
        if max_seconds is not None and max_seconds <= 0:
            raise CallbackRefused("insufficient funds for both calls", 402)
        lease = self.acquire_account(auth1.account_id, auth1.call_limit, auth1.cps_limit)
        if not getattr(lease, "release", None):
            raise CallbackRefused("the account is at its call limit", 503)
        callback = Callback(id=secrets.token_hex(12), request=request, account_id=auth1.account_id,
                            started=self.clock.seconds(), max_seconds=max_seconds, _engine=self)
        callback._lease = lease
        callback._media = self.media.start(
            callback.id,
            on_timeout=lambda: self._finish(callback, "completed", "media timeout"),
            on_dtmf=lambda side, digit: self._event(callback, "dtmf", f"{'user1' if side == 'a' else 'user2'} {digit.digit}"),
        )
        self.callbacks[callback.id] = callback
        call1 = self._call(callback, auth1, request.user1, request.caller_id1 or "")
        try:
            leg1 = await self.originator.dial(call1, callback._media, "a", caller_id=call1.caller,
                                              ring_seconds=self.ring_seconds)
        except Exception as error:
            self._release(callback)
            self.callbacks.pop(callback.id, None)
            raise CallbackRefused(f"cannot call user1: {getattr(error, 'reason', error)}", 503) from None
        callback._legs.append(leg1)
        self._event(callback, "dialing1", request.user1)
        leg1.answered.addCallbacks(lambda body: self._user1_answered(callback, auth2),
                                   lambda f: self._leg_failed(callback, "user1", f))
        leg1.ended.addCallback(lambda side: self._finish(callback, self._ended_outcome(callback),
                                                         "user1 hung up" if side == "remote" else side))
        return callback

    async def _authorize(self, service_id: int, number: str) -> Any:
        try:
            return await self.authorize(service_id, number)
        except Exception as error:
            status = getattr(error, "sip_status", None)
            if status is None:
                raise
            raise CallbackRefused(f"{number}: {getattr(error, 'reason', error)}", status) from None

    def _call(self, callback: Callback, auth: Any, number: str, caller: str) -> Call:
        call = Call(caller=caller, callee=number, start=self.clock.seconds(), direction="callback")
        call.account_id = auth.account_id
        call.service_id = callback.request.service_id
        call.rate = auth.rate
        call.currency = auth.currency
        call.max_seconds = callback.max_seconds
        call.hangup = lambda reason="api", cb=callback: self._finish(cb, self._ended_outcome(cb), reason)
        call.media_info = callback._media.describe
        return call

    # -- progress ------------------------------------------------------------------

    def _user1_answered(self, callback: Callback, auth2: Any) -> None:
        if callback.state == "ended":
            return
        request = callback.request
        media = callback._media
        self._event(callback, "answered1", request.user1)
        if callback.max_seconds is not None:
            callback._timer = self.clock.callLater(callback.max_seconds, self._finish, callback, "completed",
                                                   "max duration")
        chosen = media.formats.get("a")
        if chosen is not None:
            media.offer_codecs = [chosen]  # user2 must speak user1's codec: no transcoding in the relay
        if request.ann_id1:
            self._play(callback, "a", announcement=request.ann_id1)
        d = ensureDeferred(self._dial_user2(callback, auth2))
        d.addErrback(lambda f: self._finish(callback, "user2_failed", f.getErrorMessage()))

    async def _dial_user2(self, callback: Callback, auth2: Any) -> None:
        request = callback.request
        caller = request.caller_id2 or request.user1
        call2 = self._call(callback, auth2, request.user2, caller)
        leg2 = await self.originator.dial(call2, callback._media, "b", caller_id=caller, ring_seconds=self.ring_seconds)
        if callback.state == "ended":
            leg2.hangup("cancelled")
            return
        callback._legs.append(leg2)
        self._event(callback, "dialing2", request.user2)
        leg2.answered.addCallbacks(lambda body: self._user2_answered(callback),
                                   lambda f: self._leg_failed(callback, "user2", f))
        leg2.ended.addCallback(lambda side: self._finish(callback, "completed",
                                                         "user2 hung up" if side == "remote" else side))

    def _user2_answered(self, callback: Callback) -> None:
        if callback.state == "ended":
            return
        request = callback.request
        media = callback._media
        media.stop_playing("a")  # user1's waiting announcement ends: the other party is here
        self._event(callback, "answered2", request.user2)
        prompts = []
        if request.ann_id2:
            prompts.append(("announcement", request.ann_id2))
        if request.ann_digit2:
            prompts.append(("text", " ".join(request.ann_digit2)))
        if prompts:
            d = self._play_all(callback, "b", prompts)
            d.addBoth(lambda _: self._bridge(callback))
        else:
            self._bridge(callback)

    def _bridge(self, callback: Callback) -> None:
        if callback.state == "ended":
            return
        callback.bridged_at = self.clock.seconds()
        self._event(callback, "bridged", "")

    def _leg_failed(self, callback: Callback, user: str, failure: Any) -> None:
        error = failure.value
        kind = getattr(error, "kind", "failed")
        self._finish(callback, f"{user}_{kind}", str(error))

    def _ended_outcome(self, callback: Callback) -> str:
        return "completed" if callback.bridged_at is not None else "cancelled"

    # -- prompts -------------------------------------------------------------------

    def _play(self, callback: Callback, side: str, *, announcement: str | None = None,
              text: str | None = None) -> Deferred:
        return self._play_all(callback, side, [("announcement", announcement) if announcement else ("text", text)])

    def _play_all(self, callback: Callback, side: str, items: list[tuple[str, Any]]) -> Deferred:
        prompts_library = self.media.prompts
        language = callback.request.language
        if prompts_library is None:
            return _succeeded(None)

        async def run():
            prompts = []
            for kind, value in items:
                if kind == "announcement":
                    prompts.append(await prompts_library.announcement(value, language))
                else:
                    prompts.append(await prompts_library.speak(value, language))
            if callback.state == "ended":
                return None
            return await callback._media.play(side, prompts, interruptible=False)

        d = ensureDeferred(run())
        d.addErrback(lambda f: self.log.warn("callback {id}: cannot play to {side}: {error}", id=callback.id,
                                             side=side, error=f.getErrorMessage()))
        return d

    # -- the end -------------------------------------------------------------------

    def _finish(self, callback: Callback, outcome: str, detail: str = "") -> None:
        if callback.state == "ended":
            return
        callback.state = "ended"
        callback.outcome = outcome
        callback.ended_at = self.clock.seconds()
        if callback._timer is not None and callback._timer.active():
            callback._timer.cancel()
        for leg in callback._legs:
            leg.hangup(detail or outcome)
        media = callback._media
        if media is not None:
            media.close()
        self._release(callback)
        result = CallbackResult(callback.id, outcome, callback.real_duration)
        self._event(callback, "ended", f"{outcome}: {detail}" if detail else outcome)
        self.log.info("callback {id} ({source} {reference}) ended: {outcome}, {seconds} s bridged",
                      id=callback.id, source=callback.request.source, reference=callback.request.reference,
                      outcome=outcome, seconds=result.real_duration)
        callback.done.callback(result)

    def _release(self, callback: Callback) -> None:
        if callback._lease is not None:
            callback._lease.release()
            callback._lease = None

    def _event(self, callback: Callback, state: str, detail: str) -> None:
        if state not in ("dtmf", "ended"):
            callback.state = state
        now = self.clock.seconds()
        callback.events.append({"at": now, "state": state, "detail": detail})
        self.publish(CallbackStateChanged(at=now, callback_id=callback.id, state=state,
                                          account_id=callback.account_id, source=callback.request.source,
                                          reference=callback.request.reference, detail=detail))

    def _expire(self) -> None:
        """Forget finished callbacks after ``keep_seconds`` (their events are in the log and CDRs)."""
        limit = self.clock.seconds() - self.keep_seconds
        for key in [k for k, c in self.callbacks.items() if c.ended_at is not None and c.ended_at < limit]:
            del self.callbacks[key]

    def get(self, callback_id: str) -> Callback | None:
        return self.callbacks.get(callback_id)


def _succeeded(value: Any) -> Deferred:
    d: Deferred = Deferred()
    d.callback(value)
    return d
