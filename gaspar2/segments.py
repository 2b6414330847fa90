"""Large payloads and replies through shared memory, between the producer and local workers.

A request body or a reply of at least ``shm_threshold`` bytes is a file in a directory of
its own on a tmpfs (``shm_dir``, /dev/shm by default), made and locked like the ipc
directory (see procutil.make_ipc_dir), so the segments of a killed producer are removed
when the next one starts. ZeroMQ still carries every request and reply message; for these
it carries the segment's number and size instead of the bytes.

* Request ``r<N>``: the producer reads the body from the client straight into the mapped
  file, and space is reserved (``fallocate``) only as the bytes arrive, so an announced
  length costs nothing; the worker that claims it reads it (or maps it, for a handler that
  takes a memoryview) and unlinks it.
* Reply ``w<WORKER>-<REQUEST>``: the worker writes it; the producer, once it has checked
  that this worker holds that request, maps it, unlinks it, and sends it from the map.

Names are made from numbers on both sides, never read from a message, so no peer can name
a path. When the tmpfs is full, the request is read into memory and the reply goes through
ZeroMQ, as small ones do.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import re
import shutil
import struct
from typing import Any

log = logging.getLogger("gaspar2")

RESERVE_STEP = 1 << 20          # space is reserved this far ahead of the bytes received
REF = struct.Struct("!QQ")      # a segment's number and size, in place of its bytes
FULL = (errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EFBIG)


class Full(Exception):
    """The shared-memory filesystem has no room: carry the bytes another way."""


class Shared:
    """A request body that lives in a segment: what the front end holds as its payload."""

    __slots__ = ("number", "size")

    def __init__(self, number: int, size: int):
        self.number, self.size = number, size

    def __len__(self) -> int:
        return self.size

    def ref(self) -> bytes:
        return REF.pack(self.number, self.size)


def request_name(number: int) -> str:
    return "r%d" % number


def reply_name(worker_id: int, request_id: int) -> str:
    return "w%d-%d" % (worker_id, request_id)


class Segments:
    """The producer's segment directory: request bodies in, replies out, leftovers away."""

    def __init__(self, path: str, threshold: int):
        self.path = path
        self.threshold = threshold
        self.count = 0

    def writer(self, length: int) -> Writer:
        """A segment to receive a request body of ``length`` bytes as they arrive."""
        self.count += 1
        return Writer(self, self.count, length)

    def open_reply(self, worker_id: int, request_id: int, size: int) -> mmap.mmap:
        """The reply a worker left for a request it holds, mapped and already unlinked;
        ValueError if it is not there or not the size the worker said."""
        path = os.path.join(self.path, reply_name(worker_id, request_id))
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise ValueError("no reply segment %s: %s" % (path, exc.strerror)) from None
        try:
            os.unlink(path)
            if os.fstat(fd).st_size != size or size == 0:
                raise ValueError("a reply segment of %d bytes, said to be %d"
                                 % (os.fstat(fd).st_size, size))
            return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)

    def discard(self, name: str) -> None:
        try:
            os.unlink(os.path.join(self.path, name))
        except FileNotFoundError:
            pass

    def discard_worker(self, worker_id: int) -> None:
        """Replies a worker that died had begun to write."""
        prefix = "w%d-" % worker_id
        for name in os.listdir(self.path):
            if name.startswith(prefix):
                self.discard(name)

    def read(self, shared: Shared) -> bytes:
        """A request body as bytes (for a remote worker, which has no access to it)."""
        with open(os.path.join(self.path, request_name(shared.number)), "rb") as f:
            return f.read()

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class Writer:
    """A request body arriving into a segment: a mapped file, with space reserved only as
    far ahead of the bytes received as one step."""

    def __init__(self, segments: Segments, number: int, length: int):
        self.number, self.length = number, length
        self.name = request_name(number)
        self.path = os.path.join(segments.path, self.name)
        self.reserved = 0
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(self.fd, length)             # sparse: no memory yet
            self.map = mmap.mmap(self.fd, length)
        except OSError:
            self.abort()
            raise

    def view(self, start: int, end: int) -> memoryview:
        """Where bytes ``start`` to ``end`` go; Full if the filesystem has no room for them."""
        if end > self.reserved:
            step = min(max(end, self.reserved + RESERVE_STEP), self.length) - self.reserved
            try:
                os.posix_fallocate(self.fd, self.reserved, step)
            except OSError as exc:
                if exc.errno in FULL:
                    raise Full(exc.strerror) from None
                raise
            self.reserved += step
        return memoryview(self.map)[start:end]

    def copy(self, size: int) -> bytearray:
        """The first ``size`` bytes, to go on in memory."""
        return bytearray(self.map[:size])

    def finish(self) -> Shared:
        """All bytes are in: the segment stays for a worker; this side lets go of it."""
        self.map.close()
        os.close(self.fd)
        return Shared(self.number, self.length)

    def abort(self) -> None:
        """The body will not be whole (client gone, no room): remove the segment."""
        if getattr(self, "map", None) is not None:
            self.map.close()
        os.close(self.fd)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


# -- the worker's side -----------------------------------------------------------------------

NAME = re.compile(r"r\d+\Z")


def take_request(directory: str, ref: bytes, as_view: bool) -> bytes | memoryview:
    """The body of a shared request, as bytes or a memoryview of its mapping; the segment is
    unlinked once held (a mapping outlives its name)."""
    number, size = REF.unpack(ref)
    path = os.path.join(directory, request_name(number))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.unlink(path)
        if os.fstat(fd).st_size != size:
            raise ValueError("a request segment of %d bytes, said to be %d"
                             % (os.fstat(fd).st_size, size))
        if as_view:
            return memoryview(mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ))
        return os.pread(fd, size, 0) if size else b""
    finally:
        os.close(fd)


def put_reply(directory: str, worker_id: int, request_id: int, body: Any) -> bool:
    """Leave a reply in a segment for the producer; False if there is no room (send it
    through ZeroMQ instead)."""
    path = os.path.join(directory, reply_name(worker_id, request_id))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with memoryview(body) as view:
            view = view.cast("B")
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
        return True
    except OSError as exc:
        if exc.errno not in FULL:
            raise
        os.unlink(path)
        return False
    finally:
        os.close(fd)
