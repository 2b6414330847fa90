"""The producer's ZeroMQ side: the sinks the workers answer on, and a PUSH socket to each.

Every sink is read from an io watcher on its ZeroMQ FD, with raw pyzmq sockets: no
zmq.green wrapper on the hot path. ZeroMQ's FD is edge-triggered, so each wake-up drains
the socket, and an error while draining is logged and followed by another look. A wake-up
reads at most ``READS_PER_WAKEUP`` messages and leaves the rest for a callback, so a flood
on the remote sink cannot keep the loop from its clients. Each
message is validated (``wire.decode``) before anything acts on it; a malformed one is
reported as dropped, and nothing a peer sends stops a sink from being read.

The producer binds no ipc endpoint: each local worker binds its own (requests in, answers
out), and the producer connects to them, its sink included, from the moment the worker is
spawned (ZeroMQ retries until the worker has bound). A connection that fails
for want of file descriptors is retried by ZeroMQ; an ipc listener would abort the process.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

import zmq

from . import wire
from .dispatch import Full
from .fds import FdReserve
from .guard import errors, guarded
from .remote import HEADROOM, RemoteSink
from .worker import reply_endpoint, worker_endpoint

log = logging.getLogger("gaspar2")

Send = Callable[[list[Any], int, int], None]
RECONNECT_MS = 10           # the sink's retry while a new worker has not bound yet
RETRY_READ = 0.01           # after an error while draining a sink, look again this soon
READS_PER_WAKEUP = 256      # messages read from a sink before the loop sees to the rest


class TransportEvents(Protocol):
    def message(self, message: wire.Message, local: bool, user_id: str | None) -> None:
        """A well-formed message on the local sink or the remote one; ``user_id`` is the
        CURVE key its connection authenticated with (remote, CURVE on), else None."""

    def message_dropped(self, reason: str, detail: str) -> None:
        """A message was dropped before anything acted on it."""

    def messages_read(self) -> None:
        """A sink was drained: act on what it brought."""


class Transport:
    def __init__(self, loop: Any, events: TransportEvents, ipc_dir: str,
                 max_message_size: int = wire.DEFAULT_MAX_MESSAGE_SIZE):
        self.loop = loop
        self.events = events
        self.ipc_dir = ipc_dir
        self.max_message_size = max_message_size
        self.ctx = zmq.Context()
        self.watchers: list[Any] = []
        self.pushes: dict[int, zmq.Socket] = {}    # local worker id -> its PUSH socket
        self.remote: RemoteSink | None = None
        self.sink = self.ctx.socket(zmq.PULL)
        self.sink.reconnect_ivl = RECONNECT_MS
        self.sink.maxmsgsize = max_message_size + HEADROOM
        self._watch(self.sink, self._on_sink)

    def open_remote(self, endpoint: str, secret_key: str | None, authorized: str | None,
                    insecure: bool, max_workers: int, fds: FdReserve) -> RemoteSink:
        self.remote = RemoteSink(self.ctx, endpoint, secret_key, authorized, insecure,
                                 self.max_message_size, max_workers, fds)
        self._watch(self.remote.sock, self._on_sink)
        self._watch(self.remote.monitor, guarded(lambda sock: self.remote.read_monitor()))
        return self.remote

    def _watch(self, sock: zmq.Socket, callback: Callable[[zmq.Socket], None]) -> None:
        sock.linger = 0
        watcher = self.loop.io(sock.FD, 1)
        watcher.start(callback, sock)
        self.watchers.append(watcher)
        # The FD signals a change only once the socket has been looked at: look once.
        self.loop.run_callback(callback, sock)

    # -- out ---------------------------------------------------------------------------------

    def listen_local(self, worker_id: int) -> None:
        """Point the sink at a local worker's endpoint, before the worker binds it."""
        self.sink.connect(reply_endpoint(self.ipc_dir, worker_id))

    def connect_local(self, worker_id: int) -> Send:
        """A PUSH to a ready local worker; raises zmq.ZMQError when no file is left for it."""
        push = self.ctx.socket(zmq.PUSH)
        push.linger = 0
        push.connect(worker_endpoint(self.ipc_dir, worker_id))
        self.pushes[worker_id] = push
        return sender(push, local=True)

    def disconnect(self, worker_id: int) -> None:
        push = self.pushes.pop(worker_id, None)
        if push is not None:
            push.close()
        try:
            self.sink.disconnect(reply_endpoint(self.ipc_dir, worker_id))
        except zmq.ZMQError:
            pass                    # a remote worker's id, or already gone

    # -- in ----------------------------------------------------------------------------------

    @guarded
    def _on_sink(self, sock: zmq.Socket) -> None:
        try:
            if not self._read(sock, READS_PER_WAKEUP):
                self.loop.run_callback(self._on_sink, sock)     # more is waiting
        except Exception:
            errors.log(logging.ERROR, "sink", "error reading a sink, reading on", exc_info=True)
            timer = self.loop.timer(RETRY_READ)
            timer.start(self._on_sink, sock)
        self.events.messages_read()

    def read_all(self) -> None:
        """Take in everything already sent, without acting on it yet."""
        self._read(self.sink)
        if self.remote is not None:
            self._read(self.remote.sock)

    def _read(self, sock: zmq.Socket, most: int = -1) -> bool:
        """Read up to ``most`` messages (all, if negative); True once the sink is drained.
        It stops when ZeroMQ's EVENTS shows no more input: reading EVENTS re-arms the
        edge-triggered FD, and costs less than a read that fails with zmq.Again."""
        local = sock is self.sink
        curve = not local and self.remote is not None and self.remote.curve
        while most != 0:
            try:
                frames = wire.recv_frames(sock, wire.NOBLOCK)
            except zmq.Again:
                return True
            most -= 1
            try:
                message = wire.decode(frames)
            except wire.BadMessage as exc:
                self.events.message_dropped(
                    "malformed", "%s sink: %s" % ("local" if local else "remote", exc))
            else:
                try:
                    self.events.message(message, local,
                                        frames[0].get("User-Id") if curve else None)
                except Exception:
                    errors.log(logging.ERROR, "message", "error acting on a %r message, "
                               "going on", message.kind, exc_info=True)
            if not sock.getsockopt(wire.EVENTS) & wire.POLLIN:
                return True
        return False

    def close(self) -> None:
        for watcher in self.watchers:
            watcher.stop()
        if self.remote is not None:
            self.remote.close()
        self.ctx.destroy(linger=0)


class Announcing:
    """The fork server as the supervisor uses it, telling the transport of each spawn
    first, so that the sink is connecting to the worker's endpoints before it exists."""

    def __init__(self, forkserver: Any, transport: Transport):
        self.forkserver = forkserver
        self.transport = transport

    def spawn(self, worker_id: int, slot: int) -> None:
        self.transport.listen_local(worker_id)
        self.forkserver.spawn(worker_id, slot)

    def kill(self, worker_id: int, signum: int) -> None:
        self.forkserver.kill(worker_id, signum)


def sender(push: zmq.Socket, local: bool = False) -> Send:
    """A seat's ``send``: a batch of connections as one message on ``push``. A body in the
    arena goes to a local worker as its place there, and to a remote one as its bytes."""
    def send(conns: list[Any], epoch: int, seq: int) -> None:
        ids = [c.request_id for c in conns]
        payloads = [c.payload for c in conns]
        shared = [i for i, conn in enumerate(conns) if conn.region is not None]
        for i in shared:
            ids[i] |= wire.SHARED_BIT if local else 0
            payloads[i] = conns[i].region.ref() if local else conns[i].region.copy()
        try:
            wire.send_batch(push, ids, payloads, epoch, seq)
        except zmq.Again:
            raise Full from None
        for i in shared:
            conns[i].region.worker = local      # it may read and write there now
    return send
