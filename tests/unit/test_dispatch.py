"""Dispatch policy and bookkeeping, driven by plain objects: no socket, no process."""

from hypothesis import given, settings, strategies as st

from gaspar2.dispatch import Dispatcher, Full, Seat


class Request:
    def __init__(self, request_id):
        self.request_id = request_id
        self.payload = b"p%d" % request_id
        self.closed = False

    def __repr__(self):
        return "r%d" % self.request_id


class Events:
    def __init__(self):
        self.spent, self.drained = [], []

    def seat_spent(self, seat):
        self.spent.append(seat.worker_id)

    def seat_drained(self, seat):
        self.drained.append(seat.worker_id)


class Worker:
    """Stands for a worker's PUSH socket: records each batch sent to it."""

    def __init__(self, full=False):
        self.batches = []
        self.full = full

    def send(self, requests):
        if self.full:
            raise Full
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
    dispatcher, fakes, _ = make(workers=3)
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
    dispatcher, fakes, _ = make(workers=1, window=4)
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


def test_give_back_requeues_at_the_front_in_order():
    dispatcher, fakes, _ = make(workers=1, window=8)
    submit(dispatcher, *range(1, 10))
    dispatcher.dispatch()
    assert [r.request_id for r in dispatcher.waiting] == [9]
    dispatcher.give_back(1, 1, [2, 3, 4, 5, 6, 7, 8])
    assert held(dispatcher, 1) == [1]
    assert [r.request_id for r in dispatcher.waiting] == [2, 3, 4, 5, 6, 7, 8, 9]


def test_a_stuck_worker_is_skipped_until_it_answers():
    dispatcher, fakes, _ = make(workers=2, window=8)
    submit(dispatcher, 1)
    dispatcher.dispatch()
    dispatcher.give_back(1, 1, [])
    submit(dispatcher, 2, 3, 4)
    dispatcher.dispatch()
    assert held(dispatcher, 1) == [1] and held(dispatcher, 2) == [2, 3, 4]
    assert dispatcher.take(1, 1).request_id == 1
    submit(dispatcher, 5)
    dispatcher.dispatch()
    assert held(dispatcher, 1) == [5]


def test_give_back_only_of_what_that_worker_holds():
    dispatcher, fakes, _ = make(workers=2, window=8)
    submit(dispatcher, 1, 2)
    dispatcher.dispatch()
    dispatcher.give_back(1, 1, [2])     # 2 is held by worker 2, not 1
    assert held(dispatcher, 2) == [2] and not dispatcher.waiting


def test_an_answer_counts_only_from_the_worker_that_holds_it():
    dispatcher, fakes, _ = make(workers=2)
    (one, two) = submit(dispatcher, 1, 2)
    dispatcher.dispatch()
    assert dispatcher.take(2, 1) is None
    assert dispatcher.take(3, 1) is None
    assert held(dispatcher, 1) == [1]
    assert dispatcher.take(1, 1) is one
    assert dispatcher.take(1, 1) is None, "answered once only"


def test_a_lost_worker_fails_what_it_started_and_requeues_the_rest():
    dispatcher, fakes, _ = make(workers=2, window=8)
    submit(dispatcher, *range(1, 9))
    dispatcher.dispatch()
    assert held(dispatcher, 1) == [1, 3, 5, 7]
    failed = dispatcher.remove(1, started_id=3)
    assert [r.request_id for r in failed] == [1, 3]
    assert [r.request_id for r in dispatcher.waiting] == [5, 7]
    assert 1 not in dispatcher.seats


def test_a_lost_worker_that_started_nothing_held_fails_nothing():
    dispatcher, fakes, _ = make(workers=1)
    submit(dispatcher, 1, 2)
    dispatcher.dispatch()
    assert dispatcher.remove(1, started_id=0) == []
    assert [r.request_id for r in dispatcher.waiting] == [1, 2]


def test_a_lost_remote_worker_fails_the_one_it_held():
    dispatcher, fakes, _ = make(workers=1, window=1)
    submit(dispatcher, 1, 2)
    dispatcher.dispatch()
    assert [r.request_id for r in dispatcher.remove(1, started_id=None)] == [1]
    assert [r.request_id for r in dispatcher.waiting] == [2]


def test_closed_requests_are_neither_sent_nor_failed():
    dispatcher, fakes, _ = make(workers=1, window=8)
    requests = submit(dispatcher, 1, 2, 3)
    requests[1].closed = True
    dispatcher.dispatch()
    assert fakes[1].batches == [[1, 3]]
    requests[0].closed = True
    assert dispatcher.take(1, 1) is None, "a late answer for a closed client is dropped"
    assert dispatcher.remove(1, started_id=3) == [requests[2]]


def test_max_requests_reports_a_spent_worker_once():
    dispatcher, fakes, events = make(workers=1, window=2, lifetime=3)
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
    dispatcher, fakes, events = make(workers=2)
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
                                                 "giveback", "lose", "join", "close"]),
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
                if request is not None:
                    answered.append(request.request_id)
        elif op == "giveback" and seats:
            seat = seats[n % len(seats)]
            ids = list(seat.held)
            dispatcher.give_back(seat.worker_id, ids[0] if ids else 0, ids[1:])
        elif op == "lose" and seats:
            seat = seats[n % len(seats)]
            ids = list(seat.held)
            started = ids[n % len(ids)] if ids else 0
            failed.extend(r.request_id for r in dispatcher.remove(seat.worker_id, started))
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
