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

A message is bounded as a whole while it is read (``BoundedReader``): libzmq hands one over
only once all its frames are in, and holds them until then, but the producer takes in at
most ``wire.MAX_FRAMES`` of them and ``wire.message_limit`` bytes, and throws the rest of a
longer one away a slice per look, so the loop serves its clients in between. What libzmq
holds before a message is whole is bounded only by who may connect: see the documentation,
"Remote workers: who may answer, and what bounds the endpoint".

A HELLO says the protocol version the worker speaks (none: version 1). One the producer does
not speak is refused, with a log line, and the worker is told why with a REFUSED instead
of a WELCOME (sent through the same bounded handshake, and so to an endpoint that passed
the same checks), so that the worker's own log shows it.

A HELLO names an endpoint for the producer to connect to, so it is a claim too. Handshakes
under way are bounded on their own (``Handshakes``): one per connection and one per
endpoint at a time, ``HANDSHAKES`` at most, each given up after ``HANDSHAKE_SECONDS``, and
an endpoint whose handshake was given up is refused for a while; they never hold a joined
worker's seat. An endpoint must be ``tcp://`` with a numeric address, not a wildcard,
broadcast or multicast one, and not one of the producer's own listening addresses
(``refusal``).
"""

from __future__ import annotations

import _socket
import ipaddress
import logging
import os
import secrets
import socket
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import zmq
from zmq.utils.monitor import parse_monitor_message

from ..frontend.budget import release_memory
from ..frontend.fds import FdReserve
from ..guard import Throttled
from ..protocol import curve, wire

log = logging.getLogger("gaspar2.remote")

PING_MS = 2000              # ZeroMQ's own heartbeat on the remote endpoint's connections
CONNECTIONS_PER_WORKER = 2  # a remote worker's two PUSH sockets
SPARE_CONNECTIONS = 16
BACKLOG = 32                # the endpoint's listen queue: what ZeroMQ may accept in one burst
MONITORED = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
RCVHWM = 4                  # whole messages queued per connection: a worker sends one at a time
DISCARD_SLICE = 4096        # frames taken off the endpoint per look (about 5 ms)
DISCARD_BYTES = 64 * 2**20  # bytes thrown away per look (freeing them costs about 5 ms)
TRIM_AFTER = 65536          # frames thrown away, past which freed memory is handed back
HANDSHAKES = 32             # handshakes under way at once, however many seats there are
HANDSHAKE_SECONDS = 2.0     # a handshake not complete by then is given up
REFUSE_FIRST = 30.0         # an endpoint whose handshake was given up is refused this long,
REFUSE_MOST = 300.0         # twice as long after each further one, up to this
REMEMBERED = 4096           # endpoints remembered that way, the oldest forgotten first
RECONNECT_MS = 1000         # a PUSH to a remote worker retries its connection this often
SRCFD = int(zmq.SRCFD)
REMOTE_IO = 2               # the ZeroMQ I/O thread of the endpoint and of PUSHes to its workers

Address = tuple[str, int]   # a numeric address as ipaddress writes it, and a port
T = TypeVar("T")


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


def parse_endpoint(endpoint: bytes | str) -> Address | None:
    """``tcp://ADDRESS:PORT`` with a numeric address (IPv6 in brackets), as
    (address, port); None for anything else, names included: a name would be resolved in
    ZeroMQ's I/O thread, and could name anything."""
    text = endpoint.decode("ascii", "replace") if isinstance(endpoint, bytes) else endpoint
    if not text.startswith("tcp://") or not text.isprintable() or " " in text:
        return None
    host, _, port = text[len("tcp://"):].rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None
    if not port.isdigit() or not 0 < int(port) < 65536 or len(port) > 5:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), int(port)


def is_local(host: str) -> bool:
    """Whether ``host`` is an address of this machine (one a socket may bind)."""
    address = ipaddress.ip_address(host.partition("%")[0])
    if address.is_loopback:
        return True
    family = _socket.AF_INET6 if address.version == 6 else _socket.AF_INET
    try:
        probe = _socket.socket(family, _socket.SOCK_DGRAM)
    except OSError:
        return False
    try:
        probe.bind((host, 0))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def refusal(address: Address, own: Iterable[Address],
            local: Callable[[str], bool] = is_local) -> str | None:
    """Why the producer must not connect to ``address`` (from ``parse_endpoint``), or None.
    ``own`` are the addresses it listens on; one that listens on a wildcard address is
    reached through every address of this machine."""
    host, port = address
    ip = ipaddress.ip_address(host.partition("%")[0])
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        return "a wildcard, broadcast or multicast address"
    for own_host, own_port in own:
        if own_port != port:
            continue
        if own_host.partition("%")[0] == host.partition("%")[0] or (
                ipaddress.ip_address(own_host.partition("%")[0]).is_unspecified and local(host)):
            return "one of this producer's own listening addresses"
    return None


class Handshakes(Generic[T]):
    """The handshakes under way, each an item (a joining member) under its worker id:
    ``limit`` at most, one per connection (the descriptor a HELLO came in on), each given up
    after ``timeout`` seconds. An endpoint whose handshake was given up is refused for
    ``refuse_first`` seconds, twice as long after each further one (up to ``refuse_most``),
    until a handshake with it completes. Pure bookkeeping: the caller connects and closes."""

    def __init__(self, limit: int = HANDSHAKES, timeout: float = HANDSHAKE_SECONDS,
                 refuse_first: float = REFUSE_FIRST, refuse_most: float = REFUSE_MOST,
                 remembered: int = REMEMBERED):
        self.limit = limit
        self.timeout = timeout
        self.refuse_first = refuse_first
        self.refuse_most = refuse_most
        self.remembered = remembered
        self.items: dict[int, tuple[int, Address, float, T]] = {}  # id -> source, address, since
        self.sources: dict[int, int] = {}                          # source -> id
        self.failed: dict[Address, tuple[float, float]] = {}       # -> refused until, for how long

    def __len__(self) -> int:
        return len(self.items)

    def get(self, worker_id: int) -> T | None:
        entry = self.items.get(worker_id)
        return None if entry is None else entry[3]

    def refusal(self, source: int, address: Address, now: float) -> str | None:
        """Why a handshake from ``source`` with ``address`` may not start now, or None."""
        failed = self.failed.get(address)
        if failed is not None and failed[0] > now:
            return "an endpoint whose last handshake did not complete (refused %.0f s more)" % (
                failed[0] - now)
        if source in self.sources:
            return "a second HELLO from one connection while its first is in a handshake"
        if len(self.items) >= self.limit:
            return "a HELLO while %d handshakes are under way" % len(self.items)
        return None

    def start(self, worker_id: int, source: int, address: Address, now: float, item: T) -> None:
        self.items[worker_id] = (source, address, now, item)
        self.sources[source] = worker_id

    def complete(self, worker_id: int) -> T | None:
        """The handshake of ``worker_id`` done: its item, and its endpoint in good standing."""
        entry = self._remove(worker_id)
        if entry is None:
            return None
        self.failed.pop(entry[1], None)
        return entry[3]

    def cancel(self, worker_id: int) -> T | None:
        entry = self._remove(worker_id)
        return None if entry is None else entry[3]

    def expire(self, now: float) -> list[tuple[Address, float, T]]:
        """Give up the handshakes older than ``timeout``: their (address, how long it will be
        refused, item)."""
        gone = []
        for worker_id, (_source, address, since, _item) in list(self.items.items()):
            if now - since >= self.timeout:
                item = self.cancel(worker_id)
                assert item is not None
                gone.append((address, self._failed(address, now), item))
        return gone

    def _failed(self, address: Address, now: float) -> float:
        last = self.failed.pop(address, None)
        refuse = self.refuse_first if last is None else min(2 * last[1], self.refuse_most)
        self.failed[address] = (now + refuse, refuse)     # the newest last
        while len(self.failed) > self.remembered:
            del self.failed[next(iter(self.failed))]
        return refuse

    def _remove(self, worker_id: int) -> tuple[int, Address, float, T] | None:
        entry = self.items.pop(worker_id, None)
        if entry is not None and self.sources.get(entry[0]) == worker_id:
            del self.sources[entry[0]]
        return entry


class BoundedReader:
    """Reads the remote endpoint a frame at a time, so that a message is bounded as a whole
    (``wire.MAX_FRAMES`` frames, ``max_bytes``) before all its frames are taken in; the rest
    of one past the bounds is thrown away, at most ``DISCARD_SLICE`` frames (and about
    ``DISCARD_BYTES``) per look (a look is one wake-up of the sink; ``look`` starts one)."""

    def __init__(self, sock: zmq.SyncSocket, max_bytes: int, logger: Throttled):
        self.sock = sock
        self.max_bytes = max_bytes
        self.throttled = logger
        self.left = DISCARD_SLICE       # frames this look may still take
        self.discarding = False         # in the middle of a message past the bounds
        self.thrown = self.thrown_bytes = 0
        self.trim = False               # a long message was thrown away: hand memory back

    def look(self) -> None:
        self.left = DISCARD_SLICE

    def read(self) -> list[zmq.Frame] | None:
        """The next message, whole; None when no message is waiting, or when this look's
        slice is spent (``discarding`` then says more is waiting). A message past the
        bounds raises ``wire.BadMessage`` as soon as it is; its rest is thrown away by this
        call and the next ones."""
        if self.discarding and not self._discard():
            return None
        sock = self.sock
        try:
            frame = sock.recv(wire.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        frames = [frame]
        size = len(frame)
        while frame.more:
            if len(frames) >= wire.MAX_FRAMES or size > self.max_bytes:
                self.left -= len(frames)
                self.discarding = True
                self.thrown, self.thrown_bytes = len(frames), size
                raise wire.BadMessage("a message of more than %d frames or %d bytes (thrown "
                                      "away as it is read)" % (wire.MAX_FRAMES, self.max_bytes))
            frame = sock.recv(wire.NOBLOCK, copy=False)
            frames.append(frame)
            size += len(frame)
        self.left -= len(frames)
        if size > self.max_bytes:
            raise wire.BadMessage("a message of %d bytes, over %d" % (size, self.max_bytes))
        return frames

    def _discard(self) -> bool:
        """Throw away what this look's slice allows of the message past the bounds; True
        once all of it is gone. ZeroMQ delivers a message whole, so its rest is waiting."""
        sock, left, size = self.sock, self.left, 0
        ended = False
        while left > 0 and size < DISCARD_BYTES:
            try:
                frame = sock.recv(wire.NOBLOCK, copy=False)
            except zmq.Again:
                ended = True
                break
            left -= 1
            size += len(frame)
            if not frame.more:
                ended = True
                break
        self.thrown += self.left - left
        self.thrown_bytes += size
        self.left = left
        if ended:
            self.discarding = False
            self.trim = self.trim or self.thrown >= TRIM_AFTER or self.thrown_bytes > self.max_bytes
            self.throttled.log(logging.WARNING, "thrown", "remote endpoint: threw away a message "
                               "of %d frames, %d bytes", self.thrown, self.thrown_bytes)
        return ended


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
        self.sock.rcvhwm = RCVHWM
        self.sock.affinity = REMOTE_IO
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
        self.address = parse_endpoint(self.endpoint)
        self.reader = BoundedReader(self.sock, wire.message_limit(max_message_size),
                                    self.throttled)

    @property
    def curve(self) -> bool:
        return self.keys is not None

    def connect_worker(self, ctx: zmq.SyncContext, endpoint: str,
                       worker_key: bytes) -> zmq.SyncSocket:
        """A PUSH to a remote worker that said HELLO from ``endpoint``."""
        push = ctx.socket(zmq.PUSH)
        wire.limit_peer(push, self.max_message_size)
        push.reconnect_ivl = RECONNECT_MS       # a handful of tries while a handshake lasts
        push.affinity = REMOTE_IO
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

    def __init__(self, worker_id: int, pid: int, endpoint: str, address: Address, key: bytes,
                 push: zmq.SyncSocket, now: float):
        self.id = worker_id
        self.pid = pid
        self.endpoint = endpoint        # as it said it (checked by parse_endpoint)
        self.address = address
        self.key = key
        self.push = push
        self.token = secrets.randbits(64) | 1
        self.joined = False
        self.refused: str | None = None     # why its protocol version is refused
        self.heard = self.pinged = now

    def __repr__(self) -> str:
        return "worker %x (remote pid %s)" % (self.id, self.pid)


def source_of(frame: zmq.Frame | bytes) -> int:
    """The descriptor of the connection a message came in on (ZeroMQ's ``SRCFD``); -1 when
    it is not known."""
    try:
        return int(frame.get(SRCFD))  # type: ignore[union-attr]
    except (zmq.ZMQError, AttributeError, TypeError, ValueError):
        return -1


def address_of(sock: Any) -> Address | None:
    """What a listening socket is bound to, as ``parse_endpoint`` writes it."""
    try:
        name = sock.getsockname()
        host = ipaddress.ip_address(name[0])
    except (OSError, AttributeError, TypeError, ValueError, IndexError):
        return None     # a unix socket, or closed
    if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
        host = host.ipv4_mapped
    return str(host), int(name[1])


class RemoteMembers:
    """Who has joined through the remote sink, and who is joining; reports joins and losses
    like a supervisor."""

    def __init__(self, events: Any, ctx: zmq.SyncContext, sink: RemoteSink, heartbeat: float,
                 max_workers: int = 256, max_reply_size: int = wire.DEFAULT_MAX_MESSAGE_SIZE,
                 listening: Callable[[], Iterable[Any]] | None = None):
        self.events = events            # worker_ready(member), worker_lost(member, ...)
        self.ctx = ctx
        self.sink = sink
        self.heartbeat = heartbeat
        self.max_workers = max_workers
        self.max_reply_size = max_reply_size
        self.listening = listening      # the producer's other listening sockets
        self.members: dict[int, RemoteMember] = {}      # joined
        self.handshakes: Handshakes[RemoteMember] = Handshakes(max(1, min(HANDSHAKES,
                                                                          max_workers)))
        self.endpoints: dict[Address, int] = {}          # joined or joining: whose
        self.throttled = Throttled(log)

    def hello(self, message: wire.Message, user_id: str | None, now: float) -> None:
        """A HELLO: start a handshake with a newcomer, or welcome again one that said it."""
        if len(message.frames) < 3 or message.worker_id < wire.REMOTE_ID_MIN:
            self._refuse("a HELLO without an endpoint, or with a local worker's id")
            return
        endpoint = wire.frame_bytes(message.frames[1])
        key = wire.frame_bytes(message.frames[2])
        if self.sink.curve and user_id != key.decode():
            self._refuse("a HELLO whose key is not the one it authenticated with")
            return
        worker_id = message.worker_id
        version = wire.hello_version(message.frames)
        member = self.members.get(worker_id) or self.handshakes.get(worker_id)
        if member is not None:
            if (member.endpoint, member.key) == (endpoint.decode(), key):
                if member.joined and version not in wire.VERSIONS:
                    self._refuse("a HELLO from joined %r saying protocol version %d"
                                 % (member, version))
                    return
                if member.joined:
                    member.heard = now  # it had not heard from us: welcome it again
                self._welcome(member)
            else:
                self._refuse("a HELLO for a known worker from another endpoint or key")
            return
        if len(self.members) >= self.max_workers:
            self._refuse("a HELLO past max_remote_workers (%d)" % self.max_workers)
            return
        address = parse_endpoint(endpoint)
        if address is None:
            self._refuse("a HELLO naming %r: not tcp:// with a numeric address" % endpoint[:64])
            return
        why = (self.handshakes.refusal(source_of(message.frames[0]), address, now)
               or ("an endpoint already joined or in a handshake" if address in self.endpoints
                   else None)
               or refusal(address, self._own()))
        if why is not None:
            self._refuse("a HELLO naming %r: %s" % (endpoint.decode(), why))
            return
        refused = None
        if version not in wire.VERSIONS:
            refused = ("protocol version %d, and this producer speaks %s"
                       % (version, ", ".join(map(str, wire.VERSIONS))))
            self.throttled.log(logging.WARNING, "version", "remote endpoint: refused the "
                               "worker at %s: %s", endpoint.decode(), refused)
        self._admit(worker_id, message.field, endpoint.decode(), address, key,
                    source_of(message.frames[0]), now, refused)

    def _own(self) -> list[Address]:
        """Every address this producer listens on."""
        own = [self.sink.address] if self.sink.address is not None else []
        for sock in self.listening() if self.listening is not None else ():
            address = address_of(sock)
            if address is not None:
                own.append(address)
        return own

    def _admit(self, worker_id: int, pid: int, endpoint: str, address: Address, key: bytes,
               source: int, now: float, refused: str | None = None) -> None:
        """Start a handshake: the worker is sent its WELCOME, or, if ``refused`` says why,
        a REFUSED, and the handshake then lapses like one never answered."""
        if self.sink.fds is not None and self.sink.fds.short():
            self._refuse("a HELLO while short of file descriptors (it will say it again)")
            return
        host, port = address
        try:
            push = self.sink.connect_worker(
                self.ctx, "tcp://%s:%d" % ("[%s]" % host if ":" in host else host, port), key)
        except zmq.ZMQError as exc:
            self._refuse("a HELLO from %s: %s (it will say it again)" % (endpoint, exc))
            return
        member = RemoteMember(worker_id, pid, endpoint, address, key, push, now)
        member.refused = refused
        self.handshakes.start(worker_id, source, address, now, member)
        self.endpoints[address] = worker_id
        self._welcome(member)

    def _welcome(self, member: RemoteMember) -> None:
        frames = (wire.encode_refused(member.refused) if member.refused is not None
                  else wire.encode_welcome(member.token, self.max_reply_size))
        try:
            wire.send_frames(member.push, frames, wire.NOBLOCK)
        except zmq.Again:
            pass

    def _refuse(self, what: str) -> None:
        self.throttled.log(logging.WARNING, "refused", "remote endpoint: ignored %s", what)

    def authentic(self, message: wire.Message, user_id: str | None, now: float) -> bool:
        """Whether ``message`` comes from the joined (or joining) worker it names. The first
        one from a member in a handshake completes its join."""
        member = self.members.get(message.worker_id)
        if member is None:
            member = self.handshakes.get(message.worker_id)
            if member is None or member.token != message.token or member.refused is not None:
                return False
            if self.sink.curve and user_id != member.key.decode():
                return False
            return self._join(member, now)
        if member.token != message.token:
            return False
        if self.sink.curve and user_id != member.key.decode():
            return False
        member.heard = now
        return True

    def _join(self, member: RemoteMember, now: float) -> bool:
        if len(self.members) >= self.max_workers:
            self.handshakes.cancel(member.id)
            self._forget(member)
            self._refuse("a join past max_remote_workers (%d)" % self.max_workers)
            return False
        self.handshakes.complete(member.id)
        member.joined = True
        member.heard = now
        self.members[member.id] = member
        log.info("remote %r joined from %s", member, member.endpoint)
        self.events.worker_ready(member)
        return True

    def _forget(self, member: RemoteMember) -> None:
        if self.endpoints.get(member.address) == member.id:
            del self.endpoints[member.address]
        member.push.close()

    def check(self, now: float) -> None:
        """Give up stale handshakes; ping members; drop those silent for ``MISSED_BEATS``
        heartbeats; hand back the memory a long hostile message left."""
        for _address, refused, member in self.handshakes.expire(now):
            self._forget(member)
            if member.refused is not None:
                continue        # logged when refused
            self.throttled.log(logging.WARNING, "given up", "remote endpoint: no answer from "
                               "%s within %.0f s of its HELLO: refusing it for %.0f s",
                               member.endpoint, self.handshakes.timeout, refused)
        for member in list(self.members.values()):
            if now - member.heard > wire.MISSED_BEATS * self.heartbeat:
                del self.members[member.id]
                cause = "missed %d heartbeats (%.1f s)" % (wire.MISSED_BEATS, now - member.heard)
                self.events.worker_lost(member, cause, "heartbeat", None)
                self._forget(member)
            elif now - member.pinged >= self.heartbeat:
                member.pinged = now
                try:
                    wire.send_batch(member.push, [], [])       # an empty batch: a ping
                except zmq.Again:
                    pass
        if self.sink.reader.trim:
            self.sink.reader.trim = False
            release_memory()

    def ready_count(self) -> int:
        return len(self.members)
