"""What the callback engine plays, to which leg and in which order: the
announcements of a callback and the prompts of its IVR.

The engine runs over test_callback's harness (real transaction layer,
originator and relay, task.Clock). Two seams are replaced:

* the prompt player: each call's ``CallMedia.play`` (and ``stop_playing``,
  ``interrupt``) is recorded; a play fires "done" at once, or is held until
  the test finishes it;
* espeak-ng: :class:`PromptLibrary`'s synthesis returns a short silent prompt
  named ``tts:<voice>:<text>``.

The rest of the prompt library is real: which file (``<dir>/<lang>/<id>``,
then ``<dir>/<id>``) or built-in text an announcement id is, the language
check, the espeak voice of each language.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.logger import Logger

from switchd.core.callback import LANGUAGE_MENU, CallbackEngine
from switchd.core.clients import Client
from switchd.iif.server import IifPeer, IifServer, PeerTable
from switchd.media.dtmf import DtmfDigit
from switchd.media.player import Prompt
from switchd.media.prompts import BUILTIN_TEXTS, PromptLibrary, wav_bytes
from switchd.sip.service import SIPService
from tests.unit.core.test_callback import RATE, U1, U2, Authz, Harness, sdp
from tests.unit.iif.test_server import FakeTransport

WORDS = CallbackEngine.PROMPTS
WAIT = BUILTIN_TEXTS["00080002"]  # the default announcement to user1, spoken when no file is installed
VOICE = {"en": "en-us", "es": "es", "fr": "fr-fr", "vi": "vi", "zh": "cmn"}


def tts(text: str, language: str = "en") -> str:
    return f"tts:{VOICE[language]}:{text}"


def ask(language: str = "en") -> str:
    return tts(WORDS[language]["ask"], language)


def said(key: str, language: str = "en", **values: object) -> str:
    return tts(WORDS[language][key].format(**values), language)


class SilentSpeech(PromptLibrary):
    """The real prompt library with espeak-ng stubbed where it is run: a spoken
    text is a 20 ms silent prompt named after the voice and the text."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, run_in_thread=lambda f: succeed(f()), reactor_for_processes=None,
                         cache_dir=directory / "tts-cache", texts=BUILTIN_TEXTS)
        self.spoken: list[tuple[str, str]] = []

    def _espeak_ready(self):
        return succeed(("espeak-ng", "test"))

    def _spoken(self, voice, text, identity):
        self.spoken.append((voice, text))
        return succeed(Prompt.silence(0.02, self.codec, f"tts:{voice}:{text}"))


class PromptWorld(Harness):
    """test_callback's harness with a prompt library and a recording player."""

    def __init__(self, directory: Path, authz=None, refuse=None) -> None:
        super().__init__(authz=authz, refuse=refuse)
        self.engine.language_menu = False  # named by its own test below
        self.directory = directory
        self.library = SilentSpeech(directory)
        self.media.prompts = self.library
        self.log: list[tuple] = []  # ("play", side, labels, interruptible) | ("stop", side) | ("interrupt", side)
        self.hold = False  # plays wait for finish() instead of ending at once
        self.held: list[tuple[str, Deferred]] = []
        self.on_dtmf = {}
        real_start = self.media.start

        def start(call_id, *, on_timeout, on_dtmf):
            media = real_start(call_id, on_timeout=on_timeout, on_dtmf=on_dtmf)
            self.on_dtmf[call_id] = on_dtmf
            media.play = self._play
            media.stop_playing = self._stop
            media.interrupt = lambda side: self.log.append(("interrupt", side))
            return media

        self.media.start = start

    # -- the recording player ------------------------------------------------------

    def _label(self, prompt: Prompt) -> str:
        if prompt.name.startswith("tts:"):
            return prompt.name
        return "file:" + Path(prompt.name).relative_to(self.directory).as_posix()

    def _play(self, side, prompts, *, interruptible=True):
        self.log.append(("play", side, tuple(self._label(p) for p in prompts), interruptible))
        d: Deferred = Deferred()
        if self.hold:
            self.held.append((side, d))
        else:
            d.callback("done")
        return d

    def _stop(self, side=None):
        self.log.append(("stop", side))
        keep = []
        for held_side, d in self.held:
            if side is None or held_side == side:
                d.callback("stopped")
            else:
                keep.append((held_side, d))
        self.held = keep
        return True

    def finish(self, result: str = "done") -> None:
        """The oldest held play ends."""
        _, d = self.held.pop(0)
        d.callback(result)

    def plays(self, side: str | None = None) -> list[tuple]:
        return [entry[1:] for entry in self.log if entry[0] == "play" and side in (None, entry[1])]

    def heard(self, side: str) -> list[str]:
        """Every prompt played to ``side``, flattened."""
        return [label for _, labels, _ in self.plays(side) for label in labels]

    # -- the parties -----------------------------------------------------------------

    def press(self, callback, keys: str, side: str = "a") -> None:
        for key in keys:
            self.on_dtmf[callback.id](side, DtmfDigit(key, 100, 10))

    def answer1(self):
        return self.answer(U1, 200, "OK", sdp(8))

    def answer2(self, tag: str = "t2"):
        return self.answer(U2, 200, "OK", sdp(8, 30002), tag=tag)

    def announcement_file(self, ann_id: str, language: str | None = None) -> None:
        folder = self.directory / language if language else self.directory
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{ann_id}.wav").write_bytes(wav_bytes(b"\0\0" * 160))


@pytest.fixture
def world(tmp_path):
    w = PromptWorld(tmp_path)
    yield w
    w.close()


@pytest.fixture
def make_world(tmp_path):
    made = []

    def make(**kwargs):
        w = PromptWorld(tmp_path, **kwargs)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


# -- 1. the IIF default announcement -----------------------------------------------------


def test_an_iif_request_without_ann_id1_plays_00080002_to_user1_and_nothing_to_user2(world):
    peer = IifPeer("192.0.2.99", 7000, service_id=3, default_caller="+15550001")
    server = IifServer(world.engine, PeerTable([peer]), world.clock, registry=CollectorRegistry())
    transport = FakeTransport()
    server.makeConnection(transport)
    server.datagramReceived(b"REQUEST: id=1234;user1=111;user2=222;duration=3600;", ("192.0.2.99", 7000))
    [callback] = world.engine.callbacks.values()
    assert callback.request.ann_id1 == "00080002"
    assert transport.take() == [(b"ACK: id=1234;code=ok", ("192.0.2.99", 7000))]
    assert world.log == []  # nothing before user1 answers
    world.answer1()
    # No file installed: the built-in English text; not interruptible (user1 only waits).
    assert world.log == [("play", "a", (tts(WAIT["en"]),), False)]
    world.answer2()
    assert callback.state == "bridged"
    # user2's answer ends user1's waiting announcement; user2 hears nothing.
    assert world.log[1:] == [("stop", "a")] and world.plays("b") == []


def test_an_installed_00080002_file_is_played_rather_than_the_builtin_text(world):
    world.announcement_file("00080002")
    world.start(ann_id1="00080002")
    world.answer1()
    assert world.plays() == [("a", ("file:00080002.wav",), False)]
    assert world.library.spoken == []


def test_without_any_announcement_nothing_is_played(world):
    callback = world.start()
    world.answer1()
    world.answer2()
    assert callback.state == "bridged" and world.plays() == []


# -- 2. ann_id1, ann_id2, ann_digit2 ------------------------------------------------------------


def test_ann_id1_goes_to_user1_and_ann_id2_to_user2_before_the_bridge(world):
    world.announcement_file("11112222", "en")
    world.announcement_file("33334444")  # no language folder: the shared file
    world.hold = True
    callback = world.start(ann_id1="11112222", ann_id2="33334444")
    world.answer1()
    assert world.plays() == [("a", ("file:en/11112222.wav",), False)]
    assert world.take(U2, "INVITE")  # user2 is called while user1 hears the announcement
    world.answer2()
    assert world.log[1:] == [("stop", "a"), ("play", "b", ("file:33334444.wav",), False)]
    assert callback.state == "answered2"  # not bridged while user2 hears the announcement
    world.finish()
    assert callback.state == "bridged"
    world.clock.advance(10)
    callback.hangup("test")
    assert callback.done.result.real_duration == 10


def test_ann_digit2_is_spoken_to_user2_digit_by_digit_after_ann_id2(world):
    world.announcement_file("33334444", "en")
    world.hold = True
    callback = world.start(ann_id2="33334444", ann_digit2="4021")
    world.answer1()
    assert world.plays() == []
    world.answer2()
    assert world.plays() == [("b", ("file:en/33334444.wav", tts("4 0 2 1")), False)]
    assert callback.state == "answered2"
    world.finish()
    assert callback.state == "bridged" and world.plays("a") == []


def test_ann_digit2_alone_is_spoken_in_the_requests_language(world):
    callback = world.start(ann_digit2="77", language="fr")
    world.answer1()
    world.answer2()
    assert world.plays() == [("b", (tts("7 7", "fr"),), False)]
    assert callback.state == "bridged"


def test_an_announcement_that_cannot_be_had_does_not_stop_the_bridge(world):
    callback = world.start(ann_id1="99990000", ann_id2="99990001")  # no file, no text
    world.answer1()
    world.answer2()
    assert world.plays() == [] and callback.state == "bridged"


# -- 3. the IVR after user2's call fails or ends ------------------------------------------------


def ivr(world, **request):
    callback = world.start(user2=None, ivr=True, **request)
    world.answer1()
    assert world.plays() == [("a", (ask(request.get("language", "en")),), True)]
    return callback


def test_the_ivr_asks_user1_for_a_number_and_a_digit_cuts_the_prompt(world):
    callback = ivr(world)
    world.press(callback, "2")
    assert world.log[-1] == ("interrupt", "a")


def test_user2_busy_tells_user1_and_asks_for_another_number(world):
    callback = ivr(world)
    world.press(callback, "222#")
    world.answer(U2, 486, "Busy Here", tag="t2")
    assert callback.state == "collecting"
    assert world.plays()[1:] == [("a", (said("busy"), ask()), True)]


def test_user2_not_answering_tells_user1_and_asks_for_another_number(world):
    callback = ivr(world)
    world.press(callback, "222#")
    world.answer(U2, 180, "Ringing", tag="t2")
    world.clock.advance(30)
    assert callback.state == "collecting"
    assert world.plays()[1:] == [("a", (said("no_answer"), ask()), True)]


def test_user2_failing_tells_user1_and_asks_for_another_number(world):
    callback = ivr(world)
    world.press(callback, "222#")
    world.answer(U2, 404, "Not Found", tag="t2")
    assert callback.state == "collecting"
    assert world.plays()[1:] == [("a", (said("failed"), ask()), True)]


def test_user2_hanging_up_brings_user1_back_to_the_ivr_without_a_reason(world):
    callback = ivr(world)
    world.press(callback, "222#")
    invite2 = world.answer2()
    world.clock.advance(12)
    world.bye_from(U2, invite2, tag="t2")
    assert callback.state == "collecting" and not world.take(U1, "BYE")
    assert world.plays()[1:] == [("a", (ask(),), True)]


# -- 4. the hang-up code ------------------------------------------------------------------------------


def test_the_hangup_code_ends_user2_keeps_user1_and_asks_again(world):
    callback = ivr(world)
    world.press(callback, "222#")
    world.answer2()
    world.clock.advance(20)
    world.press(callback, "#")
    assert callback.state == "bridged" and not world.take(U2, "BYE")  # one # is not the code
    world.press(callback, "#")
    assert world.take(U2, "BYE") and not world.take(U1, "BYE")
    assert callback.state == "collecting"
    assert world.plays()[1:] == [("a", (ask(),), True)]
    world.press(callback, "333#")  # and user1 can call again
    assert len(world.take(U2, "INVITE")) >= 2


def test_a_configured_hangup_code_is_the_one_that_counts(world):
    world.engine.hangup_code = "#1#"
    callback = ivr(world)
    world.press(callback, "222#")
    world.answer2()
    world.press(callback, "##")
    assert callback.state == "bridged" and not world.take(U2, "BYE")
    world.press(callback, "#1#")
    assert world.take(U2, "BYE") and not world.take(U1, "BYE")
    assert callback.state == "collecting" and world.plays()[1:] == [("a", (ask(),), True)]


def test_user2_keying_the_hangup_code_does_nothing(world):
    callback = ivr(world)
    world.press(callback, "222#")
    world.answer2()
    world.press(callback, "##", side="b")
    assert callback.state == "bridged" and world.plays()[1:] == []


# -- 5. the balance code -------------------------------------------------------------------------------


def with_balance(world, amount, currency="EUR"):
    asked = []

    async def balance(account_id):
        asked.append(account_id)
        return amount, currency

    world.engine.balance = balance
    return asked


def test_the_balance_code_speaks_the_balance_then_asks_again(world):
    asked = with_balance(world, Decimal("12.5"))
    world.hold = True
    callback = world.start(user2=None, ivr=True)
    world.answer1()
    world.press(callback, "111#")
    assert asked == [7]
    assert world.plays() == [("a", (ask(),), True), ("a", (said("balance", amount="12.50", currency="EUR"),), True)]
    assert not world.take(U2, "INVITE")  # 111 is not a number to call
    world.finish()  # the first ask prompt (cut short by the keys)
    world.finish()  # the balance is said: then the question again
    assert world.plays()[2:] == [("a", (ask(),), True)] and callback.state == "collecting"


def test_the_balance_is_spoken_in_the_callbacks_language_with_two_decimals(world):
    with_balance(world, Decimal("-3"), "USD")
    callback = ivr(world, language="vi")
    world.press(callback, "111#")
    assert world.plays()[1:] == [("a", (said("balance", "vi", amount="-3.00", currency="USD"),), True),
                                 ("a", (ask("vi"),), True)]


def test_a_configured_balance_code_is_the_one_that_counts(world):
    with_balance(world, Decimal("1"))
    world.engine.balance_code = "*0"
    callback = ivr(world)
    world.press(callback, "*0#")
    assert world.plays()[1] == ("a", (said("balance", amount="1.00", currency="EUR"),), True)


# -- 6. the longest call announced ----------------------------------------------------------------------


def test_the_longest_possible_call_is_announced_in_whole_minutes_left(make_world):
    # 6 EUR at 0.60 + 0.60 a minute: 300 s for both legs from user1's answer.
    world = make_world(authz=Authz(available=Decimal("6"), max_seconds=600))
    callback = world.start(user2=None, ivr=True)
    world.answer1()
    world.clock.advance(14)  # keys come just before the first-digit timeout (15 s)
    world.press(callback, "222#")
    assert callback.max_seconds == 300
    assert world.plays()[1:] == [("a", (said("max", minutes=4),), True)]  # 286 s left: 4 whole minutes
    assert world.take(U2, "INVITE")


def test_the_minutes_announced_count_the_time_already_talked(make_world):
    world = make_world(authz=Authz(available=Decimal("6"), max_seconds=600))
    callback = world.start(user2=None, ivr=True)
    world.answer1()
    world.press(callback, "222#")
    assert world.plays()[1:] == [("a", (said("max", minutes=5),), True)]
    invite2 = world.answer2()
    world.clock.advance(100)
    world.bye_from(U2, invite2, tag="t2")
    world.press(callback, "333#")
    assert world.plays()[2:] == [("a", (ask(),), True), ("a", (said("max", minutes=3),), True)]  # 200 s left


def test_the_longest_call_is_announced_in_the_callbacks_language(make_world):
    world = make_world(authz=Authz(available=Decimal("6"), max_seconds=600))
    callback = world.start(user2=None, ivr=True, language="es")
    world.answer1()
    world.press(callback, "222#")
    assert world.plays()[1:] == [("a", (said("max", "es", minutes=5),), True)]


def test_without_a_money_limit_no_longest_call_is_announced(world):
    callback = ivr(world)
    world.press(callback, "222#")
    assert callback.max_seconds is None and world.plays()[1:] == []


def promised_seconds(text: str) -> int:
    """The time an English "max" prompt promises (minutes or seconds)."""
    match = re.search(r"up to (\d+) (minute|minutes|second|seconds)\b", text)
    assert match, text
    return int(match.group(1)) * (60 if match.group(2).startswith("minute") else 1)


def test_under_a_minute_left_is_not_announced_as_a_minute(make_world):
    # 1 EUR at 1.20 a minute for both legs: 50 s.
    world = make_world(authz=Authz(available=Decimal("1"), max_seconds=600))
    callback = world.start(user2=None, ivr=True)
    world.answer1()
    world.press(callback, "222#")
    assert callback.max_seconds == 50
    [(side, (text,), _)] = world.plays()[1:]
    assert side == "a" and text.startswith("tts:en-us:")
    assert 0 < promised_seconds(text) <= 50
    assert text == said("max_seconds", seconds=50)


def test_between_one_and_two_minutes_left_is_one_minute_in_the_singular(make_world):
    # 2 EUR at 1.20 a minute for both legs: 100 s.
    world = make_world(authz=Authz(available=Decimal("2"), max_seconds=600))
    callback = world.start(user2=None, ivr=True, language="fr")
    world.answer1()
    world.press(callback, "222#")
    assert callback.max_seconds == 100
    assert world.plays()[1:] == [("a", (said("max_one", "fr"),), True)]


# -- 7. the language ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("language", ["en", "es", "fr", "vi", "zh"])
def test_the_ivr_speaks_the_requests_language_with_its_voice(world, language):
    callback = ivr(world, language=language)
    world.press(callback, "222#")
    world.answer(U2, 486, "Busy Here", tag="t2")
    assert world.plays()[1:] == [("a", (said("busy", language), ask(language)), True)]
    assert {voice for voice, _ in world.library.spoken} == {VOICE[language]}


def test_the_default_announcement_is_the_languages_file_else_its_builtin_text(world):
    world.announcement_file("00080002", "fr")
    world.start(ann_id1="00080002", language="fr")
    world.answer1()
    world.start(ann_id1="00080002", language="zh")
    world.answer(U1, 200, "OK", sdp(8), tag="t9")
    assert world.plays() == [("a", ("file:fr/00080002.wav",), False), ("a", (tts(WAIT["zh"], "zh"),), False)]


def test_star_and_a_digit_switch_the_language_of_what_follows(world):
    callback = ivr(world)
    world.press(callback, "*2#")
    assert callback.language == "es"
    assert world.plays()[1:] == [("a", (said("language", "es"),), True), ("a", (ask("es"),), True)]
    world.press(callback, "222#")
    world.answer(U2, 486, "Busy Here", tag="t2")
    assert world.plays()[3:] == [("a", (said("busy", "es"), ask("es")), True)]


def test_an_unknown_language_key_keeps_the_language_and_asks_again(world):
    callback = ivr(world, language="fr")
    world.press(callback, "*9#")
    assert callback.language == "fr" and world.plays()[1:] == [("a", (ask("fr"),), True)]


def ani_callback(world, client_language, access_language):
    """A missed call from user1 ("111") to an access number, through SIPService._ani_callback."""
    client = Client(1, 3, 7, "alice", client_language, True)
    service = SimpleNamespace(db=SimpleNamespace(run=lambda f, *args: succeed(client)), log=Logger(),
                              reactor=world.clock, callbacks=world.engine,
                              config=SimpleNamespace(callback=SimpleNamespace(ani_delay_seconds=2)))
    ensureDeferred(SIPService._ani_callback(service, "111", "+15550100", access_language))
    world.clock.advance(2)
    [callback] = world.engine.callbacks.values()
    world.answer1()
    return callback


@pytest.mark.parametrize(("client_language", "access_language", "language"), [
    ("zh", "es", "zh"),  # the client's own language first
    (None, "vi", "vi"),  # else the access number's
    (None, None, "en"),  # else English
])
def test_an_ani_callback_speaks_the_clients_else_the_access_numbers_language(
        world, client_language, access_language, language):
    callback = ani_callback(world, client_language, access_language)
    assert callback.language == language and callback.request.ivr
    assert world.plays() == [("a", (ask(language),), True)]


def test_rate_fixture_is_the_one_the_limits_above_assume():
    assert (RATE.price_per_minute, RATE.connection_fee, RATE.increment_first, RATE.increment_next) == (
        Decimal("0.6"), Decimal("0"), 1, 1)


def test_the_first_question_names_the_other_languages_each_in_its_own_voice(world):
    world.engine.language_menu = True
    callback = world.start(user2=None, ivr=True, language="fr")
    world.answer1()
    menu = [tts(text, language) for language, text in LANGUAGE_MENU.items() if language != "fr"]
    assert world.plays() == [("a", (ask("fr"), *menu), True)]
    assert {voice for voice, _ in world.library.spoken} == {VOICE[language] for language in VOICE}
    world.press(callback, "*2")
    world.clock.advance(5)  # the pause ends the keys: Spanish from now on, and the menu is not said again
    assert world.plays()[1:] == [("a", (said("language", "es"),), True), ("a", (ask("es"),), True)]


def test_the_wait_for_the_first_key_starts_when_the_question_has_been_heard(world):
    world.hold = True  # plays end when the test says
    callback = world.start(user2=None, ivr=True)
    world.answer1()
    world.clock.advance(30)  # a long question (and menu) still playing: no timeout yet
    assert callback.state == "collecting" and len(world.plays()) == 1
    world.finish()
    world.clock.advance(14)
    assert len(world.plays()) == 1
    world.clock.advance(1)  # 15 s of silence after the question: asked again
    assert len(world.plays()) == 2 and world.plays()[1] == ("a", (ask(),), True)


def test_a_key_during_the_question_starts_the_number_not_the_first_key_wait(world):
    world.hold = True
    callback = world.start(user2=None, ivr=True)
    world.answer1()
    world.press(callback, "2")  # cuts the question short
    world.finish("stopped")
    world.press(callback, "22")
    world.clock.advance(5)  # the pause after the last key ends the number
    assert world.take(U2, "INVITE") and callback.user2 == "222"
