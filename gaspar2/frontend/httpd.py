"""The metrics port's HTTP server: one request per connection, served from libev watchers in
the producer's own loop, so that no crowd of clients keeps a health checker out.

- It holds at most ``cap`` connections, the one being accepted included, which is the share
  of file descriptors the producer reserves for it: a crowd on this port can take neither
  the main port's descriptors nor this port's last slot. A connection accepted at the cap
  drops the oldest one (the longest unanswered), so a prober always gets in; what it sent
  with its handshake is read at once, and a complete request is answered before anything
  else is accepted. No connection is dropped to make room before it has had ``MIN_STAY``
  to send its request: while every one is younger, accepting waits (the kernel queues the
  newcomers, and a prober's request arrives meanwhile). A crowd that reconnects as fast as
  it is dropped is thus accepted at most ``cap / MIN_STAY`` times a second, which also
  bounds what its churn costs the loop.
- A request's header must be complete within ``header_timeout`` of its accept, a total that
  bytes trickling in do not restart (nginx's ``client_header_timeout``), and within
  ``MAX_HEADER`` bytes; a reply must be taken within ``write_timeout``. One timer checks
  both, a few times per deadline. Connections dropped are reset, which frees their
  descriptor at once: under a crowd that reconnects as fast as it is dropped, what bounds a
  prober's wait is how fast the kernel's queue is accepted, so accepting costs little.
- The application is a WSGI callable, called in the watcher's callback: it must neither
  block nor switch (the metrics and health apps only read counters).
- Every log line a client can cause is throttled, and the bytes it quotes escaped.
"""

from __future__ import annotations

import _socket
import errno
import io
import logging
import re
import socket
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from ..guard import Throttled, guarded
from ..logs import escaped

log = logging.getLogger("gaspar2.metrics")

READ, WRITE = 1, 2
DONTWAIT = socket.MSG_DONTWAIT
RESET = struct.pack("ii", 1, 0)     # SO_LINGER on, 0 s: close() resets and frees at once
IN_ORDER = struct.pack("ii", 0, 0)  # SO_LINGER off: close() ends with a FIN
MAX_HEADER = 8192                   # request line and headers, as nginx's default buffer
MAX_FIELDS = 64
ACCEPTS_PER_WAKEUP = 64
ACCEPT_PAUSE = 0.1
MIN_STAY = 0.02                     # seconds a new connection is safe from being dropped
BACKLOG = 4096                      # a crowd that keeps the queue full drops probes' SYNs
METHOD = re.compile(rb"[A-Z]{1,16}")
TARGET = re.compile(rb"/[\x21-\x7e]*")
FIELD = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
REASONS = {400: "Bad Request", 431: "Request Header Fields Too Large",
           500: "Internal Server Error"}

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Any]


class BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


def header_end(data: bytes | bytearray) -> int:
    """Where the header ends (past its blank line), or -1 while it has not."""
    crlf, lf = data.find(b"\r\n\r\n"), data.find(b"\n\n")
    ends = [i + n for i, n in ((crlf, 4), (lf, 2)) if i >= 0]
    return min(ends) if ends else -1


def parse(head: bytes) -> tuple[str, str, str, str, dict[str, str]]:
    """(method, path, query, version, fields) from a request's header, up to its blank line;
    BadRequest for anything that is not a plain HTTP/1.x request in origin form."""
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise BadRequest(400, "no request line")
    parts = lines[0].split(b" ")
    if (len(parts) != 3 or not METHOD.fullmatch(parts[0]) or not TARGET.fullmatch(parts[1])
            or parts[2] not in (b"HTTP/1.0", b"HTTP/1.1")):
        raise BadRequest(400, "not an HTTP/1.x request line")
    if len(lines) - 1 > MAX_FIELDS:
        raise BadRequest(431, "more than %d header fields" % MAX_FIELDS)
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not FIELD.fullmatch(name):
            raise BadRequest(400, "a malformed header field")
        key = "HTTP_" + name.decode("ascii").upper().replace("-", "_")
        text = value.strip(b" \t").decode("latin-1")
        fields[key] = fields[key] + "," + text if key in fields else text
    path, _, query = parts[1].partition(b"?")
    return (parts[0].decode("ascii"), unquote_to_bytes(path).decode("latin-1"),
            query.decode("ascii"), parts[2].decode("ascii"), fields)


def reply_bytes(status: str, headers: list[tuple[str, str]], body: bytes, head: bool) -> bytes:
    """The whole response: the connection closes after it, so it says its length."""
    lines = ["HTTP/1.1 " + status]
    lines += ["%s: %s" % (k, v) for k, v in headers
              if k.lower() not in ("content-length", "connection")]
    lines += ["Content-Length: %d" % len(body), "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + (b"" if head else body)


def error_reply(status: int) -> bytes:
    return reply_bytes("%d %s" % (status, REASONS[status]), [], b"", False)


class Client:
    __slots__ = ("sock", "peer", "since", "data", "reply", "watcher", "deadline")

    def __init__(self, sock: Any, peer: Any, since: float, deadline: float):
        self.sock = sock
        self.peer = peer            # the address accept gave, formatted only for a log line
        self.since = since
        self.data = bytearray()
        self.reply: memoryview | None = None
        self.watcher: Any = None
        self.deadline = deadline

    def __str__(self) -> str:
        peer = self.peer
        return "%s:%s" % peer[:2] if isinstance(peer, tuple) else str(peer)


class HttpServer:
    def __init__(self, loop: Any, host: str, port: int, app: WSGIApp, header_timeout: float,
                 write_timeout: float, cap: int):
        self.loop = loop
        self.app = app
        self.header_timeout = header_timeout
        self.write_timeout = write_timeout
        self.cap = max(cap, 2)
        self.clients: OrderedDict[Client, None] = OrderedDict()     # oldest first
        self.dropped = {"crowded": 0, "header_timeout": 0, "write_timeout": 0, "bad": 0}
        self.throttled = Throttled(log)
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                   flags=socket.AI_PASSIVE)[0]
        self.family = family
        self.sock: Any = _socket.socket(family, socket.SOCK_STREAM)     # typeshed lacks _accept
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)    # inherited
            self.sock.bind(addr)
            self.sock.listen(BACKLOG)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.address = self.sock.getsockname()
        self.watcher = loop.io(self.sock.fileno(), READ)
        self.pause: Any = None
        every = min(max(min(header_timeout, write_timeout) / 4, 0.02), 1.0)
        self.sweep = loop.timer(every, every)

    def start(self) -> None:
        self.watcher.start(self._on_accept)
        self.sweep.start(self._on_sweep)

    def stop(self) -> None:
        self.watcher.close()
        self.sweep.close()
        if self.pause is not None:
            self.pause.close()
        for client in list(self.clients):
            self._close(client)
        self.sock.close()

    # -- accept --------------------------------------------------------------------------

    @guarded
    def _on_accept(self) -> None:
        now = self.loop.now()
        for _ in range(ACCEPTS_PER_WAKEUP):
            if len(self.clients) >= self.cap - 1:
                wait = next(iter(self.clients)).since + MIN_STAY - now
                if wait > 0:
                    self._pause(wait)
                    return
            try:
                fd, peer = self.sock._accept()
            except BlockingIOError:
                return
            except OSError as exc:
                self._accept_failed(exc)
                return
            sock = _socket.socket(self.family, socket.SOCK_STREAM, 0, fd)
            client = Client(sock, peer, now, now + self.header_timeout)
            self.clients[client] = None
            self._read(client)      # a prober's request comes with its handshake
            if len(self.clients) >= self.cap:
                self._crowded()

    def _accept_failed(self, exc: OSError) -> None:
        if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
            return
        self.throttled.log(logging.ERROR, "accept", "metrics port: accept failed: %s; "
                           "pausing it for %.1f s", exc, ACCEPT_PAUSE)
        self._pause(ACCEPT_PAUSE)

    def _pause(self, seconds: float) -> None:
        self.watcher.stop()
        if self.pause is not None:
            self.pause.close()
        self.pause = self.loop.timer(seconds)
        self.pause.start(self._resume)

    @guarded
    def _resume(self) -> None:
        self.watcher.start(self._on_accept)

    def _crowded(self) -> None:
        """At the cap: the oldest connection makes room for the newest."""
        oldest = next(iter(self.clients))      # O(1): an OrderedDict's links, not a scan
        self.dropped["crowded"] += 1
        self.throttled.log(logging.WARNING, "crowded", "metrics port: %d connections open, "
                           "its most: dropped the oldest, from %s (%d dropped so far)",
                           len(self.clients), oldest, self.dropped["crowded"])
        self._close(oldest)

    # -- read the request, answer it -----------------------------------------------------

    @guarded
    def _on_readable(self, client: Client) -> None:
        self._read(client)

    def _read(self, client: Client) -> None:
        data = client.data
        while True:
            try:
                chunk = client.sock.recv(MAX_HEADER + 1 - len(data), DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                self._close(client)
                return
            if not chunk:
                self._close(client)     # gone before its request was whole
                return
            data += chunk
            end = header_end(data)
            if end >= 0:
                self._answer(client, bytes(data[:end]))
                return
            if len(data) > MAX_HEADER:
                self._refuse(client, BadRequest(431, "header over %d bytes" % MAX_HEADER))
                return
        if client.watcher is None:
            client.watcher = self.loop.io(client.sock.fileno(), READ)
            client.watcher.start(self._on_readable, client)

    def _answer(self, client: Client, head: bytes) -> None:
        try:
            method, path, query, version, fields = parse(head)
        except BadRequest as exc:
            self._refuse(client, exc)
            return
        answer: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            answer["status"], answer["headers"] = status, headers
            return lambda data: None

        environ = {**fields, "REQUEST_METHOD": method, "PATH_INFO": path,
                   "QUERY_STRING": query, "SERVER_PROTOCOL": version, "SCRIPT_NAME": "",
                   "SERVER_NAME": str(self.address[0]), "SERVER_PORT": str(self.address[1]),
                   "REMOTE_ADDR": str(client).rpartition(":")[0], "wsgi.version": (1, 0),
                   "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
                   "wsgi.errors": sys.stderr, "wsgi.multithread": False,
                   "wsgi.multiprocess": False, "wsgi.run_once": False}
        try:
            body = b"".join(self.app(environ, start_response))
            reply = reply_bytes(answer["status"], answer["headers"], body, method == "HEAD")
        except Exception:
            self.throttled.log(logging.ERROR, "app", "metrics port: error answering %s %s",
                               method, escaped(path.encode("latin-1")), exc_info=True)
            reply = error_reply(500)
        self._send(client, reply)

    def _refuse(self, client: Client, exc: BadRequest) -> None:
        self.dropped["bad"] += 1
        self.throttled.log(logging.WARNING, "bad", "metrics port: %s from %s: %s (%d so "
                           "far)", exc, client, escaped(client.data),
                           self.dropped["bad"])
        self._send(client, error_reply(exc.status))

    def _send(self, client: Client, reply: bytes) -> None:
        client.reply = memoryview(reply)
        client.deadline = self.loop.now() + self.write_timeout
        if client.watcher is not None:
            client.watcher.close()
            client.watcher = None
        self._write(client)

    @guarded
    def _write(self, client: Client) -> None:
        reply = client.reply
        assert reply is not None
        try:
            while reply:
                reply = reply[client.sock.send(reply, DONTWAIT):]
        except BlockingIOError:
            client.reply = reply
            if client.watcher is None:
                client.watcher = self.loop.io(client.sock.fileno(), WRITE)
                client.watcher.start(self._write, client)
            return
        except OSError:
            self._close(client)
            return
        self._finish(client)

    def _finish(self, client: Client) -> None:
        """Close in order; what the client sent past its header is read first, so the close
        does not turn into a reset that could destroy the reply in flight."""
        try:
            client.sock.recv(65536, DONTWAIT)
        except OSError:
            pass
        try:
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, IN_ORDER)
        except OSError:
            pass
        self._close(client)

    @guarded
    def _on_sweep(self) -> None:
        now = self.loop.now()
        for client in [c for c in self.clients if c.deadline <= now]:
            if client.reply is None:
                kind, what = "header_timeout", "no whole request header within %.1f s (%s)" % (
                    self.header_timeout, escaped(client.data))
            else:
                kind, what = "write_timeout", "reply not taken within %.1f s" % (
                    self.write_timeout)
            self.dropped[kind] += 1
            self.throttled.log(logging.INFO, kind, "metrics port: dropped %s: %s (%d so far)",
                               client, what, self.dropped[kind])
            self._close(client)

    def _close(self, client: Client) -> None:
        """Close: with a reset (the accepted socket's setting) unless ``_finish`` said FIN."""
        if client not in self.clients:
            return
        del self.clients[client]
        if client.watcher is not None:
            client.watcher.close()
            client.watcher = None
        client.sock.close()
