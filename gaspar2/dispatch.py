"""Dispatch: which request goes to which worker, and where every request is.

Pure logic, with no socket and no process: a request is any object with ``request_id``,
``payload`` and ``closed``; a worker is a ``Seat`` whose ``send`` delivers a batch.

The backlog (``waiting``) lives here, not in ZeroMQ's pipes. A request goes to the ready
worker holding the fewest, and only while that worker holds fewer than its window and has
not said it is stuck on a slow one. Once a worker holds any, it is topped up only when it is
down to half its window, so under load one message carries several requests instead of one
per reply. ``Seat.held`` is the one index of which request is at which worker: a worker's
answer counts only for a request that worker holds.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Callable, Iterable, Protocol

log = logging.getLogger("gaspar2")

Request = Any       # ``request_id``, ``payload``, ``closed``: a front end's Connection


class Full(Exception):
    """A seat's ``send`` could not take the batch now (its queue is full)."""


class Seat:
    """Dispatch's view of one worker: what it holds, and whether it may take more."""

    __slots__ = ("worker_id", "send", "window", "lifetime", "held", "stuck_on", "assigned",
                 "retiring")

    def __init__(self, worker_id: int, send: Callable[[list[Request]], None], window: int,
                 lifetime: int | None = None):
        self.worker_id = worker_id
        self.send = send              # raises Full when the worker cannot take the batch
        self.window = window
        self.lifetime = lifetime      # requests it may take before it is replaced
        self.held: dict[int, Request] = {}   # request id -> request, in the order sent
        self.stuck_on: int | None = None     # a request it said is slow: send it nothing
        self.assigned = 0             # requests sent to it so far
        self.retiring = False         # takes nothing new, leaves once it holds nothing

    def __repr__(self) -> str:
        return "worker %d" % self.worker_id


class DispatchEvents(Protocol):
    def seat_spent(self, seat: Seat) -> None:
        """``seat`` has taken its lifetime of requests (max_requests)."""

    def seat_drained(self, seat: Seat) -> None:
        """``seat`` is retiring and holds nothing more."""


class Dispatcher:
    def __init__(self, events: DispatchEvents):
        self.events = events
        self.waiting: collections.deque[Request] = collections.deque()
        self.seats: dict[int, Seat] = {}

    def add(self, seat: Seat) -> None:
        self.seats[seat.worker_id] = seat

    def submit(self, request: Request) -> None:
        self.waiting.append(request)

    def at_workers(self) -> int:
        return sum(len(seat.held) for seat in self.seats.values())

    def dispatch(self) -> None:
        """Hand waiting requests to free workers, one message per worker."""
        waiting = self.waiting
        batches: dict[Seat, list[Request]] = {}
        while waiting:
            seat = self._least_loaded(batches)
            if seat is None:
                break
            request = waiting.popleft()
            if request.closed:
                continue
            seat.held[request.request_id] = request
            batches.setdefault(seat, []).append(request)
        for seat, requests in batches.items():
            self._send(seat, requests)

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
            seat.send(requests)
        except Full:
            log.error("%r cannot take requests (its queue is full): requeued", seat)
            for request in requests:
                del seat.held[request.request_id]
            self.waiting.extendleft(reversed(requests))
            return
        seat.assigned += len(requests)
        if seat.lifetime is not None and seat.assigned >= seat.lifetime and not seat.retiring:
            self.events.seat_spent(seat)

    def take(self, worker_id: int, request_id: int) -> Request | None:
        """The request a worker answered, off the books; None if that worker does not hold
        it, or if its client is gone."""
        seat = self.seats.get(worker_id)
        request = seat.held.pop(request_id, None) if seat is not None else None
        if request is None:
            return None
        if seat.stuck_on == request_id:
            seat.stuck_on = None
        if seat.retiring and not seat.held:
            self.events.seat_drained(seat)
        if request.closed:
            log.info("dropped the late answer to request %d from %s: its client is gone",
                     request_id, request)
            return None
        return request

    def give_back(self, worker_id: int, stuck_id: int, request_ids: Iterable[int]) -> None:
        """A worker is stuck on ``stuck_id``: take back what it holds but has not begun."""
        seat = self.seats.get(worker_id)
        if seat is None:
            return
        returned = [seat.held.pop(i) for i in request_ids if i in seat.held and i != stuck_id]
        self._requeue(returned)
        if stuck_id in seat.held:
            seat.stuck_on = stuck_id

    def remove(self, worker_id: int, started_id: int | None) -> list[Request]:
        """A worker is gone. Everything it held up to the one it had started (``started_id``;
        None: it holds one at most and may have begun it) failed with it and is returned;
        the rest go back to the front of the backlog, in order."""
        seat = self.seats.pop(worker_id, None)
        if seat is None:
            return []
        held = list(seat.held.values())
        if started_id is None:
            began = 1 if held else 0
        else:
            ids = list(seat.held)
            began = ids.index(started_id) + 1 if started_id in seat.held else 0
        self._requeue(held[began:])
        return [request for request in held[:began] if not request.closed]

    def retire(self, worker_id: int) -> None:
        """Send nothing more to this worker; report it drained once it holds nothing."""
        seat = self.seats.get(worker_id)
        if seat is not None and not seat.retiring:
            seat.retiring = True
            if not seat.held:
                self.events.seat_drained(seat)

    def _requeue(self, requests: list[Request]) -> None:
        self.waiting.extendleft(reversed([r for r in requests if not r.closed]))
