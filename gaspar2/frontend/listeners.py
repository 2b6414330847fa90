"""The addresses the producer listens on: ``HOST:PORT``, ``[V6]:PORT``, ``unix:PATH`` and
``fd://N``, or the sockets systemd passed (socket activation).

A unix socket's file is created with ``unix_socket_mode``; a stale one (a socket file nobody
listens on) is removed first, and the file is removed when the producer stops. An abstract
socket (``unix:@NAME``) has no file and so no permissions: the kernel lets any local user
connect. The same mode is applied to it by hand instead: each peer's credentials
(``SO_PEERCRED``, and its groups with ``SO_PEERGROUPS``) are checked against the mode's
owner, group and other bits, as the kernel checks a socket file's write bit, and a peer the
mode does not admit is closed unserved (``PeerRule``). A unix
connection cannot be reset the way a TCP one is, but Linux tells its peer ECONNRESET when it
is closed with bytes left unread: so the last byte of every request frame read from a unix
socket is only peeked at (``HeldBackReader``), taken after a reply is written in full, and
left unread on a failure. Clients see the same contract on both: a reset means failure.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from typing import Any

from ..guard import Throttled
from ..protocol import wire
from ..settings import host_port
from . import frames
from .frames import DONTWAIT

log = logging.getLogger("gaspar2")

RESET_ON_CLOSE = struct.pack("ii", 1, 0)     # SO_LINGER on, 0 s: close() sends a RST
FIN_ON_CLOSE = struct.pack("ii", 0, 0)       # SO_LINGER off: close() ends in order
PEEK = DONTWAIT | socket.MSG_PEEK
# A listening socket's accept queue, in struct tcp_info: tcpi_unacked, after 8 one-byte fields
# and four 32-bit ones (what ``ss -l`` shows as Recv-Q).
QUEUED, QUEUED_END = struct.Struct("I"), 28
CREDENTIALS = struct.Struct("3i")                       # pid, uid, gid
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)    # Linux 4.13
MAX_GROUPS = 1024


def admits(mode: int, uid: int, gid: int, peer_uid: int, peer_gids: tuple[int, ...] | list[int],
           ) -> bool:
    """Whether a peer may connect to a socket of ``mode`` owned by ``uid``:``gid``, by the
    rule the kernel applies to a socket file's write bits: the owner's bit for the owner, the
    group's for a member of the group (primary or supplementary), the others' for the rest;
    root always."""
    if peer_uid == 0:
        return True
    if peer_uid == uid:
        return bool(mode & 0o200)
    if gid in peer_gids:
        return bool(mode & 0o020)
    return bool(mode & 0o002)


class PeerRule:
    """``unix_socket_mode`` applied to an abstract socket's peers (see the module's
    docstring); the owner and group are this process's effective ones."""

    def __init__(self, mode: int, label: str):
        self.mode = mode
        self.label = label
        self.uid, self.gid = os.geteuid(), os.getegid()
        self.refused = 0
        self.throttled = Throttled(log)

    def __call__(self, sock: Any) -> bool:
        """True if the peer may stay; else the connection is closed here."""
        try:
            _, uid, gid = CREDENTIALS.unpack(sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, CREDENTIALS.size))
            gids = [gid]
            if uid not in (0, self.uid) and gid != self.gid and self.mode & 0o020:
                gids += peer_groups(sock)
        except OSError:
            uid, gids = -1, []
        if admits(self.mode, self.uid, self.gid, uid, gids):
            return True
        self.refused += 1
        self.throttled.log(logging.WARNING, "refused", "%s: refused a peer with uid %d: "
                           "--unix-socket-mode %o does not admit it (%d refused so far)",
                           self.label, uid, self.mode, self.refused)
        sock.close()
        return False


def peer_groups(sock: Any) -> list[int]:
    """The peer's supplementary groups, as they were when it connected."""
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * MAX_GROUPS)
    except OSError:
        return []
    return list(struct.unpack("%dI" % (len(data) // 4), data[:len(data) // 4 * 4]))


class Listener:
    """One listening socket, what to call it in logs, and what to clean up after it."""

    def __init__(self, sock: socket.socket, label: str, path: str | None = None):
        self.sock = sock
        self.family = sock.family
        self.label = label
        self.unix = sock.family == socket.AF_UNIX
        self.path = path            # a unix socket's file, removed on close
        self.identity = file_identity(path) if path else None
        # Called on each accepted socket: False when it closed it (an abstract socket's rule).
        self.admit: Callable[[Any], bool] | None = None
        self.owned = False          # opened here, not inherited (systemd, fd://)

    def queued(self) -> int | None:
        """How many connections the kernel has completed and not yet handed over: a TCP
        listener's accept queue, from TCP_INFO; None where that cannot be told (a unix
        socket). Accepting that many spares the accept that fails for want of one, whose
        exception costs more than the accepts around it."""
        if self.unix:
            return None
        try:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, QUEUED_END)
        except OSError:
            return None
        return int(QUEUED.unpack_from(info, QUEUED_END - QUEUED.size)[0])

    def reader(self, max_size: int) -> Any:
        return HeldBackReader(max_size) if self.unix else frames.FrameReader(max_size)

    def close(self) -> None:
        self.sock.close()
        if self.path and self.identity and file_identity(self.path) == self.identity:
            try:
                os.unlink(self.path)
            except OSError:
                pass


# A classic BPF program for a TCP listener, which sees each segment from its TCP header: drop
# those with SYN set and ACK clear (new handshakes), keep the rest.
SYN_DROP = ((0x30, 0, 0, 13),            # load the flags byte
            (0x54, 0, 0, 0x12),          # keep SYN and ACK
            (0x15, 0, 1, 0x02),          # SYN alone?
            (0x06, 0, 0, 0),             # yes: drop
            (0x06, 0, 0, 0xFFFFFFFF))    # no: keep all of it
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)


def refuse_handshakes(listener: Listener) -> bool:
    """Before a TCP listener this process opened is closed: drop new handshakes, while those
    under way complete and are accepted. Closing at once would reset a connection whose
    handshake was in flight, and a load balancer that had forwarded a request on it cannot
    send it elsewhere; a dropped SYN is sent again a second later, finds the port closed, and
    goes elsewhere. False where this cannot be done (the listener is closed as before)."""
    if listener.unix or not listener.owned:
        return False            # an inherited socket outlives this process: leave it as given
    code = b"".join(struct.pack("HBBI", *insn) for insn in SYN_DROP)
    program = ctypes.create_string_buffer(code, len(code))
    try:        # struct sock_fprog: the count, then a pointer (natively aligned)
        listener.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                                 struct.pack("HP", len(SYN_DROP), ctypes.addressof(program)))
    except OSError:
        return False
    return True


def announce(listeners: list[Listener], activated: Any) -> tuple[list[str], str, Any]:
    """Log every address; return them all, the first TCP one's label and its (host, port)
    (None when every listener is a unix socket)."""
    for listener in listeners:
        log.info("listening on %s%s", listener.label, " (from systemd)" if activated else "")
    main = next((listener for listener in listeners if not listener.unix), listeners[0])
    address = None if main.unix else tuple(main.sock.getsockname()[:2])
    return [listener.label for listener in listeners], main.label, address


def file_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def parse(address: str) -> tuple[str, Any]:
    """("tcp", (host, port)), ("unix", path) or ("fd", n); ValueError for anything else."""
    path = wire.unix_path(address)
    if path is not None:
        return "unix", path
    if address.startswith("fd://"):
        if not address[5:].isdigit():
            raise ValueError("expected fd://N with N a file descriptor, got %r" % address)
        return "fd", int(address[5:])
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or (":" in host and not host.startswith("[")):
        raise ValueError("expected HOST:PORT, [V6]:PORT, unix:PATH or fd://N, got %r" % address)
    return "tcp", (host.strip("[]") or "0.0.0.0", int(port))


def validate(addresses: list[str]) -> None:
    for address in addresses:
        parse(address)


def open_all(addresses: list[str], backlog: int, unix_mode: int,
             activated: list[socket.socket] | None = None) -> list[Listener]:
    """Listen on every address, or on the sockets systemd passed when there are any."""
    opened: list[Listener] = []
    try:
        if activated:
            opened = [adopt(sock, backlog, "systemd") for sock in activated]
        else:
            for address in addresses:
                try:
                    opened.append(open_one(address, backlog, unix_mode))
                except OSError as exc:
                    raise OSError(exc.errno, "cannot listen on %s: %s"
                                  % (address, exc.strerror or exc)) from exc
    except BaseException:
        for listener in opened:
            listener.close()
        raise
    return opened


def open_one(address: str, backlog: int, unix_mode: int) -> Listener:
    kind, where = parse(address)
    if kind == "fd":
        return adopt(socket.socket(fileno=where), backlog, address)
    if kind == "unix":
        return open_unix(where, backlog, unix_mode)
    family, socktype, proto, _, addr = socket.getaddrinfo(
        where[0], where[1], type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        listener = prepare(sock, backlog, None)
        listener.owned = True
        return listener
    except BaseException:
        sock.close()
        raise


def prepare(sock: socket.socket, backlog: int, path: str | None, listen: bool = True) -> Listener:
    if sock.family != socket.AF_UNIX:
        # Accepted sockets inherit this: unless a reply was written in full, closing one,
        # even by the kernel when this process dies, resets it instead of faking an EOF.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
    if listen:
        sock.listen(backlog)
    sock.setblocking(False)
    if sock.family == socket.AF_UNIX:
        name = sock.getsockname()
        name = name.decode(errors="replace") if isinstance(name, bytes) else name
        label = "unix:" + (name.replace("\0", "@", 1) if name.startswith("\0") else name)
    else:
        label = host_port(*sock.getsockname()[:2])
    return Listener(sock, label, path)


def adopt(sock: socket.socket, backlog: int, origin: str) -> Listener:
    """A socket this process inherited (fd://N, systemd): it must be a stream socket; it is
    made to listen if it does not already."""
    try:
        if sock.type != socket.SOCK_STREAM:
            raise OSError(errno.EINVAL, "%s is not a stream socket" % origin)
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        sock.set_inheritable(False)
        return prepare(sock, backlog, None, listen=not listening)
    except BaseException:
        sock.detach()
        raise


def open_unix(path: str, backlog: int, unix_mode: int) -> Listener:
    abstract = path.startswith("\0")
    if not abstract:
        remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if abstract:
            sock.bind(path)
            listener = prepare(sock, backlog, None)
            listener.admit = PeerRule(unix_mode, listener.label)
            return listener
        old = os.umask(0o777 & ~unix_mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, unix_mode)
        return prepare(sock, backlog, path)
    except BaseException:
        sock.close()
        raise


def remove_stale(path: str) -> None:
    """Remove a socket file nobody listens on; refuse to touch anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, "%s exists and is not a socket" % path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing the stale socket file %s", path)
            os.unlink(path)
            return
    raise OSError(errno.EADDRINUSE, "another process listens on unix:%s" % path)


class HeldBackReader(frames.FrameReader):
    """Reads a frame from a unix socket as ``frames.FrameReader`` does, except its last byte,
    which stays in the socket (peeked at) until ``release``: closing with it unread is what
    tells the client ECONNRESET. Bytes past the frame are not read at all."""

    __slots__ = ()

    def read_from(self, sock: Any, allowance: int = frames.READ_SLICE,
                  room: int = frames.UNLIMITED) -> bool:
        self.ceiling = self.capacity + room
        if self.length < 0 and not self._read_header(sock, allowance):
            return False
        if self.payload is not None:
            return True         # empty: the header's last byte is the one held back
        self._read_body(sock, allowance, self.length - 1)
        if self.got < self.length - 1:
            return False
        assert isinstance(self.buffer, bytearray)   # no arena: never a region's view
        while len(self.buffer) < self.length:
            self._grow(sock)
        with memoryview(self.buffer) as view:
            if not sock.recv_into(view[self.length - 1:], 1, PEEK):
                raise wire.FrameError(wire.FrameError.CLOSED, self.got, self.length)
        self.payload, self.buffer = self.buffer, None
        return True

    def _read_header(self, sock: Any, allowance: int) -> bool:
        size = wire.HEADER.size
        while len(self.header) < size - 1:
            data = sock.recv(size - 1 - len(self.header), DONTWAIT)
            if not data:
                raise wire.FrameError(wire.FrameError.CLOSED, len(self.header), size, True)
            self.header += data
        last = sock.recv(1, PEEK)
        if not last:
            raise wire.FrameError(wire.FrameError.CLOSED, len(self.header), size, True)
        (length,) = wire.HEADER.unpack(self.header + last)
        if length > self.max_size:
            raise wire.FrameError(wire.FrameError.TOO_LONG, length, self.max_size)
        self.length, self.got, self.header = length, 0, b""
        if length:
            sock.recv(1, DONTWAIT)
            self.buffer = bytearray(min(length, frames.FIRST_CAPACITY))
        else:
            self.payload = b""
        return True


def release(sock: Any) -> None:
    """Take the byte a HeldBackReader left, once the reply is written in full."""
    try:
        sock.recv(1, DONTWAIT)
    except OSError:
        pass
