"""Supervision of the local worker processes: spawn, exit, back-off, reload, resize, timeouts.

Workers are forked by the fork server (see forkserver.py), which reports every exit at once.
A worker counts as ready only when its HELLO has arrived on the sink. The supervisor knows
processes, never requests: it reports what happens through ``SupervisorEvents`` and is
told, in turn, when a retiring worker holds nothing more (``drained``).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from typing import Any, Callable, Protocol

from .procutil import Backoff
from .progress import ProgressTable

log = logging.getLogger("gaspar2")

YOUNG = 1.0                 # a worker that dies sooner than this after its start died young
EXIT_SETUP_FAILED = 3


class WorkerProcess:
    """What the supervisor knows of one local worker process."""

    __slots__ = ("id", "slot", "pid", "born", "generation", "lifetime", "ready", "retiring",
                 "killed")
    remote = False

    def __init__(self, worker_id: int, slot: int, born: float, generation: int,
                 lifetime: int | None):
        self.id = worker_id
        self.slot = slot
        self.pid: int | None = None
        self.born = born
        self.generation = generation  # workers started by a reload (SIGHUP) have a newer one
        self.lifetime = lifetime      # requests it may take before it is replaced
        self.ready = False
        self.retiring = False         # replaced already: takes nothing new, leaves once idle
        self.killed = False           # sent SIGKILL for running one request too long

    def __repr__(self) -> str:
        return "worker %d (pid %s)" % (self.id, self.pid)


class SupervisorEvents(Protocol):
    def worker_ready(self, worker: Any) -> None: ...
    def worker_retiring(self, worker: Any) -> None: ...
    def worker_lost(self, worker: Any, cause: str, kind: str, claimed: int | None) -> None: ...
    def forkserver_gone(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float: ...
    def call_later(self, delay: float, callback: Callable[[], None]) -> Any: ...


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return "killed by %s" % signal.Signals(os.WTERMSIG(status)).name
    code = os.WEXITSTATUS(status)
    if code == EXIT_SETUP_FAILED:
        return "setup() failed (traceback above)"
    return "exited with status %d" % code


def exit_kind(worker: WorkerProcess, status: int) -> str:
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
    def __init__(self, events: SupervisorEvents, clock: Clock, size: int,
                 max_requests: int | None = None, max_requests_jitter: int = 0,
                 progress: ProgressTable | None = None):
        self.events = events
        self.clock = clock
        self.size = size
        self.max_requests = max_requests
        self.max_requests_jitter = max_requests_jitter
        self.progress = progress or ProgressTable()
        self.workers: dict[int, WorkerProcess] = {}   # spawned and not yet exited
        self.next_id = 1
        self.backoff = Backoff()
        self.respawn_timer: Any = None
        self.stopping = False
        self.generation = 0
        self.forkserver: Any = None     # ForkServerClient, or a stand-in in tests

    def attach(self, forkserver: Any) -> None:
        self.forkserver = forkserver

    # -- commands --------------------------------------------------------------------------

    def spawn(self) -> WorkerProcess:
        lifetime = None
        if self.max_requests:
            lifetime = self.max_requests + random.randint(0, self.max_requests_jitter)
        worker = WorkerProcess(self.next_id, self.progress.allocate(), self.clock.now(),
                               self.generation, lifetime)
        self.next_id += 1
        self.workers[worker.id] = worker
        self.forkserver.spawn(worker.id, worker.slot)
        return worker

    def kill(self, worker: WorkerProcess, sig: int = signal.SIGKILL) -> None:
        self.forkserver.kill(worker.id, sig)

    def retire(self, worker_id: int, reason: str) -> None:
        """Replace a worker now; it finishes what it holds, then is told to leave."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.retiring:
            return
        worker.retiring = True
        log.info("%r %s: replacing it", worker, reason)
        self._schedule_respawn()
        if worker.ready:
            self.events.worker_retiring(worker)     # it leaves once drained
        else:
            self.kill(worker, signal.SIGTERM)

    def drained(self, worker_id: int) -> None:
        """A retiring worker holds nothing more: let it go."""
        worker = self.workers.get(worker_id)
        if worker is not None:
            self.kill(worker, signal.SIGTERM)

    def resize(self, delta: int) -> None:
        """TTIN (+1) and TTOU (-1): one worker more or fewer, never fewer than one."""
        if self.size + delta < 1:
            log.info("keeping the last worker")
            return
        self.size += delta
        log.info("now %d workers wanted", self.size)
        if delta > 0:
            self._schedule_respawn()
            return
        serving = [w for w in self.workers.values() if not w.retiring]
        if len(serving) > self.size:
            # one not ready yet, else the newest
            victim = min(serving, key=lambda w: (w.ready, -w.id))
            self.retire(victim.id, "is one too many")

    def reload(self) -> None:
        """Start a fresh generation of workers; each old one leaves when a new one is ready,
        so capacity never dips, and a generation that cannot start leaves the old serving."""
        self.generation += 1
        for _ in range(self.size):
            self.spawn()

    def check_runaway(self, worker_timeout: float) -> None:
        """Kill a worker that has run one request for longer than ``worker_timeout``."""
        now = time.monotonic()
        for worker in self.workers.values():
            request_id, started = self.progress.running(worker.slot)
            if request_id and not worker.killed and now - started > worker_timeout:
                log.warning("%r has run one request for %.1f s (worker_timeout %s s): killing it",
                            worker, now - started, worker_timeout)
                worker.killed = True
                self.kill(worker, signal.SIGKILL)

    def close(self) -> None:
        self.stopping = True
        if self.respawn_timer is not None:
            self.respawn_timer.stop()

    # -- what it reports ---------------------------------------------------------------------

    def ready_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.ready)

    def serving_count(self) -> int:
        """Workers that count towards the wanted number: all but those leaving."""
        return sum(1 for w in self.workers.values() if not w.retiring)

    # -- events ------------------------------------------------------------------------------

    def hello(self, worker_id: int, pid: int) -> None:
        worker = self.workers.get(worker_id)
        if worker is None or worker.ready:
            return
        worker.pid = pid
        worker.ready = True
        log.debug("%r ready", worker)
        if worker.generation == self.generation:
            self._replace_one_old()
        self.events.worker_ready(worker)

    def spawned(self, worker_id: int, pid: int) -> None:
        worker = self.workers.get(worker_id)
        if worker is not None and worker.pid is None:
            worker.pid = pid

    def exited(self, worker_id: int, pid: int, status: int) -> None:
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return
        worker.pid = pid
        # Died before it was ready, or soon after on its own: a signal from outside (an
        # operator, worker_timeout) says nothing about whether the next one can start.
        young = not worker.retiring and (not worker.ready or (
            not os.WIFSIGNALED(status) and self.clock.now() - worker.born < YOUNG))
        claimed = self.progress.read(worker.slot)[1]
        self.events.worker_lost(worker, describe_status(status), exit_kind(worker, status), claimed)
        self.progress.release(worker.slot)
        if self.stopping or worker.retiring:
            return
        if young:
            self.backoff.failed()
        else:
            self.backoff.succeeded()
        self._schedule_respawn()

    def forkserver_gone(self) -> None:
        self.events.forkserver_gone()

    def _replace_one_old(self) -> None:
        for worker in self.workers.values():
            if worker.generation < self.generation and not worker.retiring:
                self.retire(worker.id, "is replaced by a fresh one (reload)")
                return

    def _schedule_respawn(self) -> None:
        missing = self.size - self.serving_count()
        if missing <= 0 or self.stopping or (self.respawn_timer is not None and self.respawn_timer.active):
            return
        delay = self.backoff.delay()
        if not delay:
            for _ in range(missing):
                self.spawn()
            return
        log.warning("workers keep dying young (%d in a row): next spawn in %.1f s",
                    self.backoff.failures, delay)
        self.respawn_timer = self.clock.call_later(delay, self._respawn_after_delay)

    def _respawn_after_delay(self) -> None:
        self.respawn_timer = None
        if not self.stopping:
            for _ in range(self.size - self.serving_count()):
                self.spawn()
