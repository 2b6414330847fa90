"""Python calls per request: how much interpreter work one request costs gaspar2.

An embedded producer with one worker serves sequential 100-byte echo requests from a
client thread; ``sys.setprofile`` counts every Python-level call on the producer's thread
(the thread that runs gevent's hub) and, through the handler's own ``setup``, in the worker
process. The handler's own call is not counted on the worker's side; neither the client
thread nor the profiler is counted at all.

    python benchmarks/calls.py [--requests 2000] [--warmup 200] [--by-function]

Prints one JSON object: {"producer": calls per request, "worker": calls per request}.
"""

import argparse
import collections
import json
import socket
import struct
import sys
import threading
from typing import ClassVar

import gevent

import gaspar2

PAYLOAD = b"x" * 100


class Counting(gaspar2.Consumer):
    """Echo; ``calls?`` answers the Python calls counted in this worker so far, as JSON:
    the total and, with ``by_function``, the count of each function."""

    calls = 0
    by_function = False
    functions: ClassVar[collections.Counter[str]] = collections.Counter()

    def setup(self):
        sys.setprofile(self._count)

    def _count(self, frame, event, arg):
        if event == "call":
            Counting.calls += 1
            if self.by_function:
                self.functions[name_of(frame)] += 1

    def handle(self, message):
        if message == b"calls?":
            return json.dumps({"calls": Counting.calls, "functions": self.functions}).encode()
        return message


def name_of(frame):
    code = frame.f_code
    return "%s:%s" % (code.co_filename.rsplit("/", 2)[-1], code.co_qualname)


def ask(port, message):
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(struct.pack("!I", len(message)) + message)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


class Client(threading.Thread):
    """Sends the requests one after another, on a plain (unpatched) socket of its own."""

    def __init__(self, port, count):
        super().__init__(daemon=True)
        self.port, self.count, self.error = port, count, None

    def run(self):
        try:
            for _ in range(self.count):
                if ask(self.port, PAYLOAD) != PAYLOAD:
                    raise AssertionError("a wrong reply")
        except Exception as exc:    # reported by the main thread
            self.error = exc


def in_hub(port, count, counter=None):
    """Serve ``count`` requests from a client thread while this thread runs the hub;
    counting this thread's calls meanwhile with ``counter`` if given."""
    client = Client(port, count)
    client.start()
    if counter is not None:
        sys.setprofile(counter)
    try:
        while client.is_alive():
            gevent.sleep(0.05)
    finally:
        sys.setprofile(None)
    if client.error is not None:
        raise client.error


def worker_calls(port):
    """The worker's count, asked from a greenlet-free thread so the hub keeps serving."""
    result = []
    thread = threading.Thread(target=lambda: result.append(json.loads(ask(port, b"calls?"))))
    thread.start()
    while thread.is_alive():
        gevent.sleep(0.01)
    return result[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--by-function", action="store_true",
                        help="also list the producer's calls per request by function")
    args = parser.parse_args()
    Counting.by_function = args.by_function
    producer = gaspar2.Producer(Counting(), 0, host="127.0.0.1", processes=1)
    producer.start(blocking=False)
    try:
        port = producer.address[1]
        in_hub(port, args.warmup)
        calls = [0]
        functions = collections.Counter()

        def count(frame, event, arg):
            if event == "call":
                calls[0] += 1
                if args.by_function:
                    functions[name_of(frame)] += 1

        before = worker_calls(port)
        in_hub(port, args.requests, count)
        after = worker_calls(port)
        # Each request's own handler call, and one ``calls?`` probe, are the user's.
        worker = (after["calls"] - before["calls"] - args.requests - 1) / args.requests
        print(json.dumps({"producer": round(calls[0] / args.requests, 1),
                          "worker": round(worker, 1), "requests": args.requests}))
        worker_functions = collections.Counter(after["functions"])
        worker_functions.subtract(before["functions"])
        for side, counts in (("producer", functions), ("worker", worker_functions)):
            for name, n in counts.most_common():
                if n >= args.requests // 10:
                    print("%-8s %6.2f  %s" % (side, n / args.requests, name), file=sys.stderr)
    finally:
        producer.stop()


if __name__ == "__main__":
    main()
