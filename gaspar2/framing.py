"""Wire formats: the client frame, and the messages between the producer and its workers.

Client frame: a 4-byte unsigned length in network byte order, then that many payload bytes.
Producer -> worker, one ZeroMQ multipart message per batch: [ids, payload, payload, ...]
where ``ids`` packs one unsigned 64-bit request id per payload.
Worker -> producer, on the sink: [kind + fields, body?] with ``kind`` one of the constants below.
"""

import socket
import struct

import zmq

HEADER = struct.Struct("!I")
MAX_LENGTH = 2**32 - 1
DEFAULT_MAX_MESSAGE_SIZE = 64 * 2**20

# Worker -> producer message kinds (the first byte of the first frame).
HELLO = b"H"      # fields: worker id, pid. The worker is connected both ways and ready.
                  # A remote worker adds two frames: the endpoint it listens on, its key.
HEARTBEAT = b"P"  # fields: worker id. A remote worker is alive.
REPLY = b"R"      # fields: request id; frame 2 is the reply body.
ERROR = b"E"      # fields: request id; frame 2 is the handler's traceback, UTF-8.
GIVEBACK = b"G"   # fields: worker id, the request it is stuck on; frame 2 packs the ids
                  # of the requests it holds and will not run (none: it only says so).

# Plain ints: pyzmq's enum flags cost a Python-level operation on every call.
SNDMORE, NOBLOCK = int(zmq.SNDMORE), int(zmq.NOBLOCK)
EVENTS, POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
# Below this many bytes, copying into a ZeroMQ message is cheaper than a zero-copy send.
ZERO_COPY_MIN = 64 * 1024

KIND_ID = struct.Struct("!cQ")
HELLO_FIELDS = struct.Struct("!cQI")
GIVEBACK_FIELDS = struct.Struct("!cQQ")
# Each worker's slot in the shared progress map: the id of the request it last started, and
# when (time.monotonic(), one clock for every process on the machine).
PROGRESS = struct.Struct("Qd")


class FrameError(Exception):
    """The client sent something that is not one valid frame."""


def pack(message):
    """Prefix ``message`` (bytes-like, or str sent as UTF-8) with its length."""
    if isinstance(message, str):
        message = message.encode("utf-8")
    if len(message) > MAX_LENGTH:
        raise ValueError("message of %d bytes does not fit a 4-byte length" % len(message))
    return HEADER.pack(len(message)) + bytes(message)


def recv_frames(sock, flags=0):
    """One multipart ZeroMQ message as zmq.Frame objects (recv_multipart without the
    per-part option lookups)."""
    frame = sock.recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = sock.recv(flags, copy=False)
        frames.append(frame)
    return frames


def send_frames(sock, frames, flags=0, copy=True):
    """send_multipart with plain int flags. ZeroMQ takes or refuses a message whole on its
    first part, so only that one can raise zmq.Again."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, flags | SNDMORE if i < last else flags, copy=copy)


def pack_ids(ids):
    return struct.pack("!%dQ" % len(ids), *ids)


def unpack_ids(data):
    return struct.unpack("!%dQ" % (len(data) // 8), data)


# The first read of every frame lands here, so a small frame takes one recv and one copy.
# Safe to share: each read is copied out before the next one.
_SCRATCH = bytearray(64 * 1024)
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


class FrameReader:
    """Reads one frame from a socket across as many wake-ups as it takes, never blocking."""

    __slots__ = ("max_size", "header", "got", "payload")

    def __init__(self, max_size):
        self.max_size = max_size
        self.header = b""
        self.got = 0
        self.payload = None

    def read_from(self, sock):
        """Read what is there; True once the frame is complete.

        Reads until the socket would block, so a large frame takes few wake-ups. Raises
        FrameError on an oversized length, bytes past the frame or an early EOF, and lets
        BlockingIOError (nothing to read yet) and other OSErrors through.
        """
        if self.payload is None and not self._read_header(sock):
            return False
        view = memoryview(self.payload)
        size = len(self.payload)
        while self.got < size:
            n = sock.recv_into(view[self.got:], 0, _DONTWAIT)
            if not n:
                raise FrameError("closed after %d of %d payload bytes" % (self.got, size))
            self.got += n
        return True

    def _read_header(self, sock):
        n = sock.recv_into(_SCRATCH, 0, _DONTWAIT)
        if not n:
            raise FrameError("closed after %d of 4 header bytes" % len(self.header))
        data = self.header + _SCRATCH[:n]
        if len(data) < 4:
            self.header = bytes(data)
            return False
        (length,) = HEADER.unpack_from(data)
        if length > self.max_size:
            raise FrameError("length %d is over max_message_size %d" % (length, self.max_size))
        if len(data) - 4 > length:
            raise FrameError("%d bytes after the frame" % (len(data) - 4 - length))
        if len(data) - 4 == length:
            self.payload = bytes(data[4:])
        else:
            self.payload = bytearray(length)
            self.payload[:len(data) - 4] = data[4:]
        self.got = len(data) - 4
        return True
