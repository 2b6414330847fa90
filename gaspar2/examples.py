"""Example handlers, so that ``gaspar2 serve gaspar2.examples:echo`` works out of the box."""

import hashlib
import re
import time


def echo(message: bytes) -> bytes:
    """Return the request unchanged."""
    return message


def sha256_chain(message: bytes) -> bytes:
    """Burn CPU: hash the message ``int(message)`` times over and return the hex digest.

    The message is the number of rounds in ASCII (``b"1000"``); the reply is 64 hex bytes.
    """
    rounds = int(message)
    digest = message
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex().encode()


def sleep(message: bytes) -> bytes:
    """Block for ``float(message)`` seconds (``b""`` or ``b"0"`` returns at once), then echo."""
    seconds = float(message or 0)
    if seconds > 0:
        time.sleep(seconds)
    return message


def backtrack(message: bytes) -> bytes:
    """Hold the GIL in one C call for a while, then echo: ``(a+)+$`` against
    ``int(message)`` letters ``a`` and a ``b`` backtracks through every split of the letters
    inside the regular expression engine, which never lets go of the GIL. Each letter
    doubles the time; ``b"0"`` returns at once."""
    letters = int(message or 0)
    if letters:
        re.match(rb"(a+)+$", b"a" * letters + b"b")
    return message
