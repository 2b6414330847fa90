"""Dispatch policy and bookkeeping, driven by plain objects: no socket, no process."""

import time

from hypothesis import given, settings, strategies as st

from gaspar2.producer.dispatch import FROZEN, Dispatcher, Full, Seat
from gaspar2.protocol.progress import ProgressTable


class Request:
    def __init__(self, request_id):
        self.request_id = request_id
        self.payload = b"p%d" % request_id
        self.size_in = len(self.payload)
        self.closed = False

    def __repr__(self):
        return "r%d" % self.request_id


class Events:
    def __init__(self):
        self.spent, self.drained, self.left = [], [], []

    def request_left(self, request):
        self.left.append(request.request_id)

    def seat_spent(self, seat):
        self.spent.append(seat.worker_id)

    def seat_drained(self, seat):
        self.drained.append(seat.worker_id)


class Worker:
    """Stands for a worker's PUSH socket: records each batch sent to it."""

    def __init__(self, full=False):
        self.batches = []
        self.full = full

    def send(self, requests, epoch, seq):
        if self.full:
            raise Full
        assert [r.seq for r in requests] == list(range(seq, seq + len(requests)))
        self.batches.append([r.request_id for r in requests])


def make(workers=2, window=8, lifetime=None):
    events = Events()
    dispatcher = Dispatcher(events)
    fakes = {}
    for worker_id in range(1, workers + 1):
        fakes[worker_id] = Worker()
        dispatcher.add(Seat(worker_id, fakes[worker_id].send, window, lifetime))
    return dispatcher, fakes, events


def submit(dispatcher, *ids):
    requests = [Request(i) for i in ids]
    for request in requests:
        dispatcher.submit(request)
    return requests


def held(dispatcher, worker_id):
    return list(dispatcher.seats[worker_id].held)


def test_each_request_goes_to_the_least_loaded_worker():
    dispatcher, _fakes, _ = make(workers=3)
    submit(dispatcher, 1, 2, 3)
    dispatcher.dispatch()
    assert [held(dispatcher, w) for w in (1, 2, 3)] == [[1], [2], [3]]
    dispatcher.take(2, 2)
    submit(dispatcher, 4)
    dispatcher.dispatch()
    assert held(dispatcher, 2) == [4]


def test_one_message_per_worker_per_dispatch():
    dispatcher, fakes, _ = make(workers=2, window=8)
    submit(dispatcher, *range(1, 9))
    dispatcher.dispatch()
    assert fakes[1].batches == [[1, 3, 5, 7]] and fakes[2].batches == [[2, 4, 6, 8]]


def test_window_bounds_what_a_worker_holds():
    dispatcher, _fakes, _ = make(workers=1, window=4)
    submit(dispatcher, *range(1, 11))
    dispatcher.dispatch()
    assert held(dispatcher, 1) == [1, 2, 3, 4]
    assert [r.request_id for r in dispatcher.waiting] == list(range(5, 11))


def test_refilled_only_once_down_to_half_the_window():
    dispatcher, fakes, _ = make(workers=1, window=4)
    submit(dispatcher, *range(1, 11))
    dispatcher.dispatch()
    dispatcher.take(1, 1)
    dispatcher.dispatch()
    assert held(dispatcher, 1) == [2, 3, 4], "3 held > half the window: not topped up"
    dispatcher.take(1, 2)
    dispatcher.dispatch()
    assert held(dispatcher, 1) == [3, 4, 5, 6]
    assert fakes[1].batches == [[1, 2, 3, 4], [5, 6]]


def test_an_answer_counts_only_from_the_worker_that_holds_it():
    dispatcher, _fakes, _ = make(workers=2)
    (one, _two) = submit(dispatcher, 1, 2)
    dispatcher.dispatch()
    assert dispatcher.take(2, 1) is None
    assert dispatcher.take(3, 1) is None
    assert held(dispatcher, 1) == [1]
    assert dispatcher.take(1, 1) is one
    assert dispatcher.take(1, 1) is None, "answered once only"


def test_a_lost_worker_fails_what_it_claimed_and_requeues_the_rest():
    dispatcher, _fakes, _ = make(workers=2, window=8)
    submit(dispatcher, *range(1, 9))
    dispatcher.dispatch()
    assert held(dispatcher, 1) == [1, 3, 5, 7]
    assert [dispatcher.seats[1].held[i].seq for i in (1, 3, 5, 7)] == [1, 2, 3, 4]
    failed = dispatcher.remove(1, claimed=2)
    assert [r.request_id for r in failed] == [1, 3]
    assert [r.request_id for r in dispatcher.waiting] == [5, 7]
    assert 1 not in dispatcher.seats


def test_a_lost_worker_that_started_nothing_held_fails_nothing():
    dispatcher, _fakes, _ = make(workers=1)
    submit(dispatcher, 1, 2)
    dispatcher.dispatch()
    assert dispatcher.remove(1, claimed=0) == []
    assert [r.request_id for r in dispatcher.waiting] == [1, 2]


def test_a_lost_remote_worker_fails_the_one_it_held():
    dispatcher, _fakes, _ = make(workers=1, window=1)
    submit(dispatcher, 1, 2)
    dispatcher.dispatch()
    assert [r.request_id for r in dispatcher.remove(1, claimed=None)] == [1]
    assert [r.request_id for r in dispatcher.waiting] == [2]


def test_closed_requests_are_neither_sent_nor_failed():
    dispatcher, fakes, _ = make(workers=1, window=8)
    requests = submit(dispatcher, 1, 2, 3)
    requests[1].closed = True
    dispatcher.dispatch()
    assert fakes[1].batches == [[1, 3]]
    requests[0].closed = True
    assert dispatcher.take(1, 1) is requests[0], "off the books, whatever its client did"
    assert dispatcher.take(1, 1) is None
    assert dispatcher.remove(1, claimed=2) == [requests[2]]


def test_max_requests_reports_a_spent_worker_once():
    dispatcher, _fakes, events = make(workers=1, window=2, lifetime=3)
    submit(dispatcher, 1, 2, 3, 4)
    dispatcher.dispatch()
    dispatcher.take(1, 1)
    dispatcher.take(1, 2)
    dispatcher.dispatch()
    assert events.spent == [1]
    dispatcher.retire(1)
    assert events.drained == []
    dispatcher.take(1, 3)
    dispatcher.take(1, 4)
    dispatcher.dispatch()
    assert events.drained == [1] and events.spent == [1]


def test_a_retiring_worker_takes_nothing_and_leaves_once_empty():
    dispatcher, _fakes, events = make(workers=2)
    submit(dispatcher, 1)
    dispatcher.dispatch()
    dispatcher.retire(1)
    submit(dispatcher, 2, 3)
    dispatcher.dispatch()
    assert held(dispatcher, 1) == [1] and held(dispatcher, 2) == [2, 3]
    dispatcher.take(1, 1)
    assert events.drained == [1]
    dispatcher.retire(2)
    dispatcher.retire(2)
    assert events.drained == [1]


def test_a_full_worker_queue_requeues_the_batch():
    events = Events()
    dispatcher = Dispatcher(events)
    dispatcher.add(Seat(1, Worker(full=True).send, 8))
    submit(dispatcher, 1, 2)
    dispatcher.dispatch()
    assert [r.request_id for r in dispatcher.waiting] == [1, 2] and not held(dispatcher, 1)


operations = st.lists(st.tuples(st.sampled_from(["submit", "dispatch", "answer", "wrong",
                                                 "lose", "join", "close"]),
                                st.integers(0, 50)), max_size=80)


@settings(max_examples=200, deadline=None)
@given(ops=operations)
def test_every_request_is_in_exactly_one_place(ops):
    """Whatever happens, each open request is waiting, held by one worker, or answered,
    and none is answered twice."""
    dispatcher, fakes, _ = make(workers=2, window=4)
    requests, answered, failed, next_worker = {}, [], [], 3
    for op, n in ops:
        seats = list(dispatcher.seats.values())
        if op == "submit":
            (request,) = submit(dispatcher, len(requests) + 1)
            requests[request.request_id] = request
        elif op == "dispatch":
            dispatcher.dispatch()
        elif op in ("answer", "wrong") and seats:
            seat = seats[n % len(seats)]
            if seat.held:
                request_id = list(seat.held)[n % len(seat.held)]
                worker_id = seat.worker_id if op == "answer" else seat.worker_id + 1000
                request = dispatcher.take(worker_id, request_id)
                if request is not None and not request.closed:
                    answered.append(request.request_id)
        elif op == "lose" and seats:
            seat = seats[n % len(seats)]
            failed.extend(r.request_id for r in dispatcher.remove(seat.worker_id, n % 6))
        elif op == "join":
            fakes[next_worker] = Worker()
            dispatcher.add(Seat(next_worker, fakes[next_worker].send, 4))
            next_worker += 1
        elif op == "close" and requests:
            requests[1 + n % len(requests)].closed = True
    places = [r.request_id for r in dispatcher.waiting if not r.closed]
    for seat in dispatcher.seats.values():
        places.extend(seat.held)
    places += answered + failed
    live = [i for i, r in requests.items() if not r.closed]
    assert len(places) == len(set(places)), "a request is in two places"
    assert set(live) <= set(places), "an open request was lost"
    for seat in dispatcher.seats.values():
        assert len(seat.held) <= seat.window


# -- taking back what a stuck worker holds, against the real shared-memory claim -----------

class Clock:
    def __init__(self):
        self.now = time.monotonic()

    def __call__(self):
        return self.now


class LocalWorker:
    """Stands for a local worker process: it keeps what it is sent in order and claims each
    request through the real progress table, exactly as worker.py does."""

    def __init__(self, table, clock):
        self.table, self.clock = table, clock
        self.slot = table.allocate()
        self.queue, self.ran = [], []

    def send(self, requests, epoch, seq):
        self.queue.extend((epoch, seq + i, r.request_id) for i, r in enumerate(requests))

    def start_next(self):
        """Claim the next request it may run; its id, or None."""
        while self.queue:
            epoch, seq, request_id = self.queue.pop(0)
            if self.table.claim(self.slot, epoch, seq, request_id, self.clock()):
                self.ran.append(request_id)
                return request_id
        return None

    def finish(self, slow_after=0.005):
        self.table.done(self.slot, slow_after, self.clock())


def make_local(workers=2, window=8):
    clock = Clock()
    table = ProgressTable(8, slow_after=0.005)
    events = Events()
    dispatcher = Dispatcher(events, table, clock)
    locals_ = {}
    for worker_id in range(1, workers + 1):
        locals_[worker_id] = LocalWorker(table, clock)
        dispatcher.add(Seat(worker_id, locals_[worker_id].send, window, None,
                            locals_[worker_id].slot))
    clock.now = time.monotonic() + 0.001      # the workers said hello: they are older
    return dispatcher, locals_, clock


def test_a_slow_request_gives_up_what_waits_behind_it():
    dispatcher, workers, clock = make_local(workers=1)
    submit(dispatcher, 1, 2, 3)
    dispatcher.dispatch()
    assert workers[1].start_next() == 1
    clock.now += 0.004
    assert not dispatcher.check(), "not slow yet"
    clock.now += 0.002
    assert dispatcher.check()
    assert held(dispatcher, 1) == [1] and [r.request_id for r in dispatcher.waiting] == [2, 3]
    assert dispatcher.seats[1].stuck_on == 1
    submit(dispatcher, 4)
    dispatcher.dispatch()
    assert held(dispatcher, 1) == [1], "a stuck worker gets nothing more"
    workers[1].finish()
    assert workers[1].start_next() is None, "what was taken back is never run here"
    assert dispatcher.take(1, 1).request_id == 1
    dispatcher.dispatch()
    assert held(dispatcher, 1) == [2, 3, 4]
    assert workers[1].start_next() == 2 and workers[1].ran == [1, 2]


def test_a_request_claimed_before_the_take_back_stays():
    dispatcher, workers, clock = make_local(workers=1)
    submit(dispatcher, 1, 2, 3)
    dispatcher.dispatch()
    assert workers[1].start_next() == 1
    workers[1].finish()
    assert workers[1].start_next() == 2
    clock.now += 1
    dispatcher.check()
    assert held(dispatcher, 1) == [1, 2], "1 answered (reply in flight) and 2 running"
    assert [r.request_id for r in dispatcher.waiting] == [3]
    assert workers[1].start_next() is None


def test_the_worker_holding_its_lock_defers_the_take_back():
    class Busy(ProgressTable):
        def revoke(self, slot):
            return None
    clock, events = Clock(), Events()
    table = Busy(4)
    worker = LocalWorker(table, clock)
    dispatcher = Dispatcher(events, table, clock)
    dispatcher.add(Seat(1, worker.send, 8, None, worker.slot))
    submit(dispatcher, 1, 2)
    dispatcher.dispatch()
    worker.start_next()
    clock.now += 1
    assert not dispatcher.check() and held(dispatcher, 1) == [1, 2]
    assert dispatcher.seats[1].stuck_on is None, "tried again at the next check"


def test_a_frozen_worker_loses_what_it_never_touched_until_it_moves():
    dispatcher, workers, clock = make_local(workers=2)
    submit(dispatcher, 1, 2)
    dispatcher.dispatch()
    assert workers[2].start_next() == 2
    clock.now += 0.5
    assert not dispatcher.check()
    clock.now += FROZEN
    assert dispatcher.check()
    assert held(dispatcher, 1) == [] and [r.request_id for r in dispatcher.waiting] == [1]
    assert dispatcher.seats[1].stuck_on == 0
    clock.now += 0.1
    workers[1].table.beat(workers[1].slot, clock.now)
    assert dispatcher.check() and dispatcher.seats[1].stuck_on is None
    assert workers[1].start_next() is None


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["submit", "dispatch", "start", "finish",
                                                 "tick", "check"]),
                                st.integers(0, 3)), max_size=120))
def test_every_request_runs_exactly_once(steps):
    """Whatever the order of claims, finishes and take-backs: each request runs on one
    worker, once, and is answered."""
    dispatcher, workers, clock = make_local(workers=3, window=4)
    running, submitted, answered = {}, 0, []
    for op, n in steps + [("drain", 0)] * 300:
        worker_id = 1 + n % 3
        if op == "submit":
            submitted += 1
            submit(dispatcher, submitted)
        elif op in ("dispatch", "drain"):
            dispatcher.dispatch()
        if op == "start" or (op == "drain" and worker_id not in running):
            for wid in ([worker_id] if op == "start" else workers):
                if wid not in running:
                    request_id = workers[wid].start_next()
                    if request_id is not None:
                        running[wid] = request_id
        if op in ("finish", "drain"):
            for wid in ([worker_id] if op == "finish" else list(running)):
                if wid in running:
                    workers[wid].finish()
                    request = dispatcher.take(wid, running.pop(wid))
                    answered.append(request.request_id)
        if op in ("tick", "drain"):
            clock.now += 0.003 * (n + 1) if op == "tick" else 0.3
        if op in ("check", "drain"):
            dispatcher.check()
    ran = [r for w in workers.values() for r in w.ran]
    assert sorted(ran) == list(range(1, submitted + 1)), "each request ran exactly once"
    assert sorted(answered) == sorted(ran)


class Sized(Request):
    def __init__(self, request_id, size):
        super().__init__(request_id)
        self.size_in = size


def near_limit(limit, used, replies=0):
    from gaspar2.frontend.budget import Budget
    budget = Budget(limit)
    budget.change(used)
    budget.replies = replies
    return budget


def test_near_the_limit_echoes_and_small_requests_pass_a_costly_one():
    MiB = 2**20
    budget = near_limit(64 * MiB, 60 * MiB, replies=40 * MiB)
    budget.reply_seen(8 * MiB, 8 * MiB)         # echoes of 8 MiB
    budget.reply_seen(100, 100)                 # small echoes
    budget.reply_seen(10, 16 * MiB)             # tiny requests with large replies
    dispatcher = Dispatcher(Events(), budget=budget)
    workers = {n: Worker() for n in (1, 2)}
    for n, worker in workers.items():
        dispatcher.add(Seat(n, worker.send, 8))
    for request in [Sized(1, 10), Sized(2, 8 * MiB), Sized(3, 100), Sized(4, 12),
                    Sized(5, 8 * MiB)]:
        dispatcher.submit(request)
    assert dispatcher.dispatch()
    sent = sorted(r for worker in workers.values() for batch in worker.batches for r in batch)
    assert sent == [2, 3, 5], "what costs nothing goes; the costly ones wait, in order"
    assert [r.request_id for r in dispatcher.waiting] == [1, 4]


@settings(max_examples=300)
@given(limit=st.integers(2**20, 2**30), used=st.integers(0, 2**30),
       replies=st.integers(0, 2**30),
       seen=st.lists(st.tuples(st.integers(0, 2**24), st.integers(0, 2**26)), max_size=20),
       sizes=st.lists(st.integers(0, 2**24), min_size=1, max_size=40))
def test_near_the_limit_what_replies_may_add_fits_or_one_goes_alone(limit, used, replies, seen,
                                                                     sizes):
    budget = near_limit(limit, used, min(replies, used))
    for size_in, size_out in seen:
        budget.reply_seen(size_in, size_out)
    dispatcher = Dispatcher(Events(), budget=budget)
    worker = Worker()
    dispatcher.add(Seat(1, worker.send, 1000))
    requests = [Sized(n, size) for n, size in enumerate(sizes, 1)]
    for request in requests:
        dispatcher.submit(request)
    dispatcher.dispatch()
    sent = [r for r in requests if r.request_id in dispatcher.seats[1].held]
    if budget.far_from_limit():
        assert len(sent) == len(requests)
        return
    planned = [budget.cost(r.size_in) for r in sent]
    costly = [p for p in planned if p]
    assert not costly or sum(costly) <= limit - used or (len(costly) == 1 and not budget.replies)
    waiting = list(dispatcher.waiting)
    assert all(budget.cost(r.size_in) for r in waiting), "only costly requests wait"
    assert [r.request_id for r in waiting] == sorted(r.request_id for r in waiting)
    if waiting:     # a costly one waits only behind (or as) one that did not fit
        first = waiting[0]
        assert budget.cost(first.size_in) > limit - used - sum(
            p for r, p in zip(sent, planned, strict=True) if r.request_id < first.request_id)
