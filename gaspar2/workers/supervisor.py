"""Supervision of the local worker processes: spawn, exit, back-off, reload, resize, liveness.

Workers are forked by the fork server (see forkserver.py), which reports every exit at once.
A worker counts as ready only when its HELLO has arrived on the sink. One function,
``reconcile``, decides what to start and what to retire after every event, so any burst
of reloads, resizes and exits converges to ``size`` ready workers of the newest generation.

The supervisor knows processes, never requests: it reports what happens through
``SupervisorEvents`` and is told, in turn, when a retiring worker holds nothing more.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..loading import EXIT_BOOT
from ..logs import counted
from ..protocol.progress import ProgressTable
from .process import Backoff

log = logging.getLogger("gaspar2")

OUTSIDE = (signal.SIGKILL, signal.SIGTERM)    # sent by someone: says nothing of the code
MIN_SILENCE = 1.0           # an idle worker beats every 0.5 s: allow it one miss


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
        self.killed: str | None = None   # why it was sent SIGKILL (metrics)

    def __repr__(self) -> str:
        return "worker %d (pid %s)" % (self.id, self.pid)


class SupervisorEvents(Protocol):
    def worker_ready(self, worker: Any) -> None: ...
    def worker_retiring(self, worker: Any) -> None: ...
    def worker_lost(self, worker: Any, cause: str, kind: str, claimed: int | None) -> None: ...
    def forkserver_gone(self) -> None: ...


class Generations(Protocol):
    def generation(self, number: int) -> None:
        """Workers spawned from now on are of generation ``number``."""


class Clock(Protocol):
    def now(self) -> float: ...
    def call_later(self, delay: float, callback: Callable[[], None]) -> Any: ...


def describe_status(status: int, ready: bool) -> str:
    if os.WIFSIGNALED(status):
        return "killed by %s" % signal.Signals(os.WTERMSIG(status)).name
    code = os.WEXITSTATUS(status)
    if code == EXIT_BOOT and not ready:
        return "import or setup() failed (traceback above)"
    return "exited with status %d" % code


def exit_kind(worker: WorkerProcess, status: int) -> str:
    """A short label for why a worker exited (metrics)."""
    if worker.retiring:
        return "replaced"
    if worker.killed:
        return worker.killed
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
        self.backoffs: dict[str, Backoff] = {}        # per cause of failing to start
        self.next_start = 0.0           # no worker starts before this (clock.now())
        self.counted_failure_at = float("-inf")     # when a failure to start last counted
        self.generation_served = True   # a worker of the newest generation became ready
        self.respawn_timer: Any = None
        self.stopping = False
        self.generation = 0             # the generation workers are started in
        self.newest = 0                 # the last generation started: numbers are never reused
        self.forkserver: Any = None     # ForkServerClient, or a stand-in in tests
        self.generations: Generations | None = None

    def attach(self, forkserver: Any, generations: Generations | None = None) -> None:
        """``generations`` (the fork server) is told which generation later spawns are of:
        it imports each generation's code once, so a respawn runs what its generation
        loaded."""
        self.forkserver = forkserver
        self.generations = generations

    # -- commands --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the first workers."""
        self.reconcile()

    def kill(self, worker: WorkerProcess, sig: int = signal.SIGKILL) -> None:
        self.forkserver.kill(worker.id, sig)

    def retire(self, worker_id: int, reason: str) -> None:
        """Replace a worker: it takes nothing new, finishes what it holds, then leaves."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.retiring:
            return
        self._retire(worker, reason)
        self.reconcile()

    def _retire(self, worker: WorkerProcess, reason: str, replaced: bool = True) -> None:
        worker.retiring = True
        log.info("%r %s: %s", worker, reason, "replacing it" if replaced else "it leaves")
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
        self._want(self.size + delta)
        self.reconcile()

    def reload(self, size: int | None = None) -> None:
        """Start a fresh generation (of ``size`` workers, when given); each old worker leaves
        as a new one is ready, so capacity never dips. A generation that cannot start is
        given up at its first failure (see ``_give_up_reload``)."""
        if size is not None and size != self.size:
            self._want(size)
        self.newest += 1
        self._switch(self.newest)
        self.generation_served = False
        self.reconcile()

    def _switch(self, generation: int) -> None:
        self.generation = generation
        if self.generations is not None:
            self.generations.generation(generation)

    def _want(self, size: int) -> None:
        self.size = size
        log.info("now %s wanted", counted(size, "worker"))

    def close(self) -> None:
        """Start no worker again; kill those still running a request at once: by now its
        client has its answer (a reset), and the fork server would wait for them."""
        self.stopping = True
        if self.respawn_timer is not None:
            self.respawn_timer.stop()
        for worker in self.workers.values():
            if self.progress.running(worker.slot)[0]:
                self.kill(worker, signal.SIGKILL)

    # -- the one decision --------------------------------------------------------------------

    def reconcile(self) -> None:
        """Start and retire workers until ``size`` of the newest generation serve."""
        if self.stopping:
            return
        staying = [w for w in self.workers.values() if not w.retiring]
        current = [w for w in staying if w.generation == self.generation]
        old = [w for w in staying if w.generation < self.generation]
        for worker in old:
            if not worker.ready:
                self._retire(worker, "was superseded by a reload before it was ready")
        old_ready = [w for w in old if w.ready]
        keep = max(0, self.size - sum(1 for w in current if w.ready))
        for worker in old_ready[:max(0, len(old_ready) - keep)]:
            self._retire(worker, "is replaced by a fresh one (reload)")
        extra = sorted(current, key=lambda w: (w.ready, -w.id))[:max(0, len(current) - self.size)]
        for worker in extra:
            self._retire(worker, "is one too many", replaced=False)
        missing = self.size - len(current)
        if missing <= 0 or (self.respawn_timer is not None and self.respawn_timer.active):
            return
        wait = self.next_start - self.clock.now()
        if wait > 0:
            log.warning("workers cannot start (%s): next try in %.1f s",
                        ", ".join(c for c, b in self.backoffs.items() if b.failures), wait)
            self.respawn_timer = self.clock.call_later(wait, self._after_backoff)
        else:
            for _ in range(missing):
                self._spawn()

    def _after_backoff(self) -> None:
        self.respawn_timer = None
        self.reconcile()

    def _spawn(self) -> WorkerProcess:
        lifetime = None
        if self.max_requests:
            lifetime = self.max_requests + random.randint(0, self.max_requests_jitter)
        worker = WorkerProcess(self.next_id, self.progress.allocate(), self.clock.now(),
                               self.generation, lifetime)
        self.next_id += 1
        self.workers[worker.id] = worker
        self.forkserver.spawn(worker.id, worker.slot)
        return worker

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
        if worker.retiring:             # cancelled while starting: it must not serve
            self.kill(worker, signal.SIGTERM)
            return
        worker.ready = True
        self.progress.beat(worker.slot, time.monotonic())  # its hello is a sign of life
        self.backoffs.clear()           # the code can start: failures before say nothing now
        self.next_start = 0.0
        if worker.generation == self.generation:
            self.generation_served = True
        log.debug("%r ready (generation %d)", worker, worker.generation)
        self.events.worker_ready(worker)
        self.reconcile()

    def spawned(self, worker_id: int, pid: int) -> None:
        worker = self.workers.get(worker_id)
        if worker is not None and worker.pid is None:
            worker.pid = pid

    def exited(self, worker_id: int, pid: int, status: int) -> None:
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return
        worker.pid = pid
        claimed = self.progress.read(worker.slot)[1]
        cause = describe_status(status, worker.ready)
        self.events.worker_lost(worker, cause, exit_kind(worker, status), claimed)
        self.progress.release(worker.slot)
        # Only a worker that could not start says something about the next one; the
        # back-off is kept per cause, so one kind of failure does not slow another.
        outside = os.WIFSIGNALED(status) and os.WTERMSIG(status) in OUTSIDE
        failed_to_start = not (worker.ready or worker.retiring or outside or self.stopping)
        if failed_to_start and not self._give_up_reload(worker, cause):
            self._count_failure(worker, cause)
        self.reconcile()

    def _count_failure(self, worker: WorkerProcess, cause: str) -> None:
        """Back off before the next start. Workers started together that fail together are
        one failed try, not several: the delay doubles once per try, as documented."""
        if worker.born <= self.counted_failure_at:
            return                      # its try has been counted already
        now = self.clock.now()
        self.counted_failure_at = now
        delay = self.backoffs.setdefault(cause, Backoff()).failed()
        self.next_start = max(self.next_start, now + delay)

    def _give_up_reload(self, worker: WorkerProcess, cause: str) -> bool:
        """A reload's worker could not start, while the code before it serves and none of the
        new code ever did: keep the old code, say so once, and try nothing more until the
        next reload. Retrying would put whatever the files hold later into service without
        anyone asking."""
        serving = [w for w in self.workers.values() if w.ready and not w.retiring]
        if worker.generation != self.generation or self.generation_served or not serving:
            return False
        self._switch(max(w.generation for w in serving))
        self.generation_served = True
        log.error("reload failed: %r %s; the %s of the code before keep serving, "
                  "and nothing more is tried until the next SIGHUP", worker, cause,
                  counted(len(serving), "worker"))
        for other in self.workers.values():
            if other.generation > self.generation and not other.retiring:
                other.retiring = True
                self.kill(other, signal.SIGTERM)
        return True

    def forkserver_gone(self) -> None:
        self.events.forkserver_gone()

    # -- liveness ----------------------------------------------------------------------------

    def check_liveness(self, worker_timeout: float | None, silence: float) -> None:
        """Kill workers that stopped making progress: one busy on one request past
        ``worker_timeout``; one stopped (SIGSTOP) or silent while idle (its idle loop beats
        every half second) past ``worker_timeout``, or ``silence`` when there is none."""
        now = time.monotonic()
        for worker in self.workers.values():
            if not worker.ready or worker.killed:
                continue
            _, _, running, since, _, beat = self.progress.read(worker.slot)
            why = stall(running, now - since, now - beat, worker_timeout, silence,
                        functools.partial(is_stopped, worker.pid))
            if why is not None:
                log.warning("%r %s: killing it", worker, why)
                worker.killed = "worker_timeout"
                self.kill(worker, signal.SIGKILL)


def stall(running: int, busy: float, silent: float, worker_timeout: float | None,
          silence: float, stopped: Callable[[], bool]) -> str | None:
    """Why a worker counts as making no progress, or None. ``busy``: how long it has run
    its current request; ``silent``: since its idle loop last beat."""
    limit = max(worker_timeout if worker_timeout is not None else silence, MIN_SILENCE)
    if running:
        if worker_timeout is not None and busy > worker_timeout:
            return "has run one request for %.1f s (worker_timeout %s s)" % (busy, worker_timeout)
        if busy > limit and stopped():
            return "is stopped and has held one request for %.1f s" % busy
    elif silent > limit:
        return "has not been heard from for %.1f s while idle" % silent
    return None


def is_stopped(pid: int | None) -> bool:
    """Whether a process is stopped (SIGSTOP, a debugger), from /proc."""
    if pid is None:
        return False
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError, TypeError):
        return False
