"""Handlers that never return are never silent: a request that has run past ``warn_after``
is logged once, with its worker, its age and where the worker's Python code is.

Without ``worker_timeout`` nothing stops a handler caught in an endless loop or a
backtracking regex: its worker is lost to every later request, and once all of them are
lost the service stops. So on each sweep the producer reads every local worker's progress
slot (what it runs and since when, see progress.py), which needs nothing of the worker. A
request past the threshold is reported once (``Crossings``, the pure rule). Its worker is
sent ``DUMP_SIGNAL`` through the fork server, faulthandler in the worker writes every
thread's stack to the worker's pipe, and the next sweeps read that pipe without waiting
and log it all as one record. At most ``STACKS_PER_MINUTE`` stacks are taken; past that,
the line comes without one, once a second at most.

``stuck``, the number of workers past the threshold now, is the gauge
``gaspar2_workers_stuck``, and /healthz answers 503 while it covers every ready worker and
requests wait (see metrics.health).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..guard import Throttled
from ..protocol.progress import DUMP_SIGNAL, read_stack, stack_path

log = logging.getLogger("gaspar2")

STACKS_PER_MINUTE = 10      # a flood of hung requests cannot fill the log with stacks
STACK_WAIT = 1.0            # a worker that has not written its stack by then will not
                            # (it is stopped, or its app replaced faulthandler's handler)

Running = tuple[int, int, float]    # (worker id, request id or 0 while idle, since)


@dataclass(frozen=True)
class Crossing:
    worker_id: int
    request_id: int
    age: float                  # seconds it had run when it was found past the threshold


class Crossings:
    """Which requests have run past ``warn_after`` since the last look: each one once."""

    def __init__(self, warn_after: float):
        self.warn_after = warn_after    # 0: never
        self.past: dict[int, int] = {}  # worker id -> its request past the threshold
        self.stuck = 0                  # workers past it at the last look

    def check(self, running: Iterable[Running], now: float) -> list[Crossing]:
        """``running``: every ready local worker's (id, request, since). What crossed
        since the last call; a request still past the threshold is not reported again."""
        crossed = []
        past = {}
        if self.warn_after > 0:
            for worker_id, request_id, since in running:
                if request_id and now - since > self.warn_after:
                    past[worker_id] = request_id
                    if self.past.get(worker_id) != request_id:
                        crossed.append(Crossing(worker_id, request_id, now - since))
        self.past = past
        self.stuck = len(past)
        return crossed


class Quota:
    """At most ``most`` takes in any ``period`` seconds, on average (a token bucket)."""

    def __init__(self, most: int, period: float):
        self.most = most
        self.rate = most / period
        self.tokens = float(most)
        self.at: float | None = None

    def take(self, now: float) -> bool:
        if self.at is not None:
            self.tokens = min(self.most, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class Pending:
    """A report waiting for its worker's stack."""
    line: str
    path: str
    asked: float
    stack: bytes = field(default=b"")


class HungRequests:
    """The producer's side: reads the slots, asks for stacks, reads and logs them. Called
    from the sweep; never waits on a worker."""

    def __init__(self, warn_after: float, supervisor: Any, progress: Any, dispatcher: Any,
                 directory: Callable[[], str | None], clock: Callable[[], float] = time.monotonic):
        self.crossings = Crossings(warn_after)
        self.supervisor = supervisor    # its ready workers, and kill() to signal one
        self.progress = progress
        self.dispatcher = dispatcher    # which client a request came from
        self.directory = directory      # where the workers' stack pipes are (progress.py)
        self.clock = clock              # the progress slots' clock
        self.quota = Quota(STACKS_PER_MINUTE, 60.0)
        self.pending: dict[int, Pending] = {}   # worker id -> its report
        self.throttled = Throttled(log)

    @property
    def stuck(self) -> int:
        return self.crossings.stuck

    def check(self) -> None:
        """Log the stacks that came in; report the requests that crossed the threshold."""
        if not self.crossings.warn_after:
            return
        now = self.clock()
        for worker_id, pending in list(self.pending.items()):
            self._collect(worker_id, pending, now)
        workers = {w.id: w for w in self.supervisor.workers.values() if w.ready and not w.killed}
        running = [(w.id, *self.progress.running(w.slot)) for w in workers.values()]
        for crossing in self.crossings.check(running, now):
            self._ask(workers[crossing.worker_id], crossing, now)

    def forget(self, worker_id: int) -> None:
        """The worker is gone: log what its report has, remove its pipe."""
        pending = self.pending.pop(worker_id, None)
        if pending is not None:
            self._log(pending, "it exited before its stack was read")
        directory = self.directory()
        if directory is not None:
            try:
                os.unlink(stack_path(directory, worker_id))
            except OSError:
                pass

    def _ask(self, worker: Any, crossing: Crossing, now: float) -> None:
        line = "%r has run request %d%s for %.1f s, past warn_after (%s s)" % (
            worker, crossing.request_id, self._client(crossing), crossing.age,
            self.crossings.warn_after)
        directory = self.directory()
        if directory is None or not self.quota.take(now):
            self.throttled.log(logging.WARNING, "hung", "%s; no stack taken (%d a minute at "
                               "most)", line, STACKS_PER_MINUTE)
            return
        path = stack_path(directory, worker.id)
        read_stack(path)                # what an earlier signal left there
        self.supervisor.kill(worker, DUMP_SIGNAL)
        self.pending[worker.id] = Pending(line, path, now)

    def _collect(self, worker_id: int, pending: Pending, now: float) -> None:
        """A dump is written in many pieces: it is whole once a look finds nothing more."""
        more = read_stack(pending.path)
        if more:
            pending.stack += more
        elif pending.stack:
            del self.pending[worker_id]
            self._log(pending)
        elif now - pending.asked > STACK_WAIT:
            del self.pending[worker_id]
            self._log(pending, "it did not write its stack within %.0f s (stopped, or its "
                      "app took over SIGUSR2)" % STACK_WAIT)

    def _log(self, pending: Pending, why_not: str = "") -> None:
        if pending.stack:
            stack = pending.stack.decode("utf-8", "replace").rstrip()
            log.warning("%s; its stack:\n%s", pending.line, stack)
        else:
            log.warning("%s; no stack: %s", pending.line, why_not)

    def _client(self, crossing: Crossing) -> str:
        seat = self.dispatcher.seats.get(crossing.worker_id)
        conn = seat.held.get(crossing.request_id) if seat is not None else None
        return "" if conn is None else " from %s" % conn
