"""Producer-side supervision: keeps the wanted number of workers alive and knows their state.

Workers are forked by the fork server (see forkserver.py), which reports every exit at once
over its control channel. A worker counts as ready only when its HELLO has arrived on the
sink and the producer has connected a PUSH socket to it. Workers that die young are
replaced after a growing delay, so a handler that cannot start does not fork in a loop.
"""

import logging
import mmap
import os
import random
import signal

import zmq

from . import framing
from .worker import EXIT_SETUP_FAILED, worker_endpoint

log = logging.getLogger("gaspar2")

MAX_WORKERS = 512
YOUNG = 1.0                 # a worker that dies sooner than this after its start died young
MAX_BACKOFF = 10.0


class WorkerHandle:
    """What the producer knows of one worker process."""

    __slots__ = ("id", "slot", "pid", "push", "jobs", "stuck_on", "ready", "born", "assigned",
                 "lifetime", "retiring", "killed", "generation", "remote", "heard", "pinged")

    def __init__(self, worker_id, slot, born):
        self.id = worker_id
        self.slot = slot
        self.pid = None
        self.push = None
        self.jobs = {}          # request id -> connection, in the order they were sent
        self.stuck_on = None    # a request the worker said is slow; nothing more goes to it
        self.ready = False
        self.born = born
        self.assigned = 0       # requests sent to it so far
        self.lifetime = None    # requests it may take before it is replaced (max_requests)
        self.retiring = False   # replaced already: takes nothing new, leaves once idle
        self.killed = False     # sent SIGKILL for running one request too long
        self.generation = 0     # workers started by a reload (SIGHUP) have a newer one
        self.remote = False     # on another machine: no fork server, no progress slot
        self.heard = self.pinged = born

    def __repr__(self):
        if self.remote:
            return "worker %x (remote pid %s)" % (self.id, self.pid)
        return "worker %d (pid %s)" % (self.id, self.pid)


def describe_status(status):
    if os.WIFSIGNALED(status):
        return "killed by %s" % signal.Signals(os.WTERMSIG(status)).name
    code = os.WEXITSTATUS(status)
    if code == EXIT_SETUP_FAILED:
        return "setup() failed (traceback above)"
    return "exited with status %d" % code


def exit_kind(worker, status):
    """A short label for why a worker exited (metrics)."""
    if worker.retiring:
        return "replaced"
    if worker.killed:
        return "worker_timeout"
    if os.WIFSIGNALED(status):
        return "signal"
    if not worker.ready:
        return "failed_start"
    return "exit"


class Supervisor:
    def __init__(self, producer, size, max_requests=None, max_requests_jitter=0):
        self.producer = producer
        self.size = size
        self.max_requests = max_requests
        self.max_requests_jitter = max_requests_jitter
        self.workers = {}               # id -> WorkerHandle, spawned and not yet exited
        self.free_slots = list(range(MAX_WORKERS - 1, -1, -1))
        self.progress = mmap.mmap(-1, MAX_WORKERS * framing.PROGRESS.size)
        self.next_id = 1
        self.failures = 0               # workers in a row that died young
        self.respawn_timer = None
        self.stopping = False
        self.generation = 0

    # -- lifecycle -------------------------------------------------------------------------

    def attach(self, loop, ctx, ipc_dir, channel, fork_pid):
        """Called once the fork server runs and the sink is bound."""
        self.loop = loop
        self.ctx = ctx
        self.ipc_dir = ipc_dir
        self.channel = channel
        self.fork_pid = fork_pid
        self.buffer = b""
        channel.setblocking(False)
        self.channel_watcher = loop.io(channel.fileno(), 1)
        self.channel_watcher.start(self._on_channel)

    def spawn(self):
        worker = WorkerHandle(self.next_id, self.free_slots.pop(), self.loop.now())
        worker.generation = self.generation
        if self.max_requests:
            worker.lifetime = self.max_requests + random.randint(0, self.max_requests_jitter)
        self.next_id += 1
        self.workers[worker.id] = worker
        framing.PROGRESS.pack_into(self.progress, worker.slot * framing.PROGRESS.size, 0, 0.0)
        self._command("spawn %d %d" % (worker.id, worker.slot))
        return worker

    def kill(self, worker, sig=signal.SIGKILL):
        self._command("kill %d %d" % (worker.id, sig))

    def last_started(self, worker):
        """(id, monotonic time) of the request this worker started last; id 0 if none."""
        return framing.PROGRESS.unpack_from(self.progress, worker.slot * framing.PROGRESS.size)

    def ready_count(self, local_only=False):
        return sum(1 for w in self.workers.values() if w.ready and not (local_only and w.remote))

    def local_workers(self):
        return [w for w in self.workers.values() if not w.remote]

    def serving_count(self):
        """Local workers that count towards the wanted number: all but those leaving."""
        return sum(1 for w in self.local_workers() if not w.retiring)

    def retire(self, worker, reason):
        """Replace ``worker`` now; it finishes what it holds, then is told to leave."""
        if worker.retiring:
            return
        worker.retiring = True
        log.info("%r %s: replacing it", worker, reason)
        self._schedule_respawn()
        if not worker.jobs:
            self.kill(worker, signal.SIGTERM)

    def resize(self, delta):
        """TTIN (+1) and TTOU (-1): one worker more or fewer, never fewer than one."""
        if self.size + delta < 1:
            log.info("keeping the last worker")
            return
        self.size += delta
        log.info("now %d workers wanted", self.size)
        if delta > 0:
            self._schedule_respawn()
            return
        serving = [w for w in self.local_workers() if not w.retiring]
        if len(serving) > self.size:
            self.retire(min(serving, key=lambda w: (w.ready, len(w.jobs))), "is one too many")

    def reload(self):
        """Start a fresh generation of workers; each old one leaves when a new one is ready,
        so capacity never dips, and a generation that cannot start leaves the old serving."""
        self.generation += 1
        for _ in range(self.size):
            self.spawn()

    def _replace_one_old(self):
        for worker in self.local_workers():
            if worker.generation < self.generation and not worker.retiring:
                self.retire(worker, "is replaced by a fresh one (reload)")
                return

    def close_channel(self):
        """Tell the fork server to stop every worker and exit."""
        self.stopping = True
        if self.respawn_timer is not None:
            self.respawn_timer.stop()
        try:
            self.channel.shutdown(2)
        except OSError:
            pass

    # -- events ----------------------------------------------------------------------------

    def hello(self, worker_id, pid):
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        worker.pid = pid
        worker.push = self.ctx.socket(zmq.PUSH)
        worker.push.linger = 0
        worker.push.connect(worker_endpoint(self.ipc_dir, worker_id))
        worker.ready = True
        log.debug("%r ready", worker)
        if worker.generation == self.generation:
            self._replace_one_old()
        self.producer.worker_ready(worker)

    # -- remote workers ----------------------------------------------------------------------

    def hello_remote(self, worker_id, pid, endpoint, key, remote_sink, now):
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.heard = now          # it said HELLO again: it had not heard from us
            return
        worker = WorkerHandle(worker_id, None, now)
        worker.remote = True
        worker.pid = pid
        worker.push = remote_sink.connect_worker(self.ctx, endpoint, key)
        worker.ready = True
        self.workers[worker_id] = worker
        log.info("remote %r joined from %s", worker, endpoint)
        self.producer.worker_ready(worker)

    def heard(self, worker_id, now):
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.heard = now

    def check_remote(self, now, heartbeat, missed):
        """Ping remote workers; drop those silent for ``missed`` heartbeats."""
        for worker in [w for w in self.workers.values() if w.remote]:
            if now - worker.heard > missed * heartbeat:
                del self.workers[worker.id]
                cause = "missed %d heartbeats (%.1f s)" % (missed, now - worker.heard)
                self.producer.worker_lost(worker, cause, "heartbeat")
                worker.push.close()
            elif now - worker.pinged >= heartbeat:
                worker.pinged = now
                try:
                    worker.push.send(framing.pack_ids([]), zmq.NOBLOCK)
                except zmq.Again:
                    pass

    def _on_channel(self):
        try:
            data = self.channel.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.channel_watcher.stop()
            self.producer.forkserver_gone()
            return
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            event, *args = line.decode().split()
            if event == "spawned":
                worker = self.workers.get(int(args[0]))
                if worker is not None and worker.pid is None:
                    worker.pid = int(args[1])
            elif event == "exited":
                self._exited(int(args[0]), int(args[1]), int(args[2]))

    def _exited(self, worker_id, pid, status):
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return
        worker.pid = pid
        cause = describe_status(status)
        # Died before it was ready, or soon after on its own: a signal from outside (an
        # operator, worker_timeout) says nothing about whether the next one can start.
        young = not worker.retiring and (not worker.ready or (
            not os.WIFSIGNALED(status) and self.loop.now() - worker.born < YOUNG))
        self.producer.worker_lost(worker, cause, exit_kind(worker, status))
        if worker.push is not None:
            worker.push.close()
        self.free_slots.append(worker.slot)
        if self.stopping or worker.retiring:
            return
        self.failures = self.failures + 1 if young else 0
        self._schedule_respawn()

    def _schedule_respawn(self):
        missing = self.size - self.serving_count()
        if missing <= 0 or (self.respawn_timer is not None and self.respawn_timer.active):
            return
        if not self.failures:
            for _ in range(missing):
                self.spawn()
            return
        delay = min(0.1 * 2 ** (self.failures - 1), MAX_BACKOFF)
        log.warning("workers keep dying young (%d in a row): next spawn in %.1f s",
                    self.failures, delay)
        self.respawn_timer = self.loop.timer(delay)
        self.respawn_timer.start(self._respawn_after_delay)

    def _respawn_after_delay(self):
        self.respawn_timer = None
        if not self.stopping:
            for _ in range(self.size - self.serving_count()):
                self.spawn()

    def _command(self, line):
        try:
            self.channel.sendall(line.encode() + b"\n")
        except OSError as exc:
            log.error("cannot reach the fork server: %s", exc)
