"""Baseline: the design card built the obvious way, to measure what gaspar2's producer saves.

gevent's StreamServer with a greenlet per connection, gevent socket objects, ``zmq.green``
sockets, an AsyncResult per request; one PUSH per worker and one request in flight per
worker (a queue of free workers), replies on a PULL sink. The workers are forked before
any ZeroMQ context or listener exists and wait until each has said it is ready. Sends pass
``copy=False``, pyzmq's advice for large messages: a frame of 64 KiB or more goes to ZeroMQ
without a copy, and pyzmq still copies a smaller one (``zmq.COPY_THRESHOLD``).

    python benchmarks/design_card.py MODULE:ATTR [--port P] [--workers W] [--backlog N]
"""

import itertools
import signal

from common import announce, serve_with_workers
from gevent_inline import read_exactly, reset


def run_worker(handler, index, ipc):
    """A plain blocking worker: PULL requests, PUSH [index, id, ok|error, reply] back."""
    import zmq
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.bind("ipc://%s/w%d" % (ipc, index))
    push.connect("ipc://%s/sink" % ipc)
    me = b"%d" % index
    push.send_multipart([me, b"ready", b"", b""])
    while True:
        request_id, payload = pull.recv_multipart()
        try:
            push.send_multipart([me, request_id, b"ok", handler(payload)], copy=False)
        except Exception:
            push.send_multipart([me, request_id, b"error", b""])


def serve(args, ipc, pids):
    import gevent
    import zmq.green as zmq
    from gevent.event import AsyncResult
    from gevent.queue import Queue
    from gevent.server import StreamServer

    ctx = zmq.Context()
    sink = ctx.socket(zmq.PULL)
    sink.bind("ipc://%s/sink" % ipc)
    pushes = []
    for index in range(len(pids)):
        push = ctx.socket(zmq.PUSH)
        push.connect("ipc://%s/w%d" % (ipc, index))
        pushes.append(push)
    free, pending, ids = Queue(), {}, itertools.count()
    for _ in pids:                              # no slow joiner: every worker said ready
        free.put(int(sink.recv_multipart()[0]))

    def collect():
        while True:
            index, request_id, status, body = sink.recv_multipart()
            free.put(int(index))
            pending.pop(int(request_id)).set((status, body))

    def handle(sock, address):
        try:
            header = read_exactly(sock, 4)
            payload = None if header is None else read_exactly(sock, int.from_bytes(header, "big"))
            if payload is None:
                return reset(sock)
            index, request_id = free.get(), next(ids)
            result = pending[request_id] = AsyncResult()
            pushes[index].send_multipart([b"%d" % request_id, payload], copy=False)
            status, body = result.get()
            if status != b"ok":
                return reset(sock)
            sock.sendall(body)
        except Exception:
            return reset(sock)
        sock.close()

    gevent.spawn(collect)
    server = StreamServer((args.host, args.port), handle, backlog=args.backlog)
    server.start()
    gevent.signal_handler(signal.SIGTERM, server.stop)
    announce("design-card", args.host, server.server_port)
    server.serve_forever()


if __name__ == "__main__":
    serve_with_workers(__doc__, run_worker, serve)
