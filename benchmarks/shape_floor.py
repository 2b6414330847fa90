"""Reference point: the least work the design card's shape can do, to show what the shape
itself costs on this machine. It is not a server anyone should run.

A gevent producer on libev watchers with raw pyzmq sockets, forked workers, one PUSH per
worker and a PULL sink back, exactly gaspar2's shape, with everything else left out: no
balancing (requests go round-robin), one request per message, no fault handling, no
timeouts, no memory bound, no take-back of a stuck worker's requests. It assumes each
request arrives whole in one read, as the load generator sends small ones, and resets any
other. Its figures are a ceiling for gaspar2 on the workloads it runs (run.py gives it the
small-request points only), not a baseline to beat.

    python benchmarks/shape_floor.py MODULE:ATTR [--port P] [--workers W] [--backlog N]
"""

import signal
import socket
import struct

from common import announce, serve_with_workers

ID = struct.Struct("Q")
RESET = struct.pack("ii", 1, 0)


def run_worker(handler, index, ipc):
    """PULL ``id + payload``, PUSH ``id + reply`` (an empty message: the handler failed)."""
    import zmq
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.bind("ipc://%s/w%d" % (ipc, index))
    push.bind("ipc://%s/s%d" % (ipc, index))
    push.send(b"ready")
    while True:
        message = pull.recv()
        try:
            push.send(message[:8] + handler(message[8:]))
        except Exception:
            push.send(message[:8])


def serve(args, ipc, pids):
    import gevent
    import zmq
    count = len(pids)
    loop = gevent.get_hub().loop
    ctx = zmq.Context()
    sink, pushes = ctx.socket(zmq.PULL), []
    for index in range(count):
        push = ctx.socket(zmq.PUSH)
        push.connect("ipc://%s/w%d" % (ipc, index))
        pushes.append(push)
        sink.connect("ipc://%s/s%d" % (ipc, index))
    for _ in range(count):                      # no slow joiner: every worker said ready
        sink.recv()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(args.backlog)
    listener.setblocking(False)
    conns, next_id = {}, [0]

    def on_accept():
        while True:
            try:
                fd, _ = listener._accept()
            except BlockingIOError:
                return
            take(socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd))

    def take(sock, watcher=None):
        """Read the request and send it on; wait for it if it is not there yet."""
        try:
            data = sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if watcher is None:
                watcher = loop.io(sock.fileno(), 1)
                watcher.start(take, sock, watcher)
            return
        except OSError:
            data = b""
        if watcher is not None:
            watcher.close()
        if len(data) < 4 or int.from_bytes(data[:4], "big") != len(data) - 4:
            abort(sock)
            return
        next_id[0] += 1
        conns[next_id[0]] = sock
        pushes[next_id[0] % count].send(ID.pack(next_id[0]) + data[4:], zmq.NOBLOCK)

    def on_sink():
        while True:
            try:
                message = sink.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            sock = conns.pop(ID.unpack_from(message)[0])
            if len(message) == 8:
                abort(sock)
                continue
            sock.setblocking(True)
            sock.sendall(message[8:])
            sock.close()

    def abort(sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        sock.close()

    accepting = loop.io(listener.fileno(), 1)
    accepting.start(on_accept)
    replies = loop.io(sink.getsockopt(zmq.FD), 1)
    replies.start(on_sink)
    on_sink()               # ZeroMQ's FD only signals what comes after a read that found none
    stopping = loop.signal(signal.SIGTERM)
    stopping.start(loop.break_)
    announce("shape-floor", args.host, listener.getsockname()[1])
    loop.run()


if __name__ == "__main__":
    serve_with_workers(__doc__, run_worker, serve)
