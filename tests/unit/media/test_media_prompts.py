"""Prompt files (WAV, .au, resampling), the announcement library and
text to speech with the real espeak-ng."""

from __future__ import annotations

import math
import os
import stat
import struct
import wave

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThread

from switchd.media import g711
from switchd.media.player import Prompt
from switchd.media.prompts import (
    PromptError,
    PromptLibrary,
    decode_audio,
    decode_prompt,
    load_prompt,
    read_prompt_file,
    resample,
)


def synchronous(f):
    return maybeDeferred(f)


def result_of(d: Deferred):
    seen: list = []
    d.addBoth(seen.append)
    assert len(seen) == 1, "the Deferred has not fired"
    return seen[0]


def failure_of(d: Deferred, kind=PromptError) -> str:
    outcome = result_of(d)
    assert hasattr(outcome, "check") and outcome.check(kind), outcome
    return outcome.getErrorMessage()


def sine(frequency: float, rate: int, seconds: float, amplitude: int = 10000) -> list[int]:
    return [round(amplitude * math.sin(2 * math.pi * frequency * n / rate)) for n in range(int(rate * seconds))]


def le16(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}h", *values)


def samples_of(pcm: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(pcm) // 2}h", pcm))


def rms(values: list[int]) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else 0.0


def tone_level(values: list[int], frequency: float, rate: int = 8000) -> float:
    """Amplitude of one frequency in ``values`` (a single-bin DFT)."""
    re = sum(v * math.cos(2 * math.pi * frequency * n / rate) for n, v in enumerate(values))
    im = sum(v * math.sin(2 * math.pi * frequency * n / rate) for n, v in enumerate(values))
    return 2 * math.hypot(re, im) / len(values)


def write_pcm_wav(path, values: list[int], rate: int = 8000, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(le16(values))


def riff(fmt: bytes, data: bytes, extra_chunks: bytes = b"") -> bytes:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunks
    body += b"data" + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def g711_wav(tag: int, data: bytes, rate: int = 8000, channels: int = 1) -> bytes:
    fmt = struct.pack("<HHIIHHH", tag, channels, rate, rate * channels, channels, 8, 0)
    fact = b"fact" + struct.pack("<II", 4, len(data) // channels)
    return riff(fmt, data, fact)


def au(encoding: int, data: bytes, rate: int = 8000, channels: int = 1, size: int | None = None) -> bytes:
    header = struct.pack(">4sIIIII", b".snd", 32, len(data) if size is None else size, encoding, rate, channels)
    return header + b"note\x00\x00\x00\x00" + data


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def test_pcm_wav_at_8khz_is_encoded_sample_for_sample(tmp_path):
    values = sine(700, 8000, 0.5)
    write_pcm_wav(tmp_path / "p.wav", values)
    prompt = read_prompt_file(tmp_path / "p.wav", "PCMU")
    assert prompt.payload == g711.pcm16_to_ulaw(le16(values))  # 4000 samples: 25 whole frames
    assert prompt.codec is g711.codec_for("PCMU") and prompt.duration == pytest.approx(0.5)
    assert prompt.name == str(tmp_path / "p.wav")
    assert read_prompt_file(tmp_path / "p.wav", "PCMA").payload == g711.pcm16_to_alaw(le16(values))


def test_g711_wav_files_are_taken_byte_for_byte():
    codes = bytes(range(256)) * 5  # 1280 bytes = 8 frames
    ulaw = decode_prompt(g711_wav(7, codes), "PCMU", "u.wav")
    assert ulaw.payload == codes
    assert decode_prompt(g711_wav(7, codes), "PCMA", "u.wav").payload == g711.ulaw_to_alaw(codes)
    assert decode_prompt(g711_wav(6, codes), "PCMA", "a.wav").payload == codes
    # A partial last frame is padded with silence.
    assert decode_prompt(g711_wav(7, b"\x00" * 10), "PCMU").frames == (b"\x00" * 10 + b"\xff" * 150,)


def test_extensible_wav_with_a_pcm_sub_format():
    values = [100, -100, 2000, -2000] * 40
    guid = bytes.fromhex("0100000000001000800000aa00389b71")
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, 8000, 16000, 2, 16, 22, 16, 4) + guid
    assert decode_prompt(riff(fmt, le16(values)), "PCMU").payload == g711.pcm16_to_ulaw(le16(values))


def test_stereo_is_mixed_down():
    left, right = [1000] * 160, [3000] * 160
    interleaved = [v for pair in zip(left, right, strict=True) for v in pair]
    fmt = struct.pack("<HHIIHH", 1, 2, 8000, 32000, 4, 16)
    assert decode_audio(riff(fmt, le16(interleaved)), "s.wav") == le16([2000] * 160)
    codes = bytes([0x80, 0x00]) * 160  # µ-law full scale positive left, negative right
    assert decode_audio(g711_wav(7, codes, channels=2)) == le16([0] * 160)


@pytest.mark.parametrize("rate", [11025, 16000, 22050, 44100, 48000])
def test_other_rates_are_resampled_keeping_the_tone(tmp_path, rate):
    write_pcm_wav(tmp_path / "r.wav", sine(1000, rate, 1.0), rate=rate)
    prompt = read_prompt_file(tmp_path / "r.wav", "PCMU")
    assert prompt.duration == pytest.approx(1.0, abs=0.02)
    values = samples_of(prompt.pcm16())[400:7600]
    assert tone_level(values, 1000) == pytest.approx(10000, rel=0.03)


def test_resampler_is_anti_aliased():
    # 6 kHz cannot exist at 8 kHz; without a filter it would alias to 2 kHz.
    out = samples_of(resample(le16(sine(6000, 22050, 0.5)), 22050))[200:-200]
    assert rms(out) < 10  # 10000 in: more than 60 dB down
    assert tone_level(out, 2000) < 5
    # 3 kHz passes; 3.8 kHz, close to the 4 kHz edge, is attenuated.
    passed = samples_of(resample(le16(sine(3000, 44100, 0.5)), 44100))[200:-200]
    edge = samples_of(resample(le16(sine(3800, 44100, 0.5)), 44100))[200:-200]
    assert rms(passed) == pytest.approx(10000 / math.sqrt(2), rel=0.03)
    assert rms(edge) < 0.1 * rms(passed)
    assert resample(le16([5, 6]), 8000, 8000) == le16([5, 6])
    with pytest.raises(PromptError, match="from 0 Hz"):
        resample(b"", 0)


def test_sun_au_files():
    codes = bytes(range(256)) * 5
    assert decode_prompt(au(1, codes), "PCMU").payload == codes
    assert decode_prompt(au(27, codes), "PCMA").payload == codes
    assert decode_prompt(au(27, codes, size=0xFFFFFFFF), "PCMA").payload == codes  # size unknown: to the end
    values = sine(500, 8000, 0.1)
    big_endian = struct.pack(f">{len(values)}h", *values)
    assert decode_prompt(au(3, big_endian), "PCMU").payload == g711.pcm16_to_ulaw(le16(values))
    resampled = decode_prompt(au(3, struct.pack(f">{16000}h", *sine(500, 16000, 1.0)), rate=16000), "PCMU")
    assert resampled.duration == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (riff(struct.pack("<HHIIHH", 1, 1, 8000, 24000, 3, 24), b"\x00" * 30), "WAV 24-bit PCM is not supported"),
        (riff(struct.pack("<HHIIHH", 3, 1, 8000, 32000, 4, 32), b"\x00" * 32), "WAV IEEE float is not supported"),
        (riff(struct.pack("<HHIIHH", 0x55, 1, 8000, 1000, 1, 0), b"\x00" * 32), "WAV MPEG layer 3 is not supported"),
        (riff(struct.pack("<HHIIHH", 1, 3, 8000, 48000, 6, 16), b"\x00" * 60), "3 channels; mono or stereo"),
        (riff(struct.pack("<HHIIHH", 1, 1, 50, 100, 2, 16), b"\x00" * 60), "sample rate 50 Hz"),
        (riff(struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16), b""), "holds no audio"),
        (b"RIFF\x04\x00\x00\x00WAVE", "without a 'fmt ' chunk"),
        (b"RIFF\x18\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16),
         "without a 'data' chunk"),
        (au(2, b"\x00" * 100), ".au 8-bit linear is not supported"),
        (au(1, b"\x00" * 100, channels=4), "4 channels"),
        (b".snd\x00\x00\x00\x18", ".au header of 8 bytes"),
        (b"ID3\x03\x00 an mp3 file", "neither a WAV (RIFF/WAVE) nor a Sun .au file"),
    ],
)
def test_unsupported_files_name_the_file_and_the_problem(data, message):
    with pytest.raises(PromptError, match=r"^bad\.file: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        decode_prompt(data, "PCMU", "bad.file")


def test_load_prompt_reads_in_the_given_runner(tmp_path):
    write_pcm_wav(tmp_path / "x.wav", [0] * 800)
    ran = []

    def runner(f):
        ran.append(f)
        return maybeDeferred(f)

    prompt = result_of(load_prompt(tmp_path / "x.wav", "PCMA", runner))
    assert isinstance(prompt, Prompt) and len(prompt) == 5 and len(ran) == 1
    assert "no such file" in failure_of(load_prompt(tmp_path / "nope.wav", "PCMU", synchronous))
    (tmp_path / "dir.wav").mkdir()
    assert "cannot be read" in failure_of(load_prompt(tmp_path / "dir.wav", "PCMU", synchronous))


# --------------------------------------------------------------------------
# The library: files
# --------------------------------------------------------------------------


def library(tmp_path, **kwargs) -> PromptLibrary:
    from twisted.internet import reactor

    kwargs.setdefault("run_in_thread", synchronous)
    kwargs.setdefault("reactor_for_processes", reactor)
    return PromptLibrary(tmp_path / "prompts", cache_dir=tmp_path / "cache", **kwargs)


def test_announcement_ids_and_languages_are_checked(tmp_path):
    lib = library(tmp_path)
    for bad in ("1234567", "123456789", "1234567a", "１２３４５６７８", 12345678):
        assert "is not 8 digits" in failure_of(lib.announcement(bad))  # type: ignore[arg-type]
    assert "language 'de' is not one of en, es, fr, vi, zh" in failure_of(lib.announcement("12345678", "de"))
    with pytest.raises(PromptError, match="not 8 digits"):
        library(tmp_path, texts={"123": {"en": "hello"}})
    with pytest.raises(PromptError, match="language 'xx'"):
        library(tmp_path, texts={"12345678": {"xx": "hello"}})


def test_files_by_language_first_then_shared(tmp_path):
    root = tmp_path / "prompts"
    (root / "es").mkdir(parents=True)
    write_pcm_wav(root / "es" / "10000001.wav", [1000] * 160)
    (root / "es" / "10000001.au").write_bytes(au(1, b"\x01" * 160))  # .wav wins
    (root / "10000001.au").write_bytes(au(1, b"\x02" * 160))
    (root / "10000002.au").write_bytes(au(1, b"\x03" * 320))
    lib = library(tmp_path)
    assert result_of(lib.announcement("10000001", "es")).payload == g711.pcm16_to_ulaw(le16([1000] * 160))
    assert result_of(lib.announcement("10000001", "fr")).payload == b"\x02" * 160
    assert result_of(lib.announcement("10000002")).payload == b"\x03" * 320
    message = failure_of(lib.announcement("10000003", "vi"))
    assert message.startswith("announcement 10000003 (vi): no 10000003.wav or 10000003.au in")
    assert "no text to speak" in message


def test_loaded_prompts_are_kept_until_the_file_changes(tmp_path):
    root = tmp_path / "prompts"
    root.mkdir()
    path = root / "20000001.au"
    path.write_bytes(au(1, b"\x05" * 160))
    reads = []

    def runner(f):
        reads.append(f)
        return maybeDeferred(f)

    lib = library(tmp_path, run_in_thread=runner)
    first = result_of(lib.announcement("20000001"))
    assert result_of(lib.announcement("20000001")) is first
    assert len(reads) == 3  # find, read, find
    path.write_bytes(au(1, b"\x06" * 320))
    os.utime(path, ns=(1, 1))
    assert result_of(lib.announcement("20000001")).payload == b"\x06" * 320


def test_the_memory_cache_is_bounded(tmp_path):
    root = tmp_path / "prompts"
    root.mkdir()
    for n in range(3):
        (root / f"3000000{n}.au").write_bytes(au(1, bytes([n]) * 1600))  # 1600 bytes each
    lib = library(tmp_path, memory_limit=3500)
    first = result_of(lib.announcement("30000000"))
    result_of(lib.announcement("30000001"))
    result_of(lib.announcement("30000002"))  # evicts the oldest
    assert result_of(lib.announcement("30000001")) is result_of(lib.announcement("30000001"))
    assert result_of(lib.announcement("30000000")) is not first


def test_concurrent_requests_share_one_load(tmp_path):
    root = tmp_path / "prompts"
    root.mkdir()
    (root / "40000000.au").write_bytes(au(1, b"\x07" * 160))
    jobs: list = []

    def manual(f):
        d: Deferred = Deferred()
        jobs.append((d, f))
        return d

    lib = library(tmp_path, run_in_thread=manual)
    one, two = lib.announcement("40000000"), lib.announcement("40000000")
    while jobs:
        d, f = jobs.pop(0)
        d.callback(f())
    first, second = result_of(one), result_of(two)
    assert first is second and first.payload == b"\x07" * 160


# --------------------------------------------------------------------------
# Text to speech with the real espeak-ng
# --------------------------------------------------------------------------


class CountingReactor:
    """The real reactor, counting the processes spawned through it."""

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.spawned: list[list[str]] = []

    def spawnProcess(self, protocol, executable, args, env=None, **kwargs):
        self.spawned.append(list(args))
        return self.reactor.spawnProcess(protocol, executable, args, env=env, **kwargs)

    def callLater(self, *args, **kwargs):
        return self.reactor.callLater(*args, **kwargs)

    @property
    def syntheses(self) -> int:
        return sum("-w" in args for args in self.spawned)


def tts_library(tmp_path, **kwargs):
    counting = CountingReactor()
    kwargs.setdefault("run_in_thread", deferToThread)
    return library(tmp_path, reactor_for_processes=counting, **kwargs), counting


SPEECH = {
    "en": "Thank you for calling. Please hold.",
    "es": "Gracias por llamar. Por favor, espere.",
    "fr": "Merci de votre appel. Veuillez patienter.",
    "vi": "Cảm ơn bạn đã gọi. Xin vui lòng chờ.",
    "zh": "感谢您的来电，请稍候。",
}


@pytest.mark.parametrize("language", sorted(SPEECH))
@pytest_twisted.ensureDeferred
async def test_espeak_speaks_every_language(tmp_path, language):
    lib, counting = tts_library(tmp_path)
    prompt = await lib.speak(SPEECH[language], language)
    assert prompt.duration > 1.0
    values = samples_of(prompt.pcm16())
    assert rms(values) > 500  # speech, not silence
    voice = counting.spawned[-1][counting.spawned[-1].index("-v") + 1]
    assert voice == {"en": "en-us", "es": "es", "fr": "fr-fr", "vi": "vi", "zh": "cmn"}[language]


@pytest_twisted.ensureDeferred
async def test_spoken_prompts_are_cached_on_disk_and_shared(tmp_path):
    lib, counting = tts_library(tmp_path, codec="PCMA")
    text = "Your call is important to us."
    one, two = lib.speak(text, "en"), lib.speak(text, "en")
    first, second = await one, await two
    assert first is second and counting.syntheses == 1 and first.codec.name == "PCMA"
    assert await lib.speak(f"  {text} ", "en") is first  # in memory (same words)
    cached = list((tmp_path / "cache").glob("*.wav"))
    assert len(cached) == 1 and not list((tmp_path / "cache").glob(".*"))
    with wave.open(str(cached[0])) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
    # A new library (a restart) reads the disk cache instead of running espeak-ng.
    again, counting_again = tts_library(tmp_path, codec="PCMA")
    reloaded = await again.speak(text, "en")
    assert counting_again.syntheses == 0 and reloaded.payload == first.payload
    # Another language is another voice, hence another file.
    await again.speak(text, "fr")
    assert counting_again.syntheses == 1 and len(list((tmp_path / "cache").glob("*.wav"))) == 2
    # A damaged cache file is spoken again and replaced.
    cached[0].write_bytes(b"RIFF garbage")
    third, counting_third = tts_library(tmp_path, codec="PCMA")
    assert (await third.speak(text, "en")).payload == first.payload
    assert counting_third.syntheses == 1 and cached[0].read_bytes()[:4] == b"RIFF"
    assert len(cached[0].read_bytes()) > 1000


@pytest_twisted.ensureDeferred
async def test_announcement_without_a_file_speaks_its_text(tmp_path):
    lib, counting = tts_library(tmp_path, texts={"50000001": {"es": "Número equivocado."}})
    prompt = await lib.announcement("50000001", "es")
    assert prompt.duration > 0.5 and counting.syntheses == 1
    with pytest.raises(PromptError, match=r"50000001 \(en\)"):
        await lib.announcement("50000001", "en")


@pytest_twisted.ensureDeferred
async def test_missing_espeak_says_to_install_it(tmp_path):
    lib, counting = tts_library(tmp_path, espeak="espeak-ng-not-installed-here")
    with pytest.raises(PromptError, match="install espeak-ng"):
        await lib.speak("hello", "en")
    assert counting.spawned == []
    with pytest.raises(PromptError, match="nothing to speak"):
        await lib.speak("   ", "en")


def fake_espeak(tmp_path, body: str) -> str:
    script = tmp_path / "fake-espeak"
    script.write_text(
        '#!/bin/sh\nif [ "$1" = "--version" ]; then echo "eSpeak NG text-to-speech: 0.0-test"; exit 0; fi\n' + body
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest_twisted.ensureDeferred
async def test_espeak_failures_are_reported(tmp_path):
    failing = fake_espeak(tmp_path, 'echo "voice xx not found" >&2\nexit 1\n')
    lib, _ = tts_library(tmp_path, espeak=failing)
    with pytest.raises(PromptError, match=r"espeak-ng failed \(1\): voice xx not found"):
        await lib.speak("hello", "en")
    hanging = fake_espeak(tmp_path, "exec sleep 30\n")
    lib, _ = tts_library(tmp_path, espeak=hanging, tts_timeout=0.2)
    with pytest.raises(PromptError, match="longer than 0.2 s and was killed"):
        await lib.speak("hello", "en")
    assert not list((tmp_path / "cache").glob("*"))  # nothing half-written left behind


@pytest_twisted.ensureDeferred
async def test_text_that_looks_like_an_option_is_spoken(tmp_path):
    lib, counting = tts_library(tmp_path)
    prompt = await lib.speak("--version", "en")
    assert prompt.duration > 0.3 and rms(samples_of(prompt.pcm16())) > 300
    assert counting.spawned[-1][-2:] == ["--", "--version"]
