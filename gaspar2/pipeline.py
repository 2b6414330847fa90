"""The request path: how a request travels between the parts, and how the parts hear of
each other.

front end (frame read) -> dispatch (backlog, a free worker) -> transport (PUSH) -> worker
-> transport (sink) -> dispatch (who held it) -> front end (reply written, or reset)

The pipeline is the one listener of every part (``FrontEndEvents``, ``DispatchEvents``,
``SupervisorEvents``, ``TransportEvents``): no part calls another. It holds no state of its
own but for one flag; what concerns the producer's lifecycle goes up through
``PipelineEvents``.

Only the worker that holds a request can answer it. Every worker message names its sender
and carries that sender's token: local workers inherit one from the producer (only they can
reach their ipc endpoints, in a directory only this user can enter); a remote worker gets
its own in the producer's answer to its HELLO, and with CURVE must also send from the key it
joined with (see remote.py). A message whose token is not its sender's, or that answers a
request its sender does not hold, is dropped and counted. So request ids need not be secret:
they are sequential, and knowing one lets no one answer it.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any, Callable, Protocol

import zmq

from . import observe, wire
from .arena import Arena
from .budget import Budget, default_limit, release_memory
from .connections import Connection, FrontEnd
from .dispatch import Dispatcher, Seat
from .fds import FdReserve, reserve_for
from .guard import Drops, Throttled, guarded
from .observe import METRICS_CONNECTIONS, Observer
from .progress import ProgressTable
from .remote import BACKLOG, REMOTE_ID_MIN, RemoteMembers
from .supervisor import Supervisor
from .transport import Transport, sender

log = logging.getLogger("gaspar2")

JOIN_RETRY = 0.1                # a worker that could not be connected for want of files
TRIM_AFTER = 64 * 2**20         # hand freed memory back to the system past this much


class PipelineEvents(Protocol):
    def workers_ready(self) -> None:
        """Every local worker wanted is ready."""

    def worker_gone(self, description: str) -> None:
        """A worker exited (fatal while starting)."""

    def forkserver_gone(self) -> None: ...

    def idle(self) -> None:
        """No client connection is open."""


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


class Pipeline:
    def __init__(self, owner: PipelineEvents, settings: Any, loop: Any, progress: ProgressTable):
        self.owner = owner
        self.settings = settings
        self.loop = loop
        self.max_reply_size = settings.max_reply_size or settings.max_message_size
        self.budget = Budget(settings.buffer_limit or default_limit())
        self.fds = FdReserve(reserve_for(settings.workers, (METRICS_CONNECTIONS + 1) * bool(
            settings.metrics) + BACKLOG * bool(settings.remote_workers)))
        self.local_token = secrets.randbits(64) | 1     # what local workers' messages carry
        self.drops = Drops()
        self.throttled = Throttled(log)
        self.dispatcher = Dispatcher(self, progress, time.monotonic,
                                     lambda: self.budget.room(self.dispatcher.at_workers))
        self.frontend = FrontEnd(loop, self, settings, self.budget, self.fds)
        self.supervisor = Supervisor(self, LoopClock(loop), settings.workers,
                                     settings.max_requests, settings.max_requests_jitter, progress)
        self.transport: Transport | None = None
        self.remote: RemoteMembers | None = None
        self.observer: Observer | None = None
        self.closing = False            # worker exits are expected now
        self.arena: Arena | None = None
        self._pending: Any = None       # a dispatch at the end of this loop iteration
        # While local workers hold requests, look this often for stuck ones.
        interval = settings.giveback_after / 2
        self.stuck_watch = loop.timer(interval, interval)

    def close(self) -> None:
        self.closing = True
        self.stuck_watch.stop()

    def open_arena(self) -> Arena | None:
        """Shared memory for large bodies and their replies, made before any worker is
        forked; None when it is off."""
        s = self.settings
        if s.shm_threshold > 0 and s.shm_size >= s.shm_threshold:
            size = min(s.shm_size, self.budget.limit)
            self.arena = self.frontend.arena = Arena(size, s.shm_threshold)
        return self.arena

    def ready_count(self) -> int:
        return self.supervisor.ready_count() + (self.remote.ready_count() if self.remote else 0)

    # -- the front end's events ------------------------------------------------------------

    def request_received(self, conn: Connection) -> None:
        self.dispatcher.submit(conn)
        self._schedule_dispatch()

    def accept_done(self) -> None:
        self._dispatch()                # what this wake-up read goes out together, now

    def connection_closed(self, conn: Connection, outcome: str) -> None:
        if self.observer is not None:
            self.observer.request_done(conn, outcome, self.loop.now())
        if not self.frontend.conns:
            self.owner.idle()
        self._schedule_dispatch()       # what it held may let another request go

    def _schedule_dispatch(self) -> None:
        """Dispatch at the end of this loop iteration, so that requests read by several
        watchers go out together."""
        if self._pending is None and self.dispatcher.waiting:
            self._pending = self.loop.run_callback(self._scheduled_dispatch)

    @guarded
    def _scheduled_dispatch(self) -> None:
        self._pending = None
        self._dispatch()

    def _dispatch(self) -> None:
        if self._pending is not None:   # this one sends what that one would have
            self._pending.stop()
            self._pending = None
        self.dispatcher.dispatch()
        if not self.stuck_watch.active and self.dispatcher.busy():
            self.stuck_watch.start(self._check_stuck)

    @guarded
    def _check_stuck(self) -> None:
        if self.dispatcher.check():
            self._dispatch()
        if not self.dispatcher.busy():
            self.stuck_watch.stop()

    # -- supervision's events ----------------------------------------------------------------

    def worker_ready(self, worker: Any) -> None:
        if worker.id in self.dispatcher.seats:
            log.warning("%r claims the id of a worker already serving: ignored", worker)
            return
        assert worker.remote or self.transport is not None
        try:
            send = sender(worker.push) if worker.remote else self.transport.connect_local(worker.id)
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
        self.transport.read_all()       # replies it sent before it died are not lost
        for conn in self.dispatcher.remove(worker.id, claimed):
            self.frontend.fail(conn, "worker_died", "%r %s while running this request",
                               worker, cause)
        self.transport.disconnect(worker.id)
        log.log(logging.INFO if self.closing else logging.WARNING, "%r %s", worker, cause)
        if kind != "replaced":
            self.owner.worker_gone("%r %s" % (worker, cause))
        self._schedule_dispatch()

    def forkserver_gone(self) -> None:
        self.owner.forkserver_gone()

    # -- dispatch's events -------------------------------------------------------------------

    def seat_spent(self, seat: Seat) -> None:
        self.supervisor.retire(seat.worker_id, "took %d requests (max_requests)" % seat.assigned)

    def seat_drained(self, seat: Seat) -> None:
        self.supervisor.drained(seat.worker_id)

    def request_left(self, conn: Connection) -> None:
        if conn.region is not None:
            conn.region.drop_worker()

    # -- the workers' messages ---------------------------------------------------------------

    def messages_read(self) -> None:
        self._dispatch()

    def message(self, message: wire.Message, local: bool, user_id: str | None) -> None:
        if message.kind == wire.HELLO:
            self._hello(message, local, user_id)
            return
        if local:
            genuine = message.token == self.local_token and message.worker_id < REMOTE_ID_MIN
        else:
            genuine = self.remote is not None and self.remote.authentic(message, user_id,
                                                                        self.loop.now())
        if not genuine:
            self.drops.count("sender", "a %r naming worker %x, with a token or key not its "
                             "own" % (message.kind, message.worker_id))
        elif message.kind != wire.HEARTBEAT:
            self._answer(message)

    def _hello(self, message: wire.Message, local: bool, user_id: str | None) -> None:
        if local and message.token == self.local_token and len(message.frames) == 1:
            self.supervisor.hello(message.worker_id, message.field)
        elif not local and self.remote is not None:
            self.remote.hello(message, user_id, self.loop.now())
        else:
            self.drops.count("sender", "a HELLO naming worker %x" % message.worker_id)

    def _answer(self, message: wire.Message) -> None:
        """A REPLY or an ERROR, from a genuine sender: act on it if that sender holds it."""
        worker_id, request_id = message.worker_id, message.field
        if not self.dispatcher.holds(worker_id, request_id):
            self.drops.count("not_held", "a %r from worker %x for request %d, which it does "
                             "not hold" % (message.kind, worker_id, request_id))
            return
        conn = self.dispatcher.take(worker_id, request_id)
        if conn is None:
            return
        conn.served_by = worker_id
        body = message.body
        assert body is not None            # a BODIED kind (wire.decode)
        if message.kind == wire.SHARED_REPLY:
            body = self._shared_reply(conn, body)
            if body is None:
                return
        if message.kind != wire.ERROR and len(body) > self.max_reply_size:
            self.frontend.fail(conn, "handler_error", "a reply of %d bytes from worker %x, over "
                               "max_reply_size %d", len(body), worker_id, self.max_reply_size)
        elif message.kind != wire.ERROR:
            self.budget.reply_seen(len(body))
            self.frontend.reply(conn, body)
        else:
            text = bytes(body).decode("utf-8", "replace")
            self.frontend.fail(conn, "handler_error", "handler failed in %s", text)

    def _shared_reply(self, conn: Connection, size: memoryview) -> memoryview | None:
        """The reply a local worker wrote over the request's body in the arena."""
        region = conn.region
        if len(size) != wire.SIZE.size or region is None:
            self.frontend.fail(conn, "handler_error", "a shared reply with no place to be")
            return None
        (length,) = wire.SIZE.unpack(size)
        if length > region.capacity:
            self.frontend.fail(conn, "handler_error", "a shared reply of %d bytes in a region "
                               "of %d", length, region.capacity)
            return None
        return region.view(length)

    def message_dropped(self, reason: str, detail: str) -> None:
        self.drops.count(reason, detail)

    def status(self) -> dict[str, int]:
        return {**observe.status(self.frontend, self.dispatcher, self.ready_count()),
                **self.counts()}

    def counts(self) -> dict[str, int]:
        """What the bounds hold now: bytes buffered, messages dropped, remote connections."""
        return {"buffered": self.budget.used, "dropped": self.drops.total(),
                "shared": self.arena.used if self.arena is not None else 0,
                "remote_connections": self.transport.remote.connections
                if self.transport is not None and self.transport.remote is not None else 0}

    @guarded
    def sweep(self) -> None:
        """Enforce the timeouts; count the open files; give freed memory back."""
        self.fds.recount(self.loop.now())
        self.frontend.sweep(self.loop.now())
        self.supervisor.check_liveness(self.settings.worker_timeout, self.settings.heartbeat)
        if self.budget.worth_trimming(TRIM_AFTER):
            release_memory()
            if self.arena is not None:
                self.arena.trim()
            self.budget.trimmed()
        if self.remote is not None:
            self.remote.check(self.loop.now())
