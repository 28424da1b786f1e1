"""SMS callback commands (seed 002), sans-IO: text in, a command out.

The forms, as the seed gives them (case of the letters does not matter; the
fields may come in any order, separated by spaces):

``U.<login> P.<password> D.<destination> O.<source>``
    call ``source`` (default: the sender's number), then ``destination``;
``U.<login> P.<password> R.<number>``
    register ``number`` for authorisation by sender number;
``B.<name>``
    call the phone-directory entry named ``name`` (from the sender's number);
    a name with spaces runs on over the words that are not fields
    (``B.My office``);
``N<k>``
    call the k-th directory entry (``N2``);
``I``
    reply with the account's status;
``T.<pin>``
    top the account up with a voucher PIN (dashes between the digits are
    ignored); ``T.<login>/<password>`` for a login voucher.

``U.``/``P.`` may accompany any command (authorisation by login); without
them the sender's registered number authorises. Anything else raises
:class:`CommandError` with a reason short enough for an SMS reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NUMBER = re.compile(r"^\+?[0-9]{3,31}$")
PIN = re.compile(r"^[0-9]{12,32}$")
VOUCHER_LOGIN = re.compile(r"^[0-9]{7,16}$")
VOUCHER_PASSWORD = re.compile(r"^[0-9]{1,32}$")
MAX_TEXT = 480


class CommandError(ValueError):
    """A text that is not a command; ``reason`` is sent back to the sender."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Command:
    action: str  # "call", "register", "directory", "info", "topup"
    login: str | None = None
    password: str | None = None
    destination: str | None = None  # call: the number to reach
    source: str | None = None  # call: who is called first (None: the sender)
    number: str | None = None  # register
    name: str | None = None  # directory by name
    position: int | None = None  # directory by position (N<k>)
    pin: str | None = None  # topup: the voucher PIN, digits only
    voucher_login: str | None = None  # topup: a login voucher's login...
    voucher_password: str | None = None  # ...and password


def _number(field: str, value: str) -> str:
    value = value.replace("-", "").replace(" ", "")
    if not NUMBER.match(value):
        raise CommandError(f"{field} must be a phone number, not {value[:20]!r}")
    return value


def _topup(login: str | None, password: str | None, value: str) -> Command:
    """``T.<pin>`` or ``T.<login>/<password>``; dashes between digits are ignored."""
    voucher, slash, secret = value.partition("/")
    if slash:
        secret = secret.replace("-", "")
        if not VOUCHER_LOGIN.match(voucher) or not VOUCHER_PASSWORD.match(secret):
            raise CommandError("T.login/password: the voucher's login and password are digits")
        return Command("topup", login, password, voucher_login=voucher, voucher_password=secret)
    pin = voucher.replace("-", "")
    if not PIN.match(pin):
        raise CommandError("T. needs the voucher PIN: 12 to 32 digits")
    return Command("topup", login, password, pin=pin)


def parse(text: str) -> Command:
    """Parse one SMS text; raises CommandError."""
    text = text.strip()
    if not text:
        raise CommandError("empty message; send e.g. U.login P.password D.number")
    if len(text) > MAX_TEXT:
        raise CommandError("message too long")
    words = text.split()
    if len(words) == 1 and words[0].upper() == "I":
        return Command("info")
    fields: dict[str, str] = {}
    position: int | None = None
    last = None
    for word in words:
        match = re.fullmatch(r"([A-Za-z])\.(.+)", word)
        if match is None and last == "B" and not re.fullmatch(r"[Nn][0-9]{1,3}|[Ii]", word):
            fields["B"] += " " + word  # a directory name with spaces
            continue
        last = None
        if match is None:
            key_only = re.fullmatch(r"[Nn]([0-9]{1,3})", word)
            if key_only is not None and position is None:
                position = int(key_only.group(1))
                continue
            if word.upper() == "I" and "I" not in fields:
                fields["I"] = ""
                continue
            raise CommandError(f"cannot read {word[:20]!r}; fields look like D.number")
        key, value = match.group(1).upper(), match.group(2)
        if key not in "UPDORBT":
            raise CommandError(f"unknown field {key}.; use U. P. D. O. R. B. N T or I")
        if key in fields:
            raise CommandError(f"{key}. given twice")
        fields[key] = value
        last = key
    login, password = fields.pop("U", None), fields.pop("P", None)
    if (login is None) != (password is None):
        raise CommandError("give both U.login and P.password")
    actions = [k for k in ("D", "R", "B", "I", "T") if k in fields] + (["N"] if position is not None else [])
    if len(actions) != 1:
        raise CommandError("send one command: D. (call), R. (register), B. or N (directory), I (status), "
                           "T. (top-up)")
    action = actions[0]
    if action != "D" and "O" in fields:
        raise CommandError("O. goes with D. only")
    if action == "D":
        source = _number("O.", fields["O"]) if "O" in fields else None
        return Command("call", login, password, destination=_number("D.", fields["D"]), source=source)
    if action == "R":
        if login is None:
            raise CommandError("registering a number needs U.login P.password")
        return Command("register", login, password, number=_number("R.", fields["R"]))
    if action == "B":
        name = fields["B"].strip()
        if not 1 <= len(name) <= 64:
            raise CommandError("B.name: the name is 1 to 64 characters")
        return Command("directory", login, password, name=name)
    if action == "T":
        return _topup(login, password, fields["T"])
    if action == "N":
        if position is None or position < 1:
            raise CommandError("N needs an entry number from 1")
        return Command("directory", login, password, position=position)
    return Command("info", login, password)
