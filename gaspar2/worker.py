"""The worker process: plain blocking code that runs the handler, one request at a time.

A worker binds its own PULL endpoint, connects a PUSH to the producer's sink and says HELLO;
the producer then connects a PUSH of its own to that endpoint, so nothing is sent to a worker
before it exists (no slow joiner) and nothing meant for a dead worker can reach its successor.

The producer may hand a worker a few requests at once to hide the round trip. Whatever the
worker holds but has not started is given back the moment its current request turns out to
be slow, so no request waits behind a slow one while another worker could run it.
"""

import collections
import logging
import os
import signal
import threading
import time
import traceback

import zmq

from . import framing
from .consumer import reply_bytes
from .forkserver import set_title

log = logging.getLogger("gaspar2.worker")

EXIT_SETUP_FAILED = 3


def sink_endpoint(ipc_dir):
    return "ipc://%s/sink" % ipc_dir


def worker_endpoint(ipc_dir, worker_id):
    return "ipc://%s/w%d" % (ipc_dir, worker_id)
PARENT_CHECK_MS = 500           # an idle worker checks on its parent this often
IDLE_TICK = 0.01


class Worker:
    def __init__(self, make_consumer, worker_id, endpoint, sink, parent_pid, giveback_after,
                 progress, slot):
        self.make_consumer = make_consumer
        self.id = worker_id
        self.progress = progress        # shared with the producer: what this worker started
        self.offset = slot * framing.PROGRESS.size
        self.endpoint = endpoint
        self.sink = sink
        self.parent_pid = parent_pid
        self.min_giveback = giveback_after
        self.typical = 0.0              # moving average of handler time, seconds
        self.lock = threading.Lock()    # guards `queue`, `current` and the PULL socket
        self.queue = collections.deque()
        self.current = None
        self.started = 0.0
        self.stuck_on = None            # the request the producer was told is slow
        self.stopping = False
        self.contact = 0.0              # when the producer was last heard from

    def run(self):
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
        self.push.send(framing.HELLO_FIELDS.pack(framing.HELLO, self.id, os.getpid()))

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
            framing.PROGRESS.pack_into(self.progress, self.offset, job[0], self.started)
            return job

    def _receive(self, flags):
        """Move one batch from the PULL socket into the local queue (lock held); False if
        none came."""
        try:
            frames = framing.recv_frames(self.pull, flags)
        except zmq.Again:
            return False
        self.contact = time.monotonic()
        ids = framing.unpack_ids(frames[0].bytes)
        self.queue.extend(zip(ids, frames[1:]))
        return True

    def _drain(self):
        """Move every batch waiting in the PULL socket into the local queue (lock held)."""
        while self._receive(framing.NOBLOCK):
            pass

    def _run(self, request_id, payload):
        began = time.monotonic()
        try:
            body = reply_bytes(self.consumer.handle(payload.bytes))
        except Exception:
            text = "worker %d (pid %d):\n%s" % (self.id, os.getpid(), traceback.format_exc())
            self.push.send(framing.KIND_ID.pack(framing.ERROR, request_id), framing.SNDMORE)
            self.push.send(text.encode())
        else:
            self.push.send(framing.KIND_ID.pack(framing.REPLY, request_id), framing.SNDMORE)
            self.push.send(body, 0, copy=len(body) < framing.ZERO_COPY_MIN)
        # A slow request counts no more than the threshold, so one cannot inflate it.
        elapsed = min(time.monotonic() - began, self._threshold())
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
        head = framing.GIVEBACK_FIELDS.pack(framing.GIVEBACK, self.id, self.current)
        self.watch_push.send_multipart([head, framing.pack_ids(ids)])

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


def prepare_process(title):
    """Signal dispositions for a worker: the producer decides when it stops."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_IGN)
    for sig in (signal.SIGQUIT, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    set_title(title)
