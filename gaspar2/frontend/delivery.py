"""What happens once a reply is written in full: whether the client got it.

A TCP send succeeds as soon as the kernel has the bytes, so a client that had closed or
reset its connection, or read part of a large reply and reset, would be counted ``ok``.
When outcomes are observed (access log, metrics), the reply is completed with a FIN and the
connection is held until the client's own FIN: then every byte acknowledged means ``ok``,
and a reset or error means ``client_gone``. Bytes the client sends after its frame (the
protocol has none) are ``bad_frame``: its kernel would answer the close with a reset, and
the client could lose the reply it was reading. A client that holds its end open long
after its reply is let go by ``write_timeout``. When nobody observes outcomes, a reply
written in full is closed at once and counted ``ok``.

On a unix socket the byte a ``HeldBackReader`` left is taken first (see listeners.py); a
unix peer that is gone makes the send itself fail, so no check is needed there.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import Any

from ..guard import guarded
from .listeners import PEEK, release

CHECKS = (0.002, 0.01, 0.05, 0.2, 0.5, 1.0)     # delays between checks, in seconds
READ = 1
OUTQ = struct.Struct("i")


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
        self.confirm = confirm          # outcomes are observed: confirm what the client got

    def __call__(self, conn: Any) -> None:
        sock = conn.sock
        if sock.family == socket.AF_UNIX:
            release(sock)
        elif self.confirm:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._gone(conn)
                return
            conn.reply = memoryview(b"")      # written: write_timeout lets a lingerer go
            conn.since = self.loop.now()
            if conn.watcher is not None:
                conn.watcher.close()
            conn.watcher = self.loop.io(sock.fileno(), READ)
            conn.watcher.start(self._on_readable, conn)
            return
        self.frontend.close_replied(conn)

    @guarded
    def _on_readable(self, conn: Any) -> None:
        """The client's FIN, its reset, or bytes it should not have sent."""
        try:
            data = conn.sock.recv(1, PEEK)
        except BlockingIOError:
            return
        except OSError:
            self._gone(conn)
            return
        conn.watcher.stop()
        if data:
            self.frontend.fail(conn, "bad_frame", "bytes after its frame, once its reply was "
                               "sent: reset", quiet=True)
        else:
            self._check(conn, 0)

    @guarded
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
