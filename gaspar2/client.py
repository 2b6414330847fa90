"""Clients for gaspar2's protocol.

``request`` uses plain blocking sockets, so under gevent's monkey patching it is cooperative;
called from a thread that runs a gevent hub without monkey patching (a program that embeds
a ``Producer``, say), it uses gevent's sockets, so it never stops the loop that serves it;
``arequest`` is the same call for asyncio; ``Executor`` runs requests on a thread pool for
code built on ``concurrent.futures``; ``pack`` frames a message for any other framework.

A reply, even an empty one, always means success. A failure raises a ``RequestFailed``,
as one of three subclasses where the cause is known, because each calls for a different
response: ``RequestReset`` (the request failed on the server: retrying runs it again),
``RequestRefused`` (nothing was sent: another server may take it), ``RequestTimeout``
(unknown: the server may still be running it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import BinaryIO, Protocol, TypeAlias

from .protocol.wire import HEADER, MAX_LENGTH, pack, unix_path

__all__ = [
    "Executor",
    "Message",
    "RequestFailed",
    "RequestRefused",
    "RequestReset",
    "RequestTimeout",
    "Writable",
    "address_of",
    "arequest",
    "pack",
    "parse_url",
    "request",
    "request_file",
    "unix_path",
]

Message: TypeAlias = bytes | bytearray | memoryview | str
"""What a request carries: bytes-like, or ``str`` sent as UTF-8."""


class Writable(Protocol):
    """Where ``request_file`` writes a reply as it arrives: a binary file, for one."""

    def write(self, data: bytes, /) -> object: ...


class RequestFailed(ConnectionError):
    """The request did not succeed: reset by the server, refused, timed out, or any other
    socket error (an unknown host, an unreachable network)."""


class RequestReset(RequestFailed, ConnectionResetError):
    """The server reset the connection: the request failed there (its log says why).

    The handler may have run, so retry only what is safe to run twice."""


class RequestRefused(RequestFailed, ConnectionRefusedError):
    """Nothing listens at that address: the request was not sent, so another server (or a
    later try) can take it."""


class RequestTimeout(RequestFailed, TimeoutError):
    """No complete reply within the timeout: the server may or may not have run it."""


def parse_url(url: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6 address]:port"`` -> (host, port)."""
    host, sep, port = url.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("expected HOST:PORT, unix:PATH or unix:@NAME, got %r" % (url,))
    return host.strip("[]") or "127.0.0.1", int(port)


def address_of(url: str) -> tuple[str, int] | str:
    """(host, port) for a TCP address, the socket's name for a unix one."""
    path = unix_path(url)
    return path if path is not None else parse_url(url)


def request(url: str, message: Message, timeout: float | None = None) -> bytes:
    """Send ``message`` (bytes or str) to the gaspar2 server at ``url`` (``HOST:PORT``,
    ``unix:PATH`` or ``unix:@NAME``); return the reply."""
    return b"".join(_reply_pieces(url, [pack(message)], timeout))


def request_file(url: str, file: BinaryIO, timeout: float | None = None, *,
                 reply_to: Writable | None = None) -> bytes:
    """``request`` with the rest of ``file`` (a regular file open for reading) as the
    message, sent a piece at a time: memory stays small whatever the file's size. With
    ``reply_to``, the reply is written there as it arrives (and b"" returned); a failure
    may then come after part of it was written."""
    fd = file.fileno()
    size = os.fstat(fd).st_size - file.tell()
    if size > MAX_LENGTH:
        raise ValueError("message of %d bytes does not fit a 4-byte length" % size)

    def pieces() -> Iterator[bytes]:
        yield HEADER.pack(size)
        left = size
        while left:
            piece = file.read(min(left, 1 << 20))
            if not piece:
                raise ValueError("%s shrank while it was being sent" % getattr(file, "name", fd))
            left -= len(piece)
            yield piece
    replies = _reply_pieces(url, pieces(), timeout)
    if reply_to is None:
        return b"".join(replies)
    for reply in replies:
        reply_to.write(reply)
    return b""


def _reply_pieces(url: str, pieces: Iterable[bytes], timeout: float | None) -> Iterator[bytes]:
    """Connect, send ``pieces``, then yield the reply as it arrives until EOF, all within
    ``timeout``; a socket's error becomes a RequestFailed, the caller's own errors stay
    its own."""
    address = address_of(url)
    deadline = None if timeout is None else time.monotonic() + timeout
    sockets = _sockets()

    def remaining() -> float | None:
        return None if deadline is None else max(deadline - time.monotonic(), 0.001)
    try:
        with _connect(sockets, address, timeout) as sock:
            for piece in pieces:
                sock.settimeout(remaining())
                sock.sendall(piece)
            while True:
                sock.settimeout(remaining())
                chunk = sock.recv(262144)
                if not chunk:
                    return
                yield chunk
    except OSError as exc:
        raise _failure(url, exc, timeout) from _cause(exc)


def _connect(sockets: ModuleType, address: tuple[str, int] | str,
             timeout: float | None) -> socket.socket:
    if isinstance(address, tuple):
        return sockets.create_connection(address, timeout=timeout)  # type: ignore[no-any-return]
    sock: socket.socket = sockets.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _sockets() -> ModuleType:
    """The socket module that will not stop this thread's gevent hub, if it runs one."""
    if "gevent" not in sys.modules:
        return socket
    import gevent
    import gevent.socket
    from gevent._hub_local import get_hub_if_exists
    hub = get_hub_if_exists()
    if hub is None or socket.socket is gevent.socket.socket:     # none, or patched already
        return socket
    if gevent.getcurrent() is hub:
        raise RuntimeError("gaspar2.client.request cannot wait inside the gevent hub (in a "
                           "watcher's callback): call it from a greenlet")
    return gevent.socket    # type: ignore[no-any-return]  # gevent has no type information


async def arequest(url: str, message: Message, timeout: float | None = None) -> bytes:
    """``request`` for asyncio."""
    address = address_of(url)

    async def exchange() -> bytes:
        if isinstance(address, str):
            reader, writer = await asyncio.open_unix_connection(address)
        else:
            reader, writer = await asyncio.open_connection(*address)
        try:
            writer.write(pack(message))
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(exchange(), timeout)
    except OSError as exc:  # asyncio.TimeoutError is TimeoutError, an OSError
        raise _failure(url, exc, timeout) from _cause(exc)


class Executor(concurrent.futures.Executor):
    """Requests to one server, run on a pool of threads: ``submit(message)`` returns a
    ``concurrent.futures.Future`` of the reply, whose exception is the ``RequestFailed``.

    For synchronous code that wants many requests in flight, or already works with futures
    (``as_completed``, ``wait``, callbacks). Each request under way holds a thread, so
    ``max_workers`` (``ThreadPoolExecutor``'s default when None) bounds the concurrency;
    asyncio code should use ``arequest`` instead, which needs no thread per request.
    ``timeout`` applies to each request, as in ``request``.
    """

    def __init__(self, url: str, max_workers: int | None = None, *,
                 timeout: float | None = None) -> None:
        address_of(url)  # a malformed url fails here rather than in every future
        self.url = url
        self.timeout = timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers, thread_name_prefix="gaspar2-client")

    # The base class submits callables; this executor's work is always a request, so its
    # submit and map take messages.
    def submit(self, message: Message) -> concurrent.futures.Future[bytes]:  # type: ignore[override]
        """Start a request; the future's result is the reply."""
        return self._pool.submit(request, self.url, message, self.timeout)

    def map(self, messages: Iterable[Message],  # type: ignore[override]
            timeout: float | None = None) -> Iterator[bytes]:
        """The replies to ``messages``, in order, the requests running concurrently.

        As in ``concurrent.futures``, ``timeout`` bounds the wait for all the replies, and
        the first failed request raises from the iterator."""
        send = functools.partial(request, self.url, timeout=self.timeout)
        return self._pool.map(send, messages, timeout=timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait, cancel_futures=cancel_futures)


def _failure(url: str, exc: OSError, timeout: float | None) -> RequestFailed:
    """The RequestFailed subclass and message for a socket error."""
    if isinstance(exc, TimeoutError):
        return RequestTimeout("%s: no reply within %s s" % (url, timeout))
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        # A broken pipe is the same reset, met by a write rather than a read.
        return RequestReset("%s: connection reset: the request failed on the server "
                            "(see its log)" % url)
    if isinstance(exc, (ConnectionRefusedError, FileNotFoundError)):
        # A unix socket's file that is not there is refused too: nothing listens.
        return RequestRefused("%s: connection refused: is the server running?" % url)
    return RequestFailed("%s: %s" % (url, str(exc) or type(exc).__name__))


def _cause(exc: OSError) -> OSError | None:
    """The timeout says all there is; any other error keeps the socket's as its cause."""
    return None if isinstance(exc, TimeoutError) else exc
