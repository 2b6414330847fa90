"""The front end: the listening socket and every client connection, from accept to close.

Everything here runs in gevent's hub as libev watcher callbacks: an io watcher on the
listener, and one on each client socket while it is read or written. There is no greenlet,
gevent socket or per-request wrapper: on small requests those cost more of the producer's
CPU than all the rest. A connection carries one request; once its frame is whole the front
end reports it, and later writes the reply or aborts the connection.
"""

from __future__ import annotations

import _socket
import errno
import itertools
import logging
import socket
import struct
from typing import Any, Protocol

from . import wire

log = logging.getLogger("gaspar2")

READ, WRITE = 1, 2
RESET_ON_CLOSE = struct.pack("ii", 1, 0)     # SO_LINGER on, 0 s: close() sends a RST
FIN_ON_CLOSE = struct.pack("ii", 0, 0)
ACCEPTS_PER_WAKEUP = 64
DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
ACCEPT_PAUSE = 0.1             # out of file descriptors: wait this long before accepting again


class Connection:
    """One client connection and its single request."""

    __slots__ = ("sock", "peer", "reader", "watcher", "payload", "request_id", "seq", "reply",
                 "since", "accepted", "served_by", "size_out", "closed")

    def __init__(self, sock: Any, peer: Any, max_size: int, now: float):
        self.sock = sock
        self.peer = peer
        self.since = now        # accepted at; once the frame is in, received at
        self.accepted = now
        self.served_by: int | None = None   # the id of the worker that answered
        self.size_out = 0
        self.reader: wire.FrameReader | None = wire.FrameReader(max_size)
        self.watcher: Any = None
        self.payload: Any = None
        self.request_id = 0
        self.seq = 0            # its sequence number at the worker it was sent to
        self.reply: memoryview | None = None
        self.closed = False

    def __str__(self) -> str:
        if isinstance(self.peer, tuple):
            return "%s:%s" % self.peer[:2]
        return str(self.peer)


class FrontEndEvents(Protocol):
    def request_received(self, conn: Connection) -> None:
        """``conn``'s frame is whole: its request waits for a worker."""

    def accept_done(self) -> None:
        """A burst of connections was accepted and read: send what it brought."""

    def connection_closed(self, conn: Connection, outcome: str) -> None:
        """``conn`` is closed, with ``outcome`` ("ok", "timeout", ...)."""


class FrontEnd:
    """Connections from every listener (see listeners.py) into one set."""

    def __init__(self, loop: Any, events: FrontEndEvents, settings: Any):
        self.loop = loop
        self.events = events
        self.max_message_size = settings.max_message_size
        self.read_timeout = settings.read_timeout
        self.timeout = settings.timeout
        self.max_connections = settings.max_connections
        self.conns: set[Connection] = set()
        self.ids = itertools.count(1)
        self.accepted = 0
        self.listeners: list[Any] = []
        self.accepting = False
        self.after_reply: Any = None    # called instead of closing "ok" (see delivery.py)

    # -- the listeners ---------------------------------------------------------------------

    def listen(self, listeners: list[Any]) -> None:
        """Accept from these ``listeners.Listener`` objects once started."""
        for listener in listeners:
            listener.watcher = self.loop.io(listener.sock.fileno(), READ)
        self.listeners = listeners

    def start(self) -> None:
        self._resume_accepting()

    def stop_accepting(self) -> None:
        """Close the listener, taking in first the connections the kernel already completed:
        their clients have sent their requests, and closing would reset them."""
        if not self.listeners:
            return
        self._pause_accepting()
        for listener in self.listeners:
            while self._accept_one(listener):
                pass
        self.events.accept_done()
        self.close_listener()

    def close_listener(self) -> None:
        if self.listeners:
            self._pause_accepting()
            for listener in self.listeners:
                listener.close()
            self.listeners = []

    def _pause_accepting(self) -> None:
        self.accepting = False
        for listener in self.listeners:
            listener.watcher.stop()

    def _resume_accepting(self) -> None:
        if self.listeners:
            self.accepting = True
            for listener in self.listeners:
                listener.watcher.start(self._on_accept, listener)

    def _on_accept(self, listener: Any) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            if len(self.conns) >= self.max_connections:
                self._pause_accepting()     # the rest wait in the kernel's listen queue
                break
            if not self._accept_one(listener):
                break
        self.events.accept_done()

    def _accept_one(self, listener: Any) -> bool:
        """Accept one connection and read what it sent; False when there is none."""
        try:
            fd, peer = listener.sock._accept()
        except BlockingIOError:
            return False
        except OSError as exc:
            self._accept_failed(exc)
            return False
        # Naming the family spares three getsockopt calls; every read and write passes
        # MSG_DONTWAIT, which spares making the socket non-blocking.
        sock = _socket.socket(listener.family, socket.SOCK_STREAM, 0, fd)
        conn = Connection(sock, peer, self.max_message_size, self.loop.now())
        if listener.unix:
            conn.peer, conn.reader = listener.label, listener.reader(self.max_message_size)
        self.conns.add(conn)
        self.accepted += 1
        self._read(conn)            # the frame often arrives with the handshake
        return True

    def _accept_failed(self, exc: OSError) -> None:
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            log.error("accept failed: %s; pausing accepts for %.1f s (%d connections open)",
                      exc, ACCEPT_PAUSE, len(self.conns))
            self._pause_accepting()
            timer = self.loop.timer(ACCEPT_PAUSE)
            timer.start(self._resume_accepting)
        elif exc.errno not in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
            log.error("accept failed: %s", exc)

    # -- reading the request -----------------------------------------------------------------

    def _on_readable(self, conn: Connection) -> None:
        self._read(conn)

    def _read(self, conn: Connection) -> None:
        """Read what the client sent; report the request once its frame is whole."""
        assert conn.reader is not None
        try:
            complete = conn.reader.read_from(conn.sock)
        except BlockingIOError:
            complete = False
        except wire.FrameError as exc:
            self.fail(conn, "bad_frame", "bad frame: %s", exc, quiet=exc.is_probe)
            return
        except OSError as exc:
            self.fail(conn, "bad_frame", "read failed: %s", exc)
            return
        if not complete:
            if conn.watcher is None:
                conn.watcher = self.loop.io(conn.sock.fileno(), READ)
                conn.watcher.start(self._on_readable, conn)
            return
        if conn.watcher is not None:
            conn.watcher.stop()
        conn.payload = conn.reader.payload
        conn.reader = None
        conn.since = self.loop.now()
        conn.request_id = next(self.ids)
        self.events.request_received(conn)

    # -- replies and failures ----------------------------------------------------------------

    def reply(self, conn: Connection, body: memoryview) -> None:
        conn.size_out = len(body)
        self._write(conn, body)

    def _write(self, conn: Connection, view: memoryview) -> None:
        try:
            sent = conn.sock.send(view, DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.fail(conn, "client_gone", "client gone before its reply was written: %s", exc)
            return
        if sent == len(view):
            if self.after_reply is None:
                self._close(conn, "ok", FIN_ON_CLOSE)      # written in full: close in order
            else:
                self.after_reply(conn)
            return
        conn.reply = view[sent:]
        if conn.watcher is not None:
            conn.watcher.close()
        conn.watcher = self.loop.io(conn.sock.fileno(), WRITE)
        conn.watcher.start(self._on_writable, conn)

    def _on_writable(self, conn: Connection) -> None:
        conn.watcher.stop()
        assert conn.reply is not None
        self._write(conn, conn.reply)

    def close_replied(self, conn: Connection) -> None:
        self._close(conn, "ok", FIN_ON_CLOSE)

    def fail(self, conn: Connection, outcome: str, reason: str, *args: Any,
             quiet: bool = False) -> None:
        """Log why, then abort the connection so the client sees a reset, not a reply."""
        if conn.closed:
            return
        log.log(logging.INFO if quiet else logging.WARNING, "%s: " + reason, conn, *args)
        self._close(conn, outcome, RESET_ON_CLOSE)

    def fail_all(self, outcome: str, reason: str) -> None:
        for conn in list(self.conns):
            self.fail(conn, outcome, reason)

    def _close(self, conn: Connection, outcome: str, linger: bytes) -> None:
        if conn.watcher is not None:
            conn.watcher.close()
        try:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        except OSError:
            pass
        conn.sock.close()
        conn.closed = True
        self.conns.discard(conn)
        self.events.connection_closed(conn, outcome)
        conn.payload = conn.reply = None
        if not self.accepting and len(self.conns) < self.max_connections:
            self._resume_accepting()

    # -- timeouts ----------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Enforce read_timeout and timeout."""
        for conn in list(self.conns):
            if conn.reader is not None:
                if self.read_timeout is not None and now - conn.since > self.read_timeout:
                    self.fail(conn, "timeout", "no whole frame within %s s (read_timeout)",
                              self.read_timeout)
            elif conn.reply is None and self.timeout is not None and now - conn.since > self.timeout:
                self.fail(conn, "timeout", "no answer within %s s (timeout)", self.timeout)

    def reading(self) -> int:
        return sum(1 for conn in self.conns if conn.reader is not None)
