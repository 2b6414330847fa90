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


def read_exactly(sock, n):
    """n bytes from sock, or None at EOF first."""
    data = bytearray(n)
    view, got = memoryview(data), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            return None
        got += k
    return bytes(data)


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
