"""The producer's side of remote workers: the endpoint they join, and who has joined.

A remote worker connects a PUSH to the producer's remote sink, binds a PULL of its own on a
TCP port and says HELLO with that address and its public key; the producer connects a PUSH
back to it and answers with a WELCOME carrying a random token. The worker joins once a
message carrying that token comes back: only a worker that receives at the address it gave
can join, and every later message must carry the token (and, with CURVE, come from the key
the worker joined with, which the ZAP handler attaches to each message as ``User-Id``).
Remote workers take part in the same fair dispatch as local ones, holding one request at a
time (no shared memory tells the producer which of several a lost worker had begun). They
send a heartbeat every interval; one silent for ``wire.MISSED_BEATS`` intervals is gone.

The endpoint faces the network: every message and handshake is size-limited, a handshake
must finish within ``wire.HANDSHAKE_MS``, connections that stop answering ZeroMQ's own pings are
dropped, and the connections are counted (a socket monitor): one that ZeroMQ accepts past
the limit, or while the producer is short of file descriptors, is cut at once. (Unbinding
the endpoint instead would also drop the workers' connections, and what they had queued.)
Its listen queue is short, so that ZeroMQ cannot accept many before the count is read.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import socket
import urllib.parse
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from ..frontend.fds import FdReserve
from ..guard import Throttled
from ..protocol import curve, wire

log = logging.getLogger("gaspar2.remote")

PING_MS = 2000              # ZeroMQ's own heartbeat on the remote endpoint's connections
CONNECTIONS_PER_WORKER = 2  # a remote worker's two PUSH sockets
SPARE_CONNECTIONS = 16
BACKLOG = 32                # the endpoint's listen queue: what ZeroMQ may accept in one burst
MONITORED = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED


def is_loopback(endpoint: str) -> bool:
    host = urllib.parse.urlsplit(endpoint).hostname or ""
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def check_curve_options(secret_key_file: str | None, authorized: str | None) -> None:
    if bool(secret_key_file) != bool(authorized):
        raise RuntimeError("CURVE needs both --curve-secret-key and --curve-authorized "
                           "(only %s was given)" % ("--curve-secret-key" if secret_key_file
                                                    else "--curve-authorized"))


class RemoteSink:
    """The endpoint remote workers join, its authenticator, and its connection count."""

    def __init__(self, ctx: zmq.SyncContext, endpoint: str, secret_key_file: str | None = None,
                 authorized: str | None = None, insecure: bool = False,
                 max_message_size: int = wire.DEFAULT_MAX_MESSAGE_SIZE,
                 max_workers: int = 256, fds: FdReserve | None = None):
        check_curve_options(secret_key_file, authorized)
        self.keys: tuple[bytes, bytes] | None = None
        self.auth: Any = None
        self.max_message_size = max_message_size
        self.max_connections = CONNECTIONS_PER_WORKER * max_workers + SPARE_CONNECTIONS
        self.connections = 0
        self.fds = fds
        self.throttled = Throttled(log)
        if secret_key_file:
            assert authorized is not None
            self.keys = curve.load_secret(secret_key_file)
            allowed = curve.load_public_keys(authorized)
            self.auth = curve.start_authenticator(ctx, curve.KeyRing(allowed, "remote worker"))
            log.info("remote workers: CURVE on, %d worker keys accepted", len(allowed))
        elif not insecure and not is_loopback(endpoint):
            raise RuntimeError("remote workers on %s without CURVE keys: give a secret key and "
                               "the workers' public keys, or opt out explicitly" % endpoint)
        else:
            log.warning("remote workers on %s without CURVE: anyone who reaches it can join",
                        endpoint)
        self.sock = ctx.socket(zmq.PULL)
        wire.limit_peer(self.sock, max_message_size)
        self.sock.backlog = BACKLOG
        self.sock.heartbeat_ivl = PING_MS
        self.sock.heartbeat_timeout = 3 * PING_MS
        curve.make_server(self.sock, self.keys)
        self.monitor = self.sock.get_monitor_socket(MONITORED)
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise RuntimeError("cannot bind the remote workers' endpoint %s: %s"
                               % (endpoint, exc)) from exc
        self.endpoint = self.sock.get_string(zmq.LAST_ENDPOINT)
        self.port = int(self.endpoint.rpartition(":")[2])

    @property
    def curve(self) -> bool:
        return self.keys is not None

    def connect_worker(self, ctx: zmq.SyncContext, endpoint: str,
                       worker_key: bytes) -> zmq.SyncSocket:
        """A PUSH to a remote worker that said HELLO from ``endpoint``."""
        push = ctx.socket(zmq.PUSH)
        wire.limit_peer(push, self.max_message_size)
        curve.make_client(push, self.keys, worker_key)
        push.connect(endpoint)
        return push

    def read_monitor(self) -> None:
        """Count the endpoint's connections; cut those past the limit or the fd reserve."""
        # pyzmq types getsockopt int | bytes; EVENTS is an int.
        while self.monitor.getsockopt(wire.EVENTS) & wire.POLLIN:  # type: ignore[operator]
            # pyzmq types it list[bytes]; it reads zmq.Frames as well (the buffer protocol).
            event = parse_monitor_message(
                wire.recv_frames(self.monitor, wire.NOBLOCK))  # type: ignore[arg-type]
            opened = event["event"] != zmq.EVENT_DISCONNECTED
            self.connections += 1 if opened else -1
            if self.fds is not None:
                (self.fds.opened if opened else self.fds.closed)()
            if opened and (self.connections > self.max_connections
                           or (self.fds is not None and self.fds.short())):
                self.throttled.log(logging.WARNING, "cut", "remote endpoint: %d connections "
                                   "open (limit %d), or short of files: cutting new ones",
                                   self.connections, self.max_connections)
                self._cut(event["value"])

    def _cut(self, fd: int) -> None:
        """Shut a connection ZeroMQ accepted down; ZeroMQ then closes it as a lost peer.
        The descriptor is checked to be on this endpoint's port first."""
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            return
        with sock:
            try:
                if sock.getsockname()[1] == self.port:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.monitor.close()
        self.sock.close()
        if self.auth is not None:
            self.auth.stop()


class RemoteMember:
    """A remote worker that said HELLO; it joins once it has answered the WELCOME."""

    remote = True
    ready = True
    lifetime = None

    def __init__(self, worker_id: int, pid: int, endpoint: str, key: bytes,
                 push: zmq.SyncSocket, now: float):
        self.id = worker_id
        self.pid = pid
        self.endpoint = endpoint
        self.key = key
        self.push = push
        self.token = secrets.randbits(64) | 1
        self.joined = False
        self.heard = self.pinged = now

    def __repr__(self) -> str:
        return "worker %x (remote pid %s)" % (self.id, self.pid)


class RemoteMembers:
    """Who has joined through the remote sink; reports joins and losses like a supervisor."""

    def __init__(self, events: Any, ctx: zmq.SyncContext, sink: RemoteSink, heartbeat: float,
                 max_workers: int = 256, max_reply_size: int = wire.DEFAULT_MAX_MESSAGE_SIZE):
        self.events = events            # worker_ready(member), worker_lost(member, ...)
        self.ctx = ctx
        self.sink = sink
        self.heartbeat = heartbeat
        self.max_workers = max_workers
        self.max_reply_size = max_reply_size
        self.members: dict[int, RemoteMember] = {}
        self.throttled = Throttled(log)

    def hello(self, message: wire.Message, user_id: str | None, now: float) -> None:
        """A HELLO: welcome a newcomer, or refresh one that already said it."""
        if len(message.frames) != 3 or message.worker_id < wire.REMOTE_ID_MIN:
            self._refuse("a HELLO without an endpoint, or with a local worker's id")
            return
        endpoint = wire.frame_bytes(message.frames[1]).decode()
        key = wire.frame_bytes(message.frames[2])
        if self.sink.curve and user_id != key.decode():
            self._refuse("a HELLO whose key is not the one it authenticated with")
            return
        member = self.members.get(message.worker_id)
        if member is not None:
            if (member.endpoint, member.key) == (endpoint, key):
                member.heard = now      # it had not heard from us: welcome it again
                self._welcome(member)
            else:
                self._refuse("a HELLO for a joined worker from another endpoint or key")
            return
        if len(self.members) >= self.max_workers:
            self._refuse("a HELLO past max_remote_workers (%d)" % self.max_workers)
            return
        self._admit(message.worker_id, message.field, endpoint, key, now)

    def _admit(self, worker_id: int, pid: int, endpoint: str, key: bytes, now: float) -> None:
        if self.sink.fds is not None and self.sink.fds.short():
            self._refuse("a HELLO while short of file descriptors (it will say it again)")
            return
        try:
            push = self.sink.connect_worker(self.ctx, endpoint, key)
        except zmq.ZMQError as exc:
            self._refuse("a HELLO from %s: %s (it will say it again)" % (endpoint, exc))
            return
        member = RemoteMember(worker_id, pid, endpoint, key, push, now)
        self.members[worker_id] = member
        self._welcome(member)

    def _welcome(self, member: RemoteMember) -> None:
        try:
            wire.send_frames(member.push, wire.encode_welcome(member.token, self.max_reply_size),
                             wire.NOBLOCK)
        except zmq.Again:
            pass

    def _refuse(self, what: str) -> None:
        self.throttled.log(logging.WARNING, "refused", "remote endpoint: ignored %s", what)

    def authentic(self, message: wire.Message, user_id: str | None, now: float) -> bool:
        """Whether ``message`` comes from the joined (or joining) worker it names. The first
        one from a member that said HELLO completes its join."""
        member = self.members.get(message.worker_id)
        if member is None or member.token != message.token:
            return False
        if self.sink.curve and user_id != member.key.decode():
            return False
        member.heard = now
        if not member.joined:
            member.joined = True
            log.info("remote %r joined from %s", member, member.endpoint)
            self.events.worker_ready(member)
        return True

    def check(self, now: float) -> None:
        """Ping members; drop those silent for ``MISSED_BEATS`` heartbeats."""
        for member in list(self.members.values()):
            if now - member.heard > wire.MISSED_BEATS * self.heartbeat:
                del self.members[member.id]
                if member.joined:
                    cause = "missed %d heartbeats (%.1f s)" % (wire.MISSED_BEATS,
                                                              now - member.heard)
                    self.events.worker_lost(member, cause, "heartbeat", None)
                member.push.close()
            elif member.joined and now - member.pinged >= self.heartbeat:
                member.pinged = now
                try:
                    wire.send_batch(member.push, [], [])       # an empty batch: a ping
                except zmq.Again:
                    pass

    def ready_count(self) -> int:
        return sum(1 for member in self.members.values() if member.joined)
