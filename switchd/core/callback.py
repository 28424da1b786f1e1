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

Without user2 (``user2=None``: an ANI or SMS callback that leaves the choice
to the caller), user1 hears the IVR: "enter the number you want to call,
followed by the hash key", in the request's language; digits are collected
from user1's DTMF (the prompt stops at the first key). With ``ivr=True`` the
IVR comes back after the second call ends or fails ("the number is busy"),
so user1 can make several calls on one callback; the hang-up code (``##``)
ends the second call and keeps user1; the balance code (``111``) speaks the
account's balance; ``**<pin>#`` tops the account up with a voucher PIN.
``real_duration`` adds up every second call's talk time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from . import ids
from .calls import Call
from .events import Event

OUTCOMES = ("completed", "user1_busy", "user1_no_answer", "user1_failed", "user2_busy", "user2_no_answer",
            "user2_failed", "cancelled", "failed")
DEFAULT_ANNOUNCEMENT = "00080002"
#: The IVR's language menu: * then a digit.
LANGUAGE_KEYS = {"1": "en", "2": "es", "3": "fr", "4": "vi", "5": "zh"}

#: The language menu: each language named in itself, with its key.
LANGUAGE_MENU = {
    "en": "For English, press star 1.",
    "es": "Para español, marque asterisco 2.",
    "fr": "Pour le français, tapez étoile 3.",
    "vi": "Tiếng Việt, bấm sao 4.",
    "zh": "中文请按星号5。",
}


@dataclass(frozen=True)
class CallbackRequest:
    service_id: int
    user1: str
    user2: str | None  # None: user1 is asked for the number (the callback IVR)
    max_seconds: int  # 0: no limit but the balance
    caller_id1: str | None = None
    caller_id2: str | None = None
    ann_id1: str | None = None
    ann_id2: str | None = None
    ann_digit2: str | None = None
    source: str = "iif"
    reference: str = ""
    language: str = "en"
    ivr: bool = False  # after user2's call (or its failure) user1 may dial another number
    line_caller: bool = False  # external line mode: without caller ids both legs show the trunk's own number


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
    talked: float = 0.0  # seconds bridged in earlier second calls (IVR)
    user1_answered_at: float | None = None
    _auth1: Any = field(default=None, repr=False)
    _rate2: Any = field(default=None, repr=False)  # the dearest user2 rate so far
    _leg1: Any = field(default=None, repr=False)
    _leg2: Any = field(default=None, repr=False)
    _digits: str = ""
    language: str = "en"  # the request's, until user1 picks another in the IVR (*1 to *5)
    _menu_said: bool = False  # the IVR named the other languages once
    _collecting: Deferred | None = field(default=None, repr=False)
    _digit_timer: IDelayedCall | None = field(default=None, repr=False)

    @property
    def real_duration(self) -> int:
        """Whole seconds user1 talked to a user2 (all second calls together)."""
        total = self.talked
        if self.bridged_at is not None:
            end = self.ended_at if self.ended_at is not None else self._engine.clock.seconds()
            total += max(0.0, end - self.bridged_at)
        return math.floor(total + 0.5)

    user2: str | None = None  # the number called second (from the request or the IVR)

    def hangup(self, reason: str = "cancelled") -> None:
        """End the callback now (both legs), e.g. from the API."""
        self._engine._finish(self, self._engine._ended_outcome(self), reason)

    def summary(self) -> dict[str, Any]:
        r = self.request
        return {
            "id": self.id,
            "state": self.state,
            "outcome": self.outcome,
            "user1": r.user1,
            "user2": self.user2,
            "max_seconds": self.max_seconds,
            "real_duration": self.real_duration,
            "source": r.source,
            "reference": r.reference,
            "account_id": self.account_id,
            "started": self.started,
            "language": self.language,
            "ivr": r.ivr,
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

    #: IVR words, by language: what user1 hears when asked for a number.
    PROMPTS: dict[str, dict[str, str]] = {
        "en": {"ask": "Please enter the number you want to call, followed by the hash key.",
               "busy": "The number is busy.", "no_answer": "There is no answer.",
               "failed": "The call could not be completed.", "refused": "This number cannot be called.",
               "balance": "Your balance is {amount} {currency}.", "goodbye": "Goodbye.",
               "max": "You can talk for up to {minutes} minutes.", "language": "English.",
               "max_one": "You can talk for up to 1 minute.",
               "max_seconds": "You can talk for up to {seconds} seconds.",
               "topup": "{amount} {currency} added. Your balance is {balance} {currency}.", "topup_failed": "This PIN cannot be used."},
        "es": {"ask": "Marque el número al que desea llamar, seguido de la tecla numeral.",
               "busy": "El número está ocupado.", "no_answer": "No contesta.",
               "failed": "No se pudo completar la llamada.", "refused": "No se puede llamar a este número.",
               "balance": "Su saldo es {amount} {currency}.", "goodbye": "Adiós.",
               "max": "Puede hablar hasta {minutes} minutos.", "language": "Español.",
               "max_one": "Puede hablar hasta 1 minuto.", "max_seconds": "Puede hablar hasta {seconds} segundos.",
               "topup": "Se añadieron {amount} {currency}. Su saldo es {balance} {currency}.", "topup_failed": "Este PIN no se puede usar."},
        "fr": {"ask": "Composez le numéro que vous souhaitez appeler, suivi de la touche dièse.",
               "busy": "Le numéro est occupé.", "no_answer": "Il n'y a pas de réponse.",
               "failed": "L'appel n'a pas pu aboutir.", "refused": "Ce numéro ne peut pas être appelé.",
               "balance": "Votre solde est de {amount} {currency}.", "goodbye": "Au revoir.",
               "max": "Vous pouvez parler jusqu'à {minutes} minutes.", "language": "Français.",
               "max_one": "Vous pouvez parler jusqu'à 1 minute.",
               "max_seconds": "Vous pouvez parler jusqu'à {seconds} secondes.",
               "topup": "{amount} {currency} ajoutés. Votre solde est de {balance} {currency}.", "topup_failed": "Ce code ne peut pas être utilisé."},
        "vi": {"ask": "Vui lòng nhập số bạn muốn gọi, sau đó nhấn phím thăng.",
               "busy": "Số máy đang bận.", "no_answer": "Không có người trả lời.",
               "failed": "Không thể thực hiện cuộc gọi.", "refused": "Không thể gọi số này.",
               "balance": "Số dư của bạn là {amount} {currency}.", "goodbye": "Tạm biệt.",
               "max": "Bạn có thể nói chuyện tối đa {minutes} phút.", "language": "Tiếng Việt.",
               "max_one": "Bạn có thể nói chuyện tối đa 1 phút.",
               "max_seconds": "Bạn có thể nói chuyện tối đa {seconds} giây.",
               "topup": "Đã nạp {amount} {currency}. Số dư của bạn là {balance} {currency}.", "topup_failed": "Không thể dùng mã PIN này."},
        "zh": {"ask": "请输入您要拨打的号码，然后按井号键。", "busy": "对方忙。", "no_answer": "无人接听。",
               "failed": "呼叫无法接通。", "refused": "无法拨打此号码。", "balance": "您的余额是 {amount} {currency}。",
               "goodbye": "再见。", "max": "您最多可以通话 {minutes} 分钟。", "language": "中文。",
               "max_one": "您最多可以通话 1 分钟。", "max_seconds": "您最多可以通话 {seconds} 秒。",
               "topup": "已充值 {amount} {currency}。您的余额是 {balance} {currency}。", "topup_failed": "此密码无法使用。"},
    }

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
        keep_finished: int = 50_000,
        balance_code: str = "111",
        hangup_code: str = "##",
        first_digit_seconds: float = 15.0,
        next_digit_seconds: float = 5.0,
        ivr_attempts: int = 3,
        language_menu: bool = True,
        balance: Callable[[int], Awaitable[Any]] | None = None,
        redeem: Callable[[int, str], Awaitable[Any]] | None = None,
        topup_code: str = "**",
    ) -> None:
        self.redeem = redeem  # (account id, PIN) -> Redeemed; raises with .reason when refused
        self.topup_code = topup_code
        self.clock = clock
        self.authorize = authorize
        self.acquire_account = acquire_account
        self.originator = originator
        self.media = media
        self.publish = publish
        self.ring_seconds = ring_seconds
        self.node = node
        self.keep_seconds = keep_seconds
        self.keep_finished = keep_finished
        self.balance_code = balance_code
        self.hangup_code = hangup_code
        self.first_digit_seconds = first_digit_seconds
        self.next_digit_seconds = next_digit_seconds
        self.ivr_attempts = ivr_attempts
        self.language_menu = language_menu
        self.balance = balance
        self.callbacks: dict[str, Callback] = {}
        self._ended: deque[Callback] = deque()  # in the order they ended, for _expire

    # -- starting ------------------------------------------------------------------

    async def start(self, request: CallbackRequest) -> Callback:
        """Authorise and call user1; returns once user1's INVITE is on its way."""
        if self.media is None:
            raise CallbackRefused("callbacks need the media relay ([media] enabled)", 503)
        self._expire()
        auth1 = await self._authorize(request.service_id, request.user1)
        max_seconds = request.max_seconds or None
        if request.user2 is not None:
            auth2 = await self._authorize(request.service_id, request.user2)
            max_seconds = self._limit(request, auth1, auth2.rate)
            if max_seconds is not None and max_seconds <= 0:
                raise CallbackRefused("insufficient funds for both calls", 402)
        elif auth1.max_seconds is not None:
            if auth1.max_seconds <= 0:
                raise CallbackRefused("insufficient funds", 402)
            # Until a number is keyed, user1's leg alone runs on the money (the IVR
            # may be kept busy with the balance code): it is limited as well.
            max_seconds = min(max_seconds or auth1.max_seconds, auth1.max_seconds)
        lease = self.acquire_account(auth1.account_id, auth1.call_limit, auth1.cps_limit)
        if not getattr(lease, "release", None):
            raise CallbackRefused("the account is at its call limit", 503)
        callback = Callback(id=ids.token_hex(12), request=request, account_id=auth1.account_id,
                            started=self.clock.seconds(), max_seconds=max_seconds, _engine=self)
        callback.user2 = request.user2
        callback.language = request.language
        callback._auth1 = auth1
        callback._lease = lease
        callback._media = self.media.start(
            callback.id,
            on_timeout=lambda: self._finish(callback, self._ended_outcome(callback), "media timeout"),
            on_dtmf=lambda side, digit: self._dtmf(callback, side, digit.digit),
        )
        self.callbacks[callback.id] = callback
        call1 = self._call(callback, auth1, request.user1, request.caller_id1 or "")
        try:
            leg1 = await self.originator.dial(call1, callback._media, "a", caller_id=call1.caller,
                                              ring_seconds=self.ring_seconds)
        except Exception as error:
            if callback._media is not None:
                callback._media.close()
            self._release(callback)
            self.callbacks.pop(callback.id, None)
            raise CallbackRefused(f"cannot call user1: {getattr(error, 'reason', error)}", 503) from None
        if callback.state == "ended":  # ended while the route was read (a media timeout, a drop)
            leg1.hangup("cancelled")
            return callback
        callback._leg1 = leg1
        callback._legs.append(leg1)
        self._event(callback, "dialing1", request.user1)
        self.log.info("callback {id} ({source} {reference}) calls {user1}, prompts in {language}", id=callback.id,
                      source=request.source, reference=request.reference, user1=request.user1,
                      language=callback.language)
        leg1.answered.addCallbacks(lambda body: self._user1_answered(callback),
                                   lambda f: self._leg_failed(callback, "user1", f))
        leg1.ended.addCallback(lambda side: self._finish(callback, self._ended_outcome(callback),
                                                         "user1 hung up" if side == "remote" else side))
        return callback

    def _limit(self, request: CallbackRequest, auth1: Any, rate2: Any) -> int | None:
        """The smaller of the request's limit and what the money pays for both legs."""
        from types import SimpleNamespace

        second = SimpleNamespace(rate=rate2, max_seconds=0)
        limits = [m for m in (request.max_seconds or None, combined_max_seconds(auth1, second)) if m is not None]
        return min(limits) if limits else None

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

    def _user1_answered(self, callback: Callback) -> None:
        if callback.state == "ended":
            return
        request = callback.request
        media = callback._media
        callback.user1_answered_at = self.clock.seconds()
        self._event(callback, "answered1", request.user1)
        self._arm_timer(callback)
        chosen = media.formats.get("a")
        if chosen is not None:
            media.offer_codecs = [chosen]  # user2 must speak user1's codec: no transcoding in the relay
        if request.ann_id1:
            self._play(callback, "a", [("announcement", request.ann_id1)], interruptible=request.user2 is None)
        if request.user2 is None:
            self._ask(callback, after=None)
            return
        self._dial_user2(callback, request.user2, callback._rate2)

    def _arm_timer(self, callback: Callback) -> None:
        """The duration limit runs from user1's answer (the seed: "start a timer")."""
        if callback._timer is not None and callback._timer.active():
            callback._timer.cancel()
        callback._timer = None
        if callback.max_seconds is None or callback.user1_answered_at is None:
            return
        left = callback.user1_answered_at + callback.max_seconds - self.clock.seconds()
        callback._timer = self.clock.callLater(max(0.0, left), self._time_up, callback)

    def _time_up(self, callback: Callback) -> None:
        self._finish(callback, self._ended_outcome(callback), "max duration")

    def _dial_user2(self, callback: Callback, number: str, rate2: Any) -> None:
        callback.user2 = number
        d = ensureDeferred(self._dial(callback, number))
        d.addErrback(lambda f: self._user2_failed(callback, "failed", f.getErrorMessage()))

    async def _dial(self, callback: Callback, number: str) -> None:
        request = callback.request
        auth2 = await self._authorize(request.service_id, number)
        if callback.state == "ended":
            return
        caller = request.caller_id2 or ("" if request.line_caller else request.user1)
        call2 = self._call(callback, auth2, number, caller)
        leg2 = await self.originator.dial(call2, callback._media, "b", caller_id=caller, ring_seconds=self.ring_seconds)
        if callback.state == "ended":
            leg2.hangup("cancelled")
            return
        callback._leg2 = leg2
        callback._legs.append(leg2)
        self._event(callback, "dialing2", number)
        leg2.answered.addCallbacks(lambda body: self._user2_answered(callback, leg2),
                                   lambda f: self._user2_failed(callback, getattr(f.value, "kind", "failed"),
                                                                str(f.value)))
        leg2.ended.addCallback(lambda side: self._user2_ended(callback, leg2, side))

    def _user2_answered(self, callback: Callback, leg2: Any) -> None:
        if callback.state == "ended" or leg2 is not callback._leg2:
            return
        request = callback.request
        media = callback._media
        media.stop_playing("a")  # user1's waiting announcement ends: the other party is here
        self._event(callback, "answered2", callback.user2 or "")
        prompts = []
        if request.ann_id2:
            prompts.append(("announcement", request.ann_id2))
        if request.ann_digit2:
            prompts.append(("text", " ".join(request.ann_digit2)))
        if prompts:
            d = self._play(callback, "b", prompts, interruptible=False)
            d.addBoth(lambda _: self._bridge(callback, leg2))
        else:
            self._bridge(callback, leg2)

    def _bridge(self, callback: Callback, leg2: Any) -> None:
        if callback.state == "ended" or leg2 is not callback._leg2 or leg2.done:
            return
        callback.bridged_at = self.clock.seconds()
        self._event(callback, "bridged", callback.user2 or "")

    def _user2_failed(self, callback: Callback, kind: str, detail: str) -> None:
        if callback.state == "ended":
            return
        callback._leg2 = None
        if callback.request.ivr:
            self._event(callback, "user2_" + kind, detail)
            self._ask(callback, after=kind)
            return
        self._finish(callback, f"user2_{kind}", detail)

    def _user2_ended(self, callback: Callback, leg2: Any, side: str) -> None:
        """The second call is over: the callback ends, or the IVR asks for another number."""
        if callback.state == "ended" or leg2 is not callback._leg2:
            return
        self._unbridge(callback)
        callback._leg2 = None
        if callback.request.ivr and side != "switch":
            self._event(callback, "user2_ended", "")
            self._ask(callback, after=None)
            return
        self._finish(callback, "completed", "user2 hung up" if side == "remote" else side)

    def _unbridge(self, callback: Callback) -> None:
        if callback.bridged_at is not None:
            callback.talked += max(0.0, self.clock.seconds() - callback.bridged_at)
            callback.bridged_at = None

    def _leg_failed(self, callback: Callback, user: str, failure: Any) -> None:
        error = failure.value
        kind = getattr(error, "kind", "failed")
        self._finish(callback, f"{user}_{kind}", str(error))

    def _ended_outcome(self, callback: Callback) -> str:
        return "completed" if callback.bridged_at is not None or callback.talked > 0 else "cancelled"

    # -- the IVR: ask user1 for the number ---------------------------------------------

    def _words(self, callback: Callback) -> dict[str, str]:
        return self.PROMPTS.get(callback.language, self.PROMPTS["en"])

    def _ask(self, callback: Callback, after: str | None, attempt: int = 1) -> None:
        """Say why the last call failed (if it did), ask for a number, wait for it."""
        if callback.state == "ended":
            return
        words = self._words(callback)
        items = []
        if after is not None:
            items.append(("text", words.get(after, words["failed"])))
        items.append(("text", words["ask"]))
        if self.language_menu and not callback._menu_said:
            callback._menu_said = True
            items += [("speech", (language, LANGUAGE_MENU[language])) for language in LANGUAGE_KEYS.values()
                      if language != callback.language]
        callback._digits = ""
        self._event(callback, "collecting", "")
        collecting: Deferred = Deferred()
        callback._collecting = collecting
        collecting.addCallback(lambda digits: self._got_number(callback, digits, attempt))

        def asked(_: Any) -> None:
            # The wait for the first key starts once the question (and menu) has been
            # heard, unless a key cut it short: then the digits' own timer runs.
            if callback._collecting is collecting and not callback._digits and callback.state != "ended":
                self._restart_digit_timer(callback, self.first_digit_seconds)

        self._play(callback, "a", items, interruptible=True).addBoth(asked)

    def _restart_digit_timer(self, callback: Callback, seconds: float) -> None:
        if callback._digit_timer is not None and callback._digit_timer.active():
            callback._digit_timer.cancel()
        callback._digit_timer = self.clock.callLater(seconds, self._digits_done, callback)

    def _digits_done(self, callback: Callback) -> None:
        callback._digit_timer = None
        collecting, callback._collecting = callback._collecting, None
        if collecting is not None:
            collecting.callback(callback._digits)

    def _dtmf(self, callback: Callback, side: str, digit: str) -> None:
        self._event(callback, "dtmf", f"{'user1' if side == 'a' else 'user2'} {digit}")
        media = callback._media
        if side != "a" or callback.state == "ended":
            return
        if callback._collecting is not None:
            media.interrupt("a")  # typing cuts the prompt short
            if digit == "#":
                if callback._digit_timer is not None and callback._digit_timer.active():
                    callback._digit_timer.cancel()
                self._digits_done(callback)
                return
            callback._digits += digit
            self._restart_digit_timer(callback, self.next_digit_seconds)
            return
        if callback.request.ivr and callback._leg2 is not None:
            # user1 ends the second call with the hang-up code and stays for another number.
            callback._digits = (callback._digits + digit)[-len(self.hangup_code):]
            if callback._digits == self.hangup_code:
                callback._digits = ""
                leg2, callback._leg2 = callback._leg2, None
                self._unbridge(callback)
                leg2.hangup("user1 hang-up code")
                self._event(callback, "user2_ended", "hang-up code")
                self._ask(callback, after=None)

    def _got_number(self, callback: Callback, digits: str, attempt: int) -> None:
        if callback.state == "ended":
            return
        if len(digits) == 2 and digits[0] == "*" and digits[1] in LANGUAGE_KEYS:
            callback.language = LANGUAGE_KEYS[digits[1]]
            self._event(callback, "language", callback.language)
            self._play(callback, "a", [("text", self._words(callback)["language"])], interruptible=True)
            self._ask(callback, after=None, attempt=attempt)
            return
        if self.redeem is not None and digits.startswith(self.topup_code) and digits[len(self.topup_code):].isdigit():
            d = ensureDeferred(self._topup(callback, digits[len(self.topup_code):]))
            d.addBoth(lambda _: self._ask(callback, after=None, attempt=attempt))
            return
        if digits == self.balance_code and self.balance is not None:
            d = ensureDeferred(self._say_balance(callback))
            d.addBoth(lambda _: self._ask(callback, after=None, attempt=attempt))
            return
        if not digits.lstrip("+").isdigit():
            if attempt >= self.ivr_attempts:
                d = self._play(callback, "a", [("text", self._words(callback)["goodbye"])], interruptible=False)
                d.addBoth(lambda _: self._finish(callback, self._ended_outcome(callback), "no number entered"))
            else:
                self._ask(callback, after=None, attempt=attempt + 1)
            return
        d = ensureDeferred(self._check_and_dial(callback, digits))
        d.addErrback(lambda f: self._user2_failed(callback, "failed", f.getErrorMessage()))

    async def _check_and_dial(self, callback: Callback, number: str) -> None:
        try:
            auth2 = await self._authorize(callback.request.service_id, number)
        except CallbackRefused as refused:
            if callback.state != "ended":
                self._event(callback, "refused", refused.reason)
                self._ask(callback, after="refused")
            return
        if callback.state == "ended":
            return
        rate = auth2.rate
        if callback._rate2 is None or rate.price_per_minute > callback._rate2.price_per_minute:
            callback._rate2 = rate
        callback.max_seconds = self._limit(callback.request, callback._auth1, callback._rate2)
        if callback.max_seconds is not None and callback.user1_answered_at is not None and \
                self.clock.seconds() - callback.user1_answered_at >= callback.max_seconds:
            self._finish(callback, self._ended_outcome(callback), "max duration")
            return
        self._arm_timer(callback)
        if callback.max_seconds is not None and callback.user1_answered_at is not None:
            left = int(callback.user1_answered_at + callback.max_seconds - self.clock.seconds())
            words = self._words(callback)
            if left < 60:  # never promise more than is left
                text = words["max_seconds"].format(seconds=max(1, left))
            elif left < 120:
                text = words["max_one"]
            else:
                text = words["max"].format(minutes=left // 60)
            self._play(callback, "a", [("text", text)], interruptible=True)
        self._dial_user2(callback, number, rate)

    async def _topup(self, callback: Callback, pin: str) -> None:
        """A voucher PIN keyed in the IVR (``**<pin>#``) tops up the paying account."""
        words = self._words(callback)
        try:
            done = await self.redeem(callback.account_id, pin)
        except Exception as error:
            self._event(callback, "topup_refused", getattr(error, "reason", str(error)))
            await self._play(callback, "a", [("text", words["topup_failed"])], interruptible=True)
            return
        self._event(callback, "topup", f"{done.amount:.2f} {done.currency}")
        text = words["topup"].format(amount=f"{done.amount:.2f}", currency=done.currency,
                                     balance=f"{done.balance:.2f}")
        await self._play(callback, "a", [("text", text)], interruptible=True)

    async def _say_balance(self, callback: Callback) -> None:
        amount, currency = await self.balance(callback.account_id)
        text = self._words(callback)["balance"].format(amount=f"{amount:.2f}", currency=currency)
        await self._play(callback, "a", [("text", text)], interruptible=True)

    # -- prompts -------------------------------------------------------------------

    def _play(self, callback: Callback, side: str, items: list[tuple[str, Any]], *, interruptible: bool) -> Deferred:
        prompts_library = self.media.prompts
        language = callback.language
        if prompts_library is None:
            return _succeeded(None)

        async def run():
            prompts = []
            for kind, value in items:
                if kind == "announcement":
                    prompts.append(await prompts_library.announcement(value, language))
                elif kind == "speech":  # (language, text): words in a voice of their own
                    prompts.append(await prompts_library.speak(value[1], value[0]))
                else:
                    prompts.append(await prompts_library.speak(value, language))
            if callback.state == "ended":
                return None
            return await callback._media.play(side, prompts, interruptible=interruptible)

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
        self._ended.append(callback)
        for timer in (callback._timer, callback._digit_timer):
            if timer is not None and timer.active():
                timer.cancel()
        callback._collecting = None
        for leg in callback._legs:
            leg.hangup(detail or outcome)
        media = callback._media
        if media is not None:
            media.close()
        self._release(callback)
        # A finished callback is kept an hour for the API: only its summary and
        # events, not its legs, dialogs and relay session (a busy node keeps
        # hundreds of thousands of them; the collector would walk them all).
        callback._legs = []
        callback._leg1 = callback._leg2 = callback._media = callback._auth1 = callback._rate2 = None
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
        if state in ("dialing1", "answered1", "dialing2", "answered2", "bridged", "collecting", "ended"):
            callback.state = state
        now = self.clock.seconds()
        callback.events.append({"at": now, "state": state, "detail": detail})
        self.publish(CallbackStateChanged(at=now, callback_id=callback.id, state=state,
                                          account_id=callback.account_id, source=callback.request.source,
                                          reference=callback.request.reference, detail=detail))

    def _expire(self) -> None:
        """Forget finished callbacks after ``keep_seconds``, and the oldest beyond
        ``keep_finished`` (their events are in the log and CDRs)."""
        limit = self.clock.seconds() - self.keep_seconds
        while self._ended and (self._ended[0].ended_at < limit or len(self._ended) > self.keep_finished):
            callback = self._ended.popleft()
            if self.callbacks.get(callback.id) is callback:
                del self.callbacks[callback.id]

    def get(self, callback_id: str) -> Callback | None:
        return self.callbacks.get(callback_id)


def _succeeded(value: Any) -> Deferred:
    d: Deferred = Deferred()
    d.callback(value)
    return d
