"""The producer's side of remote workers: the endpoint they join, and who has joined.

A remote worker connects a PUSH to the producer's remote sink, binds a PULL of its own on a
TCP port and says HELLO with that address and its public key; the producer connects a PUSH
back to it. With CURVE, each end accepts only the keys it was given. Remote workers take
part in the same fair dispatch as local ones, holding one request at a time (no shared
memory tells the producer which of several a lost worker had begun). They send a heartbeat
every interval; one silent for ``wire.MISSED_BEATS`` intervals is gone.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import urllib.parse
from typing import Any

import zmq

from . import curve, wire

log = logging.getLogger("gaspar2.remote")


def is_loopback(endpoint: str) -> bool:
    host = urllib.parse.urlsplit(endpoint).hostname or ""
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


class RemoteSink:
    """The endpoint remote workers join, and its authenticator."""

    def __init__(self, ctx: zmq.Context, endpoint: str, secret_key_file: str | None = None,
                 authorized: str | None = None, insecure: bool = False):
        self.keys: tuple[bytes, bytes] | None = None
        self.auth: Any = None
        if secret_key_file:
            self.keys = curve.load_secret(secret_key_file)
            allowed = curve.load_public_keys(authorized) if authorized else []
            self.auth = curve.start_authenticator(ctx, curve.KeyRing(allowed, "remote worker"))
            log.info("remote workers: CURVE on, %d worker keys accepted", len(allowed))
        elif not insecure and not is_loopback(endpoint):
            raise RuntimeError("remote workers on %s without CURVE keys: give a secret key and "
                               "the workers' public keys, or opt out explicitly" % endpoint)
        else:
            log.warning("remote workers on %s without CURVE: anyone who reaches it can join",
                        endpoint)
        self.sock = ctx.socket(zmq.PULL)
        self.sock.linger = 0
        curve.make_server(self.sock, self.keys)
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise RuntimeError("cannot bind the remote workers' endpoint %s: %s" % (endpoint, exc))
        self.endpoint = self.sock.last_endpoint.decode()

    def connect_worker(self, ctx: zmq.Context, endpoint: str, worker_key: bytes) -> zmq.Socket:
        """A PUSH to a remote worker that said HELLO from ``endpoint``."""
        push = ctx.socket(zmq.PUSH)
        push.linger = 0
        curve.make_client(push, self.keys, worker_key)
        push.connect(endpoint)
        return push

    def close(self) -> None:
        self.sock.close()
        if self.auth is not None:
            self.auth.stop()


class RemoteMember:
    """A remote worker that has joined."""

    remote = True
    ready = True
    lifetime = None

    def __init__(self, worker_id: int, pid: int, endpoint: str, push: zmq.Socket, now: float):
        self.id = worker_id
        self.pid = pid
        self.endpoint = endpoint
        self.push = push
        self.heard = self.pinged = now

    def __repr__(self) -> str:
        return "worker %x (remote pid %s)" % (self.id, self.pid)


class RemoteMembers:
    """Who has joined through the remote sink; reports joins and losses like a supervisor."""

    def __init__(self, events: Any, ctx: zmq.Context, sink: RemoteSink, heartbeat: float):
        self.events = events            # worker_ready(member), worker_lost(member, ...)
        self.ctx = ctx
        self.sink = sink
        self.heartbeat = heartbeat
        self.members: dict[int, RemoteMember] = {}

    def hello(self, worker_id: int, pid: int, endpoint: bytes, key: bytes, now: float) -> None:
        member = self.members.get(worker_id)
        if member is not None:
            member.heard = now          # it said HELLO again: it had not heard from us
            return
        push = self.sink.connect_worker(self.ctx, endpoint.decode(), key)
        member = RemoteMember(worker_id, pid, endpoint.decode(), push, now)
        self.members[worker_id] = member
        log.info("remote %r joined from %s", member, member.endpoint)
        self.events.worker_ready(member)

    def heard(self, worker_id: int, now: float) -> None:
        member = self.members.get(worker_id)
        if member is not None:
            member.heard = now

    def check(self, now: float) -> None:
        """Ping members; drop those silent for ``MISSED_BEATS`` heartbeats."""
        for member in list(self.members.values()):
            if now - member.heard > wire.MISSED_BEATS * self.heartbeat:
                del self.members[member.id]
                cause = "missed %d heartbeats (%.1f s)" % (wire.MISSED_BEATS, now - member.heard)
                self.events.worker_lost(member, cause, "heartbeat", None)
                member.push.close()
            elif now - member.pinged >= self.heartbeat:
                member.pinged = now
                try:
                    wire.send_batch(member.push, [], [])       # an empty batch: a ping
                except zmq.Again:
                    pass

    def ready_count(self) -> int:
        return len(self.members)
