"""Dispatch: which request goes to which worker, where every request is, and taking back
what a stuck worker holds.

Pure logic, with no socket and no process: a request is any object with ``request_id``,
``payload``, ``closed`` and a ``seq`` that dispatch sets; a worker is a ``Seat`` whose
``send`` delivers a batch; a local worker's progress is read from a ``progress`` table
(see progress.py) that the unit tests replace with a stand-in.

The backlog (``waiting``) lives here, not in ZeroMQ's pipes. A request goes to the ready
worker holding the fewest, and only while that worker holds fewer than its window and is
not stuck. Once a worker holds any, it is topped up only when it is down to half its window,
so under load one message carries several requests instead of one per reply. ``Seat.held``
is the one index of which request is at which worker: a worker's answer counts only for a
request that worker holds.

A local worker whose current request runs past its "slow" time, or that is frozen with
requests it has not touched, is stuck: ``check`` revokes its slot's epoch and takes back every
request it had not claimed (each one runs once: see progress.py), and sends it nothing
more until it moves again. This needs nothing from the stuck worker: not its GIL, not its
Python.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ..frontend.budget import PLENTY, Budget

log = logging.getLogger("gaspar2")

Request = Any   # ``request_id``, ``payload``, ``size_in``, ``closed``, ``seq``: a Connection
Send = Callable[[list[Request], int, int], None]     # (requests, epoch, first seq)
# A worker that has neither touched what it was sent nor shown a sign of life (it beats at
# least every 0.5 s while idle) for this long is frozen. Generous: a large message takes a
# while to arrive, and taking it back would only send it again elsewhere.
FROZEN = 1.0
PASSED_MOST = 256   # near the memory limit, the waiting requests one dispatch looks past


class Full(Exception):
    """A seat's ``send`` could not take the batch now (its queue is full)."""


class Seat:
    """Dispatch's view of one worker: what it holds, and whether it may take more."""

    __slots__ = ("worker_id", "send", "window", "lifetime", "slot", "held", "assigned",
                 "retiring", "epoch", "next_seq", "sent_at", "stuck_on", "stuck_since")

    def __init__(self, worker_id: int, send: Send, window: int, lifetime: int | None = None,
                 slot: int | None = None):
        self.worker_id = worker_id
        self.send = send              # raises Full when the worker cannot take the batch
        self.window = window
        self.lifetime = lifetime      # requests it may take before it is replaced
        self.slot = slot              # its progress slot; None for a remote worker
        self.held: dict[int, Request] = {}   # request id -> request, in the order sent
        self.assigned = 0             # requests sent to it so far
        self.retiring = False         # takes nothing new, leaves once it holds nothing
        self.epoch = 0                # what its requests are sent with (progress.py)
        self.next_seq = 1
        self.sent_at = 0.0            # when it was last sent a batch
        self.stuck_on: int | None = None    # stuck: the request it runs (0: none)
        self.stuck_since = 0.0

    def __repr__(self) -> str:
        return "worker %d" % self.worker_id


class DispatchEvents(Protocol):
    def seat_spent(self, seat: Seat) -> None:
        """``seat`` has taken its lifetime of requests (max_requests)."""

    def seat_drained(self, seat: Seat) -> None:
        """``seat`` is retiring and holds nothing more."""

    def request_left(self, request: Request) -> None:
        """``request`` left a worker's books other than by its answer (``take``): taken
        back, or the worker is gone."""


class Dispatcher:
    def __init__(self, events: DispatchEvents, progress: Any = None,
                 clock: Callable[[], float] = lambda: 0.0, budget: Budget | None = None):
        self.events = events
        self.progress = progress      # read(slot) and revoke(slot), for local seats
        self.clock = clock            # the progress table's clock (time.monotonic)
        self.budget = budget          # how many more may go to workers now (memory)
        self.waiting: collections.deque[Request] = collections.deque()
        self.seats: dict[int, Seat] = {}

    def add(self, seat: Seat) -> None:
        self.seats[seat.worker_id] = seat

    def submit(self, request: Request) -> None:
        self.waiting.append(request)

    def at_workers(self) -> int:
        return sum(len(seat.held) for seat in self.seats.values())

    def dispatch(self) -> bool:
        """Hand waiting requests to free workers, one message per worker; True if any went."""
        waiting = self.waiting
        if not waiting:
            return False
        budget = self.budget      # far below its limit, nothing to count (Budget.far_from_limit)
        if budget is not None and budget.limit - budget.used <= budget.expected * PLENTY:
            return self._dispatch_near_limit(budget)
        batches: dict[Seat, list[Request]] = {}
        while waiting:
            seat = self._least_loaded(batches)
            if seat is None:
                break
            request = waiting.popleft()
            if not request.closed:      # _assign, inline on the common path
                request.seq = seat.next_seq
                seat.next_seq += 1
                seat.held[request.request_id] = request
                batches.setdefault(seat, []).append(request)
        for seat, requests in batches.items():
            self._send(seat, requests)
        return bool(batches)

    def _dispatch_near_limit(self, budget: Budget) -> bool:
        """Dispatch counting what each reply may add (``Budget.cost``): a request that
        costs nothing goes; a costly one goes while its cost fits in what is free, and
        once one waits, the costly ones behind it wait too, in order. Looks past at most
        ``PASSED_MOST`` waiting requests."""
        waiting, cost = self.waiting, budget.cost
        free = budget.limit - budget.used
        costly_out = False
        for out in self.seats.values():
            for held in out.held.values():
                planned = cost(held.size_in)
                free -= planned
                costly_out = costly_out or planned > 0
        batches: dict[Seat, list[Request]] = {}
        passed: list[Request] = []
        blocked = False
        while waiting and len(passed) < PASSED_MOST:
            seat = self._least_loaded(batches)
            if seat is None:
                break
            request = waiting.popleft()
            if request.closed:
                continue
            planned = cost(request.size_in)
            if planned and (blocked or (planned > free and (costly_out or budget.replies))):
                blocked = True
                passed.append(request)
                continue
            free -= planned
            costly_out = costly_out or planned > 0
            self._assign(seat, request, batches)
        self.waiting.extendleft(reversed(passed))
        for seat, requests in batches.items():
            self._send(seat, requests)
        return bool(batches)

    @staticmethod
    def _assign(seat: Seat, request: Request, batches: dict[Seat, list[Request]]) -> None:
        request.seq = seat.next_seq
        seat.next_seq += 1
        seat.held[request.request_id] = request
        batches.setdefault(seat, []).append(request)

    def _least_loaded(self, batches: dict[Seat, list[Request]]) -> Seat | None:
        best = None
        for seat in self.seats.values():
            held, window = len(seat.held), seat.window
            if (seat.stuck_on is None and not seat.retiring and held < window
                    and (seat in batches or held <= window // 2)
                    and (best is None or held < len(best.held))):
                best = seat
        return best

    def _send(self, seat: Seat, requests: list[Request]) -> None:
        try:
            seat.send(requests, seat.epoch, requests[0].seq)
        except Full:
            log.error("%r cannot take requests (its queue is full): requeued", seat)
            for request in requests:
                del seat.held[request.request_id]
            seat.next_seq = requests[0].seq
            self.waiting.extendleft(reversed(requests))
            return
        seat.sent_at = self.clock()
        seat.assigned += len(requests)
        if seat.lifetime is not None and seat.assigned >= seat.lifetime and not seat.retiring:
            self.events.seat_spent(seat)

    def take(self, worker_id: int, request_id: int) -> Request | None:
        """The request a worker answered, off the books (its client may be gone meanwhile:
        ``closed``); None if that worker does not hold it. The caller releases what the
        request held at the worker (``request_left`` is for the other ways out)."""
        seat = self.seats.get(worker_id)
        if seat is None:
            return None
        request = seat.held.pop(request_id, None)
        if request is None:
            return None
        if seat.stuck_on == request_id:
            seat.stuck_on = None
        if seat.retiring and not seat.held:
            self.events.seat_drained(seat)
        return request

    def remove(self, worker_id: int, claimed: int | None) -> list[Request]:
        """A worker is gone. Everything it held up to the last sequence number it claimed
        (``claimed``; None: it holds one at most and may have begun it) failed with it and is
        returned; the rest go back to the front of the backlog, in order."""
        seat = self.seats.pop(worker_id, None)
        if seat is None:
            return []
        held = list(seat.held.values())
        for request in held:
            self.events.request_left(request)
        began = held[:1] if claimed is None else [r for r in held if r.seq <= claimed]
        self._requeue([r for r in held if r not in began])
        return [request for request in began if not request.closed]

    def retire(self, worker_id: int) -> None:
        """Send nothing more to this worker; report it drained once it holds nothing."""
        seat = self.seats.get(worker_id)
        if seat is not None and not seat.retiring:
            seat.retiring = True
            if not seat.held:
                self.events.seat_drained(seat)

    def _requeue(self, requests: Iterable[Request]) -> None:
        self.waiting.extendleft(reversed([r for r in requests if not r.closed]))

    # -- stuck workers -----------------------------------------------------------------------

    def check(self) -> bool:
        """Take back what stuck local workers hold and have not begun, and free workers that
        moved again; True if either happened (there may be work to dispatch)."""
        now = self.clock()
        changed = False
        for seat in self.seats.values():
            if seat.slot is None or not (seat.held or seat.stuck_on is not None):
                continue        # remote, or holds nothing to take back or to free
            _, _, running, since, slow_after, beat = self.progress.read(seat.slot)
            if seat.stuck_on is not None:
                if running != seat.stuck_on if seat.stuck_on else beat > seat.stuck_since:
                    seat.stuck_on = None
                    changed = True
            elif running and now - since > slow_after:
                changed |= self._take_back(seat, running, now)
            elif (not running and seat.held and since < seat.sent_at
                    and now - max(seat.sent_at, beat) > FROZEN):
                changed |= self._take_back(seat, 0, now)
        return changed

    def _take_back(self, seat: Seat, running: int, now: float) -> bool:
        claimed = self.progress.revoke(seat.slot)
        if claimed is None:
            return False          # it is claiming this instant: look again next time
        seat.epoch += 1
        seat.stuck_on, seat.stuck_since = running, now
        returned = [r for r in seat.held.values() if r.seq > claimed]
        for request in returned:
            del seat.held[request.request_id]
            self.events.request_left(request)
        if returned:
            log.debug("%r is stuck: %d requests taken back", seat, len(returned))
        self._requeue(returned)
        if seat.retiring and not seat.held:
            self.events.seat_drained(seat)
        return bool(returned)

    def busy(self) -> bool:
        """Whether ``check`` has anything to watch: a local worker that holds a request, or
        one that is stuck."""
        for seat in self.seats.values():
            if seat.slot is not None and (seat.held or seat.stuck_on is not None):
                return True
        return False
