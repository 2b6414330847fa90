"""The front end: the listening socket and every client connection, from accept to close.

Everything here runs in gevent's hub as libev watcher callbacks: an io watcher on the
listener, and one on each client socket while it is read or written. There is no greenlet,
gevent socket or per-request wrapper: on small requests those cost more of the producer's
CPU than all the rest. A connection carries one request; once its frame is whole the front
end reports it, and later writes the reply or aborts the connection.

What a connection holds is charged to the memory budget (budget.py) as it changes; past the
limit, bodies are not read (see ``budget.Readers``). Accepting pauses while the
file-descriptor reserve (fds.py) is short, and a client that does not take its reply within
``write_timeout`` is reset.
"""

from __future__ import annotations

import _socket
import errno
import itertools
import logging
import socket
from typing import Any, Protocol

from . import frames, wire
from .arena import Arena, Region
from .budget import Budget, Readers
from .fds import FdReserve
from .guard import Throttled, guarded
from .listeners import DONTWAIT, FIN_ON_CLOSE, RESET_ON_CLOSE

log = logging.getLogger("gaspar2")

READ, WRITE = 1, 2
ACCEPTS_PER_WAKEUP = 64
ACCEPT_PAUSE = 0.1             # out of file descriptors: wait this long before accepting again


class Connection:
    """One client connection and its single request."""

    __slots__ = ("sock", "peer", "reader", "watcher", "payload", "region", "request_id", "seq",
                 "reply", "since", "accepted", "served_by", "size_in", "size_out", "closed",
                 "held", "holds_reply", "paused_at")

    def __init__(self, sock: Any, peer: Any, max_size: int, now: float,
                 arena: Arena | None = None):
        self.sock = sock
        self.peer = peer
        self.since = now        # the current stage's start: accepted, received, replying
        self.accepted = now
        self.served_by: int | None = None   # the id of the worker that answered
        self.size_in = self.size_out = 0
        self.held = 0           # bytes charged to the budget for it
        self.holds_reply = False
        self.paused_at = 0.0
        self.reader: frames.FrameReader | None = frames.FrameReader(max_size, arena)
        self.watcher: Any = None
        self.payload: Any = None
        self.region: Region | None = None   # the body's place in the arena, if it has one
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


class Acceptor:
    """The listeners (see listeners.py): accepting while the connection limit and the
    file-descriptor reserve allow, pausing otherwise. ``FrontEnd`` adds the connections."""

    loop: Any
    events: FrontEndEvents
    fds: FdReserve
    conns: set[Connection]
    max_connections: int
    throttled: Throttled
    listeners: list[Any]
    accepting = False
    retry_timer: Any = None

    def _accept_one(self, listener: Any) -> bool:
        raise NotImplementedError

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
        if self.listeners and not self.accepting and self._may_accept():
            self.accepting = True
            for listener in self.listeners:
                listener.watcher.start(self._on_accept, listener)

    def _may_accept(self) -> bool:
        return len(self.conns) < self.max_connections and not self.fds.short()

    def _retry_accepting(self, delay: float) -> None:
        """Accept again in ``delay`` seconds, counting the open files first."""
        if self.retry_timer is None or not self.retry_timer.active:
            self.retry_timer = self.loop.timer(delay)
            self.retry_timer.start(self._retry)

    @guarded
    def _retry(self) -> None:
        self.fds.recount(self.loop.now(), force=True)
        self._resume_accepting()
        if not self.accepting and self.listeners and self.fds.short():
            self._retry_accepting(ACCEPT_PAUSE)

    @guarded
    def _on_accept(self, listener: Any) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            if not self._may_accept():
                self._pause_accepting()     # the rest wait in the kernel's listen queue
                if self.fds.short():
                    self._retry_accepting(ACCEPT_PAUSE)
                break
            if not self._accept_one(listener):
                break
        self.events.accept_done()

    def _accept_failed(self, exc: OSError) -> None:
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            self.throttled.log(logging.ERROR, "accept", "accept failed: %s; pausing accepts "
                               "for %.1f s (%d connections open)", exc, ACCEPT_PAUSE,
                               len(self.conns))
            self._pause_accepting()
            self._retry_accepting(ACCEPT_PAUSE)
        elif exc.errno not in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
            self.throttled.log(logging.ERROR, "accept", "accept failed: %s", exc)


class FrontEnd(Acceptor):
    """Connections from every listener into one set."""

    def __init__(self, loop: Any, events: FrontEndEvents, settings: Any, budget: Budget,
                 fds: FdReserve):
        self.loop = loop
        self.events = events
        self.budget = budget
        self.fds = fds
        self.max_message_size = min(settings.max_message_size, budget.limit)
        self.arena: Arena | None = None     # large bodies go there, when there is one
        self.read_timeout = settings.read_timeout
        self.timeout = settings.timeout
        self.write_timeout = settings.write_timeout
        self.max_connections = settings.max_connections
        self.conns: set[Connection] = set()
        self.readers = Readers(budget)
        self.ids = itertools.count(1)
        self.accepted = 0
        self.listeners = []
        self.throttled = Throttled(log)
        self.after_reply: Any = None    # called instead of closing "ok" (see delivery.py)

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
        conn = Connection(sock, peer, self.max_message_size, self.loop.now(), self.arena)
        if listener.unix:
            conn.peer, conn.reader = listener.label, listener.reader(self.max_message_size)
        self.conns.add(conn)
        self.fds.opened()
        self.accepted += 1
        self._read(conn)            # the frame often arrives with the handshake
        return True

    # -- reading the request -----------------------------------------------------------------

    @guarded
    def _on_readable(self, conn: Connection) -> None:
        self._read(conn)

    def _read(self, conn: Connection) -> None:
        """Read what the client sent; report the request once its frame is whole."""
        reader = conn.reader
        assert reader is not None
        try:
            complete = reader.read_from(conn.sock, self.readers.allowance(conn))
        except BlockingIOError:
            complete = False
        except wire.FrameError as exc:
            self.fail(conn, "bad_frame", "bad frame: %s", exc, quiet=exc.is_probe)
            return
        except OSError as exc:
            self.fail(conn, "bad_frame", "read failed: %s", exc)
            return
        self._hold(conn, reader.capacity)
        if not complete:
            self._wait_for_more(conn)
            return
        if conn.watcher is not None:
            conn.watcher.stop()
            self._forget_reader(conn)       # it was read over several wake-ups
        conn.payload = reader.payload
        conn.size_in = len(conn.payload)
        if type(conn.payload) is Region:
            conn.region = conn.payload
        conn.reader = None
        conn.since = self.loop.now()
        conn.request_id = next(self.ids)
        self.events.request_received(conn)

    def _wait_for_more(self, conn: Connection) -> None:
        """Watch ``conn`` for the rest of its frame, or pause it while the budget is spent."""
        readers = self.readers
        if conn not in readers.reading:
            readers.reading[conn] = None
        if readers.allowance(conn) <= 0:
            if conn.watcher is not None:
                conn.watcher.stop()
            readers.paused[conn] = None
            conn.paused_at = self.loop.now()
        elif conn.watcher is None:
            conn.watcher = self.loop.io(conn.sock.fileno(), READ)
            conn.watcher.start(self._on_readable, conn)

    def _forget_reader(self, conn: Connection) -> None:
        resume = self.readers.forget(conn)
        if resume is not None:
            self._resume(resume)

    def _resume(self, conn: Connection) -> None:
        conn.since += self.loop.now() - conn.paused_at   # paused time is not the client's
        if conn.watcher is None:
            conn.watcher = self.loop.io(conn.sock.fileno(), READ)
        conn.watcher.start(self._on_readable, conn)

    def _hold(self, conn: Connection, nbytes: int, reply: bool = False) -> None:
        """Charge what ``conn`` holds now to the budget; resume readers if it frees some."""
        held = conn.held
        if conn.holds_reply or reply:
            self.budget.change(-held, conn.holds_reply)
            self.budget.change(nbytes, reply)
            conn.holds_reply = reply
        else:
            self.budget.change(nbytes - held)
        conn.held = nbytes
        if nbytes < held and self.readers.paused:
            for paused in self.readers.to_resume():
                self._resume(paused)

    # -- replies and failures ----------------------------------------------------------------

    def reply(self, conn: Connection, body: memoryview) -> None:
        conn.size_out = len(body)
        conn.payload = None                 # the worker is done with it
        self._write(conn, body)             # charged to the budget only if it must wait

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
                self._hold(conn, 0)
                self.after_reply(conn)
            return
        if conn.reply is None:
            conn.since = self.loop.now()            # write_timeout counts from here
            self._hold(conn, conn.size_out, reply=True)
        conn.reply = view[sent:]
        if conn.watcher is not None:
            conn.watcher.close()
        conn.watcher = self.loop.io(conn.sock.fileno(), WRITE)
        conn.watcher.start(self._on_writable, conn)

    @guarded
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
        self.fds.closed()
        if conn.reader is not None:
            self._forget_reader(conn)
            conn.reader.close()
        self.events.connection_closed(conn, outcome)
        if conn.region is not None:
            conn.region.drop_client()
        conn.payload = conn.reply = conn.reader = conn.region = None
        self._hold(conn, 0)
        if not self.accepting:
            self._resume_accepting()

    # -- timeouts ----------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Enforce read_timeout, timeout and write_timeout."""
        for conn in list(self.conns):
            if conn.reader is not None:
                if (self.read_timeout is not None and now - conn.since > self.read_timeout
                        and conn not in self.readers.paused):
                    self.fail(conn, "timeout", "no whole frame within %s s (read_timeout)",
                              self.read_timeout)
            elif conn.reply is not None:
                if self.write_timeout is not None and now - conn.since > self.write_timeout:
                    self.fail(conn, "timeout", "reply not taken within %s s (write_timeout)",
                              self.write_timeout)
            elif self.timeout is not None and now - conn.since > self.timeout:
                self.fail(conn, "timeout", "no answer within %s s (timeout)", self.timeout)

    def reading(self) -> int:
        return len(self.readers.reading)
