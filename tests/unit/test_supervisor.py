"""Supervision decisions against a stand-in fork server and clock: no process is started."""

import signal
import time

from gaspar2.procutil import Backoff
from gaspar2.progress import ProgressTable
from gaspar2.supervisor import Supervisor

KILLED = signal.SIGKILL                  # a wait status: killed by SIGKILL
EXIT_7 = 7 << 8                          # a wait status: exited with 7


class ForkServer:
    def __init__(self):
        self.spawned, self.killed = [], []

    def spawn(self, worker_id, slot):
        self.spawned.append(worker_id)

    def kill(self, worker_id, signum):
        self.killed.append((worker_id, signum))


class Timer:
    def __init__(self, clock, when, callback):
        self.clock, self.when, self.callback, self.active = clock, when, callback, True

    def stop(self):
        self.active = False


class Clock:
    def __init__(self):
        self.time, self.timers = 100.0, []

    def now(self):
        return self.time

    def call_later(self, delay, callback):
        timer = Timer(self, self.time + delay, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds):
        self.time += seconds
        for timer in [t for t in self.timers if t.active and t.when <= self.time]:
            timer.active = False
            timer.callback()

    def pending(self):
        return [t.when - self.time for t in self.timers if t.active]


class Events:
    def __init__(self):
        self.ready, self.retiring, self.lost = [], [], []

    def worker_ready(self, worker):
        self.ready.append(worker.id)

    def worker_retiring(self, worker):
        self.retiring.append(worker.id)

    def worker_lost(self, worker, cause, kind, started):
        self.lost.append((worker.id, cause, kind, started))

    def forkserver_gone(self):
        pass


def make(size=2, **kw):
    events, clock, fork = Events(), Clock(), ForkServer()
    supervisor = Supervisor(events, clock, size, progress=ProgressTable(16), **kw)
    supervisor.attach(fork)
    for _ in range(size):
        supervisor.spawn()
    return supervisor, events, clock, fork


def hello_all(supervisor):
    for worker in list(supervisor.workers.values()):
        if not worker.ready:
            supervisor.hello(worker.id, 1000 + worker.id)


def test_backoff_doubles_up_to_its_cap_and_a_success_resets_it():
    backoff = Backoff(0.1, 1.0)
    assert backoff.delay() == 0
    assert [backoff.failed() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.succeeded()
    assert backoff.delay() == 0 and backoff.failed() == 0.1


def test_a_worker_killed_by_a_signal_is_replaced_at_once():
    supervisor, events, clock, fork = make()
    hello_all(supervisor)
    clock.advance(0.1)
    supervisor.exited(1, 1001, KILLED)
    assert fork.spawned == [1, 2, 3] and not clock.pending()
    assert events.lost == [(1, "killed by SIGKILL", "signal", 0)]


def test_workers_that_cannot_start_back_off_and_a_healthy_one_resets_it():
    supervisor, events, clock, fork = make(size=1)
    delays = []
    for _ in range(4):
        (worker_id,) = supervisor.workers
        supervisor.exited(worker_id, 1, 3 << 8)          # setup() failed before HELLO
        delays.append(round(clock.pending()[0], 3))
        clock.advance(clock.pending()[0])
    assert delays == [0.1, 0.2, 0.4, 0.8]
    assert len(fork.spawned) == 5
    hello_all(supervisor)
    clock.advance(5)
    (worker_id,) = supervisor.workers
    supervisor.exited(worker_id, 1, EXIT_7)              # served a while, then exited
    assert not clock.pending() and len(fork.spawned) == 6, "respawned at once, back-off reset"


def test_what_a_worker_had_claimed_is_reported_with_its_loss():
    supervisor, events, clock, fork = make(size=1)
    hello_all(supervisor)
    worker = supervisor.workers[1]
    assert supervisor.progress.claim(worker.slot, 0, 3, 77, time.monotonic())
    supervisor.exited(1, 1001, KILLED)
    assert events.lost[0][3] == 3, "the last sequence number it claimed"


def test_resize_adds_and_retires_never_below_one():
    supervisor, events, clock, fork = make(size=2)
    hello_all(supervisor)
    supervisor.resize(+1)
    assert fork.spawned == [1, 2, 3] and supervisor.size == 3
    supervisor.resize(-1)
    assert fork.killed == [(3, signal.SIGTERM)], "the one not ready yet leaves first"
    supervisor.exited(3, 1003, 0)
    supervisor.resize(-1)
    assert events.retiring == [2], "a ready worker is retired through dispatch"
    supervisor.drained(2)
    assert fork.killed[-1] == (2, signal.SIGTERM)
    supervisor.exited(2, 1002, 0)
    supervisor.resize(-1)
    assert supervisor.size == 1 and list(supervisor.workers) == [1]
    assert fork.spawned == [1, 2, 3], "a retired worker is not replaced"


def test_reload_starts_a_generation_and_retires_one_old_per_new_ready():
    supervisor, events, clock, fork = make(size=2)
    hello_all(supervisor)
    supervisor.reload()
    assert fork.spawned == [1, 2, 3, 4]
    assert [w.generation for w in supervisor.workers.values()] == [0, 0, 1, 1]
    supervisor.hello(3, 1003)
    assert events.retiring == [1]
    supervisor.hello(4, 1004)
    assert events.retiring == [1, 2]
    for worker_id in (1, 2):
        supervisor.drained(worker_id)
        supervisor.exited(worker_id, 1000 + worker_id, 0)
    assert sorted(supervisor.workers) == [3, 4] and fork.spawned == [1, 2, 3, 4]


def test_max_requests_gives_each_worker_a_jittered_lifetime():
    supervisor, events, clock, fork = make(size=4, max_requests=10, max_requests_jitter=5)
    assert all(10 <= w.lifetime <= 15 for w in supervisor.workers.values())


def test_a_runaway_worker_is_killed_once():
    supervisor, events, clock, fork = make(size=2)
    hello_all(supervisor)
    supervisor.progress.claim(supervisor.workers[1].slot, 0, 1, 5, time.monotonic() - 10)
    supervisor.progress.claim(supervisor.workers[2].slot, 0, 1, 6, time.monotonic())
    supervisor.check_runaway(2.0)
    supervisor.check_runaway(2.0)
    assert fork.killed == [(1, signal.SIGKILL)]


def test_nothing_is_respawned_once_closing():
    supervisor, events, clock, fork = make(size=1)
    hello_all(supervisor)
    supervisor.close()
    supervisor.exited(1, 1001, KILLED)
    assert fork.spawned == [1]
