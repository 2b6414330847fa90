"""Workers on other machines, joining a producer's pool over ZeroMQ's TCP transport.

A remote worker connects a PUSH to the producer's remote sink, binds a PULL of its own on
a TCP port and says HELLO with that address and its public key; the producer connects a
PUSH back to it. With CURVE, each end accepts only the keys it was given: the producer the
workers' public keys, a worker the producer's. Remote workers take part in the same fair
dispatch as local ones, holding one request at a time (no shared memory tells the producer
which of several a lost worker had begun). They send a heartbeat every interval, and say
HELLO again after three intervals without a word from the producer, so they rejoin a
producer that restarts.
"""

import ipaddress
import logging
import os
import random
import signal
import socket
import time
import urllib.parse

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from . import framing
from .forkserver import die_with_parent
from .worker import Worker, prepare_process

log = logging.getLogger("gaspar2.remote")

DEFAULT_HEARTBEAT = 1.0
MISSED_BEATS = 3                # silence for this many intervals means gone


class KeyRing:
    """The public keys one end accepts from the other (a ZAP credentials provider)."""

    def __init__(self, public_keys, what):
        self.keys = set(public_keys)
        self.what = what

    def callback(self, domain, key):
        if key in self.keys:
            return True
        log.warning("refused a %s with an unknown CURVE key %s", self.what, key.decode())
        return False


def generate_keys(directory, name):
    """Write NAME.key (public, to hand out) and NAME.key_secret into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    return zmq.auth.create_certificates(directory, name)


def load_secret(path):
    """(public, secret) from a .key_secret file."""
    public, secret = zmq.auth.load_certificate(path)
    if secret is None:
        raise ValueError("%s holds no secret key" % path)
    return public, secret


def load_public_keys(path):
    """Public keys from a .key file or from every .key file in a directory."""
    paths = [path]
    if os.path.isdir(path):
        paths = [os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith(".key")]
    return [zmq.auth.load_certificate(p)[0] for p in paths]


def start_authenticator(ctx, keyring):
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("gaspar2.zap"))
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=keyring)
    return auth


def is_loopback(endpoint):
    host = urllib.parse.urlsplit(endpoint).hostname or ""
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


class RemoteSink:
    """The producer's side: the endpoint remote workers join, and its authenticator."""

    def __init__(self, ctx, endpoint, secret_key_file=None, authorized=None, insecure=False):
        self.keys = None
        self.auth = None
        self.sock = ctx.socket(zmq.PULL)
        self.sock.linger = 0
        if secret_key_file:
            self.keys = load_secret(secret_key_file)
            allowed = load_public_keys(authorized) if authorized else []
            self.auth = start_authenticator(ctx, KeyRing(allowed, "remote worker"))
            self._make_server(self.sock)
            log.info("remote workers: CURVE on, %d worker keys accepted", len(allowed))
        elif not insecure and not is_loopback(endpoint):
            raise RuntimeError("remote workers on %s without CURVE keys: give a secret key and "
                               "the workers' public keys, or opt out explicitly" % endpoint)
        else:
            log.warning("remote workers on %s without CURVE: anyone who reaches it can join",
                        endpoint)
        self.sock.bind(endpoint)
        self.endpoint = self.sock.last_endpoint.decode()

    def _make_server(self, sock):
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = self.keys

    def connect_worker(self, ctx, endpoint, worker_key):
        """A PUSH to a remote worker that said HELLO from ``endpoint``."""
        push = ctx.socket(zmq.PUSH)
        push.linger = 0
        if self.keys is not None:
            push.curve_publickey, push.curve_secretkey = self.keys
            push.curve_serverkey = worker_key
        push.connect(endpoint)
        return push

    def close(self):
        if self.auth is not None:
            self.auth.stop()


class RemoteWorker(Worker):
    """A worker process on another machine."""

    def __init__(self, make_consumer, connect, listen_host, advertise_host, keys, server_key,
                 heartbeat, parent_pid):
        super().__init__(make_consumer, random.getrandbits(63), None, connect, parent_pid,
                         giveback_after=3600.0, progress=bytearray(framing.PROGRESS.size), slot=0)
        self.listen_host = listen_host
        self.advertise_host = advertise_host
        self.keys = keys                  # (public, secret) of this worker, or None
        self.server_key = server_key      # the producer's public key
        self.heartbeat = heartbeat

    def _connect(self, ctx):
        self.pull = ctx.socket(zmq.PULL)
        if self.keys is not None:
            self.auth = start_authenticator(ctx, KeyRing([self.server_key], "producer"))
            self.pull.curve_server = True
            self.pull.curve_publickey, self.pull.curve_secretkey = self.keys
        port = self.pull.bind_to_random_port("tcp://%s" % self.listen_host)
        self.endpoint = "tcp://%s:%d" % (self.advertise_host, port)
        self.push = self._pusher(ctx)
        self.watch_push = self._pusher(ctx)
        self._hello()

    def _pusher(self, ctx):
        push = ctx.socket(zmq.PUSH)
        push.linger = 1000
        if self.keys is not None:
            push.curve_publickey, push.curve_secretkey = self.keys
            push.curve_serverkey = self.server_key
        push.connect(self.sink)
        return push

    def _hello(self):
        head = framing.HELLO_FIELDS.pack(framing.HELLO, self.id, os.getpid())
        public = self.keys[0] if self.keys is not None else b""
        self.watch_push.send_multipart([head, self.endpoint.encode(), public])

    def _watch(self):
        """Heartbeats out; HELLO again whenever the producer has been silent too long."""
        beat = framing.KIND_ID.pack(framing.HEARTBEAT, self.id)
        while True:
            time.sleep(self.heartbeat)
            self.watch_push.send(beat)
            if time.monotonic() - self.contact > MISSED_BEATS * self.heartbeat:
                self._hello()


def serve_group(spec, connect, workers, listen_host, advertise_host, secret_key_file,
                server_key_file, heartbeat):
    """``gaspar2 worker --connect``: keep ``workers`` remote worker processes running."""
    from .consumer import as_consumer
    keys = load_secret(secret_key_file) if secret_key_file else None
    server_key = load_public_keys(server_key_file)[0] if server_key_file else None
    if advertise_host is None:
        advertise_host = route_address(connect)
    leader = os.getpid()

    def stop(signum, frame):
        raise GroupStop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    children = {}

    def spawn(n):
        pid = os.fork()
        if pid == 0:
            die_with_parent(leader)
            prepare_process("gaspar2 remote-worker %d %s" % (n, spec))
            worker = RemoteWorker(lambda: as_consumer(spec), connect, listen_host, advertise_host,
                                  keys, server_key, heartbeat, leader)
            os._exit(worker.run())
        children[pid] = n

    try:
        for n in range(1, workers + 1):
            spawn(n)
        log.info("%d remote workers for %s joining %s", workers, spec, connect)
        delay = 0.1
        while True:
            pid, status = os.wait()
            n = children.pop(pid, None)
            if n is None:
                continue
            log.warning("remote worker %d (pid %d) exited (status %d): starting another",
                        n, pid, status)
            time.sleep(delay)       # a worker that keeps failing is not re-forked in a loop
            delay = min(delay * 2, 10.0)
            spawn(n)
    except (GroupStop, ChildProcessError):
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    for _ in list(children):
        try:
            os.wait()
        except ChildProcessError:
            break
    return 0


class GroupStop(Exception):
    """TERM or INT reached the worker group's leader."""


def route_address(endpoint):
    """The local address this machine uses to reach ``endpoint``'s host."""
    parts = urllib.parse.urlsplit(endpoint)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((parts.hostname, parts.port or 9))
        return probe.getsockname()[0]
