"""The producer's ZeroMQ side: the sinks the workers answer on, and a PUSH socket to each.

Every sink is watched by an io watcher on its ZeroMQ FD, with raw pyzmq sockets: no
zmq.green wrapper on the hot path. The request path drains it (path.py ``on_sink``).

The producer binds no ipc endpoint: each local worker binds its own (requests in, answers
out), and the producer connects to them, its sink included, from the moment the worker is
spawned (ZeroMQ retries until the worker has bound). A connection that fails
for want of file descriptors is retried by ZeroMQ; an ipc listener would abort the process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import zmq

from ..frontend.fds import FdReserve
from ..guard import guarded
from ..protocol import wire
from .dispatch import Full, Send
from .members import RemoteSink

log = logging.getLogger("gaspar2")

RECONNECT_MS = 10           # the sink's retry while a new worker has not bound yet
# ZeroMQ's I/O threads: the local workers' sockets on one, the remote endpoint's on the
# other, so that a peer flooding the endpoint does not delay the local workers' traffic.
IO_THREADS, LOCAL_IO = 2, 1
# pyzmq's own send, under the Python-level wrapper that adds nothing a batch uses.
SEND = zmq.backend.Socket.send


class Transport:
    def __init__(self, loop: Any, on_sink: Callable[[zmq.SyncSocket], None], ipc_dir: str,
                 max_message_size: int = wire.DEFAULT_MAX_MESSAGE_SIZE):
        self.loop = loop
        self.on_sink = on_sink          # drains a sink (the request path's)
        self.ipc_dir = ipc_dir
        self.max_message_size = max_message_size
        self.ctx = zmq.Context()
        self.ctx.io_threads = IO_THREADS
        self.watchers: list[Any] = []
        self.pushes: dict[int, zmq.SyncSocket] = {}    # local worker id -> its PUSH socket
        self.remote: RemoteSink | None = None
        self.remote_again: Any = None   # a timer: the remote sink's next look
        self.sink = self.ctx.socket(zmq.PULL)
        self.sink.reconnect_ivl = RECONNECT_MS
        self.sink.affinity = LOCAL_IO
        self.sink.maxmsgsize = max_message_size + wire.HEADROOM
        self._watch(self.sink, on_sink)

    def open_remote(self, endpoint: str, secret_key: str | None, authorized: str | None,
                    insecure: bool, max_workers: int, fds: FdReserve) -> RemoteSink:
        self.remote = RemoteSink(self.ctx, endpoint, secret_key, authorized, insecure,
                                 self.max_message_size, max_workers, fds)
        self._watch(self.remote.sock, self.on_sink)
        remote = self.remote
        self._watch(remote.monitor, guarded(lambda sock: remote.read_monitor()))
        return remote

    def look_again(self, sock: zmq.SyncSocket) -> None:
        """Drain ``sock`` again soon, more being waiting: the local sink from a callback in
        this iteration of the loop; the remote sink in the next iteration, once the loop has
        polled its other watchers (gevent runs up to 50 callbacks before it polls), so that
        a long hostile message is thrown away between their turns."""
        if sock is self.sink:
            self.loop.run_callback(self.on_sink, sock)
            return
        if self.remote_again is None:
            self.remote_again = self.loop.timer(0.0)
        if not self.remote_again.active:
            self.remote_again.start(self.on_sink, sock)

    def _watch(self, sock: zmq.SyncSocket, callback: Callable[[zmq.SyncSocket], None]) -> None:
        sock.linger = 0
        watcher = self.loop.io(sock.FD, 1)
        watcher.start(callback, sock)
        self.watchers.append(watcher)
        # The FD signals a change only once the socket has been looked at: look once.
        self.loop.run_callback(callback, sock)

    # -- out ---------------------------------------------------------------------------------

    def listen_local(self, worker_id: int) -> None:
        """Point the sink at a local worker's endpoint, before the worker binds it."""
        self.sink.connect(wire.reply_endpoint(self.ipc_dir, worker_id))

    def connect_local(self, worker_id: int) -> Send:
        """A PUSH to a ready local worker; raises zmq.ZMQError when no file is left for it."""
        push = self.ctx.socket(zmq.PUSH)
        push.linger = 0
        push.affinity = LOCAL_IO
        push.connect(wire.worker_endpoint(self.ipc_dir, worker_id))
        self.pushes[worker_id] = push
        return sender(push, local=True)

    def disconnect(self, worker_id: int) -> None:
        push = self.pushes.pop(worker_id, None)
        if push is not None:
            push.close()
        try:
            self.sink.disconnect(wire.reply_endpoint(self.ipc_dir, worker_id))
        except zmq.ZMQError:
            pass                    # a remote worker's id, or already gone

    def close(self) -> None:
        for watcher in self.watchers:
            watcher.stop()
        if self.remote_again is not None:
            self.remote_again.stop()
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


def sender(push: zmq.SyncSocket, local: bool = False) -> Send:
    """A seat's ``send``: a batch of connections as one message on ``push``. A body in the
    arena goes to a local worker as its place there, and to a remote one as its bytes."""
    def send(conns: list[Any], epoch: int, seq: int) -> None:
        ids, payloads, shared = [], [], []
        for conn in conns:
            region = conn.region
            if region is None:
                ids.append(conn.request_id)
                payloads.append(conn.payload)
            else:
                shared.append(region)
                ids.append(conn.request_id | wire.SHARED_BIT if local else conn.request_id)
                payloads.append(region.ref() if local else region.copy())
        try:
            SEND(push, wire.encode_batch(ids, payloads, epoch, seq), wire.NOBLOCK)
        except zmq.Again:
            raise Full from None
        for region in shared:
            region.worker = local           # it may read and write there now
    return send
