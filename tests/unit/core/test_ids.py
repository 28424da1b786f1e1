"""Identifiers from core.ids: the right length, hexadecimal, never repeated,
different after a fork."""

from __future__ import annotations

import os

from switchd.core import ids


def test_tokens_have_the_asked_length_and_do_not_repeat():
    seen = {ids.token_hex(8) for _ in range(100_000)}
    assert len(seen) == 100_000
    assert all(len(t) == 16 and int(t, 16) >= 0 for t in list(seen)[:100])
    assert len(ids.token_hex(12)) == 24 and len(ids.token_hex(16)) == 32


def test_a_forked_child_draws_a_new_key():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first token, sent to the parent
        os.write(write, ids.token_hex(16).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    # The parent's next token is what the child would have drawn with the parent's key
    # and counter; the child drew with its own key.
    assert len(child) == 32 and child != ids.token_hex(16)
