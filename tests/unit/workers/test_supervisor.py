"""Supervision decisions against a stand-in fork server and clock: no process is started."""

import os
import signal
import time

from hypothesis import given, settings, strategies as st

from gaspar2.protocol.progress import ProgressTable
from gaspar2.workers.process import Backoff
from gaspar2.workers.supervisor import Supervisor, is_stopped, stall

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
    supervisor = Supervisor(events, clock, size, progress=ProgressTable(64), **kw)
    supervisor.attach(fork)
    supervisor.start()
    return supervisor, events, clock, fork


def hello_all(supervisor):
    for worker in list(supervisor.workers.values()):
        if not worker.ready and not worker.retiring:
            supervisor.hello(worker.id, 1000 + worker.id)


def leave(supervisor, fork):
    """The fork server carries out every kill: those workers exit."""
    for worker_id, _ in fork.killed:
        if worker_id in supervisor.workers:
            supervisor.exited(worker_id, 1000 + worker_id, 0)
    fork.killed.clear()


def test_backoff_doubles_up_to_its_cap_and_a_success_resets_it():
    backoff = Backoff(0.1, 1.0)
    assert backoff.delay() == 0
    assert [backoff.failed() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.succeeded()
    assert backoff.delay() == 0 and backoff.failed() == 0.1


def test_a_worker_that_served_is_replaced_at_once_however_it_died():
    supervisor, events, clock, fork = make()
    hello_all(supervisor)
    for status in (KILLED, EXIT_7, 3 << 8, signal.SIGSEGV):
        (victim, *_) = supervisor.workers
        supervisor.exited(victim, 1, status)
        assert not clock.pending(), "no back-off for a worker that had served"
        hello_all(supervisor)
    assert len(fork.spawned) == 6
    assert events.lost[0] == (1, "killed by SIGKILL", "signal", 0)
    assert events.lost[2][1] == "exited with status 3", "not 'setup() failed': it had served"


def test_workers_that_cannot_start_back_off_per_cause_and_a_ready_one_resets_it():
    supervisor, _events, clock, _fork = make(size=1)
    delays = []
    for _ in range(4):
        (worker_id,) = supervisor.workers
        supervisor.exited(worker_id, 1, 3 << 8)          # setup() failed before HELLO
        delays.append(round(clock.pending()[0], 3))
        clock.advance(clock.pending()[0])
    assert delays == [0.1, 0.2, 0.4, 0.8]
    (worker_id,) = supervisor.workers
    supervisor.exited(worker_id, 1, signal.SIGSEGV)      # another cause starts its own count
    assert round(clock.pending()[0], 3) == 0.1, "one kind of failure does not slow another"
    assert set(supervisor.backoffs) == {
        "import or setup() failed (traceback above)", "killed by SIGSEGV"}
    clock.advance(2)
    hello_all(supervisor)
    assert not supervisor.backoffs
    (worker_id,) = supervisor.workers
    supervisor.exited(worker_id, 1, EXIT_7)
    assert not clock.pending() and len(supervisor.workers) == 1


def test_a_worker_killed_from_outside_before_ready_is_no_start_failure():
    supervisor, _events, clock, fork = make(size=1)
    (worker_id,) = supervisor.workers
    supervisor.exited(worker_id, 1, KILLED)
    assert not clock.pending() and not supervisor.backoffs and len(fork.spawned) == 2


def test_what_a_worker_had_claimed_is_reported_with_its_loss():
    supervisor, events, _clock, _fork = make(size=1)
    hello_all(supervisor)
    worker = supervisor.workers[1]
    assert supervisor.progress.claim(worker.slot, 0, 3, 77, time.monotonic())
    supervisor.exited(1, 1001, KILLED)
    assert events.lost[0][3] == 3, "the last sequence number it claimed"


def test_resize_adds_and_retires_never_below_one():
    supervisor, events, _clock, fork = make(size=2)
    hello_all(supervisor)
    supervisor.resize(+1)
    assert fork.spawned == [1, 2, 3] and supervisor.size == 3
    supervisor.resize(-1)
    assert fork.killed == [(3, signal.SIGTERM)], "the one not ready yet leaves first"
    leave(supervisor, fork)
    supervisor.resize(-1)
    assert events.retiring == [2], "a ready worker is retired through dispatch"
    supervisor.drained(2)
    leave(supervisor, fork)
    supervisor.resize(-1)
    assert supervisor.size == 1 and list(supervisor.workers) == [1]
    assert fork.spawned == [1, 2, 3], "a retired worker is not replaced"


def test_reload_replaces_one_old_worker_per_new_one_ready():
    supervisor, events, _clock, fork = make(size=2)
    hello_all(supervisor)
    supervisor.reload()
    assert fork.spawned == [1, 2, 3, 4]
    supervisor.hello(3, 1003)
    assert events.retiring == [1]
    supervisor.hello(4, 1004)
    assert events.retiring == [1, 2]
    for worker_id in (1, 2):
        supervisor.drained(worker_id)
    leave(supervisor, fork)
    assert sorted(supervisor.workers) == [3, 4] and fork.spawned == [1, 2, 3, 4]


def test_a_generation_superseded_before_it_was_ready_is_cancelled():
    supervisor, events, _clock, fork = make(size=2)
    hello_all(supervisor)
    supervisor.reload()
    supervisor.reload()
    assert fork.spawned == [1, 2, 3, 4, 5, 6]
    assert sorted(fork.killed) == [(3, signal.SIGTERM), (4, signal.SIGTERM)]
    assert events.retiring == [], "the serving generation stays until the newest is ready"


def test_a_burst_of_reloads_and_resizes_converges():
    supervisor, _events, _clock, fork = make(size=2)
    hello_all(supervisor)
    for command in ["reload", "ttin", "reload", "ttou", "ttou", "reload", "ttin"] * 3:
        {"reload": supervisor.reload, "ttin": lambda: supervisor.resize(+1),
         "ttou": lambda: supervisor.resize(-1)}[command]()
        if command == "ttou":
            hello_all(supervisor)
    converge(supervisor, fork)
    assert_converged(supervisor)


def converge(supervisor, fork):
    for _ in range(50):
        supervisor.clock.advance(60)                    # any back-off is over
        hello_all(supervisor)
        for worker in list(supervisor.workers.values()):
            if worker.retiring and worker.ready:
                supervisor.drained(worker.id)
        leave(supervisor, fork)


def assert_converged(supervisor):
    workers = list(supervisor.workers.values())
    assert len(workers) == supervisor.size
    assert all(w.ready and not w.retiring and w.generation == supervisor.generation
               for w in workers)


@settings(max_examples=200, deadline=None)
@given(commands=st.lists(st.sampled_from(["reload", "ttin", "ttou", "hello", "crash", "drain",
                                          "fail"]), max_size=40))
def test_any_burst_converges_to_the_wanted_workers_of_the_newest_generation(commands):
    supervisor, _events, _clock, fork = make(size=2)
    hello_all(supervisor)
    for n, command in enumerate(commands):
        if command == "reload":
            supervisor.reload()
        elif command in ("ttin", "ttou"):
            supervisor.resize(+1 if command == "ttin" else -1)
        elif command == "hello":
            starting = [w for w in supervisor.workers.values() if not w.ready]
            if starting:
                supervisor.hello(starting[n % len(starting)].id, 1)
        elif command == "crash" and supervisor.workers:
            victim = list(supervisor.workers)[n % len(supervisor.workers)]
            supervisor.exited(victim, 1, KILLED)
        elif command == "fail":                     # a worker's setup() raised
            starting = [w for w in supervisor.workers.values() if not w.ready]
            if starting:
                supervisor.exited(starting[n % len(starting)].id, 1, 3 << 8)
        elif command == "drain":
            converge(supervisor, fork)
        if not {"ttou", "crash"} & set(commands[:n + 1]):
            ready = sum(1 for w in supervisor.workers.values() if w.ready and not w.retiring)
            assert ready >= 2, "a reload left fewer ready workers than before"
    converge(supervisor, fork)
    assert_converged(supervisor)


def test_max_requests_gives_each_worker_a_jittered_lifetime():
    supervisor, _events, _clock, _fork = make(size=4, max_requests=10, max_requests_jitter=5)
    assert all(10 <= w.lifetime <= 15 for w in supervisor.workers.values())


def test_liveness_rules():
    never = lambda: False   # noqa: E731
    always = lambda: True   # noqa: E731
    assert stall(7, 3.0, 0.0, 2.0, 1.0, never).startswith("has run one request for 3.0 s")
    assert stall(7, 1.0, 0.0, 2.0, 1.0, always) is None, "running, within the timeout"
    assert stall(7, 50.0, 0.0, None, 1.0, never) is None, "no timeout: a long handler is fine"
    assert stall(7, 1.5, 0.0, None, 1.0, always).startswith("is stopped")
    assert stall(0, 0.0, 1.5, None, 1.0, never).startswith("has not been heard from for 1.5 s")
    assert stall(0, 0.0, 0.6, None, 0.1, never) is None, "an idle worker beats every 0.5 s"
    assert stall(0, 0.0, 2.5, 2.0, 1.0, never) is not None
    assert stall(0, 0.0, 1.5, 2.0, 1.0, never) is None


def test_a_worker_that_stops_making_progress_is_killed_once():
    supervisor, _events, _clock, fork = make(size=3)
    hello_all(supervisor)
    now = time.monotonic()
    progress = supervisor.progress
    progress.claim(supervisor.workers[1].slot, 0, 1, 5, now - 10)     # runaway
    progress.claim(supervisor.workers[2].slot, 0, 1, 6, now)          # busy, fine
    progress.beat(supervisor.workers[3].slot, now - 10)               # silent while idle
    supervisor.check_liveness(2.0, 1.0)
    supervisor.check_liveness(2.0, 1.0)
    assert sorted(fork.killed) == [(1, signal.SIGKILL), (3, signal.SIGKILL)]
    assert is_stopped(os.getpid()) is False


def test_nothing_is_respawned_once_closing():
    supervisor, _events, _clock, fork = make(size=1)
    hello_all(supervisor)
    supervisor.close()
    supervisor.exited(1, 1001, KILLED)
    assert fork.spawned == [1]


def test_workers_started_together_that_fail_together_are_one_failed_try():
    supervisor, _events, clock, _fork = make(size=3)
    delays = []
    for _ in range(4):
        for worker_id in list(supervisor.workers):
            clock.time += 0.01                          # they fail one after the other
            supervisor.exited(worker_id, 1, 3 << 8)
        delays.append(round(clock.pending()[0], 2))
        clock.advance(clock.pending()[0])
    assert delays == [0.08, 0.18, 0.38, 0.78], "0.1 s doubling, less the 0.02 s they took"


def test_a_reload_that_cannot_start_is_given_up_and_the_old_workers_stay():
    supervisor, events, clock, fork = make(size=2)
    hello_all(supervisor)
    supervisor.reload()
    assert fork.spawned == [1, 2, 3, 4]
    supervisor.exited(3, 1003, 3 << 8)                  # setup() failed in the new code
    assert fork.killed == [(4, signal.SIGTERM)], "its sibling is stopped too"
    leave(supervisor, fork)
    clock.advance(3600)
    assert fork.spawned == [1, 2, 3, 4] and not clock.pending(), "nothing more is tried"
    assert sorted(supervisor.workers) == [1, 2] and events.retiring == []
    assert_converged(supervisor)
    supervisor.reload()                                 # the next HUP tries again
    assert fork.spawned == [1, 2, 3, 4, 5, 6]
    hello_all(supervisor)
    assert events.retiring == [1, 2]


def test_a_reload_that_served_once_backs_off_instead_of_giving_up():
    supervisor, _events, clock, fork = make(size=2)
    hello_all(supervisor)
    supervisor.reload()
    supervisor.hello(3, 1003)
    supervisor.exited(4, 1004, 3 << 8)                  # a flaky setup(), not broken code
    assert [round(d, 3) for d in clock.pending()] == [0.1]
    clock.advance(0.1)
    assert fork.spawned[-1] == 5


def test_a_worker_cancelled_while_starting_that_says_hello_anyway_never_serves():
    supervisor, events, _clock, fork = make(size=1)
    hello_all(supervisor)
    supervisor.reload()
    supervisor.reload()                                 # worker 2 is cancelled
    assert (2, signal.SIGTERM) in fork.killed
    fork.killed.clear()
    supervisor.hello(2, 1002)                           # it missed the TERM, somehow
    assert fork.killed == [(2, signal.SIGTERM)] and 2 not in events.ready


def test_a_reload_may_set_the_number_of_workers():
    supervisor, _events, _clock, fork = make(size=1)
    hello_all(supervisor)
    supervisor.reload(3)
    assert fork.spawned == [1, 2, 3, 4], "three of the new generation, none of the old"
    converge(supervisor, fork)
    assert_converged(supervisor)
    assert len(supervisor.workers) == 3
