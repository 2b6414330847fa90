"""The supervisor under storms: any order of signals and process events converges to the
wanted number of workers, all of the newest generation, and a worker cancelled before it
was ready never gets a seat. A stand-in fork server keeps the processes the supervisor
asked for, so a process it forgot but never saw exit would show as a leak."""

import random
import signal

from hypothesis import given, settings, strategies as st

from gaspar2.protocol.progress import ProgressTable
from gaspar2.workers.supervisor import Supervisor

from .test_supervisor import Clock

SIGNALS = ("HUP", "TTIN", "TTOU")
EVENTS = ("spawned", "hello", "exit", "drain", "crash")


class Processes:
    """The fork server's side: each spawn a process, each kill an exit to come. A process
    may say hello after it was told to leave (its HELLO was on its way): a race the
    supervisor must lose safely."""

    def __init__(self):
        self.alive = {}             # worker id -> pid
        self.reported = set()       # spawned() delivered
        self.greeted = set()        # hello() delivered
        self.leaving = set()        # signalled: will exit
        self.cancelled = set()      # signalled before it said hello: must never serve
        self.told = []              # generations announced, in order
        self.next_pid = 1000

    def spawn(self, worker_id, slot):
        self.next_pid += 1
        self.alive[worker_id] = self.next_pid

    def kill(self, worker_id, signum):
        if worker_id in self.alive:
            self.leaving.add(worker_id)
            if worker_id not in self.greeted:
                self.cancelled.add(worker_id)

    def generation(self, number):
        self.told.append(number)


class Seats:
    """The request path's side: records every seat given, and whether it was deserved."""

    def __init__(self, processes):
        self.processes = processes
        self.supervisor = None
        self.seated, self.retiring, self.wrong = [], set(), []

    def worker_ready(self, worker):
        self.seated.append(worker.id)
        if (worker.id in self.processes.cancelled or worker.retiring
                or worker.generation != self.supervisor.generation):
            self.wrong.append((worker.id, worker.generation, self.supervisor.generation))

    def worker_retiring(self, worker):
        self.retiring.add(worker.id)

    def worker_lost(self, worker, cause, kind, claimed):
        self.retiring.discard(worker.id)

    def forkserver_gone(self):
        pass


def make(size):
    processes = Processes()
    seats = Seats(processes)
    supervisor = Supervisor(seats, Clock(), size, progress=ProgressTable(512))
    supervisor.attach(processes, processes)
    seats.supervisor = supervisor
    supervisor.start()
    return supervisor, processes, seats


def applicable(supervisor, processes, seats):
    """Every process event that could happen next, as (kind, worker id)."""
    found = []
    for worker_id in processes.alive:
        if worker_id not in processes.reported:
            found.append(("spawned", worker_id))
        if worker_id not in processes.greeted:
            found.append(("hello", worker_id))
        if worker_id in processes.leaving:
            found.append(("exit", worker_id))
    found += [("drain", w) for w in sorted(seats.retiring) if w in processes.alive]
    return found


def deliver(supervisor, processes, kind, worker_id, rng):
    pid = processes.alive.get(worker_id)
    if kind == "spawned":
        processes.reported.add(worker_id)
        supervisor.spawned(worker_id, pid)
    elif kind == "hello":
        processes.greeted.add(worker_id)
        supervisor.hello(worker_id, pid)
    elif kind == "drain":
        supervisor.drained(worker_id)
    elif kind in ("exit", "crash"):
        status = signal.SIGKILL if kind == "crash" else rng.choice([0, signal.SIGTERM])
        del processes.alive[worker_id]
        processes.leaving.discard(worker_id)
        supervisor.exited(worker_id, pid, status)


def settle(supervisor, processes, seats, rng):
    """Let every process event happen, in a random order, until nothing more does."""
    for _ in range(10_000):
        if supervisor.respawn_timer is not None and supervisor.respawn_timer.active:
            supervisor.clock.advance(60)
        choices = applicable(supervisor, processes, seats)
        if not choices:
            return
        deliver(supervisor, processes, *rng.choice(choices), rng)
    raise AssertionError("the pool never settled")


@settings(max_examples=100, deadline=None, derandomize=True)
@given(storm=st.lists(st.sampled_from(SIGNALS), min_size=60, max_size=60),
       seed=st.integers(0, 2**32 - 1))
def test_any_storm_of_signals_and_process_events_converges(storm, seed):
    """100 bursts of 60 HUP, TTIN and TTOU, with up to four process events (spawned,
    hello, exit, drain, crash) of the seed's choosing after each signal (derandomized: the
    same bursts every run)."""
    rng = random.Random(seed)
    supervisor, processes, seats = make(size=2)
    wanted, hups = 2, 0
    for name in storm:
        if name == "HUP":
            hups += 1
            supervisor.reload()
        else:
            wanted = max(1, wanted + (1 if name == "TTIN" else -1))
            supervisor.resize(+1 if name == "TTIN" else -1)
        for _ in range(rng.randint(0, 4)):
            kind = rng.choice(EVENTS)
            if kind == "crash":
                choices = [(kind, w) for w in processes.alive]
            else:
                choices = [c for c in applicable(supervisor, processes, seats) if c[0] == kind]
            if choices:
                deliver(supervisor, processes, *rng.choice(choices), rng)
        assert not seats.wrong, "a worker cancelled before it was ready got a seat"
    settle(supervisor, processes, seats, rng)
    assert not seats.wrong, "a worker cancelled before it was ready got a seat"
    assert supervisor.size == wanted
    assert sorted(processes.alive) == sorted(supervisor.workers), "a process leaked"
    workers = list(supervisor.workers.values())
    assert len(workers) == wanted
    assert all(w.ready and not w.retiring and w.generation == hups for w in workers)
    assert supervisor.generation == hups and processes.told[-1:] == ([hups] if hups else [])


def test_the_fork_server_is_told_each_generation_and_numbers_are_never_reused():
    """A generation's code is loaded once, by its number: a reload that failed and was given
    up sends later spawns back to the code that serves, and the next reload gets a number
    of its own, not the failed one's."""
    supervisor, processes, seats = make(size=2)
    settle(supervisor, processes, seats, random.Random(1))
    supervisor.reload()
    assert processes.told == [1]
    starting = [w for w in supervisor.workers.values() if w.generation == 1]
    supervisor.exited(starting[0].id, 1, 3 << 8)        # the new code cannot be imported
    assert processes.told == [1, 0], "spawns go back to the generation that serves"
    settle(supervisor, processes, seats, random.Random(2))
    supervisor.reload()
    assert processes.told == [1, 0, 2]
    settle(supervisor, processes, seats, random.Random(3))
    assert {w.generation for w in supervisor.workers.values()} == {2}
