"""Wire formats: the client frame, the messages between the producer and its workers, and
the fork server's control channel.

Every decode here validates what it is given: a peer's message is a claim, and a malformed
one is reported as data (``FrameError.kind``, ``BadMessage``), never as text to match.

Client frame: a 4-byte unsigned length in network byte order, then that many payload bytes.

Producer -> worker, one ZeroMQ frame per batch, whatever its size: the kind ``B``, the epoch
and the first sequence number the batch is sent with (see progress.py), the count, one
unsigned 64-bit request id and one 32-bit length per payload, then the payloads. A frame whose
lengths do not add up to its size exactly, or a batch in more than one frame, is refused: no
transport fault can make a request of another's bytes. Sends always copy: pyzmq's zero-copy
send starts a thread at its first use, and a watcher callback must not (a body large enough
to be worth not copying goes through the shared arena instead). A control message is
``[kind, body]`` with a one-byte first frame: ``WELCOME`` answers a remote worker's HELLO.

Worker -> producer, on a sink: a head that starts with the kind (one byte), the sending
worker's id and its token (what proves it is that worker, see producer/path.py), then the kind's
own fields (see ``HEADS``). A kind with a body (``BODIED``) carries it after the head in the
same frame (a producer also takes it as a second frame).

The remote part of this protocol is specified, with its version rule, in the documentation
(``docs/reference/worker-protocol.rst``): a change to it changes that page too.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import zmq

HEADER = struct.Struct("!I")
MAX_LENGTH = 2**32 - 1
DEFAULT_MAX_MESSAGE_SIZE = 64 * 2**20

# Worker -> producer message kinds (the first byte of the head). Every head names the
# sending worker and carries its token: (kind, worker id, token, fields...).
HELLO = b"H"      # fields: pid. The worker is connected both ways and ready. A remote worker
                  # adds two frames: the endpoint it listens on, its public key (or empty),
                  # and may add a third: the protocol version it speaks (none: version 1).
HEARTBEAT = b"P"  # no fields. A remote worker is alive.
REPLY = b"R"      # fields: request id; body: the reply.
SHARED_REPLY = b"S"   # fields: request id; body: the size of the reply the worker wrote over
                      # the request's body in shared memory (see arena.py).
ERROR = b"E"      # fields: request id; body: the handler's traceback, UTF-8.

HEADS = {
    HELLO: struct.Struct("!cQQI"),
    HEARTBEAT: struct.Struct("!cQQ"),
    REPLY: struct.Struct("!cQQQ"),
    SHARED_REPLY: struct.Struct("!cQQQ"),
    ERROR: struct.Struct("!cQQQ"),
}
FRAME_COUNTS = {HELLO: (1, 3, 4), HEARTBEAT: (1,), REPLY: (1, 2), SHARED_REPLY: (1, 2),
                ERROR: (1, 2)}
BODIED = (REPLY, SHARED_REPLY, ERROR)
SIZE = struct.Struct("!Q")
MAX_ENDPOINT = 255          # bytes of a remote worker's tcp:// endpoint
KEY_SIZES = (0, 40)         # a remote worker's public key: none, or Z85 text

# Producer -> worker control messages: [kind, body, ...].
WELCOME = b"W"              # body: the worker's token, the largest reply it may send
WELCOME_BODY = struct.Struct("!QQ")
REFUSED = b"N"              # frames: the versions the producer speaks, why it refused (UTF-8)

# The remote worker protocol's version (see docs/reference/worker-protocol.rst): a HELLO
# without one is version 1, today's format, so that every worker that joined before keeps
# joining.
VERSION = struct.Struct("!H")
PROTOCOL_VERSION = 1        # what this side says
VERSIONS = (1,)             # what a producer accepts
MAX_REASON = 1024           # bytes of a refusal's reason

MISSED_BEATS = 3    # a remote worker silent for this many heartbeat intervals is gone
REMOTE_ID_MIN = 1 << 32     # remote worker ids are at least this; local ones are small
HEADROOM = 64 * 1024        # a message may exceed max_message_size by its head
HANDSHAKE_MS = 5000         # a connection that has not completed its handshake by then is cut
MAX_FRAMES = max(max(counts) for counts in FRAME_COUNTS.values())  # of any worker message
FIELDS_ROOM = 1024          # a head, or a HELLO's endpoint and key, besides the largest frame


def message_limit(max_message_size: int) -> int:
    """The most bytes a worker message has in all its frames together: its largest frame
    (ZeroMQ refuses one over ``max_message_size + HEADROOM``) and a head or a HELLO's fields."""
    return max_message_size + HEADROOM + FIELDS_ROOM


# Plain ints: pyzmq's enum flags cost a Python-level operation on every call.
SNDMORE, NOBLOCK = int(zmq.SNDMORE), int(zmq.NOBLOCK)
EVENTS, POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
# A socket's EVENTS as an int, from pyzmq's compiled base: its Python wrapper costs two
# Python calls (an enum lookup) on every look at a sink.
EVENTS_OF: Callable[[Any, int], int | bytes] = zmq.backend.Socket.get


# -- the client frame -------------------------------------------------------------------------

class FrameError(Exception):
    """The client sent something that is not one valid frame; ``kind`` says what."""

    CLOSED = "closed"          # EOF before the frame was whole: ``got`` of ``expected`` bytes
    TOO_LONG = "too_long"      # a length over the limit: ``got`` the length, ``expected`` the limit
    TRAILING = "trailing"      # ``got`` bytes after the frame

    def __init__(self, kind: str, got: int = 0, expected: int = 0, in_header: bool = False):
        self.kind, self.got, self.expected, self.in_header = kind, got, expected, in_header
        super().__init__(self._describe())

    @property
    def is_probe(self) -> bool:
        """Connected and closed without a byte: a port probe or a health check."""
        return self.kind == self.CLOSED and self.in_header and self.got == 0

    def _describe(self) -> str:
        if self.kind == self.CLOSED:
            part = "header" if self.in_header else "payload"
            return "closed after %d of %d %s bytes" % (self.got, self.expected, part)
        if self.kind == self.TOO_LONG:
            return "length %d is over max_message_size %d" % (self.got, self.expected)
        return "%d bytes after the frame" % self.got


def pack(message: bytes | bytearray | memoryview | str) -> bytes:
    """Prefix ``message`` (bytes-like, or str sent as UTF-8) with its length."""
    if isinstance(message, str):
        message = message.encode("utf-8")
    if len(message) > MAX_LENGTH:
        raise ValueError("message of %d bytes does not fit a 4-byte length" % len(message))
    return HEADER.pack(len(message)) + bytes(message)


def unix_path(address: str) -> str | None:
    """The socket name of ``unix:PATH``, or of ``unix:@NAME`` (Linux's abstract namespace:
    returned with its leading NUL); None for any other address. The server binds and the
    clients connect by the same reading."""
    if not address.startswith("unix:"):
        return None
    path = address[len("unix:"):]
    if not path or path == "@":
        raise ValueError("unix: needs a path or @NAME: unix:/run/gaspar2.sock, got %r"
                         % (address,))
    return "\0" + path[1:] if path.startswith("@") else path


# -- ZeroMQ messages between the producer and its workers ------------------------------------

Data = bytes | bytearray | memoryview       # what a frame is made of
Frames = Sequence[zmq.Frame | bytes]        # a message's frames, as received


def recv_frames(sock: zmq.SyncSocket, flags: int = 0) -> list[zmq.Frame]:
    """One multipart ZeroMQ message as zmq.Frame objects (recv_multipart without the
    per-part option lookups)."""
    return with_rest(sock, sock.recv(flags, copy=False))


def with_rest(sock: zmq.SyncSocket, first: zmq.Frame) -> list[zmq.Frame]:
    """``first`` and the parts after it: ZeroMQ delivers a message whole, so they are in."""
    frames = [first]
    frame = first
    while frame.more:
        frame = sock.recv(NOBLOCK, copy=False)
        frames.append(frame)
    return frames


def send_frames(sock: zmq.SyncSocket, frames: Sequence[Data | zmq.Frame],
                flags: int = 0) -> None:
    """send_multipart with plain int flags, always copying (see the module's docstring).
    ZeroMQ takes or refuses a message whole on its first part, so only that one can raise
    zmq.Again."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, flags | SNDMORE if i < last else flags)


class Layouts(dict[int, struct.Struct]):
    """``struct.Struct(fmt.format(n))`` by count ``n``, made once: a message's layout is
    looked up, not formatted and parsed, per message. A window bounds the counts that recur;
    at most 1024 are kept, so a peer's odd counts cannot grow it."""

    def __init__(self, fmt: str):
        super().__init__()
        self.fmt = fmt

    def __missing__(self, count: int) -> struct.Struct:
        layout = struct.Struct(self.fmt.format(count))
        if len(self) < 1024:
            self[count] = layout
        return layout


BATCH = b"B"
BATCH_HEAD = Layouts("!cQQI{0}Q{0}I")   # kind, epoch, seq, count, ids, lengths
BATCH_FIXED = struct.Struct("!cQQI")    # kind, epoch, the first request's seq, count
BATCH_FIELDS = Layouts("!{0}Q{0}I")     # ids, lengths
FIXED, BATCH_KIND = BATCH_FIXED.size, BATCH[0]
ONE_HEAD = BATCH_HEAD[1]                # a batch of one: its head ...
ONE_SIZE = ONE_HEAD.size + FIXED        # ... and its end, around the payload
FRAME = zmq.Frame
PER_REQUEST = 12                        # bytes of a request's id and length in the head
SHARED_BIT = 1 << 63               # set in a batch's id: its frame is a body's place in the arena
Batch = list[tuple[int, int, int, memoryview, bool]]


def send_batch(sock: zmq.SyncSocket, ids: list[int], payloads: Sequence[Data], epoch: int = 0,
               seq: int = 0) -> None:
    """Producer -> worker: requests in one frame. Raises zmq.Again if it cannot take it."""
    sock.send(encode_batch(ids, payloads, epoch, seq), NOBLOCK)


def encode_batch(ids: list[int], payloads: Sequence[Data], epoch: int = 0,
                 seq: int = 0) -> bytes:
    count = len(ids)
    head = BATCH_HEAD[count].pack(BATCH, epoch, seq, count, *ids, *map(len, payloads))
    return b"".join([head, *payloads, head[:FIXED]])


def decode_batch(frames: Frames) -> Batch:
    """Worker side of ``send_batch``: (epoch, seq, request id, payload, shared) each;
    ``shared`` (``SHARED_BIT`` in the id) says the payload names the body's place in the
    shared arena (see arena.py). Refuses anything but one frame that adds up exactly."""
    if len(frames) != 1:
        raise BadMessage("a batch in %d frames" % len(frames))
    frame = frames[0]
    view = frame.buffer if isinstance(frame, FRAME) else memoryview(frame)
    size = len(view)
    if size >= ONE_SIZE:        # one request, the common case: its whole head in one read
        kind, epoch, seq, count, rid, length = ONE_HEAD.unpack_from(view)
        if (count == 1 and kind == BATCH and size == ONE_SIZE + length
                and view[:FIXED] == view[size - FIXED:]):
            body = view[ONE_HEAD.size:size - FIXED]
            if rid < SHARED_BIT:
                return [(epoch, seq, rid, body, False)]
            return [(epoch, seq, rid - SHARED_BIT, body, True)]
    if size < 2 * FIXED or view[0] != BATCH_KIND:
        raise BadMessage("not a batch: %r" % bytes(view[:FIXED]))
    _, epoch, seq, count = BATCH_FIXED.unpack_from(view)
    at = FIXED + PER_REQUEST * count
    if at + FIXED > size:
        raise BadMessage("a batch of %d requests in %d bytes" % (count, size))
    fields = BATCH_FIELDS[count].unpack_from(view, FIXED)
    if at + sum(fields[count:]) + FIXED != size:
        raise BadMessage("a batch whose lengths do not add up to its size")
    if view[:FIXED] != view[-FIXED:]:
        raise BadMessage("a batch whose end does not repeat its start")
    batch = []
    for i in range(count):
        end = at + fields[count + i]
        rid = fields[i]
        batch.append((epoch, seq + i, rid & ~SHARED_BIT, view[at:end], rid >= SHARED_BIT))
        at = end
    return batch


class BadMessage(Exception):
    """A message on a sink that is not one of ours: dropped, never acted on."""


class Message(NamedTuple):
    """One decoded worker message: ``field`` is the pid (HELLO) or a request id; ``body`` is
    a ``BODIED`` kind's body, wherever it travelled."""

    kind: bytes
    worker_id: int
    token: int
    field: int
    frames: Frames
    body: memoryview | None = None


def encode_head(kind: bytes, worker_id: int, token: int, field: int | None = None) -> bytes:
    head = HEADS[kind]
    if field is None:
        return head.pack(kind, worker_id, token)
    return head.pack(kind, worker_id, token, field)


def frame_bytes(frame: zmq.Frame | bytes) -> bytes:
    return frame.bytes if isinstance(frame, zmq.Frame) else bytes(frame)


def frame_view(frame: zmq.Frame | bytes) -> memoryview:
    return frame.buffer if isinstance(frame, zmq.Frame) else memoryview(frame)


def decode(frames: Frames) -> Message:
    """Validate and decode one message from a sink; BadMessage says what is wrong."""
    frame = frames[0]
    first = frame.buffer if isinstance(frame, zmq.Frame) else memoryview(frame)
    kind = bytes(first[:1])
    layout = HEADS.get(kind)
    if layout is None:
        raise BadMessage("unknown kind %r" % kind)
    if len(frames) not in FRAME_COUNTS[kind]:
        raise BadMessage("a %r message of %d frames" % (kind, len(frames)))
    inline = kind in BODIED and len(frames) == 1        # the body follows the head
    if len(first) < layout.size or (len(first) > layout.size and not inline):
        raise BadMessage("a %r head of %d bytes, not %d" % (kind, len(first), layout.size))
    body = first[layout.size:] if inline else frame_view(frames[1]) if kind in BODIED else None
    if kind == HELLO and len(frames) > 1:
        check_hello(frame_bytes(frames[1]), frame_bytes(frames[2]))
        hello_version(frames)
    fields = layout.unpack_from(first)
    # tuple.__new__ builds the same Message without the Python frame of its generated __new__.
    return tuple.__new__(Message, (kind, fields[1], fields[2], fields[3] if len(fields) > 3
                                   else 0, frames, body))


def check_hello(endpoint: bytes, key: bytes) -> None:
    """A remote worker's endpoint is ``tcp://HOST:PORT`` in ASCII; its key empty or Z85."""
    if (len(endpoint) > MAX_ENDPOINT or not endpoint.startswith(b"tcp://")
            or not endpoint.isascii() or not endpoint.rpartition(b":")[2].isdigit()):
        raise BadMessage("a HELLO with the endpoint %r" % endpoint[:64])
    if len(key) not in KEY_SIZES or not key.isascii():
        raise BadMessage("a HELLO with a key of %d bytes" % len(key))


def hello_version(frames: Frames) -> int:
    """The protocol version a remote HELLO says: 1 when it says none (three frames, the
    format of the first release); a version frame must be two bytes."""
    if len(frames) < 4:
        return 1
    version = frame_bytes(frames[3])
    if len(version) != VERSION.size:
        raise BadMessage("a HELLO with a version of %d bytes, not %d"
                         % (len(version), VERSION.size))
    return int(VERSION.unpack(version)[0])


def encode_hello(worker_id: int, token: int, pid: int, endpoint: str, key: bytes,
                 version: int | None = PROTOCOL_VERSION) -> list[bytes]:
    """A remote worker's HELLO; ``version=None`` leaves the version out (version 1)."""
    frames = [encode_head(HELLO, worker_id, token, pid), endpoint.encode("ascii"), key]
    if version is not None:
        frames.append(VERSION.pack(version))
    return frames


def encode_refused(reason: str, versions: Sequence[int] = VERSIONS) -> list[bytes]:
    return [REFUSED, b"".join(VERSION.pack(v) for v in versions),
            reason.encode("utf-8", "replace")[:MAX_REASON]]


def decode_refused(frames: Frames) -> tuple[list[int], str]:
    """(the versions the producer speaks, its reason) from a REFUSED."""
    if len(frames) != 3 or frame_bytes(frames[0]) != REFUSED:
        raise BadMessage("not a refusal")
    versions = frame_bytes(frames[1])
    reason = frame_bytes(frames[2])
    if len(versions) % VERSION.size or len(reason) > MAX_REASON:
        raise BadMessage("a refusal of %d and %d bytes" % (len(versions), len(reason)))
    return ([int(v) for (v,) in VERSION.iter_unpack(versions)],
            reason.decode("utf-8", "replace"))


def encode_welcome(token: int, max_reply_size: int) -> list[bytes]:
    return [WELCOME, WELCOME_BODY.pack(token, max_reply_size)]


def is_control(frames: Frames) -> bool:
    """A producer -> worker control message, not a batch (of 42 + 12n bytes or more)."""
    return len(frames[0]) == 1


def decode_welcome(frames: Frames) -> tuple[int, int]:
    """(token, max reply size) from a WELCOME."""
    if len(frames) != 2 or frame_bytes(frames[0]) != WELCOME:
        raise BadMessage("not a welcome")
    body = frame_bytes(frames[1])
    if len(body) != WELCOME_BODY.size:
        raise BadMessage("a welcome of %d bytes" % len(body))
    token, max_reply_size = WELCOME_BODY.unpack(body)
    return token, max_reply_size


def reply_endpoint(ipc_dir: str, worker_id: int) -> str:
    """Where a local worker's PUSH binds: the producer's sink connects to it."""
    return "ipc://%s/r%d" % (ipc_dir, worker_id)


def worker_endpoint(ipc_dir: str, worker_id: int) -> str:
    """Where a local worker's PULL binds: the producer's PUSH to it connects there."""
    return "ipc://%s/w%d" % (ipc_dir, worker_id)


def limit_peer(sock: zmq.SyncSocket, max_message_size: int) -> None:
    """Options of every ZeroMQ socket that faces the network."""
    sock.linger = 0
    sock.maxmsgsize = max_message_size + HEADROOM
    sock.handshake_ivl = HANDSHAKE_MS


# -- the fork server's control channel -------------------------------------------------------

# One fixed-size record per message: kind, worker id, two numbers.
SPAWN = 1      # producer -> fork server: worker id, its progress slot
KILL = 2       # producer -> fork server: worker id, signal number
SPAWNED = 3    # fork server -> producer: worker id, pid
EXITED = 4     # fork server -> producer: worker id, pid, wait status
RECORD = struct.Struct("!BQqq")


def encode_record(kind: int, worker_id: int, a: int = 0, b: int = 0) -> bytes:
    return RECORD.pack(kind, worker_id, a, b)


class RecordReader:
    """Splits a stream of channel bytes into records, across reads of any size."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[tuple[int, int, int, int]]:
        self.buffer += data
        whole = len(self.buffer) - len(self.buffer) % RECORD.size
        records = [RECORD.unpack_from(self.buffer, at) for at in range(0, whole, RECORD.size)]
        self.buffer = self.buffer[whole:]
        return records
