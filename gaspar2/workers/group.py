"""``gaspar2 worker``: a group of workers on another machine, joining a producer over TCP.

Each remote worker binds a PULL on a TCP port of its own, connects a PUSH to the producer's
remote sink and says HELLO with its address, its public key and the protocol version it
speaks (see docs/reference/worker-protocol.rst). The producer answers with a
WELCOME on the worker's PULL, carrying the token that every later message of the worker
carries, and the largest reply it may send; the worker answers at once with a heartbeat,
which completes its join. It sends a heartbeat every interval and says HELLO again after
``MISSED_BEATS`` intervals without a word from the producer, so it rejoins a producer that
restarts. A producer that does not speak its version answers with a REFUSED instead,
whose reason the worker logs (it goes on saying HELLO: the producer may be upgraded). The
group leader keeps the wanted number
of workers running, with the same back-off as local supervision.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import signal
import socket
import time
import urllib.parse
from collections.abc import Callable

import zmq

from ..consumer import Consumer, as_consumer
from ..protocol import curve, wire
from ..protocol.progress import ProgressTable
from .process import Backoff, die_with_parent, original, pin_malloc
from .worker import Worker, prepare_process

log = logging.getLogger("gaspar2.remote")
START_THREAD = original("_thread", "start_new_thread")
ALLOCATE_LOCK = original("_thread", "allocate_lock")
# The leader cannot see whether a worker became ready (its HELLO goes to the producer): one
# that dies within this many seconds of its start is taken for one that cannot start.
YOUNG = 1.0
WAITED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}     # the leader's only events


class RemoteWorker(Worker):
    """A worker process on another machine."""

    def __init__(self, make_consumer: Callable[[], Consumer], connect: str, listen_host: str,
                 advertise_host: str, keys: tuple[bytes, bytes] | None,
                 server_key: bytes | None, heartbeat: float, parent_pid: int,
                 max_message_size: int = wire.DEFAULT_MAX_MESSAGE_SIZE):
        # It holds one request at a time, so its own progress slot is private to it.
        progress = ProgressTable(1)
        super().__init__(make_consumer, random.randrange(wire.REMOTE_ID_MIN, 2**63), None, connect,
                         parent_pid, slow_min=3600.0, progress=progress, slot=progress.allocate())
        self.max_message_size = max_message_size
        self.welcomed = ALLOCATE_LOCK()     # released when a WELCOME comes: beat at once
        self.welcomed.acquire()
        self.listen_host = listen_host
        self.advertise_host = advertise_host
        self.keys = keys                  # (public, secret) of this worker, or None
        self.server_key = server_key      # the producer's public key
        self.heartbeat = heartbeat
        self.version = wire.PROTOCOL_VERSION

    def _connect(self, ctx: zmq.SyncContext) -> None:
        self.pull = ctx.socket(zmq.PULL)
        wire.limit_peer(self.pull, self.max_message_size)
        if self.keys is not None:
            assert self.server_key is not None
            self.auth = curve.start_authenticator(ctx, curve.KeyRing([self.server_key], "producer"))
        curve.make_server(self.pull, self.keys)
        port = self.pull.bind_to_random_port("tcp://%s" % self.listen_host)
        host = self.advertise_host
        self.endpoint = "tcp://%s:%d" % ("[%s]" % host if ":" in host else host, port)
        self.push = self._pusher(ctx)
        self.watch_push = self._pusher(ctx)
        self._hello()

    def _pusher(self, ctx: zmq.SyncContext) -> zmq.SyncSocket:
        push = ctx.socket(zmq.PUSH)
        wire.limit_peer(push, self.max_message_size)
        push.linger = 1000
        curve.make_client(push, self.keys, self.server_key)
        push.connect(self.sink)
        return push

    def _control(self, frames: wire.Frames) -> bool:
        """The producer's WELCOME: the token to carry from now on, and the reply limit; or
        its REFUSED, logged."""
        if wire.frame_bytes(frames[0]) == wire.REFUSED:
            try:
                versions, reason = wire.decode_refused(frames)
            except wire.BadMessage as exc:
                log.warning("remote worker: ignored a control message: %s", exc)
                return False
            log.error("remote worker: the producer at %s refused this worker: %s (it speaks "
                      "protocol versions %s; this worker speaks %d)", self.sink, reason,
                      ", ".join(map(str, versions)), self.version)
            return True
        try:
            self.token, self.max_reply_size = wire.decode_welcome(frames)
        except wire.BadMessage as exc:
            log.warning("remote worker: ignored a control message: %s", exc)
            return False
        try:
            self.welcomed.release()
        except RuntimeError:
            pass                # released already: the heartbeat has not gone out yet
        return True

    def _hello(self) -> None:
        public = self.keys[0] if self.keys is not None else b""
        assert self.endpoint is not None
        self.watch_push.send_multipart(wire.encode_hello(self.id, self.token, os.getpid(),
                                                         self.endpoint, public, self.version))

    def _serve(self) -> None:
        START_THREAD(self._beat, ())         # a real thread, even under monkey patching
        super()._serve()

    def _beat(self) -> None:
        """Heartbeats out (one at once after a WELCOME); HELLO again whenever the producer
        has been silent too long."""
        while True:
            self.welcomed.acquire(True, self.heartbeat)
            if self.token:          # welcomed: a heartbeat before that would be dropped
                self.watch_push.send(self._head(wire.HEARTBEAT))
            if time.monotonic() - self.contact > wire.MISSED_BEATS * self.heartbeat:
                self._hello()


class WorkerGroup:
    """The leader: forks the workers, replaces those that exit, stops them all on TERM."""

    def __init__(self, spec: str, size: int, make_worker: Callable[[int], RemoteWorker]):
        self.spec = spec
        self.size = size
        self.make_worker = make_worker
        self.children: dict[int, tuple[int, float]] = {}   # pid -> (number, started at)
        self.due: dict[int, float] = {}                     # number -> when to start it again
        self.backoff = Backoff()

    def run(self) -> int:
        """Signals are taken synchronously (blocked, then waited for), so a stop can never
        land in the middle of other code, a log call's lock included."""
        signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
        for n in range(1, self.size + 1):
            self._spawn(n)
        log.info("%d remote workers for %s", self.size, self.spec)
        while True:
            self._reap()
            self._start_due()
            wait = min(self.due.values(), default=time.monotonic() + 3600) - time.monotonic()
            got = signal.sigtimedwait(WAITED, max(wait, 0.001))
            if got is not None and got.si_signo != signal.SIGCHLD:
                break
        self._stop_all()
        return 0

    def _spawn(self, n: int) -> None:
        leader = os.getpid()
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, WAITED)
            die_with_parent(leader)
            prepare_process("gaspar2 remote-worker %d %s" % (n, self.spec))
            os._exit(self.make_worker(leader).run())
        self.children[pid] = (n, time.monotonic())

    def _reap(self) -> None:
        """Note each exit; its replacement starts after the back-off, never in a loop."""
        while self.children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            n, started = self.children.pop(pid, (0, 0.0))
            if not n:
                continue
            if time.monotonic() - started < YOUNG:
                delay = self.backoff.failed()
            else:
                self.backoff.succeeded()
                delay = 0.0
            log.warning("remote worker %d (pid %d) exited (status %d): starting another in "
                        "%.1f s", n, pid, status, delay)
            self.due[n] = time.monotonic() + delay

    def _start_due(self) -> None:
        now = time.monotonic()
        for n, when in list(self.due.items()):
            if when <= now:
                del self.due[n]
                self._spawn(n)

    def _stop_all(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for pid in self.children:
            os.kill(pid, signal.SIGTERM)
        for _ in list(self.children):
            try:
                os.wait()
            except ChildProcessError:
                break


def serve_group(spec: str | Consumer, connect: str, workers: int, listen_host: str,
                advertise_host: str | None, secret_key_file: str | None,
                server_key_file: str | None, heartbeat: float,
                max_message_size: int = wire.DEFAULT_MAX_MESSAGE_SIZE) -> int:
    """Keep ``workers`` remote worker processes running for the producer at ``connect``,
    serving ``spec``: a ``MODULE:ATTR`` each worker imports, or a Consumer (a ``Command``)
    that fork copies into each."""
    keys = curve.load_secret(secret_key_file) if secret_key_file else None
    server_key = curve.load_public_keys(server_key_file)[0] if server_key_file else None
    advertise = numeric(advertise_host) if advertise_host else route_address(connect)

    def make_worker(leader: int) -> RemoteWorker:
        return RemoteWorker(functools.partial(as_consumer, spec), connect, listen_host, advertise,
                            keys, server_key, heartbeat, leader, max_message_size)

    log.info("joining %s", connect)
    pin_malloc()
    return WorkerGroup(str(spec), workers, make_worker).run()


def numeric(host: str) -> str:
    """``host`` as a numeric address: a producer connects to no name a HELLO gives."""
    try:
        return str(socket.getaddrinfo(host.strip("[]"), None, type=socket.SOCK_STREAM)[0][4][0])
    except (OSError, IndexError) as exc:
        raise RuntimeError("cannot resolve --advertise %s: %s" % (host, exc)) from exc


def route_address(endpoint: str) -> str:
    """The local address this machine uses to reach ``endpoint``'s host."""
    parts = urllib.parse.urlsplit(endpoint)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((parts.hostname, parts.port or 9))
        return str(probe.getsockname()[0])
