"""The request path, in the producer process: a request from the moment its connection is
accepted to the moment its reply is written, top to bottom, in the order it happens.

1. accept: the listeners' watchers accept while the connection limit and the
   file-descriptor reserve allow (``_on_accept``);
2. read: the frame is read over as many wake-ups as it takes, charged to the memory budget
   as it grows; past the budget, bodies wait (``_read``);
3. dispatch: whole requests wait in the backlog until a worker may take them, and go out
   several to a message (``_dispatch``, deciding with ``Dispatcher``);
4. answer: a worker's message on a sink is validated, its sender checked, and it acts only
   on a request that very worker holds (``on_sink``, ``_answer``);
5. reply: written without waiting, the rest when the client can take it, then the
   connection is closed in order; any failure resets it instead (``_write``, ``fail``).

Everything here runs in gevent's hub as libev watcher callbacks: no greenlet, no gevent
socket, no per-request wrapper. The policy it follows is in plain objects it calls directly,
each unit-tested on its own: ``Dispatcher`` (which worker, where every request is),
``Budget`` and ``Readers`` (memory), ``FdReserve`` (file descriptors), ``Supervisor`` (local
workers), ``RemoteMembers`` (remote ones). On the common path their counters are read
inline; a policy call is made only near a limit.

Only the worker that holds a request can answer it. Every worker message names its sender
and carries that sender's token: local workers inherit one from the producer (only they can
reach their ipc endpoints, in a directory only this user can enter); a remote worker gets
its own in the producer's answer to its HELLO, and with CURVE must also send from the key it
joined with (see members.py). A message whose token is not its sender's, or that answers a
request its sender does not hold, is dropped and counted. So request ids need not be secret:
they are sequential, and knowing one lets no one answer it.
"""

from __future__ import annotations

import _socket
import errno
import itertools
import logging
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

import zmq

from ..frontend import listeners
from ..frontend.budget import Budget, MiB, Readers, default_limit, release_memory
from ..frontend.connections import Connection
from ..frontend.fds import FdReserve, reserve_for
from ..frontend.frames import DONTWAIT, FIRST_READ, READ_SLICE
from ..frontend.listeners import FIN_ON_CLOSE, RESET_ON_CLOSE
from ..guard import Drops, Throttled, errors, guarded
from ..protocol import wire
from ..protocol.arena import Arena, Region
from ..protocol.progress import ProgressTable
from ..workers.supervisor import Supervisor
from . import metrics
from .dispatch import Dispatcher, Seat
from .hung import HungRequests
from .members import BACKLOG, RemoteMembers
from .metrics import Observer
from .transport import Transport, sender

log = logging.getLogger("gaspar2")

READ, WRITE = 1, 2
ACCEPTS_PER_WAKEUP = 64
ACCEPT_PAUSE = 0.1          # out of file descriptors: wait this long before accepting again
READS_PER_WAKEUP = 256      # messages read from a sink before the loop sees to the rest
RETRY_READ = 0.01           # after an error while draining a sink, look again this soon
JOIN_RETRY = 0.1            # a worker that could not be connected for want of files
TRIM_AFTER = 64 * 2**20     # hand freed memory back to the system past this much
TRIM_EVERY = 0.05           # and past the buffer limit, this often at most
PRESSURE_LOG_EVERY = 30.0   # the buffer limit reached: one line this often at most
REPLY_HEAD, REPLY_KIND = wire.HEADS[wire.REPLY], wire.REPLY[0]
CLIENT_CAUSED = frozenset({"bad_frame", "timeout", "client_gone"})     # outcomes: throttled


class Owner(Protocol):
    """What the producer's lifecycle hears from the request path."""

    def workers_ready(self) -> None:
        """Every local worker wanted is ready."""

    def worker_gone(self, description: str) -> None:
        """A worker exited (fatal while starting)."""

    def forkserver_gone(self) -> None: ...

    def idle(self) -> None:
        """Draining, and no client connection is open any more."""


class LoopClock:
    """The supervisor's clock and timers, on gevent's loop."""

    def __init__(self, loop: Any):
        self.loop = loop

    def now(self) -> float:
        return float(self.loop.now())

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        timer = self.loop.timer(delay)
        timer.start(guarded(callback))
        return timer


class RequestPath:
    def __init__(self, owner: Owner, settings: Any, loop: Any, progress: ProgressTable):
        self.owner = owner
        self.settings = settings
        self.loop = loop
        self.max_reply_size = settings.max_reply_size or settings.max_message_size
        self.budget = Budget(settings.buffer_limit or default_limit())
        self.readers = Readers(self.budget, self._only_readers_hold)
        # The metrics port sets its own share aside when it starts (see metrics.py).
        self.fds = FdReserve(reserve_for(settings.workers,
                                         BACKLOG * bool(settings.remote_workers)))
        self.max_message_size = min(settings.max_message_size, self.budget.limit)
        self.max_connections = settings.max_connections
        self.local_token = secrets.randbits(64) | 1     # what local workers' messages carry
        self.drops = Drops()
        self.throttled = Throttled(log)
        self.pressure = Throttled(log, PRESSURE_LOG_EVERY)     # the buffer limit reached
        self.dispatcher = Dispatcher(self, progress, time.monotonic, self.budget)
        self.supervisor = Supervisor(self, LoopClock(loop), settings.workers,
                                     settings.max_requests, settings.max_requests_jitter, progress)
        self.transport: Transport | None = None
        self.remote: RemoteMembers | None = None
        self.observer: Observer | None = None
        self.arena: Arena | None = None
        self.after_reply: Any = None    # called instead of closing "ok" (see delivery.py)
        self.conns: set[Connection] = set()
        self.ids = itertools.count(1)
        self.accepted = 0
        self.listeners: list[Any] = []
        self.accepting = False
        self.retry_timer: Any = None
        self.closing = False            # worker exits are expected now
        self.draining = False           # the owner waits for the last connection to close
        self._pending: Any = None       # a dispatch at the end of this loop iteration
        self.trimmed_at = 0.0           # when freed memory was last handed back
        # While local workers hold requests, look this often for stuck ones: on a wake-up for
        # their replies when one is due, else woken by the timer (see _check_stuck).
        self.stuck_every = settings.giveback_after / 2
        self.stuck_watch = loop.timer(self.stuck_every, self.stuck_every)
        self.looked_at = 0.0            # when the stuck watch last looked
        self.hung = HungRequests(settings.warn_after, self.supervisor, progress, self.dispatcher,
                                 lambda: self.transport.ipc_dir if self.transport else None)

    def open_arena(self) -> Arena | None:
        """Shared memory for large bodies and their replies, made before any worker is
        forked; None when it is off."""
        s = self.settings
        if s.shm_threshold > 0 and s.shm_size >= s.shm_threshold:
            self.arena = Arena(min(s.shm_size, self.budget.limit), s.shm_threshold)
        return self.arena

    def close(self) -> None:
        self.closing = True
        self.stuck_watch.stop()

    # -- 1. accept ---------------------------------------------------------------------------

    def listen(self, listeners: list[Any]) -> None:
        """Accept from these ``listeners.Listener`` objects once started."""
        for listener in listeners:
            listener.watcher = self.loop.io(listener.sock.fileno(), READ)
        self.listeners = listeners

    def start(self) -> None:
        self._resume_accepting()

    def _on_accept(self, listener: Any) -> None:
        """Accept what the kernel completed, up to ``ACCEPTS_PER_WAKEUP``, and read what each
        sent; then send what this wake-up read, together."""
        try:
            self._accept(listener, ACCEPTS_PER_WAKEUP)
            if self.dispatcher.waiting:
                self._dispatch()
        except Exception:
            errors.log(logging.ERROR, "accept", "error accepting, going on", exc_info=True)

    def _accept(self, listener: Any, most: int) -> None:
        """Accept up to ``most`` connections (all there are, if negative): as many as the
        listener says are queued, or, where it cannot tell, until none is left."""
        queued = listener.queued()
        if queued is not None:          # at least one: it was readable, or it is stopping
            queued = max(queued, 1)
            most = queued if most < 0 else min(most, queued)
        conns, fds = self.conns, self.fds
        while most != 0:
            most -= 1
            if len(conns) >= self.max_connections or fds.open >= fds.limit - fds.reserve:
                self._pause_accepting()     # the rest wait in the kernel's listen queue
                if fds.short():
                    self._retry_accepting(ACCEPT_PAUSE)
                return
            try:
                fd, peer = listener.sock._accept()
            except BlockingIOError:
                return
            except OSError as exc:
                self._accept_failed(exc)
                return
            # Naming the family spares three getsockopt calls; every read and write passes
            # MSG_DONTWAIT, which spares making the socket non-blocking.
            sock = _socket.socket(listener.family, socket.SOCK_STREAM, 0, fd)
            if listener.admit is not None and not listener.admit(sock):
                continue        # a peer an abstract socket's mode does not admit
            conn = Connection(sock, peer, self.max_message_size, self.loop.now(), self.arena)
            if listener.unix:
                conn.peer, conn.reader = listener.label, listener.reader(self.max_message_size)
            conns.add(conn)
            fds.open += 1
            self.accepted += 1
            self._read(conn)            # the frame often arrives with the handshake

    def _accept_failed(self, exc: OSError) -> None:
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            self.throttled.log(logging.ERROR, "accept", "accept failed: %s; pausing accepts "
                               "for %.1f s (%d connections open)", exc, ACCEPT_PAUSE,
                               len(self.conns))
            self._pause_accepting()
            self._retry_accepting(ACCEPT_PAUSE)
        elif exc.errno not in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
            self.throttled.log(logging.ERROR, "accept", "accept failed: %s", exc)

    def _pause_accepting(self) -> None:
        self.accepting = False
        for listener in self.listeners:
            listener.watcher.stop()

    def _resume_accepting(self) -> None:
        if (self.listeners and not self.accepting and len(self.conns) < self.max_connections
                and not self.fds.short()):
            self.accepting = True
            for listener in self.listeners:
                listener.watcher.start(self._on_accept, listener)

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

    def refuse_handshakes(self) -> bool:
        """Let no new connection in, while those under way complete (see listeners.py);
        True if a listener does so, and the stop should wait a moment for them."""
        return any([listeners.refuse_handshakes(listener) for listener in self.listeners])

    def stop_accepting(self) -> None:
        """Close the listeners, taking in first the connections the kernel already completed:
        their clients have sent their requests, and closing would reset them."""
        if not self.listeners:
            return
        self._pause_accepting()
        for listener in self.listeners:
            self._accept(listener, -1)
        self._dispatch()
        self.close_listener()

    def close_listener(self) -> None:
        if self.listeners:
            self._pause_accepting()
            for listener in self.listeners:
                listener.close()
            self.listeners = []

    # -- 2. read the frame -------------------------------------------------------------------

    def _on_readable(self, conn: Connection) -> None:
        try:
            self._read(conn)
            self._schedule_dispatch()
        except Exception:
            errors.log(logging.ERROR, "read", "error reading a request, going on",
                       exc_info=True)

    def _read(self, conn: Connection) -> None:
        """Read what the client sent; put the request in the backlog once it is whole."""
        reader = conn.reader
        assert reader is not None
        budget = self.budget
        room = budget.bulk - budget.used        # what its buffer may grow by
        if room >= READ_SLICE and room >= self.readers.owed:
            allowance = READ_SLICE
        else:
            allowance = self.readers.allowance(conn)
            if allowance > room:                # the oldest, reading past the limit
                room, allowance = self.max_message_size, READ_SLICE
            else:
                room = max(allowance, 0)        # what the frames announced before leave
                allowance = min(allowance, READ_SLICE)
                if reader.length < 0 and room < FIRST_READ and (
                        budget.used >= budget.limit + self.max_message_size
                        or not reader.arrived_whole(conn.sock)):
                    self._pause(conn)           # only a small frame come whole is read now
                    return
        try:
            complete = reader.read_from(conn.sock, allowance, room)
        except BlockingIOError:
            complete = False
        except wire.FrameError as exc:
            self.fail(conn, "bad_frame", "bad frame: %s", exc, quiet=exc.is_probe,
                      key="bad frame %s %s %s" % (exc.kind, exc.in_header, exc.is_probe))
            return
        except OSError as exc:
            self.fail(conn, "bad_frame", "read failed: %s", exc)
            return
        if not complete:
            self._charge(conn, reader.capacity)
            self._wait_for_more(conn)
            return
        if conn.watcher is not None:
            conn.watcher.stop()
            self._forget_reader(conn)       # it was read over several wake-ups
        payload = conn.payload = reader.payload
        assert payload is not None          # complete
        conn.size_in = len(payload)
        if type(payload) is Region:
            conn.region = payload
            held = payload.capacity
        else:
            held = conn.size_in
        if held > conn.held:                # the budget's counters, inline while growing
            budget.used += held - conn.held
            conn.held = held
            if budget.used > budget.peak:
                budget.peak = budget.used
            if held >= FIRST_READ:
                self._count_idle_pages()
        elif held < conn.held:
            self._charge(conn, held)
        conn.reader = None
        conn.since = self.loop.now()
        conn.request_id = next(self.ids)
        self.dispatcher.waiting.append(conn)

    def _wait_for_more(self, conn: Connection) -> None:
        """Watch ``conn`` for the rest of its frame, or pause it while the budget is spent.
        Past the limit, a connection that has sent nothing yet is still watched: a small
        request that comes whole is read whole (``FrameReader.arrived_whole``), up to one
        ``max_message_size`` past the limit; anything else waits for budget."""
        readers, reader = self.readers, conn.reader
        assert reader is not None
        if conn not in readers.reading:
            readers.reading[conn] = None
        if reader.length >= 0:
            readers.owes(conn, reader.length - conn.held)
        if readers.allowance(conn) <= 0 and (reader.length >= 0 or reader.header or self.budget
                                             .used >= self.budget.limit + self.max_message_size):
            self._pause(conn)
        elif conn.watcher is None:
            conn.watcher = self.loop.io(conn.sock.fileno(), READ)
            conn.watcher.start(self._on_readable, conn)

    def _only_readers_hold(self) -> bool:
        """No request read whole holds memory: none waits, is at a worker or is replying."""
        return (not self.dispatcher.waiting and not self.budget.replies
                and not self.dispatcher.at_workers())

    def _pause(self, conn: Connection) -> None:
        """Read ``conn`` no more until the budget has room (``Readers.to_resume``)."""
        if conn.watcher is not None:
            conn.watcher.stop()
        readers = self.readers
        if conn not in readers.reading:
            readers.reading[conn] = None
        readers.paused[conn] = None
        conn.paused_at = self.loop.now()
        budget = self.budget
        self.pressure.log(logging.WARNING, "budget", "buffer limit reached: %.1f MiB held of "
                          "%.1f MiB (%.1f MiB in replies being written), %d requests waiting "
                          "for a worker; reading paused for %d connections", budget.used / MiB,
                          budget.limit / MiB, budget.replies / MiB, len(self.dispatcher.waiting),
                          len(readers.paused))

    def _forget_reader(self, conn: Connection) -> None:
        resume = self.readers.forget(conn)
        if resume is not None:
            self._resume(resume)

    def _resume(self, conn: Connection) -> None:
        conn.since += self.loop.now() - conn.paused_at   # paused time is not the client's
        if conn.watcher is None:
            conn.watcher = self.loop.io(conn.sock.fileno(), READ)
        conn.watcher.start(self._on_readable, conn)

    def _charge(self, conn: Connection, nbytes: int, reply: bool = False) -> None:
        """Charge what ``conn`` holds now to the budget; resume readers if it frees some."""
        held, budget = conn.held, self.budget
        budget.used += nbytes - held
        if conn.holds_reply or reply:
            budget.replies += (nbytes if reply else 0) - (held if conn.holds_reply else 0)
            conn.holds_reply = reply
        if budget.used > budget.peak:
            budget.peak = budget.used
        conn.held = nbytes
        if nbytes > held:
            self._count_idle_pages()
        elif nbytes < held and self.readers.paused:
            for paused in self.readers.to_resume():
                self._resume(paused)

    def _count_idle_pages(self) -> None:
        """Memory freed but kept is memory too. The arena's free pages that are still
        resident go back to the system once they and the bytes held pass the limit (see
        arena.py); past the limit, so does what the allocator keeps of freed buffers, at
        most every ``TRIM_EVERY`` seconds."""
        arena, budget = self.arena, self.budget
        if arena is not None:
            idle = arena.idle_resident
            if idle > 0 and budget.used + idle > budget.limit:
                arena.trim()
        if budget.used > budget.bulk:
            now = self.loop.now()
            if now - self.trimmed_at >= TRIM_EVERY:
                self.trimmed_at = now
                release_memory()

    # -- 3. dispatch -------------------------------------------------------------------------

    def _schedule_dispatch(self) -> None:
        """Dispatch at the end of this loop iteration, so that requests read by several
        watchers in it go out together."""
        if self._pending is None and self.dispatcher.waiting:
            self._pending = self.loop.run_callback(self._scheduled_dispatch)

    @guarded
    def _scheduled_dispatch(self) -> None:
        self._pending = None
        self._dispatch()

    def _dispatch(self) -> None:
        """Send what waits to the workers that may take it (see dispatch.py)."""
        if self._pending is not None:   # this one sends what that one would have
            self._pending.stop()
            self._pending = None
        if self.dispatcher.dispatch() and not self.stuck_watch.active:
            self.stuck_watch.start(self._check_stuck)

    @guarded
    def _check_stuck(self) -> None:
        """Take back what stuck workers hold. Called by the stuck watch's timer, or by a
        wake-up for replies once a look is due, which puts the timer back by a period: a
        loop woken by replies anyway is not woken again to look (at 1 ms jobs those extra
        wake-ups were a tenth of the producer's CPU)."""
        self.looked_at = self.loop.now()
        if self.dispatcher.check():
            self._dispatch()
        if not self.dispatcher.busy():
            self.stuck_watch.stop()
        else:
            self.stuck_watch.again(self._check_stuck, update=False)

    # -- 4. the workers' answers -------------------------------------------------------------

    def on_sink(self, sock: zmq.SyncSocket) -> None:
        """Drain a sink (its FD is edge-triggered): at most ``READS_PER_WAKEUP`` messages,
        the rest from a callback, so a flood on the remote sink cannot keep the loop from
        its clients. An error while draining is logged and followed by another look."""
        try:
            if not self._drain(sock, READS_PER_WAKEUP):
                assert self.transport is not None
                self.transport.look_again(sock)                 # more is waiting
        except Exception:
            errors.log(logging.ERROR, "sink", "error reading a sink, reading on", exc_info=True)
            timer = self.loop.timer(RETRY_READ)
            timer.start(self.on_sink, sock)
        if self.dispatcher.waiting:
            self._dispatch()
        if self.stuck_watch.active and self.loop.now() - self.looked_at >= self.stuck_every:
            self._check_stuck()

    def read_all(self) -> None:
        """Take in every answer already sent (and act on it); what a long hostile message
        on the remote sink leaves waiting is read by the next look."""
        assert self.transport is not None
        self._drain(self.transport.sink)
        remote = self.transport.remote
        if remote is not None and not self._drain(remote.sock):
            self.transport.look_again(remote.sock)

    def _drain(self, sock: zmq.SyncSocket, most: int = -1) -> bool:
        """Read and act on up to ``most`` messages (all, if negative); True once the sink is
        drained. It stops when ZeroMQ's EVENTS shows no more input: reading EVENTS re-arms
        the edge-triggered FD, and costs less than a read that fails with zmq.Again. Local
        workers are trusted with whole messages; the remote sink is read by its own rules."""
        assert self.transport is not None
        if sock is not self.transport.sink:
            return self._drain_remote(most)
        token = self.local_token
        while most != 0:
            try:
                frame = sock.recv(wire.NOBLOCK, copy=False)
            except zmq.Again:
                return True
            most -= 1
            view = frame.buffer
            try:
                if (not frame.more and len(view) >= REPLY_HEAD.size     # a REPLY, read as
                        and view[0] == REPLY_KIND):                  # wire.decode reads it
                    _, worker_id, sent_token, request_id = REPLY_HEAD.unpack_from(view)
                    if sent_token == token and worker_id < wire.REMOTE_ID_MIN:
                        self._answer(wire.REPLY, worker_id, request_id, view[REPLY_HEAD.size:])
                    else:
                        self._forged(wire.REPLY, worker_id)
                else:
                    self._decode_local(sock, frame)
            except Exception:
                errors.log(logging.ERROR, "message", "error acting on a worker's message, "
                           "going on", exc_info=True)
            if not int(wire.EVENTS_OF(sock, wire.EVENTS)) & wire.POLLIN:
                return True
        return False

    def _decode_local(self, sock: zmq.SyncSocket, frame: zmq.Frame) -> None:
        """Any message on the local sink but a one-frame REPLY."""
        frames = wire.with_rest(sock, frame) if frame.more else [frame]
        try:
            message = wire.decode(frames)
        except wire.BadMessage as exc:
            self.drops.count("malformed", "local sink: %s" % exc)
        else:
            self._act_on(message, True, None)

    def _drain_remote(self, most: int) -> bool:
        """``_drain`` for the remote sink: each message is bounded as a whole while it is
        read, and one past the bounds is thrown away a slice per look (members.py
        ``BoundedReader``), so no peer's message can hold the loop."""
        assert self.transport is not None and self.transport.remote is not None
        remote = self.transport.remote
        reader, sock, curve = remote.reader, remote.sock, remote.curve
        reader.look()
        while most != 0:
            try:
                frames = reader.read()
            except wire.BadMessage as exc:
                most -= 1
                self.drops.count("malformed", "remote sink: %s" % exc)
                continue
            if frames is None:
                return not reader.discarding
            most -= 1
            try:
                message = wire.decode(frames)
            except wire.BadMessage as exc:
                self.drops.count("malformed", "remote sink: %s" % exc)
            else:
                user_id = frames[0].get("User-Id") if curve else None
                try:
                    self._act_on(message, False, user_id if isinstance(user_id, str) else None)
                except Exception:
                    errors.log(logging.ERROR, "message", "error acting on a %r message, "
                               "going on", message.kind, exc_info=True)
            if not int(wire.EVENTS_OF(sock, wire.EVENTS)) & wire.POLLIN:
                return True
        return False

    def _act_on(self, message: wire.Message, local: bool, user_id: str | None) -> None:
        kind = message.kind
        if kind == wire.HELLO:
            self._hello(message, local, user_id)
        elif not (message.token == self.local_token and message.worker_id < wire.REMOTE_ID_MIN
                  if local else self.remote is not None
                  and self.remote.authentic(message, user_id, self.loop.now())):
            self._forged(kind, message.worker_id)
        elif kind != wire.HEARTBEAT:
            assert message.body is not None     # a BODIED kind (wire.decode)
            self._answer(kind, message.worker_id, message.field, message.body)

    def _forged(self, kind: bytes, worker_id: int) -> None:
        self.drops.count("sender", "a %r naming worker %x, with a token or key not its own"
                         % (kind, worker_id))

    def _hello(self, message: wire.Message, local: bool, user_id: str | None) -> None:
        if local and message.token == self.local_token and len(message.frames) == 1:
            self.supervisor.hello(message.worker_id, message.field)
        elif not local and self.remote is not None:
            self.remote.hello(message, user_id, self.loop.now())
        else:
            self.drops.count("sender", "a HELLO naming worker %x" % message.worker_id)

    def _answer(self, kind: bytes, worker_id: int, request_id: int, body: memoryview) -> None:
        """A REPLY, SHARED_REPLY or ERROR from a genuine sender: act on it if that sender
        holds the request."""
        conn = self.dispatcher.take(worker_id, request_id)
        if conn is None:
            self.drops.count("not_held", "a %r from worker %x for request %d, which it does "
                             "not hold" % (kind, worker_id, request_id))
            return
        if conn.region is not None:
            conn.region.drop_worker()
        if conn.closed:
            log.info("dropped the late answer to request %d from %s: its client is gone",
                     request_id, conn)
            return
        conn.served_by = worker_id
        if kind == wire.SHARED_REPLY:
            shared = self._shared_reply(conn, body)
            if shared is None:
                return
            body = shared
        if kind == wire.ERROR:
            text = bytes(body).decode("utf-8", "replace")
            self.fail(conn, "handler_error", "handler failed in %s", text)
        elif len(body) > self.max_reply_size:
            self.fail(conn, "handler_error", "a reply of %d bytes from worker %x, over "
                      "max_reply_size %d", len(body), worker_id, self.max_reply_size)
        else:
            conn.size_out = size = len(body)
            conn.payload = None             # the worker is done with it
            self._write(conn, body)         # charged to the budget only if it must wait
            budget = self.budget            # plan for replies this large for a while
            budget.expected = max(size, budget.expected - (budget.expected >> 3))
            by_class, size_class = budget.by_class, conn.size_in.bit_length()
            by_class[size_class] = max(size, by_class[size_class] - (by_class[size_class] >> 3))

    def _shared_reply(self, conn: Connection, size: memoryview) -> memoryview | None:
        """The reply a local worker wrote over the request's body in the arena."""
        region = conn.region
        if len(size) != wire.SIZE.size or region is None:
            self.fail(conn, "handler_error", "a shared reply with no place to be")
            return None
        (length,) = wire.SIZE.unpack(size)
        if length > region.capacity:
            self.fail(conn, "handler_error", "a shared reply of %d bytes in a region of %d",
                      length, region.capacity)
            return None
        return region.view(length)

    # -- 5. the reply, or a reset ------------------------------------------------------------

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
                self._charge(conn, 0)
                self.after_reply(conn)
            return
        if conn.reply is None:
            conn.since = self.loop.now()            # write_timeout counts from here
            self._charge(conn, conn.size_out, reply=True)
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
        """Delivery confirmed the reply (see delivery.py)."""
        self._close(conn, "ok", FIN_ON_CLOSE)

    def fail(self, conn: Connection, outcome: str, reason: str, *args: Any,
             quiet: bool = False, key: str | None = None) -> None:
        """Log why, then abort the connection so the client sees a reset, not a reply. What
        clients cause is logged once a second at most for each reason, with a count of the
        others (the access log has a line for every request); ``key`` tells kinds of one
        reason apart."""
        if conn.closed:
            return
        level = logging.INFO if quiet else logging.WARNING
        if outcome in CLIENT_CAUSED:
            self.throttled.log(level, key or reason, "%s: " + reason, conn, *args)
        else:
            log.log(level, "%s: " + reason, conn, *args)
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
        conns = self.conns
        conns.discard(conn)
        self.fds.open -= 1
        if conn.reader is not None:
            self._forget_reader(conn)
            conn.reader.close()
        if self.observer is not None:
            self.observer.request_done(conn, outcome, self.loop.now())
        if conn.region is not None:
            conn.region.drop_client()
        conn.payload = conn.reply = conn.reader = conn.region = None
        if conn.held:                       # it held memory: release it, inline
            self.budget.used -= conn.held
            if conn.holds_reply:
                self.budget.replies -= conn.held
                conn.holds_reply = False
            conn.held = 0
            if self.readers.paused:
                for paused in self.readers.to_resume():
                    self._resume(paused)
        if not self.accepting:
            self._resume_accepting()
        if self.draining and not conns:
            self.owner.idle()
        if self.dispatcher.waiting:         # what it held may let another request go
            self._schedule_dispatch()

    # -- workers come and go (the supervisor's, remote members' and dispatch's events) -------

    def worker_ready(self, worker: Any) -> None:
        if worker.id in self.dispatcher.seats:
            log.warning("%r claims the id of a worker already serving: ignored", worker)
            return
        try:
            if worker.remote:
                send = sender(worker.push)
            else:
                assert self.transport is not None
                send = self.transport.connect_local(worker.id)
        except zmq.ZMQError as exc:
            self.throttled.log(logging.ERROR, "join", "cannot connect to %r: %s; retrying in "
                               "%.1f s", worker, exc, JOIN_RETRY)
            self.loop.timer(JOIN_RETRY).start(self._join_again, worker)
            return
        window = 1 if worker.remote else self.settings.window
        slot = None if worker.remote else worker.slot
        self.dispatcher.add(Seat(worker.id, send, window, worker.lifetime, slot))
        if self.supervisor.ready_count() >= self.supervisor.size:
            self.owner.workers_ready()
        self._schedule_dispatch()

    @guarded
    def _join_again(self, worker: Any) -> None:
        if self.supervisor.workers.get(worker.id) is worker and not self.closing:
            self.worker_ready(worker)

    def worker_retiring(self, worker: Any) -> None:
        self.dispatcher.retire(worker.id)

    def worker_lost(self, worker: Any, cause: str, kind: str, claimed: int | None) -> None:
        """A worker is gone: fail the requests it ran, give the others to the rest."""
        assert self.transport is not None
        if self.observer is not None:
            self.observer.worker_exited(kind)
        self.read_all()                 # replies it sent before it died are not lost
        for conn in self.dispatcher.remove(worker.id, claimed):
            if claimed is not None and conn.seq < claimed:   # run, its reply lost with it
                self.fail(conn, "worker_died", "%r %s after running this request, before its "
                          "reply reached the producer", worker, cause)
            else:
                self.fail(conn, "worker_died", "%r %s while running this request", worker, cause)
        self.transport.disconnect(worker.id)
        self.hung.forget(worker.id)
        asked = self.closing or kind == "replaced"     # it was told to leave
        log.log(logging.INFO if asked else logging.WARNING, "%r %s", worker, cause)
        if kind != "replaced":
            self.owner.worker_gone("%r %s" % (worker, cause))
        self._schedule_dispatch()

    def forkserver_gone(self) -> None:
        self.owner.forkserver_gone()

    def seat_spent(self, seat: Seat) -> None:
        self.supervisor.retire(seat.worker_id, "took %d requests (max_requests)" % seat.assigned)

    def seat_drained(self, seat: Seat) -> None:
        self.supervisor.drained(seat.worker_id)

    def request_left(self, conn: Connection) -> None:
        """A request left a worker's books other than by its answer: taken back, or its
        worker is gone."""
        if conn.region is not None:
            conn.region.drop_worker()

    # -- housekeeping, every SWEEP_INTERVAL --------------------------------------------------

    @guarded
    def sweep(self) -> None:
        """Enforce the timeouts; count the open files; give freed memory back."""
        now = self.loop.now()
        self.fds.recount(now)
        self._enforce_timeouts(now)
        self.supervisor.check_liveness(self.settings.worker_timeout, self.settings.heartbeat)
        self.hung.check()
        if self.budget.worth_trimming(TRIM_AFTER):
            release_memory()
            if self.arena is not None:
                self.arena.trim()
            self.budget.trimmed()
        if self.remote is not None:
            self.remote.check(now)

    def _enforce_timeouts(self, now: float) -> None:
        """read_timeout, timeout and write_timeout."""
        s = self.settings
        for conn in list(self.conns):
            if conn.reader is not None:
                if (s.read_timeout is not None and now - conn.since > s.read_timeout
                        and conn not in self.readers.paused):
                    self.fail(conn, "timeout", "no whole frame within %s s (read_timeout)",
                              s.read_timeout)
            elif conn.reply is not None:
                if s.write_timeout is not None and now - conn.since > s.write_timeout:
                    self.fail(conn, "timeout", "reply not taken within %s s (write_timeout)",
                              s.write_timeout)
            elif s.timeout is not None and now - conn.since > s.timeout:
                self.fail(conn, "timeout", "no answer within %s s (timeout)", s.timeout)

    # -- what operators see ------------------------------------------------------------------

    def reading(self) -> int:
        return len(self.readers.reading)

    def ready_count(self) -> int:
        return self.supervisor.ready_count() + (self.remote.ready_count() if self.remote else 0)

    def status(self) -> dict[str, int]:
        return {**metrics.status(self, self.dispatcher, self.ready_count()), **self.counts()}

    def counts(self) -> dict[str, int]:
        """What the bounds hold now: bytes buffered, messages dropped, remote connections,
        workers running one request past warn_after."""
        transport = self.transport
        return {"buffered": self.budget.used, "dropped": self.drops.total(),
                "workers_stuck": self.hung.stuck,
                "shared": self.arena.used if self.arena is not None else 0,
                "remote_connections": transport.remote.connections
                if transport is not None and transport.remote is not None else 0}
