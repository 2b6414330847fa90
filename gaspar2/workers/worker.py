"""The worker process: plain blocking code that runs the handler, one request at a time.

A local worker binds its own endpoints, a PULL for requests and a PUSH for its answers; the
producer's sink connects to the PUSH from the moment the worker is spawned, and the worker
says HELLO on it. The producer then connects a PUSH of its own to the PULL, so nothing is
sent to a worker before it exists (no slow joiner) and nothing meant for a dead worker can
reach its successor. Every message names the worker and carries its token, which local
workers inherit from the producer. A reply larger than ``max_reply_size`` is not sent: the
request fails instead.

The producer may hand a worker a few requests at once to hide the round trip. The worker
claims each before it runs it, and publishes in its progress slot what it runs and since
when: the producer takes back whatever a worker holds behind a slow request, without the
worker's help (see progress.py and dispatch.py). A worker runs no thread of its own, so a
handler may hold the GIL, block, or use gevent as it likes. For the same reason a local
worker's stack is taken by a signal and faulthandler, not asked of it (see progress.py):
nothing of it costs a request anything.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import time
import traceback
from collections.abc import Callable
from typing import cast

import zmq

from ..consumer import Consumer, Handler, Reply, reply_bytes
from ..loading import EXIT_BOOT, forget_setup_failures, report_setup_failure
from ..protocol import wire
from ..protocol.arena import Arena, place
from ..protocol.progress import DUMP_SIGNAL, ProgressTable, offer_stack, stack_path
from .command import Command, ProgramError
from .process import original, set_title

log = logging.getLogger("gaspar2.worker")

PARENT_CHECK_MS = 500           # an idle worker checks on its parent this often
REPLY_HEAD, SHARED_REPLY_HEAD = wire.HEADS[wire.REPLY], wire.HEADS[wire.SHARED_REPLY]
# pyzmq's own send, under the Python-level wrapper that adds nothing a reply uses.
SEND = zmq.backend.Socket.send
MAX_TRACEBACK = 32 * 1024       # bytes of a handler's traceback sent to the producer


class LocalWorkers:
    """What every local worker needs, captured before the fork server is forked; called in
    each new worker process (see forkserver.RunWorker)."""

    def __init__(self, make_consumer: Callable[[], Consumer], name: str, ipc_dir: str,
                 progress: ProgressTable, slow_min: float, token: int = 0,
                 max_reply_size: int | None = None, arena: Arena | None = None):
        self.arena = arena
        self.make_consumer = make_consumer
        self.name = name
        self.ipc_dir = ipc_dir
        self.progress = progress
        self.slow_min = slow_min
        self.token = token
        self.max_reply_size = max_reply_size

    def __call__(self, worker_id: int, slot: int, parent: int) -> int:
        prepare_process("gaspar2 worker %d %s" % (worker_id, self.name))
        try:        # once, before the app's code runs: nothing per request
            offer_stack(stack_path(self.ipc_dir, worker_id))
        except OSError as exc:    # the producer's DUMP_SIGNAL must not kill it then
            original("signal", "signal")(DUMP_SIGNAL, signal.SIG_IGN)
            log.warning("worker %d cannot offer its stack to the producer: %s", worker_id, exc)
        worker = Worker(self.make_consumer, worker_id,
                        wire.worker_endpoint(self.ipc_dir, worker_id),
                        wire.reply_endpoint(self.ipc_dir, worker_id), parent, self.slow_min,
                        self.progress, slot, self.token, self.max_reply_size)
        worker.report_dir = self.ipc_dir
        worker.arena = self.arena.view if self.arena is not None else None
        return worker.run()


class Worker:
    def __init__(self, make_consumer: Callable[[], Consumer], worker_id: int,
                 endpoint: str | None, sink: str, parent_pid: int, slow_min: float,
                 progress: ProgressTable, slot: int, token: int = 0,
                 max_reply_size: int | None = None):
        self.make_consumer = make_consumer
        self.id = worker_id
        self.token = token              # proves to the producer that a message is ours
        self.max_reply_size = max_reply_size
        self.progress = progress        # shared with the producer: what this worker runs
        self.slot = slot
        self.endpoint = endpoint
        self.sink = sink
        self.parent_pid = parent_pid
        self.slow_min = slow_min
        self.typical = 0.0              # moving average of handler time, seconds
        self.queue: collections.deque[tuple[int, int, int, memoryview, bool]] = collections.deque()
        self.waiting = False            # in recv, where a TERM may interrupt it
        self.serving = False            # set up and connected
        self.stopping = False
        self.orphaned = False           # its parent is gone: looked at while idle
        self.contact = 0.0              # when the producer was last heard from
        self.report_dir: str | None = None  # where workers agree to log a traceback once
        self.arena: memoryview | None = None    # large bodies and their replies, shared
        self.place: tuple[int, int] | None = None   # the current body's offset, capacity
        self.as_view = False            # the handler takes a memoryview
        self.command: Command | None = None     # the handler is a program (see command.py)
        # The wait for requests, (flags, copy=False): the PULL socket's own receive (see
        # _serve), or _receive_watching when the handler is a program.
        self.receive: Callable[..., zmq.Frame | None] = self._receive_watching
        self.exit_status = 0

    def run(self) -> int:
        """Serve until told to stop or orphaned; returns the exit status."""
        original("signal", "signal")(signal.SIGTERM, self._on_term)
        try:
            self.consumer = self.make_consumer()
            if isinstance(self.consumer, Command):
                self.command = self.consumer
                self.command.attach(self.id, lambda: self.max_reply_size)
            self.consumer.setup()
            self.as_view = bool(getattr(self.consumer, "accepts_memoryview", False))
            # Given a memoryview only if it accepts_memoryview (see _run).
            self.handle = cast("Callable[[bytes | memoryview], Reply]", direct(self.consumer))
        except BaseException:
            report_setup_failure(self.id, self.report_dir)
            return EXIT_BOOT
        forget_setup_failures(self.report_dir)
        ctx = zmq.Context()
        try:
            self._connect(ctx)
            self.serving = True
            self._serve()
        finally:
            if self.command is not None:
                self.command.close()
            ctx.destroy(linger=2000)
        return self.exit_status

    def _connect(self, ctx: zmq.SyncContext) -> None:
        self.pull = ctx.socket(zmq.PULL)
        assert self.endpoint is not None        # a local worker's, known from the start
        self.pull.bind(self.endpoint)
        self.push = ctx.socket(zmq.PUSH)
        self.push.bind(self.sink)
        self.push.send(self._head(wire.HELLO, os.getpid()))    # once the producer connects

    def _head(self, kind: bytes, field: int | None = None) -> bytes:
        return wire.encode_head(kind, self.id, self.token, field)

    def _serve(self) -> None:
        """Run each request this worker can claim, waiting for more while it has none, until
        it is time to exit. A request the producer took back meanwhile is skipped: another
        worker runs it."""
        self.pull.rcvtimeo = PARENT_CHECK_MS      # an idle worker's wait, see _wait
        if self.command is None:
            self.receive = self.pull.recv
        queue, slot, progress = self.queue, self.slot, self.progress
        try:
            while True:
                while not queue:
                    if self.stopping or self.orphaned:
                        return
                    self._wait()
                epoch, seq, request_id, payload, shared = queue.popleft()
                now = time.monotonic()
                if progress.claim(slot, epoch, seq, request_id, now):
                    self._run(request_id, payload, shared, now)
                else:
                    progress.beat(slot, now)
        except StopNow:
            return

    def _wait(self) -> None:
        """Wait up to PARENT_CHECK_MS for requests; a TERM may end the wait (StopNow)."""
        self.waiting = True
        try:
            frame = self.receive(0, copy=False)
        except zmq.Again:
            frame = None
        finally:
            self.waiting = False
        if frame is None:
            self._idle()
            return
        frames = wire.with_rest(self.pull, frame) if frame.more else [frame]
        if len(frames) > 1 and wire.is_control(frames):     # a batch is one frame
            heard = self._control(frames)
        else:
            try:    # a remote worker's endpoint without CURVE takes pushes from anyone
                self.queue.extend(wire.decode_batch(frames))
                heard = True
            except wire.BadMessage as exc:
                log.warning("worker %d: dropped a malformed batch: %s", self.id, exc)
                heard = False
        if heard:
            self.contact = time.monotonic()

    def _receive_watching(self, flags: int, copy: bool) -> zmq.Frame | None:
        """``receive`` for a worker whose handler is a program (a frame, never copied, or
        None): its stderr is logged, and a child that broke while idle replaced, while the
        worker waits for requests."""
        assert self.command is not None
        try:
            return self.command.idle(self.pull, PARENT_CHECK_MS)
        except ProgramError:            # it cannot be started again: logged, and we leave
            self.exit_status = EXIT_BOOT
            raise StopNow from None

    def _idle(self) -> None:
        """A wait ended with nothing to run: say the loop is alive, and look at the parent
        (only here, not once per request)."""
        self.progress.beat(self.slot, time.monotonic())
        self.orphaned = os.getppid() != self.parent_pid

    def _control(self, frames: wire.Frames) -> bool:
        """A control message from the producer (remote workers act on them); True if it
        was one."""
        return False

    def _run(self, request_id: int, payload: memoryview, shared: bool, began: float) -> None:
        try:
            if shared:
                message = self._shared_body(payload)
            else:
                message = payload if self.as_view else bytes(payload)
            body = self.handle(message)
            if type(body) is not bytes:
                body = reply_bytes(body)
        except ProgramError as exc:     # the program failed it, or broke (see command.py)
            self._fail(request_id, exc.text)
            if exc.broken:
                self._recover(exc.text)
        except BaseException:       # SystemExit, KeyboardInterrupt: fail the request alone
            self._fail(request_id, traceback.format_exc())
        else:
            self._reply(request_id, body)
        self.place = None
        done = time.monotonic()
        # Longer than this is slow: what this worker holds behind it goes to others. A slow
        # request counts no more than the threshold, so one cannot inflate it.
        slow_after = max(self.slow_min, 4 * self.typical)
        self.typical += (min(done - began, slow_after) - self.typical) * 0.2
        self.progress.done(self.slot, slow_after, done)

    def _recover(self, why: str) -> None:
        """A fresh child before the next request, its failed one still showing as running
        in the progress slot: the producer takes back what this worker holds meanwhile."""
        assert self.command is not None
        if not self.command.recover(lambda: self.stopping or os.getppid() != self.parent_pid,
                                    why):
            self.exit_status = EXIT_BOOT
            raise StopNow

    def _shared_body(self, payload: memoryview) -> bytes | memoryview:
        """A body in the arena: bytes, or a memoryview if the handler takes one (no copy)."""
        if self.arena is None:
            raise ValueError("a shared body, and no shared memory here")
        offset, size, capacity = place(self.arena, payload)
        self.place = offset, capacity
        view = self.arena[offset:offset + size]
        return view if self.as_view else bytes(view)

    def _reply(self, request_id: int, body: bytes | bytearray | memoryview) -> None:
        size = body.nbytes if isinstance(body, memoryview) else len(body)
        if self.max_reply_size is not None and size > self.max_reply_size:
            text = "a reply of %d bytes, over max_reply_size %d" % (size, self.max_reply_size)
            log.warning("worker %d: request failed: %s", self.id, text)
            self._fail(request_id, text)
            return
        if self.place is not None and size <= self.place[1]:
            assert self.arena is not None       # over the body, in the arena: no copy out
            self.arena[self.place[0]:self.place[0] + size] = memoryview(body).cast("B")
            head = SHARED_REPLY_HEAD.pack(wire.SHARED_REPLY, self.id, self.token, request_id)
            SEND(self.push, head + wire.SIZE.pack(size))
        else:       # one frame, copied: see wire.py for why never copy=False
            head = REPLY_HEAD.pack(wire.REPLY, self.id, self.token, request_id)
            SEND(self.push, b"".join((head, body)))

    def _fail(self, request_id: int, text: str) -> None:
        text = "worker %d (pid %d):\n%s" % (self.id, os.getpid(), text)
        body = text.encode("utf-8", "replace")[-MAX_TRACEBACK:]
        self.push.send(self._head(wire.ERROR, request_id) + body)

    def _on_term(self, signum: int, frame: object) -> None:
        """Finish the request under way; an idle worker leaves at once, and so does one
        still starting (it holds nothing). Whatever it holds and has not started is given
        to other workers by the producer."""
        if not self.serving:
            os._exit(0)
        self.stopping = True
        if self.waiting:
            raise StopNow


def direct(consumer: Consumer) -> Handler:
    """What to call for a request: a plain ``Consumer``'s handler itself, one call fewer
    per request; otherwise the consumer's ``handle``."""
    if type(consumer) is Consumer and consumer.handler is not None:
        return consumer.handler
    return consumer.handle


class StopNow(Exception):
    """Raised by the TERM handler to leave an idle worker's wait."""


def prepare_process(title: str) -> None:
    """Signal dispositions for a worker: the producer decides when it stops."""
    set_signal = original("signal", "signal")
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
        set_signal(sig, signal.SIG_IGN)
    for sig in (signal.SIGQUIT, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
        set_signal(sig, signal.SIG_DFL)
    set_title(title)
