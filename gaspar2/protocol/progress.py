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
never blocks on a worker. It is made with ctypes, once per slot, and waited on and posted
through the standard library's own wrapper of a POSIX semaphore (``_multiprocessing``'s
``SemLock``, given its address): a ctypes call runs through libffi, whose code costs several
microseconds to bring back into a cache gone cold while the worker slept, and the claim is
on every request's path.

Where a worker is, also without its help: each local worker, at start, has faulthandler
write every thread's Python stack to a named pipe of its own on ``DUMP_SIGNAL``
(``offer_stack``), and the producer reads that pipe without waiting (``read_stack``). The
dump is written from C inside the signal handler, so it comes even while the handler runs
C code that holds the GIL (a backtracking regex), which no thread of the worker could.
"""

from __future__ import annotations

import _multiprocessing  # type: ignore[import-not-found]  # no stubs: see Semaphore
import ctypes
import faulthandler
import mmap
import os
import signal
import struct
import time
from typing import Protocol

MAX_WORKERS = 512
SEM_SIZE = 32                   # sizeof(sem_t) on Linux, 32- and 64-bit
FIELDS = struct.Struct("QQQddd")  # epoch, claimed seq, running id, since, slow after, beat
SLOT_SIZE = 128
EPOCH, CLAIMED, RUNNING, SINCE, SLOW, BEAT = (SEM_SIZE + 8 * i for i in range(6))
U64, F64 = struct.Struct("Q"), struct.Struct("d")
CLAIM = struct.Struct("QQ")       # claimed seq, running id: adjacent, written at once
TIMES = struct.Struct("ddd")      # since, slow after, beat: adjacent, written at once
NOT_RUNNING = U64.pack(0)
DUMP_SIGNAL = signal.SIGUSR2    # asks a local worker for its stack (see offer_stack)

SEMAPHORE = 1                   # _multiprocessing's kind for a plain semaphore

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sem_init.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint]


class Semaphore(Protocol):
    """What the table uses of ``_multiprocessing.SemLock``."""

    def acquire(self, block: bool = True) -> bool: ...

    def release(self) -> None: ...


class ProgressTable:
    def __init__(self, slots: int = MAX_WORKERS, slow_after: float = 0.005):
        self.map = mmap.mmap(-1, slots * SLOT_SIZE)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        # Each slot's semaphore, wrapped where it lies in the map (initialised by allocate);
        # a lock released more often than taken raises ValueError.
        rebuild = _multiprocessing.SemLock._rebuild
        self.locks: list[Semaphore] = [rebuild(self.base + slot * SLOT_SIZE, SEMAPHORE, 1, None)
                                       for slot in range(slots)]
        self.free = list(range(slots - 1, -1, -1))
        self.slow_after = slow_after    # until a worker says what is slow for it

    # -- the producer's side ---------------------------------------------------------------

    def allocate(self) -> int:
        """A fresh slot for a new worker: epoch 0, nothing claimed, an unlocked semaphore."""
        slot = self.free.pop()
        now = time.monotonic()
        self._put(slot, EPOCH, FIELDS.pack(0, 0, 0, now, self.slow_after, now))
        if _libc.sem_init(self.base + slot * SLOT_SIZE, 1, 1) != 0:
            raise OSError(ctypes.get_errno(), "sem_init failed")
        return slot

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def read(self, slot: int) -> tuple[int, int, int, float, float, float]:
        """(epoch, claimed seq, running id, since, slow after, beat), without the lock.

        Each field is written whole, ``since`` before ``running`` (see ``_put``), and
        ``running`` is read first here: a reader that sees a request running sees when it
        started (x86's stores and loads keep their order; elsewhere an early read only costs
        a needless take-back). Only ``revoke`` needs more, and it holds the lock."""
        offset = slot * SLOT_SIZE
        (running,) = U64.unpack_from(self.map, offset + RUNNING)
        epoch, claimed, _, since, slow_after, beat = FIELDS.unpack_from(self.map, offset + EPOCH)
        return epoch, claimed, running, since, slow_after, beat

    def running(self, slot: int) -> tuple[int, float]:
        """(id, since) of the request the worker runs; id 0 while it is idle."""
        _, _, request_id, since, _, _ = self.read(slot)
        return request_id, since

    def revoke(self, slot: int) -> int | None:
        """Move the epoch on; the last sequence number the worker claimed, or None if the
        worker holds the semaphore this instant (try again later)."""
        lock = self.locks[slot]
        if not lock.acquire(False):
            return None
        try:
            epoch, claimed = struct.unpack_from("QQ", self.map, slot * SLOT_SIZE + EPOCH)
            self._put(slot, EPOCH, U64.pack(epoch + 1))
            return int(claimed)
        finally:
            lock.release()

    # -- the worker's side -----------------------------------------------------------------

    def claim(self, slot: int, epoch: int, seq: int, request_id: int, now: float) -> bool:
        """Start ``request_id`` unless the producer took it back (its epoch has passed)."""
        base = slot * SLOT_SIZE        # the slot's fields written in place: see _put
        lock = self.locks[slot]
        lock.acquire()                 # waits out an interrupted wait, as sem_wait's callers do
        try:
            if U64.unpack_from(self.map, base + EPOCH)[0] != epoch:
                return False
            self.map[base + SINCE:base + SINCE + F64.size] = F64.pack(now)
            self.map[base + CLAIMED:base + CLAIMED + CLAIM.size] = CLAIM.pack(seq, request_id)
            return True
        finally:
            lock.release()

    def done(self, slot: int, slow_after: float, now: float) -> None:
        """The request is answered: idle since ``now``; slow is past ``slow_after`` s."""
        base = slot * SLOT_SIZE        # in place, as _put does it
        self.map[base + SINCE:base + SINCE + TIMES.size] = TIMES.pack(now, slow_after, now)
        self.map[base + RUNNING:base + RUNNING + U64.size] = NOT_RUNNING

    def beat(self, slot: int, now: float) -> None:
        """The worker's loop is alive (it writes this while idle, too)."""
        self._put(slot, BEAT, F64.pack(now))

    def _put(self, slot: int, field: int, data: bytes) -> None:
        """Copy ``data`` in. Never ``struct.pack_into`` here: it zero-fills the target first,
        and another process reading at that moment would see zeros."""
        offset = slot * SLOT_SIZE + field
        self.map[offset:offset + len(data)] = data


# -- where a worker is: its Python stack, on request ------------------------------------------

def stack_path(directory: str, worker_id: int) -> str:
    """The named pipe a local worker writes its stack to, in the producer's ipc directory."""
    return os.path.join(directory, "stack%d" % worker_id)


def offer_stack(path: str) -> None:
    """In a worker, once at start: on ``DUMP_SIGNAL``, write every thread's stack to a new
    named pipe at ``path``. The worker holds the pipe open for reading and writing, and
    non-blocking, so a dump nobody reads never blocks it and never raises SIGPIPE: past the
    pipe's capacity (64 KiB) a dump is cut short."""
    try:
        os.unlink(path)             # a predecessor's, killed before the producer removed it
    except FileNotFoundError:
        pass
    os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    faulthandler.register(DUMP_SIGNAL, file=fd, all_threads=True)


def read_stack(path: str) -> bytes:
    """What a worker's stack pipe holds now, without waiting (the producer's side); empty
    when it holds nothing or there is no such pipe."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return b""
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break               # no writer: the worker is gone
            chunks.append(chunk)
    except OSError:
        pass                        # all of it read (EAGAIN)
    finally:
        os.close(fd)
    return b"".join(chunks)
