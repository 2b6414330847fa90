"""The worker process: plain blocking code that runs the handler, one request at a time.

A worker binds its own PULL endpoint, connects a PUSH to the producer's sink and says HELLO;
the producer then connects a PUSH of its own to that endpoint, so nothing is sent to a worker
before it exists (no slow joiner) and nothing meant for a dead worker can reach its successor.

The producer may hand a worker a few requests at once to hide the round trip. Whatever the
worker holds but has not started is given back the moment its current request turns out to
be slow, so no request waits behind a slow one while another worker could run it.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import threading
import time
import traceback
from typing import Callable

import zmq

from . import wire
from .consumer import Consumer, reply_bytes
from .procutil import set_title
from .progress import ProgressTable
from .supervisor import EXIT_SETUP_FAILED

log = logging.getLogger("gaspar2.worker")

PARENT_CHECK_MS = 500           # an idle worker checks on its parent this often
IDLE_TICK = 0.01


def sink_endpoint(ipc_dir: str) -> str:
    return "ipc://%s/sink" % ipc_dir


def worker_endpoint(ipc_dir: str, worker_id: int) -> str:
    return "ipc://%s/w%d" % (ipc_dir, worker_id)


class LocalWorkers:
    """What every local worker needs, captured before the fork server is forked; called in
    each new worker process (see forkserver.RunWorker)."""

    def __init__(self, make_consumer: Callable[[], Consumer], name: str, ipc_dir: str,
                 progress: ProgressTable, giveback_after: float):
        self.make_consumer = make_consumer
        self.name = name
        self.ipc_dir = ipc_dir
        self.progress = progress
        self.giveback_after = giveback_after

    def __call__(self, worker_id: int, slot: int, parent: int) -> int:
        prepare_process("gaspar2 worker %d %s" % (worker_id, self.name))
        worker = Worker(self.make_consumer, worker_id, worker_endpoint(self.ipc_dir, worker_id),
                        sink_endpoint(self.ipc_dir), parent, self.giveback_after,
                        self.progress, slot)
        return worker.run()


class Worker:
    def __init__(self, make_consumer: Callable[[], Consumer], worker_id: int,
                 endpoint: str | None, sink: str, parent_pid: int, giveback_after: float,
                 progress: ProgressTable, slot: int):
        self.make_consumer = make_consumer
        self.id = worker_id
        self.progress = progress        # shared with the producer: what this worker started
        self.slot = slot
        self.endpoint = endpoint
        self.sink = sink
        self.parent_pid = parent_pid
        self.min_giveback = giveback_after
        self.typical = 0.0              # moving average of handler time, seconds
        self.lock = threading.Lock()    # guards `queue`, `current` and the PULL socket
        self.queue: collections.deque[tuple[int, zmq.Frame]] = collections.deque()
        self.current: int | None = None
        self.started = 0.0
        self.stuck_on: int | None = None   # the request the producer was told is slow
        self.stopping = False
        self.contact = 0.0              # when the producer was last heard from

    def run(self) -> int:
        """Serve until told to stop or orphaned; returns the exit status."""
        signal.signal(signal.SIGTERM, self._on_term)
        try:
            self.consumer = self.make_consumer()
            self.consumer.setup()
        except BaseException:
            log.error("worker %d: setup() failed, exiting\n%s", self.id, traceback.format_exc())
            return EXIT_SETUP_FAILED
        ctx = zmq.Context()
        try:
            self._connect(ctx)
            self._serve()
        finally:
            ctx.destroy(linger=2000)
        return 0

    def _connect(self, ctx):
        self.pull = ctx.socket(zmq.PULL)
        self.pull.bind(self.endpoint)
        self.push = ctx.socket(zmq.PUSH)
        self.push.connect(self.sink)
        self.watch_push = ctx.socket(zmq.PUSH)
        self.watch_push.connect(self.sink)
        self.push.send(wire.encode_head(wire.HELLO, self.id, os.getpid()))

    def _serve(self):
        self.pull.rcvtimeo = PARENT_CHECK_MS      # an idle worker's wait, see _next_job
        watchdog = threading.Thread(target=self._watch, name="giveback", daemon=True)
        watchdog.start()
        try:
            while True:
                job = self._next_job()
                if job is None:
                    return
                self._run(*job)
        except StopNow:
            return

    def _next_job(self):
        """Take the next request, waiting for one; None when it is time to exit.

        The lock is held while waiting: the watchdog needs it only while a request runs.
        """
        with self.lock:
            self.current = None
            while not self.queue:
                if self.stopping or os.getppid() != self.parent_pid:
                    return None
                self._receive(0)        # waits up to PARENT_CHECK_MS
            job = self.queue.popleft()
            self.current = job[0]
            self.started = time.monotonic()
            self.progress.record(self.slot, job[0], self.started)
            return job

    def _receive(self, flags):
        """Move one batch from the PULL socket into the local queue (lock held); False if
        none came."""
        try:
            frames = wire.recv_frames(self.pull, flags)
        except zmq.Again:
            return False
        self.contact = time.monotonic()
        self.queue.extend(wire.decode_batch(frames))
        return True

    def _drain(self):
        """Move every batch waiting in the PULL socket into the local queue (lock held)."""
        while self._receive(wire.NOBLOCK):
            pass

    def _run(self, request_id: int, payload: zmq.Frame) -> None:
        began = time.monotonic()
        try:
            body = reply_bytes(self.consumer.handle(payload.bytes))
        except Exception:
            text = "worker %d (pid %d):\n%s" % (self.id, os.getpid(), traceback.format_exc())
            self.push.send(wire.encode_head(wire.ERROR, self.id, request_id), wire.SNDMORE)
            self.push.send(text.encode())
        else:
            self.push.send(wire.encode_head(wire.REPLY, self.id, request_id), wire.SNDMORE)
            self.push.send(body, 0, copy=len(body) < wire.ZERO_COPY_MIN)
        done = time.monotonic()
        self.progress.record(self.slot, 0, done)        # idle again
        # A slow request counts no more than the threshold, so one cannot inflate it.
        elapsed = min(done - began, self._threshold())
        self.typical += (elapsed - self.typical) * 0.2

    def _watch(self):
        """Give back held requests while the current one runs longer than usual.

        It sleeps until the current request's deadline, so a worker busy with quick requests
        wakes it about once per threshold, and an idle one every IDLE_TICK.
        """
        while True:
            current, started = self.current, self.started
            if current is None:
                time.sleep(IDLE_TICK)
                continue
            delay = started + self._threshold() - time.monotonic()
            if delay > 0:
                time.sleep(delay)
                continue
            with self.lock:
                if self.current == current:
                    self._drain()
                    self._give_back()
            time.sleep(self.min_giveback)

    def _threshold(self):
        return max(self.min_giveback, 4 * self.typical)

    def _give_back(self):
        """Tell the producer once that this request is slow; hand back what is queued."""
        if self.stuck_on == self.current and not self.queue:
            return
        self.stuck_on = self.current
        ids = [job[0] for job in self.queue]
        self.queue.clear()
        head = wire.encode_head(wire.GIVEBACK, self.id, self.current)
        self.watch_push.send_multipart([head, wire.pack_ids(ids)])

    def _on_term(self, signum, frame):
        """Finish the request under way; an idle worker leaves at once.

        Whatever it holds and has not started is given to other workers by the producer.
        """
        if self.stopping:
            return
        self.stopping = True
        if self.current is None:
            raise StopNow


class StopNow(Exception):
    """Raised by the TERM handler to leave an idle worker's wait."""


def prepare_process(title: str) -> None:
    """Signal dispositions for a worker: the producer decides when it stops."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_IGN)
    for sig in (signal.SIGQUIT, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    set_title(title)
