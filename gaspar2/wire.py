"""Wire formats: the client frame, the messages between the producer and its workers, and
the fork server's control channel.

Every decode here validates what it is given: a peer's message is a claim, and a malformed
one is reported as data (``FrameError.kind``, ``BadMessage``), never as text to match.

Client frame: a 4-byte unsigned length in network byte order, then that many payload bytes.

Producer -> worker, one ZeroMQ message per batch. Its head packs the epoch and the first
sequence number the batch is sent with (see progress.py), then one unsigned 64-bit request id
per payload. Small batches are one frame, ``head + count + lengths + payloads`` (every ZeroMQ
part costs a call on both sides); a batch carrying a large payload is ``[head, payload, ...]``
so that each large payload goes without a copy. A control message is ``[kind, body]`` with a
one-byte first frame: ``WELCOME`` answers a remote worker's HELLO.

Worker -> producer, on a sink: a head that starts with the kind (one byte), the sending
worker's id and its token (what proves it is that worker, see pipeline.py), then the kind's
own fields (see ``HEADS``). A kind with a body (``BODIED``) carries it after the head in the
same frame, or, when large, as a second frame.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import zmq

HEADER = struct.Struct("!I")
MAX_LENGTH = 2**32 - 1
DEFAULT_MAX_MESSAGE_SIZE = 64 * 2**20

# Worker -> producer message kinds (the first byte of the head). Every head names the
# sending worker and carries its token: (kind, worker id, token, fields...).
HELLO = b"H"      # fields: pid. The worker is connected both ways and ready. A remote worker
                  # adds two frames: the endpoint it listens on, its public key (or empty).
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
FRAME_COUNTS = {HELLO: (1, 3), HEARTBEAT: (1,), REPLY: (1, 2), SHARED_REPLY: (1, 2),
                ERROR: (1, 2)}
BODIED = (REPLY, SHARED_REPLY, ERROR)
SIZE = struct.Struct("!Q")
MAX_ENDPOINT = 255          # bytes of a remote worker's tcp:// endpoint
KEY_SIZES = (0, 40)         # a remote worker's public key: none, or Z85 text

# Producer -> worker control messages: [kind, body].
WELCOME = b"W"              # body: the worker's token, the largest reply it may send
WELCOME_BODY = struct.Struct("!QQ")

MISSED_BEATS = 3    # a remote worker silent for this many heartbeat intervals is gone

# Plain ints: pyzmq's enum flags cost a Python-level operation on every call.
SNDMORE, NOBLOCK = int(zmq.SNDMORE), int(zmq.NOBLOCK)
EVENTS, POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
# Below this many bytes, copying into a ZeroMQ message is cheaper than a zero-copy send.
ZERO_COPY_MIN = 64 * 1024
ID = struct.Struct("!Q")


# -- the client frame -------------------------------------------------------------------------

class FrameError(Exception):
    """The client sent something that is not one valid frame; ``kind`` says what."""

    CLOSED = "closed"          # EOF before the frame was whole: ``got`` of ``expected`` bytes
    TOO_LONG = "too_long"      # a length over the limit: ``got`` is the length, ``expected`` the limit
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


# -- ZeroMQ messages between the producer and its workers ------------------------------------

def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """One multipart ZeroMQ message as zmq.Frame objects (recv_multipart without the
    per-part option lookups)."""
    frame = sock.recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = sock.recv(flags, copy=False)
        frames.append(frame)
    return frames


def send_frames(sock: zmq.Socket, frames: list, flags: int = 0, copy: bool = True) -> None:
    """send_multipart with plain int flags. ZeroMQ takes or refuses a message whole on its
    first part, so only that one can raise zmq.Again."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, flags | SNDMORE if i < last else flags, copy=copy)


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


IDS = Layouts("!{}Q")
PACKED_HEAD = Layouts("!QQI{0}Q{0}I")   # epoch, seq, count, ids, lengths
PACKED_FIELDS = Layouts("!{0}Q{0}I")    # ids, lengths


def pack_ids(ids: list[int] | tuple[int, ...]) -> bytes:
    return IDS[len(ids)].pack(*ids)


def unpack_ids(data: bytes, offset: int = 0) -> tuple[int, ...]:
    size = len(data) - offset
    if size % ID.size:
        raise BadMessage("an id list of %d bytes" % size)
    return IDS[size // ID.size].unpack_from(data, offset)


BATCH = struct.Struct("!QQ")       # epoch, the first request's sequence number
PACKED = struct.Struct("!QQI")     # the same, and how many requests the frame packs
SHARED_BIT = 1 << 63               # set in a batch's id: its frame is a body's place in the arena
Batch = list[tuple[int, int, int, memoryview, bool]]


def send_batch(sock: zmq.Socket, ids: list[int], payloads: list, epoch: int = 0,
               seq: int = 0) -> None:
    """Producer -> worker: requests in one message. Raises zmq.Again if it cannot take it."""
    count = len(ids)
    lengths = [len(p) for p in payloads]
    if sum(lengths) < ZERO_COPY_MIN:
        head = PACKED_HEAD[count].pack(epoch, seq, count, *ids, *lengths)
        sock.send(b"".join([head, *payloads]), NOBLOCK)
    else:
        send_frames(sock, [pack_ids([epoch, seq, *ids])] + payloads, NOBLOCK, copy=False)


def decode_batch(frames: list) -> Batch:
    """Worker side of ``send_batch``: (epoch, seq, request id, payload, shared) each;
    ``shared`` (``SHARED_BIT`` in the id) says the payload names the body's place in the
    shared arena (see arena.py)."""
    if len(frames) == 1:
        return decode_packed(frame_view(frames[0]))
    head = frame_bytes(frames[0])
    if len(head) < BATCH.size:
        raise BadMessage("a batch head of %d bytes" % len(head))
    epoch, seq, *ids = unpack_ids(head)
    if len(ids) != len(frames) - 1:
        raise BadMessage("%d ids for %d payloads" % (len(ids), len(frames) - 1))
    return [(epoch, seq + i, ids[i] & ~SHARED_BIT, frames[i + 1].buffer, ids[i] >= SHARED_BIT)
            for i in range(len(ids))]


def decode_packed(view: memoryview) -> Batch:
    if len(view) < PACKED.size:
        raise BadMessage("a batch of %d bytes" % len(view))
    epoch, seq, count = PACKED.unpack_from(view)
    at = PACKED.size + 12 * count
    if at > len(view):
        raise BadMessage("a batch of %d requests in %d bytes" % (count, len(view)))
    fields = PACKED_FIELDS[count].unpack_from(view, PACKED.size)
    if at + sum(fields[count:]) != len(view):
        raise BadMessage("a batch whose lengths do not add up to its size")
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
    frames: list
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


def decode(frames: list) -> Message:
    """Validate and decode one message from a sink; BadMessage says what is wrong."""
    first = frame_view(frames[0])
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
    if kind == HELLO and len(frames) == 3:
        check_hello(frame_bytes(frames[1]), frame_bytes(frames[2]))
    fields = layout.unpack_from(first)
    return Message(kind, fields[1], fields[2], fields[3] if len(fields) > 3 else 0, frames, body)


def check_hello(endpoint: bytes, key: bytes) -> None:
    """A remote worker's endpoint is ``tcp://HOST:PORT`` in ASCII; its key empty or Z85."""
    if (len(endpoint) > MAX_ENDPOINT or not endpoint.startswith(b"tcp://")
            or not endpoint.isascii() or not endpoint.rpartition(b":")[2].isdigit()):
        raise BadMessage("a HELLO with the endpoint %r" % endpoint[:64])
    if len(key) not in KEY_SIZES or not key.isascii():
        raise BadMessage("a HELLO with a key of %d bytes" % len(key))


def encode_welcome(token: int, max_reply_size: int) -> list[bytes]:
    return [WELCOME, WELCOME_BODY.pack(token, max_reply_size)]


def is_control(frames: list) -> bool:
    """A producer -> worker control message, not a batch (whose head is 16 + 8n bytes)."""
    return len(frames[0]) == 1


def decode_welcome(frames: list) -> tuple[int, int]:
    """(token, max reply size) from a WELCOME."""
    if len(frames) != 2 or frame_bytes(frames[0]) != WELCOME:
        raise BadMessage("not a welcome")
    body = frame_bytes(frames[1])
    if len(body) != WELCOME_BODY.size:
        raise BadMessage("a welcome of %d bytes" % len(body))
    token, max_reply_size = WELCOME_BODY.unpack(body)
    return token, max_reply_size


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
