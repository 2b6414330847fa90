"""What keeps the producer's event loop going whatever peers send: log lines that a flood
cannot multiply, one guard for every loop callback, and the count of dropped messages.

gevent stops an io watcher whose callback raises, so one exception would silence a sink, the
fork server's channel or the listener for good. Every callback the producer starts on the
loop is wrapped by ``guarded``: an exception is logged with its traceback (once a second at
most for each callback, with a count of the others) and the loop goes on.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gaspar2")


class Throttled:
    """Log lines limited to one per ``interval`` seconds for each key; the next line that
    gets through says how many were left out in between."""

    def __init__(self, logger: logging.Logger, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.last: dict[str, float] = {}
        self.skipped: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: Any, exc_info: bool = False) -> bool:
        """Log unless ``key`` was logged less than ``interval`` ago; True if it was logged."""
        now = self.clock()
        last = self.last.get(key)
        if last is not None and now - last < self.interval:
            self.skipped[key] = self.skipped.get(key, 0) + 1
            return False
        skipped = self.skipped.pop(key, 0)
        if skipped and last is not None:
            message += " (and %d more like it in the last %.0f s)" % (skipped, now - last)
        self.last[key] = now
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True


errors = Throttled(log)


def guarded(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a loop callback so that no exception escapes it (see the module's docstring)."""
    name = getattr(callback, "__qualname__", repr(callback))

    @functools.wraps(callback)
    def run(*args: Any) -> Any:
        try:
            return callback(*args)
        except Exception:
            errors.log(logging.ERROR, name, "error in %s, going on", name, exc_info=True)
            return None
    return run


class Drops:
    """Messages dropped on the sinks, counted by reason, with a throttled log line."""

    REASONS = ("malformed", "sender", "not_held")

    def __init__(self, throttled: Throttled | None = None):
        self.counts = dict.fromkeys(self.REASONS, 0)
        self.throttled = throttled or Throttled(logging.getLogger("gaspar2"))

    def count(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        self.throttled.log(logging.WARNING, reason, "dropped a worker message (%s): %s; "
                           "%d dropped so far", reason, detail, self.counts[reason])

    def total(self) -> int:
        return sum(self.counts.values())
