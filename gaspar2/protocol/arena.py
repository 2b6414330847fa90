"""Large request bodies, and their replies, in memory the producer shares with its workers.

One anonymous shared mapping (the arena) is made before the fork server is forked, so the
fork server and every worker have it at the same place, and nothing of it can outlive them:
no file, no name, nothing to clean up after a crash. The producer is its only allocator.

A body of at least ``shm_threshold`` bytes is read from the client straight into a region
of the arena, once half of it has arrived (so an announced length costs nothing until its
bytes come). ZeroMQ carries the region's place instead of the bytes. The worker that claims
the request reads the body there (a ``memoryview`` of it, with no copy, for a handler that
takes one), and writes its reply over it when the reply fits; the producer sends the reply
to the client from there. Its pages are reused from request to request: a fresh mapping or
file per request would cost a page fault and a page cleared for every 4 KiB.

Pages kept for reuse are memory all the same. The arena counts the bytes it may hold
resident (``resident``: every grain a region has covered since it was last trimmed), so
that the producer can count its free-but-resident pages against the buffer limit and hand
them back (``trim``) when the limit needs them.

A region is free again once neither its client's connection nor a worker holds it. When the
arena has no room, a body is read into the producer's memory and travels through ZeroMQ, as
small ones do.
"""

from __future__ import annotations

import bisect
import mmap
import struct

GRAIN = 64 * 1024               # regions start and end on this boundary
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)     # Python < 3.13 lacks the name
REF = struct.Struct("!QQQ")     # a region's offset, its capacity, the body's size
ALL_TOUCHED = b"\x01" * (1 << 16)  # the grains of any region (4 GiB at most)


class Arena:
    def __init__(self, size: int, threshold: int):
        self.size = size - size % GRAIN
        self.threshold = threshold
        # Shared, anonymous, and charged to memory only as pages are touched.
        self.map = mmap.mmap(-1, self.size, flags=mmap.MAP_SHARED | MAP_NORESERVE)
        self.view = memoryview(self.map)
        self.free: list[tuple[int, int]] = [(0, self.size)]   # (offset, length), by offset
        self.used = 0
        self.touched = bytearray(self.size // GRAIN)    # 1: the grain may be resident
        self.resident = 0           # bytes of the touched grains

    @property
    def idle_resident(self) -> int:
        """Bytes of free regions that may still be resident: memory nobody holds."""
        return self.resident - self.used

    def region(self, length: int) -> Region | None:
        """A region for a body of ``length`` bytes, or None when there is no room."""
        capacity = -(-max(length, 1) // GRAIN) * GRAIN
        for i, (offset, free) in enumerate(self.free):
            if free >= capacity:
                if free == capacity:
                    del self.free[i]
                else:
                    self.free[i] = (offset + capacity, free - capacity)
                self.used += capacity
                first, end = offset // GRAIN, (offset + capacity) // GRAIN
                self.resident += (end - first - self.touched.count(1, first, end)) * GRAIN
                self.touched[first:end] = ALL_TOUCHED[:end - first]
                return Region(self, offset, capacity, length)
        return None

    def release(self, offset: int, capacity: int) -> None:
        """Give a region back, merging it with free neighbours."""
        self.used -= capacity
        i = bisect.bisect(self.free, (offset, 0))
        if i < len(self.free) and offset + capacity == self.free[i][0]:
            capacity += self.free.pop(i)[1]
        if i > 0 and self.free[i - 1][0] + self.free[i - 1][1] == offset:
            offset, capacity = self.free[i - 1][0], self.free[i - 1][1] + capacity
            i -= 1
            del self.free[i]
        self.free.insert(i, (offset, capacity))

    def trim(self) -> None:
        """Hand the pages of free regions back to the system (they fault in when reused)."""
        touched = self.touched
        for offset, length in self.free:
            first, end = offset // GRAIN, (offset + length) // GRAIN
            count = touched.count(1, first, end)
            if count:
                self.map.madvise(mmap.MADV_REMOVE, offset, length)
                touched[first:end] = bytes(end - first)
                self.resident -= count * GRAIN


class Region:
    """A body's place in the arena, held by its client's connection and, while one holds
    the request, by a worker: freed when both have let go."""

    __slots__ = ("arena", "offset", "capacity", "size", "client", "worker")

    def __init__(self, arena: Arena, offset: int, capacity: int, size: int):
        self.arena, self.offset, self.capacity, self.size = arena, offset, capacity, size
        self.client = True
        self.worker = False

    def __len__(self) -> int:
        return self.size

    def view(self, size: int | None = None) -> memoryview:
        return self.arena.view[self.offset:self.offset + (self.size if size is None else size)]

    def ref(self) -> bytes:
        return REF.pack(self.offset, self.capacity, self.size)

    def copy(self) -> bytes:
        return bytes(self.view())

    def drop_client(self) -> None:
        self.client = False
        self._free_if_unheld()

    def drop_worker(self) -> None:
        self.worker = False
        self._free_if_unheld()

    def _free_if_unheld(self) -> None:
        if not self.client and not self.worker and self.capacity:
            self.arena.release(self.offset, self.capacity)
            self.capacity = 0           # freed: never twice


def place(arena_view: memoryview, ref: bytes | memoryview) -> tuple[int, int, int]:
    """Worker side: (offset, size, capacity) of the body a ref names, checked to lie in the
    arena; the reply may be written from the same offset, up to the capacity."""
    if len(ref) != REF.size:
        raise ValueError("a shared body's place of %d bytes" % len(ref))
    offset, capacity, size = REF.unpack(ref)
    if size > capacity or offset + capacity > len(arena_view):
        raise ValueError("a shared body outside the arena")
    return offset, size, capacity
