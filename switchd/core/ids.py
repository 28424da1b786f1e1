"""Identifiers for calls, dialogs and transactions, without a system call each.

Call-IDs, tags and Via branches must be unique and should not be guessable
(knowing a dialog's Call-ID and tags is what it takes to end it with a forged
BYE). ``secrets.token_hex`` gives that, but each call is a ``getrandom``
system call that releases the GIL, and under load getting it back can cost the
reactor thread milliseconds behind a database thread. Here the bytes are a
keyed BLAKE2b of a counter: a pseudorandom function whose 256-bit key comes
from the operating system once per process, so outputs cannot be predicted
from earlier ones, and the hash runs in C without releasing the GIL.

Not for secrets that must survive a leak of process memory (API keys,
password salts, digest nonces): those still come from ``secrets``.
"""

from __future__ import annotations

import hashlib
import itertools
import os

_KEY = os.urandom(32)
_COUNTER = itertools.count()
_PID = os.getpid()


def token_hex(nbytes: int) -> str:
    """``2 * nbytes`` hexadecimal digits (1 to 64 bytes), unique in this process."""
    global _KEY, _COUNTER, _PID
    if os.getpid() != _PID:  # a forked child must not repeat its parent's identifiers
        _KEY, _COUNTER, _PID = os.urandom(32), itertools.count(), os.getpid()
    return hashlib.blake2b(next(_COUNTER).to_bytes(8, "little"), key=_KEY, digest_size=nbytes).hexdigest()
