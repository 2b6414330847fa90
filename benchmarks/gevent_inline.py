"""Baseline: one gevent process (StreamServer) calling the handler inline.

The floor of Python's per-request overhead for this protocol, and the one-core figure for
CPU work (a handler that blocks, blocks every other connection too).

    python benchmarks/gevent_inline.py MODULE:ATTR [--port P] [--backlog N]
"""

import signal
import socket
import struct

import gevent
from gevent.server import StreamServer

from common import announce, load_handler, server_args

# From this size on, a payload is read through a buffered file (see read_exactly).
LARGE = 1 << 16


def read_exactly(sock, n):
    """n bytes from sock as bytes, or None at EOF first.

    A small payload nearly always comes whole in one recv. A large one is read through a
    buffered file, which reads straight into the bytes object it returns: reading into a
    bytearray and copying that to bytes holds two payload-sized buffers per request, and
    glibc hands such a pair back to the kernel when it is freed, so every request faults
    its memory in again (benchmarks/README.rst, "The baselines").
    """
    if n >= LARGE:
        with sock.makefile("rb") as rfile:
            data = rfile.read(n)
        return data if len(data) == n else None
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            return None
        data += more
    return data


def reset(sock):
    """The protocol's failure signal: close with SO_LINGER 0, so the peer sees a reset."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass                            # already closed by the peer
    sock.close()


def make_handle(handler):
    def handle(sock, address):
        try:
            header = read_exactly(sock, 4)
            payload = None if header is None else read_exactly(sock, struct.unpack("!I", header)[0])
            if payload is None:
                return reset(sock)
            sock.sendall(handler(payload))
        except Exception:
            return reset(sock)
        sock.close()
    return handle


def main():
    args = server_args(__doc__)
    server = StreamServer((args.host, args.port), make_handle(load_handler(args.target)),
                          backlog=args.backlog)
    server.start()
    gevent.signal_handler(signal.SIGTERM, server.stop)
    announce("gevent-inline", args.host, server.server_port)
    server.serve_forever()


if __name__ == "__main__":
    main()
