"""What each local worker is doing, in memory shared between it and the producer, and the
atomic claim that makes every request run once.

The map is made before the fork server is forked, so every worker inherits it; each worker
has one slot. The worker writes which request it runs and since when, and how long is
"slow" for it; the producer reads that without asking, so it sees a worker stuck in C code
that holds the GIL, or stopped, as well as one looping in Python.

The claim: a request sent to a worker carries the slot's epoch and a sequence number. The
worker runs it only if it can *claim* it: under the slot's semaphore, the epoch is still the
one the request was sent with, and the worker records its sequence number. The producer
takes back what a worker holds by *revoking*: under the same semaphore it moves the epoch
on and reads the last sequence number claimed. A request sent after that number was never
started and never will be; one at or before it was. Either the worker claims first or the
producer revokes first, never both. The semaphore is a POSIX one in the shared map
(``sem_init`` with pshared); the producer only ever tries it (``sem_trywait``), so its loop
never blocks on a worker.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import struct
import time

MAX_WORKERS = 512
SEM_SIZE = 32                   # sizeof(sem_t) on Linux, 32- and 64-bit
FIELDS = struct.Struct("QQQddd")  # epoch, claimed seq, running id, since, slow after, beat
SLOT_SIZE = 128
EPOCH, CLAIMED, RUNNING, SINCE, SLOW, BEAT = (SEM_SIZE + 8 * i for i in range(6))

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sem_init.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint]
for _name in ("sem_wait", "sem_trywait", "sem_post"):
    getattr(_libc, _name).argtypes = [ctypes.c_void_p]


class ProgressTable:
    def __init__(self, slots: int = MAX_WORKERS, slow_after: float = 0.005):
        self.map = mmap.mmap(-1, slots * SLOT_SIZE)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.free = list(range(slots - 1, -1, -1))
        self.slow_after = slow_after    # until a worker says what is slow for it

    # -- the producer's side ---------------------------------------------------------------

    def allocate(self) -> int:
        """A fresh slot for a new worker: epoch 0, nothing claimed, an unlocked semaphore."""
        slot = self.free.pop()
        now = time.monotonic()
        FIELDS.pack_into(self.map, slot * SLOT_SIZE + EPOCH, 0, 0, 0, now, self.slow_after, now)
        if _libc.sem_init(self._sem(slot), 1, 1) != 0:
            raise OSError(ctypes.get_errno(), "sem_init failed")
        return slot

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def read(self, slot: int) -> tuple[int, int, int, float, float, float]:
        """(epoch, claimed seq, running id, since, slow after, beat), without the lock:
        each field is written whole, and only ``revoke`` needs them to agree."""
        return FIELDS.unpack_from(self.map, slot * SLOT_SIZE + EPOCH)  # type: ignore[return-value]

    def running(self, slot: int) -> tuple[int, float]:
        """(id, since) of the request the worker runs; id 0 while it is idle."""
        _, _, request_id, since, _, _ = self.read(slot)
        return request_id, since

    def revoke(self, slot: int) -> int | None:
        """Move the epoch on; the last sequence number the worker claimed, or None if the
        worker holds the semaphore this instant (try again later)."""
        sem = self._sem(slot)
        if _libc.sem_trywait(sem) != 0:
            return None
        try:
            offset = slot * SLOT_SIZE
            epoch, claimed = struct.unpack_from("QQ", self.map, offset + EPOCH)
            struct.pack_into("Q", self.map, offset + EPOCH, epoch + 1)
            return int(claimed)
        finally:
            _libc.sem_post(sem)

    # -- the worker's side -----------------------------------------------------------------

    def claim(self, slot: int, epoch: int, seq: int, request_id: int, now: float) -> bool:
        """Start ``request_id`` unless the producer took it back (its epoch has passed)."""
        sem = self._sem(slot)
        while _libc.sem_wait(sem) != 0:
            if ctypes.get_errno() != errno.EINTR:
                raise OSError(ctypes.get_errno(), "sem_wait failed")
        try:
            offset = slot * SLOT_SIZE
            if struct.unpack_from("Q", self.map, offset + EPOCH)[0] != epoch:
                return False
            struct.pack_into("QQd", self.map, offset + CLAIMED, seq, request_id, now)
            return True
        finally:
            _libc.sem_post(sem)

    def done(self, slot: int, slow_after: float, now: float) -> None:
        """The request is answered: idle since ``now``; slow is past ``slow_after`` s."""
        struct.pack_into("Qddd", self.map, slot * SLOT_SIZE + RUNNING, 0, now, slow_after, now)

    def beat(self, slot: int, now: float) -> None:
        """The worker's loop is alive (it writes this while idle, too)."""
        struct.pack_into("d", self.map, slot * SLOT_SIZE + BEAT, now)

    def _sem(self, slot: int) -> int:
        return self.base + slot * SLOT_SIZE
