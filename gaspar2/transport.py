"""The producer's ZeroMQ side: the sinks the workers answer on, and a PUSH socket to each.

Every sink is read from an io watcher on its ZeroMQ FD, with raw pyzmq sockets: no
zmq.green wrapper on the hot path. ZeroMQ's FD is edge-triggered, so each wake-up drains
the socket. Each message is validated (``wire.decode``) before anything acts on it.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

import zmq

from . import wire
from .dispatch import Full
from .remote import RemoteSink
from .worker import sink_endpoint, worker_endpoint

log = logging.getLogger("gaspar2")

Send = Callable[[list[Any], int, int], None]


class TransportEvents(Protocol):
    def message(self, message: wire.Message, local: bool) -> None:
        """A valid message from a worker, on the local sink or the remote one."""

    def messages_read(self) -> None:
        """A sink was drained: act on what it brought."""


class Transport:
    def __init__(self, loop: Any, events: TransportEvents, ipc_dir: str):
        self.loop = loop
        self.events = events
        self.ipc_dir = ipc_dir
        self.ctx = zmq.Context()
        self.watchers: list[Any] = []
        self.pushes: dict[int, zmq.Socket] = {}    # local worker id -> its PUSH socket
        self.remote: RemoteSink | None = None
        self.sink = self._watch(self.ctx.socket(zmq.PULL))
        self.sink.bind(sink_endpoint(ipc_dir))

    def open_remote(self, endpoint: str, secret_key: str | None, authorized: str | None,
                    insecure: bool) -> RemoteSink:
        self.remote = RemoteSink(self.ctx, endpoint, secret_key, authorized, insecure)
        self._watch(self.remote.sock)
        return self.remote

    def _watch(self, sock: zmq.Socket) -> zmq.Socket:
        sock.linger = 0
        watcher = self.loop.io(sock.FD, 1)
        watcher.start(self._on_sink, sock)
        self.watchers.append(watcher)
        return sock

    # -- out ---------------------------------------------------------------------------------

    def connect_local(self, worker_id: int) -> Send:
        push = self.pushes[worker_id] = self.ctx.socket(zmq.PUSH)
        push.linger = 0
        push.connect(worker_endpoint(self.ipc_dir, worker_id))
        return sender(push)

    def disconnect(self, worker_id: int) -> None:
        push = self.pushes.pop(worker_id, None)
        if push is not None:
            push.close()

    # -- in ----------------------------------------------------------------------------------

    def _on_sink(self, sock: zmq.Socket) -> None:
        self._read(sock)
        self.events.messages_read()

    def read_all(self) -> None:
        """Take in everything already sent, without acting on it yet."""
        self._read(self.sink)
        if self.remote is not None:
            self._read(self.remote.sock)

    def _read(self, sock: zmq.Socket) -> None:
        local = sock is self.sink
        while sock.getsockopt(wire.EVENTS) & wire.POLLIN:
            frames = wire.recv_frames(sock, wire.NOBLOCK)
            try:
                message = wire.decode(frames)
            except wire.BadMessage as exc:
                log.warning("dropped a message on the %s sink: %s",
                            "local" if local else "remote", exc)
                continue
            self.events.message(message, local)

    def close(self) -> None:
        for watcher in self.watchers:
            watcher.stop()
        if self.remote is not None:
            self.remote.close()
        self.ctx.destroy(linger=0)


def sender(push: zmq.Socket) -> Send:
    """A seat's ``send``: a batch of connections as one message on ``push``."""
    def send(conns: list[Any], epoch: int, seq: int) -> None:
        try:
            wire.send_batch(push, [c.request_id for c in conns], [c.payload for c in conns],
                            epoch, seq)
        except zmq.Again:
            raise Full from None
    return send
