"""Example handlers, so that ``gaspar2 serve gaspar2.examples:echo`` works out of the box."""

import hashlib
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
