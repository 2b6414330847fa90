"""File descriptors: a reserve kept for what must never fail for want of one.

The producer's open files are its client connections (counted as they open and close),
plus what ZeroMQ, gevent and the metrics server open. The count is kept cheaply and checked
against the kernel's list (``/proc/self/fd``) from time to time, and more often near the
limit. Accepting stops while fewer than ``reserve`` descriptors are left: a worker that
joins (a PUSH socket and its connections, and the sink's connections to it) always finds
some, and writing a reply needs none.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable

RESERVE_BASE = 32       # gevent, logging, the fork server's channel, transient ones
PER_WORKER = 8          # a join takes about 4; a reload joins a second one per worker
RECOUNT_EVERY = 1.0     # seconds between recounts, far from the limit


def count_open() -> int:
    """Open file descriptors, or -1 if they cannot be counted now (none left to list them)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1     # less listdir's own
    except OSError:
        return -1


def open_file_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def reserve_for(workers: int, extra: int = 0) -> int:
    return RESERVE_BASE + PER_WORKER * workers + extra


class FdReserve:
    def __init__(self, reserve: int, limit: Callable[[], int] = open_file_limit,
                 count: Callable[[], int] = count_open):
        self.limit_of = limit
        self.limit = limit()
        self.wanted = reserve
        self.reserve = min(reserve, self.limit // 2)
        self.count = count
        self.open = max(count(), 0)
        self.counted_at = 0.0

    def set_aside(self, n: int) -> None:
        """Reserve ``n`` more, for a server started later whose share depends on the limit
        then in force (the metrics port)."""
        self.wanted += n
        self.reserve = min(self.wanted, self.limit // 2)

    def opened(self, n: int = 1) -> None:
        self.open += n

    def closed(self, n: int = 1) -> None:
        self.open -= n

    def short(self) -> bool:
        """Too few left to accept one more peer."""
        return self.open >= self.limit - self.reserve

    def near(self) -> bool:
        return self.open >= self.limit - 2 * self.reserve

    def recount(self, now: float, force: bool = False) -> None:
        """Count again, when it is time (or ``force``): at once near the limit."""
        if force or self.near() or now - self.counted_at >= RECOUNT_EVERY:
            counted = self.count()
            if counted >= 0:
                self.open = counted
            else:
                self.open = max(self.open, self.limit)      # none left even to count them
            self.counted_at = now
            self.limit = self.limit_of()
            self.reserve = min(self.wanted, self.limit // 2)
