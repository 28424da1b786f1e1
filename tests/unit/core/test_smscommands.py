"""SMS callback commands (seed 002) from text."""

from __future__ import annotations

import pytest

from switchd.core.smscommands import Command, CommandError, parse


def test_the_seeds_examples():
    assert parse("U.callback P.pass D.48774417880 O.12345678") == Command(
        "call", "callback", "pass", destination="48774417880", source="12345678")
    assert parse("U.callback P.pass R.48600316058") == Command("register", "callback", "pass", number="48600316058")
    assert parse("B.office") == Command("directory", name="office")
    assert parse("N2") == Command("directory", position=2)
    assert parse("I") == Command("info")


def test_a_directory_name_with_spaces():
    assert parse("B.My office") == Command("directory", name="My office")
    assert parse("U.bob P.pw B.Aunt  Mary Jane") == Command("directory", "bob", "pw", name="Aunt Mary Jane")
    assert parse("B.Aunt Mary U.bob P.pw") == Command("directory", "bob", "pw", name="Aunt Mary")
    with pytest.raises(CommandError, match="cannot read"):
        parse("D.123456 office")  # only a name runs on


def test_forms_the_seed_implies():
    assert parse("  d.+48774417880  ") == Command("call", destination="+48774417880")  # sender authorises
    assert parse("O.12345678 D.48774417880 U.cb P.pw") == Command(
        "call", "cb", "pw", destination="48774417880", source="12345678")
    assert parse("U.cb P.pw I") == Command("info", "cb", "pw")
    assert parse("U.cb P.pw n3") == Command("directory", "cb", "pw", position=3)


def test_voucher_top_ups():
    assert parse("T.1234567890123456") == Command("topup", pin="1234567890123456")
    assert parse("t.1234-5678-9012-3456") == Command("topup", pin="1234567890123456")  # as printed on a card
    assert parse("U.cb P.pw T.123456789012") == Command("topup", "cb", "pw", pin="123456789012")
    assert parse("T.7000001/1234-5678-9012") == Command("topup", voucher_login="7000001",
                                                         voucher_password="123456789012")


@pytest.mark.parametrize("text, reason", [
    ("", "empty message"),
    ("hello", "cannot read 'hello'"),
    ("X.1", "unknown field X."),
    ("D.123 D.456", "D. given twice"),
    ("U.cb D.48774417880", "give both U.login and P.password"),
    ("D.48774417880 R.48600316058", "send one command"),
    ("U.cb P.pw", "send one command"),
    ("D.abc", "D. must be a phone number"),
    ("R.48600316058", "needs U.login P.password"),
    ("B.office O.123456", "O. goes with D. only"),
    ("N0", "entry number from 1"),
    ("D." + "1" * 40, "D. must be a phone number"),
    ("x" * 500, "too long"),
    ("T.12345", "T. needs the voucher PIN: 12 to 32 digits"),
    ("T.1234abcd56789012", "T. needs the voucher PIN"),
    ("T." + "1" * 33, "T. needs the voucher PIN"),
    ("T.12/34", "the voucher's login and password are digits"),
    ("T.7000001/", "the voucher's login and password are digits"),
    ("T.1234567890123 D.48774417880", "send one command"),
    ("T.1234567890123 T.1234567890123", "T. given twice"),
    ("T.1234567890123 O.123456", "O. goes with D. only"),
    ("U.cb T.1234567890123", "give both U.login and P.password"),
])
def test_bad_commands_say_what_is_wrong(text, reason):
    with pytest.raises(CommandError) as error:
        parse(text)
    assert reason in error.value.reason
