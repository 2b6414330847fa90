"""What each local worker has started, in memory shared between it and the producer.

The map is made before the fork server is forked, so every worker inherits it. A worker
writes the id of each request it starts, and when, into its slot; the producer reads the
slot to tell, when a worker dies, which of the requests it held had begun, and to time the
one it runs (worker_timeout). One clock, ``time.monotonic()``, serves every process.
"""

from __future__ import annotations

import mmap
import struct

MAX_WORKERS = 512
SLOT = struct.Struct("Qd")      # request id (0: none yet), when it started


class ProgressTable:
    def __init__(self, slots: int = MAX_WORKERS):
        self.map = mmap.mmap(-1, slots * SLOT.size)
        self.free = list(range(slots - 1, -1, -1))

    def allocate(self) -> int:
        """A cleared slot for a new worker."""
        slot = self.free.pop()
        SLOT.pack_into(self.map, slot * SLOT.size, 0, 0.0)
        return slot

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def record(self, slot: int, request_id: int, started: float) -> None:
        """In the worker: it starts ``request_id`` now."""
        SLOT.pack_into(self.map, slot * SLOT.size, request_id, started)

    def started(self, slot: int) -> tuple[int, float]:
        """(id, time) of the request the worker in ``slot`` started last; id 0 if none."""
        request_id, when = SLOT.unpack_from(self.map, slot * SLOT.size)
        return request_id, when
