"""The producer's memory budget: the bytes it holds for requests and replies, against one
limit (``buffer_limit``). Pure bookkeeping: the front end and dispatch ask it, it decides.

Accounting points (each a change of ``used``):

* a request being read: its buffer, as it grows (``FrameReader.capacity``);
* a request read, waiting or at a worker: its payload, until the worker's answer arrives;
* a reply being written: its size, until the connection closes.

Past the limit the front end stops reading request bodies (TCP flow control pushes back on
the clients), except for the oldest request being read, so that one always completes and
nothing waits forever. Dispatch sends a request only while the reply it will bring fits
(``room``): the size expected is the largest recent reply, decaying, so a burst of large
replies nobody reads cannot run past the limit by more than a few of them. When nothing is
at a worker and no reply is held, one request may go regardless: a legal request never
fails for lack of budget, it waits.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
from collections.abc import Callable
from typing import Any

from .frames import READ_SLICE

log = logging.getLogger("gaspar2")

MiB = 2**20
MACHINE_SHARE = 4               # the default limit: a quarter of physical memory
FALLBACK = 1024 * MiB           # when physical memory cannot be read
UNBOUNDED = 1 << 62
PLENTY = 1 << 16                 # room for more replies than can be at workers: no need to count


def default_limit() -> int:
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return FALLBACK
    return max(memory // MACHINE_SHARE, 64 * MiB)


class Budget:
    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0           # every byte held for requests and replies
        self.replies = 0        # of which, replies being written
        self.expected = 0       # the reply size to plan for: the largest recent, decaying
        self.peak = 0           # the most held since the last ``trimmed``

    def change(self, delta: int, reply: bool = False) -> None:
        self.used += delta
        if reply:
            self.replies += delta
        if self.used > self.peak:
            self.peak = self.used

    def free(self) -> int:
        return self.limit - self.used

    def over(self) -> bool:
        return self.used >= self.limit

    def reply_seen(self, size: int) -> None:
        """A reply of ``size`` bytes arrived: plan for replies that large for a while."""
        self.expected = max(size, self.expected - (self.expected >> 3))

    def room(self, at_workers: Callable[[], int]) -> int:
        """How many more requests may go to workers now; ``at_workers`` counts those there."""
        if self.expected == 0 or self.limit - self.used > self.expected * PLENTY:
            return UNBOUNDED
        return self._room(at_workers())

    def _room(self, at_workers: int) -> int:
        free = self.limit - self.used - at_workers * self.expected
        allowed = free // self.expected
        if allowed < 1 and at_workers == 0 and self.replies == 0:
            return 1            # nothing else will free memory: let one go
        return max(allowed, 0)

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
    budget cannot fill with partial frames that all wait for each other."""

    def __init__(self, budget: Budget):
        self.budget = budget
        self.reading: collections.OrderedDict[Any, None] = collections.OrderedDict()
        self.paused: collections.OrderedDict[Any, None] = collections.OrderedDict()

    def oldest(self) -> Any:
        return next(iter(self.reading), None)

    def allowance(self, conn: Any) -> int:
        """How many payload bytes ``conn`` may read now; 0 or less: pause it."""
        free = self.budget.limit - self.budget.used
        if free >= READ_SLICE or conn is self.oldest():
            return READ_SLICE
        return free

    def forget(self, conn: Any) -> Any:
        """``conn`` reads no more; the new oldest, if it is paused and must be resumed."""
        was_oldest = conn is self.oldest()
        self.paused.pop(conn, None)
        self.reading.pop(conn, None)
        oldest = self.oldest() if was_oldest else None
        if oldest is not None and oldest in self.paused:
            del self.paused[oldest]
            return oldest
        return None

    def to_resume(self) -> list[Any]:
        """Paused connections to read again, as many as the free budget can feed, in order."""
        free = self.budget.free()
        if free <= 0 or not self.paused:
            return []
        count = max(1, free // READ_SLICE)
        return [self.paused.popitem(last=False)[0] for _ in range(min(count, len(self.paused)))]


def release_memory() -> None:
    """Hand the memory freed by large buffers back to the system (glibc keeps it otherwise)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
