"""What happens once a reply is written in full: whether the client got it.

A TCP send succeeds as soon as the kernel has the bytes, so a client that had already closed
its connection would be counted ``ok``; its kernel answers the reply with a reset instead.
When outcomes are observed (access log, metrics) and the client's FIN came before its reply
(one peek, only then), the reply is completed with a FIN and the outcome is read from the
socket: a reset or error means ``client_gone``, every byte acknowledged means ``ok``. A
client that only half-closed (``shutdown(SHUT_WR)``, which the protocol allows) gets its
reply and EOF at once; the producer merely holds the socket a round trip longer. Nothing
acknowledged within ``CHECKS`` counts as ``client_gone``.

On a unix socket the byte a ``HeldBackReader`` left is taken first (see listeners.py); a
unix peer that is gone makes the send itself fail, so no check is needed there.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import Any

from .listeners import PEEK, release

CHECKS = (0.002, 0.01, 0.05, 0.2, 0.5, 1.0)     # delays between checks, in seconds
OUTQ = struct.Struct("i")


def peer_closed(sock: Any) -> bool:
    """The client's FIN is in: EOF is waiting in the socket."""
    try:
        return bool(sock.recv(1, PEEK) == b"")
    except OSError:
        return False


def unacknowledged(sock: Any) -> int:
    (count,) = OUTQ.unpack(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * OUTQ.size))
    return int(count)


def delivered(sock: Any) -> bool | None:
    """True: every byte sent was acknowledged; False: the client reset or errored; None: not
    known yet."""
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return False
        if unacknowledged(sock):
            return None
        return not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    except OSError:
        return False


def after_reply(loop: Any, frontend: Any, listeners: list[Any], observed: bool) -> Delivery | None:
    """What the front end runs once a reply is written: nothing more (None) for TCP clients
    whose outcome nobody observes."""
    if observed or any(listener.unix for listener in listeners):
        return Delivery(loop, frontend, observed)
    return None


class Delivery:
    """The front end's ``after_reply``: closes each replied connection with its outcome."""

    def __init__(self, loop: Any, frontend: Any, confirm: bool):
        self.loop = loop
        self.frontend = frontend
        self.confirm = confirm          # outcomes are observed: confirm early closers

    def __call__(self, conn: Any) -> None:
        sock = conn.sock
        if sock.family == socket.AF_UNIX:
            release(sock)
        elif self.confirm and peer_closed(sock):
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._gone(conn)
                return
            conn.reply = memoryview(b"")      # written: no request timeout applies any more
            self._check(conn, 0)
            return
        self.frontend.close_replied(conn)

    def _check(self, conn: Any, step: int) -> None:
        if conn.closed:
            return
        outcome = delivered(conn.sock)
        if outcome is None and step < len(CHECKS):
            if conn.watcher is not None:
                conn.watcher.close()
            conn.watcher = self.loop.timer(CHECKS[step])
            conn.watcher.start(self._check, conn, step + 1)
        elif outcome:
            self.frontend.close_replied(conn)
        else:
            self._gone(conn)

    def _gone(self, conn: Any) -> None:
        self.frontend.fail(conn, "client_gone", "closed before its reply: not delivered",
                           quiet=True)
