"""The producer's memory budget: the bytes it holds for requests and replies, against one
limit (``buffer_limit``). Pure bookkeeping: the front end and dispatch ask it, it decides.

Accounting points (each a change of ``used``):

* a request being read: its buffer, as it grows (``FrameReader.capacity``);
* a request read, waiting or at a worker: its payload, until the worker's answer arrives;
* a reply being written: its size, until the connection closes.

Request bodies are read up to ``bulk``, the limit less a lane kept for small requests;
past it the front end stops reading them (TCP flow control pushes back on the clients).
The oldest request being read reads on while everything else fits under ``bulk``, or
while nothing but frames being read holds memory, so it always completes and nothing
waits forever; a request read whole keeps its bytes until its reply replaces them, so the
next oldest waits until those bytes are gone: the exception does not chain. While the
frames announced need more than is free, they grow in the order they were announced: a
younger one reads only what the older ones leave, so the budget goes to frames that will
complete, not to many halves that all wait for each other. Small
requests that arrive whole are read until the limit plus one ``max_message_size``, so they
are not kept waiting behind large uploads. Together: the producer holds at most the limit
plus one ``max_message_size``.

A reply replaces its request's bytes. What it may add is planned for at dispatch
(``cost``): the largest recent reply to a request of the same size class (its bit length),
decaying, less the request's own size. An echo of a large upload costs nothing more, and a
small request whose class has had small replies costs nothing either, so neither waits
while large replies to clients that never read hold the budget. A request that costs more
than is free waits, and the ones of its kind behind it wait in order; when nothing costly
is at a worker and no reply is held, one may go regardless: a legal request never fails for
lack of budget, it waits.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import logging
import os
from collections.abc import Callable
from typing import Any

from .frames import READ_SLICE

log = logging.getLogger("gaspar2")

MiB = 2**20
MACHINE_SHARE = 4               # the default limit: a quarter of physical memory
FALLBACK = 1024 * MiB           # when physical memory cannot be read
PLENTY = 1 << 16                 # room for more replies than can be at workers: no need to count
SIZE_CLASSES = 64                # a request's size class is its bit length
LANE_MOST = 4 * MiB              # the part of the limit kept for small requests, at most
IN_ORDER_MOST = 64               # frames looked at in order; younger ones wait for these


def default_limit() -> int:
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return FALLBACK
    return max(memory // MACHINE_SHARE, 64 * MiB)


class Budget:
    def __init__(self, limit: int):
        self.limit = limit
        self.bulk = limit - min(limit // 8, LANE_MOST)     # where partial frames stop
        self.used = 0           # every byte held for requests and replies
        self.replies = 0        # of which, replies being written
        self.expected = 0       # the largest recent reply, decaying: far below it, no counting
        self.by_class = [0] * SIZE_CLASSES      # the same, per request size class
        self.peak = 0           # the most held since the last ``trimmed``

    def change(self, delta: int, reply: bool = False) -> None:
        self.used += delta
        if reply:
            self.replies += delta
        if self.used > self.peak:
            self.peak = self.used

    def reply_seen(self, size_in: int, size_out: int) -> None:
        """A reply of ``size_out`` bytes to a request of ``size_in`` arrived: plan for
        replies that large for a while (the request path does the same inline)."""
        self.expected = max(size_out, self.expected - (self.expected >> 3))
        by_class, size_class = self.by_class, size_in.bit_length()
        by_class[size_class] = max(size_out, by_class[size_class] - (by_class[size_class] >> 3))

    def far_from_limit(self) -> bool:
        """So far below the limit that no reply expected could matter: nothing to count."""
        return self.limit - self.used > self.expected * PLENTY

    def cost(self, size_in: int) -> int:
        """What the reply to a request of ``size_in`` bytes is expected to add to them."""
        return max(self.by_class[size_in.bit_length()] - size_in, 0)

    def worth_trimming(self, threshold: int) -> bool:
        """Memory was freed since the peak: by more than ``threshold`` and over half."""
        return self.peak - self.used > threshold and self.used < self.peak // 2

    def trimmed(self) -> None:
        self.peak = self.used

    def describe(self) -> str:
        return "%.1f MiB" % (self.limit / MiB)


class Readers:
    """The connections whose frame is partial, oldest first, and those of them paused for
    want of budget. The oldest is never paused: it always completes (or times out), so the
    budget cannot fill with partial frames that all wait for each other. ``owing`` holds
    the frames whose length is known, in the order it became known, with the bytes each
    still needs; ``owed`` is their sum."""

    def __init__(self, budget: Budget, only_readers_hold: Callable[[], bool]):
        self.budget = budget
        self.only_readers_hold = only_readers_hold   # nothing read whole holds memory now
        self.reading: collections.OrderedDict[Any, None] = collections.OrderedDict()
        self.paused: collections.OrderedDict[Any, None] = collections.OrderedDict()
        self.owing: collections.OrderedDict[Any, int] = collections.OrderedDict()
        self.owed = 0

    def oldest(self) -> Any:
        return next(iter(self.reading), None)

    def owes(self, conn: Any, need: int) -> None:
        """``conn``'s frame, its length known, needs ``need`` more bytes of buffer."""
        self.owed += need - self.owing.get(conn, 0)
        if need > 0:
            self.owing[conn] = need         # an update keeps its place
        else:
            self.owing.pop(conn, None)

    def allowance(self, conn: Any) -> int:
        """How many bytes ``conn`` (which has ``held``) may add now; 0 or less: pause it.
        All read freely while every frame announced fits; then the oldest reads on while
        everything else fits under ``bulk`` (or only frames being read hold memory: nothing
        else would free any), past it if need be, and the others in order (``ahead``)."""
        free = self.budget.bulk - self.budget.used
        if free >= READ_SLICE and free >= self.owed:
            return READ_SLICE
        if conn is self.oldest() and (free + conn.held >= 0 or self.only_readers_hold()):
            return max(free, READ_SLICE)
        return free - self.ahead(conn, free)

    def ahead(self, conn: Any, free: int) -> int:
        """What the frames announced before ``conn``'s still need, counted until it reaches
        ``free``; past the first ``IN_ORDER_MOST``, or for a frame not announced yet, all."""
        ahead = 0
        for other, need in itertools.islice(self.owing.items(), IN_ORDER_MOST):
            if other is conn or ahead >= free:
                return ahead
            ahead += need
        return self.owed

    def forget(self, conn: Any) -> Any:
        """``conn`` reads no more; the new oldest, if it is paused and may read now."""
        was_oldest = conn is self.oldest()
        self.paused.pop(conn, None)
        self.reading.pop(conn, None)
        self.owed -= self.owing.pop(conn, 0)
        return self._oldest_to_resume() if was_oldest else None

    def _oldest_to_resume(self) -> Any:
        oldest = self.oldest()
        if oldest is not None and oldest in self.paused and self.allowance(oldest) > 0:
            del self.paused[oldest]
            return oldest
        return None

    def to_resume(self) -> list[Any]:
        """Paused connections to read again: the oldest if it may, then as many more as the
        free budget can feed, in the order they were paused while every frame announced
        fits, else in the order they were announced."""
        if not self.paused:
            return []
        oldest = self._oldest_to_resume()
        resume = [] if oldest is None else [oldest]
        free = self.budget.bulk - self.budget.used
        if free <= 0:
            return resume
        count = min(max(1, free // READ_SLICE), len(self.paused))
        if free >= self.owed:
            resume.extend(self.paused.popitem(last=False)[0] for _ in range(count))
            return resume
        ahead, more = 0, list[Any]()
        for conn, need in itertools.islice(self.owing.items(), IN_ORDER_MOST):
            if ahead >= free or len(more) == count:
                break
            if conn in self.paused:
                more.append(conn)
            ahead += need
        for conn in more:
            del self.paused[conn]
        return resume + more


def release_memory() -> None:
    """Hand the memory freed by large buffers back to the system (glibc keeps it otherwise)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
