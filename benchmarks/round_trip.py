"""The round trip of one small message between two processes: over ZeroMQ, a PUSH/PULL pair
each way over ipc (what a request and its reply cross between gaspar2's producer and a
worker), and over a TCP loopback connection; medians and 90th percentiles, interleaved.

    python benchmarks/round_trip.py [--count 20000] [--rounds 2]
"""

import argparse
import os
import shutil
import socket
import statistics
import tempfile
import time

MESSAGE = b"x" * 100


def timed(send, recv, count):
    times = []
    for _ in range(count):
        began = time.perf_counter()
        send(MESSAGE)
        recv()
        times.append(time.perf_counter() - began)
    return times


def zmq_round_trips(count):
    import zmq
    where = tempfile.mkdtemp(prefix="gaspar2-rt-")
    out, back = "ipc://%s/out" % where, "ipc://%s/back" % where
    pid = os.fork()
    if pid == 0:
        ctx = zmq.Context()
        pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        pull.bind(out)
        push.bind(back)
        while True:
            message = pull.recv()
            if message == b"stop":
                os._exit(0)
            push.send(message)
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    push.connect(out)
    pull.connect(back)
    timed(push.send, pull.recv, 100)           # both ways connected, and warm
    times = timed(push.send, pull.recv, count)
    push.send(b"stop")
    os.waitpid(pid, 0)
    ctx.destroy(linger=0)
    shutil.rmtree(where, ignore_errors=True)
    return times


def tcp_round_trips(count):
    listener = socket.create_server(("127.0.0.1", 0))
    pid = os.fork()
    if pid == 0:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            data = conn.recv(4096)
            if not data:
                os._exit(0)
            conn.sendall(data)
    sock = socket.create_connection(listener.getsockname())
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    timed(sock.sendall, lambda: sock.recv(4096), 100)
    times = timed(sock.sendall, lambda: sock.recv(4096), count)
    sock.close()
    os.waitpid(pid, 0)
    listener.close()
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for _ in range(args.rounds):
        for name, run in (("tcp", tcp_round_trips), ("zmq", zmq_round_trips)):
            times = sorted(run(args.count))
            print("%s round trip: p50 %.1f us, p90 %.1f us" % (
                name, statistics.median(times) * 1e6, times[int(len(times) * 0.9)] * 1e6))


if __name__ == "__main__":
    main()
