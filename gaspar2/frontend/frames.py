"""Reading one client frame across as many wake-ups as it takes, into a buffer that follows
the bytes received (never the length a client announces), or, for a body large enough, into
a region of the arena it will go to a worker in (see arena.py)."""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import Any

from ..protocol.arena import Arena, Region
from ..protocol.wire import HEADER, FrameError

# The first read of every frame lands here, so a small frame takes one recv and one copy.
# Safe to share: each read is copied out before the next one.
FIRST_READ = 64 * 1024          # a frame's first read: its header and what came with it
_SCRATCH = bytearray(FIRST_READ)
DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)    # every read and write on a client socket
READ_SLICE = 1 << 20            # payload bytes read per wake-up, at most, after the first read
FIRST_CAPACITY = 4096           # a buffer's least size, and least growth (up to the length)
GROWTH_MAX = 16 << 20           # a buffer grows by at most this much at once
UNLIMITED = 1 << 62
_INT = struct.Struct("i")
_ZEROS = bytes(GROWTH_MAX)      # what a buffer grows by; never written, so it costs no memory


def available(sock: Any) -> int:
    """Bytes the kernel holds for ``sock``, received and not read yet (0 if unknown)."""
    try:
        return int(_INT.unpack(fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0])
    except (OSError, AttributeError, ValueError):
        return 0


class FrameReader:
    """Reads one frame from a socket across as many wake-ups as it takes, never blocking.

    The payload's buffer grows as its bytes arrive: to hold what the kernel has received for
    the socket (to the whole frame once half of it is in), and never ahead of that by more
    than an eighth of what it holds (or ``FIRST_CAPACITY``). An announced length costs
    nothing until its bytes come, and a frame that is mostly there takes one allocation.
    ``capacity`` is what the reader holds now: at most twice the bytes received, or
    ``FIRST_CAPACITY``.
    """

    __slots__ = ("max_size", "header", "length", "got", "buffer", "payload", "arena",
                 "region", "ceiling")

    def __init__(self, max_size: int, arena: Arena | None = None):
        self.max_size = max_size
        self.header = b""
        self.length = -1            # unknown until the header is whole
        self.got = 0
        self.buffer: bytearray | memoryview | None = None
        self.payload: bytes | bytearray | Region | None = None
        self.arena = arena          # large bodies go there, once half of them is in
        self.region: Region | None = None
        self.ceiling = 0            # what the buffer may grow to in this read (``room``)

    @property
    def capacity(self) -> int:
        if self.region is not None:
            return self.region.capacity
        if self.buffer is not None:
            return len(self.buffer)
        return len(self.payload) if self.payload is not None else len(self.header)

    def close(self) -> None:
        """The frame will not be whole: its region, if it has one, is free again."""
        if self.region is not None and self.payload is None:
            self.region.drop_client()

    def _to_arena(self, received: Any) -> bool:
        """Read the body into a region of the arena from now on, the bytes ``received`` so
        far copied there; False when the arena has no room (it stays in memory and goes
        through ZeroMQ)."""
        assert self.arena is not None
        region = self.arena.region(self.length)
        if region is None:
            return False
        view = region.view()
        view[:self.got] = received
        self.region, self.buffer = region, view
        return True

    def read_from(self, sock: socket.socket, allowance: int = READ_SLICE,
                  room: int = UNLIMITED) -> bool:
        """Read what is there, at most ``allowance`` payload bytes past the first read,
        the buffer growing by ``room`` bytes at most; True once the frame is complete.

        Raises FrameError on an oversized length, bytes past the frame or an early EOF, and
        lets BlockingIOError (nothing to read yet) and other OSErrors through.
        """
        # ``capacity`` while the frame is in memory, without a property's call per read
        self.ceiling = room + (len(self.buffer) if self.buffer is not None else len(self.header))
        if self.length < 0 and not self._read_header(sock, allowance):
            return False
        if self.buffer is not None:
            self._read_body(sock, allowance, self.length)
            if self.got == self.length:
                if self.region is not None:
                    self.payload = self.region
                else:
                    assert isinstance(self.buffer, bytearray)   # a region's view otherwise
                    self.payload = self.buffer
                self.buffer = None
        return self.payload is not None

    def _read_body(self, sock: socket.socket, allowance: int, target: int) -> None:
        """Read until ``target`` payload bytes are in, or ``allowance`` more, growing the
        buffer as the bytes come."""
        assert self.buffer is not None
        while self.got < target and allowance > 0:
            if self.got == len(self.buffer):
                self._grow(sock)
            buffer = self.buffer
            end = min(len(buffer), self.got + allowance, target)
            with memoryview(buffer) as view:
                n = sock.recv_into(view[self.got:end], 0, DONTWAIT)
            if not n:
                raise FrameError(FrameError.CLOSED, self.got, self.length)
            self.got += n
            allowance -= n

    def _grow(self, sock: Any) -> None:
        assert isinstance(self.buffer, bytearray)
        size = len(self.buffer)
        wanted = self._wanted(self.got + max(available(sock), size >> 3, FIRST_CAPACITY))
        wanted = max(min(wanted, self.ceiling), self.got + 1)
        if wanted == self.length and self._large():
            with memoryview(self.buffer) as received:
                if self._to_arena(received[:self.got]):
                    return
        with memoryview(_ZEROS) as zeros:
            self.buffer.extend(zeros[:min(wanted - size, GROWTH_MAX)])

    def _large(self) -> bool:
        return self.arena is not None and self.length >= self.arena.threshold

    def _wanted(self, size: int) -> int:
        """A buffer's size for ``size`` bytes in hand: the whole frame once that is half."""
        return self.length if 2 * size >= self.length else size

    def arrived_whole(self, sock: Any) -> bool:
        """Past the budget, before the first read: whether the frame has come whole and fits
        one read, is too long, or the socket has nothing but its end to show. Only then is
        it read; otherwise its bytes stay in the kernel, and TCP pushes back on the client."""
        if self.header:
            return False
        waiting = available(sock)
        if waiting == 0:
            return True         # nothing, or the end: the read will tell
        if waiting < HEADER.size:
            return False
        (length,) = HEADER.unpack(sock.recv(HEADER.size, socket.MSG_PEEK | DONTWAIT))
        return bool(HEADER.size + length <= min(waiting, len(_SCRATCH))
                    or length > self.max_size)          # to be refused at once

    def _read_header(self, sock: socket.socket, allowance: int) -> bool:
        """The first read: the header and what came with it (the whole frame, often). Past
        the budget, the buffer holds what came and what ``room`` allows."""
        n = sock.recv_into(_SCRATCH, 0, DONTWAIT)
        if not n:
            raise FrameError(FrameError.CLOSED, len(self.header), HEADER.size, in_header=True)
        whole = len(self.header) + n     # a header split across reads is rare: copy it then
        data = memoryview(self.header + _SCRATCH[:n] if self.header else _SCRATCH)[:whole]
        if len(data) < HEADER.size:
            self.header = bytes(data)
            return False
        (length,) = HEADER.unpack_from(data)
        if length > self.max_size:
            raise FrameError(FrameError.TOO_LONG, length, self.max_size)
        body = len(data) - HEADER.size
        if body > length:
            raise FrameError(FrameError.TRAILING, body - length)
        self.length, self.got, self.header = length, body, b""
        if body == length:
            self.payload = bytes(data[HEADER.size:])
        else:
            held = self._wanted(body)       # asking the kernel how much came costs a call
            if held < length:
                held = self._wanted(max(body + available(sock), FIRST_CAPACITY))
            held = max(min(held, self.ceiling), body + (allowance > 0))
            if not (held == length and self._large() and self._to_arena(data[HEADER.size:])):
                self.buffer = bytearray(min(held, body + GROWTH_MAX))
                self.buffer[:body] = data[HEADER.size:]
        return True


